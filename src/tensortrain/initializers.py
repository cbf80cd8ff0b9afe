"""Initializers with t3f's names and semantics: random TT objects, glorot/he/lecun, ones, zeros, eye.

Symbols: ``d`` number of cores, ``n_k`` mode sizes (``m_k x n_k`` for a TT-matrix), ``r_k`` TT-ranks
(``r_0 = r_d = 1``), ``B`` batch size.

Variance of the full tensor (t3f's ``random_tensor`` semantics). If every core entry is i.i.d. N(0, s^2), an
entry of the full tensor is a sum of ``R = r_1 ... r_{d-1}`` products of ``d`` independent core entries, the
terms are uncorrelated, so the entry has mean 0 and variance ``R s^(2d)``. Asking for ``stddev`` of the full
entries therefore gives the per-core std ``s = (stddev^2 / R)^(1 / (2d))`` exactly.

Positional parameters follow t3f's order, ``dtype`` last (``random_matrix(shape, tt_rank, mean, stddev,
dtype)``, ``glorot_initializer(shape, tt_rank, dtype)``), so t3f calls port unchanged; ``generator`` and
``device`` (no t3f counterpart) are keyword-only.

The constant objects (ones, zeros, eye) live in :mod:`tensortrain.constant_initializers`, t3f's i.i.d.-core
family (``tensor_with_random_cores``, ...) in :mod:`tensortrain.random_cores`; both are re-exported here.

Ranks are clipped to the maximal useful ranks, as TT-SVD clips them (:func:`tensortrain.svd_tt_ranks`: the
rank of an unfolding, and the rank before times the mode size): a rank above them only wastes parameters (t3f does
not clip; that is its issue #218). The clipped ranks are the
ones used in the variance formula, so the variance promise holds either way. A nonzero ``mean`` then adds the
all-ones TT (t3f's ``tt + mean * ones``): every inner rank grows by 1, past the clipped ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .constant_initializers import (
    eye,
    matrix_ones,
    matrix_zeros,
    ones_like,
    tensor_ones,
    tensor_zeros,
    zeros_like,
)
from .init_args import (
    MatrixShape,
    Rank,
    TensorShape,
    check_batch_size,
    check_stddev,
    core_shapes,
    float_dtype,
    matrix_shape_dims,
    real_number,
    shape_dims,
)
from .random_cores import (
    matrix_batch_with_random_cores,
    matrix_with_random_cores,
    normal_cores,
    tensor_batch_with_random_cores,
    tensor_with_random_cores,
    wrap_cores,
)
from .shapes import svd_tt_ranks
from .tensor_train import TensorTrain, TensorTrainBatch

__all__ = [
    "eye",
    "glorot_initializer",
    "he_initializer",
    "lecun_initializer",
    "matrix_batch_with_random_cores",
    "matrix_ones",
    "matrix_with_random_cores",
    "matrix_zeros",
    "ones_like",
    "random_matrix",
    "random_matrix_batch",
    "random_tensor",
    "random_tensor_batch",
    "tensor_batch_with_random_cores",
    "tensor_ones",
    "tensor_with_random_cores",
    "tensor_zeros",
    "zeros_like",
]


# ------------------------------------------------------------------------------------------- builders


def _add_cores(a: list[torch.Tensor], b: list[torch.Tensor], batch: bool) -> list[torch.Tensor]:
    """Cores of the exact sum: first core concatenated on the right rank, last on the left, inner
    cores block-diagonal (ranks add)."""
    d, lead = len(a), int(batch)
    if d == 1:
        return [a[0] + b[0]]
    out = [torch.cat([a[0], b[0]], dim=-1)]
    for k in range(1, d - 1):
        top = torch.cat([a[k], a[k].new_zeros(*a[k].shape[:-1], b[k].shape[-1])], dim=-1)
        bottom = torch.cat([b[k].new_zeros(*b[k].shape[:-1], a[k].shape[-1]), b[k]], dim=-1)
        out.append(torch.cat([top, bottom], dim=lead))
    out.append(torch.cat([a[-1], b[-1]], dim=lead))
    return out


def fan_std(numerator: float, fan: int) -> float:
    """``sqrt(numerator / fan)`` in logs: a fan of many modes (``2 ** 1030`` for 1030 modes of 2) is an int past
    the float range, while the std it gives is not."""
    return math.exp(0.5 * (math.log(numerator) - math.log(fan)))


def per_core_std(std: float, ranks: Sequence[int], d: int) -> float:
    """The std ``s`` of i.i.d. core entries that gives full-tensor entries of std ``std`` (> 0) over ``d`` cores
    with TT-ranks ``ranks``: ``(std^2 / prod(ranks))^(1 / 2d)``, taken in logs (the product of many ranks
    overflows a float, and std^2 / product can underflow to 0: all-zero "random" cores; std^2 itself leaves the
    float range beyond about 1e-154 and 1e154)."""
    return math.exp((2 * math.log(std) - sum(math.log(r) for r in ranks)) / (2 * d))


def _random(
    rows: tuple[int, ...],
    cols: tuple[int, ...] | None,
    tt_rank: Rank,
    batch_size: int | None,
    mean: float,
    stddev: float,
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Any:
    """Random TT with full-tensor entry std ``stddev``, plus ``mean`` times the all-ones TT."""
    stddev, mean = check_stddev(stddev), real_number(mean, "mean")
    kw: dict[str, Any] = {"dtype": float_dtype(dtype), "device": device}
    modes = rows if cols is None else [m * n for m, n in zip(rows, cols, strict=True)]
    ranks = svd_tt_ranks(tt_rank, modes)
    d = len(rows)
    core_std = 0.0 if stddev == 0 else per_core_std(stddev, ranks, d)
    shapes = core_shapes(rows, cols, ranks, batch_size)
    cores = normal_cores(shapes, 0.0, core_std, generator, **kw)
    if mean != 0.0:
        # t3f's semantics: tt + mean * ones, every inner rank grows by 1.
        ones = [torch.ones(s, **kw) for s in core_shapes(rows, cols, [1] * (d + 1), batch_size)]
        ones[0] = ones[0] * mean
        cores = _add_cores(cores, ones, batch_size is not None)
    return wrap_cores(cores, batch_size)


# ------------------------------------------------------------------------------------- random TT objects
def random_tensor(
    shape: TensorShape,
    tt_rank: Rank = 2,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A random TT-tensor whose full tensor has entries of mean ``mean`` and std ``stddev`` (t3f's).

    Cores are i.i.d. normal with std ``(stddev^2 / (r_1 ... r_{d-1}))^(1/(2d))``, so every entry of the full
    tensor has variance exactly ``stddev^2`` (see the module docstring). A nonzero ``mean`` adds
    ``mean * tensor_ones(shape)`` (t3f's semantics), which raises every inner rank by 1.

    Args:
        shape: mode sizes ``(n_1, ..., n_d)``, positive ints.
        tt_rank: an int, ``d - 1`` inner ranks or the full ``d + 1`` ranks; clipped to the maximal useful
            ranks, as TT-SVD clips them (:func:`tensortrain.svd_tt_ranks`).
        mean: mean of the full tensor's entries.
        stddev: standard deviation of the full tensor's entries (>= 0).
        dtype: floating point dtype, default ``torch.get_default_dtype()``. The last positional parameter,
            as in t3f: ``random_tensor(shape, 2, 0.0, 1.0, torch.float64)``.
        generator: a ``torch.Generator`` (on ``device``) for reproducible values; keyword-only.
        device: where to create the cores; keyword-only.

    Returns:
        A :class:`TensorTrain` with cores ``(r_{k-1}, n_k, r_k)``.

    Raises:
        TypeError: non-int mode sizes or ranks, a non-floating dtype.
        ShapeError: an empty shape, a mode size < 1, a rank < 1 or ranks of the wrong length.
        ValueError: a negative or non-finite ``stddev``.

    Complexity: O(d n r^2) time and memory.

    Example:
        >>> import torch, tensortrain as tt
        >>> a = tt.random_tensor((3, 4, 5), tt_rank=2, generator=torch.Generator().manual_seed(0))
        >>> print(a)
        A Tensor Train of shape (3, 4, 5), TT-ranks: (1, 2, 2, 1)
    """
    dims = shape_dims(shape, "random_tensor: shape")
    return _random(dims, None, tt_rank, None, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def random_tensor_batch(
    shape: TensorShape,
    tt_rank: Rank = 2,
    batch_size: int = 1,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrainBatch:
    """A batch of ``batch_size`` independent :func:`random_tensor` draws (same shape and ranks).

    Args:
        shape, tt_rank, mean, stddev, dtype, generator, device: as in :func:`random_tensor`.
        batch_size: number of TT-tensors (>= 1).

    Returns:
        A :class:`TensorTrainBatch` with cores ``(B, r_{k-1}, n_k, r_k)``.

    Raises:
        As :func:`random_tensor`; ``ValueError``/``TypeError`` for a bad ``batch_size``.

    Complexity: O(B d n r^2).

    Example:
        >>> import tensortrain as tt
        >>> print(tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=4))
        A 4 element batch of Tensor Trains of shape (2, 3), TT-ranks: (1, 2, 1)
    """
    dims = shape_dims(shape, "random_tensor_batch: shape")
    b = check_batch_size(batch_size)
    return _random(dims, None, tt_rank, b, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def random_matrix(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A random TT-matrix whose full matrix has entries of mean ``mean`` and std ``stddev`` (t3f's).

    Args:
        shape: ``[[m_1, ..., m_d], [n_1, ..., n_d]]`` (rows, columns); one side may be ``None`` for a
            vector (t3f), meaning all its modes are 1.
        tt_rank, mean, stddev, dtype, generator, device: as in :func:`random_tensor` (the maximal useful
            ranks are those of the modes ``m_k n_k``).

    Returns:
        A :class:`TensorTrain` TT-matrix with cores ``(r_{k-1}, m_k, n_k, r_k)``.

    Raises:
        TypeError: a shape that is not a pair, non-int dims or ranks, a non-floating dtype.
        ShapeError: row and column dims of different lengths, dims < 1, both sides None, bad ranks.
        ValueError: a negative or non-finite ``stddev``.

    Complexity: O(d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> print(tt.random_matrix([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=2))
        A TT-Matrix of size 784 x 625, underlying tensor shape: (4, 7, 4, 7) x (5, 5, 5, 5), TT-ranks: (1, 2, 2, 2, 1)
    """
    rows, cols = matrix_shape_dims(shape, "random_matrix: shape")
    return _random(rows, cols, tt_rank, None, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def random_matrix_batch(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    batch_size: int = 1,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrainBatch:
    """A batch of ``batch_size`` independent :func:`random_matrix` draws.

    Args:
        shape, tt_rank, mean, stddev, dtype, generator, device: as in :func:`random_matrix`.
        batch_size: number of TT-matrices (>= 1).

    Returns:
        A :class:`TensorTrainBatch` with cores ``(B, r_{k-1}, m_k, n_k, r_k)``.

    Raises:
        As :func:`random_matrix`; ``ValueError``/``TypeError`` for a bad ``batch_size``.

    Complexity: O(B d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> tt.random_matrix_batch([[2, 2], [3, 3]], batch_size=5).batch_size
        5
    """
    rows, cols = matrix_shape_dims(shape, "random_matrix_batch: shape")
    b = check_batch_size(batch_size)
    return _random(rows, cols, tt_rank, b, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ variance-scaled schemes
def _fans(shape: MatrixShape, name: str) -> tuple[int, int]:
    rows, cols = matrix_shape_dims(shape, name)
    return math.prod(rows), math.prod(cols)


def glorot_initializer(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A random TT-matrix whose full entries have Glorot's variance ``2 / (M + N)`` (t3f's).

    ``M = m_1...m_d`` rows, ``N = n_1...n_d`` columns; the same as
    ``random_matrix(shape, tt_rank, stddev=sqrt(2 / (M + N)))``. Symmetric in rows and columns.

    Args:
        shape: ``[[row dims], [col dims]]``.
        tt_rank, dtype, generator, device: as in :func:`random_matrix`.

    Returns:
        A TT-matrix :class:`TensorTrain`.

    Raises:
        As :func:`random_matrix`.

    Complexity: O(d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.glorot_initializer([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=4)
    """
    m, n = _fans(shape, "glorot_initializer: shape")
    std = fan_std(2, m + n)
    return random_matrix(shape, tt_rank, 0.0, std, generator=generator, dtype=dtype, device=device)


def he_initializer(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A random TT-matrix whose full entries have He's variance ``2 / fan_in``, ``fan_in = M`` (t3f's).

    As in t3f, ``fan_in`` is the number of ROWS ``M = m_1...m_d``: t3f's Keras kernel is ``in x out`` and
    computes ``x @ W``. For a weight stored like ``nn.Linear.weight`` (``out x in``, as ``TTLinear``), pass
    ``[[in dims], [out dims]]`` and transpose, or call :func:`random_matrix` with ``stddev=sqrt(2 / in)``.

    Args:
        shape: ``[[row dims (input side)], [col dims]]``.
        tt_rank, dtype, generator, device: as in :func:`random_matrix`.

    Returns:
        A TT-matrix :class:`TensorTrain`.

    Raises:
        As :func:`random_matrix`.

    Complexity: O(d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.he_initializer([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=4)  # fan_in = 784
    """
    m, _ = _fans(shape, "he_initializer: shape")
    std = fan_std(2, m)
    return random_matrix(shape, tt_rank, 0.0, std, generator=generator, dtype=dtype, device=device)


def lecun_initializer(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A random TT-matrix whose full entries have LeCun's variance ``1 / fan_in``, ``fan_in = M`` (t3f's).

    ``fan_in`` is the number of rows, as in :func:`he_initializer` (see its note on ``nn.Linear`` layouts).

    Args:
        shape: ``[[row dims (input side)], [col dims]]``.
        tt_rank, dtype, generator, device: as in :func:`random_matrix`.

    Returns:
        A TT-matrix :class:`TensorTrain`.

    Raises:
        As :func:`random_matrix`.

    Complexity: O(d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.lecun_initializer([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=4)  # fan_in = 784
    """
    m, _ = _fans(shape, "lecun_initializer: shape")
    std = fan_std(1, m)
    return random_matrix(shape, tt_rank, 0.0, std, generator=generator, dtype=dtype, device=device)
