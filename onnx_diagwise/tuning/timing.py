"""Timing candidates: the Timer protocol and onnxruntime's, with more rounds while within noise."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from onnx import ModelProto

from ..bench import benchmark
from ..errors import first_line
from ..providers import import_ort
from ..runtime import InputOptions, RuntimeConfig
from .layers import LayerSignature


class Timer(Protocol):
    """How tuning measures.  Times are seconds per run (medians)."""

    def layer(self, signature: LayerSignature, models: dict[str, ModelProto]) -> dict[str, float | str]:
        """Time one-node models keyed by form ('1' = the original depthwise layer, '8', 'toeplitz', ...);
        a form that does not run on the provider maps to why (a str) instead of a time."""

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

    def layer(self, signature: LayerSignature, models: dict[str, ModelProto]) -> dict[str, float | str]:
        order = ["1"] + [spec for spec in models if spec != "1"]  # the original layer first

        def timed(specs: list[str]) -> dict[str, float]:
            return dict(zip(specs, self._medians([models[s] for s in specs], InputOptions(), self.iterations)))

        try:
            return timed(order)
        except Exception:  # noqa: BLE001 - one form the provider refuses (cuDNN, memory) must not end auto
            failed = {spec: why for spec in order if (why := self._why_not_runs(models[spec]))}
            if "1" in failed or not failed:
                raise  # the layer itself does not run, or no single form is to blame
        return {**timed([spec for spec in order if spec not in failed]), **failed}

    def _why_not_runs(self, model: ModelProto) -> str | None:
        """None when MODEL runs on the provider, else the first line of why not."""
        try:
            benchmark([model], self.config, InputOptions(), warmup=0, iterations=1)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors are not DiagwiseErrors
            return f"does not run on {self.config.provider_full}: {first_line(exc, '')}"
        return None

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
        options = self.config.checked_options
        return {"provider": self.config.provider_full, "provider_options": dict(sorted(options.items())),
                "threads": self.config.threads, "opt_level": self.config.opt_level,
                "device": self.config.family.device(options), "onnxruntime": import_ort().__version__}


def separated(samples: list[list[float]]) -> bool:
    """Is the fastest of samples[1:] clearly apart from samples[0]?  Apart means the medians
    differ by more than twice their combined standard error (estimated from the IQRs), and
    by more than 1%."""
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
