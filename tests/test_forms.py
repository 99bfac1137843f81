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
