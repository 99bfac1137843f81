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


def test_depthwise_nodes_pairs_grouped_kernels_by_their_source():
    first = bench.Profile("a", 1, {}, [
        bench.NodeTime("dw_nchwc", "Conv", 10.0, group=2, source="dw"),
        bench.NodeTime("pw", "Conv", 5.0, group=1, source="pw"),
        bench.NodeTime("Reorder", "ReorderInput", 3.0),
        bench.NodeTime("fused", "FusedConv", 4.0, group=8)])
    second = bench.Profile("b", 1, {}, [bench.NodeTime("dw", "Conv", 7.0, group=1, source="dw")])
    report = bench.BenchReport([], 1, {}, profiles=[first, second])
    assert report.depthwise_nodes() == [
        {"node": "dw_nchwc", "source": "dw", "group": 2, "times_us": [10.0, 7.0], "groups": [2, 1]},
        {"node": "fused", "source": None, "group": 8, "times_us": [4.0, None], "groups": [8, None]}]
    assert bench.BenchReport([], 1, {}).depthwise_nodes() == []


def _tiny_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compare_of_empty_outputs_is_zero(clock):
    starts, ends, axes = (onnx.numpy_helper.from_array(np.array([v], np.int64), n)
                          for n, v in [("s", 0), ("e", 0), ("a", 1)])
    model = _tiny_model([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
                        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 0])], [starts, ends, axes])
    report = bench.benchmark([model, model], RuntimeConfig("cpu"), warmup=0, iterations=1, compare=True)
    assert [(m.max_abs_diff, m.max_ref_abs) for m in report.models] == [(0.0, 0.0), (0.0, 0.0)]


def test_compare_scale_of_int8_outputs_is_their_magnitude(clock):
    scale, zero = (onnx.numpy_helper.from_array(np.array(v, t), n)
                   for n, v, t in [("scale", 1.0, np.float32), ("zero", 0, np.int8)])
    model = _tiny_model([helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])],
                        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                        [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [1, 4])], [scale, zero])
    data = {"x": np.array([[-300.0, 5.0, 0.0, 2.0]], np.float32)}  # quantizes to -128
    report = bench.benchmark([model, model], RuntimeConfig("cpu"), bench.InputOptions(data=data), warmup=0,
                             iterations=1, compare=True)
    assert [(m.max_abs_diff, m.max_ref_abs) for m in report.models] == [(0.0, 128.0), (0.0, 128.0)]


class _SpiedSession:
    """An onnxruntime session that counts how it is run; TRACE, when given, replaces the profile it writes."""

    def __init__(self, session, calls, trace=None):
        self._session, self._calls, self._trace = session, calls, trace

    def __getattr__(self, name):
        attr = getattr(self._session, name)
        if name not in ("run", "run_with_iobinding", "end_profiling"):
            return attr

        def call(*args, **kwargs):
            self._calls.append(name)
            result = attr(*args, **kwargs)
            return str(self._trace) if name == "end_profiling" and self._trace else result
        return call


def _spy_sessions(monkeypatch, trace=None):
    """Every session bench creates, spied on: (profiled?, calls) per session, in creation order."""
    sessions = []
    real = bench.create_session

    def create(model, config, profile_prefix=None, optimized_path=None):
        calls = []
        sessions.append((profile_prefix is not None, calls))
        return _SpiedSession(real(model, config, profile_prefix, optimized_path), calls,
                             trace if profile_prefix is not None else None)

    monkeypatch.setattr(bench, "create_session", create)
    return sessions


@pytest.mark.parametrize("iobinding", [False, True])
def test_profile_runs_the_models_as_they_were_timed(monkeypatch, iobinding):
    from helpers import depthwise_model

    sessions = _spy_sessions(monkeypatch)
    bench.benchmark([depthwise_model()], RuntimeConfig("cpu"), warmup=0, iterations=2, iobinding=iobinding,
                    profile=True, profile_runs=3)
    timed = "run_with_iobinding" if iobinding else "run"
    assert sessions == [(False, ["run"] + [timed] * 2), (True, [timed] * 3 + ["end_profiling"])]


def test_profile_reads_the_kernel_times_of_onnxruntime_trace(monkeypatch, tmp_path):
    import json

    from helpers import depthwise_model

    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([
        {"cat": "Session", "name": "model_run", "dur": 900},
        {"cat": "Node", "name": "a_kernel_time", "dur": 10, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "a_kernel_time", "dur": 30, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "a_fence_before", "dur": 700, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "s_kernel_time", "dur": 800, "args": {"op_name": "Conv"}},
        {"cat": "Node", "dur": 600},
        {"cat": "Node", "name": "b_kernel_time", "dur": 4},
        {"cat": "Node", "name": "c_kernel_time", "args": {}},
    ]))
    _spy_sessions(monkeypatch, trace)
    report = bench.benchmark([depthwise_model()], RuntimeConfig("cpu"), warmup=0, iterations=1, profile=True,
                             profile_runs=2)
    profile = report.profiles[0]
    assert [(n.name, n.op_type, n.mean_us) for n in profile.nodes] == [("a", "Conv", 20.0), ("b", "?", 4.0),
                                                                       ("c", "?", 0.0)]
    assert profile.by_op_type_us == {"Conv": 20.0, "?": 4.0}


def test_profile_works_in_a_scratch_folder_it_removes(monkeypatch, tmp_path):
    import os
    import tempfile

    from helpers import depthwise_model

    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(cwd)
    seen = []
    real = bench.create_session

    def create(model, config, profile_prefix=None, optimized_path=None):
        seen.append(sorted(os.listdir(scratch)))
        return real(model, config, profile_prefix, optimized_path)

    monkeypatch.setattr(bench, "create_session", create)
    report = bench.benchmark([depthwise_model()], RuntimeConfig("cpu"), warmup=0, iterations=1, profile=True,
                             profile_runs=1)
    assert report.profiles[0].nodes
    assert seen[0] == [] and len(seen[1]) == 1 and seen[1][0].startswith("onnx-diagwise-profile-")
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []


def test_profile_groups_of_kernels_not_traced_to_a_conv_come_from_the_graph_onnxruntime_runs():
    from helpers import fused_conv_model

    report = bench.benchmark([fused_conv_model(c=12)], RuntimeConfig("cpu", threads=1), warmup=0, iterations=1,
                             profile=True, profile_runs=1)
    convs = [n for n in report.profiles[0].nodes if "Conv" in n.op_type]
    # the model's FusedConv is no Conv of its own: its group is onnxruntime's (12, or 16 when NCHWc pads it)
    assert len(convs) == 1 and convs[0].source is None and convs[0].group in (12, 16)


def test_profile_group_of_a_conv_without_a_group_attribute_is_one():
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w")
    model = _tiny_model([helper.make_node("Conv", ["x", "w"], ["y"], name="pointwise")],
                        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 6, 6])], [weight])
    report = bench.benchmark([model], RuntimeConfig("cpu", threads=1), warmup=0, iterations=1, profile=True,
                             profile_runs=1)
    traced = [(n.source, n.group) for n in report.profiles[0].nodes if n.source]
    assert traced == [("pointwise", 1)]


def test_conv_groups_of_a_saved_graph(tmp_path):
    weights = [onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in [("w4", (4, 1, 3, 3)), ("w1", (4, 4, 1, 1)), ("w2", (4, 2, 3, 3))]]
    nodes = [helper.make_node("Conv", ["x", "w4"], ["a"], name="depthwise", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w1"], ["b"], name="pointwise", kernel_shape=[1, 1]),
             helper.make_node("FusedConv", ["b", "w2"], ["c"], name="fused", domain="com.microsoft", group=2,
                              activation="Relu", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = _tiny_model(nodes, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 5])],
                        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], weights)
    path = tmp_path / "optimized.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    (tmp_path / "weights.bin").unlink()  # the groups are read without the weights
    assert bench._conv_groups(str(path)) == {"depthwise": 4, "pointwise": 1, "fused": 2}
    assert bench._conv_groups(str(tmp_path / "missing.onnx")) == {}  # a provider that saved no graph


def test_defaults_are_ten_warmup_runs_fifty_rounds_and_no_extras(clock, monkeypatch):
    from helpers import depthwise_model

    sessions = _spy_sessions(monkeypatch)
    report = bench.benchmark([depthwise_model()])
    env = report.environment
    assert (env["warmup"], env["rounds"], env["provider"], env["threads"]) == (10, 50, "CPUExecutionProvider", None)
    assert sessions == [(False, ["run"] * (1 + 10 + 50))]  # one untimed first run, the warmup, the rounds
    assert report.profiles == [] and report.models[0].max_abs_diff is None and "model_configs" not in env


def test_profile_defaults_to_twenty_runs():
    from helpers import depthwise_model

    report = bench.benchmark([depthwise_model()], RuntimeConfig("cpu"), warmup=0, iterations=1, profile=True)
    assert report.profiles[0].runs == 20


def test_inputs_are_drawn_with_the_seed(clock):
    from helpers import depthwise_model

    model = depthwise_model()

    def scale(**seed):  # the largest output of the first model: it follows the inputs drawn
        return bench.benchmark([model], RuntimeConfig("cpu"), warmup=0, iterations=1, compare=True,
                               **seed).models[0].max_ref_abs

    assert scale() == scale(seed=0) != scale(seed=1)


def test_the_order_of_runs_follows_the_seed(monkeypatch):
    def order(**seed):
        calls = []

        class Recorder:
            def __init__(self, model, config, feeds, iobinding, *rest):
                index = len(calls_by_runner)
                calls_by_runner.append(index)
                self.run = lambda: calls.append(index)

            def first_run(self, name):
                pass

        calls_by_runner = []
        monkeypatch.setattr(bench, "_Runner", Recorder)
        bench.benchmark([onnx.load(SAMPLE)] * 4, RuntimeConfig("cpu"), warmup=0, iterations=6, **seed)
        return calls

    assert order() == order(seed=0) == order(seed=0) != order(seed=1)


def test_the_config_given_is_the_one_timed_and_reported(clock):
    from helpers import depthwise_model

    model = depthwise_model()
    env = bench.benchmark([model, model], RuntimeConfig("cpu", threads=2), warmup=0, iterations=1).environment
    assert env["threads"] == 2 and "model_configs" not in env  # one config for all: no per-model list


@pytest.mark.parametrize("kwargs, parameters", [
    ({"warmup": -1}, ("warmup",)),
    ({"iterations": 3, "seconds": 1.0}, ("iterations", "seconds")),
    ({"iterations": 0}, ("iterations",)),
    ({"seconds": 0}, ("seconds",)),
])
def test_argument_errors_name_their_parameters(kwargs, parameters):
    with pytest.raises(DiagwiseError) as caught:
        bench.benchmark([str(SAMPLE)], RuntimeConfig("cpu"), **kwargs)
    assert caught.value.parameters == parameters


def test_no_round_starts_at_or_past_the_time_budget(clock):
    from helpers import depthwise_model

    model = depthwise_model()
    # one model: each round reads the clock three times (the budget check, start, end); a budget of
    # exactly ten reads leaves the fourth round's check on the deadline itself
    assert bench.benchmark([model], RuntimeConfig("cpu"), warmup=0, seconds=10 * 2.0 ** -11).environment[
        "rounds"] == 3
    # a budget is not capped at the default fifty rounds
    assert bench.benchmark([model], RuntimeConfig("cpu"), warmup=0, seconds=0.1).environment["rounds"] > 50


def test_environment_batch_is_the_inputs(clock):
    from helpers import depthwise_model

    report = bench.benchmark([depthwise_model()], RuntimeConfig("cpu"), bench.InputOptions(batch=3), warmup=0,
                             iterations=1)
    assert report.batch == report.environment["batch"] == 3


def test_a_model_onnxruntime_cannot_run_is_named():
    shape = onnx.numpy_helper.from_array(np.array([2, 4], np.int64), "shape")
    model = _tiny_model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])], [shape])
    with pytest.raises(DiagwiseError, match=r"^onnxruntime could not run 'reshaper' with inputs 'x' float32\[1, 4\]"):
        bench.benchmark([model], RuntimeConfig("cpu"), warmup=0, iterations=1, names=["reshaper"])


def test_symbolic_dims_are_sized_on_the_runtime_timed(clock, monkeypatch):
    from onnx_diagwise import dims

    seen, real = [], dims.create_session

    def create(model, config, *args, **kwargs):
        seen.append(config)
        return real(model, config, *args, **kwargs)

    monkeypatch.setattr(dims, "create_session", create)
    runtime = RuntimeConfig("cpu", threads=1)
    bench.benchmark([str(SAMPLE_DIR / "conformer_conv1d.onnx")], runtime, warmup=0, iterations=1)
    assert seen and all(config == runtime for config in seen)


def test_io_binding_follows_the_device_the_provider_names_for_its_options(clock, monkeypatch):
    from helpers import depthwise_model

    config = RuntimeConfig("cpu")
    asked = []

    def io_device(options):  # a provider that binds in host memory, as a test machine can
        asked.append(options)
        return "cpu", 0

    monkeypatch.setattr(config.family, "io_device", io_device)
    sessions = _spy_sessions(monkeypatch)
    report = bench.benchmark([depthwise_model()], config, warmup=0, iterations=2)
    assert report.environment["iobinding"] is True and sessions == [(False, ["run"] + ["run_with_iobinding"] * 2)]
    assert asked and all(options == config.checked_options for options in asked)


def test_device_name_refuses_options_the_provider_rejects(monkeypatch):
    monkeypatch.setattr(providers.subprocess, "run", lambda args, **kw: _Completed(0, "NVIDIA X, 1\n"))
    with pytest.raises(DiagwiseError, match="^provider option device_id=x: expected a GPU index"):
        bench.device_name(RuntimeConfig("cuda", {"device_id": "x"}))
