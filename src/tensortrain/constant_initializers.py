"""Constant TT objects (t3f's ``tensor_ones``, ``matrix_zeros``, ``eye``, ...) and the shape/rank argument
checks shared by every initializer.

Symbols: ``d`` number of cores, ``n_k`` mode sizes (``m_k x n_k`` for a TT-matrix), ``r_k`` TT-ranks.
The public names are re-exported by :mod:`tensortrain.initializers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .errors import ShapeError
from .shapes import as_int, plain_scalar
from .tensor_train import TensorTrain, TensorTrainBase

__all__ = ["eye", "matrix_ones", "matrix_zeros", "ones_like", "tensor_ones", "tensor_zeros", "zeros_like"]

TensorShape = Sequence[int]
MatrixShape = Sequence[Sequence[int] | None]
Rank = int | Sequence[int]


# --------------------------------------------------------------------------------------- validation
def _is_array(x: Any) -> bool:
    """A NumPy array or a torch tensor (duck-typed: NumPy is not a dependency); never a Python sequence."""
    return not isinstance(x, Sequence) and hasattr(x, "__array__") and hasattr(x, "ndim")


def _dims(shape: Any, name: str) -> tuple[int, ...]:
    """A sequence of positive ints (numpy/torch ints accepted, bools and floats refused).

    A 1-D integer array (NumPy or torch) is a sequence here: t3f documents its shapes as arrays
    (``t3f.random_tensor(np.array([3, 4, 5]))``). Float arrays are refused as float lists are, as in t3f.
    """
    if _is_array(shape):
        if shape.ndim != 1:
            kind = f"{shape.ndim}-D {type(shape).__name__}"
            raise TypeError(f"{name}: expected a 1-D sequence of ints, got a {kind} {shape!r}")
        shape = list(shape)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(shape).__name__} {shape!r}")
    if len(shape) == 0:
        raise ShapeError(f"{name}: expected at least one mode size, got an empty shape")
    dims = []
    for n in shape:
        k = as_int(n)  # refuses bools, floats and strings
        if k is None:
            raise TypeError(f"{name}: mode sizes must be ints, got {tuple(plain_scalar(n) for n in shape)!r}")
        dims.append(k)
    if any(n < 1 for n in dims):
        raise ShapeError(f"{name}: mode sizes must be >= 1, got {tuple(dims)}")
    return tuple(dims)


def _matrix_dims(shape: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``[[rows], [cols]]``; one side may be None (t3f: a vector, that side's modes are all 1).

    As in t3f, the pair may be a 2-D integer array (``np.array([[7, 4], [5, 5]])``), and either side a 1-D
    array; an object array ``np.array([[3, 4], None], dtype=object)`` carries a None side.
    """
    if _is_array(shape) and shape.ndim in (1, 2):
        shape = list(shape)  # its rows: two 1-D arrays, or the objects of an object array
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 2:
        raise TypeError(f"{name}: a TT-matrix shape is [[row dims], [col dims]], got {shape!r}")
    if shape[0] is None and shape[1] is None:
        raise ShapeError(f"{name}: at most one side of a TT-matrix shape may be None, got {shape!r}")
    rows = None if shape[0] is None else _dims(shape[0], f"{name} (row dims)")
    cols = None if shape[1] is None else _dims(shape[1], f"{name} (col dims)")
    rows = rows if rows is not None else (1,) * len(cols)  # type: ignore[arg-type]
    cols = cols if cols is not None else (1,) * len(rows)
    if len(rows) != len(cols):
        raise ShapeError(
            f"{name}: row and column dims must have the same length, got rows {rows} ({len(rows)} modes) "
            f"and cols {cols} ({len(cols)} modes)"
        )
    return rows, cols


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    if dtype.itemsize < 2:  # the float8 types: no random kernels, no products
        raise TypeError(f"TT cores are 16 bits or more (float16 and up), got dtype {dtype}")
    return dtype


def _constant_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The constants' dtype: floating point or complex (ones, zeros and the identity are exact in either)."""
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        if dtype.itemsize < 8:  # complex32 has almost no kernels; the TT constructor would refuse it anyway
            raise TypeError(f"complex TT cores are complex64 or complex128, got dtype {dtype}")
        return dtype
    try:
        return _dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating point or complex torch.dtype, got {dtype!r}") from None


def _batch_size(batch_size: Any) -> int:
    n = as_int(batch_size)
    if n is None:
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if n < 1:
        raise ValueError(f"batch_size must be >= 1, got {n}")
    return n


def _real(value: Any, name: str) -> float:
    """``value`` as a finite float; strings and bools are refused (``"0.5"`` or ``True`` is a mistake here)."""
    plain = plain_scalar(value)  # (numpy and 0-dim tensor scalars as Python numbers)
    if isinstance(plain, (str, bytes, bool, complex)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        x = float(plain)  # (Decimal and Fraction too)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got {value!r}") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _stddev(stddev: float, name: str = "stddev") -> float:
    stddev = _real(stddev, name)
    if stddev < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {stddev}")
    return stddev


# ------------------------------------------------------------------------------------------- builders
def _core_shapes(
    rows: Sequence[int], cols: Sequence[int] | None, ranks: Sequence[int], batch_size: int | None
) -> list[tuple[int, ...]]:
    shapes = []
    for k, m in enumerate(rows):
        modes = (m,) if cols is None else (m, cols[k])
        lead = () if batch_size is None else (batch_size,)
        shapes.append((*lead, ranks[k], *modes, ranks[k + 1]))
    return shapes


# -------------------------------------------------------------------------------- constant TT objects
def _constant(
    rows: tuple[int, ...],
    cols: tuple[int, ...] | None,
    value: float,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> TensorTrain:
    shapes = _core_shapes(rows, cols, [1] * (len(rows) + 1), None)
    cores = [torch.full(s, value, dtype=_constant_dtype(dtype), device=device) for s in shapes]
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
    return _constant(_dims(shape, "tensor_ones: shape"), None, 1.0, dtype, device)


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
    return _constant(_dims(shape, "tensor_zeros: shape"), None, 0.0, dtype, device)


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
    rows, cols = _matrix_dims(shape, "matrix_ones: shape")
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
    rows, cols = _matrix_dims(shape, "matrix_zeros: shape")
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
    dims = _dims(shape, "eye: shape")
    kw: dict[str, Any] = {"dtype": _constant_dtype(dtype), "device": device}
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
