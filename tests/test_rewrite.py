"""Structural checks of the rewrite pass: what changes, what must not."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import (SAMPLE_DIR, assert_same_outputs, attr, conv_nodes, depthwise_model, initializer, loop_model,
                     random_inputs, run)
from onnx_diagwise import DiagwiseError, Reason, Selection, inspect, revert, rewrite
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
