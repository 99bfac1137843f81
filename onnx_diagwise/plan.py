"""Choose the group size G for every depthwise node: an immutable plan.

Planning has two steps.  choose() turns a policy into an exact choice per node:
an integer N (G = the largest divisor of C that is <= N), "paper" (N = 32, the
authors' choice), "full" (G = C, one dense conv), or a measured {node: G} map
(what group_size='auto' resolves to).  A Selection (include / exclude regular
expressions, min_channels, dynamic weights) says which nodes may be touched, and
node_group_sizes pins an exact G for named nodes.  plan_exact() then turns those
exact choices into the Plan: every grouped convolution with its decision, the
one input rewriter.apply_plan takes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from .detect import DepthwiseConv, Detection, attribute
from .errors import DiagwiseError
from .report import NodeDecision
from .tensors import tensor_nbytes

PAPER_GROUP_SIZE = 32
POLICY_NAMES = ("paper", "full", "auto")
WHY_NOT_DYNAMIC = "dynamic weights left alone (--skip-dynamic)"

GroupSize = int | str


def parse_group_size(value: GroupSize, parameter: str = "group_size") -> GroupSize:
    """Normalize a policy: a positive int, 'paper', 'full' or 'auto'."""
    if isinstance(value, bool):
        raise DiagwiseError(f"{parameter} must be a positive integer, 'paper', 'full' or 'auto'; got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise DiagwiseError(f"{parameter} must be a positive integer, 'paper', 'full' or 'auto'; got {value}")
        return value
    text = str(value).strip().lower()
    if text in POLICY_NAMES:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise DiagwiseError(f"{parameter} must be a positive integer, 'paper', 'full' or 'auto'; got '{value}'")


def compile_pattern(pattern: str | None, parameter: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DiagwiseError(f"{parameter} '{pattern}' is not a valid regular expression: {exc}") from None


def largest_divisor_at_most(channels: int, limit: int) -> int:
    """Divisors come in pairs (d, C/d) with d <= sqrt(C): sqrt(C) steps, whatever LIMIT is."""
    best, d = 1, 1
    while d * d <= channels:
        if channels % d == 0:
            best = max([best] + [x for x in (d, channels // d) if x <= limit])
        d += 1
    return best


def group_size_for(channels: int, policy: GroupSize) -> tuple[int, str]:
    """G for a layer with CHANNELS channels, and how it was chosen."""
    if policy == "full":
        return channels, "full: one dense conv (G = C)"
    limit = PAPER_GROUP_SIZE if policy == "paper" else int(policy)
    g = largest_divisor_at_most(channels, limit)
    label = f"paper (N={PAPER_GROUP_SIZE})" if policy == "paper" else f"N={limit}"
    return g, f"{label}: largest divisor of C={channels} <= {limit}"


@dataclass(frozen=True)
class Selection:
    """Which depthwise nodes may be rewritten at all."""

    include: str | None = None  # regular expression on node names
    exclude: str | None = None
    min_channels: int | None = None
    dynamic: bool = True  # False: leave nodes whose weight is a graph input or computed
    why_not_dynamic: str = WHY_NOT_DYNAMIC

    def __post_init__(self):
        compile_pattern(self.include, "include")
        compile_pattern(self.exclude, "exclude")
        if self.min_channels is not None and self.min_channels < 0:
            raise DiagwiseError(f"min_channels must be >= 0; got {self.min_channels}")

    def reason_to_leave(self, conv: DepthwiseConv) -> str | None:
        """Why CONV is not to be touched, or None."""
        if self.include is not None and not re.search(self.include, conv.name):
            return f"name does not match --include '{self.include}'"
        if self.exclude is not None and re.search(self.exclude, conv.name):
            return f"name matches --exclude '{self.exclude}'"
        if self.min_channels is not None and conv.channels < self.min_channels:
            return f"C={conv.channels} is below --min-channels {self.min_channels}"
        if conv.dynamic and not self.dynamic:
            return f"weight is a {conv.dynamic.description}; {self.why_not_dynamic}"
        return None


@dataclass(frozen=True)
class Choice:
    """An exact G for one node (1 keeps it depthwise) and how it was chosen."""

    g: int
    how: str


# A policy after parsing: an int, "paper", "full", or a measured {node: Choice or reason} map.
Policy = int | str | Mapping[str, "Choice | str"]


def choose(detection: Detection, policy: Policy, selection: Selection = Selection(),
           node_group_sizes: Mapping[str, int] | None = None) -> dict[str, Choice | str]:
    """For every depthwise node: its exact G and how it was chosen, or why it is left alone."""
    if policy == "auto":
        raise DiagwiseError("group size 'auto' needs measurement: use rewrite() or tune(), not plan()")
    pinned = dict(node_group_sizes or {})
    by_name = {c.name: c for c in detection.candidates}
    for name, g in pinned.items():
        if name not in by_name:
            raise DiagwiseError(f"node_group_sizes names '{name}', which is not a rewritable depthwise Conv")
        if g < 1 or by_name[name].channels % g:
            raise DiagwiseError(f"node_group_sizes {name}={g}: {g} does not divide C={by_name[name].channels}")
    choices: dict[str, Choice | str] = {}
    for conv in detection.candidates:
        reason = selection.reason_to_leave(conv)
        if reason is not None:
            choices[conv.name] = reason
            continue
        if conv.name in pinned:
            choice = Choice(pinned[conv.name], "pinned by --node-group-size")
        elif isinstance(policy, Mapping):
            choice = policy.get(conv.name, "kept original: not measured")
        else:
            choice = Choice(*group_size_for(conv.channels, policy))
        if isinstance(choice, Choice) and choice.g == 1:
            choice = f"G=1 ({choice.how}): left depthwise"
        choices[conv.name] = choice
    return choices


@dataclass(frozen=True)
class PlannedNode:
    decision: NodeDecision  # action "rewrite" or "skipped"
    conv: DepthwiseConv | None  # set when the node is to be rewritten


@dataclass(frozen=True)
class Plan:
    """Every grouped convolution with its decision: depthwise nodes in order, then the others."""

    policy: str
    nodes: tuple[PlannedNode, ...]

    @property
    def group_sizes(self) -> dict[str, int]:
        """The exact {node: G} this plan rewrites."""
        return {p.conv.name: p.decision.group_size for p in self.nodes if p.conv is not None}


def _flops_per_sample(conv: DepthwiseConv, shapes: dict) -> int | None:
    """2 * C*M * prod(kernel) * positions (batch 1), from inferred shapes: output positions
    for a Conv, input positions for a ConvTranspose (each input scatters one kernel)."""
    value = conv.node.input[0] if conv.transposed else conv.node.output[0]
    shape = shapes.get(value)
    if not shape or len(shape) != len(conv.kernel) + 2:
        return None
    spatial = shape[2:]
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        return None
    return 2 * conv.channels * conv.multiplier * math.prod(conv.kernel) * math.prod(spatial)


def plan_exact(detection: Detection, choices: Mapping[str, Choice | str], shapes: dict | None = None,
               policy: str = "exact") -> Plan:
    """The plan for exact CHOICES (from choose()); a depthwise node missing from them is left alone."""
    shapes = shapes or {}
    nodes: list[PlannedNode] = []
    for conv in detection.candidates:
        choice = choices.get(conv.name, "not chosen")
        weight_bytes = tensor_nbytes(conv.weight.tensor) if conv.weight else None
        flops = _flops_per_sample(conv, shapes)
        common = dict(name=conv.name, graph=conv.graph, form=conv.form, channels=conv.channels,
                      multiplier=conv.multiplier, kernel=conv.kernel, strides=conv.strides,
                      dilations=conv.dilations, pads=conv.pads, auto_pad=conv.auto_pad, dtype=conv.dtype,
                      weight_source=conv.weight_kind, weight_bytes_before=weight_bytes, flops_before=flops)
        if isinstance(choice, str):
            nodes.append(PlannedNode(NodeDecision(action="skipped", reason=choice, **common), None))
            continue
        g = choice.g
        nodes.append(PlannedNode(NodeDecision(
            action="rewrite", reason=f"G={g}, group={conv.channels // g} ({choice.how})", group_size=g,
            groups_after=conv.channels // g, weight_bytes_after=weight_bytes * g if weight_bytes is not None else None,
            flops_after=flops * g if flops is not None else None, **common), conv))
    for skipped in detection.skipped:
        nodes.append(PlannedNode(NodeDecision(
            name=skipped.name, graph=skipped.graph, action="skipped", reason=skipped.reason,
            form=skipped.form, channels=skipped.channels, multiplier=skipped.multiplier, kernel=skipped.kernel,
            strides=attribute(skipped.node, "strides"), dilations=attribute(skipped.node, "dilations"),
            dtype=skipped.dtype, weight_source=skipped.weight_source,
            group_size=skipped.block_diagonal_g, block_diagonal=skipped.block_diagonal is not None,
        ), None))
    return Plan(policy, tuple(nodes))


def plan(detection: Detection, group_size: GroupSize = "paper", include: str | None = None,
         exclude: str | None = None, min_channels: int | None = None,
         node_group_sizes: Mapping[str, int] | None = None, shapes: dict | None = None,
         dynamic: bool = True, why_not_dynamic: str = WHY_NOT_DYNAMIC) -> Plan:
    """choose() then plan_exact() for a named policy."""
    policy = parse_group_size(group_size)
    selection = Selection(include, exclude, min_channels, dynamic, why_not_dynamic)
    return plan_exact(detection, choose(detection, policy, selection, node_group_sizes), shapes, str(policy))
