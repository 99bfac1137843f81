"""Structural checks of the rewrite pass: what changes, what must not."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_cases import (block_diagonal_from_elsewhere, channels_not_a_multiple_of_group, dequantize_cast_conv,
                        dequantize_with_block_size, float_weight_in_qlinearconv, integer_weight_in_float_conv,
                        mixing_grouped_conv, zero_point_of_wrong_length)
from helpers import (SAMPLE_DIR, assert_same_outputs, attr, conv_nodes, conv_transpose_model, convinteger_model,
                     depthwise_model, dynamic_weight_model, fused_conv_model, initializer, loop_model, qdq_model,
                     qlinearconv_model, random_inputs, run)
from onnx_diagwise import DiagwiseError, Reason, Selection, inspect, revert, rewrite
from onnx_diagwise.detect import detect
from onnx_diagwise.plan import parse_choice, plan_exact
from onnx_diagwise.rewriter import apply_group_sizes, apply_plan
from onnx_diagwise.shapes import infer_value_types
from onnx_diagwise.weights import collapse_block_diagonal, expand_depthwise


@pytest.mark.parametrize("source", ["initializer", "Constant", "Identity"])
def test_weight_sources(source):
    model = depthwise_model(channels=16, multiplier=2, weight_source=source)
    result = rewrite(model, group_size=8)
    [decision] = result.report.nodes
    assert decision.action == "rewritten" and decision.group_size == 8
    assert decision.weight_source == {"initializer": "initializer", "Constant": "Constant",
                                      "Identity": "Identity(initializer)"}[source]
    [conv] = conv_nodes(result.model)
    assert attr(conv, "group") == 2
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)


def test_input_model_is_not_modified():
    model = depthwise_model(channels=8)
    before = model.SerializeToString()
    rewrite(model, group_size=4)
    inspect(model, group_size=4)
    assert model.SerializeToString() == before


def test_model_properties_are_kept():
    model = depthwise_model(channels=8)
    model.ir_version = 9
    model.producer_name, model.producer_version, model.doc_string = "exporter", "1.2", "doc"
    onnx.helper.set_model_props(model, {"author": "me", "license": "MIT"})
    model.graph.value_info.append(helper.make_tensor_value_info("unrelated", TensorProto.FLOAT, [1]))
    result = rewrite(model, group_size=4).model
    for field in ("ir_version", "producer_name", "producer_version", "doc_string"):
        assert getattr(result, field) == getattr(model, field)
    assert result.metadata_props == model.metadata_props
    assert result.opset_import == model.opset_import
    assert result.graph.input == model.graph.input
    assert result.graph.output == model.graph.output
    assert result.graph.value_info == model.graph.value_info
    assert [n.name for n in result.graph.node] == [n.name for n in model.graph.node]
    assert [n.op_type for n in result.graph.node] == [n.op_type for n in model.graph.node]


def test_bias_strides_pads_dilations_unchanged():
    model = depthwise_model(channels=12, kernel=(3, 5), spatial=(15, 17), strides=(2, 1),
                            dilations=(1, 2), pads=(1, 4, 0, 3))
    result = rewrite(model, group_size=4).model
    [before], [after] = conv_nodes(model), conv_nodes(result)
    for name in ("strides", "dilations", "pads", "kernel_shape"):
        assert attr(after, name) == attr(before, name)
    assert after.input[2] == before.input[2]
    np.testing.assert_array_equal(initializer(result, "b"), initializer(model, "b"))


def test_block_diagonal_layout_matches_formula():
    model = depthwise_model(channels=6, multiplier=2, kernel=(3,), spatial=(9,))
    w = initializer(model, "w")
    result = rewrite(model, group_size=3).model
    w2 = initializer(result, conv_nodes(result)[0].input[1])
    assert w2.shape == (12, 3, 3)
    for o in range(12):
        for j in range(3):
            expected = w[o, 0] if j == (o // 2) % 3 else np.zeros(3, np.float32)
            np.testing.assert_array_equal(w2[o, j], expected)
    np.testing.assert_array_equal(collapse_block_diagonal(w2, multiplier=2), w)


def test_idempotent_and_already_rewritten_reported():
    model = depthwise_model(channels=16)
    once = rewrite(model, group_size=4)
    twice = rewrite(once.model, group_size=4)
    assert twice.model.SerializeToString() == once.model.SerializeToString()
    [decision] = twice.report.nodes
    assert decision.action == "skipped" and "already block-diagonal (G=4" in decision.reason


def _two_consumer_model(other_op: str) -> onnx.ModelProto:
    """A depthwise weight also read by another node (a depthwise Conv or a ReduceSum)."""
    model = depthwise_model(channels=8, bias=False)
    graph = model.graph
    if other_op == "Conv":
        graph.node.append(helper.make_node("Conv", ["y", "w"], ["z"], name="dw2", group=8,
                                           kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    else:
        graph.node.append(helper.make_node("ReduceSum", ["w"], ["z"], name="sum_w", keepdims=0))
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model


def test_weight_shared_with_other_node_is_copied_not_mutated():
    model = _two_consumer_model("ReduceSum")
    original_w = initializer(model, "w").copy()
    result = rewrite(model, group_size=4).model
    np.testing.assert_array_equal(initializer(result, "w"), original_w)  # ReduceSum still reads it
    [conv] = conv_nodes(result)
    assert conv.input[1] != "w" and initializer(result, conv.input[1]).shape == (8, 4, 3, 3)
    assert_same_outputs(model, result)


def test_weight_shared_by_two_depthwise_convs_is_expanded_once():
    model = _two_consumer_model("Conv")
    result = rewrite(model, group_size=4).model
    names = {c.input[1] for c in conv_nodes(result)}
    assert len(names) == 1
    assert [t.name for t in result.graph.initializer] == list(names)  # original 'w' unused, removed
    assert_same_outputs(model, result)


def _with_second_reader(model: onnx.ModelProto, weight: str) -> onnx.ModelProto:
    """MODEL (a depthwise Conv of 8 channels, output y) followed by a second one, dw2, reading WEIGHT."""
    model.graph.node.append(helper.make_node("Conv", ["y", weight], ["z"], name="dw2", group=8,
                                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    model.graph.output[0].name = "z"
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def test_unused_initializer_removed_and_a_private_identity_kept():
    """dw reads the weight through its own Identity, dw2 reads it directly: the expansion is
    shared, dw's Identity now reads it (so revert gives back these nodes), the old weight goes."""
    model = _with_second_reader(depthwise_model(channels=8, weight_source="Identity"), "w")
    result = rewrite(model, group_size=8).model
    identity = next(n for n in result.graph.node if n.op_type == "Identity")
    assert list(identity.input) == ["w_diagwise_g8"]
    assert sorted(t.name for t in result.graph.initializer) == ["b", "w_diagwise_g8"]
    assert_same_outputs(model, result)
    back = revert(result).model  # the same nodes again (the initializers may come in another order)
    assert [n.SerializeToString() for n in back.graph.node] == [n.SerializeToString() for n in model.graph.node]


def test_initializer_that_is_also_graph_input_is_expanded_at_run_time():
    # A caller may feed another weight through the input: the expansion must follow it.
    model = depthwise_model(channels=8)
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert decision.action == "rewritten" and decision.form == "dynamic"
    assert decision.weight_source == "graph input with a default"
    assert result.model.graph.input == model.graph.input
    assert initializer(result.model, "w").shape == (8, 1, 3, 3)  # the parameter keeps its shape
    feeds = random_inputs(model)
    assert feeds["w"].shape == (8, 1, 3, 3)  # a different weight than the default
    assert_same_outputs(model, result.model, feeds=feeds)


def test_dynamic_weights_expanded_at_run_time():
    model = depthwise_model(channels=8, multiplier=2, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, list(w.dims)))
    result = rewrite(model, group_size=4)
    [decision] = result.report.nodes
    assert decision.action == "rewritten" and decision.form == "dynamic" and decision.weight_source == "graph input"
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["Reshape", "Mul", "Reshape", "Conv"]
    assert attr(conv_nodes(result.model)[0], "group") == 2
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)

    computed = depthwise_model(channels=8, bias=False)
    computed.graph.node.insert(0, helper.make_node("Neg", ["w_raw"], ["w"], name="neg_w"))
    computed.graph.initializer[0].name = "w_raw"
    result = rewrite(computed, group_size=8)
    [decision] = result.report.nodes
    assert decision.action == "rewritten" and decision.weight_source == "computed by Neg"
    assert_same_outputs(computed, result.model)

    [decision] = inspect(computed, selection=Selection(dynamic=False)).nodes
    assert decision.action == "skipped" and decision.code == Reason.DYNAMIC_LEFT and "dynamic=False" in decision.reason


def test_dynamic_weight_of_unknown_shape_is_skipped():
    model = depthwise_model(channels=8, bias=False)
    w = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", w.data_type, ["a", "b", "c", "d"]))
    [decision] = inspect(model).nodes
    assert decision.action == "skipped" and "shape or float type is unknown" in decision.reason


def test_non_depthwise_group_conv_and_other_domains():
    model = depthwise_model(channels=8, bias=False)
    w = numpy_helper.from_array(np.ones((8, 2, 3, 3), np.float32), "wg")
    model.graph.initializer.append(w)
    model.graph.node.append(helper.make_node("Conv", ["y", "wg"], ["z"], name="grouped", group=4,
                                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    model.graph.node.append(helper.make_node("Conv", ["z", "w"], ["q"], name="custom", domain="my.domain",
                                             group=8))
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    report = inspect(model, group_size=4)
    by_name = {n.name: n for n in report.nodes}
    assert set(by_name) == {"dw", "grouped", "custom"}  # other domains: listed, never touched
    assert "not depthwise" in by_name["grouped"].reason
    assert by_name["custom"].action == "skipped" and by_name["custom"].form == "my.domain.Conv"
    assert "not a form this tool handles" in by_name["custom"].reason
    result = rewrite(model, group_size=4).model
    custom = [n for n in result.graph.node if n.name == "custom"][0]
    assert custom.input[1] == "w" and attr(custom, "group") == 8


def test_filters_include_exclude_min_channels():
    model = onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")
    report = inspect(model, selection=Selection(include=r"dw1\d"))
    assert sorted(n.name for n in report.rewritten) == ["dw10", "dw11", "dw12", "dw13"]
    assert all(n.code == Reason.NOT_INCLUDED for n in report.skipped)
    report = inspect(model, selection=Selection(exclude=r"^dw1$"))
    assert [n.name for n in report.skipped] == ["dw1"]
    report = inspect(model, selection=Selection(min_channels=64))
    assert {n.channels for n in report.skipped} == {8, 16, 32}
    assert all(n.channels >= 64 for n in report.rewritten)


def test_group_size_policies_and_pins():
    model = depthwise_model(channels=24)
    assert inspect(model, group_size="paper").nodes[0].group_size == 24  # largest divisor <= 32
    assert inspect(model, group_size=16).nodes[0].group_size == 12
    assert inspect(model, group_size="full").nodes[0].group_size == 24
    assert inspect(model, group_size=5).nodes[0].group_size == 4
    assert inspect(model, selection=Selection(node_group_sizes={"dw": 6})).nodes[0].group_size == 6
    odd = depthwise_model(channels=7)
    [decision] = inspect(odd, group_size=4).nodes
    assert decision.action == "skipped" and "G=1" in decision.reason
    with pytest.raises(DiagwiseError, match="5 does not divide C=24"):
        inspect(model, selection=Selection(node_group_sizes={"dw": 5}))
    with pytest.raises(DiagwiseError, match="'nope'"):
        inspect(model, selection=Selection(node_group_sizes={"nope": 4}))
    for bad in (0, -3, "abc", "1.5", True):
        with pytest.raises(DiagwiseError, match="group_size"):
            inspect(model, group_size=bad)


def test_report_bytes_flops_and_dict():
    model = depthwise_model(channels=8, multiplier=2, kernel=(3, 3), spatial=(10, 10), pads=(1, 1, 1, 1))
    result = rewrite(model, group_size=4)
    [n] = result.report.nodes
    assert n.weight_bytes_before == 16 * 9 * 4 and n.weight_bytes_after == 4 * n.weight_bytes_before
    assert n.flops_before == 2 * 16 * 9 * 100 and n.flops_after == 4 * n.flops_before
    data = result.report.to_dict()
    assert data["summary"] == {"nodes": 1, "rewritten": 1, "skipped": 0}
    assert data["before"]["depthwise_convs"] == 1 and data["after"]["block_diagonal_convs"] == 1
    assert data["after"]["grouped_convs"] == 0
    assert data["nodes"][0]["reason"].startswith("G=4, group=2")
    growth = (4 * 16 * 9 * 4 + 16 * 4) / (16 * 9 * 4 + 16 * 4)  # weight x4, bias unchanged
    assert result.report.warnings == [
        f"weights grew {growth:.1f}x (640 B -> 2.3 KiB), more than the 2x threshold (warn_growth); "
        "a smaller group_size grows less"]


def _if_model():
    return onnx.load(SAMPLE_DIR / "if_branch.onnx")


@pytest.mark.parametrize("cond", [True, False])
def test_subgraphs_rewritten(cond):
    model = _if_model()
    result = rewrite(model, group_size=8)
    assert sorted(n.graph for n in result.report.rewritten) == ["main/branch.else_branch",
                                                                 "main/branch.then_branch"]
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_inputs(model, cond=cond)
    for e, a in zip(run(model, feeds), run(result.model, feeds)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_function_bodies_rewritten():
    inner = depthwise_model(channels=8, weight_source="Constant", bias=False)
    function = helper.make_function("local", "DwBlock", ["x"], ["y"], list(inner.graph.node),
                                    opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("DwBlock", ["x"], ["y"], domain="local", name="call")],
                              "g", list(inner.graph.input), [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model = onnx.shape_inference.infer_shapes(model)
    result = rewrite(model, group_size=4)
    [decision] = result.report.rewritten
    assert decision.graph == "function local.DwBlock"
    body = result.model.functions[0].node
    assert attr([n for n in body if n.op_type == "Conv"][0], "group") == 2
    onnx.checker.check_model(result.model)
    assert_same_outputs(model, result.model)


def test_unsupported_opset_rejected():
    model = depthwise_model(channels=4)
    model.opset_import[0].version = 99
    with pytest.raises(DiagwiseError, match="opset 99"):
        rewrite(model)


def test_loop_body_with_nested_if_rewritten():
    """A depthwise Conv in a Loop body and another in an If nested inside it, reading outer weights."""
    model = loop_model()
    result = rewrite(model, group_size=4)
    assert sorted((n.name, n.graph) for n in result.report.rewritten) == [
        ("if_dw", "main/loop.body/inner_if.then_branch"), ("loop_dw", "main/loop.body")]
    for flag in (True, False):
        feeds = random_inputs(model, cond=flag)
        for e, a in zip(run(model, feeds), run(result.model, feeds)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    assert revert(result.model).model == model


def test_one_classifier_for_reports_and_stats():
    """The statistics count what detect classifies: a dynamic depthwise weight is depthwise before
    and block-diagonal after; G = C (group 1) layers are listed as block-diagonal by inspect."""
    from onnx import helper as h

    from onnx_diagwise import inspect

    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer.pop()
    model.graph.input.append(h.make_tensor_value_info("w", weight.data_type, list(weight.dims)))
    model.graph.node[0].input[1] = "w"
    result = rewrite(model, group_size=4)
    assert [n.action for n in result.report.nodes] == ["rewritten"]
    assert result.report.before.depthwise_convs == 1 and result.report.after.depthwise_convs == 0
    full = rewrite(depthwise_model(channels=8), group_size="full")
    assert full.report.after.block_diagonal_convs == 1 and full.report.after.grouped_convs == 0
    [listed] = inspect(full.model).nodes
    assert listed.action == "skipped" and listed.reason.startswith("already block-diagonal (G=8, group=1)")
    assert listed.block_diagonal and listed.group_size == 8
    from onnx_diagwise.render import summary_line

    assert summary_line(inspect(full.model)).endswith("0 to rewrite, 1 already block-diagonal, 0 skipped")


def test_run_time_expansion_nodes_and_constants():
    """A weight that is a graph input: Reshape -> Mul(eye) -> Reshape in front of the Conv, named
    after the Conv, with int64 shapes, as documented."""
    from onnx import helper as h

    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer.pop()
    model.graph.input.append(h.make_tensor_value_info("w", weight.data_type, list(weight.dims)))
    model.graph.node[0].input[1] = "w"
    graph = rewrite(model, group_size=4).model.graph
    assert [(n.op_type, n.name, list(n.input), list(n.output)) for n in graph.node] == [
        ("Reshape", "dw_diagwise_reshape", ["w", "w_diagwise_blocks_shape"], ["w_diagwise_blocks"]),
        ("Mul", "dw_diagwise_mask", ["w_diagwise_blocks", "w_diagwise_mask"], ["w_diagwise_masked"]),
        ("Reshape", "dw_diagwise_weight", ["w_diagwise_masked", "w_diagwise_weight_shape"], ["w_diagwise_g4"]),
        ("Conv", "dw", ["x", "w_diagwise_g4"], ["y"])]
    constants = {t.name: t for t in graph.initializer}
    assert constants["w_diagwise_blocks_shape"].data_type == onnx.TensorProto.INT64
    assert numpy_helper.to_array(constants["w_diagwise_blocks_shape"]).tolist() == [2, 4, 1, 1, 3, 3]
    assert numpy_helper.to_array(constants["w_diagwise_weight_shape"]).tolist() == [8, 4, 3, 3]
    assert constants["w_diagwise_weight_shape"].data_type == onnx.TensorProto.INT64
    mask = numpy_helper.to_array(constants["w_diagwise_mask"])
    assert mask.dtype == np.float32 and mask[0, :, 0, :, 0, 0].tolist() == np.eye(4).tolist()


def _function_model(nodes, inputs=("x",)) -> onnx.ModelProto:
    function = helper.make_function("local", "DwBlock", list(inputs), ["y"], nodes,
                                    opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("DwBlock", list(inputs), ["y"], domain="local", name="call")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8, 1, 3, 3]) for n in inputs[1:]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])


def test_shared_constant_weight_in_a_function_gets_its_own_constant_node():
    """Functions have no initializers: the expanded weight is a new Constant node right after the
    original one, which stays for its other reader."""
    w = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w)),
             helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("ReduceSum", ["w"], ["s"], name="other_reader", keepdims=0),
             helper.make_node("Add", ["c", "s"], ["y"], name="add")]
    model = _function_model(nodes)
    result = rewrite(model, group_size=4)
    body = list(result.model.functions[0].node)
    assert [n.op_type for n in body] == ["Constant", "Constant", "Conv", "ReduceSum", "Add"]
    added = body[1]
    assert added.output == ["w_diagwise_g4"] and added.name == "w_diagwise_g4_2"  # node names are unique too
    assert body[0] == nodes[0]  # the original, for ReduceSum
    assert body[2].input[1] == "w_diagwise_g4" and attr(body[2], "group") == 2
    np.testing.assert_array_equal(numpy_helper.to_array(added.attribute[0].t),
                                  expand_depthwise(w, 8, 4))
    onnx.checker.check_model(result.model)
    assert_same_outputs(model, result.model)
    assert revert(result.model).model == model


def test_dynamic_weight_in_a_function_expands_with_constant_nodes():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    model = _function_model(nodes, inputs=("x", "w"))
    model = onnx.shape_inference.infer_shapes(model)
    result = rewrite(model, group_size=4)
    body = list(result.model.functions[0].node)
    assert [n.op_type for n in body] == ["Constant"] * 3 + ["Reshape", "Mul", "Reshape", "Conv"]
    assert [n.output[0] for n in body[:3]] == ["w_diagwise_blocks_shape", "w_diagwise_mask", "w_diagwise_weight_shape"]
    assert [n.name for n in body[:3]] == [n.output[0] + "_2" for n in body[:3]]
    shapes = [numpy_helper.to_array(n.attribute[0].t) for n in body[:3]]
    np.testing.assert_array_equal(shapes[0], [2, 4, 1, 1, 3, 3])
    assert shapes[1].shape == (1, 4, 1, 4, 1, 1) and shapes[1].dtype == np.float32
    np.testing.assert_array_equal(shapes[2], [8, 4, 3, 3])
    assert body[-1].input[1] == body[-2].output[0] and attr(body[-1], "group") == 2
    onnx.checker.check_model(result.model)
    assert_same_outputs(model, result.model)
    back = revert(result.model)
    assert [n.op_type for n in back.model.functions[0].node] == ["Conv"]
    assert back.model.functions[0].node[0].input[1] == "w" and attr(back.model.functions[0].node[0], "group") == 8


def test_revert_adds_the_group_attribute_a_dense_conv_lacked():
    w = np.zeros((8, 8, 3, 3), np.float32)
    for c in range(8):
        w[c, c] = c + 1
    model = depthwise_model(channels=8, bias=False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    node = model.graph.node[0]
    for a in list(node.attribute):
        if a.name == "group":
            node.attribute.remove(a)
    back = revert(model)
    assert [n.action for n in back.report.nodes] == ["reverted"]
    assert attr(back.model.graph.node[0], "group") == 8
    assert [a.name for a in back.model.graph.node[0].attribute].count("group") == 1
    assert_same_outputs(model, back.model)


def test_identity_alias_read_by_two_depthwise_convs_goes_with_the_weight():
    """Two depthwise Convs read one weight through one Identity: both read the shared expansion,
    and the Identity and the original weight, unread now, are removed."""
    model = _with_second_reader(depthwise_model(channels=8, bias=False, weight_source="Identity"), "w_alias")
    result = rewrite(model, group_size=4).model
    assert [n.op_type for n in result.graph.node] == ["Conv", "Conv"]
    assert [c.input[1] for c in conv_nodes(result)] == ["w_diagwise_g4", "w_diagwise_g4"]
    assert [t.name for t in result.graph.initializer] == ["w_diagwise_g4"]
    assert_same_outputs(model, result)


def test_revert_reads_one_collapsed_weight_for_expansions_of_the_same_weight():
    """Two block-diagonal Convs whose weights (named as rewrite() names them) expand one depthwise
    weight 'k': the first, whose expansion another node reads too, gets 'k' back beside it; the
    second finds that 'k' and reads it too, its own expansion gone."""
    depthwise = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(expand_depthwise(depthwise, 8, 4), "k_diagwise_g4"),
             numpy_helper.from_array(expand_depthwise(depthwise, 8, 2), "k_diagwise_g2")]
    nodes = [helper.make_node("Conv", ["x", "k_diagwise_g4"], ["y1"], name="dw1", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["y1", "k_diagwise_g2"], ["y"], name="dw2", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("ReduceSum", ["k_diagwise_g4"], ["s"], name="other_reader", keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = revert(model)
    assert [n.action for n in result.report.nodes] == ["reverted", "reverted"]
    assert [c.input[1] for c in conv_nodes(result.model)] == ["k", "k"]
    assert [t.name for t in result.model.graph.initializer] == ["k_diagwise_g4", "k"]
    np.testing.assert_array_equal(initializer(result.model, "k"), depthwise)
    assert_same_outputs(model, result.model)


def test_revert_keeps_a_reused_original_weight_for_its_other_reader():
    """'k' is a ConvTranspose's depthwise weight and, as it happens, a block-diagonal Conv's weight:
    rewrite() gives the ConvTranspose an expanded copy; revert() points it back at 'k' and gives
    the Conv a collapsed copy of its own, so 'k' stays as the ConvTranspose reads it."""
    depthwise = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32)
    k = expand_depthwise(depthwise, 8, 2)  # [8, 2, 3, 3]
    nodes = [helper.make_node("ConvTranspose", ["x", "k"], ["up"], name="up", group=8),
             helper.make_node("Conv", ["x", "k"], ["dw"], name="dw", group=4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("up", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("dw", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(k, "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = rewrite(model, group_size=2).model
    assert [n.input[1] for n in rewritten.graph.node] == ["k_diagwise_g2", "k"]
    result = revert(rewritten)
    assert [n.action for n in result.report.nodes] == ["reverted", "reverted"]
    assert [n.input[1] for n in result.model.graph.node] == ["k", "k_depthwise"]
    np.testing.assert_array_equal(initializer(result.model, "k"), k)
    np.testing.assert_array_equal(initializer(result.model, "k_depthwise"), depthwise)
    assert_same_outputs(model, result.model)


# ---------------------------------------------------------------- detect: the records of every form, pinned


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _drop_attribute(node: onnx.NodeProto, name: str) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)


def _tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _detected(model: onnx.ModelProto, types: bool = True):
    return detect(model, infer_value_types(model) if types else None)


def _placed(record) -> None:
    """A record names its node and the graph (or function) that holds it."""
    assert record.name == record.node.name and record.name
    assert any(n is record.node or n == record.node for n in record.scope.body.node)
    assert record.graph in ("main", "function local.DwBlock")


def _only(model: onnx.ModelProto, types: bool, kind: str, other: str):
    """The one record detect makes of MODEL's one grouped conv, which must be of KIND (and none OTHER)."""
    found = _detected(model, types)
    assert getattr(found, other) == []
    [record] = getattr(found, kind)
    _placed(record)
    return record


def _candidate(model: onnx.ModelProto, types: bool = True):
    return _only(model, types, "candidates", "skipped")


def _skipped(model: onnx.ModelProto, types: bool = True):
    return _only(model, types, "skipped", "candidates")


def _fields(skipped) -> tuple:
    """What a skipped record says: code, reason, form, C, M, kernel, dtype, weight source."""
    return (skipped.code, skipped.reason, skipped.form, skipped.channels, skipped.multiplier, skipped.kernel,
            skipped.dtype, skipped.weight_source)


def _geometry(conv) -> tuple:
    return (conv.form, conv.channels, conv.multiplier, conv.kernel, conv.strides, conv.dilations, conv.pads,
            conv.auto_pad, conv.dtype, conv.weight_kind)


@pytest.mark.parametrize("group, shown", [(0, "0"), (-2, "-2"), (2.0, "2.0")])
def test_a_group_that_is_not_a_positive_integer_makes_the_model_invalid(group, shown):
    model = depthwise_model(channels=8)
    _set_attribute(model.graph.node[0], "group", group)
    with pytest.raises(DiagwiseError) as refused:
        detect(model)
    assert str(refused.value) == f"node 'dw' (Conv) has group={shown}, not a positive integer: the model is invalid"


def test_float_candidates_carry_their_geometry_dtype_shape_and_opset():
    model = depthwise_model(channels=4, multiplier=3, kernel=(3, 5), spatial=(11, 13), strides=(2, 1),
                            dilations=(1, 2), pads=(1, 2, 0, 3))
    conv = _candidate(model)
    assert _geometry(conv) == ("float", 4, 3, [3, 5], [2, 1], [1, 2], [1, 2, 0, 3], "NOTSET", "float32",
                               "initializer")
    assert type(conv.channels) is int and type(conv.multiplier) is int
    assert conv.name == "dw" and conv.graph == "main" and conv.node == model.graph.node[0]
    assert conv.reader == (model.graph.node[0], 1) and conv.weight.tensor == _tensor(model, "w")
    assert conv.zero_point is None and conv.transposed is False and conv.dynamic is None
    assert conv.input_shape == ["N", 4, 11, 13] and conv.opset == 17
    assert dict(conv.reads) == {"x": 1, "w": 1, "b": 1, "y": 1}
    assert _candidate(model, types=False).input_shape is None
    conv_node = model.graph.node[0]
    conv_node.name, conv_node.input[0] = "", "x_id"  # an unnamed Conv, second in its graph
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["x_id"], name="id"))
    assert [c.name for c in detect(model).candidates] == ["<Conv #1>"]

    bare = depthwise_model(channels=4, kernel=(3,), spatial=(9,), bias=False)
    _drop_attribute(bare.graph.node[0], "kernel_shape")  # group is its only attribute
    assert _geometry(_candidate(bare)) == ("float", 4, 1, [3], [1], [1], None, "NOTSET", "float32", "initializer")
    assert _candidate(depthwise_model(channels=4, auto_pad="SAME_LOWER")).auto_pad == "SAME_LOWER"
    three_d = depthwise_model(channels=4, kernel=(3, 3, 3), spatial=(5, 6, 7))
    assert _geometry(_candidate(three_d))[:6] == ("float", 4, 1, [3, 3, 3], [1, 1, 1], [1, 1, 1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_float_candidates_name_their_dtype(dtype):
    conv = _candidate(depthwise_model(channels=4, dtype=dtype))
    assert (conv.form, conv.dtype) == ("float", dtype)


def test_the_model_s_ai_onnx_opset_is_recorded_and_one_when_absent():
    model = depthwise_model(channels=4)
    model.graph.node[0].domain = "ai.onnx"  # the default domain, spelled out
    model.opset_import[0].domain, model.opset_import[0].version = "ai.onnx", 13
    assert (_candidate(model).form, _candidate(model).opset) == ("float", 13)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert detect(model).candidates[0].opset == 1


def test_fused_conv_is_its_own_form():
    conv = _candidate(fused_conv_model(c=8))
    assert _geometry(conv) == ("FusedConv", 8, 1, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", "float32",
                               "initializer")


def test_a_dense_conv_is_no_grouped_one():
    """group = 1: neither a candidate nor a skipped record, one input channel (a [M, 1, k] weight) or many."""
    single = depthwise_model(channels=1, multiplier=4)
    assert (detect(single).candidates, detect(single).skipped) == ([], [])
    dense = depthwise_model(channels=8, bias=False)
    _tensor(dense, "w").CopyFrom(numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"))
    _set_attribute(dense.graph.node[0], "group", 1)
    assert (detect(dense).candidates, detect(dense).skipped) == ([], [])
    _drop_attribute(dense.graph.node[0], "group")  # group 1 by default
    assert (detect(dense).candidates, detect(dense).skipped) == ([], [])
    _tensor(dense, "w").CopyFrom(numpy_helper.from_array(np.ones((8, 8, 3, 3), np.int32), "w"))
    assert (detect(dense).candidates, detect(dense).skipped) == ([], [])  # no reason given for a dense conv


def test_float_weights_that_cannot_be_read_as_depthwise_say_why():
    short = depthwise_model(channels=8, bias=False)
    _tensor(short, "w").raw_data = _tensor(short, "w").raw_data[:-4]
    assert _fields(_skipped(short)) == (Reason.WEIGHT_DATA, "weight data (284 bytes) does not match its shape "
                                        "[8, 1, 3, 3]", "float", None, None, [3, 3], "float32", "initializer")
    kernel = depthwise_model(channels=8, bias=False)
    _set_attribute(kernel.graph.node[0], "kernel_shape", [5, 5])
    assert _fields(_skipped(kernel, types=False)) == (
        Reason.KERNEL_SHAPE, "kernel_shape [5, 5] disagrees with weight [8, 1, 3, 3]", "float", None, None, [3, 3],
        "float32", "initializer")
    rank6 = depthwise_model(channels=8, bias=False)
    _drop_attribute(rank6.graph.node[0], "kernel_shape")
    _tensor(rank6, "w").CopyFrom(numpy_helper.from_array(np.ones((8, 1, 3, 3, 3, 3), np.float32), "w"))
    assert _fields(_skipped(rank6, types=False)) == (
        Reason.WEIGHT_RANK, "weight rank 6 is not a 1-D, 2-D or 3-D convolution", "float", None, None, None,
        "float32", "initializer")
    assert _fields(_skipped(integer_weight_in_float_conv())) == (
        Reason.WEIGHT_DTYPE, "weight dtype int32 is not a float type", "float", None, None, [3, 3], "int32",
        "initializer")
    assert _fields(_skipped(float_weight_in_qlinearconv())) == (
        Reason.WEIGHT_DTYPE, "weight dtype float32 is not an 8-bit or 4-bit integer type", "QLinearConv", None, None,
        [3, 3], "float32", "initializer")
    assert _fields(_skipped(channels_not_a_multiple_of_group())) == (
        Reason.WEIGHT_CHANNELS, "weight has 8 output channels, not a multiple of group=3", "float", None, None,
        [3, 3], "float32", "initializer")
    undefined = depthwise_model(channels=8, bias=False)
    undefined.graph.node[0].input[1] = "nowhere"
    assert _fields(_skipped(undefined, types=False)) == (
        Reason.WEIGHT_UNDEFINED, "weight 'nowhere' is not defined in the graph", "float", 8, None, None, None, None)
    short_inputs = qlinearconv_model(c=8)
    del short_inputs.graph.node[0].input[3:]
    assert _fields(_skipped(short_inputs, types=False)) == (
        Reason.NO_WEIGHT, "node has no weight input", "QLinearConv", None, None, None, None, None)


def test_a_weight_held_as_float_data_is_read_without_its_byte_count():
    model = depthwise_model(channels=8, bias=False)
    values = numpy_helper.to_array(_tensor(model, "w"))
    _tensor(model, "w").CopyFrom(helper.make_tensor("w", TensorProto.FLOAT, [8, 1, 3, 3], values.ravel().tolist()))
    assert not _tensor(model, "w").HasField("raw_data")
    assert _geometry(_candidate(model))[:4] == ("float", 8, 1, [3, 3])


def test_grouped_and_block_diagonal_float_convs():
    mixing = mixing_grouped_conv()
    assert _fields(_skipped(mixing)) == (Reason.GROUPED, "grouped conv with 4 input channels per group, not "
                                         "depthwise", "float", 8, None, [3, 3], "float32", "initializer")
    assert _skipped(mixing).block_diagonal is None and _skipped(mixing).block_diagonal_g is None
    empty = depthwise_model(channels=8, bias=False)
    _tensor(empty, "w").CopyFrom(numpy_helper.from_array(np.ones((8, 0, 3, 3), np.float32), "w"))
    _set_attribute(empty.graph.node[0], "group", 2)
    assert _fields(_skipped(empty, types=False))[:4] == (
        Reason.GROUPED, "grouped conv with 0 input channels per group, not depthwise", "float", 0)
    uneven = depthwise_model(channels=8, bias=False)  # 6 output channels for 8 input channels
    _tensor(uneven, "w").CopyFrom(numpy_helper.from_array(np.zeros((6, 4, 3, 3), np.float32), "w"))
    _set_attribute(uneven.graph.node[0], "group", 2)
    assert _fields(_skipped(uneven, types=False))[:4] == (
        Reason.GROUPED, "grouped conv with 4 input channels per group, not depthwise", "float", 8)

    elsewhere = block_diagonal_from_elsewhere()
    skipped = _skipped(elsewhere)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=4, group=2); nothing to do",
                                "float", 8, 1, [3, 3], "float32", "initializer")
    diagonal = skipped.block_diagonal
    assert (diagonal.group_size, diagonal.channels, diagonal.multiplier, diagonal.fill, diagonal.transposed,
            diagonal.shaped, diagonal.expansion) == (4, 8, 1, None, False, (), None)
    assert diagonal.reader == (elsewhere.graph.node[0], 1) and diagonal.weight.tensor == _tensor(elsewhere, "w")
    assert skipped.block_diagonal_g == 4

    rewritten = rewrite(depthwise_model(channels=8, multiplier=2), group_size=4).model
    skipped = _skipped(rewritten)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=4, group=2); nothing to do",
                                "float", 8, 2, [3, 3], "float32", "initializer")
    assert (skipped.block_diagonal.group_size, skipped.block_diagonal.multiplier) == (4, 2)
    full = _skipped(rewrite(depthwise_model(channels=8), group_size="full").model)
    assert _fields(full)[:5] == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=8, group=1); nothing to do",
                                 "float", 8, 1)


# ---------------------------------------------------------------- detect: quantized weights and their zero points


@pytest.mark.parametrize("cut", ["dropped", "empty"])
def test_a_convinteger_without_a_weight_zero_point_reads_zero(cut):
    model = convinteger_model(c=8)
    node = model.graph.node[0]
    if cut == "dropped":
        del node.input[3:]
    else:
        node.input[3] = ""
    conv = _candidate(model)
    assert _geometry(conv) == ("ConvInteger", 8, 1, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", "uint8",
                               "initializer")
    assert conv.reader == (node, 1)
    assert conv.zero_point.shape == () and conv.zero_point.dtype == np.int64 and int(conv.zero_point) == 0


def test_a_dequantize_linear_without_a_zero_point_reads_zero():
    model = qdq_model(c=8)
    dq = model.graph.node[2]
    del dq.input[2:]
    conv = _candidate(model)
    assert _geometry(conv)[:4] == ("QDQ", 8, 1, [3, 3]) and conv.dtype == "int8"
    assert conv.reader == (dq, 0)
    assert conv.zero_point.shape == () and conv.zero_point.dtype == np.int64 and int(conv.zero_point) == 0
    del dq.input[1:]  # no scale either (an invalid model): nothing along a wrong axis
    conv = _candidate(model, types=False)
    assert (conv.form, conv.channels) == ("QDQ", 8) and int(conv.zero_point) == 0


def _with_zero_point(model: onnx.ModelProto, name: str, values: np.ndarray) -> onnx.ModelProto:
    _tensor(model, name).CopyFrom(numpy_helper.from_array(values, name))
    return model


@pytest.mark.parametrize("make, shape, values", [
    (lambda: qlinearconv_model(c=8, per_channel=False), (), [33]),
    (lambda: _with_zero_point(qlinearconv_model(c=8), "w_zp", np.array([5], np.int8)), (), [5]),
    (lambda: _with_zero_point(qlinearconv_model(c=8), "w_zp", np.arange(-4, 4, dtype=np.int8).reshape(8, 1, 1, 1)),
     (8,), list(range(-4, 4))),
    (lambda: _with_zero_point(qlinearconv_model(c=2), "w_zp", np.array([2, 21], np.int8)), (2,), [2, 21]),
    (lambda: _with_zero_point(qdq_model(c=8, per_channel=False), "w_zp", np.array([[4]], np.int8)), (), [4]),
])
def test_weight_zero_points_are_one_value_or_one_per_output_channel(make, shape, values):
    conv = _candidate(make())
    assert conv.zero_point.shape == shape and conv.zero_point.dtype == np.int8
    assert conv.zero_point.reshape(-1).tolist() == values


def test_zero_points_that_cannot_be_used_say_why():
    model = qlinearconv_model(c=8)
    zp = _tensor(model, "w_zp")
    model.graph.initializer.remove(zp)
    model.graph.input.append(helper.make_tensor_value_info("w_zp", TensorProto.INT8, [8]))
    assert _fields(_skipped(model)) == (Reason.ZERO_POINT, "weight zero point 'w_zp' is not a constant", "QLinearConv",
                                        None, None, [3, 3], "int8", "initializer")
    assert _fields(_skipped(zero_point_of_wrong_length())) == (
        Reason.ZERO_POINT, "weight zero point has 3 values for 8 output channels", "QLinearConv", None, None, [3, 3],
        "int8", "initializer")


def test_quantized_candidates_carry_their_form_dtype_and_reader():
    import ml_dtypes

    qlinear = qlinearconv_model(c=8, m=2)
    conv = _candidate(qlinear)
    assert _geometry(conv) == ("QLinearConv", 8, 2, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", "int8",
                               "initializer")
    assert conv.reader == (qlinear.graph.node[0], 3)
    np.testing.assert_array_equal(conv.zero_point, numpy_helper.to_array(_tensor(qlinear, "w_zp")))
    assert _candidate(qlinearconv_model(c=8, wtype=np.uint8)).dtype == "uint8"
    assert _candidate(qdq_model(c=8, wtype=ml_dtypes.int4)).dtype == "int4"
    uint4 = qdq_model(c=8, per_channel=False)
    _tensor(uint4, "w_q").CopyFrom(numpy_helper.from_array((np.arange(72) % 16).reshape(8, 1, 3, 3)
                                                           .astype(ml_dtypes.uint4), "w_q"))
    _with_zero_point(uint4, "w_zp", np.array(3, ml_dtypes.uint4))
    conv = _candidate(uint4)
    assert (conv.form, conv.dtype, int(conv.zero_point), conv.zero_point.shape) == ("QDQ", "uint4", 3, ())
    qdq = qdq_model(c=8, m=2)
    conv = _candidate(qdq)
    assert _geometry(conv) == ("QDQ", 8, 2, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", "int8", "initializer")
    assert conv.reader == (qdq.graph.node[2], 0) and conv.weight.tensor == _tensor(qdq, "w_q")
    assert conv.node == qdq.graph.node[3] and conv.input_shape == [1, 8, 12, 12] and conv.opset == 21


def _dequantize_axis(c=8, per_channel=True, axis="keep", zero_point=True):
    model = qdq_model(c=c, per_channel=per_channel)
    dq = model.graph.node[2]
    if axis is None:
        _drop_attribute(dq, "axis")
    elif axis != "keep":
        _set_attribute(dq, "axis", axis)
    if zero_point is None:
        del dq.input[2:]
    elif zero_point == "scalar":
        _with_zero_point(model, "w_zp", np.array(3, np.int8))
    return model


@pytest.mark.parametrize("model, axis", [
    (lambda: _dequantize_axis(axis=1), 1),
    (lambda: _dequantize_axis(axis=None), 1),  # DequantizeLinear's default axis
    (lambda: _dequantize_axis(axis=-3), -3),
    (lambda: _dequantize_axis(axis=2), 2),
    (lambda: _dequantize_axis(c=2, axis=1), 1),  # two channels, two scales
    (lambda: _dequantize_axis(axis=1, zero_point=None), 1),  # scales without zero points
    (lambda: _dequantize_axis(axis=1, zero_point="scalar"), 1),  # one zero point, scales per channel
])
def test_per_channel_scales_must_run_along_the_output_channels(model, axis):
    assert _fields(_skipped(model())) == (
        Reason.DEQUANTIZE, f"per-channel quantization along axis {axis}, not the output channels (axis 0)", "QDQ",
        None, None, [3, 3], "int8", "initializer")


@pytest.mark.parametrize("model", [
    lambda: _dequantize_axis(axis=0),
    lambda: _dequantize_axis(axis=-4),  # axis 0 of a rank-4 weight, counted from the end
    lambda: _dequantize_axis(per_channel=False, axis=1),  # one scale: no axis to run along
    lambda: _dequantize_axis(per_channel=False, axis=None),
])
def test_scales_along_the_output_channels_or_per_tensor_are_followed(model):
    conv = _candidate(model())
    assert (conv.form, conv.channels, conv.dtype) == ("QDQ", 8, "int8")


def test_a_dequantize_scale_that_is_not_a_constant_says_so():
    model = qdq_model(c=8)
    model.graph.initializer.remove(_tensor(model, "w_scale"))
    model.graph.input.append(helper.make_tensor_value_info("w_scale", TensorProto.FLOAT, [8]))
    assert _fields(_skipped(model)) == (Reason.DEQUANTIZE, "dequantize scale 'w_scale' is not a constant", "QDQ",
                                        None, None, [3, 3], "int8", "initializer")


def test_which_dequantize_linear_nodes_are_followed():
    fused = qdq_model(c=8)  # a FusedConv fed by DequantizeLinear is QDQ too
    fused.graph.node[3].op_type, fused.graph.node[3].domain = "FusedConv", "com.microsoft"
    conv = _candidate(fused)
    assert (conv.form, conv.dtype, conv.reader, conv.node.op_type) == ("QDQ", "int8", (fused.graph.node[2], 0),
                                                                        "FusedConv")
    microsoft = qdq_model(c=8)
    microsoft.graph.node[2].domain = "com.microsoft"
    conv = _candidate(microsoft)
    assert (conv.form, conv.reader) == ("QDQ", (microsoft.graph.node[2], 0))
    zero_block = qdq_model(c=8)
    _set_attribute(zero_block.graph.node[2], "block_size", 0)
    assert _candidate(zero_block).form == "QDQ"
    assert _fields(_skipped(dequantize_with_block_size())) == (
        Reason.DEQUANTIZE, "blocked quantization (DequantizeLinear block_size) is not supported", "float", 16, None,
        None, None, None)
    other = qdq_model(c=8)  # another vendor's DequantizeLinear: a weight computed at run time
    other.graph.node[2].domain = "my.q"
    other.opset_import.append(helper.make_opsetid("my.q", 1))
    skipped = _skipped(other)
    assert (skipped.code, skipped.form, skipped.channels, skipped.weight_source) == (
        Reason.DYNAMIC_SHAPE, "dynamic", 8, "computed by DequantizeLinear")


def test_a_dequantized_weight_read_by_other_nodes_is_left_alone():
    shared = qdq_model(c=8)
    shared.graph.node.append(helper.make_node("Conv", ["y", "w_dq"], ["z"], name="dw2", group=8, pads=[1, 1, 1, 1]))
    shared.graph.output[0].name = "z"
    found = _detected(shared)
    assert found.candidates == []
    assert [(s.name,) + _fields(s) for s in found.skipped] == [
        (name, Reason.DEQUANTIZE, "dequantized weight 'w_dq' is read by other nodes too", "float", 8, None, None,
         None, None) for name in ("dw", "dw2")]


def test_casts_between_dequantize_linear_and_conv_are_followed_when_only_the_conv_reads_them():
    conv = _candidate(dequantize_cast_conv())
    assert (conv.form, conv.channels, conv.dtype, conv.reader[0].name, conv.reader[1]) == ("QDQ", 8, "int8",
                                                                                          "dq_w", 0)
    cast_read_twice = dequantize_cast_conv()
    cast_read_twice.graph.node.append(helper.make_node("Identity", ["w_dq16"], ["w_copy"], name="copy"))
    cast_read_twice.graph.output.append(helper.make_tensor_value_info("w_copy", TensorProto.FLOAT16, None))
    conv = _candidate(cast_read_twice)  # the Cast's output is a weight computed at run time
    assert (conv.form, conv.channels, conv.dtype, conv.weight_kind) == ("dynamic", 8, "float16", "computed by Cast")
    dequantized_read_twice = dequantize_cast_conv()
    dequantized_read_twice.graph.node.append(helper.make_node("Identity", ["w_dq"], ["w_copy"], name="copy"))
    dequantized_read_twice.graph.output.append(helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, None))
    assert _fields(_skipped(dequantized_read_twice))[:4] == (
        Reason.DEQUANTIZE, "dequantized weight 'w_dq' is read by other nodes too", "float", 8)
    foreign_cast = dequantize_cast_conv()
    next(n for n in foreign_cast.graph.node if n.op_type == "Cast").domain = "my.c"
    foreign_cast.opset_import.append(helper.make_opsetid("my.c", 1))
    skipped = _skipped(foreign_cast)
    assert (skipped.code, skipped.form, skipped.weight_source) == (Reason.DYNAMIC_SHAPE, "dynamic", "computed by Cast")


def test_quantized_block_diagonal_weights_are_off_diagonal_zero_points():
    qdq = rewrite(qdq_model(c=8), group_size=4).model
    skipped = _skipped(qdq)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=4, group=2); nothing to do", "QDQ",
                                8, 1, [3, 3], "int8", "initializer")
    diagonal = skipped.block_diagonal
    assert diagonal.fill.dtype == np.int8
    np.testing.assert_array_equal(diagonal.fill, numpy_helper.to_array(_tensor(qdq, "w_zp")))
    assert diagonal.shaped == ("w_dq",) and diagonal.reader == (qdq.graph.node[2], 0)
    integer = _skipped(rewrite(convinteger_model(c=8), group_size=4).model)
    assert _fields(integer)[:5] == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=4, group=2); nothing to do",
                                    "ConvInteger", 8, 1)
    assert integer.block_diagonal.fill.shape == () and integer.block_diagonal.fill.dtype == np.uint8
    assert int(integer.block_diagonal.fill) == 77

    # Zeros off the diagonal are not block-diagonal where the zero point is not zero.
    qlinear = rewrite(qlinearconv_model(c=8, per_channel=False), group_size=4).model
    assert _skipped(qlinear).code == Reason.BLOCK_DIAGONAL
    _with_zero_point(qlinear, "w_zp", np.array(0, np.int8))
    assert _fields(_skipped(qlinear)) == (Reason.GROUPED, "grouped conv with 4 input channels per group, not "
                                          "depthwise", "QLinearConv", 8, None, [3, 3], "int8", "initializer")
    wrong_length = rewrite(qlinearconv_model(c=8), group_size=4).model
    _with_zero_point(wrong_length, "w_zp", np.zeros(3, np.int8))
    assert _fields(_skipped(wrong_length))[:4] == (
        Reason.GROUPED, "grouped conv with 4 input channels per group, not depthwise", "QLinearConv", 8)


def _block_diagonal(out_channels: int, group_size: int, kernel=(3, 3), fill: int = 0, dtype=np.float32):
    """[C*M, G, k...] with row o's filter at column (o // M) % G, FILL elsewhere (M = C*M / C, C = 8)."""
    multiplier = out_channels // 8
    weight = np.full((out_channels, group_size) + tuple(kernel), fill, dtype)
    for o in range(out_channels):
        weight[o, (o // multiplier) % group_size] = o + 10
    return numpy_helper.from_array(weight, "w")


def test_block_diagonal_multiplier_is_m_for_a_block_diagonal_weight_of_rank_three_to_five():
    from onnx_diagwise.detect import block_diagonal_multiplier

    assert block_diagonal_multiplier(_block_diagonal(8, 4), 2) == 1
    assert block_diagonal_multiplier(_block_diagonal(16, 4), 2) == 2
    assert block_diagonal_multiplier(_block_diagonal(8, 4, kernel=(3,)), 2) == 1
    assert block_diagonal_multiplier(_block_diagonal(8, 4, kernel=(3, 3, 3)), 2) == 1
    assert block_diagonal_multiplier(_block_diagonal(8, 1), 8) == 1  # depthwise: G = 1
    assert block_diagonal_multiplier(_block_diagonal(8, 4, kernel=(1, 1, 1, 1)), 2) is None  # rank 6
    assert block_diagonal_multiplier(_block_diagonal(8, 4, kernel=()), 2) is None  # rank 2
    assert block_diagonal_multiplier(numpy_helper.from_array(np.zeros((8, 0, 3, 3), np.float32)), 2) is None
    assert block_diagonal_multiplier(numpy_helper.from_array(np.zeros((6, 4, 3, 3), np.float32)), 2) is None
    dense = numpy_helper.to_array(_block_diagonal(8, 4)).copy()
    dense[0, 1] = 1.0
    assert block_diagonal_multiplier(numpy_helper.from_array(dense), 2) is None
    quantized = _block_diagonal(8, 4, fill=5, dtype=np.int8)
    assert block_diagonal_multiplier(quantized, 2, np.array(5, np.int8)) == 1
    assert block_diagonal_multiplier(quantized, 2) is None  # zeros expected off the diagonal


# ---------------------------------------------------------------- detect: ConvTranspose


def _transpose_with(weight: np.ndarray, group: int) -> onnx.ModelProto:
    model = conv_transpose_model(c=8, m=2)
    _tensor(model, "w").CopyFrom(numpy_helper.from_array(weight, "w"))
    _set_attribute(model.graph.node[0], "group", group)
    return model


def test_a_depthwise_conv_transpose_is_a_transposed_candidate():
    model = conv_transpose_model(c=8, m=2)
    conv = _candidate(model)
    assert _geometry(conv) == ("ConvTranspose", 8, 2, [4, 4], [2, 2], [1, 1], [1, 1, 1, 1], "NOTSET", "float32",
                               "initializer")
    assert conv.transposed is True and conv.zero_point is None and conv.reader == (model.graph.node[0], 1)
    assert conv.input_shape == ["N", 8, 7, 7]


def test_grouped_and_block_diagonal_conv_transposes():
    looks_diagonal = np.zeros((8, 2, 4, 4), np.float32)  # [C, G*M, k...]: row i holds column i % 2 only
    for i in range(8):
        looks_diagonal[i, i % 2] = i + 1
    # group 3 does not divide the 8 input channels: grouped, whatever the weight looks like
    assert _fields(_skipped(_transpose_with(looks_diagonal, 3), types=False)) == (
        Reason.GROUPED, "grouped ConvTranspose with 2 input channels per group, not depthwise", "ConvTranspose", 8,
        None, [4, 4], "float32", "initializer")
    assert _fields(_skipped(_transpose_with(np.ones((8, 3, 4, 4), np.float32), 4), types=False))[:4] == (
        Reason.GROUPED, "grouped ConvTranspose with 2 input channels per group, not depthwise", "ConvTranspose", 8)
    assert _skipped(_transpose_with(np.ones((8, 2, 4, 4), np.float32), 4), types=False).code == Reason.GROUPED

    model = _transpose_with(looks_diagonal, 4)
    skipped = _skipped(model, types=False)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=2, group=4); nothing to do",
                                "ConvTranspose", 8, 1, [4, 4], "float32", "initializer")

    two = np.zeros((8, 4, 4, 4), np.float32)  # G=2, M=2: row i holds columns 2*(i % 2) and the next
    for i in range(8):
        two[i, 2 * (i % 2):2 * (i % 2) + 2] = i + 1
    model = _transpose_with(two, 4)
    skipped = _skipped(model, types=False)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=2, group=4); nothing to do",
                                "ConvTranspose", 8, 2, [4, 4], "float32", "initializer")
    assert type(skipped.multiplier) is int
    diagonal = skipped.block_diagonal
    assert (diagonal.group_size, diagonal.channels, diagonal.multiplier, diagonal.transposed, diagonal.fill) == (
        2, 8, 2, True, None)
    assert type(diagonal.multiplier) is int and diagonal.reader == (model.graph.node[0], 1)
    assert diagonal.weight.tensor == _tensor(model, "w") and diagonal.weight.kind == "initializer"
    odd_kernel = _transpose_with(two[:, :, :3, :3].copy(), 4)  # a 3x3 kernel, which G=2 does not divide
    assert _fields(_skipped(odd_kernel, types=False)) == (
        Reason.BLOCK_DIAGONAL, "already block-diagonal (G=2, group=4); nothing to do", "ConvTranspose", 8, 2, [3, 3],
        "float32", "initializer")


# ---------------------------------------------------------------- detect: dynamic weights


def _dynamic(dims, group=8, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    model = depthwise_model(channels=8, bias=False)
    model.graph.initializer.pop()
    _drop_attribute(model.graph.node[0], "kernel_shape")
    _set_attribute(model.graph.node[0], "group", group)
    model.graph.input.append(helper.make_tensor_value_info("w", elem, dims))
    return model


@pytest.mark.parametrize("dims, multiplier, kernel, dtype, elem", [
    ([8, 1, 3, 3], 1, [3, 3], "float32", TensorProto.FLOAT),
    ([16, 1, 3, 3], 2, [3, 3], "float32", TensorProto.FLOAT),
    ([8, 1, 3], 1, [3], "float16", TensorProto.FLOAT16),
    ([8, 1, 3, 3, 3], 1, [3, 3, 3], "float64", TensorProto.DOUBLE),
    ([8, 1, 2, 2], 1, [2, 2], "bfloat16", TensorProto.BFLOAT16),
])
def test_dynamic_depthwise_weights_take_their_shape_from_inference(dims, multiplier, kernel, dtype, elem):
    model = _dynamic(dims, elem=elem)
    conv = _candidate(model)
    rank = len(kernel)
    assert _geometry(conv) == ("dynamic", 8, multiplier, kernel, [1] * rank, [1] * rank, None, "NOTSET", dtype,
                               "graph input")
    assert type(conv.multiplier) is int
    assert conv.weight is None and conv.zero_point is None and conv.transposed is False
    assert (conv.dynamic.name, conv.dynamic.description) == ("w", "graph input")
    assert conv.reader == (model.graph.node[0], 1)


@pytest.mark.parametrize("dims, group, elem, code, tail", [
    ([8, 0, 3, 3], 8, TensorProto.FLOAT, Reason.DYNAMIC_SHAPE, "whose shape or float type is unknown"),
    ([0, 1, 3, 3], 8, TensorProto.FLOAT, Reason.DYNAMIC_SHAPE, "whose shape or float type is unknown"),
    (["a", 1, 3, 3], 8, TensorProto.FLOAT, Reason.DYNAMIC_SHAPE, "whose shape or float type is unknown"),
    ([8, 1, 3, 3], 8, TensorProto.INT32, Reason.DYNAMIC_SHAPE, "whose shape or float type is unknown"),
    ([8, 1, 3, 3, 3, 3], 8, TensorProto.FLOAT, Reason.DYNAMIC_NOT_DEPTHWISE,
     "of shape [8, 1, 3, 3, 3, 3], not depthwise"),
    ([8, 1], 8, TensorProto.FLOAT, Reason.DYNAMIC_NOT_DEPTHWISE, "of shape [8, 1], not depthwise"),
    ([8, 2, 3, 3], 4, TensorProto.FLOAT, Reason.DYNAMIC_NOT_DEPTHWISE, "of shape [8, 2, 3, 3], not depthwise"),
    ([12, 1, 3, 3], 8, TensorProto.FLOAT, Reason.DYNAMIC_NOT_DEPTHWISE, "of shape [12, 1, 3, 3], not depthwise"),
])
def test_dynamic_weights_that_cannot_be_expanded_say_why(dims, group, elem, code, tail):
    assert _fields(_skipped(_dynamic(dims, group=group, elem=elem))) == (
        code, f"weight 'w' is a graph input {tail}", "dynamic", group, None, None, None, "graph input")


def test_dynamic_weights_need_value_types_and_the_float_conv_form():
    assert _fields(_skipped(_dynamic([8, 1, 3, 3]), types=False)) == (
        Reason.DYNAMIC_SHAPE, "weight 'w' is a graph input whose shape or float type is unknown", "dynamic", 8, None,
        None, None, "graph input")
    fused = fused_conv_model(c=8)
    fused.graph.initializer.remove(_tensor(fused, "w"))
    fused.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 1, 3, 3]))
    assert _fields(_skipped(fused)) == (Reason.DYNAMIC_FORM, "weight 'w' is a graph input; dynamic FusedConv weights "
                                        "are not supported", "FusedConv", 8, None, None, None, "graph input")
    transposed = conv_transpose_model(c=8, m=2)
    transposed.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 2, 4, 4]))
    assert _fields(_skipped(transposed)) == (
        Reason.DYNAMIC_FORM, "weight 'w' is a graph input with a default; dynamic ConvTranspose weights are not "
        "supported", "ConvTranspose", 8, None, None, None, "graph input with a default")
    qdq = qdq_model(c=8)
    qdq.graph.initializer.remove(_tensor(qdq, "w_q"))
    qdq.graph.input.append(helper.make_tensor_value_info("w_q", TensorProto.INT8, [8, 1, 3, 3]))
    assert _fields(_skipped(qdq)) == (Reason.DYNAMIC_FORM, "weight 'w_q' is a graph input; dynamic QDQ weights are "
                                      "not supported", "QDQ", 8, None, None, None, "graph input")


def test_the_run_time_expansion_of_a_dynamic_weight_is_block_diagonal():
    model = rewrite(dynamic_weight_model(), group_size=4).model  # C=8, M=2
    skipped = _skipped(model)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=4, group=2): the run-time "
                                "expansion of a dynamic weight; nothing to do", "float", 8, 2, [3, 3], None,
                                "computed by Reshape")
    diagonal = skipped.block_diagonal
    assert (diagonal.group_size, diagonal.channels, diagonal.multiplier, diagonal.weight, diagonal.reader) == (
        4, 8, 2, None, None)
    assert [n.op_type for n in diagonal.expansion[:3]] == ["Reshape", "Mul", "Reshape"]
    assert [n.name for n in diagonal.expansion[:3]] == ["dw_diagwise_reshape", "dw_diagwise_mask",
                                                        "dw_diagwise_weight"]
    assert diagonal.expansion[3] == "w"


def test_the_run_time_expansion_of_a_one_dimensional_weight_is_block_diagonal():
    model = depthwise_model(channels=8, kernel=(3,), spatial=(12,), bias=False)
    weight = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("w", weight.data_type, list(weight.dims)))
    rewritten = rewrite(model, group_size=2).model  # blocks shape [4, 2, 1, 1, 3]: five values
    assert numpy_helper.to_array(_constant(rewritten, "_blocks_shape")).tolist() == [4, 2, 1, 1, 3]
    skipped = _skipped(rewritten)
    assert _fields(skipped) == (Reason.BLOCK_DIAGONAL, "already block-diagonal (G=2, group=4): the run-time "
                                "expansion of a dynamic weight; nothing to do", "float", 8, 1, [3], None,
                                "computed by Reshape")


def _expansion_changed(change) -> onnx.ModelProto:
    model = rewrite(dynamic_weight_model(), group_size=4).model
    change(model)
    return model


def _constant(model: onnx.ModelProto, suffix: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name.endswith(suffix))


def _refill(model: onnx.ModelProto, suffix: str, values: np.ndarray) -> None:
    tensor = _constant(model, suffix)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


@pytest.mark.parametrize("change, group", [
    (lambda m: _refill(m, "_mask", np.ones((1, 4, 1, 4, 1, 1), np.float32)), 2),
    (lambda m: _refill(m, "_mask", np.eye(4, dtype=np.float32).reshape(1, 4, 1, 4, 1)), 2),
    (lambda m: _refill(m, "_weight_shape", np.array([16, 4, 9], np.int64)), 2),
    (lambda m: _refill(m, "_weight_shape", np.array([[16, 4, 3, 3]], np.int64)), 2),
    (lambda m: _set_attribute(conv_nodes(m)[0], "group", 4), 4),
    (lambda m: setattr(next(n for n in m.graph.node if n.op_type == "Mul"), "op_type", "Add"), 2),
    (lambda m: setattr(m.graph.node[0], "op_type", "Expand"), 2),
    (lambda m: setattr(m.graph.node[2], "op_type", "Expand"), 2),
    (lambda m: (m.graph.initializer.remove(_constant(m, "_mask")),  # the mask is no constant
                m.graph.input.append(helper.make_tensor_value_info("w_diagwise_mask", TensorProto.FLOAT,
                                                                   [1, 4, 1, 4, 1, 1]))), 2),
])
def test_a_changed_expansion_is_a_weight_computed_by_reshape(change, group):
    skipped = _skipped(_expansion_changed(change), types=False)
    assert (skipped.code, skipped.form, skipped.channels, skipped.block_diagonal) == (
        Reason.DYNAMIC_SHAPE, "dynamic", group, None)


def test_a_short_blocks_shape_is_no_expansion():
    model = rewrite(dynamic_weight_model(), group_size=4).model
    _refill(model, "_blocks_shape", np.array([2, 4, 2, 1], np.int64))
    skipped = _skipped(model, types=False)
    assert (skipped.code, skipped.block_diagonal) == (Reason.DYNAMIC_SHAPE, None)
    scalar = rewrite(dynamic_weight_model(), group_size=4).model
    _refill(scalar, "_blocks_shape", np.array(2, np.int64))
    assert _skipped(scalar, types=False).block_diagonal is None


# ---------------------------------------------------------------- detect: functions, other ops, lowered forms


def _function_with(nodes, attributes) -> onnx.ModelProto:
    function = helper.make_function("local", "DwBlock", ["x"], ["y"], nodes,
                                    opset_imports=[helper.make_opsetid("", 21)], attributes=list(attributes))
    graph = helper.make_graph([helper.make_node("DwBlock", ["x"], ["y"], domain="local", name="call", **attributes)],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)])


def _reference(node: onnx.NodeProto, name: str, to: str) -> None:
    a = onnx.AttributeProto(name=name, ref_attr_name=to, type=onnx.AttributeProto.INT)
    node.attribute.append(a)


def _constant_node(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(array, name))


def test_attributes_set_where_the_function_is_called_leave_the_node_alone():
    w = np.ones((8, 1, 3, 3), np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", pads=[1, 1, 1, 1])
    _reference(conv, "group", "g")
    skipped = _skipped(_function_with([_constant_node("w", w), conv], {"g": 8}))
    assert _fields(skipped) == (Reason.ATTRIBUTE_REFERENCE, "attributes refer to the function's (group -> 'g'): their "
                                "values are known only where the function is called; left as it is", "float", None,
                                None, None, None, None)
    assert skipped.graph == "function local.DwBlock"
    _reference(conv, "strides", "s")
    assert _skipped(_function_with([_constant_node("w", w), conv], {"g": 8, "s": 1})).reason == (
        "attributes refer to the function's (group -> 'g', strides -> 's'): their values are known only where the "
        "function is called; left as it is")

    dq = helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w")
    _reference(dq, "axis", "ax")
    nodes = [_constant_node("w_q", np.ones((8, 1, 3, 3), np.int8)),
             _constant_node("w_scale", np.full(8, 0.01, np.float32)), _constant_node("w_zp", np.zeros(8, np.int8)),
             dq, helper.make_node("Conv", ["x", "w_dq"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    assert _fields(_skipped(_function_with(nodes, {"ax": 0}))) == (
        Reason.ATTRIBUTE_REFERENCE, "its DequantizeLinear's attributes refer to the function's (axis -> 'ax'): known "
        "only where the function is called", "float", 8, None, None, None, None)
    _reference(dq, "block_size", "bs")
    assert _skipped(_function_with(nodes, {"ax": 0, "bs": 0})).reason == (
        "its DequantizeLinear's attributes refer to the function's (axis -> 'ax', block_size -> 'bs'): known only "
        "where the function is called")


def _other_conv(op_type: str, domain: str, group) -> onnx.ModelProto:
    model = fused_conv_model(c=8)
    node = model.graph.node[0]
    node.op_type, node.domain = op_type, domain
    _set_attribute(node, "group", group)
    return model


def test_grouped_convolutions_of_other_kinds_are_listed():
    skipped = _skipped(_other_conv("DeformConv", "", 8), types=False)
    assert _fields(skipped) == (Reason.UNHANDLED_OP, "ai.onnx.DeformConv (group=8) is not a form this tool handles; "
                                "left as it is", "ai.onnx.DeformConv", 8, None, None, None, None)
    skipped = _skipped(_other_conv("MyCONV", "my.domain", 4), types=False)
    assert (skipped.code, skipped.reason, skipped.form, skipped.channels) == (
        Reason.UNHANDLED_OP, "my.domain.MyCONV (group=4) is not a form this tool handles; left as it is",
        "my.domain.MyCONV", 4)
    assert _fields(_skipped(_other_conv("MyConv", "my.domain", 2), types=False))[:4] == (
        Reason.UNHANDLED_OP, "my.domain.MyConv (group=2) is not a form this tool handles; left as it is",
        "my.domain.MyConv", 2)
    for op_type, group in (("MyConv", 1), ("MyConv", 2.0), ("Pool", 8)):
        found = _detected(_other_conv(op_type, "my.domain", group), types=False)
        assert (found.candidates, found.skipped) == ([], [])
    ungrouped = _other_conv("MyConv", "my.domain", 8)
    _drop_attribute(ungrouped.graph.node[0], "group")  # group 1 by default: not a grouped one
    assert _detected(ungrouped, types=False).skipped == []
    referring = _other_conv("MyConv", "my.domain", 8)
    _reference(referring.graph.node[0], "strides", "s")
    assert _detected(referring, types=False).skipped == []


def test_lowered_convs_are_recorded_with_the_original_layer():
    toeplitz = rewrite(depthwise_model(channels=8), group_size="toeplitz").model
    skipped = _skipped(toeplitz)
    assert _fields(skipped) == (Reason.LOWERED, "lowered already (toeplitz); nothing to do", "float", 8, 1, [3, 3],
                                "float32", "initializer")
    assert skipped.lowered.lowering == "toeplitz" and skipped.block_diagonal is None
    polyphase = rewrite(depthwise_model(channels=8, multiplier=2, kernel=(3,), spatial=(16,)),
                        group_size="polyphase:4").model
    assert _fields(_skipped(polyphase)) == (Reason.LOWERED, "lowered already (polyphase B=4); nothing to do", "float",
                                            8, 2, [3], "float32", "initializer")
    assert type(_skipped(polyphase).multiplier) is int
    damaged = rewrite(depthwise_model(channels=8), group_size="toeplitz").model
    lowered_weight = conv_nodes(damaged)[0].input[1]
    values = initializer(damaged, lowered_weight) + 1
    _tensor(damaged, lowered_weight).CopyFrom(numpy_helper.from_array(values, lowered_weight))
    skipped = _skipped(damaged)
    assert (skipped.code, skipped.form, skipped.channels, skipped.lowered) == (Reason.LOWERED_DAMAGED, "float", None,
                                                                               None)
    assert skipped.reason == (f"carries a lowering's marker, but cannot be reverted: the lowered tensor "
                              f"'{lowered_weight}' was changed since it was built")


def test_a_lowered_conv_whose_original_has_no_group_attribute_had_one_channel():
    """A marker's original node without group (a one-channel Conv lowered by hand): group 1."""
    from onnx_diagwise.detect import DepthwiseConv
    from onnx_diagwise.graphs import NodeEdits, all_names, iter_scopes
    from onnx_diagwise.lowerings import build, insert
    from onnx_diagwise.sources import find_weight

    model = depthwise_model(channels=1, multiplier=4, bias=False)
    node = model.graph.node[0]
    _drop_attribute(node, "group")
    [scope] = list(iter_scopes(model))
    conv = DepthwiseConv("dw", node, scope, "float", 1, 4, [3, 3], [1, 1], [1, 1], None, "NOTSET", "float32",
                         weight=find_weight(scope, "w"), reader=(node, 1))
    edits = NodeEdits()
    insert(conv, build(conv, "toeplitz", None, [1, 1, 9, 9], all_names(model), opset=17), edits)
    edits.apply()
    assert _fields(_skipped(model)) == (Reason.LOWERED, "lowered already (toeplitz); nothing to do", "float", 1, 4,
                                        [3, 3], "float32", "initializer")


# ---------------------------------------------------------------- applying plans


def _shared_weight_model() -> onnx.ModelProto:
    model = depthwise_model(channels=4, bias=False)
    model.graph.node.append(helper.make_node("ReduceSum", ["w"], ["s"], name="sum_w", keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    return model


def test_a_plan_s_lowering_is_refused_where_the_weight_became_shared():
    """The plan, made where only the Conv read the weight, is applied to a model where a ReduceSum
    reads it too: a lowering replaces the weight in place, so it is refused, and the model is kept."""
    alone = depthwise_model(channels=4, bias=False)
    planned = plan_exact(detect(alone, infer_value_types(alone)), {"dw": parse_choice("toeplitz")})
    shared = _shared_weight_model()
    before = shared.SerializeToString()
    with pytest.raises(DiagwiseError) as refused:
        apply_plan(shared, planned)
    assert str(refused.value) == ("'dw' cannot take toeplitz: the weight 'w' is read 2 times; lowerings replace it "
                                  "in place, so it must be read by this Conv only")
    assert shared.SerializeToString() == before
    [decision] = apply_plan(alone, planned)
    assert decision.action == "rewritten" and decision.lowering == "toeplitz"


def test_apply_group_sizes_says_the_sizes_were_exact():
    model = depthwise_model(channels=8)
    [decision] = apply_group_sizes(model, {"dw": 4})
    assert (decision.action, decision.code, decision.reason, decision.group_size, decision.groups_after) == (
        "rewritten", Reason.POLICY, "G=4, group=2 (exact)", 4, 2)
    assert attr(conv_nodes(model)[0], "group") == 2
