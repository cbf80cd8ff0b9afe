"""TT objects whose cores are ``nn.Parameter``s: t3f's ``get_variable`` / ``assign`` in PyTorch terms.

A TT object is an immutable value over its cores; a module owns parameters. :func:`tt_parameters` turns a
TT's cores into an ``nn.ParameterList`` to store on a module, :func:`tt_from_parameters` reads them back
as a TT view (gradients flow into the parameters), and :func:`assign` overwrites them in place (the
retraction step of Riemannian optimization).

Example:
    >>> import torch, tensortrain as tt
    >>> class Model(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.cores = tt.tt_parameters(tt.random_matrix([[2, 3], [4, 5]], tt_rank=2))
    ...     def forward(self, x):
    ...         return x @ tt.tt_from_parameters(self.cores)
    >>> Model()(torch.randn(7, 6)).shape
    torch.Size([7, 20])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ShapeError
from .operands import as_flag, check_tt, check_writable, memory_overlaps
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch, check_cast

__all__ = ["assign", "tt_from_parameters", "tt_parameters"]


def tt_parameters(tt: TensorTrainBase, requires_grad: bool = True) -> nn.ParameterList:
    """The cores of ``tt`` as a new ``nn.ParameterList`` (copies: the TT and the parameters do not alias).

    Assign the result to a module attribute to register the cores (t3f's ``get_variable`` with an
    initializer).

    Args:
        tt: a TT object (a batch too).
        requires_grad: whether the parameters require gradients.

    Returns:
        An ``nn.ParameterList`` with one parameter per core, same dtype and device.

    Raises:
        TypeError: ``tt`` is not a TT object.

    Complexity: O(d r^2 n) copy.

    Example:
        >>> import tensortrain as tt
        >>> params = tt.tt_parameters(tt.random_tensor((2, 3, 4), tt_rank=2))
        >>> [tuple(p.shape) for p in params]
        [(1, 2, 2), (2, 3, 2), (2, 4, 1)]
    """
    check_tt(tt, "tt_parameters", "tt")
    requires_grad = as_flag(requires_grad, "tt_parameters", "requires_grad")
    return nn.ParameterList(
        [nn.Parameter(c.detach().clone(), requires_grad=requires_grad) for c in tt.tt_cores]
    )


def tt_from_parameters(params: Iterable[torch.Tensor], batch: bool = False) -> Any:
    """A TT view over parameters (or any tensors): gradients of computations on it reach them.

    Args:
        params: an ``nn.ParameterList`` or a sequence of core tensors.
        batch: build a :class:`TensorTrainBatch` (cores with a leading batch axis).

    Returns:
        A :class:`TensorTrain` (or :class:`TensorTrainBatch`) whose cores are the given tensors.

    Raises:
        TypeError: ``params`` is not an iterable of tensors.
        ShapeError: the cores do not form a valid TT object.

    Complexity: O(d) (no copy).

    Example:
        >>> import tensortrain as tt
        >>> params = tt.tt_parameters(tt.random_tensor((2, 3), tt_rank=2))
        >>> print(tt.tt_from_parameters(params))
        A Tensor Train variable of shape (2, 3), TT-ranks: (1, 2, 1)
    """
    if isinstance(params, (torch.Tensor, TensorTrainBase)) or not isinstance(params, Iterable):
        raise TypeError(
            f"tt_from_parameters: expects an nn.ParameterList or a sequence of tensors, got "
            f"{type(params).__name__}"
        )
    cores = list(params)
    if as_flag(batch, "tt_from_parameters", "batch"):
        return TensorTrainBatch(cores)
    try:
        return TensorTrain(cores)
    except ShapeError as e:
        # a batch's cores (tt_parameters of a TensorTrainBatch) failed with "boundary TT-ranks must be 1, got
        # r_0=5": name the likely cause when every core has the same leading size above 1
        batch_like = [c for c in cores if isinstance(c, torch.Tensor) and c.dim() in (4, 5)]
        lead = {int(c.shape[0]) for c in batch_like}
        if len(batch_like) == len(cores) > 1 and len(lead) == 1 and lead != {1}:
            raise ShapeError(
                f"{e}; every core has leading size {lead.pop()}, as a batch's: pass batch=True"
            ) from None
        raise


def assign(params: Iterable[torch.Tensor] | TensorTrainBase, tt: TensorTrainBase) -> Any:
    """Copy the cores of ``tt`` into ``params`` in place, without recording gradients (t3f's ``assign``).

    Core shapes must match exactly (so TT-ranks too: round ``tt`` to the parameters' ranks first). The
    values are cast to the parameters' dtype and device, like ``Tensor.copy_``.

    Args:
        params: an ``nn.ParameterList``, a sequence of core tensors, or a TT object built on them.
        tt: the new value, a TT object with the same core shapes.

    Returns:
        The TT view over ``params`` (a :class:`TensorTrainBatch` when ``tt`` is one).

    Raises:
        TypeError: ``tt`` is not a TT object or ``params`` is not a sequence of tensors.
        ShapeError: the number of cores or a core shape differs.

    Complexity: O(d r^2 n) copy.

    Example:
        >>> import tensortrain as tt
        >>> params = tt.tt_parameters(tt.random_tensor((2, 3), tt_rank=2))
        >>> new = tt.assign(params, tt.random_tensor((2, 3), tt_rank=2))
        >>> new.tt_cores[0] is params[0]
        True
    """
    check_tt(tt, "assign", "tt")
    targets = list(params.tt_cores) if isinstance(params, TensorTrainBase) else params
    if isinstance(targets, torch.Tensor) or not isinstance(targets, Iterable):
        raise TypeError(
            f"assign: params must be an nn.ParameterList, a sequence of tensors or a TT object, got "
            f"{type(params).__name__}"
        )
    targets = list(targets)
    if len(targets) != len(tt.tt_cores):
        raise ShapeError(f"assign: params hold {len(targets)} cores but the value has {len(tt.tt_cores)}")
    for k, (p, c) in enumerate(zip(targets, tt.tt_cores, strict=True)):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"assign: params[{k}] is a {type(p).__name__}, expected a tensor")
        if c.is_complex() and not p.is_complex():
            check_cast(c.dtype, p.dtype, "assign")  # (raises: the cores' real parts are not the tensor's)
        if p.shape != c.shape:
            raise ShapeError(
                f"assign: core {k} has shape {tuple(p.shape)} but the value's core has shape "
                f"{tuple(c.shape)}; target TT-ranks differ? round the value to the parameters' ranks"
            )
    # every target checked before any is written: a write that raised half-way (an integer target, an expanded
    # one) left the cores before it overwritten
    for k, (p, c) in enumerate(zip(targets, tt.tt_cores, strict=True)):
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(
                f"assign: params[{k}] has dtype {p.dtype}; TT cores are floating point or complex"
            )
        if c.device.type == "meta" and p.device.type != "meta":
            raise ValueError(f"assign: the value's core {k} is on the meta device and has no data to copy")
        if p.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                f"assign: params[{k}] was made under torch.inference_mode, and torch refuses in-place writes to "
                "it outside that mode"
            )
    check_writable("assign", targets, "params entry")
    with torch.no_grad():
        # Values that share memory with a target (the params' own cores swapped or transposed) are copied
        # first: writing core k would otherwise change a value still to be read.
        values = [c.clone() if any(memory_overlaps(c, p) for p in targets) else c for c in tt.tt_cores]
        for p, c in zip(targets, values, strict=True):
            p.copy_(c)
    return tt_from_parameters(targets, batch=isinstance(tt, TensorTrainBatch))
