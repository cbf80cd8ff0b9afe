"""tt.ops core algebra against the dense oracle: full, transpose, cast, add, subtract, multiply, kron,
renormalize_tt_cores, and the operators that delegate to them."""

from __future__ import annotations

import fractions
import math
from unittest.mock import patch

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, random_tt, seeds, tensor_specs
from tensortrain import dense as tt_dense
from tensortrain import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_from_cores(cores: list[torch.Tensor], raw_shape) -> torch.Tensor:
    """An independent oracle for full(): explicit sum over rank indices via einsum on all cores."""
    matrix = isinstance(raw_shape[0], tuple)
    d = len(cores)
    letters = "abcdefghijklmnopqrstuvwxyz"
    ranks = letters[: d + 1]
    modes = letters[d + 1 :]
    terms, out_rows, out_cols = [], "", ""
    for k in range(d):
        if matrix:
            i, j = modes[2 * k], modes[2 * k + 1]
            terms.append(ranks[k] + i + j + ranks[k + 1])
            out_rows, out_cols = out_rows + i, out_cols + j
        else:
            terms.append(ranks[k] + modes[k] + ranks[k + 1])
            out_rows += modes[k]
    res = torch.einsum(",".join(terms) + "->" + ranks[0] + out_rows + out_cols + ranks[d], *cores)
    res = res[0, ..., 0]
    if matrix:
        res = res.reshape(math.prod(raw_shape[0]), math.prod(raw_shape[1]))
    return res


any_specs = st.one_of(tensor_specs(), matrix_specs())


# ----------------------------------------------------------------------------------------------------- full
@given(spec=any_specs, seed=seeds)
def test_full_matches_explicit_sum(spec, seed):
    raw, ranks = spec
    cores = random_cores(raw, ranks, gen=_gen(seed))
    assert_close(ops.full(tt.TensorTrain(cores)), _dense_from_cores(cores, raw))


@given(spec=any_specs, seed=seeds, b=st.integers(1, 3))
def test_full_batch_is_stack_of_elements(spec, seed, b):
    raw, ranks = spec
    x = random_tt(raw, ranks, gen=_gen(seed), batch_size=b)
    dense = ops.full(x)
    assert dense.shape == x.shape
    for i in range(b):
        assert_close(dense[i], ops.full(x[i]))


def test_full_float32(gen):
    cores = random_cores(((2, 3), (4, 2)), (1, 3, 1), gen=gen, dtype=torch.float32)
    res = ops.full(tt.TensorTrain(cores))
    assert res.dtype == torch.float32
    assert_close(res, _dense_from_cores([c.double() for c in cores], ((2, 3), (4, 2))).float())


def test_full_gradcheck(gen):
    cores = [c.requires_grad_() for c in random_cores(((2, 2), (3, 2)), (1, 2, 1), gen=gen)]
    assert torch.autograd.gradcheck(lambda *cs: ops.full(tt.TensorTrain(list(cs))), cores)


def _always_by_halves():
    """full() by halves wherever there are three cores or more: no size threshold."""
    return patch.multiple(tt_dense, _SWEPT_MATRIX=0, _SWEPT_TENSOR=0)


@given(
    spec=st.one_of(tensor_specs(min_d=3, max_rank=4), matrix_specs(min_d=3, max_mode=5, max_rank=4)),
    seed=seeds,
    b=st.sampled_from([None, 2]),
)
def test_full_by_halves_matches_explicit_sum(spec, seed, b):
    """Every TT-tensor and TT-matrix built by halves: any bond, both products of a matrix's halves (in W's
    layout, and GEMM then permute), batches."""
    raw, ranks = spec
    x = random_tt(raw, ranks, gen=_gen(seed), batch_size=b)
    with _always_by_halves():
        dense = ops.full(x)
    elements = [x] if b is None else [x[i] for i in range(b)]
    want = [_dense_from_cores(list(e.tt_cores), raw) for e in elements]
    assert_close(dense, want[0] if b is None else torch.stack(want))
    assert dense.is_contiguous()


@pytest.mark.parametrize("rank", [4, 16])  # a product in W's layout, and one GEMM then a permute
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_of_a_tutorial_sized_matrix(gen, rank, dtype):
    raw = ((4, 7, 4, 7), (5, 5, 5, 5))
    cores = random_cores(raw, (1, rank, rank, rank, 1), gen=gen, dtype=dtype)
    want = _dense_from_cores([c.double() for c in cores], raw)
    assert math.prod(want.shape) > tt_dense._SWEPT_MATRIX
    assert_close(ops.full(tt.TensorTrain(cores)), want.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_of_a_large_tensor_of_high_rank(gen, dtype):
    """4^8 at rank 16, above the modes: by halves; a batch of two."""
    raw = (4,) * 8
    x = random_tt(raw, (1, *[16] * 7, 1), gen=gen, batch_size=2, dtype=dtype)
    want = torch.stack([_dense_from_cores([c.double() for c in x[i].tt_cores], raw) for i in range(2)])
    assert math.prod(raw) > tt_dense._SWEPT_TENSOR
    assert_close(ops.full(x), want.to(dtype))


def test_full_by_halves_gradcheck(gen):
    for ranks in ((1, 1, 1, 1, 1), (1, 2, 2, 2, 1)):  # (in W's layout at rank 1; GEMM then permute at rank 2)
        for raw in (((2, 2, 2, 2), (2, 2, 2, 2)), (3, 2, 2, 3)):
            cores = [c.requires_grad_() for c in random_cores(raw, ranks, gen=gen)]
            with _always_by_halves():
                assert torch.autograd.gradcheck(lambda *cs: ops.full(tt.TensorTrain(list(cs))), cores)


def test_full_sweeps_two_cores_and_small_results():
    gen = torch.Generator().manual_seed(0)

    def bond(raw, ranks):
        swept = tt_dense._SWEPT_MATRIX if isinstance(raw[0], tuple) else tt_dense._SWEPT_TENSOR
        sizes = [math.prod(m) for m in zip(*raw, strict=True)] if isinstance(raw[0], tuple) else list(raw)
        return tt_dense._halves_bond(
            [c.unsqueeze(0) for c in random_cores(raw, ranks, gen=gen)], sizes, swept
        )

    assert bond((4,) * 8, (1, *[16] * 7, 1)) is not None
    assert bond((200, 200), (1, 4, 1)) is None  # two cores: the halves are the cores
    assert bond(((100, 100), (100, 100)), (1, 4, 1)) is None
    assert bond((4,) * 7, (1, *[16] * 6, 1)) is None  # 16384 entries
    assert bond((2,) * 15, (1, *[2] * 14, 1)) is None and bond((2,) * 16, (1, *[2] * 15, 1)) is not None
    # a TT-matrix of 8192 entries sweeps, one of 16384 does not
    assert bond(((2,) * 7, (2,) * 6 + (1,)), (1, *[2] * 6, 1)) is None
    assert bond(((2,) * 7, (2,) * 7), (1, *[2] * 6, 1)) is not None


@pytest.mark.parametrize(
    ("raw", "ranks", "sweeps"),
    [
        ((2,) * 15, (1, *[2] * 14, 1), 1),  # a TT-tensor of 32768 entries: one sweep
        ((2,) * 16, (1, *[2] * 15, 1), 2),  # 65536: two halves
        (((2,) * 7, (2,) * 6 + (1,)), (1, *[2] * 6, 1), 1),  # a TT-matrix of 8192 entries: one sweep
        (((2,) * 7, (2,) * 7), (1, *[2] * 6, 1), 2),  # 16384: two halves
    ],
)
def test_full_takes_the_halves_path_from_its_size_thresholds(gen, raw, ranks, sweeps, monkeypatch):
    calls = []
    real = tt_dense._full_steps
    monkeypatch.setattr(
        tt_dense, "_full_steps", lambda cores, scaled: calls.append(len(cores)) or real(cores, scaled)
    )
    x = tt.TensorTrain(random_cores(raw, ranks, gen=gen))
    got = ops.full(x)
    assert len(calls) == sweeps
    with patch.multiple(
        tt_dense, _SWEPT_MATRIX=2**62, _SWEPT_TENSOR=2**62
    ):  # (too many modes for the einsum oracle)
        assert_close(got, ops.full(x))


def test_full_cuts_at_the_cheapest_bond():
    """The bond of rank 1 between two rank-8 ones, not the middle one; a tie goes to the earlier bond."""
    raw = ((4, 4, 4, 4), (4, 4, 4, 4))
    cores = random_cores(raw, (1, 8, 1, 8, 1), gen=torch.Generator().manual_seed(0))
    assert tt_dense._halves_bond([c.unsqueeze(0) for c in cores], [16] * 4, 0) == 2
    cores = random_cores(raw, (1, 2, 8, 2, 1), gen=torch.Generator().manual_seed(0))
    assert tt_dense._halves_bond([c.unsqueeze(0) for c in cores], [16] * 4, 0) == 1
    # the right half's sweep starts from its bond's rank: 2 x 256 x 256 (s=2) against 1 x 16 x 4096 + 16 x 256
    # (s=1: the right half's sweep starts at rank 1, its last step costs 16 x 16 x 2 x 16 x 16)
    cores = random_cores(raw, (1, 1, 2, 16, 1), gen=torch.Generator().manual_seed(0))
    assert tt_dense._halves_bond([c.unsqueeze(0) for c in cores], [16] * 4, 0) == 1


def test_full_rejects_non_tt():
    with pytest.raises(TypeError, match="full: tt must be a TensorTrain"):
        ops.full(torch.zeros(3))


# ------------------------------------------------------------------------------------------------ transpose
@given(spec=matrix_specs(), seed=seeds, batch=st.sampled_from([None, 2]))
def test_transpose(spec, seed, batch):
    raw, ranks = spec
    x = random_tt(raw, ranks, gen=_gen(seed), batch_size=batch)
    t = ops.transpose(x)
    assert t.raw_shape == (raw[1], raw[0])
    assert_close(ops.full(t), ops.full(x).transpose(-1, -2))


def test_transpose_rejects_tensor(gen):
    with pytest.raises(TypeError, match=r"transpose: expects a TT-matrix, got a TT-tensor of shape \(2, 3\)"):
        ops.transpose(random_tt((2, 3), (1, 2, 1), gen=gen))


# ----------------------------------------------------------------------------------------------------- cast
def test_cast(gen):
    x = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    y = ops.cast(x, torch.float32)
    assert isinstance(y, tt.TensorTrainBatch) and y.dtype == torch.float32
    assert_close(ops.full(y), ops.full(x).float())
    with pytest.raises(TypeError, match="cast: dtype must be a floating point or complex"):
        ops.cast(x, torch.int64)


# ------------------------------------------------------------------------------------------- add / subtract
@given(spec=any_specs, seed=seeds, ranks_b=st.integers(1, 3))
def test_add_subtract(spec, seed, ranks_b):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g)
    rb = (1, *([ranks_b] * (len(ranks) - 2)), 1)
    b = random_tt(raw, rb, gen=g)
    s = ops.add(a, b)
    if len(ranks) > 2:
        assert s.tt_ranks == (1, *(x + y for x, y in zip(ranks[1:-1], rb[1:-1], strict=True)), 1)
    assert_close(ops.full(s), ops.full(a) + ops.full(b))
    assert_close(ops.full(ops.subtract(a, b)), ops.full(a) - ops.full(b))
    assert_close(ops.full(a + b), ops.full(a) + ops.full(b))
    assert_close(ops.full(a - b), ops.full(a) - ops.full(b))


@given(spec=any_specs, seed=seeds, sizes=st.sampled_from([(3, 3), (1, 3), (3, 1), (None, 3), (3, None)]))
def test_add_batch_broadcasting(spec, seed, sizes):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=sizes[0])
    b = random_tt(raw, ranks, gen=g, batch_size=sizes[1])
    s = a + b
    assert isinstance(s, tt.TensorTrainBatch) and s.batch_size == 3
    assert_close(ops.full(s), ops.full(a) + ops.full(b))


def test_add_float32(gen):
    a = random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen, dtype=torch.float32)
    b = random_tt((3, 4, 2), (1, 3, 1, 1), gen=gen, dtype=torch.float32)
    assert_close(ops.full(a + b), ops.full(a) + ops.full(b))


def test_sum_of_a_list(gen):
    """Python's sum() starts from the int 0, which TT addition takes as the identity; other numbers are refused."""
    tts = [random_tt((3, 4, 2), (1, 2, 2, 1), gen=gen) for _ in range(3)]
    assert_close(ops.full(sum(tts)), sum(ops.full(t) for t in tts))
    assert sum(tts[:1]) is tts[0]
    with pytest.raises(TypeError):
        1 + tts[0]
    with pytest.raises(TypeError):
        0.0 + tts[0]


def test_add_gradcheck(gen):
    ca = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)]
    cb = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 1, 2, 1), gen=gen)]

    def f(*cs):
        return ops.full(ops.subtract(tt.TensorTrain(list(cs[:3])), tt.TensorTrain(list(cs[3:]))))

    assert torch.autograd.gradcheck(f, ca + cb)


def test_add_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(ShapeErrorT, match=r"add: raw shapes differ: \(2, 3\) vs \(3, 2\)"):
        ops.add(a, random_tt((3, 2), (1, 2, 1), gen=gen))
    with pytest.raises(ShapeErrorT, match=r"add: cannot combine a TT-tensor \(2, 3\) with a TT-matrix"):
        ops.add(a, random_tt(((2, 3), (1, 1)), (1, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="add: second operand is a float.*ones_like"):
        ops.add(a, 1.0)
    with pytest.raises(TypeError, match="add: first operand is a int"):
        _ = 1 + a
    with pytest.raises(TypeError, match="subtract: second operand is a Tensor"):
        _ = a - torch.ones(2, 3)
    with pytest.raises(TypeError, match="add: second operand must be a TensorTrain"):
        ops.add(a, "x")
    with pytest.raises(
        ShapeErrorT, match="add: operands have different dtypes torch.float64 and torch.float32"
    ):
        ops.add(a, ops.cast(a, torch.float32))
    with pytest.raises(ShapeErrorT, match=r"add: batch sizes \[2, 3\] do not broadcast"):
        ops.add(
            random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2),
            random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=3),
        )


ShapeErrorT = tt.ShapeError


# ------------------------------------------------------------------------------------------------- multiply
@given(spec=any_specs, seed=seeds, c=st.sampled_from([2.5, -3.0, 0.0, 1, -1e-3]))
def test_multiply_by_number(spec, seed, c):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed))
    for res in (ops.multiply(a, c), ops.multiply(c, a), a * c, c * a):
        assert res.tt_ranks == a.tt_ranks
        assert_close(ops.full(res), ops.full(a) * c)
    assert_close(ops.full(-a), -ops.full(a))
    if c != 0:
        assert_close(ops.full(a / c), ops.full(a) / c)


def test_multiply_number_keeps_cores_balanced(gen):
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    scaled = a * -8.0
    for before, after, factor in zip(a.tt_cores, scaled.tt_cores, (-2.0, 2.0, 2.0), strict=True):
        assert_close(after, before * factor)


def test_multiply_by_0dim_numpy_array(gen):
    np = pytest.importorskip("numpy")
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    assert_close(ops.full(a * np.array(2.5)), 2.5 * ops.full(a))
    assert_close(ops.full(np.array(-3) * a), -3 * ops.full(a))
    with pytest.raises(TypeError, match="got ndarray"):
        a * np.array([2.0])


def test_multiply_by_0dim_tensor_is_differentiable(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    c = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: ops.full(ops.multiply(a, s)), (c,))
    assert_close(ops.full(a * torch.tensor(3.0, dtype=torch.float64)), 3.0 * ops.full(a))


@given(spec=any_specs, seed=seeds, sizes=st.sampled_from([(None, None), (2, 2), (1, 2), (None, 2)]))
def test_hadamard(spec, seed, sizes):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=sizes[0])
    b = random_tt(raw, ranks, gen=g, batch_size=sizes[1])
    p = ops.multiply(a, b)
    assert p.tt_ranks == tuple(r * r for r in ranks)
    assert_close(ops.full(p), ops.full(a) * ops.full(b))
    assert_close(ops.full(b * a), ops.full(a) * ops.full(b))


def test_hadamard_float32_and_gradcheck(gen):
    a = random_tt(((2, 2), (3, 1)), (1, 2, 1), gen=gen, dtype=torch.float32)
    assert_close(ops.full(a * a), ops.full(a) ** 2)
    cores = [c.requires_grad_() for c in random_cores((2, 3), (1, 2, 1), gen=gen)]
    assert torch.autograd.gradcheck(
        lambda *cs: ops.full(ops.multiply(tt.TensorTrain(list(cs)), tt.TensorTrain(list(cs)))), cores
    )


def test_multiply_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match=r"multiply: a dense tensor of shape \(2, 3\) cannot multiply"):
        ops.multiply(a, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="multiply: expects a number or a TT object, got str"):
        ops.multiply(a, "2")
    with pytest.raises(TypeError, match="multiply: one operand must be a TensorTrain"):
        ops.multiply(2.0, 3.0)
    with pytest.raises(ShapeErrorT, match=r"multiply: raw shapes differ: \(2, 3\) vs \(2, 4\)"):
        ops.multiply(a, random_tt((2, 4), (1, 2, 1), gen=gen))
    with pytest.raises(TypeError, match="dividing by a TT object is not supported"):
        _ = a / a


def test_multiply_complex_number(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    ac = ops.cast(a, torch.complex128)
    assert_close(ops.full(ac * (1 - 2j)), ops.full(ac) * (1 - 2j))
    with pytest.raises(
        TypeError, match=r"multiply: a complex number \(1-2j\) cannot scale torch.float64 cores"
    ):
        a * (1 - 2j)


def test_multiply_refuses_a_python_bool_scale(gen):
    """True is an int to isinstance but not a scale: refused on either side, as a bool tensor is."""
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    for scale in (lambda: ops.multiply(a, True), lambda: ops.multiply(False, a), lambda: a * True):
        with pytest.raises(TypeError, match="multiply: expects a number or a TT object, got bool"):
            scale()


def test_multiply_by_a_complex_number_without_imaginary_part_keeps_real_cores(gen):
    """2+0j and Fraction(1, 2) are numbers outside int/float: their real value scales real cores, which stay
    float64 (the complex value itself would make the first core complex, unlike the others)."""
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    for c in (2 + 0j, fractions.Fraction(1, 2)):
        for res in (ops.multiply(a, c), ops.multiply(c, a)):
            assert all(core.dtype == torch.float64 for core in res.tt_cores)
            assert_close(ops.full(res), ops.full(a) * float(complex(c).real))


def test_multiply_by_complex_0dim_tensor(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    c = torch.tensor(2j, dtype=torch.complex128)
    # Casting c to the real cores would drop its imaginary part; refuse as for the Python number 2j.
    for scale in (lambda: a * c, lambda: c * a, lambda: ops.multiply(a, c)):
        with pytest.raises(
            TypeError,
            match=r"multiply: a complex tensor \(torch.complex128\) cannot scale torch.float64 cores",
        ):
            scale()
    ac = ops.cast(a, torch.complex128)
    assert_close(ops.full(ac * c), ops.full(ac) * c)
    # A real tensor scales complex cores.
    assert_close(ops.full(ac * torch.tensor(3.0, dtype=torch.float64)), ops.full(ac) * 3.0)


# ----------------------------------------------------------------------------------------------------- kron
@given(
    spec_a=matrix_specs(max_d=2),
    spec_b=matrix_specs(max_d=2),
    seed=seeds,
    sizes=st.sampled_from([(None, None), (2, 1), (None, 2)]),
)
def test_kron_matches_torch_kron(spec_a, spec_b, seed, sizes):
    g = _gen(seed)
    a = random_tt(*spec_a, gen=g, batch_size=sizes[0])
    b = random_tt(*spec_b, gen=g, batch_size=sizes[1])
    k = ops.kron(a, b)
    assert k.ndims() == a.ndims() + b.ndims()
    fa, fb, fk = ops.full(a), ops.full(b), ops.full(k)
    if fk.dim() == 2:
        assert_close(fk, torch.kron(fa, fb))
    else:
        fa, fb = fa.expand(fk.shape[0], *fa.shape[-2:]), fb.expand(fk.shape[0], *fb.shape[-2:])
        for i in range(fk.shape[0]):
            assert_close(fk[i], torch.kron(fa[i], fb[i]))


def test_kron_tensors_is_outer_product(gen):
    a, b = random_tt((2, 3), (1, 2, 1), gen=gen), random_tt((4,), (1, 1), gen=gen)
    assert_close(ops.full(ops.kron(a, b)), torch.einsum("ij,k->ijk", ops.full(a), ops.full(b)))
    with pytest.raises(ShapeErrorT, match="kron: both operands must be TT-matrices or both TT-tensors"):
        ops.kron(a, random_tt(((2,), (2,)), (1, 1), gen=gen))


# ------------------------------------------------------------------------------------- renormalize_tt_cores
@given(spec=any_specs, seed=seeds, batch=st.sampled_from([None, 2]))
def test_renormalize_tt_cores(spec, seed, batch):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed), batch_size=batch) * 1e3
    r = ops.renormalize_tt_cores(a)
    assert_close(ops.full(r), ops.full(a))
    norms = torch.stack([c.reshape(c.shape[0], -1).norm(dim=1) if batch else c.norm() for c in r.tt_cores])
    assert_close(norms, norms[:1].expand_as(norms))


def test_renormalize_gradcheck(gen):
    cores = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)]
    assert torch.autograd.gradcheck(
        lambda *cs: ops.full(ops.renormalize_tt_cores(tt.TensorTrain(list(cs)))), cores
    )


def test_renormalize_a_zero_core_without_epsilon(gen):
    """epsilon=0 turns the floor off: a zero core (a zero tensor) must give the zero tensor, not NaN."""
    cores = random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)
    cores[1] = torch.zeros_like(cores[1])
    b = tt.TensorTrainBatch(
        [
            torch.stack([c, c2])
            for c, c2 in zip(cores, random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen), strict=True)
        ]
    )
    for x in (tt.TensorTrain(cores), b):
        y = ops.renormalize_tt_cores(x, epsilon=0)
        assert all(torch.isfinite(c).all() for c in y.tt_cores)
        assert_close(ops.full(y), ops.full(x))
        # the zero element is left as it is, every core (core 0 came back zeroed), with finite gradients that
        # are full()'s own (every one was NaN: the dropped branch of torch.where divided 0 by 0)
        zeroed = x.tt_cores[0] if isinstance(x, tt.TensorTrain) else x.tt_cores[0][0]
        assert torch.equal(y.tt_cores[0] if isinstance(x, tt.TensorTrain) else y.tt_cores[0][0], zeroed)
        leaves = [c.clone().requires_grad_() for c in x.tt_cores]
        again = type(x)(leaves)
        got = torch.autograd.grad(ops.full(ops.renormalize_tt_cores(again, epsilon=0)).sum(), leaves)
        want = torch.autograd.grad(ops.full(again).sum(), leaves)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)


@pytest.mark.parametrize("scale", [1e200, 1e-170])
def test_renormalize_float64_cores_whose_squares_leave_float64(gen, scale):
    """float64 has no wider type for the norms: a core of norm 1e160 squared to inf, and inf / inf made the
    renormalized cores NaN (1e-170 squared to 0)."""
    cores = random_cores((3, 4, 5), (1, 2, 2, 1), gen=gen)
    x = tt.TensorTrain([cores[0] * scale, cores[1], cores[2] / scale])
    y = ops.renormalize_tt_cores(x, epsilon=0)
    norms = torch.stack([c.norm() for c in y.tt_cores])
    assert torch.isfinite(norms).all()
    assert_close(norms, norms.mean().expand(3))  # all the same
    assert_close(ops.full(y), ops.full(tt.TensorTrain(cores)))


def test_renormalize_rejects_bad_epsilon(gen):
    a = random_tt((2,), (1, 1), gen=gen)
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0, got -1"):
        ops.renormalize_tt_cores(a, epsilon=-1)
    with pytest.raises(ValueError, match="got inf"):  # an infinite floor made every core NaN
        ops.renormalize_tt_cores(a, epsilon=float("inf"))
    with pytest.raises(TypeError, match="epsilon must be a real number, got None"):
        ops.renormalize_tt_cores(a, epsilon=None)


def test_device_mismatch_is_a_shape_error(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="add: operands are on different devices cpu and meta"):
        ops.add(a, a.to("meta"))
    m = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="matmul: operands are on different devices cpu and meta"):
        m @ torch.ones(4, 2, dtype=torch.float64, device="meta")


def test_nothing_densifies_a_huge_tensor(gen):
    """2^80 entries: any hidden full() would fail; every non-dense op must still be instant."""
    raw = (1024,) * 8
    a = random_tt(raw, (1, *([2] * 7), 1), gen=gen)
    b = random_tt(raw, (1, *([3] * 7), 1), gen=gen)
    ab = a + b
    assert ab.tt_ranks[1:-1] == (5,) * 7
    assert (a * b).tt_ranks[1:-1] == (6,) * 7
    # <a + b, a> = <a, a> + <b, a> and ||2a||^2 = 4 ||a||^2 hold without densifying.
    lhs = ops.flat_inner(ab, a)
    assert_close(lhs, ops.flat_inner(a, a) + ops.flat_inner(b, a), rtol=1e-8, atol=0)
    assert_close(ops.frobenius_norm_squared(a * 2.0), 4 * ops.frobenius_norm_squared(a), rtol=1e-8, atol=0)
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert_close(ops.gather_nd(ab, idx), ops.gather_nd(a, idx) + ops.gather_nd(b, idx))
    assert_close(ab[1, 2, 3, 4, 5, 6, 7, 8], ops.gather_nd(ab, idx)[0])
    assert ab[3, :, 0].raw_shape == (1024,) * 6
    # A (2^40 x 2^40) TT-matrix: Kronecker product of two (2^20 x 2^20) ones.
    half = ((32,) * 4, (32,) * 4)
    m = ops.kron(random_tt(half, (1, 2, 2, 2, 1), gen=gen), random_tt(half, (1, 2, 2, 2, 1), gen=gen))
    assert (m @ ops.transpose(m)).tt_ranks == (1, 4, 4, 4, 1, 4, 4, 4, 1)
    v = random_tt((32,) * 8, (1, *([2] * 7), 1), gen=gen)
    assert ops.bilinear_form(m, v, v).dim() == 0


def test_scaling_by_an_infinite_number(gen):
    """inf / inf**(d-1) is NaN: a non-finite factor goes on the first core. A rank-1 TT has no sums that could
    meet inf - inf, so it must match the dense product exactly."""
    a = random_tt((2, 3, 4), (1, 1, 1, 1), gen=gen)
    for c in (math.inf, -math.inf):
        assert torch.equal(ops.full(a * c), ops.full(a) * c)
    assert torch.equal(ops.full(a / 1e-320), ops.full(a) * (1 / 1e-320))  # 1 / 1e-320 is inf in Python
    assert ops.full(a * math.nan).isnan().all()


def test_norms_whose_squares_leave_the_dtype_range(gen):
    """frobenius_norm returns representable norms exactly even when their squares over- or underflow the
    dtype (float16 past 256 or below 1e-2, float32 past 1.8e19 or below 1e-19); renormalize_tt_cores balances
    cores whose norms' squares do."""
    h = random_tt((4, 4, 4), (1, 2, 2, 1), gen=gen)
    h = h * (1.0 / float(ops.frobenius_norm(h)))
    for dtype, scales in ((torch.float16, (1e-4, 300.0)), (torch.float32, (1e-25, 1e-21, 1e21))):
        for s in scales:
            got = ops.frobenius_norm(ops.cast(h * s, dtype))
            assert got.dtype == dtype and math.isclose(float(got), s, rel_tol=3e-3), (dtype, s, float(got))
    a = random_tt((4, 4, 4), (1, 3, 3, 1), gen=gen).to(torch.float32)
    cores = [c.clone() for c in a.tt_cores]
    cores[0] *= 1e20
    cores[1] *= 1e-25
    cores[2] *= 1e5
    y = ops.renormalize_tt_cores(tt.TensorTrain(cores), epsilon=0)
    norms = [float(c.double().norm()) for c in y.tt_cores]
    assert all(math.isfinite(n) for n in norms) and max(norms) / min(norms) < 1.001
    assert_close(
        ops.full(y).double(), ops.full(a).double(), rtol=1e-4, atol=1e-4 * float(ops.full(a).abs().max())
    )


def test_constant_hint_in_add_and_subtract_errors_works(gen):
    """The message's recipe must run for TT-matrices too (tensor_ones(a.raw_shape) did not)."""
    m = random_tt(((2, 3), (4, 5)), (1, 2, 1), gen=gen)
    with pytest.raises(TypeError, match=r"a \+ c \* tt.ones_like\(a\)"):
        m + 2.0
    with pytest.raises(TypeError, match=r"a - c \* tt.ones_like\(a\)"):
        ops.subtract(m, 2.0)
    assert_close(ops.full(m + 2.0 * tt.ones_like(m)), ops.full(m) + 2.0)


def test_max_tt_ranks_checks_mode_sizes():
    assert tt.max_tt_ranks((2, 3, 4)) == (1, 2, 4, 1)
    with pytest.raises(TypeError, match="mode sizes must be ints, got 2.5"):
        tt.max_tt_ranks([2.5, 3])
    with pytest.raises(ValueError, match="mode sizes must be >= 1, got 0"):
        tt.max_tt_ranks([0, 3])
    with pytest.raises(TypeError, match="for a TT-matrix pass the products"):
        tt.max_tt_ranks(((2, 3), (4, 5)))


def test_transpose_of_a_complex_tt_matrix_does_not_conjugate():
    g = torch.Generator().manual_seed(0)
    cores = [
        torch.randn(1, 2, 3, 2, dtype=torch.complex128, generator=g),
        torch.randn(2, 3, 2, 1, dtype=torch.complex128, generator=g),
    ]
    w = tt.TensorTrain(cores)
    torch.testing.assert_close(tt.full(tt.transpose(w)), tt.full(w).T)


def test_multiply_by_minus_infinity_keeps_the_sign():
    a = tt.TensorTrain([torch.ones(1, 2, 1), torch.ones(1, 3, 1)])
    out = tt.full(tt.multiply(a, float("-inf")))
    assert bool((out == float("-inf")).all()), out


def test_renormalize_floors_core_norms_at_epsilon(gen):
    """Core k ends with norm n_k * g / max(n_k, epsilon), g the geometric mean of the floored norms (a mutant that
    ignored epsilon passed every test)."""
    cores = random_cores((3, 3, 3), (1, 2, 2, 1), gen=gen)
    cores[1] = cores[1] * 1e-12
    x = tt.TensorTrain(cores)
    n = torch.stack([c.norm() for c in cores])
    for eps in (1e-8, 10.0):
        floored = n.clamp_min(eps)
        g = floored.log().mean().exp()
        got = torch.stack([c.norm() for c in ops.renormalize_tt_cores(x, epsilon=eps).tt_cores])
        assert_close(got, n * g / floored, rtol=1e-12, atol=0)
    same = ops.renormalize_tt_cores(x, epsilon=10.0)  # every norm below the floor: the cores as they were
    for a, b in zip(same.tt_cores, cores, strict=True):
        assert_close(a, b, rtol=1e-12, atol=0)


def test_results_do_not_follow_later_writes_to_their_inputs(gen):
    """full() of a one-core TT was a view of the core, and scaling by a 0-dim tensor (and multiply_along_batch_dim)
    shared cores 1..d-1 with the input: after an in-place update of the input (an optimizer step) a result taken
    before was a mix of old and new cores."""
    one = tt.TensorTrain(random_cores((4,), (1, 1), gen=gen))
    dense = ops.full(one)
    before = dense.clone()
    one.tt_cores[0].zero_()
    assert torch.equal(dense, before)
    x = tt.TensorTrain(random_cores((2, 3, 4), (1, 2, 2, 1), gen=gen))
    y = x * torch.tensor(2.0, dtype=x.dtype)
    want = ops.full(y).clone()
    for c in x.tt_cores:
        c.mul_(3.0)
    assert_close(ops.full(y), want)
    b = tt.TensorTrainBatch(
        [c.unsqueeze(0).repeat(2, 1, 1, 1) for c in random_cores((2, 3), (1, 2, 1), gen=gen)]
    )
    scaled = tt.multiply_along_batch_dim(b, [1.0, 2.0])
    want = ops.full(scaled).clone()
    b.tt_cores[1].zero_()
    assert_close(ops.full(scaled), want)


def test_scaling_by_a_non_finite_number_copies_the_other_cores(gen):
    """x * inf puts the factor on the first core; the others were the input's own (a later write to x changed it)."""
    x = tt.TensorTrain(random_cores((2, 3, 4), (1, 2, 2, 1), gen=gen))
    for c in (math.inf, math.nan):
        y = x * c
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(y.tt_cores[1:], x.tt_cores[1:], strict=True))


def test_scaling_by_zero_zeroes_every_core_of_its_own(gen):
    """x * 0 is a zero TT whose cores are all zero and all its own: an in-place write to one of them (an optimizer
    step on the result) leaves x as it was."""
    x = tt.TensorTrain(random_cores((2, 3, 4), (1, 2, 2, 1), gen=gen))
    before = [c.clone() for c in x.tt_cores]
    for c in (0, 0.0, 0j):
        y = ops.multiply(x, c)
        assert all(not bool(core.any()) for core in y.tt_cores)
        for core in y.tt_cores:
            core.add_(1.0)
        assert all(torch.equal(a, b) for a, b in zip(x.tt_cores, before, strict=True))
