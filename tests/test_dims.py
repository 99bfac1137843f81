"""Sizing symbolic input dims: the user's sizes, the batch, else the first candidate that runs."""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE_DIR, cli
from onnx_diagwise import DiagwiseError
from onnx_diagwise.dims import candidates, resolve_input_shapes, total_stride
from onnx_diagwise.errors import UnsizedDims
from onnx_diagwise.runtime import InputOptions, parse_input_shapes

OPSET = [helper.make_opsetid("", 17)]


def detector(dims: list, name: str = "x", needs: int | None = None, strides: int = 2) -> onnx.ModelProto:
    """x [N, 3, H, W] -> 3x3 conv (stride STRIDES) -> depthwise 3x3 -> y.  NEEDS: the model runs only
    when H*W == NEEDS (a Reshape to a fixed size, as in models with a fixed-size head)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", [name, "w1"], ["a"], strides=[strides] * 2, pads=[1] * 4),
             helper.make_node("Conv", ["a", "w2"], ["y"], group=8, pads=[1] * 4, name="dw")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]  # no shape, as exporters write
    if needs is not None:
        inits.append(numpy_helper.from_array(np.array([-1, 3 * needs], np.int64), "fixed"))
        nodes.append(helper.make_node("Reshape", [name, "fixed"], ["flat"]))
        outputs.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=OPSET)


def test_named_image_dims_get_the_first_size_that_runs():
    resolved = resolve_input_shapes(detector(["N", 3, "height", "width"]))
    assert resolved.shapes == {"x": [1, 3, 64, 64]}
    assert resolved.sizes == {"N": 1, "height": 64, "width": 64}
    assert resolved.sources == {"N": "--batch", "height": "tried", "width": "tried"}
    assert "height=64 (the first size that runs)" in resolved.describe()


def test_sizes_that_fail_are_passed_over():
    resolved = resolve_input_shapes(detector(["N", 3, "h", "w"], needs=224 * 224), InputOptions(batch=2))
    assert resolved.shapes == {"x": [2, 3, 224, 224]}  # 64 did not run, 224 did


def test_unnamed_dims_are_sized_each_and_labelled_by_position():
    resolved = resolve_input_shapes(detector([None, 3, None, None]))
    assert resolved.sizes == {"x[0]": 1, "x[2]": 64, "x[3]": 64}


def test_sequence_dims_get_sequence_lengths(tmp_path):
    resolved = resolve_input_shapes(onnx.load(SAMPLE_DIR / "conformer_conv1d.onnx"))
    assert resolved.shapes == {"input": [1, 128, 144]} and resolved.sources["T"] == "tried"


def test_users_sizes_win_and_are_checked():
    model = detector(["N", 3, "height", "width"])
    assert resolve_input_shapes(model, InputOptions(batch=3, dims={"height": 32, "width": 48})).shapes == {
        "x": [3, 3, 32, 48]}
    given = InputOptions(shapes=parse_input_shapes(["x:2,3,96,96"]))
    assert resolve_input_shapes(model, given).shapes == {"x": [2, 3, 96, 96]}
    with pytest.raises(DiagwiseError, match="no dim named 'time' .symbolic dims: N, height, width."):
        resolve_input_shapes(model, InputOptions(dims={"time": 8}))
    with pytest.raises(DiagwiseError, match="dim 1 is fixed at 3 in the model, not 4 .the model expects "
                                            r"\[N, 3, height, width\]"):
        resolve_input_shapes(model, InputOptions(shapes={"x": [1, 4, 64, 64]}))


def test_when_nothing_runs_every_dim_is_named_with_an_option_to_paste():
    model = detector(["N", 3, "height", None], name="my image", needs=13 * 13)
    with pytest.raises(UnsizedDims) as caught:
        resolve_input_shapes(model)
    message = str(caught.value)
    assert "'my image' dim 2 ('height')" in message and "'my image' dim 3 (unnamed)" in message
    # the library names its parameter, with a value to start from; the command line, a flag to paste
    assert message.endswith("e.g. InputOptions.shapes={'my image': [1, 3, 64, 64]}")
    assert caught.value.example == {"my image": [1, 3, 64, 64]} and caught.value.parameters == ("InputOptions.shapes",)
    from onnx_diagwise.cli import error_text

    option = error_text(caught.value).split("e.g. ", 1)[1]
    assert shlex.split(option) == ["--overwrite-input-shape", "my image:1,3,64,64"]
    fixed = InputOptions(shapes=parse_input_shapes([shlex.split(option)[1].replace("64,64", "13,13")]))
    assert resolve_input_shapes(model, fixed).shapes == {"my image": [1, 3, 13, 13]}


def test_total_stride_and_candidates():
    assert total_stride(detector(["N", 3, "h", "w"], strides=2)) == 2
    assert total_stride(onnx.load(SAMPLE_DIR / "mobilenet_v1_025.onnx")) == 32
    assert candidates("image", 32)[:2] == [64, 224]
    assert candidates("image", 64) == [64, 256, 320, 512, 640]  # 224 is not a multiple of 64
    assert candidates("sequence", 1)[0] == 128


def test_rewrite_with_symbolic_dims_just_works(tmp_path):
    source = tmp_path / "det.onnx"
    onnx.save(detector(["batch", 3, "height", "width"]), source)
    before = source.read_bytes()
    r = cli("rewrite", source, tmp_path / "out.onnx", "-v", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "symbolic dims batch=1 (--batch), height=64 (the first size that runs)" in r.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["input_shapes"]["shapes"] == {"x": [1, 3, 64, 64]} and "The rule" in data["input_shapes"]["rule"]
    assert data["check"]["passed"] and source.read_bytes() == before
    inspected = json.loads(cli("inspect", source, "--json", "-").stdout)
    assert inspected["nodes"][0]["flops_before"] == 2 * 8 * 9 * 32 * 32  # sized input: FLOPs counted


def test_rewrite_that_cannot_size_dims_fails_in_one_line(tmp_path):
    source = tmp_path / "det.onnx"
    onnx.save(detector(["N", 3, "height", "width"], needs=13 * 13), source)
    r = cli("rewrite", source, tmp_path / "out.onnx")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--overwrite-input-shape x:1,3,64,64" in r.stderr and "; --no-check skips it" in r.stderr
    assert not (tmp_path / "out.onnx").exists()
    r = cli("rewrite", source, tmp_path / "out.onnx", "--overwrite-input-shape", "x:1,3,13,13")
    assert r.returncode == 0, r.stderr


def test_exported_models_with_symbolic_dims_rewrite_with_defaults(tmp_path):
    """Detectors (dynamic H/W, named and unnamed), a recognizer (dynamic W), a speech block
    (dynamic time), an orientation classifier: the default rewrite sizes every dim itself."""
    pytest.importorskip("torch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import export_dynamic_models

    assert export_dynamic_models.main(tmp_path) == 0
    chosen = {name: json.loads((tmp_path / f"{name}.json").read_text())["input_shapes"]["shapes"]["x"]
              for name in export_dynamic_models.MODELS}
    assert chosen["text_detector"] == chosen["text_detector_unnamed"] == [1, 3, 64, 64]
    assert chosen["text_recognizer"] == [1, 3, 48, 64] and chosen["speech_conformer"] == [1, 128, 256]
