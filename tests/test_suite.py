"""benchmarks/suite.py and the scripts it runs, at CPU size (the numbers are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
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


HAS_TORCH = importlib.util.find_spec("torch") is not None
# Imported first by every Python started with it on PYTHONPATH: makes `import torch` fail as on a machine without it.
NO_TORCH = """import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def run(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd="/", env=env)


def without_torch(tmp_path: Path) -> dict:
    folder = tmp_path / "no-torch"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NO_TORCH)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


STEPS = ["layers-large", "headline-1", "headline-2", "families", "zoo", "layers-zoo", "torch-layers",
         "training-fp32", "validate"]
TORCH_STEPS = {"families", "torch-layers", "training-fp32"}


def test_quick_suite_bundles_every_step(tmp_path):
    out, bundle = tmp_path / "suite", tmp_path / "s.tar.gz"
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cpu", "--quick", "--out", str(out),
            "--bundle", str(bundle))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "plan (420 s budget" in r.stdout and "estimated" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    for step in summary["steps"]:
        if step["step"] in TORCH_STEPS and not HAS_TORCH:
            assert step["exit"] == "skipped" and "No module named 'torch'" in step["reason"]
        else:
            assert step["exit"] == 0, step
    assert all(p["estimate_s"] > 0 for p in summary["plan"])
    with tarfile.open(bundle) as archive:
        names = set(archive.getnames())
        zoo_rows = json.load(archive.extractfile("suite/zoo-cpu.json"))["rows"]
        layers = json.load(archive.extractfile("suite/layers-large-cpu.json"))
        validation = json.load(archive.extractfile("suite/validate-cpu.json"))
        headline = archive.extractfile("suite/headline.md").read().decode()
    assert {"suite/summary.json", "suite/layers-large-cpu.json", "suite/headline-1-cpu.json",
            "suite/headline-2-cpu.json", "suite/layers-zoo-cpu.json"} <= names
    if HAS_TORCH:
        assert {"suite/torch_layers-cpu.json", "suite/paper_training-cpu-fp32.json", "suite/families-cpu.json"} <= names
    assert not any(n.endswith((".onnx", ".tar.gz")) for n in names)
    assert [r["network"] for r in zoo_rows] == ["mobilenet_v1"]
    for row in zoo_rows + layers["rows"]:
        assert all(v["same_result"] for v in row["variants"].values()), row["network"]
        assert row["bound"]["bound_ms"] > 0
        assert all(v["x_of_bound"] > 0 for v in row["variants"].values())
        assert (row["best_pytorch"] is not None) == HAS_TORCH
    assert "run 1: G=auto" in headline and "run 2: G=auto" in headline
    # auto's decisions travel as plan files, one per network, batch and precision it tuned
    plans = sorted(n for n in names if n.startswith("suite/plans/") and n.endswith(".plan.json"))
    assert any("/headline-1/" in n for n in plans) and any("/headline-2/" in n for n in plans), names
    from onnx_diagwise.tuning.planfile import TunedPlan

    with tarfile.open(bundle) as archive:
        for name in plans:
            archive.extract(name, tmp_path / "x", filter="data")
    assert all(TunedPlan.load(tmp_path / "x" / name).layers for name in plans)
    assert len(validation) == 14 and all(v["passed"] for v in validation.values())


def test_without_torch_the_suite_skips_its_torch_steps_with_the_reason(tmp_path):
    out = tmp_path / "suite"
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cpu", "--quick", "--out", str(out), "--only",
            "layers-large", "families", "torch-layers", "training-fp32", env=without_torch(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    steps = {s["step"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    for name in ["families", "torch-layers", "training-fp32"]:
        assert steps[name]["exit"] == "skipped"
        assert steps[name]["reason"] == "PyTorch is not installed (No module named 'torch')"
        assert f"{name}: skipped (PyTorch is not installed" in r.stdout
    assert steps["layers-large"]["exit"] == 0  # the onnxruntime steps still run, without the PyTorch columns
    row = json.loads((out / "layers-large-cpu.json").read_text())["rows"][0]
    assert row["best_pytorch"] is None and "No module named 'torch'" in row["pytorch_note"]
    assert all(v["kind"] == "onnxruntime" for v in row["variants"].values())


def test_the_cuda_libraries_tests_skip_or_pass_without_torch(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/test_cuda_libs.py")],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=without_torch(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:]
    assert " failed" not in r.stdout and " passed" in r.stdout


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
    assert steps == ["layers-large", "headline-1", "headline-2", "families", "zoo", "layers-zoo", "torch-layers",
                     "training-fp32", "training-tf32", "training-amp-channels-last", "validate"]


def test_models_folder_adds_a_step_and_bad_folders_are_one_line(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cuda", "--out", str(tmp_path / "o"), "--dry-run",
            "--models", str(folder))
    assert r.returncode == 2 and "no .onnx files there" in r.stderr and "Traceback" not in r.stderr
    (folder / "m.onnx").write_bytes((ROOT / "sample_models/conformer_conv1d.onnx").read_bytes())
    r = run(str(ROOT / "benchmarks/suite.py"), "--provider", "cuda", "--out", str(tmp_path / "o"), "--dry-run",
            "--models", str(folder))
    assert r.returncode == 0 and "  models " in r.stdout and "1 files" in r.stdout


def step(name: str, estimate: float, share: float) -> suite.Step:
    return suite.Step(name, [], estimate, "", share)


def test_allowances_share_the_budget_and_pass_on_what_is_unused():
    steps = [step("a", 1000, 0.5), step("b", 10, 0.25), step("c", 1000, 0.25)]
    caps = suite.allowances(steps, 400)
    assert caps[0] == pytest.approx(200)  # half of everything
    assert caps[1] == pytest.approx(100)  # half of what a left, as b and c weigh the same
    assert caps[2] == pytest.approx(190)  # b needs only 10 of its 100: the rest is c's
    assert sum(min(c, s.estimate_s) for c, s in zip(caps, steps)) <= 400


@pytest.mark.skipif(not importlib.util.find_spec("onnxruntime"), reason="onnxruntime is not installed")
def test_models_max_seconds_lists_what_did_not_run(tmp_path):
    import models

    models.main(["--zoo", "--model", "mobilenet_v1", "--batch", "1", "2", "--policies", "8", "--iterations", "1",
                 "--warmup", "0", "--max-seconds", "0", "--zoo-dir", str(tmp_path / "zoo"),
                 "--out", str(tmp_path / "m")])
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["rows"] == [] and data["not_run"] == ["mobilenet_v1-float32 b1", "mobilenet_v1-float32 b2"]
    assert "Not run (time budget)" in (tmp_path / "m.md").read_text()
    assert not (tmp_path / "zoo").exists()  # nothing built for models not run
