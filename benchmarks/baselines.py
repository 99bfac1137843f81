"""What a user could run instead of the rewrite, timed in the same process, and the bound.

Shared by benchmarks/layers.py and benchmarks/networks.py:

* precisions: float16; float32 "strict" (TF32 off in onnxruntime and PyTorch) and float32
  "default" (TF32 as each runtime ships it: onnxruntime's use_tf32 unset, PyTorch's defaults);
* `ort_grid`: onnxruntime's configurations a user could pick for the original on CUDA,
  prefer_nhwc {0,1} x cudnn_conv_algo_search {EXHAUSTIVE, HEURISTIC} (x cudnn_conv1d_pad_to_nc1d
  {0,1} for models with 1-D convs), each its own session;
* `OrtVariant` / `TorchVariant`: one thing to time (a session with IO binding, or a PyTorch
  eager callable), with its outputs and the device memory it holds;
* `interleave`: every variant once per round, in a fresh random order, timed with
  perf_counter around a synchronized call (what a caller waits for);
* `Bound`: max(activation bytes / copy bandwidth, FLOPs / the CUDA-core peak of the dtype),
  with the copy bandwidth measured in the same process.

PyTorch is optional: without it the torch variants are left out with the reason.  On CPU the
same code runs at small sizes; the bound there uses the measured copy bandwidth and a *stated*
peak (`--cpu-peak-gflops`), and absolute times mean something only on a GPU.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from onnx_diagwise import RuntimeConfig
from onnx_diagwise.runtime import create_session, import_ort

PRECISIONS = ("float16", "float32-strict", "float32-default")
PRECISION_LABELS = {"float16": "float16", "float32-strict": "float32, TF32 off",
                    "float32-default": "float32, TF32 as shipped (onnxruntime use_tf32 default, PyTorch defaults)"}
# Largest output difference, relative to the reference's largest |value|, that counts as the same result.
TOLERANCE = {"float16": 2e-2, "float32-strict": 1e-4, "float32-default": 5e-3}

# CUDA-core (not tensor-core) peaks in TFLOP/s, (float32, float16), from the vendors' data sheets.
# Matched against the device name in this order; other GPUs: SMs x FP32 lanes x 2 x max SM clock.
CUDA_CORE_PEAK_TFLOPS = [
    ("H200", (66.9, 133.8)),  # GH100 SXM: 132 SMs x 128 lanes x 2 x 1.98 GHz; fp16 (non-tensor) 2x
    ("H100 PCIe", (51.2, 102.4)),
    ("H100", (66.9, 133.8)),
    ("A100", (19.5, 78.0)),
    ("L40S", (91.6, 91.6)),
    ("L4", (30.3, 30.3)),
    ("A10", (31.2, 31.2)),
]
FP32_LANES_PER_SM = {(8, 0): 64, (7, 0): 64}  # compute capability -> FP32 lanes; 128 elsewhere
# Stated per core, by the widest vector unit the CPU reports: 2 FMA units x fp32 lanes x 2 FLOP x 2 GHz.
CPU_PEAK_GFLOPS_PER_CORE = {"avx512f": (128.0, "AVX-512: 2 FMA x 16 fp32 lanes x 2 FLOP x 2 GHz"),
                            "avx2": (64.0, "AVX2: 2 FMA x 8 fp32 lanes x 2 FLOP x 2 GHz")}


def precision_dtype(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return "float16" if precision == "float16" else "float32"


# ---------------------------------------------------------------- onnxruntime configurations


def is_cuda(config: RuntimeConfig) -> bool:
    return config.provider_full == "CUDAExecutionProvider"


def with_precision(config: RuntimeConfig, precision: str) -> RuntimeConfig:
    """CONFIG with use_tf32 set for PRECISION on CUDA: '0' for strict float32, unset for default."""
    if not is_cuda(config):
        return config
    options = dict(config.provider_options or {})
    if precision == "float32-strict":
        options["use_tf32"] = "0"
    elif precision == "float32-default":
        options.pop("use_tf32", None)
    return RuntimeConfig(config.provider, options, config.threads, config.opt_level)


def ort_grid(config: RuntimeConfig, precision: str, one_d: bool = False,
             searches: tuple[str, ...] = ("EXHAUSTIVE", "HEURISTIC")) -> dict[str, RuntimeConfig]:
    """Label -> configuration: on CUDA every prefer_nhwc x cudnn_conv_algo_search (x pad_to_nc1d
    for 1-D convs) a user could pick; elsewhere the one configuration given ('default')."""
    config = with_precision(config, precision)
    if not is_cuda(config):
        return {"default": config}
    grid = {}
    for layout, nhwc in (("nchw", "0"), ("nhwc", "1")):
        for search in searches:
            for pad in (("0", "1") if one_d else (None,)):
                options = {**(config.provider_options or {}), "prefer_nhwc": nhwc, "cudnn_conv_algo_search": search}
                label = f"{layout}/{search.lower()[:4]}"
                if pad is not None:
                    options["cudnn_conv1d_pad_to_nc1d"] = pad
                    label += f"/nc1d{pad}"
                grid[label] = RuntimeConfig(config.provider, options, config.threads, config.opt_level)
    return grid


# ---------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryProbe:
    """Memory in use now, as one number: the GPU's used memory on CUDA (through PyTorch's
    cudaMemGetInfo when it has CUDA, else nvidia-smi), this process's resident memory on CPU."""

    def __init__(self, gpu: bool):
        self.gpu, self.kind, self._torch = gpu, None, None
        if not gpu:
            self.kind = "host resident memory (VmRSS)"
            return
        try:
            import torch

            if torch.cuda.is_available():
                self._torch, self.kind = torch, "GPU memory in use (cudaMemGetInfo)"
        except ImportError:
            pass
        if self._torch is None and shutil.which("nvidia-smi"):
            self.kind = "GPU memory in use (nvidia-smi)"

    def used(self) -> int | None:
        if not self.gpu:
            return _rss_bytes()
        if self._torch is not None:
            free, total = self._torch.cuda.mem_get_info()
            return int(total - free)
        if self.kind:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return int(float(out.stdout.split()[0]) * 2**20)
        return None


# ---------------------------------------------------------------- variants


def settle(run: Callable[[], Any], minimum: int, max_calls: int = 40, max_seconds: float = 8.0) -> int:
    """Warm-up: MINIMUM + 1 calls, then more until two calls in a row agree within 20% (first calls
    build kernels, plans and caches: PyTorch's CPU path needed a dozen here), at most MAX_CALLS or
    MAX_SECONDS.  Returns the number of calls made."""
    times, started = [], time.perf_counter()
    while len(times) < max_calls:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        if len(times) > minimum and len(times) >= 2 and abs(times[-1] - times[-2]) <= 0.2 * min(times[-2:]):
            break
        if time.perf_counter() - started > max_seconds and len(times) > minimum:
            break
    return len(times)


@dataclass
class Variant:
    """One thing to time: run() does one synchronized call; outputs() returns the last outputs on the host."""

    name: str
    kind: str  # "onnxruntime" or "pytorch"
    run: Callable[[], Any]
    outputs: Callable[[], list[np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)  # config, layout, memory, ...


def ort_variant(name: str, model, config: RuntimeConfig, feeds: dict[str, np.ndarray], memory: MemoryProbe,
                warmup: int = 1, **info) -> Variant:
    """A session of MODEL on CONFIG with IO binding on a GPU (inputs stay on the device); its memory is
    what the GPU (or process) holds more after the session was created and ran WARMUP + 1 times."""
    ort = import_ort()
    before = memory.used()
    session = create_session(model, config)
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    if config.is_gpu:
        binding = session.io_binding()
        values = [ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for a in feeds.values()]
        for key, value in zip(feeds, values):
            binding.bind_ortvalue_input(key, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")

        def run():
            session.run_with_iobinding(binding)

        def outputs():
            return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]
    else:
        last: list = []

        def run():
            last[:] = session.run(None, feeds)

        def outputs():
            return [np.asarray(o) for o in (last or session.run(None, feeds))]
    calls = settle(run, warmup)
    after = memory.used()
    held = None if before is None or after is None else max(0, after - before)
    variant = Variant(name, "onnxruntime", run, outputs,
                      {"provider_options": dict(config.provider_options or {}), "memory_bytes": held,
                       "warmup_calls": calls, **info})
    variant.info["_keep"] = (session, binding if config.is_gpu else None,
                             values if config.is_gpu else None)  # not serialized (leading underscore)
    return variant


def torch_problem() -> str:
    """'' when PyTorch imports, else why not (one line)."""
    try:
        import torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        return f"PyTorch is not available ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return ""


def torch_variant(name: str, module, inputs: list, device: str, precision: str, layout: str,
                  memory: MemoryProbe, warmup: int = 1, **info) -> Variant:
    """PyTorch eager: MODULE (already on DEVICE in the precision's dtype) on INPUTS in LAYOUT
    ('nchw' or 'channels_last': the module's 4-D parameters and inputs converted), inference mode,
    cudnn.benchmark on; float32 'strict' turns TF32 off around each call, 'default' leaves
    PyTorch's own defaults (TF32 on for cuDNN convolutions, off for matmuls)."""
    import torch

    torch.backends.cudnn.benchmark = True
    cuda = str(device).startswith("cuda")
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        inputs = [x.to(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs]
    strict = precision == "float32-strict"
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    last: list = []

    def run():
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = \
            (False, False) if strict else defaults
        try:
            with torch.inference_mode():
                out = module(*inputs)
            if cuda:
                torch.cuda.synchronize()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        last[:] = [out] if isinstance(out, torch.Tensor) else list(out)

    def outputs():
        if not last:
            run()
        return [t.detach().float().cpu().numpy() for t in last]

    allocated = torch.cuda.memory_allocated() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = None if cuda else memory.used()
    calls = settle(run, warmup)
    weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    if cuda:  # weights + the peak of one call above what was allocated before it (activations, workspace)
        held = weights + max(0, torch.cuda.max_memory_allocated() - allocated)
    else:
        after = memory.used()
        held = None if before is None or after is None else max(0, after - before) + weights
    last.clear()
    variant = Variant(name, "pytorch", run, outputs,
                      {"layout": layout, "memory_bytes": held, "weights_bytes": weights, "warmup_calls": calls,
                       **info})
    variant.info["_keep"] = (module, inputs)
    return variant


# ---------------------------------------------------------------- timing


def interleave(variants: list[Variant], rounds: int = 10, seconds: float | None = None,
               seed: int = 0) -> dict[str, list[float]]:
    """ms per call of every variant: at least ROUNDS rounds, and more until SECONDS have passed;
    each round runs every variant once, in a fresh random order."""
    order, samples = random.Random(seed), {v.name: [] for v in variants}
    deadline = None if seconds is None else time.perf_counter() + seconds
    done = 0
    while done < rounds or (deadline is not None and time.perf_counter() < deadline):
        for variant in order.sample(variants, len(variants)):
            start = time.perf_counter()
            variant.run()
            samples[variant.name].append((time.perf_counter() - start) * 1e3)
        done += 1
    return samples


def compare_outputs(variants: list[Variant], reference: str) -> dict[str, float | None]:
    """Largest |difference| of each variant's outputs from REFERENCE's, relative to the reference's
    largest |value|, from the sessions and modules just timed (None: the outputs do not line up)."""
    by_name = {v.name: v for v in variants}
    ref = [np.asarray(o, np.float64) for o in by_name[reference].outputs()]
    scale = max((float(np.abs(r).max()) for r in ref if r.size), default=0.0) or 1.0
    result = {}
    for variant in variants:
        out = [np.asarray(o, np.float64) for o in variant.outputs()]
        if len(out) < len(ref) or any(o.shape != r.shape for o, r in zip(out, ref)):
            result[variant.name] = None
            continue
        result[variant.name] = max((float(np.abs(o - r).max()) for o, r in zip(out, ref) if r.size),
                                   default=0.0) / scale
    return result


def summarize(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {"median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)),
            "p90_ms": float(np.percentile(arr, 90)), "min_ms": float(arr.min()), "runs": len(arr)}


def ratio_interval(reference: list[float], candidate: list[float], resamples: int = 400,
                   seed: int = 0) -> list[float]:
    """95% bootstrap interval of median(reference) / median(candidate)."""
    rng = np.random.default_rng(seed)
    ref = np.median(rng.choice(np.asarray(reference), (resamples, len(reference))), axis=1)
    cand = np.median(rng.choice(np.asarray(candidate), (resamples, len(candidate))), axis=1)
    low, high = np.percentile(ref / cand, [2.5, 97.5])
    return [float(low), float(high)]


# ---------------------------------------------------------------- the bound


@dataclass
class Device:
    """What the bound is computed from: copy bandwidth (measured), CUDA-core peaks (looked up or stated)."""

    name: str
    gpu: bool
    copy_gbps: float
    peak_tflops: dict[str, float]  # dtype -> TFLOP/s
    peak_source: str
    copy_source: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def bound(self, activation_bytes: float, flops: float, dtype: str) -> dict[str, Any]:
        memory_ms = activation_bytes / (self.copy_gbps * 1e9) * 1e3
        compute_ms = flops / (self.peak_tflops[dtype] * 1e12) * 1e3
        return {"bound_ms": max(memory_ms, compute_ms), "memory_ms": memory_ms, "compute_ms": compute_ms,
                "limited_by": "memory" if memory_ms >= compute_ms else "compute",
                "activation_bytes": int(activation_bytes), "flops": int(flops)}


def gpu_peaks(name: str) -> tuple[dict[str, float], str]:
    for key, (fp32, fp16) in CUDA_CORE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return {"float32": fp32, "float16": fp16}, f"data sheet ({key}: CUDA cores, no tensor cores)"
    try:
        import torch

        props = torch.cuda.get_device_properties(0)
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
        mhz = float(out.stdout.split()[0])
        lanes = FP32_LANES_PER_SM.get((props.major, props.minor), 128)
        fp32 = props.multi_processor_count * lanes * 2 * mhz * 1e6 / 1e12
        return {"float32": fp32, "float16": 2 * fp32}, \
            f"{props.multi_processor_count} SMs x {lanes} FP32 lanes x 2 x {mhz:g} MHz (fp16 taken as 2x)"
    except Exception:  # noqa: BLE001 - no torch, no nvidia-smi: an unknown device
        return {"float32": float("nan"), "float16": float("nan")}, "unknown GPU: no peak"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    from onnx_diagwise.providers import cpuinfo

    return set((cpuinfo("flags") or "").split())


def default_cpu_peak(flags: set[str]) -> tuple[float, str]:
    """GFLOP/s per core to state, and why: by the widest vector unit in FLAGS (AVX2 when none is known)."""
    return next((CPU_PEAK_GFLOPS_PER_CORE[f] for f in CPU_PEAK_GFLOPS_PER_CORE if f in flags),
                CPU_PEAK_GFLOPS_PER_CORE["avx2"])


def cpu_peaks(gflops_per_core: float | None) -> tuple[dict[str, float], str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_core, why = (gflops_per_core, "--cpu-peak-gflops") if gflops_per_core else default_cpu_peak(cpu_flags())
    peak = cores * per_core / 1e3
    return {"float32": peak, "float16": peak}, \
        f"stated, not measured: {cores} cores x {per_core:g} GFLOP/s ({why}; float16 taken as float32)"


def copy_gbps_torch(device: str) -> float:
    """GB/s of y.copy_(x), read + write, median of 10."""
    import torch

    n = (256 if device.startswith("cuda") else 32) * 2**20 // 4
    x = torch.ones(n, device=device)
    y = torch.empty_like(x)
    times = []
    for _ in range(11):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        y.copy_(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times[1:]) / 1e9


def copy_gbps_ort(config: RuntimeConfig) -> float:
    """GB/s of y = x + 0 under onnxruntime (read + write), median of 10: the bandwidth without PyTorch."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_diagwise.model_io import BUILT_IR_VERSION

    n = (64 if config.is_gpu else 16) * 2**20
    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], "copy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                              [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=BUILT_IR_VERSION)
    variant = ort_variant("copy", model, config, {"x": np.ones(n, np.float32)}, MemoryProbe(False))
    ms = statistics.median(interleave([variant], rounds=10)["copy"])
    return 2 * n * 4 / (ms / 1e3) / 1e9


def describe_device(config: RuntimeConfig, torch_device: str | None, cpu_peak_gflops: float | None = None) -> Device:
    """The device the benchmark runs on, with its copy bandwidth measured now (PyTorch's copy when
    PyTorch runs on it, else onnxruntime's) and its peaks."""
    gpu = config.is_gpu
    if gpu:
        from onnx_diagwise.bench import device_name

        name = device_name(config)
        peaks, source = gpu_peaks(name)
    else:
        from onnx_diagwise.bench import device_name

        name = device_name(RuntimeConfig("cpu"))
        peaks, source = cpu_peaks(cpu_peak_gflops)
    if torch_device is not None:
        gbps, how = copy_gbps_torch(torch_device), "PyTorch y.copy_(x), 2 x bytes / time"
    else:
        gbps, how = copy_gbps_ort(config), "onnxruntime y = x + 0, 2 x bytes / time"
    return Device(name, gpu, gbps, peaks, source, how)


def times_over_bound(ms: float, bound: dict[str, Any]) -> float:
    return ms / bound["bound_ms"] if bound and bound["bound_ms"] > 0 else float("nan")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
