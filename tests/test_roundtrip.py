"""Exact round trips: writes are byte-identical to onnx.save, tensors keep their encoding, and
revert(rewrite(m)) gives back m's bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE_DIR, cli
from onnx_diagwise import revert, rewrite
from onnx_diagwise.model_io import save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo  # noqa: E402

SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_writes_are_the_bytes_onnx_save_writes(tmp_path, path):
    model = onnx.load(path)
    for candidate in (model, rewrite(model).model):
        save_model(candidate, tmp_path / "ours.onnx")
        onnx.save(candidate, tmp_path / "onnx.onnx")
        assert (tmp_path / "ours.onnx").read_bytes() == (tmp_path / "onnx.onnx").read_bytes()


def test_whole_networks_write_the_same_bytes(tmp_path):
    for model in (zoo.build("mobilenet_v2"), zoo.build("mobilenet_v3_large", "float16")):
        save_model(model, tmp_path / "ours.onnx")
        assert (tmp_path / "ours.onnx").read_bytes() == model.SerializeToString()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("group_size", ["paper", 4, "full"])
def test_revert_of_rewrite_gives_back_the_bytes(path, group_size):
    model = onnx.load(path)
    back = revert(rewrite(model, group_size=group_size).model).model
    assert back.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_constant_weights_keep_their_typed_fields(elem):
    array = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(helper.tensor_dtype_to_np_dtype(elem))
    value = helper.make_tensor("w_value", elem, array.shape, array.flatten(), raw=False)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=value, name="w_const"),
         helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1], name="dw")], "g",
        [helper.make_tensor_value_info("x", elem, [1, 8, 6, 6])], [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = rewrite(model, group_size=4).model
    tensor = rewritten.graph.node[0].attribute[0].t
    assert not tensor.HasField("raw_data") and list(tensor.dims) == [8, 4, 3, 3]
    assert revert(rewritten).model.SerializeToString() == model.SerializeToString()


def test_files_round_trip_byte_for_byte(tmp_path):
    source = SAMPLE_DIR / "mobilenet_v1_025.onnx"
    assert cli("rewrite", source, tmp_path / "diag.onnx", "-q").returncode == 0
    assert cli("revert", tmp_path / "diag.onnx", tmp_path / "back.onnx", "-q").returncode == 0
    assert (tmp_path / "back.onnx").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("in_function", [False, True])
def test_constant_weight_without_a_tensor_name_round_trips_byte_for_byte(in_function):
    """A Constant's value tensor may have no name at all; the rewrite must not give it an empty one."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32))
    w.ClearField("name")
    nodes = [helper.make_node("Constant", [], ["w"], name="const", value=w),
             helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1], name="dw")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    if in_function:
        function = helper.make_function("local", "Block", ["x"], ["y"], nodes, [helper.make_opsetid("", 17)])
        graph = helper.make_graph([helper.make_node("Block", ["x"], ["y"], domain="local", name="call")], "g", [x], [y])
        model = helper.make_model(graph, functions=[function], ir_version=8,
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    else:
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), ir_version=8,
                                  opset_imports=[helper.make_opsetid("", 17)])
    rewritten = rewrite(model, group_size=2)
    assert rewritten.report.rewritten
    assert revert(rewritten.model).model.SerializeToString() == model.SerializeToString()
