"""tensortrain.contraction: every plan against the dense oracle (values, gradients, double backward, autocast),
the executors' builds, folds and chunks, caches and argument checks. The cost model and the planner's choices:
tests/test_contraction_cost.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import TOL, assert_close
from strategies import NARROW, matrix_specs, random_cores, seeds, zero_cores
from tensortrain import contraction as C
from tensortrain.contraction.full_plan import FullLinear, halves


def dense_of(cores: list[torch.Tensor]) -> torch.Tensor:
    return tt.full(tt.TensorTrain(cores))


leads = st.sampled_from([(), (1,), (3,), (2, 3)])


@given(spec=matrix_specs(max_d=4), lead=leads, seed=seeds)
def test_every_plan_matches_dense(spec, lead, seed):
    raw, ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = random_cores(raw, ranks, gen=gen)
    w = dense_of(cores)
    x = torch.randn(*lead, w.shape[1], generator=gen, dtype=torch.float64)
    want = x @ w.T
    batch = x.numel() // w.shape[1]
    plans = C.enumerate_plans(cores, batch)
    d = len(cores)
    assert len(plans) == max(d - 1, 1) + 2 * 2 ** (d - 1)
    for p in plans:
        assert_close(C.linear(x, cores, strategy=p), want)
    for s in C.STRATEGIES:
        assert_close(C.linear(x, cores, strategy=s), want)


@given(spec=matrix_specs(max_d=3), batch=st.sampled_from([1, 4]), seed=seeds)
def test_gradients_equal_across_plans(spec, batch, seed):
    raw, ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    bias = torch.randn(dense_of(cores).shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch, dense_of(cores).shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(batch, bias.shape[0], generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(x @ dense_of(cores).T + bias, [x, bias, *cores], g_out)
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        got = torch.autograd.grad(C.linear(x, cores, bias, strategy=p), [x, bias, *cores], g_out)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize(
    ("raw", "ranks"),
    [
        (((2, 3, 2), (3, 2, 2)), (1, 2, 3, 1)),  # rank large against the column modes: build with one permute
        (((2, 3), (8, 8)), (1, 2, 1)),  # small rank: W built by GEMMs batched over row-mode pairs
    ],
)
def test_gradcheck_full_function_and_sweeps(gen, raw, ranks):
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    n = dense_of(cores).shape[1]
    x = torch.randn(3, n, generator=gen, dtype=torch.float64, requires_grad=True)
    lmat, rmat, dims = halves(cores, 1)
    lmat, rmat = lmat.detach().requires_grad_(True), rmat.detach().requires_grad_(True)
    bias = torch.randn(dense_of(cores).shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    for keep in (False, True):
        f = lambda a, b, c, keep=keep: FullLinear.apply(a, b, c, None, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, lmat, rmat))
        fb = lambda a, b, c, bb, keep=keep: FullLinear.apply(a, b, c, bb, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(fb, (x, lmat, rmat, bias))  # bias fused into the GEMM
    for p in C.enumerate_plans(cores, 3, requires_grad=True):
        assert torch.autograd.gradcheck(
            lambda a, bb, *cs, p=p: C.linear(a, cs, bb, strategy=p), (x, bias, *cores)
        )
        assert torch.autograd.gradcheck(lambda a, *cs, p=p: C.linear(a, cs, strategy=p), (x, *cores))


@pytest.mark.parametrize("direction", ["rtl", "ltr"])
@pytest.mark.parametrize("groups", [((0, 2), (2, 4)), ((0, 1), (1, 2), (2, 4)), ((0, 4),), ((0, 1), (1, 4))])
def test_sweep_function_backward_is_autograds(gen, direction, groups):
    """SweepFunction's hand-written backward (both gradient layouts) against gradcheck and plain autograd."""
    from tensortrain.contraction import sweeps as E
    from tensortrain.contraction import training_sweep as T

    raw, ranks = ((2, 3, 2, 2), (3, 2, 2, 3)), (1, 2, 3, 2, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(5, 36, generator=gen, dtype=torch.float64, requires_grad=True)

    def new(a, *cs):
        return T.sweep_trained(a, E.supers_of(cs, groups, direction), direction)

    def old(a, *cs):
        return E.sweep(a, E.supers_of(cs, groups, direction), direction)

    assert_close(new(x, *cores), old(x, *cores))
    assert torch.autograd.gradcheck(new, (x, *cores))
    g = torch.randn(5, 24, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(old(x, *cores), (x, *cores), g)
    for a, b in zip(torch.autograd.grad(new(x, *cores), (x, *cores), g), want, strict=True):
        assert_close(a, b)
    g = torch.randn(1, 24, generator=gen, dtype=torch.float64).expand(5, 24)  # broadcast, as y.sum()'s
    want = torch.autograd.grad(old(x, *cores), (x, *cores), g)
    for a, b in zip(torch.autograd.grad(new(x, *cores), (x, *cores), g), want, strict=True):
        assert_close(a, b)
    xc = x.detach()  # no gradient for x: the first step's state gradient is skipped
    got = torch.autograd.grad(new(xc, *cores), cores, g)
    for a, b in zip(got, torch.autograd.grad(old(xc, *cores), cores, g), strict=True):
        assert_close(a, b)


def test_training_sweeps_use_the_sweep_function(gen, monkeypatch):
    from tensortrain.contraction import training_sweep as T

    calls = []
    monkeypatch.setattr(
        T.SweepFunction, "apply", lambda *a, real=T.SweepFunction.apply: calls.append(1) or real(*a)
    )
    cores = [c.requires_grad_(True) for c in random_cores(((2, 3), (3, 2)), (1, 2, 1), gen=gen)]
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    C.linear(x, cores, strategy="grouped_ltr").sum().backward()
    assert calls == [1]
    C.linear(x[:2], cores, strategy="grouped_ltr").sum().backward()  # tiny batch: autograd's matmul
    assert calls == [1]
    with torch.no_grad():
        C.linear(x, cores, strategy="grouped_ltr")  # inference: plain batched products
    C.linear(x, cores, strategy="grouped_rtl").sum().backward()  # rtl too
    assert calls == [1, 1]


def test_blocked_build_of_a_large_w(gen, monkeypatch):
    """Past BLOCKED_ABOVE, W and the halves' gradients are built in blocks of left rows: same values."""
    from tensortrain.contraction import full_plan, machine

    raw, ranks = ((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1)  # split 1: left (3 x 2), right (4 x 4), rank 3
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    lmat, rmat, dims = halves(cores, 1)
    lmat, rmat = lmat.detach().requires_grad_(True), rmat.detach().requires_grad_(True)
    want = full_plan.build_full(lmat, rmat, dims)
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
    monkeypatch.setattr(machine, "BLOCK_BYTES", 8 * 2 * 32)  # two left rows (of 3) per block
    assert full_plan._blocks(dims, lmat) == 2
    assert_close(full_plan.build_full(lmat, rmat, dims), want)
    for keep in (False, True):
        f = lambda a, b, c, keep=keep: FullLinear.apply(a, b, c, None, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, lmat, rmat))


def _complex_cores(raw, ranks, gen, grad=False):
    """Complex128 cores whose real and imaginary parts are two draws of ``random_cores``."""
    parts = zip(random_cores(raw, ranks, gen=gen), random_cores(raw, ranks, gen=gen), strict=True)
    return [torch.complex(a, b).requires_grad_(grad) for a, b in parts]


def _complex_randn(gen, *shape):
    """A complex128 tensor of standard normal real and imaginary parts."""
    return torch.complex(*(torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)))


def test_vmap_over_stacked_cores_builds_a_large_w_whole(gen, monkeypatch):
    """torch.func.vmap over an ensemble's stacked cores (batched halves): a W past BLOCKED_ABOVE is built whole
    under the transform, as each member's dense W (blocks copied into a plain W fail: vmap cannot write a
    batched block into an unbatched tensor; a mutant)."""
    from tensortrain.contraction import full_plan, machine

    raw, ranks = ((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1)
    members = [random_cores(raw, ranks, gen=gen) for _ in range(2)]
    stacks = [torch.stack(cs) for cs in zip(*members, strict=True)]
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    want = torch.stack([x @ dense_of(cs).T for cs in members])
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
    monkeypatch.setattr(machine, "BLOCK_BYTES", 8 * 2 * 32)  # two left rows (of 3) per block
    assert full_plan._blocks((3, 2, 4, 4), x) == 2  # (eager: blocked)
    with torch.no_grad():
        y = torch.func.vmap(lambda *cs: C.linear(x, list(cs), strategy="full"))(*stacks)
    assert_close(y, want)


def test_complex_full_plan_builds_a_large_w_in_blocks(gen, monkeypatch):
    """A complex W past BLOCKED_ABOVE is built in blocks of left rows like a real one (into reused scratch in
    inference, recorded in training): the dense x @ W^T and its gradients, no conjugate anywhere."""
    from tensortrain.contraction import full_plan, machine

    raw, ranks = ((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1)
    cores = _complex_cores(raw, ranks, gen, grad=True)
    x = _complex_randn(gen, 4, 8)
    x.requires_grad_(True)
    w = dense_of(cores)
    g = _complex_randn(gen, 4, 12)
    want = torch.autograd.grad(x @ w.T, (x, *cores), g)
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
    monkeypatch.setattr(machine, "BLOCK_BYTES", 16 * 2 * 32)  # two left rows (of 3) per block
    assert full_plan._blocks((3, 2, 4, 4), x) == 2
    for plan in [p for p in C.enumerate_plans(cores, 4, requires_grad=True) if p.kind == "full"]:
        with torch.no_grad():
            assert_close(C.linear(x, cores, strategy=plan), x @ w.T)
        got = torch.autograd.grad(C.linear(x, cores, strategy=plan), (x, *cores), g)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


# (torch 2.6's gradcheck batches with its own deprecated vmap)
@pytest.mark.filterwarnings(
    "ignore:Please use `torch.vmap` instead of `torch._vmap_internals.vmap`:FutureWarning"
)
@pytest.mark.parametrize("blocked", [False, True])
def test_batched_gradients_through_the_full_plan(gen, monkeypatch, blocked):
    """jacobian/hessian(vectorize=True) and gradcheck(check_batched_grad=True) batch the output's gradient with
    autograd's own vmap, which refuses out= writes: FullLinear's backward wrote dW (and its blocks) into scratch."""
    from tensortrain.contraction import machine

    if blocked:
        monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
        monkeypatch.setattr(machine, "BLOCK_BYTES", 8 * 2 * 32)
    raw, ranks = ((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    lmat, rmat, dims = halves([c.detach() for c in cores], 1)
    lmat, rmat = lmat.requires_grad_(True), rmat.requires_grad_(True)
    for keep in (False, True):
        f = lambda a, b, c, keep=keep: FullLinear.apply(a, b, c, None, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, lmat, rmat), check_batched_grad=True)
    layer = tt.nn.TTLinear.from_tt(tt.TensorTrain([c.detach() for c in cores]))
    layer.strategy = "full"
    dense = layer.to_linear()
    xs = x.detach()
    jac = torch.autograd.functional.jacobian(layer, xs, vectorize=True)
    assert_close(jac, torch.autograd.functional.jacobian(dense, xs, vectorize=True))
    v = torch.randn(3, 4, 12, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(layer(xs), list(layer.cores), v, is_grads_batched=True)
    for k in range(3):
        want = torch.autograd.grad(layer(xs), list(layer.cores), v[k])
        for g, w in zip(got, want, strict=True):
            assert_close(g[k], w)


@pytest.mark.parametrize(
    ("raw", "ranks", "split"),
    [
        (((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1), 1),
        (((2, 3, 2), (3, 2, 4)), (1, 2, 5, 1), 2),
        (((6,), (4,)), (1, 1), 1),  # one core: the right half is the scalar 1
        (((4, 1, 3), (1, 5, 2)), (1, 4, 3, 1), 1),
    ],
)
def test_sliced_build_of_w(gen, monkeypatch, raw, ranks, split):
    """Where slices are large (SLICE_MIN), W is written one left row index at a time: same W, same gradients."""
    from tensortrain.contraction import full_plan, machine

    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    want_w = dense_of([c.detach() for c in cores])
    x = torch.randn(5, want_w.shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    lmat, rmat, dims = halves([c.detach() for c in cores], split)
    calls = []
    monkeypatch.setattr(machine, "SLICE_MIN", 0)
    monkeypatch.setattr(
        full_plan,
        "_build_sliced",
        lambda *a, real=full_plan._build_sliced: calls.append(1) or real(*a),
    )
    assert_close(full_plan.build_full(lmat, rmat, dims), want_w)
    out = torch.full_like(want_w, float("nan"))
    assert full_plan.build_full(lmat, rmat, dims, out=out).data_ptr() == out.data_ptr()
    assert_close(out, want_w)
    assert len(calls) == 2
    with torch.no_grad():
        assert_close(full_plan.full_linear(x, cores, split, keep=False), x @ want_w.t())
    assert len(calls) == 3
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)  # sliced takes precedence over blocks
    assert_close(full_plan.build_full(lmat, rmat, dims), want_w)
    assert len(calls) == 4
    lmat, rmat = lmat.requires_grad_(True), rmat.requires_grad_(True)
    for keep in (False, True):
        f = lambda a, b, c, keep=keep: FullLinear.apply(a, b, c, None, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, lmat, rmat))
        assert torch.autograd.gradgradcheck(f, (x, lmat, rmat))  # a recorded rebuild takes the plain path


@pytest.mark.parametrize("batch", [3, 9])  # 9: training sweeps run SweepFunction
def test_double_backward_of_every_plan(gen, batch):
    """Gradient penalties differentiate the gradient: every plan's backward is itself differentiable."""
    raw, ranks = ((2, 3, 2), (3, 2, 2)), (1, 2, 3, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(batch, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        assert torch.autograd.gradgradcheck(lambda a, *cs, p=p: C.linear(a, cs, strategy=p), (x, *cores)), p


@pytest.mark.parametrize("batch", [3, 9])
def test_autocast_training_of_every_plan(gen, batch):
    """Under CPU autocast every plan returns bfloat16 like nn.Linear, and its backward runs (float32 grads)."""
    raw, ranks = ((2, 3, 2), (3, 2, 2)), (1, 2, 3, 1)
    cores = [c.float().requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    bias = torch.randn(12, generator=gen).requires_grad_(True)
    x = torch.randn(batch, 12, generator=gen, requires_grad=True)
    want = x.detach() @ dense_of([c.detach() for c in cores]).T + bias.detach()
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = C.linear(x, cores, bias, strategy=p)
        assert y.dtype == torch.bfloat16, p
        assert_close(y.float(), want, rtol=0.05, atol=0.05)
        y.float().sum().backward()
        assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in (x, bias, *cores))


# rank 1: W by GEMMs batched over row-mode pairs; rank 3: one GEMM and a permute
@pytest.mark.parametrize("rank", [1, 3])
def test_full_plan_inference_under_autocast_builds_w_in_autocast_precision(gen, rank):
    """Under autocast the full plan's inference builds W with autocast's products (bfloat16), as its training
    path and the sweeps do, not in float32 into the cores' own-precision scratch (out= products do not cast)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Products(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes: list[tuple[str, torch.dtype]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("mm", "bmm", "matmul", "addmm", "baddbmm"):
                self.dtypes += [(str(func), a.dtype) for a in args if isinstance(a, torch.Tensor)]
            return func(*args, **(kwargs or {}))

    cores = [c.float() for c in random_cores(((2, 3), (8, 8)), (1, rank, 1), gen=gen)]
    x = torch.randn(5, 64, generator=gen)
    want = x.double() @ dense_of([c.double() for c in cores]).T
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16), Products() as mode:
            y = C.linear(x, [c.clone().requires_grad_(grad) for c in cores], strategy="full")
        assert y.dtype == torch.bfloat16
        assert_close(y.double(), want, rtol=0.05, atol=0.05)
        assert mode.dtypes and all(d == torch.bfloat16 for _, d in mode.dtypes), mode.dtypes


def test_large_w_and_its_gradient_borrow_reused_scratch(gen, monkeypatch):
    """A blocked W (and dW in backward) live in tensortrain.workspace's buffers: same values, buffers reused."""
    from tensortrain import workspace
    from tensortrain.contraction import full_plan, machine

    raw, ranks = ((3, 2, 2), (2, 2, 2)), (1, 3, 4, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    lmat, rmat, dims = halves(cores, 1)
    lmat, rmat = lmat.detach().requires_grad_(True), rmat.detach().requires_grad_(True)
    want = x.detach() @ full_plan.build_full(lmat, rmat, dims).detach().t()
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
    monkeypatch.setattr(machine, "BLOCK_BYTES", 8 * 2 * 32)
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    workspace.empty_cache()
    with torch.no_grad():
        assert_close(full_plan.full_linear(x, cores, 1, keep=False), want)
    held = workspace.held_bytes()
    assert held == 8 * (12 * 8 + 4 * 16)  # W (12 x 8 float64) and a block (2 left rows: 4 x 16), returned
    with torch.inference_mode():  # a buffer made outside inference mode is written inside it
        assert_close(full_plan.full_linear(x, cores, 1, keep=False), want)
    assert workspace.held_bytes() == held  # reused, not reallocated
    for keep in (False, True):
        f = lambda a, b, c, keep=keep: FullLinear.apply(a, b, c, None, dims, keep)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, lmat, rmat))
        assert torch.autograd.gradgradcheck(f, (x, lmat, rmat))  # double backward records, no scratch
    assert workspace.held_bytes() == held  # backward borrows W, then dW, and their blocks from the same two
    workspace.empty_cache()


def test_full_function_keeps_only_the_halves(gen):
    """The rebuilding variant saves x and the two halves, not the dense W; the keeping one saves W."""
    raw, ranks = ((4, 4), (4, 4)), (1, 2, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    for variant, has_w in (("recompute", False), ("keep", True)):
        (plan,) = [p for p in C.enumerate_plans(cores, 5, requires_grad=True) if p.direction == variant]
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, s=sizes: s.append(t.numel()) or t, lambda t: t
        ):
            C.linear(x, cores, strategy=plan)
        assert (16 * 16 in sizes) == has_w
        assert 5 * 16 in sizes
        # (the halves are the two cores themselves: parameters, which saved_bytes leaves out)
        assert plan.saved_bytes == 8 * (256 if has_w else 0)


def test_float32_and_batch_dims(gen):
    raw, ranks = ((2, 3, 2), (2, 2, 3)), (1, 3, 2, 1)
    cores = random_cores(raw, ranks, gen=gen, dtype=torch.float32)
    w = dense_of(cores)
    x = torch.randn(2, 1, 4, 12, generator=gen)
    for s in C.STRATEGIES:
        y = C.linear(x, cores, strategy=s)
        assert y.shape == (2, 1, 4, 12) and y.dtype == torch.float32
        assert_close(y, x @ w.T, **TOL[torch.float32])


def test_empty_batch(gen):
    cores = random_cores(((2, 2), (3, 2)), (1, 2, 1), gen=gen)
    for s in C.STRATEGIES:
        assert C.linear(torch.zeros(0, 6, dtype=torch.float64), cores, strategy=s).shape == (0, 4)


@given(spec=matrix_specs(max_d=3), p=st.integers(1, 3), seed=seeds)
def test_tt_dense_and_dense_tt_matmul(spec, p, seed):
    raw, ranks = spec
    gen = torch.Generator().manual_seed(seed)
    w_tt = tt.TensorTrain(random_cores(raw, ranks, gen=gen))
    w = tt.full(w_tt)
    b = torch.randn(2, w.shape[1], p, generator=gen, dtype=torch.float64)
    assert_close(C.tt_dense_matmul(w_tt, b), w @ b)
    a = torch.randn(2, p, w.shape[0], generator=gen, dtype=torch.float64)
    assert_close(C.dense_tt_matmul(a, w_tt), a @ w)


def _chunked_by_8_rows(monkeypatch, cores, strategy, item, batch=37):
    """Set CHUNK_BYTES and CACHE_BYTES so that ``strategy``'s inference sweep over ``cores`` (entries of ``item``
    bytes) runs up to 30 rows whole and more in chunks of 8 rows; returns its plan at ``batch``."""
    from tensortrain.contraction import cost, machine

    plan = C.plan(cores, batch, strategy=strategy, requires_grad=False)
    per_row = max(max(cost._state_per_row(C.dims_of(cores), i, j, plan.direction)) for i, j in plan.groups)
    monkeypatch.setattr(machine, "CHUNK_BYTES", item * per_row * 8)
    monkeypatch.setattr(machine, "CACHE_BYTES", item * per_row * 30)
    C.clear_plan_cache()
    return plan


def _count_rows(monkeypatch, name, calls):
    """Append the rows of each call of ``contraction.sweeps.<name>`` to ``calls``."""
    from tensortrain.contraction import sweeps

    real = getattr(sweeps, name)
    monkeypatch.setattr(sweeps, name, lambda xc, *a: calls.append(xc.shape[0]) or real(xc, *a))


@pytest.mark.parametrize("strategy", ["grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"])
def test_inference_sweeps_run_large_batches_in_chunks(gen, monkeypatch, strategy):
    """A sweep whose states outgrow CACHE_BYTES runs in chunks of CHUNK_BYTES: same values, chunked calls."""
    cores = random_cores(((3, 4, 2), (2, 5, 3)), (1, 3, 2, 1), gen=gen)
    x = torch.randn(37, 30, generator=gen, dtype=torch.float64)
    want = x @ dense_of(cores).T
    plan = _chunked_by_8_rows(monkeypatch, cores, strategy, 8)
    assert C.plan(cores, 37, strategy=strategy, requires_grad=False).groups == plan.groups
    calls = []
    _count_rows(monkeypatch, "_steps", calls)
    _count_rows(monkeypatch, "steps_into", calls)  # chunks: into the output's rows, states in reused scratch
    with torch.no_grad():
        assert_close(C.linear(x, cores, strategy=strategy), want)
        assert calls == [8, 8, 8, 8, 5]
        calls.clear()
        assert_close(C.linear(x[:30], cores, strategy=strategy), want[:30])  # fits the "cache": one pass
        assert calls == [30]
        calls.clear()
        assert_close(C.linear(x.t().contiguous().t(), cores, strategy=strategy), want)  # a strided input
        assert calls == [8, 8, 8, 8, 5]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: chunks through autocast's own matmuls
            c32 = [c.float() for c in cores]
            assert_close(
                C.linear(x.float(), c32, strategy=strategy).float(), want.float(), rtol=0.05, atol=0.05
            )
    calls.clear()
    xg = x.clone().requires_grad_(True)
    assert_close(C.linear(xg, cores, strategy=strategy), want)  # training: one pass, states kept for backward
    assert calls == []  # training sweeps run SweepFunction
    C.clear_plan_cache()


@pytest.mark.parametrize("strategy", ["grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"])
def test_complex_inference_sweeps_run_in_chunks(gen, monkeypatch, strategy):
    """A complex sweep in chunks (states in scratch, each chunk's last step written into the output's rows) is the
    dense product x @ W^T: no conjugate on any step, the single-column ones (one GEMM) included."""
    raw, ranks = ((3, 4, 2), (2, 5, 3)), (1, 3, 2, 1)
    cores = _complex_cores(raw, ranks, gen)
    x = _complex_randn(gen, 37, 30)
    want = x @ dense_of(cores).T
    _chunked_by_8_rows(monkeypatch, cores, strategy, 16)
    calls = []
    _count_rows(monkeypatch, "steps_into", calls)
    with torch.no_grad():
        assert_close(C.linear(x, cores, strategy=strategy), want)
    assert calls == [8, 8, 8, 8, 5]
    C.clear_plan_cache()


def test_plan_cache(gen):
    cores = random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    C.clear_plan_cache()
    assert C.plan_cache_size() == 0
    C.linear(torch.randn(5, 4, dtype=torch.float64), cores)
    C.linear(torch.randn(7, 4, dtype=torch.float64), cores)  # same power-of-two bucket (8)
    assert C.plan_cache_size() == 1
    C.linear(torch.randn(9, 4, dtype=torch.float64), cores)  # bucket 16
    assert C.plan_cache_size() == 2
    C.linear(torch.randn(9, 4, dtype=torch.float64, requires_grad=True), cores)  # grad mode
    assert C.plan_cache_size() == 3
    C.linear(torch.randn(9, 4, dtype=torch.float64), cores, strategy="full")
    assert C.plan_cache_size() == 4
    C.linear(torch.randn(9, 4), [c.float() for c in cores])  # dtype
    assert C.plan_cache_size() == 5
    C.clear_plan_cache()
    assert C.plan_cache_size() == 0


def test_a_full_plan_cache_drops_its_oldest_entry(gen, monkeypatch):
    import tensortrain.contraction.plan_cache as CP

    w = tt.TensorTrain(random_cores(((4, 8), (7, 4)), (1, 4, 1), gen=gen))
    monkeypatch.setattr(CP, "PLAN_CACHE_LIMIT", 3)
    C.clear_plan_cache()
    for batch in (1, 2, 4, 8, 16):  # one bucket each
        C.plan(w, batch, requires_grad=True, max_saved_bytes=10**9)
    assert C.plan_cache_size() == 3
    assert sorted(key[2] for key in CP._PLAN_CACHE) == [4, 8, 16]
    C.clear_plan_cache()


def test_inference_plans_report_no_recompute_and_both_gradients(gen):
    """Without gradients there is no backward to price: recompute is False and input_grad/cores_grad are True,
    whatever the flags say (both False too; training refuses that)."""
    w = tt.TensorTrain(random_cores(((4, 8), (7, 4)), (1, 4, 1), gen=gen))
    for strategy in ("auto", "full", "grouped_rtl"):
        for cores_grad in (True, False):
            p = C.plan(
                w,
                4,
                requires_grad=False,
                strategy=strategy,
                input_requires_grad=False,
                cores_require_grad=cores_grad,
            )
            assert (p.recompute, p.input_grad, p.cores_grad) == (False, True, True), strategy
    assert C.enumerate_plans(w, 4, input_requires_grad=False, cores_require_grad=False)
    with pytest.raises(ValueError):
        C.plan(w, 4, requires_grad=True, input_requires_grad=False, cores_require_grad=False)


# ------------------------------------------------------------------------------------------ validation
def test_bad_strategy_lists_valid_ones(gen):
    cores = random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown strategy 'fastest'.*auto, tune, full, grouped_rtl"):
        C.linear(x, cores, strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid strategies are"):
        C.plan(cores, 2, strategy="rtl")  # type: ignore[arg-type]
    other = C.plan(random_cores(((3, 2), (2, 2)), (1, 2, 1), gen=gen), 2)
    with pytest.raises(tt.ShapeError, match=r"forced plan is for row dims \(3, 2\)"):
        C.linear(x, cores, strategy=other)


def test_bad_operands(gen):
    cores = random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match=r"x has shape \(2, 5\) but the TT-matrix has 4 columns"):
        C.linear(torch.randn(2, 5, dtype=torch.float64), cores)
    with pytest.raises(
        tt.ShapeError, match="x has dtype torch.float32 on cpu but the TT-matrix has dtype torch.float64"
    ):
        C.linear(torch.randn(2, 4), cores)
    with pytest.raises(TypeError, match="expects a TensorTrain or a sequence"):
        C.linear(torch.randn(2, 4), torch.randn(3, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects a TT-matrix, got a TT-tensor"):
        C.plan(tt.TensorTrain([torch.randn(1, 3, 1)]), 2)
    with pytest.raises(TypeError, match=r"cores must be torch.Tensors, got \['str', 'str'\]"):
        C.linear(torch.randn(2, 4), "ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="plan: cached_merges must be a bool"):
        C.plan(cores, 3, cached_merges="no")  # type: ignore[arg-type]
    with pytest.raises(tt.ShapeError, match="TT-ranks do not chain"):
        C.plan([torch.randn(1, 2, 2, 3), torch.randn(2, 2, 2, 1)], 2)
    with pytest.raises(tt.ShapeError, match=r"b must be a dense \(\.\.\., N, P\) tensor"):
        C.tt_dense_matmul(cores, torch.randn(4, dtype=torch.float64))


def test_compiles_fullgraph(gen):
    cores = random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    x = torch.randn(5, 4, dtype=torch.float64)
    want = x @ dense_of(cores).T
    for s in ("auto", "full", "grouped_ltr"):
        f = torch.compile(lambda a, *cs, s=s: C.linear(a, cs, strategy=s), backend="eager", fullgraph=True)
        assert_close(f(x, *cores), want)


def test_ttlinear_plan_matches_its_forward():
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), dtype=torch.float64)
    p = layer.plan(64)
    assert p == C.plan(layer.weight, 64)
    assert p.requires_grad and p.row_dims == (2, 3) and p.col_dims == (3, 4)
    x = torch.randn(64, 12, dtype=torch.float64)
    assert_close(layer(x), C.linear(x, layer.weight, layer.bias, strategy=p))
    assert "fewer than the dense product" in str(C.plan(zero_cores((5, 5, 5, 5), (4, 7, 4, 7), 4), 64))
    even = dataclasses.replace(p, flops_forward=p.dense_flops + 1)  # it read "1.00x fewer than"
    assert "(about as many as the dense product's" in str(even)


@pytest.mark.parametrize("batch", [3, 9])  # 9: training sweeps would run SweepFunction
def test_complex_gradients_of_every_plan(gen, batch):
    """Complex TT-matrices: every plan's gradients are autograd's (conjugate transposes), by gradcheck and against
    the dense product's."""
    raw, ranks = ((2, 3), (3, 2)), (1, 2, 1)
    cores = _complex_cores(raw, ranks, gen, grad=True)
    x = _complex_randn(gen, batch, 6)
    x.requires_grad_(True)
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        assert torch.autograd.gradcheck(lambda a, *cs, p=p: C.linear(a, cs, strategy=p), (x, *cores)), p
        got = torch.autograd.grad(C.linear(x, cores, strategy=p).abs().sum(), (x, *cores))
        w = tt.full(tt.TensorTrain(cores))
        want = torch.autograd.grad((x @ w.T).abs().sum(), (x, *cores))
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_complex_training_sweeps_recompute_only_when_the_plan_says(gen, monkeypatch):
    """Complex sweeps train through autograd's own products: a plan that keeps its step inputs runs the sweep once,
    one that recomputes them (under torch.utils.checkpoint) runs it again in backward; gradients are the dense
    product's either way."""
    from tensortrain.contraction import sweeps

    raw, ranks = ((2, 3, 2), (3, 2, 2)), (1, 2, 3, 1)
    cores = _complex_cores(raw, ranks, gen, grad=True)
    x = _complex_randn(gen, 9, 12)
    x.requires_grad_(True)
    g = _complex_randn(gen, 9, 12)
    want = torch.autograd.grad(x @ dense_of(cores).T, (x, *cores), g)
    calls = []
    sweep = sweeps.sweep
    monkeypatch.setattr(sweeps, "sweep", lambda *a, **k: calls.append(1) or sweep(*a, **k))
    plans = [p for p in C.enumerate_plans(cores, 9, requires_grad=True) if p.kind == "sweep"]
    assert {p.recompute for p in plans} == {False, True}
    for p in plans:
        calls.clear()
        got = torch.autograd.grad(C.linear(x, cores, strategy=p), (x, *cores), g)
        assert len(calls) == (2 if p.recompute else 1), p
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_bad_batch_sizes_and_biases_are_refused(gen):
    w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4, generator=gen)
    assert C.plan(w, np.int64(8)).batch_size == 8 and C.plan(w, 0).batch_size == 0
    for bad in (-3, 2.5, "8", True):  # (a TypeError for what is not an int, as for other int arguments)
        kind = ValueError if bad == -3 else TypeError
        with pytest.raises(kind, match=r"plan: batch_size must be an int >= 0, got"):
            C.plan(w, bad)  # type: ignore[arg-type]
        with pytest.raises(kind, match=r"enumerate_plans: batch_size must be an int >= 0"):
            C.enumerate_plans(w, bad)  # type: ignore[arg-type]
        with pytest.raises(kind, match=r"flop_floor: batch_size must be an int >= 0"):
            C.flop_floor(w, bad)  # type: ignore[arg-type]
    x = torch.randn(3, 28, generator=gen)
    for strategy in ("auto", "full", "grouped_rtl"):  # the same answer whichever plan runs
        with pytest.raises(
            tt.ShapeError, match=r"linear: bias has dtype torch.float64 on cpu but the TT-matrix has"
        ):
            C.linear(x, w, torch.zeros(32, dtype=torch.float64), strategy=strategy)
        with pytest.raises(tt.ShapeError, match=r"linear: bias must have shape \(32,\), got \(31,\)"):
            C.linear(x, w, torch.zeros(31), strategy=strategy)


def test_core_lists_are_checked_as_tensor_trains():
    a, b = torch.randn(1, 4, 7, 3), torch.randn(3, 8, 4, 1)
    with pytest.raises(tt.ShapeError, match="linear: TensorTrain: core 0 has dtype torch.float32 but core 1"):
        C.linear(torch.randn(5, 28), [a, b.double()])
    with pytest.raises(tt.ShapeError, match="empty dimension"):
        C.linear(torch.randn(5, 3), [torch.randn(1, 0, 3, 2), torch.randn(2, 2, 1, 1)], strategy="full")
    with pytest.raises(tt.ShapeError, match="plan: TensorTrain: core 0 has dtype"):
        C.plan([a, b.double()], 8)


def test_dense_matmul_messages_name_their_arguments():
    w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=2)  # 32 x 28
    with pytest.raises(
        tt.ShapeError, match=r"b has shape \(27, 3\), 27 rows, but the TT-matrix has 28 columns"
    ):
        C.tt_dense_matmul(w, torch.randn(27, 3))
    with pytest.raises(
        tt.ShapeError, match=r"a has shape \(3, 31\) but the TT-matrix has 32 rows \(row dims"
    ):
        C.dense_tt_matmul(torch.randn(3, 31), w)
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        C.tt_dense_matmul(w, [[1.0]])
    with pytest.raises(tt.ShapeError, match="b has dtype torch.float64"):
        C.tt_dense_matmul(w, torch.randn(28, 3, dtype=torch.float64))
    with pytest.raises(tt.ShapeError, match="dense_tt_matmul: a has dtype torch.float64"):
        C.dense_tt_matmul(torch.randn(3, 32, dtype=torch.float64), w)


def test_requires_grad_must_be_a_bool():
    w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=2)
    with pytest.raises(TypeError, match="plan: requires_grad must be a bool, got 'no'"):
        C.plan(w, 8, requires_grad="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enumerate_plans: requires_grad must be a bool"):
        C.enumerate_plans(w, 3, requires_grad="no")  # type: ignore[arg-type]


def test_inference_sweeps_add_the_bias_in_place():
    """Sweeps added the bias out of place: a second output-sized tensor on every inference call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    layer = tt.nn.TTLinear(64, 48, tt_rank=2, in_dims=(4, 4, 4), out_dims=(4, 4, 3), dtype=torch.float64)
    x = torch.randn(300, 64, dtype=torch.float64)
    for strategy in ("grouped_rtl", "cores_ltr"):
        with torch.no_grad(), Ops() as ops:
            y = C.linear(x, layer.weight, layer.bias, strategy=strategy)
        assert_close(y, x @ tt.full(layer.weight).T + layer.bias)
        assert "aten.add_.Tensor" in ops.seen and "aten.add.Tensor" not in ops.seen, ops.seen
    # with grad: out of place, differentiable
    y = C.linear(x, layer.weight, layer.bias, strategy="grouped_rtl")
    y.sum().backward()
    assert_close(layer.bias.grad, torch.full((48,), 300.0, dtype=torch.float64))


def test_a_device_mismatch_message_suggests_the_device():
    """The message suggested x.to(<dtype>) also when only the device differed, which changes nothing."""
    layer = tt.nn.TTLinear(8, 6, tt_rank=2)
    with pytest.raises(tt.ShapeError, match=r"e\.g\. input\.to\('cpu'\)$"):
        layer(torch.randn(2, 8, device="meta"))
    with pytest.raises(tt.ShapeError, match=r"e\.g\. input\.to\('cpu', torch\.float32\)$"):
        layer(torch.randn(2, 8, device="meta", dtype=torch.float64))
    with pytest.raises(tt.ShapeError, match=r"e\.g\. input\.to\(torch\.float32\)$"):
        layer(torch.randn(2, 8, dtype=torch.float64))


def test_a_hand_edited_plan_is_refused_clearly(gen):
    import dataclasses

    w = tt.random_matrix([[2, 3, 2], [2, 2, 3]], tt_rank=2, dtype=torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64, generator=gen)
    sweep = next(p for p in C.enumerate_plans(w, 5) if p.kind == "sweep")
    full = next(p for p in C.enumerate_plans(w, 5) if p.kind == "full")
    bad = [
        dataclasses.replace(sweep, groups=()),
        dataclasses.replace(sweep, groups=((0, 1),)),
        dataclasses.replace(sweep, groups=((0, 4),)),
        dataclasses.replace(sweep, groups=((0, 2), (1, 3))),
        dataclasses.replace(sweep, kind="bogus"),
        dataclasses.replace(sweep, direction="keep"),
        dataclasses.replace(full, groups=((0, 0), (0, 3))),
        dataclasses.replace(full, direction="rtl"),
    ]
    for plan in bad:
        with pytest.raises(ValueError, match="the forced plan is not one the planner makes"):
            C.linear(x, w, strategy=plan)
    for plan in C.enumerate_plans(w, 5, requires_grad=True):  # every real plan still runs
        assert_close(C.linear(x, w, strategy=plan), x @ tt.full(w).T)


def test_sweep_core_gradients_are_as_accurate_as_the_full_plans_in_float32():
    """A right-to-left sweep's first super-core gradient, a small (64 x 4) product summed over batch * modes
    (131,072 terms), ran in the orientation MKL sums almost sequentially: 15-55x the full plan's float32 error
    (6e-6 against 4e-7 at batch 512), and 5x slower."""
    gen = torch.Generator().manual_seed(0)
    w = tt.random_matrix([[4, 8, 8, 4], [4, 8, 8, 4]], tt_rank=16, dtype=torch.float64, generator=gen)
    x = torch.randn(512, 1024, generator=gen, dtype=torch.float64)
    gy = torch.randn(512, 1024, generator=gen, dtype=torch.float64)
    cores64 = [c.clone().requires_grad_() for c in w.tt_cores]
    want = torch.autograd.grad(C.linear(x, cores64, strategy="full"), cores64, gy)
    errors = {}
    for strategy in ("full", "cores_rtl", "cores_ltr"):
        cores = [c.detach().float().requires_grad_() for c in w.tt_cores]
        got = torch.autograd.grad(C.linear(x.float(), cores, strategy=strategy), cores, gy.float())
        errors[strategy] = [float((g.double() - r).norm() / r.norm()) for g, r in zip(got, want, strict=True)]
    for strategy in ("cores_rtl", "cores_ltr"):
        assert max(errors[strategy]) < 5 * max(errors["full"]) + 1e-7, errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("strategy", ["cores_rtl", "cores_ltr"])
def test_narrow_steps_fold_into_one_gemm(gen, monkeypatch, dtype, strategy):
    """Sweep steps over narrow slices run as one tall GEMM between two transposes, on every path (inference whole
    and in chunks, autograd's tiny training batches, SweepFunction's forward and backward, recomputed states, a
    double backward), and agree with the dense product and its gradients."""
    from tensortrain.contraction import machine, sweeps

    calls = []
    folded = sweeps.folded
    monkeypatch.setattr(sweeps, "folded", lambda *a: calls.append(a[1].shape) or folded(*a))
    cores = [c.to(dtype) for c in random_cores(*NARROW, gen=gen)]
    x = torch.randn(37, 192, generator=gen, dtype=torch.float64).to(dtype)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    want = x @ dense_of(cores).T
    with torch.no_grad():  # 37 rows: 606K (right to left) or 909K multiply-adds, above NARROW_FOLD_MIN
        assert_close(C.linear(x, cores, strategy=strategy), want, **tol)
        assert len(calls) == 1
        assert_close(C.linear(x[:1], cores, strategy=strategy), want[:1], **tol)  # one slice: a plain GEMM
        assert len(calls) == 1
        _chunked_by_8_rows(monkeypatch, cores, strategy, x.element_size())
        # into the chunks' reused scratch; folded as the planner priced it, on the whole batch (a chunk of 8 rows
        # alone is below NARROW_FOLD_MIN)
        assert_close(C.linear(x, cores, strategy=strategy), want, **tol)
        assert len(calls) == 1 + 5
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # chunks that may not write into scratch: the same
            y = C.linear(x, cores, strategy=strategy)
        # (to bfloat16's digits)
        assert_close(y.to(want.dtype), want, rtol=0.02, atol=0.01 * float(want.abs().max()))
        assert len(calls) == 5
    monkeypatch.undo()
    monkeypatch.setattr(sweeps, "folded", lambda *a: calls.append(a[1].shape) or folded(*a))
    monkeypatch.setattr(machine, "NARROW_FOLD_MIN", 1)
    C.clear_plan_cache()
    params = [c.clone().requires_grad_(True) for c in cores]
    g = torch.randn(37, 128, generator=gen, dtype=torch.float64).to(dtype)
    # autograd's matmul (its backward has no folds of ours); SweepFunction (forward, and the state gradient in
    # backward); recomputed states (left to right the narrow step is recomputed in backward too)
    ltr = strategy == "cores_ltr"
    for rows, limit, folds in ((3, None, 1), (37, None, 2), (37, 0, 3 if ltr else 2)):
        xg = x[:rows].clone().requires_grad_(True)
        ref = torch.autograd.grad(xg @ dense_of(params).T, [xg, *params], g[:rows])
        calls.clear()
        y = C.linear(xg, params, strategy=strategy, max_saved_bytes=limit)
        got = torch.autograd.grad(y, [xg, *params], g[:rows])
        assert len(calls) == folds
        for a, b in zip(got, ref, strict=True):
            assert_close(a, b, **tol)
    if dtype == torch.float64:
        xg = x[:9].clone().requires_grad_(True)
        f = lambda a, *cs: C.linear(a, list(cs), strategy=strategy)  # noqa: E731
        assert torch.autograd.gradcheck(f, (xg, *params), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (xg, *params), fast_mode=True)
    C.clear_plan_cache()  # (plans priced with the patched threshold)


def test_narrow_steps_take_core_gradients_as_one_gemm(gen, monkeypatch):
    """A folded step's core gradient is one GEMM over permuted copies too, never a batched GEMM over its narrow
    slices (small sides would otherwise pick the per-slice products)."""
    from tensortrain.contraction import machine, training_sweep

    monkeypatch.setattr(machine, "NARROW_FOLD_MIN", 1)
    calls = []
    long = training_sweep._long_product
    monkeypatch.setattr(training_sweep, "_long_product", lambda *a: calls.append(1) or long(*a))
    # right to left: (K, P, Q) = (16, 10, 16), where 16 * 16 <= 10 * (16 + 16) chose per-slice products
    cores = [c.float().requires_grad_(True) for c in random_cores(((16, 10), (4, 3)), (1, 4, 1), gen=gen)]
    x = torch.randn(37, 12, generator=gen)
    g = torch.randn(37, 160, generator=gen)
    got = torch.autograd.grad(C.linear(x, cores, strategy="cores_rtl"), cores, g)
    assert len(calls) == 2  # both steps' core gradients
    want = torch.autograd.grad(x @ dense_of(cores).T, cores, g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    C.clear_plan_cache()


@pytest.mark.parametrize("strategy", ["cores_rtl", "cores_ltr"])
def test_chunked_and_whole_sweeps_fold_alike(gen, monkeypatch, strategy):
    """A chunked inference sweep folds the steps a whole one folds: under autocast both decide by the precision
    the products run in, and a one-row chunk never folds its single slice."""
    from tensortrain.contraction import machine, sweeps

    monkeypatch.setattr(machine, "NARROW_FOLD_MIN", 1)
    calls = []
    folded = sweeps.folded
    monkeypatch.setattr(sweeps, "folded", lambda *a: calls.append(a[1].shape) or folded(*a))
    # (K, P, Q) = (16, 4, 16) right to left, (16, 6, 16) left to right: float32 folds, bfloat16 (sides < 32) not
    cores = [c.float() for c in random_cores(((16, 4), (16, 6)), (1, 1, 1), gen=gen)]
    x = torch.randn(33, 96, generator=gen)
    want = x.double() @ dense_of([c.double() for c in cores]).T
    counts = {}
    for chunked in (False, True):
        if chunked:  # chunks of 8 rows: four of 8 and one of 1
            _chunked_by_8_rows(monkeypatch, cores, strategy, 4, batch=33)
        for cast in (False, True):
            calls.clear()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
                y = C.linear(x, cores, strategy=strategy)
            assert_close(y.double(), want, rtol=0.02, atol=0.01 * float(want.abs().max()))
            # autocast's dtype, as nn.Linear's output (a chunked sweep wrote into float32 scratch: a mutant)
            assert y.dtype == (torch.bfloat16 if cast else torch.float32)
            counts[chunked, cast] = len(calls)
    assert counts == {(False, False): 1, (False, True): 0, (True, False): 4, (True, True): 0}
    C.clear_plan_cache()


@pytest.mark.parametrize("strategy", ["cores_rtl", "cores_ltr"])
def test_narrow_steps_fold_only_on_devices_that_fold(gen, monkeypatch, strategy):
    """Whether narrow steps fold is the device's Machine.narrow_fold (batched GEMMs everywhere on a GPU): with it
    off for the CPU, the steps that fold there run batched, in inference and in SweepFunction's backward alike."""
    from tensortrain.contraction import machine, sweeps

    calls = []
    folded = sweeps.folded
    monkeypatch.setattr(sweeps, "folded", lambda *a: calls.append(1) or folded(*a))
    cores = [c.float() for c in random_cores(*NARROW, gen=gen)]
    x = torch.randn(37, 192, generator=gen)
    want = x.double() @ dense_of([c.double() for c in cores]).T
    with torch.no_grad():
        C.linear(x, cores, strategy=strategy)
    assert calls  # (folds on the CPU as it is)
    monkeypatch.setitem(machine.MACHINES, "cpu", machine.MACHINES["cpu"]._replace(narrow_fold=False))
    C.clear_plan_cache()
    calls.clear()
    with torch.no_grad():
        assert_close(C.linear(x, cores, strategy=strategy).double(), want, rtol=1e-4, atol=1e-4)
    params = [c.clone().requires_grad_(True) for c in cores]
    xg = x.clone().requires_grad_(True)
    C.linear(xg, params, strategy=strategy).sum().backward()
    assert calls == []
    C.clear_plan_cache()


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_partly_frozen_cores_get_the_dense_gradients_in_every_sweep(gen, frozen):
    """The hand-written sweep (training, batch >= 8) reads per super-core which gradients to compute, in the
    sweep's order: reversed for right to left. Only all-trained and all-frozen cores were tested, where the
    order does not matter (from a mutation audit)."""
    rows, cols, ranks = (2, 3, 2), (3, 2, 2), (1, 2, 3, 1)
    cores = [
        torch.randn(ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen, dtype=torch.float64)
        for k in range(3)
    ]
    for k, c in enumerate(cores):
        c.requires_grad_(k != frozen)
    x = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    gy = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    trained = [c for k, c in enumerate(cores) if k != frozen]
    want = torch.autograd.grad(x @ tt.full(tt.TensorTrain(cores)).T, trained, gy)
    for strategy in ("cores_rtl", "cores_ltr", "grouped_rtl", "grouped_ltr"):
        got = torch.autograd.grad(C.linear(x, cores, strategy=strategy), trained, gy)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_an_inference_cache_keeps_only_tt_sized_groups(gen):
    """A forced plan merging a group far larger than its cores (8x8 modes at rank 2: 21x) runs it, but the
    layer's cache does not keep it; the small group next to it is kept."""
    from tensortrain.contraction.cost import cacheable

    cores = [torch.nn.Parameter(c) for c in random_cores(((8, 8, 8), (8, 8, 8)), (1, 2, 2, 1), gen=gen)]
    dims = C.dims_of(cores)
    assert not cacheable(dims, 0, 2) and cacheable(dims, 2, 3)
    p = next(p for p in C.enumerate_plans(cores, 4) if p.kind == "sweep" and p.groups == ((0, 2), (2, 3)))
    x, cache = torch.randn(4, 512, dtype=torch.float64, generator=gen), {}
    with torch.no_grad():
        y = C.apply_unchecked(x, cores, None, 512, p, cache=cache)
    assert_close(y, x @ dense_of(cores).T)
    (groups,) = [value[2] for value in cache.values()]  # (merged group, m, n) per group, None: not kept
    assert groups[0] is None and groups[1] is not None and groups[1][0].numel() == 2 * 8 * 8


def test_a_plan_forced_on_another_tt_matrix_is_refused(gen):
    """The plan carries the dims and ranks it was made for: another shape or other ranks get a ShapeError."""
    w = tt.TensorTrain(random_cores(((4, 8), (7, 4)), (1, 4, 1), gen=gen))
    x = torch.randn(4, 28, dtype=torch.float64, generator=gen)
    for other in (((4, 8), (7, 4)), (1, 2, 1)), (((8, 4), (7, 4)), (1, 4, 1)), (((4, 8), (4, 7)), (1, 4, 1)):
        p = C.plan(tt.TensorTrain(random_cores(*other, gen=gen)), 4)
        with pytest.raises(tt.ShapeError, match="linear: the forced plan is for row dims"):
            C.linear(x, w, strategy=p)


def test_tt_dense_and_dense_tt_matmul_check_forced_plans_and_return_row_major_results(gen):
    w = tt.TensorTrain(random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen))  # 6 x 4
    other = C.plan(tt.TensorTrain(random_cores(((3, 2), (2, 2)), (1, 2, 1), gen=gen)), 5)
    with pytest.raises(tt.ShapeError, match="tt_dense_matmul: the forced plan is for row dims"):
        C.tt_dense_matmul(w, torch.randn(4, 5, dtype=torch.float64), strategy=other)
    with pytest.raises(tt.ShapeError, match="dense_tt_matmul: the forced plan is for row dims"):
        # (a plan for W, not W^T)
        C.dense_tt_matmul(torch.randn(5, 6, dtype=torch.float64), w, strategy=C.plan(w, 5))
    b = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen)
    y = C.tt_dense_matmul(w, b)
    assert y.is_contiguous()
    assert_close(y, dense_of(list(w.tt_cores)) @ b)


def test_operand_checks_of_linear(gen):
    """A 0-dim input, a (1, M) bias, a half input outside autocast and complex operands of another precision get
    the library's errors (IndexError from a reshape, silent broadcasting, or a wrong hint without them)."""
    w = tt.TensorTrain(random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen))  # 6 x 4
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    with pytest.raises(tt.ShapeError, match=r"linear: x has shape \(\) but the TT-matrix has 4 columns"):
        C.linear(torch.tensor(1.0, dtype=torch.float64), w)
    with pytest.raises(tt.ShapeError, match=r"linear: bias must have shape \(6,\), got \(1, 6\)"):
        C.linear(x, w, torch.zeros(1, 6, dtype=torch.float64))
    w32 = w.to(torch.float32)
    with pytest.raises(
        tt.ShapeError, match="x has dtype torch.float16 on cpu but the TT-matrix has dtype torch.float32"
    ):
        C.linear(x.half(), w32)  # (accepted under autocast only, as F.linear)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert C.linear(x.bfloat16(), w32).dtype == torch.bfloat16
    wc = w.to(torch.complex128)
    with pytest.raises(tt.ShapeError, match=r"convert one of them, e.g. x.to\(torch.complex128\)"):
        C.linear(x.to(torch.complex64), wc)


def test_inference_under_vmap_keeps_nothing_in_the_layers_cache(gen):
    """torch.func transforms run uncached: merged groups of batched tensors must not be kept."""
    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    layer.strategy = "grouped_rtl"
    x = torch.randn(3, 7, 24, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        y = torch.func.vmap(layer)(x)
        assert layer._cache == {}
        assert_close(y, layer.to_linear()(x))
        layer(x[0])
        assert layer._cache  # (a plain call caches)


@pytest.mark.parametrize("strategy", ["grouped_rtl", "cores_ltr"])
def test_inference_under_vmap_runs_large_batches_in_chunks_without_out_writes(gen, monkeypatch, strategy):
    """Under torch.func.vmap a chunked inference sweep concatenates its chunks: vmap has no batching rule for the
    out= products that write chunks into the output's rows."""
    cores = random_cores(((3, 4, 2), (2, 5, 3)), (1, 3, 2, 1), gen=gen)
    x = torch.randn(3, 37, 30, generator=gen, dtype=torch.float64)
    _chunked_by_8_rows(monkeypatch, cores, strategy, 8)
    calls = []
    _count_rows(monkeypatch, "_steps", calls)
    with torch.no_grad():
        y = torch.func.vmap(lambda a: C.linear(a, cores, strategy=strategy))(x)
    assert_close(y, x @ dense_of(cores).T)
    assert calls == [8, 8, 8, 8, 5]  # chunked, each chunk's states fresh
    C.clear_plan_cache()


def test_plan_cache_keeps_training_and_inference_apart_and_inference_ignores_training_options(gen):
    """Training (every gradient needed, no memory bound) and inference get their own entries; inference plans do
    not depend on max_saved_bytes: one entry for both calls."""
    cores = [c.requires_grad_() for c in random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen)]
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    C.clear_plan_cache()
    with torch.no_grad():
        C.linear(x, cores)
        C.linear(x, cores, max_saved_bytes=64)
    assert C.plan_cache_size() == 1
    C.linear(x.clone().requires_grad_(), cores)
    assert C.plan_cache_size() == 2
    C.clear_plan_cache()


def test_raw_cores_and_forced_plans_are_validated(gen):
    w = tt.TensorTrain(random_cores(((2, 3), (2, 2)), (1, 2, 1), gen=gen))
    open_end = [torch.randn(1, 2, 2, 2, dtype=torch.float64), torch.randn(2, 3, 2, 2, dtype=torch.float64)]
    with pytest.raises(tt.ShapeError, match="boundary TT-ranks must be 1"):
        C.linear(torch.randn(5, 4, dtype=torch.float64), open_end)
    with pytest.raises(tt.ShapeError, match=r"dense_tt_matmul: a has shape \(\)"):
        C.dense_tt_matmul(torch.tensor(1.0, dtype=torch.float64), w)
    p = C.plan(w, 5, strategy="grouped_rtl")
    bad = dataclasses.replace(p, kind="sweep", groups=((0, 0), (0, 2)))  # an empty group
    with pytest.raises(ValueError, match="the forced plan is not one the planner makes"):
        C.linear(torch.randn(5, 4, dtype=torch.float64), w, strategy=bad)
