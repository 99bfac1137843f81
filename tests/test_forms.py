"""Every depthwise form: quantized (QDQ, QLinearConv, ConvInteger), ConvTranspose, FusedConv."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import (SAMPLE_DIR, assert_same_outputs, attr, conv_transpose_model, convinteger_model, forms_model,
                     fused_conv_model, initializer, qdq_model, qlinearconv_model, random_inputs, run)
from onnx_diagwise import inspect, rewrite

def _exact(original, rewritten, feeds=None):
    feeds = feeds or random_inputs(original)
    for name, spec in ((i.name, i.type.tensor_type.elem_type) for i in original.graph.input):
        if spec == TensorProto.UINT8:
            feeds[name] = np.random.default_rng(1).integers(0, 256, feeds[name].shape).astype(np.uint8)
    for e, a in zip(run(original, feeds), run(rewritten, feeds)):
        np.testing.assert_array_equal(a, e)  # integer paths: bit-exact


@pytest.mark.parametrize("per_channel,wtype,m", [(True, np.int8, 1), (False, np.uint8, 1), (True, np.int8, 2)])
def test_qlinearconv(per_channel, wtype, m):
    model = qlinearconv_model(m=m, per_channel=per_channel, wtype=wtype)
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert decision.form == "QLinearConv" and decision.action == "rewritten" and decision.dtype == np.dtype(wtype).name
    w = initializer(result.model, "w")
    zp = initializer(model, "w_zp")
    assert w.shape == (8 * m, 4, 3, 3)
    off = np.ones((8 * m, 4), bool)
    off[np.arange(8 * m), (np.arange(8 * m) // m) % 4] = False
    expected_fill = np.broadcast_to(zp.reshape(-1, 1, 1, 1) if zp.size > 1 else zp, w.shape)
    np.testing.assert_array_equal(w[off], expected_fill[off])  # off-diagonal = the channel's zero point
    np.testing.assert_array_equal(initializer(result.model, "w_scale"), initializer(model, "w_scale"))
    assert attr(result.model.graph.node[0], "group") == 2
    _exact(model, result.model)


def test_convinteger():
    model = convinteger_model()
    result = rewrite(model, group_size=8)
    assert result.report.nodes[0].form == "ConvInteger" and result.report.nodes[0].action == "rewritten"
    assert attr(result.model.graph.node[0], "group") == 1
    _exact(model, result.model)


@pytest.mark.parametrize("per_channel,wtype,m", [(True, np.int8, 1), (False, np.uint8, 1), (True, np.int8, 2)])
def test_qdq(per_channel, wtype, m):
    model = qdq_model(m=m, per_channel=per_channel, wtype=wtype)
    result = rewrite(model, group_size=8)
    [decision] = result.report.nodes
    assert decision.form == "QDQ" and decision.action == "rewritten" and decision.dtype == np.dtype(wtype).name
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv"]  # structure kept
    assert initializer(result.model, "w_q").shape == (16 * m, 8, 3, 3)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)


def test_qdq_int4():
    model = qdq_model(wtype=__import__("ml_dtypes").int4)
    result = rewrite(model, group_size=4)
    assert result.report.nodes[0].dtype == "int4" and result.report.nodes[0].action == "rewritten"
    w = initializer(result.model, "w_q")
    assert w.shape == (16, 4, 3, 3) and str(w.dtype) == "int4"
    assert_same_outputs(model, result.model)


def test_qdq_axis_and_sharing_reasons():
    model = qdq_model()
    next(n for n in model.graph.node if n.name == "dq_w").attribute[0].i = 1
    [decision] = inspect(model).nodes
    assert decision.action == "skipped" and "along axis 1" in decision.reason
    shared = qdq_model()
    shared.graph.node.append(helper.make_node("Identity", ["w_dq"], ["w_copy"], name="other_reader"))
    shared.graph.output.append(helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, [16, 1, 3, 3]))
    [decision] = inspect(shared).nodes
    assert "read by other nodes too" in decision.reason


def test_conv_transpose():
    model = conv_transpose_model()
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert decision.form == "ConvTranspose" and decision.multiplier == 2 and decision.action == "rewritten"
    w, w0 = initializer(result.model, "w"), initializer(model, "w")
    assert w.shape == (8, 8, 4, 4)
    for i in range(8):
        for m in range(2):
            np.testing.assert_array_equal(w[i, (i % 4) * 2 + m], w0[i, m])
    node = result.model.graph.node[0]
    assert attr(node, "group") == 2 and attr(node, "output_padding") == [1, 0] and attr(node, "strides") == [2, 2]
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)


def test_fused_conv():
    model = fused_conv_model()
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert decision.form == "FusedConv" and decision.action == "rewritten"
    assert attr(result.model.graph.node[0], "activation") == b"Relu"
    assert_same_outputs(model, result.model)


def test_other_contrib_ops_left_alone():
    model = fused_conv_model()
    model.graph.node[0].op_type = "NhwcConv"
    [node] = inspect(model).nodes  # listed with the reason, not rewritten
    assert node.action == "skipped" and node.form == "com.microsoft.NhwcConv"
    assert rewrite(model).model.graph.node[0] == model.graph.node[0]


def test_mixed_model_in_subgraph():
    """A float Conv, a QDQ Conv and a ConvTranspose, the last two inside an If branch."""
    qdq, up = qdq_model(c=8), conv_transpose_model(c=8, m=1)
    then_nodes = list(qdq.graph.node) + [helper.make_node("ConvTranspose", ["y", "w_up"], ["z"], name="up",
                                                          group=8, strides=[2, 2])]
    then_graph = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT,
                                                                                          None)],
                                   list(qdq.graph.initializer) + [numpy_helper.from_array(
                                       initializer(up, "w"), "w_up")])
    else_graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w_up_else"], ["z2"], name="up2",
                                                     group=8, strides=[2, 2])], "else", [],
                                   [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)],
                                   [numpy_helper.from_array(initializer(up, "w") * 2, "w_up_else")])
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x0", "wf"], ["x"], name="float_dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=then_graph, else_branch=else_graph)]
    model = forms_model(nodes, [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8, 12, 12]),
                                helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                        [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "wf")])
    result = rewrite(model, group_size=4)
    forms = {n.name: (n.form, n.action) for n in result.report.nodes}
    assert forms == {"float_dw": ("float", "rewritten"), "dw": ("QDQ", "rewritten"),
                     "up": ("ConvTranspose", "rewritten"), "up2": ("ConvTranspose", "rewritten")}
    for cond in (True, False):
        feeds = random_inputs(model, cond=cond)
        for e, a in zip(run(model, feeds), run(result.model, feeds)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_quantize_static_sample_models(tmp_path):
    """Quantized by onnxruntime's own quantizer (QDQ and QOperator) from the sample models."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, model):
            self.feeds = iter([random_inputs(model, batch=1, seed=s) for s in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    for name in ("mobilenetv2_block", "mobilenet_v1_025"):
        source = SAMPLE_DIR / f"{name}.onnx"
        model = onnx.load(source)
        for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
            path = tmp_path / f"{name}.{fmt.name}.onnx"
            quantize_static(str(source), str(path), Reader(model), quant_format=fmt, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            quantized = onnx.load(path)
            result = rewrite(quantized, group_size=8)
            forms = {n.form for n in result.report.rewritten}
            assert forms == ({"QDQ"} if fmt == QuantFormat.QDQ else {"QLinearConv"}), result.report.nodes
            assert not result.report.skipped
            feeds = random_inputs(quantized, batch=1, seed=7)
            for e, a in zip(run(quantized, feeds), run(result.model, feeds)):
                np.testing.assert_array_equal(a, e)  # integer math: the same bits


def test_stats_count_every_form():
    from onnx_diagwise.report import model_stats

    for model in (qlinearconv_model(), convinteger_model(), qdq_model(), conv_transpose_model(), fused_conv_model()):
        before = model_stats(model)
        after = model_stats(rewrite(model, group_size=4).model)
        assert (before.depthwise_convs, before.block_diagonal_convs, before.grouped_convs) == (1, 0, 0)
        assert (after.depthwise_convs, after.block_diagonal_convs, after.grouped_convs) == (0, 1, 0)


def test_conv_transpose_whose_group_does_not_divide_its_channels_is_grouped():
    """An (invalid) ConvTranspose with 10 input channels in 4 groups is listed as a grouped
    convolution, never as a block-diagonal one, whatever its weight holds."""
    weight = np.zeros((10, 2, 3, 3), np.float32)
    weight[::2, 0] = 1.0  # even input channels read column 0, odd ones column 1: "block-diagonal" with G=2
    weight[1::2, 1] = 1.0
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=4)
    model = forms_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 5, 5])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                        [numpy_helper.from_array(weight, "w")])
    [decision] = inspect(model).nodes
    assert decision.action == "skipped" and decision.group_size is None
    assert decision.reason == "grouped ConvTranspose with 2 input channels per group, not depthwise"


def _multiplier_of_block_diagonal_conv_transpose():
    [decision] = inspect(rewrite(conv_transpose_model(m=2), group_size=4).model).nodes
    assert decision.group_size == 4
    return decision


def _multiplier_of_dynamic():
    from helpers import dynamic_weight_model

    [decision] = inspect(dynamic_weight_model()).nodes
    assert decision.form == "dynamic"
    return decision


def _lowered_model():
    from helpers import depthwise_model

    model = depthwise_model(channels=8, multiplier=2, kernel=(7, 7), spatial=(12, 12), pads=(3,) * 4)
    return rewrite(model, group_size="toeplitz").model


def _multiplier_of_lowered():
    [decision] = inspect(_lowered_model()).nodes
    assert decision.lowering == "toeplitz"
    return decision


@pytest.mark.parametrize("decision", [_multiplier_of_block_diagonal_conv_transpose, _multiplier_of_dynamic,
                                      _multiplier_of_lowered], ids=["block_diagonal_conv_transpose", "dynamic",
                                                                    "lowered"])
def test_reported_depth_multiplier_is_a_whole_number(decision):
    import json

    assert json.dumps(decision().to_dict()["multiplier"]) == "2"


def _dynamic_model(weight_dims, spatial):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8)
    return forms_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, *spatial]),
                                helper.make_tensor_value_info("w", TensorProto.FLOAT, weight_dims)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])


@pytest.mark.parametrize("weight_dims, spatial, action, code", [
    ([8, 1, 3, 3, 3], [5, 5, 5], "rewritten", None),
    ([0, 1, 3, 3], [9, 9], "skipped", "dynamic-shape"),
    ([8, 1, 3, 3, 3, 3], [5, 5, 5, 5], "skipped", "dynamic-not-depthwise"),
], ids=["3d", "empty", "4d"])
def test_dynamic_weights_of_1d_to_3d_convolutions_with_a_known_shape_are_depthwise(weight_dims, spatial, action,
                                                                                   code):
    [decision] = rewrite(_dynamic_model(weight_dims, spatial), group_size=4).report.nodes
    assert decision.action == action
    if code:
        assert str(decision.code) == code


def test_a_lowered_group_changed_since_it_was_built_is_listed_as_damaged():
    """The Conv that heads a lowered group still carries the marker, but its group lost a node:
    inspect and revert list it, by name, as damaged, and revert leaves it as it is."""
    from onnx_diagwise import revert

    model = _lowered_model()
    [last] = [n for n in model.graph.node if n.output[0] == "y"]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.node.remove(last)
    conv.output[0] = "y"
    for decisions in (inspect(model).nodes, revert(model).report.nodes):
        [decision] = decisions
        assert (decision.name, decision.graph, decision.action, decision.code, decision.form) == (
            "dw", "main", "skipped", "lowered-damaged", "float")
        assert decision.reason == ("carries a lowering's marker, but cannot be reverted: the lowered nodes were "
                                   "changed since they were built")
    assert revert(model).model == model


def test_weight_computed_by_reshape_mul_reshape_that_is_no_expansion_is_dynamic():
    """A weight scaled per output channel on its flattened form (Reshape -> Mul -> Reshape, the
    shape of the expansion rewrite() inserts, but not it) is a dynamic depthwise weight: rewritten."""
    inits = [numpy_helper.from_array(np.array([16, 9], np.int64), "flat_shape"),
             numpy_helper.from_array(np.full((16, 1), 0.5, np.float32), "scale"),
             numpy_helper.from_array(np.array([16, 1, 3, 3], np.int64), "weight_shape")]
    nodes = [helper.make_node("Reshape", ["v", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("Mul", ["flat", "scale"], ["scaled"], name="scale_mul"),
             helper.make_node("Reshape", ["scaled", "weight_shape"], ["w"], name="unflatten"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    model = forms_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
                                helper.make_tensor_value_info("v", TensorProto.FLOAT, [16, 1, 3, 3])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert (decision.action, decision.form, decision.weight_source, decision.multiplier) == (
        "rewritten", "dynamic", "computed by Reshape", 2)
    assert_same_outputs(model, result.model)


def _chain_model(blocks_shape, final_shape, group, channels, dynamic=()):
    """Conv(x, Reshape(Reshape(v, BLOCKS_SHAPE) * eye mask, FINAL_SHAPE)), the expansion's shape;
    the constants named in DYNAMIC are graph inputs instead."""
    from onnx_diagwise.weights import dynamic_mask

    g = int(blocks_shape[1])
    kernel_rank = len(blocks_shape) - 4
    constants = {"blocks_shape": np.array(blocks_shape, np.int64), "mask": dynamic_mask(g, kernel_rank, np.float32),
                 "final_shape": np.array(final_shape, np.int64)}
    nodes = [helper.make_node("Reshape", ["v", "blocks_shape"], ["blocks"], name="reshape"),
             helper.make_node("Mul", ["blocks", "mask"], ["masked"], name="mask_mul"),
             helper.make_node("Reshape", ["masked", "final_shape"], ["w"], name="reshape_back"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=group)]
    size = int(np.prod(blocks_shape))  # kernels of 3
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels] + [6] * kernel_rank),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [size // 3 ** kernel_rank, 1] + [3] * kernel_rank)]
    inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(constants[n].dtype),
                                             list(constants[n].shape)) for n in dynamic]
    return forms_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(a, n) for n, a in constants.items() if n not in dynamic])


@pytest.mark.parametrize("blocks_shape, final_shape, group, channels, dynamic", [
    ([4, 2, 2, 1, 3, 3], [16, 2, 3, 3], 8, 16, ()),  # the expansion's C/G is not the Conv's group
    ([4, 2, 2, 1, 3, 3], [16, 2, 3, 3], 4, 8, ("mask",)),  # a mask that is no constant
    ([4, 2, 2, 1, 3, 3], [16, 2, 3, 3], 4, 8, ("blocks_shape",)),  # a shape that is no constant
], ids=["other_group", "dynamic_mask", "dynamic_shape"])
def test_reshape_mul_reshape_that_is_not_the_expansion_is_not_block_diagonal(blocks_shape, final_shape, group,
                                                                          channels, dynamic):
    [decision] = inspect(_chain_model(blocks_shape, final_shape, group, channels, dynamic)).nodes
    assert decision.action == "skipped" and decision.group_size is None and not decision.block_diagonal
    assert decision.reason.startswith("weight 'w' is computed by Reshape")


def test_run_time_expansion_of_a_1d_convolution_is_block_diagonal():
    """rewrite()'s run-time expansion of a 1-D Conv's dynamic weight ([C/G, G, M, 1, k]) is listed
    block-diagonal, and revert takes it back."""
    model = _chain_model([4, 2, 2, 1, 3], [16, 2, 3], 4, 8)
    [decision] = inspect(model).nodes
    assert decision.block_diagonal and decision.group_size == 2 and decision.multiplier == 2
    from onnx_diagwise import revert

    [reverted] = revert(model).report.nodes
    assert reverted.action == "reverted" and reverted.groups_after == 8


def test_run_time_expansion_is_listed_with_its_geometry():
    from helpers import dynamic_weight_model

    [decision] = inspect(rewrite(dynamic_weight_model(), group_size=4).model).nodes
    listed = {key: value for key, value in decision.to_dict().items()
              if key in ("action", "code", "form", "channels", "multiplier", "kernel", "weight_source", "group_size")}
    assert listed == {"action": "skipped", "code": "block-diagonal", "form": "float", "channels": 8, "multiplier": 2,
                      "kernel": [3, 3], "weight_source": "computed by Reshape", "group_size": 4}
    assert decision.reason == ("already block-diagonal (G=4, group=2): the run-time expansion of a dynamic weight; "
                               "nothing to do")


@pytest.mark.parametrize("op_type, domain, group, listed", [
    ("DeformConv", "", 2, True),
    ("DeformConv", "", 1, False),
    ("DeformConv", "", None, False),
    ("GroupedThing", "vendor", 2, False),
], ids=["grouped", "group_1", "no_group", "not_a_conv"])
def test_grouped_convolutions_of_other_kinds_are_listed(op_type, domain, group, listed):
    """A grouped convolution this tool does not handle is listed with the reason; one that is not
    grouped, or not a convolution, is not listed at all."""
    attributes = {} if group is None else {"group": group}
    node = helper.make_node(op_type, ["x", "w", "offset"], ["y"], name="other", domain=domain, **attributes)
    model = forms_model([node], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "offset")],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [],
                        opset=[helper.make_opsetid("", 19), helper.make_opsetid("vendor", 1)])
    nodes = inspect(model).nodes
    if not listed:
        assert nodes == []
        return
    [decision] = nodes
    assert (decision.name, decision.action, decision.code, decision.form, decision.channels) == (
        "other", "skipped", "unhandled-op", "ai.onnx.DeformConv", 2)
    assert decision.reason == "ai.onnx.DeformConv (group=2) is not a form this tool handles; left as it is"


def test_conv_of_the_ai_onnx_domain_spelled_out_is_depthwise():
    from helpers import depthwise_model

    model = depthwise_model(channels=8)
    model.graph.node[0].domain = "ai.onnx"
    [decision] = rewrite(model, group_size=4).report.nodes
    assert (decision.form, decision.action) == ("float", "rewritten")


def test_a_weight_with_no_input_channels_is_a_reason_not_a_crash():
    """A Conv weight of shape [8, 0, 3, 3] (an invalid model) is listed as a grouped conv, not a
    ZeroDivisionError."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="empty", group=2)
    model = forms_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0, 6, 6])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                        [numpy_helper.from_array(np.zeros((8, 0, 3, 3), np.float32), "w")])
    [decision] = inspect(model).nodes
    assert (decision.action, decision.code, decision.channels) == ("skipped", "grouped", 0)
