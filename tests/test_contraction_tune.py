"""strategy="tune": the timed choice among the cost model's candidates (tensortrain.contraction.runner)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, seeds
from tensortrain import contraction as C
from tensortrain.contraction import cost, search
from tensortrain.contraction import machine as hw
from tensortrain.contraction import runner as R
from tensortrain.contraction.checks import dims_of


@pytest.fixture(autouse=True)
def _fresh_plans():
    C.clear_plan_cache()
    yield
    C.clear_plan_cache()


def _cores(gen, rows=(4, 5, 3), cols=(3, 4, 5), ranks=(1, 4, 4, 1), grad=False):
    return [c.requires_grad_(grad) for c in random_cores((rows, cols), ranks, gen=gen)]


def _fake_measure(fastest, calls_seen=None):
    """A _measure that calls nothing and makes ``fastest(programs)`` the quickest."""

    def measure(calls, sync):
        if calls_seen is not None:
            calls_seen.append(list(calls))
        pick = fastest(list(calls))
        return {p: (1.0 if p == pick else 2.0) for p in calls}

    return measure


def _spy_calls(monkeypatch):
    """The arguments of each R._calls (the synthetic operands tune builds), as dicts, in a list it fills."""
    seen = []
    real = R._calls

    def spy(progs, cores, batch, grad, cached, need):
        seen.append({"progs": progs, "batch": batch, "cached": cached, "need": need})
        return real(progs, cores, batch, grad, cached, need)

    monkeypatch.setattr(R, "_calls", spy)
    return seen


def _fake_clock(monkeypatch):
    """Make the runner's ``time.perf_counter`` read ``clock[0]``, which the test advances; returns ``clock``."""
    clock = [0.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]

    monkeypatch.setattr(R, "time", FakeTime)
    return clock


@given(spec=matrix_specs(max_d=4), batch=st.sampled_from([1, 5, 16]), seed=seeds)
def test_tuned_results_and_gradients_equal_dense(spec, batch, seed):
    raw, ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    w = tt.full(tt.TensorTrain(cores))
    x = torch.randn(batch, w.shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, w.shape[0], generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(x @ w.T, [x, *cores], g)
    got = torch.autograd.grad(C.linear(x, cores, strategy="tune"), [x, *cores], g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    with torch.no_grad():
        assert_close(C.linear(x, cores, strategy="tune"), x @ w.T)


def test_the_fastest_candidate_is_kept_and_cached(gen, monkeypatch):
    cores = _cores(gen)
    seen: list = []
    # the last candidate (never the cost model's choice, which comes first) measures fastest
    monkeypatch.setattr(R, "_measure", _fake_measure(lambda progs: progs[-1], seen))
    p = C.plan(cores, 64, requires_grad=False, strategy="tune")
    assert len(seen) == 1 and len(seen[0]) > 1
    assert seen[0][0] == C.plan(cores, 64, requires_grad=False).program  # the model's choice first
    assert p.program == seen[0][-1]
    x = torch.randn(64, 60, dtype=torch.float64)
    C.linear(x, cores, strategy="tune")
    C.linear(x[:40], cores, strategy="tune")  # the same batch-size bucket: no second tuning
    assert len(seen) == 1
    C.linear(x[:20], cores, strategy="tune")  # another bucket
    assert len(seen) == 2
    C.clear_plan_cache()
    C.plan(cores, 64, requires_grad=False, strategy="tune")
    assert len(seen) == 3


def test_candidates_are_the_auto_ones_within_the_estimate_band():
    dims = ((5, 5, 5, 5), (4, 7, 4, 7), (1, 16, 16, 16, 1))
    m = hw.machine("cpu", 4)
    for grad in (False, True):
        progs = R.candidates(dims, 64, 4, "cpu", grad, False, None, cost.BOTH)
        auto = search.candidates(dims, "auto", 64, 4, grad, m)
        assert progs[0] == search.choose(dims, "auto", 64, 4, "cpu", grad)
        assert set(progs) <= set(auto) and len(set(progs)) == len(progs)
        est = {p: cost.estimate(dims, p, 64, 4, grad, m).seconds for p in auto}
        best = min(est.values())
        assert {p for p in auto if est[p] <= R.TUNE_WITHIN * best} == set(progs)
    # a training memory bound: only candidates that keep at most that many bytes (the model's choice keeps least
    # when none fits)
    limit = 200_000
    progs = R.candidates(dims, 64, 4, "cpu", True, False, limit, cost.BOTH)
    for p in progs[1:]:
        assert cost.estimate(dims, p, 64, 4, True, m).saved_bytes <= limit
    assert progs[0] == search.choose(dims, "auto", 64, 4, "cpu", True, max_saved=limit)


def test_tuning_leaves_the_callers_state_alone(gen):
    layer = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3), dtype=torch.float64)
    layer.strategy = "tune"
    fired = []
    for c in layer.cores:
        c.register_hook(lambda g: fired.append(1))
    x = torch.randn(32, 60, generator=gen, dtype=torch.float64, requires_grad=True)
    rng = torch.get_rng_state()
    y = layer(x)  # tunes: forward and backward of every candidate on synthetic operands
    assert torch.equal(rng, torch.get_rng_state())
    assert not fired and all(p.grad is None for p in layer.parameters()) and x.grad is None
    y.sum().backward()
    assert len(fired) == len(layer.cores)
    assert_close(x.grad, torch.ones(32, 60, dtype=torch.float64) @ layer.to_linear().weight)
    assert "strategy='tune'" in repr(layer)


def test_tuning_inside_activation_checkpointing(gen):
    from torch.utils.checkpoint import checkpoint

    layer = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3), dtype=torch.float64)
    x = torch.randn(16, 60, generator=gen, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(layer(x).square().sum(), [x, *layer.cores])
    layer.strategy = "tune"
    for reentrant in (False, True):
        C.clear_plan_cache()  # tuned inside the checkpointed forward (and the reentrant one's recomputation)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        checkpoint(layer, x, use_reentrant=reentrant).square().sum().backward()
        got = [x.grad, *(c.grad for c in layer.cores)]
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_no_tuning_under_transforms_or_on_meta(gen, monkeypatch):
    def refuse(*_):
        raise AssertionError("timed under a transform")

    monkeypatch.setattr(R, "_measure", refuse)
    cores = _cores(gen)
    x = torch.randn(8, 60, generator=gen, dtype=torch.float64)
    w = tt.full(tt.TensorTrain(cores))
    # torch.func: the cost model's choice, not cached (an eager call tunes later)
    assert_close(torch.func.vmap(lambda r: C.linear(r, cores, strategy="tune"))(x), x @ w.T)
    g = torch.func.grad(lambda c0: C.linear(x, [c0, *cores[1:]], strategy="tune").sum())(cores[0])
    assert g.shape == cores[0].shape
    assert C.plan_cache_size() == 0
    meta = [c.to("meta") for c in cores]
    assert C.linear(x.to("meta"), meta, strategy="tune").shape == (8, 60)


def test_no_tuning_on_fake_tensors(gen, monkeypatch):
    """Fake tensors (FakeTensorMode: memory estimates, dry runs) were "timed" and the winner cached under the real
    device's key, so a real layer of the same shapes later reused it untimed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(R, "_measure", lambda *_: pytest.fail("timed fake tensors"))
    with FakeTensorMode():
        layer = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3))
        layer.strategy = "tune"
        assert layer(torch.randn(256, 60)).shape == (256, 60)
    assert C.plan_cache_size() == 0


def test_tuning_syncs_devices_whose_synchronize_takes_no_device(monkeypatch):
    """torch.mps.synchronize() takes no argument: the first tuned call on MPS raised a TypeError."""
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    R._sync(torch.device("mps"))()
    monkeypatch.setattr(torch.mps, "synchronize", lambda device=None: calls.append(device))
    R._sync(torch.device("mps"))()
    assert calls == ["mps", torch.device("mps")]
    R._sync(torch.device("cpu"))()  # (nothing to wait for)


def test_compiled_tune_is_auto(gen, monkeypatch):
    monkeypatch.setattr(R, "_measure", lambda *_: pytest.fail("timed while compiling"))
    layer = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3))
    layer.strategy = "tune"
    x = torch.randn(8, 60, generator=gen)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert_close(compiled(x), layer.to_linear()(x))


def test_measure_medians_drops_slow_candidates_and_skips_oom(monkeypatch):
    clock = _fake_clock(monkeypatch)
    counts = {"a": 0, "b": 0, "c": 0}

    def call(name, seconds):
        def f():
            counts[name] += 1
            clock[0] += seconds

        return f

    def oom():
        raise R._OOM("CUDA out of memory")

    def cpu_oom():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")

    def bug():
        raise RuntimeError("shape mismatch")

    calls = {"a": call("a", 0.010), "b": call("b", 0.004), "c": call("c", 0.007), "d": oom, "e": cpu_oom}
    times = R._measure(calls, lambda: None)
    assert set(times) == {"a", "b", "c"}
    assert times["b"] == pytest.approx(0.004) and times["c"] == pytest.approx(0.007)
    # a (over TUNE_DROP x the fastest after the first round) was timed once; the others every round
    assert counts["a"] == 1 + 2 and counts["b"] == counts["c"] == 1 + 2 * R.TUNE_ROUNDS
    # the budget (1 s) stops the rounds: calls of 0.3 s (0.6 s a round) stop after two rounds
    counts.update(a=0)
    R._measure({"a": call("a", 0.3)}, lambda: None)
    assert counts["a"] == 1 + 2 * 2
    # nothing runs: the cost model's choice (first) stands
    assert R._measure({"x": oom, "y": oom}, lambda: None) == {"x": 0.0}
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not swallowed
        R._measure({"x": bug}, lambda: None)


def test_first_layers_and_frozen_cores_tune_their_own_backward(gen, monkeypatch):
    seen = _spy_calls(monkeypatch)
    cores = _cores(gen, grad=True)
    x = torch.randn(16, 60, generator=gen, dtype=torch.float64)
    C.linear(x, cores, strategy="tune").sum().backward()  # a first layer: the input needs no gradient
    frozen = [c.detach() for c in cores]
    C.linear(x.requires_grad_(True), frozen, strategy="tune").sum().backward()
    assert [c["need"] for c in seen] == [(False, True), (True, False)]


def test_a_device_sync_is_only_for_devices_that_queue_work():
    assert R._sync(torch.device("cpu"))() is None
    assert R.tunable(torch.zeros(1)) and not R.tunable(torch.zeros(1, device="meta"))


def test_tuned_choice_is_among_the_candidates_on_a_real_layer(gen):
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    layer.strategy = "tune"
    p = layer.plan(64, requires_grad=True)
    dims = dims_of(list(layer.cores))
    assert p.program in R.candidates(dims, 64, 4, "cpu", True, False, None, cost.BOTH)


def test_no_memory_for_the_synthetic_operands_keeps_the_models_choice(gen, monkeypatch):
    """plan(w, huge_batch, strategy="tune") allocated its synthetic input outside the out-of-memory guard: the
    allocator's error escaped from an inspection call."""

    def no_room(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 400 GB")

    monkeypatch.setattr(R, "_calls", no_room)
    cores = _cores(gen, grad=True)
    for grad in (False, True):
        C.clear_plan_cache()
        got = C.plan(cores, 10**9, strategy="tune", requires_grad=grad)
        C.clear_plan_cache()
        want = C.plan(cores, 10**9, strategy="auto", requires_grad=grad)
        assert got.program == want.program
    monkeypatch.setattr(R, "_calls", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    C.clear_plan_cache()
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not swallowed
        C.plan(cores, 64, strategy="tune", requires_grad=True)


def test_inference_candidates_are_timed_with_their_kept_merges(gen, monkeypatch):
    """A layer's inference plans keep merged groups between calls; the tuner's candidates must too (the layer
    cache keeps merges only of Parameters, and the tuner's aliases were plain tensors)."""
    import tensortrain.contraction.layer_cache as cache_module

    stored = []
    real = cache_module.cached

    def spy(cache, key, cores, make):
        out = real(cache, key, cores, make)
        stored.append(key in cache)
        return out

    monkeypatch.setattr(cache_module, "cached", spy)
    cores = _cores(gen, grad=False)
    progs = R.candidates(R.dims_of(cores), 64, 8, "cpu", False, True, None, (False, False))
    calls = R._calls(progs, cores, 64, False, True, (False, False))
    for f in calls.values():
        f()
        f()
    assert stored and all(stored)


def test_tuning_times_the_calls_own_batch_size_not_its_bucket(gen, monkeypatch):
    """The synthetic operands have the call's rows (20), not its bucket's (32): no more memory than the call."""
    seen = _spy_calls(monkeypatch)
    monkeypatch.setattr(R, "_measure", _fake_measure(lambda progs: progs[0]))
    cores = _cores(gen)
    with torch.no_grad():
        C.linear(torch.randn(20, 60, generator=gen, dtype=torch.float64), cores, strategy="tune")
    assert [c["batch"] for c in seen] == [20]


def test_a_tuned_training_plan_keeps_the_memory_bound(gen, monkeypatch):
    """Every timed candidate keeps at most the bound (the fastest measured one is taken whatever it keeps), and a
    candidate keeping exactly the bound is one of them."""
    dims = ((4, 5, 3), (3, 4, 5), (1, 4, 4, 1))
    m = hw.machine("cpu", 8)

    def saved(p):
        return cost.estimate(dims, p, 64, 8, True, m).saved_bytes

    unbounded = R.candidates(dims, 64, 8, "cpu", True, False, None, cost.BOTH)
    sizes = sorted({saved(p) for p in unbounded})
    assert len(sizes) > 1
    limit = sizes[-2]  # the candidates keeping the most are over it
    for p in unbounded:
        if saved(p) == limit:
            assert p in R.candidates(dims, 64, 8, "cpu", True, False, limit, cost.BOTH)
    # the tuner: the measured-fastest candidate is the one keeping the most that was timed
    monkeypatch.setattr(R, "_measure", _fake_measure(lambda progs: max(progs, key=saved)))
    cores = _cores(gen, grad=True)
    got = R.tune(cores, 64, True, False, limit, cost.BOTH)
    assert saved(got) <= limit


def test_inference_tuning_models_and_times_the_layers_kept_merges(gen, monkeypatch):
    """A layer without gradients keeps its merged groups: its tuning prices (the cost model's candidate first)
    and times the candidates with them; a bare linear call without."""
    seen = _spy_calls(monkeypatch)
    monkeypatch.setattr(R, "_measure", _fake_measure(lambda progs: progs[0]))
    layer = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3), dtype=torch.float64)
    layer.strategy = "tune"
    x = torch.randn(4, 60, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        C.linear(x, list(layer.cores), strategy="tune")
    dims = dims_of(list(layer.cores))
    model = [
        search.choose(dims, "auto", 4, 8, "cpu", False, cached, None, cost.BOTH) for cached in (True, False)
    ]
    assert model[0] != model[1]  # (at these shapes kept merges change the cost model's choice)
    assert [(c["progs"][0], c["cached"]) for c in seen] == [(model[0], True), (model[1], False)]


@pytest.mark.parametrize("need", [(False, True), (True, False), (True, True)])
def test_tuning_times_only_the_gradients_the_call_needs(gen, monkeypatch, need):
    """A first layer's candidates are timed without the input's gradient, a frozen layer's without the cores'."""
    runs, grads = [], []
    real_run, real_grad = R.run, torch.autograd.grad

    def spy_run(prog, x2d, cores, bias, grad, cache=None, inplace=False):
        runs.append((x2d.requires_grad, tuple(c.requires_grad for c in cores)))
        return real_run(prog, x2d, cores, bias, grad, cache, inplace)

    def spy_grad(outputs, inputs, *args, **kwargs):
        grads.append(len(inputs))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(R, "run", spy_run)
    monkeypatch.setattr(torch.autograd, "grad", spy_grad)

    def run_each_once(calls, sync):
        for f in calls.values():
            f()
        return dict.fromkeys(calls, 1.0)

    monkeypatch.setattr(R, "_measure", run_each_once)
    cores = _cores(gen, grad=True)
    R.tune(cores, 16, True, False, None, need)
    assert runs and set(runs) == {(need[0], (need[1],) * 3)}
    assert set(grads) == {need[0] + 3 * need[1]}


def test_measure_takes_the_median_of_the_rounds(monkeypatch):
    """One fast outlier round does not make a candidate the fastest: the median, not the minimum."""
    clock = _fake_clock(monkeypatch)
    # a's warm-up, then per round an untimed call and a timed one: 3, 1, 5, 4, 2 ms timed (median 3, minimum 1)
    durations = iter([0.0] + [t for ms in (3, 1, 5, 4, 2) for t in (0.0, ms / 1000)])

    def a():
        clock[0] += next(durations)

    def b():
        clock[0] += 0.0025

    times = R._measure({"a": a, "b": b}, lambda: None)
    assert times == {"a": pytest.approx(0.003), "b": pytest.approx(0.0025)}


@pytest.mark.parametrize(
    ("made_in", "planned_in"),
    [
        (torch.enable_grad, torch.no_grad),
        (torch.enable_grad, torch.inference_mode),
        (torch.inference_mode, torch.inference_mode),
        (torch.inference_mode, torch.enable_grad),
    ],
)
def test_a_training_plan_is_tuned_in_any_grad_mode_for_any_cores(gen, made_in, planned_in):
    """plan(requires_grad=True, strategy="tune") called without grad mode (around evaluation code) times the
    training candidates' backward all the same: inside inference_mode it raised 'element 0 of tensors does not
    require grad'. Cores made in inference mode are timed through clones (their views leave autograd)."""
    with made_in():
        cores = _cores(gen, grad=True)
    with planned_in():
        p = C.plan(cores, 32, requires_grad=True, strategy="tune")
    assert p.program in R.candidates(dims_of(cores), 32, 8, "cpu", True, False, None, cost.BOTH)
