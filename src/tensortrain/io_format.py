"""The tensortrain file format: its constants, ``TTFileError`` and the checks a file passes before it is read.

A file written by ``tt.save`` (format version 1) is a safetensors file whose header metadata holds the TT
structure as JSON under ``STRUCTURE_KEY`` (``io``'s docstring shows the layout). Everything read from a file
is hostile until checked here: the safetensors header (length prefix, JSON, ``data_offsets`` that tile the
data with no gap or overlap, the data size against the file's), the structure entry (version, kind, batch,
dtype, ``d``, TT-ranks, raw shape) and the tensor table (names, shapes and dtypes against that structure).
Every problem raises ``TTFileError`` naming the file. ``io`` (``save``, ``load``, ``read_metadata``) builds on
this module; the checks live apart from it because they are most of the reading side's code and none of its
API.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import torch

FORMAT_VERSION = 1
STRUCTURE_KEY = "tensortrain"  # the header metadata entry that holds the TT structure
HEADER_LIMIT = 100_000_000  # safetensors' own cap on the JSON header size

# safetensors' dtype codes for the dtypes a core can have (complex ones are stored as view_as_real).
STORABLE = {
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


def parse_header(
    path: Path, data: bytes, header_only: bool = False, data_bytes: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate the safetensors header and the TT structure; return (structure, user metadata).

    ``header_only``: ``data`` holds the header alone; ``data_bytes`` then says how many bytes follow it in
    the file (checked against the sizes the header declares)."""
    header = _read_header(path, data, header_only)
    if header_only and data_bytes is not None:
        _check_data_size(path, header, data_bytes)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or STRUCTURE_KEY not in meta:
        keys = sorted(k for k in header if k != "__metadata__")
        raise TTFileError(
            f"{path}: a safetensors file but not one written by tt.save (no {STRUCTURE_KEY!r} header entry; "
            f"its tensors are {keys[:8]}{' ...' if len(keys) > 8 else ''}); load it with "
            "safetensors.torch.load_file"
        )
    try:
        info = json.loads(meta[STRUCTURE_KEY])
    except (TypeError, ValueError) as e:
        raise TTFileError(f"{path}: the {STRUCTURE_KEY!r} header entry is not valid JSON ({e})") from e
    _check_info(path, info)
    user = {k: v for k, v in meta.items() if k != STRUCTURE_KEY}
    return info, user


def _read_header(path: Path, data: bytes, header_only: bool) -> dict[str, Any]:
    if len(data) < 8:
        raise TTFileError(f"{path}: too short to be a safetensors file ({len(data)} bytes; truncated?)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > HEADER_LIMIT or 8 + size > len(data):
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
        raise TTFileError(f"{path}: the {STRUCTURE_KEY!r} header entry is not a JSON object")
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
    return dtype if isinstance(dtype, torch.dtype) and dtype in STORABLE else None


# safetensors' names of the dtypes the cores are stored in (complex ones as their real view)
_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def check_tensors(
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


def cores_from(path: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The cores in order, each checked against the shape and dtype the header promises."""
    stored = {
        name: (tuple(t.shape), _CODES.get(t.dtype, str(t.dtype).removeprefix("torch.")))
        for name, t in tensors.items()
    }
    check_tensors(path, info, stored)
    complex_ = _dtype(info["dtype"]) in (torch.complex64, torch.complex128)
    return [
        torch.view_as_complex(tensors[f"core_{k}"]) if complex_ else tensors[f"core_{k}"]
        for k in range(info["d"])
    ]
