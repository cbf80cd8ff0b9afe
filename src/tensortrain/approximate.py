"""Rank-controlled sums of many TT objects (t3f's ``approximate``): pairwise sums in a binary tree.

Summing ``N`` TT objects exactly gives ranks ``N r``; here the objects are added in pairs and every pairwise
sum is rounded to ``max_tt_rank`` (``tt.round``), so ranks never exceed ``2 max_tt_rank`` and the depth of
the tree is ``log2 N``. Each rounding is quasi-optimal (error at most ``sqrt(d - 1)`` times the best one for
that pair, Oseledets 2011); the errors of the levels add up, so the result is an approximation unless
``max_tt_rank`` is at least the rank of every partial sum (then it is exact up to round-off).

Symbols: ``N`` number of summands, ``d`` cores, ``n`` mode size, ``r`` rank cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import decompositions, ops
from .errors import ShapeError
from .operands import as_scales
from .orthogonalization import all_finite
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = ["add_n", "reduce_sum_batch"]

MaxRank = int | Sequence[int]


def add_n(tt_objects: Sequence[TensorTrainBase], max_tt_rank: MaxRank) -> Any:
    """Approximate sum of TT objects: pairwise additions, each rounded to ``max_tt_rank``.

    Args:
        tt_objects: TT objects of one kind and raw shape (TensorTrains, or batches of one size).
        max_tt_rank: the rank cap of every rounding (an int or one value per bond, as ``tt.round``).

    Returns:
        A TT object with ranks at most ``max_tt_rank`` (a single object is rounded to the cap, as
        ``reduce_sum_batch`` rounds a batch of one; t3f returns it unchanged).

    Raises:
        ValueError: an empty sequence.
        TypeError, ShapeError: as ``tt.add`` / ``tt.round`` for incompatible objects or bad ranks.

    Complexity: O(N d n r^3): ``N - 1`` roundings of rank-``2 r`` TTs, ``log2 N`` levels.

    Example:
        >>> import tensortrain as tt
        >>> xs = [tt.random_tensor((3, 4, 5), tt_rank=2) for _ in range(6)]
        >>> tt.approximate.add_n(xs, max_tt_rank=4).tt_ranks
        (1, 3, 4, 1)
    """
    objs = list(tt_objects)
    if not objs:
        raise ValueError("add_n: needs at least one TT object")
    for x in objs:
        if not isinstance(x, TensorTrainBase):
            raise TypeError(f"add_n: expected TT objects, got {type(x).__name__}")
    decompositions.check_caps(objs[0], max_tt_rank, "add_n")  # (errors named after add_n, before any sum)
    if len(objs) == 1:
        return decompositions.round(objs[0], max_tt_rank=max_tt_rank)
    while len(objs) > 1:
        pairs = [
            decompositions.round(ops.add(a, b), max_tt_rank=max_tt_rank)
            for a, b in zip(objs[::2], objs[1::2], strict=False)
        ]
        objs = pairs + ([objs[-1]] if len(objs) % 2 else [])
    return objs[0]


def _weights(coef: Any, bsz: int, like: TensorTrainBase) -> torch.Tensor | None:
    """``coef`` as a ``(B, N)`` tensor (None when no weighting)."""
    if coef is None:
        return None
    raw = as_scales(coef, fn="reduce_sum_batch", name="coef")
    if raw.is_complex() and not like.dtype.is_complex:
        raise TypeError(
            f"reduce_sum_batch: complex coef ({raw.dtype}) for a real batch ({like.dtype}) would lose its "
            "imaginary part; convert the batch to a complex dtype first"
        )
    # straight to the batch's dtype (a tensor is converted, a list or array read in it): through torch's default
    # float32 a float64 batch would get weights rounded to 7 digits (t3f converts coef to the batch dtype too)
    c = as_scales(coef, dtype=like.dtype, device=like.device, fn="reduce_sum_batch", name="coef")
    if not all_finite([c]):  # (it would surface as NaN cores inside round)
        raise ValueError("reduce_sum_batch: coef contains NaN or inf values")
    if c.dim() == 1:
        c = c[:, None]
    if c.dim() != 2 or c.shape[0] != bsz or c.shape[1] == 0:
        raise ShapeError(
            f"reduce_sum_batch: coef must have shape ({bsz},) or ({bsz}, N) with N >= 1 for a batch of {bsz}, "
            f"got {tuple(raw.shape)}"
        )
    return c


def _elements(grouped: list[torch.Tensor], which: slice) -> TensorTrainBatch:
    """The elements ``which`` of every sum, from cores grouped as ``(N, group, ...)``, as one batch (sum-major)."""
    return TensorTrainBatch([g[:, which].reshape(-1, *g.shape[2:]) for g in grouped])


def reduce_sum_batch(tt_batch: TensorTrainBatch, max_tt_rank: MaxRank, coef: Any = None) -> Any:
    """Approximate (weighted) sum of the elements of a batch, by pairwise rounded additions in t3f's order.

    Args:
        tt_batch: a TensorTrainBatch of ``B`` elements.
        max_tt_rank: the rank cap of every rounding.
        coef: None (plain sum), a ``(B,)`` vector (one weighted sum) or a ``(B, N)`` matrix (``N`` weighted
            sums, column ``j`` giving the weights of sum ``j``).

    Returns:
        A TensorTrain (no ``coef`` or a vector ``coef``) or a TensorTrainBatch of ``N`` sums (matrix
        ``coef``), ranks at most ``max_tt_rank``.

    Raises:
        TypeError: ``tt_batch`` is not a TensorTrainBatch.
        ShapeError: ``coef`` of the wrong shape, or bad ``max_tt_rank``.
        ValueError: ``coef`` has NaN or inf values.

    Complexity: O(N B d n r^3), ``log2 B`` levels of batched roundings.

    Example:
        >>> import torch, tensortrain as tt
        >>> b = tt.random_tensor_batch((3, 4, 5), tt_rank=2, batch_size=8)
        >>> tt.approximate.reduce_sum_batch(b, max_tt_rank=3, coef=torch.ones(8, 2)).batch_size
        2
    """
    if not isinstance(tt_batch, TensorTrainBatch):
        raise TypeError(f"reduce_sum_batch: expected a TensorTrainBatch, got {type(tt_batch).__name__}")
    caps = decompositions.check_caps(tt_batch, max_tt_rank, "reduce_sum_batch")  # (errors named after it)
    bsz = tt_batch.batch_size
    c = _weights(coef, bsz, tt_batch)
    n_sums = 1 if c is None else c.shape[1]
    # Work on a batch of N * B elements grouped by sum: element j * B + i is coef[i, j] * x_i.
    cores = [core.repeat(n_sums, *([1] * (core.dim() - 1))) for core in tt_batch.tt_cores]
    if c is not None:
        scale = c.T.reshape(-1, *([1] * (cores[0].dim() - 1)))
        cores[0] = cores[0] * scale
    # t3f's tree: each level adds neighbours (0 + 1, 2 + 3, ...) and rounds every sum, in one batched rounding.
    # The last element of an odd level (t3f adds a zero element to it and rounds) is kept apart as ``tail``,
    # still the level's last element: its ranks may differ from the pairs' sums, and rounding an exact sum
    # with a zero term would divide by zero in the QR/SVD backward (NaN gradients). Rounding it alone gives
    # t3f's value; it is only needed when a rank exceeds the cap.
    group = bsz  # elements per sum in the batched cores; plus ``tail`` when it is not None
    tail: TensorTrainBatch | None = None
    while group + (tail is not None) > 1:
        grouped = [core.reshape(n_sums, group, *core.shape[1:]) for core in cores]
        pairs = group // 2
        if group % 2:  # the batch's last element is paired with the tail, or with t3f's zero element
            last = _elements(grouped, slice(group - 1, group))
            if tail is not None:
                tail = decompositions.round(ops.add(last, tail), max_tt_rank=max_tt_rank)
            elif any(r > cap for r, cap in zip(last.tt_ranks, caps, strict=True)):
                tail = decompositions.round(last, max_tt_rank=max_tt_rank)
            else:
                tail = last
        if pairs:
            first = _elements(grouped, slice(0, 2 * pairs, 2))
            second = _elements(grouped, slice(1, 2 * pairs, 2))
            cores = list(decompositions.round(ops.add(first, second), max_tt_rank=max_tt_rank).tt_cores)
        group = pairs
    if group:
        total = TensorTrainBatch(cores)
        if bsz == 1:  # nothing was added: still honour the cap
            total = decompositions.round(total, max_tt_rank=max_tt_rank)
    else:
        assert tail is not None
        total = tail
    cores = list(total.tt_cores)
    if c is None or (coef is not None and as_scales(coef, fn="reduce_sum_batch", name="coef").dim() == 1):
        return TensorTrain([core[0] for core in cores])
    return TensorTrainBatch(cores)
