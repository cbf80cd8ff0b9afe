"""TT indexing against the dense oracle: numpy-style getitem on TT-tensors and batches, gather_nd."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, random_tt, seeds, tensor_specs
from tensortrain import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def mode_index(draw, n):
    """An int (possibly negative) or a non-empty slice with a positive step for a mode of size n."""
    if draw(st.booleans()):
        return draw(st.integers(-n, n - 1))
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, n))
    return slice(start, stop, draw(st.sampled_from([None, 1, 2])))


@given(spec=tensor_specs(), data=st.data(), seed=seeds)
def test_getitem_matches_dense(spec, data, seed):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed))
    index = tuple(data.draw(mode_index(n)) for n in raw)
    index = index[: data.draw(st.integers(1, len(index)))]  # trailing modes default to ':'
    res = a[index]
    expected = ops.full(a)[index]
    if isinstance(res, torch.Tensor):
        assert res.dim() == 0
        assert_close(res, expected)
    else:
        assert max(res.tt_ranks) <= max(ranks)
        assert_close(ops.full(res), expected)


@given(spec=tensor_specs(), data=st.data(), seed=seeds, b=st.integers(1, 3))
def test_getitem_batch_matches_dense(spec, data, seed, b):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed), batch_size=b)
    bidx = data.draw(st.one_of(st.integers(-b, b - 1), st.just(slice(None)), st.just([b - 1, 0])))
    index = (bidx, *(data.draw(mode_index(n)) for n in raw))
    res = a[index]
    expected = ops.full(a)[index]
    if isinstance(res, torch.Tensor):
        assert_close(res, expected)
    else:
        assert isinstance(res, tt.TensorTrainBatch) != isinstance(bidx, int)
        assert_close(ops.full(res), expected)


def test_getitem_ellipsis_and_float32(gen):
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen, dtype=torch.float32)
    assert_close(ops.full(a[..., 1]), ops.full(a)[..., 1])
    assert_close(ops.full(a[1, ...]), ops.full(a)[1, ...])
    assert_close(ops.full(a[0, ..., 1:3]), ops.full(a)[0, ..., 1:3])


def test_getitem_gradcheck(gen):
    cores = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)]
    assert torch.autograd.gradcheck(lambda *cs: ops.full(tt.TensorTrain(list(cs))[1, :, 0]), cores)


def test_getitem_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(IndexError, match="mode 1: index 3 out of range for a mode of size 3"):
        a[0, 3]
    with pytest.raises(IndexError, match="too many indices: the TT-tensor has 2 modes but 3 were given"):
        a[0, 0, 0]
    with pytest.raises(IndexError, match="mode 0: slice slice\\(2, None, None\\) selects nothing"):
        a[2:]
    with pytest.raises(ValueError, match="mode 0: slice step cannot be zero"):
        a[::0]
    full = tt.full(a)  # negative steps reverse a mode, as numpy and t3f's strided slices do
    for index in (
        (slice(None, None, -1),),
        (0, slice(None, None, -2)),
        (slice(2, 0, -1), slice(None, None, -1)),
    ):
        assert torch.allclose(tt.full(a[index]), torch.from_numpy(full.numpy()[index].copy()))
    with pytest.raises(TypeError, match="mode 0: index must be an int or a slice, got None"):
        a[None]
    with pytest.raises(TypeError, match="mode 1: index must be an int or a slice, got 1.5"):
        a[0, 1.5]
    with pytest.raises(IndexError, match="a single ellipsis"):
        a[..., ...]
    m = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(
        TypeError, match=r"indexing a TT-matrix \(\(2, 3\) x \(2, 2\)\) is not supported; use tt.gather_nd"
    ):
        m[0]
    b = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(IndexError, match="batch index 2 out of range for a batch of 2 elements"):
        b[2, 0]
    with pytest.raises(
        TypeError, match="a batch index must be an int, slice, list or tensor of ints, got None"
    ):
        b[None, 0]


@given(spec=tensor_specs(), data=st.data(), seed=seeds, b=st.integers(1, 3))
def test_getitem_batch_ellipsis_matches_dense(spec, data, seed, b):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=_gen(seed), batch_size=b)
    bidx = data.draw(
        st.one_of(
            st.integers(-b, b - 1),
            st.integers(0, b - 1).map(np.int64),
            st.integers(-b, b - 1).map(torch.tensor),
            st.just(slice(None)),
            st.just([b - 1, 0]),
        )
    )
    full_index = [bidx, *(data.draw(mode_index(n)) for n in raw)]
    # Replace a run of axes (possibly empty, possibly holding the batch axis) by '...': as in numpy it must
    # expand over the batch axis and the modes alike.
    start = data.draw(st.integers(0, len(full_index)))
    stop = data.draw(st.integers(start, len(full_index)))
    index = (*full_index[:start], ..., *full_index[stop:])
    res = a[index]
    expected = ops.full(a)[index]
    if isinstance(res, torch.Tensor):
        assert_close(res, expected)
    else:
        assert_close(ops.full(res), expected)


def test_getitem_batch_ellipsis_examples(gen):
    b = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen, batch_size=5)
    dense = ops.full(b)
    for index in [(..., 1), (..., 0, 0), (..., 1, 2, 3), (1, ..., 2), (slice(1, 4), ..., 0), (...,), ...]:
        res = b[index]
        expected = dense[index]
        assert_close(res if isinstance(res, torch.Tensor) else ops.full(res), expected)
    with pytest.raises(IndexError, match="1 batch axis and 3 modes but 5 indices were given"):
        b[0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match="1 batch axis and 3 modes but 5 indices were given"):
        b[..., 0, 0, 0, 0, 0]


def test_getitem_batch_scalar_index_kinds(gen):
    b = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen, batch_size=5)
    dense = ops.full(b)
    # numpy ints and 0-dim integer tensors are ints (operator.index), as in numpy and torch.
    for i in (1, np.int64(1), np.array(1), torch.tensor(1), torch.tensor(-4, dtype=torch.int32)):
        one = b[i]
        assert isinstance(one, tt.TensorTrain)
        assert_close(ops.full(one), dense[1])
        assert_close(ops.full(b[i, 0]), dense[1, 0])
        assert_close(b[i, 0, 2, 3], dense[1, 0, 2, 3])
    m = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen, batch_size=3)
    assert_close(ops.full(m[torch.tensor(2)]), ops.full(m)[2])
    assert_close(ops.full(m[np.int64(-1)]), ops.full(m)[2])
    # A 1-D index tensor keeps the batch axis, even with one element.
    assert_close(ops.full(b[torch.tensor([1])]), dense[[1]])
    assert_close(ops.full(b[torch.tensor([1]), 0]), dense[[1], 0])
    with pytest.raises(IndexError, match="batch index 5 out of range for a batch of 5 elements"):
        b[torch.tensor(5)]
    with pytest.raises(IndexError, match="batch index -6 out of range for a batch of 5 elements"):
        b[np.int64(-6), 0]
    for bad in (torch.tensor(True), torch.tensor(1.0), np.float64(1.0), True):
        with pytest.raises(TypeError, match="a batch index must be an int, slice, list or tensor of ints"):
            b[bad]
        with pytest.raises(TypeError, match="a batch index must be an int, slice, list or tensor of ints"):
            b[bad, 0]


def test_getitem_mode_index_with_dims_is_rejected(gen):
    a = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen)
    dense = ops.full(a)
    assert_close(ops.full(a[torch.tensor(1)]), dense[1])  # a 0-dim integer tensor is an int
    assert_close(ops.full(a[np.int64(1), :, torch.tensor(-1)]), dense[1, :, -1])
    # Dense indexing keeps the axis of a one-element index array; getitem has no such mode, so it refuses.
    for idx in (torch.tensor([1]), np.array([1]), torch.tensor([[1]])):
        with pytest.raises(TypeError, match="mode 0: index must be an int or a slice, got"):
            a[idx]
    with pytest.raises(TypeError, match="mode 1: index must be an int or a slice, got"):
        a[0, torch.tensor([1])]
    with pytest.raises(TypeError, match="mode 0: index must be an int or a slice, got"):
        a[torch.tensor(True)]
    b = random_tt((2, 3, 4), (1, 2, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(TypeError, match="mode 0: index must be an int or a slice, got"):
        b[0, torch.tensor([1])]


# ----------------------------------------------------------------------------------------------- gather_nd
@given(spec=tensor_specs(), seed=seeds, k=st.integers(1, 5), batch=st.sampled_from([None, 2]))
def test_gather_nd_tensor(spec, seed, k, batch):
    raw, ranks = spec
    g = _gen(seed)
    a = random_tt(raw, ranks, gen=g, batch_size=batch)
    dims = ((batch,) if batch else ()) + raw
    idx = torch.stack([torch.randint(0, n, (k,), generator=g) for n in dims], dim=1)
    dense = ops.full(a)
    assert_close(ops.gather_nd(a, idx), dense[tuple(idx.T)])
    assert_close(ops.gather_nd(a, idx.reshape(1, k, -1)), dense[tuple(idx.T)].reshape(1, k))


@given(spec=matrix_specs(), seed=seeds, k=st.integers(1, 5), batch=st.sampled_from([None, 2]))
def test_gather_nd_matrix(spec, seed, k, batch):
    (rows, cols), ranks = spec
    g = _gen(seed)
    a = random_tt((rows, cols), ranks, gen=g, batch_size=batch)
    lead = (batch,) if batch else ()
    m, n = a.shape[-2:]
    dense = ops.full(a)
    flat = torch.stack([torch.randint(0, s, (k,), generator=g) for s in (*lead, m, n)], dim=1)
    assert_close(ops.gather_nd(a, flat), dense[tuple(flat.T)])
    # Mode indices: unravel rows and columns by hand.
    modes = torch.stack([torch.randint(0, s, (k,), generator=g) for s in (*lead, *rows, *cols)], dim=1)
    off = len(lead)
    r_idx = torch.zeros(k, dtype=torch.long)
    c_idx = torch.zeros(k, dtype=torch.long)
    for j, s in enumerate(rows):
        r_idx = r_idx * s + modes[:, off + j]
    for j, s in enumerate(cols):
        c_idx = c_idx * s + modes[:, off + len(rows) + j]
    assert_close(ops.gather_nd(a, modes), dense[(*modes[:, :off].T, r_idx, c_idx)])


def test_gather_nd_gradcheck_and_list_input(gen):
    cores = [c.requires_grad_() for c in random_cores((2, 3, 2), (1, 2, 2, 1), gen=gen)]
    idx = torch.tensor([[0, 1, 1], [1, 2, 0]])
    assert torch.autograd.gradcheck(lambda *cs: ops.gather_nd(tt.TensorTrain(list(cs)), idx), cores)
    a = tt.TensorTrain(cores).detach()
    assert_close(ops.gather_nd(a, [[0, 1, 1], [1, 2, 0]]), ops.full(a)[tuple(idx.T)])


def test_gather_nd_errors(gen):
    a = random_tt((2, 3), (1, 2, 1), gen=gen)
    with pytest.raises(
        TypeError, match="gather_nd: indices must be an integer tensor, got dtype torch.float32"
    ):
        ops.gather_nd(a, torch.zeros(1, 2))
    with pytest.raises(TypeError, match="gather_nd: indices must be an integer tensor, got dtype torch.bool"):
        ops.gather_nd(a, torch.tensor([[True, False]]))  # (a mask, not the indices 1 and 0)
    with pytest.raises(
        tt.ShapeError,
        match=r"gather_nd: indices must have 2 columns for a TT-tensor of raw shape \(2, 3\), got 3",
    ):
        ops.gather_nd(a, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(IndexError, match=r"gather_nd: mode 1 index 3 out of range \[0, 3\)"):
        ops.gather_nd(a, torch.tensor([[0, 3]]))
    with pytest.raises(IndexError, match=r"gather_nd: mode 0 index -1 out of range"):
        ops.gather_nd(a, torch.tensor([[-1, 0]]))
    with pytest.raises(tt.ShapeError, match="at least one dim"):
        ops.gather_nd(a, torch.tensor(1))
    # an empty 1-D index tensor has 0 columns (it used to fail inside a reshape)
    with pytest.raises(tt.ShapeError, match="must have 2 columns .* got 0"):
        ops.gather_nd(a, torch.zeros(0, dtype=torch.long))
    m = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(
        tt.ShapeError, match=r"need 5 columns \(row modes, column modes\) or 3 \(row, column\), got 4"
    ):
        ops.gather_nd(m, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(IndexError, match=r"gather_nd: batch index 2 out of range \[0, 2\)"):
        ops.gather_nd(m, torch.tensor([[2, 0, 0]]))
    with pytest.raises(IndexError, match=r"gather_nd: column index 4 out of range \[0, 4\)"):
        ops.gather_nd(m, torch.tensor([[1, 0, 4]]))
    # a batch of TT-tensors counts its batch column in both numbers
    b = random_tt((2, 3), (1, 2, 1), gen=gen, batch_size=2)
    with pytest.raises(
        tt.ShapeError,
        match=r"gather_nd: indices must have 3 columns for a TT-tensor of raw shape \(2, 3\) \(batch of 2\), got 2",
    ):
        ops.gather_nd(b, torch.zeros(1, 2, dtype=torch.long))


def test_batch_index_must_be_one_axis_of_elements(gen):
    b = random_tt((3, 4), (1, 2, 1), gen=gen, batch_size=4)
    for bad in (torch.tensor([[0, 1], [2, 3]]), [[0, 1], [1, 2]], [0.5]):
        with pytest.raises(TypeError, match="1-D list or tensor of ints"):
            b[bad]
    with pytest.raises(TypeError, match="a batch index must be"):
        b[[0, slice(None)]]
    # negative steps, as Python sequences (and t3f) take them
    assert_close(ops.full(b[::-1]), ops.full(b).flip(0))
    assert_close(ops.full(b[3:0:-2]), ops.full(b)[[3, 1]])
    assert_close(ops.full(b[[True, False, True, False]]), ops.full(b)[[0, 2]])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "uint32", "uint64", "int32"])
def test_batch_indices_of_any_integer_width_are_positions(dtype):
    """A uint8 index array was read as a bool mask (other elements, silently); int16 and the wide unsigned types
    failed inside torch. numpy reads them all as positions."""
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=4, dtype=torch.float64)
    idx = np.array([1, 1, 0, 3], dtype=dtype)
    assert_close(tt.full(b[idx]), tt.full(b)[torch.as_tensor(idx.astype(np.int64))])
    mask = torch.tensor([True, False, True, False])
    assert b[mask].batch_size == 2


def test_bool_mask_of_the_wrong_length():
    """A mask of another length gave torch's message about the shape of a core (never indexed by the user)."""
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=4)
    for mask in (torch.tensor([True, False]), [True, False, True], np.array([True] * 5)):
        with pytest.raises(IndexError, match=f"a bool mask of {len(mask)} values for a 4 element batch"):
            b[mask]


def test_slice_steps_past_int64():
    """A step of 2**70 overflowed inside torch ("negative strides"); it selects the first position only."""
    a = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64)
    assert_close(tt.full(a[:: 2**70]), tt.full(a)[0:1])
    assert_close(tt.full(a[:, 1 :: 2**70, ::7]), tt.full(a)[:, 1:2, ::7])
    b = tt.random_tensor_batch((2, 3), batch_size=4, dtype=torch.float64)
    assert_close(tt.full(b[1 :: 2**70]), tt.full(b)[1:2])


def test_slice_bounds_past_int64_are_clamped_without_a_warning(gen):
    """Torch truncates slice bounds past int64 with a UserWarning (an error under ``-W error``); they are clamped
    to the mode or batch first, as Python's ``slice.indices`` clamps them."""
    a = random_tt((4, 3), (1, 2, 1), gen=gen)
    b = tt.random_tensor_batch((4, 3), tt_rank=2, batch_size=5, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(tt.full(a[: 2**70]), tt.full(a))
        assert_close(tt.full(a[1 : 2**70, -(2**70) : 2]), tt.full(a)[1:, :2])
        assert_close(tt.full(b[-(2**70) : 3]), tt.full(b)[:3])
        assert_close(tt.full(b[np.int64(1) : 2**70]), tt.full(b)[1:])


def test_python_indices_at_and_past_the_int64_boundary_are_out_of_range():
    """2**63 is the first int past int64 (it was called 'not an integer tensor' when the bound was <=); tuples
    of such ints are read as lists are."""
    x = tt.random_tensor((2, 3, 4), tt_rank=2)
    for idx in ([[2**63, 0, 0]], ((2**70, 0, 0),), [(0, 2**63, 0)]):
        with pytest.raises(IndexError, match="out of range"):
            tt.gather_nd(x, idx)
    batch = tt.random_tensor_batch((2, 3), batch_size=2)
    with pytest.raises(ValueError, match="401 digits"):
        tt.multiply_along_batch_dim(batch, (10**400, 1))


def test_a_uint64_index_past_int64_is_out_of_range():
    """Read as int64, 2**64 - 1 wrapped to -1: the last element, silently."""
    b = tt.random_tensor_batch((2, 3), tt_rank=2, batch_size=4)
    for value in (2**64 - 1, 2**63 + 1):
        with pytest.raises(IndexError, match="out of range"):
            b[torch.tensor([value], dtype=torch.uint64)]


@pytest.mark.parametrize("batch", [None, 2])
def test_gather_nd_across_several_row_chunks(gen, batch):
    # (test_ops_indexing.py) entries are swept in chunks of rows (_CHUNK // widest slice: 1024 rows here): many
    # more entries than one chunk, the last chunk partial
    x = random_tt((64, 64, 64), (1, 64, 64, 1), gen=gen, batch_size=batch)
    k = 2500
    idx = torch.randint(0, 64, (k, 3), generator=gen)
    full = tt.full(x)
    if batch is None:
        expected = full[idx[:, 0], idx[:, 1], idx[:, 2]]
    else:
        b = torch.randint(0, batch, (k, 1), generator=gen)
        idx = torch.cat([b, idx], dim=1)
        expected = full[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]]
    assert_close(tt.gather_nd(x, idx), expected)


def test_list_indices_past_int64_are_out_of_range_not_the_wrong_kind():
    """torch's overflow reading such a list was turned into 'must be a list of ints' (a list of ints was given)."""
    x = tt.random_tensor_batch((2, 3, 4), tt_rank=2, batch_size=3, dtype=torch.float64)
    with pytest.raises(IndexError, match=r"gather_nd: index 1180591620717411303424 out of range"):
        tt.gather_nd(x, [[0, 2**70, 0, 0]])
    with pytest.raises(IndexError, match=r"batch index -1180591620717411303424 out of range for a 3 element"):
        x[[0, -(2**70)]]
    with pytest.raises(TypeError, match="a batch index must be"):  # (other unreadable lists: still the kind)
        x[[0, "a"]]
