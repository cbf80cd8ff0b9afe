"""Batch-1 latency of the t3f tutorial's layer (784x625, rank 4) against ``nn.Linear``, cold and warm.

"Cold": the two take turns, each call right after the other's (as ``run.py --cold``). "Warm" (``run.py``'s
default): each timed call comes right after an untimed call of the same layer. Also times the pieces of the
layer's inference path, so the Python overhead around the sweep is visible, and a 16 -> 16 layer of rank 2, where
compute is nil: its times are the per-call overhead (Python, dispatch, one launch per kernel on a GPU), forward and
training step (``run.train_step``). Ratios move between processes: run it a few times.

    .venv/bin/python benchmarks/latency.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import interleaved, positive_int, settle_allocator, train_step  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain import contraction as C  # noqa: E402
from tensortrain.contraction import plan_cache as P  # noqa: E402
from tensortrain.contraction import sweeps as E  # noqa: E402
from tensortrain.contraction.layer_cache import cached_supers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=301)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settle_allocator()
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    lin = torch.nn.Linear(784, 625)
    x = torch.randn(1, 784)
    cores = tuple(layer.cores)
    with torch.no_grad():
        pair = {"dense": lambda: lin(x), "tt": lambda: layer(x)}
        cold = interleaved(pair, args.repeats)
        warm = interleaved(pair, args.repeats, warm_each=True)
        prog = P.choose_program(cores, 1, False, "auto", True)
        supers = cached_supers(layer._cache, cores, prog[2], str(prog[1]))
        parts = interleaved(
            {
                "layer(x)": lambda: layer(x),
                "apply_unchecked": lambda: C.apply_unchecked(x, cores, layer.bias, 784, cache=layer._cache),
                "sweep (kept super-cores)": lambda: E.sweep(x, supers, str(prog[1])),
            },
            args.repeats,
            warm_each=True,
        )
    tiny = tt.nn.TTLinear(16, 16, tt_rank=2, in_dims=(2, 2, 2, 2), out_dims=(2, 2, 2, 2))
    tiny_lin = torch.nn.Linear(16, 16)
    x16 = torch.randn(1, 16)
    x16g = x16.clone().requires_grad_(True)
    with torch.no_grad():
        tiny_fwd = interleaved(
            {"dense": lambda: tiny_lin(x16), "tt": lambda: tiny(x16)}, args.repeats, warm_each=True
        )
    tiny_step = interleaved(
        {"dense": lambda: train_step(tiny_lin, x16g), "tt": lambda: train_step(tiny, x16g)},
        args.repeats,
        warm_each=True,
    )
    us = 1e6
    print(f"threads {args.threads}, torch {torch.__version__}, plan {prog}")
    for name, t in (("cold", cold), ("warm", warm)):
        print(
            f"{name}: layer {t['tt'] * us:.1f} us, nn.Linear {t['dense'] * us:.1f} us, {t['tt'] / t['dense']:.2f}x"
        )
    for k in ("layer(x)", "apply_unchecked", "sweep (kept super-cores)"):
        print(f"  warm {k}: {parts[k] * us:.1f} us")
    for name, t in (("forward", tiny_fwd), ("training step", tiny_step)):
        print(
            f"overhead (16 -> 16, rank 2), {name}: layer {t['tt'] * us:.1f} us, nn.Linear {t['dense'] * us:.1f} us, "
            f"{t['tt'] / t['dense']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
