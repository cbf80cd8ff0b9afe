"""tensortrain.contraction's cost model and planner: FLOPs, bytes, kept activations and times of every plan,
worked by hand from the model's rules and checked against what the plans run (FlopCounterMode, autograd), and
the planner's choices. Running the plans against the dense oracle is tests/test_contraction.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from strategies import NARROW, matrix_specs, random_cores, seeds, zero_cores
from tensortrain import contraction as C


def _by_name(plans: list[C.ContractionPlan]) -> dict[str, C.ContractionPlan]:
    return {p.program: p for p in plans}  # (kind "resweep": a sweep recomputing its step inputs)


def test_flop_counts_by_hand():
    # W: rows (2, 3), cols (4, 5), ranks (1, 3, 1); batch 7. Cores: G0 (1, 2, 4, 3), G1 (3, 3, 5, 1).
    cores = [torch.zeros(1, 2, 4, 3), torch.zeros(3, 3, 5, 1)]
    plans = _by_name(C.enumerate_plans(cores, 7))
    # right to left, core by core: G1 maps 7*4 slices (5,) -> (3*3,): 2*28*5*9; then G0 maps 7 slices of
    # (4*3, 3) to (2, 3): 2*7*2*12*3.
    assert plans["sweep", "rtl", ((0, 1), (1, 2))].flops_forward == 2 * 28 * 5 * 9 + 2 * 7 * 2 * 12 * 3
    # left to right: G0 maps 7 slices (4, 5) -> (2*3, 5): 2*7*6*4*5; then G1 maps 7*2 slices (3*5,) -> (3,).
    assert plans["sweep", "ltr", ((0, 1), (1, 2))].flops_forward == 2 * 7 * 6 * 4 * 5 + 2 * 14 * 3 * 15
    # one group: merge (2*4, 3) @ (3, 15): 2*8*3*15, then 2*7*6*20 for the product.
    assert plans["sweep", "rtl", ((0, 2),)].flops_forward == 2 * 8 * 3 * 15 + 2 * 7 * 6 * 20
    # full: build W = (8, 3) @ (3, 15) (2*6*20*3), then the dense GEMM 2*7*6*20.
    full = plans["full", "recompute", ((0, 1), (1, 2))]
    assert full.flops_forward == 2 * 6 * 20 * 3 + 2 * 7 * 6 * 20
    assert full.dense_flops == 2 * 7 * 6 * 20
    grad = _by_name(C.enumerate_plans(cores, 7, requires_grad=True))
    sweep = grad["sweep", "rtl", ((0, 1), (1, 2))]
    assert sweep.flops_backward == 2 * sweep.flops_forward
    # training keeps the 7*4*3*3 intermediate of the first step; inference keeps nothing
    assert sweep.saved_bytes == 4 * 7 * 4 * 9
    assert plans["sweep", "rtl", ((0, 1), (1, 2))].saved_bytes == 0


def test_planner_picks_full_for_big_batches_and_ranks():
    cores = zero_cores((8, 8, 8, 8), (8, 8, 8, 8), 64)
    for grad in (False, True):
        assert C.plan(cores, 1024, requires_grad=grad).kind == "full"


def test_planner_picks_a_sweep_for_small_batches_and_ranks():
    cores = zero_cores((5, 5, 5, 5), (4, 7, 4, 7), 4)
    for batch in (1, 64, 1024):
        p = C.plan(cores, batch, requires_grad=False)
        assert p.kind == "sweep"
        assert p.flops_forward < p.dense_flops
    assert "sweep" in str(C.plan(cores, 1)) and "GFLOP" in str(C.plan(cores, 1))


def test_auto_is_the_cheapest_candidate():
    cores = zero_cores((4, 8, 8, 12), (4, 4, 6, 8), 16)
    for batch in (1, 64, 1024):
        best = min(p.est_seconds for p in C.enumerate_plans(cores, batch))
        assert C.plan(cores, batch, requires_grad=False).est_seconds == pytest.approx(best)


def test_forced_strategies_are_respected():
    cores = zero_cores((5, 5, 5, 5), (4, 7, 4, 7), 4)
    assert C.plan(cores, 8, strategy="full").kind == "full"
    p = C.plan(cores, 8, strategy="cores_ltr")
    assert (p.kind, p.direction, p.groups) == ("sweep", "ltr", ((0, 1), (1, 2), (2, 3), (3, 4)))
    assert C.plan(cores, 8, strategy="grouped_rtl").direction == "rtl"


def test_reported_flops_do_not_depend_on_pricing(gen):
    """Slow training GEMMs on DRAM-sized states are priced double in the time estimate only: a plan reports the
    FLOPs it does (the forward's the same with and without gradients), and batch 0 prints no ratio."""
    w = tt.random_matrix([[16, 16, 16], [16, 16, 16]], tt_rank=16, generator=gen)
    for strategy in ("cores_rtl", "cores_ltr"):
        p0 = C.plan(w, 1024, requires_grad=False, strategy=strategy)
        p1 = C.plan(w, 1024, requires_grad=True, strategy=strategy)
        assert p0.flops_forward == p1.flops_forward
        assert p1.flops_backward == 2 * p1.flops_forward
    text = str(C.plan(tt.random_matrix([[4, 8], [7, 4]], tt_rank=4, generator=gen), 0))
    assert "(against the dense product's 0 GFLOP)" in text and "x more" not in text


def test_tiny_layers_do_not_build_w_for_inference():
    """The full plan's per-call overhead (~50 us of Python and dispatch) was not priced: tiny layers built W
    at 1.4-2.4x the time of a sweep (measured on the 2-core CPU); training plans are priced as before."""
    w = tt.random_matrix([[1, 1, 1, 1], [4, 4, 4, 8]], tt_rank=4)  # 1 x 512
    for batch in (1, 64):
        assert C.plan(w, batch, requires_grad=False).kind == "sweep"
    layer = tt.nn.TTLinear(64, 48, tt_rank=2, in_dims=(4, 4, 4), out_dims=(4, 4, 3))
    assert layer.plan(1, requires_grad=False).kind == "sweep"
    assert layer.plan(64, requires_grad=True).kind == "full"  # unchanged: building W measured faster there


def test_training_states_past_the_mmap_threshold_are_priced_with_page_faults(monkeypatch):
    """A kept state of 32 MiB or more, and its gradient, are fresh pages on every step: out dims (4, 4, 8, 8)
    make 1024x1024 rank 8 keep 32 MiB at batch 1024, and its sweep measured 58 ms against 34 ms for the full
    plan (priced without the page faults, the sweep was chosen)."""
    from tensortrain.contraction import machine as hw

    cores = zero_cores((4, 4, 8, 8), (4, 4, 8, 8), 8)
    assert C.plan(cores, 1024, requires_grad=True).kind == "full"
    plans = _by_name(C.enumerate_plans(cores, 1024, requires_grad=True))
    sweep = plans["sweep", "rtl", ((0, 2), (2, 4))]
    assert sweep.saved_bytes >= 32 * 2**20
    monkeypatch.setattr(hw, "BLOCKED_ABOVE", 2**40)  # as if no state reached the threshold
    cheap = _by_name(C.enumerate_plans(cores, 1024, requires_grad=True))
    touch = hw.MACHINES["cpu"].touch
    assert sweep.est_seconds - cheap[sweep.program].est_seconds == pytest.approx(2 * 32 * 2**20 / touch)
    # a recomputing sweep keeps its states in reused scratch (forward and backward): only the gradient is fresh
    again = plans["resweep", "rtl", ((0, 2), (2, 4))]
    assert again.est_seconds - cheap[again.program].est_seconds == pytest.approx(32 * 2**20 / touch)
    assert (
        cheap["sweep", "rtl", ((0, 2), (2, 4))].est_seconds
        < plans["full", "keep", ((0, 2), (2, 4))].est_seconds
    )


def test_backward_flops_of_a_one_core_full_plan(gen):
    """With one core the right half is a constant: only the left half has a gradient (priced twice)."""
    from torch.utils.flop_counter import FlopCounterMode

    w = tt.random_matrix([[4], [5]], tt_rank=1, dtype=torch.float64)
    for plan in [p for p in C.enumerate_plans(w, 3, requires_grad=True) if p.kind == "full"]:
        cores = [c.clone().requires_grad_() for c in w.tt_cores]
        y = C.linear(
            torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True), cores, strategy=plan
        )
        with FlopCounterMode(display=False) as counter:
            y.backward(torch.ones_like(y))
        assert plan.flops_backward == counter.get_total_flops()


def test_chunked_inference_sweeps_are_priced_as_cache_resident(monkeypatch):
    """An inference sweep whose states outgrow the cache runs in cache-sized chunks: their traffic is priced at
    CHUNKED_SPEEDUP times the stream bandwidth (reported bytes unchanged). Priced in full, the planner built W
    for 768x3072 rank 16 at batch 1024, where the sweep measured 0.92x nn.Linear's time against 1.05x."""
    from tensortrain.contraction import cost
    from tensortrain.contraction import machine as hw
    from tensortrain.contraction.checks import dims_of

    layer = tt.nn.TTLinear(768, 3072, tt_rank=16, in_dims=(4, 4, 6, 8), out_dims=(4, 8, 8, 12))
    dims = dims_of(tuple(layer.cores))
    prog = ("sweep", "rtl", ((0, 2), (2, 4)))
    m = hw.machine("cpu", 4)
    chunked = cost.estimate(dims, prog, 1024, 4, False, m, cached=True)
    whole = cost.estimate(dims, prog, 64, 4, False, m, cached=True)  # states fit the cache: not chunked
    monkeypatch.setattr(hw, "CHUNKED_SPEEDUP", 1.0)
    full_price = cost.estimate(dims, prog, 1024, 4, False, m, cached=True)
    assert full_price.bytes_forward == chunked.bytes_forward
    assert full_price.seconds > chunked.seconds
    assert cost.estimate(dims, prog, 64, 4, False, m, cached=True) == whole
    monkeypatch.undo()
    assert layer.plan(1024, requires_grad=False).kind == "sweep"


def _merge_cost(rows, cols, ranks, i, j, item):
    """(FLOPs, bytes, launches, bytes permuted) of merging cores i..j-1 by the cost model's rules: rank products
    left to right, each partial product written once, then one permute (read and write) of the merged group; one
    launch per product and per permute."""
    if j - i == 1:
        return 0, 0, 0, 0
    p, flops, written = ranks[i] * rows[i] * cols[i], 0, 0
    for k in range(i + 1, j):
        flops += 2 * p * ranks[k] * rows[k] * cols[k] * ranks[k + 1]
        p *= rows[k] * cols[k]
        written += item * p * ranks[k + 1]
    permuted = 2 * item * p * ranks[j]
    return flops, written + permuted, 2 * (j - i), permuted


def _rtl_sweep_traffic(rows, cols, ranks, groups, batch, item):
    """Bytes of a right-to-left inference sweep: each step reads its state and its super-core and writes its
    output, on top of the merges (however the batch is chunked)."""
    total = sum(_merge_cost(rows, cols, ranks, i, j, item)[1] for i, j in groups)
    for i, j in reversed(groups):
        outer, k = math.prod(cols[:i]) * batch, math.prod(cols[i:j]) * ranks[j]
        p, q = math.prod(rows[j:]), math.prod(rows[i:j]) * ranks[i]
        total += item * (outer * k * p + outer * q * p + q * k)
    return total


def test_reported_traffic_and_time_follow_the_documented_model():
    """bytes_forward and est_seconds, worked by hand from the model's rules: a merging sweep (on the CPU and a
    GPU), a chunked sweep (chunks change the time, not the bytes), and full plans whose W is built by batched
    GEMMs, a slice at a time or in blocks (inference; training, W rebuilt or kept). Other tests compare these
    estimates only with each other."""
    from tensortrain.contraction import cost
    from tensortrain.contraction import machine as hw
    from tensortrain.contraction.checks import dims_of

    cpu = hw.machine("cpu", 4)
    # 784 x 625 rank 4 at batch 64, two merged pairs: 14 launches (4 per merge, 3 per step), 64 slices (the step
    # over 25-column slices; the last step is one GEMM), nothing folded or chunked
    rows, cols, ranks, groups = (5, 5, 5, 5), (4, 7, 4, 7), (1, 4, 4, 4, 1), ((0, 2), (2, 4))
    sweep_cores = zero_cores(rows, cols, 4)
    sweep = _by_name(C.enumerate_plans(sweep_cores, 64))["sweep", "rtl", groups]
    merges = [_merge_cost(rows, cols, ranks, i, j, 4) for i, j in groups]
    assert sweep.bytes_forward == _rtl_sweep_traffic(rows, cols, ranks, groups, 64, 4) == 1883904
    seconds = sweep.flops_forward / cpu.flops + sweep.bytes_forward / cpu.stream  # (stream == permute here)
    seconds += (sum(m[2] for m in merges) + 3 * len(groups)) * cpu.launch + 64 * cpu.slice
    assert cpu.stream == cpu.permute and sweep.est_seconds == pytest.approx(seconds, rel=1e-12)
    # its full plan split after core 2 at batch 1: W built by GEMMs batched over its 625 rows (rank 4 is small
    # beside the 28 columns of each half), reading broadcast copies of the halves; then the GEMM, and the per-call
    # overhead of a full plan
    mm, nn, r = 625, 784, 4
    full = _by_name(C.enumerate_plans(sweep_cores, 1))["full", "recompute", groups]
    build = (2 * mm * nn * r, 4 * (mm * nn + 2 * mm * (28 + 28) * r))
    gemm = (2 * mm * nn, 4 * (nn + mm * nn + mm))
    assert full.bytes_forward == sum(m[1] for m in merges) + build[1] + gemm[1]
    seconds = full.flops_forward / cpu.flops + full.bytes_forward / cpu.stream
    seconds += (4 + 4 + 3 + 1) * cpu.launch + mm * cpu.slice + cpu.full_call
    assert full.flops_forward == sum(m[0] for m in merges) + build[0] + gemm[0]
    assert full.est_seconds == pytest.approx(seconds, rel=1e-12)
    # on a GPU the permutes are priced at their own bandwidth
    gpu = hw.machine("cuda", 4)
    permuted = sum(m[3] for m in merges)
    seconds = sweep.flops_forward / gpu.flops + (sweep.bytes_forward - permuted) / gpu.stream
    seconds += permuted / gpu.permute + 14 * gpu.launch + 64 * gpu.slice
    priced = cost.estimate(dims_of(sweep_cores), ("sweep", "rtl", groups), 64, 4, False, gpu)
    assert gpu.stream != gpu.permute and priced.seconds == pytest.approx(seconds, rel=1e-12)
    # 4096 x 4096 rank 16 at batch 1024: states of 268 MB run in chunks, still reading and writing every byte
    rows = cols = (8, 8, 8, 8)
    ranks = (1, 16, 16, 16, 1)
    w = zero_cores(rows, cols, 16)
    chunked = _by_name(C.enumerate_plans(w, 1024))["sweep", "rtl", groups]
    assert chunked.bytes_forward == _rtl_sweep_traffic(rows, cols, ranks, groups, 1024, 4)
    # ... priced as cache-resident at CHUNKED_SPEEDUP, each chunk 3 launches: chunks of 32 rows (8 MiB states), so
    # a batch of 1000 runs in 32 chunks per step (the last one short); 1000 slices of 64 columns in the last step
    chunked = _by_name(C.enumerate_plans(w, 1000))["sweep", "rtl", groups]
    merges = [_merge_cost(rows, cols, ranks, i, j, 4) for i, j in groups]
    steps = chunked.bytes_forward - sum(m[1] for m in merges)
    seconds = chunked.flops_forward / cpu.flops + sum(m[1] for m in merges) / cpu.stream
    seconds += steps / (cpu.stream * hw.CHUNKED_SPEEDUP) + (8 + 2 * 3 * 32) * cpu.launch + 1000 * cpu.slice
    assert chunked.est_seconds == pytest.approx(seconds, rel=1e-12)
    # a full plan split after core 2 builds W one left row index at a time, in place: W written once
    at_1 = _by_name(C.enumerate_plans(w, 1))
    sliced = at_1["full", "recompute", ((0, 2), (2, 4))]
    mm = nn = 4096
    assert sliced.bytes_forward == sum(m[1] for m in merges) + 4 * mm * nn + 4 * (nn + mm * nn + mm)
    # a W of 64 MiB split after core 3, built in blocks of 8 MiB: written, read and written again (3 passes),
    # then the GEMM reads x and W and writes y; the halves' gradients read and write 4 W-sized passes
    merge = _merge_cost(rows, cols, ranks, 0, 3, 4)
    full = at_1["full", "recompute", ((0, 3), (3, 4))]
    assert full.bytes_forward == merge[1] + 3 * 4 * mm * nn + 4 * (nn + mm * nn + mm)
    blocks = 4 * mm * nn // hw.BLOCK_BYTES
    assert hw.block_rows((64, 64, 32, 64), 4) == 0 < hw.block_rows((64, 64, 64, 64), 4)  # (32 MiB: whole)
    build = (2 * 16 * mm * nn, 3 * 4 * mm * nn, 3 * blocks)  # (FLOPs, bytes, launches)
    gemm = (2 * 1024 * mm * nn, 4 * (1024 * nn + mm * nn + 1024 * mm), 1)
    halves = (4 * 16 * mm * nn, 4 * 4 * mm * nn, 3 * blocks)
    # training, W rebuilt: forward = merges + build + GEMM; backward = rebuild + dX GEMM + dW GEMM + the halves'
    # gradients + the merges' backward (twice a merge); the two halves kept, (512 x 512 x 16) and (16 x 8 x 8),
    # are charged as traffic once more (the merge's partial products, also reported as kept, are not)
    parts = [merge[:3], build, gemm] + [build, gemm, gemm, halves, merge[:3], merge[:3]]
    training = _by_name(C.enumerate_plans(w, 1024, requires_grad=True))
    trained = training["full", "recompute", ((0, 3), (3, 4))]
    seconds = sum(f / cpu.flops + b / cpu.stream + n * cpu.launch for f, b, n in parts)
    seconds += 4 * 16 * (512 * 512 + 8 * 8) / cpu.stream
    assert trained.flops_forward == sum(f for f, _, _ in parts[:3])
    assert trained.est_seconds == pytest.approx(seconds, rel=1e-12)
    # W kept instead: no rebuild in backward, W charged as traffic with the halves, and its fresh pages
    kept = training["full", "keep", ((0, 3), (3, 4))]
    parts = [merge[:3], build, gemm] + [gemm, gemm, halves, merge[:3], merge[:3]]
    seconds = sum(f / cpu.flops + b / cpu.stream + n * cpu.launch for f, b, n in parts)
    seconds += 4 * (16 * (512 * 512 + 8 * 8) + mm * nn) / cpu.stream + 4 * mm * nn / cpu.touch
    assert kept.est_seconds == pytest.approx(seconds, rel=1e-12)


def test_a_training_sweep_past_the_cache_is_priced_by_hand():
    """A training sweep whose states outgrow the last-level cache: each step's traffic at the permute bandwidth
    and its FLOPs counted twice in the time (they ran at a third of the GEMM rate), backward twice the forward,
    the kept state charged as traffic once more and the state's and its gradient's fresh pages priced."""
    from tensortrain.contraction import machine as hw

    cpu = hw.machine("cpu", 4)
    # 512 x 512 as (8, 64) x (64, 8) at rank 4, batch 1024, cores one by one from the right: the first step maps
    # (1024 * 64, 8) to (1024 * 64, 256) (64 MiB out: past the cache on its output alone), the second (1024, 256,
    # 64) slices to (1024, 8, 64); neither folds (one GEMM; slices 64 wide)
    cores = zero_cores((8, 64), (64, 8), 4)
    program = ("sweep", "rtl", ((0, 1), (1, 2)))
    plan = _by_name(C.enumerate_plans(cores, 1024, requires_grad=True))[program]
    state = 1024 * 64 * 256  # the first step's output: the second step's input, kept for backward
    flops = 2 * 1024 * 64 * 256 * 8 + 2 * 1024 * 8 * 256 * 64
    traffic = 4 * (1024 * 64 * 8 + state + 256 * 8) + 4 * (state + 1024 * 8 * 64 + 8 * 256)
    forward = 2 * flops / cpu.flops + traffic / cpu.permute + 6 * cpu.launch + 1024 * cpu.slice
    seconds = 3 * forward + 4 * state / cpu.stream + 2 * 4 * state / cpu.touch
    assert (plan.flops_forward, plan.flops_backward, plan.bytes_forward) == (flops, 2 * flops, traffic)
    assert plan.saved_bytes == 4 * state and state * 4 > hw.CACHE_BYTES
    assert plan.est_seconds == pytest.approx(seconds, rel=1e-12)
    # frozen cores: backward computes the states' gradients only and keeps nothing; only the gradient's pages
    # are fresh
    frozen = _by_name(C.enumerate_plans(cores, 1024, requires_grad=True, cores_require_grad=False))[program]
    assert (frozen.flops_backward, frozen.saved_bytes) == (flops, 0)
    assert frozen.est_seconds == pytest.approx(2 * forward + 4 * state / cpu.touch, rel=1e-12)


# FLOPs of the best pairwise contraction order, by opt_einsum 3.4.0's exhaustive 'optimal' path search (an
# independent implementation) on the benchmark layers: (row dims, col dims, ranks, batch) -> FLOPs
OPT_EINSUM_OPTIMAL = {
    ((5, 5, 5, 5), (4, 7, 4, 7), (1, 4, 4, 4, 1), 1024): 259031040,
    ((5, 5, 5, 5), (4, 7, 4, 7), (1, 16, 16, 16, 1), 64): 76697600,
    ((8, 8, 8, 8), (8, 8, 8, 8), (1, 64, 64, 64, 1), 64): 4362076160,
    ((8, 8, 8, 8), (8, 8, 8, 8), (1, 16, 16, 16, 1), 1024): 17184063488,
    ((4, 8, 8, 12), (4, 4, 6, 8), (1, 16, 64, 64, 1), 64): 642777088,
    ((4, 8, 8, 12), (4, 4, 6, 8), (1, 16, 64, 64, 1), 1): 54525952,
}


def test_flop_floor_is_the_best_order_of_all():
    for (rows, cols, ranks, batch), want in OPT_EINSUM_OPTIMAL.items():
        cores = [torch.zeros(ranks[k], rows[k], cols[k], ranks[k + 1]) for k in range(len(rows))]
        assert C.flop_floor(cores, batch) == want
    # one core: the dense product itself; nothing to order
    w = torch.zeros(1, 6, 5, 1)
    assert C.flop_floor([w], 3) == 2 * 3 * 6 * 5
    with pytest.raises(ValueError, match="batch"):
        C.flop_floor([w], -1)


@given(spec=matrix_specs(max_d=4, max_mode=4, max_rank=5), batch=st.sampled_from([1, 3, 64]), seed=seeds)
def test_no_plan_does_fewer_flops_than_the_floor(spec, batch, seed):
    raw, ranks = spec
    cores = random_cores(raw, ranks, gen=torch.Generator().manual_seed(seed))
    floor = C.flop_floor(cores, batch)
    plans = C.enumerate_plans(cores, batch)
    assert all(p.flops_forward >= floor for p in plans)


def test_narrow_steps_are_priced_as_folded():
    """The cost model prices a folded step as one GEMM and two transposes (no batched-GEMM slices), and only on
    a device whose executors fold (the CPU's), not at batch 1, and not for wide slices or small sides."""
    from tensortrain.contraction import cost
    from tensortrain.contraction import machine as hw

    n = 2**15  # slices: enough work for any of these shapes
    assert hw.folds_narrow(n, 128, 4, 32, 4, True) and hw.folds_narrow(n, 128, 4, 32, 8, True)
    assert not hw.folds_narrow(n, 128, 4, 32, 4, False)  # a device that does not fold
    assert not hw.folds_narrow(n, 128, 16, 32, 4, True)  # wide slices: the batched GEMM is faster
    assert not hw.folds_narrow(n, 4, 4, 4, 4, True)  # small sides
    assert not hw.folds_narrow(n, 4, 4, 128, 4, True)  # or one small side
    assert not hw.folds_narrow(n, 128, 4, 4, 4, True)
    assert not hw.folds_narrow(1, 512, 4, 512, 4, True)  # one slice: one GEMM already
    assert hw.folds_narrow(n, 16, 10, 16, 4, True) and not hw.folds_narrow(n, 16, 10, 16, 8, True)
    assert hw.folds_narrow(n, 8, 6, 8, 4, True) and not hw.folds_narrow(n, 8, 8, 8, 4, True)
    few = hw.NARROW_FOLD_MIN // (128 * 4 * 32)  # too little work: the copies cost more than they save
    assert hw.folds_narrow(few, 128, 4, 32, 4, True) and not hw.folds_narrow(few - 1, 128, 4, 32, 4, True)
    assert hw.narrow_fold("cpu") and not any(map(hw.narrow_fold, ("cuda", "mps", "meta")))
    dims = C.dims_of(random_cores(*NARROW, gen=torch.Generator().manual_seed(0)))
    for batch, folds in ((37, True), (1, False), (31, False)):  # 31 x (128 x 4 x 32) < NARROW_FOLD_MIN
        acc, _ = cost.step_cost(dims, 0, 1, "rtl", batch, 4, False, fold=True)  # (K, P, Q) = (128, 4, 32)
        plain, _ = cost.step_cost(dims, 0, 1, "rtl", batch, 4, False, fold=False)
        assert plain.slices == batch * 1 and plain.permute == 0
        if folds:
            assert acc.slices == 0 and acc.permute == 2 * 4 * batch * (128 * 4 + 32 * 4)
            assert acc.flops == plain.flops and acc.launches == plain.launches + 2
        else:
            assert acc == plain


def test_chunked_steps_are_discounted_only_where_their_gemms_are_wide(monkeypatch):
    """A chunked inference step's traffic gets the cache discount (``chunked``, priced at CHUNKED_SPEEDUP) only
    where its GEMMs are wide: one GEMM (P == 1), slices of at least WIDE_SLICE columns, or narrow slices folded
    into one GEMM. Narrow slices run as a batched GEMM keep the full price (``stream``): priced as cached, a
    grouping with 4-column slices won and measured 2.7x slower."""
    from tensortrain.contraction import cost
    from tensortrain.contraction import machine as hw

    # small states outgrow a small "cache": every step below runs in chunks
    monkeypatch.setattr(hw, "CACHE_BYTES", 2**16)
    monkeypatch.setattr(hw, "CHUNK_BYTES", 2**15)

    def step(rows, cols, ranks, i, fold=False):
        dims = (rows, cols, ranks)
        acc, _ = cost.step_cost(dims, i, i + 1, "rtl", 64, 4, False, fold=fold)
        outer, k, p, q = cost.step_shape(dims, i, i + 1, "rtl")
        traffic = 4 * (64 * outer * (k * p + q * p) + q * k)
        assert acc.launches > 3  # (3 per chunk)
        return acc, traffic, p

    (rows, cols), ranks = NARROW
    wide = hw.WIDE_SLICE
    for m1, i, discounted in ((4, 1, True), (wide, 0, True), (wide - 1, 0, False)):
        acc, traffic, p = step((rows[0], m1), cols, ranks, i)
        assert p == (m1 if i == 0 else 1)
        assert (acc.chunked, acc.stream) == ((traffic, 0) if discounted else (0, traffic))
    # NARROW's first step, (K, P, Q) = (128, 4, 32): folded where the device folds, else batched slices
    folded, traffic, p = step(rows, cols, ranks, 0, fold=True)
    batched, _, _ = step(rows, cols, ranks, 0, fold=False)
    assert p == 4 and folded.slices == 0 and batched.slices > 0
    assert (folded.chunked, folded.stream) == (traffic, 0)
    assert (batched.chunked, batched.stream) == (0, traffic)


def test_w_is_built_by_batched_gemms_up_to_a_quarter_of_each_halfs_columns():
    """The batched build's rule (contraction.machine.batched_build), at its boundary: rank r with both halves'
    column counts at least 4r, where the halves' broadcast copies are at most half of W's permute."""
    from tensortrain.contraction import machine as hw

    for r in (1, 2, 16):
        assert hw.batched_build(r, 4 * r, 4 * r) and hw.batched_build(r, 4 * r, 64 * r)
        assert not hw.batched_build(r, 4 * r - 1, 64 * r) and not hw.batched_build(r, 64 * r, 4 * r - 1)
        nl = nr = 4 * r
        assert 2 * r * (nl + nr) == nl * nr  # at the boundary the copies are exactly half the permute


def test_compiled_plans_price_no_folds(monkeypatch):
    """While compiling the executors fold nothing, so the planner prices no folds there: a geometry whose plan
    differs with and without fold pricing gets the unfolded one."""
    from tensortrain.contraction import plan_cache, search

    cores = random_cores(((32, 8), (8, 16)), (1, 8, 1), gen=torch.Generator().manual_seed(0))
    dims = C.dims_of(cores)
    folding = search.choose(dims, "auto", 256, 8, "cpu", False)
    plain = search.choose(dims, "auto", 256, 8, "cpu", False, fold=False)
    assert folding != plain
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert plan_cache.choose_program(cores, 256, False, "auto") == plain


@pytest.mark.parametrize("batch", [1, 7, 8, 64])
@pytest.mark.parametrize("need", [(True, True), (False, True), (True, False)])
def test_reported_flops_are_what_every_plan_runs(gen, batch, need):
    """A frozen layer's sweeps reported the merges of their groups in flops_backward, which nothing
    differentiates (114688 FLOPs run, 121856 reported for 'sweep rtl [0:2]' at batch 64), and the planner chose
    on those numbers; every plan's forward and backward counts must be what runs."""
    from torch.utils.flop_counter import FlopCounterMode

    w = tt.random_matrix([[4, 2, 8], [7, 1, 4]], tt_rank=[1, 4, 3, 1], dtype=torch.float64, generator=gen)
    x_grad, cores_grad = need
    plans = C.enumerate_plans(
        w, batch, requires_grad=True, input_requires_grad=x_grad, cores_require_grad=cores_grad
    )
    for plan in plans:
        cores = [c.clone().requires_grad_(cores_grad) for c in w.tt_cores]
        x = torch.randn(batch, 28, generator=gen, dtype=torch.float64, requires_grad=x_grad)
        with FlopCounterMode(display=False) as forward:
            y = C.linear(x, cores, strategy=plan)
        with FlopCounterMode(display=False) as backward:
            y.backward(torch.ones_like(y))
        got = (forward.get_total_flops(), backward.get_total_flops())
        assert (plan.flops_forward, plan.flops_backward) == got, plan.describe()


def test_describe_names_only_what_backward_keeps_or_recomputes():
    """A first layer's full plans read 'W kept for backward' / 'W rebuilt in backward', and a frozen layer's
    sweeps 'step inputs recomputed', where backward reads neither; a layer's inference plan did not say that
    its merges come from the layer's cache (so it may report fewer FLOPs than flop_floor)."""
    w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
    first = C.enumerate_plans(w, 64, requires_grad=True, input_requires_grad=False)
    assert {p.describe() for p in first if p.kind == "full"} == {
        "full (W from halves split at core 1, one GEMM)"
    }
    trained = C.enumerate_plans(w, 64, requires_grad=True)
    assert {p.describe().split(", ")[-1] for p in trained if p.kind == "full"} == {
        "W kept for backward)",
        "W rebuilt in backward)",
    }
    frozen = C.enumerate_plans(w, 64, requires_grad=True, cores_require_grad=False)
    assert not any("recomputed" in p.describe() for p in frozen)
    assert any("recomputed" in p.describe() for p in trained)
    layer = tt.nn.TTLinear(784, 625, tt_rank=16)
    cached = layer.plan(1, requires_grad=False)
    assert cached.merges_cached and cached.flops_forward < C.flop_floor(layer.weight, 1)
    assert "the layer's cached merges not counted" in str(cached)
    # a group too large to keep is merged at every call: counted, and not marked
    big = tt.nn.TTLinear(320, 1200, tt_rank=[1, 2, 16, 4, 1], in_dims=(5, 1, 8, 8), out_dims=(16, 3, 5, 5))
    assert big.plan(64, requires_grad=False).describe() == "sweep rtl [0:1][1:4]"
    assert not big.plan(64, requires_grad=False).merges_cached
    # a full plan's cached halves are
    half = tt.nn.TTLinear(960, 25, tt_rank=[1, 2, 2, 8, 1], in_dims=(16, 4, 3, 5), out_dims=(5, 1, 5, 1))
    half.strategy = "full"
    assert half.plan(1024, requires_grad=False).merges_cached
    # ... only when both halves are small enough to keep (784x625 rank 4: split after core 1 or 3, one half is
    # 96x or 58x its cores; W whole, 445x)
    from tensortrain.contraction import cost
    from tensortrain.contraction import machine as hw

    dims = ((5, 5, 5, 5), (4, 7, 4, 7), (1, 4, 4, 4, 1))
    assert [cost.halves_cacheable(dims, split) for split in (1, 2, 3, 4)] == [False, True, False, False]
    cpu = hw.machine("cpu", 4)
    for split, kept in ((1, False), (2, True), (3, False)):
        prog = ("full", "recompute", ((0, split), (split, 4)))
        cached, plain = (cost.estimate(dims, prog, 1, 4, False, cpu, cached=c) for c in (True, False))
        assert (cached.flops_forward < plain.flops_forward) is kept, split
    # (at most CACHE_FACTOR times the cores: 16 x 16 from two cores of 16 is kept, 16 x 20 from 16 + 20 is not)
    assert cost.cacheable(((4, 4), (4, 4), (1, 1, 1)), 0, 2)
    assert not cost.cacheable(((4, 4), (4, 5), (1, 1, 1)), 0, 2)
    # a W small enough to keep whole: one GEMM against it (a single group, which the planner otherwise leaves to
    # the full plans)
    small = tt.nn.TTLinear(192, 128, tt_rank=4, in_dims=(32, 6), out_dims=(32, 4))
    whole = small.plan(1, requires_grad=False)
    assert whole.groups == ((0, 2),) and whole.kind == "sweep" and whole.merges_cached
    assert not C.plan(layer.weight, 1, requires_grad=False).merges_cached
    assert not layer.plan(1, requires_grad=True).merges_cached
