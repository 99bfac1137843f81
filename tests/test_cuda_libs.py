"""Finding the CUDA / cuDNN libraries of nvidia-* wheels wherever pip put them (fake folder trees)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import _ctypes
import pytest

from onnx_diagwise import cuda_libs, runtime
from onnx_diagwise.cuda_libs import (cuda_library_names, find_cuda_libraries, preload_cuda_libraries,
                                     prepare_gpu_provider, search_roots)

NAMES = cuda_library_names(13)
REAL_ELF = Path(_ctypes.__file__)  # any loadable shared object stands in for a CUDA library


def put(root: Path, package: str, name: str, real: bool = True) -> Path:
    folder = root / "nvidia" / package / "lib"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if real:
        shutil.copy(REAL_ELF, path)
    else:
        path.write_bytes(b"not a shared library")
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    preload_cuda_libraries.cache_clear()
    yield
    preload_cuda_libraries.cache_clear()


def test_names_follow_the_cuda_major_version():
    assert cuda_library_names(13) == ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10",
                                      "libcudart.so.13", "libcudnn.so.9"]
    assert "libcudart.so.12" in cuda_library_names(12)


def test_first_root_holding_a_library_wins(tmp_path):
    first, second = tmp_path / "venv-a", tmp_path / "venv-b"
    put(first, "cu13", "libcublas.so.13")
    put(second, "cu13", "libcublas.so.13")
    put(second, "cudnn", "libcudnn.so.9")
    put(second, "cu12", "libcudart.so.12")  # another CUDA major does not count
    libraries = find_cuda_libraries(NAMES, [first, second])
    assert libraries.found["libcublas.so.13"] == first / "nvidia/cu13/lib/libcublas.so.13"
    assert libraries.found["libcudnn.so.9"] == second / "nvidia/cudnn/lib/libcudnn.so.9"
    assert libraries.missing == ["libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13"]
    assert libraries.folders == [first / "nvidia/cu13/lib", second / "nvidia/cudnn/lib"]


def test_cuda12_layout_one_package_per_library(tmp_path):
    for package, name in [("cublas", "libcublasLt.so.12"), ("cublas", "libcublas.so.12"),
                          ("curand", "libcurand.so.10"), ("cuda_runtime", "libcudart.so.12"),
                          ("cudnn", "libcudnn.so.9")]:
        put(tmp_path, package, name)
    libraries = find_cuda_libraries(cuda_library_names(12), [tmp_path])
    assert not libraries.missing
    assert len(libraries.folders) == 4


def test_search_roots_are_sys_path_entries_then_torch_once(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    roots = search_roots([str(a), str(tmp_path / "missing"), str(b), str(a), ""])
    assert roots[:2] == [a, b]
    try:
        spec = importlib.util.find_spec("torch")
    except ImportError:
        spec = None
    if spec is None or not spec.origin:  # no torch here: only the given entries
        assert roots[2:] == []
        return
    torch_site = Path(spec.origin).parent.parent
    assert roots[2:] == [torch_site]  # found without importing torch
    assert search_roots([str(torch_site)]) == [torch_site]


def test_search_roots_without_torch_are_the_path_entries(tmp_path, monkeypatch):
    a = tmp_path / "a"
    a.mkdir()
    monkeypatch.setattr(cuda_libs.importlib.util, "find_spec", lambda name: None)
    assert search_roots([str(a)]) == [a]


def test_preload_loads_every_library_and_logs_the_folder(tmp_path, caplog):
    staged = tmp_path / "site"
    for name in NAMES:
        put(staged, "cudnn" if "cudnn" in name else "cu13", name)
    with caplog.at_level(logging.INFO, logger="onnx_diagwise"):
        libraries = preload_cuda_libraries(13, (str(staged),))
    assert set(libraries.found) == set(NAMES) and not libraries.missing
    message = caplog.records[-1].getMessage()
    assert str(staged / "nvidia/cu13/lib") in message and str(staged / "nvidia/cudnn/lib") in message
    assert "(5 of 5)" in message


def test_a_library_that_does_not_load_is_missing(tmp_path):
    staged = tmp_path / "site"
    for name in NAMES:
        put(staged, "cu13", name, real=name != "libcudnn.so.9")
    libraries = preload_cuda_libraries(13, (str(staged),))
    if cuda_libs._loadable("libcudnn.so.9"):
        pytest.skip("this machine has cuDNN on its library path")
    assert libraries.missing == ["libcudnn.so.9"]
    assert "not found: libcudnn.so.9" in libraries.describe()


def test_prepare_names_the_missing_library(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    staged = tmp_path / "site"
    for name in NAMES[:-1]:
        put(staged, "cu13", name)
    ort = runtime.import_ort()
    monkeypatch.setattr(sys, "path", [str(staged)])
    monkeypatch.setattr(cuda_libs, "onnxruntime_cuda_major", lambda ort: 13)
    monkeypatch.setattr(cuda_libs.platform, "system", lambda: "Linux")
    if cuda_libs._loadable("libcudnn.so.9"):
        pytest.skip("this machine has cuDNN on its library path")
    problem = prepare_gpu_provider(ort)
    assert problem.startswith("libcudnn.so.9 not found in an nvidia/*/lib folder")


def test_cpu_builds_need_nothing():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    ort = runtime.import_ort()
    if cuda_libs.onnxruntime_cuda_major(ort) is not None:
        pytest.skip("onnxruntime-gpu is installed here")
    assert prepare_gpu_provider(ort) == ""
