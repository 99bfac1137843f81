"""A text detector with a sigmoid head, exported from PyTorch: on random inputs its probability map
sits near 0, where onnxruntime's own results move by about 1e-7 between configurations.  The check
must pass its correct rewrite and still catch every kind of real error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import KINDS, planted, scaled_outputs, targets
from onnx_diagwise import CheckFailed, rewrite, rewrite_file, validate
from onnx_diagwise.validation import NOISE_FACTOR

torch = pytest.importorskip("torch")


def _detector(path, blocks: int = 4, channels: int = 48) -> onnx.ModelProto:
    """Depthwise blocks (C=48: G=24 under the default policy, whose grouped kernel sums in another
    order than the depthwise one), a 3x3 head, a sigmoid.  BatchNorm statistics are those of the
    inputs, as after training, and the logits spread about 1 around -9, as a detector's do on an
    image without text."""
    from torch import nn

    def block(c):
        return nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU())

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), *[block(channels) for _ in range(blocks)])
    head = nn.Conv2d(channels, 1, 3, 1, 1)
    net = nn.Sequential(body, head, nn.Sigmoid())
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for norm in net.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.momentum = None  # the running statistics become those of the batch
        net.train()(x)
        net.eval()
        head.weight /= float(head(body(x)).std())
        head.bias -= float(head(body(x)).mean()) + 9
    torch.onnx.export(net, x[:1], str(path), input_names=["image"], output_names=["prob"], dynamo=False,
                      opset_version=17)
    return onnx.load(path)


def _swapped(result):
    """RESULT with the first two channels of its last rewritten layer's weight swapped."""
    last = [n.name for n in result.report.nodes if n.action == "rewritten"][-1]
    node = next(n for n in result.model.graph.node if n.name == last)
    tensor = next(t for t in result.model.graph.initializer if t.name == node.input[1])
    w = onnx.numpy_helper.to_array(tensor).copy()
    w[[0, 1]] = w[[1, 0]]
    tensor.CopyFrom(onnx.numpy_helper.from_array(w, tensor.name))
    return result


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "detector.onnx"
    return path, _detector(path)


def test_the_correct_rewrite_of_a_sigmoid_detector_passes_the_check(detector, tmp_path):
    path, model = detector
    written = rewrite_file(path, tmp_path / "out.onnx")  # the default check; raises CheckFailed on a false alarm
    [output] = written.validation.outputs
    assert output.passed and output.scale < 1e-2  # the probabilities sit near 0
    assert 0 < output.max_abs <= NOISE_FACTOR * output.noise  # the rewrite moved it, by the runtime's own noise
    assert output.atol == pytest.approx(NOISE_FACTOR * output.noise)  # the noise floor, not 1e-5 x the scale, set atol


@pytest.mark.parametrize("kind", ["scaled", *KINDS])
def test_every_kind_of_real_error_is_still_caught_on_the_detector(detector, kind, monkeypatch):
    path, model = detector
    candidates = ([scaled_outputs(rewrite(model).model, 0.99)] if kind == "scaled" else
                  [planted(model, kind, node, monkeypatch) for node in targets(model, kind)])
    for candidate in candidates:
        report = validate(model, candidate)
        [output] = report.outputs
        assert not output.passed and output.max_abs > NOISE_FACTOR * output.noise, output.line()


def test_a_failed_check_says_how_far_above_the_noise_and_what_to_do(detector, tmp_path, monkeypatch):
    path, model = detector
    from onnx_diagwise import files

    real = files.api._rewrite
    monkeypatch.setattr(files.api, "_rewrite", lambda *args, **kwargs: _swapped(real(*args, **kwargs)))
    with pytest.raises(CheckFailed) as caught:
        rewrite_file(path, tmp_path / "out.onnx")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("the rewritten model differs from the original on CPUExecutionProvider; nothing "
                               "written to")
    assert lines[1].startswith("FAILED | output 'prob' | ") and "noise floor" in lines[1]
    assert "x the runtime's own noise floor" in lines[2] and "likely a real difference" in lines[2]
    assert lines[3].startswith("what to do: run the check on real inputs (InputOptions.data); or allow "
                               "differences of this size (atol={'prob': ")
    assert lines[3].endswith("; or skip the check (check=False)") and len(lines) == 4
    assert not (tmp_path / "out.onnx").exists()
