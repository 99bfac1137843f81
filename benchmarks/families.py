"""Large-kernel network families for the benchmarks: PyTorch modules with random weights (no
downloads), exported to ONNX here, so the same weights run in PyTorch eager and in onnxruntime.

    python benchmarks/families.py --list
    python benchmarks/families.py --out DIR --family mixnet_s vocos --dtype float32    # writes DIR/NAME-DTYPE.onnx

Each family is built from its PyPI package when that package imports (`--source package`):
torchaudio's `Conformer`, transformers' `Wav2Vec2ConformerModel` from its config, timm's
`mixnet_s`, `convmixer_1536_20`, `focalnet_large_fl4`, `inception_next_tiny`, `edgenext_small`.
Otherwise (`--source plain`, or `auto` without the package) it is built from this file's own
PyTorch modules, written after the published architectures (the depthwise convs exactly: channels,
kernels, strides, padding; the rest of each block as published, simplified where noted in NOTES).
RepLKNet-31B comes from benchmarks/zoo.py (ONNX built in code); its PyTorch form is
benchmarks/onnx_torch.py running that graph.  Every result names the source it was built from.

    family                depthwise convs                         input
    conformer             1-D k=31, C=512 (16 layers)             [N, 256 frames, 512]
    wav2vec2_conformer    1-D k=31, C=768 (12 layers)             [N, 64000 samples] (4 s at 16 kHz)
    mixnet_s              3x3 .. 11x11 mixed (split channels)     [N, 3, 224, 224]
    convmixer_1536_20     9x9, C=1536 at 32x32 (20 layers)        [N, 3, 224, 224]
    focalnet_large_fl4    3x3, 5x5, 7x7, 9x9 focal levels          [N, 3, 224, 224]
    inception_next_tiny   1x11, 11x1 bands + 3x3 on 1/8 channels  [N, 3, 224, 224]
    edgenext_small        3x3 .. 9x9 per stage                    [N, 3, 224, 224]
    replknet_31b          31x31 .. 13x13 (zoo.py)                 [N, 3, 224, 224]
    vocos                 1-D k=7, C=512 (8 ConvNeXt blocks)      [N, 100 mels, 256 frames]

`tiny=True` builds each with small widths and depths and a small input, for tests on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

OPSET = 17


# ---------------------------------------------------------------- shared blocks


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act=nn.SiLU):
        super().__init__()
        self.conv_reduce, self.act, self.conv_expand = nn.Conv2d(channels, reduced, 1), act(), nn.Conv2d(reduced,
                                                                                                       channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


def split_channels(channels: int, splits: int) -> list[int]:
    """timm's _split_channels: equal parts, the first takes the remainder."""
    parts = [channels // splits] * splits
    parts[0] += channels - sum(parts)
    return parts


class MixedConv2d(nn.Module):
    """timm's MixedConv2d: channels split in parts, each with its own kernel (depthwise when DEPTHWISE)."""

    def __init__(self, cin: int, cout: int, kernels: list[int], stride: int = 1, depthwise: bool = False):
        super().__init__()
        self.splits = split_channels(cin, len(kernels))
        outs = split_channels(cout, len(kernels))
        self.convs = nn.ModuleList(
            nn.Conv2d(ci, co, k, stride, k // 2, groups=ci if depthwise else 1, bias=False)
            for ci, co, k in zip(self.splits, outs, kernels))

    def forward(self, x):
        if len(self.convs) == 1:
            return self.convs[0](x)
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.splits, 1))], 1)


# ---------------------------------------------------------------- conformers (torchaudio, transformers)


class ConformerConvModule(nn.Module):
    """LayerNorm, pointwise conv to 2C + GLU, depthwise conv (k, 'same'), BatchNorm, SiLU, pointwise conv."""

    def __init__(self, dim: int, kernel: int, bias: bool = True):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim, bias=bias)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=bias)

    def forward(self, x):  # [N, T, C]
        y = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        y = F.silu(self.batch_norm(self.depthwise_conv(y)))
        return self.pointwise_conv2(y).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.norm(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention as nn.MultiheadAttention computes it (one in-projection, softmax(QK^T/sqrt(d))V,
    out-projection), written out so that it exports to ONNX in inference mode too."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.in_proj, self.out_proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):  # [N, T, C]
        n, t, c = x.shape
        q, k, v = self.in_proj(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, -1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(n, t, c))


class ConformerLayer(nn.Module):
    """torchaudio's ConformerLayer (convolution after attention): half FFN, MHSA, conv module,
    half FFN, LayerNorm."""

    def __init__(self, dim: int, ffn: int, heads: int, kernel: int, conv_bias: bool = True):
        super().__init__()
        self.ffn1, self.ffn2 = FeedForward(dim, ffn), FeedForward(dim, ffn)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.conv = ConformerConvModule(dim, kernel, conv_bias)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + 0.5 * self.ffn1(x)
        y = self.attn_norm(x)
        x = x + self.attn(y)
        x = x + self.conv(x)
        return self.final_norm(x + 0.5 * self.ffn2(x))


class Conformer(nn.Module):
    """torchaudio.models.Conformer's layers on [N, T, input_dim] (every frame valid)."""

    def __init__(self, dim=512, heads=8, ffn=2048, layers=16, kernel=31):
        super().__init__()
        self.layers = nn.ModuleList(ConformerLayer(dim, ffn, heads, kernel) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Wav2Vec2Conformer(nn.Module):
    """transformers' Wav2Vec2ConformerModel (default config) in plain PyTorch: the 7-conv feature
    encoder (GroupNorm on the first), LayerNorm + projection, and conformer layers whose conv module
    has a bias-free depthwise conv (k=31).  Simplified: plain multi-head attention (the package's
    default adds relative position terms), no positional conv embedding."""

    CONVS = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2

    def __init__(self, hidden=768, layers=12, heads=12, ffn=3072, kernel=31, conv_dim=512):
        super().__init__()
        convs, cin = [], 1
        for i, (k, s) in enumerate(self.CONVS):
            convs += [nn.Conv1d(cin, conv_dim, k, s, bias=False)]
            if i == 0:
                convs += [nn.GroupNorm(conv_dim, conv_dim)]
            convs += [nn.GELU()]
            cin = conv_dim
        self.feature_extractor = nn.Sequential(*convs)
        self.feature_norm, self.projection = nn.LayerNorm(conv_dim), nn.Linear(conv_dim, hidden)
        self.layers = nn.ModuleList(ConformerLayer(hidden, ffn, heads, kernel, conv_bias=False) for _ in range(layers))

    def forward(self, waveform):  # [N, samples]
        x = self.projection(self.feature_norm(self.feature_extractor(waveform.unsqueeze(1)).transpose(1, 2)))
        for layer in self.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------- mixnet_s (timm)

# (repeats, kernels, expansion, out channels, stride, SE ratio of the block input, activation,
#  expansion / projection 1x1 split in two)
MIXNET_S = [
    (1, [3], 1, 16, 1, 0, "relu", False),
    (1, [3], 6, 24, 2, 0, "relu", True), (1, [3], 3, 24, 1, 0, "relu", True),
    (1, [3, 5, 7], 6, 40, 2, 0.5, "silu", False), (3, [3, 5], 6, 40, 1, 0.5, "silu", True),
    (1, [3, 5, 7], 6, 80, 2, 0.25, "silu", False), (2, [3, 5], 6, 80, 1, 0.25, "silu", False),
    (1, [3, 5, 7], 6, 120, 1, 0.5, "silu", True), (2, [3, 5, 7, 9], 3, 120, 1, 0.5, "silu", True),
    (1, [3, 5, 7, 9, 11], 6, 200, 2, 0.5, "silu", False), (2, [3, 5, 7, 9], 6, 200, 1, 0.5, "silu", False),
]


class MixBlock(nn.Module):
    def __init__(self, cin, cout, kernels, expansion, stride, se, act, split_pw):
        super().__init__()
        act_layer = nn.ReLU if act == "relu" else nn.SiLU
        mid = cin * expansion
        self.expand = None
        if expansion != 1:
            self.expand = nn.Sequential(MixedConv2d(cin, mid, [1, 1] if split_pw else [1]), nn.BatchNorm2d(mid),
                                        act_layer())
        self.dw = nn.Sequential(MixedConv2d(mid, mid, kernels, stride, depthwise=True), nn.BatchNorm2d(mid),
                                act_layer())
        self.se = SqueezeExcite(mid, max(1, int(cin * se)), act_layer) if se else nn.Identity()
        self.project = nn.Sequential(MixedConv2d(mid, cout, [1, 1] if split_pw and expansion != 1 else [1]),
                                     nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.dw(y)))
        return x + y if self.residual else y


class MixNetS(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        ch = lambda c: max(8, int(c * width))  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, ch(16), 3, 2, 1, bias=False), nn.BatchNorm2d(ch(16)), nn.ReLU())
        blocks, cin = [], ch(16)
        for repeats, kernels, expansion, cout, stride, se, act, split in MIXNET_S:
            for i in range(repeats):
                blocks.append(MixBlock(cin, ch(cout), kernels, expansion, stride if i == 0 else 1, se, act, split))
                cin = ch(cout)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 1536, 1, bias=False), nn.BatchNorm2d(1536), nn.ReLU())
        self.classifier = nn.Linear(1536, classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))


# ---------------------------------------------------------------- convmixer (timm convmixer_1536_20)


class ConvMixer(nn.Module):
    def __init__(self, dim=1536, depth=20, kernel=9, patch=7, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, patch, patch), nn.GELU(), nn.BatchNorm2d(dim))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "dw": nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2), nn.GELU(),
                                nn.BatchNorm2d(dim)),
            "pw": nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))}) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block["pw"](x + block["dw"](x))
        return self.head(x.mean((2, 3)))


# ---------------------------------------------------------------- focalnet (timm focalnet_large_fl4)


class FocalModulation(nn.Module):
    def __init__(self, dim, focal_level, focal_window=3, focal_factor=2):
        super().__init__()
        self.focal_level = focal_level
        self.f = nn.Conv2d(dim, 2 * dim + focal_level + 1, 1)
        self.h = nn.Conv2d(dim, dim, 1)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, focal_factor * k + focal_window, groups=dim,
                                    padding=(focal_factor * k + focal_window) // 2, bias=False), nn.GELU())
            for k in range(focal_level))
        self.proj = nn.Conv2d(dim, dim, 1)
        self.dim = dim

    def forward(self, x):
        q, ctx, gates = torch.split(self.f(x), [self.dim, self.dim, self.focal_level + 1], 1)
        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level:level + 1]
        ctx_all = ctx_all + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, self.focal_level:]
        ctx_all = ctx_all / (self.focal_level + 1)  # normalize_modulator
        return self.proj(q * self.h(ctx_all))


class FocalNetBlock(nn.Module):
    def __init__(self, dim, focal_level):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(dim), LayerNorm2d(dim)
        self.modulation = FocalModulation(dim, focal_level)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))
        self.gamma1, self.gamma2 = nn.Parameter(torch.full((dim, 1, 1), 1e-4)), nn.Parameter(torch.full((dim, 1, 1),
                                                                                                          1e-4))

    def forward(self, x):
        x = x + self.gamma1 * self.norm1(self.modulation(x))  # use_post_norm
        return x + self.gamma2 * self.norm2(self.mlp(x))


class FocalNet(nn.Module):
    """focalnet_large_fl4: embed 192, depths 2-2-18-2, focal level 4 (3x3 .. 9x9), post-norm, overlapped
    patch embedding (7x7 s4 stem, 3x3 s2 downsampling), layer scale."""

    def __init__(self, dim=192, depths=(2, 2, 18, 2), focal_level=4, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 7, 4, 3), LayerNorm2d(dim))
        stages = []
        for i, depth in enumerate(depths):
            d = dim * 2 ** i
            down = nn.Identity() if i == 0 else nn.Sequential(nn.Conv2d(d // 2, d, 3, 2, 1), LayerNorm2d(d))
            stages.append(nn.Sequential(down, *[FocalNetBlock(d, focal_level) for _ in range(depth)]))
        self.stages = nn.Sequential(*stages)
        self.norm = LayerNorm2d(dim * 2 ** (len(depths) - 1))
        self.head = nn.Linear(dim * 2 ** (len(depths) - 1), classes)

    def forward(self, x):
        return self.head(self.norm(self.stages(self.stem(x))).mean((2, 3)))


# ---------------------------------------------------------------- inception_next (timm inception_next_tiny)


class InceptionDWConv2d(nn.Module):
    def __init__(self, dim, square=3, band=11, ratio=0.125):
        super().__init__()
        gc = int(dim * ratio)
        self.dwconv_hw = nn.Conv2d(gc, gc, square, padding=square // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band), padding=(0, band // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band, 1), padding=(band // 2, 0), groups=gc)
        self.splits = [dim - 3 * gc, gc, gc, gc]

    def forward(self, x):
        x_id, x_hw, x_w, x_h = torch.split(x, self.splits, 1)
        return torch.cat([x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)], 1)


class MetaNeXtBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.token_mixer, self.norm = InceptionDWConv2d(dim), nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, mlp_ratio * dim, 1), nn.GELU(), nn.Conv2d(mlp_ratio * dim, dim, 1))
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), 1e-6))

    def forward(self, x):
        return x + self.gamma * self.mlp(self.norm(self.token_mixer(x)))


class InceptionNeXt(nn.Module):
    def __init__(self, dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), mlp_ratios=(4, 4, 4, 3), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
        stages = []
        for i, (d, depth) in enumerate(zip(dims, depths)):
            down = nn.Identity() if i == 0 else nn.Sequential(nn.BatchNorm2d(dims[i - 1]),
                                                              nn.Conv2d(dims[i - 1], d, 2, 2))
            stages.append(nn.Sequential(down, *[MetaNeXtBlock(d, mlp_ratios[i]) for _ in range(depth)]))
        self.stages = nn.Sequential(*stages)
        c = dims[-1]
        self.head = nn.Sequential(nn.Linear(c, 3 * c), nn.GELU(), nn.LayerNorm(3 * c), nn.Linear(3 * c, classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


# ---------------------------------------------------------------- edgenext (timm edgenext_small)


class ConvBlock(nn.Module):
    """EdgeNeXt's conv encoder: depthwise kxk, LayerNorm, MLP (4x) channels-last, layer scale, residual."""

    def __init__(self, dim, kernel):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.gamma * self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class CrossCovarianceAttn(nn.Module):
    def __init__(self, dim, heads=8):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, x):  # [N, L, C]
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return self.proj((attn.softmax(-1) @ v).permute(0, 3, 1, 2).reshape(n, length, c))


class SplitTransposeBlock(nn.Module):
    """EdgeNeXt's SDTA encoder: channel splits through a cascade of depthwise 3x3 convs, then
    cross-covariance attention and the MLP.  Simplified: no Fourier positional encoding."""

    def __init__(self, dim, scales):
        super().__init__()
        width = max(int(math.ceil(dim / scales)), int(math.floor(dim // scales)))
        self.width, self.scales = width, scales
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(max(1,
                                                                                                          scales - 1)))
        self.norm_xca, self.xca = nn.LayerNorm(dim, eps=1e-6), CrossCovarianceAttn(dim)
        self.gamma_xca = nn.Parameter(torch.full((dim,), 1e-6))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        shortcut = x
        parts = list(torch.split(x, self.width, 1))
        out, sp = [], parts[0]
        for i, conv in enumerate(self.convs):
            sp = conv(parts[i] if i == 0 else sp + parts[i])
            out.append(sp)
        out.append(parts[-1])
        x = torch.cat(out, 1)
        n, c, h, w = x.shape
        x = x.reshape(n, c, h * w).transpose(1, 2)
        x = x + self.gamma_xca * self.xca(self.norm_xca(x))
        x = x.reshape(n, h, w, c)
        x = self.gamma * self.mlp(self.norm(x))
        return shortcut + x.permute(0, 3, 1, 2)


class EdgeNeXt(nn.Module):
    def __init__(self, dims=(48, 96, 160, 304), depths=(3, 3, 9, 3), kernels=(3, 5, 7, 9), global_blocks=(0, 1, 1, 1),
                 scales=(2, 2, 3, 4), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        stages = []
        for i, d in enumerate(dims):
            down = nn.Identity() if i == 0 else nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                                              nn.Conv2d(dims[i - 1], d, 2, 2))
            blocks = [ConvBlock(d, kernels[i]) for _ in range(depths[i] - global_blocks[i])]
            blocks += [SplitTransposeBlock(d, scales[i]) for _ in range(global_blocks[i])]
            stages.append(nn.Sequential(down, *blocks))
        self.stages = nn.Sequential(*stages)
        self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.head(self.norm(self.stages(self.stem(x)).mean((2, 3))))


# ---------------------------------------------------------------- vocos (1-D ConvNeXt backbone)


class ConvNeXt1dBlock(nn.Module):
    def __init__(self, dim, hidden, kernel=7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1.0 / 8))

    def forward(self, x):  # [N, C, T]
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x).transpose(1, 2)))))
        return x + (self.gamma * y).transpose(1, 2)


class Vocos(nn.Module):
    """Vocos' backbone (Siuzdak 2023): embedding conv k=7, LayerNorm, 8 ConvNeXt blocks (depthwise k=7,
    dim 512, hidden 1536), LayerNorm, and the ISTFT head's Linear to n_fft + 2 = 1026 (the inverse STFT
    itself is left out: it is not a convolution)."""

    def __init__(self, mels=100, dim=512, hidden=1536, layers=8, out=1026):
        super().__init__()
        self.embed, self.norm = nn.Conv1d(mels, dim, 7, padding=3), nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXt1dBlock(dim, hidden) for _ in range(layers))
        self.final_norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out)

    def forward(self, mel):  # [N, mels, T]
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x.transpose(1, 2)))


# ---------------------------------------------------------------- the families


@dataclass(frozen=True)
class Family:
    name: str
    package: str | None  # the PyPI package it comes from when installed
    input_shape: tuple[int, ...]  # without the batch dim
    tiny_shape: tuple[int, ...]
    note: str


FAMILIES = {f.name: f for f in [
    Family("conformer", "torchaudio", (256, 512), (32, 64), "torchaudio.models.Conformer(512, 8 heads, FFN 2048, "
           "16 layers, depthwise k=31)"),
    Family("wav2vec2_conformer", "transformers", (64000,), (4000,),
           "transformers Wav2Vec2ConformerModel(Wav2Vec2ConformerConfig()) (768, 12 layers, depthwise k=31)"),
    Family("mixnet_s", "timm", (3, 224, 224), (3, 64, 64), "timm mixnet_s (mixed depthwise 3x3 .. 11x11)"),
    Family("convmixer_1536_20", "timm", (3, 224, 224), (3, 56, 56), "timm convmixer_1536_20 (depthwise 9x9)"),
    Family("focalnet_large_fl4", "timm", (3, 224, 224), (3, 64, 64),
           "timm focalnet_large_fl4 (focal depthwise 3x3, 5x5, 7x7, 9x9)"),
    Family("inception_next_tiny", "timm", (3, 224, 224), (3, 64, 64),
           "timm inception_next_tiny (depthwise 1x11, 11x1, 3x3)"),
    Family("edgenext_small", "timm", (3, 224, 224), (3, 64, 64), "timm edgenext_small (depthwise 3x3 .. 9x9)"),
    Family("replknet_31b", None, (3, 224, 224), (3, 224, 224),
           "RepLKNet-31B from benchmarks/zoo.py (ONNX built in code; PyTorch through onnx_torch.py)"),
    Family("vocos", None, (100, 256), (100, 32), "Vocos-style 1-D ConvNeXt backbone (depthwise k=7, dim 512)"),
]}


def _plain(name: str, tiny: bool) -> nn.Module:
    if name == "conformer":
        return Conformer(64, 4, 128, 2, 31) if tiny else Conformer()
    if name == "wav2vec2_conformer":
        return Wav2Vec2Conformer(64, 2, 4, 128, 31, 32) if tiny else Wav2Vec2Conformer()
    if name == "mixnet_s":
        return MixNetS(0.5 if tiny else 1.0)
    if name == "convmixer_1536_20":
        return ConvMixer(64, 2) if tiny else ConvMixer()
    if name == "focalnet_large_fl4":
        return FocalNet(16, (1, 1, 2, 1)) if tiny else FocalNet()
    if name == "inception_next_tiny":
        return InceptionNeXt((16, 32, 64, 128), (1, 1, 2, 1)) if tiny else InceptionNeXt()
    if name == "edgenext_small":
        return EdgeNeXt((16, 32, 48, 64), (1, 2, 2, 2)) if tiny else EdgeNeXt()
    if name == "vocos":
        return Vocos(dim=64, hidden=128, layers=2) if tiny else Vocos()
    raise ValueError(f"no plain PyTorch form for {name!r}")


class _FirstOutput(nn.Module):
    """A package's module whose forward takes extra arguments or returns a tuple or a dict."""

    def __init__(self, inner: nn.Module, kind: str):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        if self.kind == "torchaudio":
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
            return self.inner(x, lengths)[0]
        return self.inner(x, return_dict=False)[0]


def _from_package(name: str, tiny: bool) -> nn.Module:
    if name == "conformer":
        from torchaudio.models import Conformer as TAConformer

        args = (64, 4, 128, 2, 31) if tiny else (512, 8, 2048, 16, 31)
        return _FirstOutput(TAConformer(*args), "torchaudio")
    if name == "wav2vec2_conformer":
        from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel

        config = Wav2Vec2ConformerConfig()
        if tiny:
            config = Wav2Vec2ConformerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=128, conv_dim=(32,) * 7,
                                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
        return _FirstOutput(Wav2Vec2ConformerModel(config).eval(), "transformers")
    import timm

    return timm.create_model(name, pretrained=False, **({"num_classes": 10} if tiny else {}))


def package_problem(name: str) -> str:
    """'' when NAME's package imports, else why not."""
    package = FAMILIES[name].package
    if package is None:
        return f"{name} has no PyPI package here"
    try:
        importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - ImportError or a package broken beside this torch
        return f"{package} does not import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return ""


def build(name: str, source: str = "auto", tiny: bool = False, seed: int = 0) -> tuple[nn.Module, str]:
    """(module in eval mode with seeded random weights, the source it was built from)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    if source not in ("auto", "package", "plain"):
        raise ValueError(f"source must be auto, package or plain; got {source!r}")
    torch.manual_seed(seed)
    if name == "replknet_31b":
        import onnx_torch

        return onnx_torch.OnnxModule(zoo.build("replknet_31b", "float32", seed)).eval(), "benchmarks/zoo.py"
    problem = package_problem(name)
    if source == "package" and problem:
        raise RuntimeError(problem)
    if source != "plain" and not problem:
        package = FAMILIES[name].package
        version = getattr(importlib.import_module(package), "__version__", "?")
        module, built_from = _from_package(name, tiny), f"{package} {version}"
    else:
        module, built_from = _plain(name, tiny), "plain PyTorch (benchmarks/families.py)"
    _randomize_norms(module)
    return module.eval(), built_from


def _randomize_norms(module: nn.Module) -> None:
    """BatchNorm running statistics near those of trained networks, not the identity (seeded)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def example_input(name: str, batch: int, tiny: bool = False, dtype=torch.float32, device="cpu",
                  seed: int = 0) -> torch.Tensor:
    family = FAMILIES[name]
    shape = family.tiny_shape if tiny else family.input_shape
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((batch, *shape), generator=gen) * 2 - 1).to(device=device, dtype=dtype)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """MODULE as ONNX (opset 17, TorchScript exporter, batch dim 'N' symbolic), in the dtype of its weights."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          do_constant_folding=True)
    import onnx

    model = onnx.load(str(tmp))
    model.ir_version = min(model.ir_version, zoo.IR_VERSION)  # onnxruntime 1.18+ reads it
    onnx.save(model, str(path))
    tmp.unlink()
    return path


def onnx_model(name: str, module: nn.Module, dtype: str, folder: Path, tiny: bool = False, device="cpu") -> Path:
    """FOLDER/NAME-DTYPE.onnx exported from MODULE (RepLKNet-31B: zoo.py's own build)."""
    if name == "replknet_31b":
        return zoo.zoo_path("replknet_31b", dtype, folder)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    module = module.to(device=device, dtype=torch_dtype)
    return export_onnx(module, example_input(name, 1, tiny, torch_dtype, device), folder / f"{name}-{dtype}.onnx")


def depthwise_convs(module: nn.Module) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, channels, kernel) of every depthwise conv of MODULE."""
    return [(n, m.in_channels, tuple(m.kernel_size)) for n, m in module.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels > 1
            and m.out_channels % m.in_channels == 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the families, their sources and depthwise convs")
    parser.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--source", default="auto", choices=["auto", "package", "plain"])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16"])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in args.family:
        module, source = build(name, args.source, args.tiny)
        convs = depthwise_convs(module)
        kernels = sorted({"x".join(map(str, k)) for _, _, k in convs})
        params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers()
                                                                  if name == "replknet_31b")
        print(f"{name}: {source}; {params / 1e6:.2f}M parameters; {len(convs)} depthwise convs, kernels "
              f"{', '.join(kernels)}" + ("" if not package_problem(name) else f" ({package_problem(name)})"))
        if args.out and not args.list:
            for dtype in args.dtype:
                print(f"  {onnx_model(name, module, dtype, args.out, args.tiny)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
