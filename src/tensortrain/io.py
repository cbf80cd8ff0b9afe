"""Saving and loading TT objects: safetensors files with the TT structure in the header, atomic writes.

File layout (format version 1): a standard safetensors file whose tensors are the cores ``core_0`` ...
``core_{d-1}`` (complex cores are stored as ``torch.view_as_real``, since safetensors has no complex128) and
whose header metadata holds, under the key ``"tensortrain"``, a JSON object::

    {"format_version": 1, "kind": "tensor" | "matrix", "batch": bool, "batch_size": int | null,
     "d": int, "raw_shape": [...], "tt_ranks": [...], "dtype": "float32", ...}

Any other header entries are the caller's own ``metadata`` (``str -> str``), returned by
:func:`read_metadata`. Other tools that read safetensors (``safetensors.torch.load_file``) read the cores.

Writes are atomic: the bytes go to a temporary file in the target's folder, are flushed and fsync'ed, and
the temporary file is renamed over the target (``os.replace``), so a failed or interrupted save leaves the
previous file untouched. (A device or FIFO, such as ``/dev/null``, is written into as a plain open would: there
is nothing to rename over it.) Reads validate everything before building the object, and every problem with a
file's content raises :class:`TTFileError` (a ``ValueError``) naming the file.

Symbols: ``d`` number of cores, ``n`` largest mode size, ``r`` largest TT-rank, ``B`` batch size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import numbers
import os
import secrets
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import safetensors.torch
import torch

from .errors import ShapeError
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = ["TTFileError", "load", "read_metadata", "save"]

FORMAT_VERSION = 1
_KEY = "tensortrain"  # the header metadata entry that holds the TT structure
_HEADER_LIMIT = 100_000_000  # safetensors' own cap on the JSON header size

# safetensors' dtype codes for the dtypes a core can have (complex ones are stored as view_as_real).
_STORABLE = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
}


class TTFileError(ValueError):
    """A file is not a readable tensortrain file: truncated, corrupt, not safetensors, or another kind.

    A subclass of ``ValueError``; the message names the file and what is wrong with it.

    Example:
        >>> import tensortrain as tt
        >>> issubclass(tt.TTFileError, ValueError)
        True
    """


PathLike = str | os.PathLike[str]


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
        TypeError: ``obj`` is not a TT object, or ``metadata`` has non-string keys or values.
        ValueError: ``metadata`` uses the reserved key or is too large for a safetensors header (100 MB), or
            the cores' dtype cannot be stored.
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
    header = _header_entries(obj, metadata)
    tensors = {f"core_{k}": _storable(c, k) for k, c in enumerate(obj.tt_cores)}
    try:
        data = safetensors.torch.save(tensors, metadata=header)
    except safetensors.SafetensorError as err:  # (a header over its 100 MB limit; it derives from Exception)
        raise ValueError(f"tt.save: safetensors cannot write this file: {err}") from err
    target = Path(path)
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


def names_folder(path: PathLike) -> bool:
    """Whether ``path`` ends with a separator (``"ckpt/"``): it names a folder, which ``Path`` would silently
    turn into a file name (``open`` refuses such a path with ``IsADirectoryError``)."""
    text = os.fspath(path)
    return text.endswith(tuple(s for s in (os.sep, os.altsep) if s))


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
        if _KEY in metadata:
            raise ValueError(f"tt.save: the metadata key {_KEY!r} is reserved for the TT structure")
        entries.update(metadata)
    if obj.dtype not in _STORABLE:
        raise ValueError(
            f"tt.save: cores of dtype {obj.dtype} cannot be stored; storable dtypes are "
            f"{sorted(str(t) for t in _STORABLE)} (cast first, e.g. tt.cast(obj, torch.float32))"
        )
    batch = isinstance(obj, TensorTrainBatch)
    entries[_KEY] = json.dumps(
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


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to the file descriptor (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``.

    The temporary name is unique and created exclusively (mode 0o666 minus the umask, as a plain open
    would), so concurrent writers never collide; it is removed if anything fails. It has a fixed length
    (``.tt-<12 hex>.tmp``), not the target's name plus a suffix, which would exceed the file system's
    name limit (often 255 bytes) for long but legal target names. As a write into the file would, it
    follows a symbolic link (the link stays, its target gets the data), keeps an existing file's mode (a file
    restricted to its owner stays so) and refuses a write-protected file. An existing target that is not a
    regular file (a device such as ``/dev/null``, a FIFO) is written into directly: renaming a file over it
    would replace the device.

    Raises:
        OSError: the temporary file cannot be created (e.g. ``PermissionError`` in a read-only folder),
            re-raised as the same type naming ``path``; or writing, syncing or renaming failed.
    """
    if special_file(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    path = Path(os.path.realpath(path))  # replacing a link would leave the file it points to stale
    if path.exists() and not os.access(path, os.W_OK):
        # a rename needs only the folder's write permission: it would replace a write-protected file, which
        # open() refuses (a checkpoint made read-only to guard it)
        raise PermissionError(errno.EACCES, "Permission denied: the file is write-protected", str(path))
    tmp = path.with_name(f".tt-{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:  # the caller asked for path: name it, not our hidden temporary file
        raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
    try:
        try:
            with contextlib.suppress(FileNotFoundError):  # (a new file keeps the umask's mode)
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def special_file(path: PathLike) -> bool:
    """Whether ``path`` exists (through links) and is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# -------------------------------------------------------------------------------------------- loading
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
            float: ``tt.load`` does not cast).
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
    path = Path(path)
    data = path.read_bytes()
    info, _ = _parse(path, data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError) on bad data
        raise TTFileError(f"{path}: not a valid safetensors file ({e})") from e
    cores = _cores_from(path, info, tensors)
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
        OSError: the file cannot be read.

    Complexity: O(size of the header).

    Example:
        >>> import torch, tensortrain as tt, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.safetensors")
        >>> tt.save(tt.TensorTrain([torch.ones(1, 2, 1)]), path, metadata={"note": "hi"})
        >>> tt.read_metadata(path)
        {'note': 'hi'}
    """
    path = Path(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        data = prefix + f.read(min(size, _HEADER_LIMIT))
        # the data are not read, but a file shorter than its header says is truncated all the same
        total = os.fstat(f.fileno()).st_size
    info, user = _parse(path, data, header_only=True, data_bytes=total - len(data))
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
    _check_tensors(path, info, stored)
    return user


def _parse(
    path: Path, data: bytes, header_only: bool = False, data_bytes: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate the safetensors header and the TT structure; return (structure, user metadata).

    ``header_only``: ``data`` holds the header alone; ``data_bytes`` then says how many bytes follow it in
    the file (checked against the sizes the header declares)."""
    header = _read_header(path, data, header_only)
    if header_only and data_bytes is not None:
        _check_data_size(path, header, data_bytes)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or _KEY not in meta:
        keys = sorted(k for k in header if k != "__metadata__")
        raise TTFileError(
            f"{path}: a safetensors file but not one written by tt.save (no {_KEY!r} header entry; "
            f"its tensors are {keys[:8]}{' ...' if len(keys) > 8 else ''}); load it with "
            "safetensors.torch.load_file"
        )
    try:
        info = json.loads(meta[_KEY])
    except (TypeError, ValueError) as e:
        raise TTFileError(f"{path}: the {_KEY!r} header entry is not valid JSON ({e})") from e
    _check_info(path, info)
    user = {k: v for k, v in meta.items() if k != _KEY}
    return info, user


def _read_header(path: Path, data: bytes, header_only: bool) -> dict[str, Any]:
    if len(data) < 8:
        raise TTFileError(f"{path}: too short to be a safetensors file ({len(data)} bytes; truncated?)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > _HEADER_LIMIT or 8 + size > len(data):
        raise TTFileError(
            f"{path}: not a safetensors file or truncated (header claims {size} bytes, "
            f"file has {len(data) - 8} after the length prefix)"
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TTFileError(f"{path}: not a safetensors file (its header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise TTFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    if not header_only:
        _check_data_size(path, header, len(data) - 8 - size)
    return header


def _check_data_size(path: Path, header: dict[str, Any], available: int) -> None:
    # A file cut after its header is the commonest truncation: say so instead of safetensors' message.
    needed = _data_bytes(path, header)
    if available < needed:
        raise TTFileError(
            f"{path}: truncated: the header describes {needed} data bytes, the file has {available}"
        )
    if available > needed:  # as load refuses it (safetensors: "not fully covered")
        raise TTFileError(
            f"{path}: {available - needed} bytes follow the {needed} data bytes the header describes (appended to "
            "or not written by tt.save)"
        )


def _data_bytes(path: Path, header: dict[str, Any]) -> int:
    """The data bytes the header's tensor table describes, once its entries' ``data_offsets`` are checked to tile
    them with no gap or overlap, as safetensors requires: an entry without valid offsets, or with offsets that
    overlap another's, was called a file with bytes appended."""
    spans = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise TTFileError(
                f"{path}: the header's entry {k!r} has no valid data_offsets (two byte offsets, start <= end): "
                f"{offsets!r}"
            )
        spans.append((offsets[0], offsets[1], k))
    end = 0
    for start, stop, k in sorted(spans):
        if start != end:
            raise TTFileError(
                f"{path}: the header's data_offsets {'overlap' if start < end else 'leave a gap'} at entry {k!r} "
                f"(it starts at byte {start}, the entries before it end at {end})"
            )
        end = stop
    return end


def _count(x: Any) -> TypeGuard[int]:
    """A positive JSON integer (``true`` is not one, though Python's bool is an int)."""
    return type(x) is int and x >= 1


def _check_info(path: Path, info: Any) -> None:
    if not isinstance(info, dict):
        raise TTFileError(f"{path}: the {_KEY!r} header entry is not a JSON object")
    version = info.get("format_version")
    if not _count(version):
        raise TTFileError(f"{path}: missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise TTFileError(
            f"{path}: written in format version {version}, this tensortrain reads up to {FORMAT_VERSION}; "
            "upgrade tensortrain"
        )
    expected = {"kind": str, "batch": bool, "raw_shape": list, "tt_ranks": list, "dtype": str}
    for key, kind in expected.items():
        if not isinstance(info.get(key), kind):
            raise TTFileError(f"{path}: header field {key!r} is missing or not a {kind.__name__}")
    if info["kind"] not in ("tensor", "matrix"):
        raise TTFileError(f"{path}: header field 'kind' is {info['kind']!r}, expected 'tensor' or 'matrix'")
    if info["batch"] and not _count(info.get("batch_size")):
        raise TTFileError(f"{path}: a batch without a valid batch_size ({info.get('batch_size')!r})")
    if _dtype(info["dtype"]) is None:
        raise TTFileError(f"{path}: unknown dtype {info['dtype']!r} in the header")
    d = info.get("d")
    if not _count(d):
        raise TTFileError(f"{path}: header field 'd' is missing or not a positive int ({d!r})")
    ranks = info["tt_ranks"]
    if len(ranks) != d + 1 or not all(_count(r) for r in ranks):
        raise TTFileError(f"{path}: invalid TT-ranks {ranks!r} for d={d}")
    if ranks[0] != 1 or ranks[-1] != 1:  # (load refuses such cores: read_metadata must too)
        raise TTFileError(f"{path}: invalid TT-ranks {ranks!r}: boundary TT-ranks must be 1")
    raw = info["raw_shape"]
    groups = raw if info["kind"] == "matrix" else [raw]
    if len(groups) != (2 if info["kind"] == "matrix" else 1) or not all(
        isinstance(g, list) and len(g) == d and all(_count(n) for n in g) for g in groups
    ):
        raise TTFileError(f"{path}: invalid raw_shape {raw!r} for a TT-{info['kind']} with d={d}")


def _dtype(name: str) -> torch.dtype | None:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype in _STORABLE else None


# safetensors' names of the dtypes the cores are stored in (complex ones as their real view)
_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _check_tensors(
    path: Path, info: dict[str, Any], stored: Mapping[str, tuple[tuple[int, ...], str]]
) -> None:
    """The stored tensors (name -> (shape, safetensors dtype code)) are exactly the cores the header promises."""
    d, ranks = info["d"], info["tt_ranks"]
    names = [f"core_{k}" for k in range(d)]
    if set(stored) != set(names):
        raise TTFileError(
            f"{path}: expected tensors {names}, found {sorted(stored)} (the file does not match its header)"
        )
    dtype = _dtype(info["dtype"])
    assert dtype is not None  # checked in _check_info
    real = dtype.to_real()
    raw = info["raw_shape"]
    for k, name in enumerate(names):
        modes = [raw[0][k], raw[1][k]] if info["kind"] == "matrix" else [raw[k]]
        shape = (ranks[k], *modes, ranks[k + 1])
        if info["batch"]:
            shape = (info["batch_size"], *shape)
        if dtype.is_complex:
            shape = (*shape, 2)
        got_shape, got_code = stored[name]
        if tuple(got_shape) != shape or got_code != _CODES[real]:
            named = {v: str(k) for k, v in _CODES.items()}
            raise TTFileError(
                f"{path}: {name} has shape {tuple(got_shape)} and dtype {named.get(got_code, got_code)}, the "
                f"header promises {shape} and {real}"
            )


def _cores_from(path: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The cores in order, each checked against the shape and dtype the header promises."""
    stored = {
        name: (tuple(t.shape), _CODES.get(t.dtype, str(t.dtype).removeprefix("torch.")))
        for name, t in tensors.items()
    }
    _check_tensors(path, info, stored)
    complex_ = _dtype(info["dtype"]) in (torch.complex64, torch.complex128)
    return [
        torch.view_as_complex(tensors[f"core_{k}"]) if complex_ else tensors[f"core_{k}"]
        for k in range(info["d"])
    ]
