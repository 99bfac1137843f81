"""Small models for every reason detect gives to leave a grouped convolution alone, and for the
block-diagonal forms it recognizes: each a one-Conv graph changed in one way."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import conv_transpose_model, depthwise_model, fused_conv_model, qdq_model, qlinearconv_model


def _set(node: onnx.NodeProto, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _weight_as_input(model: onnx.ModelProto, dims=None, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    weight = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[1])
    model.graph.initializer.remove(weight)
    model.graph.input.append(helper.make_tensor_value_info(weight.name, elem, dims if dims is not None
                                                           else list(weight.dims)))
    return model


def no_weight_input():
    model = depthwise_model(bias=False)
    model.graph.node[0].input[1] = ""
    return model


def undefined_weight():
    model = depthwise_model(bias=False)
    model.graph.node[0].input[1] = "nowhere"
    return model


def constant_without_tensor():
    model = depthwise_model(bias=False, weight_source="Constant")
    constant = next(n for n in model.graph.node if n.op_type == "Constant")
    del constant.attribute[:]
    constant.attribute.append(helper.make_attribute("value_float", 1.0))
    return model


def weight_rank_two():
    model = depthwise_model(bias=False)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(np.ones((8, 9), np.float32), weight.name))
    return model


def integer_weight_in_float_conv():
    model = depthwise_model(bias=False)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(np.ones((8, 1, 3, 3), np.int32), weight.name))
    return model


def float_weight_in_qlinearconv():
    model = qlinearconv_model()
    weight = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[3])
    weight.CopyFrom(numpy_helper.from_array(np.ones(tuple(weight.dims), np.float32), weight.name))
    return model


def channels_not_a_multiple_of_group():
    model = depthwise_model(channels=8, bias=False)
    _set(model.graph.node[0], "group", 3)
    return model


def zero_point_of_wrong_length():
    model = qlinearconv_model(c=8)
    name = model.graph.node[-1].input[5]
    zp = next(t for t in model.graph.initializer if t.name == name)
    zp.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), name))
    return model


def dequantize_with_block_size():
    model = qdq_model()
    _set(next(n for n in model.graph.node if n.name == "dq_w"), "block_size", 2)
    return model


def dequantize_cast_conv():
    """DequantizeLinear -> Cast(float16) -> Conv in float16, as fp16 converters write it."""
    model = qdq_model(c=8)
    conv = model.graph.node[-1]
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node(
        "Cast", ["w_dq"], ["w_dq16"], name="cast_w", to=TensorProto.FLOAT16))
    conv.input[1] = "w_dq16"
    return model


def dynamic_fused_conv():
    return _weight_as_input(fused_conv_model(c=8))


def dynamic_unknown_shape():
    return _weight_as_input(depthwise_model(bias=False), dims=["a", 1, 3, 3])


def dynamic_not_depthwise():
    model = depthwise_model(channels=8, bias=False)
    _set(model.graph.node[0], "group", 4)
    return _weight_as_input(model, dims=[8, 2, 3, 3])


def computed_weight_with_geometry():
    """A weight computed by Mul, strided, dilated and padded asymmetrically."""
    model = depthwise_model(channels=8, multiplier=2, bias=False, strides=(2, 1), dilations=(1, 2),
                            pads=(0, 1, 2, 1))
    weight = model.graph.initializer[0]
    weight.name = "w_base"
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    model.graph.node.insert(0, helper.make_node("Mul", ["w_base", "two"], [model.graph.node[0].input[1]],
                                                name="scale_w"))
    return model


def auto_pad_same_upper():
    return depthwise_model(channels=8, auto_pad="SAME_UPPER")


def mixing_grouped_conv():
    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), weight.name))
    _set(model.graph.node[0], "group", 2)
    return model


def block_diagonal_from_elsewhere():
    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer[0]
    block = np.zeros((8, 4, 3, 3), np.float32)
    for o in range(8):
        block[o, o % 4] = o + 1
    weight.CopyFrom(numpy_helper.from_array(block, weight.name))
    _set(model.graph.node[0], "group", 2)
    return model


def grouped_conv_transpose():
    model = conv_transpose_model(c=8, m=2)
    _set(model.graph.node[0], "group", 4)
    return model


def nchwc_conv():
    model = fused_conv_model(c=8)
    node = model.graph.node[0]
    node.op_type, node.domain = "Conv", "com.microsoft.nchwc"
    return model


EDGE_CASES = {name: fn for name, fn in globals().items()
              if callable(fn) and not name.startswith("_") and fn.__module__ == __name__ and name != "depthwise_model"}
