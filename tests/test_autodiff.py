"""Riemannian autodiff against the dense oracle: P_x(Euclidean gradient) and P_x H P_x v."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_tt, seeds, tensor_specs
from test_riemannian import dense, dense_projector


def make_func(weights: torch.Tensor):
    """A non-quadratic function of the full tensor only: sum(w * X^2) + (sum X)^3 / 3."""

    def dense_f(full: torch.Tensor) -> torch.Tensor:
        return (weights * full**2).sum() + full.sum() ** 3 / 3

    return dense_f, (lambda x: dense_f(dense(x)))


def specs():
    return st.one_of(
        tensor_specs(min_d=1, max_d=4, max_mode=3, max_rank=3), matrix_specs(max_d=3, max_rank=3)
    )


@given(spec=specs(), seed=seeds)
def test_gradients_equal_projected_euclidean_gradient(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    x = random_tt(raw, ranks, gen=g)
    dense_f, f = make_func(torch.rand(x.shape, generator=g, dtype=torch.float64))
    full = dense(x).requires_grad_()
    (euclid,) = torch.autograd.grad(dense_f(full), full)
    res = tt.gradients(f, x)
    assert res.projection_on is x
    assert_close(dense(res).reshape(-1), dense_projector(x) @ euclid.reshape(-1))


@given(spec=specs(), seed=seeds)
def test_hessian_vector_product_matches_dense(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    x = random_tt(raw, ranks, gen=g)
    vec = random_tt(raw, ranks, gen=g)
    dense_f, f = make_func(torch.rand(x.shape, generator=g, dtype=torch.float64))
    hess = torch.autograd.functional.hessian(lambda t: dense_f(t.reshape(x.shape)), dense(x).reshape(-1))
    p = dense_projector(x)
    expected = p @ hess @ p @ dense(vec).reshape(-1)
    assert_close(dense(tt.hessian_vector_product(f, x, vec)).reshape(-1), expected)
    assert_close(dense(tt.hessian_vector_product(f, x, dense(vec))).reshape(-1), expected)


def test_ranks_above_mode_sizes_t3f_issue_154(gen):
    x = random_tt((2, 2, 3, 2), (1, 4, 6, 4, 1), gen=gen)
    dense_f, f = make_func(torch.rand(x.shape, generator=gen, dtype=torch.float64))
    full = dense(x).requires_grad_()
    (euclid,) = torch.autograd.grad(dense_f(full), full)
    res = tt.gradients(f, x)
    assert_close(dense(res).reshape(-1), dense_projector(x) @ euclid.reshape(-1))


def test_float32_and_parameters(gen):
    x = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen, dtype=torch.float32)
    x = tt.TensorTrain([torch.nn.Parameter(c) for c in x.tt_cores])  # a trainable point is fine too
    res = tt.gradients(lambda y: 0.5 * (dense(y) ** 2).sum(), x)
    assert_close(dense(res), dense(x).detach())  # grad of ||X||^2 / 2 is X, already tangent
    assert all(c.grad is None for c in x.tt_cores)


def test_gauge_check_catches_core_dependent_functions(gen):
    x = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    with pytest.raises(ValueError, match="not invariant to the TT gauge"):
        tt.gradients(lambda y: (y.tt_cores[0] ** 2).sum(), x)
    with pytest.raises(ValueError, match="not invariant to the TT gauge"):
        tt.hessian_vector_product(lambda y: (y.tt_cores[0] ** 2).sum(), x, x)
    # Without the check the (meaningless) result is returned.
    tt.gradients(lambda y: (y.tt_cores[0] ** 2).sum(), x, runtime_check=False)


def test_validation_and_constant_functions(gen):
    x = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(ValueError, match="scalar tensor"):
        tt.gradients(lambda y: dense(y), x)
    with pytest.raises(TypeError, match="must be a TensorTrain"):
        tt.gradients(lambda y: dense(y).sum(), dense(x))
    with pytest.raises(tt.ShapeError, match="shape"):
        tt.hessian_vector_product(lambda y: dense(y).sum(), x, torch.zeros(3, 2, dtype=torch.float64))
    # a batch of dense vectors was projected as one and the pairing summed over it: one wrong answer, no error
    with pytest.raises(tt.ShapeError, match=r"`vector` has shape \(2, 2, 3\) but `x` has shape \(2, 3\)"):
        tt.hessian_vector_product(lambda y: dense(y).sum(), x, torch.zeros(2, 2, 3, dtype=torch.float64))
    zero = tt.gradients(lambda y: torch.tensor(1.0, dtype=torch.float64), x)
    assert_close(dense(zero), torch.zeros(2, 3, dtype=torch.float64))
    # A linear function has a zero Hessian.
    hv = tt.hessian_vector_product(lambda y: dense(y).sum(), x, x)
    assert_close(dense(hv), torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("runtime_check", [True, False])
def test_autodiff_complex_valued_func_is_a_clear_type_error(gen, runtime_check):
    # (test_autodiff.py, test_validation_and_constant_functions) a loss must be real: named, not torch's message
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match="func must return a real scalar"):
        tt.autodiff.gradients(lambda t: tt.full(t).sum() * (1 + 1j), x, runtime_check=runtime_check)
    with pytest.raises(TypeError, match="func must return a real scalar"):
        tt.autodiff.hessian_vector_product(
            lambda t: tt.full(t).sum() * (1 + 1j), x, x, runtime_check=runtime_check
        )


def test_runtime_check_catches_a_small_gauge_dependence():
    """A func with a gauge-dependent term of 1e-4 (relative ~1e-6, above the documented float64 tolerance) must be
    refused; a mutant with a 100x looser tolerance passed every test."""
    gen = torch.Generator().manual_seed(0)
    x = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64, generator=gen)
    with pytest.raises(ValueError, match="not invariant to the TT gauge"):
        tt.gradients(lambda t: (tt.full(t) ** 2).sum() + 1e-4 * t.tt_cores[0].sum(), x)
    tt.gradients(lambda t: (tt.full(t) ** 2).sum() + 1e-4 * tt.full(t).sum(), x)  # (invariant: no error)


def test_inference_mode_gives_the_same_gradient_and_product():
    """Under inference_mode enable_grad records nothing: both came back zero, as if func did not depend on x."""
    gen = torch.Generator().manual_seed(0)
    x = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64, generator=gen)
    t = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen)
    f = lambda y: ((tt.full(y) - t) ** 2).sum()  # noqa: E731
    g, h = tt.gradients(f, x), tt.hessian_vector_product(f, x, t)
    assert dense(g).norm() > 1
    with torch.inference_mode():
        assert_close(dense(tt.gradients(f, x)), dense(g))
        assert_close(dense(tt.hessian_vector_product(f, x, t)), dense(h))
        # a target made here is an inference tensor, which autograd cannot keep for a product's backward
        target = tt.random_tensor((3, 4, 5), tt_rank=3, dtype=torch.float64, generator=gen)
        fit = lambda y: tt.flat_inner(y, y) - 2 * tt.flat_inner(y, target)  # noqa: E731
        with pytest.raises(
            RuntimeError, match="gradients: func uses a tensor made under torch.inference_mode"
        ):
            tt.gradients(fit, x)
        with pytest.raises(RuntimeError, match="hessian_vector_product: func uses a tensor made under"):
            tt.hessian_vector_product(fit, x, x)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16, torch.float32])
def test_gauge_check_tolerance_follows_the_point_and_the_gradient(low):
    """The tolerance took eps from the value's dtype only (a half or float32 point with a float64 loss was refused
    as gauge dependent) and the scale from the value only (a loss that cancels to ~0 at x was refused)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = tt.cast(tt.random_tensor((4,) * 6, tt_rank=4, dtype=torch.float64, generator=gen), low)
        w = torch.randn((4,) * 6, dtype=torch.float64, generator=gen)
        tt.gradients(lambda y, w=w: ((tt.full(y).double() - w) ** 2).sum(), x)
        tt.hessian_vector_product(lambda y, w=w: (tt.full(y).double() * w).sum(), x, x)
    x = tt.random_tensor((4,) * 8, tt_rank=8, generator=gen) * 1000.0
    c = float(tt.full(x).sum())
    tt.gradients(lambda y: tt.full(y).sum() - c, x)  # invariant; its value is round-off around 0
    with pytest.raises(ValueError, match="not invariant to the TT gauge"):  # (still caught there)
        tt.gradients(lambda y: tt.full(y).sum() - c + 1e4 * y.tt_cores[0].sum(), x)


def test_gauge_check_tolerance_needs_both_of_its_terms():
    """Each term of the tolerance alone passed the test above. The round-off bound 100 d eps |P grad| |x| is what
    accepts a float32 point whose float64 loss is ~0 at x (grad orthogonal to x); the |<grad, x>| scale is what
    accepts a loss computed in float32 from a float64 point (round-off on the scale of <grad, x>)."""
    gen = torch.Generator().manual_seed(0)
    x = tt.random_tensor((4,) * 6, tt_rank=4, dtype=torch.float32, generator=gen) * 1000.0
    xd = tt.full(x).double()
    w = torch.randn((4,) * 6, dtype=torch.float64, generator=gen) * 1000.0
    w = w - (w * xd).sum() / (xd * xd).sum() * xd  # orthogonal to x: the loss is ~0 at x
    g = tt.gradients(lambda y: (tt.full(y).double() * w).sum(), x)
    assert float(tt.frobenius_norm(g)) > 0
    x = tt.random_tensor((4,) * 6, tt_rank=4, dtype=torch.float64, generator=gen) * 1000.0
    c = float(tt.frobenius_norm_squared(x))
    g = tt.gradients(lambda y: tt.frobenius_norm_squared(tt.cast(y, torch.float32)).double() - c, x)
    assert_close(tt.full(g), 2 * tt.full(x), rtol=1e-3, atol=1e-3 * float(tt.frobenius_norm(x)))
    # the same loss negated: the scale is |<grad, x>|, here of a negative inner product
    g = tt.gradients(lambda y: c - tt.frobenius_norm_squared(tt.cast(y, torch.float32)).double(), x)
    assert_close(tt.full(g), -2 * tt.full(x), rtol=1e-3, atol=1e-3 * float(tt.frobenius_norm(x)))


def test_runtime_check_must_be_a_bool(gen):
    x = random_tt((2, 3), (1, 2, 1), gen=gen)
    for bad in ("False", None, 0):
        with pytest.raises(TypeError, match="runtime_check must be True or False"):
            tt.gradients(lambda y: dense(y).sum(), x, runtime_check=bad)
        with pytest.raises(TypeError, match="runtime_check must be True or False"):
            tt.hessian_vector_product(lambda y: dense(y).sum(), x, x, runtime_check=bad)


def test_only_func_runs_under_autocast():
    """The frame, its gauge and the backward ran under the caller's autocast too: for a func that keeps full
    precision itself (a norm), the gradient and the Hessian-vector product in a bf16 autocast region were 6.6e-3
    and 6.3e-3 (relative) off the same calls outside it. Now only func runs under autocast, as documented."""
    torch.manual_seed(0)
    x, b = tt.random_tensor((3, 4, 5), tt_rank=3), tt.random_tensor((3, 4, 5), tt_rank=3)

    def f(y):
        return 0.5 * tt.frobenius_norm_squared(y)

    dense_b = tt.full(b)
    want = (tt.gradients(f, x), tt.hessian_vector_product(f, x, b), tt.hessian_vector_product(f, x, dense_b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (
            tt.gradients(f, x),
            tt.hessian_vector_product(f, x, b),
            tt.hessian_vector_product(f, x, dense_b),
        )
        seen: list[bool] = []
        tt.gradients(lambda y: seen.append(torch.is_autocast_enabled("cpu")) or f(y), x)
    assert seen == [True, True]  # (func runs twice: the gauge check)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert_close(tt.full(g), tt.full(w), rtol=1e-5, atol=1e-6)
