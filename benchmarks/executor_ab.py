"""The full plan's executor of an earlier git revision against the working tree's, in one process.

Loads ``src/tensortrain/contraction_exec.py`` and its cost module as they were at ``--against`` (``git show``) and
times both ``full_linear`` executors and ``nn.Linear`` interleaved on the large benchmark cases at batch 1024,
forward (no grad) and forward+backward, W kept or rebuilt. Prints ratios to ``nn.Linear``.

    .venv/bin/python benchmarks/executor_ab.py --against 214e95b --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LAYER_CASES, interleaved  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain import contraction_exec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _show(rev: str, path: str) -> str:
    out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True)
    return out.stdout.decode()


def load_old(rev: str):  # noqa: ANN201
    """``contraction_exec`` at ``rev``, with the cost module of ``rev`` (its block sizes and thresholds)."""
    tmp = Path(tempfile.mkdtemp())
    (tmp / "old_contraction_cost.py").write_text(_show(rev, "src/tensortrain/contraction_cost.py"))
    src = _show(rev, "src/tensortrain/contraction_exec.py")
    src = src.replace("from . import contraction_cost as _cost", "import old_contraction_cost as _cost")
    # anything else: today's package
    src = re.sub(r"from \.(\w*) import", lambda m: f"from tensortrain{'.' * bool(m[1])}{m[1]} import", src)
    (tmp / "old_contraction_exec.py").write_text(src)
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("old_contraction_exec", tmp / "old_contraction_exec.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_case(old, layer, lin, batch: int, grad: bool, keep: bool, repeats: int, warm: bool) -> dict:  # noqa: ANN001
    """Median seconds of ``nn.Linear`` and both executors' full plan (split in the middle), interleaved."""
    cores, bias = list(layer.cores), layer.bias
    split = len(cores) // 2
    x = torch.randn(batch, lin.in_features, requires_grad=grad)

    def step(fn):  # noqa: ANN001, ANN202
        if grad:
            return lambda: fn(x).sum().backward()

        def no_grad() -> None:
            with torch.no_grad():
                fn(x)

        return no_grad

    return interleaved(
        {
            "dense": step(lin),
            "old": step(lambda x: old.full_linear(x, cores, split, keep, bias)),
            "new": step(lambda x: contraction_exec.full_linear(x, cores, split, keep, bias)),
        },
        repeats,
        warm_each=warm,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision of the old executor")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--cold", action="store_true", help="no untimed call right before each timed one")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = load_old(args.against)
    mode = "cold" if args.cold else "warm"
    print(
        f"old executor: {args.against}; threads {args.threads}; batch {args.batch}; {mode}; ratios to nn.Linear"
    )
    for name, fin, fout, in_dims, out_dims, rank in LAYER_CASES:
        if name == "784x625-r4":
            continue  # its plans are sweeps: no full-plan executor to compare
        torch.manual_seed(0)
        layer = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
        lin = torch.nn.Linear(fin, fout)
        for grad, keep in ((False, False), (True, True), (True, False)):
            t = time_case(old, layer, lin, args.batch, grad, keep, args.repeats, not args.cold)
            what = "forward" if not grad else f"fwd+bwd, W {'kept' if keep else 'rebuilt'}"
            print(f"{name:14s} {what:22s} old {t['old'] / t['dense']:.3f}x  new {t['new'] / t['dense']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
