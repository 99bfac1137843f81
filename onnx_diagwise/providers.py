"""What the tool must know of each onnxruntime execution provider: one object per family.

A family says which names select it, which of its options the tool reads (checked here), what
the process needs before a session (CUDA's libraries), which providers and session settings a
session gets, whether float32 may run as TF32 and how a check keeps it exact, which second
configuration measures the runtime's own noise, where IO binding puts tensors, how profiled
nodes map back to the model's own, and what device to name in reports and caches.

Adding a provider is a subclass and one register() call.  A provider onnxruntime knows but no
family claims gets the base rules.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

from onnx import ModelProto

from .cuda_libs import prepare_gpu_provider
from .errors import DiagwiseError, RuntimeMissing


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(
            "onnxruntime is not installed: pip install 'onnx-diagwise[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return onnxruntime


# The second configuration the original runs in to measure the runtime's own noise: ENABLE_BASIC
# against ENABLE_ALL changes summation order as the rewrite does (NCHWc kernels, Conv+activation
# fusion) for the cost of one more session.  DISABLE_ALL is not used: it runs QDQ graphs in float,
# whose results differ by whole quantization steps and would hide a wrong weight; thread counts
# leave CPU results unchanged, and float64 has no Conv kernel on the CPU provider.
NOISE_OPT_LEVEL = {"all": "basic", "extended": "basic", "basic": "all"}  # none under "disable": no peer level

# Elementwise ops onnxruntime fuses into the Conv before them (Conv + activation).
FUSED_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Selu"}
# onnxruntime names a node its transformers create after the output it produces, plus one of these.
RENAMED_SUFFIXES = ("_nchwc", "_fused")

# How onnxruntime spells a boolean provider option.
FLAG_VALUES = {"0": False, "false": False, "False": False, "1": True, "true": True, "True": True}


class Provider:
    """A provider with no rules of its own: options as given, the CPU provider behind it for the
    nodes it cannot run, float32 kept exact, tensors bound in host memory, the CPU named as device.

    Methods that take OPTIONS expect them as checked_options() returns them."""

    on_gpu = False

    def __init__(self, name: str, *aliases: str):
        self.name = name  # onnxruntime's name, e.g. CUDAExecutionProvider
        self.aliases = aliases  # short names, matched in any case

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def install_hint(self) -> str:
        """What to install when this onnxruntime lacks the provider."""
        return f"an onnxruntime build with {self.name}"

    @property
    def load_hint(self) -> str:
        """Why a provider onnxruntime has may still fail to load, when prepare() found nothing missing."""
        return "its libraries missing or mismatched?"

    def checked_options(self, options: Mapping[str, str] | None) -> dict[str, str]:
        """The provider options a session gets: the user's, with those this tool reads checked."""
        return dict(options or {})

    def prepare(self, ort) -> str:
        """Ready the process for a session; '' or a sentence saying what is missing."""
        return ""

    def session_providers(self, options: Mapping[str, str]) -> list[Any]:
        return [(self.name, dict(options)), "CPUExecutionProvider"]  # the CPU runs what the provider cannot

    def configure_session(self, session_options) -> None:
        # onnxruntime's errors come back as exceptions, which are reported in one line; its log would
        # print each a second time (and warns of unused initializers, which is noise here).
        session_options.log_severity_level = 4

    def uses_tf32(self, options: Mapping[str, str]) -> bool:
        """Whether float32 results may be computed as TF32 (10 mantissa bits) under OPTIONS."""
        return False

    def without_tf32(self, options: Mapping[str, str]) -> dict[str, str]:
        """OPTIONS with TF32 turned off where the provider has an option for it."""
        return dict(options)

    def noise_opt_level(self, opt_level: str) -> str | None:
        """The graph optimization level the original runs at a second time to measure the noise floor."""
        return NOISE_OPT_LEVEL.get(opt_level)

    def io_device(self, options: Mapping[str, str]) -> tuple[str, int] | None:
        """(device type, id) where IO binding puts inputs and outputs; None: host memory."""
        return None

    def profiled_conv(self, model: ModelProto) -> Callable[[str], str | None]:
        """Map a node name in onnxruntime's profile to the MODEL's Conv it runs (None: not one).

        onnxruntime's fusions keep the Conv's name; NCHWc and other new nodes are named after
        the output they produce ('Relu_3_out_nchwc'), which may be an activation fused into it."""
        producers = {out: node for node in model.graph.node for out in node.output}
        convs = {node.name for node in model.graph.node if node.op_type == "Conv"}

        def find(name: str) -> str | None:
            if name in convs:
                return name
            for suffix in RENAMED_SUFFIXES:
                name = name.removesuffix(suffix)
            node = producers.get(name)
            while node is not None and node.op_type in FUSED_ACTIVATIONS:
                node = producers.get(node.input[0])
            return node.name if node is not None and node.op_type == "Conv" else None

        return find

    def device(self, options: Mapping[str, str]) -> str:
        """The device the provider runs on, as reports and the tuning cache name it."""
        return cpu_name()


class CpuProvider(Provider):
    def __init__(self):
        super().__init__("CPUExecutionProvider", "cpu")

    def session_providers(self, options: Mapping[str, str]) -> list[Any]:
        return [(self.name, dict(options))]


class NvidiaProvider(Provider):
    """A provider on an NVIDIA GPU: CUDA's libraries, the device_id option, IO binding on that GPU."""

    on_gpu = True

    @property
    def install_hint(self) -> str:
        return "onnxruntime-gpu"

    @property
    def load_hint(self) -> str:
        return "CUDA / cuDNN libraries mismatched? (-v shows which were loaded)"

    def checked_options(self, options: Mapping[str, str] | None) -> dict[str, str]:
        checked = dict(options or {})
        device_id = checked.get("device_id", "0")
        if not device_id.isdigit():
            raise DiagwiseError(f"provider option device_id={device_id}: expected a GPU index (0, 1, ...)")
        return checked

    def prepare(self, ort) -> str:
        return prepare_gpu_provider(ort)

    def configure_session(self, session_options) -> None:
        # Errors stay in onnxruntime's log: why the provider failed to load (a driver too old, say) is only there.
        session_options.log_severity_level = 3

    def io_device(self, options: Mapping[str, str]) -> tuple[str, int] | None:
        return "cuda", int(options.get("device_id", "0"))

    def device(self, options: Mapping[str, str]) -> str:
        return nvidia_gpu_name()


class CudaProvider(NvidiaProvider):
    """cuDNN and cuBLAS kernels; float32 runs as TF32 unless use_tf32=0."""

    def __init__(self):
        super().__init__("CUDAExecutionProvider", "cuda")

    def checked_options(self, options: Mapping[str, str] | None) -> dict[str, str]:
        checked = super().checked_options(options)
        if checked.get("use_tf32", "1") not in FLAG_VALUES:  # the TF32 rule reads it as onnxruntime does
            raise DiagwiseError(f"provider option use_tf32={checked['use_tf32']}: expected 0 or 1")
        return checked

    def uses_tf32(self, options: Mapping[str, str]) -> bool:
        return FLAG_VALUES[options.get("use_tf32", "1")]  # onnxruntime's default is on

    def without_tf32(self, options: Mapping[str, str]) -> dict[str, str]:
        return {**options, "use_tf32": "0"}


class TensorrtProvider(NvidiaProvider):
    """TensorRT engines.  TensorRT builds float32 layers with TF32 allowed by default and
    onnxruntime's TensorRT provider has no option to clear it, so float32 is judged as TF32 always."""

    def __init__(self):
        super().__init__("TensorrtExecutionProvider", "tensorrt", "trt")

    def uses_tf32(self, options: Mapping[str, str]) -> bool:
        return True


def cpuinfo(field: str) -> str | None:
    """The first value of FIELD in Linux's /proc/cpuinfo ('model name', 'flags'), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def nvidia_gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "GPU (name unknown: nvidia-smi not found)"


_BY_NAME: dict[str, Provider] = {}
_BY_ALIAS: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    """Make PROVIDER what its name and aliases select (replacing an earlier one of the same names)."""
    _BY_NAME[provider.name] = provider
    _BY_ALIAS.update({alias.lower(): provider for alias in provider.aliases})
    return provider


def find_provider(name: str) -> Provider:
    """The family a provider name selects: an alias in any case ('cuda'), or a full name as
    onnxruntime spells it; an unknown name is a DiagwiseError listing the aliases."""
    if name.lower() in _BY_ALIAS:
        return _BY_ALIAS[name.lower()]
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name in import_ort().get_all_providers():
        return Provider(name)
    raise DiagwiseError(f"unknown provider '{name}'; use one of {', '.join(sorted(_BY_ALIAS))} or a full name "
                        "such as CUDAExecutionProvider")


register(CpuProvider())
register(CudaProvider())
register(TensorrtProvider())
register(Provider("ROCMExecutionProvider", "rocm"))
register(Provider("MIGraphXExecutionProvider", "migraphx"))
register(Provider("DmlExecutionProvider", "dml", "directml"))
register(Provider("OpenVINOExecutionProvider", "openvino"))
register(Provider("CoreMLExecutionProvider", "coreml"))
register(Provider("DnnlExecutionProvider", "dnnl"))
register(Provider("XnnpackExecutionProvider", "xnnpack"))
register(Provider("WebGpuExecutionProvider", "webgpu"))
