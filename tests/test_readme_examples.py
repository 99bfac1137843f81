"""Every README code block marked '# example: NAME' runs, in a folder holding model.onnx."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = dict(re.findall(r"```python\n# example: (\S+)\n(.*?)```", (ROOT / "README.md").read_text(), re.S))


def test_the_examples_are_there():
    assert set(EXAMPLES) == {"torch-dynamo", "onnx-ir", "graphsurgeon", "policy"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path, monkeypatch):
    for package in {"torch-dynamo": ["torch", "onnxscript"], "onnx-ir": ["onnx_ir", "onnxscript"],
                    "graphsurgeon": ["onnx_graphsurgeon"], "policy": []}[name]:
        pytest.importorskip(package)
    shutil.copy(ROOT / "sample_models" / "mobilenetv2_block.onnx", tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    exec(compile(EXAMPLES[name], f"README example {name}", "exec"), {})
    written = set(os.listdir(tmp_path)) - before
    assert written and all((tmp_path / f).stat().st_size > 0 for f in written)
    import onnx

    for path in written:
        if path.endswith(".onnx"):
            model = onnx.load(tmp_path / path)
            groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
            channels = {"torch-dynamo": 32, "onnx-ir": 96, "graphsurgeon": 96, "policy": 96}[name]
            assert groups and max(groups) < channels  # the depthwise convs now run block-diagonal
