"""--group-size auto: decisions from a deterministic fake timer, then real runs on the CPU provider."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SAMPLE_DIR, cli, random_inputs, run
from onnx_diagwise import DiagwiseError, InputOptions, RuntimeConfig, TuneOptions, rewrite, tune

MV1 = SAMPLE_DIR / "mobilenet_v1_025.onnx"
MV2 = SAMPLE_DIR / "mobilenetv2_block.onnx"


class FakeTimer:
    """Layer time = table[C][form] (G as an int, a lowering by its spec; 10 s when not listed);
    model time = base + the per-node deltas of the rewritten nodes."""

    def __init__(self, layer_times, node_deltas=None, base=1.0, clock=None, tick=0.0):
        self.layer_times, self.node_deltas, self.base = layer_times, node_deltas or {}, base
        self.layer_calls = self.model_calls = 0
        self.clock, self.tick = clock, tick

    def layer(self, signature, models):
        self.layer_calls += 1
        if self.clock is not None:
            self.clock.now += self.tick
        table = self.layer_times[signature.channels]
        return {spec: table.get(int(spec) if spec.isdigit() else spec, 10.0) for spec in models}

    def models(self, models):
        self.model_calls += 1
        return [self.base + sum(self.node_deltas.get(n.name, 0.0) for n in m.graph.node
                                if n.op_type == "Conv" and _rewritten(n, m)) for m in models]

    def context(self):
        return {"provider": "fake", "device": "test"}


def _rewritten(node, model):
    """A depthwise node of MobileNet V1 whose weight now has G > 1 columns."""
    weight = next(t for t in model.graph.initializer if t.name == node.input[1])
    return node.name.startswith("dw") and weight.dims[1] > 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _mv1_times(winner_channels=(), speedup=2.0):
    """Every MobileNet V1 0.25 layer (C in 8..256): G slower, except layers whose C is listed."""
    times = {}
    for c in (8, 16, 32, 64, 128, 256):
        times[c] = {1: 1.0, **{g: 1.5 for g in (2, 4, 8, 16, 32, 64, c)}}
        if c in winner_channels:
            times[c][4] = 1.0 / speedup
    return times


def _options(timer, tmp_path=None, **kw):
    return TuneOptions(timer=timer, cache_dir=tmp_path, use_cache=tmp_path is not None, **kw)


def test_picks_the_fastest_g():
    timer = FakeTimer(_mv1_times(winner_channels=(128,)), node_deltas={f"dw{i}": -0.01 for i in range(1, 14)})
    report = tune(MV1, _options(timer))
    chosen = report.choices
    assert set(chosen) == {"dw7", "dw8", "dw9", "dw10", "dw11", "dw12"} and set(chosen.values()) == {"4"}
    assert timer.layer_calls == 9  # one measurement per distinct layer signature (13 nodes)
    dw7 = next(layer for layer in report.layers if layer.node == "dw7")
    assert dw7.speedup == pytest.approx(2.0) and dw7.decision == "G=4: 2.00x faster than depthwise"
    dw1 = report.layers[0]
    assert dw1.choice == "1" and "every candidate slower (best G=2: 0.67x)" in dw1.decision
    assert report.end_to_end_speedup == pytest.approx(1.0 / (1.0 - 0.06))


def test_respects_the_margin():
    times = _mv1_times(winner_channels=(128,), speedup=1.03)
    report = tune(MV1, _options(FakeTimer(times, {f"dw{i}": -0.01 for i in range(1, 14)})))
    assert report.choices == {}
    assert "only 1.03x faster (margin 1.05x)" in report.layers[6].decision
    report = tune(MV1, _options(FakeTimer(times, {f"dw{i}": -0.01 for i in range(1, 14)}), min_speedup=0.01))
    assert len(report.choices) == 6


def test_drops_rewrites_that_slow_the_whole_model():
    # Each 128-channel layer wins alone, but dw7 and dw8 make the whole model slower.
    deltas = {"dw7": 0.2, "dw8": 0.2, "dw9": -0.05, "dw10": -0.05, "dw11": -0.05, "dw12": -0.05}
    times = _mv1_times(winner_channels=(128,))
    report = tune(MV1, _options(FakeTimer(times, deltas)))
    # All six tie on measured benefit, so they drop in node order until the model is faster.
    assert report.dropped == ["dw7", "dw8"]
    assert set(report.choices) == {"dw9", "dw10", "dw11", "dw12"}
    assert report.tuned_ms < report.original_ms
    dropped = next(layer for layer in report.layers if layer.node == "dw7")
    assert "whole model was not faster with it" in dropped.decision


def test_keeps_the_original_when_nothing_pays_end_to_end():
    deltas = {f"dw{i}": 0.1 for i in range(7, 13)}
    result = rewrite(MV1, "auto", tune_options=_options(FakeTimer(_mv1_times(winner_channels=(128,)), deltas)))
    assert result.tuning.choices == {}
    assert result.tuning.summary.startswith("kept the original: the rewritten model was not faster end to end")
    assert not result.report.rewritten
    assert result.model == onnx.load(MV1)
    assert all(n.reason.startswith("kept original") for n in result.report.nodes)


@settings(max_examples=25, deadline=None)
@given(layer_speedups=st.lists(st.floats(0.3, 3.0), min_size=6, max_size=6),
       deltas=st.lists(st.floats(-0.2, 0.2), min_size=13, max_size=13))
def test_never_returns_a_slower_model(layer_speedups, deltas):
    times = {c: {1: 1.0, **{g: 1.0 / s for g in (2, 4, 8, 16, 32, 64, c)}}
             for c, s in zip((8, 16, 32, 64, 128, 256), layer_speedups)}
    timer = FakeTimer(times, {f"dw{i + 1}": d for i, d in enumerate(deltas)})
    result = rewrite(MV1, "auto", tune_options=_options(timer))
    chosen = result.tuning.choices
    if chosen:
        assert result.tuning.tuned_ms < result.tuning.original_ms
        # the model returned is the one measured faster
        assert timer.models([onnx.load(MV1), result.model]) == pytest.approx(
            [result.tuning.original_ms / 1000, result.tuning.tuned_ms / 1000], rel=1e-12)
    else:
        assert result.model == onnx.load(MV1)
    assert {n.name for n in result.report.rewritten} == set(chosen)


def test_cache_hit_on_second_run(tmp_path):
    first = FakeTimer(_mv1_times())
    tune(MV1, _options(first, tmp_path))
    assert first.layer_calls == 9
    second = FakeTimer(_mv1_times())
    report = tune(MV1, _options(second, tmp_path))
    assert second.layer_calls == 0 and all(layer.cached for layer in report.layers)
    # Another provider context is another cache key.
    third = FakeTimer(_mv1_times())
    third.context = lambda: {"provider": "other"}
    tune(MV1, _options(third, tmp_path))
    assert third.layer_calls == 9


def test_time_budget_is_respected():
    clock = Clock()
    timer = FakeTimer(_mv1_times(winner_channels=(8, 16, 32, 64, 128, 256)), clock=clock, tick=10.0)
    from onnx_diagwise.tuning import tune as tune_layers

    report = tune_layers(onnx.load(MV1), timer, time_budget=15.0, clock=clock)
    assert timer.layer_calls == 2  # at t=0 and t=10; at t=20 the budget is spent
    untuned = [layer for layer in report.layers if "not tuned, time_budget 15s spent" in layer.decision]
    assert [layer.node for layer in untuned] == [f"dw{i}" for i in range(3, 14)]
    assert all(not layer.rewritten and layer.parameters == ("time_budget",) for layer in untuned)


def test_unknown_input_shape_and_bad_options():
    conformer = SAMPLE_DIR / "conformer_conv1d.onnx"
    times = FakeTimer({144: {1: 1.0, 2: 2.0, 4: 2.0, 8: 2.0, 16: 2.0, 144: 2.0}})
    report = tune(conformer, _options(times, inputs=InputOptions(dims={"T": 40})))
    assert report.layers[0].input_shape == [1, 144, 40]
    report = tune(conformer, _options(times))  # T sized by trying: the first sequence length that runs
    assert report.layers[0].input_shape == [1, 144, 128]
    with pytest.raises(DiagwiseError, match="no dim named 'time'"):
        tune(conformer, _options(times, inputs=InputOptions(dims={"time": 40})))
    with pytest.raises(DiagwiseError, match="^min_speedup must be >= 0"):
        tune(MV1, _options(FakeTimer(_mv1_times()), min_speedup=-1))
    with pytest.raises(DiagwiseError, match="^time_budget must be > 0"):
        tune(MV1, _options(FakeTimer(_mv1_times()), time_budget=0))


def test_real_cpu_run_keeps_decisions_consistent_with_measurements(tmp_path):
    options = TuneOptions(RuntimeConfig("cpu", threads=1), cache_dir=tmp_path)
    result = rewrite(MV2, "auto", tune_options=options)
    tuning = result.tuning
    assert [layer.node for layer in tuning.layers] == ["dwconv_5", "dwconv_14"]
    for layer in tuning.layers:
        assert layer.original_ms > 0 and set(layer.times_ms) >= {"2", "4", "8", "16"}
        assert layer.speedup == pytest.approx(layer.original_ms / layer.best_ms)
        if not layer.rewritten:
            assert layer.decision.startswith("kept original")
            assert layer.speedup < 1.05 or layer.node in tuning.dropped
        else:  # it won alone by the margin, and the whole model was measured faster with it
            assert layer.speedup >= 1.05 and tuning.tuned_ms < tuning.original_ms
    feeds = random_inputs(onnx.load(MV2))
    for a, b in zip(run(onnx.load(MV2), feeds), run(result.model, feeds)):
        assert abs(a - b).max() < 1e-4
    again = tune(MV2, options)
    assert all(layer.cached for layer in again.layers)


def test_cli_auto_tune_and_cache(tmp_path):
    out, report = tmp_path / "auto.onnx", tmp_path / "auto.json"
    cache = tmp_path / "cache"
    r = cli("rewrite", MV2, out, "-g", "auto", "--threads", "1", "--cache-dir", cache, "--json", report)
    assert r.returncode == 0, r.stderr
    assert "Per-layer tuning on CPUExecutionProvider" in r.stdout
    data = json.loads(report.read_text())
    assert data["policy"] == "auto" and len(data["tuning"]["layers"]) == 2
    assert out.exists()
    r = cli("tune", MV2, "--threads", "1", "--cache-dir", cache, "--json", "-")
    layers = json.loads(r.stdout)["layers"]
    assert r.returncode == 0 and all(layer["cached"] for layer in layers)
    r = cli("cache", "info", "--cache-dir", cache)
    assert "2 layer timing(s)" in r.stdout
    r = cli("cache", "clear", "--cache-dir", cache)
    assert r.returncode == 0 and "removed" in r.stdout and not (cache / "tune-cache.json").exists()
    for flags, expected in ((["--min-speedup", "-1"], "--min-speedup must be >= 0"),
                            (["--time-budget", "0"], "--time-budget must be > 0")):
        r = cli("rewrite", MV2, tmp_path / "x.onnx", "-g", "auto", "--no-cache", *flags)
        assert r.returncode == 2 and expected in r.stderr and not (tmp_path / "x.onnx").exists()
    r = cli("inspect", MV2, "-g", "auto")
    assert r.returncode == 2 and "use tune" in r.stderr


def test_cli_tune_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "tune.png"
    r = cli("tune", MV2, "--threads", "1", "--cache-dir", tmp_path / "cache", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_separated_decides_when_more_rounds_are_needed():
    from onnx_diagwise.tuning import separated

    rng = np.random.default_rng(0)
    tight_a, tight_b = list(1.0 + 0.001 * rng.standard_normal(30)), list(0.9 + 0.001 * rng.standard_normal(30))
    assert separated([tight_a, tight_b])  # 10% apart, little noise
    noisy_a, noisy_b = list(1.0 + 0.3 * rng.standard_normal(10)), list(0.97 + 0.3 * rng.standard_normal(10))
    assert not separated([noisy_a, noisy_b])  # 3% apart, 30% noise
    assert not separated([tight_a, list(np.array(tight_a) * 1.005)])  # under 1%
    assert separated([tight_a])


# ---------------------------------------------------------------- a cache that is only a cache


def _cache_file(tmp_path, entries) -> None:
    """A cache as one earlier run left it, then ENTRIES put in place of every entry."""
    tune(MV1, _options(FakeTimer(_mv1_times()), tmp_path))
    path = tmp_path / "tune-cache.json"
    stored = json.loads(path.read_text())
    if callable(entries):
        stored["entries"] = {k: entries(v) for k, v in stored["entries"].items()}
        path.write_text(json.dumps(stored, allow_nan=True))
    else:
        path.write_text(entries)


DAMAGED = {
    "a list": "[]",
    "entries a list": '{"version": 1, "entries": []}',
    "not JSON": "{not json",
    "entry a list": lambda v: list(v.values()),
    "string times": lambda v: {g: str(t) for g, t in v.items()},
    "no G=1": lambda v: {g: t for g, t in v.items() if g != "1"},
    "a time of 0": lambda v: {**v, "1": 0},
    "G not an integer": lambda v: {**v, "x4": 0.5},
    "NaN": lambda v: {**v, "4": float("nan")},
    "poisoned": lambda v: {**v, "4": 1e-12},  # would read as a million-fold speedup
    "negative": lambda v: {**v, "4": -1.0},
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_cache_entries_are_measured_again_with_a_warning(tmp_path, caplog, damage):
    _cache_file(tmp_path, damage)
    timer = FakeTimer(_mv1_times(winner_channels=(128,)), node_deltas={f"dw{i}": -0.01 for i in range(1, 14)})
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        report = tune(MV1, _options(timer, tmp_path))
    assert timer.layer_calls == 9 and not any(layer.cached for layer in report.layers)
    assert set(report.choices.values()) == {"4"} and max(layer.speedup for layer in report.layers) == pytest.approx(2.0)
    assert "tuning cache" in caplog.text
    again = FakeTimer(_mv1_times())
    tune(MV1, _options(again, tmp_path))  # the damage is gone: the second run hits the new entries
    assert again.layer_calls == 0


def test_damaged_cache_does_not_fail_the_command_line(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tune-cache.json").write_text('{"version": 1, "entries": {"k": {"1": "slow"}}}')
    r = cli("rewrite", MV2, tmp_path / "x.onnx", "-g", "auto", "--threads", "1", "--cache-dir", cache,
            "--time-budget", "1")
    assert r.returncode == 0, r.stderr
    assert "damaged" in r.stderr and "Traceback" not in r.stderr
    assert cli("cache", "info", "--cache-dir", cache).returncode == 0


def test_good_entries_survive_beside_damaged_ones(tmp_path):
    tune(MV1, _options(FakeTimer(_mv1_times()), tmp_path))
    path = tmp_path / "tune-cache.json"
    stored = json.loads(path.read_text())
    first = sorted(stored["entries"])[0]
    stored["entries"][first] = {"1": "nan"}
    path.write_text(json.dumps(stored))
    timer = FakeTimer(_mv1_times())
    tune(MV1, _options(timer, tmp_path))
    assert timer.layer_calls == 1  # only the damaged layer measured again


def _tune_in_another_process(args) -> None:
    cache_dir, provider = args
    timer = FakeTimer(_mv1_times())
    timer.context = lambda: {"provider": provider}
    tune(MV1, _options(timer, cache_dir))


def test_concurrent_tuning_runs_merge_their_entries(tmp_path):
    import multiprocessing

    providers = [f"p{i}" for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_tune_in_another_process, [(tmp_path, p) for p in providers])
    stored = json.loads((tmp_path / "tune-cache.json").read_text())
    assert len(stored["entries"]) == 4 * 9  # every run's nine layers, none lost
    for provider in providers:
        timer = FakeTimer(_mv1_times())
        timer.context = lambda provider=provider: {"provider": provider}
        tune(MV1, _options(timer, tmp_path))
        assert timer.layer_calls == 0


def test_an_unwritable_cache_folder_only_warns(tmp_path, caplog):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    timer = FakeTimer(_mv1_times(winner_channels=(128,)), node_deltas={f"dw{i}": -0.01 for i in range(1, 14)})
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        report = tune(MV1, _options(timer, tmp_path / "file" / "cache"))
    assert report.choices and "cannot write the tuning cache" in caplog.text
    r = cli("rewrite", MV2, tmp_path / "x.onnx", "-g", "auto", "--threads", "1", "--cache-dir",
            tmp_path / "file" / "cache", "--time-budget", "1")
    assert r.returncode == 0 and "cannot write the tuning cache" in r.stderr, r.stderr


# ---------------------------------------------------------------- where the cache lives, what timers see


CACHE_HOMES = {
    "ONNX_DIAGWISE_CACHE_DIR first": ({"ONNX_DIAGWISE_CACHE_DIR": "own", "XDG_CACHE_HOME": "xdg"}, "own"),
    "then XDG_CACHE_HOME": ({"XDG_CACHE_HOME": "xdg"}, "xdg/onnx-diagwise"),
    "an empty setting is no setting": ({"ONNX_DIAGWISE_CACHE_DIR": "", "XDG_CACHE_HOME": "xdg"}, "xdg/onnx-diagwise"),
    "then ~/.cache": ({}, "home/.cache/onnx-diagwise"),
    "an empty XDG_CACHE_HOME too": ({"XDG_CACHE_HOME": ""}, "home/.cache/onnx-diagwise"),
}


@pytest.mark.parametrize("environment, folder", CACHE_HOMES.values(), ids=CACHE_HOMES.keys())
def test_the_cache_lives_where_the_environment_says(tmp_path, monkeypatch, environment, folder):
    from onnx_diagwise.tuning import clear_cache, default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("ONNX_DIAGWISE_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(tmp_path / value) if value else "")
    assert default_cache_dir() == tmp_path / folder
    tune(MV1, TuneOptions(timer=FakeTimer(_mv1_times())))  # the default cache of tuning
    assert (tmp_path / folder / "tune-cache.json").is_file()
    assert clear_cache() == tmp_path / folder / "tune-cache.json" and clear_cache() is None


def test_a_layer_signature_labels_channels_kernel_strides_shape_and_dtype():
    labels = []

    class Labelling(FakeTimer):
        def layer(self, signature, models):
            labels.append(signature.label())
            return super().layer(signature, models)

    tune(MV1, _options(Labelling(_mv1_times())))
    assert labels[:2] == ["C=8 k=3x3 s=1x1 in=[1, 8, 112, 112] float32", "C=16 k=3x3 s=2x2 in=[1, 16, 112, 112] float32"]


class FakeBenchmark:
    """Stands in for bench.benchmark under OrtTimer: records each call; a model's samples (ms) are
    samples(model, batch seed), so nothing is timed."""

    def __init__(self, samples):
        self.samples, self.calls = samples, []

    def __call__(self, models, config=None, inputs=None, warmup=10, iterations=None, names=None, seed=0, **kw):
        self.calls.append(dict(models=list(models), config=config, inputs=inputs, warmup=warmup,
                               iterations=iterations, seed=seed))
        names = names or [f"model {i}" for i in range(len(models))]  # as benchmark names ModelProtos
        from types import SimpleNamespace
        return SimpleNamespace(samples_ms={n: list(self.samples(m, seed)) for n, m in zip(names, models)})


def _ort_timer(monkeypatch, samples, inputs=None, **kw):
    from onnx_diagwise.tuning import OrtTimer, timing

    bench = FakeBenchmark(samples)
    monkeypatch.setattr(timing, "benchmark", bench)
    config = RuntimeConfig("cpu", threads=1)
    return OrtTimer(config, inputs or InputOptions(), **kw), bench, config


def test_ort_timer_times_the_original_layer_first_and_each_form_once_at_the_layers_own_size(monkeypatch):
    from onnx_diagwise.tuning.layers import signature_of

    forms = {spec: onnx.ModelProto(doc_string=spec) for spec in ("8", "1", "toeplitz")}
    ms = {"1": 4.0, "8": 2.0, "toeplitz": 3.0}  # clearly apart: one batch
    timer, bench, config = _ort_timer(monkeypatch, lambda m, seed: [ms[m.doc_string]] * 5, InputOptions(batch=4),
                                      warmup=2, iterations=7)
    assert timer.layer(None, forms) == pytest.approx({"1": 0.004, "8": 0.002, "toeplitz": 0.003})
    [call] = bench.calls
    assert [m.doc_string for m in call["models"]] == ["1", "8", "toeplitz"]  # the reference first
    assert call["config"] is config and call["inputs"] == InputOptions()  # the layer's input is sized already
    assert (call["warmup"], call["iterations"], call["seed"]) == (2, 7, 0)


def test_ort_timer_times_whole_models_with_the_users_inputs(monkeypatch):
    models = [onnx.ModelProto(doc_string="original"), onnx.ModelProto(doc_string="tuned")]
    ms = {"original": 10.0, "tuned": 8.0}
    inputs = InputOptions(batch=4, dims={"T": 40})
    timer, bench, config = _ort_timer(monkeypatch, lambda m, seed: [ms[m.doc_string]] * 5, inputs,
                                      warmup=3, model_iterations=9)
    assert timer.models(models) == pytest.approx([0.010, 0.008])
    [call] = bench.calls
    assert call["models"] == models and call["config"] is config and call["inputs"] is inputs
    assert (call["warmup"], call["iterations"], call["seed"]) == (3, 9, 0)


def test_ort_timer_runs_more_batches_only_while_the_medians_are_within_noise(monkeypatch):
    models = [onnx.ModelProto(doc_string="original"), onnx.ModelProto(doc_string="tuned")]
    # the two tie in the first batch, are within noise after the second, apart after the third
    apart = lambda m, seed: [5.0 if (m.doc_string == "tuned" and seed) else 10.0] * 5
    timer, bench, _ = _ort_timer(monkeypatch, apart, max_batches=4)
    assert timer.models(models) == pytest.approx([0.010, 0.005])
    assert [call["seed"] for call in bench.calls] == [0, 1, 2]  # another input seed per batch
    # never apart: max_batches batches, then the medians of all samples
    tied = lambda m, seed: [1.0 + seed] * 5
    timer, bench, _ = _ort_timer(monkeypatch, tied)
    assert timer.models(models) == pytest.approx([0.002, 0.002])
    assert [call["seed"] for call in bench.calls] == [0, 1, 2]


def test_ort_timer_defaults(monkeypatch):
    models = [onnx.ModelProto(doc_string="original"), onnx.ModelProto(doc_string="tuned")]
    timer, bench, _ = _ort_timer(monkeypatch, lambda m, seed: [1.0] * 5)
    timer.models(models)
    timer.layer(None, {"1": models[0], "8": models[1]})
    assert [(c["warmup"], c["iterations"]) for c in bench.calls] == [(5, 30)] * 3 + [(5, 25)] * 3


def test_ort_timer_context_names_what_timings_depend_on():
    import onnxruntime

    from onnx_diagwise.tuning import OrtTimer

    context = OrtTimer(RuntimeConfig("cpu", threads=3, opt_level="basic"), InputOptions()).context()
    assert context == {"provider": "CPUExecutionProvider", "provider_options": {}, "threads": 3, "opt_level": "basic",
                       "device": RuntimeConfig("cpu").family.device({}), "onnxruntime": onnxruntime.__version__}


def test_a_tuning_report_as_json_carries_every_result():
    timer = FakeTimer(_mv1_times(winner_channels=(128,)), node_deltas={"dw7": 0.2, "dw8": -0.05})
    report = tune(MV1, _options(timer))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"context", "min_speedup", "original_ms", "tuned_ms", "end_to_end_speedup", "dropped",
                         "summary", "elapsed_s", "choices", "layers", "plan"}
    assert data["context"] == {"provider": "fake", "device": "test"} and data["min_speedup"] == 0.05
    assert (data["original_ms"], data["tuned_ms"]) == (report.original_ms, report.tuned_ms) != (None, None)
    assert data["end_to_end_speedup"] == pytest.approx(report.original_ms / report.tuned_ms)
    assert data["dropped"] == ["dw7"] and data["summary"] == report.summary and data["elapsed_s"] == report.elapsed_s
    assert data["choices"] == report.choices and "dw9" in data["choices"]
    assert [layer["node"] for layer in data["layers"]] == [f"dw{i}" for i in range(1, 14)]
    assert data["layers"][6]["decision"] == report.layers[6].decision and data["layers"][6]["best"] == "4"
    assert data["plan"] == json.loads(json.dumps(report.plan.to_dict()))
    report.plan = None
    assert report.to_dict()["plan"] is None


EDGES = {  # five samples each, medians and quartiles close to the line of twice the combined standard error
    "within noise": ([9.0, 9.0, 9.5, 9.5, 11.5], [10.0, 10.0, 12.0, 13.0, 13.5], False),
    "apart, skewed reference": ([8.5, 10.0, 10.5, 11.0, 11.5], [10.2, 10.8, 14.2, 14.2, 14.2], True),
    "apart, faster candidate": ([8.5, 10.0, 10.5, 11.5, 12.0], [7.5, 9.0, 9.0, 10.0, 10.0], True),
    "within noise, faster candidate": ([8.0, 8.0, 9.5, 9.5, 11.0], [6.2, 7.2, 7.8, 8.8, 8.8], False),
    "no noise, under 1% of 10": ([10.0] * 5, [9.95] * 5, False),
    "no noise, 2% of 10": ([10.0] * 5, [9.8] * 5, True),
}


@pytest.mark.parametrize("reference, candidate, apart", EDGES.values(), ids=EDGES.keys())
def test_separated_at_the_edge_of_the_noise(reference, candidate, apart):
    from onnx_diagwise.tuning import separated

    assert separated([reference, candidate]) is apart
    assert separated([reference, [100.0] * 5, candidate]) is apart  # the fastest candidate decides


def test_decisions_at_the_margins_name_the_measured_times():
    times = _mv1_times()
    times[128][4] = 0.8  # 1.25x: exactly the margin asked for, so rewritten
    times[64][2] = 1.0  # exactly as fast as the original: kept, and said so
    timer = FakeTimer(times, node_deltas={f"dw{i}": -0.01 for i in range(1, 14)})
    report = tune(MV1, _options(timer, min_speedup=0.25))
    dw7, dw5 = (next(layer for layer in report.layers if layer.node == n) for n in ("dw7", "dw5"))
    assert (dw7.choice, dw7.best, dw7.original_ms, dw7.best_ms, dw7.speedup) == ("4", "4", 1000.0, 800.0, 1.25)
    assert dw7.times_ms == {"2": 1500.0, "4": 800.0, "8": 1500.0, "16": 1500.0, "32": 1500.0, "64": 1500.0,
                            "128": 1500.0, "toeplitz": 10000.0, "polyphase:4": 10000.0, "polyphase:8": 10000.0}
    assert dw7.decision == "G=4: 1.25x faster than depthwise"
    assert dw5.choice == "1" and dw5.decision == "kept original: best G=2 only 1.00x faster (margin 1.25x)"
    assert (report.original_ms, report.tuned_ms) == (1000.0, pytest.approx(940.0))
    assert report.summary == "6 of 13 depthwise node(s) rewritten; whole model 1.06x faster"


def test_the_whole_model_check_drops_the_least_measured_benefit_first_and_needs_a_gain():
    times = _mv1_times(winner_channels=(128,))  # 2x alone
    times[256][4] = 0.8  # 1.25x alone: the least benefit, dropped first
    report = tune(MV1, _options(FakeTimer(times, {"dw13": 0.5, **{f"dw{i}": -0.01 for i in range(7, 13)}})))
    assert report.dropped == ["dw13"] and set(report.choices) == {f"dw{i}" for i in range(7, 13)}
    dw13 = report.layers[12]
    assert dw13.choice == "1" and dw13.decision == ("kept original: G=4 was faster alone (1.25x) but the whole model "
                                                    "was not faster with it")
    # a rewrite that leaves the whole model exactly as fast is no gain
    times = _mv1_times(winner_channels=(256,))
    report = tune(MV1, _options(FakeTimer(times, {"dw13": 0.0})))
    assert report.choices == {} and report.dropped == ["dw13"]
    assert report.summary == "kept the original: the rewritten model was not faster end to end (last measured 1.00x)"
    report = tune(MV1, _options(FakeTimer(_mv1_times())))
    assert report.summary == "kept the original: no layer was faster rewritten" and report.original_ms is None


ENTRIES = {
    "the plausible bounds": ({"1": 1e-7, "4": 3600}, {"1": 1e-7, "4": 3600.0}),
    "ints and int forms": ({1: 2, 4: 1}, {"1": 2.0, "4": 1.0}),
    "a lowering": ({"1": 1.0, "polyphase:8": 0.5}, {"1": 1.0, "polyphase:8": 0.5}),
    "a time of True": ({"1": True, "4": 0.5}, None),
    "a form misspelt": ({"1": 1.0, "08": 0.5}, None),
    "no original": ({"4": 0.5}, None),
    "over an hour": ({"1": 3600.5}, None),
}


@pytest.mark.parametrize("times, kept", ENTRIES.values(), ids=ENTRIES.keys())
def test_the_cache_keeps_only_plausible_measurements(tmp_path, times, kept):
    from onnx_diagwise.tuning import TuneCache

    cache = TuneCache(tmp_path)
    cache.put("k", times)
    assert cache.get("k") == kept
    cache.save()
    assert TuneCache(tmp_path).get("k") == kept  # and so does the file
    (tmp_path / "tune-cache.json").write_text(json.dumps({"version": 1, "entries": {"k": {str(s): t for s, t in times.items()}}}))
    assert TuneCache(tmp_path).get("k") == kept  # what another run wrote is checked the same way


def test_a_layer_measured_without_candidates_keeps_the_original_and_says_why():
    class OriginalOnly(FakeTimer):  # as a cache entry of a layer whose every form was too large reads
        def layer(self, signature, models):
            return {"1": 1.0}

    report = tune(MV1, _options(OriginalOnly({})))
    assert all(layer.decision == "kept original: no candidate fits (weights too large)" and layer.best is None
               and layer.original_ms == 1000.0 for layer in report.layers)
    assert report.summary == "kept the original: no layer was faster rewritten"
