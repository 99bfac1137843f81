"""Nothing the input needs is ever overwritten: the input model, its external data (whatever the
name), through hard links and symlinks; OUT's data moves to a free name when it would clash."""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
import pytest

from helpers import SAMPLE_DIR, cli

SAMPLE = SAMPLE_DIR / "mobilenetv2_block.onnx"


def external_model(folder: Path, name: str = "m.onnx", location: str = "m.onnx.data") -> Path:
    path = folder / name
    onnx.save_model(onnx.load(SAMPLE), path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def refused(r, folder: Path, before: dict[str, bytes], *words: str) -> None:
    """Exit 2, one line holding one of WORDS, and the folder exactly as it was."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert any(w in r.stderr for w in words), r.stderr
    assert snapshot(folder) == before  # nothing written, nothing changed


@pytest.mark.parametrize("command", ["rewrite", "revert"])
def test_output_that_is_the_input_data_file_is_refused(tmp_path, command):
    model = external_model(tmp_path)
    before = snapshot(tmp_path)
    r = cli(command, model, tmp_path / "m.onnx.data")  # the mistake that destroyed a model
    refused(r, tmp_path, before, "is the input's external data file")


def test_data_file_of_any_name_is_protected(tmp_path):
    model = external_model(tmp_path, location="weights.bin")
    before = snapshot(tmp_path)
    refused(cli("rewrite", model, tmp_path / "weights.bin"), tmp_path, before, "external data file")


def test_output_that_is_the_input_is_refused_through_links(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(SAMPLE.read_bytes())
    os.link(model, tmp_path / "hard.onnx")
    (tmp_path / "soft.onnx").symlink_to(model)
    before = snapshot(tmp_path)
    for output in (model, tmp_path / "hard.onnx", tmp_path / "soft.onnx"):
        refused(cli("rewrite", model, output), tmp_path, before, "is the input model")
    refused(cli("rewrite", tmp_path / "soft.onnx", model), tmp_path, before, "is the input model")


def test_output_symlinked_to_the_input_data_is_refused(tmp_path):
    model = external_model(tmp_path)
    (tmp_path / "soft.data").symlink_to(tmp_path / "m.onnx.data")
    before = snapshot(tmp_path)
    refused(cli("rewrite", model, tmp_path / "soft.data"), tmp_path, before, "external data file")


def test_output_hard_linked_to_the_input_data_is_refused(tmp_path):
    model = external_model(tmp_path)
    os.link(tmp_path / "m.onnx.data", tmp_path / "hard.data")
    before = snapshot(tmp_path)
    # onnx itself will not read external data that has a second hard link; refused either way
    refused(cli("rewrite", model, tmp_path / "hard.data"), tmp_path, before, "external data file",
            "hard links")


def own_data(folder: Path, output: str) -> list[str]:
    """OUT's data files: OUT.<16 hex digits of the hash of the bytes>.data."""
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(re.escape(output) + r"\.[0-9a-f]{16}\.data", p.name))


def test_output_data_never_takes_a_name_the_input_uses(tmp_path):
    model = external_model(tmp_path, "in.onnx", location="out.onnx.data")  # the conventional name, the input's
    data_before = (tmp_path / "out.onnx.data").read_bytes()
    r = cli("rewrite", model, tmp_path / "out.onnx", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.onnx.data").read_bytes() == data_before
    [data] = own_data(tmp_path, "out.onnx")
    written = onnx.load(tmp_path / "out.onnx")  # loads its own data
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == set() or locations == {data}
    assert '"external_data": ' in r.stdout and data in r.stdout


def test_a_symlink_named_like_the_data_is_left_alone(tmp_path):
    model = external_model(tmp_path)
    (tmp_path / "out.onnx.data").symlink_to(tmp_path / "m.onnx.data")
    data_before = (tmp_path / "m.onnx.data").read_bytes()
    r = cli("rewrite", model, tmp_path / "out.onnx")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.onnx.data").read_bytes() == data_before and len(own_data(tmp_path, "out.onnx")) == 1
    assert (tmp_path / "out.onnx.data").is_symlink()
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_output_next_to_an_input_whose_data_is_named_like_the_model(tmp_path):
    """The input's data file is OUT itself plus '.data'."""
    model = external_model(tmp_path, "x.onnx.data", location="x.onnx.data.bin")
    r = cli("rewrite", model, tmp_path / "x.onnx", "--external-data")
    assert r.returncode == 0, r.stderr
    assert onnx.load(model) is not None and len(own_data(tmp_path, "x.onnx")) == 1


# --- An onnx_ir model through rewrite(): its external tensors' folder, and the lazy tensors it keeps ---
# (onnx_diagwise.adapters: the library reads an onnx_ir model's external data from the one folder its
# tensors name, never from the working directory, and gives back the same tensor objects it did not change)

import numpy as np  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from helpers import depthwise_model  # noqa: E402
from onnx_diagwise import DiagwiseError, rewrite  # noqa: E402


def _ir_with_external_data(folder: Path):
    """A depthwise Conv (weight 'w', bias 'b') loaded by onnx_ir from FOLDER, both tensors lazy."""
    ir = pytest.importorskip("onnx_ir")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save_model(depthwise_model(channels=8), path, save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    model = ir.load(path)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    return ir, model


def test_ir_model_keeps_the_same_lazy_tensor_objects_for_weights_it_did_not_change(tmp_path):
    ir, model = _ir_with_external_data(tmp_path)
    bias = model.graph.initializers["b"].const_value
    result = rewrite(model, group_size=4).model
    assert isinstance(result, ir.Model)
    assert result.graph.initializers["b"].const_value is bias  # untouched: the very object, still unread
    new_w = result.graph.initializers["w"].const_value
    assert not isinstance(new_w, ir.ExternalTensor) and new_w.numpy().shape == (8, 4, 3, 3)


def test_ir_model_whose_external_tensors_live_in_two_folders_is_refused(tmp_path):
    ir, model = _ir_with_external_data(tmp_path / "a")
    _, other = _ir_with_external_data(tmp_path / "b")
    model.graph.initializers["b"].const_value = other.graph.initializers["b"].const_value
    with pytest.raises(DiagwiseError) as raised:
        rewrite(model, group_size=4)
    folders = ", ".join(sorted([os.path.abspath(tmp_path / "a"), os.path.abspath(tmp_path / "b")]))
    assert str(raised.value) == (f"the model's external tensors live in 2 different folders ({folders}); "
                                 "save it with its data in one folder first")


def test_ir_tensor_without_a_base_directory_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    ir = pytest.importorskip("onnx_ir")
    model = ir.serde.deserialize_model(depthwise_model(channels=8, bias=False))
    w = numpy_helper.to_array(next(t for t in depthwise_model(channels=8, bias=False).graph.initializer))
    (tmp_path / "w.bin").write_bytes(w.tobytes())  # where the process happens to run
    monkeypatch.chdir(tmp_path)
    value = model.graph.initializers["w"]
    value.const_value = ir.ExternalTensor("w.bin", 0, w.nbytes, ir.DataType.FLOAT, shape=ir.Shape(w.shape),
                                          name="w", base_dir="")
    with pytest.raises(DiagwiseError, match="'w'"):
        rewrite(model, group_size=4)


# Classes that only share a name with a supported type: refused like any other object.
Model = type("Model", (), {})
Graph = type("Graph", (), {})
ONNXProgram = type("ONNXProgram", (), {})


@pytest.mark.parametrize("make, got", [(lambda: 42, "builtins.int"), (Model, f"{__name__}.Model"),
                                       (Graph, f"{__name__}.Graph"), (ONNXProgram, f"{__name__}.ONNXProgram")],
                         ids=["int", "Model", "Graph", "ONNXProgram"])
def test_an_unsupported_model_type_is_refused_naming_it(make, got):
    with pytest.raises(DiagwiseError) as raised:
        rewrite(make(), group_size=4)
    assert str(raised.value) == ("expected an onnx.ModelProto, a path, an onnx_ir.Model, an onnx_graphsurgeon.Graph "
                                 f"or a torch.onnx.ONNXProgram; got {got}")


def test_graphsurgeon_graph_with_an_untyped_output_is_rewritten():
    """Edited graphs often leave outputs without a dtype: they are exported as they are, not refused."""
    gs = pytest.importorskip("onnx_graphsurgeon")
    graph = gs.import_onnx(depthwise_model(channels=8))
    graph.outputs[0].dtype = None
    result = rewrite(graph, group_size=4)
    assert isinstance(result.model, gs.Graph) and [n.name for n in result.report.rewritten] == ["dw"]
