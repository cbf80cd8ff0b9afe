"""The row lookup behind ``tt_embedding``: dense rows ``W[idx, :]`` of a TT-matrix table for checked, flat
indices, each distinct index contracted once, core by core or through the cores' two merged halves (whichever
its cost model prices lower), the table itself never built; with the halves' autograd Function, whose backward
gathers again instead of keeping the gathered slices. :mod:`tensortrain.nn.functional` checks the operands,
handles padding and out-of-range indices, and calls :func:`embedding_rows`.

Symbols: ``d`` number of cores, ``V`` table rows (``V_L``, ``V_R``: the halves' row counts), ``D`` embedding
dim (``D_L``, ``D_R``), ``r`` the TT-rank at the split, ``U`` the number of distinct indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import workspace
from .._transforms import grad_recorded, legacy_batched, transforms_active, valueless
from ..contraction import cost as _cost
from ..contraction.checks import dims_of
from ..contraction.full_plan import halves
from ..contraction.layer_cache import cached
from ..tensor_train import TensorTrain

__all__: list[str] = []

INT64_MAX = torch.iinfo(torch.long).max


def embedding_rows(
    weight: TensorTrain, flat: torch.Tensor, voc_dims: tuple[int, ...], cache: dict | None
) -> torch.Tensor:
    """Dense rows ``W[flat, :]``: each distinct index contracted once, core by core or through merged halves."""
    if transforms_active() or valueless(flat):
        # torch.unique has a data-dependent output shape: compiled and exported graphs, CUDA graphs (its size is
        # read on the host) and meta and fake tensors (no values) contract every index.
        return _tt_rows(weight, flat, voc_dims)
    # Repeated tokens are common (text, categorical features): contract each distinct row once.
    uniq, inverse = torch.unique(flat, return_inverse=True)
    split = _halves_split(weight, int(uniq.shape[0]))
    if split is None:
        return _tt_rows(weight, uniq, voc_dims).index_select(0, inverse)
    return _halves_rows(_halves(weight, split, cache), uniq, inverse)


def _tt_rows(weight: TensorTrain, idx: torch.Tensor, voc_dims: tuple[int, ...]) -> torch.Tensor:
    """Dense rows ``W[idx, :]`` of a TT-matrix, shape ``(len(idx), D)``."""
    u = idx.shape[0]
    res = torch.ones(u, 1, 1, dtype=weight.dtype, device=weight.device)  # (U, D_<k, r_{k-1})
    stride, done = math.prod(voc_dims), 1
    for k, (core, mk) in enumerate(zip(weight.tt_cores, voc_dims, strict=True)):
        stride //= mk
        if stride > INT64_MAX:  # (a table past int64 rows: every int64 index has digit 0 here)
            ik = torch.where(idx < 0, -1, torch.zeros_like(idx)) if k == 0 else torch.zeros_like(idx)
        else:
            ik = torch.div(idx, stride, rounding_mode="floor")
        # The first mode is left unwrapped and gathered by index_select, which refuses negative indices as well
        # as those past the table (advanced indexing would wrap negative ones), instead of aliasing rows.
        ik = ik if k == 0 else ik % mk
        g = core.index_select(1, ik).permute(1, 0, 2, 3)  # (U, r_{k-1}, e_k, r_k)
        r_left, e, r_right = g.shape[1], g.shape[2], g.shape[3]
        done *= e
        res = torch.bmm(res, g.reshape(u, r_left, e * r_right)).reshape(u, done, r_right)
    return res.reshape(u, done)


def _halves_split(weight: TensorTrain, u: int) -> int | None:
    """Where to split the cores for :func:`_halves_rows` of ``u`` distinct rows, or None to go core by core.

    Core by core, every row gathers a slice of every core and multiplies through them: ``u sum_k D_<k r^2 e_k``
    multiply-adds and ``u sum_k r^2 e_k`` gathered numbers. Through halves, the two halves are merged once (their
    size, ``V_L D_L r + r V_R D_R``, is paid in merges, copies and their gradients), then each row is one small
    ``(D_L x r) @ (r x D_R)`` product. Many distinct rows favour halves (1M x 128 at rank 16, 4096 rows: 26 ms
    core by core on 2 threads); a few rows of a large table favour the chain.
    """
    shapes = [tuple(int(v) for v in c.shape) for c in weight.tt_cores]
    d = len(shapes)
    if d < 2:
        return None
    chain, lead = 0, 1
    for ra, _, e, rb in shapes:
        chain += u * (lead * ra * e * rb + ra * e * rb)
        lead *= e
    best, best_cost = None, chain
    for s in range(1, d):
        vl = math.prod(c[1] for c in shapes[:s])
        dl = math.prod(c[2] for c in shapes[:s])
        vr = math.prod(c[1] for c in shapes[s:])
        dr = math.prod(c[2] for c in shapes[s:])
        r = shapes[s][0]
        # merges (sequential products, about r times the half's size each) plus the per-row products and gathers
        cost = (vl * dl + vr * dr) * r * (1 + r) + u * (dl * r * dr + dl * r + r * dr)
        if cost < best_cost:
            best, best_cost = s, cost
    return best


def _halves(weight: TensorTrain, split: int, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The full plan's two halves of the cores laid out for row gathers, ``L (V_L, D_L, r)`` and ``R (V_R, r,
    D_R)`` (contiguous: a gather from a strided R ran 10x slower), built differentiably; without gradients, kept
    in a layer's ``cache`` under the rule ``TTLinear``'s cache uses for its halves."""
    cores = weight.tt_cores

    def make(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            # cores created under inference_mode: views of them drop out of autograd (the merge starts with
            # reshapes) and products may not save them; a clone is an ordinary tensor, as the row path's
            # index_select gives one, so both lookup paths train
            parts = [c.clone() if c.is_inference() and c.requires_grad else c for c in parts]
        lmat, rmat, (vl, dl, vr, dr) = halves(parts, split)
        r = int(lmat.shape[1])
        return lmat.view(vl, dl, r), rmat.view(r, vr, dr).transpose(0, 1).contiguous()

    grad = grad_recorded() and any(c.requires_grad for c in cores)
    if cache is None or grad or transforms_active() or not _cost.halves_cacheable(dims_of(cores), split):
        return make(cores)
    return cached(cache, ("embedding_halves", split), cores, make)


def _halves_rows(
    halves: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, inverse: torch.Tensor
) -> torch.Tensor:
    """Dense rows ``W[idx[inverse], :]`` from the two merged halves (:func:`_halves`), shape ``(len(inverse), D)``.

    Row ``i`` is ``L[i // V_R] @ R[i % V_R]`` flattened, as the TT-matrix orders its columns; the table itself is
    never built. The gathered slices and their products (several MiB for thousands of rows) live in reused
    scratch (:mod:`tensortrain.workspace`): as fresh temporaries they were mapped anew on every call whenever
    their frees made glibc return the heap's top to the kernel, which took a 1M x 128 rank-16 lookup of 4096
    tokens from 0.8 to 3.7 ms (2,000 page faults per call) in a fresh process. For training,
    :class:`_HalvesLookup` keeps only the indices and the halves for backward.
    """
    left, right = halves
    v_right = int(right.shape[0])
    # The left index is not wrapped, so an index past the table fails the gather instead of aliasing.
    il = torch.div(idx, v_right, rounding_mode="floor")
    ir = idx % v_right
    if not (grad_recorded() and (left.requires_grad or right.requires_grad)):
        return _lookup(left, right, il, ir, inverse)
    u, (dl, r), dr = int(il.shape[0]), left.shape[1:], int(right.shape[2])
    if (
        left.is_complex()
        or right.is_complex()  # (_HalvesLookup's backward has no conjugates)
        or left.numel() + right.numel() >= u * (dl + dr) * r  # (the halves would be the larger thing to keep)
    ):
        return _lookup_recorded(left, right, il, ir, inverse)
    # A half that is a view of a core (one core on its side of the split) is kept as a copy, made here where
    # autograd records it (a copy inside forward would cut second derivatives): the gathered slices that
    # autograd kept before were copies, so a core written in place between forward and backward did not fail
    # backward's version check
    if left._base is not None and right.requires_grad:
        left = left.clone()
    if right._base is not None and left.requires_grad:
        right = right.clone()
    return _HalvesLookup.apply(left, right, il, ir, inverse)


def _lookup(
    left: torch.Tensor, right: torch.Tensor, il: torch.Tensor, ir: torch.Tensor, inverse: torch.Tensor
) -> torch.Tensor:
    """``(L[il] @ R[ir])[inverse]`` flattened per row, its temporaries in scratch; nothing recorded."""
    u, (dl, r), dr = int(il.shape[0]), left.shape[1:], int(right.shape[2])
    sizes = (u * dl * r, u * r * dr, u * dl * dr)
    with workspace.scratch((sum(sizes),), left.dtype, left.device) as buf:
        lg_f, rg_f, prod_f = buf.split(sizes)
        lg, rg, prod = lg_f.view(u, dl, r), rg_f.view(u, r, dr), prod_f.view(u, dl, dr)
        # (index_select: a few times faster than advanced indexing for these row gathers)
        torch.index_select(left, 0, il, out=lg)
        torch.index_select(right, 0, ir, out=rg)
        torch.bmm(lg, rg, out=prod)
        # (a fresh output: nothing returned may alias the scratch)
        return prod.view(u, dl * dr).index_select(0, inverse)


def _lookup_recorded(
    left: torch.Tensor, right: torch.Tensor, il: torch.Tensor, ir: torch.Tensor, inverse: torch.Tensor
) -> torch.Tensor:
    """:func:`_lookup` by autograd-recorded ops (complex halves; it keeps the gathered slices for backward)."""
    prod = torch.bmm(left.index_select(0, il), right.index_select(0, ir))
    return prod.reshape(int(il.shape[0]), -1).index_select(0, inverse)


class _HalvesLookup(torch.autograd.Function):
    """:func:`_lookup` for training: saves the indices and the halves (each only when the other one's gradient is
    needed), not the gathered slices (``U (D_L + D_R) r`` numbers, 3x the output for a 1M x 128 table at rank
    16), and gathers them again in backward, into scratch like every temporary of the step. Its backward is made
    of differentiable ops, so double backward works; under grad mode (``create_graph=True``) or with batched
    gradients (``is_grads_batched``) it runs them out of place, recorded."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        left: torch.Tensor,
        right: torch.Tensor,
        il: torch.Tensor,
        ir: torch.Tensor,
        inverse: torch.Tensor,
    ) -> torch.Tensor:
        need_l, need_r = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(left if need_r else None, right if need_l else None, il, ir, inverse)
        ctx.shapes = (left.shape, right.shape)
        return _lookup(left, right, il, ir, inverse)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:  # type: ignore[override]
        left, right, il, ir, inverse = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if torch.is_grad_enabled() or legacy_batched(g):
            # a double backward (record every op), or autograd's vmap of gradients (which refuses out= writes)
            return *_halves_grads(g, left, right, il, ir, inverse, ctx.shapes, need), None, None, None
        (_, dl, r), (_, _, dr) = ctx.shapes
        u = int(il.shape[0])
        # a gradient of y.sum() is a stride-0 expansion, which index_add_ reads 4x slower than a copy
        copy = 0 if g.is_contiguous() else g.numel()
        sizes = (copy, u * dl * dr, u * dl * r, u * r * dr)
        with workspace.scratch((sum(sizes),), g.dtype, g.device) as buf:
            g_c, *bufs = buf.split(sizes)
            if copy:
                g = g_c.view(g.shape).copy_(g)
            return *_halves_grads(g, left, right, il, ir, inverse, ctx.shapes, need, bufs), None, None, None


def _halves_grads(
    g: torch.Tensor,
    left: torch.Tensor | None,
    right: torch.Tensor | None,
    il: torch.Tensor,
    ir: torch.Tensor,
    inverse: torch.Tensor,
    shapes: tuple[torch.Size, torch.Size],
    need: tuple[bool, bool],
    bufs: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The halves' gradients of :func:`_lookup` for the output gradient ``g``: the gathered slices again, and the
    products with each distinct row's gradient (the sum over its occurrences), accumulated into the halves.
    ``bufs``: flat scratch for those three temporaries, written in place; None: out of place, recorded."""
    (_, dl, r), (_, _, dr) = shapes
    u = int(il.shape[0])
    if bufs is None:
        gu, a, b = g.new_zeros(u, dl * dr).index_add(0, inverse, g), None, None
    else:
        gu = bufs[0].view(u, dl * dr).zero_().index_add_(0, inverse, g)
        a, b = bufs[1].view(u, dl, r), bufs[2].view(u, r, dr)
    gu = gu.view(u, dl, dr)
    # (in place into fresh zeros, except where recorded: autograd's vmap refuses in-place writes of batched values)
    add = torch.Tensor.index_add if bufs is None else torch.Tensor.index_add_
    gl = gr = None
    if need[0]:
        assert right is not None  # (kept whenever the left half's gradient is needed)
        rg = torch.index_select(right, 0, ir, out=b)
        glg = torch.bmm(gu, rg.transpose(1, 2), out=a)
        gl = add(g.new_zeros(shapes[0]), 0, il, glg)
    if need[1]:
        assert left is not None
        lg = torch.index_select(left, 0, il, out=a)
        grg = torch.bmm(lg.transpose(1, 2), gu, out=b)
        gr = add(g.new_zeros(shapes[1]), 0, ir, grg)
    return gl, gr
