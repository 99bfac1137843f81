"""The on-disk cache of layer timings."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import DiagwiseError
from .layers import LayerSignature

def default_cache_dir() -> Path:
    if os.environ.get("ONNX_DIAGWISE_CACHE_DIR"):
        return Path(os.environ["ONNX_DIAGWISE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx-diagwise"


class TuneCache:
    """Layer timings on disk, one JSON file; None disables caching."""

    def __init__(self, directory: Path | None):
        self.path = Path(directory) / "tune-cache.json" if directory is not None else None
        self.entries: dict[str, dict[str, float]] = {}
        if self.path is not None and self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text()).get("entries", {})
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is only a cache: start again

    @staticmethod
    def key(context: dict[str, Any], signature: LayerSignature, sizes: list[int]) -> str:
        text = json.dumps({"context": context, "layer": signature.key(), "sizes": sizes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict[int, float] | None:
        entry = self.entries.get(key)
        return {int(g): t for g, t in entry.items()} if entry else None

    def put(self, key: str, times: dict[int, float]) -> None:
        self.entries[key] = {str(g): t for g, t in times.items()}

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tune-cache.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise DiagwiseError(f"cannot write the tuning cache '{self.path}': {exc.strerror or exc}") from None


def clear_cache(directory: Path | None = None) -> Path | None:
    """Delete the cache file; return its path if there was one."""
    path = (directory or default_cache_dir()) / "tune-cache.json"
    if path.exists():
        path.unlink()
        return path
    return None


# ---------------------------------------------------------------- results
