"""plan: policies to exact choices (choose), choices to an immutable plan (plan_exact)."""

import dataclasses

import numpy as np
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


# ---------------------------------------------------------------- parsing: every accepted spelling, every refusal


@pytest.mark.parametrize("value, choice", [(1, Choice(group_size=1)), (6, Choice(group_size=6)),
                                           (" 12 ", Choice(group_size=12)), (" Toeplitz ", Choice("toeplitz")),
                                           ("CONV2D", Choice("conv2d")), ("polyphase:2", Choice("polyphase", block=2)),
                                           ("Polyphase:3:2D", Choice("polyphase", block=3, as_2d=True)),
                                           ("polyphase:16:fold", Choice("polyphase", block=16, fold=True)),
                                           ("polyphase:8:2d:fold", Choice("polyphase", block=8, as_2d=True, fold=True)),
                                           ("polyphase:8:fold:2d", Choice("polyphase", block=8, as_2d=True, fold=True)),
                                           (Choice("conv2d", how="kept"), Choice("conv2d", how="kept"))])
def test_parse_choice_accepts(value, choice):
    assert parse_choice(value) == choice


def test_a_lowering_s_parameters_make_its_choice():
    from onnx_diagwise.plan import lowered_choice

    assert lowered_choice("toeplitz", {}) == Choice("toeplitz")
    assert lowered_choice("polyphase", {"block": 16, "as_2d": True}) == Choice("polyphase", block=16, as_2d=True)
    folded = lowered_choice("polyphase", {"block": 8, "as_2d": False, "fold": True})
    assert folded == Choice("polyphase", block=8, fold=True)
    assert (folded.spec, folded.label, folded.params) == (
        "polyphase:8:fold", "polyphase B=8 folded", {"block": 8, "as_2d": False, "fold": True})
    assert Choice("polyphase", block=8).params == {"block": 8, "as_2d": False}  # fold written only when set


@pytest.mark.parametrize("value", [0, -1, True, False, "0", "", "polyphase:8:2d:x", "polyphase::2d", "polyphase:x",
                                   "conv2d:2d", "2d", "toeplitz:polyphase", "polyphase:8:2d:2d", "polyphase:8:fold:fold",
                                   "polyphase:8:2d:fold:x", "toeplitz:fold"])
def test_parse_choice_refuses_naming_the_parameter(value):
    with pytest.raises(DiagwiseError) as refused:
        parse_choice(value, "pins")
    assert str(refused.value) == (f"pins takes a positive integer G, 'toeplitz', 'polyphase[:B][:2d][:fold]' (B >= 2) "
                                  f"or 'conv2d'; got '{value}'")
    assert refused.value.parameters == ("pins",)


def test_parse_policy_passes_policies_through_and_accepts_one():
    def by_name(conv):
        return Leave(Reason.POLICY, "kept")

    assert parse_policy(by_name) is by_name
    assert parse_policy(FULL) is FULL
    auto = parse_policy(" AUTO ")
    assert parse_policy(auto) is auto and str(auto) == "auto" and repr(auto) == "AUTO"
    assert parse_policy(1) == GroupSize(1) and parse_policy("1") == GroupSize(1)
    assert str(parse_policy(" Full ")) == "full" and str(PAPER) == "paper" and str(GroupSize(6)) == "6"


@pytest.mark.parametrize("value", [0, -3, 4.5, None, True, "x", "4.5", "toeplitz:4", "polyphase:1", "fft"])
def test_parse_policy_refuses_naming_the_parameter(value):
    with pytest.raises(DiagwiseError) as refused:
        parse_policy(value, "gs")
    shown = value if isinstance(value, int) and not isinstance(value, bool) else repr(value)
    assert str(refused.value) == (f"gs must be a positive integer, 'paper', 'full', 'auto', 'toeplitz', "
                                  f"'polyphase[:B][:2d][:fold]' or 'conv2d'; got {shown}")
    assert refused.value.parameters == ("gs",)


def test_parse_group_size_names_the_parameter():
    with pytest.raises(DiagwiseError) as lowering:
        parse_group_size("toeplitz", "torch_group_size")
    assert str(lowering.value) == ("torch_group_size must be a positive integer, 'paper', 'full' or 'auto'; "
                                   "got 'toeplitz'")
    assert lowering.value.parameters == ("torch_group_size",)
    with pytest.raises(DiagwiseError) as zero:
        parse_group_size(0, "torch_group_size")
    assert str(zero.value).startswith("torch_group_size must be ")
    assert zero.value.parameters == ("torch_group_size",)


@pytest.mark.parametrize("limit", [0, -1, True, 2.0, "4", None])
def test_group_size_policy_refuses_a_bad_limit(limit):
    with pytest.raises(DiagwiseError) as refused:
        GroupSize(limit)
    assert str(refused.value) == (f"group_size must be a positive integer, 'paper', 'full', 'auto', 'toeplitz', "
                                  f"'polyphase[:B][:2d][:fold]' or 'conv2d'; got {limit!r}")
    assert refused.value.parameters == ("group_size",)
    assert GroupSize(1).limit == 1


@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint8])
def test_numpy_integers_are_taken_as_python_ints(integer):
    # A G computed with numpy (a divisor from np.arange, a value from a config array) is as good as an int.
    policy = GroupSize(integer(4))
    assert policy == GroupSize(4) and type(policy.limit) is int and str(policy) == "4"
    assert parse_policy(integer(4)) == GroupSize(4) and type(parse_policy(integer(4)).limit) is int
    assert parse_choice(integer(16)) == Choice(group_size=16) and type(parse_choice(integer(16)).group_size) is int
    assert parse_group_size(integer(8)) == 8
    with pytest.raises(DiagwiseError, match="got 0$"):
        parse_policy(integer(0))
    with pytest.raises(DiagwiseError, match="got np.True_$"):
        parse_policy(np.bool_(True))
    found = detect(depthwise_model(channels=12))
    assert choose(found, parse_policy(integer(4))) == choose(found, GroupSize(4))


@pytest.mark.parametrize("channels, limit, best", [(1, 1, 1), (1, 8, 1), (2, 2, 2), (4, 2, 2), (4, 4, 4), (9, 3, 3),
                                                   (9, 8, 3), (12, 5, 4), (16, 16, 16), (16, 15, 8), (25, 24, 5),
                                                   (36, 6, 6), (36, 35, 18), (49, 48, 7), (30, 14, 10), (13, 12, 1)])
def test_largest_divisor_at_most(channels, limit, best):
    assert largest_divisor_at_most(channels, limit) == best


def test_built_in_policies_on_one_layer():
    found = detect(two_layers())  # 'a' C=12, 'b' C=8
    a, b = found.candidates
    assert GroupSize(5)(a) == Choice(group_size=4, how="N=5: largest divisor of C=12 <= 5")
    assert PAPER(a) == Choice(group_size=12, how="paper (N=32): largest divisor of C=12 <= 32")
    assert GroupSize(32)(a) == Choice(group_size=12, how="N=32: largest divisor of C=12 <= 32")
    assert FULL(b) == Choice(group_size=8, how="full: one dense conv (G = C)")
    assert GroupSize(1)(b) == Leave(Reason.STAYS_DEPTHWISE, "G=1 (N=1: largest divisor of C=8 <= 1): left depthwise")
    assert Measured({"a": Choice(group_size=1, how="auto")})(a) == Leave(Reason.STAYS_DEPTHWISE,
                                                                          "G=1 (auto): left depthwise")
    assert Measured({"a": Choice("toeplitz", how="auto")})(a) == Choice("toeplitz", how="auto")
    assert Measured({}, missing=Leave(Reason.POLICY, "not in the plan file"))(b) == Leave(Reason.POLICY,
                                                                                          "not in the plan file")
    assert group_size_for(12, "paper") == (12, "paper (N=32): largest divisor of C=12 <= 32")
    assert group_size_for(64, "full") == (64, "full: one dense conv (G = C)")
    assert group_size_for(64, "16") == (16, "N=16: largest divisor of C=64 <= 16")


# ---------------------------------------------------------------- selections, pins and a policy's choices


def one_d(channels=4, name="c1"):
    """A 1-D depthwise conv (C=4, kernel 3, length 16) with shapes known: every lowering applies to it."""
    from onnx_diagwise.shapes import infer_value_types

    model = depthwise_model(channels=channels, kernel=(3,), spatial=(16,), name=name)
    types = infer_value_types(model)
    return detect(model, types), {name: dims for name, (_, dims) in types.items()}


def test_selection_errors_name_their_parameter():
    for kwargs, parameter in (({"include": "("}, "include"), ({"exclude": "["}, "exclude"),
                              ({"min_channels": -1}, "min_channels")):
        with pytest.raises(DiagwiseError) as refused:
            Selection(**kwargs)
        assert refused.value.parameters == (parameter,)
    assert Selection(include="a", exclude="b", min_channels=0).min_channels == 0
    assert Selection(node_group_sizes={"a": "8", "b": "polyphase:4"}).node_group_sizes == {
        "a": Choice(group_size=8), "b": Choice("polyphase", block=4)}
    assert Selection(node_group_sizes=None).node_group_sizes == {}


def test_selection_keeps_layers_at_min_channels_and_matches_names_anywhere():
    found = detect(two_layers())  # 'a' C=12, 'b' C=8
    four = GroupSize(4)
    assert choose(found, four, Selection(min_channels=8))["b"] == Choice(group_size=4, how="N=4: largest divisor of C=8 <= 4")
    assert choose(found, four, Selection(include="b|x"))["b"].code == Reason.POLICY
    assert choose(found, four, Selection(exclude="^b"))["a"].code == Reason.POLICY


def test_dynamic_weights_are_left_when_asked():
    from helpers import dynamic_weight_model

    from onnx_diagwise.shapes import infer_value_types

    model = dynamic_weight_model()
    found = detect(model, infer_value_types(model))
    (conv,) = found.candidates
    assert Selection().reason_to_leave(conv) is None
    left = Selection(dynamic=False).reason_to_leave(conv)
    assert left == Leave(Reason.DYNAMIC_LEFT, "weight is a graph input; dynamic weights left alone (dynamic=False)",
                         ("dynamic=False",))
    assert Selection(dynamic=False, why_not_dynamic="not now").reason_to_leave(conv).text.endswith("; not now")
    assert Selection(dynamic=False).reason_to_leave(detect(two_layers()).candidates[0]) is None


def test_pins_of_lowerings_and_their_errors():
    found, shapes = one_d()
    assert choose(found, GroupSize(2), Selection(node_group_sizes={"c1": "polyphase:4:2d"})) == {
        "c1": Choice("polyphase", block=4, as_2d=True, how="pinned by node_group_sizes", code=Reason.PINNED)}
    assert choose(found, GroupSize(2), Selection(node_group_sizes={"c1": "conv2d"})) == {
        "c1": Choice("conv2d", how="pinned by node_group_sizes", code=Reason.PINNED)}
    assert choose(found, GroupSize(2), Selection(node_group_sizes={"c1": 4})) == {
        "c1": Choice(group_size=4, how="pinned by node_group_sizes", code=Reason.PINNED)}
    with pytest.raises(DiagwiseError) as indivisible:
        choose(found, GroupSize(2), Selection(node_group_sizes={"c1": 3}))
    assert str(indivisible.value) == "node_group_sizes c1=3: 3 does not divide C=4"
    assert indivisible.value.parameters == ("node_group_sizes",)
    no_shapes = detect(depthwise_model(channels=4, kernel=(3,), spatial=(16,), name="c1"))
    with pytest.raises(DiagwiseError) as refused:
        choose(no_shapes, GroupSize(2), Selection(node_group_sizes={"c1": "toeplitz"}))
    assert str(refused.value).startswith("node_group_sizes c1=toeplitz: toeplitz does not apply: ")
    assert refused.value.parameters == ("node_group_sizes",)
    with pytest.raises(DiagwiseError) as unknown:
        choose(found, GroupSize(2), Selection(node_group_sizes={"c2": 2}))
    assert unknown.value.parameters == ("node_group_sizes",)


def test_auto_cannot_be_chosen_without_measuring():
    with pytest.raises(DiagwiseError) as auto:
        choose(detect(two_layers()), parse_policy("auto"))
    assert str(auto.value) == "group_size 'auto' needs measurement: use rewrite() or tune()"
    assert auto.value.parameters == ("group_size",)


def test_a_policy_s_lowerings_are_kept_refused_or_errors():
    found, shapes = one_d()
    assert choose(found, lambda conv: Choice("polyphase", block=4, how="mine")) == {
        "c1": Choice("polyphase", block=4, how="mine")}
    assert choose(found, Lowered(Choice("polyphase", block=4, as_2d=True))) == {
        "c1": Choice("polyphase", block=4, as_2d=True, how="group_size 'polyphase:4:2d'")}
    no_shapes = detect(depthwise_model(channels=4, kernel=(3,), spatial=(16,), name="c1"))
    refused = choose(no_shapes, lambda conv: Choice("toeplitz"))["c1"]
    assert refused.code == Reason.LOWERING_REFUSED and refused.text.startswith("toeplitz does not apply: ")
    assert refused == Lowered(Choice("toeplitz"))(no_shapes.candidates[0])
    with pytest.raises(DiagwiseError) as pinned_elsewhere:
        choose(no_shapes, lambda conv: Choice("toeplitz", code=Reason.MEASURED))
    assert str(pinned_elsewhere.value).startswith("node 'c1' cannot take toeplitz: ")
    assert pinned_elsewhere.value.parameters == ("group_size",)
    for bad, start in ((lambda conv: 4, "the policy returned 4"), (lambda conv: Choice(group_size=0), "the policy chose G=0"),
                       (lambda conv: Choice(group_size=3), "the policy chose G=3"),
                       (lambda conv: Choice("fft"), "the policy chose 'fft'")):
        with pytest.raises(DiagwiseError) as error:
            choose(found, bad)
        assert str(error.value).startswith(start) and error.value.parameters == ("group_size",)
    with pytest.raises(DiagwiseError) as no_lowering:
        choose(found, lambda conv: Choice("fft"))
    assert str(no_lowering.value) == "the policy chose 'fft' for node 'c1', which is no lowering (toeplitz, polyphase, conv2d)"


# ---------------------------------------------------------------- the plan: every field of every decision


def decision(**fields):
    from onnx_diagwise.report import NodeDecision

    return NodeDecision(**fields)


ONE_D = dict(name="c1", graph="main", form="float", channels=4, multiplier=1, kernel=[3], strides=[1], dilations=[1],
             pads=None, auto_pad="NOTSET", dtype="float32", weight_source="initializer", weight_bytes_before=48,
             flops_before=2 * 4 * 3 * 14)


def test_plan_of_a_lowering_records_its_parameters_and_costs():
    found, shapes = one_d()
    (node,) = plan(found, "polyphase:4:2d", shapes=shapes).nodes
    assert node.choice == Choice("polyphase", block=4, as_2d=True, how="group_size 'polyphase:4:2d'")
    assert node.decision == decision(
        action=Action.REWRITE, code=Reason.POLICY, lowering="polyphase", lowering_params={"block": 4, "as_2d": True},
        reason="polyphase B=4 2-D, 2.29x the depthwise arithmetic (group_size 'polyphase:4:2d')",
        weight_bytes_after=448, flops_after=768, **ONE_D)
    (conv2d,) = plan(found, "conv2d", shapes=shapes).nodes
    assert conv2d.decision == decision(
        action=Action.REWRITE, code=Reason.POLICY, lowering="conv2d", lowering_params=None,
        reason="conv2d, 1.00x the depthwise arithmetic (group_size 'conv2d')", weight_bytes_after=64,
        flops_after=336, **ONE_D)
    (unknown,) = plan(found, "conv2d").nodes  # no shapes: no FLOPs
    assert (unknown.decision.flops_before, unknown.decision.flops_after) == (None, None)
    assert unknown.decision.weight_bytes_after == 64


def test_plan_of_a_block_diagonal_rewrite_and_of_a_left_layer():
    found, shapes = one_d()
    (node,) = plan(found, 2, shapes=shapes).nodes
    assert node.decision == decision(
        action=Action.REWRITE, code=Reason.POLICY, reason="G=2, group=2 (N=2: largest divisor of C=4 <= 2)",
        group_size=2, groups_after=2, weight_bytes_after=96, flops_after=2 * 336, **ONE_D)
    assert plan(found, 2, shapes=shapes).policy == "2"
    (left,) = plan(found, 2, Selection(exclude="c"), shapes).nodes
    assert left.choice is None and left.decision == decision(
        action=Action.SKIPPED, code=Reason.EXCLUDED, reason="name matches exclude 'c'", parameters=("exclude",), **ONE_D)
    (pinned,) = plan(found, 2, Selection(node_group_sizes={"c1": 4}), shapes).nodes
    assert pinned.decision.code == Reason.PINNED and pinned.decision.group_size == 4
    (unchosen,) = plan_exact(found, {}, shapes).nodes
    assert unchosen.decision == decision(action=Action.SKIPPED, code=Reason.NOT_MEASURED, reason="not chosen", **ONE_D)
    assert plan_exact(found, {}).policy == "exact"


def test_plan_counts_a_conv_transpose_s_flops_on_its_input():
    from helpers import conv_transpose_model

    from onnx_diagwise.shapes import infer_value_types

    model = conv_transpose_model()  # C=8, M=2, kernel 4x4, input 7x7
    shapes = {name: dims for name, (_, dims) in infer_value_types(model).items()}
    (node,) = plan(detect(model), 2, shapes=shapes).nodes
    assert node.decision.flops_before == 2 * 8 * 2 * 16 * 49 and node.decision.flops_after == 2 * 2 * 8 * 2 * 16 * 49
    assert (node.decision.form, node.decision.strides, node.decision.pads) == ("ConvTranspose", [2, 2], [1, 1, 1, 1])


@pytest.mark.parametrize("dims", [None, [1, 4], [1, 4, 14, 1], [1, 4, "L"], [1, 4, 0], [1, 4, None]])
def test_plan_counts_no_flops_without_a_usable_output_shape(dims):
    found, _ = one_d()
    (node,) = plan(found, 2, shapes={} if dims is None else {"y": dims}).nodes
    assert (node.decision.flops_before, node.decision.flops_after) == (None, None)


def test_plan_lists_layers_rewritten_before_with_what_they_are():
    from onnx_diagwise.rewriter import apply_plan
    from onnx_diagwise.shapes import infer_value_types

    grouped = depthwise_model(channels=8)
    apply_plan(grouped, plan(detect(grouped), 4))
    (node,) = plan(detect(grouped), 4).nodes
    assert node.choice is None and node.decision == decision(
        name="dw", graph="main", action=Action.SKIPPED, code=Reason.BLOCK_DIAGONAL,
        reason="already block-diagonal (G=4, group=2); nothing to do", form="float", channels=8, multiplier=1,
        kernel=[3, 3], dtype="float32", weight_source="initializer", group_size=4, block_diagonal=True)
    lowered = depthwise_model(channels=8)
    apply_plan(lowered, plan(detect(lowered, infer_value_types(lowered)), "polyphase:4"))
    (node,) = plan(detect(lowered), 4).nodes
    assert node.decision == decision(
        name="dw", graph="main", action=Action.SKIPPED, code=Reason.LOWERED,
        reason="lowered already (polyphase B=4); nothing to do", form="float", channels=8, multiplier=1,
        kernel=[3, 3], strides=[1, 4], dilations=[1, 1], dtype="float32", weight_source="initializer",
        lowering="polyphase", lowering_params={"block": 4, "as_2d": False})


def test_defaults_paper_policy_and_parameter_names():
    found = detect(two_layers())
    planned = plan(found)
    assert planned.policy == "paper" and planned.group_sizes == {"a": 12, "b": 8}
    with pytest.raises(DiagwiseError) as policy:
        parse_policy(0)
    assert str(policy.value).startswith("group_size must be ") and policy.value.parameters == ("group_size",)
    with pytest.raises(DiagwiseError) as choice:
        parse_choice(0)
    assert str(choice.value).startswith("node_group_sizes takes ") and choice.value.parameters == ("node_group_sizes",)
    with pytest.raises(DiagwiseError) as group_size:
        parse_group_size("conv2d")
    assert str(group_size.value).startswith("group_size must be ") and group_size.value.parameters == ("group_size",)


def test_no_lowering_for_a_weight_two_convs_read():
    from onnx import TensorProto, helper

    from onnx_diagwise.shapes import infer_value_types

    model = depthwise_model(channels=4, kernel=(3,), spatial=(16,), name="c1")
    model.graph.node.append(helper.make_node("Conv", list(model.graph.node[0].input), ["y2"], name="c2", group=4,
                                             kernel_shape=[3]))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    found = detect(model, infer_value_types(model))
    shared = Leave(Reason.LOWERING_REFUSED, "toeplitz does not apply: the weight 'w' is read 2 times; lowerings "
                   "replace it in place, so it must be read by this Conv only")
    assert choose(found, Lowered(Choice("toeplitz"))) == {"c1": shared, "c2": shared}
    assert choose(found, lambda conv: Choice("toeplitz")) == {"c1": shared, "c2": shared}
    with pytest.raises(DiagwiseError, match="^node_group_sizes c1=toeplitz: toeplitz does not apply: the weight 'w'"):
        choose(found, GroupSize(2), Selection(node_group_sizes={"c1": "toeplitz"}))


def test_plan_of_a_dynamic_weight_has_no_weight_bytes():
    from helpers import dynamic_weight_model

    from onnx_diagwise.shapes import infer_value_types

    model = dynamic_weight_model()
    types = infer_value_types(model)
    (node,) = plan(detect(model, types), 2, shapes={name: dims for name, (_, dims) in types.items()}).nodes
    assert (node.decision.action, node.decision.weight_source, node.decision.group_size) == ("rewrite", "graph input", 2)
    assert (node.decision.weight_bytes_before, node.decision.weight_bytes_after) == (None, None)
    assert node.decision.flops_after == 2 * node.decision.flops_before


def test_plan_keeps_every_layer_after_one_it_leaves_and_counts_in_integers():
    import json

    found = detect(two_layers())
    first_left = plan_exact(found, {"b": Choice(group_size=4, how="test")})
    assert [(p.decision.name, p.decision.action) for p in first_left.nodes] == [("a", "skipped"), ("b", "rewrite")]
    report = json.loads(json.dumps(first_left.nodes[1].decision.to_dict()))
    assert report["groups_after"] == 2 and isinstance(report["groups_after"], int)


def test_plan_counts_flops_of_a_length_one_output():
    found, _ = one_d()
    (node,) = plan(found, 2, shapes={"y": [1, 4, 1]}).nodes
    assert (node.decision.flops_before, node.decision.flops_after) == (2 * 4 * 3, 2 * 2 * 4 * 3)


def test_a_computed_weight_is_named_by_what_computes_it():
    """'computed by X' takes no article: 'weight is computed by Reshape', in the selection's reason too."""
    import numpy as np
    from helpers import dynamic_weight_model
    from onnx import helper, numpy_helper

    from onnx_diagwise.shapes import infer_value_types

    model = dynamic_weight_model()  # its weight 'w' is its last graph input: compute 'w' from it instead
    shape = [d.dim_value for d in model.graph.input[-1].type.tensor_type.shape.dim]
    model.graph.input[-1].name = "w_in"
    model.graph.node.insert(0, helper.make_node("Reshape", ["w_in", "w_shape"], ["w"], name="reshape"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "w_shape"))
    [conv] = detect(model, infer_value_types(model)).candidates
    assert conv.dynamic.what_it_is == "computed by Reshape"
    assert Selection(dynamic=False).reason_to_leave(conv).text == ("weight is computed by Reshape; dynamic weights "
                                                                   "left alone (dynamic=False)")
