"""Saving and loading TT objects: safetensors files with the TT structure in the header, atomic writes.

File layout (format version 1): a standard safetensors file whose tensors are the cores ``core_0`` ...
``core_{d-1}`` (complex cores are stored as ``torch.view_as_real``, since safetensors has no complex128) and
whose header metadata holds, under the key ``"tensortrain"``, a JSON object::

    {"format_version": 1, "kind": "tensor" | "matrix", "batch": bool, "batch_size": int | null,
     "d": int, "raw_shape": [...], "tt_ranks": [...], "dtype": "float32", ...}

Any other header entries are the caller's own ``metadata`` (``str -> str``), returned by
:func:`read_metadata`. Other tools that read safetensors (``safetensors.torch.load_file``) read the cores.

Writes are atomic (``files.atomic_write``): the bytes go to a temporary file in the target's folder, are
flushed and fsync'ed, and the temporary file is renamed over the target (``os.replace``), so a failed or
interrupted save leaves the previous file untouched. (A device or FIFO, such as ``/dev/null``, is written into
as a plain open would: there is nothing to rename over it.) Reads validate everything before building the
object (the checks of ``io_format``, which also defines the format's constants), and every problem with a
file's content raises :class:`TTFileError` (a ``ValueError``) naming the file.

Symbols: ``d`` number of cores, ``n`` largest mode size, ``r`` largest TT-rank, ``B`` batch size.
"""

from __future__ import annotations

import json
import numbers
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from .errors import ShapeError
from .files import PathLike, atomic_write, names_folder, path_text
from .io_format import (
    FORMAT_VERSION,
    HEADER_LIMIT,
    STORABLE,
    STRUCTURE_KEY,
    TTFileError,
    check_tensors,
    cores_from,
    parse_header,
)
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = ["TTFileError", "load", "read_metadata", "save"]


# --------------------------------------------------------------------------------------------- saving
def save(obj: TensorTrainBase, path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Save a :class:`TensorTrain` or :class:`TensorTrainBatch` to a safetensors file, atomically.

    The cores are detached and copied to the CPU; the file records the kind (TT-tensor or TT-matrix),
    whether it is a batch, the raw shape, the TT-ranks and the dtype, so that :func:`load` rebuilds the
    same object. An existing file at ``path`` is replaced only once the new one is completely on disk.
    Only the cores and the structure are stored: a tangent vector (:mod:`tensortrain.riemannian`) loads as a
    plain TT without its ``projection_on``; project it again after loading (or pickle it whole).

    Args:
        obj: the TT object to save.
        path: the file to write (conventionally ``*.safetensors``); its folder must exist.
        metadata: optional extra ``str -> str`` entries for the header (e.g. a description); the key
            ``"tensortrain"`` is reserved. Read them back with :func:`read_metadata`.

    Raises:
        TypeError: ``obj`` is not a TT object, ``path`` is not a file name (a str or ``os.PathLike``), or
            ``metadata`` has non-string keys or values.
        ValueError: ``metadata`` uses the reserved key, holds text that is not encodable as UTF-8 (lone
            surrogates, as ``os.fsdecode`` makes of a file name that is not UTF-8) or is too large for a
            safetensors header (100 MB), or the cores' dtype cannot be stored.
        OSError: the file cannot be written, e.g. ``path`` is a folder or its folder does not exist (the
            previous file, if any, is left as it was).

    Complexity: O(d n^2 r^2) time and memory (one copy of the cores; ``B`` times that for a batch).

    Example:
        >>> import torch, tensortrain as tt, tempfile, os
        >>> a = tt.TensorTrain([torch.ones(1, 3, 2), torch.ones(2, 4, 1)])
        >>> path = os.path.join(tempfile.mkdtemp(), "a.safetensors")
        >>> tt.save(a, path)
        >>> print(tt.load(path))
        A Tensor Train of shape (3, 4), TT-ranks: (1, 2, 1)
    """
    if not isinstance(obj, TensorTrainBase):
        raise TypeError(
            f"tt.save saves a TensorTrain or TensorTrainBatch, got {type(obj).__name__}; for a model "
            "save its state_dict (torch.save or safetensors.torch.save_file)"
        )
    target = _file_path(path, "tt.save")
    header = _header_entries(obj, metadata)
    tensors = {f"core_{k}": _storable(c, k) for k, c in enumerate(obj.tt_cores)}
    try:
        data = safetensors.torch.save(tensors, metadata=header)
    except safetensors.SafetensorError as err:  # (a header over its 100 MB limit; it derives from Exception)
        raise ValueError(f"tt.save: safetensors cannot write this file: {err}") from err
    if target.is_dir() or names_folder(path):
        raise IsADirectoryError(
            f"tt.save: {os.fspath(path)} is a folder; give a file name such as {target / 'tt.safetensors'}"
        )
    blocking = next((p for p in target.parents if p.exists()), None)  # the nearest existing folder, or a file
    if blocking is not None and not blocking.is_dir():  # (as open() reports it)
        raise NotADirectoryError(f"tt.save: {blocking} is not a folder, so it cannot hold {target}")
    if not target.parent.is_dir():  # (else the error would name the temporary file, not the missing folder)
        raise FileNotFoundError(f"tt.save: the folder {target.parent} does not exist; create it first")
    atomic_write(target, data)


def _header_entries(obj: TensorTrainBase, metadata: Mapping[str, str] | None) -> dict[str, str]:
    entries: dict[str, str] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"tt.save: metadata must be a mapping of str to str, got {type(metadata).__name__}"
            )
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"tt.save: metadata must map str to str, got {key!r}: {type(value).__name__}")
            for text, what in ((key, f"key {key!r} is"), (value, f"entry {key!r}: its value is")):
                # (a lone surrogate, as os.fsdecode makes of a file name that is not UTF-8: the codec's own
                # error named neither the metadata nor the entry)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise ValueError(
                        f"tt.save: the metadata {what} not encodable as UTF-8, which safetensors headers are: "
                        f"it holds {text[err.start : err.end]!r} at position {err.start}"
                    ) from None
        if STRUCTURE_KEY in metadata:
            raise ValueError(f"tt.save: the metadata key {STRUCTURE_KEY!r} is reserved for the TT structure")
        entries.update(metadata)
    if obj.dtype not in STORABLE:
        raise ValueError(
            f"tt.save: cores of dtype {obj.dtype} cannot be stored; storable dtypes are "
            f"{sorted(str(t) for t in STORABLE)} (cast first, e.g. tt.cast(obj, torch.float32))"
        )
    batch = isinstance(obj, TensorTrainBatch)
    entries[STRUCTURE_KEY] = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "kind": "matrix" if obj.is_tt_matrix() else "tensor",
            "batch": batch,
            "batch_size": obj.batch_size if isinstance(obj, TensorTrainBatch) else None,
            "d": obj.ndims(),
            "raw_shape": obj.raw_shape,
            "tt_ranks": obj.tt_ranks,
            "dtype": str(obj.dtype).removeprefix("torch."),
        }
    )
    return entries


def _storable(core: torch.Tensor, k: int) -> torch.Tensor:
    # A fresh contiguous CPU copy: safetensors refuses tensors that share storage (batch views do).
    c = core.detach()
    if c.device.type == "meta":
        raise ValueError(f"tt.save: core {k} is on the meta device and has no data to save")
    if c.is_complex():
        c = torch.view_as_real(c.resolve_conj())  # a lazily conjugated view (x.conj()) has no real view
    return c.to("cpu", copy=True).contiguous()


# -------------------------------------------------------------------------------------------- loading
def _file_path(path: object, fn: str) -> Path:
    """``path`` as a Path; a TypeError naming ``fn`` for anything but a str or an ``os.PathLike`` of str (a file
    object or bytes got pathlib's own message, which named neither: files are written atomically, by name)."""
    text = path_text(path)
    if text is not None:
        return Path(text)
    raise TypeError(f"{fn}: path must be a file name (a str or os.PathLike), got {type(path).__name__}")


def load(path: PathLike, device: torch.device | str | int | None = None) -> TensorTrain | TensorTrainBatch:
    """Load a TT object written by :func:`save`.

    Args:
        path: the file to read.
        device: where to put the cores (default: the CPU).

    Returns:
        A :class:`TensorTrain` or :class:`TensorTrainBatch` with the saved cores (not requiring grad).

    Raises:
        TTFileError: the file is truncated or corrupt, is not a safetensors file, is a safetensors file
            that :func:`save` did not write, was written by a newer format version, or its cores disagree
            with its recorded structure. The message names the file.
        TypeError: ``device`` is not a device, a device string or an int index (a dtype, a Python type, a
            float: ``tt.load`` does not cast), or ``path`` is not a file name (a str or ``os.PathLike``).
        OSError: the file cannot be read (e.g. ``FileNotFoundError``).

    Complexity: O(d n^2 r^2) time and memory (``B`` times that for a batch).

    Example:
        >>> import torch, tensortrain as tt, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> tt.save(tt.TensorTrain([torch.ones(1, 2, 3, 1)]), path)
        >>> tt.load(path).is_tt_matrix()
        True
    """
    if isinstance(device, torch.dtype):
        raise TypeError(
            f"tt.load: device must be a torch.device or a string such as 'cpu', got the dtype {device} (tt.load "
            "does not cast: use tt.cast on the result)"
        )
    if device is not None and (
        isinstance(device, bool) or not isinstance(device, (str, torch.device, numbers.Integral))
    ):  # (Tensor.to reads a Python type, a number or a tensor as a dtype to cast to)
        raise TypeError(
            f"tt.load: device must be a torch.device, a string such as 'cpu' or a device index, got "
            f"{type(device).__name__} {device!r} (tt.load does not cast: use tt.cast on the result)"
        )
    path = _file_path(path, "tt.load")
    data = path.read_bytes()
    info, _ = parse_header(path, data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError) on bad data
        raise TTFileError(f"{path}: not a valid safetensors file ({e})") from e
    cores = cores_from(path, info, tensors)
    if device is not None:
        # (a NumPy integer as an index: Tensor.to reads it as a plain number, not a device)
        place = device if isinstance(device, (str, torch.device, int)) else int(device)
        cores = [c.to(place) for c in cores]
    try:
        return TensorTrainBatch(cores) if info["batch"] else TensorTrain(cores)
    except (ShapeError, TypeError) as e:
        raise TTFileError(f"{path}: the stored cores do not form a TT object: {e}") from e


def read_metadata(path: PathLike) -> dict[str, str]:
    """The caller's own header entries of a file written by :func:`save` (without the TT structure).

    Args:
        path: the file to read (only its header is parsed).

    Returns:
        The ``metadata`` mapping given to :func:`save` (empty if none was given).

    Raises:
        TTFileError: as :func:`load`.
        TypeError: ``path`` is not a file name (a str or ``os.PathLike``).
        OSError: the file cannot be read.

    Complexity: O(size of the header).

    Example:
        >>> import torch, tensortrain as tt, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.safetensors")
        >>> tt.save(tt.TensorTrain([torch.ones(1, 2, 1)]), path, metadata={"note": "hi"})
        >>> tt.read_metadata(path)
        {'note': 'hi'}
    """
    path = _file_path(path, "tt.read_metadata")
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        data = prefix + f.read(min(size, HEADER_LIMIT))
        # the data are not read, but a file shorter than its header says is truncated all the same
        total = os.fstat(f.fileno()).st_size
    info, user = parse_header(path, data, header_only=True, data_bytes=total - len(data))
    # the tensor table too (offsets, dtypes, shapes against the structure), without reading the data: a file
    # load refuses is refused here as well
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            stored = {}
            for name in f.keys():
                part = f.get_slice(name)
                stored[name] = (tuple(part.get_shape()), part.get_dtype())
    except Exception as e:  # SafetensorError is not a ValueError
        raise TTFileError(f"{path}: not a valid safetensors file ({e})") from e
    check_tensors(path, info, stored)
    return user
