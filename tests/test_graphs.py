"""graphs: scopes of a model (subgraphs, functions), name resolution, read counts, new names."""

import onnx
from onnx import TensorProto, helper

from onnx_diagwise.graphs import all_names, iter_scopes, node_label, resolve, unique_name, use_counts


def nested_model() -> onnx.ModelProto:
    """Main graph: If(cond) whose then-branch reads the outer initializer 'w' and a local one; a
    model-local function reading its own input; 'w' is also a graph output."""
    then_graph = helper.make_graph(
        [helper.make_node("Add", ["w", "local"], ["t"], name="inner_add")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
        [helper.make_tensor("local", TensorProto.FLOAT, [2], [1.0, 2.0])])
    else_graph = helper.make_graph([helper.make_node("Identity", ["w"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    main = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Block", ["out"], ["z"], domain="my")],
        "main", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [3.0, 4.0])])
    function = helper.make_function("my", "Block", ["x"], ["y"], [helper.make_node("Neg", ["x"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(main, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my", 1)],
                             functions=[function])


def test_scopes_in_order_with_paths_and_namespaces():
    scopes = list(iter_scopes(nested_model()))
    assert [(s.path, s.namespace, s.is_function) for s in scopes] == [
        ("main", "main", False), ("main/branch.else_branch", "main", False),  # attributes in the node's order
        ("main/branch.then_branch", "main", False), ("function my.Block", "function my.Block", True)]
    assert scopes[1].parent is scopes[0] and scopes[3].parent is None
    assert scopes[3].input_names() == {"x"} and scopes[3].output_names() == {"y"}
    assert scopes[3].initializer("x") is None


def test_resolve_looks_outward_and_prefers_inputs():
    model = nested_model()
    main, _, then_scope, function = iter_scopes(model)
    outer = resolve(then_scope, "w")
    assert outer.kind == "initializer" and outer.scope is main and outer.tensor.name == "w"
    assert resolve(then_scope, "local").scope is then_scope
    assert resolve(main, "out").kind == "node" and resolve(main, "out").node.op_type == "If"
    assert resolve(main, "cond").kind == "input" and resolve(main, "cond").tensor is None
    assert resolve(function, "x").kind == "input" and resolve(function, "w") is None
    assert resolve(main, "nowhere") is None
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]))
    shadowed = resolve(next(iter_scopes(model)), "w")
    assert shadowed.kind == "input" and shadowed.tensor.name == "w"  # an input with a default


def test_use_counts_per_namespace_count_outputs_as_reads():
    counts = use_counts(nested_model())
    assert counts["main"]["w"] == 3  # two subgraph reads and the graph output
    assert counts["main"]["cond"] == 1 and counts["main"]["t"] == 1
    assert counts["function my.Block"] == {"x": 1, "y": 1}


def test_names_labels_and_unique_names():
    names = all_names(nested_model())
    assert {"w", "local", "cond", "out", "z", "t", "e", "branch", "inner_add", "x", "y"} <= names
    assert "" not in names
    assert node_label(helper.make_node("Relu", ["a"], ["b"]), 4) == "<Relu #4>"
    assert node_label(helper.make_node("Relu", ["a"], ["b"], name="r"), 4) == "r"
    taken = set(names)
    assert unique_name("w", taken) == "w_2" and unique_name("w", taken) == "w_3" and "w_3" in taken
