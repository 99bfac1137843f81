"""bench.benchmark with a fake clock: what is timed, how many rounds, in what units, the report's
fields, argument errors, and the output comparison of the timed sessions."""

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import SAMPLE_DIR
from onnx_diagwise import RuntimeConfig, bench, rewrite
from onnx_diagwise.errors import DiagwiseError

SAMPLE = SAMPLE_DIR / "mobilenet_v1_025.onnx"
TICK_MS = 2.0 ** -11 * 1000  # 0.48828125, exact


@pytest.fixture
def clock(monkeypatch):
    """perf_counter advancing 2**-11 s per call (exact in binary): every timed run takes exactly
    0.48828125 ms."""
    now = [0.0]

    def tick():
        now[0] += 2.0 ** -11
        return now[0]

    monkeypatch.setattr(bench.time, "perf_counter", tick)
    return now


def test_iterations_give_that_many_samples_in_milliseconds(clock):
    model = onnx.load(SAMPLE)
    report = bench.benchmark([model, model], RuntimeConfig("cpu"), warmup=2, iterations=7)
    assert report.samples_ms == {"model 0": [TICK_MS] * 7, "model 1": [TICK_MS] * 7}
    first, second = report.models
    assert (first.name, first.runs, first.median_ms, first.min_ms, first.mean_ms, first.std_ms) == (
        "model 0", 7, TICK_MS, TICK_MS, TICK_MS, 0.0)
    assert first.ratio == second.ratio == 1.0 and second.speedup == 1.0 and first.speedup_ci95 is None
    assert second.speedup_ci95 == (1.0, 1.0)
    batch = report.batch
    assert first.throughput == batch / (TICK_MS / 1000)
    env = report.environment
    assert (env["warmup"], env["rounds"], env["iobinding"]) == (2, 7, False)
    assert set(report.to_dict()) == {"environment", "batch", "models", "profiles", "samples_ms"}
    assert report.to_dict()["samples_ms"] == report.samples_ms and report.to_dict()["batch"] == batch


def test_default_is_fifty_rounds_and_seconds_is_a_budget(clock):
    model = onnx.load(SAMPLE)
    assert bench.benchmark([model], RuntimeConfig("cpu"), warmup=0).environment["rounds"] == 50
    # about 0.5 ms per clock read, two reads per run: a 10 ms budget holds a handful of rounds, not 50
    rounds = bench.benchmark([model], RuntimeConfig("cpu"), warmup=0, seconds=0.01).environment["rounds"]
    assert 3 <= rounds <= 10


def test_names_default_to_paths_and_positions(clock):
    model = onnx.load(SAMPLE)
    report = bench.benchmark([str(SAMPLE), model], RuntimeConfig("cpu"), warmup=0, iterations=1)
    assert [m.name for m in report.models] == [str(SAMPLE), "model 1"]


@pytest.mark.parametrize("kwargs, message", [
    ({"models": []}, "^bench needs at least one model$"),
    ({"warmup": -1}, "^warmup must be >= 0; got -1$"),
    ({"iterations": 3, "seconds": 1.0}, "^give iterations or seconds, not both$"),
    ({"iterations": 0}, "^iterations must be >= 1; got 0$"),
    ({"seconds": 0}, "^seconds must be > 0; got 0$"),
    ({"configs": [RuntimeConfig("cpu")]}, "^configs needs one RuntimeConfig per model, all on the same provider$"),
])
def test_argument_errors(kwargs, message):
    args = {"models": [str(SAMPLE), str(SAMPLE)], "config": RuntimeConfig("cpu"), **kwargs}
    with pytest.raises(DiagwiseError, match=message):
        bench.benchmark(**args)


def test_models_must_take_the_same_inputs():
    other = onnx.load(SAMPLE)
    other.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    with pytest.raises(DiagwiseError, match="^'model 1' has inputs .* unlike the first model's .*; bench compares "
                                            "models with the same inputs$"):
        bench.benchmark([onnx.load(SAMPLE), other], RuntimeConfig("cpu"), iterations=1)


def test_compare_measures_each_model_against_the_first(clock):
    model = onnx.load(SAMPLE)
    shifted = onnx.load(SAMPLE)
    out = shifted.graph.output[0].name
    shifted.graph.node[-1].output[0] = "pre"
    shifted.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.25, np.float32), "quarter"))
    shifted.graph.node.append(helper.make_node("Add", ["pre", "quarter"], [out], name="shift"))
    report = bench.benchmark([model, rewrite(model, group_size=4).model, shifted], RuntimeConfig("cpu"),
                             iterations=1, compare=True)
    reference = bench._Runner(model, RuntimeConfig("cpu"), bench.make_inputs(model, bench.InputOptions()),
                              False).outputs()[0]
    first, rewritten, other = report.models
    assert first.max_abs_diff == 0.0 and first.max_ref_abs == pytest.approx(float(np.abs(reference).max()))
    assert rewritten.max_abs_diff < 1e-4 * first.max_ref_abs
    assert other.max_abs_diff == pytest.approx(0.25, rel=1e-5)


def test_speedup_interval_brackets_the_ratio_of_medians():
    rng = np.random.default_rng(1)
    reference, candidate = rng.normal(2.0, 0.05, 200), rng.normal(1.0, 0.05, 200)
    low, high = bench.speedup_interval(reference, candidate)
    assert low < np.median(reference) / np.median(candidate) < high and high - low < 0.1
    assert bench.speedup_interval(np.full(20, 2.0), np.full(20, 1.0)) == (2.0, 2.0)
