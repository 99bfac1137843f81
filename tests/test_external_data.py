"""External data is read by onnx's own rules through every entry point: a relative location
inside the model's folder after resolving links, a regular file with one hard link, offset and
length inside it; never relative to the working directory.  Anything else is refused in one line
naming the tensor, and nothing outside the folder reaches the output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from helpers import cli, cli_process, depthwise_model
from onnx_diagwise import DiagwiseError, inspect, rewrite
from onnx_diagwise.reverter import revert

SECRET = b"SECRET-BYTES-OUTSIDE-THE-FOLDER!" * 32  # 1 KiB, the size of the weight below


def _external(model: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None) -> onnx.ModelProto:
    """MODEL with its depthwise weight 'w' pointing at LOCATION (nothing else changed)."""
    [w] = [t for t in model.graph.initializer if t.name == "w"]
    nbytes = len(w.raw_data) if w.HasField("raw_data") else numpy_helper.to_array(w).nbytes
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length or nbytes))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model


def _dw() -> onnx.ModelProto:
    return depthwise_model(channels=16, kernel=(4, 4), bias=False)  # w: 16*16 floats = 1 KiB


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/outside.bin (the secret) and tmp/model/ (the model's folder)."""
    (tmp_path / "outside.bin").write_bytes(SECRET)
    folder = tmp_path / "model"
    folder.mkdir()
    return folder, tmp_path / "outside.bin"


def _bad_locations(folder: Path, outside: Path) -> dict[str, tuple[str, dict, str]]:
    """name -> (location, extra, words the refusal holds)."""
    (folder / "link.bin").symlink_to(outside)
    os.link(outside, folder / "hard.bin")
    os.mkfifo(folder / "fifo.bin")
    (folder / "sub").symlink_to(outside.parent)
    (folder / "ok.bin").write_bytes(SECRET)
    (folder / "inner.bin").symlink_to(folder / "ok.bin")
    return {
        "traversal": ("../outside.bin", {}, "outside the model's folder"),
        "deep traversal": ("../../../../../../../../etc/passwd", {}, "outside the model's folder"),
        "absolute": (str(outside), {}, "absolute path"),
        "dev zero": ("/dev/zero", {}, "absolute path"),
        "symlink out": ("link.bin", {}, "outside the model's folder"),
        "symlink in": ("inner.bin", {}, "symbolic link"),
        "symlinked folder": ("sub/outside.bin", {}, "outside the model's folder"),
        "hard link": ("hard.bin", {}, "hard links"),
        "fifo": ("fifo.bin", {}, "not a regular file"),
        "missing": ("nope.bin", {}, "cannot be opened"),
        "huge offset": ("ok.bin", {"offset": 2**40}, "outside its file"),
        "past the end": ("ok.bin", {"offset": 512}, "outside its file"),
    }


@pytest.fixture
def bad(tmp_path):
    folder, outside = _layout(tmp_path)
    return folder, _bad_locations(folder, outside)


def _no_secret(obj) -> None:
    data = obj.SerializeToString() if hasattr(obj, "SerializeToString") else bytes(obj)
    assert SECRET[:32] not in data


def test_command_line_refuses_each_location(bad, tmp_path):
    folder, cases = bad
    for name, (location, extra, words) in cases.items():
        path = folder / "m.onnx"
        onnx.save(_external(_dw(), location, **extra), path)
        for command in (["inspect", path], ["rewrite", path, tmp_path / "out.onnx"], ["revert", path, tmp_path / "out.onnx"]):
            # a FIFO must not hang: that one in a process of its own, which a timeout ends
            r = cli_process(*command, timeout=60) if name == "fifo" else cli(*command)
            assert r.returncode == 2, (name, r.stdout, r.stderr)
            assert words in r.stderr and "'w'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
            assert not (tmp_path / "out.onnx").exists()


def test_model_proto_without_its_folder_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "w.bin").write_bytes(SECRET)  # a stray file where the process happens to run
    monkeypatch.chdir(tmp_path)
    model = _external(_dw(), "w.bin")
    with pytest.raises(DiagwiseError, match="'w'.*came without its folder"):
        rewrite(model, group_size=4)
    # inspect and revert need no depthwise weight's bytes: they read nothing and copy nothing in
    assert inspect(model).nodes[0].action == "rewrite"
    _no_secret(revert(model).model)


def test_model_proto_with_bad_locations_is_refused(bad):
    folder, cases = bad
    for name, (location, extra, words) in cases.items():
        with pytest.raises(DiagwiseError, match="'w'"):
            rewrite(_external(_dw(), location, **extra))


def test_onnx_ir_model_refuses_each_location(bad):
    ir = pytest.importorskip("onnx_ir")
    from onnx_diagwise.passes import DiagonalwisePass

    folder, cases = bad
    for name, (location, extra, words) in cases.items():
        path = folder / "m.onnx"
        onnx.save(_external(_dw(), location, **extra), path)
        model = ir.load(path)
        with pytest.raises(DiagwiseError, match=words):
            DiagonalwisePass(group_size=4)(model)
        with pytest.raises(DiagwiseError, match=words):
            rewrite(model)


def test_good_external_data_is_read_through_every_entry_point(tmp_path):
    ir = pytest.importorskip("onnx_ir")
    from onnx_diagwise.passes import DiagonalwisePass

    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    model = _dw()
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    (folder / "weights" / "w.bin").write_bytes(b"\0" * 64 + w.tobytes())
    path = folder / "m.onnx"
    onnx.save(_external(model, "weights/w.bin", offset=64), path)
    expected = rewrite(_dw(), group_size=4).model
    for result in (rewrite(path, group_size=4).model, rewrite(ir.load(path), group_size=4).model):
        proto = result if isinstance(result, onnx.ModelProto) else ir.serde.serialize_model(result)
        [got] = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == "w"]
        np.testing.assert_array_equal(got, numpy_helper.to_array(expected.graph.initializer[0]))
    ir_model = ir.load(path)
    assert DiagonalwisePass(group_size=4)(ir_model).modified
    r = cli("rewrite", path, tmp_path / "out.onnx", "-g", "4")
    assert r.returncode == 0, r.stderr
