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

from .cache import TuneCache, clear_cache, default_cache_dir
from .decide import LayerTuning, TuneReport, apply_choices, tune
from .layers import CANDIDATES, LayerSignature, layer_model
from .timing import OrtTimer, Timer, separated

__all__ = ["tune", "TuneReport", "LayerTuning", "apply_choices", "TuneCache", "clear_cache", "default_cache_dir",
           "OrtTimer", "Timer", "separated", "LayerSignature", "layer_model", "CANDIDATES"]
