"""Initializers: the promised statistics of the FULL tensor are measured, constants are exact, bad input is
refused with a message."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from tensortrain import initializers as init


def dense(x) -> torch.Tensor:
    """Full tensor from the cores (own oracle, independent of tt.full): batch axis kept first."""
    b = isinstance(x, tt.TensorTrainBatch)
    cores = [c if b else c.unsqueeze(0) for c in x.tt_cores]
    res = cores[0].reshape(cores[0].shape[0], -1, cores[0].shape[-1])
    for c in cores[1:]:
        res = torch.einsum("bir,brj->bij", res, c.reshape(c.shape[0], c.shape[1], -1))
        res = res.reshape(res.shape[0], -1, c.shape[-1])
    if x.is_tt_matrix():
        rows, cols = x.raw_shape
        d = len(rows)
        inter = [v for pair in zip(rows, cols, strict=True) for v in pair]
        res = res.reshape(-1, *inter).permute(0, *range(1, 2 * d + 1, 2), *range(2, 2 * d + 2, 2))
        res = res.reshape(-1, math.prod(rows), math.prod(cols))
    else:
        res = res.reshape(-1, *x.raw_shape)
    return res if b else res[0]


def assert_moment(samples: torch.Tensor, target: float, name: str) -> None:
    """``samples`` are i.i.d. per-draw statistics with expectation ``target``: the sample mean must lie within
    5 standard errors (a false alarm has probability < 1e-6 under a normal approximation), and the standard
    error must be small enough (< 5% of the target) that a wrong scale would be caught."""
    est = samples.mean().item()
    se = samples.std().item() / math.sqrt(samples.numel())
    assert se < 0.05 * abs(target), f"{name}: too few samples, standard error {se} vs target {target}"
    assert abs(est - target) <= 5 * se, f"{name}: measured {est}, expected {target} (se {se})"


def per_draw_variance(fulls: torch.Tensor) -> torch.Tensor:
    """Mean of squared entries of each draw (the leading axis): an unbiased estimate of the entry variance
    for zero-mean entries, and independent across draws."""
    return fulls.reshape(fulls.shape[0], -1).pow(2).mean(dim=1)


# ------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize(
    ("shape", "rank", "stddev"),
    [((3, 4, 5), 2, 1.0), ((2, 3, 2, 3), (1, 2, 5, 3, 1), 0.3), ((6,), 4, 2.0), ((2, 2, 2), 50, 1.5)],
)
def test_random_tensor_batch_full_variance(gen, shape, rank, stddev):
    b = tt.random_tensor_batch(shape, rank, batch_size=4000, stddev=stddev, generator=gen)
    fulls = dense(b)
    assert_moment(per_draw_variance(fulls), stddev**2, "variance")
    # mean 0: the per-draw means are centred (tolerance from their own spread)
    means = fulls.reshape(4000, -1).mean(dim=1)
    assert abs(means.mean().item()) <= 5 * means.std().item() / math.sqrt(4000)


def test_random_tensor_single_draws_match_batch_variance(gen):
    # The non-batch function uses the same scaling: 1500 independent draws of a (4, 4, 4) rank-3 TT.
    fulls = torch.stack(
        [dense(tt.random_tensor((4, 4, 4), 3, stddev=0.7, generator=gen)) for _ in range(1500)]
    )
    assert_moment(per_draw_variance(fulls), 0.49, "variance")


@pytest.mark.parametrize(
    ("fn", "target"),
    [
        (tt.glorot_initializer, lambda m, n: 2.0 / (m + n)),
        (tt.he_initializer, lambda m, n: 2.0 / m),
        (tt.lecun_initializer, lambda m, n: 1.0 / m),
        (lambda s, r, generator: tt.random_matrix(s, r, stddev=0.5, generator=generator), lambda m, n: 0.25),
    ],
    ids=["glorot", "he", "lecun", "random_matrix"],
)
def test_matrix_schemes_full_variance(gen, fn, target):
    shape = [[2, 3, 2], [3, 2, 4]]  # M = 12 rows (fan_in, as t3f), N = 24 columns
    fulls = torch.stack([dense(fn(shape, 3, generator=gen)) for _ in range(1500)])
    assert fulls.shape == (1500, 12, 24)
    assert_moment(per_draw_variance(fulls), target(12, 24), "variance")


def test_random_matrix_batch_full_variance(gen):
    b = tt.random_matrix_batch([[2, 3], [4, 2]], tt_rank=5, batch_size=3000, stddev=0.2, generator=gen)
    assert_moment(per_draw_variance(dense(b)), 0.04, "variance")


def test_glorot_is_random_matrix_with_glorot_stddev():
    shape = [[4, 7], [5, 5]]
    a = tt.glorot_initializer(shape, 3, generator=torch.Generator().manual_seed(7))
    b = tt.random_matrix(
        shape, 3, stddev=math.sqrt(2 / (28 + 25)), generator=torch.Generator().manual_seed(7)
    )
    for ca, cb in zip(a.tt_cores, b.tt_cores, strict=True):
        torch.testing.assert_close(ca, cb, rtol=0, atol=0)


def test_core_std_formula_is_exact():
    # s = (stddev^2 / (r_1 ... r_{d-1}))^(1/(2d)): with a huge sample of core entries the measured core std
    # matches it (checks the scaling, independently of the full-tensor statistics above).
    b = tt.random_tensor_batch((3, 3, 3), (1, 2, 3, 1), batch_size=2000, stddev=2.0, dtype=torch.float64)
    expected = (4.0 / 6) ** (1 / 6)
    for c in b.tt_cores:
        assert abs(c.std().item() - expected) < 5 * expected / math.sqrt(2 * c.numel())


# ----------------------------------------------------------------------------------------- nonzero mean
@pytest.mark.parametrize("batch", [False, True])
def test_nonzero_mean_adds_mean_times_ones(batch):
    def draw(mean):
        g = torch.Generator().manual_seed(3)
        if batch:
            return tt.random_matrix_batch([[2, 3, 2], [2, 2, 3]], 2, 3, mean, 0.5, generator=g)
        return tt.random_matrix([[2, 3, 2], [2, 2, 3]], 2, mean, 0.5, generator=g)

    shifted, centred = draw(1.5), draw(0.0)
    assert shifted.tt_ranks == (1, 3, 3, 1)  # t3f: tt + mean * ones raises the inner ranks by 1
    assert_close(dense(shifted), dense(centred) + 1.5)


def test_nonzero_mean_single_core():
    a = tt.random_tensor((5,), 2, mean=-2.0, generator=torch.Generator().manual_seed(0))
    b = tt.random_tensor((5,), 2, generator=torch.Generator().manual_seed(0))
    assert_close(dense(a), dense(b) - 2.0)


# ----------------------------------------------------------------------------------- shapes, ranks, seeds
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    rank=st.integers(1, 6),
    batch=st.one_of(st.none(), st.integers(1, 3)),
)
def test_ranks_are_clipped_to_max_useful_ranks(shape, rank, batch):
    x = tt.random_tensor(shape, rank) if batch is None else tt.random_tensor_batch(shape, rank, batch)
    expected = tuple(min(rank, m) if 0 < k < len(shape) else 1 for k, m in enumerate(tt.max_tt_ranks(shape)))
    assert x.tt_ranks == expected
    assert x.raw_shape == tuple(shape)
    assert x.dtype == torch.get_default_dtype()


def test_ranks_clipped_for_matrices_use_mode_products():
    x = tt.random_matrix([[2, 2, 2], [1, 3, 1]], tt_rank=100)
    assert x.tt_ranks == tt.max_tt_ranks((2, 6, 2)) == (1, 2, 2, 1)


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    ranks=st.lists(st.integers(1, 9), min_size=3, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
@example(shape=[4, 2, 4, 4], ranks=[1, 8, 8], seed=0)  # bond 2: 1 * 2 rows, its unfolding's rank 8
@example(shape=[2, 2, 4], ranks=[1, 8, 1], seed=0)
def test_uneven_ranks_are_the_ranks_tt_svd_gives(shape, ranks, seed):
    """Ranks were clipped bond by bond only: (1, 1, 8, 1) on modes (4, 4, 16) kept 8 where core 1 has 1 * 4 rows,
    so TT-SVD's cores with the same caps (1, 1, 4, 1) did not fit, and 4 rank slices were redundant. Every
    builder of cores now gives TT-SVD's ranks of a generic tensor."""
    caps = [1, *ranks[: len(shape) - 1], 1]
    dense_x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = tt.to_tt_tensor(dense_x, max_tt_rank=caps).tt_ranks
    assert tt.svd_tt_ranks(caps, shape) == want
    assert tt.random_tensor(shape, caps).tt_ranks == want
    assert tt.random_tensor_batch(shape, caps, 2).tt_ranks == want
    assert tt.tensor_with_random_cores(shape, tt_rank=caps).tt_ranks == want
    rows = [max(1, n // 2) for n in shape]  # a matrix with the same mode products (n = 1..4 all split)
    cols = [n // r for n, r in zip(shape, rows, strict=True)]
    assert tt.glorot_initializer([rows, cols], caps).tt_ranks == want
    layer = tt.nn.TTLinear(math.prod(cols), math.prod(rows), tt_rank=caps, in_dims=cols, out_dims=rows)
    assert layer.tt_ranks == want
    emb = tt.nn.TTEmbedding(math.prod(rows), math.prod(cols), tt_rank=caps, voc_dims=rows, emb_dims=cols)
    assert emb.tt_ranks == want


def test_svd_tt_ranks_errors_name_it():
    with pytest.raises(TypeError, match=r"^svd_tt_ranks: raw_shape must be an ordered sequence"):
        tt.svd_tt_ranks(2, 5)
    with pytest.raises(tt.ShapeError, match=r"^svd_tt_ranks: expected at least one mode size"):
        tt.svd_tt_ranks(2, [])
    # a bound from the left only, as TT-SVD's
    assert tt.svd_tt_ranks((1, 8, 1, 1), (16, 4, 4)) == (1, 8, 1, 1)


_SEEDED = [
    lambda g: tt.random_tensor((3, 4), 2, generator=g),
    lambda g: tt.random_tensor_batch((3, 4), 2, 2, generator=g),
    lambda g: tt.random_matrix([[2, 3], [3, 2]], 2, generator=g),
    lambda g: tt.random_matrix_batch([[2, 3], [3, 2]], 2, 2, generator=g),
    lambda g: tt.glorot_initializer([[2, 3], [3, 2]], 2, generator=g),
    lambda g: tt.he_initializer([[2, 3], [3, 2]], 2, generator=g),
    lambda g: tt.lecun_initializer([[2, 3], [3, 2]], 2, generator=g),
    lambda g: tt.tensor_with_random_cores((3, 4), 2, generator=g),
    lambda g: tt.tensor_batch_with_random_cores((3, 4), 2, 2, generator=g),
    lambda g: tt.matrix_with_random_cores([[2, 3], [3, 2]], 2, generator=g),
    lambda g: tt.matrix_batch_with_random_cores([[2, 3], [3, 2]], 2, 2, generator=g),
]


@pytest.mark.parametrize("draw", _SEEDED)
def test_seeded_draws_repeat_and_differ(draw):
    a, b, c = (draw(torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.tt_cores, b.tt_cores, strict=True))
    assert not torch.equal(a.tt_cores[0], c.tt_cores[0])


_ON_DEVICE = [
    lambda d: tt.random_tensor((2, 3), device=d),
    lambda d: tt.random_tensor_batch((2, 3), batch_size=2, device=d),
    lambda d: tt.random_matrix([[2, 3], [3, 2]], device=d),
    lambda d: tt.glorot_initializer([[2, 3], [3, 2]], device=d),
    lambda d: tt.he_initializer([[2, 3], [3, 2]], device=d),
    lambda d: tt.lecun_initializer([[2, 3], [3, 2]], device=d),
    lambda d: tt.tensor_with_random_cores((2, 3), device=d),
    lambda d: tt.matrix_batch_with_random_cores([[2], [3]], 2, 2, device=d),
    lambda d: tt.tensor_ones((2, 3), device=d),
    lambda d: tt.matrix_zeros([[2], [3]], device=d),
    lambda d: tt.eye((2, 3), device=d),
    lambda d: tt.ones_like(tt.tensor_zeros((2, 3), device=d)),
    lambda d: tt.zeros_like(tt.matrix_ones([[2], [3]], device=d)),
]


@pytest.mark.parametrize("make", _ON_DEVICE)
def test_device_is_followed(make):
    """The meta device stands in for an accelerator: every constructor must place its cores there."""
    assert all(c.device.type == "meta" for c in make("meta").tt_cores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype):
    for x in (
        tt.random_tensor((2, 3), dtype=dtype, device="cpu"),
        tt.random_matrix_batch([[2], [3]], batch_size=2, dtype=dtype),
        tt.glorot_initializer([[2], [3]], dtype=dtype),
        tt.tensor_ones((2, 3), dtype),
        tt.eye((2,), dtype=dtype),
    ):
        assert x.dtype == dtype and x.device.type == "cpu"


# t3f's positional orders (t3f/initializers.py): dtype follows t3f's other parameters, so t3f calls port as
# they are.
_T3F_MATRIX = ((2, 3), (4, 5))
T3F_POSITIONAL_DTYPE_CALLS = [
    (tt.random_tensor, ((3, 4), 2, 0.0, 1.0)),
    (tt.random_tensor_batch, ((3, 4), 2, 3, 0.0, 1.0)),
    (tt.random_matrix, (_T3F_MATRIX, 2, 0.0, 1.0)),
    (tt.random_matrix_batch, (_T3F_MATRIX, 2, 3, 0.0, 1.0)),
    (tt.tensor_with_random_cores, ((3, 4), 2, 0.0, 1.0)),
    (tt.tensor_batch_with_random_cores, ((3, 4), 2, 3, 0.0, 1.0)),
    (tt.matrix_with_random_cores, (_T3F_MATRIX, 2, 0.0, 1.0)),
    (tt.matrix_batch_with_random_cores, (_T3F_MATRIX, 2, 3, 0.0, 1.0)),
    (tt.glorot_initializer, (_T3F_MATRIX, 2)),
    (tt.he_initializer, (_T3F_MATRIX, 2)),
    (tt.lecun_initializer, (_T3F_MATRIX, 2)),
    (tt.tensor_ones, ((3, 4),)),
    (tt.tensor_zeros, ((3, 4),)),
    (tt.matrix_ones, (_T3F_MATRIX,)),
    (tt.matrix_zeros, (_T3F_MATRIX,)),
    (tt.eye, ((3, 4),)),
]


@pytest.mark.parametrize(("fn", "args"), T3F_POSITIONAL_DTYPE_CALLS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_t3f_positional_dtype(fn, args, dtype):
    x = fn(*args, dtype)
    assert x.dtype == dtype
    if len(args) >= 2:  # tt_rank, and batch_size where t3f has it, were read positionally too
        assert max(x.tt_ranks) == 2
    if fn.__name__.endswith("_batch") or "_batch_" in fn.__name__:
        assert x.batch_size == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda: tt.random_tensor(np.array([3, 4, 5]), 2),
        lambda: tt.random_tensor_batch(np.array([3, 4, 5]), np.int64(2), np.int64(3)),
        lambda: tt.tensor_ones(np.array([3, 4, 5])),
        lambda: tt.eye(np.array([3, 4, 5])),
        lambda: tt.tensor_with_random_cores(np.array([3, 4, 5], dtype=np.int32)),
    ],
)
def test_numpy_tensor_shapes_as_t3f_documents(call):
    assert call().raw_shape in ((3, 4, 5), ((3, 4, 5), (3, 4, 5)))


@pytest.mark.parametrize(
    "shape",
    [
        np.array([[2, 3], [4, 5]]),
        [np.array([2, 3]), np.array([4, 5])],
        (np.array([2, 3]), [4, np.int64(5)]),
        np.array([np.array([2, 3]), None], dtype=object),
    ],
)
def test_numpy_matrix_shapes_as_t3f_documents(shape):
    side = None if shape[1] is None else (4, 5)
    for fn in (tt.random_matrix, tt.random_matrix_batch, tt.glorot_initializer, tt.matrix_ones):
        x = fn(shape)
        assert x.raw_shape[0] == (2, 3) and x.raw_shape[1] == (side or (1, 1))


def test_vector_shapes_with_none_side():
    col = tt.random_matrix([[2, 3], None], 2)
    row = tt.matrix_ones([None, [2, 3]])
    assert col.raw_shape == ((2, 3), (1, 1)) and col.shape == (6, 1)
    assert row.raw_shape == ((1, 1), (2, 3)) and row.shape == (1, 6)


def test_iid_core_initializers():
    g = torch.Generator().manual_seed(0)
    x = tt.tensor_batch_with_random_cores((4, 4), 3, 500, mean=1.0, stddev=0.5, generator=g)
    core = x.tt_cores[1]
    assert abs(core.mean().item() - 1.0) < 5 * 0.5 / math.sqrt(core.numel())
    assert abs(core.std().item() - 0.5) < 5 * 0.5 / math.sqrt(2 * core.numel())
    for x in (
        tt.tensor_with_random_cores((50, 50), 2, mean=1.0, stddev=0.5, generator=g),
        tt.matrix_with_random_cores([[10, 10], [10, 10]], 2, mean=1.0, stddev=0.5, generator=g),
        tt.matrix_batch_with_random_cores([[10, 10], [10, 10]], 2, 4, mean=1.0, stddev=0.5, generator=g),
    ):
        values = torch.cat([c.flatten() for c in x.tt_cores])
        assert abs(values.mean().item() - 1.0) < 5 * 0.5 / math.sqrt(values.numel())
        assert abs(values.std().item() - 0.5) < 5 * 0.5 / math.sqrt(2 * values.numel())
    assert tt.tensor_with_random_cores((2, 3), 2).tt_ranks == (1, 2, 1)
    assert tt.matrix_with_random_cores([[2, 2], [3, 3]], 2).shape == (4, 9)
    assert tt.matrix_batch_with_random_cores([[2, 2], [3, 3]], 2, 4).shape == (4, 4, 9)


# ------------------------------------------------------------------------------------------- constants
def test_constants_are_exact():
    assert_close(dense(tt.tensor_ones((2, 3, 4))), torch.ones(2, 3, 4, dtype=torch.get_default_dtype()))
    assert_close(dense(tt.tensor_zeros((2, 3))), torch.zeros(2, 3, dtype=torch.get_default_dtype()))
    assert_close(
        dense(tt.matrix_ones([[2, 3], [4, 1]], torch.float64)), torch.ones(6, 4, dtype=torch.float64)
    )
    assert_close(dense(tt.matrix_zeros([[2, 3], [4, 1]])), torch.zeros(6, 4))
    assert_close(dense(tt.eye((2, 3, 2), torch.float64)), torch.eye(12, dtype=torch.float64))


def test_like_functions_follow_the_input():
    x = tt.random_matrix_batch([[2, 3], [4, 1]], 2, batch_size=3, dtype=torch.float64)
    ones = tt.ones_like(x)
    assert isinstance(ones, tt.TensorTrain) and ones.dtype == torch.float64
    assert_close(dense(ones), torch.ones(6, 4, dtype=torch.float64))
    assert_close(dense(tt.zeros_like(tt.random_tensor((2, 5)))), torch.zeros(2, 5))


def test_public_names_exported():
    for name in init.__all__:
        assert getattr(tt, name) is getattr(init, name)
        assert getattr(init, name).__doc__


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: tt.random_tensor((2, 0, 3)), tt.ShapeError, r"mode sizes must be >= 1, got \(2, 0, 3\)"),
        (lambda: tt.random_tensor((2, -1)), tt.ShapeError, r">= 1"),
        (lambda: tt.random_tensor((2, 2.5)), TypeError, r"mode sizes must be ints, got \(2, 2.5\)"),
        (lambda: tt.random_tensor((2, True)), TypeError, r"must be ints"),
        (lambda: tt.random_tensor("abc"), TypeError, r"expected a sequence of ints, got str"),
        (lambda: tt.random_tensor(5), TypeError, r"expected a sequence of ints, got int"),
        (lambda: tt.random_tensor(()), tt.ShapeError, r"empty shape"),
        (lambda: tt.random_tensor((2, 3), 0), tt.ShapeError, r"tt_rank values must be >= 1"),
        (lambda: tt.random_tensor((2, 3, 4), (1, 2, 2)), tt.ShapeError, r"tt_rank must be an int, 2 inner"),
        (lambda: tt.random_tensor((2, 3), 1.5), TypeError, r"tt_rank"),
        (lambda: tt.random_tensor((2, 3), stddev=-1.0), ValueError, r"stddev must be a finite number >= 0"),
        (
            lambda: tt.random_tensor((2, 3), stddev="0.5"),
            TypeError,
            r"stddev must be a real number, got '0.5'",
        ),
        (lambda: tt.random_tensor((2, 3), mean=float("nan")), ValueError, r"mean must be finite, got nan"),
        (
            lambda: tt.random_matrix([[2], [3]], mean=float("inf")),
            ValueError,
            r"mean must be finite, got inf",
        ),
        (lambda: tt.random_tensor((2, 3), mean=True), TypeError, r"mean must be a real number, got True"),
        (lambda: tt.random_tensor((2, 3), mean=1j), TypeError, r"mean must be a real number"),
        (
            lambda: tt.tensor_with_random_cores((2, 3), mean="1"),
            TypeError,
            r"mean must be a real number",
        ),
        (lambda: tt.random_tensor((2, 3), dtype=torch.int64), TypeError, r"floating point"),
        (lambda: tt.random_tensor_batch((2, 3), batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
        (lambda: tt.random_tensor_batch((2, 3), batch_size=2.0), TypeError, r"batch_size must be an int"),
        (lambda: tt.random_matrix_batch([[2], [3]], 2, 0), ValueError, r"batch_size must be >= 1, got 0"),
        (lambda: tt.random_matrix_batch([[2], [3]], 2, 2.0), TypeError, r"batch_size must be an int"),
        (lambda: tt.matrix_batch_with_random_cores([[2], [3]], 2, 0), ValueError, r"batch_size must be >= 1"),
        (
            lambda: tt.matrix_batch_with_random_cores([[2], [3]], 2, 2.0),
            TypeError,
            r"batch_size must be an int",
        ),
        (lambda: tt.tensor_batch_with_random_cores((2, 3), 2, 0), ValueError, r"batch_size must be >= 1"),
        (lambda: tt.tensor_batch_with_random_cores((2, 3), 2, 2.0), TypeError, r"batch_size must be an int"),
        (
            lambda: tt.tensor_with_random_cores((2, 3), stddev=-1.0),
            ValueError,
            r"stddev must be a finite number >= 0, got -1.0",
        ),
        (
            lambda: tt.matrix_batch_with_random_cores([[2], [3]], stddev=-1.0),
            ValueError,
            r"stddev must be a finite number >= 0, got -1.0",
        ),
        (lambda: tt.random_matrix([[2, 3], [4]]), tt.ShapeError, r"same length, got rows \(2, 3\)"),
        (lambda: tt.random_matrix([2, 3, 4]), TypeError, r"\[\[row dims\], \[col dims\]\]"),
        (lambda: tt.random_matrix([None, None]), tt.ShapeError, r"at most one side"),
        (lambda: tt.glorot_initializer([[2, 0], [3, 3]]), tt.ShapeError, r"row dims.*>= 1"),
        (lambda: tt.he_initializer([[2], [3, 3]]), tt.ShapeError, r"he_initializer"),
        (lambda: tt.lecun_initializer([[2], [3.0]]), TypeError, r"lecun_initializer.*ints"),
        (lambda: tt.eye((2, 0)), tt.ShapeError, r"eye: shape"),
        (lambda: tt.matrix_zeros([[1], [2]], torch.int32), TypeError, r"floating point"),
        (lambda: tt.ones_like(torch.ones(3)), TypeError, r"ones_like expects a TensorTrain"),
        (
            lambda: tt.random_tensor(np.array([3.0, 4.0])),
            TypeError,
            r"random_tensor: shape: mode sizes must be ints, got \(3.0, 4.0\)",
        ),
        (lambda: tt.random_tensor(np.array(["3", "4"])), TypeError, r"mode sizes must be ints"),
        (
            lambda: tt.random_tensor(np.array(5)),
            TypeError,
            r"expected a 1-D sequence of ints, got a 0-D ndarray",
        ),
        (
            lambda: tt.eye(np.array([[2, 3], [4, 5]])),
            TypeError,
            r"eye: shape: expected a 1-D sequence of ints, got a 2-D ndarray",
        ),
        (
            lambda: tt.random_matrix(np.array([[2.0, 3.0], [4.0, 5.0]])),
            TypeError,
            r"random_matrix: shape \(row dims\): mode sizes must be ints",
        ),
        (
            lambda: tt.random_matrix(np.array([[[2]], [[3]]])),
            TypeError,
            r"\[\[row dims\], \[col dims\]\]",
        ),
        # tt_rank: full ranks must start and end with 1 (t3f makes cores of those ranks, which cannot chain);
        # only the rank CAPS of to_tt_tensor / to_tt_matrix / round ignore their boundary values
        (
            lambda: tt.random_tensor((2, 3, 4), (2, 2, 2, 2)),
            tt.ShapeError,
            r"tt_rank: boundary ranks must be 1, got \(2, 2, 2, 2\)",
        ),
        (lambda: tt.random_tensor((2, 3), 2.5), TypeError, r"tt_rank must be an int or a sequence"),
    ],
)
def test_bad_input_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_nonzero_mean_keeps_a_half_precision_dtype(dtype):
    for x in (tt.random_tensor((3, 4), 2, 1.0, 1.0, dtype), tt.random_matrix([[2], [3]], 2, 1.0, 1.0, dtype)):
        assert [c.dtype for c in x.tt_cores] == [dtype] * x.ndims()


def test_dense_variances_are_the_dense_schemes():
    """Exact values with fan_in != fan_out (the statistical tests cannot tell 2/(fi+fo) from 2/(2 fi) there)."""
    from tensortrain.nn.init import dense_variance

    assert dense_variance("glorot", 784, 625) == pytest.approx(2 / (784 + 625), rel=1e-12)
    assert dense_variance("glorot", 24, 20) == pytest.approx(2 / 44, rel=1e-12)
    assert dense_variance("he", 24, 20) == pytest.approx(2 / 24, rel=1e-12)
    assert dense_variance("lecun", 24, 20) == pytest.approx(1 / 24, rel=1e-12)
    for fans in ((5, 0), (0, 5)):
        with pytest.raises(ValueError, match="got 5, 0|got 0, 5"):
            dense_variance("he", *fans)


def test_many_cores_of_high_rank_are_not_zero_or_overflowing():
    """The product of all ranks overflows a float (OverflowError) or stddev^2 / product underflows to 0
    (all-zero "random" cores): the per-core std is taken in logs."""
    x = tt.glorot_initializer([[2] * 150, [2] * 150], tt_rank=100)
    inner = torch.cat([c.flatten() for c in x.tt_cores[1:-1]])
    assert abs(float(inner.std()) - 0.0745) < 0.005  # (2 / (M + N) / 100^149)^(1/300)
    y = tt.random_tensor([4] * 150, tt_rank=100, stddev=1e-20, dtype=torch.float64)
    assert all(float(c.abs().max()) > 0 for c in y.tt_cores)
    assert tt.random_tensor([2] * 200, tt_rank=40).tt_ranks[1:4] == (2, 4, 8)
    from tensortrain.nn.init import tt_normal_

    cores = [torch.empty(1 if k == 0 else 40, 2, 1 if k == 199 else 40) for k in range(200)]
    tt_normal_(cores, 1.0)
    assert all(bool(c.isfinite().all()) and float(c.abs().max()) > 0 for c in cores)
    for bad in (True, "1"):
        with pytest.raises(TypeError, match="variance must be a real number"):
            tt_normal_([torch.empty(1, 2, 1)], bad)


def test_whole_float_ranks_port_from_t3f():
    """t3f casts tt_rank with astype(int): r * np.ones(d - 1) is valid t3f code; only fractions are mistakes."""
    import numpy as np

    assert tt.random_tensor((2, 3, 4), 2.0).tt_ranks == (1, 2, 2, 1)
    assert tt.random_matrix(((2, 3, 2), (2, 3, 2)), 2 * np.ones(2)).tt_ranks == (1, 2, 2, 1)
    assert tt.nn.TTLinear(12, 20, tt_rank=torch.tensor(2.0)).tt_ranks == (1, 2, 1)
    for bad in (2.5, True, float("nan"), [2, 2.5]):
        with pytest.raises(TypeError, match="tt_rank must"):
            tt.random_tensor((2, 3, 4), bad)


def test_tt_normal_refuses_cores_that_are_not_one_tt():
    """A batch's 5-D cores (the batch size read as a rank: variance 0.02 instead of 1), ranks that do not chain
    and 1-D tensors were filled silently."""
    from tensortrain.nn.init import tt_normal_

    for cores in (
        [torch.empty(100, 1, 3, 2, 2), torch.empty(100, 2, 3, 2, 1)],
        [torch.empty(1, 3, 2), torch.empty(5, 3, 1)],
        [torch.empty(2, 3, 1)],
        [torch.empty(4)],
        [torch.empty(1, 3, 2), torch.empty(2, 3, 4, 1)],
    ):
        with pytest.raises(tt.ShapeError, match="tt_normal_: "):
            tt_normal_(cores, 1.0)


def test_fans_past_the_float_range():
    """glorot/he/lecun and dense_variance computed 2 / (M + N) with ints past the float range (1030 modes of 2):
    an OverflowError, though the std they give is a plain float."""
    w = tt.glorot_initializer([[2] * 1030, [2] * 1030], tt_rank=2, dtype=torch.float64)
    assert all(torch.isfinite(c).all() and c.abs().sum() > 0 for c in w.tt_cores)
    assert tt.he_initializer([[2] * 1030, [2] * 1030], tt_rank=2).tt_ranks[1] == 2
    assert tt.nn.init.dense_variance("glorot", 2**1030, 2**1030) == pytest.approx(2.0**-1030)
    v = tt.nn.init.dense_variance("he", torch.tensor(4), 3)  # a tensor fan: a float all the same
    assert type(v) is float and v == pytest.approx(0.5)


@pytest.mark.parametrize(
    "value", [np.complex128(2j), np.bool_(True), torch.tensor(1 + 1j), torch.tensor(True)]
)
def test_numpy_and_torch_scalars_that_are_not_real_are_refused(value):
    """True and 1j were refused, but numpy's and torch's: a complex stddev lost its imaginary part (a zero TT,
    with only a ComplexWarning), a numpy bool passed as 1.0, a complex tensor failed inside torch."""
    for kw in ({"stddev": value}, {"mean": value}):
        with pytest.raises(TypeError, match="must be a real number"):
            tt.random_tensor((3, 4), **kw)


def test_decimal_and_overflowing_moments():
    """A Decimal stddev was refused once scalars had to be numbers.Real; 10**400 failed with OverflowError."""
    import decimal

    assert tt.random_tensor((3, 4), stddev=decimal.Decimal("0.5")).tt_ranks == (1, 2, 1)
    with pytest.raises(ValueError, match="stddev must be finite"):
        tt.random_tensor((3, 4), stddev=10**400)


@pytest.mark.parametrize("mean", [0.0, 2.5])
def test_initializers_zero_stddev_is_exactly_the_mean(mean):
    # (test_initializers.py) stddev=0: no random part at all, every entry is exactly `mean`
    g = torch.Generator().manual_seed(0)
    x = tt.random_tensor((3, 4, 2), tt_rank=2, mean=mean, stddev=0.0, dtype=torch.float64, generator=g)
    assert torch.equal(tt.full(x), torch.full((3, 4, 2), mean, dtype=torch.float64))
    m = tt.random_matrix([[2, 3], [3, 2]], tt_rank=2, mean=mean, stddev=0.0, dtype=torch.float64, generator=g)
    assert torch.equal(tt.full(m), torch.full((6, 6), mean, dtype=torch.float64))
    # the batch versions pass the mean on too
    xb = tt.random_tensor_batch((3, 4), 2, 3, mean, 0.0, torch.float64, generator=g)
    assert torch.equal(tt.full(xb), torch.full((3, 3, 4), mean, dtype=torch.float64))
    mb = tt.random_matrix_batch([[2, 3], [3, 2]], 2, 3, mean, 0.0, torch.float64, generator=g)
    assert torch.equal(tt.full(mb), torch.full((3, 6, 6), mean, dtype=torch.float64))


# tt_normal_ draws from the generator it is given: equal seeds give equal cores
def test_tt_normal_uses_its_generator():
    def draw(seed):
        cores = [torch.empty(1, 2, 3, 2), torch.empty(2, 2, 3, 2), torch.empty(2, 2, 3, 1)]
        tt.nn.init.tt_normal_(cores, 0.5, generator=torch.Generator().manual_seed(seed))
        return cores

    torch.manual_seed(0)
    a = draw(7)
    torch.manual_seed(1)  # the global generator is not what decides
    b = draw(7)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(draw(8)[0], a[0])


# a TT-matrix's useful ranks bound the products m_k n_k, not the row modes alone
def test_matrix_with_random_cores_clips_ranks_by_row_times_column_modes(gen):
    m = tt.matrix_with_random_cores(((2, 2), (3, 3)), tt_rank=5, generator=gen)
    assert m.tt_ranks == (1, 5, 1)
    assert tt.matrix_with_random_cores(((2, 2), (3, 3)), tt_rank=9, generator=gen).tt_ranks == (1, 6, 1)
    b = tt.matrix_batch_with_random_cores(((2, 2), (3, 3)), tt_rank=5, batch_size=2, generator=gen)
    assert b.tt_ranks == (1, 5, 1)


@pytest.mark.parametrize(("fn", "args"), T3F_POSITIONAL_DTYPE_CALLS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex32])
def test_dtypes_without_kernels_are_refused_up_front(fn, args, dtype):
    """float8 reached torch.randn (NotImplementedError from its kernel); complex32 built the constants' cores,
    with torch's experimental-support warning, before the TT constructor refused them."""
    with pytest.raises(TypeError, match="16 bits or more|dtype must be|complex64 or complex128"):
        fn(*args, dtype=dtype)
