"""Per-layer benchmark in PyTorch (cuDNN on a GPU): every depthwise layer of benchmarks/zoo.py,
depthwise conv (groups = C) vs the block-diagonal conv (groups = C/G) for G in {2, 4, 8, 16, 32, 64, full}.

    python benchmarks/torch_layers.py --out /tmp/torch_layers              # GPU: fp32 + fp16, NCHW + NHWC, batch 1 + 64
    python benchmarks/torch_layers.py --quick --device cpu --out /tmp/tl   # CPU-sized (what the tests run)

Needs only torch, plus onnx and numpy (zoo.py, onnx_diagwise.bench).  torch.backends.cudnn.benchmark
is on (each shape gets its fastest algorithm); TF32 is off, so float32 means float32.  Variants of a
layer run in interleaved rounds, in a fresh random order each round, so clock and thermal drift hit
all alike.  On CUDA each op is timed with events behind a short torch.cuda._sleep that keeps the GPU
queue full, so the events time the kernels, not Python's launch (which would swamp batch-1 layers).
Inputs stay in cache between rounds (warm-cache timings).  'BW' is the fraction of the bandwidth
bound: (input + output activation bytes) / time, over the y.copy_(x) bandwidth measured in this run
(above 100%: the activations were served from cache).  The best G is picked on the same samples its
interval comes from, so that interval is a little optimistic.
Every variant's output is checked against the depthwise one first; a mismatch stops the run (exit 1).
float16 on CPU is skipped: PyTorch runs it on its slow reference path (Slow2d, up to 1 s a layer),
which says nothing about the rewrite.  --max-seconds stops starting new layers (exit 0, skipped
layers recorded); both output files are rewritten after each layer, so a killed run leaves valid files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import zoo  # noqa: E402
from _common import RESULTS, md_table  # noqa: E402

from onnx_diagwise.bench import speedup_interval  # noqa: E402 (numpy only; onnxruntime is imported lazily)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
DTYPES = {"float32": torch.float32, "float16": torch.float16}
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}  # max |error| relative to max |y|
GROUP_SIZES = ["2", "4", "8", "16", "32", "64", "full"]
SLEEP_CYCLES = 200_000  # ~0.1 ms of GPU spin: longer than Python takes to launch one timed op


class Mismatch(RuntimeError):
    """A block-diagonal variant computed something else than the depthwise conv."""


def block_weight(weight: torch.Tensor, channels: int, group: int) -> torch.Tensor:
    """[C*M, 1, k...] depthwise weight -> [C*M, G, k...] block-diagonal one: W'[o, (o // M) % G] = W[o, 0].
    Same construction as onnx_diagwise.torch's DiagonalwiseConv.block_weight (a tested cross-check)."""
    kernel = weight.shape[2:]
    multiplier = weight.shape[0] // channels
    eye = torch.eye(group, dtype=weight.dtype, device=weight.device).reshape(1, group, 1, group, *[1] * len(kernel))
    blocks = weight.reshape(channels // group, group, multiplier, 1, *kernel) * eye
    return blocks.reshape(channels * multiplier, group, *kernel)


def group_sizes(channels: int, requested: list[str]) -> dict[str, int]:
    """Label -> G for the requested sizes that divide C; G = C is labelled 'full' (and kept once)."""
    wanted = {channels if r == "full" else int(r) for r in requested}
    return {("full" if g == channels else str(g)): g for g in sorted(wanted) if 1 < g <= channels and channels % g == 0}


def conv_backend(x, weight, layer, groups: int) -> str | None:
    """Which PyTorch kernel family serves this conv (cuDNN, its own depthwise kernel, mkldnn, ...)."""
    try:
        rank = layer.rank
        backend = torch._C._select_conv_backend(x, weight, None, [layer.stride] * rank, [layer.kernel // 2] * rank,
                                                [1] * rank, False, [0] * rank, groups)
        return str(backend).rsplit(".", 1)[-1]
    except Exception:  # a private API: its absence only loses a label
        return None


def time_rounds(fns: dict, rounds: int, device: torch.device, seed: int) -> dict[str, list[float]]:
    """ms per call of each fn, interleaved: each round runs every fn once, in a fresh random order."""
    order_rng, samples = random.Random(seed), {name: [] for name in fns}
    for _ in range(rounds):
        order = order_rng.sample(list(fns), len(fns))
        if device.type == "cuda":
            marks = []
            for name in order:
                if hasattr(torch.cuda, "_sleep"):  # a private helper; without it batch-1 times include launch
                    torch.cuda._sleep(SLEEP_CYCLES)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[name]()
                end.record()
                marks.append((name, start, end))
            torch.cuda.synchronize()
            for name, start, end in marks:
                samples[name].append(start.elapsed_time(end))
        else:  # CPU ops return when done
            for name in order:
                start = time.perf_counter()
                fns[name]()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of y.copy_(x), read + write: the roof for a conv that only streams its activations."""
    x = torch.ones((256 if device.type == "cuda" else 32) * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    ms = statistics.median(time_rounds({"copy": lambda: y.copy_(x)}, 10, device, 0)["copy"])
    return 2 * x.nbytes / (ms / 1e3) / 1e9


def measure(layer, batch: int, dtype: str, layout: str, args, device, copy_gbps: float, seed: int) -> dict:
    """One (layer, batch, dtype, layout): check every variant's output, then time them side by side."""
    c, rank, pad = layer.channels, layer.rank, layer.kernel // 2
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, c, *layer.size, generator=gen, device=device).to(DTYPES[dtype])
    w = torch.randn(c * layer.multiplier, 1, *[layer.kernel] * rank, generator=gen, device=device)
    w = (w / layer.kernel ** (rank / 2)).to(DTYPES[dtype])  # keeps |y| ~ 1, well inside float16
    weights = {"dw": (w, 1), **{label: (block_weight(w, c, g), g)  # label -> (weight, G); groups = C/G
                                for label, g in group_sizes(c, args.group_sizes).items()}}
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        weights = {k: (v.to(memory_format=torch.channels_last), g) for k, (v, g) in weights.items()}
    conv = CONV[rank]
    fns = {label: (lambda v=v, g=g: conv(x, v, None, layer.stride, pad, 1, c // g))
           for label, (v, g) in weights.items()}
    reference = fns["dw"]().float()
    scale = float(reference.abs().max()) or 1.0
    errors = {label: float((fn().float() - reference).abs().max()) / scale for label, fn in fns.items()}
    bad = {label: e for label, e in errors.items() if not e <= TOLERANCE[dtype]}
    if bad:
        raise Mismatch(f"layer {layer} batch {batch} {dtype} {layout}: relative error {bad} > {TOLERANCE[dtype]}")
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    samples = time_rounds(fns, args.rounds, device, seed)
    dw = np.array(samples["dw"])
    variants = {}
    for label, (v, g) in weights.items():
        ms = float(np.median(samples[label]))
        variants[label] = {"G": g, "groups": c // g, "ms": ms,
                           "speedup": float(np.median(dw)) / ms, "max_error": errors[label],
                           "ci95": None if label == "dw" else speedup_interval(dw, np.array(samples[label])),
                           "backend": conv_backend(x, v, layer, c // g)}
    best = min((k for k in variants if k != "dw"), key=lambda k: variants[k]["ms"], default=None)
    nbytes = x.nbytes + reference.numel() * x.element_size()

    def bw(label):
        return nbytes / (variants[label]["ms"] / 1e3) / (copy_gbps * 1e9) if label else None
    return {"batch": batch, "dtype": dtype, "layout": layout, "variants": variants, "best": best,
            "best_speedup": variants[best]["speedup"] if best else None,
            "best_ci95": variants[best]["ci95"] if best else None,
            "bw_fraction": {"dw": bw("dw"), "best": bw(best)}, "max_error": max(errors.values())}


def plan(args) -> list[tuple[str, int, object]]:
    if args.quick:
        network = next((n for n in args.network or [] if n in zoo.NETWORKS), zoo.NETWORKS[0])
        return zoo.layer_table([network])[:2] + zoo.layer_table(["conformer"])
    return zoo.layer_table(args.network)


def configs(layer, args) -> list[tuple[int, str, str]]:
    layouts = args.layout if layer.rank == 2 else ["contiguous"]  # channels_last exists for 2-D only
    return [(b, d, lay) for b in args.batch for d in args.dtype for lay in layouts]


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
           "cpu_threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    return env


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _wins(rows) -> int:
    """Layers where the best G beat depthwise by more than 5% and the interval excludes 1."""
    return sum(1 for r in rows if r["best"] and r["best_speedup"] > 1.05 and r["best_ci95"][0] > 1)


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    lines = ["# Depthwise vs block-diagonal convolutions in PyTorch", "", f"Command: `{result['command']}`", "",
             f"Environment: torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
             f"{env.get('gpu', env['device'])}, driver {env.get('driver')}, {env['time']}. "
             f"torch.backends.cudnn.benchmark = {env['cudnn_benchmark']}; TF32 matmul {env['tf32_matmul']}, "
             f"cuDNN {env['tf32_cudnn']}. Copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s.",
             "", f"Status: {result['status']}" + (f" ({result['failure']})" if result["failure"] else ""), ""]
    lines += [f"Note: {n}" for n in result["notes"]] + ([""] if result["notes"] else [])
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["layout"], r["batch"]), []).append(r)
    lines += ["Best G faster than depthwise by > 5% with its 95% interval above 1:", ""]
    lines += md_table(["dtype", "layout", "batch", "layers", "best G wins", "median best speedup",
                       "median depthwise BW"],
                      [[d, lay, b, len(rs), _wins(rs),
                        f"{statistics.median([r['best_speedup'] for r in rs if r['best']] or [0]):.2f}x",
                        f"{statistics.median(r['bw_fraction']['dw'] for r in rs):.0%}"]
                       for (d, lay, b), rs in sorted(groups.items())])
    for table in dict.fromkeys(r["table"] for r in rows):
        lines += [f"## {table}", ""]
        lines += md_table(["#", "C x M", "size", "s", "k", "batch", "dtype", "layout", "dw ms (backend)", "best G",
                           "speedup [95%]", "BW dw", "BW best", "all G", "max err"],
                          [[r["index"], f"{r['layer']['channels']}x{r['layer']['multiplier']}",
                            "x".join(map(str, r["layer"]["size"])), r["layer"]["stride"], r["layer"]["kernel"],
                            r["batch"], r["dtype"], r["layout"],
                            f"{r['variants']['dw']['ms']:.4f} ({r['variants']['dw']['backend']})", r["best"],
                            f"{r['best_speedup']:.2f}x {_ci(r['best_ci95'])}" if r["best"] else "",
                            f"{r['bw_fraction']['dw']:.0%}",
                            f"{r['bw_fraction']['best']:.0%}" if r["best"] else "",
                            " ".join(f"{k}:{v['speedup']:.2f}" for k, v in r["variants"].items() if k != "dw"),
                            f"{r['max_error']:.1e}"] for r in rows if r["table"] == table])
    if result["same_as"]:
        lines += ["Not timed again (the same layer as one above): " + ", ".join(
            f"{s['table']} #{s['index']} = {s['measured_as']}" for s in result["same_as"]), ""]
    if result["skipped"]:
        lines += ["Skipped: " + ", ".join(f"{s['table']} #{s['index']} ({s['reason']})" for s in result["skipped"]),
                  ""]
    return "\n".join(lines)


def write(result: dict, base: Path) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(result) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--network", nargs="+", choices=list(zoo.NETWORKS) + list(zoo.EXTRA_LAYERS), default=None)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32", "float16"])
    parser.add_argument("--layout", nargs="+", choices=["nchw", "channels_last"], default=["nchw", "channels_last"])
    parser.add_argument("--group-sizes", nargs="+", default=GROUP_SIZES, help="integers and/or 'full'")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=None, help="start no new layer after this")
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: batch 1, float32, nchw, 2 layers of one "
                        "network + the conformer layer, G in {2, full}, 3 rounds, 1 warm-up")
    args = parser.parse_args(argv)
    bad = [g for g in args.group_sizes if g != "full" and not (g.isdigit() and int(g) > 1)]
    if bad:
        parser.error(f"--group-sizes: {bad} are not integers > 1 or 'full'")
    if args.quick:
        args.batch, args.dtype, args.layout, args.group_sizes = [1], ["float32"], ["nchw"], ["2", "full"]
        args.rounds, args.warmup = 3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"torch_layers: --device {args.device} asked, but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # each shape gets its fastest algorithm
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    notes = []
    if device.type == "cpu" and "float16" in args.dtype:
        args.dtype = [d for d in args.dtype if d != "float16"]
        notes.append("float16 skipped on CPU: PyTorch serves it with its slow reference kernel (Slow2d).")
    if device.type == "cpu":
        notes.append("cudnn.benchmark and the TF32 flags have no effect on CPU; times are perf_counter.")
    base = args.out or RESULTS / f"torch_layers-{device.type}"
    command = "python benchmarks/torch_layers.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    result = {"command": command, "environment": environment(device),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "copy_bandwidth_gbps": copy_bandwidth(device), "notes": notes, "status": "running",
              "failure": None, "rows": [], "skipped": [], "same_as": []}
    print(f"torch {torch.__version__} on {result['environment'].get('gpu', device)}; cudnn.benchmark=True, TF32 off; "
          f"copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s")
    write(result, base)
    layers, measured = plan(args), {}
    for n, (table, index, layer) in enumerate(layers, 1):
        where = {"table": table, "index": index, "layer": dataclasses.asdict(layer)}
        if layer in measured:  # networks repeat layers (MobileNet V1 has five alike): time each once
            result["same_as"].append({**where, "measured_as": measured[layer]})
            continue
        measured[layer] = f"{table} #{index}"
        if args.max_seconds is not None and time.perf_counter() - started >= args.max_seconds:
            result["skipped"].append({**where, "reason": f"--max-seconds {args.max_seconds:g} reached"})
            continue
        layer_start, cells = time.perf_counter(), []
        for batch, dtype, layout in configs(layer, args):
            seed = zlib.crc32(f"{table}/{index}/{batch}/{dtype}/{layout}".encode())
            try:
                row = {**where, **measure(layer, batch, dtype, layout, args, device,
                                          result["copy_bandwidth_gbps"], seed)}
            except torch.OutOfMemoryError as error:  # one config too large: record it, go on
                result["skipped"].append({**where, "batch": batch, "dtype": dtype, "layout": layout,
                                          "reason": f"out of memory: {str(error).splitlines()[0]}"})
                continue
            except Mismatch as error:  # a wrong result is a failed run, recorded
                result["status"], result["failure"] = "failed", str(error)
                write(result, base)
                print(f"torch_layers: numeric mismatch: {error}", file=sys.stderr)
                return 1
            result["rows"].append(row)
            cells.append(f"b{batch} {dtype} {layout}: G={row['best']} {row['best_speedup'] or 0:.2f}x "
                         f"{_ci(row['best_ci95'])}")
        write(result, base)
        print(f"[{n}/{len(layers)}] {table} #{index} C={layer.channels} {'x'.join(map(str, layer.size))} "
              f"s{layer.stride} k{layer.kernel} ({time.perf_counter() - layer_start:.1f} s): " + "; ".join(cells),
              flush=True)
    result["status"] = "done"
    write(result, base)
    print(f"wrote {base.with_suffix('.json')} and {base.with_suffix('.md')}"
          + (f"; {len(result['skipped'])} skipped (listed in both files)" if result["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
