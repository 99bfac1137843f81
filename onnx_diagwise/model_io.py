"""Load and save ONNX models: checks, external data, atomic writes."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import ModelProto, TensorProto

from .commit import Staging, data_name, same_file
from .errors import DiagwiseError, first_line
from .tensors import iter_tensors, read_external, skeleton, tensor_nbytes, weight_bytes

# onnxruntime guarantees opset 7 and later, yet runs older models (Conv means the same since
# opset 1): older ones get a warning.  Past what the installed onnx knows, we cannot check a model.
MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
log = logging.getLogger("onnx_diagwise")
_warned_old: set[tuple[str, int, int]] = set()  # each old model once, though it is read more than once

# IR version of the models this tool builds itself: onnx.helper's default follows the installed onnx,
# which an older onnxruntime refuses ("Unsupported model IR version"); onnxruntime 1.14+ reads 8.
BUILT_IR_VERSION = 8

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
    model = ModelProto()
    try:
        data = path.read_bytes()
        if not data:
            raise DiagwiseError(f"'{path}' is empty, not an ONNX model")
        model.ParseFromString(data)
        del data  # the parsed model holds its own copy
    except OSError as exc:
        raise DiagwiseError(f"cannot read '{path}': {exc.strerror}") from None
    except (DecodeError, RuntimeError, ValueError):
        raise DiagwiseError(
            f"'{path}' is not an ONNX model (protobuf parse failed: truncated or another format)"
        ) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise DiagwiseError(f"'{path}' is not an ONNX model (no graph or IR version)")

    check_opsets(model, str(path))
    try:
        # The checker serializes what it checks: give it the model without weight bytes.
        # Weights that get rewritten are checked against their shape when read.
        onnx.checker.check_model(_lenient(skeleton(model, keep_dims=False)))
    except UnicodeDecodeError:
        raise DiagwiseError(f"'{path}' is not a valid ONNX model: a name or string in it is not UTF-8 "
                            "(a damaged file?)") from None
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise DiagwiseError(f"'{path}' is not a valid ONNX model: {first_line(exc, 'validation failed')}") from None

    external_files: list[Path] = []
    for tensor in iter_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        data = read_external(tensor, path.parent)  # onnx's rules: inside the folder, a regular file, in bounds
        location = path.parent / _external_location(tensor)
        if location not in external_files:
            external_files.append(location)
        tensor.raw_data = bytes(data)
        del data
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    file_bytes = path.stat().st_size + sum(f.stat().st_size for f in external_files)
    return LoadedModel(model, path, file_bytes, external_files)


def _lenient(model: ModelProto) -> ModelProto:
    """The checker requires a shape on graph inputs and outputs, onnxruntime does not (an output
    whose rank is unknown is common in exported detectors): give such values an empty shape."""
    for value in list(model.graph.input) + list(model.graph.output):
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and not tensor_type.HasField("shape"):
            tensor_type.shape.SetInParent()
    return model


def as_model(model_or_path: ModelProto | str | os.PathLike, copy: bool = False) -> ModelProto:
    """The model itself (copied if COPY), or the model loaded and checked from a path."""
    if isinstance(model_or_path, ModelProto):
        check_opsets(model_or_path, "the model")
        if not copy:
            return model_or_path
        model = ModelProto()
        model.CopyFrom(model_or_path)
        return model
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path).model
    raise DiagwiseError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def check_opsets(model: ModelProto, where: str) -> None:
    """Refuse opsets newer than onnx knows; warn of ones older than onnxruntime guarantees."""
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            continue
        if opset.version > MAX_OPSET:
            raise DiagwiseError(f"'{where}' uses ai.onnx opset {opset.version}; onnx {onnx.__version__} knows "
                                f"opsets up to {MAX_OPSET} (a newer onnx may)")
        key = (model.graph.name, len(model.graph.node), opset.version)
        if opset.version < MIN_OPSET and key not in _warned_old:
            _warned_old.add(key)
            log.warning(f"'{where}' uses ai.onnx opset {opset.version}, older than the {MIN_OPSET} onnxruntime "
                        "guarantees; going on with the opset unchanged (Conv has meant the same since opset 1)")


def check_output_path(output: str | os.PathLike, protected: list[Path] | None = None) -> None:
    """Fail early, before any work, if OUTPUT cannot be written or is one of the PROTECTED files
    (the input model and every file its tensors reference)."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if output.exists() and output.is_dir():
        raise DiagwiseError(f"output '{output}' is a directory")
    if not parent.exists():
        raise DiagwiseError(f"output directory '{parent}' does not exist")
    if not parent.is_dir():
        raise DiagwiseError(f"output directory '{parent}' is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiagwiseError(f"output '{output}': directory '{parent}' is not writable")
    for index, path in enumerate(protected or ()):
        if same_file(output, path):
            what = "the input model" if index == 0 else f"the input's external data file '{path}'"
            raise DiagwiseError(f"output '{output}' is {what}; writing it would destroy the input, "
                                "choose another path")


def save_model(model: ModelProto, output: str | os.PathLike, external_data: bool | None = None,
               keep_model: bool = True, before_commit: Callable[[Path], None] | None = None,
               protected: list[Path] | None = None) -> Path | None:
    """Write MODEL to OUTPUT atomically; return the external data file written, or None.

    external_data=None chooses it when the model would pass protobuf's 2 GiB limit.  Weights go
    to OUTPUT.<hash of its bytes>.data beside the model, and the pair is committed as one (see
    commit.py): whatever fails or runs at the same time, OUTPUT never refers to another write's
    data, and a failure leaves OUTPUT as it was.  Data files of OUTPUT's earlier versions are
    removed, never a PROTECTED file (what the input reads).  OUTPUT keeps the mode of the file it
    replaces.  MODEL is left as it was; with keep_model=False the tensors written to the data file
    are not put back, which saves a copy of every weight when MODEL is not needed again.
    before_commit(path) runs on the complete temporary model (its data beside it) before the
    commit; if it raises, nothing is written."""
    output = Path(output)
    protected = list(protected or ())
    if external_data is None:
        external_data = weight_bytes(model) > PROTOBUF_LIMIT - 64 * 2**20
    try:
        staging = Staging(output)
    except OSError as exc:
        raise DiagwiseError(f"cannot write '{output}': {exc.strerror or exc}") from None
    tmp_model = staging.folder / output.name
    try:
        data_file = None
        try:
            if external_data:
                data_file = _write_with_external_data(model, output, tmp_model, keep_model, protected)
            else:
                with open(tmp_model, "wb") as f:
                    _write_proto(model, f)
                    f.flush()
                    os.fsync(f.fileno())
        except (ValueError, EncodeError):  # past protobuf's 2 GiB limit
            raise DiagwiseError(f"cannot write '{output}': the model passes protobuf's 2 GiB limit; "
                                "save it with external data") from None
        if before_commit is not None:
            before_commit(tmp_model)
        staging.commit(tmp_model, data_file, protected)
    except OSError as exc:
        raise DiagwiseError(f"cannot write '{output}': {exc.strerror or exc}") from None
    finally:
        staging.close()
    return output.with_name(data_file.name) if data_file is not None else None


def _write_with_external_data(model: ModelProto, output: Path, model_path: Path, restore: bool,
                              protected: list[Path]) -> Path:
    """Move every large tensor's bytes to a data file beside MODEL_PATH, named after OUTPUT and the
    hash of the bytes; serialize; then (if RESTORE) put the bytes back.  Returns the data file."""
    moved: list[TensorProto] = []
    kept: list[bytes] = []
    offset = 0
    digest = hashlib.blake2b(digest_size=8)
    unnamed = model_path.with_name(model_path.name + ".partial")
    try:
        with open(unnamed, "wb") as data_file:
            for tensor in iter_tensors(model):
                if not tensor.HasField("raw_data") or tensor_nbytes(tensor) < EXTERNAL_THRESHOLD:
                    continue
                raw = tensor.raw_data  # a copy: upb hands out bytes, not views
                # Align like onnx does so runtimes can memory-map the file.
                padding = b"\0" * (-offset % 4096)
                for chunk in (padding, raw):
                    data_file.write(chunk)
                    digest.update(chunk)
                offset += len(padding)
                onnx.external_data_helper.set_external_data(tensor, "", offset=offset, length=len(raw))
                tensor.ClearField("raw_data")
                offset += len(raw)
                moved.append(tensor)
                if restore:
                    kept.append(raw)
                del raw
            data_file.flush()
            os.fsync(data_file.fileno())
        name = data_name(output, digest.hexdigest(), protected)
        for tensor in moved:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = name
        data_path = model_path.with_name(name)
        os.replace(unnamed, data_path)
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        return data_path
    finally:
        for tensor, raw in zip(moved, kept):
            tensor.raw_data = raw
            tensor.ClearField("data_location")
            del tensor.external_data[:]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(message, keep: Callable[[int], bool]) -> bytes:
    """The wire format of MESSAGE's fields whose numbers pass KEEP, in field order (no copy of the
    bytes of the fields left out)."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if not keep(descriptor.number):
            continue
        repeated = (descriptor.is_repeated if hasattr(descriptor, "is_repeated")
                    else descriptor.label == descriptor.LABEL_REPEATED)
        if repeated:
            getattr(copy, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(copy, descriptor.name).CopyFrom(value)
        else:
            setattr(copy, descriptor.name, value)
    return copy.SerializeToString()


def _write_proto(model: ModelProto, f) -> None:
    """Write MODEL's wire format piece by piece, one initializer at a time: the same bytes as
    onnx.save, without holding two extra copies of every weight as SerializeToString would.

    Protobuf writes fields in field-number order, so the model is cut there: ModelProto's fields
    before graph (7), the graph, the fields after it; inside the graph, node (1) and name (2),
    then each initializer (5), then the fields after them."""
    graph_number, initializer_number = 7, 5
    graph_tag, initializer_tag = b"\x3a", b"\x2a"  # field 7 / field 5, length-delimited
    head = _fields(model, lambda n: n < graph_number)
    tail = _fields(model, lambda n: n > graph_number)
    graph_head = _fields(model.graph, lambda n: n < initializer_number)
    graph_tail = _fields(model.graph, lambda n: n > initializer_number)
    # graph.ByteSize() would encode the whole graph at once (upb computes sizes by
    # encoding); sizes add up field by field, so measure one initializer at a time.
    sizes = [tensor.ByteSize() for tensor in model.graph.initializer]
    graph_size = len(graph_head) + sum(1 + len(_varint(n)) + n for n in sizes) + len(graph_tail)
    total = len(head) + len(tail) + (1 + len(_varint(graph_size)) + graph_size if model.HasField("graph") else 0)
    if total > PROTOBUF_LIMIT:
        # Writing it would work, but no protobuf parser could read it back.
        raise ValueError("the model passes protobuf's 2 GiB limit")
    f.write(head)
    if model.HasField("graph"):
        f.write(graph_tag + _varint(graph_size))
        f.write(graph_head)
        for tensor, size in zip(model.graph.initializer, sizes):
            f.write(initializer_tag + _varint(size))
            f.write(tensor.SerializeToString())
        f.write(graph_tail)
    f.write(tail)
