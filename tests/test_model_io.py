"""Loading and saving: external data, models past 2 GiB, atomic writes."""

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import (SAMPLE, assert_same_outputs, cli, conv_nodes, depthwise_model, digest, initializer,
                     weights_model)
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
    [data] = tmp_path.glob("out.onnx.*.data")
    assert out.stat().st_size < 10_000  # weights live in the data file
    refs = onnx.load(out, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in refs.graph.initializer)
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(out))
    assert {p.name: digest(p) for p in tmp_path.iterdir() if p.name in hashes} == hashes  # input untouched

    inline = tmp_path / "inline.onnx"
    assert cli("rewrite", src, inline, "--no-external-data").returncode == 0
    assert not list(tmp_path.glob("inline.onnx*.data"))
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(inline))


def test_missing_external_data_file(tmp_path):
    src = _external(tmp_path)
    (tmp_path / "weights.bin").unlink()
    r = cli("inspect", src)
    assert r.returncode == 2 and "weights.bin" in r.stderr and "Traceback" not in r.stderr


def test_save_leaves_model_unchanged(tmp_path):
    model = onnx.load(SAMPLE)
    before = model.SerializeToString()
    assert save_model(model, tmp_path / "m.onnx", external_data=True).is_file()
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
    assert leftovers == ["out.onnx"]  # no temporary files, no data file without its model


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


# ---------------------------------------------------------------- the model and its data as one


def _value_of(path: Path) -> float:
    """The constant the model at PATH adds, read as onnxruntime would: its own data file, and the
    model must agree with that file (a mismatched pair fails here)."""
    model = onnx.load(path)
    values = numpy_helper.to_array(model.graph.initializer[0])
    assert set(values.tolist()) == {values.size / 1024}, "the model reads data that is not its own"
    return float(values[0])


@pytest.mark.parametrize("fail_at", ["data", "model"])
def test_a_failure_between_the_steps_leaves_a_consistent_pair(tmp_path, monkeypatch, fail_at):
    out = tmp_path / "out.onnx"
    save_model(weights_model(1.0), out, external_data=True)
    real_replace = os.replace

    def failing_replace(src, dst):
        is_model = Path(dst) == out
        is_data = Path(dst).parent == tmp_path and Path(dst).name.endswith(".data")
        if (fail_at == "model" and is_model) or (fail_at == "data" and is_data):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DiagwiseError, match="Input/output error"):
        save_model(weights_model(2.0), out, external_data=True)
    monkeypatch.undo()
    assert _value_of(out) == 1.0  # the old pair, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder
    save_model(weights_model(3.0), out, external_data=True)  # the next write cleans what is left
    assert _value_of(out) == 3.0 and len(list(tmp_path.glob("out.onnx.*.data"))) == 1


def _writer(args) -> None:
    out, value, rounds = args
    for _ in range(rounds):
        save_model(weights_model(value), Path(out), external_data=True)


def test_concurrent_writers_never_mix_a_model_with_another_write_s_data(tmp_path):
    import multiprocessing

    out = tmp_path / "out.onnx"
    context = multiprocessing.get_context("spawn")
    with context.Pool(5) as pool:
        result = pool.map_async(_writer, [(str(out), float(v), 8) for v in range(1, 6)])
        seen = set()
        while not result.ready():  # read the pair while the writers write
            if out.exists():
                try:
                    seen.add(_value_of(out))
                except (FileNotFoundError, onnx.checker.ValidationError):
                    pass  # the pair was replaced between reading the model and its data
        result.get()
    assert _value_of(out) in {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(list(tmp_path.glob("out.onnx.*.data"))) == 1  # the last pair's data only
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_killed_writer_s_temporary_folder_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out.onnx"
    # A writer killed while it writes: it stops inside before_commit, where its data is complete.
    script = textwrap.dedent(f"""
        import os, sys, signal
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import weights_model
        from onnx_diagwise.model_io import save_model
        save_model(weights_model(7.0), {str(out)!r}, external_data=True,
                   before_commit=lambda path: os.kill(os.getpid(), signal.SIGKILL))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert r.returncode != 0
    [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx.")]
    assert any(p.name.endswith(".data") for p in left.iterdir())
    assert not out.exists()
    save_model(weights_model(1.0), out, external_data=True)
    assert not left.exists() and _value_of(out) == 1.0


def test_a_live_writer_s_temporary_folder_is_kept(tmp_path):
    from onnx_diagwise.commit import Staging

    out = tmp_path / "out.onnx"
    live = Staging(out)
    try:
        save_model(weights_model(1.0), out, external_data=True)
        assert live.folder.is_dir()
    finally:
        live.close()
    assert not live.folder.exists()


def test_previous_data_removed_foreign_data_kept(tmp_path):
    out = tmp_path / "out.onnx"
    (tmp_path / "out.onnx.data").write_bytes(b"another model's weights")
    first = save_model(weights_model(1.0), out, external_data=True)
    second = save_model(weights_model(2.0), out, external_data=True)
    assert first != second and not first.exists() and second.exists()
    assert (tmp_path / "out.onnx.data").read_bytes() == b"another model's weights"
    save_model(weights_model(2.0), out, external_data=False)
    assert not second.exists() and _value_of(out) == 2.0
    # The same bytes give the same name: two identical writes are identical files.
    a = save_model(weights_model(4.0), out, external_data=True)
    model_bytes = out.read_bytes()
    b = save_model(weights_model(4.0), out, external_data=True)
    assert a == b and out.read_bytes() == model_bytes


def test_protected_data_is_never_removed_or_replaced(tmp_path):
    out = tmp_path / "out.onnx"
    data = save_model(weights_model(1.0), out, external_data=True)
    source = tmp_path / "in.onnx"
    os.replace(out, source)  # the input now reads OUT's old data file
    before = data.read_bytes()
    written = save_model(weights_model(1.0), out, external_data=True, protected=[source, data])
    assert written != data and written.name.endswith("-2.data")  # same bytes, but that name is the input's
    assert data.read_bytes() == before and _value_of(source) == 1.0 and _value_of(out) == 1.0


@pytest.mark.parametrize("external", [False, True])
def test_output_keeps_the_mode_of_the_file_it_replaces(tmp_path, external):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    data = save_model(weights_model(1.0), out, external_data=external)
    assert (out.stat().st_mode & 0o777) == 0o640
    if data:
        assert (data.stat().st_mode & 0o777) == 0o640
    fresh = tmp_path / "fresh.onnx"
    umask = os.umask(0o022)
    try:
        save_model(weights_model(1.0), fresh)
    finally:
        os.umask(umask)
    assert (fresh.stat().st_mode & 0o777) == 0o644
