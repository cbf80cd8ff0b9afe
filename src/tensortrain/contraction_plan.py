"""Planning TT-matrix x dense contractions: the plans, their costs, and the plan cache.

:func:`plan` picks the cheapest way to compute ``x @ W^T`` for a batch size (the cost model is in
``contraction_cost``, the search over plans in ``contraction_search``), :func:`enumerate_plans` lists every
candidate, and :class:`ContractionPlan` describes one. Plans are cached per (core shapes, strategy, batch-size
bucket, dtype, device type, grad mode, memory bound). The public names are exported by
:mod:`tensortrain.contraction`, which also runs the plans.

Symbols: ``d`` cores; core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the flattened batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch

from . import contraction_cost as _cost
from . import contraction_machine as _machine
from . import contraction_search as _search
from ._transforms import grad_recorded, transforms_active
from .errors import ShapeError
from .shapes import as_int
from .tensor_train import TensorTrain

__all__ = [
    "ContractionPlan",
    "Strategy",
    "STRATEGIES",
    "plan",
    "enumerate_plans",
    "flop_floor",
    "clear_plan_cache",
    "plan_cache_size",
]

Strategy = Literal["auto", "tune", "full", "grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"]
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
        recompute: whether backward recomputes what it needs instead of keeping it (W for a full plan, the
            step inputs for a sweep); always False without gradients.
        input_grad, cores_grad: which gradients the priced backward computes: the input's (False for a first
            layer, whose input needs none) and the cores' (False for a frozen layer; a layer with only some
            cores frozen is priced as if every core trained). Both True without gradients.
        merges_cached: priced without merging some core groups (a sweep's) or halves (a full plan's), which a
            layer keeps between inference calls (``TTLinear.plan`` without gradients); a plan run elsewhere
            merges them, at FLOPs not counted here.
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
    recompute: bool = False
    input_grad: bool = True
    cores_grad: bool = True
    merges_cached: bool = False

    @property
    def dense_flops(self) -> int:
        """FLOPs of the dense product ``x @ W^T`` (``2 B M N``), for comparison."""
        return 2 * self.batch_size * _prod(self.row_dims) * _prod(self.col_dims)

    def _keeps_input(self) -> bool:
        """Whether backward reads the input itself (for the cores' gradients), so that whoever made it keeps it
        alive: not a copy of it (a folded first sweep step, counted in :attr:`saved_bytes`), and not without
        gradients for the cores."""
        if not (self.requires_grad and self.cores_grad):
            return False
        if self.kind != "sweep" or self.direction is None:
            return True
        dims = (self.row_dims, self.col_dims, self.tt_ranks)
        return not _cost.input_copied(dims, self.groups, self.direction, self.batch_size, self.recompute)

    @property
    def program(self) -> Program:
        """The part of the plan the executors need (batch-size independent)."""
        kind = "resweep" if self.kind == "sweep" and self.recompute else self.kind
        return (kind, self.direction, self.groups)

    def describe(self) -> str:
        """Short name, e.g. ``"sweep rtl [0:2][2:4]"`` or ``"full (W from halves split at core 2, one GEMM)"``."""
        # (what backward keeps or recomputes only where it reads it: W for the input's gradient, a sweep's step
        # inputs for the cores')
        if self.kind == "full":
            how = ""
            if self.requires_grad and self.input_grad:
                how = ", W rebuilt in backward" if self.direction == "recompute" else ", W kept for backward"
            return f"full (W from halves split at core {self.groups[0][1]}, one GEMM{how})"
        grp = "".join(f"[{i}:{j}]" for i, j in self.groups)
        return f"sweep {self.direction} {grp}" + (
            ", step inputs recomputed in backward" if self.recompute and self.cores_grad else ""
        )

    def __str__(self) -> str:
        m, n = _prod(self.row_dims), _prod(self.col_dims)
        dense = f"the dense product's {self.dense_flops / 1e9:.3g} GFLOP"
        if self.dense_flops == 0:  # batch 0: no ratio to speak of
            vs = f"against {dense}"
        else:
            ratio = self.dense_flops / max(self.flops_forward, 1)
            even = "1.00" in (f"{ratio:.2f}", f"{1 / ratio:.2f}")  # ("1.00x fewer" read as a contradiction)
            if even:
                vs = f"about as many as {dense}"
            else:
                vs = (f"{ratio:.2f}x fewer" if ratio >= 1 else f"{1 / ratio:.2f}x more") + f" than {dense}"
        if self.merges_cached:
            vs += "; the layer's cached merges not counted"
        s = (
            f"ContractionPlan: {self.describe()} for a {m}x{n} TT-matrix {self.row_dims}x{self.col_dims}, "
            f"ranks {self.tt_ranks}, batch {self.batch_size}: forward {self.flops_forward / 1e9:.3g} GFLOP ({vs})"
        )
        if self.requires_grad:
            only = (
                "" if self.input_grad and self.cores_grad else " (input)" if self.input_grad else " (cores)"
            )
            s += (
                f", backward{only} {self.flops_backward / 1e9:.3g} GFLOP, "
                f"activations kept {self.saved_bytes / 2**20:.3g} MiB"
            )
        return s + f", est. {self.est_seconds * 1e3:.3g} ms"


# ---------------------------------------------------------------------------------------------- plan cache
_PLAN_CACHE: dict[tuple, Program] = {}
# Bounded: with max_saved_bytes a plan is keyed by the exact batch size, and variable-length batches (rows = batch x
# sequence length) gave one more entry per size without end. The oldest is dropped first (about 1 KB each).
PLAN_CACHE_LIMIT = 4096
# inference sweeps' chunking, per (core shapes, groups, ...): bounded as the plans are (TTs of data-dependent
# ranks, from round(epsilon=...) in a loop, gave one more entry per rank tuple without end)
_CHUNK_CACHE: dict[tuple, tuple[int, int]] = {}
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
    """The number of cached plans: one per (core shapes, strategy, batch bucket, dtype, device type, grad mode,
    ``max_saved_bytes`` when training), at most ``tensortrain.contraction_plan.PLAN_CACHE_LIMIT`` (4096; the
    oldest plan is dropped first). With
    ``max_saved_bytes``, and for training batches below 8, the exact batch size replaces the bucket.

    Example:
        >>> import torch, tensortrain as tt
        >>> tt.contraction.plan_cache_size() >= 0
        True
    """
    return len(_PLAN_CACHE)


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
    _check_chain(cores, f"{fn}: ")
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


def _check_chain(cores: Sequence[torch.Tensor], prefix: str = "") -> None:
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


def _bucket(batch: int | torch.SymInt) -> int:
    """Batch sizes are planned by power-of-two bucket, so a varying last batch does not replan."""
    return 1 << (int(batch) - 1).bit_length() if batch > 1 else 1


def choose_program(
    cores: Sequence[torch.Tensor],
    batch: int | torch.SymInt,
    grad: bool,
    strategy: Strategy | ContractionPlan,
    cached: bool = False,
    max_saved: int | None = None,
    need: _cost.Need = _cost.BOTH,
) -> Program:
    """The program for these cores and batch (cached); ``need``: which gradients a training backward computes."""
    if isinstance(strategy, ContractionPlan):
        return strategy.program
    if not grad:
        max_saved, need = None, _cost.BOTH  # inference keeps nothing: one cache entry whatever the limit
    compiling = torch.compiler.is_compiling()
    if compiling:  # the batch may be a symbol (dynamic shapes): reading it would specialise the graph
        batch = _SYMBOLIC_BATCH
    c0 = cores[0]
    # a memory bound is checked at the batch itself: a bucket's larger states could rule out a plan that fits.
    # So are training batches below SWEEP_FUNCTION_MIN_BATCH: their sweeps run autograd's folded products, and
    # the bucket (8) would price them as the hand-written SweepFunction that runs from 8 rows on.
    exact = max_saved is not None or (grad and batch < _machine.SWEEP_FUNCTION_MIN_BATCH)
    bucket = int(batch) if exact and not compiling else _bucket(batch)
    if compiling:  # plain Python on shapes: traced and constant-folded, no cache writes
        _check_chain(cores)  # (static shapes: free at run time)
        return _search.choose(
            dims_of(cores),
            "auto" if strategy == "tune" else strategy,  # (nothing is timed while tracing)
            bucket,
            c0.element_size(),
            c0.device.type,
            grad,
            max_saved=max_saved,
            need=need,
            fold=False,  # (the executors fold nothing while compiling: contraction_exec._folds)
        )
    # the key uses the torch.Size objects as they are: this lookup is on every layer call
    key = (
        tuple([c.shape for c in cores]),
        strategy,
        bucket,
        c0.dtype,
        c0.device.type,
        grad,
        cached,
        max_saved,
        need,
    )
    prog = _PLAN_CACHE.get(key)
    if prog is None:
        # the layers' fast path checks its cores nowhere else: a core replaced by one of another rank
        # (layer.cores[0] = nn.Parameter(...)) failed inside a reshape, with a message that varied by plan
        _check_chain(cores)
        dims = dims_of(cores)
        if strategy == "tune":
            # (imported here: the tuner runs the executors, which sit after this module in the data flow)
            from .contraction_run import tunable, tune

            if transforms_active() or not tunable(c0):
                # nothing is timed under a transform (torch.func, jit tracing), on meta or fake tensors or while a CUDA
                # graph is captured: the cost model's choice, not cached, so that a later eager call tunes
                return _search.choose(
                    dims, "auto", bucket, c0.element_size(), c0.device.type, grad, cached, max_saved, need
                )
            return _remember(key, tune(cores, max(1, int(batch)), grad, cached, max_saved, need))
        prog = _remember(
            key,
            _search.choose(
                dims, strategy, bucket, c0.element_size(), c0.device.type, grad, cached, max_saved, need
            ),
        )
    return prog


def _remember(key: tuple, prog: Program) -> Program:
    """Cache ``prog`` under ``key``, dropping the oldest plan when the cache is full."""
    return _bounded_put(_PLAN_CACHE, key, prog)


def _bounded_put(cache: dict, key: tuple, value: Any) -> Any:
    """``cache[key] = value``, dropping the oldest entry first when ``cache`` holds ``PLAN_CACHE_LIMIT``."""
    if len(cache) >= PLAN_CACHE_LIMIT:
        try:
            del cache[next(iter(cache))]
        except (KeyError, RuntimeError, StopIteration):  # another thread evicted or inserted meanwhile
            pass
    cache[key] = value
    return value


def make_plan(
    dims: Dims,
    prog: Program,
    batch: int,
    item: int,
    device_type: str,
    grad: bool,
    cached: bool = False,
    need: _cost.Need = _cost.BOTH,
) -> ContractionPlan:
    m = _machine.machine(device_type, item)
    need = need if grad else _cost.BOTH
    f, bf, t, saved, est = _cost.estimate(dims, prog, batch, item, grad, m, cached, need)
    kind, direction, groups = prog
    return ContractionPlan(
        kind="sweep" if kind == "resweep" else kind,  # type: ignore[arg-type]
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
        recompute=grad and (kind == "resweep" or direction == "recompute"),
        input_grad=need[0],
        cores_grad=need[1],
        # (a group or half too large to keep is merged on every call: only where some merge was left out)
        merges_cached=cached
        and not grad
        and f < _cost.estimate(dims, prog, batch, item, grad, m, False, need)[0],
    )


def chunk_rows(cores: Sequence[torch.Tensor], groups: Groups, direction: str) -> tuple[int, int]:
    """An inference sweep's chunking, cached: (rows per chunk, the largest batch that runs whole)."""
    item, device_type = cores[0].element_size(), cores[0].device.type
    key = (tuple(c.shape for c in cores), groups, direction, item, device_type)
    rows = _CHUNK_CACHE.get(key)
    if rows is None:
        cliffs = _machine.cache_cliffs(device_type)
        rows = _bounded_put(
            _CHUNK_CACHE, key, _cost.chunking(dims_of(cores), groups, direction, item, cliffs)
        )
    return rows


def _check_flag(value: Any, fn: str, name: str) -> None:
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
        ValueError: unknown strategy, a batch size that is not an int >= 0, a negative ``max_saved_bytes``,
            training with neither ``input_requires_grad`` nor ``cores_require_grad``.
        ShapeError: malformed cores. TypeError: not a TT-matrix, a ``max_saved_bytes`` that is not an int.

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
    cores = cores_of(weight, "plan")
    batch_size = _batch_size(batch_size, "plan")
    dims = dims_of(cores)
    check_strategy(strategy, dims, "plan")
    if requires_grad is None:
        requires_grad = grad_recorded() and any(c.requires_grad for c in cores)
    _check_flag(requires_grad, "plan", "requires_grad")
    max_saved = check_max_saved(max_saved_bytes, "plan")
    if requires_grad and max_saved is not None:  # (as linear counts them)
        max_saved = max(0, max_saved - core_copy_bytes(cores))
    _check_flag(cached_merges, "plan", "cached_merges")
    need = _need(input_requires_grad, cores_require_grad, requires_grad, "plan")
    cached = cached_merges and not requires_grad
    prog = choose_program(cores, batch_size, requires_grad, strategy, cached, max_saved, need)
    c0 = cores[0]
    return make_plan(dims, prog, batch_size, c0.element_size(), c0.device.type, requires_grad, cached, need)


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
    cores = cores_of(weight, "enumerate_plans")
    batch_size = _batch_size(batch_size, "enumerate_plans")
    _check_flag(requires_grad, "enumerate_plans", "requires_grad")
    need = _need(input_requires_grad, cores_require_grad, requires_grad, "enumerate_plans")
    dims = dims_of(cores)
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
    return [make_plan(dims, p, batch_size, item, kind, requires_grad, need=need) for p in progs]


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
        ShapeError: malformed cores. TypeError: not a TT-matrix. ValueError: a batch size that is not an int >= 0.

    Complexity:
        ``O(3^(d+1))`` set operations (a dynamic programme over subsets of the ``d + 1`` operands).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.random_matrix([[5, 5, 5, 5], [4, 7, 4, 7]], tt_rank=16)  # 625 x 784
        >>> round(tt.contraction.flop_floor(w, 64) / (2 * 64 * 625 * 784), 3)  # no order beats dense by FLOPs
        1.223
    """
    cores = cores_of(weight, "flop_floor")
    batch_size = _batch_size(batch_size, "flop_floor")
    return _search.order_floor(dims_of(cores), batch_size)


def _need(input_grad: bool, cores_grad: bool, requires_grad: bool, fn: str) -> _cost.Need:
    _check_flag(input_grad, fn, "input_requires_grad")
    _check_flag(cores_grad, fn, "cores_require_grad")
    if requires_grad and not (input_grad or cores_grad):
        raise ValueError(
            f"{fn}: with requires_grad=True, the input or the cores must need a gradient (input_requires_grad, "
            "cores_require_grad): both are False"
        )
    return (input_grad, cores_grad)
