"""onnx-ir passes: the rewrite and its revert inside an onnx_ir.passes.PassManager, beside
onnx-ir's and onnxscript's own passes (needs the [ir] extra: pip install 'onnx-diagwise[ir]').

    import onnx_ir as ir
    from onnx_diagwise.passes import DiagonalwisePass

    manager = ir.passes.PassManager([DiagonalwisePass(group_size=32), ...])
    result = manager(model)          # result.modified says whether anything changed

The passes edit the model they are given, as onnx-ir's own passes do.  The library plans and
rewrites a ModelProto view of it (external tensors stay references there: only the weights of
grouped convolutions are read), and only what changed in that view is carried back: the rewritten Conv nodes
are edited, the nodes the rewrite adds or removes (run-time expansions, lowered groups, Identity
and Constant nodes nobody reads any more) are added or removed, and changed initializers get their
new tensor.  Every other node, value and tensor stays the object it was, with its meta.
"""

from __future__ import annotations

from collections import ChainMap
from contextlib import nullcontext
from inspect import signature
from typing import Any, Callable

import onnx
import onnx_ir as ir

from .adapters import to_proto
from .api import _rewrite, rewrite
from .report import RewriteReport, RewriteResult
from .reverter import revert
from .tensors import external_data_folder


class DiagonalwisePass(ir.passes.InPlacePass):
    """Rewrite depthwise convolutions as block-diagonal grouped ones; takes rewrite()'s options."""

    def __init__(self, group_size: Any = None, **options: Any):
        super().__init__()
        signature(rewrite).bind(None, group_size, **options)  # an unknown option fails here, not on the first model
        self.group_size, self.options = group_size, options
        self.report: RewriteReport | None = None  # the last call's

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        def run(proto: onnx.ModelProto) -> RewriteResult:
            arguments = signature(rewrite).bind(proto, self.group_size, **self.options)
            arguments.apply_defaults()
            return _rewrite(**arguments.arguments, copy=False)  # the view itself: its nodes are matched by identity

        self.report = _edit_in_place(model, run)
        return ir.passes.PassResult(model, self.report.modified)


class RevertPass(ir.passes.InPlacePass):
    """Turn block-diagonal grouped convolutions back into depthwise ones."""

    def __init__(self) -> None:
        super().__init__()
        self.report: RewriteReport | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = _edit_in_place(model, lambda proto: revert(proto, copy=False))
        return ir.passes.PassResult(model, self.report.modified)


def _edit_in_place(model: ir.Model, edit: Callable[[onnx.ModelProto], RewriteResult]) -> RewriteReport:
    """Run EDIT (which changes a ModelProto in place) on a proto view of MODEL, then make the
    same changes to MODEL; returns EDIT's report."""
    proto, _, folder = to_proto(model)
    scopes = _pair_scopes(model, proto)
    with external_data_folder(folder) if folder is not None else nullcontext():
        report = edit(proto).report
    if report.modified:
        _carry(scopes, folder)
    return report


class _Scope:
    """One graph or function of the IR model beside its body in the proto view.

    The proto nodes are held from before the edit: protobuf hands out one Python object per
    node while a reference to it lives, so after the edit a node that is the same object is the
    same node, and one that is not was added."""

    def __init__(self, graph: ir.Graph | ir.Function, body, parent: _Scope | None):
        self.graph, self.body = graph, body
        self.pairs = list(zip(body.node, graph))
        self.own: dict[str, ir.Value] = {}  # this scope's values by name, as the edited body has them
        self.values = ChainMap(self.own, parent.values) if parent else ChainMap(self.own)  # and the outer ones
        self.added: list[tuple[onnx.NodeProto, ir.Node]] = []
        self.kept: list[tuple[onnx.NodeProto, ir.Node]] = []
        self.removed: list[ir.Node] = []
        self.dropped: list[str] = []  # initializers

    def value(self, name: str) -> ir.Value | None:
        return self.values[name] if name else None  # "": an optional input left out


def _pair_scopes(model: ir.Model, proto: onnx.ModelProto) -> list[_Scope]:
    """Every graph and function of MODEL with its body in PROTO, outer scopes before inner ones
    (onnx-ir serializes one NodeProto per node and one FunctionProto per function, in order)."""
    scopes: list[_Scope] = []
    _pair(model.graph, proto.graph, None, scopes)
    for function, body in zip(model.functions.values(), proto.functions):
        _pair(function, body, None, scopes)
    return scopes


def _pair(graph, body, parent: _Scope | None, scopes: list[_Scope]) -> None:
    scope = _Scope(graph, body, parent)
    scopes.append(scope)
    for proto_node, node in scope.pairs:
        protos = {a.name: a for a in proto_node.attribute}
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                _pair(attr.value, protos[attr.name].g, scope, scopes)
            elif attr.type == ir.AttributeType.GRAPHS:
                for subgraph, sub_body in zip(attr.value, protos[attr.name].graphs):
                    _pair(subgraph, sub_body, scope, scopes)


def _carry(scopes: list[_Scope], folder: str | None) -> None:
    """Make each IR scope what its edited proto body is."""
    for scope in scopes:  # outer first: inner scopes read the outer values by name
        _carry_initializers(scope, folder)
        _carry_nodes(scope)
    for scope in scopes:
        _wire(scope)
    for scope in reversed(scopes):  # inner first: a node removed inside may read one removed outside
        if scope.removed:
            scope.graph.remove(scope.removed, safe=True)
        for name in scope.dropped:
            scope.graph.initializers.pop(name)


def _carry_initializers(scope: _Scope, folder: str | None) -> None:
    graph, values = scope.graph, scope.own
    values.update((v.name, v) for v in graph.inputs)
    if not isinstance(graph, ir.Graph):  # functions keep their constants in Constant nodes
        return
    tensors = {tensor.name: tensor for tensor in scope.body.initializer}
    for name, value in graph.initializers.items():
        tensor = tensors.pop(name, None)
        if tensor is None:
            scope.dropped.append(name)
            continue
        if ir.serde.serialize_tensor(value.const_value) != tensor:  # external data: compares the reference
            _set_tensor(value, _tensor(tensor, folder))
        values[name] = value
    for name, tensor in tensors.items():  # added by the edit
        value = ir.Value(name=name)
        _set_tensor(value, _tensor(tensor, folder))
        graph.register_initializer(value)
        values[name] = value


def _carry_nodes(scope: _Scope) -> None:
    """Keep the nodes the edit kept, in place; make the ones it added, where it put them."""
    known = {id(proto): node for proto, node in scope.pairs}
    first = scope.pairs[0][1] if scope.pairs else None
    previous = None
    for proto in scope.body.node:
        node = known.pop(id(proto), None)
        if node is not None:
            scope.kept.append((proto, node))
        else:
            node = _new_node(proto)
            if previous is not None:
                scope.graph.insert_after(previous, node)
            elif first is not None:
                scope.graph.insert_before(first, node)
            else:
                scope.graph.append(node)
            scope.added.append((proto, node))
        previous = node
        scope.own.update((v.name, v) for v in node.outputs if v.name)
    scope.removed = list(known.values())


def _wire(scope: _Scope) -> None:
    """Point the added and changed nodes at the values they read now."""
    for proto, node in scope.added:
        for index, name in enumerate(proto.input):
            node.replace_input_with(index, scope.value(name))
    for proto, node in scope.kept:
        for index, name in enumerate(proto.input):
            value = scope.value(name)
            if node.inputs[index] is not value:
                node.replace_input_with(index, value)
        _carry_attributes(proto, node)
    for node in scope.removed:
        for old in node.outputs:
            new = scope.own.get(old.name) if old.name else None
            if new is not None:
                _hand_over(old, new)
    _carry_shapes(scope)


def _carry_attributes(proto: onnx.NodeProto, node: ir.Node) -> None:
    names = set()
    for attribute in proto.attribute:
        names.add(attribute.name)
        if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue  # a scope of its own
        current = node.attributes.get(attribute.name)
        if current is None or not _same_attribute(current, attribute):
            node.attributes[attribute.name] = _attribute(attribute)
    for name in [n for n in node.attributes if n not in names]:
        del node.attributes[name]


def _same_attribute(attr, proto: onnx.AttributeProto) -> bool:
    """Whether PROTO is still what serializing ATTR gave (a tensor held as external data
    serializes as its reference: nothing is read)."""
    serialize = ir.serde.serialize_reference_attribute if attr.is_ref() else ir.serde.serialize_attribute
    return proto == serialize(attr)


def _carry_shapes(scope: _Scope) -> None:
    """Declared shapes the edit changed (a QDQ weight's DequantizeLinear output) follow."""
    for info in getattr(scope.body, "value_info", ()):
        value = scope.own.get(info.name)
        shape = ir.serde.deserialize_type_proto_for_shape(info.type)
        if value is not None and shape is not None and shape != value.shape:
            value.shape = shape


def _hand_over(old: ir.Value, new: ir.Value) -> None:
    """NEW (made by the last node of a lowered group, or by a restored Conv) is the value OLD's
    removed node made, under its name: it takes OLD's readers, graph outputs and what is known of it."""
    if new.type is None:
        new.type = old.type
    if new.shape is None:
        new.shape = old.shape
    new.doc_string = new.doc_string or old.doc_string
    for key, item in old.metadata_props.items():
        new.metadata_props.setdefault(key, item)
    for key, item in old.meta.items():
        new.meta.setdefault(key, item)
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def _tensor(proto: onnx.TensorProto, folder: str | None):
    # A message of its own: the IR tensor holds it, and a part of the view would hold the whole view.
    own = onnx.TensorProto()
    own.CopyFrom(proto)
    return ir.serde.deserialize_tensor(own, folder or "")


def _set_tensor(value: ir.Value, tensor) -> None:
    value.const_value = tensor
    value.type = ir.TensorType(tensor.dtype)
    value.shape = ir.Shape(tensor.shape)


def _attribute(proto: onnx.AttributeProto) -> ir.Attr:
    own = onnx.AttributeProto()
    own.CopyFrom(proto)  # as in _tensor
    return ir.serde.deserialize_attribute(own)


def _new_node(proto: onnx.NodeProto) -> ir.Node:
    """PROTO (never one with a subgraph: the rewrite adds none) as an IR node with unset inputs,
    wired once every scope has its values."""
    node = ir.Node(proto.domain, proto.op_type, [None] * len(proto.input), [_attribute(a) for a in proto.attribute],
                   overload=proto.overload, num_outputs=len(proto.output), name=proto.name or None,
                   doc_string=proto.doc_string or None,
                   metadata_props=ir.serde.deserialize_metadata_props(proto.metadata_props))
    for value, name in zip(node.outputs, proto.output):
        value.name = name
    return node
