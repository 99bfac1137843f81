"""fp16 pipelines, both orders: onnxconverter-common's float16 conversion (keep_io_types=True)
then the rewrite, and the rewrite then the conversion, each compared with the converted original
by onnx-diagwise's check (outputs computed in float16 are compared as float16).

    pip install onnxconverter-common
    python benchmarks/fp16_pipelines.py [--provider cpu] [--out BASENAME]

Every float sample model and every zoo network (benchmarks/zoo.py); the table gives, per model
and order, whether the check passed and the largest error relative to the output's scale.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from _common import md_table, parse_args, write_results  # noqa: E402

from onnx_diagwise import RuntimeConfig, rewrite, validate  # noqa: E402
from onnx_diagwise.bench import environment as bench_environment  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=True)


def models():
    for path in sorted(SAMPLES.glob("*.onnx")):
        if not any(k in path.stem for k in ("fp16", "qdq", "qlinear")):  # float models only
            yield path.stem, onnx.load(path)
    for name in zoo.NETWORKS:
        yield name, zoo.build(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parse_args(parser, argv, "fp16_pipelines.py")
    config = RuntimeConfig(args.provider)
    rows, environment = [], None
    for name, model in models():
        converted = to_fp16(model)
        row = {"model": name}
        for order, candidate in (("convert, then rewrite", rewrite(converted).model),
                                 ("rewrite, then convert", to_fp16(rewrite(model).model))):
            report = validate(converted, candidate, config, check_n=1)
            environment = environment or bench_environment(config, converted, 1)
            worst = max(report.outputs, key=lambda o: (o.max_abs or 0) / (o.scale or 1))
            row[order] = {"passed": report.passed, "max_abs": worst.max_abs, "scale": worst.scale,
                          "precision": worst.precision or worst.dtype}
        rows.append(row)
        print(name, {k: (v["passed"], f"{v['max_abs']:.1e}") for k, v in row.items() if k != "model"}, flush=True)
    orders = ["convert, then rewrite", "rewrite, then convert"]
    markdown = ["Each cell: check result, largest absolute error / the output's largest value, and the "
                "precision the output was compared in.", ""]
    markdown += md_table(["model", *orders], [[r["model"], *[
        f"{'pass' if r[o]['passed'] else 'FAIL'} {r[o]['max_abs']:.1e} / {r[o]['scale']:.3g} ({r[o]['precision']})"
        for o in orders]] for r in rows])
    path = write_results("fp16_pipelines", args, {"environment": environment, "rows": rows}, markdown)
    print(f"results: {path}.json / .md")


if __name__ == "__main__":
    main()
