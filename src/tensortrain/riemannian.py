"""The tangent space of the manifold of fixed-TT-rank tensors (Lubich, Oseledets, Vandereycken 2015).

A point ``X`` with TT-ranks ``r`` is written with left-orthogonal cores ``U_k`` and right-orthogonal cores
``V_k``; every tangent vector at ``X`` is ``sum_k U_{<k} dU_k V_{>k}`` where the "delta" cores ``dU_k`` (shape
``(r_{k-1}, n_k, r_k)``) satisfy the gauge condition ``U_k^T dU_k = 0`` for ``k < d`` (in the
``(r_{k-1} n_k) x r_k`` unfolding). Under that gauge the terms are mutually orthogonal, so the orthogonal
projection of ``Z`` is ``dU_k = (I - U_k U_k^T) (U_{<k}^T Z V_{>k}^T)`` (``dU_d = U_{<d}^T Z``) and inner
products of tangent vectors are sums of inner products of their deltas.

A tangent vector is stored as a TT of ranks ``2 r`` with cores ``[dU_1, U_1]``, ``[[V_k, 0], [dU_k, U_k]]``,
``[[V_d], [dU_d]]`` (t3f's layout) and carries ``projection_on``, the point it is tangent at. The point is
matched by identity, as in t3f: when its cores change in place (an optimizer step), tangent vectors taken
before are stale, and the functions that combine tangent vectors cannot tell; project them again.

Ranks above the mode sizes (``r_k > r_{k-1} n_k``, t3f issue #154) are reduced to the largest ranks the
point actually has (reduced QR), so the projector stays exact and the tangent vectors have ranks
``2 min(r_k, ...)``.

Tangent vectors once built (their delta cores: ``tangent_space_to_deltas``, ``deltas_to_tangent_space``; their
inner products and sums: ``pairwise_flat_inner_projected``, ``add_n_projected``) are :mod:`tensortrain.projected`,
re-exported here; this module owns the projections.

Symbols: ``d`` cores, ``n`` mode size (``m_k n_k`` for a TT-matrix), ``r`` rank of ``where``, ``R`` rank of
``what``, ``B`` batch size.
"""

from __future__ import annotations

import torch

from . import tangent as ts
from ._transforms import without_autocast
from .errors import ShapeError
from .operands import as_scales, describe
from .orthogonalization import compute_dtype
from .projected import (
    add_n_projected,
    check_real_scale,
    pairwise_flat_inner_projected,
    tangent_space_to_deltas,
)
from .projected import deltas_to_tangent_space as deltas_to_tangent_space  # (tt.riemannian's, not in tt)
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = [
    "add_n_projected",
    "pairwise_flat_inner_projected",
    "project",
    "project_matmul",
    "project_sum",
    "tangent_space_to_deltas",
]

Cores = list[torch.Tensor]


@without_autocast
def project_sum(
    what: TensorTrainBase | torch.Tensor, where: TensorTrain, weights: torch.Tensor | None = None
) -> TensorTrainBase:
    """Project ``what`` (or the weighted sum of a batch) onto the tangent space at ``where``.

    Args:
        what: a TensorTrain, a TensorTrainBatch (its elements are summed), or a dense tensor of ``where``'s
            dense shape, optionally with a leading batch axis (summed too).
        where: the TensorTrain (TT-tensor or TT-matrix) whose tangent space to project on.
        weights: optional ``(B,)`` weights of the batch elements: projects ``sum_i weights[i] what[i]``;
            a ``(B, N)`` matrix gives a batch of ``N`` projections of weighted sums (column ``j`` weights
            sum ``j``).

    Returns:
        A TensorTrain (a TensorTrainBatch of ``N`` for matrix ``weights``) of ranks ``2 r`` (``where``'s
        ranks, reduced to the feasible ones) with attribute ``projection_on = where``.

    Raises:
        TypeError: ``where`` is not a TensorTrain, or ``what`` is not a TT object or tensor.
        ShapeError: shapes, dtypes or devices disagree, or ``weights`` has the wrong length.

    Shape:
        dense ``what``: ``where.shape`` or ``(B, *where.shape)``.

    Complexity:
        O(d r^3 n) to orthogonalize ``where`` plus O(B d n r R (r + R)) for a TT ``what``.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> tt.project_sum(x, x).tt_ranks
        (1, 4, 1)
    """
    deltas, u, v, _ = ts.project_deltas(what, where, "project_sum")
    bsz = deltas[0].shape[0]
    dtype, work = deltas[0].dtype, compute_dtype(deltas[0].dtype)  # (half: weighted sums in float32)
    if weights is None:
        w = torch.ones(bsz, 1, dtype=work, device=deltas[0].device)
    else:
        check_real_scale(weights, dtype, "project_sum", "weights")
        w = as_scales(weights, dtype=work, device=deltas[0].device, fn="project_sum")
        if w.dim() not in (1, 2) or w.shape[0] != bsz or w.numel() == 0:
            raise ShapeError(
                f"project_sum: weights must have shape ({bsz},) or ({bsz}, N) with N >= 1, got {tuple(w.shape)}"
            )
    batch = w.dim() == 2 and weights is not None
    w = w.reshape(bsz, -1)
    summed = [torch.einsum("on,o...->n...", w, dl.to(work)).to(dtype) for dl in deltas]
    return ts.tangent(summed, u, v, where, batch=batch)  # type: ignore[return-value]


@without_autocast
def project(what: TensorTrainBase | torch.Tensor, where: TensorTrain) -> TensorTrainBase:
    """Project ``what`` onto the tangent space at ``where``, element by element for a batch.

    Args:
        what: a TensorTrain, a TensorTrainBatch, or a dense tensor of ``where``'s dense shape (optionally
            with a leading batch axis).
        where: the TensorTrain whose tangent space to project on.

    Returns:
        A TensorTrain (a TensorTrainBatch for batched ``what``) of ranks ``2 r`` with ``projection_on``.

    Raises:
        TypeError, ShapeError: as :func:`project_sum`.

    Shape:
        dense ``what``: ``where.shape`` or ``(B, *where.shape)``.

    Complexity:
        as :func:`project_sum`.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> tt.project(torch.randn(3, 4), x).tt_ranks
        (1, 4, 1)
    """
    deltas, u, v, batch = ts.project_deltas(what, where, "project")
    return ts.tangent(deltas, u, v, where, batch=batch)


def _matmul_flat(matrix: TensorTrain, what: TensorTrainBase, where: TensorTrain) -> Cores:
    """Batched flat cores of ``matrix @ what`` (kept as cores: the dense product is never formed)."""
    if not (isinstance(matrix, TensorTrain) and matrix.is_tt_matrix()):
        if isinstance(matrix, torch.Tensor):  # (its repr would print every entry)
            got = f"a dense tensor of shape {tuple(matrix.shape)} (tt.to_tt_matrix makes one)"
        elif isinstance(matrix, TensorTrainBatch):
            got = f"a TensorTrainBatch {describe(matrix)}"
        elif isinstance(matrix, TensorTrain):
            got = f"a TT-tensor of shape {describe(matrix)}"
        else:
            got = type(matrix).__name__
        raise TypeError(f"project_matmul: `matrix` must be a TT-matrix (a TensorTrain), got {got}")
    rows, cols = matrix.raw_shape  # type: ignore[misc]
    what_rows = what.raw_shape[0] if what.is_tt_matrix() else what.raw_shape
    target = (rows, what.raw_shape[1]) if what.is_tt_matrix() else rows  # type: ignore[index]
    if tuple(what_rows) != tuple(cols) or target != where.raw_shape:  # type: ignore[arg-type]
        raise ShapeError(
            f"project_matmul: matrix of raw shape {matrix.raw_shape} times `what` of raw shape "
            f"{what.raw_shape} does not give `where`'s raw shape {where.raw_shape}"
        )
    ts.check_pair(matrix, where, "project_matmul", ("matrix", "where"))
    batch = isinstance(what, TensorTrainBatch)
    out: Cores = []
    for a, w in zip(matrix.tt_cores, what.tt_cores, strict=True):
        w = w if batch else w.unsqueeze(0)
        if w.dim() == 4:  # TT-tensor (B, s, n, t): a product core (B, a s, m, b t)
            c = torch.einsum("amnb,osnt->oasmbt", a, w)
        else:  # TT-matrix (B, s, n, p, t)
            c = torch.einsum("amnb,osnpt->oasmpbt", a, w)
        sh = c.shape
        out.append(c.reshape(sh[0], sh[1] * sh[2], -1, sh[-2] * sh[-1]))
    return out


@without_autocast
def project_matmul(what: TensorTrainBase, where: TensorTrain, matrix: TensorTrain) -> TensorTrainBase:
    """Project ``matrix @ what`` onto the tangent space at ``where``, element by element for a batch.

    Args:
        what: a TensorTrain or TensorTrainBatch: TT-tensors with the matrix's column modes, or TT-matrices
            whose row modes are the matrix's column modes.
        where: the TensorTrain whose tangent space to project on; its raw shape is that of the product.
        matrix: a TT-matrix.

    Returns:
        ``project(matrix @ what, where)``, computed from the product's cores without rounding.

    Raises:
        TypeError: ``matrix`` is not a TT-matrix or ``where`` is not a TensorTrain.
        ShapeError: the modes do not chain or dtypes/devices disagree.

    Complexity:
        O(d r^3 n) plus O(B d n r Q R (r + Q R)) for a matrix of rank Q: the product's cores have
        ranks Q R.

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.TensorTrain([torch.randn(1, 2, 3, 1), torch.randn(1, 2, 2, 1)])
        >>> v = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 2, 1)])
        >>> x = tt.TensorTrain([torch.randn(1, 2, 2), torch.randn(2, 2, 1)])
        >>> tt.riemannian.project_matmul(v, x, a).tt_ranks
        (1, 4, 1)
    """
    ts.check_where(where, "project_matmul")
    if not isinstance(what, TensorTrainBase):
        raise TypeError(f"project_matmul: `what` must be a TT object, got {type(what).__name__}")
    ts.check_pair(what, where, "project_matmul")
    z = _matmul_flat(matrix, what, where)
    u, v = ts.tangent_frame(where)
    return ts.tangent(ts.deltas_of_tt(z, u, v), u, v, where, batch=isinstance(what, TensorTrainBatch))
