"""Turn block-diagonal grouped convolutions back into depthwise ones.

A node is reverted when its weight is block-diagonal (every off-diagonal entry 0,
or the output channel's zero point for quantized forms), whether this tool wrote
it or not, and when a Conv's weight is the run-time expansion this tool inserts
for dynamic weights (Reshape -> Mul(eye mask) -> Reshape).  revert(rewrite(m))
gives back the original weights exactly.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, numpy_helper

from .adapters import to_proto, uses_original_type
from .api import ModelOrPath
from .detect import (DEFAULT_DOMAINS, FLOAT_TYPES, QUANT_TYPES, WeightSource, constant_array, dequantize_source,
                     weight_zero_point,
                     attribute, find_weight, node_form, unhandled_conv)
from .graphs import Scope, iter_scopes, node_label, resolve, use_counts
from .model_io import as_model
from .report import NodeDecision, RewriteReport, RewriteResult, model_stats
from .rewriter import SUFFIX, WeightEditor, set_group
from .weights import (collapse_block_diagonal, collapse_transposed, dynamic_mask, is_block_diagonal,
                      is_block_diagonal_transposed)


@dataclass
class _Revertible:
    decision: NodeDecision
    node: NodeProto
    scope: Scope
    channels: int
    weight: WeightSource | None = None
    reader: tuple[NodeProto, int] | None = None
    collapsed: np.ndarray | None = None
    shaped: tuple[str, ...] = ()
    pattern: tuple[NodeProto, NodeProto, NodeProto, str] | None = None  # Reshape, Mul, Reshape, original W


def _constant(scope: Scope, name: str) -> np.ndarray | None:
    value = constant_array(scope, name)
    return None if isinstance(value, str) else value


def _expansion_pattern(scope: Scope, node: NodeProto, weight_name: str, group: int):
    """(reshape1, mul, reshape2, W, G, C, M, kernel) if WEIGHT_NAME is this tool's run-time expansion."""
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
    blocks = _constant(scope, reshape_in.input[1])
    mask = _constant(scope, mul.input[1])
    final = _constant(scope, reshape_out.input[1])
    if blocks is None or mask is None or final is None or blocks.ndim != 1 or len(blocks) < 5:
        return None
    c_over_g, g, m = (int(v) for v in blocks[:3])
    kernel = [int(v) for v in blocks[4:]]
    if group != c_over_g or list(final) != [c_over_g * g * m, g, *kernel]:
        return None
    if not np.array_equal(mask, dynamic_mask(g, len(kernel), mask.dtype)):
        return None
    return reshape_out, mul, reshape_in, reshape_in.input[0], g, c_over_g * g, m, kernel


def _candidate(node: NodeProto, label: str, scope: Scope, reads) -> _Revertible | None:
    spec = node_form(node)
    group = attribute(node, "group", 1)
    if spec is None or len(node.input) <= spec.weight_input:
        return None
    weight_name = node.input[spec.weight_input]
    form, reader, zp_at = spec.form, (node, spec.weight_input), (node, spec.zero_point_input, scope)
    shaped: tuple[str, ...] = ()

    def decision(action, reason, **kw) -> NodeDecision:
        return NodeDecision(name=label, graph=scope.path, action=action, reason=reason, form=form, **kw)

    if form in ("float", "FusedConv"):
        pattern = _expansion_pattern(scope, node, weight_name, group)
        if pattern is not None:
            reshape_out, mul, reshape_in, original, g, c, m, kernel = pattern
            return _Revertible(decision("reverted", f"run-time expansion with G={g} removed; depthwise again",
                                        channels=c, multiplier=m, kernel=kernel, group_size=g, groups_after=c),
                               node, scope, c, pattern=(reshape_in, mul, reshape_out, original))
        dq = dequantize_source(scope, weight_name, reads)
        if isinstance(dq, tuple):
            dq_node, dq_scope = dq
            form, reader, zp_at, weight_name, shaped = "QDQ", (dq_node, 0), (dq_node, 2, dq_scope), dq_node.input[0], \
                (node.input[spec.weight_input],)
    source = find_weight(scope if form != "QDQ" else zp_at[2], weight_name)
    if not isinstance(source, WeightSource):
        return None  # a dynamic weight that is not our expansion: an ordinary convolution
    dims = list(source.tensor.dims)
    if not 3 <= len(dims) <= 5 or source.tensor.data_type not in (QUANT_TYPES if spec.quantized or form == "QDQ"
                                                                    else FLOAT_TYPES):
        return None
    weight = np.asarray(numpy_helper.to_array(source.tensor))
    if spec.transposed:
        in_channels = dims[0]
        per_group = in_channels // group if in_channels % group == 0 else 0
        if group == in_channels or not per_group or dims[1] % per_group or in_channels == 1:
            return None
        if not is_block_diagonal_transposed(weight, per_group):
            return _skip(decision, node, scope, group, dims) if group > 1 else None
        collapsed = collapse_transposed(weight, per_group)
        multiplier = dims[1] // per_group
    else:
        in_channels = group * dims[1]
        if dims[1] == 1 or in_channels == 1 or dims[0] % in_channels:
            return None
        multiplier = dims[0] // in_channels
        per_group = dims[1]
        fill = None
        if spec.quantized or form == "QDQ":
            fill = weight_zero_point(zp_at[2], zp_at[0], zp_at[1], dims[0])
            if isinstance(fill, str):
                return None
            fill = fill.astype(weight.dtype)
        if not is_block_diagonal(weight, multiplier, fill):
            return _skip(decision, node, scope, group, dims) if group > 1 else None
        collapsed = collapse_block_diagonal(weight, multiplier, fill)
    return _Revertible(decision("reverted", f"block-diagonal with G={per_group} (group={group}) -> depthwise "
                                f"(group={in_channels})", channels=in_channels, multiplier=multiplier,
                                kernel=dims[2:], group_size=per_group, groups_after=in_channels,
                                weight_source=source.kind, weight_bytes_before=weight.nbytes,
                                weight_bytes_after=collapsed.nbytes),
                       node, scope, in_channels, source, reader, collapsed, shaped)


def _skip(decision, node: NodeProto, scope: Scope, group: int, dims: list[int]) -> _Revertible:
    return _Revertible(decision("skipped", f"grouped (group={group}, weight {dims}) but not block-diagonal: "
                                           "it mixes channels, so it is not a depthwise convolution"),
                       node, scope, 0)


def revert(model_or_path: ModelOrPath, copy: bool = True) -> RewriteResult:
    """Collapse every block-diagonal grouped convolution back to a depthwise one."""
    start = time.perf_counter()
    proto, back = to_proto(model_or_path)
    model = as_model(proto, copy=copy and not uses_original_type(model_or_path))
    before = model_stats(model)
    counts = use_counts(model)
    found, unhandled = [], []
    for scope in iter_scopes(model):
        for index, node in enumerate(scope.body.node):
            label = node_label(node, index)
            item = _candidate(node, label, scope, counts[scope.namespace])
            if item is not None:
                found.append(item)
            elif node_form(node) is None and (other := unhandled_conv(node, label, scope)) is not None:
                unhandled.append((other, _holds_block_diagonal(node, scope)))
    editor = WeightEditor(model)
    for item in found:
        if item.decision.action != "reverted":
            continue
        if item.pattern is not None:
            _remove_expansion(item, editor, counts)
        else:
            base = item.weight.names[-1]
            original = re.sub(rf"{SUFFIX}\d+(_\d+)?$", "", base)  # the name it had before rewrite()
            editor.replace(item.weight, item.reader, item.scope.namespace, item.collapsed, "depthwise",
                           original if original != base else f"{base}_depthwise", item.shaped)
        set_group(item.node, item.channels)
    others = [NodeDecision(name=o.name, graph=o.graph, action="skipped", reason=o.reason, form=o.form,
                           channels=o.channels) for o, _ in unhandled]
    report = RewriteReport("revert", [item.decision for item in found] + others, before, model_stats(model),
                           elapsed_s=time.perf_counter() - start)
    remaining = [o.name for o, diagonal in unhandled if diagonal]
    if remaining:
        report.warnings.append(f"block-diagonal weights remain in {len(remaining)} node(s) of a form revert does not "
                               f"handle ({', '.join(remaining)}): revert the model before onnxruntime's optimizer "
                               "rewrites its convolutions")
    if not any(item.decision.action == "reverted" for item in found):
        report.warnings.append("no block-diagonal convolutions to revert: the output is a copy of the input"
                               + (f" ({len(found)} grouped convolution(s) left alone, reasons with -v)" if found else ""))
    return RewriteResult(back(model), report)


def _holds_block_diagonal(node: NodeProto, scope: Scope) -> bool:
    """Whether an unhandled convolution's constant float weight [C*M, G, k...] is block-diagonal
    with G > 1 (as rewrite() leaves it); unknown layouts count as not."""
    group = attribute(node, "group", 1)
    source = find_weight(scope, node.input[1]) if len(node.input) > 1 else None
    if not isinstance(source, WeightSource) or source.tensor.data_type not in FLOAT_TYPES:
        return False
    dims = list(source.tensor.dims)
    if not 3 <= len(dims) <= 5 or dims[1] <= 1 or dims[0] % (group * dims[1]):
        return False
    weight = numpy_helper.to_array(source.tensor)
    return is_block_diagonal(weight, dims[0] // (group * dims[1]))


def _remove_expansion(item: _Revertible, editor: WeightEditor, counts) -> None:
    """Point the Conv at the original weight again and drop the expansion nodes nobody else reads."""
    reshape_in, mul, reshape_out, original = item.pattern
    reads = counts[item.scope.namespace]
    item.node.input[1] = original
    reads[original] += 1
    for node in (reshape_out, mul, reshape_in):
        reads[node.output[0]] -= 1
        if reads[node.output[0]] > 0:
            return
        _remove(item.scope, lambda body: body.node, node)
        for name in node.input:
            reads[name] -= 1
        for name in node.input[1:]:  # the shape and mask constants, once nobody reads them
            source = find_weight(item.scope, name)
            if reads[name] == 0 and isinstance(source, WeightSource):
                if source.constant is not None:
                    _remove(source.scope, lambda body: body.node, source.constant)
                else:
                    _remove(source.scope, lambda body: body.initializer, source.tensor)


def _remove(scope: Scope, field, element) -> None:
    """Remove ELEMENT from FIELD(body) of the first scope, inner to outer, that holds it."""
    current = scope
    while current is not None:
        container = field(current.body)
        if element in container:
            container.remove(element)
            return
        current = current.parent

