"""The report of :func:`tensortrain.compress`: one :class:`LayerReport` per selected layer, and a
:class:`CompressionReport` with totals that prints as a table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CompressionReport", "LayerReport"]

Dims = tuple[tuple[int, ...], tuple[int, ...]]  # (row dims, col dims) of a TT weight


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
        held_by: the selected layer that holds this one as a submodule (an adapter registered on an
            ``nn.Linear``, which then stays dense), else ``""``. That row's counts include this one's, before
            and after, and the totals count them there.
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
    held_by: str = ""

    @property
    def replaced(self) -> bool:
        """True when the layer was replaced by its TT version (in a dry run's report: would be)."""
        return self.tt_ranks is not None


@dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress` did: one :class:`LayerReport` per selected layer, and totals.

    ``ratio`` is the compression of the *selected* layers (dense parameters before over parameters after,
    biases included, layers left dense counted at their size, each parameter counted once even when tied
    to several layers, as ``model.parameters()`` does); ``model_ratio`` is that of the whole model.
    ``outside`` accounts for the rest of the model, unchanged: the parameters no selected layer holds,
    grouped by the type of the module holding each, ``(type, modules, parameters, note)`` per type, most
    parameters first (``note``: why an ``nn.Linear``/``nn.Embedding`` among them was not converted, else
    ``""``); with ``params_before`` they sum to ``model_params_before``.
    ``str(report)`` is a readable table; :meth:`to_dict` a JSON-friendly dict.

    Example:
        >>> model, report = tt.compress(model, max_tt_rank=8)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """

    layers: tuple[LayerReport, ...]
    model_params_before: int
    model_params_after: int
    dry_run: bool = False  # compress(dry_run=True): nothing was replaced; the report is the plan
    outside: tuple[tuple[str, int, int, str], ...] = ()

    @property
    def params_before(self) -> int:
        """Parameters of the selected layers before compression (tied ones counted once, a layer held by
        another selected one counted in it)."""
        return sum(layer.params_before - layer.tied_params for layer in self.layers if not layer.held_by)

    @property
    def params_after(self) -> int:
        """Parameters of the selected layers after compression (tied ones counted once, a layer held by
        another selected one counted in it)."""
        return sum(layer.params_after - layer.tied_params for layer in self.layers if not layer.held_by)

    @property
    def ratio(self) -> float:
        """Compression factor of the selected layers (``params_before / params_after``; 1.0 if both are 0)."""
        return _ratio(self.params_before, self.params_after)

    @property
    def model_ratio(self) -> float:
        """Compression factor of the whole model (1.0 for a model without parameters)."""
        return _ratio(self.model_params_before, self.model_params_after)

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
        outside = [
            dict(zip(("type", "modules", "params", "note"), group, strict=True)) for group in self.outside
        ]
        return {"layers": layers, "totals": totals, "outside": outside, "dry_run": self.dry_run}

    def __str__(self) -> str:
        lines = text_table(self._rows()) + [self._totals()]
        if self.outside:
            lines.append(self._outside_line())
        lines += [
            f"kept dense {lay.name or '(model)'}: {lay.reason}" for lay in self.layers if not lay.replaced
        ]
        for lay in self.layers:
            padded = (math.prod(lay.dims[0]), math.prod(lay.dims[1]))
            if lay.replaced and padded != tuple(lay.shape):
                lines.append(
                    f"padded {lay.name or '(model)'}: its dims multiply to {padded[0]}x{padded[1]}; the TT "
                    f"weight's top-left {lay.shape[0]}x{lay.shape[1]} block is the layer's"
                )
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, ...]]:
        """The table's header and one row per selected layer."""
        rows: list[tuple[str, ...]] = [
            ("layer", "type", "shape", "dims", "tt_ranks", "before", "after", "ratio", "rel_error")
        ]
        for lay in self.layers:
            rows.append(
                (
                    " = ".join((lay.name or "(model)", *lay.aliases)),
                    lay.kind,
                    f"{lay.shape[0]}x{lay.shape[1]}",
                    f"{fmt_dims(lay.dims[0])}x{fmt_dims(lay.dims[1])}",
                    fmt_dims(lay.tt_ranks) if lay.tt_ranks else "dense",
                    f"{lay.params_before:,}",
                    f"{lay.params_after:,}",
                    f"{_ratio(lay.params_before, lay.params_after):.1f}x",
                    "-" if lay.rel_error is None else f"{lay.rel_error:.2e}",
                )
            )
        return rows

    def _totals(self) -> str:
        """The line under the table: layers replaced, the selected layers' and the whole model's counts."""
        notes = []
        if any(lay.tied_params for lay in self.layers):
            notes.append("tied parameters counted once")
        if any(lay.held_by for lay in self.layers):
            notes.append("a layer inside another selected one counted in it")
        tied = f" ({'; '.join(notes)})" if notes else ""
        did = "dry run, nothing replaced: would replace" if self.dry_run else "replaced"
        return (
            f"{did} {sum(lay.replaced for lay in self.layers)} of {len(self.layers)} selected layers: "
            f"{self.params_before:,} -> {self.params_after:,} parameters{tied} ({self.ratio:.1f}x); whole model "
            f"{self.model_params_before:,} -> {self.model_params_after:,} ({self.model_ratio:.1f}x)"
        )

    def _outside_line(self) -> str:
        """The line on the rest of the model: its parameters by the type of module holding them."""
        groups = [
            f"{kind} x{n}: {count:,}" + (f", {note}" if note else "")
            for kind, n, count, note in self.outside[:_OUTSIDE_SHOWN]
        ]
        more = "; ..." if len(self.outside) > _OUTSIDE_SHOWN else ""
        total = sum(group[2] for group in self.outside)
        return f"outside the selected layers, unchanged: {total:,} parameters ({'; '.join(groups)}{more})"


_OUTSIDE_SHOWN = 5  # module types named in the report's line on the rest of the model


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as aligned text lines, the first row a header underlined by dashes (the report's table
    and ``tensortrain inspect``'s)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def fmt_dims(dims: Sequence[int]) -> str:
    return "(" + ",".join(str(k) for k in dims) + ")"


def _ratio(before: int, after: int) -> float:
    # after is 0 only when before is too (empty layers stay dense): nothing was compressed
    return before / after if after else 1.0
