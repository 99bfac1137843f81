"""The public Python API: inspect() and rewrite(), for scripts and export pipelines."""

from __future__ import annotations

import os
import time
from typing import Mapping

from onnx import ModelProto

from .detect import detect
from .errors import DiagwiseError
from .model_io import PROTOBUF_LIMIT, check_opsets, load_model
from .plan import GroupSize, parse_group_size, plan
from .report import NodeDecision, RewriteReport, RewriteResult, human_bytes, model_stats
from .rewriter import apply_plan
from .shapes import infer_shapes

ModelOrPath = ModelProto | str | os.PathLike

# Warn when the rewrite multiplies the model's weight bytes by more than this.
DEFAULT_WARN_GROWTH = 2.0


def _load(model_or_path: ModelOrPath, copy: bool) -> ModelProto:
    if isinstance(model_or_path, ModelProto):
        check_opsets(model_or_path, "model")
        if not copy:
            return model_or_path
        model = ModelProto()
        model.CopyFrom(model_or_path)
        return model
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path).model
    raise DiagwiseError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def _planned(model: ModelProto, group_size, include, exclude, min_channels, node_group_sizes):
    policy = parse_group_size(group_size)
    planned = plan(detect(model), policy, include, exclude, min_channels, node_group_sizes,
                   shapes=infer_shapes(model))
    return policy, planned


def inspect(
    model_or_path: ModelOrPath,
    group_size: GroupSize = "paper",
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    node_group_sizes: Mapping[str, int] | None = None,
) -> RewriteReport:
    """Report every grouped Conv and what rewrite() would do with it; changes nothing."""
    model = _load(model_or_path, copy=False)
    policy, planned = _planned(model, group_size, include, exclude, min_channels, node_group_sizes)
    return RewriteReport(str(policy), [p.decision for p in planned], model_stats(model))


def rewrite(
    model_or_path: ModelOrPath,
    group_size: GroupSize = "paper",
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    node_group_sizes: Mapping[str, int] | None = None,
    warn_growth: float = DEFAULT_WARN_GROWTH,
    copy: bool = True,
) -> RewriteResult:
    """Rewrite every chosen depthwise Conv into a block-diagonal grouped Conv.

    A ModelProto argument is copied first (copy=False rewrites it in place, which
    saves memory in pipelines that no longer need the original)."""
    start = time.perf_counter()
    model = _load(model_or_path, copy=copy)
    before = model_stats(model)
    policy, planned = _planned(model, group_size, include, exclude, min_channels, node_group_sizes)
    apply_plan(model, planned)
    for item in planned:
        if item.conv is not None:
            item.decision.action = "rewritten"
    after = model_stats(model)
    report = RewriteReport(str(policy), [p.decision for p in planned], before, after,
                           warnings=_growth_warnings(before.weight_bytes, after.weight_bytes, warn_growth),
                           elapsed_s=time.perf_counter() - start)
    return RewriteResult(model, report)


def _growth_warnings(before: int, after: int, warn_growth: float) -> list[str]:
    warnings = []
    if before and after / before > warn_growth:
        warnings.append(
            f"weights grew {after / before:.1f}x ({human_bytes(before)} -> {human_bytes(after)}), "
            f"more than the {warn_growth:g}x threshold; a smaller --group-size grows less")
    if after > PROTOBUF_LIMIT >= before:
        warnings.append(f"the model now passes 2 GiB ({human_bytes(after)}); it is saved with external data")
    return warnings


__all__ = ["inspect", "rewrite", "NodeDecision", "RewriteReport", "RewriteResult"]
