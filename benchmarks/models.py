"""End-to-end benchmark: every sample model, original vs rewritten with fixed G policies
and with `auto` (tuned on the same provider), timed side by side under onnxruntime.

    python benchmarks/models.py                           # CPU, batch 1
    python benchmarks/models.py --provider cuda --batch 1 64 --provider-option use_tf32=0

Cells are speedups over the original model (>1 = the rewritten model is faster).
Each rewritten model is validated against the original before it is timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_runtime_flags, md_table, runtime_config, write_results  # noqa: E402

from onnx_diagwise import InputOptions, TuneOptions, benchmark, rewrite, validate  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
POLICIES = [4, 8, "paper", "full", "auto"]
DIMS = {"T": 128}  # the conformer's sequence length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(parser)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--model", nargs="+", default=None, help="sample names (default: all)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tuning cache for 'auto'")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per comparison instead of --iterations (more rounds for small models)")
    args = parser.parse_args()
    config = runtime_config(args)
    paths = sorted(SAMPLES.glob("*.onnx"))
    if args.model:
        paths = [p for p in paths if p.stem in args.model]

    rows, environment = [], None
    for batch in args.batch:
        inputs = InputOptions(batch=batch, dims=DIMS)
        for path in paths:
            names, models, auto_summary = ["original"], [str(path)], ""
            for policy in POLICIES:
                tuning = TuneOptions(config, inputs, cache_dir=args.cache_dir) if policy == "auto" else None
                result = rewrite(path, group_size=policy, tune_options=tuning)
                candidate = result.model
                if result.tuning is not None:
                    auto_summary = result.tuning.summary
                check = validate(path, candidate, config, inputs, check_n=1)
                if not check.passed:
                    raise SystemExit(f"{path.name} G={policy}: rewritten model differs: "
                                     + "; ".join(o.line() for o in check.outputs))
                names.append(f"G={policy}")
                models.append(candidate)
            report = benchmark(models, config, inputs, warmup=args.warmup,
                               iterations=None if args.seconds else args.iterations, seconds=args.seconds,
                               names=names)
            environment = report.environment
            row = {"model": path.stem, "batch": batch, "auto": auto_summary, "rounds": report.environment["rounds"],
                   "original_ms": report.models[0].median_ms,
                   "speedups": {m.name: m.speedup for m in report.models[1:]},
                   "speedup_ci95": {m.name: m.speedup_ci95 for m in report.models[1:]},
                   "ms": {m.name: m.median_ms for m in report.models}}
            rows.append(row)
            print(f"{path.stem} b{batch}: original {row['original_ms']:.3f} ms; "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in row["speedups"].items()), flush=True)

    markdown = ["Cells: speedup of the rewritten model over the original (>1 = faster; for auto with its 95% "
                "bootstrap interval: an interval holding 1 is noise), medians of "
                + (f"{args.seconds:g} s of interleaved rounds per model (all six models together)." if args.seconds
                   else f"{args.iterations} interleaved rounds."), ""]
    markdown += md_table(["model", "batch", "original ms", *[f"G={p}" for p in POLICIES], "auto decided"],
                         [[r["model"], r["batch"], f"{r['original_ms']:.3f}",
                           *[f"{r['speedups'][f'G={p}']:.2f}" for p in POLICIES[:-1]],
                           "{:.2f} ({:.2f}-{:.2f})".format(r["speedups"]["G=auto"], *r["speedup_ci95"]["G=auto"]),
                           r["auto"]] for r in rows])
    path = write_results("models", args, {"environment": environment, "rows": rows}, markdown)
    print(f"results: {path}.json / .md")


if __name__ == "__main__":
    main()
