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


def test_device_suite_plan_runs_on_cpu(tmp_path):
    """The one-command plan for a GPU session, at CPU size: every step must run."""
    import subprocess
    import sys

    bundle = tmp_path / "suite.tar.gz"
    r = subprocess.run([sys.executable, str(SAMPLE_DIR.parent / "benchmarks" / "suite.py"), "--provider", "cpu",
                        "--quick", "--out", str(tmp_path / "suite"), "--bundle", str(bundle)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "suite" / "summary.json").read_text())
    assert [s["exit"] for s in summary["steps"]] == [0, 0, 0]
    assert all(v is True for v in summary["validate"].values()) and len(summary["validate"]) == 14
    assert bundle.stat().st_size > 0
