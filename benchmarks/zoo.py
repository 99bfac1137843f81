"""Whole networks for the benchmarks, built in code with onnx.helper: seeded weights, no downloads.

    python benchmarks/zoo.py --out DIR                                   # all five networks, fp32 and fp16
    python benchmarks/zoo.py --out DIR --network convnext_tiny --dtype float16
    python benchmarks/zoo.py --out DIR --network replknet_31b           # the large-kernel network

NETWORKS are the five mobile networks the suites run by default; `replknet_31b` (RepLKNet-31B,
79M parameters, depthwise kernels up to 31x31) is built on request, for the case where the
rewrite pays.

Each network has the published topology and channel counts at width 1.0 (as torchvision
builds it; MobileNet V1 as Keras does), a 224x224 input "input" [N, 3, 224, 224] with a
symbolic batch dim "N", and one output "logits" [N, 1000].  BatchNorm is folded into the
preceding Conv's weight and bias, as in deployed models.  Every depthwise conv is a plain
`Conv` with group == C, its weight an initializer and explicit symmetric pads.  A float16
model is float16 throughout (inputs, outputs, weights, constants).

Weights are random (np.random.default_rng(seed)) and He-scaled; each folded BatchNorm is
folded with statistics measured on a seeded calibration image (the builder runs the graph in
numpy as it builds it), so activations stay O(1) from the input to the logits, and the last
layer of every residual branch is scaled down (RESIDUAL_SCALE) so that residual sums stay small
enough for float16.  The float16 model is the float32 one with every weight cast, so the two
give nearly the same logits.

`depthwise_layers(name)` lists every depthwise conv of a network (channels, input size,
stride, kernel) in graph order.  It runs the same builder as `build` (without drawing weights),
so the two cannot disagree.  `EXTRA_LAYERS` adds large-kernel layers known to be slow on GPUs.
Models are written on demand by `zoo_path` and are never committed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

NETWORKS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
DTYPES = ("float32", "float16")
OPSET = 17
IR_VERSION = 8  # onnxruntime 1.18+ reads it (so do older ones)
IMAGE_SIZE = 224
NUM_CLASSES = 1000

# Weights.  Every layer's weight is drawn He-style for the second moment of its actual input,
# and every Conv that stands for Conv + BatchNorm has that BatchNorm folded in, with statistics
# measured as a deployed model's are, on data: the builder runs the graph in numpy (float64) on
# a seeded calibration image, uniform in [-1, 1) like the benchmarks' inputs, as it builds it.
# Each such Conv's channels come out with mean BETA and std GAMMA (GAMMA ~ 1, or ~ RESIDUAL_SCALE
# on the last conv of a residual branch), so activations stay O(1) to the logits in any network.
# ConvNeXt has LayerNorms instead and needs no calibration.
RESIDUAL_SCALE = 0.2  # std of a residual branch's output, relative to the stream it is added to
BIAS_STD = 0.05  # BatchNorm's beta, Linear biases
GAMMA_STD = 0.1  # relative spread of BatchNorm's and LayerNorm's gamma
SE_GATE_BIAS = 1.0  # mean bias before squeeze-excite's gate: gates sit around 0.7, not 0.5
GELU_GAIN = 1.53  # 1 / sqrt(E[gelu(z)^2]) for z ~ N(0, 1)
LAYER_NORM_EPS = 1e-6

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "hardswish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "hardsigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
}


def _conv_np(x: np.ndarray, w: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    """Conv without bias on NC(spatial) arrays, for group 1 or depthwise (group == C)."""
    rank = x.ndim - 2
    k = w.shape[2:]
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * rank)
    out = [(x.shape[2 + d] - k[d]) // stride + 1 for d in range(rank)]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for tap in np.ndindex(*k):
        window = x[(slice(None), slice(None)) + tuple(
            slice(t, t + stride * (o - 1) + 1, stride) for t, o in zip(tap, out))]
        w_tap = w[(slice(None), slice(None)) + tap]
        if group == 1:
            y += np.einsum("oc,nc...->no...", w_tap, window)
        elif group == x.shape[1] and w.shape[0] == group:
            y += w_tap[:, 0].reshape((1, -1) + (1,) * rank) * window
        else:
            raise NotImplementedError("only dense and depthwise convs are calibrated")
    return y


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


@dataclass(frozen=True)
class Layer:
    """One depthwise conv: `channels` in, input spatial `size`, and 'same' padding (kernel // 2)."""

    channels: int
    size: tuple[int, ...]
    stride: int
    kernel: int
    multiplier: int = 1

    @property
    def rank(self) -> int:
        return len(self.size)

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(-(-s // self.stride) for s in self.size)


# RepLKNet-31B (Ding et al., CVPR 2022), as deployed: BatchNorms folded and each large kernel's
# parallel 5x5 branch merged into it.  (blocks, channels, large kernel) per stage; at 224x224 the
# stages run at 56x56, 28x28, 14x14 and 7x7.
REPLKNET_31B = [(2, 128, 31), (2, 256, 29), (18, 512, 27), (2, 1024, 13)]

# Layers where depthwise kernels are known to be slow on GPUs (large kernels).
EXTRA_LAYERS: dict[str, list[Layer]] = {
    # RepLKNet-31B's large-kernel depthwise convs, one per stage, at their true shapes:
    # 31x31@56 C=128 (2 layers), 29x29@28 C=256 (2), 27x27@14 C=512 (18), 13x13@7 C=1024 (2).
    "replknet_31b": [Layer(c, (56 >> stage, 56 >> stage), 1, k) for stage, (_, c, k) in enumerate(REPLKNET_31B)],
    # A conformer conv module: d_model 512, kernel 31, 256 frames (1-D).
    "conformer": [Layer(512, (256,), 1, 31)],
}


class _T(NamedTuple):
    """A tensor while building: its name, channels, spatial size, and (when calibrating) its value
    on the calibration image, in float64."""

    name: str
    channels: int
    size: tuple[int, ...]
    value: np.ndarray | None = None

    def m2(self, default: float = 1.0) -> float:
        """E[x^2] on the calibration image (DEFAULT without one)."""
        return default if self.value is None else float(np.mean(self.value * self.value))

    def with_value(self, name: str, fn: Callable[[np.ndarray], np.ndarray], **changes) -> _T:
        return self._replace(name=name, value=None if self.value is None else fn(self.value), **changes)


class _Builder:
    """Nodes and seeded initializers of one graph; records every depthwise conv it emits.

    calibrate=True computes every tensor on a calibration image and folds BatchNorms with its
    statistics; weights=False draws no weights and makes no initializers (depthwise_layers uses
    that to trace the graph cheaply)."""

    def __init__(self, dtype: str, seed: int, weights: bool = True, calibrate: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.np_dtype = np.dtype(dtype)
        self.elem = helper.np_dtype_to_tensor_dtype(self.np_dtype)
        self.rng = np.random.default_rng(seed)
        self.weights = weights
        self.calibration = None
        if weights and calibrate:
            self.calibration = np.random.default_rng([seed, 1]).uniform(-1.0, 1.0, (1, 3, IMAGE_SIZE, IMAGE_SIZE))
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: set[str] = set()
        self.tensors: set[str] = {"input"}  # every name given so far (tensors and initializers)
        self.layers: list[Layer] = []

    # -- primitives -------------------------------------------------------------------------

    def _claim(self, name: str) -> None:
        if name in self.tensors:
            raise ValueError(f"name {name!r} is used twice")
        self.tensors.add(name)

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal float32 draws (none when not drawing weights)."""
        if not self.weights:
            return np.zeros(shape, np.float32)
        return self.rng.standard_normal(shape, dtype=np.float32)

    def initializer(self, name: str, value: np.ndarray) -> str:
        """VALUE (float32: the same numbers for every dtype), stored in the model's dtype."""
        self._claim(name)
        if self.weights:
            self.initializers.append(numpy_helper.from_array(_f32(value).astype(self.np_dtype), name))
        return name

    def param(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> str:
        return self.initializer(name, self.normal(shape) * _f32(std) + _f32(mean))

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, doc: str = "",
             **attrs) -> str:
        """Add one node; its output tensor has the node's name unless OUTPUT names it."""
        out = output or name
        self._claim(out)
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, doc_string=doc or None, **attrs))
        return out

    def const(self, name: str, value: float) -> str:
        """A scalar Constant node (not an initializer, so initializers are exactly the parameters)."""
        name = f"const.{name}"
        if name not in self.constants:
            self.constants.add(name)
            self._claim(name)
            tensor = numpy_helper.from_array(np.array(value, self.np_dtype), name)
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    # -- layers -----------------------------------------------------------------------------

    def conv(self, x: _T, name: str, cout: int, kernel: int = 1, stride: int = 1, group: int = 1,
             pad: int | None = None, gamma: float = 1.0, folded_bn: bool = True, bias_mean: float = 0.0,
             input_m2: float = 1.0) -> _T:
        """Conv with bias.  FOLDED_BN: a Conv + BatchNorm (gamma ~ GAMMA, beta ~ BIAS_STD), folded
        with the calibration image's statistics; otherwise a Conv whose output has std ~ GAMMA."""
        rank = len(x.size)
        pad = kernel // 2 if pad is None else pad
        shape = (cout, x.channels // group) + (kernel,) * rank
        fan_in = math.prod(shape[1:])
        w = self.normal(shape) * _f32(1.0 / math.sqrt(fan_in * x.m2(input_m2)))
        g = self.normal((cout,)) * _f32(GAMMA_STD * gamma) + _f32(gamma)
        b = self.normal((cout,)) * _f32(BIAS_STD) + _f32(bias_mean)
        value = None
        if x.value is not None:
            value = _conv_np(x.value, w.astype(np.float64), stride, pad, group)
        if folded_bn and value is not None:
            axes = (0,) + tuple(range(2, value.ndim))
            mean = value.mean(axis=axes)
            std = np.maximum(value.std(axis=axes), 1e-3 * float(np.mean(value.std(axis=axes))) + 1e-12)
            factor = g / _f32(std)
            w = w * factor.reshape((-1,) + (1,) * (rank + 1))
            b = b - _f32(mean) * factor
            value = value * (g / std).reshape((1, -1) + (1,) * rank)  # + the new bias, below
        else:
            w = w * g.reshape((-1,) + (1,) * (rank + 1))
            value = None if value is None else value * g.reshape((1, -1) + (1,) * rank)
        if value is not None:
            value = value + b.reshape((1, -1) + (1,) * rank)
        inputs = [x.name, self.initializer(f"{name}.weight", w), self.initializer(f"{name}.bias", b)]
        doc = "BatchNormalization folded into the weight and bias" if folded_bn else ""
        out = self.node("Conv", inputs, name, doc=doc, kernel_shape=[kernel] * rank, strides=[stride] * rank,
                        pads=[pad] * (2 * rank), dilations=[1] * rank, group=group)
        if group == x.channels and group > 1:
            self.layers.append(Layer(x.channels, x.size, stride, kernel, cout // x.channels))
        return _T(out, cout, tuple((n + 2 * pad - kernel) // stride + 1 for n in x.size), value)

    def linear(self, x: _T, name: str, cout: int, output: str | None = None) -> _T:
        """torchvision's Linear as Gemm (weight [out, in], transB) on [N, C]; output std ~ 1."""
        w = self.normal((cout, x.channels)) * _f32(1.0 / math.sqrt(x.channels * x.m2()))
        b = self.normal((cout,)) * _f32(BIAS_STD)
        y = self.node("Gemm", [x.name, self.initializer(f"{name}.weight", w), self.initializer(f"{name}.bias", b)],
                      name, output=output, transB=1)
        return x.with_value(y, lambda v: v @ w.T.astype(np.float64) + b, channels=cout)

    def matmul(self, x: _T, name: str, cout: int, gain: float = 1.0) -> _T:
        """A channels-last Linear (not calibrated): MatMul by [in, out] and Add the bias."""
        if x.value is not None:
            raise NotImplementedError("MatMul is not calibrated")
        w = self.param(f"{name}.weight", (x.channels, cout), gain / math.sqrt(x.channels))
        y = self.node("MatMul", [x.name, w], name)
        return x._replace(name=self.node("Add", [y, self.param(f"{name}.bias", (cout,), BIAS_STD)], f"{name}.add"),
                          channels=cout)

    def act(self, x: _T, kind: str, name: str) -> _T:
        if kind == "relu":
            out = self.node("Relu", [x.name], name)
        elif kind == "relu6":
            out = self.node("Clip", [x.name, self.const("zero", 0.0), self.const("six", 6.0)], name)
        elif kind == "hardswish":
            out = self.node("HardSwish", [x.name], name)
        elif kind == "silu":
            out = self.node("Mul", [x.name, self.node("Sigmoid", [x.name], f"{name}.sigmoid")], name)
        elif kind == "gelu":  # 0.5 * x * (1 + erf(x / sqrt(2))), which onnxruntime fuses into Gelu
            if x.value is not None:
                raise NotImplementedError("gelu is not calibrated")
            y = self.node("Div", [x.name, self.const("sqrt2", math.sqrt(2.0))], f"{name}.div")
            y = self.node("Erf", [y], f"{name}.erf")
            y = self.node("Add", [y, self.const("one", 1.0)], f"{name}.add")
            y = self.node("Mul", [x.name, y], f"{name}.mul")
            out = self.node("Mul", [y, self.const("half", 0.5)], name)
        else:
            raise ValueError(f"unknown activation {kind!r}")
        return x.with_value(out, _ACTIVATIONS.get(kind))

    def conv_act(self, x: _T, name: str, cout: int, kernel: int = 1, stride: int = 1, group: int = 1,
                 act: str = "relu") -> _T:
        """Conv + folded BatchNorm + activation, as torchvision's Conv2dNormActivation."""
        return self.act(self.conv(x, name, cout, kernel, stride, group), act, f"{name}.act")

    def add(self, x: _T, y: _T, name: str) -> _T:
        return x.with_value(self.node("Add", [x.name, y.name], name), lambda v: v + y.value)

    def global_pool(self, x: _T, name: str) -> _T:
        axes = tuple(range(2, 2 + len(x.size)))
        return x.with_value(self.node("GlobalAveragePool", [x.name], name),
                            lambda v: v.mean(axis=axes, keepdims=True), size=(1,) * len(x.size))

    def squeeze_excite(self, x: _T, name: str, squeeze: int, act: str, gate: str) -> _T:
        pooled = self.global_pool(x, f"{name}.pool")
        hidden = self.act(self.conv(pooled, f"{name}.fc1", squeeze, folded_bn=False), act, f"{name}.fc1.act")
        scale = self.conv(hidden, f"{name}.fc2", x.channels, folded_bn=False, bias_mean=SE_GATE_BIAS)
        if gate == "hardsigmoid":  # torchvision's Hardsigmoid: relu6(x + 3) / 6
            g = scale.with_value(self.node("HardSigmoid", [scale.name], f"{name}.gate", alpha=1.0 / 6.0, beta=0.5),
                                 _ACTIVATIONS["hardsigmoid"])
        else:
            g = scale.with_value(self.node("Sigmoid", [scale.name], f"{name}.gate"), _ACTIVATIONS["sigmoid"])
        return x.with_value(self.node("Mul", [x.name, g.name], f"{name}.mul"), lambda v: v * g.value)

    def layer_norm(self, x: _T, name: str) -> _T:
        """LayerNormalization over the last axis (channels-last)."""
        if x.value is not None:
            raise NotImplementedError("LayerNormalization is not calibrated")
        scale = self.param(f"{name}.weight", (x.channels,), GAMMA_STD, 1.0)
        bias = self.param(f"{name}.bias", (x.channels,), BIAS_STD)
        return x._replace(name=self.node("LayerNormalization", [x.name, scale, bias], name, axis=-1,
                                         epsilon=LAYER_NORM_EPS))

    def transpose(self, x: _T, name: str, perm: list[int]) -> _T:
        return x.with_value(self.node("Transpose", [x.name], name, perm=perm), lambda v: v.transpose(perm))

    def layer_norm_nchw(self, x: _T, name: str) -> _T:
        """torchvision's LayerNorm2d: normalize over channels of an NCHW tensor."""
        y = self.layer_norm(self.transpose(x, f"{name}.to_nhwc", [0, 2, 3, 1]), name)
        return self.transpose(y, f"{name}.to_nchw", [0, 3, 1, 2])

    def pool_flatten(self, x: _T) -> _T:
        pooled = self.global_pool(x, "avgpool")
        return pooled.with_value(self.node("Flatten", [pooled.name], "flatten", axis=1),
                                 lambda v: v.reshape(v.shape[0], -1), size=())

    def model(self, name: str, output: _T) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", self.elem, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [helper.make_tensor_value_info(output.name, self.elem, ["N", NUM_CLASSES])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnx-diagwise benchmarks/zoo.py", ir_version=IR_VERSION)
        model.doc_string = (f"{name} ({self.np_dtype.name}) with random weights: the published topology, "
                            "BatchNorm folded; for benchmarks only")
        return model


def _input(b: _Builder) -> _T:
    return _T("input", 3, (IMAGE_SIZE, IMAGE_SIZE), b.calibration)


def _inverted_residual(b: _Builder, x: _T, name: str, cout: int, expanded: int, kernel: int, stride: int,
                       act: str, se: tuple[int, str, str] | None = None) -> _T:
    """MobileNet V2/V3 inverted residual and EfficientNet MBConv (without stochastic depth).

    SE = (squeeze channels, its activation, its gate)."""
    y = x
    if expanded != x.channels:
        y = b.conv_act(y, f"{name}.expand", expanded, act=act)
    y = b.conv_act(y, f"{name}.dw", expanded, kernel, stride, group=expanded, act=act)
    if se:
        y = b.squeeze_excite(y, f"{name}.se", *se)
    residual = stride == 1 and x.channels == cout
    y = b.conv(y, f"{name}.project", cout, gamma=RESIDUAL_SCALE if residual else 1.0)
    return b.add(x, y, f"{name}.add") if residual else y


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible (channel rounding of MobileNet V3's squeeze-excite)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# MobileNet V1 1.0 (Howard et al. 2017, Table 1): (pointwise out channels, depthwise stride).
MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _mobilenet_v1(b: _Builder) -> _T:
    """MobileNet V1 1.0 as Keras builds it (ReLU6); the classifier is one Linear."""
    x = b.conv_act(_input(b), "features.0", 32, 3, 2, act="relu6")
    for i, (cout, stride) in enumerate(MOBILENET_V1, 1):
        x = b.conv_act(x, f"features.{i}.dw", x.channels, 3, stride, group=x.channels, act="relu6")
        x = b.conv_act(x, f"features.{i}.pw", cout, act="relu6")
    return b.linear(b.pool_flatten(x), "classifier", NUM_CLASSES, output="logits")


# MobileNet V2 (Sandler et al. 2018, Table 2; torchvision): (expansion t, channels c, repeats n, stride s).
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


def _mobilenet_v2(b: _Builder) -> _T:
    x = b.conv_act(_input(b), "features.0", 32, 3, 2, act="relu6")
    i = 1
    for t, c, n, s in MOBILENET_V2:
        for j in range(n):
            x = _inverted_residual(b, x, f"features.{i}", c, x.channels * t, 3, s if j == 0 else 1, "relu6")
            i += 1
    x = b.conv_act(x, f"features.{i}", 1280, act="relu6")
    return b.linear(b.pool_flatten(x), "classifier.1", NUM_CLASSES, output="logits")


# MobileNet V3-Large (Howard et al. 2019, Table 1; torchvision):
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride).
MOBILENET_V3_LARGE = [
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]


def _mobilenet_v3_large(b: _Builder) -> _T:
    x = b.conv_act(_input(b), "features.0", 16, 3, 2, act="hardswish")
    for i, (k, expanded, cout, use_se, act, stride) in enumerate(MOBILENET_V3_LARGE, 1):
        se = (_make_divisible(expanded // 4), "relu", "hardsigmoid") if use_se else None
        x = _inverted_residual(b, x, f"features.{i}", cout, expanded, k, stride, act, se)
    x = b.conv_act(x, f"features.{len(MOBILENET_V3_LARGE) + 1}", 6 * x.channels, act="hardswish")
    y = b.act(b.linear(b.pool_flatten(x), "classifier.0", 1280), "hardswish", "classifier.1")
    return b.linear(y, "classifier.3", NUM_CLASSES, output="logits")


# EfficientNet-B0 (Tan & Le 2019, Table 1; torchvision):
# (expansion, kernel, stride, in channels, out channels, repeats).
EFFICIENTNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                   (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def _efficientnet_b0(b: _Builder) -> _T:
    x = b.conv_act(_input(b), "features.0", 32, 3, 2, act="silu")
    for i, (t, k, s, _cin, cout, n) in enumerate(EFFICIENTNET_B0, 1):
        for j in range(n):
            # torchvision: squeeze channels = max(1, block input channels // 4), SiLU, Sigmoid gate
            se = (max(1, x.channels // 4), "silu", "sigmoid")
            x = _inverted_residual(b, x, f"features.{i}.{j}", cout, x.channels * t, k, s if j == 0 else 1,
                                   "silu", se)
    x = b.conv_act(x, f"features.{len(EFFICIENTNET_B0) + 1}", 4 * x.channels, act="silu")
    return b.linear(b.pool_flatten(x), "classifier.1", NUM_CLASSES, output="logits")


# ConvNeXt-Tiny (Liu et al. 2022; torchvision): blocks and channels per stage.
CONVNEXT_TINY = [(3, 96), (3, 192), (9, 384), (3, 768)]


def _convnext_block(b: _Builder, x: _T, name: str) -> _T:
    """torchvision's CNBlock: depthwise 7x7, then LayerNorm and the MLP channels-last, layer scale, residual."""
    c = x.channels
    y = b.conv(x, f"{name}.dw", c, 7, 1, group=c, pad=3, folded_bn=False)
    y = b.layer_norm(b.transpose(y, f"{name}.to_nhwc", [0, 2, 3, 1]), f"{name}.norm")
    y = b.act(b.matmul(y, f"{name}.pw1", 4 * c), "gelu", f"{name}.gelu")
    y = b.matmul(y, f"{name}.pw2", c, gain=GELU_GAIN)
    gamma = b.param(f"{name}.layer_scale", (c,), GAMMA_STD * RESIDUAL_SCALE, RESIDUAL_SCALE)
    y = y._replace(name=b.node("Mul", [y.name, gamma], f"{name}.layer_scale.mul"))
    return b.add(x, b.transpose(y, f"{name}.to_nchw", [0, 3, 1, 2]), f"{name}.add")


def _convnext_tiny(b: _Builder) -> _T:
    x = b.conv(_input(b), "features.0.conv", CONVNEXT_TINY[0][1], 4, 4, pad=0, folded_bn=False, input_m2=1 / 3)
    x = b.layer_norm_nchw(x, "features.0.norm")
    for stage, (blocks, dim) in enumerate(CONVNEXT_TINY):
        if stage:
            x = b.layer_norm_nchw(x, f"features.{2 * stage}.norm")
            x = b.conv(x, f"features.{2 * stage}.conv", dim, 2, 2, pad=0, folded_bn=False)
        for j in range(blocks):
            x = _convnext_block(b, x, f"features.{2 * stage + 1}.{j}")
    # flatten before the norm: the same as torchvision's LayerNorm2d on [N, C, 1, 1]
    y = b.layer_norm(b.pool_flatten(x), "classifier.0")
    return b.linear(y, "classifier.2", NUM_CLASSES, output="logits")


def _replknet_31b(b: _Builder) -> _T:
    """The reference RepLKNet-31B at 224x224: a stem with two 3x3 depthwise convs, then per stage
    RepLK blocks (1x1 + ReLU, depthwise KxK + ReLU, 1x1, residual) each followed by a ConvFFN
    (1x1 to 4C, GELU, 1x1, residual), and a 1x1 + depthwise 3x3 stride-2 transition."""
    c = REPLKNET_31B[0][1]
    x = b.act(b.conv(_input(b), "stem.0", c, 3, 2, folded_bn=False, input_m2=1 / 3), "relu", "stem.0.act")
    x = b.act(b.conv(x, "stem.1", c, 3, 1, group=c, folded_bn=False, input_m2=0.5), "relu", "stem.1.act")
    x = b.act(b.conv(x, "stem.2", c, 1, folded_bn=False, input_m2=0.5), "relu", "stem.2.act")
    x = b.act(b.conv(x, "stem.3", c, 3, 2, group=c, folded_bn=False, input_m2=0.5), "relu", "stem.3.act")
    for stage, (blocks, c, kernel) in enumerate(REPLKNET_31B):
        if stage:
            x = b.act(b.conv(x, f"transitions.{stage - 1}.0", c, 1, folded_bn=False), "relu",
                      f"transitions.{stage - 1}.0.act")
            x = b.act(b.conv(x, f"transitions.{stage - 1}.1", c, 3, 2, group=c, folded_bn=False, input_m2=0.5),
                      "relu", f"transitions.{stage - 1}.1.act")
        for j in range(blocks):
            name = f"stages.{stage}.blocks.{2 * j}"
            y = b.act(b.conv(x, f"{name}.pw1", c, 1, folded_bn=False), "relu", f"{name}.pw1.act")
            y = b.act(b.conv(y, f"{name}.large_kernel", c, kernel, 1, group=c, folded_bn=False, input_m2=0.5),
                      "relu", f"{name}.lk_nonlinear")
            x = b.add(x, b.conv(y, f"{name}.pw2", c, 1, folded_bn=False, gamma=RESIDUAL_SCALE, input_m2=0.5),
                      f"{name}.add")
            name = f"stages.{stage}.blocks.{2 * j + 1}"
            y = b.act(b.conv(x, f"{name}.pw1", 4 * c, 1, folded_bn=False), "gelu", f"{name}.gelu")
            x = b.add(x, b.conv(y, f"{name}.pw2", c, 1, folded_bn=False, gamma=RESIDUAL_SCALE,
                                input_m2=1 / GELU_GAIN ** 2), f"{name}.add")
    return b.linear(b.pool_flatten(x), "head", NUM_CLASSES, output="logits")


# name: (builder, whether it folds BatchNorms with calibration statistics)
_ARCHITECTURES: dict[str, tuple[Callable[[_Builder], _T], bool]] = {
    "mobilenet_v1": (_mobilenet_v1, True),
    "mobilenet_v2": (_mobilenet_v2, True),
    "mobilenet_v3_large": (_mobilenet_v3_large, True),
    "efficientnet_b0": (_efficientnet_b0, True),
    "convnext_tiny": (_convnext_tiny, False),
    "replknet_31b": (_replknet_31b, False),
}


def _architecture(name: str) -> tuple[Callable[[_Builder], _T], bool]:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; the zoo has {', '.join(_ARCHITECTURES)}")
    return _ARCHITECTURES[name]


def build(name: str, dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """The network NAME with seeded random weights, float32 or float16 throughout."""
    arch, calibrate = _architecture(name)
    b = _Builder(dtype, seed, calibrate=calibrate)
    return b.model(name, arch(b))


def depthwise_layers(name: str) -> list[Layer]:
    """Every depthwise conv of network NAME at 224x224, in graph order (traced from the builder)."""
    arch, _ = _architecture(name)
    b = _Builder("float32", 0, weights=False)
    arch(b)
    return list(b.layers)


def layer_table(names: list[str] | tuple[str, ...] | str | None = None) -> list[tuple[str, int, Layer]]:
    """(table name, 1-based index, layer) for the zoo networks and EXTRA_LAYERS sets NAMES, in the
    order given (default: every network, then every extra set)."""
    if isinstance(names, str):
        names = [names]
    names = [*NETWORKS, *EXTRA_LAYERS] if names is None else list(names)
    unknown = [n for n in names if n not in NETWORKS and n not in EXTRA_LAYERS]
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(NETWORKS + tuple(EXTRA_LAYERS))}")
    rows = []
    for name in dict.fromkeys(names):
        layers = EXTRA_LAYERS[name] if name in EXTRA_LAYERS else depthwise_layers(name)
        rows += [(name, i, layer) for i, layer in enumerate(layers, 1)]
    return rows


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in all initializers (the builders keep scalar constants out of them)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def zoo_path(name: str, dtype: str, folder: str | os.PathLike) -> Path:
    """FOLDER/NAME-DTYPE.onnx, built and saved unless it exists and is newer than this file."""
    _architecture(name)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    folder = Path(folder)
    path = folder / f"{name}-{dtype}.onnx"
    if path.exists() and path.stat().st_mtime > Path(__file__).stat().st_mtime:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    onnx.save(build(name, dtype), tmp)
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the .onnx files")
    parser.add_argument("--network", nargs="+", choices=list(_ARCHITECTURES), default=list(NETWORKS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--force", action="store_true", help="rebuild files that are already up to date")
    args = parser.parse_args(argv)
    for name in args.network:
        for dtype in args.dtype:
            if args.force:
                (args.out / f"{name}-{dtype}.onnx").unlink(missing_ok=True)
            path = zoo_path(name, dtype, args.out)
            print(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB, {len(depthwise_layers(name))} depthwise convs)")


if __name__ == "__main__":
    sys.exit(main())
