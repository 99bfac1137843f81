"""What the rewrite itself costs: time and peak memory of `onnx-diagwise rewrite --no-check`
next to a plain onnx.load + onnx.save of the same model (and, for information, of the
default rewrite, which also runs both models in onnxruntime to check the result), and with
--ir the same through onnx-ir: ir.load + ir.save, and ir.load + DiagonalwisePass + ir.save, for the
model with its weights inline and for the model with its weights in a .data file (which onnx-ir
loads lazily, memory-mapped: the pass reads only the depthwise weights).

    python benchmarks/rewrite_cost.py [--blocks 40] [--channels 1024] [--repeats 3] [--json PATH]

The model is synthetic: BLOCKS depthwise-separable blocks (3x3 depthwise Conv on
C channels + 1x1 Conv C -> 2C -> C), so most bytes are pointwise weights, as in
real networks.  Each measurement runs in a fresh process that reports its own
wall time for the work (imports excluded) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_diagwise.model_io import BUILT_IR_VERSION

CHILD = r"""
import json, resource, sys, time
mode, src, dst = sys.argv[1:4]
if mode == "onnx":
    import onnx
    start = time.perf_counter()
    onnx.save(onnx.load(src), dst)
elif mode == "ir":
    import onnx_ir as ir
    start = time.perf_counter()
    ir.save(ir.load(src), dst)
elif mode.startswith("ir-pass"):  # ir-pass, ir-pass-only (no save), ir-pass-external (save with a .data file)
    import onnx_ir as ir
    from onnx_diagwise.passes import DiagonalwisePass
    start = time.perf_counter()
    model = ir.load(src)
    assert DiagonalwisePass(group_size=sys.argv[4] if not sys.argv[4].isdigit() else int(sys.argv[4]))(model).modified
    if mode == "ir-pass":
        ir.save(model, dst)
    elif mode == "ir-pass-external":
        ir.save(model, dst, external_data=dst.rsplit("/", 1)[-1] + ".data")
elif mode == "ir-external":
    import onnx_ir as ir
    start = time.perf_counter()
    ir.save(ir.load(src), dst, external_data=dst.rsplit("/", 1)[-1] + ".data")
else:
    from onnx_diagwise.cli import main
    start = time.perf_counter()
    code = main(["rewrite", src, dst, "-q", *sys.argv[4:]])
    assert code == 0, code
elapsed = time.perf_counter() - start
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across exec.
try:
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "peak_rss_bytes": peak}))
"""


def build_model(blocks: int, channels: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i in range(blocks):
        for name, shape in ((f"dw{i}.w", (channels, 1, 3, 3)), (f"pw{i}a.w", (2 * channels, channels, 1, 1)),
                            (f"pw{i}b.w", (channels, 2 * channels, 1, 1))):
            inits.append(numpy_helper.from_array(rng.standard_normal(shape, np.float32) * 0.01, name))
        nodes.append(helper.make_node("Conv", [x, f"dw{i}.w"], [f"dw{i}"], name=f"dw{i}", group=channels,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Conv", [f"dw{i}", f"pw{i}a.w"], [f"pw{i}a"], name=f"pw{i}a"))
        nodes.append(helper.make_node("Relu", [f"pw{i}a"], [f"relu{i}"], name=f"relu{i}"))
        nodes.append(helper.make_node("Conv", [f"relu{i}", f"pw{i}b.w"], [f"pw{i}b"], name=f"pw{i}b"))
        x = f"pw{i}b"
    graph = helper.make_graph(nodes, "rewrite_cost", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                    ["N", channels, 14, 14])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, 14, 14])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=BUILT_IR_VERSION)


def measure(mode: str, src: Path, dst: Path, extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(dst), *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-size", default="paper")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ir", action="store_true", help="also measure the onnx-ir path (needs onnx-ir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(build_model(args.blocks, args.channels), src)
        size = src.stat().st_size
        extra = ["--group-size", args.group_size]
        runs: dict[str, list[dict]] = {"onnx load+save": [], "onnx-diagwise rewrite": [],
                                       "rewrite + check on CPU": []}
        for _ in range(args.repeats):  # interleaved so drift hits all alike
            runs["onnx load+save"].append(measure("onnx", src, Path(tmp) / "plain.onnx", []))
            runs["onnx-diagwise rewrite"].append(
                measure("diagwise", src, Path(tmp) / "out.onnx", extra + ["--no-check"]))
            runs["rewrite + check on CPU"].append(measure("diagwise", src, Path(tmp) / "checked.onnx", extra))
            if args.ir:
                runs.setdefault("onnx_ir load+save", []).append(measure("ir", src, Path(tmp) / "ir.onnx", []))
                runs.setdefault("DiagonalwisePass (onnx_ir)", []).append(
                    measure("ir-pass", src, Path(tmp) / "ir-pass.onnx", [args.group_size]))
                external = Path(tmp) / "external" / "model.onnx"
                if not external.exists():
                    external.parent.mkdir()
                    onnx.save(onnx.load(src), external, save_as_external_data=True, location="model.onnx.data")
                runs.setdefault("external data: onnx-diagwise rewrite", []).append(
                    measure("diagwise", external, Path(tmp) / "ext-out.onnx", extra + ["--no-check"]))
                runs.setdefault("external data: onnx_ir load+save", []).append(
                    measure("ir-external", external, str(Path(tmp) / "ir-ext.onnx"), []))
                runs.setdefault("external data: DiagonalwisePass only", []).append(
                    measure("ir-pass-only", external, Path(tmp) / "unused.onnx", [args.group_size]))
                runs.setdefault("external data: DiagonalwisePass + save", []).append(
                    measure("ir-pass-external", external, Path(tmp) / "ir-pass-ext.onnx", [args.group_size]))
        out_size = (Path(tmp) / "out.onnx").stat().st_size

    rows = {name: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs)} for name, rs in runs.items()}
    base, ours = rows["onnx load+save"], rows["onnx-diagwise rewrite"]  # the target: < 2x time, < 3x size
    result = {
        "model": {"blocks": args.blocks, "channels": args.channels, "file_bytes": size,
                  "rewritten_file_bytes": out_size, "group_size": args.group_size},
        "runs": rows,
        "time_ratio": ours["seconds"] / base["seconds"],
        "peak_rss_over_model_size": ours["peak_rss_bytes"] / size,
        "environment": {"python": platform.python_version(), "onnx": onnx.__version__,
                        "machine": platform.machine(), "cpu_count": os.cpu_count(), "repeats": args.repeats},
    }
    print(f"model: {args.blocks} depthwise-separable blocks, C={args.channels}, {size / 2**20:.0f} MiB "
          f"-> {out_size / 2**20:.0f} MiB rewritten (G policy {args.group_size})")
    print(f"{'':40} {'median s':>9} {'peak RSS MiB':>13} {'RSS / model':>12}")
    for name, row in rows.items():
        print(f"{name:40} {row['seconds']:9.2f} {row['peak_rss_bytes'] / 2**20:13.0f} "
              f"{row['peak_rss_bytes'] / size:12.2f}")
    print(f"time ratio rewrite / (load+save): {result['time_ratio']:.2f}x   "
          f"peak RSS / model size: {result['peak_rss_over_model_size']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
