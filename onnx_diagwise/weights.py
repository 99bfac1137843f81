"""Pure numpy: depthwise weights <-> block-diagonal grouped-conv weights.

Notation (DESIGN.md section 2): C input channels, M depth multiplier, G channels
per group with G | C.  Depthwise Conv weight W [C*M, 1, k...] with group = C
becomes W' [C*M, G, k...] with group = C/G, zero except
W'[o, (o // M) % G] = W[o, 0].  Output channel o reads input channel o // M; in
its group of G input channels that channel sits at position (o // M) % G.
Zero is the all-zero bit pattern in every float dtype, so the expansion is
exact for float16, bfloat16, float32 and float64 alike.
"""

from __future__ import annotations

import numpy as np


def _check_depthwise(weight: np.ndarray, channels: int, group_size: int) -> int:
    if weight.ndim < 3 or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be [C*M, 1, k...], got shape {list(weight.shape)}")
    if channels < 1 or weight.shape[0] % channels:
        raise ValueError(f"weight dim 0 ({weight.shape[0]}) is not a multiple of C={channels}")
    if group_size < 1 or channels % group_size:
        raise ValueError(f"group size {group_size} does not divide C={channels}")
    return weight.shape[0] // channels


def expand_depthwise(weight: np.ndarray, channels: int, group_size: int) -> np.ndarray:
    """[C*M, 1, k...] -> [C*M, G, k...] block-diagonal weight for Conv(group = C/G)."""
    multiplier = _check_depthwise(weight, channels, group_size)
    out_channels = weight.shape[0]
    expanded = np.zeros((out_channels, group_size) + weight.shape[2:], dtype=weight.dtype)
    rows = np.arange(out_channels)
    expanded[rows, (rows // multiplier) % group_size] = weight[:, 0]
    return expanded


def diagonal_positions(out_channels: int, multiplier: int, group_size: int) -> np.ndarray:
    """Column of the one non-zero entry in each output row of a block-diagonal weight."""
    return (np.arange(out_channels) // multiplier) % group_size


def is_block_diagonal(weight: np.ndarray, multiplier: int) -> bool:
    """True if WEIGHT [C*M, G, k...] is zero everywhere off the diagonal positions."""
    out_channels, group_size = weight.shape[:2]
    mask = np.ones(weight.shape[:2], dtype=bool)
    mask[np.arange(out_channels), diagonal_positions(out_channels, multiplier, group_size)] = False
    return not np.any(weight[mask])


def collapse_block_diagonal(weight: np.ndarray, multiplier: int) -> np.ndarray:
    """Inverse of expand_depthwise: [C*M, G, k...] -> [C*M, 1, k...]."""
    if not is_block_diagonal(weight, multiplier):
        raise ValueError("weight has non-zero entries off the block diagonal")
    out_channels, group_size = weight.shape[:2]
    rows = np.arange(out_channels)
    return weight[rows, diagonal_positions(out_channels, multiplier, group_size)][:, None]
