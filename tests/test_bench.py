"""bench: side-by-side timing, its JSON, the profiler view and the plot (numbers are not asserted)."""

import json

import onnx
import pytest

from helpers import SAMPLE_DIR, cli
from onnx_diagwise import InputOptions, RuntimeConfig, benchmark, rewrite

MV1 = SAMPLE_DIR / "mobilenet_v1_025.onnx"


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "mv1.diag.onnx"
    onnx.save(rewrite(MV1, group_size=8).model, path)
    return path


def test_bench_json_fields_and_ratios(tmp_path, rewritten):
    report_path = tmp_path / "bench.json"
    r = cli("bench", MV1, rewritten, "-n", "5", "--warmup", "1", "--threads", "1", "--json", report_path)
    assert r.returncode == 0, r.stderr
    assert "median ms" in r.stdout and "speedup" in r.stdout
    data = json.loads(report_path.read_text())
    env = data["environment"]
    for key in ("onnxruntime", "provider", "provider_options", "device", "cpu", "batch", "input_dtypes",
                "rounds", "warmup", "iobinding"):
        assert key in env, key
    assert env["provider"] == "CPUExecutionProvider" and env["rounds"] == 5 and env["iobinding"] is False
    first, second = data["models"]
    assert first["name"] == str(MV1) and first["ratio"] == 1.0 and first["runs"] == 5
    assert second["ratio"] == pytest.approx(second["median_ms"] / first["median_ms"])
    assert second["speedup"] == pytest.approx(first["median_ms"] / second["median_ms"])
    assert second["throughput"] == pytest.approx(1000.0 / second["median_ms"])
    low, high = second["speedup_ci95"]
    assert low <= second["speedup"] <= high and first["speedup_ci95"] is None
    assert len(data["samples_ms"][str(rewritten)]) == 5


def test_profile_lists_depthwise_nodes(rewritten):
    report = benchmark([MV1, rewritten], RuntimeConfig("cpu", threads=1), InputOptions(batch=2),
                       warmup=1, iterations=2, profile=True, profile_runs=3)
    assert report.batch == 2
    rows = report.depthwise_nodes()
    assert sorted(r["source"] for r in rows) == sorted(f"dw{i}" for i in range(1, 14))
    for row in rows:
        before, after = row["groups"]
        assert before > 1 and after < before and all(t is not None for t in row["times_us"])
    assert "Conv" in report.profiles[0].by_op_type_us


def test_profile_table_and_plot(tmp_path, rewritten):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    r = cli("bench", MV1, rewritten, "-n", "2", "--warmup", "1", "--profile", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "Depthwise Conv nodes of the first model" in r.stdout and "dw13" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_usage(tmp_path):
    r = cli("bench", MV1, "-n", "3", "--seconds", "1")
    assert r.returncode == 2 and "--iterations or --seconds, not both" in r.stderr
    r = cli("bench", MV1, SAMPLE_DIR / "conformer_conv1d.onnx")
    assert r.returncode == 2 and "unlike the first model's" in r.stderr
    r = cli("bench", tmp_path / "missing.onnx")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_compare_reports_each_models_output_difference(rewritten):
    broken = onnx.load(rewritten)
    weight = next(t for t in broken.graph.initializer if t.name == broken.graph.node[0].input[1])
    values = onnx.numpy_helper.to_array(weight) * 1.01  # the first conv off by 1%
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    report = benchmark([MV1, rewritten, broken], RuntimeConfig("cpu", threads=1), warmup=0, iterations=1,
                       compare=True, names=["original", "rewritten", "broken"])
    original, same, off = report.models
    assert original.max_abs_diff == 0.0 and original.max_ref_abs > 0
    assert same.max_abs_diff <= 1e-5 * same.max_ref_abs
    assert off.max_abs_diff > 1e-3 * off.max_ref_abs
    assert benchmark([MV1], warmup=0, iterations=1).models[0].max_abs_diff is None  # only when asked


def test_each_model_can_have_its_own_session_options():
    configs = [RuntimeConfig("cpu", threads=1), RuntimeConfig("cpu", threads=2)]
    report = benchmark([MV1, MV1], warmup=0, iterations=2, configs=configs, names=["one", "two"])
    per_model = report.environment["model_configs"]
    assert report.environment["threads"] == 1 and [per_model[n]["threads"] for n in ("one", "two")] == [1, 2]
    with pytest.raises(Exception, match="one RuntimeConfig per model"):
        benchmark([MV1, MV1], configs=configs[:1])


def test_profile_group_is_the_models_own(tmp_path):
    """onnxruntime's NCHWc layout pads a 72-channel layer to group 80; the table shows 72."""
    sample = MV1.parent / "mobilenetv3_block.onnx"
    report = benchmark([sample], RuntimeConfig("cpu", threads=1), warmup=0, iterations=1, profile=True,
                       profile_runs=1)
    [row] = report.depthwise_nodes()
    own = {n.name: next(a.i for a in n.attribute if a.name == "group") for n in onnx.load(sample).graph.node
           if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    assert row["groups"] == [own[row["source"]]] == [72]


def test_latency_statistics_from_samples():
    import numpy as np

    from onnx_diagwise.bench import _stats, speedup_interval

    reference = [0.004, 0.002, 0.003, 0.001, 0.005]  # seconds
    first = _stats("a", reference, 8, reference)
    assert (first.name, first.median_ms, first.min_ms, first.runs) == ("a", 3.0, 1.0, 5)
    assert first.mean_ms == pytest.approx(3.0) and first.std_ms == pytest.approx(np.std([4, 2, 3, 1, 5]))
    assert first.p10_ms == pytest.approx(1.4) and first.p90_ms == pytest.approx(4.6)
    assert first.throughput == pytest.approx(8 / 0.003) and (first.ratio, first.speedup) == (1.0, 1.0)
    assert first.speedup_ci95 is None  # the reference has no interval against itself
    faster = [t / 2 for t in reference]
    second = _stats("b", faster, 8, reference)
    assert second.ratio == pytest.approx(0.5) and second.speedup == pytest.approx(2.0)
    low, high = second.speedup_ci95
    assert low <= 2.0 <= high  # 5 spread-out samples: a wide interval
    tight = [0.003 + 1e-6 * i for i in range(30)]
    low, high = _stats("c", [t / 2 for t in tight], 8, tight).speedup_ci95
    assert 1.99 < low <= 2.0 <= high < 2.01
    same = speedup_interval(np.array([1.0] * 20), np.array([1.0] * 20))
    assert same == (1.0, 1.0)
    a, b = np.array([1.0, 1.2, 0.8, 1.1] * 5), np.array([2.0, 2.4, 1.6, 2.2] * 5)
    assert speedup_interval(a, b) == speedup_interval(a, b)  # seeded: the same interval every time
    assert speedup_interval(a, b)[1] < 1.0  # the candidate is twice as slow
