"""onnx-diagwise: run depthwise convolutions of ONNX models as block-diagonal grouped
convolutions (diagonalwise refactorization, Qin et al., arXiv:1803.09926)."""

from .api import inspect, rewrite
from .errors import CheckFailed, DiagwiseError
from .report import NodeDecision, RewriteReport, RewriteResult

__version__ = "0.1.0"

__all__ = [
    "inspect", "rewrite", "NodeDecision", "RewriteReport", "RewriteResult",
    "DiagwiseError", "CheckFailed", "__version__",
]
