"""Shape inference without copying weights.

onnx's shape inference serializes the model, which costs a copy of every weight
and fails past 2 GiB; it runs on a skeleton whose large tensors keep only their dims.
"""

from __future__ import annotations

import onnx
from onnx import GraphProto, ModelProto

from .tensors import skeleton


def infer_shapes(model: ModelProto, input_shapes: dict[str, list[int]] | None = None,
                 ) -> dict[str, list[int | str | None]]:
    """Shapes of every value onnx can infer in the main graph and its subgraphs,
    with the graph inputs fixed to INPUT_SHAPES where given.

    Each dim is an int, a symbolic name, or None.  Returns {} if inference fails:
    shapes are used for reporting and tuning, never for correctness."""
    stripped = skeleton(model, keep_dims=True)
    if input_shapes:
        del stripped.graph.value_info[:]  # declared symbolic dims would compete with the concrete ones
    for value in stripped.graph.input:
        if value.name in (input_shapes or {}):
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped)
    except Exception:  # onnx raises many types here; shapes are optional information
        return {}

    shapes: dict[str, list[int | str | None]] = {}

    def collect(graph: GraphProto) -> None:
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                shapes[value.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim
                ]
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    collect(attr.g)
                for sub in attr.graphs:
                    collect(sub)

    collect(inferred.graph)
    return shapes
