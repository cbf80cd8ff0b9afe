"""Functional forms of the TT layers: ``tt_linear`` and ``tt_embedding``, cost-planned (neither builds the
dense weight unless its cost model finds that cheaper, and never the embedding table).

Symbols: ``d`` number of cores, ``m_k`` row modes (``M = prod m_k``), ``n_k`` column modes (``N = prod n_k``),
``r`` the largest TT-rank, ``B`` the number of input rows (all leading dims together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import contraction
from .._transforms import full_precision, traced_unflatten, transforms_active, valueless
from ..contraction.plans import Strategy
from ..errors import ShapeError, fx_hint
from ..operands import check_strided
from ..shapes import as_int
from ..tensor_train import CORE_DTYPES, TensorTrain
from .embedding_lookup import INT64_MAX, embedding_rows

__all__ = ["tt_embedding", "tt_linear"]


def _check_tt_matrix(fn: str, weight: object) -> TensorTrain:
    if not isinstance(weight, TensorTrain) or not weight.is_tt_matrix():
        kind = type(weight).__name__
        if isinstance(weight, TensorTrain):
            kind = "TT-tensor"
        raise TypeError(f"{fn}: weight must be a TT-matrix TensorTrain, got a {kind}")
    return weight


def tt_linear(input: torch.Tensor, weight: TensorTrain, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ W.T + bias`` for a TT-matrix ``W`` of shape ``out x in``, as ``F.linear``, cost-planned.

    Computes ``input @ transpose(W)`` with :func:`tensortrain.contraction.linear` (all leading dims of ``input``
    as rows): a sweep over merged core groups or building W and one GEMM, whichever its cost model prices
    lower for this batch size; ``tensortrain.contraction.plan(weight, batch)`` shows the choice.

    Args:
        input: a dense tensor of shape ``(..., in_features)``.
        weight: a TT-matrix :class:`~tensortrain.TensorTrain` of shape ``out_features x in_features`` (row
            dims = output dims, column dims = input dims), exactly like ``nn.Linear.weight``.
        bias: an optional tensor of shape ``(out_features,)``.

    Returns:
        A tensor of shape ``(..., out_features)``.

    Raises:
        TypeError: a weight that is not a TT-matrix TensorTrain.
        ShapeError: the input's last dim is not ``in_features``, a bias of the wrong shape, or dtypes/devices
            that differ from the weight's. (A layer's cores that are not 4-D, or of a dtype below 16 bits, get
            the same errors as a TensorTrain's.)

    Shape:
        - input: ``(*, N)``; output: ``(*, M)``; bias: ``(M,)``.

    Complexity: O(B d r^2 max_k(M_<k N_>=k)) time (M_<k = m_1...m_{k-1}, N_>=k = n_k...n_d); O(B r
    max_k(M_<=k N_>k)) memory for the intermediate.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.TensorTrain([torch.randn(1, 2, 3, 2), torch.randn(2, 2, 3, 1)])  # 4 x 9
        >>> tt.nn.functional.tt_linear(torch.randn(5, 9), w).shape
        torch.Size([5, 4])
    """
    weight = _check_tt_matrix("tt_linear", weight)
    return linear_cores(input, weight.tt_cores, bias)


def check_core_dtype(fn: str, cores: Sequence[torch.Tensor]) -> None:
    """Refuse cores of a dtype TT objects refuse (a layer cast to float8 or complex32 by ``Module.to``, as
    ``.weight`` refuses it), in TensorTrain's words under ``fn``'s name. Callers on a layer's per-call path test
    ``cores[0].dtype not in CORE_DTYPES`` first (a set lookup, no call)."""
    try:
        TensorTrain(list(cores))
    except TypeError as e:
        raise TypeError(f"{fn}: {str(e).removeprefix('TensorTrain: ')}") from None


def linear_cores(
    input: torch.Tensor,
    cores: tuple[torch.Tensor, ...],
    bias: torch.Tensor | None = None,
    cache: dict | None = None,
    strategy: Strategy = "auto",
    max_saved: int | None = None,
) -> torch.Tensor:
    """:func:`tt_linear` on cores that already form a valid TT-matrix (``TTLinear.forward``'s path).

    Skips building and validating a :class:`TensorTrain` view, which at batch 1 costs about as much as the
    contraction itself; the operands are checked as in :func:`tt_linear`. ``cache``: the layer's dict for
    merged super-cores kept between inference calls; ``strategy``: a (valid) strategy name and ``max_saved``: a
    (valid) ``max_saved_bytes``, as in :func:`tensortrain.contraction.linear`.
    """
    if not isinstance(input, torch.Tensor):  # as nn.Linear: a TypeError, not an AttributeError from .dim()
        raise TypeError(f"tt_linear: input must be a Tensor, got {type(input).__name__}{fx_hint(input)}")
    # (before the shape read below, which a nested tensor fails with torch's internal error)
    if input.is_nested:
        contraction.check_operand("tt_linear", "input", input, cores[0])
    c0 = cores[0]
    meta = c0.is_meta
    m = n = 1
    for c in cores:  # a plain loop, one shape read per core: this runs on every layer call
        shape = c.shape
        if len(shape) != 4:  # (cores swapped in by functional_call, a batch of them outside vmap: not sizes)
            k = next(k for k, c in enumerate(cores) if c.dim() != 4)
            raise ShapeError(
                f"tt_linear: a TT-matrix's cores are 4-D (r_k-1, m_k, n_k, r_k), core {k} has shape {tuple(shape)}"
            )
        if c.is_meta is not meta:
            # checked up front, unlike other mixed devices (below): torch multiplies a CPU tensor by a meta one
            # into an uninitialised CPU tensor, no error to catch
            _refuse_mixed_cores(cores, None)
        m *= shape[1]
        n *= shape[2]
    if input.dim() == 0 or input.shape[-1] != n:
        in_dims = tuple(int(c.shape[2]) for c in cores)
        got = "a scalar" if input.dim() == 0 else f"{input.shape[-1]} features (shape {tuple(input.shape)})"
        raise ShapeError(f"tt_linear: input has {got} but the TT weight has {n} columns (in dims {in_dims})")
    if c0.dtype not in CORE_DTYPES:  # (before the operand check, whose hint would name the cores' dtype)
        check_core_dtype("tt_linear", cores)
    contraction.check_operand("tt_linear", "input", input, c0)
    if bias is not None:
        contraction.check_bias("tt_linear", bias, m, c0)
    # x @ W^T with all leading dims as rows, in the order tensortrain.contraction's cost model picks.
    try:
        return contraction.apply_unchecked(input, cores, bias, n, strategy, cache=cache, max_saved=max_saved)
    except RuntimeError as e:
        # a core replaced by one of another dtype or device (the first core's are checked above): said here,
        # after the fact, as checking every core costs a layer call at batch 1 about a tenth of its time
        _refuse_mixed_cores(cores, e)
        raise


def _refuse_mixed_cores(cores: tuple[torch.Tensor, ...], cause: RuntimeError | None) -> None:
    """Raise for the first core whose dtype or device differs from core 0's, if any."""
    c0 = cores[0]
    for k, c in enumerate(cores):
        if c.dtype != c0.dtype or c.device != c0.device:
            raise ShapeError(
                f"tt_linear: core 0 has dtype {c0.dtype} on {c0.device} but core {k} has dtype {c.dtype} on "
                f"{c.device}; a TT layer's cores must share one dtype and device"
            ) from cause


_WIDE_UNSIGNED = tuple(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n))


def _check_indices(fn: str, input: torch.Tensor, num_embeddings: int, device: torch.device) -> bool:
    """Refuse indices of a wrong type, device or value; returns whether their values were checked (not while
    tracing, on meta tensors, during CUDA graph capture, or for no indices)."""
    if (
        not isinstance(input, torch.Tensor)
        or input.is_floating_point()
        or input.is_complex()
        or input.dtype == torch.bool  # a mask, not indices (nn.Embedding refuses it too)
        or input.dtype in _WIDE_UNSIGNED  # (min/max are not implemented for them; nn.Embedding refuses them)
    ):
        kind = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(
            f"{fn}: indices must be an integer tensor of a signed type or uint8 (e.g. torch.long), got {kind}"
            f"{fx_hint(input)}"
        )
    check_strided(fn, "indices", input)
    if input.device != device:
        raise ShapeError(f"{fn}: indices are on {input.device} but the weight is on {device}")
    if input.numel() == 0 or transforms_active() or valueless(input):
        # Under torch.compile / torch.export a value check would be a data-dependent graph break (and meta
        # and fake tensors have no values; while a CUDA graph is captured, reading one would end it); there the
        # lookup itself refuses indices past the table (the first mode is not wrapped, see
        # embedding_lookup._tt_rows).
        return False
    lo, hi = torch.stack(torch.aminmax(input)).tolist()  # (one sync)
    if lo < 0 or hi >= num_embeddings:
        out = input < 0 if num_embeddings > INT64_MAX else (input < 0) | (input >= num_embeddings)
        bad = input[out].unique()[:5].tolist()
        raise IndexError(
            f"{fn}: indices must be in [0, {num_embeddings}), got out-of-range values {bad} "
            f"(min {lo}, max {hi})"
        )
    return True


def tt_embedding(
    input: torch.Tensor,
    weight: TensorTrain,
    padding_idx: int | None = None,
    num_embeddings: int | None = None,
) -> torch.Tensor:
    """Rows of a TT-matrix embedding table, as ``F.embedding``, without building the table.

    Each distinct index is unravelled into row modes ``(i_1, ..., i_d)``; the cores' slices ``G_k[:, i_k]``
    are gathered and multiplied (TT-Rec's lookup). Rows of ``padding_idx`` are zero in the output and pass
    no gradient back to the cores.

    Args:
        input: an integer tensor of indices, any shape.
        weight: a TT-matrix of shape ``V' x D``: row dims factor the (possibly padded) vocabulary ``V'``,
            column dims factor ``embedding_dim`` ``D``.
        padding_idx: an optional index whose output row is zero (negative values count from the end).
        num_embeddings: the valid vocabulary size ``V <= V'`` (default ``V'``); larger indices are errors.

    Returns:
        A tensor of shape ``(*input.shape, D)`` with the weight's dtype and device.

    Raises:
        TypeError: a weight that is not a TT-matrix, or indices that are not integers.
        IndexError: indices outside ``[0, num_embeddings)`` (the message lists some of them). Under
            ``torch.compile``, ``torch.export`` and ``torch.func``, and while a CUDA graph is captured, no value
            check runs: the gather refuses such indices itself, with its own error (a ``RuntimeError`` naming a
            core's mode size; on CUDA a device-side assert, as ``nn.Embedding``'s).
        ShapeError: ``num_embeddings`` larger than the table, or indices on another device.
        ValueError: ``padding_idx`` outside ``[-num_embeddings, num_embeddings)``.

    Shape:
        - input: ``(*)``; output: ``(*, D)``.

    Complexity: O(U d r^2 D) for U distinct indices core by core; through two merged halves (chosen when
    cheaper, see ``tensortrain.nn.embedding_lookup``) O((V_L D_L + V_R D_R) r^2 + U D r).

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.TensorTrain([torch.randn(1, 4, 2, 3), torch.randn(3, 5, 4, 1)])  # 20 x 8 table
        >>> tt.nn.functional.tt_embedding(torch.tensor([[0, 7], [19, 3]]), w).shape
        torch.Size([2, 2, 8])
    """
    return _embedding(input, _check_tt_matrix("tt_embedding", weight), padding_idx, num_embeddings, None)


def padding_index(fn: str, padding_idx: Any, v: int) -> int | None:
    """``padding_idx`` as an index in ``[0, v)`` (negative ones count from the end), or None."""
    if padding_idx is None:
        return None
    k = as_int(padding_idx)
    if k is None:  # 2.5 or "3" would never match an index: the padding would silently do nothing
        raise TypeError(f"{fn}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -v <= k < v:
        raise ValueError(f"{fn}: padding_idx must be within [-{v}, {v}), got {k}")
    return k % v


def _embedding(
    input: torch.Tensor,
    weight: TensorTrain,
    padding_idx: int | None,
    num_embeddings: int | None,
    cache: dict | None,
) -> torch.Tensor:
    """:func:`tt_embedding` for a checked TT-matrix; ``cache``: a layer's dict in which inference keeps the
    merged halves of the cores between calls (``TTEmbedding.forward``).

    A lookup is not an autocast op (``F.embedding`` returns the table's dtype under autocast): the products that
    form the rows run in the cores' precision.
    """
    voc_dims, emb_dims = weight.get_raw_shape()
    v_pad, dim = math.prod(voc_dims), math.prod(emb_dims)
    if num_embeddings is None:
        v = v_pad
    else:
        got = as_int(num_embeddings)
        if got is None:  # ("10", 2.5 or True are mistakes, not row counts)
            raise TypeError(f"tt_embedding: num_embeddings must be an int, got {num_embeddings!r}")
        if got < 1:
            raise ValueError(f"tt_embedding: num_embeddings must be >= 1, got {got}")
        v = got
    if v > v_pad:
        raise ShapeError(
            f"tt_embedding: num_embeddings={v} exceeds the table's {v_pad} rows (voc dims {tuple(voc_dims)})"
        )
    checked = _check_indices("tt_embedding", input, v, weight.device)
    padding_idx = padding_index("tt_embedding", padding_idx, v)
    flat = input.reshape(-1).long()
    # (decided by the check itself, not by reading the flags again: torch's compile flag is process-wide, and
    # another thread's compile ending in between let an index into the padded rows through both)
    if not checked:
        # No value check ran (_check_indices): send every index outside [0, V) to V', whose first-mode digit
        # (m_1) the lookup's index_select refuses. Without this the padded rows [V, V') of the table would be
        # returned. Not -1: inductor's and onnxruntime's gathers wrap negative indices (-1 read row V' - 1,
        # silently), and refuse only those past the end. (A table past int64 rows has no V' to write: -1 there)
        valid = flat >= 0 if v > INT64_MAX else (flat >= 0) & (flat < v)
        flat = torch.where(valid, flat, v_pad if v_pad <= INT64_MAX else -1)
    if padding_idx is not None and padding_idx > INT64_MAX:
        padding_idx = None  # (no int64 index can be it: a table past int64 rows)
    pad = None if padding_idx is None else flat == padding_idx
    if pad is not None:
        # padding positions look up another row (masked below), so that no gradient path runs through the padding
        # row's own product: an overflowed (inf) row times the zero gradient gave NaN core gradients. That row is
        # one a real position looks up anyway (the first), not a fixed one, which could overflow in its turn;
        # picked with tensor ops (no host sync, traceable); row 0 (1) only where every position is padding: a
        # non-padding entry holding it is appended, so argmin also finds one in an empty or all-padding batch (a
        # branch on the batch's size would be fixed into a trace by its example; argmin of nothing fails)
        fallback = 0 if padding_idx != 0 or v == 1 else 1
        # the first non-padding position; index_select, not [first], which dynamo cannot trace
        first = torch.argmin(torch.cat([pad, pad.new_zeros(1)]).to(torch.int32)).reshape(1)
        stand = torch.cat([flat, flat.new_full((1,), fallback)]).index_select(0, first)
        flat = torch.where(pad, stand, flat)
    with full_precision(weight.device.type):
        rows = embedding_rows(weight, flat, voc_dims, cache)
    if pad is not None:
        # zero output for padding positions; a mask, not a product (an inf row times 0 would be NaN)
        rows = rows.masked_fill(pad.unsqueeze(-1), 0)
    if torch.jit.is_tracing():  # (at any number of index dimensions)
        return traced_unflatten(rows, input.unsqueeze(-1))
    return rows.reshape(*input.shape, dim)
