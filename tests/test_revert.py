"""revert: block-diagonal grouped convolutions back to depthwise, exactly."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import (FORMS, SAMPLE_DIR, assert_same_outputs, attr, cli, depthwise_model, initializer,
                     qlinearconv_model)
from onnx_diagwise import revert, rewrite


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("policy", [2, 4, "full"])
def test_revert_of_rewrite_is_the_original(form, policy):
    model = FORMS[form]()
    rewritten = rewrite(model, group_size=policy)
    assert rewritten.report.rewritten
    back = revert(rewritten.model)
    assert back.model == model
    assert all(n.action == "reverted" for n in back.report.nodes)
    # and nothing left to revert: every node is listed, depthwise already
    again = revert(back.model).report.nodes
    assert [(n.name, n.action, n.reason) for n in again] == [
        (n.name, "skipped", "depthwise already; nothing to revert") for n in rewritten.report.nodes]


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*.onnx")), ids=lambda p: p.stem)
def test_revert_samples(path):
    model = onnx.load(path)
    back = revert(rewrite(model, group_size=8).model).model
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for tensor in back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])
    if path.stem != "shared_weight":  # there the Identity alias was dropped by rewrite, being unused
        assert back == model


def test_block_diagonal_from_elsewhere_and_mixing_weights():
    model = depthwise_model(channels=8, bias=False)
    rng = np.random.default_rng(0)
    block = np.zeros((8, 4, 3, 3), np.float32)
    for o in range(8):
        block[o, o % 4] = rng.standard_normal((3, 3))
    mixing = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(block, "wb"), numpy_helper.from_array(mixing, "wm")])
    model.graph.node.extend([
        helper.make_node("Conv", ["y", "wb"], ["z"], name="block", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["z", "wm"], ["q"], name="mixing", group=2, pads=[1, 1, 1, 1])])
    model.graph.output[0].name = "q"
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    result = revert(model)
    by_name = {n.name: n for n in result.report.nodes}
    assert set(by_name) == {"dw", "block", "mixing"}
    assert by_name["dw"].action == "skipped" and by_name["dw"].reason == "depthwise already; nothing to revert"
    assert by_name["block"].action == "reverted"
    assert by_name["mixing"].action == "skipped" and "not block-diagonal" in by_name["mixing"].reason
    block_node = next(n for n in result.model.graph.node if n.name == "block")
    assert attr(block_node, "group") == 8 and initializer(result.model, "wb").shape == (8, 1, 3, 3)
    assert_same_outputs(model, result.model)


def test_a_mixing_conv_before_a_block_diagonal_one_does_not_stop_the_revert():
    rng = np.random.default_rng(1)
    model = depthwise_model(channels=8, bias=False)
    model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
                                                           "wm"))
    model.graph.node.insert(0, helper.make_node("Conv", ["x", "wm"], ["mixed"], name="mixing", group=2))
    model.graph.node[1].input[0] = "mixed"
    rewritten = rewrite(model, group_size=4).model
    result = revert(rewritten)
    assert [(n.name, n.action) for n in result.report.nodes] == [("mixing", "skipped"), ("dw", "reverted")]
    assert result.model == model and result.report.warnings == []
    assert 0 < result.report.elapsed_s < 60


@pytest.mark.parametrize("policy, params", [("polyphase:4:2d", {"block": 4, "as_2d": True}), ("conv2d", None)])
def test_a_reverted_lowering_is_reported_with_its_parameters(policy, params):
    model = depthwise_model(channels=8, kernel=(5,), spatial=(20,))
    result = revert(rewrite(model, group_size=policy).model)
    [node] = result.report.nodes
    assert (node.action, node.code, node.lowering, node.lowering_params) == (
        "reverted", "undone", policy.split(":")[0], params)
    assert result.model == model


def test_a_model_without_grouped_convolutions_is_copied_with_one_warning():
    model = depthwise_model(channels=8)
    model.graph.node[0].ClearField("attribute")  # group=1: an ordinary Conv of 8 input channels
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"))
    result = revert(model)
    assert result.report.nodes == [] and result.model == model
    assert result.report.warnings == ["no block-diagonal convolutions to revert: the output is a copy of the input"]


def test_almost_block_diagonal_is_left_alone():
    rewritten = rewrite(depthwise_model(channels=8), group_size=4).model
    w = initializer(rewritten, "w").copy()
    w[0, 3, 0, 0] = 1e-30  # one tiny off-diagonal entry: it still reads another channel
    rewritten.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    [decision] = revert(rewritten).report.nodes
    assert decision.action == "skipped"


def test_quantized_off_diagonal_must_be_the_zero_point():
    model = qlinearconv_model()
    rewritten = rewrite(model, group_size=4).model
    w = initializer(rewritten, "w").copy()
    zp = initializer(model, "w_zp")
    w[0, 3] = zp[0] + 1
    next(t for t in rewritten.graph.initializer if t.name == "w").CopyFrom(numpy_helper.from_array(w, "w"))
    [decision] = revert(rewritten).report.nodes
    assert decision.action == "skipped"


def test_cli_revert(tmp_path):
    source = SAMPLE_DIR / "mobilenet_v1_025.onnx"
    diag, back = tmp_path / "diag.onnx", tmp_path / "back.onnx"
    assert cli("rewrite", source, diag, "-q").returncode == 0
    r = cli("revert", diag, back, "-v")
    assert r.returncode == 0, r.stderr
    assert "13 grouped Conv node(s): 13 reverted, 0 skipped" in r.stdout and "check: 1/1 outputs passed" in r.stdout
    assert onnx.load(back) == onnx.load(source)
    r = cli("revert", diag, diag)
    assert r.returncode == 2 and "is the input model" in r.stderr
    r = cli("revert", tmp_path / "missing.onnx", back)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_convolutions_of_other_domains_are_listed_and_revert_warns():
    """onnxruntime's ALL level writes com.microsoft.nchwc.Conv: not handled, but never hidden."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnx_diagwise import inspect, revert
    from onnx_diagwise.weights import expand_depthwise

    weight = expand_depthwise(np.random.default_rng(0).standard_normal((16, 1, 3, 3)).astype(np.float32), 16, 8)
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain="com.microsoft.nchwc", group=2, name="fused_dw")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft.nchwc", 1)])
    [listed] = inspect(model).nodes
    assert (listed.name, listed.form, listed.action) == ("fused_dw", "com.microsoft.nchwc.Conv", "skipped")
    assert "not a form this tool handles" in listed.reason
    result = revert(model)
    assert [n.name for n in result.report.nodes] == ["fused_dw"]
    assert result.report.warnings == [
        "block-diagonal weights remain in 1 node(s) of a form revert does not handle (fused_dw): revert the model "
        "before onnxruntime's optimizer rewrites its convolutions",
        "no block-diagonal convolutions to revert: the output is a copy of the input (1 grouped convolution(s) left "
        "alone, reasons with -v)"]
    weight[0, 3, 0, 0] = 1.0  # mixes channels: not block-diagonal, so nothing to warn about
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    assert not any("remain" in w for w in revert(model).report.warnings)


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("policy", [2, "full"])
def test_one_classifier_for_rewrite_inspect_and_revert(form, policy):
    """Every node rewrite() rewrote is listed block-diagonal, with its G, by inspect and by the
    statistics after the rewrite (G = C and the run-time expansion included); revert takes
    exactly those nodes back."""
    from onnx_diagwise import inspect

    rewritten = rewrite(FORMS[form](), group_size=policy)
    done = {n.name: n.group_size for n in rewritten.report.rewritten}
    assert done
    listed = inspect(rewritten.model).nodes
    assert {n.name: n.group_size for n in listed if n.block_diagonal} == done
    assert all(n.action == "skipped" and "already block-diagonal" in n.reason for n in listed)
    assert rewritten.report.after.block_diagonal_convs == len(done)
    assert rewritten.report.after.depthwise_convs == 0
    back = revert(rewritten.model).report
    assert {n.name: n.group_size for n in back.rewritten} == done
    assert back.before.block_diagonal_convs == len(done) and back.after.block_diagonal_convs == 0
    assert back.after.depthwise_convs == len(done)


def test_shared_weight_round_trip_is_exact():
    """rewrite() gives a weight that others read too an expanded copy; revert() points the node
    back at the original and drops the copy, so the model is exactly the one it was."""
    model = depthwise_model(channels=8, bias=False)
    weight = model.graph.initializer[0].name
    model.graph.node.append(helper.make_node("ReduceSum", [weight], ["s"], name="other_reader", keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, []))
    rewritten = rewrite(model, group_size=4).model
    assert len(rewritten.graph.initializer) == 2
    back = revert(rewritten)
    assert [n.action for n in back.report.nodes] == ["reverted"]
    assert back.model == model


def test_revert_reason_names_the_group_a_dense_block_diagonal_conv_had():
    """A Conv without a group attribute (group 1) whose weight is block-diagonal with G = C is
    reverted, and its reason says group=1."""
    from onnx_diagwise.weights import expand_depthwise

    model = depthwise_model(channels=8, bias=False)
    full = expand_depthwise(initializer(model, "w"), 8, 8)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(full, "w"))
    conv = model.graph.node[0]
    del conv.attribute[:]
    conv.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    del model.graph.value_info[:]
    [decision] = revert(model).report.nodes
    assert decision.action == "reverted"
    assert decision.reason == "block-diagonal with G=8 (group=1) -> depthwise (group=8)"


def test_revert_of_a_shared_block_diagonal_weight_adds_a_depthwise_copy():
    """A block-diagonal weight this tool did not write, read by another node too, stays for that
    reader; the reverted Conv reads a new tensor named <weight>_depthwise."""
    from onnx_diagwise.weights import expand_depthwise

    model = depthwise_model(channels=8, bias=False)
    depthwise = initializer(model, "w")
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(expand_depthwise(depthwise, 8, 4), "w"))
    conv = model.graph.node[0]
    next(a for a in conv.attribute if a.name == "group").i = 2
    model.graph.node.append(helper.make_node("ReduceSum", ["w"], ["s"], name="other_reader", keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, []))
    del model.graph.value_info[:]
    result = revert(model)
    assert [n.action for n in result.report.nodes] == ["reverted"]
    assert [t.name for t in result.model.graph.initializer] == ["w", "w_depthwise"]
    assert list(result.model.graph.node[0].input) == ["x", "w_depthwise"]
    np.testing.assert_array_equal(initializer(result.model, "w_depthwise"), depthwise)
    assert_same_outputs(model, result.model)


def _rewritten_dynamic():
    from helpers import dynamic_weight_model

    model = rewrite(dynamic_weight_model(), group_size=4).model
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Mul", "Reshape", "Conv"]
    return model


def test_revert_keeps_a_run_time_expansion_that_another_node_reads():
    """The Conv reads the dynamic weight again, but the expansion stays for its other reader."""
    model = _rewritten_dynamic()
    expanded = model.graph.node[2].output[0]
    model.graph.node.append(helper.make_node("ReduceSum", [expanded], ["s"], name="other_reader", keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, []))
    result = revert(model)
    assert [n.action for n in result.report.nodes] == ["reverted"]
    assert [n.op_type for n in result.model.graph.node] == ["Reshape", "Mul", "Reshape", "Conv", "ReduceSum"]
    assert list(result.model.graph.node[3].input) == ["x", "w"]
    assert len(result.model.graph.initializer) == 3
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)


def test_revert_keeps_an_expansion_constant_another_node_reads():
    """The expansion nodes go, and the shape constants with them, but the mask stays for its other reader."""
    model = _rewritten_dynamic()
    mask = model.graph.node[1].input[1]
    model.graph.node.append(helper.make_node("Identity", [mask], ["mask_copy"], name="mask_reader"))
    model.graph.output.append(helper.make_tensor_value_info("mask_copy", onnx.TensorProto.FLOAT, None))
    result = revert(model)
    assert [n.action for n in result.report.nodes] == ["reverted"]
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Identity"]
    assert [t.name for t in result.model.graph.initializer] == [mask]
    assert_same_outputs(model, result.model)


@pytest.mark.parametrize("source_dims", [[2, 4, 2, 1, 3, 3], [16, 3, 3], None])
def test_an_expansion_whose_source_is_not_the_depthwise_weight_is_left(source_dims):
    """A hand-built expansion of a W not shaped [C*M, 1, k...] (or of unknown shape): pointing the Conv
    at W would give it a weight it cannot read, so the node is left as it is."""
    model = _rewritten_dynamic()
    declared = next(v for v in model.graph.input if v.name == "w").type.tensor_type
    declared.ClearField("shape")
    for size in source_dims or ():
        declared.shape.dim.add().dim_value = size
    result = revert(model)
    assert result.model == model
    assert [(n.action, n.code, n.reason) for n in result.report.nodes] == [
        ("skipped", "dynamic-not-depthwise", "weight 'w_diagwise_g4' is computed by Reshape of shape [16, 4, 3, 3], "
                                             "not depthwise")]
    if source_dims:
        onnx.checker.check_model(result.model, full_check=True)
        assert_same_outputs(model, result.model)


def test_revert_removes_a_run_time_expansion_of_the_outer_graph():
    """A Conv in an If branch whose weight is expanded in the outer graph: the expansion is removed
    from the outer graph and the Conv reads the dynamic weight."""
    model = _rewritten_dynamic()
    conv = model.graph.node.pop()
    conv.output[0] = "t_out"
    then_g = helper.make_graph([conv], "then", [], [helper.make_tensor_value_info("t_out", onnx.TensorProto.FLOAT,
                                                                                  None)])
    else_g = helper.make_graph([helper.make_node("Conv", ["x", model.graph.node[2].output[0]], ["e_out"],
                                                 name="else_dw", group=2)], "else", [],
                               [helper.make_tensor_value_info("e_out", onnx.TensorProto.FLOAT, None)])
    model.graph.input.append(helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_g,
                                             else_branch=else_g))
    result = revert(model)
    assert sorted((n.name, n.action) for n in result.report.nodes) == [("dw", "reverted"), ("else_dw", "reverted")]
    assert [n.op_type for n in result.model.graph.node] == ["If"]
    assert len(result.model.graph.initializer) == 0
    branches = {a.name: a.g for a in result.model.graph.node[0].attribute}
    assert list(branches["then_branch"].node[0].input) == ["x", "w"]
    assert list(branches["else_branch"].node[0].input) == ["x", "w"]


def _nchwc_model(weight, inputs=("x", "w"), group=2):
    from onnx import TensorProto

    node = helper.make_node("Conv", list(inputs), ["y"], domain="com.microsoft.nchwc", group=group, name="fused")
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])]
    initializers = []
    if isinstance(weight, np.ndarray):
        initializers.append(numpy_helper.from_array(weight, "w"))
    elif weight == "input":
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 4, 3, 3]))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft.nchwc", 1)])


@pytest.mark.parametrize("weight, inputs", [
    (None, ("x",)),
    ("input", ("x", "w")),
    (np.ones(8, np.float32), ("x", "w")),
    (np.ones((8, 4, 3, 3), np.int8), ("x", "w")),
    (np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0, 1]].reshape(6, 2, 1, 1), ("x", "w")),
    (np.eye(2, dtype=np.float32)[[0, 0, 1, 1, 0, 0, 1, 1]].reshape(8, 2, 1, 1, 1, 1), ("x", "w")),
], ids=["no_weight", "graph_input", "rank_1", "int8", "channels_not_a_multiple", "rank_6"])
def test_unhandled_convolutions_without_a_constant_float_weight_are_not_warned_about(weight, inputs):
    """Only a constant float [C*M, G, k...] weight can be block-diagonal: others are listed, no warning."""
    result = revert(_nchwc_model(weight, inputs))
    assert [(n.name, n.action) for n in result.report.nodes] == [("fused", "skipped")]
    assert not any("remain" in w for w in result.report.warnings)


def test_unhandled_convolution_with_two_channels_per_group_is_warned_about():
    """A block-diagonal weight with G=2 in a convolution revert does not handle is named in a warning."""
    from onnx_diagwise.weights import expand_depthwise

    weight = expand_depthwise(np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32), 8, 2)
    result = revert(_nchwc_model(weight, group=4))
    assert any("block-diagonal weights remain in 1 node(s)" in w and "fused" in w for w in result.report.warnings)
