"""The ``tensortrain`` command: ``demo mnist``, ``inspect``, ``compress``, ``--version``.

Thin over the library: it parses options, sets up ``torch.distributed`` when started by ``torchrun``,
shows progress bars (tqdm, from the ``demo`` extra, when installed) and prints what the library returns.
What ``inspect`` and ``compress`` do is in :mod:`tensortrain.cli_inspect` and :mod:`tensortrain.cli_compress`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from .demo_config import DemoConfig, StageResult

__all__ = ["build_parser", "main"]

T = TypeVar("T")


def _path(text: str) -> str:
    """An argparse ``type``: a non-empty path (``""`` would mean the current folder, silently)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that cleanups (``finally``) run as for a Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {high}], got {value}")
        return value

    # shown by argparse in "invalid int>=1 value" messages
    parse.__name__ = f"int>={low}" if high is None else f"int in [{low}, {high}]"
    return parse


def _float_above(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a number in ``(low, high)`` (no upper bound when ``high`` is None; NaN refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > low and (high is None or value < high)):
            where = f"> {low:g}" if high is None else f"lie in ({low:g}, {high:g})"
            raise argparse.ArgumentTypeError(f"must {'be ' if high is None else ''}{where}, got {text}")
        return value

    parse.__name__ = f"number > {low:g}" if high is None else f"number in ({low:g}, {high:g})"
    return parse


_MAX_SEEDS = 1000


def _seed_list(text: str) -> list[int]:
    """An argparse ``type``: distinct seeds as comma-separated integers and inclusive ranges (``0-4,7``)."""
    seed = _int_in(0, 2**32 - 1)
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if sep and not (first.strip() and last.strip()):  # "-1" read as a range with no start
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is neither a seed nor a range A-B (seeds are integers >= 0)"
            )
        lo = seed(first)
        hi = seed(last) if sep else lo
        if hi < lo:
            raise argparse.ArgumentTypeError(f"range {part.strip()!r} ends below its start")
        if len(seeds) + hi - lo + 1 > _MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"at most {_MAX_SEEDS} seeds, got more in {text!r}")
        seeds.extend(range(lo, hi + 1))
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"seed {twice[0]} is listed twice in {text!r}")
    return seeds


def _module_attr(text: str) -> str:
    """``--model``'s form, checked by the parser: a malformed one is a usage error (exit 2), as every other."""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise argparse.ArgumentTypeError(f"must be MODULE:ATTR (e.g. mymodels:build_mlp), got {text!r}")
    return text


def _device(text: str) -> str:
    """An argparse ``type``: ``auto`` or a torch device that exists here (``cpu``, ``cuda``, ``cuda:1``), kept
    as written (``results.json`` records what ``auto`` became)."""
    from .demo_device import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:  # "CUDA is not available (...); available: cpu", or a string torch cannot parse
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_mnist(demo: argparse._SubParsersAction) -> None:
    p = demo.add_parser(
        "mnist",
        help="t3f's MNIST tutorial: a TT net, a dense net, its TT-SVD compression and fine-tuning",
        description=(
            "Reproduce t3f's tensor_nets tutorial on MNIST: (a) a TT net trained from scratch, (b) a dense "
            "784-625-10 net, (c) b's first layer compressed by TT-SVD, (d) c fine-tuned. Prints a summary "
            "table and writes results.json and accuracy_vs_params.png to --out. Runs on --device (the CPU by "
            "default) and under torchrun (DistributedDataParallel, gloo backend) when WORLD_SIZE > 1."
        ),
    )
    pos, nonneg = _int_in(1), _int_in(0)
    d = " (default: %(default)s)"
    p.add_argument(
        "--data",
        type=_path,
        metavar="DIR",
        help="folder with the MNIST IDX files (default: $TENSORTRAIN_DATA, else the cache)",
    )
    p.add_argument(
        "--out",
        type=_path,
        metavar="DIR",
        default="out/demo",
        help="output folder for results.json and the plot" + d,
    )
    p.add_argument(
        "--epochs-tt", type=nonneg, metavar="N", default=3, help="epochs of stage a (TT net, Adam 1e-2)" + d
    )
    p.add_argument(
        "--epochs-dense",
        type=nonneg,
        metavar="N",
        default=5,
        help="epochs of stage b (dense net, Adam 1e-3)" + d,
    )
    p.add_argument(
        "--epochs-finetune", type=nonneg, metavar="N", default=2, help="epochs of stage d (Adam 1e-3)" + d
    )
    p.add_argument("--rank", type=pos, metavar="R", default=4, help="TT-rank of the TT net (stage a)" + d)
    p.add_argument(
        "--compress-rank", type=pos, metavar="R", default=16, help="max TT-rank of the TT-SVD (stage c)" + d
    )
    seeding = p.add_mutually_exclusive_group()
    seeding.add_argument(
        "--seed",
        type=_int_in(0, 2**32 - 1),  # the demo's own limit (DemoConfig): a usage error, not a runtime one
        metavar="S",
        default=0,
        help="seed of the initializations and shuffles, 0 to 2**32 - 1" + d,
    )
    seeding.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="LIST",
        help=(
            "run once per seed (e.g. 0-9, or 0,3,7) into OUT/seed-S, then print the accuracies of all runs "
            "with their mean and standard deviation and write OUT/seeds.json"
        ),
    )
    p.add_argument(
        "--batch-size",
        type=_int_in(1, 2**31 - 1),  # (a larger one failed after loading the data, "Overflow when unpacking")
        metavar="B",
        default=64,
        help="global batch, split over torchrun processes" + d,
    )
    p.add_argument("--train-subset", type=pos, metavar="N", help="use the first N training images only")
    p.add_argument("--test-subset", type=pos, metavar="N", help="use the first N test images only")
    p.add_argument(
        "--threads",
        type=_int_in(1, 4096),  # (torch.set_num_threads overflowed on larger ones, after the data was loaded)
        metavar="N",
        help="torch.set_num_threads(N) (default: torch's choice)",
    )
    p.add_argument(
        "--device",
        type=_device,
        metavar="DEV",
        default="cpu",
        help=(
            "where all four stages train and evaluate: cpu, cuda, cuda:N, any other torch device, or auto "
            "(cuda when available, else cpu); the data is moved there once, the shuffles stay seeded on the "
            "CPU, and results.json records the device and GPU. Under torchrun, cuda means each process's "
            "cuda:LOCAL_RANK" + d
        ),
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_mnist)


def _add_inspect(commands: argparse._SubParsersAction) -> None:
    from .cli_inspect import run_inspect

    p = commands.add_parser(
        "inspect",
        help="describe a tt.save file or the TT layers of a model checkpoint",
        description=(
            "Describe each file: a tt.save file (its TT object, dtype, parameters, dense size, compression, "
            "metadata) or a model checkpoint (a safetensors or torch.save state dict, read with "
            "weights_only=True): its TT layers, found by their <prefix>cores.<k> keys, and parameter totals. "
            "Exits 1 if any file could not be read (the others are still described)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .safetensors or torch file")
    p.add_argument("--json", action="store_true", help="print one JSON list (one object per PATH) instead")
    p.set_defaults(run=run_inspect)


def _add_compress(commands: argparse._SubParsersAction) -> None:
    from .cli_compress import run_compress

    p = commands.add_parser(
        "compress",
        help="replace a model's Linear/Embedding layers by TT layers (tt.compress) and save it",
        description=(
            "Build the model MODULE:ATTR (an nn.Module, or a function with no arguments returning one; the "
            "current folder is searched first), optionally load --weights, run tt.compress with one budget "
            "and print its report. --out saves the compressed model's state dict (.safetensors, else "
            "torch.save) and prints how to load it back."
        ),
    )
    p.add_argument(
        "--model", required=True, type=_module_attr, metavar="MODULE:ATTR", help="e.g. mymodels:build_mlp"
    )
    p.add_argument(
        "--weights", metavar="CKPT", help="a state dict (safetensors or torch file) to load first (strict)"
    )
    budget = p.add_mutually_exclusive_group(required=True)
    # (checked here, as tt.compress checks them: a usage error before the model is built and its weights loaded)
    budget.add_argument(
        "--max-tt-rank", type=_int_in(1), metavar="R", help="one TT-rank cap for all layers, >= 1"
    )
    budget.add_argument(
        "--epsilon", type=_float_above(0, 1), metavar="E", help="relative error per layer, in (0, 1)"
    )
    budget.add_argument(
        "--ratio", type=_float_above(1), metavar="F", help="compression factor of the selected layers, > 1"
    )
    p.add_argument(
        "--include", action="append", metavar="GLOB", help="layer names to select (repeatable; default all)"
    )
    p.add_argument("--exclude", action="append", metavar="GLOB", help="layer names to leave (repeatable)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--dry-run", action="store_true", help="only plan and print the report")
    output.add_argument(
        "--out", metavar="FILE", help="write the state dict (.safetensors, else a torch.save file)"
    )
    p.add_argument("--report-json", metavar="FILE", help="write the report as JSON")
    p.set_defaults(run=run_compress)


def build_parser() -> argparse.ArgumentParser:
    """The ``tensortrain`` argument parser: one subcommand per task (``demo mnist``, ``inspect``, ``compress``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tensortrain", description="Tensor-train decompositions and TT-compressed networks for PyTorch."
    )
    parser.add_argument(
        "--version", action="version", version=f"tensortrain {__version__} (torch {torch.__version__})"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a demo", description="Run a demo.")
    demo_commands = demo.add_subparsers(title="demos", metavar="DEMO")
    _add_mnist(demo_commands)
    demo.set_defaults(run=lambda args: _usage(demo))
    _add_inspect(commands)
    _add_compress(commands)
    parser.set_defaults(run=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _progress_bar(enabled: bool) -> Callable[[Iterable[T], str, int], Iterable[T]] | None:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the demo extra is optional: run without bars
        return None

    def bar(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
        return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5)

    return bar


def _run_mnist(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .datasets import IDXError
    from .demo import format_table, run_mnist_demo
    from .demo_seeds import run_mnist_seeds

    started_here = _start_process_group()
    if started_here is None:
        return 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = _rank0_log(rank)
    cfg = _demo_config(args)
    t0 = time.perf_counter()
    bar = _progress_bar(rank == 0 and not args.no_progress)
    try:
        if args.seeds is not None:
            runs = run_mnist_seeds(cfg, args.seeds, log=log, progress=bar)
        else:
            results = run_mnist_demo(cfg, log=log, progress=bar)
    except (OSError, IDXError, ValueError) as err:  # OSError: missing/undownloadable data, unwritable --out
        # the CLI's name for load_mnist's root; a --data given overrides $TENSORTRAIN_DATA, so setting that
        # would not help
        if args.data is not None:
            text = str(err).replace("pass root= / set $TENSORTRAIN_DATA to", "pass --data")
        else:
            text = str(err).replace("pass root= / set", "pass --data / set")
        print(f"tensortrain: error: {text}", file=sys.stderr)
        return 1
    finally:
        if started_here:
            dist.destroy_process_group()
    log("")
    if args.seeds is not None:
        _report_seeds(runs, cfg, log)
        log(f"wall time {time.perf_counter() - t0:.1f} s; wrote {os.path.join(cfg.out, 'seeds.json')}")
        return 0
    log(format_table(results))
    _report_targets(results, cfg, log)
    log(f"wall time {time.perf_counter() - t0:.1f} s; wrote {os.path.join(cfg.out, 'results.json')}")
    return 0


def _demo_config(args: argparse.Namespace) -> DemoConfig:
    """The demo's configuration from ``tensortrain demo mnist``'s options (each field is the option of its name)."""
    import dataclasses

    from .demo_config import DemoConfig

    return DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})


def _report_targets(results: list[StageResult], cfg: DemoConfig, log: Callable[[str], None]) -> None:
    """Each stage's test accuracy against the tutorial's target, for a run of the full recipe only."""
    from .demo_config import TARGETS, is_tutorial

    if not is_tutorial(cfg):  # a shortened run says nothing about targets set for the full recipe
        log(_not_compared())
        return
    for r in results:
        if r.stage in TARGETS:
            met = "met" if r.test_accuracy >= TARGETS[r.stage] else "MISSED"
            log(f"target {r.stage}: {100 * r.test_accuracy:.2f}% vs >= {100 * TARGETS[r.stage]:.1f}%: {met}")


def _start_process_group() -> bool | None:
    """Start a gloo process group when torchrun's ``WORLD_SIZE`` asks for more than one process and none is
    running: whether one was started here (to destroy it at the end), or None after printing why it cannot be."""
    import torch.distributed as dist

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        print(
            f"tensortrain: error: WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}",
            file=sys.stderr,
        )
        return None
    if world <= 1 or dist.is_initialized():
        return False
    try:
        dist.init_process_group("gloo")  # torchrun sets MASTER_ADDR/PORT, RANK, WORLD_SIZE
    except (ValueError, RuntimeError) as err:  # e.g. WORLD_SIZE set by hand without RANK / MASTER_ADDR
        print(
            f"tensortrain: error: WORLD_SIZE={world} but the process group cannot start (run under torchrun): "
            f"{err}",
            file=sys.stderr,
        )
        return None
    return True


def _rank0_log(rank: int) -> Callable[[str], None]:
    """A line printer for the demo: rank 0 only, and silent from the first broken pipe on."""
    piped = [True]  # stdout still has a reader

    def log(line: str) -> None:
        if rank == 0 and piped[0]:
            try:
                print(line, flush=True)
            except BrokenPipeError:  # (demo ... | head): the training goes on and its files are still written
                piped[0] = False
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    return log


def _not_compared() -> str:
    """What a shortened run says of the tutorial's targets (they apply to the full recipe only)."""
    from .demo_config import TARGETS

    wanted = ", ".join(f"{k} >= {100 * v:.1f}%" for k, v in TARGETS.items())
    return f"targets ({wanted}) apply to the tutorial's full run (the default options): not compared"


def _report_seeds(runs: dict[int, list[StageResult]], cfg: DemoConfig, log: Callable[[str], None]) -> None:
    from .demo_config import TARGETS, is_tutorial
    from .demo_seeds import format_seeds_table, summarize_seeds

    tutorial = is_tutorial(cfg)
    summary = summarize_seeds(runs, TARGETS if tutorial else None)
    log(format_seeds_table(summary))
    if not tutorial:
        log(_not_compared())
        return
    for s in summary:
        if s["target"] is not None:
            log(
                f"target {s['stage']}: met by {s['runs_meeting_target']} of {len(runs)} runs "
                f"(>= {100 * s['target']:.1f}%; mean {100 * s['mean']:.2f}%)"
            )


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A library warning as one line for a command-line user (no source path, no code line)."""
    print(f"tensortrain: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensortrain`` console script; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when the command failed (message on stderr), 2 for usage errors.

    Example:
        >>> main(["demo", "mnist", "--data", "../shared/data/mnist", "--out", "out/demo"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    # kill, timeout and schedulers send SIGTERM: without a handler Python dies at once and a download's partial
    # file stays in the cache; as an exception, cleanups run (signal handlers can only be set in the main thread)
    # (a signal already ignored stays so: nohup ignores SIGHUP, and a closed terminal must not stop the run)
    handled = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    main_thread = threading.current_thread() is threading.main_thread()
    handled = [s for s in handled if main_thread and signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, _terminate) for s in handled}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.run(args))
    except KeyboardInterrupt:  # files are safe (every write is atomic): no traceback for a Ctrl-C
        print("tensortrain: interrupted", file=sys.stderr)
        return 130
    except _Terminated as sig:
        signum = int(sig.args[0])
        print(f"tensortrain: terminated ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        # the reader went away (``tensortrain inspect --json ... | head``): stop quietly, as the docs of Python's
        # signal module advise, and keep the interpreter's final flush from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":  # ``python -m tensortrain.cli``, e.g. under torchrun
    sys.exit(main())
