"""Plan files: what 'auto' measured on the target, saved as JSON and applied anywhere.

A plan names every depthwise node it decided on with the node's signature (form, C, M, kernel,
strides, dilations, pads, dtype, the input shape it was tuned at) and a hash of its weight, the
chosen form (a G, a lowering, or 'keep' with the reason) and the times measured; and, for the
whole plan, where it was measured (device, provider and options, onnxruntime and CUDA/cuDNN
versions), the input sizes, the end-to-end ratio and the format version.

Applying a plan measures nothing: PlanPolicy checks that each node still is what was measured
(same signature, same weight) and returns the plan's choice.  A plan that does not fit the model
is refused, naming the first node and what differs; a lenient one applies what fits and leaves
the rest with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..commit import mode_for, write_text
from ..detect import DepthwiseConv, Detection
from ..errors import DiagwiseError
from ..plan import parse_choice
from ..reasons import Leave, Reason
from ..tensors import tensor_array

FORMAT = "onnx-diagwise plan"
VERSION = 1
KEEP = "keep"


def signature(conv: DepthwiseConv) -> dict[str, Any]:
    """What decides a node's form and speed, as the plan records it (the input shape as tuned is
    recorded beside it: a model's symbolic dims are sized for tuning)."""
    return {"form": conv.form, "channels": conv.channels, "multiplier": conv.multiplier, "kernel": list(conv.kernel),
            "strides": list(conv.strides), "dilations": list(conv.dilations),
            "pads": list(conv.pads) if conv.pads is not None else None, "auto_pad": conv.auto_pad,
            "dtype": conv.dtype}


def weight_digest(conv: DepthwiseConv) -> str | None:
    """sha256 of the weight's values (little-endian, C order); None for a weight computed at run time."""
    if conv.weight is None:
        return None
    array = tensor_array(conv.weight.tensor)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


@dataclass
class PlannedLayer:
    """One node of a plan file."""

    name: str
    graph: str
    signature: dict[str, Any]
    weight_sha256: str | None
    input_shape: list[int] | None  # as tuned
    choice: str  # a spec (8, toeplitz, polyphase:16, conv2d) or 'keep'
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)  # '1' = the original
    original_ms: float | None = None


@dataclass
class TunedPlan:
    """A plan file's content; save() / load() read and write it as JSON."""

    layers: list[PlannedLayer]
    measured_on: dict[str, Any]  # device, provider, options, versions
    input_shapes: dict[str, list[int]]
    original_ms: float | None = None
    tuned_ms: float | None = None
    min_speedup: float | None = None
    summary: str = ""

    @property
    def end_to_end_speedup(self) -> float | None:
        return self.original_ms / self.tuned_ms if self.original_ms and self.tuned_ms else None

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, "version": VERSION, **asdict(self), "end_to_end_speedup": self.end_to_end_speedup}
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        try:
            write_text(path, text, mode_for(path))  # mkstemp's 0600 would hide a plan meant to be shared
        except OSError as exc:
            raise DiagwiseError(f"cannot write the plan '{path}': {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TunedPlan:
        """Read a plan file; anything that is not one is refused in one line."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise DiagwiseError(f"cannot read the plan '{path}': {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise DiagwiseError(f"'{path}' is not a plan file (not JSON)") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DiagwiseError(f"'{path}' is not a plan file this version reads: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> TunedPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"no \"format\": \"{FORMAT}\"")
        if data.get("version") != VERSION:
            raise ValueError(f"format version {data.get('version')!r}, this version reads {VERSION}")
        names = {f.name for f in fields(PlannedLayer)}
        layers = [PlannedLayer(**{k: v for k, v in layer.items() if k in names}) for layer in data["layers"]]
        for layer in layers:
            if layer.choice != KEEP:
                parse_choice(layer.choice, f"node '{layer.name}': choice")
        own = {f.name for f in fields(cls)} - {"layers"}
        return cls(layers, **{k: data[k] for k in own if k in data})


def measured_on(context: dict[str, Any]) -> dict[str, Any]:
    """Where the timings were taken: the timer's context, with the CUDA and cuDNN versions the
    onnxruntime build names when it has them."""
    where = dict(context)
    try:
        from onnxruntime.capi import build_and_package_info as build  # type: ignore[import-not-found]

        where.update({key: getattr(build, key) for key in ("cuda_version", "cudnn_version") if hasattr(build, key)})
    except ImportError:
        pass
    return where


def from_tuning(report, model_detection: Detection, context: dict[str, Any],
                input_shapes: dict[str, list[int]]) -> TunedPlan:
    """The plan of a TuneReport for the model MODEL_DETECTION was made from."""
    by_name = {(c.graph, c.name): c for c in model_detection.candidates}
    layers = []
    for layer in report.layers:
        conv = by_name[(layer.graph, layer.node)]
        layers.append(PlannedLayer(layer.node, layer.graph, signature(conv), weight_digest(conv), layer.input_shape,
                                   layer.choice if layer.rewritten else KEEP, layer.decision, dict(layer.times_ms),
                                   layer.original_ms))
    return TunedPlan(layers, measured_on(context), input_shapes, report.original_ms, report.tuned_ms, report.min_speedup,
                     report.summary)


@dataclass(frozen=True)
class PlanPolicy:
    """A plan file as a policy: each node gets the plan's choice if it still is the node that was
    measured; otherwise the plan is refused (lenient: the node keeps its form, with the reason)."""

    plan: TunedPlan
    lenient: bool = False

    def __str__(self) -> str:
        return "plan"

    def check(self, found: Detection) -> list[str]:
        """Nodes in the plan but not in the model and the other way round (refused unless lenient,
        when they are returned to be listed)."""
        planned = {(layer.graph, layer.name) for layer in self.plan.layers}
        present = {(c.graph, c.name) for c in found.candidates}
        problems = [f"node '{name}' ({graph}) of the plan is not a depthwise Conv of the model"
                    for graph, name in sorted(planned - present)]
        problems += [f"node '{name}' ({graph}) of the model is not in the plan" for graph, name in sorted(present - planned)]
        if problems and not self.lenient:
            raise DiagwiseError(f"the plan does not fit the model: {problems[0]}"
                                + (f" (and {len(problems) - 1} more difference(s); plan_lenient applies what fits)"
                                   if len(problems) > 1 else " (plan_lenient applies what fits)"), "plan_lenient")
        return problems

    @cached_property
    def _by_node(self) -> dict[tuple[str, str], PlannedLayer]:
        return {(layer.graph, layer.name): layer for layer in self.plan.layers}

    def __call__(self, conv: DepthwiseConv):
        layer = self._by_node.get((conv.graph, conv.name))
        if layer is None:
            return Leave(Reason.NOT_IN_PLAN, "not in the plan")
        differs = _difference(layer, conv)
        if differs:
            if not self.lenient:
                raise DiagwiseError(f"the plan does not fit the model: node '{conv.name}': {differs} "
                                    "(plan_lenient applies what fits)", "plan_lenient")
            return Leave(Reason.PLAN_MISMATCH, f"the plan does not fit this node: {differs}")
        if layer.choice == KEEP:
            return Leave(Reason.KEPT_BY_MEASUREMENT, f"plan: {layer.reason}")
        return replace(parse_choice(layer.choice), how=f"plan: {layer.reason}", code=Reason.PLANNED)


def _difference(layer: PlannedLayer, conv: DepthwiseConv) -> str | None:
    """What differs between the node the plan measured and CONV, or None."""
    now = signature(conv)
    for key, value in layer.signature.items():
        if now.get(key) != value:
            return f"{key} {value} in the plan, {now.get(key)} in the model"
    if layer.input_shape and conv.input_shape and len(layer.input_shape) == len(conv.input_shape):
        for axis, (tuned, dim) in enumerate(zip(layer.input_shape, conv.input_shape)):
            if isinstance(dim, int) and dim > 0 and dim != tuned:  # a static dim of the model, measured at another
                return f"input dim {axis} is {dim} in the model, tuned at {tuned}"
    digest = weight_digest(conv)
    if digest != layer.weight_sha256:
        return "its weight differs from the one the plan measured (sha256)"
    return None

