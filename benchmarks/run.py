"""tensortrain speed and memory benchmarks: TTLinear vs nn.Linear (and peers when installed), stacks of layers trained
with and without a memory bound, TT-SVD, rounding, flat_inner / frobenius_norm, the MNIST demo's seconds per epoch.

Everything runs side by side in one process with a fixed thread count; times are medians over interleaved
repeats after warm-up (the implementations of one case take turns, so load spikes hit all of them alike), and
the table reports ratios measured that way. Never part of the test suite.

Layers are timed warm: each timed call comes right after an untimed call of the same layer, so every layer is
measured in the steady state of back-to-back calls, whatever ran before it. Timed cold instead (``--cold``: each
call right after the previous layer's), a layer's time depends on its place in the turn: a small layer called
right after the dense 4096x4096 one finds its data evicted from cache, and the peers, which follow other small
layers, do not (torchTT's batch-1 training step measured 1.86 ms after our layer and 2.07 ms after the dense one,
ours 2.16 ms after the dense one and 1.29 ms after torchTT's).

    .venv/bin/python benchmarks/run.py --threads 2 --json benchmarks/results.json
    .venv/bin/python benchmarks/run.py --quick          # a smaller, faster selection
    .venv/bin/python benchmarks/run.py --sections floors  # FLOP counts only, no timing: plan vs best order

The "floors" section and the layer table's "(floor X)" give the fewest forward FLOPs of any order of pairwise
contractions (``tt.contraction.flop_floor``, an exhaustive search): where that exceeds the dense product's, no
plan can match ``nn.Linear`` by FLOPs, whatever the executor.

Memory of a training step is measured two ways. "Kept for bwd": the bytes autograd keeps for backward (every
tensor packed by ``torch.autograd.graph.saved_tensors_hooks`` during the forward pass, deduplicated by storage,
the input and the parameters excluded). "Peak": the most memory allocated at once during a whole step (forward
and backward) above what was in use when it started, from ``torch.profiler``'s allocation records,
plus for TT the scratch that ``tt.workspace`` holds between steps (a step reuses it rather than allocating it).
``tracemalloc`` does not see torch's CPU allocator, and ``ru_maxrss`` only moves when a process-wide high-water
mark moves.

Where a layer's training plan keeps more for backward than the dense weight's bytes, the same layer with
``max_saved_bytes`` set to those bytes is timed in the same turns ("bounded"): the price of that memory bound.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tensortrain as tt
from tensortrain import contraction
from tensortrain.nn import functional as F

# (name, in_features, out_features, in_dims, out_dims, rank): the cases of the issue (t3f tutorial's layer, a
# 4096 square layer, a transformer MLP's up-projection).
LAYER_CASES = [
    ("784x625-r4", 784, 625, (4, 7, 4, 7), (5, 5, 5, 5), 4),
    ("784x625-r16", 784, 625, (4, 7, 4, 7), (5, 5, 5, 5), 16),
    ("4096x4096-r16", 4096, 4096, (8, 8, 8, 8), (8, 8, 8, 8), 16),
    ("4096x4096-r64", 4096, 4096, (8, 8, 8, 8), (8, 8, 8, 8), 64),
    ("768x3072-r16", 768, 3072, (4, 4, 6, 8), (4, 8, 8, 12), 16),
    ("768x3072-r64", 768, 3072, (4, 4, 6, 8), (4, 8, 8, 12), 64),
]
BATCHES = (1, 64, 1024)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else what ``platform`` knows): hosts differ between runs."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it (None outside a git checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here, capture_output=True).returncode != 0
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------------------------- timing
def settle_allocator() -> None:
    """Allocate, touch and free a 16 MiB buffer once, before anything is timed.

    glibc serves large blocks with fresh mmaps until a freed one raises its dynamic mmap threshold. Before that
    the first rows paid page faults that later rows did not: ``nn.Linear(784, 625)``'s training step at batch 1
    took 446 minor faults per call (its 1.9 MiB weight gradient mapped anew each time) in the first row and 0
    in the next, 0.79 ms against 0.136 ms, which made the first row's TT ratios look 5x better than they are.
    (16 MiB: glibc raises the threshold only for frees up to 32 MiB.)"""
    buf = torch.empty(16 << 18, dtype=torch.float32)
    buf.fill_(1.0)
    del buf


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 2,
    budget_s: float = 20.0,
    droppable: tuple[str, ...] = (),
    slow_s: float = 0.5,
    warm_each: bool = False,
    min_repeats: int = 7,
    shuffled: bool = False,
) -> dict:
    """Median seconds per call of each fn, the fns taking turns in every repeat: ``repeats`` of them, or as many
    as ``budget_s`` allows but at least ``min_repeats`` (the ratios near a target need more than three).

    A ``droppable`` fn (a peer) whose warm-up call takes over ``slow_s`` and over twice the slowest other fn's
    is timed once (a second call, after the first's one-time setup) instead of holding up every repeat;
    ``"_once"`` lists those, ``"_n"`` is the repeats the others got. (A peer within 2x of the layers it is
    compared with gets medians like them: a single call against their medians decided cells within 10%.)
    ``warm_each``: call each fn once, untimed, right before its timed call,
    so that no timing starts with caches a bigger fn just filled (plans of one layer differ in footprint by
    100x: interleaved cold, a 1.4 ms batch-1 sweep timed at 8 ms after a full plan's 64 MiB W).
    ``shuffled``: the repeats go through every order of the fns in turn (all permutations, themselves in a
    seeded random order; a fresh random order each repeat past 6 fns), for A/B tools: in a fixed order one fn is
    always timed right after the same other, and the slot after ``nn.Linear`` read 1.03-1.27x an identical
    copy's time elsewhere (2-core Xeon), which favoured whichever side came later.
    """
    once: dict[str, float] = {}
    slowest = 0.0  # the slowest warm-up call of the fns that are always timed (warmed up first)
    for k, f in sorted(fns.items(), key=lambda kv: kv[0] in droppable):
        for _ in range(warmup):
            t0 = time.perf_counter()
            f()
            took = time.perf_counter() - t0
            if k not in droppable:
                slowest = max(slowest, took)
            elif took > max(slow_s, 2 * slowest):
                t0 = time.perf_counter()  # (the first call paid the one-time setup)
                f()
                once[k] = time.perf_counter() - t0
                break
    fns = {k: f for k, f in fns.items() if k not in once}
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rng = random.Random(0)
    keys = list(fns)
    orders = list(itertools.permutations(keys)) if shuffled and len(keys) <= 6 else []
    rng.shuffle(orders)
    for rep in range(repeats):
        if orders:
            keys = list(orders[rep % len(orders)])
        elif shuffled:
            rng.shuffle(keys)
        for k in keys:
            f = fns[k]
            if warm_each:
                f()
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        if rep + 1 >= min_repeats and time.perf_counter() - start > budget_s:  # huge cases: fewer repeats
            break
    n = len(next(iter(times.values()))) if times else 0
    return {k: statistics.median(v) for k, v in times.items()} | once | {"_n": n, "_once": sorted(once)}


def write_json(path: str, obj: Any) -> None:
    """``obj`` as JSON at ``path``, written whole or not at all: a failed write leaves a previous file as it was."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def train_step(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One training step's gradients (of ``m(x).sum()``), as a loop with ``optimizer.zero_grad()`` (gradients set
    to None) computes them: fresh tensors for ``x`` (when it requires one) and every trained parameter, nothing
    added into ``.grad``. Repeating ``.backward()`` instead adds each step's gradients into the previous ones, an
    extra pass of the dense weight's size that made ``nn.Linear``'s steps up to 1.6x slower (4096 x 4096 at batch
    1) while TT layers only add into their small cores."""
    params = [p for p in m.parameters() if p.requires_grad]
    inputs = ([x] if x.requires_grad else []) + params
    return torch.autograd.grad(m(x).sum(), inputs)


def saved_bytes(step: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward during ``step()`` (deduplicated storages, ``exclude`` left out)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = step()
    del y  # (the graph and what it keeps go with it; nothing is added into .grad)
    return sum(seen.values())


def peak_bytes(step: Callable[[], Any]) -> int:
    """Most bytes allocated at once during ``step()`` above the start, from torch.profiler's allocation records.

    Each allocation and free is one ``[memory]`` record of the profiler's raw (Kineto) events, so memory that
    lives only inside an op, including a Python autograd Function's backward, counts. (Summing each op's net
    ``self_cpu_memory_usage`` at its start missed those: a recomputing sweep's backward state read as 0.4 MiB
    where allocation records, and glibc's own counters sampled during the step, give 6 MiB.)
    """
    from torch.profiler import ProfilerActivity, profile

    step()  # warm: plan caches, the inference cache, lazily created gradients
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    cur = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def tt_peak_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """:func:`peak_bytes` of a module's training step plus the scratch it keeps in ``tt.workspace`` (TT layers)."""
    tt.workspace.empty_cache()  # what is held afterwards is this module's own scratch
    return peak_bytes(lambda: train_step(layer, x)) + tt.workspace.held_bytes()


# ---------------------------------------------------------------------------------------------- peers
def failure(e: Exception, where: str = "") -> str:
    """A peer's failure as its table note (the first 120 characters)."""
    return f"error{where}: {type(e).__name__}: {e}"[:120]


def peer_layers(
    in_dims: tuple, out_dims: tuple, ranks: tuple[int, ...]
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Peers' TT layers for one case at the TT layer's own ranks (``ranks``: all ``d + 1``, the nominal rank clipped
    where the modes cannot use it, as ``TTLinear`` clips it), or a note saying why not."""
    layers: dict[str, nn.Module] = {}
    notes: dict[str, str] = {}
    # both of tensorly-torch's forwards: contracting the factors with the input, and building the dense weight from
    # them (what TTLinear's full plan does where that is cheaper); a row's best peer is the faster of all. Each is
    # built on its own, so that one failing leaves the other timed and a note under its own key (a note under a
    # timed key is not shown)
    try:
        import tltorch
    except ImportError:
        notes["tltorch"] = "skipped: not installed"
    except Exception as e:  # a peer's own failure is a result, not a crash
        notes["tltorch"] = failure(e)
    else:
        for impl, key in (("factorized", "tltorch"), ("reconstructed", "tltorch-rec")):
            try:
                layers[key] = tltorch.FactorizedLinear(
                    in_dims, out_dims, factorization="blocktt", rank=list(ranks), implementation=impl
                )
            except Exception as e:
                notes[key] = failure(e)
    try:
        import torchtt

        layer = torchtt.nn.LinearLayerTT(list(in_dims), list(out_dims), list(ranks))

        class _Flat(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return layer(x.reshape(x.shape[0], *in_dims)).reshape(x.shape[0], -1)

        flat = _Flat()
        flat.inner = layer  # register parameters
        layers["torchtt"] = flat
    except ImportError:
        notes["torchtt"] = "skipped: not installed"
    except Exception as e:
        notes["torchtt"] = failure(e)
    try:
        import t3f  # noqa: F401  (TensorFlow; never in this venv by default)

        notes["t3f"] = "skipped: t3f needs TensorFlow, not compared in-process with torch"
    except ImportError:
        notes["t3f"] = "skipped: not installed"
    return layers, notes


# --------------------------------------------------------------------------------------------- layers
def working_peers(
    others: dict[str, nn.Module], x: torch.Tensor, xg: torch.Tensor, notes: dict[str, str]
) -> dict[str, nn.Module]:
    """The peers whose forward and training step run at this batch; the others get a note (a peer that built but
    failed when called aborted the whole run, and the results of every row before it were lost)."""
    ok = {}
    for key, m in others.items():
        try:
            with torch.no_grad():
                m(x)
            train_step(m, xg)
            ok[key] = m
        except Exception as e:  # a peer's own failure is a result, not a crash
            notes[key] = failure(e, f" at batch {x.shape[0]}")
    return ok


def bench_layers(cases: list, batches: tuple, repeats: int, peers: bool, cold: bool = False) -> list[dict]:
    rows = []
    for name, fin, fout, in_dims, out_dims, rank in cases:
        torch.manual_seed(0)
        dense = nn.Linear(fin, fout)
        ttl = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
        others, notes = peer_layers(in_dims, out_dims, ttl.weight.tt_ranks) if peers else ({}, {})
        bounded = copy.deepcopy(ttl)
        bounded.max_saved_bytes = fin * fout * 4  # what the dense weight takes (float32)
        for b in batches:
            x = torch.randn(b, fin)
            xg = x.clone().requires_grad_(True)
            row_notes = dict(notes)  # (the peers' construction notes, and this batch's failures)
            live = working_peers(others, x, xg, row_notes)
            mods: dict[str, nn.Module] = {"dense": dense, "tt": ttl, **live}
            row: dict[str, Any] = {"case": name, "batch": b, "in": fin, "out": fout, "rank": rank}
            with torch.no_grad():
                fwd = interleaved(
                    {k: (lambda m=m, x=x: m(x)) for k, m in mods.items()},
                    repeats,
                    droppable=tuple(others),
                    warm_each=not cold,
                )
            p_inf = ttl.plan(b, requires_grad=False)
            p_tr = ttl.plan(b, requires_grad=True)
            p_bd = bounded.plan(b, requires_grad=True)
            trained = dict(mods) | ({"bounded": bounded} if p_bd.program != p_tr.program else {})
            fb = interleaved(
                {k: (lambda m=m, x=xg: train_step(m, x)) for k, m in trained.items()},
                repeats,
                droppable=tuple(others),
                warm_each=not cold,
            )
            dense_f = 2 * b * fin * fout
            row.update(
                {
                    "plan_forward": p_inf.describe(),
                    "plan_training": p_tr.describe(),
                    "plan_flops_forward": p_inf.flops_forward,
                    # the fewest FLOPs of any contraction order (from the cores, merges counted)
                    "flop_floor_forward": contraction.flop_floor(ttl.weight, b),
                    "plan_flops_training": p_tr.flops_forward + p_tr.flops_backward,
                    "dense_flops_forward": dense_f,
                    "repeats": fwd["_n"],
                    "repeats_fwdbwd": fb["_n"],
                    "timed_once": {"fwd": fwd["_once"], "fwdbwd": fb["_once"]},
                    "fwd_s": {k: fwd[k] for k in mods},
                    "fwdbwd_s": {k: fb[k] for k in mods},
                    "gflops_fwd": {
                        "tt": p_inf.flops_forward / fwd["tt"] / 1e9,
                        "dense": dense_f / fwd["dense"] / 1e9,
                    },
                    "gflops_fwdbwd": {
                        "tt": (p_tr.flops_forward + p_tr.flops_backward) / fb["tt"] / 1e9,
                        "dense": 3 * dense_f / fb["dense"] / 1e9,
                    },
                    "saved_bytes": {
                        k: saved_bytes(lambda m=m, x=xg: m(x), [xg, *m.parameters()]) for k, m in mods.items()
                    },
                    "peak_bytes": {
                        "tt": tt_peak_bytes(ttl, xg),
                        "dense": peak_bytes(lambda m=dense, x=xg: train_step(m, x)),
                    },
                    "params": {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()},
                    "peer_notes": row_notes,
                }
            )
            if "bounded" in trained:
                row["bounded"] = {
                    "max_saved_bytes": bounded.max_saved_bytes,
                    "plan_training": p_bd.describe(),
                    "fwdbwd_s": fb["bounded"],
                    "saved_bytes": saved_bytes(lambda m=bounded, x=xg: m(x), [xg, *bounded.parameters()]),
                    "peak_bytes": tt_peak_bytes(bounded, xg),
                }
            rows.append(row)
            print(_layer_line(row), flush=True)
    return rows


# (in = out features, dims, rank): stacks of STACK_DEPTH such layers with ReLUs, trained at STACK_BATCHES
STACK_CASES = [(784, (4, 7, 4, 7), 4), (1024, (4, 4, 8, 8), 8)]
STACK_DEPTH = 6
STACK_BATCHES = (1024, 4096)


def _stack_plan(stack: nn.Sequential, batch: int) -> str:
    """The training plan of a stack's inner layers, and its first layer's where that differs (the stack's input
    needs no gradient, so the first layer's backward computes none for it)."""
    first = stack[0].plan(batch, requires_grad=True, input_requires_grad=False).describe()
    inner = stack[2].plan(batch, requires_grad=True).describe()
    return inner if first == inner else f"{inner} (first layer: {first})"


def bench_stack(repeats: int) -> list[dict]:
    """Training steps of a stack of TT layers, free and with ``max_saved_bytes`` = each dense weight's bytes,
    against the same stack of ``nn.Linear``: what a memory bound saves where kept activations add up."""
    rows = []
    for n, dims, rank in STACK_CASES:
        torch.manual_seed(0)
        free = nn.Sequential(
            *[
                m
                for _ in range(STACK_DEPTH)
                for m in (tt.nn.TTLinear(n, n, tt_rank=rank, in_dims=dims, out_dims=dims), nn.ReLU())
            ]
        )
        bounded = copy.deepcopy(free)
        for m in bounded.modules():
            if isinstance(m, tt.nn.TTLinear):
                m.max_saved_bytes = n * n * 4
        dense = nn.Sequential(*[m for _ in range(STACK_DEPTH) for m in (nn.Linear(n, n), nn.ReLU())])
        mods: dict[str, nn.Module] = {"free": free, "bounded": bounded, "dense": dense}
        for b in STACK_BATCHES:
            x = torch.randn(b, n)
            t = interleaved(
                {k: (lambda m=m, x=x: train_step(m, x)) for k, m in mods.items()},
                repeats,
                warm_each=True,
            )
            peak = {k: tt_peak_bytes(m, x) for k, m in mods.items()}
            row = {
                "case": f"{STACK_DEPTH} x TTLinear({n}, {n}) r{rank} + ReLU",
                "batch": b,
                "plan_training": {k: _stack_plan(mods[k], b) for k in ("free", "bounded")},
                "fwdbwd_s": {k: t[k] for k in mods},
                "peak_bytes": peak,
            }
            rows.append(row)
            print(
                f"  {row['case']} B={b}: step free {t['free'] * 1e3:.3g} ms / bounded {t['bounded'] * 1e3:.3g} ms / "
                f"dense {t['dense'] * 1e3:.3g} ms",
                flush=True,
            )
    return rows


def _layer_line(r: dict) -> str:
    f, fb = r["fwd_s"], r["fwdbwd_s"]
    return (
        f"  {r['case']} B={r['batch']}: fwd tt {f['tt'] * 1e3:.3g} ms / dense {f['dense'] * 1e3:.3g} ms "
        f"= {f['tt'] / f['dense']:.2f}x; fwd+bwd {fb['tt'] / fb['dense']:.2f}x; plan {r['plan_forward']}"
    )


# ------------------------------------------------------------------------------------ decompositions, algebra
def _rel_err(dense: torch.Tensor, t: Any) -> float:
    return float(torch.linalg.norm(dense - tt.full(t)) / torch.linalg.norm(dense))


def bench_decompositions(quick: bool, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    if quick:
        shape, rank = [[4, 8, 8, 4], [4, 8, 8, 4]], 32
    else:
        shape, rank = [[8, 8, 8, 8], [8, 8, 8, 8]], 64
    m, n = math.prod(shape[0]), math.prod(shape[1])
    # Gaussian noise (the peers' timing case; its best rank-64 error is 0.97, so no result can read above 1.031x
    # the exact one's: the error check cannot fail there) and a matrix with structure, a rank-48 TT-matrix plus
    # half a rank-128 one (exact error about 0.39), where a poor sketch would show
    noise = torch.randn(m, n, generator=g)
    low = tt.full(tt.random_matrix(shape, tt_rank=rank * 3 // 4, generator=g))
    structured = low + 0.5 * tt.full(tt.random_matrix(shape, tt_rank=rank * 2, generator=g))
    out: dict[str, Any] = {}
    # LAPACK's first call, untimed (no draw from g, which makes the cases)
    torch.linalg.svd(noise[:512, :512])
    for key, w in (("to_tt_matrix", noise), ("to_tt_matrix_structured", structured)):
        out[key] = {"shape": shape, "max_tt_rank": rank, "size": f"{m}x{n}"}
        for method in ("exact", "auto", "randomized"):
            # (exact: one call, after none to warm up: 8-10 s a call on two threads)
            reps = 1 if method == "exact" and not quick else min(repeats, 3)
            ts, res = [], None
            for _ in range(reps):
                t0 = time.perf_counter()
                res = tt.to_tt_matrix(w, shape, max_tt_rank=rank, method=method)
                ts.append(time.perf_counter() - t0)
            out[key][method] = {"s": statistics.median(ts), "rel_error": _rel_err(w, res), "n": reps}
        ex = out[key]["exact"]["rel_error"]
        for method in ("auto", "randomized"):
            out[key][method]["error_ratio_vs_exact"] = out[key][method]["rel_error"] / ex
    x = tt.random_matrix([[8, 8, 8, 8], [8, 8, 8, 8]], tt_rank=64, generator=g)
    xd = tt.full(x)
    rounded: dict[str, Any] = {}

    def call(method: str) -> Callable[[], None]:
        def run() -> None:
            rounded[method] = tt.round(x, max_tt_rank=16, method=method)

        return run

    # (both methods in one interleaved call: their 1.00x is a comparison)
    t = interleaved({m: call(m) for m in ("exact", "auto")}, repeats)
    for method in ("exact", "auto"):
        out[f"round_{method}"] = {
            "case": "ttm 8^4x8^4 r64 -> r16",
            "s": t[method],
            "rel_error": _rel_err(xd, rounded[method]),
        }
    return out


def bench_algebra(repeats: int, peers: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    a = tt.random_tensor([16] * 8, tt_rank=32, generator=g)
    b = tt.random_tensor([16] * 8, tt_rank=32, generator=g)
    t = interleaved(
        {"flat_inner": lambda: tt.flat_inner(a, b), "frobenius_norm": lambda: tt.frobenius_norm(a)},
        max(repeats, 20),
    )
    return {
        "case": "16^8 r32",
        "flat_inner_s": t["flat_inner"],
        "frobenius_norm_s": t["frobenius_norm"],
        "small": _bench_small_algebra(max(repeats, 20), peers),
    }


def _bench_small_algebra(repeats: int, with_peers: bool) -> dict:
    """Per-call time of the algebra on small TTs (float64, modes (4,)^6, ranks 4; rounding from rank 8), where
    fixed costs (checks, wrapping, kernel launches) dominate, against torchTT's same operation when installed."""
    g = torch.Generator().manual_seed(2)
    kw = {"generator": g, "dtype": torch.float64}
    a, b = tt.random_tensor([4] * 6, tt_rank=4, **kw), tt.random_tensor([4] * 6, tt_rank=4, **kw)
    a8 = tt.random_tensor([4] * 6, tt_rank=8, **kw)
    m = tt.random_matrix([[4] * 6, [4] * 6], tt_rank=4, **kw)
    ours: dict[str, Callable[[], Any]] = {
        "round r8 -> r4": lambda: tt.round(a8, max_tt_rank=4),
        "round r8, epsilon 1e-2": lambda: tt.round(a8, epsilon=1e-2),
        "add": lambda: tt.add(a, b),
        "multiply (Hadamard)": lambda: tt.multiply(a, b),
        "matmul TT-matrix x TT-matrix": lambda: tt.matmul(m, m),
        "flat_inner": lambda: tt.flat_inner(a, b),
        "frobenius_norm": lambda: tt.frobenius_norm(a),
    }
    peers: dict[str, Callable[[], Any]] = {}
    try:
        if not with_peers:
            raise ImportError  # (--no-peers)
        import torchtt

        pa, pb, pa8, pm = (torchtt.TT(list(x.tt_cores)) for x in (a, b, a8, m))
        peers = {
            "round r8 -> r4": lambda: pa8.round(1e-14, 4),
            "round r8, epsilon 1e-2": lambda: pa8.round(1e-2),
            "add": lambda: pa + pb,
            "multiply (Hadamard)": lambda: pa * pb,
            "matmul TT-matrix x TT-matrix": lambda: pm @ pm,
            "flat_inner": lambda: torchtt.dot(pa, pb),
            "frobenius_norm": lambda: pa.norm(),
        }
    except ImportError:
        pass
    fns = {f"tt|{k}": f for k, f in ours.items()} | {f"torchtt|{k}": f for k, f in peers.items()}
    t = interleaved(fns, repeats)
    return {
        "case": "float64, modes (4,)^6, rank 4 (rounding from rank 8)",
        "ops": {k: {"tt": t[f"tt|{k}"], "torchtt": t.get(f"torchtt|{k}")} for k in ours},
    }


def bench_embedding(repeats: int) -> dict:
    """TTEmbedding against nn.Embedding: a 1M x 128 table at rank 16, 4096 random tokens, lookup and training."""
    torch.manual_seed(0)
    v, d, rank = 1_000_000, 128, 16
    mods = {"dense": nn.Embedding(v, d), "tt": tt.nn.TTEmbedding(v, d, tt_rank=rank)}
    idx = torch.randint(0, v, (32, 128))
    lookups: dict[str, Callable[[], Any]] = {k: (lambda m=m: m(idx)) for k, m in mods.items()}
    # the same lookup without the layer's kept halves (rebuilt on every call, as in training)
    lookups["tt_rebuilt"] = lambda: F._embedding(idx, mods["tt"].weight, None, v, None)
    with torch.no_grad():
        fwd = interleaved(lookups, repeats, warm_each=True)
    # training against both nn.Embedding gradients: dense (the default, a table-sized gradient) and sparse=True
    # (only the looked-up rows), which a large table would use (with a sparse-capable optimizer)
    sparse = nn.Embedding(v, d, sparse=True)
    trained = {**mods, "dense_sparse": sparse}
    fb = interleaved(
        {k: (lambda m=m: train_step(m, idx)) for k, m in trained.items()}, repeats, warm_each=True
    )
    return {
        "case": f"{v}x{d} r{rank}, {idx.numel()} tokens",
        "fwd_s": {k: fwd[k] for k in lookups},
        "fwdbwd_s": {k: fb[k] for k in trained},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()},
    }


def bench_demo(steps: int) -> dict:
    """Seconds per epoch of the MNIST demo's TT net (and the dense net) from timed Adam steps on synthetic data."""
    from tensortrain import demo

    torch.manual_seed(0)
    x = torch.rand(60000, 28, 28)
    y = torch.randint(0, 10, (60000,))
    per_epoch = math.ceil(60000 / 64)
    out: dict[str, Any] = {"steps_timed": steps, "steps_per_epoch": per_epoch, "batch_size": 64}
    for name, model in (("tt_net_r4", demo.tt_net(4)), ("dense_net", demo.dense_net())):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        perm = torch.randperm(60000)

        def step(i: int, model: nn.Module = model, opt: Any = opt, perm: torch.Tensor = perm) -> None:
            idx = perm[(i * 64) % 59968 : (i * 64) % 59968 + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for i in range(10):
            step(i)
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        s = (time.perf_counter() - t0) / steps
        out[name] = {"s_per_step": s, "s_per_epoch": s * per_epoch}
    res = os.path.join("out", "demo", "results.json")
    if os.path.exists(res):
        out["demo_results_json"] = res
    return out


# ------------------------------------------------------------------------------------------------- report
def _peak(r: dict) -> str:
    pk = r.get("peak_bytes")  # absent in results written before this column existed
    return f"{pk['tt'] / 2**20:.3g} / {pk['dense'] / 2**20:.3g}" if pk else "-"


def _n(r: dict, key: str, want: int) -> str:
    """``, n=5`` where a row got fewer repeats than asked for (the time budget of huge cases)."""
    return f", n={r[key]}" if r.get(key, want) < want else ""


def _sparse(b: dict) -> str:
    # (files written before the sparse baseline existed have none)
    if "dense_sparse" not in b:
        return ""
    return f", {b['dense_sparse'] * 1e3:.3g} ms with sparse=True ({b['tt'] / b['dense_sparse']:.2f}x)"


def _rebuilt(f: dict) -> str:
    # (files written before the rebuilt-halves timing existed have none)
    return "" if "tt_rebuilt" not in f else f"; {f['tt_rebuilt'] * 1e3:.3g} ms rebuilding the kept halves"


def markdown(results: dict) -> str:
    lines = [
        f"{results['meta'].get('cpu_model', 'cpu ?')}, "
        f"threads {results['meta']['threads']}, torch {results['meta']['torch']}, "
        f"layers timed {results['meta'].get('layer_timing', 'cold')}, "
        f"load average before/after {results['meta']['load_before']} / {results['meta'].get('load_after')}",
    ]
    if results.get("layers"):
        lines += [
            "",
            "| case | batch | plan (fwd; training) | fwd ms TT / dense (ratio) | fwd+bwd ms TT / dense (ratio) | GFLOP/s TT / dense, fwd; fwd+bwd "
            "| plan GFLOP fwd / dense | kept for bwd MiB TT / dense | peak MiB of a training step TT / dense "
            "| peers fwd, fwd+bwd (ratio to dense) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    want = results["meta"].get("repeats", 0)
    for r in results.get("layers", []):
        f, fb, gf = r["fwd_s"], r["fwdbwd_s"], r["gflops_fwd"]
        gb = r.get("gflops_fwdbwd")  # (the plan's training FLOPs; dense: 3 products)
        train_rate = f"; {gb['tt']:.3g} / {gb['dense']:.3g}" if gb else ""
        peers = []
        once = r.get("timed_once", {})
        for k in f:
            if k not in ("tt", "dense"):
                marks = ["" if k not in once.get(part, ()) else " (timed once)" for part in ("fwd", "fwdbwd")]
                peers.append(f"{k} {f[k] / f['dense']:.2f}x{marks[0]}, {fb[k] / fb['dense']:.2f}x{marks[1]}")
        peers += [f"{k}: {v}" for k, v in r["peer_notes"].items() if k not in f]
        sb = r["saved_bytes"]
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['plan_forward']}; {r['plan_training']} | {f['tt'] * 1e3:.3g} / {f['dense'] * 1e3:.3g} "
            f"(**{f['tt'] / f['dense']:.2f}x**{_n(r, 'repeats', want)}) | {fb['tt'] * 1e3:.3g} / {fb['dense'] * 1e3:.3g} "
            f"(**{fb['tt'] / fb['dense']:.2f}x**{_n(r, 'repeats_fwdbwd', want)}) | {gf['tt']:.3g} / {gf['dense']:.3g}{train_rate} | "
            f"{r['plan_flops_forward'] / 1e9:.3g} / {r['dense_flops_forward'] / 1e9:.3g}{_floor(r)} | "
            f"{sb['tt'] / 2**20:.3g} / {sb['dense'] / 2**20:.3g} | {_peak(r)} | {'; '.join(peers) or '-'} |"
        )
    bounded = [r for r in results.get("layers", []) if "bounded" in r]
    if bounded:
        lines += [
            "",
            "| case | batch | training plan with max_saved_bytes = the dense weight's bytes | fwd+bwd ms bounded / "
            "free / dense | kept for bwd MiB bounded / free | peak MiB bounded / free / dense |",
            "|---|---|---|---|---|---|",
        ]
    for r in bounded:
        bd, fb, sb, pk = r["bounded"], r["fwdbwd_s"], r["saved_bytes"], r["peak_bytes"]
        lines.append(
            f"| {r['case']} | {r['batch']} | {bd['plan_training']} | {bd['fwdbwd_s'] * 1e3:.3g} / "
            f"{fb['tt'] * 1e3:.3g} / {fb['dense'] * 1e3:.3g} ({bd['fwdbwd_s'] / fb['tt']:.2f}x free) | "
            f"{bd['saved_bytes'] / 2**20:.3g} / {sb['tt'] / 2**20:.3g} | "
            f"{bd['peak_bytes'] / 2**20:.3g} / {pk['tt'] / 2**20:.3g} / {pk['dense'] / 2**20:.3g} |"
        )
    if results.get("stack"):
        lines += [
            "",
            "| model | batch | training plan (free; bounded) | training step ms free / bounded / dense | "
            "peak MiB free / bounded / dense |",
            "|---|---|---|---|---|",
        ]
    for r in results.get("stack", []):
        t, pk, pl = r["fwdbwd_s"], r["peak_bytes"], r["plan_training"]
        lines.append(
            f"| {r['case']} | {r['batch']} | {pl['free']}; {pl['bounded']} | {t['free'] * 1e3:.3g} / "
            f"{t['bounded'] * 1e3:.3g} / {t['dense'] * 1e3:.3g} | {pk['free'] / 2**20:.3g} / "
            f"{pk['bounded'] / 2**20:.3g} / {pk['dense'] / 2**20:.3g} |"
        )
    if "decompositions" in results:
        d = results["decompositions"]
        lines += ["", "| decomposition | seconds | rel. error | error / exact's |", "|---|---|---|---|"]
        for key, what in (("to_tt_matrix", "Gaussian"), ("to_tt_matrix_structured", "structured")):
            if key not in d:  # (files written before the structured case existed)
                continue
            tm = d[key]
            for k in ("exact", "auto", "randomized"):
                lines.append(
                    f"| to_tt_matrix {tm['size']} ({what}) r{tm['max_tt_rank']} method={k} | {tm[k]['s']:.3g} | "
                    f"{tm[k]['rel_error']:.6f} | {tm[k].get('error_ratio_vs_exact', 1.0):.4f} |"
                )
        for k in ("round_exact", "round_auto"):
            lines.append(f"| round {d[k]['case']} ({k}) | {d[k]['s']:.3g} | {d[k]['rel_error']:.6f} | |")
    if "algebra" in results:
        a = results["algebra"]
        lines += [
            "",
            f"flat_inner {a['case']}: {a['flat_inner_s'] * 1e3:.3g} ms; "
            f"frobenius_norm {a['case']}: {a['frobenius_norm_s'] * 1e3:.3g} ms",
        ]
        if "small" in a:
            lines += [
                "",
                f"| small TTs: {a['small']['case']} | tensortrain us | torchTT us | ratio |",
                "|---|---|---|---|",
            ]
            for k, v in a["small"]["ops"].items():
                peer = v["torchtt"]
                cells = f"{peer * 1e6:.0f} | {v['tt'] / peer:.2f}x" if peer else "- | -"
                lines.append(f"| {k} | {v['tt'] * 1e6:.0f} | {cells} |")
    if "embedding" in results:
        e = results["embedding"]
        f, b = e["fwd_s"], e["fwdbwd_s"]
        lines += [
            "",
            f"TTEmbedding {e['case']}: lookup {f['tt'] * 1e3:.3g} ms / nn.Embedding {f['dense'] * 1e3:.3g} ms "
            f"({f['tt'] / f['dense']:.1f}x{_rebuilt(f)}); lookup+backward {b['tt'] * 1e3:.3g} ms / {b['dense'] * 1e3:.3g} ms "
            f"({b['tt'] / b['dense']:.2f}x){_sparse(b)}; parameters {e['params']['tt']:,} / {e['params']['dense']:,}",
        ]
    if "floors" in results:
        lines += [
            "",
            "| case | batch | forward plan (uncached) | plan GFLOP / dense | fewest of any order / dense |",
            "|---|---|---|---|---|",
        ]
        for r in results["floors"]:
            dense = r["dense_flops"]
            lines.append(
                f"| {r['case']} | {r['batch']} | {r['plan']} | {r['plan_flops'] / dense:.3f}x | "
                f"{r['floor_flops'] / dense:.3f}x |"
            )
    if "demo" in results:
        dm = results["demo"]
        lines += [
            "",
            f"MNIST demo training (batch 64, Adam, {dm['steps_timed']} timed steps, synthetic data of MNIST's size): "
            f"TT net {dm['tt_net_r4']['s_per_epoch']:.3g} s/epoch, dense net {dm['dense_net']['s_per_epoch']:.3g} s/epoch",
        ]
    return "\n".join(lines)


def _floor(r: dict) -> str:
    """`` (floor X)``: the fewest forward FLOPs of any contraction order, in rows that record it."""
    return f" (floor {r['flop_floor_forward'] / 1e9:.3g})" if "flop_floor_forward" in r else ""


def bench_floors(cases: list, batches: tuple) -> list[dict]:
    """Per case and batch (no timing): the forward FLOPs of the planner's choice (merges counted, as without a
    layer's cache) and the fewest of any contraction order (``tt.contraction.flop_floor``), against dense."""
    rows = []
    for name, fin, fout, in_dims, out_dims, rank in cases:
        w = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims).weight
        for b in batches:
            p = contraction.plan(w, b, requires_grad=False)
            rows.append(
                {
                    "case": name,
                    "batch": b,
                    "plan": p.describe(),
                    "plan_flops": p.flops_forward,
                    "floor_flops": contraction.flop_floor(w, b),
                    "dense_flops": p.dense_flops,
                }
            )
    return rows


SECTIONS = ("layers", "stack", "decompositions", "algebra", "embedding", "demo", "floors")


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (a usage error otherwise, not a traceback from torch or statistics)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="The benchmark suite: TTLinear against nn.Linear and peers, memory-bounded stacks, TT-SVD and "
        "rounding, the algebra, TTEmbedding and the MNIST demo's training speed (see the module docstring)."
    )
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="timed repeats per cell (default 11, the stacks' 7; 5 with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer cases and repeats (a few minutes less)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)",
    )
    ap.add_argument("--no-peers", action="store_true", help="do not time tensorly-torch and torchTT")
    ap.add_argument("--cold", action="store_true", help="time layers cold (see the module docstring)")
    args = ap.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sorted(sections - set(SECTIONS))
    if unknown or not sections:
        ap.error(f"--sections: unknown {unknown or 'none given'}; valid: {', '.join(SECTIONS)}")
    if args.json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        ap.error(f"--json {args.json}: its folder does not exist (checked before the run, not after)")
    torch.set_num_threads(args.threads)
    settle_allocator()
    repeats = args.repeats if args.repeats is not None else 5 if args.quick else 11
    cases = [
        c for c in LAYER_CASES if not args.quick or c[0] in ("784x625-r4", "784x625-r16", "768x3072-r16")
    ]
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                [os.path.basename(sys.executable), sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
            ),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "cpu_model": cpu_model(),
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "repeats": repeats,
            "layer_timing": "cold" if args.cold else "warm",
            "commit": git_commit(),
        }
    }
    contraction.clear_plan_cache()
    if "layers" in sections:
        print("layers (medians of interleaved repeats):", flush=True)
        results["layers"] = bench_layers(cases, BATCHES, repeats, not args.no_peers, args.cold)
    if "stack" in sections:
        print("stacks of layers, memory-bounded training:", flush=True)
        results["stack"] = bench_stack(args.repeats or (5 if args.quick else 7))
    if "decompositions" in sections:
        results["decompositions"] = bench_decompositions(args.quick, repeats)
    if "algebra" in sections:
        results["algebra"] = bench_algebra(repeats, not args.no_peers)
    if "embedding" in sections:
        results["embedding"] = bench_embedding(repeats)
    if "demo" in sections:
        results["demo"] = bench_demo(50 if args.quick else 200)
    if "floors" in sections:
        results["floors"] = bench_floors(cases, BATCHES)
    results["meta"]["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(markdown(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
