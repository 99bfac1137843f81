"""Plan files: tuned once where the device is, applied exactly anywhere, refused where they do not fit."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import SAMPLE_DIR, cli, depthwise_model, dynamic_weight_model, qlinearconv_model
from onnx_diagwise import DiagwiseError, Selection, TuneOptions, rewrite, tune
from onnx_diagwise.reasons import Reason
from onnx_diagwise.tuning import planfile
from onnx_diagwise.tuning.planfile import FORMAT, PlanPolicy, PlannedLayer, TunedPlan

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


# ---------------------------------------------------------------- what a refusal and a lenient plan say


def _without(plan, node):
    """PLAN with NODE's entry removed (as if tuned on a model without it)."""
    plan.layers = [layer for layer in plan.layers if layer.name != node]
    return plan


def test_a_refusal_names_the_flag_that_applies_what_fits_and_counts_the_other_differences():
    one = _without(_tuned().plan, "dw13")  # exactly one difference: a node of the model not in the plan
    with pytest.raises(DiagwiseError) as refused:
        rewrite(MV1, one)
    assert str(refused.value) == ("the plan does not fit the model: node 'dw13' (main) of the model is not in the plan"
                                  " (plan_lenient applies what fits)")
    assert refused.value.parameters == ("plan_lenient",)
    two = _without(_without(_tuned().plan, "dw13"), "dw12")
    with pytest.raises(DiagwiseError) as refused:
        rewrite(MV1, two)
    assert str(refused.value) == ("the plan does not fit the model: node 'dw12' (main) of the model is not in the plan"
                                  " (and 1 more difference(s); plan_lenient applies what fits)")
    assert refused.value.parameters == ("plan_lenient",)


def test_a_refused_node_names_the_flag_that_applies_what_fits():
    with pytest.raises(DiagwiseError) as refused:
        rewrite(_model_with(_nudge), _tuned().plan)
    assert str(refused.value) == ("the plan does not fit the model: node 'dw9': its weight differs from the one the "
                                  "plan measured (sha256) (plan_lenient applies what fits)")
    assert refused.value.parameters == ("plan_lenient",)


def test_a_lenient_plan_says_why_each_node_kept_its_form():
    plan = _without(_tuned().plan, "dw13")
    kept_reason = next(layer.reason for layer in plan.layers if layer.name == "dw1")
    result = rewrite(_model_with(_nudge), PlanPolicy(plan, lenient=True))
    nodes = {n.name: n for n in result.report.nodes}
    assert (nodes["dw13"].code, nodes["dw13"].reason) == (Reason.NOT_IN_PLAN, "not in the plan")
    assert (nodes["dw9"].code, nodes["dw9"].reason) == (
        Reason.PLAN_MISMATCH, "the plan does not fit this node: its weight differs from the one the plan measured (sha256)")
    assert (nodes["dw1"].code, nodes["dw1"].reason) == (Reason.KEPT_BY_MEASUREMENT, f"plan: {kept_reason}")
    assert nodes["dw10"].code == Reason.PLANNED
    assert result.report.policy == "plan"
    assert result.report.warnings == ["node 'dw13' (main) of the model is not in the plan"]


def _batch(size):
    def change(model):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size  # MV1's batch is 'N'
    return change


def test_a_static_dim_of_1_measured_at_another_size_does_not_fit():
    plan = _tuned().plan
    layer = next(l for l in plan.layers if l.name == "dw9")
    layer.input_shape = [2] + layer.input_shape[1:]  # tuned at batch 2
    with pytest.raises(DiagwiseError, match="node 'dw9': input dim 0 is 1 in the model, tuned at 2"):
        rewrite(_model_with(_batch(1)), plan)


def test_a_dim_written_as_0_is_no_static_size_and_fits_any_plan():
    plan = _tuned().plan  # tuned at batch 1
    result = rewrite(_model_with(_batch(0)), plan)
    assert {n.name for n in result.report.rewritten} == {l.name for l in plan.layers if l.choice != "keep"}


def test_saved_plans_put_one_field_per_line_for_version_control(tmp_path):
    path = _tuned().plan.save(tmp_path / "p.json")
    lines = path.read_text().splitlines()
    assert lines[0] == "{" and lines[1] == ' "format": "onnx-diagwise plan",' and lines[2] == ' "version": 1,'
    assert path.read_text().endswith("}\n") and len(lines) > 100


def test_plans_that_cannot_be_written_or_read_name_the_file_and_the_cause(tmp_path):
    plan = _tuned().plan
    missing = tmp_path / "no such folder" / "p.json"
    with pytest.raises(DiagwiseError) as refused:
        plan.save(missing)
    assert str(refused.value) == f"cannot write the plan '{missing}': No such file or directory"
    assert not list(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(DiagwiseError) as refused:
        TunedPlan.load(missing)
    assert str(refused.value) == f"cannot read the plan '{missing}': No such file or directory"


NOT_PLANS = {
    "another format": ({"format": "some other tool", "version": 1, "layers": []}, 'no "format": "onnx-diagwise plan"'),
    "a list": ([], 'no "format": "onnx-diagwise plan"'),
    "a number": (1, 'no "format": "onnx-diagwise plan"'),
}


@pytest.mark.parametrize("content, words", NOT_PLANS.values(), ids=NOT_PLANS.keys())
def test_json_that_is_no_plan_is_refused_in_one_line(tmp_path, content, words):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DiagwiseError) as refused:
        TunedPlan.load(path)
    assert str(refused.value) == f"'{path}' is not a plan file this version reads: {words}"


def test_a_plan_records_the_cuda_and_cudnn_versions_the_onnxruntime_build_names(monkeypatch):
    from onnxruntime.capi import build_and_package_info as build

    for key in ("cuda_version", "cudnn_version"):
        monkeypatch.delattr(build, key, raising=False)
    assert _tuned().plan.measured_on == {"provider": "fake", "device": "test device"}  # a CPU build names none
    monkeypatch.setattr(build, "cuda_version", "12.4", raising=False)
    monkeypatch.setattr(build, "cudnn_version", "9.1.0", raising=False)
    assert _tuned().plan.measured_on == {"provider": "fake", "device": "test device", "cuda_version": "12.4",
                                         "cudnn_version": "9.1.0"}


# ---------------------------------------------------------------- what a plan records, field by field


def _little_endian_sha256(tensor) -> str:
    array = numpy_helper.to_array(tensor)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()


MV1_SIGNATURE = {"form": "float", "multiplier": 1, "kernel": [3, 3], "dilations": [1, 1], "pads": [1, 1, 1, 1],
                 "auto_pad": "NOTSET", "dtype": "float32"}


def test_a_plan_records_every_layer_as_tuning_decided_it():
    report = _tuned(min_speedup=0.25)
    plan, model = report.plan, onnx.load(MV1)
    assert [layer.name for layer in plan.layers] == [f"dw{i}" for i in range(1, 14)]
    for planned, layer in zip(plan.layers, report.layers):
        assert planned == PlannedLayer(
            layer.node, "main", planned.signature, _little_endian_sha256(_weight(model, layer.node)), layer.input_shape,
            layer.choice if layer.rewritten else "keep", layer.decision, layer.times_ms, layer.original_ms)
        assert planned.times_ms is not layer.times_ms  # the plan's own copy
    dw1, dw9 = plan.layers[0], plan.layers[8]
    assert dw9 == PlannedLayer("dw9", "main", {**MV1_SIGNATURE, "channels": 128, "strides": [1, 1]},
                               _little_endian_sha256(_weight(model, "dw9")), [1, 128, 14, 14], "4",
                               "G=4: 2.00x faster than depthwise",
                               {"2": 2000.0, "4": 500.0, "8": 2000.0, "16": 2000.0, "32": 2000.0, "64": 2000.0,
                                "128": 2000.0, "toeplitz": 2000.0, "polyphase:4": 2000.0, "polyphase:8": 2000.0,
                                "polyphase:8:fold": 2000.0, "polyphase:16:fold": 2000.0},
                               1000.0)
    assert dw1.signature == {**MV1_SIGNATURE, "channels": 8, "strides": [1, 1]}
    assert plan.layers[1].signature == {**MV1_SIGNATURE, "channels": 16, "strides": [2, 2]}
    assert (dw1.choice, dw1.reason, dw1.input_shape) == ("keep", "kept original: every candidate slower (best G=2: 0.50x)",
                                                         [1, 8, 112, 112])
    assert plan.measured_on == planfile.measured_on({"provider": "fake", "device": "test device"})
    assert plan.input_shapes == {"input": [1, 3, 224, 224]}
    assert (plan.original_ms, plan.tuned_ms) == (report.original_ms, report.tuned_ms) == (1000.0, pytest.approx(910.0))
    assert plan.min_speedup == 0.25 and plan.summary == report.summary
    assert plan.summary == "9 of 13 depthwise node(s) rewritten; whole model 1.10x faster"
    assert plan.end_to_end_speedup == pytest.approx(1000.0 / 910.0)


def test_a_plan_lists_the_nodes_tuning_could_not_measure():
    report = tune(dynamic_weight_model(), TuneOptions(timer=Timer(), use_cache=False))
    assert report.plan.layers == [PlannedLayer(
        "dw", "main", {"form": "dynamic", "channels": 8, "multiplier": 2, "kernel": [3, 3], "strides": [1, 1],
                       "dilations": [1, 1], "pads": None, "auto_pad": "NOTSET", "dtype": "float32"},
        None, None, "keep", "kept original: auto tunes float Conv layers only, not dynamic", {}, None)]
    assert (report.plan.original_ms, report.plan.tuned_ms, report.plan.min_speedup) == (None, None, 0.05)
    assert report.plan.summary == "kept the original: no layer was faster rewritten"
    assert report.plan.end_to_end_speedup is None
    model = qlinearconv_model(c=8)
    [layer] = tune(model, TuneOptions(timer=Timer(), use_cache=False)).plan.layers
    weight = next(t for t in model.graph.initializer if t.name == "w")
    assert (layer.signature["form"], layer.signature["dtype"], layer.weight_sha256) == (
        "QLinearConv", "int8", _little_endian_sha256(weight))


def test_weight_digests_are_of_the_values_whatever_their_byte_order(monkeypatch):
    from onnx_diagwise.detect import detect
    from onnx_diagwise.shapes import infer_value_types

    for dtype, big in (("float32", ">f4"), ("float16", ">f2")):
        model = depthwise_model(channels=8, dtype=dtype)
        [conv] = detect(model, infer_value_types(model)).candidates
        values = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
        assert planfile.weight_digest(conv) == hashlib.sha256(values.astype("<" + big[1:]).tobytes()).hexdigest()
        native = planfile.weight_digest(conv)
        with monkeypatch.context() as patch:  # the same values, read as a big-endian array
            patch.setattr(planfile, "tensor_array", lambda tensor: values.astype(big))
            assert planfile.weight_digest(conv) == native
            patch.setattr(planfile, "tensor_array", lambda tensor: values[::-1].copy())
            assert planfile.weight_digest(conv) != native
    [conv] = detect(dynamic_weight_model(), infer_value_types(dynamic_weight_model())).candidates
    assert planfile.weight_digest(conv) is None


def test_a_plan_signature_names_auto_pad_and_no_pads():
    from onnx_diagwise.detect import detect
    from onnx_diagwise.shapes import infer_value_types

    model = depthwise_model(channels=4, multiplier=3, kernel=(3, 5), strides=(2, 1), dilations=(1, 2),
                            auto_pad="SAME_UPPER", dtype="float16")
    [conv] = detect(model, infer_value_types(model)).candidates
    assert planfile.signature(conv) == {"form": "float", "channels": 4, "multiplier": 3, "kernel": [3, 5],
                                        "strides": [2, 1], "dilations": [1, 2], "pads": None,
                                        "auto_pad": "SAME_UPPER", "dtype": "float16"}


def test_a_saved_plan_is_its_dict_as_indented_json_and_loads_back_equal(tmp_path):
    plan = _tuned().plan
    path = plan.save(tmp_path / "p.json")
    assert path == tmp_path / "p.json" and sorted(os.listdir(tmp_path)) == ["p.json"]
    data = plan.to_dict()
    assert list(data) == ["format", "version", "layers", "measured_on", "input_shapes", "original_ms", "tuned_ms",
                          "min_speedup", "summary", "end_to_end_speedup"]
    assert (data["format"], data["version"], data["min_speedup"]) == ("onnx-diagwise plan", 1, 0.05)
    assert data["end_to_end_speedup"] == plan.original_ms / plan.tuned_ms
    assert data["layers"][8] == {"name": "dw9", "graph": "main", "signature": plan.layers[8].signature,
                                 "weight_sha256": plan.layers[8].weight_sha256, "input_shape": [1, 128, 14, 14],
                                 "choice": "4", "reason": "G=4: 2.00x faster than depthwise",
                                 "times_ms": plan.layers[8].times_ms, "original_ms": 1000.0}
    assert path.read_text() == json.dumps(data, indent=1) + "\n"
    loaded = TunedPlan.load(path)
    assert loaded == plan and loaded.min_speedup == 0.05 and loaded.summary == plan.summary
    path.write_text(json.dumps({**data, "summary": "edited"}))  # a plan file as written elsewhere
    assert TunedPlan.load(path).summary == "edited"


def test_a_plan_saved_over_a_folder_is_refused_and_leaves_nothing(tmp_path):
    (tmp_path / "p.json").mkdir()
    with pytest.raises(DiagwiseError) as refused:
        _tuned().plan.save(tmp_path / "p.json")
    assert str(refused.value) == f"cannot write the plan '{tmp_path / 'p.json'}': Is a directory"
    assert sorted(os.listdir(tmp_path)) == ["p.json"]


def test_plan_files_from_elsewhere_are_read_with_defaults_and_refused_naming_what_is_wrong(tmp_path):
    path = tmp_path / "p.json"
    layer = {"name": "dw1", "graph": "main", "signature": {}, "weight_sha256": None, "input_shape": None,
             "choice": "polyphase:16:2d", "reason": "why"}
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "layers": [{**layer, "comment": "ignored"}],
                                "measured_on": {"device": "d"}, "input_shapes": {}, "note": "ignored"}))
    plan = TunedPlan.load(path)
    assert plan == TunedPlan([PlannedLayer("dw1", "main", {}, None, None, "polyphase:16:2d", "why")], {"device": "d"}, {})
    assert (plan.original_ms, plan.tuned_ms, plan.min_speedup, plan.summary) == (None, None, None, "")
    assert (plan.layers[0].times_ms, plan.layers[0].original_ms) == ({}, None)
    refusals = {
        "no layers": ({"format": FORMAT, "version": 1, "measured_on": {}, "input_shapes": {}}, "'layers'"),
        "no input shapes": ({"format": FORMAT, "version": 1, "layers": [], "measured_on": {}},
                            "TunedPlan.__init__() missing 1 required positional argument: 'input_shapes'"),
        "no version": ({"format": FORMAT, "layers": []}, "format version None, this version reads 1"),
        "version as text": ({"format": FORMAT, "version": "1", "layers": []},
                            "format version '1', this version reads 1"),
        "no format": ({"version": 1, "layers": []}, 'no "format": "onnx-diagwise plan"'),
        "a layer without its reason": ({"format": FORMAT, "version": 1, "measured_on": {}, "input_shapes": {},
                                        "layers": [{k: v for k, v in layer.items() if k != "reason"}]},
                                       "PlannedLayer.__init__() missing 1 required positional argument: 'reason'"),
    }
    for content, words in refusals.values():
        path.write_text(json.dumps(content))
        with pytest.raises(DiagwiseError) as refused:
            TunedPlan.load(path)
        assert str(refused.value) == f"'{path}' is not a plan file this version reads: {words}"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "measured_on": {}, "input_shapes": {},
                                "layers": [layer, {**layer, "name": "dw2", "choice": "keep"},
                                           {**layer, "name": "dw3", "choice": "Dense"}]}))
    with pytest.raises(DiagwiseError) as refused:
        TunedPlan.load(path)
    assert str(refused.value) == ("node 'dw3': choice takes a positive integer G, 'toeplitz', "
                                  "'polyphase[:B][:2d][:fold]' (B >= 2) or 'conv2d'; got 'Dense'")
    assert refused.value.parameters == ("node 'dw3': choice",)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DiagwiseError) as refused:
        TunedPlan.load(tmp_path / "binary.json")
    assert str(refused.value) == f"'{tmp_path / 'binary.json'}' is not a plan file (not JSON)"


def test_a_lenient_plan_lists_every_difference_in_order():
    from onnx_diagwise.detect import detect
    from onnx_diagwise.shapes import infer_value_types

    plan = _without(_without(_tuned().plan, "dw13"), "dw2")
    plan.layers.append(PlannedLayer("ghost", "main", {}, None, None, "keep", ""))
    plan.layers.append(PlannedLayer("another", "main", {}, None, None, "keep", ""))
    model = onnx.load(MV1)
    found = detect(model, infer_value_types(model))
    problems = ["node 'another' (main) of the plan is not a depthwise Conv of the model",
                "node 'ghost' (main) of the plan is not a depthwise Conv of the model",
                "node 'dw13' (main) of the model is not in the plan",
                "node 'dw2' (main) of the model is not in the plan"]
    assert PlanPolicy(plan, lenient=True).check(found) == problems
    with pytest.raises(DiagwiseError) as refused:
        PlanPolicy(plan).check(found)
    assert str(refused.value) == (f"the plan does not fit the model: {problems[0]} (and 3 more difference(s); "
                                  "plan_lenient applies what fits)")
    assert PlanPolicy(_tuned().plan).check(found) == [] and str(PlanPolicy(plan)) == "plan"


def test_planned_nodes_say_the_plans_reason_and_keep_their_tuned_size_only_where_static():
    plan = _tuned().plan
    nodes = {n.name: n for n in rewrite(MV1, plan).report.nodes}
    assert (nodes["dw9"].code, nodes["dw9"].reason) == (Reason.PLANNED,
                                                        "G=4, group=32 (plan: G=4: 2.00x faster than depthwise)")
    assert (nodes["dw1"].code, nodes["dw1"].reason) == (
        Reason.KEPT_BY_MEASUREMENT, "plan: kept original: every candidate slower (best G=2: 0.50x)")
    for layer in plan.layers:  # tuned at batch 8: MV1's batch is symbolic, so any fits
        layer.input_shape = [8] + layer.input_shape[1:]
    assert {n.name for n in rewrite(MV1, plan).report.rewritten} == {f"dw{i}" for i in range(5, 14)}


def test_a_plan_saved_beside_a_folder_of_its_old_temporary_name_is_written(tmp_path):
    """Each save writes through a temporary file of its own: whatever sits beside the target under a
    name like one is left alone."""
    (tmp_path / ".p.json.tmp").mkdir()
    plan = _tuned().plan
    plan.save(tmp_path / "p.json")
    assert TunedPlan.load(tmp_path / "p.json") == plan
    assert sorted(os.listdir(tmp_path)) == [".p.json.tmp", "p.json"]


def test_a_plan_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DiagwiseError) as refused:
        _tuned().plan.save(tmp_path / "p.json")
    assert str(refused.value) == f"cannot write the plan '{tmp_path / 'p.json'}': No space left on device"
    assert os.listdir(tmp_path) == []


def test_a_plan_is_written_through_a_hidden_file_beside_it(tmp_path, monkeypatch):
    """Beside the target, so the final rename stays on one file system and is atomic."""
    moves, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((src, dst)), real_replace(src, dst)))
    _tuned().plan.save(tmp_path / "p.json")
    [(src, dst)] = moves
    assert os.path.dirname(src) == str(tmp_path) and os.path.basename(src).startswith(".p.json.")
    assert dst == tmp_path / "p.json" and os.listdir(tmp_path) == ["p.json"]


def test_a_plan_file_gets_the_mode_of_a_new_file_or_keeps_the_one_it_replaces(tmp_path):
    path = tmp_path / "p.json"
    umask = os.umask(0o022)
    try:
        _tuned().plan.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as any new file, not mkstemp's 0600
        path.chmod(0o640)
        _tuned().plan.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(umask)
