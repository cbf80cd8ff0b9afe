"""What a run of the MNIST demo is asked and what it gives back: :class:`DemoConfig` (the options of
``tensortrain demo mnist``, checked when built) and :class:`StageResult` (one row of the summary); and the
numbers a run is set against: the t3f tutorial's accuracies (:data:`T3F_TUTORIAL`) and the issue's targets
(:data:`TARGETS`), which hold for the tutorial's recipe only (:func:`is_tutorial`).

Below the training (:mod:`tensortrain.demo`) and its outputs (:mod:`tensortrain.demo_output`), which both read
them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .datasets import root_folder
from .demo_device import parse_device
from .files import path_text

__all__ = ["DemoConfig", "StageResult", "is_tutorial"]

#: What the t3f tutorial's stored outputs show (test accuracy), and the issue's targets.
T3F_TUTORIAL = {"a": 0.9638, "b": 0.971, "c": 0.6443, "d": 0.9765}
TARGETS = {"a": 0.960, "b": 0.970, "d": 0.975}


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``tensortrain demo mnist`` (the defaults are the tutorial's).

    ``device`` is ``"auto"`` (CUDA when available, else the CPU) or a ``torch.device`` string (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``); whether that device exists here is checked when the demo starts
    (:func:`resolve_device`). Under torchrun, ``"cuda"`` without an index means each process's
    ``cuda:LOCAL_RANK`` (modulo the number of GPUs).

    ``data`` and ``out`` may be given as ``os.PathLike`` (a ``pathlib.Path``); they are kept as str.

    Raises:
        TypeError: a count, rank or seed is not an int (``train_subset``, ``test_subset``, ``threads``: an
            int or None), ``device`` is not a str, or ``data`` or ``out`` is not a str or os.PathLike.
        ValueError: ``data`` or ``out`` is an empty path; ``batch_size``, ``rank`` or ``compress_rank`` below
            1, an epoch count below 0, ``train_subset``, ``test_subset`` or ``threads`` below 1, ``seed``
            outside ``[0, 2**32)``, or a ``device`` torch cannot parse. The message names the option.
    """

    data: str | os.PathLike[str] | None = None
    out: str | os.PathLike[str] = "out/demo"
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
        for name in ("data", "out"):
            value = getattr(self, name)
            if value is None and name == "data":
                continue
            path = path_text(value)
            if path is None:
                allowed = " or None" if name == "data" else ""
                raise TypeError(
                    f"{name} must be a folder path (a str or os.PathLike){allowed}, got {value!r}"
                )
            if not path:  # Path("") is the current folder
                raise ValueError(f"{name} is an empty path; give a folder")
            # kept as a str: results.json records the config as JSON, which refused a Path after the training
            object.__setattr__(self, name, path)
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
        parse_device(self.device)


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


def mnist_folder(cfg: DemoConfig) -> str:
    """The folder the demo reads MNIST from, as an absolute path (``..`` resolved, symbolic links kept):
    ``cfg.data`` (``~`` expanded), else ``$TENSORTRAIN_DATA``, else the cache folder
    (:func:`tensortrain.datasets.default_data_dir`)."""
    return os.path.abspath(root_folder(cfg.data))


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
