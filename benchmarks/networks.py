"""Whole networks against what a user could run instead, in one process: onnxruntime's original in
every configuration a user could pick, the rewrite (`auto` and fixed G), PyTorch eager with the same
weights, and the bound.

    python benchmarks/networks.py --family conformer mixnet_s --provider cuda --batch 1 64 \\
        --precision float16 float32-strict float32-default --rounds 10 --seconds 5
    python benchmarks/networks.py --zoo mobilenet_v1 replknet_31b --provider cuda --batch 64
    python benchmarks/networks.py --models DIR --provider cuda --batch 64      # a user's own .onnx files
    python benchmarks/networks.py --merge run1.json run2.json --out headline  # two processes side by side

Per (network, batch, precision), all of it timed in one interleaved benchmark (every variant once per
round, in a fresh random order; at least --rounds rounds, more until --seconds have passed; each call
synchronized and timed with perf_counter, inputs and outputs on the device):

* onnxruntime's original under every configuration of baselines.ort_grid, each its own session
  (on CUDA: prefer_nhwc {0,1} x cudnn_conv_algo_search {EXHAUSTIVE, HEURISTIC}, x
  cudnn_conv1d_pad_to_nc1d {0,1} when the model has 1-D convs);
* each rewrite policy (`auto`, tuned on this device under the fastest original configuration of a
  first short round, and fixed G), under that configuration and its other layout;
* PyTorch eager on the same device with the same weights: the family's own module (benchmarks/
  families.py), or the ONNX graph run op by op in PyTorch (benchmarks/onnx_torch.py) for the zoo
  networks and a user's files; NCHW and channels_last; cudnn.benchmark on;
* the bound of the network's depthwise convs: max(their activation bytes / copy bandwidth, their
  FLOPs / the CUDA-core peak of the dtype); every time is also shown as "x of bound".

Precisions: float16; float32-strict (TF32 off everywhere); float32-default (TF32 as onnxruntime and
PyTorch ship it).  The outputs of every timed session and module are compared with the fastest
original's.  Every sample, auto's per-layer decisions (form, G, times) and each variant's device
memory (weights + workspace, measured as the memory in use before and after it was set up and run)
are saved.  Without PyTorch the PyTorch columns say why they are empty; on CPU, times mean
something only relative to each other (the bound there uses a stated peak).
"""

from __future__ import annotations

import argparse
import re
import gc
import json
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import baselines  # noqa: E402
import zoo  # noqa: E402
from _common import md_table, write_result_files  # noqa: E402

from onnx_diagwise import InputOptions, RuntimeConfig, TuneOptions, rewrite  # noqa: E402
from onnx_diagwise.dims import make_inputs, with_input_shapes  # noqa: E402
from onnx_diagwise.errors import DiagwiseError, first_line  # noqa: E402
from onnx_diagwise.plan import LOWERING_NAMES, lowered_choice, parse_policy  # noqa: E402

WORK = Path(__file__).resolve().parent / ".zoo"  # generated models, git-ignored
DEFAULT_POLICIES = ["auto"]


# ---------------------------------------------------------------- what a network is made of


def skeleton(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """MODEL without the bytes of its large weights, inputs fixed to SHAPES, shapes inferred."""
    graph = model.graph
    small, typed = [], []
    for t in graph.initializer:
        if np.prod(t.dims) <= 4096 and not t.external_data:
            small.append(t)
        else:
            typed.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inits = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in inits:
            continue
        elem = value.type.tensor_type.elem_type
        inputs.append(onnx.helper.make_tensor_value_info(value.name, elem, shapes.get(value.name)))
    g = onnx.helper.make_graph(list(graph.node), graph.name, inputs + typed, list(graph.output), small)
    m = onnx.helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return onnx.shape_inference.infer_shapes(m)


def depthwise_work(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[dict]:
    """Every depthwise Conv (top-level graph) with its input / output shapes at SHAPES, bytes and FLOPs."""
    inferred = skeleton(model, shapes)
    dims = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = value.type.tensor_type
        dims[value.name] = ([d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim], t.elem_type)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = weights[node.input[1]]
        shape_in, elem = dims.get(node.input[0], (None, None))
        shape_out, _ = dims.get(node.output[0], (None, None))
        if group <= 1 or w[1] != 1 or not shape_in or shape_in[1] != group or not shape_out or None in shape_in \
                or None in shape_out:
            continue
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
        rows.append({"node": node.name, "channels": group, "kernel": w[2:], "input": shape_in, "output": shape_out,
                     "flops": 2 * int(np.prod(shape_out)) * int(np.prod(w[2:])),
                     "activation_bytes": (int(np.prod(shape_in)) + int(np.prod(shape_out))) * itemsize})
    return rows


def has_1d_conv(model: onnx.ModelProto) -> bool:
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    return any(n.op_type == "Conv" and len(n.input) > 1 and weights.get(n.input[1]) == 3 for n in model.graph.node)


def model_dtype(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in inits and value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            return "float16"
    return "float32"


# ---------------------------------------------------------------- one measurement


def is_lowering(policy: str) -> bool:
    return policy.split(":")[0] in LOWERING_NAMES


def title(policy: str) -> str:
    """How a policy is shown: G=8, G=full, G=auto; a lowering as it is spelled (toeplitz, polyphase:16:2d)."""
    return policy if is_lowering(policy) else f"G={policy}"


def _decision(node) -> dict:
    """What rewrite decided for one node (the fields the report has), and the new form in words:
    G=8, toeplitz, polyphase B=16 (None where the node was left)."""
    fields = ("name", "action", "form", "group_size", "lowering", "lowering_params", "reason", "channels", "kernel")
    out = {f: getattr(node, f, None) for f in fields}
    out["reason"] = str(out["reason"]) if out["reason"] is not None else None
    out["node"], out["G"] = out.pop("name"), out.pop("group_size")
    out["choice"] = (lowered_choice(out["lowering"], out["lowering_params"] or {}).label
                     if out["lowering"] else f"G={out['G']}" if out["G"] else None)
    return out


def _tuning(result) -> dict | None:
    tuning = getattr(result, "tuning", None)
    if tuning is None:
        return None
    try:
        return tuning.to_dict()
    except Exception as exc:  # noqa: BLE001 - keep the measurement when the report's shape changes
        return {"summary": getattr(tuning, "summary", ""), "error": f"{type(exc).__name__}: {exc}"}


def _save_plan(result, args, label: str) -> None:
    """auto's decisions as a plan file (rewrite --plan applies them anywhere), when --plans-dir is given."""
    plan = getattr(result.tuning, "plan", None)
    if args.plans_dir is None or plan is None:
        return
    args.plans_dir.mkdir(parents=True, exist_ok=True)
    plan.save(args.plans_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.plan.json")


def measure(name: str, model: onnx.ModelProto, torch_factory, feeds: dict[str, np.ndarray], batch: int,
            precision: str, policies: list[str], args, device: baselines.Device, info: dict | None = None) -> dict:
    """Everything above, for one network at one batch and precision: a JSON-ready row."""
    config = RuntimeConfig(args.provider, dict(kv.split("=", 1) for kv in args.provider_option), args.threads)
    memory = baselines.MemoryProbe(config.is_gpu)
    dtype = baselines.precision_dtype(precision)
    grid = baselines.ort_grid(config, precision, one_d=has_1d_conv(model))
    variants, notes = [], []
    def add_ort(name: str, candidate, cfg, **info) -> None:
        try:
            variants.append(baselines.ort_variant(name, candidate, cfg, feeds, memory, warmup=args.warmup, **info))
        except Exception as exc:  # noqa: BLE001 - a session or a warm-up run onnxruntime refuses (cuDNN,
            # memory): say so, measure the rest
            notes.append(f"{name}: not run: {first_line(exc)}")

    for label, cfg in grid.items():
        add_ort(f"onnxruntime original {label}", model, cfg, ort_config=label, policy="original")
    if not variants:
        raise DiagwiseError("no onnxruntime configuration ran the original: " + "; ".join(notes))
    first = baselines.interleave(variants, rounds=2)
    best_label = min((v.info["ort_config"] for v in variants),
                     key=lambda k: statistics.median(first[f"onnxruntime original {k}"]))
    tuned_on = grid[best_label]
    decisions = {}
    for policy in policies:
        started = time.perf_counter()
        try:
            if policy == "auto":
                options = TuneOptions(tuned_on, InputOptions(batch=batch, data=feeds), time_budget=args.tune_budget,
                                      cache_dir=args.cache_dir)
                result = rewrite(model, group_size="auto", tune_options=options)
                _save_plan(result, args, f"{name}-b{batch}-{precision}")
            else:
                result = rewrite(model, group_size=policy)
        except DiagwiseError as exc:
            notes.append(f"{title(policy)}: not rewritten: {exc}")
            continue
        decisions[policy] = {
            "seconds": round(time.perf_counter() - started, 2),
            "nodes": [_decision(d) for d in result.report.nodes], "tuning": _tuning(result)}
        layouts = {best_label: tuned_on}
        if baselines.is_cuda(config):  # the same search under the other layout
            other = best_label.replace("nchw", "#").replace("nhwc", "nchw").replace("#", "nhwc")
            layouts[other] = grid[other]
        for label, cfg in layouts.items():
            add_ort(f"onnxruntime {title(policy)} {label}", result.model, cfg, ort_config=label, policy=policy)
        del result
    torch_note = ""
    if getattr(args, "no_torch", False):
        torch_note = "PyTorch not run (--no-torch)"
    else:
        torch_note = baselines.torch_problem()
    if not torch_note:
        try:
            module, torch_inputs, source = torch_factory(dtype)
            four_d = all(x.dim() == 4 for x in torch_inputs)
            for layout in (["nchw", "channels_last"] if four_d else ["nchw"]):
                variants.append(baselines.torch_variant(f"pytorch {layout}", module, torch_inputs, args.torch_device,
                                                        precision, layout, memory, warmup=args.warmup,
                                                        policy="pytorch", source=source))
        except Exception as exc:  # noqa: BLE001 - an op the interpreter lacks, a module that fails: say why
            torch_note = f"PyTorch not run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    samples = baselines.interleave(variants, rounds=args.rounds, seconds=args.seconds, seed=batch)
    medians = {n: statistics.median(s) for n, s in samples.items()}
    originals = [v.name for v in variants if v.info.get("policy") == "original"]
    best_original = min(originals, key=medians.get)
    torch_names = [v.name for v in variants if v.kind == "pytorch"]
    best_torch = min(torch_names, key=medians.get) if torch_names else None
    diffs = baselines.compare_outputs(variants, best_original)
    work = depthwise_work(model, {k: list(v.shape) for k, v in feeds.items()})
    bound = device.bound(sum(w["activation_bytes"] for w in work), sum(w["flops"] for w in work), dtype)
    tolerance = baselines.TOLERANCE[precision]
    results = {}
    for v in variants:
        stats = baselines.summarize(samples[v.name])
        entry = {"kind": v.kind, **{k: val for k, val in v.info.items() if not k.startswith("_")}, **stats,
                 "x_of_bound": baselines.times_over_bound(stats["median_ms"], bound) if work else None,
                 "max_rel_diff": diffs[v.name],
                 "same_result": diffs[v.name] is not None and diffs[v.name] <= tolerance,
                 "vs_best_original": medians[best_original] / stats["median_ms"],
                 "vs_best_original_ci95": baselines.ratio_interval(samples[best_original], samples[v.name]),
                 "vs_pytorch": medians[best_torch] / stats["median_ms"] if best_torch else None,
                 "vs_pytorch_ci95": baselines.ratio_interval(samples[best_torch], samples[v.name])
                 if best_torch else None}
        results[v.name] = entry
    best_by_policy = {}
    for policy in policies:
        names = [n for n, r in results.items() if r.get("policy") == policy]
        if names:
            best_by_policy[policy] = min(names, key=medians.get)
    row = {"network": name, "batch": batch, "precision": precision, "dtype": dtype, **(info or {}),
           "rounds": len(samples[best_original]), "best_original": best_original, "best_pytorch": best_torch,
           "pytorch_note": torch_note or None, "best_by_policy": best_by_policy, "bound": bound,
           "depthwise_layers": len(work), "variants": results, "samples_ms": samples, "decisions": decisions,
           "notes": notes, "memory_kind": memory.kind, "tolerance": tolerance}
    for v in variants:
        v.info.pop("_keep", None)
    del variants
    gc.collect()
    _empty_cuda_cache()
    return row


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------- the networks


def _torch_device_tensor(array: np.ndarray, device: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def onnx_torch_factory(model: onnx.ModelProto, feeds: dict[str, np.ndarray], device: str, source: str):
    """A factory of (module, inputs, source) running MODEL's graph in PyTorch (onnx_torch.py)."""

    def factory(dtype: str):
        import onnx_torch

        module = onnx_torch.OnnxModule(model).to(device).eval()
        inputs = [_torch_device_tensor(feeds[name], device) for name in module.input_names]
        return module, inputs, source
    return factory


def family_items(args) -> list[tuple]:
    """(name, dtype -> (model, torch factory, feeds, info)) for each --family."""
    import families

    items, built = [], {}  # (name, dtype) -> (module, source, model): built and exported once per process
    for name in args.family:
        def load(dtype: str, batch: int, name=name):
            import torch

            torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
            device = args.torch_device or "cpu"
            if (name, dtype) not in built:
                if name == "replknet_31b":  # ONNX built in code; PyTorch runs that graph (onnx_torch.py)
                    module, source = None, "benchmarks/zoo.py"
                    path = zoo.zoo_path(name, dtype, args.work_dir / "zoo")
                else:
                    module, source = families.build(name, args.source, args.tiny)
                    path = families.onnx_model(name, module, dtype, args.work_dir / ("tiny" if args.tiny else "full"),
                                               args.tiny, device)
                built[(name, dtype)] = (module, source, onnx.load(str(path)))
            module, source, model = built[(name, dtype)]
            x = families.example_input(name, batch, args.tiny, torch_dtype, "cpu")
            feeds = {model.graph.input[0].name: x.numpy()}
            if name == "replknet_31b":
                factory = onnx_torch_factory(model, feeds, device, source)
            else:
                def factory(_dtype, module=module, x=x, source=source):
                    return module.to(device=device, dtype=torch_dtype).eval(), [x.to(device)], source
            params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            return model, factory, feeds, {"source": source, "parameters": params, "family": name,
                                           "note": families.FAMILIES[name].note}
        items.append((name, load))
    return items


def zoo_items(args) -> list[tuple]:
    items = []
    for name in args.zoo:
        def load(dtype: str, batch: int, name=name):
            model = onnx.load(str(zoo.zoo_path(name, dtype, args.work_dir / "zoo")))
            feeds = make_inputs(model, InputOptions(batch=batch))
            return model, onnx_torch_factory(model, feeds, args.torch_device, "onnx_torch.py (zoo.py graph)"), feeds, \
                {"source": "benchmarks/zoo.py", "parameters": zoo.parameter_count(model)}
        items.append((name, load))
    return items


def file_items(args) -> list[tuple]:
    items = []
    paths = sorted(Path(args.models).glob("*.onnx"))
    if not paths:
        raise SystemExit(f"error: --models {args.models}: no .onnx files there")
    for path in paths:
        def load(dtype: str, batch: int, path=path):
            model = onnx.load(str(path))
            inputs, _ = with_input_shapes(model, InputOptions(batch=batch), RuntimeConfig("cpu"))
            feeds = make_inputs(model, inputs)
            return model, onnx_torch_factory(model, feeds, args.torch_device, "onnx_torch.py (the file's graph)"), \
                feeds, {"source": str(path), "parameters": sum(int(np.prod(t.dims)) for t in model.graph.initializer)}
        items.append((path.stem, load, path))
    return items


# ---------------------------------------------------------------- tables


def _ms(entry: dict | None) -> str:
    if not entry:
        return "-"
    bound = f" ({entry['x_of_bound']:.1f}x bound)" if entry.get("x_of_bound") else ""
    return f"{entry['median_ms']:.3f}{bound}"


def _mib(entry: dict | None) -> str:
    return "-" if not entry or entry.get("memory_bytes") is None else f"{entry['memory_bytes'] / 2**20:.0f}"


def verdict(entry: dict) -> str:
    """vs the best original and vs PyTorch, with intervals; says so when still slower than PyTorch."""
    text = f"{entry['vs_best_original']:.2f}x vs ORT [{entry['vs_best_original_ci95'][0]:.2f}-" \
           f"{entry['vs_best_original_ci95'][1]:.2f}]"
    if entry.get("vs_pytorch") is not None:
        text += f"; {entry['vs_pytorch']:.2f}x vs PyTorch [{entry['vs_pytorch_ci95'][0]:.2f}-" \
                f"{entry['vs_pytorch_ci95'][1]:.2f}]"
        if entry["vs_pytorch"] < 1:
            text += " (slower than PyTorch)"
    return text


def legend(result: dict) -> list[str]:
    """The device, the bound's inputs and how to read the tables."""
    device = result["device"]
    lines = [f"Device: {device['name']}; copy bandwidth {device['copy_gbps']:.1f} GB/s ({device['copy_source']}); "
             f"peaks {', '.join(f'{k} {v:g} TFLOP/s' for k, v in device['peak_tflops'].items())} "
             f"({device['peak_source']}).", ""]
    if not device["gpu"]:
        lines += ["**On a CPU these absolute times mean something only relative to each other**; the bound uses "
                  "a stated peak. Run on a GPU for figures that count.", ""]
    lines += ["Times: median ms of interleaved rounds (each call synchronized), with 'x bound' = time / bound. "
              "Bound = max(activation bytes of the depthwise convs / copy bandwidth, their FLOPs / CUDA-core "
              "peak): a floor for those layers alone. Speedups: the best original's median (or PyTorch's best) "
              "over the variant's, with 95% bootstrap intervals. Memory: MiB held after set-up and runs "
              f"({result.get('memory_kind') or 'n/a'}).", ""]
    return lines + [f"- {p}: {label}" for p, label in result.get("precision_labels", {}).items()] + [""]


def markdown(result: dict) -> list[str]:
    lines = legend(result)
    policies = result["policies"]
    rows = []
    for r in result["rows"]:
        v = r["variants"]
        original, torch_best = v[r["best_original"]], v.get(r["best_pytorch"]) if r["best_pytorch"] else None
        cells = []
        for policy in policies:
            name = r["best_by_policy"].get(policy)
            cells.append(f"{_ms(v[name])}: {verdict(v[name])}" if name else "not rewritten")
        ok = all(e["same_result"] for e in v.values())
        worst = max((e["max_rel_diff"] for e in v.values() if e["max_rel_diff"] is not None), default=0.0)
        rows.append([r["network"], r["batch"], r["precision"],
                     f"{_ms(original)} {original.get('ort_config', '')}",
                     f"{_ms(torch_best)} {torch_best.get('layout', '')}" if torch_best else (r["pytorch_note"] or "-"),
                     *cells, f"{r['bound']['bound_ms']:.3f} ({r['bound']['limited_by']})",
                     " / ".join(_mib(v.get(n)) for n in [r["best_original"], *r["best_by_policy"].values(),
                                                         r["best_pytorch"]] if n),
                     f"{worst:.1e}" + ("" if ok else " DIFFERS"), r["rounds"]])
    lines += md_table(["network", "batch", "precision", "ORT original, best config", "PyTorch eager, best layout",
                       *[title(p) for p in policies], "bound ms", "memory MiB (orig / policies / torch)",
                       "max diff", "rounds"], rows)
    for r in result["rows"]:
        if "auto" in r["decisions"]:
            d = r["decisions"]["auto"]
            chosen = Counter(n["choice"] for n in d["nodes"] if n["action"] in ("rewritten", "rewrite"))
            forms = ", ".join(f"{choice} x{count}" for choice, count in sorted(chosen.items()))
            lines.append(f"- auto, {r['network']} b{r['batch']} {r['precision']}: {sum(chosen.values())} of "
                         f"{len(d['nodes'])} grouped convs rewritten{f' ({forms})' if forms else ''}; tuned in "
                         f"{d['seconds']:.0f} s"
                         + (f" ({d['tuning']['summary']})" if d.get("tuning") and d["tuning"].get("summary") else ""))
        for note in r["notes"] + ([r["pytorch_note"]] if r["pytorch_note"] else []):
            lines.append(f"- {r['network']} b{r['batch']} {r['precision']}: {note}")
    if result.get("not_run"):
        lines += ["", f"Not run (time budget): {', '.join(result['not_run'])}"]
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    if result.get("failures"):
        lines += ["", "Failed: " + "; ".join(result["failures"])]
    return lines + [""]


def environment(args) -> dict:
    import platform

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   tf32_cudnn_default=torch.backends.cudnn.allow_tf32,
                   tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32)
    except ImportError:
        env["torch"] = None
    return env


def write(result: dict, base: Path) -> Path:
    return write_result_files(result, base, markdown)


# ---------------------------------------------------------------- two processes side by side


def merge(paths: list[Path], base: Path) -> None:
    """The headline of each network in each run: the same row from separate processes, side by side."""
    runs = [json.loads(p.read_text()) for p in paths]
    keys = []
    for run in runs:
        keys += [(r["network"], r["batch"], r["precision"]) for r in run["rows"]]
    keys = list(dict.fromkeys(keys))
    policies = list(dict.fromkeys(p for run in runs for p in run["policies"]))
    rows = []
    for key in keys:
        cells = []
        for run in runs:
            row = next((r for r in run["rows"] if (r["network"], r["batch"], r["precision"]) == key), None)
            if row is None:
                cells += ["not run"] * len(policies)
                continue
            for policy in policies:
                name = row["best_by_policy"].get(policy)
                cells.append(verdict(row["variants"][name]) + f" ({row['rounds']} rounds)" if name else "-")
        rows.append([*key, *cells])
    columns = ["network", "batch", "precision"] + [f"run {i + 1}: {title(p)}" for i in range(len(runs)) for p in policies]
    text = ["# Headlines from separate processes", "", "Each run is its own process (its own sessions, cuDNN "
            "algorithm choices and tuning); the same network's speedups side by side.", "",
            *[f"- run {i + 1}: `{run['command']}` ({p})" for i, (run, p) in enumerate(zip(runs, paths))], "",
            *md_table(columns, rows)]
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text("\n".join(text) + "\n")
    base.with_suffix(".json").write_text(json.dumps({"runs": [str(p) for p in paths], "columns": columns,
                                                     "rows": rows}, indent=1) + "\n")


# ---------------------------------------------------------------- command line


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="cpu", help="cpu or cuda")
    parser.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", nargs="+", default=["float32-strict"], choices=list(baselines.PRECISIONS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds at least (default 10)")
    parser.add_argument("--seconds", type=float, default=None, help="and more rounds until this many seconds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch-device", default=None, help="PyTorch's device (default: cuda on CUDA, else cpu)")
    parser.add_argument("--no-torch", action="store_true", help="leave the PyTorch variants out")
    parser.add_argument("--cpu-peak-gflops", type=float, default=None,
                        help="CPU only: the stated peak per core for the bound (default "
                             "128 with AVX-512, else 64)")
    parser.add_argument("--max-seconds", type=float, default=None, help="start no new measurement after this")
    parser.add_argument("--out", type=Path, required=False, default=None, help="writes OUT.json and OUT.md")


def parse(argv: list[str] | None, parser: argparse.ArgumentParser, script: str) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.command = f"python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.provider not in ("cpu", "cuda"):
        parser.error("--provider must be cpu or cuda")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    try:
        dict(kv.split("=", 1) for kv in args.provider_option)
    except ValueError:
        parser.error("--provider-option expects KEY=VALUE")
    if args.torch_device is None:
        args.torch_device = "cuda" if args.provider == "cuda" else "cpu"
    return args


def device_for(args) -> baselines.Device:
    config = RuntimeConfig(args.provider)
    use_torch = not args.no_torch and not baselines.torch_problem()
    if use_torch and args.torch_device.startswith("cuda"):
        import torch

        use_torch = torch.cuda.is_available()
    return baselines.describe_device(config, args.torch_device if use_torch else None, args.cpu_peak_gflops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    parser.add_argument("--family", nargs="+", default=[], help="benchmarks/families.py names")
    parser.add_argument("--zoo", nargs="+", default=[], help="benchmarks/zoo.py networks")
    parser.add_argument("--models", type=Path, default=None, help="a folder of your own .onnx files")
    parser.add_argument("--source", default="auto", choices=["auto", "package", "plain"],
                        help="families: from their PyPI package, or this project's PyTorch modules")
    parser.add_argument("--tiny", action="store_true", help="families at test size")
    parser.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES,
                        help="auto, paper, full, an integer G, or a lowering for every layer it applies to: "
                             "toeplitz, polyphase:B[:2d][:fold], conv2d")
    parser.add_argument("--tune-budget", type=float, default=None, help="seconds of tuning per model for auto")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tuning cache for auto")
    parser.add_argument("--plans-dir", type=Path, default=None,
                        help="write auto's decisions for each network, batch and precision as plan files here")
    parser.add_argument("--work-dir", type=Path, default=WORK, help="where exported and built models go")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, help="merge result JSONs of separate runs")
    args = parse(argv, parser, "networks.py")
    if args.merge:
        merge(args.merge, args.out or Path("headline"))
        return 0
    if args.models is not None and not args.models.is_dir():
        parser.error(f"--models {args.models}: not a folder")
    if args.models is not None and not list(args.models.glob("*.onnx")):
        parser.error(f"--models {args.models}: no .onnx files there")
    if not (args.family or args.zoo or args.models):
        parser.error("give --family, --zoo and/or --models")
    for policy in args.policies:
        try:
            parse_policy(policy, "--policies")
        except DiagwiseError as exc:
            parser.error(str(exc))
    skipped = []
    if args.family:
        problem = baselines.torch_problem()
        if problem:  # the families are PyTorch modules: without it they are left out, with the reason
            skipped = [f"{name}: the families are built in PyTorch; {problem}" for name in args.family]
            print("networks: " + "; ".join(skipped), file=sys.stderr)
            args.family = []
        else:
            import families

            unknown = [f for f in args.family if f not in families.FAMILIES]
            if unknown:
                parser.error(f"--family: unknown {', '.join(unknown)}; known: {', '.join(families.FAMILIES)}")
    unknown = [z for z in args.zoo if z not in zoo._ARCHITECTURES]
    if unknown:
        parser.error(f"--zoo: unknown {', '.join(unknown)}")
    items = zoo_items(args) + (family_items(args) if args.family else []) + \
        (file_items(args) if args.models else [])
    base = args.out or Path(__file__).resolve().parent / "results" / f"networks-{args.provider}"
    device = device_for(args)
    result = {"title": "Whole networks: onnxruntime original (best configuration) vs rewrite vs PyTorch eager",
              "command": args.command, "environment": environment(args), "device": device.to_dict(),
              "policies": args.policies, "precisions": args.precision,
              "precision_labels": {p: baselines.PRECISION_LABELS[p] for p in args.precision},
              "rows": [], "not_run": [], "failures": [], "skipped": skipped}
    print(f"device {device.name}: copy {device.copy_gbps:.1f} GB/s, peaks {device.peak_tflops} ({device.peak_source})",
          flush=True)
    started = time.perf_counter()
    # Breadth first: every network at the first batch and precision before any at the next.
    for batch in args.batch:
        for precision in args.precision:
            dtype = baselines.precision_dtype(precision)
            for item in items:
                name, load = item[0], item[1]
                if args.models is not None and len(item) > 2:
                    file_dtype = model_dtype(onnx.load(str(item[2]), load_external_data=False))
                    if file_dtype != dtype:
                        continue  # a user's file is measured in the dtype it is
                key = f"{name} b{batch} {precision}"
                if args.max_seconds is not None and time.perf_counter() - started > args.max_seconds:
                    result["not_run"].append(key)
                    continue
                began = time.perf_counter()
                try:
                    model, factory, feeds, info = load(dtype, batch)
                    row = measure(name, model, factory, feeds, batch, precision, args.policies, args, device, info)
                except (DiagwiseError, RuntimeError, ValueError, OSError) as exc:
                    message = f"{key}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    result["failures"].append(message)
                    print(f"failed: {message}", file=sys.stderr, flush=True)
                    write(result, base)
                    continue
                result["rows"].append(row)
                result["memory_kind"] = row["memory_kind"]
                write(result, base)
                policies = "; ".join(f"{title(p)}: {verdict(row['variants'][n])}" for p, n in row["best_by_policy"].items())
                print(f"{key}: original {row['variants'][row['best_original']]['median_ms']:.3f} ms "
                      f"({row['variants'][row['best_original']].get('ort_config')}); {policies} "
                      f"[{time.perf_counter() - began:.0f} s]", flush=True)
    write(result, base)
    print(f"results: {base}.json / .md")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
