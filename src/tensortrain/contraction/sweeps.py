"""Executors for the sweep plans of :mod:`tensortrain.contraction`, and what every executor shares.

Internal module (no public names): the planner in :mod:`tensortrain.contraction` decides *which* program to
run; this module and its two siblings run it. Here: merging consecutive cores into super-cores, a sweep's
steps (batched GEMMs over the state's slices; many narrow slices folded into one GEMM) and the inference sweep
(:func:`sweep`, large batches in chunks of rows through reused scratch), with the pieces the other executors
share (whether results may be written into given memory, autocast's casts of a custom Function's operands).
``contraction.full_plan`` runs the full plan (``W`` built from two halves, then one GEMM) and
``contraction.training_sweep`` the training sweep with its hand-written backward. Every executor is plain
reshape/permute/``mm`` on tensors whose shapes are Python ints, so it traces under
``torch.compile(fullgraph=True)`` and runs on any device and dtype.

Symbols: ``d`` cores, core ``k`` of shape ``(r_k, m_k, n_k, r_{k+1})``; ``M = prod m_k`` rows (outputs),
``N = prod n_k`` columns (inputs), ``B`` the flattened batch. A *group* ``[i, j)`` of consecutive cores is
merged into one super-core ``(ra, mg, ng, rb)`` before it is contracted with the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import workspace
from .._transforms import AUTOCAST_DTYPES, autocasting, legacy_batched, transforms_active
from . import machine as _machine
from .cost import prod

__all__: list[str] = []

Groups = tuple[tuple[int, int], ...]


def merge_cores(cores: Sequence[torch.Tensor], i: int, j: int) -> torch.Tensor:
    """Merge cores ``i..j-1`` into one super-core ``(ra, m_i...m_{j-1}, n_i...n_{j-1}, rb)``.

    Sequential products along the ranks, then one permute that gathers row modes before column modes.
    """
    c = cores[i]
    ra = int(c.shape[0])
    if j - i == 1:
        return c
    t = c.reshape(-1, c.shape[-1])
    modes: list[int] = [int(c.shape[1]), int(c.shape[2])]
    for k in range(i + 1, j):
        ck = cores[k]
        t = (t @ ck.reshape(ck.shape[0], -1)).reshape(-1, ck.shape[-1])
        modes += [int(ck.shape[1]), int(ck.shape[2])]
    rb = int(cores[j - 1].shape[-1])
    g = j - i
    perm = (0, *range(1, 2 * g + 1, 2), *range(2, 2 * g + 2, 2), 2 * g + 1)
    mg = prod(modes[0::2])
    ng = prod(modes[1::2])
    return t.reshape(ra, *modes, rb).permute(perm).reshape(ra, mg, ng, rb)


def _step(
    s: torch.Tensor, a: torch.Tensor, outer: int, k: int, p: int, eager_one: bool, fold: bool | None = None
) -> torch.Tensor:
    """``a (Q, K)`` applied to every ``(K, P)`` slice of the state ``s``: ``(outer, K, P) -> (outer, Q, P)``.

    With ``P == 1`` it is one GEMM. Otherwise ``torch.matmul`` runs a batched GEMM with ``a`` broadcast (no
    copies); when ``a`` requires grad it folds the batch into one GEMM instead, so that backward never
    materialises a per-slice gradient of ``a``. Many narrow slices (:func:`step_folds`; ``fold``, when given,
    decides instead) take one folded GEMM too (the result is then a transposed view). ``eager_one``: batch 1
    outside torch.compile, where a single slice is a plain GEMM and, without gradients for ``a``, ``bmm`` over an
    expanded ``a`` dispatches faster.
    """
    if p == 1:
        return s.reshape(outer, k) @ a.t()
    if eager_one and outer == 1:
        return a @ s.reshape(k, p)
    if step_folds(outer, k, p, int(a.shape[0]), s) if fold is None else fold and outer > 1:
        return folded(a, s, outer, k, p)
    if eager_one and not (a.requires_grad and torch.is_grad_enabled()):
        # a few us less dispatch than torch.matmul's broadcast for these small batch-1 states
        return torch.bmm(a.expand(outer, *a.shape), s.reshape(outer, k, p))
    return torch.matmul(a, s.reshape(outer, k, p))


def step_folds(outer: int, k: int, p: int, q: int, s: torch.Tensor) -> bool:
    """Whether a step of ``outer`` slices ``(K, P)`` and a ``(Q, K)`` super-core runs folded on ``s``'s device and
    dtype (``contraction.machine.folds_narrow``: many narrow slices, where a batched GEMM runs far below the GEMM
    rate). Not under torch.compile, nor for a symbolic batch (non-strict export): comparing it would specialise
    the graph (and a compiler generates its own kernels for the batched product); the planner prices no folds
    there either. Under autocast the precision the products run in decides (autocast's, for the dtypes it casts),
    on every path, where the planner, which does not see autocast, priced the cores' own dtype."""
    # (the cheap refusals first: this runs for every step of every call, batch 1 included)
    if not 1 < p <= _machine.FOLD_WIDEST or torch.compiler.is_compiling() or type(outer) is not int:
        return False
    if outer * k * p * q < _machine.NARROW_FOLD_MIN:
        return False
    kind = s.device.type
    item = s.element_size()
    if s.dtype in AUTOCAST_DTYPES and autocasting(kind):
        item = torch.get_autocast_dtype(kind).itemsize
    return _machine.folds_narrow(outer, k, p, q, item, _machine.narrow_fold(kind))


def folded(a: torch.Tensor, s: torch.Tensor, outer: int, k: int, p: int) -> torch.Tensor:
    """``a (Q, K)`` times every ``(K, P)`` slice of ``s`` as one tall GEMM: the slices transposed into
    ``(outer P, K)`` rows, times ``a^T``, the ``(outer, P, Q)`` product returned as an ``(outer, Q, P)`` view."""
    y = s.reshape(outer, k, p).transpose(1, 2).reshape(-1, k) @ a.t()
    return y.view(outer, p, a.shape[0]).transpose(1, 2)


def _eager_one(b: int) -> bool:
    # never compare a (possibly symbolic) batch size under torch.compile: it would specialise the graph
    return not torch.compiler.is_compiling() and type(b) is int and b == 1


Super = tuple[torch.Tensor, int, int]  # a group's super-core as the matrix a sweep step applies, its m_g, n_g


def supers_of(cores: Sequence[torch.Tensor], groups: Groups, direction: str) -> list[Super]:
    """Each group's super-core as the ``(Q, K)`` matrix its sweep step applies, with its ``m_g`` and ``n_g``."""
    return [super_of(cores, i, j, direction) for i, j in groups]


def super_of(cores: Sequence[torch.Tensor], i: int, j: int, direction: str) -> Super:
    """Group ``[i, j)``'s super-core as the ``(Q, K)`` matrix a sweep step applies, with ``m_g`` and ``n_g``."""
    c = cores[i] if j - i == 1 else merge_cores(cores, i, j)
    ra, mg, ng, rb = c.shape  # core shapes are static ints (parameters), even under torch.compile
    if direction == "rtl":
        return (c.reshape(ra * mg, ng * rb), mg, ng)
    return (c.permute(1, 3, 0, 2).reshape(mg * rb, ra * ng), mg, ng)


def sweep(x2d: torch.Tensor, supers: list[Super], direction: str, chunk: int | None = None) -> torch.Tensor:
    """Run a sweep over prepared super-cores (:func:`supers_of`), in chunks of ``chunk`` rows if given.

    Chunks keep large states in cache (inference); the super-cores are shared by all chunks. Chunked, every
    chunk's states go to the same two scratch buffers and its last step writes straight into its rows of the
    output: fresh multi-MiB states cost page faults on every chunk (a 32 MiB state measured 14 ms fresh against
    6 ms reused on the 2-core CPU), and how many depends on the allocator's history, not on the code.
    """
    if chunk is None or x2d.shape[0] <= chunk:
        return _steps(x2d, supers, direction)
    # which steps fold is decided on the whole batch, as the planner priced them, not on each chunk's rows
    folds = [step_folds(o, k, p, q, x2d) for o, k, p, q in step_layouts(x2d, supers, direction)]
    if not writable(x2d, *(a for a, _, _ in supers)):
        return torch.cat([_steps(xc, supers, direction, folds) for xc in x2d.split(chunk)])
    b = int(x2d.shape[0])
    order = list(reversed(supers)) if direction == "rtl" else supers
    y = torch.empty((b, prod([mg for _, mg, _ in supers])), dtype=x2d.dtype, device=x2d.device)
    # the largest intermediate state (every step's output but the last, which goes to y); the first chunk is
    # the largest
    inner = max((o * p * q for o, _, p, q in step_layouts(x2d[:chunk], supers, direction)[:-1]), default=0)
    with (
        workspace.scratch((inner,), x2d.dtype, x2d.device) as ping,
        workspace.scratch((inner,), x2d.dtype, x2d.device) as pong,
    ):
        for r0 in range(0, b, chunk):
            steps_into(
                x2d[r0 : r0 + chunk], supers, order, direction, y[r0 : r0 + chunk], (ping, pong), folds
            )
    return y


def steps_into(
    xc: torch.Tensor,
    supers: list[Super],
    order: list[Super],
    direction: str,
    out: torch.Tensor,
    bufs: tuple[torch.Tensor, torch.Tensor],
    folds: Sequence[bool] | None = None,
) -> None:
    """:func:`_steps` of one chunk without allocations: states alternate between ``bufs``, the last step writes
    ``out`` (the chunk's rows of the output); ``folds``: which steps fold (decided on the whole batch)."""
    steps = step_layouts(xc, supers, direction)
    s = xc
    for t, ((a, _, _), step) in enumerate(zip(order, steps, strict=True)):
        outer, _, p, q = step
        fold = None if folds is None else folds[t]
        s = slice_product(a, s, step, out if t == len(steps) - 1 else bufs[t % 2][: outer * q * p], fold)


def _steps(
    x2d: torch.Tensor, supers: list[Super], direction: str, folds: Sequence[bool] | None = None
) -> torch.Tensor:
    """Apply the super-cores to the state in sweep order: ``done`` output modes so far, ``rest`` input modes.

    Right to left (last group first) the state ``(B, N_left, n_g, r_b, M_right)`` is row-major, so every step reads
    its ``(n_g r_b, M_right)`` slices in place and writes ``(r_a m_g, M_right)`` ones, which are the next step's
    slices: no permutes. Left to right the state ``(B, M_left, r_a, n_g, N_right)`` maps its ``(r_a n_g,
    N_right)`` slices to ``(m_g r_b, N_right)`` ones the same way. ``folds``: which steps fold (by default each
    step decides, :func:`step_folds`).
    """
    b = x2d.shape[0]  # may be symbolic under torch.compile(dynamic=True): never int() it
    one = _eager_one(b)
    s = x2d
    done, rest = 1, int(x2d.shape[1])
    for t, (a, mg, ng) in enumerate(reversed(supers) if direction == "rtl" else supers):
        rest //= ng
        outer, p = (rest, done) if direction == "rtl" else (done, rest)
        s = _step(s, a, b * outer, a.shape[1], p, one, None if folds is None else folds[t])
        done *= mg
    return s.reshape(b, done)


def recording(*ts: torch.Tensor) -> bool:
    """Whether autograd records ops on these tensors now, or they are batched gradients (then no out= writes into
    scratch)."""
    return (torch.is_grad_enabled() and any(t.requires_grad for t in ts)) or legacy_batched(*ts)


def writable(*ts: torch.Tensor) -> bool:
    """Whether results may be written into given memory (``out=``): not while autograd records these tensors, nor
    under a transform's wrapped tensors or autocast's casts."""
    return not (recording(*ts) or transforms_active() or autocasting(ts[0].device.type))


def autocast_inputs(*ts: torch.Tensor | None) -> tuple[Any, ...]:
    """The operands of a custom Function cast as autocast casts a matmul's (to its lower precision), if enabled;
    float64 (and complex) operands stay as they are, as autocast leaves them.

    Autocast does not reach into a Function's backward: without this cast, a half-precision output gradient
    would meet full-precision saved operands there. The casts are recorded by autograd outside the Function, so
    the gradients come back in the operands' own dtypes.
    """
    first = next(t for t in ts if t is not None)
    kind = first.device.type
    if not autocasting(kind):
        return ts
    low = torch.get_autocast_dtype(kind)
    return tuple(t.to(low) if t is not None and t.dtype in AUTOCAST_DTYPES else t for t in ts)


def step_layouts(x2d: torch.Tensor, supers: list[Super], direction: str) -> list[tuple[int, int, int, int]]:
    """``(outer, K, P, Q)`` of every step of a sweep, in execution order (as :func:`_steps` walks it)."""
    b = int(x2d.shape[0])
    steps = []
    done, rest = 1, int(x2d.shape[1])
    for a, mg, ng in reversed(supers) if direction == "rtl" else supers:
        rest //= ng
        outer, p = (rest, done) if direction == "rtl" else (done, rest)
        steps.append((b * outer, int(a.shape[1]), p, int(a.shape[0])))
        done *= mg
    return steps


def slice_product(
    a: torch.Tensor,
    s: torch.Tensor,
    step: tuple[int, int, int, int],
    out: torch.Tensor | None = None,
    fold: bool | None = None,
) -> torch.Tensor:
    """One sweep step ``(outer, K, P, Q)``: ``a (Q, K)`` times every ``(K, P)`` slice of the state ``s``, in place
    (``bmm`` over ``a`` broadcast; one GEMM when ``P == 1``; many narrow slices folded into one GEMM,
    :func:`step_folds`, or as ``fold`` says when given), into ``out`` (contiguous, any shape) if given."""
    outer, k, p, q = step
    if p == 1:
        return torch.mm(s.reshape(outer, k), a.t(), out=None if out is None else out.view(outer, q))
    # (a whole batch's decision, ``fold``, for a chunk of one row: never fold a single slice)
    if step_folds(outer, k, p, q, s) if fold is None else fold and outer > 1:
        y = folded(a, s, outer, k, p)
        return y.contiguous() if out is None else out.view(outer, q, p).copy_(y)
    return torch.bmm(
        a.expand(outer, q, k), s.reshape(outer, k, p), out=None if out is None else out.view(outer, q, p)
    )
