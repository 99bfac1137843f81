"""Choose the group size G for every depthwise node.

Policies: an integer N (G = the largest divisor of C that is <= N), "paper"
(N = 32, the authors' choice), "full" (G = C, one dense conv).  "auto" (G by
measurement) is resolved by the tune module into node_group_sizes first.  include /
exclude regular expressions and min_channels restrict which nodes are touched;
node_group_sizes pins an exact G for named nodes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from .detect import DepthwiseConv, Detection, attribute
from .errors import DiagwiseError
from .tensors import tensor_nbytes
from .report import NodeDecision

PAPER_GROUP_SIZE = 32
POLICY_NAMES = ("paper", "full", "auto")

GroupSize = int | str


def parse_group_size(value: GroupSize, flag: str = "group_size") -> GroupSize:
    """Normalize a policy: a positive int, 'paper', 'full' or 'auto'."""
    if isinstance(value, bool):
        raise DiagwiseError(f"{flag} must be a positive integer, 'paper', 'full' or 'auto'; got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise DiagwiseError(f"{flag} must be a positive integer, 'paper', 'full' or 'auto'; got {value}")
        return value
    text = str(value).strip().lower()
    if text in POLICY_NAMES:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise DiagwiseError(f"{flag} must be a positive integer, 'paper', 'full' or 'auto'; got '{value}'")


def compile_pattern(pattern: str | None, flag: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DiagwiseError(f"{flag} '{pattern}' is not a valid regular expression: {exc}") from None


def largest_divisor_at_most(channels: int, limit: int) -> int:
    return max(d for d in range(1, min(channels, limit) + 1) if channels % d == 0)


def group_size_for(channels: int, policy: GroupSize) -> tuple[int, str]:
    """G for a layer with CHANNELS channels, and how it was chosen."""
    if policy == "full":
        return channels, "full: one dense conv (G = C)"
    limit = PAPER_GROUP_SIZE if policy == "paper" else int(policy)
    g = largest_divisor_at_most(channels, limit)
    label = f"paper (N={PAPER_GROUP_SIZE})" if policy == "paper" else f"N={limit}"
    return g, f"{label}: largest divisor of C={channels} <= {limit}"


@dataclass
class PlannedNode:
    decision: NodeDecision
    conv: DepthwiseConv | None  # set when the node is to be rewritten


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


def plan(
    detection: Detection,
    group_size: GroupSize = "paper",
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    node_group_sizes: Mapping[str, int] | None = None,
    shapes: dict | None = None,
    dynamic: bool = True,
    why_not_dynamic: str = "dynamic weights left alone (--skip-dynamic)",
) -> list[PlannedNode]:
    """A decision for every grouped convolution: depthwise candidates in order, then skipped ones.

    dynamic=False leaves nodes with dynamic weights (graph inputs, computed) alone, saying why_not_dynamic."""
    policy = parse_group_size(group_size)
    if policy == "auto":
        raise DiagwiseError("group size 'auto' needs measurement: use rewrite() or tune(), not plan()")
    include_re = compile_pattern(include, "--include")
    exclude_re = compile_pattern(exclude, "--exclude")
    if min_channels is not None and min_channels < 0:
        raise DiagwiseError(f"min_channels must be >= 0; got {min_channels}")
    pinned = dict(node_group_sizes or {})
    known = {c.name for c in detection.candidates}
    for name in pinned:
        if name not in known:
            raise DiagwiseError(f"--node-group-size names '{name}', which is not a rewritable depthwise Conv")
    shapes = shapes or {}

    planned: list[PlannedNode] = []
    for conv in detection.candidates:
        weight_bytes = tensor_nbytes(conv.weight.tensor) if conv.weight else None
        flops = _flops_per_sample(conv, shapes)
        decision = NodeDecision(
            name=conv.name, graph=conv.graph, action="skipped", reason="", form=conv.form,
            channels=conv.channels, multiplier=conv.multiplier, kernel=conv.kernel,
            strides=conv.strides, dilations=conv.dilations, pads=conv.pads, auto_pad=conv.auto_pad,
            dtype=conv.dtype, weight_source=conv.weight_kind,
            weight_bytes_before=weight_bytes, flops_before=flops,
        )
        reason = _filter_reason(conv, include_re, exclude_re, min_channels)
        if reason is None and conv.dynamic and not dynamic:
            reason = f"weight is a {conv.dynamic.description}; {why_not_dynamic}"
        if conv.name in pinned:
            g = pinned[conv.name]
            if g < 1 or conv.channels % g:
                raise DiagwiseError(
                    f"--node-group-size {conv.name}={g}: {g} does not divide C={conv.channels}")
            how = "pinned by --node-group-size"
        else:
            g, how = group_size_for(conv.channels, policy)
        if reason is None and g == 1:
            reason = f"G=1 ({how}): left depthwise"
        if reason is not None:
            decision.reason = reason
            planned.append(PlannedNode(decision, None))
            continue
        decision.action = "rewrite"
        decision.group_size = g
        decision.groups_after = conv.channels // g
        decision.reason = f"G={g}, group={conv.channels // g} ({how})"
        decision.weight_bytes_after = weight_bytes * g if weight_bytes is not None else None
        decision.flops_after = flops * g if flops is not None else None
        planned.append(PlannedNode(decision, conv))

    for skipped in detection.skipped:
        planned.append(PlannedNode(NodeDecision(
            name=skipped.name, graph=skipped.graph, action="skipped", reason=skipped.reason,
            form=skipped.form, channels=skipped.channels, multiplier=skipped.multiplier, kernel=skipped.kernel,
            strides=attribute(skipped.node, "strides"), dilations=attribute(skipped.node, "dilations"),
            dtype=skipped.dtype, weight_source=skipped.weight_source,
            group_size=skipped.block_diagonal_g, block_diagonal=skipped.block_diagonal_g is not None,
        ), None))
    return planned


def _filter_reason(conv: DepthwiseConv, include_re, exclude_re, min_channels) -> str | None:
    if include_re is not None and not include_re.search(conv.name):
        return f"name does not match --include '{include_re.pattern}'"
    if exclude_re is not None and exclude_re.search(conv.name):
        return f"name matches --exclude '{exclude_re.pattern}'"
    if min_channels is not None and conv.channels < min_channels:
        return f"C={conv.channels} is below --min-channels {min_channels}"
    return None
