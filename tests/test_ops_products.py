"""tt.ops products against the dense oracle: matmul (all pairs), flat_inner, norms, bilinear forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, random_tt, seeds, tensor_specs
from tensortrain import ops

ShapeError = tt.ShapeError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def chained_specs(draw, max_d=3):
    """Raw shapes and ranks of two TT-matrices a (M x K), b (K x N) with matching inner modes."""
    d = draw(st.integers(1, max_d))
    dims = [tuple(draw(st.integers(1, 3)) for _ in range(d)) for _ in range(3)]
    ranks = [(1, *(draw(st.integers(1, 3)) for _ in range(d - 1)), 1) for _ in range(2)]
    return ((dims[0], dims[1]), ranks[0]), ((dims[1], dims[2]), ranks[1])


batch_pairs = st.sampled_from([(None, None), (2, 2), (1, 2), (2, 1), (None, 2), (2, None)])


# ---------------------------------------------------------------------------------------------- TT @ TT
@given(specs=chained_specs(), seed=seeds, sizes=batch_pairs)
def test_matmul_tt_tt(specs, seed, sizes):
    g = _gen(seed)
    a = random_tt(*specs[0], gen=g, batch_size=sizes[0])
    b = random_tt(*specs[1], gen=g, batch_size=sizes[1])
    c = ops.matmul(a, b)
    assert c.tt_ranks == tuple(x * y for x, y in zip(a.tt_ranks, b.tt_ranks, strict=True))
    assert isinstance(c, tt.TensorTrainBatch) == (sizes != (None, None))
    assert_close(ops.full(c), ops.full(a) @ ops.full(b))
    assert_close(ops.full(a @ b), ops.full(a) @ ops.full(b))


def test_matmul_tt_tt_float32_and_gradcheck(gen):
    a = random_tt(((2, 3), (3, 2)), (1, 2, 1), gen=gen, dtype=torch.float32)
    assert_close(ops.full(a @ ops.transpose(a)), ops.full(a) @ ops.full(a).T)
    ca = [c.requires_grad_() for c in random_cores(((2, 2), (3, 1)), (1, 2, 1), gen=gen)]
    cb = [c.requires_grad_() for c in random_cores(((3, 1), (2, 2)), (1, 2, 1), gen=gen)]
    assert torch.autograd.gradcheck(
        lambda *cs: ops.full(ops.matmul(tt.TensorTrain(list(cs[:2])), tt.TensorTrain(list(cs[2:])))),
        ca + cb,
    )


# ------------------------------------------------------------------------------------- TT @ dense, dense @ TT
@given(
    spec=matrix_specs(),
    seed=seeds,
    lead=st.sampled_from([(), (2,), (2, 3)]),
    p=st.integers(1, 3),
    batch=st.sampled_from([None, 1, 2]),
)
def test_matmul_tt_dense_and_dense_tt(spec, seed, lead, p, batch):
    g = _gen(seed)
    w = random_tt(*spec, gen=g, batch_size=batch)
    m, n = w.shape[-2:]
    if batch is not None and lead:
        lead = (*lead[:-1], batch)  # a batch of TT-matrices meets the dense operand's last leading dim
    x = torch.randn(*lead, n, p, generator=g, dtype=torch.float64)
    y = torch.randn(*lead, p, m, generator=g, dtype=torch.float64)
    wd = ops.full(w)
    assert_close(ops.matmul(w, x), wd @ x)
    assert_close(w @ x, wd @ x)
    assert_close(ops.matmul(y, w), y @ wd)
    assert_close(y @ w, y @ wd)


def test_matmul_dense_broadcasts_against_batch(gen):
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen, batch_size=3)
    wd = ops.full(w)
    x = torch.randn(5, 1, 4, 2, generator=gen, dtype=torch.float64)
    assert_close(w @ x, wd @ x)
    y = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    assert_close(y @ w, y @ wd)


@given(
    spec=matrix_specs(),
    seed=seeds,
    lead=st.sampled_from([(), (1,), (5,), (2, 3), (3, 1), (0,)]),
    p=st.integers(1, 3),
)
def test_matmul_batch_of_one_broadcasts_over_any_leading_dims(spec, seed, lead, p):
    g = _gen(seed)
    w = random_tt(*spec, gen=g, batch_size=1)
    m, n = w.shape[-2:]
    wd = ops.full(w)  # (1, M, N): broadcasts against every leading shape, as in torch.matmul
    x = torch.randn(*lead, n, p, generator=g, dtype=torch.float64)
    y = torch.randn(*lead, p, m, generator=g, dtype=torch.float64)
    assert_close(w @ x, wd @ x)
    assert_close(y @ w, y @ wd)
    xv, yv = (
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.randn(m, generator=g, dtype=torch.float64),
    )
    assert_close(w @ xv, wd @ xv)  # vectors: (1, M) and (1, N)
    assert_close(yv @ w, yv @ wd)


def test_matmul_batch_of_one_example(gen):
    mb = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen, batch_size=1)
    x = torch.randn(5, 20, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 7, 6, generator=gen, dtype=torch.float64)
    assert (mb @ x).shape == (5, 6, 7)
    assert_close(mb @ x, ops.full(mb) @ x)
    assert (y @ mb).shape == (5, 7, 20)
    assert_close(y @ mb, y @ ops.full(mb))


def test_dense_matmul_tt_goes_straight_to_matmul(gen, monkeypatch):
    """``x @ tt`` and ``torch.matmul(x, tt)`` reach tt.matmul through __torch_function__, without torch's failed
    attempt first; other torch functions given a TT object still decline with a TypeError."""
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    y = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    seen = []
    real = ops.matmul
    monkeypatch.setattr(ops, "matmul", lambda a, b: seen.append(type(a).__name__) or real(a, b))
    assert_close(y @ w, y @ ops.full(w))
    assert_close(torch.matmul(y, w), y @ ops.full(w))
    assert seen == ["Tensor", "Tensor"]
    with pytest.raises(TypeError):
        torch.add(y[:, :4], w)


def test_matmul_vectors(gen):
    w = random_tt(((2, 3), (4, 2)), (1, 3, 1), gen=gen)
    wd = ops.full(w)
    v, u = (
        torch.randn(8, generator=gen, dtype=torch.float64),
        torch.randn(6, generator=gen, dtype=torch.float64),
    )
    assert_close(w @ v, wd @ v)
    assert_close(u @ w, u @ wd)


def test_matmul_dense_float32(gen):
    w = random_tt(((4, 3), (2, 5)), (1, 3, 1), gen=gen, dtype=torch.float32)
    x = torch.randn(7, 10, 3, generator=gen)
    assert_close(w @ x, ops.full(w) @ x)
    assert_close(x.transpose(-1, -2) @ ops.transpose(w), (ops.full(w) @ x).transpose(-1, -2))


def test_matmul_dense_gradcheck(gen):
    cores = [c.requires_grad_() for c in random_cores(((2, 3), (3, 2)), (1, 2, 1), gen=gen)]
    x = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *cs: ops.matmul(tt.TensorTrain(list(cs)), x), [x, *cores])
    assert torch.autograd.gradcheck(lambda y, *cs: ops.matmul(y, tt.TensorTrain(list(cs))), [y, *cores])


def test_matmul_errors(gen):
    w = random_tt(((2, 3), (4, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(
        ShapeError, match=r"matmul: x has 5 columns but the TT-matrix has 6 rows \(row dims \(2, 3\)\)"
    ):
        torch.ones(4, 5, dtype=torch.float64) @ w
    with pytest.raises(
        ShapeError, match=r"matmul: x has 7 rows but the TT-matrix has 8 columns \(column dims \(4, 2\)\)"
    ):
        w @ torch.ones(7, 3, dtype=torch.float64)
    with pytest.raises(
        ShapeError, match="matmul: operands have different dtypes torch.float64 and torch.float32"
    ):
        w @ torch.ones(8, 3)
    with pytest.raises(TypeError, match=r"matmul: second operand is a number \(2.0\)"):
        ops.matmul(w, 2.0)
    with pytest.raises(TypeError, match="matmul: first operand is a number"):
        ops.matmul(3, w)
    with pytest.raises(TypeError, match="matmul: second operand must be a TT-matrix, got a TT-tensor"):
        w @ random_tt((2, 2), (1, 1, 1), gen=gen)
    with pytest.raises(
        TypeError, match="matmul: second operand must be a TT-matrix or a torch.Tensor, got list"
    ):
        ops.matmul(w, [1.0])
    with pytest.raises(TypeError, match="matmul: neither operand is a TT object"):
        ops.matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(
        ShapeError,
        match=r"matmul: the first TT-matrix has column dims \(4, 2\) \(8 columns\) but the second has row dims \(2, 4\)",
    ):
        w @ random_tt(((2, 4), (1, 1)), (1, 1, 1), gen=gen)
    with pytest.raises(ShapeError, match="0-dimensional"):
        w @ torch.tensor(1.0, dtype=torch.float64)
    wb = random_tt(((2, 3), (4, 2)), (1, 2, 1), gen=gen, batch_size=3)
    with pytest.raises(
        ShapeError,
        match=r"a batch of 3 TT-matrices needs the dense operand's last leading dim to be 3 or 1, got shape \(2, 8, 1\)",
    ):
        wb @ torch.ones(2, 8, 1, dtype=torch.float64)


# -------------------------------------------------------------------------------------------- flat_inner
any_specs = st.one_of(tensor_specs(), matrix_specs())


@given(spec=any_specs, seed=seeds, sizes=batch_pairs)
def test_flat_inner_tt_tt(spec, seed, sizes):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=sizes[0])
    b = random_tt(raw, (1, *([2] * (len(ranks) - 2)), 1), gen=g, batch_size=sizes[1])
    fa, fb = ops.full(a), ops.full(b)
    dims = tuple(range(-len(a.shape) + (1 if sizes[0] else 0), 0))
    assert_close(ops.flat_inner(a, b), (fa * fb).sum(dim=dims))


@given(spec=any_specs, seed=seeds, batch=st.sampled_from([None, 2]), elem=st.booleans())
def test_flat_inner_tt_dense(spec, seed, batch, elem):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=batch)
    fa = ops.full(a)
    shape = a.shape[1:] if (batch and elem) else a.shape
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    expected = (fa * x).flatten(start_dim=1 if batch else 0).sum(dim=-1)
    assert_close(ops.flat_inner(a, x), expected)
    assert_close(ops.flat_inner(x, a), expected)


def test_flat_inner_float32_and_gradcheck(gen):
    a = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen, dtype=torch.float32)
    assert_close(ops.flat_inner(a, a), (ops.full(a) ** 2).sum())
    ca = [c.requires_grad_() for c in random_cores((2, 3), (1, 2, 1), gen=gen)]
    cb = [c.requires_grad_() for c in random_cores((2, 3), (1, 3, 1), gen=gen)]
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *cs: ops.flat_inner(tt.TensorTrain(list(cs[:2])), tt.TensorTrain(list(cs[2:]))), ca + cb
    )
    assert torch.autograd.gradcheck(lambda x, *cs: ops.flat_inner(tt.TensorTrain(list(cs)), x), [x, *ca])


def test_flat_inner_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(ShapeError, match=r"flat_inner: raw shapes differ: \(2, 3\) vs \(3, 2\)"):
        ops.flat_inner(a, random_tt((3, 2), (1, 2, 1), gen=gen))
    with pytest.raises(
        ShapeError,
        match=r"flat_inner: the dense tensor has shape \(3, 2\) but the TT object has shape \(2, 3\)",
    ):
        ops.flat_inner(a, torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(
        TypeError,
        match="flat_inner: expects TT objects or a TT object and a torch.Tensor, got TensorTrain and float",
    ):
        ops.flat_inner(a, 1.0)


def test_flat_inner_error_names_the_batch_of_one_as_given(gen):
    """A batch of one broadcasts only against B dense tensors of its element shape; a mismatch names the batch of
    one, not the batch of B it would have been expanded to."""
    a = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=1)
    with pytest.raises(
        ShapeError,
        match=r"dense tensor has shape \(5, 3, 2\) but the TT object has shape \(1, 2, 3\) .*batch of 1\)",
    ):
        ops.flat_inner(a, torch.ones(5, 3, 2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------- norms
@given(spec=any_specs, seed=seeds, batch=st.sampled_from([None, 3]), differentiable=st.booleans())
def test_norms(spec, seed, batch, differentiable):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed), batch_size=batch)
    fa = ops.full(a).flatten(start_dim=1 if batch else 0)
    assert_close(ops.frobenius_norm_squared(a, differentiable=differentiable), (fa**2).sum(-1))
    assert_close(ops.frobenius_norm(a, differentiable=differentiable), fa.norm(dim=-1))
    assert_close(ops.frobenius_norm(a, epsilon=1e-5), ((fa**2).sum(-1) + 1e-5).sqrt())


def test_norm_of_complex_and_float32(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    ac = ops.cast(a, torch.complex128) * (1 + 1j)
    for diff in (False, True):
        assert_close(ops.frobenius_norm(ac, differentiable=diff), ops.full(ac).abs().norm())
    a32 = ops.cast(a, torch.float32)
    assert_close(ops.frobenius_norm(a32), ops.full(a32).norm())


def test_norm_gradients(gen):
    cores = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)]
    for diff in (False, True):
        assert torch.autograd.gradcheck(
            lambda *cs, diff=diff: ops.frobenius_norm(tt.TensorTrain(list(cs)), differentiable=diff), cores
        )
    # At a zero tensor (rank-deficient cores, where QR's backward is NaN) the gradient is 0 on both paths.
    for diff in (False, True):
        zero = [
            torch.zeros(1, 2, 2, dtype=torch.float64, requires_grad=True),
            torch.zeros(2, 3, 1, dtype=torch.float64, requires_grad=True),
        ]
        ops.frobenius_norm(tt.TensorTrain(zero), differentiable=diff).backward()
        assert all(torch.equal(z.grad, torch.zeros_like(z)) for z in zero)
    assert torch.autograd.gradgradcheck(
        lambda *cs: ops.frobenius_norm_squared(tt.TensorTrain(list(cs))), cores
    )
    with pytest.raises(ValueError, match="frobenius_norm: epsilon must be a finite number >= 0, got -0.1"):
        ops.frobenius_norm(tt.TensorTrain(zero), epsilon=-0.1)


# ----------------------------------------------------------------------------------------- bilinear forms
def _as_vector(x, form: str):
    """The same vector as a TT-tensor, an N x 1 TT-matrix or a 1 x N TT-matrix."""
    if form == "tensor":
        return x
    cores = [c.unsqueeze(-2) if form == "col" else c.unsqueeze(-3) for c in x.tt_cores]
    return type(x)(cores)


@given(
    spec=matrix_specs(),
    seed=seeds,
    sizes=st.sampled_from([(None, None, None), (2, None, 2), (None, 1, 2), (2, 2, 2)]),
    forms=st.sampled_from([("tensor", "tensor"), ("col", "col"), ("row", "tensor")]),
)
def test_bilinear_and_quadratic_form(spec, seed, sizes, forms):
    (rows, cols), ranks = spec
    g = _gen(seed)
    a = random_tt((rows, cols), ranks, gen=g, batch_size=sizes[0])
    b = random_tt(rows, (1, *([2] * (len(rows) - 1)), 1), gen=g, batch_size=sizes[1])
    c = random_tt(cols, ranks, gen=g, batch_size=sizes[2])
    fa = ops.full(a)
    fb, fc = (
        ops.full(b).flatten(start_dim=1 if sizes[1] else 0),
        ops.full(c).flatten(start_dim=1 if sizes[2] else 0),
    )
    expected = torch.einsum("...i,...ij,...j->...", fb, fa, fc)
    res = ops.bilinear_form(a, _as_vector(b, forms[0]), _as_vector(c, forms[1]))
    assert_close(res, expected)
    assert_close(ops.quadratic_form(a, b, c), expected)


def test_quadratic_form_two_args_and_two_mat(gen):
    a = random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen)
    m = random_tt(((2, 3), (3, 2)), (1, 3, 1), gen=gen, batch_size=2)
    x = random_tt((2, 3), (1, 2, 1), gen=gen)
    y = random_tt((3, 2), (1, 2, 1), gen=gen, batch_size=2)
    fx, fa = ops.full(x).reshape(-1), ops.full(a)
    assert_close(ops.quadratic_form(a, x), fx @ fa @ fx)
    res = tt.bilinear_form_two_mat(x, a, m, y)
    expected = torch.einsum("i,ij,bjk,bk->b", fx, fa, ops.full(m), ops.full(y).reshape(2, -1))
    assert_close(res, expected)


def test_bilinear_form_gradcheck_and_float32(gen):
    ca = [c.requires_grad_() for c in random_cores(((2, 2), (3, 1)), (1, 2, 1), gen=gen)]
    b = random_tt((2, 2), (1, 2, 1), gen=gen)
    c = random_tt((3, 1), (1, 1, 1), gen=gen)
    assert torch.autograd.gradcheck(lambda *cs: ops.bilinear_form(tt.TensorTrain(list(cs)), b, c), ca)
    a32, b32, c32 = (ops.cast(x, torch.float32) for x in (tt.TensorTrain(ca).detach(), b, c))
    assert_close(
        ops.bilinear_form(a32, b32, c32),
        ops.full(b32).reshape(-1) @ ops.full(a32) @ ops.full(c32).reshape(-1),
    )


def test_bilinear_form_errors(gen):
    a = random_tt(((2, 3), (4, 1)), (1, 2, 1), gen=gen)
    b = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(
        ShapeError, match=r"bilinear_form: c must be a vector with modes \(4, 1\).*got raw shape \(2, 3\)"
    ):
        ops.bilinear_form(a, b, b)
    with pytest.raises(TypeError, match="bilinear_form: A must be a TT-matrix, got a TT-tensor"):
        ops.bilinear_form(b, b, b)
    c = random_tt((4, 1), (1, 1, 1), gen=gen, batch_size=3)
    with pytest.raises(ShapeError, match=r"bilinear_form: batch sizes \[2, 3\] do not broadcast"):
        ops.bilinear_form(a, random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2), c)
    with pytest.raises(
        ShapeError, match=r"bilinear_form_two_mat: A has column dims \(4, 1\) but B has row dims \(2, 3\)"
    ):
        tt.bilinear_form_two_mat(b, a, a, b)


def test_bilinear_forms_refuse_operands_of_different_dtypes(gen):
    """A float32 vector beside float64 matrices is named as a dtype mismatch of the form, not left to a bmm."""
    a = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen)
    b = random_tt((2, 3), (1, 2, 1), gen=gen)
    c = random_tt((4, 5), (1, 2, 1), gen=gen)
    b32 = ops.cast(b, torch.float32)
    with pytest.raises(ShapeError, match="bilinear_form: operands have different dtypes"):
        ops.bilinear_form(a, b32, c)
    with pytest.raises(ShapeError, match="quadratic_form: operands have different dtypes"):
        ops.quadratic_form(a, b32, c)
    with pytest.raises(ShapeError, match="bilinear_form_two_mat: operands have different dtypes"):
        tt.bilinear_form_two_mat(b32, a, random_tt(((4, 5), (2, 3)), (1, 2, 1), gen=gen), b)


def test_quadratic_form_errors_name_quadratic_form(gen):
    a = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen)
    b = random_tt((2, 3), (1, 2, 1), gen=gen)
    # b^T A b needs A's row and column modes equal: say so, naming quadratic_form and A.
    with pytest.raises(
        ShapeError,
        match=r"quadratic_form: A must have square modes \(row dims == column dims\) for b\^T A b, got "
        r"\(2, 3\) x \(4, 5\)",
    ):
        ops.quadratic_form(a, b)
    square = random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen)
    with pytest.raises(
        ShapeError, match=r"quadratic_form: b must be a vector with modes \(2, 3\).*got raw shape \(4, 5\)"
    ):
        ops.quadratic_form(square, random_tt((4, 5), (1, 2, 1), gen=gen))
    with pytest.raises(ShapeError, match=r"quadratic_form: c must be a vector with modes \(4, 5\)"):
        ops.quadratic_form(a, b, b)
    with pytest.raises(TypeError, match="quadratic_form: A must be a TT-matrix, got a TT-tensor"):
        ops.quadratic_form(b, b)


def test_no_full_in_products(gen, monkeypatch):
    """Products never materialize the TT: poison full() and run every path."""
    from tensortrain import forms, indexing, products

    a = random_tt(((2, 3), (4, 2)), (1, 2, 1), gen=gen)
    monkeypatch.setattr(ops, "full", lambda *_: pytest.fail("full() called"))
    assert not any(hasattr(mod, "full") for mod in (products, forms, indexing))
    x = torch.ones(8, 2, dtype=torch.float64)
    _ = a @ x, x.T @ ops.transpose(a), ops.flat_inner(a, torch.ones(6, 8, dtype=torch.float64))
    assert math.isfinite(float(ops.frobenius_norm(a)))


def test_matmul_empty_dense_operands(gen):
    w = random_tt(((2, 3), (4, 2)), (1, 2, 1), gen=gen)
    wb = random_tt(((2, 3), (4, 2)), (1, 2, 1), gen=gen, batch_size=3)
    z = torch.zeros
    f64 = torch.float64
    assert (z(0, 6, dtype=f64) @ w).shape == (0, 8)
    assert (w @ z(8, 0, dtype=f64)).shape == (6, 0)
    assert (w @ z(2, 0, 8, 3, dtype=f64)).shape == (2, 0, 6, 3)
    assert (z(0, 3, 5, 6, dtype=f64) @ wb).shape == (0, 3, 5, 8)


def test_forms_frobenius_norm_epsilon_gradient_matches_dense(gen):
    # (test_ops_products.py, beside test_norms) the default (QR) path: value AND gradient of sqrt(|x|^2 + eps)
    eps = 0.7
    for differentiable in (False, True):
        cores = [c.requires_grad_() for c in random_tt((3, 4, 2), (1, 2, 3, 1), gen=gen).tt_cores]
        got = tt.frobenius_norm(tt.TensorTrain(cores), epsilon=eps, differentiable=differentiable)
        grads = torch.autograd.grad(got, cores)
        dense_cores = [c.detach().clone().requires_grad_() for c in cores]
        full = tt.full(tt.TensorTrain(dense_cores))
        expected = torch.sqrt((full**2).sum() + eps)
        expected_grads = torch.autograd.grad(expected, dense_cores)
        assert_close(got, expected)
        for g, e in zip(grads, expected_grads, strict=True):
            assert_close(g, e)


@pytest.mark.parametrize("batch", [None, 2])
def test_forms_complex_bilinear_forms_do_not_conjugate(gen, batch):
    # (test_ops_products.py) b^T A c, as t3f and the docstring: no conjugate on b or c for complex TTs
    dt = torch.complex128
    a = random_tt(((2, 3), (3, 2)), (1, 2, 1), gen=gen, dtype=dt, batch_size=batch)
    b = random_tt((2, 3), (1, 2, 1), gen=gen, dtype=dt)
    c = random_tt((3, 2), (1, 3, 1), gen=gen, dtype=dt)
    fa = tt.full(a)
    fb, fc = tt.full(b).reshape(-1), tt.full(c).reshape(-1)
    assert_close(tt.bilinear_form(a, b, c), torch.einsum("i,...ij,j->...", fb, fa, fc))
    sq = random_tt(((2, 3), (2, 3)), (1, 2, 1), gen=gen, dtype=dt)
    assert_close(tt.quadratic_form(sq, b), fb @ tt.full(sq) @ fb)
    m = random_tt(((3, 2), (2, 2)), (1, 2, 1), gen=gen, dtype=dt)
    y = random_tt((2, 2), (1, 2, 1), gen=gen, dtype=dt)
    fy = tt.full(y).reshape(-1)
    assert_close(
        tt.bilinear_form_two_mat(b, a, m, y), torch.einsum("i,...ij,jk,k->...", fb, fa, tt.full(m), fy)
    )


# a TT-matrix vector must have all-1 modes on its other side: (2, 3) x (2, 1) is not a vector
def test_bilinear_form_refuses_a_matrix_that_is_not_a_vector(gen):
    A = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    b = random_tt(((2, 3), (2, 1)), (1, 2, 1), gen=gen)
    c = random_tt((2, 2), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="b must be a vector with modes"):
        tt.bilinear_form(A, b, c)
    # the row-vector form too: (2, 1) x (2, 3) has its modes as columns but two rows, not one
    with pytest.raises(tt.ShapeError, match="b must be a vector with modes"):
        tt.bilinear_form(A, random_tt(((2, 1), (2, 3)), (1, 2, 1), gen=gen), c)


def test_sparse_dense_operands_are_named(gen):
    """A sparse operand failed inside expand or reshape on the batch paths, and the single-TT message named an
    internal function ("tt_dense_matmul: b is ...")."""
    w = random_tt(((2, 3), (3, 2)), (1, 2, 1), gen=gen)
    b = tt.concat_along_batch_dim([w, w])
    s = torch.randn(6, 4, dtype=torch.float64).to_sparse()
    for call in (
        lambda: w @ s,
        lambda: b @ s,
        lambda: s.T @ b,
        lambda: tt.flat_inner(w, tt.full(w).to_sparse()),
    ):
        with pytest.raises(TypeError, match="(matmul|flat_inner): x is a sparse_coo tensor"):
            call()


def test_gather_nd_on_a_batch_with_no_index_columns(gen):
    b = tt.concat_along_batch_dim([random_tt((2, 3), (1, 2, 1), gen=gen)] * 3)
    for idx in ([], torch.zeros(4, 0, dtype=torch.long)):
        with pytest.raises(tt.ShapeError, match="need a batch column and one per mode, got 0 columns"):
            tt.gather_nd(b, idx)


def test_bilinear_form_two_mat_broadcasts_a_batch_of_b_alone(gen):
    a = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    b = random_tt(((2, 2), (3, 2)), (1, 2, 1), gen=gen, batch_size=3)
    x, y = random_tt((2, 3), (1, 2, 1), gen=gen), random_tt((3, 2), (1, 2, 1), gen=gen)
    want = torch.stack(
        [tt.full(x).reshape(-1) @ tt.full(a) @ tt.full(b[i]) @ tt.full(y).reshape(-1) for i in range(3)]
    )
    assert_close(tt.bilinear_form_two_mat(x, a, b, y), want)
