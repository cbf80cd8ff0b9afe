"""Cost-planned contraction of a TT-matrix with a dense batch: the hot path of every TT layer.

For ``y = x @ W^T`` with ``W`` an ``M x N`` TT-matrix (``nn.Linear``'s layout: ``M`` outputs, ``N`` inputs) there
are many ways to contract, and the best one depends on the batch size and the ranks. The planner enumerates

* ``full``: build ``W`` cheaply (merge the two halves of the train, then one GEMM, batched over pairs of row
  indices for small ranks so that it lands in ``W``'s layout, else followed by one permute), then one dense
  GEMM; in training a custom autograd function either keeps ``W`` or rebuilds it in backward (less memory), as
  the cost model prefers, and derives the halves' gradients without permuting ``dW``;
* sweeps right-to-left (``rtl``) or left-to-right (``ltr``) over *groups* of consecutive cores, each group merged
  into one super-core first; the best grouping for each direction is a dynamic programme over split points
  (core-by-core sweeps, the order t3f and most peers use, are one of its candidates),

prices each with a cost model (FLOPs, memory traffic, a per-kernel overhead; for training also backward and the
activations kept for it), and runs the cheapest (with ``strategy="tune"``, the fastest of the cheapest few as timed
on this machine, once per plan-cache key). Plans are cached per (core shapes, batch-size bucket, dtype,
device type, grad mode, strategy); planning itself is plain Python on shapes, so it traces under
``torch.compile(fullgraph=True)``.

This package's ``__init__`` is the public namespace and checks the operands. Behind it, its private modules in
data-flow order: ``machine`` (each device's constants and the CPU's measured thresholds), ``cost`` (the cost model,
plain Python on shapes), ``search`` (choosing the cheapest plan), the executors (``sweeps``: merged cores, the
sweeps' steps and the inference sweep; ``full_plan``: the full plan and its autograd function;
``training_sweep``: the training sweep's autograd function), ``plans`` (:class:`ContractionPlan`: a program and
its estimated costs), ``checks`` (the planner's operand checks), ``plan_cache`` (the program each call runs,
chosen once per cache key), ``inspection`` (:func:`plan`, :func:`enumerate_plans`, :func:`flop_floor`),
``layer_cache`` (what layers keep between inference calls) and ``runner`` (running a plan, and timing the
candidates for ``strategy="tune"``); each is ``tensortrain.contraction.<name>``.

Symbols: ``d`` cores; core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the flattened batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._transforms import autocast_casts, grad_recorded, traced_unflatten, transforms_active
from ..errors import ShapeError
from ..operands import check_strided
from ..tensor_train import TensorTrain
from . import cost as _cost
from . import machine as _machine
from .checks import check_max_saved, check_strategy, core_copy_bytes, cores_of, dims_of
from .inspection import enumerate_plans, flop_floor, plan
from .plan_cache import choose_program, clear_plan_cache, plan_cache_size
from .plans import STRATEGIES, ContractionPlan, Strategy
from .runner import run

__all__ = [
    "ContractionPlan",
    "Strategy",
    "STRATEGIES",
    "plan",
    "enumerate_plans",
    "flop_floor",
    "linear",
    "tt_dense_matmul",
    "dense_tt_matmul",
    "clear_plan_cache",
    "plan_cache_size",
]

_prod = _cost.prod


# ---------------------------------------------------------------------------------------------- public API
def linear(
    x: torch.Tensor,
    weight: TensorTrain | Sequence[torch.Tensor],
    bias: torch.Tensor | None = None,
    *,
    strategy: Strategy | ContractionPlan = "auto",
    max_saved_bytes: int | None = None,
) -> torch.Tensor:
    """``x @ W^T + bias`` for a TT-matrix ``W`` (``M x N``, ``nn.Linear.weight``'s layout), cost-planned.

    Args:
        x: dense input ``(..., N)``.
        weight: TT-matrix ``W`` or its cores ``(r_k, m_k, n_k, r_{k+1})``.
        bias: optional ``(M,)``.
        strategy: ``"auto"`` (the cost model's cheapest), ``"tune"``, a forced strategy from
            :data:`STRATEGIES`, or a :class:`ContractionPlan` (e.g. one from :func:`enumerate_plans`).
            ``"tune"`` times the candidates ``"auto"`` weighs (those estimated within 3x of the cheapest) on
            random operands of this call's shapes, the first time each plan-cache key is seen, and keeps the
            fastest (as ``torch.backends.cudnn.benchmark``): that first call takes a few times longer (3 to 11
            forward, or forward and backward, calls per candidate: a warm-up, then up to five rounds of two;
            at most about a second of timed rounds), and the choice may differ between runs and machines
            (every plan gives the same result up to rounding). Under ``torch.compile``, ``torch.func`` and
            tracing it is ``"auto"``. Training with ``max_saved_bytes`` keys plans by the exact batch size:
            batch sizes that vary from step to step (variable sequence lengths) are timed once each.
        max_saved_bytes: when training, take the fastest plan that keeps at most this many bytes of
            activations for backward (see :func:`plan`); None: the fastest. A forced
            :class:`ContractionPlan` runs as it is.

    Returns:
        ``(..., M)``, differentiable in ``x``, the cores and ``bias``.

    Raises:
        ShapeError: ``x.shape[-1] != N``, dtype or device mismatch, or a plan for other shapes.
        ValueError: unknown strategy, negative ``max_saved_bytes``. TypeError: ``weight`` is not a TT-matrix,
            ``max_saved_bytes`` is not an int.

    Shape:
        x ``(..., N)`` -> ``(..., M)``.

    Complexity:
        The chosen plan's ``flops_forward`` (see :func:`plan`); never worse than the cost model's estimate of
        building ``W`` and one ``2 B M N`` GEMM.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[5, 5], [4, 7]], tt_rank=4)  # 25 x 28
        >>> tt.contraction.linear(torch.randn(64, 28), w).shape
        torch.Size([64, 25])
    """
    cores = cores_of(weight, "linear")
    if isinstance(strategy, ContractionPlan) or strategy not in STRATEGIES:
        check_strategy(strategy, dims_of(cores), "linear")
    max_saved = check_max_saved(max_saved_bytes, "linear")
    return _linear(x, cores, bias, strategy, "linear", max_saved)


def _linear(
    x: torch.Tensor,
    cores: tuple[torch.Tensor, ...],
    bias: torch.Tensor | None,
    strategy: Strategy | ContractionPlan,
    fn: str,
    max_saved: int | None = None,
) -> torch.Tensor:
    c0 = cores[0]
    n = _prod([int(c.shape[2]) for c in cores])
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != n:
        raise ShapeError(
            f"{fn}: x has shape {tuple(x.shape)} but the TT-matrix has {n} columns "
            f"(col dims {tuple(int(c.shape[2]) for c in cores)}); x must be (..., {n})"
        )
    check_operand(fn, "x", x, c0)
    if bias is not None:
        check_bias(fn, bias, _prod([int(c.shape[1]) for c in cores]), c0)
    return apply_unchecked(x, cores, bias, n, strategy, max_saved=max_saved)


def check_operand(fn: str, name: str, t: torch.Tensor, c0: torch.Tensor) -> None:
    """``t`` is dense (:func:`check_strided`) and has the cores' dtype and device (under autocast the dtypes
    autocast casts may differ, as for ``F.linear``: the products cast both operands)."""
    check_strided(fn, name, t)
    # (float64 autocast leaves alone, so F.linear fails on a float64 operand beside float32 as here)
    same = t.dtype == c0.dtype or autocast_casts(t, c0)
    if not same or t.device != c0.device:
        to = ", ".join(
            ([f"'{c0.device}'"] if t.device != c0.device else []) + ([str(c0.dtype)] if not same else [])
        )
        hint = (
            f"a real TT-matrix cannot take complex values: make its cores {t.dtype} (a layer: dtype={t.dtype})"
            if t.is_complex() and not c0.is_complex()
            else f"convert one of them, e.g. {name}.to({to})"
        )
        raise ShapeError(
            f"{fn}: {name} has dtype {t.dtype} on {t.device} but the TT-matrix has dtype {c0.dtype} on "
            f"{c0.device}; {hint}"
        )


def check_bias(fn: str, bias: Any, m: int, c0: torch.Tensor) -> None:
    """A bias of shape ``(M,)`` with the cores' dtype and device: every plan must see the same bias (sweeps would
    cast another dtype silently, the full plan's ``addmm`` fail)."""
    if not isinstance(bias, torch.Tensor):  # (as F.linear: a TypeError, not a shape problem)
        raise TypeError(f"{fn}: bias must be a Tensor of shape ({m},), got {type(bias).__name__}")
    if tuple(bias.shape) != (m,):
        raise ShapeError(f"{fn}: bias must have shape ({m},), got {tuple(bias.shape)}")
    check_operand(fn, "bias", bias, c0)


def apply_unchecked(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    n: int,
    strategy: Strategy | ContractionPlan = "auto",
    cache: dict | None = None,
    max_saved: int | None = None,
) -> torch.Tensor:
    """:func:`linear` for operands already validated (``x (..., n)``, matching dtype and device, valid cores).

    For layers that check their operands once (``TTLinear.forward``): at batch 1 the checks cost about as much
    as the contraction. Not exported: a wrong operand here fails deep inside a reshape. ``cache``: a layer's
    dict in which inference sweeps keep their merged super-cores between calls (see :func:`cached_supers`);
    ``max_saved``: a validated ``max_saved_bytes``.
    """
    lead = x.shape[:-1]
    tracing = torch.jit.is_tracing()
    # (a reshape dispatch is ~2 us of a batch-1 call; a jit trace records one always: see traced_unflatten)
    x2d = x if x.dim() == 2 and not tracing else x.reshape(-1, n)
    # which gradients backward computes (a first layer's input needs none, a frozen layer's cores none)
    need = (x.requires_grad, any(c.requires_grad for c in cores)) if grad_recorded() else (False, False)
    grad = need[0] or need[1]
    if tracing:  # (dynamo traces this wrapper, not torch._C._is_tracing)
        # one graph whatever the grad mode (a differentiable one): torch.jit.trace checks its trace by tracing
        # again under no_grad, and the grad mode picks the plan (and the clones of inference cores below)
        grad, need = True, (True, True)
    if (
        grad
        and not torch.compiler.is_compiling()  # (dynamo refuses the inference-tensor query)
        and any(c.is_inference() for c in cores)
    ):
        # cores created under inference_mode (a layer built there): views of them drop out of autograd (sweeps
        # start with reshapes: no gradients, silently) and products may not save them (the full plan raised); a
        # clone is an ordinary tensor, as TTEmbedding's lookups use
        cores = [c.clone() if c.is_inference() and c.requires_grad else c for c in cores]
    if grad and max_saved is not None and not transforms_active():
        # (not while tracing: a traced batch is a symbol, and the compiler's partitioner decides what is kept)
        copies = core_copy_bytes(cores)
        if (x2d is not x and x2d.data_ptr() != x.data_ptr()) or (
            not x2d.is_contiguous() and x2d.shape[0] < _machine.SWEEP_FUNCTION_MIN_BATCH
        ):
            # leading dims that do not flatten into a view (tt_dense_matmul's transposed (..., N, P) operand), or
            # a strided x at a batch whose sweep reshapes it in autograd's own products: the copy is what
            # training keeps in place of x
            copies += x2d.numel() * x2d.element_size()
        max_saved = max(0, max_saved - copies)
    plain = not grad and not transforms_active()  # inference outside tracing and torch.func: caches, in place
    cached = cache is not None and plain
    prog = choose_program(cores, x2d.shape[0], grad, strategy, cached, max_saved, need)
    y = run(prog, x2d, cores, bias, grad, cache if cached else None, plain and not torch.is_grad_enabled())
    if tracing:
        return traced_unflatten(y, x.narrow(-1, 0, 1))
    return y if len(lead) == 1 else y.reshape(*lead, y.shape[-1])


def tt_dense_matmul(
    weight: TensorTrain | Sequence[torch.Tensor],
    b: torch.Tensor,
    *,
    strategy: Strategy | ContractionPlan = "auto",
    max_saved_bytes: int | None = None,
) -> torch.Tensor:
    """``W @ b`` for a TT-matrix ``W`` (``M x N``) and a dense ``b`` of shape ``(..., N, P)``, cost-planned.

    Args:
        weight: TT-matrix or its cores.
        b: dense ``(N, P)`` or ``(..., N, P)``.
        strategy: as in :func:`linear` (the plan is for batch ``... * P``).
        max_saved_bytes: as in :func:`linear`.

    Returns:
        ``(..., M, P)``.

    Raises:
        ShapeError: ``b`` is not ``(..., N, P)`` or dtype/device mismatch. ValueError: unknown strategy,
            negative ``max_saved_bytes``.

    Shape:
        b ``(..., N, P)`` -> ``(..., M, P)``.

    Complexity:
        As :func:`linear` with batch ``prod(...) * P``.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[2, 3], [2, 2]], tt_rank=2)  # 6 x 4
        >>> tt.contraction.tt_dense_matmul(w, torch.randn(4, 5)).shape
        torch.Size([6, 5])
    """
    cores = cores_of(weight, "tt_dense_matmul")
    check_strategy(strategy, dims_of(cores), "tt_dense_matmul")
    max_saved = check_max_saved(max_saved_bytes, "tt_dense_matmul")
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"tt_dense_matmul: b must be a torch.Tensor, got {type(b).__name__}")
    if b.dim() < 2:
        raise ShapeError(f"tt_dense_matmul: b must be a dense (..., N, P) tensor, got shape {tuple(b.shape)}")
    n = _prod([int(c.shape[2]) for c in cores])
    if b.shape[-2] != n:
        raise ShapeError(
            f"tt_dense_matmul: b has shape {tuple(b.shape)}, {b.shape[-2]} rows, but the TT-matrix has {n} "
            f"columns (col dims {tuple(int(c.shape[2]) for c in cores)})"
        )
    check_operand("tt_dense_matmul", "b", b, cores[0])
    y = _linear(b.transpose(-1, -2), cores, None, strategy, "tt_dense_matmul", max_saved)
    # row-major like torch.matmul's result (the transposed view made .view() fail): one copy of the output
    return y.transpose(-1, -2).contiguous()


def dense_tt_matmul(
    a: torch.Tensor,
    weight: TensorTrain | Sequence[torch.Tensor],
    *,
    strategy: Strategy | ContractionPlan = "auto",
    max_saved_bytes: int | None = None,
) -> torch.Tensor:
    """``a @ W`` for a dense ``a`` of shape ``(..., P, M)`` and a TT-matrix ``W`` (``M x N``), cost-planned.

    Args:
        a: dense ``(..., M)`` (any number of leading dims).
        weight: TT-matrix or its cores.
        strategy: as in :func:`linear`, for the transposed TT-matrix ``W^T`` (plans list its cores' modes
            swapped).
        max_saved_bytes: as in :func:`linear`.

    Returns:
        ``(..., N)``.

    Raises:
        ShapeError: ``a.shape[-1] != M`` or dtype/device mismatch. ValueError: unknown strategy, negative
            ``max_saved_bytes``.

    Shape:
        a ``(..., M)`` -> ``(..., N)``.

    Complexity:
        As :func:`linear` with the roles of ``M`` and ``N`` swapped.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[2, 3], [2, 2]], tt_rank=2)  # 6 x 4
        >>> tt.contraction.dense_tt_matmul(torch.randn(5, 6), w).shape
        torch.Size([5, 4])
    """
    cores = tuple(c.permute(0, 2, 1, 3) for c in cores_of(weight, "dense_tt_matmul"))
    check_strategy(strategy, dims_of(cores), "dense_tt_matmul")
    max_saved = check_max_saved(max_saved_bytes, "dense_tt_matmul")
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"dense_tt_matmul: a must be a torch.Tensor, got {type(a).__name__}")
    m = _prod([int(c.shape[2]) for c in cores])  # (W's rows: the permuted cores' columns)
    if a.dim() == 0 or a.shape[-1] != m:
        raise ShapeError(
            f"dense_tt_matmul: a has shape {tuple(a.shape)} but the TT-matrix has {m} rows (row dims "
            f"{tuple(int(c.shape[2]) for c in cores)}); a must be (..., {m})"
        )
    check_operand("dense_tt_matmul", "a", a, cores[0])
    # (the bound counts the copies of the permuted cores: see apply_unchecked)
    return _linear(a, cores, None, strategy, "dense_tt_matmul", max_saved)
