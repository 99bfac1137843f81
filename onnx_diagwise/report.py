"""Plain-data reports returned by the API and rendered by the CLI."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from onnx import ModelProto

from .detect import NODE_FORMS, Detection, detect, node_form
from .reasons import Action, Reason
from .shapes import infer_value_types
from .graphs import iter_scopes
from .lowerings import label
from .tensors import iter_tensors, tensor_elements, weight_bytes


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class NodeDecision:
    """What happens (or happened) to one grouped Conv node, and why (CODE, with REASON for people)."""

    name: str
    graph: str
    action: Action  # rewrite (planned, in inspect) | rewritten | skipped | reverted
    reason: str
    code: Reason | None = None
    form: str | None = None  # float, FusedConv, QDQ, QLinearConv, ConvInteger, ConvTranspose, dynamic
    channels: int | None = None
    multiplier: int | None = None
    kernel: list[int] | None = None
    strides: list[int] | None = None
    dilations: list[int] | None = None
    pads: list[int] | None = None
    auto_pad: str | None = None
    dtype: str | None = None
    weight_source: str | None = None
    group_size: int | None = None  # block-diagonal: G
    groups_after: int | None = None
    lowering: str | None = None  # toeplitz, polyphase, conv2d (None: block-diagonal, or untouched)
    lowering_params: dict[str, Any] | None = None  # polyphase: block, as_2d, fold (when set)
    weight_bytes_before: int | None = None
    weight_bytes_after: int | None = None
    flops_before: int | None = None  # per sample (batch 1); None when the output shape is unknown
    flops_after: int | None = None
    block_diagonal: bool = False  # the layer is block-diagonal already (rewritten before, G in group_size)
    parameters: tuple[str, ...] = ()  # library parameters the reason names

    @property
    def changed(self) -> bool:
        """Whether the node was (or, planned, is to be) turned into another form."""
        return self.action in (Action.REWRITE, Action.REWRITTEN, Action.REVERTED)

    @property
    def form_label(self) -> str | None:
        """How the node is (to be) computed: 'G=8', 'toeplitz', 'polyphase B=16', ..."""
        if self.lowering:
            return label(self.lowering, self.lowering_params or {})
        return f"G={self.group_size}" if self.group_size else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"], data["code"] = str(self.action), str(self.code) if self.code else None
        data["parameters"] = list(self.parameters)
        return data


@dataclass
class ModelStats:
    """The before/after numbers of the onnxsim-style summary table; the convolutions are counted
    by detect's classification, the one rewrite, revert and inspect use."""

    depthwise_convs: int
    block_diagonal_convs: int  # rewritten ones (any form), G = C (group 1) included
    grouped_convs: int  # other grouped convolutions
    convs: int
    parameters: int
    weight_bytes: int
    op_counts: dict[str, int]
    lowered_convs: int = 0  # toeplitz, polyphase, conv2d groups (one each)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_stats(model: ModelProto, found: Detection | None = None) -> ModelStats:
    """Counts for the before/after table; FOUND is detect()'s result for MODEL, when already at hand."""
    found = found or detect(model, infer_value_types(model))
    block_diagonal = sum(1 for s in found.skipped if s.block_diagonal_g)
    lowered = sum(1 for s in found.skipped if s.code == Reason.LOWERED)
    handled = {spec.form for spec in NODE_FORMS.values()} | {"QDQ", "dynamic"}
    grouped = sum(1 for s in found.skipped if not s.block_diagonal_g and s.form in handled
                  and s.code != Reason.LOWERED)
    return _counted(model, len(found.candidates), block_diagonal, grouped, lowered)


def stats_after(model: ModelProto, before: ModelStats, outcome) -> ModelStats:
    """MODEL's counts after the OUTCOME (NodeDecisions) of a rewrite or revert, counted from what
    was done instead of detecting again, which would read every expanded weight."""
    done = [n for n in outcome if n.action in (Action.REWRITTEN, Action.REVERTED)]
    sign = {Action.REWRITTEN: 1, Action.REVERTED: -1}
    block_diagonal = sum(sign[n.action] for n in done if not n.lowering)
    lowered = sum(sign[n.action] for n in done if n.lowering)
    return _counted(model, before.depthwise_convs - block_diagonal - lowered,
                    before.block_diagonal_convs + block_diagonal, before.grouped_convs,
                    before.lowered_convs + lowered)


def _counted(model: ModelProto, depthwise: int, block_diagonal: int, grouped: int, lowered: int) -> ModelStats:
    ops: Counter = Counter()
    convs = 0
    for scope in iter_scopes(model):
        for node in scope.body.node:
            ops[node.op_type] += 1
            convs += node_form(node) is not None
    parameters = sum(tensor_elements(t) for t in iter_tensors(model))
    return ModelStats(depthwise, block_diagonal, grouped, convs, parameters, weight_bytes(model),
                      dict(sorted(ops.items())), lowered)


@dataclass
class RewriteReport:
    """Every grouped Conv in the model with its decision, plus model-level numbers."""

    policy: str  # the group-size policy ("paper", "8", "full", "auto", "exact") or "revert"
    nodes: list[NodeDecision]
    before: ModelStats
    after: ModelStats | None = None  # None for inspect
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float | None = None

    @property
    def rewritten(self) -> list[NodeDecision]:
        """The nodes changed (or, planned, to be changed): rewritten, lowered or reverted."""
        return [n for n in self.nodes if n.changed]

    @property
    def skipped(self) -> list[NodeDecision]:
        return [n for n in self.nodes if n.action == Action.SKIPPED]

    @property
    def modified(self) -> bool:
        """Whether the model was changed (inspect: never)."""
        return self.after is not None and any(n.action in (Action.REWRITTEN, Action.REVERTED) for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "summary": {
                "nodes": len(self.nodes),
                "rewritten" if self.after else "planned": len(self.rewritten),
                "skipped": len(self.skipped),
            },
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
            "warnings": list(self.warnings),
            "elapsed_s": self.elapsed_s,
            "nodes": [n.to_dict() for n in self.nodes],
        }


@dataclass
class RewriteResult:
    model: Any  # the type rewrite() was given: ModelProto (also for a path), onnx_ir.Model, gs.Graph, ONNXProgram
    report: RewriteReport
    tuning: Any = None  # the TuneReport, when the group size was "auto"
