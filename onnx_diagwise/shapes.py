"""Shape inference without copying weights.

onnx's shape inference serializes the model, which costs a copy of every weight
and fails past 2 GiB; it runs on a skeleton whose large tensors keep only their dims.
"""

from __future__ import annotations

import onnx
from onnx import ModelProto

from .graphs import iter_scopes
from .tensors import skeleton

Dims = list[int | str | None]  # each dim an int, a symbolic name, or None (unknown)


def infer_value_types(model: ModelProto, input_shapes: dict[str, list[int]] | None = None,
                      ) -> dict[str, tuple[int, Dims]]:
    """{name: (elem_type, dims)} for every tensor value onnx can infer in the main graph
    and its subgraphs, with the graph inputs fixed to INPUT_SHAPES where given.

    Returns {} if inference fails: shapes serve reporting, tuning and dynamic weights,
    never the correctness of a rewrite of constant weights."""
    stripped = skeleton(model, keep_dims=True)
    if input_shapes:
        del stripped.graph.value_info[:]  # declared symbolic dims would compete with the concrete ones
        for value in stripped.graph.input:
            for dim, size in zip(value.type.tensor_type.shape.dim, input_shapes.get(value.name, ())):
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped)
    except Exception:  # onnx raises many types here; shapes are optional information
        return {}

    types: dict[str, tuple[int, Dims]] = {}
    for scope in iter_scopes(inferred):
        if scope.is_function:
            continue
        graph = scope.body
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            tensor_type = value.type.tensor_type
            if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
                types[value.name] = (tensor_type.elem_type, [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim])
    return types


def infer_shapes(model: ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, Dims]:
    """{name: dims}: infer_value_types without the element types."""
    return {name: dims for name, (_, dims) in infer_value_types(model, input_shapes).items()}
