"""TTEmbedding and tt_embedding against the dense table built from the same cores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from torch import nn

import tensortrain as tt
from conftest import assert_close
from strategies import matrix_specs, random_cores, random_tt, seeds
from tensortrain.nn.functional import tt_embedding
from test_nn_linear import dense_from_cores


@given(spec=matrix_specs(max_d=3, max_mode=4), seed=seeds)
def test_tt_embedding_matches_dense_table(spec, seed):
    (rows, cols), ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = random_cores((rows, cols), ranks, gen=gen)
    table = dense_from_cores(cores)
    v = math.prod(rows)
    idx = torch.randint(0, v, (2, 5), generator=gen)
    assert_close(tt_embedding(idx, tt.TensorTrain(cores)), table[idx])
    pad = int(idx[0, 0])
    assert_close(
        tt_embedding(idx, tt.TensorTrain(cores), padding_idx=pad),
        nn.functional.embedding(idx, table * (torch.arange(v) != pad).unsqueeze(-1)),
    )


def test_gradients_match_dense_lookup(gen):
    cores = [c.requires_grad_() for c in random_cores(((2, 3, 2), (2, 1, 3)), (1, 2, 3, 1), gen=gen)]
    idx = torch.tensor([[0, 5, 5, 11], [3, 3, 7, 0]])
    weights = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    out_tt = (tt_embedding(idx, tt.TensorTrain(cores), padding_idx=3) * weights).sum()
    out_dense = nn.functional.embedding(idx, dense_from_cores(cores), padding_idx=3) * weights
    out_dense = (out_dense * (idx != 3).unsqueeze(-1)).sum()  # nn.Embedding's rows stay; our output is zero
    for a, b in zip(torch.autograd.grad(out_tt, cores), torch.autograd.grad(out_dense, cores), strict=True):
        assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *c: tt_embedding(idx, tt.TensorTrain(c), padding_idx=3), cores)


def test_module_shapes_padding_and_dtypes():
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(1000, 64, tt_rank=8, padding_idx=-1, dtype=torch.float64)
    assert emb.padding_idx == 999 and math.prod(emb.voc_dims) == 1000 and math.prod(emb.emb_dims) == 64
    out = emb(torch.tensor([[1, 999, 3], [999, 5, 6]], dtype=torch.int32))
    assert out.shape == (2, 3, 64) and out.dtype == torch.float64
    assert torch.all(out[0, 1] == 0) and torch.all(out[1, 0] == 0) and out[0, 0].abs().sum() > 0
    assert emb(torch.tensor(7)).shape == (64,)
    assert emb(torch.empty(0, 3, dtype=torch.long)).shape == (0, 3, 64)
    assert f"voc_dims={emb.voc_dims}" in repr(emb) and "padding_idx=999" in repr(emb)


def test_padded_vocabulary():
    assert tt.padded_shape(1000, 3) == (10, 10, 10)
    dims = tt.padded_shape(1009, 3)  # 1009 is prime: pad to a balanced product
    assert 1009 <= math.prod(dims) <= 1.2 * 1009 and max(dims) <= 2 * min(dims)
    emb = tt.nn.TTEmbedding(1009, 16, tt_rank=4)
    assert math.prod(emb.voc_dims) >= 1009 and emb.weight.shape[0] == math.prod(emb.voc_dims)
    assert emb(torch.tensor([1008])).shape == (1, 16)
    with pytest.raises(IndexError, match=r"\[0, 1009\).*\[1009\]"):
        emb(torch.tensor([1009]))


def test_huge_vocabulary_is_never_materialized():
    emb = tt.nn.TTEmbedding(10**8, 256, tt_rank=4)  # the dense table would be 100 GB in float32
    assert emb.num_tt_parameters() < 10**5
    assert emb(torch.tensor([0, 12345678, 10**8 - 1])).shape == (3, 256)


def test_init_variance():
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(60, 12, tt_rank=3, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2))
    second = []
    for _ in range(300):
        emb.reset_parameters()
        second.append(dense_from_cores(list(emb.cores)).detach().pow(2).mean())
    assert 0.85 < torch.stack(second).mean().item() < 1.15
    glorot = tt.nn.TTEmbedding(60, 12, tt_rank=3, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2), init="glorot")
    assert dense_from_cores(list(glorot.cores)).detach().pow(2).mean() < 0.2


def test_from_embedding_exact_and_to_embedding(gen):
    dense = nn.Embedding(60, 12, padding_idx=4, dtype=torch.float64)
    layer = tt.nn.TTEmbedding.from_embedding(dense, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2))
    idx = torch.randint(0, 60, (4, 7), generator=gen)
    idx[0, 0] = 4
    assert_close(layer(idx), dense(idx))
    back = layer.to_embedding()
    assert isinstance(back, nn.Embedding) and back.padding_idx == 4 and back.weight.dtype == torch.float64
    assert_close(back(idx), layer(idx))
    assert_close(back.weight, dense.weight)
    low = tt.nn.TTEmbedding.from_embedding(nn.Embedding(1009, 16), max_tt_rank=4)
    assert max(low.tt_ranks) == 4 and low.num_embeddings == 1009


def test_state_dict_round_trip(gen):
    src = tt.nn.TTEmbedding.from_embedding(nn.Embedding(60, 12), max_tt_rank=2, voc_dims=(3, 4, 5))
    dst = tt.nn.TTEmbedding(60, 12, tt_rank=5, voc_dims=(3, 4, 5), emb_dims=src.emb_dims)
    dst.load_state_dict(src.state_dict())
    idx = torch.randint(0, 60, (9,), generator=gen)
    assert dst.tt_ranks == src.tt_ranks
    assert_close(dst(idx), src(idx))


def test_state_dict_of_other_dims_is_refused_and_rank_loads_keep_requires_grad(gen):
    src = tt.nn.TTEmbedding(60, 12, tt_rank=3, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2))
    other = tt.nn.TTEmbedding(60, 12, tt_rank=3, voc_dims=(5, 4, 3), emb_dims=(2, 3, 2))
    shapes = [c.shape for c in other.cores]
    with pytest.raises(RuntimeError, match=r"size mismatch for cores\.0: .*\[1, 3, 2, 3\].*\[1, 5, 2, 3\]"):
        other.load_state_dict(src.state_dict())
    assert [c.shape for c in other.cores] == shapes
    frozen = tt.nn.TTEmbedding(60, 12, tt_rank=2, voc_dims=(3, 4, 5), emb_dims=(2, 3, 2))
    frozen.requires_grad_(False).load_state_dict(src.state_dict())
    assert frozen.tt_ranks == src.tt_ranks and not any(c.requires_grad for c in frozen.cores)
    idx = torch.randint(0, 60, (9,), generator=gen)
    assert_close(frozen(idx), src(idx))
    frozen.load_tt_(tt.TensorTrain(random_cores(((3, 4, 5), (2, 3, 2)), (1, 2, 2, 1), gen=gen)))
    assert frozen.tt_ranks == (1, 2, 2, 1) and not any(c.requires_grad for c in frozen.cores)


def test_bad_arguments():
    with pytest.raises(
        tt.ShapeError, match=r"voc_dims=\(10, 10\) multiply to 100, fewer than num_embeddings=1000"
    ):
        tt.nn.TTEmbedding(1000, 64, tt_rank=4, voc_dims=(10, 10))
    with pytest.raises(tt.ShapeError, match=r"emb_dims=\(4, 4\) multiply to 16, but embedding_dim=64"):
        tt.nn.TTEmbedding(1000, 64, tt_rank=4, emb_dims=(4, 4))
    with pytest.raises(tt.ShapeError, match="same length"):
        tt.nn.TTEmbedding(1000, 64, tt_rank=4, voc_dims=(10, 100), emb_dims=(4, 4, 4))
    with pytest.raises(tt.ShapeError, match=">= 1"):
        tt.nn.TTEmbedding(1000, 64, tt_rank=0)
    with pytest.raises(ValueError, match="'normal', 'glorot'.*'uniform'"):
        tt.nn.TTEmbedding(1000, 64, tt_rank=4, init="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"padding_idx must be within \[-1000, 1000\)"):
        tt.nn.TTEmbedding(1000, 64, tt_rank=4, padding_idx=1000)
    with pytest.raises(TypeError, match="expects nn.Embedding, got Linear"):
        tt.nn.TTEmbedding.from_embedding(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_norm"):
        tt.nn.TTEmbedding.from_embedding(nn.Embedding(10, 4, max_norm=1.0))
    emb = tt.nn.TTEmbedding(100, 8, tt_rank=2)
    with pytest.raises(IndexError, match=r"\[0, 100\).*\[-1, 100\]"):
        emb(torch.tensor([3, -1, 100]))
    with pytest.raises(TypeError, match="integer tensor"):
        emb(torch.tensor([1.0]))
    with pytest.raises(
        TypeError, match="integer tensor.*bool"
    ):  # a mask, not indices (nn.Embedding refuses it)
        emb(torch.tensor([True, False]))
    for bad in (2.5, "3", True):
        with pytest.raises(TypeError, match="padding_idx must be an int or None"):
            tt.nn.TTEmbedding(100, 8, tt_rank=2, padding_idx=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tt_embedding: padding_idx must be an int or None"):
            tt_embedding(torch.tensor([1]), emb.weight, padding_idx=bad)  # type: ignore[arg-type]
    assert tt.nn.TTEmbedding(100, 8, tt_rank=2, padding_idx=np.int64(-1)).padding_idx == 99
    with pytest.raises(tt.ShapeError, match="expected"):
        emb.load_tt_(tt.TensorTrain([torch.randn(1, 100, 8, 1)]))
    with pytest.raises(ValueError, match=r"padding_idx must be within \[-100, 100\), got 100"):
        tt_embedding(torch.tensor([1]), emb.weight, padding_idx=100, num_embeddings=100)
    with pytest.raises(tt.ShapeError, match="num_embeddings=1000 exceeds"):
        tt_embedding(torch.tensor([1]), emb.weight, num_embeddings=1000)


@given(spec=matrix_specs(max_d=4, max_mode=4), seed=seeds)
def test_both_lookup_paths_match_the_dense_table(spec, seed):
    """Row lookups core by core and through every split into two merged halves give the table's rows."""
    from tensortrain.nn.embedding_lookup import _halves, _halves_rows, _tt_rows

    (rows, cols), ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = random_cores((rows, cols), ranks, gen=gen)
    w, table = tt.TensorTrain(cores), dense_from_cores(cores)
    idx = torch.randint(0, math.prod(rows), (7,), generator=gen)
    inverse = torch.randint(0, 7, (9,), generator=gen)
    assert_close(_tt_rows(w, idx, tuple(rows)), table[idx])
    for split in range(1, len(cores)):
        halves = _halves(w, split)
        assert_close(_halves_rows(halves, idx, inverse), table[idx[inverse]])  # into scratch (no autograd)
        halves = tuple(h.detach().requires_grad_() for h in halves)
        assert_close(_halves_rows(halves, idx, inverse), table[idx[inverse]])  # recorded by autograd


def test_inference_lookup_works_in_reused_scratch_and_returns_fresh_rows():
    """A large lookup without autograd gathers and multiplies in :mod:`tensortrain.workspace` scratch (its
    temporaries had been mapped anew, page faults and all, on every call); what it returns aliases none of it."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(1_000_000, 128, tt_rank=16)
    tt.workspace.empty_cache()
    first, second = torch.randint(0, 1_000_000, (2, 4096))
    with torch.no_grad():
        want = emb(first)
        u = first.unique().numel()  # (distinct rows: each is contracted once)
        assert tt.workspace.held_bytes() >= u * (16 * 16 + 16 * 8 + 128) * 4  # L and R slices, products
        held = tt.workspace.held_bytes()
        emb(second)
        assert tt.workspace.held_bytes() == held  # the same buffer again
        with torch.inference_mode():
            emb(second)
    assert_close(want, emb(first))  # unchanged by the later calls; the training path agrees
    tt.workspace.empty_cache()


@pytest.mark.parametrize("path", ["chain", "halves"])
def test_gradients_of_each_lookup_path(gen, monkeypatch, path):
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: None if path == "chain" else 2)
    cores = [c.requires_grad_() for c in random_cores(((2, 3, 2), (2, 1, 3)), (1, 2, 3, 1), gen=gen)]
    idx = torch.tensor([[0, 5, 5, 11], [3, 3, 7, 0]])
    dense = nn.functional.embedding(idx, dense_from_cores(cores))
    weights = torch.randn(dense.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((tt_embedding(idx, tt.TensorTrain(cores)) * weights).sum(), cores)
    for a, b in zip(got, torch.autograd.grad((dense * weights).sum(), cores), strict=True):
        assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *c: tt_embedding(idx, tt.TensorTrain(c), padding_idx=3), cores)


def _graph_names(y: torch.Tensor) -> set[str]:
    names, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn.name() not in names:
            names.add(fn.name())
            todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("frozen", [None, 0, 3])
def test_halves_lookup_double_backward_and_frozen_halves(gen, monkeypatch, frozen):
    """The halves' training lookup (a custom autograd function) against dense, to second order, with the cores of
    one half frozen; complex cores take plain autograd (the function's backward has no conjugates)."""
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: 2)
    cores = random_cores(((2, 3, 2, 2), (2, 1, 3, 2)), (1, 2, 3, 2, 1), gen=gen)
    cores = [c if k == frozen else c.requires_grad_() for k, c in enumerate(cores)]
    idx = torch.tensor([[0, 5, 5, 23], [3, 3, 7, 0]])

    def lookup(*trained):
        it = iter(trained)
        return tt_embedding(
            idx, tt.TensorTrain([c if k == frozen else next(it) for k, c in enumerate(cores)])
        )

    trained = [c for c in cores if c.requires_grad]
    assert "_HalvesLookupBackward" in _graph_names(lookup(*trained))
    # (batched gradients: autograd's vmap, which refuses the out= writes into scratch)
    assert torch.autograd.gradcheck(lookup, trained, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(lookup, trained, check_batched_grad=True)
    complex_cores = [torch.complex(c.detach(), torch.randn_like(c.detach())).requires_grad_() for c in cores]
    y = tt_embedding(idx, tt.TensorTrain(complex_cores))
    assert "_HalvesLookupBackward" not in _graph_names(y)
    dense = dense_from_cores(complex_cores)[idx]
    w = torch.randn(y.shape, generator=gen, dtype=torch.complex128)
    for a, b in zip(
        torch.autograd.grad((y * w).real.sum(), complex_cores),
        torch.autograd.grad((dense * w).real.sum(), complex_cores),
        strict=True,
    ):
        assert_close(a, b)


def _assert_gradients_as_it_ran(y: torch.Tensor, cores: list[torch.Tensor], k: int) -> None:
    """``y`` ran the halves lookup; core ``k`` written in place before backward must neither fail backward's
    version check nor change the gradients: they are those of the lookup as it ran."""
    assert "_HalvesLookupBackward" in _graph_names(y)
    want = torch.autograd.grad(y.sum(), cores, retain_graph=True)
    with torch.no_grad():
        cores[k].mul_(2.0)
    for a, b in zip(torch.autograd.grad(y.sum(), cores), want, strict=True):
        assert_close(a, b)


def test_halves_lookup_choices_of_what_to_keep(gen, monkeypatch):
    """Few distinct rows keep their gathered slices (smaller than the halves); a half whose gradient is not needed
    by the other is not kept; a half that is a core itself is kept as a copy, so a core written in place between
    forward and backward does not fail backward's version check (the gathered slices were copies too)."""
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: 1)
    cores = [c.requires_grad_() for c in random_cores(((5, 6, 7), (2, 2, 2)), (1, 3, 3, 1), gen=gen)]
    few = torch.tensor([4, 4, 200])  # 2 distinct rows: 2 * (2 + 4) * 3 numbers against halves of 30 + 504
    assert "_HalvesLookupBackward" not in _graph_names(tt_embedding(few, tt.TensorTrain(cores)))
    many = torch.arange(0, 210, 3)
    _assert_gradients_as_it_ran(tt_embedding(many, tt.TensorTrain(cores)), cores, 0)

    # (split 1: the left half is core 0 itself; its copy is recorded, so second derivatives through it remain)
    assert torch.autograd.gradgradcheck(lambda *c: tt_embedding(many, tt.TensorTrain(c)), cores)
    computed = [c * 1.0 for c in cores]  # non-leaf cores written in place: the same
    y = tt_embedding(many, tt.TensorTrain(computed))
    want = torch.autograd.grad(y.sum(), cores, retain_graph=True)
    with torch.no_grad():
        computed[0].mul_(2.0)
    for a, b in zip(torch.autograd.grad(y.sum(), cores), want, strict=True):
        assert_close(a, b)

    frozen = [cores[0].detach(), *cores[1:]]  # the left half (core 0) frozen: only the right half's gradient,
    kept: list[tuple[int, ...]] = []  # which needs the left half, not the right one
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        tt_embedding(many, tt.TensorTrain(frozen))
    assert (5, 2, 3) in kept and (42, 3, 4) not in kept


def test_halves_lookup_keeps_indices_not_gathered_slices(monkeypatch):
    """A training lookup of many distinct rows keeps the indices and the two halves for backward, not the gathered
    slices of the halves (``U (D_L + D_R) r`` numbers, which autograd's gathers and product kept); the same
    gradients as those recorded ops."""
    from tensortrain.nn import embedding_lookup

    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(1_000_000, 128, tt_rank=16)
    idx = torch.randint(0, 1_000_000, (4096,))
    gathered = 4096 * (16 * 16 + 16 * 8) * 4
    halves = sum(h.numel() * 4 for h in embedding_lookup._halves(emb.weight, 2))
    g = torch.randn(4096, 128)

    def step():
        kept: dict[int, int] = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = emb(idx)
        return sum(kept.values()), torch.autograd.grad(y, list(emb.cores), g)

    kept, grads = step()
    assert kept < halves + gathered // 4
    monkeypatch.setattr(embedding_lookup._HalvesLookup, "apply", embedding_lookup._lookup_recorded)
    kept_recorded, want = step()
    assert kept_recorded > gathered  # (what the recorded ops keep)
    for a, b in zip(grads, want, strict=True):
        assert_close(a, b)


def test_lookup_path_choice():
    """Many distinct rows of a large table go through halves; a handful go core by core."""
    from tensortrain.nn.embedding_lookup import _halves_split

    big = tt.nn.TTEmbedding(1_000_000, 128, tt_rank=16).weight
    assert _halves_split(big, 4096) == 2
    assert _halves_split(big, 4) is None
    # one core: nothing to split
    assert _halves_split(tt.TensorTrain([torch.ones(1, 10, 4, 1)]), 1000) is None


def test_layer_keeps_its_halves_for_inference_and_sees_core_updates(gen):
    emb = tt.nn.TTEmbedding(1000, 64, tt_rank=4, dtype=torch.float64)
    idx = torch.randint(0, 1000, (300,), generator=gen)
    from tensortrain.nn.embedding_lookup import _halves_split

    assert _halves_split(emb.weight, int(idx.unique().numel())) is not None  # the halves path runs here
    with torch.no_grad():
        first = emb(idx)
        assert len(emb._cache) == 1
        assert_close(emb(idx), first)
        emb.cores[0].mul_(2.0)  # an in-place update bumps the version: the halves are rebuilt
        assert_close(emb(idx), 2 * first)
        emb.cores[1].data.mul_(3.0)  # .data bypasses the version counter: clear_cache() is the documented way
        emb.clear_cache()
        assert_close(emb(idx), 6 * first)
    assert_close(emb(idx), emb.to_embedding()(idx))  # training mode: built with autograd, not cached
    import copy

    assert copy.deepcopy(emb)._cache == {}


def test_a_captured_lookup_reads_no_index_on_the_host(gen, monkeypatch):
    """While a CUDA graph is captured, the range check (min and max read back) and the distinct rows (torch.unique
    sizes its output on the host) ended the capture with an error. The capture needs a GPU (tests/test_cuda.py);
    here it is faked: no value is read, every index is contracted, nothing is kept, and the rows are the same."""
    import tensortrain._transforms as _transforms

    emb = tt.nn.TTEmbedding(1000, 64, tt_rank=4, padding_idx=7, dtype=torch.float64)
    idx = torch.randint(0, 1000, (2, 300), generator=gen)
    idx[0, :3] = 7
    with torch.no_grad():
        want = emb(idx)
    emb.clear_cache()
    monkeypatch.setattr(_transforms, "capturing", lambda t: True)  # (what valueless() asks, everywhere)
    monkeypatch.setattr(torch, "unique", None)  # (called, it would fail)
    monkeypatch.setattr(torch.Tensor, "__int__", None)
    monkeypatch.setattr(torch.Tensor, "tolist", None)
    with torch.no_grad():
        assert_close(emb(idx), want)
    assert not emb._cache


@pytest.mark.parametrize("v", [185189072897, 2**40 + 1, 1009, 30522, 10**6 + 3])
def test_automatic_vocabulary_dims_cover_the_vocabulary(v):
    """Just above k**d (656**4 + 1) the float root rounded down one mode: the table had a row too few."""

    for d in (2, 3, 4):
        dims = tt.padded_shape(v, d)
        assert math.prod(dims) >= v and len(dims) == d
    emb = tt.nn.TTEmbedding(v, 16, tt_rank=2, device="meta")
    assert math.prod(emb.voc_dims) >= v


def test_tt_embedding_checks_num_embeddings():
    w = tt.random_matrix([[4, 5], [2, 4]], tt_rank=3)  # 20 x 8 table
    for bad in ("10", 2.5, True):
        with pytest.raises(TypeError, match="num_embeddings must be an int"):
            tt_embedding(torch.tensor([0, 1]), w, num_embeddings=bad)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="num_embeddings must be >= 1"):
            tt_embedding(torch.tensor([0]), w, num_embeddings=bad)
    assert tt_embedding(torch.tensor([0, 1]), w, num_embeddings=np.int64(10)).shape == (2, 8)


def test_to_embedding_keeps_a_frozen_layer_frozen():
    emb = tt.nn.TTEmbedding.from_embedding(nn.Embedding(20, 8).requires_grad_(False), voc_dims=(4, 5),
                                           emb_dims=(2, 4))  # fmt: skip
    assert not emb.to_embedding().weight.requires_grad
    assert tt.nn.TTEmbedding(20, 8, tt_rank=2).to_embedding().weight.requires_grad


def test_to_embedding_leaves_forward_hooks_out_of_the_table():
    """to_embedding looked every row up through self(...): forward hooks were baked into the table (decompress
    then ran them twice) and a pre-hook saw a made-up input of all V indices."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, dtype=torch.float64, padding_idx=2)
    idx = torch.tensor([1, 2, 5, 7])
    plain = emb(idx)
    emb.register_forward_hook(lambda m, i, o: o * 2)

    def wants_2d(module, args):
        if args[0].dim() != 2:
            raise ValueError("want 2-D indices")

    emb.register_forward_pre_hook(wants_2d)
    assert_close(emb.to_embedding()(idx), plain)
    model = nn.Sequential(nn.Embedding(1000, 64))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    small, _ = tt.compress(model, max_tt_rank=8)
    assert_close(tt.decompress(small)(idx), small(idx))  # the hook once, on the dense layer


def test_padded_rows_are_refused_under_transforms():
    """Without the eager value check (compile, vmap, func.grad, forward AD) the rows [V, V') of the padded table
    were returned; they must be refused there too."""
    import torch.autograd.forward_ad as fwAD

    emb = tt.nn.TTEmbedding(97, 12, tt_rank=3, voc_dims=(4, 5, 5))  # 100 rows, 97..99 are padding
    bad = torch.tensor([98])
    with pytest.raises((IndexError, RuntimeError)):
        torch.func.vmap(emb)(bad[None])
    with pytest.raises((IndexError, RuntimeError)):
        torch.compile(emb, backend="eager", fullgraph=True)(bad)
    with fwAD.dual_level(), pytest.raises((IndexError, RuntimeError)):
        emb(bad)
    params = dict(emb.named_parameters())
    with pytest.raises((IndexError, RuntimeError)):
        torch.func.grad(lambda p: torch.func.functional_call(emb, p, (bad,)).sum())(params)
    ok = torch.tensor([[96, 0]])
    assert_close(torch.func.vmap(emb)(ok)[0], emb(ok[0]))


def test_padding_row_stays_zero_when_other_rows_overflow():
    emb = tt.nn.TTEmbedding(10, 4, tt_rank=2, padding_idx=0, dtype=torch.float16)
    with torch.no_grad():
        for c in emb.cores:
            c.fill_(300.0)  # every product overflows float16
    out = emb(torch.tensor([0, 1]))
    assert torch.equal(out[0], torch.zeros(4, dtype=torch.float16))  # was NaN (inf * 0)
    assert torch.isinf(out[1]).all()


def test_from_embedding_refuses_sparse_gradients():
    """The cores' gradients are dense, so a sparse embedding (trained with SparseAdam, say) is refused
    rather than converted into a layer its optimizer fails on."""
    with pytest.raises(ValueError, match="sparse=True is not supported.*dense.*SparseAdam"):
        tt.nn.TTEmbedding.from_embedding(nn.Embedding(100, 8, sparse=True), max_tt_rank=2)


def test_bad_voc_dims_get_clear_errors():
    for bad in (100, (None, 10), [[10], [10]]):
        with pytest.raises(TypeError, match="voc_dims must be a sequence of ints"):
            tt.nn.TTEmbedding(100, 16, tt_rank=2, voc_dims=bad)
    # a generator is read once (the product used to consume it before the check)
    assert tt.nn.TTEmbedding(100, 16, tt_rank=2, voc_dims=(k for k in [10, 10])).voc_dims == (10, 10)
    with pytest.raises(TypeError, match="voc_dims must be a sequence of ints"):
        tt.nn.TTEmbedding.from_embedding(nn.Embedding(100, 16), voc_dims=100)


def test_pruned_core_follows_optimizer_steps():
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4), dtype=torch.float64)
    prune.l1_unstructured(emb.cores, "0", amount=0.5)
    opt = torch.optim.SGD(emb.parameters(), lr=0.05)
    idx = torch.tensor([0, 5, 19, 7])
    for _ in range(3):
        emb(idx).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    masked = emb.cores._parameters["0_orig"] * emb.cores._buffers["0_mask"]
    table = tt.full(tt.TensorTrain([masked, emb.cores._parameters["1"]]))
    assert_close(emb(idx), table[idx])
    with torch.no_grad():
        assert_close(emb(idx), table[idx])


def test_cores_made_in_inference_mode_train_on_both_lookup_paths():
    """With many distinct indices the merged-halves path reshaped inference tensors, whose views leave
    autograd: the output had no gradient (the row path's index_select did)."""
    with torch.inference_mode():
        emb = tt.nn.TTEmbedding(1000, 8, tt_rank=3)
    for idx in (torch.arange(3), torch.arange(1000)):
        emb.zero_grad()
        out = emb(idx)
        assert out.requires_grad
        out.sum().backward()
        assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in emb.cores)


def test_wide_unsigned_indices_are_a_type_error():
    emb = tt.nn.TTEmbedding(100, 8, tt_rank=2)
    for dtype in (torch.uint16, torch.uint32, torch.uint64):
        with pytest.raises(TypeError, match=f"signed type or uint8 .*got {dtype}"):
            emb(torch.tensor([1, 2], dtype=dtype))
    assert emb(torch.tensor([1, 2], dtype=torch.uint8)).shape == (2, 8)


def _overflowing_half_cores(second_digit: int) -> list[torch.Tensor]:
    """float16 cores of a 64 x 8 table whose rows 4 * second_digit + (0..3) overflow (products of 300s),
    and no others."""
    g = torch.Generator().manual_seed(0)
    cores = [
        torch.randn(1, 4, 2, 2, generator=g),
        torch.randn(2, 4, 2, 2, generator=g),
        torch.randn(2, 4, 2, 1, generator=g),
    ]
    cores = [c.half() for c in cores]
    cores[0][:, 0] = 300.0
    cores[1][:, second_digit] = 300.0
    return cores


def test_a_padding_row_that_overflows_passes_no_gradient():
    """The padding row was still contracted and only masked after: in float16 its overflowed (inf) product times
    the zero gradient gave NaN core gradients."""
    cores = [c.requires_grad_() for c in _overflowing_half_cores(1)]  # rows 4..7 overflow
    out = tt_embedding(torch.tensor([5, 20, 33]), tt.TensorTrain(cores), padding_idx=5)
    assert bool(out.isfinite().all()) and not bool(out[0].any())
    for grad in torch.autograd.grad(out.float().sum(), cores):
        assert bool(grad.isfinite().all())


@pytest.mark.parametrize("padding_idx", [5, 0])
def test_the_row_padding_positions_look_up_instead_may_not_overflow_either(padding_idx, monkeypatch):
    """Padding positions looked up row 0 (row 1 for padding_idx=0) in the padding row's place: where that row
    overflowed in float16, its inf times the zero gradient gave NaN core gradients, although no real index in
    the batch overflowed and the output was finite (nn.Embedding's gradient is finite there). They now look up
    a row a real position looks up anyway."""
    import tensortrain.nn.embedding_lookup as embedding_lookup

    cores = _overflowing_half_cores(0)  # rows 0..3 overflow float16; no other row does
    for halves in (False, True):  # core by core, and through merged halves (split after core 0)
        if halves:
            monkeypatch.setattr(embedding_lookup, "_halves_split", lambda weight, unique: 1)
        leaves = [c.clone().requires_grad_() for c in cores]
        out = tt_embedding(
            torch.tensor([padding_idx, 20, 33, padding_idx]), tt.TensorTrain(leaves), padding_idx
        )
        assert bool(out.isfinite().all()) and not bool(out[0].any()) and not bool(out[3].any())
        for grad in torch.autograd.grad(out.float().sum(), leaves):
            assert bool(grad.isfinite().all())
    # a batch of padding only: zeros (row 0 or 1 stands in)
    only = tt_embedding(
        torch.tensor([padding_idx] * 3), tt.TensorTrain([c.float() for c in cores]), padding_idx
    )
    assert only.shape == (3, 8) and not bool(only.any())


def test_embedding_details_no_test_pinned():
    """From a mutation audit (session 28): the automatic embedding modes descend, inner ranks go with given
    voc_dims, scale_grad_by_freq is refused, to_embedding needs a gradient if any core does, a padded table's
    compression counts its real rows, and extra_repr shows padding_idx=0 and the compression."""
    e = tt.nn.TTEmbedding(1000, 64, tt_rank=8)
    assert e.emb_dims == (4, 4, 2, 2) and e.voc_dims == (5, 5, 5, 8)
    assert tt.nn.TTEmbedding(100, 16, tt_rank=(4,), voc_dims=(10, 10)).tt_ranks == (1, 4, 1)
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        tt.nn.TTEmbedding.from_embedding(nn.Embedding(20, 4, scale_grad_by_freq=True))
    e = tt.nn.TTEmbedding(30, 6, tt_rank=2)
    e.cores[0].requires_grad_(False)
    assert e.to_embedding().weight.requires_grad
    e = tt.nn.TTEmbedding(97, 12, tt_rank=3, voc_dims=(10, 10), emb_dims=(3, 4))
    assert e.compression_factor() == pytest.approx(97 * 12 / e.num_tt_parameters())
    assert "padding_idx=0" in repr(tt.nn.TTEmbedding(10, 4, tt_rank=2, padding_idx=0))
    assert "compression=" in repr(tt.nn.TTEmbedding(10, 4, tt_rank=2))
    with pytest.raises(TypeError, match="weight must be a TT-matrix TensorTrain, got a TT-tensor"):
        tt_embedding(torch.tensor([0]), tt.TensorTrain([torch.randn(1, 4, 2), torch.randn(2, 5, 1)]))
    w = tt.TensorTrain([torch.randn(1, 4, 2, 3), torch.randn(3, 5, 4, 1)])
    with pytest.raises(TypeError, match="sparse_coo tensor"):
        tt_embedding(torch.tensor([[0, 1]]).to_sparse(), w)


def test_a_padding_idx_past_int64_on_a_huge_table():
    """On a table past 2**64 rows, padding_idx=-1 (or >= 2**64) failed comparing int64 indices with it."""
    from tensortrain.nn.functional import tt_embedding

    m = 2**22  # 2**66 rows
    w = tt.TensorTrain([torch.randn(1, m, 2, 2), torch.randn(2, m, 1, 2), torch.randn(2, m, 2, 1)])
    want = tt_embedding(torch.tensor([5]), w)
    for pad in (-1, 2**64):
        assert_close(tt_embedding(torch.tensor([5]), w, padding_idx=pad), want)


def test_embedding_glorot_variance():
    torch.manual_seed(0)
    v, dim = 4096, 256
    vals = []
    for _ in range(4):
        emb = tt.nn.TTEmbedding(v, dim, tt_rank=16, init="glorot")
        with torch.no_grad():
            vals.append(emb(torch.arange(v)).flatten())
    var = float(torch.cat(vals).var())
    want = 2.0 / (v + dim)
    assert 0.8 * want < var < 1.25 * want, (var, want)


def test_embedding_ranks_are_clipped():
    emb = tt.nn.TTEmbedding(16, 16, tt_rank=100, voc_dims=(4, 4), emb_dims=(4, 4))
    assert emb.tt_ranks == (1, 16, 1)
    assert emb.num_tt_parameters() == 2 * 16 * 16


# a training lookup through the merged halves (many distinct rows) passes gradients to
# the cores: the layer's inference cache is not used while grad is recorded
def test_training_lookup_through_the_halves_reaches_the_cores(gen):
    layer = tt.nn.TTEmbedding(
        1000, 16, tt_rank=4, voc_dims=(10, 10, 10), emb_dims=(2, 2, 4), dtype=torch.float64
    )
    with torch.no_grad():
        layer(torch.arange(1000))  # an inference call first fills the cache
    idx = torch.randint(0, 1000, (600,), generator=gen)
    layer(idx).pow(2).sum().backward()
    cores = [c.detach().clone().requires_grad_(True) for c in layer.cores]
    table = tt.full(tt.TensorTrain(cores))
    table[idx].pow(2).sum().backward()
    for c, ref in zip(layer.cores, cores, strict=True):
        assert c.grad is not None
        assert_close(c.grad, ref.grad)


# padding_idx takes [-V, V) as nn.Embedding does: -V is row 0
def test_padding_idx_of_minus_num_embeddings_is_row_zero(gen):
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    idx = torch.tensor([0, 1, 5, 0])
    out = tt.nn.functional.tt_embedding(idx, w, padding_idx=-6)
    table = tt.full(w)
    expected = table[idx].clone()
    expected[idx == 0] = 0
    assert_close(out, expected)
    assert torch.nn.Embedding(6, 4, padding_idx=-6).padding_idx == 0


# num_embeddings may not exceed the table's rows, by one row either
def test_num_embeddings_one_above_the_table_is_refused(gen):
    w = random_tt(((2, 3), (2, 2)), (1, 2, 1), gen=gen)
    with pytest.raises(tt.ShapeError, match="num_embeddings=7 exceeds the table's 6 rows"):
        tt.nn.functional.tt_embedding(torch.tensor([0, 1]), w, num_embeddings=7)
    assert_close(tt.nn.functional.tt_embedding(torch.tensor([5]), w, num_embeddings=6), tt.full(w)[5:6])


def test_load_tt_into_a_pruned_core_is_refused():
    import torch.nn.utils.prune as prune

    emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4), dtype=torch.float64)
    prune.l1_unstructured(emb.cores, "0", amount=0.0)
    w = tt.random_matrix([[4, 5], [2, 4]], tt_rank=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="'0' is pruned or parametrized"):
        emb.load_tt_(w)
    prune.remove(emb.cores, "0")
    emb.load_tt_(w)
    assert_close(emb(torch.arange(20)), tt.full(w))


def test_an_index_past_the_table_is_refused_when_the_trace_flag_flips_midway(monkeypatch):
    """torch's compile flag is process-wide: another thread's compile could skip the value check and end before
    the remap of unchecked indices, so an index into the padded rows came back as a row (411 of 265,331 calls
    with a thread toggling the flag)."""
    import tensortrain.nn.functional as F

    emb = tt.nn.TTEmbedding(1000, 16, tt_rank=2, voc_dims=(8, 8, 16), emb_dims=(2, 2, 4))
    calls = iter([True])  # "compiling" at the check, not afterwards
    monkeypatch.setattr(F, "transforms_active", lambda: next(calls, False))
    with pytest.raises((IndexError, RuntimeError)):
        emb(torch.tensor([1010]))


def test_from_embedding_ignores_the_padding_rows_values():
    """The padding row is zeroed before the TT-SVD: a rank-2 table with a random padding row comes back exact on
    every other row at rank 4, and the TT's padding row is zero (kept, it cost a rank: 3e-2 error, row of 10)."""
    g = torch.Generator().manual_seed(0)
    voc, emb_d = (8, 8), (4, 4)
    table = tt.full(tt.random_matrix([list(voc), list(emb_d)], tt_rank=2, dtype=torch.float64, generator=g))
    table = table.clone()
    table[3] = 5 * torch.randn(16, generator=g, dtype=torch.float64)
    emb = torch.nn.Embedding(64, 16, padding_idx=3, _weight=table)
    layer = tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=4, voc_dims=voc, emb_dims=emb_d)
    keep = torch.arange(64) != 3
    with torch.no_grad():
        assert_close(layer(torch.arange(64))[keep], table[keep], rtol=1e-10, atol=1e-12)
        assert tt.full(layer.weight)[3].abs().max() < 1e-12


def test_from_embedding_leaves_the_source_embeddings_padding_row_alone():
    """The padding row is zeroed in a copy of the table: converting must not write into the user's nn.Embedding
    (whose padding row may hold values, e.g. loaded from a checkpoint or set by hand)."""
    emb = torch.nn.Embedding(12, 4, padding_idx=5)
    with torch.no_grad():
        emb.weight[5] = torch.arange(1.0, 5.0)
    before = emb.weight.detach().clone()
    tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=2)
    assert torch.equal(emb.weight.detach(), before)


# indices below zero alone (none past the table) get the value check's IndexError, listing the five smallest
# bad values; on a table past int64 rows, where no int64 index is past the end, negative ones are refused too
def test_negative_indices_alone_are_refused_by_the_value_check(gen):
    w = random_tt(((4, 5), (2, 4)), (1, 3, 1), gen=gen)
    with pytest.raises(IndexError, match=r"\[0, 20\), got out-of-range values \[-1\] \(min -1, max -1\)"):
        tt_embedding(torch.tensor([-1]), w)
    with pytest.raises(IndexError, match=r"values \[-7, -2, -1, 20, 21\] \(min -7, max 30\)"):
        tt_embedding(torch.tensor([0, -7, 25, -2, 20, -1, 30, 21, 22, -2]), w)
    m = 2**22  # 2**66 rows
    huge = tt.TensorTrain([torch.randn(1, m, 2, 2), torch.randn(2, m, 1, 2), torch.randn(2, m, 2, 1)])
    with pytest.raises(IndexError, match=r"values \[-3, -1\] \(min -3, max 5\)"):
        tt_embedding(torch.tensor([5, -3, -1]), huge)


# indices that are not integers, or on another device than the table, get clear errors before any lookup
def test_complex_and_other_device_indices_are_refused(gen):
    w = random_tt(((4, 5), (2, 4)), (1, 3, 1), gen=gen)
    with pytest.raises(TypeError, match="integer tensor.*complex64"):
        tt_embedding(torch.tensor([1j]), w)
    with pytest.raises(tt.ShapeError, match="indices are on meta but the weight is on cpu"):
        tt_embedding(torch.tensor([1], device="meta"), w)


# a batch of padding_idx=0 only looks up row 1 in its place, not the padding row 0 itself: where row 0 overflows
# float16 (in the merged right half, which backward multiplies by), its inf times the zero gradient would give
# NaN core gradients
def test_an_all_padding_batch_of_padding_idx_zero_passes_finite_gradients(monkeypatch):
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: 1)
    g = torch.Generator().manual_seed(0)
    cores = [torch.randn(1, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    cores.append(torch.randn(2, 4, 2, 1, generator=g))
    cores = [c.half() for c in cores]
    cores[1][:, 0] = 300.0
    cores[2][:, 0] = 300.0  # row 0 = (0, 0, 0) overflows, row 1 = (0, 0, 1) does not
    assert not bool(tt_embedding(torch.tensor([0]), tt.TensorTrain(cores)).isfinite().all())
    leaves = [c.requires_grad_() for c in cores]
    out = tt_embedding(torch.tensor([0, 0]), tt.TensorTrain(leaves), padding_idx=0)
    assert not bool(out.any())
    for grad in torch.autograd.grad(out.float().sum(), leaves):
        assert bool(grad.isfinite().all())


# a negative padding_idx counts from the end of the valid vocabulary (num_embeddings), not of the padded table
def test_a_negative_padding_idx_counts_from_num_embeddings(gen):
    w = random_tt(((4, 5), (2, 4)), (1, 3, 1), gen=gen)  # 20 rows, 18 of them valid
    idx = torch.tensor([17, 3, 17, 0])
    out = tt_embedding(idx, w, padding_idx=-1, num_embeddings=18)
    expected = tt.full(w)[idx].clone()
    expected[idx == 17] = 0
    assert_close(out, expected)
    with pytest.raises(ValueError, match=r"padding_idx must be within \[-18, 18\), got -19"):
        tt_embedding(idx, w, padding_idx=-19, num_embeddings=18)


# without the value check (as under transforms) a negative index into a table past int64 rows, sent to -1, is
# refused by the first core's gather: its first digit stays -1 there, not 0 (which read a real row)
def test_a_negative_index_into_a_table_past_int64_rows_is_refused_without_the_value_check(monkeypatch):
    import tensortrain.nn.functional as F

    m = 2**22  # 2 * 2**66 rows: the first mode's stride is past int64
    w = tt.TensorTrain([torch.randn(1, 2, 1, 1)] + [torch.randn(1, m, 1, 1) for _ in range(3)])
    monkeypatch.setattr(F, "transforms_active", lambda: True)
    assert tt_embedding(torch.tensor([5]), w).shape == (1, 1)
    with pytest.raises((IndexError, RuntimeError)):
        tt_embedding(torch.tensor([-1]), w)


# the right half that is a view of the last core (one core right of the split, rank 1 there: its layout
# for the gathers is the core itself) is kept as a copy too: writing that core in place between forward and
# backward does not fail backward's version check, and the gradients are those of the lookup as it ran
def test_a_right_half_that_is_the_last_core_is_kept_as_a_copy(gen, monkeypatch):
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: 2)
    cores = [c.requires_grad_() for c in random_cores(((5, 6, 7), (2, 2, 2)), (1, 3, 1, 1), gen=gen)]
    _assert_gradients_as_it_ran(tt_embedding(torch.arange(0, 210, 3), tt.TensorTrain(cores)), cores, 2)


# a whole half frozen (here the left one, core 0): the halves' lookup computes and keeps only what the other
# half's gradient needs, and that gradient is the dense table's
@pytest.mark.parametrize("frozen", [0, 2])
def test_halves_lookup_with_a_whole_half_frozen_matches_the_dense_gradients(gen, monkeypatch, frozen):
    from tensortrain.nn import embedding_lookup

    monkeypatch.setattr(embedding_lookup, "_halves_split", lambda w, u: 1 if frozen == 0 else 2)
    cores = random_cores(((5, 6, 7), (2, 2, 2)), (1, 3, 3, 1), gen=gen)
    cores = [c if k == frozen else c.requires_grad_() for k, c in enumerate(cores)]
    trained = [c for c in cores if c.requires_grad]
    many = torch.arange(0, 210, 3)
    y = tt_embedding(many, tt.TensorTrain(cores))
    assert "_HalvesLookupBackward" in _graph_names(y)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    dense = dense_from_cores(cores)[many]
    got = torch.autograd.grad((y * w).sum(), trained)
    for a, b in zip(got, torch.autograd.grad((dense * w).sum(), trained), strict=True):
        assert_close(a, b)


# the split's cost counts the per-row products, not only the merges: on this small two-core table merging the
# halves (1600 by the cost model) pays off only past 100 distinct rows (96 per row against the chain's 112)
def test_the_halves_pay_off_only_past_the_rows_that_amortize_the_merge():
    from tensortrain.nn.embedding_lookup import _halves_split

    w = tt.nn.TTEmbedding(100, 16, tt_rank=4, voc_dims=(10, 10), emb_dims=(4, 4)).weight
    assert [_halves_split(w, u) for u in (1, 50, 100, 101, 10_000)] == [None, None, None, 1, 1]


@pytest.mark.parametrize("sizes", [(0, 5), (5, 0)])
def test_from_embedding_of_an_empty_table_names_its_sizes(sizes):
    """nn.Embedding(0, 5) is a legal module; its conversion failed inside the automatic factoring ("padded_shape:
    n must be >= 1, got 0"), naming neither the layer nor its sizes."""
    match = (
        rf"from_embedding: the nn.Embedding is empty \(num_embeddings={sizes[0]}, embedding_dim={sizes[1]}\)"
    )
    with pytest.raises(tt.ShapeError, match=match):
        tt.nn.TTEmbedding.from_embedding(nn.Embedding(*sizes))
