"""The TT layers under autocast: they behave as nn.Linear / nn.Embedding do, and caches never keep autocast's
lower precision."""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt
from conftest import assert_close
from strategies import random_cores
from tensortrain import contraction as C

BF16 = torch.bfloat16


def _dense(cores: list[torch.Tensor]) -> torch.Tensor:
    return tt.full(tt.TensorTrain([c.detach() for c in cores]))


@pytest.mark.parametrize("batch", [1, 3, 9, 64])  # 9, 64: training sweeps run SweepFunction
def test_low_precision_input_through_every_plan(gen, batch):
    """A bfloat16 input meets float32 cores under autocast (the output of an earlier autocast layer): every plan
    runs forward and backward as F.linear does, bfloat16 out, gradients in each operand's own dtype."""
    raw, ranks = ((2, 3, 2), (3, 2, 2)), (1, 3, 3, 1)
    cores = [c.float().requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    x = torch.randn(batch, 12, generator=gen).to(BF16)
    want = x.float() @ _dense(cores).T
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        xb = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=BF16):
            y = C.linear(xb, cores, strategy=p)
        assert y.dtype == BF16, p
        assert_close(y.float(), want, rtol=0.03, atol=0.03 * float(want.abs().max()))
        y.float().sum().backward()
        assert xb.grad is not None and xb.grad.dtype == BF16
        assert all(c.grad is not None and c.grad.dtype == torch.float32 for c in cores)
        for c in cores:
            c.grad = None
    with pytest.raises(tt.ShapeError, match="bfloat16"):  # outside autocast a mismatch is still an error
        C.linear(x, cores)


def test_compressed_model_runs_under_autocast():
    """The second TT layer gets the first one's bfloat16 output, as the second nn.Linear would."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
    small, _ = tt.compress(model, max_tt_rank=8)
    assert sum(isinstance(m, tt.nn.TTLinear) for m in small.modules()) == 2
    x = torch.randn(8, 256)
    with torch.no_grad():
        want = small(x)
        with torch.autocast("cpu", dtype=BF16):
            got = small(x)
    assert got.dtype == BF16
    assert_close(got.float(), want, rtol=0.05, atol=0.05 * float(want.abs().max()))


@pytest.mark.parametrize("strategy", ["auto", "grouped_rtl", "grouped_ltr"])
@pytest.mark.parametrize("batch", [1, 4, 64, 1024])
def test_inference_cache_does_not_keep_autocast_precision(batch, strategy):
    """Merged groups first built under autocast are kept in the cores' precision: float32 calls after autocast
    give float32 results equal to those of a layer that never saw autocast."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(24, 20, tt_rank=3, in_dims=(2, 3, 4), out_dims=(5, 2, 2))
    layer.strategy = strategy
    x = torch.randn(batch, 24)
    with torch.no_grad():
        want = torch.nn.functional.linear(x, layer.to_linear().weight, layer.bias)
        with torch.autocast("cpu", dtype=BF16):
            assert layer(x).dtype == BF16
        got = layer(x)
    assert got.dtype == torch.float32
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [3, 4096])  # core by core, and through the kept halves
def test_embedding_under_autocast_returns_the_table_dtype(tokens):
    """A lookup is not an autocast op: nn.Embedding returns float32 under autocast, and so does TTEmbedding; its
    kept halves stay float32 for the calls after autocast."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(100000, 64, tt_rank=8)
    idx = torch.randint(0, 100000, (tokens,))
    with torch.no_grad():
        want = emb(idx)
        with torch.autocast("cpu", dtype=BF16):
            got = emb(idx)
            dense = emb.to_embedding()(idx) if tokens == 3 else None
        after = emb(idx)
    assert got.dtype == after.dtype == torch.float32
    if dense is not None:
        assert dense.dtype == torch.float32
    assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_close(after, want, rtol=1e-6, atol=1e-6)
    emb.train()
    with torch.autocast("cpu", dtype=BF16):
        out = emb(idx[:3])
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(c.grad is not None and c.grad.dtype == torch.float32 for c in emb.cores)


def test_blocked_full_plan_in_inference_under_autocast():
    """A W over BLOCKED_ABOVE is built in blocks with out= writes, which mm.out does not autocast: the halves
    (one merged by an autocast matmul, one a plain core) differ in dtype there."""
    w = tt.random_matrix([[16, 16, 16], [16, 16, 16]], tt_rank=16, stddev=0.1)  # 4096 x 4096: 64 MiB
    x = torch.randn(64, 4096)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = C.linear(x, w, strategy="full")
    assert y.dtype == torch.bfloat16
    ref = x @ tt.full(w).T
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2


def test_float64_operands_fail_alike_in_every_plan_under_autocast():
    """Autocast leaves float64 alone: a float64 x or bias with float32 cores is the usual dtype error whatever
    the plan (it was cast down by some plans and failed deep inside others)."""
    w = tt.random_matrix([[4, 8], [7, 4]], tt_rank=4)
    x, b64 = torch.randn(5, 28), torch.randn(32, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for strategy in ("grouped_rtl", "grouped_ltr", "full"):
            with pytest.raises(tt.ShapeError, match="bias has dtype torch.float64"):
                C.linear(x, w, b64, strategy=strategy)
            with pytest.raises(tt.ShapeError, match="x has dtype torch.float64"):
                C.linear(x.double(), w, strategy=strategy)


@pytest.mark.parametrize("batch", [1, 9, 64])
def test_float64_layers_stay_float64_under_autocast(gen, batch):
    """Autocast leaves float64 alone (nn.Linear stays float64): the custom Functions of the full plan and the
    training sweeps cast every floating operand down, so a float64 layer trained in bfloat16 on some plans."""
    raw, ranks = ((2, 3, 2), (3, 2, 2)), (1, 3, 3, 1)
    cores = [c.requires_grad_(True) for c in random_cores(raw, ranks, gen=gen)]
    bias = torch.randn(12, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch, 12, generator=gen, dtype=torch.float64)
    want = x @ _dense(cores).T + bias.detach()
    for p in C.enumerate_plans(cores, batch, requires_grad=True):
        with torch.autocast("cpu", dtype=BF16):
            y = C.linear(x, cores, bias, strategy=p)
        assert y.dtype == torch.float64, p
        assert_close(y, want)
        y.sum().backward()
        assert all(c.grad is not None and c.grad.dtype == torch.float64 for c in cores)
        for c in cores:
            c.grad = None


def test_norms_and_projections_keep_full_precision_under_autocast(gen):
    """Their QR steps ran in float32 but autocast lowered the products between them: float32 results with
    bfloat16's three digits (frobenius_norm 1.9e-3 off, project 7e-3)."""
    x = tt.TensorTrain([c.float() for c in random_cores((4, 5, 6, 3), (1, 3, 3, 3, 1), gen=gen)])
    z = torch.randn(4, 5, 6, 3, generator=gen)
    plain = (tt.frobenius_norm(x), tt.frobenius_norm_squared(x), tt.project(z, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = (tt.frobenius_norm(x), tt.frobenius_norm_squared(x), tt.project(z, x))
    # (tt.full is a chain of products: under autocast it runs in bfloat16 as torch.mm does; it is taken outside)
    under, plain = (*under[:2], tt.full(under[2])), (*plain[:2], tt.full(plain[2]))
    for a, b in zip(under, plain, strict=True):
        assert a.dtype == torch.float32
        assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_half_precision_cores_scaled_by_tensors_in_float32(gen):
    """A 0-dim tensor scale, batch weights and tangent-sum coefficients were cast to float16 before multiplying:
    1e5 became inf where the product fits (torch's own x_f16 * torch.tensor(1e5) does not round the scalar)."""
    s = tt.TensorTrain([c.half() * 0.01 for c in random_cores((4, 5), (1, 2, 1), gen=gen)])
    want = tt.full(s).double() * 1e5
    for got in (s * torch.tensor(1e5), tt.multiply(s, torch.tensor(1e5)), s / torch.tensor(1e-5)):
        assert got.dtype == torch.float16
        assert_close(tt.full(got).double(), want, rtol=2e-3, atol=1e-3 * float(want.abs().max()))
    b = tt.concat_along_batch_dim([s, s])
    got = tt.full(tt.multiply_along_batch_dim(b, [1e5, 2.0])).double()
    assert_close(got[0], want, rtol=2e-3, atol=1e-3 * float(want.abs().max()))
    p = tt.project(tt.full(s), s)
    assert bool(torch.isfinite(tt.full(tt.add_n_projected([p], coef=[1e5]))).all())


@pytest.mark.parametrize("batch", [False, True])
def test_matmul_takes_an_autocast_activation_beside_float32_cores(gen, batch):
    """``tt.matmul`` and ``@`` refused a bfloat16 operand (an earlier autocast layer's output) beside float32 cores,
    which ``torch.matmul``, ``TTLinear`` and ``tt.contraction.dense_tt_matmul`` take under autocast."""
    shape = [[4, 3], [2, 5]]
    w = (
        tt.random_matrix_batch(shape, tt_rank=3, batch_size=2)
        if batch
        else tt.random_matrix(shape, tt_rank=3)
    )
    dense = tt.full(w)
    x, v = torch.randn(2, 7, 12, generator=gen).to(BF16), torch.randn(2, 10, 3, generator=gen).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        for got, want in ((tt.matmul(x, w), x @ dense), (x @ w, x @ dense), (tt.matmul(w, v), dense @ v)):
            assert got.dtype == want.dtype == BF16
            assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
        with pytest.raises(tt.ShapeError, match="different dtypes torch.float32 and torch.float64"):
            tt.matmul(x.double(), w)  # (autocast leaves float64 alone, as torch.matmul fails on it)
    with pytest.raises(tt.ShapeError, match="different dtypes torch.float32 and torch.bfloat16"):
        tt.matmul(x, w)  # (outside autocast: the usual dtype error)


@pytest.mark.parametrize("batch", [False, True])
def test_integer_indexing_keeps_one_dtype_under_autocast(gen, batch):
    """An int index absorbs its core's slice into a neighbour by a product, which autocast lowered: ``x[1]`` and
    ``x[:, :, 1]`` of float32 TTs failed with 'core 0 has dtype torch.bfloat16 but core 1 has dtype
    torch.float32', and ``x[1, 2]`` silently gave a bfloat16 TT. A TT result keeps the cores' dtype, as a
    slice of a dense tensor does."""
    x = (
        tt.random_tensor_batch((3, 4, 5), tt_rank=3, batch_size=2)
        if batch
        else tt.random_tensor((3, 4, 5), tt_rank=3)
    )
    lead = (1,) if batch else ()
    dense = tt.full(x)
    for index in ((1,), (slice(None), 1), (slice(None), slice(None), 1), (1, 2), (1, slice(None), 2)):
        index = lead + index
        with torch.autocast("cpu", dtype=BF16):
            got = x[index]
        assert got.dtype == torch.float32, index
        assert_close(tt.full(got), dense[index], rtol=1e-5, atol=1e-5)


def test_to_linear_and_decompress_are_exact_under_autocast():
    """``to_linear`` copied ``dense_weight()``, a product autocast lowers, into its float32 ``nn.Linear``: the
    'exact dense equivalent' (and ``tt.decompress``'s layers) had bfloat16's three digits (2.6e-3 off)."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(64, 48, tt_rank=4)
    want = layer.to_linear().weight.detach()
    with torch.autocast("cpu", dtype=BF16):
        got = layer.to_linear().weight.detach()
        undone = tt.decompress(torch.nn.Sequential(layer))[0].weight.detach()
    for w in (got, undone):
        assert w.dtype == torch.float32
        assert_close(w, want, rtol=1e-6, atol=1e-7)
