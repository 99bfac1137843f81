"""End-to-end benchmark: whole models, original vs rewritten with fixed G policies and with
`auto` (tuned on the same provider), timed side by side under onnxruntime.

    python benchmarks/models.py                                    # CPU, every sample model, batch 1
    python benchmarks/models.py --zoo --provider cuda --batch 64 --dtype float32 float16 \\
        --provider-option cudnn_conv_algo_search=EXHAUSTIVE --seconds 10

--zoo takes whole networks built by benchmarks/zoo.py (MobileNet V1/V2/V3-Large,
EfficientNet-B0, ConvNeXt-Tiny at 224x224, seeded random weights) instead of the sample
models.  On CUDA every model runs under both layouts a user could pick, prefer_nhwc=0 and
prefer_nhwc=1 (cuDNN either way), with TF32 off for float32; all variants of one model are
timed in one interleaved benchmark, and the headline compares each rewritten model with the
*fastest* original configuration.  Cells are speedups (>1 = the rewritten model is faster)
with their 95% bootstrap interval.  Each variant's outputs are compared with the original's
from the timed sessions; the largest difference relative to the output scale is reported.
Results are rewritten after every model, so a run stopped early keeps what finished.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from _common import add_runtime_flags, layout_configs, md_table, parse_args, runtime_config, write_results  # noqa: E402

from onnx_diagwise import InputOptions, RuntimeConfig, TuneOptions, benchmark, rewrite  # noqa: E402
from onnx_diagwise.bench import speedup_interval  # noqa: E402
from onnx_diagwise.runtime import input_specs  # noqa: E402
from onnx_diagwise.model_io import as_model  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
ZOO_DIR = Path(__file__).resolve().parent / ".zoo"  # generated on demand, git-ignored
SAMPLE_POLICIES = ["4", "8", "paper", "full", "auto"]
ZOO_POLICIES = ["8", "16", "32", "full"]
# Largest output difference, relative to the largest output value, that counts as the same result.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


def model_dtype(path: Path) -> str:
    specs = input_specs(as_model(str(path)))
    return "float16" if specs and specs[0].dtype == np.float16 else "float32"


def label(policy: str, layout: str) -> str:
    return f"{policy}/{layout}" if layout else policy


def compare_model(path: Path, dtype: str, batch: int, config: RuntimeConfig, policies: list[str], args) -> dict:
    """Every policy x layout of one model in one interleaved benchmark."""
    inputs = InputOptions(batch=batch)  # other symbolic dims (the conformer's T) are sized by trying
    layouts = layout_configs(config, dtype)
    names, models, configs, auto_summary = [], [], [], {}
    fixed = {p: rewrite(path, group_size=_policy(p)).model for p in policies if p != "auto"}
    for layout, layout_config in layouts.items():
        names.append(label("original", layout))
        models.append(str(path))
        configs.append(layout_config)
        for policy in policies:
            if policy == "auto":
                tuning = TuneOptions(layout_config, inputs, time_budget=args.tune_budget, cache_dir=args.cache_dir)
                result = rewrite(path, group_size="auto", tune_options=tuning)
                auto_summary[layout or "default"] = result.tuning.summary
                candidate = result.model
            else:
                candidate = fixed[policy]
            names.append(label(f"G={policy}", layout))
            models.append(candidate)
            configs.append(layout_config)
    report = benchmark(models, warmup=args.warmup, iterations=None if args.seconds else args.iterations,
                       seconds=args.seconds, names=names, configs=configs, inputs=inputs, compare=True)
    by_name = {m.name: m for m in report.models}
    originals = [label("original", layout) for layout in layouts]
    best_original = min(originals, key=lambda n: by_name[n].median_ms)
    reference = np.array(report.samples_ms[best_original])
    variants = {}
    for name, stats in by_name.items():
        low, high = speedup_interval(reference, np.array(report.samples_ms[name]))
        relative = stats.max_abs_diff / stats.max_ref_abs if stats.max_ref_abs else stats.max_abs_diff
        variants[name] = {"median_ms": stats.median_ms, "speedup": by_name[best_original].median_ms / stats.median_ms,
                          "ci95": [low, high], "max_abs_diff": stats.max_abs_diff,
                          "max_rel_diff": relative, "same_result": bool(relative <= TOLERANCE[dtype])}
    return {"model": path.stem, "dtype": dtype, "batch": batch, "rounds": report.environment["rounds"],
            "best_original": best_original, "variants": variants, "auto": auto_summary,
            "environment": report.environment}


def _policy(policy: str):
    return int(policy) if policy.isdigit() else policy


def best_of(row: dict, policy: str) -> tuple[str, dict]:
    """The fastest layout of one policy."""
    candidates = {n: v for n, v in row["variants"].items() if n.split("/")[0] == policy}
    name = min(candidates, key=lambda n: candidates[n]["median_ms"])
    return name, candidates[name]


def markdown(rows: list[dict], policies: list[str], args, skipped: list[str]) -> list[str]:
    layouts = sorted({n.split("/")[1] for r in rows for n in r["variants"] if "/" in n})
    lines = ["Cells: speedup of the rewritten model's fastest layout over the *fastest original* "
             "configuration (>1 = faster), with its 95% bootstrap interval (an interval holding 1 is noise), "
             "medians of " + (f"{args.seconds:g} s of interleaved rounds per model." if args.seconds
                              else f"{args.iterations} interleaved rounds."),
             "'check' is the largest output difference of any variant relative to the output scale "
             f"(same result if <= {TOLERANCE['float32']:g} for float32, {TOLERANCE['float16']:g} for float16).", ""]
    original_cols = [f"original {lo} ms" for lo in layouts] or ["original ms"]
    table = []
    for r in rows:
        originals = [f"{r['variants'][label('original', lo)]['median_ms']:.3f}" for lo in (layouts or [""])]
        cells = []
        for policy in policies:
            name, v = best_of(r, f"G={policy}")
            where = f" {name.split('/')[1]}" if "/" in name else ""
            cells.append(f"{v['speedup']:.2f}{where} ({v['ci95'][0]:.2f}-{v['ci95'][1]:.2f})")
        worst = max(v["max_rel_diff"] for v in r["variants"].values())
        ok = all(v["same_result"] for v in r["variants"].values())
        table.append([r["model"], r["dtype"], r["batch"], *originals, *cells,
                      f"{worst:.1e}{'' if ok else ' DIFFERS'}",
                      "; ".join(f"{lo}: {text}" if lo else text for lo, text in r["auto"].items())])
    lines += md_table(["model", "dtype", "batch", *original_cols, *[f"G={p}" for p in policies], "check",
                       "auto decided"], table)
    if skipped:
        lines += [f"Not run (time budget): {', '.join(skipped)}", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(parser)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--zoo", action="store_true", help="whole networks from benchmarks/zoo.py")
    parser.add_argument("--model", nargs="+", default=None,
                        help="sample names, or with --zoo network names (default: all)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16"],
                        help="--zoo: which builds of each network")
    parser.add_argument("--policies", nargs="+", default=None,
                        help=f"G policies (default: {' '.join(SAMPLE_POLICIES)}; --zoo: {' '.join(ZOO_POLICIES)})")
    parser.add_argument("--zoo-dir", type=Path, default=ZOO_DIR, help="where --zoo models are generated")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tuning cache for 'auto'")
    parser.add_argument("--tune-budget", type=float, default=None, help="seconds of tuning per model for 'auto'")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per model instead of --iterations (more rounds for small models)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="start no new model after this many seconds (the rest is listed as not run)")
    args = parse_args(parser, argv, "models.py")
    config = runtime_config(args)
    policies = args.policies or (ZOO_POLICIES if args.zoo else SAMPLE_POLICIES)
    if args.zoo:
        names = args.model or list(zoo.NETWORKS)
        work = [(f"{n}-{d}", lambda n=n, d=d: zoo.zoo_path(n, d, args.zoo_dir), d)
                for d in args.dtype for n in names]  # built when reached: a run stopped early builds less
    else:
        work = [(p.stem, lambda p=p: p, None) for p in sorted(SAMPLES.glob("*.onnx"))
                if not args.model or p.stem in args.model]

    start, rows, skipped = time.perf_counter(), [], []
    for batch in args.batch:
        for name, make_path, dtype in work:
            if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                skipped.append(f"{name} b{batch}")
                continue
            path = make_path()
            row = compare_model(path, dtype or model_dtype(path), batch, config, policies, args)
            rows.append(row)
            print(f"{path.stem} b{batch}: fastest original {row['best_original']} "
                  f"{row['variants'][row['best_original']]['median_ms']:.3f} ms; "
                  + ", ".join(f"G={p} {best_of(row, f'G={p}')[1]['speedup']:.2f}x" for p in policies), flush=True)
            save(rows, policies, args, skipped)
    path = save(rows, policies, args, skipped)
    print(f"results: {path}.json / .md")


def save(rows: list[dict], policies: list[str], args, skipped: list[str]) -> Path:
    environment = rows[-1]["environment"] if rows else None
    data = {"environment": environment, "policies": policies, "rows": rows, "not_run": skipped}
    return write_results("models-zoo" if args.zoo else "models", args, data, markdown(rows, policies, args, skipped))


if __name__ == "__main__":
    main()
