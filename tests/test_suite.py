"""benchmarks/suite.py and the scripts it runs, at CPU size (the numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import suite  # noqa: E402
import zoo  # noqa: E402


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd="/")


def test_quick_suite_bundles_every_step(tmp_path):
    out, bundle = tmp_path / "suite", tmp_path / "s.tar.gz"
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cpu", "--quick", "--out", str(out),
            "--bundle", str(bundle))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "plan (420 s budget" in r.stdout and "estimated" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["torch-layers", "zoo", "ort-layers", "auto", "training-fp32",
                                                      "validate"]
    assert all(s["exit"] == 0 for s in summary["steps"]), summary["steps"]
    assert all(p["cap_s"] > 0 and p["estimate_s"] > 0 for p in summary["plan"])
    with tarfile.open(bundle) as archive:
        names = set(archive.getnames())
        zoo_rows = json.load(archive.extractfile("suite/models-zoo-cpu.json"))["rows"]
        validation = json.load(archive.extractfile("suite/validate-cpu.json"))
    assert {"suite/summary.json", "suite/torch_layers-cpu.json", "suite/layers-cpu.json",
            "suite/models-auto-cpu.json", "suite/paper_training-cpu-fp32.json"} <= names
    assert not any(n.endswith((".onnx", ".tar.gz")) for n in names)
    assert sorted(r["model"] for r in zoo_rows) == sorted(f"{n}-float32" for n in zoo.NETWORKS)
    for row in zoo_rows:
        assert all(v["same_result"] for v in row["variants"].values()), row["model"]
    assert len(validation) == 14 and all(v["passed"] for v in validation.values())


def test_cuda_without_cuda_fails_in_one_line(tmp_path):
    if suite.torch_cuda() == "" or suite.ort_provider("cuda") == "":
        pytest.skip("this machine has CUDA")
    began = time.time()
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cuda", "--out", str(tmp_path / "s"), timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: no usable CUDA: provider CUDAExecutionProvider is not available")
    assert time.time() - began < 60
    assert not (tmp_path / "s" / "summary.json").exists()


def test_dry_run_plans_the_full_suite_in_value_order(tmp_path):
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cuda", "--out", str(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    steps = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert steps == ["torch-layers", "zoo", "ort-layers", "auto", "training-fp32", "training-amp-channels-last",
                     "validate"]


def step(name: str, estimate: float, share: float) -> suite.Step:
    return suite.Step(name, [], estimate, "", share)


def test_allowances_share_the_budget_and_pass_on_what_is_unused():
    steps = [step("a", 1000, 0.5), step("b", 10, 0.25), step("c", 1000, 0.25)]
    caps = suite.allowances(steps, 400)
    assert caps[0] == pytest.approx(200)  # half of everything
    assert caps[1] == pytest.approx(100)  # half of what a left, as b and c weigh the same
    assert caps[2] == pytest.approx(190)  # b needs only 10 of its 100: the rest is c's
    assert sum(min(c, s.estimate_s) for c, s in zip(caps, steps)) <= 400


def test_models_max_seconds_lists_what_did_not_run(tmp_path):
    import models

    models.main(["--zoo", "--model", "mobilenet_v1", "--batch", "1", "2", "--policies", "8", "--iterations", "1",
                 "--warmup", "0", "--max-seconds", "0", "--zoo-dir", str(tmp_path / "zoo"),
                 "--out", str(tmp_path / "m")])
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["rows"] == [] and data["not_run"] == ["mobilenet_v1-float32 b1", "mobilenet_v1-float32 b2"]
    assert "Not run (time budget)" in (tmp_path / "m.md").read_text()
    assert not (tmp_path / "zoo").exists()  # nothing built for models not run
