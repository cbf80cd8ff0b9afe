"""Norms and bilinear forms of TT objects: frobenius_norm(_squared), bilinear_form, quadratic_form.

Re-exported by :mod:`tensortrain.ops`. Symbols: ``d`` cores, ``n``/``m`` mode sizes, ``r`` TT-rank, ``B``
batch size. Nothing here builds a full tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._transforms import derivatives_possible, transforms_active, valueless, without_autocast
from .errors import ShapeError
from .operands import (
    as_flag,
    batched_cores,
    broadcast_batch_size,
    check_dtype_device,
    check_matrix,
    check_tt,
    describe,
    expand_cores,
    flat_modes,
    is_batch,
    matrix_dims,
    pow2_exponents,
    prescale,
    rescale_pow2,
    run_scaled,
    scale_pow2,
    scaled_sweep,
    unscale_pow2,
    vector_cores,
    wide_dtype,
)
from .products import inner_sweep
from .shapes import check_nonnegative
from .tensor_train import TensorTrainBase

__all__ = [
    "bilinear_form",
    "bilinear_form_two_mat",
    "frobenius_norm",
    "frobenius_norm_squared",
    "quadratic_form",
]


# ------------------------------------------------------------------------------------------------- norms
@without_autocast  # (a norm, as torch.linalg's under autocast: float32 products, not bf16's 3 digits)
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
    differentiable = as_flag(differentiable, "frobenius_norm_squared", "differentiable")
    if differentiable:
        cores = [flat_modes(c) for c in batched_cores(tt)]
        res = inner_sweep(cores, [c.conj() for c in cores], True).real
        return res if is_batch(tt) else res[0]
    derivatives = derivatives_possible(*tt.tt_cores)
    # The value from QR on detached cores where derivatives may be taken (no_grad alone stops no forward-mode
    # tangent: they were counted twice, QR's and the Gram sweep's); 0-dim for a single TT; the real dtype read
    # from a core (Dynamo cannot trace dtype.to_real)
    qr_cores = [c.detach() for c in tt.tt_cores] if derivatives else tt.tt_cores
    res = (_norm_by_qr(qr_cores, is_batch(tt)) ** 2).to(tt.tt_cores[0].real.dtype)
    if derivatives:
        cores = [flat_modes(c) for c in batched_cores(tt)]
        # QR's value with the (scaled) Gram sweep's derivatives, attached as an exact zero in the wide dtype:
        # graded - graded.detach() of an overflowed square would be inf - inf. The square from the Gram itself,
        # not a norm squared: the norm's masked root at 0 had zero second derivatives there.
        gram, exps = _scaled_gram(cores)
        sq = scale_pow2(gram, 2 * exps)
        zero = torch.where(torch.isfinite(sq), sq - sq.detach(), torch.zeros_like(sq))  # (inf - inf: NaN)
        res = res + (zero if is_batch(tt) else zero[0]).to(res.dtype)
    return res


def _scaled_gram(cores: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable squared norms ``(B,)`` of the cores scaled by ``2^-e`` each, in the wide dtype (float64;
    float32 on MPS), and the exponents ``e`` ``(B,)``: the squared norm is ``gram 2^(2e)``, the norm
    ``sqrt(gram) 2^e``. For derivatives.

    The Gram sweep runs on the cores scaled by powers of two to a largest magnitude below 1 (detached exponents,
    as the QR sweeps carry them; in float32 for half precision) and the exponents come back once at the end: the
    sweep on the cores themselves overflows (float32 past a norm of 1.8e19, float16 past 256) or underflows, and
    its gradient with it.
    """
    work = torch.float32 if cores[0].dtype in (torch.float16, torch.bfloat16) else cores[0].dtype
    scaled, exps = [], torch.zeros(cores[0].shape[0], dtype=torch.int64, device=cores[0].device)
    for c in cores:
        c = c.to(work)
        e = pow2_exponents(c)
        scaled.append(unscale_pow2(c, e))
        exps = exps + e
    wide = wide_dtype(cores[0].real)
    return inner_sweep(scaled, [c.conj() for c in scaled], True).real.to(wide).clamp_min(0.0), exps


def _masked_root(gram: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """The norms ``sqrt(gram) 2^exps``, with derivative 0 where ``gram`` is 0 (sqrt's is infinite there: fed 1
    and masked, so the gradient is 0, not NaN)."""
    zero = gram == 0
    root = torch.where(zero, 0.0, torch.sqrt(torch.where(zero, torch.ones_like(gram), gram)))
    return scale_pow2(root, exps)


def _norm_by_qr(tt_cores: Sequence[torch.Tensor], batch: bool) -> torch.Tensor:
    """The norms ``(B,)`` (a 0-dim one for a single TT object, whose ``tt_cores`` have no batch axis) by a QR sweep,
    in float64 (float32 on MPS): the squared norm of a representable norm may overflow or underflow the cores'
    dtype (float32 past 1.8e19 or below 1e-19, float16 past 256), so the last step is taken in the wider type.

    The sweep runs plainly first (:func:`_plain_norm`); only where that gives inf, NaN or 0, or a step's R fell
    below the normal range (where precision is lost), is it run again with every step scaled by a power of two
    (:func:`_scaled_last_core`), which costs about half a plain sweep more on small cores. The check syncs, so under
    compile, ``torch.func`` transforms and on meta or fake tensors the scaled sweep runs directly."""
    # LAPACK has no half-precision QR: factor float16/bfloat16 cores in float32.
    half = tt_cores[0].dtype in (torch.float16, torch.bfloat16)
    work = [c.float() for c in tt_cores] if half else list(tt_cores)
    norm, finite = None, False
    if not transforms_active() and not valueless(work[0]):
        norm, finite = _plain_norm(work, batch)
    if finite and norm is not None:
        return norm
    if norm is not None and not batch:
        norm = norm.unsqueeze(0)
    cores = [flat_modes(c) for c in (work if batch else (c.unsqueeze(0) for c in work))]
    if norm is None:
        # in the wide type: one power of two per step cannot hold parts of very different scales in float32
        # (the two terms of x - y, one with cores of 10 and 0.1, the other balanced: the second underflows)
        last, exps = _scaled_last_core([c.to(wide_dtype(c)) for c in cores])
        last = last.flatten(1)
        top = pow2_exponents(last)  # (a norm computed on the raw core overflows past 1e154 in float64)
        norm = torch.linalg.vector_norm(unscale_pow2(last, top).to(wide_dtype(last)), dim=1)
        norm = scale_pow2(norm, exps + top)
    # LAPACK's QR can return a finite R for a column that holds a NaN: add 0 * (every core entry), which is 0 for
    # finite cores and NaN otherwise, so a non-finite TT never gets a finite norm.
    if not finite:
        norm = norm + sum((c.flatten(1) * 0).sum(dim=1).real.to(norm.dtype) for c in cores)
    return norm if batch else norm[0]


def _plain_norm(cores: list[torch.Tensor], batch: bool) -> tuple[torch.Tensor | None, bool]:
    """The plain QR sweep of :func:`_norm_by_qr` on the cores as stored (2-D QRs and products for a single TT)
    and, from one sync, whether its norm is to be trusted (finite, nonzero, no step's R nor the last core below
    the normal range: None otherwise) and whether every core entry is finite (a finite norm per core: one that
    overflows is only a false alarm, the NaN term is then added as before)."""
    tiny = torch.finfo(cores[0].real.dtype).tiny
    if batch:
        b = cores[0].shape[0]
        carry, tops = cores[0].reshape(b, -1, cores[0].shape[-1]), []
        for nxt in cores[1:]:
            rmat = torch.linalg.qr(carry, mode="r").R
            tops.append(torch.linalg.vector_norm(rmat, ord=math.inf, dim=(1, 2)))
            carry = torch.bmm(rmat, nxt.reshape(b, nxt.shape[1], -1)).reshape(b, -1, nxt.shape[-1])
        last = carry.reshape(b, -1)
        tops.append(torch.linalg.vector_norm(last, ord=math.inf, dim=1))
        norm = torch.linalg.vector_norm(last.to(wide_dtype(last)), dim=1)
        # (one kernel for the cores' norms: _foreach_norm takes a complex core's modulus)
        checks = torch.cat([*tops, norm, torch.stack(torch._foreach_norm(cores))])
        n_top = b * len(tops)
    else:
        carry, mats = cores[0].reshape(-1, cores[0].shape[-1]), []
        for nxt in cores[1:]:
            rmat = torch.linalg.qr(carry, mode="r").R
            mats.append(rmat)
            carry = (rmat @ nxt.reshape(nxt.shape[0], -1)).reshape(-1, nxt.shape[-1])
        mats.append(carry)
        norm = torch.linalg.vector_norm(carry.to(wide_dtype(carry)))
        # (one kernel for the matrices' largest magnitudes, one for the cores' norms; one stack, one sync)
        checks = torch.stack([*torch._foreach_norm(mats, ord=math.inf), norm, *torch._foreach_norm(cores)])
        n_top = len(mats)
    vals = checks.tolist()  # (one sync; never on meta or fake tensors: see _norm_by_qr)
    n_norm = norm.numel()
    ok = all(t >= tiny for t in vals[:n_top]) and all(0 < v < math.inf for v in vals[n_top : n_top + n_norm])
    return (norm if ok else None), all(map(math.isfinite, vals[n_top + n_norm :]))


def _scaled_last_core(cores: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Push the norm into the last core by a left-to-right QR sweep, each step's R brought to a largest magnitude
    below 1 (exactly, by a power of two): carried unscaled, the product of unbalanced core scales (1e5 on half of
    16 cores, 1e-5 on the rest) overflows float32 on the way to a norm of 256. Returns the last ``(B, r, n, 1)``
    core divided by ``2^e`` and the exponents ``e`` ``(B,)``."""
    carry = cores[0]
    exps = torch.zeros(carry.shape[0], dtype=torch.int64, device=carry.device)
    for nxt in cores[1:]:
        bs, r, n, s = carry.shape
        _, rmat = torch.linalg.qr(carry.reshape(bs, r * n, s), mode="r")
        rmat, exps = rescale_pow2(rmat, exps)
        carry = torch.bmm(rmat, nxt.reshape(bs, nxt.shape[1], -1)).reshape(bs, rmat.shape[1], *nxt.shape[2:])
    return carry, exps


@without_autocast
def frobenius_norm(tt: TensorTrainBase, epsilon: float = 0.0, differentiable: bool = False) -> torch.Tensor:
    """The Frobenius norm of a TT object (a vector for a batch).

    Differs from t3f on purpose: t3f returns ``sqrt(norm^2 + 1e-5)`` by default (biased, for a finite
    gradient at zero). Here the default ``epsilon=0`` gives the true norm, and the gradient at a zero
    tensor is 0 instead of NaN; pass ``epsilon=1e-5`` for t3f's exact values.

    Args:
        tt: a TT object.
        epsilon: added to the squared norm under the square root (t3f compatibility).
        differentiable: compute the value with the Gram sweep instead of QR (on cores scaled by powers of two:
            a norm that fits the dtype is returned where its square would not; but a core whose parts differ
            in scale by more than the dtype's range, as in a sum of unbalanced trains, loses the smaller part
            there, which QR keeps).

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
    check_nonnegative(epsilon, "frobenius_norm: epsilon")  # (as renormalize_tt_cores)
    differentiable = as_flag(differentiable, "frobenius_norm", "differentiable")
    epsilon = float(epsilon)
    if not differentiable:
        # the value from the QR sweep's norm, in a wide type: a norm whose square leaves the cores' dtype range
        # (float32 past 1.8e19, float16 past 256) is still returned exactly; the gradient is the Gram sweep's
        check_tt(tt, "frobenius_norm", "tt")
        graded_too = derivatives_possible(*tt.tt_cores)
        # (detached cores where derivatives may be taken, as in frobenius_norm_squared: no tangent from QR)
        value = _norm_by_qr([c.detach() for c in tt.tt_cores] if graded_too else tt.tt_cores, is_batch(tt))
        if epsilon:  # (hypot(norm, 0) is the norm itself)
            # hypot, not sqrt(norm^2 + eps): the square of a float64 norm of 1e160 (or 1e-170) leaves the range
            value = torch.hypot(value, torch.full_like(value, epsilon).sqrt())
        value = value.to(tt.tt_cores[0].real.dtype)  # (not tt.dtype.to_real(): a graph break)
        if graded_too:
            graded = _gram_norm(tt, epsilon)  # the derivatives, from scaled cores (an exact zero is added)
            zero = torch.where(torch.isfinite(graded), graded - graded.detach(), torch.zeros_like(graded))
            # (value is 0-dim for a single TT)
            value = value + (zero if is_batch(tt) else zero[0]).to(value.dtype)
        return value
    check_tt(tt, "frobenius_norm", "tt")
    # The Gram sweep on scaled cores, not the root of frobenius_norm_squared's: that square leaves the dtype's
    # range where the norm itself fits (float32 past a norm of 1.8e19 or below 1e-19, float16 past 256).
    value = _gram_norm(tt, epsilon).to(tt.tt_cores[0].real.dtype)
    return value if is_batch(tt) else value[0]


def _gram_norm(tt: TensorTrainBase, epsilon: float) -> torch.Tensor:
    """The norms ``sqrt(norm^2 + epsilon)`` ``(B,)`` by the Gram sweep on scaled cores, in the wide dtype:
    differentiable, with gradient 0 (not NaN) at a zero tensor when ``epsilon`` is 0."""
    gram, exps = _scaled_gram([flat_modes(c) for c in batched_cores(tt)])
    root = _masked_root(gram, exps)
    if not epsilon:
        return root
    # sqrt(norm^2 + eps) from the square itself where it fits: smooth at a zero tensor (the masked root has no
    # curvature there); hypot of the root where the square overflows
    sq = scale_pow2(gram, 2 * exps) + epsilon
    fits = torch.isfinite(sq)
    smooth = torch.sqrt(torch.where(fits, sq, torch.ones_like(sq)))
    return torch.where(fits, smooth, torch.hypot(root, torch.full_like(root, epsilon).sqrt()))


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

    Complexity: O(d B r^4 n m) with r the largest rank of the three (each step contracts three cores).

    Example:
        >>> import tensortrain as tt
        >>> A = tt.random_matrix([[2, 3], [4, 5]])
        >>> b, c = tt.random_tensor((2, 3)), tt.random_tensor((4, 5))
        >>> tt.bilinear_form(A, b, c).shape
        torch.Size([])
    """
    return _bilinear_form("bilinear_form", A, b, c)


def _bilinear_form(op: str, A: TensorTrainBase, b: TensorTrainBase, c: TensorTrainBase) -> torch.Tensor:
    """:func:`bilinear_form` with ``op`` naming the public function in error messages."""
    check_matrix(A, op, "A")
    rows, cols = matrix_dims(A)
    cb = vector_cores(b, tuple(rows), op, "b")
    cc = vector_cores(c, tuple(cols), op, "c")
    check_dtype_device(op, A, b, c)
    size, batch = broadcast_batch_size(op, A, b, c)
    ca, cb, cc = (expand_cores(x, size) for x in (batched_cores(A), cb, cc))
    v = torch.ones(size, 1, 1, 1, dtype=A.dtype, device=A.device)

    def step(v: torch.Tensor, k: int, *ops: list[torch.Tensor]) -> torch.Tensor:
        cb, ca, cc = ops
        # the three contractions as batched matmuls (einsum's per-call overhead was most of a small form's time)
        (_, p, q, s), (n, u), (m, w), z = v.shape, cb[k].shape[2:], ca[k].shape[3:], cc[k].shape[-1]
        # (b, q s, n u)
        t = torch.bmm(v.reshape(size, p, q * s).transpose(1, 2), cb[k].reshape(size, p, n * u))
        t = t.reshape(size, q, s, n, u).permute(0, 2, 4, 1, 3).reshape(size, s * u, q * n)
        t = torch.bmm(t, ca[k].reshape(size, q * n, m * w))  # (b, s u, m w)
        t = t.reshape(size, s, u, m, w).permute(0, 2, 4, 1, 3).reshape(size, u * w, s * m)
        return torch.bmm(t, cc[k].reshape(size, s * m, z)).reshape(size, u, w, z)

    def sweep(scaled: bool) -> torch.Tensor:
        # (each step multiplies by three cores: scaled, they are scaled too)
        ops, exps = prescale(cb, ca, cc) if scaled else ([cb, ca, cc], None)
        return scaled_sweep(v, lambda v, k: step(v, k, *ops), len(ca), scaled, lead=1, exps=exps)

    res = run_scaled(sweep, cb, ca, cc, contracted=True)
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
        TypeError, ShapeError: as :func:`bilinear_form`; ShapeError also when ``c`` is omitted and ``A``'s
            row and column modes differ.

    Complexity: as :func:`bilinear_form`.

    Example:
        >>> import tensortrain as tt
        >>> A, b = tt.random_matrix([[2, 3], [2, 3]]), tt.random_tensor((2, 3))
        >>> tt.quadratic_form(A, b).shape
        torch.Size([])
    """
    op = "quadratic_form"
    if c is None:
        check_matrix(A, op, "A")
        rows, cols = matrix_dims(A)
        # Checked here: otherwise b, reused as c, is reported against A's column modes as a wrong "c".
        if rows != cols:
            raise ShapeError(
                f"{op}: A must have square modes (row dims == column dims) for b^T A b, got {describe(A)}; "
                "pass c for b^T A c with a non-square A"
            )
        c = b
    return _bilinear_form(op, A, b, c)


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

    Complexity: O(d B r^5 n k m) with r the largest rank (each step contracts four cores).

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

    def step(v: torch.Tensor, k: int, *ops: list[torch.Tensor]) -> torch.Tensor:
        cx, ca, cbm, cy = ops
        t = torch.einsum("bpqst,bpnu->bqstnu", v, cx[k])
        t = torch.einsum("bqstnu,bqnkw->bstukw", t, ca[k])
        t = torch.einsum("bstukw,bskmz->btuwzm", t, cbm[k])
        return torch.einsum("btuwzm,btme->buwze", t, cy[k])

    def sweep(scaled: bool) -> torch.Tensor:
        # (scaled as bilinear_form's sweep: four unbalanced TTs overflow the partial products sooner than one)
        ops, exps = prescale(cx, ca, cbm, cy) if scaled else ([cx, ca, cbm, cy], None)
        return scaled_sweep(v, lambda v, k: step(v, k, *ops), len(ca), scaled, lead=1, exps=exps)

    res = run_scaled(sweep, cx, ca, cbm, cy, contracted=True)
    return res if batch else res[0]
