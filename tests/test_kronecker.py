"""Kronecker-product TT-matrices against torch.linalg on the full matrices (batches included)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt, seeds
from test_riemannian import dense


def kron_tt(modes, gen, batch_size=None, spd=False, dtype=torch.float64):
    """A random TT-rank-1 TT-matrix with square factors (SPD factors when asked)."""
    cores = []
    for n in modes:
        shape = (n, n) if batch_size is None else (batch_size, n, n)
        f = torch.randn(shape, generator=gen, dtype=dtype)
        if spd:
            f = f @ f.transpose(-1, -2) + n * torch.eye(n, dtype=dtype)
        cores.append(f[..., None, :, :, None])
    return tt.TensorTrain(cores) if batch_size is None else tt.TensorTrainBatch(cores)


modes_st = st.lists(st.integers(1, 3), min_size=1, max_size=3)
batch_st = st.one_of(st.none(), st.integers(1, 3))


@given(modes=modes_st, seed=seeds, batch=batch_st)
def test_determinants_match_torch(modes, seed, batch):
    a = kron_tt(modes, torch.Generator().manual_seed(seed), batch)
    full = dense(a)
    assert_close(tt.kronecker.determinant(a), torch.linalg.det(full), rtol=1e-9, atol=1e-9)
    sign, logdet = tt.kronecker.slog_determinant(a)
    ref_sign, ref_logdet = torch.linalg.slogdet(full)
    assert_close(sign, ref_sign)
    assert_close(logdet, ref_logdet)


@given(modes=modes_st, seed=seeds, batch=batch_st)
def test_inv_and_cholesky_match_torch(modes, seed, batch):
    g = torch.Generator().manual_seed(seed)
    a = kron_tt(modes, g, batch)
    inv = tt.kronecker.inv(a)
    assert type(inv) is type(a) and inv.tt_ranks == a.tt_ranks
    assert_close(dense(inv), torch.linalg.inv(dense(a)), rtol=1e-8, atol=1e-8)
    s = kron_tt(modes, g, batch, spd=True)
    chol = tt.kronecker.cholesky(s)
    assert_close(dense(chol), torch.linalg.cholesky(dense(s)))


def test_float32_and_gradcheck(gen):
    a = kron_tt((2, 3), gen, spd=True, dtype=torch.float32)
    assert_close(tt.kronecker.determinant(a), torch.linalg.det(dense(a)), rtol=1e-4, atol=1e-4)
    cores = [c.clone().requires_grad_() for c in kron_tt((2, 2), gen, spd=True).tt_cores]
    assert torch.autograd.gradcheck(lambda *c: tt.kronecker.slog_determinant(tt.TensorTrain(c))[1], cores)
    assert torch.autograd.gradcheck(lambda *c: dense(tt.kronecker.inv(tt.TensorTrain(c))), cores)


def test_non_kronecker_input_is_refused(gen):
    with pytest.raises(tt.ShapeError, match="TT-rank 1"):
        tt.kronecker.determinant(random_tt(((2, 2), (2, 2)), (1, 2, 1), gen=gen))
    with pytest.raises(tt.ShapeError, match="must be square"):
        tt.kronecker.inv(random_tt(((2, 3), (3, 2)), (1, 1, 1), gen=gen))
    with pytest.raises(tt.ShapeError, match="got a TT-tensor"):
        tt.kronecker.cholesky(random_tt((2, 3), (1, 1, 1), gen=gen))
    with pytest.raises(ValueError, match="TT-rank 1"):  # a ShapeError is a ValueError, as in t3f
        tt.kronecker.slog_determinant(random_tt(((2, 2), (2, 2)), (1, 3, 1), gen=gen, batch_size=2))
    with pytest.raises(TypeError, match="expected a TT-matrix"):
        tt.kronecker.inv(torch.eye(4))


def test_determinant_where_factor_powers_overflow_and_underflow():
    """(10 I_8) (x) (0.1 I_8) is the identity, but 10^64 overflows float32 and 0.1^64 underflows: inf * 0."""
    for dtype in (torch.float32, torch.float64):
        n = 8 if dtype == torch.float32 else 20
        eye = torch.eye(n, dtype=dtype)
        a = tt.TensorTrain([10 * eye[None, :, :, None], 0.1 * eye[None, :, :, None]])
        assert abs(float(tt.kronecker.determinant(a)) - 1.0) < 1e-4
    exact = tt.TensorTrain([2 * torch.eye(2)[None, :, :, None], 3 * torch.eye(3)[None, :, :, None]])
    assert float(tt.kronecker.determinant(exact)) == 46656.0  # no digits lost to exp(log) in float32


def test_determinant_at_a_singular_factor_under_torch_func():
    """Under torch.func (and forward AD) every call took the slogdet path, whose backward solves with the
    singular factor: grad raised LinAlgError and jacfwd gave NaN; the dense det(kron) gives zeros."""
    s = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    f2 = 2 * torch.eye(3, dtype=torch.float64)

    def kron_det(a: torch.Tensor) -> torch.Tensor:
        return tt.kronecker.determinant(tt.TensorTrain([a[None, :, :, None], f2[None, :, :, None]]))

    want = torch.func.grad(lambda a: torch.linalg.det(torch.kron(a, f2)))(s)
    assert_close(torch.func.grad(kron_det)(s), want)
    with warnings.catch_warnings():  # (torch's forward AD of a linalg op scripts a decomposition: deprecated,
        # a DeprecationWarning in torch 2.13, a FutureWarning in 2.14)
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", Warning)
        assert_close(torch.func.jacfwd(kron_det)(s), want)
    assert_close(torch.func.vmap(torch.func.grad(kron_det))(torch.stack([s, s + torch.eye(2)]))[0], want)


def test_cholesky_takes_scalars_spread_over_the_factors_and_refuses_non_hermitian_ones():
    """(e^{it} H1) (x) (e^{-it} H2) is Hermitian positive definite but no factor is Hermitian: torch's cholesky
    read each factor's lower triangle and returned L with L L^H != A (17% off); a non-symmetric real factor
    was accepted the same way."""
    gen = torch.Generator().manual_seed(0)

    def hpd(n):
        m = torch.randn(n, n, dtype=torch.complex128, generator=gen)
        return m @ m.mH + n * torch.eye(n, dtype=torch.complex128)

    phase = torch.exp(torch.tensor(0.3j, dtype=torch.complex128))
    for first, second in ((phase * hpd(2), hpd(3) / phase), (-hpd(2).real, -hpd(3).real)):
        a = tt.TensorTrain([first[None, :, :, None], second[None, :, :, None]])
        low = dense(tt.kronecker.cholesky(a))
        assert torch.allclose(low, torch.tril(low))
        assert_close(low @ low.mH, dense(a))
    upper = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError, match="not Hermitian"):
        tt.kronecker.cholesky(
            tt.TensorTrain([upper[None, :, :, None], torch.eye(2, dtype=torch.float64)[None, :, :, None]])
        )
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        neg = -torch.eye(2, dtype=torch.float64)[None, :, :, None]
        tt.kronecker.cholesky(tt.TensorTrain([neg, 3 * torch.eye(2, dtype=torch.float64)[None, :, :, None]]))


def test_cholesky_of_factors_whose_trace_overflows_the_dtype():
    a = tt.TensorTrain(
        [(torch.eye(4) * 30000).half()[None, :, :, None], torch.eye(3).half()[None, :, :, None]]
    )
    low = tt.full(tt.kronecker.cholesky(a)).float()
    assert torch.allclose(low, torch.eye(12) * 30000**0.5, rtol=1e-3)


def test_kronecker_singular_factor_beside_a_huge_one_has_determinant_zero(gen):
    # (test_kronecker.py) det(A (x) B) = det(A)^2 det(B)^8 for A 8x8 singular and B = 1e20 I_2: exactly 0, and
    # its gradient too, although det(B)^8 = 1e320 overflows float64 (0 * inf must not turn into NaN)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    a[-1] = 0.0  # exactly singular
    b = 1e20 * torch.eye(2, dtype=torch.float64)
    cores = [a.reshape(1, 8, 8, 1).requires_grad_(), b.reshape(1, 2, 2, 1).requires_grad_()]
    det = tt.kronecker.determinant(tt.TensorTrain(cores))
    assert det.item() == 0.0
    for g in torch.autograd.grad(det, cores):
        assert torch.isfinite(g).all()


def test_determinant_gradient_at_a_singular_scalar_factor():
    a = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    f = torch.diag(torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)).requires_grad_()
    det = tt.kronecker.determinant(tt.TensorTrain([a[None, :, :, None], f[None, :, :, None]]))
    got = torch.autograd.grad(det, [a, f])
    want = torch.autograd.grad(torch.linalg.det(torch.kron(a, f)), [a, f])
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)


def test_slog_determinant_of_complex_factors_keeps_the_phase():
    f = torch.diag(torch.tensor([1j, 1.0], dtype=torch.complex128))  # det i, to the power 3: -i
    g = torch.eye(3, dtype=torch.complex128)
    sign, logdet = tt.kronecker.slog_determinant(tt.TensorTrain([f[None, :, :, None], g[None, :, :, None]]))
    want = torch.linalg.slogdet(torch.kron(f, g))
    assert sign.dtype == torch.complex128 and complex(sign) == pytest.approx(complex(want[0]))
    assert float(logdet) == pytest.approx(float(want[1]), abs=1e-12)
    eye, singular = torch.eye(2, dtype=torch.complex128), torch.ones(2, 2, dtype=torch.complex128)
    many = tt.TensorTrain([singular[None, :, :, None]] + [eye[None, :, :, None]] * 63)  # a power past 2^62
    sign, logdet = tt.kronecker.slog_determinant(many)
    assert complex(sign) == 0 and float(logdet) == -math.inf


def test_cholesky_symmetry_check_is_relative_and_sees_phases():
    eye = torch.eye(2, dtype=torch.float64)[None, :, :, None]
    large = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64) * 1e9
    large[0, 1] += 1e-3  # relative asymmetry 1e-12: round-off
    tt.kronecker.cholesky(tt.TensorTrain([large[None, :, :, None], eye]))
    tiny = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64) * 1e-12  # not symmetric, however small
    with pytest.raises(torch.linalg.LinAlgError):
        tt.kronecker.cholesky(tt.TensorTrain([tiny[None, :, :, None], eye]))
    turned = torch.eye(2, dtype=torch.complex128) * torch.exp(torch.tensor(0.01j, dtype=torch.complex128))
    with pytest.raises(torch.linalg.LinAlgError):  # e^{0.01i} I is not Hermitian
        tt.kronecker.cholesky(tt.TensorTrain([turned[None, :, :, None], eye.to(torch.complex128)]))
