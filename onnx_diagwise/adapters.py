"""The model types export pipelines hand us, to and from onnx.ModelProto.

rewrite() / revert() / inspect() take a ModelProto, a path, an onnx_ir.Model (what onnxscript's
optimizer and torch.onnx's dynamo exporter work on), an onnx_graphsurgeon.Graph (TensorRT users'
editor) or a torch.onnx.ONNXProgram, and give back the type they were given.  The packages are
imported only when such a model arrives, so `import onnx_diagwise` imports none of them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from onnx import ModelProto

from .errors import DiagwiseError

SUPPORTED = "an onnx.ModelProto, a path, an onnx_ir.Model, an onnx_graphsurgeon.Graph or a torch.onnx.ONNXProgram"


def _kind(model: Any) -> str:
    if isinstance(model, ModelProto):
        return "proto"
    if isinstance(model, (str, os.PathLike)):
        return "path"
    cls = type(model)
    module, name = cls.__module__, cls.__name__
    if module.startswith("onnx_ir") and name == "Model":
        return "ir"
    if module.startswith("onnx_graphsurgeon") and name == "Graph":
        return "graphsurgeon"
    if name == "ONNXProgram" and module.startswith("torch.onnx"):
        return "torch"
    raise DiagwiseError(f"expected {SUPPORTED}; got {module}.{name}")


def to_proto(model: Any) -> tuple[ModelProto | str | os.PathLike, Callable[[ModelProto], Any]]:
    """MODEL as a ModelProto (a path stays a path: the loader checks it), and the function that
    turns a ModelProto back into MODEL's type."""
    kind = _kind(model)
    if kind in ("proto", "path"):
        return model, lambda proto: proto
    import onnx_ir as ir

    if kind == "ir":
        return ir.serde.serialize_model(model), ir.serde.deserialize_model
    if kind == "torch":
        program_type = type(model)
        return ir.serde.serialize_model(model.model), lambda proto: program_type(
            ir.serde.deserialize_model(proto), model.exported_program)
    import onnx_graphsurgeon as gs

    # export_onnx keeps the graph's name, node names, opsets and metadata (import_onnx stores them)
    return gs.export_onnx(model, do_type_check=False), gs.import_onnx


def uses_original_type(model: Any) -> bool:
    """Whether results for MODEL are converted back (anything but a ModelProto or a path)."""
    return _kind(model) not in ("proto", "path")
