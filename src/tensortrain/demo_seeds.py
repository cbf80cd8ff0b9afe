"""The MNIST demo once per seed (:func:`run_mnist_seeds`, behind ``tensortrain demo mnist --seeds``): the
spread of the test accuracies that a single run cannot show, summarized per stage (:func:`summarize_seeds`)
and tabled (:func:`format_seeds_table`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .datasets import load_mnist
from .demo import Progress, run_mnist_demo
from .demo_config import TARGETS, DemoConfig, StageResult, is_tutorial, mnist_folder
from .demo_device import device_fields, on_rank, resolve_device
from .demo_output import check_folder, check_writable, on_rank_zero
from .files import atomic_write

__all__ = ["format_seeds_table", "run_mnist_seeds", "summarize_seeds"]


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
        check_folder(
            folder, *(("seeds.json",) if folder == out else ("results.json", "accuracy_vs_params.png"))
        )
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    on_rank_zero(lambda: check_writable(*folders), rank, world)
    device = on_rank(resolve_device(cfg.device), rank, world)  # before a possibly long download
    t_start = time.perf_counter()
    data, data_folder = load_mnist(cfg.data), mnist_folder(cfg)
    runs = {}
    for i, c in enumerate(configs):
        log(f"seed {c.seed} ({i + 1} of {len(configs)}): writing to {c.out}")
        runs[c.seed] = run_mnist_demo(c, log=log, progress=progress, data=data, data_folder=data_folder)
    if rank == 0:
        from . import __version__

        report = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "seed"},
            "seeds": seeds,
            "data_folder": data_folder,
            **device_fields(device),
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
