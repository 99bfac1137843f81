"""Every field of the reports, pinned: what inspect, rewrite and revert say about each node
(decision, reason code, geometry, weight source, sizes, FLOPs) and the before/after statistics,
for every sample model and every form, in tests/golden/reports.json; the wording of the reasons
and warnings, which people read, in tests/golden/wording.json, so that rewording a message
changes only that file.  A change in any of them must be a deliberate one: regenerate with
ONNX_DIAGWISE_UPDATE_GOLDEN=1 and review the diff."""

import json
import os
from pathlib import Path

import onnx
import pytest

from edge_cases import EDGE_CASES
from helpers import (FORMS, SAMPLE_DIR, conv_transpose_model, convinteger_model, fused_conv_model, qdq_model,
                     qlinearconv_model)
from onnx_diagwise import Selection, inspect, revert, rewrite

GOLDEN = Path(__file__).resolve().parent / "golden" / "reports.json"
WORDING = Path(__file__).resolve().parent / "golden" / "wording.json"
UPDATE = os.environ.get("ONNX_DIAGWISE_UPDATE_GOLDEN") == "1"

CASES = {f"sample:{p.stem}": (lambda p=p: onnx.load(p)) for p in sorted(SAMPLE_DIR.glob("*.onnx"))}
CASES.update({f"form:{name}": make for name, make in sorted(FORMS.items())})
CASES.update({
    "form:QLinearConv per-tensor uint8": lambda: qlinearconv_model(per_channel=False, wtype=__import__("numpy").uint8),
    "form:QDQ per-tensor": lambda: qdq_model(per_channel=False),
    "form:ConvTranspose m1": lambda: conv_transpose_model(m=1),
    "form:ConvInteger c16": lambda: convinteger_model(c=16),
    "form:FusedConv c8": lambda: fused_conv_model(c=8),
    "form:QLinearConv m2 c16": lambda: qlinearconv_model(c=16, m=2),
})
CASES.update({f"edge:{name}": make for name, make in sorted(EDGE_CASES.items())})


def _report(report) -> dict:
    data = report.to_dict()
    data.pop("elapsed_s")
    return data


def _split(reports: dict) -> tuple[dict, dict]:
    """(the reports without their prose, the prose: each node's reason and the warnings)."""
    fields, wording = {}, {}
    for name, report in reports.items():
        report = json.loads(json.dumps(report))  # tuples as lists, as in the file
        wording[name] = {"reasons": [[n["name"], n.pop("reason")] for n in report["nodes"]],
                         "warnings": report.pop("warnings")}
        fields[name] = report
    return fields, wording


def _reports(make) -> dict:
    model = make()
    rewritten = rewrite(model, group_size=8)
    toeplitz = rewrite(model, group_size="toeplitz")
    return {
        "inspect paper": _report(inspect(model, "paper")),
        "inspect full, min_channels 16, exclude 'b'": _report(inspect(model, "full", Selection(exclude="b",
                                                                                               min_channels=16))),
        "rewrite 8": _report(rewritten.report),
        "inspect the rewrite": _report(inspect(rewritten.model)),
        "revert the rewrite": _report(revert(rewritten.model).report),
        "rewrite full": _report(rewrite(model, group_size="full").report),
        "rewrite toeplitz": _report(toeplitz.report),
        "inspect the toeplitz rewrite": _report(inspect(toeplitz.model)),
        "revert the toeplitz rewrite": _report(revert(toeplitz.model).report),
        "rewrite polyphase:4": _report(rewrite(model, group_size="polyphase:4").report),
    }


def _golden(path: Path = GOLDEN) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, case: str, value: dict) -> None:
    golden = _golden(path)
    golden[case] = value
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(dict(sorted(golden.items())), indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_reports_match_the_reviewed_ones(case):
    fields, wording = _split(_reports(CASES[case]))
    if UPDATE:
        _write(GOLDEN, case, fields)
        _write(WORDING, case, wording)
        pytest.skip("golden report written")
    for path, actual in ((GOLDEN, fields), (WORDING, wording)):
        expected = _golden(path).get(case)
        assert expected is not None, f"no golden report for {case} in {path.name}: run with ONNX_DIAGWISE_UPDATE_GOLDEN=1"
        for key in expected:
            assert actual[key] == expected[key], f"{case}: {key} ({path.name})"
        assert set(actual) == set(expected)


def test_every_golden_case_still_exists():
    assert set(_golden()) == set(CASES) == set(_golden(WORDING))
