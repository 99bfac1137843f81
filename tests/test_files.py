"""Each command's whole job in the library (onnx_diagwise.files), as the command line runs it."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

import onnx_diagwise
from helpers import SAMPLE, SAMPLE_DIR, digest
from onnx_diagwise import (CheckFailed, CheckOptions, DiagwiseError, InputOptions, TuneOptions, bench_file,
                           inspect_file, revert_file, rewrite_file, tune_file, validate_file)
from onnx_diagwise.errors import UnsizedDims
from onnx_diagwise.runtime import RuntimeConfig

CONFORMER = SAMPLE_DIR / "conformer_conv1d.onnx"  # input [N, T, 144]: the time dim is symbolic


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


def test_inspect_file_counts_the_flops_at_the_sizes_it_reports():
    found = inspect_file(CONFORMER, 8, inputs=InputOptions(batch=2, dims={"T": 50}))
    assert found.input_shapes.shapes == {"input": [2, 50, 144]}
    assert found.report.rewritten and all(n.flops_before and n.flops_after > n.flops_before
                                          for n in found.report.rewritten)
    data = found.to_dict()
    assert list(data)[:2] == ["model", "input_shapes"] and data["model"] == str(CONFORMER)
    assert data["input_shapes"]["shapes"] == {"input": [2, 50, 144]} and data["summary"]["planned"] == 1
    wider = inspect_file(CONFORMER, 8, inputs=InputOptions(batch=4, dims={"T": 50})).report.rewritten[0]
    assert wider.flops_before == found.report.rewritten[0].flops_before  # FLOPs are per sample


def test_inspect_file_works_when_the_dims_cannot_be_sized(monkeypatch, caplog):
    from onnx_diagwise import files

    def unsized(model, options, config=None):
        raise UnsizedDims("symbolic dims 'input' dim 1 ('T') got no size", "InputOptions.shapes")

    monkeypatch.setattr(files, "with_input_shapes", unsized)
    with caplog.at_level("INFO", logger="onnx_diagwise"):
        found = inspect_file(CONFORMER, "full")
    assert found.input_shapes is None and found.to_dict()["input_shapes"] is None
    assert [n.action for n in found.report.nodes] == ["rewrite"] and found.report.nodes[0].flops_before is None
    assert "FLOPs not counted: symbolic dims 'input' dim 1 ('T') got no size" in caplog.text


def test_validate_file_compares_with_the_sizes_it_reports(tmp_path):
    rewritten = tmp_path / "r.onnx"
    rewrite_file(SAMPLE, rewritten, group_size=8, check=False)
    result = validate_file(SAMPLE, rewritten, CheckOptions(runs=2, inputs=InputOptions(batch=3)), seed=4)
    assert result.report.passed and result.report.runs == 2
    assert result.input_shapes.shapes == {"input": [3, 16, 56, 56]}
    data = result.to_dict()
    assert list(data)[:4] == ["original", "candidate", "input_shapes", "passed"]
    assert (data["original"], data["candidate"]) == (str(SAMPLE), str(rewritten))
    assert validate_file(SAMPLE, rewritten).report.runs == 3  # validate's default, not the check's one run
    with pytest.raises(DiagwiseError, match="does not exist"):
        validate_file(SAMPLE, tmp_path / "missing.onnx")


def test_bench_file_names_each_model_by_its_path(tmp_path):
    result = bench_file([SAMPLE, SAMPLE], inputs=InputOptions(batch=2), warmup=0, iterations=2)
    assert [m.name for m in result.report.models] == [str(SAMPLE)] * 2 and result.report.batch == 2
    assert result.report.environment["rounds"] == 2 and result.report.profiles == []
    data = result.to_dict()
    assert list(data)[0] == "input_shapes" and data["input_shapes"]["shapes"] == {"input": [2, 16, 56, 56]}
    with pytest.raises(DiagwiseError, match="does not exist"):
        bench_file([SAMPLE, tmp_path / "missing.onnx"], iterations=1)


class _KeepEveryLayer:
    """A timer under which the original form of every layer is the fastest."""

    def layer(self, signature, models):
        return {spec: 1.0 if spec == "1" else 2.0 for spec in models}

    def models(self, models):
        return [1.0 for _ in models]

    def context(self):
        return {"provider": "fake", "device": "test device"}


def test_tune_file_sizes_the_inputs_once_and_reports_them():
    options = TuneOptions(inputs=InputOptions(batch=2, dims={"T": 40}), timer=_KeepEveryLayer(), use_cache=False)
    result = tune_file(CONFORMER, options)
    assert result.input_shapes.shapes == {"input": [2, 40, 144]}
    assert [layer.rewritten for layer in result.report.layers] == [False]
    assert result.report.layers[0].input_shape == [2, 144, 40]  # the layer measured at the sizes reported
    data = result.to_dict()
    assert list(data)[:2] == ["model", "input_shapes"] and data["model"] == str(CONFORMER)
