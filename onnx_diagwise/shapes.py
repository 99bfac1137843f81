"""Shape inference without copying weights.

onnx's shape inference serializes the model, which costs a copy of every weight
and fails past 2 GiB; it runs on a skeleton whose large tensors keep only their dims.
"""

from __future__ import annotations

import onnx
from onnx import GraphProto, ModelProto

from .tensors import skeleton


def infer_shapes(model: ModelProto) -> dict[str, list[int | str | None]]:
    """Shapes of every value onnx can infer in the main graph and its subgraphs.

    Each dim is an int, a symbolic name, or None.  Returns {} if inference fails:
    shapes are used for reporting and input synthesis, never for correctness."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model, keep_dims=True))
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
