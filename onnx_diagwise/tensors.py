"""Find, size and strip a model's tensors without copying their bytes.

Reading TensorProto.raw_data copies it (protobuf hands out bytes, not views), so
sizes come from dims, and the checker and shape inference run on a skeleton of
the model whose large tensors carry no data.
"""

from __future__ import annotations

import math
from typing import Iterator

import onnx
import numpy as np
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .graphs import iter_scopes

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


def tensor_array(tensor: TensorProto) -> np.ndarray:
    """TENSOR's values.  External data is read from its file (location, offset, length; the
    location absolute or relative to the working directory) without loading it into TENSOR,
    so a lazily loaded model stays lazy: only the weights the rewrite needs are read."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return np.asarray(numpy_helper.to_array(tensor))
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = tensor_elements(tensor)
    if dtype.itemsize * count != int(info.get("length", dtype.itemsize * count)) or tensor.data_type in (
            TensorProto.STRING, TensorProto.INT4, TensorProto.UINT4):
        copy = TensorProto()
        copy.CopyFrom(tensor)
        return np.asarray(numpy_helper.to_array(copy))  # onnx's own reader, on a copy it may fill
    with open(info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return np.fromfile(f, dtype=dtype, count=count).reshape(tuple(tensor.dims))


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
            new.name, new.type, new.doc_string, new.ref_attr_name = attr.name, attr.type, attr.doc_string, attr.ref_attr_name
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
