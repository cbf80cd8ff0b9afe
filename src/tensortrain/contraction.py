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
activations kept for it), and runs the cheapest. Plans are cached per (core shapes, batch-size bucket, dtype,
device type, grad mode, strategy); planning itself is plain Python on shapes, so it traces under
``torch.compile(fullgraph=True)``.

Symbols: ``d`` cores; core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the flattened batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch

from . import contraction_cost as _cost
from . import contraction_exec as _exec
from ._transforms import transforms_active
from .errors import ShapeError
from .shapes import as_int
from .tensor_train import TensorTrain

__all__ = [
    "ContractionPlan",
    "Strategy",
    "STRATEGIES",
    "plan",
    "enumerate_plans",
    "linear",
    "tt_dense_matmul",
    "dense_tt_matmul",
    "clear_plan_cache",
    "plan_cache_size",
]

Strategy = Literal["auto", "full", "grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Groups = _cost.Groups
Program = _cost.Program
Dims = _cost.Dims
_prod = _cost.prod


@dataclasses.dataclass(frozen=True)
class ContractionPlan:
    """A chosen (or candidate) way to compute ``x @ W^T`` and its estimated cost.

    Attributes:
        kind: ``"full"`` (build W, one GEMM) or ``"sweep"`` (contract merged core groups one at a time).
        direction: ``"rtl"`` or ``"ltr"`` for a sweep; for ``full``, ``"keep"`` (backward keeps the dense W) or
            ``"recompute"`` (backward rebuilds W from the halves: less memory, one more build).
        groups: core ranges ``(start, stop)`` in core order; for ``full`` the two halves.
        row_dims, col_dims, tt_ranks: the TT-matrix's modes and ranks.
        batch_size: the batch size the costs are computed for.
        requires_grad: whether backward is priced in.
        flops_forward, flops_backward: estimated FLOPs (backward 0 when not training).
        bytes_forward: estimated memory traffic of the forward pass.
        saved_bytes: activations the plan keeps for backward (0 when not training).
        est_seconds: the cost model's time for forward (+ backward when training).
    """

    kind: Literal["full", "sweep"]
    direction: Literal["rtl", "ltr", "keep", "recompute"] | None
    groups: Groups
    row_dims: tuple[int, ...]
    col_dims: tuple[int, ...]
    tt_ranks: tuple[int, ...]
    batch_size: int
    requires_grad: bool
    flops_forward: int
    flops_backward: int
    bytes_forward: int
    saved_bytes: int
    est_seconds: float

    @property
    def dense_flops(self) -> int:
        """FLOPs of the dense product ``x @ W^T`` (``2 B M N``), for comparison."""
        return 2 * self.batch_size * _prod(self.row_dims) * _prod(self.col_dims)

    @property
    def program(self) -> Program:
        """The part of the plan the executors need (batch-size independent)."""
        return (self.kind, self.direction, self.groups)

    def describe(self) -> str:
        """Short name, e.g. ``"sweep rtl [0:2][2:4]"`` or ``"full (W from halves split at core 2, one GEMM)"``."""
        if self.kind == "full":
            how = ", W kept for backward" if self.direction == "keep" else ""
            if self.requires_grad and self.direction == "recompute":
                how = ", W rebuilt in backward"
            return f"full (W from halves split at core {self.groups[0][1]}, one GEMM{how})"
        grp = "".join(f"[{i}:{j}]" for i, j in self.groups)
        return f"sweep {self.direction} {grp}"

    def __str__(self) -> str:
        m, n = _prod(self.row_dims), _prod(self.col_dims)
        dense = f"the dense product's {self.dense_flops / 1e9:.3g} GFLOP"
        if self.dense_flops == 0:  # batch 0: no ratio to speak of
            vs = f"against {dense}"
        else:
            ratio = self.dense_flops / max(self.flops_forward, 1)
            vs = (f"{ratio:.2f}x fewer" if ratio >= 1 else f"{1 / ratio:.2f}x more") + f" than {dense}"
        s = (
            f"ContractionPlan: {self.describe()} for a {m}x{n} TT-matrix {self.row_dims}x{self.col_dims}, "
            f"ranks {self.tt_ranks}, batch {self.batch_size}: forward {self.flops_forward / 1e9:.3g} GFLOP ({vs})"
        )
        if self.requires_grad:
            s += (
                f", backward {self.flops_backward / 1e9:.3g} GFLOP, "
                f"activations kept {self.saved_bytes / 2**20:.3g} MiB"
            )
        return s + f", est. {self.est_seconds * 1e3:.3g} ms"


# ------------------------------------------------------------------------------------------ validation, cache
_PLAN_CACHE: dict[tuple, Program] = {}
_CHUNK_CACHE: dict[tuple, tuple[int, int]] = {}  # inference sweeps' chunking, per (core shapes, groups, ...)
# Under torch.compile the batch size may be a symbol (dynamic shapes) and dynamo cannot tell us which: reading
# its value would specialise the graph, so compiled code is planned for this batch size (every plan is exact,
# only speed differs).
_SYMBOLIC_BATCH = 256


def clear_plan_cache() -> None:
    """Forget every cached plan (e.g. after changing threads or hardware).

    Example:
        >>> import torch, tensortrain as tt
        >>> tt.contraction.clear_plan_cache(); tt.contraction.plan_cache_size()
        0
    """
    _PLAN_CACHE.clear()
    _CHUNK_CACHE.clear()


def plan_cache_size() -> int:
    """The number of cached plans: one per (core shapes, strategy, batch bucket, dtype, device type, grad mode).

    Example:
        >>> import torch, tensortrain as tt
        >>> tt.contraction.plan_cache_size() >= 0
        True
    """
    return len(_PLAN_CACHE)


def _cores_of(weight: TensorTrain | Sequence[torch.Tensor], fn: str) -> tuple[torch.Tensor, ...]:
    if isinstance(weight, TensorTrain):
        if not weight.is_tt_matrix():
            raise ShapeError(f"{fn}: expects a TT-matrix, got a TT-tensor of shape {tuple(weight.shape)}")
        return weight.tt_cores
    if isinstance(weight, torch.Tensor) or not isinstance(weight, Sequence):
        raise TypeError(
            f"{fn}: expects a TensorTrain or a sequence of TT-matrix cores, got {type(weight).__name__}"
        )
    cores = tuple(weight)
    if not cores or any(not isinstance(c, torch.Tensor) or c.dim() != 4 for c in cores):
        raise ShapeError(
            f"{fn}: TT-matrix cores must be 4-dim tensors (r, m, n, r'), got shapes "
            f"{[tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__ for c in cores]}"
        )
    ranks_ok = cores[0].shape[0] == 1 and cores[-1].shape[-1] == 1
    if not ranks_ok or any(a.shape[-1] != b.shape[0] for a, b in zip(cores, cores[1:], strict=False)):
        raise ShapeError(f"{fn}: TT-ranks do not chain: core shapes {[tuple(c.shape) for c in cores]}")
    try:  # TensorTrain's checks too: one dtype and device, floating or complex, no empty modes
        TensorTrain(cores)
    except (ShapeError, TypeError) as err:
        raise type(err)(f"{fn}: {err}") from None
    return cores


def _dims(cores: Sequence[torch.Tensor]) -> Dims:
    rows = tuple(int(c.shape[1]) for c in cores)
    cols = tuple(int(c.shape[2]) for c in cores)
    ranks = tuple(int(c.shape[0]) for c in cores) + (1,)
    return rows, cols, ranks


def _check_strategy(strategy: object, dims: Dims, fn: str) -> None:
    if isinstance(strategy, ContractionPlan):
        have = (strategy.row_dims, strategy.col_dims, strategy.tt_ranks)
        if have != dims:
            raise ShapeError(
                f"{fn}: the forced plan is for row dims {have[0]}, col dims {have[1]}, ranks {have[2]}, "
                f"but the TT-matrix has row dims {dims[0]}, col dims {dims[1]}, ranks {dims[2]}"
            )
    elif strategy not in STRATEGIES:
        raise ValueError(f"{fn}: unknown strategy {strategy!r}; valid strategies are {', '.join(STRATEGIES)}")


def _bucket(batch: int | torch.SymInt) -> int:
    """Batch sizes are planned by power-of-two bucket, so a varying last batch does not replan."""
    return 1 << (int(batch) - 1).bit_length() if batch > 1 else 1


def _program(
    cores: Sequence[torch.Tensor],
    batch: int | torch.SymInt,
    grad: bool,
    strategy: Strategy | ContractionPlan,
    cached: bool = False,
) -> Program:
    if isinstance(strategy, ContractionPlan):
        return strategy.program
    compiling = torch.compiler.is_compiling()
    if compiling:  # the batch may be a symbol (dynamic shapes): reading it would specialise the graph
        batch = _SYMBOLIC_BATCH
    c0 = cores[0]
    bucket = _bucket(batch)
    if compiling:  # plain Python on shapes: traced and constant-folded, no cache writes
        return _cost.choose(_dims(cores), strategy, bucket, c0.element_size(), c0.device.type, grad)
    # the key uses the torch.Size objects as they are: this lookup is on every layer call
    key = (tuple([c.shape for c in cores]), strategy, bucket, c0.dtype, c0.device.type, grad, cached)
    prog = _PLAN_CACHE.get(key)
    if prog is None:
        dims = _dims(cores)
        prog = _PLAN_CACHE[key] = _cost.choose(
            dims, strategy, bucket, c0.element_size(), c0.device.type, grad, cached
        )
    return prog


def _make_plan(
    dims: Dims, prog: Program, batch: int, item: int, device_type: str, grad: bool, cached: bool = False
) -> ContractionPlan:
    m = _cost.machine(device_type, item)
    f, bf, t, saved, est = _cost.estimate(dims, prog, batch, item, grad, m, cached)
    kind, direction, groups = prog
    return ContractionPlan(
        kind=kind,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        groups=groups,
        row_dims=dims[0],
        col_dims=dims[1],
        tt_ranks=dims[2],
        batch_size=int(batch),
        requires_grad=grad,
        flops_forward=f,
        flops_backward=bf,
        bytes_forward=t,
        saved_bytes=saved,
        est_seconds=est,
    )


# ---------------------------------------------------------------------------------------------- public API
def _check_flag(value: Any, fn: str, name: str) -> None:
    if not isinstance(value, bool):  # ("no" is truthy: it priced a training plan)
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")


def _batch_size(batch_size: Any, fn: str) -> int:
    k = as_int(batch_size)
    if k is None or k < 0:  # (2.5 rows or -3 rows would be priced as if they were meant)
        raise ValueError(f"{fn}: batch_size must be an int >= 0, got {batch_size!r}")
    return k


def plan(
    weight: TensorTrain | Sequence[torch.Tensor],
    batch_size: int,
    *,
    requires_grad: bool | None = None,
    strategy: Strategy = "auto",
    cached_merges: bool = False,
) -> ContractionPlan:
    """The plan :func:`linear` uses for ``x @ W^T`` with ``batch_size`` rows, and its estimated cost.

    Args:
        weight: TT-matrix ``W`` (``M x N``) or its cores ``(r_k, m_k, n_k, r_{k+1})``.
        batch_size: number of rows of ``x`` (all leading dims flattened).
        requires_grad: price backward too; default: whether any core requires grad and grad mode is on.
        strategy: ``"auto"`` (cheapest) or one of :data:`STRATEGIES` to see what a forced strategy would do.
        cached_merges: price sweeps without merging their core groups, as for a layer that keeps the merged
            groups between inference calls (``TTLinear`` without gradients); ignored when training.

    Returns:
        A frozen :class:`ContractionPlan`; ``str(plan)`` reads like
        ``ContractionPlan: sweep rtl [0:2][2:4] for a 625x784 TT-matrix ...: forward 0.304 GFLOP (3.30x fewer
        than the dense product's 1 GFLOP), est. ...``.

    Raises:
        ValueError: unknown strategy, a batch size that is not an int >= 0. ShapeError: malformed cores.
        TypeError: not a TT-matrix.

    Complexity:
        ``O(d^2)`` cost evaluations for the grouping programme, once per cache key.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
        >>> print(tt.contraction.plan(w, 8).describe())  # doctest: +SKIP
        full (W from halves split at core 1, one GEMM)
    """
    cores = _cores_of(weight, "plan")
    batch_size = _batch_size(batch_size, "plan")
    dims = _dims(cores)
    _check_strategy(strategy, dims, "plan")
    if requires_grad is None:
        requires_grad = torch.is_grad_enabled() and any(c.requires_grad for c in cores)
    _check_flag(requires_grad, "plan", "requires_grad")
    cached = cached_merges and not requires_grad
    prog = _program(cores, batch_size, requires_grad, strategy, cached)
    c0 = cores[0]
    return _make_plan(dims, prog, batch_size, c0.element_size(), c0.device.type, requires_grad, cached)


def enumerate_plans(
    weight: TensorTrain | Sequence[torch.Tensor], batch_size: int, *, requires_grad: bool = False
) -> list[ContractionPlan]:
    """Every plan the planner knows for this TT-matrix: full (each split) and both sweeps for every grouping.

    Args:
        weight: TT-matrix ``W`` or its cores.
        batch_size: number of rows of ``x``.
        requires_grad: price backward too.

    Returns:
        ``d - 1`` full plans (one for ``d = 1``; twice as many with ``requires_grad``: W kept or rebuilt in
        backward) and ``2 * 2^(d-1)`` sweeps, each with its estimated cost.

    Raises:
        ShapeError: malformed cores. TypeError: not a TT-matrix.

    Complexity:
        ``O(2^d d)``: meant for tests and inspection, not the hot path.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
        >>> best = min(tt.contraction.enumerate_plans(w, 64), key=lambda p: p.est_seconds)
        >>> y = tt.contraction.linear(torch.randn(64, 28), w, strategy=best)
    """
    cores = _cores_of(weight, "enumerate_plans")
    batch_size = _batch_size(batch_size, "enumerate_plans")
    _check_flag(requires_grad, "enumerate_plans", "requires_grad")
    dims = _dims(cores)
    d = len(cores)
    progs = _cost.full_programs(d, requires_grad)
    for mask in range(2 ** (d - 1)):
        cuts = [0] + [k + 1 for k in range(d - 1) if mask >> k & 1] + [d]
        groups = tuple(zip(cuts[:-1], cuts[1:], strict=True))
        progs += [("sweep", "rtl", groups), ("sweep", "ltr", groups)]
    c0 = cores[0]
    return [_make_plan(dims, p, batch_size, c0.element_size(), c0.device.type, requires_grad) for p in progs]


def _run(
    prog: Program,
    x2d: torch.Tensor,
    cores: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    grad: bool,
    cache: dict | None = None,
) -> torch.Tensor:
    """``x2d @ W^T + bias`` by ``prog``: the full plan fuses the bias into its GEMM, sweeps add it after."""
    kind, direction, groups = prog
    if kind == "full":
        split = groups[0][1]
        parts = None if cache is None else _cached_halves(cache, cores, split)
        return _exec.full_linear(x2d, cores, split, direction == "keep", bias, parts)
    y = _sweep(x2d, cores, groups, str(direction), grad, cache)
    # under autocast y is in the lower precision, as nn.Linear's output is: add the bias in that dtype
    if bias is None:
        return y
    return y + (bias if bias.dtype == y.dtype else bias.to(y.dtype))


def _sweep(
    x2d: torch.Tensor,
    cores: Sequence[torch.Tensor],
    groups: Groups,
    direction: str,
    grad: bool,
    cache: dict | None,
) -> torch.Tensor:
    chunk = None
    b = x2d.shape[0]
    eager = not torch.compiler.is_compiling()
    if not grad and type(b) is int and b > 1 and eager:
        # inference: large batches run in chunks of rows so that the sweep's states stay in cache (training
        # keeps every state for backward anyway, and compiled graphs keep their batch symbolic)
        key = (tuple(c.shape for c in cores), groups, direction, cores[0].element_size())
        rows = _CHUNK_CACHE.get(key)
        if rows is None:
            rows = _CHUNK_CACHE[key] = _cost.chunking(_dims(cores), groups, direction, key[-1])
        chunk = rows[0] if b > rows[1] else None  # (rows per chunk, the largest batch that runs whole)
    if grad and eager and type(b) is int and b >= _cost.SWEEP_FUNCTION_MIN_BATCH:
        # training: a hand-written backward without matmul's folding copies (not at tiny batches, where the
        # Function's own overhead is the larger cost). Eager only: under dynamo a SymInt passes ``type(b) is int``
        # and the comparison would guard the batch (a second graph, a failed strict export)
        return _exec.sweep_trained(x2d, _exec.supers_of(cores, groups, direction), direction)
    if cache is None:
        return _exec.sweep(x2d, _exec.supers_of(cores, groups, direction), direction, chunk)
    return _exec.sweep(x2d, _cached_supers(cache, cores, groups, direction), direction, chunk)


# Optimizer steps seen so far (any optimizer, by a global post-step hook registered on the first cached call): the
# fused optimizers (``fused=True``) write parameters in place without bumping their version counters.
_optimizer_steps = [0]
_step_hook: list[Any] = []


def _count_step(*_: Any) -> None:
    _optimizer_steps[0] += 1


def _steps_seen() -> int:
    if not _step_hook:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook.append(register_optimizer_step_post_hook(_count_step))
    return _optimizer_steps[0]


def _cached(cache: dict, key: tuple, cores: Sequence[torch.Tensor], make: Callable[[], Any]) -> Any:
    """``make()`` (run without grad), kept in a layer's ``cache`` under ``key`` until a core changes.

    A core counts as unchanged while it is the same tensor object with the same storage address, shape and
    version counter (every in-place op bumps the counter: optimizer steps, ``load_state_dict``, ``nn.init``)
    and no optimizer has stepped since (fused optimizers write in place without bumping version counters).
    The entry holds the cores' old storages, so a freed address cannot come back as a false match. Writes
    through ``.data`` bypass the version counter, as they bypass autograd's own checks: after those, call the
    layer's ``clear_cache()``. Cores made under ``torch.inference_mode`` have no version counter to watch: for
    them ``make()`` runs on every call.
    """
    try:
        # id(): the entry holds the cores, so their ids cannot be reused while it lives (this check runs on every
        # inference call: one list of tuples, ~3 us for 4 cores)
        stamp = [_steps_seen(), *((id(c), c.data_ptr(), c._version, c.shape) for c in cores)]
    except RuntimeError:  # inference tensors track no version counter
        return make()
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        # kept in the cores' own precision: merged under autocast, a cached value would stay in the lower
        # precision after autocast ends (the ops that use it cast it again while autocast is on)
        with torch.no_grad(), _exec.full_precision(cores[0].device.type):
            value = make()
        # detach() shares the storage (keeping it alive) without autograd history
        hit = cache[key] = (stamp, tuple(cores), value, tuple(c.detach() for c in cores))
    return hit[2]


def _cached_supers(cache: dict, cores: Sequence[torch.Tensor], groups: Groups, direction: str) -> list:
    """The sweep's super-cores, the small ones kept in a layer's cache (:func:`_cached`).

    Only groups that pass :func:`~tensortrain.contraction_cost.cacheable` are kept (at most a few times the
    size of their cores, never the dense weight); the others are merged on every call.
    """

    def make() -> list:  # (only on a miss: the hit path is every batch-1 call's overhead)
        dims = _dims(cores)
        return [
            _exec.super_of(cores, i, j, direction) if _cost.cacheable(dims, i, j) else None for i, j in groups
        ]

    kept = _cached(cache, (groups, direction), cores, make)
    if all(k is not None for k in kept):
        return kept
    return [
        k if k is not None else _exec.super_of(cores, i, j, direction)
        for k, (i, j) in zip(kept, groups, strict=True)
    ]


def _cached_halves(cache: dict, cores: Sequence[torch.Tensor], split: int) -> tuple | None:
    """The full plan's two halves of W, kept in a layer's cache when both pass ``cacheable`` (else None)."""
    if not _cost.halves_cacheable(_dims(cores), split):
        return None
    return _cached(cache, ("halves", split), cores, lambda: _exec.halves(cores, split))


def linear(
    x: torch.Tensor,
    weight: TensorTrain | Sequence[torch.Tensor],
    bias: torch.Tensor | None = None,
    *,
    strategy: Strategy | ContractionPlan = "auto",
) -> torch.Tensor:
    """``x @ W^T + bias`` for a TT-matrix ``W`` (``M x N``, ``nn.Linear.weight``'s layout), cost-planned.

    Args:
        x: dense input ``(..., N)``.
        weight: TT-matrix ``W`` or its cores ``(r_k, m_k, n_k, r_{k+1})``.
        bias: optional ``(M,)``.
        strategy: ``"auto"`` (the cost model's cheapest), a forced strategy from :data:`STRATEGIES`, or a
            :class:`ContractionPlan` (e.g. one from :func:`enumerate_plans`).

    Returns:
        ``(..., M)``, differentiable in ``x``, the cores and ``bias``.

    Raises:
        ShapeError: ``x.shape[-1] != N``, dtype or device mismatch, or a plan for other shapes.
        ValueError: unknown strategy. TypeError: ``weight`` is not a TT-matrix.

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
    cores = _cores_of(weight, "linear")
    if isinstance(strategy, ContractionPlan) or strategy not in STRATEGIES:
        _check_strategy(strategy, _dims(cores), "linear")
    return _linear(x, cores, bias, strategy, "linear")


def _linear(
    x: torch.Tensor,
    cores: tuple[torch.Tensor, ...],
    bias: torch.Tensor | None,
    strategy: Strategy | ContractionPlan,
    fn: str,
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
    return apply_unchecked(x, cores, bias, n, strategy)


# The dtypes autocast casts to its lower precision (float64 it leaves alone, so F.linear fails on it as here)
_AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_operand(fn: str, name: str, t: torch.Tensor, c0: torch.Tensor) -> None:
    """``t`` has the cores' dtype and device (under autocast the dtypes autocast casts may differ, as for
    ``F.linear``: the products cast both operands)."""
    same = t.dtype == c0.dtype or (
        t.dtype in _AUTOCAST_DTYPES and c0.dtype in _AUTOCAST_DTYPES and _exec.autocasting(t.device.type)
    )
    if not same or t.device != c0.device:
        raise ShapeError(
            f"{fn}: {name} has dtype {t.dtype} on {t.device} but the TT-matrix has dtype {c0.dtype} on "
            f"{c0.device}; convert one of them, e.g. {name}.to({c0.dtype})"
        )


def check_bias(fn: str, bias: Any, m: int, c0: torch.Tensor) -> None:
    """A bias of shape ``(M,)`` with the cores' dtype and device: every plan must see the same bias (sweeps would
    cast another dtype silently, the full plan's ``addmm`` fail)."""
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (m,):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ShapeError(f"{fn}: bias must have shape ({m},), got {got}")
    check_operand(fn, "bias", bias, c0)


def apply_unchecked(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    n: int,
    strategy: Strategy | ContractionPlan = "auto",
    cache: dict | None = None,
) -> torch.Tensor:
    """:func:`linear` for operands already validated (``x (..., n)``, matching dtype and device, valid cores).

    For layers that check their operands once (``TTLinear.forward``): at batch 1 the checks cost about as much
    as the contraction. Not exported: a wrong operand here fails deep inside a reshape. ``cache``: a layer's
    dict in which inference sweeps keep their merged super-cores between calls (see :func:`_cached_supers`).
    """
    lead = x.shape[:-1]
    x2d = x if x.dim() == 2 else x.reshape(-1, n)  # (a reshape dispatch is ~2 us of a batch-1 call)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(c.requires_grad for c in cores))
    cached = cache is not None and not grad and not transforms_active()
    prog = _program(cores, x2d.shape[0], grad, strategy, cached)
    y = _run(prog, x2d, cores, bias, grad, cache if cached else None)
    return y if len(lead) == 1 else y.reshape(*lead, y.shape[-1])


def tt_dense_matmul(
    weight: TensorTrain | Sequence[torch.Tensor],
    b: torch.Tensor,
    *,
    strategy: Strategy | ContractionPlan = "auto",
) -> torch.Tensor:
    """``W @ b`` for a TT-matrix ``W`` (``M x N``) and a dense ``b`` of shape ``(..., N, P)``, cost-planned.

    Args:
        weight: TT-matrix or its cores.
        b: dense ``(N, P)`` or ``(..., N, P)``.
        strategy: as in :func:`linear` (the plan is for batch ``... * P``).

    Returns:
        ``(..., M, P)``.

    Raises:
        ShapeError: ``b`` is not ``(..., N, P)`` or dtype/device mismatch. ValueError: unknown strategy.

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
    cores = _cores_of(weight, "tt_dense_matmul")
    _check_strategy(strategy, _dims(cores), "tt_dense_matmul")
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
    return _linear(b.transpose(-1, -2), cores, None, strategy, "tt_dense_matmul").transpose(-1, -2)


def dense_tt_matmul(
    a: torch.Tensor,
    weight: TensorTrain | Sequence[torch.Tensor],
    *,
    strategy: Strategy | ContractionPlan = "auto",
) -> torch.Tensor:
    """``a @ W`` for a dense ``a`` of shape ``(..., P, M)`` and a TT-matrix ``W`` (``M x N``), cost-planned.

    Args:
        a: dense ``(..., M)`` (any number of leading dims).
        weight: TT-matrix or its cores.
        strategy: as in :func:`linear`, for the transposed TT-matrix ``W^T`` (plans list its cores' modes
            swapped).

    Returns:
        ``(..., N)``.

    Raises:
        ShapeError: ``a.shape[-1] != M`` or dtype/device mismatch. ValueError: unknown strategy.

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
    cores = tuple(c.permute(0, 2, 1, 3) for c in _cores_of(weight, "dense_tt_matmul"))
    _check_strategy(strategy, _dims(cores), "dense_tt_matmul")
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"dense_tt_matmul: a must be a torch.Tensor, got {type(a).__name__}")
    m = _prod([int(c.shape[2]) for c in cores])  # (W's rows: the permuted cores' columns)
    if a.dim() == 0 or a.shape[-1] != m:
        raise ShapeError(
            f"dense_tt_matmul: a has shape {tuple(a.shape)} but the TT-matrix has {m} rows (row dims "
            f"{tuple(int(c.shape[2]) for c in cores)}); a must be (..., {m})"
        )
    check_operand("dense_tt_matmul", "a", a, cores[0])
    return _linear(a, cores, None, strategy, "dense_tt_matmul")
