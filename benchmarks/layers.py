"""Per-layer benchmark: every depthwise layer of the zoo networks (benchmarks/zoo.py) and the
large-kernel layers known to be slow on GPUs (RepLKNet-31B's 31x31@56, 29x29@28, 27x27@14,
13x13@7; a 1-D conformer layer, k=31), against what a user could run instead.

    python benchmarks/layers.py                          # CPU: batch 1, float32, every layer
    python benchmarks/layers.py --provider cuda --batch 64 --precision float16 float32-strict float32-default

Each layer is a one-node model (input fixed at the layer's shape), measured as benchmarks/networks.py
measures a network, all in one interleaved benchmark: onnxruntime's original under every
configuration a user could pick (on CUDA prefer_nhwc {0,1} x cudnn_conv_algo_search {EXHAUSTIVE,
HEURISTIC}, x cudnn_conv1d_pad_to_nc1d {0,1} for 1-D), block-diagonal G in {2, 4, 8, 16, 32, 64, full}
and every lowering `auto` would measure for the layer (toeplitz, polyphase:B[:2d][:fold], conv2d;
--no-forms leaves them out) under the fastest original's configuration and its other layout, and
PyTorch's own conv of the same weight (groups = C: its depthwise kernel) in NCHW and channels_last,
cudnn.benchmark on.  Every time
is also shown as "x of bound", bound = max(activation bytes / copy bandwidth measured in this run,
depthwise FLOPs / the CUDA-core peak of the dtype).  The outputs of all timed sessions are compared
with the fastest original's.  A layer that appears several times is timed once.  Results are
rewritten after every layer; --max-seconds starts no new layer after that many seconds.
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
import baselines  # noqa: E402
import networks  # noqa: E402
import zoo  # noqa: E402
from _common import RESULTS, md_table, write_result_files  # noqa: E402

from onnx_diagwise import InputOptions, lowerings  # noqa: E402
from onnx_diagwise.detect import detect  # noqa: E402
from onnx_diagwise.dims import make_inputs  # noqa: E402
from onnx_diagwise.model_io import BUILT_IR_VERSION  # noqa: E402
from onnx_diagwise.plan import lowered_choice  # noqa: E402
from onnx_diagwise.shapes import infer_value_types  # noqa: E402

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


def forms_for(model: onnx.ModelProto) -> list[tuple[str, float]]:
    """(policy, arithmetic over the depthwise layer's) of every lowering `auto` would measure for
    the one-layer MODEL: toeplitz, polyphase:B[:2d][:fold], conv2d, as lowerings.candidates offers them."""
    [conv] = detect(model, infer_value_types(model)).candidates
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    forms = []
    for name, params in lowerings.candidates(conv, shape, opset=lowerings.opset_of(model)):
        forms.append((lowered_choice(name, params).spec, lowerings.cost(conv, name, params, shape).flops_factor))
    return forms


def run_layer(layer: zoo.Layer, batch: int, precision: str, args, device, max_gflop) -> dict:
    dtype = baselines.precision_dtype(precision)
    model = layer_model(layer, batch, dtype)
    base_flop = 2 * batch * layer.channels * layer.multiplier * layer.kernel ** layer.rank * int(np.prod(layer.out_size))
    # each G divides C, so the policy gives exactly G
    offered = [(label, float(g)) for label, g in group_sizes_for(layer.channels)]
    if not args.no_forms:
        offered += forms_for(model)
    policies, skipped = [], []
    for label, factor in offered:
        if max_gflop is not None and base_flop * factor / 1e9 > max_gflop:
            skipped.append(label)
        else:
            policies.append(label)
    feeds = make_inputs(model, InputOptions(batch=batch))
    factory = networks.onnx_torch_factory(model, feeds, args.torch_device, "torch conv, groups = C (onnx_torch.py)")
    row = networks.measure("layer", model, factory, feeds, batch, precision, policies, args, device)
    row.update(layer=dataclasses.asdict(layer), skipped_over_flop_budget=skipped)
    return row


def markdown(result: dict) -> list[str]:
    lines = networks.legend(result)
    for key in dict.fromkeys((r["batch"], r["precision"]) for r in result["rows"]):
        batch, precision = key
        group = [r for r in result["rows"] if (r["batch"], r["precision"]) == key]
        lines += [f"## batch {batch}, {baselines.PRECISION_LABELS[precision]}", ""]
        table = []
        for r in group:
            v = r["variants"]
            original = v[r["best_original"]]
            torch_best = v.get(r["best_pytorch"]) if r["best_pytorch"] else None
            rewrites = {p: v[name] for p, name in r["best_by_policy"].items()}
            best = min(rewrites, key=lambda p: rewrites[p]["median_ms"]) if rewrites else None
            size = "x".join(map(str, r["layer"]["size"]))

            def speedups(lowered: bool) -> str:
                return " ".join(f"{p}:{e['vs_best_original']:.2f}" for p, e in rewrites.items()
                                if networks.is_lowering(p) == lowered) or "-"
            table.append([
                f"{r['table']} #{r['index']}" + (f" (also {', '.join(r['same_as'])})" if r["same_as"] else ""),
                r["layer"]["channels"], size, r["layer"]["stride"], r["layer"]["kernel"],
                f"{networks._ms(original)} {original.get('ort_config', '')}",
                f"{networks._ms(torch_best)} {torch_best.get('layout', '')}" if torch_best else (r["pytorch_note"] or "-"),
                f"{networks.title(best)}: {networks._ms(rewrites[best])}; {networks.verdict(rewrites[best])}"
                if best else "-",
                speedups(False), speedups(True),
                f"{r['bound']['bound_ms']:.3f} ({r['bound']['limited_by']})",
                f"{max(e['max_rel_diff'] or 0 for e in v.values()):.1e}"
                + ("" if all(e["same_result"] for e in v.values()) else " DIFFERS")])
        lines += md_table(["layer", "C", "size", "s", "k", "ORT original, best config", "PyTorch, best layout",
                           "best rewrite", "every G vs ORT", "every lowering vs ORT", "bound ms", "max diff"], table)
    if result["not_run"]:
        lines += [f"Not run (time budget): {', '.join(result['not_run'])}", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    networks.add_common_flags(parser)
    parser.add_argument("--network", nargs="+", default=None, choices=[*zoo.NETWORKS, *zoo.EXTRA_LAYERS],
                        help="zoo networks and/or extra layer sets, in the order to run (default: all)")
    parser.add_argument("--no-forms", action="store_true",
                        help="block-diagonal G only: leave out the lowerings (toeplitz, polyphase, conv2d)")
    parser.add_argument("--max-gflop", type=float, default=None,
                        help="skip variants above this many GFLOP per run (default: 2 on CPU, no limit elsewhere)")
    args = networks.parse(argv, parser, "layers.py")
    max_gflop = args.max_gflop if args.max_gflop is not None else (None if args.provider == "cuda" else 2.0)
    table = zoo.layer_table(args.network)
    device = networks.device_for(args)
    base = args.out or RESULTS / f"layers-{args.provider}"
    result = {"title": "Depthwise layers: onnxruntime original (best configuration) vs block-diagonal and "
                       "lowerings vs PyTorch",
              "command": args.command, "environment": networks.environment(args), "device": device.to_dict(),
              "precision_labels": {p: baselines.PRECISION_LABELS[p] for p in args.precision}, "rows": [],
              "not_run": []}
    print(f"device {device.name}: copy {device.copy_gbps:.1f} GB/s, peaks {device.peak_tflops}", flush=True)
    start = time.perf_counter()
    for batch in args.batch:  # breadth first: every layer at the first batch and precision before the next
        for precision in args.precision:
            measured: dict[zoo.Layer, dict] = {}
            for name, index, layer in table:
                if layer in measured:  # networks repeat layers (MobileNet V1 has five alike): time each once
                    measured[layer]["same_as"].append(f"{name} #{index}")
                    continue
                if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                    result["not_run"].append(f"{name} #{index} b{batch} {precision}")
                    continue
                row = {"table": name, "index": index, "same_as": [],
                       **run_layer(layer, batch, precision, args, device, max_gflop)}
                measured[layer] = row
                result["rows"].append(row)
                result["memory_kind"] = row["memory_kind"]
                original = row["variants"][row["best_original"]]
                print(f"{name} #{index} C={layer.channels} {'x'.join(map(str, layer.size))} s{layer.stride} "
                      f"k{layer.kernel} b{batch} {precision}: orig {original['median_ms']:.3f} ms "
                      f"({original.get('ort_config')}); " + "; ".join(
                          f"{networks.title(p)} {networks.verdict(row['variants'][n])}"
                          for p, n in row["best_by_policy"].items()
                          if n == min(row["best_by_policy"].values(), key=lambda k: row["variants"][k]["median_ms"])),
                      flush=True)
                save(result, base)
    save(result, base)
    print(f"results: {base}.json / .md")
    return 0


def save(result: dict, base: Path) -> Path:
    return write_result_files(result, base, markdown)


if __name__ == "__main__":
    sys.exit(main())
