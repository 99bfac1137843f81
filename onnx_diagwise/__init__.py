"""onnx-diagwise: run depthwise convolutions of ONNX models as block-diagonal grouped
convolutions (diagonalwise refactorization, Qin et al., arXiv:1803.09926)."""

from .api import TuneOptions, inspect, rewrite, tune
from .bench import BenchReport, benchmark
from .errors import CheckFailed, DiagwiseError
from .files import CheckOptions, FileResult, revert_file, rewrite_file
from .report import NodeDecision, RewriteReport, RewriteResult
from .reverter import revert
from .runtime import InputOptions, RuntimeConfig
from .validation import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "inspect", "rewrite", "revert", "tune", "TuneOptions", "validate", "benchmark",
    "rewrite_file", "revert_file", "FileResult", "CheckOptions",
    "NodeDecision", "RewriteReport", "RewriteResult", "ValidationReport", "BenchReport",
    "RuntimeConfig", "InputOptions", "DiagwiseError", "CheckFailed", "__version__",
]
