"""benchmarks/zoo.py: whole networks built in code, their depthwise layer tables, and the files."""

import ast
import dataclasses
import functools
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import zoo  # noqa: E402

ort = pytest.importorskip("onnxruntime")

# Parameters of the published models: torchvision's counts (BatchNorm weight and bias count 2
# per channel), Keras' trainable count for MobileNet V1 1.0 (4,253,864 with BN running stats).
REFERENCE_PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "convnext_tiny": 28_589_128,
}
DEPTHWISE_COUNTS = {"mobilenet_v1": 13, "mobilenet_v2": 17, "mobilenet_v3_large": 15, "efficientnet_b0": 16,
                    "convnext_tiny": 18}

# Every depthwise conv, from the papers / torchvision, written out independently of zoo.py:
# (channels, input H = W, stride, kernel).
V1 = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1), (256, 28, 2)] + [(512, 14, 1)] * 5 \
    + [(512, 14, 2), (1024, 7, 1)]
V2 = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 1), (192, 28, 2)] \
    + [(384, 14, 1)] * 4 + [(576, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1), (960, 7, 1), (960, 7, 1)]
V3 = [(16, 112, 1, 3), (64, 112, 2, 3), (72, 56, 1, 3), (72, 56, 2, 5), (120, 28, 1, 5), (120, 28, 1, 5),
      (240, 28, 2, 3), (200, 14, 1, 3), (184, 14, 1, 3), (184, 14, 1, 3), (480, 14, 1, 3), (672, 14, 1, 3),
      (672, 14, 2, 5), (960, 7, 1, 5), (960, 7, 1, 5)]
B0 = [(32, 112, 1, 3), (96, 112, 2, 3), (144, 56, 1, 3), (144, 56, 2, 5), (240, 28, 1, 5), (240, 28, 2, 3),
      (480, 14, 1, 3), (480, 14, 1, 3), (480, 14, 1, 5), (672, 14, 1, 5), (672, 14, 1, 5), (672, 14, 2, 5),
      (1152, 7, 1, 5), (1152, 7, 1, 5), (1152, 7, 1, 5), (1152, 7, 1, 3)]
CONVNEXT = [(96, 56, 1, 7)] * 3 + [(192, 28, 1, 7)] * 3 + [(384, 14, 1, 7)] * 9 + [(768, 7, 1, 7)] * 3
PUBLISHED_DEPTHWISE = {
    "mobilenet_v1": [(c, s, st, 3) for c, s, st in V1],
    "mobilenet_v2": [(c, s, st, 3) for c, s, st in V2],
    "mobilenet_v3_large": V3,
    "efficientnet_b0": B0,
    "convnext_tiny": CONVNEXT,
}
OPS = {
    "mobilenet_v1": {"Conv", "Clip", "Constant", "GlobalAveragePool", "Flatten", "Gemm"},
    "mobilenet_v2": {"Conv", "Clip", "Constant", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    "mobilenet_v3_large": {"Conv", "Relu", "HardSwish", "HardSigmoid", "Mul", "Add", "GlobalAveragePool",
                           "Flatten", "Gemm"},
    "efficientnet_b0": {"Conv", "Sigmoid", "Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    "convnext_tiny": {"Conv", "Transpose", "LayerNormalization", "MatMul", "Add", "Div", "Erf", "Mul", "Constant",
                      "GlobalAveragePool", "Flatten", "Gemm"},
}
SQUEEZE_EXCITE = {"mobilenet_v1": 0, "mobilenet_v2": 0, "mobilenet_v3_large": 8, "efficientnet_b0": 16,
                  "convnext_tiny": 0}


@functools.cache
def built(name: str, dtype: str = "float32") -> onnx.ModelProto:
    """One build per (network, dtype) for the whole module; tests must not modify it."""
    return zoo.build(name, dtype)


def image(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, 3, 224, 224)).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def depthwise_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv nodes with one input channel per group and more than one group, in graph order."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Conv"
            and {a.name: a.i for a in n.attribute}.get("group", 1) > 1 and weights[n.input[1]][1] == 1]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", zoo.NETWORKS)
def test_network_is_valid_and_has_the_published_size(name):
    model = built(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    params = zoo.parameter_count(model)
    assert params == sum(numpy_helper.to_array(t).size for t in model.graph.initializer)
    assert abs(params - REFERENCE_PARAMS[name]) <= 0.02 * REFERENCE_PARAMS[name], params
    # Exactly the reference once each folded BatchNorm counts its weight and bias again (2 per
    # channel where the folded conv has 1): the topology and every channel count are the published ones.
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    folded = [n for n in model.graph.node if n.doc_string.startswith("BatchNormalization folded")]
    assert bool(folded) == (name != "convnext_tiny")
    assert params + sum(sizes[n.input[2]] for n in folded) == REFERENCE_PARAMS[name]

    ops = {n.op_type for n in model.graph.node}
    assert ops == OPS[name]
    assert sum(n.name.endswith(".se.gate") for n in model.graph.node) == SQUEEZE_EXCITE[name]
    for node in model.graph.node:
        if node.op_type == "HardSigmoid":  # torchvision's relu6(x + 3) / 6, not ONNX's default alpha 0.2
            assert attrs(node) == {"alpha": pytest.approx(1 / 6), "beta": 0.5}
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("name", zoo.NETWORKS)
def test_batch_dim_is_symbolic(name):
    graph = built(name).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert dims(graph.input[0]) == ["N", 3, 224, 224]
    assert dims(graph.output[0]) == ["N", 1000]
    inferred = onnx.shape_inference.infer_shapes(built(name), strict_mode=True)
    assert dims(inferred.graph.output[0]) == ["N", 1000]


@pytest.mark.parametrize("name", zoo.NETWORKS)
def test_depthwise_layers_match_the_graph_and_the_papers(name):
    model = built(name)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: dims(v) for v in inferred.graph.value_info}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = depthwise_nodes(model)
    assert len(nodes) == DEPTHWISE_COUNTS[name]
    from_graph = []
    for node in nodes:
        a = attrs(node)
        _, c, *size = shapes[node.input[0]]
        w = weights[node.input[1]]  # an initializer
        k = a["kernel_shape"]
        assert a["group"] == c and len(set(k)) == 1 and len(set(a["strides"])) == 1
        assert a["pads"] == [k[0] // 2] * 4 and a.get("dilations", [1, 1]) == [1, 1] and "auto_pad" not in a
        layer = zoo.Layer(c, tuple(size), a["strides"][0], k[0], w[0] // c)
        assert tuple(shapes[node.output[0]][2:]) == layer.out_size
        from_graph.append(layer)
    layers = zoo.depthwise_layers(name)
    assert layers == from_graph
    assert [(x.channels, x.size[0], x.stride, x.kernel) for x in layers] == PUBLISHED_DEPTHWISE[name]
    assert all(x.size[0] == x.size[1] and x.multiplier == 1 for x in layers)


def test_convnext_block_layout():
    """dw 7x7 -> NHWC -> LayerNorm -> MatMul 4x -> GELU (Erf) -> MatMul -> layer scale -> NCHW -> residual."""
    model = built("convnext_tiny")
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    dws = depthwise_nodes(model)
    assert len(dws) == 18
    for dw in dws:
        prefix = dw.name.removesuffix(".dw") + "."
        block = [n for n in model.graph.node if n.name.startswith(prefix)]
        assert [n.op_type for n in block] == ["Conv", "Transpose", "LayerNormalization", "MatMul", "Add", "Div",
                                             "Erf", "Add", "Mul", "Mul", "MatMul", "Add", "Mul", "Transpose", "Add"]
        c = weights[dw.input[1]][0]
        assert attrs(block[1])["perm"] == [0, 2, 3, 1] and attrs(block[13])["perm"] == [0, 3, 1, 2]
        assert attrs(block[2])["axis"] == -1 and weights[block[2].input[1]] == (c,)
        assert weights[block[3].input[1]] == (c, 4 * c) and weights[block[10].input[1]] == (4 * c, c)
        assert weights[block[12].input[1]] == (c,)  # layer scale
        for before, after in itertools.pairwise(block[:5]):
            assert after.input[0] == before.output[0]
        assert block[-1].input == [dw.input[0], block[13].output[0]]  # the residual


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("name", zoo.NETWORKS)
def test_network_runs_with_finite_outputs_of_order_one(name, dtype):
    model = built(name, dtype)
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    assert {t.data_type for t in model.graph.initializer} == {elem}
    assert all(attrs(n)["value"].data_type == elem for n in model.graph.node if n.op_type == "Constant")
    logits = run(model, image().astype(dtype))
    assert logits.shape == (2, 1000) and logits.dtype == np.dtype(dtype)
    assert np.isfinite(logits).all()
    rms = float(np.sqrt(np.mean(logits.astype(np.float64) ** 2)))
    assert 0.2 < rms < 5, rms  # weights scaled so that activations neither vanish nor blow up
    assert not np.allclose(logits[0], logits[1], atol=1e-3)  # depends on the input
    if dtype == "float16":  # the float32 model with every weight cast
        reference = run(built(name), image())
        assert np.abs(logits.astype(np.float32) - reference).max() < 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("name", ["mobilenet_v2", "convnext_tiny"])
def test_rewritten_network_validates(name, dtype):
    from onnx_diagwise import InputOptions, RuntimeConfig, rewrite, validate

    model = built(name, dtype)
    result = rewrite(model, group_size=32)
    assert len(result.report.rewritten) == DEPTHWISE_COUNTS[name]
    assert not depthwise_nodes(result.model)
    report = validate(model, result.model, RuntimeConfig("cpu"), InputOptions(batch=1), check_n=1)
    assert report.passed, report.summary()


def test_build_is_deterministic_and_seeded():
    first = zoo.build("mobilenet_v3_large").SerializeToString()
    assert zoo.build("mobilenet_v3_large").SerializeToString() == first
    assert zoo.build("mobilenet_v3_large", seed=1).SerializeToString() != first
    # float16 draws the same numbers as float32
    w32 = {t.name: numpy_helper.to_array(t) for t in built("mobilenet_v2").graph.initializer}
    w16 = {t.name: numpy_helper.to_array(t) for t in built("mobilenet_v2", "float16").graph.initializer}
    assert w16.keys() == w32.keys()
    assert all(np.array_equal(w16[k], w32[k].astype(np.float16)) for k in w32)


def test_unknown_network_or_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown network"):
        zoo.build("resnet50")
    with pytest.raises(ValueError, match="dtype"):
        zoo.build("mobilenet_v2", "bfloat16")
    with pytest.raises(ValueError):
        zoo.depthwise_layers("resnet50")
    with pytest.raises(ValueError):
        zoo.zoo_path("mobilenet_v2", "float64", tmp_path)
    with pytest.raises(ValueError):
        zoo.layer_table(["resnet50"])


def test_layer():
    layer = zoo.Layer(96, (112, 112), 2, 3)
    assert layer.multiplier == 1 and layer.rank == 2 and layer.out_size == (56, 56)
    assert zoo.Layer(8, (7, 7), 2, 3).out_size == (4, 4)
    assert zoo.Layer(8, (15, 9), 1, 5, 2).out_size == (15, 9)
    one_d = zoo.Layer(512, (256,), 1, 31)
    assert one_d.rank == 1 and one_d.out_size == (256,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.channels = 1
    assert len({zoo.Layer(1, (2,), 1, 3), zoo.Layer(1, (2,), 1, 3)}) == 1


def test_extra_layers():
    assert zoo.EXTRA_LAYERS == {
        "replknet_31b": [zoo.Layer(128, (56, 56), 1, 31), zoo.Layer(256, (28, 28), 1, 29),
                         zoo.Layer(512, (14, 14), 1, 27), zoo.Layer(1024, (7, 7), 1, 13)],
        "conformer": [zoo.Layer(512, (256,), 1, 31)],
    }


def test_replknet_layer_rows_are_the_networks_own_large_kernels():
    """The layer table's RepLKNet rows are exactly the distinct large-kernel convs of zoo.py's RepLKNet-31B."""
    large = [layer for layer in zoo.depthwise_layers("replknet_31b") if layer.kernel > 3]
    assert list(dict.fromkeys(large)) == zoo.EXTRA_LAYERS["replknet_31b"]
    assert [large.count(layer) for layer in zoo.EXTRA_LAYERS["replknet_31b"]] == [2, 2, 18, 2]


def test_layer_table():
    rows = zoo.layer_table()
    tables = list(dict.fromkeys(t for t, _, _ in rows))
    assert tables == list(zoo.NETWORKS) + ["replknet_31b", "conformer"]
    for table in tables:
        mine = [(i, layer) for t, i, layer in rows if t == table]
        expected = zoo.EXTRA_LAYERS[table] if table in zoo.EXTRA_LAYERS else zoo.depthwise_layers(table)
        assert mine == list(enumerate(expected, 1))
    assert len(rows) == sum(DEPTHWISE_COUNTS.values()) + 5

    v1 = zoo.layer_table(["mobilenet_v1"])
    assert [t for t, _, _ in v1] == ["mobilenet_v1"] * 13  # no extras unless named
    assert zoo.layer_table("mobilenet_v1") == v1
    assert zoo.layer_table(["conformer"]) == [("conformer", 1, zoo.Layer(512, (256,), 1, 31))]
    both = zoo.layer_table(["replknet_31b", "convnext_tiny"])
    assert [t for t, _, _ in both] == ["replknet_31b"] * 4 + ["convnext_tiny"] * 18  # in the order asked for


def test_zoo_path_builds_once_and_rebuilds_when_stale(tmp_path):
    folder = tmp_path / "models"
    path = zoo.zoo_path("mobilenet_v2", "float16", folder)
    assert path == folder / "mobilenet_v2-float16.onnx"
    assert path.read_bytes() == built("mobilenet_v2", "float16").SerializeToString()
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left
    stamp = path.stat().st_mtime_ns
    assert zoo.zoo_path("mobilenet_v2", "float16", folder) == path
    assert path.stat().st_mtime_ns == stamp  # up to date: not rewritten

    path.write_bytes(b"stale")
    os.utime(path, (0, 0))  # older than zoo.py
    zoo.zoo_path("mobilenet_v2", "float16", folder)
    assert path.read_bytes() == built("mobilenet_v2", "float16").SerializeToString()


def test_main_writes_the_requested_models(tmp_path):
    out = tmp_path / "zoo"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "zoo.py"), "--out", str(out), "--network",
                           "mobilenet_v1", "--dtype", "float16"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mobilenet_v1-float16.onnx"]
    model = onnx.load(out / "mobilenet_v1-float16.onnx")
    assert model.SerializeToString() == built("mobilenet_v1", "float16").SerializeToString()
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "zoo.py"), "--out", str(out), "--network", "vgg"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0


def test_zoo_imports_only_numpy_and_onnx():
    tree = ast.parse((BENCHMARKS / "zoo.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names}
    assert third_party == {"numpy", "onnx"}


def replknet_31b_deployed_params() -> int:
    """RepLKNet-31B's parameters once deployed (BatchNorms folded into the convs and the head, each
    5x5 branch merged into its large kernel), from the paper's channels, depths and kernels."""
    channels, depths, kernels = [128, 256, 512, 1024], [2, 2, 18, 2], [31, 29, 27, 13]
    c = channels[0]
    total = (3 * c * 9 + c) + 2 * (c * 9 + c) + (c * c + c)  # stem: 3x3 s2, dw 3x3, 1x1, dw 3x3 s2
    for stage, (c, depth, k) in enumerate(zip(channels, depths, kernels)):
        if stage:  # transition: 1x1, dw 3x3 s2
            total += channels[stage - 1] * c + c + c * 9 + c
        lk_block = (c * c + c) + (c * k * k + c) + (c * c + c)
        ffn = (c * 4 * c + 4 * c) + (4 * c * c + c)
        total += depth * (lk_block + ffn)
    return total + channels[-1] * 1000 + 1000


def test_replknet_31b_is_the_published_network():
    """The large-kernel network (not in zoo.NETWORKS: the benchmark suites keep their mobile set)."""
    model = built("replknet_31b", "float16")
    onnx.checker.check_model(model, full_check=True)
    assert "replknet_31b" not in zoo.NETWORKS
    params = zoo.parameter_count(model)
    assert params == replknet_31b_deployed_params()
    assert abs(params - 79e6) <= 0.01 * 79e6  # the paper's 79M
    layers = [(x.channels, x.size[0], x.stride, x.kernel) for x in zoo.depthwise_layers("replknet_31b")]
    stages = [(128, 56, 1, 31)] * 2 + [(256, 56, 2, 3)] + [(256, 28, 1, 29)] * 2 + [(512, 28, 2, 3)] \
        + [(512, 14, 1, 27)] * 18 + [(1024, 14, 2, 3)] + [(1024, 7, 1, 13)] * 2
    assert layers == [(128, 112, 1, 3), (128, 112, 2, 3)] + stages
    assert len(depthwise_nodes(model)) == len(layers)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": image(1).astype(np.float16)})[0]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all() and 0.1 < float(logits.std()) < 10
