"""Running a contraction program, and timing candidate programs to pick the fastest (the ``"tune"`` strategy).

:func:`run` executes a program (``contraction.cost.Program``) on a batch: the full plan through
``contraction.full_plan.full_linear``, sweeps through ``contraction.sweeps.sweep`` (in cache-sized chunks of rows
for large inference batches) or, in training, ``contraction.training_sweep.sweep_trained``; with a layer's cache
of merged groups when it has one.

:func:`tune` serves ``strategy="tune"``: the cost model's CPU constants were set on a 2-core AMD EPYC (its
per-call overhead measured on a 2-core Intel Xeon), and on another machine (or a GPU, where they are a guess) its
cheapest plan can run well behind the fastest. For each plan cache key (core shapes, batch-size bucket, dtype,
device, grad mode, memory bound) it times the candidates the cost model weighs on synthetic operands of those
shapes (forward, or forward and backward when training) and keeps the fastest, as
``torch.backends.cudnn.benchmark`` does for convolutions. On the 2-core EPYC of the benchmarks, the fastest of
these candidates was within 1.01x (geometric mean over 72 cases) of the fastest of 7-12 timed plans, where the
cost model's choice was within 1.06x and up to 2.3x off (``benchmarks/calibrate.py``).

Private: :mod:`tensortrain.contraction` is the public namespace.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from .._transforms import valueless
from . import cost as _cost
from . import full_plan as _full
from . import machine as _machine
from . import search as _search
from . import sweeps as _exec
from . import training_sweep as _train
from .checks import dims_of
from .layer_cache import cached_halves, cached_supers
from .plan_cache import chunk_rows
from .plans import Groups, Program

__all__: list[str] = []


# ------------------------------------------------------------------------------------------------ running
def run(
    prog: Program,
    x2d: torch.Tensor,
    cores: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    grad: bool,
    cache: dict | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``x2d @ W^T + bias`` by ``prog``: the full plan fuses the bias into its GEMM, sweeps add it after (in
    place when ``inplace``: no autograd, no transform)."""
    kind, direction, groups = prog
    if kind == "full":
        split = groups[0][1]
        parts = None if cache is None else cached_halves(cache, cores, split)
        return _full.full_linear(x2d, cores, split, direction == "keep", bias, parts)
    y = _sweep(x2d, cores, groups, str(direction), grad, cache, kind == "resweep")
    # under autocast y is in the lower precision, as nn.Linear's output is: add the bias in that dtype
    if bias is None:
        return y
    b = bias if bias.dtype == y.dtype else bias.to(y.dtype)
    # y is the sweep's own fresh output: adding in place spares a second output-sized tensor (2x the inference
    # peak, and up to 1.6x the time on wide outputs such as a 768 -> 30522 head)
    return y.add_(b) if inplace else y + b


def _sweep(
    x2d: torch.Tensor,
    cores: Sequence[torch.Tensor],
    groups: Groups,
    direction: str,
    grad: bool,
    cache: dict | None,
    recompute: bool = False,
) -> torch.Tensor:
    chunk = None
    b = x2d.shape[0]
    eager = not torch.compiler.is_compiling()
    if not grad and type(b) is int and b > 1 and eager:
        # inference: large batches run in chunks of rows so that the sweep's states stay in cache (training
        # keeps every state for backward anyway, and compiled graphs keep their batch symbolic)
        rows = chunk_rows(cores, groups, direction)
        chunk = rows[0] if b > rows[1] else None  # (rows per chunk, the largest batch that runs whole)
    if grad and eager and type(b) is int and (recompute or b >= _machine.SWEEP_FUNCTION_MIN_BATCH):
        # training: a hand-written backward without matmul's folding copies (not at tiny batches, where the
        # Function's own overhead is the larger cost), which can also recompute the step inputs. Eager only: under
        # dynamo a SymInt passes ``type(b) is int`` and the comparison would guard the batch (a second graph, a
        # failed strict export)
        return _train.sweep_trained(x2d, _exec.supers_of(cores, groups, direction), direction, recompute)
    if cache is None:
        return _exec.sweep(x2d, _exec.supers_of(cores, groups, direction), direction, chunk)
    return _exec.sweep(x2d, cached_supers(cache, cores, groups, direction), direction, chunk)


# ------------------------------------------------------------------------------------------------- tuning
# Candidates whose estimated time is more than TUNE_WITHIN times the best estimate are not timed: on the 2-core
# EPYC the fastest measured candidate was never estimated above 1.26x the best estimate (benchmarks/calibrate.py,
# two runs of 72 cases), so 3x leaves room for machines the constants fit worse.
TUNE_WITHIN = 3.0
# Each candidate is timed in up to TUNE_ROUNDS interleaved rounds (a median), each timed call right after an
# untimed one of the same candidate (a call timed after another plan's starts with that plan's data in cache);
# after the first round a candidate slower than TUNE_DROP times the fastest is dropped, and rounds stop once
# TUNE_BUDGET_S seconds have gone by.
TUNE_ROUNDS = 5
TUNE_DROP = 2.0
TUNE_BUDGET_S = 1.0


def _sync(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued kernels (a no-op on the CPU), so that a timing covers the work itself."""
    mod = getattr(torch, device.type, None)
    synchronize = getattr(mod, "synchronize", None) if device.type != "cpu" else None
    if synchronize is None:
        return lambda: None
    try:  # (torch.cuda's and torch.xpu's take the device; torch.mps's takes nothing: there is one)
        takes_device = bool(inspect.signature(synchronize).parameters)
    except (TypeError, ValueError):  # no signature to read
        takes_device = True
    return (lambda: synchronize(device)) if takes_device else synchronize


def tunable(t: torch.Tensor) -> bool:
    """Whether calls on ``t``'s device may be timed now: not on meta or fake tensors (no data: a fake "timing"
    would be cached for the real device), nor while a CUDA graph is captured (a synchronize would break the
    capture)."""
    return not valueless(t)


def candidates(
    dims: _cost.Dims,
    batch: int,
    item: int,
    device_type: str,
    grad: bool,
    cached: bool,
    max_saved: int | None,
    need: _cost.Need,
) -> list[Program]:
    """The programs :func:`tune` times: the cost model's choice first, then the other ``"auto"`` candidates (every
    full split, the best grouping each way) that keep at most ``max_saved`` bytes and whose estimate is within
    TUNE_WITHIN of the best one."""
    m = _machine.machine(device_type, item)
    model = _search.choose(dims, "auto", batch, item, device_type, grad, cached, max_saved, need)
    costs = [
        (p, _cost.estimate(dims, p, batch, item, grad, m, cached, need))
        for p in _search.candidates(dims, "auto", batch, item, grad, m, cached, need)
    ]
    if grad and max_saved is not None:
        costs = [(p, c) for p, c in costs if c.saved_bytes <= max_saved]
    best = min((c.seconds for _, c in costs), default=0.0)
    rest = [p for p, c in costs if c.seconds <= TUNE_WITHIN * best and p != model]
    return [model, *dict.fromkeys(rest)]


def tune(
    cores: Sequence[torch.Tensor],
    batch: int,
    grad: bool,
    cached: bool,
    max_saved: int | None,
    need: _cost.Need,
) -> Program:
    """The fastest of :func:`candidates`, timed on this machine with ``batch`` rows of synthetic input (the
    call's own batch size, not its bucket's: the operands then take no more memory than the call's).

    The operands are random (a private generator: the global RNG is untouched) with the cores' shapes, dtype and
    device; training candidates run forward and backward on detached aliases of the cores (``torch.autograd.grad``:
    no ``.grad`` is written, no hook of the real parameters fires), inference ones under ``no_grad`` with a cache
    of merged groups when the layer keeps one (``cached``). A candidate that runs out of memory is skipped; with
    no memory for the synthetic operands the cost model's choice is kept untimed.
    """
    c0 = cores[0]
    dims = dims_of(cores)
    progs = candidates(dims, batch, c0.element_size(), c0.device.type, grad, cached, max_saved, need)
    if len(progs) == 1:
        return progs[0]
    # training candidates run backward, which inference mode records nothing for (plan(requires_grad=True) called
    # inside torch.inference_mode): their operands are made, and they run, outside it
    with torch.inference_mode(False) if grad else contextlib.nullcontext():
        try:
            calls = _calls(progs, cores, batch, grad, cached, need)
        except RuntimeError as e:
            if not _out_of_memory(e):
                raise
            # no room for the synthetic operands (beside the call's own, or for plan()'s hypothetical batch): the
            # cost model's choice, as without tuning
            return progs[0]
        times = _measure(calls, _sync(c0.device))
    fastest = min(times.values())
    return next(p for p in progs if times.get(p) == fastest)  # (ties: the cost model's order)


def _calls(
    progs: list[Program],
    cores: Sequence[torch.Tensor],
    batch: int,
    grad: bool,
    cached: bool,
    need: _cost.Need,
) -> dict[Program, Callable[[], None]]:
    """One call per program on shared synthetic operands (a bias included): forward (+ backward when ``grad``)."""
    c0 = cores[0]
    dims = dims_of(cores)
    rows, cols = _cost.prod(dims[0]), _cost.prod(dims[1])
    gen = torch.Generator(device=c0.device).manual_seed(0)
    x = torch.randn((batch, cols), generator=gen, dtype=c0.dtype, device=c0.device)
    # with a bias, as layers have one: the full plan fuses it into its GEMM, sweeps add it (a pass over the output,
    # which for wide outputs such as a 30522-word head is not small)
    bias = torch.zeros(rows, dtype=c0.dtype, device=c0.device)
    # detached aliases (an inference-mode core is cloned: views of it would drop out of autograd)
    aliases = [c.clone() if c.is_inference() else c.detach() for c in cores]
    if not grad:
        caches: dict[Program, dict | None] = {p: {} if cached else None for p in progs}
        # as Parameters (sharing the cores' storage): the layer cache keeps merges only of a layer's own
        # Parameters, and a layer's inference candidates are to be timed with their kept merges
        aliases = [torch.nn.Parameter(a, requires_grad=False) for a in aliases]

        def infer(p: Program) -> None:
            with torch.no_grad():
                run(p, x, aliases, bias, False, caches[p], inplace=True)

        return {p: functools.partial(infer, p) for p in progs}
    x.requires_grad_(need[0])
    for a in aliases:
        a.requires_grad_(need[1])
    inputs = ([x] if need[0] else []) + (aliases if need[1] else [])
    gy = torch.randn((batch, rows), generator=gen, dtype=c0.dtype, device=c0.device)

    def train(p: Program) -> None:
        # identity saved-tensor hooks shadow any the caller has on (activation checkpointing's would take these
        # synthetic tensors for its own and rerun the caller's function to unpack them)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
            torch.autograd.grad(run(p, x, aliases, bias, True), inputs, gy)

    return {p: functools.partial(train, p) for p in progs}


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _out_of_memory(e: RuntimeError) -> bool:
    """A device allocator's out-of-memory error, or the CPU allocator's (a plain RuntimeError)."""
    return isinstance(e, _OOM) or "can't allocate memory" in str(e)


def _measure(calls: dict[Program, Callable[[], None]], sync: Callable[[], None]) -> dict[Program, float]:
    """Median seconds per call of each candidate (see TUNE_ROUNDS); one that runs out of memory is left out."""
    live: dict[Program, Callable[[], None]] = {}
    for p, f in calls.items():  # warm-up: one-time costs (scratch buffers, caches of merged groups)
        try:
            f()
            live[p] = f
        except RuntimeError as e:
            if not _out_of_memory(e):
                raise
    if not live:  # (the cost model's choice runs as it would have without tuning)
        return {next(iter(calls)): 0.0}
    times: dict[Program, list[float]] = {p: [] for p in live}
    start = time.perf_counter()
    for rnd in range(TUNE_ROUNDS):
        for p, f in live.items():
            f()
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[p].append(time.perf_counter() - t0)
        if rnd == 0:
            fastest = min(t[0] for t in times.values())
            live = {p: f for p, f in live.items() if times[p][0] <= TUNE_DROP * fastest}
        if time.perf_counter() - start > TUNE_BUDGET_S:
            break
    return {p: statistics.median(t) for p, t in times.items()}
