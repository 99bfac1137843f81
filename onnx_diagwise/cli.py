"""The onnx-diagwise command line: a thin layer over the Python API.

Exit codes: 0 success, 1 a check failed, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from . import __version__, api
from .errors import CheckFailed, DiagwiseError
from .model_io import check_output_path, external_data_path, load_model, save_model
from .plan import compile_pattern, parse_group_size
from .render import compare_table, nodes_table, size, summary_line

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and squeeze the tables.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 200))
out = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=_WIDTH)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help=(
        "Run depthwise convolutions of ONNX models as block-diagonal grouped convolutions "
        "(diagonalwise refactorization, Qin et al., arXiv:1803.09926).\n\n"
        "[bold]Examples[/bold]\n\n"
        "  onnx-diagwise inspect model.onnx\n\n"
        "  onnx-diagwise rewrite model.onnx model.diag.onnx --group-size 32\n\n"
        "  onnx-diagwise rewrite model.onnx out.onnx --group-size full --exclude 'stem' -v"
    ),
)

GROUP_SIZE_HELP = ("Channels per group G: an integer N (largest divisor of C <= N), "
                   "'paper' (N=32, the authors' choice) or 'full' (G=C, one dense conv).")


def _version(value: bool) -> None:
    if value:
        out.print(f"onnx-diagwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def _pinned(values: list[str]) -> dict[str, int]:
    pinned: dict[str, int] = {}
    for value in values:
        name, sep, g = value.rpartition("=")
        if not sep or not name or not g.strip().isdigit():
            raise DiagwiseError(f"--node-group-size expects NAME=G with a positive integer G; got '{value}'")
        pinned[name] = int(g)
    return pinned


def _check_flags(group_size: str, include: str | None, exclude: str | None,
                 min_channels: int | None) -> str | int:
    policy = parse_group_size(group_size, "--group-size")
    compile_pattern(include, "--include")
    compile_pattern(exclude, "--exclude")
    if min_channels is not None and min_channels < 0:
        raise DiagwiseError(f"--min-channels must be >= 0; got {min_channels}")
    return policy


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    text = json.dumps(data, indent=2)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        raise DiagwiseError(f"cannot write --json '{path}': {exc.strerror or exc}") from None


def _check_json_path(path: Path | None) -> None:
    if path is not None and str(path) != "-":
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise DiagwiseError(f"--json: directory '{parent}' does not exist")


JSON_HELP = "Write the report as JSON to PATH ('-' for stdout, which replaces the tables)."


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="ONNX model to inspect."),
    group_size: str = typer.Option("paper", "--group-size", "-g", help=GROUP_SIZE_HELP),
    include: Optional[str] = typer.Option(None, help="Only nodes whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, help="Skip nodes whose name matches this regex."),
    min_channels: Optional[int] = typer.Option(None, help="Skip nodes with fewer channels."),
    json_path: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """List every depthwise / grouped Conv and what [bold]rewrite[/bold] would do with it.

    Example: onnx-diagwise inspect model.onnx --group-size full
    """
    _check_flags(group_size, include, exclude, min_channels)
    _check_json_path(json_path)
    loaded = load_model(model)
    report = api.inspect(loaded.model, group_size, include, exclude, min_channels)
    _write_json(json_path, {"model": str(model), **report.to_dict()})
    if str(json_path) != "-":
        if report.nodes:
            out.print(nodes_table(report, f"{model}: depthwise and grouped Conv nodes"))
        out.print(summary_line(report))


@app.command()
def rewrite(
    input: Path = typer.Argument(..., help="ONNX model to rewrite (never modified)."),
    output: Path = typer.Argument(..., help="Where to write the rewritten model."),
    group_size: str = typer.Option("paper", "--group-size", "-g", help=GROUP_SIZE_HELP),
    include: Optional[str] = typer.Option(None, help="Only rewrite nodes whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, help="Never rewrite nodes whose name matches this regex."),
    min_channels: Optional[int] = typer.Option(None, help="Leave nodes with fewer channels depthwise."),
    node_group_size: list[str] = typer.Option(
        [], "--node-group-size", help="NAME=G: exact G for one node (must divide its C). Repeatable."),
    external_data: Optional[bool] = typer.Option(
        None, "--external-data/--no-external-data",
        help="Save weights to OUTPUT.data. Default: as the input did, or when the model passes 2 GiB."),
    warn_growth: float = typer.Option(api.DEFAULT_WARN_GROWTH, help="Warn when weights grow more than this factor."),
    json_path: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the per-node table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Rewrite depthwise Convs into block-diagonal grouped Convs and save the model.

    Example: onnx-diagwise rewrite model.onnx model.diag.onnx --group-size 32 -v
    """
    _check_flags(group_size, include, exclude, min_channels)
    pinned = _pinned(node_group_size)
    _check_json_path(json_path)
    if not input.exists():
        raise DiagwiseError(f"input model '{input}' does not exist")
    check_output_path(output, input)
    loaded = load_model(input)
    check_output_path(output, input, protected=loaded.external_files)
    result = api.rewrite(loaded.model, group_size, include, exclude, min_channels,
                         node_group_sizes=pinned, warn_growth=warn_growth, copy=False)
    report = result.report
    if external_data is None and loaded.has_external_data:
        external_data = True
    used_external = save_model(result.model, output, external_data, keep_model=False)
    file_after = output.stat().st_size + (
        external_data_path(output).stat().st_size if used_external else 0)

    _write_json(json_path, {
        "input": str(input), "output": str(output), "external_data": used_external,
        "file_bytes_before": loaded.file_bytes, "file_bytes_after": file_after,
        **report.to_dict(),
    })
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if quiet or str(json_path) == "-":
        return
    if verbose and report.nodes:
        out.print(nodes_table(report, "Depthwise and grouped Conv nodes"))
    out.print(compare_table(report.before, report.after, loaded.file_bytes, file_after, report.elapsed_s))
    out.print(summary_line(report))
    data_note = f" (+ weights in {output}.data)" if used_external else ""
    out.print(f"saved {output}{data_note}, {size(file_after)}")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: one line per error, never a traceback."""
    try:
        result = app(args=argv, prog_name="onnx-diagwise", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except DiagwiseError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        return 2
    except CheckFailed as exc:
        err.print(f"[red]check failed:[/red] {exc}", soft_wrap=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad int, missing argument
        if not exc.format_message():  # no arguments at all: typer already printed the help
            return 2
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "onnx-diagwise"
        err.print(f"[red]error:[/red] {exc.format_message()} (see '{command} --help')", soft_wrap=True)
        return 2
    except typer.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except MemoryError:
        err.print("[red]error:[/red] out of memory")
        return 2
    except Exception as exc:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("ONNX_DIAGWISE_DEBUG"):
            raise
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
                  "(set ONNX_DIAGWISE_DEBUG=1 for a traceback)", soft_wrap=True)
        return 3

