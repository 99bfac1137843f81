"""Apply a plan to a model: block-diagonal weights and group = C/G, in place.

The caller owns MODEL (the API passes a copy).  A constant weight read only by the
rewritten node is replaced under its own name; a weight read by anything else
(another node, a graph output) is left as it was and the node gets an expanded
copy, shared by every node that expands the same weight the same way.  Weights,
Constants and Identities that end up unread are removed.

A dynamic weight (graph input, computed) is expanded at run time in front of the
Conv: Reshape(W, [C/G, G, M, 1, k...]) * eye(G)[1, G, 1, G, 1...] ->
Reshape [C*M, G, k...], so the parameter keeps its shape and gradients reach only
the diagonal entries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Mapping

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .detect import DepthwiseConv, Detection, WeightSource, detect
from .errors import DiagwiseError
from .graphs import NodeEdits, all_names, iter_scopes, position, unique_name, use_counts
from .lowerings import build, insert, why_not
from .plan import BLOCK_DIAGONAL, Choice, Plan, plan_exact
from .reasons import Action
from .report import NodeDecision
from .shapes import infer_value_types
from .tensors import tensor_array, tensor_like
from .weights import dynamic_mask, expand_depthwise, expand_transposed

SUFFIX = "_diagwise_g"  # expanded copies are named <weight>_diagwise_g<G>
ELEM_OF_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                 "bfloat16": TensorProto.BFLOAT16, "float64": TensorProto.DOUBLE}


def expand(conv: DepthwiseConv, group_size: int) -> np.ndarray:
    """The block-diagonal weight of CONV for G = GROUP_SIZE (off-diagonal: 0 or the zero point)."""
    weight = tensor_array(conv.weight.tensor)
    if conv.transposed:
        return expand_transposed(weight, conv.channels, group_size)
    fill = None if conv.zero_point is None else conv.zero_point.astype(weight.dtype)
    return expand_depthwise(weight, conv.channels, group_size, fill)


class WeightEditor:
    """Replaces constant weights in a model, keeping every other reader's view intact."""

    def __init__(self, model: ModelProto):
        self.counts = use_counts(model)
        self.initial = {namespace: Counter(reads) for namespace, reads in self.counts.items()}  # before any edit
        self.taken = all_names(model)
        self.scopes = list(iter_scopes(model))
        self.edits = NodeEdits()  # node insertions and removals, made at once by finish()
        # Replacements already made, so nodes that share a weight share its new form too.
        self.replaced: dict[tuple, str] = {}

    def replace(self, source: WeightSource, reader: tuple[NodeProto, int], namespace: str, array: np.ndarray,
                key: str, name: str, shaped_names: tuple[str, ...] = ()) -> None:
        """Make READER's input read ARRAY instead of SOURCE.

        A source read only by READER is replaced under its own name (and the declared
        shapes of SHAPED_NAMES follow); otherwise a new tensor is added beside it,
        called NAME if that is free.  KEY tells apart different arrays made from one source."""
        node, index = reader
        reads = self.counts[namespace]
        key = (namespace, source.names[-1], key)
        if key not in self.replaced:
            tensor = tensor_like(array, source.tensor)
            if all(reads[n] == 1 for n in source.names):
                self._replace_in_place(source, tensor, namespace, set(source.names) | set(shaped_names))
                return
            self.replaced[key] = unique_name(name, self.taken)
            self._add_tensor(source, tensor, self.replaced[key])
        if source.identities and all(self.initial[namespace][n] == 1 for n in source.names[:-1]):
            # The reader's own Identity chain to a shared tensor: keep the chain (revert then gives
            # back the same graph) and point its far end at the new tensor.
            far_end, _ = source.identities[-1]
            far_end.input[0] = self.replaced[key]
            self._declare_shape(namespace, set(source.names[:-1]), list(array.shape))
            reads[self.replaced[key]] += 1
            reads[source.names[-1]] -= 1
            if reads[source.names[-1]] == 0:
                self.drop_tensor(source)
            return
        node.input[index] = self.replaced[key]
        reads[self.replaced[key]] += 1
        self._release(source, reads)

    def reuse(self, source: WeightSource, reader: tuple[NodeProto, int], namespace: str, name: str) -> None:
        """Make READER read the existing tensor NAME instead of SOURCE, which goes once nobody reads it."""
        node, index = reader
        reads = self.counts[namespace]
        node.input[index] = name
        reads[name] += 1
        self._release(source, reads)

    def _replace_in_place(self, source: WeightSource, tensor: TensorProto, namespace: str, names: set[str]) -> None:
        for kept in ("name", "doc_string"):  # only those set: a Constant's tensor may have no name at all
            tensor.ClearField(kept)
            if source.tensor.HasField(kept):
                setattr(tensor, kept, getattr(source.tensor, kept))
        source.tensor.CopyFrom(tensor)
        self._declare_shape(namespace, names, list(tensor.dims))

    def _declare_shape(self, namespace: str, names: set[str], dims: list[int]) -> None:
        """The declared shapes (value_info) of NAMES follow the new weight."""
        for scope in self.scopes:
            if scope.namespace != namespace:
                continue
            for value in (v for name in names for v in scope.index.declared.get(name, ())):
                if value.type.tensor_type.HasField("shape"):
                    shape = value.type.tensor_type.shape
                    del shape.dim[:]
                    for d in dims:
                        shape.dim.add().dim_value = d

    def _add_tensor(self, source: WeightSource, tensor: TensorProto, name: str) -> None:
        """Put TENSOR beside SOURCE, so every node that can see the original sees it too."""
        tensor.name = name
        body = source.scope.body
        if not source.scope.is_function:
            body.initializer.append(tensor)
            source.scope.initializer_added(body.initializer[-1])
            return
        # Functions have no initializers: a Constant node right after the original one.
        constant = helper.make_node("Constant", [], [name], name=unique_name(name, self.taken), value=tensor)
        self.edits.insert_after(source.scope, source.constant, [constant])

    def _release(self, source: WeightSource, reads: Counter) -> None:
        """The reader no longer reads SOURCE: drop each link of its chain that nobody reads now."""
        for index, name in enumerate(source.names):
            reads[name] -= 1
            if reads[name] > 0:
                return
            if index < len(source.identities):
                node, scope = source.identities[index]
                self.edits.remove(scope, node)
                continue  # the Identity read the next name in the chain
            self.drop_tensor(source)

    def drop_tensor(self, source: WeightSource) -> None:
        """Remove SOURCE's initializer or Constant node from the scope that holds it."""
        if source.constant is not None:
            self.edits.remove(source.scope, source.constant)
        else:
            initializers = source.scope.body.initializer
            del initializers[position(source.scope.body, source.tensor, initializers)]
            source.scope.initializer_removed(source.tensor)

    def finish(self) -> None:
        """Make the node insertions and removals recorded."""
        self.edits.apply()


def apply_plan(model: ModelProto, plan: Plan, found: Detection | None = None) -> tuple[NodeDecision, ...]:
    """Rewrite MODEL in place as PLAN says; the outcome is the plan's decisions, "rewrite" done.
    FOUND is detect()'s result for MODEL as it is now, when at hand; the plan itself holds no part
    of any model, so it applies to every copy of the model it was made for."""
    found = found or detect(model, infer_value_types(model))
    by_name = {(c.graph, c.name): c for c in found.candidates}
    editor = WeightEditor(model)
    outcome = []
    for item in plan.nodes:
        choice = item.choice
        if choice is None:
            outcome.append(item.decision)
            continue
        conv = by_name.get((item.decision.graph, item.decision.name))
        if conv is None:
            raise DiagwiseError(f"the plan rewrites '{item.decision.name}' ({item.decision.graph}), which is not a "
                                "depthwise Conv of this model")
        if choice.lowering != BLOCK_DIAGONAL:
            refused = why_not(conv, choice.lowering, choice.params, conv.input_shape, opset=conv.opset,
                              reads=editor.counts[conv.scope.namespace])
            if refused:  # e.g. a weight that another rewrite made shared since the plan was made
                raise DiagwiseError(f"'{conv.name}' cannot take {choice.label}: {refused}")
            lowered = build(conv, choice.lowering, choice.params, conv.input_shape, editor.taken, opset=conv.opset)
            insert(conv, lowered, editor.edits)
        elif conv.dynamic is not None:
            _expand_at_run_time(conv, choice.group_size, editor.taken, editor.edits)
            set_group(conv.node, conv.channels // choice.group_size)
        else:
            g = choice.group_size
            zero_point = conv.zero_point.tobytes().hex() if conv.zero_point is not None else ""
            shaped = (conv.node.input[1],) if conv.form == "QDQ" else ()  # the DequantizeLinear output
            editor.replace(conv.weight, conv.reader, conv.scope.namespace, expand(conv, g),
                           f"g{g}:{conv.transposed}:{zero_point}", f"{conv.weight.names[-1]}{SUFFIX}{g}", shaped)
            set_group(conv.node, conv.channels // g)
        outcome.append(replace(item.decision, action=Action.REWRITTEN))
    editor.finish()
    return tuple(outcome)


def apply_group_sizes(model: ModelProto, group_sizes: Mapping[str, int | Choice]) -> tuple[NodeDecision, ...]:
    """Rewrite exactly the nodes of GROUP_SIZES ({node: G or Choice}) in MODEL, in place."""
    found = detect(model, infer_value_types(model))
    choices = {n: c if isinstance(c, Choice) else Choice(group_size=c, how="exact") for n, c in group_sizes.items()}
    return apply_plan(model, plan_exact(found, choices), found)


def _expand_at_run_time(conv: DepthwiseConv, g: int, taken: set[str], edits: NodeEdits) -> None:
    """Insert Reshape -> Mul(mask) -> Reshape in front of the Conv's weight input."""
    c, m, kernel = conv.channels, conv.multiplier, conv.kernel
    base = conv.dynamic.name
    names = {key: unique_name(f"{base}_diagwise_{key}", taken)
             for key in ("blocks_shape", "mask", "weight_shape", "blocks", "masked", "g%d" % g)}
    dtype = helper.tensor_dtype_to_np_dtype(ELEM_OF_DTYPE[conv.dtype])
    constants = {
        names["blocks_shape"]: np.array([c // g, g, m, 1, *kernel], np.int64),
        names["mask"]: dynamic_mask(g, len(kernel), dtype),
        names["weight_shape"]: np.array([c * m, g, *kernel], np.int64),
    }
    weight_out = names["g%d" % g]
    nodes = [
        helper.make_node("Reshape", [base, names["blocks_shape"]], [names["blocks"]],
                         name=unique_name(f"{conv.name}_diagwise_reshape", taken)),
        helper.make_node("Mul", [names["blocks"], names["mask"]], [names["masked"]],
                         name=unique_name(f"{conv.name}_diagwise_mask", taken)),
        helper.make_node("Reshape", [names["masked"], names["weight_shape"]], [weight_out],
                         name=unique_name(f"{conv.name}_diagwise_weight", taken)),
    ]
    body = conv.scope.body
    if conv.scope.is_function:
        nodes = [helper.make_node("Constant", [], [n], name=unique_name(n, taken), value=numpy_helper.from_array(v))
                 for n, v in constants.items()] + nodes
    else:
        for n, v in constants.items():
            body.initializer.append(numpy_helper.from_array(v, n))
            conv.scope.initializer_added(body.initializer[-1])
    edits.insert_before(conv.scope, conv.node, nodes)
    node, input_index = conv.reader
    node.input[input_index] = weight_out


def set_group(node: NodeProto, group: int) -> None:
    for attr in node.attribute:
        if attr.name == "group":
            attr.i = group
            return
    node.attribute.append(helper.make_attribute("group", group))
