"""Find depthwise convolutions in every form, and say why each other grouped one is left alone.

Forms: Conv (float), com.microsoft FusedConv, QLinearConv, ConvInteger, Conv fed by
DequantizeLinear (QDQ), ConvTranspose, and Conv whose weight is a graph input or
computed in the graph ("dynamic").  A node is depthwise when group == C > 1 and
its weight is [C*M, 1, k...] ([C, M, k...] for ConvTranspose), 1-D to 3-D.
C comes from the group attribute and the weight shape, never from shape
inference (except a dynamic weight's shape, which has no other source).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper

from .errors import DiagwiseError
from .lowerings import MARKER, label as lowering_label, match
from .reasons import Leave, Reason
from .sources import (DEFAULT_DOMAINS, DynamicWeight, WeightSource, attribute, constant_array, find_weight,
                      references)
from .graphs import Scope, iter_scopes, node_label, resolve, use_counts
from .tensors import tensor_array
from .weights import dynamic_mask, is_block_diagonal, is_block_diagonal_transposed

FLOAT_TYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}
QUANT_TYPES = {
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT4: "int4",
    TensorProto.UINT4: "uint4",
}


@dataclass(frozen=True)
class FormSpec:
    form: str
    weight_input: int
    zero_point_input: int | None = None
    transposed: bool = False
    quantized: bool = False


# (op_type, domain) -> how its weight is laid out.  Conv fed by DequantizeLinear is "QDQ".
NODE_FORMS = {
    ("Conv", ""): FormSpec("float", 1),
    ("FusedConv", "com.microsoft"): FormSpec("FusedConv", 1),
    ("QLinearConv", ""): FormSpec("QLinearConv", 3, zero_point_input=5, quantized=True),
    ("ConvInteger", ""): FormSpec("ConvInteger", 1, zero_point_input=3, quantized=True),
    ("ConvTranspose", ""): FormSpec("ConvTranspose", 1, transposed=True),
}
DEQUANTIZE_DOMAINS = DEFAULT_DOMAINS + ("com.microsoft",)


def node_form(node: NodeProto) -> FormSpec | None:
    domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
    return NODE_FORMS.get((node.op_type, domain))


@dataclass
class DepthwiseConv:
    """One depthwise node that can be rewritten."""

    name: str
    node: NodeProto
    scope: Scope
    form: str
    channels: int
    multiplier: int
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int] | None
    auto_pad: str
    dtype: str
    weight: WeightSource | None  # None for a dynamic weight
    reader: tuple[NodeProto, int]  # the node input that reads the weight (the Conv, or its DequantizeLinear)
    zero_point: np.ndarray | None = None  # quantized forms: per output channel, or one value
    transposed: bool = False
    dynamic: DynamicWeight | None = None
    input_shape: list | None = None  # [N, C, spatial...] from shape inference (ints, names or None)
    opset: int = 0  # the model's ai.onnx opset
    reads: Counter | None = None  # how often each value of the node's namespace is read

    @property
    def graph(self) -> str:
        return self.scope.path

    @property
    def weight_kind(self) -> str:
        return self.weight.kind if self.weight else self.dynamic.description


@dataclass
class BlockDiagonal:
    """A weight that is block-diagonal already (rewrite()'s output, or anyone's): what revert needs
    to make the node depthwise again."""

    group_size: int  # input channels per group, G (G = C for a group = 1 conv)
    channels: int  # C: the depthwise conv's group
    multiplier: int
    weight: WeightSource | None = None  # None: the run-time expansion
    reader: tuple[NodeProto, int] | None = None  # the node input that reads the weight
    fill: np.ndarray | None = None  # quantized forms: the off-diagonal value (the zero point)
    transposed: bool = False
    shaped: tuple[str, ...] = ()  # values whose declared shape follows the weight (a QDQ Conv's input)
    expansion: tuple[NodeProto, NodeProto, NodeProto, str] | None = None  # Reshape, Mul, Reshape, original W


@dataclass
class SkippedConv:
    """A grouped convolution that is not rewritten, and why."""

    name: str
    node: NodeProto
    scope: Scope
    reason: str
    code: Reason
    form: str | None = None
    channels: int | None = None
    multiplier: int | None = None
    kernel: list[int] | None = None
    dtype: str | None = None
    weight_source: str | None = None
    block_diagonal: BlockDiagonal | None = None
    lowered: Any = None  # lowerings.Match: a lowered group this node heads, what revert puts back

    @property
    def graph(self) -> str:
        return self.scope.path

    @property
    def block_diagonal_g(self) -> int | None:
        return self.block_diagonal.group_size if self.block_diagonal else None


@dataclass
class Detection:
    candidates: list[DepthwiseConv]
    skipped: list[SkippedConv]


def group_of(node: NodeProto, label: str) -> int:
    """NODE's group; a group that is not a positive integer makes the model invalid."""
    group = attribute(node, "group", 1)
    if not isinstance(group, int) or group < 1:
        raise DiagwiseError(f"node '{label}' ({node.op_type}) has group={group!r}, not a positive integer: "
                            "the model is invalid")
    return group


def weight_zero_point(scope: Scope, node: NodeProto, index: int | None, out_channels: int) -> np.ndarray | Leave:
    if index is None or len(node.input) <= index or not node.input[index]:
        return np.zeros((), dtype=np.int64)
    zp = constant_array(scope, node.input[index])
    if isinstance(zp, str):
        return Leave(Reason.ZERO_POINT, f"weight zero point {zp}")
    if zp.size not in (1, out_channels):
        return Leave(Reason.ZERO_POINT, f"weight zero point has {zp.size} values for {out_channels} output channels")
    return zp.reshape(-1) if zp.size > 1 else zp.reshape(())


def dequantize_source(scope: Scope, weight_name: str, reads: dict[str, int]):
    """(DequantizeLinear node, its scope) if the Conv weight is dequantized, else None; a Leave on failure.

    Casts between the two are followed (DequantizeLinear -> Cast -> Conv is what fp16 converters
    write when they keep DequantizeLinear in float32): the quantized tensor is still the weight."""
    definition = resolve(scope, weight_name)
    while (definition is not None and definition.kind == "node" and definition.node.op_type == "Cast"
           and definition.node.domain in DEFAULT_DOMAINS and reads.get(weight_name, 0) <= 1):
        weight_name = definition.node.input[0]
        definition = resolve(definition.scope, weight_name)
    if definition is None or definition.kind != "node":
        return None
    dq = definition.node
    if dq.op_type != "DequantizeLinear" or dq.domain not in DEQUANTIZE_DOMAINS:
        return None
    if reads.get(weight_name, 0) > 1:
        return Leave(Reason.DEQUANTIZE, f"dequantized weight '{weight_name}' is read by other nodes too")
    if references(dq):
        return Leave(Reason.ATTRIBUTE_REFERENCE, f"its DequantizeLinear's attributes refer to the function's "
                     f"({', '.join(references(dq))}): known only where the function is called")
    if attribute(dq, "block_size", 0):
        return Leave(Reason.DEQUANTIZE, "blocked quantization (DequantizeLinear block_size) is not supported")
    return dq, definition.scope


def _classify(node: NodeProto, label: str, scope: Scope, spec: FormSpec, reads: dict[str, int],
              value_types: dict) -> DepthwiseConv | SkippedConv | None:
    """The record of one convolution: a group = 1 one only when its weight is block-diagonal
    (rewrite()'s G = C form); any other dense convolution is no grouped one (None)."""
    if references(node):
        return SkippedConv(label, node, scope, f"attributes refer to the function's ({', '.join(references(node))}): "
                           "their values are known only where the function is called; left as it is",
                           Reason.ATTRIBUTE_REFERENCE, form=spec.form)
    group = group_of(node, label)
    found = _classify_grouped(node, label, scope, spec, group, reads, value_types)
    if group > 1 or (isinstance(found, SkippedConv) and found.block_diagonal is not None):
        return found
    return None


def _classify_grouped(node: NodeProto, label: str, scope: Scope, spec: FormSpec, group: int,
                      reads: dict[str, int], value_types: dict) -> DepthwiseConv | SkippedConv | None:
    form = spec.form

    def skip(reason: str | Leave, code: Reason | None = None, **kw) -> SkippedConv:
        if isinstance(reason, Leave):
            reason, code = reason.text, reason.code
        return SkippedConv(label, node, scope, reason, code, form=form, **kw)

    if len(node.input) <= spec.weight_input or not node.input[spec.weight_input]:
        return skip("node has no weight input", Reason.NO_WEIGHT)
    weight_name = node.input[spec.weight_input]
    reader: tuple[NodeProto, int] = (node, spec.weight_input)
    zero_point_at: tuple[NodeProto, int | None, Scope] = (node, spec.zero_point_input, scope)
    quantized = spec.quantized
    scope_for_weight = scope
    shaped: tuple[str, ...] = ()
    if spec.form in ("float", "FusedConv"):
        expansion = _expansion(node, label, scope, form, weight_name, group, value_types)
        if expansion is not None:
            return expansion
        dq = dequantize_source(scope, weight_name, reads)
        if isinstance(dq, Leave):
            return skip(dq, channels=group)
        if dq is not None:
            dq_node, scope_for_weight = dq
            form, quantized = "QDQ", True
            reader = (dq_node, 0)
            zero_point_at = (dq_node, 2, scope_for_weight)
            shaped = (weight_name,)  # the value the Conv reads, whose declared shape follows the weight
            weight_name = dq_node.input[0]

    source = find_weight(scope_for_weight, weight_name)
    if isinstance(source, Leave):
        return skip(source, channels=group)
    if isinstance(source, DynamicWeight):
        return _dynamic(node, label, scope, form, group, source, value_types, spec)

    tensor = source.tensor
    dims = list(tensor.dims)
    types = QUANT_TYPES if quantized else FLOAT_TYPES
    dtype = types.get(tensor.data_type)
    dtype_name = dtype or helper.tensor_dtype_to_np_dtype(tensor.data_type).name
    info = dict(weight_source=source.kind, dtype=dtype_name)
    if not 3 <= len(dims) <= 5:
        return skip(f"weight rank {len(dims)} is not a 1-D, 2-D or 3-D convolution", Reason.WEIGHT_RANK, **info)
    kernel = dims[2:]
    info["kernel"] = kernel
    if dtype is None:
        kind = "an 8-bit or 4-bit integer" if quantized else "a float"
        return skip(f"weight dtype {dtype_name} is not {kind} type", Reason.WEIGHT_DTYPE, **info)
    if spec.transposed:
        return _classify_transposed(node, label, scope, group, dims, source, info, reader)
    if dims[1] != 1:
        return _grouped(node, label, scope, form, group, dims, source, info, zero_point_at, reader, shaped)
    if dims[0] % group:
        return skip(f"weight has {dims[0]} output channels, not a multiple of group={group}", Reason.WEIGHT_CHANNELS,
                    **info)
    declared_kernel = attribute(node, "kernel_shape")
    if declared_kernel is not None and list(declared_kernel) != kernel:
        return skip(f"kernel_shape {list(declared_kernel)} disagrees with weight {dims}", Reason.KERNEL_SHAPE, **info)
    zero_point = None
    if quantized:
        zp_node, zp_index, zp_scope = zero_point_at
        zero_point = weight_zero_point(zp_scope, zp_node, zp_index, dims[0])
        if isinstance(zero_point, Leave):
            return skip(zero_point, **info)
        if form == "QDQ":
            problem = _dequantize_axis_problem(zp_scope, zp_node, len(dims))
            if problem:
                return skip(problem, Reason.DEQUANTIZE, **info)
    if tensor.HasField("raw_data") and tensor.data_type in FLOAT_TYPES and \
            len(tensor.raw_data) != np.prod(dims) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize:
        return skip(f"weight data ({len(tensor.raw_data)} bytes) does not match its shape {dims}", Reason.WEIGHT_DATA,
                    **info)
    return DepthwiseConv(label, node, scope, form, group, dims[0] // group, kernel, *_geometry(node, len(kernel)),
                         dtype=dtype, weight=source, reader=reader, zero_point=zero_point)


def _expansion(node: NodeProto, label: str, scope: Scope, form: str, weight_name: str,
               group: int, value_types: dict) -> SkippedConv | None:
    """The block-diagonal record of a Conv whose weight is the run-time expansion rewrite() inserts
    for a dynamic weight: Reshape(W, [C/G, G, M, 1, k...]) -> Mul(eye mask) -> Reshape [C*M, G, k...],
    W shaped [C*M, 1, k...] (what revert points the Conv at again)."""
    chain = []
    name = weight_name
    for op in ("Reshape", "Mul", "Reshape"):
        definition = resolve(scope, name)
        if definition is None or definition.kind != "node" or definition.node.op_type != op \
                or definition.node.domain not in DEFAULT_DOMAINS:
            return None
        chain.append(definition.node)
        name = definition.node.input[0]
    reshape_out, mul, reshape_in = chain
    blocks, mask, final = (constant_array(scope, n) for n in (reshape_in.input[1], mul.input[1], reshape_out.input[1]))
    if any(isinstance(v, str) for v in (blocks, mask, final)) or blocks.ndim != 1 or len(blocks) < 5:
        return None
    c_over_g, g, m = (int(v) for v in blocks[:3])
    kernel = [int(v) for v in blocks[4:]]
    if group != c_over_g or list(final) != [c_over_g * g * m, g, *kernel]:
        return None
    if not np.array_equal(mask, dynamic_mask(g, len(kernel), mask.dtype)):
        return None
    c = c_over_g * g
    _, source_dims = value_types.get(reshape_in.input[0], (None, None))
    if list(source_dims or ()) != [c * m, 1, *kernel]:
        return None  # W is not the depthwise weight itself (or its shape is unknown): not rewrite()'s
    return SkippedConv(label, node, scope, f"already block-diagonal (G={g}, group={group}): the run-time "
                       "expansion of a dynamic weight; nothing to do", Reason.BLOCK_DIAGONAL, form=form, channels=c, multiplier=m,
                       kernel=kernel, weight_source="computed by Reshape",
                       block_diagonal=BlockDiagonal(g, c, m, expansion=(reshape_in, mul, reshape_out,
                                                                        reshape_in.input[0])))


def _geometry(node: NodeProto, rank: int) -> tuple:
    pads = attribute(node, "pads")
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    return (list(attribute(node, "strides", [1] * rank)), list(attribute(node, "dilations", [1] * rank)),
            list(pads) if pads is not None else None,
            auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad)


def _dequantize_axis_problem(scope: Scope, dq: NodeProto, rank: int) -> str | None:
    """Per-channel scales must run along the output channels (axis 0) of the weight."""
    scale = constant_array(scope, dq.input[1]) if len(dq.input) > 1 else None
    if isinstance(scale, str):
        return f"dequantize scale {scale}"
    if scale is not None and scale.size > 1:
        axis = attribute(dq, "axis", 1)
        if (axis + rank if axis < 0 else axis) != 0:
            return f"per-channel quantization along axis {axis}, not the output channels (axis 0)"
    return None


def block_diagonal_multiplier(tensor: TensorProto, group: int, fill: np.ndarray | None = None) -> int | None:
    """M when the Conv weight TENSOR [C*M, G, k...] with GROUP groups is block-diagonal (FILL, the
    zero point, everywhere off the diagonal), else None: the one test of detect and revert."""
    dims = list(tensor.dims)
    if not 3 <= len(dims) <= 5 or dims[1] < 1 or dims[0] % (group * dims[1]):
        return None
    multiplier = dims[0] // (group * dims[1])
    return multiplier if is_block_diagonal(tensor_array(tensor), multiplier, fill) else None


def _grouped(node, label, scope, form, group, dims, source: WeightSource, info, zero_point_at, reader,
             shaped) -> SkippedConv:
    in_channels = group * dims[1]
    if in_channels and dims[0] % in_channels == 0:  # a weight with 0 input channels is no block-diagonal one
        zp_node, zp_index, zp_scope = zero_point_at
        fill = weight_zero_point(zp_scope, zp_node, zp_index, dims[0]) if form in ("QLinearConv", "ConvInteger", "QDQ") \
            else None
        if not isinstance(fill, Leave):
            fill = None if fill is None else fill.astype(helper.tensor_dtype_to_np_dtype(source.tensor.data_type))
            multiplier = block_diagonal_multiplier(source.tensor, group, fill)
            if multiplier:
                return SkippedConv(label, node, scope, f"already block-diagonal (G={dims[1]}, group={group}); "
                                   "nothing to do", Reason.BLOCK_DIAGONAL, form=form, channels=in_channels,
                                   multiplier=multiplier, block_diagonal=BlockDiagonal(
                                       dims[1], in_channels, multiplier, source, reader, fill, shaped=shaped), **info)
    return SkippedConv(label, node, scope, f"grouped conv with {dims[1]} input channels per group, not depthwise",
                       Reason.GROUPED, form=form, channels=in_channels, **info)


def _classify_transposed(node, label, scope, group, dims, source, info, reader) -> DepthwiseConv | SkippedConv:
    if dims[0] != group:
        in_per_group = dims[0] // group if dims[0] % group == 0 else None
        if in_per_group and dims[1] % in_per_group == 0:
            weight = tensor_array(source.tensor)
            if is_block_diagonal_transposed(weight, in_per_group):
                multiplier = dims[1] // in_per_group
                return SkippedConv(label, node, scope, f"already block-diagonal (G={in_per_group}, group={group}); "
                                   "nothing to do", Reason.BLOCK_DIAGONAL, form="ConvTranspose", channels=dims[0], multiplier=multiplier,
                                   block_diagonal=BlockDiagonal(in_per_group, dims[0], multiplier, source, reader,
                                                                transposed=True), **info)
        return SkippedConv(label, node, scope, f"grouped ConvTranspose with {dims[0] // group} input channels "
                           "per group, not depthwise", Reason.GROUPED, form="ConvTranspose", channels=dims[0], **info)
    rank = len(dims) - 2
    return DepthwiseConv(label, node, scope, "ConvTranspose", group, dims[1], dims[2:], *_geometry(node, rank),
                         dtype=info["dtype"], weight=source, reader=reader, transposed=True)


def _dynamic(node, label, scope, form, group, source: DynamicWeight, value_types, spec) -> DepthwiseConv | SkippedConv:
    reason_base = f"weight '{source.name}' is {source.what_it_is}"
    if form != "float":
        return SkippedConv(label, node, scope, f"{reason_base}; dynamic {form} weights are not supported",
                           Reason.DYNAMIC_FORM,
                           form=form, channels=group, weight_source=source.description)
    elem_type, dims = value_types.get(source.name, (None, None))
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims) or elem_type not in FLOAT_TYPES:
        return SkippedConv(label, node, scope, f"{reason_base} whose shape or float type is unknown",
                           Reason.DYNAMIC_SHAPE,
                           form="dynamic", channels=group, weight_source=source.description)
    if not 3 <= len(dims) <= 5 or dims[1] != 1 or dims[0] % group:
        return SkippedConv(label, node, scope, f"{reason_base} of shape {dims}, not depthwise",
                           Reason.DYNAMIC_NOT_DEPTHWISE,
                           form="dynamic", channels=group, weight_source=source.description)
    rank = len(dims) - 2
    return DepthwiseConv(label, node, scope, "dynamic", group, dims[0] // group, dims[2:], *_geometry(node, rank),
                         dtype=FLOAT_TYPES[elem_type], weight=None, reader=(node, spec.weight_input),
                         dynamic=source)


def unhandled_conv(node: NodeProto, label: str, scope: Scope) -> SkippedConv | None:
    """A grouped convolution of a kind this tool does not handle (onnxruntime's com.microsoft.nchwc.Conv
    or QLinearConv, other vendors' ops), so that reports list it with the reason instead of hiding it."""
    group = attribute(node, "group", 1)
    if "conv" not in node.op_type.lower() or not isinstance(group, int) or group <= 1 or references(node):
        return None
    op = f"{node.domain or 'ai.onnx'}.{node.op_type}"
    return SkippedConv(label, node, scope, f"{op} (group={group}) is not a form this tool handles; left as it is",
                       Reason.UNHANDLED_OP,
                       form=op, channels=group)


def detect(model: ModelProto, value_types: dict | None = None) -> Detection:
    """Every depthwise node (candidates) and every other grouped one (skipped, with a reason).

    value_types ({name: (elem_type, dims)}, from shapes.infer_value_types) gives dynamic
    weights their shape and every candidate its input shape; without it dynamic weights are
    skipped."""
    value_types = value_types or {}
    counts = use_counts(model)
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)
    candidates: list[DepthwiseConv] = []
    skipped: list[SkippedConv] = []
    for scope in iter_scopes(model):
        reads = counts[scope.namespace]
        for index, node in enumerate(scope.body.node):
            label = node_label(node, index)
            if node.op_type == "Conv" and node.doc_string.startswith(MARKER):
                skipped.append(_lowered(node, label, scope, match(scope, node)))
                continue
            spec = node_form(node)
            if spec is None:
                unhandled = unhandled_conv(node, label, scope)
                if unhandled is not None:
                    skipped.append(unhandled)
                continue
            found = _classify(node, label, scope, spec, reads, value_types)
            if isinstance(found, DepthwiseConv):
                found.input_shape = value_types.get(node.input[0], (None, None))[1]
                found.opset, found.reads = opset, reads
                candidates.append(found)
            elif found is not None:
                skipped.append(found)
    return Detection(candidates, skipped)


def _lowered(node: NodeProto, label: str, scope: Scope, found) -> SkippedConv:
    """The record of a Conv that heads a lowered group (FOUND: lowerings.match's result)."""
    if isinstance(found, str):
        return SkippedConv(label, node, scope, f"carries a lowering's marker, but cannot be reverted: {found}",
                           Reason.LOWERED_DAMAGED, form="float")
    original = found.original
    weight = found.tensors[original.input[1]]
    group = attribute(original, "group", 1)
    kernel = list(weight.shape[2:])
    return SkippedConv(label, node, scope, f"lowered already ({lowering_label(found.lowering, found.params)}); "
                       "nothing to do", Reason.LOWERED, form="float",
                       channels=group, multiplier=weight.shape[0] // group, kernel=kernel, dtype=weight.dtype.name,
                       weight_source="initializer", lowered=found)
