"""Model surgery: replace a model's ``nn.Linear`` / ``nn.Embedding`` layers by TT layers, and back.

``compress`` selects layers (by exact type, then by name globs), plans the TT ranks (a shared rank cap, an
error target, or a rank cap found by bisection to reach a compression ratio), converts each layer with
TT-SVD (``TTLinear.from_linear``, ``TTEmbedding.from_embedding``), swaps it in with
``model.set_submodule`` and returns a :class:`CompressionReport`. ``decompress`` turns TT layers back into
exactly equivalent dense ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from .nn.embedding import TTEmbedding, resolve_embedding_dims
from .nn.linear import TTLinear, resolve_dims
from .shapes import as_int, max_tt_ranks

__all__ = ["CompressionReport", "LayerReport", "compress", "decompress"]

Dims = tuple[tuple[int, ...], tuple[int, ...]]


# ----------------------------------------------------------------------------------------- converters
@dataclass(frozen=True)
class _Converter:
    """How one dense layer type becomes a TT layer: its weight, its TT dims, and the conversion."""

    kind: str
    dims: Callable[[Any], Dims]  # (row dims, col dims) of the TT weight
    weight: Callable[[Any], torch.Tensor]  # the dense weight the TT-SVD approximates
    convert: Callable[[Any, int | None, float | None, Dims], TTLinear | TTEmbedding]
    tt_weight: Callable[[Any], torch.Tensor]  # the converted layer's dense weight, same shape as weight
    extra_params: Callable[[Any], int]  # parameters kept beside the cores (a bias)


def _linear_dims(m: nn.Linear) -> Dims:
    in_dims, out_dims = resolve_dims(m.in_features, m.out_features, None, None)
    return out_dims, in_dims


def _embedding_dims(m: nn.Embedding) -> Dims:
    return resolve_embedding_dims(m.num_embeddings, m.embedding_dim, None, None)


_CONVERTERS: dict[type[nn.Module], _Converter] = {
    nn.Linear: _Converter(
        kind="Linear",
        dims=_linear_dims,
        weight=lambda m: m.weight,
        convert=lambda m, r, eps, dims: TTLinear.from_linear(m, r, eps, in_dims=dims[1], out_dims=dims[0]),
        tt_weight=lambda t: t.dense_weight(),
        extra_params=lambda m: 0 if m.bias is None else m.bias.numel(),
    ),
    nn.Embedding: _Converter(
        kind="Embedding",
        dims=_embedding_dims,
        weight=lambda m: m.weight,
        convert=lambda m, r, eps, dims: TTEmbedding.from_embedding(
            m, r, eps, voc_dims=dims[0], emb_dims=dims[1]
        ),
        tt_weight=lambda t: t.to_embedding().weight,
        extra_params=lambda m: 0,
    ),
}
"""Exact types that ``compress`` converts (subclasses such as MultiheadAttention's ``out_proj``, whose
weight its parent reads as a tensor, are deliberately not matched)."""


def _planned_tt_params(dims: Dims, max_tt_rank: int) -> tuple[int, tuple[int, ...]]:
    """Core parameters and ranks TT-SVD gives with a rank cap (ranks clipped to the maximal useful ones)."""
    rows, cols = dims
    bound = max_tt_ranks([m * n for m, n in zip(rows, cols, strict=True)])
    ranks = tuple(min(max_tt_rank, b) for b in bound)
    return sum(ranks[k] * rows[k] * cols[k] * ranks[k + 1] for k in range(len(rows))), ranks


# --------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class LayerReport:
    """One selected layer: what it was, what it became (or why it stayed dense).

    Attributes:
        name: qualified module name (``""`` is the model itself).
        kind: ``"Linear"`` or ``"Embedding"``.
        shape: the dense weight's shape, ``(out, in)`` or ``(num_embeddings, embedding_dim)``.
        dims: the TT weight's ``(row dims, col dims)``.
        tt_ranks: the TT-ranks when replaced, else None.
        params_before: parameters of the dense layer (weight and bias).
        params_after: parameters of the layer in the returned model.
        rel_error: ``||W - W_tt||_F / ||W||_F`` when replaced, else None (0.0 for an all-zero ``W``
            reproduced exactly, ``inf`` if ``W`` is zero and ``W_tt`` is not).
        reason: why the layer stayed dense (``""`` when replaced).
        aliases: the module's other names (a module shared under several names is one row, replaced or kept
            under all of them).
        tied_params: parameters of this layer that an earlier row already counts (tied weights, e.g. an
            output head sharing the embedding's weight); the report's totals count them once.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    dims: Dims
    tt_ranks: tuple[int, ...] | None
    params_before: int
    params_after: int
    rel_error: float | None
    reason: str
    aliases: tuple[str, ...] = ()
    tied_params: int = 0

    @property
    def replaced(self) -> bool:
        """True when the layer was replaced by its TT version."""
        return self.tt_ranks is not None


@dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress` did: one :class:`LayerReport` per selected layer, and totals.

    ``ratio`` is the compression of the *selected* layers (dense parameters before over parameters after,
    biases included, layers left dense counted at their size, each parameter counted once even when tied
    to several layers, as ``model.parameters()`` does); ``model_ratio`` is that of the whole model.
    ``str(report)`` is a readable table; :meth:`to_dict` a JSON-friendly dict.

    Example:
        >>> model, report = tt.compress(model, max_tt_rank=8)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """

    layers: tuple[LayerReport, ...]
    model_params_before: int
    model_params_after: int

    @property
    def params_before(self) -> int:
        """Parameters of the selected layers before compression (tied ones counted once)."""
        return sum(layer.params_before - layer.tied_params for layer in self.layers)

    @property
    def params_after(self) -> int:
        """Parameters of the selected layers after compression (tied ones counted once)."""
        return sum(layer.params_after - layer.tied_params for layer in self.layers)

    @property
    def ratio(self) -> float:
        """Compression factor of the selected layers (``params_before / params_after``)."""
        return self.params_before / self.params_after

    @property
    def model_ratio(self) -> float:
        """Compression factor of the whole model."""
        return self.model_params_before / self.model_params_after

    def to_dict(self) -> dict[str, Any]:
        """The report as plain dicts, lists and numbers (ready for ``json.dump``)."""
        layers = [{**asdict(layer), "replaced": layer.replaced} for layer in self.layers]
        totals = {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "ratio": self.ratio,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "model_ratio": self.model_ratio,
        }
        return {"layers": layers, "totals": totals}

    def __str__(self) -> str:
        head = ("layer", "type", "shape", "dims", "tt_ranks", "before", "after", "ratio", "rel_error")
        rows = [head]
        for lay in self.layers:
            dims = f"{_fmt(lay.dims[0])}x{_fmt(lay.dims[1])}"
            rows.append(
                (
                    " = ".join((lay.name or "(model)", *lay.aliases)),
                    lay.kind,
                    f"{lay.shape[0]}x{lay.shape[1]}",
                    dims,
                    _fmt(lay.tt_ranks) if lay.tt_ranks else "dense",
                    f"{lay.params_before:,}",
                    f"{lay.params_after:,}",
                    f"{lay.params_before / lay.params_after:.1f}x",
                    "-" if lay.rel_error is None else f"{lay.rel_error:.2e}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_rep = sum(lay.replaced for lay in self.layers)
        tied = " (tied parameters counted once)" if any(lay.tied_params for lay in self.layers) else ""
        lines.append(
            f"replaced {n_rep} of {len(self.layers)} selected layers: {self.params_before:,} -> "
            f"{self.params_after:,} parameters{tied} ({self.ratio:.1f}x); whole model "
            f"{self.model_params_before:,} -> {self.model_params_after:,} ({self.model_ratio:.1f}x)"
        )
        lines += [
            f"kept dense {lay.name or '(model)'}: {lay.reason}" for lay in self.layers if not lay.replaced
        ]
        return "\n".join(lines)


def _fmt(dims: Sequence[int]) -> str:
    return "(" + ",".join(str(k) for k in dims) + ")"


# --------------------------------------------------------------------------------------------- compress
def _patterns(value: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"compress: {name} must be a glob string or a sequence of them, got {value!r}")
    return tuple(value)


def _check_budget(max_tt_rank: Any, epsilon: Any, ratio: Any) -> None:
    given = [
        n for n, v in (("max_tt_rank", max_tt_rank), ("epsilon", epsilon), ("ratio", ratio)) if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"compress: pass exactly one of max_tt_rank, epsilon, ratio; got {given or 'none'}")
    if max_tt_rank is not None and as_int(max_tt_rank) is None:
        raise TypeError(f"compress: max_tt_rank must be an int (shared by all layers), got {max_tt_rank!r}")
    if max_tt_rank is not None and max_tt_rank < 1:
        raise ValueError(f"compress: max_tt_rank must be >= 1, got {max_tt_rank}")
    if epsilon is not None and not 0 < epsilon < 1:
        raise ValueError(f"compress: epsilon (relative error per layer) must be in (0, 1), got {epsilon}")
    if ratio is not None and not ratio > 1:
        raise ValueError(f"compress: ratio (target compression factor) must be > 1, got {ratio}")


def _select(
    model: nn.Module, include: tuple[str, ...] | None, exclude: tuple[str, ...] | None
) -> list[tuple[list[str], nn.Module]]:
    """Matching layers in model order, each with all the names it is reachable under (shared modules).

    A module shared under several names is replaced under all of them (replacing it under one name only would
    untie it), so the globs judge it as a whole: selected when any of its names is included and none is
    excluded."""
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) in _CONVERTERS:
            found.setdefault(id(module), ([], module))[0].append(name)

    def matches(names: list[str], patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(n, p) for n in names for p in patterns)

    return [
        (names, module)
        for names, module in found.values()
        if (include is None or matches(names, include)) and not (exclude and matches(names, exclude))
    ]


def _tied(model: nn.Module, layers: list[tuple[list[str], nn.Module]]) -> dict[int, str]:
    """Why some selected layers must stay dense: a parameter also owned by another module (tied weights,
    e.g. an embedding and an output head), which converting one of them would silently untie."""
    owners: dict[int, list[tuple[int, str]]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((id(m), f"{mname}.{pname}" if mname else pname))
    reasons = {}
    for _, m in layers:
        others = sorted({n for p in m.parameters(recurse=False) for mid, n in owners[id(p)] if mid != id(m)})
        if others:
            reasons[id(m)] = (
                f"its parameters are tied to {', '.join(others[:3])}: converting would untie them"
            )
    return reasons


def _counted_before(layers: list[tuple[list[str], nn.Module]]) -> dict[int, int]:
    """Per selected layer (by module id), how many of its parameters an earlier one already holds (tied
    weights): the report and the ratio search count each parameter once, as ``model.parameters()`` does."""
    seen: set[int] = set()
    counted = {}
    for _, m in layers:
        params = list(m.parameters())
        counted[id(m)] = sum(p.numel() for p in params if id(p) in seen)
        seen.update(id(p) for p in params)
    return counted


def _rank_for_ratio(layers: list[tuple[list[str], nn.Module]], ratio: float, fixed: int) -> int:
    """The largest shared rank cap whose planned compression of the selected layers is at least ``ratio``
    (``fixed``: parameters of selected layers that stay dense whatever the rank)."""
    plans = []
    for _, m in layers:
        conv = _CONVERTERS[type(m)]
        plans.append((conv.dims(m), conv.extra_params(m), sum(p.numel() for p in m.parameters())))
    before = fixed + sum(p[2] for p in plans)

    def after(r: int) -> int:
        # A layer whose TT form would not be smaller stays dense (as compress does).
        return fixed + sum(min(_planned_tt_params(dims, r)[0] + extra, dense) for dims, extra, dense in plans)

    if before / after(1) < ratio:
        raise ValueError(
            f"compress: ratio={ratio} is out of reach; even TT-rank 1 gives {before / after(1):.1f}x "
            f"({before:,} -> {after(1):,} parameters in the selected layers)"
        )
    lo, hi = 1, max(max(max_tt_ranks([a * b for a, b in zip(*p[0], strict=True)])) for p in plans)
    while lo < hi:  # after(r) is non-increasing in r: bisect for the last r meeting the ratio
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if before / after(mid) >= ratio else (lo, mid - 1)
    return lo


def _rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F``; for an all-zero ``exact``: 0.0 when ``approx`` is zero too,
    else inf (never NaN). Norms in at least float32: a half-precision norm overflows past 65504."""
    acc = torch.promote_types(exact.dtype, torch.float32)
    num = float(torch.linalg.vector_norm(approx - exact, dtype=acc))
    den = float(torch.linalg.vector_norm(exact, dtype=acc))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _dense_report(name: str, module: nn.Module, reason: str) -> LayerReport:
    conv = _CONVERTERS[type(module)]
    w = conv.weight(module)
    before = sum(p.numel() for p in module.parameters())
    return LayerReport(
        name,
        conv.kind,
        (int(w.shape[0]), int(w.shape[1])),
        conv.dims(module),
        None,
        before,
        before,
        None,
        reason,
    )


def _convert_one(
    name: str, module: nn.Module, max_tt_rank: int | None, epsilon: float | None
) -> tuple[nn.Module | None, LayerReport]:
    """The TT version of one layer and its report, or None and the reason it stays dense."""
    conv = _CONVERTERS[type(module)]
    dims = conv.dims(module)
    before = sum(p.numel() for p in module.parameters())
    if max_tt_rank is not None:
        planned, ranks = _planned_tt_params(dims, max_tt_rank)
        planned += conv.extra_params(module)
        if planned >= before:
            why = f"TT would not save parameters ({planned:,} >= {before:,} at tt_ranks {ranks})"
            return None, _dense_report(name, module, why)
    try:
        new = conv.convert(module, max_tt_rank, epsilon, dims)
    except ValueError as e:  # an unsupported option of the dense layer (e.g. Embedding.max_norm)
        return None, _dense_report(name, module, str(e))
    after = sum(p.numel() for p in new.parameters())
    if after >= before:
        why = f"TT would not save parameters ({after:,} >= {before:,} at epsilon={epsilon})"
        return None, _dense_report(name, module, why)
    w = conv.weight(module)
    err = None  # a meta layer (structure only, e.g. before loading a compressed checkpoint) has no error
    if not w.is_meta:
        with torch.no_grad():
            err = _rel_error(conv.tt_weight(new), w)
    rep = _dense_report(name, module, "")
    return new, replace(rep, tt_ranks=new.tt_ranks, params_after=after, rel_error=err)


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

    Layers are selected by exact type (``nn.Linear``, ``nn.Embedding``; subclasses are left alone), then by
    ``include`` / ``exclude`` globs (``fnmatch``, case-sensitive) over qualified module names such as
    ``"encoder.0.fc1"``. A module shared under several names is replaced under all of them, so it is
    selected when *any* of its names is included and *none* is excluded (its report row lists the other
    names as ``aliases``). TT dims are factored automatically (vocabularies padded, see ``TTEmbedding``).
    A layer whose TT form would not have fewer parameters stays dense, with the reason in the report, and so
    does a layer whose parameters are tied to another module's (converting it would untie them); each
    parameter is counted once in the report and in the ``ratio`` search.

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
        inplace: modify ``model`` itself; by default a deep copy is compressed and ``model`` is untouched.
        dry_run: only plan: run the TT-SVDs and return ``(model, report)`` with ``model`` neither changed nor
            copied, so budgets can be compared by their report (ranks, parameters, errors) first.

    Returns:
        ``(compressed_model, report)``; ``print(report)`` shows a table.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or bad pattern/rank types.
        ValueError: not exactly one budget, a budget out of range, no layer matched, or an unreachable
            ``ratio`` (the message says the best one reachable).

    Complexity: one TT-SVD per selected layer (roughly one SVD pass over each weight).

    Example:
        >>> import torch, tensortrain as tt
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(784, 625), torch.nn.ReLU(), torch.nn.Linear(625, 10))
        >>> small, report = tt.compress(mlp, max_tt_rank=16, include="0")
        >>> print(report)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects an nn.Module, got {type(model).__name__}")
    _check_budget(max_tt_rank, epsilon, ratio)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    lazy = [n for n, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise ValueError(
            f"compress: the model has uninitialized lazy parameters ({', '.join(lazy[:3])}); run one forward "
            "pass first so that their shapes are known"
        )
    target = model if inplace or dry_run else copy.deepcopy(model)
    before_model = sum(p.numel() for p in target.parameters())
    layers = _select(target, inc, exc)
    if not layers:
        seen = [n for n, m in target.named_modules() if type(m) in _CONVERTERS][:8]
        raise ValueError(
            f"compress: no nn.Linear or nn.Embedding layer matched include={include!r}, exclude={exclude!r}; "
            f"candidate layers: {seen or 'none'}"
        )
    tied, counted = _tied(target, layers), _counted_before(layers)
    if ratio is not None:
        free = [(n, m) for n, m in layers if id(m) not in tied]
        fixed = sum(
            sum(p.numel() for p in m.parameters()) - counted[id(m)] for _, m in layers if id(m) in tied
        )
        max_tt_rank = _rank_for_ratio(free, ratio, fixed)
    reports = []
    for names, module in layers:
        new: nn.Module | None = None
        if id(module) in tied:  # only tied layers share parameters with others, and they stay dense
            rep = _dense_report(names[0], module, tied[id(module)])
        else:
            new, rep = _convert_one(names[0], module, max_tt_rank, epsilon)
        reports.append(replace(rep, aliases=tuple(names[1:]), tied_params=counted[id(module)]))
        if new is None or dry_run:
            continue
        for name in names:  # a module shared under several names is replaced everywhere
            if name == "":
                target = new
            else:
                target.set_submodule(name, new)
    saved = sum(r.params_before - r.params_after for r in reports)
    after_model = before_model - saved if dry_run else sum(p.numel() for p in target.parameters())
    return target, CompressionReport(tuple(reports), before_model, after_model)


def decompress(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every ``TTLinear`` / ``TTEmbedding`` by its exact dense equivalent (``to_linear`` /
    ``to_embedding``): the inverse of :func:`compress` up to the TT approximation already made.

    Args:
        model: a module containing TT layers (or a TT layer itself).
        inplace: modify ``model`` itself; by default a deep copy is returned.

    Returns:
        The dense model.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model contains no TT layer.

    Example:
        >>> dense = tt.decompress(small)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"decompress expects an nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    found = [
        (n, m)
        for n, m in target.named_modules(remove_duplicate=False)
        if isinstance(m, TTLinear | TTEmbedding)
    ]
    if not found:
        raise ValueError("decompress: the model contains no TTLinear or TTEmbedding layer")
    dense: dict[int, nn.Module] = {}
    for name, m in found:
        if id(m) not in dense:
            dense[id(m)] = m.to_linear() if isinstance(m, TTLinear) else m.to_embedding()
        if name == "":
            return dense[id(m)]
        target.set_submodule(name, dense[id(m)])
    return target
