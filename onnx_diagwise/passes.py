"""onnx-ir passes: the rewrite and its revert inside an onnx_ir.passes.PassManager, beside
onnx-ir's and onnxscript's own passes (needs the [ir] extra: pip install 'onnx-diagwise[ir]').

    import onnx_ir as ir
    from onnx_diagwise.passes import DiagonalwisePass

    manager = ir.passes.PassManager([DiagonalwisePass(group_size=32), ...])
    result = manager(model)          # result.modified says whether anything changed
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from .api import rewrite
from .reverter import revert


def _transplant(target: ir.Model, source: ir.Model) -> None:
    """Make TARGET the model SOURCE is (an in-place pass must return the model it was given)."""
    target.graph = source.graph
    target.functions.clear()
    target.functions.update(source.functions)
    target.ir_version = source.ir_version
    target.metadata_props.clear()
    target.metadata_props.update(source.metadata_props)


class DiagonalwisePass(ir.passes.InPlacePass):
    """Rewrite depthwise convolutions as block-diagonal grouped ones; takes rewrite()'s options."""

    def __init__(self, group_size: Any = None, **options: Any):
        super().__init__()
        self.group_size, self.options = group_size, options
        self.report = None  # the last call's RewriteReport

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = rewrite(model, self.group_size, **self.options)
        self.report = result.report
        modified = result.report.modified
        if modified:
            _transplant(model, result.model)
        return ir.passes.PassResult(model, modified)


class RevertPass(ir.passes.InPlacePass):
    """Turn block-diagonal grouped convolutions back into depthwise ones."""

    def __init__(self) -> None:
        super().__init__()
        self.report = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = revert(model)
        self.report = result.report
        modified = result.report.modified
        if modified:
            _transplant(model, result.model)
        return ir.passes.PassResult(model, modified)
