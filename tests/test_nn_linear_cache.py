"""TTLinear's inference cache of merged cores and what invalidates it (optimizer steps, loads, moves, mode
switches, pruning and parametrizations, shared memory, CUDA graph capture), and inference mode. The layer against
the dense oracle: tests/test_nn_linear.py."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import tensortrain as tt
from conftest import assert_close
from strategies import tutorial_layer


def _hogwild_step(layer: tt.nn.TTLinear) -> None:
    """One SGD step in another process on cores in shared memory (what Hogwild workers do)."""
    torch.set_num_threads(1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(8, 24, dtype=torch.float64)).square().sum().backward()
    opt.step()


def _check_current(layer: tt.nn.TTLinear, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_inference_reuses_merged_cores_until_they_change(monkeypatch):
    """No-grad forwards keep the sweep's merged super-cores while the cores are unchanged, never stale."""
    from tensortrain.contraction import sweeps

    torch.manual_seed(0)
    layer = tutorial_layer(4, dtype=torch.float64)
    x = torch.randn(1, 784, dtype=torch.float64)
    builds = []
    real = sweeps.super_of
    monkeypatch.setattr(sweeps, "super_of", lambda *a: builds.append(1) or real(*a))

    def dense_out() -> torch.Tensor:
        return layer.to_linear()(x)

    with torch.no_grad():
        plan = layer.plan(1, requires_grad=False)
        assert plan.kind == "sweep" and len(plan.groups) == 2  # merged pairs, kept between calls
        y1 = layer(x)
        assert len(builds) == 2
        y2 = layer(x)
        assert len(builds) == 2 and torch.equal(y1, y2)
        assert_close(y1, dense_out())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()  # training: never cached
    opt.step()  # in-place update: version bump
    with torch.no_grad():
        n = len(builds)
        assert_close(layer(x), dense_out())
        assert len(builds) == n + 2
        layer.load_state_dict({k: v * 2 for k, v in layer.state_dict().items()})
        assert_close(layer(x), dense_out())
        layer.cores[1].data = layer.cores[1].data * 3  # a new storage
        assert_close(layer(x), dense_out())
        layer.cores[0].data.mul_(2)  # bypasses the version counter: documented, cleared by hand
        layer.clear_cache()
        assert_close(layer(x), dense_out())
    clone = copy.deepcopy(layer)
    assert clone._cache == {} and layer._cache
    with torch.no_grad():
        assert_close(clone(x), layer(x))
    assert_close(pickle.loads(pickle.dumps(layer))(x), layer(x))


@pytest.mark.parametrize("strategy", ["auto", "grouped_rtl", "grouped_ltr"])
@pytest.mark.parametrize("rank", [4, 16])
def test_inference_cache_stays_tt_sized(rank, strategy):
    """Whatever the plan, the kept merged groups are at most CACHE_FACTOR times the cores, never W."""
    from tensortrain.contraction.cost import CACHE_FACTOR

    layer = tutorial_layer(rank)
    layer.strategy = strategy
    with torch.no_grad():
        for batch in (1, 8, 64, 1024):
            layer(torch.randn(batch, 784))
    if strategy == "auto":  # the full plan keeps its halves
        assert any(key[0] == "halves" for key in layer._cache) == (rank == 16)
    for key, (_, _, value, _) in layer._cache.items():
        kept = value[:2] if key[0] == "halves" else [a for a, _, _ in (t for t in value if t is not None)]
        assert sum(t.numel() for t in kept) <= CACHE_FACTOR * layer.num_tt_parameters()
        assert all(t.numel() < 784 * 625 for t in kept)


def test_inference_mode_layers_and_inputs():
    """A layer made under torch.inference_mode (no version counters) runs uncached; others cache as usual."""
    x = torch.randn(2, 784)
    with torch.inference_mode():
        made_inside = tutorial_layer(4)
        assert_close(made_inside(x), made_inside.to_linear()(x))
        assert made_inside._cache == {}
    layer = tutorial_layer(4)
    with torch.inference_mode():
        y = layer(x)
    with torch.no_grad():
        assert_close(y, layer(x))
        assert_close(layer(x), layer.to_linear()(x))


@pytest.mark.parametrize("strategy", tt.contraction.STRATEGIES)
@pytest.mark.parametrize("batch", [3, 1024])
def test_enable_grad_inside_inference_mode_records_nothing(strategy, batch):
    """Under inference_mode + enable_grad the full plan with a one-core half took the training path and tried to
    save an inference-tensor half for backward (RuntimeError); nn.Linear returns a plain output there."""
    # 3 cores: the full plan has a one-core half
    layer = tt.nn.TTLinear(100, 30, tt_rank=4, dtype=torch.float64)
    layer.strategy = strategy
    x = torch.randn(batch, 100, dtype=torch.float64)
    w = layer.weight
    with torch.inference_mode(), torch.enable_grad():
        y = layer(x)
        z = tt.matmul(x, tt.transpose(w))  # the functional path too, with cores that require grad
    assert not y.requires_grad and not z.requires_grad
    dense = layer.to_linear()
    with torch.no_grad():
        assert_close(y, dense(x))
        assert_close(z, dense(x) - layer.bias)


@pytest.mark.parametrize("strategy", ["auto", "full", "cores_rtl", "cores_ltr", "grouped_rtl"])
def test_a_layer_made_in_inference_mode_trains(strategy):
    """Its cores are inference tensors: sweeps reshaped them, and views of inference tensors leave autograd (no
    core gradients, silently); the full plan could not save them for backward (a RuntimeError)."""
    with torch.inference_mode():
        layer = tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 3, 2), dtype=torch.float64)
    layer.strategy = strategy
    x = torch.randn(4, 24, dtype=torch.float64)
    layer(x).square().sum().backward()
    plain = [c.detach().clone().requires_grad_() for c in layer.cores]
    w = tt.full(tt.TensorTrain(plain))
    (x @ w.t() + layer.bias.detach()).square().sum().backward()
    for c, ref in zip(layer.cores, plain, strict=True):
        assert c.grad is not None
        assert_close(c.grad, ref.grad)
    with torch.no_grad():  # and inference still runs from the inference tensors themselves
        assert_close(layer(x), x @ w.detach().t() + layer.bias)


@pytest.mark.parametrize("opt", ["Adam", "AdamW", "SGD"])
def test_inference_cache_sees_fused_optimizer_steps(opt):
    """Fused optimizers write the cores in place without bumping their version counters: the cache must still
    rebuild after a step (it counts optimizer steps)."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(64, 48, tt_rank=4)
    emb = tt.nn.TTEmbedding(5000, 16, tt_rank=4)
    optimizer = getattr(torch.optim, opt)([*layer.parameters(), *emb.parameters()], lr=0.05, fused=True)
    x, idx = torch.randn(16, 64), torch.randint(0, 5000, (900,))  # 900 distinct-ish rows: the kept halves
    with torch.no_grad():
        layer(x), emb(idx)  # fill the caches
    (layer(x).square().sum() + emb(idx).square().sum()).backward()
    optimizer.step()  # (torch 2.13's fused kernels leave the cores' version counters as they were)
    with torch.no_grad():
        got, got_e = layer(x), emb(idx)
        want = torch.nn.functional.linear(x, layer.to_linear().weight, layer.bias)
        want_e = emb.to_embedding()(idx)
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_close(got_e, want_e, rtol=1e-5, atol=1e-5)


def test_moving_a_layer_drops_its_cache():
    """After .double() / .to() the cache held the old cores' storages until each key was used again."""
    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    with torch.no_grad():
        layer(torch.randn(4, 24))
    assert layer._cache
    layer.double()
    assert not layer._cache
    with torch.no_grad():
        x = torch.randn(4, 24, dtype=torch.float64)
        assert_close(layer(x), torch.nn.functional.linear(x, layer.to_linear().weight, layer.bias))


@pytest.mark.parametrize("strategy", ["auto", "grouped_rtl", "grouped_ltr", "cores_rtl"])
def test_the_cache_holds_no_reference_to_the_parameters(strategy):
    """torch.utils.swap_tensors (load_state_dict / .to() with swap_module_params_on_conversion) needs each
    Parameter referenced only by its module: a cached one-core group held the Parameter itself."""
    layer = tt.nn.TTLinear(6, 6, tt_rank=3, in_dims=(2, 3), out_dims=(3, 2), dtype=torch.float64)
    layer.strategy = strategy
    with torch.no_grad():
        layer(torch.randn(4, 6, dtype=torch.float64))
    for k, core in enumerate(layer.cores):
        torch.utils.swap_tensors(core, torch.nn.Parameter(torch.full_like(core, float(k + 1))))
    assert all(float(c.detach().min()) == k + 1 for k, c in enumerate(layer.cores))


@pytest.mark.parametrize("core", ["0", "1"])
def test_pruned_cores_are_used_by_forward(core):
    """torch.nn.utils.prune renames the core to "<k>_orig" and keeps the masked core as a plain attribute: the
    fast path read the unmasked registry (and, pruning core 0, the cores in the wrong order)."""
    import torch.nn.utils.prune as prune

    layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    prune.l1_unstructured(layer.cores, core, amount=0.9)
    x = torch.randn(7, 12, dtype=torch.float64)
    want = x @ tt.full(tt.TensorTrain(list(layer.cores))).T + layer.bias
    assert_close(layer(x), want)
    with torch.no_grad():
        assert_close(layer(x), want)


def test_a_layer_caches_again_after_prune_remove():
    """prune.remove (and remove_parametrizations) registers the core again at the end of the registry ('0', '2',
    '3', '1'): the fast path, which wants the cores in order, was never taken again (no cache, silently)."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    layer = tt.nn.TTLinear(784, 625, tt_rank=8, dtype=torch.float64)
    x = torch.randn(4, 784, dtype=torch.float64)
    prune.l1_unstructured(layer.cores, "1", amount=0.3)
    prune.remove(layer.cores, "1")
    parametrize.register_parametrization(layer.cores, "2", torch.nn.Identity())
    parametrize.remove_parametrizations(layer.cores, "2")
    before = layer.cores._parameters
    shuffled = list(before)
    with torch.no_grad():
        y = layer(x)
    # the order is restored in a new dict swapped in whole: a forward in another thread never sees a key popped
    assert list(before) == shuffled and layer.cores._parameters is not before
    with torch.no_grad():
        assert list(layer.cores._parameters) == ["0", "1", "2", "3"] and len(layer._cache) == 1
        assert_close(y, layer.to_linear()(x))
    assert list(layer.state_dict()) == ["bias", "cores.0", "cores.1", "cores.2", "cores.3"]


def test_parametrized_or_pruned_bias():
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    class Double(nn.Module):
        def forward(self, b):
            return 2 * b

    layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    bias = layer.bias.detach().clone()
    parametrize.register_parametrization(layer, "bias", Double())
    x = torch.randn(3, 12, dtype=torch.float64)
    assert_close(layer(x), x @ tt.full(layer.weight).T + 2 * bias)  # was KeyError: 'bias'
    pruned = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    prune.l1_unstructured(pruned, "bias", amount=0.5)
    assert_close(pruned(x), x @ tt.full(pruned.weight).T + pruned.bias)


def test_pruned_core_follows_optimizer_steps():
    """prune's hook sits on the ParameterList, which is never called: the forward must run it, or the masked
    core stays the tensor computed at pruning time (stale after a step; the second backward crashed)."""
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    prune.l1_unstructured(layer.cores, "1", amount=0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    x = torch.randn(7, 12, dtype=torch.float64)
    for _ in range(3):
        layer(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    c0, orig = layer.cores._parameters["0"], layer.cores._parameters["1_orig"]
    dense = tt.full(tt.TensorTrain([c0, orig * layer.cores._buffers["1_mask"]]))
    want = x @ dense.T + layer.bias
    # .weight (and so dense_weight / to_linear) sees the stepped core without a forward in between
    assert_close(layer.dense_weight(), dense)
    assert_close(layer(x), want)
    with torch.no_grad():
        assert_close(layer(x), want)


def test_cores_in_shared_memory_are_never_served_from_the_cache():
    """Other processes write shared cores without bumping this process's version counters: the parent kept
    serving merges from before a Hogwild worker's step (a mix of old and new weights)."""
    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    layer.share_memory()
    x = torch.randn(300, 24, dtype=torch.float64)
    for strategy in ("auto", "full"):  # a sweep with a merged group, and the full plan's halves
        layer.strategy = strategy
        _check_current(layer, x)
        # a write this process's version counters do not see, as another process's would be
        alias = torch.empty(0, dtype=torch.float64).set_(layer.cores[1].untyped_storage())
        alias.mul_(1.5)
        _check_current(layer, x)
    layer.strategy = "auto"
    ctx = torch.multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_hogwild_step, args=(layer,))
    before = layer.dense_weight().detach().clone()
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert not torch.allclose(layer.dense_weight(), before)  # the worker's step reached the shared cores
    _check_current(layer, x[:1])
    _check_current(layer, x)


def test_nothing_is_kept_while_a_cuda_graph_is_captured(monkeypatch):
    """A merge kept from a call inside a CUDA graph capture (or read from the cache there) is a constant of the
    graph: its replays missed in-place updates of the cores. The capture itself needs a GPU (tests/test_cuda.py);
    here the capture test is faked, and no call may store or read a kept merge."""
    import tensortrain._transforms as cache_module  # (valueless() asks capturing() there)

    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    x = torch.randn(300, 24, dtype=torch.float64)
    monkeypatch.setattr(cache_module, "capturing", lambda t: True)
    for strategy in ("auto", "full"):  # a sweep with a merged group, and the full plan's halves
        layer.strategy = strategy
        _check_current(layer, x)
        assert not layer._cache
    monkeypatch.setattr(cache_module, "capturing", lambda t: False)
    _check_current(layer, x)  # (kept now: served from the cache below, where the capture must not read it)
    assert layer._cache
    monkeypatch.setattr(cache_module, "capturing", lambda t: True)
    layer.cores[1].data.mul_(1.5)  # (unseen by the version counter: an eager call would serve the kept merge)
    _check_current(layer, x)


def test_load_state_dict_swaps_parameters_after_cached_inference():
    """Cached merges were views of the core Parameters, so swapping them (load_state_dict under
    set_swap_module_params_on_conversion) failed after the first inference call."""
    layer = tt.nn.TTLinear(64, 48, tt_rank=4, in_dims=(4, 4, 4), out_dims=(4, 4, 3))
    state = {k: v.clone() + 1 for k, v in layer.state_dict().items()}
    x = torch.randn(2, 64)
    for batch in (2, 512):  # a sweep (one-core groups are views), the full plan (a half that is core 0)
        with torch.no_grad():
            layer(torch.randn(batch, 64))
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            layer.load_state_dict(state)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(False)
        _check_current(layer, x)
        assert_close(layer.cores[0].detach(), state["cores.0"])


def test_bias_only_training_after_an_inference_mode_call():
    """A cache filled under torch.inference_mode held inference tensors, which the full plan then tried to save
    for backward when only the bias trains (BitFit)."""
    layer = tt.nn.TTLinear(64, 48, tt_rank=4, in_dims=(4, 4, 4), out_dims=(4, 4, 3), dtype=torch.float64)
    layer.cores.requires_grad_(False)
    for batch in (8, 512):
        x = torch.randn(batch, 64, dtype=torch.float64)
        with torch.inference_mode():
            layer(x)
        layer(x).sum().backward()
        assert_close(layer.bias.grad, torch.full((48,), float(batch), dtype=torch.float64))
        layer.bias.grad = None


def test_the_optimizer_step_hook_is_registered_at_import():
    """It was registered at the first cached call: while another thread's optimizer iterated the global hooks,
    that step raised "OrderedDict mutated during iteration"."""
    from torch.optim.optimizer import _global_optimizer_post_hooks

    from tensortrain.contraction import layer_cache

    assert any(h is layer_cache._count_step for h in _global_optimizer_post_hooks.values())


def test_load_tt_at_new_ranks_frees_the_old_cores_and_their_cached_merges():
    import gc
    import weakref

    for layer, x in (
        (tt.nn.TTLinear(64, 64, tt_rank=8, in_dims=(4, 4, 4), out_dims=(4, 4, 4)), torch.randn(3, 64)),
        # (64 distinct rows: the lookup takes the merged halves, which it caches; 10 rows merged nothing)
        (tt.nn.TTEmbedding(64, 64, tt_rank=8, voc_dims=(4, 4, 4), emb_dims=(4, 4, 4)), torch.arange(64)),
    ):
        with torch.no_grad():
            layer(x)  # warms the inference cache with merges of the current cores
        assert layer._cache, type(layer).__name__  # (else the test checks nothing)
        old = weakref.ref(layer.cores[1])
        layer.load_tt_(tt.round(layer.weight, max_tt_rank=2))
        gc.collect()
        assert old() is None, type(layer).__name__


@pytest.mark.parametrize("switch", ["eval", "train"])
def test_mode_switch_clears_the_inference_cache(switch):
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(64, 64, tt_rank=4, in_dims=(4, 4, 4), out_dims=(4, 4, 4)).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        layer(x)
        layer.cores[1].data.mul_(2.0)  # bypasses the version counter: the docs say to switch mode after it
    getattr(layer, switch)()
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias)


# the inference cache keys merged super-cores by direction too: the same groups swept
# the other
# way (another strategy, or another batch size's plan) must not reuse the first direction's layout
def test_inference_cache_keeps_each_sweep_direction_apart(gen):
    layer = tt.nn.TTLinear(
        16, 16, tt_rank=2, in_dims=(2, 2, 2, 2), out_dims=(2, 2, 2, 2), dtype=torch.float64
    )
    layer.eval()
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = x @ layer.dense_weight().T + layer.bias
        for s in ("cores_rtl", "cores_ltr", "cores_rtl", "cores_ltr"):  # the groups (k, k + 1) both ways
            layer.strategy = s
            assert_close(layer(x), expected)


@pytest.mark.parametrize("target", ["1", "bias"])
def test_load_tt_into_a_pruned_core_is_refused(target):
    """load_tt_ copied into the masked core, a plain tensor that prune recomputes before every forward: the
    layer kept its old values without a word (and a rank change failed in ParameterList's setattr)."""
    import torch.nn.utils.prune as prune

    layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    module = layer if target == "bias" else layer.cores
    prune.l1_unstructured(module, target, amount=0.0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    w = tt.random_matrix([[5, 2], [3, 4]], tt_rank=2, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"'{target}' is pruned or parametrized"):
        layer.load_tt_(w, bias=torch.zeros(10, dtype=torch.float64))
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing loaded halfway
    prune.remove(module, target)
    layer.load_tt_(w)
    x = torch.randn(4, 12, dtype=torch.float64)
    assert_close(layer(x), x @ tt.full(w).T + layer.bias)


@pytest.mark.parametrize("how", ["prune", "parametrize"])
def test_a_rank_changing_load_into_a_pruned_or_parametrized_core_is_refused_whole(how):
    """load_state_dict of other ranks replaced the cores one by one: a parametrized core 1 raised a raw KeyError
    after core 0 was resized, a pruned one got a plain Parameter beside its `_orig`; either way every later
    forward failed. Now one error, and the layer as it was."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    src = tt.nn.TTLinear(12, 10, tt_rank=2, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
    if how == "prune":
        prune.l1_unstructured(layer.cores, "1", amount=0.0)
    else:
        parametrize.register_parametrization(layer.cores, "1", torch.nn.Identity())
    x = torch.randn(4, 12, dtype=torch.float64)
    cores = [c.detach().clone() for c in layer.cores]  # (the bias loads: torch loads every key that fits)
    with pytest.raises(RuntimeError, match=r"core\(s\) \[1\] are pruned or parametrized"):
        layer.load_state_dict(src.state_dict())
    assert layer.tt_ranks == (1, 3, 1)
    assert all(torch.equal(a, b) for a, b in zip(cores, layer.cores, strict=True))
    assert_close(layer(x), x @ tt.full(tt.TensorTrain(cores)).T + layer.bias)


def test_inference_cache_keeps_no_tensors_from_functional_call():
    """The cache kept the tensors a torch.func.functional_call swapped in (an EMA copy, another checkpoint) alive
    after the caller let them go, until the layer's next call."""
    import gc
    import weakref

    layer = tt.nn.TTLinear(64, 64, tt_rank=8, in_dims=(4, 4, 4), out_dims=(4, 4, 4))
    x = torch.randn(3, 64)
    with torch.no_grad():
        layer(x)  # the layer's own entry
        params = {k: v.detach().clone() for k, v in layer.named_parameters()}
        got = torch.func.functional_call(layer, params, (x,))
        ref = weakref.ref(params["cores.1"])
        ref_w = x @ tt.full(tt.TensorTrain([params[f"cores.{k}"] for k in range(3)])).T + params["bias"]
        assert torch.allclose(got, ref_w, atol=1e-5)
    del params
    gc.collect()
    assert ref() is None


def test_a_stale_cache_entry_goes_with_the_first_miss():
    """Entries under other keys kept a replaced core alive until their own key came back."""
    import gc
    import weakref

    from tensortrain.contraction.layer_cache import cached

    cores = [torch.nn.Parameter(torch.randn(1, 2, 2, 3)), torch.nn.Parameter(torch.randn(3, 2, 2, 1))]
    cache: dict = {}
    cached(cache, "a", cores, lambda cs: cs[0] * 2)
    cached(cache, "b", cores, lambda cs: cs[1] * 2)
    old = weakref.ref(cores[1])
    cores[1] = torch.nn.Parameter(torch.randn(3, 2, 2, 1))
    cached(cache, "a", cores, lambda cs: cs[0] * 2)
    gc.collect()
    assert set(cache) == {"a"} and old() is None


@pytest.mark.parametrize("make", ["linear", "embedding", "complex"])
def test_the_cache_sees_a_core_given_another_view_of_its_storage(make):
    """``p.data = p.data.transpose(1, 2)`` (square modes: the same shape) and ``p.data = p.data.conj()`` keep the
    core's storage address, shape and version counter, which was all the cache compared: the next inference
    call used the old merges (errors 1.0 to 11 in float64)."""
    if make == "embedding":
        layer = tt.nn.TTEmbedding(
            64, 64, tt_rank=3, voc_dims=(4, 4, 4), emb_dims=(4, 4, 4), dtype=torch.float64
        )
        x, dense = torch.arange(64), lambda: layer.to_embedding()
    else:
        dtype = torch.complex128 if make == "complex" else torch.float64
        layer = tt.nn.TTLinear(16, 16, tt_rank=3, in_dims=(4, 4), out_dims=(4, 4), dtype=dtype)
        x, dense = torch.randn(5, 16, dtype=dtype), lambda: layer.to_linear()
    with torch.no_grad():
        layer(x)  # (merges kept)
        for c in layer.cores:
            c.data = c.data.conj() if make == "complex" else c.data.transpose(1, 2)
        assert_close(layer(x), dense()(x))


def test_the_cache_sees_cores_viewed_as_another_dtype():
    """``p.data = p.data.view(torch.bfloat16)`` on float16 cores keeps address, shape and strides: the merges kept
    in float16 went on being used (a dtype error eagerly, silently stale values under autocast)."""
    layer = tt.nn.TTLinear(16, 16, tt_rank=3, in_dims=(4, 4), out_dims=(4, 4), dtype=torch.float16)
    with torch.no_grad():
        layer(torch.randn(5, 16, dtype=torch.float16))  # (merges kept)
        for c in layer.cores:
            c.data = c.data.view(torch.bfloat16)
        layer.bias.data = layer.bias.data.view(torch.bfloat16)
        x = torch.randn(5, 16, dtype=torch.bfloat16)
        assert_close(layer(x).float(), layer.to_linear()(x).float(), rtol=2e-2, atol=2e-2)


def test_forward_pre_hooks_on_the_cores_run_in_every_forward():
    """A hook on the ParameterList (here a clamp of the cores) ran in TTEmbedding's forward, in the weight's
    views and in the compiled forward, but not in TTLinear's eager forward, which read the registry directly."""
    layer = tt.nn.TTLinear(24, 12, tt_rank=3, in_dims=(2, 3, 4), out_dims=(3, 2, 2), dtype=torch.float64)
    calls = []

    def clamp(cores: nn.ParameterList, args: tuple) -> None:
        calls.append(1)
        with torch.no_grad():
            for p in cores:
                p.clamp_(-0.05, 0.05)

    handle = layer.cores.register_forward_pre_hook(clamp)
    x = torch.randn(5, 24, dtype=torch.float64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y = layer(x)
        assert len(calls) == 1 and max(float(c.detach().abs().max()) for c in layer.cores) <= 0.05
        handle.remove()  # (the oracle's weight view would run it again)
        assert_close(y, layer.to_linear()(x))
        handle, calls = layer.cores.register_forward_pre_hook(clamp), []


@pytest.mark.parametrize("how", ["prune", "parametrize"])
def test_a_same_rank_load_into_a_pruned_or_parametrized_layer_works(how):
    """Resuming a pruned (or parametrized) model from its own checkpoint: the ranks are unchanged, so nothing is
    resized and the rerouted core is no obstacle; only a rank change is refused for it."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    def build(seed: int) -> tt.nn.TTLinear:
        torch.manual_seed(seed)
        layer = tt.nn.TTLinear(12, 10, tt_rank=3, in_dims=(3, 4), out_dims=(5, 2), dtype=torch.float64)
        if how == "prune":
            prune.l1_unstructured(layer.cores, "1", amount=0.5)
        else:
            parametrize.register_parametrization(layer.cores, "1", torch.nn.Tanh())
        return layer

    src, layer = build(0), build(1)
    layer.load_state_dict(src.state_dict())
    x = torch.randn(4, 12, dtype=torch.float64)
    assert layer.tt_ranks == src.tt_ranks == (1, 3, 1)
    assert_close(layer(x), src(x))


@pytest.mark.parametrize("strategy", ["full", "cores_rtl", "grouped_ltr"])
def test_the_cache_sees_ranks_narrowed_through_data(strategy):
    """``p.data = p.data[..., :r]`` and ``q.data = q.data[:r]`` (a rank truncated in place) keep both cores'
    storage addresses, strides and version counters: only their shapes tell the kept merges are stale."""
    layer = tt.nn.TTLinear(16, 16, tt_rank=3, in_dims=(4, 4), out_dims=(4, 4), dtype=torch.float64)
    layer.strategy = strategy
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        layer(x)  # (merges kept)
        c0, c1 = layer.cores
        c0.data = c0.data[..., :2]
        c1.data = c1.data[:2]
        assert_close(layer(x), layer.to_linear()(x))


def test_kept_halves_and_groups_are_per_split_and_direction():
    """One layer's cache keeps the full plan's halves for each split, and the sweeps' merged groups for each
    direction, apart: another split's halves, another direction's super-cores, are other matrices."""
    from tensortrain.contraction import full_plan, sweeps
    from tensortrain.contraction.layer_cache import cached_halves, cached_supers

    torch.manual_seed(0)
    cores = [nn.Parameter(torch.randn(a, 4, 4, b, dtype=torch.float64)) for a, b in ((1, 2), (2, 2), (2, 1))]
    cache: dict = {}
    for split in (1, 2, 1):
        got = cached_halves(cache, cores, split)
        want = full_plan.halves(cores, split)
        assert got is not None
        for a, b in zip(got[:2], want[:2], strict=True):
            assert torch.equal(a, b)
    # (the middle group, 64 x 64 modes, is too large to keep: merged on every call, each way)
    shapes = ((1, 4, 4, 2), (2, 8, 8, 2), (2, 8, 8, 2), (2, 4, 4, 1))
    cores = [nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in shapes]
    for groups in (((0, 1), (1, 3), (3, 4)), ((0, 2), (2, 4))):
        for direction in ("rtl", "ltr", "rtl"):
            got = cached_supers(cache, cores, groups, direction)
            want = sweeps.supers_of(cores, groups, direction)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    # halves too large to keep (split 1: the other three cores merged, 256 x 256 modes) are neither kept nor made
    cache.clear()
    assert cached_halves(cache, cores, 1) is None and cache == {}
