"""Products of TT objects: matmul (TT @ TT, TT @ dense, dense @ TT) and flat_inner (TT.TT, TT.dense).

Re-exported by :mod:`tensortrain.ops`. Symbols: ``d`` cores, ``m``/``n`` row/column mode sizes, ``r``
TT-rank, ``B`` batch size of the TT object, ``L`` product of a dense operand's leading dims, ``P`` the
dense operand's free dim. None of these builds the full TT tensor.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from . import contraction as _contraction
from ._transforms import autocast_casts
from .errors import ShapeError
from .operands import (
    batch_size,
    batched_cores,
    check_dtype_device,
    check_matrix,
    check_same_raw_shape,
    check_strided,
    describe,
    expand_cores,
    flat_modes,
    is_batch,
    matrix_dims,
    pair_cores,
    paired_cores,
    rescale_pow2,
    run_scaled,
    scale_pow2,
    wrap,
    wrap_valid,
)
from .tensor_train import TensorTrainBase

__all__ = ["flat_inner", "matmul"]


# ------------------------------------------------------------------------------------------------ matmul
def matmul(a: Any, b: Any) -> Any:
    """Matrix product of TT-matrices and dense matrices, t3f's dispatcher (also the ``@`` operator).

    * TT-matrix ``(M x K)`` @ TT-matrix ``(K x N)``: a TT-matrix, core-wise products, TT-ranks multiply;
      the column modes of ``a`` must equal the row modes of ``b`` mode by mode. Batches broadcast.
    * TT-matrix ``(M x N)`` @ dense ``(..., N, P)`` (or a vector ``(N,)``): dense ``(..., M, P)``.
    * dense ``(..., P, M)`` (or a vector ``(M,)``) @ TT-matrix ``(M x N)``: dense ``(..., P, N)``.

    One TT-matrix goes through the cost-planned contraction (:mod:`tensortrain.contraction`: sweeps over
    merged core groups, or W built from its halves where that is cheaper); a batch of TT-matrices is never
    built: the dense operand is reshaped into modes and contracted with one core at a time. A batch of B
    TT-matrices broadcasts against the last leading dim of the dense operand (``(..., B, N, P)``,
    ``(..., 1, N, P)``, or no leading dims); a batch of one broadcasts against any leading dims, as in
    ``torch.matmul``.

    Args:
        a: a TT-matrix, a batch of them, or a dense tensor.
        b: a TT-matrix, a batch of them, or a dense tensor (at least one side is a TT-matrix).

    Returns:
        A TT-matrix (batch) for TT @ TT, else a dense tensor.

    Raises:
        TypeError: an operand is a number, a TT-tensor, or not a tensor at all.
        ShapeError: inner dimensions, batch sizes, dtypes or devices disagree.

    Shape:
        W @ x: x ``(..., N, P)`` -> ``(..., M, P)``; x @ W: x ``(..., P, M)`` -> ``(..., P, N)``.

    Complexity: TT @ TT O(d r_a^2 r_b^2 m n k); TT @ dense O(L P d r^2 max(M, N) max(m, n)).

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[2, 3], [4, 5]], tt_rank=3)
        >>> tt.matmul(w, torch.randn(20, 7)).shape
        torch.Size([6, 7])
        >>> (torch.randn(8, 6) @ w).shape
        torch.Size([8, 20])
    """
    for name, x in (("first operand", a), ("second operand", b)):
        if isinstance(x, numbers.Number):
            raise TypeError(
                f"matmul: {name} is a number ({x!r}); use multiply(tt, c) or tt * c to scale a TT object"
            )
        if not isinstance(x, (TensorTrainBase, torch.Tensor)):
            raise TypeError(f"matmul: {name} must be a TT-matrix or a torch.Tensor, got {type(x).__name__}")
    a_tt, b_tt = isinstance(a, TensorTrainBase), isinstance(b, TensorTrainBase)
    if a_tt and b_tt:
        return _tt_tt(check_matrix(a, "matmul", "first operand"), check_matrix(b, "matmul", "second operand"))
    if a_tt:
        return _tt_dense(check_matrix(a, "matmul", "first operand"), b)
    if b_tt:
        return _dense_tt(a, check_matrix(b, "matmul", "second operand"))
    raise TypeError("matmul: neither operand is a TT object; use torch.matmul for dense tensors")


def _tt_tt(a: TensorTrainBase, b: TensorTrainBase) -> Any:
    rows_a, cols_a = matrix_dims(a)
    rows_b, cols_b = matrix_dims(b)
    if tuple(cols_a) != tuple(rows_b):
        raise ShapeError(
            f"matmul: the first TT-matrix has column dims {tuple(cols_a)} ({math.prod(cols_a)} columns) "
            f"but the second has row dims {tuple(rows_b)} ({math.prod(rows_b)} rows); they must agree "
            "mode by mode"
        )
    (ca, cb), batch = pair_cores("matmul", a, b)
    lead = int(batch)
    return wrap_valid([_core_product(x, y, lead) for x, y in zip(ca, cb, strict=True)], batch)


def _core_product(x: torch.Tensor, y: torch.Tensor, lead: int) -> torch.Tensor:
    """Cores ``(*lead, a, m, k, c)`` and ``(*lead, x, k, n, y)`` -> ``(*lead, a x, m, n, c y)``: the sum over
    ``k`` as one (batched) GEMM, as ``einsum("amkc,xkny->axmncy")`` computes it, without its planning cost."""
    bs, (rx, m, k, sx), (ry, _, n, sy) = x.shape[:lead], x.shape[lead:], y.shape[lead:]
    o = list(range(lead))
    xm = x.permute(*o, lead, lead + 1, lead + 3, lead + 2).reshape(*bs, rx * m * sx, k)
    ym = y.permute(*o, lead + 1, lead, lead + 2, lead + 3).reshape(*bs, k, ry * n * sy)
    z = torch.matmul(xm, ym).reshape(*bs, rx, m, sx, ry, n, sy)
    z = z.permute(*o, lead, lead + 3, lead + 1, lead + 4, lead + 2, lead + 5)
    return z.reshape(*bs, rx * ry, m, n, sx * sy)


def _check_dense(x: Any, w: TensorTrainBase, side: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"matmul: the dense operand must be a torch.Tensor, got {type(x).__name__}")
    check_strided("matmul", "x", x)  # (sparse operands failed inside expand or reshape on some paths)
    if x.dim() == 0:
        raise ShapeError("matmul: the dense operand is 0-dimensional; use multiply(tt, c) to scale")
    # (dtypes that differ where autocast casts both: the products take them, as torch.matmul does)
    if x.dtype == w.dtype or x.device != w.device or not autocast_casts(x, w):
        check_dtype_device("matmul", w, x)
    rows, cols = matrix_dims(w)
    if side == "right":  # W @ x: x's rows meet W's columns
        have, need, what = x.shape[-2] if x.dim() > 1 else x.shape[0], math.prod(cols), "rows"
        if have != need:
            raise ShapeError(
                f"matmul: x has {have} {what} but the TT-matrix has {need} columns "
                f"(column dims {tuple(cols)}); x has shape {tuple(x.shape)}"
            )
    else:  # x @ W: x's columns meet W's rows
        have, need = x.shape[-1], math.prod(rows)
        if have != need:
            raise ShapeError(
                f"matmul: x has {have} columns but the TT-matrix has {need} rows "
                f"(row dims {tuple(rows)}); x has shape {tuple(x.shape)}"
            )
    return x


def _dense_lead(x: torch.Tensor, lead: tuple[int, ...], w: TensorTrainBase) -> tuple[int, ...]:
    """Leading dims of the result: ``lead`` for a single TT, ``lead`` broadcast with ``(B,)`` for a batch."""
    if not is_batch(w):
        return lead
    bs = batch_size(w)
    if not lead:
        return (bs,)
    if bs == 1:  # torch.matmul broadcasting: a batch of one meets any last leading dim, which is kept
        return lead
    if lead[-1] not in (1, bs):
        raise ShapeError(
            f"matmul: a batch of {bs} TT-matrices needs the dense operand's last leading dim to be {bs} "
            f"or 1, got shape {tuple(x.shape)}"
        )
    return (*lead[:-1], bs)


def _tt_dense(w: TensorTrainBase, x: torch.Tensor) -> torch.Tensor:
    vector = isinstance(x, torch.Tensor) and x.dim() == 1
    x = _check_dense(x, w, "right")
    if vector:
        x = x.unsqueeze(-1)
    if not is_batch(w):  # one TT-matrix: the cost-planned contraction (tensortrain.contraction)
        out = _contraction.tt_dense_matmul(w.tt_cores, x)
        return out.squeeze(-1) if vector else out
    lead = _dense_lead(x, tuple(x.shape[:-2]), w)
    bs, n, p = batch_size(w), x.shape[-2], x.shape[-1]
    ell = math.prod(lead) // bs
    # (L, B, N, P) -> (B, N, L * P): free when there are no extra leading dims.
    xt = x.expand(*lead, n, p).reshape(ell, bs, n, p).permute(1, 2, 0, 3).reshape(bs, n, ell * p)
    # W @ x: sweep with the transposed cores (a free view), which map the N columns to the M rows.
    out = _sweep([c.transpose(2, 3) for c in batched_cores(w)], xt)
    m = out.shape[1]
    out = out.reshape(bs, m, ell, p).permute(2, 0, 1, 3).reshape(*lead, m, p)
    return out.squeeze(-1) if vector else out


def _dense_tt(x: torch.Tensor, w: TensorTrainBase) -> torch.Tensor:
    vector = isinstance(x, torch.Tensor) and x.dim() == 1
    x = _check_dense(x, w, "left")
    if vector:
        x = x.unsqueeze(0)
    if not is_batch(w):  # one TT-matrix: the cost-planned contraction (tensortrain.contraction)
        out = _contraction.dense_tt_matmul(x, w.tt_cores)
        return out.squeeze(-2) if vector else out
    lead = _dense_lead(x, tuple(x.shape[:-2]), w)
    bs, p, m = batch_size(w), x.shape[-2], x.shape[-1]
    ell = math.prod(lead) // bs
    xt = x.expand(*lead, p, m).reshape(ell, bs, p, m).permute(1, 3, 0, 2).reshape(bs, m, ell * p)
    out = _sweep(batched_cores(w), xt)
    n = out.shape[1]
    out = out.reshape(bs, n, ell, p).permute(2, 0, 3, 1).reshape(*lead, p, n)
    return out.squeeze(-2) if vector else out


def _sweep(cores: list[torch.Tensor], xt: torch.Tensor) -> torch.Tensor:
    """``out[b, j, a] = sum_i W_b[i, j] xt[b, i, a]`` for a TT-matrix W (M x N) with batched cores
    (B, r, m, n, s) and xt (B, M, A): returns (B, N, A), one batched matmul per core, no copies between.

    State (B, cols done, r_{k-1} m_k, rows left * A): contracting (r_{k-1}, m_k) with the core
    (reshaped to (n_k s_k, r_{k-1} m_k), on the left) yields (cols done, n_k, s_k, rows left * A), which
    already is the next state once n_k is merged into cols done. Cost of step k:
    B A (m_{k+1}..m_d) (n_1..n_k) m_k r_{k-1} r_k multiply-adds, like the planar contraction order.
    """
    bs, left, a = xt.shape  # left: rows not yet contracted
    t = xt.reshape(bs, 1, left * a)
    done = 1
    for core in cores:
        _, r, m, n, s = core.shape
        left //= m
        # Explicit sizes (no -1): an empty dense operand (A = 0) must flow through too.
        t = t.reshape(bs, done, r * m, left * a)
        c = core.permute(0, 3, 4, 1, 2).reshape(bs, n * s, r * m)
        if bs == 1:
            # One TT-matrix: share its core across the cols-done batch without copying it.
            t = torch.bmm(c.expand(done, n * s, r * m), t[0]).unsqueeze(0)
        else:
            t = torch.matmul(c.unsqueeze(1), t)
        done *= n
        t = t.reshape(bs, done, s * left * a)
    return t.reshape(bs, done, a)


# ---------------------------------------------------------------------------------------------- flat_inner
def flat_inner(a: Any, b: Any) -> torch.Tensor:
    """The sum of elementwise products of two tensors, ``<a, b>`` (no complex conjugation, as t3f).

    * TT · TT (same kind and raw shape): a left-to-right sweep of ``(r_a x r_b)`` matrices.
    * TT · dense (either order): the dense tensor (shape ``tt.shape``; for a batch either ``(B, ...)`` or
      the element shape, broadcast; a batch of one also against ``(B', ...)``) is contracted core by core; the
      TT is never made full.

    Args:
        a: a TT object or a dense tensor.
        b: a TT object or a dense tensor (at least one side is a TT object).

    Returns:
        A 0-dim tensor, or a vector of length B when a batch is involved.

    Raises:
        TypeError: neither side is a TT object, or an operand is not a tensor.
        ShapeError: kinds, raw shapes, dense shapes, batch sizes, dtypes or devices disagree.

    Complexity: TT·TT O(d B r^3 n); TT·dense O(B r^2 N) for N entries.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3, 4), tt_rank=2)
        >>> bool(abs(tt.flat_inner(a, a) - (tt.full(a) ** 2).sum()) < 1e-4)
        True
    """
    a_tt, b_tt = isinstance(a, TensorTrainBase), isinstance(b, TensorTrainBase)
    if a_tt and b_tt:
        check_same_raw_shape("flat_inner", a, b)
        (ca, cb), _, batch = paired_cores("flat_inner", a, b)
        return inner_sweep(ca, cb, batch)
    if a_tt and isinstance(b, torch.Tensor):
        return _inner_dense(a, b)
    if b_tt and isinstance(a, torch.Tensor):
        return _inner_dense(b, a)
    kinds = f"{type(a).__name__} and {type(b).__name__}"
    raise TypeError(f"flat_inner: expects TT objects or a TT object and a torch.Tensor, got {kinds}")


def inner_sweep(ca: list[torch.Tensor], cb: list[torch.Tensor], batch: bool) -> torch.Tensor:
    """``<a, b>`` from batched cores of equal batch size (shared with :mod:`tensortrain.forms`, not public).

    Carries the (B, r_a, r_b) matrix of partial inner products left to right: O(d B r^3 n). Where that could
    overflow or underflow (``operands.scaling_mode``: cores of unbalanced scales), the carried matrix is scaled
    by a power of two at each step.
    """
    res = run_scaled(lambda scaled: _inner_steps(ca, cb, scaled=scaled), ca, cb, contracted=True)
    return res if batch else res[0]


def _inner_steps(ca: list[torch.Tensor], cb: list[torch.Tensor], scaled: bool) -> torch.Tensor:
    v: torch.Tensor | None = None
    exps = None
    for x, y in zip(ca, cb, strict=True):
        bs, rx, u, vv = x.shape[0], x.shape[1], x.shape[-1], y.shape[-1]
        if scaled:
            # both cores too: a step multiplies them, and two cores of 1e25 overflow float32 inside one step,
            # before any carried matrix is rescaled, as does a core of 2.5e38 times one below 1
            x, exps = rescale_pow2(x, exps)
            y, exps = rescale_pow2(y, exps)
        if v is None:  # (B, m, u)^T (B, m, v): r_0 = 1
            v = torch.bmm(x.reshape(bs, -1, u).transpose(1, 2), y.reshape(bs, -1, vv))
        else:
            # (B, ry, rx) @ (B, rx, m u) -> (B, ry m, u); then (B, u, ry m) @ (B, ry m, v) -> (B, u, v)
            t = torch.bmm(v.transpose(1, 2), x.reshape(bs, rx, -1)).reshape(bs, -1, u)
            v = torch.bmm(t.transpose(1, 2), y.reshape(bs, -1, vv))
        if scaled:
            v, exps = rescale_pow2(v, exps)
    assert v is not None
    return v[:, 0, 0] if exps is None else scale_pow2(v[:, 0, 0], exps)


def _inner_dense(w: TensorTrainBase, x: torch.Tensor) -> torch.Tensor:
    check_strided("flat_inner", "x", x)
    check_dtype_device("flat_inner", w, x)
    elem = tuple(w.shape[1:]) if is_batch(w) else tuple(w.shape)
    bs = batch_size(w)
    if is_batch(w) and bs == 1 and x.dim() == len(elem) + 1 and tuple(x.shape[1:]) == elem:
        # a batch of one broadcasts against B dense tensors, as against a batch of B TTs (expanded views)
        bs = int(x.shape[0])
        if bs == 0:  # (a TT batch cannot be empty)
            return x.new_zeros(0)
        w = wrap(expand_cores(batched_cores(w), bs), True)
    shared = tuple(x.shape) == elem  # one dense tensor for every batch element: never copied B times
    if not shared and tuple(x.shape) != tuple(w.shape):
        raise ShapeError(
            f"flat_inner: the dense tensor has shape {tuple(x.shape)} but the TT object has shape "
            f"{tuple(w.shape)} (raw shape {describe(w)})"
        )
    if w.is_tt_matrix():
        # Interleave (m_1..m_d, n_1..n_d) -> (m_1, n_1, ..., m_d, n_d), the order of the cores' modes.
        rows, cols = matrix_dims(w)
        d, lead = len(rows), 0 if shared else 1
        x = x.reshape(*x.shape[:lead], *rows, *cols)
        x = x.permute(*range(lead), *(lead + i for k in range(d) for i in (k, d + k)))
    cores = [flat_modes(c) for c in batched_cores(w)]
    # Each core (B, r, m, s) acts from the left as (B, s, r m) on the state (B, r m, rest): no copies.
    left = [c.reshape(bs, -1, c.shape[-1]).transpose(1, 2) for c in cores]
    m0 = cores[0].shape[2]

    def sweep(scaled: bool) -> torch.Tensor:
        # scaled (cores of unbalanced scales): the state brought below 1 by a power of two per batch element at
        # every step
        exps = None
        if shared:
            s0 = cores[0].shape[-1]
            t = (left[0].reshape(bs * s0, m0) @ x.reshape(m0, -1)).reshape(bs, s0, -1)
        else:
            t = torch.bmm(left[0], x.reshape(bs, m0, -1))
        for c, core in zip(left[1:], cores[1:], strict=True):
            if scaled:
                t, exps = rescale_pow2(t, exps)
            t = torch.bmm(c, t.reshape(bs, core.shape[1] * core.shape[2], -1))
        res = t.reshape(bs)
        return res if exps is None else scale_pow2(res, exps)

    res = run_scaled(sweep, cores, contracted=True)
    return res if is_batch(w) else res[0]
