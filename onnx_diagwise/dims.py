"""Concrete sizes for the symbolic dims of a model's inputs, so that it can be run.

The rule: sizes the user gives win (--overwrite-input-shape, --dim NAME=V); a leading symbolic
dim is the batch (--batch); every other symbolic dim gets the first candidate size with which
the model runs.  Candidates depend on what the dim looks like: image sizes (64, then 224, ...;
multiples of the network's total stride) for the spatial dims of 4-D and 5-D inputs or dims
named like height/width; 3, 1, 4, ... for the channels of 4-D and 5-D inputs; sequence lengths
(128, 64, 256, ...) for the last dim of 3-D inputs or dims named like time/length; small counts
otherwise.  All dims move to their next candidate
together; dims with the same name always get the same size.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from onnx import ModelProto

from .errors import DiagwiseError, UnsizedDims, first_line
from .runtime import (InputOptions, InputSpec, RuntimeConfig, create_session, import_ort, input_specs,
                      random_tensor)

log = logging.getLogger("onnx_diagwise")

IMAGE_SIZES = (64, 224, 256, 320, 512, 640, 32)
SEQUENCE_LENGTHS = (128, 64, 256, 16, 512, 1024)
CHANNELS = (3, 1, 4, 16, 64)  # image channels first
COUNTS = (16, 64, 1, 8, 128)
IMAGE_NAMES = re.compile(r"^(h|w|height|width|img_?h|img_?w|image_?(height|width)|y|x)$|height|width", re.I)
SEQUENCE_NAMES = re.compile(r"time|seq|len|frame|token|sample|step|^t$|^l$", re.I)
STRIDED_OPS = {"Conv", "MaxPool", "AveragePool", "ConvInteger", "QLinearConv"}


@dataclass
class SymbolicDim:
    """One size to choose: a named dim (wherever it appears) or one unnamed input axis."""

    key: str  # the dim's name, or 'input[axis]' when unnamed
    places: list[tuple[str, int]]  # (input, axis) where it appears
    kind: str  # image, sequence or count

    def label(self) -> str:
        where = ", ".join(f"'{name}' dim {axis}" for name, axis in self.places)
        return f"{where} ('{self.key}')" if "[" not in self.key else f"{where} (unnamed)"


@dataclass
class InputShapes:
    """Concrete shapes of every input to synthesize, and where each symbolic dim's size came from."""

    shapes: dict[str, list[int]]
    sizes: dict[str, int] = field(default_factory=dict)  # symbolic dim key -> size
    sources: dict[str, str] = field(default_factory=dict)  # key -> '--dim', '--batch' or 'tried'

    def describe(self) -> str:
        shapes = ", ".join(f"'{name}' {'x'.join(map(str, shape))}" for name, shape in self.shapes.items())
        dims = ", ".join(f"{key}={size} ({'the first size that runs' if self.sources[key] == 'tried' else self.sources[key]})"
                         for key, size in self.sizes.items())
        return f"input shapes {shapes}" + (f"; symbolic dims {dims}" if dims else "")

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": self.shapes, "symbolic_dims": {k: {"size": v, "from": self.sources[k]}
                                                         for k, v in self.sizes.items()},
                "rule": " ".join(__doc__.split("\n\n")[1].split())}


def total_stride(model: ModelProto) -> int:
    """Product of the spatial strides of the main graph's convolutions and pools, capped at 64:
    image sizes that are multiples of it pass every downsampling evenly."""
    product = 1
    for node in model.graph.node:
        if node.op_type in STRIDED_OPS:
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
            product *= max(strides or [1])
    return min(product, 64)


def _kind(spec: InputSpec, axis: int, name: str | None) -> str:
    if name and SEQUENCE_NAMES.search(name) and not IMAGE_NAMES.search(name):
        return "sequence"
    if name and IMAGE_NAMES.search(name):
        return "image"
    rank = len(spec.dims)
    if rank in (4, 5) and axis >= 2 and spec.dtype.kind == "f":
        return "image"
    if rank in (4, 5) and axis == 1:
        return "channels"
    if rank in (2, 3) and axis == rank - 1 or rank == 3 and axis == 1 and spec.dtype.kind == "f":
        return "sequence"
    return "count"


def candidates(kind: str, stride: int) -> list[int]:
    if kind == "image":
        return [s for s in IMAGE_SIZES if s % stride == 0] or [64 * stride]
    return list({"sequence": SEQUENCE_LENGTHS, "channels": CHANNELS}.get(kind, COUNTS))


def _given_sizes(specs: list[InputSpec], options: InputOptions) -> tuple[dict, dict, dict, list[SymbolicDim]]:
    """Shapes with the user's sizes and the batch filled in, and the dims still symbolic."""
    given = dict(options.shapes or {})
    if "" in given:
        if len(specs) != 1:
            raise DiagwiseError("InputOptions.shapes without a name works only for a one-input model",
                                "InputOptions.shapes")
        given[specs[0].name] = given.pop("")
    names = {s.name for s in specs}
    for name in given:
        if name not in names:
            raise DiagwiseError(f"InputOptions.shapes names '{name}', which is not a model input "
                                f"(inputs: {', '.join(sorted(names))})", "InputOptions.shapes")
    dims_by_name = dict(options.dims or {})
    symbolic_names = {d for s in specs for d in s.dims if isinstance(d, str)}
    for name in dims_by_name:
        if name not in symbolic_names:
            known = ", ".join(sorted(symbolic_names)) or "none"
            raise DiagwiseError(f"InputOptions.dims {name}=...: the model's inputs have no dim named '{name}' "
                                f"(symbolic dims: {known})", "InputOptions.dims")
    if options.batch < 1:
        raise DiagwiseError(f"batch must be >= 1; got {options.batch}", "batch")
    shapes: dict[str, list[int | None]] = {}
    how: dict[str, str] = {}
    values: dict[str, int] = {}
    unknown: dict[str, SymbolicDim] = {}
    for spec in specs:
        if spec.name in given:
            shape = given[spec.name]
            if len(shape) != len(spec.dims):
                raise DiagwiseError(f"InputOptions.shapes {spec.name}: rank {len(shape)} does not match "
                                    f"the model's rank {len(spec.dims)}", "InputOptions.shapes")
            fixed = [(a, d, s) for a, (d, s) in enumerate(zip(spec.dims, shape)) if _declared(d) and d != s]
            if fixed:
                axis, declared, asked = fixed[0]
                raise DiagwiseError(f"InputOptions.shapes {spec.name}: dim {axis} is fixed at {declared} in the "
                                    f"model, not {asked} (the model expects {_shape_text(spec.dims)})",
                                    "InputOptions.shapes")
            shapes[spec.name] = list(shape)
            continue
        shape = []
        for axis, dim in enumerate(spec.dims):
            if _declared(dim):
                shape.append(dim)
            elif isinstance(dim, str) and dim in dims_by_name:
                shape.append(dims_by_name[dim])
                how[dim], values[dim] = "--dim", dims_by_name[dim]
            elif axis == 0:
                shape.append(options.batch)  # a leading symbolic dim is the batch
                key = dim or f"{spec.name}[0]"
                how[key], values[key] = "--batch", options.batch
            else:
                key = dim or f"{spec.name}[{axis}]"
                entry = unknown.setdefault(key, SymbolicDim(key, [], _kind(spec, axis, dim)))
                entry.places.append((spec.name, axis))
                shape.append(None)
        shapes[spec.name] = shape
    return shapes, how, values, list(unknown.values())


def _declared(dim: int | str | None) -> bool:
    """A size the model fixes, 0 included: onnxruntime requires exactly it (input_specs reads a
    negative size as free)."""
    return isinstance(dim, int)


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d) if _declared(d) else (d or "?") for d in dims) + "]"


def _fill(shapes: dict, specs: list[InputSpec], sizes: dict[str, int]) -> dict[str, list[int]]:
    filled = {}
    for spec in specs:
        shape = list(shapes[spec.name])
        for axis, size in enumerate(shape):
            if size is None:
                dim = spec.dims[axis]
                shape[axis] = sizes[dim or f"{spec.name}[{axis}]"]
        filled[spec.name] = shape
    return filled


def _runs(session, specs: list[InputSpec], shapes: dict[str, list[int]], data: dict) -> bool:
    """Whether the model runs on random inputs of SHAPES (and the real DATA given)."""
    rng = np.random.default_rng(0)
    feeds = {s.name: data[s.name] if s.name in data else random_tensor(rng, s.dtype, shapes[s.name]) for s in specs}
    quiet = import_ort().RunOptions()
    quiet.log_severity_level = 4  # a size that fails is expected here, not an error to print
    try:
        session.run(None, feeds, quiet)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the next size may run
        log.info("  does not run with %s: %s", shapes, first_line(exc, ""))
        return False
    return True


def resolve_input_shapes(model: ModelProto, options: InputOptions | None = None,
                         config: RuntimeConfig | None = None) -> InputShapes:
    """Concrete shapes for every input that has no real data, by the rule in this module's doc.

    Symbolic dims the user did not size are tried on onnxruntime (CONFIG, CPU by default);
    if no candidate runs, one error lists every such dim and an option that sizes them."""
    options = options or InputOptions()
    all_specs = input_specs(model)
    data = _checked_data(all_specs, options)
    specs = [s for s in all_specs if s.name not in data]
    shapes, sources, sizes, unknown = _given_sizes(specs, options)
    if not unknown:
        return InputShapes({name: list(shape) for name, shape in shapes.items()}, sizes, sources)
    stride = total_stride(model)
    lists = {d.key: candidates(d.kind, stride) for d in unknown}
    session = create_session(model, config or RuntimeConfig("cpu"))
    for attempt in range(max(len(c) for c in lists.values())):
        tried = {key: sizes_[min(attempt, len(sizes_) - 1)] for key, sizes_ in lists.items()}
        filled = _fill(shapes, specs, tried)
        if _runs(session, all_specs, filled, data):
            result = InputShapes(filled, {**sizes, **tried}, {**sources, **{k: "tried" for k in tried}})
            log.info(result.describe())
            return result
    suggestion = _fill(shapes, specs, {key: sizes_[0] for key, sizes_ in lists.items()})
    example = {name: suggestion[name] for name in dict.fromkeys(name for d in unknown for name, _ in d.places)}
    raise UnsizedDims(
        f"symbolic dims {'; '.join(d.label() for d in unknown)} got no size with which the model runs "
        f"(tried {', '.join(f'{k}: {lists[k]}' for k in lists)}); give the sizes it expects, e.g. "
        f"InputOptions.shapes={example}", "InputOptions.shapes", example=example)


def with_input_shapes(model: ModelProto, options: InputOptions | None,
                      config: RuntimeConfig | None = None) -> tuple[InputOptions, InputShapes]:
    """OPTIONS with every input's shape resolved, so later calls need no trial runs."""
    options = options or InputOptions()
    resolved = resolve_input_shapes(model, options, config)
    return replace(options, shapes={**resolved.shapes}), resolved


def make_inputs(model: ModelProto, options: InputOptions, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for every input: the real data given, or seeded random data by dtype."""
    specs = input_specs(model)
    data = _checked_data(specs, options)
    shapes = resolve_input_shapes(model, options).shapes
    rng = np.random.default_rng(seed)
    return {spec.name: data[spec.name] if spec.name in data else random_tensor(rng, spec.dtype, shapes[spec.name])
            for spec in specs}


def _checked_data(specs: list[InputSpec], options: InputOptions) -> dict[str, np.ndarray]:
    """The real input data given, each array checked against its input (and cast within its kind)."""
    data = dict(options.data or {})
    by_name = {s.name: s for s in specs}
    for name in data:
        if name not in by_name:
            raise DiagwiseError(f"input data names '{name}', which is not a model input "
                                f"(inputs: {', '.join(sorted(by_name))})")
    return {name: _check_data(by_name[name], array) for name, array in data.items()}


def _check_data(spec: InputSpec, array: np.ndarray) -> np.ndarray:
    if array.dtype != spec.dtype:
        if array.dtype.kind != spec.dtype.kind:
            raise DiagwiseError(f"input data for '{spec.name}' is {array.dtype}, the model wants {spec.dtype}")
        array = array.astype(spec.dtype)
    if len(array.shape) != len(spec.dims) or any(
            _declared(d) and d != a for d, a in zip(spec.dims, array.shape)):
        raise DiagwiseError(f"input data for '{spec.name}' has shape {list(array.shape)}, the model wants "
                            f"{_shape_text(spec.dims)}")
    return array
