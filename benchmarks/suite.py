"""Every measurement the issues ask of a device, in one command, for a session that gets a GPU
for a few minutes.  Each step runs in its own process with a time limit; a step that fails or
runs out of time is recorded and the next one runs.

    python benchmarks/suite.py --provider cuda --out /tmp/suite --bundle "$OUT/suite.tar.gz"   # on the GPU machine
    python benchmarks/suite.py --provider cpu --quick --out /tmp/suite   # the same plan, CPU-sized

(The device tool brings back at most 8 files from $OUT: --bundle packs them all in one.)
Needs onnx, numpy, typer, onnxruntime(-gpu) and torch importable; nothing else.

Steps: validate every sample model against its rewrite (TF32 off); the per-layer table
(fp32 and fp16, batch 1 and 64, cuDNN EXHAUSTIVE); the end-to-end table with `auto`; the
paper's training benchmark (fp32, and bf16 + channels_last).  summary.json lists each
step's command, exit status and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from onnx_diagwise import rewrite  # noqa: E402

PY = sys.executable
# The steps import onnx_diagwise from this checkout, installed or not (the GPU machine has no install).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def steps(provider: str, out: Path, quick: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed) for each step."""
    gpu = provider != "cpu"
    algo = ["--provider-option", "cudnn_conv_algo_search=EXHAUSTIVE"] if gpu else []
    if quick:
        layer_args = ["--network", "convnext_tiny", "--batch", "1", "--dtype", "float32", "--iterations", "3",
                      "--warmup", "1"]
        model_args = ["--model", "mobilenetv2_block", "depth_multiplier", "--batch", "1", "--iterations", "3",
                      "--warmup", "1"]
        train = [["--small", "--no-layers"]]
    else:
        layer_args = ["--network", "mobilenet_v1", "mobilenet_v2", "convnext_tiny", "--batch", "1", "64",
                      "--dtype", "float32", "float16", "--iterations", "20"]
        model_args = ["--batch", "1", "64", "--iterations", "30"]
        train = [[], ["--amp", "bf16", "--channels-last"]]
    device = "cuda" if gpu else "cpu"
    plan = [
        ("layers", [PY, str(ROOT / "benchmarks/layers.py"), "--provider", provider, *algo, *layer_args,
                    "--out", str(out / f"layers-{provider}")], 240),
        ("models", [PY, str(ROOT / "benchmarks/models.py"), "--provider", provider, *algo, *model_args,
                    "--cache-dir", str(out / "tune-cache"), "--out", str(out / f"models-{provider}")], 240),
    ]
    for extra in train:
        label = "-".join(a.strip("-") for a in extra) or "fp32"
        plan.append((f"training-{label}", [PY, str(ROOT / "benchmarks/paper_training.py"), "--device", device,
                                           *extra, "--out", str(out / f"paper_training-{device}-{label}")], 240))
    return plan


def validate_samples(provider: str, out: Path) -> dict:
    """Every sample against its `paper` rewrite on the provider (fp32 compared with TF32 off)."""
    results = {}
    for path in sorted((ROOT / "sample_models").glob("*.onnx")):
        candidate = out / f"{path.stem}.diag.onnx"
        onnx.save(rewrite(path).model, candidate)
        command = [PY, "-m", "onnx_diagwise", "validate", str(path), str(candidate), "--provider", provider,
                   "--dim", "T=64", "--json", "-"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
        candidate.unlink()
        results[path.stem] = json.loads(run.stdout) if run.returncode in (0, 1) else {"error": run.stderr.strip()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the plan runs")
    parser.add_argument("--bundle", type=Path, default=None, help="also pack --out into this .tar.gz")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"provider": args.provider, "quick": args.quick, "steps": []}
    start = time.time()
    validation = validate_samples(args.provider, args.out)
    (args.out / f"validate-{args.provider}.json").write_text(json.dumps(validation, indent=2) + "\n")
    summary["validate"] = {name: r.get("passed", r.get("error")) for name, r in validation.items()}
    for name, command, limit in steps(args.provider, args.out, args.quick):
        began = time.time()
        try:
            code = subprocess.run(command, cwd=ROOT, timeout=limit, env=ENV).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        summary["steps"].append({"step": name, "command": " ".join(command), "exit": code,
                                 "seconds": round(time.time() - began, 1)})
        print(f"{name}: exit {code} after {time.time() - began:.0f} s", flush=True)
    summary["seconds"] = round(time.time() - start, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.bundle:
        with tarfile.open(args.bundle, "w:gz") as bundle:
            bundle.add(args.out, arcname="suite")
    return 0 if all(s["exit"] == 0 for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
