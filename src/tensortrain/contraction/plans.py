"""The contraction plan: :class:`ContractionPlan`, what a program does and what it costs, and the strategies.

Internal module: :mod:`tensortrain.contraction` exports :class:`ContractionPlan`, :data:`Strategy` and
:data:`STRATEGIES`. A plan describes a program (``contraction.cost.Program``, the part the executors run) with
the costs the cost model (``contraction.cost``) estimates for one batch size; :func:`make_plan` prices a program
into one. The planning around it follows in data-flow order: ``contraction.checks`` (checking the planner's
operands), ``contraction.plan_cache`` (the program each call runs, chosen by the search over plans,
``contraction.search``, or timed, once per cache key) and ``contraction.inspection`` (:func:`plan`,
:func:`enumerate_plans`, :func:`flop_floor`: what the planner would run, every candidate, the fewest FLOPs of any
order).

Symbols: ``d`` cores; core ``k`` has shape ``(r_k, m_k, n_k, r_{k+1})``; ``B`` the flattened batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from . import cost as _cost
from . import machine as _machine

__all__ = ["ContractionPlan", "Strategy", "STRATEGIES"]


Strategy = Literal["auto", "tune", "full", "grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Groups = _cost.Groups
Program = _cost.Program
Dims = _cost.Dims
_prod = _cost.prod


@dataclasses.dataclass(frozen=True)
class ContractionPlan:
    """A chosen (or candidate) way to compute ``x @ W^T`` and its estimated cost.

    Attributes:
        kind: ``"full"`` (build W, one GEMM) or ``"sweep"`` (contract merged core groups one at a time).
        direction: ``"rtl"`` or ``"ltr"`` for a sweep; for ``full``, ``"keep"`` (backward keeps the dense W) or
            ``"recompute"`` (backward rebuilds W from the halves: less memory, one more build).
        groups: core ranges ``(start, stop)`` in core order; for ``full`` the two halves.
        row_dims, col_dims, tt_ranks: the TT-matrix's modes and ranks.
        batch_size: the batch size the costs are computed for.
        requires_grad: whether backward is priced in.
        flops_forward, flops_backward: estimated FLOPs (backward 0 when not training).
        bytes_forward: estimated memory traffic of the forward pass.
        saved_bytes: activations the plan keeps for backward (0 when not training).
        est_seconds: the cost model's time for forward (+ backward when training).
        recompute: whether backward recomputes what it needs instead of keeping it (W for a full plan, the
            step inputs for a sweep); always False without gradients.
        input_grad, cores_grad: which gradients the priced backward computes: the input's (False for a first
            layer, whose input needs none) and the cores' (False for a frozen layer; a layer with only some
            cores frozen is priced as if every core trained). Both True without gradients.
        merges_cached: priced without merging some core groups (a sweep's) or halves (a full plan's), which a
            layer keeps between inference calls (``TTLinear.plan`` without gradients); a plan run elsewhere
            merges them, at FLOPs not counted here.
    """

    kind: Literal["full", "sweep"]
    direction: Literal["rtl", "ltr", "keep", "recompute"] | None
    groups: Groups
    row_dims: tuple[int, ...]
    col_dims: tuple[int, ...]
    tt_ranks: tuple[int, ...]
    batch_size: int
    requires_grad: bool
    flops_forward: int
    flops_backward: int
    bytes_forward: int
    saved_bytes: int
    est_seconds: float
    recompute: bool = False
    input_grad: bool = True
    cores_grad: bool = True
    merges_cached: bool = False

    @property
    def dense_flops(self) -> int:
        """FLOPs of the dense product ``x @ W^T`` (``2 B M N``), for comparison."""
        return 2 * self.batch_size * _prod(self.row_dims) * _prod(self.col_dims)

    def _keeps_input(self) -> bool:
        """Whether backward reads the input itself (for the cores' gradients), so that whoever made it keeps it
        alive: not a copy of it (a folded first sweep step, counted in :attr:`saved_bytes`), and not without
        gradients for the cores."""
        if not (self.requires_grad and self.cores_grad):
            return False
        if self.kind != "sweep" or self.direction is None:
            return True
        dims = (self.row_dims, self.col_dims, self.tt_ranks)
        return not _cost.input_copied(dims, self.groups, self.direction, self.batch_size, self.recompute)

    @property
    def program(self) -> Program:
        """The part of the plan the executors need (batch-size independent)."""
        kind = "resweep" if self.kind == "sweep" and self.recompute else self.kind
        return (kind, self.direction, self.groups)

    def describe(self) -> str:
        """Short name, e.g. ``"sweep rtl [0:2][2:4]"`` or ``"full (W from halves split at core 2, one GEMM)"``."""
        # (what backward keeps or recomputes only where it reads it: W for the input's gradient, a sweep's step
        # inputs for the cores')
        if self.kind == "full":
            how = ""
            if self.requires_grad and self.input_grad:
                how = ", W rebuilt in backward" if self.direction == "recompute" else ", W kept for backward"
            return f"full (W from halves split at core {self.groups[0][1]}, one GEMM{how})"
        grp = "".join(f"[{i}:{j}]" for i, j in self.groups)
        return f"sweep {self.direction} {grp}" + (
            ", step inputs recomputed in backward" if self.recompute and self.cores_grad else ""
        )

    def __str__(self) -> str:
        m, n = _prod(self.row_dims), _prod(self.col_dims)
        dense = f"the dense product's {self.dense_flops / 1e9:.3g} GFLOP"
        if self.dense_flops == 0:  # batch 0: no ratio to speak of
            vs = f"against {dense}"
        else:
            ratio = self.dense_flops / max(self.flops_forward, 1)
            even = "1.00" in (f"{ratio:.2f}", f"{1 / ratio:.2f}")  # ("1.00x fewer" read as a contradiction)
            if even:
                vs = f"about as many as {dense}"
            else:
                vs = (f"{ratio:.2f}x fewer" if ratio >= 1 else f"{1 / ratio:.2f}x more") + f" than {dense}"
        if self.merges_cached:
            vs += "; the layer's cached merges not counted"
        s = (
            f"ContractionPlan: {self.describe()} for a {m}x{n} TT-matrix {self.row_dims}x{self.col_dims}, "
            f"ranks {self.tt_ranks}, batch {self.batch_size}: forward {self.flops_forward / 1e9:.3g} GFLOP ({vs})"
        )
        if self.requires_grad:
            only = (
                "" if self.input_grad and self.cores_grad else " (input)" if self.input_grad else " (cores)"
            )
            s += (
                f", backward{only} {self.flops_backward / 1e9:.3g} GFLOP, "
                f"activations kept {self.saved_bytes / 2**20:.3g} MiB"
            )
        return s + f", est. {self.est_seconds * 1e3:.3g} ms"


def make_plan(
    dims: Dims,
    prog: Program,
    batch: int,
    item: int,
    device_type: str,
    grad: bool,
    cached: bool = False,
    need: _cost.Need = _cost.BOTH,
) -> ContractionPlan:
    m = _machine.machine(device_type, item)
    need = need if grad else _cost.BOTH
    f, bf, t, saved, est = _cost.estimate(dims, prog, batch, item, grad, m, cached, need)
    kind, direction, groups = prog
    return ContractionPlan(
        kind="sweep" if kind == "resweep" else kind,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        groups=groups,
        row_dims=dims[0],
        col_dims=dims[1],
        tt_ranks=dims[2],
        batch_size=int(batch),
        requires_grad=grad,
        flops_forward=f,
        flops_backward=bf,
        bytes_forward=t,
        saved_bytes=saved,
        est_seconds=est,
        recompute=grad and (kind == "resweep" or direction == "recompute"),
        input_grad=need[0],
        cores_grad=need[1],
        # (a group or half too large to keep is merged on every call: only where some merge was left out)
        merges_cached=cached
        and not grad
        and f < _cost.estimate(dims, prog, batch, item, grad, m, False, need)[0],
    )
