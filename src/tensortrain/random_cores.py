"""TT objects with i.i.d. normal CORE entries (t3f's ``tensor_with_random_cores`` family).

Unlike :func:`tensortrain.random_tensor`, ``mean``/``stddev`` describe each core entry, not the full tensor's
entries. Positional parameters follow t3f's order (``shape, tt_rank, [batch_size,] mean, stddev, dtype``);
``generator`` and ``device`` are keyword-only. Symbols: ``d`` number of cores, ``n_k`` mode sizes, ``r_k``
TT-ranks, ``B`` batch size. The public names are re-exported by :mod:`tensortrain.initializers`.
"""

from __future__ import annotations

from typing import Any

import torch

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
from .shapes import svd_tt_ranks
from .tensor_train import TensorTrain, TensorTrainBatch

__all__ = [
    "matrix_batch_with_random_cores",
    "matrix_with_random_cores",
    "tensor_batch_with_random_cores",
    "tensor_with_random_cores",
]


def wrap_cores(cores: list[torch.Tensor], batch_size: int | None) -> Any:
    """A TensorTrain of ``cores``, or a TensorTrainBatch when a ``batch_size`` was asked for."""
    return TensorTrain(cores) if batch_size is None else TensorTrainBatch(cores)


def normal_cores(
    shapes: list[tuple[int, ...]], mean: float, std: float, generator: torch.Generator | None, **kw: Any
) -> list[torch.Tensor]:
    """One core of i.i.d. N(mean, std^2) entries per shape (``kw``: dtype and device)."""
    return [torch.randn(s, generator=generator, **kw) * std + mean for s in shapes]


# -------------------------------------------------------------------------------- i.i.d. random cores
def tensor_with_random_cores(
    shape: TensorShape,
    tt_rank: Rank = 2,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A TT-tensor whose CORE entries are i.i.d. N(mean, stddev^2) (t3f's; not the full tensor's).

    Args:
        shape, tt_rank, dtype, generator, device: as in :func:`random_tensor`.
        mean, stddev: of every core entry.

    Returns:
        A :class:`TensorTrain`.

    Raises:
        As :func:`random_tensor`.

    Complexity: O(d n r^2).

    Example:
        >>> import tensortrain as tt
        >>> tt.tensor_with_random_cores((2, 3), tt_rank=2).tt_ranks
        (1, 2, 1)
    """
    dims = shape_dims(shape, "tensor_with_random_cores: shape")
    return _iid(dims, None, tt_rank, None, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def tensor_batch_with_random_cores(
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
    """A batch version of :func:`tensor_with_random_cores` (t3f's).

    Args:
        shape, tt_rank, batch_size, mean, stddev, dtype, generator, device: as in
            :func:`random_tensor_batch`, with ``mean``/``stddev`` per core entry.

    Returns:
        A :class:`TensorTrainBatch`.

    Raises:
        As :func:`random_tensor_batch`.

    Complexity: O(B d n r^2).

    Example:
        >>> import tensortrain as tt
        >>> tt.tensor_batch_with_random_cores((2, 3), batch_size=3).batch_size
        3
    """
    dims = shape_dims(shape, "tensor_batch_with_random_cores: shape")
    b = check_batch_size(batch_size)
    return _iid(dims, None, tt_rank, b, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def matrix_with_random_cores(
    shape: MatrixShape,
    tt_rank: Rank = 2,
    mean: float = 0.0,
    stddev: float = 1.0,
    dtype: torch.dtype | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorTrain:
    """A TT-matrix whose CORE entries are i.i.d. N(mean, stddev^2) (t3f's).

    Args:
        shape, tt_rank, dtype, generator, device: as in :func:`random_matrix`.
        mean, stddev: of every core entry.

    Returns:
        A TT-matrix :class:`TensorTrain`.

    Raises:
        As :func:`random_matrix`.

    Complexity: O(d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> tt.matrix_with_random_cores([[2, 2], [3, 3]]).shape
        torch.Size([4, 9])
    """
    rows, cols = matrix_shape_dims(shape, "matrix_with_random_cores: shape")
    return _iid(rows, cols, tt_rank, None, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def matrix_batch_with_random_cores(
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
    """A batch version of :func:`matrix_with_random_cores` (t3f's).

    Args:
        shape, tt_rank, batch_size, mean, stddev, dtype, generator, device: as in
            :func:`random_matrix_batch`, with ``mean``/``stddev`` per core entry.

    Returns:
        A :class:`TensorTrainBatch` of TT-matrices.

    Raises:
        As :func:`random_matrix_batch`.

    Complexity: O(B d m n r^2).

    Example:
        >>> import tensortrain as tt
        >>> tt.matrix_batch_with_random_cores([[2, 2], [3, 3]], batch_size=2).shape
        torch.Size([2, 4, 9])
    """
    rows, cols = matrix_shape_dims(shape, "matrix_batch_with_random_cores: shape")
    b = check_batch_size(batch_size)
    return _iid(rows, cols, tt_rank, b, mean, stddev, generator, dtype, device)  # type: ignore[no-any-return]


def _iid(
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
    kw: dict[str, Any] = {"dtype": float_dtype(dtype), "device": device}
    modes = rows if cols is None else [m * n for m, n in zip(rows, cols, strict=True)]
    shapes = core_shapes(rows, cols, svd_tt_ranks(tt_rank, modes), batch_size)
    return wrap_cores(
        normal_cores(shapes, real_number(mean, "mean"), check_stddev(stddev), generator, **kw), batch_size
    )
