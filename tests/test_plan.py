"""plan: policies to exact choices (choose), choices to an immutable plan (plan_exact)."""

import dataclasses

import pytest

from helpers import depthwise_model
from onnx_diagwise.detect import detect
from onnx_diagwise.errors import DiagwiseError
from onnx_diagwise.plan import (Choice, Selection, choose, group_size_for, largest_divisor_at_most,
                                parse_group_size, plan, plan_exact)


def two_layers():
    """Two depthwise convs: 'a' with C=12 (3x3), 'b' with C=8 (5x5)."""
    from onnx import helper

    first, second = depthwise_model(channels=12, name="a"), depthwise_model(channels=8, kernel=(5, 5), name="b")
    graph = helper.make_graph(
        list(first.graph.node) + list(second.graph.node), "two",
        list(first.graph.input) + list(second.graph.input), list(first.graph.output) + list(second.graph.output),
        list(first.graph.initializer) + list(second.graph.initializer))
    for node, prefix in ((graph.node[0], "a_"), (graph.node[1], "b_")):
        node.input[1] = prefix + node.input[1]
        if len(node.input) > 2:
            node.input[2] = prefix + node.input[2]
        node.input[0], node.output[0] = prefix + node.input[0], prefix + node.output[0]
    for tensor, prefix in zip(graph.initializer, ["a_"] * len(first.graph.initializer) + ["b_"] * 9):
        tensor.name = prefix + tensor.name
    for value, prefix in zip(list(graph.input) + list(graph.output), ["a_", "b_", "a_", "b_"]):
        value.name = prefix + value.name
    return helper.make_model(graph, opset_imports=first.opset_import)


@pytest.mark.parametrize("value, parsed", [(4, 4), ("4", 4), (" Paper ", "paper"), ("full", "full"),
                                           ("auto", "auto")])
def test_parse_group_size(value, parsed):
    assert parse_group_size(value) == parsed


@pytest.mark.parametrize("value", [0, -2, True, "0", "x", "4.5", ""])
def test_parse_group_size_refuses(value):
    with pytest.raises(DiagwiseError, match="^group_size must be a positive integer, 'paper', 'full' or 'auto'"):
        parse_group_size(value)


def test_group_size_for_each_policy():
    assert largest_divisor_at_most(12, 8) == 6 and largest_divisor_at_most(7, 4) == 1
    assert group_size_for(12, 8) == (6, "N=8: largest divisor of C=12 <= 8")
    assert group_size_for(96, "paper") == (32, "paper (N=32): largest divisor of C=96 <= 32")
    assert group_size_for(12, "full") == (12, "full: one dense conv (G = C)")
    assert group_size_for(12, 100) == (12, "N=100: largest divisor of C=12 <= 100")


def test_selection_checks_its_parameters():
    with pytest.raises(DiagwiseError, match="^include '\\(' is not a valid regular expression"):
        Selection(include="(")
    with pytest.raises(DiagwiseError, match="^exclude '\\[' is not a valid regular expression"):
        Selection(exclude="[")
    with pytest.raises(DiagwiseError, match="^min_channels must be >= 0; got -1$"):
        Selection(min_channels=-1)
    assert Selection(min_channels=0).min_channels == 0


def test_choose_applies_selection_then_pins_then_the_policy():
    found = detect(two_layers())
    assert [c.name for c in found.candidates] == ["a", "b"]
    assert choose(found, 4) == {"a": Choice(4, "N=4: largest divisor of C=12 <= 4"),
                                "b": Choice(4, "N=4: largest divisor of C=8 <= 4")}
    assert choose(found, 4, Selection(include="^a$")) == {
        "a": Choice(4, "N=4: largest divisor of C=12 <= 4"), "b": "name does not match --include '^a$'"}
    assert choose(found, 4, Selection(exclude="a")) == {
        "a": "name matches --exclude 'a'", "b": Choice(4, "N=4: largest divisor of C=8 <= 4")}
    assert choose(found, 4, Selection(min_channels=9))["b"] == "C=8 is below --min-channels 9"
    assert choose(found, 4, node_group_sizes={"b": 8})["b"] == Choice(8, "pinned by --node-group-size")
    assert choose(found, 1)["a"] == "G=1 (N=1: largest divisor of C=12 <= 1): left depthwise"
    assert choose(found, 4, node_group_sizes={"a": 1})["a"] == "G=1 (pinned by --node-group-size): left depthwise"
    measured = {"a": Choice(3, "auto: 1.20x"), "b": "kept original: every G slower"}
    assert choose(found, measured) == measured
    assert choose(found, {"a": Choice(3, "auto")})["b"] == "kept original: not measured"


def test_choose_refuses_bad_pins_and_auto():
    found = detect(two_layers())
    with pytest.raises(DiagwiseError, match="^node_group_sizes names 'c', which is not a rewritable depthwise Conv$"):
        choose(found, 4, node_group_sizes={"c": 2})
    with pytest.raises(DiagwiseError, match="^node_group_sizes a=5: 5 does not divide C=12$"):
        choose(found, 4, node_group_sizes={"a": 5})
    with pytest.raises(DiagwiseError, match="^node_group_sizes b=0: 0 does not divide C=8$"):
        choose(found, 4, node_group_sizes={"b": 0})
    with pytest.raises(DiagwiseError, match="needs measurement"):
        choose(found, "auto")


def test_plan_exact_is_immutable_and_complete():
    model = two_layers()
    found = detect(model)
    planned = plan_exact(found, {"a": Choice(4, "test")}, policy="exact")
    assert planned.policy == "exact" and planned.group_sizes == {"a": 4}
    a, b = planned.nodes
    assert (a.decision.action, a.decision.reason, a.decision.groups_after) == ("rewrite", "G=4, group=3 (test)", 3)
    assert a.conv is found.candidates[0]
    assert a.decision.weight_bytes_before == 12 * 9 * 4 and a.decision.weight_bytes_after == 4 * 12 * 9 * 4
    assert (b.decision.action, b.decision.reason, b.conv) == ("skipped", "not chosen", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.decision.action = "rewritten"
    with pytest.raises(dataclasses.FrozenInstanceError):
        planned.nodes = ()


def test_plan_counts_flops_from_shapes():
    found = detect(depthwise_model(channels=8, kernel=(3, 3), spatial=(9, 9)))
    (node,) = plan(found, 4, shapes={"y": [1, 8, 9, 9]}).nodes
    assert node.decision.flops_before == 2 * 8 * 9 * 81 and node.decision.flops_after == 4 * 2 * 8 * 9 * 81
    (unknown,) = plan(found, 4).nodes
    assert unknown.decision.flops_before is None and unknown.decision.flops_after is None
