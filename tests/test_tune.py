"""--group-size auto: decisions from a deterministic fake timer, then real runs on the CPU provider."""

import hashlib
import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SAMPLE_DIR, cli, depthwise_model, qlinearconv_model, random_inputs, run
from onnx_diagwise import DiagwiseError, InputOptions, RuntimeConfig, Selection, TuneOptions, rewrite, tune
from onnx_diagwise.tuning import LayerSignature, LayerTuning, TuneCache, apply_choices, separated
from onnx_diagwise.tuning import tune as tune_layers
from onnx_diagwise.tuning.layers import layer_candidates, layer_model, layer_variants, opset_of, signature_of

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
    # the budget went where the time is: the five C=128 layers at 14x14 (dw7-dw11), then dw1 (C=8 at 112x112)
    untuned = [layer for layer in report.layers if "not tuned, time_budget 15s spent" in layer.decision]
    assert [layer.node for layer in untuned] == ["dw2", "dw3", "dw4", "dw5", "dw6", "dw12", "dw13"]
    assert [layer.node for layer in report.layers] == [f"dw{i}" for i in range(1, 14)]  # the graph's order
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
            work.append(signature.work())
            return super().layer(signature, models)

    work = []
    tune(MV1, _options(Labelling(_mv1_times())))
    # measured where the model spends its time first: a signature's work times its nodes (C=128: 5 nodes)
    assert labels[:2] == ["C=128 k=3x3 s=1x1 in=[1, 128, 14, 14] float32", "C=8 k=3x3 s=1x1 in=[1, 8, 112, 112] float32"]
    assert work[:4] == [128 * 9 * 14 * 14, 8 * 9 * 112 * 112, 32 * 9 * 56 * 56, 16 * 9 * 56 * 56]


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


def test_ort_timer_leaves_out_a_form_the_provider_does_not_run_and_says_why(monkeypatch):
    forms = {spec: onnx.ModelProto(doc_string=spec) for spec in ("1", "8", "toeplitz", "16")}
    ms = {"1": 4.0, "8": 2.0, "toeplitz": 3.0, "16": 1.0}

    def samples(model, seed):
        if model.doc_string == "toeplitz":
            raise DiagwiseError("CUDNN_STATUS_NOT_SUPPORTED\nmore lines")
        if model.doc_string == "16":
            raise RuntimeError("")  # onnxruntime's own errors, even without a message
        return [ms[model.doc_string]] * 5

    timer, bench, config = _ort_timer(monkeypatch, samples, warmup=2, iterations=7)
    assert timer.layer(None, forms) == {"1": pytest.approx(0.004), "8": pytest.approx(0.002),
                                        "toeplitz": "does not run on CPUExecutionProvider: CUDNN_STATUS_NOT_SUPPORTED",
                                        "16": "does not run on CPUExecutionProvider: "}
    # all together, then each alone (one call, one run), then the ones that run together again
    assert [[m.doc_string for m in c["models"]] for c in bench.calls] == [
        ["1", "8", "toeplitz", "16"], ["1"], ["8"], ["toeplitz"], ["16"], ["1", "8"]]
    assert all(c["config"] is config and c["inputs"] == InputOptions() for c in bench.calls)
    assert [(c["warmup"], c["iterations"]) for c in bench.calls] == [(2, 7)] + [(0, 1)] * 4 + [(2, 7)]


@pytest.mark.parametrize("failing", [["1"], []])
def test_ort_timer_raises_when_the_layer_itself_fails_or_no_form_alone_does(monkeypatch, failing):
    forms = {spec: onnx.ModelProto(doc_string=spec) for spec in ("1", "8")}
    calls = []

    def samples(model, seed):
        calls.append(model.doc_string)
        if model.doc_string in failing or (not failing and len(calls) == 1):  # only the first, joint run fails
            raise DiagwiseError("it failed")
        return [1.0] * 5

    timer, _, _ = _ort_timer(monkeypatch, samples)
    with pytest.raises(DiagwiseError, match="it failed"):
        timer.layer(None, forms)


def test_a_form_that_does_not_run_is_listed_with_why_and_the_others_decide():
    class Refusing(FakeTimer):
        def layer(self, signature, models):
            times = super().layer(signature, models)
            return {**times, **{spec: "does not run on fake: out of memory" for spec in times if spec == "4"}}

    fastest_4 = {c: {**table, 4: 0.5, 8: 0.7} for c, table in _mv1_times().items()}  # G=4 best, then G=8
    assert {layer.best for layer in tune(MV1, _options(FakeTimer(fastest_4))).layers} == {"4"}
    report = tune(MV1, _options(Refusing(fastest_4)))
    assert {layer.best for layer in report.layers} == {"8"}
    for layer in report.layers:
        assert "4" not in layer.times_ms and layer.skipped_forms["4"] == "does not run on fake: out of memory"


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
                            "128": 1500.0, "toeplitz": 10000.0, "polyphase:4": 10000.0, "polyphase:8": 10000.0,
                            "polyphase:8:fold": 10000.0, "polyphase:16:fold": 10000.0}
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
    assert all(layer.decision == "kept original: no candidate to time (weights too large, or none runs on the "
               "provider)" and layer.best is None
               and layer.original_ms == 1000.0 for layer in report.layers)
    assert report.summary == "kept the original: no layer was faster rewritten"


# ---------------------------------------------------------------- every field tune() records, exactly


def _branches(weight_reads=False, unknown_a=False):
    """Three depthwise Convs side by side: 'a' and 'b' share one layer signature (C=8, 10x10 input, bias),
    'c' is C=16 with stride 2 and no bias.  WEIGHT_READS: 'b's weight is also a graph output; UNKNOWN_A:
    'a's input comes from a custom op, of a shape nothing infers."""
    rng = np.random.default_rng(5)
    layers = [("a", "x1", 8, [1, 8, 10, 10], True, [1, 1]), ("b", "x2", 8, [1, 8, 10, 10], True, [1, 1]),
              ("c", "x3", 16, [1, 16, 12, 12], False, [2, 2])]
    nodes, inits, inputs, outputs = [], [], [], []
    for name, x, c, shape, bias, strides in layers:
        inits.append(numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), f"{name}_w"))
        reads = [x, f"{name}_w"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{name}_b"))
            reads.append(f"{name}_b")
        nodes.append(helper.make_node("Conv", reads, [f"{name}_y"], name=name, group=c, kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=strides))
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, shape))
        outputs.append(helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None))
    if unknown_a:  # 'a' reads its input through an op nothing can infer
        nodes[0].input[0] = "x1_custom"
        nodes.insert(0, helper.make_node("Foo", ["x1"], ["x1_custom"], domain="custom", name="foo"))
    if weight_reads:
        nodes.append(helper.make_node("Identity", ["b_w"], ["b_w_copy"], name="read_b_w"))
        outputs.append(helper.make_tensor_value_info("b_w_copy", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "branches", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("custom", 1)] if unknown_a else [])
    return helper.make_model(graph, opset_imports=opsets)


class RecordingTimer:
    """Layer times (seconds) by C: {spec: t}, 'rest' for every other form; whole models: the pairs of
    MODEL_TIMES in turn (the last one repeated).  Records every call."""

    def __init__(self, layer_times, model_times=((1.0, 0.75),), context=None):
        self.layer_times, self.model_times = layer_times, list(model_times)
        self.layer_calls, self.model_calls = [], []
        self._context = context or {"provider": "fake", "device": "test"}

    def layer(self, signature, models):
        self.layer_calls.append((signature, dict(models)))
        table = self.layer_times[signature.channels]
        return {spec: table.get(spec, table["rest"]) for spec in models}

    def models(self, models):
        self.model_calls.append(list(models))
        return list(self.model_times[min(len(self.model_calls), len(self.model_times)) - 1])

    def context(self):
        return dict(self._context)


class TickingClock:
    """Returns START, then START + TICK, ... one tick per call."""

    def __init__(self, start=100.0, tick=0.25):
        self.now, self.tick, self.calls = start, tick, 0

    def __call__(self):
        self.calls += 1
        now, self.now = self.now, self.now + self.tick
        return now


BRANCH_TIMES = {8: {"1": 0.5, "4": 0.25, "rest": 1.0}, 16: {"1": 1.0, "rest": 2.0}}
SIG_A = LayerSignature(8, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", (1, 8, 10, 10), "float32", True)
SIG_C = LayerSignature(16, 1, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "NOTSET", (1, 16, 12, 12), "float32", False)
FORMS_A = ["1", "2", "4", "8", "toeplitz", "polyphase:4", "polyphase:8", "polyphase:8:fold",
           "polyphase:16:fold"]
FORMS_C = ["1", "2", "4", "8", "16", "toeplitz", "polyphase:4", "polyphase:8", "polyphase:8:fold",
           "polyphase:16:fold"]
NOT_2D = {"conv2d": "conv2d runs 1-D layers as 2-D ones; this layer is 2-D"}


def _layer_a(**changes):
    fields = dict(node="a", graph="main", channels=8, kernel=[3, 3], input_shape=[1, 8, 10, 10], original_ms=500.0,
                  times_ms={"2": 1000.0, "4": 250.0, "8": 1000.0, "toeplitz": 1000.0, "polyphase:4": 1000.0,
                            "polyphase:8": 1000.0, "polyphase:8:fold": 1000.0, "polyphase:16:fold": 1000.0},
                  best="4", best_ms=250.0, speedup=2.0, choice="4", decision="G=4: 2.00x faster than depthwise",
                  parameters=(), cached=False, skipped_forms=NOT_2D)
    return LayerTuning(**{**fields, **changes})


def _layer_c(**changes):
    fields = dict(node="c", graph="main", channels=16, kernel=[3, 3], input_shape=[1, 16, 12, 12], original_ms=1000.0,
                  times_ms={"2": 2000.0, "4": 2000.0, "8": 2000.0, "16": 2000.0, "toeplitz": 2000.0,
                            "polyphase:4": 2000.0, "polyphase:8": 2000.0, "polyphase:8:fold": 2000.0,
                            "polyphase:16:fold": 2000.0},
                  best="2", best_ms=2000.0, speedup=0.5, choice="1",
                  decision="kept original: every candidate slower (best G=2: 0.50x)", parameters=(), cached=False,
                  skipped_forms=NOT_2D)
    return LayerTuning(**{**fields, **changes})


def test_tune_records_every_field_of_each_layer_and_of_the_report():
    model = _branches()
    before = model.SerializeToString()
    timer, clock, progress = RecordingTimer(BRANCH_TIMES), TickingClock(), []
    report = tune_layers(model, timer, progress=lambda *call: progress.append(call), clock=clock)
    assert report.layers[0] == _layer_a() and report.layers[2] == _layer_c()
    assert report.layers[1] == _layer_a(node="b")
    assert len(report.layers) == 3
    assert progress == [(0, 3, "a"), (1, 3, "b"), (2, 3, "c"), (3, 3, "")]
    # one measurement per signature, the original first, then each G, then each lowering
    assert [(sig, list(models)) for sig, models in timer.layer_calls] == [(SIG_A, FORMS_A), (SIG_C, FORMS_C)]
    assert report.context == {"provider": "fake", "device": "test"} and report.min_speedup == 0.05
    assert (report.original_ms, report.tuned_ms, report.dropped) == (1000.0, 750.0, [])
    assert report.summary == "2 of 3 depthwise node(s) rewritten; whole model 1.33x faster"
    assert report.choices == {"a": "4", "b": "4"}
    assert report.elapsed_s == 0.25 and clock.calls == 2  # clock read at the start and at the end only
    # the whole model timed as it is beside the model with exactly the chosen rewrites
    [[original, tuned]] = timer.model_calls
    assert original.SerializeToString() == before == model.SerializeToString()  # never modified
    assert tuned.SerializeToString() == apply_choices(model, {"a": "4", "b": "4"}).SerializeToString()
    dims = {t.name: list(t.dims) for t in tuned.graph.initializer}
    assert (dims["a_w"], dims["b_w"], dims["c_w"]) == ([8, 4, 3, 3], [8, 4, 3, 3], [16, 1, 3, 3])


def test_tune_budget_spent_exactly_is_not_spent_and_measured_signatures_are_still_decided():
    # the clock: 100 at the start, then 10 later per layer measured.  With a budget of 10, 'c' is
    # measured at t=110 (not past it); with 9.5 it is not, and 'b', of the signature measured, is decided.
    clock = Clock()
    clock.now = 100.0

    class Ticking(RecordingTimer):
        def layer(self, signature, models):
            clock.now += 10.0
            return super().layer(signature, models)

    model = _branches()
    timer = Ticking(BRANCH_TIMES)
    report = tune_layers(model, timer, time_budget=10, clock=clock)
    assert len(timer.layer_calls) == 2 and report.layers[2] == _layer_c()
    clock.now = 100.0
    timer = Ticking(BRANCH_TIMES)
    report = tune_layers(model, timer, time_budget=9.5, clock=clock)
    assert len(timer.layer_calls) == 1
    assert report.layers[1] == _layer_a(node="b")  # a's measurement
    assert report.layers[2] == LayerTuning("c", "main", 16, [3, 3], [1, 16, 12, 12],
                                           decision="kept original: not tuned, time_budget 9.5s spent",
                                           parameters=("time_budget",))


def test_tune_refuses_negative_margins_and_budgets_naming_the_parameter():
    model = _branches()
    for kw, message, parameter in (
            (dict(min_speedup=-0.5), "min_speedup must be >= 0; got -0.5", "min_speedup"),
            (dict(time_budget=0), "time_budget must be > 0 seconds; got 0", "time_budget"),
            (dict(time_budget=-2.5), "time_budget must be > 0 seconds; got -2.5", "time_budget")):
        with pytest.raises(DiagwiseError) as refused:
            tune_layers(model, RecordingTimer(BRANCH_TIMES), **kw)
        assert str(refused.value) == message and refused.value.parameters == (parameter,)
    for budget in (0.5, 1, 1.5):  # any budget over 0 is one
        assert tune_layers(model, RecordingTimer(BRANCH_TIMES), time_budget=budget).choices == {"a": "4", "b": "4"}
    # a margin of 0 is allowed: a candidate as fast as the original meets it
    times = {8: {"1": 0.5, "rest": 1.0}, 16: {"1": 1.0, "8": 1.0, "rest": 2.0}}
    report = tune_layers(model, RecordingTimer(times), min_speedup=0)
    assert report.min_speedup == 0 and report.choices == {"c": "8"}
    assert report.layers[2].decision == "G=8: 1.00x faster than depthwise" and report.layers[2].speedup == 1.0
    assert report.layers[0].decision == "kept original: every candidate slower (best G=2: 0.50x)"


def test_tune_without_the_whole_model_check_keeps_every_layer_decision():
    timer = RecordingTimer(BRANCH_TIMES)
    report = tune_layers(_branches(), timer, check_end_to_end=False)
    assert timer.model_calls == [] and report.choices == {"a": "4", "b": "4"}
    assert report.summary == "2 of 3 depthwise node(s) rewritten (per-layer timings only)"
    assert (report.original_ms, report.tuned_ms, report.dropped) == (None, None, [])
    assert report.plan.summary == report.summary and report.plan.original_ms is None


def test_tune_sizes_inputs_given_as_data_by_their_arrays():
    data = {"x1": np.zeros((2, 8, 10, 10), np.float32)}
    model = _branches()
    for graph_input in model.graph.input:  # the batch dim symbolic: the data sizes it
        graph_input.type.tensor_type.shape.dim[0].dim_param = "N"
    timer = RecordingTimer(BRANCH_TIMES)
    report = tune_layers(model, timer, InputOptions(data=data, batch=3))
    assert [layer.input_shape for layer in report.layers] == [[2, 8, 10, 10], [3, 8, 10, 10], [3, 16, 12, 12]]
    assert report.plan.input_shapes == {"x1": [2, 8, 10, 10], "x2": [3, 8, 10, 10], "x3": [3, 16, 12, 12]}


def test_every_node_of_unknown_shape_is_listed_after_those_measured_first():
    """Nodes without a signature come last in the measuring order; each is still listed, in place."""
    model = depthwise_model(channels=8)
    model.graph.node[0].input[0] = "r"
    model.graph.node.insert(0, helper.make_node("Foo", ["x"], ["r"], domain="custom", name="foo"))
    w = next(t for t in model.graph.initializer if t.name == "w")
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w), "w2"))
    model.graph.node.append(helper.make_node("Conv", ["y", "w2"], ["z"], name="dw2", group=8, pads=[1, 1, 1, 1]))
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("custom", 1))
    del model.graph.value_info[:]
    report = tune_layers(model, RecordingTimer({}))
    assert [(layer.node, layer.decision) for layer in report.layers] == [
        (name, "kept original: input shape unknown (size it with InputOptions.dims or InputOptions.shapes)")
        for name in ("dw", "dw2")]


def test_a_signatures_work_is_its_multiply_adds():
    signature = LayerSignature(channels=8, multiplier=2, kernel=(3, 5), strides=(2, 1), dilations=(1, 1),
                               pads=None, auto_pad="NOTSET", input_shape=(4, 8, 9, 7), dtype="float32",
                               has_bias=False)
    assert signature.work() == 4 * 8 * 2 * 15 * 4 * 7 and type(signature.work()) is int  # 9 // 2 = 4 rows out
    one_d = LayerSignature(channels=3, multiplier=1, kernel=(31,), strides=(2,), dilations=(1,), pads=None,
                           auto_pad="NOTSET", input_shape=(1, 3, 1), dtype="float16", has_bias=True)
    assert one_d.work() == 3 * 31  # 1 // 2 positions: counted as one


def test_tune_ignores_pinned_choices_and_measures_every_node():
    report = tune_layers(_branches(), RecordingTimer(BRANCH_TIMES), selection=Selection(node_group_sizes={"a": 1}))
    assert report.layers[0] == _layer_a()


def test_nodes_tune_cannot_measure_are_listed_with_every_field():
    # a float Conv whose input shape nothing infers
    model = depthwise_model(channels=8)
    model.graph.node[0].input[0] = "r"
    model.graph.node.insert(0, helper.make_node("Foo", ["x"], ["r"], domain="custom", name="foo"))
    model.opset_import.append(helper.make_opsetid("custom", 1))
    del model.graph.value_info[:]
    timer = RecordingTimer({})
    report = tune_layers(model, timer)
    assert report.layers == [LayerTuning(
        "dw", "main", 8, [3, 3], None,
        decision="kept original: input shape unknown (size it with InputOptions.dims or InputOptions.shapes)",
        parameters=("InputOptions.dims", "InputOptions.shapes"))]
    assert timer.layer_calls == [] and report.summary == "kept the original: no layer was faster rewritten"
    # the nodes after it are tuned all the same
    timer = RecordingTimer(BRANCH_TIMES)
    report = tune_layers(_branches(unknown_a=True), timer)
    assert [layer.decision for layer in report.layers] == [
        "kept original: input shape unknown (size it with InputOptions.dims or InputOptions.shapes)",
        "G=4: 2.00x faster than depthwise", "kept original: every candidate slower (best G=2: 0.50x)"]
    assert report.layers[1] == _layer_a(node="b") and report.layers[2] == _layer_c()
    # a quantized Conv: a float one-node model cannot stand in for it
    timer = RecordingTimer({})
    report = tune_layers(qlinearconv_model(c=8), timer)
    assert report.layers == [LayerTuning("qdw", "main", 8, [3, 3], None,
                                         decision="kept original: auto tunes float Conv layers only, not QLinearConv")]
    assert timer.layer_calls == [] and report.choices == {}
    # left alone by the selection: kept, with the selection's reason and parameter
    progress = []
    report = tune_layers(_branches(), RecordingTimer(BRANCH_TIMES), selection=Selection(exclude="c"),
                         progress=lambda *call: progress.append(call))
    assert report.layers[2] == LayerTuning("c", "main", 16, [3, 3], None, decision="kept original: name matches exclude 'c'",
                                           parameters=("exclude",))
    assert report.layers[0] == _layer_a() and len(report.layers) == 3
    assert progress == [(0, 2, "a"), (1, 2, "b"), (2, 2, "")]


# ---------------------------------------------------------------- the cache: its file, its keys, what it warns


SIG_A_FIELDS = {"channels": 8, "multiplier": 1, "kernel": [3, 3], "strides": [1, 1], "dilations": [1, 1],
                "pads": [1, 1, 1, 1], "auto_pad": "NOTSET", "input_shape": [1, 8, 10, 10], "dtype": "float32",
                "has_bias": True}
SIG_C_FIELDS = {**SIG_A_FIELDS, "channels": 16, "strides": [2, 2], "input_shape": [1, 16, 12, 12], "has_bias": False}


def _cache_key(context, layer_fields, forms) -> str:
    """sha256 of the JSON of the timer's context, the layer's signature (its own JSON) and the forms timed."""
    layer = json.dumps(layer_fields, sort_keys=True)
    return hashlib.sha256(json.dumps({"context": context, "layer": layer, "sizes": forms},
                                     sort_keys=True).encode()).hexdigest()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "onnx_diagwise" and r.levelno == logging.WARNING]


def test_the_cache_file_keeps_each_signatures_times_under_a_hash_of_context_layer_and_forms(tmp_path, caplog):
    context = {"provider": "fake", "device": "test"}
    assert SIG_A.key() == json.dumps(SIG_A_FIELDS, sort_keys=True)
    key_a, key_c = _cache_key(context, SIG_A_FIELDS, FORMS_A[1:]), _cache_key(context, SIG_C_FIELDS, FORMS_C[1:])
    assert TuneCache.key(context, SIG_A, FORMS_A[1:]) == key_a
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        tune_layers(_branches(), RecordingTimer(BRANCH_TIMES), cache=TuneCache(tmp_path))
    assert json.loads((tmp_path / "tune-cache.json").read_text()) == {"version": 1, "entries": {
        key_a: {"1": 0.5, "2": 1.0, "4": 0.25, "8": 1.0, "toeplitz": 1.0, "polyphase:4": 1.0, "polyphase:8": 1.0,
                "polyphase:8:fold": 1.0, "polyphase:16:fold": 1.0},
        key_c: {"1": 1.0, "2": 2.0, "4": 2.0, "8": 2.0, "16": 2.0, "toeplitz": 2.0, "polyphase:4": 2.0,
                "polyphase:8": 2.0, "polyphase:8:fold": 2.0, "polyphase:16:fold": 2.0}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune-cache.json"]
    timer = RecordingTimer(BRANCH_TIMES)
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        again = tune_layers(_branches(), timer, cache=TuneCache(tmp_path))
    assert timer.layer_calls == [] and [layer.cached for layer in again.layers] == [True, True, True]
    assert again.layers[0] == _layer_a(cached=True) and again.layers[2] == _layer_c(cached=True)
    assert _warnings(caplog) == []  # a sound cache says nothing


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(text)


def test_a_cache_file_that_cannot_be_read_is_named_with_the_cause(tmp_path, caplog):
    path = tmp_path / "tune-cache.json"
    cases = [("{not json", _json_error("{not json")), ("[1, 2]", "no entries"), ('{"version": 1}', "no entries"),
             ('{"version": 1, "entries": [1]}', "no entries")]
    for text, cause in cases:
        path.write_text(text)
        caplog.clear()
        with caplog.at_level("WARNING", logger="onnx_diagwise"):
            cache = TuneCache(tmp_path)
        assert cache.entries == {} and cache.get("k") is None
        assert _warnings(caplog) == [f"the tuning cache '{path}' cannot be read ({cause}); measuring without it"]
    path.write_bytes(b'{"version": 1, "entries": {"\xff": 1}}')
    try:
        path.read_text()
        raise AssertionError("read as text")
    except UnicodeDecodeError as exc:
        cause = str(exc)
    caplog.clear()
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        assert TuneCache(tmp_path).entries == {}
    assert _warnings(caplog) == [f"the tuning cache '{path}' cannot be read ({cause}); measuring without it"]


def test_a_cache_path_that_is_a_folder_is_neither_read_nor_written_and_says_so(tmp_path, caplog):
    path = tmp_path / "tune-cache.json"
    path.mkdir()
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        cache = TuneCache(tmp_path)
        cache.put("k", {"1": 1.0, "4": 0.5})
        cache.save()
    assert _warnings(caplog) == [
        f"the tuning cache '{path}' cannot be read (Is a directory); measuring without it",
        f"cannot write the tuning cache '{path}': Is a directory; the timings of this run are not kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune-cache.json"]  # no temporary file left
    assert path.is_dir() and not list(path.iterdir())


def test_a_cache_folder_under_a_file_cannot_be_made_and_says_why(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "cache" / "tune-cache.json"
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        cache = TuneCache(tmp_path / "file" / "cache")
        cache.put("k", {"1": 1.0})
        cache.save()
    assert _warnings(caplog) == [
        f"cannot write the tuning cache '{path}': Not a directory; the timings of this run are not kept"]
    assert cache.get("k") == {"1": 1.0}  # this run still has its timings


def test_damaged_entries_are_counted_in_one_warning_and_the_rest_kept(tmp_path, caplog):
    path = tmp_path / "tune-cache.json"
    good = {"1": 0.002, "4": 0.001, "polyphase:16:2d": 0.0015}
    for bad, words in ((1, "1 damaged entry"), (2, "2 damaged entries"), (3, "3 damaged entries")):
        entries = {"good": good, **{f"bad{i}": {"1": "slow"} for i in range(bad)}}
        path.write_text(json.dumps({"version": 1, "entries": entries}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="onnx_diagwise"):
            cache = TuneCache(tmp_path)
        assert cache.entries == {"good": good}
        assert _warnings(caplog) == [f"dropped {words} of the tuning cache '{path}' (those layers are measured again)"]


def test_saving_merges_with_what_other_runs_wrote_and_this_runs_times_win(tmp_path, caplog):
    mine, theirs = TuneCache(tmp_path), TuneCache(tmp_path)
    theirs.put("theirs", {"1": 1.0, "2": 0.5})
    theirs.put("both", {"1": 1.0, "2": 0.5})
    theirs.save()
    mine.put("mine", {"1": 2.0, "8": 1.0})
    mine.put("both", {"1": 3.0, "2": 4.0})
    # damage one of their entries after the fact: merging drops it quietly (the reader warned, or will)
    stored = json.loads((tmp_path / "tune-cache.json").read_text())
    stored["entries"]["damaged"] = {"1": -1}
    (tmp_path / "tune-cache.json").write_text(json.dumps(stored))
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        mine.save()
    assert _warnings(caplog) == []
    expected = {"theirs": {"1": 1.0, "2": 0.5}, "both": {"1": 3.0, "2": 4.0}, "mine": {"1": 2.0, "8": 1.0}}
    assert json.loads((tmp_path / "tune-cache.json").read_text()) == {"version": 1, "entries": expected}
    assert mine.entries == expected and mine.get("theirs") == {"1": 1.0, "2": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune-cache.json"]


def test_a_cache_writes_only_what_it_measured_into_folders_it_makes(tmp_path):
    nested = tmp_path / "a" / "b"
    cache = TuneCache(nested)
    assert cache.path == nested / "tune-cache.json" and cache.entries == {} and cache.new == {}
    cache.save()
    assert not (tmp_path / "a").exists()  # nothing measured, nothing written
    cache.put("bad", {"1": 0.0})
    cache.save()
    assert not (tmp_path / "a").exists() and cache.get("bad") is None  # no measurement kept
    cache.put("k", {"1": 1, 4: 0.5})
    assert cache.new == {"k": {"1": 1.0, "4": 0.5}}
    cache.save()
    assert json.loads((nested / "tune-cache.json").read_text()) == {"version": 1, "entries": {"k": {"1": 1.0, "4": 0.5}}}
    got = cache.get("k")
    got["1"] = 99.0
    assert cache.get("k") == {"1": 1.0, "4": 0.5}  # get() hands out a copy
    assert TuneCache(None).path is None
    off = TuneCache(None)
    off.put("k", {"1": 1.0})
    off.save()  # no file, no error
    assert off.get("k") == {"1": 1.0}


def test_clear_cache_removes_the_file_of_the_folder_given(tmp_path):
    from onnx_diagwise.tuning import clear_cache

    cache = TuneCache(tmp_path)
    cache.put("k", {"1": 1.0})
    cache.save()
    (tmp_path / "other.json").write_text("{}")
    assert clear_cache(tmp_path) == tmp_path / "tune-cache.json"
    assert clear_cache(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


# ---------------------------------------------------------------- layers: signatures, one-node models, forms


def _sig(channels, kernel, dtype="float32", multiplier=1):
    rank = len(kernel)
    return LayerSignature(channels, multiplier, tuple(kernel), (1,) * rank, (1,) * rank, None, "NOTSET",
                          (1, channels) + (16,) * rank, dtype, False)


SIZES = {  # the G of each signature: powers of two under C that divide it, and C; none whose weight passes 64 MiB
    "C=8": (_sig(8, (3, 3)), [2, 4, 8]),
    "C=2": (_sig(2, (3, 3)), [2]),
    "C=7": (_sig(7, (3, 3)), [7]),
    "C=12": (_sig(12, (3, 3)), [2, 4, 12]),
    "C=96": (_sig(96, (3, 3)), [2, 4, 8, 16, 32, 96]),
    "C=128": (_sig(128, (5, 5)), [2, 4, 8, 16, 32, 64, 128]),
    "float32 at 64 MiB": (_sig(1024, (16,)), [2, 4, 8, 16, 32, 64, 1024]),
    "float32 past 64 MiB": (_sig(1024, (17,)), [2, 4, 8, 16, 32, 64]),
    "float16 at 64 MiB": (_sig(1024, (32,), "float16"), [2, 4, 8, 16, 32, 64, 1024]),
    "float16 past 64 MiB": (_sig(1024, (33,), "float16"), [2, 4, 8, 16, 32, 64]),
    "bfloat16 at 64 MiB": (_sig(1024, (4, 8), "bfloat16"), [2, 4, 8, 16, 32, 64, 1024]),
    "float64 at 64 MiB": (_sig(1024, (8,), "float64"), [2, 4, 8, 16, 32, 64, 1024]),
    "float64 past 64 MiB": (_sig(1024, (9,), "float64"), [2, 4, 8, 16, 32, 64]),
    "multiplier 2 at 64 MiB": (_sig(1024, (8,), multiplier=2), [2, 4, 8, 16, 32, 64, 1024]),
    "multiplier 2 past 64 MiB": (_sig(1024, (3, 3), multiplier=2), [2, 4, 8, 16, 32, 64]),
    "only small G under the limit": (_sig(4096, (64,)), [2, 4, 8, 16, 32, 64]),
    "G=64 past the limit too": (_sig(8192, (33,)), [2, 4, 8, 16, 32]),
}


@pytest.mark.parametrize("signature, sizes", SIZES.values(), ids=SIZES.keys())
def test_a_signature_lists_the_group_sizes_worth_timing(signature, sizes):
    assert signature.candidates() == sizes


def test_signature_labels_and_keys():
    one_d = LayerSignature(144, 1, (31,), (1,), (1,), (15, 15), "NOTSET", (1, 144, 40), "float32", True)
    assert one_d.label() == "C=144 k=31 s=1 in=[1, 144, 40] float32"
    three_d = LayerSignature(4, 2, (3, 3, 3), (1, 2, 2), (1, 1, 1), None, "SAME_UPPER", (2, 4, 5, 6, 7), "float16", False)
    assert three_d.label() == "C=4 k=3x3x3 s=1x2x2 in=[2, 4, 5, 6, 7] float16"
    assert three_d.key() == ('{"auto_pad": "SAME_UPPER", "channels": 4, "dilations": [1, 1, 1], "dtype": "float16", '
                             '"has_bias": false, "input_shape": [2, 4, 5, 6, 7], "kernel": [3, 3, 3], '
                             '"multiplier": 2, "pads": null, "strides": [1, 2, 2]}')


def _conv_of(model):
    from onnx_diagwise.detect import detect
    from onnx_diagwise.shapes import infer_value_types

    [conv] = detect(model, infer_value_types(model)).candidates
    return conv


def test_signature_of_needs_a_static_positive_input_shape():
    model = depthwise_model(channels=8, multiplier=2, strides=(2, 1), dilations=(1, 2), pads=(1, 2, 1, 2))
    conv = _conv_of(model)
    assert signature_of(conv, {"x": [3, 8, 9, 9]}) == LayerSignature(
        8, 2, (3, 3), (2, 1), (1, 2), (1, 2, 1, 2), "NOTSET", (3, 8, 9, 9), "float32", True)
    for shape in (None, [], ["N", 8, 9, 9], [None, 8, 9, 9], [0, 8, 9, 9], [1, 8, -1, 9], [1, 8, 9.0, 9]):
        assert signature_of(conv, {"x": shape}) is None, shape
    assert signature_of(conv, {"other": [1, 8, 9, 9]}) is None
    same = _conv_of(depthwise_model(channels=8, auto_pad="SAME_LOWER", bias=False, dtype="float16"))
    assert signature_of(same, {"x": [1, 8, 9, 9]}) == LayerSignature(
        8, 1, (3, 3), (1, 1), (1, 1), None, "SAME_LOWER", (1, 8, 9, 9), "float16", False)
    unnamed_bias = depthwise_model(channels=8, bias=False)
    unnamed_bias.graph.node[0].input.append("")
    assert signature_of(_conv_of(unnamed_bias), {"x": [1, 8, 9, 9]}).has_bias is False


def test_opset_of_reads_the_default_domain():
    def model(*opsets):
        return helper.make_model(helper.make_graph([], "g", [], []),
                                 opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])

    assert opset_of(model(("com.microsoft", 1), ("ai.onnx", 13))) == 13
    assert opset_of(model(("custom", 3), ("", 11))) == 11
    assert opset_of(model(("custom", 3))) == 17
    empty = model()
    del empty.opset_import[:]
    assert opset_of(empty) == 17


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_a_layer_model_is_the_node_alone_fed_by_an_input_of_its_shape(bias):
    model = depthwise_model(channels=8, multiplier=2, strides=(2, 2), pads=(1, 1, 1, 1), dtype="float16", bias=bias)
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.name = "dw_weight"  # the layer model names it 'w' whatever it is called
    model.graph.node[0].input[1] = "dw_weight"
    conv = _conv_of(model)
    signature = signature_of(conv, {"x": [3, 8, 9, 9]})
    base = layer_model(conv, signature, 13)
    assert base.ir_version == 8  # what onnxruntime 1.14 and later read, whatever onnx's helper defaults to
    assert [(o.domain, o.version) for o in base.opset_import] == [("", 13)]
    graph = base.graph
    assert graph.name == "layer"
    [node] = graph.node
    assert (node.op_type, node.name, node.domain) == ("Conv", "layer", "")
    assert list(node.input) == (["x", "w", "b"] if bias else ["x", "w"]) and list(node.output) == ["y"]
    assert list(node.attribute) == list(model.graph.node[0].attribute)
    [x] = graph.input
    assert x.name == "x" and x.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_value for d in x.type.tensor_type.shape.dim] == [3, 8, 9, 9]
    [y] = graph.output
    assert y.name == "y" and y.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not y.type.tensor_type.HasField("shape")
    tensors = {t.name: t for t in graph.initializer}
    assert list(tensors) == (["w", "b"] if bias else ["w"])
    assert tensors["w"].data_type == TensorProto.FLOAT16 and list(tensors["w"].dims) == [16, 1, 3, 3]
    np.testing.assert_array_equal(numpy_helper.to_array(tensors["w"]), numpy_helper.to_array(weight))
    if bias:  # the bias only adds: zeros time the same
        b = numpy_helper.to_array(tensors["b"])
        assert b.dtype == np.float16 and b.shape == (16,) and not b.any()
    assert weight.name == "dw_weight"  # the model's own tensor is not renamed


def _forms(model, shapes=None):
    """layer_candidates of MODEL's one depthwise node: {spec: Choice}, {lowering: why not}."""
    from onnx_diagwise.shapes import infer_value_types

    conv = _conv_of(model)
    shapes = shapes or {name: dims for name, (_, dims) in infer_value_types(model).items()}
    signature = signature_of(conv, shapes)
    return layer_candidates(layer_model(conv, signature, opset_of(model)), signature, conv)


def test_layer_candidates_of_a_1d_layer_are_every_g_conv2d_and_each_polyphase_block():
    from onnx_diagwise.plan import Choice

    forms, skipped = _forms(depthwise_model(channels=8, kernel=(5,), spatial=(20,), pads=(2, 2)),
                            {"x": [1, 8, 20]})
    # each block up to L = 20 as 1-D and 2-D, folded too from B = 8 on; B = 32, the first past L, folded only
    folds = {4: (False,), 8: (False, True), 16: (False, True), 32: (True,)}
    polyphase = {f"polyphase:{b}" + (":2d" if as_2d else "") + (":fold" if fold else ""):
                 Choice("polyphase", block=b, as_2d=as_2d, fold=fold)
                 for b in (4, 8, 16, 32) for as_2d in (False, True) for fold in folds[b]}
    assert forms == {"2": Choice(group_size=2), "4": Choice(group_size=4), "8": Choice(group_size=8),
                     "conv2d": Choice("conv2d"), **polyphase}
    assert list(forms) == ["2", "4", "8", "conv2d", *polyphase]
    assert skipped == {"toeplitz": "toeplitz needs a 2-D or 3-D layer (a 1-D one would become one dense matrix per "
                                   "channel); 1-D layers take polyphase"}


def test_layer_candidates_leave_out_lowerings_whose_weights_pass_the_limit(monkeypatch):
    import onnx_diagwise.tuning.layers as tuning_layers

    # fp32, C=8, k=5: polyphase B weighs 8 * B * (B + 4) * 4 bytes (B=4: 1 KiB, B=8: 3 KiB), folded
    # 8 * B * B * ceil((B + 4) / B) * 4 (B=8: 4 KiB); the depthwise weight 160 bytes
    monkeypatch.setattr(tuning_layers, "MAX_CANDIDATE_WEIGHT_BYTES", 2000)
    forms, skipped = _forms(depthwise_model(channels=8, kernel=(5,), spatial=(20,), pads=(2, 2), bias=False),
                            {"x": [1, 8, 20]})
    assert [spec for spec in forms if spec.startswith("polyphase")] == ["polyphase:4", "polyphase:4:2d"]
    monkeypatch.setattr(tuning_layers, "MAX_CANDIDATE_WEIGHT_BYTES", 500)
    forms, skipped = _forms(depthwise_model(channels=8, kernel=(5,), spatial=(20,), pads=(2, 2), bias=False),
                            {"x": [1, 8, 20]})
    assert "conv2d" in forms and not any(spec.startswith("polyphase") for spec in forms)
    assert skipped["polyphase"] == ("the lowered weight and bias would take 0.0 MiB (3072 bytes), past the limit of "
                                    "500 bytes")


def test_layer_candidates_say_when_no_polyphase_block_fits():
    forms, skipped = _forms(depthwise_model(channels=4, kernel=(3,), spatial=(3,), pads=(1, 1)), {"x": [1, 4, 3]})
    assert list(forms) == ["2", "4", "conv2d"]
    assert skipped == {"toeplitz": "toeplitz needs a 2-D or 3-D layer (a 1-D one would become one dense matrix per "
                                   "channel); 1-D layers take polyphase", "polyphase": "no block size fits"}


def test_layer_candidates_leave_out_lowerings_of_a_weight_something_else_reads():
    from onnx_diagwise.detect import detect
    from onnx_diagwise.shapes import infer_value_types

    model = _branches(weight_reads=True)
    conv = next(c for c in detect(model, infer_value_types(model)).candidates if c.name == "b")
    signature = signature_of(conv, {"x2": [1, 8, 10, 10]})
    forms, skipped = layer_candidates(layer_model(conv, signature, 17), signature, conv)
    assert list(forms) == ["2", "4", "8"]
    shared = "the weight 'b_w' is read 2 times; lowerings replace it in place, so it must be read by this Conv only"
    assert skipped == {"toeplitz": shared, "polyphase": shared, "conv2d": shared}


def test_layer_candidates_leave_out_lowerings_past_the_size_limit_and_of_other_dtypes():
    forms, skipped = _forms(depthwise_model(channels=64, kernel=(3, 3), spatial=(512, 8), pads=(1, 1, 1, 1)),
                            {"x": [1, 64, 512, 8]})
    assert "toeplitz" not in forms and skipped["toeplitz"] == (
        "the lowered weight and bias would take 192.1 MiB (201457664 bytes), past the limit of 67108864 bytes")
    assert set(skipped) == {"toeplitz", "conv2d"}
    forms, skipped = _forms(depthwise_model(channels=8, dtype="float64"), {"x": [1, 8, 9, 9]})
    dtype = "lowerings are built for float32 and float16 (the dtypes onnxruntime runs Conv in), not float64"
    assert list(forms) == ["2", "4", "8"] and skipped == {"toeplitz": dtype, "polyphase": dtype, "conv2d": dtype}


def test_lowerings_are_timed_only_where_they_fit_the_models_own_symbolic_dims():
    model = depthwise_model(channels=8, spatial=("H", 10), pads=(1, 1, 1, 1))
    timer = RecordingTimer({8: {"1": 1.0, "rest": 2.0}})
    report = tune_layers(model, timer, InputOptions(dims={"H": 12, "N": 1}))
    [(signature, models)] = timer.layer_calls
    assert signature.input_shape == (1, 8, 12, 10)
    assert list(models) == ["1", "2", "4", "8", "polyphase:4", "polyphase:8"]
    assert report.layers[0].skipped_forms == {"toeplitz": "toeplitz needs a static H (the input's dim 2 is 'H')",
                                              "conv2d": "conv2d runs 1-D layers as 2-D ones; this layer is 2-D"}


def test_layer_variants_are_the_layer_as_it_is_and_in_each_form():
    from onnx_diagwise.plan import Choice

    conv = _conv_of(depthwise_model(channels=8))
    signature = signature_of(conv, {"x": [1, 8, 9, 9]})
    base = layer_model(conv, signature, 17)
    before = base.SerializeToString()
    variants = layer_variants(base, {"4": Choice(group_size=4), "toeplitz": Choice("toeplitz")})
    assert list(variants) == ["1", "4", "toeplitz"] and variants["1"] is base
    assert base.SerializeToString() == before  # each form is rewritten in a copy
    [node] = variants["4"].graph.node
    assert next(a.i for a in node.attribute if a.name == "group") == 2
    assert [list(t.dims) for t in variants["4"].graph.initializer if t.name == "w"] == [[8, 4, 3, 3]]
    assert any(n.doc_string.startswith("onnx-diagwise lowered") for n in variants["toeplitz"].graph.node)


def test_separated_needs_more_than_exactly_1_percent_and_takes_the_first_fastest_candidate():
    assert separated([[100.0] * 5, [99.0] * 5]) is False  # exactly 1% apart, no noise: not more than 1%
    assert separated([[100.0] * 5, [98.9] * 5]) is True
    # two candidates with the same median: the first decides, noisy or not
    noisy, steady = [7.0, 8.0, 9.0, 10.0, 11.0], [9.0] * 5
    assert separated([[10.0] * 5, noisy, steady]) is False
    assert separated([[10.0] * 5, steady, noisy]) is True


def test_the_cache_is_written_through_a_hidden_temporary_file_in_its_own_folder(tmp_path, monkeypatch, caplog):
    import os
    import tempfile

    # the system's temporary folder is gone: the cache never needed it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no temporary folder"))
    real_replace, replaced = os.replace, []

    def replace(source, target):
        replaced.append((os.path.dirname(source), os.path.basename(source), target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    cache = TuneCache(tmp_path / "cache")
    cache.put("k", {"1": 1.0})
    with caplog.at_level("WARNING", logger="onnx_diagwise"):
        cache.save()
    assert _warnings(caplog) == []
    [(folder, name, target)] = replaced
    assert folder == str(tmp_path / "cache") and name.startswith(".tune-cache.")
    assert target == tmp_path / "cache" / "tune-cache.json"
    assert TuneCache(tmp_path / "cache").get("k") == {"1": 1.0}
    assert sorted(os.listdir(tmp_path / "cache")) == ["tune-cache.json"]


def test_a_polyphase_past_the_size_limit_at_every_block_is_skipped_with_the_size_at_block_8():
    # a long dilated kernel along W: the polyphase kernel spans (B - 1) + 2 * 512 + 1 inputs per block of B
    model = depthwise_model(channels=4096, kernel=(1, 3), spatial=(1, 1100), dilations=(1, 512))
    forms, skipped = _forms(model, {"x": [1, 4096, 1, 1100]})
    assert list(forms) == ["2", "4", "8", "16", "32", "64", "toeplitz"]
    block_8 = 4096 * 8 * (7 + 1024 + 1) * 4 + 4096 * 8 * 4  # weight [C*8, 1, 1, K_p] and bias [C*8], float32
    assert skipped == {
        "polyphase": f"the lowered weight and bias would take {block_8 / 2**20:.1f} MiB ({block_8} bytes), past the "
                     "limit of 67108864 bytes",
        "conv2d": "conv2d runs 1-D layers as 2-D ones; this layer is 2-D"}


def test_nodes_sharing_a_signature_are_offered_only_the_forms_each_can_take():
    """'a' and 'b' time alike, but 'b's weight is also read elsewhere, so it cannot be lowered: toeplitz,
    fastest for 'a', is not 'b's choice, and 'b' says why it was left out; one measurement serves both."""
    model = _branches(weight_reads=True)
    timer = RecordingTimer({8: {"1": 0.5, "toeplitz": 0.125, "4": 0.25, "rest": 1.0}, 16: {"1": 1.0, "rest": 2.0}})
    report = tune_layers(model, timer, check_end_to_end=False)
    a, b = report.layers[:2]
    assert (a.choice, b.choice) == ("toeplitz", "4")
    assert "toeplitz" not in b.times_ms and b.times_ms.keys() < a.times_ms.keys()
    assert b.skipped_forms["toeplitz"] == ("the weight 'b_w' is read 2 times; lowerings replace it in place, "
                                           "so it must be read by this Conv only")
    assert [call[0].channels for call in timer.layer_calls] == [8, 16]
    rewritten = rewrite(model, report.plan).model  # and the plan applies
    assert [n.op_type for n in rewritten.graph.node].count("Conv") >= 2


def test_a_node_whose_forms_an_earlier_measurement_does_not_cover_is_measured_itself():
    """'b' reads a weight shared with another reader and comes first: 'a', which can take the lowerings
    'b' cannot, is timed again with them rather than offered only 'b's forms."""
    model = _branches(weight_reads=True)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[1], nodes[0]] + nodes[2:])
    timer = RecordingTimer({8: {"1": 0.5, "toeplitz": 0.125, "4": 0.25, "rest": 1.0}, 16: {"1": 1.0, "rest": 2.0}})
    report = tune_layers(model, timer, check_end_to_end=False)
    assert [(layer.node, layer.choice) for layer in report.layers] == [("b", "4"), ("a", "toeplitz"), ("c", "1")]
    assert [call[0].channels for call in timer.layer_calls] == [8, 8, 16]
    assert "toeplitz" not in timer.layer_calls[0][1] and "toeplitz" in timer.layer_calls[1][1]
