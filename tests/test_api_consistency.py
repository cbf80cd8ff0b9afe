"""Sibling functions agree: what one accepts, refuses or keeps, the others do too (session 10's API review)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensortrain as tt
from conftest import assert_close


def test_tangent_vectors_stay_tangent_through_cast_and_concatenation():
    """cast and concat_along_batch_dim dropped projection_on (.to, .detach, indexing kept it): a batch built
    from per-sample projections was refused by pairwise_flat_inner_projected."""
    x = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64)
    g = [tt.project(torch.randn(3, 4, 5, dtype=torch.float64), x) for _ in range(2)]
    assert tt.cast(g[0], torch.float64).projection_on is x
    # another dtype: another point
    assert getattr(tt.cast(g[0], torch.float32), "projection_on", None) is None
    batch = tt.concat_along_batch_dim(g)
    assert batch.projection_on is x
    assert_close(tt.pairwise_flat_inner_projected(batch, batch), tt.pairwise_flat_inner(batch, batch))
    other = tt.project(
        torch.randn(3, 4, 5, dtype=torch.float64), tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64)
    )
    mixed = tt.concat_along_batch_dim([g[0], other])  # two points: not tangent anywhere in particular
    assert getattr(mixed, "projection_on", None) is None


def test_tt_linear_bias_init_must_be_finite_and_biases_may_be_arrays():
    with pytest.raises(ValueError, match="bias_init must be finite, got nan"):
        tt.nn.TTLinear(12, 20, tt_rank=2, bias_init=float("nan"))
    with pytest.raises(ValueError, match="bias_init must be finite, got inf"):
        tt.nn.TTLinear(12, 20, tt_rank=2, bias_init=float("inf"))
    # an int past float's range: math.isfinite raised OverflowError (also in the other finite checks below)
    with pytest.raises(ValueError, match="bias_init must be finite, got 1000"):
        tt.nn.TTLinear(12, 20, tt_rank=2, bias_init=10**400)
    with pytest.raises(ValueError, match="variance must be finite and > 0"):
        tt.nn.init.tt_normal_([torch.empty(1, 2, 3, 1)], 10**400)
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
        tt.to_tt_tensor(torch.ones(2, 3), epsilon=10**400)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        tt.datasets.load_mnist("/nonexistent-tt-folder", timeout=10**400)
    with pytest.raises(ValueError, match="max_padding must be finite"):
        tt.shapes.padded_shape(30522, 4, max_padding=10**400)
    # t3f's set_weights takes NumPy arrays: from_tt and load_tt_ failed with AttributeError on them
    w = tt.random_matrix([[4, 5], [3, 4]], tt_rank=2)
    layer = tt.nn.TTLinear.from_tt(w, np.full(20, 0.5, np.float64))
    assert layer.bias.dtype == torch.float32 and torch.equal(layer.bias.detach(), torch.full((20,), 0.5))
    other = tt.nn.TTLinear(12, 20, tt_rank=2, in_dims=(3, 4), out_dims=(4, 5)).load_tt_(w, [2.0] * 20)
    assert torch.equal(other.bias.detach(), torch.full((20,), 2.0))
    with pytest.raises(TypeError, match="bias must be a tensor or an array of numbers, got str"):
        tt.nn.TTLinear.from_tt(w, "zeros")


def test_regularizers_take_one_tt_s_cores_as_riemannian_sgd_does():
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tt.tt_parameters(tt.random_tensor((3, 4, 5), tt_rank=2))

    m = Holder()
    want = tt.frobenius_norm_squared(tt.tt_from_parameters(m.w))
    for given in (m.w, list(m.w)):
        assert_close(tt.l2_regularizer(2.0)(given), 2 * want)
    tt.l2_regularizer(1.0)(m.w).backward()
    assert all(c.grad is not None for c in m.w)
    with pytest.raises(ValueError, match=r"no TT weights .*pass that list"):
        tt.l2_regularizer(1.0)(m)
    with pytest.raises(ValueError, match="not one TT's cores"):
        tt.l2_regularizer(1.0)([torch.zeros(1, 2, 3), torch.zeros(2, 2, 1)])


def test_compress_takes_whole_float_caps_and_says_shape_error_below_one():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    for cap in (4.0, np.float64(4.0), np.int64(4)):
        assert tt.compress(model, max_tt_rank=cap)[1].layers[0].tt_ranks == (1, 4, 1)
    with pytest.raises(tt.ShapeError, match="max_tt_rank must be >= 1, got 0"):
        tt.compress(model, max_tt_rank=0)
    with pytest.raises(TypeError, match="max_tt_rank must be an int"):
        tt.compress(model, max_tt_rank=2.5)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda **kw: tt.nn.TTLinear.from_linear(torch.nn.Linear(16, 16), **kw), "TTLinear.from_linear"),
        (
            lambda **kw: tt.nn.TTEmbedding.from_embedding(torch.nn.Embedding(16, 16), **kw),
            "TTEmbedding.from_embedding",
        ),
        (
            lambda **kw: tt.approximate.reduce_sum_batch(
                tt.random_tensor_batch((3, 3), tt_rank=2, batch_size=3), kw.get("max_tt_rank", 2)
            ),
            "reduce_sum_batch",
        ),
    ],
)
def test_budget_errors_name_the_function_called(call, name):
    """A bad max_tt_rank or epsilon is reported under the function the user called, not an inner
    to_tt_matrix or round."""
    with pytest.raises(tt.ShapeError, match=rf"^{name}: max_tt_rank values must be >= 1, got 0"):
        call(max_tt_rank=0)
    with pytest.raises(TypeError, match=rf"^{name}: max_tt_rank values must be whole numbers"):
        call(max_tt_rank=2.5)
    if name != "reduce_sum_batch":  # (it takes no epsilon)
        with pytest.raises(ValueError, match=rf"^{name}: epsilon must be a finite number >= 0, got -1"):
            call(epsilon=-1)
        with pytest.raises(TypeError, match=rf"^{name}: epsilon must be a float or None"):
            call(epsilon="0.1")


def test_bool_masks_are_not_weights_anywhere():
    """multiply_along_batch_dim refused a bool mask; reduce_sum_batch, project_sum and add_n_projected read it as
    0/1 weights."""
    b = tt.random_tensor_batch((2, 3, 4), batch_size=3)
    x = tt.random_tensor((2, 3, 4))
    projected = [tt.project(b[i], x) for i in range(3)]
    mask = torch.tensor([True, False, True])
    calls = {
        "multiply_along_batch_dim": lambda w: tt.multiply_along_batch_dim(b, w),
        "reduce_sum_batch": lambda w: tt.approximate.reduce_sum_batch(b, 4, coef=w),
        "project_sum": lambda w: tt.project_sum(b, x, weights=w),
        "add_n_projected": lambda w: tt.add_n_projected(projected, coef=w),
    }
    for name, call in calls.items():
        for w in (mask, [True, False, True]):
            with pytest.raises(TypeError, match=rf"{name}: .* must be numbers, got (a )?bool"):
                call(w)
    # and add_n_projected takes any iterable, as approximate.add_n does
    assert_close(tt.full(tt.add_n_projected(p for p in projected)), tt.full(tt.add_n_projected(projected)))


def test_frobenius_norm_checks_epsilon_as_renormalize_does():
    x = tt.random_tensor((3, 4, 5))
    assert_close(tt.frobenius_norm(x, epsilon=np.float64(0.0)), tt.frobenius_norm(x))
    for bad, kind in ((True, TypeError), ("0.1", TypeError), (float("inf"), ValueError), (-1e-3, ValueError)):
        with pytest.raises(kind, match="frobenius_norm: epsilon must be"):
            tt.frobenius_norm(x, epsilon=bad)


def test_rank_helpers_check_their_sizes():
    for d, kind in ((0, tt.ShapeError), (-1, tt.ShapeError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(kind, match=r"normalize_tt_rank: d \(the number of cores\) must be"):
            tt.normalize_tt_rank(3, d)
    with pytest.raises(tt.ShapeError, match="max_tt_ranks: expected at least one mode size"):
        tt.max_tt_ranks([])
    assert tt.normalize_tt_rank(3, 1) == (1, 1) and tt.max_tt_ranks([5]) == (1, 1)
