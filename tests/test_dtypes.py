"""Half precision and complex TTs where magnitudes or conventions matter: norms and their gradients at the edges of
a dtype's range, float16 results that cannot be represented, constants of complex TTs, refused bool scales."""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt


@pytest.mark.parametrize(
    ("scale", "dtype"), [(1e20, torch.float32), (1e-25, torch.float32), (100.0, torch.float16)]
)
def test_norm_gradient_where_the_square_leaves_the_dtype_range(scale, dtype):
    """The Gram sweep behind the gradient overflowed (inf - inf = NaN value, zero gradient) or underflowed
    (zero gradient); it now runs on scaled cores."""
    torch.manual_seed(0)
    a = tt.cast(tt.random_tensor((4, 4, 4), tt_rank=2, dtype=torch.float64) * scale, dtype)
    cores = [c.clone().requires_grad_() for c in a.tt_cores]
    norm = tt.frobenius_norm(tt.TensorTrain(cores))
    norm.backward()
    ref = [c.detach().double().requires_grad_() for c in a.tt_cores]
    want = tt.full(tt.TensorTrain(ref)).norm()
    want.backward()
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    assert abs(float(norm.detach()) / float(want.detach()) - 1) < tol
    for c, r in zip(cores, ref, strict=True):
        assert ((c.grad.double() - r.grad).norm() / r.grad.norm()).item() < tol


def test_squared_norm_that_overflows_is_inf_not_nan():
    a = (tt.random_tensor((4, 4, 4), tt_rank=2) * 1e20).requires_grad_()
    assert torch.isinf(tt.frobenius_norm_squared(a))


def test_float16_results_that_do_not_fit_raise():
    """An orthogonal form keeps the whole norm in one core: entries of 100 over 16^6 positions fit float16, a core
    holding the norm (4e5) does not. That was silently inf (NaN in project)."""
    x = tt.tensor_ones((16,) * 6, dtype=torch.float16) * 100.0
    for fn in (tt.round, tt.orthogonalize, lambda y: tt.to_tt_tensor(tt.full(y), max_tt_rank=1),
               lambda y: tt.project(y, y)):  # fmt: skip
        with pytest.raises(ValueError, match="does not fit float16"):
            fn(x)
    small = tt.tensor_ones((4,) * 3, dtype=torch.float16)
    assert torch.equal(tt.full(tt.round(small)), tt.full(small))


def test_renormalize_float16_multiplies_in_the_wide_dtype():
    c = [k.double() for k in tt.random_tensor((4, 4, 4), tt_rank=2, dtype=torch.float64).tt_cores]
    y = tt.cast(tt.TensorTrain([c[0] * 1e-5, c[1] * 1e3, c[2] * 1e2]), torch.float16)
    out = tt.renormalize_tt_cores(y)
    assert all(bool(k.isfinite().all()) for k in out.tt_cores)  # the factor 2e5 overflowed float16 alone
    norms = [float(k.float().norm()) for k in out.tt_cores]
    assert max(norms) / min(norms) < 1.01


def test_ones_and_zeros_like_of_complex_tts():
    z = tt.cast(tt.random_tensor((2, 3)), torch.complex64)
    assert tt.ones_like(z).dtype == tt.zeros_like(z).dtype == torch.complex64
    assert torch.allclose(tt.full(z + 2.0 * tt.ones_like(z)), tt.full(z) + 2.0)


def test_subtract_errors_name_subtract_and_bool_scales_are_refused():
    with pytest.raises(tt.ShapeError, match="subtract: operands have different dtypes"):
        tt.random_tensor((2, 3)) - tt.random_tensor((2, 3), dtype=torch.float64)
    with pytest.raises(TypeError, match="got a bool tensor"):
        tt.random_tensor((2, 3)) * torch.tensor(True)
    with pytest.raises(TypeError, match="got a bool tensor"):
        tt.multiply_along_batch_dim(tt.random_tensor_batch((2, 3), batch_size=2), torch.tensor([True, False]))


def test_kronecker_in_half_precision():
    k = tt.TensorTrain([torch.eye(2, dtype=torch.float16)[None, :, :, None] * 2] * 2)
    sign, logdet = tt.kronecker.slog_determinant(k)
    assert float(sign) == 1.0 and abs(float(logdet) - 4 * 1.3863) < 1e-2
    assert tt.kronecker.inv(k).dtype == tt.kronecker.cholesky(k).dtype == torch.float16
    assert torch.allclose(tt.full(tt.kronecker.inv(k)).float(), 0.25 * torch.eye(4))
