"""TTLinear against nn.Linear on a GPU: the layer table's cases, forward and training step, float32 and bfloat16,
with the planner's choice ("auto") and the tuner's ("tune"), and each training step's peak memory.

    python3 benchmarks/gpu.py --json gpu.json                 # on a machine with CUDA
    python3 benchmarks/gpu.py --batches 64,8192 --dtypes float32

Times are medians over interleaved repeats (the layers of one case take turns). One repeat of a layer is a loop of
back-to-back calls between two waits for the GPU, long enough (``--min-ms``) that the wait's own cost is small:
the throughput of a training loop, whose launches overlap the kernels still running. The ratio is TT over dense.
Float32 products run in full float32 (``torch.backends.cuda.matmul.allow_tf32`` off, PyTorch's default), so the
float32 columns compare the same arithmetic. Peak memory: ``torch.cuda.max_memory_allocated`` during one training
step above what was allocated before it. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import LAYER_CASES, positive_int, train_step, write_json  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain.contraction import machine as hw  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_time(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def timed(
    fns: dict[str, Callable[[], Any]], repeats: int, min_ms: float, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each fn, in loops of at least ``min_ms`` milliseconds, taking turns."""
    calls = {}
    for k, f in fns.items():
        for _ in range(3):  # warm-up: plans, autotuning, cuBLAS handles, the allocator's pools
            f()
        once = loop_time(f, 3, device)
        calls[k] = max(1, min(1000, int(min_ms * 1e-3 / max(once, 1e-7))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(loop_time(f, calls[k], device))
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    if device.type != "cuda":  # (a smoke run on the CPU: benchmarks/run.py measures CPU memory)
        return 0
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def graphed_forward(m: nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], Any]:
    """``m(x)`` without grad captured in a CUDA graph (after warm-up on a side stream): its replay."""
    static = x.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            m(static)
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        m(static)
    return g.replay


def graphed_step(m: nn.Module, xg: torch.Tensor) -> Callable[[], Any]:
    """A training step of a copy of ``m`` whose forward and backward replay CUDA graphs
    (``torch.cuda.make_graphed_callables``)."""
    g = torch.cuda.make_graphed_callables(copy.deepcopy(m), (xg.detach().clone().requires_grad_(True),))
    return lambda: train_step(g, xg)


def with_graphs(
    mods: dict[str, nn.Module],
    x: torch.Tensor,
    xg: torch.Tensor,
    repeats: int,
    min_ms: float,
    device: torch.device,
) -> dict[str, Any]:
    """Forward and training-step times of dense and TT under CUDA graphs; a failure is recorded, not raised."""
    out: dict[str, Any] = {}
    for what, make in (
        ("fwd_graph_s", lambda m: graphed_forward(m, x, device)),
        ("train_graph_s", lambda m: graphed_step(m, xg)),
    ):
        try:
            fns = {k: make(mods[k]) for k in ("dense", "tt")}
            out[what] = timed(fns, repeats, min_ms, device)
        except Exception as e:  # (what fails to capture is a finding: report it with the table)
            out[what + "_error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"  {what}: {out[what + '_error']}", flush=True)
    return out


def bench(
    batches: list[int],
    dtypes: list[torch.dtype],
    repeats: int,
    min_ms: float,
    device: torch.device,
    graphs_up_to: int = 0,
) -> list:
    rows = []
    for dtype in dtypes:
        for name, fin, fout, in_dims, out_dims, rank in LAYER_CASES:
            torch.manual_seed(0)
            kw: dict[str, Any] = {"device": device, "dtype": dtype}
            dense = nn.Linear(fin, fout, **kw)
            ttl = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims, **kw)
            tuned = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims, **kw)
            tuned.load_state_dict(ttl.state_dict())
            tuned.strategy = "tune"
            mods = {"dense": dense, "tt": ttl, "tt-tune": tuned}
            for b in batches:
                x = torch.randn(b, fin, **kw)
                xg = x.clone().requires_grad_(True)
                with torch.no_grad():
                    fwd = timed(
                        {k: (lambda m=m, x=x: m(x)) for k, m in mods.items()}, repeats, min_ms, device
                    )
                trn = timed(
                    {k: (lambda m=m, xg=xg: train_step(m, xg)) for k, m in mods.items()},
                    repeats,
                    min_ms,
                    device,
                )
                peak = {k: peak_bytes(lambda m=m, xg=xg: train_step(m, xg), device) for k, m in mods.items()}
                row = {
                    "case": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": b,
                    "plan_forward": ttl.plan(b, requires_grad=False).describe(),
                    "plan_training": ttl.plan(b, requires_grad=True).describe(),
                    "fwd_s": fwd,
                    "train_s": trn,
                    "peak_bytes": peak,
                }
                if b <= graphs_up_to:
                    row |= with_graphs({"dense": dense, "tt": ttl}, x, xg, repeats, min_ms, device)
                rows.append(row)
                print(line(row), flush=True)
    return rows


def line(r: dict) -> str:
    f, t = r["fwd_s"], r["train_s"]
    return (
        f"| {r['case']} | {r['dtype']} | {r['batch']} | {f['dense'] * 1e6:.1f} | {f['tt'] / f['dense']:.2f}x | "
        f"{f['tt-tune'] / f['dense']:.2f}x | {t['dense'] * 1e6:.1f} | {t['tt'] / t['dense']:.2f}x | "
        f"{t['tt-tune'] / t['dense']:.2f}x | {r['peak_bytes']['tt'] / max(r['peak_bytes']['dense'], 1):.2f}x | "
        f"{r['plan_forward']} / {r['plan_training']} |"
        + "".join(
            f" graphs {k[:-7]} {r[k]['tt'] / r[k]['dense']:.2f}x ({r[k]['dense'] * 1e6:.1f} us) |"
            for k in ("fwd_graph_s", "train_graph_s")
            if k in r
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,64,1024,8192")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--min-ms", type=float, default=5.0, help="shortest timed loop, in milliseconds")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--graphs",
        type=int,
        default=0,
        help="also time dense and TT under CUDA graphs at batches up to this one (the launch-bound ones)",
    )
    ap.add_argument(
        "--machine",
        default=None,
        help="a JSON written by calibrate.py: plan with its fitted constants for this device",
    )
    ap.add_argument(
        "--cpu-caches",
        action="store_true",
        help="plan as before 2026-11-30: the CPU's cache cliffs (inference sweeps in chunks of rows, large W built "
        "in blocks, large states priced as DRAM traffic) and 2-byte GEMMs priced as float32's",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.machine:
        with open(args.machine) as f:
            fitted = json.load(f)["fitted"]
        hw.MACHINES[device.type] = hw.MACHINES[device.type]._replace(**fitted)
        print(f"constants from {args.machine}: {hw.MACHINES[device.type]}")
    if args.cpu_caches:
        hw.MACHINES[device.type] = hw.MACHINES[device.type]._replace(cache_cliffs=True, half=1.0)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    batches = [positive_int(b) for b in args.batches.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (a smoke run)"
    torch.backends.cuda.matmul.allow_tf32 = (
        False  # (the default, set: float32 columns compare float32 arithmetic)
    )
    print(
        f"{gpu}, torch {torch.__version__}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}"
        + (", --cpu-caches" if args.cpu_caches else "")
    )
    print(
        "| case | dtype | batch | dense fwd us | TT fwd | tune fwd | dense step us | TT step | tune step | "
        "TT peak / dense | plans (fwd / step) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = bench(batches, dtypes, args.repeats, args.min_ms, device, args.graphs)
    if args.json:
        out = {
            "gpu": gpu,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": rows,
        }
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
