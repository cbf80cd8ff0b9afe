"""What the MNIST demo leaves on disk: ``results.json`` and ``accuracy_vs_params.png`` (Agg, without pyplot's
global state; no plot without matplotlib), and the checks of the output folders that run before the data is
loaded, so that a folder the demo cannot write into fails at once, not after minutes of training. Only rank 0
writes; :func:`on_rank_zero` raises its errors on every rank.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .demo_config import T3F_TUTORIAL, TARGETS, DemoConfig, StageResult
from .demo_device import device_fields
from .files import atomic_write

__all__: list[str] = []


def write_outputs(
    cfg: DemoConfig,
    results: list[StageResult],
    world: int,
    device: torch.device,
    seconds: float,
    err: float,
    log: Callable[[str], None],
    data_folder: str | None,
) -> None:
    from . import __version__

    out = Path(cfg.out)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "data_folder": data_folder,  # (config's data is None where $TENSORTRAIN_DATA or the cache was read)
        "world_size": world,
        **device_fields(device),
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


def check_folder(out: Path, *files: str) -> None:
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


def on_rank_zero(step: Callable[[], object], rank: int, world: int) -> None:
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


def check_writable(*folders: Path) -> None:
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
