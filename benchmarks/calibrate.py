"""Fit the contraction planner's machine constants to measured plan timings, and report the planner's regret.

The cost model (``tensortrain.contraction.cost``) prices a plan as a linear function of five machine constants:
``seconds = flops / F + streamed bytes / BW + permuted bytes / BW_perm + launches * t_launch + slices * t_slice``.
This script times several candidate plans of every benchmark layer (``benchmarks/run.py``'s cases) at batch
1, 64 and 1024, in the chosen modes (``--modes``: ``infer``, forward without grad; ``train``, forward+backward
with the input and the cores needing gradients; ``first``, a network's first layer, whose input needs none;
``frozen``, cores that need none), fits the constants by non-negative least squares on relative error, and
prints

* the fitted constants next to the ones in ``tensortrain.contraction.machine.MACHINES`` (paste them there to
  adopt them);
* per case, the measured time of the plan the planner picks with the current and with the fitted constants,
  against the fastest plan measured ("regret" = chosen / fastest);
* with ``--tune``, the same for ``strategy="tune"``: the tuner runs once per case (its own timings, after this
  script's) and its choice is scored by this script's timings.

    .venv/bin/python benchmarks/calibrate.py --threads 2 --json benchmarks/calibration.json
    .venv/bin/python benchmarks/calibrate.py --modes first,frozen --search 0
    .venv/bin/python benchmarks/calibrate.py --modes infer,train,first,frozen --tune --search 0
    python3 benchmarks/calibrate.py --device cuda --batches 1,64,1024,8192 --json calibration-cuda.json

On a GPU (``--device cuda``) every timed call ends with ``torch.cuda.synchronize()``, so a time is the call's
launches and kernels together, as a training loop that waits on its loss sees them; the current constants are
``MACHINES["cuda"]``, and the fit starts from those.

Timings are medians of interleaved repeats in one process; the machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (  # noqa: E402
    BATCHES,
    LAYER_CASES,
    interleaved,
    positive_int,
    settle_allocator,
    write_json,
)

import tensortrain as tt  # noqa: E402
from tensortrain import contraction as C  # noqa: E402
from tensortrain.contraction import (
    cost,  # noqa: E402
    search,  # noqa: E402
)
from tensortrain.contraction import machine as hw  # noqa: E402
from tensortrain.contraction import plans as P  # noqa: E402

# the fitted constants, in the order of features(); "half" is the FLOP rate of 2-byte dtypes over float32's
NAMES = ("flops", "half", "stream", "permute", "launch", "slice", "touch")
# mode -> (grad, (input needs a gradient, cores need gradients))
MODES: dict[str, tuple[bool, cost.Need]] = {
    "infer": (False, cost.BOTH),
    "train": (True, cost.BOTH),
    "first": (True, (False, True)),
    "frozen": (True, (True, False)),
}


def features(
    dims: cost.Dims,
    prog: cost.Program,
    batch: int,
    item: int,
    grad: bool,
    need: cost.Need = cost.BOTH,
    device: str = "cpu",
) -> list[float]:
    """The seven coefficients of the cost model's time for ``prog`` (in NAMES' order): one basis machine per
    constant, with the device's cache sizes and narrow folds. FLOPs of 2-byte dtypes go to "half"'s coefficient,
    others to "flops"'s."""
    inf = math.inf
    caches = {"cache_cliffs": hw.cache_cliffs(device), "narrow_fold": hw.narrow_fold(device)}
    basis = [
        hw.Machine(1.0, inf, inf, 0.0, 0.0, inf, **caches),
        hw.Machine(inf, 1.0, inf, 0.0, 0.0, inf, **caches),
        hw.Machine(inf, inf, 1.0, 0.0, 0.0, inf, **caches),
        hw.Machine(inf, inf, inf, 1.0, 0.0, inf, **caches),
        hw.Machine(inf, inf, inf, 0.0, 1.0, inf, **caches),
        hw.Machine(inf, inf, inf, 0.0, 0.0, 1.0, **caches),
    ]
    f = [cost.estimate(dims, prog, batch, item, grad, m, need=need).seconds for m in basis]
    return [0.0 if item == 2 else f[0], f[0] if item == 2 else 0.0, *f[1:]]


def programs(
    dims: cost.Dims, batch: int, item: int, grad: bool, need: cost.Need = cost.BOTH, device: str = "cpu"
) -> list[cost.Program]:
    """The planner's own candidates plus core-by-core and paired sweeps both ways (deduplicated)."""
    d = len(dims[0])
    m = hw.machine(device, item)
    progs = search.candidates(dims, "auto", batch, item, grad, m, need=need)
    for direction in ("rtl", "ltr"):
        progs.append(("sweep", direction, tuple((k, k + 1) for k in range(d))))
        if d >= 4:
            progs.append(("sweep", direction, ((0, d // 2), (d // 2, d))))
    seen: list[cost.Program] = []
    for p in progs:
        if p not in seen:
            seen.append(p)
    return seen


def synced(fn: Any, device: torch.device) -> Any:
    """``fn`` followed by a wait for the device's queue (on a GPU, a host clock around a call that only
    launches kernels would time the launches)."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))


def measure(
    repeats: int,
    slow_s: float,
    modes: list[str],
    tune: bool = False,
    device: torch.device | None = None,
    batches: tuple[int, ...] = BATCHES,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Timed rows, one per (case, batch, mode, program); with ``tune``, the tuner's choice per (case, batch,
    mode). A case in another dtype than float32 is named with it ("784x625-r4-bfloat16")."""
    device = device or torch.device("cpu")
    rows, tuned = [], []
    cases = [
        (name if dtype == torch.float32 else f"{name}-{str(dtype).removeprefix('torch.')}", dtype, *rest)
        for dtype in dtypes
        for name, *rest in LAYER_CASES
    ]
    for name, dtype, fin, fout, in_dims, out_dims, rank in cases:
        torch.manual_seed(0)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        layer = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims, **kw)
        cores = tuple(layer.cores)
        dims = C.dims_of(cores)
        item = cores[0].element_size()
        for batch in batches:
            for mode in modes:
                grad, need = MODES[mode]
                x = torch.randn(batch, fin, requires_grad=grad and need[0], **kw)
                cs = cores if need[1] else tuple(c.detach() for c in cores)
                progs = programs(dims, batch, item, grad, need, device.type)
                fns = {}
                for i, p in enumerate(progs):
                    plan = P.make_plan(dims, p, batch, item, device.type, grad, need=need)
                    if grad:
                        # fresh gradients (as run.train_step): .backward() would add into .grad every call
                        wrt = tuple(t for t in (x, *cs) if t.requires_grad)
                        fn = lambda p=plan, x=x, cs=cs, wrt=wrt: torch.autograd.grad(  # noqa: E731
                            C.linear(x, cs, strategy=p).sum(), wrt
                        )
                    else:
                        fn = lambda p=plan, x=x, cs=cs: C.linear(x, cs, strategy=p)  # noqa: E731
                    fns[str(i)] = synced(fn, device)
                with torch.set_grad_enabled(grad):
                    times = interleaved(fns, repeats, droppable=tuple(fns), slow_s=slow_s, warm_each=True)
                for i, p in enumerate(progs):
                    rows.append(
                        {
                            "case": name,
                            "batch": batch,
                            "grad": grad,
                            "mode": mode,
                            "program": [p[0], p[1], [list(g) for g in p[2]]],
                            "dims": [list(v) for v in dims],
                            "item": item,
                            "describe": P.make_plan(
                                dims, p, batch, item, device.type, grad, need=need
                            ).describe(),
                            "seconds": times[str(i)],
                            "features": features(dims, p, batch, item, grad, need, device.type),
                        }
                    )
                if tune:  # (the tuner times on its own operands; the plan cache keeps its choice per key)
                    with torch.set_grad_enabled(grad):
                        chosen = C.plan(
                            cs,
                            batch,
                            requires_grad=grad,
                            strategy="tune",
                            input_requires_grad=need[0] or not grad,
                            cores_require_grad=need[1] or not grad,
                        )
                    prog = chosen.program
                    entry = {"case": name, "batch": batch, "mode": mode}
                    tuned.append(entry | {"program": [prog[0], prog[1], [list(g) for g in prog[2]]]})
                best = min(times[str(i)] for i in range(len(progs)))
                print(
                    f"  {name} B={batch} {mode}: {len(progs)} plans, fastest {best * 1e3:.3g} ms",
                    flush=True,
                )
    return rows, tuned


def tuned_regret(rows: list[dict[str, Any]], tuned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (case, batch, mode) the tuner chose for: the measured time of its choice over the fastest measured."""
    out = []
    for t in tuned:
        group = [r for r in rows if (r["case"], r["batch"], r["mode"]) == (t["case"], t["batch"], t["mode"])]
        chosen = next(r for r in group if r["program"] == t["program"])
        fastest = min(group, key=lambda r: r["seconds"])
        out.append(
            {k: t[k] for k in ("case", "batch", "mode")}
            | {
                "chosen": chosen["describe"],
                "fastest": fastest["describe"],
                "regret": chosen["seconds"] / fastest["seconds"],
            }
        )
    return out


def refeature(rows: list[dict[str, Any]], device: str = "cpu") -> None:
    """Recompute saved rows' features with the cost model as it is now (timings stay as measured)."""
    dims_of = {}
    for name, fin, fout, in_dims, out_dims, rank in LAYER_CASES:
        layer = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
        dims_of[name] = C.dims_of(tuple(layer.cores))
    for r in rows:
        dims = tuple(tuple(v) for v in r["dims"]) if "dims" in r else dims_of[r["case"]]
        kind, direction, groups = r["program"]
        prog = (kind, direction, tuple(tuple(g) for g in groups))
        # (rows written before modes existed are inference or full training)
        r.setdefault("mode", "train" if r["grad"] else "infer")
        item = r.get("item", 4)
        r["features"] = features(dims, prog, r["batch"], item, r["grad"], MODES[r["mode"]][1], device)  # type: ignore[arg-type]


def nnls_relative(rows: list[dict[str, Any]]) -> list[float]:
    """Non-negative least squares of ``features . theta = seconds`` on relative error (active set)."""
    a = torch.tensor([[f / r["seconds"] for f in r["features"]] for r in rows], dtype=torch.float64)
    b = torch.ones(len(rows), dtype=torch.float64)
    # (no such work timed: the constant stays 0)
    active = [k for k in range(a.shape[1]) if bool(a[:, k].any())]
    while True:
        sol = torch.linalg.lstsq(a[:, active], b[:, None]).solution[:, 0]
        if (sol >= 0).all():
            theta = [0.0] * a.shape[1]
            for k, v in zip(active, sol.tolist(), strict=True):
                theta[k] = v
            return theta
        active.pop(int(torch.argmin(sol)))


def regret_score(rows: list[dict[str, Any]], m: hw.Machine) -> float:
    """Mean log regret plus half the worst one: a bad choice in one case is not averaged away."""
    logs = [math.log(r["regret"]) for r in regret(rows, m)]
    return sum(logs) / len(logs) + 0.5 * max(logs)


def search_regret(rows: list[dict[str, Any]], start: hw.Machine, samples: int, seed: int) -> hw.Machine:
    """Random search in log space around ``start`` for the constants whose choices lose least time.

    The least-squares fit predicts times well on average but the planner only needs the right *order* between
    the candidates of one case; this minimizes the regret over the measured cases directly (:func:`regret_score`;
    ties broken by distance from the fit, so unconstrained constants stay at their fitted values).
    """
    g = torch.Generator().manual_seed(seed)
    best, best_key = start, (regret_score(rows, start), 0.0)
    # "half" moves only where 2-byte rows were timed: without them nothing constrains it (and the draws of the
    # other constants stay those of the searches before it existed)
    half = any(r["features"][NAMES.index("half")] for r in rows)
    names = [n for n in NAMES if n != "half" or half]
    for _ in range(samples):
        step = torch.randn(len(names), generator=g, dtype=torch.float64) * 1.0
        # (only the fitted constants move; full_call, priced apart from the kernels, keeps its value)
        cand = start._replace(
            **{n: getattr(start, n) * math.exp(float(e)) for n, e in zip(names, step, strict=True)}
        )
        key = (regret_score(rows, cand), float(step.abs().sum()))
        if key < best_key:
            best, best_key = cand, key
    return best


def theta_of(m: hw.Machine) -> list[float]:
    """The machine's constants as the coefficients of features() (seconds per unit of each)."""
    return [1 / m.flops, 1 / (m.flops * m.half), 1 / m.stream, 1 / m.permute, m.launch, m.slice, 1 / m.touch]


def to_machine(theta: list[float], device: str = "cpu") -> hw.Machine:
    """The machine whose theta_of() is ``theta``; constants the rows leave unset (0: no such work timed, e.g.
    "half" without 2-byte rows, or a fit that found the work free) keep the device's current values: an infinite
    rate or a zero cost per call is no machine's, and search_regret could not move it (an infinite stream rate
    came out where no row streamed)."""
    cur = hw.MACHINES.get(device, hw.DEFAULT_MACHINE)
    flops = 1.0 / theta[0] if theta[0] > 0 else cur.flops

    def rate(k: int, now: float) -> float:
        return 1.0 / theta[k] if theta[k] > 0 else now

    return cur._replace(
        flops=flops,
        half=rate(1, cur.half * flops) / flops,
        stream=rate(2, cur.stream),
        permute=rate(3, cur.permute),
        launch=theta[4] if theta[4] > 0 else cur.launch,
        slice=theta[5] if theta[5] > 0 else cur.slice,
        touch=rate(6, cur.touch),
    )


def regret(rows: list[dict[str, Any]], m: hw.Machine) -> list[dict[str, Any]]:
    """Per (case, batch, mode): measured time of the plan ``m`` prices lowest, over the fastest measured."""
    out = []
    keys = sorted({(r["case"], r["batch"], r["mode"]) for r in rows}, key=str)
    for key in keys:
        group = [r for r in rows if (r["case"], r["batch"], r["mode"]) == key]
        theta = theta_of(m)

        def priced(r: dict[str, Any], theta: list[float] = theta) -> float:
            # the six fitted constants, plus the fixed per-call price of an inference full plan (full_call, not
            # fitted here), as the planner adds it
            extra = m.full_call if r["program"][0] == "full" and not r["grad"] else 0.0
            return sum(f * t for f, t in zip(r["features"], theta, strict=True)) + extra

        chosen = min(group, key=priced)
        fastest = min(group, key=lambda r: r["seconds"])
        out.append(
            {
                "case": key[0],
                "batch": key[1],
                "mode": key[2],
                "chosen": chosen["describe"],
                "fastest": fastest["describe"],
                "regret": chosen["seconds"] / fastest["seconds"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument(
        "--slow", type=float, default=3.0, help="time a plan only once if its first call is slower"
    )
    ap.add_argument("--json", default=None, help="write measurements, fit and regrets here")
    ap.add_argument(
        "--load", default=None, help="refit from the timings of a JSON written earlier (features recomputed)"
    )
    ap.add_argument(
        "--search",
        type=int,
        default=3000,
        help="random-search samples minimizing regret after the fit (0: none)",
    )
    ap.add_argument(
        "--tune",
        action="store_true",
        help='also run strategy="tune" once per case and score its choice by these timings',
    )
    ap.add_argument(
        "--modes",
        default="infer,train",
        help=f"comma-separated, of {', '.join(MODES)} (default infer,train: the cases' own)",
    )
    ap.add_argument("--device", default="cpu", help="where to time the plans (cpu, cuda, ...)")
    ap.add_argument(
        "--dtypes", default="float32", help="comma-separated dtypes of the layers (float32,bfloat16)"
    )
    ap.add_argument(
        "--batches",
        default=",".join(map(str, BATCHES)),
        help=f"comma-separated batch sizes (default {','.join(map(str, BATCHES))})",
    )
    args = ap.parse_args(argv)
    try:
        batches = tuple(positive_int(b) for b in args.batches.split(","))
    except argparse.ArgumentTypeError as e:
        ap.error(f"--batches: {e}")
    modes = args.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: expected names from {', '.join(MODES)}, got {args.modes!r}")
    torch.set_num_threads(args.threads)
    settle_allocator()
    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        rows, tuned = saved["rows"], saved.get("tuned", [])
        device = torch.device(saved.get("machine", {}).get("device", args.device))
        refeature(rows, device.type)
    else:
        device = torch.device(args.device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
        print(f"timing plans on {device.type} ({where}, torch {torch.__version__}) ...", flush=True)
        dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(","))
        rows, tuned = measure(args.repeats, args.slow, modes, args.tune, device, batches, dtypes)
    current = hw.MACHINES.get(device.type, hw.DEFAULT_MACHINE)
    fitted = to_machine(nnls_relative(rows), device.type)  # (others: hw.DEFAULT_MACHINE, as planned)
    if args.search:
        fitted = search_regret(rows, fitted, args.search, seed=0)
    print("\nconstant   current      fitted")
    for n in (*NAMES, "full_call"):  # (full_call is not fitted: the same in both)
        print(f"{n:9s} {getattr(current, n):10.3g}  {getattr(fitted, n):10.3g}")
    reg_cur, reg_fit = regret(rows, current), regret(rows, fitted)
    print("\n| case | batch | mode | chosen (current) | regret | chosen (fitted) | regret | fastest |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in zip(reg_cur, reg_fit, strict=True):
        print(
            f"| {a['case']} | {a['batch']} | {a['mode']} | {a['chosen']} | {a['regret']:.2f}x | {b['chosen']} | "
            f"{b['regret']:.2f}x | {a['fastest']} |"
        )
    reg_tuned = tuned_regret(rows, tuned)
    for label, reg in (("current", reg_cur), ("fitted", reg_fit), ('strategy="tune"', reg_tuned)):
        if not reg:
            continue
        worst = max(r["regret"] for r in reg)
        geo = math.exp(sum(math.log(r["regret"]) for r in reg) / len(reg))
        print(f"{label}: geometric-mean regret {geo:.3f}x, worst {worst:.2f}x")
    if args.json:
        out = {
            "machine": {
                "platform": platform.platform(),
                "threads": args.threads,
                "torch": torch.__version__,
                "device": str(device),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            },
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "current": {n: getattr(current, n) for n in (*NAMES, "full_call")},
            "fitted": {n: getattr(fitted, n) for n in (*NAMES, "full_call")},
            "regret_current": reg_cur,
            "regret_fitted": reg_fit,
            "tuned": tuned,
            "regret_tuned": reg_tuned,
            "rows": rows,
        }
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
