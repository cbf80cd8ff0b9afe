"""Operations on batches of TT objects (t3f's ``t3f.batch_ops``): concatenation, weighting, Gram matrices.

Indexing a batch (``batch[i]``, ``batch[i:j]``, ``batch[index_tensor]``) lives on
:class:`~tensortrain.TensorTrainBatch` itself. Symbols: ``d`` cores, ``n`` mode size, ``r`` TT-rank,
``B`` (``B1``, ``B2``) batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import ShapeError
from .operands import (
    as_scales,
    batched_cores,
    check_dtype_device,
    check_matrix,
    check_same_raw_shape,
    check_tt,
    describe,
    flat_modes,
    matrix_dims,
    prescale,
    run_scaled,
    scaled_sweep,
    vector_cores,
)
from .orthogonalization import compute_dtype
from .tensor_train import TensorTrainBase, TensorTrainBatch

__all__ = [
    "concat_along_batch_dim",
    "gram_matrix",
    "multiply_along_batch_dim",
    "pairwise_flat_inner",
]


def concat_along_batch_dim(tt_list: Sequence[TensorTrainBase] | TensorTrainBase) -> Any:
    """Concatenate TT batches (and single TT objects, as batches of one) into one batch.

    Args:
        tt_list: a non-empty sequence of TT objects with equal raw shapes and TT-ranks; a single TT object
            (not in a sequence) is returned as it is, as t3f does.

    Returns:
        A :class:`TensorTrainBatch` whose batch size is the sum of the inputs' (``tt_list`` itself when it
        is one TT object).

    Raises:
        TypeError: ``tt_list`` is not a sequence of TT objects.
        ShapeError: raw shapes, ranks, dtypes or devices differ, or the list is empty.

    Complexity: O(B d r^2 n) (a copy of the cores).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor_batch((2, 3), batch_size=2)
        >>> tt.concat_along_batch_dim([a, a[0]]).batch_size
        3
    """
    if isinstance(tt_list, TensorTrainBase):  # one object: nothing to concatenate (as in t3f)
        return tt_list
    if not isinstance(tt_list, Sequence):
        raise TypeError(f"concat_along_batch_dim: expects a list of TT objects, got {type(tt_list).__name__}")
    if not tt_list:
        raise ShapeError("concat_along_batch_dim: got an empty list")
    first = check_tt(tt_list[0], "concat_along_batch_dim", "element 0")
    for i, x in enumerate(tt_list[1:], start=1):
        check_tt(x, "concat_along_batch_dim", f"element {i}")
        check_same_raw_shape("concat_along_batch_dim", first, x)
        if x.tt_ranks != first.tt_ranks:
            raise ShapeError(
                f"concat_along_batch_dim: element 0 has TT-ranks {first.tt_ranks} but element {i} has "
                f"{x.tt_ranks}; round them to common ranks first"
            )
    check_dtype_device("concat_along_batch_dim", *tt_list)
    per_core = zip(*(batched_cores(x) for x in tt_list), strict=True)
    out = TensorTrainBatch([torch.cat(list(cores), dim=0) for cores in per_core])
    where = getattr(first, "projection_on", None)
    if where is not None and all(getattr(x, "projection_on", None) is where for x in tt_list):
        # tangent vectors at one point, concatenated: a batch of tangent vectors there
        out.projection_on = where  # type: ignore[attr-defined]
    return out


def multiply_along_batch_dim(batch_tt: TensorTrainBatch, weights: torch.Tensor | Sequence[float]) -> Any:
    """Scale element ``i`` of a batch by ``weights[i]`` (applied to the first core, as t3f).

    Args:
        batch_tt: a :class:`TensorTrainBatch` of size B.
        weights: B numbers (a tensor or a sequence); differentiable when a tensor.

    Returns:
        A :class:`TensorTrainBatch` with the same shape and ranks.

    Raises:
        TypeError: ``batch_tt`` is not a batch, or complex weights for real cores.
        ShapeError: ``weights`` does not hold exactly B values.
        ValueError: an int weight that int64 cannot hold.

    Complexity: O(B d r^2 n): the other cores are copied (the result has memory of its own).

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.random_tensor_batch((2, 3), batch_size=2)
        >>> tt.multiply_along_batch_dim(a, torch.tensor([1.0, -2.0])).batch_size
        2
    """
    if not isinstance(batch_tt, TensorTrainBatch):
        raise TypeError(
            f"multiply_along_batch_dim: expects a TensorTrainBatch, got {type(batch_tt).__name__}"
        )
    cores = list(batch_tt.tt_cores)
    # Converting complex weights to real cores' dtype would silently drop the imaginary parts (multiply
    # refuses a complex scale the same way). A sequence is inspected in its own dtype first, then converted
    # straight to the cores' dtype (no float32 round trip).
    given = (
        weights if isinstance(weights, torch.Tensor) else as_scales(weights, fn="multiply_along_batch_dim")
    )
    if given.dtype == torch.bool:  # a mask, not weights
        raise TypeError("multiply_along_batch_dim: weights must be numbers, got a bool tensor (a mask?)")
    if given.is_complex() and not cores[0].dtype.is_complex:
        raise TypeError(
            f"multiply_along_batch_dim: complex weights cannot scale {cores[0].dtype} cores (the imaginary "
            "parts would be dropped); cast first, e.g. tt.cast(batch, torch.complex128)"
        )
    dtype, work = cores[0].dtype, compute_dtype(cores[0].dtype)  # (half cores: weights applied in float32)
    w = as_scales(weights, dtype=work, device=cores[0].device, fn="multiply_along_batch_dim")
    if w.shape != (batch_tt.batch_size,):
        raise ShapeError(
            f"multiply_along_batch_dim: weights must have shape ({batch_tt.batch_size},) for a batch of "
            f"{batch_tt.batch_size}, got {tuple(w.shape)}"
        )
    cores[0] = (cores[0].to(work) * w.reshape(-1, *([1] * (cores[0].dim() - 1)))).to(dtype)
    # (the other cores copied: shared, the result followed later in-place updates of the input)
    return TensorTrainBatch([cores[0], *(c.clone() for c in cores[1:])])


def gram_matrix(tt_vectors: TensorTrainBase, matrix: TensorTrainBase | None = None) -> torch.Tensor:
    """The Gram matrix ``G[i, j] = <v_i, v_j>`` (or ``v_i^T A v_j`` with a TT-matrix ``A``) of a batch.

    ``<a, b>`` is :func:`flat_inner`'s sum of elementwise products, without complex conjugation (as t3f):
    for complex vectors ``G`` is symmetric, not Hermitian; for ``torch.vdot``'s convention use
    ``pairwise_flat_inner`` with the first batch's cores conjugated (``[c.conj() for c in v.tt_cores]``).

    Args:
        tt_vectors: a batch of TT objects (without ``matrix``), or of TT vectors (with ``matrix``).
        matrix: optional square-mode TT-matrix ``A`` (a single TT object).

    Returns:
        A ``(B, B)`` tensor.

    Raises:
        TypeError, ShapeError: as :func:`pairwise_flat_inner`; ShapeError also for a ``matrix`` whose row
            and column modes differ.

    Complexity: O(B^2 d r^3 n) without a matrix; O(B^2 d (r^3 r_A n + r^2 r_A^2 n^2)) with one.

    Example:
        >>> import tensortrain as tt
        >>> v = tt.random_tensor_batch((2, 3), batch_size=4)
        >>> tt.gram_matrix(v).shape
        torch.Size([4, 4])
    """
    op = "gram_matrix"
    check_tt(tt_vectors, op, "tt_vectors")
    if matrix is not None:
        check_matrix(matrix, op, "matrix")
        rows, cols = matrix_dims(matrix)
        # Checked here: otherwise the vectors are reported against the column modes as a wrong "tt_2".
        if rows != cols:
            raise ShapeError(
                f"{op}: matrix must have square modes (row dims == column dims), got {describe(matrix)}"
            )
    return _pairwise(op, ("tt_vectors", "tt_vectors"), tt_vectors, tt_vectors, matrix)


def pairwise_flat_inner(
    tt_1: TensorTrainBase, tt_2: TensorTrainBase, matrix: TensorTrainBase | None = None
) -> torch.Tensor:
    """All pairwise inner products ``res[i, j] = <a_i, b_j>``, or ``a_i^T A b_j`` with a TT-matrix ``A``.

    No complex conjugation, as :func:`flat_inner` and t3f (conjugate ``tt_1``'s cores for ``torch.vdot``'s).

    Without ``matrix`` the two batches hold TT objects of the same kind and raw shape. With ``matrix``
    (a single TT-matrix ``N x M``) they hold vectors over ``A``'s row modes (``tt_1``) and column modes
    (``tt_2``), given as TT-tensors or as ``N x 1`` / ``1 x N`` TT-matrices (t3f's form). A single TT
    object counts as a batch of one.

    Args:
        tt_1: a batch of size B1.
        tt_2: a batch of size B2.
        matrix: optional TT-matrix.

    Returns:
        A ``(B1, B2)`` tensor.

    Raises:
        TypeError: an operand is not a TT object, or ``matrix`` is not a single TT-matrix.
        ShapeError: kinds, raw shapes, dtypes or devices disagree.

    Complexity: O(B1 B2 d r^3 n) without a matrix.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor_batch((2, 3), batch_size=4)
        >>> b = tt.random_tensor_batch((2, 3), batch_size=5)
        >>> tt.pairwise_flat_inner(a, b).shape
        torch.Size([4, 5])
    """
    return _pairwise("pairwise_flat_inner", ("tt_1", "tt_2"), tt_1, tt_2, matrix)


def _pairwise(
    op: str, names: tuple[str, str], tt_1: Any, tt_2: Any, matrix: TensorTrainBase | None
) -> torch.Tensor:
    """:func:`pairwise_flat_inner` with ``op`` and the operands' ``names`` used in error messages."""
    check_tt(tt_1, op, names[0])
    check_tt(tt_2, op, names[1])
    if matrix is None:
        check_same_raw_shape(op, tt_1, tt_2)
        check_dtype_device(op, tt_1, tt_2)
        return _gram(tt_1, tt_2)
    check_matrix(matrix, op, "matrix")
    if isinstance(matrix, TensorTrainBatch):
        raise TypeError(f"{op}: matrix must be a single TT-matrix, got a batch {describe(matrix)}")
    rows, cols = matrix_dims(matrix)
    ca = vector_cores(tt_1, rows, op, names[0])
    cb = vector_cores(tt_2, cols, op, names[1])
    check_dtype_device(op, tt_1, matrix, tt_2)
    return _gram_with_matrix(ca, cb, matrix)


def _gram(tt_1: TensorTrainBase, tt_2: TensorTrainBase) -> torch.Tensor:
    """The ``(B1, B2)`` inner products of two checked batches of the same shape, row blocks at a time."""
    ca = [flat_modes(c) for c in batched_cores(tt_1)]
    cb = [flat_modes(c) for c in batched_cores(tt_2)]

    def gram(scaled: bool) -> torch.Tensor:
        pa, pb, exps = _prescaled(ca, cb, scaled)

        def gram_rows(part: list[torch.Tensor]) -> torch.Tensor:
            part, pair_exps = _with_row_exps(part, exps)

            def step(v: torch.Tensor, k: int) -> torch.Tensor:
                t = torch.einsum("ijxy,ixmu->ijymu", v, part[k])
                return torch.einsum("ijymu,jymv->ijuv", t, pb[k])

            v = torch.ones(part[0].shape[0], pb[0].shape[0], 1, 1, dtype=pa[0].dtype, device=pa[0].device)
            return scaled_sweep(v, step, len(pa), scaled, exps=pair_exps)

        per_row = max(y.shape[1] * x.shape[2] * x.shape[3] for x, y in zip(pa, pb, strict=True))
        return _by_rows(pa if exps is None else [*pa, exps[0]], pb[0].shape[0] * per_row, gram_rows)

    return run_scaled(gram, ca, cb, contracted=True)


def _gram_with_matrix(
    ca: list[torch.Tensor], cb: list[torch.Tensor], matrix: TensorTrainBase
) -> torch.Tensor:
    """The ``(B1, B2)`` products ``x_i^T A y_j`` of checked vector cores through a single TT-matrix ``A``."""

    def gram_with_matrix(scaled: bool) -> torch.Tensor:
        pa, pb, exps = _prescaled(ca, cb, scaled)
        mats = matrix.tt_cores
        if exps is not None:  # (the matrix's cores too: its exponent belongs to every pair)
            (scaled_mats,), em = prescale([m.unsqueeze(0) for m in mats])
            mats, exps = tuple(m[0] for m in scaled_mats), (exps[0], exps[1] + em)

        def gram_rows_with_matrix(part: list[torch.Tensor]) -> torch.Tensor:
            part, pair_exps = _with_row_exps(part, exps)

            def step(v: torch.Tensor, k: int) -> torch.Tensor:
                t = torch.einsum("ijxzy,ixnu->ijzynu", v, part[k])
                t = torch.einsum("ijzynu,znmw->ijyuwm", t, mats[k])
                return torch.einsum("ijyuwm,jymv->ijuwv", t, pb[k])

            v = torch.ones(part[0].shape[0], pb[0].shape[0], 1, 1, 1, dtype=pa[0].dtype, device=pa[0].device)
            return scaled_sweep(v, step, len(pa), scaled, exps=pair_exps)

        # (z, y, n, u) after the vector's core, (y, u, w, m) after the matrix's
        per_row = max(
            max(
                a.shape[0] * y.shape[1] * x.shape[2] * x.shape[3],
                y.shape[1] * x.shape[3] * a.shape[3] * a.shape[2],
            )
            for x, a, y in zip(pa, mats, pb, strict=True)
        )
        rows = pa if exps is None else [*pa, exps[0]]
        return _by_rows(rows, pb[0].shape[0] * per_row, gram_rows_with_matrix)

    return run_scaled(gram_with_matrix, ca, [m.unsqueeze(0) for m in matrix.tt_cores], cb, contracted=True)


def _prescaled(
    ca: list[torch.Tensor], cb: list[torch.Tensor], scaled: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Both operands' cores scaled by powers of two where the sweep is (``operands.prescale``: a step multiplies
    the state by a core of each, which overflows before the state is rescaled), and their exponents ``(B1,)``,
    ``(B2,)`` (None when not scaled)."""
    if not scaled:
        return ca, cb, None
    ((ca,), ea), ((cb,), eb) = prescale(ca), prescale(cb)
    return ca, cb, (ea, eb)


def _with_row_exps(
    part: list[torch.Tensor], exps: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """A block of rows' cores and the exponents of its ``(rows, B2)`` pairs, flattened (None when not scaled):
    the rows' exponents ride along in :func:`_by_rows` as a last "core", taken in the same blocks."""
    if exps is None:
        return part, None
    *cores, ea = part
    return cores, (ea[:, None] + exps[1][None, :]).reshape(-1)


# Elements of a step's (B1, B2, ...) intermediate before rows are taken in blocks (8 MiB in float32, 16 in float64):
# blocks whose intermediates stay near the cache ran 1.7-2.3x faster than blocks of 2^24 elements in
# benchmarks/paths_ab.py (Gram matrices of 100 rank-10 TTs over 10^10 in float64 and of 200 rank-16 ones over 4^8;
# three runs, one and two threads, 2-core Intel Xeon), 1.1-1.2x on 100 rank-8 TTs over 4^8 (two blocks); 2^19 was
# slower again for 400 rank-8 TTs over 4^8 (blocks of 5 rows). Small batches run whole as before.
_ROWS_CHUNK = 1 << 21


def _by_rows(
    ca: list[torch.Tensor], per_row: int, rows: Callable[[list[torch.Tensor]], torch.Tensor]
) -> torch.Tensor:
    """``rows(ca)`` for the first operand's batch ``(B1, ...)``, in blocks of rows where one step's
    ``(B1, B2, ...)`` intermediate would pass ``_ROWS_CHUNK`` elements: a Gram matrix of 200 rank-16 TTs with
    8-mode cores built a 717 MB intermediate for a 156 KB result, and intermediates near the cache's size are
    the fastest."""
    b1 = ca[0].shape[0]
    block = max(1, _ROWS_CHUNK // max(per_row, 1))
    if block >= b1:
        return rows(ca)
    return torch.cat([rows([c[s : s + block] for c in ca]) for s in range(0, b1, block)])
