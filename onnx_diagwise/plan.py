"""Choose the new form of every depthwise node: policies, selections, and the immutable plan.

A policy is a callable from one detected depthwise layer to a Choice (a block-diagonal G, or a
lowering: toeplitz, polyphase, conv2d) or a Leave (why the layer stays as it is).  The built-in
policies: GroupSize(N) (G = the largest divisor of C that is <= N), PAPER (N = 32, the authors'
choice), FULL (G = C, one dense conv), Lowered(name, ...) (every layer in one lowering, where it
applies) and Measured({node: choice}) (what group_size='auto' or a plan file resolves to).  Any
callable of the same shape is a policy too.  A Selection says which nodes may be touched at all
(include / exclude, min_channels, dynamic weights) and pins named nodes' choices.

choose() turns a policy and a selection into exact choices; plan_exact() turns those into the
Plan: every grouped convolution with its decision.  A Plan holds data only (names and choices, no
part of a model), so one plan can be applied to any copy of the model it was made for.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .detect import DepthwiseConv, Detection, attribute
from .errors import DiagwiseError
from .lowerings import cost, label, why_not
from .reasons import Action, Leave, Reason
from .report import NodeDecision
from .tensors import tensor_nbytes

PAPER_GROUP_SIZE = 32
BLOCK_DIAGONAL = "block-diagonal"
LOWERING_NAMES = ("toeplitz", "polyphase", "conv2d")
POLICY_HELP = "a positive integer, 'paper', 'full', 'auto', 'toeplitz', 'polyphase[:B][:2d][:fold]' or 'conv2d'"


@dataclass(frozen=True)
class Choice:
    """The exact new form of one node: block-diagonal with G channels per group (G = 1 keeps it
    depthwise), or a lowering with its parameters; and how it was chosen."""

    lowering: str = BLOCK_DIAGONAL
    group_size: int = 1  # block-diagonal: channels per group (G)
    block: int | None = None  # polyphase: outputs per step
    as_2d: bool = False  # polyphase: run its Conv as a 2-D one
    fold: bool = False  # polyphase: the input's phases become channels too
    how: str = ""
    code: Reason = Reason.POLICY

    @property
    def label(self) -> str:
        """G=8, toeplitz, polyphase B=16, polyphase B=16 2-D, polyphase B=16 folded, conv2d."""
        if self.lowering == BLOCK_DIAGONAL:
            return f"G={self.group_size}"
        return label(self.lowering, self.params)

    @property
    def spec(self) -> str:
        """The choice as --node-group-size / parse_choice spell it: 8, toeplitz, polyphase:16:2d:fold, conv2d."""
        if self.lowering == BLOCK_DIAGONAL:
            return str(self.group_size)
        if self.lowering == "polyphase":
            return f"polyphase:{self.block}" + (":2d" if self.as_2d else "") + (":fold" if self.fold else "")
        return self.lowering

    @property
    def params(self) -> dict[str, Any]:
        """A lowering's parameters, as onnx_diagwise.lowerings takes them (fold only when set)."""
        if self.lowering != "polyphase":
            return {}
        return {"block": self.block, "as_2d": self.as_2d} | ({"fold": True} if self.fold else {})


def lowered_choice(lowering: str, params: Mapping[str, Any]) -> Choice:
    """LOWERING with its PARAMS as onnx_diagwise.lowerings gives them."""
    return Choice(lowering, block=params.get("block"), as_2d=params.get("as_2d", False),
                  fold=params.get("fold", False))


Decision = Choice | Leave
Policy = Callable[[DepthwiseConv], Decision]


def parse_choice(value: int | str | Choice, parameter: str = "node_group_sizes") -> Choice:
    """One node's choice: a positive integer G, 'toeplitz', 'polyphase[:B][:2d][:fold]' (B = 8 by
    default) or 'conv2d'."""
    if isinstance(value, Choice):
        return value
    text = str(value).strip().lower()  # an integer of any kind reads as its digits
    if text.isdigit() and int(text) >= 1:
        return Choice(group_size=int(text))
    parts = text.split(":")
    if parts[0] in ("toeplitz", "conv2d") and len(parts) == 1:
        return Choice(parts[0])
    if parts[0] == "polyphase":
        block = parts[1] if len(parts) > 1 else "8"
        flags = parts[2:]  # in either order, each once
        if block.isdigit() and int(block) >= 2 and len(set(flags)) == len(flags) and set(flags) <= {"2d", "fold"}:
            return Choice("polyphase", block=int(block), as_2d="2d" in flags, fold="fold" in flags)
    raise DiagwiseError(f"{parameter} takes a positive integer G, 'toeplitz', 'polyphase[:B][:2d][:fold]' (B >= 2) "
                        f"or 'conv2d'; got '{value}'", parameter)


def _integer(value: Any) -> int | None:
    """VALUE as a Python int when it is an integer of any kind (numpy's too), else None; bools are
    not integers here."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


# ---------------------------------------------------------------- the built-in policies


def largest_divisor_at_most(channels: int, limit: int) -> int:
    """Divisors come in pairs (d, C/d) with d <= sqrt(C): sqrt(C) steps, whatever LIMIT is."""
    best, d = 1, 1
    while d * d <= channels:
        if channels % d == 0:
            best = max([best] + [x for x in (d, channels // d) if x <= limit])
        d += 1
    return best


def group_size_for(channels: int, policy: int | str) -> tuple[int, str]:
    """G for a layer with CHANNELS channels under an integer, 'paper' or 'full' policy, and how."""
    if policy == "full":
        return channels, "full: one dense conv (G = C)"
    limit = PAPER_GROUP_SIZE if policy == "paper" else int(policy)
    g = largest_divisor_at_most(channels, limit)
    label = f"paper (N={PAPER_GROUP_SIZE})" if policy == "paper" else f"N={limit}"
    return g, f"{label}: largest divisor of C={channels} <= {limit}"


def _stays(choice: Choice) -> Decision:
    """G = 1 is the depthwise layer itself."""
    if choice.lowering == BLOCK_DIAGONAL and choice.group_size == 1:
        return Leave(Reason.STAYS_DEPTHWISE, f"G=1 ({choice.how}): left depthwise")
    return choice


@dataclass(frozen=True)
class GroupSize:
    """G = the largest divisor of C that is <= LIMIT."""

    limit: int
    name: str = ""

    def __post_init__(self):
        limit = _integer(self.limit)
        if limit is None or limit < 1:
            raise DiagwiseError(f"group_size must be {POLICY_HELP}; got {self.limit!r}", "group_size")
        object.__setattr__(self, "limit", limit)  # numpy's integers are taken as Python ints

    def __str__(self) -> str:
        return self.name or str(self.limit)

    def __call__(self, conv: DepthwiseConv) -> Decision:
        g, how = group_size_for(conv.channels, "paper" if self.name == "paper" else self.limit)
        return _stays(Choice(group_size=g, how=how))


PAPER = GroupSize(PAPER_GROUP_SIZE, "paper")


@dataclass(frozen=True)
class Full:
    """G = C: one dense conv."""

    def __str__(self) -> str:
        return "full"

    def __call__(self, conv: DepthwiseConv) -> Decision:
        g, how = group_size_for(conv.channels, "full")
        return _stays(Choice(group_size=g, how=how))


FULL = Full()


@dataclass(frozen=True)
class Lowered:
    """Every layer in one lowering, where it applies (the others say why not)."""

    choice: Choice

    def __str__(self) -> str:
        return self.choice.spec

    def __call__(self, conv: DepthwiseConv) -> Decision:
        reason = why_not(conv, self.choice.lowering, self.choice.params, conv.input_shape, opset=conv.opset,
                         reads=conv.reads)
        if reason:
            return Leave(Reason.LOWERING_REFUSED, f"{self.choice.label} does not apply: {reason}")
        return replace(self.choice, how=f"group_size '{self.choice.spec}'")


@dataclass(frozen=True)
class Measured:
    """Choices made elsewhere, by node name: auto's measurements, a plan file."""

    choices: Mapping[str, Decision]
    name: str = "auto"
    missing: Leave = Leave(Reason.NOT_MEASURED, "kept original: not measured")

    def __str__(self) -> str:
        return self.name

    def __call__(self, conv: DepthwiseConv) -> Decision:
        found = self.choices.get(conv.name, self.missing)
        return _stays(found) if isinstance(found, Choice) else found


class Auto:
    """group_size='auto': measured on the target provider (rewrite() turns it into Measured)."""

    def __str__(self) -> str:
        return "auto"

    def __repr__(self) -> str:
        return "AUTO"


AUTO = Auto()


def parse_policy(value: Any, parameter: str = "group_size") -> Policy | Auto:
    """A policy from what a user writes: an integer N, 'paper', 'full', 'auto', a lowering
    ('toeplitz', 'polyphase[:B][:2d][:fold]', 'conv2d'), or a policy (any callable) as it is."""
    if isinstance(value, Auto) or (callable(value) and not isinstance(value, (str, numbers.Integral))):
        return value
    number = _integer(value)
    if number is not None:
        if number < 1:
            raise DiagwiseError(f"{parameter} must be {POLICY_HELP}; got {number}", parameter)
        return GroupSize(number)
    text = str(value).strip().lower()
    named = {"paper": PAPER, "full": FULL, "auto": AUTO}
    if text in named:
        return named[text]
    if text.isdigit() and int(text) >= 1:
        return GroupSize(int(text))
    if text.split(":")[0] in LOWERING_NAMES:
        try:
            return Lowered(parse_choice(text))
        except DiagwiseError:  # refused below, naming PARAMETER and every policy
            pass
    raise DiagwiseError(f"{parameter} must be {POLICY_HELP}; got {value!r}", parameter)


def parse_group_size(value: Any, parameter: str = "group_size") -> int | str:
    """A block-diagonal policy as an int, 'paper', 'full' or 'auto' (what torch.convert takes)."""
    policy = parse_policy(value, parameter)
    if isinstance(policy, GroupSize) and not policy.name:
        return policy.limit
    if policy in (PAPER, FULL, AUTO):
        return str(policy)
    raise DiagwiseError(f"{parameter} must be a positive integer, 'paper', 'full' or 'auto'; got {value!r}", parameter)


# ---------------------------------------------------------------- which nodes may be touched


def compile_pattern(pattern: str | None, parameter: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DiagwiseError(f"{parameter} '{pattern}' is not a valid regular expression: {exc}", parameter) from None


@dataclass(frozen=True)
class Selection:
    """Which depthwise nodes may be rewritten at all, and the exact choice of named ones."""

    include: str | None = None  # regular expression on node names
    exclude: str | None = None
    min_channels: int | None = None
    dynamic: bool = True  # False: leave nodes whose weight is a graph input or computed
    node_group_sizes: Mapping[str, int | str | Choice] = field(default_factory=dict)  # name -> G or lowering
    why_not_dynamic: str = "dynamic weights left alone (dynamic=False)"

    def __post_init__(self):
        compile_pattern(self.include, "include")
        compile_pattern(self.exclude, "exclude")
        if self.min_channels is not None and self.min_channels < 0:
            raise DiagwiseError(f"min_channels must be >= 0; got {self.min_channels}", "min_channels")
        pins = {name: parse_choice(value) for name, value in dict(self.node_group_sizes or {}).items()}
        object.__setattr__(self, "node_group_sizes", pins)

    def reason_to_leave(self, conv: DepthwiseConv) -> Leave | None:
        """Why CONV is not to be touched, or None."""
        if self.include is not None and not re.search(self.include, conv.name):
            return Leave(Reason.NOT_INCLUDED, f"name does not match include '{self.include}'", ("include",))
        if self.exclude is not None and re.search(self.exclude, conv.name):
            return Leave(Reason.EXCLUDED, f"name matches exclude '{self.exclude}'", ("exclude",))
        if self.min_channels is not None and conv.channels < self.min_channels:
            return Leave(Reason.FEW_CHANNELS, f"C={conv.channels} is below min_channels {self.min_channels}",
                         ("min_channels",))
        if conv.dynamic and not self.dynamic:
            return Leave(Reason.DYNAMIC_LEFT, f"weight is {conv.dynamic.what_it_is}; {self.why_not_dynamic}",
                         ("dynamic=False",))
        return None

    def pinned(self, conv: DepthwiseConv) -> Decision | None:
        """The pinned choice of CONV, checked against it; None when it has none."""
        choice = self.node_group_sizes.get(conv.name)
        if choice is None:
            return None
        if choice.lowering == BLOCK_DIAGONAL:
            if conv.channels % choice.group_size:
                raise DiagwiseError(f"node_group_sizes {conv.name}={choice.group_size}: {choice.group_size} does not divide "
                                    f"C={conv.channels}", "node_group_sizes")
            return _stays(Choice(group_size=choice.group_size, how="pinned by node_group_sizes", code=Reason.PINNED))
        decision = Lowered(choice)(conv)
        if isinstance(decision, Leave):
            raise DiagwiseError(f"node_group_sizes {conv.name}={choice.spec}: {decision.text}", "node_group_sizes")
        return replace(choice, how="pinned by node_group_sizes", code=Reason.PINNED)


def choose(detection: Detection, policy: Policy, selection: Selection = Selection()) -> dict[str, Decision]:
    """For every depthwise node: its exact choice, or why it is left alone."""
    if isinstance(policy, Auto):
        raise DiagwiseError("group_size 'auto' needs measurement: use rewrite() or tune()", "group_size")
    names = {c.name for c in detection.candidates}
    for name in selection.node_group_sizes:
        if name not in names:
            raise DiagwiseError(f"node_group_sizes names '{name}', which is not a rewritable depthwise Conv",
                                "node_group_sizes")
    choices: dict[str, Decision] = {}
    for conv in detection.candidates:
        choices[conv.name] = (selection.reason_to_leave(conv) or selection.pinned(conv)
                              or _fitting(conv, policy(conv)))
    return choices


def _fitting(conv: DepthwiseConv, decision: Any) -> Decision:
    """DECISION, checked against CONV: a policy may be anyone's code."""
    if isinstance(decision, Leave):
        return decision
    if not isinstance(decision, Choice):
        raise DiagwiseError(f"the policy returned {decision!r} for node '{conv.name}'; a policy returns a Choice or "
                            "a Leave", "group_size")
    if decision.lowering == BLOCK_DIAGONAL:
        if decision.group_size < 1 or conv.channels % decision.group_size:
            raise DiagwiseError(f"the policy chose G={decision.group_size} for node '{conv.name}', which does not divide "
                                f"C={conv.channels}", "group_size")
        return _stays(decision)
    if decision.lowering not in LOWERING_NAMES:
        raise DiagwiseError(f"the policy chose '{decision.lowering}' for node '{conv.name}', which is no lowering "
                            f"({', '.join(LOWERING_NAMES)})", "group_size")
    refused = why_not(conv, decision.lowering, decision.params, conv.input_shape, opset=conv.opset, reads=conv.reads)
    if refused and decision.code not in (Reason.POLICY,):
        raise DiagwiseError(f"node '{conv.name}' cannot take {decision.label}: {refused}", "group_size")
    return Leave(Reason.LOWERING_REFUSED, f"{decision.label} does not apply: {refused}") if refused else decision


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedNode:
    decision: NodeDecision  # action "rewrite" or "skipped"
    choice: Choice | None  # set when the node is to be rewritten


@dataclass(frozen=True)
class Plan:
    """Every grouped convolution with its decision: depthwise nodes in order, then the others.
    Data only: apply it to the model it was made for, or to any copy of it."""

    policy: str
    nodes: tuple[PlannedNode, ...]

    @property
    def choices(self) -> dict[tuple[str, str], Choice]:
        """{(graph, node): choice} of the nodes this plan rewrites."""
        return {(p.decision.graph, p.decision.name): p.choice for p in self.nodes if p.choice is not None}

    @property
    def group_sizes(self) -> dict[str, int]:
        """{node: G} of the block-diagonal rewrites."""
        return {p.decision.name: p.choice.group_size for p in self.nodes
                if p.choice is not None and p.choice.lowering == BLOCK_DIAGONAL}


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


def _sizes_after(conv: DepthwiseConv, choice: Choice, weight_bytes: int | None,
                 flops: int | None) -> tuple[int | None, int | None, float]:
    """Weight bytes (weight and, for lowerings, bias), FLOPs per sample and the arithmetic factor
    after CHOICE."""
    if choice.lowering == BLOCK_DIAGONAL:
        return (weight_bytes * choice.group_size if weight_bytes is not None else None,
                flops * choice.group_size if flops is not None else None, float(choice.group_size))
    spent = cost(conv, choice.lowering, choice.params, conv.input_shape)
    return (spent.weight_bytes_after, round(flops * spent.flops_factor) if flops is not None else None,
            spent.flops_factor)


def plan_exact(detection: Detection, choices: Mapping[str, Decision], shapes: dict | None = None,
               policy: str = "exact") -> Plan:
    """The plan for exact CHOICES (from choose()); a depthwise node missing from them is left alone."""
    shapes = shapes or {}
    nodes: list[PlannedNode] = []
    for conv in detection.candidates:
        choice = choices.get(conv.name, Leave(Reason.NOT_MEASURED, "not chosen"))
        weight_bytes = tensor_nbytes(conv.weight.tensor) if conv.weight else None
        flops = _flops_per_sample(conv, shapes)
        common = dict(name=conv.name, graph=conv.graph, form=conv.form, channels=conv.channels,
                      multiplier=conv.multiplier, kernel=conv.kernel, strides=conv.strides,
                      dilations=conv.dilations, pads=conv.pads, auto_pad=conv.auto_pad, dtype=conv.dtype,
                      weight_source=conv.weight_kind, weight_bytes_before=weight_bytes, flops_before=flops)
        if isinstance(choice, Leave):
            nodes.append(PlannedNode(NodeDecision(action=Action.SKIPPED, code=choice.code, reason=choice.text,
                                                  parameters=choice.parameters, **common), None))
            continue
        bytes_after, flops_after, factor = _sizes_after(conv, choice, weight_bytes, flops)
        if choice.lowering == BLOCK_DIAGONAL:
            g = choice.group_size
            form = dict(reason=f"G={g}, group={conv.channels // g} ({choice.how})", group_size=g,
                        groups_after=conv.channels // g)
        else:
            form = dict(reason=f"{choice.label}, {factor:.2f}x the depthwise arithmetic ({choice.how})",
                        lowering=choice.lowering, lowering_params=choice.params or None)
        nodes.append(PlannedNode(NodeDecision(action=Action.REWRITE, code=choice.code, weight_bytes_after=bytes_after,
                                              flops_after=flops_after, **form, **common), choice))
    for skipped in detection.skipped:
        lowered = skipped.lowered
        nodes.append(PlannedNode(NodeDecision(
            name=skipped.name, graph=skipped.graph, action=Action.SKIPPED, code=skipped.code, reason=skipped.reason,
            form=skipped.form, channels=skipped.channels, multiplier=skipped.multiplier, kernel=skipped.kernel,
            strides=attribute(skipped.node, "strides"), dilations=attribute(skipped.node, "dilations"),
            dtype=skipped.dtype, weight_source=skipped.weight_source,
            group_size=skipped.block_diagonal_g, block_diagonal=skipped.block_diagonal is not None,
            lowering=lowered.lowering if lowered is not None else None,
            lowering_params=(dict(lowered.params) or None) if lowered is not None else None,
        ), None))
    return Plan(policy, tuple(nodes))


def plan(detection: Detection, group_size: Any = "paper", selection: Selection = Selection(),
         shapes: dict | None = None) -> Plan:
    """choose() then plan_exact() for a policy."""
    policy = parse_policy(group_size)
    return plan_exact(detection, choose(detection, policy, selection), shapes, str(policy))
