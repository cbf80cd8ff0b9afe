"""The cost model behind :mod:`tensortrain.contraction`: FLOPs, memory traffic and kernel launches per plan.

Internal module (no public names). Pure Python on shapes, so planning traces under ``torch.compile``.

A plan's estimated time is ``flops / F + streamed bytes / BW + permuted bytes / BW_perm + launches * t_launch +
batched-GEMM slices * t_slice``; for training, backward (about twice forward) is added and the activations kept
for backward are charged once more as traffic, so a plan that keeps less memory wins ties. ``F``, ``BW``, ...
are rough per-device constants (``contraction.machine.MACHINES``, beside the CPU's measured thresholds); only
their ratios matter for choosing. ``contraction.search`` searches the plans that these prices rank.

Symbols: core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the batch; a group ``[i, j)`` of cores merged
into a super-core ``(ra, mg, ng, rb)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from . import machine as _machine
from .machine import Machine

__all__: list[str] = []

Groups = tuple[tuple[int, int], ...]
Program = tuple[str, str | None, Groups]
Dims = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # row dims, col dims, TT-ranks (d + 1)
# which gradients a training backward computes: (the input's, the cores'). A first layer's input needs none, a
# frozen layer's cores need none: their backward skips those products (and a frozen sweep keeps no states)
Need = tuple[bool, bool]
BOTH: Need = (True, True)


class Cost(NamedTuple):
    flops_forward: int
    flops_backward: int
    bytes_forward: int
    saved_bytes: int
    seconds: float


class _Acc(NamedTuple):
    flops: int = 0
    stream: int = 0
    permute: int = 0
    launches: int = 0
    slices: int = 0
    slow_flops: int = 0  # FLOPs priced a second time (slow GEMMs), never reported as FLOPs
    # bytes of an inference sweep's chunked, cache-resident states (priced at CHUNKED_SPEEDUP)
    chunked: int = 0


# (functions, not operators and methods of _Acc: this runs inside compiled graphs, and the dynamo of torch 2.6 to
# 2.12 cannot trace a NamedTuple's own methods)
def _sum(*accs: _Acc) -> _Acc:
    return _Acc(*(sum(fields) for fields in zip(*accs, strict=True)))


def _minus(a: _Acc, b: _Acc) -> _Acc:
    return _Acc(*(x - y for x, y in zip(a, b, strict=True)))


def _seconds(acc: _Acc, m: Machine) -> float:
    return (
        (acc.flops + acc.slow_flops) / m.flops
        + acc.stream / m.stream
        + acc.chunked / (m.stream * _machine.CHUNKED_SPEEDUP)
        + acc.permute / m.permute
        + acc.launches * m.launch
        + acc.slices * m.slice
    )


def prod(xs: Sequence[int]) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def merge_cost(dims: Dims, i: int, j: int, item: int) -> _Acc:
    """Merging cores ``i..j-1``: sequential rank products, then one permute gathering rows before columns."""
    rows, cols, ranks = dims
    if j - i == 1:
        return _Acc()
    flops = stream = 0
    p = ranks[i] * rows[i] * cols[i]
    for k in range(i + 1, j):
        flops += 2 * p * ranks[k] * rows[k] * cols[k] * ranks[k + 1]
        p *= rows[k] * cols[k]
        stream += item * p * ranks[k + 1]
    return _Acc(flops, stream, 2 * item * p * ranks[j], 2 * (j - i), 0)


# A layer may keep a merged group between inference calls only while it is at most this many times the size of
# the cores it merges: the cache stays TT-sized (pairs of cores are 1-5x) and never becomes the dense weight.
CACHE_FACTOR = 8


def cacheable(dims: Dims, i: int, j: int) -> bool:
    """Whether the merged group ``[i, j)`` is small enough for a layer to keep between inference calls."""
    rows, cols, ranks = dims
    merged = ranks[i] * prod(rows[i:j]) * prod(cols[i:j]) * ranks[j]
    return merged <= CACHE_FACTOR * sum(ranks[k] * rows[k] * cols[k] * ranks[k + 1] for k in range(i, j))


def halves_cacheable(dims: Dims, split: int) -> bool:
    """Whether both halves of the full plan split before core ``split`` may be kept by a layer's cache."""
    d = len(dims[0])
    return cacheable(dims, 0, split) and (split == d or cacheable(dims, split, d))


def step_shape(dims: Dims, i: int, j: int, direction: str) -> tuple[int, int, int, int]:
    """``(outer per batch row, K, P, Q)`` of the sweep step contracting group ``[i, j)``.

    The step maps ``outer`` slices ``(K, P)`` of the state to ``(Q, P)`` with the super-core ``(Q, K)``.
    """
    rows, cols, ranks = dims
    mg, ng = prod(rows[i:j]), prod(cols[i:j])
    if direction == "rtl":
        return prod(cols[:i]), ng * ranks[j], prod(rows[j:]), mg * ranks[i]
    return prod(rows[:i]), ranks[i] * ng, prod(cols[j:]), mg * ranks[j]


def _autograd_folds(p: int, batch: int, recompute: bool) -> bool:
    """Whether a training step runs autograd's torch.matmul, which folds the batch of its (K, P) slices (below
    :data:`SWEEP_FUNCTION_MIN_BATCH` rows; others run contraction.training_sweep.SweepFunction on the slices in
    place)."""
    return p > 1 and batch < _machine.SWEEP_FUNCTION_MIN_BATCH and not recompute


def _fold_copies(outer: int, k: int, p: int, batch: int, recompute: bool) -> bool:
    """Whether that fold of ``outer`` (batch rows included) slices ``(K, P)`` into ``(outer P, K)`` rows is a copy,
    which autograd keeps for backward: a view when K or outer is 1."""
    return _autograd_folds(p, batch, recompute) and k > 1 and outer > 1


def input_copied(dims: Dims, groups: Groups, direction: str, batch: int, recompute: bool) -> bool:
    """Whether a training sweep keeps a copy of its input for backward in place of the input itself (its first
    step's fold, as :func:`step_cost` counts it)."""
    i, j = groups[-1] if direction == "rtl" else groups[0]
    outer, k, p, _ = step_shape(dims, i, j, direction)
    return _fold_copies(outer * batch, k, p, batch, recompute)


def _state_per_row(dims: Dims, i: int, j: int, direction: str) -> tuple[int, int]:
    """Elements per batch row of the sweep state before and after contracting group ``[i, j)``."""
    outer, k, p, q = step_shape(dims, i, j, direction)
    return outer * k * p, outer * q * p


NO_CHUNKS = 2**62  # chunking()'s answer on a device without a cache cliff: every batch runs whole


def chunking(dims: Dims, groups: Groups, direction: str, item: int, cliffs: bool = True) -> tuple[int, int]:
    """How an inference sweep splits its batch: ``(rows per chunk, largest batch that runs whole)``.

    A batch whose largest state fits the last-level cache (CACHE_BYTES) runs whole; a larger one runs in
    chunks whose largest state is CHUNK_BYTES. On a device without the CPU's cliffs (``cliffs`` False:
    :attr:`Machine.cache_cliffs`) every batch runs whole.
    """
    if not cliffs:
        return NO_CHUNKS, NO_CHUNKS
    per_row = item * max(max(_state_per_row(dims, i, j, direction)) for i, j in groups)
    return max(1, _machine.CHUNK_BYTES // per_row), max(1, _machine.CACHE_BYTES // per_row)


def step_cost(
    dims: Dims,
    i: int,
    j: int,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    cached: bool = False,
    recompute: bool = False,
    cliffs: bool = True,
    fold: bool = False,
) -> tuple[_Acc, int]:
    """Forward cost of contracting group ``[i, j)`` in a sweep (merge included) and the elements it keeps.

    ``recompute``: the sweep keeps no step input (contraction.training_sweep.SweepFunction recomputes them), at
    any batch.
    ``cliffs``: the device's :attr:`Machine.cache_cliffs` (False: no state leaves a cache, none runs in chunks).
    ``fold``: the device's :attr:`Machine.narrow_fold` (narrow steps run as one GEMM between two transposes).
    """
    cache = _machine.CACHE_BYTES if cliffs else math.inf
    outer, k, p, q = step_shape(dims, i, j, direction)
    outer *= batch
    first = j == len(dims[0]) if direction == "rtl" else i == 0
    # cached: a layer keeps the merged group between inference calls (if it is small enough to keep)
    acc = _Acc() if cached and cacheable(dims, i, j) else merge_cost(dims, i, j, item)
    state_in, state_out = outer * k * p, outer * q * p
    traffic = item * (state_in + state_out + q * k)
    # intermediates beyond the last-level cache stream from DRAM: price them like strided copies; inference
    # runs such sweeps in chunks of rows instead (more launches, cache-resident states)
    big = grad and item * max(state_in, state_out) > cache
    chunks = 1
    if not grad and item * max(state_in, state_out) > cache:
        per_chunk = max(1, _machine.CHUNK_BYTES // (item * max(state_in, state_out) // batch))
        chunks = -(-batch // per_chunk)
    # training GEMMs on DRAM-sized states ran at a third of the dense GEMM's rate (benchmarks/calibrate.py,
    # 4096x4096 rank 16 at batch 1024): price their FLOPs double (in the time estimate only: the plan reports the
    # FLOPs it does)
    flops = 2 * outer * q * k * p
    slow = flops if big else 0
    # tiny training batches: torch.matmul folds the batch (a transposed copy of the state in, one of the product
    # out); others run batched GEMMs on the slices in place (contraction.training_sweep.SweepFunction in
    # training), except narrow ones, which the executors fold the same way (folds_narrow; decided on the whole
    # batch, also where an inference sweep runs in chunks)
    folded = grad and _autograd_folds(p, batch, recompute)
    narrow = not folded and _machine.folds_narrow(outer, k, p, q, item, fold)
    # a chunk's states stay in cache: priced as other in-cache traffic, the planner built W where these sweeps
    # measured faster (768x3072 rank 16 at batch 1024: 0.92x nn.Linear's time against the full plan's 1.05x;
    # 4096x4096 rank 64 at batch 64: 1.62x against 2.06x; benchmarks/calibrate.py on the 2-core EPYC). Only
    # where the step's GEMMs are wide (one GEMM, p == 1, or slices of p >= WIDE_SLICE columns): narrow slices run
    # far below the FLOP rate, which the full price happened to stand in for (30522x768 rank 16 at batch 256 took
    # a grouping with 4-column slices that measured 2.7x slower when every chunk was discounted; folded ones
    # are one GEMM)
    chunked = traffic if chunks > 1 and (p == 1 or p >= _machine.WIDE_SLICE or narrow) else 0
    stream = 0 if big or chunked else traffic
    acc = _sum(
        acc,
        _Acc(flops, stream, traffic if big else 0, 3 * chunks, outer if p > 1 else 0, slow, chunked),
    )
    if folded or narrow:
        acc = _sum(acc, _Acc(0, 0, 2 * item * (state_in + state_out), 2, -acc.slices))
    saved = 0
    if grad:
        # each step keeps its input: for the first step that is x itself (the caller's), unless folded into a copy
        copied = _fold_copies(outer, k, p, batch, recompute)
        saved = 0 if (first and not copied) or recompute else state_in
    return acc, saved


def merged_kept(dims: Dims, i: int, j: int) -> int:
    """Elements autograd keeps for backward when cores ``i..j-1`` are merged (contraction.sweeps.merge_cores): the
    partial products of a group of three or more cores (each product's left operand; the first is a core)."""
    rows, cols, ranks = dims
    kept, p = 0, ranks[i] * rows[i] * cols[i]
    for k in range(i + 1, j - 1):
        p *= rows[k] * cols[k]
        kept += p * ranks[k + 1]
    return kept


def super_kept(dims: Dims, i: int, j: int, direction: str, trained: bool = True) -> int:
    """Elements of group ``[i, j)``'s super-core that a training sweep keeps beyond the parameters: the merged
    group (and its partial products, which autograd records only for ``trained`` cores), or for a single core in
    a left-to-right sweep its permuted copy (contraction.sweeps.super_of), unless that permute is a view."""
    rows, cols, ranks = dims
    size = ranks[i] * prod(rows[i:j]) * prod(cols[i:j]) * ranks[j]
    if j - i > 1:
        return size + (merged_kept(dims, i, j) if trained else 0)
    ra, mg, ng, rb = ranks[i], rows[i], cols[i], ranks[j]
    # (mg, rb) and (ra, ng) of the permuted (mg, rb, ra, ng) merge into views only when a dim is 1 or ng == 1
    # (mg's stride is ng * rb) and mg == 1 (ra's stride is mg * ng * rb)
    view = (mg == 1 or rb == 1 or ng == 1) and (ra == 1 or ng == 1 or mg == 1)
    return 0 if direction == "rtl" or view else size


def sweep_cost(
    dims: Dims,
    groups: Groups,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    recompute: bool = False,
    need: Need = BOTH,
) -> Cost:
    """A sweep's cost; ``recompute``: backward first runs the forward again short of its last step, no merges;
    ``need``: which gradients backward computes (contraction.training_sweep.SweepFunction skips the others'
    products)."""
    acc, saved, again, dx = _Acc(), 0, _Acc(), _Acc()
    d = len(dims[0])
    supers = 0  # super-cores that are not the parameters themselves are kept for backward too
    fresh = 0
    for i, j in groups:
        a, s = step_cost(
            dims, i, j, direction, batch, item, grad, cached, recompute, m.cache_cliffs, m.narrow_fold
        )
        acc, saved = _sum(acc, a), saved + s
        final = i == 0 if direction == "rtl" else j == d  # the step executed last: its output is y
        # the step that reads x: where the input needs no gradient, backward skips that step's state gradient
        if grad and not need[0] and (j == d if direction == "rtl" else i == 0):
            dx = _minus(a, merge_cost(dims, i, j, item))
        if recompute and not final:
            again = _sum(again, _minus(a, merge_cost(dims, i, j, item)))
        reads_x = j == d if direction == "rtl" else i == 0
        if grad and not need[0] and reads_x and batch < _machine.SWEEP_FUNCTION_MIN_BATCH and not recompute:
            # tiny batches run autograd's own matmuls (contraction.runner), which keep a step's super-core only for
            # its input's gradient: x needs none, so only the merge's own partial products are kept
            supers += merged_kept(dims, i, j) if need[1] and j - i > 1 else 0
        else:
            supers += super_kept(dims, i, j, direction, need[1])
        if grad and not final:
            out = item * batch * _state_per_row(dims, i, j, direction)[1]
            # a state kept for backward, and its gradient there, above glibc's largest mmap threshold are fresh
            # pages every step (a recomputing sweep's states, in forward and in backward, borrow reused scratch:
            # only the gradient is fresh)
            fresh += (1 if recompute or not need[1] else 2) * out if out >= _machine.BLOCKED_ABOVE else 0
    if not grad:
        return Cost(acc.flops, 0, acc.stream + acc.permute + acc.chunked, 0, _seconds(acc, m))
    # dS per step but x's unless the input needs it; dA per step and any recomputed steps for the cores' (frozen
    # cores: SweepFunction keeps and recomputes no states)
    d_states = acc if need[0] else _minus(acc, dx)
    if need[1]:
        bwd = _sum(d_states, acc, again)
    else:  # frozen cores: nothing differentiates the merges (priced in acc, the forward)
        bwd = (
            d_states if cached else _minus(d_states, _sum(*(merge_cost(dims, i, j, item) for i, j in groups)))
        )
    if not need[1]:
        saved = 0
    # (the merged groups are reported as kept but not priced as traffic: they are the size of the cores)
    seconds = _seconds(acc, m) + _seconds(bwd, m) + item * saved / m.stream + fresh / m.touch
    return Cost(acc.flops, bwd.flops, acc.stream + acc.permute, item * (saved + supers), seconds)


def full_cost(
    dims: Dims,
    split: int,
    batch: int,
    item: int,
    grad: bool,
    keep: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> Cost:
    """Build W from its halves split before core ``split``, then one dense GEMM; in training keep or rebuild W.

    ``cached``: a layer keeps both halves between inference calls (if both are small enough to keep). ``need``:
    which gradients backward computes (FullLinear skips the others' products, and keeps W only for the input's).
    """
    keep = keep and need[0]
    rows, cols, ranks = dims
    d = len(rows)
    mm, nn, r = prod(rows), prod(cols), ranks[split]
    nl, nr = prod(cols[:split]), prod(cols[split:])
    merges = _sum(merge_cost(dims, 0, split, item), merge_cost(dims, split, d, item) if split < d else _Acc())
    if cached and not grad and halves_cacheable(dims, split):
        merges = _Acc()
    ml = prod(rows[:split])
    dims4 = (ml, nl, prod(rows[split:]), nr)
    # the halves' gradients: dW R^T and L^T dW; with one half only (split == d) the other is a constant
    gh = (4 if split < d else 2) * mm * nn * r
    bs = _machine.block_rows(dims4, item, m.cache_cliffs)
    if bs:  # built and permuted in cache-sized blocks: streamed, more launches
        blocks = -(-ml // bs)
        build = _Acc(2 * mm * nn * r, 3 * item * mm * nn, 0, 3 * blocks, 0)
        grad_halves = _Acc(gh, item * 4 * mm * nn, 0, 3 * blocks, 0)
    elif _machine.batched_build(r, nl, nr):  # broadcast copies of the halves instead of a permute of W
        build = _Acc(2 * mm * nn * r, item * (mm * nn + 2 * mm * (nl + nr) * r), 0, 3, prod(rows))
        grad_halves = _Acc(gh, item * (2 * mm * nn + 4 * mm * (nl + nr) * r), 0, 6, 2 * prod(rows))
    else:
        build = _Acc(2 * mm * nn * r, item * mm * nn, 2 * item * mm * nn, 3, 0)
        grad_halves = _Acc(gh, item * 2 * mm * nn, 2 * item * mm * nn, 3, 0)
    # written in place, a slice at a time: W streamed once, a launch per slice
    if _machine.sliced_build(dims4, r):
        build = _Acc(2 * mm * nn * r, item * mm * nn, 0, ml, 0)
    gemm = _Acc(2 * batch * mm * nn, item * (batch * nn + mm * nn + batch * mm), 0, 1, 0)
    fwd = _sum(merges, build, gemm)
    if not grad:
        return Cost(fwd.flops, 0, fwd.stream + fwd.permute, 0, _seconds(fwd, m) + m.full_call)
    # backward (custom Function): for the input, [rebuild W] and the dx GEMM; for the cores, the dW GEMM, the
    # grads of both halves and the merges' backward
    saved = r * (prod(rows[:split]) * nl + prod(rows[split:]) * nr) + (mm * nn if keep else 0)
    for_x = _sum(gemm, _Acc() if keep else build) if need[0] else _Acc()
    bwd = _sum(for_x, gemm, grad_halves, merges, merges) if need[1] else for_x
    seconds = _seconds(fwd, m) + _seconds(bwd, m) + item * saved / m.stream
    # reported: a half that is one core is that parameter (a view); merged halves keep their partial products;
    # d = 1 has a ones matrix for its right half
    # (frozen cores: autograd records no merge, keeps no partial product)
    kept = (mm * nn if keep else 0) + (merged_kept(dims, 0, split) if need[1] else 0)
    kept += ml * nl * r if split > 1 else 0
    if split < d:
        kept += prod(rows[split:]) * nr * r if d - split > 1 else 0
        kept += merged_kept(dims, split, d) if need[1] else 0
    else:
        kept += 1
    # a kept W is fresh memory (page faults); a rebuilt one borrows reused scratch (tensortrain.workspace)
    if keep and bs:
        seconds += item * mm * nn / m.touch
    return Cost(fwd.flops, bwd.flops, fwd.stream + fwd.permute, item * kept, seconds)


def estimate(
    dims: Dims,
    prog: Program,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> Cost:
    kind, direction, groups = prog
    if kind == "full":
        return full_cost(dims, groups[0][1], batch, item, grad, direction == "keep", m, cached, need)
    assert direction is not None
    return sweep_cost(dims, groups, direction, batch, item, grad, m, cached, kind == "resweep", need)
