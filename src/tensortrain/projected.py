"""Tangent vectors of the fixed-TT-rank manifold as objects: their delta cores, and the algebra of one tangent space.

A tangent vector (a result of :func:`tensortrain.riemannian.project` and friends: a TT of ranks ``2 r`` in t3f's
layout, tagged with ``projection_on``, see :mod:`tensortrain.riemannian` for the mathematics) is read and written
here through its delta cores: :func:`tangent_space_to_deltas` slices them out, :func:`deltas_to_tangent_space`
builds the vector back from them at a point, and, since under the gauge conditions inner products and sums of
tangent vectors at one point are those of their deltas, :func:`pairwise_flat_inner_projected` and
:func:`add_n_projected` work on the deltas alone (no TT contraction, no rank growth). The projections themselves
stay in :mod:`tensortrain.riemannian`, which re-exports these functions: users import them from there.

Symbols: ``d`` cores, ``n`` mode size (``m_k n_k`` for a TT-matrix), ``r`` rank of the point, ``B`` batch size,
``N`` number of tangent vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from . import tangent as ts
from .errors import ShapeError
from .operands import as_scales, describe
from .orthogonalization import compute_dtype
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch

__all__ = [
    "add_n_projected",
    "deltas_to_tangent_space",
    "pairwise_flat_inner_projected",
    "tangent_space_to_deltas",
]

Cores = list[torch.Tensor]


def check_real_scale(values: Any, dtype: torch.dtype, fname: str, name: str) -> None:
    """Complex scales of real tangent vectors would lose their imaginary parts in the conversion: refuse them,
    as ``multiply`` and ``multiply_along_batch_dim`` do."""
    given = values if isinstance(values, torch.Tensor) else as_scales(values, fn=fname, name=name)
    if given.is_complex() and not dtype.is_complex:
        raise TypeError(
            f"{fname}: complex {name} cannot scale {dtype} tangent vectors (the imaginary parts would be "
            "dropped)"
        )


# ------------------------------------------------------------------------------------ tangent vectors
def _half_ranks(x: TensorTrainBase, fname: str) -> list[int]:
    ranks = list(x.tt_ranks)
    inner = ranks[1:-1]
    if any(r % 2 for r in inner):
        raise ShapeError(f"{fname}: a tangent vector has even inner TT-ranks (2 r), got {tuple(ranks)}")
    return [1] + [r // 2 for r in inner] + [1]


def _delta_slices(x: TensorTrainBase, fname: str) -> Cores:
    """The delta blocks of a tangent vector's cores (flat layout, batch axis kept as is)."""
    h = _half_ranks(x, fname)
    cores = ts.flat_cores(x)
    d = len(cores)
    if d == 1:
        return list(cores)
    out = []
    for k, c in enumerate(cores):
        lo = h[k] if 0 < k else 0
        hi = h[k + 1] if k < d - 1 else 1
        out.append(c[..., lo:, :, :hi])
    return out


def _unflat_core(c: torch.Tensor, x: TensorTrainBase, k: int) -> torch.Tensor:
    if not x.is_tt_matrix():
        return c
    rows, cols = ts.matrix_modes(x)
    return c.reshape(*c.shape[:-2], rows[k], cols[k], c.shape[-1])


def tangent_space_to_deltas(tt: TensorTrainBase) -> list[torch.Tensor]:
    """The ``d`` delta cores of a tangent vector (as returned by :func:`project` and friends).

    It reads the layout only: any TT with even inner ranks is sliced, also one that is not a tangent vector (no
    ``projection_on``, e.g. ``2 * g`` or a random TT; t3f refuses those), whose slices then mean nothing; the
    tools that combine tangent vectors (:func:`add_n_projected`, :func:`pairwise_flat_inner_projected`) check it.

    Args:
        tt: a TensorTrain or TensorTrainBatch in the tangent-space layout (ranks ``2 r``).

    Returns:
        A list of ``d`` tensors of shapes ``(r_{k-1}, n_k, r_k)`` (``(r_{k-1}, m_k, n_k, r_k)`` for a
        TT-matrix; a leading batch axis for a batch).

    Raises:
        TypeError: ``tt`` is not a TT object.
        ShapeError: odd inner ranks (not a tangent vector).

    Complexity: O(d n r^2) (slicing).

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> [tuple(c.shape) for c in tt.tangent_space_to_deltas(tt.project(x, x))]
        [(1, 3, 2), (2, 4, 1)]
    """
    if not isinstance(tt, TensorTrainBase):
        raise TypeError(f"tangent_space_to_deltas: expected a TT object, got {type(tt).__name__}")
    if tt.dtype.is_complex:  # (as every Riemannian tool: projections of complex TTs are not built)
        raise TypeError(f"tangent_space_to_deltas: complex TT objects are not supported, got {tt.dtype}")
    return [_unflat_core(c, tt, k) for k, c in enumerate(_delta_slices(tt, "tangent_space_to_deltas"))]


def deltas_to_tangent_space(
    deltas: Sequence[torch.Tensor],
    tt: TensorTrain,
    left: TensorTrain | None = None,
    right: TensorTrain | None = None,
) -> TensorTrainBase:
    """The tangent vector at ``tt`` with the given delta cores (inverse of :func:`tangent_space_to_deltas`).

    The deltas must satisfy the gauge conditions (``U_k^T dU_k = 0`` for ``k < d``); otherwise the result
    is still a valid TT but not the tangent vector those deltas would denote after projection.

    Args:
        deltas: ``d`` delta cores shaped like ``tt``'s cores at its feasible ranks (a leading batch axis
            makes a batch of tangent vectors).
        tt: the point of the manifold.
        left: optionally ``tt.orthogonalize(tt)`` itself, to save a sweep: the frame :func:`project` uses.
            Not checked (that costs as much as the sweep): cores that are not orthogonal give a wrong tangent
            vector, and another left-orthogonal form of the same tensor (of ``tt.round(tt)``, say) a vector in
            another frame, which :func:`add_n_projected` and :func:`pairwise_flat_inner_projected` then combine
            wrongly with ``project``'s results (the result is tagged ``projection_on = tt`` all the same; t3f's
            requires ``orthogonalize_tt_cores(tt)`` too).
        right: optionally ``tt.orthogonalize(left, left_to_right=False)``, to save a sweep (computed from
            ``left`` when only ``left`` is given, as in t3f).

    Returns:
        A TensorTrain (or TensorTrainBatch) with ``projection_on = tt``. Differentiable in ``deltas``.

    Raises:
        TypeError: ``tt``, ``left`` or ``right`` is not a TensorTrain, or a delta is not a tensor.
        ShapeError: the deltas' shapes do not match the frame's, or ``left``/``right`` differ from ``tt`` in
            shape, kind, dtype or device.

    Complexity: O(d n r^2) (concatenation), plus O(d n r^3) for the sweeps when ``left``/``right`` are None.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> p = tt.project(x, x)
        >>> q = tt.riemannian.deltas_to_tangent_space(tt.tangent_space_to_deltas(p), x)
        >>> q.tt_ranks
        (1, 4, 1)
    """
    ts.check_where(tt, "deltas_to_tangent_space", "tt")
    if isinstance(deltas, torch.Tensor) or not isinstance(deltas, Iterable):
        raise TypeError(
            f"deltas_to_tangent_space: deltas must be a sequence of tensors, one per core, got "
            f"{type(deltas).__name__}"
        )
    deltas = list(deltas)  # (a generator, as add_n_projected takes one)
    _check_frames(tt, left, right)
    if left is None and right is None:
        u, v = ts.tangent_frame(tt)
    else:  # as t3f: a missing one is computed (left from tt, right from left)
        u = ts.flat_cores(left) if left is not None else ts.left_sweep(ts.flat_cores(tt))
        v = ts.flat_cores(right) if right is not None else ts.right_sweep(u)
        u, v = ts.settle_frame(u, v)  # the feasible ranks tangent_space_to_deltas' deltas have
    if len(deltas) != len(u):
        raise ShapeError(f"deltas_to_tangent_space: got {len(deltas)} deltas for a TT with {len(u)} cores")
    odd = next((k for k, dl in enumerate(deltas) if not isinstance(dl, torch.Tensor)), None)
    if odd is not None:
        raise TypeError(
            f"deltas_to_tangent_space: delta {odd} must be a torch.Tensor, got {type(deltas[odd]).__name__}"
        )
    flat, batch = _flat_deltas(deltas, u, v, tt)
    return ts.tangent(flat, u, v, tt, batch=batch)


def _check_frames(tt: TensorTrain, left: Any, right: Any) -> None:
    """Refuse a ``left``/``right`` frame given to :func:`deltas_to_tangent_space` that is not a TensorTrain of
    ``tt``'s shape, kind, dtype and device."""
    for name, given in (("left", left), ("right", right)):
        # a frame of another TT (or kind, dtype, device) gave stack traces from the frame code or messages
        # that blamed `tt`
        if given is None:
            continue
        if not isinstance(given, TensorTrain):
            raise TypeError(
                f"deltas_to_tangent_space: `{name}` must be a TensorTrain (tt orthogonalized), got "
                f"{type(given).__name__}"
            )
        if (
            given.raw_shape != tt.raw_shape
            or given.is_tt_matrix() != tt.is_tt_matrix()
            or given.dtype != tt.dtype
            or given.device != tt.device
        ):
            raise ShapeError(
                f"deltas_to_tangent_space: `{name}` ({describe(given)}, {given.dtype} on {given.device}) is not "
                f"a form of `tt` ({describe(tt)}, {tt.dtype} on {tt.device})"
            )


def _flat_deltas(
    deltas: list[torch.Tensor], u: list[torch.Tensor], v: list[torch.Tensor], tt: TensorTrain
) -> tuple[list[torch.Tensor], bool]:
    """:func:`deltas_to_tangent_space`'s deltas checked against the frame ``u``, ``v`` and given a batch axis and
    flat modes ``(B, r, n, r')``, and whether they were a batch."""
    core_dim = 4 if tt.is_tt_matrix() else 3
    batch = deltas[0].dim() == core_dim + 1
    flat = []
    for k, (dl, uk) in enumerate(zip(deltas, u, strict=True)):
        if dl.dim() != deltas[0].dim():
            raise ShapeError(
                f"deltas_to_tangent_space: delta 0 has {deltas[0].dim()} dims and delta {k} has {dl.dim()}: "
                "batched and unbatched deltas are mixed"
            )
        if dl.dtype != uk.dtype or dl.device != uk.device:  # (torch.cat would promote silently)
            raise ShapeError(
                f"deltas_to_tangent_space: delta {k} is {dl.dtype} on {dl.device} but `tt` is {uk.dtype} on "
                f"{uk.device}; cast one of them first"
            )
        if batch and dl.shape[0] != deltas[0].shape[0]:  # (torch.cat's size error otherwise)
            raise ShapeError(
                f"deltas_to_tangent_space: delta {k} has shape {tuple(dl.shape)}, a batch of {dl.shape[0]}, but "
                f"delta 0 a batch of {deltas[0].shape[0]}"
            )
        dl = dl if batch else dl.unsqueeze(0)
        # the core's own modes, not only their product: (r, n, m, r') for an (r, m, n, r') TT-matrix core has
        # the right size but the wrong layout
        want = (uk.shape[0], *tt.tt_cores[k].shape[1:-1], v[k + 1].shape[0] if k + 1 < len(u) else 1)
        if tuple(dl.shape[1:]) != want:
            raise ShapeError(
                f"deltas_to_tangent_space: delta {k} has shape {tuple(deltas[k].shape)}, expected "
                f"{'(batch, ) + ' if batch else ''}{want}, the frame's (ranks {tuple(ts.ranks(u)) + (1,)})"
            )
        flat.append(dl.reshape(dl.shape[0], dl.shape[1], -1, dl.shape[-1]))
    return flat, batch


def _check_projected(objs: Sequence[Any], fname: str) -> TensorTrain:
    for x in objs:
        if not isinstance(x, TensorTrainBase):
            raise TypeError(f"{fname}: expected TT objects, got {type(x).__name__}")
        if getattr(x, "projection_on", None) is None:
            raise ValueError(
                f"{fname}: arguments must be tangent vectors, i.e. results of project/project_sum/"
                "project_matmul/add_n_projected (which set `.projection_on`); got a plain TT object"
            )
    on = objs[0].projection_on
    for x in objs[1:]:
        if x.projection_on is not on:
            raise ValueError(
                f"{fname}: all arguments must be projections on the same TT object (the same Python "
                "object `projection_on`); got projections on different objects"
            )
    return on  # type: ignore[no-any-return]


def pairwise_flat_inner_projected(
    projected_tt_vectors_1: TensorTrainBase, projected_tt_vectors_2: TensorTrainBase
) -> torch.Tensor:
    """Gram matrix ``res[i, j] = flat_inner(a[i], b[j])`` of tangent vectors from one tangent space.

    Under the gauge conditions the inner product of two tangent vectors is the sum of the inner products
    of their deltas, so no TT contraction is needed.

    Args:
        projected_tt_vectors_1: a TensorTrainBatch (or TensorTrain, a batch of one) of tangent vectors.
        projected_tt_vectors_2: the same, projections on the same object.

    Returns:
        A ``(B1, B2)`` tensor.

    Raises:
        ValueError: an argument is not a projection, or they are projections on different objects.

    Complexity: O(B1 B2 d n r^2).

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> p = tt.project(torch.randn(5, 3, 4), x)
        >>> tt.pairwise_flat_inner_projected(p, p).shape
        torch.Size([5, 5])
    """
    fname = "pairwise_flat_inner_projected"
    _check_projected([projected_tt_vectors_1, projected_tt_vectors_2], fname)
    a = _delta_slices(projected_tt_vectors_1, fname)
    b = _delta_slices(projected_tt_vectors_2, fname)
    if not isinstance(projected_tt_vectors_1, TensorTrainBatch):
        a = [c.unsqueeze(0) for c in a]
    if not isinstance(projected_tt_vectors_2, TensorTrainBatch):
        b = [c.unsqueeze(0) for c in b]
    return sum(  # type: ignore[return-value]
        (torch.einsum("pasb,qasb->pq", x, y) for x, y in zip(a, b, strict=True)),
        torch.zeros((), dtype=a[0].dtype, device=a[0].device),
    )


def add_n_projected(
    tt_objects: Sequence[TensorTrainBase], coef: torch.Tensor | Sequence[float] | None = None
) -> TensorTrainBase:
    """Sum (optionally weighted) of tangent vectors from one tangent space, without rank growth.

    Args:
        tt_objects: tangent vectors (TensorTrains, or TensorTrainBatches of one batch size) projected on
            the same object.
        coef: optional weights: shape ``(N,)``, or ``(N, B)`` for batches (one weight per element).

    Returns:
        A tangent vector of the same ranks (``2 r``) and kind, with ``projection_on`` kept.

    Raises:
        TypeError: ``tt_objects`` is not a sequence (a 0-dim tensor, a number).
        ValueError: empty input, non-projections or projections on different objects.
        ShapeError: ``coef`` of the wrong shape, or inputs of different ranks or batch sizes.

    Complexity: O(N B d n r^2).

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> a, b = tt.project(torch.randn(3, 4), x), tt.project(torch.randn(3, 4), x)
        >>> tt.add_n_projected([a, b], coef=[1.0, -2.0]).tt_ranks
        (1, 4, 1)
    """
    fname = "add_n_projected"
    vectors, on = _same_space(tt_objects, fname)
    first = vectors[0]
    work = compute_dtype(first.dtype)  # (half: weighted sums in float32)
    c = _coefs(coef, first, len(vectors), work, fname)
    deltas = [_delta_slices(x, fname) for x in vectors]
    summed = []
    for k in range(first.ndims()):
        stack = torch.stack([dl[k] for dl in deltas])
        w = c.reshape(*c.shape, *([1] * (stack.dim() - c.dim())))
        summed.append((w * stack.to(work)).sum(0).to(first.dtype))
    res = _with_deltas(first, summed, fname)
    res.projection_on = on  # type: ignore[attr-defined]
    return res


def _same_space(
    tt_objects: Sequence[TensorTrainBase], fname: str
) -> tuple[list[TensorTrainBase], TensorTrain]:
    """:func:`add_n_projected`'s inputs as a list (at least one, projections on one object, of the same ranks and
    batch size) and the object they are projected on."""
    try:
        vectors = list(tt_objects)  # any iterable, as approximate.add_n takes (a generator had no len())
    except TypeError:  # (a number, a 0-dim tensor: torch's "iteration over a 0-d tensor" named nothing)
        raise TypeError(
            f"{fname}: expects a sequence of tangent vectors, got {type(tt_objects).__name__}"
        ) from None
    if len(vectors) == 0:
        raise ValueError(f"{fname}: needs at least one tangent vector")
    on = _check_projected(vectors, fname)
    first = vectors[0]
    for x in vectors[1:]:
        if x.tt_cores[0].shape != first.tt_cores[0].shape or x.tt_ranks != first.tt_ranks:
            raise ShapeError(
                f"{fname}: all inputs must have the same ranks and batch size, got ranks {first.tt_ranks} "
                f"({describe(first)}) and {x.tt_ranks} ({describe(x)})"
            )
    return vectors, on


def _coefs(
    coef: torch.Tensor | Sequence[float] | None, first: TensorTrainBase, n: int, work: torch.dtype, fname: str
) -> torch.Tensor:
    """:func:`add_n_projected`'s weights in ``work`` precision: ``(N,)``, or ``(N, B)`` for batches."""
    batch = isinstance(first, TensorTrainBatch)
    if coef is None:
        c = torch.ones(n, dtype=work, device=first.device)
    else:
        check_real_scale(coef, first.dtype, fname, "coef")
        c = as_scales(coef, dtype=work, device=first.device, fn=fname, name="coef")
    allowed: list[tuple[int, ...]] = [(n,)] + ([(n, first.shape[0])] if batch else [])
    if tuple(c.shape) not in allowed:
        raise ShapeError(
            f"{fname}: coef must have shape {' or '.join(map(str, allowed))}, got {tuple(c.shape)}"
        )
    return c[:, None].expand(n, first.shape[0]) if c.dim() == 1 and batch else c


def _with_deltas(first: TensorTrainBase, summed: list[torch.Tensor], fname: str) -> TensorTrainBase:
    """The tangent vector ``first`` with its delta blocks replaced by ``summed`` (one per core)."""
    cores = list(ts.flat_cores(first))
    h = _half_ranks(first, fname)
    d = len(cores)
    out = []
    for k, core in enumerate(cores):
        if d == 1:
            out.append(summed[0])
            continue
        lo = h[k] if 0 < k else 0
        hi = h[k + 1] if k < d - 1 else core.shape[-1]
        core = core.clone()
        core[..., lo:, :, :hi] = summed[k]
        out.append(core)
    return ts.unflat(out, first, isinstance(first, TensorTrainBatch))
