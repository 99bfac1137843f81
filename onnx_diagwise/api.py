"""The public Python API: inspect() and rewrite(), for scripts and export pipelines."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from onnx import ModelProto

from .adapters import opened
from .detect import Detection, detect
from .dims import with_input_shapes
from .errors import DiagwiseError
from .model_io import MIN_OPSET, PROTOBUF_LIMIT
from .plan import Choice, GroupSize, Plan, Selection, choose, parse_group_size, plan_exact
from .report import NodeDecision, RewriteReport, RewriteResult, human_bytes, model_stats, stats_after
from .rewriter import apply_plan
from .runtime import InputOptions, RuntimeConfig
from .shapes import infer_value_types
from .tuning import OrtTimer, Timer, TuneCache, TuneReport, default_cache_dir
from .tuning import tune as tune_layers

# also an onnx_ir.Model, an onnx_graphsurgeon.Graph or a torch.onnx.ONNXProgram (see adapters)
ModelOrPath = ModelProto | str | os.PathLike

# Warn when the rewrite multiplies the model's weight bytes by more than this.
DEFAULT_WARN_GROWTH = 2.0


def _planned(model: ModelProto, policy, selection: Selection, node_group_sizes, input_shapes=None
             ) -> tuple[Plan, Detection]:
    """Detect and plan exactly what POLICY says (a named policy, or auto's measured map); dynamic
    weights and FLOPs get their shapes from inference (INPUT_SHAPES sizes the graph inputs'
    symbolic dims).  Returns the plan and the detection (which the statistics count too)."""
    value_types = infer_value_types(model, input_shapes)
    found = detect(model, value_types)
    shapes = {name: dims for name, (_, dims) in value_types.items()}
    label = "auto" if isinstance(policy, Mapping) else str(policy)
    return plan_exact(found, choose(found, policy, selection, node_group_sizes), shapes, label), found


def _selection(model: ModelProto, include, exclude, min_channels, dynamic) -> Selection:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if dynamic and opset < MIN_OPSET:  # the run-time expansion's Reshape/Mul have no onnxruntime kernels there
        return Selection(include, exclude, min_channels, False,
                         f"the run-time expansion needs opset >= {MIN_OPSET}; the model has {opset}")
    return Selection(include, exclude, min_channels, dynamic)


def inspect(
    model_or_path: ModelOrPath,
    group_size: GroupSize = "paper",
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    node_group_sizes: Mapping[str, int] | None = None,
    dynamic: bool = True,
    input_shapes: Mapping[str, list[int]] | None = None,
) -> RewriteReport:
    """Report every grouped convolution and what rewrite() would do with it; changes nothing.

    input_shapes sizes the inputs' symbolic dims for the FLOPs (see onnx_diagwise.dims)."""
    policy = parse_group_size(group_size)
    if policy == "auto":
        raise DiagwiseError("inspect cannot show 'auto' without measuring: use tune (onnx-diagwise tune)")
    with opened(model_or_path) as (model, _):
        selection = _selection(model, include, exclude, min_channels, dynamic)
        planned, found = _planned(model, policy, selection, node_group_sizes, dict(input_shapes or {}))
        return RewriteReport(planned.policy, [p.decision for p in planned.nodes], model_stats(model, found))


@dataclass
class TuneOptions:
    """How group_size='auto' measures: see onnx_diagwise.tuning."""

    provider: str | RuntimeConfig = "cpu"
    inputs: InputOptions | None = None
    min_speedup: float = 0.05
    time_budget: float | None = None
    cache_dir: Path | None = None  # None: the user's cache directory
    use_cache: bool = True
    timer: Timer | None = None  # None: onnxruntime on `provider`
    progress: Callable[[int, int, str], None] | None = None

    @property
    def config(self) -> RuntimeConfig:
        return self.provider if isinstance(self.provider, RuntimeConfig) else RuntimeConfig(self.provider)

    def make_timer(self, inputs: InputOptions | None = None) -> Timer:
        if self.timer is not None:
            return self.timer
        return OrtTimer(self.config, inputs or self.inputs or InputOptions())

    def make_cache(self) -> TuneCache:
        return TuneCache((self.cache_dir or default_cache_dir()) if self.use_cache else None)


def tune(model_or_path: ModelOrPath, options: TuneOptions | None = None, include: str | None = None,
         exclude: str | None = None, min_channels: int | None = None) -> TuneReport:
    """Measure every depthwise layer on the target provider and report the G that pays, if any."""
    options = options or TuneOptions()
    with opened(model_or_path) as (model, _):
        inputs = options.inputs
        if options.timer is None:  # size symbolic dims once, not in every timing run
            inputs, _ = with_input_shapes(model, inputs, options.config)
        return tune_layers(model, options.make_timer(inputs), inputs, include, exclude, min_channels,
                           options.min_speedup, options.time_budget, options.make_cache(), options.progress)


def rewrite(
    model_or_path: ModelOrPath,
    group_size: GroupSize = "paper",
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    node_group_sizes: Mapping[str, int] | None = None,
    warn_growth: float = DEFAULT_WARN_GROWTH,
    copy: bool = True,
    tune_options: TuneOptions | None = None,
    dynamic: bool = True,
    input_shapes: Mapping[str, list[int]] | None = None,
) -> RewriteResult:
    """Rewrite every chosen depthwise Conv into a block-diagonal grouped Conv.

    group_size='auto' measures each layer on tune_options.provider and rewrites only
    what makes the model faster (result.tuning says why).  dynamic=False leaves
    nodes whose weight is a graph input or computed alone.  A ModelProto argument is
    copied first (copy=False rewrites it in place, which saves memory in pipelines
    that no longer need the original).  input_shapes sizes symbolic input dims for the FLOPs."""
    start = time.perf_counter()
    if not warn_growth > 1:
        raise DiagwiseError(f"warn_growth must be > 1; got {warn_growth}")
    input_shapes = dict(input_shapes or {})
    policy = parse_group_size(group_size)
    with opened(model_or_path, copy=copy) as (model, back):
        selection = _selection(model, include, exclude, min_channels, dynamic)
        tuning, exact = None, policy
        if policy == "auto":
            tuning = tune(model, tune_options, include, exclude, min_channels)
            exact = {layer.node: Choice(layer.group_size, f"auto: {layer.decision}") if layer.group_size > 1
                     else layer.decision for layer in tuning.layers}
        planned, found = _planned(model, exact, selection, node_group_sizes, input_shapes)
        before = model_stats(model, found)  # the model is unchanged until the plan is applied
        outcome = apply_plan(model, planned)
        after = stats_after(model, before, sum(d.action == "rewritten" for d in outcome))
        warnings = (_noop_warnings(planned, policy, include, before.depthwise_convs)
                    + _growth_warnings(before.weight_bytes, after.weight_bytes, warn_growth))
        report = RewriteReport(planned.policy, list(outcome), before, after, warnings=warnings,
                               elapsed_s=time.perf_counter() - start)
        return RewriteResult(back(model), report, tuning)


def _noop_warnings(planned: Plan, policy, include: str | None, depthwise: int) -> list[str]:
    """A rewrite that changes nothing says why, so that no one ships a copy believing it rewritten
    (auto keeping the original is a measured outcome, reported by its own summary)."""
    if planned.group_sizes or policy == "auto":
        return []
    if not depthwise:
        why = "the model has no depthwise convolution"
    elif policy == 1:
        why = "--group-size 1 keeps every layer depthwise (G = 1)"
    elif include and not any(re.search(include, p.decision.name) for p in planned.nodes):
        why = f"--include '{include}' matches no depthwise convolution"
    else:
        why = f"each of the {depthwise} depthwise convolution(s) was left alone (the reasons: -v)"
    return [f"nothing rewritten: {why}; the output is a copy of the input"]


def _growth_warnings(before: int, after: int, warn_growth: float) -> list[str]:
    warnings = []
    if before and after / before > warn_growth:
        warnings.append(
            f"weights grew {after / before:.1f}x ({human_bytes(before)} -> {human_bytes(after)}), "
            f"more than the {warn_growth:g}x threshold; a smaller --group-size grows less")
    if after > PROTOBUF_LIMIT >= before:
        warnings.append(f"the model now passes 2 GiB ({human_bytes(after)}); it is saved with external data")
    return warnings


__all__ = ["inspect", "rewrite", "tune", "TuneOptions", "NodeDecision", "RewriteReport", "RewriteResult"]
