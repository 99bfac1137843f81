"""Models built in code (every form of a depthwise layer), runners for comparing them, errors
planted in a rewrite, and the command line run in this process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_diagwise import rewrite
from onnx_diagwise import rewriter as rewriter_module

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


def weights_model(value: float) -> onnx.ModelProto:
    """y = x + w, w VALUE x 1024 copies of VALUE: each write's model differs in shape and data, so a
    model paired with another write's data reads wrong values (or fails to read)."""
    size = 1024 * int(value)
    w = numpy_helper.from_array(np.full((size,), value, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# Every form of a depthwise layer: quantized (QDQ, QLinearConv, ConvInteger), ConvTranspose, FusedConv.
OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def forms_model(nodes, inputs, outputs, initializers, opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "forms", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=opset)


def _integers(rng, dtype, shape, low, high):
    return rng.integers(low, high, size=shape).astype(dtype)


def qlinearconv_model(c=8, m=1, per_channel=True, wtype=np.int8, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = (-100, 100) if wtype == np.int8 else (0, 255)
    w = _integers(rng, wtype, (c * m, 1, 3, 3), lo, hi)
    w_zp = (_integers(rng, wtype, (c * m,), lo // 4, hi // 4) if per_channel else np.array(hi // 3, wtype))
    w_scale = (rng.uniform(0.01, 0.02, c * m) if per_channel else np.array(0.015)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("x_scale", np.array(0.05, np.float32)), ("x_zp", np.array(128, np.uint8)), ("w", w),
        ("w_scale", w_scale), ("w_zp", w_zp), ("y_scale", np.array(0.3, np.float32)),
        ("y_zp", np.array(120, np.uint8)), ("bias", _integers(rng, np.int32, (c * m,), -500, 500))]]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp",
                                            "bias"], ["y"], name="qdw", group=c, pads=[1, 1, 1, 1])
    return forms_model([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 10, 10])],
                  [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, c * m, 10, 10])], inits)


def convinteger_model(c=8, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", _integers(rng, np.uint8, (c, 1, 3, 3), 0, 255)), ("x_zp", np.array(128, np.uint8)),
        ("w_zp", np.array(77, np.uint8))]]
    node = helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], name="idw", group=c,
                            pads=[1, 1, 1, 1])
    return forms_model([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 9, 9])],
                  [helper.make_tensor_value_info("y", TensorProto.INT32, [1, c, 9, 9])], inits)


def qdq_model(c=16, m=1, per_channel=True, wtype=np.int8, seed=0):
    """QuantizeLinear/DequantizeLinear on the activation, DequantizeLinear on the weight, as
    onnxruntime's quantize_static writes them (per-channel weight scales on axis 0)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(wtype) if wtype in (np.int8, np.uint8) else None
    lo, hi = (info.min, info.max) if info else (-8, 7)
    w = _integers(rng, np.int64, (c * m, 1, 3, 3), lo, hi + 1).astype(wtype)
    zp = (_integers(rng, np.int64, (c * m,), lo // 8, hi // 8).astype(wtype) if per_channel
          else np.array(hi // 5, dtype=wtype))
    scale = (rng.uniform(0.01, 0.02, c * m) if per_channel else np.array(0.015)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w_q", w), ("w_scale", scale), ("w_zp", zp), ("a_scale", np.array(0.02, np.float32)),
        ("a_zp", np.array(0, np.int8)), ("b", rng.standard_normal(c * m).astype(np.float32))]]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xdq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w",
                         axis=0 if per_channel else 1),
        helper.make_node("Conv", ["xdq", "w_dq", "b"], ["y"], name="dw", group=c, pads=[1, 1, 1, 1]),
    ]
    return forms_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 12, 12])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c * m, 12, 12])], inits)


def conv_transpose_model(c=8, m=2, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((c, m, 4, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c * m).astype(np.float32), "b")]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", group=c, strides=[2, 2],
                            pads=[1, 1, 1, 1], output_padding=[1, 0])
    model = forms_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 7, 7])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(model)


def fused_conv_model(c=12, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b")]
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], name="fdw", domain="com.microsoft", group=c,
                            pads=[1, 1, 1, 1], kernel_shape=[3, 3], activation="Relu")
    return forms_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)


def dynamic_weight_model():
    model = depthwise_model(channels=8, multiplier=2, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    return model


FORMS = {
    "float": lambda: depthwise_model(channels=12, multiplier=2),
    "float1d": lambda: depthwise_model(channels=8, kernel=(5,), spatial=(20,)),
    "float3d": lambda: depthwise_model(channels=4, kernel=(3, 3, 3), spatial=(5, 6, 7)),
    "QLinearConv": lambda: qlinearconv_model(m=2),
    "ConvInteger": convinteger_model,
    "QDQ": lambda: qdq_model(m=2),
    "ConvTranspose": conv_transpose_model,
    "FusedConv": fused_conv_model,
    "dynamic": dynamic_weight_model,
}


# Errors planted in a rewrite, which the check must catch: a weight channel swapped, one channel's
# filter placed off the diagonal, one weight off by a little, every output scaled.
KINDS = ("swapped", "off_diagonal", "weight_off")
# One weight off by this fraction of its layer's largest weight; float16 weights by 100x more, as
# float16's tolerance is 100x wider (1e-3 of the scale is one float16 step of the largest weight).
WEIGHT_OFF = {"float16": 1e-1}
WEIGHT_OFF_DEFAULT = 1e-3


def _kernels(conv, weight: np.ndarray, channel: int) -> tuple:
    """Index of the diagonal kernel(s) of input channel CHANNEL in CONV's expanded weight."""
    g = weight.shape[1] // (conv.multiplier if conv.transposed else 1)
    if conv.transposed:  # [C, G*M, k...]: row i, columns (i % G)*M ... + M
        start = (channel % g) * conv.multiplier
        return channel, slice(start, start + conv.multiplier)
    rows = np.arange(channel * conv.multiplier, (channel + 1) * conv.multiplier)  # [C*M, G, k...]
    return rows, channel % g


def _plant(kind: str, conv, weight: np.ndarray) -> np.ndarray:
    w = weight.copy()
    fill = 0 if conv.zero_point is None else np.asarray(conv.zero_point).reshape(-1)[0]
    if kind == "swapped":  # the filters of input channels 0 and 1 trade places
        first, second = _kernels(conv, w, 0), _kernels(conv, w, 1)
        w[first], w[second] = weight[second], weight[first]
    elif kind == "off_diagonal":  # channel 0's filter reads its neighbour in the group
        rows, column = _kernels(conv, w, 0)
        if conv.transposed:
            w[0, column.start + conv.multiplier:column.stop + conv.multiplier] = weight[0, column]
        else:
            w[rows, column + 1] = weight[rows, column]
        w[rows, column] = fill
    elif kind == "weight_off":  # the largest weight of the layer, off by a little
        off = np.ones(w.shape[:2], bool)
        for channel in range(conv.channels):
            off[_kernels(conv, w, channel)] = False
        values = np.where(off.reshape(off.shape + (1,) * (w.ndim - 2)), 0, np.abs(w.astype(np.float64) - fill))
        at = np.unravel_index(int(np.argmax(values)), w.shape)
        if w.dtype.kind in "iu":  # one quantization step: the smallest change there is
            w[at] += -1 if w[at] == np.iinfo(w.dtype).max else 1
        else:
            w[at] += w.dtype.type(WEIGHT_OFF.get(w.dtype.name, WEIGHT_OFF_DEFAULT) * values.max())
            assert w[at] != weight[at]
    return w


def planted(model: onnx.ModelProto, kind: str, node: str, monkeypatch) -> onnx.ModelProto:
    """The default rewrite of MODEL with one error of KIND planted in NODE's block-diagonal weight."""
    real, done = rewriter_module.expand, []

    def expand(conv, group_size):
        weight = real(conv, group_size)
        if conv.name != node:
            return weight
        done.append(node)
        return _plant(kind, conv, weight)

    with monkeypatch.context() as patch:
        patch.setattr(rewriter_module, "expand", expand)
        result = rewrite(model)
    assert done == [node]
    return result.model


def targets(model: onnx.ModelProto, kind: str) -> list[str]:
    """The first rewritten node, and for the wiring errors the last one too.  A weight off by a
    little is planted in the first layer: one near the model's random inputs, so not saturated
    (a channel that a later ReLU always zeroes hides any change of its weights)."""
    nodes = [n.name for n in rewrite(model).report.nodes if n.action == "rewritten"]
    return list(dict.fromkeys([nodes[0]] if kind == "weight_off" else [nodes[0], nodes[-1]]))



def scaled_outputs(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """MODEL with every float output multiplied by FACTOR (computed in the output's dtype)."""
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    graph = scaled.graph
    for output in graph.output:
        elem = output.type.tensor_type.elem_type
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        if np.dtype(dtype).kind != "f":
            continue
        inner = f"{output.name}__unscaled"
        for node in list(graph.node):
            node.output[:] = [inner if o == output.name else o for o in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype), f"{output.name}__factor"))
        graph.node.append(helper.make_node("Mul", [inner, f"{output.name}__factor"], [output.name]))
    return scaled


SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"
SAMPLE = SAMPLE_DIR / "mobilenetv2_block.onnx"


def cli(*args, cwd=None, columns: int = 200) -> subprocess.CompletedProcess:
    """Run the command line in this process as `onnx-diagwise ARGS` runs off a terminal: in CWD, with
    only COLUMNS (the output's width) and an empty PATH in the environment, stdout and stderr
    captured; the exit code is what the console script would exit with.  The library's logger and
    the consoles are left as they were found."""
    from onnx_diagwise import terminal
    from onnx_diagwise.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    logger = logging.getLogger("onnx_diagwise")
    saved_logger = (logger.handlers[:], logger.propagate, logger.level)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update({"COLUMNS": str(columns), "PATH": ""})
    terminal._consoles.clear()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        terminal._consoles.clear()
        logger.handlers[:], logger.propagate = saved_logger[0], saved_logger[1]
        logger.setLevel(saved_logger[2])
    return subprocess.CompletedProcess(["onnx-diagwise", *argv], code, out.getvalue(), err.getvalue())


def cli_process(*args, cwd=None, columns: int = 200, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process (output COLUMNS wide, as off a terminal): for
    what only a process shows (its exit status, what it imports, that it ends)."""
    return subprocess.run([sys.executable, "-m", "onnx_diagwise", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"COLUMNS": str(columns), "PATH": ""}, timeout=timeout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loop_model() -> onnx.ModelProto:
    """Depthwise Convs in a Loop body and in an If inside it, reading the outer graph's weights."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), name)
               for name in ("w_outer", "w_inner")]

    def conv(x, w, y, name):
        return helper.make_node("Conv", [x, w], [y], name=name, group=8, pads=[1, 1, 1, 1])

    then_g = helper.make_graph([conv("state", "w_inner", "t_out", "if_dw")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["state"], ["e_out"], name="else_id")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [conv("state", "w_outer", "stepped", "loop_dw"),
         helper.make_node("If", ["flag"], ["branched"], name="inner_if", then_branch=then_g, else_branch=else_g),
         helper.make_node("Add", ["stepped", "branched"], ["next_state"], name="add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next_state", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "", "x"], ["y"], name="loop", body=body)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights + [numpy_helper.from_array(np.array(2, np.int64), "trip")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def spy_sessions(monkeypatch, module) -> list:
    """The RuntimeConfig of every session MODULE creates (its create_session, spied), in order."""
    real, seen = module.create_session, []

    def spy(model, config):
        seen.append(config)
        return real(model, config)

    monkeypatch.setattr(module, "create_session", spy)
    return seen
