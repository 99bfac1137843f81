"""Choose G per layer by measurement on the target provider, and never return a slower model.

1. Each depthwise node's real input shape comes from shape inference with the
   user's input dims.  Nodes with the same layer signature share one measurement.
2. Per signature, a one-node model of the original layer and of each candidate G
   (powers of two up to 64 that divide C, and C itself) is timed, interleaved.
3. A candidate replaces the original only if it beats it by min_speedup.
4. The whole model is then timed against the original; while it is not faster,
   the rewrite with the smallest measured benefit is dropped.  With nothing left,
   the original is kept.

Timing goes through a Timer, so tests can inject a deterministic one; layer
timings are cached on disk by provider, options, device, onnxruntime version and
signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .bench import benchmark, device_name
from .detect import DepthwiseConv, detect
from .errors import DiagwiseError
from .plan import plan
from .rewriter import apply_plan
from .dims import resolve_input_shapes
from .runtime import InputOptions, RuntimeConfig, import_ort
from .shapes import infer_shapes

CANDIDATES = (2, 4, 8, 16, 32, 64)
# Skip a candidate whose block-diagonal weight would pass this size.
MAX_CANDIDATE_WEIGHT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class LayerSignature:
    """Everything that decides how fast one depthwise layer runs."""

    channels: int
    multiplier: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None
    auto_pad: str
    input_shape: tuple[int, ...]
    dtype: str
    has_bias: bool

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def label(self) -> str:
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.strides))
        return f"C={self.channels} k={k} s={s} in={list(self.input_shape)} {self.dtype}"

    def candidates(self) -> list[int]:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(_ELEM[self.dtype])).itemsize
        per_g = self.channels * self.multiplier * math.prod(self.kernel) * itemsize
        sizes = [g for g in CANDIDATES if g < self.channels and self.channels % g == 0] + [self.channels]
        return [g for g in sizes if g * per_g <= MAX_CANDIDATE_WEIGHT_BYTES]


_ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
         "float64": TensorProto.DOUBLE}


class Timer(Protocol):
    """How tuning measures.  Times are seconds per run (medians)."""

    def layer(self, signature: LayerSignature, models: dict[int, ModelProto]) -> dict[int, float]:
        """Time one-node models keyed by G (1 = the original depthwise layer)."""

    def models(self, models: list[ModelProto]) -> list[float]:
        """Time whole models side by side."""

    def context(self) -> dict[str, Any]:
        """What the timings depend on besides the layer: provider, options, device, versions."""


class OrtTimer:
    """Times with onnxruntime through bench.benchmark: interleaved rounds after warm-up.

    When the fastest candidate and the reference (the first model) are closer than the
    noise of their medians, another batch of rounds is run, up to max_batches."""

    def __init__(self, config: RuntimeConfig, inputs: InputOptions, warmup: int = 5, iterations: int = 25,
                 model_iterations: int = 30, max_batches: int = 3):
        self.config, self.inputs = config, inputs
        self.warmup, self.iterations, self.model_iterations = warmup, iterations, model_iterations
        self.max_batches = max_batches

    def layer(self, signature: LayerSignature, models: dict[int, ModelProto]) -> dict[int, float]:
        order = sorted(models)  # G=1, the original layer, first
        return dict(zip(order, self._medians([models[g] for g in order], InputOptions(), self.iterations)))

    def models(self, models: list[ModelProto]) -> list[float]:
        return self._medians(models, self.inputs, self.model_iterations)

    def _medians(self, models: list, inputs: InputOptions, iterations: int) -> list[float]:
        """Median seconds per model, with more rounds while the comparison is within noise."""
        names = [f"model {i}" for i in range(len(models))]
        samples: list[list[float]] = [[] for _ in models]
        for batch in range(self.max_batches):
            report = benchmark(models, self.config, inputs, warmup=self.warmup, iterations=iterations,
                               names=names, seed=batch)
            for collected, name in zip(samples, names):
                collected.extend(report.samples_ms[name])
            if separated(samples):
                break
        return [float(np.median(s)) / 1000 for s in samples]

    def context(self) -> dict[str, Any]:
        return {"provider": self.config.provider_full,
                "provider_options": dict(sorted((self.config.provider_options or {}).items())),
                "threads": self.config.threads, "opt_level": self.config.opt_level,
                "device": device_name(self.config), "onnxruntime": import_ort().__version__}


def separated(samples: list[list[float]]) -> bool:
    """Is the fastest of samples[1:] clearly apart from samples[0]?  Apart means the medians
    differ by more than twice their combined standard error (estimated from the IQRs), and
    by at least 1%."""
    if len(samples) < 2:
        return True

    def median_and_error(values: list[float]) -> tuple[float, float]:
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        # IQR / 1.349 estimates the spread; the median's standard error is about 1.25 * spread / sqrt(n)
        return float(median), 1.25 * float(q3 - q1) / 1.349 / max(1, len(values)) ** 0.5

    reference, reference_error = median_and_error(samples[0])
    best, best_error = min((median_and_error(s) for s in samples[1:]), key=lambda pair: pair[0])
    return abs(reference - best) > max(0.01 * reference, 2 * (reference_error ** 2 + best_error ** 2) ** 0.5)


# ---------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    if os.environ.get("ONNX_DIAGWISE_CACHE_DIR"):
        return Path(os.environ["ONNX_DIAGWISE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx-diagwise"


class TuneCache:
    """Layer timings on disk, one JSON file; None disables caching."""

    def __init__(self, directory: Path | None):
        self.path = Path(directory) / "tune-cache.json" if directory is not None else None
        self.entries: dict[str, dict[str, float]] = {}
        if self.path is not None and self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text()).get("entries", {})
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is only a cache: start again

    @staticmethod
    def key(context: dict[str, Any], signature: LayerSignature, sizes: list[int]) -> str:
        text = json.dumps({"context": context, "layer": signature.key(), "sizes": sizes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict[int, float] | None:
        entry = self.entries.get(key)
        return {int(g): t for g, t in entry.items()} if entry else None

    def put(self, key: str, times: dict[int, float]) -> None:
        self.entries[key] = {str(g): t for g, t in times.items()}

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tune-cache.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise DiagwiseError(f"cannot write the tuning cache '{self.path}': {exc.strerror or exc}") from None


def clear_cache(directory: Path | None = None) -> Path | None:
    """Delete the cache file; return its path if there was one."""
    path = (directory or default_cache_dir()) / "tune-cache.json"
    if path.exists():
        path.unlink()
        return path
    return None


# ---------------------------------------------------------------- results


@dataclass
class LayerTuning:
    """One depthwise node: what was measured and what was decided."""

    node: str
    graph: str
    channels: int
    kernel: list[int]
    input_shape: list[int] | None
    original_ms: float | None = None
    times_ms: dict[str, float] = field(default_factory=dict)  # by G
    best_group_size: int | None = None
    best_ms: float | None = None
    speedup: float | None = None  # original / best
    group_size: int = 1  # the decision; 1 keeps the original
    decision: str = ""
    cached: bool = False


@dataclass
class TuneReport:
    layers: list[LayerTuning]
    context: dict[str, Any]
    min_speedup: float
    original_ms: float | None = None
    tuned_ms: float | None = None
    dropped: list[str] = field(default_factory=list)  # dropped by the end-to-end check, in order
    summary: str = ""
    elapsed_s: float = 0.0

    @property
    def choices(self) -> dict[str, int]:
        return {layer.node: layer.group_size for layer in self.layers if layer.group_size > 1}

    @property
    def reasons(self) -> dict[str, str]:
        return {layer.node: layer.decision for layer in self.layers}

    @property
    def end_to_end_speedup(self) -> float | None:
        if self.original_ms and self.tuned_ms:
            return self.original_ms / self.tuned_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"context": self.context, "min_speedup": self.min_speedup, "original_ms": self.original_ms,
                "tuned_ms": self.tuned_ms, "end_to_end_speedup": self.end_to_end_speedup,
                "dropped": self.dropped, "summary": self.summary, "elapsed_s": self.elapsed_s,
                "choices": self.choices, "layers": [asdict(layer) for layer in self.layers]}


# ---------------------------------------------------------------- tuning


def layer_model(conv: DepthwiseConv, signature: LayerSignature, opset: int) -> ModelProto:
    """The depthwise node alone, fed by a graph input of its real shape."""
    elem = _ELEM[signature.dtype]
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if signature.has_bias else []), ["y"], name="layer")
    node.attribute.extend(conv.node.attribute)
    weight = TensorProto()
    weight.CopyFrom(conv.weight.tensor)
    weight.name = "w"
    initializers = [weight]
    if signature.has_bias:
        zeros = np.zeros(signature.channels * signature.multiplier, helper.tensor_dtype_to_np_dtype(elem))
        initializers.append(numpy_helper.from_array(zeros, "b"))
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", elem, list(signature.input_shape))],
                              [helper.make_tensor_value_info("y", elem, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _variants(base: ModelProto, sizes: list[int]) -> dict[int, ModelProto]:
    """The one-node model as it is (G=1) and rewritten with each G."""
    variants = {1: base}
    for g in sizes:
        model = ModelProto()
        model.CopyFrom(base)
        apply_plan(model, plan(detect(model), 1, node_group_sizes={"layer": g}))
        variants[g] = model
    return variants


def _signature(conv: DepthwiseConv, shapes: dict) -> LayerSignature | None:
    shape = shapes.get(conv.node.input[0])
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return LayerSignature(conv.channels, conv.multiplier, tuple(conv.kernel), tuple(conv.strides),
                          tuple(conv.dilations), tuple(conv.pads) if conv.pads is not None else None,
                          conv.auto_pad, tuple(shape), conv.dtype,
                          len(conv.node.input) > 2 and bool(conv.node.input[2]))


def _opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def tune(
    model: ModelProto,
    timer: Timer,
    inputs: InputOptions | None = None,
    include: str | None = None,
    exclude: str | None = None,
    min_channels: int | None = None,
    min_speedup: float = 0.05,
    time_budget: float | None = None,
    cache: TuneCache | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    check_end_to_end: bool = True,
) -> TuneReport:
    """Decide G for every depthwise node of MODEL (not modified) by measurement."""
    if min_speedup < 0:
        raise DiagwiseError(f"min_speedup must be >= 0; got {min_speedup}")
    if time_budget is not None and time_budget <= 0:
        raise DiagwiseError(f"time_budget must be > 0 seconds; got {time_budget}")
    inputs = inputs or InputOptions()
    start = clock()
    cache = cache or TuneCache(None)
    context = timer.context()
    input_shapes = resolve_input_shapes(model, inputs).shapes
    input_shapes.update({k: list(v.shape) for k, v in (inputs.data or {}).items()})
    shapes = infer_shapes(model, input_shapes)

    planned = plan(detect(model), "full", include, exclude, min_channels)
    convs = [p.conv for p in planned if p.conv is not None]
    untuned = [c for c in convs if c.form != "float"]
    convs = [c for c in convs if c.form == "float"]
    layers: list[LayerTuning] = []
    measured: dict[LayerSignature, tuple[dict[int, float], bool]] = {}
    for index, conv in enumerate(convs):
        signature = _signature(conv, shapes)
        layer = LayerTuning(conv.name, conv.graph, conv.channels, conv.kernel,
                            list(signature.input_shape) if signature else None)
        layers.append(layer)
        if progress:
            progress(index, len(convs), conv.name)
        if signature is None:
            layer.decision = "kept original: input shape unknown (pass --dim / --overwrite-input-shape)"
            continue
        if signature not in measured:
            if time_budget is not None and clock() - start > time_budget:
                layer.decision = f"kept original: not tuned, --time-budget {time_budget:g}s spent"
                continue
            sizes = signature.candidates()
            key = TuneCache.key(context, signature, sizes)
            times = cache.get(key)
            cached = times is not None
            if times is None:
                base = layer_model(conv, signature, _opset(model))
                times = timer.layer(signature, _variants(base, sizes))
                cache.put(key, times)
            measured[signature] = (times, cached)
        times, layer.cached = measured[signature]
        _decide(layer, times, min_speedup)
    if progress:
        progress(len(convs), len(convs), "")
    cache.save()
    for conv in untuned:  # a one-node float Conv cannot stand in for these
        layers.append(LayerTuning(conv.name, conv.graph, conv.channels, conv.kernel, None,
                                  decision=f"kept original: auto tunes float Conv layers only, not {conv.form}"))

    report = TuneReport(layers, context, min_speedup)
    if check_end_to_end:
        _check_end_to_end(model, report, timer)
    else:
        report.summary = f"{len(report.choices)} of {len(layers)} depthwise node(s) rewritten (per-layer timings only)"
    report.elapsed_s = clock() - start
    return report


def _decide(layer: LayerTuning, times: dict[int, float], min_speedup: float) -> None:
    original = times[1]
    layer.original_ms = original * 1000
    layer.times_ms = {str(g): t * 1000 for g, t in sorted(times.items()) if g != 1}
    candidates = {g: t for g, t in times.items() if g != 1}
    if not candidates:
        layer.decision = "kept original: no candidate G fits (weights too large)"
        return
    best = min(candidates, key=candidates.get)
    layer.best_group_size, layer.best_ms = best, candidates[best] * 1000
    layer.speedup = original / candidates[best]
    if layer.speedup >= 1 + min_speedup:
        layer.group_size = best
        layer.decision = f"G={best}: {layer.speedup:.2f}x faster than depthwise"
    elif layer.speedup >= 1:
        layer.decision = (f"kept original: best G={best} only {layer.speedup:.2f}x faster "
                          f"(margin {1 + min_speedup:.2f}x)")
    else:
        layer.decision = f"kept original: every G slower (best G={best}: {layer.speedup:.2f}x)"


def apply_choices(model: ModelProto, choices: dict[str, int]) -> ModelProto:
    """A copy of MODEL with exactly the nodes in CHOICES rewritten."""
    copy = ModelProto()
    copy.CopyFrom(model)
    apply_plan(copy, plan(detect(copy), 1, node_group_sizes=choices))
    return copy


def _check_end_to_end(model: ModelProto, report: TuneReport, timer: Timer) -> None:
    """Keep only rewrites that make the whole model faster; drop the least useful first."""
    chosen = [layer for layer in report.layers if layer.group_size > 1]
    if not chosen:
        report.summary = "kept the original: no layer was faster rewritten"
        return
    # Least benefit first: what each node saves per run, as measured alone.
    chosen.sort(key=lambda layer: layer.original_ms - layer.best_ms)
    while chosen:
        choices = {layer.node: layer.group_size for layer in chosen}
        original_s, tuned_s = timer.models([model, apply_choices(model, choices)])
        report.original_ms, report.tuned_ms = original_s * 1000, tuned_s * 1000
        if tuned_s < original_s:
            report.summary = (f"{len(chosen)} of {len(report.layers)} depthwise node(s) rewritten; "
                              f"whole model {original_s / tuned_s:.2f}x faster")
            return
        dropped = chosen.pop(0)
        dropped.group_size = 1
        dropped.decision = (f"kept original: G={dropped.best_group_size} was faster alone "
                            f"({dropped.speedup:.2f}x) but the whole model was not faster with it")
        report.dropped.append(dropped.node)
    report.summary = ("kept the original: the rewritten model was not faster end to end "
                      f"(last measured {report.original_ms / report.tuned_ms:.2f}x)")
