"""The machine model behind :mod:`tensortrain.contraction`: each device as the cost model sees it.

Internal module (no public names). The rough per-device constants (:class:`Machine`, :data:`MACHINES`: GEMM
rate, bandwidths, launch and slice overheads), the thresholds measured on the CPU (its cache and mmap cliffs,
the chunk and block sizes, where narrow batched GEMMs are folded), and the rules derived from them that the
executors (``contraction.sweeps``, ``contraction.full_plan``, ``contraction.training_sweep``) follow and the
cost model (``contraction.cost``) prices alike: each measured number in one place, so that the two never
disagree. Pure Python, so planning traces under ``torch.compile``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__: list[str] = []


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
# GEMMs on DRAM-sized states (contraction.cost.step_cost) the planner's geometric-mean regret (measured time of
# its choice over the fastest plan's) went from 1.124x to 1.073x. Least squares over all five constants predicts
# times about as well but chooses no better. touch: a fresh 64 MiB buffer took ~23 ms more to fill than a reused
# one. cuda: a guess (its caching allocator reuses memory: no page faults). full_call: measured on the 2-core Xeon
# (2026-11-29), the full plan ran 60-90 us above its estimate on tiny layers (512 -> 1, 64 -> 48, 784 -> 10 at
# batch 1-64) where sweeps ran 20-30 us above theirs (tt.contraction.linear of each plan, medians of 201 calls);
# priced, the choice changed only for such layers (none of the benchmark cases), e.g. 512 -> 1 at
# batch 1 176 -> 91 us.
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


CACHE_BYTES = 32 * 2**20  # a sweep's state larger than this is priced at the slower (DRAM, permute) bandwidth
# Inference sweeps whose states would outgrow the cache (CACHE_BYTES) run the batch in chunks of rows whose largest
# state fits in this many bytes (measured best on the 2-core EPYC: 32 rows for 4096x4096 rank 16, 128 for
# 768x3072); states that fit the cache run whole (784x625 rank 4 at batch 1024 ran slower in chunks).
CHUNK_BYTES = 8 * 2**20
# ... and such chunks' traffic is priced at this many times the stream bandwidth where their GEMMs are wide: one
# GEMM, or slices at least WIDE_SLICE columns wide (see contraction.cost.step_cost).
CHUNKED_SPEEDUP = 2.0
WIDE_SLICE = 16
# Training sweeps of at least this many rows run contraction.training_sweep.SweepFunction (below, autograd's
# matmul).
SWEEP_FUNCTION_MIN_BATCH = 8
# A dense W above BLOCKED_ABOVE bytes is built in blocks of BLOCK_BYTES whose GEMM outputs, and a temporary W itself,
# live in reused scratch (see contraction.full_plan.build_full and tensortrain.workspace): above glibc's largest
# mmap threshold (32 MiB) every fresh W costs page faults (~23 ms for 4096x4096). Smaller ones may or may not (a
# 9.4 MiB W built in 8 ms into fresh memory in one process, 3 ms in another; 784x625 and 768x3072 ran 5-10%
# slower blocked in scratch than whole, measured in one process), so they are built whole. 4096x4096 at rank 64
# built in 16 ms with 16 MiB blocks, 16.5 ms with 8 MiB, 18 ms with 4 MiB.
BLOCKED_ABOVE = 32 * 2**20
BLOCK_BYTES = 8 * 2**20


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
