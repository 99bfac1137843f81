"""Per-layer benchmark under onnxruntime: every depthwise layer of the zoo networks
(benchmarks/zoo.py) and the large-kernel layers known to be slow on GPUs (RepLKNet-31B's
31x31@56, 29x29@28, 27x27@14, 13x13@7; a 1-D conformer layer, k=31), original vs block-diagonal with G in
{2, 4, 8, 16, 32, 64, full}, timed side by side.

    python benchmarks/layers.py                          # CPU: batch 1, fp32, every layer
    python benchmarks/layers.py --provider cuda --batch 64 --dtype float16 float32 \\
        --provider-option cudnn_conv_algo_search=EXHAUSTIVE

Each layer is a one-node model (input fixed at the layer's shape); the original and every
G variant run in one interleaved benchmark.  On CUDA every variant also runs under both
layouts (prefer_nhwc=0 and =1; TF32 off for float32) and speedups are over the *fastest*
original layout.  A layer that appears several times is timed once.  'BW' is
the fraction of the memory-bandwidth bound reached: (input + output bytes) / time, over
the copy bandwidth measured in the same run with an elementwise op.  Results are rewritten
after every layer; --max-seconds starts no new layer after that many seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from _common import add_runtime_flags, layout_configs, md_table, parse_args, runtime_config, write_results  # noqa: E402

from onnx_diagwise import InputOptions, benchmark, rewrite  # noqa: E402
from onnx_diagwise.model_io import BUILT_IR_VERSION  # noqa: E402

GROUP_SIZES = [2, 4, 8, 16, 32, 64, "full"]
DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def layer_model(layer: zoo.Layer, batch: int, dtype: str) -> onnx.ModelProto:
    elem = DTYPES[dtype]
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    channels, kernel = layer.channels, [layer.kernel] * layer.rank
    rng = np.random.default_rng(channels)
    w = (rng.standard_normal((channels * layer.multiplier, 1, *kernel)) * 0.3).astype(np_dtype)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=channels, kernel_shape=kernel,
                            strides=[layer.stride] * layer.rank, pads=[layer.kernel // 2] * (2 * layer.rank))
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", elem, [batch, channels, *layer.size])],
        [helper.make_tensor_value_info("y", elem, [batch, channels * layer.multiplier, *layer.out_size])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=BUILT_IR_VERSION)


def copy_model(elements: int, dtype: str) -> onnx.ModelProto:
    """y = x + 0: reads and writes every element once, to measure memory bandwidth."""
    elem = DTYPES[dtype]
    zero = numpy_helper.from_array(np.zeros((), helper.tensor_dtype_to_np_dtype(elem)), "zero")
    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], "copy",
                              [helper.make_tensor_value_info("x", elem, [elements])],
                              [helper.make_tensor_value_info("y", elem, [elements])], [zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=BUILT_IR_VERSION)


def group_sizes_for(channels: int) -> list[tuple[str, int]]:
    sizes = [(str(g), g) for g in GROUP_SIZES if g != "full" and g < channels and channels % g == 0]
    return sizes + [("full", channels)]


def run_layer(layer: zoo.Layer, batch: int, dtype: str, config, args, copy_bw: float, max_gflop) -> dict:
    model = layer_model(layer, batch, dtype)
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(DTYPES[dtype])).itemsize
    out_elements = int(np.prod(layer.out_size))
    base_flop = 2 * batch * layer.channels * layer.multiplier * layer.kernel ** layer.rank * out_elements
    variants, skipped = [("original", model)], []
    for label, g in group_sizes_for(layer.channels):
        if max_gflop is not None and base_flop * g / 1e9 > max_gflop:
            skipped.append(label)
        else:
            variants.append((label, rewrite(model, node_group_sizes={"dw": g}).model))
    layouts = layout_configs(config, dtype)
    names = [f"{label}/{layout}" if layout else label for layout in layouts for label, _ in variants]
    report = benchmark([m for _ in layouts for _, m in variants], warmup=args.warmup, iterations=args.iterations,
                       names=names, configs=[c for c in layouts.values() for _ in variants],
                       inputs=InputOptions(batch=batch))
    ms = {m.name: m.median_ms for m in report.models}

    def fastest(label: str) -> str:
        return min((n for n in names if n.split("/")[0] == label), key=ms.get)

    original = fastest("original")
    speedups = {label: ms[original] / ms[fastest(label)] for label, _ in variants[1:]}
    best = max(speedups, key=speedups.get) if speedups else "original"
    if speedups.get(best, 0.0) <= 1.0:
        best = "original"  # nothing beat the depthwise kernel
    act_bytes = batch * layer.channels * (int(np.prod(layer.size)) + layer.multiplier * out_elements) * itemsize
    bound_ms = act_bytes / copy_bw * 1000
    return {
        "layer": dataclasses.asdict(layer), "batch": batch, "dtype": dtype, "ms": ms,
        "original": original, "original_ms": ms[original],
        "speedups": {str(g): speedups.get(str(g)) for g in GROUP_SIZES},
        "fastest": {label: fastest(label) for label, _ in variants},
        "skipped_over_flop_budget": skipped, "best": best, "best_speedup": speedups.get(best, 1.0),
        "activation_bytes": act_bytes, "bandwidth_bound_ms": bound_ms,
        "bw_fraction_original": bound_ms / ms[original], "bw_fraction_best": bound_ms / ms[fastest(best)],
        "environment": report.environment,
    }


def markdown(rows: list[dict], bandwidth: dict[str, float], skipped: list[str]) -> list[str]:
    lines = []
    for key in dict.fromkeys((r["table"], r["batch"], r["dtype"]) for r in rows):
        table, batch, dtype = key
        group = [r for r in rows if (r["table"], r["batch"], r["dtype"]) == key]
        lines += [f"## {table}, batch {batch}, {dtype}", "",
                  f"Copy bandwidth {bandwidth[dtype] / 1e9:.1f} GB/s. Cells: speedup over the fastest original "
                  "(>1 = rewrite faster); '-' = G does not divide C or skipped.", ""]
        lines += md_table(
            ["#", "C", "size", "s", "k", "orig ms", *[f"G={g}" for g in GROUP_SIZES], "best", "BW orig", "BW best"],
            [[str(r["index"]) + (f" (also {', '.join(r['same_as'])})" if r["same_as"] else ""),
              r["layer"]["channels"], "x".join(map(str, r["layer"]["size"])), r["layer"]["stride"],
              r["layer"]["kernel"], f"{r['original_ms']:.3f}" + (f" {r['original'].split('/')[1]}"
                                                                  if "/" in r["original"] else ""),
              *[f"{r['speedups'][str(g)]:.2f}" if r["speedups"].get(str(g)) is not None else "-"
                for g in GROUP_SIZES],
              r["best"], f"{r['bw_fraction_original']:.0%}", f"{r['bw_fraction_best']:.0%}"] for r in group])
    if skipped:
        lines += [f"Not run (time budget): {', '.join(skipped)}", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(parser)
    parser.add_argument("--network", nargs="+", default=None, choices=[*zoo.NETWORKS, *zoo.EXTRA_LAYERS],
                        help="zoo networks and/or extra layer sets, in the order to run (default: all)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--max-gflop", type=float, default=None,
                        help="skip variants above this many GFLOP per run (default: 2 on CPU, no limit elsewhere)")
    parser.add_argument("--max-seconds", type=float, default=None, help="start no new layer after this")
    args = parse_args(parser, argv, "layers.py")
    config = runtime_config(args)
    max_gflop = args.max_gflop if args.max_gflop is not None else (None if config.is_gpu else 2.0)
    table = zoo.layer_table(args.network)

    start, rows, skipped, bandwidth = time.perf_counter(), [], [], {}
    for dtype in args.dtype:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(DTYPES[dtype])).itemsize
        elements = (64 if config.is_gpu else 16) * 2**20
        copy = benchmark([copy_model(elements, dtype)], config, warmup=args.warmup, iterations=args.iterations)
        bandwidth[dtype] = 2 * elements * itemsize / (copy.models[0].median_ms / 1000)
        print(f"{dtype}: copy bandwidth {bandwidth[dtype] / 1e9:.1f} GB/s")
        for batch in args.batch:
            measured: dict[zoo.Layer, dict] = {}
            for name, index, layer in table:
                if layer in measured:  # networks repeat layers (MobileNet V1 has five alike): time each once
                    measured[layer]["same_as"].append(f"{name} #{index}")
                    continue
                if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                    skipped.append(f"{name} #{index} b{batch} {dtype}")
                    continue
                row = {"table": name, "index": index, "same_as": [],
                       **run_layer(layer, batch, dtype, config, args, bandwidth[dtype], max_gflop)}
                measured[layer] = row
                rows.append(row)
                print(f"{name} #{index} C={layer.channels} {'x'.join(map(str, layer.size))} s{layer.stride} "
                      f"k{layer.kernel} b{batch} {dtype}: orig {row['original_ms']:.3f} ms, best {row['best']} "
                      f"{row['best_speedup']:.2f}x", flush=True)
                save(rows, bandwidth, skipped, args)
    path = save(rows, bandwidth, skipped, args)
    print(f"results: {path}.json / .md")


def save(rows: list[dict], bandwidth: dict[str, float], skipped: list[str], args) -> Path:
    environment = rows[-1]["environment"] if rows else None
    data = {"environment": environment, "copy_bandwidth": bandwidth, "rows": rows, "not_run": skipped}
    return write_results("layers", args, data, markdown(rows, bandwidth, skipped))


if __name__ == "__main__":
    main()
