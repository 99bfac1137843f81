"""The on-disk cache of layer timings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..commit import locked, write_text
from ..errors import DiagwiseError
from ..plan import parse_choice
from .layers import LayerSignature

log = logging.getLogger("onnx_diagwise")


def default_cache_dir() -> Path:
    if os.environ.get("ONNX_DIAGWISE_CACHE_DIR"):
        return Path(os.environ["ONNX_DIAGWISE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx-diagwise"


# A layer's time in seconds outside these bounds is no measurement onnxruntime can make.
PLAUSIBLE_SECONDS = (1e-7, 3600.0)


def _valid(entry: Any) -> dict[str, float] | None:
    """A cache entry as {form: seconds}: '1' (the original) present, every form a G or a lowering
    as parse_choice spells it, and every time a plausible number of seconds; None when anything is off."""
    if not isinstance(entry, dict) or "1" not in entry:
        return None
    times = {}
    for spec, t in entry.items():
        try:
            if not isinstance(spec, str) or parse_choice(spec).spec != spec:
                return None
        except DiagwiseError:
            return None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (
                PLAUSIBLE_SECONDS[0] <= t <= PLAUSIBLE_SECONDS[1]):  # NaN fails too
            return None
        times[spec] = float(t)
    return times


class TuneCache:
    """Layer timings on disk, one JSON file; None disables caching.

    The cache only saves time: an entry that is not a plausible measurement is dropped with a
    warning, never trusted; a damaged or unreadable file, or a folder that cannot be written,
    makes tuning measure without it (with a warning).  Writers merge their new entries into what
    is on disk under a lock, so concurrent tuning runs lose nothing."""

    def __init__(self, directory: Path | None):
        self.path = Path(directory) / "tune-cache.json" if directory is not None else None
        self.entries: dict[str, dict[str, float]] = {}
        self.new: dict[str, dict[str, float]] = {}  # measured by this run, merged into the file on save
        if self.path is not None:
            self.entries = self._read(warn=True)

    def _read(self, warn: bool) -> dict[str, dict[str, float]]:
        if not self.path.exists():
            return {}
        try:
            stored = json.loads(self.path.read_text())
            entries = stored.get("entries") if isinstance(stored, dict) else None
            if not isinstance(entries, dict):
                raise ValueError("no entries")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if warn:
                log.warning(f"the tuning cache '{self.path}' cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                            "measuring without it")
            return {}
        valid = {key: times for key, times in ((k, _valid(v)) for k, v in entries.items()) if times is not None}
        if warn and len(valid) < len(entries):
            log.warning(f"dropped {len(entries) - len(valid)} damaged entr{'y' if len(entries) - len(valid) == 1 else 'ies'} "
                        f"of the tuning cache '{self.path}' (those layers are measured again)")
        return valid

    @staticmethod
    def key(context: dict[str, Any], signature: LayerSignature, sizes: list[int]) -> str:
        text = json.dumps({"context": context, "layer": signature.key(), "sizes": sizes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict[str, float] | None:
        entry = self.entries.get(key)
        return dict(entry) if entry else None

    def put(self, key: str, times: dict[str, float]) -> None:
        valid = _valid({str(spec): t for spec, t in times.items()})
        if valid is not None:  # a measurement that is no measurement is not kept
            self.entries[key] = self.new[key] = valid

    def save(self) -> None:
        """Merge this run's entries into the file (other runs' entries kept); warn, never fail."""
        if self.path is None or not self.new:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.path.parent):
                merged = {**self._read(warn=False), **self.new}
                write_text(self.path, json.dumps({"version": 1, "entries": merged}))
            self.entries = merged
        except OSError as exc:
            log.warning(f"cannot write the tuning cache '{self.path}': {exc.strerror or exc}; "
                        "the timings of this run are not kept")


def clear_cache(directory: Path | None = None) -> Path | None:
    """Delete the cache file; return its path if there was one."""
    path = (directory or default_cache_dir()) / "tune-cache.json"
    if path.exists():
        path.unlink()
        return path
    return None


# ---------------------------------------------------------------- results
