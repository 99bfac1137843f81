"""Property tests: any depthwise Conv, any G, rewritten output equals the original."""

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_same_outputs, attr, conv_nodes, depthwise_model, initializer
from onnx_diagwise import rewrite
from onnx_diagwise.plan import group_size_for


@st.composite
def depthwise_cases(draw):
    rank = draw(st.integers(1, 3))
    max_k = {1: 7, 2: 5, 3: 3}[rank]
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(rank))
    pad_mode = draw(st.sampled_from(["explicit", "none", "SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"]))
    # onnxruntime refuses dilation together with SAME_* padding (the original would not run either)
    max_dilation = 1 if pad_mode.startswith("SAME") else 2
    dilations = tuple(draw(st.integers(1, max_dilation)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = tuple(e + draw(st.integers(0, 4 if rank < 3 else 2)) for e in effective)
    pads = None
    if pad_mode == "explicit":
        pads = tuple(draw(st.integers(0, k - 1)) for k in kernel for _ in range(2))
        pads = pads[0::2] + pads[1::2]  # begins then ends
    return dict(
        channels=draw(st.sampled_from([2, 3, 4, 6, 8, 12, 16])),
        multiplier=draw(st.integers(1, 3)),
        kernel=kernel, spatial=spatial, strides=strides, dilations=dilations, pads=pads,
        auto_pad=pad_mode if pad_mode in ("SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET") else None,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32"] * 5 + ["float16", "float64", "bfloat16"])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=depthwise_cases(), policy=st.sampled_from([1, 2, 3, 4, 8, "paper", "full"]))
def test_rewrite_matches_original(case, policy):
    model = depthwise_model(**case)
    result = rewrite(model, group_size=policy)
    g, _ = group_size_for(case["channels"], policy)
    [node] = conv_nodes(result.model)
    weight = initializer(result.model, node.input[1])
    out_channels = case["channels"] * case["multiplier"]
    if g == 1:
        assert result.report.nodes[0].action == "skipped" and "G=1" in result.report.nodes[0].reason
        assert attr(node, "group") == case["channels"]
    else:
        assert result.report.nodes[0].action == "rewritten"
        assert attr(node, "group") == case["channels"] // g
        assert list(weight.shape) == [out_channels, g, *case["kernel"]]
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model, case["dtype"])
    # Idempotent: a second pass changes nothing.
    again = rewrite(result.model, group_size=policy)
    assert again.model.SerializeToString() == result.model.SerializeToString()
