"""Where a node's values come from: its attributes, and the constant (or the graph input, or the
computation) behind a weight input, followed through Identity nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto, TensorProto, helper

from .graphs import Scope, resolve
from .reasons import Leave, Reason
from .tensors import tensor_array

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class WeightSource:
    """The constant tensor behind a weight input, and the path to it."""

    kind: str  # "initializer", "Constant", "Identity(initializer)", "Identity(Constant)"
    tensor: TensorProto  # the initializer, or the Constant node's `value` tensor
    scope: Scope  # where that tensor lives
    names: list[str]  # value names from the reading input back to the tensor, in order
    constant: NodeProto | None = None
    # (node, scope) of each Identity between the reader and the tensor, nearest first
    identities: list[tuple[NodeProto, Scope]] = field(default_factory=list)


@dataclass
class DynamicWeight:
    """A weight that is a graph input (possibly with a default) or computed by a node."""

    name: str
    description: str  # "graph input", "graph input with a default", "computed by Reshape"

    @property
    def what_it_is(self) -> str:
        """The description as it follows "weight 'w' is": 'a graph input', 'computed by Reshape'."""
        return f"a {self.description}" if self.description.startswith("graph input") else self.description


def attribute(node: NodeProto, name: str, default=None):
    """The value of NODE's attribute NAME, DEFAULT when absent.  An attribute that refers to a
    function's attribute has no value here: see references()."""
    for attr in node.attribute:
        if attr.name == name and not attr.ref_attr_name:
            return helper.get_attribute_value(attr)
    return default


def references(node: NodeProto) -> list[str]:
    """NODE's attributes that refer to an attribute of the function holding it (known only where
    the function is called), as 'name -> function attribute'."""
    return [f"{a.name} -> '{a.ref_attr_name}'" for a in node.attribute if a.ref_attr_name]


def find_weight(scope: Scope, name: str) -> WeightSource | DynamicWeight | Leave:
    """Follow NAME through Identity nodes to an initializer or Constant.

    A graph input or a computed value is a DynamicWeight; anything else a reason to leave it."""
    names = [name]
    identities: list[tuple[NodeProto, Scope]] = []
    while True:
        definition = resolve(scope, names[-1])
        if definition is None:
            return Leave(Reason.WEIGHT_UNDEFINED, f"weight '{name}' is not defined in the graph")
        if definition.kind == "input":
            if definition.tensor is not None:
                # Old exporters list initializers as inputs: a caller may feed another weight.
                return DynamicWeight(name, "graph input with a default")
            return DynamicWeight(name, "graph input")
        prefix, suffix = ("Identity(", ")") if identities else ("", "")
        if definition.kind == "initializer":
            return WeightSource(f"{prefix}initializer{suffix}", definition.tensor, definition.scope,
                                names, identities=identities)
        node = definition.node
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is None:
                return Leave(Reason.CONSTANT_WITHOUT_VALUE, f"weight '{name}' is a Constant without a tensor value")
            return WeightSource(f"{prefix}Constant{suffix}", value, definition.scope, names,
                                constant=node, identities=identities)
        if node.op_type == "Identity" and node.domain in DEFAULT_DOMAINS:
            identities.append((node, definition.scope))
            names.append(node.input[0])
            scope = definition.scope
            continue
        return DynamicWeight(name, f"computed by {node.op_type}")


def constant_array(scope: Scope, name: str) -> np.ndarray | str:
    source = find_weight(scope, name)
    if isinstance(source, WeightSource):
        return tensor_array(source.tensor)
    return f"'{name}' is not a constant"
