"""Every GPU measurement of this project in one command that fits a time budget.

    python benchmarks/suite.py --provider cuda --out results/ --bundle suite.tar.gz   # default budget 420 s
    python benchmarks/suite.py --provider cpu --quick --out /tmp/suite                # the same plan, CPU-sized
    python benchmarks/suite.py --provider cuda --models DIR --out results/            # also your own .onnx files

Steps, most valuable first (each against onnxruntime's original in its best configuration, PyTorch
eager with the same weights and the bound; float16, float32 with TF32 off and float32 as shipped):
  layers-large   RepLKNet-31B's four large-kernel layers and the conformer k=31 layer (layers.py)
  headline-1     RepLKNet-31B and the conformer family whole, batch 64, float16, >= 10 rounds
  headline-2     the same again in a second process (cuDNN's choices differ between processes);
                 headline.md puts both side by side
  families       the large-kernel families (benchmarks/families.py) at batch 64 and 1
  models         your own files (--models DIR), as they are (fp16 or fp32)
  zoo            the mobile networks whole (networks.py --zoo)
  layers-zoo     the per-layer table of the mobile networks
  torch-layers   PyTorch alone: depthwise vs block-diagonal for each G (torch_layers.py)
  training-*     the paper's MobileNet V1 training benchmark in PyTorch (TF32 stated, interleaved)
  validate       every sample model against its rewrite on the provider (TF32 off)

The plan gives each step a share of what is left of --budget when it starts, as --max-seconds
(it starts no new layer or model after that; it is stopped 20 s past it); a step that is done
sooner leaves the rest to the steps after it.  The plan prints each step's estimate, from the
numbers of layers, models and variants and the per-run costs assumed in ASSUMED below.
Each step writes its results as they come; summary.json and the bundle are rewritten after
every step, so a run stopped from outside still leaves everything that finished.  Steps that need
onnxruntime's CUDA provider are skipped, with the reason, when it does not load; steps that need
PyTorch are skipped, with the reason, when it does not import, and the others leave its columns
out and say why.  With no usable CUDA at all, it exits 2 at once.
"""

from __future__ import annotations

import argparse
import importlib.util
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
import layers  # noqa: E402
import zoo  # noqa: E402

PY = sys.executable
# Steps import onnx_diagwise from this checkout, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
GRACE_S = 20  # past its allowance a step is stopped: its last layer or model may still be running
PRECISIONS = ["float16", "float32-strict", "float32-default"]
HEADLINE = {"zoo": ["replknet_31b"], "family": ["conformer"]}
FAMILIES = ["conformer", "wav2vec2_conformer", "convmixer_1536_20", "mixnet_s", "inception_next_tiny",
            "edgenext_small", "focalnet_large_fl4", "vocos"]

# Per-run costs the estimates assume (seconds), for an H100-class GPU; CPU runs use --quick sizes.
ASSUMED = {
    "torch_run_b64": 1.0e-3,  # one conv of a zoo layer at batch 64 (block-diagonal, large G, dominates)
    "torch_run_b1": 5.0e-5,
    "torch_autotune": 0.3,  # cudnn.benchmark's first call per shape and variant
    "ort_session": 1.5,  # creating a CUDA session of a whole network, incl. cuDNN setup
    "ort_layer_session": 0.3,  # a one-node layer session
    "ort_network_run_b64": 0.02,  # one whole network at batch 64
    "ort_layer_run_b64": 1.0e-3,
    "export": 10.0,  # exporting one family to ONNX, per dtype
    "tune_network": 30.0,  # auto's tuning of one network
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
    needs_torch: bool = False
    outputs: list[str] = field(default_factory=list)


def network_estimate(networks: int, batches: int, precisions: int, sessions: int, rounds: int) -> float:
    per = sessions * ASSUMED["ort_session"] + ASSUMED["tune_network"] + sessions * (rounds + 4) * \
        ASSUMED["ort_network_run_b64"]
    return networks * batches * precisions * per


def plan(provider: str, out: Path, quick: bool, models: Path | None = None) -> list[Step]:
    gpu = provider != "cpu"
    device = "cuda" if gpu else "cpu"
    common = ["--provider", provider]
    steps = []
    grid = 4 if gpu else 1  # onnxruntime configurations of the original (8 for 1-D convs)

    if quick:
        size = ["--batch", "1", "--precision", "float32-strict", "--rounds", "3", "--warmup", "1"]
        tables = ["conformer"]
        layer_args = ["--network", *tables, *size]
        precisions, batches = 1, 1
    else:
        tables = ["conformer", "replknet_31b"]  # the layer PyTorch leads on first, should the time run out
        layer_args = ["--network", *tables, "--batch", "64", "1", "--precision", *PRECISIONS,
                      "--rounds", "10", "--warmup", "2"]
        precisions, batches = 3, 2
    large = [layer for _, _, layer in zoo.layer_table(tables)]
    # per layer: the original's configurations, 7 G and its lowerings in two layouts each, PyTorch in two
    sessions = sum(grid + 2 * (7 + len(layers.forms_for(layers.layer_model(layer, 1, "float32")))) + 2
                   for layer in large)
    steps.append(Step("layers-large", [PY, str(BENCH / "layers.py"), *common, *layer_args,
                                       "--out", str(out / f"layers-large-{provider}")],
                      precisions * batches * sessions * (ASSUMED["ort_layer_session"] + 14 * 5e-3),
                      f"{len(large)} layers x {precisions} precisions x {batches} batches, {sessions} variants "
                      f"in all at {ASSUMED['ort_layer_session']} s + 14 runs of up to 5 ms", 0.16))

    if quick:
        head = ["--family", "conformer", "--tiny", *size, "--tune-budget", "10"]
        head_networks, head_rounds = 1, 3
    else:
        head = ["--zoo", *HEADLINE["zoo"], "--family", *HEADLINE["family"], "--batch", "64", "--precision",
                "float16", "--rounds", "10", "--seconds", "10", "--policies", "auto", "32", "--tune-budget", "60"]
        head_networks, head_rounds = 2, 10
    for index in (1, 2):
        steps.append(Step(f"headline-{index}", [PY, str(BENCH / "networks.py"), *common, *head,
                                                "--cache-dir", str(out / f"tune-cache-{index}"),
                                                "--plans-dir", str(out / "plans" / f"headline-{index}"),
                                                "--out", str(out / f"headline-{index}-{provider}")],
                          network_estimate(head_networks, 1, 1, grid + 4 + 2, head_rounds),
                          f"{head_networks} networks, {grid + 6} variants, {head_rounds} rounds, tuning "
                          f"{ASSUMED['tune_network']} s each; its own process", 0.12))

    if quick:
        fam = ["--family", "vocos", "mixnet_s", "--tiny", *size, "--tune-budget", "10"]
        fam_networks, fam_batches, fam_precisions = 2, 1, 1
    else:
        fam = ["--family", *FAMILIES, "--batch", "64", "1", "--precision", *PRECISIONS, "--rounds", "10",
               "--tune-budget", "40"]
        fam_networks, fam_batches, fam_precisions = len(FAMILIES), 2, 3
    steps.append(Step("families", [PY, str(BENCH / "networks.py"), *common, *fam, "--cache-dir",
                                   str(out / "tune-cache-1"), "--plans-dir", str(out / "plans" / "families"),
                                   "--out", str(out / f"families-{provider}")],
                      fam_networks * 2 * ASSUMED["export"] + network_estimate(fam_networks, fam_batches,
                                                                                fam_precisions, grid + 3, 10),
                      f"{fam_networks} families x {fam_batches} batches x {fam_precisions} precisions, "
                      f"{grid + 3} variants, exported at {ASSUMED['export']} s per dtype", 0.16, needs_torch=True))

    if models is not None:
        files = len(list(Path(models).glob("*.onnx")))
        model_args = ["--batch", "1", "--rounds", "3"] if quick else ["--batch", "64", "1", "--rounds", "10",
                                                                      "--tune-budget", "40"]
        steps.append(Step("models", [PY, str(BENCH / "networks.py"), *common, "--models", str(models),
                                     "--precision", *PRECISIONS, *model_args, "--cache-dir", str(out / "tune-cache-1"),
                                     "--plans-dir", str(out / "plans" / "models"), "--out", str(out / f"models-{provider}")],
                          network_estimate(files, 1 if quick else 2, 2, grid + 3, 10),
                          f"{files} files x {1 if quick else 2} batches x their dtype's precisions", 0.14))

    if quick:
        zoo_args = ["--zoo", "mobilenet_v1", *size, "--policies", "8"]
        zoo_networks, zoo_precisions = 1, 1
    else:
        zoo_args = ["--zoo", *zoo.NETWORKS, "--batch", "64", "--precision", "float16", "float32-strict",
                    "--rounds", "10", "--policies", "auto", "32", "--tune-budget", "30"]
        zoo_networks, zoo_precisions = len(zoo.NETWORKS), 2
    steps.append(Step("zoo", [PY, str(BENCH / "networks.py"), *common, *zoo_args, "--cache-dir",
                              str(out / "tune-cache-1"), "--plans-dir", str(out / "plans" / "zoo"),
                              "--out", str(out / f"zoo-{provider}")],
                      network_estimate(zoo_networks, 1, zoo_precisions, grid + 4 + 2, 10),
                      f"{zoo_networks} networks x {zoo_precisions} precisions, {grid + 6} variants", 0.10))

    if quick:
        zl_args = ["--network", "mobilenet_v1", *size]
        zl = len({layer for layer in zoo.depthwise_layers("mobilenet_v1")})
    else:
        zl_args = ["--network", *zoo.NETWORKS, "--batch", "64", "--precision", "float16", "--rounds", "10"]
        zl = len({layer for _, _, layer in zoo.layer_table(list(zoo.NETWORKS))})
    # the mobile networks' 3x3-7x7 layers: block-diagonal G only (their lowerings pay 10x-60x the
    # arithmetic; auto still measures them in the zoo step)
    per_layer = grid + 2 * 7 + 2
    steps.append(Step("layers-zoo", [PY, str(BENCH / "layers.py"), *common, *zl_args, "--no-forms",
                                     "--out", str(out / f"layers-zoo-{provider}")],
                      zl * per_layer * (ASSUMED["ort_layer_session"] + 14 * ASSUMED["ort_layer_run_b64"]),
                      f"{zl} layers x {per_layer} variants", 0.08))

    table = zoo.layer_table()
    if quick:
        torch_args, torch_configs, torch_layers = ["--quick"], 1, 3
    else:
        torch_args = ["--network", "replknet_31b", "conformer", *zoo.NETWORKS, "--batch", "64", "1", "--dtype",
                      "float16", "float32", "--layout", "channels_last", "nchw", "--rounds", "15"]
        torch_configs, torch_layers = 2 * 2 * 2, len({layer for _, _, layer in table})
    variants = 7
    per_config = variants * (16 * (ASSUMED["torch_run_b64"] + ASSUMED["torch_run_b1"]) / 2) + \
        variants * ASSUMED["torch_autotune"]
    steps.append(Step("torch-layers", [PY, str(BENCH / "torch_layers.py"), "--device", device, *torch_args,
                                       "--out", str(out / f"torch_layers-{device}")],
                      torch_layers * torch_configs * per_config,
                      f"{torch_layers} layers x {torch_configs} (dtype, layout, batch) x {variants} variants",
                      0.06, needs_ort=False, needs_torch=True))

    training = [["--small", "--no-layers"]] if quick else [["--steps", "2", "--rounds", "5", "--no-layers"],
                                                           ["--tf32", "default", "--steps", "2", "--rounds", "5",
                                                            "--no-layers"],
                                                           ["--amp", "bf16", "--channels-last", "--steps", "2",
                                                            "--rounds", "5", "--no-layers"]]
    for extra in training:
        label = "-".join(a.strip("-") for a in extra if a.startswith("--") and a not in
                         ("--steps", "--rounds", "--no-layers", "--small")) or "fp32"
        steps.append(Step(f"training-{label}", [PY, str(BENCH / "paper_training.py"), "--device", device, *extra,
                                                "--out", str(out / f"paper_training-{device}-{label}")],
                          6 * ASSUMED["training_variant"], f"6 variants at {ASSUMED['training_variant']} s", 0.03,
                          needs_ort=False, needs_torch=True))

    samples = sorted((ROOT / "sample_models").glob("*.onnx"))
    steps.append(Step("validate", [PY, str(Path(__file__).resolve()), "--validate-samples", "--provider", provider,
                                   "--out", str(out)],
                      len(samples) * ASSUMED["validate_sample"],
                      f"{len(samples)} samples at {ASSUMED['validate_sample']} s", 0.03))
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


def torch_missing() -> str:
    """'' if PyTorch imports here, else why not (one line; tried in a child process)."""
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "PyTorch is not installed (No module named 'torch')"
    try:
        run = subprocess.run([PY, "-c", "import torch"], capture_output=True, text=True, timeout=120, env=ENV)
    except subprocess.TimeoutExpired:
        return "importing torch took over 120 s"
    if run.returncode != 0:
        return "PyTorch does not import: " + (run.stderr.strip().splitlines() or ["?"])[-1]
    return ""


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
    parser.add_argument("--models", type=Path, default=None, help="also measure every .onnx file in this folder")
    parser.add_argument("--validate-samples", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.provider not in ("cuda", "cpu"):
        parser.error("--provider must be cuda or cpu")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    if args.models is not None and not args.models.is_dir():
        parser.error(f"--models {args.models}: not a folder")
    if args.models is not None and not list(args.models.glob("*.onnx")):
        parser.error(f"--models {args.models}: no .onnx files there")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.validate_samples:
        return validate_samples(args.provider, args.out, args.max_seconds)

    start = time.time()
    torch_problem = torch_missing()
    if args.dry_run:
        ort_problem = ""
    else:
        if not torch_problem and args.provider == "cuda":
            torch_problem = torch_cuda()
        ort_problem = ort_provider(args.provider)
    if torch_problem and ort_problem:
        what = "no usable CUDA" if args.provider == "cuda" else "neither onnxruntime nor PyTorch runs"
        print(f"error: {what}: {ort_problem}; PyTorch: {torch_problem}", file=sys.stderr)
        return 2
    steps = [s for s in plan(args.provider, args.out, args.quick, args.models) if not args.only or s.name in args.only]

    def blocker(step: Step) -> str:
        if step.needs_ort and ort_problem:
            return ort_problem
        if step.needs_torch and torch_problem:
            return torch_problem
        return "" if step.needs_ort else torch_problem

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
            record.update(exit="skipped", reason=blocker(step), reason_kind="environment")
            summary["steps"].append(record)
            write_summary(summary, args.out, args.bundle)
            print(f"{step.name}: skipped ({blocker(step)})", flush=True)
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
    merge_headlines(args.out, args.provider, summary, args.bundle)
    return 0 if all(s["exit"] in (0, "skipped") and (s["exit"] == 0 or s.get("reason_kind") == "environment")
                    for s in summary["steps"]) else 1


def merge_headlines(out: Path, provider: str, summary: dict, bundle: Path | None) -> None:
    """headline.md: the two headline processes side by side (when both wrote results)."""
    runs = [out / f"headline-{i}-{provider}.json" for i in (1, 2)]
    if all(r.exists() for r in runs):
        subprocess.run([PY, str(BENCH / "networks.py"), "--merge", *map(str, runs), "--out", str(out / "headline")],
                       cwd=ROOT, env=ENV, timeout=120)
        summary["headline"] = str(out / "headline.md")
        write_summary(summary, out, bundle)


if __name__ == "__main__":
    sys.exit(main())
