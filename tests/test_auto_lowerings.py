"""The lowerings as candidates of 'auto' and as policies, on exported networks with a symbolic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import SAMPLE_DIR, assert_same_outputs
from onnx_diagwise import Selection, TuneOptions, inspect, revert, rewrite
from onnx_diagwise.reasons import Reason

CONVNEXT = SAMPLE_DIR / "convnext_block.onnx"
CONFORMER = SAMPLE_DIR / "conformer_conv1d.onnx"


class FormTimer:
    """Layer time 1 s as it is; FAVOURITE's form 0.4 s; every other form 2 s. A model's time falls
    by 0.01 s per Conv that is no longer the depthwise one."""

    def __init__(self, favourite: str):
        self.favourite, self.timed = favourite, []

    def layer(self, signature, models):
        self.timed.append(sorted(models))
        return {spec: 1.0 if spec == "1" else 0.4 if spec.startswith(self.favourite) else 2.0 for spec in models}

    def models(self, models):
        return [1.0 - 0.01 * sum(n.op_type == "Conv" and n.doc_string.startswith("onnx-diagwise") for n in m.graph.node)
                for m in models]

    def context(self):
        return {"provider": "fake"}


@pytest.mark.parametrize("model, favourite", [(CONVNEXT, "toeplitz"), (CONFORMER, "conv2d"),
                                              (CONFORMER, "polyphase:8")])
def test_auto_measures_the_lowerings_and_keeps_the_fastest(model, favourite):
    timer = FormTimer(favourite)
    result = rewrite(model, "auto", tune_options=TuneOptions(timer=timer, use_cache=False))
    [layer] = result.tuning.layers
    assert favourite in layer.times_ms and "1" not in layer.times_ms  # the forms, beside the G values
    assert any(spec.isdigit() for spec in layer.times_ms)
    assert layer.choice == favourite and result.tuning.choices == {layer.node: favourite}
    [node] = result.report.rewritten
    assert node.lowering == favourite.split(":")[0] and node.code == Reason.MEASURED
    assert_same_outputs(onnx.load(model), result.model)
    assert revert(result.model).model.SerializeToString() == onnx.load(model).SerializeToString()


def test_a_lowering_that_does_not_fit_the_model_is_no_candidate():
    """toeplitz needs the height in the model; the conformer is 1-D: it is said why, not measured."""
    timer = FormTimer("toeplitz")
    report = rewrite(CONFORMER, "auto", tune_options=TuneOptions(timer=timer, use_cache=False)).tuning
    [layer] = report.layers
    assert "toeplitz" not in layer.times_ms and "toeplitz" in layer.skipped_forms
    assert "1-D" in layer.skipped_forms["toeplitz"] or "2-D or 3-D" in layer.skipped_forms["toeplitz"]


def _exported(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 1)
            self.dw = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
            self.dw_strided = torch.nn.Conv2d(16, 32, 5, stride=2, padding=2, groups=16)  # depth multiplier 2
            self.seq = torch.nn.Conv1d(32, 32, 9, padding=4, groups=32)

        def forward(self, x):
            y = self.dw_strided(torch.relu(self.dw(self.stem(x))))
            n, c, h, w = y.shape
            return self.seq(y.reshape(n, c, h * w))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(2, 3, 24, 20),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load(path)


@pytest.mark.parametrize("policy", ["toeplitz", "polyphase:4", "polyphase:8:2d", "conv2d"])
def test_each_lowering_on_an_exported_network_with_a_symbolic_batch(tmp_path, policy):
    model = _exported(tmp_path)
    result = rewrite(model, policy)
    lowered = {n.name for n in result.report.rewritten}
    refused = {n.name: n.reason for n in result.report.skipped}
    assert lowered, refused  # each lowering applies to some layer of this network
    assert all(n.code == Reason.LOWERING_REFUSED for n in result.report.skipped)
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # the batch stays symbolic in the lowered model
        x = rng.standard_normal((batch, 3, 24, 20)).astype(np.float32)
        assert_same_outputs(model, result.model, feeds={"x": x})
    assert revert(result.model).model.SerializeToString() == model.SerializeToString()
    assert {n.name for n in inspect(result.model).nodes if n.code == Reason.LOWERED} == lowered


@pytest.mark.parametrize("policy", ["polyphase:16:fold", "polyphase:8:2d:fold", "polyphase:4"])
def test_polyphase_on_the_exported_conformer_with_a_symbolic_time(policy):
    """The time axis is symbolic: padded, folded and cut at run time for any length."""
    model = onnx.load(CONFORMER)
    result = rewrite(model, policy)
    assert [n.action for n in result.report.nodes] == ["rewritten"]
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(2)
    for batch, time in ((1, 50), (2, 128), (3, 131)):
        x = rng.standard_normal((batch, time, 144)).astype(np.float32)
        assert_same_outputs(model, result.model, feeds={"input": x})
    assert revert(result.model).model.SerializeToString() == model.SerializeToString()
    [listed] = inspect(result.model).nodes
    assert (listed.code, listed.form_label) == (Reason.LOWERED, result.report.nodes[0].form_label)


def test_pins_choose_a_lowering_per_node(tmp_path):
    model = _exported(tmp_path)
    names = [n.name for n in inspect(model).nodes]
    pins = {names[0]: "toeplitz", names[1]: 4}
    result = rewrite(model, 1, Selection(node_group_sizes=pins))
    by_name = {n.name: n for n in result.report.nodes}
    assert by_name[names[0]].lowering == "toeplitz" and by_name[names[1]].group_size == 4
    assert by_name[names[0]].code == Reason.PINNED
    assert_same_outputs(model, result.model, feeds={"x": np.ones((2, 3, 24, 20), np.float32)})
