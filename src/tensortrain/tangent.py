"""Internal: frames and tangent vectors of the fixed-TT-rank manifold (used by riemannian, autodiff, optim).

Conventions (see :mod:`tensortrain.riemannian` for the mathematics): "flat" cores are 3-dim ``(r, n, r)``
with a TT-matrix core's two modes merged; delta cores carry a leading batch axis; the frame of a point is
``(U, V)``: left-orthogonal cores ``U[:-1]``, right-orthogonal cores ``V[1:]``, equal (feasible) ranks.

Symbols: ``d`` cores, ``n`` mode size, ``r`` rank, ``B`` batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from ._transforms import transforms_active, valueless
from .errors import ShapeError
from .operands import rescale_pow2, scale_pow2
from .orthogonalization import cast_back, compute_dtype, nonfinite_core
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__: list[str] = []  # nothing public: the public API is in riemannian, autodiff and optim


Cores = list[torch.Tensor]


# ------------------------------------------------------------------------------------ layout helpers
def matrix_modes(x: TensorTrainBase) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return cast(tuple[tuple[int, ...], tuple[int, ...]], x.raw_shape)


def flat_cores(x: TensorTrainBase) -> Cores:
    """Cores as 3-dim ``(r, n, r)`` (4-dim with a batch axis); a TT-matrix core's modes are merged."""
    b = 1 if isinstance(x, TensorTrainBatch) else 0
    if not x.is_tt_matrix():
        return list(x.tt_cores)
    return [c.reshape(*c.shape[: b + 1], -1, c.shape[-1]) for c in x.tt_cores]


def unflat(cores: Sequence[torch.Tensor], like: TensorTrainBase, batch: bool) -> TensorTrainBase:
    """Inverse of :func:`flat_cores` for the mode sizes of ``like``; a batch when ``batch``."""
    if like.is_tt_matrix():
        rows, cols = matrix_modes(like)
        cores = [
            c.reshape(*c.shape[:-2], m, n, c.shape[-1]) for c, m, n in zip(cores, rows, cols, strict=True)
        ]
    return TensorTrainBatch(cores) if batch else TensorTrain(cores)


# ----------------------------------------------------------------------------------- orthogonalization
def _compute(cores: Cores) -> tuple[Cores, torch.dtype]:
    """The cores in the dtype QR runs in (float32 for half precision: LAPACK has none), and their own dtype."""
    dtype = cores[0].dtype
    return [c.to(compute_dtype(dtype)) for c in cores], dtype


def left_sweep(cores: Cores) -> Cores:
    """Left-orthogonalize cores 1..d-1 by reduced QR (ranks may shrink to the feasible ones).

    Half-precision cores are orthogonalized in float32 and returned in their own dtype. See :func:`_sweep` for
    cores of unbalanced scales.
    """
    return _sweep(cores, left=True)


def right_sweep(cores: Cores) -> Cores:
    """Right-orthogonalize cores 2..d by reduced QR of the transposed unfoldings (half precision: as
    :func:`left_sweep`)."""
    return _sweep(cores, left=False)


def _sweep(cores: Cores, left: bool) -> Cores:
    """A QR sweep, run plainly first; again with each core and the carried R scaled by powers of two where the
    plain one overflowed or its R fell below the dtype's normal range: unbalanced core scales (10 on half of 100
    cores, 0.1 on the rest, a tensor of norm 1) overflow or underflow a carry taken as it is, and a core whose own
    norm is past the dtype's range (entries near its largest value) gave an inf R. The Q factors do not depend on
    the scale; the exponents go back on the core that keeps the norm. The check syncs, so under compile and
    ``torch.func`` transforms the scaled sweep runs directly."""
    work, dtype = _compute(cores)
    if not transforms_active() and not valueless(work[0]):
        out, low = _qr_sweep(work, left, scaled=False)
        if bool((low >= torch.finfo(low.dtype).tiny).all()):  # (one sync)
            try:
                return cast_back(out, dtype, "the tangent space's frame")
            except ValueError:
                pass
    out, _ = _qr_sweep(work, left, scaled=True)
    try:
        return cast_back(out, dtype, "the tangent space's frame")
    except ValueError:
        # non-finite factors from a point with NaN or inf entries: say so, not "the norm overflowed" (checked
        # only here, on the failure path: a finite point costs no extra sync)
        k = nonfinite_core(cores)
        if k is not None:
            raise ValueError(
                f"the tangent space's frame: core {k} of the point has NaN or inf values"
            ) from None
        raise


def _qr_sweep(cores: Cores, left: bool, scaled: bool) -> tuple[Cores, torch.Tensor]:
    """:func:`_sweep`'s steps; with the smallest largest magnitude of any carried R (plain sweeps)."""
    order = cores[:-1] if left else list(reversed(cores[1:]))
    out: Cores = []
    carry: torch.Tensor | None = None
    exps = None
    tops = []
    for c in order:
        if scaled:
            # each core before its product with the carried R and its QR: one whose own norm is past the dtype's
            # range overflowed either (the Q factors are the same)
            batched, exps = rescale_pow2(c.unsqueeze(0), exps)
            c = batched[0]
        if carry is not None:
            c = torch.einsum("ab,bnc->anc", carry, c) if left else torch.einsum("anb,bc->anc", c, carry)
        r0, n, r1 = c.shape
        if left:
            q, carry = torch.linalg.qr(c.reshape(r0 * n, r1))
            out.append(q.reshape(r0, n, q.shape[1]))
        else:
            q, rt = torch.linalg.qr(c.reshape(r0, n * r1).T)
            carry = rt.T
            out.append(q.T.reshape(q.shape[1], n, r1))
        if scaled:
            batched, exps = rescale_pow2(carry.unsqueeze(0), exps)
            carry = batched[0]
        else:
            tops.append(torch.linalg.vector_norm(carry, ord=float("inf")))
    end = cores[-1] if left else cores[0]
    if scaled:
        batched, exps = rescale_pow2(end.unsqueeze(0), exps)
        end = batched[0]
    if carry is not None:
        end = torch.einsum("ab,bnc->anc", carry, end) if left else torch.einsum("anb,bc->anc", end, carry)
    if exps is not None:
        end = scale_pow2(end.unsqueeze(0), exps)[0]
    low = torch.stack(tops).min() if tops else torch.ones((), dtype=end.real.dtype, device=end.device)
    return ([*out, end] if left else [end, *reversed(out)]), low


def ranks(cores: Cores) -> list[int]:
    return [int(c.shape[0]) for c in cores]


def tangent_frame(where: TensorTrain) -> tuple[Cores, Cores]:
    """Left- and right-orthogonal cores ``(U, V)`` of ``where`` with equal (feasible) ranks.

    ``U[:-1]`` are left-orthogonal, ``V[1:]`` right-orthogonal and ``V[0]`` is the first core of the
    right-orthogonal form, so that ``where = V[0] V[1] ... V[d-1]``.
    """
    left = left_sweep(flat_cores(where))
    return settle_frame(left, right_sweep(left))


def settle_frame(left: Cores, right: Cores) -> tuple[Cores, Cores]:
    """A left-orthogonal form and the right-orthogonal form swept from it, with equal ranks.

    A rank above the mode sizes shrinks in the right sweep: one more pair of sweeps makes both forms share the
    (now feasible) ranks; it cannot shrink them again.
    """
    if ranks(right) != ranks(left):
        left = left_sweep(right)
        right = right_sweep(left)
    return left, right


# --------------------------------------------------------------------------------------- the projector
def gauge(u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``(I - U U^T) delta`` in the left unfolding; ``delta`` has a leading batch axis."""
    coef = torch.einsum("anb,oanc->obc", u, delta)
    return delta - torch.einsum("anb,obc->oanc", u, coef)


def deltas_of_tt(z: Cores, u: Cores, v: Cores) -> Cores:
    """Projection deltas of each element of the batch of TT cores ``z`` (leading batch axis).

    Where the plain contraction overflows (cores of ``z`` with unbalanced scales: 10 on half of 100 cores, 0.1
    on the rest, a tensor of norm 1), it runs again with the environments scaled by powers of two at every step
    (:func:`_deltas`), which costs about twice as much on small cores. The check syncs; under compile
    and ``torch.func`` transforms the plain contraction is returned as it is.
    """
    deltas = _deltas(z, u, v, scaled=False)
    if transforms_active() or valueless(deltas[0]):
        return deltas
    # (one sync; a sum overflowing from finite entries only costs the scaled rerun)
    finite = bool(torch.isfinite(torch.stack([d.detach().sum() for d in deltas])).all())
    return deltas if finite else _deltas(z, u, v, scaled=True)


def _deltas(z: Cores, u: Cores, v: Cores, scaled: bool) -> Cores:
    """:func:`deltas_of_tt`'s contraction; ``scaled``: the environments carried scaled by powers of two per
    batch element, each delta scaled back once (unbalanced cores of z, 10 on half of 100 cores and 0.1 on the
    rest, overflow or sink into subnormals on the way otherwise)."""
    d, bsz = len(z), z[0].shape[0]
    ones = torch.ones(bsz, 1, 1, dtype=z[0].dtype, device=z[0].device)
    rhs: list[torch.Tensor] = [ones] * (d + 1)
    exp_rhs: list[torch.Tensor | None] = [None] * (d + 1)
    for k in range(d - 1, 0, -1):
        # Pairwise, the large rank of z first (torch.einsum would contract three operands left to right).
        t = torch.einsum("oanb,obd->oand", z[k], rhs[k + 1])
        rhs[k] = torch.einsum("oand,cnd->oac", t, v[k])
        if scaled:
            rhs[k], exp_rhs[k] = rescale_pow2(rhs[k], exp_rhs[k + 1])
    lhs, exp_lhs = ones, None
    deltas: Cores = []
    for k in range(d):
        part = torch.einsum("oab,obnc->oanc", lhs, z[k])
        exps = exp_lhs
        if k < d - 1:
            lhs = torch.einsum("oanc,anb->obc", part, u[k])
            if scaled:
                lhs, exp_lhs = rescale_pow2(lhs, exp_lhs)
            part = torch.einsum("oanc,ocd->oand", part, rhs[k + 1])
            part = gauge(u[k], part)
            right = exp_rhs[k + 1]
            if right is not None:
                exps = right if exps is None else exps + right
        deltas.append(part if exps is None else scale_pow2(part, exps))
    return deltas


def deltas_of_dense(z: torch.Tensor, u: Cores, v: Cores) -> Cores:
    """Projection deltas of a dense batch ``z`` of shape ``(B, n_1, ..., n_d)`` (merged modes)."""
    d, bsz = len(u), z.shape[0]
    dims = [int(c.shape[1]) for c in u]
    left = z.reshape(bsz, 1, -1)  # U_{<k}^T Z, shape (B, r_{k-1}, n_k ... n_d)
    deltas: Cores = []
    for k in range(d):
        # Contract the trailing modes with V_{>k}, from the last mode inwards.
        t = left.reshape(bsz, -1, 1)
        for j in range(d - 1, k, -1):
            t = torch.einsum("oxnc,anc->oxa", t.reshape(bsz, -1, dims[j], t.shape[-1]), v[j])
        part = t.reshape(bsz, u[k].shape[0], dims[k], -1)
        if k < d - 1:
            part = gauge(u[k], part)
            lv = left.reshape(bsz, u[k].shape[0] * dims[k], -1)
            left = torch.einsum("ab,oax->obx", u[k].reshape(-1, u[k].shape[-1]), lv)
        deltas.append(part)
    return deltas


def assemble(deltas: Cores, u: Cores, v: Cores) -> Cores:
    """Tangent cores (batched like ``deltas``) in t3f's block layout, ranks ``2 r``."""
    d, bsz = len(deltas), deltas[0].shape[0]
    if d == 1:  # (copies: a delta may be a view of the projected dense tensor or of the caller's deltas)
        return [dk.clone() for dk in deltas]

    def rep(c: torch.Tensor) -> torch.Tensor:
        return c.unsqueeze(0).expand(bsz, *c.shape)

    cores = [torch.cat([deltas[0], rep(u[0])], dim=-1)]
    for k in range(1, d - 1):
        zeros = deltas[k].new_zeros(bsz, v[k].shape[0], v[k].shape[1], u[k].shape[2])
        upper = torch.cat([rep(v[k]), zeros], dim=-1)
        lower = torch.cat([deltas[k], rep(u[k])], dim=-1)
        cores.append(torch.cat([upper, lower], dim=1))
    cores.append(torch.cat([rep(v[-1]), deltas[-1]], dim=1))
    return cores


def tangent(deltas: Cores, u: Cores, v: Cores, where: TensorTrain, batch: bool) -> TensorTrainBase:
    cores = assemble(deltas, u, v)
    if not batch:
        cores = [c[0] for c in cores]
    res = unflat(cores, where, batch)
    res.projection_on = where  # type: ignore[attr-defined]
    return res


Names = tuple[str, str]  # the caller's argument names for ``what`` and ``where``, for messages


def dense_to_flat(
    what: torch.Tensor, where: TensorTrain, fname: str, names: Names = ("what", "where")
) -> torch.Tensor:
    """A dense tensor (or a batch of them, leading axis) as ``(B, n_1, ..., n_d)`` with merged modes."""
    shape = tuple(where.shape)
    if tuple(what.shape) == shape:
        what = what.unsqueeze(0)
    elif tuple(what.shape[1:]) != shape or what.dim() != len(shape) + 1:
        raise ShapeError(
            f"{fname}: dense `{names[0]}` has shape {tuple(what.shape)} but `{names[1]}` has shape {shape} "
            f"(a leading batch axis is allowed)"
        )
    bsz = what.shape[0]
    if bsz == 0:  # (as a TT batch of none is refused)
        raise ShapeError(f"{fname}: dense `{names[0]}` is an empty batch (shape {tuple(what.shape)})")
    if where.is_tt_matrix():
        rows, cols = matrix_modes(where)
        d = len(rows)
        what = what.reshape(bsz, *rows, *cols)
        perm = [0] + [p for k in range(d) for p in (1 + k, 1 + d + k)]
        what = what.permute(perm).reshape(bsz, *(m * n for m, n in zip(rows, cols, strict=True)))
    return what


# ---------------------------------------------------------------------------------------- validation
def check_where(where: Any, fname: str, name: str = "where") -> None:
    if not isinstance(where, TensorTrain):
        raise TypeError(f"{fname}: `{name}` must be a TensorTrain (a single TT), got {type(where).__name__}")
    if where.dtype.is_complex:
        # The projector would need conjugate transposes throughout; refuse rather than answer wrongly.
        raise TypeError(f"{fname}: complex TT objects are not supported, got {where.dtype}")


def check_pair(
    what: TensorTrainBase | torch.Tensor, where: TensorTrain, fname: str, names: Names = ("what", "where")
) -> None:
    if what.dtype != where.dtype or what.device != where.device:
        raise ShapeError(
            f"{fname}: `{names[0]}` is {what.dtype} on {what.device} but `{names[1]}` is {where.dtype} on "
            f"{where.device}; cast one of them first"
        )


def project_deltas(
    what: TensorTrainBase | torch.Tensor,
    where: TensorTrain,
    fname: str,
    frame: tuple[Cores, Cores] | None = None,
    names: Names = ("what", "where"),
) -> tuple[Cores, Cores, Cores, bool]:
    """Deltas (batched) of the projection of each element of ``what``; also the frame and batchness."""
    check_where(where, fname)
    u, v = tangent_frame(where) if frame is None else frame
    if isinstance(what, torch.Tensor):
        check_pair(what, where, fname, names)
        flat = dense_to_flat(what, where, fname, names)
        return deltas_of_dense(flat, u, v), u, v, what.dim() == len(where.shape) + 1
    if not isinstance(what, TensorTrainBase):
        raise TypeError(
            f"{fname}: `{names[0]}` must be a TT object or a torch.Tensor, got {type(what).__name__}"
        )
    check_pair(what, where, fname, names)
    if what.raw_shape != where.raw_shape:
        raise ShapeError(
            f"{fname}: `{names[0]}` has raw shape {what.raw_shape} but `{names[1]}` has raw shape "
            f"{where.raw_shape}"
        )
    batch = isinstance(what, TensorTrainBatch)
    z = flat_cores(what)
    if not batch:
        z = [c.unsqueeze(0) for c in z]
    return deltas_of_tt(z, u, v), u, v, batch
