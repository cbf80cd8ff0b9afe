"""Initialization of TT layer cores with the variance of a dense scheme.

A TT-matrix entry is a sum of ``r_1 ... r_{d-1}`` products of ``d`` core entries. With independent zero-mean
core entries of variance ``s_k^2`` the entry variance is ``prod_k s_k^2 * prod_k r_k`` (the products along
different rank paths are uncorrelated), so cores drawn with ``s_k = (var / prod r_k)^(1 / 2d)`` give full
entries of exactly the variance ``var`` of the dense scheme (Novikov et al. 2015, "Tensorizing Neural
Networks", sec. 5; t3f's ``glorot_initializer``).

Symbols: ``d`` number of cores, ``r_k`` TT-ranks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from ..errors import ShapeError
from ..initializers import per_core_std
from ..shapes import as_int, is_finite
from ..tensor_train import TensorTrain, is_dtensor

__all__ = ["dense_variance", "tt_normal_"]

InitScheme = Literal["linear", "glorot", "he", "lecun"]
INIT_SCHEMES: tuple[str, ...] = get_args(InitScheme)


def dense_variance(init: str, fan_in: int, fan_out: int) -> float:
    """The entry variance of a dense ``fan_out x fan_in`` weight under the scheme ``init``.

    Args:
        init: ``"linear"`` (``nn.Linear``'s default, ``kaiming_uniform_(a=sqrt(5))``: ``1 / (3 fan_in)``),
            ``"glorot"`` (``2 / (fan_in + fan_out)``), ``"he"`` (``2 / fan_in``) or ``"lecun"``
            (``1 / fan_in``).
        fan_in: the number of input features.
        fan_out: the number of output features.

    Returns:
        The variance as a float.

    Raises:
        ValueError: an unknown scheme (the message lists the valid ones), fans that are not ints >= 1.

    Example:
        >>> dense_variance("glorot", 784, 625)  # doctest: +ELLIPSIS
        0.00141...
    """
    fi, fo = as_int(fan_in), as_int(fan_out)
    if fi is None or fo is None or fi < 1 or fo < 1:
        raise ValueError(f"dense_variance: fan_in and fan_out must be ints >= 1, got {fan_in!r}, {fan_out!r}")

    def ratio(numerator: float, fan: int) -> float:  # (in logs: fans of many modes pass the float range)
        return math.exp(math.log(numerator) - math.log(fan))

    if init == "linear":
        return ratio(1 / 3, fi)
    if init == "glorot":
        return ratio(2, fi + fo)
    if init == "he":
        return ratio(2, fi)
    if init == "lecun":
        return ratio(1, fi)
    raise ValueError(f"init must be one of {', '.join(map(repr, INIT_SCHEMES))}; got {init!r}")


def _check_cores(cores: Sequence[torch.Tensor]) -> None:
    """One TT's cores, as :class:`~tensortrain.TensorTrain` validates them (the variance is split over the ranks
    read from the shapes: a batch's cores or a broken chain gave another variance, silently)."""
    if any(is_dtensor(c) for c in cores):
        # FSDP2's shards (deferred init: fully_shard, to_empty, reset_parameters): their global shapes are checked
        # (a TT of DTensors is refused), and normal_ fills each shard from torch's distributed RNG
        cores = [torch.empty(c.shape, dtype=c.dtype, device="meta") for c in cores]
    try:
        TensorTrain(list(cores))
    except ShapeError as err:
        raise ShapeError(f"tt_normal_: the cores are not one TT's: {err}") from None


def tt_normal_(
    cores: Sequence[torch.Tensor], variance: float, *, generator: torch.Generator | None = None
) -> None:
    """Fill TT cores in place with normal values so that the full tensor's entries have ``variance``.

    Works for TT-tensor (3-dim) and TT-matrix (4-dim) cores; the ranks are read from the core shapes. Cores
    sharded by FSDP2's ``fully_shard`` (DTensors) are filled shard by shard from torch's distributed RNG, so a
    layer's ``reset_parameters`` serves deferred init (build on meta, ``fully_shard``, ``to_empty``).

    Args:
        cores: the ``d`` cores (e.g. a layer's ``nn.ParameterList``), modified in place under ``no_grad``.
        variance: the target variance of every entry of the full tensor (> 0).
        generator: an optional ``torch.Generator`` for reproducible values.

    Raises:
        ValueError: a variance that is not positive and finite, or no cores.
        ShapeError: cores that are not one TT's (3-D or 4-D alike, ranks from 1 to 1 that chain).

    Complexity: O(sum of core sizes).

    Example:
        >>> cores = [torch.empty(1, 5, 7, 4), torch.empty(4, 5, 4, 1)]
        >>> tt_normal_(cores, 1e-3)
    """
    if isinstance(variance, bool) or not isinstance(variance, numbers.Real):
        raise TypeError(f"tt_normal_: variance must be a real number, got {variance!r}")
    if not (variance > 0 and is_finite(variance)):
        raise ValueError(f"tt_normal_: variance must be finite and > 0, got {variance!r}")
    d = len(cores)
    if d == 0:
        raise ValueError("tt_normal_: expected at least one core, got none")
    _check_cores(cores)
    # the d-th root of the target std divided by the sqrt of the number of rank paths
    std = per_core_std(math.sqrt(variance), [int(c.shape[0]) for c in cores[1:]], d)
    with torch.no_grad():
        for c in cores:
            c.normal_(0.0, std, generator=generator)
