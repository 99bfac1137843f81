"""The model types export pipelines hand us, to and from onnx.ModelProto.

rewrite() / revert() / inspect() take a ModelProto, a path, an onnx_ir.Model (what onnxscript's
optimizer and torch.onnx's dynamo exporter work on), an onnx_graphsurgeon.Graph (TensorRT users'
editor) or a torch.onnx.ONNXProgram, and give back the type they were given.  The packages are
imported only when such a model arrives, so `import onnx_diagwise` imports none of them.

An onnx_ir model stays lazy: tensors it holds as external data (ir.load of a model with a .data
file, memory-mapped) travel as references, only the weights the rewrite reads are read, and the
returned model holds the same external tensor objects for every weight it did not change.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from onnx import ModelProto, TensorProto

from .errors import DiagwiseError
from .graphs import iter_scopes

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
    if kind in ("ir", "torch"):
        ir_model = model if kind == "ir" else model.model
        proto, back = _ir_to_proto(ir_model)
        if kind == "ir":
            return proto, back
        program_type = type(model)
        return proto, lambda result: program_type(back(result), model.exported_program)
    import onnx_graphsurgeon as gs

    # export_onnx keeps the graph's name, node names, opsets and metadata (import_onnx stores them)
    return gs.export_onnx(model, do_type_check=False), gs.import_onnx


def _ir_to_proto(model) -> tuple[ModelProto, Callable[[ModelProto], Any]]:
    """onnx_ir serializes its external tensors as references (nothing is read); their locations
    are made absolute here so the rewrite can read the few it needs, and put back as they were
    (the same objects, relative location and base directory) in the model that comes back."""
    import onnx_ir as ir

    lazy = {name: value.const_value for name, value in _external_values(model, ir)}
    proto = ir.serde.serialize_model(model)
    for tensor in _initializers(proto):
        if tensor.data_location == TensorProto.EXTERNAL and tensor.name in lazy:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = _absolute(lazy[tensor.name])

    def back(result: ModelProto):
        new = ir.serde.deserialize_model(result)
        for name, value in _external_values(new, ir):
            original = lazy.get(name)
            if original is not None and value.const_value.location == _absolute(original):
                value.const_value = original
        return new

    return proto, back


def _absolute(tensor) -> str:
    return os.path.abspath(os.path.join(tensor.base_dir, tensor.location))


def _initializers(proto: ModelProto) -> Iterator[TensorProto]:
    for scope in iter_scopes(proto):
        if not scope.is_function:
            yield from scope.body.initializer


def _graphs(model, ir) -> Iterator[Any]:
    yield model.graph
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.value
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.value


def _external_values(model, ir) -> Iterator[tuple[str, Any]]:
    for graph in _graphs(model, ir):
        for name, value in graph.initializers.items():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield name, value


def uses_original_type(model: Any) -> bool:
    """Whether results for MODEL are converted back (anything but a ModelProto or a path)."""
    return _kind(model) not in ("proto", "path")
