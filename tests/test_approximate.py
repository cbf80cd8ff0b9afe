"""approximate.add_n / reduce_sum_batch against the dense sum (exact when the rank cap allows it)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt, seeds
from test_riemannian import dense


def low_rank_family(n, gen, raw=(3, 4, 3, 2)):
    """n TTs of rank 4 that all lie in span{A, B} (A, B rank 1): every partial sum has rank <= 2."""
    a, b = random_tt(raw, (1, 1, 1, 1, 1), gen=gen), random_tt(raw, (1, 1, 1, 1, 1), gen=gen)
    coef = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    objs = []
    for c1, c2 in coef.tolist():
        x = tt.add(tt.multiply(a, c1), tt.multiply(b, c2))
        objs.append(tt.add(x, tt.multiply(x, 0.5)))  # rank 4, redundant on purpose
    return objs


@given(n=st.integers(1, 7), seed=seeds)
def test_add_n_exact_when_partial_sums_fit(n, seed):
    g = torch.Generator().manual_seed(seed)
    objs = low_rank_family(n, g)
    res = tt.approximate.add_n(objs, max_tt_rank=2)
    if n > 1:
        assert max(res.tt_ranks) <= 2
    assert_close(dense(res), sum(dense(o) for o in objs))


def test_add_n_with_a_large_cap_is_the_exact_sum(gen):
    objs = [random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen) for _ in range(5)]
    res = tt.approximate.add_n(objs, max_tt_rank=100)
    assert_close(dense(res), sum(dense(o) for o in objs))


def test_add_n_truncation_error_is_bounded(gen):
    # Rounding to rank r costs at most sqrt(d - 1) = sqrt(3) times the best rank-r error of its input.
    # Sums of 4 noisy copies of one rank-2 tensor: each leaf pair errs by e_i <= sqrt(3) * noise, the root
    # rounding by <= sqrt(3) * (noise + e_1 + e_2); in total <= (2 sqrt(3) + 3) * noise.
    base = random_tt((4, 4, 4, 4), (1, 2, 2, 2, 1), gen=gen)
    noise = [random_tt((4, 4, 4, 4), (1, 2, 2, 2, 1), gen=gen) for _ in range(4)]
    objs = [tt.add(base, tt.multiply(e, 1e-4)) for e in noise]
    res = tt.approximate.add_n(objs, max_tt_rank=2)
    exact = sum(dense(o) for o in objs)
    noise_norm = sum(dense(e).norm() for e in noise) * 1e-4
    assert max(res.tt_ranks) <= 2
    assert (dense(res) - exact).norm() <= (2 * 3**0.5 + 3) * noise_norm


@given(bsz=st.integers(1, 6), n_sums=st.integers(1, 3), seed=seeds)
def test_reduce_sum_batch_weighted(bsz, n_sums, seed):
    g = torch.Generator().manual_seed(seed)
    batch = random_tt((2, 3, 2), (1, 2, 2, 1), gen=g, batch_size=bsz)
    full = dense(batch)
    plain = tt.approximate.reduce_sum_batch(batch, max_tt_rank=100)
    assert isinstance(plain, tt.TensorTrain)
    assert_close(dense(plain), full.sum(0))
    vec = torch.randn(bsz, generator=g, dtype=torch.float64)
    assert_close(
        dense(tt.approximate.reduce_sum_batch(batch, 100, coef=vec)), torch.einsum("b,bijk->ijk", vec, full)
    )
    mat = torch.randn(bsz, n_sums, generator=g, dtype=torch.float64)
    res = tt.approximate.reduce_sum_batch(batch, 100, coef=mat)
    assert isinstance(res, tt.TensorTrainBatch) and res.batch_size == n_sums
    assert_close(dense(res), torch.einsum("bn,bijk->nijk", mat, full))


def test_reduce_sum_batch_rounds(gen):
    objs = low_rank_family(5, gen)
    batch = tt.TensorTrainBatch([torch.stack(cs) for cs in zip(*(o.tt_cores for o in objs), strict=True)])
    res = tt.approximate.reduce_sum_batch(batch, max_tt_rank=2)
    assert max(res.tt_ranks) <= 2
    assert_close(dense(res), dense(batch).sum(0))


def t3f_reduce_sum_batch(elements, cap):
    """t3f's reduce_sum_batch written out: each level rounds the sums of neighbours (0 + 1, 2 + 3, ...); an odd
    level's last element is added to a zero element and rounded, which is rounding it alone."""
    level = list(elements)
    while len(level) > 1:
        nxt = [tt.round(tt.add(a, b), max_tt_rank=cap) for a, b in zip(level[::2], level[1::2], strict=False)]
        level = nxt + ([tt.round(level[-1], max_tt_rank=cap)] if len(level) % 2 else [])
    return tt.round(level[0], max_tt_rank=cap)  # (a batch of one is rounded too, as documented)


@pytest.mark.parametrize("bsz", range(1, 10))
def test_reduce_sum_batch_adds_in_t3fs_order(bsz, gen):
    """The batch was summed first half + second half: under truncation another tensor than t3f's (and than
    add_n's, which follows t3f's tree), off by 20% of the sum's norm at B = 4."""
    batch = random_tt((3, 3, 3, 3), (1, 3, 3, 3, 1), gen=gen, batch_size=bsz)
    coef = torch.randn(bsz, 2, generator=gen, dtype=torch.float64)
    res = tt.approximate.reduce_sum_batch(batch, max_tt_rank=2, coef=coef)
    for j in range(2):
        want = t3f_reduce_sum_batch([tt.multiply(batch[i], float(coef[i, j])) for i in range(bsz)], 2)
        assert max(res[j].tt_ranks) <= 2
        assert_close(dense(res[j]), dense(want))
    plain = tt.approximate.reduce_sum_batch(batch, max_tt_rank=2)
    assert_close(dense(plain), dense(t3f_reduce_sum_batch([batch[i] for i in range(bsz)], 2)))
    if bsz % 2 == 0 and bsz & (bsz - 1) == 0:  # a power of two: add_n's tree is the same
        assert_close(dense(plain), dense(tt.approximate.add_n([batch[i] for i in range(bsz)], 2)))


def test_validation(gen):
    with pytest.raises(ValueError, match="at least one"):
        tt.approximate.add_n([], max_tt_rank=2)
    with pytest.raises(TypeError, match="expected TT objects"):
        tt.approximate.add_n([torch.ones(2)], max_tt_rank=2)
    batch = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=3)
    with pytest.raises(tt.ShapeError, match=r"coef must have shape \(3,\) or \(3, N\)"):
        tt.approximate.reduce_sum_batch(batch, 2, coef=torch.ones(4))
    with pytest.raises(TypeError, match="expected a TensorTrainBatch"):
        tt.approximate.reduce_sum_batch(batch[0], 2)
    # complex weights on a real batch would lose their imaginary part
    with pytest.raises(TypeError, match="complex coef"):
        tt.approximate.reduce_sum_batch(batch, 2, coef=torch.tensor([1j, 1j, 1j]))
    # a bad cap is refused even where nothing is rounded (one summand)
    with pytest.raises(tt.ShapeError, match="max_tt_rank"):
        tt.approximate.reduce_sum_batch(batch[:1], max_tt_rank=-5)
    with pytest.raises(tt.ShapeError, match="add_n: max_tt_rank"):
        tt.approximate.add_n([batch[0]], max_tt_rank=0)


def test_reduce_sum_batch_of_one_honours_the_cap(gen):
    batch = random_tt((4, 4, 4), (1, 3, 3, 1), gen=gen, batch_size=1)
    res = tt.approximate.reduce_sum_batch(batch, max_tt_rank=1)
    assert res.tt_ranks == (1, 1, 1, 1)


@pytest.mark.parametrize("bsz", [3, 5, 7])
def test_reduce_sum_batch_odd_sizes_have_the_dense_gradient(bsz, gen):
    # odd groups used to be padded with a zero element, whose exact sums have rank-deficient unfoldings: the
    # QR/SVD backward of that rounding returned NaN
    batch = random_tt((4, 4, 4), (1, 2, 2, 1), gen=gen, batch_size=bsz)
    coef = torch.randn(bsz, generator=gen, dtype=torch.float64, requires_grad=True)
    res = tt.approximate.reduce_sum_batch(batch, max_tt_rank=100, coef=coef)
    (grad,) = torch.autograd.grad(tt.frobenius_norm_squared(res), coef)
    ref = torch.einsum("b,bijk->ijk", coef, dense(batch))
    (want,) = torch.autograd.grad((ref**2).sum(), coef)
    assert_close(grad, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_reduce_sum_batch_list_weights_keep_the_batch_precision(dtype, gen):
    """A list coef went through float32 before the batch's dtype (an error of 2e-8 on float64 batches)."""
    b = random_tt((3, 4, 5), (1, 2, 2, 1), gen=gen, batch_size=2, dtype=dtype)
    coef = [0.1, 0.7] if dtype == torch.float64 else [0.1 + 0.3j, 0.7]
    want = coef[0] * tt.full(b[0]) + coef[1] * tt.full(b[1])
    for weights in (coef, [[c] for c in coef], torch.tensor(coef, dtype=dtype)):
        got = tt.full(tt.approximate.reduce_sum_batch(b, 10, weights))
        torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-13, atol=1e-13)


def test_reduce_sum_batch_refuses_a_coef_without_columns():
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=5, dtype=torch.float64)
    with pytest.raises(tt.ShapeError, match=r"reduce_sum_batch: coef must have shape .*N >= 1.*\(5, 0\)"):
        tt.approximate.reduce_sum_batch(b, 3, coef=torch.zeros(5, 0, dtype=torch.float64))


def test_messages_name_add_n_and_coef(gen):
    """add_n of several TTs with a bad cap failed inside round after the first sum ("round: max_tt_rank ..."); a
    NaN in reduce_sum_batch's coef surfaced as NaN cores inside round."""
    xs = [random_tt((3, 4), (1, 2, 1), gen=gen) for _ in range(3)]
    with pytest.raises(ValueError, match="^add_n: "):
        tt.approximate.add_n(xs, max_tt_rank=0)
    batch = tt.concat_along_batch_dim(xs)
    with pytest.raises(ValueError, match="coef contains NaN or inf"):
        tt.approximate.reduce_sum_batch(batch, 2, coef=[1.0, float("nan"), 2.0])


def test_reduce_sum_batch_with_a_rank_deficient_odd_tail_has_finite_gradients():
    """The odd last element is rounded only where its ranks pass the cap: rounding a rank-deficient one (a zero
    rank column) gave NaN gradients."""
    x = tt.random_tensor_batch(
        (2, 2), tt_rank=2, batch_size=3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    c0, c1 = (c.detach().clone() for c in x.tt_cores)
    c0[2] = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]], dtype=torch.float64)
    c0.requires_grad_()
    s = tt.approximate.reduce_sum_batch(tt.TensorTrainBatch([c0, c1]), max_tt_rank=2)
    (got,) = torch.autograd.grad(tt.full(s).sum(), [c0])
    (want,) = torch.autograd.grad(tt.full(tt.TensorTrainBatch([c0, c1])).sum(), [c0])
    assert torch.isfinite(got).all()
    assert_close(got, want)


def test_add_n_adds_in_t3fs_order(gen):
    """Pairs first, the odd last object added at the end (t3f's tree), each partial sum rounded to the cap."""
    xs = [random_tt((4, 4, 4, 4), (1, 3, 3, 3, 1), gen=gen) for _ in range(5)]

    def r(x):
        return tt.round(x, max_tt_rank=2)

    want = r(tt.add(r(tt.add(r(tt.add(xs[0], xs[1])), r(tt.add(xs[2], xs[3])))), xs[4]))
    assert_close(dense(tt.approximate.add_n(xs, max_tt_rank=2)), dense(want))
