"""The plan cache: the program each contraction runs, chosen once per key (:func:`choose_program`).

Internal module: :mod:`tensortrain.contraction` exports :func:`clear_plan_cache` and :func:`plan_cache_size`.
:func:`choose_program` is on every layer call: it looks the program up per (core shapes, strategy, batch-size
bucket, dtype, device type, grad mode, memory bound, ...) and on a miss checks the cores and asks the search
(``contraction.search``) or, for ``strategy="tune"``, the tuner (``contraction.runner``). While compiling it plans
by plain Python on shapes, without touching the cache. Inference sweeps' chunkings are cached beside the plans
(:func:`chunk_rows`); both caches are bounded (``PLAN_CACHE_LIMIT``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._transforms import transforms_active
from . import checks as _checks
from . import cost as _cost
from . import machine as _machine
from . import search as _search
from .plans import ContractionPlan, Groups, Program, Strategy

__all__ = ["clear_plan_cache", "plan_cache_size"]


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
    ``max_saved_bytes`` when training), at most ``tensortrain.contraction.plan_cache.PLAN_CACHE_LIMIT`` (4096;
    the oldest plan is dropped first). With ``max_saved_bytes``, and for training batches below 8, the exact batch
    size replaces the bucket.

    Example:
        >>> import torch, tensortrain as tt
        >>> tt.contraction.plan_cache_size() >= 0
        True
    """
    return len(_PLAN_CACHE)


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
        _checks.check_chain(cores)  # (static shapes: free at run time)
        return _search.choose(
            _checks.dims_of(cores),
            "auto" if strategy == "tune" else strategy,  # (nothing is timed while tracing)
            bucket,
            c0.element_size(),
            c0.device.type,
            grad,
            max_saved=max_saved,
            need=need,
            fold=False,  # (the executors fold nothing while compiling: contraction.sweeps.step_folds)
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
        _checks.check_chain(cores)
        dims = _checks.dims_of(cores)
        if strategy == "tune":
            # (imported here: the tuner runs the executors, which sit after this module in the data flow)
            from .runner import tunable, tune

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


def chunk_rows(cores: Sequence[torch.Tensor], groups: Groups, direction: str) -> tuple[int, int]:
    """An inference sweep's chunking, cached: (rows per chunk, the largest batch that runs whole)."""
    item, device_type = cores[0].element_size(), cores[0].device.type
    key = (tuple(c.shape for c in cores), groups, direction, item, device_type)
    rows = _CHUNK_CACHE.get(key)
    if rows is None:
        cliffs = _machine.cache_cliffs(device_type)
        rows = _bounded_put(
            _CHUNK_CACHE, key, _cost.chunking(_checks.dims_of(cores), groups, direction, item, cliffs)
        )
    return rows
