"""Sessions 32-33's algebra paths against the ones they replaced, in one process: each operation timed with its
old path switched back on (by the module constant or call that chose it) and with the current one, taking turns.

- ``full`` of TT-matrices and TT-tensors by halves, against one sweep of all the cores (the size thresholds raised);
- ``frobenius_norm`` with R-only QRs, against QRs that form Q too (``torch.linalg.qr`` without ``mode="r"``);
- ``gram_matrix`` in row blocks of 2^21 elements of a step's intermediate, against blocks of 2^24;
- ``round`` and TT-SVD where autograd records, with the check of each SVD's range (session 33: gradients at
  extreme magnitudes), against no check;
- the randomized TT-SVD with the check of its factors for overflow (session 33), against no check.

Prints old and new medians and old / new. Ratios move between runs on a busy host: run it a few times.

    .venv/bin/python benchmarks/paths_ab.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import interleaved, positive_int, settle_allocator  # noqa: E402

import tensortrain as tt  # noqa: E402
from tensortrain import batch_ops, dense, truncation  # noqa: E402

_QR = torch.linalg.qr


def _qr_forming_q(a: torch.Tensor, mode: str = "reduced") -> Any:
    return _QR(a)  # (the old calls: mode="reduced", Q formed and thrown away)


def _unchecked(s: torch.Tensor) -> bool:
    return True  # (before session 33 no SVD's range was checked: every one counted as in range)


# The settings that chose each old path: (module, attribute, old value). Set by plain assignment around each old
# call (a mock.patch context costs tens of microseconds, as much as a small full() itself).
_OLD: dict[str, tuple[Any, str, Any]] = {
    "full": (dense, "_SWEPT_MATRIX", 2**62),
    "norm": (torch.linalg, "qr", _qr_forming_q),
    "gram": (batch_ops, "_ROWS_CHUNK", 1 << 24),
    "svd": (truncation, "_in_square_range", _unchecked),
    "sketch": (truncation, "_sketched", truncation._randomized),  # (the factors as they come, unchecked)
}


def cases(gen: torch.Generator) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(name, kind, call) of every timed operation; TT objects drawn from ``gen``."""
    f32, f64 = {"generator": gen}, {"generator": gen, "dtype": torch.float64}
    for rank in (4, 16):
        w = tt.random_matrix(((4, 7, 4, 7), (5, 5, 5, 5)), tt_rank=rank, **f32)
        yield f"full 784x625 TT-matrix r{rank}", "full", lambda w=w: tt.full(w)
    w = tt.random_matrix(((8,) * 4, (8,) * 4), tt_rank=16, **f32)
    yield "full 4096x4096 TT-matrix r16", "full", lambda: tt.full(w)
    for modes, rank in (((4,) * 10, 16), ((6,) * 8, 24), ((2,) * 20, 2), ((10,) * 4, 2)):
        x = tt.random_tensor(modes, tt_rank=rank, **f32)
        # (10^4 is below dense._SWEPT_TENSOR: both sides sweep once, a control of the tool's own noise)
        control = " (control: same path)" if math.prod(modes) <= dense._SWEPT_TENSOR else ""
        yield f"full {modes[0]}^{len(modes)} TT-tensor r{rank}{control}", "full", lambda x=x: tt.full(x)
    y = tt.random_tensor((16,) * 8, tt_rank=32, **f32)
    yield "frobenius_norm 16^8 r32", "norm", lambda: tt.frobenius_norm(y)
    z = tt.random_tensor((8,) * 10, tt_rank=64, **f64)
    yield "frobenius_norm 8^10 r64 float64", "norm", lambda: tt.frobenius_norm(z)
    v = tt.random_tensor_batch((10,) * 10, tt_rank=10, batch_size=100, **f64)
    yield "gram_matrix of 100, 10^10 r10 float64", "gram", lambda: tt.gram_matrix(v)
    u = tt.random_tensor_batch((4,) * 8, tt_rank=16, batch_size=200, **f32)
    yield "gram_matrix of 200, 4^8 r16", "gram", lambda: tt.gram_matrix(u)
    for modes, rank in (((4,) * 6, 8), ((8,) * 8, 16)):
        t = tt.random_tensor(modes, tt_rank=rank, **f32)
        t = tt.TensorTrain([c.clone().requires_grad_() for c in t.tt_cores])
        name = f"round {modes[0]}^{len(modes)} r{rank} to r{rank // 2}, with grad"
        yield name, "svd", lambda t=t, r=rank // 2: tt.round(t, max_tt_rank=r)
    a = torch.randn((8,) * 6, **f32).requires_grad_()
    yield "to_tt_tensor 8^6 to r8, with grad", "svd", lambda: tt.to_tt_tensor(a, max_tt_rank=8)
    m = torch.randn(4096, 4096, generator=gen)
    yield (
        "to_tt_matrix 4096x4096 to r64 (randomized)",
        "sketch",
        lambda: tt.to_tt_matrix(m, ((8,) * 4, (8,) * 4), max_tt_rank=64),
    )


def _under(kind: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` on the path ``kind`` ("full", "norm", "gram", "svd" or "sketch") took before session 32 (33 for
    "svd" and "sketch")."""
    module, name, value = _OLD[kind]
    tensors = kind == "full"  # (full's TT-tensors have a threshold of their own)

    def run_old() -> Any:
        now = getattr(module, name)
        now_tensor = dense._SWEPT_TENSOR
        setattr(module, name, value)
        if tensors:
            dense._SWEPT_TENSOR = value
        try:
            return call()
        finally:
            setattr(module, name, now)
            dense._SWEPT_TENSOR = now_tensor

    return run_old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settle_allocator()
    print(f"threads {args.threads}, torch {torch.__version__}")
    print("| operation | old us | new us | old / new |")
    print("|---|---|---|---|")
    for name, kind, call in cases(torch.Generator().manual_seed(0)):
        t = interleaved({"old": _under(kind, call), "new": call}, args.repeats, budget_s=10.0, shuffled=True)
        print(f"| {name} | {t['old'] * 1e6:.0f} | {t['new'] * 1e6:.0f} | {t['old'] / t['new']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
