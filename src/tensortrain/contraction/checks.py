"""Checking the contraction planner's operands: TT-matrix cores, a strategy or forced plan, flags and sizes.

Internal module (no public names): :mod:`tensortrain.contraction` and the planner's functions call these before
anything is planned or run, so that a wrong argument fails with a message naming the function and the argument,
not inside a reshape. :func:`cores_of` takes a TT-matrix or its cores, :func:`dims_of` reads their modes and
ranks, :func:`check_strategy` refuses unknown strategies and forced plans for other shapes (or ones the planner
does not make), and the flags and sizes are checked by :func:`check_max_saved` and its private siblings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ShapeError
from ..shapes import as_int
from ..tensor_train import TensorTrain
from . import cost as _cost
from .plans import STRATEGIES, ContractionPlan, Dims

__all__: list[str] = []


def cores_of(weight: TensorTrain | Sequence[torch.Tensor], fn: str) -> tuple[torch.Tensor, ...]:
    if isinstance(weight, TensorTrain):
        if not weight.is_tt_matrix():  # the wrong kind of object, as tt.transpose says of one
            raise TypeError(f"{fn}: expects a TT-matrix, got a TT-tensor of shape {tuple(weight.shape)}")
        return weight.tt_cores
    if isinstance(weight, torch.Tensor) or not isinstance(weight, Sequence):
        raise TypeError(
            f"{fn}: expects a TensorTrain or a sequence of TT-matrix cores, got {type(weight).__name__}"
        )
    cores = tuple(weight)
    if any(not isinstance(c, torch.Tensor) for c in cores):
        raise TypeError(
            f"{fn}: TT-matrix cores must be torch.Tensors, got {[type(c).__name__ for c in cores]}"
        )
    check_chain(cores, f"{fn}: ")
    try:  # TensorTrain's checks too: one dtype and device, floating or complex, no empty modes
        TensorTrain(cores)
    except (ShapeError, TypeError) as err:
        raise type(err)(f"{fn}: {err}") from None
    return cores


def core_copy_bytes(cores: Sequence[torch.Tensor]) -> int:
    """Bytes of the trained cores that are views in another layout (``tt.transpose``'s, a channels_last module's,
    ``dense_tt_matmul``'s permuted ones): where a plan reshapes one (a one-core half, a one-core group) it copies
    it, and training keeps the copy, which the cost model takes for the parameter itself; a memory bound counts
    them."""
    return sum(c.numel() * c.element_size() for c in cores if c.requires_grad and not c.is_contiguous())


def check_chain(cores: Sequence[torch.Tensor], prefix: str = "") -> None:
    """A ShapeError unless ``cores`` are 4-dim TT-matrix cores whose ranks chain, with boundary ranks 1."""
    shapes = [tuple(c.shape) for c in cores]
    if not cores or any(len(s) != 4 for s in shapes):
        raise ShapeError(f"{prefix}TT-matrix cores must be 4-dim tensors (r, m, n, r'), got shapes {shapes}")
    if shapes[0][0] != 1 or shapes[-1][-1] != 1:
        raise ShapeError(f"{prefix}boundary TT-ranks must be 1, got core shapes {shapes}")
    for k in range(len(shapes) - 1):
        if shapes[k][-1] != shapes[k + 1][0]:
            raise ShapeError(
                f"{prefix}TT-ranks do not chain: core {k} has shape {shapes[k]} but core {k + 1} has shape "
                f"{shapes[k + 1]} (core shapes {shapes})"
            )


def dims_of(cores: Sequence[torch.Tensor]) -> Dims:
    rows = tuple(int(c.shape[1]) for c in cores)
    cols = tuple(int(c.shape[2]) for c in cores)
    ranks = tuple(int(c.shape[0]) for c in cores) + (1,)
    return rows, cols, ranks


def check_strategy(strategy: object, dims: Dims, fn: str) -> None:
    if isinstance(strategy, ContractionPlan):
        have = (strategy.row_dims, strategy.col_dims, strategy.tt_ranks)
        if have != dims:
            raise ShapeError(
                f"{fn}: the forced plan is for row dims {have[0]}, col dims {have[1]}, ranks {have[2]}, "
                f"but the TT-matrix has row dims {dims[0]}, col dims {dims[1]}, ranks {dims[2]}"
            )
        _check_program(strategy, len(dims[0]), fn)
    elif strategy not in STRATEGIES:
        raise ValueError(f"{fn}: unknown strategy {strategy!r}; valid strategies are {', '.join(STRATEGIES)}")


def _check_program(p: ContractionPlan, d: int, fn: str) -> None:
    """A forced plan's kind, direction and groups describe a program the executors can run (a hand-edited one
    failed deep inside a reshape, or ran as another plan)."""
    groups = p.groups
    pairs = isinstance(groups, tuple) and all(
        isinstance(g, tuple) and len(g) == 2 and all(type(i) is int for i in g) for g in groups
    )
    if p.kind == "full":
        ok = (
            p.direction in ("keep", "recompute")
            and pairs
            and len(groups) == 2
            and groups[0][0] == 0
            and 1 <= groups[0][1] == groups[1][0] <= d
            and groups[1][1] == d
        )
    elif p.kind == "sweep":
        ok = (
            p.direction in ("rtl", "ltr")
            and pairs
            and len(groups) >= 1
            and groups[0][0] == 0
            and groups[-1][1] == d
            and all(a < b for a, b in groups)
            and all(x[1] == y[0] for x, y in zip(groups, groups[1:], strict=False))
        )
    else:
        ok = False
    if not ok:
        raise ValueError(
            f"{fn}: the forced plan is not one the planner makes (kind {p.kind!r}, direction {p.direction!r}, groups "
            f"{groups!r} for {d} cores): take one from tt.contraction.enumerate_plans or plan"
        )


def check_flag(value: Any, fn: str, name: str) -> None:
    if not isinstance(value, bool):  # ("no" is truthy: it priced a training plan)
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")


def check_max_saved(value: Any, fn: str) -> int | None:
    """``max_saved_bytes``: None or an int >= 0 (a byte count, e.g. ``64 * 2**20``)."""
    if value is None:
        return None
    k = as_int(value)
    if isinstance(value, bool) or k is None:
        raise TypeError(f"{fn}: max_saved_bytes must be an int (bytes) or None, got {value!r}")
    if k < 0:
        raise ValueError(f"{fn}: max_saved_bytes must be >= 0, got {value!r}")
    return k


def as_batch_size(batch_size: Any, fn: str) -> int:
    k = as_int(batch_size)
    # (2.5 rows or -3 rows would be priced as if they were meant)
    if k is None:  # (a TypeError, as for every other int argument: tensortrain.shapes.int_at_least)
        raise TypeError(f"{fn}: batch_size must be an int >= 0, got {batch_size!r}")
    if k < 0:
        raise ValueError(f"{fn}: batch_size must be an int >= 0, got {batch_size!r}")
    return k


def grad_need(input_grad: bool, cores_grad: bool, requires_grad: bool, fn: str) -> _cost.Need:
    check_flag(input_grad, fn, "input_requires_grad")
    check_flag(cores_grad, fn, "cores_require_grad")
    if requires_grad and not (input_grad or cores_grad):
        raise ValueError(
            f"{fn}: with requires_grad=True, the input or the cores must need a gradient (input_requires_grad, "
            "cores_require_grad): both are False"
        )
    return (input_grad, cores_grad)
