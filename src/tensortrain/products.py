"""Products of TT objects: matmul (TT @ TT, TT @ dense, dense @ TT), flat_inner, norms, bilinear forms.

Re-exported by :mod:`tensortrain.ops`. Symbols: ``d`` cores, ``m``/``n`` row/column mode sizes, ``r``
TT-rank, ``B`` batch size of the TT object, ``L`` product of a dense operand's leading dims, ``P`` the
dense operand's free dim. None of these builds the full TT tensor.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .errors import ShapeError
from .operands import (
    batch_size,
    batched_cores,
    broadcast_batch_size,
    check_dtype_device,
    check_matrix,
    check_same_raw_shape,
    check_tt,
    describe,
    expand_cores,
    flat_modes,
    is_batch,
    matrix_dims,
    paired_cores,
    vector_cores,
    wrap,
)
from .tensor_train import TensorTrainBase

__all__ = [
    "bilinear_form",
    "bilinear_form_two_mat",
    "flat_inner",
    "frobenius_norm",
    "frobenius_norm_squared",
    "matmul",
    "quadratic_form",
]


# ------------------------------------------------------------------------------------------------ matmul
def matmul(a: Any, b: Any) -> Any:
    """Matrix product of TT-matrices and dense matrices, t3f's dispatcher (also the ``@`` operator).

    * TT-matrix ``(M x K)`` @ TT-matrix ``(K x N)``: a TT-matrix, core-wise products, TT-ranks multiply;
      the column modes of ``a`` must equal the row modes of ``b`` mode by mode. Batches broadcast.
    * TT-matrix ``(M x N)`` @ dense ``(..., N, P)`` (or a vector ``(N,)``): dense ``(..., M, P)``.
    * dense ``(..., P, M)`` (or a vector ``(M,)``) @ TT-matrix ``(M x N)``: dense ``(..., P, N)``.

    The dense paths never build the TT-matrix: the dense operand is reshaped into modes and contracted
    with one core at a time. A batch of B TT-matrices broadcasts against the last leading dim of the
    dense operand (``(..., B, N, P)``, or no leading dims).

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
        if not isinstance(x, TensorTrainBase | torch.Tensor):
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
    (ca, cb), _, batch = paired_cores("matmul", a, b)
    cores = []
    for x, y in zip(ca, cb, strict=True):
        bs, rx, m, _, sx = x.shape
        ry, _, n, sy = y.shape[1:]
        z = torch.einsum("bamkc,bxkny->baxmncy", x, y)
        cores.append(z.reshape(bs, rx * ry, m, n, sx * sy))
    return wrap(cores, batch)


def _check_dense(x: Any, w: TensorTrainBase, side: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"matmul: the dense operand must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ShapeError("matmul: the dense operand is 0-dimensional; use multiply(tt, c) to scale")
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
      the element shape, broadcast) is contracted core by core; the TT is never made full.

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
        return _inner_sweep(ca, cb, batch)
    if a_tt and isinstance(b, torch.Tensor):
        return _inner_dense(a, b)
    if b_tt and isinstance(a, torch.Tensor):
        return _inner_dense(b, a)
    kinds = f"{type(a).__name__} and {type(b).__name__}"
    raise TypeError(f"flat_inner: expects TT objects or a TT object and a torch.Tensor, got {kinds}")


def _inner_sweep(ca: list[torch.Tensor], cb: list[torch.Tensor], batch: bool) -> torch.Tensor:
    v: torch.Tensor | None = None
    for x, y in zip(ca, cb, strict=True):
        x, y = flat_modes(x), flat_modes(y)
        if v is None:
            v = torch.einsum("bmu,bmv->buv", x[:, 0], y[:, 0])
        else:
            t = torch.einsum("bxy,bxmu->bymu", v, x)
            v = torch.einsum("bymu,bymv->buv", t, y)
    assert v is not None
    res = v[:, 0, 0]
    return res if batch else res[0]


def _inner_dense(w: TensorTrainBase, x: torch.Tensor) -> torch.Tensor:
    check_dtype_device("flat_inner", w, x)
    elem = tuple(w.shape[1:]) if is_batch(w) else tuple(w.shape)
    bs = batch_size(w)
    if tuple(x.shape) == elem:
        x = x.unsqueeze(0).expand(bs, *elem)
    elif tuple(x.shape) != tuple(w.shape):
        raise ShapeError(
            f"flat_inner: the dense tensor has shape {tuple(x.shape)} but the TT object has shape "
            f"{tuple(w.shape)} (raw shape {describe(w)})"
        )
    cores = [flat_modes(c) for c in batched_cores(w)]
    if w.is_tt_matrix():
        rows, cols = matrix_dims(w)
        d = len(rows)
        x = x.reshape(bs, *rows, *cols)
        perm = [0] + [i for k in range(d) for i in (1 + k, 1 + d + k)]
        x = x.permute(perm)
    # t: (B, r_k, mode_k, rest); contract cores left to right.
    t = x.reshape(bs, 1, cores[0].shape[2], -1)
    for k, core in enumerate(cores):
        t = torch.einsum("brmx,brms->bsx", t, core)
        if k + 1 < len(cores):
            t = t.reshape(bs, t.shape[1], cores[k + 1].shape[2], -1)
    res = t.reshape(bs)
    return res if is_batch(w) else res[0]


# ------------------------------------------------------------------------------------------------- norms
def frobenius_norm_squared(tt: TensorTrainBase, differentiable: bool = False) -> torch.Tensor:
    """The squared Frobenius norm ``sum |x|^2`` of a TT object (a vector for a batch).

    ``differentiable=False`` (t3f's default) computes the value by orthogonalizing the cores left to
    right with QR and taking the squared norm of the last core: numerically safest (no over/underflow
    of Gram products). ``differentiable=True`` computes it with the Gram sweep ``<x, conj(x)>``.
    Unlike t3f, the gradient is the Gram sweep's in both cases: QR's backward is undefined (NaN) for
    rank-deficient cores, e.g. at a zero tensor, while the Gram sweep's is defined everywhere.

    Args:
        tt: a TT object.
        differentiable: compute the value with the Gram sweep instead of QR.

    Returns:
        A real 0-dim tensor, or a vector of length B for a batch.

    Raises:
        TypeError: ``tt`` is not a TT object.

    Complexity: O(d B r^3 n).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3, 4), tt_rank=2)
        >>> bool(abs(tt.frobenius_norm_squared(a) - (tt.full(a) ** 2).sum()) < 1e-4)
        True
    """
    check_tt(tt, "frobenius_norm_squared", "tt")
    cores = [flat_modes(c) for c in batched_cores(tt)]
    needs_grad = torch.is_grad_enabled() and any(c.requires_grad for c in cores)
    gram = _inner_sweep(cores, [c.conj() for c in cores], True).real if differentiable or needs_grad else None
    if differentiable:
        res = gram
    else:
        with torch.no_grad():
            res = _qr_last_core(cores).abs().pow(2).flatten(1).sum(dim=1)
        if gram is not None:
            # QR's value with the Gram sweep's gradient (and higher derivatives).
            res = res + (gram - gram.detach())
    assert res is not None
    return res if is_batch(tt) else res[0]


def _qr_last_core(cores: list[torch.Tensor]) -> torch.Tensor:
    """Push the norm into the last core by a left-to-right QR sweep; returns the last (B, r, n, 1) core."""
    carry = cores[0]
    for nxt in cores[1:]:
        bs, r, n, s = carry.shape
        _, rmat = torch.linalg.qr(carry.reshape(bs, r * n, s))
        carry = torch.einsum("bij,bjms->bims", rmat, nxt)
    return carry


def frobenius_norm(tt: TensorTrainBase, epsilon: float = 0.0, differentiable: bool = False) -> torch.Tensor:
    """The Frobenius norm of a TT object (a vector for a batch).

    Differs from t3f on purpose: t3f returns ``sqrt(norm^2 + 1e-5)`` by default (biased, for a finite
    gradient at zero). Here the default ``epsilon=0`` gives the true norm, and the gradient at a zero
    tensor is 0 instead of NaN; pass ``epsilon=1e-5`` for t3f's exact values.

    Args:
        tt: a TT object.
        epsilon: added to the squared norm under the square root (t3f compatibility).
        differentiable: as in :func:`frobenius_norm_squared`.

    Returns:
        A real 0-dim tensor, or a vector of length B.

    Raises:
        TypeError: ``tt`` is not a TT object.
        ValueError: ``epsilon`` is negative.

    Complexity: O(d B r^3 n).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3, 4), tt_rank=2)
        >>> bool(abs(tt.frobenius_norm(a) - tt.full(a).norm()) < 1e-4)
        True
    """
    if not epsilon >= 0:
        raise ValueError(f"frobenius_norm: epsilon must be >= 0, got {epsilon!r}")
    sq = frobenius_norm_squared(tt, differentiable=differentiable) + epsilon
    positive = sq > 0
    # sqrt has an infinite derivative at 0; feed it 1 there and mask, so the gradient is 0, not NaN.
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), 0.0)


# ------------------------------------------------------------------------------------------ bilinear forms
def bilinear_form(A: TensorTrainBase, b: TensorTrainBase, c: TensorTrainBase) -> torch.Tensor:
    """``b^T A c`` for a TT-matrix ``A`` (N x M) and TT vectors ``b`` (N) and ``c`` (M), without full().

    Vectors may be TT-matrices ``N x 1`` (t3f's form), ``1 x N``, or TT-tensors with raw shape equal to
    ``A``'s row (for ``b``) / column (for ``c``) modes. Any of the three may be a batch; batches
    broadcast (each operand's own batch flag is used: t3f reads ``c``'s flag from ``b``, a bug not copied).

    Args:
        A: a TT-matrix (batch), rows ``n_1..n_d``, columns ``m_1..m_d``.
        b: a TT vector over ``A``'s row modes.
        c: a TT vector over ``A``'s column modes.

    Returns:
        A 0-dim tensor, or a vector of length B if any operand is a batch.

    Raises:
        TypeError: an operand is not a TT object, or ``A`` is not a TT-matrix.
        ShapeError: modes, batch sizes, dtypes or devices disagree.

    Complexity: O(d B r^3 n m) with r the largest rank of the three.

    Example:
        >>> import tensortrain as tt
        >>> A = tt.random_matrix([[2, 3], [4, 5]])
        >>> b, c = tt.random_tensor((2, 3)), tt.random_tensor((4, 5))
        >>> tt.bilinear_form(A, b, c).shape
        torch.Size([])
    """
    check_matrix(A, "bilinear_form", "A")
    rows, cols = matrix_dims(A)
    cb = vector_cores(b, tuple(rows), "bilinear_form", "b")
    cc = vector_cores(c, tuple(cols), "bilinear_form", "c")
    check_dtype_device("bilinear_form", A, b, c)
    size, batch = broadcast_batch_size("bilinear_form", A, b, c)
    ca, cb, cc = (expand_cores(x, size) for x in (batched_cores(A), cb, cc))
    v = torch.ones(size, 1, 1, 1, dtype=A.dtype, device=A.device)
    for x, a, y in zip(cb, ca, cc, strict=True):
        t = torch.einsum("bpqs,bpnu->bqsnu", v, x)
        t = torch.einsum("bqsnu,bqnmw->bsuwm", t, a)
        v = torch.einsum("bsuwm,bsmz->buwz", t, y)
    res = v.reshape(size)
    return res if batch else res[0]


def quadratic_form(A: TensorTrainBase, b: TensorTrainBase, c: TensorTrainBase | None = None) -> torch.Tensor:
    """``b^T A b`` (or ``b^T A c`` when ``c`` is given: t3f's 3-argument alias of :func:`bilinear_form`).

    Args:
        A: a square-mode TT-matrix (batch).
        b: a TT vector over ``A``'s row modes.
        c: optional TT vector over ``A``'s column modes; defaults to ``b``.

    Returns:
        A 0-dim tensor, or a vector of length B for batches.

    Raises:
        TypeError, ShapeError: as :func:`bilinear_form`.

    Complexity: as :func:`bilinear_form`.

    Example:
        >>> import tensortrain as tt
        >>> A, b = tt.random_matrix([[2, 3], [2, 3]]), tt.random_tensor((2, 3))
        >>> tt.quadratic_form(A, b).shape
        torch.Size([])
    """
    return bilinear_form(A, b, b if c is None else c)


def bilinear_form_two_mat(
    x: TensorTrainBase, A: TensorTrainBase, B: TensorTrainBase, y: TensorTrainBase
) -> torch.Tensor:
    """``x^T A B y`` without forming ``A B`` (t3f's ``ops.bilinear_form_two_mat``); batches broadcast.

    Args:
        x: a TT vector over ``A``'s row modes.
        A: a TT-matrix ``(N x K)``.
        B: a TT-matrix ``(K x M)`` with row modes equal to ``A``'s column modes.
        y: a TT vector over ``B``'s column modes.

    Returns:
        A 0-dim tensor, or a vector of length B for batches.

    Raises:
        TypeError: an operand has the wrong kind.
        ShapeError: modes, batch sizes, dtypes or devices disagree.

    Complexity: O(d B r^4 n k m) with r the largest rank.

    Example:
        >>> import tensortrain as tt
        >>> A, B = tt.random_matrix([[2, 3], [2, 2]]), tt.random_matrix([[2, 2], [3, 2]])
        >>> x, y = tt.random_tensor((2, 3)), tt.random_tensor((3, 2))
        >>> tt.bilinear_form_two_mat(x, A, B, y).shape
        torch.Size([])
    """
    op = "bilinear_form_two_mat"
    check_matrix(A, op, "A")
    check_matrix(B, op, "B")
    rows_a, cols_a = matrix_dims(A)
    rows_b, cols_b = matrix_dims(B)
    if tuple(cols_a) != tuple(rows_b):
        raise ShapeError(f"{op}: A has column dims {tuple(cols_a)} but B has row dims {tuple(rows_b)}")
    cx = vector_cores(x, tuple(rows_a), op, "x")
    cy = vector_cores(y, tuple(cols_b), op, "y")
    check_dtype_device(op, x, A, B, y)
    size, batch = broadcast_batch_size(op, x, A, B, y)
    cx, ca, cbm, cy = (expand_cores(c, size) for c in (cx, batched_cores(A), batched_cores(B), cy))
    v = torch.ones(size, 1, 1, 1, 1, dtype=A.dtype, device=A.device)
    for gx, ga, gb, gy in zip(cx, ca, cbm, cy, strict=True):
        t = torch.einsum("bpqst,bpnu->bqstnu", v, gx)
        t = torch.einsum("bqstnu,bqnkw->bstukw", t, ga)
        t = torch.einsum("bstukw,bskmz->btuwzm", t, gb)
        v = torch.einsum("btuwzm,btme->buwze", t, gy)
    res = v.reshape(size)
    return res if batch else res[0]
