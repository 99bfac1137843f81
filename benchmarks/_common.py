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


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(args.provider, parse_key_values(args.provider_option, "--provider-option"), args.threads)


def write_results(name: str, args: argparse.Namespace, data: dict, markdown: list[str]) -> Path:
    """Write NAME.json and NAME.md under benchmarks/results (or --out) with the command that made them."""
    base = args.out or RESULTS / f"{name}-{args.provider}"
    base.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    data = {"command": command, **data}
    base.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    env = data.get("environment", {})
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
