"""Export real PyTorch networks with depthwise convolutions to ONNX, for trying the
rewrite on models that came out of an exporter rather than onnx.helper.

    pip install torch onnxscript
    python scripts/export_torch_models.py OUT_DIR

Writes, for each network, OUT_DIR/<name>.<exporter>.onnx with both the TorchScript
exporter (dynamo=False) and the dynamo exporter.  Weights are random (seeded);
BatchNorm layers are in eval mode with random statistics so that folding matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


def bn(c: int) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(c)
    layer.running_mean.uniform_(-0.1, 0.1)
    layer.running_var.uniform_(0.9, 1.1)
    return layer


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, act=nn.ReLU6, se=False):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), bn(hidden), act(),
            nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), bn(hidden), act(),
            SqueezeExcite(hidden) if se else nn.Identity(),
            nn.Conv2d(hidden, cout, 1, bias=False), bn(cout))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(),
                                nn.Conv2d(c // 4, c, 1), nn.Hardsigmoid())

    def forward(self, x):
        return x * self.fc(x)


def mobilenet_v2_small():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU6(),
        InvertedResidual(16, 24, 6, 3, 2), InvertedResidual(24, 24, 6, 3, 1),
        InvertedResidual(24, 32, 6, 3, 2), InvertedResidual(32, 32, 6, 3, 1),
        InvertedResidual(32, 64, 6, 5, 2, act=nn.Hardswish, se=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


def convnext_small():
    return nn.Sequential(nn.Conv2d(3, 48, 4, 4), ConvNeXtBlock(48), ConvNeXtBlock(48),
                         nn.Conv2d(48, 96, 2, 2), ConvNeXtBlock(96))


class ConformerConv(nn.Module):
    def __init__(self, d=96, k=31):
        super().__init__()
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, k, padding=k // 2, groups=d)
        self.norm = nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)

    def forward(self, x):  # x: [N, T, d]
        y = nn.functional.glu(self.pw1(x.transpose(1, 2)), dim=1)
        y = nn.functional.silu(self.norm(self.dw(y)))
        return x + self.pw2(y).transpose(1, 2)


def video_block():
    return nn.Sequential(nn.Conv3d(3, 24, 1), nn.Conv3d(24, 48, 3, padding=1, groups=24),  # depth multiplier 2
                         nn.ReLU(), nn.Conv3d(48, 48, (3, 3, 3), stride=(1, 2, 2), padding=1, groups=48))


NETWORKS = {
    "torch_mobilenet_v2": (mobilenet_v2_small, (1, 3, 96, 96), {0: "N"}),
    "torch_convnext": (convnext_small, (1, 3, 64, 64), {0: "N"}),
    "torch_conformer_conv": (ConformerConv, (1, 50, 96), {0: "N", 1: "T"}),
    "torch_video3d": (video_block, (1, 3, 8, 32, 32), {0: "N"}),
}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (build, shape, dynamic) in NETWORKS.items():
        torch.manual_seed(0)
        model = build().eval()
        example = torch.randn(*shape)
        for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
            path = out_dir / f"{name}.{exporter}.onnx"
            kwargs = dict(input_names=["input"], output_names=["output"], dynamo=dynamo)
            if dynamo:
                kwargs["dynamic_shapes"] = ({k: torch.export.Dim(v, min=2 if v == "T" else 1) for k, v in dynamic.items()},)
            else:
                kwargs["dynamic_axes"] = {"input": dynamic}
                kwargs["opset_version"] = 17
            torch.onnx.export(model, (example,), str(path), **kwargs)
            print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "exported"))
