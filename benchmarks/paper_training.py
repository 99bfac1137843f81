"""The paper's experiment in PyTorch: MobileNet V1 training steps (forward + backward + SGD
update), original depthwise convolutions vs diagonalwise ones with G in {8, 16, 32, 64, full}.

    python benchmarks/paper_training.py                 # on a GPU: batch 64, 224x224, fp32 (the paper's setting)
    python benchmarks/paper_training.py --amp bf16 --channels-last
    python benchmarks/paper_training.py --small         # CPU-sized configuration (what the tests run)

Qin et al. (arXiv:1803.09926) report 5.4x for PyTorch on MobileNet V1, batch 64,
224x224, fp32, with G = 32.  Variants are trained from the same initial weights,
in interleaved rounds (every variant once per round, in a fresh random order) so drift
hits all alike; the per-layer table times each of the 13 depthwise layers alone
(forward, and forward + backward) at its input shape.

float32 and TF32: `--tf32 off` (the default) turns TF32 off for cuDNN convolutions and
matmuls, so fp32 means fp32; `--tf32 default` keeps PyTorch's own defaults (TF32 on for
cuDNN convolutions), as users get it.  The results state which, with the flags' values.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from onnx_diagwise.bench import speedup_interval  # noqa: E402
from onnx_diagwise.torch import convert  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (output channels, stride) of the 13 depthwise-separable layers; the depthwise conv runs on the input channels.
LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1)]


def mobilenet_v1(width: float = 1.0, classes: int = 1000) -> nn.Sequential:
    def ch(c: int) -> int:
        return max(8, int(c * width))

    def conv_bn(cin, cout, k, stride, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    layers = conv_bn(3, ch(32), 3, 2)
    cin = ch(32)
    for cout, stride in LAYERS:
        layers += conv_bn(cin, cin, 3, stride, groups=cin) + conv_bn(cin, ch(cout), 1, 1)
        cin = ch(cout)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One variant: its model, optimizer and one training step."""

    def __init__(self, model: nn.Module, device, channels_last: bool, amp: str | None):
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.device = device

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = nn.functional.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())


def time_training(variants: dict[str, nn.Module], args, device) -> dict[str, list[float]]:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    trainers = {name: Trainer(model, device, args.channels_last, args.amp) for name, model in variants.items()}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step(images, labels)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    started = time.perf_counter()
    order = random.Random(0)
    for round_index in range(args.rounds):
        if round_index and args.max_seconds is not None and time.perf_counter() - started > args.max_seconds:
            break  # at least one round, then as many as the time allows
        for name in order.sample(list(trainers), len(trainers)):  # a fresh order each round
            trainer = trainers[name]
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.step(images, labels)
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    return times


def time_layers(group_sizes: list, args, device) -> list[dict]:
    """Each depthwise layer alone at its input shape: forward, and forward + backward (ms)."""
    rows = []
    size, cin = args.size // 2, max(8, int(32 * args.width))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "", torch.float32)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for index, (cout, stride) in enumerate(LAYERS, 1):
        layer = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False).to(device, dtype)
        x = torch.randn(args.batch, cin, size, size, device=device, dtype=dtype).to(memory_format=memory_format)
        x.requires_grad_(True)
        row = {"layer": index, "channels": cin, "size": size, "stride": stride, "forward_ms": {}, "train_ms": {}}
        for label in ["original"] + [str(g) for g in group_sizes]:
            module = layer if label == "original" else convert(nn.Sequential(layer), group_size=_policy(label))
            module = module.to(memory_format=memory_format)
            row["forward_ms"][label] = _median_ms(lambda: module(x), args, device)
            row["train_ms"][label] = _median_ms(lambda: module(x).sum().backward(), args, device)
        rows.append(row)
        size = (size + stride - 1) // stride
        cin = max(8, int(cout * args.width))
    return rows


def _policy(label: str):
    return "full" if label == "full" else int(label)


def _median_ms(fn, args, device) -> float:
    for _ in range(args.warmup):
        fn()
    samples = []
    for _ in range(max(3, args.rounds * args.steps)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def environment(device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "device": str(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env.update({"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark})
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="MobileNet width multiplier")
    parser.add_argument("--group-sizes", nargs="+", default=["8", "16", "32", "64", "full"])
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--tf32", choices=["off", "default"], default="off",
                        help="off: float32 means float32 (default); default: PyTorch's TF32 defaults")
    parser.add_argument("--steps", type=int, default=5, help="training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop timing rounds after this many seconds (at least one round runs)")
    parser.add_argument("--small", action="store_true",
                        help="CPU-sized: batch 2, 64x64, width 0.25, G in {8, full}, 1 round of 1 step")
    parser.add_argument("--out", type=Path, default=None, help="results basename")
    args = parser.parse_args(argv)
    if args.small:
        args.batch, args.size, args.width, args.group_sizes = 2, 64, 0.25, ["8", "full"]
        args.steps, args.rounds, args.warmup = 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.tf32 == "off":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    base = mobilenet_v1(args.width)
    variants = {"original": base}
    for label in args.group_sizes:
        variants[f"G={label}"] = convert(base, group_size=_policy(label))
    times = time_training(variants, args, device)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["original"]
    training = [{"variant": name, "step_ms": ms * 1000, "images_per_s": args.batch / ms,
                 "speedup": reference / ms,
                 "speedup_ci95": list(speedup_interval(np.array(times["original"]), np.array(times[name])))}
                for name, ms in medians.items()]
    layers = [] if args.no_layers else time_layers(args.group_sizes, args, device)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "environment": environment(device),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "training": training, "layers": layers}
    write(result, args, device)
    for row in training:
        print(f"{row['variant']:>10}: {row['step_ms']:9.2f} ms/step  {row['images_per_s']:9.1f} img/s  "
              f"{row['speedup']:.2f}x ({row['speedup_ci95'][0]:.2f}-{row['speedup_ci95'][1]:.2f})")
    return result


def write(result: dict, args, device) -> None:
    amp = args.amp or "fp32"
    name = f"paper_training-{device.type}-b{args.batch}-{amp}{'-cl' if args.channels_last else ''}"
    env = result["environment"]
    precision = (f"{args.amp} autocast" if args.amp else "float32") + \
        f"; TF32 {'off' if args.tf32 == 'off' else 'as PyTorch ships it'} (cuDNN allow_tf32={env['tf32_cudnn']}, " \
        f"matmul allow_tf32={env['tf32_matmul']})"
    base = args.out or RESULTS / name
    base.parent.mkdir(parents=True, exist_ok=True)
    result["precision"] = precision
    base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# MobileNet V1 training, {amp}, batch {args.batch}, {args.size}x{args.size}, width {args.width}", "",
             f"Command: `{result['command']}`", "", f"Environment: {json.dumps(env)}", "",
             f"Precision: {precision}.", "",
             "Speedup: median step time of the original over the variant's, with the 95% bootstrap interval "
             "of that ratio over the timed rounds (an interval holding 1 is noise). Variants ran interleaved, "
             "in a fresh random order each round.", "",
             "| variant | ms / step | images / s | speedup vs original | 95% interval |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['step_ms']:.2f} | {r['images_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{r['speedup_ci95'][0]:.2f}-{r['speedup_ci95'][1]:.2f} |"
              for r in result["training"]]
    if result["layers"]:
        labels = ["original"] + [str(g) for g in args.group_sizes]
        lines += ["", "Per depthwise layer, forward + backward ms (forward ms):", "",
                  "| # | C | HxW | s | " + " | ".join(labels) + " |", "|" + "---|" * (4 + len(labels))]
        for r in result["layers"]:
            cells = [f"{r['train_ms'][k]:.3f} ({r['forward_ms'][k]:.3f})" for k in labels]
            lines.append(f"| {r['layer']} | {r['channels']} | {r['size']}x{r['size']} | {r['stride']} | "
                         + " | ".join(cells) + " |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
