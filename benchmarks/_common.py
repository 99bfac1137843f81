"""Shared pieces of the benchmark scripts: runtime flags and result files."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from onnx_diagwise import RuntimeConfig
from onnx_diagwise.runtime import parse_key_values

RESULTS = Path(__file__).resolve().parent / "results"


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="cpu", help="cpu, cuda, tensorrt, ...")
    parser.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=30, help="timed rounds per comparison")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="results basename (default: by provider)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """Parse ARGV (None: the command line) and keep the command that was run, for the results."""
    args = parser.parse_args(argv)
    args.command = f"python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(args.provider, parse_key_values(args.provider_option, "--provider-option"), args.threads)


def layout_configs(config: RuntimeConfig, dtype: str) -> dict[str, RuntimeConfig]:
    """The configurations to compare: on CUDA both layouts (TF32 off for float32), else as given."""
    if config.provider_full != "CUDAExecutionProvider":
        return {"": config}
    options = dict(config.provider_options or {})
    if dtype == "float32":
        options.setdefault("use_tf32", "0")
    return {layout: RuntimeConfig(config.provider, {**options, "prefer_nhwc": flag}, config.threads,
                                  config.opt_level)
            for layout, flag in (("nchw", "0"), ("nhwc", "1"))}


def write_results(name: str, args: argparse.Namespace, data: dict, markdown: list[str]) -> Path:
    """Write NAME.json and NAME.md under benchmarks/results (or --out) with the command that made them."""
    base = args.out or RESULTS / f"{name}-{args.provider}"
    base.parent.mkdir(parents=True, exist_ok=True)
    command = getattr(args, "command", None) or "python " + shlex.join(sys.argv)
    data = {"command": command, **data}
    base.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    env = data.get("environment") or {}
    header = [f"# {name}", "", f"Command: `{command}`", "",
              f"Environment: onnxruntime {env.get('onnxruntime')}, {env.get('provider')} "
              f"{env.get('provider_options') or ''} on {env.get('device')} (CPU: {env.get('cpu')}, "
              f"{env.get('cpu_count')} cores), {env.get('time')}", ""]
    base.with_suffix(".md").write_text("\n".join(header + markdown) + "\n")
    return base


def md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def write_result_files(result: dict, base: Path, markdown) -> Path:
    """RESULT as BASE.json, and as BASE.md: its title, command and environment, then MARKDOWN(result)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    header = [f"# {result['title']}", "", f"Command: `{result['command']}`", "",
              f"Environment: {json.dumps(result['environment'])}", ""]
    base.with_suffix(".md").write_text("\n".join(header + markdown(result)) + "\n")
    return base
