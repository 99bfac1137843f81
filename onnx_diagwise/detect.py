"""Find depthwise Conv nodes and record why every other grouped Conv is left alone.

A candidate is a Conv in the default domain with group == C > 1 and a constant
weight [C*M, 1, k...] (1-D, 2-D or 3-D).  C comes from the group attribute and
the weight shape, never from shape inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .graphs import Scope, iter_scopes, node_label, resolve
from .weights import is_block_diagonal

DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}


@dataclass
class WeightSource:
    """The constant tensor behind a Conv's weight input, and the path to it."""

    kind: str  # "initializer", "Constant", "Identity(initializer)", "Identity(Constant)"
    tensor: TensorProto  # the initializer, or the Constant node's `value` tensor
    scope: Scope  # where that tensor lives
    names: list[str]  # value names from the Conv input back to the tensor, in order
    constant: NodeProto | None = None
    # (node, scope) of each Identity between the Conv and the tensor, nearest first
    identities: list[tuple[NodeProto, Scope]] = field(default_factory=list)


@dataclass
class DepthwiseConv:
    """One depthwise Conv node that can be rewritten."""

    name: str
    node: NodeProto
    scope: Scope
    channels: int
    multiplier: int
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int] | None
    auto_pad: str
    dtype: str
    weight: WeightSource

    @property
    def graph(self) -> str:
        return self.scope.path


@dataclass
class SkippedConv:
    """A grouped Conv that is not rewritten, and why."""

    name: str
    node: NodeProto
    scope: Scope
    reason: str
    channels: int | None = None
    multiplier: int | None = None
    kernel: list[int] | None = None
    dtype: str | None = None
    weight_source: str | None = None

    @property
    def graph(self) -> str:
        return self.scope.path


@dataclass
class Detection:
    candidates: list[DepthwiseConv]
    skipped: list[SkippedConv]


def _attr(node: NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def find_weight(scope: Scope, name: str) -> WeightSource | str:
    """Follow NAME through Identity nodes to an initializer or Constant; a reason if it is not one."""
    names = [name]
    identities: list[tuple[NodeProto, Scope]] = []
    while True:
        definition = resolve(scope, names[-1])
        if definition is None:
            return f"weight '{name}' is not defined in the graph"
        if definition.kind == "input" and definition.tensor is None:
            return f"weight '{names[-1]}' is a graph input (dynamic weight, not rewritten yet)"
        if definition.kind == "input":
            # Old exporters list initializers as inputs: a caller may feed another weight,
            # which a rewritten constant would silently ignore.
            return (f"weight '{names[-1]}' is an initializer that is also a graph input, so it can be "
                    "overridden at run time; remove initializers from the graph inputs to rewrite it")
        prefix = "Identity(" if identities else ""
        suffix = ")" if identities else ""
        if definition.kind == "initializer":
            return WeightSource(f"{prefix}initializer{suffix}", definition.tensor, definition.scope,
                                names, identities=identities)
        node = definition.node
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is None:
                return f"weight '{name}' is a Constant without a tensor value"
            return WeightSource(f"{prefix}Constant{suffix}", value, definition.scope, names,
                                constant=node, identities=identities)
        if node.op_type == "Identity" and node.domain in DEFAULT_DOMAINS:
            identities.append((node, definition.scope))
            names.append(node.input[0])
            scope = definition.scope
            continue
        return (f"weight '{name}' is computed by {node.op_type} node '{node.name}' "
                "(dynamic weight, not rewritten yet)")


def _classify(node: NodeProto, label: str, scope: Scope) -> DepthwiseConv | SkippedConv | None:
    group = _attr(node, "group", 1)
    if group <= 1:
        return None

    def skip(reason: str, **kw) -> SkippedConv:
        return SkippedConv(label, node, scope, reason, **kw)

    if len(node.input) < 2 or not node.input[1]:
        return skip("Conv has no weight input")
    source = find_weight(scope, node.input[1])
    if isinstance(source, str):
        return skip(source, channels=group)
    tensor = source.tensor
    dims = list(tensor.dims)
    dtype = FLOAT_TYPES.get(tensor.data_type)
    info = dict(weight_source=source.kind, dtype=dtype or helper.tensor_dtype_to_np_dtype(tensor.data_type).name)
    if not 3 <= len(dims) <= 5:
        return skip(f"weight rank {len(dims)} is not a 1-D, 2-D or 3-D convolution", **info)
    kernel = dims[2:]
    info["kernel"] = kernel
    if dtype is None:
        return skip(f"weight dtype {info['dtype']} is not a float type", **info)
    if dims[1] != 1:
        in_channels = group * dims[1]
        if dims[0] % in_channels == 0 and _is_rewritten(tensor, dims[0] // in_channels):
            return skip(f"already block-diagonal (G={dims[1]}, group={group}); nothing to do",
                        channels=in_channels, multiplier=dims[0] // in_channels, **info)
        return skip(f"grouped conv with {dims[1]} input channels per group, not depthwise",
                    channels=in_channels, **info)
    if dims[0] % group:
        return skip(f"weight has {dims[0]} output channels, not a multiple of group={group}", **info)
    declared_kernel = _attr(node, "kernel_shape")
    if declared_kernel is not None and list(declared_kernel) != kernel:
        return skip(f"kernel_shape {list(declared_kernel)} disagrees with weight {dims}", **info)

    rank = len(kernel)
    pads = _attr(node, "pads")
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    return DepthwiseConv(
        name=label,
        node=node,
        scope=scope,
        channels=group,
        multiplier=dims[0] // group,
        kernel=kernel,
        strides=list(_attr(node, "strides", [1] * rank)),
        dilations=list(_attr(node, "dilations", [1] * rank)),
        pads=list(pads) if pads is not None else None,
        auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad,
        dtype=dtype,
        weight=source,
    )


def _is_rewritten(tensor: TensorProto, multiplier: int) -> bool:
    weight = numpy_helper.to_array(tensor)
    return bool(weight.size) and is_block_diagonal(np.asarray(weight), multiplier)


def detect(model: ModelProto) -> Detection:
    candidates: list[DepthwiseConv] = []
    skipped: list[SkippedConv] = []
    for scope in iter_scopes(model):
        for index, node in enumerate(scope.body.node):
            if node.op_type != "Conv" or node.domain not in DEFAULT_DOMAINS:
                continue
            found = _classify(node, node_label(node, index), scope)
            if isinstance(found, DepthwiseConv):
                candidates.append(found)
            elif found is not None:
                skipped.append(found)
    return Detection(candidates, skipped)
