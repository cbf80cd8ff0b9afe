"""The contraction executors of an earlier git revision against the working tree's, in one process.

Loads ``src/tensortrain/contraction_exec.py`` and its cost module as they were at ``--against`` (``git show``) and
times both executors and ``nn.Linear`` interleaved, printing ratios to ``nn.Linear``. By default the full plan
(``full_linear``) on the large benchmark cases at batch 1024, forward (no grad) and forward+backward, W kept or
rebuilt. With ``--sweeps``: every benchmark case and batch whose planned forward or training plan is a sweep, run
as the layer runs it (inference in chunks of rows, training through ``sweep_trained`` from batch 8), each
executor with its own revision's chunk sizes.

    .venv/bin/python benchmarks/executor_ab.py --against 214e95b --threads 2
    .venv/bin/python benchmarks/executor_ab.py --against 214e95b --sweeps --batch 64 --batch 1024
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LAYER_CASES, interleaved, positive_int, settle_allocator  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain import contraction_exec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _show(rev: str, path: str) -> str:
    out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"executor_ab: git show {rev}:{path} failed: {out.stderr.decode().strip()}")
    return out.stdout.decode()


def load_old(rev: str):  # noqa: ANN201
    """``contraction_exec`` at ``rev``, with the cost module of ``rev`` (its block sizes and thresholds)."""
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # (the modules are loaded from it until the end)
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


def stepper(x: torch.Tensor, grad: bool, leaves: list[torch.Tensor]):  # noqa: ANN201
    """A function turning ``fn`` into one timed step on ``x``: forward+backward, or forward without grad. The
    backward computes fresh gradients for ``x`` and ``leaves`` (as run.train_step: a repeated ``.backward()`` added
    each step's gradients into ``.grad``, an extra pass of the dense weight's size for ``nn.Linear``)."""

    def step(fn):  # noqa: ANN001, ANN202
        if grad:
            return lambda: torch.autograd.grad(fn(x).sum(), [x, *leaves], allow_unused=True)

        def no_grad() -> None:
            with torch.no_grad():
                fn(x)

        return no_grad

    return step


def time_case(old, layer, lin, batch: int, grad: bool, keep: bool, repeats: int, warm: bool) -> dict:  # noqa: ANN001
    """Median seconds of ``nn.Linear`` and both executors' full plan (split in the middle), interleaved."""
    cores, bias = list(layer.cores), layer.bias
    split = len(cores) // 2
    x = torch.randn(batch, lin.in_features, requires_grad=grad)
    leaves = [p for p in (*cores, bias, *lin.parameters()) if p is not None and p.requires_grad]
    step = stepper(x, grad, leaves)

    return interleaved(
        {
            "dense": step(lin),
            "old": step(lambda x: old.full_linear(x, cores, split, keep, bias)),
            "new": step(lambda x: contraction_exec.full_linear(x, cores, split, keep, bias)),
        },
        repeats,
        warm_each=warm,
        shuffled=True,
    )


def run_sweep(mod, x2d: torch.Tensor, cores: list, groups: tuple, direction: str, grad: bool) -> torch.Tensor:  # noqa: ANN001
    """A sweep plan run by executor module ``mod`` as ``tensortrain.contraction_run._sweep`` runs it (uncached)."""
    b = int(x2d.shape[0])
    supers = mod.supers_of(cores, groups, direction)
    if grad and b >= getattr(mod._cost, "SWEEP_FUNCTION_MIN_BATCH", b + 1):
        return mod.sweep_trained(x2d, supers, direction)
    if not hasattr(mod._cost, "chunking"):  # a revision from before chunked inference sweeps
        return mod.sweep(x2d, supers, direction)
    chunk = None
    if not grad and b > 1:
        dims = (
            tuple(int(c.shape[1]) for c in cores),
            tuple(int(c.shape[2]) for c in cores),
            (*(int(c.shape[0]) for c in cores), 1),
        )
        rows, whole = mod._cost.chunking(dims, groups, direction, x2d.element_size())
        chunk = rows if b > whole else None
    return mod.sweep(x2d, supers, direction, chunk)


def time_sweep(old, layer, lin, batch: int, grad: bool, repeats: int, warm: bool) -> dict | None:  # noqa: ANN001
    """Median seconds of ``nn.Linear`` and both executors running the layer's planned sweep; None if not a sweep."""
    plan = layer.plan(batch, requires_grad=grad)
    if plan.kind != "sweep":
        return None
    cores = list(layer.cores)
    x = torch.randn(batch, lin.in_features, requires_grad=grad)
    leaves = [p for p in (*cores, layer.bias, *lin.parameters()) if p is not None and p.requires_grad]
    step = stepper(x, grad, leaves)

    def via(mod):  # noqa: ANN001, ANN202
        return lambda x: run_sweep(mod, x, cores, plan.groups, plan.direction, grad) + layer.bias

    fns = {"dense": step(lin), "old": step(via(old)), "new": step(via(contraction_exec))}
    return {"plan": plan, **interleaved(fns, repeats, warm_each=warm, shuffled=True)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision of the old executor")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=11)
    ap.add_argument(
        "--batch", type=positive_int, action="append", help="batch size (repeatable; default 1024)"
    )
    ap.add_argument("--sweeps", action="store_true", help="time the planned sweeps instead of the full plan")
    ap.add_argument("--cold", action="store_true", help="no untimed call right before each timed one")
    args = ap.parse_args(argv)
    batches = args.batch or [1024]
    torch.set_num_threads(args.threads)
    old = load_old(args.against)
    settle_allocator()  # (as run.py: the first case's nn.Linear paid the page faults of a fresh heap)
    mode = "cold" if args.cold else "warm"
    print(
        f"old executor: {args.against}; threads {args.threads}; batch {batches}; {mode}; ratios to nn.Linear"
    )
    if args.sweeps:
        for name, fin, fout, in_dims, out_dims, rank in LAYER_CASES:
            torch.manual_seed(0)
            layer = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
            lin = torch.nn.Linear(fin, fout)
            for batch in batches:
                for grad in (False, True):
                    t = time_sweep(old, layer, lin, batch, grad, args.repeats, not args.cold)
                    if t is None:
                        continue
                    what = f"B={batch} {'fwd+bwd' if grad else 'forward'} {t['plan'].direction} {t['plan'].groups}"
                    print(
                        f"{name:14s} {what:40s} old {t['old'] / t['dense']:.3f}x  new {t['new'] / t['dense']:.3f}x"
                    )
        return 0
    for batch in batches:
        full_cases(old, batch, args)
    return 0


def full_cases(old, batch: int, args: argparse.Namespace) -> None:  # noqa: ANN001
    """The full plan's old and new executors on the large cases at one batch size."""
    for name, fin, fout, in_dims, out_dims, rank in LAYER_CASES:
        if name == "784x625-r4":
            continue  # its plans are sweeps: no full-plan executor to compare
        torch.manual_seed(0)
        layer = tt.nn.TTLinear(fin, fout, tt_rank=rank, in_dims=in_dims, out_dims=out_dims)
        lin = torch.nn.Linear(fin, fout)
        for grad, keep in ((False, False), (True, True), (True, False)):
            t = time_case(old, layer, lin, batch, grad, keep, args.repeats, not args.cold)
            what = f"B={batch} " + ("forward" if not grad else f"fwd+bwd, W {'kept' if keep else 'rebuilt'}")
            print(f"{name:14s} {what:29s} old {t['old'] / t['dense']:.3f}x  new {t['new'] / t['dense']:.3f}x")


if __name__ == "__main__":
    raise SystemExit(main())
