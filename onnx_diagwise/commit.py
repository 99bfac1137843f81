"""Put a model file and its external data file in place as one, whatever happens meanwhile.

A model is written into a private temporary folder beside OUT, then committed: its data file,
named after OUT and a hash of its bytes (OUT.<hash>.data, so the model refers to exactly the data
written with it), is renamed into place first, the model last; only then is the data of the model
it replaced removed.  A kill between any two steps leaves OUT paired with its own data; two
writers of one OUT commit one after the other under a lock on the folder, and the last one wins
whole.  A writer holds a lock on its temporary folder while it lives, so the folder a killed
writer left is recognised (nobody holds its lock) and removed by the next writer of that OUT.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; commits are still ordered data-then-model
    fcntl = None

HASH_CHARS = 16


def data_name(output: Path, digest: str, taken: list[Path]) -> str:
    """OUT.<hash>.data, or OUT.<hash>-N.data where that name is one of the TAKEN (protected) files."""
    name, number = f"{output.name}.{digest[:HASH_CHARS]}.data", 1
    while any(same_file(output.with_name(name), path) for path in taken):
        number += 1
        name = f"{output.name}.{digest[:HASH_CHARS]}-{number}.data"
    return name


def _own_data(output: Path) -> re.Pattern:
    """The names of data files written for OUT by this module."""
    return re.compile(re.escape(output.name) + r"\.[0-9a-f]{%d}(-\d+)?\.data" % HASH_CHARS)


def same_file(a: Path, b: Path) -> bool:
    """Whether A and B are one file on disk (through hard links and symlinks too)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextmanager
def locked(folder: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on FOLDER (yields False when not BLOCKING and someone else holds it)."""
    if fcntl is None:
        yield True
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class Staging:
    """A temporary folder beside OUTPUT, locked while this writer lives; commit() puts its files in place."""

    def __init__(self, output: Path):
        self.output = output
        self.parent = output.parent if str(output.parent) else Path(".")
        with locked(self.parent):
            self._remove_abandoned()
            self.folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=self.parent))
            self._hold = os.open(self.folder, os.O_RDONLY)
            if fcntl is not None:
                fcntl.flock(self._hold, fcntl.LOCK_EX)

    def _remove_abandoned(self) -> None:
        """Temporary folders of this OUT whose writer died (nobody holds their lock)."""
        for path in self.parent.glob(f".{glob.escape(self.output.name)}.*"):
            if not path.is_dir() or path.is_symlink() or fcntl is None:
                continue
            try:
                with locked(path, blocking=False) as free:
                    if free:
                        shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue

    def commit(self, model_file: Path, data_file: Path | None, protected: list[Path]) -> None:
        """Rename DATA_FILE (its name final already) and then MODEL_FILE into place, with the mode of
        the OUT they replace; then remove data files of OUT's earlier versions (never a PROTECTED one)."""
        mode = mode_for(self.output)
        with locked(self.parent):
            for path in (data_file, model_file):
                if path is not None:
                    os.chmod(path, mode)
            placed = None
            if data_file is not None:
                placed = self.parent / data_file.name
                existed = placed.exists()  # the same bytes, written before: not ours to remove
                os.replace(data_file, placed)
            try:
                os.replace(model_file, self.output)
            except OSError:
                if placed is not None and not existed:
                    placed.unlink(missing_ok=True)  # no data file without its model
                raise
            _sync_folder(self.parent)
            keep = data_file.name if data_file is not None else None
            pattern = _own_data(self.output)
            for path in self.parent.iterdir():
                if path.name != keep and pattern.fullmatch(path.name) and not any(
                        same_file(path, p) for p in protected):
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._hold)


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Replace PATH with TEXT at once: written to a temporary file of its own beside PATH (so two
    writers never share one, and the rename stays on one file system), given MODE (mkstemp's 0600
    when None), renamed over PATH; on any failure the temporary file is removed and the error raised."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mode_for(output: Path) -> int:
    """The mode of the file OUTPUT replaces, else what a new file gets under the umask."""
    try:
        return stat.S_IMODE(os.stat(output).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (a crash after this keeps the new pair)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
