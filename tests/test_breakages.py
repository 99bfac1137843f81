"""Behaviours that no output comparison shows: fair timing, exact validation settings, the
streamed writer, warnings and highlighting.  Each test here failed when its behaviour was
broken on purpose (one line changed)."""

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import SAMPLE_DIR, depthwise_model
from onnx_diagwise import RuntimeConfig, bench, inspect, validation
from onnx_diagwise.api import _growth_warnings
from onnx_diagwise.graphs import unique_name
from onnx_diagwise.model_io import PROTOBUF_LIMIT, save_model
from onnx_diagwise.render import compare_table
from onnx_diagwise.report import model_stats
from onnx_diagwise.dims import make_inputs
from onnx_diagwise.runtime import InputOptions, create_session
from onnx_diagwise.tuning import timing
from onnx_diagwise.validation import OutputComparison, _merge

SAMPLE = SAMPLE_DIR / "mobilenet_v1_025.onnx"


def test_benchmark_runs_the_models_in_a_fresh_random_order_each_round(monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, model, config, feeds, iobinding, *rest):
            self.index = len(self.created)
            self.created.append(self)
            self.run = lambda: calls.append(self.index)

        def first_run(self, name):
            pass

    Recorder.created = []
    monkeypatch.setattr(bench, "_Runner", Recorder)
    model = onnx.load(SAMPLE)
    bench.benchmark([model] * 4, RuntimeConfig("cpu"), warmup=0, iterations=12, seed=3)
    rounds = [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 12 and all(sorted(r) == [0, 1, 2, 3] for r in rounds)
    assert len(set(rounds)) > 3  # not one fixed rotation


def test_sessions_do_not_spin_unless_asked():
    session = create_session(str(SAMPLE), RuntimeConfig("cpu"))
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spinning = create_session(str(SAMPLE), RuntimeConfig("cpu", spin=True)).get_session_options()
    with pytest.raises(Exception):  # onnxruntime's default: the entry is not set at all
        spinning.get_session_config_entry("session.intra_op.allow_spinning")


def test_io_binding_binds_every_output():
    model = onnx.load(SAMPLE)
    feeds = make_inputs(model, InputOptions())
    bound = bench._Runner(model, RuntimeConfig("cpu"), feeds, iobinding=True)
    plain = bench._Runner(model, RuntimeConfig("cpu"), feeds, iobinding=False)
    got, want = bound.outputs(), plain.outputs()
    assert len(got) == len(want) == len(bound.session.get_outputs())
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _captured_cuda_config(monkeypatch, **kw):
    seen = {}

    def capture(model, config, *rest, **kws):
        seen["config"] = config
        raise RuntimeError("captured")

    monkeypatch.setattr(validation, "create_session", capture)
    with pytest.raises(RuntimeError, match="captured"):
        validation.validate(str(SAMPLE), str(SAMPLE), RuntimeConfig("cuda", {"use_tf32": "1"}), **kw)
    return seen["config"]


def test_validation_turns_tf32_off_on_cuda_unless_allowed(monkeypatch):
    assert _captured_cuda_config(monkeypatch).provider_options["use_tf32"] == "0"
    assert _captured_cuda_config(monkeypatch, allow_tf32=True).provider_options["use_tf32"] == "1"


def _comparison(passed, max_abs):
    return OutputComparison("y", passed, "", max_abs=max_abs)


def test_validation_keeps_the_worst_of_several_runs():
    good, worse, failing = _comparison(True, 1e-7), _comparison(True, 1e-6), _comparison(False, 1.0)
    assert _merge(None, good) is good
    assert _merge(good, worse) is worse and _merge(worse, good) is worse
    assert _merge(good, failing) is failing and _merge(failing, worse) is failing


def test_tuning_runs_more_rounds_while_within_noise(monkeypatch):
    calls = []

    def fake_benchmark(models, config, inputs, warmup, iterations, names, seed):
        calls.append(seed)
        close = {names[0]: [1.0, 1.001, 0.999], names[1]: [1.0, 1.002, 0.998]}
        return type("Report", (), {"samples_ms": close})()

    monkeypatch.setattr(timing, "benchmark", fake_benchmark)
    timer = timing.OrtTimer(RuntimeConfig("cpu"), InputOptions(), max_batches=3)
    timer.models(["a", "b"])
    assert calls == [0, 1, 2]  # three batches, each with its own order

    def apart(models, config, inputs, warmup, iterations, names, seed):
        calls.append(seed)
        return type("Report", (), {"samples_ms": {names[0]: [1.0] * 3, names[1]: [2.0] * 3}})()

    calls.clear()
    monkeypatch.setattr(timing, "benchmark", apart)
    assert timer.models(["a", "b"]) == [0.001, 0.002]
    assert calls == [0]


def test_unique_name_avoids_taken_names():
    taken = {"w", "w_2"}
    assert unique_name("w", taken) == "w_3" and "w_3" in taken
    assert unique_name("v", taken) == "v" and "v" in taken


def test_old_opset_keeps_dynamic_weights_depthwise():
    model = depthwise_model(channels=8, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    model.opset_import[0].version = 6
    (node,) = inspect(model, 4).nodes
    assert node.action == "skipped"
    assert node.reason == "weight is a graph input; the run-time expansion needs opset >= 7; the model has 6"
    model.opset_import[0].version = 7
    assert inspect(model, 4).nodes[0].action == "rewrite"


def test_growth_and_two_gib_warnings():
    assert _growth_warnings(100, 204, 2.0) == []  # shown as 2.0x: not more than 2x
    (growth,) = _growth_warnings(100, 206, 2.0)
    assert growth.startswith("weights grew 2.1x (100 B -> 206 B), more than the 2x threshold (warn_growth)")
    assert growth.parameters == ("warn_growth", "group_size")
    warnings = _growth_warnings(PROTOBUF_LIMIT, PROTOBUF_LIMIT + 1, 2.0)
    assert warnings == ["the model now passes 2 GiB (2.0 GiB); it is saved with external data"]
    assert _growth_warnings(PROTOBUF_LIMIT + 1, PROTOBUF_LIMIT + 2, 2.0) == []  # it passed already


def test_table_highlights_exactly_the_changed_rows():
    model = onnx.load(SAMPLE)
    before = model_stats(model)
    table = compare_table(before, before, 10, 20, None)
    written = [str(c) for c in table.columns[2]._cells]
    assert [c for c in written if "[bold cyan]" in c] == ["[bold cyan]20 B[/bold cyan]"]  # only the file size
    assert not any("[bold cyan]" in str(c) for c in table.columns[1]._cells)


def test_writer_streams_the_weights(tmp_path):
    """The writer holds one initializer at a time, never the whole model's bytes."""
    tensors = [numpy_helper.from_array(np.full((1 << 20,), i, np.float32), f"t{i}") for i in range(16)]
    graph = helper.make_graph([helper.make_node("Identity", ["t0"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1 << 20])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    tracemalloc.start()
    try:
        save_model(model, path, external_data=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.read_bytes() == model.SerializeToString()
    assert peak < 3 * (4 << 20), peak  # a few 4 MiB tensors at most, not the 64 MiB model


def test_kernel_shape_that_disagrees_with_the_weight_is_left_alone():
    model = depthwise_model(channels=8, bias=False)
    node = model.graph.node[0]
    for attr in node.attribute:
        if attr.name == "kernel_shape":
            attr.ints[:] = [5, 5]
            break
    else:
        node.attribute.append(helper.make_attribute("kernel_shape", [5, 5]))
    (decision,) = inspect(model, 4).nodes
    assert decision.action == "skipped"
    assert decision.reason == "kernel_shape [5, 5] disagrees with weight [8, 1, 3, 3]"


def test_weight_whose_bytes_do_not_match_its_shape_is_left_alone():
    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:-4]
    (decision,) = inspect(model, 4).nodes
    assert decision.action == "skipped"
    assert decision.reason == "weight data (284 bytes) does not match its shape [8, 1, 3, 3]"


# --- The public API's own arguments, errors and warnings (onnx_diagwise.api) ---

from pathlib import Path  # noqa: E402

from onnx_diagwise import DiagwiseError, rewrite  # noqa: E402
from onnx_diagwise.api import TuneOptions  # noqa: E402
from onnx_diagwise.plan import Selection  # noqa: E402


@pytest.mark.parametrize("warn_growth", [1, 1.0, 0, -3])
def test_warn_growth_of_one_or_less_is_refused_naming_the_parameter(warn_growth):
    with pytest.raises(DiagwiseError) as raised:
        rewrite(depthwise_model(channels=8), 4, warn_growth=warn_growth)
    assert str(raised.value) == f"warn_growth must be > 1; got {warn_growth}"
    assert raised.value.parameters == ("warn_growth",)


def test_warn_growth_just_above_one_warns_of_any_growth():
    model = depthwise_model(channels=8, bias=False)  # G = 8: the weight grows 8x
    assert rewrite(model, "full", warn_growth=1.01).report.warnings[0].startswith("weights grew 8.0x")
    assert not rewrite(model, "full", warn_growth=9).report.warnings


def test_inspect_refuses_auto():
    with pytest.raises(DiagwiseError) as raised:
        inspect(depthwise_model(channels=8), "auto")
    assert str(raised.value) == "inspect cannot show 'auto' without measuring: use tune"


def test_include_that_matches_no_node_says_so():
    result = rewrite(depthwise_model(channels=8, name="dw"), 4, Selection(include="^nothing$"))
    [warning] = result.report.warnings
    assert warning == ("nothing rewritten: include '^nothing$' matches no depthwise convolution; "
                       "the output is a copy of the input")
    assert warning.parameters == ("include",)


def test_include_that_matches_a_node_left_alone_for_another_reason_gives_the_general_warning():
    result = rewrite(depthwise_model(channels=8, name="dw"), 4, Selection(include="d", min_channels=64))
    [warning] = result.report.warnings
    assert warning == ("nothing rewritten: each of the 1 depthwise convolution(s) was left alone "
                       "(the reasons: each node's reason); the output is a copy of the input")
    assert warning.parameters == ()


def test_group_size_one_warning_names_group_size():
    [warning] = rewrite(depthwise_model(channels=8), 1).report.warnings
    assert warning == ("nothing rewritten: group_size 1 keeps every layer depthwise (G = 1); "
                       "the output is a copy of the input")
    assert warning.parameters == ("group_size",)


def test_rewrite_defaults_to_the_paper_policy():
    assert rewrite(depthwise_model(channels=8)).report.policy == "paper" == inspect(depthwise_model(channels=8)).policy
    assert rewrite(depthwise_model(channels=8)).report.policy == inspect(depthwise_model(channels=8), "paper").policy
    assert inspect(depthwise_model(channels=8)).policy == rewrite(depthwise_model(channels=8), "paper").report.policy


def test_tune_options_cache_where_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNX_DIAGWISE_CACHE_DIR", str(tmp_path / "default"))
    assert TuneOptions(cache_dir=tmp_path / "mine").make_cache().path == tmp_path / "mine" / "tune-cache.json"
    assert TuneOptions().make_cache().path == tmp_path / "default" / "tune-cache.json"
    assert TuneOptions(cache_dir=tmp_path / "mine", use_cache=False).make_cache().path is None


def test_tune_options_timer_measures_with_the_inputs_given():
    own = object()
    assert TuneOptions(timer=own).make_timer(InputOptions(batch=3)) is own
    asked, default = InputOptions(batch=3), InputOptions(batch=5)
    timer = TuneOptions(RuntimeConfig("cpu", threads=1), inputs=default).make_timer(asked)
    assert timer.inputs is asked and timer.config == RuntimeConfig("cpu", threads=1)
    assert TuneOptions(inputs=default).make_timer().inputs is default
    assert TuneOptions(provider="cpu").make_timer().inputs == InputOptions()
    assert TuneOptions(provider="cpu").make_timer().config == RuntimeConfig("cpu")


def test_input_shapes_size_the_flops_of_symbolic_inputs():
    symbolic = depthwise_model(channels=8, spatial=("H", "W"))
    fixed = depthwise_model(channels=8, spatial=(9, 9))
    [unsized] = inspect(symbolic, 4).nodes
    [sized] = inspect(symbolic, 4, input_shapes={"x": [1, 8, 9, 9]}).nodes
    [known] = inspect(fixed, 4).nodes
    assert unsized.flops_before is None
    assert sized.flops_before == known.flops_before > 0 and sized.flops_after == known.flops_after > 0
    [rewritten] = rewrite(symbolic, 4, input_shapes={"x": [1, 8, 9, 9]}).report.nodes
    assert rewritten.flops_before == known.flops_before


def test_old_opset_named_ai_onnx_keeps_dynamic_weights_depthwise():
    model = depthwise_model(channels=8, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    model.opset_import[0].version = 6
    model.opset_import[0].domain = "ai.onnx"
    (node,) = inspect(model, 4).nodes
    assert node.reason == "weight is a graph input; the run-time expansion needs opset >= 7; the model has 6"


def test_dynamic_false_gives_its_own_reason_whatever_the_opset():
    model = depthwise_model(channels=8, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    (node,) = inspect(model, 4, Selection(dynamic=False)).nodes
    assert node.reason == "weight is a graph input; dynamic weights left alone (dynamic=False)"
    assert inspect(model, 4).nodes[0].action == "rewrite"  # by default a dynamic weight is expanded at run time


def test_model_that_imports_no_default_opset_is_still_planned():
    model = depthwise_model(channels=8, bias=False)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert inspect(model, 4).nodes[0].action == "rewrite"


def test_rewrite_leaves_the_callers_model_proto_as_it_was():
    model = depthwise_model(channels=8)
    before = model.SerializeToString()
    result = rewrite(model, 4)
    assert model.SerializeToString() == before
    assert result.model is not model and result.tuning is None


class _NothingPays:
    """Every candidate form is slower than the depthwise layer: auto keeps the original."""

    def __init__(self):
        self.timed = []

    def layer(self, signature, models):
        self.timed.append(signature)
        return {spec: 1.0 if spec == "1" else 2.0 for spec in models}

    def models(self, models):
        return [1.0] * len(models)

    def context(self):
        return {"provider": "fake", "device": "test device"}


def test_auto_or_a_plan_that_keeps_the_original_gives_no_nothing_rewritten_warning(tmp_path):
    from onnx_diagwise.tuning.planfile import TunedPlan

    model = depthwise_model(channels=8)
    timer = _NothingPays()
    auto = rewrite(model, "auto", tune_options=TuneOptions(timer=timer, use_cache=False))
    assert len(timer.timed) == 1  # measured with the timer given
    assert auto.tuning is not None and not auto.report.rewritten
    assert auto.report.warnings == []
    planned = rewrite(model, TunedPlan.load(auto.tuning.save(tmp_path / "plan.json")))
    assert not planned.report.rewritten and planned.report.warnings == []


def test_rewrite_reports_the_time_it_took():
    import time

    start = time.perf_counter()
    report = rewrite(depthwise_model(channels=8), 4).report
    assert 0 <= report.elapsed_s <= time.perf_counter() - start


def test_a_lenient_plan_lists_the_nodes_that_do_not_fit_as_warnings(tmp_path):
    from onnx_diagwise.tuning.planfile import PlanPolicy

    tuned = rewrite(depthwise_model(channels=8, name="dw"), "auto",
                    tune_options=TuneOptions(timer=_NothingPays(), use_cache=False)).tuning
    result = rewrite(depthwise_model(channels=8, name="other"), PlanPolicy(tuned.plan, lenient=True))
    assert result.report.warnings == ["node 'dw' (main) of the plan is not a depthwise Conv of the model",
                                      "node 'other' (main) of the model is not in the plan"]


def _conv_model(channels: int, group: int):
    w = numpy_helper.from_array(np.ones((channels, channels // group, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=group)], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group, why", [
    (1, "the model has no depthwise or grouped convolution"),
    (2, "each of the 1 grouped convolution(s) was left alone, none of them a depthwise one this tool can rewrite "
        "(the reasons: each node's reason)")], ids=["plain", "grouped"])
def test_a_rewrite_that_finds_nothing_to_rewrite_says_why(group, why):
    [warning] = rewrite(_conv_model(8, group), 4).report.warnings
    assert warning == f"nothing rewritten: {why}; the output is a copy of the input"


def test_auto_measures_only_the_layers_the_selection_lets_it_touch():
    timer = _NothingPays()
    result = rewrite(depthwise_model(channels=8, name="dw"), "auto", Selection(exclude="^dw$"),
                     tune_options=TuneOptions(timer=timer, use_cache=False))
    assert timer.timed == [] and result.report.nodes[0].action == "skipped"


def test_tuning_reports_its_progress_to_the_callback_given(tmp_path):
    from onnx_diagwise import tune

    seen = []
    options = TuneOptions(timer=_NothingPays(), cache_dir=tmp_path, progress=lambda *a: seen.append(a))
    report = tune(depthwise_model(channels=8, name="dw"), options)
    assert seen and all(len(a) == 3 for a in seen)
    assert [layer.name for layer in report.plan.layers] == ["dw"]
    assert (tmp_path / "tune-cache.json").exists()  # measured timings kept where asked


def test_a_model_of_exactly_2_gib_has_not_passed_2_gib():
    assert _growth_warnings(PROTOBUF_LIMIT - 1, PROTOBUF_LIMIT, 2.0) == []


def test_tuning_times_layers_at_the_batch_asked_for():
    from onnx_diagwise import tune

    timer = _NothingPays()
    tune(depthwise_model(channels=8), TuneOptions(timer=timer, use_cache=False, inputs=InputOptions(batch=3)))
    [signature] = timer.timed
    assert signature.input_shape == (3, 8, 9, 9)


def test_tuning_refuses_a_time_budget_of_zero():
    from onnx_diagwise import tune

    with pytest.raises(DiagwiseError, match="time_budget must be > 0 seconds; got 0"):
        tune(depthwise_model(channels=8), TuneOptions(timer=_NothingPays(), use_cache=False, time_budget=0))
