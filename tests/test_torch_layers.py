"""benchmarks/torch_layers.py: the block-diagonal weight is exact, a wrong one is caught, the quick
CPU run writes complete results, --max-seconds leaves complete partial files, and a missing CUDA
is one line on stderr with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
from torch.nn import functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "torch_layers.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_layers  # noqa: E402
import zoo  # noqa: E402

from onnx_diagwise.torch import DiagonalwiseConv1d, DiagonalwiseConv2d, DiagonalwiseConv3d  # noqa: E402

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
DIAG = {1: DiagonalwiseConv1d, 2: DiagonalwiseConv2d, 3: DiagonalwiseConv3d}
CASES = [(8, 1, 2, 2), (8, 1, 8, 2), (6, 3, 3, 2), (12, 2, 4, 1), (4, 2, 2, 3)]  # (C, M, G, rank)


@pytest.mark.parametrize("c,m,g,rank", CASES)
def test_block_weight_is_exact(c, m, g, rank):
    gen = torch.Generator().manual_seed(c * 100 + m * 10 + g)
    w = torch.randn(c * m, 1, *[3] * rank, generator=gen, dtype=torch.float64)
    x = torch.randn(2, c, *[7] * rank, generator=gen, dtype=torch.float64)
    block = torch_layers.block_weight(w, c, g)
    assert block.shape == (c * m, g, *[3] * rank)
    # W'[o, (o // M) % G] = W[o, 0] and zero elsewhere
    expected = torch.zeros_like(block)
    for o in range(c * m):
        expected[o, (o // m) % g] = w[o, 0]
    assert torch.equal(block, expected)
    depthwise = CONV[rank](x, w, None, 2, 1, 1, c)
    diagonal = CONV[rank](x, block, None, 2, 1, 1, c // g)
    torch.testing.assert_close(diagonal, depthwise, rtol=1e-12, atol=1e-12)
    # the same weight as the training layers' construction
    layer = DIAG[rank](c, c * m, 3, bias=False, group_size=g, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
    assert torch.equal(layer.block_weight(), block)


def test_group_sizes_divide_and_label_full():
    assert torch_layers.group_sizes(96, ["2", "4", "8", "16", "32", "64", "full"]) == {
        "2": 2, "4": 4, "8": 8, "16": 16, "32": 32, "full": 96}
    assert torch_layers.group_sizes(32, ["2", "32", "full"]) == {"2": 2, "full": 32}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    base = tmp_path_factory.mktemp("quick") / "tl"
    status = torch_layers.main(["--quick", "--device", "cpu", "--out", str(base)])
    return status, base


def test_quick_run_writes_complete_results(quick):
    status, base = quick
    assert status == 0
    assert base.with_suffix(".md").exists()
    result = json.loads(base.with_suffix(".json").read_text())
    assert result["status"] == "done" and result["failure"] is None and result["skipped"] == []
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["cudnn_benchmark"] is True
    assert env["tf32_cudnn"] is False and env["tf32_matmul"] is False
    assert result["copy_bandwidth_gbps"] > 0
    plan = zoo.layer_table(["mobilenet_v1"])[:2] + zoo.layer_table(["conformer"])
    got = [(r["table"], r["index"], r["layer"]["channels"], tuple(r["layer"]["size"])) for r in result["rows"]]
    assert got == [(t, i, layer.channels, layer.size) for t, i, layer in plan]
    for row in result["rows"]:
        assert (row["batch"], row["dtype"]) == (1, "float32")
        assert row["layout"] == ("nchw" if len(row["layer"]["size"]) == 2 else "contiguous")
        c = row["layer"]["channels"]
        assert {k: (v["G"], v["groups"]) for k, v in row["variants"].items()} == {
            "dw": (1, c), "2": (2, c // 2), "full": (c, 1)}
        for label, v in row["variants"].items():
            assert v["ms"] > 0 and v["max_error"] <= torch_layers.TOLERANCE["float32"], (row["index"], label)
            assert (v["ci95"] is None) == (label == "dw")
        assert row["best"] in ("2", "full") and row["bw_fraction"]["dw"] > 0
    markdown = base.with_suffix(".md").read_text()
    assert "## mobilenet_v1" in markdown and "## conformer" in markdown and "cudnn.benchmark = True" in markdown


def test_wrong_block_weight_fails_the_run(tmp_path, monkeypatch):
    right = torch_layers.block_weight
    # off by one channel inside each block: the kind of bug the numeric check is there for
    monkeypatch.setattr(torch_layers, "block_weight", lambda w, c, g: torch.roll(right(w, c, g), 1, dims=1))
    base = tmp_path / "wrong"
    assert torch_layers.main(["--quick", "--device", "cpu", "--out", str(base)]) == 1
    result = json.loads(base.with_suffix(".json").read_text())
    assert result["status"] == "failed" and "relative error" in result["failure"]
    assert result["rows"] == []


def test_max_seconds_zero_records_skipped_layers(tmp_path):
    base = tmp_path / "none"
    assert torch_layers.main(["--quick", "--device", "cpu", "--max-seconds", "0", "--out", str(base)]) == 0
    result = json.loads(base.with_suffix(".json").read_text())
    assert result["status"] == "done" and result["rows"] == [] and "torch" in result["environment"]
    plan = zoo.layer_table(["mobilenet_v1"])[:2] + zoo.layer_table(["conformer"])
    assert [(s["table"], s["index"]) for s in result["skipped"]] == [(t, i) for t, i, _ in plan]
    assert all("--max-seconds" in s["reason"] for s in result["skipped"])
    assert "Skipped:" in base.with_suffix(".md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_missing_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "cuda" in run.stderr.lower()
    assert not (tmp_path / "x.json").exists()
