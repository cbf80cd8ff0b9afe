"""TTLinear on sizes without balanced factors: the TT-matrix is padded, the layer is still exactly in -> out."""

from __future__ import annotations

import copy
import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensortrain as tt
from conftest import assert_close
from strategies import seeds
from tensortrain.contraction import STRATEGIES

# (in_features, out_features, in_dims, out_dims): input padded, output padded, both, neither
PADDED = [
    (7, 6, (2, 2, 2), (3, 2, 1)),
    (6, 7, (1, 2, 3), (2, 2, 2)),
    (11, 13, (3, 4), (4, 4)),
    (12, 6, (3, 4), (2, 3)),
]


def layer_of(case, **kw) -> tt.nn.TTLinear:
    n_in, n_out, ins, outs = case
    return tt.nn.TTLinear(
        n_in, n_out, tt_rank=3, in_dims=ins, out_dims=outs, pad=True, dtype=torch.float64, **kw
    )


def test_automatic_dims_pad_sizes_with_lopsided_factors():
    head = tt.nn.TTLinear(768, 30522, tt_rank=8, device="meta")  # BERT's vocabulary: 2 * 3 * 5087
    assert head.out_dims == (6, 6, 6, 6, 6, 4) and head.in_dims == (2, 2, 3, 4, 4, 4) and head.padded
    assert head.weight.shape == (31104, 768)
    primes = tt.nn.TTLinear(1009, 1013, tt_rank=2, device="meta")
    assert math.prod(primes.in_dims) in range(1009, 1262) and math.prod(primes.out_dims) in range(1013, 1267)
    assert min(primes.in_dims + primes.out_dims) >= 4  # no mode of 1: a real TT, not a low-rank product
    # sizes that factor well are never padded, and a small head is not padded by more than 25%
    for n_in, n_out in [(784, 625), (768, 3072), (4096, 4096), (784, 10), (1000, 10), (12, 7)]:
        auto = tt.nn.TTLinear(n_in, n_out, tt_rank=2, device="meta")
        assert (math.prod(auto.in_dims), math.prod(auto.out_dims)) == (n_in, n_out) and not auto.padded
    exact = tt.nn.TTLinear(1009, 1013, tt_rank=2, pad=False, device="meta")  # the exact factors, as before
    assert exact.in_dims == (1, 1009) and exact.out_dims == (1013, 1) and not exact.padded


@given(n_in=st.integers(1, 3000), n_out=st.integers(1, 3000))
def test_automatic_dims_cover_the_sizes_and_pad_little(n_in, n_out):
    ins, outs = tt.nn.dims.resolve_dims(n_in, n_out, None, None)
    assert len(ins) == len(outs)
    assert n_in <= math.prod(ins) <= 1.25 * n_in and n_out <= math.prod(outs) <= 1.25 * n_out
    assert all(m * n > 1 for m, n in zip(outs, ins, strict=True)) or n_in * n_out <= 3


def test_padded_shape_is_the_smallest_balanced_cover():
    """Against brute force over every ascending tuple of modes at most t = ceil(n^(1/d)), for every n <= 400: the
    smallest product >= n (a greedy shrink once returned 128 = (2, 4, 4, 4) for 97, where (3, 3, 3, 4) = 108)."""
    assert tt.padded_shape(97, 4) == (3, 3, 3, 4) and tt.padded_shape(1021, 8) == (2, 2, 2, 2, 3, 3, 3, 3)
    for n in range(1, 401):
        for d in range(1, 7):
            dims = tt.padded_shape(n, d)
            assert len(dims) == d and list(dims) == sorted(dims) and math.prod(dims) >= n
            if math.prod(dims) == n:
                continue  # balanced exact factors are kept
            t = 1
            while t**d < n:
                t += 1
            tuples = itertools.combinations_with_replacement(range(1, t + 1), d)
            best = min(math.prod(c) for c in tuples if math.prod(c) >= n)
            assert max(dims) <= t and math.prod(dims) == best, (n, d, dims)
            # within a padding limit, or else the exact factors
            capped = tt.padded_shape(n, d, max_padding=0.1)
            assert capped == (dims if best <= 1.1 * n else tt.auto_shape(n, d))


def test_padded_shape_arguments():
    assert tt.padded_shape(97, 4, max_padding=np.float32(0.2)) == (3, 3, 3, 4)
    assert len(tt.padded_shape(10**400 + 1, 4)) == 4  # beyond float range: integer roots
    with pytest.raises(TypeError, match="padded_shape: n must be an int"):
        tt.padded_shape(9.5, 2)
    with pytest.raises(ValueError, match="padded_shape: d must be >= 1"):
        tt.padded_shape(9, 0)
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_padding must be finite and >= 0"):
            tt.padded_shape(97, 4, max_padding=bad)
    with pytest.raises(TypeError, match="max_padding must be None or a real number"):
        tt.padded_shape(97, 4, max_padding="0.25")


@pytest.mark.parametrize("case", PADDED)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_the_dense_block(case, bias, gen):
    layer = layer_of(case, bias=bias)
    n_in, n_out = case[0], case[1]
    assert layer.padded == (math.prod(case[2]) != n_in or math.prod(case[3]) != n_out)
    w_big = tt.full(layer.weight)
    assert w_big.shape == (math.prod(case[3]), math.prod(case[2]))
    w = layer.dense_weight()
    assert w.shape == (n_out, n_in)
    assert_close(w, w_big[:n_out, :n_in])
    x = torch.randn(2, 3, n_in, dtype=torch.float64, generator=gen, requires_grad=True)
    y = layer(x)
    expected = x @ w.T + (layer.bias if bias else 0)
    assert y.shape == (2, 3, n_out) and y.is_contiguous()
    assert_close(y, expected)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(y, params, g)
    want = torch.autograd.grad(expected, params, g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    with torch.no_grad():  # the inference path, with the layer's cache
        assert_close(layer(x), expected)
        assert_close(layer(x), expected)
    assert layer(x[:0, :0]).shape == (0, 0, n_out)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_and_a_memory_bound_give_the_same_layer(strategy, gen):
    layer = layer_of(PADDED[2])
    x = torch.randn(5, 11, dtype=torch.float64, generator=gen)
    expected = x @ layer.dense_weight().T + layer.bias
    layer.strategy = strategy
    assert_close(layer(x), expected)
    layer.strategy = "auto"
    layer.max_saved_bytes = 0
    assert_close(layer(x.requires_grad_()), expected)


def test_gradcheck():
    torch.manual_seed(0)
    layer = layer_of(PADDED[2])
    x = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *c: layer(x), (x, *layer.cores))


@given(seed=seeds, case=st.sampled_from(PADDED))
def test_from_linear_at_full_rank_is_exact_and_epsilon_bounds_the_block(seed, case):
    n_in, n_out, ins, outs = case
    torch.manual_seed(seed)
    dense = nn.Linear(n_in, n_out, dtype=torch.float64)
    layer = tt.nn.TTLinear.from_linear(dense, in_dims=ins, out_dims=outs, pad=True)
    assert (layer.in_features, layer.out_features) == (n_in, n_out) and layer.in_dims == ins
    x = torch.randn(4, n_in, dtype=torch.float64)
    assert_close(layer(x), dense(x))
    assert_close(layer.to_linear().weight, dense.weight)
    truncated = tt.nn.TTLinear.from_linear(dense, epsilon=0.3, in_dims=ins, out_dims=outs, pad=True)
    err = torch.linalg.norm(truncated.dense_weight() - dense.weight) / torch.linalg.norm(dense.weight)
    assert err <= 0.3 + 1e-12


def test_given_dims_pad_only_when_asked():
    with pytest.raises(tt.ShapeError, match=r"in_dims=\(3, 5\) multiply to 15, but in_features=12.*pad=True"):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 5))
    with pytest.raises(
        tt.ShapeError,
        match=r"out_dims=\(2, 2\) multiply to 4, but out_features=6 \(with pad=True they may multiply ",
    ):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 2), pad=True)
    with pytest.raises(TypeError, match="pad must be None, True or False"):
        tt.nn.TTLinear(12, 6, tt_rank=2, pad=1)
    dense = nn.Linear(12, 6)
    with pytest.raises(tt.ShapeError, match="pad=True"):
        tt.nn.TTLinear.from_linear(dense, in_dims=(4, 4))
    assert tt.nn.TTLinear.from_linear(dense, in_dims=(4, 4), pad=True).padded


def test_wrong_input_size_names_in_features(gen):
    layer = layer_of(PADDED[0])
    with pytest.raises(tt.ShapeError, match=r"input has 8 features .* but in_features=7"):
        layer(torch.randn(2, 8, dtype=torch.float64))  # the padded width is not accepted either
    with pytest.raises(tt.ShapeError, match="a scalar"):
        layer(torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="input must be a Tensor"):
        layer([1.0] * 7)


def test_from_tt_with_sizes_and_state_round_trips(gen):
    layer = layer_of(PADDED[2])
    again = tt.nn.TTLinear.from_tt(layer.weight, layer.bias, in_features=11, out_features=13)
    assert (again.in_features, again.out_features, again.in_dims, again.out_dims) == (11, 13, (3, 4), (4, 4))
    x = torch.randn(3, 11, dtype=torch.float64, generator=gen)
    assert_close(again(x), layer(x))
    with pytest.raises(tt.ShapeError, match="multiply to 12, but in_features=13"):
        tt.nn.TTLinear.from_tt(layer.weight, layer.bias, in_features=13, out_features=13)
    fresh = layer_of(PADDED[2])
    fresh.load_state_dict(layer.state_dict())
    assert_close(fresh(x), layer(x))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.padded and clone.out_features == 13
        assert_close(clone(x), layer(x))
    assert "in_features=11, out_features=13, in_dims=(3, 4), out_dims=(4, 4)" in repr(layer)


@pytest.mark.parametrize("bias", [True, False])
def test_state_of_other_sizes_with_the_same_dims_is_refused(bias, tmp_path):
    """A padded layer has the cores of an unpadded one with the same dims: TTLinear(12, 6) loaded the state of
    TTLinear(10, 6) padded to 12 inputs silently (and used weight columns 10-11 it was never trained for), as
    TTEmbedding(18, 4) and TTEmbedding(20, 4) loaded each other's. The sizes travel in the state dict's metadata."""
    torch.manual_seed(0)
    pairs = [
        (
            tt.nn.TTLinear(10, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), bias=bias, pad=True),
            "in_features=10",
        ),
        (
            tt.nn.TTLinear(12, 5, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), bias=False, pad=True),
            "out_features=5",
        ),
        (tt.nn.TTEmbedding(18, 4, tt_rank=2, voc_dims=(4, 5), emb_dims=(2, 2)), "num_embeddings=18"),
    ]
    for small, named in pairs:
        big = (
            tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), bias=small.bias is not None)
            if isinstance(small, tt.nn.TTLinear)
            else tt.nn.TTEmbedding(20, 4, tt_rank=2, voc_dims=(4, 5), emb_dims=(2, 2))
        )
        torch.save(nn.Sequential(small).state_dict(), tmp_path / "small.pt")
        for src, dst in ((small, big), (big, small)):
            before = [p.detach().clone() for p in dst.parameters()]
            with pytest.raises(RuntimeError, match=r"checkpoint is of a TT\w+\(.*\), this layer is a TT"):
                dst.load_state_dict(src.state_dict())
            # nothing loaded
            assert all(torch.equal(a, b) for a, b in zip(before, dst.parameters(), strict=True))
        with pytest.raises(RuntimeError, match=rf"\t0: the checkpoint is of a TT\w+\(.*{named}"):
            # metadata kept by torch.save
            nn.Sequential(big).load_state_dict(torch.load(tmp_path / "small.pt"))
        again = copy.deepcopy(small)
        again.load_state_dict(small.state_dict())  # same sizes: loads
        plain = dict(small.state_dict())  # no metadata (a safetensors file, say): unchecked, as before
        big.load_state_dict(plain)
        assert all(torch.equal(a, b) for a, b in zip(small.cores, big.cores, strict=True))


def test_a_refused_load_leaves_the_layer_as_it_was():
    """The review of the sizes check: a pruning mask under cores. still loaded, a load with assign=True replaced
    the core Parameters (an optimizer built before then stepped stale ones), a wrapper's generated subclass
    (FSDP2's FSDPTTLinear) was named, and metadata of another type gave a self-contradicting refusal or a crash."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    src = tt.nn.TTLinear(10, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), pad=True)
    prune.random_unstructured(src.cores, "0", amount=0.5)

    class Wrapped(tt.nn.TTLinear):  # a subclass made outside tensortrain, as FSDP2 makes one
        pass

    dst = Wrapped(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    prune.random_unstructured(dst.cores, "0", amount=0.5)
    params = list(dst.parameters())
    before = {k: v.detach().clone() for k, v in dst.state_dict().items()}
    for assign in (False, True):
        with pytest.raises(RuntimeError, match=r"checkpoint is of a TTLinear\(in_features=10.*a TTLinear\("):
            dst.load_state_dict(src.state_dict(), assign=assign)
        assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
        assert all(a is b for a, b in zip(params, dst.parameters(), strict=True))
    sd = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3)).state_dict()
    plain = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    other_ranks = tt.nn.TTLinear(10, 6, tt_rank=3, in_dims=(3, 4), out_dims=(2, 3), pad=True)
    plain_params = list(plain.parameters())
    with pytest.raises(RuntimeError, match="checkpoint is of a TTLinear"):  # other ranks too: no resize
        plain.load_state_dict(other_ranks.state_dict())
    assert plain.tt_ranks == (1, 2, 1) and all(
        a is b for a, b in zip(plain_params, plain.parameters(), strict=True)
    )
    junks = (
        {"in_features": "12", "out_features": "6"},
        {"in_features": 12, "out_features": "6"},
        {"in_features": 12},
    )
    for junk in (*junks, {"in_features": torch.arange(3)}, [12, 6]):
        sd._metadata[""]["tensortrain_sizes"] = junk  # not this library's: ignored, as no metadata
        plain.load_state_dict(sd)


def test_compress_pads_a_vocabulary_sized_head_and_reports_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 1021), nn.ReLU(), nn.Linear(1021, 40))
    small, report = tt.compress(model, max_tt_rank=4)
    heads = [small[0], small[2]]
    assert all(isinstance(h, tt.nn.TTLinear) and h.padded for h in heads)
    assert all(min(h.in_dims + h.out_dims) > 1 for h in heads)
    for lay, h, dense in zip(report.layers, heads, [model[0], model[2]], strict=True):
        err = torch.linalg.norm(h.dense_weight() - dense.weight) / torch.linalg.norm(dense.weight)
        assert lay.rel_error == pytest.approx(err.item(), rel=1e-4)
        assert lay.params_after == sum(p.numel() for p in h.parameters())
    x = torch.randn(5, 40)
    assert_close(small(x), tt.decompress(small)(x), rtol=1e-5, atol=1e-5)
    text = str(report)
    assert "padded 0: its dims multiply to" in text and "top-left 1021x40 block" in text


def test_autocast_output_dtype_follows_the_unpadded_layer():
    torch.manual_seed(0)
    x = torch.randn(4, 11)
    for bias in (True, False):
        layer = tt.nn.TTLinear(11, 13, tt_rank=3, bias=bias)
        assert layer.padded
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16  # as nn.Linear's; the float32 bias once promoted it to float32
        assert_close(y.float(), layer(x), rtol=2e-2, atol=2e-2)


def test_from_tt_of_a_padded_weight_asks_for_the_sizes():
    layer = layer_of(PADDED[2])
    with pytest.raises(tt.ShapeError, match=r"from_tt: the bias has 13 entries .* 16 rows.*out_features=13"):
        tt.nn.TTLinear.from_tt(layer.weight, layer.bias)
    with pytest.raises(tt.ShapeError, match=r"in_dims=\(2, 2\) multiply to 4, but in_features=12$"):
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(2, 2))  # fewer: no hint about padding


@pytest.mark.parametrize("limit", [0, 10**4, 10**5, 4 * 97 * 61])
def test_the_memory_bound_counts_the_padded_copy_of_the_input(limit):
    """A padded layer keeps its zero-padded copy of the input for backward, in place of the input: plan()'s
    saved_bytes and the bound count it (it read 0 with 819,200 bytes kept)."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(97, 61, tt_rank=4)  # in dims multiply to 100
    assert layer.padded and math.prod(layer.in_dims) == 100
    layer.max_saved_bytes = limit
    x = torch.randn(2048, 97)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()} | {x.untyped_storage().data_ptr()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    plan = layer.plan(2048)
    assert plan.saved_bytes >= 2048 * 100 * 4
    assert sum(kept.values()) <= plan.saved_bytes


def test_plan_is_the_forward_plan_of_a_pruned_layer(monkeypatch):
    """Pruned cores take the forward path without the layer's cache of merged cores; plan() assumed the cache."""
    import torch.nn.utils.prune as prune

    from tensortrain import contraction as C

    ran = []
    run = C.run
    monkeypatch.setattr(C, "run", lambda prog, *a, **k: ran.append(prog) or run(prog, *a, **k))
    layer = tt.nn.TTLinear(784, 625, tt_rank=4)
    prune.identity(layer.cores, "0")
    with torch.no_grad():
        for batch in (1, 3, 64, 1000):
            layer(torch.randn(batch, 784))
            assert layer.plan(batch).program == ran[-1]


def test_compression_factor_counts_the_layer_sizes_not_the_padded_matrix():
    """The factor is the dense layer's in * out over the cores' count (as the docstring says), not the padded
    TT-matrix's prod(in_dims) * prod(out_dims): a padded layer compresses less than its TT-matrix's size says."""
    layer = tt.nn.TTLinear(11, 13, tt_rank=2, in_dims=(3, 4), out_dims=(4, 4), pad=True)
    assert layer.padded
    assert layer.compression_factor() == pytest.approx(11 * 13 / layer.num_tt_parameters())
    assert f"compression={11 * 13 / layer.num_tt_parameters():,.1f}x" in repr(layer)
