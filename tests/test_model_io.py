"""Loading and saving: external data, models past 2 GiB, atomic writes."""

import logging
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



def _disk_full_at(monkeypatch, out: Path) -> None:
    """The rename that would put OUT in place fails as a full disk does."""
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)

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
    _disk_full_at(monkeypatch, out)
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


# ---------------------------------------------------------------- loading: every refusal names the file


def _write(path: Path, model) -> Path:
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(DiagwiseError) as refused:
        load_model(path)
    return str(refused.value)


def test_load_refuses_what_is_not_a_model_file(tmp_path):
    assert _refusal(tmp_path / "missing.onnx") == f"input model '{tmp_path / 'missing.onnx'}' does not exist"
    assert _refusal(tmp_path) == f"input model '{tmp_path}' is a directory, not a file"
    empty = _write(tmp_path / "empty.onnx", b"")
    assert _refusal(empty) == f"'{empty}' is empty, not an ONNX model"
    garbage = _write(tmp_path / "garbage.onnx", b"\xff\xff\xff\xff not protobuf")
    assert _refusal(garbage) == (f"'{garbage}' is not an ONNX model (protobuf parse failed: truncated or another "
                                 "format)")
    no_graph = _write(tmp_path / "no_graph.onnx", onnx.ModelProto(ir_version=8, producer_name="x"))
    assert _refusal(no_graph) == f"'{no_graph}' is not an ONNX model (no graph or IR version)"
    no_ir = weights_model(1.0)
    no_ir.ir_version = 0
    no_ir = _write(tmp_path / "no_ir.onnx", no_ir)
    assert _refusal(no_ir) == f"'{no_ir}' is not an ONNX model (no graph or IR version)"


def test_load_refuses_a_model_the_checker_refuses_in_one_line(tmp_path):
    old_ir = weights_model(1.0)
    old_ir.ir_version = 1
    old_ir = _write(tmp_path / "old_ir.onnx", old_ir)
    assert _refusal(old_ir) == (f"'{old_ir}' is not a valid ONNX model: model with IR version < 3 cannot have "
                                "opset_import specified")
    unknown_op = weights_model(1.0)
    unknown_op.graph.node[0].op_type = "NoSuchOp"
    unknown_op = _write(tmp_path / "unknown_op.onnx", unknown_op)
    assert _refusal(unknown_op) == (f"'{unknown_op}' is not a valid ONNX model: No Op registered for NoSuchOp with "
                                    "domain_version of 17")
    damaged = weights_model(1.0)
    damaged.graph.name = "graphname"
    damaged = _write(tmp_path / "damaged.onnx", damaged.SerializeToString().replace(b"graphname", b"gra\xff\xfename"))
    assert _refusal(damaged) == (f"'{damaged}' is not a valid ONNX model: a name or string in it is not UTF-8 "
                                 "(a damaged file?)")


def test_load_accepts_inputs_and_outputs_without_a_shape(tmp_path):
    model = weights_model(1.0)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.ClearField("shape")
    path = _write(tmp_path / "unshaped.onnx", model)
    loaded = load_model(path)
    assert loaded.model == model and loaded.path == path and loaded.file_bytes == path.stat().st_size
    assert loaded.external_files == [] and not loaded.has_external_data


@pytest.fixture
def warnings_logged(monkeypatch):
    """The warnings onnx_diagwise logs during the test, caught by a handler of our own (the command line,
    run in process by other tests, changes the logger's propagation and handlers, so caplog may see a
    record never or twice); each old model is warned of once per process, so that memory starts empty."""
    from onnx_diagwise import model_io

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("onnx_diagwise")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    monkeypatch.setattr(model_io, "_warned_old", set())
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_opsets_newer_than_onnx_are_refused_older_than_onnxruntime_warned(tmp_path, warnings_logged):
    from onnx_diagwise.model_io import MAX_OPSET, MIN_OPSET, as_model, check_opsets

    newest = weights_model(1.0)
    newest.opset_import[0].version = MAX_OPSET
    assert load_model(_write(tmp_path / "newest.onnx", newest)).model == newest
    too_new = weights_model(1.0)
    too_new.opset_import.insert(0, helper.make_opsetid("com.microsoft", MAX_OPSET + 5))
    too_new.opset_import[1].domain = "ai.onnx"
    too_new.opset_import[1].version = MAX_OPSET + 1
    path = _write(tmp_path / "too_new.onnx", too_new)
    expected = (f"uses ai.onnx opset {MAX_OPSET + 1}; onnx {onnx.__version__} knows opsets up to {MAX_OPSET} "
                "(a newer onnx may)")
    assert _refusal(path) == f"'{path}' {expected}"
    with pytest.raises(DiagwiseError) as as_given:
        as_model(too_new)
    assert str(as_given.value) == f"'the model' {expected}"
    custom_only = weights_model(1.0)
    custom_only.opset_import.append(helper.make_opsetid("com.microsoft", MAX_OPSET + 5))
    check_opsets(custom_only, "custom")  # other domains are not ai.onnx's

    records = warnings_logged
    at_min = weights_model(1.0)
    at_min.graph.name = "at_min_opset"
    at_min.opset_import[0].version = MIN_OPSET
    check_opsets(at_min, "at min")
    assert records == []
    old = weights_model(1.0)
    old.graph.name = "old_opset_warned_once"
    old.opset_import[0].version = MIN_OPSET - 1
    check_opsets(old, "old")
    check_opsets(old, "old")
    assert [r.getMessage() for r in records] == [
        f"'old' uses ai.onnx opset {MIN_OPSET - 1}, older than the {MIN_OPSET} onnxruntime guarantees; going on "
        "with the opset unchanged (Conv has meant the same since opset 1)"]


def test_loading_external_data_reads_it_into_the_model(tmp_path):
    path = _external(tmp_path)  # every tensor in one file, weights.bin
    loaded = load_model(path)
    data = tmp_path / "weights.bin"
    assert loaded.external_files == [data] and loaded.has_external_data
    assert loaded.file_bytes == path.stat().st_size + data.stat().st_size
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(SAMPLE).graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in loaded.model.graph.initializer}
    assert sorted(got) == sorted(expected) and all(np.array_equal(got[n], expected[n]) for n in expected)
    assert all(t.data_location == TensorProto.DEFAULT and not t.external_data for t in loaded.model.graph.initializer)


def test_as_model_copies_only_when_asked(tmp_path):
    from onnx_diagwise.model_io import as_model

    model = weights_model(1.0)
    assert as_model(model) is model
    copied = as_model(model, copy=True)
    assert copied is not model and copied == model
    assert as_model(_write(tmp_path / "m.onnx", model)) == model
    assert as_model(str(tmp_path / "m.onnx")) == model
    with pytest.raises(DiagwiseError) as refused:
        as_model(3)
    assert str(refused.value) == "expected an onnx.ModelProto or a path, got int"


# ---------------------------------------------------------------- where output may go


def test_check_output_path_refusals(tmp_path):
    from onnx_diagwise.model_io import check_output_path

    def refusal(output, protected=None):
        with pytest.raises(DiagwiseError) as refused:
            check_output_path(output, protected)
        return str(refused.value)

    assert refusal(tmp_path) == f"output '{tmp_path}' is a directory"
    missing = tmp_path / "missing" / "out.onnx"
    assert refusal(missing) == f"output directory '{tmp_path / 'missing'}' does not exist"
    (tmp_path / "file").write_bytes(b"")
    assert refusal(tmp_path / "file" / "out.onnx") == f"output directory '{tmp_path / 'file'}' is not a directory"
    model, data = tmp_path / "in.onnx", tmp_path / "in.data"
    model.write_bytes(b"m")
    data.write_bytes(b"d")
    assert refusal(model, [model, data]) == (f"output '{model}' is the input model; writing it would destroy the "
                                             "input, choose another path")
    assert refusal(data, [model, data]) == (f"output '{data}' is the input's external data file '{data}'; writing "
                                            "it would destroy the input, choose another path")
    check_output_path(tmp_path / "new.onnx", [model, data])
    check_output_path(model)  # nothing protected


def test_check_output_path_of_a_bare_file_name_is_the_working_directory(tmp_path, monkeypatch):
    from onnx_diagwise.model_io import check_output_path

    monkeypatch.chdir(tmp_path)
    check_output_path("out.onnx")
    (tmp_path / "in.onnx").write_bytes(b"m")
    with pytest.raises(DiagwiseError, match="^output 'in.onnx' is the input model"):
        check_output_path("in.onnx", [tmp_path / "in.onnx"])


# ---------------------------------------------------------------- saving: the bytes written


def _saved_bytes(model, tmp_path, name="m.onnx") -> bytes:
    assert save_model(model, tmp_path / name, external_data=False) is None
    return (tmp_path / name).read_bytes()


@pytest.mark.parametrize("size", [0, 1, 31, 32, 4095, 4096, 2**20])
def test_streamed_write_is_byte_for_byte_what_protobuf_writes(tmp_path, size):
    model = weights_model(1.0)
    del model.graph.initializer[:]
    for i, n in enumerate((size, 3)):
        model.graph.initializer.append(numpy_helper.from_array(np.arange(n, dtype=np.float32), f"w{i}"))
    onnx.helper.set_model_props(model, {"after": "the graph"})
    assert _saved_bytes(model, tmp_path) == model.SerializeToString()


def test_streamed_write_of_a_model_without_a_graph(tmp_path):
    model = onnx.ModelProto(ir_version=8, producer_name="p", doc_string="no graph")
    assert _saved_bytes(model, tmp_path) == model.SerializeToString()


def test_streamed_write_of_the_sample_models_is_onnx_save_s_bytes(tmp_path):
    for name in ("if_branch", "mobilenet_v1_025"):
        model = onnx.load(SAMPLE.parent / f"{name}.onnx")
        assert _saved_bytes(model, tmp_path, f"{name}.onnx") == model.SerializeToString()


def test_varint_encoding():
    from onnx_diagwise.model_io import _varint

    assert [_varint(n) for n in (0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\xff\x7f", b"\x80\x80\x01", b"\xff\xff\xff\xff\x07"]


def test_a_model_past_the_protobuf_limit_is_refused_without_external_data(tmp_path, monkeypatch):
    from onnx_diagwise import model_io

    model = weights_model(1.0)
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", model.ByteSize() - 1)
    out = tmp_path / "out.onnx"
    with pytest.raises(DiagwiseError) as refused:
        save_model(model, out, external_data=False)
    assert str(refused.value) == (f"cannot write '{out}': the model passes protobuf's 2 GiB limit; save it with "
                                  "external data")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", model.ByteSize())
    save_model(model, out, external_data=False)
    assert out.read_bytes() == model.SerializeToString()


@pytest.mark.parametrize("margin, external", [(0, False), (-1, True)])
def test_external_data_is_chosen_past_the_limit_less_64_mib(tmp_path, monkeypatch, margin, external):
    from onnx_diagwise import model_io
    from onnx_diagwise.tensors import weight_bytes

    model = weights_model(2.0)
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", weight_bytes(model) + 64 * 2**20 + margin)
    data = save_model(model, tmp_path / "out.onnx")
    assert (data is not None) == external
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"] + ([data.name] if external else [])


def test_external_data_file_is_named_by_its_hash_and_aligned(tmp_path):
    import hashlib

    model = weights_model(1.0)
    model.graph.initializer.append(numpy_helper.from_array(np.full(256, 5, np.float32), "exactly_1024_bytes"))
    model.graph.initializer.append(numpy_helper.from_array(np.full(255, 6, np.float32), "just_below"))
    model.graph.initializer.append(numpy_helper.from_array(np.full(300, 7, np.float32), "third"))
    model.graph.initializer.append(onnx.helper.make_tensor("as_floats", TensorProto.FLOAT, [400], [1.0] * 400))
    out = tmp_path / "out.onnx"
    data = save_model(model, out, external_data=True)
    assert data == tmp_path / f"out.onnx.{hashlib.blake2b(data.read_bytes(), digest_size=8).hexdigest()}.data"
    written = onnx.load(out, load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in written.graph.initializer
             if t.data_location == TensorProto.EXTERNAL}
    assert sorted(where) == ["exactly_1024_bytes", "third", "w"]
    assert all(info["location"] == data.name and int(info["offset"]) % 4096 == 0 for info in where.values())
    assert [int(where[n]["offset"]) for n in ("w", "exactly_1024_bytes", "third")] == [0, 4096, 8192]
    assert data.stat().st_size == 8192 + 1200
    loaded = {t.name: numpy_helper.to_array(t) for t in load_model(out).model.graph.initializer}
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(loaded[tensor.name], numpy_helper.to_array(tensor))


def test_save_can_leave_the_written_tensors_out_of_the_model(tmp_path):
    model = weights_model(1.0)
    save_model(model, tmp_path / "out.onnx", external_data=True, keep_model=False)
    assert model.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert not model.graph.initializer[0].HasField("raw_data")
    kept = weights_model(1.0)
    save_model(kept, tmp_path / "kept.onnx", external_data=True)
    assert kept == weights_model(1.0)


def test_before_commit_sees_the_complete_model_and_can_stop_the_write(tmp_path):
    out = tmp_path / "out.onnx"
    seen = []

    def check(path):
        seen.append((path.name, numpy_helper.to_array(onnx.load(path).graph.initializer[0]).tolist() == [1.0] * 1024))

    assert save_model(weights_model(1.0), out, external_data=True, before_commit=check).parent == tmp_path
    assert seen == [("out.onnx", True)]

    def refuse(path):
        raise RuntimeError("the check failed")

    with pytest.raises(RuntimeError, match="the check failed"):
        save_model(weights_model(2.0), out, external_data=False, before_commit=refuse)
    assert _value_of(out) == 1.0


def test_write_errors_say_why_in_the_system_s_words(tmp_path, monkeypatch):
    missing = tmp_path / "missing" / "out.onnx"
    with pytest.raises(DiagwiseError) as no_folder:
        save_model(weights_model(1.0), missing)
    assert str(no_folder.value) == f"cannot write '{missing}': No such file or directory"
    out = tmp_path / "out.onnx"
    _disk_full_at(monkeypatch, out)
    with pytest.raises(DiagwiseError) as full:
        save_model(weights_model(1.0), out)
    assert str(full.value) == f"cannot write '{out}': No space left on device"


def test_load_accepts_a_sequence_input(tmp_path):
    sequence = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["n"])], "g", [sequence],
                              [helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert load_model(_write(tmp_path / "seq.onnx", model)).model == model


def test_load_reports_a_file_it_cannot_read(tmp_path, monkeypatch):
    path = _write(tmp_path / "m.onnx", weights_model(1.0))

    def unreadable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    assert _refusal(path) == f"cannot read '{path}': Permission denied"


def test_a_checker_error_without_words_still_says_validation_failed(tmp_path, monkeypatch):
    path = _write(tmp_path / "m.onnx", weights_model(1.0))

    def silent(model):
        raise onnx.checker.ValidationError("  ")

    monkeypatch.setattr(onnx.checker, "check_model", silent)
    assert _refusal(path) == f"'{path}' is not a valid ONNX model: validation failed"


def test_each_old_model_is_warned_of_once(warnings_logged):
    from onnx_diagwise.model_io import MIN_OPSET, check_opsets

    records = warnings_logged
    first, second = weights_model(1.0), weights_model(2.0)
    first.graph.name, second.graph.name = "first_old_model", "second_old_model"
    for model in (first, second):
        model.opset_import[0].version = MIN_OPSET - 1
    for model in (first, second, first, second):
        check_opsets(model, model.graph.name)
    assert [r.getMessage().split(" uses")[0] for r in records] == ["'first_old_model'", "'second_old_model'"]


def test_check_output_path_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    from onnx_diagwise.model_io import check_output_path

    def read_only(path, mode):  # a folder one may enter and read, not write (root would pass os.access)
        return not mode & os.W_OK

    monkeypatch.setattr(os, "access", read_only)
    with pytest.raises(DiagwiseError) as refused:
        check_output_path(tmp_path / "out.onnx")
    assert str(refused.value) == f"output '{tmp_path / 'out.onnx'}': directory '{tmp_path}' is not writable"


def test_a_model_without_a_graph_is_measured_without_one(tmp_path, monkeypatch):
    from onnx_diagwise import model_io

    model = onnx.ModelProto(ir_version=8, producer_name="p", doc_string="no graph")
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", model.ByteSize())  # exactly at the limit: still written
    assert _saved_bytes(model, tmp_path) == model.SerializeToString()


# ---------------------------------------------------------------- external data in more than one file, and in nodes


def _three_weights() -> onnx.ModelProto:
    """y = x + a + b + c: a and b initializers, c a Constant node's tensor, 1 KiB each."""
    a, b, c = (numpy_helper.from_array(np.full(256, v, np.float32), n) for n, v in (("a", 1), ("b", 2), ("c", 3)))
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], name="c_const", value=c),
                               helper.make_node("Sum", ["x", "a", "b", "c"], ["y"], name="sum")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])], [a, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _values(model: onnx.ModelProto) -> dict:
    from onnx_diagwise.tensors import iter_tensors

    return {t.name: numpy_helper.to_array(t).tolist() for t in iter_tensors(model)}


def test_loading_reads_each_external_file_once_and_counts_every_byte(tmp_path):
    from onnx_diagwise.tensors import iter_tensors

    model = _three_weights()
    expected = _values(model)
    layout = {"a": "one.bin", "c": "two.bin", "b": "one.bin"}  # b after a in one.bin, c alone in two.bin
    for tensor in iter_tensors(model):
        path = tmp_path / layout[tensor.name]
        offset = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as f:
            f.write(tensor.raw_data)
        onnx.external_data_helper.set_external_data(tensor, layout[tensor.name], offset=offset,
                                                    length=len(tensor.raw_data))
        tensor.ClearField("raw_data")
    path = _write(tmp_path / "m.onnx", model)
    loaded = load_model(path)
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    assert (one.stat().st_size, two.stat().st_size) == (2048, 1024)
    assert loaded.external_files == [one, two] and loaded.has_external_data
    assert loaded.file_bytes == path.stat().st_size + 3072
    assert _values(loaded.model) == expected
    assert all(t.data_location == TensorProto.DEFAULT and not t.external_data for t in iter_tensors(loaded.model))


def test_large_tensors_of_constant_nodes_go_to_the_data_file_too(tmp_path):
    model = _three_weights()
    before = model.SerializeToString()
    out = tmp_path / "out.onnx"
    data = save_model(model, out, external_data=True)
    assert model.SerializeToString() == before
    written = onnx.load(out, load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data}
             for t in [*written.graph.initializer, written.graph.node[0].attribute[0].t]}
    assert where == {"a": {"location": data.name, "offset": "0", "length": "1024"},
                     "b": {"location": data.name, "offset": "4096", "length": "1024"},
                     "c": {"location": data.name, "offset": "8192", "length": "1024"}}
    assert data.stat().st_size == 8192 + 1024
    loaded = load_model(out)
    assert loaded.external_files == [data] and _values(loaded.model) == _values(model)


def test_opset_7_is_the_oldest_one_without_a_warning(warnings_logged):
    from onnx_diagwise.model_io import check_opsets

    records = warnings_logged
    seven, six = weights_model(1.0), weights_model(2.0)
    seven.graph.name, six.graph.name = "opset_seven", "opset_six"
    seven.opset_import[0].version, six.opset_import[0].version = 7, 6
    check_opsets(seven, "seven")
    check_opsets(six, "six")
    assert [r.getMessage() for r in records] == [
        "'six' uses ai.onnx opset 6, older than the 7 onnxruntime guarantees; going on with the opset unchanged "
        "(Conv has meant the same since opset 1)"]


@pytest.mark.parametrize("weights, external", [(2**31 - 1 - 64 * 2**20, False), (2**31 - 64 * 2**20, True)])
def test_external_data_is_chosen_for_weights_past_2_gib_less_64_mib(tmp_path, monkeypatch, weights, external):
    """Protobuf's limit is 2 GiB - 1 byte; weights past that less 64 MiB (for the graph) go to a data file."""
    from onnx_diagwise import model_io

    monkeypatch.setattr(model_io, "weight_bytes", lambda model: weights)  # as if the weights were that large
    data = save_model(weights_model(1.0), tmp_path / "out.onnx")
    assert (data is not None) == external
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"] + ([data.name] if external else [])


def test_a_loaded_model_made_by_hand_has_no_external_files(tmp_path):
    from onnx_diagwise.model_io import LoadedModel

    loaded = LoadedModel(weights_model(1.0), tmp_path / "m.onnx", 10)
    assert loaded.external_files == [] and not loaded.has_external_data
    assert LoadedModel(weights_model(1.0), tmp_path / "m.onnx", 10).external_files is not loaded.external_files
