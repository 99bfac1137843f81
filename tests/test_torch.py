"""onnx_diagwise.torch: diagonalwise layers equal depthwise ones in values and gradients,
convert/revert, training, ONNX export, and the paper's benchmark script (small)."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
from torch import nn  # noqa: E402

from onnx_diagwise import DiagwiseError, rewrite  # noqa: E402
from onnx_diagwise.torch import (DiagonalwiseConv1d, DiagonalwiseConv2d, DiagonalwiseConv3d,  # noqa: E402
                                 convert, revert)

ROOT = Path(__file__).resolve().parent.parent
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
DIAG = {1: DiagonalwiseConv1d, 2: DiagonalwiseConv2d, 3: DiagonalwiseConv3d}


@st.composite
def layer_cases(draw):
    rank = draw(st.integers(1, 3))
    c = draw(st.sampled_from([2, 3, 4, 6, 8, 12]))
    divisors = [g for g in range(1, c + 1) if c % g == 0]
    kernel = draw(st.integers(1, {1: 5, 2: 3, 3: 3}[rank]))
    padding_mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    same = draw(st.booleans())
    stride = 1 if same else draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    padding = "same" if same else draw(st.integers(0, kernel - 1)) * dilation
    if padding_mode != "zeros" and padding != "same":
        padding = min(padding, 1)  # reflect needs padding smaller than the input
    return dict(rank=rank, c=c, m=draw(st.integers(1, 3)), kernel=kernel, stride=stride, dilation=dilation,
                padding=padding, padding_mode=padding_mode, bias=draw(st.booleans()),
                g=draw(st.sampled_from(divisors)), size=(kernel - 1) * dilation + 1 + draw(st.integers(1, 4)),
                seed=draw(st.integers(0, 999)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layer_cases())
def test_forward_and_gradients_match_depthwise(case):
    torch.manual_seed(case["seed"])
    rank, c = case["rank"], case["c"]
    conv = CONV[rank](c, c * case["m"], case["kernel"], case["stride"], case["padding"], case["dilation"],
                      groups=c, bias=case["bias"], padding_mode=case["padding_mode"]).double()
    diag = DIAG[rank].from_conv(copy.deepcopy(conv), case["g"])
    x = torch.randn(2, c, *[case["size"]] * rank, dtype=torch.float64, requires_grad=True)
    y_conv, y_diag = conv(x), diag(x)
    assert y_conv.shape == y_diag.shape
    torch.testing.assert_close(y_diag, y_conv, rtol=0, atol=1e-10)
    upstream = torch.randn_like(y_conv)
    params = [p for p in (conv.weight, conv.bias) if p is not None]
    diag_params = [p for p in (diag.weight, diag.bias) if p is not None]
    grads = torch.autograd.grad(y_conv, [x, *params], upstream)
    diag_grads = torch.autograd.grad(y_diag, [x, *diag_params], upstream)
    for a, b in zip(diag_grads, grads):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_constructor_and_state_dict_round_trip():
    layer = DiagonalwiseConv2d(16, 32, 3, padding=1, group_size=8)
    assert layer.weight.shape == (32, 1, 3, 3) and layer.groups == 16 and layer.group_size == 8
    plain = nn.Conv2d(16, 32, 3, padding=1, groups=16)
    assert list(layer.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    plain.load_state_dict(layer.state_dict())
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, 6, 6)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(DiagwiseError, match="does not divide C=16"):
        DiagonalwiseConv2d(16, 16, 3, group_size=5)
    with pytest.raises(DiagwiseError, match="must be depthwise"):
        DiagonalwiseConv2d(16, 16, 3, groups=4)


def _mobilenet_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(), nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 64, 5, 2, 2, groups=32), nn.ReLU(), nn.Conv2d(64, 24, 1),  # depth multiplier 2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).double()


def test_convert_and_revert_keep_predictions():
    model = _mobilenet_like().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    converted, report = convert(model, group_size=8, return_report=True)
    assert [(r.name, r.action, r.group_size) for r in report] == [("3", "converted", 8), ("7", "converted", 8)]
    assert isinstance(converted[3], DiagonalwiseConv2d) and isinstance(model[3], nn.Conv2d)  # a copy
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-10)
    reverted, report = revert(converted, return_report=True)
    assert type(reverted[3]) is nn.Conv2d and [r.action for r in report] == ["reverted", "reverted"]
    torch.testing.assert_close(reverted(x), model(x), rtol=0, atol=1e-12)
    # callable policy, include/exclude, in place
    _, report = convert(model, group_size=lambda name, m: None if name == "3" else "full", return_report=True)
    assert [(r.name, r.action) for r in report] == [("3", "skipped"), ("7", "converted")]
    assert report[1].group_size == 32
    _, report = convert(model, exclude="^7$", return_report=True)
    assert [r.action for r in report] == ["converted", "skipped"]
    same = convert(model, group_size=4, inplace=True)
    assert same is model and isinstance(model[3], DiagonalwiseConv2d)


def test_sgd_steps_give_identical_weights():
    torch.manual_seed(1)
    original = _mobilenet_like().train()
    converted = convert(original, group_size=4)
    data = [(torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))) for _ in range(3)]
    for model in (original, converted):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for x, y in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (name, a), (_, b) in zip(original.state_dict().items(), converted.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10, msg=name)


def _conv_weights(model: onnx.ModelProto):
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            yield group, weights[node.input[1]]


def _export(model, tmp_path, name, dynamo) -> Path:
    path = tmp_path / f"{name}.onnx"
    kwargs = {} if dynamo else {"opset_version": 17}
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=dynamo, input_names=["x"],
                      output_names=["y"], **kwargs)
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_matches_onnx_rewrite(tmp_path, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    # BatchNorm folded first (as for deployment): exporters fold it into a Conv whose weight is a
    # parameter, not into one computed from it, so an unfolded BatchNorm would stay a node.
    model = nn.Sequential(*[m for m in _mobilenet_like().float() if not isinstance(m, nn.BatchNorm2d)]).eval()
    converted = convert(model, group_size=8)
    rewritten = rewrite(_export(model, tmp_path, "original", dynamo), group_size=8).model
    exported = onnx.load(_export(converted, tmp_path, "converted", dynamo))
    if dynamo:
        # The dynamo exporter folds constants only up to 8192 input elements; the M=2 layer's
        # mask product is larger, so fold again without that limit.
        import onnxscript.optimizer

        exported = onnxscript.optimizer.optimize(exported, input_size_limit=2**24, output_size_limit=2**24)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in rewritten.graph.node]
    pairs = list(zip(_conv_weights(rewritten), _conv_weights(exported)))
    assert len(pairs) == 5
    for (group_a, weight_a), (group_b, weight_b) in pairs:
        assert group_a == group_b
        np.testing.assert_array_equal(weight_a, weight_b)  # the same block-diagonal initializer


def test_export_with_batchnorm_computes_the_same(tmp_path):
    from onnx_diagwise import validate

    model = _mobilenet_like().float().eval()
    converted = convert(model, group_size=8)
    report = validate(_export(model, tmp_path, "original", False), _export(converted, tmp_path, "converted", False))
    assert report.passed, [o.line() for o in report.outputs]


def test_import_without_torch_needs_no_torch():
    code = "import sys, onnx_diagwise; assert 'torch' not in sys.modules, 'torch was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_paper_benchmark_small(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_training

    result = paper_training.main(["--small", "--device", "cpu", "--out", str(tmp_path / "small")])
    assert [r["variant"] for r in result["training"]] == ["original", "G=8", "G=full"]
    assert result["training"][0]["speedup"] == 1.0
    for row in result["training"]:
        low, high = row["speedup_ci95"]
        assert low <= row["speedup"] <= high
    assert len(result["layers"]) == 13 and result["layers"][0]["channels"] == 8
    assert (tmp_path / "small.md").read_text().startswith("# MobileNet V1 training")


@pytest.mark.parametrize("extra", [["--amp", "bf16", "--channels-last", "--no-layers"], ["--amp", "fp16", "--no-layers"]])
def test_paper_benchmark_amp_paths_run(tmp_path, extra):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_training

    result = paper_training.main(["--small", "--device", "cpu", *extra, "--out", str(tmp_path / "amp")])
    assert result["config"]["amp"] == extra[1] and len(result["training"]) == 3
