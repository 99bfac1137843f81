"""Decisions: the form of every layer, kept only where the whole model is faster; the report."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from onnx import ModelProto

from ..detect import detect
from ..dims import resolve_input_shapes
from ..errors import DiagwiseError
from ..plan import Measured, Selection, parse_choice, plan
from ..reasons import Leave, Reason
from ..rewriter import apply_group_sizes
from ..runtime import InputOptions
from ..shapes import infer_value_types
from .cache import TuneCache
from .planfile import TunedPlan, from_tuning
from .layers import LayerSignature, layer_candidates, layer_model, layer_variants, opset_of, signature_of
from .timing import Timer

@dataclass
class LayerTuning:
    """One depthwise node: what was measured and what was decided.  Candidates are named by their
    spec: '1' (the original depthwise layer), a G ('8'), or a lowering ('toeplitz', 'polyphase:16',
    'polyphase:16:2d', 'conv2d')."""

    node: str
    graph: str
    channels: int
    kernel: list[int]
    input_shape: list[int] | None
    original_ms: float | None = None
    times_ms: dict[str, float] = field(default_factory=dict)  # by candidate spec
    best: str | None = None  # the fastest candidate
    best_ms: float | None = None
    speedup: float | None = None  # original / best
    choice: str = "1"  # the decision; '1' keeps the original
    decision: str = ""
    parameters: tuple[str, ...] = ()  # library parameters the decision names
    cached: bool = False
    skipped_forms: dict[str, str] = field(default_factory=dict)  # lowering or form -> why it was not timed

    @property
    def rewritten(self) -> bool:
        return self.choice != "1"


@dataclass
class TuneReport:
    layers: list[LayerTuning]
    context: dict[str, Any]
    min_speedup: float
    original_ms: float | None = None
    tuned_ms: float | None = None
    dropped: list[str] = field(default_factory=list)  # dropped by the end-to-end check, in order
    summary: str = ""
    elapsed_s: float = 0.0
    plan: TunedPlan | None = None  # the decisions as a plan file: save(), then rewrite(model, plan) anywhere

    def save(self, path) -> Path:
        """Write the decisions as a plan file (see tuning.planfile)."""
        return self.plan.save(path)

    @property
    def choices(self) -> dict[str, str]:
        """{node: spec} of the layers rewritten."""
        return {layer.node: layer.choice for layer in self.layers if layer.rewritten}

    @property
    def policy(self) -> Measured:
        """The decisions as a policy: the chosen form of each layer, or why it keeps the original."""
        return Measured({layer.node: (replace(parse_choice(layer.choice), how=f"auto: {layer.decision}",
                                              code=Reason.MEASURED)
                                      if layer.rewritten else Leave(Reason.KEPT_BY_MEASUREMENT, layer.decision,
                                                                    layer.parameters))
                         for layer in self.layers})

    @property
    def end_to_end_speedup(self) -> float | None:
        if self.original_ms and self.tuned_ms:
            return self.original_ms / self.tuned_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"context": self.context, "min_speedup": self.min_speedup, "original_ms": self.original_ms,
                "tuned_ms": self.tuned_ms, "end_to_end_speedup": self.end_to_end_speedup,
                "dropped": self.dropped, "summary": self.summary, "elapsed_s": self.elapsed_s,
                "choices": self.choices, "layers": [asdict(layer) for layer in self.layers],
                "plan": self.plan.to_dict() if self.plan else None}


# ---------------------------------------------------------------- tuning


def tune(
    model: ModelProto,
    timer: Timer,
    inputs: InputOptions | None = None,
    selection: Selection = Selection(),
    min_speedup: float = 0.05,
    time_budget: float | None = None,
    cache: TuneCache | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    check_end_to_end: bool = True,
) -> TuneReport:
    """Decide the form of every depthwise node of MODEL (not modified) by measurement."""
    if min_speedup < 0:
        raise DiagwiseError(f"min_speedup must be >= 0; got {min_speedup}", "min_speedup")
    if time_budget is not None and time_budget <= 0:
        raise DiagwiseError(f"time_budget must be > 0 seconds; got {time_budget}", "time_budget")
    inputs = inputs or InputOptions()
    start = clock()
    cache = cache or TuneCache(None)
    context = timer.context()
    input_shapes = resolve_input_shapes(model, inputs).shapes
    input_shapes.update({k: list(v.shape) for k, v in (inputs.data or {}).items()})
    # Layers are timed at the sized shapes; lowerings must fit the model's own (symbolic dims stay so).
    shapes = {name: dims for name, (_, dims) in infer_value_types(model, input_shapes).items()}
    found = detect(model, infer_value_types(model))
    planned = plan(found, "full", replace(selection, node_group_sizes={}))
    chosen = {p.decision.name for p in planned.nodes if p.choice is not None}
    left = {p.decision.name: p.decision for p in planned.nodes if p.choice is None}
    convs = [c for c in found.candidates if c.name in chosen]
    untuned = [c for c in convs if c.form != "float"]
    convs = [c for c in convs if c.form == "float"]
    signatures = [signature_of(conv, shapes) for conv in convs]
    # Where the model spends its time first (a signature's work times its nodes), so that a time
    # budget goes to the layers that matter; the report keeps the graph's order.
    work = Counter()
    for signature in signatures:
        work[signature] += signature.work() if signature else 0
    order = sorted(range(len(convs)), key=lambda i: -work[signatures[i]])
    layers: list[LayerTuning] = [None] * len(convs)  # type: ignore[list-item]
    measured: dict[LayerSignature, list[tuple[dict[str, float | str], bool]]] = {}  # (times by spec, cached)
    for step, index in enumerate(order):
        conv, signature = convs[index], signatures[index]
        layer = LayerTuning(conv.name, conv.graph, conv.channels, conv.kernel,
                            list(signature.input_shape) if signature else None)
        layers[index] = layer
        if progress:
            progress(step, len(convs), conv.name)
        if signature is None:
            layer.decision = "kept original: input shape unknown (size it with InputOptions.dims or InputOptions.shapes)"
            layer.parameters = ("InputOptions.dims", "InputOptions.shapes")
            continue
        # Nodes of one signature share their times, but each is offered only the forms it can take
        # (a weight that other nodes also read cannot be lowered): a measurement covering them is reused.
        base = layer_model(conv, signature, opset_of(model))
        candidates, skipped = layer_candidates(base, signature, conv)
        earlier = next((m for m in measured.get(signature, []) if m[0].keys() >= candidates.keys()), None)
        if earlier is None:
            if time_budget is not None and clock() - start > time_budget:
                layer.decision = f"kept original: not tuned, time_budget {time_budget:g}s spent"
                layer.parameters = ("time_budget",)
                continue
            key = TuneCache.key(context, signature, list(candidates))
            times = cache.get(key)
            cached = times is not None
            if not cached:
                times = timer.layer(signature, layer_variants(base, candidates))
                cache.put(key, times)
            earlier = (times, cached)
            measured.setdefault(signature, []).append(earlier)
        times, layer.cached = earlier
        times = {spec: t for spec, t in times.items() if spec == "1" or spec in candidates}
        layer.skipped_forms = skipped | {spec: why for spec, why in times.items() if isinstance(why, str)}
        _decide(layer, {spec: t for spec, t in times.items() if not isinstance(t, str)}, min_speedup)
    if progress:
        progress(len(convs), len(convs), "")
    cache.save()
    for conv in untuned:  # a one-node float Conv cannot stand in for these
        layers.append(LayerTuning(conv.name, conv.graph, conv.channels, conv.kernel, None,
                                  decision=f"kept original: auto tunes float Conv layers only, not {conv.form}"))
    for conv in found.candidates:  # left alone by the selection: kept, and said so (a plan lists every node)
        if conv.name in left:
            layers.append(LayerTuning(conv.name, conv.graph, conv.channels, conv.kernel, None,
                                      decision=f"kept original: {left[conv.name].reason}",
                                      parameters=left[conv.name].parameters))

    report = TuneReport(layers, context, min_speedup)
    if check_end_to_end:
        _check_end_to_end(model, report, timer)
    else:
        report.summary = f"{len(report.choices)} of {len(layers)} depthwise node(s) rewritten (per-layer timings only)"
    report.elapsed_s = clock() - start
    report.plan = from_tuning(report, found, context, input_shapes)
    return report


def _decide(layer: LayerTuning, times: dict[str, float], min_speedup: float) -> None:
    original = times["1"]
    layer.original_ms = original * 1000
    layer.times_ms = {spec: t * 1000 for spec, t in times.items() if spec != "1"}
    candidates = {spec: t for spec, t in times.items() if spec != "1"}
    if not candidates:
        layer.decision = "kept original: no candidate to time (weights too large, or none runs on the provider)"
        return
    best = min(candidates, key=candidates.get)
    label = parse_choice(best).label
    layer.best, layer.best_ms = best, candidates[best] * 1000
    layer.speedup = original / candidates[best]
    if layer.speedup >= 1 + min_speedup:
        layer.choice = best
        layer.decision = f"{label}: {layer.speedup:.2f}x faster than depthwise"
    elif layer.speedup >= 1:
        layer.decision = (f"kept original: best {label} only {layer.speedup:.2f}x faster "
                          f"(margin {1 + min_speedup:.2f}x)")
    else:
        layer.decision = f"kept original: every candidate slower (best {label}: {layer.speedup:.2f}x)"


def apply_choices(model: ModelProto, choices: dict[str, str]) -> ModelProto:
    """A copy of MODEL with exactly the nodes in CHOICES ({node: spec}) rewritten."""
    copy = ModelProto()
    copy.CopyFrom(model)
    apply_group_sizes(copy, {node: parse_choice(spec) for node, spec in choices.items()})
    return copy


def _check_end_to_end(model: ModelProto, report: TuneReport, timer: Timer) -> None:
    """Keep only rewrites that make the whole model faster; drop the least useful first."""
    chosen = [layer for layer in report.layers if layer.rewritten]
    if not chosen:
        report.summary = "kept the original: no layer was faster rewritten"
        return
    # Least benefit first: what each node saves per run, as measured alone.
    chosen.sort(key=lambda layer: layer.original_ms - layer.best_ms)
    while chosen:
        choices = {layer.node: layer.choice for layer in chosen}
        original_s, tuned_s = timer.models([model, apply_choices(model, choices)])
        report.original_ms, report.tuned_ms = original_s * 1000, tuned_s * 1000
        if tuned_s < original_s:
            report.summary = (f"{len(chosen)} of {len(report.layers)} depthwise node(s) rewritten; "
                              f"whole model {original_s / tuned_s:.2f}x faster")
            return
        dropped = chosen.pop(0)
        dropped.choice = "1"
        dropped.decision = (f"kept original: {parse_choice(dropped.best).label} was faster alone "
                            f"({dropped.speedup:.2f}x) but the whole model was not faster with it")
        report.dropped.append(dropped.node)
    report.summary = ("kept the original: the rewritten model was not faster end to end "
                      f"(last measured {report.original_ms / report.tuned_ms:.2f}x)")
