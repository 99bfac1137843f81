"""Loading and saving: external data, models past 2 GiB, atomic writes."""

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE, assert_same_outputs, cli, conv_nodes, depthwise_model, digest, initializer
from onnx_diagwise import DiagwiseError
from onnx_diagwise.model_io import load_model, save_model


def _external(tmp_path: Path, location: str = "weights.bin") -> Path:
    path = tmp_path / "in.onnx"
    onnx.save_model(onnx.load(SAMPLE), path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_external_data_round_trip(tmp_path):
    src = _external(tmp_path)
    hashes = {p.name: digest(p) for p in tmp_path.iterdir()}
    out = tmp_path / "out.onnx"
    r = cli("rewrite", src, out)
    assert r.returncode == 0, r.stderr
    assert "weights in" in r.stdout
    data = tmp_path / "out.onnx.data"
    assert data.exists() and out.stat().st_size < 10_000  # weights live in the data file
    refs = onnx.load(out, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in refs.graph.initializer)
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(out))
    assert {p.name: digest(p) for p in tmp_path.iterdir() if p.name in hashes} == hashes  # input untouched

    inline = tmp_path / "inline.onnx"
    assert cli("rewrite", src, inline, "--no-external-data").returncode == 0
    assert not (tmp_path / "inline.onnx.data").exists()
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(inline))


def test_missing_external_data_file(tmp_path):
    src = _external(tmp_path)
    (tmp_path / "weights.bin").unlink()
    r = cli("inspect", src)
    assert r.returncode == 2 and "weights.bin" in r.stderr and "Traceback" not in r.stderr


def test_save_leaves_model_unchanged(tmp_path):
    model = onnx.load(SAMPLE)
    before = model.SerializeToString()
    assert save_model(model, tmp_path / "m.onnx", external_data=True) is True
    assert model.SerializeToString() == before
    assert load_model(tmp_path / "m.onnx").has_external_data


@pytest.mark.parametrize("external", [False, True])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, external):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DiagwiseError, match="cannot write .*No space left on device"):
        save_model(onnx.load(SAMPLE), out, external_data=external)
    assert out.read_bytes() == b"previous"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers in (["out.onnx"], ["out.onnx", "out.onnx.data"])  # no temporary files


def _big_model(tmp_path: Path) -> Path:
    """A depthwise Conv beside two 1.1 GB constants that Gathers read: too big for one protobuf."""
    dw = depthwise_model(channels=8, bias=False)
    dw.graph.initializer.append(numpy_helper.from_array(np.array([0, 3], np.int64), "idx"))
    for name in ("big_a", "big_b"):
        big = np.zeros((2**28 + 2**23,), np.float32)  # 1.1 GB each
        big[:4] = [1, 2, 3, 4]
        dw.graph.initializer.append(numpy_helper.from_array(big, name))
        del big
    dw.graph.node.append(helper.make_node("Gather", ["big_a", "idx"], ["picked"], name="gather_a"))
    dw.graph.node.append(helper.make_node("Gather", ["big_b", "idx"], ["picked_b"], name="gather_b"))
    dw.graph.output.append(helper.make_tensor_value_info("picked_b", TensorProto.FLOAT, [2]))
    dw.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, [2]))
    path = tmp_path / "big.onnx"
    onnx.save_model(dw, path, save_as_external_data=True, location="big.bin", size_threshold=1024)
    return path


def test_model_over_2gb(tmp_path):
    if shutil.disk_usage(tmp_path).free < 10 * 2**30:
        pytest.skip("needs 10 GiB of free disk for a 2.2 GB model and its rewrite")
    src = _big_model(tmp_path)
    out = tmp_path / "out.onnx"
    r = cli("rewrite", src, out, "--no-external-data")
    # One protobuf cannot hold it: a clear error and no file, not a crash.
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = cli("rewrite", src, out, "-g", "4")
    assert r.returncode == 0, r.stderr
    loaded = onnx.load(out)
    [conv] = conv_nodes(loaded)
    assert initializer(loaded, conv.input[1]).shape == (8, 4, 3, 3)
    for name in ("big_a", "big_b"):
        np.testing.assert_array_equal(initializer(loaded, name)[:5], [1, 2, 3, 4, 0])


@pytest.mark.parametrize("name", ["if_branch", "mobilenet_v1_025", "conformer_conv1d"])
def test_streamed_write_parses_to_the_same_model(tmp_path, name):
    model = onnx.load(SAMPLE.parent / f"{name}.onnx")
    onnx.helper.set_model_props(model, {"k": "v"})
    save_model(model, tmp_path / "m.onnx", external_data=False)
    assert onnx.load(tmp_path / "m.onnx") == model
