"""Run an original and a candidate model on the same inputs and compare every output."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto

from .errors import DiagwiseError
from .model_io import as_model
from .dims import make_inputs, with_input_shapes
from .runtime import InputOptions, RuntimeConfig, create_session

# Default (atol, rtol) by output dtype.  fp16/bf16 accumulate in fewer bits, and a
# block-diagonal conv sums the same products in another order.
TOLERANCES = {
    "float64": (1e-5, 1e-5),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
# fp32 under TF32 (CUDA, when allowed) keeps 10 mantissa bits.
TF32_TOLERANCE = (1e-2, 1e-2)


@dataclass
class OutputComparison:
    name: str
    passed: bool
    message: str
    shape: list[int] | None = None
    dtype: str | None = None
    atol: float | None = None
    rtol: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mismatches: int = 0
    elements: int = 0
    worst_index: list[int] | None = None

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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        ok = sum(o.passed for o in self.outputs)
        return f"{ok}/{len(self.outputs)} outputs passed ({self.runs} run(s) on {self.provider})"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "provider": self.provider, "runs": self.runs, "tf32": self.tf32,
                "config": self.config, "outputs": [asdict(o) for o in self.outputs]}


def tolerance_for(dtype: np.dtype, atol: float | None, rtol: float | None, tf32: bool) -> tuple[float, float]:
    """(atol, rtol): exact for integers and bools, by dtype for floats; explicit values win."""
    if dtype.kind in "biuSU":
        return (0.0 if atol is None else atol, 0.0 if rtol is None else rtol)
    default = TF32_TOLERANCE if tf32 and dtype == np.float32 else TOLERANCES.get(dtype.name, (1e-5, 1e-5))
    return (default[0] if atol is None else atol, default[1] if rtol is None else rtol)


def compare(name: str, expected: np.ndarray | None, actual: np.ndarray | None,
            atol: float | None = None, rtol: float | None = None, tf32: bool = False) -> OutputComparison:
    """Compare ACTUAL to EXPECTED as numpy.isclose does (|a - e| <= atol + rtol * |e|, NaN == NaN)."""
    if actual is None:
        return OutputComparison(name, False, "missing from the candidate's outputs")
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return OutputComparison(name, False, f"shape {list(actual.shape)} differs from the original's "
                                f"{list(expected.shape)}", shape=list(expected.shape))
    if expected.dtype != actual.dtype:
        return OutputComparison(name, False, f"dtype {actual.dtype} differs from the original's {expected.dtype}",
                                shape=list(expected.shape), dtype=str(expected.dtype))
    a_tol, r_tol = tolerance_for(expected.dtype, atol, rtol, tf32)
    result = OutputComparison(name, True, "", shape=list(expected.shape), dtype=str(expected.dtype),
                              atol=a_tol, rtol=r_tol, elements=int(expected.size))
    tol_text = f"(atol {a_tol:.0e}, rtol {r_tol:.0e})"
    if expected.size == 0:
        result.message = f"empty output {tol_text}"
        return result
    exact = expected.dtype.kind in "biuSU"
    e = expected.astype(np.float64) if not exact else expected
    a = actual.astype(np.float64) if not exact else actual
    if not exact:
        new_nans = np.isnan(a) & ~np.isnan(e)
        if new_nans.any():
            result.passed = False
            result.mismatches = int(new_nans.sum())
            result.worst_index = [int(i) for i in np.argwhere(new_nans)[0]]
            result.message = (f"{result.mismatches}/{e.size} elements are NaN where the original has none "
                              f"(first at {result.worst_index})")
            return result
        both_nan = np.isnan(a) & np.isnan(e)
        diff = np.where(both_nan, 0.0, np.abs(a - e))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(e))
        ok = diff <= a_tol + r_tol * np.abs(e)
        ok |= both_nan
    else:
        diff = (a != e).astype(np.float64)
        rel = diff
        ok = a == e
    result.max_abs = float(np.nanmax(diff))
    result.max_rel = float(np.nanmax(rel))
    result.mismatches = int((~ok).sum())
    worst = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
    result.worst_index = [int(i) for i in worst]
    stats = f"max abs {result.max_abs:.1e}, max rel {result.max_rel:.1e} {tol_text}"
    if result.mismatches:
        result.passed = False
        result.message = (f"{result.mismatches}/{e.size} elements differ; {stats}; worst at {result.worst_index}: "
                          f"{actual[worst]!r} vs original {expected[worst]!r}")
    else:
        result.message = stats
    return result


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
    atol: float | None = None,
    rtol: float | None = None,
    allow_tf32: bool = False,
    seed: int = 0,
) -> ValidationReport:
    """Run both models CHECK_N times (seeds SEED, SEED+1, ...; once with real data) and compare
    every output of the original by name.  Paths are given to onnxruntime as they are.
    Both models must be deterministic: each runs once per input set, one after the other."""
    config = config or RuntimeConfig()
    inputs = inputs or InputOptions()
    if check_n < 1:
        raise DiagwiseError(f"--check-n must be >= 1; got {check_n}")
    options = dict(config.provider_options or {})
    tf32 = False
    if config.provider_full == "CUDAExecutionProvider":
        # TF32 changes fp32 results; compare exact math unless asked to allow it.
        if allow_tf32:
            tf32 = options.get("use_tf32", "1") != "0"
        else:
            options["use_tf32"] = "0"
    run_config = RuntimeConfig(config.provider, options, config.threads, config.opt_level, config.spin)

    original_proto = as_model(original)
    inputs, _ = with_input_shapes(original_proto, inputs, run_config)  # symbolic dims sized once, for every run
    runs = 1 if inputs.data else check_n
    feeds = [make_inputs(original_proto, inputs, seed=seed + run) for run in range(runs)]
    # One session at a time: two sessions of a large model would hold both in memory.
    session = create_session(original, run_config)
    output_names = [o.name for o in session.get_outputs()]
    expected = [session.run(None, f) for f in feeds]
    del session
    session = create_session(candidate, run_config)
    candidate_names = [o.name for o in session.get_outputs()]
    candidate_inputs = {i.name for i in session.get_inputs()}
    actual = [dict(zip(candidate_names, session.run(None, {k: v for k, v in f.items() if k in candidate_inputs})))
              for f in feeds]
    del session
    worst: dict[str, OutputComparison] = {}
    for run_expected, run_actual in zip(expected, actual):
        for name, value in zip(output_names, run_expected):
            result = compare(name, value, run_actual.get(name), atol, rtol, tf32)
            worst[name] = _merge(worst.get(name), result)
    return ValidationReport(run_config.provider_full, runs, [worst[n] for n in output_names], tf32,
                            run_config.to_dict())
