"""The model types export pipelines hand us, to and from onnx.ModelProto.

rewrite() / revert() / inspect() take a ModelProto, a path, an onnx_ir.Model (what onnxscript's
optimizer and torch.onnx's dynamo exporter work on), an onnx_graphsurgeon.Graph (TensorRT users'
editor) or a torch.onnx.ONNXProgram, and give back the type they were given.  The packages are
imported only when such a model arrives, so `import onnx_diagwise` imports none of them.

An onnx_ir model stays lazy: tensors it holds as external data (ir.load of a model with a .data
file, memory-mapped) travel as references relative to the model's folder, only the weights the
rewrite reads are read (by tensors.read_external's rules: inside that folder, regular files, in
bounds), and the returned model holds the same external tensor objects for every weight it did
not change.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

from onnx import ModelProto

from .errors import DiagwiseError
from .model_io import as_model
from .tensors import external_data_folder

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


def to_proto(model: Any) -> tuple[ModelProto | str | os.PathLike, Callable[[ModelProto], Any], str | None]:
    """MODEL as a ModelProto (a path stays a path: the loader checks it), the function that
    turns a ModelProto back into MODEL's type, and the folder its external data locations are
    relative to (None for a ModelProto: it came without one, so such tensors cannot be read)."""
    kind = _kind(model)
    if kind == "proto":
        return model, lambda proto: proto, None
    if kind == "path":
        return model, lambda proto: proto, os.path.dirname(os.path.abspath(model))
    if kind in ("ir", "torch"):
        ir_model = model if kind == "ir" else model.model
        proto, back, folder = _ir_to_proto(ir_model)
        if kind == "ir":
            return proto, back, folder
        program_type = type(model)
        return proto, lambda result: program_type(back(result), model.exported_program), folder
    import onnx_graphsurgeon as gs

    # export_onnx keeps the graph's name, node names, opsets and metadata (import_onnx stores them)
    return gs.export_onnx(model, do_type_check=False), gs.import_onnx, None


@contextmanager
def opened(model: Any, copy: bool = False) -> Iterator[tuple[ModelProto, Callable[[ModelProto], Any]]]:
    """(MODEL as a checked ModelProto, the function back to MODEL's type); inside the block its
    external data is read from its own folder only.  COPY copies a ModelProto (a conversion is a
    copy already)."""
    proto, back, folder = to_proto(model)
    # A ModelProto brings no folder: it keeps the one of the call it is part of (none at the top).
    with external_data_folder(folder) if folder is not None else nullcontext():
        yield as_model(proto, copy=copy and not uses_original_type(model)), back


def _ir_to_proto(model) -> tuple[ModelProto, Callable[[ModelProto], Any], str | None]:
    """onnx_ir serializes its external tensors as references (nothing is read), their locations
    relative to the tensors' base directory: that folder is returned, and the model that comes back
    holds the same tensor objects wherever the reference is unchanged."""
    import onnx_ir as ir

    lazy = {name: value.const_value for name, value in _external_values(model, ir)}
    # A tensor without a base directory has no folder: reading it is refused, never resolved
    # against the working directory.
    folders = {os.path.abspath(t.base_dir) if t.base_dir else None for t in lazy.values()}
    if len(folders) > 1:
        raise DiagwiseError(f"the model's external tensors live in {len(folders)} different folders "
                            f"({', '.join(sorted(folder or 'none: a tensor without a base_dir' for folder in folders))}); "
                            "save it with its data in one folder first")
    proto = ir.serde.serialize_model(model)

    def back(result: ModelProto):
        new = ir.serde.deserialize_model(result)
        for name, value in _external_values(new, ir):
            original = lazy.get(name)
            if original is not None and _reference(value.const_value) == _reference(original):
                value.const_value = original
        return new

    return proto, back, folders.pop() if folders else None


def _reference(tensor) -> tuple:
    return tensor.location, tensor.offset, tensor.length


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
