"""Shapes and ranks: factorizing sizes into modes, maximal useful ranks, rank normalisation.

Symbols: ``d`` number of cores (modes), ``n_k`` mode sizes, ``r_k`` TT-ranks (``r_0 = r_d = 1``).
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import sys
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

import torch

from .errors import ShapeError

__all__ = ["auto_shape", "max_tt_ranks", "normalize_tt_rank", "padded_shape", "prime_factors", "svd_tt_ranks"]


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (Python, NumPy, or anything with ``__index__``), else None.

    Bools are not integers here (``True`` as a rank or a size is a mistake), nor are floats, even integral ones.
    Only a 0-dim tensor is a scalar: ``operator.index`` also accepts one-element tensors of any shape (and
    bool tensors), which would read ``torch.tensor([5])`` as ``5`` where ``[5]`` and ``np.array([5])`` are
    sequences.

    Example:
        >>> as_int(np.int64(3)), as_int(torch.tensor([3])), as_int(True)  # doctest: +SKIP
        (3, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor) and (value.dim() != 0 or value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def int_at_least(value: Any, low: int, what: str, error: type[ValueError] = ValueError) -> int:
    """``value`` as an int (see :func:`as_int`) of at least ``low``; else a TypeError or ``error`` naming ``what``."""
    n = as_int(value)
    if n is None:
        raise TypeError(f"{what} must be an int, got {value!r}")
    if n < low:
        raise error(f"{what} must be >= {low}, got {n}")
    return n


def past_int64(values: Any) -> int | None:
    """The first Python int in a (nested) list or tuple that int64 cannot hold (torch's overflow on reading it
    is a RuntimeError, which read as the wrong kind of index), else None."""
    if isinstance(values, int) and not isinstance(values, bool):
        return values if not -(2**63) <= values < 2**63 else None
    if isinstance(values, (list, tuple)):
        for v in values:
            if (big := past_int64(v)) is not None:
                return big
    return None


def check_count(d: int, what: str, error: type[ValueError] = ValueError) -> int:
    """``d``, a number of modes or cores, if a tuple can hold that many (Python's OverflowError otherwise)."""
    if d > sys.maxsize:
        raise error(f"{what} must be at most {sys.maxsize} (a tuple of that many), got {show_int(d)}")
    return d


def past_float(value: Any) -> bool:
    """Whether ``value`` is a Python int past float64's range (10**400: no computation here can use it, and
    torch's OverflowError names nothing). Never asked of an int traced by torch.compile, an int64 symbol that
    ``math.isfinite`` cannot take."""
    return type(value) is int and not torch.compiler.is_compiling() and not is_finite(value)


def show_int(value: Any) -> str:
    """``repr(value)``, a long int shortened to its first digits and its length (10**400 has 401 digits)."""
    text = repr(value)
    return text if type(value) is not int or len(text) <= 30 else f"{text[:8]}... ({len(text)} digits)"


def is_finite(value: Any) -> bool:
    """``math.isfinite`` for any real number, an int too large for a float included (no float holds it: False,
    where ``math.isfinite(10**400)`` raises OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_nonnegative(value: Any, what: str) -> None:
    """``value`` is a finite real number >= 0 (else a TypeError or ValueError naming ``what``); a symbolic one
    (``torch.compile`` with ``dynamic=True``) is compared, not passed to ``math.isfinite``, which does not trace."""
    if not isinstance(value, (torch.SymFloat, torch.SymInt)) and (
        isinstance(value, bool) or not isinstance(value, numbers.Real)
    ):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    v: Any = value  # (a Real, SymFloat or SymInt: the comparisons below take each)
    if not (v == v and abs(v) != math.inf and v >= 0) or past_float(v):
        raise ValueError(f"{what} must be a finite number >= 0, got {show_int(value)}")


def plain_scalar(value: Any) -> Any:
    """A 0-dim NumPy/torch value as the Python number it holds (anything else unchanged): for messages and for
    argument forms such as t3f's ``3 * np.ones(d + 1)``."""
    if type(value) in (int, float, complex):  # (the common case; dynamo cannot hasattr a symbolic float)
        return value
    if getattr(value, "is_meta", False):  # (no value to read: the caller's type check names it)
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else value


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order, with multiplicity (``prime_factors(12) == [2, 2, 3]``).

    Complexity: O(sqrt(n)).
    """
    k = as_int(n)
    if k is None or k < 1:
        raise ValueError(f"prime_factors: expected a positive int, got {n!r}")
    n = k
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


_TRIAL_LIMIT = 10**6  # trial division stops here: a cofactor left above it is taken as one (prime) factor


def _divisors(factors: dict[int, int]) -> list[int]:
    """The divisors, ascending, of the number factored as ``factors`` (from :func:`_factorize`)."""
    divisors = [1]
    for q, e in factors.items():
        divisors = [dv * q**k for dv in divisors for k in range(e + 1)]
    return sorted(divisors)


def _factorize(n: int) -> dict[int, int]:
    """``{prime: multiplicity}`` of ``n`` by trial division up to 10^6.

    Exact for every ``n`` below 10^12 (and every ``n`` with at most one prime factor above 10^6); beyond that, a
    cofactor with two large prime factors counts as one factor (the divisors are then a subset), which keeps
    vocabularies of 10^16 rows at milliseconds instead of an O(sqrt n) loop of minutes.
    """
    factors: dict[int, int] = {}
    rest, p = n, 2
    while p * p <= rest and p <= _TRIAL_LIMIT:
        while rest % p == 0:
            factors[p] = factors.get(p, 0) + 1
            rest //= p
        p += 1 if p == 2 else 2
    if rest > 1:
        factors[rest] = factors.get(rest, 0) + 1
    return factors


def auto_shape(n: int, d: int = 3) -> tuple[int, ...]:
    """Factor ``n`` into ``d`` integer factors, as balanced as possible.

    Among all ways to write ``n`` as a product of ``d`` factors, the one whose largest factor is smallest, then
    whose factors sum least (balanced modes give the fewest TT parameters at a given rank); sorted ascending.
    When ``n`` has fewer than ``d`` prime factors, the missing factors are 1 (a mode of size 1 is legal but saves
    nothing: pad the size instead, or choose a smaller ``d``).

    Args:
        n: the size to factor (>= 1).
        d: the number of factors (>= 1).

    Returns:
        A tuple of ``d`` ints whose product is ``n``.

    Complexity: O(min(sqrt(n), 10^6)) for the divisors (exact below 10^12; above, a cofactor with two prime
    factors over 10^6 counts as one factor), plus one step per ascending factorization of ``n`` into ``d``
    divisors (a few thousand at most for sizes of layers and vocabularies).

    Example:
        >>> import tensortrain as tt
        >>> tt.auto_shape(784, 4)
        (4, 4, 7, 7)
        >>> tt.auto_shape(72, 2)
        (8, 9)
    """
    k = as_int(d)
    if k is None or k < 1:
        raise ValueError(f"auto_shape: d must be a positive int, got {d!r}")
    d = check_count(k, "auto_shape: d")
    m = as_int(n)
    if m is None or m < 1:
        raise ValueError(f"auto_shape: expected a positive int, got {n!r}")
    n = m
    factors = _factorize(n)
    primes = sum(factors.values())
    if d > primes:  # at most one factor per prime is above 1: the rest are 1 (and the search stays shallow)
        return (1,) * (d - primes) + (auto_shape(n, primes) if primes else ())
    divisors = _divisors(factors)
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None

    def search(rest: int, left: int, low: int, chosen: tuple[int, ...]) -> None:
        # factors in ascending order: the next one is at least ``low`` and at most rest ** (1 / left)
        nonlocal best
        if left == 1:
            if rest >= low:
                cand = (*chosen, rest)
                key = (rest, sum(cand))
                if best is None or key < best[0]:
                    best = (key, cand)
            return
        for f in divisors:
            if f**left > rest:
                break
            if f >= low and rest % f == 0:
                search(rest // f, left - 1, f, (*chosen, f))

    search(n, d, 1, ())
    assert best is not None  # (1, ..., 1, n) is always a candidate
    return best[1]


def padded_shape(n: int, d: int = 3, *, max_padding: float | None = None) -> tuple[int, ...]:
    """``d`` balanced factors whose product is ``n`` when ``n`` factors well, else slightly above ``n``.

    A size with a large prime factor (1021, or BERT's vocabulary 30522 = 2 * 3 * 5087) has only lopsided
    exact factors (:func:`auto_shape` gives ``(2, 3, 5087)``), whose TT saves little. Then the size is
    padded to the smallest product ``>= n`` of ``d`` modes that are each at most ``t = ceil(n^(1/d))``, the
    most balanced such modes on ties (TT-Rec pads its vocabularies the same way). Exact factors are kept while
    their largest is at most ``2 t``.

    Args:
        n: the size (>= 1).
        d: the number of factors (>= 1).
        max_padding: the largest fraction of padding accepted (``0.25``: a product up to ``1.25 n``); when
            the balanced product would exceed it the exact factors are returned. None: no limit.

    Returns:
        A tuple of ``d`` ints, ascending, whose product is ``n`` or the smallest balanced one above it.

    Raises:
        TypeError: ``n`` or ``d`` not an int, ``max_padding`` not a real number.
        ValueError: ``n`` or ``d`` below 1, ``max_padding`` negative or not finite.

    Complexity: :func:`auto_shape`'s, plus a branch-and-bound search over ascending modes near ``t`` (a few
    hundred steps for the sizes of layers and vocabularies).

    Example:
        >>> import tensortrain as tt
        >>> tt.padded_shape(30522, 4)
        (12, 13, 14, 14)
        >>> tt.padded_shape(97, 4)
        (3, 3, 3, 4)
        >>> tt.padded_shape(784, 4)
        (4, 4, 7, 7)
    """
    n = int_at_least(n, 1, "padded_shape: n")
    d = check_count(int_at_least(d, 1, "padded_shape: d"), "padded_shape: d")
    if max_padding is not None:
        if isinstance(max_padding, bool) or not isinstance(max_padding, numbers.Real):
            raise TypeError(f"padded_shape: max_padding must be None or a real number, got {max_padding!r}")
        if not (is_finite(max_padding) and float(max_padding) >= 0):
            raise ValueError(f"padded_shape: max_padding must be finite and >= 0, got {max_padding!r}")
    exact = auto_shape(n, d)
    target = _ceil_root(n, d)
    if max(exact) <= 2 * target:
        return exact
    padded = _smallest_cover(n, d, target)
    if max_padding is not None and math.prod(padded) > n * (1.0 + float(max_padding)):
        return exact
    return padded


def _ceil_root(n: int, d: int) -> int:
    """The smallest integer ``t`` with ``t**d >= n``, in integers (a float root is off by one just above
    ``k**d`` and far off beyond 2**53)."""
    x = 1 << -(-n.bit_length() // d)  # x**d >= 2**bit_length > n
    while True:  # Newton's iteration from above decreases to floor(n ** (1/d))
        y = ((d - 1) * x + n // x ** (d - 1)) // d
        if y >= x:
            break
        x = y
    return x if x**d >= n else x + 1


def _smallest_cover(n: int, d: int, top: int) -> tuple[int, ...]:
    """The ascending ``d`` modes, each at most ``top`` (``top**d >= n``), with the smallest product ``>= n``;
    on ties the smallest sum (the most balanced)."""
    most = n.bit_length()  # the best cover is below 2n, so at most this many modes are above 1
    if d > most:
        return (1,) * (d - most) + _smallest_cover(n, most, top)
    best: tuple[int, int, tuple[int, ...]] = (top**d, d * top, (top,) * d)

    def search(left: int, low: int, prod: int, chosen: tuple[int, ...]) -> None:
        nonlocal best
        if left == 0:
            key = (prod, sum(chosen), chosen)
            if key < best:
                best = key
            return
        # below -(n // -(...)) even the largest modes after this one would fall short of n
        for m in range(max(low, -(n // -(prod * top ** (left - 1)))), top + 1):
            if prod * m**left > best[0]:  # ascending modes: every completion is larger from here on
                break
            search(left - 1, m, prod * m, (*chosen, m))

    search(d, 1, 1, ())
    return best[2]


def max_tt_ranks(raw_shape: Sequence[int]) -> tuple[int, ...]:
    """The largest TT-ranks that can matter for a tensor with mode sizes ``raw_shape``.

    ``r_k <= min(n_1 ... n_k, n_{k+1} ... n_d)``: the rank of the k-th unfolding. For a TT-matrix pass the
    products ``m_k * n_k`` of row and column modes.

    Returns:
        A tuple of ``d + 1`` ints starting and ending with 1.

    Raises:
        TypeError: a mode size that is not an int (a TT-matrix's ``(rows, cols)`` raw shape included), or
            ``raw_shape`` not an ordered sequence (a set, a string, a number or a 0-dim array).
        ValueError: a mode size below 1, or no mode sizes (a ``ShapeError``).

    Example:
        >>> import tensortrain as tt
        >>> tt.max_tt_ranks((2, 3, 4))
        (1, 2, 4, 1)
    """
    if unordered(raw_shape) or getattr(raw_shape, "ndim", 1) == 0 or not isinstance(raw_shape, Iterable):
        raise TypeError(
            f"max_tt_ranks: raw_shape must be an ordered sequence of ints (list, tuple, torch.Size), got a "
            f"{type(raw_shape).__name__}" + (" of 0 dims" if getattr(raw_shape, "ndim", 1) == 0 else "")
        )
    dims = []
    for n in raw_shape:
        k = as_int(n)
        if k is None:
            hint = "; for a TT-matrix pass the products m_k * n_k" if isinstance(n, Sequence) else ""
            raise TypeError(f"max_tt_ranks: mode sizes must be ints, got {n!r} in {tuple(raw_shape)!r}{hint}")
        if k < 1:
            raise ValueError(f"max_tt_ranks: mode sizes must be >= 1, got {k} in {tuple(raw_shape)!r}")
        dims.append(k)
    if not dims:  # (as tensor_ones([]) refuses it: a TT has at least one core)
        raise ShapeError("max_tt_ranks: expected at least one mode size, got an empty shape")
    left, total = list(itertools.accumulate(dims, operator.mul)), math.prod(dims)
    # (prefix products: the suffix product is total // prefix, exact for ints)
    return (1, *(min(p, total // p) for p in left[:-1]), 1)


def as_whole_int(value: Any) -> int | None:
    """An int, or a whole float (NumPy and 0-dim tensors included) as one; None for anything else."""
    n = as_int(value)
    if n is not None:
        return n
    v = plain_scalar(value)
    if isinstance(v, float) and not isinstance(value, bool) and v.is_integer():
        return int(v)
    return None


def unordered(values: Any) -> bool:
    """Whether ``values`` iterates as something other than an ordered sequence of numbers: a set or a dict (an
    order of its own: its keys, for a dict), or a string or bytes (characters, byte values)."""
    return isinstance(values, (Set, Mapping, str, bytes))


def normalize_tt_rank(tt_rank: int | Sequence[int], d: int, *, name: str = "tt_rank") -> tuple[int, ...]:
    """Turn an int or a sequence of ranks into the full tuple ``(1, r_1, ..., r_{d-1}, 1)``.

    Args:
        tt_rank: one int for every inner bond, a sequence of ``d - 1`` inner ranks, or the full ``d + 1``
            tuple (whose ends must be 1).
        d: the number of cores.
        name: the argument name used in error messages.

    Ranks may be whole floats (t3f casts ``tt_rank = r * np.ones(d + 1)`` with ``astype(int)``); a fractional
    one is refused rather than truncated.

    Raises:
        ShapeError: a rank below 1, the wrong length, full ranks whose ends are not 1, or ``d`` below 1.
        TypeError: a rank that is not a whole number (a bool, a fractional float, a string), or a ``d`` that is
            not an int.

    Example:
        >>> import tensortrain as tt
        >>> tt.normalize_tt_rank(4, 3)
        (1, 4, 4, 1)
    """
    what = "normalize_tt_rank: d (the number of cores)"
    d = check_count(int_at_least(d, 1, what, ShapeError), what, ShapeError)
    if isinstance(tt_rank, bool):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {tt_rank!r}")
    if isinstance(tt_rank, (str, bytes)):  # a sequence, but of characters
        raise TypeError(f"{name} must be an int or a sequence of ints, got {tt_rank!r}")
    one = as_whole_int(tt_rank) if not isinstance(tt_rank, Sequence) else None
    if one is not None:
        if one < 1:  # checked on its own: with d = 1 there is no inner bond to carry it
            raise ShapeError(f"{name} values must be >= 1, got {one}")
        ranks = [1] + [one] * (d - 1) + [1]
    else:
        seq: Any = tt_rank  # a sequence, an array or a tensor of ranks
        if isinstance(seq, (Set, Mapping)):
            # a set or a dict iterates in an order of its own (its keys, for a dict): not a list of ranks
            raise TypeError(
                f"{name} must be an int or an ordered sequence of ints (list, tuple, 1-D array or tensor), got "
                f"a {type(tt_rank).__name__}"
            )
        try:
            items = list(seq)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of ints, got {tt_rank!r}") from None
        maybe = [as_whole_int(r) for r in items]
        given = [r for r in maybe if r is not None]
        if len(given) != len(items):
            raise TypeError(f"{name} must contain ints, got {tuple(items)!r}")
        if len(given) == d + 1:
            if given[0] != 1 or given[-1] != 1:
                raise ShapeError(f"{name}: boundary ranks must be 1, got {tuple(given)}")
            ranks = given
        elif len(given) == d - 1:
            ranks = [1, *given, 1]
        else:
            raise ShapeError(
                f"{name} must be an int, {d - 1} inner ranks or {d + 1} full ranks for d={d} cores, "
                f"got {len(given)} values {tuple(given)}"
            )
    if any(r < 1 for r in ranks):
        raise ShapeError(f"{name} values must be >= 1, got {tuple(ranks)}")
    return tuple(ranks)


def svd_tt_ranks(
    tt_rank: int | Sequence[int], raw_shape: Sequence[int], *, name: str = "tt_rank"
) -> tuple[int, ...]:
    """The ranks TT-SVD (``to_tt_tensor``/``to_tt_matrix``) gives a generic tensor of mode sizes ``raw_shape``
    under the caps ``tt_rank``: ``r_k = min(cap_k, r_{k-1} n_k, n_{k+1} ... n_d)``.

    Each rank is bounded by its unfolding's (:func:`max_tt_ranks`) and by the rank before it times its mode
    size: with uneven caps, ``(1, 1, 8, 1)`` on modes ``(4, 4, 16)`` gives ``(1, 1, 4, 1)``, since core 1 has
    only ``1 * 4`` rows. Layers and initializers build their cores with these ranks, so cores TT-SVD computes
    with the same caps fit them (t3f issue #218). The bound is TT-SVD's, from the left: as in TT-SVD's result,
    a rank may still exceed ``n_{k+1} r_{k+1}`` (``(1, 8, 1, 1)`` on ``(16, 4, 4)`` stays so, where 4 would
    do); ``tt.round``, which truncates from the right, trims those instead.

    Complexity: O(d).

    Raises:
        ValueError, TypeError: as :func:`normalize_tt_rank` and :func:`max_tt_ranks` for bad ranks or modes.

    Example:
        >>> import tensortrain as tt
        >>> tt.svd_tt_ranks((1, 1, 8, 1), (4, 4, 16))
        (1, 1, 4, 1)
    """
    try:
        bound = max_tt_ranks(raw_shape)
    except (TypeError, ValueError) as e:  # (its checks, named after this function)
        raise type(e)(str(e).replace("max_tt_ranks:", "svd_tt_ranks:", 1)) from None
    caps = normalize_tt_rank(tt_rank, len(raw_shape), name=name)
    ranks = [1]
    for k in range(1, len(raw_shape)):
        ranks.append(min(caps[k], bound[k], ranks[-1] * int(raw_shape[k - 1])))
    return (*ranks, 1)
