"""Half precision and complex TTs where magnitudes or conventions matter: norms and their gradients at the edges of
a dtype's range, float16 results that cannot be represented, constants of complex TTs, refused bool scales."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

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


def test_an_orthogonal_form_that_overflows_says_so():
    """The message read 'a core entry of 1.8e+308 exceeds 1.8e+308': the overflowed (inf) core was clamped to
    the dtype's largest value before it was reported."""
    x = tt.TensorTrain([torch.full((1, 2, 1), 1e200, dtype=torch.float64)] * 2)
    with pytest.raises(ValueError, match=r"does not fit float64 \(the norm overflowed"):
        tt.orthogonalize(x)


def test_results_whose_norm_overflows_float32_are_computed_wide_or_refused():
    """Finite entries, norm above the dtype's range: TT-SVD and round returned inf cores silently, failed inside
    the SVD (an opaque LinAlgError), or called a result that fits float32 too large. They run in float64 then
    and cast back: a ValueError only where the result itself does not fit."""
    b = (torch.rand(5, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3e38
    for eps in (None, 0.01):
        for method in ("exact", "randomized", "auto"):
            with pytest.raises(ValueError, match=r"TT-SVD: the result does not fit float32 .* use float64"):
                tt.to_tt_tensor(b, max_tt_rank=100, epsilon=eps, method=method)
    assert torch.isfinite(tt.full(tt.to_tt_tensor(b.double(), max_tt_rank=100, epsilon=0.01))).all()
    # a low-rank tensor of norm ~1e39 whose TT-SVD (largest core entry ~1e38) fits float32
    gen = torch.Generator().manual_seed(0)
    x64 = tt.random_tensor((2, 2, 2, 1024), tt_rank=2, dtype=torch.float64, generator=gen) * 1e37
    assert float(tt.frobenius_norm(x64)) > 3.5e38
    a32 = tt.full(x64).float()
    for budget in (
        {"epsilon": 1e-3},
        {"max_tt_rank": 4},
        {"max_tt_rank": 2},
        {"max_tt_rank": 2, "method": "randomized"},
    ):
        got = tt.to_tt_tensor(a32, **budget)
        assert got.dtype == torch.float32
        assert float((tt.full(got).double() - tt.full(x64)).norm() / tt.full(x64).norm()) < 1e-6
    # round leaves the norm in the first core (t3f's order): with 1024 modes there, its entries fit float32
    r64 = tt.random_tensor((1024, 2, 2, 2), tt_rank=2, dtype=torch.float64, generator=gen) * 1e37
    r32 = tt.cast(r64, torch.float32)
    for budget in ({"max_tt_rank": 2}, {"epsilon": 1e-3}):
        got = tt.round(r32 + 0.01 * r32, **budget)
        assert got.tt_ranks == (1, 2, 2, 2, 1) and got.dtype == torch.float32
        assert float((tt.full(got).double() - 1.01 * tt.full(r64)).norm() / tt.full(r64).norm()) < 1e-5
    # with 2 modes there its entries would be ~5e38: refused, with the reason, not inf cores
    x32 = tt.cast(x64, torch.float32)
    with pytest.raises(ValueError, match=r"round: the result does not fit float32 .* use float64"):
        tt.round(x32 + 0.01 * x32, max_tt_rank=2)
    big = torch.full((4, 4), 1e38)  # norm 4e38, rank 1: the result's entries fit
    for eps in (None, 0.1):
        x = tt.to_tt_tensor(big, max_tt_rank=4, epsilon=eps)
        assert x.dtype == torch.float32 and x.tt_ranks == ((1, 1, 1) if eps else (1, 4, 1))
        assert_close(tt.full(x), big)
    # float64 has no wider type: its overflow is a ValueError naming the function
    huge = torch.full((4, 4), 1e308, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"TT-SVD: the tensor's norm overflows float64 .*scale the input down"
    ):
        tt.to_tt_tensor(huge, max_tt_rank=4, epsilon=0.1)
    assert_close(tt.full(tt.to_tt_tensor(huge, max_tt_rank=4)), huge)  # a full-rank cap needs no SVD


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


# ------------------------------------------------------------------------------- sizes past int64
def test_embedding_with_more_rows_than_int64():
    """A stride past int64 read as a negative int64 (-1 digits, a failed gather) or raised OverflowError."""
    w = tt.random_matrix(((2,) * 64, (2, 2, 2) + (1,) * 61), tt_rank=2, dtype=torch.float64)  # 2^64 x 8
    rows = tt.nn.functional.tt_embedding(torch.tensor([0, 1, 5]), w, num_embeddings=100)
    assert torch.allclose(rows[2], tt.gather_nd(w, torch.tensor([[5, j] for j in range(8)])))
    emb = tt.nn.TTEmbedding(10**30, 16, tt_rank=2, voc_dims=(10,) * 30)
    assert emb(torch.tensor([3, 10**18])).shape == (2, 16)
    with pytest.raises(IndexError, match=r"out-of-range values \[-1\]"):
        emb(torch.tensor([-1, 5]))
    with pytest.raises((IndexError, RuntimeError)):
        torch.func.vmap(emb)(torch.tensor([[-3]]))


def test_huge_shapes_index_and_print():
    a = tt.random_matrix(((4,) * 32, (2,) * 32), tt_rank=2)  # 2^64 x 2^32
    assert tt.gather_nd(a, torch.tensor([[12345, 7]])).shape == (1,)
    with pytest.raises(IndexError, match="row index -1 out of range"):
        tt.gather_nd(a, torch.tensor([[-1, 7]]))
    m = tt.random_matrix(((4,) * 40, (4,) * 40), tt_rank=2)
    assert m.shape == (4**40, 4**40) and str(4**40) in str(m)  # a torch.Size past int64 could not print


def test_shape_and_full_of_more_entries_than_int64():
    """70 modes of size 2: each size fits int64 but their product does not. ``shape`` was a torch.Size whose
    numel() wrapped to 0, and ``full`` grew its partial products until memory ran out (or the OOM killer came)."""
    o = tt.tensor_ones((2,) * 70)
    assert type(o.shape) is tuple and math.prod(o.shape) == 2**70
    assert type(tt.tensor_ones((2,) * 62).shape) is torch.Size
    with pytest.raises(
        ValueError,
        match=r"full: the dense tensor of shape \(2, 2, .* would have 1180591620717411303424 entries",
    ):
        tt.full(o)
    m = tt.random_matrix(((2,) * 35, (2,) * 35), tt_rank=2)
    assert m.shape == (2**35, 2**35)
    with pytest.raises(ValueError, match="more than int64 counts; use tt.gather_nd"):
        tt.full(m)
    with pytest.raises(ValueError, match=r"shape \(3, 34359738368, 34359738368\)"):
        tt.full(tt.random_matrix_batch(((2,) * 35, (2,) * 35), tt_rank=2, batch_size=3))


def test_kronecker_slogdet_of_more_factor_copies_than_int64():
    import math

    f = torch.tensor([[-2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    sign, logdet = tt.kronecker.slog_determinant(tt.TensorTrain([f[None, :, :, None]] * 65))
    assert float(sign) == 1.0 and abs(float(logdet) / (65 * 2**64 * math.log(2)) - 1) < 1e-12


def test_auto_shape_of_huge_vocabularies():
    """Divisors come from a factorization (trial division to 10^6), not an O(sqrt n) loop (seconds at 10^16,
    minutes at 2^62): these run in milliseconds."""
    assert tt.nn.TTEmbedding(10**16, 16, tt_rank=2).voc_dims == (10**4,) * 4
    assert tt.auto_shape(999983 * 999979, 2) == (999979, 999983)  # two primes near 10^6: still exact
    assert tt.auto_shape(2**62, 2) == (2**31, 2**31)


def _unbalanced(dtype: torch.dtype, d: int = 16, big: float = 1e5) -> tt.TensorTrain:
    """Every entry 1 (norm 2^(d/2)), but half the cores scaled by ``big`` and the rest by ``1 / big``."""
    return tt.TensorTrain(
        [torch.full((1, 2, 1), big if k < d // 2 else 1 / big, dtype=dtype) for k in range(d)]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_qr_sweeps_carry_unbalanced_core_scales(dtype):
    """The QR sweeps carried the product of core scales unscaled: 1e40 on the way to a norm of 256 gave NaN
    norms and NaN orthogonal cores in float32."""
    x = _unbalanced(dtype)
    torch.testing.assert_close(tt.frobenius_norm(x), torch.tensor(256.0, dtype=x.dtype).real)
    torch.testing.assert_close(tt.frobenius_norm_squared(x), torch.tensor(65536.0, dtype=x.dtype).real)
    ones = torch.ones((2,) * 16, dtype=dtype)
    for left_to_right in (True, False):
        o = tt.orthogonalize(x, left_to_right=left_to_right)
        assert all(torch.isfinite(c).all() for c in o.tt_cores)
        torch.testing.assert_close(tt.full(o), ones, rtol=1e-5, atol=1e-5)
    r = tt.round(x, max_tt_rank=1)
    torch.testing.assert_close(tt.full(r), ones, rtol=1e-5, atol=1e-5)


def test_float32_norm_past_the_range_is_inf_not_nan_and_tiny_norms_are_not_zero():
    big = tt.TensorTrain([torch.full((1, 2, 1), 10.0) for _ in range(40)])  # norm 1e40 * 2^20
    assert tt.frobenius_norm(big).item() == float("inf")
    tiny = tt.TensorTrain([torch.full((1, 2, 1), 10.0 ** ((k % 20) - 10)) for k in range(60)])
    want = 2.0**30 * 10.0 ** sum((k % 20) - 10 for k in range(60))  # 6.09e-31, a float32 number
    torch.testing.assert_close(tt.frobenius_norm(tiny), torch.tensor(want, dtype=torch.float32))


@pytest.mark.parametrize("scale", [1e160, 1e-170])
def test_float64_norms_whose_squares_leave_the_range(scale):
    """The value was sqrt(norm * norm): inf for a norm of 2e160, 0 for 2e-170."""
    x = tt.TensorTrain(
        [torch.full((1, 2, 1), scale, dtype=torch.float64), torch.ones(1, 2, 1, dtype=torch.float64)]
    )
    torch.testing.assert_close(tt.frobenius_norm(x), torch.tensor(2 * scale, dtype=torch.float64))
    want = torch.tensor(2 * scale, dtype=torch.float64).hypot(torch.tensor(1e-5, dtype=torch.float64).sqrt())
    torch.testing.assert_close(tt.frobenius_norm(x, epsilon=1e-5), want)  # t3f's sqrt(norm^2 + 1e-5)


def test_differentiable_norm_with_epsilon_where_the_square_overflows_float64():
    """A norm of 3.9e155 squares past float64: the Gram sweep's value is then hypot(norm, sqrt(epsilon)), as the QR
    path's (epsilon 1e308 adds 0.03%: its root, not itself)."""
    gen = torch.Generator().manual_seed(0)
    x = tt.random_tensor((2, 3, 4), tt_rank=2, generator=gen, dtype=torch.float64) * 1e155
    want = torch.hypot(tt.frobenius_norm(x), torch.tensor(1e154, dtype=torch.float64))
    for differentiable in (False, True):
        got = tt.frobenius_norm(x, epsilon=1e308, differentiable=differentiable)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


def test_bfloat16_norm_gradient_is_the_float32_one_rounded_once():
    """The Gram sweep behind the gradient runs in float32 for bfloat16 cores, as for float16 ones: each core's
    gradient is the float32 cores' gradient rounded to bfloat16 (a sweep in bfloat16 was off in every core)."""
    gen = torch.Generator().manual_seed(0)
    x = tt.random_tensor((3, 4, 3, 4), tt_rank=3, generator=gen, dtype=torch.bfloat16)
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    tt.frobenius_norm(tt.TensorTrain(cores)).backward()
    wide = [c.detach().float().requires_grad_() for c in x.tt_cores]
    tt.frobenius_norm(tt.TensorTrain(wide)).backward()
    for c, w in zip(cores, wide, strict=True):
        assert torch.equal(c.grad, w.grad.to(torch.bfloat16))


@pytest.mark.parametrize(("dtype", "s"), [(torch.float32, 1.7782794100389228e-23), (torch.float64, 1e-162)])
def test_norm_when_a_plain_sweep_passes_below_the_normal_range(dtype, s):
    """The plain sweep first: its intermediate R fell into subnormals (precision lost) without giving 0, inf or
    NaN, so the scaled sweep was not run and the norm came out 45% too large."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4, 1)]
    cores = [torch.randn(*sh, dtype=torch.float64, generator=gen) for sh in shapes]
    scales = [s, s, 1 / s, 1 / s]
    want = tt.frobenius_norm(tt.TensorTrain(cores))  # the scales cancel in the full tensor
    x = tt.TensorTrain([(c * k).to(dtype) for c, k in zip(cores, scales, strict=True)])
    torch.testing.assert_close(tt.frobenius_norm(x).double(), want, rtol=1e-4, atol=0)


def test_norm_under_vmap_and_on_meta_and_fake_tensors():
    """The plain-first norm tests its result (a sync): under vmap, on meta and on fake tensors it must not."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cores = [torch.randn(2, 1, 3, 2), torch.randn(2, 2, 4, 2), torch.randn(2, 2, 5, 1)]
    got = torch.func.vmap(lambda a, b, c: tt.frobenius_norm(tt.TensorTrain([a, b, c])))(*cores)
    torch.testing.assert_close(got, tt.frobenius_norm(tt.TensorTrainBatch(cores)))
    meta = tt.TensorTrain([torch.empty(1, 3, 2, device="meta"), torch.empty(2, 4, 1, device="meta")])
    assert tt.frobenius_norm(meta).is_meta
    with FakeTensorMode():
        fake = tt.TensorTrain([torch.empty(1, 3, 2), torch.empty(2, 4, 1)])
        assert tt.frobenius_norm(fake).shape == ()


def test_value_checks_skip_fake_tensors():
    """Checks that read values (finiteness, index ranges, zero cores, singular factors, gauge invariance) ran on
    fake tensors (FakeTensorMode: shape and memory dry runs) and failed with torch's data-dependent error, where
    meta tensors skipped them; the layer cache also read fake data pointers (a deprecation warning)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = tt.random_tensor((3, 4, 5), tt_rank=3)
        assert tt.full(tt.round(a, max_tt_rank=2)).shape == (3, 4, 5)
        assert tt.gather_nd(a, torch.tensor([[0, 1, 2]])).shape == (1,)
        assert tt.gather_nd(tt.random_tensor_batch((3, 4), tt_rank=2, batch_size=2), [[1, 0, 3]]).shape == (
            1,
        )
        assert tt.full(tt.orthogonalize(a)).shape == (3, 4, 5)
        g = tt.gradients(lambda y: tt.frobenius_norm_squared(y), a)
        assert tt.full(g).shape == (3, 4, 5)
        assert tt.kronecker.determinant(tt.random_matrix([[2, 3], [2, 3]], tt_rank=1)).shape == ()
        lin = tt.nn.TTLinear(60, 60, tt_rank=4, in_dims=(3, 4, 5), out_dims=(4, 5, 3))
        with torch.no_grad():
            assert lin(torch.randn(8, 60)).shape == (8, 60)  # (an inference call: the cache's path)
        lin(torch.randn(8, 60)).sum().backward()
        with pytest.raises(ValueError, match=r"RiemannianSGD.*a fake tensor has no values to read"):
            tt.optim.RiemannianSGD([lin.cores], lr=0.1).step()  # (its rounding picks ranks from values)
        emb = tt.nn.TTEmbedding(1000, 64, tt_rank=4)
        assert emb(torch.randint(0, 1000, (4, 5))).shape == (4, 5, 64)
        assert not lin._cache


def test_a_real_layer_called_under_fake_tensor_mode_keeps_nothing_fake():
    """A real layer run once under FakeTensorMode(allow_non_fake_inputs=True) (a dry run of a real model) kept its
    fake merges in the inference cache (its cores are real), and its next real call returned a fake tensor; tuned
    there, it cached a "timing" of fake work under the real device's key. A large TT-SVD under the mode ran the
    randomized path's value checks on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    gen = torch.Generator().manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=8).eval()
    x = torch.randn(256, 784, generator=gen)
    with torch.no_grad():
        want = layer(x).clone()
    for strategy in ("auto", "tune"):
        layer.strategy = strategy
        layer.clear_cache()
        tt.contraction.clear_plan_cache()
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            assert isinstance(layer(mode.from_tensor(x)), FakeTensor)
        # (and nothing tuned: the cost model's plan for "auto" is the real call's too)
        assert not layer._cache
        assert tt.contraction.plan_cache_size() == (strategy == "auto")
        with torch.no_grad():
            got = layer(x)
        assert not isinstance(got, FakeTensor)
        assert_close(got, want)
    with FakeTensorMode():
        w = torch.randn(1024, 1024)
        assert tt.to_tt_matrix(w, ((32, 32), (32, 32)), max_tt_rank=8).tt_ranks == (1, 8, 1)


def test_lists_become_tensors_on_the_operands_device():
    """Index lists and bias lists were made on the default device: with CPU operands under
    ``torch.set_default_device("meta")`` (or a GPU), a copy from the default device, which meta cannot give."""
    gen = torch.Generator().manual_seed(0)
    b = tt.random_tensor_batch((3, 4), tt_rank=2, batch_size=3, generator=gen)
    w = tt.random_matrix([[2, 3], [2, 2]], tt_rank=2, generator=gen)
    want = (tt.full(b[[2, 0]]), tt.full(b[::-1]), tt.gather_nd(b, torch.tensor([[1, 0, 3]])))
    with torch.device("meta"):
        got = (tt.full(b[[2, 0]]), tt.full(b[::-1]), tt.gather_nd(b, [[1, 0, 3]]))
        layer = tt.nn.TTLinear.from_tt(w, bias=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        layer.load_tt_(w, bias=[0.0] * 6)
    for g, v in zip(got, want, strict=True):
        assert g.device.type == "cpu"
        assert_close(g, v)
    assert layer.bias.device.type == "cpu" and not layer.bias.any()


def test_float64_orthogonal_forms_whose_scale_factor_exceeds_float64():
    """Putting the carried exponent back built 2^e alone, which overflows float64 past e = 1023 although the
    core it multiplies fits: inf and NaN cores for a tensor of norm 1.25e101."""
    gen = torch.Generator().manual_seed(0)
    b = [torch.randn(*sh, dtype=torch.float64, generator=gen) for sh in ((1, 3, 2), (2, 4, 2), (2, 5, 1))]
    want = 1e100 * tt.full(tt.TensorTrain(b))
    for scales in ((1e200, 1e200, 1e-300), (1e-300, 1e200, 1e200)):
        x = tt.TensorTrain([c * k for c, k in zip(b, scales, strict=True)])
        for got in (
            tt.orthogonalize(x),
            tt.orthogonalize(x, left_to_right=False),
            tt.round(x, max_tt_rank=4),
        ):
            torch.testing.assert_close(tt.full(got), want)


@pytest.mark.parametrize(
    ("dtype", "scales"),
    [
        (torch.float64, (1e200, 1e200, 1e-300)),
        (torch.float64, (1e-300, 1e200, 1e200)),
        (torch.float32, (1e25, 1e25, 1e-30)),
    ],
)
def test_products_of_cores_whose_norms_underflow(dtype, scales):
    """A core of entries ~1e-300 (float64) or ~1e-30 (float32) has a squared norm of 0, which the scaling
    decision took for an all-zero core: full, gather_nd and flat_inner multiplied unscaled and gave NaN."""
    gen = torch.Generator().manual_seed(0)
    b = [torch.randn(*sh, dtype=torch.float64, generator=gen) for sh in ((1, 3, 2), (2, 4, 2), (2, 5, 1))]
    total = 10.0 ** sum(math.log10(k) for k in scales)  # (1e200 * 1e200 overflows on the way)
    x = tt.TensorTrain([(c * k).to(dtype) for c, k in zip(b, scales, strict=True)])
    want = total * tt.full(tt.TensorTrain(b))  # float64 oracle
    torch.testing.assert_close(
        tt.full(x).double(), want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0
    )
    idx = torch.tensor([[0, 1, 2], [2, 3, 4]])
    torch.testing.assert_close(
        tt.gather_nd(x, idx).double(), want[idx[:, 0], idx[:, 1], idx[:, 2]], rtol=1e-5, atol=0
    )
    y = tt.TensorTrain([c.to(dtype) for c in b])  # <x, y> = total * ||b||^2 fits either dtype
    torch.testing.assert_close(
        tt.flat_inner(x, y).double(), total * tt.full(tt.TensorTrain(b)).square().sum(), rtol=1e-5, atol=0
    )
    # <x, x> = total^2 ||b||^2: 1.6e202 in float64; past float32's range it is inf (it was NaN: two cores of
    # 1e25 multiplied inside one step before any rescaling)
    sq = total**2 * tt.full(tt.TensorTrain(b)).square().sum()
    got = tt.flat_inner(x, x).double()
    if sq > torch.finfo(dtype).max:
        assert got == math.inf
    else:
        torch.testing.assert_close(got, sq, rtol=1e-5, atol=0)


def test_norm_with_gradients_where_the_square_leaves_the_range():
    """With gradients on, the zero-valued gradient term was inf - inf: NaN where the value is finite (epsilon
    > 0) or inf (the squared norm)."""
    gen = torch.Generator().manual_seed(0)
    cores = [torch.randn(*sh, dtype=torch.float64, generator=gen) for sh in ((1, 3, 2), (2, 4, 2), (2, 5, 1))]
    cores[0] = cores[0] * 1e160
    x = tt.TensorTrain([c.requires_grad_() for c in cores])
    with torch.no_grad():
        want = tt.frobenius_norm(x, epsilon=1e-5)
    got = tt.frobenius_norm(x, epsilon=1e-5)
    torch.testing.assert_close(got.detach(), want)
    got.backward()
    assert all(torch.isfinite(c.grad).all() for c in cores)
    assert tt.frobenius_norm_squared(x).item() == float("inf")


# an orthogonal form whose norm core overflows float32 is refused, not returned with inf
# cores
@pytest.mark.parametrize("left_to_right", [True, False])
def test_orthogonalize_refuses_a_norm_that_overflows_float32(left_to_right):
    cores = [torch.full((1, 4, 2), 1e15), torch.full((2, 4, 2), 1e15), torch.full((2, 4, 1), 1e15)]
    a = tt.TensorTrain(cores)  # entries 1e45 * 4: finite in the cores, not as one norm core
    with pytest.raises(ValueError, match="does not fit float32"):
        tt.orthogonalize(a, left_to_right=left_to_right)


@pytest.mark.filterwarnings(
    "ignore:ComplexHalf support is experimental", "ignore:Complex modules are a new feature"
)
@pytest.mark.parametrize(
    "low", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu, torch.complex32]
)
def test_dtypes_below_16_bits_are_named_by_decompositions_layers_and_compress(low):
    """float8 and complex32 got through TT-SVD's dtype check and the layer's fast path (a float8 forward ran,
    its backward and complex32's forward failed deep in torch) and made compress fail: now the TypeError the rest
    of the library gives, and compress keeps such layers dense with the reason."""
    base = torch.complex64 if low.is_complex else torch.float32
    with pytest.raises(TypeError, match=r"to_tt_tensor: TT cores are 16 bits or more"):
        tt.to_tt_tensor(torch.randn(4, 6, dtype=base).to(low))
    with pytest.raises(TypeError, match=r"to_tt_matrix: TT cores are 16 bits or more"):
        tt.nn.TTLinear.from_linear(torch.nn.Linear(16, 16, dtype=base).to(low), max_tt_rank=2)
    layer = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=base).to(low)
    for x in (torch.randn(2, 16, dtype=base).to(low), torch.randn(2, 16, dtype=base)):
        # (an input of the usual dtype got a hint to cast it to the cores' dtype, which then failed so)
        with pytest.raises(TypeError, match=r"tt_linear: cores must be floating point \(16 bits"):
            layer(x)
    emb = tt.nn.TTEmbedding(20, 8, tt_rank=2, dtype=base).to(low)
    with pytest.raises(TypeError, match=r"TTEmbedding: cores must be floating point \(16 bits"):
        emb(torch.tensor([1, 2]))
    padded = tt.nn.TTLinear(17, 13, tt_rank=2, dtype=base).to(low)
    with pytest.raises(TypeError, match=r"TTLinear: cores must be floating point \(16 bits"):
        padded(torch.rand(2, 17, dtype=base).to(low))
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Embedding(100, 64)).to(low)
    out, report = tt.compress(model, max_tt_rank=2)
    assert [r.tt_ranks for r in report.layers] == [None, None]
    assert f"its weight has dtype {low}; TT cores are 16 bits or more" in str(report)


def test_loading_a_complex32_checkpoint_into_a_real_layer_suggests_a_dtype_that_exists():
    layer = tt.nn.TTLinear(16, 16, tt_rank=2)
    state = {k: v.to(torch.complex64).to(torch.complex32) for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"build the layer with dtype=torch.complex64"):
        layer.load_state_dict(state)


@pytest.mark.parametrize(
    ("scale", "dtype", "tol"),
    [
        (1e20, torch.float32, 1e-3),
        (1e-25, torch.float32, 1e-3),
        (1e160, torch.float64, 1e-9),
        (1e-170, torch.float64, 1e-9),
    ],
)
@pytest.mark.parametrize("method", ["auto", "randomized"])
def test_truncation_gradients_at_extreme_magnitudes(scale, dtype, tol, method):
    """SVD's backward squares singular values: through a truncating TT-SVD or round, a float32 tensor of norm
    1e20 or 1e-25 (float64: 1e160, 1e-170) got NaN gradients although its forward was right. Its gradients are
    those of the unscaled data (both functions are homogeneous: f(s a) / s = f(a), so s times the gradient at
    s a is the gradient at a). The randomized path (the backward of its small SVD squares them too) was not
    rescaled and still gave NaN there."""
    g = torch.Generator().manual_seed(12)
    a = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)

    def svd_grad(x: torch.Tensor, s: float) -> torch.Tensor:
        x = x.clone().requires_grad_()
        (tt.full(tt.to_tt_tensor(x, max_tt_rank=2, method=method)).double() / s * w).sum().backward()
        return x.grad.double() * s

    assert_close(svd_grad((a * scale).to(dtype), scale), svd_grad(a, 1.0), rtol=tol, atol=tol)

    x = tt.random_tensor((4, 5, 6), tt_rank=3, generator=g, dtype=torch.float64)

    def round_grads(cores: list[torch.Tensor], s: float) -> list[torch.Tensor]:
        cores = [c.clone().requires_grad_() for c in cores]
        (
            tt.full(tt.round(tt.TensorTrain(cores), max_tt_rank=2, method=method)).double() / s * w
        ).sum().backward()
        return [cores[0].grad.double() * s, *(c.grad.double() for c in cores[1:])]

    big = [(x.tt_cores[0] * scale).to(dtype), *(c.to(dtype) for c in x.tt_cores[1:])]
    for got, want in zip(round_grads(big, scale), round_grads(list(x.tt_cores), 1.0), strict=True):
        assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
