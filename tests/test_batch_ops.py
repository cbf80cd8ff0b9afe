"""tt.batch_ops against the dense oracle: concat, per-element weights, Gram and pairwise inner products."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, random_tt, seeds, tensor_specs
from tensortrain import batch_ops, ops

any_specs = st.one_of(tensor_specs(), matrix_specs())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(spec=any_specs, seed=seeds, sizes=st.lists(st.sampled_from([None, 1, 2]), min_size=1, max_size=3))
def test_concat_along_batch_dim(spec, seed, sizes):
    raw, ranks = spec
    g = _gen(seed)
    parts = [random_tt(raw, ranks, gen=g, batch_size=s) for s in sizes]
    res = batch_ops.concat_along_batch_dim(parts)
    assert isinstance(res, tt.TensorTrainBatch)
    expected = torch.cat([ops.full(p) if s else ops.full(p)[None] for p, s in zip(parts, sizes, strict=True)])
    assert_close(ops.full(res), expected)


def test_concat_of_one_object_returns_it(gen):
    """t3f returns a single TT object (not in a list) as it is; this raised a TypeError."""
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    assert batch_ops.concat_along_batch_dim(a) is a
    b = random_tt((2, 3), (1, 2, 1), gen=gen)
    assert batch_ops.concat_along_batch_dim(b) is b


def test_concat_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(
        tt.ShapeError, match=r"element 0 has TT-ranks \(1, 2, 1\) but element 1 has \(1, 3, 1\)"
    ):
        batch_ops.concat_along_batch_dim([a, random_tt((2, 3), (1, 3, 1), gen=gen, batch_size=2)])
    with pytest.raises(tt.ShapeError, match=r"raw shapes differ: \(2, 3\) \(batch of 2\) vs \(3, 3\)"):
        batch_ops.concat_along_batch_dim([a, random_tt((3, 3), (1, 2, 1), gen=gen)])
    with pytest.raises(tt.ShapeError, match="got an empty list"):
        batch_ops.concat_along_batch_dim([])
    with pytest.raises(tt.ShapeError, match="different dtypes torch.float64 and torch.float32"):
        batch_ops.concat_along_batch_dim([a, a.to(torch.float32)])  # (not promoted silently)
    with pytest.raises(TypeError, match="expects a list of TT objects, got int"):
        batch_ops.concat_along_batch_dim(3)
    with pytest.raises(TypeError, match="element 1 must be a TensorTrain"):
        batch_ops.concat_along_batch_dim([a, 1])


@given(spec=any_specs, seed=seeds, b=st.integers(1, 3))
def test_multiply_along_batch_dim(spec, seed, b):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=b)
    w = torch.randn(b, generator=g, dtype=torch.float64)
    res = batch_ops.multiply_along_batch_dim(a, w)
    expected = ops.full(a) * w.reshape(-1, *([1] * (len(a.shape) - 1)))
    assert_close(ops.full(res), expected)
    assert_close(ops.full(batch_ops.multiply_along_batch_dim(a, w.tolist())), expected)


def test_multiply_along_batch_dim_errors_and_grad(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(tt.ShapeError, match=r"weights must have shape \(2,\) for a batch of 2, got \(3,\)"):
        batch_ops.multiply_along_batch_dim(a, [1.0, 2.0, 3.0])
    with pytest.raises(tt.ShapeError, match=r"weights must have shape \(2,\) for a batch of 2, got \(2, 1\)"):
        batch_ops.multiply_along_batch_dim(a, torch.ones(2, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="expects a TensorTrainBatch, got TensorTrain"):
        batch_ops.multiply_along_batch_dim(a[0], [1.0])
    w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: ops.full(batch_ops.multiply_along_batch_dim(a, w)), (w,))


def test_multiply_along_batch_dim_complex_weights(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    # Casting complex weights to the real cores would drop their imaginary parts: refuse (as multiply does).
    for w in (torch.tensor([1j, 2.0], dtype=torch.complex128), [1j, 2.0], (1 + 0j, 2.0)):
        with pytest.raises(
            TypeError,
            match=r"multiply_along_batch_dim: complex weights cannot scale torch.float64 cores",
        ):
            batch_ops.multiply_along_batch_dim(a, w)
    ac = ops.cast(a, torch.complex128)
    w = torch.tensor([1j, -2.0 + 1j], dtype=torch.complex128)
    expected = ops.full(ac) * w.reshape(-1, 1, 1)
    assert_close(ops.full(batch_ops.multiply_along_batch_dim(ac, w)), expected)
    assert_close(ops.full(batch_ops.multiply_along_batch_dim(ac, w.tolist())), expected)
    real = torch.tensor([2.0, -1.0], dtype=torch.float64)
    assert_close(
        ops.full(batch_ops.multiply_along_batch_dim(ac, real)), ops.full(ac) * real.reshape(-1, 1, 1)
    )


@given(spec=any_specs, seed=seeds, sizes=st.sampled_from([(3, 2), (1, 4), (None, 2), (2, None)]))
def test_pairwise_flat_inner_and_gram(spec, seed, sizes):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=sizes[0])
    b = random_tt(raw, (1, *([2] * (len(ranks) - 2)), 1), gen=g, batch_size=sizes[1])
    fa = ops.full(a).reshape(sizes[0] or 1, -1)
    fb = ops.full(b).reshape(sizes[1] or 1, -1)
    assert_close(batch_ops.pairwise_flat_inner(a, b), fa @ fb.T)
    assert_close(batch_ops.gram_matrix(a), fa @ fa.T)


def _as_vector(x, form):
    if form == "tensor":
        return x
    return type(x)([c.unsqueeze(-2) if form == "col" else c.unsqueeze(-3) for c in x.tt_cores])


@given(
    spec=matrix_specs(),
    seed=seeds,
    forms=st.sampled_from([("tensor", "tensor"), ("col", "row"), ("row", "col")]),
)
def test_pairwise_flat_inner_with_matrix(spec, seed, forms):
    (rows, cols), ranks = spec
    g = _gen(seed)
    m = random_tt((rows, cols), ranks, gen=g)
    a = random_tt(rows, ranks, gen=g, batch_size=3)
    b = random_tt(cols, (1, *([2] * (len(rows) - 1)), 1), gen=g, batch_size=2)
    fa, fb, fm = ops.full(a).reshape(3, -1), ops.full(b).reshape(2, -1), ops.full(m)
    res = batch_ops.pairwise_flat_inner(_as_vector(a, forms[0]), _as_vector(b, forms[1]), m)
    assert_close(res, fa @ fm @ fb.T)
    if rows == cols:
        assert_close(batch_ops.gram_matrix(a, m), fa @ fm @ fa.T)


def test_pairwise_float32_and_gradcheck(gen):
    a = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen, batch_size=3, dtype=torch.float32)
    fa = ops.full(a).reshape(3, -1)
    assert_close(batch_ops.gram_matrix(a), fa @ fa.T)
    cores = [c.requires_grad_() for c in random_cores((2, 3), (1, 2, 1), gen=gen, batch_size=2)]
    m = random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen)
    assert torch.autograd.gradcheck(
        lambda *cs: batch_ops.gram_matrix(tt.TensorTrainBatch(list(cs)), m), cores
    )


def test_pairwise_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(tt.ShapeError, match=r"pairwise_flat_inner: raw shapes differ"):
        batch_ops.pairwise_flat_inner(a, random_tt((3, 2), (1, 2, 1), gen=gen, batch_size=2))
    m = random_tt(((2, 3), (4, 1)), (1, 2, 1), gen=gen)
    with pytest.raises(
        tt.ShapeError, match=r"pairwise_flat_inner: tt_2 must be a vector with modes \(4, 1\)"
    ):
        batch_ops.pairwise_flat_inner(a, a, m)
    with pytest.raises(
        TypeError, match="pairwise_flat_inner: matrix must be a single TT-matrix, got a batch"
    ):
        batch_ops.pairwise_flat_inner(a, a, random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen, batch_size=2))
    with pytest.raises(TypeError, match="pairwise_flat_inner: matrix must be a TT-matrix, got a TT-tensor"):
        batch_ops.pairwise_flat_inner(a, a, a)
    with pytest.raises(TypeError, match="pairwise_flat_inner: tt_1 must be a TensorTrain"):
        batch_ops.pairwise_flat_inner(torch.ones(2), a)


def test_gram_matrix_errors_name_gram_matrix(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    # v_i^T A v_j needs A's row and column modes equal: say so, naming gram_matrix and its matrix.
    m = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen)
    with pytest.raises(
        tt.ShapeError,
        match=r"gram_matrix: matrix must have square modes \(row dims == column dims\), got \(2, 3\) x \(4, 5\)",
    ):
        batch_ops.gram_matrix(a, m)
    with pytest.raises(tt.ShapeError, match=r"gram_matrix: tt_vectors must be a vector with modes \(3, 3\)"):
        batch_ops.gram_matrix(a, random_tt(((3, 3), (3, 3)), (1, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="gram_matrix: matrix must be a TT-matrix, got a TT-tensor"):
        batch_ops.gram_matrix(a, a)
    with pytest.raises(TypeError, match="gram_matrix: matrix must be a single TT-matrix, got a batch"):
        batch_ops.gram_matrix(a, random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen, batch_size=2))
    with pytest.raises(TypeError, match="gram_matrix: tt_vectors must be a TensorTrain"):
        batch_ops.gram_matrix(torch.ones(2))
    with pytest.raises(tt.ShapeError, match="gram_matrix: operands have different dtypes"):
        batch_ops.gram_matrix(a, random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen).to(torch.float32))


def test_lists_of_learned_scalars_keep_their_gradients():
    """A list of 0-dim tensors that require grad (t3f code passes lists of variables) was read value by value by
    torch.as_tensor: the result had no graph to them, and torch only warned."""
    b = tt.random_tensor_batch((3, 4), tt_rank=2, batch_size=3, dtype=torch.float64)
    x = tt.random_tensor((3, 4), tt_rank=2, dtype=torch.float64)
    sums = tt.full(b).sum(dim=(1, 2))
    projected = [tt.project(b[i], x) for i in range(3)]
    cases = {
        "multiply_along_batch_dim": (lambda w: tt.multiply_along_batch_dim(b, w), sums),
        "reduce_sum_batch": (lambda w: tt.approximate.reduce_sum_batch(b, max_tt_rank=6, coef=w), sums),
        "project_sum": (lambda w: tt.project_sum(b, x, weights=w), None),
        "add_n_projected": (lambda w: tt.add_n_projected(projected, coef=w), None),
    }
    for name, (fn, want) in cases.items():
        ws = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, 2.0, -0.5)]
        got = torch.autograd.grad(tt.full(fn(ws)).sum(), ws)
        if want is None:  # linear in the weights: the gradient is each element's projection, summed
            want = torch.stack([tt.full(tt.project(b[i], x)).sum() for i in range(3)])
        assert_close(torch.stack(got), want, msg=name)
    mixed = tt.multiply_along_batch_dim(b, [1, torch.tensor(2.0), 0.5])  # numbers and tensors, promoted
    assert mixed.dtype == torch.float64
    assert_close(
        tt.full(mixed), tt.full(b) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[:, None, None]
    )


def test_gram_matrices_in_blocks_of_rows_equal_the_whole(gen, monkeypatch):
    """Large Gram matrices are built in blocks of rows (a (B, B, r, n, r) step intermediate took 717 MB for 200
    rank-16 TTs); forced to blocks of one row here, with and without a matrix."""
    import tensortrain.batch_ops

    a = tt.random_tensor_batch((3, 4, 2), tt_rank=3, batch_size=5, dtype=torch.float64, generator=gen)
    b = tt.random_tensor_batch((3, 4, 2), tt_rank=2, batch_size=4, dtype=torch.float64, generator=gen)
    m = tt.random_matrix(((3, 4, 2), (3, 4, 2)), tt_rank=2, dtype=torch.float64, generator=gen)
    whole = [
        tt.gram_matrix(a),
        tt.pairwise_flat_inner(a, b),
        tt.gram_matrix(a, m),
        tt.pairwise_flat_inner(a, b, m),
    ]
    monkeypatch.setattr(tensortrain.batch_ops, "_ROWS_CHUNK", 1)
    blocks = [
        tt.gram_matrix(a),
        tt.pairwise_flat_inner(a, b),
        tt.gram_matrix(a, m),
        tt.pairwise_flat_inner(a, b, m),
    ]
    for w, k in zip(whole, blocks, strict=True):
        assert torch.allclose(w, k, rtol=1e-12, atol=0)


# a list of float64 learned scalars scales float32 cores: converted to the cores' dtype
def test_multiply_along_batch_dim_casts_a_list_of_tensors_to_the_cores_dtype(gen):
    b = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2, dtype=torch.float32)
    w = [torch.tensor(0.5, dtype=torch.float64, requires_grad=True), torch.tensor(2.0, dtype=torch.float64)]
    r = tt.multiply_along_batch_dim(b, w)
    assert r.dtype == torch.float32
    assert_close(tt.full(r), tt.full(b) * torch.tensor([0.5, 2.0]).reshape(2, 1, 1))
    tt.full(r).sum().backward()
    assert w[0].grad is not None


def test_multiply_along_batch_dim_scales_the_first_core_as_t3f():
    """t3f applies the weights to the first core and leaves the others as they are (documented; a mutant that
    scaled the last core gave the same tensor and passed every test)."""
    gen = torch.Generator().manual_seed(0)
    b = tt.random_tensor_batch((2, 3, 4), tt_rank=2, batch_size=3, dtype=torch.float64, generator=gen)
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    out = tt.multiply_along_batch_dim(b, w)
    assert_close(out.tt_cores[0], b.tt_cores[0] * w.view(3, 1, 1, 1))
    for got, was in zip(out.tt_cores[1:], b.tt_cores[1:], strict=True):
        assert torch.equal(got, was)
