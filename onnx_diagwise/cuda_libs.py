"""Find and load the CUDA / cuDNN shared libraries that onnxruntime's CUDA provider needs.

pip installs them as `nvidia-*` wheels (`site-packages/nvidia/<package>/lib/`), often in another
environment or folder than onnxruntime-gpu: beside torch, in a `pip --target` folder, in a
staged copy on `PYTHONPATH`.  `onnxruntime.preload_dlls()` looks only beside onnxruntime itself,
and the provider library has no search path of its own, so it fails to load and onnxruntime
falls back to the CPU.  Here every `sys.path` entry (and torch's site-packages, found without
importing torch) is searched, and each library found is loaded with RTLD_GLOBAL, so the
provider's own lookups by soname find it already loaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import platform
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("onnx_diagwise")


def cuda_library_names(cuda_major: int) -> list[str]:
    """The sonames the CUDA provider loads, in load order (cublas needs cublasLt).

    The provider links cublasLt, cublas, curand and cudart; it opens cuDNN when it first runs a
    convolution, which is every model this tool handles."""
    return [f"libcublasLt.so.{cuda_major}", f"libcublas.so.{cuda_major}", "libcurand.so.10",
            f"libcudart.so.{cuda_major}", "libcudnn.so.9"]


def search_roots(path_entries: list[str] | None = None) -> list[Path]:
    """Folders that may hold `nvidia/<package>/lib`: sys.path entries, then torch's site-packages."""
    roots = [Path(entry) for entry in (sys.path if path_entries is None else path_entries) if entry]
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent.parent)  # .../site-packages/torch/__init__.py
    unique: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in {r.resolve() for r in unique}:
            unique.append(root)
    return unique


@dataclass
class CudaLibraries:
    """Where each needed library was found (a file), or that it was not."""

    found: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)

    @property
    def folders(self) -> list[Path]:
        return sorted({path.parent for path in self.found.values()})

    def describe(self) -> str:
        where = ", ".join(str(f) for f in self.folders) or "none"
        text = f"CUDA libraries from {where} ({len(self.found)} of {len(self.found) + len(self.missing)})"
        return text + (f"; not found: {', '.join(self.missing)}" if self.missing else "")


def find_cuda_libraries(names: list[str], roots: list[Path]) -> CudaLibraries:
    """The first `ROOT/nvidia/*/lib/NAME` for each name, roots in order."""
    result = CudaLibraries(roots=list(roots))
    for name in names:
        hits = (hit for root in roots for hit in sorted(root.glob(f"nvidia/*/lib/{name}")))
        path = next(hits, None)
        if path is None:
            result.missing.append(name)
        else:
            result.found[name] = path
    return result


def onnxruntime_cuda_major(ort) -> int | None:
    """The CUDA major version an onnxruntime-gpu build was made for (None for CPU builds)."""
    try:
        from onnxruntime.capi.build_and_package_info import cuda_version  # type: ignore[import-not-found]
    except ImportError:
        cuda_version = getattr(ort, "cuda_version", "")
    head = str(cuda_version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def _loadable(name: str) -> bool:
    """Whether the system's default search (LD_LIBRARY_PATH, ldconfig) finds NAME."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


@lru_cache(maxsize=None)
def preload_cuda_libraries(cuda_major: int, path_entries: tuple[str, ...] | None = None) -> CudaLibraries:
    """Load every library the CUDA provider needs from the first nvidia-* wheel folder holding it.

    A library found nowhere is left to the system's search path; it is reported missing only
    if that does not find it either.  Runs once per process."""
    libraries = find_cuda_libraries(cuda_library_names(cuda_major),
                                    search_roots(list(path_entries) if path_entries is not None else None))
    for name, path in list(libraries.found.items()):
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            log.info("could not load %s: %s", path, exc)
            del libraries.found[name]
            libraries.missing.append(name)
    libraries.missing = [name for name in libraries.missing if not _loadable(name)]
    log.info(libraries.describe())
    return libraries


def prepare_gpu_provider(ort) -> str:
    """Make the CUDA libraries loadable before a GPU session; '' or a sentence saying what is missing."""
    if platform.system() != "Linux":
        try:  # onnxruntime's own search covers Windows' DLL layout
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - reported only if the provider then fails to load
            return f"onnxruntime.preload_dlls() failed: {exc}"
        return ""
    major = onnxruntime_cuda_major(ort)
    if major is None:
        return ""  # a build without CUDA: its own error says more
    libraries = preload_cuda_libraries(major)
    if not libraries.missing:
        return ""
    return (f"{', '.join(libraries.missing)} not found in an nvidia/*/lib folder of any sys.path entry or torch's "
            f"site-packages, nor on the system's library path (pip install the nvidia-* CUDA {major} and cuDNN 9 "
            "wheels, or put their folder on PYTHONPATH)")
