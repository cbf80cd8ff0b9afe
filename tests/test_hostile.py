"""Hostile input across the public API: only ValueError/TypeError escape, valid input gives right answers.

Hypothesis draws constructor arguments and operands with random (often invalid) shapes, ranks, dtypes and
devices ('meta' stands in for a second device). An independent validity oracle written here decides what
must succeed; the dense tensor is the oracle for every value that comes back.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt

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
        ((c for c in [torch.ones(1, 2, 1)]), TypeError, "got generator"),
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
