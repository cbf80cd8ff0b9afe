"""Training steps of the 4096x4096 layers against ``nn.Linear``, with each step's minor page faults counted.

The dense step's fresh 64 MiB weight gradient is above glibc's largest mmap threshold, so it is mapped anew on
every step; the TT layer builds W in reused scratch. Run it twice to see what those faults cost::

    .venv/bin/python benchmarks/pagefaults.py
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 .venv/bin/python benchmarks/pagefaults.py

(the second keeps large blocks in the heap, so freed ones are reused without faults). Medians of interleaved
repeats, as ``run.py`` times its rows.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LAYER_CASES, interleaved, positive_int, settle_allocator, train_step  # noqa: E402

import tensortrain as tt  # noqa: E402

CELLS = (("4096x4096-r64", 1024), ("4096x4096-r16", 1024), ("4096x4096-r64", 64), ("4096x4096-r16", 64))


def faults_per_step(step, n: int = 3) -> float:  # noqa: ANN001
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=positive_int, default=11)
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settle_allocator()
    cases = {c[0]: c for c in LAYER_CASES}
    for name, batch in CELLS:
        _, fin, fout, in_dims, out_dims, rank = cases[name]
        torch.manual_seed(0)
        dense = nn.Linear(fin, fout)
        ttl = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
        xg = torch.randn(batch, fin).requires_grad_(True)
        steps = {k: (lambda m=m, x=xg: train_step(m, x)) for k, m in (("dense", dense), ("tt", ttl))}
        faults = {k: faults_per_step(s) for k, s in steps.items()}
        t = interleaved(steps, args.repeats, warm_each=True)
        print(
            f"{name} B={batch} training step: dense {t['dense'] * 1e3:.1f} ms, TT {t['tt'] * 1e3:.1f} ms "
            f"({t['tt'] / t['dense']:.3f}x); minor page faults per step: dense {faults['dense']:.0f}, "
            f"TT {faults['tt']:.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
