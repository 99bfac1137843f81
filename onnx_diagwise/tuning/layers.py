"""Layer signatures and the one-node models timed for each candidate form (G or lowering)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ..detect import DepthwiseConv, detect
from ..lowerings import LOWERINGS, candidates as lowering_candidates, why_not
from ..model_io import BUILT_IR_VERSION
from ..plan import Choice, lowered_choice
from ..rewriter import apply_group_sizes
from ..shapes import infer_value_types

CANDIDATES = (2, 4, 8, 16, 32, 64)
# Skip a candidate whose block-diagonal weight would pass this size.
MAX_CANDIDATE_WEIGHT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class LayerSignature:
    """Everything that decides how fast one depthwise layer runs."""

    channels: int
    multiplier: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None
    auto_pad: str
    input_shape: tuple[int, ...]
    dtype: str
    has_bias: bool

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def label(self) -> str:
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.strides))
        return f"C={self.channels} k={k} s={s} in={list(self.input_shape)} {self.dtype}"

    def work(self) -> int:
        """Multiply-adds of one such layer: C*M outputs per position, kernel taps each (for ordering)."""
        positions = math.prod(size // stride for size, stride in zip(self.input_shape[2:], self.strides))
        return self.input_shape[0] * self.channels * self.multiplier * math.prod(self.kernel) * max(1, positions)

    def candidates(self) -> list[int]:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(_ELEM[self.dtype])).itemsize
        per_g = self.channels * self.multiplier * math.prod(self.kernel) * itemsize
        sizes = [g for g in CANDIDATES if g < self.channels and self.channels % g == 0] + [self.channels]
        return [g for g in sizes if g * per_g <= MAX_CANDIDATE_WEIGHT_BYTES]


_ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
         "float64": TensorProto.DOUBLE}


def layer_model(conv: DepthwiseConv, signature: LayerSignature, opset: int) -> ModelProto:
    """The depthwise node alone, fed by a graph input of its real shape."""
    elem = _ELEM[signature.dtype]
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if signature.has_bias else []), ["y"], name="layer")
    node.attribute.extend(conv.node.attribute)
    weight = TensorProto()
    weight.CopyFrom(conv.weight.tensor)
    weight.name = "w"
    initializers = [weight]
    if signature.has_bias:
        zeros = np.zeros(signature.channels * signature.multiplier, helper.tensor_dtype_to_np_dtype(elem))
        initializers.append(numpy_helper.from_array(zeros, "b"))
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", elem, list(signature.input_shape))],
                              [helper.make_tensor_value_info("y", elem, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=BUILT_IR_VERSION)


def layer_candidates(base: ModelProto, signature: LayerSignature,
                     conv: DepthwiseConv) -> tuple[dict[str, Choice], dict[str, str]]:
    """The forms worth timing for the one-node model BASE of CONV, by spec: every G of the
    signature, and every lowering that applies both to BASE and to CONV in its model (where
    symbolic dims stay symbolic) with its weights under the size limit; and why each lowering
    that is not a candidate is not."""
    [layer] = detect(base, infer_value_types(base)).candidates
    forms = {str(g): Choice(group_size=g) for g in signature.candidates()}
    limit = dict(max_weight_bytes=MAX_CANDIDATE_WEIGHT_BYTES)
    for lowering, params in lowering_candidates(layer, layer.input_shape, opset=layer.opset):
        # the same weights in both: the size limit is checked once, on CONV
        if why_not(conv, lowering, params, conv.input_shape, opset=conv.opset, reads=conv.reads, **limit) is None:
            choice = lowered_choice(lowering, params)
            forms[choice.spec] = choice
    skipped = {}
    for lowering in LOWERINGS:
        if not any(choice.lowering == lowering for choice in forms.values()):
            params = {"block": 8, "as_2d": False} if lowering == "polyphase" else {}
            skipped[lowering] = (why_not(conv, lowering, params, conv.input_shape, opset=conv.opset, reads=conv.reads,
                                         **limit) or "no block size fits")
    return forms, skipped


def layer_variants(base: ModelProto, forms: dict[str, Choice]) -> dict[str, ModelProto]:
    """The one-node model as it is ('1') and in each form."""
    variants = {"1": base}
    for spec, choice in forms.items():
        model = ModelProto()
        model.CopyFrom(base)
        apply_group_sizes(model, {"layer": choice})
        variants[spec] = model
    return variants


def signature_of(conv: DepthwiseConv, shapes: dict) -> LayerSignature | None:
    shape = shapes.get(conv.node.input[0])
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return LayerSignature(conv.channels, conv.multiplier, tuple(conv.kernel), tuple(conv.strides),
                          tuple(conv.dilations), tuple(conv.pads) if conv.pads is not None else None,
                          conv.auto_pad, tuple(shape), conv.dtype,
                          len(conv.node.input) > 2 and bool(conv.node.input[2]))


def opset_of(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
