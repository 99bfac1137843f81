"""The check against the runtime's own noise still catches every kind of real error, on every
sample model: a weight channel swapped, one channel's filter placed off the diagonal, one weight
off by a little (outputs scaled by 0.99: test_validate.py)."""

from __future__ import annotations

import onnx
import pytest

from helpers import KINDS, SAMPLE_DIR, planted, targets
from onnx_diagwise import rewrite, validate

SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


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
