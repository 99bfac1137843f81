"""Each command's whole job on files, returning data: what `onnx-diagwise <command>` runs.

rewrite_file / revert_file load, rewrite (or revert), check on onnxruntime and save atomically:
the output is checked before anything is written, may not clobber the input or any file the
input reads, keeps external data when the input had it (or past 2 GiB), and is renamed into
place only once complete and checked.  inspect_file, validate_file, bench_file and tune_file
load their models (one clear error for a missing or broken file), size the inputs' symbolic
dims once (onnx_diagwise.dims) and return the report with those sizes (FileReport).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import api
from .dims import InputShapes, with_input_shapes
from .errors import CheckFailed, DiagwiseError, RuntimeMissing, UnsizedDims
from .model_io import LoadedModel, check_output_path, load_model, save_model
from .plan import Auto, Selection
from .report import RewriteResult
from .reverter import revert as revert_model
from .runtime import InputOptions, RuntimeConfig
from .validation import Tolerance, ValidationReport, failure_message, validate

log = logging.getLogger("onnx_diagwise")
Step = Callable[[str], None]  # told what is being done now (for a progress display)
# Added to a sizing error when only the check needs the sizes.
CHECK_ESCAPE = "the check runs the model; check=False skips it"


@dataclass
class CheckOptions:
    """How a result is checked against its input before it is written (the check is on by default)."""

    enabled: bool = True
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # also what 'auto' measures on
    inputs: InputOptions = field(default_factory=InputOptions)
    runs: int = 1  # input sets (--check-n)
    atol: Tolerance = None
    rtol: Tolerance = None
    allow_tf32: bool = False


@dataclass
class FileResult:
    """What rewrite_file / revert_file did."""

    result: RewriteResult  # the report (and the tuning, for 'auto'); result.model is what was written
    output: Path
    data_path: Path | None  # OUTPUT's external data file, when written
    file_bytes_before: int  # the input and its external data
    file_bytes_after: int
    validation: ValidationReport | None  # None when check=False or nothing changed
    input_shapes: InputShapes | None  # how symbolic input dims were sized for the check / tuning

    @property
    def modified(self) -> bool:
        return self.result.report.modified

    @property
    def report(self):
        return self.result.report

    def to_dict(self, source: str | os.PathLike) -> dict[str, Any]:
        return {"input": str(source), "output": str(self.output),
                "external_data": str(self.data_path) if self.data_path else None,
                "file_bytes_before": self.file_bytes_before, "file_bytes_after": self.file_bytes_after,
                "input_shapes": self.input_shapes.to_dict() if self.input_shapes else None,
                **self.report.to_dict(),
                "check": self.validation.to_dict() if self.validation else None,
                "tuning": self.result.tuning.to_dict() if self.result.tuning else None}


def _open(src: Path, dst: Path) -> tuple[LoadedModel, list[Path]]:
    """Load SRC after making sure DST can be written and clobbers nothing SRC needs; also return
    the files DST's writing must leave alone (SRC and its external data)."""
    if not src.exists():
        raise DiagwiseError(f"input model '{src}' does not exist")
    check_output_path(dst, [src])
    loaded = load_model(src)
    protected = [src, *loaded.external_files]
    check_output_path(dst, protected)
    return loaded, protected


def _options(check: CheckOptions | bool) -> CheckOptions:
    return check if isinstance(check, CheckOptions) else CheckOptions(enabled=bool(check))


def _sized(model, check: CheckOptions, escape: str | None) -> tuple[CheckOptions, InputShapes]:
    """CHECK with the inputs' symbolic dims sized once, for the check and the tuning alike."""
    try:
        inputs, sized = with_input_shapes(model, check.inputs, check.runtime)
    except DiagwiseError as exc:
        if not escape:
            raise
        raise type(exc)(f"{exc} ({escape})", *exc.parameters, "check=False",
                        **({"example": exc.example} if isinstance(exc, UnsizedDims) else {})) from None
    return replace(check, inputs=inputs), sized


def _save(result: RewriteResult, loaded: LoadedModel, src: Path, dst: Path, protected: list[Path],
          external_data: bool | None, check: CheckOptions, what: str, step: Step) -> FileResult:
    validation = None

    def check_written(path: Path) -> None:
        """onnxruntime reads the complete temporary file, so no serialized copy is held in memory."""
        nonlocal validation
        step(f"checking the {what} model")
        validation = validate(src, path, check.runtime, check.inputs, check.runs, check.atol, check.rtol,
                              check.allow_tf32)
        if not validation.passed:
            headline = f"the {what} model differs from the original on {validation.provider}; nothing written to '{dst}'"
            raise CheckFailed(failure_message(validation, headline), validation, headline)

    modified = result.report.modified
    if external_data is None and loaded.has_external_data:
        external_data = True
    step(f"saving {dst}")
    data_path = save_model(result.model, dst, external_data, keep_model=False,
                           before_commit=check_written if check.enabled and modified else None,
                           protected=protected)
    after = dst.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return FileResult(result, dst, data_path, loaded.file_bytes, after, validation, None)


@dataclass(frozen=True)
class SaveOptions:
    """How the output is written."""

    external_data: bool | None = None  # None: as the input had it, or past protobuf's 2 GiB
    step: Step | None = None  # told what is being done now (a progress display)
    warn_growth: float = api.DEFAULT_WARN_GROWTH  # warn when the weights grow more than this factor


def rewrite_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    group_size: Any = None,
    selection: Selection | None = None,
    tune_options: api.TuneOptions | None = None,
    check: CheckOptions | bool = True,
    save: SaveOptions = SaveOptions(),
) -> FileResult:
    """Rewrite the model at SRC and write it to DST, checked against SRC first (CheckOptions; CPU by
    default): raises CheckFailed (with .validation) and writes nothing if any output differs.

    group_size is a policy (see onnx_diagwise.plan; 'paper' by default) or a plan file's
    TunedPlan (see rewrite()); for 'auto', tune_options (default: on check.runtime) says how layers
    are measured."""
    src, dst, step, check = Path(src), Path(dst), save.step or (lambda text: None), _options(check)
    warn_growth = save.warn_growth
    auto = isinstance(api.policy_of(group_size), Auto)
    step(f"loading {src}")
    loaded, protected = _open(src, dst)
    sized = None
    if check.enabled or auto:
        step("sizing the inputs")
        escape = None if auto else CHECK_ESCAPE
        check, sized = _sized(loaded.model, check, escape)
    if auto:
        tune_options = replace(tune_options or api.TuneOptions(check.runtime), inputs=check.inputs)
    step("tuning" if auto else "rewriting")
    result = api._rewrite(loaded.model, group_size, selection, tune_options, sized.shapes if sized else None,
                          warn_growth, copy=False)
    written = _save(result, loaded, src, dst, protected, save.external_data, check, "rewritten", step)
    written.input_shapes = sized
    return written


def revert_file(src: str | os.PathLike, dst: str | os.PathLike, check: CheckOptions | bool = True,
                save: SaveOptions = SaveOptions()) -> FileResult:
    """Turn the block-diagonal convolutions and lowered groups of SRC back into depthwise ones and
    write DST, checked against SRC first (as rewrite_file)."""
    src, dst, step, check = Path(src), Path(dst), save.step or (lambda text: None), _options(check)
    step(f"loading {src}")
    loaded, protected = _open(src, dst)
    sized = None
    if check.enabled:
        step("sizing the inputs")
        check, sized = _sized(loaded.model, check, CHECK_ESCAPE)
    step("reverting")
    result = revert_model(loaded.model, copy=False)
    written = _save(result, loaded, src, dst, protected, save.external_data, check, "reverted", step)
    written.input_shapes = sized
    return written


@dataclass
class FileReport:
    """What inspect_file / validate_file / bench_file / tune_file found: the library's report, the
    files it read, and how their inputs' symbolic dims were sized (None: they could not be)."""

    report: Any  # RewriteReport (inspect), ValidationReport, BenchReport or TuneReport
    sources: dict[str, str]  # the files read, by role: {"model": ...}, {"original": ..., "candidate": ...}
    input_shapes: InputShapes | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.sources, "input_shapes": self.input_shapes.to_dict() if self.input_shapes else None,
                **self.report.to_dict()}


def inspect_file(path: str | os.PathLike, group_size: Any = "paper", selection: Selection | None = None,
                 inputs: InputOptions | None = None) -> FileReport:
    """api.inspect() of the model at PATH, its FLOPs counted at the inputs' sizes: symbolic dims are
    sized as for the check (sizes are tried on onnxruntime when it is installed); dims that cannot
    be sized leave the FLOPs unknown (logged)."""
    loaded = load_model(path)
    try:
        _, sized = with_input_shapes(loaded.model, inputs)
    except (UnsizedDims, RuntimeMissing) as exc:  # inspect works without them
        sized = None
        log.info(f"FLOPs not counted: {exc}")
    report = api.inspect(loaded.model, group_size, selection, input_shapes=sized.shapes if sized else None)
    return FileReport(report, {"model": str(path)}, sized)


def validate_file(original: str | os.PathLike, candidate: str | os.PathLike, check: CheckOptions | None = None,
                  seed: int = 0) -> FileReport:
    """validate() the model at CANDIDATE against ORIGINAL as CHECK says (check.runs input sets, 3
    by default; seeds SEED, SEED+1, ...), their inputs sized once from ORIGINAL."""
    check = check or CheckOptions(runs=3)
    first = load_model(original).model
    load_model(candidate)
    inputs, sized = with_input_shapes(first, check.inputs, check.runtime)
    report = validate(original, candidate, check.runtime, inputs, check.runs, check.atol, check.rtol,
                      check.allow_tf32, seed)
    return FileReport(report, {"original": str(original), "candidate": str(candidate)}, sized)


def bench_file(paths: list[str | os.PathLike], runtime: RuntimeConfig | None = None,
               inputs: InputOptions | None = None, **timing: Any) -> FileReport:
    """bench.benchmark() of the models at PATHS (ratios relative to the first), named by their
    paths, their inputs sized once from the first; TIMING: warmup, iterations, seconds, iobinding,
    profile (see benchmark)."""
    from .bench import benchmark

    runtime = runtime or RuntimeConfig()
    first = load_model(paths[0]).model if paths else None
    for path in paths[1:]:
        load_model(path)
    inputs, sized = with_input_shapes(first, inputs, runtime) if first is not None else (inputs, None)
    report = benchmark(list(paths), runtime, inputs, names=[str(p) for p in paths], **timing)
    return FileReport(report, {}, sized)


def tune_file(path: str | os.PathLike, options: api.TuneOptions | None = None,
              selection: Selection | None = None) -> FileReport:
    """api.tune() of the model at PATH (what 'auto' would do, layer by layer), its inputs sized once
    on options.provider."""
    options = options or api.TuneOptions()
    loaded = load_model(path)
    inputs, sized = with_input_shapes(loaded.model, options.inputs, options.config)
    report = api.tune(loaded.model, replace(options, inputs=inputs), selection)
    return FileReport(report, {"model": str(path)}, sized)
