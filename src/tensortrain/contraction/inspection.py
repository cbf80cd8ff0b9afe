"""The planner's answers, without running anything: :func:`plan`, :func:`enumerate_plans`, :func:`flop_floor`.

Internal module: :mod:`tensortrain.contraction` exports the three. :func:`plan` is the plan
:func:`tensortrain.contraction.linear` runs for a batch size (``TTLinear.plan`` reports it), :func:`enumerate_plans`
lists every candidate with its estimated cost, and :func:`flop_floor` is the fewest FLOPs of any contraction
order. None of them is on a layer's hot path, which goes through ``contraction.plan_cache.choose_program``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._transforms import grad_recorded
from ..tensor_train import TensorTrain
from . import checks as _checks
from . import plan_cache as _plan_cache
from . import plans as _plan
from . import search as _search
from .plans import ContractionPlan, Strategy

__all__ = ["plan", "enumerate_plans", "flop_floor"]


def plan(
    weight: TensorTrain | Sequence[torch.Tensor],
    batch_size: int,
    *,
    requires_grad: bool | None = None,
    strategy: Strategy = "auto",
    cached_merges: bool = False,
    max_saved_bytes: int | None = None,
    input_requires_grad: bool = True,
    cores_require_grad: bool = True,
) -> ContractionPlan:
    """The plan :func:`linear` uses for ``x @ W^T`` with ``batch_size`` rows, and its estimated cost.

    Args:
        weight: TT-matrix ``W`` (``M x N``) or its cores ``(r_k, m_k, n_k, r_{k+1})``.
        batch_size: number of rows of ``x`` (all leading dims flattened).
        requires_grad: price backward too; default: whether any core requires grad and grad mode is on.
        strategy: ``"auto"`` (cheapest) or one of :data:`STRATEGIES` to see what a forced strategy would do
            (``"tune"`` times its candidates now, if this key has not been tuned yet: see :func:`linear`).
            ``"auto"`` weighs the full plans and the sweeps over two or more groups: the one-group sweep (merging
            every core into W) is left to the full plans, which build W from two halves, unless a layer's
            inference cache may keep it; :func:`enumerate_plans` lists it for forcing and inspection.
        cached_merges: price sweeps without merging their core groups, as for a layer that keeps the merged
            groups between inference calls (``TTLinear`` without gradients); ignored when training.
        max_saved_bytes: when training, the fastest plan whose activations kept for backward
            (``saved_bytes``) are at most this many bytes; if no plan of the strategy fits, the one keeping
            least. None (default): the fastest of the plans that keep their step inputs (sweeps that recompute
            them are weighed only under a bound: the model prices them within a few percent of the keeping
            ones at best). Ignored without gradients (nothing is kept). Such plans are
            made (and cached) for the batch size itself, not its power-of-two bucket; sizes are the cores' dtype
            (autocast is not seen).
        input_requires_grad, cores_require_grad: when training, which gradients backward computes, as
            :func:`linear` reads them from ``x`` and the cores: a first layer's input needs none (False), a
            frozen layer's cores need none. Not both False.

    Returns:
        A frozen :class:`ContractionPlan`; ``str(plan)`` reads like
        ``ContractionPlan: sweep rtl [0:2][2:4] for a 625x784 TT-matrix ...: forward 0.304 GFLOP (3.30x fewer
        than the dense product's 1 GFLOP), est. ...``.

    Raises:
        ValueError: unknown strategy, a negative batch size or ``max_saved_bytes``, training with neither
            ``input_requires_grad`` nor ``cores_require_grad``.
        ShapeError: malformed cores. TypeError: not a TT-matrix, a batch size or ``max_saved_bytes`` that is
            not an int.

    Complexity:
        ``O(d^2)`` cost evaluations for the grouping programme, once per cache key (with ``max_saved_bytes``,
        times the size of the (time, memory) Pareto fronts it keeps).

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
        >>> print(tt.contraction.plan(w, 8, requires_grad=False).describe())  # doctest: +SKIP
        sweep ltr [0:1][1:2]
        >>> print(tt.contraction.plan(w, 1024, requires_grad=False).describe())  # doctest: +SKIP
        full (W from halves split at core 1, one GEMM)
    """
    cores = _checks.cores_of(weight, "plan")
    batch_size = _checks.as_batch_size(batch_size, "plan")
    dims = _checks.dims_of(cores)
    _checks.check_strategy(strategy, dims, "plan")
    if requires_grad is None:
        requires_grad = grad_recorded() and any(c.requires_grad for c in cores)
    _checks.check_flag(requires_grad, "plan", "requires_grad")
    max_saved = _checks.check_max_saved(max_saved_bytes, "plan")
    if requires_grad and max_saved is not None:  # (as linear counts them)
        max_saved = max(0, max_saved - _checks.core_copy_bytes(cores))
    _checks.check_flag(cached_merges, "plan", "cached_merges")
    need = _checks.grad_need(input_requires_grad, cores_require_grad, requires_grad, "plan")
    cached = cached_merges and not requires_grad
    prog = _plan_cache.choose_program(cores, batch_size, requires_grad, strategy, cached, max_saved, need)
    c0 = cores[0]
    return _plan.make_plan(
        dims, prog, batch_size, c0.element_size(), c0.device.type, requires_grad, cached, need
    )


def enumerate_plans(
    weight: TensorTrain | Sequence[torch.Tensor],
    batch_size: int,
    *,
    requires_grad: bool = False,
    input_requires_grad: bool = True,
    cores_require_grad: bool = True,
) -> list[ContractionPlan]:
    """Every plan the planner knows for this TT-matrix: full (each split) and both sweeps for every grouping.

    Args:
        weight: TT-matrix ``W`` or its cores.
        batch_size: number of rows of ``x``.
        requires_grad: price backward too.
        input_requires_grad, cores_require_grad: which gradients that backward computes (see :func:`plan`).

    Returns:
        ``d - 1`` full plans (one for ``d = 1``) and ``2 * 2^(d-1)`` sweeps, each with its estimated cost;
        with ``requires_grad`` each twice, keeping for backward what it needs (W, the step inputs) or
        recomputing it.

    Raises:
        ShapeError: malformed cores. TypeError: not a TT-matrix. ValueError: training with neither
            ``input_requires_grad`` nor ``cores_require_grad``.

    Complexity:
        ``O(2^d d)``: meant for tests and inspection, not the hot path.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
        >>> best = min(tt.contraction.enumerate_plans(w, 64), key=lambda p: p.est_seconds)
        >>> y = tt.contraction.linear(torch.randn(64, 28), w, strategy=best)
    """
    cores = _checks.cores_of(weight, "enumerate_plans")
    batch_size = _checks.as_batch_size(batch_size, "enumerate_plans")
    _checks.check_flag(requires_grad, "enumerate_plans", "requires_grad")
    need = _checks.grad_need(input_requires_grad, cores_require_grad, requires_grad, "enumerate_plans")
    dims = _checks.dims_of(cores)
    d = len(cores)
    progs = _search.full_programs(d, requires_grad)
    for mask in range(2 ** (d - 1)):
        cuts = [0] + [k + 1 for k in range(d - 1) if mask >> k & 1] + [d]
        groups = tuple(zip(cuts[:-1], cuts[1:], strict=True))
        progs += [("sweep", "rtl", groups), ("sweep", "ltr", groups)]
        if requires_grad:
            progs += [("resweep", "rtl", groups), ("resweep", "ltr", groups)]
    c0 = cores[0]
    item, kind = c0.element_size(), c0.device.type
    return [_plan.make_plan(dims, p, batch_size, item, kind, requires_grad, need=need) for p in progs]


def flop_floor(weight: TensorTrain | Sequence[torch.Tensor], batch_size: int) -> int:
    """The fewest FLOPs with which any order of pairwise contractions computes ``x @ W^T`` from ``x`` and the cores.

    A lower bound for every plan's ``flops_forward`` (the planner's sweeps, groupings and full plans are such
    orders; merges counted, as without a layer's cache), found by exhaustive search, so it says how far a plan
    is from the best order there is, and whether any order beats the dense product's ``2 B M N``.

    Args:
        weight: TT-matrix ``W`` (``M x N``) or its cores.
        batch_size: number of rows of ``x``.

    Returns:
        FLOPs (a multiply-add counts 2).

    Raises:
        ShapeError: malformed cores. TypeError: not a TT-matrix, a batch size that is not an int. ValueError: a
            negative batch size.

    Complexity:
        ``O(3^(d+1))`` set operations (a dynamic programme over subsets of the ``d + 1`` operands).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.random_matrix([[5, 5, 5, 5], [4, 7, 4, 7]], tt_rank=16)  # 625 x 784
        >>> round(tt.contraction.flop_floor(w, 64) / (2 * 64 * 625 * 784), 3)  # no order beats dense by FLOPs
        1.223
    """
    cores = _checks.cores_of(weight, "flop_floor")
    batch_size = _checks.as_batch_size(batch_size, "flop_floor")
    return _search.order_floor(_checks.dims_of(cores), batch_size)
