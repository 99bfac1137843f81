"""onnx-diagwise: run depthwise convolutions of ONNX models as block-diagonal grouped
convolutions (diagonalwise refactorization, Qin et al., arXiv:1803.09926)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so that the command line starts without loading onnx and numpy.
_HOMES = {
    "inspect": "api", "rewrite": "api", "tune": "api", "TuneOptions": "api",
    "BenchReport": "bench", "benchmark": "bench",
    "CheckFailed": "errors", "DiagwiseError": "errors",
    "CheckOptions": "files", "FileResult": "files", "revert_file": "files", "rewrite_file": "files",
    "FileReport": "files", "inspect_file": "files", "validate_file": "files", "bench_file": "files",
    "tune_file": "files",
    "NodeDecision": "report", "RewriteReport": "report", "RewriteResult": "report",
    "Selection": "plan", "Choice": "plan", "GroupSize": "plan", "PAPER": "plan", "FULL": "plan", "Lowered": "plan",
    "Measured": "plan", "Action": "reasons", "Reason": "reasons", "Leave": "reasons", "SaveOptions": "files",
    "revert": "reverter",
    "InputOptions": "runtime", "RuntimeConfig": "runtime",
    "ValidationReport": "validation", "validate": "validation",
}

__all__ = [
    "inspect", "rewrite", "revert", "tune", "TuneOptions", "validate", "benchmark",
    "rewrite_file", "revert_file", "FileResult", "CheckOptions", "SaveOptions",
    "inspect_file", "validate_file", "bench_file", "tune_file", "FileReport",
    "Selection", "Choice", "GroupSize", "PAPER", "FULL", "Lowered", "Measured", "Action", "Reason", "Leave",
    "NodeDecision", "RewriteReport", "RewriteResult", "ValidationReport", "BenchReport",
    "RuntimeConfig", "InputOptions", "DiagwiseError", "CheckFailed", "__version__",
]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'onnx_diagwise' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
