"""Load and save ONNX models: checks, external data, atomic writes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import ModelProto, TensorProto

from .errors import DiagwiseError

# onnxruntime has no kernels below opset 7; above what the installed onnx knows
# we cannot check the model.
MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()

# Protobuf cannot serialize a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
# Tensors smaller than this stay inside the .onnx file when saving external data.
EXTERNAL_THRESHOLD = 1024


@dataclass
class LoadedModel:
    model: ModelProto
    path: Path
    file_bytes: int  # size on disk: the .onnx file plus its external data files
    external_files: list[Path] = field(default_factory=list)

    @property
    def has_external_data(self) -> bool:
        return bool(self.external_files)


def iter_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto that can hold weights: initializers and tensor attributes,
    in the main graph, all subgraphs and all functions."""

    def from_graph(graph) -> Iterator[TensorProto]:
        yield from getattr(graph, "initializer", ())
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for sub in attr.graphs:
                    yield from from_graph(sub)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_graph(function)


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, whichever field holds it."""
    if tensor.data_location == TensorProto.EXTERNAL:
        for entry in tensor.external_data:
            if entry.key == "length":
                return int(entry.value)
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * itemsize


def weight_bytes(model: ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in iter_tensors(model))


def _external_location(tensor: TensorProto) -> str:
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    raise DiagwiseError(f"tensor '{tensor.name}' is marked external but names no location")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read, parse and check a model file; external data is loaded into memory.

    Every problem is raised as a DiagwiseError with one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise DiagwiseError(f"input model '{path}' does not exist")
    if path.is_dir():
        raise DiagwiseError(f"input model '{path}' is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DiagwiseError(f"cannot read '{path}': {exc.strerror}") from None
    if not data:
        raise DiagwiseError(f"'{path}' is empty, not an ONNX model")

    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise DiagwiseError(
            f"'{path}' is not an ONNX model (protobuf parse failed: truncated or another format)"
        ) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise DiagwiseError(f"'{path}' is not an ONNX model (no graph or IR version)")

    check_opsets(model, str(path))
    try:
        # Checking by path never re-serializes the model and finds external data files
        # relative to the model, as runtimes do.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "validation failed"
        raise DiagwiseError(f"'{path}' is not a valid ONNX model: {first}") from None
    del data

    external_files: list[Path] = []
    base_dir = path.parent
    for tensor in iter_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = base_dir / _external_location(tensor)
        if location not in external_files:
            external_files.append(location)
        try:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
        except (OSError, ValueError) as exc:
            raise DiagwiseError(
                f"cannot load external data of tensor '{tensor.name}' from '{location}': {exc}"
            ) from None
    file_bytes = path.stat().st_size + sum(f.stat().st_size for f in external_files)
    return LoadedModel(model, path, file_bytes, external_files)


def check_opsets(model: ModelProto, where: str) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= MAX_OPSET:
            raise DiagwiseError(
                f"'{where}' uses ai.onnx opset {opset.version}; supported opsets are "
                f"{MIN_OPSET} to {MAX_OPSET} (onnx {onnx.__version__})"
            )


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None = None,
                      protected: list[Path] | None = None) -> Path:
    """Fail early, before any work, if OUTPUT cannot be written or would clobber the input."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if output.exists() and output.is_dir():
        raise DiagwiseError(f"output '{output}' is a directory")
    if not parent.exists():
        raise DiagwiseError(f"output directory '{parent}' does not exist")
    if not parent.is_dir():
        raise DiagwiseError(f"output directory '{parent}' is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiagwiseError(f"output directory '{parent}' is not writable")
    if input_path is not None and output.exists() and os.path.samefile(output, input_path):
        raise DiagwiseError(f"output '{output}' is the input model; choose another path")
    data_file = external_data_path(output)
    for path in protected or ():
        if path.exists() and data_file.exists() and os.path.samefile(data_file, path):
            raise DiagwiseError(
                f"output data file '{data_file}' is the input's external data; choose another path"
            )
    return output


def external_data_path(output: Path) -> Path:
    return output.with_name(output.name + ".data")


def save_model(model: ModelProto, output: str | os.PathLike, external_data: bool | None = None) -> bool:
    """Write MODEL to OUTPUT atomically; return whether external data was used.

    external_data=None chooses it when the model would pass protobuf's 2 GiB limit.
    Weights go to '<OUTPUT>.data' beside the model. Both files are written under
    temporary names in the output directory and renamed into place only once
    complete, so a failure never leaves a partial or clobbered file. MODEL is left
    as it was (tensors moved out for serialization are put back)."""
    output = Path(output)
    if external_data is None:
        external_data = weight_bytes(model) > PROTOBUF_LIMIT - 64 * 2**20
    parent = output.parent if str(output.parent) else Path(".")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    tmp_model = tmp_dir / output.name
    tmp_data = external_data_path(tmp_model)
    try:
        if external_data:
            _write_with_external_data(model, tmp_model, tmp_data)
            os.replace(tmp_data, external_data_path(output))
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_model, output)
    except OSError as exc:
        raise DiagwiseError(f"cannot write '{output}': {exc.strerror or exc}") from None
    except (ValueError, EncodeError):  # protobuf refuses messages over 2 GiB
        raise DiagwiseError(
            f"cannot write '{output}': the model passes protobuf's 2 GiB limit; save it with external data"
        ) from None
    finally:
        for leftover in (tmp_data, tmp_model):
            leftover.unlink(missing_ok=True)
        tmp_dir.rmdir()
    return external_data


def _write_with_external_data(model: ModelProto, model_path: Path, data_path: Path) -> None:
    """Move every large tensor's bytes to DATA_PATH, serialize, then restore the tensors."""
    moved: list[tuple[TensorProto, bytes]] = []
    offset = 0
    try:
        with open(data_path, "wb") as data_file:
            for tensor in iter_tensors(model):
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_THRESHOLD:
                    continue
                raw = tensor.raw_data
                # Align like onnx does so runtimes can memory-map the file.
                padding = -offset % 4096
                data_file.write(b"\0" * padding)
                offset += padding
                data_file.write(raw)
                moved.append((tensor, raw))
                onnx.external_data_helper.set_external_data(
                    tensor, data_path.name, offset=offset, length=len(raw)
                )
                tensor.ClearField("raw_data")
                offset += len(raw)
            data_file.flush()
            os.fsync(data_file.fileno())
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
    finally:
        for tensor, raw in moved:
            tensor.raw_data = raw
            tensor.ClearField("data_location")
            del tensor.external_data[:]
