"""Complex TTs where real factors or weights meet them, TT @ dense layout, and batch-of-one broadcasting against
dense tensors: each a case that once gave a silently wrong or unusable answer."""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt
from conftest import assert_close

C = torch.complex128


def _complex_tt(*shapes) -> tt.TensorTrain:
    return tt.TensorTrain([torch.randn(*s, dtype=C) for s in shapes])


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_renormalize_keeps_a_complex_tensor(dtype):
    torch.manual_seed(0)
    a = tt.cast(_complex_tt((1, 2, 3), (3, 4, 2), (2, 3, 1)), dtype)
    b = tt.renormalize_tt_cores(a)
    assert b.dtype == dtype and all(c.imag.abs().max() > 0 for c in b.tt_cores)
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    assert_close(tt.full(b), tt.full(a), rtol=tol, atol=tol)
    batch = tt.TensorTrainBatch([torch.stack([c, 2 * c]) for c in a.tt_cores])
    assert_close(tt.full(tt.renormalize_tt_cores(batch)), tt.full(batch), rtol=tol, atol=tol)


def test_riemannian_gradients_of_complex_cores_are_refused():
    x = _complex_tt((1, 3, 2), (2, 4, 1))
    with pytest.raises(
        TypeError, match="riemannian_gradient_from_cores: complex TT objects are not supported"
    ):
        tt.optim.riemannian_gradient_from_cores(x, [torch.ones_like(c) for c in x.tt_cores])
    cores = [torch.nn.Parameter(c) for c in x.tt_cores]
    with pytest.raises(TypeError, match="RiemannianSGD: complex TT objects are not supported"):
        tt.optim.RiemannianSGD([cores], lr=0.1)


def test_complex_weights_of_real_tangent_vectors_are_refused():
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=2, dtype=torch.float64)
    x = tt.random_tensor((2, 3), tt_rank=2, dtype=torch.float64)
    with pytest.raises(TypeError, match="project_sum: complex weights cannot scale torch.float64"):
        tt.project_sum(b, x, torch.tensor([1j, 1.0]))
    with pytest.raises(TypeError, match="add_n_projected: complex coef cannot scale torch.float64"):
        tt.add_n_projected([tt.project(b[0], x)], torch.tensor([2j]))
    with pytest.raises(TypeError, match="complex coef"):
        tt.add_n_projected([tt.project(b[0], x)], [2j])
    real = tt.project_sum(b, x, torch.tensor([2.0, 1.0]))  # real weights as before
    assert_close(tt.full(real), tt.full(tt.project(2 * b[0], x)) + tt.full(tt.project(b[1], x)))


def test_tt_matrix_times_dense_is_row_major(gen):
    w = tt.random_matrix([[4, 4], [4, 8]], tt_rank=2, dtype=torch.float64)
    x = torch.randn(32, 64, dtype=torch.float64, generator=gen, requires_grad=True)
    y = w @ x
    assert y.is_contiguous() and y.view(-1).shape == (16 * 64,)
    assert_close(y, tt.full(w) @ x)
    y.sum().backward()
    assert x.grad is not None and x.grad.is_contiguous()
    assert tt.matmul(w, x.detach()[None].expand(3, 32, 64)).is_contiguous()


def test_decomposing_a_tt_names_the_mistake():
    a = tt.random_tensor((2, 3))
    with pytest.raises(
        TypeError, match="to_tt_tensor expects a dense tensor, got a TensorTrain: .* tt.round"
    ):
        tt.to_tt_tensor(a)
    with pytest.raises(TypeError, match="to_tt_matrix expects a dense tensor, got a TensorTrain"):
        tt.to_tt_matrix(tt.random_matrix([[2, 2], [2, 2]]), [[2, 2], [2, 2]])


@pytest.mark.parametrize("matrix", [False, True])
def test_flat_inner_broadcasts_a_batch_of_one_against_dense_tensors(matrix, gen):
    if matrix:
        a1 = tt.random_matrix_batch([[2, 3], [2, 2]], tt_rank=2, batch_size=1, dtype=torch.float64)
    else:
        a1 = tt.random_tensor_batch((2, 3, 2), tt_rank=2, batch_size=1, dtype=torch.float64)
    x = torch.randn(5, *a1.shape[1:], dtype=torch.float64, generator=gen)
    expected = (tt.full(a1) * x).flatten(1).sum(1)
    assert_close(tt.flat_inner(a1, x), expected)
    assert_close(tt.flat_inner(x, a1), expected)
    assert tt.flat_inner(a1, x[:0]).shape == (0,)
    assert tt.flat_inner(a1, x[0]).shape == (1,)
    with pytest.raises(tt.ShapeError):
        tt.flat_inner(tt.random_tensor_batch((2, 3, 2), tt_rank=2, batch_size=2, dtype=torch.float64), x)


def test_an_empty_batch_index_says_it_selects_nothing():
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=3)
    for empty in ([], torch.tensor([], dtype=torch.long)):
        with pytest.raises(IndexError, match=r"batch index \[\] selects no elements of a 3 element batch"):
            b[empty]


def test_tensor_methods_on_a_layer_weight_explain_what_it_is():
    """nn.init.xavier_uniform_(layer.weight) and the like call Tensor methods, which never reach
    __torch_function__: they failed with a bare AttributeError."""
    layer = tt.nn.TTLinear(64, 48, tt_rank=4)
    for init in (torch.nn.init.xavier_uniform_, torch.nn.init.zeros_, torch.nn.init.trunc_normal_):
        with pytest.raises(AttributeError, match=r"not a torch.Tensor; initialize a TT layer with its init="):
            init(layer.weight)
    assert not hasattr(layer.weight, "no_such_attribute")


def test_kronecker_determinant_gradient_at_a_singular_factor():
    """sign * exp(log|det|) had a NaN gradient there; dense det's is finite (0 for a squared determinant)."""
    a = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    for other in (torch.eye(2, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)):
        c0 = a[None, :, :, None].clone().requires_grad_()
        c1 = other[None, :, :, None].clone().requires_grad_()
        got = torch.autograd.grad(tt.kronecker.determinant(tt.TensorTrain([c0, c1])), [c0, c1])
        d0 = a[None, :, :, None].clone().requires_grad_()
        d1 = other[None, :, :, None].clone().requires_grad_()
        want = torch.autograd.grad(torch.linalg.det(tt.full(tt.TensorTrain([d0, d1]))), [d0, d1])
        for g, w in zip(got, want, strict=True):
            assert torch.isfinite(g).all()
            assert_close(g, w)
    batch = tt.TensorTrainBatch(
        [torch.stack([a, torch.eye(2, dtype=torch.float64) * 3])[:, None, :, :, None]]
    )
    assert_close(tt.kronecker.determinant(batch), torch.tensor([0.0, 9.0], dtype=torch.float64))


def test_kronecker_determinant_of_a_singular_matrix_whose_other_factor_powers_overflow():
    """The singular branch multiplied powered factor determinants: (3^32)^64 overflowed, and 0 * inf gave NaN
    (value and gradients) where det(A) = 0 and its gradient is 0 (every factor appears more than once)."""
    for dtype, factors in (
        (torch.float32, (torch.ones(2, 2), 3 * torch.eye(32), torch.eye(32))),
        (torch.float64, (torch.zeros(2, 2), 100 * torch.eye(10), torch.eye(10))),
    ):
        cores = [f.to(dtype)[None, :, :, None].clone().requires_grad_() for f in factors]
        det = tt.kronecker.determinant(tt.TensorTrain(cores))
        assert det.item() == 0.0 and det.dtype == dtype
        for g in torch.autograd.grad(det, cores):
            assert torch.equal(g, torch.zeros_like(g))
    batch = tt.TensorTrainBatch(
        [
            torch.stack([torch.ones(2, 2), torch.eye(2)])[:, None, :, :, None],
            torch.stack([3 * torch.eye(32), 2 * torch.eye(32)])[:, None, :, :, None],
        ]
    )
    assert_close(tt.kronecker.determinant(batch), torch.tensor([0.0, 2.0**64]))


def test_random_tensors_with_tiny_and_huge_stddev():
    for std in (1e-170, 1e200):
        x = tt.random_tensor((3, 4), tt_rank=2, stddev=std, dtype=torch.float64)
        assert torch.isfinite(tt.full(x)).all() and tt.full(x).abs().max() > 0


def test_add_n_of_one_object_honours_the_cap():
    x = tt.random_tensor((3, 4, 5), tt_rank=3)
    assert tt.approximate.add_n([x], max_tt_rank=1).tt_ranks == (1, 1, 1, 1)


def test_division_by_scalars_keeps_the_cores_precision_and_the_rules_of_multiply():
    """1 / s was taken in the scalar's dtype: a float32 0-dim tensor divided float64 cores with 1e-8 relative
    error, np.float16 with 2e-4; bools were accepted as divisors where multiply refuses them."""
    import numpy as np

    a = tt.TensorTrain([torch.ones(1, 2, 1, dtype=torch.float64)])
    for s in (torch.tensor(3.0), torch.tensor(3), np.float16(3), np.float32(3), 3):
        assert tt.full(a / s)[0].item() == 1 / 3
    for bad in (True, torch.tensor(True), "a"):
        with pytest.raises(TypeError):
            a / bad
    with pytest.raises(TypeError, match="cannot multiply a TT object"):
        a / torch.ones(2)
    assert torch.isinf(tt.full(a / torch.tensor(0.0))).all()


def test_a_set_of_cores_is_refused():
    cores = [torch.randn(1, 2, 2), torch.randn(2, 3, 1)]
    with pytest.raises(TypeError, match="expects a sequence of core tensors, got set"):
        tt.TensorTrain(set(cores))


def test_a_tt_matrix_batch_takes_batch_indices_in_tuple_form():
    mb = tt.random_matrix_batch([[2, 3], [4, 5]], tt_rank=2, batch_size=3, dtype=torch.float64)
    for index in ((0,), (0, ...), (1,)):
        assert_close(tt.full(mb[index]), tt.full(mb)[index[0]])
    assert mb[...] is mb and mb[()] is mb and mb[(...,)] is mb
    assert mb[1:, ...].batch_size == 2
    with pytest.raises(TypeError, match="indexing a TT-matrix"):
        mb[..., 0]
    with pytest.raises(TypeError, match="indexing a TT-matrix"):
        mb[0, 1]


def test_a_tt_matrix_batch_refuses_two_ellipses():
    """mb[..., ...] returned the whole batch; numpy, torch and TT-tensor batches refuse a second ellipsis."""
    mb = tt.random_matrix_batch([[2, 3], [2, 2]], batch_size=3)
    for index in ((..., ...), (0, ..., ...)):
        with pytest.raises(IndexError, match="single ellipsis"):
            mb[index]


def test_cast_refuses_complex_to_real_and_one_byte_dtypes():
    """cast(complex TT, float64) dropped the cores' imaginary parts, whose product is not the tensor's real
    part; float8 was refused with "cast it first" from inside the constructor."""
    gen = torch.Generator().manual_seed(0)
    a = _complex_tt((1, 2, 3), (3, 4, 2), (2, 3, 1))
    dense = tt.full(a)
    naive = tt.full(tt.TensorTrain([c.real for c in a.tt_cores]))
    assert not torch.allclose(naive, dense.real)  # why it is refused
    for real in (torch.float64, torch.float32):
        with pytest.raises(TypeError, match=r"cannot cast a complex TT \(torch.complex128\) to the real"):
            tt.cast(a, real)
    assert_close(tt.full(tt.cast(a, torch.complex64)), dense.to(torch.complex64), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match=r"cast: TT cores are 16 bits or more .*float8_e4m3fn"):
        tt.cast(tt.random_tensor((2, 3), generator=gen), torch.float8_e4m3fn)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_every_constant_takes_a_complex_dtype(dtype):
    """ones and zeros took a complex dtype, eye refused it (no complex identity for quadratic_form)."""
    assert_close(tt.full(tt.eye((2, 3), dtype=dtype)), torch.eye(6, dtype=dtype))
    assert_close(tt.full(tt.tensor_ones((2, 3), dtype=dtype)), torch.ones(2, 3, dtype=dtype))
    assert_close(tt.full(tt.matrix_zeros([[2], [3]], dtype=dtype)), torch.zeros(2, 3, dtype=dtype))
    with pytest.raises(
        TypeError, match="dtype must be a floating point or complex torch.dtype, got torch.int64"
    ):
        tt.eye((2, 3), dtype=torch.int64)


def test_gather_nd_of_an_empty_list_is_a_shape_error():
    """An empty list read as float32 indices, and the error blamed their dtype."""
    with pytest.raises(tt.ShapeError, match="indices"):
        tt.gather_nd(tt.random_matrix([[2, 3], [2, 2]]), [])


def test_to_takes_what_cast_takes():
    """a.to(torch.float64) of a complex TT dropped the cores' imaginary parts (not the tensor's real part; only
    torch's warning said anything), and float8/int dtypes failed with the constructor's "cast it first"."""
    a = _complex_tt((1, 2, 2), (2, 3, 1))
    for call in (
        lambda: a.to(torch.float64),
        lambda: a.to("cpu", torch.float32),
        lambda: a.to(dtype=torch.float32),
        lambda: a.to(tt.random_tensor((2, 3))),
        lambda: tt.TensorTrainBatch([c[None] for c in a.tt_cores]).to(torch.float64),
    ):
        with pytest.raises(TypeError, match=r"\.to: cannot cast a complex TT"):
            call()
    real = tt.random_tensor((2, 3), dtype=torch.float64)
    with pytest.raises(TypeError, match=r"TensorTrain.to: TT cores are 16 bits or more"):
        real.to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"TensorTrain.to: dtype must be a floating point or complex"):
        real.to(torch.int32)
    assert_close(tt.full(a.to(torch.complex64)), tt.full(a).to(torch.complex64), rtol=1e-5, atol=1e-5)
    assert a.double().dtype == torch.complex128 and a.float().dtype == torch.complex64
    assert real.float().dtype == torch.float32 and real.half().dtype == torch.float16
    # (as torch.Tensor's; bfloat16() was missing beside half())
    assert real.bfloat16().dtype == torch.bfloat16
    assert all(
        torch.equal(c, r.bfloat16()) for c, r in zip(real.bfloat16().tt_cores, real.tt_cores, strict=True)
    )
    with pytest.raises(TypeError, match=r"\.to: cannot cast a complex TT"):
        a.bfloat16()
    assert real.to(a).dtype == torch.complex128 and real.double().to("cpu").dtype == torch.float64


def test_a_tt_is_not_a_sequence_for_torch_either():
    """torch.as_tensor(x) and len(x) said "object of type 'TensorTrain' has no len()"."""
    a = tt.random_tensor((2, 3, 4), tt_rank=2)
    for call in (lambda: len(a), lambda: torch.as_tensor(a), lambda: torch.tensor(a)):
        with pytest.raises(TypeError, match="has no length: it is not a sequence; tt.full"):
            call()
    assert bool(a) and (+a) is a


def test_to_keeps_torchs_other_arguments():
    """.to(copy=True) (and a dtype with copy=True) raised once .to parsed its dtype with torch's parser."""
    x = tt.random_matrix([[2, 3], [3, 2]], tt_rank=2)
    for y in (x.to(copy=True), x.to(torch.float32, copy=True), x.to("cpu", torch.float64, non_blocking=True)):
        assert y.tt_cores[0].data_ptr() != x.tt_cores[0].data_ptr()
        assert_close(tt.full(y).to(x.dtype), tt.full(x))


def test_differentiable_norm_and_l2_regularizer_of_a_complex_tt_sum_absolute_squares():
    """Sum |x|^2, not Re(sum x^2): (i, 1) x (1, 1) has sum x^2 = 0 and sum |x|^2 = 4."""
    x = tt.TensorTrain([torch.tensor([[[1j], [1.0]]], dtype=C), torch.ones(1, 2, 1, dtype=C)])
    for value in (tt.frobenius_norm_squared(x, differentiable=True), tt.l2_regularizer(1.0)(x)):
        assert float(value) == pytest.approx(4.0, rel=1e-12)
