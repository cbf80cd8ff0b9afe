"""The truncated-SVD sweeps of TT-SVD and TT-rounding, in a compute dtype, retried in a wider one on overflow.

What :mod:`tensortrain.decompositions` runs once it has checked its arguments (the error bounds, ``method`` and
the batch conventions are documented there): :func:`tt_svd` factors a dense batch ``(B, n_1 ... n_d)`` left to
right into cores ``(B, r_{k-1}, n_k, r_k)``; :func:`round_sweep` re-compresses merged ``(B, r, n, r')`` cores (a
QR sweep left to right, then truncated SVDs right to left, in t3f's order). Both give every SVD of the sweep the
budget ``eps ||A||_F / sqrt(d - 1)`` (Oseledets 2011), one per batch element, and factor each unfolding with
:func:`tensortrain.truncation.truncated_factor`. They run in ``compute_dtype`` (float32 for half precision);
finite data whose norm overflows that dtype (a float32 tensor of norm 4e38: the SVDs fail to converge or return
inf) is run again in the wide dtype, and an overflow in the widest is a ``ValueError`` named after the caller.
Kept apart from the argument checks and the public functions so that the numerics read on their own.

Symbols: ``d`` number of cores, ``n_k`` mode sizes, ``r_k`` TT-ranks, ``B`` batch size, ``eps`` relative
Frobenius error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._transforms import transforms_active
from .operands import wide_dtype
from .orthogonalization import all_finite, cast_back, compute_dtype, left_orthogonalize
from .truncation import Method, truncated_factor

__all__ = ["round_sweep", "tt_svd"]


def _deltas(norms: torch.Tensor | None, epsilon: float | None, d: int) -> torch.Tensor | None:
    """Per-SVD absolute error budgets ``(B,)`` from the norms ``(B,)`` of a batch's elements."""
    if norms is None or epsilon is None or d < 2:
        return None
    # Oseledets 2011: eps / sqrt(d - 1) per SVD makes the total relative error at most eps.
    return norms * (epsilon / math.sqrt(d - 1))


_HOST_NORMS = 1024  # batch elements up to which _norms tests its norms in Python


def _norms(x2d: torch.Tensor) -> torch.Tensor:
    """Row norms in float64 (float32 on MPS; the budgets are compared in that type). Taken in ``x``'s dtype
    first (fast); rows whose sum of squares may have overflowed or underflowed it (a float32 row of norm 2e19 reads
    as inf, one of 1e-20 as 0: an infinite or zero error budget) are taken again in the wide type."""
    norms = x2d.norm(dim=1).to(wide_dtype(x2d.real))
    small = math.sqrt(torch.finfo(x2d.dtype).tiny) * 1e9  # above it, underflowed squares are negligible
    if norms.shape[0] <= _HOST_NORMS and not transforms_active():  # (one sync, no mask kernels)
        if all(math.isfinite(v) and v >= small for v in norms.tolist()):
            return norms
    redo = ~torch.isfinite(norms) | (norms < small)
    if bool(redo.any()):
        # scaled by each row's largest magnitude: float64 squares overflow too (a row of norm 1e160)
        rows = x2d[redo].to(wide_dtype(x2d))
        top = rows.abs().amax(dim=1, keepdim=True)
        top = torch.where(top > 0, top, torch.ones_like(top))
        again = torch.linalg.vector_norm(rows / top, dim=1) * top.squeeze(1)
        norms = norms.masked_scatter(redo, again)
    return norms


# -------------------------------------------------------------------------------------------- TT-SVD
def tt_svd(
    a: torch.Tensor, modes: Sequence[int], caps: Sequence[int], epsilon: float | None, method: Method
) -> list[torch.Tensor]:
    """Cores ``(B, r_{k-1}, n_k, r_k)`` of the TT-SVD of ``a`` of shape ``(B, n_1 ... n_d)``."""
    dtype = a.dtype
    try:
        cores = _overflow_safe(
            lambda t: _tt_svd_in(t[0], modes, caps, epsilon, method), [a.to(compute_dtype(dtype))]
        )
    except _NoWiderType as err:
        raise ValueError(f"TT-SVD: {err}") from err.__cause__
    return cast_back(cores, dtype, "TT-SVD", finite=True)  # (finite: see _overflow_safe)


def _tt_svd_in(
    a: torch.Tensor, modes: Sequence[int], caps: Sequence[int], epsilon: float | None, method: Method
) -> list[torch.Tensor]:
    b, d = a.shape[0], len(modes)
    norms = None if epsilon is None or d < 2 else _norms(a.reshape(b, -1))
    if norms is not None and bool((norms > torch.finfo(a.dtype).max).any()):
        raise _Overflow
    delta = _deltas(norms, epsilon, d)
    cores, rest, r_prev = [], a, 1
    passed_through = True  # rest is still (a view of) the input: every unfolding so far wide and uncapped
    for k in range(d - 1):
        src = rest.reshape(b, r_prev * modes[k], -1)
        left, rest = truncated_factor(src, caps[k + 1], delta, method)
        passed_through = passed_through and rest is src
        r = left.shape[-1]
        cores.append(left.reshape(b, r_prev, modes[k], r))
        r_prev = r
    # the last core gets its own memory: a view of the caller's tensor would change with it (and an expanded
    # input would give a core that in-place updates refuse)
    cores.append((rest.clone() if passed_through else rest).reshape(b, r_prev, modes[-1], 1))
    return cores


class _Overflow(Exception):
    """A tensor's norm exceeds its dtype's range (the SVDs would fail to converge or return inf)."""


class _NoWiderType(ValueError):
    """An overflow in the widest type: the caller names itself and raises it as a ValueError."""


def _overflow_safe(
    run: Callable[[list[torch.Tensor]], list[torch.Tensor]], inputs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``run(inputs)``, again in the wide dtype where it overflowed: finite data whose norm exceeds the dtype's
    range (a float32 tensor of norm 4e38) made the SVDs fail to converge (an opaque ``LinAlgError``) or return
    inf. A result that still does not fit is the caller's ``cast_back`` error; float64 has no wider type, so an
    overflow there is a ``ValueError`` here."""
    cause: Exception | None = None
    try:
        out = run(inputs)
        if all_finite(out):
            return out
    except (_Overflow, torch.linalg.LinAlgError) as e:
        cause = e
    wide = wide_dtype(inputs[0])
    if wide == inputs[0].dtype:
        raise _failure(inputs[0].dtype, cause, "") from cause
    try:
        return run([t.to(wide) for t in inputs])
    except (_Overflow, torch.linalg.LinAlgError) as e:
        raise _failure(wide, e, "even ") from e


def _failure(dtype: torch.dtype, cause: Exception | None, even: str) -> _NoWiderType:
    """The error for a run that failed in the widest type: an overflow (inf or NaN results, or :class:`_Overflow`)
    or an SVD or QR that LAPACK could not compute (``LinAlgError``: inf or NaN in its matrix, which an overflow puts
    there, or, rarely, one on which its iteration does not converge). The original error is the cause."""
    name = str(dtype).removeprefix("torch.")
    if isinstance(cause, torch.linalg.LinAlgError):
        return _NoWiderType(
            f"a factorization failed in {name} ({str(cause).splitlines()[0]}): either the tensor's norm overflows "
            f"{even}{name} (scale the input down), or LAPACK did not converge on a finite matrix (rare: perturb the "
            "input slightly, or try another method=)"
        )
    return _NoWiderType(
        f"the tensor's norm overflows {even}{name} (largest value {torch.finfo(dtype).max:.3g}): its SVDs cannot "
        "be computed; scale the input down"
    )


def _round_in(
    cores: list[torch.Tensor], caps: Sequence[int], eps: float | None, method: Method
) -> list[torch.Tensor]:
    """:func:`tensortrain.decompositions.round` on merged ``(B, r, n, r')`` cores in the compute dtype.

    t3f's order, so that ported code gets t3f's cores: a left-to-right QR sweep (the norm in the last core), then
    truncated SVDs right to left of each core's ``r_{k-1} x (n_k r_k)`` unfolding, whose right factor (orthonormal
    rows) becomes the core and whose left factor moves into core ``k - 1``: the norm ends in the first core.
    (The mirror order gives another quasi-optimal approximant wherever more than one bond is cut.)"""
    cores = left_orthogonalize(cores)
    d, lead = len(cores), tuple(cores[0].shape[:-3])  # (a single TT's cores have no batch axis)
    b = lead[0] if lead else 1
    # After left-orthogonalization the norm of the whole tensor is the norm of the last core.
    norms = None if eps is None or d < 2 else _norms(cores[-1].reshape(b, -1))
    if norms is not None and not bool((norms <= torch.finfo(cores[0].dtype).max).all()):  # (NaN: inf cores)
        raise _Overflow
    delta = _deltas(norms, eps, d)
    for k in range(d - 1, 0, -1):
        r_prev, n_k, r_k = cores[k].shape[-3:]
        # the unfolding's conjugate transpose, (n_k r_k) x r_{k-1}, ~ left @ right: the unfolding ~ right^H left^H
        left, right = truncated_factor(cores[k].reshape(b, r_prev, -1).mH, caps[k], delta, method)
        cores[k] = left.mH.reshape(*lead, left.shape[-1], n_k, r_k)
        prev = cores[k - 1]
        cores[k - 1] = torch.bmm(prev.reshape(b, -1, r_prev), right.mH).reshape(*lead, *prev.shape[-3:-1], -1)
    return cores


def round_sweep(
    cores: list[torch.Tensor], caps: Sequence[int], eps: float | None, method: Method
) -> list[torch.Tensor]:
    """:func:`tensortrain.decompositions.round`'s sweeps on merged ``(B, r, n, r')`` cores (a single TT's without
    the batch axis) in the compute dtype, again in the wide dtype where they overflowed; the cores come back
    finite, in the dtype they ran in (the caller casts them back)."""
    try:
        return _overflow_safe(lambda cs: _round_in(cs, caps, eps, method), cores)
    except _NoWiderType as err:
        raise ValueError(f"round: {err}") from err.__cause__
