"""Plan files: tuned once where the device is, applied exactly anywhere, refused where they do not fit."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import SAMPLE_DIR, cli, depthwise_model
from onnx_diagwise import DiagwiseError, Selection, TuneOptions, rewrite, tune
from onnx_diagwise.reasons import Reason
from onnx_diagwise.tuning.planfile import FORMAT, PlanPolicy, TunedPlan

MV1 = SAMPLE_DIR / "mobilenet_v1_025.onnx"
CONFORMER = SAMPLE_DIR / "conformer_conv1d.onnx"


class Timer:
    """Deterministic: G=4 halves a layer with C >= 64, the conv2d lowering a 1-D one; whole models
    get faster by 0.01 per rewritten Conv."""

    def layer(self, signature, models):
        times = {}
        for spec in models:
            fast = (spec == "4" and signature.channels >= 64) or (spec == "conv2d" and len(signature.kernel) == 1)
            times[spec] = 0.5 if fast else (1.0 if spec == "1" else 2.0)
        return times

    def models(self, models):
        return [1.0 - 0.01 * sum(_changed(n, m) for n in m.graph.node if n.op_type == "Conv") for m in models]

    def context(self):
        return {"provider": "fake", "device": "test device"}


def _changed(node, model) -> bool:
    """A Conv that is no longer the depthwise one: lowered (marked), or block-diagonal (G > 1 columns)."""
    if node.doc_string.startswith("onnx-diagwise"):
        return True
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    return node.name.startswith("dw") and dims.get(node.input[1], [0, 1])[1] > 1


def _tuned(model=MV1, **kw):
    return tune(model, TuneOptions(timer=Timer(), use_cache=False, **kw))


@pytest.mark.parametrize("model", [MV1, CONFORMER], ids=["mobilenet", "conformer"])
def test_a_plan_applied_anywhere_gives_exactly_the_model_auto_wrote(tmp_path, model):
    auto = rewrite(model, "auto", tune_options=TuneOptions(timer=Timer(), use_cache=False))
    assert auto.report.rewritten  # something to carry over
    path = auto.tuning.save(tmp_path / "plan.json")
    applied = rewrite(model, TunedPlan.load(path))
    assert applied.model.SerializeToString() == auto.model.SerializeToString()
    assert {n.name: n.code for n in applied.report.rewritten} == {n.name: Reason.PLANNED for n in auto.report.rewritten}
    assert all(n.reason.split(" (plan: ")[0] == m.reason.split(" (auto: ")[0]
               for n, m in zip(applied.report.nodes, auto.report.nodes) if n.changed)


def test_json_round_trip_and_what_a_plan_records(tmp_path):
    report = _tuned()
    plan = report.plan
    loaded = TunedPlan.load(report.save(tmp_path / "p.json"))
    assert loaded == plan
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == FORMAT and data["version"] == 1 and data["measured_on"]["device"] == "test device"
    layer = data["layers"][-1]
    assert set(layer) >= {"name", "graph", "signature", "weight_sha256", "input_shape", "choice", "reason", "times_ms"}
    assert set(layer["signature"]) == {"form", "channels", "multiplier", "kernel", "strides", "dilations", "pads",
                                       "auto_pad", "dtype"}
    assert {l["choice"] for l in data["layers"]} == {"keep", "4"}
    assert data["end_to_end_speedup"] == pytest.approx(plan.original_ms / plan.tuned_ms)
    assert data["input_shapes"] == {"input": [1, 3, 224, 224]}


def _model_with(change) -> onnx.ModelProto:
    model = onnx.load(MV1)
    change(model)
    return model


def _weight(model, node_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(t for t in model.graph.initializer if t.name == node.input[1])


def _nudge(model):
    tensor = _weight(model, "dw9")
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += 1e-3
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _rename(model):
    next(n for n in model.graph.node if n.name == "dw9").name = "dw9_renamed"


def _restride(model):
    node = next(n for n in model.graph.node if n.name == "dw1")
    for attr in node.attribute:
        if attr.name == "pads":
            attr.ints[:] = [0, 0, 0, 0]


MISMATCHES = {
    "weight changed": (_nudge, "dw9", "node 'dw9': its weight differs from the one the plan measured"),
    "node renamed": (_rename, "dw9", "node 'dw9' (main) of the plan is not a depthwise Conv of the model"),
    "pads changed": (_restride, "dw1", "node 'dw1': pads [1, 1, 1, 1] in the plan, [0, 0, 0, 0] in the model"),
}


@pytest.mark.parametrize("change, node, words", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_a_plan_that_does_not_fit_is_refused_naming_the_node(change, node, words):
    plan = _tuned().plan
    model = _model_with(change)
    with pytest.raises(DiagwiseError) as refused:
        rewrite(model, plan)
    assert str(refused.value).startswith(f"the plan does not fit the model: {words}"), str(refused.value)
    lenient = rewrite(model, PlanPolicy(plan, lenient=True))
    chosen = {l.name for l in plan.layers if l.choice != "keep"}
    assert {n.name for n in lenient.report.rewritten} == chosen - {node}  # all that fits
    assert any(node in w for w in lenient.report.warnings) or any(
        n.name == node and n.code == Reason.PLAN_MISMATCH for n in lenient.report.nodes)


def test_other_mismatch_kinds():
    plan = _tuned().plan
    # another model entirely: the plan's nodes are missing from it
    with pytest.raises(DiagwiseError, match="node 'dw1' \\(main\\) of the plan is not a depthwise Conv.*13 more"):
        rewrite(depthwise_model(channels=8, name="dw_other"), plan)
    # a signature field: the dtype the plan measured
    layer = next(l for l in plan.layers if l.name == "dw9")
    layer.signature["kernel"] = [5, 5]
    with pytest.raises(DiagwiseError, match="node 'dw9': kernel \\[5, 5\\] in the plan, \\[3, 3\\] in the model"):
        rewrite(MV1, plan)
    # a static input dim measured at another size
    layer.signature["kernel"] = [3, 3]
    layer.input_shape = [1, 128, 9, 9]
    with pytest.raises(DiagwiseError, match="node 'dw9': input dim 2 is 14 in the model, tuned at 9"):
        rewrite(MV1, plan)


def test_bad_plan_files(tmp_path):
    plan = _tuned().plan
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DiagwiseError, match="is not a plan file \\(not JSON\\)"):
        rewrite(MV1, TunedPlan.load(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"format": FORMAT, "version": 99, "layers": []}))
    with pytest.raises(DiagwiseError, match="format version 99"):
        rewrite(MV1, TunedPlan.load(tmp_path / "other.json"))
    data = plan.to_dict()
    data["layers"][0]["choice"] = "polyphase:1"
    (tmp_path / "choice.json").write_text(json.dumps(data))
    with pytest.raises(DiagwiseError, match="choice takes a positive integer G"):
        rewrite(MV1, TunedPlan.load(tmp_path / "choice.json"))


def test_plans_list_nodes_the_selection_left_alone():
    plan = _tuned(MV1, inputs=None).plan
    report = tune(MV1, TuneOptions(timer=Timer(), use_cache=False), Selection(exclude="dw1[0-3]"))
    kept = {l.name: l.reason for l in report.plan.layers if l.choice == "keep"}
    assert "name matches exclude" in kept["dw10"]
    assert rewrite(MV1, report.plan).report.rewritten  # the plan covers every node: it applies
    assert len(plan.layers) == len(report.plan.layers) == 13


def test_the_pass_takes_a_plan_in_a_pass_manager():
    ir = pytest.importorskip("onnx_ir")
    from onnx_diagwise.passes import DiagonalwisePass

    plan = _tuned().plan
    expected = rewrite(MV1, plan).model
    model = ir.load(MV1)
    result = ir.passes.PassManager([DiagonalwisePass(plan)])(model)
    assert result.modified
    got = ir.serde.serialize_model(model).graph  # onnx-ir writes value_info of its own: compare the rest
    assert list(got.node) == list(expected.graph.node)
    assert sorted(t.SerializeToString() for t in got.initializer) == sorted(
        t.SerializeToString() for t in expected.graph.initializer)


def test_command_line_tunes_to_a_plan_and_applies_it(tmp_path):
    plan, out = tmp_path / "plan.json", tmp_path / "out.onnx"
    r = cli("tune", CONFORMER, "--threads", "1", "--time-budget", "5", "--no-cache", "--plan-out", plan)
    assert r.returncode == 0 and plan.is_file() and "plan written to" in r.stdout, r.stderr
    r = cli("rewrite", CONFORMER, out, "--plan", plan)
    assert r.returncode == 0, r.stderr
    r = cli("rewrite", MV1, out, "--plan", plan)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "the plan does not fit the model" in r.stderr and "--plan-lenient" in r.stderr
    r = cli("rewrite", MV1, out, "--plan", plan, "--plan-lenient")
    assert r.returncode == 0 and "not in the plan" in r.stderr
    for args, words in ((["--plan", plan, "-g", "8"], "not both"), (["--plan-lenient"], "goes with --plan"),
                        (["--plan-out", plan], "--plan-out needs --group-size auto"),
                        (["--plan", tmp_path / "missing.json"], "cannot read the plan")):
        r = cli("rewrite", CONFORMER, out, *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = cli("rewrite", CONFORMER, tmp_path / "auto.onnx", "-g", "auto", "--threads", "1", "--time-budget", "5",
            "--no-cache", "--plan-out", tmp_path / "auto-plan.json")
    assert r.returncode == 0 and TunedPlan.load(tmp_path / "auto-plan.json").layers, r.stderr
