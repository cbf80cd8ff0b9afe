"""DistributedDataParallel (gloo, CPU): 2 processes on 127.0.0.1 train a TT model like one process does.

Each rank trains on its half of a global batch; DDP averages the gradients, so after every step the
parameters on both ranks must be bit-identical and equal (up to float64 round-off from the all-reduce's
summation order) to one process training on the whole batch.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tensortrain as tt
from conftest import assert_close

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend",
)

WORLD = 2
STEPS = 4
GLOBAL_BATCH = 8
TIMEOUT_S = 120


class _Net(torch.nn.Module):
    """TTEmbedding -> mean over the sequence -> TTLinear -> tanh -> TTLinear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = tt.nn.TTEmbedding(20, 12, tt_rank=2, voc_dims=(4, 5), emb_dims=(3, 4), dtype=torch.float64)
        self.fc1 = tt.nn.TTLinear(12, 8, tt_rank=3, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64)
        self.fc2 = tt.nn.TTLinear(
            8, 6, tt_rank=(1, 2, 2, 1), in_dims=(2, 2, 2), out_dims=(1, 2, 3), dtype=torch.float64
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(self.emb(idx).mean(dim=-2))))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Net()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 20, (STEPS, GLOBAL_BATCH, 3), generator=g)
    y = torch.randn(STEPS, GLOBAL_BATCH, 6, generator=g, dtype=torch.float64)
    return x, y


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    # momentum makes a wrong step compound, so a single bad all-reduce cannot hide
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(x.shape[0]):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[step]), y[step])
        loss.backward()
        opt.step()


def _worker(rank: int, out_dir: str, strategy: str = "auto") -> None:
    torch.set_num_threads(1)
    # rendezvous through a file, not a TCP port picked free beforehand: another process (a parallel test, a pip
    # download) could take that port before rank 0 listens on it. Gloo still connects over 127.0.0.1
    dist.init_process_group(
        "gloo",
        init_method=(Path(out_dir) / "rendezvous").as_uri(),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        model = _model()
        for m in model.modules():
            if isinstance(m, tt.nn.TTLinear):
                m.strategy = strategy  # type: ignore[assignment]
        if rank == 1:
            # a different start on purpose: DDP must broadcast rank 0's parameters at construction
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = _data()
        per_rank = GLOBAL_BATCH // WORLD
        shard = slice(rank * per_rank, (rank + 1) * per_rank)
        _train(ddp, x[:, shard], y[:, shard])
        torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's finalization: about one run in twenty, gloo's worker threads were still being
    # torn down there ("terminate called without an active exception", SIGABRT with no Python frame) after the
    # rank had saved its result, with either strategy. The result is on disk; nothing else is left to clean up.
    os._exit(0)


def _spawn(out_dir: Path, strategy: str = "auto") -> None:
    ctx = mp.start_processes(
        _worker, args=(str(out_dir), strategy), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join()


def test_ddp_matches_single_process(tmp_path):
    _spawn(tmp_path)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    reference = _model()
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    x, y = _data()
    _train(reference, x, y)
    expected = reference.state_dict()

    assert sorted(states[0]) == sorted(expected)
    assert any("cores" in k for k in expected)  # the TT cores are among the trained parameters
    for key in expected:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"
        torch.testing.assert_close(states[0][key], expected[key], rtol=1e-10, atol=1e-12)
        assert not torch.equal(expected[key], start[key]), f"{key} did not train"


def test_ddp_with_tuned_plans(tmp_path):
    """strategy="tune": each rank times its own candidates (no collective in between) and may pick another plan;
    DDP still averages the same gradients into bit-identical ranks, equal to one process's training up to
    round-off."""
    _spawn(tmp_path, "tune")
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    reference = _model()
    x, y = _data()
    _train(reference, x, y)
    for key, want in reference.state_dict().items():
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"
        torch.testing.assert_close(states[0][key], want, rtol=1e-10, atol=1e-12)


@contextlib.contextmanager
def _one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone (a HashStore: no port), destroyed on the way out."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """DDP's wrappers in a one-process group: enough to show what is refused under them."""
    with _one_process_group():
        yield


@pytest.fixture
def fully_shard() -> Iterator[Any]:
    """FSDP2's ``fully_shard`` in a one-process group; the test is skipped on a torch without it."""
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no fully_shard")
    with _one_process_group():
        yield fsdp.fully_shard


def test_compress_refuses_a_model_under_ddp(one_process_group):
    """Compressing under DDP replaced the parameters its reducer watches: gradients were no longer averaged and
    each process trained on its own data, with no error (a one-process group shows the refusal)."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for wrapped in (ddp, torch.nn.Sequential(ddp)):
        with pytest.raises(TypeError, match=r"is a DistributedDataParallel; compress the module it wraps"):
            tt.compress(wrapped, max_tt_rank=2)
    small, _ = tt.compress(ddp.module, max_tt_rank=2)  # the documented order works
    assert isinstance(small[0], tt.nn.TTLinear)


def test_decompress_refuses_a_model_under_ddp(one_process_group):
    """decompress of a DDP-wrapped model swapped its TT layers for dense ones under the wrapper (in place, or in a
    deep copy that rebuilt DDP from the old layers): the reducer kept watching the cores, so no gradient was
    averaged any more and each process trained on its own data, with no error, as compress under DDP did."""
    model = torch.nn.Sequential(
        tt.nn.TTLinear(12, 8, tt_rank=3, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64)
    )
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for wrapped in (ddp, torch.nn.Sequential(ddp)):
        for inplace in (False, True):
            with pytest.raises(
                TypeError,
                match=r"decompress: .* is a DistributedDataParallel; decompress the module it wraps",
            ):
                tt.decompress(wrapped, inplace=inplace)
    assert isinstance(ddp.module[0], tt.nn.TTLinear)  # left as it was
    dense = tt.decompress(ddp.module)  # the documented order works
    assert isinstance(dense[0], torch.nn.Linear)


def test_compress_refuses_a_model_under_fully_shard(fully_shard):
    """FSDP2's fully_shard changes a module's class to a generated FSDP<Class>: the check by class name missed it
    (a DTensor error with inplace=True, "FSDP does not support deepcopy" without)."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    fully_shard(model)
    for inplace in (False, True):
        with pytest.raises(TypeError, match=r"compress the module it wraps"):
            tt.compress(model, max_tt_rank=2, inplace=inplace)


def test_a_mode_switch_clears_the_inference_cache():
    """Collectives (dist.broadcast of rank 0's weights) write into cores without bumping their version counter,
    like .data writes: the cache kept serving the old merged cores. train()/eval() now start from no cache."""
    layer = tt.nn.TTLinear(16, 4, tt_rank=3, in_dims=(4, 4), out_dims=(2, 2), dtype=torch.float64).eval()
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        assert layer._cache
        layer.cores[0].data.mul_(2.0)  # unseen by the version counter, as a collective's write
        layer.eval()
        assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_fully_shard_trains_and_its_shards_are_named_outside_forward(fully_shard):
    """FSDP2 shards the cores into DTensors, whose data_ptr() is 0: the overlap check took every two of them for
    views of one buffer (RiemannianSGD and tt.assign said the cores "share memory"), and the algebra failed with
    DTensor's own errors. A forward (which gathers the shards) works; outside it the shards are named."""
    from tensortrain.operands import memory_overlaps

    torch.manual_seed(0)
    layer = tt.nn.TTLinear(12, 8, tt_rank=3, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64)
    dense = layer.to_linear()
    fully_shard(layer)
    a, b = list(layer.cores)  # (shards until a forward gathers them; the root keeps them gathered after)
    assert not memory_overlaps(a, b)
    shard = r"core 0 is a DTensor \(sharded, e.g. by FSDP2's fully_shard\): tensortrain works on whole cores"
    with pytest.raises(TypeError, match=shard):
        tt.optim.RiemannianSGD([list(layer.cores)], lr=0.1)
    with pytest.raises(TypeError, match=r"RiemannianSGD: a core of the layer '' is a DTensor"):
        tt.optim.RiemannianSGD(layer, lr=0.1)
    with pytest.raises(TypeError, match=shard):
        tt.full(layer.weight)
    with pytest.raises(TypeError, match=r"assign: params entry 0 is a DTensor"):
        tt.assign(layer.cores, tt.random_matrix(((2, 4), (3, 4)), tt_rank=3, dtype=torch.float64))
    # a rank-changing load replaced the shards by plain Parameters: FSDP's next gather failed, and every forward
    other = tt.nn.TTLinear(12, 8, tt_rank=2, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64)
    with pytest.raises(
        RuntimeError, match=r"its cores are sharded \(DTensors, e.g. by FSDP2's fully_shard\)"
    ):
        layer.load_state_dict(other.state_dict())
    assert layer.tt_ranks == (1, 3, 1)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert_close(layer(x), dense(x))


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor:UserWarning")
@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_load_tt_refuses_sharded_cores(kind, fully_shard):
    """load_tt_ on a fully_shard layer: a TT of other ranks replaced the shards by plain Parameters (every forward
    after failed inside FSDP's gather, "'Parameter' object has no attribute '_local_tensor'"), and one of the same
    ranks failed in DTensor's copy_ ("got mixed torch.Tensor and DTensor"); both are refused before any write."""
    torch.manual_seed(0)
    if kind == "linear":
        layer = tt.nn.TTLinear(12, 8, tt_rank=3, in_dims=(3, 4), out_dims=(2, 4), dtype=torch.float64)
        shape, x = ((2, 4), (3, 4)), torch.randn(5, 12, dtype=torch.float64)
    else:
        layer = tt.nn.TTEmbedding(20, 12, tt_rank=3, voc_dims=(4, 5), emb_dims=(3, 4), dtype=torch.float64)
        shape, x = ((4, 5), (3, 4)), torch.arange(20)
    expected, name = layer(x), type(layer).__name__
    fully_shard(layer)
    for rank in (3, 2):
        with pytest.raises(TypeError, match=rf"{name}.load_tt_: the layer's cores are sharded \(DTensors"):
            layer.load_tt_(tt.random_matrix(shape, tt_rank=rank, dtype=torch.float64))
    assert layer.tt_ranks == (1, 3, 1)
    assert_close(layer(x), expected)


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor:UserWarning")
@pytest.mark.filterwarnings("ignore:DTensor random operators may not have complete support:UserWarning")
def test_deferred_init_under_fully_shard(fully_shard):
    """FSDP2's deferred init (build on meta, fully_shard, to_empty, reset_parameters): tt_normal_ checked the cores
    by building a TensorTrain of them, which refuses DTensors, so reset_parameters raised and the layers kept
    to_empty's garbage. The shards' global shapes are checked now and filled from torch's distributed RNG, with
    each core's scale an eager layer's."""

    def build() -> torch.nn.Sequential:
        return torch.nn.Sequential(
            tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5)),
            tt.nn.TTEmbedding(400, 64, tt_rank=4, voc_dims=(20, 20), emb_dims=(8, 8)),
        )

    with torch.device("meta"):
        model = build()
    for layer in model:
        fully_shard(layer)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for layer in model:
        layer.reset_parameters()
    expected = build()  # (drawn by its constructor)
    for got, want in zip(model, expected, strict=True):
        for a, b in zip(got.cores, want.cores, strict=True):
            assert 0.8 < float(a.detach().full_tensor().std() / b.detach().std()) < 1.25
    with torch.no_grad():
        out = model[1](torch.arange(400))
    assert torch.isfinite(out).all() and 0.5 < float(out.var()) < 2.0  # (init="normal": variance 1)


def test_decomposing_a_sharded_tensor_is_refused(fully_shard):
    """to_tt_matrix / to_tt_tensor of a DTensor (a sharded layer's weight) and from_linear / from_embedding of a
    sharded layer failed with "TensorTrain: core 0 is a DTensor", a core the caller never gave, or deep inside
    (".tolist() is not supported for tensor subclasses" for a float32 weight); each names its input now."""
    linear = torch.nn.Linear(12, 8, dtype=torch.float64)
    fully_shard(linear)
    emb = torch.nn.Embedding(20, 12, dtype=torch.float64)
    fully_shard(emb)
    w = linear.weight.detach()
    for fn, call in [
        ("to_tt_matrix", lambda: tt.to_tt_matrix(w, shape=((2, 4), (3, 4)), max_tt_rank=2)),
        ("to_tt_tensor", lambda: tt.to_tt_tensor(w, max_tt_rank=2)),
        ("TTLinear.from_linear: the weight", lambda: tt.nn.TTLinear.from_linear(linear, max_tt_rank=2)),
        (
            "TTEmbedding.from_embedding: the weight",
            lambda: tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=2),
        ),
    ]:
        if ":" not in fn:
            fn += ": the input"
        with pytest.raises(TypeError, match=rf"{fn} is a DTensor \(sharded"):
            call()
