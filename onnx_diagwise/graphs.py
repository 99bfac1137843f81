"""Walk a model's graphs (main graph, nested subgraphs, functions) and resolve value names.

ONNX value names are unique across a graph and all its subgraphs (SSA, enforced by
the checker), so the main graph and its subgraphs share one namespace; each
model-local function has a namespace of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from onnx import FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto


@dataclass(eq=False)
class Scope:
    """One graph or function body, with the scope it is nested in.

    Name lookups go through an index of the body built on first use, so resolving every weight
    of a graph takes time linear in its size; whoever adds or removes nodes or initializers of
    the body calls changed()."""

    body: GraphProto | FunctionProto
    path: str  # e.g. "main", "main/cond_node.then_branch", "function mydomain.Block"
    parent: Scope | None
    namespace: str  # "main" or the function's path
    _index: _Index | None = field(default=None, init=False, repr=False)

    @property
    def is_function(self) -> bool:
        return isinstance(self.body, FunctionProto)

    @property
    def index(self) -> _Index:
        if self._index is None:
            self._index = _Index(self)
        return self._index

    def changed(self) -> None:
        """The body's nodes changed: look names up afresh."""
        self._index = None

    def initializer_added(self, tensor: TensorProto) -> None:
        if self._index is not None:
            self._index.initializers.setdefault(tensor.name, tensor)

    def initializer_removed(self, tensor: TensorProto) -> None:
        if self._index is not None and self._index.initializers.get(tensor.name) is tensor:
            del self._index.initializers[tensor.name]
            self._index.initializers.update({t.name: t for t in self.body.initializer
                                             if t.name == tensor.name and t is not tensor})

    def initializer(self, name: str) -> TensorProto | None:
        return self.index.initializers.get(name)

    def producer(self, name: str) -> NodeProto | None:
        return self.index.producers.get(name)

    def input_names(self) -> set[str]:
        return self.index.inputs

    def output_names(self) -> set[str]:
        if self.is_function:
            return set(self.body.output)
        return {v.name for v in self.body.output}


class _Index:
    """A body's names: initializers, the node producing each value, the nodes reading it, the
    inputs, and where each node sits."""

    def __init__(self, scope: Scope):
        body = scope.body
        self.initializers: dict[str, TensorProto] = {} if scope.is_function else {
            t.name: t for t in reversed(body.initializer)}  # the first of a repeated name, as a scan finds it
        self.producers: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = {}
        # protobuf hands out one Python object per node while any reference to it lives: holding
        # them all keeps id(node) meaning this node
        self.nodes: list[NodeProto] = list(body.node)
        self.position: dict[int, int] = {}  # id(node) -> its index in the body
        for i, node in enumerate(self.nodes):
            self.position[id(node)] = i
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for node in reversed(body.node):
            for name in node.output:
                self.producers[name] = node
        self.inputs: set[str] = set(body.input) if scope.is_function else {v.name for v in body.input}
        self.declared: dict[str, list[ValueInfoProto]] = {}  # value_info by name (graphs only)
        for value in [] if scope.is_function else body.value_info:
            self.declared.setdefault(value.name, []).append(value)


def node_label(node: NodeProto, index: int) -> str:
    return node.name or f"<{node.op_type} #{index}>"


def iter_scopes(model: ModelProto) -> Iterator[Scope]:
    """The main graph, then every subgraph depth-first, then each function and its subgraphs."""
    yield from _walk(Scope(model.graph, "main", None, "main"))
    for function in model.functions:
        path = f"function {function.domain}.{function.name}"
        yield from _walk(Scope(function, path, None, path))


def _walk(scope: Scope) -> Iterator[Scope]:
    yield scope
    for index, node in enumerate(scope.body.node):
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subgraphs:
                path = f"{scope.path}/{node_label(node, index)}.{attr.name}"
                yield from _walk(Scope(sub, path, scope, scope.namespace))


@dataclass
class Definition:
    """Where a value comes from, as seen from some scope."""

    kind: str  # "initializer" | "node" | "input"
    scope: Scope
    tensor: TensorProto | None = None
    node: NodeProto | None = None


def resolve(scope: Scope, name: str) -> Definition | None:
    """Find the definition of NAME visible from SCOPE (its own body, then outer scopes).

    A name that is both an initializer and a graph input is reported as an input,
    because a caller may override it."""
    current: Scope | None = scope
    while current is not None:
        if name in current.input_names():
            return Definition("input", current, tensor=current.initializer(name))
        tensor = current.initializer(name)
        if tensor is not None:
            return Definition("initializer", current, tensor=tensor)
        node = current.producer(name)
        if node is not None:
            return Definition("node", current, node=node)
        current = current.parent
    return None


def use_counts(model: ModelProto) -> dict[str, Counter]:
    """How often each value name is read, per namespace: node inputs in every graph
    and subgraph, plus graph and function outputs (those are reads too)."""
    counts: dict[str, Counter] = {}
    for scope in iter_scopes(model):
        counter = counts.setdefault(scope.namespace, Counter())
        for node in scope.body.node:
            counter.update(name for name in node.input if name)
        counter.update(scope.output_names())
    return counts


def all_names(model: ModelProto) -> set[str]:
    """Every value and node name in the model, to make new names that clash with none."""
    names: set[str] = set()
    for scope in iter_scopes(model):
        body = scope.body
        names.update(scope.input_names() | scope.output_names())
        if not scope.is_function:
            names.update(t.name for t in body.initializer)
            names.update(v.name for v in body.value_info)
        for node in body.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def position(body, item, items=None) -> int:
    """Where ITEM (a node of BODY, or an element of ITEMS) sits: by identity, not by protobuf's
    deep equality, which compares whole messages."""
    return next(i for i, other in enumerate(body.node if items is None else items) if other is item)


class NodeEdits:
    """Nodes to insert, replace or remove, recorded as they are decided and made at once by apply():
    one pass over each graph finds every position, so k edits of a graph of n nodes cost n + k
    steps of Python, not n * k."""

    def __init__(self) -> None:
        self._scopes: dict[int, tuple[Scope, dict[int, list]]] = {}
        self._undeclared: dict[int, tuple[Scope, set[str]]] = {}

    def _slot(self, scope: Scope, node: NodeProto) -> list:
        """[nodes before NODE, what stands in its place (NODE itself unless replaced), nodes after]."""
        _, slots = self._scopes.setdefault(id(scope), (scope, {}))
        return slots.setdefault(id(node), [[], [node], []])

    def insert_before(self, scope: Scope, node: NodeProto, nodes: list[NodeProto]) -> None:
        self._slot(scope, node)[0].extend(nodes)

    def insert_after(self, scope: Scope, node: NodeProto, nodes: list[NodeProto]) -> None:
        self._slot(scope, node)[2].extend(nodes)

    def replace(self, scope: Scope, node: NodeProto, nodes: list[NodeProto]) -> None:
        self._slot(scope, node)[1] = list(nodes)

    def remove(self, scope: Scope, node: NodeProto) -> None:
        self.replace(scope, node, [])

    def undeclare(self, scope: Scope, names: set[str]) -> None:
        """Drop the declared shapes (value_info) of NAMES from SCOPE's graph."""
        self._undeclared.setdefault(id(scope), (scope, set()))[1].update(names)

    def apply(self) -> None:
        for scope, slots in self._scopes.values():
            body = scope.body
            where = {id(node): i for i, node in enumerate(body.node) if id(node) in slots}
            for key in sorted(slots, key=where.__getitem__, reverse=True):  # from the end: positions hold
                i = where[key]
                before, middle, after = slots[key]
                node = body.node[i]
                for offset, new in enumerate(after):
                    body.node.insert(i + 1 + offset, new)
                if not (len(middle) == 1 and middle[0] is node):
                    del body.node[i]
                    for offset, new in enumerate(middle):
                        body.node.insert(i + offset, new)
                for offset, new in enumerate(before):
                    body.node.insert(i + offset, new)
            scope.changed()
        for scope, names in self._undeclared.values():
            kept = [value for value in scope.body.value_info if value.name not in names]
            if len(kept) < len(scope.body.value_info):
                del scope.body.value_info[:]
                scope.body.value_info.extend(kept)
                scope.changed()
        self._scopes.clear()
        self._undeclared.clear()



def unique_name(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name
