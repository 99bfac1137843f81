"""Quantize exported models with onnxruntime's own quantize_static (QDQ and QOperator, per-channel
int8 weights), rewrite them, and check that the rewritten models give bit-identical outputs.

    python scripts/export_torch_models.py exported
    python scripts/quantize_exported.py exported/*.torchscript.onnx
"""

from __future__ import annotations

import sys

import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from onnx_diagwise import InputOptions, rewrite, validate
from onnx_diagwise.dims import make_inputs

OPTIONS = InputOptions(dims={"T": 64})  # the conformer's sequence length


class Reader(CalibrationDataReader):
    def __init__(self, model: onnx.ModelProto):
        self.feeds = iter([make_inputs(model, OPTIONS, seed=s) for s in range(8)])

    def get_next(self):
        return next(self.feeds, None)


def main(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        model = onnx.load(path)
        for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
            quantized = path.replace(".onnx", f".{fmt.name}.onnx")
            quantize_static(path, quantized, Reader(model), quant_format=fmt, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            result = rewrite(quantized, group_size=8)
            report = validate(quantized, result.model, inputs=OPTIONS, check_n=3, atol=0, rtol=0)
            failed += not report.passed
            forms = sorted({n.form for n in result.report.rewritten})
            print(f"{quantized}: {len(result.report.rewritten)} rewritten ({', '.join(forms)}), "
                  f"{len(result.report.skipped)} skipped; {report.summary()}, "
                  f"max abs {max(o.max_abs or 0 for o in report.outputs):.1e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
