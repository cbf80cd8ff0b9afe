"""The algebra of an earlier git revision against the working tree's: per-call times of small-TT operations.

Exports ``src`` as it was at ``--against`` (``git archive``) into a temporary folder and times the same
operations with each tree in its own subprocess, alternating old and new ``--rounds`` times; prints, per
operation, the faster median of each side (microseconds) and old / new. Small TTs (modes 4, ranks 4, d = 6; a
rank-8 TT rounded to rank 4) are where fixed costs dominate; rank-64 cases over 8^8 and ``full`` of the tutorial's
784 x 625 TT-matrix (ranks 4 and 16) and of a 4^10 rank-16 TT-tensor, and the Gram matrix of 100 rank-8 TTs,
show the compute-bound end. float64, one thread.

    .venv/bin/python benchmarks/algebra_ab.py --against 58284e7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the subprocess, with PYTHONPATH naming one tree's src; prints {case: median us per call} as JSON.
_CHILD = r"""
import json, statistics, time
import torch
torch.set_num_threads(1)
import tensortrain as tt
torch.manual_seed(0)
kw = dict(dtype=torch.float64)
a, b = tt.random_tensor((4,) * 6, tt_rank=4, **kw), tt.random_tensor((4,) * 6, tt_rank=4, **kw)
a8 = tt.random_tensor((4,) * 6, tt_rank=8, **kw)
m = tt.random_matrix(((4,) * 6, (4,) * 6), tt_rank=4, **kw)
vec, mat = tt.random_tensor((4,) * 4, tt_rank=4, **kw), tt.random_matrix(((4,) * 4, (4,) * 4), tt_rank=4, **kw)
big, big2 = tt.random_tensor((8,) * 8, tt_rank=64, **kw), tt.random_tensor((8,) * 8, tt_rank=64, **kw)
w4, w16 = (tt.random_matrix(((4, 7, 4, 7), (5, 5, 5, 5)), tt_rank=r, **kw) for r in (4, 16))
t16 = tt.random_tensor((4,) * 10, tt_rank=16, **kw)
vs = tt.random_tensor_batch((4,) * 8, tt_rank=8, batch_size=100, **kw)
cases = {
    "round d6 n4 r8 -> 4": lambda: tt.round(a8, max_tt_rank=4),
    "round d6 n4 r8, epsilon 1e-2": lambda: tt.round(a8, epsilon=1e-2),
    "orthogonalize d6 n4 r4": lambda: tt.orthogonalize(a),
    "flat_inner d6 n4 r4": lambda: tt.flat_inner(a, b),
    "frobenius_norm d6 n4 r4": lambda: tt.frobenius_norm(a),
    "add d6 n4 r4": lambda: tt.add(a, b),
    "subtract d6 n4 r4": lambda: tt.subtract(a, b),
    "multiply (Hadamard) d6 n4 r4": lambda: tt.multiply(a, b),
    "matmul TT x TT d6 4x4 r4": lambda: tt.matmul(m, m),
    "quadratic_form d4 n4 r4": lambda: tt.quadratic_form(mat, vec, vec),
    "TensorTrain(cores) d6": lambda: tt.TensorTrain(a.tt_cores),
    "flat_inner d8 n8 r64": lambda: tt.flat_inner(big, big2),
    "frobenius_norm d8 n8 r64": lambda: tt.frobenius_norm(big),
    "round d8 n8 r64 -> 16": lambda: tt.round(big, max_tt_rank=16),
    "full 784x625 r4": lambda: tt.full(w4),
    "full 784x625 r16": lambda: tt.full(w16),
    "full d10 n4 r16": lambda: tt.full(t16),
    "gram_matrix of 100, d8 n4 r8": lambda: tt.gram_matrix(vs),
}
out = {}
for name, f in cases.items():
    for _ in range(20):
        f()
    n = 20 if "r64" in name or "full" in name else 5 if "gram" in name else 200
    reps = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            f()
        reps.append((time.perf_counter() - t) / n * 1e6)
    out[name] = statistics.median(reps)
print(json.dumps(out))
"""


def _time(src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="git revision to compare with (e.g. a commit hash)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating old/new runs (default 2)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.against, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        old_runs, new_runs = [], []
        for _ in range(args.rounds):
            old_runs.append(_time(Path(tmp) / "src"))
            new_runs.append(_time(ROOT / "src"))
    print(f"| case (float64, 1 thread) | {args.against} us | working tree us | old / new |")
    print("|---|---|---|---|")
    for k in new_runs[0]:
        old, new = min(r[k] for r in old_runs), min(r[k] for r in new_runs)
        print(f"| {k} | {old:.0f} | {new:.0f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
