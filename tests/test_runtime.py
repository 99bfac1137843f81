"""runtime: providers, session options, input specs and synthesized inputs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import SAMPLE_DIR
from onnx_diagwise.errors import DiagwiseError
from onnx_diagwise.runtime import (RuntimeConfig, create_session, input_specs, parse_dims, parse_input_shapes,
                                   parse_key_values, random_tensor, run_session)


def test_provider_names():
    assert RuntimeConfig("cpu").provider_full == "CPUExecutionProvider"
    assert RuntimeConfig("CUDA").provider_full == "CUDAExecutionProvider"
    assert RuntimeConfig("CPUExecutionProvider").provider_full == "CPUExecutionProvider"
    with pytest.raises(DiagwiseError, match="^unknown provider 'tpu'; use one of"):
        RuntimeConfig("tpu").provider_full
    assert RuntimeConfig("cuda").is_gpu and not RuntimeConfig("cpu").is_gpu
    assert RuntimeConfig("cpu", {"a": "1"}, 2).to_dict() == {
        "provider": "CPUExecutionProvider", "provider_options": {"a": "1"}, "threads": 2,
        "graph_optimization_level": "all", "spin": False}


def test_session_options_follow_the_config():
    session = create_session(str(SAMPLE_DIR / "mobilenet_v1_025.onnx"), RuntimeConfig("cpu", threads=1,
                                                                                      opt_level="basic"))
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    with pytest.raises(DiagwiseError, match="^opt_level must be one of"):
        create_session(str(SAMPLE_DIR / "mobilenet_v1_025.onnx"), RuntimeConfig("cpu", opt_level="max"))


def test_missing_gpu_provider_is_one_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(DiagwiseError, match="CUDAExecutionProvider"):
        create_session(str(SAMPLE_DIR / "mobilenet_v1_025.onnx"), RuntimeConfig("cuda"))


def test_run_session_names_the_inputs_it_was_given():
    session = create_session(str(SAMPLE_DIR / "mobilenet_v1_025.onnx"), RuntimeConfig("cpu"))
    with pytest.raises(DiagwiseError, match=r"^onnxruntime could not run the test with inputs 'input' float32\[1, 3\]"):
        run_session(session, {"input": np.zeros((1, 3), np.float32)}, "the test")


def test_input_specs_skip_initializers_and_keep_symbolic_dims():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, None]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT16, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        [helper.make_tensor("w", TensorProto.FLOAT16, [3], [1, 2, 3])])
    (spec,) = input_specs(helper.make_model(graph))
    assert (spec.name, spec.dims, spec.dtype) == ("x", ["N", 3, None], np.dtype(np.float16))
    graph.input.append(onnx.ValueInfoProto(name="seq"))
    graph.input[-1].type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(DiagwiseError, match="^input 'seq' is not a tensor"):
        input_specs(helper.make_model(graph))


def test_parsers():
    assert parse_key_values(["a=1", " b = x=y "], "--provider-option") == {"a": "1", "b": "x=y"}
    with pytest.raises(DiagwiseError, match="^--provider-option expects KEY=VALUE; got 'a'$"):
        parse_key_values(["a"], "--provider-option")
    assert parse_dims(["N=4"]) == {"N": 4}
    with pytest.raises(DiagwiseError, match="^--dim N=0: the value must be a positive integer$"):
        parse_dims(["N=0"])
    assert parse_input_shapes(["x:1,3,8,8", "2,4"]) == {"x": [1, 3, 8, 8], "": [2, 4]}
    with pytest.raises(DiagwiseError, match="dims must be positive"):
        parse_input_shapes(["x:1,0"])


def test_random_tensors_by_dtype():
    rng = np.random.default_rng(0)
    floats = random_tensor(rng, np.dtype(np.float16), [1000])
    assert floats.dtype == np.float16 and -1 <= floats.min() and floats.max() < 1 and floats.std() > 0.4
    ints = random_tensor(rng, np.dtype(np.int64), [1000])
    assert ints.dtype == np.int64 and ints.min() == 0 and ints.max() == 7
    bools = random_tensor(rng, np.dtype(np.bool_), [1000])
    assert bools.dtype == np.bool_ and 300 < bools.sum() < 700
    scalar = random_tensor(rng, np.dtype(np.float32), [])
    assert isinstance(scalar, np.ndarray) and scalar.shape == ()
    with pytest.raises(DiagwiseError, match="cannot synthesize inputs of dtype"):
        random_tensor(rng, np.dtype("U3"), [2])


# ---------------------------------------------------------------- sessions: options, sources, errors


def tiny_model(channels=8, kernel=(3, 3)):
    from helpers import depthwise_model

    return depthwise_model(channels=channels, kernel=kernel)


@pytest.mark.parametrize("level, ort_name", [("disable", "ORT_DISABLE_ALL"), ("basic", "ORT_ENABLE_BASIC"),
                                             ("extended", "ORT_ENABLE_EXTENDED"), ("all", "ORT_ENABLE_ALL")])
def test_each_opt_level_reaches_the_session(level, ort_name):
    options = create_session(tiny_model(), RuntimeConfig("cpu", opt_level=level)).get_session_options()
    assert str(options.graph_optimization_level).endswith(ort_name)


def test_bad_opt_level_and_threads_name_their_parameter():
    with pytest.raises(DiagwiseError) as bad_level:
        create_session(tiny_model(), RuntimeConfig("cpu", opt_level="max"))
    assert str(bad_level.value) == "opt_level must be one of disable, basic, extended, all; got 'max'"
    assert bad_level.value.parameters == ("opt_level",)
    with pytest.raises(DiagwiseError) as bad_threads:
        create_session(tiny_model(), RuntimeConfig("cpu", threads=0))
    assert str(bad_threads.value) == "threads must be >= 1; got 0"
    assert bad_threads.value.parameters == ("threads",)
    assert create_session(tiny_model(), RuntimeConfig("cpu", threads=2)).get_session_options().intra_op_num_threads == 2


def test_idle_threads_do_not_spin_unless_asked():
    quiet = create_session(tiny_model(), RuntimeConfig("cpu")).get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert quiet.log_severity_level == 4
    spinning = create_session(tiny_model(), RuntimeConfig("cpu", spin=True)).get_session_options()
    with pytest.raises(RuntimeError):
        spinning.get_session_config_entry("session.intra_op.allow_spinning")


def test_profiling_and_the_optimized_graph_are_written_when_asked(tmp_path):
    from pathlib import Path

    optimized = tmp_path / "optimized.onnx"
    session = create_session(tiny_model(), RuntimeConfig("cpu"), profile_prefix=str(tmp_path / "prof"),
                             optimized_path=str(optimized))
    options = session.get_session_options()
    assert options.enable_profiling is True and options.profile_file_prefix == str(tmp_path / "prof")
    assert optimized.is_file() and options.optimized_model_filepath == str(optimized)
    profile = session.end_profiling()
    assert Path(profile).name.startswith("prof") and Path(profile).is_file()
    plain = create_session(tiny_model(), RuntimeConfig("cpu")).get_session_options()
    assert plain.enable_profiling is False and plain.optimized_model_filepath == ""


def test_a_session_runs_the_model_it_was_given():
    from helpers import random_inputs, run

    model = tiny_model()
    feeds = random_inputs(model)
    session = create_session(model, RuntimeConfig("cpu"))
    np.testing.assert_allclose(run_session(session, feeds, "the test")[0], run(model, feeds)[0], rtol=1e-6)
    assert session.get_providers()[0] == "CPUExecutionProvider"


@pytest.mark.parametrize("above", [True, False])
def test_a_model_near_the_protobuf_limit_is_handed_over_as_external_data(monkeypatch, tmp_path, above):
    """Past PROTOBUF_LIMIT - 64 MiB of weights the session reads a temporary file with external data,
    which is gone afterwards (the limit is lowered here so that a small model crosses it)."""
    from pathlib import Path

    from helpers import random_inputs, run

    from onnx_diagwise import runtime
    from onnx_diagwise.tensors import weight_bytes

    model = tiny_model(channels=64, kernel=(5, 5))
    monkeypatch.setattr(runtime, "PROTOBUF_LIMIT", weight_bytes(model) + 64 * 2**20 + (0 if above else 1))
    saved = []
    real_save = runtime.save_model

    def spy(model_arg, path, **kwargs):
        real_save(model_arg, path, **kwargs)
        saved.append((Path(path), sorted(p.name for p in Path(path).parent.iterdir())))

    monkeypatch.setattr(runtime, "save_model", spy)
    feeds = random_inputs(model)
    session = create_session(model, RuntimeConfig("cpu"))
    np.testing.assert_allclose(run_session(session, feeds, "the test")[0], run(model, feeds)[0], rtol=1e-6)
    if not above:
        assert saved == []
        return
    ((path, files),) = saved
    assert path.name == "model.onnx" and path.parent.name.startswith("onnx-diagwise-")
    assert "model.onnx" in files and len(files) > 1  # the weights went to a file of their own
    assert not path.parent.exists()


def test_missing_provider_lists_what_this_onnxruntime_has(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DiagwiseError) as missing:
        create_session(tiny_model(), RuntimeConfig("cuda"))
    assert str(missing.value) == (f"provider CUDAExecutionProvider is not available in this onnxruntime "
                                  f"({onnxruntime.__version__}; available: AzureExecutionProvider, "
                                  "CPUExecutionProvider); install onnxruntime-gpu")


def test_a_session_onnxruntime_refuses_is_one_line():
    with pytest.raises(DiagwiseError) as refused:
        create_session("/nonexistent/m.onnx", RuntimeConfig("cpu"))
    message = str(refused.value)
    assert message.startswith("onnxruntime could not create a CPUExecutionProvider session: [ONNXRuntimeError]")
    assert "/nonexistent/m.onnx" in message and "\n" not in message


@pytest.mark.parametrize("error, shown", [(RuntimeError("first line\nsecond line"), "first line"),
                                          (RuntimeError(""), "RuntimeError"), (ValueError("  \n"), "ValueError")])
def test_session_errors_keep_their_first_line_or_their_type(monkeypatch, error, shown):
    import onnxruntime

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(DiagwiseError) as refused:
        create_session(tiny_model(), RuntimeConfig("cpu"))
    assert str(refused.value) == f"onnxruntime could not create a CPUExecutionProvider session: {shown}"

    class Failing:
        def run(self, outputs, feeds):
            raise error

        def get_inputs(self):
            return []

    with pytest.raises(DiagwiseError) as failed:
        run_session(Failing(), {"x": np.zeros((2, 3), np.float32)}, "it")
    assert str(failed.value) == f"onnxruntime could not run it with inputs 'x' float32[2, 3] (it expects ): {shown}"


@pytest.mark.parametrize("got, shown", [([], "nothing"), (["AzureExecutionProvider", "CPUExecutionProvider"],
                                                           "AzureExecutionProvider")])
def test_a_provider_that_failed_to_load_is_an_error(monkeypatch, got, shown):
    import onnxruntime

    real = onnxruntime.InferenceSession

    class FellBack:
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def get_providers(self):
            return got

    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    with pytest.raises(DiagwiseError) as fell_back:
        create_session(tiny_model(), RuntimeConfig("cpu"))
    assert str(fell_back.value) == (f"asked for CPUExecutionProvider but onnxruntime ran on {shown}: the provider "
                                    "failed to load: its libraries missing or mismatched?")


def test_session_gets_the_providers_and_options_configured(monkeypatch):
    import onnxruntime

    real = onnxruntime.InferenceSession
    calls = []

    def recording(source, options, providers):
        calls.append((type(source), options.intra_op_num_threads, providers))
        return real(source, options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    create_session(tiny_model(), RuntimeConfig("cpu", threads=3))
    create_session(str(SAMPLE_DIR / "mobilenet_v1_025.onnx"), RuntimeConfig("cpu", threads=3))
    assert calls == [(bytes, 3, [("CPUExecutionProvider", {})]), (str, 3, [("CPUExecutionProvider", {})])]


def test_run_failure_names_every_input_given_and_expected():
    session = create_session(tiny_model(), RuntimeConfig("cpu"))
    with pytest.raises(DiagwiseError) as failed:
        run_session(session, {"x": [[1.0]], "extra": np.zeros(2, np.int64)}, "the test")
    message = str(failed.value)
    assert message.startswith("onnxruntime could not run the test with inputs 'x' ?[], 'extra' int64[2] "
                              "(it expects 'x' tensor(float)['N', 8, 9, 9]): ")

    class Inputs:
        def run(self, outputs, feeds):
            raise RuntimeError("no")

        def get_inputs(self):
            from types import SimpleNamespace

            return [SimpleNamespace(name="a", type="tensor(float)", shape=[1]),
                    SimpleNamespace(name="b", type="tensor(int64)", shape=["N"])]

    with pytest.raises(DiagwiseError) as two:
        run_session(Inputs(), {}, "it")
    assert str(two.value) == "onnxruntime could not run it with inputs  (it expects 'a' tensor(float)[1], 'b' tensor(int64)['N']): no"


def test_input_specs_skip_an_initializer_listed_before_the_inputs():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("x", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [3], [1, 2, 3])])
    (spec,) = input_specs(helper.make_model(graph))
    assert (spec.name, spec.elem_type, spec.dims) == ("x", TensorProto.INT64, [2, 3])


def test_input_data_from_npz_and_npy_files(tmp_path):
    from onnx_diagwise.runtime import load_input_data

    np.savez(tmp_path / "all.npz", x=np.arange(3, dtype=np.float32), y=np.ones(2, np.int64))
    odd = tmp_path / "a:b"
    odd.mkdir()
    np.save(odd / "z.npy", np.full(4, 7, np.int32))
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    data = load_input_data([f"z:{odd / 'z.npy'}", f"x:{tmp_path / 'x.npy'}"], str(tmp_path / "all.npz"))
    assert sorted(data) == ["x", "y", "z"]
    np.testing.assert_array_equal(data["x"], np.zeros(2, np.float32))  # --input-data wins over --inputs
    np.testing.assert_array_equal(data["y"], np.ones(2, np.int64))
    np.testing.assert_array_equal(data["z"], np.full(4, 7, np.int32))
    assert load_input_data([], None) == {}


def test_input_data_refuses_bad_pairs_and_files(tmp_path):
    from onnx_diagwise.runtime import load_input_data

    for pair in ("x", ":f.npy", "x:"):
        with pytest.raises(DiagwiseError) as bad:
            load_input_data([pair], None)
        assert str(bad.value) == f"--input-data expects NAME:FILE.npy; got '{pair}'"
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DiagwiseError) as pickled:
        load_input_data([f"x:{tmp_path / 'objects.npy'}"], None)
    assert str(pickled.value).startswith(f"--input-data x: cannot read '{tmp_path / 'objects.npy'}' as .npy: ")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DiagwiseError) as pickled_npz:
        load_input_data([], str(tmp_path / "objects.npz"))
    assert str(pickled_npz.value).startswith(f"--inputs '{tmp_path / 'objects.npz'}' is not a readable .npz file: ")
    with pytest.raises(DiagwiseError, match="is not a readable .npz file"):
        load_input_data([], str(tmp_path / "missing.npz"))


def test_random_tensors_for_unsigned_and_bfloat16():
    import ml_dtypes

    rng = np.random.default_rng(0)
    unsigned = random_tensor(rng, np.dtype(np.uint8), [1000])
    assert unsigned.dtype == np.uint8 and unsigned.min() == 0 and unsigned.max() == 7
    brain = random_tensor(rng, np.dtype(ml_dtypes.bfloat16), [1000])
    assert brain.dtype == np.dtype(ml_dtypes.bfloat16)
    values = brain.astype(np.float32)
    assert -1 <= values.min() < -0.9 and 0.9 < values.max() <= 1
    with pytest.raises(DiagwiseError) as complex_dtype:
        random_tensor(rng, np.dtype(np.complex64), [2])
    assert str(complex_dtype.value) == ("cannot synthesize inputs of dtype complex64; pass real data with "
                                        "--input-data")


def test_a_provider_that_failed_to_load_names_what_its_preparation_found_missing(monkeypatch):
    import onnxruntime

    from onnx_diagwise.providers import CpuProvider

    real = onnxruntime.InferenceSession

    class FellBack:
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def get_providers(self):
            return ["AzureExecutionProvider"]

    monkeypatch.setattr(CpuProvider, "prepare", lambda self, ort: f"libfoo.so missing for onnxruntime {ort.__version__}")
    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    with pytest.raises(DiagwiseError) as fell_back:
        create_session(tiny_model(), RuntimeConfig("cpu"))
    assert str(fell_back.value) == ("asked for CPUExecutionProvider but onnxruntime ran on AzureExecutionProvider: the "
                                    f"provider failed to load: libfoo.so missing for onnxruntime {onnxruntime.__version__}")


def test_random_floats_are_the_same_draw_for_every_float_dtype():
    wide = random_tensor(np.random.default_rng(3), np.dtype(np.float64), [64])
    narrow = random_tensor(np.random.default_rng(3), np.dtype(np.float32), [64])
    assert wide.dtype == np.float64 and np.array_equal(wide, narrow.astype(np.float64))


def test_dim_and_shape_parsers_edge_cases():
    assert parse_dims(["N=1", " S = 16 "]) == {"N": 1, "S": 16}
    with pytest.raises(DiagwiseError) as no_value:
        parse_dims(["N"])
    assert str(no_value.value) == "--dim expects KEY=VALUE; got 'N'"
    with pytest.raises(DiagwiseError, match="^--dim N=x: the value must be a positive integer$"):
        parse_dims(["N=x"])
    assert parse_input_shapes(["encoder:input:1,80"]) == {"encoder:input": [1, 80]}
    with pytest.raises(DiagwiseError) as not_ints:
        parse_input_shapes(["x:1,a"])
    assert str(not_ints.value) == "--overwrite-input-shape 'x:1,a': expected NAME:D1,D2,... with integers"
