"""Long tensor trains whose cores have unbalanced scales: a tensor that fits float32 stored with cores of 10
on half of its 100 modes and 0.1 on the rest (or the mirror). Every partial product of a plain sweep leaves
float32's range (1e50 or 1e-50) on the way; results must still match float64 on the same cores."""

from __future__ import annotations

import math

import pytest
import torch

import tensortrain as tt
from conftest import assert_close

D = 100


def unbalanced(gen: torch.Generator, big: float, rank: int = 3, d: int = D) -> tt.TensorTrain:
    """A float64 TT of norm 1 over 2^d whose first half of cores is scaled by ``big`` and the rest by 1/big."""
    x = tt.random_tensor((2,) * d, tt_rank=rank, dtype=torch.float64, generator=gen)
    x = tt.multiply(x, 1 / float(tt.frobenius_norm(x)))
    return tt.TensorTrain([c * (big if k < d // 2 else 1 / big) for k, c in enumerate(x.tt_cores)])


@pytest.fixture(params=[10.0, 0.1], ids=["big-first", "small-first"])
def x64(request, gen):
    return unbalanced(gen, request.param)


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    got, want = got.detach().double(), want.detach().double()
    assert torch.isfinite(got).all(), got
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max())), (got, want)


def test_inner_products_and_forms(x64):
    """flat_inner, the Gram-sweep norm, gram_matrix and the bilinear forms carried their partial products
    unscaled: NaN (inf * small) or 0 in float32."""
    x = x64.float()
    close(tt.flat_inner(x, x), tt.flat_inner(x64, x64))
    close(tt.frobenius_norm(x, differentiable=True), torch.tensor(1.0))
    batch = tt.TensorTrainBatch([c[None] for c in x.tt_cores])
    close(tt.gram_matrix(batch), torch.ones(1, 1))
    close(tt.pairwise_flat_inner(batch, batch), torch.ones(1, 1))
    eye = tt.eye((2,) * D, dtype=torch.float32)
    vec = tt.TensorTrain([c.unsqueeze(2) for c in x.tt_cores])  # a 2^D x 1 TT-matrix
    close(tt.bilinear_form(eye, vec, vec), torch.tensor(1.0))
    close(tt.bilinear_form_two_mat(x, eye, eye, x), torch.tensor(1.0))  # (its einsum sweep was never scaled)
    close(tt.pairwise_flat_inner(batch, batch, eye), torch.ones(1, 1))


@pytest.mark.parametrize("big", [1e6, 1e-6])
def test_inner_product_with_a_dense_tensor(gen, big):
    """flat_inner(TT, dense) carried its state unscaled: NaN where flat_inner(TT, TT) was right. 16 modes of 2
    (a dense tensor that fits) with cores of 1e6 on half: the partial products reach 1e48, past float32."""
    x64 = unbalanced(gen, big, d=16)
    dense = torch.randn(*(2,) * 16, generator=gen, dtype=torch.float64)
    want = (tt.full(x64) * dense).sum()
    close(tt.flat_inner(x64.float(), dense.float()), want)
    close(tt.flat_inner(dense.float(), x64.float()), want)
    batch = tt.TensorTrainBatch([c[None].expand(3, *c.shape) for c in x64.float().tt_cores])
    close(tt.flat_inner(batch, dense.float()), want.expand(3))
    mat = tt.TensorTrain([c.reshape(c.shape[0], 2, 1, c.shape[-1]) for c in x64.tt_cores])  # 2^16 x 1
    close(tt.flat_inner(mat.float(), dense.reshape(-1, 1).float()), want)


def test_a_nan_core_beside_a_zero_core_gives_nan():
    """The scaling check took min() of the cores' norms, which a NaN first norm makes NaN: the zero was missed
    and log2(0) raised 'math domain error' from full, flat_inner and gather_nd."""
    x = tt.TensorTrain([torch.full((1, 2, 1), float("nan")), torch.zeros(1, 2, 1)])
    assert torch.isnan(tt.full(x)).all()
    assert torch.isnan(tt.flat_inner(x, x))
    assert torch.isnan(tt.gather_nd(x, [[0, 0]])).all()


def test_inner_product_gradients_stay_finite(x64):
    cores = [c.float().requires_grad_() for c in x64.tt_cores]
    tt.flat_inner(tt.TensorTrain(cores), tt.TensorTrain(cores)).backward()
    ref = [c.clone().requires_grad_() for c in x64.tt_cores]
    tt.flat_inner(tt.TensorTrain(ref), tt.TensorTrain(ref)).backward()
    for c, r in zip(cores, ref, strict=True):
        close(c.grad, r.grad, rtol=1e-3)


def test_entries(x64, gen):
    """gather_nd and full multiplied the cores' slices plainly: NaN for entries that fit."""
    idx = torch.randint(0, 2, (16, D), generator=gen)
    close(tt.gather_nd(x64.float(), idx), tt.gather_nd(x64, idx))
    y = tt.random_tensor((2,) * 16, tt_rank=3, dtype=torch.float64, generator=gen)
    y = tt.TensorTrain([c * (1e4 if k < 8 else 1e-4) for k, c in enumerate(y.tt_cores)])
    close(tt.full(y.float()), tt.full(y))


def test_riemannian_tools_at_an_unbalanced_point(x64, gen):
    """The tangent frame's QR sweeps carried R unscaled: project/gradients refused a point of norm 1 ("does
    not fit float32"); an unbalanced `what` overflowed its environments."""
    x = x64.float()
    z = tt.random_tensor((2,) * D, tt_rank=2, dtype=torch.float64, generator=gen)
    want = tt.project(z, x64)
    got = tt.project(z.float(), x)
    assert float(tt.frobenius_norm(got.double() - want)) <= 1e-4 * float(tt.frobenius_norm(want))
    g = tt.gradients(lambda y: tt.flat_inner(y, z.float()), x, runtime_check=False)
    assert float(tt.frobenius_norm(g.double() - want)) <= 1e-4 * float(tt.frobenius_norm(want))
    point = tt.orthogonalize(tt.random_tensor((2,) * D, tt_rank=2, dtype=torch.float64, generator=gen))
    want = tt.project(x64, point)
    got = tt.project(x, point.float())
    assert float(tt.frobenius_norm(got.double() - want)) <= 1e-4 * float(tt.frobenius_norm(want))


def test_values_beyond_the_range_are_still_inf():
    """The scaled reruns put the exponents back: a result that does not fit is inf, not a wrapped number."""
    x = tt.TensorTrain([torch.full((1, 2, 1), 4.0) for _ in range(80)])  # entries 4^80 = 1.5e48
    assert torch.isinf(tt.flat_inner(x, x))
    assert torch.isinf(tt.gather_nd(x, torch.zeros(1, 80, dtype=torch.long))).all()


def test_riemannian_gradient_from_cores_and_a_step_at_an_unbalanced_point(x64, gen):
    """optim's interface Gram matrices were carried unscaled: 10^50 overflowed float32 and pinv raised a bare
    LinAlgError (after the core gradients had become finite)."""
    z = tt.random_tensor((2,) * D, tt_rank=2, dtype=torch.float64, generator=gen)
    params = torch.nn.ParameterList([torch.nn.Parameter(c.float()) for c in x64.tt_cores])
    tt.flat_inner(tt.TensorTrain(list(params)), z.float()).backward()
    got = tt.optim.riemannian_gradient_from_cores(
        tt.TensorTrain([p.detach() for p in params]), [p.grad for p in params]
    )
    want = tt.project(z, x64)  # the Riemannian gradient of <x, z> is P_x(z)
    assert float(tt.frobenius_norm(got.double() - want)) <= 1e-4 * float(tt.frobenius_norm(want))
    tt.optim.RiemannianSGD([params], lr=0.1).step()
    moved = tt.TensorTrain([p.detach().double() for p in params])
    expected = tt.round(x64 - 0.1 * want, max_tt_rank=3)
    assert float(tt.frobenius_norm(moved - expected)) <= 1e-4 * float(tt.frobenius_norm(expected))


def test_an_entry_does_not_depend_on_the_entries_gathered_with_it():
    """gather_nd checked the plain sweep's largest entry only: an entry that underflowed on the way read 0 when
    gathered next to a normal one."""
    cores = []
    for k in range(D):
        c = torch.zeros(1, 2, 1)
        c[0, 0, 0], c[0, 1, 0] = (0.1 if k < D // 2 else 10.0), 1.0
        cores.append(c)
    x = tt.TensorTrain(cores)
    close(tt.gather_nd(x, [[0] * D, [1] * D]), torch.ones(2))
    close(tt.gather_nd(x, [[0] * D]), torch.ones(1))


def test_inner_products_count_the_sum_over_modes():
    """The scaling decision scored cores by their typical entry, which a contraction over 128 modes per step
    outgrows: 8^10 * 128^10 overflowed float32 unnoticed (inf) where the value, 1.3e36, fits."""
    x = tt.TensorTrain([torch.full((1, 128, 1), 2.0**3)] * 10 + [torch.full((1, 128, 1), 2.0**-4)] * 10)
    close(tt.flat_inner(x, x), tt.flat_inner(x.double(), x.double()))


def test_power_of_two_scales_follow_the_tensor_to_its_device():
    from tensortrain.operands import unscale_pow2

    assert unscale_pow2(torch.ones(1, 2, 2, device="meta"), torch.tensor([3])).device.type == "meta"


@pytest.mark.parametrize("batch", [False, True])
def test_gather_nd_in_chunks_and_batches_matches_the_dense_entries(gen, monkeypatch, batch):
    """gather_nd sweeps its entries in chunks of rows (forced small here), batches by each row's own element."""
    import tensortrain.indexing

    monkeypatch.setattr(tensortrain.indexing, "_CHUNK", 7)
    shape = (3, 4, 2, 5)
    if batch:
        x = tt.random_tensor_batch(shape, tt_rank=3, batch_size=4, dtype=torch.float64, generator=gen)
    else:
        x = tt.random_tensor(shape, tt_rank=(1, 3, 6, 4, 1), dtype=torch.float64, generator=gen)
    x = type(x)([c.clone().requires_grad_() for c in x.tt_cores])
    full = tt.full(x)
    idx = torch.stack([torch.randint(0, n, (50,), generator=gen) for n in full.shape], dim=1)
    got, want = tt.gather_nd(x, idx), full[tuple(idx.T)]
    close(got, want, rtol=1e-12)
    for a, b in zip(
        torch.autograd.grad(got.sum(), x.tt_cores), torch.autograd.grad(want.sum(), x.tt_cores), strict=True
    ):
        close(a, b, rtol=1e-12)


def _bumped(d: int, split: int, up: float, down: float, dtype: torch.dtype) -> tt.TensorTrain:
    """A TT of norm 1 over (2,)^d, rank 4, stored with cores 2^up times their share on the first ``split`` modes
    and 2^down on the rest: its left partial products reach 2^(split * up) although every core is tame."""
    g = torch.Generator().manual_seed(0)
    x = tt.random_tensor((2,) * d, tt_rank=4, dtype=torch.float64, generator=g)
    lg = math.log2(float(tt.frobenius_norm(x)))
    return tt.TensorTrain(
        [(c * 2 ** (-lg / d) * 2 ** (up if k < split else down)).to(dtype) for k, c in enumerate(x.tt_cores)]
    )


@pytest.mark.parametrize(
    ("dtype", "split", "up", "down"),
    [(torch.float32, 100, 1.3, -2.6), (torch.float32, 50, -2.6, 1.3), (torch.float16, 100, 0.3, -0.6)],
)
def test_qr_sweeps_of_a_norm_one_train_whose_partial_products_leave_the_range(dtype, split, up, down):
    """The QR sweeps carried R unscaled where an estimate from the cores' entry scales said they fit, but R
    carries the partial product's norm (up to sqrt(n_k) per step more): orthogonalize said a norm-1 TT
    'does not fit float32'. They now run plainly, check every carried R, and rerun scaled where one left the
    range."""
    x = _bumped(150, split, up, down, dtype)
    for ltr in (True, False):
        y = tt.orthogonalize(x, left_to_right=ltr)
        assert abs(float(tt.frobenius_norm(tt.cast(y, torch.float64))) - 1) < 1e-2
    assert abs(float(tt.frobenius_norm(tt.cast(tt.round(x, max_tt_rank=4), torch.float64))) - 1) < 1e-2


def test_round_of_a_long_float64_train_whose_partial_products_leave_the_range():
    x = _bumped(1000, 300, -3.5, 1.5, torch.float64)
    assert abs(float(tt.frobenius_norm(tt.round(x, max_tt_rank=4))) - 1) < 1e-9


def test_orthogonalizing_an_exactly_zero_train_of_large_cores():
    """Cores of 8 on 49 modes (partial products past 3.4e38) and a zero core: the tensor is 0, not an overflow."""
    x = tt.TensorTrain([torch.full((1, 2, 1), 8.0) for _ in range(49)] + [torch.zeros(1, 2, 1)])
    for ltr in (True, False):
        assert float(tt.frobenius_norm(tt.orthogonalize(x, left_to_right=ltr))) == 0
    assert float(tt.frobenius_norm(tt.round(x, max_tt_rank=1))) == 0


def _scaled_tt(scales, gen):
    d = len(scales)
    cores = [
        torch.randn(1 if k == 0 else 2, 3, 1 if k == d - 1 else 2, generator=gen, dtype=torch.float64) * s
        for k, s in enumerate(scales)
    ]
    return tt.TensorTrain(cores)


# two operands whose partial products peak together past float64's range: the
# sweep of
# <a, b> must scale where their scales summed per core leave the range, though each alone stays within it
def test_inner_product_of_two_operands_whose_partial_products_overflow_together(gen):
    a = _scaled_tt([2.0**300, 2.0**300, 2.0**-300, 2.0**-300], gen)
    b = _scaled_tt([2.0**300, 2.0**300, 2.0**-300, 2.0**-300], gen)
    expected = (tt.full(a) * tt.full(b)).sum()
    assert torch.isfinite(expected)
    assert_close(tt.flat_inner(a, b), expected)


def _forms_of(b: tt.TensorTrain) -> dict[str, torch.Tensor]:
    """Every sweep over two to four operands, on ``b`` (and an identity TT-matrix): each equals <b, b>."""
    eye = tt.TensorTrain([torch.eye(2, dtype=b.dtype)[None, :, :, None]] * b.ndims())
    batch = tt.concat_along_batch_dim([b, b])
    vec = tt.TensorTrain([c.unsqueeze(2) for c in b.tt_cores])  # a 2^d x 1 TT-matrix
    return {
        "gram_matrix": tt.gram_matrix(batch)[1, 0],
        "pairwise_flat_inner": tt.pairwise_flat_inner(batch, batch)[0, 1],
        "gram_matrix with a matrix": tt.gram_matrix(batch, eye)[0, 0],
        "quadratic_form": tt.quadratic_form(eye, b),
        "bilinear_form": tt.bilinear_form(eye, vec, vec),
        "bilinear_form_two_mat": tt.bilinear_form_two_mat(b, eye, eye, b),
    }


@pytest.mark.parametrize(
    "dtype, big", [(torch.float32, 1e20), (torch.float32, 1e-25), (torch.float64, 1e160)]
)
def test_forms_whose_steps_multiply_two_large_cores(gen, dtype, big):
    """The sweeps of gram_matrix, pairwise_flat_inner and the forms rescaled their state after each step, but a
    step multiplies it by two to four cores: two of 1e20 overflow float32 inside one step (NaN; two of 1e-25 underflow to 0)
    where flat_inner, which scales its first operand's core, was right."""
    cores = [torch.randn(1, 2, 2, generator=gen, dtype=torch.float64) * big]
    cores += [torch.randn(2, 2, 2, generator=gen, dtype=torch.float64) / big]
    cores += [torch.randn(2, 2, 1, generator=gen, dtype=torch.float64)]
    b64 = tt.TensorTrain(cores)
    want = (tt.full(b64) ** 2).sum()
    b = b64.to(dtype)
    close(tt.flat_inner(b, b), want)
    for name, got in _forms_of(b).items():
        assert torch.isfinite(got), name
        close(got, want)


def _differently_scaled(gen) -> list[tt.TensorTrain]:
    """Three float64 TTs with entries of 1e5, 1 and 1e-5 whose first cores are 1e20, 1 and 1e-20."""
    elems = []
    for s, t in ((1e20, 1e5), (1.0, 1.0), (1e-20, 1e-5)):
        cores = [torch.randn(1, 3, 2, generator=gen, dtype=torch.float64) * s]
        cores += [torch.randn(2, 3, 2, generator=gen, dtype=torch.float64) / s]
        cores += [torch.randn(2, 3, 1, generator=gen, dtype=torch.float64) * t]
        elems.append(tt.TensorTrain(cores))
    return elems


def test_pairwise_products_of_differently_scaled_elements_in_blocks_of_rows(gen, monkeypatch):
    """Each pair (i, j) carries its own exponents, also where the rows are taken in blocks."""
    import tensortrain.batch_ops as B

    monkeypatch.setattr(B, "_ROWS_CHUNK", 1)  # one row per block
    elems = _differently_scaled(gen)
    dense = torch.stack([tt.full(e).reshape(-1) for e in elems])
    want = dense @ dense.T
    batch = tt.concat_along_batch_dim(elems).to(torch.float32)
    close(tt.gram_matrix(batch), want)
    eye = tt.TensorTrain([torch.eye(3)[None, :, :, None]] * 3)
    close(tt.gram_matrix(batch, eye), want)


@pytest.mark.parametrize("rows_chunk", [None, 1])
def test_pairwise_products_of_two_differently_scaled_batches(gen, monkeypatch, rows_chunk):
    """With two different batches the (i, j) exponents are not symmetric: a transposed grid of exponents, or the
    two batches' exponent vectors swapped, gave results off by 10^7 where the Gram matrices stayed right."""
    import tensortrain.batch_ops as B

    if rows_chunk is not None:
        monkeypatch.setattr(B, "_ROWS_CHUNK", rows_chunk)
    elems = _differently_scaled(gen)
    dense = torch.stack([tt.full(e).reshape(-1) for e in elems])
    norms = dense.norm(dim=1)
    eye = tt.TensorTrain([torch.eye(3)[None, :, :, None]] * 3)
    batch = tt.concat_along_batch_dim(elems).to(torch.float32)
    other = tt.concat_along_batch_dim([elems[2], elems[0]]).to(torch.float32)
    cases = (
        (tt.pairwise_flat_inner(batch, other), [0, 1, 2], [2, 0]),
        (tt.pairwise_flat_inner(batch, other, eye), [0, 1, 2], [2, 0]),
        (tt.pairwise_flat_inner(other, batch), [2, 0], [0, 1, 2]),
    )
    for got, rows, cols in cases:
        want = dense[rows] @ dense[cols].T
        # each entry to its own scale (they span 10^-20..10^20)
        bound = 1e-4 * norms[rows][:, None] * norms[cols][None, :]
        assert ((got.double() - want).abs() <= bound).all(), (got, want)


def test_a_gram_matrix_whose_matrix_alone_needs_scaling(gen):
    """The matrix's cores take part in the choice to sweep scaled: balanced vectors with a matrix whose partial
    products overflow float32 (cores of 1e15 then 1e-15) gave NaN."""
    vectors = tt.random_tensor_batch((2,) * 6, tt_rank=2, batch_size=2, dtype=torch.float64, generator=gen)
    m = tt.random_matrix(((2,) * 6, (2,) * 6), tt_rank=2, dtype=torch.float64, generator=gen)
    m = tt.TensorTrain([c * (1e15 if k < 3 else 1e-15) for k, c in enumerate(m.tt_cores)])
    want = tt.gram_matrix(vectors, m)
    got = tt.gram_matrix(vectors.to(torch.float32), m.to(torch.float32))
    assert torch.isfinite(got).all()
    close(got, want)


def _coherent(d: int = 40, r: int = 16) -> tt.TensorTrain:
    """Cores whose entries all equal 2^2.6 on the first half and 2^-10.6 on the rest, rank 16, one mode of 1:
    the value is 2^-4, but the partial products reach 2^120 * 16^20 where the terms of every step add up."""
    big, small = 2**6.6 / r, 2**-6.6 / r
    shape = [(1 if k == 0 else r, 1, 1 if k == d - 1 else r) for k in range(d)]
    return tt.TensorTrain([torch.full(s, big if k < d // 2 else small) for k, s in enumerate(shape)])


def test_sweeps_over_coherent_cores_whose_partial_products_overflow():
    """The scaling check estimated a step's growth for incoherent cores; coherent ones grow up to sqrt(r)
    times faster per step, so full, gather_nd and flat_inner(TT, dense) overflowed to inf (now: checked, and
    swept again scaled)."""
    from tensortrain.operands import batched_cores, scaling_mode

    x = _coherent()
    want = tt.full(x.double()).reshape(())
    assert scaling_mode(batched_cores(x)) == "check"
    close(tt.full(x).reshape(()), want)
    close(tt.gather_nd(x, torch.zeros(1, 40, dtype=torch.long))[0], want)
    close(tt.flat_inner(x, torch.ones([1] * 40)), want)
    # a balanced train runs plain, unchecked
    assert scaling_mode(batched_cores(tt.random_tensor((2,) * 8, tt_rank=4))) == "plain"
    # in a batch beside smaller trains: the bound was the cores' root mean square over the batch, under the
    # large element's norm, so the batch ran plain and its first entry was inf
    small = tt.TensorTrain([c * (0.5 if k < 20 else 1.0) for k, c in enumerate(x.tt_cores)])
    for size in (2, 4):
        batch = tt.concat_along_batch_dim([x, *[small] * (size - 1)])
        dense = tt.full(tt.concat_along_batch_dim([x.double(), *[small.double()] * (size - 1)])).reshape(-1)
        close(tt.full(batch).reshape(-1), dense)
        close(tt.flat_inner(batch, torch.ones([1] * 40)), dense)


def test_a_zero_core_after_overflowing_cores_gives_zero(gen):
    """A core of zeros made the scaling check skip scaling (the value is exactly 0), but the plain sweep
    reached it as inf * 0 = NaN."""
    for dtype, big in ((torch.float32, 1e20), (torch.float64, 1e160)):
        cores = [torch.randn(1, 2, 2, generator=gen, dtype=dtype) * big]
        cores += [torch.randn(2, 2, 2, generator=gen, dtype=dtype) * big, torch.zeros(2, 2, 1, dtype=dtype)]
        y = tt.TensorTrain(cores)
        assert (tt.full(y) == 0).all()
        assert tt.flat_inner(y, y) == 0
        assert (tt.gather_nd(y, [[0, 0, 0], [1, 1, 1]]) == 0).all()
        assert tt.frobenius_norm(y, differentiable=True) == 0
        assert tt.gram_matrix(tt.concat_along_batch_dim([y, y])).eq(0).all()


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        (torch.float32, 1e-30),
        (torch.float32, 1e30),
        (torch.float64, 1e-200),
        (torch.float64, 1e200),
        (torch.float16, 300.0),
    ],
)
def test_differentiable_norm_where_only_its_square_leaves_the_range(gen, dtype, scale):
    """frobenius_norm(differentiable=True) took the root of the squared norm: 0 or inf (and zero gradients)
    for a norm that fits the dtype, e.g. any float16 norm above 256."""
    x = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64, generator=gen)
    x = tt.multiply(x, 1 / float(tt.frobenius_norm(x)))
    cores = [(c * scale ** (1 / 3)).to(dtype).requires_grad_(True) for c in x.tt_cores]
    y = tt.TensorTrain(cores)
    # the dense norm of the cores as stored, unscaled in float64 (full() of the scaled ones leaves the range)
    unit = tt.full(tt.TensorTrain([c.detach().double() / scale ** (1 / 3) for c in cores])).norm()
    want = unit * scale
    # epsilon 1 shifts none of these norms' digits in their dtype (below 1: the square underflows to 0)
    for epsilon in (0.0, 1.0) if scale > 1 else (0.0,):
        got = tt.frobenius_norm(y, epsilon=epsilon, differentiable=True)
        assert got.dtype == dtype
        close(got, want, rtol=2e-3 if dtype == torch.float16 else 1e-5)
    tt.frobenius_norm(y, differentiable=True).backward()
    # d|x|/dcore_k = core's share: <grad_k, core_k> = |x| for every core (the norm is 1-homogeneous per core)
    for c in cores:
        close(
            (c.grad.double() * c.detach().double()).sum(), want, rtol=2e-3 if dtype == torch.float16 else 1e-5
        )
    batch = tt.concat_along_batch_dim([y, y])
    close(tt.frobenius_norm(batch, differentiable=True), want.expand(2))


def test_gradients_at_an_unbalanced_point_are_taken_at_the_point(x64):
    """The scaled QR sweep puts the carried exponents back on the core that keeps the norm; the frame's first
    right-orthogonal core is the point autodiff evaluates func at, so a sweep that dropped them would evaluate
    func at x times a power of two: only a linear func was tested here, whose gradient does not depend on the
    point (a mutation audit)."""
    x = x64.float()
    g = tt.gradients(tt.frobenius_norm_squared, x)  # the gradient of |x|^2 is 2 x, tangent at x
    want = 2 * x64
    assert float(tt.frobenius_norm(g.double() - want)) <= 1e-4 * float(tt.frobenius_norm(want))


def test_the_tangent_space_at_a_point_whose_first_core_alone_overflows(gen):
    """Float32 points with entries of about 1e8 whose first core's own norm (its entries up to 2.5e38) is past
    float32's largest value: the frame's scaled QR sweep scaled only the R it carried, so the QR of that core
    overflowed there too, and project and gradients raised "the norm overflowed". The scaled sweep scales each
    core before its QR (the Q factors do not change). (A rank-1 point's plain sweep overflows to inf, not NaN:
    the fallback from a plain sweep whose result does not cast back is what reaches the scaled one there.)"""
    big = 2.5e38 * (0.5 + 0.5 * torch.rand(1, 3, 2, generator=gen, dtype=torch.float64))
    small = 1e-30 * torch.randn(2, 4, 1, generator=gen, dtype=torch.float64)
    one = (
        torch.full((1, 2, 1), 2.5e38, dtype=torch.float64),
        torch.full((1, 3, 1), 1e-30, dtype=torch.float64),
    )
    for cores in ((big, small), one):
        x = tt.TensorTrain([c.float() for c in cores])
        x64 = tt.TensorTrain([c.float().double() for c in cores])  # (the same values)
        z = torch.randn(*x.shape, generator=gen, dtype=torch.float64)
        close(tt.full(tt.project(z.float(), x)), tt.full(tt.project(z, x64)))
        close(tt.full(tt.gradients(tt.frobenius_norm_squared, x)), 2 * tt.full(x64))


@pytest.mark.parametrize("where", [0, 1, 2])
def test_orthogonalize_and_inner_products_with_a_core_whose_own_norm_overflows(gen, where):
    """Float32 TTs with entries of about 1e9 whose first, middle or last core alone is past float32's largest
    value (entries up to 2.5e38, the others near 1e-15): orthogonalize's scaled sweep scaled only the R it
    carried, so the QR of such a core (or its product with a carried R) overflowed and raised "the norm
    overflowed", and flat_inner's scaled sweep scaled only the first operand's core, so a step gave inf (true
    value 1e17). Both scale every core they use; single TTs and batches alike, float64 values as the oracle."""
    shapes = [(1, 2, 2), (2, 3, 2), (2, 2, 1)]
    cores = [1e-15 * (0.5 + torch.rand(*s, generator=gen, dtype=torch.float64)) for s in shapes]
    cores[where] = 2.5e38 * (0.5 + 0.5 * torch.rand(*shapes[where], generator=gen, dtype=torch.float64))
    x = tt.TensorTrain([c.float() for c in cores])
    want = tt.full(tt.TensorTrain([c.float().double() for c in cores]))  # (the same values)
    xb = tt.TensorTrainBatch([c.unsqueeze(0).expand(2, *c.shape) for c in x.tt_cores])
    for ltr in (True, False):
        close(tt.full(tt.orthogonalize(x, left_to_right=ltr)), want)
        close(tt.full(tt.orthogonalize(xb, left_to_right=ltr))[1], want)
    square = float((want * want).sum())
    assert abs(float(tt.flat_inner(x, x)) / square - 1) <= 1e-5
    assert abs(float(tt.flat_inner(xb, xb)[1]) / square - 1) <= 1e-5


@pytest.mark.parametrize("where", [0, 1, 2])
def test_riemannian_gradient_from_cores_with_a_core_whose_own_norm_overflows(gen, where):
    """As above, for riemannian_gradient_from_cores: its interface Gram sweeps scaled the carried matrix but not
    the point's cores, so a step with a middle core of 2.5e38 overflowed and the pseudo-inverse's SVD failed on
    inf. It matches the float64 gradient at the same values."""
    shapes = [(1, 3, 2), (2, 4, 2), (2, 2, 1)]
    cores = [1e-15 * (0.5 + torch.rand(*s, generator=gen, dtype=torch.float64)) for s in shapes]
    cores[where] = 2.5e38 * (0.5 + 0.5 * torch.rand(*shapes[where], generator=gen, dtype=torch.float64))
    z = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    got = []
    for dtype in (torch.float32, torch.float64):
        x = tt.TensorTrain([c.float().to(dtype).requires_grad_() for c in cores])
        grads = torch.autograd.grad((tt.full(x).double() * z).sum(), x.tt_cores)
        got.append(tt.full(tt.optim.riemannian_gradient_from_cores(x, list(grads))))
    close(got[0], got[1])


def test_tt_svd_with_gradients_of_entries_at_the_top_of_float64(gen):
    """With gradients possible, an SVD whose top singular value leaves the fourth roots of the range is taken again
    scaled by 2^-e; e must stay where 2^e is a float64 (below 1024): an entry of 1.5e308 gave e = 1024, whose
    factor back overflowed to inf ("the tensor's norm overflows float64") where the result fits."""
    x = torch.zeros(2, 2, dtype=torch.float64)
    x[0, 0], x[1, 1] = 1.5e308, 1e307
    x.requires_grad_()
    a = tt.to_tt_tensor(x, max_tt_rank=1)
    assert all(bool(torch.isfinite(c).all()) for c in a.tt_cores)
    torch.testing.assert_close(
        tt.full(a).detach(), torch.tensor([[1.5e308, 0.0], [0.0, 0.0]], dtype=torch.float64)
    )


@pytest.mark.parametrize("where", [0, 1, 2])
def test_scaled_sweeps_under_compile_with_a_core_whose_own_norm_overflows(gen, where):
    """Under torch.compile the QR sweeps of orthogonalize and of the tangent frame run scaled directly (nothing may
    sync): a carried R scaled near 1 times a raw core of 2.5e38 summed past float32's range, so a compiled
    project of a point with such a middle or last core gave NaN. Each core is scaled before its product."""
    shapes = [(1, 2, 3), (3, 3, 3), (3, 2, 1)]
    cores = [1e-15 * (0.9 + 0.1 * torch.rand(*s, generator=gen, dtype=torch.float64)) for s in shapes]
    cores[where] = 2.5e38 * (0.9 + 0.1 * torch.rand(*shapes[where], generator=gen, dtype=torch.float64))
    x = tt.TensorTrain([c.float() for c in cores])
    x64 = tt.TensorTrain([c.float().double() for c in cores])  # (the same values)
    z = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    project = torch.compile(lambda t, w: tt.full(tt.project(w, t)), backend="eager")
    orth = torch.compile(lambda t, ltr: tt.full(tt.orthogonalize(t, left_to_right=ltr)), backend="eager")
    close(project(x, z.float()), tt.full(tt.project(z, x64)))
    for ltr in (True, False):
        close(orth(x, ltr), tt.full(x64))
