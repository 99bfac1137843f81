"""Per-layer benchmark: each depthwise layer of real networks, original vs block-diagonal
with G in {2, 4, 8, 16, 32, 64, full}, timed side by side under onnxruntime.

    python benchmarks/layers.py                          # CPU: batch 1, fp32, every network
    python benchmarks/layers.py --provider cuda --batch 1 64 --dtype float32 float16 \\
        --provider-option cudnn_conv_algo_search=EXHAUSTIVE

Each layer is a one-node model (input fixed at the layer's shape); the original and
every G variant run in one interleaved benchmark.  Cells are speedups over the
original depthwise conv (>1 = the rewrite is faster).  'BW' is the fraction of the
memory-bandwidth bound reached: (input + output bytes) / time, over the copy
bandwidth measured in the same run with an elementwise op.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_runtime_flags, md_table, runtime_config, write_results  # noqa: E402

from onnx_diagwise import InputOptions, benchmark, rewrite  # noqa: E402

# (channels, input H=W, stride, kernel) of every depthwise layer, 224x224 inputs.
NETWORKS = {
    "mobilenet_v1": [(32, 112, 1, 3), (64, 112, 2, 3), (128, 56, 1, 3), (128, 56, 2, 3), (256, 28, 1, 3),
                     (256, 28, 2, 3), (512, 14, 1, 3), (512, 14, 1, 3), (512, 14, 1, 3), (512, 14, 1, 3),
                     (512, 14, 1, 3), (512, 14, 2, 3), (1024, 7, 1, 3)],
    "mobilenet_v2": [(32, 112, 1, 3), (96, 112, 2, 3), (144, 56, 1, 3), (144, 56, 2, 3), (192, 28, 1, 3),
                     (192, 28, 2, 3), (384, 14, 1, 3), (576, 14, 1, 3), (576, 14, 2, 3), (960, 7, 1, 3)],
    "mobilenet_v3_large": [(16, 112, 1, 3), (64, 112, 2, 3), (72, 56, 1, 3), (72, 56, 2, 5), (120, 28, 1, 5),
                           (240, 28, 2, 3), (200, 14, 1, 3), (184, 14, 1, 3), (480, 14, 1, 3), (672, 14, 1, 3),
                           (672, 14, 2, 5), (960, 7, 1, 5)],
    "efficientnet_b0": [(32, 112, 1, 3), (96, 112, 2, 3), (144, 56, 1, 3), (144, 56, 2, 5), (240, 28, 1, 5),
                        (240, 28, 2, 3), (480, 14, 1, 3), (480, 14, 1, 5), (672, 14, 1, 5), (672, 14, 2, 5),
                        (1152, 7, 1, 5), (1152, 7, 1, 3)],
    "convnext_tiny": [(96, 56, 1, 7), (192, 28, 1, 7), (384, 14, 1, 7), (768, 7, 1, 7)],
}
GROUP_SIZES = [2, 4, 8, 16, 32, 64, "full"]
DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def layer_model(channels: int, size: int, stride: int, kernel: int, batch: int, dtype: str) -> onnx.ModelProto:
    elem = DTYPES[dtype]
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    w = (np.random.default_rng(channels).standard_normal((channels, 1, kernel, kernel)) * 0.3).astype(np_dtype)
    out = (size + stride - 1) // stride
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=channels, kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=[kernel // 2] * 4)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", elem, [batch, channels, size, size])],
                              [helper.make_tensor_value_info("y", elem, [batch, channels, out, out])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def copy_model(elements: int, dtype: str) -> onnx.ModelProto:
    """y = x + 0: reads and writes every element once, to measure memory bandwidth."""
    elem = DTYPES[dtype]
    zero = numpy_helper.from_array(np.zeros((), helper.tensor_dtype_to_np_dtype(elem)), "zero")
    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], "copy",
                              [helper.make_tensor_value_info("x", elem, [elements])],
                              [helper.make_tensor_value_info("y", elem, [elements])], [zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def group_sizes_for(channels: int) -> list[tuple[str, int]]:
    sizes = [(str(g), g) for g in GROUP_SIZES if g != "full" and g < channels and channels % g == 0]
    return sizes + [("full", channels)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(parser)
    parser.add_argument("--network", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--max-gflop", type=float, default=None,
                        help="skip variants above this many GFLOP per run (default: 2 on CPU, no limit elsewhere)")
    args = parser.parse_args()
    config = runtime_config(args)
    max_gflop = args.max_gflop if args.max_gflop is not None else (None if config.is_gpu else 2.0)

    results, markdown, environment = [], [], None
    for dtype in args.dtype:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(DTYPES[dtype])).itemsize
        elements = (64 if config.is_gpu else 16) * 2**20
        copy = benchmark([copy_model(elements, dtype)], config, warmup=args.warmup, iterations=args.iterations)
        copy_bw = 2 * elements * itemsize / (copy.models[0].median_ms / 1000)
        environment = copy.environment
        print(f"{dtype}: copy bandwidth {copy_bw / 1e9:.1f} GB/s")
        for batch in args.batch:
            for network in args.network:
                rows = []
                for index, (channels, size, stride, kernel) in enumerate(NETWORKS[network], 1):
                    row = run_layer(config, args, network, index, channels, size, stride, kernel, batch, dtype,
                                    itemsize, copy_bw, max_gflop)
                    results.append(row)
                    rows.append(row)
                    print(f"{network} #{index} C={channels} {size}x{size} s{stride} k{kernel} b{batch} {dtype}: "
                          f"orig {row['original_ms']:.3f} ms, best {row['best']} "
                          f"{row['best_speedup']:.2f}x", flush=True)
                markdown += [f"## {network}, batch {batch}, {dtype}", "",
                             f"Copy bandwidth {copy_bw / 1e9:.1f} GB/s. Cells: speedup over the original "
                             "depthwise conv (>1 = rewrite faster); '-' = G does not divide C or skipped.", ""]
                markdown += md_table(
                    ["#", "C", "HxW", "s", "k", "orig ms", *[f"G={g}" for g in GROUP_SIZES], "best", "BW orig",
                     "BW best"],
                    [[r["layer"], r["channels"], f"{r['size']}x{r['size']}", r["stride"], r["kernel"],
                      f"{r['original_ms']:.3f}",
                      *[f"{r['speedups'][str(g)]:.2f}" if r["speedups"].get(str(g)) is not None else "-"
                        for g in GROUP_SIZES],
                      r["best"], f"{r['bw_fraction_original']:.0%}", f"{r['bw_fraction_best']:.0%}"] for r in rows])
    path = write_results("layers", args, {"environment": environment, "rows": results}, markdown)
    print(f"results: {path}.json / .md")


def run_layer(config, args, network, index, channels, size, stride, kernel, batch, dtype, itemsize, copy_bw,
              max_gflop) -> dict:
    model = layer_model(channels, size, stride, kernel, batch, dtype)
    out = (size + stride - 1) // stride
    base_flop = 2 * batch * channels * kernel * kernel * out * out
    names, models, skipped = ["original"], [model], []
    for label, g in group_sizes_for(channels):
        if max_gflop is not None and base_flop * g / 1e9 > max_gflop:
            skipped.append(label)
            continue
        names.append(label)
        models.append(rewrite(model, node_group_sizes={"dw": g}).model if g > 1 else model)
    report = benchmark(models, config, InputOptions(batch=batch), warmup=args.warmup,
                       iterations=args.iterations, names=names)
    by_name = {m.name: m for m in report.models}
    original = by_name["original"]
    speedups = {label: by_name[label].speedup for label in names[1:]}
    best = max(speedups, key=speedups.get) if speedups else "original"
    if speedups.get(best, 0.0) <= 1.0:
        best = "original"  # nothing beat the depthwise kernel
    best_ms = by_name[best].median_ms
    act_bytes = batch * channels * (size * size + out * out) * itemsize
    bound_ms = act_bytes / copy_bw * 1000
    return {
        "network": network, "layer": index, "channels": channels, "size": size, "stride": stride,
        "kernel": kernel, "batch": batch, "dtype": dtype, "original_ms": original.median_ms,
        "ms": {label: by_name[label].median_ms for label in names[1:]},
        "speedups": {label: speedups.get(label) for label in [str(g) for g in GROUP_SIZES]},
        "skipped_over_flop_budget": skipped,
        "best": best, "best_speedup": speedups.get(best, 1.0),
        "activation_bytes": act_bytes, "bandwidth_bound_ms": bound_ms,
        "bw_fraction_original": bound_ms / original.median_ms, "bw_fraction_best": bound_ms / best_ms,
    }


if __name__ == "__main__":
    main()
