"""The initializers' argument checks: TT-tensor and TT-matrix shapes in t3f's forms (sequences, NumPy or torch
integer arrays, a None side), dtypes, batch sizes, real scalars, and the cores' shapes they imply.

Shared by :mod:`tensortrain.constant_initializers`, :mod:`tensortrain.random_cores`,
:mod:`tensortrain.initializers` and :func:`tensortrain.to_tt_matrix`'s shape argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .errors import ShapeError
from .shapes import as_int, int_at_least, plain_scalar

__all__: list[str] = []

TensorShape = Sequence[int]
MatrixShape = Sequence[Sequence[int] | None]
Rank = int | Sequence[int]


def _is_array(x: Any) -> bool:
    """A NumPy array or a torch tensor (duck-typed: NumPy is not a dependency); never a Python sequence."""
    return not isinstance(x, Sequence) and hasattr(x, "__array__") and hasattr(x, "ndim")


def shape_dims(shape: Any, name: str) -> tuple[int, ...]:
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


def matrix_shape_dims(shape: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
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
    rows = None if shape[0] is None else shape_dims(shape[0], f"{name} (row dims)")
    cols = None if shape[1] is None else shape_dims(shape[1], f"{name} (col dims)")
    rows = rows if rows is not None else (1,) * len(cols)  # type: ignore[arg-type]
    cols = cols if cols is not None else (1,) * len(rows)
    if len(rows) != len(cols):
        raise ShapeError(
            f"{name}: row and column dims must have the same length, got rows {rows} ({len(rows)} modes) "
            f"and cols {cols} ({len(cols)} modes)"
        )
    return rows, cols


def float_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The random initializers' dtype: a floating point one of 16 bits or more (None: torch's default)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    if dtype.itemsize < 2:  # the float8 types: no random kernels, no products
        raise TypeError(f"TT cores are 16 bits or more (float16 and up), got dtype {dtype}")
    return dtype


def constant_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The constants' dtype: floating point or complex (ones, zeros and the identity are exact in either)."""
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        if dtype.itemsize < 8:  # complex32 has almost no kernels; the TT constructor would refuse it anyway
            raise TypeError(f"complex TT cores are complex64 or complex128, got dtype {dtype}")
        return dtype
    try:
        return float_dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating point or complex torch.dtype, got {dtype!r}") from None


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int (NumPy and 0-d tensor ints too; never a bool or a float)."""
    return int_at_least(batch_size, 1, "batch_size")


def real_number(value: Any, name: str) -> float:
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


def check_stddev(stddev: float, name: str = "stddev") -> float:
    """``stddev`` as a finite float >= 0."""
    stddev = real_number(stddev, name)
    if stddev < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {stddev}")
    return stddev


def core_shapes(
    rows: Sequence[int], cols: Sequence[int] | None, ranks: Sequence[int], batch_size: int | None
) -> list[tuple[int, ...]]:
    """The cores' shapes: ``(B, r_{k-1}, m_k, n_k, r_k)``, without ``n_k`` for a TT-tensor (``cols`` None) and
    without ``B`` when ``batch_size`` is None."""
    shapes = []
    for k, m in enumerate(rows):
        modes = (m,) if cols is None else (m, cols[k])
        lead = () if batch_size is None else (batch_size,)
        shapes.append((*lead, ranks[k], *modes, ranks[k + 1]))
    return shapes
