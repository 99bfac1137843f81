"""The check against the runtime's own noise still catches every kind of real error, on every
sample model: a weight channel swapped, one channel's filter placed off the diagonal, one weight
off by a little (outputs scaled by 0.99: test_validate.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import SAMPLE_DIR
from onnx_diagwise import rewrite, validate
from onnx_diagwise import rewriter as rewriter_module

KINDS = ("swapped", "off_diagonal", "weight_off")
# One weight off by this fraction of its layer's largest weight; float16 weights by 100x more, as
# float16's tolerance is 100x wider (1e-3 of the scale is one float16 step of the largest weight).
WEIGHT_OFF = {"float16": 1e-1}
WEIGHT_OFF_DEFAULT = 1e-3


def _kernels(conv, weight: np.ndarray, channel: int) -> tuple:
    """Index of the diagonal kernel(s) of input channel CHANNEL in CONV's expanded weight."""
    g = weight.shape[1] // (conv.multiplier if conv.transposed else 1)
    if conv.transposed:  # [C, G*M, k...]: row i, columns (i % G)*M ... + M
        start = (channel % g) * conv.multiplier
        return channel, slice(start, start + conv.multiplier)
    rows = np.arange(channel * conv.multiplier, (channel + 1) * conv.multiplier)  # [C*M, G, k...]
    return rows, channel % g


def _plant(kind: str, conv, weight: np.ndarray) -> np.ndarray:
    w = weight.copy()
    fill = 0 if conv.zero_point is None else np.asarray(conv.zero_point).reshape(-1)[0]
    if kind == "swapped":  # the filters of input channels 0 and 1 trade places
        first, second = _kernels(conv, w, 0), _kernels(conv, w, 1)
        w[first], w[second] = weight[second], weight[first]
    elif kind == "off_diagonal":  # channel 0's filter reads its neighbour in the group
        rows, column = _kernels(conv, w, 0)
        if conv.transposed:
            w[0, column.start + conv.multiplier:column.stop + conv.multiplier] = weight[0, column]
        else:
            w[rows, column + 1] = weight[rows, column]
        w[rows, column] = fill
    elif kind == "weight_off":  # the largest weight of the layer, off by a little
        off = np.ones(w.shape[:2], bool)
        for channel in range(conv.channels):
            off[_kernels(conv, w, channel)] = False
        values = np.where(off.reshape(off.shape + (1,) * (w.ndim - 2)), 0, np.abs(w.astype(np.float64) - fill))
        at = np.unravel_index(int(np.argmax(values)), w.shape)
        if w.dtype.kind in "iu":  # one quantization step: the smallest change there is
            w[at] += -1 if w[at] == np.iinfo(w.dtype).max else 1
        else:
            w[at] += w.dtype.type(WEIGHT_OFF.get(w.dtype.name, WEIGHT_OFF_DEFAULT) * values.max())
            assert w[at] != weight[at]
    return w


def planted(model: onnx.ModelProto, kind: str, node: str, monkeypatch) -> onnx.ModelProto:
    """The default rewrite of MODEL with one error of KIND planted in NODE's block-diagonal weight."""
    real, done = rewriter_module.expand, []

    def expand(conv, group_size):
        weight = real(conv, group_size)
        if conv.name != node:
            return weight
        done.append(node)
        return _plant(kind, conv, weight)

    with monkeypatch.context() as patch:
        patch.setattr(rewriter_module, "expand", expand)
        result = rewrite(model)
    assert done == [node]
    return result.model


SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


def targets(model: onnx.ModelProto, kind: str) -> list[str]:
    """The first rewritten node, and for the wiring errors the last one too.  A weight off by a
    little is planted in the first layer: one near the model's random inputs, so not saturated
    (a channel that a later ReLU always zeroes hides any change of its weights)."""
    nodes = [n.name for n in rewrite(model).report.nodes if n.action == "rewritten"]
    return list(dict.fromkeys([nodes[0]] if kind == "weight_off" else [nodes[0], nodes[-1]]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_planted_errors_are_caught_on_every_sample(path, kind, monkeypatch):
    model = onnx.load(path)
    clean = rewrite(model).model.SerializeToString()
    checked = 0
    for node in targets(model, kind):
        candidate = planted(model, kind, node, monkeypatch)
        if candidate.SerializeToString() == clean:  # a weight shared with an earlier node: its copy is reused
            continue
        report = validate(model, candidate)  # 3 input sets: if_branch takes each branch
        assert not report.passed, (node, [o.line() for o in report.outputs])
        checked += 1
    assert checked
