"""onnxruntime sessions for a named provider, and the inputs to feed them.

onnxruntime is an optional dependency (onnxruntime or onnxruntime-gpu), so it is
imported only when a session is needed.  What differs between providers comes from
the provider's family (providers.py).  A provider that fails to load makes
onnxruntime fall back to the CPU silently; this module turns that into an error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from onnx import ModelProto, helper

from .errors import DiagwiseError, first_line
from .model_io import PROTOBUF_LIMIT, save_model
from .providers import Provider, find_provider, import_ort
from .tensors import weight_bytes

OPT_LEVELS = ("disable", "basic", "extended", "all")


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
    def family(self) -> Provider:
        """The provider's rules (providers.py); an unknown provider name is a DiagwiseError."""
        return find_provider(self.provider)

    @property
    def provider_full(self) -> str:
        return self.family.name

    @property
    def is_gpu(self) -> bool:
        return self.family.on_gpu

    @property
    def checked_options(self) -> dict[str, str]:
        """The provider options a session gets (checked by the provider's family)."""
        return self.family.checked_options(self.provider_options)

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider_full, "provider_options": self.checked_options,
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
    if not config.spin:
        # Spinning workers of one session steal cores from the next one timed after it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    config.family.configure_session(options)
    return options


def create_session(model: ModelProto | str | os.PathLike, config: RuntimeConfig,
                   profile_prefix: str | None = None, optimized_path: str | None = None):
    """An InferenceSession on exactly the provider asked for, or a DiagwiseError saying why not.

    profile_prefix turns on onnxruntime's profiler; optimized_path saves the graph it runs."""
    ort = import_ort()
    family = config.family
    provider_options = config.checked_options
    available = ort.get_available_providers()
    if family.name not in available:
        raise DiagwiseError(
            f"provider {family.name} is not available in this onnxruntime ({ort.__version__}; available: "
            f"{', '.join(available)}); install {family.install_hint}")
    library_problem = family.prepare(ort)
    providers = family.session_providers(provider_options)
    options = _session_options(ort, config, profile_prefix, optimized_path)
    with _model_source(model) as source:
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DiagwiseError(f"onnxruntime could not create a {family.name} session: {first_line(exc)}") from None
    got = session.get_providers()
    if not got or got[0] != family.name:
        raise DiagwiseError(
            f"asked for {family.name} but onnxruntime ran on {got[0] if got else 'nothing'}: the provider failed "
            f"to load: {library_problem or family.load_hint}")
    return session


def run_session(session, feeds: dict, what: str):
    """session.run, with onnxruntime's refusal of these inputs (wrong shape for the weights, say)
    turned into one line naming the inputs: a user's mistake, not a bug."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        shapes = ", ".join(f"'{k}' {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', []))}" for k, v in feeds.items())
        expected = ", ".join(f"'{i.name}' {i.type}{i.shape}" for i in session.get_inputs())
        raise DiagwiseError(f"onnxruntime could not run {what} with inputs {shapes} (it expects {expected}): "
                            f"{first_line(exc)}") from None


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
            # a negative size is free, as onnxruntime reads it; 0 is a size (an empty axis)
            fixed = d.HasField("dim_value") and d.dim_value >= 0
            dims.append(d.dim_value if fixed else (d.dim_param or None))
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
