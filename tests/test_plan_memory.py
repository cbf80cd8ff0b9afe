"""Memory-bounded training plans: ``max_saved_bytes`` and sweeps that recompute their step inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, seeds
from tensortrain import contraction as C


def _saved(fn) -> list[torch.Tensor]:
    """The tensors autograd keeps for backward while ``fn()`` runs."""
    kept: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        fn()
    return kept


def _cores(rows, cols, r, gen):
    ranks = (1, *(r,) * (len(rows) - 1), 1)
    return [c.requires_grad_(True) for c in random_cores((rows, cols), ranks, gen=gen)]


@pytest.mark.parametrize("batch", [3, 9])  # 3: below the batch where plain training sweeps use SweepFunction
def test_a_recomputing_sweep_keeps_only_x_and_equals_the_plain_sweep(gen, batch):
    cores = _cores((2, 3, 2), (3, 2, 4), 3, gen)
    x = torch.randn(batch, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, 12, generator=gen, dtype=torch.float64)
    plans = C.enumerate_plans(cores, batch, requires_grad=True)
    for plain in [p for p in plans if p.kind == "sweep" and not p.recompute and len(p.groups) > 1]:
        (again,) = [
            p for p in plans if p.recompute and p.kind == "sweep" and p.program[1:] == plain.program[1:]
        ]
        assert plain.saved_bytes > again.saved_bytes >= 0  # (both keep their merged groups)
        assert again.flops_forward == plain.flops_forward and again.flops_backward > plain.flops_backward
        if batch >= 8:  # (below, the plain sweep is priced with autograd's folding copies)
            assert again.est_seconds > plain.est_seconds
        assert "recomputed in backward" in again.describe()
        # autograd keeps the same merged cores and x for both; the plain sweep also keeps its step inputs
        kept_again = sum(t.numel() for t in _saved(lambda p=again: C.linear(x, cores, strategy=p)))
        kept_plain = sum(t.numel() for t in _saved(lambda p=plain: C.linear(x, cores, strategy=p)))
        if batch >= 8:  # SweepFunction for both: exactly the states the plan reports
            assert 8 * (kept_plain - kept_again) == plain.saved_bytes - again.saved_bytes, plain
        else:  # autograd's folded matmul for the plain sweep (its copies of the states)
            assert kept_plain > kept_again
        got = torch.autograd.grad(C.linear(x, cores, strategy=again), [x, *cores], g)
        want = torch.autograd.grad(C.linear(x, cores, strategy=plain), [x, *cores], g)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_recomputing_sweeps_pass_gradcheck_and_gradgradcheck(gen):
    cores = _cores((2, 3, 2), (3, 2, 2), 2, gen)
    x = torch.randn(9, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    for p in [
        p for p in C.enumerate_plans(cores, 9, requires_grad=True) if p.kind == "sweep" and p.recompute
    ]:
        f = lambda a, *cs, p=p: C.linear(a, cs, strategy=p)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, *cores)), p
        assert torch.autograd.gradgradcheck(f, (x, *cores)), p


@given(
    spec=matrix_specs(min_d=2, max_d=4, max_mode=5, max_rank=4),
    batch=st.sampled_from([1, 3, 4, 8, 13, 64, 512]),
    seed=seeds,
)
def test_the_limited_plan_is_the_fastest_that_fits(spec, batch, seed):
    """Against brute force over every plan (the Pareto programmes over groupings are exact), at the batch itself
    (not its power-of-two bucket, where states are larger)."""
    raw, ranks = spec
    cores = random_cores(raw, ranks, gen=torch.Generator().manual_seed(seed), dtype=torch.float32)
    d = len(cores)
    plans = C.enumerate_plans(cores, batch, requires_grad=True)
    # the planner leaves the one-group sweep, W itself, to the full plans
    cands = [p for p in plans if not (p.kind == "sweep" and p.groups == ((0, d),))]
    for limit in sorted({0, *(p.saved_bytes for p in plans), 10**12}):
        got = C.plan(cores, batch, requires_grad=True, max_saved_bytes=limit)
        pool = cands
        if batch < 8 and any(p.kind == "sweep" and not p.recompute and p.saved_bytes <= limit for p in cands):
            pool = [p for p in cands if not (p.kind == "sweep" and p.recompute)]  # (see _choose_within)
        fits = [p.est_seconds for p in pool if p.saved_bytes <= limit]
        if fits:
            assert got.saved_bytes <= limit, (limit, got)
            assert got.est_seconds <= min(fits) * (1 + 1e-9), (limit, got)
        else:  # nothing fits: the plan keeping least
            assert got.saved_bytes == min(p.saved_bytes for p in pool), (limit, got)
    free = C.plan(cores, batch, requires_grad=True)
    if batch & (batch - 1) == 0:  # the free plan is made for the batch's bucket
        # a limit the fastest plan meets changes nothing (at small batches too, where the cost model prices a
        # recomputing sweep below the keeping one)
        assert (
            C.plan(cores, batch, requires_grad=True, max_saved_bytes=free.saved_bytes).program == free.program
        )
        assert C.plan(cores, batch, requires_grad=True, max_saved_bytes=10**12).program == free.program
    assert C.plan(cores, batch, requires_grad=True, max_saved_bytes=None).program == free.program


def test_saved_bytes_are_what_autograd_keeps(gen):
    """Every training plan's ``saved_bytes`` against the storages autograd keeps (input and parameters left out):
    the step inputs, W, the halves, merged groups and their partial products, permuted copies of single cores."""
    for rows, cols, r in (((2, 3, 2), (3, 2, 4), 3), ((5, 5, 5, 5), (7, 4, 7, 4), 2), ((2, 3), (4, 1), 2)):
        cores = _cores(rows, cols, r, gen)
        x = torch.randn(16, dense_cols(cols), generator=gen, dtype=torch.float64, requires_grad=True)
        own = {t.untyped_storage().data_ptr() for t in (x, *cores)}
        for p in C.enumerate_plans(cores, 16, requires_grad=True):
            seen: dict[int, int] = {}
            for t in _saved(lambda p=p, x=x, cores=cores: C.linear(x, cores, strategy=p)):
                if t.untyped_storage().data_ptr() not in own:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            assert sum(seen.values()) == p.saved_bytes, p


@pytest.mark.parametrize(("input_grad", "cores_grad"), [(False, True), (True, False)])
def test_saved_bytes_for_a_first_or_a_frozen_layer(gen, monkeypatch, input_grad, cores_grad):
    """The priced backward of a first layer (an input needing no gradient) and of a frozen one was the full
    backward's: W kept for an input gradient nobody asked for, step inputs kept for frozen cores. Each plan's
    ``saved_bytes`` for those is what autograd keeps, and ``plan`` names what ``linear`` runs."""
    ran: list = []
    real = C.choose_program
    monkeypatch.setattr(C, "choose_program", lambda *a, **k: ran.append(real(*a, **k)) or ran[-1])
    for rows, cols, r in (((2, 3, 2), (3, 2, 4), 3), ((5, 5, 5, 5), (7, 4, 7, 4), 2)):
        cores = [c.requires_grad_(cores_grad) for c in _cores(rows, cols, r, gen)]
        x = torch.randn(16, dense_cols(cols), generator=gen, dtype=torch.float64, requires_grad=input_grad)
        own = _own(x, *cores)
        need = {"input_requires_grad": input_grad, "cores_require_grad": cores_grad}
        for p in C.enumerate_plans(cores, 16, requires_grad=True, **need):
            assert (p.input_grad, p.cores_grad) == (input_grad, cores_grad)
            kept = _kept_bytes(lambda p=p, x=x, cores=cores: C.linear(x, cores, strategy=p), own)
            assert kept == p.saved_bytes, p
        for strategy in C.STRATEGIES:
            ran.clear()
            C.linear(x, cores, strategy=strategy)
            assert ran == [C.plan(cores, 16, requires_grad=True, strategy=strategy, **need).program], strategy


@given(
    spec=matrix_specs(min_d=1, max_d=4, max_mode=5, max_rank=5),
    batch=st.sampled_from([1, 2, 5, 7, 8]),
    need=st.sampled_from([(True, True), (False, True), (True, False)]),
    seed=seeds,
)
@settings(max_examples=40)
def test_saved_bytes_at_tiny_batches_are_what_autograd_keeps(spec, batch, need, seed):
    """Below SWEEP_FUNCTION_MIN_BATCH training sweeps run autograd's own matmuls. Their saved_bytes counted the
    super-core of the step reading x where x needs no gradient (autograd keeps none), and a folded copy of x
    where torch.matmul's fold is a view (K or the row count 1): 186 of 3248 random plans over-reported."""
    raw, ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = [c.requires_grad_(need[1]) for c in random_cores(raw, ranks, gen=gen, dtype=torch.float64)]
    x = torch.randn(batch, dense_cols(raw[1]), generator=gen, dtype=torch.float64, requires_grad=need[0])
    own = _own(x, *cores)
    grads = {"input_requires_grad": need[0], "cores_require_grad": need[1]}
    for p in C.enumerate_plans(cores, batch, requires_grad=True, **grads):
        assert _kept_bytes(lambda p=p: C.linear(x, cores, strategy=p), own) == p.saved_bytes, p


@pytest.mark.parametrize(("rows", "cols"), [((2, 2), (1, 3)), ((2, 2, 2), (1, 1, 4)), ((3, 2, 2), (3, 2, 4))])
def test_saved_bytes_where_the_first_fold_is_a_view(rows, cols, gen):
    """An input mode of 1 in the first group: torch.matmul's fold of x is a view there, not a copy."""
    for need in ((True, True), (False, True), (True, False)):
        cores = [c.requires_grad_(need[1]) for c in _cores(rows, cols, 2, gen)]
        for batch in range(1, 9):
            x = torch.randn(
                batch, dense_cols(cols), generator=gen, dtype=torch.float64, requires_grad=need[0]
            )
            grads = {"input_requires_grad": need[0], "cores_require_grad": need[1]}
            for p in C.enumerate_plans(cores, batch, requires_grad=True, **grads):
                kept = _kept_bytes(
                    lambda p=p, x=x, cores=cores: C.linear(x, cores, strategy=p), _own(x, *cores)
                )
                assert kept == p.saved_bytes, (batch, need, p)


def test_an_exact_tie_goes_to_the_plan_keeping_less():
    """The two sweep directions often mirror each other's estimate; training took ltr on a tie even where it
    keeps more (the stack benchmark's 1024x1024 rank-8 layer at batch 1: 92,160 bytes against rtl's 73,728)."""
    dims = (4, 4, 8, 8)
    cores = list(tt.nn.TTLinear(1024, 1024, tt_rank=8, in_dims=dims, out_dims=dims).cores)
    chosen = C.plan(cores, 1, requires_grad=True)
    tied = [p for p in C.enumerate_plans(cores, 1, requires_grad=True) if p.est_seconds == chosen.est_seconds]
    assert len(tied) > 1 and chosen.saved_bytes == min(p.saved_bytes for p in tied) < max(
        p.saved_bytes for p in tied
    )
    eights = (8, 8, 4, 4)  # a tie at batch 8 that the candidates' order would break the other way
    cores = list(tt.nn.TTLinear(1024, 1024, tt_rank=4, in_dims=eights, out_dims=eights).cores)
    chosen = C.plan(cores, 8, requires_grad=True)
    tied = [p for p in C.enumerate_plans(cores, 8, requires_grad=True) if p.est_seconds == chosen.est_seconds]
    assert chosen.saved_bytes == min(p.saved_bytes for p in tied) < max(p.saved_bytes for p in tied)
    # a bound every plan meets changes nothing: within a bound a tie went by the candidates' order again
    fives = list(tt.nn.TTLinear(125, 125, tt_rank=2, in_dims=(5, 5, 5), out_dims=(5, 5, 5)).cores)
    for batch in (8, 64):
        free = C.plan(fives, batch, requires_grad=True)
        assert C.plan(fives, batch, requires_grad=True, max_saved_bytes=10**12).program == free.program
    # mirrored sweeps keeping the same: rtl below batch 8 (measured 11-15% faster at batch 1), ltr from 8 on
    eights = (8, 8, 8, 8)
    cores = list(tt.nn.TTLinear(4096, 4096, tt_rank=16, in_dims=eights, out_dims=eights).cores)
    for batch, direction in ((1, "rtl"), (7, "rtl"), (8, "ltr"), (64, "ltr")):
        mirrors = [
            p for p in C.enumerate_plans(cores, batch, requires_grad=True) if p.groups == ((0, 2), (2, 4))
        ]
        mirrored = {(p.est_seconds, p.saved_bytes) for p in mirrors if p.kind == "sweep" and not p.recompute}
        assert len(mirrored) == 1 or batch in (7, 8)  # (a tie at 1 and 64; the boundary's choice is checked)
        assert C.plan(cores, batch, requires_grad=True).direction == direction
        assert C.plan(cores, batch, requires_grad=True, max_saved_bytes=10**12).direction == direction


def test_a_first_or_frozen_layer_prices_only_the_gradients_it_computes():
    """The full plan's backward: the dx GEMM only for the input's gradient (with W rebuilt unless kept), the dW
    GEMM and the halves' gradients only for the cores'. A first layer's backward is the dense weight gradient
    cheaper than the full backward; a frozen layer's keeps no state of a sweep."""
    w = tt.random_matrix(((4, 7, 4, 7), (5, 5, 5, 5)), tt_rank=16)
    batch, dense = 64, 2 * 64 * 784 * 625
    full = {"strategy": "full", "requires_grad": True}
    both = C.plan(w, batch, **full)
    first = C.plan(w, batch, input_requires_grad=False, **full)
    frozen = C.plan(w, batch, cores_require_grad=False, **full)
    build = 2 * 784 * 625 * 16
    assert first.program[1] == "recompute"  # (a kept W serves the input's gradient only)
    assert first.flops_backward == both.flops_backward - dense - (
        build if both.direction == "recompute" else 0
    )
    assert frozen.flops_backward == dense + (build if frozen.direction == "recompute" else 0)
    sweep = {"strategy": "grouped_ltr", "requires_grad": True}
    assert (
        C.plan(w, batch, cores_require_grad=False, **sweep).saved_bytes
        < C.plan(w, batch, **sweep).saved_bytes
    )
    with pytest.raises(ValueError, match="the input or the cores must need a gradient"):
        C.plan(w, batch, input_requires_grad=False, cores_require_grad=False, requires_grad=True)
    layer = tt.nn.TTLinear(784, 625, tt_rank=16, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    layer.cores.requires_grad_(False)
    assert not layer.plan(batch, requires_grad=True).cores_grad
    with pytest.raises(ValueError, match="the input or the cores must need a gradient"):
        layer.plan(batch, requires_grad=True, input_requires_grad=False)


def test_the_machine_for_a_dtype_changes_only_the_gemm_rate():
    """machine() spells out every field (dynamo of old torch releases cannot trace NamedTuple._replace): a field
    added to Machine but not there would silently take its default."""
    from tensortrain.contraction import machine as hw

    for kind, base in hw.MACHINES.items():
        for item in (2, 4, 8):
            m = hw.machine(kind, item)
            assert m._replace(flops=base.flops) == base
            assert m.flops == base.flops * 4.0 / max(item, 4) * (base.half if item == 2 else 1.0)


def test_a_gpu_plans_without_the_cpus_cache_cliffs():
    """On CUDA inference sweeps run whole and W is built whole: on an H200 the CPU's chunks of rows and blocked
    builds only added launches (benchmarks/gpu.py), and pricing states as if they left a cache there chose a full
    plan for 4096x4096 rank 16 at batch 1024 that ran 1.40x nn.Linear's time where the sweep ran 0.77x."""
    from tensortrain.contraction import cost, search
    from tensortrain.contraction import machine as hw
    from tensortrain.contraction import plans as P

    gpu, cpu = hw.machine("cuda", 4), hw.machine("cpu", 4)
    assert not gpu.cache_cliffs and cpu.cache_cliffs
    assert hw.cache_cliffs("cpu") and not hw.cache_cliffs("cuda")
    # other accelerators plan like CUDA: with the CPU's cliffs an mps or xpu batch of 8192 ran in 256 chunks
    assert not any(map(hw.cache_cliffs, ("mps", "xpu", "hpu", "meta")))
    assert cost.chunking(
        ((8, 8, 8, 8), (8, 8, 8, 8), (1, 16, 16, 16, 1)), ((0, 2), (2, 4)), "rtl", 4, False
    ) == (
        cost.NO_CHUNKS,
        cost.NO_CHUNKS,
    )
    dims = ((8, 8, 8, 8), (8, 8, 8, 8), (1, 16, 16, 16, 1))
    groups = ((0, 2), (2, 4))
    rows, whole = cost.chunking(dims, groups, "rtl", 4, cpu.cache_cliffs)
    assert whole < 1024 and rows < whole  # the CPU chunks a batch of 1024
    assert cost.chunking(dims, groups, "rtl", 4, gpu.cache_cliffs) == (cost.NO_CHUNKS, cost.NO_CHUNKS)
    w4 = (64, 64, 64, 64)  # a 4096 x 4096 float32 W: 64 MiB
    assert hw.block_rows(w4, 4, cpu.cache_cliffs) > 0 and hw.block_rows(w4, 4, gpu.cache_cliffs) == 0
    # chunked, the CPU's sweep pays a launch per chunk and step: the GPU's estimate has only the steps'
    sweep = ("sweep", "rtl", groups)
    assert (
        cost.estimate(dims, sweep, 1024, 4, False, gpu).seconds
        < cost.estimate(dims, sweep, 1024, 4, False, gpu._replace(cache_cliffs=True)).seconds
    )
    for grad in (False, True):
        assert P.make_plan(dims, sweep, 1024, 4, "cuda", grad).program == sweep
        kind = search.choose(dims, "auto", 1024, 4, "cuda", grad)[0]  # (was "full" before)
        assert kind == "sweep", (grad, kind)


def dense_cols(cols) -> int:
    n = 1
    for c in cols:
        n *= c
    return n


def test_forced_strategies_keep_their_kind_within_the_limit(gen):
    cores = _cores((4, 4), (4, 4), 2, gen)
    full = C.plan(cores, 64, requires_grad=True, strategy="full")
    assert full.direction == "keep" and full.saved_bytes == 16 * 16 * 8  # W (the halves are the two cores)
    bounded = C.plan(cores, 64, requires_grad=True, strategy="full", max_saved_bytes=16 * 16 * 8 - 1)
    assert (bounded.kind, bounded.direction, bounded.recompute) == ("full", "recompute", True)
    for name in ("cores_ltr", "grouped_rtl"):
        p = C.plan(cores, 64, requires_grad=True, strategy=name, max_saved_bytes=0)
        assert p.kind == "sweep" and p.direction == name[-3:] and p.recompute
        keeping = C.plan(cores, 64, requires_grad=True, strategy=name)
        assert p.saved_bytes < keeping.saved_bytes  # (ltr still keeps its cores' permuted copies)
    # no gradients: nothing is kept, the limit changes nothing
    assert C.plan(cores, 64, requires_grad=False, max_saved_bytes=0) == C.plan(cores, 64, requires_grad=False)


def test_linear_and_the_matmuls_honour_the_limit(gen):
    cores = _cores((4, 5), (7, 4), 4, gen)
    x = torch.randn(256, 28, generator=gen, dtype=torch.float64, requires_grad=True)
    w = tt.TensorTrain(cores)
    want = x @ tt.full(w).T
    free = sum(t.numel() for t in _saved(lambda: C.linear(x, w)))
    bounded = _saved(lambda: C.linear(x, w, max_saved_bytes=0))
    assert sum(t.numel() for t in bounded) < free
    assert_close(C.linear(x, w, max_saved_bytes=0), want)
    assert_close(C.tt_dense_matmul(w, x.T, max_saved_bytes=0), want.T)
    assert_close(C.dense_tt_matmul(x.detach()[:, :20], w, max_saved_bytes=0), x.detach()[:, :20] @ tt.full(w))


def test_bad_limits_are_refused(gen):
    cores = _cores((2, 2), (2, 2), 2, gen)
    x = torch.randn(4, 4, dtype=torch.float64)
    for bad, err in (("64MB", TypeError), (True, TypeError), (1.5e6, TypeError), (-1, ValueError)):
        with pytest.raises(err, match=r"plan: max_saved_bytes must be"):
            C.plan(cores, 4, max_saved_bytes=bad)
        with pytest.raises(err, match=r"linear: max_saved_bytes must be"):
            C.linear(x, cores, max_saved_bytes=bad)
        with pytest.raises(err, match=r"tt_dense_matmul: max_saved_bytes must be"):
            C.tt_dense_matmul(cores, x, max_saved_bytes=bad)
        with pytest.raises(err, match=r"dense_tt_matmul: max_saved_bytes must be"):
            C.dense_tt_matmul(x, cores, max_saved_bytes=bad)
        layer = tt.nn.TTLinear(4, 4, tt_rank=2)
        with pytest.raises(err, match=r"TTLinear: max_saved_bytes must be"):
            layer.max_saved_bytes = bad
        assert layer.max_saved_bytes is None
    assert C.plan(cores, 4, max_saved_bytes=torch.tensor(7)).batch_size == 4  # any integer type


def test_a_layer_trains_within_its_limit():
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
    x = torch.randn(512, 784)
    assert layer.max_saved_bytes is None and "max_saved_bytes" not in repr(layer)
    free_plan = layer.plan(512)
    assert free_plan.kind == "sweep" and free_plan.saved_bytes > 2**20
    y0 = layer(x)
    g0 = torch.autograd.grad(y0.square().sum(), list(layer.parameters()))
    free = sum(t.numel() * t.element_size() for t in _saved(lambda: layer(x)))

    layer.max_saved_bytes = 2**20
    assert "max_saved_bytes=1048576" in repr(layer)
    assert layer.plan(512).saved_bytes <= 2**20 and layer.plan(512).recompute
    kept = sum(t.numel() * t.element_size() for t in _saved(lambda: layer(x)))
    assert kept <= free - free_plan.saved_bytes + 2**20  # the state is no longer kept
    y1 = layer(x)
    g1 = torch.autograd.grad(y1.square().sum(), list(layer.parameters()))
    assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # inference keeps nothing anyway: the same plan as without a limit
        assert layer.plan(512) == tt.nn.TTLinear(
            784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5)
        ).plan(512)
    layer.max_saved_bytes = None
    assert layer.plan(512) == free_plan


def test_recomputed_states_borrow_reused_scratch(gen, monkeypatch):
    """A recomputing sweep's states live in tensortrain.workspace's buffers, in forward (two alternating
    buffers) and when backward recomputes them (fresh pages cost a CPU sweep as much as the recomputation):
    the same values and gradients, and the buffers are reused on the next step."""
    from tensortrain import workspace

    cores = _cores((2, 3, 2), (3, 2, 4), 3, gen)
    x = torch.randn(16, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    plans = {p.program: p for p in C.enumerate_plans(cores, 16, requires_grad=True)}
    groups = ((0, 1), (1, 3))
    plain, again = plans["sweep", "rtl", groups], plans["resweep", "rtl", groups]
    y_want = C.linear(x, cores, strategy=plain)
    want = torch.autograd.grad(y_want, [x, *cores], g)
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    workspace.empty_cache()
    borrowed: list[tuple[int, ...]] = []
    lend = workspace.scratch

    def counting(shape, dtype, device):
        borrowed.append(tuple(shape))
        return lend(shape, dtype, device)

    monkeypatch.setattr(workspace, "scratch", counting)
    for step in range(2):
        y = C.linear(x, cores, strategy=again)
        assert len(borrowed) == 2 * step + 1  # forward: one buffer for its one intermediate state
        got = torch.autograd.grad(y, [x, *cores], g)
        assert len(borrowed) == 2 * step + 2  # backward: the one recomputed state (two steps)
        assert_close(y, y_want)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)
        if step == 0:
            held = workspace.held_bytes()
            assert held > 0
    assert workspace.held_bytes() == held  # the second step reused the buffer
    # one state's bytes: backward reused forward's buffer
    assert held == plain.saved_bytes - again.saved_bytes
    workspace.empty_cache()


def test_bounded_plans_take_empty_batches(gen):
    cores = _cores((2, 3), (3, 4), 2, gen)
    x = torch.zeros(0, 12, dtype=torch.float64, requires_grad=True)
    for p in [p for p in C.enumerate_plans(cores, 0, requires_grad=True) if p.recompute]:
        y = C.linear(x, cores, strategy=p)
        assert y.shape == (0, 6)
        y.sum().backward()
        assert all(c.grad is not None and not c.grad.any() for c in cores)
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
    layer.max_saved_bytes = 0
    assert layer(torch.randn(2, 0, 784)).shape == (2, 0, 625)


def test_the_bound_holds_at_the_batch_itself_not_its_bucket():
    """A limit the free plan meets at batch 3 (but not at its bucket, 4) keeps the free plan's kind of sweep."""
    w = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5)).weight
    free = C.plan(w, 3, requires_grad=True)
    bounded = C.plan(w, 3, requires_grad=True, max_saved_bytes=free.saved_bytes)
    assert bounded.saved_bytes <= free.saved_bytes
    assert bounded.est_seconds <= free.est_seconds * 1.05 and not bounded.recompute


def test_the_bound_counts_a_copy_of_a_batched_operand(gen):
    """tt_dense_matmul of a (B, N, P) operand flattens a transposed view, which copies it; the copy is kept for
    backward: with max_saved_bytes=0 the 512 KiB copy was kept while nothing was counted."""
    w = tt.random_matrix([[8, 8, 8], [8, 8, 8]], tt_rank=8)
    cores = [c.clone().requires_grad_() for c in w.tt_cores]
    b = torch.randn(4, 512, 64, generator=gen, requires_grad=True)
    mine = {b.untyped_storage().data_ptr(), *(c.untyped_storage().data_ptr() for c in cores)}
    for limit in (0, 600_000, 2_000_000):
        kept = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in _saved(lambda: C.tt_dense_matmul(cores, b, max_saved_bytes=limit))  # noqa: B023
            if t.untyped_storage().data_ptr() not in mine
        }
        least = min(p.saved_bytes for p in C.enumerate_plans(cores, 256, requires_grad=True))
        assert sum(kept.values()) <= max(limit, b.numel() * 4 + least)


def _kept_bytes(fn, own) -> int:
    seen: dict[int, int] = {}
    for t in _saved(fn):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_bounds_count_the_copies_of_permuted_cores_and_strided_inputs(gen):
    """dense_tt_matmul passes permuted views of the cores: a plan that reshapes one copies it, and autograd kept
    the copy beyond the bound; a strided x at a tiny batch is copied by the first reshape the same way."""
    cores = [torch.randn(1, 4, 4, 16, requires_grad=True), torch.randn(16, 4, 4, 1, requires_grad=True)]
    a = torch.randn(64, 16, requires_grad=True)
    own = {t.untyped_storage().data_ptr() for t in (a, *cores)}
    for bound in (2048, 3000, 5000):  # (the two cores' copies, 2048 bytes, are the least any plan keeps)
        kept = _kept_bytes(
            lambda b=bound: C.dense_tt_matmul(a, tt.TensorTrain(cores), max_saved_bytes=b), own
        )
        assert kept <= bound, (bound, kept)
    w = _cores((5, 7, 1), (8, 16, 3), 2, gen)
    for batch in (2, 5):
        base = torch.randn(8 * 16 * 3, batch, generator=gen, dtype=torch.float64, requires_grad=True)
        x = base.t()  # strided (batch, N)
        own = {t.untyped_storage().data_ptr() for t in (base, *w)}
        for bound in (0, 8000, 12000, 20000):
            kept = _kept_bytes(lambda b=bound, x=x: C.linear(x, w, max_saved_bytes=b), own)
            assert kept <= bound, (batch, bound, kept)


def test_tiny_training_batches_are_planned_at_their_own_size(gen):
    """Training batches 5-7 were priced at their bucket, 8, where sweeps run the hand-written SweepFunction;
    below 8 they run autograd's folded products, which the model prices at the batch itself."""
    cores = [torch.zeros(1, 4, 4, 1) for _ in range(3)]
    for batch in (5, 6, 7):
        chosen = C.plan(cores, batch, requires_grad=True)
        best = min(C.enumerate_plans(cores, batch, requires_grad=True), key=lambda p: p.est_seconds)
        assert chosen.batch_size == batch
        assert chosen.est_seconds <= best.est_seconds * (1 + 1e-9) or best.groups == ((0, 3),), (chosen, best)


def _own(*ts: torch.Tensor) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in ts}


@pytest.mark.parametrize("strategy", ["full", "grouped_rtl", "grouped_ltr", "cores_rtl"])
@pytest.mark.parametrize("bounded", [False, True])
def test_frozen_cores_keep_no_states_for_the_input_gradient(gen, strategy, bounded):
    """With frozen cores and an input that needs a gradient, sweeps kept every step input (11 MiB for the 784x625
    rank-4 layer at batch 1024, 6x its dense weight), none of which backward reads. The full plan keeps its
    halves (and W, when the plan keeps it for the input's gradient), and a padded layer's input copy no more."""
    layer = tt.nn.TTLinear(
        783, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5), pad=True, dtype=torch.float64
    )
    layer.strategy = strategy
    layer.max_saved_bytes = 10**4 if bounded else None
    layer.cores.requires_grad_(False)
    x = torch.randn(64, 783, generator=gen, dtype=torch.float64, requires_grad=True)
    allowed = sum(c.numel() * c.element_size() for c in layer.cores) * 40  # (merged groups and halves: small)
    if strategy == "full" and not bounded:
        allowed += 784 * 625 * 8  # W kept for the input's gradient
    assert _kept_bytes(lambda: layer(x), _own(x, *layer.parameters())) < allowed
    g = torch.randn(64, 625, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad(layer(x), x, g)
    assert_close(gx, g @ layer.dense_weight())
    layer.cores.requires_grad_(True)  # partly frozen: the trained core's gradient is the dense chain rule's
    layer.cores[0].requires_grad_(False)
    got = torch.autograd.grad(layer(x), [x, layer.cores[2]], g)
    plain = [c.detach().clone().requires_grad_() for c in layer.cores]
    w = tt.full(tt.TensorTrain(plain))[:625, :783]
    want = torch.autograd.grad(x @ w.T + layer.bias, [x, plain[2]], g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_a_kept_w_is_not_kept_when_the_input_needs_no_gradient(gen):
    """The full plan's "W kept for backward" kept the dense W for a first layer, whose input needs no gradient
    (backward reads W for the input's gradient only)."""
    layer = tt.nn.TTLinear(784, 625, tt_rank=16, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    assert "W kept for backward" in layer.plan(1024, requires_grad=True).describe()
    x = torch.randn(1024, 784, generator=gen)
    assert _kept_bytes(lambda: layer(x), _own(x, *layer.parameters())) < 784 * 625 * 4 // 4
    cores = [c.detach().double().requires_grad_() for c in layer.cores]
    xd, g = x.double(), torch.randn(1024, 625, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(C.linear(xd, cores, strategy="full"), cores, g)
    want = torch.autograd.grad(xd @ tt.full(tt.TensorTrain(cores)).T, cores, g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("strategy", ["full", "grouped_rtl", "cores_ltr"])
def test_a_bias_only_layer_keeps_nothing_for_backward(gen, strategy):
    """Frozen cores and an input that needs no gradient, only the bias trains (BitFit): backward reads nothing
    but the output's gradient, so no plan keeps a tensor for it (through the full plan's autograd Function the
    two halves would be kept: a mutant)."""
    layer = tt.nn.TTLinear(12, 12, tt_rank=3, in_dims=(3, 4), out_dims=(4, 3), dtype=torch.float64)
    layer.strategy = strategy
    layer.cores.requires_grad_(False)
    x = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    assert _saved(lambda: layer(x)) == []
    g = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    (gb,) = torch.autograd.grad(layer(x), layer.bias, g)
    assert_close(gb, g.sum(0))


def test_the_bound_counts_copies_of_cores_in_another_layout(gen):
    """Cores that are views in another layout (tt.transpose's, a channels_last module's) are copied where a plan
    reshapes them, and training kept the copies beyond the bound (linear and TTLinear; dense_tt_matmul counted
    them already)."""
    layer = tt.nn.TTLinear(784, 625, tt_rank=8, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
    layer = layer.to(memory_format=torch.channels_last)
    assert not all(c.is_contiguous() for c in layer.cores)
    x = torch.randn(512, 784, generator=gen, requires_grad=True)
    for bound in (50_000, 200_000):
        layer.max_saved_bytes = bound
        assert _kept_bytes(lambda: layer(x), _own(x, *layer.parameters())) <= bound
    v = tt.random_matrix([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=8, generator=gen)
    cores = [c.clone().requires_grad_() for c in v.tt_cores]
    w = tt.transpose(tt.TensorTrain(cores))
    for bound in (50_000, 200_000):
        assert _kept_bytes(lambda b=bound: C.linear(x, w, max_saved_bytes=b), _own(x, *cores)) <= bound


def test_plan_reports_what_linear_runs_for_cores_in_another_layout(gen, monkeypatch):
    """linear counts the copies of non-contiguous cores against the bound; plan() did not, and named another
    plan than the one linear ran (a transposed 3-core weight, bound 37,000 bytes)."""
    import tensortrain.contraction as contraction_module
    import tensortrain.contraction.plan_cache as cache_module

    ran: list = []
    real = cache_module.choose_program

    def spy(*args, **kwargs):
        prog = real(*args, **kwargs)
        ran.append(prog)
        return prog

    monkeypatch.setattr(contraction_module, "choose_program", spy)
    monkeypatch.setattr(cache_module, "choose_program", spy)
    v = tt.random_matrix([[4, 6, 8], [8, 6, 4]], tt_rank=8, generator=gen)
    w = tt.transpose(tt.TensorTrain([c.clone().requires_grad_() for c in v.tt_cores]))
    x = torch.randn(256, 192, generator=gen)
    for bound in range(0, 300_000, 3_000):
        ran.clear()
        C.linear(x, w, max_saved_bytes=bound)
        C.plan(w, 256, max_saved_bytes=bound, requires_grad=True, input_requires_grad=False)
        assert ran[0] == ran[-1], bound


@pytest.mark.parametrize(
    ("rows", "cols", "ranks", "batch"),
    [((6, 5, 2), (3, 7, 8), (1, 3, 6, 1), 247), ((8, 6, 1, 4), (4, 4, 8, 2), (1, 4, 6, 3, 1), 251)],
)
@pytest.mark.parametrize("direction", ["ltr", "rtl"])
def test_plan_forced_grouped_sweep_keeps_least_when_nothing_fits(gen, rows, cols, ranks, batch, direction):
    # (test_plan_memory.py) a forced grouped sweep under a bound no grouping meets: the grouping keeping least
    # ("when none does, the one keeping least"), not the fastest one
    cores = random_cores((rows, cols), ranks, gen=gen, dtype=torch.float32)
    d = len(cores)
    pool = [
        p
        for p in C.enumerate_plans(cores, batch, requires_grad=True)
        if p.kind == "sweep" and p.direction == direction and p.groups != ((0, d),)
    ]
    got = C.plan(cores, batch, requires_grad=True, strategy="grouped_" + direction, max_saved_bytes=0)
    assert got.saved_bytes == min(p.saved_bytes for p in pool)


@pytest.mark.parametrize("batch", [100, 600])
def test_plan_bound_is_met_at_a_large_batch_itself_not_its_bucket(batch):
    # (test_plan_memory.py, beside test_the_bound_holds_at_the_batch_itself_not_its_bucket, which uses batch 3,
    # where tiny training batches are planned exactly anyway) a bound is checked at the batch (600), not at its
    # bucket (1024), whose larger states rule out plans that fit
    w = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5)).weight
    d = w.ndims()
    plans = [
        p
        for p in C.enumerate_plans(w, batch, requires_grad=True)
        if not (p.kind == "sweep" and p.groups == ((0, d),))
    ]
    for limit in sorted({p.saved_bytes for p in plans}):
        got = C.plan(w, batch, requires_grad=True, max_saved_bytes=limit)
        fits = [p.est_seconds for p in plans if p.saved_bytes <= limit]
        assert got.saved_bytes <= limit, (limit, got)
        assert got.est_seconds <= min(fits) * (1 + 1e-9), (limit, got)


@pytest.mark.parametrize(
    ("rows", "cols", "ranks", "batch"),
    [((4, 3, 4), (8, 3, 4), (1, 8, 8, 1), 64), ((2, 8, 1), (7, 2, 7), (1, 4, 8, 1), 64)],
)
def test_plan_inference_at_a_power_of_two_batch_is_the_fastest(gen, rows, cols, ranks, batch):
    # (test_plan_memory.py or test_contraction.py) a power-of-two batch is its own bucket: the inference plan is
    # the fastest the cost model knows at that batch (performance only: a plan made for twice the batch)
    cores = random_cores((rows, cols), ranks, gen=gen, dtype=torch.float32)
    d = len(cores)
    plans = [p for p in C.enumerate_plans(cores, batch) if not (p.kind == "sweep" and p.groups == ((0, d),))]
    got = C.plan(cores, batch, requires_grad=False)
    assert got.est_seconds <= min(p.est_seconds for p in plans) * (1 + 1e-9)


def test_plan_bound_does_not_charge_frozen_cores_in_another_layout(gen):
    # (test_plan_memory.py, beside test_the_bound_counts_copies_of_cores_in_another_layout) only trained cores'
    # copies are kept for backward: frozen cores that are views in another layout leave the bound as it is
    v = tt.random_matrix([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=8, generator=gen)
    frozen = tt.transpose(tt.TensorTrain([c.clone() for c in v.tt_cores]))
    assert not all(c.is_contiguous() for c in frozen.tt_cores)
    same = tt.TensorTrain([c.contiguous() for c in frozen.tt_cores])
    limits = sorted({p.saved_bytes for p in C.enumerate_plans(same, 512, requires_grad=True)})
    for limit in limits:
        a = C.plan(frozen, 512, requires_grad=True, max_saved_bytes=limit)
        b = C.plan(same, 512, requires_grad=True, max_saved_bytes=limit)
        assert a.program == b.program, limit


def test_the_plan_cache_is_bounded(monkeypatch):
    """With max_saved_bytes a plan is keyed by the exact batch size: variable-length batches added one entry per
    size without end (599 entries for 599 sizes)."""
    from tensortrain.contraction import plan_cache

    monkeypatch.setattr(plan_cache, "PLAN_CACHE_LIMIT", 5)
    C.clear_plan_cache()
    cores = [torch.randn(1, 4, 4, 3), torch.randn(3, 4, 4, 1)]
    try:
        for batch in range(1, 40):
            C.plan(cores, batch, requires_grad=True, max_saved_bytes=10**9)
            assert C.plan_cache_size() == min(batch, 5)
        last = C.plan(cores, 39, requires_grad=True, max_saved_bytes=10**9)  # the newest plans stay
        assert last.program == C.plan(cores, 39, requires_grad=True, max_saved_bytes=10**9).program
    finally:
        C.clear_plan_cache()


def test_inference_chunking_cache_is_bounded_too(monkeypatch):
    """Inference sweeps' chunkings were cached per core shapes without a bound: TTs of data-dependent ranks (from
    round(epsilon=...) in a loop) added one entry per rank tuple for the life of the process."""
    from tensortrain.contraction import plan_cache

    monkeypatch.setattr(plan_cache, "PLAN_CACHE_LIMIT", 5)
    C.clear_plan_cache()
    x = torch.randn(3, 16)
    try:
        with torch.no_grad():
            for r in range(1, 12):
                cores = [torch.randn(1, 4, 4, r), torch.randn(r, 4, 4, 1)]
                y = C.linear(x, cores, strategy="grouped_rtl")
                torch.testing.assert_close(y, x @ tt.full(tt.TensorTrain(cores)).T)
                assert 0 < len(plan_cache._CHUNK_CACHE) <= 5
    finally:
        C.clear_plan_cache()


@pytest.mark.parametrize("strategy", ["full", "grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"])
def test_a_padded_layers_saved_bytes_are_what_autograd_keeps(strategy):
    """plan().saved_bytes of a padded layer added its input copy to every training plan: counted twice where a
    folded first step (batch < 8, left to right) keeps a copy of that copy instead, and counted for frozen
    cores, whose backward reads no input."""
    for in_dims, out_dims in (((3, 4), (2, 4)), ((2, 4, 4), (3, 2, 4))):
        layer = tt.nn.TTLinear(
            math.prod(in_dims) - 2,
            math.prod(out_dims) - 1,
            tt_rank=2,
            in_dims=in_dims,
            out_dims=out_dims,
            pad=True,
            dtype=torch.float64,
        )
        layer.strategy = strategy
        for batch, x_grad, cores_grad in itertools.product((1, 3, 5, 8, 20), (True, False), (True, False)):
            if not (x_grad or cores_grad):
                continue
            layer.cores.requires_grad_(cores_grad)
            x = torch.randn(batch, layer.in_features, dtype=torch.float64, requires_grad=x_grad)
            kept = _kept_bytes(lambda x=x, layer=layer: layer(x), _own(x, *layer.parameters()))
            plan = layer.plan(batch, requires_grad=True, input_requires_grad=x_grad)
            assert plan.saved_bytes == kept, (in_dims, batch, x_grad, cores_grad, plan.describe())


def test_a_strided_input_at_a_sweep_function_batch_is_not_charged_a_copy(gen, monkeypatch):
    """From batch 8 (SweepFunction) the sweeps keep a strided x as it is: such an x runs the plan a contiguous
    one runs under the same bound, the one plan() reports, with no copy of x counted against the bound."""
    from tensortrain.contraction import machine

    batch = machine.SWEEP_FUNCTION_MIN_BATCH
    w = _cores((5, 7, 1), (8, 16, 3), 2, gen)
    base = torch.randn(8 * 16 * 3, batch, generator=gen, dtype=torch.float64, requires_grad=True)
    x = base.t()  # strided (batch, N)
    assert not x.is_contiguous()
    ran = []
    real = C.run
    monkeypatch.setattr(C, "run", lambda prog, *a, **k: ran.append(prog) or real(prog, *a, **k))
    own = {t.untyped_storage().data_ptr() for t in (base, *w)}
    for bound in sorted({p.saved_bytes for p in C.enumerate_plans(w, batch, requires_grad=True)}):
        ran.clear()
        assert _kept_bytes(lambda b=bound: C.linear(x, w, max_saved_bytes=b), own) <= bound
        assert ran == [C.plan(w, batch, requires_grad=True, max_saved_bytes=bound).program], bound
