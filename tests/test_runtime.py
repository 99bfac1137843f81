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
