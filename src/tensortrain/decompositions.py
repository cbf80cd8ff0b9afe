"""TT-SVD (``to_tt_tensor``, ``to_tt_matrix``), TT-rounding (``round``) and orthogonalization (t3f's names).

Symbols: ``d`` number of cores, ``n_k`` mode sizes (``m_k n_k`` for a TT-matrix, whose row and column modes are
interleaved), ``r_k`` TT-ranks, ``B`` batch size, ``eps`` relative Frobenius error.

Internally every object is handled as a batch of TT-tensors with 3-index cores ``(B, r_{k-1}, n_k, r_k)``; a
single TT is a batch of one (rounding keeps its cores ``(r_{k-1}, n_k, r_k)`` without the batch axis and views
each unfolding as a batch of one where a factorization needs it) and a TT-matrix core ``(r, m, n, r')`` is viewed
as ``(r, m n, r')``. The ranks of a
batch are common to all elements: each truncation keeps the largest rank any element needs, so every element
meets its own error bound.

Error bounds (Oseledets 2011, "Tensor-Train Decomposition", Thm. 2.2 and Alg. 1-2): the errors of the d-1
truncated SVDs of a sweep are orthogonal, so ``||A - TT(A)||_F^2 = sum_k err_k^2``. Giving every SVD the budget
``delta = eps ||A||_F / sqrt(d - 1)`` therefore guarantees ``||A - TT(A)||_F <= eps ||A||_F`` with the smallest
rank per SVD, up to round-off: in float32 an ``eps`` below about 1e-5 (some tens of eps) may not be met (a
float32 ``8^4`` tensor kept at full ranks is 1.2e-6 from its input; rounding adds its own round-off). A rank
cap (``max_tt_rank``) is applied on top: where it binds, the error is the one of the cap (at most
``sqrt(d - 1)`` times the best possible with those ranks), not ``eps``. Pass ``max_tt_rank=None`` for the pure
epsilon criterion.

``method`` selects the SVD of each unfolding (see :mod:`tensortrain.truncation`): ``"auto"`` uses a randomized
range finder only for a pure rank cap on large unfoldings (``m n min(m, n) >= 2^30``, 1024 x 1024 and up;
rank + oversampling at most a quarter of ``min(m, n)``), where it is several times faster with an error within
1.05x of the exact TT-SVD's (measured up to 1.042x; a probabilistic bound: the sketch is drawn from a fixed
seed, so a matrix built against that very sketch can miss it, while inputs unrelated to it meet it with
overwhelming probability); with ``epsilon`` given it uses the exact SVD (smallest ranks). ``"randomized"``
forces the sketch wherever the rank cap is below the unfolding's smaller side (the sketch has the cap's size
plus oversampling, so without ``max_tt_rank``, or where the cap keeps everything, the exact SVD runs); with
``epsilon`` its error is measured, so the bound still holds, but ranks may exceed the minimal ones by a
little; ``"exact"`` forces ``torch.linalg.svd``.

The sweeps themselves (and their retry in a wider dtype on overflow) are :mod:`tensortrain.svd_sweeps`; this
module checks the arguments and wraps the cores.

float16/bfloat16 inputs are factored in float32 (LAPACK has no half precision) and the cores are cast back.

Everything is differentiable through ``torch.linalg.svd``/``qr``. Gradients are right where all the singular
values of each truncated unfolding are distinct (torch's SVD backward divides by the gap of every pair, the dropped
ones' too: two equal dropped values give NaN) and the unfoldings have full rank; an exactly
rank-deficient representation kept whole by the cap, such as ``round(x + zeros)`` whose added cores are zero blocks
or ``round(x + x + x)``, can give NaN or silently wrong finite gradients (the QR's and SVD's backward formulas
divide by zero there, as t3f's do); a small ``epsilon`` drops those directions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ._transforms import valueless, valueless_kind, without_autocast
from .errors import ShapeError
from .init_args import matrix_shape_dims
from .operands import as_flag, as_tensor, check_strided, holds_tensor, matrix_dims, tensor_dims
from .orthogonalization import (
    check_finite_cores,
    merge_modes,
    orthogonalize,
    orthogonalize_tt_cores,
    split_modes,
)
from .shapes import as_int, is_finite, max_tt_ranks, normalize_tt_rank, plain_scalar
from .svd_sweeps import round_sweep, tt_svd
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch, dtensor_hint, is_dtensor
from .truncation import Method, check_method

__all__ = ["orthogonalize", "orthogonalize_tt_cores", "round", "to_tt_matrix", "to_tt_tensor"]

MaxRank = int | float | Sequence[int] | Sequence[float] | None


# ---------------------------------------------------------------------------------------- validation
def _as_dense(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, TensorTrainBase):  # (it has __array__, whose conversion fails deep inside torch)
        raise TypeError(
            f"{name} expects a dense tensor, got a {type(x).__name__}: it is a TT already; use tt.round to "
            "re-compress it, or tt.full for its dense tensor"
        )
    if not isinstance(x, torch.Tensor):
        if not (hasattr(x, "__array__") or isinstance(x, (list, tuple))):
            raise TypeError(
                f"{name} expects a torch.Tensor (or a NumPy array or nested list), got {type(x).__name__}"
            )
        # (as_tensor reads each value out: their gradients would be dropped with a warning)
        if holds_tensor(x):
            raise TypeError(
                f"{name}: the {type(x).__name__} holds tensors: torch.stack them into one tensor first"
            )
        try:  # NumPy arrays and nested lists, as t3f's tf.convert_to_tensor takes them
            x = as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:  # (ragged lists, strings: torch's own messages)
            raise TypeError(
                f"{name}: cannot read the {type(x).__name__} as a tensor of numbers ({e})"
            ) from None
    if is_dtensor(x):  # (torch's SVD and .tolist() of a shard failed deep inside, or left DTensor cores)
        raise TypeError(dtensor_hint(name, "the input"))
    check_strided(name, "the input", x)
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {x.dtype}; cast it first")
    if x.element_size() == 1 or x.dtype == torch.complex32:  # (no sums, products or SVDs run in them)
        raise TypeError(
            f"{name}: TT cores are 16 bits or more (float16 and up, complex64 and up), got dtype {x.dtype}; cast "
            f"it first, e.g. x.to(torch.{'complex64' if x.is_complex() else 'float32'})"
        )
    if x.dim() == 0 or x.numel() == 0:
        raise ShapeError(
            f"{name}: expected a non-empty tensor with at least one dim, got shape {tuple(x.shape)}"
        )
    # A finite sum proves every entry finite (NaN and inf propagate) at a fraction of an elementwise check's
    # cost; only an overflowing sum needs the full check. Meta tensors have no values to check; traced code
    # takes values through unchecked (see orthogonalization.all_finite)
    if (
        not valueless(x)
        and not torch.compiler.is_compiling()
        and not bool(torch.isfinite(x.sum()))
        and not bool(torch.isfinite(x).all())
    ):
        raise ValueError(f"{name}: the input contains NaN or inf values; TT-SVD needs finite entries")
    return x


def _epsilon(epsilon: float | None, name: str, like: torch.Tensor) -> float | None:
    if epsilon is None:
        return None
    epsilon = plain_scalar(epsilon)  # (a 0-d NumPy or torch value, as max_tt_rank takes)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"{name}: epsilon must be a float or None, got {epsilon!r}")
    if not is_finite(epsilon) or epsilon < 0:
        raise ValueError(f"{name}: epsilon must be a finite number >= 0, got {epsilon}")
    if valueless(like):  # (max_tt_rank alone needs shapes only: meta and fake tensors work there)
        raise ValueError(
            f"{name}: epsilon picks the ranks from singular values, and {valueless_kind(like)} has no values to "
            "read; pass max_tt_rank alone"
        )
    return float(epsilon)


def _caps(max_tt_rank: MaxRank, modes: Sequence[int], name: str) -> tuple[int, ...]:
    """Full ``d + 1`` rank caps, clipped to the maximal useful ranks; None means no cap. Errors start with
    ``name``, the public function the caller was given ``max_tt_rank`` by."""
    bound = max_tt_ranks(modes)
    if max_tt_rank is None:
        return bound
    if type(max_tt_rank) is int and max_tt_rank >= 1:  # (the common case, as the general path reads it)
        return tuple(min(max_tt_rank, b) for b in bound)
    try:
        caps = normalize_tt_rank(_t3f_caps(max_tt_rank, len(modes)), len(modes), name="max_tt_rank")
    except (ShapeError, TypeError) as e:
        raise type(e)(f"{name}: {e}") from None
    return tuple(min(c, b) for c, b in zip(caps, bound, strict=True))


def check_caps(tt: TensorTrainBase, max_tt_rank: MaxRank, name: str) -> tuple[int, ...]:
    """``max_tt_rank`` validated for ``tt`` as :func:`round` reads it (its full ``d + 1`` caps)."""
    if tt.is_tt_matrix():
        modes = [m * n for m, n in zip(*matrix_dims(tt), strict=True)]
    else:
        modes = list(tensor_dims(tt))
    return _caps(max_tt_rank, modes, name)  # (from the shapes: merge_modes would copy half-precision cores)


def check_budget(
    max_tt_rank: MaxRank, epsilon: float | None, modes: Sequence[int], name: str, like: torch.Tensor
) -> None:
    """``max_tt_rank`` and ``epsilon`` checked as the TT-SVD of a tensor with ``modes`` reads them, with
    errors named after ``name`` (a layer's ``from_linear`` that TT-SVDs its weight ``like``, say)."""
    _caps(max_tt_rank, modes, name)
    _epsilon(epsilon, name, like)


def _t3f_caps(max_tt_rank: Any, d: int) -> Any:
    """t3f's cap forms as :func:`normalize_tt_rank` reads them; anything else is passed on for it to refuse.

    t3f casts the caps with ``astype(int)`` and reads only the inner entries of ``d + 1`` of them, so t3f
    code writes ``max_tt_rank=3 * np.ones(d + 1)`` or ``[10, 20, 30, 40, 30]`` (testTTCompositeRankMatrix).
    Whole floats become ints here; a fractional cap is refused rather than truncated (``2.5`` is a mistake,
    not a 2). Of ``d + 1`` caps the first and last are dropped (boundary ranks are 1 whatever they say), but
    they must still be ints >= 1, as t3f checks every entry.
    """
    ndim = getattr(max_tt_rank, "ndim", None)  # NumPy arrays and tensors
    if isinstance(max_tt_rank, numbers.Number) or ndim == 0:
        values, scalar = [plain_scalar(max_tt_rank)], True
    elif ndim == 1 or (isinstance(max_tt_rank, Sequence) and not isinstance(max_tt_rank, (str, bytes))):
        values, scalar = [plain_scalar(v) for v in max_tt_rank], False
    else:
        return max_tt_rank
    shown = values[0] if scalar else tuple(values)
    if any(isinstance(v, float) and not v.is_integer() for v in values):  # (also inf and nan)
        raise TypeError(
            f"max_tt_rank values must be whole numbers (ints, or floats such as 3.0), got {shown}"
        )
    values = [int(v) if isinstance(v, float) else v for v in values]
    if scalar or len(values) != d + 1:
        return values[0] if scalar else values
    ranks = []
    for v in values:
        r = as_int(v)
        if r is None:
            raise TypeError(f"max_tt_rank must contain ints, got {shown!r}")
        ranks.append(r)
    if any(r < 1 for r in ranks):
        raise ShapeError(f"max_tt_rank values must be >= 1, got {shown}")
    return ranks[1:-1]


# -------------------------------------------------------------------------------------------- TT-SVD
def _wrap(cores: list[torch.Tensor], batch: bool) -> Any:
    return TensorTrainBatch(cores) if batch else TensorTrain([c[0] for c in cores])


@without_autocast
def to_tt_tensor(
    tens: torch.Tensor,
    max_tt_rank: MaxRank = 10,
    epsilon: float | None = None,
    *,
    method: Method = "auto",
    batch: bool = False,
) -> TensorTrain | TensorTrainBatch:
    """TT-SVD of a dense tensor (t3f's ``to_tt_tensor``, with ``epsilon`` implemented).

    Args:
        tens: a dense floating point tensor ``(n_1, ..., n_d)``; with ``batch=True``, ``(B, n_1, ..., n_d)``.
            NumPy arrays are accepted. (t3f's name for it, so ``to_tt_tensor(tens=...)`` ports.)
        max_tt_rank: cap on the TT-ranks: an int, ``d - 1`` inner values, or ``d + 1`` values whose first and
            last are ignored (as t3f does; they must still be ints >= 1); None for no cap. A list, tuple,
            NumPy array or tensor; whole floats count as ints (t3f's ``3 * np.ones(d + 1)``), fractional ones
            are refused. Clipped to the maximal useful ranks (the ranks of the unfoldings).
        epsilon: relative Frobenius error: the result satisfies ``||A - TT(A)||_F <= epsilon ||A||_F`` (up to
            round-off) with the smallest rank per SVD, unless ``max_tt_rank`` binds first (see the module
            docstring).
        method: ``"auto"``, ``"exact"`` or ``"randomized"``: how each unfolding is factored.
        batch: treat the first axis as a batch and return a :class:`TensorTrainBatch` with common ranks.

    Returns:
        A :class:`TensorTrain` (or batch) whose cores 1..d-1 are left-orthogonal.

    Raises:
        TypeError: not a tensor, an integer dtype or one below 16 bits (float8, complex32), a non-number
            ``epsilon``, a fractional or non-number ``max_tt_rank``.
        ShapeError: an empty tensor, bad ``max_tt_rank`` (length, values < 1).
        ValueError: NaN or inf entries, a negative ``epsilon``, an unknown ``method``.

    Shape:
        tens: ``(n_1, ..., n_d)`` or ``(B, n_1, ..., n_d)`` with ``batch=True``.

    Complexity: exact: one SVD per unfolding (``r_{k-1} n_k`` rows, ``n_{k+1} ... n_d`` columns), for
        ``N = n^d`` entries O(B N n) the first, O(B N r^2) the second, which dominates once ``r^2 > n``; with
        no cap the middle one's O(B N^(3/2)). Randomized O(B N k q) per SVD.

    Example:
        >>> import torch, tensortrain as tt
        >>> a = torch.randn(3, 4, 5, dtype=torch.float64)
        >>> x = tt.to_tt_tensor(a, max_tt_rank=20)
        >>> torch.allclose(tt.full(x), a)
        True
    """
    method = check_method(method, "to_tt_tensor")
    batch = as_flag(batch, "to_tt_tensor", "batch")  # ("False" is truthy: a batch it says it is not)
    x = _as_dense(tens, "to_tt_tensor")
    x = x if batch else x.unsqueeze(0)
    if x.dim() < 2:
        raise ShapeError(
            f"to_tt_tensor: batch=True needs a (B, n_1, ..., n_d) tensor, got shape {tuple(tens.shape)}"
        )
    modes = tuple(x.shape[1:])
    caps = _caps(max_tt_rank, modes, "to_tt_tensor")
    cores = tt_svd(x, modes, caps, _epsilon(epsilon, "to_tt_tensor", x), method)
    return _wrap(cores, batch)  # type: ignore[no-any-return]


def _matrix_modes(shape: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return matrix_shape_dims(shape, "to_tt_matrix: shape")  # (the initializers' shape forms)


def _check_matrix_shape(
    given: tuple[int, ...],
    elem: tuple[int, ...],
    rows: tuple[int, ...],
    cols: tuple[int, ...],
    batch: bool,
) -> None:
    """Accept an element shape ``(M, N)`` or ``(m_1..m_d, n_1..n_d)`` only: any other shape with ``M N``
    entries (the transpose, a flat vector, ``(2, 60)`` for 6 x 20) would be reshaped into scrambled modes."""
    m, n = math.prod(rows), math.prod(cols)
    raw = (*rows, *cols)
    # a flat vector is unambiguous for a column or row TT-matrix (t3f's [[3, 4], None] on a length-12 vector)
    if elem in ((m, n), raw) or (elem == (m * n,) and 1 in (m, n)):
        return
    if batch:
        lead, expected = "(B, M, N) ", f"(B, M, N) = (B, {m}, {n}) or (B, {', '.join(map(str, raw))})"
    else:
        lead, expected = "", f"(M, N) = {(m, n)} or the raw shape {raw}"
    hint = ""
    if elem == (n, m):
        hint = "; it looks transposed: pass mat.T (or .mT), or swap the row and column dims in shape"
    raise ShapeError(
        f"to_tt_matrix: a {lead}matrix of shape {given} does not match shape {rows} x {cols} "
        f"({m} x {n} = {m * n} entries per matrix); expected {expected}{hint}"
    )


@without_autocast
def to_tt_matrix(
    mat: torch.Tensor,
    shape: Sequence[Sequence[int] | None],
    max_tt_rank: MaxRank = 10,
    epsilon: float | None = None,
    *,
    method: Method = "auto",
    batch: bool = False,
) -> TensorTrain | TensorTrainBatch:
    """TT-SVD of a dense matrix into a TT-matrix (t3f's ``to_tt_matrix``, with ``epsilon`` implemented).

    The ``M x N`` matrix is reshaped to ``(m_1, ..., m_d, n_1, ..., n_d)``, the modes are interleaved to
    ``(m_1 n_1, ..., m_d n_d)`` and the result is TT-SVD'd; cores are ``(r_{k-1}, m_k, n_k, r_k)``.

    Args:
        mat: ``(M, N)`` with ``M = m_1...m_d`` and ``N = n_1...n_d`` (or already ``(m_1..m_d, n_1..n_d)``);
            with ``batch=True`` a leading batch axis. (t3f's name for it, so ``to_tt_matrix(mat=...)`` ports.)
        shape: ``[[m_1, ..., m_d], [n_1, ..., n_d]]``; one side may be None (a vector: all its modes are 1).
            As in t3f, a 2-D integer NumPy array (``np.array([[7, 4], [5, 5]])``) or a pair of 1-D ones works.
        max_tt_rank, epsilon, method, batch: as in :func:`to_tt_tensor` (maximal ranks use ``m_k n_k``).

    Returns:
        A TT-matrix :class:`TensorTrain` (or :class:`TensorTrainBatch`).

    Raises:
        TypeError: not a tensor, an integer dtype or one below 16 bits (float8, complex32), a malformed
            ``shape``, a fractional ``max_tt_rank``.
        ShapeError: the matrix is neither ``(M, N)`` nor ``(m_1, ..., m_d, n_1, ..., n_d)`` (nor a flat vector
            when ``M`` or ``N`` is 1; a transpose or any other reshape is refused, not reshaped), bad ranks.
        ValueError: NaN or inf entries, a negative ``epsilon``, an unknown ``method``.

    Shape:
        mat: ``(M, N)`` or ``(m_1, ..., m_d, n_1, ..., n_d)``; with ``batch=True`` a leading ``B``.

    Complexity: as :func:`to_tt_tensor` with modes ``m_k n_k`` and ``M N`` entries: exact O(B M N m_1 n_1)
        the first SVD, O(B M N r^2) the second, with no cap the middle one's O(B (M N)^(3/2)); randomized
        O(B M N k q) per SVD.

    Example:
        >>> import torch, tensortrain as tt
        >>> w = torch.randn(784, 625)
        >>> x = tt.to_tt_matrix(w, [[4, 7, 4, 7], [5, 5, 5, 5]], max_tt_rank=8)
        >>> x.tt_ranks
        (1, 8, 8, 8, 1)
    """
    method = check_method(method, "to_tt_matrix")
    batch = as_flag(batch, "to_tt_matrix", "batch")
    rows, cols = _matrix_modes(shape)
    dense = _as_dense(mat, "to_tt_matrix")
    x = dense if batch else dense.unsqueeze(0)
    _check_matrix_shape(tuple(dense.shape), tuple(x.shape[1:]), rows, cols, batch)
    d = len(rows)
    perm = [0] + [p for k in range(d) for p in (1 + k, 1 + d + k)]
    inter = x.reshape(x.shape[0], *rows, *cols).permute(perm)
    modes = tuple(a * b for a, b in zip(rows, cols, strict=True))
    caps = _caps(max_tt_rank, modes, "to_tt_matrix")
    cores = tt_svd(
        inter.reshape(x.shape[0], *modes), modes, caps, _epsilon(epsilon, "to_tt_matrix", x), method
    )
    cores = [c.reshape(c.shape[0], c.shape[1], rows[k], cols[k], c.shape[-1]) for k, c in enumerate(cores)]
    return _wrap(cores, batch)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------- TT-rounding
@without_autocast
def round(  # noqa: A001  (t3f's name; shadows the builtin only inside this module)
    tt: TensorTrainBase,
    max_tt_rank: MaxRank = None,
    epsilon: float | None = None,
    *,
    method: Method = "auto",
) -> Any:
    """TT-rounding: re-compress a TT to smaller ranks (t3f's ``round``, with ``epsilon`` implemented).

    Left-to-right QR orthogonalization, then right-to-left truncated SVDs of the cores (Oseledets 2011,
    Alg. 2, in t3f's order: the same cores as t3f's ``round``, checked against t3f 1.2.0). With ``epsilon``
    the result satisfies ``||X - round(X)||_F <= epsilon ||X||_F`` (up to round-off) with the smallest rank
    per SVD (unless ``max_tt_rank`` binds first); with neither, it truncates nothing: it only clips the
    ranks to the maximal useful ones (exact up to round-off; ``round(a + a)`` keeps ranks up to those bounds,
    pass ``epsilon`` to find the smaller ranks such a sum really has). ``epsilon`` is relative to ``X``'s own
    norm: a difference that cancels exactly (``x - x``) comes out of the QR sweep as round-off (about
    ``1e-15 ||x||`` in float64), which a relative ``epsilon`` keeps at full rank; compare its norm with ``x``'s,
    or cap the ranks. Rounding a result again with the same ``epsilon`` can lower its ranks further (each pass
    meets the bound for its own input, so their errors add up); with ``max_tt_rank`` alone a second pass keeps
    the result.

    Args:
        tt: a :class:`TensorTrain` or :class:`TensorTrainBatch` (tensors or matrices).
        max_tt_rank: cap on the ranks: an int, ``d - 1`` or ``d + 1`` values (the first and last of ``d + 1``
            are ignored, as in t3f), or None; whole floats count as ints (see :func:`to_tt_tensor`).
        epsilon: relative Frobenius error, or None.
        method: ``"auto"``, ``"exact"`` or ``"randomized"``: how each core unfolding is factored.

    Returns:
        An object of the same type and raw shape, with right-orthogonal cores 2..d (the norm in the first core,
        as t3f's); a batch gets common ranks.

    Raises:
        TypeError: ``tt`` is not a TT object; a non-number ``epsilon``; a fractional ``max_tt_rank``.
        ShapeError: bad ``max_tt_rank``.
        ValueError: NaN or inf in the cores, a negative ``epsilon``, an unknown ``method``.

    Complexity: O(B d n r^3) for input ranks r.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((4, 4, 4), tt_rank=2)
        >>> tt.round(a + a, max_tt_rank=2).tt_ranks
        (1, 2, 2, 1)
    """
    check_finite_cores(tt, "round")  # (first: a non-TT has no .device for the epsilon check)
    method = check_method(method, "round")
    eps = _epsilon(epsilon, "round", tt.tt_cores[0])
    cores, batch, raw = merge_modes(tt)
    caps = _caps(max_tt_rank, [c.shape[-2] for c in cores], "round")
    cores = round_sweep(cores, caps, eps, method)
    # (round_sweep returns finite cores: only a cast back to a narrower dtype is checked again)
    return split_modes(cores, batch, raw, tt.dtype, "round", finite=True)
