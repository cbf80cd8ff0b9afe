"""What ``tensortrain inspect`` does (its options are in :mod:`tensortrain.cli`), and the reading of model
checkpoints that ``tensortrain compress`` shares.

Thin over the library: ``inspect`` reads a ``tt.save`` file (``tt.load``, ``tt.read_metadata``) or a model
checkpoint (a safetensors or ``torch.save`` state dict, read with ``weights_only=True``) and describes its TT
layers from the shapes of their cores (``<prefix>cores.<k>``, core ``k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``).

Every failure the user can fix raises :class:`CommandError`, whose one-line message the command prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from .compression_report import fmt_dims, text_table
from .io import TTFileError, load, read_metadata
from .tensor_train import TensorTrainBatch

__all__ = ["CommandError", "inspect_path", "read_state_dict", "run_inspect"]

# "<prefix>cores.<k>", prefix "" or ending in "."; a core torch.nn.utils.prune reroutes is stored as
# "cores.<k>_orig" (its mask a buffer "cores.<k>_mask"), one torch.nn.utils.parametrize moves as
# "cores.parametrizations.<k>.original"
_CORE_KEY = re.compile(r"^((?:.*\.)?)cores\.(?:(\d+)(_orig)?|parametrizations\.(\d+)\.original)$")
# {"state_dict": {...}} / {"model": {...}} / PyTorch's checkpoint recipe's {"model_state_dict": {...}, "epoch": ...}
_WRAPPERS = ("state_dict", "model", "model_state_dict")
META_KEY = "tensortrain_compress"  # the header entry compress writes into a safetensors checkpoint
_EXTRA_STATE = "_extra_state"  # torch's key for what a module's get_extra_state returns (any picklable value)


class CommandError(Exception):
    """A failure the user can fix (missing file, bad option value, wrong object): the message is one line.

    Example:
        >>> str(CommandError("x.pt: not a state dict"))
        'x.pt: not a state dict'
    """


def one_line(err: BaseException) -> str:
    """An exception as ``"Type: message"`` on one line (torch and safetensors messages span several)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch.load's messages carry terminal colours
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- reading
def _probe(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    """The tensor shapes and header metadata of a safetensors file (its data is not read), or None when the
    file is not one (then it may be a torch file).

    Raises:
        CommandError: the file is missing, or is named ``*.safetensors`` and safetensors cannot read it."""
    if not path.is_file():
        raise CommandError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:  # (unreadable, safetensors and torch.load each blame the format)
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CommandError(f"{path}: cannot read it ({err.strerror or one_line(err)})") from err
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return shapes, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError
        if path.suffix == ".safetensors":  # say what safetensors finds wrong, not torch.load's view of it
            raise CommandError(f"{path}: unreadable safetensors file ({one_line(err)})") from err
        return None


def _archive(path: Path) -> str | None:
    """Which whole-program archive ``path`` is, a zip that ``torch.load`` cannot read as a state dict: a
    TorchScript one (``torch.jit.save``: ``<name>/constants.pkl``), a ``torch.export`` one (``torch.export.save``:
    ``<name>/archive_format``, no ``data.pkl``); None for any other file."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.split("/", 1)[-1] for n in z.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if "constants.pkl" in names:  # (torch.load warns that it dispatches to torch.jit.load, then refuses it)
        return "a TorchScript archive (torch.jit.save)"
    if "archive_format" in names and "data.pkl" not in names:
        # (torch.load's own message says the checkpoint is likely corrupted: it finds no data.pkl)
        return "a torch.export archive (torch.export.save)"
    return None


def _torch_load(path: Path) -> Any:
    archive = _archive(path)
    if archive is not None:
        raise CommandError(f"{path}: {archive}, not a state dict; save model.state_dict() instead")
    try:
        # sparse tensors checked on load, explicitly: what a reader of untrusted files wants. (Left implicit, torch
        # 2.11 and 2.12 warn that the checks are off, and 2.14 that it runs them for weights_only=True; the
        # filters keep those warnings out of the report)
        with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants(True):
            for message in ("Validating sparse tensor invariants", "Sparse invariant checks are implicitly"):
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n\n|$)", text, re.S)
        reason = " ".join(found.group(1).split()) if found else ""
        if reason.startswith("Unsupported global") and "tensortrain." in reason:
            raise CommandError(
                f"{path}: a pickled tensortrain object ({reason}); TT objects are saved with tt.save and "
                "read with tt.load, models as their state_dict()"
            ) from err
        if reason.startswith("Unsupported global"):
            raise CommandError(
                f"{path}: torch.load(weights_only=True) refuses it ({reason}): a pickled object, not a state "
                "dict; save model.state_dict() instead"
            ) from err
        raise CommandError(
            f"{path}: neither a safetensors file nor a torch file torch.load can read "
            f"({reason or one_line(err)})"
        ) from err


def _is_extra_state(key: object) -> bool:
    return isinstance(key, str) and (key == _EXTRA_STATE or key.endswith("." + _EXTRA_STATE))


def _unwrap(path: Path, obj: Any) -> dict[str, Any]:
    """A flat ``str -> Tensor`` mapping, possibly under ``"state_dict"`` or ``"model"`` one level down; the
    values under ``<prefix>_extra_state`` keys (a module's ``get_extra_state``) may be anything."""
    if isinstance(obj, Mapping) and not all(
        isinstance(v, torch.Tensor) or _is_extra_state(k) for k, v in obj.items()
    ):
        inner = [obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if inner:
            obj = inner[0]
    if not isinstance(obj, Mapping):
        raise CommandError(
            f"{path}: not a state dict: the file holds a {type(obj).__name__}, expected a mapping of names to "
            f"tensors (or one under {' / '.join(map(repr, _WRAPPERS))})"
        )
    bad = [
        (k, v)
        for k, v in obj.items()
        if not isinstance(k, str) or not (isinstance(v, torch.Tensor) or _is_extra_state(k))
    ]
    if bad:
        k, v = bad[0]
        more = f" (and {len(bad) - 1} more such entries)" if len(bad) > 1 else ""
        what = (
            f"key {k!r} is a {type(k).__name__}, expected a str name"
            if not isinstance(k, str)
            else f"entry {k!r} is a {type(v).__name__}, expected a tensor"
        )
        raise CommandError(
            f"{path}: not a state dict: {what}{more} (a mapping of names to tensors, or one under "
            f"{' / '.join(map(repr, _WRAPPERS))})"
        )
    odd = next((k for k, v in obj.items() if isinstance(v, torch.Tensor) and v.is_nested), None)
    if odd is not None:
        raise CommandError(f"{path}: entry {odd!r} is a nested tensor: a model's state dict holds none")
    return dict(obj)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state dict: a safetensors file, or a torch file read with ``weights_only=True``.

    Args:
        path: the checkpoint; a torch file may hold the state dict itself or under ``"state_dict"`` /
            ``"model"``.

    Returns:
        The tensors by name, on the CPU (and the modules' extra states, under their ``_extra_state`` keys).

    Raises:
        CommandError: the file is missing, unreadable, a pickled object ``weights_only`` refuses, or not a
            mapping of names to tensors; the message names the file.

    Example:
        >>> state = read_state_dict("model.safetensors")  # doctest: +SKIP
    """
    p = Path(path)
    if _probe(p) is not None:
        try:
            return safetensors.torch.load_file(str(p), device="cpu")
        except Exception as err:
            raise CommandError(f"{p}: unreadable safetensors file ({one_line(err)})") from err
    return _unwrap(p, _torch_load(p))


# ---------------------------------------------------------------------------------------------- inspect
def _describe_tt_file(path: Path) -> dict[str, Any]:
    try:
        obj, metadata = load(path), read_metadata(path)
    except TTFileError as err:
        raise CommandError(str(err)) from err
    batch = obj.batch_size if isinstance(obj, TensorTrainBatch) else None
    entries = math.prod(obj.shape)  # the dense shape, a batch's leading size included
    params = obj.num_parameters()
    return {
        "path": str(path),
        "kind": "tt",
        "description": str(obj),
        "tt_kind": "matrix" if obj.is_tt_matrix() else "tensor",
        "batch_size": batch,
        "raw_shape": obj.raw_shape,
        "tt_ranks": obj.tt_ranks,
        "dtype": str(obj.dtype).removeprefix("torch."),
        "parameters": params,
        "dense_entries": entries,
        "compression": entries / params if params else None,
        "metadata": metadata,
    }


def _core_index(found: re.Match[str]) -> int:
    return int(found.group(2) if found.group(2) is not None else found.group(4))


def _core_problem(name: str, found: dict[int, tuple[int, ...]]) -> str | None:
    """Why the cores found (by index) do not form a TT-matrix, or None."""
    prefix = f"{name}." if name else ""
    # a gap is below len(found); never list up to the largest index, which a file may set to anything
    missing = next((k for k in range(len(found)) if k not in found), None)
    if missing is not None:
        indices = sorted(found)
        shown = f"{indices[:8]}"[:-1] + (", ...]" if len(indices) > 8 else "]")
        return f"{prefix}cores.{missing} is missing (found cores {shown})"
    shapes = [found[k] for k in range(len(found))]
    bad = [(k, s) for k, s in enumerate(shapes) if len(s) != 4]
    if bad:
        k, s = bad[0]
        return f"{prefix}cores.{k} has shape {s}, expected 4-D (r_{{k-1}}, m_k, n_k, r_k)"
    dims = shapes
    if dims[0][0] != 1 or dims[-1][3] != 1:
        return f"the boundary TT-ranks are {dims[0][0]} and {dims[-1][3]}, expected 1 and 1"
    for k in range(len(dims) - 1):
        if dims[k][3] != dims[k + 1][0]:
            return (
                f"{prefix}cores.{k} ends with rank {dims[k][3]} but {prefix}cores.{k + 1} starts with "
                f"rank {dims[k + 1][0]}: the TT-ranks do not chain"
            )
    return None


def _tt_layer(name: str, found: dict[int, tuple[int, ...]], has_bias: bool) -> dict[str, Any]:
    problem = _core_problem(name, found)
    params = sum(math.prod(s) for s in found.values())
    layer: dict[str, Any] = {"name": name, "parameters": params, "bias": has_bias, "problem": problem}
    if problem is not None:
        return layer
    cores = [found[k] for k in range(len(found))]
    rows, cols = [s[1] for s in cores], [s[2] for s in cores]
    dense = math.prod(rows) * math.prod(cols)
    return {
        **layer,
        "rows": math.prod(rows),
        "cols": math.prod(cols),
        "row_dims": rows,
        "col_dims": cols,
        "tt_ranks": [s[0] for s in cores] + [1],
        "dense_entries": dense,
        "compression": dense / params if params else None,
    }


def _describe_state_dict(
    path: Path,
    fmt: str,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str] | None,
    aliases: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``aliases``: key -> the first key holding the same tensor (tied weights, a module under two names), which
    the totals count once."""
    aliases = aliases or {}
    groups: dict[str, dict[int, tuple[int, ...]]] = {}
    keys: dict[str, dict[int, str]] = {}
    for key, shape in shapes.items():
        found = _CORE_KEY.match(key)
        if found:
            k = _core_index(found)
            groups.setdefault(found.group(1), {})[k] = shape
            keys.setdefault(found.group(1), {})[k] = key
    layers = []
    for prefix, cores in groups.items():
        layer = _tt_layer(prefix.removesuffix("."), cores, f"{prefix}bias" in shapes)
        rerouted = {k: key for k, key in keys[prefix].items() if key != f"{prefix}cores.{k}"}
        layer["pruned"] = sorted(k for k, key in rerouted.items() if key.endswith("_orig"))
        layer["parametrized"] = sorted(k for k, key in rerouted.items() if not key.endswith("_orig"))
        targets = [aliases.get(keys[prefix][k]) for k in cores]
        matches = [_CORE_KEY.match(t) if t else None for t in targets]
        owners = {m.group(1) if m else None for m in matches}
        # every core is another layer's: one layer under two names
        only = owners.pop() if len(owners) == 1 else None
        layer["shared_with"] = None if only is None else only.removesuffix(".")
        layers.append(layer)
    tt_params = sum(
        math.prod(shape) for key, shape in shapes.items() if _CORE_KEY.match(key) and key not in aliases
    )
    total = sum(math.prod(s) for k, s in shapes.items() if k not in aliases)
    return {
        "path": str(path),
        "kind": "state_dict",
        "format": fmt,
        "tensors": len(shapes),
        "shared_tensors": len(aliases),
        "tt_layers": layers,
        "tt_parameters": tt_params,
        "other_parameters": total - tt_params,
        "total_parameters": total,
        "metadata": metadata,
    }


def storage_aliases(state: dict[str, Any]) -> dict[str, str]:
    """key -> the first key of the same tensor (same storage, offset, shape, strides and dtype), for tensors a
    ``torch.save`` file stores once under several names (tied weights, shared modules)."""
    first: dict[tuple[Any, ...], str] = {}
    out = {}
    for key, t in state.items():
        # (sparse tensors have no storage of their own, and meta ones all have data_ptr 0)
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_meta or t.numel() == 0:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ident in first:
            out[key] = first[ident]
        else:
            first[ident] = key
    return out


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a ``tt.save`` file or a model checkpoint as a JSON-friendly dict (what ``inspect`` prints).

    Raises:
        CommandError: the file is missing, unreadable or not a state dict.
    """
    p = Path(path)
    header = _probe(p)
    if header is not None and "tensortrain" in header[1]:
        return _describe_tt_file(p)
    if header is not None:
        shapes, metadata = dict(header[0]), header[1]
        # safetensors.torch.save_model stores a shared tensor once and each other name as metadata
        # {"other.name": "kept.name"}: those names are aliases, as torch.save files' shared storages are
        aliases = {k: v for k, v in (metadata or {}).items() if k not in shapes and v in shapes}
        shapes.update({k: shapes[v] for k, v in aliases.items()})
        rest = {k: v for k, v in (metadata or {}).items() if k not in aliases}
        return _describe_state_dict(p, "safetensors", shapes, rest if metadata is not None else None, aliases)
    state = _unwrap(p, _torch_load(p))
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return _describe_state_dict(p, "torch", shapes, None, storage_aliases(state))


def _tt_file_text(info: dict[str, Any]) -> list[str]:
    ratio = "-" if info["compression"] is None else f"{info['compression']:,.1f}x"
    return [
        f"{info['path']}: a tt.save file",
        f"  {info['description']}",
        f"  dtype: {info['dtype']}",
        f"  parameters (cores): {info['parameters']:,}",
        f"  dense entries: {info['dense_entries']:,}",
        f"  compression: {ratio}",
        f"  metadata: {info['metadata'] or 'none'}",
    ]


def _state_dict_text(info: dict[str, Any]) -> list[str]:
    layers = info["tt_layers"]
    lines = [
        f"{info['path']}: a state dict ({info['format']}), {info['tensors']} tensors, {len(layers)} TT layers"
    ]
    ok = [layer for layer in layers if layer["problem"] is None and layer.get("shared_with") is None]
    if ok:
        head = ("layer", "rows x cols", "dims", "tt_ranks", "params", "dense", "ratio", "bias")
        rows = [head] + [
            (
                layer["name"] or "(model)",
                f"{layer['rows']} x {layer['cols']}",
                f"{fmt_dims(layer['row_dims'])}x{fmt_dims(layer['col_dims'])}",
                fmt_dims(layer["tt_ranks"]),
                f"{layer['parameters']:,}",
                f"{layer['dense_entries']:,}",
                f"{layer['compression']:,.1f}x" if layer["compression"] else "-",
                "yes" if layer["bias"] else "no",
            )
            for layer in ok
        ]
        lines += ["  " + line for line in text_table(rows)]
        lines.append(
            "  (rows x cols: the TT weight's, out x in for TTLinear and vocabulary x dim for TTEmbedding, either "
            "padded where the layer's sizes do not factor into balanced modes)"
        )
    for layer in layers:
        for how in ("pruned", "parametrized"):
            if layer.get(how) and layer["problem"] is None:
                lines.append(
                    f"  {layer['name'] or '(model)'}: cores {layer[how]} {how}: the table counts their stored "
                    f"originals, which the layer {'masks' if how == 'pruned' else 'parametrizes'}"
                )
        if layer["problem"] is not None:
            lines.append(f"  {layer['name'] or '(model)'}: not a valid TT layer: {layer['problem']}")
        elif layer.get("shared_with") is not None:
            lines.append(
                f"  {layer['name'] or '(model)'}: the same tensors as {layer['shared_with'] or '(model)'} (one layer "
                "under two names, counted once)"
            )
    shared = info.get("shared_tensors", 0)
    lines.append(
        f"  parameters: {info['tt_parameters']:,} in TT cores, {info['other_parameters']:,} in other "
        f"tensors (buffers included), {info['total_parameters']:,} in total"
        + (f" ({shared} tensors stored under a second name counted once)" if shared else "")
    )
    if info["metadata"]:
        lines += [f"  metadata {k}: {v}" for k, v in sorted(info["metadata"].items())]
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    """``tensortrain inspect PATH [PATH ...] [--json]``: describe each file; exit 1 if any could not be read.

    Example:
        >>> from tensortrain.cli import main
        >>> main(["inspect", "w.safetensors", "model.pt"])  # doctest: +SKIP
    """
    results: list[dict[str, Any]] = []
    status = 0
    for path in args.paths:
        try:
            info = inspect_path(path)
        except (CommandError, OSError) as err:  # OSError: e.g. a file we may not read
            text = str(err) if isinstance(err, CommandError) else one_line(err)
            print(f"tensortrain: error: {text}", file=sys.stderr)
            results.append({"path": str(path), "error": text})
            status = 1
            continue
        results.append(info)
        if not args.json:
            lines = _tt_file_text(info) if info["kind"] == "tt" else _state_dict_text(info)
            print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return status
