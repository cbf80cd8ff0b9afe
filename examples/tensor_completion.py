"""Tensor completion by Riemannian gradient descent (the idea of t3f's tensor-completion tutorial).

A random tensor of low TT-rank is observed on a random fraction of its entries; we recover it by
minimizing ``0.5 * sum over observed entries of (X - A)^2`` over TTs of that rank:

1. ``tt.gradients`` gives the Riemannian gradient (autograd through the tangent-space parametrization);
2. the search direction is the negative gradient plus a multiple of the previous direction, carried over
   to the new tangent space with ``tt.project`` (nonlinear conjugate gradients, Polak-Ribiere+; Steinlechner
   2016); ``--no-cg`` gives plain gradient descent;
3. the step size is the exact minimizer of the loss along the direction (the loss is quadratic);
4. ``tt.round`` retracts the step back to the manifold of the fixed TT-rank.

The full tensor is never built: the loss reads entries with ``tt.gather_nd`` and the error is measured with
``tt.frobenius_norm``.

    python examples/tensor_completion.py --shape 10 10 10 10 --rank 3 --fraction 0.2 --iterations 200
"""

from __future__ import annotations

import argparse
import math

import torch

import tensortrain as tt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tensor completion by Riemannian conjugate gradients (--no-cg: plain gradient descent)."
    )
    p.add_argument("--shape", type=int, nargs="+", default=[10, 10, 10, 10], help="mode sizes of the tensor")
    p.add_argument("--rank", type=int, default=3, help="TT-rank of the ground truth and of the model")
    p.add_argument("--fraction", type=float, default=0.2, help="fraction of entries observed, in (0, 1]")
    p.add_argument("--iterations", type=int, default=200, help="maximal number of iterations")
    p.add_argument("--tol", type=float, default=1e-6, help="stop when the relative error is below this")
    p.add_argument("--seed", type=int, default=0, help="seed of the ground truth, the mask and the start")
    p.add_argument("--no-cg", dest="cg", action="store_false", help="plain gradient descent, no CG")
    p.add_argument("--quiet", action="store_true", help="print only the final relative error")
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.rank < 1 or args.iterations < 0 or min(args.shape) < 1:
        p.error("--rank, --shape must be positive and --iterations non-negative")
    return args


def observed_indices(shape: list[int], fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A random set of ``fraction * numel`` distinct multi-indices, shape ``(K, d)``."""
    numel = math.prod(shape)
    k = max(1, round(fraction * numel))
    if numel <= 10**7:  # (the README's seeded run draws this way)
        flat = torch.randperm(numel, generator=gen)[:k]
    else:  # a permutation of every position would take as much memory as the dense tensor: distinct draws
        picked = torch.empty(0, dtype=torch.long)
        while picked.numel() < k:
            more = torch.randint(numel, (2 * (k - picked.numel()),), generator=gen)
            picked = torch.unique(torch.cat([picked, more]))
        flat = picked[torch.randperm(picked.numel(), generator=gen)[:k]]
    return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=1)


def search_direction(
    grad: tt.TensorTrain, prev: tuple[tt.TensorTrain, tt.TensorTrain] | None, x: tt.TensorTrain
) -> tt.TensorTrain:
    """Polak-Ribiere+ conjugate direction in the tangent space at ``x`` (``-grad`` on a restart)."""
    if prev is None:
        return tt.add_n_projected([grad], coef=[-1.0])
    old_grad, old_dir = tt.project(prev[0], x), tt.project(prev[1], x)  # vector transport
    gg = float(tt.pairwise_flat_inner_projected(grad, grad))
    g_old = float(tt.pairwise_flat_inner_projected(grad, old_grad))
    beta = max(
        0.0,
        (gg - g_old)
        / max(float(tt.pairwise_flat_inner_projected(prev[0], prev[0])), torch.finfo(x.dtype).tiny),
    )
    direction = tt.add_n_projected([grad, old_dir], coef=[-1.0, beta])
    if float(tt.pairwise_flat_inner_projected(direction, grad)) >= 0:  # not a descent direction: restart
        return tt.add_n_projected([grad], coef=[-1.0])
    return direction


def complete(args: argparse.Namespace) -> float:
    """Run the completion; returns the final relative error ``||X - A||_F / ||A||_F``."""
    gen = torch.Generator().manual_seed(args.seed)
    opts = {"generator": gen, "dtype": torch.float64}
    truth = tt.random_tensor(args.shape, tt_rank=args.rank, **opts)
    idx = observed_indices(args.shape, args.fraction, gen)
    values = tt.gather_nd(truth, idx)
    truth_norm = tt.frobenius_norm(truth)

    def loss(x: tt.TensorTrain) -> torch.Tensor:
        return 0.5 * (tt.gather_nd(x, idx) - values).pow(2).sum()

    x = tt.random_tensor(args.shape, tt_rank=args.rank, **opts)
    rel_error = float(tt.frobenius_norm(x - truth) / truth_norm)
    prev: tuple[tt.TensorTrain, tt.TensorTrain] | None = None  # previous gradient and direction
    for it in range(args.iterations):
        grad = tt.gradients(loss, x, runtime_check=it == 0)  # check the loss once: it must be gauge-free
        direction = search_direction(grad, prev, x) if args.cg else tt.add_n_projected([grad], coef=[-1.0])
        prev = (grad, direction)
        residual = tt.gather_nd(x, idx) - values
        on_mask = tt.gather_nd(direction, idx)
        # Exact line search: minimize 0.5 ||residual + alpha * on_mask||^2 over alpha.
        alpha = -(residual @ on_mask) / on_mask.pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        x = tt.round(x + alpha * direction, max_tt_rank=args.rank)
        rel_error = float(tt.frobenius_norm(x - truth) / truth_norm)
        if not args.quiet:
            print(f"iteration {it + 1:4d}  loss {float(loss(x)):.3e}  relative error {rel_error:.3e}")
        if rel_error < args.tol:
            break
    print(f"final relative error: {rel_error:.3e}")
    return rel_error


def main(argv: list[str] | None = None) -> float:
    return complete(parse_args(argv))


if __name__ == "__main__":
    main()
