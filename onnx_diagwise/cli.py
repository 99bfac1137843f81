"""The onnx-diagwise command line: a thin layer over the library.

Each command parses its flags (option groups shared by the commands: onnx_diagwise.args), calls
one function of onnx_diagwise.files, prints what it returns (onnx_diagwise.render, through
onnx_diagwise.terminal) and maps errors to exit codes: 0 success, 1 a check failed, 2 bad input
or usage, 3 internal error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .args import (CacheDir, CompareArgs, InputArgs, InspectReporting, Printing, ProviderArgs, Reporting,
                   RewriteSelectArgs, SelectArgs, SessionArgs, ShapeArgs, ToleranceArgs, TuneArgs, WriteReporting,
                   grouped)
from .errors import CheckFailed, DiagwiseError
from .flags import flag_option, spelled
from .terminal import Command, Group, console, error, progress_bar, say, show, warn, working

# onnx, numpy, onnxruntime and rich are imported by the commands that use them: --version and
# --help print in a fraction of a second.

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

# click's plain help, not rich's panels: these cut option names at narrow widths.
app = typer.Typer(
    cls=Group,
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

GROUP_SIZE_HELP = ("The form of each depthwise layer: 'auto' (measure every candidate G and lowering on --provider "
                   "and rewrite only what makes the model faster), an integer N (block-diagonal, G = the largest "
                   "divisor of C <= N), 'paper' (N=32, the authors' choice), 'full' (G=C, one dense conv), or a "
                   "lowering for every layer it applies to: 'toeplitz', 'polyphase[:B][:2d][:fold]', 'conv2d'.")
INSPECT_GROUP_SIZE_HELP = ("The form of each depthwise layer: an integer N (block-diagonal, G = the largest divisor "
                           "of C <= N), 'paper' (N=32, the authors' choice), 'full' (G=C, one dense conv), or "
                           "'toeplitz', 'polyphase[:B][:2d][:fold]', 'conv2d'. What 'auto' would do is measured: "
                           "use tune.")
# The library's default (api.DEFAULT_WARN_GROWTH), here so that help needs no onnx.
WARN_GROWTH = 2.0

# Options of the commands that write a model (rewrite, revert).
ExternalData = Annotated[Optional[bool], typer.Option(
    "--external-data/--no-external-data",
    help="Save weights to OUTPUT.data. Default: as the input did, or when the model passes 2 GiB.")]
Check = Annotated[bool, typer.Option("--check/--no-check",
                                     help="Validate the result against the original before writing it.")]
CheckN = Annotated[int, typer.Option("--check-n", metavar="N", help="Input sets for the check.")]


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


@app.command(cls=Command)
@grouped
def inspect(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to inspect."),
    group_size: str = typer.Option("paper", "--group-size", "-g", metavar="N|paper|full",
                                   help=INSPECT_GROUP_SIZE_HELP),
    *,
    select: SelectArgs,
    shapes: ShapeArgs,
    printing: InspectReporting,
) -> None:
    """List every depthwise / grouped Conv and what rewrite would do with it.

    FLOPs need the inputs' sizes: symbolic dims are sized as for the check (onnxruntime tries
    sizes when it is installed); dims that cannot be sized leave the FLOPs unknown.

    Example: onnx-diagwise inspect model.onnx --group-size full
    """
    policy, selection = select.choose(group_size)
    printing.begin()
    inputs = shapes.options()
    from .files import inspect_file
    from .render import inspect_view

    result = inspect_file(model, policy, selection, inputs)
    printing.write(result.to_dict())
    if printing.tables:
        show(inspect_view(result, console().width, spelled))


def _print_written(written, source: Path, printing: WriteReporting) -> None:
    from .render import written_view

    printing.write(written.to_dict(source))
    for warning in written.report.warnings:
        warn(spelled(warning, getattr(warning, "parameters", ())))
    if printing.tables:
        show(written_view(written, console().width, printing.verbose, spelled))


@app.command(cls=Command)
@grouped
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
    *,
    select: RewriteSelectArgs,
    external_data: ExternalData = None,
    warn_growth: float = typer.Option(WARN_GROWTH, metavar="X", help="Warn when weights grow more than this factor."),
    printing: WriteReporting,
    check: Check = True,
    check_n: CheckN = 1,
    session: SessionArgs,
    data: InputArgs,
    tolerances: CompareArgs,
    tuning: TuneArgs,
) -> None:
    """Rewrite depthwise convolutions into block-diagonal grouped ones, check, and save the model.

    --group-size auto times every layer on --provider and keeps only rewrites that make the
    whole model faster; it never writes a model it measured slower than the original.

    The result is run against the original on --provider (CPU by default) and written only if
    every output matches, each judged against the runtime's own noise as well as the tolerance;
    --no-check skips that.

    Example: onnx-diagwise rewrite model.onnx model.diag.onnx --group-size 32 -v
    """
    from .files import SaveOptions, rewrite_file
    from .plan import Auto

    if plan is not None and group_size is not None:
        raise DiagwiseError("give --group-size or --plan, not both: a plan says each node's form")
    if plan_lenient and plan is None:
        raise DiagwiseError("--plan-lenient goes with --plan")
    policy, selection = select.choose(group_size or "paper")
    printing.begin()
    auto = plan is None and isinstance(policy, Auto)
    if plan_out is not None and not auto:
        raise DiagwiseError("--plan-out needs --group-size auto (a plan records what was measured)")
    if plan is not None:
        from .tuning.planfile import PlanPolicy, TunedPlan

        policy = PlanPolicy(TunedPlan.load(plan), plan_lenient)
    config, inputs = session.config(), data.options()
    checking = tolerances.check(config, inputs, check_n, check)
    with progress_bar(printing.quiet or not auto) as progress, working("loading", printing.quiet or auto) as step:
        written = rewrite_file(input, output, policy, selection,
                               tuning.options(config, inputs, progress) if auto else None, checking,
                               SaveOptions(external_data, step, warn_growth))
    if plan_out is not None:
        written.result.tuning.save(plan_out)
    _print_written(written, input, printing)
    if plan_out is not None and not printing.quiet:
        say(f"plan written to {plan_out}")


@app.command("revert", cls=Command)
@grouped
def revert_command(
    input: Path = typer.Argument(..., metavar="INPUT", help="ONNX model to revert (never modified)."),
    output: Path = typer.Argument(..., metavar="OUTPUT", help="Where to write the reverted model."),
    external_data: ExternalData = None,
    *,
    printing: WriteReporting,
    check: Check = True,
    check_n: CheckN = 1,
    runtime: ProviderArgs,
    data: InputArgs,
    tolerances: ToleranceArgs,
) -> None:
    """Turn block-diagonal grouped convolutions (this tool's or anyone's) back into depthwise ones.

    Only weights whose off-diagonal entries are all zero (or the zero point) are collapsed;
    the result is checked against the input before it is written.

    Example: onnx-diagwise revert model.diag.onnx model.onnx
    """
    from .files import SaveOptions, revert_file

    printing.begin()
    config, inputs = runtime.config(), data.options()
    checking = tolerances.check(config, inputs, check_n, check)
    with working("loading", printing.quiet) as step:
        written = revert_file(input, output, checking, SaveOptions(external_data, step))
    _print_written(written, input, printing)


@app.command(cls=Command)
@grouped
def validate(
    original: Path = typer.Argument(..., metavar="ORIGINAL", help="The reference model."),
    candidate: Path = typer.Argument(..., metavar="CANDIDATE",
                                     help="The model to check against it (e.g. a rewritten one)."),
    *,
    session: SessionArgs,
    check_n: int = typer.Option(3, "--check-n", metavar="N", help="Random input sets (seeds --seed, --seed+1, ...)."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed of the first random input set."),
    tolerances: CompareArgs,
    data: InputArgs,
    printing: Reporting,
) -> None:
    """Run two models on the same inputs and compare every output (exit 1 if any differs).

    Each output is judged against the tolerance and against the runtime's own noise: how far the
    original's outputs move when it runs again at another graph optimization level.

    Example: onnx-diagwise validate model.onnx model.diag.onnx --provider cuda --check-n 5
    """
    from .files import validate_file
    from .render import validation_view

    printing.begin()
    config, inputs = session.config(), data.options()
    checking = tolerances.check(config, inputs, check_n)
    with working("running both models", printing.quiet):
        result = validate_file(original, candidate, checking, seed)
    printing.write(result.to_dict())
    if printing.tables:
        show(validation_view(result.report, flag_option))
    if not result.report.passed:
        raise typer.Exit(1)


@app.command(cls=Command)
@grouped
def bench(
    models: list[Path] = typer.Argument(..., metavar="MODEL...",
                                        help="Models to time; ratios are relative to the first."),
    *,
    session: SessionArgs,
    data: InputArgs,
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
    printing: Reporting,
) -> None:
    """Time models side by side in one process, interleaved, on identical inputs.

    Example: onnx-diagwise bench model.onnx model.diag.onnx --provider cuda --batch 64 --profile
    """
    from .files import bench_file
    from .plot import plot_bench, require_matplotlib
    from .render import bench_view
    from .terminal import check_folder

    printing.begin()
    config, inputs = session.config(), data.options()
    if plot is not None:
        require_matplotlib()
        check_folder(plot, "--plot")
    result = bench_file(models, config, inputs, warmup=warmup, iterations=iterations, seconds=seconds,
                        iobinding=iobinding, profile=profile)
    printing.write(result.to_dict())
    if plot is not None:
        plot_bench(result.report, plot)
    if printing.tables:
        show(bench_view(result.report, console().width))
        if plot is not None:
            say(f"plot saved to {plot}")


@app.command(cls=Command)
@grouped
def tune(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to tune (not modified)."),
    *,
    session: SessionArgs,
    data: InputArgs,
    select: SelectArgs,
    tuning: TuneArgs,
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG",
                                        help="Per-layer speedup of every candidate form as a PNG."),
    plan_out: Optional[Path] = typer.Option(None, "--plan-out", metavar="PLAN.json",
                                            help="Write the decisions as a plan file, for rewrite --plan anywhere."),
    printing: Reporting,
) -> None:
    """Time every depthwise layer as it is, block-diagonal with each G and in each lowering; report
    what 'auto' would do, and keep it as a plan file with --plan-out.

    Example: onnx-diagwise tune model.onnx --provider cuda --batch 64
    """
    from .files import tune_file
    from .plot import plot_tuning, require_matplotlib
    from .render import tune_view

    _, selection = select.choose("auto")
    printing.begin()
    config, inputs = session.config(), data.options()
    if plot is not None:
        require_matplotlib()
    with progress_bar(str(printing.json_path) == "-") as progress:
        result = tune_file(model, tuning.options(config, inputs, progress), selection)
    printing.write(result.to_dict())
    if plot is not None:
        plot_tuning(result.report, plot)
    if plan_out is not None:
        result.report.save(plan_out)
    if printing.tables:
        show(tune_view(result.report, console().width, spelled))
        if plan_out is not None:
            say(f"plan written to {plan_out}")


cache_app = typer.Typer(cls=Group, help="The tuning cache of --group-size auto.", no_args_is_help=True,
                        context_settings=HELP_OPTIONS, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")


@cache_app.command("clear", cls=Command)
@grouped
def cache_clear(cache_dir: CacheDir = None, *, printing: Printing) -> None:
    """Delete the cached layer timings."""
    from .tuning import clear_cache

    printing.begin()
    removed = clear_cache(cache_dir)
    if not printing.quiet:
        say(f"removed {removed}" if removed else "the tuning cache was already empty")


@cache_app.command("info", cls=Command)
@grouped
def cache_info(cache_dir: CacheDir = None, *, printing: Printing) -> None:
    """Where the cache is and how many layer timings it holds."""
    from .tuning import TuneCache, default_cache_dir

    printing.begin()
    cache = TuneCache(cache_dir or default_cache_dir())
    if not printing.quiet:
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
        error("error", error_text(exc))
        return 2
    except CheckFailed as exc:  # its message: what failed, the FAILED lines, what to do
        from .validation import failure_message

        error("check failed", failure_message(exc.validation, exc.headline, spell=flag_option)
              if exc.validation is not None and exc.headline else str(exc))
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad int, missing argument
        message = exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError" or not message:
            # no arguments at all: the help as it is (newer click gives it as the message; older printed it)
            if message:
                say(message, stderr=True)
            return 2
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "onnx-diagwise"
        error("error", f"{message} (see '{command} --help')")
        return 2
    except typer.Abort:
        say("aborted", stderr=True)
        return 130
    except KeyboardInterrupt:
        say("interrupted", stderr=True)
        return 130
    except MemoryError:
        error("error", "out of memory")
        return 2
    except Exception as exc:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("ONNX_DIAGWISE_DEBUG"):
            raise
        error("internal error", f"{type(exc).__name__}: {exc} (set ONNX_DIAGWISE_DEBUG=1 for a traceback)")
        return 3
