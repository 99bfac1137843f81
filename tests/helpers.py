"""Models built in code, and runners for comparing them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16,
}
# Conv accepts bfloat16 from opset 22 on.
OPSET_FOR = {"bfloat16": 22}


def depthwise_model(
    channels: int = 8,
    multiplier: int = 1,
    kernel: tuple[int, ...] = (3, 3),
    spatial: tuple[int, ...] = (9, 9),
    strides: tuple[int, ...] | None = None,
    dilations: tuple[int, ...] | None = None,
    pads: tuple[int, ...] | None = None,
    auto_pad: str | None = None,
    bias: bool = True,
    dtype: str = "float32",
    seed: int = 0,
    weight_source: str = "initializer",
    name: str = "dw",
    opset: int | None = None,
) -> onnx.ModelProto:
    """One depthwise Conv: x [N, C, *spatial] -> y, weight [C*M, 1, *kernel]."""
    rng = np.random.default_rng(seed)
    elem = DTYPES[dtype]
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    out_channels = channels * multiplier
    w = rng.standard_normal((out_channels, 1) + tuple(kernel)).astype(np.float32).astype(np_dtype)
    attrs = {"group": channels, "kernel_shape": list(kernel)}
    if strides:
        attrs["strides"] = list(strides)
    if dilations:
        attrs["dilations"] = list(dilations)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    elif pads:
        attrs["pads"] = list(pads)

    nodes, inits = [], []
    weight_tensor = numpy_helper.from_array(w, "w")
    if weight_source == "initializer":
        inits.append(weight_tensor)
        weight_name = "w"
    elif weight_source == "Constant":
        nodes.append(helper.make_node("Constant", [], ["w"], name="w_const", value=weight_tensor))
        weight_name = "w"
    elif weight_source == "Identity":
        inits.append(weight_tensor)
        nodes.append(helper.make_node("Identity", ["w"], ["w_alias"], name="w_identity"))
        weight_name = "w_alias"
    else:
        raise ValueError(weight_source)
    inputs = ["x", weight_name]
    if bias:
        b = rng.standard_normal(out_channels).astype(np.float32).astype(np_dtype)
        inits.append(numpy_helper.from_array(b, "b"))
        inputs.append("b")
    nodes.append(helper.make_node("Conv", inputs, ["y"], name=name, **attrs))
    graph = helper.make_graph(
        nodes, "depthwise", [helper.make_tensor_value_info("x", elem, ["N", channels, *spatial])],
        [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or OPSET_FOR.get(dtype, 17))])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def random_inputs(model: onnx.ModelProto, batch: int = 2, seed: int = 0, cond: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        np_dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 5)
                 for i, d in enumerate(t.shape.dim)]
        if np_dtype == np.bool_:
            feeds[value.name] = np.full(shape, cond, dtype=bool)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32).astype(np_dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Run with onnxruntime CPU; float64 and bfloat16 Conv have no CPU kernel there,
    so those run on onnx's reference evaluator."""
    dtypes = {v.type.tensor_type.elem_type for v in model.graph.input}
    if dtypes & {TensorProto.DOUBLE, TensorProto.BFLOAT16}:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 2e-2}


def assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto, dtype: str = "float32",
                        feeds: dict | None = None) -> None:
    feeds = feeds or random_inputs(original)
    expected, actual = run(original, feeds), run(rewritten, feeds)
    assert len(expected) == len(actual)
    tol = TOLERANCE[dtype]
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and e.dtype == a.dtype
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        # fp16/bf16 accumulate in their own precision: scale the tolerance with the output magnitude
        scale = max(1.0, float(np.abs(e64).max())) if dtype in ("float16", "bfloat16") else 1.0
        np.testing.assert_allclose(a64, e64, rtol=tol, atol=tol * scale)


def conv_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Conv"]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"
SAMPLE = SAMPLE_DIR / "mobilenetv2_block.onnx"


def cli(*args, cwd=None, columns: int = 200) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process (output COLUMNS wide, as off a terminal)."""
    return subprocess.run([sys.executable, "-m", "onnx_diagwise", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env={"COLUMNS": str(columns), "PATH": ""})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
