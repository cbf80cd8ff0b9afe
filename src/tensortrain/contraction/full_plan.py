"""The full plan's executor: ``y = x @ W^T (+ bias)`` with ``W`` built from two halves of the train.

Internal module (no public names), beside ``contraction.sweeps`` (the sweeps), whose core merges and shared
pieces it uses. :func:`halves` merges the cores before and after a split into two matrices; :func:`build_full`
writes ``W`` from them (a large ``W`` in blocks of left row indices through reused scratch, or one batched GEMM
per left row index where its slices are large); :class:`FullLinear`, the training path, keeps ``W`` for
backward or rebuilds it there, and takes the halves' gradients from that of ``W`` without autograd's
bookkeeping of the build; :func:`full_linear` runs the plan (plain autograd under a transform or for complex
operands, no autograd Function for inference).

Symbols: as in ``contraction.sweeps``; ``dims = (M_L, N_L, M_R, N_R)``, the row and column sizes of the left and
the right half, and ``r`` the rank between them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .. import workspace
from .._transforms import autocasting, grad_recorded, legacy_batched, transforms_active
from . import machine as _machine
from . import sweeps as _exec

__all__: list[str] = []


def halves(cores: Sequence[torch.Tensor], split: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The two merged halves of W as matrices ``L (M_L*N_L, r)`` and ``R (r, M_R*N_R)``, and their dims."""
    d = len(cores)
    left = _exec.merge_cores(cores, 0, split)
    _, ml, nl, r = (int(v) for v in left.shape)
    if split < d:
        right = _exec.merge_cores(cores, split, d)
        _, mr, nr, _ = (int(v) for v in right.shape)
        rmat = right.reshape(r, mr * nr)
    else:  # d == 1: the right half is the scalar 1
        mr = nr = 1
        rmat = torch.ones((1, 1), dtype=left.dtype, device=left.device)
    return left.reshape(ml * nl, r), rmat, (ml, nl, mr, nr)


# A W over contraction.machine.BLOCKED_ABOVE bytes (or its gradient) is built (or permuted) in blocks of left row
# indices whose GEMM output (BLOCK_BYTES, in reused scratch) is permuted into W while it is still in cache, instead
# of one GEMM whose M*N output makes a round trip through memory first; a temporary W also lives in reused scratch
# (tensortrain.workspace).
def _blocks(dims: tuple[int, ...], t: torch.Tensor) -> int:
    """Left row indices per block of the blocked build of ``t``'s W; 0 when W is built whole (small W, a device
    without page faults to avoid, or compiling)."""
    if transforms_active():
        return 0
    return _machine.block_rows(dims, t.element_size(), _machine.cache_cliffs(t.device.type))


def build_full(
    lmat: torch.Tensor, rmat: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """W (M, N) from its halves (into ``out``, a contiguous M x N tensor, when given).

    Where one left row index's slice of W is a large product (``contraction.machine.sliced_build``) and nothing
    records the build: one batched GEMM per left row index straight into W (:func:`_build_sliced`). Otherwise, a W
    over ``BLOCKED_ABOVE`` bytes: one GEMM per block of left row indices into reused scratch, each block's output
    permuted into W while it is still in cache. A smaller one: for small ranks one GEMM per pair of (left,
    right) row indices, written straight into W's layout (the operands broadcast, ``O(M (N_L + N_R) r)``
    copies); for larger ranks one GEMM and one permute of W.
    """
    ml, nl, mr, nr = dims
    r = int(lmat.shape[1])
    if _machine.sliced_build(dims, r) and _exec.writable(lmat, rmat):
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
    record = not _exec.writable(lmat, rmat)
    with workspace.scratch((bs * nl, mr * nr), lmat.dtype, lmat.device) as blk:
        for a in range(0, ml, bs):
            b = min(ml, a + bs)
            lhs = lm3[a:b].reshape(-1, r)
            part = lhs @ rmat if record else torch.mm(lhs, rmat, out=blk[: (b - a) * nl])
            w4[a:b].copy_(part.view(b - a, nl, mr, nr).permute(0, 2, 1, 3))
    return w4.view(ml * mr, nl * nr)


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
    record = _exec.recording(gw, lmat, rmat)
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
    x2d, lmat, rmat, bias = _exec.autocast_inputs(x2d, lmat, rmat, bias)
    return FullLinear.apply(x2d, lmat, rmat, bias, dims, keep)
