"""fp16 pipelines: onnxconverter-common's float16 conversion before or after the rewrite, checked
in the precision the model computes in; QDQ weights kept in float32 behind a Cast."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import SAMPLE_DIR
from onnx_diagwise import revert, rewrite, validate
from onnx_diagwise.validation import computed_in

float16 = pytest.importorskip("onnxconverter_common.float16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo  # noqa: E402

FLOAT_SAMPLES = [p for p in sorted(SAMPLE_DIR.glob("*.onnx"))
                 if not any(k in p.stem for k in ("fp16", "qdq", "qlinear"))]


def to_fp16(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values it clips to fp16's range
        return float16.convert_float_to_float16(model, keep_io_types=True, **options)


def test_outputs_cast_from_fp16_are_compared_as_fp16():
    model = onnx.load(SAMPLE_DIR / "conformer_conv1d.onnx")
    assert computed_in(model) == {}
    converted = to_fp16(model)
    assert computed_in(converted) == {converted.graph.output[0].name: "float16"}
    report = validate(converted, rewrite(converted).model, check_n=1)
    [output] = report.outputs
    assert report.passed and output.dtype == "float32" and output.precision == "float16"
    assert output.rtol == 1e-3 and "computed in float16" in output.message
    assert report.to_dict()["outputs"][0]["precision"] == "float16"


@pytest.mark.parametrize("path", FLOAT_SAMPLES, ids=lambda p: p.stem)
def test_convert_then_rewrite_and_rewrite_then_convert(path):
    model = onnx.load(path)
    converted = to_fp16(model)
    assert validate(converted, rewrite(converted).model, check_n=1).passed  # convert, then rewrite
    assert validate(converted, to_fp16(rewrite(model).model), check_n=1).passed  # rewrite, then convert


@pytest.mark.parametrize("network", ["mobilenet_v2", "efficientnet_b0"])
def test_whole_networks_both_orders(network):
    model = zoo.build(network)
    converted = to_fp16(model)
    assert validate(converted, rewrite(converted).model, check_n=1).passed
    assert validate(converted, to_fp16(rewrite(model).model), check_n=1).passed


def test_dequantize_cast_conv_is_a_qdq_weight():
    model = onnx.load(SAMPLE_DIR / "mobilenetv2_block_qdq.onnx")
    converted = to_fp16(model, op_block_list=["DequantizeLinear", "QuantizeLinear"])
    result = rewrite(converted)
    assert [(n.form, n.action) for n in result.report.nodes] == [("QDQ", "rewritten")] * 2
    assert result.report.after.op_counts == result.report.before.op_counts  # no run-time expansion
    graph = result.model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for decision in result.report.nodes:
        conv = next(n for n in graph.node if n.name == decision.name)
        cast = producers[conv.input[1]]
        dq = producers[cast.input[0]]
        assert (cast.op_type, dq.op_type) == ("Cast", "DequantizeLinear")
        expanded = initializers[dq.input[0]]  # the integer initializer itself was expanded
        assert expanded.dtype == np.int8 and expanded.shape[1] == decision.group_size
    back = revert(result.model).model  # and collapses back to the converted model's weights exactly
    weights = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    for tensor in converted.graph.initializer:
        np.testing.assert_array_equal(weights[tensor.name], numpy_helper.to_array(tensor))
