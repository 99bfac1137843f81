"""providers: each family's rules on their own (no GPU needed), the registry, and that a registered
family alone decides how sessions are made, checked and bound."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from helpers import SAMPLE_DIR
from onnx_diagwise import bench, providers, runtime, validation
from onnx_diagwise.errors import DiagwiseError
from onnx_diagwise.providers import (CpuProvider, CudaProvider, Provider, TensorrtProvider, find_provider,
                                     register)
from onnx_diagwise.runtime import RuntimeConfig, create_session

SAMPLE = SAMPLE_DIR / "mobilenet_v1_025.onnx"
REAL_SESSION = onnxruntime.InferenceSession


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Registrations made by a test end with it."""
    monkeypatch.setattr(providers, "_BY_NAME", dict(providers._BY_NAME))
    monkeypatch.setattr(providers, "_BY_ALIAS", dict(providers._BY_ALIAS))


def log_severity(provider: Provider) -> int:
    options = SimpleNamespace(log_severity_level=None)
    provider.configure_session(options)
    return options.log_severity_level


# ---------------------------------------------------------------- names


def test_aliases_in_any_case_and_full_names_select_a_family():
    assert type(find_provider("cpu")) is CpuProvider
    assert type(find_provider("CUDA")) is CudaProvider
    assert find_provider("cuda") is find_provider("CUDAExecutionProvider")
    assert find_provider("trt") is find_provider("TensorRT") is find_provider("TensorrtExecutionProvider")
    assert type(find_provider("tensorrt")) is TensorrtProvider
    rocm = find_provider("rocm")
    assert type(rocm) is Provider and rocm.name == "ROCMExecutionProvider"
    assert find_provider("directml").name == find_provider("dml").name == "DmlExecutionProvider"


def test_a_provider_onnxruntime_knows_gets_the_base_rules():
    unclaimed = sorted(set(onnxruntime.get_all_providers()) - set(providers._BY_NAME))
    if not unclaimed:
        pytest.skip("every provider this onnxruntime knows has a family")
    provider = find_provider(unclaimed[0])
    assert type(provider) is Provider and provider.name == unclaimed[0]


def test_an_unknown_provider_is_one_line_naming_the_known_ones():
    with pytest.raises(DiagwiseError) as caught:
        find_provider("tpu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown provider 'tpu'; use one of coreml, cpu, cuda, directml, dml, dnnl, ")
    assert message.endswith(", tensorrt, trt, webgpu, xnnpack or a full name such as CUDAExecutionProvider")
    register(Provider("TpuExecutionProvider", "tpu"))  # one registration makes a name known
    assert find_provider("TPU").name == "TpuExecutionProvider"
    with pytest.raises(DiagwiseError, match="; use one of .*, tensorrt, tpu, trt, "):
        find_provider("npu")
    with pytest.raises(DiagwiseError, match="^unknown provider 'cudaexecutionprovider'"):
        find_provider("cudaexecutionprovider")  # full names are spelled as onnxruntime spells them
    with pytest.raises(DiagwiseError, match="^unknown provider 'gpu0'"):
        RuntimeConfig("gpu0").family


# ---------------------------------------------------------------- each family's rules


def test_cpu_rules():
    cpu = find_provider("cpu")
    assert cpu.session_providers({"a": "1"}) == [("CPUExecutionProvider", {"a": "1"})]
    assert cpu.checked_options({"a": "1"}) == {"a": "1"} and cpu.checked_options(None) == {}
    assert log_severity(cpu) == 4
    assert not cpu.on_gpu and not cpu.uses_tf32({}) and cpu.without_tf32({"a": "1"}) == {"a": "1"}
    assert cpu.io_device({}) is None
    assert cpu.device({}) == providers.cpu_name()
    assert cpu.prepare(onnxruntime) == ""


def test_cuda_options_are_checked_where_the_tool_reads_them():
    cuda = find_provider("cuda")
    given = {"device_id": "1", "use_tf32": "false", "prefer_nhwc": "1"}
    assert cuda.checked_options(given) == given
    assert cuda.checked_options(None) == {}
    with pytest.raises(DiagwiseError, match=r"^provider option device_id=gpu1: expected a GPU index \(0, 1, ...\)$"):
        cuda.checked_options({"device_id": "gpu1"})
    with pytest.raises(DiagwiseError, match="^provider option device_id=-1"):
        cuda.checked_options({"device_id": "-1"})
    with pytest.raises(DiagwiseError, match="^provider option use_tf32=yes: expected 0 or 1$"):
        cuda.checked_options({"use_tf32": "yes"})


def test_cuda_tf32_rule():
    cuda = find_provider("cuda")
    assert cuda.uses_tf32({})  # onnxruntime's default
    for off in ("0", "false", "False"):
        assert not cuda.uses_tf32({"use_tf32": off})
    for on in ("1", "true", "True"):
        assert cuda.uses_tf32({"use_tf32": on})
    given = {"use_tf32": "1", "device_id": "1"}
    exact = cuda.without_tf32(given)
    assert exact == {"use_tf32": "0", "device_id": "1"} and not cuda.uses_tf32(exact)
    assert given["use_tf32"] == "1"  # the caller's options are left alone


def test_cuda_sessions_devices_and_libraries(monkeypatch):
    cuda = find_provider("cuda")
    assert cuda.session_providers({"x": "1"}) == [("CUDAExecutionProvider", {"x": "1"}), "CPUExecutionProvider"]
    assert log_severity(cuda) == 3  # why the provider failed to load is only in onnxruntime's log
    assert cuda.on_gpu and cuda.install_hint == "onnxruntime-gpu"
    assert cuda.io_device({}) == ("cuda", 0)
    assert cuda.io_device({"device_id": "3"}) == ("cuda", 3)
    monkeypatch.setattr(providers, "nvidia_gpu_name", lambda: "NVIDIA H200, 580.1")
    assert cuda.device({}) == "NVIDIA H200, 580.1"
    seen = []
    monkeypatch.setattr(providers, "prepare_gpu_provider", lambda ort: seen.append(ort) or "libcudnn.so.9 not found")
    assert cuda.prepare(onnxruntime) == "libcudnn.so.9 not found" and seen == [onnxruntime]


def test_tensorrt_rules(monkeypatch):
    trt = find_provider("tensorrt")
    assert trt.name == "TensorrtExecutionProvider" and trt.on_gpu and trt.install_hint == "onnxruntime-gpu"
    # TensorRT allows TF32 for float32 layers and its provider has no option to stop it.
    assert trt.uses_tf32({}) and trt.uses_tf32(trt.without_tf32({"trt_fp16_enable": "0"}))
    assert trt.without_tf32({"trt_fp16_enable": "0"}) == {"trt_fp16_enable": "0"}
    assert trt.checked_options({"trt_fp16_enable": "1"}) == {"trt_fp16_enable": "1"}
    with pytest.raises(DiagwiseError, match="^provider option device_id=x"):
        trt.checked_options({"device_id": "x"})
    assert trt.io_device({"device_id": "1"}) == ("cuda", 1)
    assert trt.session_providers({}) == [("TensorrtExecutionProvider", {}), "CPUExecutionProvider"]
    assert log_severity(trt) == 3
    monkeypatch.setattr(providers, "prepare_gpu_provider", lambda ort: "prepared")
    assert trt.prepare(onnxruntime) == "prepared"


def test_base_rules_for_providers_without_a_family():
    openvino = find_provider("openvino")
    assert openvino.session_providers({"device_type": "GPU"}) == [
        ("OpenVINOExecutionProvider", {"device_type": "GPU"}), "CPUExecutionProvider"]
    assert openvino.checked_options({"device_id": "any"}) == {"device_id": "any"}
    assert not openvino.uses_tf32({}) and openvino.io_device({}) is None and log_severity(openvino) == 4
    assert openvino.install_hint == "an onnxruntime build with OpenVINOExecutionProvider"
    assert openvino.device({}) == providers.cpu_name()


def test_noise_floor_runs_at_a_peer_optimization_level():
    for provider in (find_provider("cpu"), find_provider("cuda"), find_provider("trt")):
        assert [provider.noise_opt_level(level) for level in ("all", "extended", "basic", "disable")] == [
            "basic", "basic", "all", None]


def test_profiled_nodes_map_back_to_the_models_conv():
    conv = helper.make_node("Conv", ["x", "w"], ["c1_out"], name="c1", group=2)
    relu = helper.make_node("Relu", ["c1_out"], ["r1_out"], name="r1")
    conv2 = helper.make_node("Conv", ["r1_out", "w2"], ["c2_out"], name="c2")
    add = helper.make_node("Add", ["c2_out", "c2_out"], ["y"], name="add")
    graph = helper.make_graph([conv, relu, conv2, add], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    find = find_provider("cpu").profiled_conv(helper.make_model(graph))
    assert find("c1") == "c1"  # fused Convs keep their name
    assert find("r1_out_nchwc") == "c1"  # named after the fused activation's output
    assert find("c2_out_nchwc") == find("c2_out_fused") == "c2"
    assert find("y_nchwc") is None and find("ReorderOutput") is None and find("r1") is None


def test_device_names(monkeypatch, tmp_path):
    monkeypatch.setattr(providers.subprocess, "run",
                        lambda args, **kw: SimpleNamespace(returncode=0, stdout="GPU A, 1\nGPU B, 1\n"))
    assert providers.nvidia_gpu_name() == "GPU A, 1"
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Fake CPU\n")
    real_path = providers.Path
    monkeypatch.setattr(providers, "Path", lambda p: real_path(info) if p == "/proc/cpuinfo" else real_path(p))
    assert providers.cpu_name() == "Fake CPU"
    assert bench.device_name(RuntimeConfig("cpu")) == "Fake CPU"
    assert bench.device_name(RuntimeConfig("cuda", {"device_id": "0"})) == "GPU A, 1"


# ---------------------------------------------------------------- one registration


class FakeProvider(Provider):
    """A provider that exists only here: its rules must reach every session the tool makes."""

    on_gpu = True

    def __init__(self):
        super().__init__("FakeExecutionProvider", "fake")
        self.prepared = []

    @property
    def install_hint(self) -> str:
        return "the fake runtime"

    @property
    def load_hint(self) -> str:
        return "the fake driver is missing"

    def checked_options(self, options):
        checked = {"mode": "fast", **(options or {})}  # a default of its own
        if checked["mode"] not in ("fast", "exact"):
            raise DiagwiseError(f"provider option mode={checked['mode']}: expected fast or exact")
        return checked

    def prepare(self, ort) -> str:
        self.prepared.append(ort)
        return ""

    def session_providers(self, options):
        return [(self.name, dict(options)), "CPUExecutionProvider"]

    def configure_session(self, session_options) -> None:
        session_options.log_severity_level = 1

    def uses_tf32(self, options) -> bool:
        return options["mode"] == "fast"

    def without_tf32(self, options):
        return {**options, "mode": "exact"}

    def noise_opt_level(self, opt_level: str):
        return "extended"

    def device(self, options) -> str:
        return "Fake accelerator"


class FakeSession:
    def __init__(self, ran_on: str):
        self.ran_on = ran_on

    def get_providers(self):
        return [self.ran_on, "CPUExecutionProvider"]


@pytest.fixture()
def fake(monkeypatch):
    """FakeProvider registered and 'available'; every InferenceSession made is recorded, not built."""
    provider = register(FakeProvider())
    made = []

    def session(source, options, providers):
        made.append(SimpleNamespace(source=source, options=options, providers=providers))
        return FakeSession(providers[0][0])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["FakeExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return provider, made


def test_a_registered_provider_drives_create_session(fake):
    provider, made = fake
    config = RuntimeConfig("FAKE", {"level": "3"}, threads=2)
    assert config.family is provider and config.provider_full == "FakeExecutionProvider" and config.is_gpu
    assert config.to_dict()["provider_options"] == {"mode": "fast", "level": "3"}
    create_session(str(SAMPLE), config)
    (session,) = made
    assert session.providers == [("FakeExecutionProvider", {"mode": "fast", "level": "3"}), "CPUExecutionProvider"]
    assert session.options.log_severity_level == 1 and session.options.intra_op_num_threads == 2
    assert provider.prepared == [onnxruntime]
    with pytest.raises(DiagwiseError, match="^provider option mode=slow: expected fast or exact$"):
        create_session(str(SAMPLE), RuntimeConfig("fake", {"mode": "slow"}))
    assert len(made) == 1  # refused before onnxruntime saw it


def test_a_registered_provider_names_its_own_fixes(fake, monkeypatch):
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda source, options, providers: FakeSession("CPU"))
    with pytest.raises(DiagwiseError, match="^asked for FakeExecutionProvider but onnxruntime ran on CPU: the provider "
                                            "failed to load: the fake driver is missing$"):
        create_session(str(SAMPLE), RuntimeConfig("fake"))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DiagwiseError, match="^provider FakeExecutionProvider is not available .*; install the fake "
                                            "runtime$"):
        create_session(str(SAMPLE), RuntimeConfig("fake"))


def test_validation_takes_tf32_and_noise_rules_from_the_family(fake, monkeypatch):
    configs = []

    def session(model, config, *rest):
        configs.append(config)
        raise RuntimeError("stop")  # the configuration is all this test needs

    monkeypatch.setattr(validation, "create_session", session)
    with pytest.raises(RuntimeError, match="stop"):
        validation.validate(str(SAMPLE), str(SAMPLE), RuntimeConfig("fake"))
    assert configs[-1].provider_options == {"mode": "exact"}
    with pytest.raises(RuntimeError, match="stop"):
        validation.validate(str(SAMPLE), str(SAMPLE), RuntimeConfig("fake"), allow_tf32=True)
    assert configs[-1].provider_options == {"mode": "fast"}


def test_validation_report_says_tf32_and_measures_noise_as_the_family_says(fake, monkeypatch):
    monkeypatch.setattr(onnxruntime, "InferenceSession", REAL_SESSION)
    real = runtime.create_session
    levels = []

    def on_cpu(model, config, *rest):  # the fake family's rules, a CPU session to run them
        levels.append(config.opt_level)
        return real(model, RuntimeConfig("cpu", threads=1, opt_level=config.opt_level))

    monkeypatch.setattr(validation, "create_session", on_cpu)
    report = validation.validate(str(SAMPLE), str(SAMPLE), RuntimeConfig("fake"), check_n=1, allow_tf32=True)
    assert report.passed and report.tf32 and report.provider == "FakeExecutionProvider"
    assert report.noise_config == {"graph_optimization_level": "extended"} and levels == ["all", "extended", "all"]
    assert validation.validate(str(SAMPLE), str(SAMPLE), RuntimeConfig("fake"), check_n=1).tf32 is False


def test_bench_binds_and_names_devices_as_the_family_says(fake, monkeypatch):
    bound = []

    class HostProvider(FakeProvider):  # binds in host memory, as a test machine can
        on_gpu = False  # IO binding follows io_device(), not on_gpu

        def io_device(self, options):
            bound.append(options)
            return "cpu", 0

        def profiled_conv(self, model):
            return lambda name: f"traced {name}"

    register(HostProvider())
    monkeypatch.setattr(onnxruntime, "InferenceSession", REAL_SESSION)
    real = runtime.create_session
    monkeypatch.setattr(bench, "create_session",
                        lambda model, config, *rest: real(model, RuntimeConfig("cpu", threads=1), *rest))
    report = bench.benchmark([str(SAMPLE)], RuntimeConfig("fake"), warmup=0, iterations=1, profile=True,
                             profile_runs=1)
    assert report.environment["iobinding"] is True and bound  # a device to bind on turns IO binding on
    assert report.profiles[0].nodes and all(n.source == f"traced {n.name}" for n in report.profiles[0].nodes)
    assert report.environment["device"] == "Fake accelerator"
    assert report.environment["provider_options"] == {"mode": "fast"}
    assert np.isfinite(report.models[0].median_ms)
