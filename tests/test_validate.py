"""validate(): equivalence checks, tolerances, inputs, providers, and `rewrite`'s own check."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import SAMPLE, SAMPLE_DIR, attr, cli, depthwise_model, scaled_outputs, spy_sessions
from onnx_diagwise import DiagwiseError, rewrite
from onnx_diagwise.dims import make_inputs, resolve_input_shapes
from onnx_diagwise.runtime import InputOptions, RuntimeConfig, parse_input_shapes, input_specs
from onnx_diagwise.validation import compare, tolerance_for, validate


def _planted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The rewrite of MODEL with one weight value changed."""
    bad = rewrite(model, group_size=4).model
    conv = next(n for n in bad.graph.node if n.op_type == "Conv" and attr(n, "group", 1) > 1)
    tensor = next(t for t in bad.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(tensor).copy()
    w[0, 0] += 0.5  # the diagonal entry of output channel 0
    tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    return bad


def test_exact_rewrite_passes_and_planted_error_fails():
    model = depthwise_model(channels=8)
    good = validate(model, rewrite(model, group_size=4).model)
    assert good.passed and good.runs == 3 and good.outputs[0].max_abs < 1e-5
    assert good.summary() == "1/1 outputs passed (3 run(s) on CPUExecutionProvider)"
    bad = validate(model, _planted(model))
    [out] = bad.outputs
    assert not bad.passed and out.name == "y" and out.mismatches > 0
    assert out.line().startswith("FAILED | output 'y' | ")
    assert out.max_abs > 0.01


def test_cli_validate_exit_codes(tmp_path):
    model = onnx.load(SAMPLE)
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(rewrite(model).model, good)
    onnx.save(_planted(model), bad)
    r = cli("validate", SAMPLE, good, "--json", tmp_path / "v.json")
    assert r.returncode == 0, r.stderr
    assert "PASSED | output 'Add_19_out' | max abs" in r.stdout and "1/1 outputs passed" in r.stdout
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is True
    r = cli("validate", SAMPLE, bad)
    assert r.returncode == 1
    assert "FAILED | output 'Add_19_out' |" in r.stdout and "0/1 outputs passed" in r.stdout


def test_rewrite_refuses_to_write_a_wrong_model(tmp_path, monkeypatch):
    # A rewrite that corrupts the weights must be caught by rewrite's own check.
    import onnx_diagwise.rewriter as rewrite_module

    real = rewrite_module.expand_depthwise

    def corrupt(weight, channels, group_size, fill=None):
        w = real(weight, channels, group_size, fill)
        w[0, -1] += 1.0  # an off-diagonal entry
        return w

    model = onnx.load(SAMPLE)
    monkeypatch.setattr(rewrite_module, "expand_depthwise", corrupt)
    from onnx_diagwise.cli import main

    out = tmp_path / "out.onnx"
    assert main(["rewrite", str(SAMPLE), str(out)]) == 1
    assert not out.exists()
    assert main(["rewrite", str(SAMPLE), str(out), "--no-check"]) == 0  # the user said so
    assert out.exists()
    assert not validate(model, onnx.load(out)).passed


def test_compare_rules():
    e = np.array([1.0, 2.0, np.nan], np.float32)
    assert compare("y", e, e.copy()).passed  # NaN where the original has NaN is equal
    r = compare("y", e, np.array([1.0, np.nan, np.nan], np.float32))
    assert not r.passed and "NaN where the original has none" in r.message
    r = compare("y", e, e.astype(np.float64))
    assert not r.passed and "dtype float64 differs" in r.message
    r = compare("y", e, e[:2])
    assert not r.passed and "shape [2] differs" in r.message
    assert not compare("y", e, None).passed
    ints = np.array([1, 2, 3])
    assert compare("i", ints, ints.copy()).passed
    r = compare("i", ints, np.array([1, 2, 4]))
    assert not r.passed and r.mismatches == 1 and r.worst_index == [2]
    close = np.array([1.0 + 5e-6, 2.0, np.nan], np.float32)
    assert compare("y", e, close).passed
    assert not compare("y", e, close, atol=1e-7, rtol=1e-7).passed


def test_tolerance_defaults_scale_with_the_output():
    assert tolerance_for(np.dtype(np.float32), 4.0) == (4e-5, 1e-5)
    assert tolerance_for(np.dtype(np.float32), 4.0, tf32=True) == (2e-2, 5e-3)
    assert tolerance_for(np.dtype(np.float16), 0.5) == (5e-4, 1e-3)
    assert tolerance_for(np.dtype(np.int64), 9.0) == (0.0, 0.0)
    assert tolerance_for(np.dtype(np.float16), 8.0, atol=0.5) == (0.5, 1e-3)  # the user's value as it is


def test_small_outputs_scaled_by_one_percent_fail():
    """With an absolute 1e-5 this output of values around 1e-5 would pass even scaled by 0.99."""
    e = np.random.default_rng(0).uniform(-2e-5, 2e-5, 1000).astype(np.float32)
    r = compare("y", e, e * np.float32(0.99))
    assert not r.passed and r.scale == pytest.approx(float(np.abs(e).max()))
    assert "of values up to 2e-05" in r.message and f"atol {r.atol:.1e}" in r.message


def test_max_rel_ignores_values_near_zero():
    e = np.array([1.0, 1e-9, 0.5], np.float32)
    r = compare("y", e, np.array([1.0, 2e-9, 0.5], np.float32))
    assert r.passed and r.max_rel == 0.0  # 1e-9 -> 2e-9 is within atol, and not a 100% error to report


def test_fp16_sample_validates():
    path = SAMPLE_DIR / "mobilenetv2_block_fp16.onnx"
    report = validate(path, rewrite(path).model)
    output = report.outputs[0]
    assert report.passed and output.dtype == "float16" and output.atol == pytest.approx(1e-3 * output.scale)


def test_missing_output_and_integer_outputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    a = helper.make_tensor_value_info("a", TensorProto.INT64, [2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])
    two_out = helper.make_model(helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["a"], axis=1, keepdims=0), helper.make_node("Relu", ["x"], ["b"])],
        "g", [x], [a, b]), opset_imports=[helper.make_opsetid("", 17)])
    one_out = helper.make_model(helper.make_graph([helper.make_node("ArgMax", ["x"], ["a"], axis=1, keepdims=0)],
                                                  "g", [x], [a]), opset_imports=[helper.make_opsetid("", 17)])
    report = validate(two_out, one_out)
    by_name = {o.name: o for o in report.outputs}
    assert by_name["a"].passed and by_name["a"].atol == 0.0
    assert not by_name["b"].passed and "missing" in by_name["b"].message


def test_input_synthesis_and_shapes():
    model = onnx.load(SAMPLE_DIR / "conformer_conv1d.onnx")
    [spec] = input_specs(model)
    assert spec.dims == ["N", "T", 144]
    def shapes(options):
        return resolve_input_shapes(model, options).shapes

    assert resolve_input_shapes(model, InputOptions()).sizes == {"N": 1, "T": 128}  # T: a sequence length
    assert shapes(InputOptions(batch=4, dims={"T": 50})) == {"input": [4, 50, 144]}
    assert shapes(InputOptions(shapes=parse_input_shapes(["input:2,7,144"]))) == {"input": [2, 7, 144]}
    assert shapes(InputOptions(shapes=parse_input_shapes(["2,7,144"]))) == {"input": [2, 7, 144]}
    with pytest.raises(DiagwiseError, match="rank 2"):
        shapes(InputOptions(shapes={"input": [2, 7]}))
    with pytest.raises(DiagwiseError, match="'other', which is not a model input"):
        shapes(InputOptions(shapes={"other": [1]}))
    with pytest.raises(DiagwiseError, match="dim 2 is fixed at 144 in the model, not 100"):
        shapes(InputOptions(shapes={"input": [1, 7, 100]}))
    for bad in ("input:2,x,3", "input:0,1,2"):
        with pytest.raises(DiagwiseError, match="--overwrite-input-shape"):
            parse_input_shapes([bad])
    feeds = make_inputs(model, InputOptions(dims={"T": 9}), seed=3)
    again = make_inputs(model, InputOptions(dims={"T": 9}), seed=3)
    assert feeds["input"].shape == (1, 9, 144) and feeds["input"].dtype == np.float32
    np.testing.assert_array_equal(feeds["input"], again["input"])
    assert -1 <= feeds["input"].min() and feeds["input"].max() < 1
    if_model = onnx.load(SAMPLE_DIR / "if_branch.onnx")
    assert make_inputs(if_model, InputOptions())["use_then"].dtype == np.bool_


def test_real_input_data(tmp_path):
    model = onnx.load(SAMPLE_DIR / "conformer_conv1d.onnx")
    data = np.random.default_rng(1).standard_normal((2, 11, 144)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    np.savez(tmp_path / "all.npz", input=data)
    cand = tmp_path / "c.onnx"
    onnx.save(rewrite(model).model, cand)
    src = SAMPLE_DIR / "conformer_conv1d.onnx"
    r = cli("validate", src, cand, "--input-data", f"input:{tmp_path / 'x.npy'}")
    assert r.returncode == 0 and "(1 run(s)" in r.stdout, r.stderr
    assert cli("validate", src, cand, "--inputs", tmp_path / "all.npz").returncode == 0
    np.save(tmp_path / "wrong.npy", data[:, :, :10])
    r = cli("validate", src, cand, "--input-data", f"input:{tmp_path / 'wrong.npy'}")
    assert r.returncode == 2 and "has shape [2, 11, 10]" in r.stderr
    r = cli("validate", src, cand, "--input-data", f"nope:{tmp_path / 'x.npy'}")
    assert r.returncode == 2 and "'nope', which is not a model input" in r.stderr
    r = cli("validate", src, cand, "--json", "-")
    assert r.returncode == 0, r.stderr  # T is sized by trying: a sequence length that runs
    assert json.loads(r.stdout)["input_shapes"]["symbolic_dims"]["T"] == {"size": 128, "from": "tried"}
    r = cli("validate", src, cand, "--dim", "T=0")
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_providers():
    with pytest.raises(DiagwiseError, match="unknown provider 'gpu0'"):
        RuntimeConfig("gpu0").provider_full
    assert RuntimeConfig("cuda").provider_full == "CUDAExecutionProvider"
    assert RuntimeConfig("TensorrtExecutionProvider").provider_full == "TensorrtExecutionProvider"


def test_cuda_where_unavailable_fails_clearly():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the fallback message is for machines without it")
    model = depthwise_model(channels=4)
    with pytest.raises(DiagwiseError, match="CUDAExecutionProvider is not available .* install onnxruntime-gpu"):
        validate(model, model, RuntimeConfig("cuda"))
    r = cli("validate", SAMPLE, SAMPLE, "--provider", "cuda")
    assert r.returncode == 2 and "not available" in r.stderr and r.stderr.count("\n") == 1
    r = cli("bench", SAMPLE, "--provider", "cuda")
    assert r.returncode == 2 and "not available" in r.stderr


def test_silent_cpu_fallback_is_an_error(monkeypatch):
    # onnxruntime returns a CPU session when a provider fails to load; emulate that.
    import onnxruntime as ort

    from onnx_diagwise import runtime

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda source, options, providers: real(source, options, providers=["CPUExecutionProvider"]))
    with pytest.raises(DiagwiseError, match="asked for CUDAExecutionProvider but onnxruntime ran on "
                                            "CPUExecutionProvider"):
        runtime.create_session(depthwise_model(channels=4), RuntimeConfig("cuda"))


def test_bad_runtime_flags():
    for flags, expected in ((["--provider-option", "novalue"], "--provider-option expects KEY=VALUE"),
                            (["--opt-level", "max"], "--opt-level must be one of"),
                            (["--threads", "0"], "--threads must be >= 1"),
                            (["--check-n", "0"], "--check-n must be >= 1"),
                            (["--batch", "0"], "--batch must be >= 1")):
        r = cli("validate", SAMPLE, SAMPLE, *flags)
        assert r.returncode == 2 and expected in r.stderr, (flags, r.stderr)


def test_scalar_bool_input_and_subgraphs_validate():
    # if_branch takes a 0-d bool; a numpy scalar there would make onnxruntime refuse the feed.
    path = SAMPLE_DIR / "if_branch.onnx"
    for seed in (0, 1, 2):
        assert validate(path, rewrite(path).model, seed=seed).passed


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*.onnx")), ids=lambda p: p.stem)
def test_scaled_outputs_are_caught_and_exact_rewrites_pass(path):
    model = onnx.load(path)
    assert validate(model, rewrite(model).model, check_n=1).passed
    floats = [o.name for o in model.graph.output
              if np.dtype(helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)).kind == "f"]
    if not floats:
        pytest.skip("integer outputs only: compared exactly")
    report = validate(model, scaled_outputs(model, 0.99), check_n=1)
    assert all(not o.passed for o in report.outputs if o.name in floats), [o.line() for o in report.outputs]
    fp32 = [o for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    if fp32:  # a 1e-4 change is below float16's spacing (9.8e-4): it is caught where outputs are float32
        report = validate(model, scaled_outputs(model, 1.0001), check_n=1)
        assert all(not o.passed for o in report.outputs if o.name in {f.name for f in fp32})


def test_non_finite_weights_and_activations(tmp_path):
    """NaN/Inf in a depthwise weight stay in its own channel (exact); inf reaching a later
    depthwise layer turns its block-diagonal zeros into NaN, which the check reports."""
    model = depthwise_model(channels=8, spatial=(6, 6))
    weight = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])
    values = numpy_helper.to_array(weight).copy()
    values[1, 0, 0, 0], values[2, 0, 1, 1] = np.nan, np.inf
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    path = tmp_path / "nonfinite.onnx"
    onnx.save(model, path)
    r = cli("rewrite", path, tmp_path / "out.onnx", "--group-size", "4")
    assert r.returncode == 0, r.stderr  # NaN where the original has NaN is equal
    second = helper.make_node("Conv", ["y", model.graph.node[0].input[1]], ["z"], group=8,
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="dw2")
    model.graph.node.append(second)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    onnx.save(model, path)
    r = cli("rewrite", path, tmp_path / "out2.onnx", "--group-size", "4")
    assert r.returncode == 1 and "0 x inf" in r.stderr and not (tmp_path / "out2.onnx").exists()


def test_damaged_copies_of_every_sample_are_bad_input_not_bugs(tmp_path, capsys):
    """Random byte damage: every copy rewrites (exit 0), fails the check (1) or is refused (2)."""
    import random

    from onnx_diagwise.cli import main

    rng = random.Random(0)
    samples = sorted(SAMPLE_DIR.glob("*.onnx"))
    codes = []
    for index in range(60):
        data = bytearray(rng.choice(samples).read_bytes())
        for _ in range(rng.choice([1, 2, 8])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"{index}.onnx"
        path.write_bytes(bytes(data))
        code = main(["rewrite", str(path), str(tmp_path / f"{index}.out.onnx"), "-q"])
        stderr = capsys.readouterr().err
        assert code in (0, 1, 2), (index, stderr)
        if code == 2:
            assert len(stderr.strip().splitlines()) == 1, stderr
        codes.append(code)
    assert codes.count(2) >= 5  # the damage was real


def test_inputs_onnxruntime_refuses_and_models_that_cannot_be_compared(tmp_path):
    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    conv = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 16, 16])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "conv.onnx")
    half = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 16, 16])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    onnx.save(helper.make_model(half, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "half.onnx")
    conv_path = tmp_path / "conv.onnx"
    for command in (["validate", conv_path, conv_path], ["bench", conv_path, "-n", "1"]):
        r = cli(*command, "--overwrite-input-shape", "x:1,4,16,16")  # 4 channels into a 3-channel conv
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "could not run" in r.stderr and "'x' float32[1, 4, 16, 16]" in r.stderr and "'N', 'C'" in r.stderr
    assert cli("validate", conv_path, conv_path).returncode == 0  # C sized by trying: 3 runs
    r = cli("validate", conv_path, tmp_path / "half.onnx")
    assert r.returncode == 2 and "cannot be compared: input 'x' is tensor(float16)" in r.stderr


def test_tolerance_rules_in_detail():
    from onnx_diagwise.validation import check_tolerances, for_output

    for kind in (np.int64, np.uint8, np.bool_):
        assert tolerance_for(np.dtype(kind), 9.0) == (0.0, 0.0)
        assert tolerance_for(np.dtype(kind), 9.0, atol=1.0, rtol=0.5) == (1.0, 0.5)  # the user's, as given
    assert tolerance_for(np.dtype("S3"), 1.0) == (0.0, 0.0)
    assert tolerance_for(np.dtype(np.float64), 2.0) == (2e-5, 1e-5)
    assert tolerance_for(np.dtype(np.longdouble), 2.0) == (2e-5, 1e-5)  # a dtype without its own default
    assert tolerance_for(np.dtype(np.float32), 2.0, tf32=True, precision="float16") == (2e-3, 1e-3)
    assert tolerance_for(np.dtype(np.float32), 2.0, precision="bfloat16") == (2e-2, 1e-2)
    assert for_output(None, "y") is None and for_output(0.5, "y") == 0.5
    assert for_output({"y": 0.1, "": 0.2}, "y") == 0.1 and for_output({"y": 0.1, "": 0.2}, "z") == 0.2
    assert for_output({"y": 0.1}, "z") is None
    check_tolerances(0.0, {"y": 0.0}, ["y"])  # zero is allowed
    with pytest.raises(DiagwiseError, match=r"^atol names 'z', which is not an output of the model \(outputs: y, w\)$"):
        check_tolerances({"z": 1.0}, None, ["y", "w"])
    with pytest.raises(DiagwiseError, match=r"^rtol names 'z'"):
        check_tolerances(None, {"z": 1.0}, ["y"])
    for bad in (-1e-9, float("nan")):
        with pytest.raises(DiagwiseError, match=r"^rtol must be >= 0; got"):
            check_tolerances(None, {"y": bad}, ["y"])
        with pytest.raises(DiagwiseError, match=r"^atol must be >= 0; got"):
            check_tolerances(bad, None, ["y"])


def test_compare_fills_every_field():
    from onnx_diagwise.validation import OutputComparison

    e = np.array([1.0, -2.0, 0.5], np.float32)
    assert compare("y", e, None) == OutputComparison("y", False, "missing from the candidate's outputs")
    r = compare("y", e, e[:2])
    assert (r.name, r.passed, r.shape, r.message) == ("y", False, [3], "shape [2] differs from the original's [3]")
    r = compare("y", e, e.astype(np.float16))
    assert (r.name, r.passed, r.shape, r.dtype) == ("y", False, [3], "float32")
    assert r.message == "dtype float16 differs from the original's float32"
    r = compare("y", e, e.copy())
    assert (r.name, r.passed, r.shape, r.dtype, r.precision) == ("y", True, [3], "float32", None)
    assert (r.atol, r.rtol, r.scale, r.elements, r.mismatches, r.max_abs, r.max_rel) == (2e-5, 1e-5, 2.0, 3, 0, 0.0, 0.0)
    assert r.message == "max abs 0.0e+00 of values up to 2, max rel 0.0e+00 (atol 2.0e-05, rtol 1e-05)"
    assert compare("y", e, e.copy(), tf32=True).rtol == 5e-3
    assert compare("y", e, e.copy(), precision="float16").message.endswith("; computed in float16)")
    assert compare("y", e, e.copy(), precision="float32").precision is None  # not lower than its own
    one = compare("y", np.array([3.0], np.float32), np.array([3.0], np.float32))
    assert one.passed and one.scale == 3.0 and not one.message.startswith("empty")
    empty = compare("y", np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert empty.passed and empty.message.startswith("empty output") and empty.elements == 0
    ints = compare("i", np.array([5, 6]), np.array([5, 7]), atol=1)
    assert ints.passed and ints.atol == 1 and ints.dtype == "int64"  # the user's atol, on integers too
    r = compare("y", e, np.array([1.0, -2.0, 0.6], np.float32))
    assert (r.passed, r.mismatches, r.worst_index, r.elements) == (False, 1, [2], 3)
    assert r.max_abs == pytest.approx(0.1) and r.max_rel == pytest.approx(0.2)
    assert r.message.startswith("1/3 elements differ; max abs 1.0e-01") and r.message.endswith(
        "worst at [2]: 6.0e-01 vs original 5.0e-01")
    zero = compare("y", np.zeros(3, np.float32), np.zeros(3, np.float32))
    assert zero.passed and zero.scale == 0.0 and zero.atol == 0.0


def _failed(name, max_abs, noise, dtype="float32"):
    from onnx_diagwise.validation import OutputComparison

    return OutputComparison(name, False, "some elements differ", dtype=dtype, max_abs=max_abs, noise=noise)


def test_advice_weighs_each_failed_output_against_the_noise_floor():
    from onnx_diagwise.validation import OutputComparison, ValidationReport, advice, failure_message

    outputs = [
        OutputComparison("good", True, "max abs 0", dtype="float32", max_abs=1e-9, noise=1e-9),
        _failed("unmeasured", 0.25, None),  # no noise floor: nothing to weigh, but still widened
        _failed("near", 3e-5, 1e-5),  # 3x the noise
        _failed("wrong_shape", None, 1e-5),  # no values compared
        _failed("edge", 0.5, 0.05),  # exactly 10x: still rounding
        _failed("hundred", 1.0, 0.01),  # exactly 100x
        _failed("just_over", 1.006, 0.01),
        _failed("same", 2e-3, 0.0),  # the original did not move at all
        _failed("far", 0.12345, 1e-5),
        _failed("infinite", float("inf"), 1e-3),
        _failed("zero", 0.0, None),
        _failed("ints", 2.0, None, dtype="int64"),
        _failed("brain", 0.5, None, dtype="bfloat16"),
        _failed("half", 4e-3, None, dtype="float16"),
        _failed("unknown_dtype", 0.5, None, dtype=None),
    ]
    report = ValidationReport("CPUExecutionProvider", 3, outputs)
    widen = {"unmeasured": 0.5, "near": 6e-05, "edge": 1.0, "hundred": 2.0, "just_over": 2.0, "same": 0.004,
             "far": 0.25, "brain": 1.0, "half": 0.008}
    assert advice(report) == [
        "output 'near': the error (max abs 3.0e-05) is 3.0x the runtime's own noise floor (1.0e-05), within 10x of "
        "it: likely rounding that these inputs magnify, not a wrong result",
        "output 'edge': the error (max abs 5.0e-01) is 10.0x the runtime's own noise floor (5.0e-02), within 10x of "
        "it: likely rounding that these inputs magnify, not a wrong result",
        "output 'hundred': the error (max abs 1.0e+00) is 100x the runtime's own noise floor (1.0e-02), more than "
        "10x it: likely a real difference",
        "output 'just_over': the error (max abs 1.0e+00) is 101x the runtime's own noise floor (1.0e-02), more than "
        "10x it: likely a real difference",
        "output 'same': the original gave the same values in both configurations, so the difference (max abs "
        "2.0e-03) is the candidate's, not the runtime's noise",
        "output 'far': the error (max abs 1.2e-01) is 12,345x the runtime's own noise floor (1.0e-05), more than "
        "10x it: likely a real difference",
        f"what to do: run the check on real inputs (InputOptions.data); or allow differences of this size "
        f"(atol={widen!r}); or skip the check (check=False)",
    ]
    assert advice(report, skippable=False)[-1] == (f"what to do: run the check on real inputs (InputOptions.data); "
                                                   f"or allow differences of this size (atol={widen!r})")
    flags = advice(report, spell=lambda option, value: f"--{option} {value}")
    assert flags[-1] == (f"what to do: run the check on real inputs (--InputOptions.data None); or allow differences "
                         f"of this size (--atol {widen}); or skip the check (--check False)")
    message = failure_message(report, "check failed")
    assert message.split("\n")[:3] == ["check failed", "FAILED | output 'unmeasured' | some elements differ",
                                       "FAILED | output 'near' | some elements differ"]
    assert "PASSED" not in message and message.endswith("or skip the check (check=False)")
    message = failure_message(report, "check failed", skippable=False, spell=lambda option, value: f"--{option}")
    assert message.endswith("\nwhat to do: run the check on real inputs (--InputOptions.data); or allow differences of "
                            "this size (--atol)")


def test_advice_without_a_size_to_widen_offers_real_inputs_and_skipping():
    from onnx_diagwise.validation import OutputComparison, ValidationReport, advice

    report = ValidationReport("CPUExecutionProvider", 1, [_failed("ints", 3.0, None, dtype="int64"),
                                                          OutputComparison("gone", False, "missing")])
    assert advice(report) == ["what to do: run the check on real inputs (InputOptions.data); or skip the check "
                              "(check=False)"]
    assert advice(report, skippable=False) == ["what to do: run the check on real inputs (InputOptions.data)"]


def test_output_lines_say_passed_or_failed():
    from onnx_diagwise.validation import OutputComparison

    assert OutputComparison("y", True, "max abs 0").line() == "PASSED | output 'y' | max abs 0"
    assert OutputComparison("y", False, "missing").line() == "FAILED | output 'y' | missing"


def test_noise_floor_of_float_outputs_over_finite_elements():
    from onnx_diagwise.validation import noise_floor

    e = np.array([1.0, np.nan, np.inf, -2.0], np.float32)
    assert noise_floor(e, np.array([1.5, 3.0, 7.0, -2.25], np.float32)) == 0.5  # NaN and inf in either: ignored
    assert noise_floor(e, np.array([np.nan, 0.0, 0.0, -1.0], np.float32)) == 1.0
    assert noise_floor(np.array([np.nan, np.inf]), np.array([np.nan, 1.0])) == 0.0  # nothing finite in both
    assert noise_floor([1.0, 2.0], [1.0, 2.0]) == 0.0  # lists are arrays too
    for kind in (np.int64, np.uint8, np.bool_):
        assert noise_floor(np.array([1, 0], kind), np.array([0, 1], kind)) is None  # integers are exact
    assert noise_floor(np.array(["a"]), np.array(["b"])) is None
    assert noise_floor(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0])) is None  # another shape
    assert noise_floor(np.array([1.0, 2.0]), np.array([1.0], np.float64)) is None
    assert noise_floor(np.array([1.0, 2.0]), np.array([1.0, 2.0], np.float32)) is None  # another dtype


def test_computed_in_follows_layout_ops_back_to_a_cast_of_low_precision_values():
    from onnx_diagwise.validation import computed_in

    def chain(top, length, out):
        return [helper.make_node("Identity", [top if i == 0 else f"{out}{i}"], [f"{out}{i + 1}" if i < length - 1
                                                                                else out]) for i in range(length)]

    nodes = [helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["wide", "shape"], ["flat"]), helper.make_node("Identity", ["flat"], ["b"]),
             helper.make_node("Relu", ["wide"], ["c"]),  # computed in float32 after the Cast
             helper.make_node("Cast", ["x"], ["brain"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["brain"], ["d"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["z"], ["e"], to=TensorProto.FLOAT),  # from float32
             helper.make_node("Mystery", ["x"], ["unknown"], domain="custom.ops"),
             helper.make_node("Cast", ["unknown"], ["f"], to=TensorProto.FLOAT),  # from a type onnx cannot infer
             *chain("wide", 63, "g"),  # the Cast is the 64th node back: found
             *chain("wide", 64, "h")]  # the 65th: not looked for
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3]),
                     helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "abcdefgh"]
        + [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],  # an input passed through
        [numpy_helper.from_array(np.array([6], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    assert computed_in(model) == {"a": "float16", "b": "float16", "d": "bfloat16", "g": "float16"}


def test_tolerance_errors_name_their_parameter():
    from onnx_diagwise.validation import check_tolerances

    for atol, rtol, parameter in (({"z": 1.0}, None, "atol"), (None, {"z": 1.0}, "rtol"), (-1.0, None, "atol"),
                                  (None, -1.0, "rtol")):
        with pytest.raises(DiagwiseError) as caught:
            check_tolerances(atol, rtol, ["y"])
        assert caught.value.parameters == (parameter,)


def _passthrough(*inputs, elem=TensorProto.FLOAT):
    """y = the sum of INPUTS (NAME, DIMS)."""
    values = [helper.make_tensor_value_info(name, elem, dims) for name, dims in inputs]
    node = helper.make_node("Sum", [name for name, _ in inputs], ["y"])
    return helper.make_model(helper.make_graph([node], "g", values, [helper.make_tensor_value_info("y", elem, None)]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_models_that_take_other_inputs_cannot_be_compared():
    original = _passthrough(("x", [2, 3]), ("w", [2, 3]))
    with pytest.raises(DiagwiseError) as caught:
        validate(original, _passthrough(("x", [2, 3]), ("z", [2, 3])), check_n=1)
    assert str(caught.value) == ("the models cannot be compared: the candidate's input 'z' is not an input of the "
                                 "original (its inputs: x, w)")
    with pytest.raises(DiagwiseError) as caught:
        validate(original, _passthrough(("x", [1, 2, 3])), check_n=1)
    assert str(caught.value) == ("the models cannot be compared: input 'x' is tensor(float) of rank 3 in the "
                                 "candidate, tensor(float) of rank 2 in the original")
    assert validate(original, _passthrough(("x", [2, 3]), ("w", [2, 3])), check_n=1).passed


def test_report_as_a_dict():
    from onnx_diagwise.validation import OutputComparison, ValidationReport

    model = _passthrough(("x", [2, 3]))
    data = validate(model, model, check_n=2).to_dict()
    assert sorted(data) == ["config", "noise_floor", "outputs", "passed", "provider", "runs", "tf32"]
    assert (data["passed"], data["provider"], data["runs"], data["tf32"]) == (True, "CPUExecutionProvider", 2, False)
    assert data["noise_floor"]["factor"] == 4 and sorted(data["noise_floor"]) == ["config", "factor"]
    assert data["noise_floor"]["config"] == validate(model, model, check_n=1).noise_config
    assert data["config"] == RuntimeConfig().to_dict()
    [output] = data["outputs"]
    assert output["name"] == "y" and output["passed"] and output["elements"] == 6
    report = ValidationReport("CPUExecutionProvider", 1, [OutputComparison("y", False, "missing")], tf32=True)
    assert report.to_dict() == {"passed": False, "provider": "CPUExecutionProvider", "runs": 1, "tf32": True,
                                "config": {}, "noise_floor": None, "outputs": [
                                    {**OutputComparison("y", False, "missing").__dict__}]}


@pytest.mark.parametrize("runs, kept", [
    ([(True, 0.1), (False, 0.2), (True, 0.3)], 1),  # a failed run outweighs every passed one
    ([(False, 0.5), (True, 0.9), (False, 0.2)], 0),
    ([(True, 0.1), (True, 0.3), (True, 0.2)], 1),  # else the largest difference
    ([(False, 0.5), (False, None), (False, 0.2)], 0),  # no difference measured (a shape mismatch, say) counts as 0
    ([(False, None), (False, 0.5), (False, 0.2)], 1),
    ([(True, 0.0), (True, 0.0), (True, 0.0)], 0),  # ties: the first run's
])
def test_the_report_keeps_the_worst_run_of_each_output(monkeypatch, runs, kept):
    import onnx_diagwise.validation as validation_module
    from onnx_diagwise.validation import OutputComparison

    results = iter([OutputComparison("y", passed, f"run {index}", max_abs=max_abs)
                    for index, (passed, max_abs) in enumerate(runs)])
    monkeypatch.setattr(validation_module, "compare", lambda *args: next(results))
    model = _passthrough(("x", [2, 3]))
    [output] = validate(model, model, check_n=3).outputs
    assert output.message == f"run {kept}"


def test_validate_errors_name_their_parameter():
    model = _passthrough(("x", [2, 3]))
    for kwargs, message, parameter in (({"check_n": 0}, "check_n must be >= 1; got 0", "check_n"),
                                       ({"seed": -1}, "seed must be >= 0; got -1", "seed"),
                                       ({"atol": {"z": 1.0}}, "atol names 'z', which is not an output of the model "
                                        "(outputs: y)", "atol"),
                                       ({"rtol": {"z": 1.0}}, "rtol names 'z', which is not an output of the model "
                                        "(outputs: y)", "rtol")):
        with pytest.raises(DiagwiseError) as caught:
            validate(model, model, **kwargs)
        assert str(caught.value) == message and caught.value.parameters == (parameter,)


def test_a_model_that_cannot_run_is_named():
    runs = _passthrough(("x", ["N", 3]))
    fails = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([7, -1], np.int64), "shape")]), opset_imports=[helper.make_opsetid("", 17)])
    data = InputOptions(data={"x": np.zeros((2, 3), np.float32)})  # 6 values: no 7 rows
    for original, candidate, which in ((fails, runs, "the original"), (runs, fails, "the candidate")):
        with pytest.raises(DiagwiseError) as caught:
            validate(original, candidate, inputs=data)
        assert str(caught.value).startswith(f"onnxruntime could not run {which} with inputs 'x' float32[2, 3] "
                                            "(it expects 'x' tensor(float)['N', 3]): ")


def test_run_k_uses_seed_plus_k_and_the_report_keeps_the_worst():
    model = _passthrough(("x", [3]))
    scaled = scaled_outputs(model, 1.01)  # off by 1% of each input: the difference depends on the inputs

    def max_abs(**kwargs):
        return validate(model, scaled, **kwargs).outputs[0].max_abs

    single = {seed: max_abs(check_n=1, seed=seed) for seed in (0, 1, 3, 4, 5)}
    assert max_abs(check_n=1) == single[0] != single[1]  # the default seed is 0
    assert single[3] < max(single[4], single[5])  # else this test would not tell the runs apart
    assert max_abs(check_n=3, seed=3) == max(single[3], single[4], single[5])


@pytest.mark.parametrize("opt_level, noise_level", [("all", "basic"), ("basic", "all"), ("disable", None)])
def test_noise_floor_is_measured_on_the_original_at_another_optimization_level(monkeypatch, opt_level, noise_level):
    import onnx_diagwise.validation as validation_module

    seen = spy_sessions(monkeypatch, validation_module)
    model = _passthrough(("x", [2, 3]))
    report = validate(model, model, RuntimeConfig("cpu", opt_level=opt_level), check_n=1)
    levels = [config.opt_level for config in seen]
    if noise_level is None:  # no other level to compare with: not measured
        assert levels == [opt_level, opt_level] and report.noise_config is None and report.outputs[0].noise is None
        assert report.to_dict()["noise_floor"] is None
    else:
        assert levels == [opt_level, noise_level, opt_level] and report.outputs[0].noise == 0.0
        assert report.noise_config == {"graph_optimization_level": noise_level}
        assert report.to_dict()["noise_floor"] == {"factor": 4, "config": {"graph_optimization_level": noise_level}}


def test_tf32_is_turned_off_for_the_check_unless_allowed(monkeypatch):
    """On a provider with TF32 (CUDA, here run on the CPU): the check turns it off, so float32 is
    judged as float32; allow_tf32 keeps the provider's default and judges float32 as TF32."""
    import onnx_diagwise.validation as validation_module
    from onnx_diagwise.runtime import create_session

    seen = []

    def on_cpu(model, config):
        seen.append(dict(config.checked_options))
        return create_session(model, RuntimeConfig("cpu"))

    monkeypatch.setattr(validation_module, "create_session", on_cpu)
    model = _passthrough(("x", [2, 3]))
    strict = validate(model, model, RuntimeConfig("cuda"), check_n=1)
    assert not strict.tf32 and strict.outputs[0].rtol == 1e-5
    assert strict.config["provider_options"] == {"use_tf32": "0"} and seen == [{"use_tf32": "0"}] * 3
    seen.clear()
    loose = validate(model, model, RuntimeConfig("cuda"), check_n=1, allow_tf32=True)
    assert loose.tf32 and loose.outputs[0].rtol == 5e-3
    assert loose.config["provider_options"] == {} and seen == [{}] * 3


def test_symbolic_dims_are_sized_once_on_the_configuration_checked(monkeypatch):
    import onnx_diagwise.dims as dims_module

    seen = spy_sessions(monkeypatch, dims_module)
    model = _passthrough(("x", ["N", "T"]))
    config = RuntimeConfig("cpu", threads=1)
    report = validate(model, model, config, InputOptions(batch=2), check_n=3)
    assert report.passed and [(c.provider, c.threads) for c in seen] == [("cpu", 1)]  # not once per run
    assert report.outputs[0].shape == [2, 128]


def test_compare_of_zeros_and_infinities_warns_nothing():
    """Zeros and infinities in the original (0/0, x/0, inf - inf inside) are compared without numpy
    warnings: a caller running with warnings as errors gets a report, not an exception."""
    import warnings

    e = np.array([0.0, 0.0, np.inf, np.inf, -np.inf, 1.0], np.float32)
    a = np.array([0.0, 1.0, np.inf, -np.inf, 5.0, 1.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = compare("y", e, a)
    # 0 for 0, 1 for 0, the same inf; -inf and a number where the original has an infinity are wrong
    assert not r.passed and r.mismatches == 3 and r.worst_index == [3] and r.scale == 1.0


def test_compare_boundaries_are_inclusive():
    one = np.array([1.0], np.float32)
    at = compare("y", one, one + np.float32(0.5), atol=0.5, rtol=0.0)  # |a - e| == atol + rtol * |e|: passes
    assert at.passed and at.mismatches == 0 and at.max_abs == 0.5
    near_zero = compare("y", np.array([0.5, 2.0], np.float32), np.array([0.75, 2.0], np.float32), atol=0.5)
    assert near_zero.passed and near_zero.max_rel == 0.0  # |e| == atol is near zero: no relative error
    # 4x the noise floor equal to the default atol: the default stands (it is not raised by the noise)
    r = compare("y", np.array([1.0, -0.5], np.float32), np.array([1.0, -0.5], np.float32), noise=2.5e-6)
    assert r.atol == 1e-5 and "4x the noise floor" not in r.message and r.message.endswith("(atol 1.0e-05, rtol 1e-05)")
