"""Run an ONNX graph in PyTorch eager, op by op: the PyTorch baseline for networks that exist only
as ONNX (benchmarks/zoo.py's networks, a user's own files).

    module = OnnxModule(model)            # torch.nn.Module; weights are buffers with the same values
    outputs = module(*inputs)             # inputs in the graph's input order

Each node becomes the PyTorch call a hand-written module would make (Conv -> F.conv2d with the same
groups, LayerNormalization -> F.layer_norm, MatMul -> torch.matmul, ...), so the kernels timed are
the ones a PyTorch user gets.  Supported: the float ops of typical vision and audio networks
(listed in OPS).  A graph with another op raises Unsupported naming it, so a benchmark can say why
it has no PyTorch column.  Control flow, quantized ops and shape arithmetic on dynamic shapes are
not supported.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F


class Unsupported(ValueError):
    """The graph has something this interpreter does not run."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, auto_pad="NOTSET", kernel_shape=None):
    rank = w.dim() - 2
    if auto_pad not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise Unsupported(f"Conv auto_pad={auto_pad!r}")
    pads = list(pads or [0] * (2 * rank))
    strides, dilations = list(strides or [1] * rank), list(dilations or [1] * rank)
    if pads[:rank] != pads[rank:]:  # asymmetric: pad first
        x = F.pad(x, [p for d in reversed(range(rank)) for p in (pads[d], pads[d + rank])])
        pads = [0] * (2 * rank)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return fn(x, w, b, strides, pads[:rank], dilations, group)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.t() if transA else a
    b = b.t() if transB else b
    if c is not None and alpha == 1.0 and beta == 1.0:
        return torch.addmm(c, a, b) if a.dim() == 2 else a @ b + c
    y = alpha * (a @ b)
    return y if c is None else y + beta * c


def _pool(kind, x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0, auto_pad="NOTSET",
          dilations=None, storage_order=0):
    rank = len(kernel_shape)
    pads = list(pads or [0] * (2 * rank))
    if pads[:rank] != pads[rank:]:
        raise Unsupported(f"{kind} with asymmetric pads")
    strides = list(strides or [1] * rank)
    if kind == "MaxPool":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return fn(x, kernel_shape, strides, pads[:rank], list(dilations or [1] * rank), bool(ceil_mode))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    return fn(x, kernel_shape, strides, pads[:rank], bool(ceil_mode), bool(count_include_pad))


def _reduce(fn, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    if axes is None:
        return fn(x, dim=tuple(range(x.dim())), keepdim=bool(keepdims))
    return fn(x, dim=tuple(int(a) for a in axes), keepdim=bool(keepdims))


def _axes_input(values) -> list[int] | None:
    return None if values is None else [int(v) for v in values.tolist()]


OPS = {
    "Conv": lambda x, w, b=None, **a: _conv(x, w, b, **a),
    "Relu": lambda x: F.relu(x),
    "Clip": lambda x, lo=None, hi=None, **a: torch.clamp(x, None if lo is None else float(lo),
                                                         None if hi is None else float(hi)),
    "HardSwish": lambda x: F.hardswish(x),
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(x * alpha + beta, 0, 1),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Neg": torch.neg,
    "Reciprocal": torch.reciprocal,
    "Softplus": F.softplus,
    "Gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "Elu": lambda x, alpha=1.0: F.elu(x, alpha),
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "MatMul": torch.matmul,
    "Gemm": _gemm,
    "Identity": lambda x: x,
    "Dropout": lambda x, *rest, **a: x,
    "Softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "LayerNormalization": lambda x, w, b=None, axis=-1, epsilon=1e-5, stash_type=1:
        F.layer_norm(x, x.shape[axis:] if axis >= 0 else x.shape[axis:], w, b, epsilon),
    "BatchNormalization": lambda x, s, b, m, v, epsilon=1e-5, momentum=0.9, training_mode=0:
        F.batch_norm(x, m, v, s, b, False, 0.0, epsilon),
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "MaxPool": lambda x, **a: _pool("MaxPool", x, **a),
    "AveragePool": lambda x, **a: _pool("AveragePool", x, **a),
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "Reshape": lambda x, shape, allowzero=0: x.reshape([x.shape[i] if int(s) == 0 and not allowzero else int(s)
                                                        for i, s in enumerate(shape.tolist())]),
    "Squeeze": lambda x, axes=None: x.squeeze(tuple(_axes_input(axes))) if axes is not None else x.squeeze(),
    "Unsqueeze": lambda x, axes: _unsqueeze(x, _axes_input(axes)),
    "Concat": lambda *xs, axis: torch.cat(xs, axis),
    "ReduceMean": lambda x, axes=None, **a: _reduce(torch.mean, x, axes, **a),
    "ReduceSum": lambda x, axes=None, **a: _reduce(torch.sum, x, axes, **a),
    "Cast": lambda x, to: x.to(_TORCH_DTYPES[to]),
    "Split": lambda x, split=None, axis=0, num_outputs=None: torch.split(
        x, split.tolist() if split is not None else x.shape[axis] // num_outputs, axis),
    "Pad": lambda x, pads, value=None, axes=None, mode="constant": _pad(x, pads, value, mode),
    "Slice": lambda x, starts, ends, axes=None, steps=None: _slice(x, starts, ends, axes, steps),
}
_TORCH_DTYPES = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16, 7: torch.int64, 6: torch.int32,
                 9: torch.bool}
_ATTR_INPUTS = {"Squeeze": ["axes"], "Unsqueeze": ["axes"], "ReduceMean": ["axes"], "ReduceSum": ["axes"],
                "Split": ["split"]}  # before opset 13/18 these were attributes
# Inputs (by position) that must be constants: they are read on the host, once, so no call
# copies a shape from the GPU (which would synchronize it).
HOST_INPUTS = {"Reshape": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3},
               "Split": {1}, "ReduceMean": {1}, "ReduceSum": {1}, "Clip": {1, 2}}


def _unsqueeze(x, axes):
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


def _pad(x, pads, value, mode):
    pads = [int(p) for p in pads.tolist()]
    rank = len(pads) // 2
    torch_pads = [p for d in reversed(range(rank)) for p in (pads[d], pads[d + rank])]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return F.pad(x, torch_pads, mode=mode, value=0.0 if value is None else float(value))


def _slice(x, starts, ends, axes, steps):
    index = [slice(None)] * x.dim()
    axes = range(len(starts)) if axes is None else axes.tolist()
    steps = [1] * len(starts) if steps is None else steps.tolist()
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        if st < 1:
            raise Unsupported("Slice with a negative step")
        index[a] = slice(int(s), min(int(e), x.shape[a]) if e < 2**62 else None, int(st))
    return x[tuple(index)]


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch.nn.Module; its initializers are buffers (same values, same dtype)."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")} |
                             {n.op_type for n in graph.node if n.op_type not in OPS and n.op_type != "Constant"})
        if unsupported:
            raise Unsupported(f"op(s) {', '.join(unsupported)} not run by this PyTorch interpreter")
        self._names: dict[str, str] = {}
        host: dict[str, np.ndarray] = {}
        for i, tensor in enumerate(graph.initializer):
            array = np.array(numpy_helper.to_array(tensor))
            host[tensor.name] = array
            self.register_buffer(f"w{i}", torch.from_numpy(array))
            self._names[tensor.name] = f"w{i}"
        self._nodes = []
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                if "value" not in attrs:
                    raise Unsupported("a Constant without a tensor 'value'")
                array = np.array(numpy_helper.to_array(attrs["value"]))
                host[node.output[0]] = array
                key = f"c{len(self._nodes)}_{len(host)}"
                self.register_buffer(key, torch.from_numpy(array))
                self._names[node.output[0]] = key
                continue
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            args = []
            for position, name in enumerate(node.input):
                if not name:
                    args.append(("none", None))
                elif position in HOST_INPUTS.get(node.op_type, ()):
                    if name not in host:
                        raise Unsupported(f"{node.op_type} '{node.name}' takes a computed input '{name}' "
                                          "(shape arithmetic is not run)")
                    args.append(("host", host[name]))
                else:
                    args.append(("env", name))
            for name in _ATTR_INPUTS.get(node.op_type, []):
                if name in attrs:  # an old-opset attribute: passed as the input the newer op takes
                    args.append(("host", np.array(attrs.pop(name))))
            self._nodes.append((node.op_type, args, list(node.output), attrs))
        initializers = set(self._names)
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]

    def forward(self, *inputs):
        env = dict(zip(self.input_names, inputs))
        for name, key in self._names.items():
            env[name] = getattr(self, key)
        for op, spec, outs, attrs in self._nodes:
            args = [env[v] if kind == "env" else v for kind, v in spec]
            while args and args[-1] is None:
                args.pop()
            result = OPS[op](*args, **attrs)
            if isinstance(result, (tuple, list)):
                env.update(zip(outs, result))
            else:
                env[outs[0]] = result
        outputs = [env[name] for name in self.output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def torch_dtype(elem_type: int) -> torch.dtype:
    return _TORCH_DTYPES[elem_type]


def parameters_of(module: OnnxModule) -> int:
    return sum(math.prod(b.shape) for b in module.buffers())
