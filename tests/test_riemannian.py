"""Riemannian tools against a dense oracle: the orthogonal projector onto the span of the TT map's Jacobian."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_tt, seeds, tensor_specs


# ----------------------------------------------------------------------------------- dense oracles
def dense(x) -> torch.Tensor:
    """The dense tensor (matrix for a TT-matrix; leading batch axis for a batch), by plain contraction."""
    batch = isinstance(x, tt.TensorTrainBatch)
    cores = [c if batch else c.unsqueeze(0) for c in x.tt_cores]
    if x.is_tt_matrix():
        cores = [c.reshape(c.shape[0], c.shape[1], -1, c.shape[-1]) for c in cores]
    res = cores[0]
    for c in cores[1:]:
        res = torch.einsum("oxa,oanb->oxnb", res.reshape(res.shape[0], -1, res.shape[-1]), c)
    res = res.reshape(res.shape[0], *[c.shape[2] for c in cores])
    if x.is_tt_matrix():
        rows, cols = x.raw_shape
        d = len(rows)
        res = res.reshape(res.shape[0], *[s for m, n in zip(rows, cols, strict=True) for s in (m, n)])
        perm = [0] + [1 + 2 * k for k in range(d)] + [2 + 2 * k for k in range(d)]
        res = res.permute(perm).reshape(res.shape[0], *x.shape[-2:])
    return res if batch else res[0]


def dense_projector(x: tt.TensorTrain) -> torch.Tensor:
    """Orthogonal projector onto the tangent space at x: the column space of d full(x) / d cores."""
    cores = [c.detach() for c in x.tt_cores]
    sizes = [c.numel() for c in cores]

    def f(flat):
        parts = torch.split(flat, sizes)
        return dense(tt.TensorTrain([p.reshape(c.shape) for p, c in zip(parts, cores, strict=True)])).reshape(
            -1
        )

    jac = torch.autograd.functional.jacobian(f, torch.cat([c.reshape(-1) for c in cores]))
    u, s, _ = torch.linalg.svd(jac, full_matrices=False)
    rank = int((s > s[0] * 1e-10).sum())
    return u[:, :rank] @ u[:, :rank].T


def spec_strategy():
    return st.one_of(
        tensor_specs(min_d=1, max_d=4, max_mode=3, max_rank=3), matrix_specs(max_d=3, max_rank=3)
    )


# ----------------------------------------------------------------------------------- projections
@given(spec=spec_strategy(), seed=seeds, batch=st.integers(1, 3))
def test_project_sum_matches_dense_projector(spec, seed, batch):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    where = random_tt(raw, ranks, gen=g)
    what = random_tt(raw, ranks, gen=g, batch_size=batch)
    p = dense_projector(where)
    expected = p @ dense(what).reshape(batch, -1).sum(0)
    res = tt.project_sum(what, where)
    assert res.projection_on is where
    assert_close(dense(res).reshape(-1), expected)
    # The same for a dense `what`, with a batch axis and weights.
    w = torch.randn(batch, generator=g, dtype=torch.float64)
    res_dense = tt.project_sum(dense(what), where, weights=w)
    assert_close(dense(res_dense).reshape(-1), p @ (w @ dense(what).reshape(batch, -1)))
    w2 = torch.randn(batch, 2, generator=g, dtype=torch.float64)
    res_batch = tt.project_sum(what, where, weights=w2)
    assert isinstance(res_batch, tt.TensorTrainBatch) and res_batch.projection_on is where
    assert_close(dense(res_batch).reshape(2, -1), (w2.T @ dense(what).reshape(batch, -1)) @ p.T)


@given(spec=spec_strategy(), seed=seeds)
def test_project_is_elementwise_and_idempotent(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    where = random_tt(raw, ranks, gen=g)
    what = random_tt(raw, (1,) + tuple(2 for _ in ranks[1:-1]) + (1,), gen=g, batch_size=2)
    p = dense_projector(where)
    res = tt.project(what, where)
    assert isinstance(res, tt.TensorTrainBatch) and len(res) == 2
    assert_close(dense(res).reshape(2, -1), dense(what).reshape(2, -1) @ p.T)
    # P_x(x) = x and P(P(z)) = P(z).
    assert_close(dense(tt.project(where, where)), dense(where))
    again = tt.project(res, where)
    assert_close(dense(again), dense(res))
    single = tt.project(dense(what)[0], where)
    assert isinstance(single, tt.TensorTrain)
    assert_close(dense(single), dense(res)[0])


def test_project_of_sum_is_sum_of_projections(gen):
    where = random_tt((3, 4, 2, 3), (1, 2, 3, 2, 1), gen=gen)
    a = random_tt((3, 4, 2, 3), (1, 2, 2, 2, 1), gen=gen)
    b = random_tt((3, 4, 2, 3), (1, 3, 1, 2, 1), gen=gen)
    total = tt.project(dense(a) + dense(b), where)
    assert_close(dense(total), dense(tt.project(a, where)) + dense(tt.project(b, where)))


def test_ranks_above_mode_sizes_t3f_issue_154(gen):
    # r_1 = 5 > n_1 = 2: the feasible rank is 2; the projector must still be the exact one.
    where = random_tt((2, 3, 2), (1, 5, 5, 1), gen=gen)
    what = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    res = tt.project(what, where)
    assert res.tt_ranks == (1, 4, 4, 1)
    assert_close(dense(res).reshape(-1), dense_projector(where) @ dense(what).reshape(-1))
    assert_close(dense(tt.project(where, where)), dense(where))


def test_float32(gen):
    where = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen, dtype=torch.float32)
    what = random_tt((3, 4, 3), (1, 3, 2, 1), gen=gen, dtype=torch.float32)
    p = dense_projector(where.to(torch.float64)).to(torch.float32)
    assert_close(dense(tt.project(what, where)).reshape(-1), p @ dense(what).reshape(-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(gen, dtype):
    """Half-precision TTs are projected with their QR sweeps in float32 (LAPACK has no half) and stay in dtype."""
    where = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen).to(dtype)
    what = random_tt((3, 4, 3), (1, 3, 2, 1), gen=gen).to(dtype)
    p = dense_projector(where.to(torch.float64))
    got = tt.project(what, where)
    assert got.dtype == dtype
    want = p @ dense(what.to(torch.float64)).reshape(-1)
    assert_close(dense(got).double().reshape(-1), want, rtol=0.05, atol=0.05 * float(want.abs().max()))
    g = tt.gradients(lambda z: (tt.full(z).float() ** 2).sum(), where)
    assert g.dtype == dtype
    assert_close(
        dense(g).double().reshape(-1),
        p @ (2 * dense(where.to(torch.float64))).reshape(-1),
        rtol=0.05,
        atol=0.05 * float(dense(where).abs().max()) * 2,
    )


@given(spec=spec_strategy(), seed=seeds)
def test_project_matmul_matches_dense(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    matrix_raw = (raw[0], raw[0]) if isinstance(raw[0], tuple) else (raw, raw)
    mranks = (1,) + tuple(2 for _ in ranks[1:-1]) + (1,)
    matrix = random_tt(matrix_raw, mranks, gen=g)
    where = random_tt(raw, ranks, gen=g)
    what = random_tt(raw, ranks, gen=g, batch_size=2)
    prod = dense(matrix) @ dense(what).reshape(2, matrix.shape[1], -1)
    expected = tt.project(prod.reshape(2, *where.shape), where)
    res = tt.riemannian.project_matmul(what, where, matrix)
    assert res.projection_on is where
    assert_close(dense(res), dense(expected))


# ----------------------------------------------------------------------------------- tangent vectors
def test_deltas_round_trip(gen):
    where = random_tt(((2, 3, 2), (3, 2, 2)), (1, 3, 2, 1), gen=gen)
    p = tt.project(random_tt(((2, 3, 2), (3, 2, 2)), (1, 2, 2, 1), gen=gen, batch_size=3), where)
    deltas = tt.tangent_space_to_deltas(p)
    assert [tuple(c.shape) for c in deltas] == [(3, 1, 2, 3, 3), (3, 3, 3, 2, 2), (3, 2, 2, 2, 1)]
    back = tt.riemannian.deltas_to_tangent_space(deltas, where)
    assert_close(dense(back), dense(p))
    # The deltas satisfy the gauge: the tangent inner product is the sum of the deltas' inner products.
    gram = sum(torch.einsum("p...,q...->pq", a, a) for a in deltas)
    assert_close(gram, dense(p).reshape(3, -1) @ dense(p).reshape(3, -1).T)


def test_deltas_to_tangent_space_with_given_frames_and_ranks_above_mode_sizes(gen):
    """t3f's usage: left = orthogonalize(tt), right = orthogonalize(left, left_to_right=False). A rank above the
    mode sizes shrinks in the right sweep; the given frames used to disagree with the deltas' ranks."""
    x = random_tt((2, 3, 2), (1, 3, 3, 1), gen=gen)
    p = tt.project(torch.randn(2, 3, 2, generator=gen, dtype=torch.float64), x)
    deltas = tt.tangent_space_to_deltas(p)
    left = tt.orthogonalize_tt_cores(x)
    right = tt.orthogonalize_tt_cores(left, left_to_right=False)
    assert_close(dense(tt.riemannian.deltas_to_tangent_space(deltas, x, left=left, right=right)), dense(p))
    # as in t3f, a missing right form is computed from the given left one
    assert_close(dense(tt.riemannian.deltas_to_tangent_space(deltas, x, left=left)), dense(p))


def test_deltas_to_tangent_space_refuses_mixed_deltas(gen):
    where = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    deltas = tt.tangent_space_to_deltas(tt.project(where, where))
    with pytest.raises(tt.ShapeError, match="delta 0 is torch.float32 on cpu but `tt` is torch.float64"):
        tt.riemannian.deltas_to_tangent_space([d.float() for d in deltas], where)
    with pytest.raises(tt.ShapeError, match="batched and unbatched deltas are mixed"):
        tt.riemannian.deltas_to_tangent_space([deltas[0], deltas[1].unsqueeze(0), deltas[2]], where)
    # batches of other sizes reached torch.cat's size error; a generator, len()'s TypeError without the name
    batched = tt.tangent_space_to_deltas(
        tt.project(torch.randn(2, 2, 3, 2, dtype=torch.float64, generator=gen), where)
    )
    with pytest.raises(
        tt.ShapeError, match=r"delta 1 has shape \(1, 2, 3, 2\), a batch of 1, but delta 0 a batch of 2"
    ):
        tt.riemannian.deltas_to_tangent_space([batched[0], batched[1][:1], batched[2]], where)
    again = tt.riemannian.deltas_to_tangent_space((d for d in deltas), where)
    assert_close(tt.full(again), tt.full(tt.project(where, where)))
    for bad in (deltas[0], 5):
        with pytest.raises(TypeError, match="deltas_to_tangent_space: deltas must be a sequence of tensors"):
            tt.riemannian.deltas_to_tangent_space(bad, where)


def test_messages_name_the_callers_arguments(gen):
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="`matrix` is torch.float32 on cpu but `where` is torch.float64"):
        tt.project_matmul(x, x, tt.random_matrix([[3, 4], [3, 4]], tt_rank=2))
    with pytest.raises(tt.ShapeError, match=r"dense `vector` has shape \(4, 3\) but `x` has shape \(3, 4\)"):
        tt.hessian_vector_product(tt.frobenius_norm_squared, x, torch.randn(4, 3, dtype=torch.float64))
    # a dense matrix was printed entry by entry; the ranks of mismatched inputs were not shown
    with pytest.raises(
        TypeError, match=r"got a dense tensor of shape \(12, 12\) \(tt.to_tt_matrix makes one\)$"
    ):
        tt.project_matmul(x, x, torch.zeros(12, 12, dtype=torch.float64))
    single, batch = tt.project(x, x), tt.project(random_tt((3, 4), (1, 1, 1), gen=gen, batch_size=2), x)
    with pytest.raises(
        tt.ShapeError, match=r"got ranks \(1, 4, 1\) \(\(3, 4\)\) and \(1, 4, 1\) \(\(3, 4\) \(batch of 2\)\)"
    ):
        tt.add_n_projected([single, batch])


def test_deltas_to_tangent_space_validates(gen):
    where = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="delta 1 has shape"):
        tt.riemannian.deltas_to_tangent_space(
            [
                torch.zeros(1, 2, 2, dtype=torch.float64),
                torch.zeros(3, 3, 2, dtype=torch.float64),
                torch.zeros(2, 2, 1, dtype=torch.float64),
            ],
            where,  # fmt: skip
        )
    with pytest.raises(tt.ShapeError, match="got 2 deltas"):
        tt.riemannian.deltas_to_tangent_space([torch.zeros(1, 2, 2, dtype=torch.float64)] * 2, where)
    with pytest.raises(tt.ShapeError, match="even inner TT-ranks"):
        tt.tangent_space_to_deltas(random_tt((2, 3, 2), (1, 3, 2, 1), gen=gen))


def test_deltas_to_tangent_space_checks_the_given_frames_and_delta_layouts(gen):
    """A batch or a dense tensor as `left` failed inside the frame code; a `left` of another dtype was reported as
    `tt`'s dtype; TT-matrix deltas with the modes swapped ((r, n, m, r') for (r, m, n, r')) were accepted."""
    x = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen)
    deltas = tt.tangent_space_to_deltas(
        tt.project(torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), x)
    )
    left = tt.orthogonalize_tt_cores(x)
    assert_close(
        dense(tt.riemannian.deltas_to_tangent_space(deltas, x, left=left)),
        dense(tt.riemannian.deltas_to_tangent_space(deltas, x)),
    )
    with pytest.raises(TypeError, match="`left` must be a TensorTrain"):
        tt.riemannian.deltas_to_tangent_space(deltas, x, left=tt.full(left))
    with pytest.raises(TypeError, match="`right` must be a TensorTrain"):
        tt.riemannian.deltas_to_tangent_space(deltas, x, right=tt.concat_along_batch_dim([left, left]))
    with pytest.raises(tt.ShapeError, match=r"`left` .* torch.float32 on cpu\) is not a form of `tt`"):
        tt.riemannian.deltas_to_tangent_space(deltas, x, left=tt.cast(left, torch.float32))
    with pytest.raises(tt.ShapeError, match="is not a form of `tt`"):
        tt.riemannian.deltas_to_tangent_space(deltas, x, left=random_tt((3, 2, 4), (1, 2, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="delta 1 must be a torch.Tensor"):
        tt.riemannian.deltas_to_tangent_space([deltas[0], deltas[1].numpy(), deltas[2]], x)
    with pytest.raises(TypeError, match="delta 0 must be a torch.Tensor, got list"):
        tt.riemannian.deltas_to_tangent_space([deltas[0].tolist(), deltas[1], deltas[2]], x)

    m = random_tt(((2, 3), (3, 2)), (1, 2, 1), gen=gen)
    md = tt.tangent_space_to_deltas(tt.project(torch.randn(6, 6, generator=gen, dtype=torch.float64), m))
    swapped = [d.transpose(1, 2) for d in md]  # (r, n, m, r'): same sizes, wrong layout
    with pytest.raises(tt.ShapeError, match=r"delta 0 has shape \(1, 3, 2, 2\), expected \(1, 2, 3, 2\)"):
        tt.riemannian.deltas_to_tangent_space(swapped, m)
    with pytest.raises(tt.ShapeError, match="delta 0 has shape"):
        tt.riemannian.deltas_to_tangent_space([d.reshape(d.shape[0], 6, -1) for d in md], m)


@given(spec=spec_strategy(), seed=seeds)
def test_pairwise_flat_inner_projected(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    where = random_tt(raw, ranks, gen=g)
    a = tt.project(random_tt(raw, ranks, gen=g, batch_size=3), where)
    b = tt.project(random_tt(raw, ranks, gen=g, batch_size=2), where)
    expected = dense(a).reshape(3, -1) @ dense(b).reshape(2, -1).T
    assert_close(tt.pairwise_flat_inner_projected(a, b), expected)


@given(spec=spec_strategy(), seed=seeds)
def test_add_n_projected_equals_dense_sum(spec, seed):
    raw, ranks = spec
    g = torch.Generator().manual_seed(seed)
    where = random_tt(raw, ranks, gen=g)
    objs = [tt.project(random_tt(raw, ranks, gen=g), where) for _ in range(3)]
    res = tt.add_n_projected(objs)
    assert res.tt_ranks == objs[0].tt_ranks and res.projection_on is where
    assert_close(dense(res), sum(dense(o) for o in objs))
    coef = [0.5, -2.0, 3.0]
    assert_close(
        dense(tt.add_n_projected(objs, coef=coef)), sum(c * dense(o) for c, o in zip(coef, objs, strict=True))
    )


def test_add_n_projected_batches_with_matrix_coef(gen):
    where = random_tt((3, 2, 4), (1, 2, 2, 1), gen=gen)
    objs = [tt.project(random_tt((3, 2, 4), (1, 2, 2, 1), gen=gen, batch_size=4), where) for _ in range(2)]
    coef = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    res = tt.add_n_projected(objs, coef=coef)
    expected = coef[0][:, None, None, None] * dense(objs[0]) + coef[1][:, None, None, None] * dense(objs[1])
    assert isinstance(res, tt.TensorTrainBatch)
    assert_close(dense(res), expected)


def test_projection_checks(gen):
    where = random_tt((2, 3), (1, 2, 1), gen=gen)
    other = random_tt((2, 3), (1, 2, 1), gen=gen)
    p, q = tt.project(where, where), tt.project(where, other)
    with pytest.raises(ValueError, match="same TT object"):
        tt.add_n_projected([p, q])
    with pytest.raises(ValueError, match="must be tangent vectors"):
        tt.pairwise_flat_inner_projected(p, where)
    with pytest.raises(ValueError, match="at least one"):
        tt.add_n_projected([])
    with pytest.raises(tt.ShapeError, match="coef must have shape"):
        tt.add_n_projected([p, p], coef=[1.0])
    with pytest.raises(tt.ShapeError, match="raw shape"):
        tt.project(random_tt((3, 2), (1, 2, 1), gen=gen), where)
    with pytest.raises(tt.ShapeError, match="dense `what` has shape"):
        tt.project(torch.zeros(3, 2, dtype=torch.float64), where)
    with pytest.raises(tt.ShapeError, match="float32"):
        tt.project(where.to(torch.float32), where)
    with pytest.raises(TypeError, match="must be a TensorTrain"):
        tt.project(where, random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2))
    with pytest.raises(tt.ShapeError, match=r"weights must have shape \(1,\) or \(1, N\)"):
        tt.project_sum(where, where, weights=torch.ones(2))
    with pytest.raises(TypeError, match="TT-matrix"):
        tt.riemannian.project_matmul(where, where, where)


def test_project_gradcheck(gen):
    where = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    cores = [c.clone().requires_grad_() for c in random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen).tt_cores]

    def f(*cs):
        return dense(tt.project(tt.TensorTrain(list(cs)), where))

    assert torch.autograd.gradcheck(f, tuple(cores))


def test_tangent_space_to_deltas_refuses_complex_like_the_other_tools():
    x = tt.TensorTrain(
        [torch.randn(1, 3, 2, dtype=torch.complex128), torch.randn(2, 4, 1, dtype=torch.complex128)]
    )
    with pytest.raises(TypeError, match="tangent_space_to_deltas: complex TT objects are not supported"):
        tt.tangent_space_to_deltas(x)


def _where_and_batch(g):
    """A rank-2 point of shape (3, 4, 5) and a batch of two dense tensors of that shape (float64)."""
    where = tt.TensorTrain(
        [torch.randn(*sh, dtype=torch.float64, generator=g) for sh in ((1, 3, 2), (2, 4, 2), (2, 5, 1))]
    )
    return where, torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)


def test_project_sum_without_weights_is_a_single_tt():
    """As documented, a TensorTrain (a batch only for a matrix of weights)."""
    where, dense = _where_and_batch(torch.Generator().manual_seed(0))
    what = tt.to_tt_tensor(dense, max_tt_rank=3, batch=True)
    p = tt.project_sum(what, where)
    assert type(p) is tt.TensorTrain and tuple(p.shape) == (3, 4, 5)
    assert_close(tt.full(p), tt.full(tt.project(tt.full(what).sum(0), where)))  # (projection is linear)


def test_add_n_projected_of_batches_with_vector_coef():
    """One coefficient per object, applied to every element of its batch."""
    where, dense = _where_and_batch(torch.Generator().manual_seed(0))
    x = tt.project(dense, where)  # a batch of 2 tangent vectors
    y = tt.project(2 * dense + 1, where)
    got = tt.full(tt.add_n_projected([x, y], coef=torch.tensor([0.5, -3.0], dtype=torch.float64)))
    assert_close(got, 0.5 * tt.full(x) - 3.0 * tt.full(y))


def test_concat_of_tangent_vectors_at_different_points_is_not_a_tangent_batch():
    g = torch.Generator().manual_seed(0)
    w1, dense = _where_and_batch(g)
    w2, _ = _where_and_batch(g)
    a, b = tt.project(dense[0], w1), tt.project(dense[1], w2)
    out = tt.concat_along_batch_dim([a, b])
    assert getattr(out, "projection_on", None) is None
    with pytest.raises(ValueError, match="projection"):
        tt.pairwise_flat_inner_projected(out, out)
    # at one point it stays one
    assert tt.concat_along_batch_dim([a, tt.project(dense[1], w1)]).projection_on is w1


def test_a_point_with_nan_cores_is_named_as_such(gen):
    """The frame's overflow check read a NaN core as 'the norm overflowed ... scale the input down'."""
    x = random_tt((3, 4, 5), (1, 2, 2, 1), gen=gen)
    bad = tt.TensorTrain([x.tt_cores[0], x.tt_cores[1] * float("nan"), x.tt_cores[2]])
    with pytest.raises(ValueError, match="core 1 of the point has NaN or inf values"):
        tt.project(x, bad)
    with pytest.raises(ValueError, match="core 1 of the point has NaN or inf values"):
        tt.gradients(tt.frobenius_norm_squared, bad)


def test_project_sum_with_no_weight_columns(gen):
    """(B, 0) weights gave "TensorTrainBatch: core 0 has an empty dimension"."""
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    with pytest.raises(
        tt.ShapeError, match=r"weights must have shape \(2,\) or \(2, N\) with N >= 1, got \(2, 0\)"
    ):
        tt.project_sum(torch.randn(2, 3, 4, dtype=torch.float64), x, torch.ones(2, 0, dtype=torch.float64))


def test_one_core_projections_are_tensors_of_their_own():
    """With d = 1 the projection's delta was a view of the projected dense tensor (and deltas_to_tangent_space's
    of the caller's delta): zeroing the input zeroed the tangent vector."""
    x = tt.random_tensor((4,), tt_rank=1, dtype=torch.float64)
    z = torch.randn(4, dtype=torch.float64)
    p = tt.project(z, x)
    want = tt.full(p).clone()
    z.zero_()
    assert torch.equal(tt.full(p), want)
    delta = torch.randn(1, 4, 1, dtype=torch.float64)
    v = tt.riemannian.deltas_to_tangent_space([delta], x)
    want = tt.full(v).clone()
    delta.zero_()
    assert torch.equal(tt.full(v), want)


def test_riemannian_paths_no_test_pinned(gen):
    """From a mutation audit (session 28): deltas_to_tangent_space given only the right frame, project_matmul's
    shape and dtype refusals, a single tangent vector against a batch in the pairwise Gram, add_n_projected's
    coef shape, hessian_vector_product's batch refusal, a (1,)-shaped loss, and detached gradients at a point
    that requires grad."""
    d64 = torch.float64

    def tt_of(shape, ranks, dtype=d64):
        cores = [
            torch.randn(ranks[k], *s, ranks[k + 1], generator=gen, dtype=d64) for k, s in enumerate(shape)
        ]
        return tt.TensorTrain([c.to(dtype) for c in cores])

    x = tt_of([(3,), (4,), (5,)], [1, 2, 2, 1])
    one = tt.project(torch.randn(3, 4, 5, generator=gen, dtype=d64), x)
    many = tt.project(torch.randn(3, 3, 4, 5, generator=gen, dtype=d64), x)
    right = tt.orthogonalize_tt_cores(tt.orthogonalize_tt_cores(x), left_to_right=False)
    rebuilt = tt.riemannian.deltas_to_tangent_space(tt.tangent_space_to_deltas(one), x, right=right)
    assert_close(tt.full(rebuilt), tt.full(one))
    want = tt.full(one).reshape(1, -1) @ tt.full(many).reshape(3, -1).T
    assert_close(tt.pairwise_flat_inner_projected(one, many), want)
    with pytest.raises(tt.ShapeError, match=r"coef must have shape \(2,\), got \(2, 3\)"):
        tt.add_n_projected([one, one], coef=torch.ones(2, 3, dtype=d64))
    matrix = tt_of([(2, 3), (3, 4)], [1, 2, 1])
    v = tt_of([(3,), (4,)], [1, 2, 1])
    with pytest.raises(tt.ShapeError, match=r"does not give `where`'s raw shape \(\(2, 3\), \(1, 1\)\)"):
        tt.project_matmul(v, tt_of([(2, 1), (3, 1)], [1, 2, 1]), matrix)
    with pytest.raises(tt.ShapeError, match="`what` is torch.float32 on cpu but `where` is torch.float64"):
        tt.project_matmul(tt.cast(v, torch.float32), tt_of([(2,), (3,)], [1, 2, 1]), matrix)

    def f(y):
        return 0.5 * (tt.full(y) ** 2).sum()

    batch = tt.TensorTrainBatch([torch.randn(2, *c.shape, generator=gen, dtype=d64) for c in x.tt_cores])
    with pytest.raises(TypeError, match="`vector` must be a TensorTrain or a dense tensor, got a batch"):
        tt.hessian_vector_product(f, x, batch)
    assert_close(tt.full(tt.gradients(lambda y: f(y).reshape(1), x)), tt.full(x))  # (grad of |x|^2 / 2 at x)
    graded = tt.TensorTrain([c.clone().requires_grad_() for c in x.tt_cores])
    assert not any(c.requires_grad for c in tt.gradients(f, graded).tt_cores)


def test_project_sum_with_vector_weights_is_a_single_tt_and_weights_have_one_or_two_dims(gen):
    """From a mutation audit: (B,) weights give one weighted sum, a TensorTrain (a batch only for (B, N) weights),
    and weights of three dims are refused (not reshaped to (B, N)); no test pinned either."""
    where = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen)
    what = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen, batch_size=3)
    w = torch.randn(3, generator=gen, dtype=torch.float64)
    got = tt.project_sum(what, where, weights=w)
    assert type(got) is tt.TensorTrain and got.projection_on is where
    want = dense_projector(where) @ (w @ dense(what).reshape(3, -1))
    assert_close(dense(got).reshape(-1), want)
    with pytest.raises(tt.ShapeError, match=r"weights must have shape \(3,\) or \(3, N\) .* got \(3, 1, 1\)"):
        tt.project_sum(what, where, weights=w.reshape(3, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_project_sum_of_half_precision_keeps_its_dtype(gen, dtype):
    """Its weighted sums run in float32; the tangent vector comes back in the point's dtype."""
    where = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen).to(dtype)
    what = random_tt((3, 4, 3), (1, 2, 2, 1), gen=gen, batch_size=2).to(dtype)
    got = tt.project_sum(what, where, weights=torch.tensor([1.0, -2.0]))
    assert got.dtype == dtype and all(c.dtype == dtype for c in got.tt_cores)
    want = dense_projector(where.to(torch.float64)) @ (
        torch.tensor([1.0, -2.0], dtype=torch.float64) @ dense(what.to(torch.float64)).reshape(2, -1)
    )
    assert_close(dense(got).double().reshape(-1), want, rtol=0.05, atol=0.05 * float(want.abs().max()))


def test_project_matmul_of_a_single_tt_is_a_single_tt_and_checks_what_and_where(gen):
    """A TensorTrain `what` gives a TensorTrain; a dense `what`, a batch or complex `where` are refused by name."""
    matrix = random_tt(((2, 3), (3, 4)), (1, 2, 1), gen=gen)
    what = random_tt((3, 4), (1, 2, 1), gen=gen)
    where = random_tt((2, 3), (1, 2, 1), gen=gen)
    got = tt.project_matmul(what, where, matrix)
    assert type(got) is tt.TensorTrain and got.projection_on is where
    prod = (dense(matrix) @ dense(what).reshape(-1)).reshape(2, 3)
    assert_close(dense(got), dense(tt.project(prod, where)))
    with pytest.raises(TypeError, match="project_matmul: `what` must be a TT object, got Tensor"):
        tt.project_matmul(dense(what), where, matrix)
    batch = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(TypeError, match="project_matmul: `where` must be a TensorTrain"):
        tt.project_matmul(what, batch, matrix)
    c = torch.complex128
    with pytest.raises(TypeError, match="project_matmul: complex TT objects are not supported"):
        tt.project_matmul(tt.cast(what, c), tt.cast(where, c), tt.cast(matrix, c))


def test_deltas_to_tangent_space_builds_on_the_given_frames(gen):
    """The tangent vector is sum_k U_{<k} dU_k V_{>k} with the given `left` (U) and `right` (V) cores, not those
    of another orthogonal form of the same tensor. From a mutation audit: every other test passes the frames
    project computes itself, so a given frame dropped for a freshly computed one passed them."""
    x = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen)
    a, b = (torch.randn(2, 2, generator=gen, dtype=torch.float64) + 2 * torch.eye(2) for _ in range(2))
    c0, c1, c2 = x.tt_cores
    # the same tensor in another gauge: its orthogonal forms differ from x's own by rotations
    y = tt.TensorTrain(
        [
            torch.einsum("anb,bc->anc", c0, a),
            torch.einsum("ab,bnc,cd->and", a.inverse(), c1, b),
            torch.einsum("ab,bnc->anc", b.inverse(), c2),
        ]
    )
    assert_close(dense(y), dense(x))
    left = tt.orthogonalize_tt_cores(y)
    right = tt.orthogonalize_tt_cores(left, left_to_right=False)
    first = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64)
    last = torch.randn(2, 2, 1, generator=gen, dtype=torch.float64)
    zero = torch.zeros(2, 4, 2, dtype=torch.float64)
    # the last delta only: U_1 U_2 dU_3, from `left`
    got = tt.riemannian.deltas_to_tangent_space([torch.zeros_like(first), zero, last], x, left=left)
    assert got.projection_on is x
    assert_close(dense(got), dense(tt.TensorTrain([left.tt_cores[0], left.tt_cores[1], last])))
    # the first delta only: dU_1 V_2 V_3, from `right`
    got = tt.riemannian.deltas_to_tangent_space([first, zero, torch.zeros_like(last)], x, right=right)
    assert_close(dense(got), dense(tt.TensorTrain([first, right.tt_cores[1], right.tt_cores[2]])))


def test_a_dense_what_of_another_dtype_is_refused_by_name(gen):
    """From a mutation audit: only TT `what`s of another dtype were tested (without the check a dense one reaches
    torch's einsum dtype error)."""
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    z = torch.randn(2, 3, 4, generator=gen)  # float32
    with pytest.raises(
        tt.ShapeError, match="project: `what` is torch.float32 on cpu but `where` is torch.float64"
    ):
        tt.project(z, x)
    with pytest.raises(
        tt.ShapeError, match="project_sum: `what` is torch.float32 on cpu but `where` is torch"
    ):
        tt.project_sum(z, x)
    with pytest.raises(tt.ShapeError, match="`vector` is torch.float32 on cpu but `x` is torch.float64"):
        tt.hessian_vector_product(tt.frobenius_norm_squared, x, z[0])


def test_tangent_space_to_deltas_refuses_a_dense_tensor_by_name():
    """(from a mutation audit: no test passed it a non-TT)"""
    with pytest.raises(TypeError, match="tangent_space_to_deltas: expected a TT object, got Tensor"):
        tt.tangent_space_to_deltas(torch.zeros(1, 3, 2))


def test_tangent_vector_tools_check_their_arguments_kinds(gen):
    """A dense tensor among tangent vectors is a TypeError (not 'must be tangent vectors'); the point of
    deltas_to_tangent_space is one real TensorTrain, as for the projections, and its message names the argument
    `tt` (it named `where`, which deltas_to_tangent_space does not have)."""
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    p = tt.project(x, x)
    with pytest.raises(TypeError, match="add_n_projected: expected TT objects, got Tensor"):
        tt.add_n_projected([p, tt.full(p)])
    with pytest.raises(TypeError, match="pairwise_flat_inner_projected: expected TT objects, got Tensor"):
        tt.pairwise_flat_inner_projected(p, tt.full(p))
    deltas = tt.tangent_space_to_deltas(p)
    with pytest.raises(TypeError, match="deltas_to_tangent_space: complex TT objects are not supported"):
        tt.riemannian.deltas_to_tangent_space(
            [d.to(torch.complex128) for d in deltas], tt.cast(x, torch.complex128)
        )
    with pytest.raises(TypeError, match="deltas_to_tangent_space: `tt` must be a TensorTrain"):
        tt.riemannian.deltas_to_tangent_space(deltas, tt.concat_along_batch_dim([x, x]))


def test_what_on_another_device_is_refused_by_name(gen):
    """From a mutation audit: check_pair's device half had no test (meta stands in for another device here)."""
    x = random_tt((3, 4), (1, 2, 1), gen=gen)
    on_meta = tt.TensorTrain([c.to("meta") for c in x.tt_cores])
    for what in (on_meta, torch.empty(3, 4, dtype=torch.float64, device="meta")):
        with pytest.raises(
            tt.ShapeError,
            match="project: `what` is torch.float64 on meta but `where` is torch.float64 on cpu",
        ):
            tt.project(what, x)
