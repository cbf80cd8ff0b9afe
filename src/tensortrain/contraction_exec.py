"""Executors for the plans of :mod:`tensortrain.contraction`: ``y = x @ W^T`` on raw TT-matrix cores.

Internal module (no public names): the planner in :mod:`tensortrain.contraction` decides *which* program to
run; this module runs it. Every executor is plain reshape/permute/``mm`` on tensors whose shapes are Python
ints, so it traces under ``torch.compile(fullgraph=True)`` and runs on any device and dtype.

Symbols: ``d`` cores, core ``k`` of shape ``(r_k, m_k, n_k, r_{k+1})``; ``M = prod m_k`` rows (outputs),
``N = prod n_k`` columns (inputs), ``B`` the flattened batch. A *group* ``[i, j)`` of consecutive cores is
merged into one super-core ``(ra, mg, ng, rb)`` before it is contracted with the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from . import contraction_machine as _machine
from . import workspace
from ._transforms import AUTOCAST_DTYPES, autocasting, grad_recorded, legacy_batched, transforms_active

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
    mg = _prod(modes[0::2])
    ng = _prod(modes[1::2])
    return t.reshape(ra, *modes, rb).permute(perm).reshape(ra, mg, ng, rb)


def _prod(xs: Sequence[int]) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _step(
    s: torch.Tensor, a: torch.Tensor, outer: int, k: int, p: int, eager_one: bool, fold: bool | None = None
) -> torch.Tensor:
    """``a (Q, K)`` applied to every ``(K, P)`` slice of the state ``s``: ``(outer, K, P) -> (outer, Q, P)``.

    With ``P == 1`` it is one GEMM. Otherwise ``torch.matmul`` runs a batched GEMM with ``a`` broadcast (no
    copies); when ``a`` requires grad it folds the batch into one GEMM instead, so that backward never
    materialises a per-slice gradient of ``a``. Many narrow slices (:func:`_folds`; ``fold``, when given,
    decides instead) take one folded GEMM too (the result is then a transposed view). ``eager_one``: batch 1
    outside torch.compile, where a single slice is a plain GEMM and, without gradients for ``a``, ``bmm`` over an
    expanded ``a`` dispatches faster.
    """
    if p == 1:
        return s.reshape(outer, k) @ a.t()
    if eager_one and outer == 1:
        return a @ s.reshape(k, p)
    if _folds(outer, k, p, int(a.shape[0]), s) if fold is None else fold and outer > 1:
        return _folded(a, s, outer, k, p)
    if eager_one and not (a.requires_grad and torch.is_grad_enabled()):
        # a few us less dispatch than torch.matmul's broadcast for these small batch-1 states
        return torch.bmm(a.expand(outer, *a.shape), s.reshape(outer, k, p))
    return torch.matmul(a, s.reshape(outer, k, p))


def _folds(outer: int, k: int, p: int, q: int, s: torch.Tensor) -> bool:
    """Whether a step of ``outer`` slices ``(K, P)`` and a ``(Q, K)`` super-core runs folded on ``s``'s device and
    dtype (``contraction_machine.folds_narrow``: many narrow slices, where a batched GEMM runs far below the GEMM
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


def _folded(a: torch.Tensor, s: torch.Tensor, outer: int, k: int, p: int) -> torch.Tensor:
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
    folds = [_folds(o, k, p, q, x2d) for o, k, p, q in _layout(x2d, supers, direction)]
    if not _writable(x2d, *(a for a, _, _ in supers)):
        return torch.cat([_steps(xc, supers, direction, folds) for xc in x2d.split(chunk)])
    b = int(x2d.shape[0])
    order = list(reversed(supers)) if direction == "rtl" else supers
    y = torch.empty((b, _prod([mg for _, mg, _ in supers])), dtype=x2d.dtype, device=x2d.device)
    # the largest intermediate state (every step's output but the last, which goes to y); the first chunk is
    # the largest
    inner = max((o * p * q for o, _, p, q in _layout(x2d[:chunk], supers, direction)[:-1]), default=0)
    with (
        workspace.scratch((inner,), x2d.dtype, x2d.device) as ping,
        workspace.scratch((inner,), x2d.dtype, x2d.device) as pong,
    ):
        for r0 in range(0, b, chunk):
            _steps_into(
                x2d[r0 : r0 + chunk], supers, order, direction, y[r0 : r0 + chunk], (ping, pong), folds
            )
    return y


def _steps_into(
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
    steps = _layout(xc, supers, direction)
    s = xc
    for t, ((a, _, _), step) in enumerate(zip(order, steps, strict=True)):
        outer, _, p, q = step
        fold = None if folds is None else folds[t]
        s = _slice_product(a, s, step, out if t == len(steps) - 1 else bufs[t % 2][: outer * q * p], fold)


def _steps(
    x2d: torch.Tensor, supers: list[Super], direction: str, folds: Sequence[bool] | None = None
) -> torch.Tensor:
    """Apply the super-cores to the state in sweep order: ``done`` output modes so far, ``rest`` input modes.

    Right to left (last group first) the state ``(B, N_left, n_g, r_b, M_right)`` is row-major, so every step reads
    its ``(n_g r_b, M_right)`` slices in place and writes ``(r_a m_g, M_right)`` ones, which are the next step's
    slices: no permutes. Left to right the state ``(B, M_left, r_a, n_g, N_right)`` maps its ``(r_a n_g,
    N_right)`` slices to ``(m_g r_b, N_right)`` ones the same way. ``folds``: which steps fold (by default each
    step decides, :func:`_folds`).
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


def halves(cores: Sequence[torch.Tensor], split: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The two merged halves of W as matrices ``L (M_L*N_L, r)`` and ``R (r, M_R*N_R)``, and their dims."""
    d = len(cores)
    left = merge_cores(cores, 0, split)
    _, ml, nl, r = (int(v) for v in left.shape)
    if split < d:
        right = merge_cores(cores, split, d)
        _, mr, nr, _ = (int(v) for v in right.shape)
        rmat = right.reshape(r, mr * nr)
    else:  # d == 1: the right half is the scalar 1
        mr = nr = 1
        rmat = torch.ones((1, 1), dtype=left.dtype, device=left.device)
    return left.reshape(ml * nl, r), rmat, (ml, nl, mr, nr)


# A W over contraction_machine.BLOCKED_ABOVE bytes (or its gradient) is built (or permuted) in blocks of left row
# indices whose GEMM output (BLOCK_BYTES, in reused scratch) is permuted into W while it is still in cache, instead
# of one GEMM whose M*N output makes a round trip through memory first; a temporary W also lives in reused scratch
# (tensortrain.workspace).
def _blocks(dims: tuple[int, ...], t: torch.Tensor) -> int:
    """Left row indices per block of the blocked build of ``t``'s W; 0 when W is built whole (small W, a device
    without page faults to avoid, or compiling)."""
    if transforms_active():
        return 0
    return _machine.block_rows(dims, t.element_size(), _machine.cache_cliffs(t.device.type))


def _recording(*ts: torch.Tensor) -> bool:
    """Whether autograd records ops on these tensors now, or they are batched gradients (then no out= writes into
    scratch)."""
    return (torch.is_grad_enabled() and any(t.requires_grad for t in ts)) or legacy_batched(*ts)


def build_full(
    lmat: torch.Tensor, rmat: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """W (M, N) from its halves (into ``out``, a contiguous M x N tensor, when given).

    Where one left row index's slice of W is a large product (``contraction_machine.sliced_build``) and nothing
    records the build: one batched GEMM per left row index straight into W (:func:`_build_sliced`). Otherwise, a W
    over ``BLOCKED_ABOVE`` bytes: one GEMM per block of left row indices into reused scratch, each block's output
    permuted into W while it is still in cache. A smaller one: for small ranks one GEMM per pair of (left,
    right) row indices, written straight into W's layout (the operands broadcast, ``O(M (N_L + N_R) r)``
    copies); for larger ranks one GEMM and one permute of W.
    """
    ml, nl, mr, nr = dims
    r = int(lmat.shape[1])
    if _machine.sliced_build(dims, r) and _writable(lmat, rmat):
        return _build_sliced(lmat, rmat, dims, out)
    bs = _blocks(dims, lmat)
    if not bs:
        if _machine.batched_build(r, nl, nr):
            right = rmat.reshape(r, mr, nr).transpose(0, 1)  # (M_R, r, N_R)
            w = torch.matmul(
                lmat.reshape(ml, 1, nl, r), right, out=None if out is None else out.view(ml, mr, nl, nr)
            )
            return w.view(ml * mr, nl * nr)
        if out is None:
            return (lmat @ rmat).reshape(ml, nl, mr, nr).permute(0, 2, 1, 3).reshape(ml * mr, nl * nr)
        bs = ml  # into out: one block, its GEMM output in scratch
    w4 = (torch.empty((ml, mr, nl, nr), dtype=lmat.dtype, device=lmat.device) if out is None else out).view(
        ml, mr, nl, nr
    )
    lm3 = lmat.reshape(ml, nl, r)
    # no out= writes while autograd records, nor under autocast (mm.out does not cast: the halves may differ in
    # dtype there) or a transform
    record = not _writable(lmat, rmat)
    with workspace.scratch((bs * nl, mr * nr), lmat.dtype, lmat.device) as blk:
        for a in range(0, ml, bs):
            b = min(ml, a + bs)
            lhs = lm3[a:b].reshape(-1, r)
            part = lhs @ rmat if record else torch.mm(lhs, rmat, out=blk[: (b - a) * nl])
            w4[a:b].copy_(part.view(b - a, nl, mr, nr).permute(0, 2, 1, 3))
    return w4.view(ml * mr, nl * nr)


def _writable(*ts: torch.Tensor) -> bool:
    """Whether results may be written into given memory (``out=``): not while autograd records these tensors, nor
    under a transform's wrapped tensors or autocast's casts."""
    return not (_recording(*ts) or transforms_active() or autocasting(ts[0].device.type))


def _build_sliced(
    lmat: torch.Tensor, rmat: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor | None
) -> torch.Tensor:
    """W written in its own layout one left row index ``a`` at a time: ``W[a, b] = L[a] @ R[b]`` for every right
    row index ``b``, one batched GEMM per ``a`` with ``L[a]`` broadcast (no copies) into W's rows, so W is streamed
    to memory once and never permuted."""
    ml, nl, mr, nr = dims
    r = int(lmat.shape[1])
    w4 = (torch.empty((ml, mr, nl, nr), dtype=lmat.dtype, device=lmat.device) if out is None else out).view(
        ml, mr, nl, nr
    )
    lm3 = lmat.reshape(ml, nl, r)
    # (M_R, r, N_R); the small right half is copied once so that every slice reads it contiguously
    right = rmat.reshape(r, mr, nr).transpose(0, 1).contiguous()
    for a in range(ml):
        torch.bmm(lm3[a].expand(mr, nl, r), right, out=w4[a])
    return w4.view(ml * mr, nl * nr)


def _grad_halves(
    gw: torch.Tensor, lmat: torch.Tensor, rmat: torch.Tensor, dims: tuple[int, ...], need: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of L and R from the gradient of W (M, N), the transposes of :func:`build_full`'s products."""
    ml, nl, mr, nr = dims
    r = int(lmat.shape[1])
    gl = gr = None
    bs = _blocks(dims, gw)
    if not bs and _machine.batched_build(r, nl, nr):
        gw4 = gw.reshape(ml, mr, nl, nr)
        if need[0]:
            gl = torch.matmul(gw4, rmat.reshape(r, mr, nr).permute(1, 2, 0)).sum(1).reshape(ml * nl, r)
        if need[1]:
            gr4 = torch.matmul(lmat.reshape(ml, 1, nl, r).transpose(-1, -2), gw4).sum(0)  # (M_R, r, N_R)
            gr = gr4.transpose(0, 1).reshape(r, mr * nr)
        return gl, gr
    if not bs:
        g = gw.reshape(ml, mr, nl, nr).permute(0, 2, 1, 3).reshape(ml * nl, mr * nr)
        if need[0]:
            gl = g @ rmat.t()
        if need[1]:
            gr = lmat.t() @ g
        return gl, gr
    # large dW: permute a block of left row indices at a time (into reused scratch) and use it while in cache
    gw4 = gw.reshape(ml, mr, nl, nr)
    record = _recording(gw, lmat, rmat)
    gls = []
    with workspace.scratch((bs, nl, mr, nr), gw.dtype, gw.device) as blk:
        for a in range(0, ml, bs):
            b = min(ml, a + bs)
            src = gw4[a:b].permute(0, 2, 1, 3)
            g = (src.reshape(-1, mr * nr) if record else blk[: b - a].copy_(src)).reshape(
                (b - a) * nl, mr * nr
            )
            if need[0]:
                gls.append(g @ rmat.t())
            if need[1]:
                part = lmat[a * nl : b * nl].t() @ g
                gr = part if gr is None else (gr + part if record else gr.add_(part))
    return (torch.cat(gls) if need[0] else None), gr


def _autocast_inputs(*ts: torch.Tensor | None) -> tuple[Any, ...]:
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


@contextlib.contextmanager
def _built(lmat: torch.Tensor, rmat: torch.Tensor, dims: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """W for use inside the block only, built into reused scratch memory (no page faults) when it is large."""
    ml, nl, mr, nr = dims
    # (a double backward records the build: no out= writes then; nor under a transform). Not only a blocked W:
    # any W of MiBs is faulted in afresh on every call when the allocator hands back new pages
    if torch.is_grad_enabled() or transforms_active() or autocasting(lmat.device.type):
        yield build_full(lmat, rmat, dims)
        return
    with workspace.scratch((ml * mr, nl * nr), lmat.dtype, lmat.device) as w:
        yield build_full(lmat, rmat, dims, out=w)


@contextlib.contextmanager
def _weight_grad(gy: torch.Tensor, x2d: torch.Tensor) -> Iterator[torch.Tensor]:
    """``gy^T x``, the gradient of W, for use inside the block only (in reused scratch when large)."""
    if torch.is_grad_enabled() or legacy_batched(gy):  # a double backward records this product; a batched gy
        yield gy.t() @ x2d  # cannot be written into a plain buffer
        return
    with workspace.scratch((gy.shape[1], x2d.shape[1]), gy.dtype, gy.device) as gw:
        yield torch.mm(gy.t(), x2d, out=gw)


def _linear(x2d: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x2d @ w.t() if bias is None else torch.addmm(bias, x2d, w.t())


class FullLinear(torch.autograd.Function):
    """``y = x @ W^T (+ bias)`` with ``W`` built from its two halves; backward either keeps ``W`` or rebuilds it.

    With ``keep=False`` it saves ``x`` and the halves (``O((M_L N_L + M_R N_R) r)`` numbers) rather than the
    dense ``W`` (``M N``), at the price of rebuilding ``W`` in backward; a large rebuilt ``W`` and the gradient
    of ``W`` live in reused scratch memory (:mod:`tensortrain.workspace`). Either way the halves' gradients come
    from the gradient of ``W`` without autograd's bookkeeping of the build. The bias is fused into the GEMM
    (``addmm``, as ``nn.Linear``), saving a pass over the output.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x2d: torch.Tensor,
        lmat: torch.Tensor,
        rmat: torch.Tensor,
        bias: torch.Tensor | None,
        dims: tuple[int, ...],
        keep: bool,
    ) -> torch.Tensor:
        ctx.dims = dims
        # what backward reads: x for the halves' gradients only, W (when kept) for the input's only; a frozen
        # layer (or a first layer, whose input needs no gradient) keeps no copy it would not use
        need_x, need_halves = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.keep = keep and need_x
        x_kept = x2d if need_halves else None
        if ctx.keep:  # W outlives this call: its own memory
            w = build_full(lmat, rmat, dims)
            ctx.save_for_backward(x_kept, lmat, rmat, w)
            return _linear(x2d, w, bias)
        ctx.save_for_backward(x_kept, lmat, rmat)
        with _built(lmat, rmat, dims) as w:
            return _linear(x2d, w, bias)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Any:  # type: ignore[override]
        x2d, lmat, rmat, *kept = ctx.saved_tensors
        gx = gl = gr = None
        if ctx.needs_input_grad[0]:
            # a double backward (grad mode on) must record W's dependence on the halves: rebuild it then
            if ctx.keep and not torch.is_grad_enabled():
                gx = gy @ kept[0]
            else:
                with _built(lmat, rmat, ctx.dims) as w:
                    gx = gy @ w
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            need = (ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            with _weight_grad(gy, x2d) as gw:
                gl, gr = _grad_halves(gw, lmat, rmat, ctx.dims, need)
        gb = gy.sum(0) if ctx.needs_input_grad[3] else None
        return gx, gl, gr, gb, None, None


def full_linear(
    x2d: torch.Tensor,
    cores: Sequence[torch.Tensor],
    split: int,
    keep: bool,
    bias: torch.Tensor | None = None,
    parts: tuple | None = None,
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` by building ``W`` from two halves split before core ``split``, then one GEMM.

    ``parts``: the halves (:func:`halves`' result) when a layer keeps them between inference calls.
    """
    lmat, rmat, dims = halves(cores, split) if parts is None else parts
    if transforms_active() or x2d.is_complex() or lmat.is_complex():
        # under a transform (compile, torch.func, forward AD; see tensortrain._transforms) plain autograd; compiled
        # graphs leave memory planning to the compiler. Complex too: FullLinear's backward has no conjugates
        y = x2d @ build_full(lmat, rmat, dims).t()
        # (under autocast y is in the lower precision, as F.linear's output: add the bias in that dtype)
        return y if bias is None else y + (bias if bias.dtype == y.dtype else bias.to(y.dtype))
    if not (grad_recorded() and (x2d.requires_grad or lmat.requires_grad or rmat.requires_grad)):
        # inference: no autograd Function to dispatch. Only the bias training (frozen cores, BitFit): plain addmm,
        # which saves nothing for it (FullLinear kept x, so an inference-mode x or one changed in place failed)
        with _built(lmat, rmat, dims) as w:
            return _linear(x2d, w, bias)
    x2d, lmat, rmat, bias = _autocast_inputs(x2d, lmat, rmat, bias)
    return FullLinear.apply(x2d, lmat, rmat, bias, dims, keep)


def _layout(x2d: torch.Tensor, supers: list[Super], direction: str) -> list[tuple[int, int, int, int]]:
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


def _sweep_states(
    x2d: torch.Tensor, order: Sequence[torch.Tensor], steps: list[tuple[int, int, int, int]]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs of every step of a sweep and its output: ``bmm`` over the state's ``(K, P)`` slices in place."""
    s = x2d
    states = []
    for a, step in zip(order, steps, strict=True):
        states.append(s)
        s = _slice_product(a, s, step)
    return states, s


def _slice_product(
    a: torch.Tensor,
    s: torch.Tensor,
    step: tuple[int, int, int, int],
    out: torch.Tensor | None = None,
    fold: bool | None = None,
) -> torch.Tensor:
    """One sweep step ``(outer, K, P, Q)``: ``a (Q, K)`` times every ``(K, P)`` slice of the state ``s``, in place
    (``bmm`` over ``a`` broadcast; one GEMM when ``P == 1``; many narrow slices folded into one GEMM,
    :func:`_folds`, or as ``fold`` says when given), into ``out`` (contiguous, any shape) if given."""
    outer, k, p, q = step
    if p == 1:
        return torch.mm(s.reshape(outer, k), a.t(), out=None if out is None else out.view(outer, q))
    # (a whole batch's decision, ``fold``, for a chunk of one row: never fold a single slice)
    if _folds(outer, k, p, q, s) if fold is None else fold and outer > 1:
        y = _folded(a, s, outer, k, p)
        return y.contiguous() if out is None else out.view(outer, q, p).copy_(y)
    return torch.bmm(
        a.expand(outer, q, k), s.reshape(outer, k, p), out=None if out is None else out.view(outer, q, p)
    )


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
            narrow = _folds(outer, k, p, q, g3)
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
                g = _folded(a.t(), g3, outer, q, p) if narrow else torch.bmm(a.t().expand(outer, k, q), g3)
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
        steps = _layout(x2d, supers, direction)
        ctx.steps = steps
        ctx.direction = direction
        ctx.x_shape = tuple(x2d.shape)
        ctx.recompute = recompute
        # the step inputs serve the super-cores' gradients only: frozen cores (an input that needs a gradient
        # through them) keep none
        need = ctx.needs_input_grad[4:]
        ctx.need = list(reversed(need)) if direction == "rtl" else list(need)  # in execution order
        ctx.states = any(need)
        m = _prod([mg for mg, _ in meta])
        if not ctx.states:
            ctx.save_for_backward(*order)
            y = x2d
            for a, step in zip(order, steps, strict=True):  # (no list of states: each is freed once used)
                y = _slice_product(a, y, step)
            return y.reshape(x2d.shape[0], m)
        if recompute:  # the states are not kept: they alternate between (up to) two reused scratch buffers
            ctx.save_for_backward(x2d, *order)
            y = torch.empty((x2d.shape[0], m), dtype=x2d.dtype, device=x2d.device)
            inner = max((o * p * q for o, _, p, q in steps[:-1]), default=0)
            with contextlib.ExitStack() as borrowed:  # (one buffer held, not two, for a single intermediate)
                ping = borrowed.enter_context(workspace.scratch((inner,), x2d.dtype, x2d.device))
                pong = ping
                if len(steps) > 2:
                    pong = borrowed.enter_context(workspace.scratch((inner,), x2d.dtype, x2d.device))
                _steps_into(x2d, supers, run, direction, y, (ping, pong))
            return y
        states, s = _sweep_states(x2d, order, steps)
        ctx.save_for_backward(*states, *order)
        return s.reshape(x2d.shape[0], m)  # (-1 is ambiguous for an empty batch)

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
                    states.append(_slice_product(a, states[-1], step, out=buf))
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
        return sweep(x2d, supers, direction)
    meta = tuple((mg, ng) for _, mg, ng in supers)
    if complex_:
        return checkpoint(_sweep_mats, x2d, direction, meta, *(a for a, _, _ in supers), use_reentrant=False)
    x2d, *mats = _autocast_inputs(x2d, *(a for a, _, _ in supers))
    return SweepFunction.apply(x2d, direction, meta, recompute, *mats)


def _sweep_mats(
    x2d: torch.Tensor, direction: str, meta: tuple[tuple[int, int], ...], *mats: torch.Tensor
) -> torch.Tensor:
    return sweep(x2d, [(a, mg, ng) for a, (mg, ng) in zip(mats, meta, strict=True)], direction)
