"""One cell of the layer table, timed with more repeats than run.py gives it: TTLinear, nn.Linear and the peers.

run.py spends at most about 20 s of repeats per row, so its largest cells (4096x4096 at rank 64, batch 1024,
training: several seconds per turn of warm calls) get a handful of repeats and move by more than the gaps between
implementations. This times one case, forward or forward+backward, with every repeat counted (warm, interleaved, medians):

    .venv/bin/python benchmarks/cell.py 4096x4096-r64 --batch 1024 --repeats 15
    .venv/bin/python benchmarks/cell.py 784x625-r16 --batch 64 --forward
    .venv/bin/python benchmarks/cell.py 784x625-r16 --batch 64 --first-layer --strategy grouped_ltr
    .venv/bin/python benchmarks/cell.py 768x3072-r16 --batch 1024 --forward --strategy auto,full,grouped_rtl

``--first-layer``: the input needs no gradient (a network's first layer); ``--frozen``: the cores need none;
``--strategy``: force the TT layer's plan instead of the planner's; several, comma-separated, time one TT layer
per strategy side by side in the same process (``tt[full]``, ...), as plans compare reliably only there.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    LAYER_CASES,
    interleaved,
    peer_layers,
    positive_int,
    settle_allocator,
    train_step,
)

import tensortrain as tt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    names = [c[0] for c in LAYER_CASES]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=names)
    ap.add_argument("--batch", type=positive_int, default=1024)
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument(
        "--forward", action="store_true", help="time the forward only (default: forward+backward)"
    )
    ap.add_argument("--first-layer", action="store_true", help="an input without gradient (a first layer)")
    ap.add_argument("--frozen", action="store_true", help="frozen cores (the input's gradient only)")
    ap.add_argument(
        "--strategy",
        default="auto",
        help=f"one or several (comma-separated) of {', '.join(tt.contraction.STRATEGIES)}",
    )
    ap.add_argument(
        "--alone",
        action="store_true",
        help="time only the TT layers, ratios to the first strategy (no nn.Linear or peers between them: timed "
        "among other layers, two plans of one small layer read up to 2x apart either way, in different runs)",
    )
    args = ap.parse_args(argv)
    strategies = args.strategy.split(",")
    bad = [s for s in strategies if s not in tt.contraction.STRATEGIES]
    if bad or len(set(strategies)) < len(strategies):
        ap.error(
            f"--strategy: expected distinct names from {', '.join(tt.contraction.STRATEGIES)}, got {args.strategy!r}"
        )
    if args.first_layer and args.frozen:
        ap.error("--first-layer and --frozen: then nothing needs a gradient (time --forward instead)")
    torch.set_num_threads(args.threads)
    settle_allocator()
    _, fin, fout, in_dims, out_dims, rank = LAYER_CASES[names.index(args.case)]
    torch.manual_seed(0)
    mods: dict[str, nn.Module] = {
        "dense": nn.Linear(fin, fout),
        "tt": tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims),
    }
    if args.alone:  # (the peers are not even built)
        del mods["dense"]
        notes: dict[str, str] = {}
    else:
        peers, notes = peer_layers(in_dims, out_dims, mods["tt"].weight.tt_ranks)  # type: ignore[union-attr]
        mods |= peers
    if len(strategies) == 1:
        mods["tt"].strategy = strategies[0]
    else:  # one layer per strategy, the same cores
        base = mods.pop("tt")
        for s in strategies:
            layer = copy.deepcopy(base)
            layer.strategy = s
            mods[f"tt[{s}]"] = layer
    if args.frozen:
        for m in mods.values():
            m.requires_grad_(False)
    x = torch.randn(args.batch, fin, requires_grad=not (args.forward or args.first_layer))
    if args.forward:
        with torch.no_grad():
            times = interleaved({k: (lambda m=m: m(x)) for k, m in mods.items()}, args.repeats,
                                budget_s=float("inf"), warm_each=True)  # fmt: skip
    else:
        times = interleaved({k: (lambda m=m: train_step(m, x)) for k, m in mods.items()}, args.repeats,
                            budget_s=float("inf"), warm_each=True)  # fmt: skip
    plans = {
        k: m.plan(  # type: ignore[operator]
            args.batch, requires_grad=not args.forward, input_requires_grad=not args.first_layer
        ).describe()
        for k, m in mods.items()
        if k.startswith("tt")
    }
    what = "forward" if args.forward else "forward+backward"
    what += ", first layer" if args.first_layer else ", frozen" if args.frozen else ""
    head = f"{args.case} batch {args.batch}, {what}, {times['_n']} repeats, threads {args.threads}"
    print(head + (f"; plan: {plans['tt']}" if "tt" in plans else ""))
    for k, plan in plans.items():
        if k != "tt":
            print(f"  {k}: {plan}")
    ref, unit = (next(iter(mods)), "x " + next(iter(mods))) if args.alone else ("dense", "x nn.Linear")
    for k in mods:
        once = " (timed once)" if k in times["_once"] else ""
        print(f"  {k:14s} {1000 * times[k]:9.2f} ms  {times[k] / times[ref]:.3f}{unit}{once}")
    for k, note in notes.items():
        print(f"  {k}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
