"""TTLinear and tt_linear against the dense layer built from the same cores."""

from __future__ import annotations

import collections
import copy
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
from strategies import matrix_specs, random_cores, seeds, tutorial_layer
from tensortrain.nn.functional import tt_linear


def dense_from_cores(cores) -> torch.Tensor:
    """W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :], built independently of the
    library (the oracle); differentiable w.r.t. the cores."""
    res = cores[0].reshape(cores[0].shape[1], cores[0].shape[2], cores[0].shape[3])  # (I, J, r)
    for c in cores[1:]:
        i, j = res.shape[0], res.shape[1]
        res = torch.einsum("ijr,rmns->imjns", res, c).reshape(i * c.shape[1], j * c.shape[2], c.shape[3])
    return res[..., 0]


# ----------------------------------------------------------------------------------------- forward
@given(spec=matrix_specs(max_d=3, max_mode=4), seed=seeds, lead=st.sampled_from([(), (3,), (2, 3)]))
def test_tt_linear_matches_dense(spec, seed, lead):
    (rows, cols), ranks = spec
    gen = torch.Generator().manual_seed(seed)
    cores = random_cores((rows, cols), ranks, gen=gen)
    w = dense_from_cores(cores)
    x = torch.randn(*lead, math.prod(cols), generator=gen, dtype=torch.float64)
    b = torch.randn(math.prod(rows), generator=gen, dtype=torch.float64)
    assert_close(tt_linear(x, tt.TensorTrain(cores), b), nn.functional.linear(x, w, b))
    assert_close(tt_linear(x, tt.TensorTrain(cores)), x @ w.T)


def test_tt_linear_float32(gen):
    cores = random_cores(((3, 4), (2, 5)), (1, 3, 1), gen=gen, dtype=torch.float32)
    x = torch.randn(7, 10, generator=gen)
    assert_close(tt_linear(x, tt.TensorTrain(cores)), x @ dense_from_cores(cores).T)


def test_layer_forward_equals_to_linear_and_oracle(gen):
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    x = torch.randn(2, 5, 24, generator=gen, dtype=torch.float64)
    dense = layer.to_linear()
    assert isinstance(dense, nn.Linear) and dense.weight.dtype == torch.float64
    assert_close(layer(x), dense(x))
    assert_close(dense.weight, dense_from_cores(list(layer.cores)))
    assert_close(layer.dense_weight(), dense_from_cores(list(layer.cores)))


def test_gradients_match_dense_chain_rule(gen):
    layer = tt.nn.TTLinear(
        12, 10, tt_rank=(1, 3, 2, 1), in_dims=(2, 3, 2), out_dims=(5, 1, 2), dtype=torch.float64
    )
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    params = [*layer.cores, layer.bias, x]
    loss_tt = ((layer(x) - target) ** 2).sum()
    grads_tt = torch.autograd.grad(loss_tt, params)
    w = dense_from_cores(list(layer.cores))  # autograd through the full weight
    loss_dense = ((x @ w.T + layer.bias - target) ** 2).sum()
    grads_dense = torch.autograd.grad(loss_dense, params)
    assert_close(loss_tt, loss_dense)
    for g_tt, g_dense in zip(grads_tt, grads_dense, strict=True):
        assert_close(g_tt, g_dense)


def test_gradcheck(gen):
    cores = [c.requires_grad_() for c in random_cores(((2, 3), (3, 2)), (1, 2, 1), gen=gen)]
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b, *c: tt_linear(x, tt.TensorTrain(c), b), (x, b, *cores))


# ------------------------------------------------------------------------------------ construction
def test_tutorial_parameter_counts():
    layer = tutorial_layer(4)
    assert [tuple(c.shape) for c in layer.cores] == [(1, 5, 7, 4), (4, 5, 4, 4), (4, 5, 7, 4), (4, 5, 4, 1)]
    assert layer.num_tt_parameters() == 1100
    assert sum(p.numel() for p in layer.parameters()) == 1725
    big = tutorial_layer(16)
    assert big.num_tt_parameters() == 14960 and big.bias is not None and big.bias.numel() == 625
    assert isinstance(layer.weight, tt.TensorTrain) and layer.weight.shape == torch.Size([625, 784])
    assert layer.weight.raw_shape == ((5, 5, 5, 5), (7, 4, 7, 4))


def test_auto_dims_and_rank_clipping():
    layer = tt.nn.TTLinear(784, 625, tt_rank=1000)
    assert math.prod(layer.in_dims) == 784 and math.prod(layer.out_dims) == 625
    assert len(layer.in_dims) == len(layer.out_dims) == 4
    sizes = [m * n for m, n in zip(layer.out_dims, layer.in_dims, strict=True)]
    assert layer.tt_ranks == tt.shapes.max_tt_ranks(sizes)
    # two primes, exact factors: a low-rank factorization, d = 2 (padded dims: test_nn_linear_padding.py)
    primes = tt.nn.TTLinear(1009, 1013, tt_rank=2, pad=False)
    assert primes.in_dims == (1, 1009) and primes.out_dims == (1013, 1)
    for n_in, n_out in [(784, 10), (12, 7), (2, 3), (1, 1), (4096, 4096)]:
        auto = tt.nn.TTLinear(n_in, n_out, tt_rank=2)
        assert math.prod(auto.in_dims) == n_in and math.prod(auto.out_dims) == n_out
        assert all(m * n > 1 for m, n in zip(auto.out_dims, auto.in_dims, strict=True)) or n_in * n_out == 1
    small = tt.nn.TTLinear(10, 3, tt_rank=2, in_dims=(2, 5))
    assert math.prod(small.out_dims) == 3 and len(small.out_dims) == 2


def test_no_bias_dtype_and_repr():
    layer = tt.nn.TTLinear(6, 4, tt_rank=2, in_dims=(2, 3), out_dims=(2, 2), bias=False, dtype=torch.float64)
    assert layer.bias is None and "bias" in dict(layer.named_parameters(recurse=False)).keys() | {"bias"}
    assert all(c.dtype == torch.float64 for c in layer.cores)
    text = repr(tutorial_layer(4))
    for piece in (
        "in_dims=(7, 4, 7, 4)",
        "out_dims=(5, 5, 5, 5)",
        "tt_ranks=(1, 4, 4, 4, 1)",
        "params=1,725",
        "tt_params=1,100",
    ):
        assert piece in text
    assert f"compression={784 * 625 / 1100:,.1f}x" in text


@pytest.mark.parametrize(
    ("init", "variance"),
    [
        ("linear", lambda i, o: 1 / (3 * i)),
        ("glorot", lambda i, o: 2 / (i + o)),
        ("he", lambda i, o: 2 / i),
        ("lecun", lambda i, o: 1 / i),
    ],
)
def test_init_variance_of_full_weight(init, variance):
    torch.manual_seed(0)
    in_f, out_f = 24, 20
    layer = tt.nn.TTLinear(
        in_f, out_f, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), init=init, bias=False
    )
    second_moments = []
    for _ in range(400):
        layer.reset_parameters()
        second_moments.append(dense_from_cores(list(layer.cores)).detach().pow(2).mean())
    ratio = torch.stack(second_moments).mean().item() / variance(in_f, out_f)
    assert 0.85 < ratio < 1.15, ratio


def test_bias_init():
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=2, bias_init=1e-3)
    assert layer.bias is not None and torch.all(layer.bias == 1e-3)
    default = tt.nn.TTLinear(100, 625, tt_rank=2)
    assert default.bias is not None and default.bias.abs().max() <= 0.1
    assert default.bias.std() > 0.05  # U(-0.1, 0.1) has std 0.058, not a constant


# ------------------------------------------------------------------------------------- loading, state
def test_load_tt_accepts_weight_and_t3f_kernel(gen):
    layer = tt.nn.TTLinear(12, 6, tt_rank=5, in_dims=(3, 4), out_dims=(2, 3), dtype=torch.float64)
    cores = random_cores(((2, 3), (3, 4)), (1, 2, 1), gen=gen)  # out x in, rank 2 != layer's rank
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    layer.load_tt_(tt.TensorTrain(cores), bias=bias)
    assert layer.tt_ranks == (1, 2, 1)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    assert_close(layer(x), x @ dense_from_cores(cores).T + bias)
    kernel = random_cores(((3, 4), (2, 3)), (1, 3, 1), gen=gen)  # t3f: in x out
    layer.load_tt_(tt.TensorTrain(kernel))
    assert_close(layer(x), x @ dense_from_cores(kernel) + bias)
    made = tt.nn.TTLinear.from_tt(tt.TensorTrain(cores), bias=bias)
    assert (made.in_features, made.out_features, made.tt_ranks) == (12, 6, (1, 2, 1))
    assert_close(made(x), x @ dense_from_cores(cores).T + bias)
    from_kernel = tt.nn.TTLinear.from_tt(tt.TensorTrain(kernel), bias=bias)  # bias length tells in from out
    assert (from_kernel.in_features, from_kernel.out_features) == (12, 6)
    assert_close(from_kernel(x), x @ dense_from_cores(kernel) + bias)


def test_complex_values_into_a_real_layer_are_refused_and_nothing_is_written(gen):
    """Complex cores or bias were cast to the real layer with their imaginary parts dropped (torch warns once
    per process): a weight that is not even the real part of the given one."""
    layer = tt.nn.TTLinear(6, 6, tt_rank=2, in_dims=(2, 3), out_dims=(3, 2))
    before = [c.detach().clone() for c in layer.parameters()]
    real = tt.TensorTrain(random_cores(((3, 2), (2, 3)), (1, 2, 1), gen=gen, dtype=torch.float32))
    cplx = tt.TensorTrain([c.to(torch.complex64) for c in real.tt_cores])
    with pytest.raises(TypeError, match="TTLinear.load_tt_: cannot cast a complex TT"):
        layer.load_tt_(cplx)
    with pytest.raises(TypeError, match="complex bias values"):
        layer.load_tt_(real, bias=torch.ones(6, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex bias values"):
        tt.nn.TTLinear.from_tt(real, bias=torch.ones(6, dtype=torch.complex64))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    emb = tt.nn.TTEmbedding(6, 6, tt_rank=2, voc_dims=(2, 3), emb_dims=(3, 2))
    with pytest.raises(TypeError, match="TTEmbedding.load_tt_: cannot cast a complex TT"):
        emb.load_tt_(tt.TensorTrain([c.to(torch.complex64) for c in emb.weight.tt_cores]))
    complex_layer = tt.nn.TTLinear(6, 6, tt_rank=2, in_dims=(2, 3), out_dims=(3, 2), dtype=torch.complex64)
    complex_layer.load_tt_(real)  # real into complex is exact
    assert torch.equal(tt.full(complex_layer.weight).real, tt.full(real))


def test_load_tt_of_rounded_weight_gives_contiguous_cores():
    # tt.round's cores are transposed views; Parameters made from them must be contiguous (safetensors refuses
    # non-contiguous tensors, DDP buckets and .view() want them)
    layer = tt.nn.TTLinear(784, 625, tt_rank=8, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
    layer.load_tt_(tt.round(layer.weight, max_tt_rank=3))
    assert layer.tt_ranks == (1, 3, 3, 3, 1)
    assert all(c.is_contiguous() for c in layer.cores)
    emb = tt.nn.TTEmbedding(1000, 64, tt_rank=8)
    emb.load_tt_(tt.round(emb.weight, max_tt_rank=3))
    assert all(c.is_contiguous() for c in emb.cores)


def test_state_dict_round_trip_survives_rank_change(gen):
    src = tt.nn.TTLinear(12, 6, tt_rank=4, in_dims=(3, 4), out_dims=(2, 3), dtype=torch.float64)
    src.load_tt_(tt.TensorTrain(random_cores(((2, 3), (3, 4)), (1, 2, 1), gen=gen)))
    dst = tt.nn.TTLinear(12, 6, tt_rank=4, in_dims=(3, 4), out_dims=(2, 3), dtype=torch.float64)
    dst.load_state_dict(src.state_dict())
    assert dst.tt_ranks == (1, 2, 1)
    x = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    assert_close(dst(x), src(x))
    assert set(src.state_dict()) == {"cores.0", "cores.1", "bias"}


def _core_shapes(layer: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(c.shape) for c in layer.cores]


def test_load_state_dict_refuses_other_mode_sizes():
    src = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), bias=False)
    wider = tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 3, 2), bias=False)
    before = _core_shapes(wider)
    with pytest.raises(RuntimeError, match=r"size mismatch for cores\.1: .*\[3, 2, 3, 3\].*\[3, 3, 3, 3\]"):
        wider.load_state_dict(src.state_dict())
    assert _core_shapes(wider) == before and wider(torch.randn(2, 24)).shape == (2, 30)
    # other in_dims with the same product, and a rank change on top: the message names the mode sizes
    swapped = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(4, 3, 2), out_dims=(5, 2, 2), bias=False)
    before = _core_shapes(swapped)
    with pytest.raises(RuntimeError, match=r"cores: .*mode sizes \(5, 2\), \(2, 3\), \(2, 4\).*"):
        swapped.load_state_dict(src.state_dict())
    assert _core_shapes(swapped) == before
    # strict=False with a core missing: still refused, and no core is resized
    partial = {k: v for k, v in src.state_dict().items() if k != "cores.2"}
    with pytest.raises(RuntimeError, match=r"size mismatch for cores\.1"):
        wider.load_state_dict(partial, strict=False)
    assert _core_shapes(wider) == _core_shapes(
        tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 3, 2), bias=False)
    )
    with pytest.raises(RuntimeError, match=r"size mismatch for cores\.0: .*\[1, 5, 2\].*\[1, 5, 2, 3\]"):
        src.load_state_dict({**src.state_dict(), "cores.0": torch.zeros(1, 5, 2)})


def test_load_state_dict_refuses_ranks_that_do_not_chain(gen):
    src = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2), bias=False)
    dst = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(2, 3, 4), out_dims=(5, 2, 2), bias=False)
    before = _core_shapes(dst)
    broken = {**src.state_dict(), "cores.1": torch.randn(3, 2, 3, 2, generator=gen)}
    with pytest.raises(RuntimeError, match=r"TT-ranks .*cores\.1 ends with rank 2 but cores\.2 starts"):
        dst.load_state_dict(broken)
    assert _core_shapes(dst) == before
    # strict=False, cores.2 missing: the loaded cores.1 (rank 3) would not chain with dst's cores.2 (rank 2)
    partial = {k: v for k, v in src.state_dict().items() if k != "cores.2"}
    with pytest.raises(
        RuntimeError, match=r"cores\.1 ends with rank 3 but cores\.2 \(the layer's own.*\) starts with rank 2"
    ):
        dst.load_state_dict(partial, strict=False)
    assert _core_shapes(dst) == before
    edge = {**src.state_dict(), "cores.0": torch.randn(2, 5, 2, 3, generator=gen)}
    with pytest.raises(RuntimeError, match=r"cores\.0 starts with rank 2.*boundary ranks must be 1"):
        dst.load_state_dict(edge)
    # ranks of 0 chain with each other but left empty cores (the next forward failed inside a reshape); the
    # embedding, whose cores are (r, vocabulary mode, embedding mode, r), shares the check
    empty = [torch.randn(1, 5, 2, 0), torch.randn(0, 2, 3, 0), torch.randn(0, 2, 4, 1)]
    emb = tt.nn.TTEmbedding(24, 20, tt_rank=2, voc_dims=(2, 3, 4), emb_dims=(5, 2, 2))
    for layer, cores in ((dst, empty), (emb, [c.transpose(1, 2) for c in empty])):
        kept = _core_shapes(layer)
        with pytest.raises(RuntimeError, match=r"cores\.0 ends with rank 0 \(TT-ranks must be at least 1\)"):
            layer.load_state_dict({**layer.state_dict(), **{f"cores.{k}": c for k, c in enumerate(cores)}})
        assert _core_shapes(layer) == kept
    # a checkpoint on meta (no values) at other ranks: the layer was resized, then kept torch.empty's values
    # once the copy out of meta failed
    values = [c.detach().clone() for c in dst.cores]
    with pytest.raises(RuntimeError, match=r"core\(s\) \[0, 1, 2\] are on the meta device, with no values"):
        dst.load_state_dict({k: v.to("meta") for k, v in src.state_dict().items()})
    assert all(torch.equal(a, b) for a, b in zip(values, dst.cores, strict=True))
    # a partial load whose ranks chain with the layer's other cores is fine
    mixed = tt.nn.TTLinear(24, 20, tt_rank=(1, 2, 3, 1), in_dims=(2, 3, 4), out_dims=(5, 2, 2), bias=False)
    dst.load_state_dict({"cores.1": mixed.cores[1], "cores.2": mixed.cores[2]}, strict=False)
    assert dst.tt_ranks == (1, 2, 3, 1) and dst(torch.randn(2, 24)).shape == (2, 20)


def test_rank_changing_loads_keep_requires_grad(gen):
    src = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    frozen = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(2, 3, 4), out_dims=(5, 2, 2)).requires_grad_(False)
    frozen.load_state_dict(src.state_dict())
    assert frozen.tt_ranks == (1, 3, 3, 1)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.load_tt_(tt.TensorTrain(random_cores(((5, 2, 2), (2, 3, 4)), (1, 2, 2, 1), gen=gen)))
    assert frozen.tt_ranks == (1, 2, 2, 1) and not any(p.requires_grad for p in frozen.parameters())
    partly = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    partly.cores[1].requires_grad_(False)
    partly.load_state_dict(src.state_dict())
    assert [c.requires_grad for c in partly.cores] == [True, False, True]


@pytest.mark.parametrize("load", ["load_state_dict", "load_tt_"])
def test_rank_changing_loads_under_inference_mode_leave_trainable_cores(load):
    """A checkpoint loaded under torch.inference_mode into a layer made outside it: nn.Linear's load copies in place
    and its weight trains afterwards; a load of new ranks made the new cores inference tensors, which no optimizer
    can update ('Inplace update to inference tensor outside InferenceMode')."""
    src = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    layer = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    with torch.inference_mode():
        if load == "load_state_dict":
            layer.load_state_dict(src.state_dict())
        else:
            layer.load_tt_(src.weight, bias=src.bias)
    assert layer.tt_ranks == (1, 3, 3, 1)
    assert not any(p.is_inference() for p in layer.parameters())
    x = torch.randn(4, 24)
    assert_close(layer(x), src(x))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().sum().backward()
    opt.step()


# ------------------------------------------------------------------------------------------ errors
def test_bad_arguments():
    with pytest.raises(tt.ShapeError, match=r"in_dims=\(7, 4, 7\) multiply to 196, but in_features=784"):
        tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7))
    with pytest.raises(tt.ShapeError, match=r"out_dims=\(5, 5\) multiply to 25, but out_features=625"):
        tt.nn.TTLinear(784, 625, tt_rank=4, out_dims=(5, 5))
    with pytest.raises(tt.ShapeError, match="same length"):
        tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(28, 28), out_dims=(5, 5, 25))
    with pytest.raises(tt.ShapeError, match=">= 1"):
        tt.nn.TTLinear(784, 625, tt_rank=0)
    with pytest.raises(tt.ShapeError, match=">= 1"):
        tt.nn.TTLinear(784, 625, tt_rank=(1, 4, 0, 4, 1), in_dims=(7, 4, 7, 4))
    with pytest.raises(ValueError, match="'linear', 'glorot', 'he', 'lecun'.*'xavier'"):
        tt.nn.TTLinear(784, 625, tt_rank=4, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(tt.ShapeError, match="in_features must be >= 1"):
        tt.nn.TTLinear(0, 625, tt_rank=4)
    with pytest.raises(TypeError, match="expects nn.Linear, got Conv2d"):
        tt.nn.TTLinear.from_linear(nn.Conv2d(1, 1, 3))  # type: ignore[arg-type]
    # swapped dims got only "multiply to 625, but in_features=784"
    with pytest.raises(tt.ShapeError, match=r"they look swapped \(in_dims are the input modes\)"):
        tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(5, 5, 5, 5), out_dims=(7, 4, 7, 4))


def test_a_rank_sequence_with_automatic_dims_must_be_the_full_form():
    """With automatic dims the user did not choose d: (1, 8, 1), meant as the full ranks of 2 cores, was read as
    the inner ranks of the 4 cores the layer chose, (1, 1, 8, 1, 1), silently."""
    dense = nn.Linear(784, 625)
    for build in (
        lambda r: tt.nn.TTLinear(784, 625, tt_rank=r),
        lambda r: tt.nn.TTLinear.from_linear(dense, max_tt_rank=r),
        lambda r: tt.nn.TTEmbedding(1000, 64, tt_rank=r),
        lambda r: tt.nn.TTEmbedding.from_embedding(nn.Embedding(1000, 64), max_tt_rank=r),
    ):
        with pytest.raises(
            tt.ShapeError, match=r"=\(1, 8, 1\) is a sequence, but the dims were chosen automatic"
        ):
            build((1, 8, 1))
        assert build((1, 8, 8, 8, 1)).tt_ranks == (1, 8, 8, 8, 1)  # the full form says d itself
        assert max(build(8).tt_ranks) == 8
    # an iterator is read once, as a tuple: map() dims were consumed by the swapped-dims hint, and iter() ranks
    # slipped past the check
    layer = tt.nn.TTLinear(784, 625, tt_rank=3, in_dims=map(int, "4 7 4 7".split()), out_dims=iter((5,) * 4))
    assert (layer.in_dims, layer.out_dims) == ((4, 7, 4, 7), (5, 5, 5, 5))
    with pytest.raises(tt.ShapeError, match=r"tt_rank=\(1, 8, 1\) is a sequence, but the dims were chosen"):
        tt.nn.TTLinear(784, 625, tt_rank=iter((1, 8, 1)))
    assert tt.nn.TTLinear(784, 625, tt_rank=map(int, "8"), in_dims=(28, 28), out_dims=(25, 25)).tt_ranks == (
        1,
        8,
        1,
    )
    # one side's dims fix d: t3f's inner ranks stay accepted (the check took either side's absence for automatic)
    assert tt.nn.TTLinear(12, 6, tt_rank=(2,), in_dims=(3, 4)).tt_ranks == (1, 2, 1)
    assert tt.nn.TTLinear.from_linear(nn.Linear(12, 6), max_tt_rank=(2,), in_dims=(3, 4)).tt_ranks == (
        1,
        2,
        1,
    )
    assert tt.nn.TTEmbedding(12, 6, tt_rank=(2,), voc_dims=(3, 4)).tt_ranks == (1, 2, 1)
    with pytest.raises(
        TypeError, match="must be an int or a sequence of ints"
    ):  # a string is not a sequence here
        tt.nn.TTLinear(784, 625, tt_rank="8")  # type: ignore[arg-type]
    with pytest.raises(
        tt.ShapeError, match=r"\(1, 8, 8, 8, 8, 8, 1\) is a sequence, but the dims were chosen"
    ):
        tt.nn.TTLinear(784, 625, tt_rank=(1, 8, 8, 8, 8, 8, 1))  # longer than d + 1 too
    with pytest.raises(tt.ShapeError, match=r"in_dims=\(2, 3\) multiply to 6, but in_features=12$"):
        # (not "swapped": only one side is off)
        tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(2, 3), out_dims=(2, 3))
    # with dims given, t3f's d - 1 inner ranks stay accepted
    assert tt.nn.TTLinear(784, 625, tt_rank=(8,), in_dims=(28, 28), out_dims=(25, 25)).tt_ranks == (1, 8, 1)


def test_bad_inputs(gen):
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    with pytest.raises(tt.ShapeError, match=r"input has 10 features.*12 columns \(in dims \(3, 4\)\)"):
        layer(torch.randn(2, 10))
    with pytest.raises(tt.ShapeError, match="dtype torch.float64"):
        layer(torch.randn(2, 12, dtype=torch.float64))
    with pytest.raises(TypeError, match="TT-matrix"):
        tt_linear(torch.randn(2, 12), tt.TensorTrain([torch.randn(1, 12, 1)]))
    with pytest.raises(tt.ShapeError, match=r"bias must have shape \(6,\)"):
        tt_linear(torch.randn(2, 12), layer.weight, torch.randn(5))
    with pytest.raises(tt.ShapeError, match=r"expected out x in = \(2, 3\) x \(3, 4\)"):
        layer.load_tt_(
            tt.TensorTrain(random_cores(((2, 3), (4, 3)), (1, 2, 1), gen=gen, dtype=torch.float32))
        )


# ---------------------------------------------------------------------------------------- training
def test_tiny_training_run_learns():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    teacher = tt.nn.TTLinear(16, 12, tt_rank=2, in_dims=(4, 4), out_dims=(3, 4), init="he")
    x = torch.randn(256, 16, generator=gen)
    with torch.no_grad():
        y = teacher(x)
    student = tt.nn.TTLinear(16, 12, tt_rank=3, in_dims=(4, 4), out_dims=(3, 4))
    opt = torch.optim.Adam(student.parameters(), lr=3e-2)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = nn.functional.mse_loss(student(x), y)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first


# ------------------------------------------------------------------------------------- from_linear
def test_from_linear_full_rank_is_exact(gen):
    torch.manual_seed(0)
    dense = nn.Linear(24, 20, dtype=torch.float64)
    layer = tt.nn.TTLinear.from_linear(dense, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    assert layer.cores[0].dtype == torch.float64 and layer.in_dims == (2, 3, 4)
    x = torch.randn(3, 24, generator=gen, dtype=torch.float64)
    assert_close(layer(x), dense(x))
    assert_close(layer.to_linear().weight, dense.weight)
    no_bias = tt.nn.TTLinear.from_linear(nn.Linear(24, 20, bias=False, dtype=torch.float64))
    assert no_bias.bias is None
    assert_close(no_bias.to_linear().weight, dense_from_cores(list(no_bias.cores)))


def test_frozen_dense_layers_convert_to_frozen_tt_layers():
    """from_linear / from_embedding / compress keep requires_grad: a frozen backbone stays frozen."""
    lin, emb = nn.Linear(12, 8), nn.Embedding(30, 8)
    lin.weight.requires_grad_(False)
    emb.requires_grad_(False)
    layer = tt.nn.TTLinear.from_linear(lin, max_tt_rank=2)
    assert not any(c.requires_grad for c in layer.cores) and layer.bias.requires_grad
    assert not any(c.requires_grad for c in tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=2).cores)
    model, _ = tt.compress(
        nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64).requires_grad_(False)), max_tt_rank=2
    )
    assert all(isinstance(m, tt.nn.TTLinear) for m in model)
    assert all(p.requires_grad for p in model[0].parameters())
    assert not any(p.requires_grad for p in model[1].parameters())


def test_from_linear_truncated():
    torch.manual_seed(0)
    dense = nn.Linear(784, 625)
    layer = tt.nn.TTLinear.from_linear(dense, max_tt_rank=16, in_dims=(7, 4, 7, 4), out_dims=(5, 5, 5, 5))
    assert sum(p.numel() for p in layer.parameters()) == 14960 + 625  # the t3f tutorial's 15,585
    assert torch.equal(layer.bias, dense.bias)
    small = nn.Linear(24, 20, dtype=torch.float64)
    approx = tt.nn.TTLinear.from_linear(small, epsilon=0.3)
    err = torch.linalg.norm(approx.dense_weight() - small.weight) / torch.linalg.norm(small.weight)
    full_ranks = tt.shapes.max_tt_ranks([m * n for m, n in zip(approx.out_dims, approx.in_dims, strict=True)])
    assert err <= 0.3 + 1e-12 and approx.tt_ranks < full_ranks


@given(spec=matrix_specs(max_d=3, max_mode=4), seed=seeds)
def test_from_linear_exact_over_shapes(spec, seed):
    (rows, cols), _ = spec
    gen = torch.Generator().manual_seed(seed)
    dense = nn.Linear(math.prod(cols), math.prod(rows), dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(dense.weight.shape, generator=gen, dtype=torch.float64))
    layer = tt.nn.TTLinear.from_linear(dense, in_dims=cols, out_dims=rows)
    assert layer.weight.raw_shape == (rows, cols)
    assert_close(layer.to_linear().weight, dense.weight)
    x = torch.randn(2, math.prod(cols), generator=gen, dtype=torch.float64)
    assert_close(layer(x), dense(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_linear_half_precision(dtype):
    torch.manual_seed(0)
    dense = nn.Linear(16, 12, dtype=dtype)
    layer = tt.nn.TTLinear.from_linear(dense, in_dims=(4, 4), out_dims=(3, 4))  # exact ranks
    assert all(c.dtype == dtype for c in layer.cores) and layer.bias is not None and layer.bias.dtype == dtype
    err = (layer.dense_weight().float() - dense.weight.float()).abs().max()
    assert err < 1e-2 * dense.weight.float().abs().max()


@pytest.mark.parametrize("strategy", ["auto", "full", "cores_rtl", "grouped_ltr"])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_a_core_replaced_by_one_whose_rank_does_not_chain_is_a_clear_error(strategy, batch):
    """The forward checked its cores nowhere: it failed inside a reshape or a GEMM, each plan its own way."""
    layer = tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 3, 2))
    layer.strategy = strategy
    layer.cores[0] = nn.Parameter(torch.randn(1, 5, 2, 4))
    for grad in (False, True):
        with (
            torch.set_grad_enabled(grad),
            pytest.raises(tt.ShapeError, match=r"TT-ranks do not chain: core 0"),
        ):
            layer(torch.randn(batch, 24))


@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_layers_run_on_the_meta_device(batch):
    """Shape inference on meta tensors (as for deferred initialization) through every path, forward and backward."""
    layer = tt.nn.TTLinear(4096, 4096, tt_rank=16, device="meta")
    x = torch.empty(batch, 4096, device="meta")
    with torch.no_grad():
        assert layer(x).shape == (batch, 4096)
    y = layer(x.requires_grad_())
    y.sum().backward()
    assert y.shape == (batch, 4096) and layer.cores[1].grad.shape == layer.cores[1].shape
    emb = tt.nn.TTEmbedding(10_000, 64, tt_rank=8, device="meta")
    assert emb(torch.zeros(batch, 3, dtype=torch.long, device="meta")).shape == (batch, 3, 64)


def test_fractional_dims_are_refused():
    """in_dims=(8.7, 8) was read as (8, 8)."""
    for bad in ((8.7, 8), "88", (8, None)):
        with pytest.raises(TypeError, match="in_dims must be a sequence of ints"):
            tt.nn.TTLinear(64, 64, tt_rank=2, in_dims=bad, out_dims=(8, 8))  # type: ignore[arg-type]
    assert tt.nn.TTLinear(64, 64, tt_rank=2, in_dims=(np.int64(8), 8), out_dims=(8, 8)).in_dims == (8, 8)


def test_init_helpers_refuse_degenerate_arguments():
    from tensortrain.nn.init import dense_variance, tt_normal_

    with pytest.raises(ValueError, match="fan_in and fan_out must be ints >= 1"):
        dense_variance("glorot", 0, 5)
    with pytest.raises(ValueError, match="expected at least one core"):
        tt_normal_([], 1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="variance must be finite and > 0"):
            tt_normal_([torch.empty(1, 3, 1)], bad)


def test_non_tensor_input_is_a_type_error():
    layer = tt.nn.TTLinear(12, 10, tt_rank=3)
    with pytest.raises(TypeError, match="input must be a Tensor, got list"):
        layer([[0.0] * 12])
    with pytest.raises(TypeError, match="input must be a Tensor, got ndarray"):
        tt_linear(np.zeros((3, 12), dtype=np.float32), layer.weight)


def test_to_linear_keeps_a_frozen_layer_frozen():
    lin = nn.Linear(12, 10).requires_grad_(False)
    layer = tt.nn.TTLinear.from_linear(lin, in_dims=(3, 4), out_dims=(5, 2))
    assert [p.requires_grad for p in layer.to_linear().parameters()] == [False, False]
    assert all(p.requires_grad for p in tt.nn.TTLinear(12, 10, tt_rank=2).to_linear().parameters())


def test_from_lazy_linear_and_bias_init_checks():
    with pytest.raises(ValueError, match="LazyLinear has not been initialized"):
        tt.nn.TTLinear.from_linear(nn.LazyLinear(10))
    # materialized by load_state_dict, in_features still 0 (torch sets it at the first forward): it converts,
    # as compress converts it
    lazy, lin = nn.LazyLinear(8), nn.Linear(6, 8)
    lazy.load_state_dict(lin.state_dict())
    layer = tt.nn.TTLinear.from_linear(lazy)
    assert (layer.in_features, layer.out_features) == (6, 8)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="bias_init must be a number or None, got 'zeros'"):
        tt.nn.TTLinear(12, 10, tt_rank=2, bias_init="zeros")  # type: ignore[arg-type]


def test_bias_is_a_flag():
    """A bias tensor failed in torch's "Boolean value of Tensor ... is ambiguous"; a string or an int was read as
    its truth value (``bias="False"`` gave a bias)."""
    with pytest.raises(TypeError, match=r"TTLinear: bias is a flag .*TTLinear.from_tt\(tt_matrix, bias\)"):
        tt.nn.TTLinear(12, 10, tt_rank=2, bias=torch.zeros(10))  # type: ignore[arg-type]
    for bad in ("False", 1, None):
        with pytest.raises(TypeError, match=f"TTLinear: bias must be True or False, got {bad!r}"):
            tt.nn.TTLinear(12, 10, tt_rank=2, bias=bad)  # type: ignore[arg-type]
    assert tt.nn.TTLinear(12, 10, tt_rank=2, bias=np.bool_(False)).bias is None
    w = tt.random_matrix([[2, 5], [3, 4]], tt_rank=2)
    with pytest.raises(TypeError, match="TTLinear.from_tt: has_bias must be True or False, got 1"):
        tt.nn.TTLinear.from_tt(w, has_bias=1)  # type: ignore[arg-type]
    assert tt.nn.TTLinear.from_tt(w, has_bias=np.bool_(True)).bias.shape == (10,)
    assert tt.nn.TTLinear(12, 10, tt_rank=2, bias=True).bias.shape == (10,)


@pytest.mark.parametrize("strategy", ["auto", "full", "cores_rtl", "grouped_ltr"])
def test_bias_only_training_saves_nothing_of_the_input(strategy):
    """With frozen cores the full plan still kept x for backward: an input made under inference_mode, or one
    changed in place before backward, failed where nn.Linear's bias trains."""
    layer = tt.nn.TTLinear(64, 48, tt_rank=4, in_dims=(4, 4, 4), out_dims=(4, 4, 3), dtype=torch.float64)
    layer.cores.requires_grad_(False)
    layer.strategy = strategy
    with torch.inference_mode():
        feats = torch.randn(512, 64, dtype=torch.float64)
    layer(feats).sum().backward()
    assert_close(layer.bias.grad, torch.full((48,), 512.0, dtype=torch.float64))
    buf = torch.randn(512, 64, dtype=torch.float64)
    y = layer(buf)
    buf.add_(1)
    y.square().sum().backward()
    assert_close(layer.bias.grad, 512.0 + 2 * y.detach().sum(0))


def test_a_layer_can_be_told_its_contraction_strategy(monkeypatch):
    """layer.strategy forces the kind of plan every forward runs (e.g. "full" to train with little activation
    memory); plan() reports it; invalid names are refused; it is configuration, not state."""
    from tensortrain.contraction import full_plan

    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(7, 4, 7, 4), out_dims=(5,) * 4, dtype=torch.float64)
    x = torch.randn(64, 784, dtype=torch.float64)
    assert layer.strategy == "auto" and layer.plan(64).kind == "sweep"
    calls = []
    real = full_plan.full_linear
    monkeypatch.setattr(full_plan, "full_linear", lambda *a: calls.append(1) or real(*a))
    layer(x).sum().backward()
    with torch.no_grad():
        layer(x)
    assert not calls
    layer.strategy = "full"
    assert layer.plan(64).kind == "full" and layer.plan(64, requires_grad=False).kind == "full"
    y = layer(x)
    y.sum().backward()
    with torch.no_grad():
        assert_close(layer(x), y)
    assert len(calls) == 2
    assert_close(y, x @ layer.dense_weight().T + layer.bias)
    assert "strategy='full'" in repr(layer)
    assert copy.deepcopy(layer).strategy == "full" and "strategy" not in str(list(layer.state_dict()))
    with pytest.raises(ValueError, match="unknown strategy 'fast'; valid strategies are auto, tune, full"):
        layer.strategy = "fast"
    assert layer.strategy == "full"


def _sparse_and_nested(x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        csr = x.to_sparse_csr()
    jagged = torch.nested.nested_tensor([x[:1], x[1:]], layout=torch.jagged)
    return [("sparse_coo", x.to_sparse()), ("sparse_csr", csr), ("nested", jagged)]


@pytest.mark.parametrize("strategy", ["auto", "full", "cores_rtl", "grouped_ltr"])
@pytest.mark.parametrize("padded", [False, True])
def test_sparse_and_nested_inputs_are_refused_in_every_plan(strategy, padded):
    """Sparse and nested inputs failed inside a reshape or a pad, in some plans only (a model could run at one
    batch size and fail at another); now a TypeError naming the layout and the conversion."""
    layer = tt.nn.TTLinear(
        23 if padded else 24,
        30,
        tt_rank=3,
        in_dims=(2, 3, 4),
        out_dims=(5, 3, 2),
        pad=padded,
        dtype=torch.float64,
    )
    layer.strategy = strategy
    x = torch.randn(4, layer.in_features, dtype=torch.float64)
    for kind, bad in _sparse_and_nested(x):
        with pytest.raises(TypeError, match=f"input is a {kind} tensor; .*dense"):
            layer(bad)
    w = tt.random_matrix([[5, 3, 2], [2, 3, 4]], tt_rank=3, dtype=torch.float64)
    for kind, bad in _sparse_and_nested(torch.randn(4, 24, dtype=torch.float64)):
        if kind != "nested":  # (a nested x fails the row count first, with a ShapeError)
            with pytest.raises(TypeError, match=f"is a {kind} tensor"):
                tt.matmul(bad, tt.transpose(w))
    emb = tt.nn.TTEmbedding(20, 6, tt_rank=2, voc_dims=(4, 5), emb_dims=(2, 3))
    idx = torch.nested.nested_tensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])], layout=torch.jagged)
    with pytest.raises(TypeError, match=r"indices is a nested tensor; .*indices.values\(\)"):
        emb(idx)


def test_a_bias_that_is_not_a_tensor_is_a_type_error():
    """A list bias was a ShapeError ("got list"); F.linear and tt_linear's own input check give TypeErrors."""
    w = tt.random_matrix(((2, 3), (3, 2)), tt_rank=2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"tt_linear: bias must be a Tensor of shape \(6,\), got list"):
        tt_linear(torch.randn(4, 6, dtype=torch.float64), w, [0.0] * 6)


@pytest.mark.parametrize("make", ["linear", "embedding"])
def test_load_state_dict_refuses_a_complex_checkpoint_for_a_real_layer(make):
    """torch copied the real parts of complex cores in (warning at most once per process): for TT cores that
    is not even the real part of the weight. Nothing of the layer may change."""
    if make == "linear":
        src = tt.nn.TTLinear(12, 20, tt_rank=3, dtype=torch.complex64)
        dst = tt.nn.TTLinear(12, 20, tt_rank=3)
    else:
        src = tt.nn.TTEmbedding(12, 20, tt_rank=3, dtype=torch.complex64)
        dst = tt.nn.TTEmbedding(12, 20, tt_rank=3)
    before = [p.detach().clone() for p in dst.parameters()]
    with pytest.raises(
        RuntimeError, match=r"cores.0: the checkpoint holds complex values .* dtype=torch.complex64"
    ):
        dst.load_state_dict(src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(before, dst.parameters(), strict=True))
    # at other ranks: the cores present were listed as missing keys
    other = type(src)(12, 20, tt_rank=2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match=r"cores.0: the checkpoint holds complex values") as err:
        dst.load_state_dict(other.state_dict())
    assert "size mismatch for cores.0" in str(err.value) and "Missing key" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, dst.parameters(), strict=True))
    back = type(src)(12, 20, tt_rank=3, dtype=torch.complex64)
    back.load_state_dict(dst.state_dict())  # real into complex is exact
    assert torch.allclose(tt.full(back.weight).real, tt.full(dst.weight), atol=1e-6)


def test_complex32_is_refused_by_name_and_complex_inputs_get_a_real_hint():
    x = tt.random_tensor((2, 3), 2)
    with pytest.raises(TypeError, match="complex32 has almost no kernels"):
        tt.cast(x, torch.complex32)
    with pytest.raises(TypeError, match="complex32 has almost no kernels"):
        tt.nn.TTLinear(6, 6, tt_rank=2, dtype=torch.complex32)
    layer = tt.nn.TTLinear(6, 6, tt_rank=2)
    with pytest.raises(ValueError, match="a real TT-matrix cannot take complex values"):
        layer(torch.randn(2, 6, dtype=torch.complex64))


def test_the_layers_own_load_pre_hooks_run_before_the_resize():
    """A pre-hook on the layer (register_load_state_dict_pre_hook, e.g. renaming old keys) ran after the resize
    had looked for `cores.k`: a checkpoint of other ranks under old names failed with size mismatches."""
    src = tt.nn.TTLinear(24, 20, tt_rank=2, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    old = {k.replace("cores.", "core_"): v for k, v in src.state_dict().items()}
    calls = []

    def rename(module, state_dict, prefix, *_):
        calls.append(prefix)
        for k in [k for k in state_dict if k.startswith(prefix + "core_")]:
            state_dict[prefix + "cores." + k[len(prefix) + 5 :]] = state_dict.pop(k)

    layer = tt.nn.TTLinear(24, 20, tt_rank=4, in_dims=(2, 3, 4), out_dims=(5, 2, 2), dtype=torch.float64)
    layer.register_load_state_dict_pre_hook(rename)
    model = torch.nn.Sequential(layer)
    model.load_state_dict({"0." + k: v for k, v in old.items()})
    assert calls == ["0."] and layer.tt_ranks == src.tt_ranks
    x = torch.randn(3, 24, dtype=torch.float64)
    assert_close(layer(x), src(x))
    model.load_state_dict({"0." + k: v for k, v in old.items()})  # (the hooks stay registered)
    assert calls == ["0.", "0."]


_HOOK_RUNS: list[str] = []


def _record_hook(tag: str, *_: object) -> None:
    _HOOK_RUNS.append(tag)


def test_load_keeps_the_pre_hook_registry_in_place(monkeypatch):
    """The layer's loader emptied its pre-hook registry while it loaded (so that nn.Module's loader would not run
    the hooks twice): a copy made, a hook registered or a second load run meanwhile (another thread) saw no
    hooks, and a hook registered then was dropped when the registry was put back."""
    import functools

    import tensortrain.nn.base as base

    runs = _HOOK_RUNS
    runs.clear()
    layer = tt.nn.TTLinear(16, 12, tt_rank=2, dtype=torch.float64)
    layer.register_load_state_dict_pre_hook(functools.partial(_record_hook, "first"))  # (picklable)
    seen = {}
    resize = base.resize_cores_to_state

    def during(
        *args, **kwargs
    ):  # runs inside the layer's load, after its hooks and before nn.Module's loader
        seen.setdefault("copy", copy.deepcopy(layer))
        seen.setdefault("pickled", pickle.loads(pickle.dumps(layer)))
        seen.setdefault(
            "handle", layer.register_load_state_dict_pre_hook(functools.partial(_record_hook, "second"))
        )
        return resize(*args, **kwargs)

    monkeypatch.setattr(base, "resize_cores_to_state", during)
    layer.load_state_dict(layer.state_dict())
    assert runs == ["first"]  # once: nn.Module's loader does not run them again
    assert len(layer._load_state_dict_pre_hooks) == 2
    for twin in (seen["copy"], seen["pickled"]):
        assert len(twin._load_state_dict_pre_hooks) == 1
    # pickled as nn.Module pickles it, a plain OrderedDict (an older tensortrain reads the file)
    assert type(layer.__getstate__()["_load_state_dict_pre_hooks"]) is collections.OrderedDict
    shallow = copy.copy(layer)  # (shares the registries, as nn.Module's shallow copies do)
    assert shallow._load_state_dict_pre_hooks is layer._load_state_dict_pre_hooks
    assert shallow._forward_pre_hooks is layer._forward_pre_hooks and shallow._cache is not layer._cache
    monkeypatch.setattr(base, "resize_cores_to_state", resize)
    runs.clear()
    layer.load_state_dict(layer.state_dict())
    assert runs == ["first", "second"]
    # copies and unpickled layers get the registry type back, so that their loads too keep it in place: a shallow
    # copy of a deep copy still shares the registry after a load and sees a hook registered then
    for twin in (seen["copy"], seen["pickled"]):
        assert isinstance(twin._load_state_dict_pre_hooks, base._PreHooks)
        shallow = copy.copy(twin)
        twin.load_state_dict(twin.state_dict())
        twin.register_load_state_dict_pre_hook(functools.partial(_record_hook, "third"))
        assert shallow._load_state_dict_pre_hooks is twin._load_state_dict_pre_hooks
    # a registry replaced whole (a plain OrderedDict) still runs each hook once per load
    layer.__dict__["_load_state_dict_pre_hooks"] = collections.OrderedDict()
    layer.register_load_state_dict_pre_hook(functools.partial(_record_hook, "fresh"))
    runs.clear()
    layer.load_state_dict(layer.state_dict())
    assert runs == ["fresh"]


_SWAPS = {"float64": lambda c: c.detach().double(), "meta": lambda c: torch.empty_like(c, device="meta")}


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(("swap", "k"), [("float64", 1), ("meta", 1), ("meta", 2)])
def test_a_core_replaced_by_one_of_another_dtype_or_device_is_named(grad, swap, k):
    """The layer's fast path checks the first core's dtype and device: a second core in float64 gave torch's
    'expected m1 and m2 to have the same dtype' (worded by whichever plan ran), and a later core put on the meta
    device no error at all (torch multiplies a CPU tensor by a meta one into an uninitialised CPU tensor: the
    output was garbage, NaN or any value)."""
    layer = tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(3, 2, 5))
    layer.cores[k] = nn.Parameter(_SWAPS[swap](layer.cores[k]))
    match = f"core {k} has dtype torch.{'float64' if swap == 'float64' else 'float32 on meta'}"
    for strategy in tt.contraction.STRATEGIES:
        if strategy == "tune":
            continue
        layer.strategy = strategy
        with torch.set_grad_enabled(grad), pytest.raises(tt.ShapeError, match=match):
            layer(torch.randn(5, 24))


def test_load_tt_checks_the_bias_before_writing_the_cores():
    """A meta bias failed in its copy after the cores were replaced: the layer was half-loaded."""
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), dtype=torch.float64)
    before = [c.detach().clone() for c in layer.cores]
    w = tt.random_matrix(((2, 3), (3, 4)), tt_rank=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="the bias is on the meta device"):
        layer.load_tt_(w, torch.ones(6, device="meta"))
    with pytest.raises(ValueError, match="cores are on the meta device"):
        layer.load_tt_(w.to("meta"))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.cores, strict=True))


def test_from_tt_of_a_square_size_with_other_dims_and_a_bias():
    """A 6 x 6 TT-matrix with out dims (2, 3) and in dims (3, 2) and a bias of 6 is a weight, not a t3f kernel
    (a mutant reading it as one swapped the dims: 7.26 off)."""
    g = torch.Generator().manual_seed(0)
    w = tt.random_matrix([[2, 3], [3, 2]], tt_rank=2, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    layer = tt.nn.TTLinear.from_tt(w, bias=b)
    x = torch.randn(5, 6, dtype=torch.float64, generator=g)
    assert (layer.out_dims, layer.in_dims) == ((2, 3), (3, 2))
    assert_close(layer(x), x @ tt.full(w).T + b)


@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_load_tt_of_other_ranks_copies_the_values(kind):
    """load_tt_ says the values are copied: at other ranks the new Parameters must not share the caller's memory
    (an optimizer step on the layer rewrote the caller's TT)."""
    g = torch.Generator().manual_seed(0)
    if kind == "linear":
        layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
        w = tt.random_matrix([[2, 3], [3, 4]], tt_rank=3, generator=g)
    else:
        layer = tt.nn.TTEmbedding(12, 6, tt_rank=2, voc_dims=(3, 4), emb_dims=(2, 3))
        w = tt.random_matrix([[3, 4], [2, 3]], tt_rank=3, generator=g)
    before = tt.full(w).clone()
    layer.load_tt_(w)
    assert layer.tt_ranks == w.tt_ranks
    with torch.no_grad():
        for p in layer.cores:
            p.mul_(2.0)
    assert torch.equal(tt.full(w), before)


def test_cores_that_are_not_4d_are_named_not_the_sizes():
    """Cores swapped in by functional_call with a batch axis (outside vmap) or without the column mode were read
    as 4-D: a wrong feature count (or, for a square layer, a bias of the wrong shape) was reported."""
    from torch.func import functional_call

    for out_dims in ((5, 3, 2), (3, 4, 2)):
        layer = tt.nn.TTLinear(24, math.prod(out_dims), tt_rank=2, in_dims=(3, 4, 2), out_dims=out_dims)
        params = dict(layer.named_parameters())
        for swap in (lambda v: v.unsqueeze(0).expand(2, *v.shape), lambda v: v[:, :, 0]):
            for which, k in (("cores", 0), ("cores.1", 1)):  # (every core, or one after the first)
                swapped = {n: swap(v) if n.startswith(which) else v for n, v in params.items()}
                match = rf"tt_linear: a TT-matrix's cores are 4-D .* core {k} has"
                with pytest.raises(tt.ShapeError, match=match):
                    functional_call(layer, swapped, (torch.randn(3, 24),))


# ------------------------------------------------------- checks a mutation audit found untested (session 28)
def test_conversions_refuse_weights_and_biases_of_other_shapes_or_kinds():
    """A hand-replaced weight of another shape, a bias of shape (1,) (it broadcast), bool bias values and
    bias_init=True (read as 1.0) are refused with messages naming them."""
    lin = nn.Linear(12, 6)
    lin.weight = nn.Parameter(torch.randn(6, 10))
    with pytest.raises(ValueError, match=r"weight has shape \(6, 10\) but out_features=6, in_features=12"):
        tt.nn.TTLinear.from_linear(lin, in_dims=(3, 4), out_dims=(2, 3))
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    w = tt.random_matrix([[2, 3], [3, 4]], tt_rank=2)
    with pytest.raises(tt.ShapeError, match=r"load_tt_: bias must have shape \(6,\), got \(1,\)"):
        layer.load_tt_(w, bias=torch.ones(1))
    with pytest.raises(TypeError, match="bias must be a tensor or an array of numbers, got list"):
        tt.nn.TTLinear.from_tt(tt.random_matrix([[4, 5], [3, 4]], tt_rank=2), [True] * 20)
    with pytest.raises(TypeError, match="bias_init must be a number or None, got True"):
        tt.nn.TTLinear(12, 6, tt_rank=2, bias_init=True)


def test_a_bias_of_another_shape_through_functional_call_is_refused_padded_or_not():
    from torch.func import functional_call

    for layer, x in (
        (tt.nn.TTLinear(10, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), pad=True), torch.randn(2, 10)),
        (tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3)), torch.randn(2, 12)),
    ):
        params = {**dict(layer.named_parameters()), "bias": torch.ones(1)}
        with pytest.raises(tt.ShapeError, match=r"bias must have shape \(6,\), got \(1,\)"):
            functional_call(layer, params, (x,))


def test_from_tt_with_has_bias_draws_a_bias_as_nn_linear_does():
    w = tt.random_matrix([[2, 3], [3, 4]], tt_rank=2)
    torch.manual_seed(0)
    layer = tt.nn.TTLinear.from_tt(w, has_bias=True)
    assert layer.bias is not None and layer.bias.shape == (6,)
    bound = 1 / math.sqrt(12)
    assert layer.bias.abs().max() <= bound and layer.bias.std() > bound / 10
    assert tt.nn.TTLinear.from_tt(w).bias is None


def test_automatic_dims_of_lopsided_sizes_take_d_from_the_richer_size():
    """d comes from the size with more prime factors: the other is padded with modes of 1."""
    for (n_in, n_out), (in_dims, out_dims) in {
        (1024, 7): ((4, 4, 8, 8), (2, 2, 2, 1)),
        (4096, 3): ((4, 4, 4, 8, 8), (3, 1, 1, 1, 1)),
        (600, 2): ((4, 5, 5, 6), (2, 1, 1, 1)),
    }.items():
        layer = tt.nn.TTLinear(n_in, n_out, tt_rank=2)
        assert (layer.in_dims, layer.out_dims) == (in_dims, out_dims)


def test_load_tt_of_permuted_cores_of_new_ranks_gives_contiguous_cores():
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    c0 = torch.randn(3, 2, 1, 3).permute(2, 1, 0, 3)  # (1, 2, 3, 3), not contiguous; rank 3, not 2
    c1 = torch.randn(3, 3, 4, 1).transpose(1, 2).contiguous().transpose(1, 2)
    layer.load_tt_(tt.TensorTrain([c0, c1]))
    assert [tuple(c.shape) for c in layer.cores] == [(1, 2, 3, 3), (3, 3, 4, 1)]
    assert all(c.is_contiguous() for c in layer.cores)


def test_to_linear_requires_grad_if_any_core_does_and_extra_repr_fields():
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    layer.cores[0].requires_grad_(False)
    assert layer.to_linear().weight.requires_grad
    layer.cores.requires_grad_(False)
    assert not layer.to_linear().weight.requires_grad
    assert "bias=False" in repr(tt.nn.TTLinear(12, 6, tt_rank=2, bias=False))
    assert "bias=True" in repr(layer) and "max_saved_bytes" not in repr(layer)
    layer.max_saved_bytes = 1000
    assert "max_saved_bytes=1000" in repr(layer)


def test_a_scalar_input_or_a_tt_tensor_weight_gets_a_clear_error():
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    with pytest.raises(tt.ShapeError, match="input has a scalar but the TT weight has 12 columns"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="weight must be a TT-matrix TensorTrain, got a TT-tensor"):
        tt.nn.functional.tt_linear(torch.randn(2, 12), tt.random_tensor([3, 4], tt_rank=2))


def test_load_tt_with_bias_values_into_a_layer_without_a_bias_is_refused():
    """Bias values for a bias=False layer were otherwise dropped without a word (the layer's output then lacks
    the bias the caller meant to load); nothing is written, the cores included."""
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), bias=False)
    before = [c.detach().clone() for c in layer.cores]
    w = tt.random_matrix([[2, 3], [3, 4]], tt_rank=2)
    with pytest.raises(tt.ShapeError, match="got bias values but the layer has bias=False"):
        layer.load_tt_(w, bias=torch.ones(6))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.cores, strict=True))


def test_automatic_dims_use_no_more_cores_than_an_exact_size_has_prime_factors():
    """847 = 7 * 11 * 11 and 1331 = 11^3 factor exactly (unpadded) into three balanced modes although their size
    alone asks for d = 4: d is capped at the prime factors, not a fourth core of mode 1."""
    for (n_in, n_out), (in_dims, out_dims) in {
        (847, 847): ((7, 11, 11), (11, 11, 7)),
        (1331, 10): ((11, 11, 11), (5, 2, 1)),
        (10, 847): ((1, 2, 5), (11, 11, 7)),
    }.items():
        layer = tt.nn.TTLinear(n_in, n_out, tt_rank=2)
        assert (layer.in_dims, layer.out_dims) == (in_dims, out_dims)
        assert not layer.padded


# the functional form refuses nested inputs by name too: a strided-layout one failed the shape read with torch's
# internal error ("NestedTensorImpl doesn't support sizes"); a jagged one's last dim matches, no row-count error
def test_tt_linear_refuses_a_nested_input():
    import warnings

    w = tt.random_matrix([[5, 3, 2], [2, 3, 4]], tt_rank=3, dtype=torch.float64)
    x = torch.randn(4, 24, dtype=torch.float64)
    for layout in (torch.strided, torch.jagged):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "The PyTorch API of nested tensors is in prototype stage"
            nested = torch.nested.nested_tensor([x[:1], x[1:]], layout=layout)
        with pytest.raises(TypeError, match=r"tt_linear: input is a nested tensor; .*input.values\(\)"):
            tt_linear(nested, w)


# a layer cast by Module.to to a dtype TT cores refuse gets TensorTrain's error under tt_linear's name
def test_a_layer_cast_to_float8_names_the_cores_dtype():
    layer = tt.nn.TTLinear(24, 30, tt_rank=2)
    layer.to(torch.float8_e4m3fn)
    with pytest.raises(
        TypeError, match=r"tt_linear: cores must be floating point .* core 0 has dtype .*float8"
    ):
        layer(torch.randn(2, 24))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_bias_values_given_as_python_numbers_keep_a_double_precision_layers_values(dtype):
    """A list of Python floats (or complex numbers) was read in the default dtype, float32 (complex64), before
    the layer's cast: a float64 layer's bias came out rounded (8e-8 off), without a word."""
    g = torch.Generator().manual_seed(0)
    w = tt.TensorTrain(
        [torch.randn(1, 2, 3, 2, dtype=dtype, generator=g), torch.randn(2, 3, 4, 1, dtype=dtype, generator=g)]
    )
    b = torch.randn(6, dtype=dtype, generator=g)
    assert torch.equal(tt.nn.TTLinear.from_tt(w, b.tolist()).bias, b)
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), dtype=dtype)
    assert torch.equal(layer.load_tt_(w, b.tolist()).bias, b)
    assert torch.equal(layer.load_tt_(w, b.numpy()).bias, b)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # (nn.Linear's own init)
@pytest.mark.parametrize("sizes", [(0, 5), (5, 0), (0, 0)])
def test_from_linear_of_an_empty_layer_names_its_sizes(sizes):
    """nn.Linear(0, 5) is a legal module; its conversion failed inside the automatic factoring ("padded_shape: n
    must be >= 1, got 0", or with given dims a hint to pass pad=True), naming neither the layer nor its sizes."""
    match = rf"from_linear: the nn.Linear is empty \(in_features={sizes[0]}, out_features={sizes[1]}\)"
    for dims in ({}, {"pad": False}, {"in_dims": (1, 1), "out_dims": (1, 1)}):
        with pytest.raises(tt.ShapeError, match=match):
            tt.nn.TTLinear.from_linear(nn.Linear(*sizes), **dims)


@pytest.mark.parametrize("strategy", [s for s in tt.contraction.STRATEGIES if s != "tune"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(9,), (2, 9), (300,)])
def test_the_training_output_can_be_modified_in_place_as_nn_linears(strategy, bias, lead):
    """``nn.ReLU(inplace=True)`` or ``y += residual`` after a layer: a bias-free sweep's output was a view made
    inside its autograd Function, which autograd refuses to modify in place ("Output 0 of SweepFunction is a
    view and is being modified inplace"). Values and gradients as the dense layer's with the same ops; a bound
    on kept bytes (a recomputing sweep) too."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(
        24, 30, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 3, 2), bias=bias, dtype=torch.float64
    )
    layer.strategy = strategy
    dense = layer.to_linear()
    x = torch.randn(*lead, 24, dtype=torch.float64)
    for bound in (None, 0):
        layer.max_saved_bytes = bound
        outs = []
        for module in (layer, dense):
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.add_(0.5).relu_()  # (a residual, then an in-place activation)
            (y * torch.arange(30, dtype=torch.float64)).sum().backward()
            outs.append((y.detach(), xi.grad, module.weight if module is dense else None))
        assert_close(outs[0][0], outs[1][0])
        assert_close(outs[0][1], outs[1][1])
        grad_w = torch.autograd.grad(
            dense_from_cores(list(layer.cores)), list(layer.cores), dense.weight.grad, allow_unused=True
        )
        for core, g in zip(layer.cores, grad_w, strict=True):
            assert_close(core.grad, g)
        layer.zero_grad(), dense.zero_grad()
