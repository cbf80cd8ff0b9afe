"""Indexing TT objects without making them full: numpy-style basic indexing and ``gather_nd``.

Re-exported by :mod:`tensortrain.ops`. Symbols: ``d`` cores, ``n`` mode size, ``r`` TT-rank, ``B`` batch
size, ``K`` number of gathered entries.
"""

from __future__ import annotations

from typing import Any

import torch

from ._transforms import full_precision, valueless
from .errors import ShapeError
from .operands import (
    as_tensor,
    batch_size,
    batched_cores,
    check_has_data,
    check_tt,
    describe,
    is_batch,
    matrix_dims,
    rescale_pow2,
    run_scaled,
    scale_pow2,
    tensor_dims,
    wrap,
)
from .shapes import as_int, past_int64
from .tensor_train import TensorTrainBase

__all__ = ["gather_nd", "getitem"]


def getitem(tt: TensorTrainBase, index: Any) -> Any:
    """Numpy-style basic indexing of a TT-tensor (``tt[1, :, 2:4]``), used by ``TensorTrain.__getitem__``.

    An int selects one slice of a mode: the mode disappears and the ``(r x r')`` slice of its core is
    absorbed into the next kept core (or the previous one at the end), so ranks never grow. A slice keeps the
    mode (a negative step reverses it, as in numpy and t3f; torch tensors refuse negative steps). Missing
    trailing indices and one ``...`` mean ``:``. Indexing every mode with ints returns the entry as a 0-dim
    tensor. For a batch, the first index selects batch elements (int: a :class:`TensorTrain` results; slice,
    list or index tensor: a batch) and the rest index the modes; as in numpy, ``...`` spans the batch axis too
    (``b[..., 1]`` indexes the last mode). An int may be a numpy integer or a 0-dim integer tensor; a tensor
    or array with dims (even one element) is an index tensor, allowed for the batch axis only. TT-matrices
    cannot be indexed (use :func:`gather_nd` for entries).

    Args:
        tt: a TT-tensor or a batch of TT-tensors.
        index: an int, slice, ``...``, or a tuple of them (batch index first for a batch).

    Returns:
        A TT object with the int-indexed modes removed, or a 0-dim tensor (a vector for a batch) when
        every mode is indexed by an int.

    Raises:
        TypeError: an index of an unsupported kind (None, float, bool, a tensor or array with dims for a
            mode), or a TT-matrix.
        IndexError: too many indices, an int out of range, or a slice that selects nothing.
        ValueError: a slice step of zero.

    Complexity: O(d r^3 n') for n' kept mode entries.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((3, 4, 5), tt_rank=2)
        >>> print(a[1, :, 2:4])
        A Tensor Train of shape (4, 2), TT-ranks: (1, 2, 1)
    """
    check_tt(tt, "getitem", "tt")
    if tt.is_tt_matrix():
        raise TypeError(
            f"indexing a TT-matrix ({describe(tt)}) is not supported; use tt.gather_nd(m, indices) for "
            "entries, or transform it first (tt.full densifies)"
        )
    items = list(index) if isinstance(index, tuple) else [index]
    cores = batched_cores(tt)
    batch = is_batch(tt)
    if batch and not items:
        return tt
    # numpy semantics: '...' stands for the axes not indexed, the batch axis included (b[..., 1] indexes
    # the last mode), so it is expanded before the batch index is taken off the front.
    items = _expand_ellipsis(items, len(cores), batch)
    if batch:
        cores, batch = index_batch(cores, items.pop(0), batch_size(tt))
    return _index_modes(cores, items, batch)


def index_batch(cores: list[torch.Tensor], idx: Any, size: int) -> tuple[list[torch.Tensor], bool]:
    """Select batch elements of batched cores ``(B, ...)``; also ``TensorTrainBatch.__getitem__``'s path.

    An integer scalar (int, numpy integer, 0-dim integer tensor) keeps a batch axis of 1 and returns False
    (a single TT object results); a slice, list or index tensor returns True (a batch results).
    """
    i = as_int(idx)
    if i is not None:
        if not -size <= i < size:
            raise IndexError(f"batch index {i} out of range for a batch of {size} elements")
        i %= size
        return [c[i : i + 1] for c in cores], False
    # Scalars that are not integers: bools (torch would read a 0-dim bool as a mask adding an axis), floats,
    # 0-dim float or bool tensors and arrays.
    if isinstance(idx, (bool, float)) or idx is None or getattr(idx, "ndim", None) == 0:
        raise TypeError(f"a batch index must be an int, slice, list or tensor of ints, got {idx!r}")
    if isinstance(idx, slice):
        step = None if idx.step is None else as_int(idx.step)
        if step is not None and not 0 <= step <= size:
            # torch slices take no negative steps (Python's range does, and t3f's did), and steps past int64
            # overflow inside torch: the positions from range
            idx = torch.tensor(range(size)[idx], dtype=torch.long, device=cores[0].device)
        elif step != 0:
            idx = slice(*idx.indices(size))  # bounds clamped here: torch warns about ones past int64
    else:
        # one axis of batch elements: ints or a bool mask (a nested list or a 2-D tensor would index core axes)
        try:  # (a list or array on the cores' device, not the default device)
            idx = idx if isinstance(idx, torch.Tensor) else as_tensor(idx, device=cores[0].device)
        except (TypeError, ValueError, RuntimeError):
            if (big := past_int64(idx)) is not None:
                raise IndexError(f"batch index {big} out of range for a {size} element batch") from None
            raise TypeError(
                f"a batch index must be an int, slice, list or tensor of ints, got {type(idx).__name__}"
            ) from None
        if idx.dim() == 1 and idx.numel() == 0:  # [] reads as float32: say what it selects instead
            raise IndexError(f"batch index {idx.tolist()!r} selects no elements of a {size} element batch")
        if idx.dim() != 1 or idx.is_floating_point() or idx.is_complex():
            raise TypeError(
                f"a batch index must be a 1-D list or tensor of ints (or a bool mask), got "
                f"{tuple(idx.shape)} {idx.dtype} values"
            )
        if idx.dtype == torch.bool and idx.numel() != size:
            raise IndexError(f"a bool mask of {idx.numel()} values for a {size} element batch")
        if idx.dtype != torch.bool:
            # integers of any width are positions, as numpy reads them (torch would take uint8 for a mask and
            # refuse int16 and the wide unsigned types)
            unsigned = not idx.dtype.is_signed
            idx = idx.long()
            if unsigned and bool((idx < 0).any()):  # a uint64 past int64 wrapped around: out of range, not -k
                raise IndexError(
                    f"batch index out of range for a {size} element batch (an unsigned value >= 2**63)"
                )
    picked = [c[idx.to(c.device) if isinstance(idx, torch.Tensor) else idx] for c in cores]
    if picked[0].shape[0] == 0:
        raise IndexError(f"batch index {idx!r} selects no elements of a {size} element batch")
    return picked, True


def _expand_ellipsis(items: list[Any], d: int, batch: bool) -> list[Any]:
    axes = d + 1 if batch else d
    n_ellipsis = sum(1 for it in items if it is Ellipsis)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis:
        at = next(i for i, it in enumerate(items) if it is Ellipsis)
        items = items[:at] + [slice(None)] * max(axes - len(items) + 1, 0) + items[at + 1 :]
    if len(items) > axes:
        if batch:
            raise IndexError(
                f"too many indices: the batch has 1 batch axis and {d} modes but {len(items)} indices were given"
            )
        raise IndexError(f"too many indices: the TT-tensor has {d} modes but {len(items)} were given")
    return items + [slice(None)] * (axes - len(items))


def _index_modes(cores: list[torch.Tensor], items: list[Any], batch: bool) -> Any:
    if any(isinstance(it, slice) for it in items):
        # A TT result: the products that absorb int-indexed slices into a kept core must keep the cores' dtype
        # (autocast lowered them, giving cores of two dtypes); an all-int entry is a product, as gather_nd's.
        with full_precision(cores[0].device.type):
            return _index_kept(cores, items, batch)
    return _index_kept(cores, items, batch)


def _index_kept(cores: list[torch.Tensor], items: list[Any], batch: bool) -> Any:
    kept: list[torch.Tensor] = []
    pending: torch.Tensor | None = None  # (B, r_left, r) product of collapsed slices
    for k, (core, it) in enumerate(zip(cores, items, strict=True)):
        n = core.shape[2]
        if isinstance(it, slice):
            if it.step is not None and it.step == 0:
                raise ValueError(f"mode {k}: slice step cannot be zero")
            if it.step is not None and not 0 < it.step <= n:
                # torch slices take no negative steps (Python's range does, as t3f's strided slices did), and steps
                # past int64 overflow inside torch: the positions from range
                picked = torch.tensor(range(n)[it], dtype=torch.long, device=core.device)
                part = core.index_select(2, picked)
            else:
                part = core[:, :, slice(*it.indices(n))]  # (bounds clamped here: torch warns past int64)
            if part.shape[2] == 0:
                raise IndexError(f"mode {k}: slice {it} selects nothing from a mode of size {n}")
            if pending is not None:
                part = torch.einsum("bar,brns->bans", pending, part)
                pending = None
            kept.append(part)
            continue
        i = _mode_int(it, k, n)
        mat = core[:, :, i]
        pending = mat if pending is None else torch.bmm(pending, mat)
    if not kept:
        assert pending is not None
        res = pending[:, 0, 0]
        return res if batch else res[0]
    if pending is not None:
        kept[-1] = torch.einsum("bans,bst->bant", kept[-1], pending)
    return wrap(kept, batch)


def _mode_int(it: Any, k: int, n: int) -> int:
    i = as_int(it)
    if i is None:
        # An index array (even of one element) would keep the mode in dense indexing; getitem has no such
        # selection, so only integer scalars (0-dim integer tensors included) and slices are accepted.
        shape = getattr(it, "shape", None)
        if isinstance(it, (bool, float)) or it is None:
            got = repr(it)
        elif shape is not None:
            got = f"{type(it).__name__} of shape {tuple(shape)} and dtype {getattr(it, 'dtype', '?')}"
        else:
            got = type(it).__name__
        raise TypeError(
            f"mode {k}: index must be an int or a slice, got {got}; use tt.gather_nd for index arrays"
        )
    if not -n <= i < n:
        raise IndexError(f"mode {k}: index {i} out of range for a mode of size {n}")
    return i % n


def gather_nd(tt: TensorTrainBase, indices: torch.Tensor | Any) -> torch.Tensor:
    """Entries of a TT object at a list of multi-indices, without building the full tensor.

    ``indices`` has shape ``(..., c)``; each row is one entry:

    * TT-tensor: ``c = d`` mode indices.
    * TT-matrix: ``c = 2d`` mode indices (row modes, then column modes), or ``c = 2`` dense
      ``(row, column)`` indices, unravelled into modes (row-major). For ``d = 1`` both readings agree.
    * Batch: one more column first, the batch index (t3f's convention).

    Args:
        tt: a TT object.
        indices: an integer tensor (or nested list) of shape ``(..., c)``; indices must be in range
            (negative indices are not wrapped).

    Returns:
        A tensor of shape ``indices.shape[:-1]``.

    Raises:
        TypeError: ``indices`` is not integer.
        ShapeError: the last dim of ``indices`` does not match the object.
        IndexError: an index out of range (under ``vmap`` over the indices, whose values cannot be read on the
            host, the gather's own message).

    Complexity: O(K d r^2) after gathering ``K`` core slices per mode.

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.random_tensor((3, 4, 5), tt_rank=2)
        >>> tt.gather_nd(a, torch.tensor([[0, 1, 2], [2, 3, 4]])).shape
        torch.Size([2])
    """
    check_tt(tt, "gather_nd", "tt")
    try:
        idx = indices if isinstance(indices, torch.Tensor) else as_tensor(indices, device=tt.device)
    except (TypeError, ValueError, RuntimeError):  # (None, strings, ragged lists: torch's own messages)
        if (big := past_int64(indices)) is not None:
            raise IndexError(f"gather_nd: index {big} out of range for shape {tuple(tt.shape)}") from None
        raise TypeError(
            f"gather_nd: indices must be an integer tensor, array or nested list, got {type(indices).__name__}"
        ) from None
    if idx.numel() == 0 and not isinstance(indices, torch.Tensor):
        # an empty list has no dtype of its own (as_tensor makes it float32): its shape is what is wrong
        idx = idx.long()
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"gather_nd: indices must be an integer tensor, got dtype {idx.dtype}")
    check_has_data(idx, tt.device, "gather_nd", "indices")
    idx = idx.to(device=tt.device, dtype=torch.long)
    if idx.dim() == 0:
        raise ShapeError("gather_nd: indices must have at least one dim (..., c), got a scalar")
    out_shape = idx.shape[:-1]
    # (an explicit row count: a reshape to (-1, 0) of an empty index tensor is ambiguous)
    idx = idx.reshape(out_shape.numel(), idx.shape[-1])
    cores = batched_cores(tt)
    if is_batch(tt):
        if idx.shape[1] == 0:  # (the batch column is split off below: torch's own IndexError otherwise)
            raise ShapeError(
                f"gather_nd: indices for a batch need a batch column and one per mode, got {idx.shape[1]} "
                f"columns for {describe(tt)}"
            )
        bidx, idx = idx[:, 0], idx[:, 1:]
        bad_b = _check_range(bidx, batch_size(tt), "batch index")
        if bad_b is not None:  # (vmap: past the batch, which the gather refuses)
            bidx = torch.where(bad_b, batch_size(tt), bidx)
    else:
        bidx = torch.zeros(idx.shape[0], dtype=torch.long, device=idx.device)
    mode_idx, bad = _mode_indices(tt, idx)
    d = len(cores)
    if tt.is_tt_matrix():  # one merged index per core: (row mode, column mode) -> i * n_k + j
        mode_idx = torch.stack(
            [mode_idx[:, k] * c.shape[3] + mode_idx[:, d + k] for k, c in enumerate(cores)], dim=1
        )
        cores = [c.reshape(c.shape[0], c.shape[1], -1, c.shape[-1]) for c in cores]
    if bad is not None:
        # vmap over the indices, whose values cannot be read: a row with an index out of range (set to 0 above)
        # takes the first core's mode count as its first index, which the gather refuses (a sentinel value
        # could land in range once unravelled or merged, or overflow)
        first = torch.where(bad, cores[0].shape[2], mode_idx[:, 0])
        mode_idx = torch.cat([first.unsqueeze(1), mode_idx[:, 1:]], dim=1)
    # (cores of unbalanced scales: every step scaled by a power of two)
    owner = bidx if is_batch(tt) else None
    return run_scaled(lambda scaled: _sweep_entries(cores, mode_idx, owner, scaled), cores).reshape(out_shape)


_CHUNK = 1 << 22  # elements of a step's intermediate (16 MiB in float32): entries are swept in chunks of rows


def _sweep_entries(
    cores: list[torch.Tensor], idx: torch.Tensor, bidx: torch.Tensor | None, scaled: bool
) -> torch.Tensor:
    """Entries ``idx`` ``(K, d)`` of the TT (batch elements ``bidx``, or ``None`` for a single TT) with cores
    ``(B, r, n, r')``: a ``(K, r)`` state swept core by core, in chunks of rows, so that memory stays near
    ``K r`` (all the ``(K, r, r')`` core slices at once took ``d K r^2``: 100 GB for 10^6 entries at rank 64).
    A step either gathers each row's slice ``(r, r')`` and multiplies (batches; or when ``r <= n``), or
    multiplies the state by the whole core ``(r, n r')`` and picks each row's mode (fewer bytes moved when the
    slices are larger than the products). Scaled: the state is brought below 1 by a power of two per row at
    every step, the exponents put back at the end."""
    k_all = idx.shape[0]
    widest = max(max(c.shape[1], c.shape[2]) * c.shape[3] for c in cores)
    step = max(1, _CHUNK // widest)
    parts = []
    for start in range(0, k_all, step):
        rows = idx[start : start + step]
        k = rows.shape[0]
        v, exps = cores[0].new_ones(k, 1), None
        for j, core in enumerate(cores):
            _, r0, n, r1 = core.shape
            if bidx is not None:  # each row's slice of its own batch element: (k, r0, r1)
                slices = core[bidx[start : start + step], :, rows[:, j]]
                v = torch.bmm(v.unsqueeze(1), slices).squeeze(1)
            elif r0 <= n:
                c = core[0]
                v = torch.bmm(v.unsqueeze(1), c[:, rows[:, j]].permute(1, 0, 2)).squeeze(1)
            else:
                c = core[0]
                w = (v @ c.reshape(r0, n * r1)).reshape(k, n, r1)
                v = w.gather(1, rows[:, j].view(k, 1, 1).expand(k, 1, r1)).squeeze(1)
            if scaled:
                v, exps = rescale_pow2(v, exps)
        v = v.squeeze(1)
        parts.append(v if exps is None else scale_pow2(v, exps))
    return torch.cat(parts) if parts else cores[0].new_zeros(0)


def _mode_indices(tt: TensorTrainBase, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One index per mode ``(K, d)`` (rows then columns for a TT-matrix), range-checked; and, under ``vmap`` over
    the indices, the rows with one out of range (their indices replaced by 0: :func:`gather_nd` marks them)."""
    extra = 1 if is_batch(tt) else 0
    if not tt.is_tt_matrix():
        dims = tensor_dims(tt)
        if idx.shape[1] != len(dims):
            raise ShapeError(
                f"gather_nd: indices must have {len(dims) + extra} columns for a TT-tensor of raw shape "
                f"{describe(tt)}, got {idx.shape[1] + extra}"
            )
        return _zeroed(idx, _check_ranges(idx, dims))
    rows, cols = matrix_dims(tt)
    d = len(rows)
    if idx.shape[1] == 2 and d > 1:
        bad_r = _check_range(idx[:, 0], int(tt.shape[-2]), "row index")
        bad_c = _check_range(idx[:, 1], int(tt.shape[-1]), "column index")
        if bad_r is None or bad_c is None:
            return torch.cat([_unravel(idx[:, 0], rows), _unravel(idx[:, 1], cols)], dim=1), None
        safe, bad = _zeroed(idx, bad_r | bad_c)
        return torch.cat([_unravel(safe[:, 0], rows), _unravel(safe[:, 1], cols)], dim=1), bad
    if idx.shape[1] != 2 * d:
        raise ShapeError(
            f"gather_nd: indices for a TT-matrix of raw shape {describe(tt)} need {2 * d + extra} "
            f"columns (row modes, column modes) or {2 + extra} (row, column), got {idx.shape[1] + extra}"
        )
    return _zeroed(idx, _check_ranges(idx, (*rows, *cols)))


def _zeroed(idx: torch.Tensor, bad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``idx`` with the rows ``bad`` marks set to 0 (in range: :func:`gather_nd` marks them past it later), and
    ``bad``."""
    return (idx, None) if bad is None else (torch.where(bad.unsqueeze(1), 0, idx), bad)


def _unravel(flat: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mode indices ``(K, len(dims))`` of flat indices in ``[0, prod(dims))``."""
    out = []
    for n in reversed(dims[1:]):
        out.append(flat % n)
        flat = flat // n
    out.append(flat)
    return torch.stack(out[::-1], dim=1)


_functorch = getattr(torch._C, "_functorch", None)


def _vmapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by ``vmap`` (under any other transforms' wrappers: ``grad``'s, ``functionalize``'s):
    its values cannot be read on the host there, a data-dependent branch is refused."""
    if _functorch is None or not hasattr(_functorch, "is_batchedtensor"):
        return False
    while True:
        if _functorch.is_batchedtensor(t):
            return True
        if not (_functorch.is_gradtrackingtensor(t) or _functorch.is_functionaltensor(t)):
            return False
        t = _functorch.get_unwrapped(t)


def _masked(values: torch.Tensor) -> bool:
    """Whether the range checks give a mask instead of reading values on the host: while torch.compile traces
    (a branch on values would break the graph, and its gathers wrap negative indices) and under ``vmap`` (which
    refuses the branch). (Compiling first: dynamo does not trace the functorch queries.)"""
    return torch.compiler.is_compiling() or (not valueless(values) and _vmapped(values))


def _check_range(values: torch.Tensor, n: int, what: str) -> torch.Tensor | None:
    """An IndexError naming the first of ``values`` out of ``[0, n)``. Under ``vmap`` or torch.compile
    (:func:`_masked`) the mask of those out of range instead, for :func:`gather_nd` to make the gather refuse
    them (rather than wrap a negative index or, for a row or column of a TT-matrix, read another entry); else
    None."""
    if not values.numel():
        return None
    masked = _masked(values)
    if not masked and valueless(values):  # (meta and fake values outside compile: nothing to read)
        return None
    # (a size past int64 cannot be compared with a tensor, and no int64 index reaches it)
    bad = (values < 0) if n > torch.iinfo(torch.long).max else ((values < 0) | (values >= n))
    if masked:
        return bad
    if bool(bad.any()):
        raise IndexError(f"gather_nd: {what} {values[bad][0].item()} out of range [0, {n})")
    return None


def _check_ranges(idx: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """:func:`_check_range` for every column ``k`` (mode ``k``) of ``idx`` ``(K, len(dims))`` at once: one sync,
    not two per mode; where :func:`_masked`, the mask ``(K,)`` of rows with an index out of range."""
    if not idx.numel():
        return None
    high = torch.tensor(dims, dtype=idx.dtype, device=idx.device)
    if _masked(idx):
        return ((idx < 0) | (idx >= high)).any(dim=1)
    if valueless(idx):  # (meta and fake indices outside compile have no values to check)
        return None
    if bool(((idx < 0) | (idx >= high)).any()):
        for k, n in enumerate(dims):  # (the first column at fault, with _check_range's message)
            _check_range(idx[:, k], n, f"mode {k} index")
    return None
