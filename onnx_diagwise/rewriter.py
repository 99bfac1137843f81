"""Apply a plan to a model: block-diagonal weights and group = C/G, in place.

The caller owns MODEL (the API passes a copy).  A weight read only by the
rewritten Conv is replaced under its own name; a weight read by anything else
(another node, a graph output) is left as it was and the Conv gets a new tensor.  Weights, Constants and Identities that end
up unread are removed.
"""

from __future__ import annotations

from collections import Counter

from onnx import ModelProto, TensorProto, helper, numpy_helper

from .detect import DepthwiseConv, WeightSource
from .graphs import Scope, all_names, iter_scopes, unique_name, use_counts
from .plan import PlannedNode
from .weights import expand_depthwise


def apply_plan(model: ModelProto, planned: list[PlannedNode]) -> None:
    counts = use_counts(model)
    taken = all_names(model)
    scopes = list(iter_scopes(model))
    # (namespace, weight name, G) -> name of the expanded copy, so Convs that share
    # a weight also share its block-diagonal form.
    expanded_names: dict[tuple[str, str, int], str] = {}
    for item in planned:
        if item.conv is None:
            continue
        conv, g = item.conv, item.decision.group_size
        source = conv.weight
        reads = counts[conv.scope.namespace]
        key = (conv.scope.namespace, source.names[-1], g)
        if key not in expanded_names:
            expanded = numpy_helper.from_array(
                expand_depthwise(numpy_helper.to_array(source.tensor), conv.channels, g))
            if all(reads[name] == 1 for name in source.names):
                _replace_in_place(source, expanded, scopes, conv.scope.namespace)
                _set_group(conv, conv.channels // g)
                continue
            expanded_names[key] = unique_name(f"{source.names[-1]}_diagwise_g{g}", taken)
            _add_tensor(source, expanded, expanded_names[key], taken)
        conv.node.input[1] = expanded_names[key]
        reads[expanded_names[key]] += 1
        _release(source, reads)
        _set_group(conv, conv.channels // g)


def _replace_in_place(source: WeightSource, expanded: TensorProto, scopes: list[Scope],
                      namespace: str) -> None:
    expanded.name = source.tensor.name
    expanded.doc_string = source.tensor.doc_string
    source.tensor.CopyFrom(expanded)
    # Declared shapes of the weight and of the Identity outputs in between must follow.
    names = set(source.names)
    for scope in scopes:
        if scope.namespace != namespace or scope.is_function:
            continue
        for value in scope.body.value_info:
            if value.name in names and value.type.tensor_type.HasField("shape"):
                shape = value.type.tensor_type.shape
                del shape.dim[:]
                for d in expanded.dims:
                    shape.dim.add().dim_value = d


def _add_tensor(source: WeightSource, tensor: TensorProto, name: str, taken: set[str]) -> None:
    """Put TENSOR beside SOURCE, so every node that can see the original sees it too."""
    tensor.name = name
    body = source.scope.body
    if not source.scope.is_function:
        body.initializer.append(tensor)
        return
    # Functions have no initializers: a Constant node right after the original one.
    constant = helper.make_node("Constant", [], [name], name=unique_name(name, taken), value=tensor)
    index = next(i for i, node in enumerate(body.node) if node == source.constant)
    body.node.insert(index + 1, constant)


def _release(source: WeightSource, reads: Counter) -> None:
    """The Conv no longer reads SOURCE: drop each link of its chain that nobody reads now."""
    for index, name in enumerate(source.names):
        reads[name] -= 1
        if reads[name] > 0:
            return
        if index < len(source.identities):
            node, scope = source.identities[index]
            scope.body.node.remove(node)
            continue  # the Identity read the next name in the chain
        if source.constant is not None:
            source.scope.body.node.remove(source.constant)
        else:
            source.scope.body.initializer.remove(source.tensor)


def _set_group(conv: DepthwiseConv, group: int) -> None:
    for attr in conv.node.attribute:
        if attr.name == "group":
            attr.i = group
            return
    conv.node.attribute.append(helper.make_attribute("group", group))
