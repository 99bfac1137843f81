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

import numpy as np
from onnx import ModelProto, NodeProto

from .adapters import opened
from .api import ModelOrPath
from .detect import (FLOAT_TYPES, BlockDiagonal, block_diagonal_multiplier, DepthwiseConv, SkippedConv, WeightSource, attribute, detect,
                     find_weight, node_form)
from .graphs import Scope
from .lowerings import label, restore
from .reasons import Action, Reason
from .report import NodeDecision, RewriteReport, RewriteResult, model_stats, stats_after
from .rewriter import SUFFIX, WeightEditor, set_group
from .shapes import infer_value_types
from .tensors import tensor_array
from .weights import collapse_block_diagonal, collapse_transposed


def revert(model_or_path: ModelOrPath, copy: bool = True) -> RewriteResult:
    """Turn every block-diagonal grouped convolution and every lowered group back into the
    depthwise convolution it was."""
    start = time.perf_counter()
    with opened(model_or_path, copy=copy) as (model, back):
        return _revert(model, back, start)


def _revert(model: ModelProto, back, start: float) -> RewriteResult:
    found = detect(model, infer_value_types(model))  # the same classifier as rewrite and inspect
    before = model_stats(model, found)
    editor = WeightEditor(model)
    decisions, remaining = [], []
    for conv in found.candidates:
        decisions.append(_decision(conv, Action.SKIPPED, Reason.DEPTHWISE_ALREADY, "depthwise already; nothing to revert"))
    for skipped in found.skipped:
        if skipped.lowered is not None:
            restore(skipped.lowered, editor.edits)
            lowered = skipped.lowered
            decisions.append(_decision(skipped, Action.REVERTED, Reason.UNDONE,
                                       f"{label(lowered.lowering, lowered.params)} -> depthwise "
                                       f"(group={skipped.channels})", lowering=lowered.lowering,
                                       lowering_params=dict(lowered.params) or None))
            continue
        diagonal = skipped.block_diagonal
        if diagonal is None:
            decisions.append(_decision(skipped, Action.SKIPPED, *_why_left(skipped)))
            if node_form(skipped.node) is None and _holds_block_diagonal(skipped.node, skipped.scope):
                remaining.append(skipped.name)
            continue
        decisions.append(_revert_node(skipped, diagonal, editor))
    editor.finish()
    reverted = sum(d.action == Action.REVERTED for d in decisions)
    report = RewriteReport("revert", decisions, before, stats_after(model, before, decisions),
                           elapsed_s=time.perf_counter() - start)
    if remaining:
        report.warnings.append(f"block-diagonal weights remain in {len(remaining)} node(s) of a form revert does not "
                               f"handle ({', '.join(remaining)}): revert the model before onnxruntime's optimizer "
                               "rewrites its convolutions")
    if not reverted:
        report.warnings.append("no block-diagonal convolutions to revert: the output is a copy of the input"
                               + (f" ({len(decisions)} grouped convolution(s) left alone, reasons with -v)"
                                  if decisions else ""))
    return RewriteResult(back(model), report)


def _decision(conv: DepthwiseConv | SkippedConv, action: Action, code: Reason, reason: str, **fields) -> NodeDecision:
    return NodeDecision(name=conv.name, graph=conv.graph, action=action, code=code, reason=reason, form=conv.form,
                        channels=conv.channels, multiplier=conv.multiplier, kernel=conv.kernel, **fields)


def _why_left(skipped: SkippedConv) -> tuple[Reason, str]:
    """A grouped conv that is neither depthwise nor block-diagonal mixes channels; others keep detect's reason."""
    if skipped.code == Reason.GROUPED:
        return Reason.MIXES_CHANNELS, (f"{skipped.reason}: its weight is not block-diagonal (it mixes channels), "
                                       "so there is nothing to revert")
    return skipped.code, skipped.reason


def _revert_node(skipped: SkippedConv, diagonal: BlockDiagonal, editor: WeightEditor) -> NodeDecision:
    """Make one block-diagonal node depthwise again: the expansion removed, or the weight collapsed."""
    group = attribute(skipped.node, "group", 1)
    c, g = diagonal.channels, diagonal.group_size
    if diagonal.expansion is not None:
        _remove_expansion(skipped, diagonal.expansion, editor)
        set_group(skipped.node, c)
        return _decision(skipped, Action.REVERTED, Reason.UNDONE, f"run-time expansion with G={g} removed; depthwise again",
                         group_size=g, groups_after=c)
    weight = tensor_array(diagonal.weight.tensor)
    if diagonal.transposed:
        collapsed = collapse_transposed(weight, g)
    else:
        collapsed = collapse_block_diagonal(weight, diagonal.multiplier, diagonal.fill)
    base = diagonal.weight.names[-1]
    original = re.sub(rf"{SUFFIX}\d+(_\d+)?$", "", base)  # the name it had before rewrite()
    if original != base and _still_there(skipped.scope, original, diagonal, collapsed):
        # rewrite() left the original for its other readers: read it again (exactly the model it was)
        editor.reuse(diagonal.weight, diagonal.reader, skipped.scope.namespace, original)
    else:
        editor.replace(diagonal.weight, diagonal.reader, skipped.scope.namespace, collapsed, "depthwise",
                       original if original != base else f"{base}_depthwise", diagonal.shaped)
    set_group(skipped.node, c)
    return _decision(skipped, Action.REVERTED, Reason.UNDONE,
                     f"block-diagonal with G={g} (group={group}) -> depthwise (group={c})",
                     group_size=g, groups_after=c, weight_source=diagonal.weight.kind,
                     weight_bytes_before=weight.nbytes, weight_bytes_after=collapsed.nbytes)


def _still_there(scope: Scope, name: str, diagonal: BlockDiagonal, collapsed) -> bool:
    """Whether the reader sees a constant NAME with exactly the collapsed weight (and reads the
    block-diagonal one directly, not through Identity nodes of its own)."""
    source = find_weight(scope, name)
    return (len(diagonal.weight.names) == 1 and isinstance(source, WeightSource)
            and source.tensor.data_type == diagonal.weight.tensor.data_type
            and list(source.tensor.dims) == list(collapsed.shape)
            and bool(np.array_equal(tensor_array(source.tensor), collapsed)))


def _holds_block_diagonal(node: NodeProto, scope: Scope) -> bool:
    """Whether an unhandled convolution's constant float weight [C*M, G, k...] is block-diagonal
    with G > 1 (as rewrite() leaves it), by detect's test; unknown layouts count as not."""
    source = find_weight(scope, node.input[1]) if len(node.input) > 1 else None
    if not isinstance(source, WeightSource) or source.tensor.data_type not in FLOAT_TYPES:
        return False
    group = attribute(node, "group", 1)
    return len(source.tensor.dims) > 1 and source.tensor.dims[1] > 1 and isinstance(group, int) and group >= 1 \
        and block_diagonal_multiplier(source.tensor, group) is not None


def _remove_expansion(skipped: SkippedConv, expansion, editor: WeightEditor) -> None:
    """Point the Conv at the original weight again and drop the expansion nodes nobody else reads."""
    reshape_in, mul, reshape_out, original = expansion
    reads = editor.counts[skipped.scope.namespace]
    skipped.node.input[1] = original
    reads[original] += 1
    for node in (reshape_out, mul, reshape_in):
        reads[node.output[0]] -= 1
        if reads[node.output[0]] > 0:
            return
        editor.edits.remove(_holder(skipped.scope, node), node)
        for name in node.input:
            reads[name] -= 1
        for name in node.input[1:]:  # the shape and mask constants, once nobody reads them
            source = find_weight(skipped.scope, name)
            if reads[name] == 0 and isinstance(source, WeightSource):
                editor.drop_tensor(source)


def _holder(scope: Scope, node: NodeProto) -> Scope:
    """The first scope, inner to outer, that holds NODE."""
    current = scope
    while id(node) not in current.index.position:
        current = current.parent
    return current