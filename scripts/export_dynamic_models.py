"""Export PyTorch networks whose inputs have symbolic dims, as detectors, text recognizers and
speech models are exported, and rewrite each with onnx-diagwise's defaults.

    python scripts/export_dynamic_models.py OUT_DIR

Writes OUT_DIR/<name>.onnx (TorchScript exporter, seeded random weights) and runs
`onnx-diagwise rewrite` on it with no shape options: the check sizes the symbolic dims itself.
Prints, per model, the input dims as exported, the exit code and the sizes chosen.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F


def dw_block(c: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, k, stride, k // 2, groups=c), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU())


class Detector(nn.Module):
    """A DBNet-style text detector: depthwise backbone at strides 4..32, FPN upsampling, a
    probability map at 1/4 size.  Needs H and W divisible by 32 (the FPN adds upsampled maps)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), dw_block(16, 3, 2))
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(16 * 2 ** i, 32 * 2 ** i, 1), dw_block(32 * 2 ** i, 3, 2))
                                     for i in range(3)])
        self.lateral = nn.ModuleList([nn.Conv2d(c, 32, 1) for c in (16, 32, 64, 128)])
        self.head = nn.Sequential(dw_block(32, 5), nn.Conv2d(32, 1, 1), nn.Sigmoid())

    def forward(self, x):
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        y = self.lateral[-1](features[-1])
        for feature, lateral in zip(reversed(features[:-1]), reversed(self.lateral[:-1])):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + lateral(feature)
        return self.head(y)


class Recognizer(nn.Module):
    """A CRNN-style text recognizer: height 48 fixed, width free; depthwise blocks, height pooled
    away, per-column class scores."""

    def __init__(self, classes: int = 97):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), dw_block(32), nn.Conv2d(32, 64, 1),
                                  dw_block(64, 3, 2), dw_block(64, 5))
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        y = self.body(x).mean(dim=2)  # [N, C, W/4]
        return self.classifier(y.transpose(1, 2))


class ConformerConv(nn.Module):
    """A conformer convolution module on [N, time, 256]: pointwise + GLU, depthwise k=31, pointwise."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.pointwise1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise = nn.Conv1d(channels, channels, 31, padding=15, groups=channels)
        self.norm = nn.BatchNorm1d(channels)
        self.pointwise2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        y = F.glu(self.pointwise1(x.transpose(1, 2)), dim=1)
        y = self.pointwise2(F.silu(self.norm(self.depthwise(y))))
        return x + y.transpose(1, 2)


class Orientation(nn.Module):
    """An orientation classifier: any image size, global pooling, 4 classes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU(), dw_block(24, 3, 2), nn.Conv2d(24, 48, 1),
                                  dw_block(48, 5, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 4))

    def forward(self, x):
        return self.body(x)


# name: (module, example input, dynamic axes of the input, clear the dim names afterwards)
MODELS = {
    "text_detector": (Detector, (1, 3, 640, 640), {0: "batch", 2: "height", 3: "width"}, False),
    "text_detector_unnamed": (Detector, (1, 3, 640, 640), {0: "batch", 2: "height", 3: "width"}, True),
    "text_recognizer": (Recognizer, (1, 3, 48, 320), {0: "batch", 3: "width"}, False),
    "speech_conformer": (ConformerConv, (1, 200, 256), {0: "batch", 1: "time"}, False),
    "orientation": (Orientation, (1, 3, 192, 192), {0: "N", 2: "DynamicDimension.1", 3: "DynamicDimension.2"}, False),
}


def export(name: str, folder: Path) -> Path:
    make, shape, axes, unnamed = MODELS[name]
    torch.manual_seed(0)
    module = make().eval()
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.running_var.uniform_(0.9, 1.1)
    path = folder / f"{name}.onnx"
    torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes, "y": {0: "batch"}}, opset_version=17)
    if unnamed:  # as some exporters write: the dims are symbolic but have no name
        model = onnx.load(path)
        for value in list(model.graph.input) + list(model.graph.output):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.Clear()
        onnx.save(model, path)
    return path


def input_dims(path: Path) -> list:
    value = onnx.load(path).graph.input[0]
    return [d.dim_value or d.dim_param or "?" for d in value.type.tensor_type.shape.dim]


def main(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    worst = 0
    for name in MODELS:
        path = export(name, folder)
        report = folder / f"{name}.json"
        run = subprocess.run([sys.executable, "-m", "onnx_diagwise", "rewrite", str(path),
                              str(folder / f"{name}.diag.onnx"), "-q", "--json", str(report)],
                             capture_output=True, text=True)
        chosen = json.loads(report.read_text())["input_shapes"] if run.returncode == 0 else run.stderr.strip()
        print(f"{name}: input {input_dims(path)} -> exit {run.returncode}; {json.dumps(chosen.get('symbolic_dims')) if isinstance(chosen, dict) else chosen}")
        worst = max(worst, run.returncode)
    return worst


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
