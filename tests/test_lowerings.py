"""Lowerings of a depthwise Conv: exact against the layer under onnxruntime CPU, exactly reverted,
refused with the reason where they do not apply, and their cost."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from helpers import depthwise_model, run
from onnx_diagwise import lowerings
from onnx_diagwise.detect import detect
from onnx_diagwise.graphs import all_names, use_counts
from onnx_diagwise.validation import compare

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers


def with_symbolic(model: onnx.ModelProto, axes: dict[int, str]) -> onnx.ModelProto:
    """MODEL with input dims AXES ({index: name}) symbolic; the output's shape left to inference."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, name in axes.items():
        dims[index].dim_param = name
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model)  # the checker wants the output's shape


def input_shape(model: onnx.ModelProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in model.graph.input[0].type.tensor_type.shape.dim]


def feeds(model: onnx.ModelProto, sizes: dict[str, int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    value = model.graph.input[0]
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    shape = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param] for d in value.type.tensor_type.shape.dim]
    return {value.name: rng.standard_normal(shape).astype(np.float32).astype(dtype)}


def lowered(model: onnx.ModelProto, lowering: str, params: dict | None = None, node: int = 0,
            shape: list | None = None) -> tuple[onnx.ModelProto, lowerings.Lowered]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    conv = detect(copy).candidates[node]
    result = lowerings.lower(copy, conv, lowering, params, shape or input_shape(model))
    return copy, result


def assert_exact(original: onnx.ModelProto, candidate: onnx.ModelProto, inputs: dict) -> None:
    """Every output within validation's tolerance for summation-order differences."""
    expected, actual = run(original, inputs), run(candidate, inputs)
    for index, (e, a) in enumerate(zip(expected, actual)):
        result = compare(f"output {index}", e, a)
        assert result.passed, result.message


def assert_round_trip(model: onnx.ModelProto, lowering: str, params: dict | None, inputs: dict,
                      shape: list | None = None) -> lowerings.Lowered:
    """Lowered: checked by onnx, exact, and reverted to the very same bytes."""
    low, result = lowered(model, lowering, params, shape=shape)
    onnx.checker.check_model(low, full_check=True)
    assert_exact(model, low, inputs)
    assert lowerings.revert(low) == []
    assert low.SerializeToString() == model.SerializeToString()
    return result


def pads_for(draw, kernel, dilations):
    """Explicit begin/end pads below the dilated kernel: half of it a side (what most layers do), or any."""
    pairs = []
    for k, d in zip(kernel, dilations):
        extent = (k - 1) * d
        if draw(st.booleans()):
            pairs.append((extent // 2, extent - extent // 2))
        else:
            pairs.append((draw(st.integers(0, extent)), draw(st.integers(0, extent))))
    return tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)


def size_for(draw, k, d, s, begin, end, pad_mode):
    """An input size that gives at least one output along the axis: below the kernel to past it."""
    need = 1 if pad_mode.startswith("SAME") else max(1, (k - 1) * d + 1 - begin - end)
    return draw(st.integers(need, max(need, (k - 1) * d + 1) + 2 * s + 3))


@st.composite
def layers(draw, ranks, max_kernel):
    """One depthwise layer: kernel, geometry, M, bias, dtype, and the input sizes."""
    rank = draw(st.sampled_from(ranks))
    kernel = tuple(draw(st.integers(1, max_kernel[rank])) for _ in range(rank))
    pad_mode = draw(st.sampled_from(["explicit", "explicit", "none", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    dilations = tuple(1 if pad_mode.startswith("SAME") or k > 16 else draw(st.integers(1, 2)) for k in kernel)
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    pads = pads_for(draw, kernel, dilations) if pad_mode == "explicit" else None
    spatial = tuple(size_for(draw, k, d, s, pads[i] if pads else 0, pads[i + rank] if pads else 0, pad_mode)
                    for i, (k, d, s) in enumerate(zip(kernel, dilations, strides)))
    return dict(channels=draw(st.sampled_from([2, 3, 4, 6])), multiplier=draw(st.integers(1, 3)), kernel=kernel,
                spatial=spatial, strides=strides, dilations=dilations, pads=pads,
                auto_pad=pad_mode if pad_mode in ("SAME_UPPER", "SAME_LOWER", "VALID") else None,
                bias=draw(st.booleans()), dtype=draw(st.sampled_from(["float32"] * 3 + ["float16"])),
                seed=draw(st.integers(0, 2**16)))


def geometry(case: dict, axis: int, size: int) -> tuple[int, int, int, int, int, int]:
    """k, s, d, pad begin, pad end and output size along AXIS, computed the way the ONNX spec says."""
    rank = len(case["kernel"])
    k, s, d = case["kernel"][axis], case["strides"][axis], case["dilations"][axis]
    if case["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        out = math.ceil(size / s)
        total = (out - 1) * s + (k - 1) * d + 1 - size
        begin = total // 2 if case["auto_pad"] == "SAME_UPPER" else total - total // 2
        return k, s, d, begin, total - begin, out
    pads = case["pads"] or (0,) * (2 * rank)
    begin, end = pads[axis], pads[axis + rank]
    return k, s, d, begin, end, (size + begin + end - (k - 1) * d - 1) // s + 1


def same_problem(case: dict, axes: range, symbolic: int | None) -> str | None:
    """Why SAME padding along one of AXES cannot be made explicit: it depends on a symbolic size
    (with a stride), or is negative (a stride past the kernel).  None if it can, or for other padding."""
    mode, rank = case["auto_pad"], len(case["kernel"])
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    for axis in axes:
        name = "DHW"[3 - rank + axis]
        k, s, _, begin, end, _ = geometry(case, axis, case["spatial"][axis])
        if s > 1 and symbolic == axis + 2:
            return f"auto_pad {mode} with stride {s} along {name} pads by an amount that depends on the size there"
        if begin + end < 0:
            return f"auto_pad {mode} gives negative padding along {name}"
    return None


# ---------------------------------------------------------------- exactness and round trip (hypothesis)


@PROPERTY
@given(case=layers(ranks=[2, 2, 2, 3], max_kernel={2: 31, 3: 5}), symbolic_last=st.booleans())
def test_toeplitz_is_exact_and_reverts(case, symbolic_last):
    model = depthwise_model(**case)
    rank = len(case["kernel"])
    if symbolic_last:  # toeplitz needs H only; the last axis may be symbolic
        model = with_symbolic(model, {1 + rank: "W"})
    conv = detect(model).candidates[0]
    reason = lowerings.why_not(conv, "toeplitz", {}, input_shape(model), opset=17)
    problem = same_problem(case, range(1), None)
    event(f"refused: {problem or 'no'}"[:40])
    if problem:
        assert reason is not None and reason.startswith(problem)
        return
    # kernel rows that meet no input row at any output row cannot be kept in the lowered weight
    k, s, d, begin, _, out = geometry(case, 0, case["spatial"][0])
    missing = [kh for kh in range(k) if not any(0 <= i * s + kh * d - begin < case["spatial"][0] for i in range(out))]
    event(f"rows missing: {bool(missing)}")
    if missing:
        assert reason is not None and reason.startswith(f"kernel rows {missing[0]}")
        return
    assert reason is None
    result = assert_round_trip(model, "toeplitz", {}, feeds(model, {"N": 2, "W": case["spatial"][-1]}, case["seed"]))
    assert result.cost.flops_factor == case["spatial"][0] / k


@st.composite
def polyphase_cases(draw):
    case = draw(layers(ranks=[1, 1, 1, 2, 2, 3], max_kernel={1: 31, 2: 9, 3: 5}))
    rank = len(case["kernel"])
    params = {"block": draw(st.sampled_from([2, 3, 4, 5, 8, 16, 32]))}
    if rank == 1:
        params["as_2d"] = draw(st.booleans())
    if rank <= 2 and draw(st.booleans()):
        params["fold"] = True
    # any one spatial size may be symbolic (the Reshape back infers one)
    symbolic = draw(st.sampled_from([None] + list(range(2, rank + 2))))
    return case, params, symbolic


@PROPERTY
@given(polyphase_cases())
def test_polyphase_is_exact_and_reverts(drawn):
    case, params, symbolic = drawn
    model = depthwise_model(**case)
    if symbolic:
        model = with_symbolic(model, {symbolic: "S"})
    conv = detect(model).candidates[0]
    reason = lowerings.why_not(conv, "polyphase", params, input_shape(model), opset=17)
    rank = len(case["kernel"])
    problem = same_problem(case, range(rank), symbolic)
    if params.get("fold") and rank == 2 and symbolic == 2:  # checked before the padding
        problem = "polyphase fold of a 2-D layer needs a static H"
    event(f"refused: {problem or 'no'}"[:40])
    if problem:
        assert reason is not None and reason.startswith(problem)
        return
    assert reason is None
    size = case["spatial"][symbolic - 2] if symbolic else 0
    result = assert_round_trip(model, "polyphase", params, feeds(model, {"N": 2, "S": size}, case["seed"]))
    k, s, d, begin, end, out = geometry(case, rank - 1, case["spatial"][-1])
    taps = (params["block"] - 1) * s + (k - 1) * d + 1
    if params.get("fold"):  # P = B*s phases as channels, a kernel of ceil(taps / P) steps
        period = params["block"] * s
        taps = period * math.ceil(taps / period)
    event(f"fold: {params.get('fold', False)}")
    waste = 1 if symbolic == rank + 1 else math.ceil(out / params["block"]) * params["block"] / out
    assert result.cost.flops_factor == pytest.approx(taps / k * waste)


@st.composite
def conv2d_cases(draw):
    return draw(layers(ranks=[1], max_kernel={1: 31})), draw(st.booleans())


@PROPERTY
@given(conv2d_cases())
def test_conv2d_is_exact_and_reverts(drawn):
    case, symbolic = drawn
    model = depthwise_model(**case)
    if symbolic:
        model = with_symbolic(model, {2: "L"})
    result = assert_round_trip(model, "conv2d", {}, feeds(model, {"N": 2, "L": case["spatial"][0]}, case["seed"]))
    assert result.cost.flops_factor == 1.0
    assert result.cost.weight_growth == 0
    assert list(result.tensors["w"].shape) == [case["channels"] * case["multiplier"], 1, 1, case["kernel"][0]]


@pytest.mark.parametrize("lowering, params, case", [
    # RepLKNet-31B's geometry (channels cut to keep the test quick; C only repeats the work)
    ("toeplitz", {}, dict(channels=8, kernel=(31, 31), spatial=(56, 56), pads=(15,) * 4)),
    ("toeplitz", {}, dict(channels=16, kernel=(27, 27), spatial=(14, 14), pads=(13,) * 4)),
    ("toeplitz", {}, dict(channels=1024, kernel=(13, 13), spatial=(7, 7), pads=(6,) * 4)),
    ("toeplitz", {}, dict(channels=16, kernel=(29, 29), spatial=(28, 28), pads=(14,) * 4, dtype="float16")),
    ("polyphase", {"block": 16}, dict(channels=8, kernel=(31, 31), spatial=(56, 56), pads=(15,) * 4)),
    ("polyphase", {"block": 16, "fold": True}, dict(channels=16, kernel=(27, 27), spatial=(14, 14), pads=(13,) * 4)),
    ("polyphase", {"block": 8, "fold": True}, dict(channels=32, kernel=(13, 13), spatial=(7, 7), pads=(6,) * 4,
                                                   dtype="float16")),
    # the conformer's k=31 convolution module
    ("polyphase", {"block": 16}, dict(channels=512, kernel=(31,), spatial=(256,), pads=(15, 15))),
    ("polyphase", {"block": 32, "as_2d": True}, dict(channels=512, kernel=(31,), spatial=(256,), pads=(15, 15),
                                                     dtype="float16")),
    ("polyphase", {"block": 24}, dict(channels=64, kernel=(31,), spatial=(256,), pads=(15, 15))),
    ("conv2d", {}, dict(channels=512, kernel=(31,), spatial=(256,), pads=(15, 15))),
    ("polyphase", {"block": 32, "fold": True}, dict(channels=512, kernel=(31,), spatial=(256,), pads=(15, 15))),
    ("polyphase", {"block": 16, "as_2d": True, "fold": True}, dict(channels=512, kernel=(31,), spatial=(256,),
                                                                  pads=(15, 15), dtype="float16")),
])
def test_large_kernel_layers_at_their_real_sizes(lowering, params, case):
    model = depthwise_model(**case)
    low, _ = lowered(model, lowering, params)
    for batch in (1, 3):  # the batch is symbolic: one lowered model serves every batch
        assert_exact(model, low, feeds(model, {"N": batch}, seed=batch))
    assert lowerings.revert(low) == []
    assert low.SerializeToString() == model.SerializeToString()


def test_polyphase_with_a_symbolic_length_runs_any_length():
    """One lowered model, padded to whole blocks and cut back, for lengths below, at and past a
    multiple of the block, with stride and padding that make L_out differ from L."""
    case = dict(channels=4, multiplier=2, kernel=(7,), spatial=(20,), strides=(2,), pads=(3, 1), dilations=(2,))
    model = with_symbolic(depthwise_model(**case), {2: "L"})
    low, result = lowered(model, "polyphase", {"block": 4})
    assert [n.op_type for n in result.nodes].count("Slice") == 2  # the length from Shape(x), and the cut
    for length in (9, 16, 17, 23, 40):
        assert_exact(model, low, feeds(model, {"N": 2, "L": length}, seed=length))


@pytest.mark.parametrize("strides, pads", [((1,), (3, 3)), ((2,), (3, 1)), ((3,), (0, 0))])
def test_polyphase_fold_with_a_symbolic_length_runs_any_length(strides, pads):
    """Padded past what any length needs, cut to S*P at run time, folded, and cut back to L_out."""
    case = dict(channels=4, multiplier=2, kernel=(7,), spatial=(20,), strides=strides, pads=pads, dilations=(2,))
    model = with_symbolic(depthwise_model(**case), {2: "L"})
    low, result = lowered(model, "polyphase", {"block": 8, "fold": True})
    ops = [n.op_type for n in result.nodes if n.op_type != "Constant"]
    assert ops[:2] == ["Pad", "Shape"] and ops.count("Slice") == 3  # L from Shape(x), to S*P, to L_out
    for length in (13, 16, 17, 23, 40, 64):
        assert_exact(model, low, feeds(model, {"N": 2, "L": length}, seed=length))
    assert lowerings.revert(low) == [] and low.SerializeToString() == model.SerializeToString()


def test_polyphase_fold_of_a_2d_layer_folds_along_w_and_keeps_h_on_the_conv():
    model = depthwise_model(channels=3, kernel=(5, 9), spatial=(7, 30), pads=(2, 4, 2, 4), strides=(2, 1))
    low, result = lowered(model, "polyphase", {"block": 8, "fold": True})
    # W_out = 30: 4 blocks of 8, S = 4 + 2 - 1 = 5 steps: padded to 40 (4 before, 6 after), 32 cut to 30
    assert [n.op_type for n in low.graph.node if n.op_type != "Constant"] == [
        "Pad", "Reshape", "Transpose", "Reshape", "Conv", "Reshape", "Transpose", "Reshape", "Slice"]
    conv = next(n for n in low.graph.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    # P = 8 phases of W as channels; kernel (5, ceil((8 + 8) / 8) = 2); H keeps stride 2 and pads 2/2
    assert attrs == {"group": 3, "kernel_shape": [5, 2], "strides": [2, 1], "dilations": [1, 1], "pads": [2, 0, 2, 0]}
    assert result.tensors["w"].shape == (3 * 8, 8, 5, 2)
    transpose = next(n for n in low.graph.node if n.op_type == "Transpose")
    assert helper.get_attribute_value(transpose.attribute[0]) == [0, 1, 4, 2, 3]
    for batch in (1, 2):
        assert_exact(model, low, feeds(model, {"N": batch}, seed=batch))
    assert lowerings.revert(low) == [] and low.SerializeToString() == model.SerializeToString()


def test_polyphase_fold_weight_holds_each_phase_of_the_span_as_a_channel():
    weight = np.array([[[1, 2, 3]], [[4, 5, 6]]], dtype=np.float32)  # C=2, k=3
    model = depthwise_model(channels=2, kernel=(3,), spatial=(8,), pads=(1, 1), bias=False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    low, result = lowered(model, "polyphase", {"block": 4, "fold": True})
    f = result.tensors["w"]
    # B = P = 4 outputs and input phases per channel; the span of 4 + 3 - 1 = 6 inputs takes J = 2 steps
    assert f.shape == (8, 4, 2)
    # output r of a block reads input u = j*P + p of the span with tap u - r
    assert f[:4].transpose(0, 2, 1).reshape(4, 8).tolist() == [[1, 2, 3, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 0, 0, 0],
                                                                [0, 0, 1, 2, 3, 0, 0, 0], [0, 0, 0, 1, 2, 3, 0, 0]]
    assert f[4:, :, 0].tolist()[0] == [4, 5, 6, 0]
    conv = next(n for n in low.graph.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs == {"group": 2, "kernel_shape": [2]}
    # L_out = 8: 2 blocks, S = 2 + 2 - 1 = 3 steps of 4: the input is padded to 12 (1 before, 3 after)
    pad = next(n for n in low.graph.node if n.op_type == "Pad")
    pads = {n.output[0]: numpy_helper.to_array(n.attribute[0].t).tolist() for n in low.graph.node
            if n.op_type == "Constant"}[pad.input[1]]
    assert pads == [0, 0, 1, 0, 0, 3]
    assert [n.op_type for n in low.graph.node if n.op_type != "Constant"] == [
        "Pad", "Reshape", "Transpose", "Reshape", "Conv", "Reshape", "Transpose", "Reshape"]
    assert_exact(model, low, feeds(model, {"N": 2}))


def test_polyphase_fold_is_for_1d_and_2d_layers_from_opset_11():
    three_d = depthwise_model(channels=2, kernel=(3, 3, 3), spatial=(4, 5, 8))
    conv = detect(three_d).candidates[0]
    assert lowerings.why_not(conv, "polyphase", {"block": 8, "fold": True}, input_shape(three_d), opset=17) == (
        "polyphase fold is built for 1-D and 2-D layers; this layer is 3-D (it takes toeplitz or polyphase)")
    two_d = with_symbolic(depthwise_model(channels=2, kernel=(3, 3), spatial=(8, 8), pads=(1,) * 4), {2: "H"})
    conv = detect(two_d).candidates[0]
    assert lowerings.why_not(conv, "polyphase", {"block": 8, "fold": True}, input_shape(two_d), opset=17) == (
        "polyphase fold of a 2-D layer needs a static H (the input's dim 2 is 'H')")
    one_d = depthwise_model(channels=2, kernel=(3,), spatial=(8,), pads=(1, 1))
    conv = detect(one_d).candidates[0]
    assert lowerings.why_not(conv, "polyphase", {"block": 8, "fold": True}, input_shape(one_d), opset=10) == (
        "polyphase fold needs ai.onnx opset 11 or later; the model has 10")
    assert lowerings.why_not(conv, "polyphase", {"block": 8}, input_shape(one_d), opset=10) is None
    assert lowerings.why_not(conv, "polyphase", {"block": 8, "fold": 1}, input_shape(one_d), opset=17) == (
        "polyphase fold must be true or false; got 1")
    assert lowerings.label("polyphase", {"block": 8, "as_2d": True, "fold": True}) == "polyphase B=8 2-D folded"


def test_fp16_layers_keep_fp16_weights_bit_for_bit():
    model = depthwise_model(channels=4, kernel=(9, 9), spatial=(12, 12), pads=(4,) * 4, dtype="float16")
    low, result = lowered(model, "toeplitz")
    weight = numpy_helper.to_array(model.graph.initializer[0])
    lowered_weight = result.tensors["w"]
    assert lowered_weight.dtype == np.float16
    # every weight value is in the lowered one, copied, never summed; the rest is zero
    bits = set(lowered_weight.view(np.uint16).ravel())
    assert bits - set(weight.view(np.uint16).ravel()) == {0}
    assert set(weight.view(np.uint16).ravel()) <= bits
    assert_exact(model, low, feeds(model, {"N": 2}))


# ---------------------------------------------------------------- the lowered graph


def test_toeplitz_graph_is_reshape_conv1d_reshape():
    model = depthwise_model(channels=4, multiplier=2, kernel=(5, 3), spatial=(9, 10), pads=(2, 1, 2, 1),
                            strides=(2, 1))
    low, result = lowered(model, "toeplitz")
    ops = [(n.op_type, n.input[0] if n.input else None, list(n.output)) for n in low.graph.node]
    assert [op for op, _, _ in ops] == ["Constant", "Reshape", "Conv", "Constant", "Reshape"]
    reshape_in, conv, reshape_out = (n for n in low.graph.node if n.op_type != "Constant")
    assert reshape_in.input[0] == "x" and reshape_out.output[0] == "y"
    shapes = {n.output[0]: numpy_helper.to_array(n.attribute[0].t).tolist() for n in low.graph.node
              if n.op_type == "Constant"}
    assert shapes[reshape_in.input[1]] == [0, 4 * 9, -1]  # rows become channels: a view of x
    assert shapes[reshape_out.input[1]] == [0, 8, 5, -1]  # H_out = (9 + 4 - 5) // 2 + 1
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs == {"group": 4, "kernel_shape": [3], "strides": [1], "dilations": [1], "pads": [1, 1]}
    assert conv.name == "dw" and list(conv.input[1:]) == ["w", "b"]
    assert list(result.tensors["w"].shape) == [8 * 5, 9, 3]
    assert list(result.tensors["b"]) == list(np.repeat(numpy_helper.to_array(model.graph.initializer[1]), 5))


def test_toeplitz_weight_is_the_kernel_shifted_along_rows():
    weight = np.arange(1, 7, dtype=np.float32).reshape(2, 1, 3, 1)  # C=2, kernel 3x1
    model = depthwise_model(channels=2, kernel=(3, 1), spatial=(4, 5), pads=(1, 0, 1, 0), bias=False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    _, result = lowered(model, "toeplitz")
    t = result.tensors["w"].reshape(2, 4, 4)  # [c, output row, input row]
    # output row i reads input rows i-1, i, i+1 with kernel rows 0, 1, 2 (pad 1 at the top)
    assert t[0].tolist() == [[2, 3, 0, 0], [1, 2, 3, 0], [0, 1, 2, 3], [0, 0, 1, 2]]
    assert t[1].tolist() == [[5, 6, 0, 0], [4, 5, 6, 0], [0, 4, 5, 6], [0, 0, 4, 5]]


def test_polyphase_weight_holds_b_shifted_copies_of_the_kernel():
    weight = np.array([[[1, 2, 3]], [[4, 5, 6]]], dtype=np.float32)  # C=2, k=3
    model = depthwise_model(channels=2, kernel=(3,), spatial=(8,), pads=(1, 1), bias=False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    low, result = lowered(model, "polyphase", {"block": 3})
    p = result.tensors["w"]
    assert p.shape == (6, 1, 5)  # B = 3 outputs per channel, kernel B + k - 1
    assert p[:3, 0].tolist() == [[1, 2, 3, 0, 0], [0, 1, 2, 3, 0], [0, 0, 1, 2, 3]]
    assert p[3:, 0].tolist() == [[4, 5, 6, 0, 0], [0, 4, 5, 6, 0], [0, 0, 4, 5, 6]]
    conv = next(n for n in low.graph.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    # L_out = 8 is 3 blocks of 3 less one: one more output at the end (stride 1), then cut
    assert attrs["strides"] == [3] and attrs["pads"] == [1, 2] and attrs["kernel_shape"] == [5]
    assert [n.op_type for n in low.graph.node if n.op_type != "Constant"] == ["Conv", "Reshape", "Transpose",
                                                                              "Reshape", "Slice"]


def test_polyphase_as_2d_runs_the_blocks_on_a_row():
    model = depthwise_model(channels=2, multiplier=3, kernel=(5,), spatial=(13,), pads=(2, 1), strides=(2,))
    low, result = lowered(model, "polyphase", {"block": 4, "as_2d": True})
    assert [n.op_type for n in low.graph.node if n.op_type != "Constant"] == [
        "Reshape", "Conv", "Reshape", "Transpose", "Reshape", "Slice"]
    conv = next(n for n in low.graph.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    # L_out = (13 + 3 - 5) // 2 + 1 = 6: two blocks of 4, 2 outputs more at stride 2: 4 more at the end
    assert attrs == {"group": 2, "kernel_shape": [1, 3 * 2 + 5], "strides": [1, 8], "dilations": [1, 1],
                     "pads": [0, 2, 0, 1 + 4]}
    assert result.tensors["w"].shape == (6 * 4, 1, 1, 11)


def test_polyphase_needs_no_slice_when_the_block_divides_the_output():
    model = depthwise_model(channels=2, kernel=(5,), spatial=(16,), pads=(2, 2))
    _, result = lowered(model, "polyphase", {"block": 8})
    assert "Slice" not in [n.op_type for n in result.nodes]


def test_lowered_nodes_take_the_conv_place_and_the_weight_keeps_its_place():
    model = two_layer_model()
    names_before = [n.name for n in model.graph.node]
    low, result = lowered(model, "toeplitz", node=1)
    after = [n.name for n in low.graph.node]
    at = names_before.index("dw2")
    assert after[:at] == names_before[:at] and after[at + len(result.nodes):] == names_before[at + 1:]
    assert after[at:at + len(result.nodes)] == [n.name for n in result.nodes]
    assert [t.name for t in low.graph.initializer] == [t.name for t in model.graph.initializer]


def test_new_names_clash_with_none_already_in_the_model():
    model = depthwise_model(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(1,) * 4)
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["dw_toeplitz_rows"], name="dw_toeplitz_conv"))
    low, result = lowered(model, "toeplitz")
    made = {name for node in result.nodes for name in [node.name, *node.output]} - {"dw", "y"}
    assert len(made) == 5 and not made & all_names(model)  # a new node and its output may share a name
    node_names = [node.name for node in low.graph.node]
    assert len(set(node_names)) == len(node_names)
    onnx.checker.check_model(low, full_check=True)


def test_a_weight_read_elsewhere_is_refused():
    model = depthwise_model(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(1,) * 4)
    model.graph.node.append(helper.make_node("Identity", ["w"], ["w_copy"], name="reader"))
    model.graph.output.append(helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, None))
    conv = detect(model).candidates[0]
    reads = use_counts(model)["main"]
    assert lowerings.why_not(conv, "toeplitz", {}, input_shape(model), opset=17, reads=reads) == (
        "the weight 'w' is read 2 times; lowerings replace it in place, so it must be read by this Conv only")
    with pytest.raises(ValueError, match="dw: the weight 'w' is read 2 times"):
        lowered(model, "toeplitz")


# ---------------------------------------------------------------- whole models: byte-identical revert


def two_layer_model() -> onnx.ModelProto:
    """x -> Relu -> dw1 (weight stored as float_data, with a doc_string) -> dw2 (weight a Constant) -> y,
    with declared shapes for the intermediate values and the first weight."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 1, 5, 5)).astype(np.float32)
    w2 = rng.standard_normal((8, 1, 3, 7)).astype(np.float32)
    weight1 = helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel().tolist(), raw=False)
    weight1.doc_string = "first weight"
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w1", "b1"], ["h"], name="dw1", group=8, pads=[2, 2, 2, 2],
                         doc_string="the first layer"),
        helper.make_node("Constant", [], ["w2"], name="w2_const", value=numpy_helper.from_array(w2)),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="dw2", group=8, kernel_shape=[3, 7], strides=[1, 1],
                         auto_pad="SAME_UPPER"),
    ]
    shape = ["N", 8, 12, 14]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [weight1, bias],
                              value_info=[helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 1, 5, 5]),
                                          helper.make_tensor_value_info("h", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("first, second", [
    (("toeplitz", {}), ("toeplitz", {})),
    (("toeplitz", {}), ("polyphase", {"block": 4})),
    (("polyphase", {"block": 8}), ("polyphase", {"block": 3})),
])
def test_two_lowered_layers_revert_to_the_same_bytes(first, second):
    model = two_layer_model()
    low = onnx.ModelProto()
    low.CopyFrom(model)
    shapes = {"dw1": ["N", 8, 12, 14], "dw2": ["N", 8, 12, 14]}
    for conv, (lowering, params) in zip(detect(low).candidates, (first, second)):
        lowerings.lower(low, conv, lowering, params, shapes[conv.name])
    onnx.checker.check_model(low, full_check=True)
    assert_exact(model, low, feeds(model, {"N": 2}))
    assert [v.type.tensor_type.shape.dim[1].dim_value for v in low.graph.value_info if v.name == "w1"] == [
        12 if first[0] == "toeplitz" else 1]  # the declared shape follows the lowered weight
    inferred = onnx.shape_inference.infer_shapes(low)  # shapes someone inferred for lowered values go too
    assert len(inferred.graph.value_info) > len(low.graph.value_info)
    assert lowerings.revert(inferred) == []
    values = {name for node in inferred.graph.node for name in node.output} | {"w1"}
    assert {v.name for v in inferred.graph.value_info} <= values
    assert lowerings.revert(low) == []
    assert low.SerializeToString() == model.SerializeToString()


def test_a_layer_in_a_subgraph_reverts_with_its_weight_in_the_outer_graph():
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    branch = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["t"], name="inner", group=4, pads=[1] * 4)],
                               "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="pass")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch, else_branch=other)], "sub",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    low = onnx.ModelProto()
    low.CopyFrom(model)
    conv = detect(low).candidates[0]
    assert conv.graph.endswith("then_branch")
    lowerings.lower(low, conv, "toeplitz", {}, [1, 4, 6, 6])
    inputs = {"c": np.array(True), "x": np.random.default_rng(3).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    assert_exact(model, low, inputs)
    assert list(low.graph.initializer[0].dims) == [4 * 6, 6, 3]
    assert lowerings.revert(low) == []
    assert low.SerializeToString() == model.SerializeToString()


def test_a_layer_in_a_function_reverts_exactly():
    rng = np.random.default_rng(4)
    weight = numpy_helper.from_array(rng.standard_normal((6, 1, 9)).astype(np.float32))
    function = helper.make_function(
        "local", "Block", ["a"], ["b"],
        [helper.make_node("Constant", [], ["fw"], name="fw_const", value=weight),
         helper.make_node("Conv", ["a", "fw"], ["b"], name="fdw", group=3, pads=[4, 4])],
        [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Block", ["x"], ["y"], name="call", domain="local")], "f",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 30])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    low = onnx.ModelProto()
    low.CopyFrom(model)
    conv = detect(low).candidates[0]
    lowerings.lower(low, conv, "polyphase", {"block": 4}, ["N", 3, "L"])
    inputs = {"x": np.random.default_rng(5).standard_normal((2, 3, 30)).astype(np.float32)}
    assert_exact(model, low, inputs)
    assert lowerings.revert(low) == []
    assert low.SerializeToString() == model.SerializeToString()


# ---------------------------------------------------------------- revert refuses what was changed


def lowered_sample():
    model = depthwise_model(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(1,) * 4)
    low, _ = lowered(model, "toeplitz")
    return model, low


def weight_of(model):
    return numpy_helper.to_array(model.graph.initializer[0])


def set_weight(model, array):
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(array, "w"))


def change_on_band(model):
    t = weight_of(model).copy()
    t[2, 2, 1] += 1  # output row 2 reads input row 2 with kernel row 1: not the copy revert reads
    set_weight(model, t)


def change_off_band(model):
    t = weight_of(model).copy()
    t[0, 5, 0] = 1  # output row 0 never reads input row 5
    set_weight(model, t)


def change_first_copy(model):
    t = weight_of(model).copy()
    t[0, 0, 0] += 1  # the copy revert reads the tap from: recovered, rebuilt, and the other copies disagree
    set_weight(model, t)


def change_reshape(model):
    constant = next(n for n in model.graph.node if n.op_type == "Constant")
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([0, 24, 6], np.int64)))


def add_reader(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.node.append(helper.make_node("Identity", [conv.output[0]], ["peek"], name="peek"))
    model.graph.output.append(helper.make_tensor_value_info("peek", TensorProto.FLOAT, None))


def break_marker(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.doc_string = conv.doc_string[:-20]


def drop_bias(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    del conv.input[2]


@pytest.mark.parametrize("change, reason", [
    (change_on_band, "the lowered tensor 'w' was changed since it was built"),
    (change_off_band, "the lowered tensor 'w' was changed since it was built"),
    (change_first_copy, "the lowered tensor 'w' was changed since it was built"),
    (change_reshape, "the lowered nodes were changed since they were built"),
    (add_reader, "the lowered nodes were changed since they were built"),
    (drop_bias, "the lowered nodes were changed since they were built"),
    (break_marker, "its marker does not parse (JSONDecodeError)"),
])
def test_revert_refuses_a_changed_group_and_leaves_it(change, reason):
    _, low = lowered_sample()
    change(low)
    before = low.SerializeToString()
    assert lowerings.revert(low) == [f"dw: {reason}"]
    assert low.SerializeToString() == before


def test_a_stripped_marker_leaves_a_correct_lowered_model():
    model, low = lowered_sample()
    for node in low.graph.node:
        node.doc_string = ""
    assert lowerings.find(low) == [] and lowerings.revert(low) == []
    assert_exact(model, low, feeds(model, {"N": 2}))


def test_revert_of_a_model_without_lowerings_changes_nothing():
    model = two_layer_model()
    before = model.SerializeToString()
    assert lowerings.revert(model) == []
    assert model.SerializeToString() == before


# ---------------------------------------------------------------- refusals


def conv_of(**case):
    model = depthwise_model(**case)
    return detect(model).candidates[0], model


def bias_input_model():
    model = depthwise_model(channels=4, kernel=(3, 3), spatial=(6, 6))
    bias = model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info(bias.name, TensorProto.FLOAT, [4]))
    return model


BASE = dict(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(1,) * 4)
ONE_D = dict(channels=4, kernel=(5,), spatial=(12,), pads=(2, 2))


@pytest.mark.parametrize("case, lowering, params, shape, reason", [
    (BASE, "winograd", {}, None, "unknown lowering 'winograd' (known: toeplitz, polyphase, conv2d)"),
    (BASE, "toeplitz", {"block": 4}, None, "toeplitz takes no parameter block"),
    (ONE_D, "polyphase", {"blocks": 4}, None, "polyphase takes no parameter blocks (its parameters: block, as_2d, fold)"),
    (ONE_D, "polyphase", {}, None, "polyphase needs an integer block >= 2; got None"),
    (ONE_D, "polyphase", {"block": 1}, None, "polyphase needs an integer block >= 2; got 1"),
    (ONE_D, "polyphase", {"block": True}, None, "polyphase needs an integer block >= 2; got True"),
    (ONE_D, "polyphase", {"block": "8"}, None, "polyphase needs an integer block >= 2; got '8'"),
    (ONE_D, "polyphase", {"block": 8, "as_2d": 1}, None, "polyphase as_2d must be true or false; got 1"),
    (dict(BASE, dtype="float64"), "toeplitz", {}, None,
     "lowerings are built for float32 and float16 (the dtypes onnxruntime runs Conv in), not float64"),
    (dict(BASE, weight_source="Identity"), "toeplitz", {}, None,
     "the weight is reached through Identity nodes; lowerings replace the tensor the Conv reads directly"),
    (BASE, "toeplitz", {}, "unknown", "the input shape is unknown (lowerings need its spatial sizes)"),
    (BASE, "toeplitz", {}, ["N", 4, 6], "input shape ['N', 4, 6] is not that of a 2-D convolution"),
    (BASE, "toeplitz", {}, ["N", 5, 6, 6], "input shape ['N', 5, 6, 6] has 5 channels, not C=4"),
    (ONE_D, "toeplitz", {}, None, "toeplitz needs a 2-D or 3-D layer (a 1-D one would become one dense matrix "
                                  "per channel); 1-D layers take polyphase"),
    (BASE, "toeplitz", {}, ["N", 4, "H", 6], "toeplitz needs a static H (the input's dim 2 is 'H')"),
    (BASE, "toeplitz", {}, ["N", 4, None, 6], "toeplitz needs a static H (the input's dim 2 is unknown)"),
    (dict(channels=4, kernel=(7, 3), spatial=(2, 6), pads=(5, 1, 5, 1), strides=(3, 1)), "toeplitz", {}, None,
     "kernel rows 0-1, 4 never meet the input (H=2, pads 5/5, stride 3, dilation 1): the lowered weight "
     "would not hold them, so revert could not be exact"),
    (dict(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(1,) * 4, dilations=(2, 1)), "toeplitz", {},
     ["N", 4, 6, 6], None),
    (dict(channels=4, kernel=(3, 3), spatial=(6, 6), auto_pad="SAME_UPPER"), "toeplitz", {}, ["N", 4, 6, "W"], None),
    (dict(channels=4, kernel=(3, 3, 3), spatial=(5, 5, 5), pads=(1,) * 6), "toeplitz", {}, ["N", 4, 5, "H", "W"],
     "the input's trailing spatial shape has 2 symbolic sizes; the Reshape back can infer only one"),
    (dict(channels=4, kernel=(3, 3), spatial=(6, 6), strides=(4, 1), auto_pad="SAME_UPPER"), "toeplitz", {},
     ["N", 4, 6, 6], None),
    (dict(channels=4, kernel=(1, 3), spatial=(6, 6), strides=(4, 1), auto_pad="SAME_UPPER"), "toeplitz", {},
     ["N", 4, 6, 6], "auto_pad SAME_UPPER gives negative padding along H (stride 4 > kernel 1)"),
    (dict(channels=4, kernel=(3, 3), spatial=(6, 6), pads=(0, 1, 0, 1)), "toeplitz", {}, ["N", 4, 2, 6],
     "the output would be empty along H (H=2, kernel 3)"),
    (ONE_D, "polyphase", {"block": 4}, ["N", 4, "L"], None),
    (dict(ONE_D, pads=None, auto_pad="SAME_LOWER", strides=(2,)), "polyphase", {"block": 4}, ["N", 4, "L"],
     "auto_pad SAME_LOWER with stride 2 along W pads by an amount that depends on the size there, which is 'L'"),
    (dict(ONE_D, pads=None, auto_pad="SAME_LOWER"), "polyphase", {"block": 4}, ["N", 4, "L"], None),
    (dict(channels=4, kernel=(3, 3), spatial=(6, 6), pads=None, auto_pad="SAME_UPPER", dilations=(1, 2)),
     "polyphase", {"block": 4}, None, "auto_pad SAME_UPPER with dilation 2 along W: onnxruntime refuses the "
                                      "combination, so there is no padding to match"),
    (BASE, "polyphase", {"block": 4}, ["N", 4, "H", "W"], "polyphase needs static sizes on all spatial axes but "
     "one: the output's spatial shape has 2 symbolic sizes; the Reshape back can infer only one"),
    (BASE, "polyphase", {"block": 4, "as_2d": True}, None,
     "polyphase as_2d runs 1-D layers as 2-D ones; this layer is 2-D"),
    (BASE, "conv2d", {}, None, "conv2d runs 1-D layers as 2-D ones; this layer is 2-D"),
    (dict(channels=4, kernel=(5,), spatial=(12,)), "polyphase", {"block": 4}, ["N", 4, 3],
     "the output would be empty along W (size 3, kernel 5)"),
])
def test_why_not(case, lowering, params, shape, reason):
    conv, model = conv_of(**case)
    shape = None if shape == "unknown" else (shape or input_shape(model))
    assert lowerings.why_not(conv, lowering, params, shape, opset=17) == reason
    if reason is not None:
        with pytest.raises(ValueError, match="^" + re.escape(reason) + "$"):
            lowerings.build(conv, lowering, params, shape, set(), opset=17)


@pytest.mark.parametrize("index", [0, 3])
def test_why_not_negative_pads(index):
    conv, model = conv_of(**BASE)
    next(a for a in conv.node.attribute if a.name == "pads").ints[index] = -1
    conv = detect(model).candidates[0]
    pads = [-1 if i == index else 1 for i in range(4)]
    for lowering, params in (("toeplitz", {}), ("polyphase", {"block": 4})):
        assert lowerings.why_not(conv, lowering, params, input_shape(model), opset=17) == (
            f"pads {pads} are negative; ONNX allows only pads >= 0")


def test_why_not_the_opset():
    conv, model = conv_of(**ONE_D)
    assert lowerings.why_not(conv, "polyphase", {"block": 4}, input_shape(model), opset=9) == (
        "polyphase needs ai.onnx opset 10 or later; the model has 9")
    assert lowerings.why_not(conv, "conv2d", {}, input_shape(model), opset=9) is None


def test_why_not_other_forms_and_biases():
    conv, model = conv_of(**BASE)
    for form in ("QDQ", "ConvTranspose", "dynamic", "FusedConv"):
        assert lowerings.why_not(replace(conv, form=form), "toeplitz", {}, input_shape(model), opset=17) == (
            f"lowerings rewrite float Conv nodes; this is a {form} one")
    model = bias_input_model()
    conv = detect(model).candidates[0]
    assert lowerings.why_not(conv, "toeplitz", {}, input_shape(model), opset=17) == (
        "bias 'b' is not a constant the Conv reads directly")


# ---------------------------------------------------------------- candidates and cost


def test_candidates():
    conv, model = conv_of(channels=8, kernel=(31, 31), spatial=(56, 56), pads=(15,) * 4)
    # W = 56: B = 64 is past it, but folded it is the first block that holds the whole row
    assert lowerings.candidates(conv, input_shape(model), opset=17) == [("toeplitz", {})] + [
        ("polyphase", {"block": b, "as_2d": False} | fold) for b in (4, 8, 16, 32)
        for fold in ([{}, {"fold": True}] if b >= 8 else [{}])] + [("polyphase", {"block": 64, "as_2d": False,
                                                                                "fold": True})]
    conv, model = conv_of(channels=8, kernel=(31,), spatial=(256,), pads=(15, 15))
    # 1-D: fold as well from B = 8 on (P = B channels per group), each also as 2-D
    assert lowerings.candidates(conv, ["N", 8, "T"], opset=17) == [("conv2d", {})] + [
        ("polyphase", {"block": b, "as_2d": a} | fold) for b in (4, 8, 16, 32, 64) for a in (False, True)
        for fold in ([{}, {"fold": True}] if b >= 8 else [{}])]
    assert lowerings.candidates(conv, ["N", 8, 256], opset=9) == [("conv2d", {})]
    assert {"fold": True} not in [{k: v for k, v in p.items() if k == "fold"}
                                  for _, p in lowerings.candidates(conv, ["N", 8, 256], opset=10)]
    # a weight limit keeps the blocks whose weight and bias fit: 8 * B * (B + 30) + 8 * B values (folded:
    # 8 * B * P * J, P = B and J = ceil((B + 30) / B): 16 * 3 = 48 > 46 for B = 16)
    limit = 8 * 16 * (16 + 30) * 4 + 8 * 16 * 4
    assert [(p["block"], p.get("fold", False)) for name, p in lowerings.candidates(
        conv, ["N", 8, 256], opset=17, max_weight_bytes=limit) if name == "polyphase"] == [
        (4, False), (4, False), (8, False), (8, True), (8, False), (8, True), (16, False), (16, False)]
    assert lowerings.why_not(conv, "polyphase", {"block": 32}, ["N", 8, 256], opset=17, max_weight_bytes=limit) == (
        f"the lowered weight and bias would take 0.1 MiB ({8 * 32 * 62 * 4 + 8 * 32 * 4} bytes), past the limit "
        f"of {limit} bytes")
    # a block as long as the input is one block; a longer one would only compute padding
    conv, model = conv_of(channels=8, kernel=(9,), spatial=(32,), pads=(4, 4))
    assert [p["block"] for name, p in lowerings.candidates(conv, input_shape(model), opset=17)
            if name == "polyphase"] == [4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 32]
    conv, model = conv_of(channels=8, kernel=(13, 13), spatial=(7, 7), pads=(6,) * 4)  # RepLKNet's 13x13 at 7x7
    assert lowerings.candidates(conv, input_shape(model), opset=17) == [
        ("toeplitz", {}), ("polyphase", {"block": 4, "as_2d": False}), ("polyphase", {"block": 8, "as_2d": False,
                                                                                    "fold": True})]


# RepLKNet-31B's large-kernel layers and the conformer's: (C, kernel, size); fp32 bytes.
LARGE = {
    "31x31@56": (128, (31, 31), (56, 56)),
    "29x29@28": (256, (29, 29), (28, 28)),
    "27x27@14": (512, (27, 27), (14, 14)),
    "13x13@7": (1024, (13, 13), (7, 7)),
    "conformer k=31, T=256": (512, (31,), (256,)),
}


@pytest.mark.parametrize("name, lowering, params, factor, after", [
    # toeplitz: H/K_h times the arithmetic; weight C*H_out*H*K_w (+ bias C*H_out)
    ("31x31@56", "toeplitz", {}, 56 / 31, (128 * 56 * 56 * 31 + 128 * 56) * 4),
    ("29x29@28", "toeplitz", {}, 28 / 29, (256 * 28 * 28 * 29 + 256 * 28) * 4),
    ("27x27@14", "toeplitz", {}, 14 / 27, (512 * 14 * 14 * 27 + 512 * 14) * 4),
    ("13x13@7", "toeplitz", {}, 7 / 13, (1024 * 7 * 7 * 13 + 1024 * 7) * 4),
    # polyphase: (B+K-1)/K (B divides L_out here); weight C*B*(B+K-1)*K_h (+ bias C*B)
    ("31x31@56", "polyphase", {"block": 8}, 38 / 31, (128 * 8 * 38 * 31 + 128 * 8) * 4),
    ("conformer k=31, T=256", "polyphase", {"block": 8}, 38 / 31, (512 * 8 * 38 + 512 * 8) * 4),
    ("conformer k=31, T=256", "polyphase", {"block": 16}, 46 / 31, (512 * 16 * 46 + 512 * 16) * 4),
    ("conformer k=31, T=256", "polyphase", {"block": 32}, 62 / 31, (512 * 32 * 62 + 512 * 32) * 4),
    ("conformer k=31, T=256", "conv2d", {}, 1.0, (512 * 31 + 512) * 4),
])
def test_cost_of_large_kernel_layers(name, lowering, params, factor, after):
    channels, kernel, spatial = LARGE[name]
    pads = tuple(k // 2 for k in kernel) * 2
    conv, model = conv_of(channels=channels, kernel=kernel, spatial=spatial, pads=pads)
    cost = lowerings.cost(conv, lowering, params, input_shape(model))
    assert cost.weight_bytes_before == (channels * math.prod(kernel) + channels) * 4
    assert cost.flops_factor == pytest.approx(factor, rel=1e-12)
    assert cost.weight_bytes_after == after
    assert cost.weight_growth == after - cost.weight_bytes_before


@pytest.mark.parametrize("lowering, params, case", [
    ("toeplitz", {}, dict(channels=4, multiplier=2, kernel=(5, 3), spatial=(9, 10), pads=(1, 0, 2, 1),
                          strides=(2, 3), dilations=(2, 1))),
    ("toeplitz", {}, dict(channels=3, kernel=(3, 3, 3), spatial=(5, 6, 7), pads=(1,) * 6)),
    ("polyphase", {"block": 4}, dict(channels=4, kernel=(7,), spatial=(19,), pads=(3, 3))),
    ("polyphase", {"block": 4, "as_2d": True}, dict(channels=4, multiplier=2, kernel=(7,), spatial=(19,),
                                                    pads=(3, 1), strides=(2,), dilations=(2,))),
    ("polyphase", {"block": 3}, dict(channels=4, kernel=(3, 5), spatial=(8, 19), pads=(1, 2, 1, 2),
                                     strides=(1, 2))),
    ("conv2d", {}, dict(channels=4, kernel=(7,), spatial=(19,), auto_pad="SAME_LOWER", strides=(2,))),
])
def test_cost_counts_the_lowered_graph(lowering, params, case):
    """The FLOPs factor is the lowered Conv's multiply-adds over the depthwise one's (counted from
    the shapes onnx infers), and the bytes are those of the tensors that replace the weight and bias."""
    model = depthwise_model(**case)
    low, result = lowered(model, lowering, params)

    def macs(graph_model):
        inferred = onnx.shape_inference.infer_shapes(with_batch(graph_model))
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        inits = {t.name: list(t.dims) for t in inferred.graph.initializer}
        conv = next(n for n in inferred.graph.node if n.op_type == "Conv")
        return math.prod(shapes[conv.output[0]]) * math.prod(inits[conv.input[1]][1:])

    assert result.cost.flops_factor == pytest.approx(macs(low) / macs(model), rel=1e-12)
    kept = sum(t.dims[0] * 4 for t in model.graph.initializer if t.name == "b" and "b" not in result.tensors)
    assert result.cost.weight_bytes_after == sum(a.nbytes for a in result.tensors.values()) + kept


def with_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return copy
