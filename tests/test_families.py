"""benchmarks/families.py: the large-kernel families build with random weights, export to ONNX, compute
in onnxruntime what they compute in PyTorch, and have the published depthwise convs and sizes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the families are PyTorch modules: torch is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import families  # noqa: E402

from onnx_diagwise import inspect  # noqa: E402

# Kernels of the depthwise convs each family must have (the reason it is in the benchmark).
KERNELS = {
    "conformer": {(31,)},
    "wav2vec2_conformer": {(31,)},
    "mixnet_s": {(3, 3), (5, 5), (7, 7), (9, 9), (11, 11)},
    "convmixer_1536_20": {(9, 9)},
    "focalnet_large_fl4": {(3, 3), (5, 5), (7, 7), (9, 9)},
    "inception_next_tiny": {(3, 3), (1, 11), (11, 1)},
    "edgenext_small": {(3, 3), (5, 5), (7, 7), (9, 9)},
    "vocos": {(7,)},
}
# Parameters of the published models (timm's model cards), for the plain forms at full size.
PUBLISHED_PARAMS = {"convmixer_1536_20": 51.63e6, "edgenext_small": 5.59e6, "inception_next_tiny": 28.06e6}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_tiny_family_exports_and_computes_the_same_in_onnxruntime(name, tmp_path):
    module, source = families.build(name, "plain", tiny=True)
    assert source == "plain PyTorch (benchmarks/families.py)"
    convs = families.depthwise_convs(module)
    assert {k for _, _, k in convs} == KERNELS[name]
    path = families.onnx_model(name, module, "float32", tmp_path, tiny=True)
    x = families.example_input(name, 2, tiny=True)  # batch 2: the exported batch dim is symbolic
    with torch.no_grad():
        expected = module(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    report = inspect(str(path))
    planned = [n for n in report.nodes if n.action == "rewrite"]
    assert len(planned) == len(convs)  # every depthwise conv of the module is found in the export


def test_same_seed_same_weights_and_other_seed_other_weights():
    a, _ = families.build("vocos", "plain", tiny=True, seed=1)
    b, _ = families.build("vocos", "plain", tiny=True, seed=1)
    c, _ = families.build("vocos", "plain", tiny=True, seed=2)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_full_size_plain_forms_have_the_published_parameter_counts(name):
    module = families._plain(name, tiny=False)
    params = sum(p.numel() for p in module.parameters())
    assert abs(params - PUBLISHED_PARAMS[name]) <= 0.005 * PUBLISHED_PARAMS[name]


def test_full_size_large_kernel_layers_are_the_published_ones():
    convmixer = families.depthwise_convs(families._plain("convmixer_1536_20", tiny=False))
    assert convmixer == [(f"blocks.{i}.dw.0", 1536, (9, 9)) for i in range(20)]
    conformer = families.depthwise_convs(families._plain("conformer", tiny=False))
    assert [(c, k) for _, c, k in conformer] == [(512, (31,))] * 16


def test_unknown_family_and_source_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown family 'nope'; known: conformer"):
        families.build("nope")
    with pytest.raises(ValueError, match="source must be auto, package or plain"):
        families.build("vocos", "pypi")


@pytest.mark.parametrize("name", ["conformer", "wav2vec2_conformer", "mixnet_s"])
def test_package_form_when_the_package_is_installed(name, tmp_path):
    package = families.FAMILIES[name].package
    if importlib.util.find_spec(package) is None or families.package_problem(name):
        pytest.skip(f"{package} is not installed here: {families.package_problem(name)}")
    module, source = families.build(name, "package", tiny=True)
    assert source.startswith(package)
    assert {k for _, _, k in families.depthwise_convs(module)} & KERNELS[name]
    path = families.onnx_model(name, module, "float32", tmp_path, tiny=True)
    x = families.example_input(name, 1, tiny=True) if name != "mixnet_s" else torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = module(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_package_source_without_the_package_says_why():
    if not families.package_problem("mixnet_s"):
        pytest.skip("timm imports here")
    with pytest.raises(RuntimeError, match="timm does not import"):
        families.build("mixnet_s", "package", tiny=True)
