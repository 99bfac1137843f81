"""Every GPU measurement of this project in one command that fits a time budget.

    python benchmarks/suite.py --provider cuda --out results/ --bundle suite.tar.gz   # default budget 420 s
    python benchmarks/suite.py --provider cpu --quick --out /tmp/suite                # the same plan, CPU-sized

Steps, most valuable first:
  torch-layers   every depthwise layer of the zoo networks (and large-kernel ones) through
                 PyTorch's cuDNN: depthwise vs block-diagonal for each G (needs only torch)
  zoo            whole networks (benchmarks/zoo.py) at batch 64, float16 then float32, original
                 and rewritten, each under prefer_nhwc=0 and =1 (onnxruntime)
  ort-layers     the per-layer table under onnxruntime
  auto           --group-size auto on two zoo networks
  training       the paper's MobileNet V1 training benchmark in PyTorch
  validate       every sample model against its rewrite on the provider (TF32 off)

The plan gives each step a share of what is left of --budget when it starts, as --max-seconds
(it starts no new layer or model after that; it is stopped 20 s past it); a step that is done
sooner leaves the rest to the steps after it.  The plan prints each step's estimate, from the
numbers of layers, models and variants and the per-run costs assumed in ASSUMED below.
Each step writes its results as they come; summary.json and the bundle are rewritten after
every step, so a run stopped from outside still leaves everything that finished.  Steps
that need onnxruntime's CUDA provider are skipped, with the reason, when it does not load;
the PyTorch steps still run.  With no usable CUDA at all, it exits 2 at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
import zoo  # noqa: E402

PY = sys.executable
# Steps import onnx_diagwise from this checkout, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
GRACE_S = 20  # past its allowance a step is stopped: its last layer or model may still be running

# Per-run costs the estimates assume (seconds), for an H100-class GPU; CPU runs use --quick sizes.
ASSUMED = {
    "torch_run_b64": 1.0e-3,  # one conv of a zoo layer at batch 64 (block-diagonal, large G, dominates)
    "torch_run_b1": 5.0e-5,
    "torch_autotune": 0.3,  # cudnn.benchmark's first call per shape and variant
    "ort_session": 1.5,  # creating a CUDA session of a whole network, incl. cuDNN setup
    "ort_layer_session": 0.3,  # a one-node layer session
    "ort_network_run_b64": 0.02,  # one whole network at batch 64
    "ort_layer_run_b64": 1.0e-3,
    "tune_layer": 3.0,  # timing every candidate G of one layer signature
    "training_variant": 4.0,  # warm-up (cudnn.benchmark) and timed steps of one training variant
    "validate_sample": 3.0,
}


@dataclass
class Step:
    name: str
    command: list[str]  # --max-seconds is appended at run time
    estimate_s: float
    assumption: str
    share: float  # of the budget
    needs_ort: bool = True
    outputs: list[str] = field(default_factory=list)


def plan(provider: str, out: Path, quick: bool) -> list[Step]:
    gpu = provider != "cpu"
    device = "cuda" if gpu else "cpu"
    algo = ["--provider-option", "cudnn_conv_algo_search=EXHAUSTIVE"] if gpu else []
    ort = ["--provider", provider, *algo]
    table = zoo.layer_table()
    steps = []

    if quick:
        torch_args, torch_configs = ["--quick"], 1
        torch_layers = 3
    else:
        torch_args = ["--network", "mobilenet_v1", "replknet_31b", "conformer", "mobilenet_v2", "efficientnet_b0",
                      "mobilenet_v3_large", "convnext_tiny", "--batch", "64", "1", "--dtype", "float16", "float32",
                      "--layout", "channels_last", "nchw", "--rounds", "15"]
        torch_configs, torch_layers = 2 * 2 * 2, len({layer for _, _, layer in table})  # each layer timed once
    variants = 7
    per_config = variants * (16 * (ASSUMED["torch_run_b64"] + ASSUMED["torch_run_b1"]) / 2) + \
        variants * ASSUMED["torch_autotune"]
    steps.append(Step("torch-layers", [PY, str(BENCH / "torch_layers.py"), "--device", device, *torch_args,
                                       "--out", str(out / f"torch_layers-{device}")],
                      torch_layers * torch_configs * per_config,
                      f"{torch_layers} layers x {torch_configs} (dtype, layout, batch) x {variants} variants x "
                      f"16 runs at {ASSUMED['torch_run_b64'] * 1e3:g} ms (b64) / {ASSUMED['torch_run_b1'] * 1e3:g} ms "
                      f"(b1), + {ASSUMED['torch_autotune']} s autotuning per variant", 0.30, needs_ort=False))

    if quick:
        zoo_args = ["--batch", "1", "--dtype", "float32", "--policies", "8", "--iterations", "2", "--warmup", "1"]
        networks, dtypes, policies, layouts, seconds = len(zoo.NETWORKS), 1, 1, 1, 0.0
    else:
        zoo_args = ["--batch", "64", "--dtype", "float16", "float32", "--policies", "8", "32", "full",
                    "--seconds", "4", "--warmup", "3"]
        networks, dtypes, policies, layouts, seconds = len(zoo.NETWORKS), 2, 3, 2, 4.0
    sessions = layouts * (1 + policies)
    per_model = sessions * ASSUMED["ort_session"] + seconds + sessions * 5 * ASSUMED["ort_network_run_b64"]
    steps.append(Step("zoo", [PY, str(BENCH / "models.py"), "--zoo", *ort, *zoo_args,
                              "--out", str(out / f"models-zoo-{provider}")],
                      networks * dtypes * per_model,
                      f"{networks} networks x {dtypes} dtypes, {sessions} sessions each at "
                      f"{ASSUMED['ort_session']} s + {seconds:g} s of timed rounds", 0.30))

    if quick:
        layer_args = ["--network", "conformer", "--batch", "1", "--dtype", "float32", "--iterations", "3",
                      "--warmup", "1"]
        layers, configs = len(zoo.EXTRA_LAYERS["conformer"]), 1
    else:
        layer_args = ["--network", "replknet_31b", "conformer", *zoo.NETWORKS, "--batch", "64", "--dtype", "float16",
                      "--iterations", "10", "--warmup", "2"]
        layers, configs = len({layer for _, _, layer in table}), 2
    layer_sessions = configs * (1 + variants)
    steps.append(Step("ort-layers", [PY, str(BENCH / "layers.py"), *ort, *layer_args,
                                     "--out", str(out / f"layers-{provider}")],
                      layers * layer_sessions * (ASSUMED["ort_layer_session"] + 12 * ASSUMED["ort_layer_run_b64"]),
                      f"{layers} layers x {layer_sessions} sessions at {ASSUMED['ort_layer_session']} s + 12 runs at "
                      f"{ASSUMED['ort_layer_run_b64'] * 1e3:g} ms", 0.12))

    auto_networks = ["mobilenet_v1"] if quick else ["mobilenet_v1", "efficientnet_b0"]
    auto_args = (["--batch", "1", "--dtype", "float32", "--iterations", "2", "--warmup", "1", "--tune-budget", "20"]
                 if quick else ["--batch", "64", "--dtype", "float16", "--seconds", "4", "--tune-budget", "40"])
    signatures = sum(len({layer for layer in zoo.depthwise_layers(n)}) for n in auto_networks)
    steps.append(Step("auto", [PY, str(BENCH / "models.py"), "--zoo", "--model", *auto_networks, "--policies",
                               "auto", *ort, *auto_args, "--cache-dir", str(out / "tune-cache"),
                               "--out", str(out / f"models-auto-{provider}")],
                      signatures * (1 if quick else 2) * ASSUMED["tune_layer"] + len(auto_networks) * 10,
                      f"{signatures} layer signatures x {1 if quick else 2} layouts at {ASSUMED['tune_layer']} s, "
                      "+ 10 s per network", 0.13))

    training = [["--small", "--no-layers"]] if quick else [["--steps", "2", "--rounds", "3", "--no-layers"],
                                                           ["--amp", "bf16", "--channels-last", "--steps", "2",
                                                            "--rounds", "3", "--no-layers"]]
    for extra in training:
        label = "-".join(a.strip("-") for a in extra if a.startswith("--") and a not in
                         ("--steps", "--rounds", "--no-layers", "--small")) or "fp32"
        steps.append(Step(f"training-{label}", [PY, str(BENCH / "paper_training.py"), "--device", device, *extra,
                                                "--out", str(out / f"paper_training-{device}-{label}")],
                          6 * ASSUMED["training_variant"], f"6 variants at {ASSUMED['training_variant']} s", 0.05,
                          needs_ort=False))

    samples = sorted((ROOT / "sample_models").glob("*.onnx"))
    steps.append(Step("validate", [PY, str(Path(__file__).resolve()), "--validate-samples", "--provider", provider,
                                   "--out", str(out)],
                      len(samples) * ASSUMED["validate_sample"],
                      f"{len(samples)} samples at {ASSUMED['validate_sample']} s", 0.05))
    return steps


def allowances(steps: list[Step], budget: float) -> list[float]:
    """Each step's cap: its share of what is left when it starts, the shares of the steps still
    to run taken as weights.  A step that needs less than its cap leaves the rest to the others."""
    caps, left = [], budget
    for index, step in enumerate(steps):
        caps.append(max(0.0, left * step.share / sum(s.share for s in steps[index:])))
        left -= min(caps[-1], step.estimate_s)
    return caps


# ---------------------------------------------------------------- can this machine run the plan?


def torch_cuda() -> str:
    """'' if PyTorch sees a CUDA device, else why not."""
    probe = "import torch; print(torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    try:
        run = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "importing torch took over 120 s"
    if run.returncode != 0:
        return (run.stderr.strip().splitlines() or ["torch failed"])[-1]
    return "" if run.stdout.strip() not in ("", "False") else "torch.cuda.is_available() is False"


def ort_provider(provider: str) -> str:
    """'' if onnxruntime really runs a convolution on PROVIDER, else why not (one line)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnx_diagwise.errors import DiagwiseError
    from onnx_diagwise.model_io import BUILT_IR_VERSION
    from onnx_diagwise.runtime import RuntimeConfig, create_session

    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=BUILT_IR_VERSION)
    try:
        create_session(model, RuntimeConfig(provider)).run(None, {"x": np.ones((1, 4, 8, 8), np.float32)})
    except DiagwiseError as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------- the validate step


def validate_samples(provider: str, out: Path, max_seconds: float | None) -> int:
    """Every sample against its `paper` rewrite on the provider (fp32 compared with TF32 off)."""

    from onnx_diagwise import InputOptions, RuntimeConfig, rewrite, validate
    from onnx_diagwise.errors import DiagwiseError

    results, start = {}, time.time()
    for path in sorted((ROOT / "sample_models").glob("*.onnx")):
        if max_seconds is not None and time.time() - start > max_seconds:
            results[path.stem] = {"error": "not run: time budget"}
            continue
        try:
            report = validate(path, rewrite(path).model, RuntimeConfig(provider), InputOptions(),
                              check_n=1)
            results[path.stem] = report.to_dict()
        except DiagwiseError as exc:
            results[path.stem] = {"error": str(exc)}
        print(f"{path.stem}: {results[path.stem].get('passed', results[path.stem].get('error'))}", flush=True)
        (out / f"validate-{provider}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r.get("passed") for r in results.values()) else 1


# ---------------------------------------------------------------- running the plan


def write_summary(summary: dict, out: Path, bundle: Path | None) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if bundle is not None:
        partial = bundle.with_name(bundle.name + ".partial")

        def results_only(info: tarfile.TarInfo):  # no models, not the bundle itself
            name = Path(info.name).name
            return None if name.endswith(".onnx") or name in (bundle.name, partial.name) else info

        with tarfile.open(partial, "w:gz") as archive:
            archive.add(out, arcname="suite", filter=results_only)
        partial.replace(bundle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for every step's results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the plan runs")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole suite (default 420)")
    parser.add_argument("--bundle", type=Path, default=None, help="also pack --out into this .tar.gz")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--validate-samples", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.provider not in ("cuda", "cpu"):
        parser.error("--provider must be cuda or cpu")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.validate_samples:
        return validate_samples(args.provider, args.out, args.max_seconds)

    start = time.time()
    if args.dry_run:
        torch_problem = ort_problem = ""
    else:
        torch_problem = torch_cuda() if args.provider == "cuda" else ""
        ort_problem = ort_provider(args.provider)
    if torch_problem and ort_problem:
        print(f"error: no usable CUDA: {ort_problem}; PyTorch: {torch_problem}", file=sys.stderr)
        return 2
    steps = [s for s in plan(args.provider, args.out, args.quick) if not args.only or s.name in args.only]

    def blocker(step: Step) -> str:
        return ort_problem if step.needs_ort else torch_problem

    runnable = [s for s in steps if not blocker(s)]
    caps = dict(zip([s.name for s in runnable], allowances(runnable, args.budget - (time.time() - start))))
    print(f"plan ({args.budget:g} s budget, {time.time() - start:.0f} s spent before planning):")
    for step in steps:
        limit = f"at most {caps[step.name]:4.0f} s" if step.name in caps else "skipped: " + blocker(step)
        print(f"  {step.name:<14} estimated {step.estimate_s:5.0f} s, {limit}  ({step.assumption})")
    if args.dry_run:
        return 0
    summary = {"provider": args.provider, "quick": args.quick, "budget_s": args.budget, "assumed": ASSUMED,
               "onnxruntime_provider_problem": ort_problem or None, "torch_cuda_problem": torch_problem or None,
               "plan": [{"step": s.name, "estimate_s": round(s.estimate_s, 1), "cap_s": round(caps.get(s.name, 0), 1),
                         "assumption": s.assumption} for s in steps],
               "steps": []}
    write_summary(summary, args.out, args.bundle)
    for step in steps:
        record = {"step": step.name, "command": " ".join(step.command)}
        if blocker(step):
            record.update(exit="skipped", reason=blocker(step))
            summary["steps"].append(record)
            continue
        left = args.budget - (time.time() - start)
        rest = runnable[runnable.index(step):]
        share = allowances(rest, left)[0] if left > 0 else 0.0  # with what earlier steps left
        if share < 5:
            record.update(exit="skipped", reason=f"out of budget ({share:.0f} s left for it)")
        else:
            began = time.time()
            try:
                code = subprocess.run([*step.command, "--max-seconds", f"{share:.0f}"], cwd=ROOT, env=ENV,
                                      timeout=share + GRACE_S).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            record.update(exit=code, seconds=round(time.time() - began, 1), allowed_s=round(share, 1))
        summary["steps"].append(record)
        summary["seconds"] = round(time.time() - start, 1)
        write_summary(summary, args.out, args.bundle)
        print(f"{step.name}: {record['exit']}" + (f" after {record['seconds']:.0f} s" if "seconds" in record else
                                                   f" ({record.get('reason')})"), flush=True)
    return 0 if all(s["exit"] == 0 for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
