"""onnxruntime sessions for a named provider, and the inputs to feed them.

onnxruntime is an optional dependency (onnxruntime or onnxruntime-gpu), so it is
imported only when a session is needed.  A provider that fails to load makes
onnxruntime fall back to the CPU silently; this module turns that into an error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from onnx import ModelProto, TensorProto, helper

from .cuda_libs import prepare_gpu_provider
from .errors import DiagwiseError, RuntimeMissing
from .model_io import PROTOBUF_LIMIT, save_model
from .tensors import weight_bytes

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
OPT_LEVELS = ("disable", "basic", "extended", "all")


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(
            "onnxruntime is not installed: pip install 'onnx-diagwise[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def provider_name(name: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full names pass through; unknown names are an error."""
    ort = import_ort()
    full = PROVIDER_ALIASES.get(name.lower(), name)
    known = set(ort.get_all_providers()) | set(PROVIDER_ALIASES.values())
    if full not in known:
        raise DiagwiseError(
            f"unknown provider '{name}'; use one of {', '.join(sorted(PROVIDER_ALIASES))} or a full name "
            f"such as CUDAExecutionProvider")
    return full


def parse_key_values(pairs: list[str], flag: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DiagwiseError(f"{flag} expects KEY=VALUE; got '{pair}'")
        options[key.strip()] = value.strip()
    return options


@dataclass
class RuntimeConfig:
    """How to run a model: provider, its options, and session options."""

    provider: str = "cpu"
    provider_options: Mapping[str, str] | None = None
    threads: int | None = None  # intra-op threads; None lets onnxruntime choose
    opt_level: str = "all"
    spin: bool = False  # let idle intra-op threads spin (onnxruntime's default; unfair side by side)

    @property
    def provider_full(self) -> str:
        return provider_name(self.provider)

    @property
    def is_gpu(self) -> bool:
        return self.provider_full in GPU_PROVIDERS

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider_full, "provider_options": dict(self.provider_options or {}),
                "threads": self.threads, "graph_optimization_level": self.opt_level, "spin": self.spin}


def _session_options(ort, config: RuntimeConfig, profile_prefix: str | None, optimized_path: str | None):
    if config.opt_level not in OPT_LEVELS:
        raise DiagwiseError(f"opt_level must be one of {', '.join(OPT_LEVELS)}; got '{config.opt_level}'", "opt_level")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.opt_level]
    if config.threads is not None:
        if config.threads < 1:
            raise DiagwiseError(f"threads must be >= 1; got {config.threads}", "threads")
        options.intra_op_num_threads = config.threads
    # onnxruntime's errors come back as exceptions, which are reported in one line; its log would
    # print each a second time (and warns of unused initializers, which is noise here).  On a GPU
    # provider its errors stay on: why the provider failed to load (a driver too old, say) is only there.
    options.log_severity_level = 3 if config.is_gpu else 4
    if not config.spin:
        # Spinning workers of one session steal cores from the next one timed after it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    return options


def create_session(model: ModelProto | str | os.PathLike, config: RuntimeConfig,
                   profile_prefix: str | None = None, optimized_path: str | None = None):
    """An InferenceSession on exactly the provider asked for, or a DiagwiseError saying why not.

    profile_prefix turns on onnxruntime's profiler; optimized_path saves the graph it runs."""
    ort = import_ort()
    provider = config.provider_full
    available = ort.get_available_providers()
    if provider not in available:
        package = "onnxruntime-gpu" if provider in GPU_PROVIDERS else f"an onnxruntime build with {provider}"
        raise DiagwiseError(
            f"provider {provider} is not available in this onnxruntime ({ort.__version__}; available: "
            f"{', '.join(available)}); install {package}")
    library_problem = prepare_gpu_provider(ort) if provider in GPU_PROVIDERS else ""
    providers: list[Any] = [(provider, dict(config.provider_options or {}))]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # nodes the provider cannot run
    options = _session_options(ort, config, profile_prefix, optimized_path)
    with _model_source(model) as source:
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DiagwiseError(f"onnxruntime could not create a {provider} session: {first}") from None
    got = session.get_providers()
    if not got or got[0] != provider:
        raise DiagwiseError(
            f"asked for {provider} but onnxruntime ran on {got[0] if got else 'nothing'}: the provider failed "
            f"to load: {library_problem or 'CUDA / cuDNN libraries mismatched? (-v shows which were loaded)'}")
    return session


def run_session(session, feeds: dict, what: str):
    """session.run, with onnxruntime's refusal of these inputs (wrong shape for the weights, say)
    turned into one line naming the inputs: a user's mistake, not a bug."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        shapes = ", ".join(f"'{k}' {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', []))}" for k, v in feeds.items())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        expected = ", ".join(f"'{i.name}' {i.type}{i.shape}" for i in session.get_inputs())
        raise DiagwiseError(f"onnxruntime could not run {what} with inputs {shapes} (it expects {expected}): "
                            f"{first}") from None


class _model_source:
    """Bytes for ORT, or a temporary file with external data for a model past 2 GiB."""

    def __init__(self, model):
        self.model = model
        self.tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self):
        if not isinstance(self.model, ModelProto):
            return str(self.model)
        if weight_bytes(self.model) < PROTOBUF_LIMIT - 64 * 2**20:
            return self.model.SerializeToString()
        self.tmp = tempfile.TemporaryDirectory(prefix="onnx-diagwise-")
        path = Path(self.tmp.name) / "model.onnx"
        save_model(self.model, path, external_data=True)
        return str(path)

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()


# ---------------------------------------------------------------- inputs


@dataclass
class InputSpec:
    name: str
    elem_type: int
    dims: list[int | str | None]  # int, symbolic name, or None (unknown)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def input_specs(model: ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs are optional: skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise DiagwiseError(f"input '{value.name}' is not a tensor; only tensor inputs can be synthesized")
        t = value.type.tensor_type
        dims: list[int | str | None] = []
        for d in t.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(InputSpec(value.name, t.elem_type, dims))
    return specs


@dataclass
class InputOptions:
    """How to fill symbolic dims and where real input data comes from."""

    batch: int = 1
    dims: Mapping[str, int] | None = None  # --dim name=value
    shapes: Mapping[str, list[int]] | None = None  # --overwrite-input-shape name:1,3,224,224
    data: Mapping[str, np.ndarray] | None = None  # real inputs: --input-data / --inputs


def parse_dims(pairs: list[str]) -> dict[str, int]:
    dims = {}
    for key, value in parse_key_values(pairs, "--dim").items():
        if not value.isdigit() or int(value) < 1:
            raise DiagwiseError(f"--dim {key}={value}: the value must be a positive integer")
        dims[key] = int(value)
    return dims


def parse_input_shapes(values: list[str]) -> dict[str, list[int]]:
    """onnxsim's syntax: name:1,3,224,224 (a single unnamed shape applies to a single input)."""
    shapes = {}
    for value in values:
        name, sep, spec = value.rpartition(":")
        if not sep:
            name, spec = "", value
        try:
            dims = [int(d) for d in spec.split(",")]
        except ValueError:
            raise DiagwiseError(f"--overwrite-input-shape '{value}': expected NAME:D1,D2,... with integers") from None
        if any(d < 1 for d in dims):
            raise DiagwiseError(f"--overwrite-input-shape '{value}': dims must be positive")
        shapes[name] = dims
    return shapes


def load_input_data(pairs: list[str], npz: str | None) -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    if npz:
        try:
            with np.load(npz, allow_pickle=False) as archive:
                data.update({name: archive[name] for name in archive.files})
        except (OSError, ValueError) as exc:
            raise DiagwiseError(f"--inputs '{npz}' is not a readable .npz file: {exc}") from None
    for pair in pairs:
        name, sep, path = pair.partition(":")
        if not sep or not name or not path:
            raise DiagwiseError(f"--input-data expects NAME:FILE.npy; got '{pair}'")
        try:
            data[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DiagwiseError(f"--input-data {name}: cannot read '{path}' as .npy: {exc}") from None
    return data


def random_tensor(rng: np.random.Generator, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    """Floats uniform in [-1, 1); integers in [0, 8) so they are valid indices and sizes; random bools."""
    # np.asarray: a 0-d draw comes back as a numpy scalar, which onnxruntime refuses
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        return np.asarray(rng.integers(0, 8, size=shape), dtype=dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return np.asarray(rng.uniform(-1.0, 1.0, size=shape), dtype=np.float32).astype(dtype)
    raise DiagwiseError(f"cannot synthesize inputs of dtype {dtype}; pass real data with --input-data")


def elem_type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()
