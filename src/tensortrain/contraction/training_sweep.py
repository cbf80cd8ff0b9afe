"""The training sweep: :class:`SweepFunction` (a hand-written backward) and :func:`sweep_trained`.

Internal module (no public names), beside ``contraction.sweeps`` (the sweeps), whose steps it runs forward (its
slice products, the narrow folds, the layout of every step) and transposed for backward. :func:`sweep_trained`
runs a training sweep through :class:`SweepFunction`, or through autograd's own ops under a transform and for
complex operands; with ``recompute`` the step inputs are not kept for backward but recomputed there, in reused
scratch.

Symbols: as in ``contraction.sweeps``; a step ``(outer, K, P, Q)`` applies a ``(Q, K)`` super-core to ``outer``
slices ``(K, P)`` of the state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .. import workspace
from .._transforms import transforms_active
from . import cost as _cost
from . import sweeps as _exec
from .sweeps import Super

__all__: list[str] = []


def _sweep_states(
    x2d: torch.Tensor,
    order: Sequence[torch.Tensor],
    steps: list[tuple[int, int, int, int]],
    out: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs of every step of a sweep and its output: ``bmm`` over the state's ``(K, P)`` slices in place;
    the last step writes ``out`` when given."""
    s = x2d
    states = []
    for t, (a, step) in enumerate(zip(order, steps, strict=True)):
        states.append(s)
        s = _exec.slice_product(a, s, step, out if t == len(steps) - 1 else None)
    return states, s


def _long_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a small ``(q, k)`` result over a long inner dimension (a super-core's gradient summed over
    the batch), as ``(b^T a^T)^T`` when ``q > k``: MKL sums a tall-output product of this shape almost
    sequentially along the inner dimension, measured 5x slower and 12x less accurate in float32 (64 x 4 over
    131,072: 10.4 ms and 6.5e-6 relative error against 2.1 ms and 5.4e-7), and the transposed one well."""
    if a.shape[0] > b.shape[1]:
        return (b.t() @ a.t()).t().contiguous()
    return a @ b


def _sweep_grads(
    steps: list[tuple[int, int, int, int]],
    states: Sequence[torch.Tensor],
    order: Sequence[torch.Tensor],
    gy: torch.Tensor,
    need_x: bool,
    need: Sequence[bool] | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Gradients of a sweep's input and of its super-cores (in step order) from the output's gradient;
    ``need``: which super-cores need one, in step order (all by default; ``states`` is read only for those)."""
    n = len(steps)
    grads: list[torch.Tensor | None] = []
    g = gy
    for t in range(n - 1, -1, -1):
        outer, k, p, q = steps[t]
        a = order[t]
        want = need is None or need[t]
        need_state = t > 0 or need_x  # the state gradient of step 0 is x's
        if p == 1:
            g2 = g.reshape(outer, q)
            grads.append(_long_product(g2.t(), states[t].reshape(outer, k)) if want else None)
            if need_state:
                g = g2 @ a
        else:
            g3 = g.reshape(outer, q, p)
            narrow = _exec.step_folds(outer, k, p, q, g3)
            if not want:
                grads.append(None)
            elif (
                q * k <= p * (q + k) and not narrow
            ):  # per-slice products are smaller than the permuted copies
                grads.append(torch.bmm(g3, states[t].reshape(outer, k, p).transpose(1, 2)).sum(0))
            else:
                s3 = states[t].reshape(outer, k, p)
                grads.append(
                    _long_product(
                        g3.transpose(0, 1).reshape(q, outer * p), s3.transpose(1, 2).reshape(outer * p, k)
                    )
                )
            if need_state:
                # the transposed step, (K, Q) times (Q, P) slices
                # (folds_narrow is symmetric in K and Q: the same decision as the forward step's)
                g = (
                    _exec.folded(a.t(), g3, outer, q, p)
                    if narrow
                    else torch.bmm(a.t().expand(outer, k, q), g3)
                )
    return (g if need_x else None), grads[::-1]


class SweepFunction(torch.autograd.Function):
    """A training sweep with hand-written backward: batched GEMMs over the state's slices, no folding copies.

    Autograd's ``torch.matmul`` folds a broadcast batched product whose weight needs a gradient into one GEMM,
    which transposes the state into a copy on the way in and again on the way out, in forward and backward alike
    (on a 2-core CPU those copies took ~40% of a 768x3072 rank-16 training step). Here the forward runs
    ``bmm`` over the ``(K, P)`` slices in place and keeps the step inputs; backward gets the state gradients the
    same way and each super-core's gradient either as one GEMM over permuted copies or as a sum of per-slice
    products, whichever moves fewer numbers. Under a double backward (``create_graph=True``) the step inputs
    are recomputed from ``x`` with grad mode on, so the same formulas are recorded and differentiable.

    With ``recompute``, forward keeps only ``x`` and the super-cores (its states alternate between two reused
    scratch buffers), and backward recomputes the step inputs first, into scratch too (one more forward sweep
    short of its last step): the plan's activation memory for a step's time.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x2d: torch.Tensor,
        direction: str,
        meta: tuple[tuple[int, int], ...],
        recompute: bool,
        *mats: torch.Tensor,
    ) -> torch.Tensor:
        supers = [(a, mg, ng) for a, (mg, ng) in zip(mats, meta, strict=True)]
        run = list(reversed(supers)) if direction == "rtl" else supers  # in execution order
        order = [a for a, _, _ in run]
        steps = _exec.step_layouts(x2d, supers, direction)
        ctx.steps = steps
        ctx.direction = direction
        ctx.x_shape = tuple(x2d.shape)
        ctx.recompute = recompute
        # the step inputs serve the super-cores' gradients only: frozen cores (an input that needs a gradient
        # through them) keep none
        need = ctx.needs_input_grad[4:]
        ctx.need = list(reversed(need)) if direction == "rtl" else list(need)  # in execution order
        ctx.states = any(need)
        m = _cost.prod([mg for mg, _ in meta])
        # the last step writes an output tensor of its own: a view (of that step's result) would be one made
        # inside this Function, which autograd refuses to modify in place (nn.ReLU(inplace=True), y += residual),
        # as it allows for nn.Linear's output
        if not ctx.states:
            ctx.save_for_backward(*order)
            s = x2d  # (no list of states: each is freed once used, and the output made for the last step only)
            for a, step in zip(order[:-1], steps[:-1], strict=True):
                s = _exec.slice_product(a, s, step)
            y = torch.empty((x2d.shape[0], m), dtype=x2d.dtype, device=x2d.device)
            _exec.slice_product(order[-1], s, steps[-1], y)
            return y
        y = torch.empty((x2d.shape[0], m), dtype=x2d.dtype, device=x2d.device)
        if recompute:  # the states are not kept: they alternate between (up to) two reused scratch buffers
            ctx.save_for_backward(x2d, *order)
            inner = max((o * p * q for o, _, p, q in steps[:-1]), default=0)
            with contextlib.ExitStack() as borrowed:  # (one buffer held, not two, for a single intermediate)
                ping = borrowed.enter_context(workspace.scratch((inner,), x2d.dtype, x2d.device))
                pong = ping
                if len(steps) > 2:
                    pong = borrowed.enter_context(workspace.scratch((inner,), x2d.dtype, x2d.device))
                _exec.steps_into(x2d, supers, run, direction, y, (ping, pong))
            return y
        states, _ = _sweep_states(x2d, order, steps, y)
        ctx.save_for_backward(*states, *order)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Any:  # type: ignore[override]
        n = 0 if not ctx.states else 1 if ctx.recompute else len(ctx.steps)
        saved = ctx.saved_tensors  # once: under activation checkpointing each unpack may run only once
        states, order = saved[:n], saved[n:]
        with contextlib.ExitStack() as borrowed:
            if not ctx.states:
                pass  # only the input's gradient: the super-cores alone give it
            elif torch.is_grad_enabled():  # double backward: the saved states carry no graph; recompute them
                states, _ = _sweep_states(states[0], order, ctx.steps)
            elif ctx.recompute:  # the step inputs again (every step but the last), in reused scratch
                x0 = states[0]
                states = [x0]
                for a, step in zip(order[:-1], ctx.steps[:-1], strict=True):
                    outer, _, p, q = step
                    buf = borrowed.enter_context(workspace.scratch((outer * q * p,), x0.dtype, x0.device))
                    states.append(_exec.slice_product(a, states[-1], step, out=buf))
            # a broadcast gradient (that of y.sum(): stride 0) would make bmm copy it one slice at a time
            gx, grads = _sweep_grads(
                ctx.steps, states, order, gy.contiguous(), ctx.needs_input_grad[0], ctx.need
            )
        mat_grads = grads[::-1] if ctx.direction == "rtl" else grads
        return (None if gx is None else gx.reshape(ctx.x_shape), None, None, None, *mat_grads)


def sweep_trained(
    x2d: torch.Tensor, supers: list[Super], direction: str, recompute: bool = False
) -> torch.Tensor:
    """A sweep whose backward is :class:`SweepFunction`'s (eager training; traced calls keep autograd's).

    Complex operands take autograd's ops too: the hand-written backwards (here and in :class:`FullLinear`) use
    plain transposes, which are the adjoints of real products only. There ``recompute`` runs the sweep under
    ``torch.utils.checkpoint``; under torch.compile and torch.func the step inputs are kept (the compiler's
    partitioner decides what a compiled backward keeps).
    """
    complex_ = x2d.is_complex() or supers[0][0].is_complex()
    if transforms_active() or (complex_ and not recompute):
        return _exec.sweep(x2d, supers, direction)
    meta = tuple((mg, ng) for _, mg, ng in supers)
    if complex_:
        return checkpoint(_sweep_mats, x2d, direction, meta, *(a for a, _, _ in supers), use_reentrant=False)
    x2d, *mats = _exec.autocast_inputs(x2d, *(a for a, _, _ in supers))
    return SweepFunction.apply(x2d, direction, meta, recompute, *mats)


def _sweep_mats(
    x2d: torch.Tensor, direction: str, meta: tuple[tuple[int, int], ...], *mats: torch.Tensor
) -> torch.Tensor:
    return _exec.sweep(x2d, [(a, mg, ng) for a, (mg, ng) in zip(mats, meta, strict=True)], direction)
