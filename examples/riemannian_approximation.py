"""Best low-rank approximation by Riemannian gradient descent (the problem of t3f's Riemannian tutorial).

Given a TT ``A`` of large TT-rank, find ``X`` of a small fixed TT-rank ``r`` minimizing
``F(X) = 0.5 * ||X - A||_F^2``. The TTs of TT-rank ``r`` form a manifold; Riemannian gradient descent steps
along the projection of the Euclidean gradient onto the tangent space at ``X`` and retracts back:

    X  <-  round(X - lr * P_X(X - A), max_tt_rank=r)

``P_X`` is ``tt.project`` (the gradient ``X - A`` is itself a TT, so nothing is ever dense); ``--autograd``
gets the same Riemannian gradient from ``tt.gradients`` applied to ``F`` instead. ``tt.round(A, r)`` (TT-SVD)
is the quasi-optimal answer in one step; gradient descent goes below it (the TT-SVD's error is within
``sqrt(d - 1)`` of the best, not the best).

    python examples/riemannian_approximation.py --modes 10 --size 2 --rank-a 16 --rank 2 --iterations 100
"""

from __future__ import annotations

import argparse

import torch

import tensortrain as tt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Approximate a TT by one of lower TT-rank with Riemannian gradient descent."
    )
    p.add_argument("--modes", type=int, default=10, help="number of modes d of the tensor")
    p.add_argument("--size", type=int, default=2, help="size of every mode")
    p.add_argument("--rank-a", type=int, default=16, help="TT-rank of the target A")
    p.add_argument("--rank", type=int, default=2, help="TT-rank r of the approximation X")
    p.add_argument("--lr", type=float, default=1.0, help="step size (1.0 is the tutorial's)")
    p.add_argument("--iterations", type=int, default=100, help="number of steps")
    p.add_argument("--seed", type=int, default=0, help="seed of A and of the start X")
    p.add_argument(
        "--autograd", action="store_true", help="Riemannian gradient by tt.gradients, not tt.project"
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    args = p.parse_args(argv)
    if min(args.modes, args.size, args.rank_a, args.rank) < 1 or args.iterations < 0:
        p.error("--modes, --size, --rank-a and --rank must be positive and --iterations non-negative")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def loss(x: tt.TensorTrain, a: tt.TensorTrain) -> torch.Tensor:
    """``0.5 * ||x - a||_F^2``, computed on the TTs (ranks add; the full tensor is never built)."""
    return 0.5 * tt.frobenius_norm_squared(x - a)


def riemannian_gradient(x: tt.TensorTrain, a: tt.TensorTrain, autograd: bool) -> tt.TensorTrain:
    """The projection of ``grad F = x - a`` onto the tangent space at ``x``: a TT of TT-rank at most ``2r``."""
    if autograd:
        return tt.gradients(lambda y: loss(y, a), x, runtime_check=False)
    return tt.project(x - a, x)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    """Runs the descent; returns ``(F at the last iterate, F at round(A, r))``."""
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.size,) * args.modes
    a = tt.random_tensor(shape, tt_rank=args.rank_a, dtype=dtype, generator=gen)
    x = tt.random_tensor(shape, tt_rank=args.rank, dtype=dtype, generator=gen)
    # the retraction keeps X at rank r; the start must be on that manifold too (not stored above its rank)
    x = tt.round(x, max_tt_rank=args.rank)
    values = []
    for i in range(args.iterations):
        x = tt.round(x - args.lr * riemannian_gradient(x, a, args.autograd), max_tt_rank=args.rank)
        values.append(float(loss(x, a)))
        if not args.quiet and (i % 10 == 0 or i == args.iterations - 1):
            print(f"iteration {i + 1:4d}  F {values[-1]:.6g}")
    final = values[-1] if values else float(loss(x, a))
    quasi = float(loss(tt.round(a, max_tt_rank=args.rank), a))
    print(f"Riemannian gradient descent: F = {final:.6g} after {args.iterations} iterations")
    print(f"TT-SVD (tt.round(A, max_tt_rank={args.rank})): F = {quasi:.6g}")
    return final, quasi


if __name__ == "__main__":
    main()
