"""How the TT layers' sizes become modes: checked or automatic dims, and the checks of sizes and rank forms
that both layers share.

Symbols: ``d`` number of cores, ``m_k`` output modes, ``n_k`` input modes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ..errors import ShapeError
from ..shapes import as_int, auto_shape, int_at_least, padded_shape, prime_factors, unordered

__all__: list[str] = []


def check_features(name: str, value: Any) -> int:
    """A layer's size argument (``in_features``, ``num_embeddings``, ...) as a positive int: an int-like value
    (NumPy and 0-d tensor ints too), never a bool or a float."""
    return int_at_least(value, 1, name, ShapeError)


def choose_d(n: int) -> int:
    """A number of modes giving factors of about 4 to 8 (784 -> 4, 128 -> 3, 10 -> 2)."""
    return max(2, min(8, round(math.log2(max(n, 2)) / 2.5)))


def check_rank_form(rank: Any, dims: dict[str, tuple[int, ...]], automatic: bool, fn: str, arg: str) -> Any:
    """``rank`` as given (an iterator read into a tuple), checked: with automatic dims, a sequence of ranks must
    be the full ``d + 1`` form: the user did not choose ``d``, and ``d - 1`` inner ranks of these dims could be
    meant as the full ranks of another ``d`` (``(1, 8, 1)`` read as the inner ranks of 4 cores,
    ``(1, 1, 8, 1, 1)``)."""
    if rank is None or isinstance(rank, (numbers.Number, str)) or getattr(rank, "ndim", 1) == 0:
        return rank
    if not hasattr(rank, "__len__"):
        try:
            rank = tuple(rank)
        except TypeError:
            return rank  # (not iterable: normalize_tt_rank refuses it)
    if not automatic:
        return rank
    d = len(next(iter(dims.values())))
    if len(rank) != d + 1:
        shown = tuple(rank.tolist()) if hasattr(rank, "tolist") else tuple(rank)
        chosen = ", ".join(f"{k}={v}" for k, v in dims.items())
        raise ShapeError(
            f"{fn}: {arg}={shown} is a sequence, but the dims were chosen automatically ({chosen}: {d} cores); "
            f"give the full {d + 1} ranks (1, r_1, ..., r_{d - 1}, 1), one int, or the dims with it"
        )
    return rank


def check_dims(
    name: str, dims: Sequence[int], size: int | None, size_name: str, *, pad: bool | None = False
) -> tuple[int, ...]:
    """``dims`` as a tuple of positive ints multiplying to ``size`` (at least ``size`` with ``pad``; any product
    when ``size`` is None). ``pad=None``: a size that is never padded (an embedding's width): no hint of
    ``pad=True``."""
    if unordered(dims):  # (a set iterates in an order of its own, and drops repeated modes)
        raise TypeError(f"{name} must be a sequence of ints in a fixed order (list, tuple), got {dims!r}")
    try:
        ints = [as_int(k) for k in dims]
    except TypeError:  # not iterable
        raise TypeError(f"{name} must be a sequence of ints, got {dims!r}") from None
    if any(k is None for k in ints):  # 8.7 would silently read as 8
        raise TypeError(f"{name} must be a sequence of ints, got {dims!r}")
    out = tuple(k for k in ints if k is not None)
    if not out or any(k < 1 for k in out):
        raise ShapeError(f"{name} must be a non-empty sequence of positive ints, got {out}")
    if size is not None and (math.prod(out) < size if pad else math.prod(out) != size):
        more = math.prod(out) > size
        hint = (
            " (dims multiplying to more, which pads the size, need pad=True)"
            if more and pad is False
            else " (with pad=True they may multiply to more, never to less)"
            if pad
            else ""
        )
        raise ShapeError(f"{name}={out} multiply to {math.prod(out)}, but {size_name}={size}{hint}")
    return out


_MAX_PADDING = 0.25
"""Automatic dims pad a size by at most this fraction (a classifier's 10 outputs stay (1, 1, 2, 5), not 16)."""


def _modes(n: int, d: int, pad: bool) -> tuple[int, ...]:
    """``d`` balanced modes of ``n``, ascending; with ``pad``, padded (by at most 25%) when the exact ones are
    lopsided."""
    return padded_shape(n, d, max_padding=_MAX_PADDING) if pad else auto_shape(n, d)


def _richness(n: int, pad: bool) -> int:
    """How many modes ``n`` fills without modes of 1: its prime factors, or :func:`choose_d` when padded."""
    d = choose_d(n)
    return d if pad and math.prod(_modes(n, d, pad)) != n else len(prime_factors(n))


def resolve_dims(
    in_features: int,
    out_features: int,
    in_dims: Sequence[int] | None,
    out_dims: Sequence[int] | None,
    pad: bool | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate given mode sizes or factor the sizes into ``d`` balanced modes (shared ``d``).

    Missing dims are factored with :func:`tensortrain.shapes.padded_shape`: input modes ascending, output
    modes descending, so that the products ``m_k n_k`` (which set the core sizes) stay balanced. Unless ``pad``
    is False, a size whose exact factors are lopsided (a large prime factor: 1021, 30522 = 2 * 3 * 5087) is
    padded to a balanced product at most 25% larger. ``d`` (when no dims are given) aims at modes of about 4
    to 8 and never exceeds what the richer size can fill (its count of prime factors, unless it is padded), so
    no core has both modes equal to 1, except that ``d`` is at least 2: a size of 1 beside a prime or 1 (1 -> 7)
    gets one such core. Given dims must multiply to the size; with ``pad=True`` they may multiply to more.

    Raises:
        ShapeError: given dims that multiply to another size (with ``pad=True``: to less), or in/out dims of
            different lengths.
        TypeError: ``pad`` not None or a bool.
    """
    if pad is not None and not isinstance(pad, bool):
        raise TypeError(f"pad must be None, True or False, got {pad!r}")
    # given dims may multiply to more only when asked; automatic dims pad unless refused
    given, auto = bool(pad), pad is not False
    # read once (an iterator too) and checked as ints, then against the sizes
    ins = None if in_dims is None else check_dims("in_dims", in_dims, None, "in_features")
    outs = None if out_dims is None else check_dims("out_dims", out_dims, None, "out_features")
    if (
        ins
        and outs
        and in_features != out_features
        and (math.prod(ins), math.prod(outs)) == (out_features, in_features)
    ):
        raise ShapeError(  # (to_tt_matrix says the same of a transposed shape)
            f"in_dims={ins} multiply to out_features={out_features} and out_dims={outs} to "
            f"in_features={in_features}: they look swapped (in_dims are the input modes)"
        )
    ins = None if ins is None else check_dims("in_dims", ins, in_features, "in_features", pad=given)
    outs = None if outs is None else check_dims("out_dims", outs, out_features, "out_features", pad=given)
    if ins is not None and outs is not None and len(ins) != len(outs):
        raise ShapeError(
            f"in_dims={ins} and out_dims={outs} must have the same length (one pair of modes per core)"
        )
    d = len(ins) if ins is not None else len(outs) if outs is not None else None
    if d is None:
        # No more modes than the richer size fills: otherwise some core would have m_k = n_k = 1 and only add
        # an r x r factor (two primes give d = 2: a plain low-rank factorization).
        richest = max(_richness(in_features, auto), _richness(out_features, auto))
        d = max(2, min(choose_d(max(in_features, out_features)), richest))
    if ins is None:
        ins = _modes(in_features, d, auto)
    if outs is None:
        outs = tuple(reversed(_modes(out_features, d, auto)))
    return ins, outs


def resolve_embedding_dims(
    num_embeddings: int,
    embedding_dim: int,
    voc_dims: Sequence[int] | None,
    emb_dims: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate or choose the row modes (product ``>= num_embeddings``) and column modes (product ``== D``).

    Raises:
        ShapeError: ``voc_dims`` multiplying to less than ``num_embeddings``, ``emb_dims`` not multiplying to
            ``embedding_dim``, or dims of different lengths.
    """
    emb = (
        None
        if emb_dims is None
        else check_dims("emb_dims", emb_dims, embedding_dim, "embedding_dim", pad=None)
    )
    voc = None
    if voc_dims is not None:
        voc = check_dims("voc_dims", voc_dims, None, "")  # any product of at least V (checked next)
        if math.prod(voc) < num_embeddings:
            raise ShapeError(
                f"voc_dims={voc} multiply to {math.prod(voc)}, fewer than num_embeddings={num_embeddings}"
            )
    if voc is not None and emb is not None and len(voc) != len(emb):
        raise ShapeError(f"voc_dims={voc} and emb_dims={emb} must have the same length (one pair per core)")
    d = len(voc) if voc is not None else len(emb) if emb is not None else min(4, choose_d(num_embeddings))
    voc = voc if voc is not None else padded_shape(num_embeddings, d)
    emb = emb if emb is not None else tuple(reversed(auto_shape(embedding_dim, d)))
    return voc, emb
