"""The README's Python API examples run as written on a CPU-only machine, and each pipeline example
says what to install for the modules it imports."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The import name of each package the examples may import, by its pip name.
MODULES = {"onnx-ir": "onnx_ir", "onnx-graphsurgeon": "onnx_graphsurgeon", "onnxruntime": "onnxruntime",
           "torch": "torch", "onnxscript": "onnxscript", "matplotlib": "matplotlib", "onnx": "onnx",
           "numpy": "numpy", "typer": "typer"}


def _api_examples() -> list[str]:
    """The section's examples, less those marked '# example: NAME' (test_readme_examples.py runs them)."""
    section = README[README.index("## Python API\n"):README.index("### In export pipelines")]
    return [code for code in re.findall(r"```python\n(.*?)```", section, re.S) if not code.startswith("# example: ")]


def test_the_python_api_examples_run_on_the_cpu(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # torch's exporter
    monkeypatch.chdir(tmp_path)
    first, second = _api_examples()
    names: dict = {}
    exec(compile(first, "README Python API example", "exec"), names)
    actions = {n.name: n.action for n in names["result"].report.nodes}
    assert sorted(actions.values()) == ["rewritten", "skipped"]  # the exclude matched a node of the export
    assert names["report"].passed and (tmp_path / "model.diag.onnx").exists()
    names = {}
    exec(compile(second, "README rewrite_file example", "exec"), names)
    assert names["written"].validation.passed and names["written"].modified


def _installed(text: str) -> set[str]:
    """The import names of what a `pip install ...` line of TEXT installs (extras expanded)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    packages = [re.split(r"[<>=\[ ]", dep)[0] for dep in base]
    for command in re.findall(r"pip install ([^`\n]+)", text):
        for word in command.replace("'", "").split():
            if word.startswith("onnx-diagwise["):
                for extra in word[len("onnx-diagwise["):-1].split(","):
                    packages += [re.split(r"[<>=\[ ]", dep)[0] for dep in extras[extra]]
            else:
                packages.append(word)
    return {MODULES.get(p, p.replace("-", "_")) for p in packages}


@pytest.mark.parametrize("name", sorted(re.findall(r"```python\n# example: (\S+)\n", README)))
def test_each_pipeline_example_says_what_to_install(name):
    start = README.index(f"# example: {name}\n")
    before = README[README.rindex("```", 0, start - len("```python\n")) + 3:start]  # the text since the last block
    code = README[start:README.index("```", start)]
    tree = ast.parse(code)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    needed = {m for m in imported if m != "onnx_diagwise" and m not in sys.stdlib_module_names}
    if "onnx_diagwise" in imported and "onnx_diagwise.passes" in code:
        needed.add("onnx_ir")  # the passes are onnx-ir passes
    if "dynamo=True" in code:
        needed.add("onnxscript")  # torch's dynamo exporter
    assert needed <= _installed(before), (name, needed - _installed(before))


def test_the_command_line_starts_without_the_heavy_modules():
    """--version and -h run in a fraction of a second because they import neither onnx, numpy,
    onnxruntime, rich nor pydantic (measured: about 0.1 s; timed assertions do not belong in tests)."""
    import subprocess

    code = ("import sys; from onnx_diagwise.cli import main; codes = [main(['--version']), main(['-h']), "
            "main(['rewrite', '-h']), main(['cache', 'info', '-h'])]; "
            "print(codes, sorted(m for m in ('onnx', 'numpy', 'onnxruntime', 'rich', 'torch', 'pydantic') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0] []", r.stdout
