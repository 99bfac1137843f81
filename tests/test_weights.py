"""onnx_diagwise.weights on its own: the expansion and collapse of every form, element by element."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_diagwise.weights import (collapse_block_diagonal, collapse_transposed, diagonal_positions,
                                   dynamic_mask, expand_depthwise, expand_transposed, is_block_diagonal,
                                   is_block_diagonal_transposed)


def depthwise(channels: int, multiplier: int, kernel=(3, 3), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 100, (channels * multiplier, 1, *kernel)).astype(np.float32)


def test_diagonal_positions():
    assert diagonal_positions(8, 1, 4).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert diagonal_positions(8, 2, 2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # o // M, then % G


@pytest.mark.parametrize("channels,multiplier,group", [(8, 1, 4), (6, 2, 3), (4, 3, 2), (4, 1, 4), (5, 1, 1)])
def test_expand_puts_each_filter_on_its_diagonal_and_zero_elsewhere(channels, multiplier, group):
    weight = depthwise(channels, multiplier)
    expanded = expand_depthwise(weight, channels, group)
    assert expanded.shape == (channels * multiplier, group, 3, 3) and expanded.dtype == weight.dtype
    for o in range(channels * multiplier):
        for g in range(group):
            want = weight[o, 0] if g == (o // multiplier) % group else np.zeros((3, 3), np.float32)
            np.testing.assert_array_equal(expanded[o, g], want)
    assert is_block_diagonal(expanded, multiplier)
    np.testing.assert_array_equal(collapse_block_diagonal(expanded, multiplier), weight)


def test_fill_is_the_zero_point_per_output_channel():
    weight = depthwise(4, 1).astype(np.int8)
    zero_points = np.array([1, -2, 3, -4], np.int8)
    expanded = expand_depthwise(weight, 4, 2, fill=zero_points)
    assert expanded[0, 1].tolist() == [[1] * 3] * 3 and expanded[1, 0].tolist() == [[-2] * 3] * 3
    assert expanded[2, 1].tolist() == [[3] * 3] * 3  # row 2's diagonal is column 0: column 1 is filled
    assert is_block_diagonal(expanded, 1, fill=zero_points) and not is_block_diagonal(expanded, 1)
    np.testing.assert_array_equal(collapse_block_diagonal(expanded, 1, fill=zero_points), weight)
    assert expand_depthwise(weight, 4, 2, fill=np.int8(7))[0, 1, 0, 0] == 7  # one value for every row
    for fill in ([1, -2, 3, -4], 7, [7]):  # plain Python numbers take the weight's dtype
        assert expand_depthwise(weight, 4, 2, fill=fill).dtype == np.int8
        assert is_block_diagonal(expand_depthwise(weight, 4, 2, fill=fill), 1, fill=fill)
    with pytest.raises(ValueError, match="3 fill values for 4 output channels"):
        expand_depthwise(weight, 4, 2, fill=np.array([1, 2, 3], np.int8))


def test_off_diagonal_entries_are_found():
    expanded = expand_depthwise(depthwise(4, 1), 4, 2)
    expanded[3, 0, 2, 2] = 1e-30  # row 3 sits at column 1: column 0 must be zero
    assert not is_block_diagonal(expanded, 1)
    with pytest.raises(ValueError, match="^weight has entries off the block diagonal$"):
        collapse_block_diagonal(expanded, 1)


def test_bad_shapes():
    with pytest.raises(ValueError, match="does not divide C=6"):
        expand_depthwise(depthwise(6, 1), 6, 4)
    with pytest.raises(ValueError, match="does not divide"):
        expand_depthwise(depthwise(6, 1), 6, 0)
    with pytest.raises(ValueError, match="must have a kernel"):
        expand_depthwise(np.zeros((6, 1), np.float32), 6, 2)
    with pytest.raises(ValueError, match="dim 1 must be 1"):
        expand_depthwise(np.zeros((6, 2, 3), np.float32), 6, 2)
    with pytest.raises(ValueError, match=r"weight dim 0 \(6\) is not a multiple of C=4"):
        expand_depthwise(np.zeros((6, 1, 3), np.float32), 4, 2)
    with pytest.raises(ValueError, match=r"weight dim 0 \(6\) must be C=4"):
        expand_transposed(np.zeros((6, 1, 3), np.float32), 4, 2)


@pytest.mark.parametrize("channels,multiplier,group", [(4, 1, 2), (6, 2, 3), (4, 3, 4)])
def test_transposed_layout(channels, multiplier, group):
    weight = np.random.default_rng(1).integers(1, 9, (channels, multiplier, 2, 2)).astype(np.float32)
    expanded = expand_transposed(weight, channels, group)
    assert expanded.shape == (channels, group * multiplier, 2, 2)
    for i in range(channels):
        for column in range(group * multiplier):
            start = (i % group) * multiplier
            want = weight[i, column - start] if start <= column < start + multiplier else np.zeros((2, 2))
            np.testing.assert_array_equal(expanded[i, column], want)
    assert is_block_diagonal_transposed(expanded, group)
    np.testing.assert_array_equal(collapse_transposed(expanded, group), weight)
    if group > 1:
        expanded[0, group * multiplier - 1, 0, 0] = 1.0  # input 0 may only write columns 0..M-1
        assert not is_block_diagonal_transposed(expanded, group)
        with pytest.raises(ValueError, match="^weight has entries off the block diagonal$"):
            collapse_transposed(expanded, group)
    assert not is_block_diagonal_transposed(np.zeros((4, 3, 2), np.float32), 2)  # 3 columns: not G*M


def test_dynamic_mask_selects_the_diagonal():
    mask = dynamic_mask(3, 2, np.float16)
    assert mask.shape == (1, 3, 1, 3, 1, 1) and mask.dtype == np.float16
    assert mask[0, :, 0, :, 0, 0].tolist() == np.eye(3).tolist()
    weight = depthwise(6, 2)  # the run-time expansion, in numpy: the same as expand_depthwise
    grouped = (weight.reshape(2, 3, 2, 1, 3, 3) * dynamic_mask(3, 2, np.float32)).reshape(12, 3, 3, 3)
    np.testing.assert_array_equal(grouped, expand_depthwise(weight, 6, 3))
