"""Constant TT objects (t3f's ``tensor_ones``, ``matrix_zeros``, ``eye``, ...).

Symbols: ``d`` number of cores, ``n_k`` mode sizes (``m_k x n_k`` for a TT-matrix), ``r_k`` TT-ranks.
The public names are re-exported by :mod:`tensortrain.initializers`.
"""

from __future__ import annotations

from typing import Any

import torch

from .init_args import MatrixShape, TensorShape, constant_dtype, core_shapes, matrix_shape_dims, shape_dims
from .tensor_train import TensorTrain, TensorTrainBase

__all__ = ["eye", "matrix_ones", "matrix_zeros", "ones_like", "tensor_ones", "tensor_zeros", "zeros_like"]


# -------------------------------------------------------------------------------- constant TT objects
def _constant(
    rows: tuple[int, ...],
    cols: tuple[int, ...] | None,
    value: float,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> TensorTrain:
    shapes = core_shapes(rows, cols, [1] * (len(rows) + 1), None)
    cores = [torch.full(s, value, dtype=constant_dtype(dtype), device=device) for s in shapes]
    return TensorTrain(cores)


def tensor_ones(
    shape: TensorShape, dtype: torch.dtype | None = None, *, device: torch.device | str | None = None
) -> TensorTrain:
    """The all-ones TT-tensor of TT-rank 1 (t3f's).

    Args:
        shape: mode sizes ``(n_1, ..., n_d)``.
        dtype: floating point or complex dtype, default ``torch.get_default_dtype()``.
        device: where to create the cores.

    Returns:
        A rank-1 :class:`TensorTrain` of ones.

    Raises:
        TypeError, ShapeError: as in :func:`random_tensor`.

    Complexity: O(d n).

    Example:
        >>> import tensortrain as tt
        >>> print(tt.tensor_ones((2, 3)))
        A Tensor Train of shape (2, 3), TT-ranks: (1, 1, 1)
    """
    return _constant(shape_dims(shape, "tensor_ones: shape"), None, 1.0, dtype, device)


def tensor_zeros(
    shape: TensorShape, dtype: torch.dtype | None = None, *, device: torch.device | str | None = None
) -> TensorTrain:
    """The all-zeros TT-tensor of TT-rank 1 (t3f's).

    Args:
        shape, dtype, device: as in :func:`tensor_ones`.

    Returns:
        A rank-1 :class:`TensorTrain` of zeros.

    Raises:
        TypeError, ShapeError: as in :func:`random_tensor`.

    Complexity: O(d n).

    Example:
        >>> import tensortrain as tt
        >>> tt.tensor_zeros((2, 3)).tt_ranks
        (1, 1, 1)
    """
    return _constant(shape_dims(shape, "tensor_zeros: shape"), None, 0.0, dtype, device)


def matrix_ones(
    shape: MatrixShape, dtype: torch.dtype | None = None, *, device: torch.device | str | None = None
) -> TensorTrain:
    """The all-ones TT-matrix of TT-rank 1 (t3f's).

    Args:
        shape: ``[[row dims], [col dims]]``; one side may be None (a vector).
        dtype, device: as in :func:`tensor_ones`.

    Returns:
        A rank-1 TT-matrix of ones.

    Raises:
        TypeError, ShapeError: as in :func:`random_matrix`.

    Complexity: O(d m n).

    Example:
        >>> import tensortrain as tt
        >>> tt.matrix_ones([[2, 3], [4, 5]]).shape
        torch.Size([6, 20])
    """
    rows, cols = matrix_shape_dims(shape, "matrix_ones: shape")
    return _constant(rows, cols, 1.0, dtype, device)


def matrix_zeros(
    shape: MatrixShape, dtype: torch.dtype | None = None, *, device: torch.device | str | None = None
) -> TensorTrain:
    """The all-zeros TT-matrix of TT-rank 1 (t3f's).

    Args:
        shape, dtype, device: as in :func:`matrix_ones`.

    Returns:
        A rank-1 TT-matrix of zeros.

    Raises:
        TypeError, ShapeError: as in :func:`random_matrix`.

    Complexity: O(d m n).

    Example:
        >>> import tensortrain as tt
        >>> tt.matrix_zeros([[2, 3], None]).shape
        torch.Size([6, 1])
    """
    rows, cols = matrix_shape_dims(shape, "matrix_zeros: shape")
    return _constant(rows, cols, 0.0, dtype, device)


def eye(
    shape: TensorShape, dtype: torch.dtype | None = None, *, device: torch.device | str | None = None
) -> TensorTrain:
    """The identity TT-matrix of TT-rank 1 with square modes ``n_k x n_k`` (t3f's).

    Args:
        shape: the per-mode sizes ``(n_1, ..., n_d)``: the matrix is ``N x N`` with ``N = n_1...n_d``.
        dtype, device: as in :func:`tensor_ones`.

    Returns:
        A TT-matrix whose cores are ``eye(n_k)`` reshaped to ``(1, n_k, n_k, 1)``.

    Raises:
        TypeError, ShapeError: as in :func:`random_tensor`.

    Complexity: O(d n^2).

    Example:
        >>> import tensortrain as tt
        >>> print(tt.eye((2, 3)))
        A TT-Matrix of size 6 x 6, underlying tensor shape: (2, 3) x (2, 3), TT-ranks: (1, 1, 1)
    """
    dims = shape_dims(shape, "eye: shape")
    kw: dict[str, Any] = {"dtype": constant_dtype(dtype), "device": device}
    return TensorTrain([torch.eye(n, **kw).reshape(1, n, n, 1) for n in dims])


def ones_like(tt: TensorTrainBase) -> TensorTrain:
    """The all-ones TT of rank 1 with ``tt``'s raw shape, dtype and device (t3f's).

    For a batch the result is a single TT (not a batch), as in t3f.

    Args:
        tt: a :class:`TensorTrain` or :class:`TensorTrainBatch`.

    Returns:
        A rank-1 :class:`TensorTrain` of ones.

    Raises:
        TypeError: ``tt`` is not a TT object.

    Complexity: O(d n).

    Example:
        >>> import tensortrain as tt
        >>> tt.ones_like(tt.random_tensor((2, 3))).tt_ranks
        (1, 1, 1)
    """
    return _like(tt, 1.0, "ones_like")


def zeros_like(tt: TensorTrainBase) -> TensorTrain:
    """The all-zeros TT of rank 1 with ``tt``'s raw shape, dtype and device (t3f's).

    Args:
        tt: a :class:`TensorTrain` or :class:`TensorTrainBatch`.

    Returns:
        A rank-1 :class:`TensorTrain` of zeros (a single TT also for a batch).

    Raises:
        TypeError: ``tt`` is not a TT object.

    Complexity: O(d n).

    Example:
        >>> import tensortrain as tt
        >>> tt.zeros_like(tt.random_matrix([[2], [3]])).shape
        torch.Size([2, 3])
    """
    return _like(tt, 0.0, "zeros_like")


def _like(tt: Any, value: float, name: str) -> TensorTrain:
    if not isinstance(tt, TensorTrainBase):
        raise TypeError(f"{name} expects a TensorTrain or TensorTrainBatch, got {type(tt).__name__}")
    raw = tt.get_raw_shape()
    cols = raw[1] if tt.is_tt_matrix() else None
    return _constant(raw[0], cols, value, tt.dtype, tt.device)
