"""Time models side by side in one process: same provider, same inputs, interleaved rounds.

Each round runs every model once, in a random order, so drift (clocks, thermals,
other load) and after-effects hit all models alike.  Sessions do not spin their
thread pools between runs, so one model's idle workers cannot steal cores from
the next.  Ratios are of medians.  On a GPU, IO binding keeps inputs and outputs
on the device so host copies are not timed.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from .errors import DiagwiseError
from .model_io import as_model
from .dims import make_inputs, with_input_shapes
from .providers import cpu_name, import_ort
from .runtime import InputOptions, RuntimeConfig, create_session, input_specs, run_session


@dataclass
class LatencyStats:
    """Latency of one model in milliseconds."""

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    std_ms: float
    runs: int
    throughput: float  # samples per second at the median
    ratio: float  # median / the first model's median (< 1 is faster)
    speedup: float  # the first model's median / median (> 1 is faster)
    speedup_ci95: tuple[float, float] | None = None  # bootstrap interval of the speedup (not for the first)
    max_abs_diff: float | None = None  # largest output difference from the first model (compare=True)
    max_ref_abs: float | None = None  # largest |value| of the first model's outputs, the scale of that difference


@dataclass
class NodeTime:
    name: str  # as onnxruntime runs it, after its fusions
    op_type: str
    mean_us: float  # mean kernel time per run
    group: int | None = None
    source: str | None = None  # the model's own Conv node this kernel runs, when traceable


@dataclass
class Profile:
    """Per-node kernel times from onnxruntime's profiler, for one model."""

    model: str
    runs: int
    by_op_type_us: dict[str, float]
    nodes: list[NodeTime]


@dataclass
class BenchReport:
    models: list[LatencyStats]
    batch: int
    environment: dict[str, Any]
    profiles: list[Profile] = field(default_factory=list)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "batch": self.batch,
                "models": [asdict(m) for m in self.models],
                "profiles": [asdict(p) for p in self.profiles],
                "samples_ms": self.samples_ms}

    def depthwise_nodes(self) -> list[dict[str, Any]]:
        """The first model's grouped Conv kernels, each with its counterpart in every profiled model.

        onnxruntime renames nodes differently per model (NCHWc for one, FusedConv for the
        other), so kernels are paired by the model's own Conv node they run."""
        if not self.profiles:
            return []
        rows = []
        for node in self.profiles[0].nodes:
            if not node.group or node.group <= 1:
                continue
            key = node.source or node.name
            matches = [next((n for n in p.nodes if (n.source or n.name) == key), None) for p in self.profiles]
            rows.append({"node": node.name, "source": node.source, "group": node.group,
                         "times_us": [m.mean_us if m else None for m in matches],
                         "groups": [m.group if m else None for m in matches]})
        return rows


def device_name(config: RuntimeConfig) -> str:
    """The device CONFIG's provider runs on, as reports name it."""
    return config.family.device(config.checked_options)


def environment(config: RuntimeConfig, model: ModelProto, batch: int) -> dict[str, Any]:
    ort = import_ort()
    specs = input_specs(model)
    return {
        "onnxruntime": ort.__version__,
        **config.to_dict(),
        "device": device_name(config),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "batch": batch,
        "input_dtypes": {s.name: str(s.dtype) for s in specs},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _Runner:
    """One model's session and a zero-argument callable that runs it once."""

    def __init__(self, model, config: RuntimeConfig, feeds: dict[str, np.ndarray], iobinding: bool,
                 profile_prefix: str | None = None, optimized_path: str | None = None):
        ort = import_ort()
        self.binding = None
        self.session = create_session(model, config, profile_prefix, optimized_path)
        names = [i.name for i in self.session.get_inputs()]
        feeds = {k: v for k, v in feeds.items() if k in names}
        self.feeds = feeds
        if not iobinding:
            self.run = lambda: self.session.run(None, feeds)
            return
        device, device_id = config.family.io_device(config.checked_options) or ("cpu", 0)
        binding = self.session.io_binding()
        self._values = []  # keep device buffers alive
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, device, device_id)
            self._values.append(value)
            binding.bind_ortvalue_input(name, value)
        for output in self.session.get_outputs():
            binding.bind_output(output.name, device, device_id)
        self.run = lambda: self.session.run_with_iobinding(binding)
        self.binding = binding

    def first_run(self, name: str) -> None:
        """One untimed run that turns onnxruntime's refusal of the inputs into a one-line error."""
        run_session(self.session, self.feeds, f"'{name}'")

    def outputs(self) -> list[np.ndarray]:
        """The outputs of one more run, on the host."""
        if self.binding is None:
            return self.run()
        self.run()
        return self.binding.copy_outputs_to_cpu()


def _stats(name: str, samples: list[float], batch: int, reference: list[float]) -> LatencyStats:
    arr = np.array(samples) * 1000.0
    ref_arr = np.array(reference) * 1000.0
    median, ref = float(np.median(arr)), float(np.median(ref_arr))
    interval = None if samples is reference else speedup_interval(ref_arr, arr)
    return LatencyStats(name, median, float(np.percentile(arr, 10)), float(np.percentile(arr, 90)),
                        float(arr.mean()), float(arr.min()), float(arr.std()), len(arr),
                        batch / (median / 1000.0), median / ref, ref / median, interval)


def speedup_interval(reference: np.ndarray, candidate: np.ndarray, resamples: int = 400,
                     seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(reference) / median(candidate): how far apart
    identical models could measure here.  A speedup whose interval holds 1 is noise."""
    rng = np.random.default_rng(seed)
    ref = np.median(rng.choice(reference, (resamples, len(reference))), axis=1)
    cand = np.median(rng.choice(candidate, (resamples, len(candidate))), axis=1)
    low, high = np.percentile(ref / cand, [2.5, 97.5])
    return float(low), float(high)


def benchmark(
    models: list[ModelProto | str | os.PathLike],
    config: RuntimeConfig | None = None,
    inputs: InputOptions | None = None,
    warmup: int = 10,
    iterations: int | None = None,
    seconds: float | None = None,
    iobinding: bool | None = None,
    profile: bool = False,
    profile_runs: int = 20,
    names: list[str] | None = None,
    seed: int = 0,
    configs: list[RuntimeConfig] | None = None,
    compare: bool = False,
) -> BenchReport:
    """Time MODELS side by side; ratios are relative to the first.

    iterations (rounds) or seconds (total timing budget) bound the run; default 50 rounds.
    iobinding defaults to on where the provider keeps tensors on a device (a GPU).  configs gives
    each model its own provider options (e.g. the same model under two layouts); compare records
    each model's largest output difference from the first model's, from the sessions just timed."""
    if not models:
        raise DiagwiseError("bench needs at least one model")
    config = config or (configs[0] if configs else RuntimeConfig())
    configs = configs or [config] * len(models)
    if len(configs) != len(models) or len({c.provider_full for c in configs}) != 1:
        raise DiagwiseError("configs needs one RuntimeConfig per model, all on the same provider")
    inputs = inputs or InputOptions()
    if warmup < 0:
        raise DiagwiseError(f"warmup must be >= 0; got {warmup}", "warmup")
    if iterations is not None and seconds is not None:
        raise DiagwiseError("give iterations or seconds, not both", "iterations", "seconds")
    if iterations is not None and iterations < 1:
        raise DiagwiseError(f"iterations must be >= 1; got {iterations}", "iterations")
    if seconds is not None and seconds <= 0:
        raise DiagwiseError(f"seconds must be > 0; got {seconds}", "seconds")
    if iobinding is None:
        iobinding = config.family.io_device(config.checked_options) is not None
    names = names or [str(m) if not isinstance(m, ModelProto) else f"model {i}" for i, m in enumerate(models)]
    protos = [as_model(m) for m in models]
    _check_same_inputs(protos, names)
    inputs, _ = with_input_shapes(protos[0], inputs, configs[0])
    feeds = make_inputs(protos[0], inputs, seed=seed)
    batch = _batch_of(feeds)
    runners = [_Runner(m, c, feeds, iobinding) for m, c in zip(models, configs)]
    for runner, name in zip(runners, names):
        runner.first_run(name)

    for runner in runners:
        for _ in range(warmup):
            runner.run()
    samples: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + seconds if seconds is not None else None
    rounds = iterations if iterations is not None else (None if seconds is not None else 50)
    done = 0
    # A fresh random order each round: with a fixed rotation each model would always
    # follow the same neighbour and inherit its after-effects (caches, clocks).
    shuffle = np.random.default_rng(seed).permutation
    while (rounds is None or done < rounds) and (deadline is None or time.perf_counter() < deadline):
        for index in shuffle(len(runners)):
            start = time.perf_counter()
            runners[index].run()
            samples[index].append(time.perf_counter() - start)
        done += 1

    stats = [_stats(n, s, batch, samples[0]) for n, s in zip(names, samples)]
    report = BenchReport(stats, batch, environment(config, protos[0], batch),
                         samples_ms={n: [x * 1000.0 for x in s] for n, s in zip(names, samples)})
    report.environment.update({"warmup": warmup, "rounds": done, "iobinding": iobinding})
    if len({repr(c.to_dict()) for c in configs}) > 1:
        report.environment["model_configs"] = {n: c.to_dict() for n, c in zip(names, configs)}
    if compare:
        _compare_outputs(runners, stats)
    if profile:
        report.profiles = [_profile(m, p, n, config, feeds, iobinding, profile_runs)
                           for m, p, n in zip(models, protos, names)]
    return report


def _compare_outputs(runners: list[_Runner], stats: list[LatencyStats]) -> None:
    reference = [np.asarray(o, dtype=np.float64) for o in runners[0].outputs()]
    scale = max((float(np.abs(r).max()) for r in reference if r.size), default=0.0)
    for runner, stat in zip(runners, stats):
        outputs = [np.asarray(o, dtype=np.float64) for o in runner.outputs()]
        if [o.shape for o in outputs] != [r.shape for r in reference]:
            raise DiagwiseError(f"'{stat.name}' has outputs of other shapes than the first model's")
        diffs = [float(np.abs(o - r).max()) for o, r in zip(outputs, reference) if r.size]
        stat.max_abs_diff, stat.max_ref_abs = max(diffs, default=0.0), scale


def _check_same_inputs(protos: list[ModelProto], names: list[str]) -> None:
    def signature(proto: ModelProto) -> dict:
        return {s.name: (str(s.dtype), [d if isinstance(d, int) else "?" for d in s.dims])
                for s in input_specs(proto)}

    first = signature(protos[0])
    for proto, name in zip(protos[1:], names[1:]):
        other = signature(proto)
        if other != first:
            raise DiagwiseError(f"'{name}' has inputs {other}, unlike the first model's {first}; "
                                "bench compares models with the same inputs")


def _batch_of(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _profile(model, proto: ModelProto, name: str, config: RuntimeConfig, feeds, iobinding: bool,
             runs: int) -> Profile:
    """Run with onnxruntime's profiler on and average each node's kernel time.

    Node names are those of the graph onnxruntime runs after its own fusions (e.g.
    Conv+Relu, NCHWc layouts); that graph is saved to read each Conv's group."""
    with tempfile.TemporaryDirectory(prefix="onnx-diagwise-profile-") as tmp:
        optimized = str(Path(tmp) / "optimized.onnx")
        runner = _Runner(model, config, feeds, iobinding, str(Path(tmp) / "profile"), optimized)
        for _ in range(runs):
            runner.run()
        events = json.loads(Path(runner.session.end_profiling()).read_text())
        groups = _conv_groups(optimized)
    times: dict[str, list[float]] = defaultdict(list)
    op_types: dict[str, str] = {}
    for event in events:
        label = event.get("name", "")
        if event.get("cat") != "Node" or not label.endswith("_kernel_time"):
            continue
        node = label[: -len("_kernel_time")]
        times[node].append(float(event.get("dur", 0)))
        op_types[node] = event.get("args", {}).get("op_name", "?")
    source = config.family.profiled_conv(proto)
    # The model's own group: onnxruntime's NCHWc layout pads channels (a 72-channel layer runs as group 80).
    own_groups = {node.name: next((a.i for a in node.attribute if a.name == "group"), 1)
                  for node in proto.graph.node if node.op_type == "Conv"}
    nodes = [NodeTime(n, op_types[n], float(np.mean(t)), own_groups.get(source(n), groups.get(n)), source(n))
             for n, t in times.items()]
    nodes.sort(key=lambda n: -n.mean_us)
    by_op: dict[str, float] = defaultdict(float)
    for n in nodes:
        by_op[n.op_type] += n.mean_us
    return Profile(name, runs, dict(sorted(by_op.items(), key=lambda kv: -kv[1])), nodes)


def _conv_groups(optimized_path: str) -> dict[str, int]:
    """group of every Conv-like node (Conv, FusedConv, NCHWc Conv) in onnxruntime's optimized graph."""
    import onnx

    if not Path(optimized_path).exists():  # some providers compile the graph and save nothing
        return {}
    graph = onnx.load(optimized_path, load_external_data=False).graph
    return {node.name: next((a.i for a in node.attribute if a.name == "group"), 1)
            for node in graph.node if "Conv" in node.op_type}

