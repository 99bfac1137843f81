"""Sizing symbolic input dims: the user's sizes, the batch, else the first candidate that runs."""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE_DIR, cli, spy_sessions
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


def identity(*inputs: tuple) -> onnx.ModelProto:
    """Each input (NAME, ELEM_TYPE, DIMS) passed through an Identity: the model runs with any sizes."""
    values = [helper.make_tensor_value_info(name, elem, dims) for name, elem, dims in inputs]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    outputs = [helper.make_tensor_value_info(f"{name}_out", elem, None) for name, elem, _ in inputs]
    return helper.make_model(helper.make_graph(nodes, "g", values, outputs), opset_imports=OPSET)


FLOAT, INT = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize("elem, dims, key, size", [
    (FLOAT, ["N", 3, "time", 8], "time", 128),  # named like a sequence: a sequence length, wherever it is
    (FLOAT, ["N", 3, "frame_height", 8], "frame_height", 64),  # named like both: an image size
    (FLOAT, ["N", 3, None, 8], "x[2]", 64),  # spatial dims of 4-D and 5-D float inputs: image sizes
    (FLOAT, ["N", 3, None, 4, 4], "x[2]", 64),
    (INT, ["N", 2, None, 2], "x[2]", 16),  # not for integer inputs
    (FLOAT, ["N", None, 8, 8], "x[1]", 3),  # channels of 4-D and 5-D inputs
    (FLOAT, ["N", None, 4, 4, 4], "x[1]", 3),
    (INT, ["N", None], "x[1]", 128),  # the last dim of 2-D and 3-D inputs: a sequence length
    (INT, ["N", 8, None], "x[2]", 128),
    (FLOAT, ["N", None, 8], "x[1]", 128),  # and the middle dim of a 3-D float input (N, T, features)
    (INT, ["N", None, 8], "x[1]", 16),  # but not of an integer one
    (INT, ["N", 2, 2, None], "x[3]", 16),  # other dims: small counts
    (FLOAT, ["N", 2, None, 2, 2, 2], "x[2]", 16),
])
def test_each_kind_of_dim_starts_from_its_own_first_size(elem, dims, key, size):
    resolved = resolve_input_shapes(identity(("x", elem, dims)))
    assert resolved.sizes[key] == size and resolved.sources[key] == "tried"


def test_describe_names_every_input_and_where_each_size_came_from():
    model = identity(("a", FLOAT, ["N", "T"]), ("b", INT, [4, "K"]))
    resolved = resolve_input_shapes(model, InputOptions(dims={"K": 5}))
    assert resolved.describe() == ("input shapes 'a' 1x128, 'b' 4x5; symbolic dims N=1 (--batch), K=5 (--dim), "
                                   "T=128 (the first size that runs)")
    fixed = resolve_input_shapes(identity(("a", FLOAT, [2, 3]), ("b", INT, [4])))
    assert fixed.describe() == "input shapes 'a' 2x3, 'b' 4"


def test_a_dim_shared_by_inputs_is_named_once_with_every_place():
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "T"]) for name in ("a", "b")]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Reshape", ["s", "seven"], ["y"])]
    seven = numpy_helper.from_array(np.array([7, -1], np.int64), "seven")  # no power of two runs
    model = helper.make_model(helper.make_graph(nodes, "g", values, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)], [seven]), opset_imports=OPSET)
    with pytest.raises(UnsizedDims) as caught:
        resolve_input_shapes(model)
    assert str(caught.value) == ("symbolic dims 'a' dim 1, 'b' dim 1 ('T') got no size with which the model runs "
                                 "(tried T: [128, 64, 256, 16, 512, 1024]); give the sizes it expects, e.g. "
                                 "InputOptions.shapes={'a': [1, 128], 'b': [1, 128]}")


def test_fixed_dim_errors_show_unknown_dims_as_question_marks():
    model = identity(("x", FLOAT, ["N", 1, None]))
    with pytest.raises(DiagwiseError) as caught:
        resolve_input_shapes(model, InputOptions(shapes={"x": [1, 2, 5]}))
    assert str(caught.value) == ("InputOptions.shapes x: dim 1 is fixed at 1 in the model, not 2 (the model expects "
                                 "[N, 1, ?])")


def test_real_input_data_is_cast_within_its_kind_and_checked_against_fixed_dims():
    from onnx_diagwise.dims import make_inputs

    model = identity(("x", FLOAT, ["N", 1, None]))
    data = np.arange(6, dtype=np.float64).reshape(2, 1, 3)
    [(name, fed)] = make_inputs(model, InputOptions(data={"x": data})).items()
    assert name == "x" and fed.dtype == np.float32 and fed.shape == (2, 1, 3)
    np.testing.assert_array_equal(fed, data)
    with pytest.raises(DiagwiseError) as caught:
        make_inputs(model, InputOptions(data={"x": data.astype(np.int64)}))
    assert str(caught.value) == "input data for 'x' is int64, the model wants float32"
    with pytest.raises(DiagwiseError) as caught:
        make_inputs(model, InputOptions(data={"x": np.zeros((2, 2, 3), np.float32)}))
    assert str(caught.value) == "input data for 'x' has shape [2, 2, 3], the model wants [N, 1, ?]"
    with pytest.raises(DiagwiseError) as caught:
        make_inputs(identity(("x", FLOAT, [2]), ("b", FLOAT, [2])), InputOptions(data={"z": np.zeros(2, np.float32)}))
    assert str(caught.value) == "input data names 'z', which is not a model input (inputs: b, x)"


def test_real_data_for_one_input_sizes_the_others_by_trial():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "S"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "T"])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=OPSET)
    resolved = resolve_input_shapes(model, InputOptions(data={"a": np.ones((1, 16), np.float32)}))
    assert resolved.shapes == {"b": [1, 16]}  # 128, 64 and 256 do not add to a's 16
    assert resolved.sources == {"N": "--batch", "T": "tried"}


def test_each_size_that_fails_is_logged_with_the_first_line_of_its_error(monkeypatch, caplog):
    import logging

    import onnx_diagwise.dims as dims_module

    class Refuses:
        """A session that refuses its first runs with these errors."""

        def __init__(self, errors):
            self.errors, self.feeds = list(errors), []

        def run(self, names, feeds, options):
            self.feeds.append(feeds)
            if self.errors:
                raise self.errors.pop(0)
            return []

    session = Refuses([RuntimeError("\n bad size 128\nmore detail\n"), RuntimeError("")])  # a message, and none
    monkeypatch.setattr(dims_module, "create_session", lambda model, config: session)
    caplog.set_level(logging.INFO, logger="onnx_diagwise")
    resolved = resolve_input_shapes(identity(("x", FLOAT, ["N", "T"])))
    assert resolved.sizes == {"N": 1, "T": 256}
    assert caplog.messages == ["  does not run with {'x': [1, 128]}: bad size 128",
                               "  does not run with {'x': [1, 64]}: ",
                               "input shapes 'x' 1x256; symbolic dims N=1 (--batch), T=256 (the first size that runs)"]
    assert [(f["x"].shape, f["x"].dtype) for f in session.feeds] == [((1, 128), np.float32), ((1, 64), np.float32),
                                                                      ((1, 256), np.float32)]


def test_total_stride_multiplies_each_layers_largest_stride_up_to_64():
    def strided(*strides):
        nodes = []
        for index, stride in enumerate(strides):
            node = helper.make_node("MaxPool", [f"t{index}"], [f"t{index + 1}"], kernel_shape=[1, 1])
            if stride is not None:  # None: no strides attribute; []: one without values (both stride 1)
                node.attribute.append(helper.make_attribute("strides", stride) if stride else
                                      onnx.AttributeProto(name="strides", type=onnx.AttributeProto.INTS))
            nodes.append(node)
        return helper.make_model(helper.make_graph(nodes, "g", [], []), opset_imports=OPSET)

    assert total_stride(strided([2, 2], [1, 4], None)) == 8
    assert total_stride(strided([], [2, 2])) == 2
    assert total_stride(strided([4, 4], [4, 4], [8, 8])) == 64  # 128, capped
    assert total_stride(strided()) == 1


def test_candidate_sizes_by_kind():
    assert candidates("image", 1) == [64, 224, 256, 320, 512, 640, 32]
    assert candidates("image", 3) == [192]  # no image size is a multiple of 3: 64 of its steps
    assert candidates("sequence", 8) == [128, 64, 256, 16, 512, 1024]
    assert candidates("channels", 8) == [3, 1, 4, 16, 64]
    assert candidates("count", 8) == [16, 64, 1, 8, 128]


@pytest.mark.parametrize("options, message, parameter", [
    (InputOptions(shapes={"": [2, 7]}), "InputOptions.shapes without a name works only for a one-input model",
     "InputOptions.shapes"),
    (InputOptions(shapes={"z": [1]}), "InputOptions.shapes names 'z', which is not a model input (inputs: a, b)",
     "InputOptions.shapes"),
    (InputOptions(dims={"z": 1}), "InputOptions.dims z=...: the model's inputs have no dim named 'z' (symbolic dims: "
     "N, T)", "InputOptions.dims"),
    (InputOptions(batch=0), "batch must be >= 1; got 0", "batch"),
    (InputOptions(shapes={"b": [2]}), "InputOptions.shapes b: rank 1 does not match the model's rank 2",
     "InputOptions.shapes"),
    (InputOptions(shapes={"b": [1, 4]}), "InputOptions.shapes b: dim 1 is fixed at 3 in the model, not 4 (the model "
     "expects [N, 3])", "InputOptions.shapes"),
])
def test_wrong_sizes_are_refused_naming_the_option(options, message, parameter):
    model = identity(("b", FLOAT, ["N", 3]), ("a", FLOAT, [2, "T"]))
    with pytest.raises(DiagwiseError) as caught:
        resolve_input_shapes(model, options)
    assert str(caught.value) == message and caught.value.parameters == (parameter,)


def test_dims_of_a_model_without_symbolic_dims_are_refused():
    with pytest.raises(DiagwiseError) as caught:
        resolve_input_shapes(identity(("a", FLOAT, [2, 3])), InputOptions(dims={"T": 1}))
    assert str(caught.value) == ("InputOptions.dims T=...: the model's inputs have no dim named 'T' (symbolic dims: "
                                 "none)")


def test_a_shape_for_one_input_leaves_the_others_to_the_rule():
    model = identity(("b", FLOAT, ["N", 3]), ("a", FLOAT, [2, "T"]))
    resolved = resolve_input_shapes(model, InputOptions(shapes={"b": [5, 3]}))
    assert resolved.shapes == {"b": [5, 3], "a": [2, 128]}


def test_declared_sizes_are_kept():
    resolved = resolve_input_shapes(identity(("x", FLOAT, ["N", 1, None])))
    assert resolved.shapes == {"x": [1, 1, 128]} and resolved.sizes == {"N": 1, "x[2]": 128}


def test_a_declared_zero_is_a_size_and_a_negative_dim_is_free():
    # onnxruntime requires a declared 0 exactly (an empty axis) and reads a negative dim as free.
    resolved = resolve_input_shapes(identity(("x", FLOAT, ["N", 0, -1])))
    assert resolved.shapes == {"x": [1, 0, 128]} and resolved.sizes == {"N": 1, "x[2]": 128}
    with pytest.raises(DiagwiseError) as caught:
        resolve_input_shapes(identity(("x", FLOAT, ["N", 0, -1])), InputOptions(shapes={"x": [1, 4, 8]}))
    assert str(caught.value) == ("InputOptions.shapes x: dim 1 is fixed at 0 in the model, not 4 (the model expects "
                                 "[N, 0, ?])")
    with pytest.raises(DiagwiseError) as data:
        resolve_input_shapes(identity(("x", FLOAT, ["N", 0, -1])), InputOptions(data={"x": np.zeros((1, 3, 2))}))
    assert str(data.value) == "input data for 'x' has shape [1, 3, 2], the model wants [N, 0, ?]"


@pytest.mark.parametrize("elements, sizes", [(128 * 4 + 32 * 8, {"N": 1, "K": 128, "H": 32}), (100 * 4, None)])
def test_dims_move_to_their_next_size_together_and_shorter_lists_keep_their_last(elements, sizes):
    """K (a count: 16, 64, 1, 8, 128) and H (an image size: 64, ..., 640, 32): the model runs only
    with K = 128, H = 32, the last size of each list, or (400 elements) with none."""
    values = [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 2, 2, "K"]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", 8])]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["xf", "flat"], ["xs"]), helper.make_node("Reshape", ["y", "flat"], ["ys"]),
             helper.make_node("Concat", ["xs", "ys"], ["both"], axis=0),
             helper.make_node("Reshape", ["both", "total"], ["z"])]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([elements], np.int64), "total")]
    model = helper.make_model(helper.make_graph(nodes, "g", values, [helper.make_tensor_value_info(
        "z", TensorProto.FLOAT, None)], inits), opset_imports=OPSET)
    if sizes:
        assert resolve_input_shapes(model).sizes == sizes
        return
    with pytest.raises(UnsizedDims) as caught:
        resolve_input_shapes(model)
    assert str(caught.value) == (
        "symbolic dims 'x' dim 3 ('K'); 'y' dim 2 ('H') got no size with which the model runs (tried K: [16, 64, 1, "
        "8, 128], H: [64, 224, 256, 320, 512, 640, 32]); give the sizes it expects, e.g. InputOptions.shapes={'x': "
        "[1, 2, 2, 16], 'y': [1, 1, 64, 8]}")


def test_sizes_are_tried_on_the_configuration_given_and_kept_in_the_options(monkeypatch):
    import onnx_diagwise.dims as dims_module
    from onnx_diagwise.dims import with_input_shapes
    from onnx_diagwise.runtime import RuntimeConfig

    seen = spy_sessions(monkeypatch, dims_module)
    model = identity(("x", FLOAT, ["N", "T"]))
    single = RuntimeConfig("cpu", threads=1)
    options, resolved = with_input_shapes(model, InputOptions(batch=2), single)
    assert options == InputOptions(batch=2, shapes={"x": [2, 128]}) and resolved.sizes == {"N": 2, "T": 128}
    assert seen == [single]
    assert with_input_shapes(model, None)[0] == InputOptions(shapes={"x": [1, 128]})
    assert seen[1:] == [RuntimeConfig("cpu")]  # by default on the CPU


def test_a_shape_without_a_name_is_the_one_inputs():
    resolved = resolve_input_shapes(identity(("x", FLOAT, ["N", 3])), InputOptions(shapes={"": [4, 3]}))
    assert resolved.shapes == {"x": [4, 3]}
