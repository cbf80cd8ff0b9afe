"""The contraction and the TT layers under torch.func transforms, forward-mode AD and activation checkpointing.

Eager training runs custom autograd Functions (SweepFunction, FullLinear) and writes into reused scratch; neither
works under ``torch.func`` (no ``setup_context``/vmap rule, wrapped tensors) nor forward AD (no ``jvp``). Under a
transform the contraction takes plain autograd ops: every plan must then give autograd's own answers.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, stack_module_state, vmap

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt
from tensortrain import contraction as C
from tensortrain import workspace
from tensortrain._transforms import transforms_active
from tensortrain.contraction import machine

# torch's own forward-AD decompositions are loaded with torch.jit.script the first time, which warns (a
# DeprecationWarning in torch 2.13, a FutureWarning in 2.14)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:Warning")

RAW = [[3, 4, 2], [2, 5, 3]]  # 24 x 30
BATCH = 64  # past SWEEP_FUNCTION_MIN_BATCH: eager training would run the custom Functions


def _cores(gen: torch.Generator) -> list[torch.Tensor]:
    return list(tt.random_matrix(RAW, tt_rank=3, generator=gen, dtype=torch.float64).tt_cores)


def _plans(cores: list[torch.Tensor], requires_grad: bool) -> list[C.ContractionPlan]:
    return C.enumerate_plans(cores, BATCH, requires_grad=requires_grad)


@pytest.fixture
def blocked(monkeypatch):
    """Every W counts as large: eager calls would build it in blocks into scratch (out= writes)."""
    monkeypatch.setattr(machine, "BLOCKED_ABOVE", 0)
    monkeypatch.setattr(machine, "BLOCK_BYTES", 8 * 5 * 30)
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)


def test_transforms_active_sees_each_transform():
    seen = []

    def probe(x):
        seen.append(transforms_active())
        return x.sum()

    x = torch.randn(3)
    assert not transforms_active()
    grad(probe)(x)
    vmap(probe)(x[None])
    jvp(probe, (x,), (x,))
    with fwad.dual_level():
        seen.append(transforms_active())
    assert seen == [True, True, True, True]
    assert not transforms_active()


def test_func_grad_matches_autograd_for_every_plan(gen, blocked):
    cores = _cores(gen)
    bias = torch.randn(24, generator=gen, dtype=torch.float64)
    x = torch.randn(BATCH, 30, generator=gen, dtype=torch.float64)

    for p in _plans(cores, requires_grad=True):

        def loss(cs, b, x, p=p):
            return C.linear(x, cs, b, strategy=p).square().sum()

        got = grad(loss, argnums=(0, 1, 2))(cores, bias, x)
        leaves = [c.clone().requires_grad_() for c in cores] + [bias.clone().requires_grad_()]
        xr = x.clone().requires_grad_()
        want = torch.autograd.grad(loss(leaves[:-1], leaves[-1], xr), [*leaves, xr])
        for g, w in zip([*got[0], got[1], got[2]], want, strict=True):
            assert_close(g, w)


def test_forward_ad_and_func_jvp_match_the_dense_product(gen, blocked):
    cores = _cores(gen)
    w = tt.full(tt.TensorTrain(cores))
    x = torch.randn(BATCH, 30, generator=gen, dtype=torch.float64)
    t = torch.randn(BATCH, 30, generator=gen, dtype=torch.float64)
    tcores = [torch.randn(c.shape, generator=gen, dtype=torch.float64) for c in cores]
    # d/ds of x(s) W(s)^T: the tangent of W is the sum over cores of W with one core replaced by its tangent
    dw = sum(
        tt.full(tt.TensorTrain([tc if j == k else c for j, c in enumerate(cores)]))
        for k, tc in enumerate(tcores)
    )
    want = t @ w.T + x @ dw.T
    for grad_mode in (False, True):
        for p in _plans(cores, requires_grad=grad_mode):
            with torch.set_grad_enabled(grad_mode), fwad.dual_level():
                duals = [fwad.make_dual(c, tc) for c, tc in zip(cores, tcores, strict=True)]
                y = C.linear(fwad.make_dual(x, t), duals, strategy=p)
                assert_close(fwad.unpack_dual(y).tangent, want)
            _, tangent = jvp(lambda x, *cs, p=p: C.linear(x, list(cs), strategy=p), (x, *cores), (t, *tcores))
            assert_close(tangent, want)


def test_vmap_over_inputs_matches_a_loop(gen, blocked):
    cores = _cores(gen)
    xs = torch.randn(3, BATCH, 30, generator=gen, dtype=torch.float64)
    for p in _plans(cores, requires_grad=False):
        with torch.no_grad():
            got = vmap(lambda x, p=p: C.linear(x, cores, strategy=p))(xs)
            want = torch.stack([C.linear(x, cores, strategy=p) for x in xs])
        assert_close(got, want)


@pytest.mark.parametrize("batch", [1, BATCH, 1024])
def test_layer_under_vmap_grad_and_jacrev(gen, batch):
    layer = tt.nn.TTLinear(30, 24, tt_rank=3, in_dims=(2, 5, 3), out_dims=(3, 4, 2), dtype=torch.float64)
    dense = layer.to_linear()
    x = torch.randn(batch, 30, generator=gen, dtype=torch.float64)
    params = dict(layer.named_parameters())

    def loss(p, x):
        return functional_call(layer, p, (x,)).square().sum()

    got = grad(loss)(params, x)
    want = dict(zip(params, torch.autograd.grad(loss(params, x), list(params.values())), strict=True))
    for k in params:
        assert_close(got[k], want[k])
    with torch.no_grad():  # the layer's inference cache is bypassed under vmap, then used again
        assert_close(vmap(layer)(x[None].expand(2, -1, -1)), dense(x).expand(2, -1, -1))
        assert_close(layer(x), dense(x))
    xs = x[:2]
    assert_close(jacrev(layer)(xs), jacrev(dense)(xs))
    per_sample = vmap(grad(lambda p, xi: loss(p, xi[None])), in_dims=(None, 0))(params, xs)
    for k in params:
        assert_close(per_sample[k].sum(0), grad(loss)(params, xs)[k])


def test_ensemble_of_layers_by_vmap_over_stacked_parameters(gen):
    models = [tt.nn.TTLinear(30, 24, tt_rank=3, dtype=torch.float64) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = tt.nn.TTLinear(30, 24, tt_rank=3, dtype=torch.float64, device="meta")
    x = torch.randn(BATCH, 30, generator=gen, dtype=torch.float64)
    ys = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    for m, y in zip(models, ys, strict=True):
        assert_close(y, m(x))


def test_embedding_under_vmap_and_grad(gen):
    emb = tt.nn.TTEmbedding(60, 8, tt_rank=3, dtype=torch.float64)
    idx = torch.randint(0, 60, (4, 16), generator=gen)
    assert_close(vmap(emb)(idx), emb(idx))
    params = dict(emb.named_parameters())
    got = grad(lambda p: functional_call(emb, p, (idx,)).square().sum())(params)
    want = torch.autograd.grad(emb(idx).square().sum(), list(params.values()))
    for k, w in zip(params, want, strict=True):
        assert_close(got[k], w)


@pytest.mark.parametrize("bad", [-1, -60, 60])
def test_embedding_refuses_out_of_range_indices_under_transforms(bad):
    """Under vmap and torch.compile no value check runs (data-dependent); the gather itself must then refuse an
    index outside the table, negative ones included (advanced indexing would wrap -1 to the last row)."""
    emb = tt.nn.TTEmbedding(60, 8, tt_rank=3, dtype=torch.float64)
    idx = torch.tensor([3, bad])
    with pytest.raises((IndexError, RuntimeError), match="out of (DATA )?bounds|out of range"):
        vmap(emb)(idx)
    compiled = torch.compile(emb, backend="eager", fullgraph=True)
    with pytest.raises((IndexError, RuntimeError), match="out of (DATA )?bounds|out of range"):
        compiled(idx)


@pytest.mark.parametrize("how", ["checkpoint", "checkpoint_reentrant", "save_on_cpu"])
def test_activation_checkpointing_and_saved_tensor_hooks_for_every_plan(gen, how):
    """Each custom Function unpacks its saved tensors once (checkpoint refuses a second unpack)."""
    from torch.utils.checkpoint import checkpoint

    cores = _cores(gen)
    x = torch.randn(BATCH, 30, generator=gen, dtype=torch.float64)
    for p in _plans(cores, requires_grad=True):

        def f(x, *cs, p=p):
            return C.linear(x, list(cs), strategy=p).square().sum()

        def grads(run):  # .backward(): reentrant checkpointing refuses torch.autograd.grad
            leaves = [t.clone().requires_grad_() for t in (x, *cores)]
            run(*leaves).backward()
            return [t.grad for t in leaves]

        want = grads(f)
        if how == "save_on_cpu":

            def run(*leaves):
                with torch.autograd.graph.save_on_cpu():
                    return f(*leaves)
        else:

            def run(*leaves):
                return checkpoint(f, *leaves, use_reentrant=how == "checkpoint_reentrant")

        for g, w in zip(grads(run), want, strict=True):
            assert_close(g, w)


# under torch.func.vmap over the bias (no grad), the sweeps add the bias out of place: an
# in-place add of a batched bias into the unbatched product fails
@pytest.mark.parametrize("strategy", ["grouped_rtl", "cores_ltr", "full"])
def test_vmap_over_the_bias_without_grad(gen, strategy):
    w = random_tt(((4, 4), (4, 4)), (1, 2, 1), gen=gen)
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    biases = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = torch.func.vmap(lambda b: tt.contraction.linear(x, w, b, strategy=strategy))(biases)
    assert_close(y, (x @ tt.full(w).T)[None] + biases[:, None])


def _norm_cases(c0, c2):
    dense = lambda m: torch.einsum("aib,bjc,ckd->ijk", c0, m, c2)  # noqa: E731
    tt_of = lambda m: tt.TensorTrain([c0, m, c2])  # noqa: E731
    return [
        (lambda m: tt.frobenius_norm_squared(tt_of(m)), lambda m: dense(m).square().sum()),
        (lambda m: tt.frobenius_norm(tt_of(m)), lambda m: dense(m).square().sum().sqrt()),
        (
            lambda m: tt.frobenius_norm(tt_of(m), epsilon=1e-5),
            lambda m: (dense(m).square().sum() + 1e-5).sqrt(),
        ),
    ]


def test_norm_derivatives_in_forward_mode_and_at_a_zero_tensor():
    """The norms' value ran QR under no_grad, which stops no forward-mode tangent: with cores requiring grad the
    tangent was QR's plus the Gram sweep's (2x); under jvp requires_grad reads False, so reverse-over-forward
    lost the graph (Hessian 0). And the Gram path's norm had its root masked at 0, so the squared norm's and
    the epsilon norm's second derivatives at a zero tensor were 0."""
    gen = torch.Generator().manual_seed(0)
    c0 = torch.randn(1, 3, 2, dtype=torch.float64, generator=gen)
    c2 = torch.randn(3, 2, 1, dtype=torch.float64, generator=gen)
    mid = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen)
    tangent = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen)
    for f, dense in _norm_cases(c0, c2):
        _, want = jvp(dense, (mid,), (tangent,))
        with fwad.dual_level():
            got = fwad.unpack_dual(f(fwad.make_dual(mid.clone().requires_grad_(), tangent))).tangent
        assert_close(got, want)
        assert_close(jacrev(jacfwd(f))(mid), jacfwd(jacrev(dense))(mid))
    zero = torch.zeros(2, 4, 3, dtype=torch.float64)
    for f, dense in _norm_cases(c0, c2)[::2]:  # (the plain norm has no second derivative at 0)
        want = torch.func.hessian(dense)(zero)
        assert want.norm() > 1
        assert_close(torch.func.hessian(f)(zero), want)
        assert_close(torch.autograd.functional.hessian(f, zero), want)


def test_gather_nd_under_vmap_over_the_indices():
    """The eager index-range check is a data-dependent branch, which vmap refused."""
    x = tt.random_tensor((3, 4, 2), tt_rank=2, dtype=torch.float64)
    m = tt.random_matrix(((2, 3), (4, 2)), tt_rank=2, dtype=torch.float64)
    for t, idx in (
        (x, torch.tensor([[[0, 1, 1], [2, 3, 0]], [[1, 0, 1], [2, 2, 1]]])),
        (m, torch.tensor([[[0, 1], [5, 7]], [[1, 0], [2, 3]]])),
        (m, torch.tensor([[[0, 1, 2, 1]], [[1, 2, 3, 0]]])),
    ):
        assert_close(
            vmap(lambda i, t=t: tt.gather_nd(t, i))(idx), torch.stack([tt.gather_nd(t, i) for i in idx])
        )
    # out of range, negative ones included (a gather wraps those) and a TT-matrix's row (unravelled into modes):
    # the gather's own error there, where the values cannot be read
    # (wide: 2048 x 2^30 of rank 1, where a sentinel index, unravelled and merged, landed on an entry)
    wide = tt.TensorTrain([torch.randn(1, 2048, 2, 1)] + [torch.randn(1, 1, 2, 1) for _ in range(29)])
    for t, bad in (
        (x, [[[0, 9, 1]]]),
        (x, [[[0, -1, 1]]]),
        (m, [[[7, 0]]]),
        (m, [[[-1, 0]]]),
        (m, [[[0, 8]]]),
        # a mode index equal to its mode's size (merged, it spilled into the next row's entry)
        (m, [[[0, 0, 4, 0]]]),
        (m, [[[2, 0, 0, 0]]]),
        (wide, [[[0, 2**30]]]),
        (wide, [[[0, -1]]]),
    ):
        with pytest.raises(IndexError):
            vmap(lambda i, t=t: tt.gather_nd(t, i))(torch.tensor(bad))
    # a batch's element index out of range (-1 wrapped to the last element's entry)
    b = tt.random_tensor_batch((3, 4), tt_rank=2, batch_size=2, dtype=torch.float64)
    for bad in ([[[-1, 0, 1]]], [[[2, 0, 1]]]):
        with pytest.raises(IndexError):
            vmap(lambda i: tt.gather_nd(b, i))(torch.tensor(bad))
    good = torch.tensor([[[1, 2, 3]], [[0, 0, 0]]])
    assert_close(vmap(lambda i: tt.gather_nd(b, i))(good), torch.stack([tt.gather_nd(b, i) for i in good]))
    ok = torch.tensor([[[1, 2**30 - 1]]])
    assert_close(vmap(lambda i: tt.gather_nd(wide, i))(ok), tt.gather_nd(wide, ok[0]).unsqueeze(0))
    # functionalize's wrapper around vmap's; torch.compile, which traces no value check (a regression of a2da169)
    one = torch.tensor([[[0, 1, 1]]])
    assert_close(
        vmap(torch.func.functionalize(lambda i: tt.gather_nd(x, i)))(one), tt.gather_nd(x, one[0])[None]
    )
    compiled = torch.compile(lambda i: tt.gather_nd(x, i), fullgraph=True, backend="eager")
    assert_close(compiled(torch.tensor([[2, 3, 1]])), tt.gather_nd(x, torch.tensor([[2, 3, 1]])))
    with pytest.raises(IndexError):  # (skipped while tracing, a negative index wrapped silently)
        compiled(torch.tensor([[0, -1, 1]]))
    on_m = torch.compile(lambda i: tt.gather_nd(m, i), fullgraph=True, backend="eager")
    for bad in ([[0, 8]], [[1, -1]]):  # (a column past the end unravelled into another entry)
        with pytest.raises(IndexError):
            on_m(torch.tensor(bad))
    # where they can (grad, vmap over the cores, a forward-AD level), the range check names them as eagerly
    cores = list(x.tt_cores)
    neg = torch.tensor([[0, -1, 1]])
    with pytest.raises(IndexError, match=r"gather_nd: mode 1 index -1 out of range \[0, 4\)"):
        grad(lambda c1: tt.gather_nd(tt.TensorTrain([cores[0], c1, cores[2]]), neg).sum())(cores[1])
    with pytest.raises(IndexError, match=r"gather_nd: mode 1 index -1 out of range"):
        vmap(lambda c1: tt.gather_nd(tt.TensorTrain([cores[0], c1, cores[2]]), neg))(cores[1].unsqueeze(0))
    with fwad.dual_level(), pytest.raises(IndexError, match=r"gather_nd: row index 7 out of range \[0, 6\)"):
        tt.gather_nd(m, torch.tensor([[7, 0]]))
