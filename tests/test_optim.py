"""Riemannian optimizer: gradient from core gradients vs the dense oracle, one step vs its definition, training."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_tt, seeds, tensor_specs
from test_riemannian import dense, dense_projector


def core_grads(x, weights):
    """Euclidean core gradients of f(X) = sum(w * X^3) / 3, and the dense gradient w * X^2."""
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    full = dense(tt.TensorTrain(cores))
    (weights * full**3).sum().div(3).backward()
    return [c.grad for c in cores], weights * dense(x) ** 2


@given(
    spec=st.one_of(tensor_specs(min_d=1, max_d=4, max_mode=3, max_rank=3), matrix_specs(max_d=3, max_rank=2)),
    seed=seeds,
)
def test_riemannian_gradient_from_cores_matches_dense(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    x = random_tt(raw, ranks, gen=g)
    grads, euclid = core_grads(x, torch.rand(x.shape, generator=g, dtype=torch.float64))
    res = tt.optim.riemannian_gradient_from_cores(x, grads)
    assert res.projection_on is x
    assert_close(dense(res).reshape(-1), dense_projector(x) @ euclid.reshape(-1), rtol=1e-8, atol=1e-8)


def test_float32(gen):
    x = random_tt(((2, 3, 2), (3, 2, 2)), (1, 3, 2, 1), gen=gen, dtype=torch.float32)
    grads, euclid = core_grads(x, torch.rand(x.shape, generator=gen, dtype=torch.float32))
    res = tt.optim.riemannian_gradient_from_cores(x, grads)
    p = dense_projector(x.to(torch.float64)).to(torch.float32)
    assert_close(dense(res).reshape(-1), p @ euclid.reshape(-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_step(dtype):
    """A half-precision TT layer takes Riemannian steps (pinv and QR run in float32) and stays in its dtype."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), dtype=dtype)
    x = torch.randn(16, 8, dtype=dtype)
    opt = tt.optim.RiemannianSGD([layer.cores], lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = layer(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(c.dtype == dtype for c in layer.cores)
    assert losses[-1] < losses[0]


def test_zero_padded_cores_give_the_gradient_at_the_actual_rank(gen):
    x = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen)
    padded = tt.TensorTrain(
        [
            torch.nn.functional.pad(c, (0, 1 if k < 2 else 0, 0, 0, 0, 1 if k > 0 else 0))
            for k, c in enumerate(x.tt_cores)
        ]
    )
    assert padded.tt_ranks == (1, 3, 3, 1)
    grads, euclid = core_grads(padded, torch.rand(x.shape, generator=gen, dtype=torch.float64))
    res = tt.optim.riemannian_gradient_from_cores(padded, grads)
    assert_close(dense(res).reshape(-1), dense_projector(x) @ euclid.reshape(-1), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("padded", [False, True])
def test_gradient_combines_with_projections_at_x(gen, padded):
    """Its deltas are in project()'s frame: Gram entries and sums with project(., x) equal the dense ones (they
    used to be gauged in a minimal representation's frame: wrong inner products, a crash for padded cores)."""
    x = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen)
    if padded:
        x = tt.TensorTrain(
            [
                torch.nn.functional.pad(c, (0, 1 if k < 2 else 0, 0, 0, 0, 1 if k > 0 else 0))
                for k, c in enumerate(x.tt_cores)
            ]
        )
    grads, _ = core_grads(x, torch.rand(x.shape, generator=gen, dtype=torch.float64))
    g = tt.optim.riemannian_gradient_from_cores(x, grads)
    p = tt.project(torch.randn(x.shape, generator=gen, dtype=torch.float64), x)
    assert_close(tt.pairwise_flat_inner_projected(g, p)[0, 0], (dense(g) * dense(p)).sum())
    assert_close(dense(tt.add_n_projected([g, p])), dense(g) + dense(p))


def test_frozen_cores_partly_or_wholly():
    """A wholly frozen TT is left alone (as torch optimizers leave frozen parameters); a partly frozen one cannot
    take a Riemannian step (it rewrites every core) and says so instead of overwriting the frozen core."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    opt = tt.optim.RiemannianSGD([layer.weight], lr=0.1)  # a TT of Parameters is its cores' group
    assert opt.param_groups[0]["params"][0] is layer.cores[0]
    layer(torch.randn(4, 8)).pow(2).sum().backward()
    layer.cores[0].requires_grad_(False)
    before = [c.detach().clone() for c in layer.cores]
    with pytest.raises(ValueError, match=r"cores \[0\] of a TT are frozen"):
        opt.step()
    layer.requires_grad_(False)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.cores, strict=True))


def test_add_param_group_is_checked_and_nan_gradients_are_named():
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    other = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    opt = tt.optim.RiemannianSGD([layer.cores], lr=0.1)
    with pytest.raises(TypeError, match="got a single tensor"):
        opt.add_param_group({"params": torch.randn(3)})
    opt.add_param_group({"params": other.cores, "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.0
    for c in other.cores:
        c.grad = torch.full_like(c, float("nan"))
    before = [c.detach().clone() for c in other.cores]
    with pytest.raises(ValueError, match="gradient contains NaN or inf"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, other.cores, strict=True))


def test_a_step_that_raises_changes_no_tt():
    """Groups were stepped one by one, so a NaN gradient (or a partly frozen TT) in a later group raised after
    earlier TTs had moved: a caller skipping the batch was left with half a step."""
    torch.manual_seed(0)
    a, b = (tt.nn.TTLinear(8, 8, tt_rank=2, in_dims=(2, 4), out_dims=(2, 4), bias=False) for _ in range(2))
    model = torch.nn.Sequential(a, b)
    opt = tt.optim.RiemannianSGD(model, lr=0.1)
    for spoil in ("nan", "frozen"):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).sum().backward()
        if spoil == "nan":
            b.cores[1].grad[0, 0, 0, 0] = float("nan")
        else:
            b.cores[0].requires_grad_(False)
        before = [c.detach().clone() for c in (*a.cores, *b.cores)]
        with pytest.raises(ValueError, match="no TT was changed"):
            opt.step()
        assert all(torch.equal(x, y) for x, y in zip(before, (*a.cores, *b.cores), strict=True))
        b.cores[0].requires_grad_(True)
    # a step past float32's range in the second TT (an lr raised after construction) raised in its rounding,
    # after the first TT had moved, naming neither the optimizer nor lr
    opt = tt.optim.RiemannianSGD([{"params": a.cores}, {"params": b.cores}], lr=0.1, momentum=0.5)
    model(torch.randn(4, 8)).pow(2).sum().backward()
    opt.param_groups[1]["lr"] = 1e39
    before = [c.detach().clone() for c in (*a.cores, *b.cores)]
    with pytest.raises(
        ValueError, match=r"RiemannianSGD: a step of lr=1e\+39 leaves torch.float32's range.*no TT"
    ):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, (*a.cores, *b.cores), strict=True))
    assert not any("direction" in st for st in opt.state.values())  # (no momentum kept for a step not taken)


def test_group_hyperparameters_and_parameter_forms_are_checked():
    """add_param_group and group dicts skipped the constructor's lr/momentum checks; a bare ParameterList was
    read as a module without TT layers, and a batch as a TT-matrix with bad boundary ranks."""
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    other = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    opt = tt.optim.RiemannianSGD([layer.cores], lr=0.1)
    for bad, message in (
        ({"lr": -0.5}, "lr must be > 0, got -0.5"),
        ({"momentum": 1.5}, "momentum must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            opt.add_param_group({"params": other.cores, **bad})
        with pytest.raises(ValueError, match=message):
            tt.optim.RiemannianSGD([{"params": other.cores, **bad}], lr=0.1)
    assert len(opt.param_groups) == 1
    for one in (layer.cores, layer.weight):  # one TT without a list
        assert tt.optim.RiemannianSGD(one, lr=0.1).param_groups[0]["params"][0] is layer.cores[0]
    batch = tt.random_tensor_batch((3, 4, 5), tt_rank=2, batch_size=2)
    batch = tt.TensorTrainBatch([torch.nn.Parameter(c) for c in batch.tt_cores])
    for params in ([batch], batch):
        with pytest.raises(TypeError, match="steps single TTs, got a TensorTrainBatch"):
            tt.optim.RiemannianSGD(params, lr=0.1)


def test_step_is_projected_gradient_then_rounding(gen):
    x = random_tt((3, 4, 3, 2), (1, 2, 3, 2, 1), gen=gen)
    params = torch.nn.ParameterList([torch.nn.Parameter(c.clone()) for c in x.tt_cores])
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    grads, euclid = core_grads(x, w)
    for p, gr in zip(params, grads, strict=True):
        p.grad = gr
    tt.optim.RiemannianSGD([params], lr=0.05).step()
    moved = dense(x) - 0.05 * (dense_projector(x) @ euclid.reshape(-1)).reshape(x.shape)
    # the retraction is TT-rounding, whose result depends on the tensor only (not on its cores): rounding the
    # exact TT-SVD of the moved tensor gives it
    expected = tt.round(tt.to_tt_tensor(moved, max_tt_rank=None), max_tt_rank=(1, 2, 3, 2, 1))
    new = tt.TensorTrain(list(params))
    assert [tuple(p.shape) for p in params] == [tuple(c.shape) for c in x.tt_cores]
    assert_close(dense(new), dense(expected), rtol=1e-8, atol=1e-8)


def fit(model_ranks, momentum, steps, seed=0):
    """Regress a TTLinear onto a random TT-matrix target; returns (initial, final) loss."""
    torch.manual_seed(seed)
    kw = dict(in_dims=(2, 3, 2), out_dims=(3, 2, 2), dtype=torch.float64)
    target = tt.nn.TTLinear(12, 12, tt_rank=2, bias=False, **kw)
    layer = tt.nn.TTLinear(12, 12, tt_rank=model_ranks, bias=False, **kw)
    opt = tt.optim.RiemannianSGD(layer, lr=0.5, momentum=momentum)
    xs = torch.randn(64, 12, dtype=torch.float64)
    ys = target(xs).detach()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (layer(xs) - ys).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


@pytest.mark.parametrize(("momentum", "steps"), [(0.0, 120), (0.5, 60)])
def test_training_a_tt_layer_converges(momentum, steps):
    first, last = fit(2, momentum, steps)
    assert last < 1e-4 * first


def test_state_dict_round_trip_with_momentum():
    torch.manual_seed(1)
    xs = torch.randn(8, 6, dtype=torch.float64)

    def new_layer():
        return tt.nn.TTLinear(
            6, 6, tt_rank=2, in_dims=(2, 3), out_dims=(3, 2), bias=False, dtype=torch.float64
        )

    def step(model, opt):
        opt.zero_grad()
        model(xs).pow(2).sum().backward()
        opt.step()
        return [c.detach().clone() for c in model.cores]

    layer = new_layer()
    opt = tt.optim.RiemannianSGD(layer, lr=0.01, momentum=0.9)
    step(layer, opt)
    weights, state = copy.deepcopy(layer.state_dict()), copy.deepcopy(opt.state_dict())
    expected = step(layer, opt)
    resumed, fresh = new_layer(), new_layer()
    resumed.load_state_dict(weights)
    fresh.load_state_dict(weights)
    opt_resumed = tt.optim.RiemannianSGD(resumed, lr=0.01, momentum=0.9)
    opt_resumed.load_state_dict(state)
    for a, b in zip(step(resumed, opt_resumed), expected, strict=True):
        assert_close(a, b)
    # Without the momentum state the step differs: the state really is used.
    without = step(fresh, tt.optim.RiemannianSGD(fresh, lr=0.01, momentum=0.9))
    assert (tt.full(tt.TensorTrain(without)) - tt.full(tt.TensorTrain(expected))).norm() > 1e-6


def test_a_momentum_state_of_another_models_tt_is_named_before_any_tt_moves():
    """An optimizer state_dict loaded into a model whose second TT has other modes: the first TT moved, then the
    transport of the stored direction raised "`what` has raw shape ... but `where` ...", half a step taken."""
    torch.manual_seed(0)
    a = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    b = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(4, 2), out_dims=(3, 2), bias=False)
    x = torch.randn(3, 8)
    source = tt.optim.RiemannianSGD([a.cores, b.cores], lr=0.1, momentum=0.9)
    (a(x).sum() + b(x).sum()).backward()
    source.step()
    state = source.state_dict()
    state["state"][2] = state["state"][0]  # b's direction replaced by a's (other modes)
    opt = tt.optim.RiemannianSGD([a.cores, b.cores], lr=0.1, momentum=0.9)
    opt.load_state_dict(state)
    opt.zero_grad()
    (a(x).sum() + b(x).sum()).backward()
    before = [c.detach().clone() for c in (*a.cores, *b.cores)]
    with pytest.raises(
        ValueError,
        match=r"momentum direction .* modes \(\(2, 2\), \(3, 4\)\), but .* \(\(3, 4\), \(2, 2\)\).*no TT was changed",
    ):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(before, (*a.cores, *b.cores), strict=True))


def test_a_model_with_embedding_and_linear_tt_layers():
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        tt.nn.TTEmbedding(12, 6, tt_rank=2, voc_dims=(3, 4), emb_dims=(2, 3), dtype=torch.float64),
        tt.nn.TTLinear(6, 4, tt_rank=2, in_dims=(2, 3), out_dims=(2, 2), bias=False, dtype=torch.float64),
    )
    opt = tt.optim.RiemannianSGD(model, lr=0.05)
    assert len(opt.param_groups) == 2
    tokens, target = torch.randint(0, 12, (20,)), torch.randn(20, 4, dtype=torch.float64)
    ranks = [m.weight.tt_ranks for m in model]
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = (model(tokens) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert [m.weight.tt_ranks for m in model] == ranks
    assert losses[-1] < losses[0]


def test_complex_is_refused():
    x = tt.TensorTrain(
        [torch.ones(1, 2, 1, dtype=torch.complex128), torch.ones(1, 2, 1, dtype=torch.complex128)]
    )
    with pytest.raises(TypeError, match="complex"):
        tt.project(x, x)
    with pytest.raises(TypeError, match="complex"):
        tt.gradients(lambda y: tt.full(y).abs().sum(), x)


def test_validation():
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3))
    with pytest.raises(ValueError, match="lr must be > 0"):
        tt.optim.RiemannianSGD([layer.cores], lr=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        tt.optim.RiemannianSGD([layer.cores], lr=0.1, momentum=1.0)
    with pytest.raises(TypeError, match="sequence of one TT's cores"):
        tt.optim.RiemannianSGD(list(layer.cores), lr=0.1)
    with pytest.raises(ValueError, match="has no TT layers"):
        tt.optim.RiemannianSGD(torch.nn.Linear(2, 2), lr=0.1)
    with pytest.raises(tt.ShapeError):
        tt.optim.RiemannianSGD([[layer.cores[0], layer.cores[0]]], lr=0.1)
    x = tt.TensorTrain(list(layer.cores))
    with pytest.raises(ValueError, match="one gradient per core"):
        tt.optim.riemannian_gradient_from_cores(x, [torch.zeros(1)])
    for kw in ({"lr": True}, {"lr": 0.1, "momentum": False}, {"lr": torch.tensor(1)}):
        with pytest.raises(TypeError, match="must be a real number"):
            tt.optim.RiemannianSGD(layer, **kw)
    tensor_lr = tt.optim.RiemannianSGD(layer, lr=torch.tensor(0.1))
    assert float(tensor_lr.param_groups[0]["lr"]) == pytest.approx(0.1)
    bias = torch.nn.Parameter(torch.randn(4, 4))  # (a 2-D one: the message, not TensorTrain's)
    with pytest.raises(TypeError, match=r"entry 2 has shape \(4, 4\): biases and other ordinary parameters"):
        tt.optim.RiemannianSGD([[*layer.cores, bias]], lr=0.1)
    for empty in ([[]], [{"params": []}]):
        with pytest.raises(ValueError, match="got an empty parameter set"):
            tt.optim.RiemannianSGD(empty, lr=0.1)


def test_a_zero_core_is_refused_before_any_step():
    """A TT with an all-zero core (a no-op adapter's usual init) is the zero tensor: the gradient built on
    round's arbitrary frame there pointed uphill for some seeds, and a step raised the loss."""
    g = torch.Generator().manual_seed(0)
    other = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False, dtype=torch.float64)
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.cores[0].zero_()
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    opt = tt.optim.RiemannianSGD(torch.nn.ModuleList([other, layer]), lr=1e-3)
    (other(x).pow(2).sum() + layer(x).pow(2).sum()).backward()
    before = [c.detach().clone() for c in other.cores]
    with pytest.raises(ValueError, match="core 0 is all zeros, so the TT is the zero tensor"):
        opt.step()
    for c, b in zip(other.cores, before, strict=True):  # no TT moved
        assert torch.equal(c, b)
    with pytest.raises(ValueError, match="core 0 is all zeros"):
        tt.optim.riemannian_gradient_from_cores(layer.weight, [c.grad for c in layer.cores])


def test_bad_core_gradients_are_named():
    x = tt.random_tensor((3, 4), tt_rank=2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"gradients of cores \[0, 1\] are not tensors"):
        tt.optim.riemannian_gradient_from_cores(x, [None, None])
    with pytest.raises(TypeError, match="have dtype torch.float32 on cpu, the cores torch.float64"):
        tt.optim.riemannian_gradient_from_cores(x, [c.float() for c in x.tt_cores])
    with pytest.raises(ValueError, match="expected one gradient per core with the core's shape"):
        # (each given one right, one missing)
        tt.optim.riemannian_gradient_from_cores(x, [torch.ones_like(x.tt_cores[0])])


def test_momentum_follows_a_layer_cast_to_another_dtype():
    """The momentum direction stayed float32 after layer.double(): the next step failed with a ShapeError about
    arguments the user never passed (torch's SGD carries on)."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False)
    opt = tt.optim.RiemannianSGD(layer, lr=0.1, momentum=0.9)
    layer(torch.randn(3, 8)).pow(2).sum().backward()
    opt.step()
    layer.double()
    opt.zero_grad()
    layer(torch.randn(3, 8, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    assert layer.cores[0].dtype == torch.float64


def test_project_of_an_empty_dense_batch_is_a_shape_error():
    x = tt.random_tensor((3, 4, 2), tt_rank=2, dtype=torch.float64)
    with pytest.raises(tt.ShapeError, match="empty batch"):
        tt.project(torch.zeros(0, 3, 4, 2, dtype=torch.float64), x)


def test_optim_step_zero_pads_cores_rounded_to_smaller_ranks(gen):
    # (test_optim.py) TT-ranks (1, 3, 3, 1) on modes (2, 3, 2), whose useful ranks are (1, 2, 2, 1): the rounded
    # cores are smaller than the parameters and are written zero-padded (the module docstring's promise)
    x = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    padded = [
        torch.nn.functional.pad(c, (0, 1 if k < 2 else 0, 0, 0, 0, 1 if k > 0 else 0))
        for k, c in enumerate(x.tt_cores)
    ]
    params = torch.nn.ParameterList([torch.nn.Parameter(c.clone()) for c in padded])
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    grads, euclid = core_grads(tt.TensorTrain(padded), w)
    for p, gr in zip(params, grads, strict=True):
        p.grad = gr
    tt.optim.RiemannianSGD([params], lr=0.05).step()
    expected = dense(x) - 0.05 * (dense_projector(x) @ euclid.reshape(-1)).reshape(x.shape)
    assert [tuple(p.shape) for p in params] == [tuple(c.shape) for c in padded]
    assert_close(dense(tt.TensorTrain(list(params))), expected, rtol=1e-8, atol=1e-8)


def test_optim_gradient_at_a_point_with_a_small_singular_value(gen):
    # (test_optim.py) a rank-2 point whose second singular direction is 1e-4 of the first still has the rank-2
    # tangent space: the frame must not be taken from a representation rounded past that direction
    cores = [c.clone() for c in random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen).tt_cores]
    cores[0][..., 1] *= 1e-4
    cores[1][1:, :, :] *= 1e-4
    cores[1][:, :, 1] *= 1e-4
    cores[2][1:] *= 1e-4
    x = tt.TensorTrain(cores)
    grads, euclid = core_grads(x, torch.rand(x.shape, generator=gen, dtype=torch.float64))
    res = tt.optim.riemannian_gradient_from_cores(x, grads)
    assert_close(dense(res).reshape(-1), dense_projector(x) @ euclid.reshape(-1), rtol=1e-8, atol=1e-8)


def test_float32_gradient_keeps_a_direction_of_5e_6_of_the_norm(gen):
    """The frame came from round(x, epsilon=100 eps): in float32 a bond singular value of 5e-6 of the norm (40 eps,
    well resolved) was rounded away, and the gradient lost most of its tangent component (error 0.89)."""
    q = [torch.linalg.qr(torch.randn(n, 2, generator=gen, dtype=torch.float64))[0] for n in (4, 5, 6)]
    c1 = torch.zeros(2, 5, 2, dtype=torch.float64)
    c1[0, :, 0], c1[1, :, 1] = q[1][:, 0], 5e-6 * q[1][:, 1]
    x64 = tt.TensorTrain([q[0].reshape(1, 4, 2), c1, q[2].T.reshape(2, 6, 1)])
    x = tt.cast(x64, torch.float32)
    w = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64)
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    (w.float() * tt.full(tt.TensorTrain(cores))).sum().backward()
    res = tt.optim.riemannian_gradient_from_cores(x, [c.grad for c in cores])
    expected = dense_projector(x64) @ w.reshape(-1)
    assert_close(dense(res).double().reshape(-1), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def _cancelling_cores(gen):
    """A zero tensor whose cores are all nonzero: the first core uses rank slot 0 only, the second slot 1 only."""
    c0 = torch.zeros(1, 3, 2, dtype=torch.float64)
    c0[..., 0] = torch.randn(3, generator=gen, dtype=torch.float64)
    c1 = torch.zeros(2, 4, 1, dtype=torch.float64)
    c1[1] = torch.randn(4, 1, generator=gen, dtype=torch.float64)
    return [c0, c1]


def test_the_zero_tensor_from_nonzero_cores_is_refused(gen):
    """Only an all-zero core was caught: cores that multiply out to zero gave a gradient on an arbitrary frame
    (uphill after a step in 9 of 50 seeds)."""
    cores = _cancelling_cores(gen)
    assert not bool(tt.full(tt.TensorTrain(cores)).any())
    with pytest.raises(ValueError, match="multiply out to the zero tensor"):
        tt.optim.riemannian_gradient_from_cores(tt.TensorTrain(cores), [torch.ones_like(c) for c in cores])
    # in a step: refused before any TT moves, the healthy one included
    healthy = [torch.nn.Parameter(c) for c in random_tt((3, 4), (1, 2, 1), gen=gen).tt_cores]
    zero = [torch.nn.Parameter(c) for c in cores]
    for p in healthy + zero:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in healthy]
    opt = tt.optim.RiemannianSGD([healthy, zero], lr=0.1)
    with pytest.raises(
        ValueError, match="multiply out to the zero tensor.*no TT was changed|no TT was changed"
    ):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(healthy, before, strict=True))


def test_one_parameter_twice_in_a_tt_and_a_bare_dict():
    """The same Parameter at two positions got both positions' new values written into it (the last won); a
    bare dict was iterated over its keys ("core 0 is a str")."""
    p = torch.nn.Parameter(torch.randn(2, 3, 2))
    first, last = torch.nn.Parameter(torch.randn(1, 3, 2)), torch.nn.Parameter(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"cores \[2\] of a TT are the same tensor"):
        tt.optim.RiemannianSGD([[first, p, p, last]], lr=0.1)
    opt = tt.optim.RiemannianSGD({"params": [first, last], "lr": 0.5}, lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(TypeError, match="a parameter group dict needs a 'params' entry"):
        tt.optim.RiemannianSGD({"0": first, "1": last}, lr=0.1)


def test_riemannian_gradient_from_cores_refuses_non_finite_gradients(gen):
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    grads = [torch.ones_like(c) for c in x.tt_cores]
    grads[1][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="gradient contains NaN or inf"):
        tt.optim.riemannian_gradient_from_cores(x, grads)


def test_a_model_with_tied_tt_layers_steps_their_shared_cores_once():
    """An embedding and its output head sharing one ParameterList gave torch's 'some parameters appear in more
    than one parameter group'; the shared cores are now one set, stepped once."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(100, 32, tt_rank=4, voc_dims=(4, 5, 5), emb_dims=(4, 4, 2))
    head = tt.nn.TTLinear(32, 100, tt_rank=4, in_dims=(4, 4, 2), out_dims=(4, 5, 5), bias=False)
    head.cores = emb.cores
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    opt = tt.optim.RiemannianSGD(model, lr=0.1)
    assert len(opt.param_groups) == 1
    model["head"](model["emb"](torch.tensor([1, 2, 3]))).pow(2).sum().backward()
    before = tt.full(head.weight).detach().clone()
    opt.step()
    assert not torch.equal(before, tt.full(head.weight))
    assert head.cores is emb.cores

    other = tt.nn.TTLinear(32, 100, tt_rank=4, in_dims=(4, 4, 2), out_dims=(4, 5, 5), bias=False)
    other.cores[0] = emb.cores[0]  # one core shared, the others not
    with pytest.raises(ValueError, match="shares some but not all of its cores"):
        tt.optim.RiemannianSGD(torch.nn.ModuleDict({"emb": emb, "other": other}), lr=0.1)


def test_cores_sharing_memory_or_expanded_are_refused_before_a_step():
    """Two Parameters over one storage stepped to a wrong point (5.66 off: the last write won); an expanded core
    failed in the step after the cores before it were written; a bias in the set failed with a TT error."""
    c0 = torch.nn.Parameter(torch.randn(1, 4, 2))
    c1 = torch.nn.Parameter(torch.randn(2, 4, 2))
    alias = torch.nn.Parameter(c1.detach().view(2, 4, 2))
    with pytest.raises(ValueError, match="cores 1 and core 2 share memory|core 1 and core 2 share memory"):
        tt.optim.RiemannianSGD([[c0, c1, alias[:, :, :1]]], lr=0.1)
    expanded = torch.nn.Parameter(torch.randn(2, 1, 1).expand(2, 4, 1))
    with pytest.raises(ValueError, match="core 2 is an expanded view"):
        tt.optim.RiemannianSGD([[c0, c1, expanded]], lr=0.1)
    bias = torch.nn.Parameter(torch.zeros(12))
    with pytest.raises(TypeError, match="entry 3 has shape \\(12,\\): biases and other ordinary parameters"):
        tt.optim.RiemannianSGD([[c0, c1, torch.nn.Parameter(torch.randn(2, 4, 1)), bias]], lr=0.1)
    last = torch.nn.Parameter(torch.randn(2, 4, 1))
    opt = tt.optim.RiemannianSGD([[c0, c1, last]], lr=0.1)
    other = [torch.nn.Parameter(torch.randn(1, 4, 2)), torch.nn.Parameter(c1.detach()[:, :, :1])]
    with pytest.raises(ValueError, match="shares memory with a core of another parameter set"):
        opt.add_param_group({"params": other})


def test_a_set_of_cores_is_refused():
    """A set was listed in hash order and stepped as a different TT (training diverged); torch.optim refuses sets
    too."""
    layer = tt.nn.TTLinear(16, 16, tt_rank=2, in_dims=(2, 2, 2, 2), out_dims=(2, 2, 2, 2))
    for params in (
        [set(layer.cores)],
        [frozenset(layer.cores)],
        set(layer.cores),
        [{"params": set(layer.cores)}],
    ):
        with pytest.raises(TypeError, match="got a set"):
            tt.optim.RiemannianSGD(params, lr=0.1)


def test_a_momentum_step_is_the_projected_sum_of_gradient_and_previous_direction(gen):
    """Step 2 with momentum is round(X1 - lr (P_X1 g1 + mu P_X1 D0)), D0 the first step's Riemannian gradient:
    the previous direction must be re-expressed in the frame of the new gradient's deltas before they add."""
    x = random_tt((3, 4, 3, 2), (1, 2, 3, 2, 1), gen=gen)
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    params = [torch.nn.Parameter(c.clone()) for c in x.tt_cores]
    lr, mu = 0.05, 0.9
    opt = tt.optim.RiemannianSGD([params], lr=lr, momentum=mu)

    def set_grads():
        opt.zero_grad()
        (w * dense(tt.TensorTrain(params)) ** 3).sum().div(3).backward()

    set_grads()
    d0 = dense(tt.optim.riemannian_gradient_from_cores(tt.TensorTrain(params), [p.grad for p in params]))
    opt.step()
    x1 = tt.TensorTrain([p.detach().clone() for p in params])
    set_grads()
    projector = dense_projector(x1)
    euclid = w * dense(x1) ** 2
    direction = projector @ euclid.reshape(-1) + mu * (projector @ d0.reshape(-1))
    moved = dense(x1) - lr * direction.reshape(x.shape)
    expected = tt.round(tt.to_tt_tensor(moved, max_tt_rank=None), max_tt_rank=(1, 2, 3, 2, 1))
    opt.step()
    assert_close(dense(tt.TensorTrain(params)), dense(expected), rtol=1e-8, atol=1e-8)


def test_step_with_a_closure_evaluates_it_with_gradients_and_returns_its_loss():
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), bias=False, dtype=torch.float64)
    x = torch.randn(5, 8, dtype=torch.float64)
    opt = tt.optim.RiemannianSGD(layer, lr=0.01)
    before = layer.to_linear().weight.detach()

    def closure():
        opt.zero_grad()
        loss = layer(x).pow(2).sum()
        loss.backward()
        return loss

    expected = float(layer(x).pow(2).sum().detach())
    assert float(opt.step(closure).detach()) == pytest.approx(expected, rel=1e-12)
    assert not torch.equal(layer.to_linear().weight.detach(), before)


def test_cores_without_a_gradient_step_as_if_it_were_zero():
    """A TT whose loss reached only some of its cores still moves (a missing gradient counts as zero, as
    torch.optim's would skip only that parameter), exactly as with explicit zero gradients."""
    x = tt.random_tensor(
        (3, 4, 5), tt_rank=2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    moved = []
    for explicit in (False, True):
        params = [torch.nn.Parameter(c.clone()) for c in x.tt_cores]
        params[0].grad, params[1].grad = torch.ones_like(params[0]), torch.ones_like(params[1])
        if explicit:
            params[2].grad = torch.zeros_like(params[2])
        tt.optim.RiemannianSGD([params], lr=0.1).step()
        moved.append(dense(tt.TensorTrain(params)).detach())
    assert float((moved[0] - dense(x)).norm()) > 0.01
    assert_close(moved[0], moved[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_riemannian_gradient_from_cores_of_a_half_precision_tt_keeps_its_dtype(dtype):
    x = tt.cast(tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64), dtype)
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    (tt.full(tt.TensorTrain(cores)).float() ** 2).sum().backward()
    g = tt.optim.riemannian_gradient_from_cores(x, [c.grad for c in cores])
    assert [c.dtype for c in g.tt_cores] == [dtype] * 3
    x64 = tt.cast(x, torch.float64)
    assert_close(tt.full(g).double(), tt.full(tt.project(2 * tt.full(x64), x64)), rtol=0.05, atol=0.05)


def test_riemannian_gradient_from_cores_carries_no_graph():
    """Gradients from backward(create_graph=True) and a point whose cores require grad: the result is a plain
    tangent vector, with no graph back to either."""
    gen = torch.Generator().manual_seed(0)
    cores = [
        torch.randn(1, 3, 2, dtype=torch.float64, generator=gen),
        torch.randn(2, 4, 1, dtype=torch.float64, generator=gen),
    ]
    x = tt.TensorTrain([c.requires_grad_() for c in cores])
    graphed = torch.autograd.grad((tt.full(x) ** 2).sum(), x.tt_cores, create_graph=True)
    assert all(a.requires_grad for a in graphed)
    for grads in (graphed, [a.detach() for a in graphed]):
        g = tt.optim.riemannian_gradient_from_cores(x, grads)
        assert not any(c.requires_grad for c in g.tt_cores)


def test_meta_and_fake_cores_are_a_clear_error_naming_the_optimizer():
    """A step reads the point's numerical ranks from its values: on meta cores (and fake ones, FakeTensorMode's
    dry runs) it failed inside round with 'epsilon picks the ranks ...; pass max_tt_rank alone', naming an
    argument the optimizer's caller never gave."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3), device="meta")
    opt = tt.optim.RiemannianSGD(layer, lr=0.1)
    layer(torch.randn(5, 8, device="meta")).sum().backward()
    with pytest.raises(ValueError, match=r"RiemannianSGD .*a meta tensor has no values") as info:
        opt.step()
    assert "max_tt_rank" not in str(info.value)
    grads = [c.grad for c in layer.cores]
    with pytest.raises(ValueError, match=r"riemannian_gradient_from_cores: .*a meta tensor has no values"):
        tt.optim.riemannian_gradient_from_cores(layer.weight, grads)
    with FakeTensorMode():
        x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        with pytest.raises(ValueError, match=r"riemannian_gradient_from_cores: .*a fake tensor"):
            tt.optim.riemannian_gradient_from_cores(x, [torch.ones(1, 3, 2), torch.ones(2, 4, 1)])


def test_a_sparse_core_gradient_is_a_type_error_naming_the_core():
    """A sparse .grad (torch.optim.SGD takes them) failed inside a reshape: 'reshape is not implemented for
    sparse tensors'."""
    layer = tt.nn.TTLinear(8, 6, tt_rank=2, in_dims=(2, 4), out_dims=(2, 3))
    opt = tt.optim.RiemannianSGD(layer, lr=0.1)
    layer(torch.randn(3, 8)).sum().backward()
    layer.cores[1].grad = layer.cores[1].grad.to_sparse()
    before = [c.detach().clone() for c in layer.cores]
    with pytest.raises(TypeError, match=r"RiemannianSGD: the gradient of core 1 is a sparse_coo tensor"):
        opt.step()
    assert all(torch.equal(c, b) for c, b in zip(layer.cores, before, strict=True))
    grads = [c.grad for c in layer.cores]
    with pytest.raises(
        TypeError, match=r"riemannian_gradient_from_cores: the gradient of core 1 is a sparse"
    ):
        tt.optim.riemannian_gradient_from_cores(layer.weight, grads)


def test_gradient_and_step_keep_full_precision_under_autocast():
    """Both ran their QR and rounding steps in float32 but autocast lowered the products between them: a step
    taken inside a bf16 autocast region (a training loop wrapped whole) moved a float32 layer 5e-3 (relative)
    away from the same step outside, and the gradient was 7e-3 off. A closure still runs under autocast."""
    outcomes = []
    for on in (False, True):
        torch.manual_seed(0)
        layer = tt.nn.TTLinear(64, 48, tt_rank=4)
        opt = tt.optim.RiemannianSGD(layer, lr=0.01, momentum=0.9)
        layer(torch.randn(8, 64)).pow(2).sum().backward()
        seen: list[bool] = []

        def closure(seen=seen):
            seen.append(torch.is_autocast_enabled("cpu"))
            return 0.0

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            grad = tt.optim.riemannian_gradient_from_cores(layer.weight, [c.grad for c in layer.cores])
            opt.step(closure)
            opt.step()  # (the momentum direction is projected too)
        assert seen == [on] and grad.dtype == torch.float32
        outcomes.append((tt.full(grad), layer.dense_weight().detach()))
    for got, want in zip(outcomes[1], outcomes[0], strict=True):
        assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
