"""Diagonalwise convolutions for PyTorch training (optional extra: pip install 'onnx-diagwise[torch]').

DiagonalwiseConv1d/2d/3d are drop-in replacements for depthwise nn.Conv1d/2d/3d
(groups == in_channels): the trainable weight keeps its depthwise shape
[C*M, 1, k...] and its state_dict key, and forward() runs one grouped convolution
with groups = C/G on the block-diagonal weight

    Reshape(W, [C/G, G, M, 1, k...]) * eye(G)[1, G, 1, G, 1...] -> [C*M, G, k...]

(README, "How it works"), so gradients reach only the diagonal entries, as in the
paper.  Exported with torch.onnx.export and constant folding, the mask product
folds into the same block-diagonal initializer `onnx-diagwise rewrite` writes.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from typing import Callable, Union

import torch
from torch import nn
from torch.nn import functional as F

from .errors import DiagwiseError
from .plan import group_size_for, parse_group_size

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _Diagonalwise:
    """Shared by DiagonalwiseConv1d/2d/3d; mixed into the nn.ConvNd it replaces."""

    group_size: int
    _rank: int

    def _init_group_size(self, group_size: int) -> None:
        channels = self.in_channels
        if self.groups != channels or channels < 1 or self.out_channels % channels:
            raise DiagwiseError(f"a diagonalwise conv must be depthwise (groups == in_channels); got "
                                f"in_channels={channels}, out_channels={self.out_channels}, groups={self.groups}")
        if group_size < 1 or channels % group_size:
            raise DiagwiseError(f"group size {group_size} does not divide C={channels}")
        self.group_size = group_size
        eye = torch.eye(group_size, dtype=self.weight.dtype, device=self.weight.device)
        # A buffer, not a parameter: it moves with .to() and is not trained.  Not saved,
        # so state_dicts stay those of the depthwise layer.
        self.register_buffer("diagonal_mask", eye.reshape(1, group_size, 1, group_size, *[1] * self._rank),
                             persistent=False)

    def block_weight(self) -> torch.Tensor:
        """The [C*M, G, k...] block-diagonal weight of one grouped convolution."""
        c, g = self.in_channels, self.group_size
        m = self.out_channels // c
        kernel = self.weight.shape[2:]
        blocks = self.weight.reshape(c // g, g, m, 1, *kernel) * self.diagonal_mask.to(self.weight.dtype)
        return blocks.reshape(c * m, g, *kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _FUNCTIONAL[self._rank]
        groups = self.in_channels // self.group_size
        weight = self.block_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, weight, self.bias, self.stride, 0, self.dilation, groups)
        return conv(x, weight, self.bias, self.stride, self.padding, self.dilation, groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"

    @classmethod
    def from_conv(cls, conv: nn.Module, group_size: int):
        """A diagonalwise layer sharing CONV's parameters (no copy)."""
        layer = cls.__new__(cls)
        _copy_state(conv, layer)
        layer._init_group_size(group_size)
        return layer

    def to_conv(self) -> nn.Module:
        """The plain depthwise nn.ConvNd with the same parameters."""
        conv = _CONVS[self._rank].__new__(_CONVS[self._rank])
        _copy_state(self, conv)
        del conv.group_size
        conv._buffers.pop("diagonal_mask")
        conv._non_persistent_buffers_set.discard("diagonal_mask")
        return conv


def _copy_state(source: nn.Module, target: nn.Module) -> None:
    """TARGET takes SOURCE's attributes; parameters and buffers are shared, their registries copied."""
    target.__dict__.update(source.__dict__)
    for registry in ("_parameters", "_buffers", "_modules"):
        setattr(target, registry, dict(getattr(source, registry)))
    target._non_persistent_buffers_set = set(source._non_persistent_buffers_set)


def _make(rank: int):
    base = _CONVS[rank]

    class DiagonalwiseConv(_Diagonalwise, base):
        _rank = rank

        def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                     groups: int | None = None, bias: bool = True, padding_mode: str = "zeros", device=None,
                     dtype=None, group_size: int = 32):
            groups = in_channels if groups is None else groups
            base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                          padding_mode, device, dtype)
            self._init_group_size(group_size)

    DiagonalwiseConv.__name__ = DiagonalwiseConv.__qualname__ = f"DiagonalwiseConv{rank}d"
    DiagonalwiseConv.__doc__ = (f"Depthwise nn.Conv{rank}d computed as one grouped convolution with "
                                f"groups = C/group_size on a block-diagonal weight.")
    return DiagonalwiseConv


DiagonalwiseConv1d = _make(1)
DiagonalwiseConv2d = _make(2)
DiagonalwiseConv3d = _make(3)
_DIAGONALWISE = {1: DiagonalwiseConv1d, 2: DiagonalwiseConv2d, 3: DiagonalwiseConv3d}

GroupSizeChoice = Union[int, str, Callable[[str, nn.Module], Union[int, str, None]]]


@dataclass
class ConvertedLayer:
    name: str
    channels: int
    multiplier: int
    kernel: list[int]
    group_size: int | None
    action: str  # "converted" | "skipped" | "reverted"
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _is_depthwise(module: nn.Module) -> bool:
    return (type(module) in _CONVS.values() and module.groups == module.in_channels > 1
            and module.out_channels % module.in_channels == 0)


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, child)


def convert(model: nn.Module, group_size: GroupSizeChoice = "paper", include: str | None = None,
            exclude: str | None = None, inplace: bool = False, return_report: bool = False):
    """Replace every depthwise nn.Conv1d/2d/3d by its diagonalwise twin (parameters shared).

    group_size: an int N (largest divisor of C <= N), 'paper' (32), 'full' (C), or a callable
    (module name, module) -> any of those or None to skip that layer.  Returns the model, or
    (model, report) with return_report=True: every depthwise layer, converted or why not."""
    model = model if inplace else copy.deepcopy(model)
    include_re = re.compile(include) if include else None
    exclude_re = re.compile(exclude) if exclude else None
    report = []
    for name, module in list(model.named_modules()):
        if not _is_depthwise(module):
            continue
        c = module.in_channels
        layer = ConvertedLayer(name, c, module.out_channels // c, list(module.kernel_size), None, "skipped", "")
        report.append(layer)
        if include_re and not include_re.search(name):
            layer.reason = f"name does not match include '{include}'"
            continue
        if exclude_re and exclude_re.search(name):
            layer.reason = f"name matches exclude '{exclude}'"
            continue
        choice = group_size(name, module) if callable(group_size) else group_size
        if choice is None:
            layer.reason = "the group_size callable returned None"
            continue
        g, how = group_size_for(c, parse_group_size(choice))
        if g == 1:
            layer.reason = f"G=1 ({how})"
            continue
        _set_child(model, name, _DIAGONALWISE[len(module.kernel_size)].from_conv(module, g))
        layer.group_size, layer.action, layer.reason = g, "converted", f"G={g}, groups={c // g} ({how})"
    return (model, report) if return_report else model


def revert(model: nn.Module, inplace: bool = False, return_report: bool = False):
    """Replace every diagonalwise layer by the plain depthwise nn.ConvNd (parameters shared).
    Returns the model, or (model, report) with return_report=True."""
    model = model if inplace else copy.deepcopy(model)
    report = []
    for name, module in list(model.named_modules()):
        if isinstance(module, _Diagonalwise):
            c = module.in_channels
            report.append(ConvertedLayer(name, c, module.out_channels // c, list(module.kernel_size),
                                         module.group_size, "reverted", "back to a depthwise conv"))
            _set_child(model, name, module.to_conv())
    return (model, report) if return_report else model


__all__ = ["DiagonalwiseConv1d", "DiagonalwiseConv2d", "DiagonalwiseConv3d", "convert", "revert", "ConvertedLayer"]
