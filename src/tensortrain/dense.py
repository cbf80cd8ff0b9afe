"""The dense tensor a TT object represents: :func:`full` (re-exported by :mod:`tensortrain.ops` and as
``tt.full``), by one left-to-right sweep over the cores or, for larger results, as the product of two halves
each swept on its own (a TT-matrix's halves put rows first, so that the interleaved modes never need one large
permute); the scaled sweep for cores of unbalanced scales.

Symbols: ``d`` cores, ``N`` entries of the result (``M x N`` for a TT-matrix), ``r`` largest TT-rank, ``B``
batch size.
"""

from __future__ import annotations

import math

import torch

from .operands import (
    batched_cores,
    check_tt,
    is_batch,
    matrix_dims,
    rescale_pow2,
    run_scaled,
    scale_pow2,
    tensor_dims,
)
from .tensor_train import TensorTrainBase

__all__ = ["full"]


def _full_steps(cores: list[torch.Tensor], scaled: bool) -> torch.Tensor:
    """:func:`full`'s left-to-right sweep: ``(B, prod of modes, 1)``; scaled: every step's partial product
    brought to a largest magnitude below 1 by a power of two per batch element, put back at the end."""
    b = cores[0].shape[0]
    res, exps = cores[0].reshape(b, -1, cores[0].shape[-1]), None  # (B, prod of modes so far, r_k)
    if scaled:  # (the first core too: its product with the second may overflow before any step is scaled)
        res, exps = rescale_pow2(res)
    for core in cores[1:]:
        r = core.shape[1]
        res = torch.bmm(res, core.reshape(b, r, -1)).reshape(b, -1, core.shape[-1])
        if scaled:
            res, exps = rescale_pow2(res, exps)
    if len(cores) == 1 and exps is None:
        res = res.clone()  # (one core: res is a view of it, and full() is a tensor of its own for any d)
    return res if exps is None else scale_pow2(res, exps)


def full(tt: TensorTrainBase) -> torch.Tensor:
    """The dense tensor (or matrix) a TT object represents.

    Args:
        tt: a TT-tensor, TT-matrix, or a batch of either.

    Returns:
        A tensor of shape ``tt.shape``: ``(n_1, ..., n_d)`` for a TT-tensor, ``(M, N)`` for a TT-matrix,
        with the batch size first for a batch.

    Raises:
        TypeError: ``tt`` is not a TT object.
        ValueError: the dense tensor would have more entries than int64 counts (no tensor can hold it; use
            :func:`gather_nd` for entries of it).

    Complexity: O(d r^2 N) time and O(N r) memory for N entries.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3, 4), tt_rank=2)
        >>> tt.full(a).shape
        torch.Size([2, 3, 4])
    """
    check_tt(tt, "full", "tt")
    shape = tuple(tt.shape)
    entries = math.prod(shape)
    # (no tensor can hold it: the sweep would grow its partial products until memory ran out)
    if entries > torch.iinfo(torch.long).max:
        raise ValueError(
            f"full: the dense tensor of shape {shape} would have {entries} entries, more than int64 "
            "counts; use tt.gather_nd for entries of it"
        )
    cores = batched_cores(tt)
    b = cores[0].shape[0]
    if tt.is_tt_matrix():
        rows, cols = matrix_dims(tt)
        # (the scaled sweep for cores of unbalanced scales)
        res = run_scaled(lambda scaled: _full_matrix(cores, rows, cols, scaled), cores)
        # contiguous: a permuted view with size-1 modes has strides some torch ops reject (torch.kron).
        res = res.contiguous()
    else:
        res = run_scaled(lambda scaled: _full_tensor(cores, scaled), cores).reshape(b, *tensor_dims(tt))
    return res if is_batch(tt) else res[0]


# full() sweeps all the cores of a TT-matrix of at most _SWEPT_MATRIX entries (and permutes its interleaved modes
# once), or of a TT-tensor of at most _SWEPT_TENSOR, instead of building it by halves: for so small a result the fewer
# kernels win. TT-matrices of 16 x 16: 42 us against 69 us by halves; 81 x 81: 66 against 76; 256 x 256: 220 against
# 107. TT-tensors, with no permute to save: 10^4 at rank 2 0.85x, 3^9 at rank 3 0.95x, 2^14 at rank 1 0.98x by
# halves; 2^16 at rank 8 1.2x (2-core Intel Xeon). Two cores always sweep: the halves are the cores.
_SWEPT_MATRIX = 1 << 13
_SWEPT_TENSOR = 1 << 15


def _full_tensor(cores: list[torch.Tensor], scaled: bool) -> torch.Tensor:
    """``(B, N, 1)`` from batched TT-tensor cores: the product of two halves, each swept as :func:`_full_steps`
    sweeps (one GEMM of the cut's rank).

    Sweeping all the cores, the state before the last step holds ``N r / n_d`` numbers, computed with ``N r^2 / n_d``
    multiplications: more than the result where the rank exceeds the last mode. By halves each half holds about
    ``sqrt(N) r`` numbers and their GEMM takes ``N r`` multiplications. In ``benchmarks/paths_ab.py`` (three runs,
    one and two threads, 2-core Intel Xeon) ``full`` ran 2.2-2.8x faster on a 4^10 rank-16 float32 TT-tensor,
    2.2-3.6x on 6^8 at rank 24 and 2.2-2.8x on 2^20 at rank 2, where the one sweep's last steps are GEMMs two
    columns wide; ad hoc loops of calls read up to 8x. Where the halves do not pay, as for low ranks over large
    modes (10^4 to 10^6 at ranks 2-3, 32^4 at rank 4, 6^6 at rank 6), they read 0.94-1.00x (ad hoc). Small results
    (:data:`_SWEPT_TENSOR`), two cores and the scaled sweep keep the one sweep.
    """
    b = cores[0].shape[0]
    s = None if scaled else _halves_bond(cores, [int(c.shape[2]) for c in cores], _SWEPT_TENSOR)
    if s is None:
        return _full_steps(cores, scaled=scaled)
    left = _full_steps(cores[:s], scaled=False)  # (B, n_1 ... n_s, r_s)
    right = _full_steps(cores[s:], scaled=False)  # (B, r_s n_{s+1} ... n_d, 1)
    return torch.bmm(left, right.reshape(b, left.shape[-1], -1)).reshape(b, -1, 1)


def _full_matrix(
    cores: list[torch.Tensor], rows: tuple[int, ...], cols: tuple[int, ...], scaled: bool
) -> torch.Tensor:
    """``(B, M, N)`` from batched TT-matrix cores: two halves, each swept as :func:`_full_steps` sweeps and its
    modes put rows first (a copy of the half), then their product in W's layout.

    Sweeping all the cores leaves W's modes interleaved, ``(m_1, n_1, ..., m_d, n_d)``, and the permute of
    ``2d + 1`` dims that sorts them costs more than the products: by halves, ``full`` of a 784 x 625 TT-matrix ran
    2.0-3.1x faster at rank 4 and 1.9-2.7x at rank 16, of a 4096 x 4096 one at rank 16 2.0-2.3x
    (``benchmarks/paths_ab.py``, three runs, one and two threads, 2-core Intel Xeon). The product is one GEMM per
    pair of left and right row indices, written straight into W's layout, where the rank is at most a quarter of
    both halves' column counts (their broadcast copies are then at most half of W); otherwise one GEMM and one
    permute of W with five dims. Small matrices
    (:data:`_SWEPT_MATRIX`), two cores and the scaled sweep (cores of unbalanced scales: a half alone may leave the
    dtype's range where W does not) keep the one sweep.
    """
    d, b = len(cores), cores[0].shape[0]
    modes = [v for k in range(d) for v in (rows[k], cols[k])]  # (m_1, n_1, ..., m_d, n_d)
    s = None if scaled else _halves_bond(cores, [rows[k] * cols[k] for k in range(d)], _SWEPT_MATRIX)
    if s is None:
        res = _full_steps(cores, scaled=scaled).reshape(b, *modes)
        return _rows_first(res, 1, d).reshape(b, math.prod(rows), math.prod(cols))
    left = _full_steps(cores[:s], scaled=False)  # (B, m_1 n_1 ... m_s n_s, r_s)
    right = _full_steps(cores[s:], scaled=False)  # (B, r_s m_{s+1} n_{s+1} ... m_d n_d, 1)
    r = left.shape[-1]
    ml, nl, mr, nr = math.prod(rows[:s]), math.prod(cols[:s]), math.prod(rows[s:]), math.prod(cols[s:])
    left = _rows_first(left.reshape(b, *modes[: 2 * s], r), 1, s).reshape(b, ml, nl, r)
    right = _rows_first(right.reshape(b, r, *modes[2 * s :]), 2, d - s).reshape(b, r, mr, nr)
    # (the layers' full plan decides by the same rule, contraction.machine.batched_build, which sits below this
    # module in the data flow and so is not imported here)
    if 4 * r <= min(nl, nr):
        # (B, M_L, 1, N_L, r) @ (B, 1, M_R, r, N_R): W as (B, M_L, M_R, N_L, N_R), no permute
        w = torch.matmul(left.unsqueeze(2), right.transpose(1, 2).unsqueeze(1))
        return w.reshape(b, ml * mr, nl * nr)
    w = torch.bmm(left.reshape(b, ml * nl, r), right.reshape(b, r, mr * nr)).reshape(b, ml, nl, mr, nr)
    return w.permute(0, 1, 3, 2, 4).reshape(b, ml * mr, nl * nr)


def _rows_first(t: torch.Tensor, lead: int, g: int) -> torch.Tensor:
    """``t`` with its ``g`` interleaved (row, column) mode pairs after the first ``lead`` dims permuted rows
    first, ``(m_1, ..., m_g, n_1, ..., n_g)`` (a view)."""
    modes = range(lead, lead + 2 * g)
    return t.permute(*range(lead), *modes[0::2], *modes[1::2], *range(lead + 2 * g, t.dim()))


def _halves_bond(cores: list[torch.Tensor], sizes: list[int], swept: int) -> int | None:
    """The bond ``s`` (``1 <= s < d``) at which :func:`_full_tensor` and :func:`_full_matrix` cut the batched cores,
    whose modes hold ``sizes`` entries each (``m_k n_k`` for a TT-matrix): the fewest multiplications over both
    halves' sweeps and their GEMM (``N r_s``), the earliest bond on a tie. None (sweep them all) for two cores or
    fewer, or a result of at most ``swept`` entries."""
    d = len(cores)
    total = math.prod(sizes)
    if d <= 2 or total <= swept:
        return None
    ranks = [int(c.shape[1]) for c in cores] + [1]

    def sweep(lo: int, hi: int) -> int:  # multiplications of _full_steps over cores lo..hi-1
        cost, done = 0, ranks[lo] * sizes[lo]
        for k in range(lo + 1, hi):
            cost += done * ranks[k] * sizes[k] * ranks[k + 1]
            done *= sizes[k]
        return cost

    return min(range(1, d), key=lambda s: sweep(0, s) + sweep(s, d) + total * ranks[s])
