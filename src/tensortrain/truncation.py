"""Truncated factorizations of (batched) matrices: the one numerical step inside TT-SVD and TT-rounding.

Symbols: ``B`` batch size, ``m x n`` the matrix (an unfolding), ``r`` the kept rank, ``k = r + p`` the sketch
size of the randomized path (``p`` oversampling), ``q`` power iterations.

:func:`truncated_factor` returns ``left @ right`` with ``left`` having orthonormal columns; the rank is the
smallest that meets an absolute Frobenius error ``delta`` (per batch element, the maximum over the batch), capped
by ``max_rank``. Two paths:

* ``"exact"``: ``torch.linalg.svd``; the optimal rank-``r`` approximation (Eckart-Young).
* ``"randomized"``: a randomized range finder with power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4):
  ``Y = (A A^H)^q A Omega`` (re-orthonormalized after every product), ``Q = orth(Y)``, then the exact SVD of
  the small ``Q^H A``. The orthonormalizations are shifted CholeskyQR3 with float64 Gram matrices
  (GEMM-bound; LAPACK's Householder QR is slow on loaded multi-threaded CPUs), certified by an orthogonality
  check, with Householder QR as the fallback for rank-deficient sketches (and for small matrices, where
  CholeskyQR3's fixed cost dominates). Cost ``O(B m n k (2q + 2))``
  against ``O(B m n min(m, n))`` for the exact SVD. With ``q = 2`` and ``p >= 10`` its error measured 0.5-1.5%
  above the optimum on 256-4096 rows (Gaussian and ``1/sqrt(k)`` spectra, caps 32-64)
  and up to 3% for a forced sketch on a flat spectrum; the worst an audit found (session 24) was 4.2%, a step
  spectrum (1 up to the cap, 0.8 to about 1.5 k, then 0) at 1024 x 1024 and 4096 x 4096; the tests check 1.05x
  there. Omega is drawn from a fixed seed (deterministic results): the bound is probabilistic over inputs
  unrelated to that sketch, and a matrix constructed against it (its top right singular vectors orthogonal to
  Omega) can miss it by orders of magnitude in float64.
  With ``delta`` given, its error is *measured* (``||A - Q Q^H A||_F`` is computed explicitly, not estimated)
  so the bound is certified; when the sketch cannot meet it, the exact path is taken.

``"auto"`` takes the randomized path only where it is both safe and much faster: no ``delta`` (a pure rank
cap), an unfolding whose exact SVD costs ``m n min(m, n) >= 2^30`` (1024 x 1024 and up: about 0.15 s on two
CPU threads, 10x the sketch's time), and a sketch ``k`` of at most ``min(m, n) / 4``; the exact path otherwise,
so smaller problems (t3f's MNIST tutorial's 784 x 625 layer) get the optimal truncation, as t3f computes it. A cap at or
above ``min(m, n)`` with no ``delta`` is no truncation at all: a QR (or nothing) is enough there.

The random sketch is drawn from a generator with a fixed seed, so results are reproducible.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import torch

from ._transforms import derivatives_possible, transforms_active, valueless
from .operands import pow2_exponents, unscale_pow2, wide_dtype

__all__ = ["METHODS", "Method", "check_method", "truncated_factor"]

Method = Literal["auto", "exact", "randomized"]
METHODS: tuple[str, ...] = get_args(Method)

_OVERSAMPLE = 10  # p: Halko et al. recommend 5-10; we also use r/4 when larger
_POWER_ITERS = 2  # q: 4096^2 -> rank 64: error 1.004-1.005x the exact one (q=1: 1.008x, q=3: 1.003x)
# m n min(m, n) from which "auto" samples: below it the exact SVD takes under about 0.15 s on two CPU threads
# (1024 x 1024: 0.17 s exact, 0.014 s randomized; 784 x 625: 0.04 s against 0.003 s), and an exact result, the
# optimal truncation and the same as t3f's, is worth more than those milliseconds
_AUTO_MIN_WORK = 1 << 30
_AUTO_MAX_FRACTION = 4  # randomized only if the sketch k <= min(m, n) / 4
_SEED = 20111
_RESIDUAL_BLOCK = 1 << 22  # elements of A per block of the certified residual (16 MiB of float32)
# m k^2 up to which _orth takes Householder QR: there a CholeskyQR3's dozen kernels and syncs cost more than the
# QR itself (32 x 4: 50 us against 4 us; 256 x 16: 81 against 22 us, one thread), as in the QR sweeps
_SMALL_ORTH = 1 << 16
_HOST_RANKS = 1024  # singular values (all batch elements) up to which _exact picks its rank in Python


def check_method(method: object, name: str) -> Method:
    """Return ``method`` if it is one of :data:`METHODS`, else raise ``ValueError`` listing them.

    Args:
        method: the value given by the user.
        name: the calling function's name for the message.

    Returns:
        The validated method.

    Raises:
        ValueError: ``method`` is not ``"auto"``, ``"exact"`` or ``"randomized"``.

    Complexity: O(1).

    Example:
        >>> check_method("exact", "round")
        'exact'
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    return method  # type: ignore[return-value]


def sketch_size(max_rank: int, m: int, n: int) -> int:
    """``k = r + p`` columns of the randomized sketch (never more than ``min(m, n)``)."""
    return min(max_rank + max(_OVERSAMPLE, max_rank // 4), m, n)


def use_randomized(method: Method, max_rank: int, m: int, n: int, has_delta: bool) -> bool:
    """Whether ``truncated_factor`` takes the randomized path for an ``m x n`` matrix."""
    if method == "exact" or max_rank >= min(m, n):
        return False
    if method == "randomized":
        return True
    small = min(m, n)
    return (
        (not has_delta)
        and m * n * small >= _AUTO_MIN_WORK
        and sketch_size(max_rank, m, n) * _AUTO_MAX_FRACTION <= small
    )


def truncated_factor(
    a: torch.Tensor, max_rank: int, delta: torch.Tensor | None = None, method: Method = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factor a batch of matrices as ``left @ right`` with the smallest rank that keeps ``||a - left @ right||_F``
    within ``delta``, at most ``max_rank``.

    Args:
        a: a ``(B, m, n)`` tensor (finite; checked by the callers).
        max_rank: cap on the rank (>= 1).
        delta: ``(B,)`` absolute Frobenius error allowed per element, or None for a pure rank cap.
        method: ``"auto"``, ``"exact"`` or ``"randomized"`` (see the module docstring).

    Returns:
        ``left`` ``(B, m, r)`` with orthonormal columns and ``right`` ``(B, r, n)``; ``r`` is the same for the
        whole batch (the largest any element needs).

    Shape:
        a: ``(B, m, n)``.

    Complexity: exact O(B m n min(m, n)); randomized O(B m n k (2q + 2)).

    Example:
        >>> a = torch.randn(1, 6, 5, dtype=torch.float64)
        >>> left, right = truncated_factor(a, 2)
        >>> left.shape, right.shape
        (torch.Size([1, 6, 2]), torch.Size([1, 2, 5]))
    """
    m, n = a.shape[-2], a.shape[-1]
    if delta is None and max_rank >= min(m, n):
        return _lossless(a)
    # (a meta or fake tensor has shapes only: no random sketch, no orthogonality checks; the exact path's ranks are
    # the same)
    randomized = not valueless(a) and use_randomized(method, max_rank, m, n, delta is not None)
    tangents = not valueless(a) and derivatives_possible(a)
    # Scaled here: each batch element divided by a power of two (exact) to a largest magnitude in [0.5, 1), and
    # right scaled back (the same factors). Where the randomized path overflowed (its sketch A @ Omega of a
    # float64 A of norm 8e307), and where SVD's backward would square singular values out of the dtype's range
    # (NaN gradients from a float32 A of norm 1e20 or 1e-25, float64 1e160 or 1e-170, whose forward is fine):
    # under a transform always (no syncs there), else once an SVD's top singular values leave the fourth roots
    # of the range. Both checks read a few numbers; scaling every randomized call (a pass that writes A) made
    # a 4096 x 4096 TT-SVD to rank 64 1.2x slower.
    e = pow2_exponents(a) if tangents and transforms_active() else None
    if e is not None:
        a, delta = _scaled(a, delta, e)
    out = _sketched(a, max_rank, delta) if randomized else None
    # (the sketch's small SVD squares singular values in backward as the exact one does: NaN gradients at
    # float32 1e20 had the same cause; right's first row is s_0 times a unit vector)
    if e is None and (
        out is False or (out and tangents and not _in_square_range(out[1][..., :1, :].norm(dim=-1)))
    ):
        e = pow2_exponents(a)
        a, delta = _scaled(a, delta, e)
        out = _sketched(a, max_rank, delta)
    if not out:  # (None: the sketch cannot meet delta; False: it overflowed even scaled, as exact will say)
        usv = _svd(a)
        if tangents and e is None and not _in_square_range(usv[1]):
            e = pow2_exponents(a)
            a, delta = _scaled(a, delta, e)
            usv = _svd(a)
        out = _exact(usv, max_rank, delta)
    left, right = out
    # (2^e itself is a number of the dtype: pow2_exponents clamps e)
    return left, right if e is None else unscale_pow2(right, -e)


def _sketched(
    a: torch.Tensor, max_rank: int, delta: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None | Literal[False]:
    """:func:`_randomized`'s factors, None as it gives, or False where they overflowed (non-finite, or an SVD
    that LAPACK refused for non-finite input)."""
    try:
        out = _randomized(a, max_rank, delta)
    except torch.linalg.LinAlgError:
        return False
    if out is not None and not bool(torch.isfinite(out[0].sum() + out[1].sum())):
        return False
    return out


def _scaled(
    a: torch.Tensor, delta: torch.Tensor | None, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``a`` and ``delta`` divided by ``2^e`` per batch element."""
    return unscale_pow2(a, e), None if delta is None else unscale_pow2(delta, e)


def _in_square_range(s: torch.Tensor) -> bool:
    """Whether every batch element's largest singular value ``s[:, 0]`` lies within the fourth roots of its
    dtype's range (3e-10 to 4e9 in float32, 1e-77 to 1e77 in float64), where no square in SVD's backward leaves
    the range."""
    lo, hi = _square_range(s.dtype)
    return all(lo <= row[0] <= hi for row in s.detach().tolist())  # (one copy: cheaper than slicing first)


@functools.cache
def _square_range(dtype: torch.dtype) -> tuple[float, float]:
    info = torch.finfo(dtype)
    return info.tiny**0.25, info.max**0.25


def _lossless(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """No truncation: the identity for a wide matrix, a reduced QR for a tall one."""
    m, n = a.shape[-2], a.shape[-1]
    if m <= n:
        # its own copy per batch element: an expanded view would alias one buffer across a batch's cores
        eye = torch.eye(m, dtype=a.dtype, device=a.device)
        eye = eye.unsqueeze(0) if a.shape[0] == 1 else eye.repeat(a.shape[0], 1, 1)
        return eye, a
    q = _orth(a)
    return q, q.mH @ a


def _rank_for(tail2: torch.Tensor, delta: torch.Tensor | None, max_rank: int) -> int:
    """The smallest ``j`` with ``tail2[:, j] <= delta^2`` for every batch element, capped by ``max_rank``.

    ``tail2[:, j]`` is the squared error of keeping ``j`` components (decreasing in ``j``, last entry 0 or the
    residual outside the sketch).
    """
    if delta is None:
        return min(max_rank, tail2.shape[-1] - 1)
    ok = tail2 <= (delta * delta).unsqueeze(-1)
    # first True per row; argmax of a bool finds it (every row has one: the caller guarantees the last)
    needed = int(ok.to(torch.int8).argmax(dim=-1).max())
    return max(1, min(max_rank, needed))


def _rank_on_host(s: torch.Tensor, delta: torch.Tensor, max_rank: int) -> int:
    """``_rank_for(_tails(s, unit), _acc(delta) / unit, max_rank)`` with ``unit = _unit(s)``, in Python floats:
    the same float64 operations in the same order (CPU's cumsum adds one by one from the first element), so
    the same rank, without a dozen tiny kernels (about 20 us a call on small unfoldings). CPU only."""
    needed = 0
    # (tolist() gives a float32 value as the Python float (float64) it equals: what _acc's cast gives)
    for row, budget in zip(s.tolist(), delta.tolist(), strict=True):
        unit = row[0] if row[0] > 0 else 1.0
        rel = budget / unit
        bound, tail, j = rel * rel, 0.0, len(row)  # tails[len(row)] = 0 <= bound
        for i in range(len(row) - 1, -1, -1):  # tails[i] = tails[i + 1] + (s_i / unit)^2, decreasing in i
            x = row[i] / unit
            tail += x * x
            if not tail <= bound:
                break
            j = i
        needed = max(needed, j)
    return max(1, min(max_rank, needed))


def _acc(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, in float64 for the rank decisions (float32 on MPS, which has no float64)."""
    return x.detach().to(wide_dtype(x.real))


def _unit(s: torch.Tensor) -> torch.Tensor:
    """``(B,)`` scales for the rank decisions: each element's largest singular value (1 for a zero matrix).

    Squares of singular values and of the error budget are compared after dividing by it: squared as they are,
    a float64 input of norm 1e160 or 1e-170 overflows to inf or underflows to 0 (rank 1 for any epsilon).
    """
    top = _acc(s[..., 0])  # (an unfolding has at least one singular value: TT modes are never empty)
    return torch.where(top > 0, top, torch.ones_like(top))


def _tails(s: torch.Tensor, unit: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """``tails[:, j] = base + sum_{i >= j} (s_i / unit)^2`` for ``j = 0..len(s)``."""
    s2 = (_acc(s) / unit.unsqueeze(-1)) ** 2
    rev = torch.flip(torch.cumsum(torch.flip(s2, [-1]), -1), [-1])
    tails = torch.cat([rev, torch.zeros_like(rev[..., :1])], dim=-1)
    return tails if base is None else tails + base.unsqueeze(-1)


def _svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced SVD; a wide matrix is factored through its (tall) conjugate transpose, for which LAPACK is
    several times faster (measured 5x on 64 x 262144)."""
    if a.shape[-2] < a.shape[-1]:
        v, s, uh = torch.linalg.svd(a.mH, full_matrices=False)
        return uh.mH, s, v.mH
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u, s, vh


def _svd_wide(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of a short, wide ``b`` (B, k, n): orthonormalize ``b^H = Q R`` first, then the k x k SVD of
    ``R^H`` (``b = U S (Q W)^H``); LAPACK then only sees a k x k matrix."""
    q = _orth(b.mH)
    u, s, wh = torch.linalg.svd(b @ q, full_matrices=False)  # b Q = R^H, k x k
    return u, s, wh @ q.mH


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of a tall ``y`` (B, m, k).

    Shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa 2020) with the k x k Gram
    matrices in float64: a shifted pass makes the basis well conditioned, two plain passes make it
    orthonormal. GEMMs and tiny factorizations only, so much faster than LAPACK's Householder QR on a busy
    multi-threaded CPU (4096 x 74: 1 s on 2 loaded threads against 0.1 s). Plain passes (at least one) repeat
    until ``||Q^H Q - I||_max <= 1e-14`` (at most three); when a Cholesky fails or the passes do not converge (a
    numerically rank-deficient ``y``), Householder QR. Small ones (``m k^2 <= 2^16``, the unfoldings of small
    TTs) take Householder QR directly: there the fixed cost of CholeskyQR3's kernels and syncs dominates.
    """
    m, k = y.shape[-2], y.shape[-1]
    if y.device.type == "mps" or valueless(y) or m < 4 * k or m * k * k <= _SMALL_ORTH:
        return torch.linalg.qr(y).Q
    q = y.to(torch.complex128 if y.is_complex() else torch.float64)
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    for step in range(5):
        gram = q.mH @ q
        if step == 0:
            # shift = 11 (m k + k (k + 1)) u ||y||_F^2, the paper's choice with u = 2^-53
            norm2 = gram.diagonal(dim1=-2, dim2=-1).real.sum(-1)
            gram = gram + (11 * (m * k + k * (k + 1)) * 2.0**-53 * norm2)[..., None, None] * eye
        elif step >= 2 and bool((gram - eye).abs().amax() <= 1e-14):
            # certified orthonormal, usually after the shifted pass and one plain one. Never right after the
            # shifted pass: its basis can be orthonormal to only ~1e-13 (12 x 3) .. 1e-8 (4096 x 74), and callers
            # represent a matrix as q (q^H a), which is off by that much
            return q.to(y.dtype)
        elif step == 4:
            break
        low, info = torch.linalg.cholesky_ex(gram)
        if bool((info != 0).any()):
            break
        # q L^{-H} as a GEMM with the small inverse: cheaper than a tall triangular solve
        q = q @ torch.linalg.solve_triangular(low, eye, upper=False).mH
    return torch.linalg.qr(y).Q


def _exact(
    usv: tuple[torch.Tensor, torch.Tensor, torch.Tensor], max_rank: int, delta: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The truncation of a matrix given by its reduced SVD ``usv`` (from :func:`_svd`)."""
    u, s, vh = usv
    if delta is None:  # (a pure rank cap: no tails to compare)
        r = min(max_rank, s.shape[-1])
    elif s.device.type == "cpu" and s.numel() <= _HOST_RANKS:
        r = _rank_on_host(s, delta, max_rank)
    else:
        unit = _unit(s)
        r = _rank_for(_tails(s, unit), _acc(delta) / unit, max_rank)
    return u[..., :r], s[..., :r, None] * vh[..., :r, :]


def _randomized(
    a: torch.Tensor, max_rank: int, delta: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Randomized range finder + small SVD; None when ``delta`` cannot be met inside the sketch."""
    m, n = a.shape[-2], a.shape[-1]
    k = sketch_size(max_rank, m, n)
    gen = torch.Generator(device=a.device).manual_seed(_SEED)
    omega = torch.randn(a.shape[0], n, k, generator=gen, dtype=a.dtype, device=a.device)
    q = _orth(a @ omega)
    at = a.mH
    for _ in range(_POWER_ITERS):
        # Re-orthonormalize after each product: plain powers lose the small directions to round-off.
        q = _orth(at @ q)
        q = _orth(a @ q)
    b = q.mH @ a  # (B, k, n)
    ub, s, vh = _svd_wide(b)
    if delta is None:
        r = min(max_rank, s.shape[-1])
    else:
        # Certify: the error of keeping j components is ||A - QB||^2 + sum_{i >= j} s_i(B)^2, and the first
        # term is measured, not estimated from norms (that would cancel catastrophically).
        unit = _unit(s)
        outside = _residual2(a, q, b, unit)
        rel = _acc(delta) / unit
        if bool((outside > rel * rel).any()):
            return None
        r = _rank_for(_tails(s, unit, outside), rel, max_rank)
    return q @ ub[..., :r], s[..., :r, None] * vh[..., :r, :]


def _residual2(a: torch.Tensor, q: torch.Tensor, b: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``||A - Q B||_F^2 / unit^2`` per batch element, in float64, over blocks of columns.

    Blocks keep the temporaries (the residual, its modulus and its float64 copy) to about
    ``_RESIDUAL_BLOCK`` elements each instead of four copies of ``A``.
    """
    batch, m, n = a.shape
    step = max(1, _RESIDUAL_BLOCK // max(1, batch * m))
    scale = unit[:, None, None]
    total = torch.zeros_like(unit)
    for j in range(0, n, step):
        part = a[..., j : j + step] - q @ b[..., j : j + step]
        total += (_acc(part.abs()) / scale).pow(2).sum(dim=(-2, -1))
    return total
