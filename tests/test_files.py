"""rewrite_file / revert_file: the whole job in the library, as the command line runs it."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

import onnx_diagwise
from helpers import SAMPLE, digest
from onnx_diagwise import CheckFailed, CheckOptions, revert_file, rewrite_file
from onnx_diagwise.runtime import RuntimeConfig


def test_rewrite_file_checks_and_writes(tmp_path):
    before = digest(SAMPLE)
    written = rewrite_file(SAMPLE, tmp_path / "out.onnx", group_size=8)
    assert written.modified and written.validation.passed and written.data_path is None
    assert written.file_bytes_after == (tmp_path / "out.onnx").stat().st_size
    assert written.to_dict(SAMPLE)["check"]["passed"] and digest(SAMPLE) == before
    back = revert_file(tmp_path / "out.onnx", tmp_path / "back.onnx")
    assert back.modified and back.validation.passed
    assert [n.action for n in back.report.nodes] == ["reverted"] * len(back.report.nodes)


def test_no_check_means_no_validation(tmp_path):
    written = rewrite_file(SAMPLE, tmp_path / "out.onnx", check=False)
    assert written.validation is None and written.input_shapes is None and written.modified
    unchanged = rewrite_file(SAMPLE, tmp_path / "same.onnx", group_size=1)
    assert not unchanged.modified and unchanged.validation is None  # nothing to check
    assert unchanged.report.warnings and "nothing rewritten" in unchanged.report.warnings[0]


def test_a_failed_check_raises_with_the_report_and_writes_nothing(tmp_path, monkeypatch):
    from onnx_diagwise import files

    real = files.api._rewrite

    def planted(*args, **kwargs):  # a rewrite whose first expanded weight is off by 1%
        result = real(*args, **kwargs)
        first = next(n.name for n in result.report.nodes if n.action == "rewritten")
        weight = next(node.input[1] for node in result.model.graph.node if node.name == first)
        tensor = next(t for t in result.model.graph.initializer if t.name == weight)
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * np.float32(1.01),
                                                     tensor.name))
        return result

    monkeypatch.setattr(files.api, "_rewrite", planted)
    with pytest.raises(CheckFailed) as caught:
        rewrite_file(SAMPLE, tmp_path / "out.onnx", check=CheckOptions(runtime=RuntimeConfig("cpu")))
    assert caught.value.validation is not None and not caught.value.validation.passed
    assert not (tmp_path / "out.onnx").exists() and list(tmp_path.iterdir()) == []


def test_no_function_shadows_its_module():
    for name in ("tuning", "reverter", "files", "dims", "validation", "bench", "api"):
        module = importlib.import_module(f"onnx_diagwise.{name}")
        assert module.__name__ == f"onnx_diagwise.{name}"
    assert callable(onnx_diagwise.tune) and callable(onnx_diagwise.revert)
