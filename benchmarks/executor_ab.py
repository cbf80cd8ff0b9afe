"""The contraction executors of an earlier git revision against the working tree's, in one process.

Loads the executor modules (``src/tensortrain/contraction/sweeps.py``, ``full_plan.py`` and
``training_sweep.py``; in a revision from before the ``tensortrain.contraction`` package
``src/tensortrain/contraction_exec.py``, and ``contraction_full.py`` and ``contraction_train.py`` where the
revision has them) and their cost-model modules as they were at ``--against`` (``git show``) and times both
executors and ``nn.Linear`` interleaved, printing ratios to ``nn.Linear``. By default the full plan
(``full_linear``) on the large benchmark cases at batch 1024, forward (no grad) and forward+backward, W kept
or rebuilt. With ``--sweeps``: every benchmark case and batch whose planned forward or training plan is a
sweep, run as the layer runs it (inference in chunks of rows, training through ``sweep_trained`` from batch
8), each executor with its own revision's chunk sizes.

    .venv/bin/python benchmarks/executor_ab.py --against 214e95b --threads 2
    .venv/bin/python benchmarks/executor_ab.py --against 214e95b --sweeps --batch 64 --batch 1024
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LAYER_CASES, interleaved, positive_int, settle_allocator  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain.contraction import cost, full_plan, machine, sweeps, training_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the cost-model modules whose thresholds and chunk sizes the executors run by (machine since the cost model's
# split; a revision from before it has cost alone), and today's
MODEL = ("machine", "cost")
NEW_MODEL = (machine, cost)
# the executor modules: sweeps alone until the executors' split, then the full plan's and the training sweep's
# beside it
EXECUTORS = ("sweeps", "full_plan", "training_sweep")
REQUIRED = ("cost", "sweeps")  # (every revision has these two)
# the three layouts of a revision's src/tensortrain: today's package (tensortrain/contraction/<name>.py), and
# before it flat modules tensortrain/contraction_<name>.py whose names are FLAT's (the executors' split and the
# cost model's split only added modules)
PACKAGE_DIR = "src/tensortrain/contraction"
FLAT = {
    "machine": "contraction_machine",
    "cost": "contraction_cost",
    "sweeps": "contraction_exec",
    "full_plan": "contraction_full",
    "training_sweep": "contraction_train",
}
# today's package module of each other flat module (an old module importing one gets today's)
FLAT_ELSEWHERE = {
    "contraction_search": "search",
    "contraction_plan_cache": "plan_cache",
    "contraction_plan": "plans",
    "contraction_checks": "checks",
    "contraction_inspect": "inspection",
    "contraction_cache": "layer_cache",
    "contraction_run": "runner",
}


def executors(*modules: Any) -> types.SimpleNamespace:
    """A revision's executor modules as one namespace: each name from the first module that has it (looked up
    once, not on every timed call)."""
    names: dict[str, Any] = {}
    for m in reversed(modules):
        names.update(vars(m))
    return types.SimpleNamespace(**names)


NEW = executors(sweeps, full_plan, training_sweep)


def _show(rev: str, path: str, missing_ok: bool = False) -> str | None:
    out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True)
    if out.returncode != 0:
        if missing_ok:
            return None
        raise SystemExit(f"executor_ab: git show {rev}:{path} failed: {out.stderr.decode().strip()}")
    return out.stdout.decode()


def _is_package(rev: str) -> bool:
    """Whether ``rev`` has the ``tensortrain.contraction`` package (else the flat ``contraction_*`` modules)."""
    out = subprocess.run(
        ["git", "cat-file", "-e", f"{rev}:{PACKAGE_DIR}/sweeps.py"], cwd=ROOT, capture_output=True
    )
    return out.returncode == 0


def _old_imports(src: str, package: bool) -> str:
    """A module of the old revision, importing that revision's cost-model and executor modules (as
    ``old_<name>``) and anything else from today's package. ``package``: the module is from the
    ``tensortrain.contraction`` package (its siblings are ``.name``, the rest of tensortrain ``..name``), else a
    flat ``tensortrain.contraction_*`` module (its siblings ``.contraction_name``, the rest ``.name``)."""
    own = (
        {name: name for name in MODEL + EXECUTORS} if package else {flat: name for name, flat in FLAT.items()}
    )
    for name, role in own.items():
        src = src.replace(f"from . import {name} as", f"import old_{role} as")
        src = src.replace(f"from .{name} import", f"from old_{role} import")
    if package:
        src = re.sub(
            r"from \.\.(\w*) import", lambda m: f"from tensortrain{'.' * bool(m[1])}{m[1]} import", src
        )
        return re.sub(
            r"from \.(\w*) import",
            lambda m: f"from tensortrain.contraction{'.' * bool(m[1])}{m[1]} import",
            src,
        )
    for flat, new in FLAT_ELSEWHERE.items():
        src = src.replace(f"from . import {flat} as", f"from tensortrain.contraction import {new} as")
        src = src.replace(f"from .{flat} import", f"from tensortrain.contraction.{new} import")
    return re.sub(r"from \.(\w*) import", lambda m: f"from tensortrain{'.' * bool(m[1])}{m[1]} import", src)


def load_old(rev: str) -> tuple[types.SimpleNamespace, tuple[Any, ...]]:
    """The executor modules at ``rev`` (as one namespace), and the cost-model modules of ``rev`` that they run by
    (their block sizes and thresholds), in MODEL's order. ``rev`` may have any of the three layouts (FLAT)."""
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # (the modules are loaded from it until the end)
    package = _is_package(rev)
    names = []
    for name in MODEL + EXECUTORS:
        path = f"{PACKAGE_DIR}/{name}.py" if package else f"src/tensortrain/{FLAT[name]}.py"
        src = _show(rev, path, missing_ok=name not in REQUIRED)
        if src is not None:
            (tmp / f"old_{name}.py").write_text(_old_imports(src, package))
            names.append(name)
    sys.path.insert(0, str(tmp))
    mods = {name: importlib.import_module(f"old_{name}") for name in names}
    old = executors(*(mods[name] for name in EXECUTORS if name in mods))
    return old, tuple(mods[name] for name in MODEL if name in mods)


def _find(model: tuple[Any, ...], name: str) -> Any:
    """``name`` from the first of a revision's cost-model modules that has it; None where none has."""
    return next((getattr(m, name) for m in model if hasattr(m, name)), None)


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
            "new": step(lambda x: NEW.full_linear(x, cores, split, keep, bias)),
        },
        repeats,
        warm_each=warm,
        shuffled=True,
    )


def run_sweep(
    mod: Any,
    model: tuple[Any, ...],
    x2d: torch.Tensor,
    cores: list,
    groups: tuple,
    direction: str,
    grad: bool,
) -> torch.Tensor:
    """A sweep plan run by executor module ``mod`` (with its revision's cost-model modules ``model``) as
    ``tensortrain.contraction.runner._sweep`` runs it (uncached)."""
    b = int(x2d.shape[0])
    supers = mod.supers_of(cores, groups, direction)
    min_batch = _find(model, "SWEEP_FUNCTION_MIN_BATCH")
    if grad and min_batch is not None and b >= min_batch:
        return mod.sweep_trained(x2d, supers, direction)
    chunking = _find(model, "chunking")
    if chunking is None:  # a revision from before chunked inference sweeps
        return mod.sweep(x2d, supers, direction)
    chunk = None
    if not grad and b > 1:
        dims = (
            tuple(int(c.shape[1]) for c in cores),
            tuple(int(c.shape[2]) for c in cores),
            (*(int(c.shape[0]) for c in cores), 1),
        )
        rows, whole = chunking(dims, groups, direction, x2d.element_size())
        chunk = rows if b > whole else None
    return mod.sweep(x2d, supers, direction, chunk)


def time_sweep(old, old_model, layer, lin, batch: int, grad: bool, repeats: int, warm: bool) -> dict | None:  # noqa: ANN001
    """Median seconds of ``nn.Linear`` and both executors running the layer's planned sweep; None if not a sweep."""
    plan = layer.plan(batch, requires_grad=grad)
    if plan.kind != "sweep":
        return None
    cores = list(layer.cores)
    x = torch.randn(batch, lin.in_features, requires_grad=grad)
    leaves = [p for p in (*cores, layer.bias, *lin.parameters()) if p is not None and p.requires_grad]
    step = stepper(x, grad, leaves)

    def via(mod, model):  # noqa: ANN001, ANN202
        return lambda x: run_sweep(mod, model, x, cores, plan.groups, plan.direction, grad) + layer.bias

    fns = {
        "dense": step(lin),
        "old": step(via(old, old_model)),
        "new": step(via(NEW, NEW_MODEL)),
    }
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
    old, old_model = load_old(args.against)
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
                    t = time_sweep(old, old_model, layer, lin, batch, grad, args.repeats, not args.cold)
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
