"""Valid models are accepted whatever their control flow and functions hold, and invalid ones
are refused in one line (exit 2), never with an internal error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE_DIR, cli, depthwise_model
from onnx_diagwise import DiagwiseError, inspect, rewrite
from onnx_diagwise.reverter import revert


def _control_flow_cases():
    """onnx's own node cases whose graphs hold If, Loop or Scan (with Constants inside) or functions."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    def nested(graph) -> bool:
        return any(n.op_type in ("If", "Loop", "Scan") or any(a.HasField("g") or a.graphs for a in n.attribute)
                   for n in graph.node)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [c for c in cases if nested(c.model.graph) or c.model.functions]


@pytest.mark.parametrize("case", _control_flow_cases(), ids=lambda c: c.name)
def test_control_flow_and_function_cases_load_and_rewrite(case, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(case.model, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError:
        pytest.skip("onnx's own checker refuses this case")
    report = inspect(path)  # loads through the checker, as every command does
    result = rewrite(path, group_size=2)
    assert len(result.report.nodes) == len(report.nodes)


def _if_model(depth: int) -> onnx.ModelProto:
    """A depthwise Conv inside If branches nested DEPTH deep, each branch holding a Constant."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")

    def branch(level: int, tag: str) -> onnx.GraphProto:
        out = f"y_{tag}{level}"
        if level == depth:
            nodes = [helper.make_node("Constant", [], [f"k_{tag}{level}"], name=f"const_{tag}{level}",
                                      value=numpy_helper.from_array(np.float32(2.0 if tag == "t" else 3.0))),
                     helper.make_node("Conv", ["x", "w"], [f"c_{tag}{level}"], group=4, pads=[1, 1, 1, 1],
                                      name=f"dw_{tag}{level}"),
                     helper.make_node("Mul", [f"c_{tag}{level}", f"k_{tag}{level}"], [out])]
        else:
            nodes = [helper.make_node("Constant", [], [f"k_{tag}{level}"], name=f"const_{tag}{level}",
                                      value=numpy_helper.from_array(np.float32(1.0))),
                     helper.make_node("If", ["cond"], [out], name=f"if_{tag}{level}",
                                      then_branch=branch(level + 1, tag + "t"), else_branch=branch(level + 1, tag + "e"))]
        return helper.make_graph(nodes, f"b_{tag}{level}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 6, 6])])

    top = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch(1, "t"), else_branch=branch(1, "e"))
    graph = helper.make_graph([top], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_nested_if_with_constants_is_rewritten_and_checked(tmp_path, depth):
    model = _if_model(depth)
    onnx.checker.check_model(model, full_check=True)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    r = cli("rewrite", path, out, "-g", "2", "--json", "-")
    assert r.returncode == 0, r.stderr
    rewritten = rewrite(path, group_size=2).report.rewritten
    assert len(rewritten) == 2 ** depth  # every branch's Conv (the weight is shared from the main graph)


def _function_model(group_as_reference: bool) -> onnx.ModelProto:
    """A model-local function holding a depthwise Conv whose group is (or is not) the function's attribute."""
    if group_as_reference:
        group = helper.make_attribute_ref("group", onnx.AttributeProto.INT)
        conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", pads=[1, 1, 1, 1])
        conv.attribute.append(group)
    else:
        conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", pads=[1, 1, 1, 1], group=4)
    function = helper.make_function("local", "Block", ["x", "w"], ["y"], [conv],
                                    [helper.make_opsetid("", 17)], attributes=["group"] if group_as_reference else [])
    call = helper.make_node("Block", ["x", "w"], ["y"], domain="local", name="call")
    if group_as_reference:
        call.attribute.append(helper.make_attribute("group", 4))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([call], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             functions=[function], ir_version=8)


def test_function_conv_whose_group_is_the_function_s_attribute_is_left_alone_with_the_reason(tmp_path):
    model = _function_model(group_as_reference=True)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    [node] = inspect(path).nodes
    assert node.action == "skipped" and "group -> 'group'" in node.reason and "where the function is called" in node.reason
    r = cli("rewrite", path, tmp_path / "out.onnx")
    assert r.returncode == 0, r.stderr
    assert cli("revert", path, tmp_path / "back.onnx").returncode == 0


def test_function_conv_with_its_own_group_is_rewritten(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_function_model(group_as_reference=False), path)
    r = cli("rewrite", path, tmp_path / "out.onnx", "-g", "2")
    assert r.returncode == 0, r.stderr


def _with_group(group: int) -> onnx.ModelProto:
    model = depthwise_model(channels=8)
    for attr in model.graph.node[0].attribute:
        if attr.name == "group":
            attr.i = group
    return model


def _without_weight_data() -> onnx.ModelProto:
    model = depthwise_model(channels=64, kernel=(5, 5))  # past the size the loader's checker looks into
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    del weight.float_data[:]
    return model


@pytest.mark.parametrize("model, words", [
    (_with_group(0), "group=0, not a positive integer"),
    (_with_group(-8), "group=-8, not a positive integer"),
    (_without_weight_data(), "tensor 'w'"),
], ids=["group 0", "negative group", "weight without data"])
def test_invalid_models_end_in_one_line(tmp_path, model, words):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in (["inspect", path], ["rewrite", path, tmp_path / "o.onnx"], ["revert", path, tmp_path / "o.onnx"]):
        r = cli(*command)
        if command[0] != "rewrite" and words.startswith("tensor"):
            continue  # only rewrite reads a depthwise weight
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(DiagwiseError, match=words.split(",")[0]):
        rewrite(model)


def test_a_block_diagonal_quantized_conv_with_a_bad_zero_point_is_left_with_the_reason():
    """detect's grouped-conv path reads the zero point too: a damaged one is a reason, not a crash."""
    rewritten = rewrite(SAMPLE_DIR / "qlinear_block.onnx", 4).model
    [zp] = [t for t in rewritten.graph.initializer if t.name == "dw_zp"]
    zp.CopyFrom(numpy_helper.from_array(np.zeros(3, np.uint8), "dw_zp"))  # 3 values for 32 output channels
    nodes = {n.name: n for n in inspect(rewritten).nodes}
    assert nodes["depthwise"].action == "skipped" and "not depthwise" in nodes["depthwise"].reason
