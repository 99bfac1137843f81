"""Pure numpy: depthwise weights <-> block-diagonal grouped weights, every variant.

Notation (README, "How it works"): C input channels, M depth multiplier, G channels
per group with G | C.

* Conv (and FusedConv, QLinearConv, ConvInteger, QDQ): W [C*M, 1, k...] with
  group = C becomes W' [C*M, G, k...] with group = C/G, W'[o, (o // M) % G] =
  W[o, 0]: output channel o reads input channel o // M, which sits at position
  (o // M) % G of its group.
* ConvTranspose: W [C, M, k...] becomes W' [C, G*M, k...],
  W'[i, (i % G)*M + m] = W[i, m].

Off-diagonal entries are FILL: 0 for floats (the all-zero bit pattern in every
float dtype, so the expansion is exact), and the zero point of the output
channel for quantized weights, so that (w - zero_point) is 0 there.
"""

from __future__ import annotations

import numpy as np


def _fill(shape: tuple[int, ...], dtype, fill) -> np.ndarray:
    """An array of SHAPE filled with FILL: a scalar, or one value per row (dim 0)."""
    if fill is None:
        return np.zeros(shape, dtype=dtype)
    fill = np.asarray(fill, dtype=dtype)
    if fill.size == 1:
        return np.full(shape, fill.reshape(()), dtype=dtype)
    if fill.size != shape[0]:
        raise ValueError(f"{fill.size} fill values for {shape[0]} output channels")
    return np.broadcast_to(fill.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


def _check(weight: np.ndarray, channels: int, group_size: int, axis_one: int) -> None:
    if weight.ndim < 3:
        raise ValueError(f"weight must have a kernel, got shape {list(weight.shape)}")
    if group_size < 1 or channels % group_size:
        raise ValueError(f"group size {group_size} does not divide C={channels}")
    if axis_one is not None and weight.shape[1] != axis_one:
        raise ValueError(f"weight dim 1 must be {axis_one}, got shape {list(weight.shape)}")


def diagonal_positions(out_channels: int, multiplier: int, group_size: int) -> np.ndarray:
    """Column of the one diagonal entry in each output row of a block-diagonal Conv weight."""
    return (np.arange(out_channels) // multiplier) % group_size


def expand_depthwise(weight: np.ndarray, channels: int, group_size: int, fill=None) -> np.ndarray:
    """Conv: [C*M, 1, k...] -> [C*M, G, k...] for group = C/G."""
    _check(weight, channels, group_size, 1)
    if weight.shape[0] % channels:
        raise ValueError(f"weight dim 0 ({weight.shape[0]}) is not a multiple of C={channels}")
    out_channels, multiplier = weight.shape[0], weight.shape[0] // channels
    expanded = _fill((out_channels, group_size) + weight.shape[2:], weight.dtype, fill)
    rows = np.arange(out_channels)
    expanded[rows, diagonal_positions(out_channels, multiplier, group_size)] = weight[:, 0]
    return expanded


def is_block_diagonal(weight: np.ndarray, multiplier: int, fill=None) -> bool:
    """True if Conv weight [C*M, G, k...] equals FILL everywhere off the diagonal."""
    out_channels, group_size = weight.shape[:2]
    first = 0 if fill is None else np.asarray(fill, dtype=weight.dtype).reshape(-1)[0]
    if np.any(weight[0, 1:] != first):  # row 0's diagonal is column 0: most dense weights stop here, cheaply
        return False
    off = np.ones(weight.shape[:2], dtype=bool)
    off[np.arange(out_channels), diagonal_positions(out_channels, multiplier, group_size)] = False
    expected = _fill(weight.shape, weight.dtype, fill)
    return bool(np.array_equal(weight[off], expected[off]))


def collapse_block_diagonal(weight: np.ndarray, multiplier: int, fill=None) -> np.ndarray:
    """Inverse of expand_depthwise: [C*M, G, k...] -> [C*M, 1, k...]."""
    if not is_block_diagonal(weight, multiplier, fill):
        raise ValueError("weight has entries off the block diagonal")
    out_channels, group_size = weight.shape[:2]
    rows = np.arange(out_channels)
    return weight[rows, diagonal_positions(out_channels, multiplier, group_size)][:, None]


def _transposed_mask(channels: int, multiplier: int, group_size: int) -> np.ndarray:
    """[C, G*M] True where input channel i may hold weights: columns (i % G)*M ... + M."""
    columns = np.arange(group_size * multiplier)
    start = (np.arange(channels) % group_size) * multiplier
    return (columns[None, :] >= start[:, None]) & (columns[None, :] < start[:, None] + multiplier)


def expand_transposed(weight: np.ndarray, channels: int, group_size: int) -> np.ndarray:
    """ConvTranspose: [C, M, k...] -> [C, G*M, k...] for group = C/G."""
    _check(weight, channels, group_size, None)
    if weight.shape[0] != channels:
        raise ValueError(f"ConvTranspose weight dim 0 ({weight.shape[0]}) must be C={channels}")
    multiplier = weight.shape[1]
    expanded = np.zeros((channels, group_size * multiplier) + weight.shape[2:], dtype=weight.dtype)
    expanded[_transposed_mask(channels, multiplier, group_size)] = weight.reshape(
        (channels * multiplier,) + weight.shape[2:])
    return expanded


def is_block_diagonal_transposed(weight: np.ndarray, group_size: int) -> bool:
    channels, width = weight.shape[:2]
    if width % group_size:
        return False
    mask = _transposed_mask(channels, width // group_size, group_size)
    return not np.any(weight[~mask])


def collapse_transposed(weight: np.ndarray, group_size: int) -> np.ndarray:
    """Inverse of expand_transposed: [C, G*M, k...] -> [C, M, k...]."""
    if not is_block_diagonal_transposed(weight, group_size):
        raise ValueError("weight has entries off the block diagonal")
    channels, width = weight.shape[:2]
    multiplier = width // group_size
    mask = _transposed_mask(channels, multiplier, group_size)
    return weight[mask].reshape((channels, multiplier) + weight.shape[2:])


def dynamic_mask(group_size: int, kernel_rank: int, dtype) -> np.ndarray:
    """eye(G) shaped [1, G, 1, G, 1...] for Reshape(W, [C/G, G, M, 1, k...]) * mask."""
    return np.eye(group_size, dtype=dtype).reshape((1, group_size, 1, group_size) + (1,) * kernel_rank)
