"""The bundled sample models: reproducible, and every one rewrites to the same outputs."""

import importlib.util

import onnx
import pytest

from helpers import SAMPLE_DIR, assert_same_outputs, random_inputs
from onnx_diagwise import rewrite

SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


def _builder():
    spec = importlib.util.spec_from_file_location("build_samples", SAMPLE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_samples_are_reproducible(tmp_path):
    built = _builder().build_all(tmp_path)
    assert sorted(p.name for p in built) == [p.name for p in SAMPLES]
    for path in built:
        assert path.read_bytes() == (SAMPLE_DIR / path.name).read_bytes(), path.name


@pytest.mark.parametrize("policy", ["paper", 4, "full"])
@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_rewrites_exactly(path, policy):
    model = onnx.load(path)
    result = rewrite(path, group_size=policy)
    assert result.report.rewritten, "every sample has depthwise convs"
    assert not result.report.skipped
    assert result.report.after.depthwise_convs == 0
    onnx.checker.check_model(result.model, full_check=True)
    dtype = "float16" if "fp16" in path.name else "float32"
    for cond in (True, False):  # both If branches where there is one
        assert_same_outputs(model, result.model, dtype, feeds=random_inputs(model, cond=cond))
