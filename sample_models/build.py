"""Build the bundled sample models with onnx.helper: seeded, no downloads.

    python sample_models/build.py            # rewrite the .onnx files next to this script
    python sample_models/build.py OUT_DIR    # write them elsewhere

Each model mimics the depthwise part of a real architecture, with a dynamic
batch dim "N".  The same onnx and numpy versions give byte-identical files
(tests/test_sample_models.py checks this).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.16+ reads it


class Builder:
    """Accumulates nodes and seeded initializers for one graph."""

    def __init__(self, seed: int, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def param(self, name: str, shape: tuple[int, ...], fan_in: int | None = None) -> str:
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.1
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(self.dtype))

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self.fresh(op)
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int | tuple = 1, stride: int = 1, group: int = 1,
             dilation: int = 1, bias: bool = True, name: str | None = None, rank: int = 2,
             auto_pad: str | None = None) -> str:
        kernel = (k,) * rank if isinstance(k, int) else tuple(k)
        name = name or self.fresh("conv")
        w = self.param(f"{name}.weight", (cout, cin // group) + kernel, fan_in=(cin // group) * int(np.prod(kernel)))
        inputs = [x, w]
        if bias:
            inputs.append(self.param(f"{name}.bias", (cout,)))
        attrs = dict(kernel_shape=list(kernel), strides=[stride] * rank, group=group,
                     dilations=[dilation] * rank)
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = [dilation * (kk // 2) for kk in kernel] * 2
        return self.node("Conv", inputs, name=name, **attrs)

    def dwconv(self, x: str, c: int, k: int | tuple = 3, stride: int = 1, multiplier: int = 1, **kw) -> str:
        return self.conv(x, c, c * multiplier, k, stride, group=c, name=kw.pop("name", self.fresh("dwconv")), **kw)

    def batchnorm(self, x: str, c: int) -> str:
        name = self.fresh("bn")
        scale = self.const(f"{name}.scale", (1 + 0.1 * self.rng.standard_normal(c)).astype(self.dtype))
        shift = self.const(f"{name}.bias", (0.1 * self.rng.standard_normal(c)).astype(self.dtype))
        mean = self.const(f"{name}.mean", (0.1 * self.rng.standard_normal(c)).astype(self.dtype))
        var = self.const(f"{name}.var", (1 + 0.1 * self.rng.random(c)).astype(self.dtype))
        return self.node("BatchNormalization", [x, scale, shift, mean, var], name=name)

    def relu6(self, x: str) -> str:
        lo = self.const(self.fresh("zero"), np.array(0, self.dtype))
        hi = self.const(self.fresh("six"), np.array(6, self.dtype))
        return self.node("Clip", [x, lo, hi])

    def swish(self, x: str) -> str:
        return self.node("Mul", [x, self.node("Sigmoid", [x])])

    def squeeze_excite(self, x: str, c: int, reduced: int, gate: str = "Sigmoid") -> str:
        pooled = self.node("GlobalAveragePool", [x])
        hidden = self.node("Relu", [self.conv(pooled, c, reduced)])
        scale = self.node(gate, [self.conv(hidden, reduced, c)])
        return self.node("Mul", [x, scale])

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[str],
              opset: int = OPSET) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        graph = helper.make_graph(self.nodes, name, inputs,
                                  [helper.make_tensor_value_info(o, elem, None) for o in outputs],
                                  self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="onnx-diagwise sample_models", ir_version=IR_VERSION)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def image_input(c: int, hw: int, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input", dtype, ["N", c, hw, hw])


def inverted_residual(b: Builder, x: str, cin: int, cout: int, expand: int, k: int, stride: int) -> str:
    hidden = cin * expand
    y = b.relu6(b.conv(x, cin, hidden))
    y = b.relu6(b.dwconv(y, hidden, k, stride))
    y = b.conv(y, hidden, cout)
    return b.node("Add", [x, y]) if stride == 1 and cin == cout else y


def mobilenetv2_block(dtype=np.float32) -> onnx.ModelProto:
    """Two MobileNetV2 inverted residuals (ReLU6), one with stride 2, one with a skip connection."""
    b = Builder(seed=2, dtype=dtype)
    y = inverted_residual(b, "input", 16, 24, expand=6, k=3, stride=2)
    y = inverted_residual(b, y, 24, 24, expand=6, k=3, stride=1)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    name = "mobilenetv2_block" + ("_fp16" if dtype == np.float16 else "")
    return b.model(name, [image_input(16, 56, elem)], [y])


def mobilenetv3_block() -> onnx.ModelProto:
    """MobileNetV3 bneck: hard-swish, 5x5 depthwise, squeeze-and-excite with hard-sigmoid."""
    b = Builder(seed=3)
    y = b.node("HardSwish", [b.conv("input", 24, 72)])
    y = b.node("HardSwish", [b.dwconv(y, 72, 5, 1)])
    y = b.squeeze_excite(y, 72, 24, gate="HardSigmoid")
    y = b.conv(y, 72, 40)
    return b.model("mobilenetv3_block", [image_input(24, 28)], [y])


def efficientnet_block() -> onnx.ModelProto:
    """EfficientNet MBConv: swish, BatchNorm left unfused, 5x5 stride-2 depthwise, squeeze-and-excite."""
    b = Builder(seed=4)
    y = b.swish(b.batchnorm(b.conv("input", 40, 240, bias=False), 240))
    y = b.swish(b.batchnorm(b.dwconv(y, 240, 5, 2, bias=False), 240))
    y = b.squeeze_excite(y, 240, 10)
    y = b.batchnorm(b.conv(y, 240, 80, bias=False), 80)
    return b.model("efficientnet_block", [image_input(40, 28)], [y])


def convnext_block() -> onnx.ModelProto:
    """ConvNeXt block: 7x7 depthwise, LayerNorm over channels (NHWC), MLP with GELU, layer scale."""
    b = Builder(seed=5)
    c = 96
    y = b.dwconv("input", c, 7, 1)
    y = b.node("Transpose", [y], perm=[0, 2, 3, 1])
    y = b.node("LayerNormalization", [y, b.const("ln.weight", np.ones(c, np.float32)),
                                      b.const("ln.bias", np.zeros(c, np.float32))], axis=-1, epsilon=1e-6)
    y = b.node("Add", [b.node("MatMul", [y, b.param("fc1.weight", (c, 4 * c), fan_in=c)]), b.param("fc1.bias", (4 * c,))])
    # GELU, erf form (Gelu itself needs opset 20)
    erf = b.node("Erf", [b.node("Div", [y, b.const("sqrt2", np.array(np.sqrt(2), np.float32))])])
    y = b.node("Mul", [b.node("Mul", [y, b.const("half", np.array(0.5, np.float32))]),
                       b.node("Add", [erf, b.const("one", np.array(1, np.float32))])])
    y = b.node("Add", [b.node("MatMul", [y, b.param("fc2.weight", (4 * c, c), fan_in=4 * c)]), b.param("fc2.bias", (c,))])
    y = b.node("Mul", [y, b.const("gamma", np.full(c, 0.5, np.float32))])
    y = b.node("Transpose", [y], perm=[0, 3, 1, 2])
    y = b.node("Add", ["input", y])
    return b.model("convnext_block", [image_input(c, 28)], [y])


def conformer_conv1d() -> onnx.ModelProto:
    """Conformer convolution module: pointwise + GLU, 1-D depthwise k=31, BatchNorm, swish, pointwise."""
    b = Builder(seed=6)
    d = 144
    y = b.node("Transpose", ["input"], perm=[0, 2, 1])
    y = b.conv(y, d, 2 * d, rank=1)
    half = b.const("glu_split", np.array([d, d], np.int64))
    b.nodes.append(helper.make_node("Split", [y, half], ["glu_a", "glu_b"], name="glu_split", axis=1))
    y = b.node("Mul", ["glu_a", b.node("Sigmoid", ["glu_b"])])
    y = b.swish(b.batchnorm(b.dwconv(y, d, 31, 1, rank=1), d))
    y = b.conv(y, d, d, rank=1)
    y = b.node("Transpose", [y], perm=[0, 2, 1])
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "T", d])
    return b.model("conformer_conv1d", [inp], [y])


def video3d_block() -> onnx.ModelProto:
    """3-D (video) separable block: 3x3x3 depthwise, BatchNorm, ReLU, pointwise."""
    b = Builder(seed=7)
    y = b.node("Relu", [b.batchnorm(b.dwconv("input", 32, 3, 1, rank=3), 32)])
    y = b.conv(y, 32, 64, rank=3)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 8, 28, 28])
    return b.model("video3d_block", [inp], [y])


def depth_multiplier() -> onnx.ModelProto:
    """Depth multiplier 2 with stride 2, a dilated depthwise conv, and auto_pad SAME_UPPER."""
    b = Builder(seed=8)
    y = b.relu6(b.dwconv("input", 16, 3, 2, multiplier=2))
    y = b.relu6(b.dwconv(y, 32, 3, 1, dilation=2))
    y = b.dwconv(y, 32, 3, 2, auto_pad="SAME_UPPER")
    y = b.conv(y, 32, 32)
    return b.model("depth_multiplier", [image_input(16, 32)], [y])


def if_branch() -> onnx.ModelProto:
    """A depthwise conv in each branch of an If: one with the branch's own weight,
    one reading a weight from the outer graph."""
    b = Builder(seed=9)
    c = 32
    stem = b.conv("input", c, c)
    outer_weight = b.param("outer_dw.weight", (c, 1, 5, 5), fan_in=25)

    then_b = Builder(seed=10)
    y = then_b.node("Relu", [then_b.dwconv(stem, c, 3, 1, name="then_dw")])
    else_nodes = [helper.make_node("Conv", [stem, outer_weight], ["else_dw_out"], name="else_dw", group=c,
                                   kernel_shape=[5, 5], pads=[2, 2, 2, 2])]
    out_type = helper.make_tensor_value_info
    then_graph = helper.make_graph(then_b.nodes, "then_branch", [], [out_type(y, TensorProto.FLOAT, None)],
                                   then_b.initializers)
    else_graph = helper.make_graph(else_nodes, "else_branch", [],
                                   [out_type("else_dw_out", TensorProto.FLOAT, None)])
    b.nodes.append(helper.make_node("If", ["use_then"], ["branch_out"], name="branch",
                                    then_branch=then_graph, else_branch=else_graph))
    y = b.conv("branch_out", c, 16)
    cond = helper.make_tensor_value_info("use_then", TensorProto.BOOL, [])
    return b.model("if_branch", [image_input(c, 28), cond], [y])


def shared_weight() -> onnx.ModelProto:
    """Two depthwise convs reading one weight initializer, and one reading it through Identity."""
    b = Builder(seed=11)
    c = 48
    w = b.param("shared.weight", (c, 1, 3, 3), fan_in=9)
    a = b.node("Conv", ["input", w], name="dw_a", group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c2 = b.node("Conv", [a, w], name="dw_b", group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    alias = b.node("Identity", [w], name="shared_alias")
    c3 = b.node("Conv", [c2, alias], name="dw_c", group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model("shared_weight", [image_input(c, 20)], [c3])


def mobilenet_v1(width: float = 0.25, resolution: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """The paper's network: MobileNet V1, 13 depthwise-separable layers (BatchNorm folded)."""
    b = Builder(seed=1)
    ch = lambda c: max(8, int(c * width))  # noqa: E731
    layers = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
              (512, 1), (512, 1), (1024, 2), (1024, 1)]
    y = b.node("Relu", [b.conv("input", 3, ch(32), 3, 2, name="stem")])
    cin = ch(32)
    for i, (cout, stride) in enumerate(layers, 1):
        y = b.node("Relu", [b.dwconv(y, cin, 3, stride, name=f"dw{i}")])
        y = b.node("Relu", [b.conv(y, cin, ch(cout), name=f"pw{i}")])
        cin = ch(cout)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    y = b.node("Gemm", [y, b.param("fc.weight", (classes, cin), fan_in=cin), b.param("fc.bias", (classes,))],
               transB=1)
    return b.model("mobilenet_v1_025", [image_input(3, resolution)], [y])


def _quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel, as onnxruntime's quantizer does for weights."""
    scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127.0
    return np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8), \
        scale.astype(np.float32)


def mobilenetv2_block_qdq() -> onnx.ModelProto:
    """The MobileNetV2 block in QDQ format (the layout of onnxruntime's quantize_static):
    uint8 activations through QuantizeLinear/DequantizeLinear, int8 per-channel weights."""
    float_model = mobilenetv2_block()
    b = Builder(seed=12)
    weights = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    act_scale = b.const("act_scale", np.array(0.05, np.float32))
    act_zp = b.const("act_zp", np.array(128, np.uint8))
    for node in float_model.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        if node.op_type == "Conv":
            x, w = node.input[0], node.input[1]
            q = b.node("QuantizeLinear", [x, act_scale, act_zp], name=f"{node.name}_q")
            node.input[0] = b.node("DequantizeLinear", [q, act_scale, act_zp], name=f"{node.name}_dq")
            w_q, w_scale = _quantize_per_channel(weights[w])
            b.const(f"{w}_q", w_q)
            b.const(f"{w}_scale", w_scale)
            b.const(f"{w}_zp", np.zeros(len(w_q), np.int8))
            node.input[1] = b.node("DequantizeLinear", [f"{w}_q", f"{w}_scale", f"{w}_zp"], name=f"{w}_dq", axis=0)
        b.nodes.append(node)
    for t in float_model.graph.initializer:
        if not t.name.endswith(".weight"):
            b.initializers.append(t)
    return b.model("mobilenetv2_block_qdq", list(float_model.graph.input), [float_model.graph.output[0].name])


def qlinear_block() -> onnx.ModelProto:
    """QOperator format: QuantizeLinear -> QLinearConv 1x1 -> QLinearConv 3x3 depthwise
    (uint8 weights, per-tensor zero point) -> DequantizeLinear."""
    b = Builder(seed=13)
    rng = b.rng
    c = 32

    def qparams(prefix: str, scale: float, zp: int) -> list[str]:
        return [b.const(f"{prefix}_scale", np.array(scale, np.float32)), b.const(f"{prefix}_zp", np.array(zp, np.uint8))]

    x = b.node("QuantizeLinear", ["input", *qparams("in", 0.04, 128)], name="quantize")
    pw = b.const("pw.weight", rng.integers(0, 256, (c, 16, 1, 1)).astype(np.uint8))
    y = b.node("QLinearConv", [x, "in_scale", "in_zp", pw, *qparams("pw", 0.002, 120), *qparams("mid", 0.1, 100),
                               b.const("pw.bias", rng.integers(-2000, 2000, c).astype(np.int32))], name="pointwise")
    dw = b.const("dw.weight", rng.integers(0, 256, (c, 1, 3, 3)).astype(np.uint8))
    y = b.node("QLinearConv", [y, "mid_scale", "mid_zp", dw, *qparams("dw", 0.004, 131), *qparams("out", 0.15, 90),
                               b.const("dw.bias", rng.integers(-500, 500, c).astype(np.int32))],
               name="depthwise", group=c, pads=[1, 1, 1, 1])
    y = b.node("DequantizeLinear", [y, "out_scale", "out_zp"], name="dequantize")
    return b.model("qlinear_block", [image_input(16, 20)], [y])


def convtranspose_upsample() -> onnx.ModelProto:
    """Decoder-style upsampling: depthwise ConvTranspose (stride 2, multiplier 2), ReLU, pointwise."""
    b = Builder(seed=14)
    c = 24
    w = b.param("up.weight", (c, 2, 4, 4), fan_in=16)
    y = b.node("ConvTranspose", ["input", w, b.param("up.bias", (2 * c,))], name="upsample", group=c,
               strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4])
    y = b.conv(b.node("Relu", [y]), 2 * c, c)
    return b.model("convtranspose_upsample", [image_input(c, 16)], [y])


SAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {
    "mobilenet_v1_025": mobilenet_v1,
    "mobilenetv2_block": mobilenetv2_block,
    "mobilenetv2_block_fp16": lambda: mobilenetv2_block(np.float16),
    "mobilenetv3_block": mobilenetv3_block,
    "efficientnet_block": efficientnet_block,
    "convnext_block": convnext_block,
    "conformer_conv1d": conformer_conv1d,
    "video3d_block": video3d_block,
    "depth_multiplier": depth_multiplier,
    "if_branch": if_branch,
    "shared_weight": shared_weight,
    "mobilenetv2_block_qdq": mobilenetv2_block_qdq,
    "qlinear_block": qlinear_block,
    "convtranspose_upsample": convtranspose_upsample,
}


def build_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in SAMPLES.items():
        path = out_dir / f"{name}.onnx"
        onnx.save(build(), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for p in build_all(target):
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")
