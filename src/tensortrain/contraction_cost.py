"""The cost model behind :mod:`tensortrain.contraction`: FLOPs, memory traffic and kernel launches per plan.

Internal module (no public names). Pure Python on shapes, so planning traces under ``torch.compile``.

A plan's estimated time is ``flops / F + streamed bytes / BW + permuted bytes / BW_perm + launches * t_launch +
batched-GEMM slices * t_slice``; for training, backward (about twice forward) is added and the activations kept
for backward are charged once more as traffic, so a plan that keeps less memory wins ties. ``F``, ``BW``, ...
are rough per-device constants (:data:`MACHINES`); only their ratios matter for choosing.

Symbols: core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the batch; a group ``[i, j)`` of cores merged
into a super-core ``(ra, mg, ng, rb)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

__all__: list[str] = []

Groups = tuple[tuple[int, int], ...]
Program = tuple[str, str | None, Groups]
Dims = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # row dims, col dims, TT-ranks (d + 1)
# which gradients a training backward computes: (the input's, the cores'). A first layer's input needs none, a
# frozen layer's cores need none: their backward skips those products (and a frozen sweep keeps no states)
Need = tuple[bool, bool]
BOTH: Need = (True, True)


class Machine(NamedTuple):
    flops: float  # GEMM FLOP/s in float32
    stream: float  # bytes/s for contiguous reads and writes
    permute: float  # bytes/s for strided copies (permutes, transposes)
    launch: float  # seconds per kernel launch / op dispatch
    slice: float  # seconds per slice of a batched GEMM
    # bytes/s of first writes to freshly mapped memory: the page faults of a large allocation that outlives its
    # call (a W kept for backward; temporaries borrow reused scratch from tensortrain.workspace instead)
    touch: float = float("inf")
    # seconds of Python and dispatch an inference full plan costs per call beyond its priced kernels (the halves,
    # the build, the GEMM's wrapper): unpriced, the planner built W for tiny layers where a sweep was 1.4-2x faster.
    # (Training plans are left as they were: adding it there picked sweeps that measured up to 1.33x slower.)
    full_call: float = 0.0
    # the CPU's cliffs: a training sweep's states beyond the last-level cache (CACHE_BYTES) are priced at the
    # permute bandwidth and an inference sweep's run in chunks of rows; a dense W above BLOCKED_ABOVE bytes is
    # built in blocks into reused scratch (fresh large allocations cost page faults). False: none of these (a GPU
    # streams its states from memory at full bandwidth, chunks and blocks only add launches, and CUDA's caching
    # allocator reuses its memory)
    cache_cliffs: bool = True
    # GEMM FLOP/s of 2-byte dtypes (float16, bfloat16) over float32's: a GPU's tensor cores
    half: float = 1.0
    # sweep steps over narrow slices run as one tall GEMM between two transposes, not a batched GEMM (see
    # folds_narrow); False: batched GEMMs everywhere (not measured on GPUs)
    narrow_fold: bool = False


# cpu: a 2-core AVX-512 EPYC running MKL. Set by eye, then the permute bandwidth raised from 2.5e9 to 1e10 after
# benchmarks/calibrate.py timed 7-12 candidate plans of every benchmark case: with the doubled price of training
# GEMMs on DRAM-sized states (step_cost) the planner's geometric-mean regret (measured time of its choice over the
# fastest plan's) went from 1.124x to 1.073x. Least squares over all five constants predicts times about as well
# but chooses no better. touch: a fresh 64 MiB buffer took ~23 ms more to fill than a reused one. cuda: a guess
# (its caching allocator reuses memory: no page faults). full_call: measured on the 2-core Xeon (2026-11-29), the
# full plan ran 60-90 us above its estimate on tiny layers (512 -> 1, 64 -> 48, 784 -> 10 at batch 1-64) where
# sweeps ran 20-30 us above theirs (tt.contraction.linear of each plan, medians of 201 calls); priced, the
# choice changed only for such layers (none of the benchmark cases), e.g. 512 -> 1 at batch 1 176 -> 91 us.
# cuda, on one H200 (benchmarks/gpu.py and calibrate.py --device cuda, 2026-11-30; benchmarks/results-gpu.json):
# with the CPU's cache cliffs the planner chunked large inference batches and priced large states as DRAM
# traffic: 4096x4096 rank 16 at batch 8192 ran forward 1.13x nn.Linear's time and a training step 1.12x, planned
# without them 0.71x and 0.77x. The other constants are guesses that the same calibration bore out in float32
# (regret 1.10-1.11x on 25 cases, a least-squares fit 1.11-1.13x: benchmarks/gpu_regret_subset.py). half: dense
# bfloat16 layers ran 13-16x faster than float32 there on the large products, 1.2-5x on mid-sized ones, no
# faster at batch 1; 8 is a guess for the GEMMs of TT plans, not fitted.
MACHINES: dict[str, Machine] = {
    "cpu": Machine(1.0e11, 1.0e10, 1.0e10, 5.0e-6, 5.0e-8, 2.9e9, 5.0e-5, narrow_fold=True),
    "cuda": Machine(2.0e13, 1.5e12, 5.0e11, 8.0e-6, 1.0e-9, full_call=5.0e-5, cache_cliffs=False, half=8.0),
}
# Other device types (mps, xpu, hpu, ...) are accelerators too: GPU-like guesses, and no CPU cache cliffs (with
# them an mps or xpu layer of 4096x4096 rank 16 at batch 8192 ran its inference sweep as 256 chunks, which cost
# CUDA 1.13x nn.Linear's time against 0.71x whole; see cuda above). Meta tensors take them too (nothing runs).
DEFAULT_MACHINE = Machine(1.0e12, 2.0e11, 5.0e10, 8.0e-6, 1.0e-9, cache_cliffs=False)


NO_CHUNKS = 2**62  # chunking()'s answer on a device without a cache cliff: every batch runs whole
CACHE_BYTES = 32 * 2**20  # a sweep's state larger than this is priced at the slower (DRAM, permute) bandwidth
# Inference sweeps whose states would outgrow the cache (CACHE_BYTES) run the batch in chunks of rows whose largest
# state fits in this many bytes (measured best on the 2-core EPYC: 32 rows for 4096x4096 rank 16, 128 for
# 768x3072); states that fit the cache run whole (784x625 rank 4 at batch 1024 ran slower in chunks).
CHUNK_BYTES = 8 * 2**20
# ... and such chunks' traffic is priced at this many times the stream bandwidth where their GEMMs are wide: one
# GEMM, or slices at least WIDE_SLICE columns wide (see step_cost).
CHUNKED_SPEEDUP = 2.0
WIDE_SLICE = 16
# Training sweeps of at least this many rows run contraction_exec.SweepFunction (below, autograd's matmul).
SWEEP_FUNCTION_MIN_BATCH = 8
# A dense W above BLOCKED_ABOVE bytes is built in blocks of BLOCK_BYTES whose GEMM outputs, and a temporary W itself,
# live in reused scratch (see contraction_exec.build_full and tensortrain.workspace): above glibc's largest mmap
# threshold (32 MiB) every fresh W costs page faults (~23 ms for 4096x4096). Smaller ones may or may not (a 9.4 MiB
# W built in 8 ms into fresh memory in one process, 3 ms in another; 784x625 and 768x3072 ran 5-10% slower blocked
# in scratch than whole, measured in one process), so they are built whole. 4096x4096 at rank 64 built in 16 ms
# with 16 MiB blocks, 16.5 ms with 8 MiB, 18 ms with 4 MiB.
BLOCKED_ABOVE = 32 * 2**20
BLOCK_BYTES = 8 * 2**20


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
        + acc.chunked / (m.stream * CHUNKED_SPEEDUP)
        + acc.permute / m.permute
        + acc.launches * m.launch
        + acc.slices * m.slice
    )


def prod(xs: Sequence[int]) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def machine(device_type: str, itemsize: int, fold: bool = True) -> Machine:
    """The device type's constants for elements of ``itemsize`` bytes (``fold`` False: no narrow folds, as while
    compiling)."""
    m = MACHINES.get(device_type, DEFAULT_MACHINE)
    # float64 GEMMs run at about half speed, 2-byte ones at ``half`` times float32's. (Every field spelled out,
    # not m._replace or *m[1:]: torch 2.6's dynamo cannot trace those, and this runs inside compiled graphs)
    flops = m.flops * 4.0 / max(itemsize, 4) * (m.half if itemsize == 2 else 1.0)
    return Machine(
        flops,
        m.stream,
        m.permute,
        m.launch,
        m.slice,
        m.touch,
        m.full_call,
        m.cache_cliffs,
        m.half,
        m.narrow_fold and fold,
    )


def cache_cliffs(device_type: str) -> bool:
    """Whether plans on this device type run with the CPU's cache cliffs (:attr:`Machine.cache_cliffs`)."""
    return MACHINES.get(device_type, DEFAULT_MACHINE).cache_cliffs


def narrow_fold(device_type: str) -> bool:
    """Whether sweeps on this device type fold their narrow steps (:attr:`Machine.narrow_fold`)."""
    return MACHINES.get(device_type, DEFAULT_MACHINE).narrow_fold


# A batched GEMM over narrow slices runs far below the GEMM rate on the CPU: MKL took 1.7 ms for 1024 slices
# (60 x 60) @ (60 x 5) on the 2-core EPYC (21 GFLOP/s), and a 300x300 rank-2 layer's training sweep spent two
# thirds of its step there. The same product as one tall GEMM, ``(outer P, K) @ (K, Q)``, between a transpose of
# the slices in and one of the result out, took 0.35 ms. Measured over P = 2..32 and sides K, Q = 4..128
# (ratios of the two in one process, float32): the fold ran 1.4-13x faster for P <= 10 with both sides >= 16 and
# for P <= 6 with both >= 8, and up to 4x slower for wider slices or sides of 4. In float64 and the 2-byte
# dtypes the gains held only for sides >= 32 and P <= 8 (float64 at 16 x 16 ran the fold 2-4x slower). Below
# about NARROW_FOLD_MIN multiply-adds the two extra copies cost more than they save (64 slices (16 x 40) @
# (40 x 8): 19 us batched, 23 us folded).
NARROW_FOLD_MIN = 2**19
FOLD_WIDEST = 10  # the widest slices any dtype's rule folds


def folds_narrow(outer: int, k: int, p: int, q: int, item: int, fold: bool) -> bool:
    """Whether a sweep step of ``outer`` slices ``(K, P)`` and a ``(Q, K)`` super-core runs as one folded GEMM
    (``fold``: the device's :attr:`Machine.narrow_fold`; ``item``: bytes per element)."""
    if not fold or p <= 1 or outer <= 1 or outer * k * p * q < NARROW_FOLD_MIN:
        return False
    side = min(k, q)
    if item == 4:
        return (side >= 16 and p <= FOLD_WIDEST) or (side >= 8 and p <= 6)
    return side >= 32 and p <= 8


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


def batched_build(r: int, nl: int, nr: int) -> bool:
    """Whether a whole-built W (and its halves' gradients) uses GEMMs batched over row-mode pairs: where the split
    rank ``r`` is at most a quarter of both halves' column counts, so that the broadcast copies of the halves
    (``M (N_L + N_R) r`` elements) are at most half the permute of W (``M N_L N_R``) that they replace."""
    return 4 * r <= min(nl, nr)


# W is built one left row index at a time, each a batched GEMM written straight into W's layout (no permute of W),
# when one such slice has at least this many multiply-adds (its launch then costs little). Measured in one process
# on the 2-core CPU: 4096x4096 rank 64 built in 8.1 ms against 13.7 ms blocked and permuted, rank 16 in 5.7 against
# 8.9 ms, 768x3072 rank 64 in 1.4 against 1.9 ms; 784x625 (25 slices of 0.08-0.3 M) took twice as long sliced.
SLICE_MIN = 2**20


def sliced_build(dims4: tuple[int, ...], r: int) -> bool:
    """Whether W ``(M_L, N_L, M_R, N_R)`` at split rank ``r`` is built one left row index at a time."""
    _, nl, mr, nr = dims4
    return mr * nl * nr * r >= SLICE_MIN


def block_rows(dims4: tuple[int, ...], item: int, cliffs: bool = True) -> int:
    """Left row indices per block of the blocked build of W ``(M_L, N_L, M_R, N_R)``; 0: W is built whole (at
    most BLOCKED_ABOVE bytes, or on a device without the CPU's cliffs: :attr:`Machine.cache_cliffs`)."""
    ml, nl, mr, nr = dims4
    if not cliffs or item * ml * nl * mr * nr <= BLOCKED_ABOVE:
        return 0
    return max(1, min(ml, BLOCK_BYTES // (item * nl * mr * nr)))


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
    :data:`SWEEP_FUNCTION_MIN_BATCH` rows; others run contraction_exec.SweepFunction on the slices in place)."""
    return p > 1 and batch < SWEEP_FUNCTION_MIN_BATCH and not recompute


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


def chunking(dims: Dims, groups: Groups, direction: str, item: int, cliffs: bool = True) -> tuple[int, int]:
    """How an inference sweep splits its batch: ``(rows per chunk, largest batch that runs whole)``.

    A batch whose largest state fits the last-level cache (CACHE_BYTES) runs whole; a larger one runs in
    chunks whose largest state is CHUNK_BYTES. On a device without the CPU's cliffs (``cliffs`` False:
    :attr:`Machine.cache_cliffs`) every batch runs whole.
    """
    if not cliffs:
        return NO_CHUNKS, NO_CHUNKS
    per_row = item * max(max(_state_per_row(dims, i, j, direction)) for i, j in groups)
    return max(1, CHUNK_BYTES // per_row), max(1, CACHE_BYTES // per_row)


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

    ``recompute``: the sweep keeps no step input (contraction_exec.SweepFunction recomputes them), at any batch.
    ``cliffs``: the device's :attr:`Machine.cache_cliffs` (False: no state leaves a cache, none runs in chunks).
    ``fold``: the device's :attr:`Machine.narrow_fold` (narrow steps run as one GEMM between two transposes).
    """
    cache = CACHE_BYTES if cliffs else math.inf
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
        per_chunk = max(1, CHUNK_BYTES // (item * max(state_in, state_out) // batch))
        chunks = -(-batch // per_chunk)
    # training GEMMs on DRAM-sized states ran at a third of the dense GEMM's rate (benchmarks/calibrate.py,
    # 4096x4096 rank 16 at batch 1024): price their FLOPs double (in the time estimate only: the plan reports the
    # FLOPs it does)
    flops = 2 * outer * q * k * p
    slow = flops if big else 0
    # tiny training batches: torch.matmul folds the batch (a transposed copy of the state in, one of the product
    # out); others run batched GEMMs on the slices in place (contraction_exec.SweepFunction in training), except
    # narrow ones, which the executors fold the same way (folds_narrow; decided on the whole batch, also where
    # an inference sweep runs in chunks)
    folded = grad and _autograd_folds(p, batch, recompute)
    narrow = not folded and folds_narrow(outer, k, p, q, item, fold)
    # a chunk's states stay in cache: priced as other in-cache traffic, the planner built W where these sweeps
    # measured faster (768x3072 rank 16 at batch 1024: 0.92x nn.Linear's time against the full plan's 1.05x;
    # 4096x4096 rank 64 at batch 64: 1.62x against 2.06x; benchmarks/calibrate.py on the 2-core EPYC). Only
    # where the step's GEMMs are wide (one GEMM, p == 1, or slices of p >= WIDE_SLICE columns): narrow slices run
    # far below the FLOP rate, which the full price happened to stand in for (30522x768 rank 16 at batch 256 took
    # a grouping with 4-column slices that measured 2.7x slower when every chunk was discounted; folded ones
    # are one GEMM)
    chunked = traffic if chunks > 1 and (p == 1 or p >= WIDE_SLICE or narrow) else 0
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
    """Elements autograd keeps for backward when cores ``i..j-1`` are merged (contraction_exec.merge_cores): the
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
    a left-to-right sweep its permuted copy (contraction_exec.super_of), unless that permute is a view."""
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
    ``need``: which gradients backward computes (contraction_exec.SweepFunction skips the others' products)."""
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
        if grad and not need[0] and reads_x and batch < SWEEP_FUNCTION_MIN_BATCH and not recompute:
            # tiny batches run autograd's own matmuls (contraction_run), which keep a step's super-core only for
            # its input's gradient: x needs none, so only the merge's own partial products are kept
            supers += merged_kept(dims, i, j) if need[1] and j - i > 1 else 0
        else:
            supers += super_kept(dims, i, j, direction, need[1])
        if grad and not final:
            out = item * batch * _state_per_row(dims, i, j, direction)[1]
            # a state kept for backward, and its gradient there, above glibc's largest mmap threshold are fresh
            # pages every step (a recomputing sweep's states, in forward and in backward, borrow reused scratch:
            # only the gradient is fresh)
            fresh += (1 if recompute or not need[1] else 2) * out if out >= BLOCKED_ABOVE else 0
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
    bs = block_rows(dims4, item, m.cache_cliffs)
    if bs:  # built and permuted in cache-sized blocks: streamed, more launches
        blocks = -(-ml // bs)
        build = _Acc(2 * mm * nn * r, 3 * item * mm * nn, 0, 3 * blocks, 0)
        grad_halves = _Acc(gh, item * 4 * mm * nn, 0, 3 * blocks, 0)
    elif batched_build(r, nl, nr):  # broadcast copies of the halves instead of a permute of W
        build = _Acc(2 * mm * nn * r, item * (mm * nn + 2 * mm * (nl + nr) * r), 0, 3, prod(rows))
        grad_halves = _Acc(gh, item * (2 * mm * nn + 4 * mm * (nl + nr) * r), 0, 6, 2 * prod(rows))
    else:
        build = _Acc(2 * mm * nn * r, item * mm * nn, 2 * item * mm * nn, 3, 0)
        grad_halves = _Acc(gh, item * 2 * mm * nn, 2 * item * mm * nn, 3, 0)
    if sliced_build(dims4, r):  # written in place, a slice at a time: W streamed once, a launch per slice
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


def best_grouping(
    dims: Dims,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> Groups:
    """The cheapest partition of the cores into consecutive groups: the fastest entry of :func:`grouping_front`.

    A group's step cost depends only on its own boundaries (they fix the state sizes before and after it), so
    the optimum over all ``2^(d-1)`` groupings takes ``O(d^2)`` step evaluations. The single group of all cores
    (W itself) is left to the full plans, unless a layer's inference cache may keep it (a tiny W).
    """
    return grouping_front(dims, direction, batch, item, grad, m, cached, need=need)[0][2]


def grouping_front(
    dims: Dims,
    direction: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    recompute: bool = False,
    need: Need = BOTH,
) -> list[tuple[float, int, Groups]]:
    """The groupings no other grouping beats in both time and kept memory: ``(seconds, saved bytes, groups)``.

    A dynamic programme over split points that keeps at each one the Pareto front of (time, activations kept
    for backward): both add up over the groups. Fastest first; each later entry keeps strictly less.
    ``recompute``: of sweeps that recompute their states in backward (their cost adds up over groups too).
    """
    d = len(dims[0])
    fronts: list[list[tuple[float, int, Groups]]] = [[(0.0, 0, ())]]
    for j in range(1, d + 1):
        found: list[tuple[float, int, Groups]] = []
        for i in range(j):
            if i == 0 and j == d > 1 and (grad or not (cached and cacheable(dims, 0, d))):
                continue  # one group is W, which the full plans build better (split in the middle, no autograd)
            c = sweep_cost(dims, ((i, j),), direction, batch, item, grad, m, cached, recompute, need)
            found += [(t + c.seconds, s + c.saved_bytes, g + ((i, j),)) for t, s, g in fronts[i]]
        # by time, then kept bytes: an insertion sort in explicit loops (dynamo cannot trace a sort keyed by
        # tuples, and planning is traced under torch.compile)
        ordered: list[tuple[float, int, Groups]] = []
        for e in found:
            k = len(ordered)
            while k > 0 and (
                ordered[k - 1][0] > e[0] or (ordered[k - 1][0] == e[0] and ordered[k - 1][1] > e[1])
            ):
                k -= 1
            ordered.insert(k, e)
        front: list[tuple[float, int, Groups]] = []
        for e in ordered:
            if not front or e[1] < front[-1][1]:
                front.append(e)
        fronts.append(front)
    return fronts[d]


def full_programs(d: int, grad: bool = False) -> list[Program]:
    """Full reconstruction for each split; in training each also in a keep-W and a rebuild-W variant."""
    splits = range(1, d) if d > 1 else (1,)
    variants = ("recompute", "keep") if grad else ("recompute",)
    return [("full", v, ((0, s), (s, d))) for s in splits for v in variants]


def candidates(
    dims: Dims,
    strategy: str,
    batch: int,
    item: int,
    grad: bool,
    m: Machine,
    cached: bool = False,
    need: Need = BOTH,
) -> list[Program]:
    """The programs a strategy chooses from (``auto``: every full split and the best grouping each way)."""
    d = len(dims[0])
    if strategy == "full":
        return full_programs(d, grad)
    if strategy in ("cores_rtl", "cores_ltr"):
        return [("sweep", strategy[-3:], tuple((k, k + 1) for k in range(d)))]
    # on equal estimates (the two directions often mirror each other) training takes ltr, which ran 0-13% faster
    # there on the benchmark cases (784x625 and 4096x4096 at batch 64) on the Intel host; inference takes rtl. On the
    # 2-core EPYC the two directions trained within 4% of each other when timed alone, side by side (784x625 rank 4
    # at batch 64 and 1024, 4096x4096 rank 16 at batch 64); timed among other plans (calibrate, cell.py) either
    # one read up to 2.3x slower, in different runs. Below SWEEP_FUNCTION_MIN_BATCH (autograd's own products) training
    # takes rtl: 11-15% faster at batch 1 on the Intel host (4096x4096 ranks 16 and 64, 784x625 rank 16, 768x3072
    # rank 64; cell.py --alone, both orders)
    both = ("ltr", "rtl") if grad and batch >= SWEEP_FUNCTION_MIN_BATCH else ("rtl", "ltr")
    directions = (strategy[-3:],) if strategy in ("grouped_rtl", "grouped_ltr") else both
    sweeps: list[Program] = [
        ("sweep", dr, best_grouping(dims, dr, batch, item, grad, m, cached, need)) for dr in directions
    ]
    return sweeps if strategy != "auto" else full_programs(d, grad) + sweeps


def choose(
    dims: Dims,
    strategy: str,
    batch: int,
    item: int,
    device_type: str,
    grad: bool,
    cached: bool = False,
    max_saved: int | None = None,
    need: Need = BOTH,
    fold: bool = True,
) -> Program:
    """The cheapest program of ``strategy`` for this TT-matrix, batch size, dtype size, device and grad mode
    (``need``: which gradients a training backward computes; ``fold``: False prices no narrow folds, as the
    executors run none under torch.compile).

    ``cached``: sweeps' merged groups are kept between calls (a layer's inference), so merging is free.
    ``max_saved``: in training, the fastest program keeping at most this many bytes for backward; when none
    does, the one keeping least (the sweeps are then chosen from :func:`grouping_front`, not by time alone).
    """
    m = machine(device_type, item, fold)
    if max_saved is not None and grad:
        return _choose_within(dims, strategy, batch, item, m, cached, max_saved, need)
    top: tuple[float, int, Program] | None = None
    for prog in candidates(dims, strategy, batch, item, grad, m, cached, need):
        c = estimate(dims, prog, batch, item, grad, m, cached, need)
        # on equal estimates the one keeping less for backward, then the candidates' order
        if top is None or c.seconds < top[0] or (c.seconds == top[0] and c.saved_bytes < top[1]):
            top = (c.seconds, c.saved_bytes, prog)
    assert top is not None
    return top[2]


def _choose_within(
    dims: Dims, strategy: str, batch: int, item: int, m: Machine, cached: bool, max_saved: int, need: Need
) -> Program:
    progs: list[Program] = []
    if strategy in ("auto", "full"):
        progs += full_programs(len(dims[0]), True)
    if strategy in ("cores_rtl", "cores_ltr"):
        ((_, dr, groups),) = candidates(dims, strategy, batch, item, True, m, cached, need)
        progs += [("sweep", dr, groups), ("resweep", dr, groups)]
    elif strategy != "full":
        both = ("ltr", "rtl") if batch >= SWEEP_FUNCTION_MIN_BATCH else ("rtl", "ltr")  # (as in candidates)
        for dr in (strategy[-3:],) if strategy in ("grouped_rtl", "grouped_ltr") else both:
            for kind in ("sweep", "resweep"):
                front = grouping_front(dims, dr, batch, item, True, m, cached, kind == "resweep", need)
                fits = [g for _, s, g in front if s <= max_saved]
                progs.append((kind, dr, fits[0] if fits else front[-1][2]))
    costs = [(prog, estimate(dims, prog, batch, item, True, m, cached, need)) for prog in progs]
    # Below SWEEP_FUNCTION_MIN_BATCH the cost model prices autograd's folding copies for keeping sweeps but not
    # the Function's overhead of recomputing ones, which measured 1.1-1.4x slower at batch 1, not faster: there
    # they are candidates only where no keeping sweep fits.
    if batch < SWEEP_FUNCTION_MIN_BATCH and any(
        p[0] == "sweep" and c.saved_bytes <= max_saved for p, c in costs
    ):
        costs = [(p, c) for p, c in costs if p[0] != "resweep"]

    best: tuple[tuple[int, float, float], Program] | None = None
    for prog, c in costs:  # (explicit loops, as in grouping_front: traced under torch.compile)
        # within the limit: fastest, on an exact tie the one keeping less (as choose() without a limit); else
        # least kept. (A branch, not the comparison itself in the tuple: with a symbolic batch, the dynamo of
        # torch 2.7 cannot order tuples of symbolic booleans)
        over = c.saved_bytes > max_saved
        rank: tuple[int, float, float] = (
            (1, c.saved_bytes, c.seconds) if over else (0, c.seconds, c.saved_bytes)
        )
        if best is None or rank < best[0]:
            best = (rank, prog)
    assert best is not None
    return best[1]


def order_floor(dims: Dims, batch: int) -> int:
    """The fewest FLOPs of any order of pairwise contractions computing ``x @ W^T`` from ``x`` and the cores.

    A dynamic programme over subsets of the ``d + 1`` operands (``3^(d+1)`` splits): the cost of a subset is the
    cheapest split into two contracted subsets plus ``2 prod(sizes of the indices involved)`` for their product
    (``1x`` when nothing is summed). Indices are the batch, the row and column modes and the inner ranks; an
    index stays in a partial result while an operand outside it or the output carries it. Sweeps, groupings and
    building W are all such orders, so no plan does fewer FLOPs forward (merges included).
    """
    rows, cols, ranks = dims
    d = len(rows)
    size: dict[str, int] = {"b": batch}
    ops: list[frozenset[str]] = [frozenset(["b", *(f"n{k}" for k in range(d))])]
    for k in range(d):
        size[f"m{k}"], size[f"n{k}"] = rows[k], cols[k]
        idx = {f"m{k}", f"n{k}"}
        for r in (k, k + 1):
            if 0 < r < d:
                size[f"r{r}"] = ranks[r]
                idx.add(f"r{r}")
        ops.append(frozenset(idx))
    out = frozenset(["b", *(f"m{k}" for k in range(d))])
    full = (1 << (d + 1)) - 1

    def kept(s: int) -> frozenset[str]:
        inside = frozenset().union(*(ops[i] for i in range(d + 1) if s >> i & 1))
        outside = frozenset().union(*(ops[i] for i in range(d + 1) if not s >> i & 1))
        return inside & (outside | out)

    best = {1 << i: 0 for i in range(d + 1)}
    keep = {s: kept(s) for s in range(1, full + 1)}
    for s in range(1, full + 1):  # (every proper subset of s is smaller than s)
        if s in best:
            continue
        cheapest = None
        a = (s - 1) & s
        while a:
            b = s ^ a
            if a < b:  # each unordered split once
                involved = keep[a] | keep[b]
                flops = prod([size[i] for i in involved]) * (2 if involved - keep[s] else 1)
                total = best[a] + best[b] + flops
                if cheapest is None or total < cheapest:
                    cheapest = total
            a = (a - 1) & s
        assert cheapest is not None
        best[s] = cheapest
    return best[full]
