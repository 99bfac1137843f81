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
