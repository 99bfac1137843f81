"""validation.compare and computed_in: every field of every kind of comparison, pinned (numpy
arithmetic, the same on every machine); and validate()'s report for real runs."""

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import SAMPLE_DIR
from onnx_diagwise import InputOptions, RuntimeConfig, rewrite, validate
from onnx_diagwise.errors import DiagwiseError
from onnx_diagwise.validation import compare, computed_in

GOLDEN = Path(__file__).resolve().parent / "golden" / "compare.json"
UPDATE = os.environ.get("ONNX_DIAGWISE_UPDATE_GOLDEN") == "1"
f32 = np.float32
base = np.linspace(-2, 3, 24, dtype=f32).reshape(2, 3, 4)

CASES = {
    "equal": (base, base.copy(), {}),
    "within tolerance": (base, base + f32(1e-6), {}),
    "one element off": (base, np.where(np.arange(24).reshape(2, 3, 4) == 13, base + 1, base).astype(f32), {}),
    "several off, rtol given": (base, base * f32(1.01), {"rtol": 1e-3}),
    "atol given": (base, base + f32(0.05), {"atol": 0.1}),
    "tf32": (base, base * f32(1.001), {"tf32": True}),
    "computed in float16": (base, base * f32(1.0004), {"precision": "float16"}),
    "float16 output": (base.astype(np.float16), (base * f32(1.0004)).astype(np.float16), {}),
    "new NaN": (base, np.where(base > 2.5, np.nan, base).astype(f32), {}),
    "NaN in both": (np.array([np.nan, 1.0], f32), np.array([np.nan, 1.0], f32), {}),
    "inf vs -inf": (np.array([np.inf, 1.0], f32), np.array([-np.inf, 1.0], f32), {}),
    "equal infinities": (np.array([np.inf, -np.inf], f32), np.array([np.inf, -np.inf], f32), {}),
    "a number for inf": (np.array([np.inf, 1.0], f32), np.array([5.0, 1.0], f32), {}),
    "strings": (np.array(["a", "b"]), np.array(["a", "c"]), {}),
    "strings as objects": (np.array(["a", "b"], object), np.array(["a", "c"], object), {}),
    "equal strings as objects": (np.array(["a", "b"], object), np.array(["a", "b"], object), {}),
    "near zero": (np.array([1e-9, 2.0], f32), np.array([2e-9, 2.0], f32), {}),
    "integers exact": (np.arange(6, dtype=np.int64), np.arange(6, dtype=np.int64) + (np.arange(6) == 4), {}),
    "integers with atol": (np.arange(6, dtype=np.int8), np.arange(6, dtype=np.int8) + (np.arange(6) == 4).astype(
        np.int8), {"atol": 1}),
    "bools": (np.array([True, False, True]), np.array([True, True, True]), {}),
    "shape differs": (base, base.reshape(6, 4), {}),
    "dtype differs": (base, base.astype(np.float64), {}),
    "missing": (base, None, {}),
    "empty": (np.zeros((0, 3), f32), np.zeros((0, 3), f32), {}),
    "noise floor sets atol": (base * f32(1e-3), base * f32(1e-3) + f32(2e-7), {"noise": 1e-7}),
    "noise floor caught": (base * f32(1e-3), base * f32(1e-3) + f32(5e-7), {"noise": 1e-7}),
    "noise floor below atol": (base, base + f32(1e-6), {"noise": 1e-7}),
    "noise floor, atol given": (base * f32(1e-3), base * f32(1e-3) + f32(2e-7), {"noise": 1e-7, "atol": 1e-8}),
    "noise floor, integers": (np.arange(6, dtype=np.int64), np.arange(6, dtype=np.int64), {"noise": 3.0}),
}


def _result(case: str) -> dict:
    expected, actual, options = CASES[case]
    return json.loads(json.dumps(asdict(compare("y", expected, actual, **options))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_compare_fields(case):
    if UPDATE:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[case] = _result(case)
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1, sort_keys=True) + "\n")
        pytest.skip("golden comparison written")
    assert _result(case) == json.loads(GOLDEN.read_text())[case]


def _cast_model(ops: list[str], source=TensorProto.FLOAT16, after: int = 1) -> onnx.ModelProto:
    """x (SOURCE) -> OPS -> Cast(float) -> AFTER Transposes -> y."""
    nodes, name = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [name], [f"v{i}"], **({"perm": [1, 0]} if op == "Transpose" else {})))
        name = f"v{i}"
    nodes.append(helper.make_node("Cast", [name], ["c0"], to=TensorProto.FLOAT))
    for i in range(after):
        nodes.append(helper.make_node("Transpose", [f"c{i}"], [f"c{i + 1}"], perm=[1, 0]))
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", source, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_computed_in_follows_layout_ops_to_a_cast():
    assert computed_in(_cast_model(["Relu"])) == {"y": "float16"}
    assert computed_in(_cast_model(["Relu"], TensorProto.BFLOAT16)) == {"y": "bfloat16"}
    assert computed_in(_cast_model(["Relu"], TensorProto.DOUBLE)) == {}
    assert computed_in(_cast_model(["Relu"], after=63)) == {"y": "float16"}
    assert computed_in(_cast_model(["Relu"], after=64)) == {}  # past 64 steps: not followed
    model = _cast_model(["Relu"], after=2)
    model.graph.node[-1].op_type = "Relu"  # a computing op after the Cast: float32 compute
    del model.graph.node[-1].attribute[:]
    assert computed_in(model) == {}


def test_validate_reports_runs_config_and_every_output():
    original = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    candidate = rewrite(original, group_size=4).model
    report = validate(original, candidate, RuntimeConfig("cpu", threads=1), check_n=2, seed=5)
    data = report.to_dict()
    assert (data["passed"], data["provider"], data["runs"], data["tf32"]) == (True, "CPUExecutionProvider", 2, False)
    assert data["config"] == RuntimeConfig("cpu", {}, 1).to_dict()
    assert [o["name"] for o in data["outputs"]] == [o.name for o in original.graph.output]
    out = data["outputs"][0]
    assert out["passed"] and out["dtype"] == "float32" and out["rtol"] == 1e-5 and out["elements"] > 0
    assert report.summary() == "1/1 outputs passed (2 run(s) on CPUExecutionProvider)"
    shape = [d.dim_value or 1 for d in original.graph.input[0].type.tensor_type.shape.dim]
    feeds = {original.graph.input[0].name: np.zeros(shape, np.float32)}
    assert validate(original, candidate, inputs=InputOptions(data=feeds), check_n=3).runs == 1  # real data: once
    with pytest.raises(DiagwiseError, match="^check_n must be >= 1; got 0$"):
        validate(original, candidate, check_n=0)
    with pytest.raises(DiagwiseError, match="^seed must be >= 0; got -1$"):
        validate(original, candidate, seed=-1)


def test_validate_applies_tolerances_per_output():
    original = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    name = original.graph.output[0].name
    report = validate(original, original, atol={name: 0.5}, rtol=0.25)
    (out,) = report.outputs
    assert (out.atol, out.rtol, out.max_abs, out.mismatches) == (0.5, 0.25, 0.0, 0)
