"""Model surgery: replace a model's ``nn.Linear`` / ``nn.Embedding`` layers by TT layers.

``compress`` selects layers (by exact type, then by name globs: ``compression_select``), plans the TT ranks (a
shared rank cap, an error target, or a rank cap found by bisection to reach a compression ratio), converts each
layer with TT-SVD (``TTLinear.from_linear``, ``TTEmbedding.from_embedding``), swaps it in with
``model.set_submodule`` and returns a :class:`CompressionReport`. What each layer type needs is in
``compression_layers``; the report classes are in ``compression_report``; ``decompression`` turns TT layers back
into exactly equivalent dense ones.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ._transforms import full_precision, valueless
from .compression_layers import carry_over, converter_for, hooked_tensors, layer_dims, planned_tt_params
from .compression_report import CompressionReport, LayerReport
from .compression_select import (
    as_patterns,
    counted_before,
    distributed_wrapper,
    holders,
    kept_dense,
    no_match,
    outside,
    select,
)
from .errors import ShapeError
from .operands import as_flag, wide_dtype
from .shapes import as_whole_int, max_tt_ranks, plain_scalar

__all__ = ["CompressionReport", "LayerReport", "compress"]


def _check_budget(
    max_tt_rank: Any, epsilon: Any, ratio: Any
) -> tuple[int | None, float | None, float | None]:
    """Checks the budget; returns ``max_tt_rank`` as an int (whole floats accepted, as the TT-SVDs do),
    ``epsilon`` and ``ratio`` as floats (0-d NumPy and torch values too, as for ``max_tt_rank``)."""
    given = [
        n for n, v in (("max_tt_rank", max_tt_rank), ("epsilon", epsilon), ("ratio", ratio)) if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"compress: pass exactly one of max_tt_rank, epsilon, ratio; got {given or 'none'}")
    cap = None if max_tt_rank is None else as_whole_int(max_tt_rank)
    if max_tt_rank is not None and cap is None:
        raise TypeError(f"compress: max_tt_rank must be an int (shared by all layers), got {max_tt_rank!r}")
    if cap is not None and cap < 1:
        raise ShapeError(f"compress: max_tt_rank must be >= 1, got {max_tt_rank}")
    epsilon, ratio = plain_scalar(epsilon), plain_scalar(ratio)
    for name, value in (("epsilon", epsilon), ("ratio", ratio)):
        # bool is an int, but True as a budget is a mistake; a string would fail deep in a comparison
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"compress: {name} must be a real number, got {value!r}")
    if epsilon is not None and not 0 < epsilon < 1:
        raise ValueError(f"compress: epsilon (relative error per layer) must be in (0, 1), got {epsilon}")
    if ratio is not None and not ratio > 1:
        raise ValueError(f"compress: ratio (target compression factor) must be > 1, got {ratio}")
    return cap, None if epsilon is None else float(epsilon), None if ratio is None else float(ratio)


def _rank_for_ratio_of(
    layers: list[tuple[list[str], nn.Module]],
    kept: dict[int, str],
    free: list[tuple[list[str], nn.Module]],
    ratio: float,
) -> int:
    """The ``max_tt_rank`` that reaches ``ratio`` over the model, given the selected ``layers``, those ``kept``
    dense (by id, with the reason) and the ``free`` ones to convert."""
    # each parameter once: those of the layers kept dense that no converted layer holds (a converted one
    # may sit inside a kept one, an adapter on an nn.Linear), tied ones once
    converted = {id(p) for _, m in free for p in m.parameters()}
    fixed = sum(
        {
            id(p): p.numel()
            for _, m in layers
            if id(m) in kept
            for p in m.parameters()
            if id(p) not in converted
        }.values()
    )
    why = [f"{n[0] or '(model)'}: {kept[id(m)]}" for n, m in layers if id(m) in kept]
    return _rank_for_ratio(free, ratio, fixed, why)


def _rank_for_ratio(
    layers: list[tuple[list[str], nn.Module]], ratio: float, fixed: int, kept: Sequence[str] = ()
) -> int:
    """The largest shared rank cap whose planned compression of the selected layers is at least ``ratio``
    (``fixed``: parameters of selected layers that stay dense whatever the rank; ``kept``: those layers as
    ``"name: reason"``, for the message when the target is out of reach)."""
    plans = []
    for _, m in layers:
        conv = converter_for(m)
        plans.append((conv.dims(m), conv.extra_params(m), sum(p.numel() for p in m.parameters())))
    before = fixed + sum(p[2] for p in plans)

    def after(r: int) -> int:
        # A layer whose TT form would not be smaller stays dense (as compress does).
        return fixed + sum(min(planned_tt_params(dims, r)[0] + extra, dense) for dims, extra, dense in plans)

    if after(1) == 0:  # only empty layers: no parameters to count, none to save
        raise ValueError(f"compress: ratio={ratio} is out of reach: the selected layers hold no parameters")
    if before / after(1) < ratio:
        why = ""
        if kept:
            more = "; ..." if len(kept) > 3 else ""
            verb = "stays" if len(kept) == 1 else "stay"
            why = f"; {len(kept)} of them {verb} dense whatever the rank: {'; '.join(kept[:3])}{more}"
        raise ValueError(
            # (rounded down: 1.955x printed as 2.0x contradicted the refusal of ratio=2)
            f"compress: ratio={ratio} is out of reach; even TT-rank 1 gives "
            f"{math.floor(before / after(1) * 100) / 100:.2f}x "
            f"({before:,} -> {after(1):,} parameters in the selected layers){why}"
        )
    lo, hi = 1, max(max(max_tt_ranks([a * b for a, b in zip(*p[0], strict=True)])) for p in plans)
    while lo < hi:  # after(r) is non-increasing in r: bisect for the last r meeting the ratio
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if before / after(mid) >= ratio else (lo, mid - 1)
    return lo


def _rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F``; for an all-zero ``exact``: 0.0 when ``approx`` is zero too,
    else inf (never NaN). Norms in float64 (or complex128): a half-precision norm overflows past 65504, a float32
    one past 1.8e19."""
    acc = wide_dtype(exact)  # (float32 on MPS, which has no float64)
    num = float(torch.linalg.vector_norm(approx - exact, dtype=acc))
    den = float(torch.linalg.vector_norm(exact, dtype=acc))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _dense_report(name: str, module: nn.Module, reason: str) -> LayerReport:
    conv = converter_for(module)
    w = conv.weight(module)
    before = sum(p.numel() for p in module.parameters())
    return LayerReport(
        name,
        conv.kind,
        (int(w.shape[0]), int(w.shape[1])),
        layer_dims(module),
        None,
        before,
        before,
        None,
        reason,
    )


def _convert_one(
    name: str, module: nn.Module, max_tt_rank: int | None, epsilon: float | None
) -> tuple[nn.Module | None, LayerReport]:
    """The TT version of one layer and its report, or None and the reason it stays dense.

    The layers a converter refuses (unsupported options, non-finite weights) were found by
    :func:`~tensortrain.compression_layers.refusal` beforehand and never get here, so any error of the
    conversion is a real one and propagates."""
    conv = converter_for(module)
    dims = conv.dims(module)
    before = sum(p.numel() for p in module.parameters())
    if max_tt_rank is not None:
        planned, ranks = planned_tt_params(dims, max_tt_rank)
        planned += conv.extra_params(module)
        if planned >= before:
            why = f"TT would not save parameters ({planned:,} >= {before:,} at tt_ranks {ranks})"
            return None, _dense_report(name, module, why)
    new = conv.convert(module, max_tt_rank, epsilon, dims)
    after = sum(p.numel() for p in new.parameters())
    if after >= before:
        why = f"TT would not save parameters ({after:,} >= {before:,} at epsilon={epsilon})"
        return None, _dense_report(name, module, why)
    w = conv.weight(module)
    err = None  # a meta layer (structure only, e.g. before loading a compressed checkpoint) has no error
    if not valueless(w):  # (nor has a fake one)
        # (autocast off: the TT layer's dense weight is a product autocast would lower, adding its rounding)
        with torch.no_grad(), full_precision(w.device.type):
            err = _rel_error(conv.tt_weight(new), w)
    rep = _dense_report(name, module, "")
    return new, replace(rep, tt_ranks=new.tt_ranks, params_after=after, rel_error=err)


def copy_model(model: nn.Module, fn: str = "compress") -> nn.Module:
    """``copy.deepcopy(model)``, or a ValueError that says why that typically fails and what works instead (and
    one naming the uninitialized lazy parameters and buffers, which deepcopy refuses).

    A tensor that a pruning or old-style weight_norm / spectral_norm hook recomputes before each forward is a
    non-leaf tensor when it was computed with gradients, which deepcopy refuses: the copy gets a detached copy
    of it instead (the copied hook recomputes it from the copied parameters at the copy's first forward)."""
    # (deepcopy refuses uninitialized lazy tensors with torch's own error, which names neither them nor the way out;
    # compress refuses lazy parameters before, whatever inplace says, but a LazyBatchNorm1d(affine=False) has lazy
    # buffers only)
    found = {
        kind: [n for n, t in named if nn.parameter.is_lazy(t)]
        for kind, named in (("parameters", model.named_parameters()), ("buffers", model.named_buffers()))
    }
    lazy = found["parameters"] + found["buffers"]
    if lazy:
        what = " and ".join(kind for kind, names in found.items() if names)
        raise ValueError(
            f"{fn}: the model has uninitialized lazy {what} ({', '.join(lazy[:3])}{', ...' if len(lazy) > 3 else ''}"
            f"), which cannot be copied; run one forward pass first, or pass inplace=True to {fn} the model itself"
        )
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name in hooked_tensors(module):
            t = module.__dict__.get(name)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    try:
        return copy.deepcopy(model, memo)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{fn}: the model cannot be copied (copy.deepcopy failed: {first}): a module holds something "
            "deepcopy refuses, such as a non-leaf tensor computed with gradients (a cached product of a "
            f"parameter), a lock or an open file; remove it first, or pass inplace=True to {fn} the model itself"
        ) from e


def _check_values(layers: list[tuple[list[str], nn.Module]]) -> None:
    """``epsilon`` picks ranks from singular values: the layers to convert must not be on the meta device."""
    meta = [names[0] or "(model)" for names, m in layers if converter_for(m).weight(m).is_meta]
    if meta:
        raise ValueError(
            "compress: epsilon picks each layer's TT-ranks from the singular values of its weight, and the "
            f"layers on the meta device ({', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''}) have no "
            "values; pass max_tt_rank or ratio (they need shapes only), or load the weights first"
        )


def _plan(
    layers: list[tuple[list[str], nn.Module]],
    kept: dict[int, str],
    max_tt_rank: int | None,
    epsilon: float | None,
) -> tuple[list[LayerReport], list[tuple[list[str], nn.Module, nn.Module]]]:
    """Every selected layer's report, and the (names, dense layer, TT layer) replacements to make."""
    counted = counted_before(layers)
    held = holders(layers)
    reports, swaps = [], []
    for names, module in layers:
        new: nn.Module | None = None
        if id(module) in kept:
            rep = _dense_report(names[0], module, kept[id(module)])
        else:
            new, rep = _convert_one(names[0], module, max_tt_rank, epsilon)
        outer = held.get(id(module), [])
        holder = (layers[outer[-1]][0][0] or "(model)") if outer else ""
        # (a held row's parameters are its holder's: counted there, not as tied ones)
        tied = 0 if holder else counted[id(module)]
        reports.append(replace(rep, aliases=tuple(names[1:]), tied_params=tied, held_by=holder))
        if new is not None:
            swaps.append((names, module, new))
    # a layer that stays dense while a selected layer inside it is replaced holds that layer's TT form after;
    # each saving counts once per holder (from the rows as planned: a holder's own row saves nothing)
    for (_, module), rep in zip(layers, list(reports), strict=True):
        for i in held.get(id(module), []):
            reports[i] = replace(
                reports[i], params_after=reports[i].params_after - (rep.params_before - rep.params_after)
            )
    return reports, swaps


def compress(
    model: nn.Module,
    *,
    max_tt_rank: int | None = None,
    epsilon: float | None = None,
    ratio: float | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    inplace: bool = False,
    dry_run: bool = False,
) -> tuple[nn.Module, CompressionReport]:
    """Replace a model's ``nn.Linear`` and ``nn.Embedding`` layers by ``TTLinear`` / ``TTEmbedding`` (TT-SVD).

    Layers are selected by exact type (``nn.Linear``, ``nn.Embedding``; subclasses are left alone, except an
    ``nn.LazyLinear`` whose parameters have shapes, and a parametrized one, which gets a kept-dense row), then by
    ``include`` / ``exclude`` globs (``fnmatch``, case-sensitive) over qualified module names such as
    ``"encoder.0.fc1"``. A module shared under several names is replaced under all of them, so it is
    selected when *any* of its names is included and *none* is excluded (its report row lists the other
    names as ``aliases``). TT dims are factored automatically; sizes with only lopsided factors are padded
    (see ``TTLinear`` and ``TTEmbedding``) and the report lists them.

    A selected layer stays dense, with the reason in the report, when its TT form would not have fewer
    parameters, when its parameters are tied to another module's (converting it would untie them), or when
    it cannot be converted: an empty layer; a weight recomputed before each forward by a
    ``torch.nn.utils.prune`` or old-style ``weight_norm`` / ``spectral_norm`` hook (the tensor there
    between forwards is a stale copy), or by a ``torch.nn.utils.parametrize`` parametrization; parameters or
    submodules beside ``weight`` and ``bias``; a ``forward`` overridden on the instance (``module.forward =
    ...``: the TT layer would run its own), or a hook of the deprecated ``register_backward_hook``; a built-in
    parent that reads its weight in its own forward (``nn.LinearCrossEntropyLoss``'s ``linear``); a weight whose
    shape disagrees with the layer's sizes; an ``nn.Embedding`` with ``max_norm``, ``scale_grad_by_freq`` or
    ``sparse=True``, or with a non-zero padding row (``TTEmbedding`` outputs zeros for ``padding_idx``); NaN or
    inf weights; a weight of a dtype below 16 bits (float8, complex32), which TT cores cannot take.
    Each parameter is counted once in the report and in the ``ratio`` search.

    A TT layer takes over what the dense one held beside its weights: its forward hooks and pre-hooks (with
    their ``with_kwargs`` / ``always_call`` flags; with ``inplace=True`` the handles ``register_forward_hook``
    returned still remove them, while a copy's hooks are copies that those handles do not reach), its full
    backward hooks and pre-hooks, its other buffers (persistent or not, under the same state_dict keys) and its
    train/eval mode. State_dict hooks (the TT layer's state has other keys) and plain attributes set on the
    dense layer's instance are not carried over.

    Not detectable: code that reads a layer's ``.weight`` outside the layer's own forward
    (``F.linear(x, self.lin.weight)``, an output head tied through ``self.embed.weight`` in ``forward``
    rather than by sharing the Parameter). After compression that ``.weight`` is a TT object, and the first
    forward raises a ``TypeError`` naming the torch function; leave such layers out with ``exclude``. Its
    ``.shape`` raises nothing, and for a padded layer (sizes such as 50257 are padded to ones that factor well;
    the report's ``padded`` entry) it is the padded size: code that reads a vocabulary size from
    ``emb.weight.shape[0]`` gets the padded one (``num_embeddings`` / ``out_features`` are the real sizes).

    An ``nn.TransformerEncoder`` holding a replaced layer gets ``use_nested_tensor = False``: its nested-tensor
    fast path, chosen from the first layer alone, would hand the TT layers nested tensors (:func:`decompress`
    turns it back on).

    Exactly one budget:

    * ``max_tt_rank``: one rank cap shared by all layers (clipped per bond to the maximal useful rank).
    * ``epsilon``: the relative Frobenius error of each layer's weight.
    * ``ratio``: a target compression factor of the *selected layers*: ``sum(params before) /
      sum(params after)`` over them, biases included and layers left dense counted at their size (the
      report's ``ratio``; ``model_ratio`` also counts the untouched rest). The largest shared rank cap
      that reaches it is found by bisection on the planned parameter counts.

    Args:
        model: any ``nn.Module`` (a bare ``nn.Linear`` works too).
        max_tt_rank: shared TT-rank cap (int >= 1).
        epsilon: per-layer relative error target, in (0, 1).
        ratio: target compression factor of the selected layers, > 1.
        include: glob(s) a layer name must match (default: all matching types).
        exclude: glob(s) that remove layers from the selection.
        inplace: modify ``model`` itself; by default a deep copy is compressed and ``model`` is untouched. A
            bare layer cannot turn into another class in place: it is left as it is and the TT layer returned.
        dry_run: only plan: run the TT-SVDs and return ``(model, report)`` with ``model`` neither changed nor
            copied, so budgets can be compared by their report (ranks, parameters, errors) first.

    Returns:
        ``(compressed_model, report)``; ``print(report)`` shows a table.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, bad pattern/rank types, or an ``epsilon`` / ``ratio``
            that is not a real number.
        ValueError: not exactly one budget, a budget out of range, no layer matched, an unreachable
            ``ratio`` (the message says the best one reachable and which layers stay dense), a ratio the
            conversion missed (the model is then left unchanged), ``epsilon`` with layers on the meta
            device, or a model ``copy.deepcopy`` cannot copy (pass ``inplace=True``).

    Warns:
        UserWarning: an ``include`` or ``exclude`` pattern that matches no layer (a mistyped ``exclude`` would
            otherwise compress the layer it was meant to keep).

    Complexity: one TT-SVD per selected layer (roughly one SVD pass over each weight).

    Example:
        >>> import torch, tensortrain as tt
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(784, 625), torch.nn.ReLU(), torch.nn.Linear(625, 10))
        >>> small, report = tt.compress(mlp, max_tt_rank=16, include="0")
        >>> print(report)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects an nn.Module, got {type(model).__name__}")
    refuse_wrapped(model)
    max_tt_rank, epsilon, ratio = _check_budget(max_tt_rank, epsilon, ratio)
    inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    _refuse_lazy(model)
    inplace, dry_run = as_flag(inplace, "compress", "inplace"), as_flag(dry_run, "compress", "dry_run")
    target = model if inplace or dry_run else copy_model(model)
    before_model = sum(p.numel() for p in target.parameters())
    layers = select(target, inc, exc)
    if not layers:
        raise no_match(target, include, exclude, inc)
    kept = kept_dense(target, layers)
    free = [(n, m) for n, m in layers if id(m) not in kept]
    if epsilon is not None:
        _check_values(free)
    if ratio is not None:
        max_tt_rank = _rank_for_ratio_of(layers, kept, free, ratio)
    reports, swaps = _plan(layers, kept, max_tt_rank, epsilon)
    report = CompressionReport(tuple(reports), before_model, before_model, outside=outside(target, layers))
    # (the totals, not the rows: a nested layer's saving is in its holder's row too, a tied one's counted once)
    report = replace(report, model_params_after=before_model - (report.params_before - report.params_after))
    if ratio is not None and report.ratio < ratio:  # a safety net: the plan above should have met it
        raise ValueError(
            f"compress: ratio={ratio} was not reached: the converted layers give {report.ratio:.1f}x "
            f"({report.params_before:,} -> {report.params_after:,} parameters); the model is left unchanged"
        )
    if dry_run:
        return target, replace(report, dry_run=True)
    for names, module, new in swaps:
        carry_over(module, new)
        for name in names:  # a module shared under several names is replaced everywhere
            if name == "":
                target = new
            else:
                target.set_submodule(name, new)
    _no_nested_fast_path(target, [name for names, _, _ in swaps for name in names])
    return target, replace(report, model_params_after=sum(p.numel() for p in target.parameters()))


def refuse_wrapped(model: nn.Module, fn: str = "compress") -> None:
    """Refuse a model that is or holds a DDP/FSDP wrapper (``fn``: compress or decompress)."""
    wrappers = [(n, m) for n, m in model.named_modules() if distributed_wrapper(m)]
    if wrappers:
        # replacing layers under DDP leaves its reducer watching the old parameters: gradients are no longer
        # averaged and each process trains on its own data, silently
        name, wrapper = wrappers[0]
        raise TypeError(
            f"{fn}: {name or 'the model'} is a {type(wrapper).__name__}; {fn} the module it wraps "
            "(ddp.module), then wrap the result again"
        )


def _refuse_lazy(model: nn.Module) -> None:
    """Refuse a model with uninitialized lazy parameters (their shapes are unknown)."""
    lazy = [n for n, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise ValueError(
            f"compress: the model has uninitialized lazy parameters ({', '.join(lazy[:3])}); run one forward "
            "pass first so that their shapes are known"
        )


def _no_nested_fast_path(model: nn.Module, replaced: list[str]) -> None:
    """Turn off the nested-tensor fast path of every ``nn.TransformerEncoder`` holding a replaced layer.

    The encoder chooses that path from its first layer's weights alone (in eval mode, under no_grad, with a
    ``src_key_padding_mask``) and then hands every layer a nested tensor, which TT layers do not take: with the
    first layer kept dense, a later compressed one failed. The path is only a speed-up; ``use_nested_tensor``
    is the attribute the encoder itself clears when its layers do not allow it.
    """
    for prefix, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
            inside = prefix + "." if prefix else ""
            if any(name.startswith(inside) for name in replaced):
                module.use_nested_tensor = False
                setattr(module, "_tensortrain_nested_off", True)  # noqa: B010 (decompress gives the path back)
