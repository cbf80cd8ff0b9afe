"""Hostile input across the public API: only ValueError/TypeError escape, valid input gives right answers.

Hypothesis draws constructor arguments and operands with random (often invalid) shapes, ranks, dtypes and
devices ('meta' stands in for a second device). An independent validity oracle written here decides what
must succeed; the dense tensor is the oracle for every value that comes back.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import TOL, assert_close
from strategies import matrix_specs, random_tt, seeds, tensor_specs

CLEAR = (ValueError, TypeError)  # the only exceptions a caller should ever see from bad input


# ---------------------------------------------------------------------------------- the dense oracle
def dense(cores: list[torch.Tensor], batch: bool = False) -> torch.Tensor:
    """The full tensor of a TT (or TT-matrix, or batch), by plain left-to-right contraction."""
    if batch:
        return torch.stack([dense([c[i] for c in cores]) for i in range(cores[0].shape[0])])
    matrix = cores[0].dim() == 4
    res = cores[0].reshape(-1, cores[0].shape[-1])  # (modes so far, r)
    for c in cores[1:]:
        res = res @ c.reshape(c.shape[0], -1)
        res = res.reshape(-1, c.shape[-1])
    modes = [m for c in cores for m in c.shape[1:-1]]
    res = res.reshape(modes)
    if matrix:  # (m1, n1, m2, n2, ...) -> (m1 m2 ..., n1 n2 ...)
        d = len(cores)
        res = res.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
        res = res.reshape(math.prod(c.shape[1] for c in cores), math.prod(c.shape[2] for c in cores))
    return res


def test_dense_oracle_itself(gen):
    # the oracle against an independent einsum, so that it cannot be silently wrong
    a = random_tt(((2, 3), (4, 1)), (1, 3, 1), gen=gen)
    g0, g1 = a.tt_cores
    expected = torch.einsum("aijb,bklc->ikjl", g0, g1).reshape(6, 4)
    assert_close(dense(list(a.tt_cores)), expected)
    b = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    h0, h1, h2 = b.tt_cores
    assert_close(dense(list(b.tt_cores)), torch.einsum("aib,bjc,ckd->ijk", h0, h1, h2))


# -------------------------------------------------------------------------------------- constructors
DTYPES = [torch.float64, torch.float32, torch.complex64, torch.int64, torch.bool, torch.float16]


@st.composite
def core_lists(draw):
    """A list of cores that is valid or broken in one or several of the ways the constructor checks."""
    batch = draw(st.booleans())
    d = draw(st.integers(1, 5))
    matrix = draw(st.booleans())
    bsize = draw(st.integers(1, 3))
    ranks = [1, *(draw(st.integers(1, 3)) for _ in range(d - 1)), 1]
    cores: list[object] = []
    for k in range(d):
        modes = [draw(st.integers(1, 3)) for _ in range(2 if matrix else 1)]
        shape = [ranks[k], *modes, ranks[k + 1]]
        if batch:
            shape = [bsize, *shape]
        cores.append(shape)
    dtype = torch.float64
    specs = []
    for shape in cores:
        spec = {"shape": list(shape), "dtype": dtype, "device": "cpu"}  # type: ignore[arg-type]
        specs.append(spec)
    # break things at random
    for spec in specs:
        if draw(st.integers(0, 9)) == 0:
            axis = draw(st.integers(0, len(spec["shape"]) - 1))
            spec["shape"][axis] = draw(st.sampled_from([0, 2, 4]))
        if draw(st.integers(0, 9)) == 0:
            spec["shape"] = spec["shape"] + [1] if draw(st.booleans()) else spec["shape"][1:]
        if draw(st.integers(0, 11)) == 0:
            spec["dtype"] = draw(st.sampled_from(DTYPES))
        if draw(st.integers(0, 11)) == 0:
            spec["device"] = "meta"
        if draw(st.integers(0, 19)) == 0:
            spec["kind"] = draw(st.sampled_from(["list", "none", "numpy"]))
        spec["layout"] = draw(st.sampled_from(["plain", "plain", "transposed", "expanded"]))
    return batch, specs


def _make(spec) -> object:
    kind = spec.get("kind")
    shape = spec["shape"]
    if kind == "none":
        return None
    if kind == "list":
        return torch.zeros(shape).tolist()
    if kind == "numpy":
        return torch.ones(shape, dtype=torch.float64).numpy()
    if spec["layout"] == "expanded" and shape and shape[-1] != 0:
        # a broadcast view: stride 0 on the last axis
        t = torch.ones([*shape[:-1], 1], dtype=torch.float64).expand(*shape)
    elif spec["layout"] == "transposed" and len(shape) >= 2:
        t = torch.ones(list(reversed(shape)), dtype=torch.float64).permute(*reversed(range(len(shape))))
    else:
        t = torch.ones(shape, dtype=torch.float64)
    return t.to(dtype=spec["dtype"], device=spec["device"])


def _valid(batch: bool, cores: list[object]) -> bool:
    """Independent statement of the constructor's rules (tensor_train.py docstrings)."""
    if not cores or not all(isinstance(c, torch.Tensor) for c in cores):
        return False
    ts: list[torch.Tensor] = cores  # type: ignore[assignment]
    b = int(batch)
    nd = ts[0].dim()
    if nd not in (3 + b, 4 + b) or any(c.dim() != nd for c in ts):
        return False
    if any(not (c.is_floating_point() or c.is_complex()) for c in ts):
        return False
    if len({c.dtype for c in ts}) > 1 or len({c.device for c in ts}) > 1:
        return False
    if any(0 in c.shape for c in ts):
        return False
    if b and len({c.shape[0] for c in ts}) > 1:
        return False
    if ts[0].shape[b] != 1 or ts[-1].shape[-1] != 1:
        return False
    return all(ts[k].shape[-1] == ts[k + 1].shape[b] for k in range(len(ts) - 1))


@given(drawn=core_lists())
def test_constructor_fuzz(drawn):
    batch, specs = drawn
    cores = [_make(s) for s in specs]
    cls = tt.TensorTrainBatch if batch else tt.TensorTrain
    if _valid(batch, cores):
        obj = cls(cores)
        t = [c for c in cores if isinstance(c, torch.Tensor)]
        b = int(batch)
        assert obj.ndims() == len(t)
        assert obj.tt_ranks == (*(c.shape[b] for c in t), 1)
        assert obj.dtype == t[0].dtype and obj.device == t[0].device
        assert obj.shape == torch.Size(
            ([t[0].shape[0]] if batch else [])
            + (
                [math.prod(c.shape[b + 1] for c in t), math.prod(c.shape[b + 2] for c in t)]
                if obj.is_tt_matrix()
                else [c.shape[b + 1] for c in t]
            )
        )
    else:
        with pytest.raises(CLEAR):
            cls(cores)


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [
        (torch.ones(1, 2, 1), TypeError, "sequence of core tensors, got Tensor"),
        ({"a": 1}, TypeError, "got dict"),
        ("abc", TypeError, "got str"),
        ([], ValueError, "at least one core"),
        ([torch.ones(1, 2, 1), 3.0], TypeError, "core 1 is a float"),
        ([torch.ones(1, 2, 1, dtype=torch.int64)], TypeError, "dtype torch.int64.*cast it first"),
        ([torch.ones(1, 2, 2), torch.ones(2, 2, 1, dtype=torch.float64)], ValueError, "dtype"),
        ([torch.ones(1, 2, 2), torch.ones(2, 2, 1, device="meta")], ValueError, "meta"),
        ([torch.ones(1, 0, 1)], ValueError, "empty dimension"),
        ([torch.ones(2, 2, 1)], ValueError, "boundary TT-ranks must be 1"),
        ([torch.ones(1, 2, 2), torch.ones(3, 2, 1)], ValueError, "do not chain"),
        ([torch.ones(1, 2)], ValueError, "must have 3 dims"),
    ],
)
def test_constructor_messages(arg, error, match):
    with pytest.raises(error, match=match):
        tt.TensorTrain(arg)


def test_many_and_one_core(gen):
    # d = 1 and d = 12: the structure and the dense value are right
    one = random_tt((5,), (1, 1), gen=gen)
    assert one.tt_ranks == (1, 1) and one.shape == (5,)
    many = random_tt((2,) * 12, (1, *([2] * 11), 1), gen=gen)
    assert many.shape == (2,) * 12 and many.ndims() == 12
    assert dense(list(many.tt_cores)).shape == (2,) * 12


# ------------------------------------------------------------------------------------ decompositions
def _max_ranks_ok(obj, modes) -> None:
    bound = tt.max_tt_ranks(modes)
    assert all(r <= b for r, b in zip(obj.tt_ranks, bound, strict=True)), (obj.tt_ranks, bound)


@st.composite
def hostile_dense(draw):
    """A dense tensor (and the to_tt_tensor arguments) that is fine or broken in one chosen way."""
    big = draw(st.integers(0, 5)) == 0
    shape = (
        [2] * draw(st.integers(10, 11))
        if big
        else [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 4)))]
    )
    seed = draw(seeds)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    trouble = draw(
        st.sampled_from(["none", "nan", "inf", "int", "empty", "transposed", "expanded", "rank", "epsilon"])
    )
    max_tt_rank: object = draw(st.sampled_from([10**9, None, 3]))
    epsilon: object = None
    expect: type[Exception] | None = None
    if trouble in ("nan", "inf"):
        flat = x.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = float("nan") if trouble == "nan" else -float("inf")
        expect = ValueError
    elif trouble == "int":
        x = (x * 10).to(draw(st.sampled_from([torch.int64, torch.int32, torch.bool])))
        expect = TypeError
    elif trouble == "empty":
        x = x.new_empty([*shape[:-1], 0])
        expect = ValueError
    elif trouble == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif trouble == "expanded":
        # a broadcast view (stride 0) of a rank-deficient tensor
        x = x[..., :1].expand(*shape)
    elif trouble == "rank":
        max_tt_rank = draw(st.sampled_from([0, -3, [1] * (len(shape) + 2), [0] * max(len(shape) - 1, 1)]))
        # too small, or the wrong number of values; for d = 1 an int rank has no inner bond to apply to
        expect = ValueError if len(shape) > 1 or isinstance(max_tt_rank, list) else Exception
    elif trouble == "epsilon":
        epsilon = draw(st.sampled_from([-1e-3, float("nan"), float("inf"), 1e-2]))
        expect = None if epsilon == 1e-2 else ValueError
    return x, max_tt_rank, epsilon, expect


@given(case=hostile_dense())
def test_to_tt_tensor_hostile(case):
    x, max_tt_rank, epsilon, expect = case
    if expect is Exception:  # either outcome is acceptable, an error only of a clear type
        try:
            tt.to_tt_tensor(x, max_tt_rank=max_tt_rank, epsilon=epsilon)
        except CLEAR:
            pass
        return
    if expect is not None:
        with pytest.raises(expect):
            tt.to_tt_tensor(x, max_tt_rank=max_tt_rank, epsilon=epsilon)
        return
    a = tt.to_tt_tensor(x, max_tt_rank=max_tt_rank, epsilon=epsilon)
    _max_ranks_ok(a, x.shape)
    if max_tt_rank is not None and not isinstance(max_tt_rank, list):
        assert max(a.tt_ranks) <= max_tt_rank
    got = tt.full(a)
    if epsilon is not None and max_tt_rank != 3:  # (a binding rank cap overrides epsilon)
        assert float((got - x).norm()) <= epsilon * float(x.norm()) * (1 + 1e-8) + 1e-12
    elif max_tt_rank != 3:  # no binding cap: TT-SVD is exact, also for views and broadcast inputs
        assert_close(got, x)


@given(spec=matrix_specs(max_d=3), seed=seeds, huge=st.sampled_from([10**6, None]))
def test_to_tt_matrix_huge_rank_is_exact(spec, seed, huge):
    (rows, cols), _ = spec
    m, n = math.prod(rows), math.prod(cols)
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = tt.to_tt_matrix(w.t().contiguous().t(), [rows, cols], max_tt_rank=huge)
    _max_ranks_ok(a, [p * q for p, q in zip(rows, cols, strict=True)])
    assert_close(tt.full(a), w)
    # rounding with a huge cap keeps the value and the clipped ranks
    b = tt.round(a + a, max_tt_rank=huge)
    _max_ranks_ok(b, [p * q for p, q in zip(rows, cols, strict=True)])
    assert_close(tt.full(b), 2 * w)


def test_to_tt_matrix_hostile_matrices(gen):
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    shape = [[2, 3], [2, 2]]
    bad_w = w.clone()
    bad_w[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        tt.to_tt_matrix(bad_w, shape)
    with pytest.raises(TypeError, match="int64"):
        tt.to_tt_matrix(w.long(), shape)
    with pytest.raises(ValueError, match=r"does not match shape \(2, 3\) x \(2, 2\)"):
        tt.to_tt_matrix(w[:5], shape)
    with pytest.raises(ValueError):
        tt.to_tt_matrix(w, [[2, 3], [2, 0]])
    with pytest.raises(ValueError):
        tt.to_tt_matrix(w, shape, max_tt_rank=0)
    with pytest.raises(ValueError):
        tt.to_tt_matrix(w.new_empty(0, 4), shape)
    # a broadcast (expand) matrix is a valid input, decomposed exactly
    row = w[:1].expand(6, 4)
    assert_close(tt.full(tt.to_tt_matrix(row, shape)), row)


def test_round_rejects_nan_cores(gen):
    a = random_tt((3, 4), (1, 2, 1), gen=gen)
    cores = [c.clone() for c in a.tt_cores]
    cores[1][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        tt.round(tt.TensorTrain(cores), max_tt_rank=1)


# --------------------------------------------------------------------------------------- binary ops
class Undefined(Exception):
    """The operands are incompatible as TT objects: a correct implementation must refuse them."""


@st.composite
def operand(draw, like=None):
    """A TT operand: often like ``like`` (so that ops are defined), sometimes different in one way."""
    matrix = draw(st.booleans()) if like is None else like["matrix"]
    if like is not None and draw(st.integers(0, 3)) > 0:
        raw, ranks = like["raw"], (1, *(draw(st.integers(1, 3)) for _ in range(len(like["ranks"]) - 2)), 1)
    elif matrix:
        raw, ranks = draw(matrix_specs(max_d=3))
    else:
        raw, ranks = draw(tensor_specs(max_d=3))
    if like is not None and draw(st.integers(0, 5)) == 0:
        matrix = not matrix  # the other kind
        raw, ranks = draw(matrix_specs(max_d=2) if matrix else tensor_specs(max_d=3))
    batch = draw(st.sampled_from([None, None, 1, 2, 3]))
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32]))
    meta = like is not None and draw(st.integers(0, 7)) == 0
    return {"matrix": matrix, "raw": raw, "ranks": ranks, "batch": batch, "dtype": dtype, "meta": meta}


def _build(spec, seed):
    """The operand on the CPU, and the operand as passed (moved to 'meta' when the spec says so)."""
    x = random_tt(
        spec["raw"], spec["ranks"], gen=torch.Generator().manual_seed(seed), batch_size=spec["batch"]
    )
    x = x.to(spec["dtype"])
    return x, (x.to("meta") if spec["meta"] else x)


def _dense_of(x) -> torch.Tensor:
    return dense([c.double() for c in x.tt_cores], batch=isinstance(x, tt.TensorTrainBatch))


def _batch_pair(a, b) -> None:
    sizes = {x.batch_size for x in (a, b) if isinstance(x, tt.TensorTrainBatch)} - {1}
    if len(sizes) > 1:
        raise Undefined


def _same_kind_and_shape(a, b) -> None:
    if a.is_tt_matrix() != b.is_tt_matrix() or a.raw_shape != b.raw_shape:
        raise Undefined


def _oracle(op: str, a, b) -> torch.Tensor:
    """The dense value of op(a, b), computed on the full tensors (float64); Undefined when not defined."""
    _batch_pair(a, b)
    da, db = _dense_of(a), _dense_of(b)
    if op in ("add", "subtract", "multiply", "flat_inner"):
        _same_kind_and_shape(a, b)
        if op == "add":
            return da + db
        if op == "subtract":
            return da - db
        if op == "multiply":
            return da * db
        prod = da * db
        batched = any(isinstance(x, tt.TensorTrainBatch) for x in (a, b))
        return prod.flatten(start_dim=1).sum(1) if batched else prod.sum()
    if op == "matmul":
        if not (a.is_tt_matrix() and b.is_tt_matrix()) or a.raw_shape[1] != b.raw_shape[0]:
            raise Undefined
        return da @ db
    raise AssertionError(op)


OPS = {
    "add": tt.add,
    "subtract": tt.subtract,
    "multiply": tt.multiply,
    "flat_inner": tt.flat_inner,
    "matmul": tt.matmul,
}


@st.composite
def op_cases(draw):
    op = draw(st.sampled_from(sorted(OPS)))
    sa = draw(operand())
    sb = draw(operand(like=sa))
    if op == "matmul" and sa["matrix"] and sb["matrix"] and draw(st.integers(0, 3)) > 0:
        # mostly chainable: b's row modes are a's column modes
        d = len(sa["raw"][0])
        sb["raw"] = (sa["raw"][1], tuple(draw(st.integers(1, 3)) for _ in range(d)))
        sb["ranks"] = (1, *(draw(st.integers(1, 3)) for _ in range(d - 1)), 1)
    return op, sa, sb, draw(seeds)


@given(case=op_cases())
def test_binary_ops_fuzz(case):
    op, sa, sb, seed = case
    cpu_a, a = _build(sa, seed)
    cpu_b, b = _build(sb, seed + 1)
    try:
        expected = _oracle(op, cpu_a, cpu_b)
        defined = True
    except Undefined:
        defined = False
    # what a correct implementation must accept: defined, one dtype, one device, no batch broadcasting
    must_work = (
        defined
        and sa["dtype"] == sb["dtype"]
        and sa["meta"] == sb["meta"]
        and (sa["batch"] is None) == (sb["batch"] is None)
        and sa["batch"] in (None, sb["batch"])
    )
    try:
        got = OPS[op](a, b)
    except CLEAR:
        assert not must_work, f"{op} refused valid operands {a} and {b}"
        return
    assert defined, f"{op} returned a result for incompatible operands {a} and {b}"
    assert sa["meta"] == sb["meta"], f"{op} mixed devices without an error"
    value = got if isinstance(got, torch.Tensor) else _dense_of(got)
    value = value.double()
    tol = TOL[torch.float32] if torch.float32 in (sa["dtype"], sb["dtype"]) else TOL[torch.float64]
    expected = expected.reshape(value.shape) if expected.numel() == value.numel() else expected
    torch.testing.assert_close(value, expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


# ------------------------------------------------------------------------ TT-matrix x dense, TT layers
@st.composite
def dense_operands(draw):
    """A TT-matrix W (M x N) and a dense x meant for W @ x, x @ W or tt_linear(x, W), maybe broken."""
    (rows, cols), ranks = draw(matrix_specs(max_d=3))
    m, n = math.prod(rows), math.prod(cols)
    side = draw(st.sampled_from(["left", "right", "linear"]))  # W @ x, x @ W, x @ W.T via tt_linear
    k = n if side == "left" else m if side == "right" else n  # the dim x must match
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))  # 0: an empty batch
    p = draw(st.integers(0, 3))  # 0: no columns
    trouble = draw(st.sampled_from(["none", "transposed", "expanded", "int", "wrong", "meta", "float32"]))
    return rows, cols, ranks, side, k, lead, p, trouble, draw(seeds)


def _x_for(side, k, lead, p, gen) -> torch.Tensor:
    if side == "left":
        return torch.randn(*lead, k, p, generator=gen, dtype=torch.float64)
    if side == "right":
        return torch.randn(*lead, p, k, generator=gen, dtype=torch.float64)
    return torch.randn(*lead, p, k, generator=gen, dtype=torch.float64)


@given(case=dense_operands())
def test_tt_matrix_times_dense_fuzz(case):
    rows, cols, ranks, side, k, lead, p, trouble, seed = case
    gen = torch.Generator().manual_seed(seed)
    w = random_tt((rows, cols), ranks, gen=gen)
    x = _x_for(side, k, lead, p, gen)
    if trouble == "transposed":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif trouble == "expanded":
        x = x[..., :1, :].expand(x.shape)  # stride 0 along the second-to-last dim
    elif trouble == "int":
        x = x.round().long()
    elif trouble == "wrong":
        x = torch.cat([x, x], dim=-1 if side != "left" else -2)
    elif trouble == "meta":
        x = x.to("meta")
    elif trouble == "float32":
        x = x.float()
    call = {
        "left": lambda: tt.matmul(w, x),
        "right": lambda: tt.matmul(x, w),
        "linear": lambda: tt.nn.functional.tt_linear(x, w),
    }[side]
    if trouble in ("int", "wrong", "meta"):
        with pytest.raises(CLEAR):
            call()
        return
    try:
        got = call()
    except CLEAR:
        assert trouble == "float32", f"refused a valid {side} operand of shape {tuple(x.shape)}"
        return
    W = dense(list(w.tt_cores))
    xd = x.double()
    expected = {"left": lambda: W @ xd, "right": lambda: xd @ W, "linear": lambda: xd @ W.T}[side]()
    assert got.shape == expected.shape
    tol = TOL[torch.float32] if trouble == "float32" else TOL[torch.float64]
    torch.testing.assert_close(got.double(), expected, **tol)


def test_layer_on_empty_noncontiguous_and_many_modes(gen):
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(
        1024, 3, tt_rank=4, in_dims=(2,) * 10, out_dims=(3,) + (1,) * 9, dtype=torch.float64
    )
    W = dense([c.detach() for c in layer.cores])
    x = torch.randn(1024, 5, generator=gen, dtype=torch.float64).t()  # non-contiguous (5, 1024)
    assert_close(layer(x), x @ W.T + layer.bias)
    empty = layer(torch.randn(0, 1024, dtype=torch.float64))
    assert empty.shape == (0, 3)
    with pytest.raises(CLEAR, match="1024"):
        layer(torch.randn(5, 1000, dtype=torch.float64))
    with pytest.raises(CLEAR):
        layer(torch.ones(5, 1024, dtype=torch.long))


def test_layer_huge_rank_is_clipped():
    layer = tt.nn.TTLinear(12, 6, tt_rank=10**6, in_dims=(3, 4), out_dims=(2, 3))
    assert layer.tt_ranks == tt.max_tt_ranks((2 * 3, 3 * 4))
    with pytest.raises(ValueError):
        tt.nn.TTLinear(12, 6, tt_rank=0, in_dims=(3, 4), out_dims=(2, 3))
    with pytest.raises(ValueError):
        tt.nn.TTLinear(12, 6, tt_rank=-2, in_dims=(3, 4), out_dims=(2, 3))
    with pytest.raises(ValueError):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 5), out_dims=(2, 3))


# ---------------------------------------------------------------------------------------- unary ops
INDEXING = (*CLEAR, IndexError)  # indexing may also say IndexError, as Python sequences do


@st.composite
def unary_cases(draw):
    matrix = draw(st.booleans())
    if draw(st.integers(0, 7)) == 0:  # many cores
        d = draw(st.integers(10, 11))
        raw = ((2,) * d, (1,) * d) if matrix else (2,) * d
        ranks = (1, *([2] * (d - 1)), 1)
    else:
        raw, ranks = draw(matrix_specs(max_d=3) if matrix else tensor_specs(max_d=4))
    batch = draw(st.sampled_from([None, None, 2]))
    nan = draw(st.integers(0, 7)) == 0
    op = draw(
        st.sampled_from(
            ["full", "transpose", "norm", "norm2", "round_huge", "round_1", "orthogonalize", "scale", "cast",
             "getitem", "gather_nd"]
        )
    )  # fmt: skip
    # (not inf: a TT times inf sums infinities of both signs, NaN, where the dense product has +-inf)
    scale = draw(st.sampled_from([2.5, 0.0, -1, 3, 1e300, float("nan")]))
    cast_to = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
    return raw, ranks, batch, nan, op, scale, cast_to, draw(seeds), draw(st.randoms(use_true_random=False))


def _index_for(shape, rnd) -> tuple:
    items: list[object] = []
    for n in shape:
        kind = rnd.choice(["int", "neg", "slice", "colon", "out"])
        if kind == "int":
            items.append(rnd.randrange(n))
        elif kind == "neg":
            items.append(-1 - rnd.randrange(n))
        elif kind == "slice":
            lo = rnd.randrange(n)
            items.append(slice(lo, rnd.randrange(lo, n) + 1))
        elif kind == "colon":
            items.append(slice(None))
        else:
            items.append(n + rnd.randrange(3))  # out of range
    return tuple(items)


@given(case=unary_cases())
def test_unary_ops_fuzz(case):
    raw, ranks, batch, nan, op, scale, cast_to, seed, rnd = case
    a = random_tt(raw, ranks, gen=torch.Generator().manual_seed(seed), batch_size=batch)
    if nan:
        cores = [c.clone() for c in a.tt_cores]
        cores[rnd.randrange(len(cores))].view(-1)[0] = float("nan")
        a = type(a)(cores)
    is_batch = batch is not None
    full = dense(list(a.tt_cores), batch=is_batch)
    lead = 1 if is_batch else 0

    def check(got, expected):
        if isinstance(got, torch.Tensor):
            value = got
        else:
            value = dense(list(got.tt_cores), batch=isinstance(got, tt.TensorTrainBatch))
        assert value.shape == expected.shape
        torch.testing.assert_close(value.double(), expected.double(), equal_nan=True, **TOL[torch.float64])

    if op == "full":
        check(tt.full(a), full)
    elif op == "transpose":
        if not a.is_tt_matrix():
            with pytest.raises(CLEAR):
                tt.transpose(a)
            return
        check(tt.transpose(a), full.transpose(-1, -2))
    elif op in ("norm", "norm2"):
        got = tt.frobenius_norm(a) if op == "norm" else tt.frobenius_norm_squared(a)
        expected = full.flatten(start_dim=lead).norm(dim=-1)
        check(got, expected if op == "norm" else expected**2)
    elif op in ("round_huge", "round_1", "orthogonalize"):
        try:
            if op == "orthogonalize":
                got = tt.orthogonalize(a, left_to_right=bool(rnd.getrandbits(1)))
            else:
                got = tt.round(a, max_tt_rank=10**9 if op == "round_huge" else 1)
        except CLEAR:
            assert nan, f"{op} refused a finite TT {a}"
            return
        assert not (nan and op != "orthogonalize"), "round accepted NaN cores"
        if op == "round_1":
            assert max(got.tt_ranks) == 1
            return
        if op == "round_huge":  # rounding clips to the maximal useful ranks (orthogonalize need not)
            _max_ranks_ok(got, [p * q for p, q in zip(*raw, strict=True)] if a.is_tt_matrix() else raw)
        if not nan:
            check(got, full)
    elif op == "scale":
        check(tt.multiply(a, scale), full * scale)
        check(a * scale, full * scale)
    elif op == "cast":
        if cast_to.is_floating_point:
            got = tt.cast(a, cast_to)
            assert got.dtype == cast_to
            torch.testing.assert_close(tt.full(got), full.to(cast_to), equal_nan=True, **TOL[cast_to])
        else:
            with pytest.raises(CLEAR):
                tt.cast(a, cast_to)
    elif op == "getitem":
        if a.is_tt_matrix():
            with pytest.raises(INDEXING):
                a[(0,) * (lead + 1)]
            return
        index = (rnd.randrange(batch),) if is_batch else ()
        index += _index_for(raw, rnd)
        out_of_range = any(isinstance(i, int) and i >= n for i, n in zip(index[lead:], raw, strict=True))
        if out_of_range:
            with pytest.raises(INDEXING):
                a[index]
            return
        check(a[index], full[index])
    elif op == "gather_nd":
        dims = a.shape  # one index column per dense axis, the batch axis first
        k = rnd.randrange(0, 4)
        idx = (
            torch.stack([torch.randint(0, n, (k,)) for n in dims], dim=-1)
            if k
            else torch.zeros(0, len(dims), dtype=torch.long)
        )
        if rnd.getrandbits(2) == 0 and k:
            idx[0, -1] = dims[-1]  # out of range
            with pytest.raises(INDEXING):
                tt.gather_nd(a, idx)
            return
        expected = full[tuple(idx.T)] if k else full.new_zeros(0)
        check(tt.gather_nd(a, idx), expected)


def test_frobenius_norm_nan_in_first_entry():
    cores = [
        torch.tensor([[[[0.5], [0.8]]]], dtype=torch.float64),
        torch.tensor([[[[1.3]]]], dtype=torch.float64),
    ]
    cores[0][0, 0, 0, 0] = float("nan")
    a = tt.TensorTrain(cores)
    assert torch.isnan(tt.full(a)).any()
    assert torch.isnan(tt.frobenius_norm_squared(a))
    assert torch.isnan(tt.frobenius_norm(a))


def test_frobenius_norm_propagates_nan(gen):
    a = random_tt((2, 3, 2), (1, 2, 2, 1), gen=gen)
    cores = [c.clone() for c in a.tt_cores]
    cores[1][0, 0, 0] = float("nan")
    assert torch.isnan(tt.full(tt.TensorTrain(cores))).any()
    assert torch.isnan(tt.frobenius_norm(tt.TensorTrain(cores)))


# ----------------------------------------------------------------------- initializers and TT layers
BAD_SHAPES = [(), (0, 3), (2, -1), (2.5, 3), ("a",), None, 7, (True, 2)]
BAD_RANKS = [0, -1, 2.5, True, (1, 2), (2, 2, 2), (1, 0, 1), "2", None]
BAD_DTYPES = [torch.int64, torch.bool, "float32"]


@given(
    shape=st.sampled_from([(2, 3, 4), (5,), (2,) * 10, *BAD_SHAPES]),
    tt_rank=st.sampled_from([1, 3, 10**6, (1, 2, 2, 1), *BAD_RANKS]),
    dtype=st.sampled_from([None, torch.float64, *BAD_DTYPES]),
    stddev=st.sampled_from([1.0, 0.0, -1.0, float("nan")]),
    which=st.sampled_from(["random_tensor", "tensor_ones", "tensor_zeros", "random_tensor_batch"]),
)
def test_tensor_initializers_fuzz(shape, tt_rank, dtype, stddev, which):
    random = which.startswith("random")
    kwargs: dict[str, object] = {"dtype": dtype}
    if random:
        kwargs.update(tt_rank=tt_rank, stddev=stddev)
    if which == "random_tensor_batch":
        kwargs["batch_size"] = 2
    shape_ok = isinstance(shape, tuple) and bool(shape) and all(type(n) is int and n >= 1 for n in shape)
    valid = shape_ok and dtype in (None, torch.float64)
    if random:
        valid = valid and stddev >= 0 and _rank_ok(tt_rank, len(shape))  # type: ignore[arg-type]
        if shape_ok and len(shape) == 1 and type(tt_rank) is int:  # type: ignore[arg-type]
            valid = valid or None  # d = 1: an int rank has no inner bond to apply to; either outcome is fine
    if valid is None:
        try:
            a = getattr(tt, which)(shape, **kwargs)
        except CLEAR:
            return
        assert a.tt_ranks == (1, 1)
        return
    if not valid:
        with pytest.raises(CLEAR):
            getattr(tt, which)(shape, **kwargs)
        return
    a = getattr(tt, which)(shape, **kwargs)
    assert a.raw_shape == shape
    _max_ranks_ok(a, shape)  # huge requested ranks are clipped
    full = tt.full(a)
    if which == "tensor_ones":
        assert torch.equal(full, torch.ones_like(full))
    elif which == "tensor_zeros":
        assert torch.equal(full, torch.zeros_like(full))
    else:
        assert torch.isfinite(full).all()


def _rank_ok(tt_rank, d: int) -> bool:
    if type(tt_rank) is int:
        return tt_rank >= 1
    if not isinstance(tt_rank, tuple) or not all(type(r) is int and r >= 1 for r in tt_rank):
        return False
    return len(tt_rank) == d - 1 or (len(tt_rank) == d + 1 and tt_rank[0] == tt_rank[-1] == 1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"in_features": 12, "out_features": 6, "tt_rank": 0}, ValueError),
        ({"in_features": 12, "out_features": 6, "tt_rank": (1, 2)}, ValueError),
        ({"in_features": 0, "out_features": 6, "tt_rank": 2}, ValueError),
        ({"in_features": 12.0, "out_features": 6, "tt_rank": 2}, TypeError),
        ({"in_features": True, "out_features": 6, "tt_rank": 2}, TypeError),
        (
            {"in_features": 12, "out_features": 6, "tt_rank": 2, "in_dims": (3, 4), "out_dims": (6,)},
            ValueError,
        ),
        ({"in_features": 12, "out_features": 6, "tt_rank": 2, "in_dims": (3, 5)}, ValueError),
        ({"in_features": 12, "out_features": 6, "tt_rank": 2, "in_dims": (12, 0)}, ValueError),
        ({"in_features": 12, "out_features": 6, "tt_rank": 2, "init": "xavier"}, ValueError),
    ],
)
def test_tt_linear_bad_arguments(kwargs, error):
    with pytest.raises(error):
        tt.nn.TTLinear(**kwargs)


def test_tt_embedding_hostile_indices():
    emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4), dtype=torch.float64)
    table = dense([c.detach() for c in emb.cores])
    idx = torch.tensor([[0, 19], [7, 7]])
    assert_close(emb(idx), table[idx])
    assert_close(emb(idx.t()), table[idx.t()])  # non-contiguous indices
    assert_close(emb(torch.tensor([5]).expand(3)), table[[5, 5, 5]])  # broadcast indices
    assert_close(emb(idx.int()), table[idx])  # int32 indices
    assert emb(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    with pytest.raises(TypeError, match="integer"):
        emb(idx.double())
    with pytest.raises(INDEXING, match="20"):
        emb(torch.tensor([20]))
    with pytest.raises(INDEXING):
        emb(torch.tensor([-1]))
    with pytest.raises(ValueError):
        tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(2, 5))  # 10 rows < 20
    big = tt.nn.TTEmbedding(20, 8, tt_rank=10**6, voc_dims=(4, 5), emb_dims=(2, 4))
    assert big.tt_ranks == tt.max_tt_ranks((4 * 2, 5 * 4))


def test_tt_embedding_indices_on_another_device():
    emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4))
    with pytest.raises(ValueError, match="meta"):
        emb(torch.tensor([1, 2]).to("meta"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_qr_ops(gen, dtype):
    # to_tt_tensor and TTLinear accept half precision; the QR-based ops must give a result or a clear error
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen).to(dtype)
    expected = dense([c.double() for c in a.tt_cores])
    for op in (lambda x: tt.round(x, max_tt_rank=10), tt.orthogonalize):
        try:
            got = op(a)
        except CLEAR:
            continue
        assert got.dtype == dtype
        torch.testing.assert_close(tt.full(got).double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_norm(gen, dtype):
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen).to(dtype)
    expected = dense([c.double() for c in a.tt_cores]).norm()
    norm = tt.frobenius_norm(a)
    assert norm.dtype == dtype
    torch.testing.assert_close(norm.double(), expected, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------- batch ops
@given(sa=operand(), data=st.data(), seed=seeds)
def test_batch_ops_fuzz(sa, data, seed):
    sb = data.draw(operand(like=sa))
    cpu_a, a = _build(sa, seed)
    cpu_b, b = _build(sb, seed + 1)
    da, db = _dense_of(cpu_a), _dense_of(cpu_b)
    # the dense oracle treats a single TT object as a batch of one
    da = da if sa["batch"] is not None else da.unsqueeze(0)
    db = db if sb["batch"] is not None else db.unsqueeze(0)
    same = sa["matrix"] == sb["matrix"] and sa["raw"] == sb["raw"]
    valid = same and sa["dtype"] == sb["dtype"] and sa["meta"] == sb["meta"]
    op = data.draw(st.sampled_from(["pairwise", "concat", "gram"]))
    try:
        if op == "pairwise":
            got = tt.pairwise_flat_inner(a, b)
            expected = da.flatten(1) @ db.flatten(1).T
        elif op == "gram":
            got = tt.gram_matrix(a)
            expected = da.flatten(1) @ da.flatten(1).T
            valid = True
        else:
            valid = valid and sa["ranks"] == sb["ranks"]  # concatenation needs common ranks (as t3f)
            got = _dense_of(tt.concat_along_batch_dim([a, b]))
            expected = torch.cat([da, db])
    except CLEAR:
        assert not valid, f"{op} refused valid operands {a} and {b}"
        return
    if op != "gram":
        assert same and sa["meta"] == sb["meta"], f"{op} accepted incompatible operands {a} and {b}"
    tol = TOL[torch.float32] if torch.float32 in (sa["dtype"], sb["dtype"]) else TOL[torch.float64]
    torch.testing.assert_close(got.double(), expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


# ------------------------------------------------------------- arguments torch or Python used to reject
def _cores_of_a_layer():
    return list(tt.nn.TTLinear(6, 6, tt_rank=2).cores)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: tt.round("abc"), TypeError, "round expects a TensorTrain"),  # was AttributeError
        (lambda x: tt.gather_nd(x, None), TypeError, "gather_nd: indices must be"),  # torch RuntimeError
        (lambda x: tt.gather_nd(x, [[0, 1, 2], [1]]), TypeError, "gather_nd: indices must be"),
        (
            lambda x: tt.multiply_along_batch_dim(tt.random_tensor_batch((2, 3, 4), 2, 2), None),
            TypeError,
            "weights must be numbers, got NoneType",
        ),
        (lambda x: tt.nn.TTLinear(6, 6, tt_rank=2, dtype=torch.long), TypeError, "TTLinear: dtype must be"),
        (lambda x: tt.nn.TTEmbedding(6, 6, tt_rank=2, dtype="float32"), TypeError, "TTEmbedding: dtype must"),
        (lambda x: tt.tt_parameters(x, requires_grad="no"), TypeError, "requires_grad must be True or False"),
        (
            lambda x: tt.compress(torch.nn.Linear(64, 64), max_tt_rank=2, inplace="False"),
            TypeError,
            "compress: inplace must be True or False",
        ),
        (lambda x: tt.decompress(torch.nn.Linear(4, 4), inplace=1), TypeError, "decompress: inplace must be"),
        (lambda x: tt.optim.RiemannianSGD([_cores_of_a_layer()], lr="0.1"), TypeError, "lr must be a real"),
        (
            lambda x: tt.optim.RiemannianSGD([_cores_of_a_layer()], lr=float("inf")),
            ValueError,
            "lr must be finite",
        ),
        (
            lambda x: tt.gradients(lambda y: tt.frobenius_norm_squared(y).to(torch.complex128), x),
            TypeError,
            "func must return a real scalar",
        ),
    ],
)
def test_bad_arguments_get_the_librarys_own_errors(gen, call, error, message):
    x = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    with pytest.raises(error, match=message):
        call(x)


def test_compress_with_a_string_inplace_leaves_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    with pytest.raises(TypeError):
        tt.compress(model, max_tt_rank=2, inplace="False")
    assert type(model[0]) is torch.nn.Linear


def test_factorizations_into_many_modes_fill_ones_without_deep_recursion():
    """auto_shape/padded_shape recursed once per mode: d = 1000 raised RecursionError."""
    assert tt.auto_shape(24, 1000) == (1,) * 996 + (2, 2, 2, 3)
    assert tt.padded_shape(23, 1000) == (1,) * 995 + (2, 2, 2, 2, 2)
    assert tt.auto_shape(1, 3) == (1, 1, 1)


def test_yes_no_arguments_refuse_strings():
    """Flags were read by truthiness: batch="False" built a batch, download="no" started a download."""
    x = torch.randn(2, 3, 4)
    for call in (
        lambda: tt.to_tt_tensor(x, batch="False"),
        lambda: tt.to_tt_matrix(torch.randn(6, 4), [[2, 3], [2, 2]], batch="False"),
        lambda: tt.tt_from_parameters(tt.random_tensor((2, 3), tt_rank=2).tt_cores, batch="False"),
        lambda: tt.frobenius_norm(tt.random_tensor((2, 3), tt_rank=2), differentiable="no"),
        lambda: tt.frobenius_norm_squared(tt.random_tensor((2, 3), tt_rank=2), differentiable="no"),
        lambda: tt.datasets.load_mnist("/nonexistent/folder", download="no"),
    ):
        with pytest.raises(TypeError, match="must be True or False"):
            call()
    # NumPy's bools are bools (a flag read from an array or a config loaded by NumPy)
    assert isinstance(tt.to_tt_tensor(x, batch=np.True_), tt.TensorTrainBatch)
    assert isinstance(tt.to_tt_tensor(x, batch=np.False_), tt.TensorTrain)


def test_meta_scales_weights_and_indices_for_real_cores_are_named():
    """A meta scale, weight vector or index tensor with CPU cores failed inside torch's copy."""
    a = tt.random_tensor((2, 3), tt_rank=2)
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=2)
    meta = torch.ones((), device="meta")
    for call, name in (
        (lambda: a * meta, "the scale"),
        (lambda: tt.gather_nd(a, torch.zeros(1, 2, dtype=torch.long, device="meta")), "indices"),
        (lambda: tt.multiply_along_batch_dim(b, torch.ones(2, device="meta")), "weights"),
        (lambda: tt.approximate.reduce_sum_batch(b, 2, coef=torch.ones(2, device="meta")), "coef"),
        (lambda: tt.project_sum(b, a, torch.ones(2, device="meta")), "weights"),
    ):
        with pytest.raises(ValueError, match=f"{name}: a meta tensor, with no data to use with cores on cpu"):
            call()


def test_fuzzed_arguments_are_named(tmp_path):
    """From a fuzz of the public API: each of these raised a foreign error (OverflowError, ZeroDivisionError,
    "iteration over a 0-d tensor"), took a set's hash order as mode order, or cast on a device argument."""
    x = tt.random_tensor((2, 3, 4), tt_rank=1, dtype=torch.float64)
    path = tmp_path / "x.safetensors"
    tt.save(x, path)
    for device in (float, 1.5, complex, torch.tensor(0.0, dtype=torch.float64)):
        with pytest.raises(TypeError, match="tt.load: device must be a torch.device"):
            tt.load(path, device=device)
    assert tt.load(path, device="cpu").dtype == torch.float64
    with pytest.raises(TypeError, match="in_dims must be a sequence of ints in a fixed order"):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims={4, 3})
    with pytest.raises(TypeError, match="voc_dims must be a sequence of ints in a fixed order"):
        tt.nn.TTEmbedding(12, 6, tt_rank=2, voc_dims={4, 3})
    with pytest.raises(TypeError, match="in_dims must be a sequence of ints in a fixed order"):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims={4: 0, 3: 0})  # (a dict's keys: insertion order, not ours)
    for shape in ({4, 2, 3}, b"\x02\x03", torch.tensor(3), {2: "a", 3: "b"}):
        with pytest.raises(TypeError, match="max_tt_ranks: raw_shape must be an ordered sequence"):
            tt.max_tt_ranks(shape)
    with pytest.raises(ValueError, match=r"auto_shape: d must be at most"):
        tt.auto_shape(24, 2**70)
    with pytest.raises(ValueError, match=r"padded_shape: d must be at most"):
        tt.padded_shape(24, 2**70)
    with pytest.raises(tt.ShapeError, match=r"normalize_tt_rank: d \(the number of cores\) must be at most"):
        tt.normalize_tt_rank(2, 2**70)
    assert tt.renormalize_tt_cores(x, epsilon=2**70).tt_ranks == x.tt_ranks
    layer = tt.nn.TTLinear(6, 6, tt_rank=2, bias_init=2**70)
    assert float(layer.bias[0].detach()) == float(2**70)
    cores = list(tt.tt_parameters(x))
    opt = tt.optim.RiemannianSGD([cores], lr=2**70)
    tt.frobenius_norm_squared(tt.TensorTrain(cores), differentiable=True).backward()
    opt.step()  # (an int lr past int64 overflowed here)
    for zero in (0, 0.0, -0.0):
        assert torch.equal(tt.full(x / zero), tt.full(x) / zero)  # rank 1: no inf - inf
    # ints past float64's range too (a review of the above: still a bare OverflowError there)
    huge = r"10000000\.\.\. \(401 digits\)"
    with pytest.raises(
        ValueError, match=rf"renormalize_tt_cores: epsilon must be a finite number >= 0, got {huge}"
    ):
        tt.renormalize_tt_cores(x, epsilon=10**400)
    with pytest.raises(ValueError, match=rf"multiply: the scale {huge} is past float64's range"):
        tt.multiply(x, 10**400)
    for hyper in ({"lr": 10**400}, {"lr": 0.1, "momentum": 10**400}):
        with pytest.raises(ValueError, match=rf"RiemannianSGD: (lr|momentum) must be finite, got {huge}"):
            tt.optim.RiemannianSGD([cores], **hyper)
    for shape in (5, np.array(5)):
        with pytest.raises(TypeError, match="max_tt_ranks: raw_shape must be an ordered sequence"):
            tt.max_tt_ranks(shape)
    assert tt.max_tt_ranks(np.array([2, 3])) == (1, 2, 1)
    if (
        not torch.cuda.is_available()
    ):  # (a NumPy device index reaches torch, as an int does: no accelerator here)
        with pytest.raises(RuntimeError, match="accelerator"):
            tt.load(path, device=np.int64(0))
    with pytest.raises(ValueError, match=r"weights hold the int 10000000\.\.\. \(401 digits\), which int64"):
        tt.multiply_along_batch_dim(tt.random_tensor_batch((2, 3), batch_size=2), [10**400, 1])
    y = tt.random_tensor((2, 3, 4), dtype=torch.float64)
    scalar = torch.tensor(1.0)
    with pytest.raises(TypeError, match="add_n_projected: expects a sequence of tangent vectors"):
        tt.add_n_projected(scalar)
    with pytest.raises(TypeError, match="riemannian_gradient_from_cores: core_grads must be a sequence"):
        tt.optim.riemannian_gradient_from_cores(y, scalar)
    with pytest.raises(TypeError, match="RiemannianSGD: params must be a module with TT layers"):
        tt.optim.RiemannianSGD(scalar, lr=0.1)
