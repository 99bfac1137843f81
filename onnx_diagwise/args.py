"""The command line's option groups, shared by its commands (as Polygraphy's tools/args).

A group is a dataclass whose fields are typer options.  A command takes a group as one parameter;
`grouped` lays the group's options out in its place (in the group's order, so help lists them
there) and hands the command the filled group, which builds what the library takes
(RuntimeConfig, InputOptions, CheckOptions, TuneOptions, a Selection) and is the one place its
flags are checked.

Imports stay light (typer, the standard library): the library is imported when a group is used,
so `-h` and `--version` load neither onnx, numpy, onnxruntime, rich nor pydantic.  Words in help
texts stay short: click breaks a word longer than the description column (24 characters at 60
columns).
"""

import functools
import inspect
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import DiagwiseError
from .terminal import check_folder, log_details, write_json


def grouped(command):
    """COMMAND with each parameter typed as an option group replaced by the group's options, and
    called with the group filled from them."""
    signature = inspect.signature(command, eval_str=True)
    parameters, groups = [], {}
    for parameter in signature.parameters.values():
        group = parameter.annotation
        if not (isinstance(group, type) and is_dataclass(group)):
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        groups[parameter.name] = group
        for option in fields(group):
            default = option.default_factory() if option.default is MISSING else option.default
            parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                annotation=option.type))

    @functools.wraps(command)
    def run(**values: Any):
        for name, group in groups.items():
            values[name] = group(**{option.name: values.pop(option.name) for option in fields(group)})
        return command(**values)

    run.__signature__ = signature.replace(parameters=parameters)
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def tolerance(values: list[str], flag: str):
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


def pinned(values: list[str]) -> dict[str, Any]:
    """--node-group-size NAME=G or NAME=toeplitz / polyphase[:B][:2d][:fold] / conv2d (repeatable)."""
    from .plan import parse_choice

    choices: dict[str, Any] = {}
    for value in values:
        name, sep, choice = value.rpartition("=")
        if not sep or not name:
            raise DiagwiseError(f"--node-group-size expects NAME=G or NAME=FORM (toeplitz, polyphase[:B][:2d][:fold], "
                                f"conv2d); got '{value}'")
        choices[name] = parse_choice(choice, "--node-group-size")
    return choices


def _option(kind, *names: str, **settings: Any):
    return Annotated[kind, typer.Option(*names, **settings)]


# Where models run.
Provider = _option(str, "--provider", "-p", metavar="NAME", help=(
    "Execution provider: cpu, cuda, tensorrt, ... or a full name such as CUDAExecutionProvider."))
ProviderOption = _option(list[str], "--provider-option", metavar="KEY=VALUE",
                         help="An option of the provider, e.g. prefer_nhwc=1 or use_tf32=0. Repeatable.")
Threads = _option(Optional[int], "--threads", metavar="N", help="Intra-op threads (default: onnxruntime's).")
OptLevel = _option(str, "--opt-level", metavar="LEVEL", help="Graph optimization: disable, basic, extended, all.")


@dataclass
class ProviderArgs:
    """--provider, --provider-option, --threads (graph optimization 'all')."""

    provider: Provider = "cpu"
    provider_option: ProviderOption = field(default_factory=list)
    threads: Threads = None

    def config(self):
        """The RuntimeConfig; an unknown provider fails here, before any model is loaded."""
        from .runtime import RuntimeConfig, parse_key_values

        config = RuntimeConfig(self.provider, parse_key_values(self.provider_option, "--provider-option"),
                               self.threads, getattr(self, "opt_level", "all"))
        config.provider_full  # noqa: B018 - fails early on an unknown provider
        return config


@dataclass
class SessionArgs(ProviderArgs):
    """ProviderArgs and --opt-level."""

    opt_level: OptLevel = "all"


# What the models run on.
Batch = _option(int, "--batch", "-b", metavar="N", help="Value of a leading symbolic (batch) dim.")
Dim = _option(list[str], "--dim", metavar="NAME=V", help="The size of a symbolic dim. Repeatable.")
InputShape = _option(list[str], "--overwrite-input-shape", metavar="NAME:D1,D2,...",
                     help="One input's shape (onnxsim syntax). Repeatable.")
InputData = _option(list[str], "--input-data", metavar="NAME:FILE.npy", help="Real data for one input. Repeatable.")
InputsNpz = _option(Optional[Path], "--inputs", metavar="FILE.npz", help="Real data for the inputs, by name.")


@dataclass
class ShapeArgs:
    """--batch, --dim, --overwrite-input-shape: the sizes of symbolic input dims."""

    batch: Batch = 1
    dim: Dim = field(default_factory=list)
    overwrite_input_shape: InputShape = field(default_factory=list)

    def options(self):
        """The InputOptions (onnx_diagwise.dims sizes what these leave open)."""
        from .runtime import InputOptions, load_input_data, parse_dims, parse_input_shapes

        data, npz = getattr(self, "input_data", []), getattr(self, "inputs", None)
        if npz is not None and not npz.is_file():
            raise DiagwiseError(f"--inputs '{npz}' does not exist")
        return InputOptions(self.batch, parse_dims(self.dim), parse_input_shapes(self.overwrite_input_shape),
                            load_input_data(data, str(npz) if npz else None))


@dataclass
class InputArgs(ShapeArgs):
    """ShapeArgs and real input data: --input-data, --inputs."""

    input_data: InputData = field(default_factory=list)
    inputs: InputsNpz = None


# How outputs are compared.
TOLERANCE_RULE = ("An element passes when |candidate - original| <= atol + rtol * |original|. Defaults scale "
                  "with each output: rtol 1e-5 (float32/64), 1e-3 (float16), 1e-2 (bfloat16), 5e-3 (TF32), "
                  "and atol = rtol * the output's largest |value|, or 4x the runtime's own noise (how far "
                  "the original's output moves at another optimization level) when that is larger; "
                  "integers and bools must be equal. A value given is used as it is.")
Atol = _option(list[str], "--atol", metavar="V|NAME=V",
               help="Absolute tolerance: V for every output, or NAME=V for one. Repeatable. " + TOLERANCE_RULE)
Rtol = _option(list[str], "--rtol", metavar="V|NAME=V",
               help="Relative tolerance: V for every output, or NAME=V for one. Repeatable.")
AllowTf32 = _option(bool, "--allow-tf32", help="On CUDA, compare fp32 with TF32 enabled.")


@dataclass
class ToleranceArgs:
    """--atol, --rtol."""

    atol: Atol = field(default_factory=list)
    rtol: Rtol = field(default_factory=list)

    def check(self, runtime, inputs, runs: int, enabled: bool = True):
        """The CheckOptions: RUNS input sets on RUNTIME, compared with these tolerances."""
        from .files import CheckOptions

        atol, rtol = tolerance(self.atol, "--atol"), tolerance(self.rtol, "--rtol")
        return CheckOptions(enabled, runtime, inputs, runs, atol, rtol, getattr(self, "allow_tf32", False))


@dataclass
class CompareArgs(ToleranceArgs):
    """ToleranceArgs and --allow-tf32."""

    allow_tf32: AllowTf32 = False


# Which depthwise layers a command considers.
Include = _option(Optional[str], "--include", metavar="REGEX", help="Only nodes whose name matches this regex.")
Exclude = _option(Optional[str], "--exclude", metavar="REGEX", help="Skip nodes whose name matches this regex.")
MinChannels = _option(Optional[int], "--min-channels", metavar="N", help="Skip nodes with fewer channels.")


@dataclass
class SelectArgs:
    """--include, --exclude, --min-channels."""

    include: Include = None
    exclude: Exclude = None
    min_channels: MinChannels = None

    def choose(self, group_size: str):
        """(policy, Selection): the library's own checks of these flags, before any model is loaded."""
        from .plan import Selection, parse_policy

        choices = pinned(getattr(self, "node_group_size", []))
        return parse_policy(group_size), Selection(
            self.include, self.exclude, self.min_channels, not getattr(self, "skip_dynamic", False), choices)


@dataclass
class RewriteSelectArgs(SelectArgs):
    """SelectArgs worded for rewrite, and --node-group-size, --skip-dynamic."""

    include: _option(Optional[str], "--include", metavar="REGEX",
                     help="Only rewrite nodes whose name matches this regex.") = None
    exclude: _option(Optional[str], "--exclude", metavar="REGEX",
                     help="Never rewrite nodes whose name matches this regex.") = None
    min_channels: _option(Optional[int], "--min-channels", metavar="N",
                          help="Leave nodes with fewer channels depthwise.") = None
    node_group_size: _option(list[str], "--node-group-size", metavar="NAME=G|FORM", help=(
        "Exact G (must divide its C) or form (toeplitz, polyphase[:B][:2d][:fold], conv2d) for one node. "
        "Repeatable.")) = field(default_factory=list)
    skip_dynamic: _option(bool, "--skip-dynamic",
                          help="Leave nodes whose weight is a graph input or computed alone.") = False


# How 'auto' measures.
CacheDir = _option(Optional[Path], "--cache-dir", metavar="DIR",
                   help="auto: the tuning cache; default: ~/.cache/onnx-diagwise")


@dataclass
class TuneArgs:
    """--min-speedup, --time-budget, --no-cache, --cache-dir."""

    min_speedup: _option(float, "--min-speedup", metavar="F", help=(
        "auto: a layer is rewritten only if at least this much faster (0.05 = 5%).")) = 0.05
    time_budget: _option(Optional[float], "--time-budget", metavar="SECONDS", help=(
        "auto: seconds for tuning; layers not tuned in time stay depthwise.")) = None
    no_cache: _option(bool, "--no-cache", help="auto: measure again, ignore the tuning cache.") = False
    cache_dir: CacheDir = None

    def options(self, runtime, inputs, progress):
        """The TuneOptions: measured on RUNTIME with INPUTS, PROGRESS told of each layer."""
        from .api import TuneOptions

        return TuneOptions(runtime, inputs, self.min_speedup, self.time_budget, self.cache_dir, not self.no_cache,
                           None, progress)


# What is printed, and where the report goes.
JSON_HELP = "Write the report as JSON to PATH ('-' for stdout, which replaces the tables)."
JsonPath = _option(Optional[Path], "--json", metavar="PATH", help=JSON_HELP)
Quiet = _option(bool, "--quiet", "-q", help="Print nothing but errors and warnings.")
Details = _option(bool, "--verbose", "-v", help="Print details on stderr, e.g. which CUDA libraries were loaded.")


class _Output:
    """Where the report goes (--json) and how much is printed (-v, -q)."""

    json_path: Path | None = None

    def begin(self) -> None:
        """Before any work: details on stderr with -v; a --json folder that does not exist refused."""
        log_details(self.verbose)
        check_folder(self.json_path)

    @property
    def tables(self) -> bool:
        """Whether to print tables: neither -q nor the JSON on stdout."""
        return not self.quiet and str(self.json_path) != "-"

    def write(self, data: dict[str, Any]) -> None:
        write_json(self.json_path, data)


@dataclass
class Printing(_Output):
    """-v, -q."""

    verbose: Details = False
    quiet: Quiet = False


@dataclass
class Reporting(Printing):
    """-v, -q, --json."""

    json_path: JsonPath = None


@dataclass
class InspectReporting(_Output):
    """--json, -v, -q."""

    json_path: JsonPath = None
    verbose: Details = False
    quiet: Quiet = False


@dataclass
class WriteReporting(_Output):
    """--json, -v (the per-node table too), -q: of the commands that write a model."""

    json_path: JsonPath = None
    verbose: _option(bool, "--verbose", "-v",
                     help="Also print the per-node table, and which CUDA libraries were loaded.") = False
    quiet: Quiet = False
