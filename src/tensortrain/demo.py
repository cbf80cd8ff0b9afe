"""The MNIST demo: t3f's ``tensor_nets`` tutorial in PyTorch, behind ``tensortrain demo mnist``.

Four stages, with the tutorial's hyperparameters (inputs ``x / 127.5 - 1``, batch 64, cross-entropy):

a. ``Flatten -> TTLinear 784 -> 625, in (7, 4, 7, 4), out (5, 5, 5, 5), rank 4, bias 1e-3 -> ReLU ->
   Linear(625, 10)``, Adam lr 1e-2, 3 epochs (1,725 parameters in the TT layer).
b. ``Flatten -> Linear(784, 625) -> ReLU -> Linear(625, 10)``, Adam lr 1e-3, 5 epochs (496,885 parameters).
c. b's first layer replaced by its TT-SVD at rank 16 (``TTLinear.from_linear``): 21,845 parameters.
d. c fine-tuned for 2 epochs, Adam lr 1e-3.

Keras defaults are kept where the tutorial relied on them: glorot init for every weight, zero bias in the dense
layers, Adam epsilon 1e-7. Under ``torchrun`` (``WORLD_SIZE > 1``) training runs with
DistributedDataParallel on the gloo backend: each process gets ``batch_size / world_size`` samples of every
global batch through a ``DistributedSampler``, so the global batch and the learning rates stay the
tutorial's; only rank 0 reports and writes. This module computes and returns; ``tensortrain.cli`` prints.

``DemoConfig.device`` chooses where everything runs (``"cpu"`` by default, ``"cuda"``, ``"cuda:1"``, ``"auto"``;
:func:`resolve_device`): the preprocessed images are moved there once, batches are indexed there, and the models
are built on the CPU (the same initial weights on every device) and moved. The shuffles stay on the CPU, drawn
from the seeded ``DistributedSampler``, so every device sees the same batches in the same order.

The options and the numbers a run is set against are in :mod:`tensortrain.demo_config`, the device in
:mod:`tensortrain.demo_device`, what a run writes (and the checks of its output folder before the data is
loaded) in :mod:`tensortrain.demo_output`; :mod:`tensortrain.demo_seeds` runs the demo once per seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from .datasets import MNIST, load_mnist
from .demo_config import T3F_TUTORIAL, DemoConfig, StageResult, is_tutorial, mnist_folder
from .demo_device import device_fields, on_rank, resolve_device
from .demo_output import check_folder, check_writable, on_rank_zero, write_outputs
from .nn import TTLinear

__all__ = [
    "DemoConfig",
    "StageResult",
    "format_table",
    "is_tutorial",
    "resolve_device",
    "run_mnist_demo",
]

IN_DIMS = (7, 4, 7, 4)
OUT_DIMS = (5, 5, 5, 5)

T = TypeVar("T")
#: ``progress(iterable, desc, total)`` -> an iterable (a tqdm bar, or the iterable itself).
Progress = Callable[[Iterable[T], str, int], Iterable[T]]


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` is done (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class _Context:
    cfg: DemoConfig
    rank: int
    world: int
    device: torch.device
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    log: Callable[[str], None]
    progress: Progress


def _no_progress(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    return items


def _glorot_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` with Keras' Dense defaults (glorot-uniform weight, zero bias), as in the tutorial."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def tt_net(rank: int) -> nn.Sequential:
    """Stage a's model: Flatten -> TTLinear (7,4,7,4) -> (5,5,5,5) -> ReLU -> Linear(625, 10).

    Args:
        rank: the TT-rank of the 784 -> 625 layer (4 in the tutorial: 1,725 parameters in that layer).

    Returns:
        The model (glorot init everywhere, TT bias 1e-3, as the tutorial's Keras layers).

    Shape:
        - Input: ``(B, 28, 28)`` scaled images; output: ``(B, 10)`` logits.
    """
    tt_layer = TTLinear(
        784, 625, tt_rank=rank, in_dims=IN_DIMS, out_dims=OUT_DIMS, init="glorot", bias_init=1e-3
    )
    return nn.Sequential(nn.Flatten(), tt_layer, nn.ReLU(), _glorot_linear(625, 10))


def dense_net() -> nn.Sequential:
    """Stage b's model: Flatten -> Linear(784, 625) -> ReLU -> Linear(625, 10) (496,885 parameters).

    Returns:
        The model, with Keras' Dense init (glorot-uniform weights, zero biases).

    Shape:
        - Input: ``(B, 28, 28)`` scaled images; output: ``(B, 10)`` logits.
    """
    return nn.Sequential(nn.Flatten(), _glorot_linear(784, 625), nn.ReLU(), _glorot_linear(625, 10))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _preprocess(images: torch.Tensor, subset: int | None, device: torch.device | None = None) -> torch.Tensor:
    """The first ``subset`` images scaled to [-1, 1] on the CPU (the same values for every device), then moved
    to ``device`` in one copy."""
    images = images if subset is None else images[:subset]
    return (images.to(torch.float32) / 127.5 - 1.0).to(device)  # the tutorial's scaling to [-1, 1]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Fraction of ``x`` classified as ``y`` (eval mode, no gradients).

    Args:
        model: a classifier returning logits.
        x: the inputs.
        y: the int64 labels, one per input.
        batch: inputs per forward pass.

    Returns:
        The accuracy in [0, 1] (0 for no inputs).
    """
    model.eval()
    # counted on y's device: one synchronization, at the end
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    with torch.no_grad():
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            correct += (model(xb).argmax(dim=1) == yb).sum()
    model.train()
    return int(correct) / max(len(y), 1)


def _batches(ctx: _Context, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's index batches for one epoch, on ``ctx.device``: a seeded shuffle split over ranks by
    DistributedSampler, drawn on the CPU (the same batches on every device) and moved in one copy."""
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(ctx.y_train), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.long).to(ctx.device)
    return list(order.split(ctx.cfg.batch_size // ctx.world))


def _train(ctx: _Context, stage: str, model: nn.Module, epochs: int, lr: float) -> list[dict[str, float]]:
    """Adam + cross-entropy for ``epochs``; returns per-epoch mean loss and test accuracy."""
    net: nn.Module = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    # Keras' Adam epsilon (1e-7), which the tutorial ran with.
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    history = []
    seed = ctx.cfg.seed * 1000 + ord(stage)  # an independent shuffle stream per stage
    for epoch in range(epochs):
        batches = _batches(ctx, seed, epoch)
        total, t0 = torch.zeros((), device=ctx.device), _clock(ctx.device)
        desc = f"{stage}: epoch {epoch + 1}/{epochs}"
        for idx in ctx.progress(batches, desc, len(batches)):
            loss = F.cross_entropy(net(ctx.x_train[idx]), ctx.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        if ctx.world > 1:  # report the loss over the global batches, not rank 0's share
            dist.all_reduce(total)
            total /= ctx.world
        acc = accuracy(model, ctx.x_test, ctx.y_test)
        mean_loss = float(total) / max(len(batches), 1)
        history.append({"epoch": epoch + 1, "loss": mean_loss, "test_accuracy": acc})
        ctx.log(f"{desc}  loss {mean_loss:.4f}  test accuracy {acc:.4f}  ({_clock(ctx.device) - t0:.1f} s)")
    return history


def _stage(
    ctx: _Context, stage: str, name: str, model: nn.Module, epochs: int, lr: float | None
) -> StageResult:
    t0 = _clock(ctx.device)
    history = _train(ctx, stage, model, epochs, lr) if epochs and lr is not None else []
    acc = history[-1]["test_accuracy"] if history else accuracy(model, ctx.x_test, ctx.y_test)
    tt_params = sum(_count(m) for m in model.modules() if isinstance(m, TTLinear))
    return StageResult(
        stage, name, _count(model), tt_params or None, acc, _clock(ctx.device) - t0, epochs, lr, history
    )


def _rank_used(model: nn.Sequential) -> int:
    """The largest TT-rank of the model's TT layer (a requested rank above the useful ones is clipped)."""
    layer = model[1]
    assert isinstance(layer, TTLinear)
    return max(layer.tt_ranks)


def _compress(dense: nn.Sequential, rank: int, device: torch.device) -> tuple[nn.Sequential, float]:
    """Stage c: b's first layer (on ``device``) as a rank-``rank`` TT-SVD; also the weight's relative error."""
    model = dense_net().to(device)
    model.load_state_dict(dense.state_dict())
    first = model[1]
    assert isinstance(first, nn.Linear)
    tt_layer = TTLinear.from_linear(first, max_tt_rank=rank, in_dims=IN_DIMS, out_dims=OUT_DIMS)
    with torch.no_grad():
        err = float(
            torch.linalg.norm(tt_layer.dense_weight() - first.weight) / torch.linalg.norm(first.weight)
        )
    model[1] = tt_layer
    return model, err


def run_mnist_demo(
    cfg: DemoConfig,
    *,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    data: MNIST | None = None,
    data_folder: str | None = None,
) -> list[StageResult]:
    """Run the four stages and (on rank 0) write ``results.json`` and ``accuracy_vs_params.png`` to ``cfg.out``.

    Args:
        cfg: the options.
        log: receives one line per epoch and stage (the CLI passes ``print``; silent by default).
        progress: wraps each epoch's batches (the CLI passes a tqdm bar); None: no progress display.
        data: MNIST already loaded (:func:`tensortrain.datasets.load_mnist`'s result); None: loaded from
            ``cfg.data``.
        data_folder: where ``data`` came from, recorded in ``results.json`` as ``data_folder`` (None: not
            known). Without ``data``, the folder it is loaded from (``cfg.data``, else ``$TENSORTRAIN_DATA``,
            else the cache folder), whatever is given here.

    Returns:
        One :class:`StageResult` per stage (a, b, c, d).

    Raises:
        ValueError: ``batch_size`` not divisible by the number of processes, or ``cfg.device`` not available
            here (:func:`resolve_device`; the options themselves are checked when the :class:`DemoConfig` is
            built).
        FileNotFoundError, tensortrain.datasets.DownloadError, tensortrain.datasets.IDXError: no usable
            MNIST (see :func:`tensortrain.datasets.load_mnist`).
        NotADirectoryError: ``cfg.out`` (or ``cfg.data``) exists and is not a folder.
        OSError: ``cfg.out`` cannot be created or written.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
    out = Path(cfg.out)
    check_folder(out, "results.json", "accuracy_vs_params.png")  # before a possibly long download
    # an existing folder that cannot be written: before the download too
    on_rank_zero(lambda: check_writable(out), rank, world)
    device = on_rank(resolve_device(cfg.device), rank, world)  # before a possibly long download
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    if data is None:
        data, data_folder = load_mnist(cfg.data), mnist_folder(cfg)
    n_train, n_test = cfg.train_subset, cfg.test_subset
    for what, n, have in (
        ("train_subset", n_train, len(data.train_labels)),
        ("test_subset", n_test, len(data.test_labels)),
    ):
        if n is not None and n > have:  # (slicing would use all of them while results.json records n)
            raise ValueError(f"{what}={n} is more than the {have:,} images MNIST has")
    ctx = _Context(
        cfg,
        rank,
        world,
        device,
        _preprocess(data.train_images, n_train, device),  # the data moves to the device once, here
        data.train_labels[:n_train].to(device),
        _preprocess(data.test_images, n_test, device),
        data.test_labels[:n_test].to(device),
        log,
        progress or _no_progress,
    )
    # fail now, not after minutes of training, when --out cannot be created (an existing folder was checked for
    # writes before the download)
    on_rank_zero(lambda: out.mkdir(parents=True, exist_ok=True), rank, world)
    gpu = device_fields(device)["gpu"]
    on = f" on {device}" + (f" ({gpu})" if gpu else "")
    log(f"MNIST: {len(ctx.y_train):,} training and {len(ctx.y_test):,} test images; {world} process(es){on}")
    _warm_up(device)
    results, err = _stages(ctx)
    if rank == 0:
        write_outputs(cfg, results, world, device, _clock(device) - t_start, err, log, data_folder)
    return results


def _warm_up(device: torch.device) -> None:
    """Pay the one-time costs outside the stage timings."""
    # the first optimizer imports torch's compiler stack (seconds)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    if device.type != "cpu":  # and a GPU's first matmul creates its BLAS handle (also seconds)
        ones = torch.ones(2, 2, device=device)
        torch.mm(ones, ones)
        _clock(device)


def _stages(ctx: _Context) -> tuple[list[StageResult], float]:
    """The four stages' results, and the relative error of the compressed first-layer weight."""
    results = []
    # the models are initialized on the CPU and moved: the same initial weights on every device
    torch.manual_seed(ctx.cfg.seed)
    tt_model = tt_net(ctx.cfg.rank).to(ctx.device)
    # ranks above the useful ones are clipped (784x625 with these dims: at most 700): name the rank used
    used = _rank_used(tt_model)
    results.append(_stage(ctx, "a", f"TT net (rank {used})", tt_model, ctx.cfg.epochs_tt, 1e-2))
    torch.manual_seed(ctx.cfg.seed + 1)
    dense = dense_net().to(ctx.device)
    results.append(_stage(ctx, "b", "dense net", dense, ctx.cfg.epochs_dense, 1e-3))
    compressed, err = _compress(dense, ctx.cfg.compress_rank, ctx.device)
    used = _rank_used(compressed)
    results.append(_stage(ctx, "c", f"b compressed (TT-SVD, rank {used})", compressed, 0, None))
    ctx.log(f"c: relative Frobenius error of the compressed first-layer weight: {err:.4f}")
    results.append(_stage(ctx, "d", "c fine-tuned", compressed, ctx.cfg.epochs_finetune, 1e-3))
    return results, err


def format_table(results: list[StageResult]) -> str:
    """The summary table (markdown), with the t3f tutorial's accuracy beside ours.

    Args:
        results: what :func:`run_mnist_demo` returned.

    Returns:
        A markdown table: stage, model, parameters, parameters in the TT layer, test accuracy, t3f's
        accuracy, seconds.
    """
    lines = [
        "| stage | model | parameters | in TT layer | test accuracy | t3f tutorial | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ref = T3F_TUTORIAL.get(r.stage)
        ref_s = f"{100 * ref:.2f}%" if ref is not None else ""
        tt_s = f"{r.tt_layer_params:,}" if r.tt_layer_params else ""
        lines.append(
            f"| {r.stage} | {r.name} | {r.params:,} | {tt_s} | {100 * r.test_accuracy:.2f}% | {ref_s} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(lines)
