"""The public Python API: inspect() and rewrite(), for scripts and export pipelines."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from onnx import ModelProto

from .adapters import opened
from .detect import Detection, detect
from .dims import with_input_shapes
from .errors import DiagwiseError
from .reasons import Text
from .model_io import MIN_OPSET, PROTOBUF_LIMIT
from .plan import Auto, GroupSize, Measured, Plan, Policy, Selection, choose, parse_policy, plan_exact
from .report import NodeDecision, RewriteReport, RewriteResult, human_bytes, model_stats, stats_after
from .rewriter import apply_plan
from .runtime import InputOptions, RuntimeConfig
from .shapes import infer_value_types
from .tuning import OrtTimer, Timer, TuneCache, TuneReport, default_cache_dir
from .tuning.planfile import PlanPolicy, TunedPlan
from .tuning import tune as tune_layers

# also an onnx_ir.Model, an onnx_graphsurgeon.Graph or a torch.onnx.ONNXProgram (see adapters)
ModelOrPath = ModelProto | str | os.PathLike

# Warn when the rewrite multiplies the model's weight bytes by more than this.
DEFAULT_WARN_GROWTH = 2.0


def policy_of(group_size: Any) -> Policy | Auto:
    """The policy GROUP_SIZE names ('paper' when None); a TunedPlan (a plan file) applies as PlanPolicy."""
    if isinstance(group_size, TunedPlan):
        return PlanPolicy(group_size)
    return parse_policy("paper" if group_size is None else group_size)


def _planned(model: ModelProto, policy: Policy, selection: Selection, input_shapes=None
             ) -> tuple[Plan, Detection, list[str]]:
    """Detect and plan exactly what POLICY says; dynamic weights, lowerings and FLOPs get their
    shapes from inference (INPUT_SHAPES sizes the graph inputs' symbolic dims).  Returns the plan
    and the detection (which the statistics count and the rewrite applies), and what of a lenient
    plan does not fit the model."""
    # Lowerings are built for the model's own shapes (a dim sized only for the check stays
    # symbolic in the model); the FLOPs count at the sized ones.
    value_types = infer_value_types(model)
    found = detect(model, value_types)
    # a plan made for another model is refused; lenient, what does not fit is listed
    misfits = policy.check(found) if isinstance(policy, PlanPolicy) else []
    sized = infer_value_types(model, input_shapes) if input_shapes else value_types
    shapes = {name: dims for name, (_, dims) in sized.items()}
    return plan_exact(found, choose(found, policy, _usable(model, selection)), shapes, str(policy)), found, misfits


def _usable(model: ModelProto, selection: Selection) -> Selection:
    """SELECTION, with dynamic weights left alone where the model's opset has no run-time expansion."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if selection.dynamic and opset < MIN_OPSET:  # Reshape/Mul have no onnxruntime kernels there
        return replace(selection, dynamic=False,
                       why_not_dynamic=f"the run-time expansion needs opset >= {MIN_OPSET}; the model has {opset}")
    return selection


def inspect(model_or_path: ModelOrPath, group_size: Any = "paper", selection: Selection | None = None,
            input_shapes: Mapping[str, list[int]] | None = None) -> RewriteReport:
    """Report every grouped convolution and what rewrite() would do with it; changes nothing.

    group_size is a policy (see onnx_diagwise.plan); input_shapes sizes the inputs' symbolic
    dims for the FLOPs (see onnx_diagwise.dims); lowerings are planned for the model's own shapes."""
    policy = parse_policy(group_size)
    if isinstance(policy, Auto):
        raise DiagwiseError("inspect cannot show 'auto' without measuring: use tune")
    with opened(model_or_path) as (model, _):
        planned, found, _ = _planned(model, policy, selection or Selection(), dict(input_shapes or {}))
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


def tune(model_or_path: ModelOrPath, options: TuneOptions | None = None, selection: Selection | None = None
         ) -> TuneReport:
    """Measure every depthwise layer on the target provider and report the form that pays, if any."""
    options = options or TuneOptions()
    with opened(model_or_path) as (model, _):
        inputs = options.inputs
        if options.timer is None:  # size symbolic dims once, not in every timing run
            inputs, _ = with_input_shapes(model, inputs, options.config)
        return tune_layers(model, options.make_timer(inputs), inputs, selection or Selection(), options.min_speedup,
                           options.time_budget, options.make_cache(), options.progress)


def rewrite(
    model_or_path: ModelOrPath,
    group_size: Any = None,
    selection: Selection | None = None,
    tune_options: TuneOptions | None = None,
    input_shapes: Mapping[str, list[int]] | None = None,
    warn_growth: float = DEFAULT_WARN_GROWTH,
) -> RewriteResult:
    """Rewrite every chosen depthwise Conv into its new form: block-diagonal (G channels per
    group) or a lowering, as GROUP_SIZE (a policy, see onnx_diagwise.plan; 'paper' by default) says.

    group_size='auto' measures each layer on tune_options.provider and rewrites only what makes
    the model faster (result.tuning says why; result.tuning.save(path) keeps it as a plan file).
    A plan as group_size (TunedPlan.load(path), or PlanPolicy(plan, lenient=True)) applies what
    was measured elsewhere, measuring nothing.  SELECTION says which nodes may be touched and pins named
    nodes' choices.  A ModelProto argument is copied first.  input_shapes sizes symbolic input
    dims for the FLOPs."""
    return _rewrite(model_or_path, group_size, selection, tune_options, input_shapes, warn_growth)


def _rewrite(model_or_path, group_size, selection, tune_options, input_shapes, warn_growth, copy: bool = True) -> RewriteResult:
    """rewrite(); copy=False rewrites a ModelProto in place (files.rewrite_file's own, loaded copy)."""
    start = time.perf_counter()
    if not warn_growth > 1:
        raise DiagwiseError(f"warn_growth must be > 1; got {warn_growth}", "warn_growth")
    selection = selection or Selection()
    policy = policy_of(group_size)
    with opened(model_or_path, copy=copy) as (model, back):
        tuning = None
        if isinstance(policy, Auto):
            tuning = tune(model, tune_options, selection)
            policy = tuning.policy
        planned, found, misfits = _planned(model, policy, selection, dict(input_shapes or {}))
        before = model_stats(model, found)  # the model is unchanged until the plan is applied
        outcome = apply_plan(model, planned, found)
        after = stats_after(model, before, outcome)
        warnings = (_noop_warnings(planned, policy, selection, before.depthwise_convs)
                    + misfits
                    + _growth_warnings(before.weight_bytes, after.weight_bytes, warn_growth))
        report = RewriteReport(planned.policy, list(outcome), before, after, warnings=warnings,
                               elapsed_s=time.perf_counter() - start)
        return RewriteResult(back(model), report, tuning)


def _noop_warnings(planned: Plan, policy: Policy, selection: Selection, depthwise: int) -> list[str]:
    """A rewrite that changes nothing says why, so that no one ships a copy believing it rewritten
    (auto keeping the original is a measured outcome, reported by its own summary)."""
    if planned.choices or isinstance(policy, (Measured, PlanPolicy)):
        return []
    parameters: tuple[str, ...] = ()
    if not planned.nodes:
        why = "the model has no depthwise or grouped convolution"
    elif not depthwise:
        why = (f"each of the {len(planned.nodes)} grouped convolution(s) was left alone, none of them a depthwise "
               "one this tool can rewrite (the reasons: each node's reason)")
    elif policy == GroupSize(1):
        why, parameters = "group_size 1 keeps every layer depthwise (G = 1)", ("group_size",)
    elif selection.include and not any(re.search(selection.include, p.decision.name) for p in planned.nodes):
        why, parameters = f"include '{selection.include}' matches no depthwise convolution", ("include",)
    else:
        why = f"each of the {depthwise} depthwise convolution(s) was left alone (the reasons: each node's reason)"
    return [Text(f"nothing rewritten: {why}; the output is a copy of the input", *parameters)]


def _growth_warnings(before: int, after: int, warn_growth: float) -> list[str]:
    warnings = []
    if before and round(after / before, 1) > warn_growth:  # as shown: "2.0x" is not more than 2x
        warnings.append(Text(
            f"weights grew {after / before:.1f}x ({human_bytes(before)} -> {human_bytes(after)}), "
            f"more than the {warn_growth:g}x threshold (warn_growth); a smaller group_size grows less",
            "warn_growth", "group_size"))
    if after > PROTOBUF_LIMIT >= before:
        warnings.append(f"the model now passes 2 GiB ({human_bytes(after)}); it is saved with external data")
    return warnings


__all__ = ["inspect", "rewrite", "tune", "TuneOptions", "NodeDecision", "RewriteReport", "RewriteResult"]
