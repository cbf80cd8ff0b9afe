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
"""

from __future__ import annotations

import errno
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from .datasets import MNIST, load_mnist
from .io import atomic_write
from .nn import TTLinear

__all__ = [
    "DemoConfig",
    "StageResult",
    "format_seeds_table",
    "format_table",
    "is_tutorial",
    "resolve_device",
    "run_mnist_demo",
    "run_mnist_seeds",
    "summarize_seeds",
]

IN_DIMS = (7, 4, 7, 4)
OUT_DIMS = (5, 5, 5, 5)
#: What the t3f tutorial's stored outputs show (test accuracy), and the issue's targets.
T3F_TUTORIAL = {"a": 0.9638, "b": 0.971, "c": 0.6443, "d": 0.9765}
TARGETS = {"a": 0.960, "b": 0.970, "d": 0.975}

T = TypeVar("T")
#: ``progress(iterable, desc, total)`` -> an iterable (a tqdm bar, or the iterable itself).
Progress = Callable[[Iterable[T], str, int], Iterable[T]]


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``tensortrain demo mnist`` (the defaults are the tutorial's).

    ``device`` is ``"auto"`` (CUDA when available, else the CPU) or a ``torch.device`` string (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``); whether that device exists here is checked when the demo starts
    (:func:`resolve_device`). Under torchrun, ``"cuda"`` without an index means each process's
    ``cuda:LOCAL_RANK`` (modulo the number of GPUs).

    Raises:
        TypeError: a count, rank or seed is not an int (``train_subset``, ``test_subset``, ``threads``: an
            int or None), or ``device`` is not a str.
        ValueError: ``batch_size``, ``rank`` or ``compress_rank`` below 1, an epoch count below 0,
            ``train_subset``, ``test_subset`` or ``threads`` below 1, ``seed`` outside ``[0, 2**32)``, or a
            ``device`` torch cannot parse. The message names the option.
    """

    data: str | None = None
    out: str = "out/demo"
    epochs_tt: int = 3
    epochs_dense: int = 5
    epochs_finetune: int = 2
    rank: int = 4
    compress_rank: int = 16
    seed: int = 0
    batch_size: int = 64
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("batch_size", "rank", "compress_rank"):
            if _int_option(name, getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs_tt", "epochs_dense", "epochs_finetune"):
            if _int_option(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "threads"):
            # 0 or a negative N would silently mean "no images" or "all but the last N" (images[:N])
            value = _int_option(name, getattr(self, name), optional=True)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        # each stage's shuffle seed is seed * 1000 + a letter: keep it in 64 bits
        if not 0 <= _int_option("seed", self.seed) < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")
        _parse_device(self.device)


def _parse_device(spec: object) -> torch.device | None:
    """``spec`` as a ``torch.device`` (None for ``"auto"``), or a TypeError/ValueError saying what is wrong."""
    if not isinstance(spec, str):
        raise TypeError(f"device must be a str ('auto', 'cpu', 'cuda', 'cuda:0', ...), got {spec!r}")
    if spec == "auto":
        return None
    try:
        return torch.device(spec)
    except RuntimeError as err:  # torch's "Invalid device string: 'cuda:x'", "Expected one of cpu, cuda, ..."
        raise ValueError(
            f"device {spec!r} is not a device: expected 'auto' or a torch device such as 'cpu', 'cuda' or "
            f"'cuda:0' (torch: {err})"
        ) from None


def _available_devices() -> list[str]:
    """The devices this process can compute on: the CPU, each CUDA GPU, and MPS (Apple GPUs) when present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def resolve_device(spec: str) -> torch.device:
    """The device a demo's ``device`` option names, checked to exist here.

    Args:
        spec: ``"auto"`` (``"cuda"`` when CUDA is available, else ``"cpu"``) or any ``torch.device`` string
            (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns:
        The device (``cuda`` without an index stays without one: the current GPU, or under torchrun each
        process's own).

    Raises:
        TypeError: ``spec`` is not a str.
        ValueError: torch cannot parse ``spec``; it names CUDA and CUDA is not available, or a GPU index past
            the last; it names another device this process cannot allocate on, or ``meta`` (which holds no
            values). The message lists the devices that are available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    device = _parse_device(spec)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(_available_devices())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU or driver was found"
            )
            raise ValueError(f"device {spec!r}: CUDA is not available ({why}); available: {available}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: there is no GPU {device.index} ({torch.cuda.device_count()} CUDA "
                f"device(s)); available: {available}"
            )
        return device
    if device.type == "meta":
        raise ValueError(f"device {spec!r} holds no values (shapes only): the demo cannot train on it")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: MPS is not available; available: {available}")
    try:  # any other device type: usable if a tensor can live there
        torch.empty(0, device=device)
    except Exception as err:  # AssertionError "Torch not compiled with XPU enabled", NotImplementedError, ...
        # the first sentence: a missing backend's NotImplementedError goes on with pages of dispatch keys
        reason = (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0]
        raise ValueError(
            f"device {spec!r} is not available here ({reason}); available: {available}"
        ) from None
    return device


def _on_rank(device: torch.device, rank: int, world: int) -> torch.device:
    """``cuda`` without an index pinned to one GPU, so that results.json names the GPU used: the current one,
    or under torchrun the process's own (``LOCAL_RANK``, else its rank, modulo the number of GPUs)."""
    if device.type != "cuda" or device.index is not None:
        return device
    if world == 1:
        return torch.device("cuda", torch.cuda.current_device())
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` is done (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def is_tutorial(cfg: DemoConfig) -> bool:
    """Whether ``cfg`` runs the tutorial's recipe (all data, its epochs, ranks and batch size; any seed, data
    folder, output folder or thread count): the only runs the accuracy targets (:data:`TARGETS`) are for.

    Example:
        >>> is_tutorial(DemoConfig(seed=3)), is_tutorial(DemoConfig(train_subset=3000))
        (True, False)
    """
    same = ("epochs_tt", "epochs_dense", "epochs_finetune", "rank", "compress_rank", "batch_size")
    full = cfg.train_subset is None and cfg.test_subset is None
    return full and all(getattr(cfg, k) == getattr(DemoConfig, k) for k in same)


def _int_option(name: str, value: object, optional: bool = False) -> Any:
    """``value`` itself once it is an int (not a bool), or None where allowed; else a TypeError naming it."""
    if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{name} must be {'an int or None' if optional else 'an int'}, got {value!r}")


@dataclass
class StageResult:
    """One row of the summary: a model, its size and its MNIST test accuracy."""

    stage: str
    name: str
    params: int
    tt_layer_params: int | None
    test_accuracy: float
    seconds: float
    epochs: int
    lr: float | None
    history: list[dict[str, float]] = field(default_factory=list)


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
) -> list[StageResult]:
    """Run the four stages and (on rank 0) write ``results.json`` and ``accuracy_vs_params.png`` to ``cfg.out``.

    Args:
        cfg: the options.
        log: receives one line per epoch and stage (the CLI passes ``print``; silent by default).
        progress: wraps each epoch's batches (the CLI passes a tqdm bar); None: no progress display.
        data: MNIST already loaded (:func:`tensortrain.datasets.load_mnist`'s result); None: loaded from
            ``cfg.data``.

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
    _check_folder(out, "results.json", "accuracy_vs_params.png")  # before a possibly long download
    # an existing folder that cannot be written: before the download too
    _on_rank_zero(lambda: _check_writable(out), rank, world)
    device = _on_rank(resolve_device(cfg.device), rank, world)  # before a possibly long download
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    data = load_mnist(cfg.data) if data is None else data
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
    _on_rank_zero(lambda: out.mkdir(parents=True, exist_ok=True), rank, world)
    gpu = _device_fields(device)["gpu"]
    on = f" on {device}" + (f" ({gpu})" if gpu else "")
    log(f"MNIST: {len(ctx.y_train):,} training and {len(ctx.y_test):,} test images; {world} process(es){on}")
    # The first optimizer imports torch's compiler stack (seconds): do it here, outside the stage timings.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    if device.type != "cpu":  # and a GPU's first matmul creates its BLAS handle (also seconds)
        ones = torch.ones(2, 2, device=device)
        torch.mm(ones, ones)
        _clock(device)
    results = []
    # the models are initialized on the CPU and moved: the same initial weights on every device
    torch.manual_seed(cfg.seed)
    tt_model = tt_net(cfg.rank).to(device)
    # ranks above the useful ones are clipped (784x625 with these dims: at most 700): name the rank used
    used = _rank_used(tt_model)
    results.append(_stage(ctx, "a", f"TT net (rank {used})", tt_model, cfg.epochs_tt, 1e-2))
    torch.manual_seed(cfg.seed + 1)
    dense = dense_net().to(device)
    results.append(_stage(ctx, "b", "dense net", dense, cfg.epochs_dense, 1e-3))
    compressed, err = _compress(dense, cfg.compress_rank, device)
    used = _rank_used(compressed)
    results.append(_stage(ctx, "c", f"b compressed (TT-SVD, rank {used})", compressed, 0, None))
    log(f"c: relative Frobenius error of the compressed first-layer weight: {err:.4f}")
    results.append(_stage(ctx, "d", "c fine-tuned", compressed, cfg.epochs_finetune, 1e-3))
    if rank == 0:
        _write_outputs(cfg, results, world, device, _clock(device) - t_start, err, log)
    return results


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


def run_mnist_seeds(
    cfg: DemoConfig,
    seeds: Iterable[int],
    *,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> dict[int, list[StageResult]]:
    """Run the demo once per seed: the spread a single run's accuracy cannot show.

    Each run is :func:`run_mnist_demo` with ``cfg`` and that seed, writing to ``cfg.out/seed-<S>``; MNIST is
    loaded once. Rank 0 then writes ``cfg.out/seeds.json``: per stage, the accuracy of every seed, their mean,
    sample standard deviation, minimum and maximum and, for the tutorial's recipe (:func:`is_tutorial`), how
    many runs met :data:`TARGETS` (:func:`summarize_seeds`).

    Args:
        cfg: the options; its ``seed`` is ignored.
        seeds: distinct seeds, each in ``[0, 2**32)``, run in this order.
        log: as in :func:`run_mnist_demo`, plus one line naming each seed.
        progress: as in :func:`run_mnist_demo`.

    Returns:
        The stages' results (:class:`StageResult`, a to d) of every seed.

    Raises:
        ValueError: no seeds, a seed given twice, or one :class:`DemoConfig` refuses; and what
            :func:`run_mnist_demo` raises.

    Complexity:
        ``len(seeds)`` demo runs (about 40 s each on 2 CPU cores).

    Example:
        >>> runs = run_mnist_seeds(DemoConfig(out="out/seeds"), range(10))  # doctest: +SKIP
        >>> print(format_seeds_table(summarize_seeds(runs, TARGETS)))  # doctest: +SKIP
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seeds must be distinct, got {twice} more than once")
    out = Path(cfg.out)
    configs = [replace(cfg, seed=s, out=str(out / f"seed-{s}")) for s in seeds]  # checks every seed first
    folders = [out, *(Path(c.out) for c in configs)]  # every seed's, before the first seed trains
    for folder in folders:
        _check_folder(
            folder, *(("seeds.json",) if folder == out else ("results.json", "accuracy_vs_params.png"))
        )
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    _on_rank_zero(lambda: _check_writable(*folders), rank, world)
    device = _on_rank(resolve_device(cfg.device), rank, world)  # before a possibly long download
    t_start = time.perf_counter()
    data = load_mnist(cfg.data)
    runs = {}
    for i, c in enumerate(configs):
        log(f"seed {c.seed} ({i + 1} of {len(configs)}): writing to {c.out}")
        runs[c.seed] = run_mnist_demo(c, log=log, progress=progress, data=data)
    if rank == 0:
        from . import __version__

        report = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "seed"},
            "seeds": seeds,
            **_device_fields(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "tensortrain": __version__,
            "total_seconds": time.perf_counter() - t_start,
            "stages": summarize_seeds(runs, TARGETS if is_tutorial(cfg) else None),
        }
        atomic_write(out / "seeds.json", (json.dumps(report, indent=2) + "\n").encode())
    return runs


def summarize_seeds(
    runs: dict[int, list[StageResult]], targets: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Per stage, the test accuracies of all runs and their statistics.

    Args:
        runs: :func:`run_mnist_seeds`' result (seed -> the stages' results).
        targets: stage -> the accuracy a run should reach (:data:`TARGETS`, for the tutorial's recipe only);
            None: no comparison.

    Returns:
        One dict per stage: ``stage``, ``test_accuracy`` (seed -> accuracy), ``mean``, ``sd`` (sample standard
        deviation; None for one run), ``min``, ``max``, ``target`` and ``runs_meeting_target`` (None for a
        stage without a target).

    Example:
        >>> r = lambda acc: [StageResult("b", "dense net", 496885, None, acc, 1.0, 5, 1e-3)]
        >>> s = summarize_seeds({0: r(0.9698), 1: r(0.9720)}, TARGETS)[0]
        >>> round(s["mean"], 4), s["runs_meeting_target"]
        (0.9709, 1)
    """
    if not runs:
        raise ValueError("runs is empty")
    stages = [r.stage for r in next(iter(runs.values()))]
    summary = []
    for k, stage in enumerate(stages):
        acc = {seed: results[k].test_accuracy for seed, results in runs.items()}
        values = list(acc.values())
        target = None if targets is None else targets.get(stage)
        summary.append(
            {
                "stage": stage,
                "test_accuracy": acc,
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else None,
                "min": min(values),
                "max": max(values),
                "target": target,
                "runs_meeting_target": None if target is None else sum(v >= target for v in values),
            }
        )
    return summary


def format_seeds_table(summary: list[dict[str, Any]]) -> str:
    """:func:`summarize_seeds`' result as a markdown table: a row per stage, a column per seed, mean ± sd and,
    where targets were compared, how many runs met them."""
    seeds = list(summary[0]["test_accuracy"])
    compared = any(s["target"] is not None for s in summary)
    head = ["seed", *map(str, seeds), "mean ± sd"] + (["runs meeting the target"] if compared else [])
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for s in summary:
        cells = [s["stage"], *(f"{100 * v:.2f}" for v in s["test_accuracy"].values())]
        sd = "" if s["sd"] is None else f" ± {100 * s['sd']:.2f}"
        cells.append(f"{100 * s['mean']:.2f}{sd}")
        if compared:
            target = s["target"]
            met = (
                f"{s['runs_meeting_target']} of {len(seeds)} (>= {100 * target:.1f})"
                if target is not None
                else "(reported)"
            )
            cells.append(met)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _device_fields(device: torch.device) -> dict[str, str | None]:
    """What the JSON reports say of the device: its name (``"cpu"``, ``"cuda:0"``) and the GPU's model."""
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _write_outputs(
    cfg: DemoConfig,
    results: list[StageResult],
    world: int,
    device: torch.device,
    seconds: float,
    err: float,
    log: Callable[[str], None],
) -> None:
    from . import __version__

    out = Path(cfg.out)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "world_size": world,
        **_device_fields(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tensortrain": __version__,
        "total_seconds": seconds,
        "compressed_weight_relative_error": err,
        "targets": TARGETS,
        "t3f_tutorial": T3F_TUTORIAL,
        "stages": [asdict(r) for r in results],
    }
    # The plot is rendered first (about 0.5 s) and an earlier run's removed before this run's results.json
    # replaces the old one: an interruption can leave a run without its plot, never beside another run's.
    png = _plot(results)
    (out / "accuracy_vs_params.png").unlink(missing_ok=True)
    atomic_write(out / "results.json", (json.dumps(report, indent=2) + "\n").encode())
    if png is not None:
        atomic_write(out / "accuracy_vs_params.png", png)
    else:
        log('no plot: matplotlib is not installed (pip install "tensortrain[demo]")')


def _check_folder(out: Path, *files: str) -> None:
    """An output folder path that exists must be a folder (a file, or a dangling link, which ``mkdir`` would
    fail on only after training), one that does not must have a folder as its nearest existing parent, and the
    ``files`` to be written into it must not be folders, nor existing write-protected files (which the writes
    refuse, as ``open()`` does)."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        what = "a link to nothing" if out.is_symlink() and not out.exists() else "not a folder"
        raise NotADirectoryError(f"{out} is {what}; the output folder (out) must be a directory")
    # a missing folder under a file (out/sub with out a file) failed only in mkdir, after loading the data
    above = out.parent
    while not (above.exists() or above.is_symlink()) and above.parent != above:
        above = above.parent
    if not (out.exists() or above.is_dir()):
        raise NotADirectoryError(
            f"{above} is not a folder; the output folder (out) {out} cannot be made in it"
        )
    for name in files:
        if (out / name).is_dir():
            raise IsADirectoryError(f"{out / name} is a folder; the demo writes its {name} there")
        if (out / name).is_file() and not os.access(out / name, os.W_OK):
            raise PermissionError(
                errno.EACCES,
                f"the demo writes its {name} there, but the file is write-protected",
                str(out / name),
            )


def _on_rank_zero(step: Callable[[], object], rank: int, world: int) -> None:
    """Run ``step`` (a check or creation of the output folder, which only rank 0 writes) on rank 0 and raise its
    ``OSError`` on every rank: the other ranks, gone on alone, failed in DDP's first collective with a
    traceback about a closed connection."""
    err: OSError | None = None
    if rank == 0:
        try:
            step()
        except OSError as e:
            err = e
    if world > 1:
        shared = [None if err is None else str(err)]
        dist.broadcast_object_list(shared, src=0)
        if rank != 0 and shared[0] is not None:
            raise OSError(f"rank 0 could not prepare the output folder: {shared[0]}")
    if err is not None:
        raise err


def _check_writable(*folders: Path) -> None:
    """Create and remove a file in each of ``folders`` that exists: an existing folder that cannot be written
    (read-only, a system folder) fails here, before training, with the error a write would give."""
    for out in folders:
        if not out.is_dir():
            continue
        probe = out / f".tt-probe-{os.getpid()}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # (a stale probe of a killed run with this pid: the folder is writable)
            continue
        except OSError as err:
            raise type(err)(
                err.errno, f"cannot write into the output folder ({err.strerror or err})", str(out)
            ) from None
        os.close(fd)
        probe.unlink()


def _plot(results: list[StageResult]) -> bytes | None:
    """Accuracy against parameter count (log x) as PNG bytes; None without matplotlib (the demo extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax = fig.add_subplot()
    for i, r in enumerate(results):
        acc = 100 * r.test_accuracy
        ax.scatter(r.params, acc, s=40, label=f"{r.stage}: {r.name} ({r.params:,} params, {acc:.2f}%)")
        # alternate sides so that c and d (same size) keep readable letters
        ax.annotate(
            r.stage, (r.params, acc), textcoords="offset points", xytext=(7 if i % 2 == 0 else -13, 3)
        )
    path = [r for r in results if r.stage in "bcd"]  # the compression path: dense -> TT-SVD -> fine-tuned
    ax.plot([r.params for r in path], [100 * r.test_accuracy for r in path], ":", color="gray", lw=1)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below the axes
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("TT layers on MNIST (t3f tutorial in PyTorch)")
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
