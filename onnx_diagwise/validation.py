"""Run an original and a candidate model on the same inputs and compare every output."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
from onnx import ModelProto, TensorProto

from .errors import DiagwiseError
from .model_io import as_model
from .dims import make_inputs, with_input_shapes
from .runtime import InputOptions, RuntimeConfig, create_session, run_session
from .shapes import infer_value_types

# Tolerances scale with each output: an element passes when |actual - expected| <= atol + rtol * |expected|,
# with the default atol = rtol * max|expected| of that output, so an error is judged against the
# output's own size (an absolute 1e-5 would pass a whole output of small values scaled by 0.99).
# The defaults, by the precision an output is computed in, leave about 10x room over the summation-
# order differences of exact rewrites of whole networks (fp32: 9e-7 of the scale, fp16: 1.1e-4).
DEFAULT_RTOL = {"float64": 1e-5, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
# fp32 under TF32 (CUDA, when allowed) keeps 10 mantissa bits, like fp16.
TF32_RTOL = 5e-3
# Ops that move or reshape values without computing: an output behind them has the precision of their input.
LAYOUT_OPS = {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Slice", "Gather",
              "Concat", "Split", "Pad", "Tile", "DepthToSpace", "SpaceToDepth"}
LOW_PRECISION = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
# A user's --atol / --rtol: one value for every output, or per output name.
Tolerance = float | Mapping[str, float] | None

# The runtime's own noise: the original runs a second time, on the same inputs, in another
# configuration its provider's family chooses (another graph optimization level); how far its
# outputs move is the noise floor, and the default atol of each output is at least NOISE_FACTOR
# times it.  Outputs that sit near 0 (sigmoid maps on random inputs) have a default atol far below
# what onnxruntime itself can resolve there.
NOISE_FACTOR = 4
# An error within this many times the noise floor is likely rounding that the inputs magnify.
FEW_TIMES_NOISE = 10


@dataclass
class OutputComparison:
    name: str
    passed: bool
    message: str
    shape: list[int] | None = None
    dtype: str | None = None
    precision: str | None = None  # the dtype the output is computed in, when lower than its own (a Cast)
    atol: float | None = None  # absolute, as applied (the default one scaled to the output)
    rtol: float | None = None
    scale: float | None = None  # max |expected|: the output's magnitude
    max_abs: float | None = None
    max_rel: float | None = None  # over elements with |expected| > atol (not near zero)
    mismatches: int = 0
    elements: int = 0
    worst_index: list[int] | None = None
    noise: float | None = None  # max |original - original at another optimization level|; None: not measured

    def line(self) -> str:
        """One Polygraphy-style line."""
        status = "PASSED" if self.passed else "FAILED"
        return f"{status} | output '{self.name}' | {self.message}"


@dataclass
class ValidationReport:
    provider: str
    runs: int
    outputs: list[OutputComparison]
    tf32: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    noise_config: dict[str, Any] | None = None  # the original's second configuration; None: noise not measured

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        ok = sum(o.passed for o in self.outputs)
        return f"{ok}/{len(self.outputs)} outputs passed ({self.runs} run(s) on {self.provider})"

    def to_dict(self) -> dict[str, Any]:
        noise = {"factor": NOISE_FACTOR, "config": self.noise_config} if self.noise_config else None
        return {"passed": self.passed, "provider": self.provider, "runs": self.runs, "tf32": self.tf32,
                "config": self.config, "noise_floor": noise, "outputs": [asdict(o) for o in self.outputs]}


def tolerance_for(dtype: np.dtype, scale: float, atol: float | None = None, rtol: float | None = None,
                  tf32: bool = False, precision: str | None = None) -> tuple[float, float]:
    """(atol, rtol) for an output of DTYPE whose values reach SCALE: exact for integers and bools;
    for floats rtol by the precision it is computed in (PRECISION, else DTYPE) and atol = rtol * SCALE.
    A value the user gives is used as it is."""
    if dtype.kind in "biuSUO":
        return (0.0 if atol is None else atol, 0.0 if rtol is None else rtol)
    computed = precision or dtype.name
    default = TF32_RTOL if tf32 and computed == "float32" else DEFAULT_RTOL.get(computed, 1e-5)
    return (default * scale if atol is None else atol, default if rtol is None else rtol)


def for_output(tolerance: Tolerance, name: str) -> float | None:
    """The user's tolerance for output NAME: per-name, else the one for all ('' key), else None."""
    if tolerance is None or isinstance(tolerance, (int, float)):
        return tolerance
    return tolerance.get(name, tolerance.get(""))


def check_tolerances(atol: Tolerance, rtol: Tolerance, outputs: list[str]) -> None:
    for parameter, tolerance in (("atol", atol), ("rtol", rtol)):
        values = tolerance.items() if isinstance(tolerance, Mapping) else [("", tolerance)]
        for name, value in values:
            if name and name not in outputs:
                raise DiagwiseError(f"{parameter} names '{name}', which is not an output of the model "
                                    f"(outputs: {', '.join(outputs)})", parameter)
            if value is not None and not value >= 0:  # NaN too
                raise DiagwiseError(f"{parameter} must be >= 0; got {value}", parameter)


def _number(value) -> str:
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def computed_in(model: ModelProto) -> dict[str, str]:
    """{output: 'float16' or 'bfloat16'} for the float outputs that are a Cast of lower-precision values
    (through layout ops), as fp16 converters with keep_io_types write: such an output carries the
    rounding of float16 compute and is compared as float16."""
    producers = {out: node for node in model.graph.node for out in node.output}
    types = infer_value_types(model)
    found = {}
    for output in model.graph.output:
        name, steps = output.name, 0
        while name in producers and steps < 64:
            node, steps = producers[name], steps + 1
            if node.op_type == "Cast":
                source = types.get(node.input[0], (None, None))[0]
                if source in LOW_PRECISION:
                    found[output.name] = LOW_PRECISION[source]
                break
            if node.op_type not in LAYOUT_OPS or not node.input:
                break
            name = node.input[0]
    return found


def noise_floor(expected: np.ndarray, other: np.ndarray) -> float | None:
    """Max |OTHER - EXPECTED| over the elements finite in both: how far the runtime's own results of
    one float output move between two configurations (None for other dtypes or shapes)."""
    expected, other = np.asarray(expected), np.asarray(other)
    if expected.dtype.kind in "biuSUO" or expected.shape != other.shape or expected.dtype != other.dtype:
        return None
    e, o = expected.astype(np.float64), other.astype(np.float64)
    both = np.isfinite(e) & np.isfinite(o)
    return float(np.abs(o[both] - e[both]).max()) if both.any() else 0.0


def compare(name: str, expected: np.ndarray | None, actual: np.ndarray | None,
            atol: float | None = None, rtol: float | None = None, tf32: bool = False,
            precision: str | None = None, noise: float | None = None) -> OutputComparison:
    """Compare ACTUAL to EXPECTED as numpy.isclose does (|a - e| <= atol + rtol * |e|, NaN == NaN),
    with tolerance_for's scale-aware defaults (for the PRECISION the output is computed in); NOISE,
    the runtime's own noise floor for this output, raises the default atol to NOISE_FACTOR times it."""
    if actual is None:
        return OutputComparison(name, False, "missing from the candidate's outputs")
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return OutputComparison(name, False, f"shape {list(actual.shape)} differs from the original's "
                                f"{list(expected.shape)}", shape=list(expected.shape))
    if expected.dtype != actual.dtype:
        return OutputComparison(name, False, f"dtype {actual.dtype} differs from the original's {expected.dtype}",
                                shape=list(expected.shape), dtype=str(expected.dtype))
    # Integers are compared exactly unless the user gives a tolerance (±1 of a quantized output, say);
    # strings (onnxruntime returns them as object arrays) always are, and have no scale.
    text = expected.dtype.kind in "SUO"
    exact = text or expected.dtype.kind == "b" or (expected.dtype.kind in "iu" and atol is None and rtol is None)
    e = expected if exact else expected.astype(np.float64)
    a = actual if exact else actual.astype(np.float64)
    if text:
        scale = 0.0
    else:
        finite = np.abs(e.astype(np.float64)) if exact else np.abs(e[np.isfinite(e)])
        scale = float(finite.max()) if finite.size else 0.0
    lower = precision if precision and not exact and precision != expected.dtype.name else None
    a_tol, r_tol = tolerance_for(expected.dtype, scale, atol, rtol, tf32, lower)
    noise = None if exact else noise
    from_noise = atol is None and noise is not None and NOISE_FACTOR * noise > a_tol
    if from_noise:
        a_tol = NOISE_FACTOR * noise
    result = OutputComparison(name, True, "", shape=list(expected.shape), dtype=str(expected.dtype), precision=lower,
                              atol=a_tol, rtol=r_tol, scale=scale, elements=int(expected.size), noise=noise)
    tol_text = (f"(atol {a_tol:.1e}" + (f" = {NOISE_FACTOR}x the noise floor" if from_noise else "")
                + f", rtol {r_tol:.0e}" + (f"; computed in {lower}" if lower else "") + ")")
    if expected.size == 0:
        result.message = f"empty output {tol_text}"
        return result
    if not exact:
        same = (a == e) | (np.isnan(a) & np.isnan(e))  # equal infinities and NaN where NaN are equal
        new_nans = np.isnan(a) & ~np.isnan(e)
        if new_nans.any():
            result.passed = False
            result.mismatches = int(new_nans.sum())
            result.worst_index = [int(i) for i in np.argwhere(new_nans)[0]]
            result.message = (f"{result.mismatches}/{e.size} elements are NaN where the original has none "
                              f"(first at {result.worst_index}); where a layer's inputs hold inf, a "
                              "block-diagonal weight's zeros make NaN (0 x inf)")
            return result
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(a - e))
        diff = np.where(np.isnan(diff), np.inf, diff)  # inf vs -inf, or a number vs inf
        ok = same | (np.isfinite(e) & (diff <= a_tol + r_tol * np.abs(e)))  # an infinity's tolerance is no bound
        significant = np.abs(e) > a_tol  # relative errors of values near zero say nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(significant & ~same, diff / np.abs(e), 0.0)
    else:
        diff = (a != e).astype(np.float64)
        rel = diff
        ok = a == e
    result.max_abs = float(diff.max())
    result.max_rel = float(rel.max()) if rel.size else 0.0
    result.mismatches = int((~ok).sum())
    worst = np.unravel_index(int(np.argmax(np.where(ok, 0.0, diff + 1.0) if result.mismatches else diff)),
                             diff.shape)
    result.worst_index = [int(i) for i in worst]
    floor = f", noise floor {noise:.1e}" if noise is not None else ""
    stats = ("strings, compared exactly" if text else
             f"max abs {result.max_abs:.1e} of values up to {scale:.3g}{floor}, max rel {result.max_rel:.1e} {tol_text}")
    if result.mismatches:
        result.passed = False
        result.message = (f"{result.mismatches}/{e.size} elements differ; {stats}; worst at {result.worst_index}: "
                          f"{_number(actual.item(worst))} vs original {_number(expected.item(worst))}")
    else:
        result.message = stats
    return result


def api_option(name: str, value: Any = None) -> str:
    """How the library spells an option in advice: InputOptions.data, atol={...}, check=False."""
    return name if value is None else f"{name}={value!r}"


def advice(report: ValidationReport, skippable: bool = True, spell: Callable[[str, Any], str] = api_option
           ) -> list[str]:
    """For a failed check: how each failed output's error compares with the runtime's own noise, and
    what to do.  SPELL(option, value) writes an option (the command line passes its flags')."""
    failed = [o for o in report.outputs if not o.passed]
    lines = []
    for o in failed:
        if o.max_abs is None or o.noise is None or not np.isfinite(o.max_abs):
            continue
        if o.noise == 0:
            lines.append(f"output '{o.name}': the original gave the same values in both configurations, so the "
                         f"difference (max abs {o.max_abs:.1e}) is the candidate's, not the runtime's noise")
            continue
        ratio = o.max_abs / o.noise
        times = f"{ratio:.1f}" if ratio < 100 else f"{ratio:,.0f}"
        verdict = (f"within {FEW_TIMES_NOISE}x of it: likely rounding that these inputs magnify, not a wrong result"
                   if ratio <= FEW_TIMES_NOISE else f"more than {FEW_TIMES_NOISE}x it: likely a real difference")
        lines.append(f"output '{o.name}': the error (max abs {o.max_abs:.1e}) is {times}x the runtime's own "
                     f"noise floor ({o.noise:.1e}), {verdict}")
    widen = {o.name: float(f"{2 * o.max_abs:.1e}") for o in failed
             if o.max_abs is not None and np.isfinite(o.max_abs) and o.max_abs > 0
             and (o.dtype or "").startswith(("float", "bfloat"))}
    steps = [f"run the check on real inputs ({spell('InputOptions.data', None)})"]
    if widen:
        steps.append(f"allow differences of this size ({spell('atol', widen)})")
    if skippable:
        steps.append(f"skip the check ({spell('check', False)})")
    lines.append("what to do: " + "; or ".join(steps))
    return lines


def failure_message(report: ValidationReport, headline: str, skippable: bool = True,
                    spell: Callable[[str, Any], str] = api_option) -> str:
    """HEADLINE, the FAILED lines, and advice(): the whole story of a failed check in one message."""
    return "\n".join([headline, *(o.line() for o in report.outputs if not o.passed),
                      *advice(report, skippable, spell)])


def _check_comparable(original_inputs: dict[str, tuple[str, int]], candidate_session) -> None:
    """The candidate must take the original's inputs (a subset of them), of the same types and ranks."""
    for value in candidate_session.get_inputs():
        if value.name not in original_inputs:
            raise DiagwiseError(f"the models cannot be compared: the candidate's input '{value.name}' is not an "
                                f"input of the original (its inputs: {', '.join(original_inputs)})")
        kind, rank = original_inputs[value.name]
        if (value.type, len(value.shape)) != (kind, rank):
            raise DiagwiseError(f"the models cannot be compared: input '{value.name}' is {value.type} of rank "
                                f"{len(value.shape)} in the candidate, {kind} of rank {rank} in the original")


def _merge(old: OutputComparison | None, new: OutputComparison) -> OutputComparison:
    """Keep the worse of two runs' comparisons of one output."""
    if old is None:
        return new
    if old.passed != new.passed:
        return old if not old.passed else new
    return new if (new.max_abs or 0) > (old.max_abs or 0) else old


def validate(
    original: ModelProto | str | os.PathLike,
    candidate: ModelProto | str | os.PathLike,
    config: RuntimeConfig | None = None,
    inputs: InputOptions | None = None,
    check_n: int = 3,
    atol: Tolerance = None,
    rtol: Tolerance = None,
    allow_tf32: bool = False,
    seed: int = 0,
) -> ValidationReport:
    """Run both models CHECK_N times (seeds SEED, SEED+1, ...; once with real data) and compare
    every output of the original by name.  Paths are given to onnxruntime as they are.
    Both models must be deterministic: each runs once per input set, one after the other.
    ATOL / RTOL: one value, or {output name: value}; None: scale-aware defaults (tolerance_for)."""
    config = config or RuntimeConfig()
    inputs = inputs or InputOptions()
    if check_n < 1:
        raise DiagwiseError(f"check_n must be >= 1; got {check_n}", "check_n")
    if seed < 0:
        raise DiagwiseError(f"seed must be >= 0; got {seed}", "seed")
    family = config.family
    # TF32 changes fp32 results; compare exact math unless asked to allow it.
    options = config.checked_options if allow_tf32 else family.without_tf32(config.checked_options)
    tf32 = family.uses_tf32(options)
    run_config = replace(config, provider_options=options)

    original_proto = as_model(original)
    precisions = computed_in(original_proto)
    inputs, _ = with_input_shapes(original_proto, inputs, run_config)  # symbolic dims sized once, for every run
    runs = 1 if inputs.data else check_n
    feeds = [make_inputs(original_proto, inputs, seed=seed + run) for run in range(runs)]
    # One session at a time: two sessions of a large model would hold both in memory.
    session = create_session(original, run_config)
    output_names = [o.name for o in session.get_outputs()]
    check_tolerances(atol, rtol, output_names)
    original_inputs = {i.name: (i.type, len(i.shape)) for i in session.get_inputs()}
    expected = [run_session(session, f, "the original") for f in feeds]
    del session
    noise_config = None
    noise: dict[str, float | None] = {name: None for name in output_names}
    noise_level = family.noise_opt_level(run_config.opt_level)
    if noise_level is not None:
        noise_config = {"graph_optimization_level": noise_level}
        session = create_session(original, replace(run_config, opt_level=noise_level))
        for f, run_expected in zip(feeds, expected):
            for name, value, other in zip(output_names, run_expected, run_session(session, f, "the original")):
                floor = noise_floor(value, other)
                if floor is not None:
                    noise[name] = max(floor, noise[name] or 0.0)
        del session
    session = create_session(candidate, run_config)
    _check_comparable(original_inputs, session)
    candidate_names = [o.name for o in session.get_outputs()]
    candidate_inputs = {i.name for i in session.get_inputs()}
    actual = [dict(zip(candidate_names, run_session(session, {k: v for k, v in f.items() if k in candidate_inputs},
                                                    "the candidate")))
              for f in feeds]
    del session
    worst: dict[str, OutputComparison] = {}
    for run_expected, run_actual in zip(expected, actual):
        for name, value in zip(output_names, run_expected):
            result = compare(name, value, run_actual.get(name), for_output(atol, name), for_output(rtol, name), tf32,
                             precisions.get(name), noise[name])
            worst[name] = _merge(worst.get(name), result)
    return ValidationReport(run_config.provider_full, runs, [worst[n] for n in output_names], tf32,
                            run_config.to_dict(), noise_config)
