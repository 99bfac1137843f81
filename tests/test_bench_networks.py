"""benchmarks/networks.py, layers.py, baselines.py and onnx_torch.py at CPU size: every column the GPU
run fills (onnxruntime's configurations, PyTorch eager, the bound, x of bound, memory, samples, auto's
decisions, output comparison) is there; a user's folder of ONNX files is measured as it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import baselines  # noqa: E402
import networks  # noqa: E402

from onnx_diagwise import RuntimeConfig  # noqa: E402

SAMPLES = ROOT / "sample_models"


def has_torch() -> bool:
    return not baselines.torch_problem()


# ---------------------------------------------------------------- baselines


def test_ort_grid_on_cuda_is_every_configuration_a_user_could_pick():
    cuda = RuntimeConfig("cuda", {"cudnn_conv_use_max_workspace": "1"})
    grid = baselines.ort_grid(cuda, "float16")
    assert list(grid) == ["nchw/exha", "nchw/heur", "nhwc/exha", "nhwc/heur"]
    assert grid["nhwc/heur"].provider_options == {"cudnn_conv_use_max_workspace": "1", "prefer_nhwc": "1",
                                                  "cudnn_conv_algo_search": "HEURISTIC"}
    one_d = baselines.ort_grid(cuda, "float32-strict", one_d=True)
    assert len(one_d) == 8 and {c.provider_options["cudnn_conv1d_pad_to_nc1d"] for c in one_d.values()} == {"0", "1"}
    assert all(c.provider_options["use_tf32"] == "0" for c in one_d.values())
    shipped = baselines.ort_grid(RuntimeConfig("cuda", {"use_tf32": "0"}), "float32-default")
    assert all("use_tf32" not in c.provider_options for c in shipped.values())  # TF32 as onnxruntime ships it
    assert list(baselines.ort_grid(RuntimeConfig("cpu"), "float16")) == ["default"]


def test_the_bound_is_the_larger_of_memory_and_compute():
    device = baselines.Device("gpu", True, copy_gbps=1000.0, peak_tflops={"float16": 100.0, "float32": 50.0},
                              peak_source="test", copy_source="test")
    memory_bound = device.bound(activation_bytes=2e9, flops=1e9, dtype="float16")
    assert memory_bound["bound_ms"] == pytest.approx(2.0) and memory_bound["limited_by"] == "memory"
    compute_bound = device.bound(activation_bytes=1e6, flops=1e12, dtype="float32")
    assert compute_bound["bound_ms"] == pytest.approx(20.0) and compute_bound["limited_by"] == "compute"
    assert baselines.times_over_bound(40.0, compute_bound) == pytest.approx(2.0)


def test_gpu_peaks_from_the_data_sheet_and_cpu_peaks_stated():
    peaks, source = baselines.gpu_peaks("NVIDIA H200")
    assert peaks == {"float32": 66.9, "float16": 133.8} and "data sheet" in source
    assert baselines.gpu_peaks("NVIDIA H100 PCIe")[0]["float32"] == 51.2
    cpu, text = baselines.cpu_peaks(10.0)
    assert text.startswith("stated, not measured") and "x 10 GFLOP/s (--cpu-peak-gflops;" in text
    assert cpu["float32"] == pytest.approx(len(os.sched_getaffinity(0)) * 10.0 / 1e3)
    assert baselines.default_cpu_peak({"fpu", "avx2", "avx512f"})[0] == 128.0
    assert baselines.default_cpu_peak({"avx2"})[0] == baselines.default_cpu_peak(set())[0] == 64.0


def test_interleave_runs_every_variant_every_round_in_changing_order():
    calls = []
    variants = [baselines.Variant(n, "test", lambda n=n: calls.append(n), lambda: []) for n in "abc"]
    samples = baselines.interleave(variants, rounds=6, seed=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6, "c": 6}
    rounds = [tuple(calls[i:i + 3]) for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds) and len(set(rounds)) > 1


def test_compare_outputs_is_relative_to_the_reference_scale():
    def variant(name, value):
        return baselines.Variant(name, "test", lambda: None, lambda: [np.array(value, np.float32)])

    diffs = baselines.compare_outputs([variant("ref", [2.0, -4.0]), variant("close", [2.0, -4.2]),
                                       variant("shape", [1.0])], "ref")
    assert diffs["ref"] == 0.0 and diffs["close"] == pytest.approx(0.05) and diffs["shape"] is None


def test_depthwise_work_counts_bytes_and_flops_of_each_depthwise_conv():
    model = onnx.load(str(SAMPLES / "conformer_conv1d.onnx"))
    feeds_shapes = {i.name: [2 if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
                    for i in model.graph.input}
    work = networks.depthwise_work(model, {k: [2 if v == 0 else v for v in s] for k, s in feeds_shapes.items()})
    assert len(work) == 1
    w = work[0]
    n, c, t = w["output"]
    assert w["flops"] == 2 * n * c * t * int(np.prod(w["kernel"]))
    assert w["activation_bytes"] == (int(np.prod(w["input"])) + n * c * t) * 4


# ---------------------------------------------------------------- onnx_torch


@pytest.mark.skipif(not has_torch(), reason="torch is not installed")
@pytest.mark.parametrize("sample", ["mobilenetv2_block", "convnext_block", "conformer_conv1d", "efficientnet_block",
                                    "mobilenetv3_block", "mobilenetv2_block_fp16"])
def test_onnx_torch_computes_what_onnxruntime_computes(sample):
    import onnx_torch
    import torch

    from onnx_diagwise import InputOptions
    from onnx_diagwise.dims import make_inputs, with_input_shapes

    model = onnx.load(str(SAMPLES / f"{sample}.onnx"))
    inputs, _ = with_input_shapes(model, InputOptions(batch=2), RuntimeConfig("cpu"))
    feeds = make_inputs(model, inputs)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = onnx_torch.OnnxModule(model)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    tolerance = 2e-2 if "fp16" in sample else 1e-4
    for g, e in zip(got, expected):
        e = e.astype(np.float64)
        assert np.abs(g.float().numpy() - e).max() <= tolerance * max(np.abs(e).max(), 1e-6)


@pytest.mark.skipif(not has_torch(), reason="torch is not installed")
def test_onnx_torch_names_the_ops_it_does_not_run():
    import onnx_torch

    graph = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->i")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(onnx_torch.Unsupported, match="op\\(s\\) Einsum not run"):
        onnx_torch.OnnxModule(helper.make_model(graph))


# ---------------------------------------------------------------- the scripts


def check_row(row: dict, torch_expected: bool) -> None:
    variants = row["variants"]
    originals = [n for n, v in variants.items() if v.get("policy") == "original"]
    assert originals and row["best_original"] in originals
    assert row["bound"]["bound_ms"] > 0 and row["bound"]["limited_by"] in ("memory", "compute")
    for name, v in variants.items():
        assert v["median_ms"] > 0 and v["x_of_bound"] > 0
        assert v["vs_best_original"] > 0 and len(v["vs_best_original_ci95"]) == 2
        assert v["same_result"], (name, v["max_rel_diff"])
        assert v["memory_bytes"] is not None
        assert len(row["samples_ms"][name]) == row["rounds"] >= 2
    torch_variants = [n for n, v in variants.items() if v["kind"] == "pytorch"]
    assert bool(torch_variants) == torch_expected
    if torch_expected:
        assert row["best_pytorch"] in torch_variants
        assert all(v["vs_pytorch"] > 0 for v in variants.values())


def test_models_folder_is_measured_as_the_files_are(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ["conformer_conv1d", "mobilenetv2_block_fp16"]:
        shutil.copy(SAMPLES / f"{name}.onnx", folder)
    out = tmp_path / "r"
    code = networks.main(["--models", str(folder), "--precision", "float16", "float32-strict", "--batch", "2",
                          "--rounds", "2", "--warmup", "0", "--policies", "auto", "4", "conv2d", "--tune-budget", "5",
                          "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert code == 0
    result = json.loads(out.with_suffix(".json").read_text())
    got = {(r["network"], r["precision"]) for r in result["rows"]}
    assert got == {("conformer_conv1d", "float32-strict"), ("mobilenetv2_block_fp16", "float16")}
    for row in result["rows"]:
        check_row(row, has_torch())
        auto = row["decisions"]["auto"]
        assert auto["nodes"] and all({"node", "action", "form", "G"} <= set(n) for n in auto["nodes"])
        assert auto["tuning"] is not None
        assert set(row["best_by_policy"]) == {"auto", "4", "conv2d"}
        lowered = row["decisions"]["conv2d"]["nodes"]
        # conv2d runs a 1-D layer as a 2-D one: the conformer's depthwise conv takes it, the 2-D block's do not
        assert {n["choice"] for n in lowered if n["action"] == "rewritten"} == (
            {"conv2d"} if row["network"] == "conformer_conv1d" else set())
        assert {n["choice"] for n in row["decisions"]["4"]["nodes"] if n["action"] == "rewritten"} == {"G=4"}
    text = out.with_suffix(".md").read_text()
    assert "x bound" in text and "vs ORT" in text
    assert "**On a CPU these absolute times mean something only relative to each other**" in text
    if has_torch():
        assert "vs PyTorch" in text


def test_layers_table_has_pytorch_and_the_bound(tmp_path):
    import layers

    out = tmp_path / "l"
    assert layers.main(["--network", "conformer", "--batch", "1", "--precision", "float32-strict", "--rounds", "2",
                        "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    [row] = result["rows"]
    check_row(row, has_torch())
    assert row["layer"] == {"channels": 512, "size": [256], "stride": 1, "kernel": 31, "multiplier": 1}
    assert row["bound"]["flops"] == 2 * 512 * 256 * 31
    forms = ["conv2d", *(f"polyphase:{b}{d}{f}" for b in (4, 8, 16, 32, 64) for d in ("", ":2d")
                         for f in (("", ":fold") if b >= 8 else ("",)))]
    # full is over the CPU FLOP budget; every lowering auto would measure is timed too
    assert list(row["best_by_policy"]) == ["2", "4", "8", "16", "32", "64", *forms]
    assert row["skipped_over_flop_budget"] == ["full"]
    text = out.with_suffix(".md").read_text()
    assert "bound ms" in text and "| every lowering vs ORT |" in text and " polyphase:64:2d:" in text
    assert layers.main(["--network", "conformer", "--batch", "1", "--precision", "float32-strict", "--rounds", "1",
                        "--warmup", "0", "--no-forms", "--max-gflop", "10", "--out", str(out)]) == 0
    [row] = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert list(row["best_by_policy"]) == ["2", "4", "8", "16", "32", "64", "full"]


def test_a_variant_onnxruntime_cannot_run_is_noted_and_the_rest_measured(tmp_path, monkeypatch):
    import baselines
    import layers

    made = baselines.ort_variant

    def refusing(name, *args, **kw):
        if name.startswith("onnxruntime polyphase:8 "):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDNN_STATUS_NOT_SUPPORTED\nstack")
        return made(name, *args, **kw)

    monkeypatch.setattr(baselines, "ort_variant", refusing)
    out = tmp_path / "l"
    assert layers.main(["--network", "conformer", "--batch", "1", "--precision", "float32-strict", "--rounds", "1",
                        "--warmup", "0", "--no-torch", "--out", str(out)]) == 0
    [row] = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["notes"] == ["onnxruntime polyphase:8 default: not run: [ONNXRuntimeError] : 1 : FAIL : "
                            "CUDNN_STATUS_NOT_SUPPORTED"]
    assert "polyphase:8" not in row["best_by_policy"] and "polyphase:8:fold" in row["best_by_policy"]


def test_merge_puts_two_processes_side_by_side(tmp_path):
    runs = []
    for index in (1, 2):
        out = tmp_path / f"run{index}"
        row = {"network": "net", "batch": 64, "precision": "float16", "rounds": 10, "best_by_policy": {"auto": "a"},
               "variants": {"a": {"vs_best_original": 1.5 + index, "vs_best_original_ci95": [1.0, 3.0],
                                  "vs_pytorch": 0.5, "vs_pytorch_ci95": [0.4, 0.6]}}}
        out.with_suffix(".json").write_text(json.dumps({"command": f"run {index}", "policies": ["auto"],
                                                        "rows": [row]}))
        runs.append(out.with_suffix(".json"))
    networks.main(["--merge", *map(str, runs), "--out", str(tmp_path / "headline")])
    text = (tmp_path / "headline.md").read_text()
    assert "| net | 64 | float16 | 2.50x vs ORT" in text and "3.50x vs ORT" in text
    assert text.count("(slower than PyTorch)") == 2
    assert "| network | batch | precision | run 1: G=auto | run 2: G=auto |" in text


def test_bad_input_is_one_line(tmp_path):
    script = str(ROOT / "benchmarks/networks.py")
    for args, message in [(["--models", str(tmp_path / "none")], "not a folder"),
                          (["--models", str(tmp_path)], "no .onnx files there"),
                          ([], "give --family, --zoo and/or --models"),
                          (["--zoo", "nope"], "--zoo: unknown nope")]:
        r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and message in r.stderr.strip().splitlines()[-1], r.stderr
