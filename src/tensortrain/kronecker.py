"""Kronecker-factored matrices: TT-matrices of TT-rank 1 with square cores (t3f's ``kronecker``).

A TT-matrix of TT-rank 1 is ``A = A_1 (x) A_2 (x) ... (x) A_d`` with ``A_k`` the ``m_k x n_k`` slice of core
``k`` (row-major mode order, as ``torch.kron``). With square factors (``m_k = n_k``):

* ``det(A) = prod_k det(A_k)^(N / n_k)`` with ``N = prod_k n_k``;
* ``inv(A) = inv(A_1) (x) ... (x) inv(A_d)``; ``cholesky(A) = cholesky(A_1) (x) ... (x) cholesky(A_d)``.

Batches (``TensorTrainBatch``) are supported: every function works element by element.

Symbols: ``d`` cores, ``n`` the largest factor size, ``B`` batch size.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from ._transforms import transforms_active, valueless
from .errors import ShapeError
from .operands import wide_dtype
from .orthogonalization import compute_dtype
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = ["cholesky", "determinant", "inv", "slog_determinant"]


def _factors(kron_a: TensorTrainBase, fname: str) -> list[torch.Tensor]:
    """The Kronecker factors ``A_k`` as ``(n_k, n_k)`` tensors (``(B, n_k, n_k)`` for a batch)."""
    if not isinstance(kron_a, TensorTrainBase):
        raise TypeError(f"{fname}: expected a TT-matrix, got {type(kron_a).__name__}")
    if not kron_a.is_tt_matrix():
        raise ShapeError(f"{fname}: expected a TT-matrix, got a TT-tensor of shape {tuple(kron_a.shape)}")
    if any(r != 1 for r in kron_a.tt_ranks):
        raise ShapeError(
            f"{fname}: expected a Kronecker product (a TT-matrix of TT-rank 1), got TT-ranks "
            f"{kron_a.tt_ranks}; round it to rank 1 first if that approximation is acceptable"
        )
    rows, cols = cast(tuple[tuple[int, ...], tuple[int, ...]], kron_a.raw_shape)
    if tuple(rows) != tuple(cols):
        raise ShapeError(
            f"{fname}: the Kronecker factors must be square, got row modes {tuple(rows)} and column "
            f"modes {tuple(cols)}"
        )
    return [c[..., 0, :, :, 0] for c in kron_a.tt_cores]


def _in_compute_dtype(fn: object, f: torch.Tensor) -> torch.Tensor:
    """``fn(f)`` computed in float32 for a half-precision ``f`` (LAPACK has no half), cast back."""
    return fn(f.to(compute_dtype(f.dtype))).to(f.dtype)  # type: ignore[operator]


def _rebuild(factors: list[torch.Tensor], like: TensorTrainBase) -> TensorTrainBase:
    cores = [f[..., None, :, :, None] for f in factors]
    return TensorTrainBatch(cores) if isinstance(like, TensorTrainBatch) else TensorTrain(cores)


def determinant(kron_a: TensorTrainBase) -> torch.Tensor:
    """The determinant of a Kronecker-product matrix (may overflow: see :func:`slog_determinant`).

    Args:
        kron_a: a TT-matrix (or batch) of TT-rank 1 with square factors.

    Returns:
        A scalar tensor (``(B,)`` for a batch). Differentiable.

    Raises:
        TypeError: not a TT object.
        ShapeError: a TT-tensor, TT-rank above 1, or non-square factors.

    Complexity: O(d n^3).

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.TensorTrain([2 * torch.eye(2)[None, :, :, None], 3 * torch.eye(3)[None, :, :, None]])
        >>> float(tt.kronecker.determinant(a))  # 2^6 * 3^6
        46656.0
    """
    # sign * exp(log|det|) from the factors' slogdets: multiplying the powered factor determinants would
    # overflow one to inf and underflow another to 0 (NaN) where the product itself is an ordinary number. In
    # the wide dtype, so that exp(log) loses no digits (float32: 46656 came back as 46656.008)
    factors = _factors(kron_a, "determinant")
    wide = [f.to(wide_dtype(f)) for f in factors]
    sign, logabsdet = _slogdet(wide)
    singular = sign == 0
    if not transforms_active() and not valueless(singular) and not bool(singular.any()):
        # (under a transform no data-dependent branch: both paths below, picked per element by torch.where)
        return (sign * torch.exp(logabsdet)).to(factors[0].dtype)
    # At a singular factor the gradient of exp(log|det|) is 0 * inf = NaN. Singular elements take another
    # branch, the non-singular ones the slogdet path; each branch sees identities where the other is taken, so
    # neither backward meets a singular matrix or an overflowing power.
    sizes = [int(f.shape[-1]) for f in factors]
    total = math.prod(sizes)
    pick = singular[..., None, None]
    eyes = [torch.eye(n, dtype=f.dtype, device=f.device) for f, n in zip(wide, sizes, strict=True)]
    s2, l2 = _slogdet([torch.where(pick, e, f) for f, e in zip(wide, eyes, strict=True)])
    if sum(n > 1 for n in sizes) > 1:
        # Every factor then appears at least twice (its power is the product of the other sizes), so det(A) and
        # its gradient are exactly 0 at a singular element. The product of powered determinants could meet
        # 0 * inf = NaN there (a non-singular factor's power overflowing): a zero tied to the graph instead.
        direct = torch.zeros_like(sign) + sum((f * 0).sum((-2, -1)) for f in wide)
    else:
        # One matrix factor, appearing once: the product is exact, and det's own backward is finite there (at an
        # exactly singular factor it is torch.linalg.det's own gradient, which torch 2.13 gives as 0 where the
        # adjugate is the true one; a dense det has the same gradient)
        direct = torch.ones_like(sign)
        for f, e, n in zip(wide, eyes, sizes, strict=True):
            direct = direct * torch.linalg.det(torch.where(pick, f, e)) ** float(total // n)
    return torch.where(singular, direct, s2 * torch.exp(l2)).to(factors[0].dtype)


def slog_determinant(kron_a: TensorTrainBase) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign and log of the absolute value of the determinant of a Kronecker-product matrix.

    Args:
        kron_a: a TT-matrix (or batch) of TT-rank 1 with square factors.

    Returns:
        ``(sign, logabsdet)``, scalars (``(B,)`` each for a batch), as ``torch.linalg.slogdet``.

    Raises:
        TypeError, ShapeError: as :func:`determinant`.

    Complexity: O(d n^3).

    Example:
        >>> import torch, tensortrain as tt
        >>> a1 = torch.diag(torch.tensor([-2.0, 1.0]))  # det -2, appears 3 times in A = a1 (x) I_3
        >>> a = tt.TensorTrain([a1[None, :, :, None], torch.eye(3)[None, :, :, None]])
        >>> sign, logdet = tt.kronecker.slog_determinant(a)  # det(A) = (-2)^3
        >>> float(sign), round(float(logdet), 4)
        (-1.0, 2.0794)
    """
    factors = _factors(kron_a, "slog_determinant")
    sign, logabsdet = _slogdet([f.to(compute_dtype(f.dtype)) for f in factors])  # (LAPACK has no half)
    return sign.to(factors[0].dtype), logabsdet.to(factors[0].real.dtype)


def _slogdet(factors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``slogdet`` of the Kronecker product of ``factors``: factor ``k`` appears ``prod(n) / n_k`` times."""
    total = math.prod(int(f.shape[-1]) for f in factors)
    sign, logdet = None, None
    for f in factors:
        s, ld = torch.linalg.slogdet(f)
        power = total // int(f.shape[-1])  # a Python int that may exceed int64 (65 factors of 2 x 2)
        if not s.is_complex():  # +1, -1 or 0: only the parity (and zero) matter
            s = s if power % 2 else s.abs()
        elif power <= 2**62:
            s = s**power
        else:  # a phase turned more than 2^62 times: only as exact as float(power) (s of 0 stays 0)
            turned = torch.polar(torch.ones_like(s.real), s.angle() * float(power))
            s = torch.where(s == 0, torch.zeros_like(s), turned)
        sign = s if sign is None else sign * s
        logdet = float(power) * ld if logdet is None else logdet + float(power) * ld
    return sign, logdet  # type: ignore[return-value]


def inv(kron_a: TensorTrainBase) -> TensorTrainBase:
    """The inverse of a Kronecker-product matrix, as a TT-matrix of TT-rank 1 (factor-wise inverses).

    Args:
        kron_a: a TT-matrix (or batch) of TT-rank 1 with square, invertible factors.

    Returns:
        A TT-matrix (or batch) of the same shape, TT-rank 1.

    Raises:
        TypeError, ShapeError: as :func:`determinant`.
        torch.linalg.LinAlgError: a singular factor.

    Complexity: O(d n^3).

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.TensorTrain([2 * torch.eye(2)[None, :, :, None], 4 * torch.eye(3)[None, :, :, None]])
        >>> tt.kronecker.inv(a).tt_cores[1][0, :, :, 0]
        tensor([[0.2500, 0.0000, 0.0000],
                [0.0000, 0.2500, 0.0000],
                [0.0000, 0.0000, 0.2500]])
    """
    return _rebuild([_in_compute_dtype(torch.linalg.inv, f) for f in _factors(kron_a, "inv")], kron_a)


def cholesky(kron_a: TensorTrainBase) -> TensorTrainBase:
    """The lower Cholesky factor of a symmetric (Hermitian) positive-definite Kronecker-product matrix.

    Because the Kronecker product of lower-triangular matrices is lower triangular (row-major mode order),
    the factor is the Kronecker product of the factors' Cholesky factors.

    A Hermitian positive-definite Kronecker product can be stored with scalars spread over its factors
    (``(-F) ⊗ (-G)``, ``(e^{it} F) ⊗ (e^{-it} G)``): each factor is first divided by its trace's phase (its
    sign when real), then must be Hermitian (symmetric), and the phases must multiply to 1.

    Args:
        kron_a: a TT-matrix (or batch) of TT-rank 1 whose square factors are Hermitian positive definite up to
            scalars that multiply to a positive number.

    Returns:
        ``L``, a TT-matrix (or batch) of TT-rank 1 with ``full(L) @ full(L).mH == full(kron_a)`` (``.T`` for
        real matrices).

    Raises:
        TypeError, ShapeError: as :func:`determinant`.
        torch.linalg.LinAlgError: a factor that is not Hermitian (symmetric) up to a scalar, not positive
            definite, or scalars whose product is not positive (``A`` is then not positive definite).

    Complexity: O(d n^3).

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.TensorTrain([4 * torch.eye(2)[None, :, :, None], 9 * torch.eye(2)[None, :, :, None]])
        >>> tt.kronecker.cholesky(a).tt_cores[0][0, :, :, 0]
        tensor([[2., 0.],
                [0., 2.]])
    """
    factors = []
    phases = None
    for k, f in enumerate(_factors(kron_a, "cholesky")):
        trace = torch.diagonal(f, dim1=-2, dim2=-1).to(wide_dtype(f)).sum(-1)  # (in float32 1e38 I overflows)
        # (the sign of a real trace; NaN for a zero trace, refused below)
        phase = (trace / trace.abs()).to(f.dtype)
        f = f / phase[..., None, None]
        phases = phase if phases is None else phases * phase
        if not transforms_active() and not valueless(f):  # (the checks sync: under torch.func, plain)
            tol = torch.finfo(f.real.dtype).eps ** 0.5 * f.detach().abs().amax(dim=(-2, -1))
            if not bool(((f.detach() - f.detach().mH).abs().amax(dim=(-2, -1)) <= tol).all()):
                raise torch.linalg.LinAlgError(
                    f"cholesky: Kronecker factor {k} is not Hermitian (symmetric) up to a scalar, so the "
                    "product is not either (or its trace is 0)"
                )
        factors.append(f)
    assert phases is not None
    if not transforms_active() and not valueless(phases) and not bool(((phases - 1).abs() <= 1e-3).all()):
        raise torch.linalg.LinAlgError(
            "cholesky: the Kronecker product is not positive definite: its factors are definite, but their "
            "scalars multiply to a negative (or complex) number"
        )
    return _rebuild([_in_compute_dtype(torch.linalg.cholesky, f) for f in factors], kron_a)
