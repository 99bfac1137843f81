"""bench.benchmark with a fake clock: what is timed, how many rounds, in what units, the report's
fields, argument errors, and the output comparison of the timed sessions."""

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import SAMPLE_DIR
from onnx_diagwise import RuntimeConfig, bench, providers, rewrite
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


class _Completed:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout = returncode, stdout


def test_gpu_device_name_from_nvidia_smi(monkeypatch):
    calls = []

    def fake_run(args, **kwargs):
        calls.append((args, kwargs))
        return _Completed(0, "NVIDIA H100 80GB HBM3, 580.159.04\nNVIDIA H100 80GB HBM3, 580.159.04\n")

    monkeypatch.setattr(providers.subprocess, "run", fake_run)
    assert bench.device_name(RuntimeConfig("cuda")) == "NVIDIA H100 80GB HBM3, 580.159.04"
    assert calls == [(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                      {"capture_output": True, "text": True, "timeout": 10})]
    unknown = "GPU (name unknown: nvidia-smi not found)"
    monkeypatch.setattr(providers.subprocess, "run", lambda args, **kw: _Completed(1, "NVIDIA X\n"))
    assert bench.device_name(RuntimeConfig("cuda")) == unknown
    monkeypatch.setattr(providers.subprocess, "run", lambda args, **kw: _Completed(0, "  \n"))
    assert bench.device_name(RuntimeConfig("cuda")) == unknown

    def missing(args, **kw):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(providers.subprocess, "run", missing)
    assert bench.device_name(RuntimeConfig("cuda")) == unknown


def test_cpu_device_name_from_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Fake\nmodel name\t: Fake CPU @ 2.00GHz: rev 2 \nflags\t: x\n")
    real_path = providers.Path
    monkeypatch.setattr(providers, "Path", lambda p: real_path(info) if p == "/proc/cpuinfo" else real_path(p))
    assert bench.device_name(RuntimeConfig("cpu")) == "Fake CPU @ 2.00GHz: rev 2"
    info.write_text("processor\t: 0\n")
    monkeypatch.setattr(providers.platform, "processor", lambda: "")
    monkeypatch.setattr(providers.platform, "machine", lambda: "fakearch")
    assert bench.device_name(RuntimeConfig("cpu")) == "fakearch"
    monkeypatch.setattr(providers, "Path", lambda p: real_path(tmp_path / "missing"))
    monkeypatch.setattr(providers.platform, "processor", lambda: "fakeproc")
    assert bench.device_name(RuntimeConfig("cpu")) == "fakeproc"


def test_environment_fields():
    model = onnx.load(SAMPLE)
    env = bench.environment(RuntimeConfig("cpu", {"k": "v"}, 2), model, 4)
    import onnxruntime
    assert env["onnxruntime"] == onnxruntime.__version__
    assert (env["provider"], env["provider_options"], env["threads"], env["batch"]) == (
        "CPUExecutionProvider", {"k": "v"}, 2, 4)
    assert env["graph_optimization_level"] == "all" and env["spin"] is False
    assert env["input_dtypes"] == {model.graph.input[0].name: "float32"}
    assert env["device"] == env["cpu"] == bench.device_name(RuntimeConfig("cpu"))
    assert env["cpu_count"] >= 1 and env["python"].count(".") == 2 and env["platform"]


def test_profile_structure():
    model = onnx.load(SAMPLE)
    rewritten = rewrite(model, group_size=4).model
    report = bench.benchmark([model, rewritten], RuntimeConfig("cpu", threads=1), warmup=0, iterations=1,
                             profile=True, profile_runs=3)
    for profile, name in zip(report.profiles, ["model 0", "model 1"]):
        assert profile.model == name and profile.runs == 3
        means = [n.mean_us for n in profile.nodes]
        assert means == sorted(means, reverse=True) and all(m >= 0 for m in means)
        totals = list(profile.by_op_type_us.values())
        assert totals == sorted(totals, reverse=True)
        assert sum(totals) == pytest.approx(sum(means))
        assert set(profile.by_op_type_us) == {n.op_type for n in profile.nodes}
    own = {n.name: a.i for n in rewritten.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"}
    traced = [n for n in report.profiles[1].nodes if n.source in own]
    assert traced and all(n.group == own[n.source] for n in traced)
    rows = report.depthwise_nodes()
    assert rows and all(set(r) == {"node", "source", "group", "times_us", "groups"} for r in rows)
    assert all(r["group"] > 1 and len(r["times_us"]) == 2 for r in rows)
    assert all(r["groups"][1] == r["group"] // 4 for r in rows if r["groups"][1] is not None)


def test_environment_time_is_iso_8601():
    import re

    env = bench.environment(RuntimeConfig("cpu"), onnx.load(SAMPLE), 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", env["time"]), env["time"]


def test_batch_of_the_first_input():
    assert bench._batch_of({"x": np.zeros((3, 2)), "y": np.zeros((5,))}) == 3
    assert bench._batch_of({"x": np.zeros(())}) == 1
    assert bench._batch_of({}) == 1


def test_inputs_must_match_in_dtype_and_names_symbolic_dims():
    model = onnx.load(SAMPLE)
    half = onnx.load(SAMPLE)
    half.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    with pytest.raises(DiagwiseError, match="float16"):
        bench._check_same_inputs([model, half], ["a", "b"])
    symbolic = onnx.load(SAMPLE)
    symbolic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(DiagwiseError, match=r"^'b' has inputs \{'.*': \('float32', \[.*'\?'.*\]\)\}"):
        bench._check_same_inputs([model, symbolic], ["a", "b"])


def test_compare_refuses_outputs_of_other_shapes():
    model = onnx.load(SAMPLE)
    flat = onnx.load(SAMPLE)
    out = flat.graph.output[0].name
    flat.graph.node[-1].output[0] = "pre"
    flat.graph.node.append(helper.make_node("Transpose", ["pre"], [out], name="flat", perm=[1, 0]))
    del flat.graph.output[0].type.tensor_type.shape.dim[:]
    with pytest.raises(DiagwiseError, match="^'model 1' has outputs of other shapes than the first model's$"):
        bench.benchmark([model, flat], RuntimeConfig("cpu"), iterations=1, compare=True)


def test_speedup_interval_is_the_bootstrap_of_medians():
    rng = np.random.default_rng(7)
    reference, candidate = rng.normal(2.0, 0.2, 30), rng.normal(1.0, 0.1, 30)
    resample = np.random.default_rng(0)  # the documented default seed
    ref = np.median(resample.choice(reference, (400, 30)), axis=1)
    cand = np.median(resample.choice(candidate, (400, 30)), axis=1)
    expected = tuple(float(v) for v in np.percentile(ref / cand, [2.5, 97.5]))
    assert bench.speedup_interval(reference, candidate) == expected
