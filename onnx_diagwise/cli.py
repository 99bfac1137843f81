"""The onnx-diagwise command line: a thin layer over the Python API.

Exit codes: 0 success, 1 a check failed, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup
from typer._click.formatting import HelpFormatter

from . import __version__
from .errors import CheckFailed, DiagwiseError, RuntimeMissing, UnsizedDims
from .flags import flag_option, spelled

# onnx, numpy, onnxruntime and rich are imported by the commands that use them: --version and
# --help print in a fraction of a second.

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def _wrap(text: str, width: int, indent: str = "") -> str:
    """TEXT's paragraphs wrapped at spaces only (click's wrapper breaks words at hyphens and splits
    words longer than the line); a paragraph after a line holding '\\b' keeps its lines."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
        if paragraph.startswith("\b"):
            paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()[1:]))
        else:
            paragraphs.append(textwrap.fill(" ".join(paragraph.split()), max(width, 20), initial_indent=indent,
                                            subsequent_indent=indent, break_long_words=False,
                                            break_on_hyphens=False))
    return "\n\n".join(paragraphs)


class _HelpFormatter(HelpFormatter):
    """click's plain help layout (option names whole, descriptions beside or below them) with
    words never broken."""

    def write_text(self, text: str) -> None:
        self.write(_wrap(text, self.width, " " * self.current_indent) + "\n")

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max(len(first) for first, _ in rows), col_max) + col_spacing
        if self.width - first_col < 40:  # narrow: each description below its option, indented
            first_col, col_spacing = 6, 7
        indent = " " * self.current_indent
        for first, second in rows:
            self.write(indent + first)
            if not second:
                self.write("\n")
                continue
            lines = _wrap(second, self.width - first_col - self.current_indent).splitlines()
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)) + lines.pop(0) + "\n")
            else:
                self.write("\n")
            for line in lines:
                self.write(indent + " " * first_col + line + "\n")


class _Context(typer.Context):
    formatter_class = _HelpFormatter


def _bool_help(option):
    """The -h option with a bool default: typer then skips its coercion, which imports pydantic
    (0.1 s of every subcommand's help)."""
    if option is not None:
        option.default = False
    return option


class _Group(TyperGroup):
    context_class = _Context

    def get_help_option(self, ctx):
        return _bool_help(super().get_help_option(ctx))


class _Command(TyperCommand):
    context_class = _Context

    def get_help_option(self, ctx):
        return _bool_help(super().get_help_option(ctx))


# click's plain help, not rich's panels: these cut option names at narrow widths.
app = typer.Typer(
    cls=_Group,
    add_completion=False,
    context_settings=HELP_OPTIONS,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=(
        "Run depthwise convolutions of ONNX models as block-diagonal grouped convolutions "
        "(diagonalwise refactorization, Qin et al., arXiv:1803.09926).\n\n"
        "\b\nExamples:\n"
        "  onnx-diagwise inspect model.onnx\n"
        "  onnx-diagwise rewrite model.onnx model.diag.onnx -g 32\n"
        "  onnx-diagwise rewrite model.onnx out.onnx -g full -v\n"
        "  onnx-diagwise rewrite model.onnx out.onnx -g auto \\\n"
        "      --provider cuda --batch 64\n"
        "  onnx-diagwise bench model.onnx out.onnx --profile"
    ),
)

_consoles: dict[bool, Any] = {}


def console(stderr: bool = False):
    """The rich console for stdout or stderr, made on first use.  Off a terminal (pipes, CI logs) it is
    COLUMNS wide (200 if unset): rich would otherwise assume 80."""
    if stderr not in _consoles:
        from rich.console import Console

        width = None
        if not (sys.stderr if stderr else sys.stdout).isatty():
            try:
                width = int(os.environ.get("COLUMNS") or 200)
            except ValueError:
                width = 200
        _consoles[stderr] = Console(stderr=stderr, highlight=False, width=width)
    return _consoles[stderr]


def show(items, stderr: bool = False) -> None:
    """Print a render view: tables as rich draws them, lines of text never re-wrapped."""
    from rich.text import Text

    for item in items:
        console(stderr).print(item, soft_wrap=isinstance(item, Text))


def say(text: str, stderr: bool = False) -> None:
    """One line of plain text, never re-wrapped (paths stay whole)."""
    from rich.text import Text

    console(stderr).print(Text(text), soft_wrap=True)


def warn(text: str) -> None:
    from rich.text import Text

    console(True).print(Text("warning: ", style="yellow") + Text(text), soft_wrap=True)


GROUP_SIZE_HELP = ("The form of each depthwise layer: 'auto' (measure every candidate G and lowering on --provider "
                   "and rewrite only what makes the model faster), an integer N (block-diagonal, G = the largest "
                   "divisor of C <= N), 'paper' (N=32, the authors' choice), 'full' (G=C, one dense conv), or a "
                   "lowering for every layer it applies to: 'toeplitz', 'polyphase[:B][:2d]', 'conv2d'.")
INSPECT_GROUP_SIZE_HELP = ("The form of each depthwise layer: an integer N (block-diagonal, G = the largest divisor "
                           "of C <= N), 'paper' (N=32, the authors' choice), 'full' (G=C, one dense conv), or "
                           "'toeplitz', 'polyphase[:B][:2d]', 'conv2d'. What 'auto' would do is measured: use tune.")
# The library's default (api.DEFAULT_WARN_GROWTH), here so that help needs no onnx.
WARN_GROWTH = 2.0


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnx-diagwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def _pinned(values: list[str]) -> dict[str, Any]:
    """--node-group-size NAME=G or NAME=toeplitz / polyphase[:B][:2d] / conv2d (repeatable)."""
    from .plan import parse_choice

    pinned: dict[str, Any] = {}
    for value in values:
        name, sep, choice = value.rpartition("=")
        if not sep or not name:
            raise DiagwiseError(f"--node-group-size expects NAME=G or NAME=FORM (toeplitz, polyphase[:B][:2d], "
                                f"conv2d); got '{value}'")
        pinned[name] = parse_choice(choice, "--node-group-size")
    return pinned


def _tolerance(values: list[str], flag: str):
    """--atol 1e-4 / --atol y=1e-4 (repeatable): None, one value, or {output name ('' = all): value}."""
    if not values:
        return None
    parsed: dict[str, float] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            parsed[name] = float(number)
        except ValueError:
            raise DiagwiseError(f"{flag} expects a number or NAME=NUMBER; got '{value}'") from None
        if not parsed[name] >= 0:
            raise DiagwiseError(f"{flag} must be >= 0; got '{value}'")
    return parsed[""] if list(parsed) == [""] else parsed


def _log_details(verbose: bool) -> None:
    """-v: the library's detail lines (e.g. which CUDA libraries were loaded) on stderr."""
    logger = logging.getLogger("onnx_diagwise")
    if not logger.handlers:
        logger.addHandler(_StderrHandler())
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


class _StderrHandler(logging.Handler):
    """Library log lines on the error console: warnings marked as such, details as they are."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warn(record.getMessage())
        else:
            say(record.getMessage(), stderr=True)


def _plan_policy(path: Path, lenient: bool):
    from .tuning.planfile import PlanPolicy, TunedPlan

    return PlanPolicy(TunedPlan.load(path), lenient)


def _check_flags(group_size: str, include: str | None, exclude: str | None, min_channels: int | None,
                 dynamic: bool = True, pinned: dict | None = None):
    """The library's own checks, before any model is loaded: (policy, selection)."""
    from .plan import Selection, parse_policy

    return parse_policy(group_size), Selection(include, exclude, min_channels, dynamic, pinned or {},
                                               why_not_dynamic="dynamic weights left alone (--skip-dynamic)")


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

# Options shared by every command that runs models.  Words in help texts stay short: click breaks a
# word longer than the description column (24 characters at 60 columns).
Provider = Annotated[str, typer.Option(
    "--provider", "-p", metavar="NAME",
    help="Execution provider: cpu, cuda, tensorrt, ... or a full name such as CUDAExecutionProvider.")]
ProviderOption = Annotated[list[str], typer.Option(
    "--provider-option", metavar="KEY=VALUE",
    help="An option of the provider, e.g. prefer_nhwc=1 or use_tf32=0. Repeatable.")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", metavar="N", help="Intra-op threads (default: onnxruntime's).")]
OptLevel = Annotated[str, typer.Option(
    "--opt-level", metavar="LEVEL", help="Graph optimization: disable, basic, extended, all.")]
Batch = Annotated[int, typer.Option("--batch", "-b", metavar="N", help="Value of a leading symbolic (batch) dim.")]
Dim = Annotated[list[str], typer.Option(
    "--dim", metavar="NAME=V", help="The size of a symbolic dim. Repeatable.")]
InputShape = Annotated[list[str], typer.Option(
    "--overwrite-input-shape", metavar="NAME:D1,D2,...", help="One input's shape (onnxsim syntax). Repeatable.")]
InputData = Annotated[list[str], typer.Option(
    "--input-data", metavar="NAME:FILE.npy", help="Real data for one input. Repeatable.")]
InputsNpz = Annotated[Optional[Path], typer.Option(
    "--inputs", metavar="FILE.npz", help="Real data for the inputs, by name.")]
TOLERANCE_RULE = ("An element passes when |candidate - original| <= atol + rtol * |original|. Defaults scale "
                  "with each output: rtol 1e-5 (float32/64), 1e-3 (float16), 1e-2 (bfloat16), 5e-3 (TF32), "
                  "and atol = rtol * the output's largest |value|, or 4x the runtime's own noise (how far "
                  "the original's output moves at another optimization level) when that is larger; "
                  "integers and bools must be equal. A value given is used as it is.")
Atol = Annotated[list[str], typer.Option(
    "--atol", metavar="V|NAME=V",
    help="Absolute tolerance: V for every output, or NAME=V for one. Repeatable. " + TOLERANCE_RULE)]
Rtol = Annotated[list[str], typer.Option(
    "--rtol", metavar="V|NAME=V", help="Relative tolerance: V for every output, or NAME=V for one. Repeatable.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and warnings.")]
Details = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Print details on stderr, e.g. which CUDA libraries were loaded.")]
AllowTf32 = Annotated[bool, typer.Option("--allow-tf32", help="On CUDA, compare fp32 with TF32 enabled.")]
JsonPath = Annotated[Optional[Path], typer.Option("--json", metavar="PATH", help=JSON_HELP)]
Include = Annotated[Optional[str], typer.Option(
    "--include", metavar="REGEX", help="Only nodes whose name matches this regex.")]
Exclude = Annotated[Optional[str], typer.Option(
    "--exclude", metavar="REGEX", help="Skip nodes whose name matches this regex.")]
MinChannels = Annotated[Optional[int], typer.Option(
    "--min-channels", metavar="N", help="Skip nodes with fewer channels.")]


MinSpeedup = Annotated[float, typer.Option(
    "--min-speedup", metavar="F", help="auto: a layer is rewritten only if at least this much faster (0.05 = 5%).")]
TimeBudget = Annotated[Optional[float], typer.Option(
    "--time-budget", metavar="SECONDS", help="auto: seconds for tuning; layers not tuned in time stay depthwise.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="auto: measure again, ignore the tuning cache.")]
CacheDir = Annotated[Optional[Path], typer.Option(
    "--cache-dir", metavar="DIR", help="auto: the tuning cache; default: ~/.cache/onnx-diagwise")]


def _tune_options(config, inputs, min_speedup: float, time_budget: float | None, no_cache: bool,
                  cache_dir: Path | None, progress):
    from .api import TuneOptions

    return TuneOptions(config, inputs, min_speedup, time_budget, cache_dir, not no_cache, None, progress)


@contextmanager
def _working(text: str, quiet: bool = False):
    """A spinner on stderr while something that can take a while runs, only on a terminal; yields
    a function that changes its text."""
    if quiet or not console(True).is_terminal:
        yield lambda new_text: None
        return
    with console(True).status(text) as status:
        yield lambda new_text: status.update(new_text)


@contextmanager
def _progress_bar(quiet: bool):
    """A rich progress bar for tuning (layers done / total, current layer, elapsed), on a terminal only."""
    if quiet or not console(True).is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console(True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, current: str) -> None:
            bar.update(task, completed=done, total=total, description=current)

        yield update


def _runtime(provider: str, provider_option: list[str], threads: int | None, opt_level: str):
    from .runtime import RuntimeConfig, parse_key_values

    config = RuntimeConfig(provider, parse_key_values(provider_option, "--provider-option"), threads, opt_level)
    config.provider_full  # noqa: B018 - fails early on an unknown provider
    return config


def _inputs(batch: int, dim: list[str], shape: list[str], data: list[str], npz: Path | None):
    from .runtime import InputOptions, load_input_data, parse_dims, parse_input_shapes

    if npz is not None and not npz.is_file():
        raise DiagwiseError(f"--inputs '{npz}' does not exist")
    return InputOptions(batch, parse_dims(dim), parse_input_shapes(shape),
                        load_input_data(data, str(npz) if npz else None))


@app.command(cls=_Command)
def inspect(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to inspect."),
    group_size: str = typer.Option("paper", "--group-size", "-g", metavar="N|paper|full",
                                   help=INSPECT_GROUP_SIZE_HELP),
    include: Include = None,
    exclude: Exclude = None,
    min_channels: MinChannels = None,
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    json_path: JsonPath = None,
    verbose: Details = False,
    quiet: Quiet = False,
) -> None:
    """List every depthwise / grouped Conv and what rewrite would do with it.

    FLOPs need the inputs' sizes: symbolic dims are sized as for the check (onnxruntime tries
    sizes when it is installed); dims that cannot be sized leave the FLOPs unknown.

    Example: onnx-diagwise inspect model.onnx --group-size full
    """
    policy, selection = _check_flags(group_size, include, exclude, min_channels)
    _log_details(verbose)
    _check_json_path(json_path)
    input_options = _inputs(batch, dim, overwrite_input_shape, [], None)
    from . import api
    from .dims import with_input_shapes
    from .model_io import load_model
    from .render import nodes_table, summary_line

    loaded = load_model(model)
    try:
        _, sized = with_input_shapes(loaded.model, input_options)
    except (UnsizedDims, RuntimeMissing) as exc:  # sizes are tried on onnxruntime; inspect works without
        sized = None
        logging.getLogger("onnx_diagwise").info(f"FLOPs not counted: {exc}")
    report = api.inspect(loaded.model, policy, selection, input_shapes=sized.shapes if sized else None)
    _write_json(json_path, {"model": str(model), "input_shapes": sized.to_dict() if sized else None,
                            **report.to_dict()})
    if str(json_path) != "-" and not quiet:
        if report.nodes:
            show(nodes_table(report, f"{model}: depthwise and grouped Conv nodes", console().width, spelled))
        show(_lines(summary_line(report)))


# Options of the commands that write a model (rewrite, revert).
ExternalData = Annotated[Optional[bool], typer.Option(
    "--external-data/--no-external-data",
    help="Save weights to OUTPUT.data. Default: as the input did, or when the model passes 2 GiB.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Also print the per-node table, and which CUDA libraries were loaded.")]
Check = Annotated[bool, typer.Option("--check/--no-check",
                                     help="Validate the result against the original before writing it.")]
CheckN = Annotated[int, typer.Option("--check-n", metavar="N", help="Input sets for the check.")]


def _lines(text: str) -> list:
    """TEXT wrapped at spaces to the console's width."""
    from .render import wrapped

    return wrapped(text, console().width)


def _sized_inputs(model, input_options, config):
    """Size the inputs' symbolic dims once, before any work (the rule: onnx_diagwise.dims; -v prints it)."""
    from .dims import with_input_shapes

    return with_input_shapes(model, input_options, config)


def _print_written(written, source: Path, json_path: Path | None, verbose: bool, quiet: bool) -> None:
    from .render import compare_table, nodes_table, size, summary_line, tune_table

    report, tuning = written.report, written.result.tuning
    _write_json(json_path, written.to_dict(source))
    for warning in report.warnings:
        warn(spelled(warning, getattr(warning, "parameters", ())))
    if quiet or str(json_path) == "-":
        return
    width = console().width
    if tuning is not None:
        show(tune_table(tuning, width, spelled))
        show(_lines(tuning.summary))
    if verbose and report.nodes:
        show(nodes_table(report, "Depthwise and grouped convolutions", width, spelled))
    show([compare_table(report.before, report.after, written.file_bytes_before, written.file_bytes_after,
                        report.elapsed_s,
                        title=f"onnx-diagwise {'revert' if report.policy == 'revert' else 'rewrite'}")])
    show(_lines(summary_line(report)))
    if written.validation is not None:
        show(_lines(f"check: {written.validation.summary()}"))
    data_note = f" (+ weights in {written.data_path})" if written.data_path else ""
    say(f"saved {written.output}{data_note}, {size(written.file_bytes_after)}")  # one line: paths to copy


@app.command(cls=_Command)
def rewrite(
    input: Path = typer.Argument(..., metavar="INPUT", help="ONNX model to rewrite (never modified)."),
    output: Path = typer.Argument(..., metavar="OUTPUT", help="Where to write the rewritten model."),
    group_size: Optional[str] = typer.Option(None, "--group-size", "-g", metavar="N|paper|full|auto|FORM",
                                             help=GROUP_SIZE_HELP + " Default: paper."),
    plan: Optional[Path] = typer.Option(None, "--plan", metavar="PLAN.json",
                                        help="Apply a plan file (from tune --plan-out, or rewrite -g auto --plan-out) "
                                             "exactly: nothing is measured; refused if it does not fit the model."),
    plan_lenient: bool = typer.Option(False, "--plan-lenient",
                                      help="With --plan: apply what fits and list the nodes that do not."),
    plan_out: Optional[Path] = typer.Option(None, "--plan-out", metavar="PLAN.json",
                                            help="With -g auto: write what was measured and decided as a plan file."),
    include: Optional[str] = typer.Option(None, metavar="REGEX",
                                          help="Only rewrite nodes whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, metavar="REGEX",
                                          help="Never rewrite nodes whose name matches this regex."),
    min_channels: Optional[int] = typer.Option(None, metavar="N", help="Leave nodes with fewer channels depthwise."),
    node_group_size: list[str] = typer.Option(
        [], "--node-group-size", metavar="NAME=G|FORM",
        help="Exact G (must divide its C) or form (toeplitz, polyphase[:B][:2d], conv2d) for one node. Repeatable."),
    skip_dynamic: bool = typer.Option(False, "--skip-dynamic",
                                      help="Leave nodes whose weight is a graph input or computed alone."),
    external_data: ExternalData = None,
    warn_growth: float = typer.Option(WARN_GROWTH, metavar="X", help="Warn when weights grow more than this factor."),
    json_path: JsonPath = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    check: Check = True,
    check_n: CheckN = 1,
    provider: Provider = "cpu",
    provider_option: ProviderOption = [],
    threads: Threads = None,
    opt_level: OptLevel = "all",
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    input_data: InputData = [],
    inputs: InputsNpz = None,
    atol: Atol = [],
    rtol: Rtol = [],
    allow_tf32: AllowTf32 = False,
    min_speedup: MinSpeedup = 0.05,
    time_budget: TimeBudget = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
) -> None:
    """Rewrite depthwise convolutions into block-diagonal grouped ones, check, and save the model.

    --group-size auto times every layer on --provider and keeps only rewrites that make the
    whole model faster; it never writes a model it measured slower than the original.

    The result is run against the original on --provider (CPU by default) and written only if
    every output matches, each judged against the runtime's own noise as well as the tolerance;
    --no-check skips that.

    Example: onnx-diagwise rewrite model.onnx model.diag.onnx --group-size 32 -v
    """
    from .files import CheckOptions, SaveOptions, rewrite_file

    from .plan import Auto

    if plan is not None and group_size is not None:
        raise DiagwiseError("give --group-size or --plan, not both: a plan says each node's form")
    if plan_lenient and plan is None:
        raise DiagwiseError("--plan-lenient goes with --plan")
    policy, selection = _check_flags(group_size or "paper", include, exclude, min_channels, not skip_dynamic,
                                     _pinned(node_group_size))
    _log_details(verbose)
    atol, rtol = _tolerance(atol, "--atol"), _tolerance(rtol, "--rtol")
    _check_json_path(json_path)
    auto = plan is None and isinstance(policy, Auto)
    if plan_out is not None and not auto:
        raise DiagwiseError("--plan-out needs --group-size auto (a plan records what was measured)")
    planned = _plan_policy(plan, plan_lenient) if plan is not None else None
    config = _runtime(provider, provider_option, threads, opt_level)
    input_options = _inputs(batch, dim, overwrite_input_shape, input_data, inputs)
    with _progress_bar(quiet or not auto) as progress, _working("loading", quiet or auto) as step:
        tune_options = (_tune_options(config, input_options, min_speedup, time_budget, no_cache, cache_dir,
                                      progress) if auto else None)
        checking = CheckOptions(check, config, input_options, check_n, atol, rtol, allow_tf32)
        written = rewrite_file(input, output, None if planned else policy, selection, tune_options, checking,
                               SaveOptions(external_data, step, warn_growth), plan=planned)
    if plan_out is not None:
        written.result.tuning.save(plan_out)
    _print_written(written, input, json_path, verbose, quiet)
    if plan_out is not None and not quiet:
        say(f"plan written to {plan_out}")


@app.command("revert", cls=_Command)
def revert_command(
    input: Path = typer.Argument(..., metavar="INPUT", help="ONNX model to revert (never modified)."),
    output: Path = typer.Argument(..., metavar="OUTPUT", help="Where to write the reverted model."),
    external_data: ExternalData = None,
    json_path: JsonPath = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    check: Check = True,
    check_n: CheckN = 1,
    provider: Provider = "cpu",
    provider_option: ProviderOption = [],
    threads: Threads = None,
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    input_data: InputData = [],
    inputs: InputsNpz = None,
    atol: Atol = [],
    rtol: Rtol = [],
) -> None:
    """Turn block-diagonal grouped convolutions (this tool's or anyone's) back into depthwise ones.

    Only weights whose off-diagonal entries are all zero (or the zero point) are collapsed;
    the result is checked against the input before it is written.

    Example: onnx-diagwise revert model.diag.onnx model.onnx
    """
    from .files import CheckOptions, SaveOptions, revert_file

    _check_json_path(json_path)
    _log_details(verbose)
    atol, rtol = _tolerance(atol, "--atol"), _tolerance(rtol, "--rtol")
    config = _runtime(provider, provider_option, threads, "all")
    input_options = _inputs(batch, dim, overwrite_input_shape, input_data, inputs)
    with _working("loading", quiet) as step:
        checking = CheckOptions(check, config, input_options, check_n, atol, rtol)
        written = revert_file(input, output, checking, SaveOptions(external_data, step))
    _print_written(written, input, json_path, verbose, quiet)


@app.command(cls=_Command)
def validate(
    original: Path = typer.Argument(..., metavar="ORIGINAL", help="The reference model."),
    candidate: Path = typer.Argument(..., metavar="CANDIDATE",
                                     help="The model to check against it (e.g. a rewritten one)."),
    provider: Provider = "cpu",
    provider_option: ProviderOption = [],
    threads: Threads = None,
    opt_level: OptLevel = "all",
    check_n: int = typer.Option(3, "--check-n", metavar="N", help="Random input sets (seeds --seed, --seed+1, ...)."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed of the first random input set."),
    atol: Atol = [],
    rtol: Rtol = [],
    allow_tf32: AllowTf32 = False,
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    input_data: InputData = [],
    inputs: InputsNpz = None,
    verbose: Details = False,
    quiet: Quiet = False,
    json_path: JsonPath = None,
) -> None:
    """Run two models on the same inputs and compare every output (exit 1 if any differs).

    Each output is judged against the tolerance and against the runtime's own noise: how far the
    original's outputs move when it runs again at another graph optimization level.

    Example: onnx-diagwise validate model.onnx model.diag.onnx --provider cuda --check-n 5
    """
    from .model_io import load_model
    from .render import validation_lines
    from .validation import advice, validate as validate_models

    _log_details(verbose)
    atol, rtol = _tolerance(atol, "--atol"), _tolerance(rtol, "--rtol")
    config = _runtime(provider, provider_option, threads, opt_level)
    input_options = _inputs(batch, dim, overwrite_input_shape, input_data, inputs)
    _check_json_path(json_path)
    original_model = load_model(original).model  # one clear line for a missing or broken file
    load_model(candidate)
    input_options, sized = _sized_inputs(original_model, input_options, config)
    with _working("running both models", quiet):
        report = validate_models(original, candidate, config, input_options, check_n, atol, rtol, allow_tf32, seed)
    _write_json(json_path, {"original": str(original), "candidate": str(candidate),
                            "input_shapes": sized.to_dict(), **report.to_dict()})
    if str(json_path) != "-" and not quiet:
        show(validation_lines(report))
        say(report.summary())
        if not report.passed:
            for line in advice(report, skippable=False, spell=flag_option):
                say(line)
    if not report.passed:
        raise typer.Exit(1)


@app.command(cls=_Command)
def bench(
    models: list[Path] = typer.Argument(..., metavar="MODEL...",
                                        help="Models to time; ratios are relative to the first."),
    provider: Provider = "cpu",
    provider_option: ProviderOption = [],
    threads: Threads = None,
    opt_level: OptLevel = "all",
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    input_data: InputData = [],
    inputs: InputsNpz = None,
    warmup: int = typer.Option(10, "--warmup", metavar="N", help="Untimed runs per model first."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", metavar="N",
                                             help="Timed rounds (default 50)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", metavar="S",
                                            help="Time budget for the timed rounds instead."),
    iobinding: Optional[bool] = typer.Option(None, "--iobinding/--no-iobinding",
                                             help="Keep inputs/outputs on the device (default: on for GPUs)."),
    profile: bool = typer.Option(False, "--profile", help="Per-node times from onnxruntime's profiler."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG",
                                        help="Draw the comparison as a PNG (needs matplotlib)."),
    verbose: Details = False,
    quiet: Quiet = False,
    json_path: JsonPath = None,
) -> None:
    """Time models side by side in one process, interleaved, on identical inputs.

    Example: onnx-diagwise bench model.onnx model.diag.onnx --provider cuda --batch 64 --profile
    """
    from .bench import benchmark
    from .model_io import load_model
    from .plot import plot_bench, require_matplotlib
    from .render import bench_table, depthwise_time_table, op_type_table

    _log_details(verbose)
    config = _runtime(provider, provider_option, threads, opt_level)
    input_options = _inputs(batch, dim, overwrite_input_shape, input_data, inputs)
    _check_json_path(json_path)
    if plot is not None:
        require_matplotlib()
        _check_json_path(plot)
    first = load_model(models[0]).model
    for path in models[1:]:
        load_model(path)
    input_options, sized = _sized_inputs(first, input_options, config)
    report = benchmark(models, config, input_options, warmup, iterations, seconds, iobinding, profile,
                       names=[str(m) for m in models])
    _write_json(json_path, {"input_shapes": sized.to_dict(), **report.to_dict()})
    if plot is not None:
        plot_bench(report, plot)
    if str(json_path) == "-" or quiet:
        return
    width = console().width
    show(bench_table(report, width))
    if profile:
        show(op_type_table(report, width))
        if report.depthwise_nodes():
            show(depthwise_time_table(report, width))
    if plot is not None:
        say(f"plot saved to {plot}")


@app.command(cls=_Command)
def tune(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to tune (not modified)."),
    provider: Provider = "cpu",
    provider_option: ProviderOption = [],
    threads: Threads = None,
    opt_level: OptLevel = "all",
    batch: Batch = 1,
    dim: Dim = [],
    overwrite_input_shape: InputShape = [],
    input_data: InputData = [],
    inputs: InputsNpz = None,
    include: Include = None,
    exclude: Exclude = None,
    min_channels: MinChannels = None,
    min_speedup: MinSpeedup = 0.05,
    time_budget: TimeBudget = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG",
                                        help="Per-layer speedup of every candidate form as a PNG."),
    plan_out: Optional[Path] = typer.Option(None, "--plan-out", metavar="PLAN.json",
                                            help="Write the decisions as a plan file, for rewrite --plan anywhere."),
    verbose: Details = False,
    quiet: Quiet = False,
    json_path: JsonPath = None,
) -> None:
    """Time every depthwise layer as it is, block-diagonal with each G and in each lowering; report
    what 'auto' would do, and keep it as a plan file with --plan-out.

    Example: onnx-diagwise tune model.onnx --provider cuda --batch 64
    """
    from . import api
    from .model_io import load_model
    from .plot import plot_tuning, require_matplotlib
    from .render import tune_table

    _, selection = _check_flags("auto", include, exclude, min_channels)
    _log_details(verbose)
    config = _runtime(provider, provider_option, threads, opt_level)
    input_options = _inputs(batch, dim, overwrite_input_shape, input_data, inputs)
    _check_json_path(json_path)
    if plot is not None:
        require_matplotlib()
    loaded = load_model(model)
    input_options, sized = _sized_inputs(loaded.model, input_options, config)
    with _progress_bar(str(json_path) == "-") as progress:
        options = _tune_options(config, input_options, min_speedup, time_budget, no_cache, cache_dir, progress)
        report = api.tune(loaded.model, options, selection)
    _write_json(json_path, {"model": str(model), "input_shapes": sized.to_dict(), **report.to_dict()})
    if plot is not None:
        plot_tuning(report, plot)
    if plan_out is not None:
        report.save(plan_out)
    if str(json_path) != "-" and not quiet:
        show(tune_table(report, console().width, spelled))
        show(_lines(report.summary))
        if plan_out is not None:
            say(f"plan written to {plan_out}")


cache_app = typer.Typer(cls=_Group, help="The tuning cache of --group-size auto.", no_args_is_help=True,
                        context_settings=HELP_OPTIONS, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")


@cache_app.command("clear", cls=_Command)
def cache_clear(cache_dir: CacheDir = None, verbose: Details = False, quiet: Quiet = False) -> None:
    """Delete the cached layer timings."""
    from .tuning import clear_cache

    _log_details(verbose)
    removed = clear_cache(cache_dir)
    if not quiet:
        say(f"removed {removed}" if removed else "the tuning cache was already empty")


@cache_app.command("info", cls=_Command)
def cache_info(cache_dir: CacheDir = None, verbose: Details = False, quiet: Quiet = False) -> None:
    """Where the cache is and how many layer timings it holds."""
    from .tuning import TuneCache, default_cache_dir

    _log_details(verbose)
    cache = TuneCache(cache_dir or default_cache_dir())
    if not quiet:
        say(f"{cache.path}: {len(cache.entries)} layer timing(s)")


def error_text(exc: DiagwiseError) -> str:
    """A library error as this command line says it: flags for parameters, sizes to paste."""
    from .errors import UnsizedDims

    text = spelled(str(exc), exc.parameters)
    if isinstance(exc, UnsizedDims) and exc.example:  # the sizes to start from, as flags to paste
        example = " ".join(f"--overwrite-input-shape {shlex.quote(name + ':' + ','.join(map(str, shape)))}"
                           for name, shape in exc.example.items())
        text = text.replace(f"--overwrite-input-shape={exc.example}", example)
    return text


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: one line per error, never a traceback."""
    try:
        result = app(args=argv, prog_name="onnx-diagwise", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except DiagwiseError as exc:
        _error("error", error_text(exc))
        return 2
    except CheckFailed as exc:  # its message: what failed, the FAILED lines, what to do
        from .validation import failure_message

        _error("check failed", failure_message(exc.validation, exc.headline, spell=flag_option)
               if exc.validation is not None and exc.headline else str(exc))
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad int, missing argument
        if not exc.format_message():  # no arguments at all: typer already printed the help
            return 2
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "onnx-diagwise"
        _error("error", f"{exc.format_message()} (see '{command} --help')")
        return 2
    except typer.Abort:
        say("aborted", stderr=True)
        return 130
    except KeyboardInterrupt:
        say("interrupted", stderr=True)
        return 130
    except MemoryError:
        _error("error", "out of memory")
        return 2
    except Exception as exc:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("ONNX_DIAGWISE_DEBUG"):
            raise
        _error("internal error", f"{type(exc).__name__}: {exc} (set ONNX_DIAGWISE_DEBUG=1 for a traceback)")
        return 3


def _error(label: str, message: str) -> None:
    """LABEL: MESSAGE in red on stderr; a FAILED line of a failed check marked as validate marks it."""
    from rich.text import Text

    first, *rest = message.splitlines() or [""]
    console(True).print(Text(f"{label}:", style="red") + Text(f" {first}"), soft_wrap=True)
    for line in rest:
        status, sep, tail = line.partition(" | ")
        text = Text(status, style="red") + Text(sep + tail) if status == "FAILED" and sep else Text(line)
        console(True).print(text, soft_wrap=True)

