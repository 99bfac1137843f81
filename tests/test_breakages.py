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
