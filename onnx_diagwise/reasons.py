"""What happens to a node and why, as codes: tests, the CLI and other programs branch on these,
never on the wording of the text beside them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(str, Enum):
    """What happens (or happened) to one grouped convolution."""

    REWRITE = "rewrite"  # planned (inspect)
    REWRITTEN = "rewritten"
    SKIPPED = "skipped"
    REVERTED = "reverted"

    def __str__(self) -> str:
        return self.value


class Reason(str, Enum):
    """Why a node is left as it is, or how its new form was chosen."""

    # detect: the node cannot be rewritten
    NO_WEIGHT = "no-weight"  # the node has no weight input
    WEIGHT_UNDEFINED = "weight-undefined"
    CONSTANT_WITHOUT_VALUE = "constant-without-value"
    WEIGHT_RANK = "weight-rank"  # not a 1-D, 2-D or 3-D convolution
    WEIGHT_DTYPE = "weight-dtype"
    WEIGHT_CHANNELS = "weight-channels"  # output channels not a multiple of group
    KERNEL_SHAPE = "kernel-shape"  # kernel_shape disagrees with the weight
    WEIGHT_DATA = "weight-data"  # the weight's bytes do not match its shape
    ZERO_POINT = "zero-point"
    DEQUANTIZE = "dequantize"  # the DequantizeLinear feeding the weight cannot be followed
    DYNAMIC_FORM = "dynamic-form"  # a dynamic weight of a form other than float Conv
    DYNAMIC_SHAPE = "dynamic-shape"  # a dynamic weight whose shape or type is unknown
    DYNAMIC_NOT_DEPTHWISE = "dynamic-not-depthwise"
    ATTRIBUTE_REFERENCE = "attribute-reference"  # attributes set where a function is called
    GROUPED = "grouped"  # a grouped conv that mixes channels: not depthwise
    BLOCK_DIAGONAL = "block-diagonal"  # rewritten already
    LOWERED = "lowered"  # lowered already (toeplitz, polyphase, conv2d)
    LOWERED_DAMAGED = "lowered-damaged"  # carries a lowering's marker but is no longer that lowering
    UNHANDLED_OP = "unhandled-op"  # a convolution of a kind this tool does not handle
    # selection: the node may not be touched
    NOT_INCLUDED = "not-included"
    EXCLUDED = "excluded"
    FEW_CHANNELS = "few-channels"
    DYNAMIC_LEFT = "dynamic-left"
    # policy: how the node's form was chosen, or why it stays depthwise
    POLICY = "policy"  # the named policy's choice
    PINNED = "pinned"  # node_group_sizes
    MEASURED = "measured"  # auto chose it
    PLANNED = "planned"  # a plan file chose it
    STAYS_DEPTHWISE = "stays-depthwise"  # the policy chose G = 1
    LOWERING_REFUSED = "lowering-refused"  # the layer cannot take the lowering asked for
    KEPT_BY_MEASUREMENT = "kept-by-measurement"  # auto measured and kept the original
    NOT_MEASURED = "not-measured"  # auto could not measure it
    PLAN_MISMATCH = "plan-mismatch"  # the plan's entry does not fit the node
    NOT_IN_PLAN = "not-in-plan"
    # revert
    DEPTHWISE_ALREADY = "depthwise-already"
    MIXES_CHANNELS = "mixes-channels"
    UNDONE = "undone"  # reverted

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Leave:
    """Why a node is left as it is: a code, the text people read, and the library parameters the
    text names (so that a front end can spell them its own way)."""

    code: Reason
    text: str
    parameters: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.text


class Text(str):
    """A message for people (a warning) that names library PARAMETERS as whole words."""

    parameters: tuple[str, ...]

    def __new__(cls, text: str, *parameters: str) -> Text:
        made = super().__new__(cls, text)
        made.parameters = parameters
        return made
