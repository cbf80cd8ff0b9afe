"""Functional forms of the TT layers: ``tt_linear`` and ``tt_embedding``, cost-planned (neither builds the
dense weight unless its cost model finds that cheaper, and never the embedding table).

Symbols: ``d`` number of cores, ``m_k`` row modes (``M = prod m_k``), ``n_k`` column modes (``N = prod n_k``),
``r`` the largest TT-rank, ``B`` the number of input rows (all leading dims together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import contraction, workspace
from .. import contraction_cost as _cost
from .._transforms import (
    full_precision,
    grad_recorded,
    legacy_batched,
    traced_unflatten,
    transforms_active,
    valueless,
)
from ..contraction_cache import cached
from ..contraction_checks import dims_of
from ..contraction_full import halves
from ..contraction_plan import Strategy
from ..errors import ShapeError, fx_hint
from ..operands import check_strided
from ..shapes import as_int
from ..tensor_train import CORE_DTYPES, TensorTrain

__all__ = ["tt_embedding", "tt_linear"]


def _check_tt_matrix(fn: str, weight: object) -> TensorTrain:
    if not isinstance(weight, TensorTrain) or not weight.is_tt_matrix():
        kind = type(weight).__name__
        if isinstance(weight, TensorTrain):
            kind = "TT-tensor"
        raise TypeError(f"{fn}: weight must be a TT-matrix TensorTrain, got a {kind}")
    return weight


def tt_linear(input: torch.Tensor, weight: TensorTrain, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ W.T + bias`` for a TT-matrix ``W`` of shape ``out x in``, as ``F.linear``, cost-planned.

    Computes ``input @ transpose(W)`` with :func:`tensortrain.contraction.linear` (all leading dims of ``input``
    as rows): a sweep over merged core groups or building W and one GEMM, whichever its cost model prices
    lower for this batch size; ``tensortrain.contraction.plan(weight, batch)`` shows the choice.

    Args:
        input: a dense tensor of shape ``(..., in_features)``.
        weight: a TT-matrix :class:`~tensortrain.TensorTrain` of shape ``out_features x in_features`` (row
            dims = output dims, column dims = input dims), exactly like ``nn.Linear.weight``.
        bias: an optional tensor of shape ``(out_features,)``.

    Returns:
        A tensor of shape ``(..., out_features)``.

    Raises:
        TypeError: a weight that is not a TT-matrix TensorTrain.
        ShapeError: the input's last dim is not ``in_features``, a bias of the wrong shape, or dtypes/devices
            that differ from the weight's. (A layer's cores that are not 4-D, or of a dtype below 16 bits, get
            the same errors as a TensorTrain's.)

    Shape:
        - input: ``(*, N)``; output: ``(*, M)``; bias: ``(M,)``.

    Complexity: O(B d r^2 max_k(M_<k N_>=k)) time (M_<k = m_1...m_{k-1}, N_>=k = n_k...n_d); O(B r
    max_k(M_<=k N_>k)) memory for the intermediate.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.TensorTrain([torch.randn(1, 2, 3, 2), torch.randn(2, 2, 3, 1)])  # 4 x 9
        >>> tt.nn.functional.tt_linear(torch.randn(5, 9), w).shape
        torch.Size([5, 4])
    """
    weight = _check_tt_matrix("tt_linear", weight)
    return linear_cores(input, weight.tt_cores, bias)


def check_core_dtype(fn: str, cores: Sequence[torch.Tensor]) -> None:
    """Refuse cores of a dtype TT objects refuse (a layer cast to float8 or complex32 by ``Module.to``, as
    ``.weight`` refuses it), in TensorTrain's words under ``fn``'s name. Callers on a layer's per-call path test
    ``cores[0].dtype not in CORE_DTYPES`` first (a set lookup, no call)."""
    try:
        TensorTrain(list(cores))
    except TypeError as e:
        raise TypeError(f"{fn}: {str(e).removeprefix('TensorTrain: ')}") from None


def linear_cores(
    input: torch.Tensor,
    cores: tuple[torch.Tensor, ...],
    bias: torch.Tensor | None = None,
    cache: dict | None = None,
    strategy: Strategy = "auto",
    max_saved: int | None = None,
) -> torch.Tensor:
    """:func:`tt_linear` on cores that already form a valid TT-matrix (``TTLinear.forward``'s path).

    Skips building and validating a :class:`TensorTrain` view, which at batch 1 costs about as much as the
    contraction itself; the operands are checked as in :func:`tt_linear`. ``cache``: the layer's dict for
    merged super-cores kept between inference calls; ``strategy``: a (valid) strategy name and ``max_saved``: a
    (valid) ``max_saved_bytes``, as in :func:`tensortrain.contraction.linear`.
    """
    if not isinstance(input, torch.Tensor):  # as nn.Linear: a TypeError, not an AttributeError from .dim()
        raise TypeError(f"tt_linear: input must be a Tensor, got {type(input).__name__}{fx_hint(input)}")
    # (before the shape read below, which a nested tensor fails with torch's internal error)
    if input.is_nested:
        contraction.check_operand("tt_linear", "input", input, cores[0])
    c0 = cores[0]
    m = n = 1
    for c in cores:  # a plain loop, one shape read per core: this runs on every layer call
        shape = c.shape
        if len(shape) != 4:  # (cores swapped in by functional_call, a batch of them outside vmap: not sizes)
            k = next(k for k, c in enumerate(cores) if c.dim() != 4)
            raise ShapeError(
                f"tt_linear: a TT-matrix's cores are 4-D (r_k-1, m_k, n_k, r_k), core {k} has shape {tuple(shape)}"
            )
        m *= shape[1]
        n *= shape[2]
    if input.dim() == 0 or input.shape[-1] != n:
        in_dims = tuple(int(c.shape[2]) for c in cores)
        got = "a scalar" if input.dim() == 0 else f"{input.shape[-1]} features (shape {tuple(input.shape)})"
        raise ShapeError(f"tt_linear: input has {got} but the TT weight has {n} columns (in dims {in_dims})")
    if c0.dtype not in CORE_DTYPES:  # (before the operand check, whose hint would name the cores' dtype)
        check_core_dtype("tt_linear", cores)
    contraction.check_operand("tt_linear", "input", input, c0)
    if bias is not None:
        contraction.check_bias("tt_linear", bias, m, c0)
    # x @ W^T with all leading dims as rows, in the order tensortrain.contraction's cost model picks.
    try:
        return contraction.apply_unchecked(input, cores, bias, n, strategy, cache=cache, max_saved=max_saved)
    except RuntimeError as e:
        # a core replaced by one of another dtype or device (the first core's are checked above): said here,
        # after the fact, as checking every core costs a layer call at batch 1 about a tenth of its time
        for k, c in enumerate(cores):
            if c.dtype != c0.dtype or c.device != c0.device:
                raise ShapeError(
                    f"tt_linear: core 0 has dtype {c0.dtype} on {c0.device} but core {k} has dtype {c.dtype} on "
                    f"{c.device}; a TT layer's cores must share one dtype and device"
                ) from e
        raise


_INT64_MAX = torch.iinfo(torch.long).max
_WIDE_UNSIGNED = tuple(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n))


def _check_indices(fn: str, input: torch.Tensor, num_embeddings: int, device: torch.device) -> bool:
    """Refuse indices of a wrong type, device or value; returns whether their values were checked (not while
    tracing, on meta tensors, during CUDA graph capture, or for no indices)."""
    if (
        not isinstance(input, torch.Tensor)
        or input.is_floating_point()
        or input.is_complex()
        or input.dtype == torch.bool  # a mask, not indices (nn.Embedding refuses it too)
        or input.dtype in _WIDE_UNSIGNED  # (min/max are not implemented for them; nn.Embedding refuses them)
    ):
        kind = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(
            f"{fn}: indices must be an integer tensor of a signed type or uint8 (e.g. torch.long), got {kind}"
            f"{fx_hint(input)}"
        )
    check_strided(fn, "indices", input)
    if input.device != device:
        raise ShapeError(f"{fn}: indices are on {input.device} but the weight is on {device}")
    if input.numel() == 0 or transforms_active() or valueless(input):
        # Under torch.compile / torch.export a value check would be a data-dependent graph break (and meta
        # and fake tensors have no values; while a CUDA graph is captured, reading one would end it); there the
        # lookup itself refuses indices past the table (the first mode is not wrapped, see _tt_rows).
        return False
    lo, hi = torch.stack(torch.aminmax(input)).tolist()  # (one sync)
    if lo < 0 or hi >= num_embeddings:
        out = input < 0 if num_embeddings > _INT64_MAX else (input < 0) | (input >= num_embeddings)
        bad = input[out].unique()[:5].tolist()
        raise IndexError(
            f"{fn}: indices must be in [0, {num_embeddings}), got out-of-range values {bad} "
            f"(min {lo}, max {hi})"
        )
    return True


def tt_embedding(
    input: torch.Tensor,
    weight: TensorTrain,
    padding_idx: int | None = None,
    num_embeddings: int | None = None,
) -> torch.Tensor:
    """Rows of a TT-matrix embedding table, as ``F.embedding``, without building the table.

    Each distinct index is unravelled into row modes ``(i_1, ..., i_d)``; the cores' slices ``G_k[:, i_k]``
    are gathered and multiplied (TT-Rec's lookup). Rows of ``padding_idx`` are zero in the output and pass
    no gradient back to the cores.

    Args:
        input: an integer tensor of indices, any shape.
        weight: a TT-matrix of shape ``V' x D``: row dims factor the (possibly padded) vocabulary ``V'``,
            column dims factor ``embedding_dim`` ``D``.
        padding_idx: an optional index whose output row is zero (negative values count from the end).
        num_embeddings: the valid vocabulary size ``V <= V'`` (default ``V'``); larger indices are errors.

    Returns:
        A tensor of shape ``(*input.shape, D)`` with the weight's dtype and device.

    Raises:
        TypeError: a weight that is not a TT-matrix, or indices that are not integers.
        IndexError: indices outside ``[0, num_embeddings)`` (the message lists some of them). Under
            ``torch.compile``, ``torch.export`` and ``torch.func``, and while a CUDA graph is captured, no value
            check runs: the gather refuses such indices itself, with its own error (a ``RuntimeError`` naming a
            core's mode size; on CUDA a device-side assert, as ``nn.Embedding``'s).
        ShapeError: ``num_embeddings`` larger than the table, or indices on another device.
        ValueError: ``padding_idx`` outside ``[-num_embeddings, num_embeddings)``.

    Shape:
        - input: ``(*)``; output: ``(*, D)``.

    Complexity: O(U d r^2 D) for U distinct indices core by core; through two merged halves (chosen when
    cheaper, see ``_halves_split``) O((V_L D_L + V_R D_R) r^2 + U D r).

    Example:
        >>> import torch, tensortrain as tt
        >>> w = tt.TensorTrain([torch.randn(1, 4, 2, 3), torch.randn(3, 5, 4, 1)])  # 20 x 8 table
        >>> tt.nn.functional.tt_embedding(torch.tensor([[0, 7], [19, 3]]), w).shape
        torch.Size([2, 2, 8])
    """
    return _embedding(input, _check_tt_matrix("tt_embedding", weight), padding_idx, num_embeddings, None)


def padding_index(fn: str, padding_idx: Any, v: int) -> int | None:
    """``padding_idx`` as an index in ``[0, v)`` (negative ones count from the end), or None."""
    if padding_idx is None:
        return None
    k = as_int(padding_idx)
    if k is None:  # 2.5 or "3" would never match an index: the padding would silently do nothing
        raise TypeError(f"{fn}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -v <= k < v:
        raise ValueError(f"{fn}: padding_idx must be within [-{v}, {v}), got {k}")
    return k % v


def _embedding(
    input: torch.Tensor,
    weight: TensorTrain,
    padding_idx: int | None,
    num_embeddings: int | None,
    cache: dict | None,
) -> torch.Tensor:
    """:func:`tt_embedding` for a checked TT-matrix; ``cache``: a layer's dict in which inference keeps the
    merged halves of the cores between calls (``TTEmbedding.forward``).

    A lookup is not an autocast op (``F.embedding`` returns the table's dtype under autocast): the products that
    form the rows run in the cores' precision.
    """
    voc_dims, emb_dims = weight.get_raw_shape()
    v_pad, dim = math.prod(voc_dims), math.prod(emb_dims)
    if num_embeddings is None:
        v = v_pad
    else:
        got = as_int(num_embeddings)
        if got is None:  # ("10", 2.5 or True are mistakes, not row counts)
            raise TypeError(f"tt_embedding: num_embeddings must be an int, got {num_embeddings!r}")
        if got < 1:
            raise ValueError(f"tt_embedding: num_embeddings must be >= 1, got {got}")
        v = got
    if v > v_pad:
        raise ShapeError(
            f"tt_embedding: num_embeddings={v} exceeds the table's {v_pad} rows (voc dims {tuple(voc_dims)})"
        )
    checked = _check_indices("tt_embedding", input, v, weight.device)
    padding_idx = padding_index("tt_embedding", padding_idx, v)
    flat = input.reshape(-1).long()
    # (decided by the check itself, not by reading the flags again: torch's compile flag is process-wide, and
    # another thread's compile ending in between let an index into the padded rows through both)
    if not checked:
        # No value check ran (_check_indices): send every index outside [0, V) to V', whose first-mode digit
        # (m_1) the lookup's index_select refuses. Without this the padded rows [V, V') of the table would be
        # returned. Not -1: inductor's and onnxruntime's gathers wrap negative indices (-1 read row V' - 1,
        # silently), and refuse only those past the end. (A table past int64 rows has no V' to write: -1 there)
        valid = flat >= 0 if v > _INT64_MAX else (flat >= 0) & (flat < v)
        flat = torch.where(valid, flat, v_pad if v_pad <= _INT64_MAX else -1)
    if padding_idx is not None and padding_idx > _INT64_MAX:
        padding_idx = None  # (no int64 index can be it: a table past int64 rows)
    pad = None if padding_idx is None else flat == padding_idx
    if pad is not None:
        # padding positions look up another row (masked below), so that no gradient path runs through the padding
        # row's own product: an overflowed (inf) row times the zero gradient gave NaN core gradients. That row is
        # one a real position looks up anyway (the first), not a fixed one, which could overflow in its turn;
        # picked with tensor ops (no host sync, traceable); row 0 (1) only where every position is padding: a
        # non-padding entry holding it is appended, so argmin also finds one in an empty or all-padding batch (a
        # branch on the batch's size would be fixed into a trace by its example; argmin of nothing fails)
        fallback = 0 if padding_idx != 0 or v == 1 else 1
        # the first non-padding position; index_select, not [first], which dynamo cannot trace
        first = torch.argmin(torch.cat([pad, pad.new_zeros(1)]).to(torch.int32)).reshape(1)
        stand = torch.cat([flat, flat.new_full((1,), fallback)]).index_select(0, first)
        flat = torch.where(pad, stand, flat)
    with full_precision(weight.device.type):
        rows = _rows(weight, flat, voc_dims, cache)
    if pad is not None:
        # zero output for padding positions; a mask, not a product (an inf row times 0 would be NaN)
        rows = rows.masked_fill(pad.unsqueeze(-1), 0)
    if torch.jit.is_tracing():  # (at any number of index dimensions)
        return traced_unflatten(rows, input.unsqueeze(-1))
    return rows.reshape(*input.shape, dim)


def _rows(
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
        if stride > _INT64_MAX:  # (a table past int64 rows: every int64 index has digit 0 here)
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
