"""Hypothesis strategies and builders for random TT objects (independent of tensortrain's initializers) and test
layers."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import tensortrain as tt


def random_cores(
    raw_shape, ranks, *, gen: torch.Generator, dtype=torch.float64, batch_size: int | None = None
) -> list[torch.Tensor]:
    """Standard normal cores for a TT-tensor (raw_shape a tuple of ints) or TT-matrix (a pair of tuples),
    scaled so the full tensor has entries of order 1."""
    matrix = isinstance(raw_shape[0], (tuple, list))
    d = len(raw_shape[0]) if matrix else len(raw_shape)
    cores = []
    for k in range(d):
        modes = (raw_shape[0][k], raw_shape[1][k]) if matrix else (raw_shape[k],)
        shape = (ranks[k], *modes, ranks[k + 1])
        if batch_size is not None:
            shape = (batch_size, *shape)
        cores.append(torch.randn(shape, generator=gen, dtype=dtype) / ranks[k] ** 0.5)
    return cores


def random_tt(raw_shape, ranks, *, gen, dtype=torch.float64, batch_size=None):
    """A TensorTrain (or TensorTrainBatch when batch_size is given) with random cores."""
    cores = random_cores(raw_shape, ranks, gen=gen, dtype=dtype, batch_size=batch_size)
    return tt.TensorTrain(cores) if batch_size is None else tt.TensorTrainBatch(cores)


def zero_cores(rows, cols, r, dtype=torch.float32) -> list[torch.Tensor]:
    """Zero cores of a TT-matrix with row dims ``rows``, column dims ``cols`` and every inner rank ``r``: shapes
    for the planner, which reads nothing else."""
    d = len(rows)
    ranks = (1, *(r,) * (d - 1), 1)
    return [torch.zeros(ranks[k], rows[k], cols[k], ranks[k + 1], dtype=dtype) for k in range(d)]


# (raw shape, ranks) of a TT-matrix with rows (32, 4), cols (32, 6), rank 4: each two-group sweep has one narrow
# step, (K, P, Q) = (128, 4, 32) right to left and (32, 6, 128) left to right, which folds in float64 (sides >= 32,
# P <= 8) and float32 alike
NARROW = (((32, 4), (32, 6)), (1, 4, 1))


def tutorial_layer(rank: int, **kw) -> tt.nn.TTLinear:
    """The t3f tutorial's layer: 784 -> 625 with in dims (7, 4, 7, 4) and out dims (5, 5, 5, 5)."""
    return tt.nn.TTLinear(784, 625, tt_rank=rank, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5), **kw)


@st.composite
def tensor_specs(draw, min_d=1, max_d=4, max_mode=4, max_rank=3):
    """(raw_shape, ranks) for a TT-tensor."""
    d = draw(st.integers(min_d, max_d))
    raw = tuple(draw(st.integers(1, max_mode)) for _ in range(d))
    ranks = (1, *(draw(st.integers(1, max_rank)) for _ in range(d - 1)), 1)
    return raw, ranks


@st.composite
def matrix_specs(draw, min_d=1, max_d=3, max_mode=3, max_rank=3):
    """(((m_1..m_d), (n_1..n_d)), ranks) for a TT-matrix."""
    d = draw(st.integers(min_d, max_d))
    rows = tuple(draw(st.integers(1, max_mode)) for _ in range(d))
    cols = tuple(draw(st.integers(1, max_mode)) for _ in range(d))
    ranks = (1, *(draw(st.integers(1, max_rank)) for _ in range(d - 1)), 1)
    return (rows, cols), ranks


seeds = st.integers(0, 2**31 - 1)
