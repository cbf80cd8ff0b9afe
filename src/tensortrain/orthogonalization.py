"""QR sweeps over TT cores: ``orthogonalize`` (t3f's ``orthogonalize_tt_cores``) and the helpers TT-rounding
shares with it.

Symbols: ``d`` number of cores, ``n_k`` mode size (``m_k n_k`` for a TT-matrix), ``r_k`` TT-ranks, ``B`` batch.

A core is *left-orthogonal* when its unfolding ``(r_{k-1} n_k, r_k)`` has orthonormal columns
(``Q^H Q = I``; ``Q^T Q`` for real cores), *right-orthogonal* when ``(r_{k-1}, n_k r_k)`` has orthonormal
rows. A left-to-right sweep makes cores ``1..d-1`` left-orthogonal and moves the whole norm into core ``d``;
right-to-left does the mirror.
Ranks may shrink to ``min(r_{k-1} n_k, r_k)`` (the reduced QR), never grow; the full tensor is unchanged.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from typing import Any

import torch

from ._transforms import transforms_active, valueless, without_autocast
from .operands import rescale_pow2, scale_pow2
from .shapes import plain_scalar
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = ["orthogonalize", "orthogonalize_tt_cores"]

RawMatrix = tuple[tuple[int, ...], tuple[int, ...]] | None
_CAT_FINITE = 1 << 14  # entries up to which all_finite sums a concatenation (a copy) instead of each tensor


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one sync. A finite sum has no NaN or inf behind it;
    only where a sum is not finite (a NaN or inf entry, or finite entries whose sum overflows) are the entries
    tested one by one (``isfinite`` on every entry is about 10x the cost of a sum: 0.4 ms against 0.04 ms for
    eight 64 x 8 x 64 float64 cores).

    True while compiling (``torch.compile``, ``torch.export``): a graph cannot branch on values without a break
    (every QR and SVD sweep's input and result checks were one each), so traced code takes NaN and inf through
    unchecked, as torch's own ops do (and as the traced norms and inner products did already)."""
    if torch.compiler.is_compiling() or (tensors and valueless(tensors[0])):
        return True  # (meta and fake tensors have no values to test; see valueless)
    plain = [t.detach() if t.requires_grad else t for t in tensors]
    if transforms_active():  # (no .tolist() on a transform's wrapped tensors: bool() says why it fails)
        if bool(torch.isfinite(torch.stack([t.sum() for t in plain])).all()):
            return True
    elif sum(t.numel() for t in plain) <= _CAT_FINITE:
        # small tensors (a small TT's cores): one sum over their concatenation, a third cheaper than a sum each
        # (a finite total still has no NaN or inf behind it; one that overflows is only a false alarm)
        if cmath.isfinite(torch.cat([t.reshape(-1) for t in plain]).sum().item()):
            return True
    elif all(map(cmath.isfinite, torch.stack([t.sum() for t in plain]).tolist())):
        return True  # (a list of Python numbers: cheaper than isfinite + all)
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def check_finite_cores(tt: Any, name: str) -> None:
    """Raise ``TypeError`` for a non-TT object, ``ValueError`` for NaN/inf in its cores."""
    if not isinstance(tt, TensorTrainBase):
        raise TypeError(f"{name} expects a TensorTrain or TensorTrainBatch, got {type(tt).__name__}")
    cores = tt.tt_cores
    if valueless(cores[0]):  # (meta and fake cores have no values)
        return
    k = nonfinite_core(cores)
    if k is not None:
        raise ValueError(f"{name}: core {k} contains NaN or inf values")


def nonfinite_core(cores: Sequence[torch.Tensor]) -> int | None:
    """The index of the first core with NaN or inf values, None when all are finite (one sync; the core at
    fault is looked for only on failure)."""
    if all_finite(cores):
        return None
    return next((k for k, c in enumerate(cores) if not bool(torch.isfinite(c).all())), None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype factorizations run in: float32 for half precision (LAPACK has no float16/bfloat16)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def merge_modes(tt: TensorTrainBase) -> tuple[list[torch.Tensor], bool, RawMatrix]:
    """Cores as ``(B, r_{k-1}, n_k, r_k)`` for a batch, ``(r_{k-1}, n_k, r_k)`` for a single TT (matrix modes
    merged; no batch axis is added: the sweeps take a single TT's unfoldings as they are), in
    :func:`compute_dtype`."""
    batch = isinstance(tt, TensorTrainBatch)
    work = compute_dtype(tt.dtype)
    cores = list(tt.tt_cores)
    if work != tt.dtype:
        cores = [c.to(work) for c in cores]
    if not tt.is_tt_matrix():
        return cores, batch, None
    raw = tt.raw_shape
    return [c.reshape(*c.shape[:-3], -1, c.shape[-1]) for c in cores], batch, raw  # type: ignore[return-value]


def cast_back(
    cores: list[torch.Tensor], dtype: torch.dtype, name: str, finite: bool = False
) -> list[torch.Tensor]:
    """Cores computed in :func:`compute_dtype`, cast back to ``dtype``; a ValueError where they overflowed.

    Orthogonal forms put the whole norm in one core: a float16 TT whose entries all fit but whose norm exceeds
    65504 would come back with inf cores, and so would a float32 one of norm above 3.4e38 (computed in float32
    itself: inf or NaN cores). The callers' inputs are finite (checked), so a non-finite core is an overflow.
    ``finite``: the cores are known to be finite (checked by the caller), so that only a cast is checked."""
    if finite and cores[0].dtype == dtype:
        return cores
    out = [c.to(dtype) for c in cores]
    if all_finite(out):
        return out
    # (max() over floats with a NaN depends on their order: a NaN core read as "an entry of 0.98 exceeds")
    top = max(float(torch.nan_to_num(c.abs(), nan=math.inf, posinf=math.inf).max()) for c in cores)
    big = f"a core entry of {top:.3g} exceeds" if math.isfinite(top) else "the norm overflowed, exceeding"
    raise ValueError(
        f"{name}: the result does not fit {_name(dtype)} ({big} {torch.finfo(dtype).max:.3g}, its largest value: "
        f"an orthogonal form keeps the tensor's whole norm in one core); {_wider(dtype)}"
    )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _wider(dtype: torch.dtype) -> str:
    if dtype == torch.float16:
        return "use bfloat16 or float32"
    return "scale the input down" if torch.finfo(dtype).bits == 64 else "use float64, or scale the input down"


def split_modes(
    cores: list[torch.Tensor],
    batch: bool,
    raw: RawMatrix,
    dtype: torch.dtype,
    name: str,
    finite: bool = False,
) -> Any:
    """Inverse of :func:`merge_modes`: the TT object of the right class, cast back to ``dtype`` (``finite``: as
    :func:`cast_back` reads it). The cores come from a QR or SVD sweep: valid by construction, not checked
    again."""
    cores = cast_back(cores, dtype, name, finite)
    if raw is not None:
        rows, cols = raw
        cores = [c.reshape(*c.shape[:-2], rows[k], cols[k], c.shape[-1]) for k, c in enumerate(cores)]
    return (TensorTrainBatch if batch else TensorTrain)._from_valid(cores)


def _plain_first(sweep: Any, cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """``sweep(cores, scaled)``: plainly first, checked by one sync (every carried R's largest magnitude in the
    dtype's normal range, the result finite), again scaled where that check fails: unbalanced core scales
    overflow or underflow a carry taken as it is, and no estimate from the cores' norms bounds the carried
    products (they grow by up to ``sqrt(n_k)`` per step more than the entries' scale). Scaled directly under
    compile and ``torch.func`` transforms and on meta tensors, where nothing may sync."""
    if len(cores) < 2:
        # new memory, as every longer train gets (the input's cores stay apart)
        return [c.clone() for c in cores]
    if not valueless(cores[0]) and not transforms_active():
        out, tops = sweep(cores, False)
        # (one sync: every carried R's and the norm core's largest magnitude in the normal range, tested in Python
        # floats; NaN fails the comparisons, where min() and max() would depend on its place)
        few = tops.numel() <= 1024
        vals = (tops.reshape(-1) if few else torch.stack(torch.aminmax(tops))).tolist()
        tiny, big = torch.finfo(tops.dtype).tiny, torch.finfo(tops.dtype).max
        if all(tiny <= v <= big for v in vals):
            return out
    return sweep(cores, True)[0]


def left_orthogonalize(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """QR sweep left to right on ``(B, r, n, r')`` cores (or a single TT's ``(r, n, r')``); returns new cores (the
    input list is not changed).

    Run plainly first; where a carried R left the dtype's normal range (unbalanced core scales, or a core whose
    own norm is past the dtype's range), again with each core and each R carried scaled by a power of two
    (exact), the scales put back on the last core once (see
    ``operands.pow2_exponents`` and :func:`_plain_first`).
    """
    return _plain_first(_left_sweep, cores)


def _sweep_layout(cores: list[torch.Tensor], scaled: bool) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
    """``(out, lead, mul)``: the batch axis of the cores (``()`` for a single TT's 3-D cores), the one the QRs and
    products run on, and the product. A plain sweep over a single TT element takes 2-D QRs and products (LAPACK's
    and BLAS's unbatched calls, about 1 us cheaper a step on small cores)."""
    out = tuple(cores[0].shape[:-3])
    single = len(out) == 0 or out[0] == 1  # (`not out` fails to trace on a symbolic batch size)
    return (out, (), torch.mm) if single and not scaled else (out, out, torch.bmm)


def _left_sweep(cores: list[torch.Tensor], scaled: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if scaled and cores[0].dim() == 3:  # (the exponents are per batch element: a batch of one)
        return [c[0] for c in _left_sweep([c.unsqueeze(0) for c in cores], True)[0]], None
    cores = list(cores)
    out, lead, mul = _sweep_layout(cores, scaled)
    exps, rs = None, []
    if scaled:  # (each core scaled too: one whose own norm is past the dtype's range gave an inf R)
        cores[0], exps = rescale_pow2(cores[0], exps)
    for k in range(len(cores) - 1):
        r_prev, n_k = cores[k].shape[-3], cores[k].shape[-2]
        q, r = torch.linalg.qr(cores[k].reshape(*lead, r_prev * n_k, -1))
        if scaled:
            r, exps = rescale_pow2(r, exps)
        else:
            rs.append(r)
        cores[k] = q.reshape(*out, r_prev, n_k, q.shape[-1])
        nxt = cores[k + 1]
        if scaled:
            nxt, exps = rescale_pow2(nxt, exps)
        carried = mul(r, nxt.reshape(*lead, nxt.shape[-3], -1))
        cores[k + 1] = carried.reshape(*out, r.shape[-2], *nxt.shape[-2:])
    if exps is not None:
        cores[-1] = scale_pow2(cores[-1], exps)
        return cores, None
    return cores, _tops([*rs, cores[-1]], not lead)


def _tops(ts: list[torch.Tensor], single: bool) -> torch.Tensor:
    """The largest magnitude of each batch element of each ``(B, ...)`` tensor (NaN where it holds one), as one
    tensor; ``single``: one element (the tensors may lack the batch axis), whose maxima are taken in one kernel
    over all tensors (a reduction per tensor and a stack of the results cost about three times as much on the
    small carried R's of a sweep)."""
    ts = [t.detach() if t.requires_grad else t for t in ts]
    if single:
        return torch.stack(torch._foreach_norm(ts, ord=math.inf))
    return torch.stack([t.abs().amax(dim=tuple(range(1, t.dim()))) for t in ts])


def right_orthogonalize(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """QR sweep right to left (cores 2..d right-orthogonal); R carried as in
    :func:`left_orthogonalize`, put back on the first core)."""
    return _plain_first(_right_sweep, cores)


def _right_sweep(cores: list[torch.Tensor], scaled: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if scaled and cores[0].dim() == 3:  # (as in _left_sweep)
        return [c[0] for c in _right_sweep([c.unsqueeze(0) for c in cores], True)[0]], None
    cores = list(cores)
    out, lead, mul = _sweep_layout(cores, scaled)
    exps, rs = None, []
    if scaled:  # (as in _left_sweep)
        cores[-1], exps = rescale_pow2(cores[-1], exps)
    for k in range(len(cores) - 1, 0, -1):
        r_prev, n_k, r_next = cores[k].shape[-3:]
        # Unfolding (r_{k-1}, n_k r_k) = R^H Q^H from the QR of its conjugate transpose.
        q, r = torch.linalg.qr(cores[k].reshape(*lead, r_prev, -1).mH)
        if scaled:
            r, exps = rescale_pow2(r, exps)
        else:
            rs.append(r)
        cores[k] = q.mH.reshape(*out, q.shape[-1], n_k, r_next)
        prv = cores[k - 1]
        if scaled:
            prv, exps = rescale_pow2(prv, exps)
        cores[k - 1] = mul(prv.reshape(*lead, -1, prv.shape[-1]), r.mH).reshape(*prv.shape[:-1], r.shape[-2])
    if exps is not None:
        cores[0] = scale_pow2(cores[0], exps)
        return cores, None
    return cores, _tops([*rs, cores[0]], not lead)


@without_autocast
def orthogonalize(tt: TensorTrainBase, left_to_right: bool = True) -> Any:
    """Orthogonalize the cores by a QR sweep, keeping the full tensor (t3f's ``orthogonalize_tt_cores``).

    Args:
        tt: a :class:`TensorTrain` or :class:`TensorTrainBatch` (tensors or matrices).
        left_to_right: True: cores ``1..d-1`` become left-orthogonal (unfolding ``(r_{k-1} n_k, r_k)`` has
            ``Q^H Q = I``, ``Q^T Q`` for real cores) and the last core carries the norm. False: cores ``2..d``
            become right-orthogonal (``(r_{k-1}, n_k r_k)`` has ``Q Q^H = I``) and the first core carries the
            norm. Both work on
            batches (t3f's right-to-left does not).

    Returns:
        An object of the same type, shape and full tensor; ranks may shrink to ``min(r_{k-1} n_k, r_k)``
        (resp. ``min(r_{k-1}, n_k r_k)``).

    Raises:
        TypeError: ``tt`` is not a TT object, or ``left_to_right`` is not a bool (or 0/1).
        ValueError: NaN or inf in the cores.

    Complexity: O(B d n r^3).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.orthogonalize(tt.random_tensor((3, 4, 5), tt_rank=3))
        >>> a.tt_ranks
        (1, 3, 3, 1)
    """
    check_finite_cores(tt, "orthogonalize")
    flag = plain_scalar(left_to_right)  # (a string such as "right_to_left" is truthy: refused, not swept)
    if not (isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1))):
        raise TypeError(f"orthogonalize: left_to_right must be a bool (or 0/1), got {left_to_right!r}")
    left_to_right = bool(left_to_right)
    cores, batch, raw = merge_modes(tt)
    cores = left_orthogonalize(cores) if left_to_right else right_orthogonalize(cores)
    return split_modes(cores, batch, raw, tt.dtype, "orthogonalize")


def orthogonalize_tt_cores(tt: TensorTrainBase, left_to_right: bool = True) -> Any:
    """t3f's name for :func:`orthogonalize` (same arguments and result).

    Args:
        tt: a :class:`TensorTrain` or :class:`TensorTrainBatch`.
        left_to_right: the sweep direction, see :func:`orthogonalize`.

    Returns:
        As :func:`orthogonalize`.

    Raises:
        As :func:`orthogonalize`.

    Complexity: O(B d n r^3).

    Example:
        >>> import tensortrain as tt
        >>> tt.orthogonalize_tt_cores(tt.random_tensor((2, 3)), left_to_right=False).tt_ranks
        (1, 2, 1)
    """
    return orthogonalize(tt, left_to_right)
