"""Other exact forms ("lowerings") of a depthwise Conv, built from standard ONNX ops.

A depthwise layer (W [C*M, 1, k...], group = C; README, "How it works") is rewritten as a small
subgraph that computes the same output with an ordinary grouped Conv.  Notation: x the
input [N, C, spatial...], H = the first spatial size, L = the last, K_h / K the kernel
along them, s / d stride and dilation, p padding.

* toeplitz (2-D and 3-D; needs a static H).  The rows of the input become channels:
  Reshape x [N, C, H, W] -> [N, C*H, W] (a view: no data moves), then a 1-D Conv along W
  with group = C, H inputs and M*H_out outputs per group, weight
  T[(o, i), h, kw] = W[o, 0, kh, kw] where h = i*s_h + kh*d_h - p_top (zero elsewhere),
  then Reshape [N, C*M, H_out, W_out].  Stride, dilation and padding along H fold into T;
  along W they stay on the Conv (auto_pad too, so W may be symbolic).  The zero rows of
  the padding are left out of T rather than added with Pad: fewer inputs per group
  (H instead of H + K_h - 1) and no Pad pass.  A 3-D layer does the same along D with a
  2-D Conv over (H, W).  Arithmetic H / K_h times the depthwise layer's.
* polyphase (along the last axis, 1-D to 3-D; L may be symbolic).  B consecutive outputs
  of a channel read B*s + (K-1)*d inputs, so a grouped Conv with one input and B outputs
  per group, kernel K_p = (B-1)*s + (K-1)*d + 1 and stride B*s, weight
  P[(o, r), 0, ..., r*s + k*d] = W[o, 0, ..., k], gives them all; Reshape/Transpose/
  Reshape interleave the B phases.  The end is padded so that ceil(L_out / B) blocks come
  out, and a Slice cuts the result back to L_out when B does not divide it (for a
  symbolic L, L_out is computed from Shape(x)).  With as_2d the Conv runs as a 2-D one
  on [N, C, 1, L] (kernel (1, K_p)).  Arithmetic about K_p / K.
  With fold (1-D and 2-D layers; a 2-D one needs a static H) the input's P = B*s phases
  along L become channels as well: Pad, then Reshape [N, C, (H,) S, P] -> Transpose ->
  Reshape [N, C*P, (H,) S], and a grouped Conv with P inputs and B outputs per group,
  kernel ((K_h,) J), J = ceil(K_p / P), stride 1 along L, weight
  F[(o, r), p, (kh,) j] = W[o, 0, (kh,) k] where r*s + k*d = j*P + p: channels per group a
  tensor-core GEMM can use, instead of one.  Arithmetic P*J / K (2.1x for K = 31, B = 32).
* conv2d (1-D): Reshape [N, C, L] -> [N, C, 1, L], the same depthwise Conv with kernel
  (1, K), Reshape back.  Same arithmetic; the form of onnxruntime's own 1-D convolutions
  on CUDA, which may pick other kernels.

Each lowering copies weights, never sums them, so the lowered weight holds the original
values bit for bit: revert takes them back out.  The lowered weight (and bias) replaces
the original tensor in place, under its name and at its position; a weight or bias read
by anything else is refused.

Revert needs the original node exactly (name, attribute order, defaults written or not,
doc_string), which the lowered graph cannot show.  The lowered Conv's doc_string carries
it: a fixed prefix, then JSON with the lowering, its parameters, the input shape it was
built for, the original weight shape and the original NodeProto (serialized, base64).
match() trusts none of it: it recovers the weight and bias from the lowered tensors,
builds the lowering again from them and the recorded node, and accepts only when that
reproduces every lowered node (up to the names of the new values) and the lowered
tensors byte for byte.  A group someone edited is reported, not reverted.  A marker
stripped by another tool leaves a correct model that simply stays lowered.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from google.protobuf.message import DecodeError
from onnx import ModelProto, NodeProto, helper, numpy_helper

from .sources import WeightSource, attribute, find_weight
from .graphs import NodeEdits, Scope, all_names, iter_scopes, unique_name, use_counts
from .tensors import tensor_array, tensor_like

if TYPE_CHECKING:  # detect classifies lowered groups with this module's match()
    from .detect import DepthwiseConv

LOWERINGS = ("toeplitz", "polyphase", "conv2d")
BLOCKS = (4, 8, 16, 32, 64)  # polyphase block sizes worth measuring
MARKER = "onnx-diagwise lowered depthwise Conv: "
DTYPES = ("float32", "float16")
SAME = ("SAME_UPPER", "SAME_LOWER")
# ops with tensor inputs: Reshape from opset 5, Slice from opset 10
MIN_OPSET = {"toeplitz": 5, "polyphase": 10, "conv2d": 5}
FOLD_MIN_OPSET = 11  # Pad with its pads as an input
FOLD_MIN_BLOCK = 8  # fold pays where P = B*s channels per group fill a tensor-core tile
ANY_OPSET = max(*MIN_OPSET.values(), FOLD_MIN_OPSET)  # an opset every lowering takes
AXES = "DHW"

Dim = int | str | None


@dataclass(frozen=True)
class Cost:
    """What a lowering costs: weight bytes (weight and bias) and arithmetic, against the depthwise layer."""

    weight_bytes_before: int
    weight_bytes_after: int
    flops_factor: float  # multiply-adds of the lowered Conv / those of the depthwise one (padding taps counted)

    @property
    def weight_growth(self) -> int:
        return self.weight_bytes_after - self.weight_bytes_before


@dataclass(frozen=True)
class Lowered:
    """One depthwise node's replacement: NODES go where the node was; TENSORS replace the
    constants of those names (the weight, and the bias where it changes) in place."""

    lowering: str
    params: Mapping[str, Any]
    nodes: tuple[NodeProto, ...]
    tensors: Mapping[str, np.ndarray]
    cost: Cost


@dataclass(frozen=True)
class Match:
    """A lowered group found in a graph, checked, with what restore() puts back."""

    scope: Scope
    lowering: str
    params: Mapping[str, Any]
    original: NodeProto
    nodes: tuple[NodeProto, ...]  # the whole lowered group, in graph order
    tensors: Mapping[str, np.ndarray]  # the original weight and bias, by name


@dataclass(frozen=True)
class _Layer:
    """A depthwise layer as the lowerings see it: geometry, weights and input shape."""

    node: NodeProto
    channels: int
    multiplier: int
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int] | None
    auto_pad: str
    weight: np.ndarray
    bias: np.ndarray | None
    shape: list[Dim]  # the input's [N, C, spatial...]

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def out_channels(self) -> int:
        return self.channels * self.multiplier

    def size(self, axis: int) -> int | None:
        """The input size along spatial AXIS, or None when it is symbolic or unknown."""
        value = self.shape[2 + axis]
        return value if isinstance(value, int) and value > 0 else None

    def axis_name(self, axis: int) -> str:
        return AXES[3 - self.rank + axis]


# ---------------------------------------------------------------- geometry


def _pads(layer: _Layer, axis: int, size: int | None) -> tuple[int, int] | str:
    """Begin and end padding along AXIS as onnxruntime applies it, or why it cannot be known."""
    k, s, d = layer.kernel[axis], layer.strides[axis], layer.dilations[axis]
    name = layer.axis_name(axis)
    if layer.auto_pad in ("NOTSET", ""):
        pads = layer.pads or [0] * (2 * layer.rank)
        return pads[axis], pads[axis + layer.rank]
    if layer.auto_pad == "VALID":
        return 0, 0
    if layer.auto_pad not in SAME:
        return f"auto_pad '{layer.auto_pad}' is not an ONNX value"
    if d != 1:
        return (f"auto_pad {layer.auto_pad} with dilation {d} along {name}: onnxruntime refuses the combination, "
                "so there is no padding to match")
    if s == 1:
        total = k - 1
    elif size is None:
        return (f"auto_pad {layer.auto_pad} with stride {s} along {name} pads by an amount that depends on "
                f"the size there, which is {_dim_text(layer.shape[2 + axis])}")
    else:
        total = (-(-size // s) - 1) * s + k - size
        if total < 0:
            return f"auto_pad {layer.auto_pad} gives negative padding along {name} (stride {s} > kernel {k})"
    begin = total // 2 if layer.auto_pad == "SAME_UPPER" else (total + 1) // 2
    return begin, total - begin


def _out_size(layer: _Layer, axis: int, size: int | None, pads: tuple[int, int] | None = None) -> int | None:
    """The output size along AXIS (None when the input size is unknown)."""
    if size is None:
        return None
    k, s, d = layer.kernel[axis], layer.strides[axis], layer.dilations[axis]
    if layer.auto_pad in SAME:
        return -(-size // s)
    begin, end = pads if pads is not None else _pads(layer, axis, size)
    return (size + begin + end - (k - 1) * d - 1) // s + 1


def _dim_text(value: Dim) -> str:
    return f"'{value}'" if isinstance(value, str) else "unknown"


def _reshape_tail(sizes: list[int | None], what: str) -> list[int] | str:
    """A Reshape target for trailing dims: the static sizes, -1 for the one unknown (else the last)."""
    unknown = [i for i, v in enumerate(sizes) if v is None]
    if len(unknown) > 1:
        return f"{what} has {len(unknown)} symbolic sizes; the Reshape back can infer only one"
    at = unknown[0] if unknown else len(sizes) - 1
    return [-1 if i == at else v for i, v in enumerate(sizes)]


# ---------------------------------------------------------------- plans: the geometry of each lowering, or a reason


@dataclass(frozen=True)
class _Toeplitz:
    rows: int  # H
    rows_out: int  # H_out
    taps: tuple[tuple[int, int, int], ...]  # (i, kh, h): output row i reads input row h with kernel row kh
    reshape_in: list[int]
    reshape_out: list[int]


@dataclass(frozen=True)
class _Fold:
    """The input side of polyphase with fold: Pad, a Slice to S*P when needed, phases to channels."""

    period: int  # P = B*s: the input phases that become channels
    taps: int  # J: the Conv's kernel, in steps of P
    pad_begin: int
    pad_end: int  # of the Pad; the Slice that follows cuts to S*P (for a symbolic L, at run time)
    total: int | None  # S*P for a static L (None: symbolic)
    slices: bool  # whether a Slice to S*P follows the Pad


@dataclass(frozen=True)
class _Polyphase:
    block: int
    as_2d: bool
    span: int  # K_p: the inputs one block of B outputs reads
    pads_begin: list[int]  # of the grouped Conv, every spatial axis
    pads_end: list[int]
    length_out: int | None  # L_out, None when L is symbolic
    blocks: int | None  # ceil(L_out / B)
    reshape_out: list[int]
    length_offset: int  # L_out = (L + length_offset) // s + 1
    fold: _Fold | None = None

    @property
    def slices(self) -> bool:
        return self.length_out is None or self.blocks * self.block != self.length_out


def _params(lowering: str, params: Mapping[str, Any] | None) -> dict[str, Any] | str:
    """PARAMS checked and completed with defaults."""
    if lowering not in LOWERINGS:
        return f"unknown lowering '{lowering}' (known: {', '.join(LOWERINGS)})"
    params = dict(params or {})
    allowed = {"toeplitz": {}, "polyphase": {"block": None, "as_2d": False, "fold": False}, "conv2d": {}}[lowering]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        return f"{lowering} takes no parameter {', '.join(unknown)}" + (
            f" (its parameters: {', '.join(allowed)})" if allowed else "")
    full = {**allowed, **params}
    if lowering == "polyphase":
        block = full["block"]
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            return f"polyphase needs an integer block >= 2; got {block!r}"
        for flag in ("as_2d", "fold"):
            if not isinstance(full[flag], bool):
                return f"polyphase {flag} must be true or false; got {full[flag]!r}"
        if not full["fold"]:
            del full["fold"]  # written only when set: markers, plans and caches of plain polyphase stay as they were
    return full


def _plan(layer: _Layer, lowering: str, params: dict[str, Any], opset: int) -> _Toeplitz | _Polyphase | None | str:
    """The geometry of LOWERING for LAYER (None for conv2d, which needs none), or why it does not apply."""
    if opset < MIN_OPSET[lowering]:
        return f"{lowering} needs ai.onnx opset {MIN_OPSET[lowering]} or later; the model has {opset}"
    if lowering == "toeplitz":
        return _plan_toeplitz(layer)
    if lowering == "polyphase":
        if params.get("fold") and opset < FOLD_MIN_OPSET:
            return f"polyphase fold needs ai.onnx opset {FOLD_MIN_OPSET} or later; the model has {opset}"
        return _plan_polyphase(layer, params["block"], params["as_2d"], params.get("fold", False))
    if layer.rank != 1:
        return f"conv2d runs 1-D layers as 2-D ones; this layer is {layer.rank}-D"
    return None


def _plan_toeplitz(layer: _Layer) -> _Toeplitz | str:
    if layer.rank == 1:
        return ("toeplitz needs a 2-D or 3-D layer (a 1-D one would become one dense matrix per channel); "
                "1-D layers take polyphase")
    rows = layer.size(0)
    name = layer.axis_name(0)
    if rows is None:
        return f"toeplitz needs a static {name} (the input's dim 2 is {_dim_text(layer.shape[2])})"
    pads = _pads(layer, 0, rows)
    if isinstance(pads, str):
        return pads
    rows_out = _out_size(layer, 0, rows, pads)
    if rows_out < 1:
        return f"the output would be empty along {name} ({name}={rows}, kernel {layer.kernel[0]})"
    k, s, d = layer.kernel[0], layer.strides[0], layer.dilations[0]
    taps = tuple((i, kh, i * s + kh * d - pads[0]) for i in range(rows_out) for kh in range(k)
                 if 0 <= i * s + kh * d - pads[0] < rows)
    missing = sorted(set(range(k)) - {kh for _, kh, _ in taps})
    if missing:
        return (f"kernel rows {_ranges(missing)} never meet the input ({name}={rows}, pads {pads[0]}/{pads[1]}, "
                f"stride {s}, dilation {d}): the lowered weight would not hold them, so revert could not be exact")
    rest = [layer.size(a) for a in range(1, layer.rank)]
    reshape_in = _reshape_tail(rest, "the input's trailing spatial shape")
    reshape_out = _reshape_tail([_out_size(layer, a, rest[a - 1]) for a in range(1, layer.rank)],
                                "the output's trailing spatial shape")
    if isinstance(reshape_in, str) or isinstance(reshape_out, str):
        return reshape_in if isinstance(reshape_in, str) else reshape_out
    return _Toeplitz(rows, rows_out, taps, [0, layer.channels * rows, *reshape_in],
                     [0, layer.out_channels, rows_out, *reshape_out])


def _plan_polyphase(layer: _Layer, block: int, as_2d: bool, fold: bool = False) -> _Polyphase | str:
    if as_2d and layer.rank != 1:
        return f"polyphase as_2d runs 1-D layers as 2-D ones; this layer is {layer.rank}-D"
    if fold and layer.rank > 2:
        return "polyphase fold is built for 1-D and 2-D layers; this layer is 3-D (it takes toeplitz or polyphase)"
    if fold and layer.rank == 2 and layer.size(0) is None:
        return (f"polyphase fold of a 2-D layer needs a static H (the input's dim 2 is "
                f"{_dim_text(layer.shape[2])})")
    last = layer.rank - 1
    all_pads = [_pads(layer, a, layer.size(a)) for a in range(layer.rank)]
    problem = next((p for p in all_pads if isinstance(p, str)), None)
    if problem:
        return problem
    k, s, d = layer.kernel[last], layer.strides[last], layer.dilations[last]
    span = (block - 1) * s + (k - 1) * d + 1
    (begin, end), length = all_pads[last], layer.size(last)
    offset = begin + end - (k - 1) * d - 1
    layer_end = end
    if length is None:
        length_out = blocks = None
        end += (block - 1) * s  # enough for ceil(L_out / B) blocks whatever L is
    else:
        length_out = (length + offset) // s + 1
        if length_out < 1:
            return f"the output would be empty along {layer.axis_name(last)} (size {length}, kernel {k})"
        blocks = -(-length_out // block)
        end += (blocks * block - length_out) * s
    others = [_out_size(layer, a, layer.size(a), all_pads[a]) for a in range(last)]
    reshape_out = _reshape_tail(others + [None if blocks is None else blocks * block], "the output's spatial shape")
    if isinstance(reshape_out, str):
        return f"polyphase needs static sizes on all spatial axes but one: {reshape_out}"
    folded = None
    if fold:
        period = block * s
        taps = -(-span // period)
        if length is None:  # padded past what any L needs, then cut to S*P at run time
            folded = _Fold(period, taps, begin, max(0, layer_end + taps * period), None, True)
        else:
            total = (blocks + taps - 1) * period
            pad_end = total - begin - length  # below 0 where a stride leaves the input's tail unread
            folded = _Fold(period, taps, begin, max(0, pad_end), total, pad_end < 0)
    return _Polyphase(block, as_2d, span, [p[0] for p in all_pads[:last]] + [begin],
                      [p[1] for p in all_pads[:last]] + [end], length_out, blocks,
                      [0, layer.out_channels, *reshape_out], offset, folded)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], values[0]
    for previous, value in zip(values, values[1:] + [None]):
        if value != previous + 1:
            parts.append(f"{start}-{previous}" if previous > start else str(start))
            start = value
    return ", ".join(parts)


# ---------------------------------------------------------------- weights: lowered, and recovered from the lowered ones


def _lowered_weight(layer: _Layer, plan) -> np.ndarray:
    w = layer.weight
    if isinstance(plan, _Toeplitz):
        t = np.zeros((layer.out_channels, plan.rows_out, plan.rows) + w.shape[3:], w.dtype)
        i, kh, h = (np.array(v) for v in zip(*plan.taps))
        t[:, i, h] = w[:, 0, kh]  # output row i reads input row h with kernel row kh
        return t.reshape((layer.out_channels * plan.rows_out, plan.rows) + w.shape[3:])
    if isinstance(plan, _Polyphase):
        s, d, k = layer.strides[-1], layer.dilations[-1], layer.kernel[-1]
        p = np.zeros((layer.out_channels, plan.block) + w.shape[2:-1] + (plan.span,), w.dtype)
        for r in range(plan.block):
            p[:, r][..., r * s + np.arange(k) * d] = w[:, 0]  # p[:, r] is a view: this writes into p
        if plan.fold:  # input u = j*P + p of the span: kernel step j of channel (phase) p
            fold = plan.fold
            p = np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, fold.taps * fold.period - plan.span)])
            p = p.reshape(p.shape[:-1] + (fold.taps, fold.period))  # [C*M, B, (K_h,) J, P]
            p = np.moveaxis(p, -1, 2)  # [C*M, B, P, (K_h,) J]
            p = p.reshape((layer.out_channels * plan.block,) + p.shape[2:])
        else:
            p = p.reshape((layer.out_channels * plan.block, 1) + p.shape[2:])
        return p[:, :, None] if plan.as_2d else p
    return w[:, :, None]  # conv2d: [C*M, 1, 1, K]


def _lowered_bias(layer: _Layer, plan) -> np.ndarray | None:
    """The bias of the lowered Conv, or None where it is the original one."""
    if layer.bias is None or plan is None:
        return None
    return np.repeat(layer.bias, plan.rows_out if isinstance(plan, _Toeplitz) else plan.block)


def _recover(layer: _Layer, plan, weight: np.ndarray, bias: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """The depthwise weight and bias read back out of the lowered ones (the first copy of each tap);
    LAYER gives the geometry, its own weight only the shape."""
    out = layer.out_channels
    if plan is None:
        return weight.reshape(layer.weight.shape), bias
    if isinstance(plan, _Toeplitz):
        t = weight.reshape((out, plan.rows_out, plan.rows) + weight.shape[2:])
        first: dict[int, tuple[int, int]] = {}
        for i, kh, h in plan.taps:
            first.setdefault(kh, (i, h))
        rows = np.stack([t[:, i, h] for i, h in (first[kh] for kh in range(layer.kernel[0]))], axis=1)
        return rows[:, None], (None if bias is None else bias[::plan.rows_out])
    if plan.fold:  # back to [C*M, B, (K_h,) span]: the inverse of _lowered_weight's fold
        fold, rows = plan.fold, tuple(layer.kernel[:-1])
        weight = np.moveaxis(weight.reshape((out, plan.block, fold.period) + rows + (fold.taps,)), 2, -1)
        weight = weight.reshape((out, plan.block) + rows + (fold.taps * fold.period,))[..., :plan.span]
    p = weight.reshape((out, plan.block) + tuple(layer.kernel[:-1]) + (plan.span,))[:, 0]  # phase 0 has every tap
    taps = p[..., np.arange(layer.kernel[-1]) * layer.dilations[-1]]
    return taps[:, None], (None if bias is None else bias[::plan.block])


# ---------------------------------------------------------------- the layer, from detect's record or a recorded node


def _layer(conv: DepthwiseConv, input_shape: list[Dim] | None) -> _Layer | str:
    """CONV as a _Layer, or why no lowering applies to it."""
    if conv.form != "float":
        return f"lowerings rewrite float Conv nodes; this is a {conv.form} one"
    if conv.dtype not in DTYPES:
        return f"lowerings are built for {' and '.join(DTYPES)} (the dtypes onnxruntime runs Conv in), not {conv.dtype}"
    if len(conv.weight.names) != 1:
        return "the weight is reached through Identity nodes; lowerings replace the tensor the Conv reads directly"
    bias = None
    node = conv.node
    if len(node.input) > 2 and node.input[2]:
        source = find_weight(conv.scope, node.input[2])
        if not isinstance(source, WeightSource) or len(source.names) != 1:
            return f"bias '{node.input[2]}' is not a constant the Conv reads directly"
        bias = tensor_array(source.tensor)
        if bias.shape != (conv.channels * conv.multiplier,):
            return f"bias has shape {list(bias.shape)}, not [{conv.channels * conv.multiplier}]"
    rank = len(conv.kernel)
    if conv.pads is not None and min(conv.pads) < 0:
        return f"pads {list(conv.pads)} are negative; ONNX allows only pads >= 0"
    if input_shape is None:
        return "the input shape is unknown (lowerings need its spatial sizes)"
    if len(input_shape) != rank + 2:
        return f"input shape {list(input_shape)} is not that of a {rank}-D convolution"
    if isinstance(input_shape[1], int) and input_shape[1] != conv.channels:
        return f"input shape {list(input_shape)} has {input_shape[1]} channels, not C={conv.channels}"
    return _Layer(node, conv.channels, conv.multiplier, list(conv.kernel), list(conv.strides), list(conv.dilations),
                  None if conv.pads is None else list(conv.pads), conv.auto_pad or "NOTSET",
                  tensor_array(conv.weight.tensor), bias, list(input_shape))


def _layer_from_node(node: NodeProto, kernel: list[int], input_shape: list[Dim], weight: np.ndarray,
                     bias: np.ndarray | None) -> _Layer:
    rank = len(kernel)
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    pads = attribute(node, "pads")
    channels = attribute(node, "group", 1)
    return _Layer(node, channels, weight.shape[0] // channels, list(kernel),
                  list(attribute(node, "strides", [1] * rank)), list(attribute(node, "dilations", [1] * rank)),
                  None if pads is None else list(pads),
                  auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad, weight, bias, list(input_shape))


# ---------------------------------------------------------------- the public functions


def why_not(conv: DepthwiseConv, lowering: str, params: Mapping[str, Any] | None, input_shape: list[Dim] | None,
            *, opset: int, reads: Counter | None = None, max_weight_bytes: int | None = None) -> str | None:
    """Why CONV cannot take LOWERING with PARAMS for an input of INPUT_SHAPE, or None.

    OPSET is the model's ai.onnx opset.  READS (graphs.use_counts(model)[namespace]), when
    given, also refuses a weight or bias that something else reads; MAX_WEIGHT_BYTES a
    lowered weight and bias larger than that."""
    full = _params(lowering, params)
    if isinstance(full, str):
        return full
    layer = _layer(conv, input_shape)
    if isinstance(layer, str):
        return layer
    if reads is not None:
        for role, name in (("weight", conv.node.input[1]), ("bias", conv.node.input[2] if len(conv.node.input) > 2
                                                                    else "")):
            if name and reads[name] != 1:
                return (f"the {role} '{name}' is read {reads[name]} times; lowerings replace it in place, so it "
                        "must be read by this Conv only")
    plan = _plan(layer, lowering, full, opset)
    if isinstance(plan, str):
        return plan
    grown = _cost(layer, plan).weight_bytes_after
    if max_weight_bytes is not None and grown > max_weight_bytes:
        return (f"the lowered weight and bias would take {grown / 2**20:.1f} MiB ({grown} bytes), past the limit "
                f"of {max_weight_bytes} bytes")
    return None


def candidates(conv: DepthwiseConv, input_shape: list[Dim] | None, *, opset: int, reads: Counter | None = None,
               max_weight_bytes: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every (lowering, params) worth measuring for CONV that why_not() accepts."""
    options: list[tuple[str, dict[str, Any]]] = [("toeplitz", {}), ("conv2d", {})]
    length = input_shape[-1] if input_shape else None
    for block in BLOCKS:
        # a block past the whole length only computes padding; folded, the first such block can
        # still pay: it gives the Conv B inputs and outputs per group, a tensor-core tile's size
        past = isinstance(length, int) and block > length
        first_past = past and block // 2 < length
        for as_2d in (False, True):
            if not past:
                options.append(("polyphase", {"block": block, "as_2d": as_2d}))
            if block >= FOLD_MIN_BLOCK and (not past or first_past):
                options.append(("polyphase", {"block": block, "as_2d": as_2d, "fold": True}))
    return [(name, _params(name, params)) for name, params in options
            if why_not(conv, name, params, input_shape, opset=opset, reads=reads,
                       max_weight_bytes=max_weight_bytes) is None]


def cost(conv: DepthwiseConv, lowering: str, params: Mapping[str, Any] | None, input_shape: list[Dim]) -> Cost:
    """Weight bytes and arithmetic of LOWERING for CONV (ValueError if it does not apply)."""
    layer, _, plan = _checked(conv, lowering, params, input_shape, ANY_OPSET)
    return _cost(layer, plan)


def _cost(layer: _Layer, plan) -> Cost:
    itemsize = layer.weight.dtype.itemsize
    out = layer.out_channels
    bias = 0 if layer.bias is None else out
    before = (layer.weight.size + bias) * itemsize
    if plan is None:
        return Cost(before, before, 1.0)
    if isinstance(plan, _Toeplitz):
        factor = plan.rows / layer.kernel[0]
        grown = out * plan.rows_out * plan.rows * math.prod(layer.kernel[1:]) + bias * plan.rows_out
    else:
        k = layer.kernel[-1]
        # padding outputs past L_out are work too; for a symbolic L they tend to nothing
        wasted = 1.0 if plan.length_out is None else plan.blocks * plan.block / plan.length_out
        reads = plan.span if plan.fold is None else plan.fold.period * plan.fold.taps  # weights per output
        factor = reads / k * wasted
        grown = out * plan.block * reads * math.prod(layer.kernel[:-1]) + bias * plan.block
    return Cost(before, grown * itemsize, factor)


def _checked(conv, lowering, params, input_shape, opset):
    full = _params(lowering, params)
    if isinstance(full, str):
        raise ValueError(full)
    layer = _layer(conv, input_shape)
    if isinstance(layer, str):
        raise ValueError(layer)
    plan = _plan(layer, lowering, full, opset)
    if isinstance(plan, str):
        raise ValueError(plan)
    return layer, full, plan


def build(conv: DepthwiseConv, lowering: str, params: Mapping[str, Any] | None, input_shape: list[Dim],
          taken: set[str], *, opset: int) -> Lowered:
    """The replacement of CONV by LOWERING (ValueError with why_not's reason if it does not apply).
    New names are made unique against TAKEN (graphs.all_names of the model), which grows."""
    layer, full, plan = _checked(conv, lowering, params, input_shape, opset)
    return _build(layer, lowering, full, plan, taken)


def _build(layer: _Layer, lowering: str, params: dict[str, Any], plan, taken: set[str]) -> Lowered:
    node = layer.node
    x, y = node.input[0], node.output[0]
    weight_name = node.input[1]
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    weight = _lowered_weight(layer, plan)
    marker = MARKER + json.dumps({
        "lowering": lowering, "params": params, "input_shape": layer.shape,
        "weight_shape": list(layer.weight.shape),
        "node": base64.b64encode(node.SerializeToString()).decode("ascii")}, sort_keys=True)
    emit = _Emitter(node.name or y, lowering, taken)
    conv_inputs = [weight_name] + ([bias_name] if bias_name else [])
    if isinstance(plan, _Toeplitz):
        rows_in = emit.op("Reshape", [x, emit.constant("rows_shape", plan.reshape_in)], "rows")
        geometry = _passthrough(layer, 1)
        lowered = emit.conv(node.name, [rows_in] + conv_inputs, layer.channels, list(weight.shape[2:]), marker,
                            **geometry)
        emit.op("Reshape", [lowered, emit.constant("out_shape", plan.reshape_out)], "out", output=y)
    elif isinstance(plan, _Polyphase):
        _emit_polyphase(emit, layer, plan, weight, conv_inputs, marker)
    else:
        rows_in = emit.op("Reshape", [x, emit.constant("2d_shape", [0, layer.channels, 1, -1])], "2d")
        geometry = {"strides": [1, *layer.strides], "dilations": [1, *layer.dilations]}
        if layer.auto_pad not in ("NOTSET", ""):
            geometry["auto_pad"] = layer.auto_pad  # the added axis (size 1, kernel 1) pads by 0 in every mode
        else:
            pads = layer.pads or [0, 0]
            geometry["pads"] = [0, pads[0], 0, pads[1]]
        lowered = emit.conv(node.name, [rows_in] + conv_inputs, layer.channels, [1, *layer.kernel], marker, **geometry)
        emit.op("Reshape", [lowered, emit.constant("1d_shape", [0, layer.out_channels, -1])], "1d", output=y)
    tensors = {weight_name: weight}
    bias = _lowered_bias(layer, plan)
    if bias is not None:
        tensors[bias_name] = bias
    return Lowered(lowering, params, tuple(emit.nodes), tensors, _cost(layer, plan))


def _passthrough(layer: _Layer, first: int) -> dict[str, Any]:
    """Strides, dilations and padding of the spatial axes from FIRST on, as they are."""
    geometry: dict[str, Any] = {"strides": layer.strides[first:], "dilations": layer.dilations[first:]}
    if layer.auto_pad not in ("NOTSET", ""):
        geometry["auto_pad"] = layer.auto_pad  # the same sizes, kernels and strides: the same padding
    else:
        pads = layer.pads or [0] * (2 * layer.rank)
        geometry["pads"] = pads[first:layer.rank] + pads[layer.rank + first:]
    return geometry


def _emit_polyphase(emit: _Emitter, layer: _Layer, plan: _Polyphase, weight: np.ndarray, conv_inputs: list[str],
                    marker: str) -> None:
    node, rank = layer.node, layer.rank
    x, y = node.input[0], node.output[0]
    block_stride = plan.block * layer.strides[-1]
    geometry = {"strides": layer.strides[:-1] + [block_stride], "dilations": layer.dilations[:-1] + [1],
                "pads": plan.pads_begin + plan.pads_end}
    source, length_out = x, None
    if plan.fold:
        source, length_out = _emit_fold(emit, layer, plan)
        geometry = {}  # along L stride 1, no padding: the Pad before it did that; H keeps its own
        if rank == 2:
            geometry = {"strides": [layer.strides[0], 1], "dilations": [layer.dilations[0], 1],
                        "pads": [plan.pads_begin[0], 0, plan.pads_end[0], 0]}
    elif plan.as_2d:
        source = emit.op("Reshape", [x, emit.constant("2d_shape", [0, layer.channels, 1, -1])], "2d")
        geometry = {"strides": [1, block_stride], "dilations": [1, 1],
                    "pads": [0, plan.pads_begin[0], 0, plan.pads_end[0]]}
    blocks = emit.conv(node.name, [source] + conv_inputs, layer.channels, list(weight.shape[2:]), marker, **geometry)
    phases = emit.op("Reshape", [blocks, emit.constant("phases_shape", [0, layer.out_channels, plan.block, -1])],
                     "phases")
    interleaved = emit.op("Transpose", [phases], "interleaved", perm=[0, 1, 3, 2])
    if not plan.slices:
        emit.op("Reshape", [interleaved, emit.constant("out_shape", plan.reshape_out)], "out", output=y)
        return
    full = emit.op("Reshape", [interleaved, emit.constant("full_shape", plan.reshape_out)], "full")
    if plan.length_out is not None:
        end = emit.constant("end", [plan.length_out])
    else:
        end = length_out or _emit_length_out(emit, layer, plan)
    emit.op("Slice", [full, emit.constant("start", [0]), end, emit.constant("axis", [rank + 1])], "cut", output=y)


def _emit_length_out(emit: _Emitter, layer: _Layer, plan: _Polyphase) -> str:
    """L_out = (L + offset) // s + 1, with L read from the input at run time."""
    last_axis = layer.rank + 1
    shape = emit.op("Shape", [layer.node.input[0]], "shape")
    length = emit.op("Slice", [shape, emit.constant("length_at", [last_axis]),
                               emit.constant("length_to", [last_axis + 1])], "length")
    s = layer.strides[-1]
    if s == 1:
        return length if plan.length_offset == -1 else emit.op(
            "Add", [length, emit.constant("length_change", [plan.length_offset + 1])], "end")
    if plan.length_offset:
        length = emit.op("Add", [length, emit.constant("length_offset", [plan.length_offset])], "offset")
    strided = emit.op("Div", [length, emit.constant("stride", [s])], "strided")
    return emit.op("Add", [strided, emit.constant("one", [1])], "end")


def _emit_fold(emit: _Emitter, layer: _Layer, plan: _Polyphase) -> tuple[str, str | None]:
    """x padded to S*P along L and its P phases made channels: [N, C*P, (H,) S] (or [N, C*P, 1, S]).
    Returns it and L_out when that was computed at run time (for the Slice at the end)."""
    fold, length_out, rank = plan.fold, None, layer.rank
    rows = [layer.size(0)] if rank == 2 else []  # static: _plan_polyphase checked
    pads = [0] * (2 * rank + 4)
    pads[rank + 1], pads[2 * rank + 3] = fold.pad_begin, fold.pad_end  # along L only
    padded = emit.op("Pad", [layer.node.input[0], emit.constant("fold_pads", pads)], "padded")
    if fold.slices:
        if fold.total is not None:
            total = emit.constant("fold_total", [fold.total])
        else:  # S*P = (ceil(L_out / B) + J - 1) * P
            length_out = _emit_length_out(emit, layer, plan)
            blocks = emit.op("Div", [emit.op("Add", [length_out, emit.constant("round_up", [plan.block - 1])], "up"),
                                     emit.constant("block", [plan.block])], "blocks")
            steps = emit.op("Add", [blocks, emit.constant("more_steps", [fold.taps - 1])], "steps")
            total = emit.op("Mul", [steps, emit.constant("period", [fold.period])], "total")
        padded = emit.op("Slice", [padded, emit.constant("fold_start", [0]), total,
                                   emit.constant("fold_axis", [rank + 1])], "fold_cut")
    steps_shape = [0, layer.channels, *rows, -1, fold.period]
    steps = emit.op("Reshape", [padded, emit.constant("steps_shape", steps_shape)], "by_step")
    phases = emit.op("Transpose", [steps], "phases_first", perm=[0, 1, rank + 2, *range(2, rank + 2)])
    shape = [0, layer.channels * fold.period, *rows] + ([1, -1] if plan.as_2d else [-1])
    return emit.op("Reshape", [phases, emit.constant("folded_shape", shape)], "folded"), length_out


class _Emitter:
    """Makes the nodes of one lowered group, in order, with unique names."""

    def __init__(self, base: str, lowering: str, taken: set[str]):
        self.prefix = f"{base}_{lowering}_"
        self.taken = taken
        self.nodes: list[NodeProto] = []

    def op(self, op_type: str, inputs: list[str], role: str, output: str | None = None, **attrs) -> str:
        name = unique_name(self.prefix + role, self.taken)
        output = output or name
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def constant(self, role: str, values: list[int]) -> str:
        name = unique_name(self.prefix + role, self.taken)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.array(values, np.int64))))
        return name

    def conv(self, name: str, inputs: list[str], group: int, kernel: list[int], marker: str, **geometry) -> str:
        output = unique_name(self.prefix + "conv", self.taken)
        node = helper.make_node("Conv", inputs, [output], name=name, group=group, kernel_shape=kernel, **geometry)
        node.doc_string = marker
        self.nodes.append(node)
        return output


# ---------------------------------------------------------------- in a model: insert, find, restore


def insert(conv: DepthwiseConv, lowered: Lowered, edits: NodeEdits | None = None) -> None:
    """Put LOWERED in CONV's place in its graph, and its tensors in place of the originals.  With
    EDITS the nodes are replaced when the caller applies them (with its other edits), else now."""
    pending = edits or NodeEdits()
    pending.replace(conv.scope, conv.node, list(lowered.nodes))
    for name, array in lowered.tensors.items():
        _replace_tensor(conv.scope, name, array)
    if edits is None:
        pending.apply()


def lower(model: ModelProto, conv: DepthwiseConv, lowering: str, params: Mapping[str, Any] | None,
          input_shape: list[Dim]) -> Lowered:
    """Lower CONV (a record of detect(MODEL)) in MODEL, in place; ValueError with the reason if it cannot be."""
    opset = opset_of(model)
    reason = why_not(conv, lowering, params, input_shape, opset=opset,
                     reads=use_counts(model)[conv.scope.namespace])
    if reason:
        raise ValueError(f"{conv.name}: {reason}")
    lowered = build(conv, lowering, params, input_shape, all_names(model), opset=opset)
    insert(conv, lowered)
    return lowered


def label(lowering: str, params: Mapping[str, Any]) -> str:
    """toeplitz, polyphase B=16, polyphase B=16 2-D, polyphase B=16 folded, conv2d."""
    if lowering == "polyphase":
        return (f"polyphase B={params['block']}" + (" 2-D" if params.get("as_2d") else "")
                + (" folded" if params.get("fold") else ""))
    return lowering


def opset_of(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def match(scope: Scope, node: NodeProto) -> Match | str | None:
    """The lowered group NODE (a Conv with the marker) heads in SCOPE, checked; None when NODE
    carries no marker; a reason when it does but the group is not what the marker says."""
    if node.op_type != "Conv" or not node.doc_string.startswith(MARKER):
        return None
    try:
        info = json.loads(node.doc_string[len(MARKER):])
        original = NodeProto.FromString(base64.b64decode(info["node"], validate=True))
        lowering, params, input_shape = info["lowering"], info["params"], info["input_shape"]
        weight_shape = [int(v) for v in info["weight_shape"]]
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        return f"its marker does not parse ({type(exc).__name__})"
    if lowering not in LOWERINGS or len(original.input) < 2 or len(original.output) != 1:
        return "its marker does not describe a depthwise Conv this module lowers"
    names = [original.input[1]] + ([original.input[2]] if len(original.input) > 2 and original.input[2] else [])
    arrays = []
    for name in names:
        source = find_weight(scope, name)
        if not isinstance(source, WeightSource) or len(source.names) != 1:
            return f"'{name}' is no longer a constant"
        arrays.append(tensor_array(source.tensor))
    lowered_weight, lowered_bias = arrays[0], (arrays[1] if len(arrays) > 1 else None)
    full = _params(lowering, params)
    if isinstance(full, str):
        return f"its marker's parameters are wrong ({full})"
    try:
        shell = _layer_from_node(original, weight_shape[2:], input_shape, np.empty(weight_shape, lowered_weight.dtype),
                                 None if lowered_bias is None else np.empty(weight_shape[0], lowered_bias.dtype))
        plan = _plan(shell, lowering, full, ANY_OPSET)
        if isinstance(plan, str):
            return f"its marker describes a lowering that does not apply ({plan})"
        weight, bias = _recover(shell, plan, lowered_weight, lowered_bias)
        rebuilt = _build(replace(shell, weight=weight, bias=bias), lowering, full, plan, set())
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        return f"its weights do not fit the marker ({type(exc).__name__}: {exc})"
    group = _group(scope, node, original)
    if not _same_nodes(group, rebuilt.nodes):
        return "the lowered nodes were changed since they were built"
    current = dict(zip(names, arrays))
    for name, array in rebuilt.tensors.items():
        if current[name].shape != array.shape or current[name].tobytes() != array.tobytes():
            return f"the lowered tensor '{name}' was changed since it was built"
    tensors = {names[0]: weight} | ({names[1]: bias} if bias is not None else {})
    return Match(scope, lowering, full, original, tuple(group), tensors)


def _group(scope: Scope, head: NodeProto, original: NodeProto) -> list[NodeProto]:
    """The nodes of SCOPE linked to HEAD through values other than the original's inputs and output,
    in graph order (found through the scope's index: time in the size of the group, not the graph)."""
    index = scope.index
    stop = set(original.input) | set(original.output)
    found, queue = {id(head): head}, [head]
    while queue:
        node = queue.pop()
        linked = [index.producers[n] for n in node.input if n and n not in stop and n in index.producers]
        linked += [c for n in node.output if n not in stop for c in index.consumers.get(n, [])]
        for other in linked:
            if id(other) not in found:
                found[id(other)] = other
                queue.append(other)
    return sorted(found.values(), key=lambda node: index.position[id(node)])


def _same_nodes(found: list[NodeProto], rebuilt: tuple[NodeProto, ...]) -> bool:
    """Whether FOUND is REBUILT, node for node, up to the names of nodes and of the values they make."""
    if len(found) != len(rebuilt):
        return False
    renamed: dict[str, str] = {}
    for mine, theirs in zip(found, rebuilt):
        if len(mine.output) != len(theirs.output):
            return False
        copy = NodeProto()
        copy.CopyFrom(mine)
        copy.name = theirs.name
        for i, name in enumerate(copy.input):
            copy.input[i] = renamed.get(name, name)
        for i, name in enumerate(mine.output):
            renamed[name] = theirs.output[i]
            copy.output[i] = theirs.output[i]
        if copy.SerializeToString() != theirs.SerializeToString():
            return False
    return True


def find(model: ModelProto) -> list[tuple[Scope, NodeProto, Match | str]]:
    """Every lowered group in MODEL (graphs, subgraphs, functions): its Match, or why it cannot be reverted."""
    found = []
    for scope in iter_scopes(model):
        for node in scope.body.node:
            result = match(scope, node)
            if result is not None:
                found.append((scope, node, result))
    return found


def restore(found: Match, edits: NodeEdits | None = None) -> None:
    """Put the original depthwise node back where its lowered group is, and its weight and bias.
    With EDITS the nodes are replaced when the caller applies them, else now."""
    made = {name for node in found.nodes for name in node.output} - set(found.original.output)
    pending = edits or NodeEdits()
    pending.replace(found.scope, found.nodes[0], [found.original])
    for node in found.nodes[1:]:
        pending.remove(found.scope, node)
    if edits is None:
        pending.apply()
    for name, array in found.tensors.items():
        _replace_tensor(found.scope, name, array)
    if not found.scope.is_function:  # shapes someone inferred for the lowered values go with them
        (edits or pending).undeclare(found.scope, made)
        if edits is None:
            pending.apply()


def revert(model: ModelProto) -> list[str]:
    """Restore every lowered group of MODEL in place; the reasons of those left lowered."""
    problems, edits = [], NodeEdits()
    for scope, node, result in find(model):
        if isinstance(result, str):
            problems.append(f"{node.name or node.output[0]}: {result}")
        else:
            restore(result, edits)
    edits.apply()
    return problems


def _replace_tensor(scope: Scope, name: str, array: np.ndarray) -> None:
    """The constant NAME (seen from SCOPE) holds ARRAY now, under its name, at its place, stored
    as it was (raw or typed); declared shapes of NAME follow."""
    source = find_weight(scope, name)
    tensor = tensor_like(array, source.tensor)
    for name_field in ("name", "doc_string"):  # as they were, absent ones too (a Constant's tensor has no name)
        if source.tensor.HasField(name_field):
            setattr(tensor, name_field, getattr(source.tensor, name_field))
        else:
            tensor.ClearField(name_field)
    source.tensor.CopyFrom(tensor)
    for value in source.scope.index.declared.get(name, ()):
        if value.type.tensor_type.HasField("shape"):
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in array.shape:
                shape.dim.add().dim_value = size
