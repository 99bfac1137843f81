"""Shape inference without copying weights.

onnx's shape inference serializes the model, which costs a full copy and fails
past 2 GiB.  Shapes never depend on the bytes of large tensors, so those bytes
are set aside for the call and put back afterwards.
"""

from __future__ import annotations

import onnx
from onnx import ModelProto, TensorProto

from .model_io import iter_tensors

# Tensors below this size stay: shape-carrying constants (Reshape targets, pads) are tiny.
_KEEP_BYTES = 4096


def infer_shapes(model: ModelProto) -> dict[str, list[int | str | None]]:
    """Shapes of every value onnx can infer in the main graph and its subgraphs.

    Each dim is an int, a symbolic name, or None.  Returns {} if inference fails:
    shapes are only used for reporting and input synthesis, never for correctness."""
    stashed: list[tuple[TensorProto, bytes]] = []
    try:
        for tensor in iter_tensors(model):
            if tensor.HasField("raw_data") and len(tensor.raw_data) > _KEEP_BYTES:
                stashed.append((tensor, tensor.raw_data))
                tensor.ClearField("raw_data")
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises many types here; shapes are optional information
        return {}
    finally:
        for tensor, raw in stashed:
            tensor.raw_data = raw

    shapes: dict[str, list[int | str | None]] = {}

    def collect(graph) -> None:
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
