"""Find, size and strip a model's tensors without copying their bytes.

Reading TensorProto.raw_data copies it (protobuf hands out bytes, not views), so
sizes come from dims, and the checker and shape inference run on a skeleton of
the model whose large tensors carry no data.
"""

from __future__ import annotations

import math
import os
import stat
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import onnx
import numpy as np
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .errors import DiagwiseError
from .graphs import iter_scopes

# The folder external data locations are relative to, for the model being worked on: set by
# whoever hands us a model whose tensors stay on disk (a path, an onnx_ir model).  None: the
# model came without a folder, and its external tensors cannot be read.
_external_base: ContextVar[str | None] = ContextVar("external_base", default=None)

# Tensors below this size keep their data in a skeleton: shape-carrying constants
# (Reshape targets, pads, Split sizes) are tiny.
SKELETON_KEEP_BYTES = 4096


def iter_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto that can hold weights: initializers and tensor attributes,
    in the main graph, all subgraphs and all functions."""
    for scope in iter_scopes(model):
        if not scope.is_function:
            yield from scope.body.initializer
        for node in scope.body.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, from its dims."""
    if tensor.data_location == TensorProto.EXTERNAL:
        for entry in tensor.external_data:
            if entry.key == "length":
                return int(entry.value)
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return tensor.ByteSize()
    return tensor_elements(tensor) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


@contextmanager
def external_data_folder(folder: str | os.PathLike | None):
    """Within this block, external data locations are read relative to FOLDER (None: refused)."""
    token = _external_base.set(None if folder is None else os.fspath(folder))
    try:
        yield
    finally:
        _external_base.reset(token)


def read_external(tensor: TensorProto, folder: str | os.PathLike | None = None) -> bytearray:
    """The bytes of external TENSOR, by the rules onnx's own loader applies: a relative location
    inside FOLDER (default: the current external_data_folder) after resolving links, naming a
    regular file that is not a link and has no other hard link, with offset + length inside it.
    Anything else is refused with a DiagwiseError naming the tensor; nothing is ever read
    relative to the working directory."""
    folder = _external_base.get() if folder is None else os.fspath(folder)
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location")

    def refuse(why: str) -> DiagwiseError:
        return DiagwiseError(f"external data of tensor '{tensor.name}' ('{location}') {why}")

    if not location:
        raise DiagwiseError(f"tensor '{tensor.name}' is marked external but names no location")
    if folder is None:
        raise refuse("cannot be read: the model came without its folder (pass the model's path, or "
                     "load it with onnx.load, which reads external data)")
    if os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise refuse("is an absolute path; locations are relative to the model's folder")
    base = os.path.realpath(folder)
    path = os.path.join(base, location)
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        raise refuse(f"points outside the model's folder '{folder}'")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise refuse("has an offset or length that is not a number") from None
    if offset < 0 or (length is not None and length < 0):
        raise refuse("has a negative offset or length")
    if os.path.islink(path):
        raise refuse("is a symbolic link")
    try:
        # O_NOFOLLOW: a link put there since is refused, not followed; O_NONBLOCK: a FIFO does not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise refuse(f"cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info_stat = os.fstat(f.fileno())
        if not stat.S_ISREG(info_stat.st_mode):
            raise refuse("is not a regular file")
        if info_stat.st_nlink > 1:
            raise refuse(f"has {info_stat.st_nlink} hard links (onnx refuses such files too)")
        size = info_stat.st_size
        if offset > size or (length is not None and offset + length > size):
            raise refuse(f"lies outside its file: offset {offset} + length {length} > {size} bytes")
        f.seek(offset)
        data = bytearray(size - offset if length is None else length)
        f.readinto(data)
    return data


def tensor_array(tensor: TensorProto) -> np.ndarray:
    """TENSOR's values.  External data is read from its file (read_external's rules) without
    loading it into TENSOR, so a lazily loaded model stays lazy: only the weights the rewrite
    needs are read."""
    if tensor.data_location != TensorProto.EXTERNAL:
        try:
            array = np.asarray(numpy_helper.to_array(tensor))
        except (ValueError, TypeError, IndexError) as exc:
            raise DiagwiseError(f"tensor '{tensor.name}' cannot be read: {exc}") from None
        if array.size != tensor_elements(tensor):  # dims without (enough) data: an invalid model
            raise DiagwiseError(f"tensor '{tensor.name}' has dims {list(tensor.dims)} but {array.size} values")
        return array
    data = read_external(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = tensor_elements(tensor)
    if tensor.data_type not in (TensorProto.STRING, TensorProto.INT4, TensorProto.UINT4) \
            and len(data) == dtype.itemsize * count:
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(
            tuple(tensor.dims))  # external data is little-endian; the buffer is ours, no copy
    copy = TensorProto()  # packed or odd-sized data: onnx's own decoder, on a copy with the bytes inline
    copy.CopyFrom(tensor)
    copy.raw_data = bytes(data)
    copy.data_location = TensorProto.DEFAULT
    del copy.external_data[:]
    return np.asarray(numpy_helper.to_array(copy))


def tensor_elements(tensor: TensorProto) -> int:
    return math.prod(tensor.dims)


def weight_bytes(model: ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in iter_tensors(model))


def skeleton(model: ModelProto, keep_dims: bool = True) -> ModelProto:
    """MODEL with every large or external tensor reduced to name and type.

    keep_dims=True keeps their dims (for shape inference); False sets dims to [0],
    an empty tensor the checker accepts, so it checks everything but weight bytes."""

    def strip_tensor(tensor: TensorProto) -> TensorProto:
        if tensor.data_location != TensorProto.EXTERNAL and tensor_nbytes(tensor) <= SKELETON_KEEP_BYTES:
            return tensor
        stripped = TensorProto(name=tensor.name, data_type=tensor.data_type, doc_string=tensor.doc_string)
        stripped.dims.extend(tensor.dims if keep_dims else [0])
        return stripped

    def strip_node(node: NodeProto) -> NodeProto:
        if not any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.TENSOR,
                              AttributeProto.TENSORS) for a in node.attribute):
            return node
        copy = NodeProto(name=node.name, op_type=node.op_type, domain=node.domain, doc_string=node.doc_string)
        copy.input.extend(node.input)
        copy.output.extend(node.output)
        for attr in node.attribute:
            new = copy.attribute.add()
            if attr.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.TENSOR,
                                 AttributeProto.TENSORS):
                new.CopyFrom(attr)
                continue
            # Only the fields set: a ref_attr_name set even to "" makes the checker read a reference.
            new.name, new.type = attr.name, attr.type
            for optional in ("doc_string", "ref_attr_name"):
                if attr.HasField(optional):
                    setattr(new, optional, getattr(attr, optional))
            if attr.HasField("g"):
                new.g.CopyFrom(strip_graph(attr.g))
            new.graphs.extend(strip_graph(g) for g in attr.graphs)
            if attr.HasField("t"):
                new.t.CopyFrom(strip_tensor(attr.t))
            new.tensors.extend(strip_tensor(t) for t in attr.tensors)
        return copy

    def strip_graph(graph: GraphProto) -> GraphProto:
        copy = GraphProto(name=graph.name, doc_string=graph.doc_string)
        copy.input.extend(graph.input)
        copy.output.extend(graph.output)
        copy.value_info.extend(graph.value_info)
        copy.sparse_initializer.extend(graph.sparse_initializer)
        copy.initializer.extend(strip_tensor(t) for t in graph.initializer)
        copy.node.extend(strip_node(n) for n in graph.node)
        return copy

    copy = ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                      producer_version=model.producer_version, domain=model.domain,
                      model_version=model.model_version, doc_string=model.doc_string)
    copy.opset_import.extend(model.opset_import)
    copy.metadata_props.extend(model.metadata_props)
    for function in model.functions:
        stripped = copy.functions.add()
        stripped.CopyFrom(function)
        del stripped.node[:]
        stripped.node.extend(strip_node(n) for n in function.node)
    copy.graph.CopyFrom(strip_graph(model.graph))
    return copy


def tensor_like(array: np.ndarray, like: TensorProto) -> TensorProto:
    """ARRAY as a tensor stored the way LIKE is: in raw_data, or in its typed field (float_data,
    int32_data, ...) when LIKE uses one, so that a rewrite and its revert give back the same bytes."""
    typed = not like.HasField("raw_data") and like.data_location != TensorProto.EXTERNAL and any(
        len(getattr(like, field)) for field in ("float_data", "int32_data", "int64_data", "double_data",
                                                "uint64_data"))
    if not typed:
        return numpy_helper.from_array(array)
    return helper.make_tensor(like.name, like.data_type, array.shape, array.flatten(), raw=False)
