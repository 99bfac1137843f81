"""plan: policies to exact choices (choose), choices to an immutable plan (plan_exact)."""

import dataclasses

import pytest

from helpers import depthwise_model
from onnx_diagwise.detect import detect
from onnx_diagwise.errors import DiagwiseError
from onnx_diagwise.plan import (FULL, PAPER, Choice, GroupSize, Lowered, Measured, Selection, choose, group_size_for,
                                largest_divisor_at_most, parse_choice, parse_group_size, parse_policy, plan,
                                plan_exact)
from onnx_diagwise.reasons import Action, Leave, Reason


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


@pytest.mark.parametrize("value", [0, -2, True, "0", "x", "4.5", "", "polyphase:1", "toeplitz:4"])
def test_parse_group_size_refuses(value):
    with pytest.raises(DiagwiseError, match="^group_size must be a positive integer, 'paper', 'full'"):
        parse_group_size(value)


@pytest.mark.parametrize("value, policy", [(4, GroupSize(4)), ("paper", PAPER), ("FULL", FULL),
                                           ("toeplitz", Lowered(Choice("toeplitz"))),
                                           ("polyphase", Lowered(Choice("polyphase", block=8))),
                                           ("polyphase:16:2d", Lowered(Choice("polyphase", block=16, as_2d=True))),
                                           ("conv2d", Lowered(Choice("conv2d")))])
def test_parse_policy(value, policy):
    assert parse_policy(value) == policy
    assert str(parse_policy(value)) in (str(value).lower(), "polyphase:8")


def test_parse_choice_round_trips_its_spec():
    for spec in ("1", "8", "toeplitz", "polyphase:16", "polyphase:4:2d", "conv2d"):
        assert parse_choice(spec).spec == spec
    for bad in ("0", "polyphase:1", "polyphase:8:3d", "toeplitz:2", "g8"):
        with pytest.raises(DiagwiseError, match="node_group_sizes takes a positive integer G"):
            parse_choice(bad)


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
    four = GroupSize(4)
    assert [c.name for c in found.candidates] == ["a", "b"]
    assert choose(found, four) == {"a": Choice(group_size=4, how="N=4: largest divisor of C=12 <= 4"),
                                   "b": Choice(group_size=4, how="N=4: largest divisor of C=8 <= 4")}
    assert choose(found, four, Selection(include="^a$")) == {
        "a": Choice(group_size=4, how="N=4: largest divisor of C=12 <= 4"),
        "b": Leave(Reason.NOT_INCLUDED, "name does not match include '^a$'", ("include",))}
    assert choose(found, four, Selection(exclude="a")) == {
        "a": Leave(Reason.EXCLUDED, "name matches exclude 'a'", ("exclude",)), "b": Choice(group_size=4, how="N=4: largest divisor of C=8 <= 4")}
    assert choose(found, four, Selection(min_channels=9))["b"] == Leave(Reason.FEW_CHANNELS,
                                                                        "C=8 is below min_channels 9",
                                                                        ("min_channels",))
    assert choose(found, four, Selection(node_group_sizes={"b": 8}))["b"] == Choice(
        group_size=8, how="pinned by node_group_sizes", code=Reason.PINNED)
    assert choose(found, GroupSize(1))["a"] == Leave(Reason.STAYS_DEPTHWISE,
                                                     "G=1 (N=1: largest divisor of C=12 <= 1): left depthwise")
    assert choose(found, four, Selection(node_group_sizes={"a": 1}))["a"] == Leave(
        Reason.STAYS_DEPTHWISE, "G=1 (pinned by node_group_sizes): left depthwise")
    measured = {"a": Choice(group_size=3, how="auto: 1.20x"), "b": Leave(Reason.KEPT_BY_MEASUREMENT, "every G slower")}
    assert choose(found, Measured(measured)) == measured
    assert choose(found, Measured({"a": Choice(group_size=3)}))["b"] == Leave(Reason.NOT_MEASURED, "kept original: not measured")
    # any callable from a layer to a choice is a policy: here, by kernel size
    by_kernel = choose(found, lambda conv: Choice(group_size=2, how="small kernel") if conv.kernel == [3, 3]
                       else Leave(Reason.POLICY, "large kernel kept"))
    assert by_kernel == {"a": Choice(group_size=2, how="small kernel"), "b": Leave(Reason.POLICY, "large kernel kept")}


def test_lowered_policy_and_pins_say_why_a_layer_cannot_take_them():
    found = detect(two_layers())  # no input shapes given: no lowering applies
    decision = choose(found, Lowered(Choice("toeplitz")))["a"]
    assert decision.code == Reason.LOWERING_REFUSED and "input shape is unknown" in decision.text
    with pytest.raises(DiagwiseError, match="^node_group_sizes a=conv2d: conv2d does not apply"):
        choose(found, GroupSize(4), Selection(node_group_sizes={"a": "conv2d"}))


def test_choose_refuses_bad_pins_and_auto():
    found = detect(two_layers())
    with pytest.raises(DiagwiseError, match="^node_group_sizes names 'c', which is not a rewritable depthwise Conv$"):
        choose(found, GroupSize(4), Selection(node_group_sizes={"c": 2}))
    with pytest.raises(DiagwiseError, match="^node_group_sizes a=5: 5 does not divide C=12$"):
        choose(found, GroupSize(4), Selection(node_group_sizes={"a": 5}))
    with pytest.raises(DiagwiseError, match="^node_group_sizes takes a positive integer G"):
        Selection(node_group_sizes={"b": 0})
    with pytest.raises(DiagwiseError, match="needs measurement"):
        choose(found, parse_policy("auto"))


def test_plan_exact_is_immutable_and_complete():
    model = two_layers()
    found = detect(model)
    planned = plan_exact(found, {"a": Choice(group_size=4, how="test")}, policy="exact")
    assert planned.policy == "exact" and planned.group_sizes == {"a": 4}
    a, b = planned.nodes
    assert (a.decision.action, a.decision.reason, a.decision.groups_after) == ("rewrite", "G=4, group=3 (test)", 3)
    assert a.choice == Choice(group_size=4, how="test")
    assert a.decision.weight_bytes_before == 12 * 9 * 4 and a.decision.weight_bytes_after == 4 * 12 * 9 * 4
    assert (b.decision.action, b.decision.reason, b.choice) == ("skipped", "not chosen", None)
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


def test_a_policy_s_choices_are_checked_against_each_layer():
    found = detect(two_layers())  # 'a' C=12, 'b' C=8, no input shapes
    with pytest.raises(DiagwiseError, match="^the policy chose G=5 for node 'a', which does not divide C=12$"):
        choose(found, lambda conv: Choice(group_size=5))
    with pytest.raises(DiagwiseError, match="^the policy returned 4 for node 'a'; a policy returns a Choice or a Leave"):
        choose(found, lambda conv: 4)
    with pytest.raises(DiagwiseError, match="^the policy chose 'fft' for node 'a', which is no lowering"):
        choose(found, lambda conv: Choice("fft"))
    refused = choose(found, lambda conv: Choice("toeplitz"))["a"]
    assert refused.code == Reason.LOWERING_REFUSED and "input shape is unknown" in refused.text
    assert choose(found, lambda conv: Choice(group_size=1))["b"].code == Reason.STAYS_DEPTHWISE


def test_one_plan_applies_to_two_copies_and_stays_as_it_was():
    import copy

    import onnx

    from onnx_diagwise.rewriter import apply_plan

    model = two_layers()
    planned = plan(detect(model), GroupSize(4))
    frozen = copy.deepcopy(planned)
    first, second = onnx.ModelProto(), onnx.ModelProto()
    first.CopyFrom(model)
    second.CopyFrom(model)
    outcome_one, outcome_two = apply_plan(first, planned), apply_plan(second, planned)
    assert first.SerializeToString() == second.SerializeToString() != model.SerializeToString()
    assert outcome_one == outcome_two and {d.action for d in outcome_one} == {"rewritten"}
    assert planned == frozen  # applying changed nothing the plan holds
    with pytest.raises(DiagwiseError, match="the plan rewrites 'a'"):
        apply_plan(depthwise_model(channels=8, name="other"), planned)
