"""Which layers ``compress`` converts: the candidates (by exact type, then by ``include`` / ``exclude`` globs
over their names, a module shared under several names judged as a whole), the error when none matches, and the
selected layers that stay dense whatever the budget (tied parameters, a parent that reads the weight, a layer a
converter refuses), all known before any TT-SVD so that the ratio search counts them. Also the distributed
wrappers ``compress`` refuses to reach into.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from .compression_layers import converter_of, refusal

__all__ = [
    "as_patterns",
    "counted_before",
    "distributed_wrapper",
    "holders",
    "kept_dense",
    "no_match",
    "outside",
    "select",
]


def as_patterns(value: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    """``include`` / ``exclude`` (named ``name``) as a tuple of globs, None as None."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"compress: {name} must be a glob string or a sequence of them, got {value!r}")
    return tuple(value)


def distributed_wrapper(module: nn.Module) -> bool:
    """DDP or FSDP: wrappers that register hooks on the parameters they were built with."""
    # (fully_shard, FSDP2, changes a module's class to a generated FSDP<Class> subclass of FSDPModule)
    names = {cls.__name__ for cls in type(module).__mro__}
    return isinstance(module, nn.parallel.DistributedDataParallel) or bool(
        names & {"FullyShardedDataParallel", "FSDPModule"}
    )


def select(
    model: nn.Module, include: tuple[str, ...] | None, exclude: tuple[str, ...] | None
) -> list[tuple[list[str], nn.Module]]:
    """Matching layers in model order, each with all the names it is reachable under (shared modules).

    A module shared under several names is replaced under all of them (replacing it under one name only would
    untie it), so the globs judge it as a whole: selected when any of its names is included and none is
    excluded."""
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if converter_of(module) is not None:
            found.setdefault(id(module), ([], module))[0].append(name)

    def matches(names: list[str], patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(n, p) for n in names for p in patterns)

    chosen = [
        (names, module)
        for names, module in found.values()
        if (include is None or matches(names, include)) and not (exclude and matches(names, exclude))
    ]
    # a mistyped exclude would silently compress the layer it was meant to keep: say which patterns hit nothing
    # (when nothing is chosen at all, compress raises with the candidates instead)
    every = [n for names, _ in found.values() for n in names]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        unmatched = [p for p in patterns or () if not any(fnmatchcase(n, p) for n in every)]
        if unmatched and chosen:
            warnings.warn(
                f"compress: {kind} pattern(s) {unmatched} match no nn.Linear or nn.Embedding layer; candidate "
                f"layers: {every[:8]}{' ...' if len(every) > 8 else ''}{_child_hint(unmatched, every)}"
                f"{_subclass_hint(model, unmatched)}",
                UserWarning,
                stacklevel=3,
            )
    return chosen


def _subclass_hint(model: nn.Module, patterns: Sequence[str] | None = None) -> str:
    """The subclasses of ``nn.Linear`` / ``nn.Embedding`` in ``model`` (those ``patterns`` name, when given), which
    are never candidates: MultiheadAttention's ``out_proj`` is one, and a user who named it would otherwise not
    learn why it is not selected."""
    sub = [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Embedding))
        and converter_of(m) is None
        and (patterns is None or any(fnmatchcase(n, p) for p in patterns))
    ][:4]
    return (
        f"; subclasses of nn.Linear/nn.Embedding are left alone (they may change forward): {sub}"
        if sub
        else ""
    )


def _child_hint(patterns: Sequence[str], names: Sequence[str]) -> str:
    """A hint for patterns naming a module whose layers are its children: globs match whole names."""
    parents = [p for p in patterns if any(n.startswith(p + ".") for n in names)]
    return (
        f" (to select the layers inside a module, match their names: {[p + '.*' for p in parents]})"
        if parents
        else ""
    )


def no_match(
    model: nn.Module,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    inc: tuple[str, ...] | None,
) -> ValueError:
    """The error for a selection that matched no layer (``inc``: the include patterns as :func:`as_patterns` gives
    them): the candidate layers, or what a model without any holds, and the subclasses of ``nn.Linear`` /
    ``nn.Embedding`` it holds, which are left alone."""
    seen = [n for n, m in model.named_modules() if converter_of(m) is not None][:8]
    left = _subclass_hint(model)
    if seen:
        every = [n for n, m in model.named_modules() if converter_of(m) is not None]
        found = f"candidate layers: {seen}{_child_hint(inc or (), every)}"
    else:  # a convolutional model, say: what it holds (containers are not layers, a TT layer's own
        # ParameterList included) and what compress converts
        boxes = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
        kinds = sorted(
            {
                _kind(m)
                for m in model.modules()
                if not isinstance(m, boxes) and not (m is model and list(m.children()))
            }
        )
        found = f"the model has none (its layers: {', '.join(kinds[:8]) or 'none'}); only those are converted"
    return ValueError(
        f"compress: no nn.Linear or nn.Embedding layer matched include={include!r}, exclude={exclude!r}; "
        f"{found}{left}"
    )


def _kind(module: nn.Module) -> str:
    """A module's class name, qualified where it would read as a ``torch.nn`` class it is not (a quantized
    ``Linear``, say, which compress does not convert)."""
    cls = type(module)
    if getattr(nn, cls.__name__, cls) is cls:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


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


_WEIGHT_READERS: dict[type, tuple[str, str]] = {
    cls: (child, fn)
    for cls, child, fn in (
        (getattr(nn, "LinearCrossEntropyLoss", None), "linear", "F.linear_cross_entropy"),  # torch >= 2.10
    )
    if cls is not None
}
"""Built-in modules whose forward reads a child ``nn.Linear``'s ``.weight`` as a tensor (not calling the child):
their child must stay dense. (MultiheadAttention's ``out_proj`` is a subclass, never a candidate.)"""


def _read_by_parent(model: nn.Module, layers: list[tuple[list[str], nn.Module]]) -> dict[int, str]:
    """Why some selected layers must stay dense: a parent of a :data:`_WEIGHT_READERS` type reads their weight
    in its own forward, which a TT layer's weight (a TensorTrain) would break at the first call."""
    selected = {id(m) for _, m in layers}
    reasons = {}
    for m in model.modules():
        # (a subclass too: it inherits the forward that reads the weight, or one of its own that may)
        reader = next((r for cls, r in _WEIGHT_READERS.items() if isinstance(m, cls)), None)
        child = getattr(m, reader[0], None) if reader else None
        if reader and isinstance(child, nn.Module) and id(child) in selected:
            reasons[id(child)] = (
                f"its parent {type(m).__name__} reads its weight as a tensor ({reader[1]}), which a TT layer's "
                "weight is not"
            )
    return reasons


def kept_dense(model: nn.Module, layers: list[tuple[list[str], nn.Module]]) -> dict[int, str]:
    """Selected layers (by module id) that stay dense whatever the budget, with the reason: tied ones and
    those a converter would refuse, all known before any TT-SVD so that the ratio search counts them."""
    kept = _tied(model, layers) | _read_by_parent(model, layers)
    for _, m in layers:
        reason = refusal(m)
        if reason is not None:
            kept[id(m)] = reason
    return kept


def counted_before(layers: list[tuple[list[str], nn.Module]]) -> dict[int, int]:
    """Per selected layer (by module id), how many of its parameters an earlier one already holds (tied
    weights): the report and the ratio search count each parameter once, as ``model.parameters()`` does."""
    seen: set[int] = set()
    counted = {}
    for _, m in layers:
        params = list(m.parameters())
        counted[id(m)] = sum(p.numel() for p in params if id(p) in seen)
        seen.update(id(p) for p in params)
    return counted


def outside(
    model: nn.Module, layers: list[tuple[list[str], nn.Module]]
) -> tuple[tuple[str, int, int, str], ...]:
    """The model's parameters that no selected layer holds, grouped by the type of the module that holds each
    directly (a tied one counted once, under the first module holding it, as ``model.parameters()`` does):
    ``(type, modules, parameters, note)`` per type, most parameters first. ``note`` says why an
    ``nn.Linear``/``nn.Embedding`` among them was not converted; it is ``""`` for other types.

    Without them the report's two ratios do not add up for the reader: an ``nn.TransformerEncoder``'s
    attention (its ``in_proj_weight`` and its ``out_proj``, a subclass of ``nn.Linear`` its parent reads through
    ``.weight``) is a third of its parameters and is never a candidate."""
    seen = {id(p) for _, m in layers for p in m.parameters()}
    groups: dict[str, list] = {}  # type -> [modules, parameters, note]
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if not own:
            continue
        group = groups.setdefault(_kind(module), [0, 0, _outside_note(module)])
        group[0] += 1
        group[1] += sum(p.numel() for p in own)
    return tuple(
        (kind, n, count, note) for kind, (n, count, note) in sorted(groups.items(), key=lambda g: -g[1][1])
    )


def _outside_note(module: nn.Module) -> str:
    if type(module) in (nn.Linear, nn.Embedding):
        return "not selected by include/exclude"
    if isinstance(module, (nn.Linear, nn.Embedding)):
        base = "nn.Linear" if isinstance(module, nn.Linear) else "nn.Embedding"
        return f"an {base} subclass: left alone"
    return ""


def holders(layers: list[tuple[list[str], nn.Module]]) -> dict[int, list[int]]:
    """Per selected layer (by module id) held inside other selected layers, their positions in ``layers``,
    outermost first.

    Only a layer kept dense can hold one (a converter refuses a layer with submodules of its own), and its
    counts include what it holds: the report counts the held layer there."""
    selected = {id(m) for _, m in layers}
    held: dict[int, list[int]] = {}
    for i, (_, m) in enumerate(layers):  # model order: a holder comes before what it holds
        for inner in m.modules():
            if inner is not m and id(inner) in selected:
                held.setdefault(id(inner), []).append(i)
    return held
