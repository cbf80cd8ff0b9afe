"""The TT algebra (t3f's ``t3f.ops``): full, transpose, cast, add, subtract, multiply, kron, renormalization.

``full`` lives in :mod:`tensortrain.dense`, products (``matmul``, ``flat_inner``) in :mod:`tensortrain.products`,
norms and bilinear forms in :mod:`tensortrain.forms`, indexing (``getitem``, ``gather_nd``) in
:mod:`tensortrain.indexing`; all are re-exported here, so ``tt.ops.<name>`` reaches every operation.

Symbols: ``d`` cores, ``n`` largest mode size (``m * n`` for TT-matrices), ``r`` largest TT-rank,
``B`` batch size. Every operation accepts a :class:`TensorTrain` or a :class:`TensorTrainBatch`; binary
operations broadcast a batch of size 1 (or a single TT object) against a batch. Nothing here builds a
full tensor except :func:`full`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F

from .dense import full
from .errors import ShapeError
from .forms import (
    bilinear_form,
    bilinear_form_two_mat,
    frobenius_norm,
    frobenius_norm_squared,
    quadratic_form,
)
from .indexing import gather_nd, getitem
from .operands import (
    batched_cores,
    check_has_data,
    check_same_raw_shape,
    check_tt,
    describe,
    is_batch,
    pair_cores,
    paired_cores,
    wide_dtype,
    wrap,
    wrap_valid,
)
from .orthogonalization import compute_dtype
from .products import flat_inner, matmul
from .shapes import check_nonnegative, past_float, plain_scalar, show_int
from .tensor_train import TensorTrainBase, check_cast

__all__ = [
    "add",
    "bilinear_form",
    "bilinear_form_two_mat",
    "cast",
    "flat_inner",
    "frobenius_norm",
    "frobenius_norm_squared",
    "full",
    "gather_nd",
    "getitem",
    "kron",
    "matmul",
    "multiply",
    "quadratic_form",
    "renormalize_tt_cores",
    "subtract",
    "transpose",
]


def transpose(tt_matrix: TensorTrainBase) -> Any:
    """The transposed TT-matrix (row and column modes of every core swapped, no conjugation: ``.T``, not ``.mH``);
    batches too.

    Args:
        tt_matrix: a TT-matrix or a batch of TT-matrices, ``M x N``.

    Returns:
        A TT-matrix (or batch) of size ``N x M`` with the same TT-ranks.

    Raises:
        TypeError: the input is not a TT-matrix.

    Complexity: O(d) (the cores are transposed views, as torch's ``.T``: they share the input's memory).

    Example:
        >>> import tensortrain as tt
        >>> w = tt.random_matrix([[2, 3], [4, 5]])
        >>> tt.transpose(w).shape
        torch.Size([20, 6])
    """
    check_tt(tt_matrix, "transpose", "tt_matrix")
    if not tt_matrix.is_tt_matrix():
        raise TypeError(f"transpose: expects a TT-matrix, got a TT-tensor of shape {describe(tt_matrix)}")
    return wrap([c.transpose(2, 3) for c in batched_cores(tt_matrix)], is_batch(tt_matrix))


def cast(tt: TensorTrainBase, dtype: torch.dtype) -> Any:
    """Cast every core to ``dtype`` (t3f's ``cast``); batches too.

    Args:
        tt: a TT object.
        dtype: a floating point or complex ``torch.dtype``.

    Returns:
        A TT object of the same class and shape with cores of ``dtype``.

    Raises:
        TypeError: ``dtype`` is not a floating point or complex torch dtype, has fewer than 16 bits, or is
            real while ``tt`` is complex (the real parts of the cores are not the real part of the tensor).

    Complexity: O(d r^2 n).

    Example:
        >>> import torch, tensortrain as tt
        >>> tt.cast(tt.random_tensor((2, 3)), torch.float64).dtype
        torch.float64
    """
    check_tt(tt, "cast", "tt")
    check_cast(tt.dtype, dtype, "cast")
    # (as tt.to(dtype): a tangent vector cast to its own dtype stays one)
    return tt._same_values(tt._new([c.to(dtype) for c in tt.tt_cores]))


def _check_pair(op: str, a: Any, b: Any) -> None:
    for name, x in (("first operand", a), ("second operand", b)):
        if isinstance(x, (numbers.Number, torch.Tensor)):
            raise TypeError(
                f"{op}: {name} is a {type(x).__name__}; {op} takes two TT objects. A constant is an "
                f"explicit rank-1 term: a {'+' if op == 'add' else '-'} c * tt.ones_like(a); with a dense "
                "tensor use tt.full(a) (densifies)"
            )
        check_tt(x, op, name)
    check_same_raw_shape(op, a, b)


def add(tt_a: TensorTrainBase, tt_b: TensorTrainBase) -> Any:
    """The exact sum of two TT objects: block-diagonal cores, TT-ranks add.

    Both must be TT-tensors or both TT-matrices with equal raw shapes. A batch of size 1 (or a single TT
    object) broadcasts against a batch. Unlike adding numbers, adding a constant or a dense tensor is not
    implicit (``TypeError``): write ``a + c * tt.ones_like(a)`` or ``tt.full(a) + x``.

    Args:
        tt_a: a TT object.
        tt_b: a TT object of the same kind and raw shape.

    Returns:
        A TT object with TT-ranks ``r_a + r_b`` (boundary ranks stay 1); a batch if either input is one.

    Raises:
        TypeError: an operand is not a TT object.
        ShapeError: kinds, raw shapes, batch sizes, dtypes or devices disagree.

    Complexity: O(d (r_a + r_b)^2 n) memory for the new cores; no arithmetic on entries.

    Example:
        >>> import tensortrain as tt
        >>> a, b = tt.random_tensor((4, 4, 4), tt_rank=2), tt.random_tensor((4, 4, 4), tt_rank=3)
        >>> (a + b).tt_ranks
        (1, 5, 5, 1)
    """
    _check_pair("add", tt_a, tt_b)
    (ca, cb), batch = pair_cores("add", tt_a, tt_b)
    return wrap_valid(_sum_cores(ca, cb, int(batch)), batch)


def _sum_cores(ca: list[torch.Tensor], cb: list[torch.Tensor], lead: int) -> list[torch.Tensor]:
    """:func:`add`'s cores from cores with ``lead`` (0 or 1) batch axes (of equal sizes)."""
    if len(ca) == 1:
        return [ca[0] + cb[0]]
    middle = [_block_diag(x, y, lead) for x, y in zip(ca[1:-1], cb[1:-1], strict=True)]
    return [torch.cat([ca[0], cb[0]], dim=-1), *middle, torch.cat([ca[-1], cb[-1]], dim=lead)]


def _block_diag(x: torch.Tensor, y: torch.Tensor, lead: int) -> torch.Tensor:
    """Cores ``(*lead, a, modes.., b)`` and ``(*lead, c, modes.., e)`` -> ``(*lead, a + c, modes.., b + e)``,
    block diagonal (``lead``: the number of batch axes, 0 or 1)."""
    return torch.cat([F.pad(x, (0, y.shape[-1])), F.pad(y, (x.shape[-1], 0))], dim=lead)


def subtract(tt_a: TensorTrainBase, tt_b: TensorTrainBase) -> Any:
    """``tt_a - tt_b`` exactly, as ``add(tt_a, multiply(tt_b, -1))``: TT-ranks add.

    Args:
        tt_a: a TT object.
        tt_b: a TT object of the same kind and raw shape.

    Returns:
        A TT object with TT-ranks ``r_a + r_b``.

    Raises:
        TypeError: an operand is not a TT object.
        ShapeError: kinds, raw shapes, batch sizes, dtypes or devices disagree.

    Complexity: as :func:`add`.

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3), tt_rank=2)
        >>> float(tt.frobenius_norm(a - a)) < 1e-6
        True
    """
    _check_pair("subtract", tt_a, tt_b)
    (ca, cb), batch = pair_cores("subtract", tt_a, tt_b)
    # (multiply(tt_b, -1.0)'s cores: -1 on the first; the others times |-1|^(1/d) = 1, an exact no-op)
    return wrap_valid(_sum_cores(ca, [cb[0] * -1.0, *cb[1:]], int(batch)), batch)


def multiply(tt_left: Any, right: Any) -> Any:
    """Scale a TT object by a number, or the elementwise (Hadamard) product of two TT objects.

    * Number (Python int/float/complex): like t3f, ``|c|^(1/d)`` scales every core and the sign (phase)
      goes on the first core, so the cores stay balanced. A 0-dim tensor scales only the first core
      (differentiable w.r.t. the scalar everywhere, zero included), so in float16 a large one can overflow
      that core where a number would not. Either side may be the number.
    * Two TT objects of the same kind and raw shape: cores are Kronecker-multiplied slice by slice,
      TT-ranks multiply; batches broadcast (size 1 against B).

    Args:
        tt_left: a TT object or a number.
        right: a number or a TT object.

    Returns:
        A TT object (a batch if either input is one).

    Raises:
        TypeError: neither side is a TT object, the other side is a dense tensor with dims, or a complex
            scale for real cores.
        ShapeError: kinds, raw shapes, batch sizes, dtypes or devices disagree.
        ValueError: an int scale past float64's range.

    Complexity: scaling O(d r^2 n); Hadamard O(d r_a^2 r_b^2 n).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((2, 3, 4), tt_rank=2)
        >>> tt.multiply(a, a).tt_ranks
        (1, 4, 4, 1)
    """
    if not isinstance(tt_left, TensorTrainBase):
        tt_left, right = right, tt_left
    check_tt(tt_left, "multiply", "one operand")
    if isinstance(right, TensorTrainBase):
        return _hadamard(tt_left, right)
    if isinstance(right, torch.Tensor):
        if right.dim() != 0:
            raise TypeError(
                f"multiply: a dense tensor of shape {tuple(right.shape)} cannot multiply a TT object; "
                "scale by a number or a 0-dim tensor, or use multiply_along_batch_dim for per-element weights"
            )
        if right.dtype == torch.bool:  # (a Python bool is refused below too: True is not a scale)
            raise TypeError("multiply: expects a number or a TT object, got a bool tensor")
        cores = list(tt_left.tt_cores)
        # Casting a complex scale to real cores would drop its imaginary part (torch only warns). Decided on
        # the dtype, not the value: reading the value would sync the device and break tracing.
        if right.is_complex() and not cores[0].dtype.is_complex:
            raise TypeError(
                f"multiply: a complex tensor ({right.dtype}) cannot scale {cores[0].dtype} cores; cast first, "
                "e.g. tt.cast(a, torch.complex64)"
            )
        # in float32 for half cores, as torch multiplies by a 0-dim operand: 1e5 in float16 is inf, 1e-7 subnormal
        c0, work = cores[0], compute_dtype(cores[0].dtype)
        check_has_data(right, c0.device, "multiply", "the scale")
        cores[0] = (c0.to(work) * right.to(dtype=work, device=c0.device)).to(c0.dtype)
        # the other cores copied, as a number's scaling gives: shared, a later in-place update of the input (an
        # optimizer step) made the result a mix of its old first core and new others
        return type(tt_left)._from_valid([cores[0], *(c.clone() for c in cores[1:])])
    right = plain_scalar(right)  # a 0-dim NumPy array scales like the NumPy scalar it holds
    if past_float(right):
        raise ValueError(f"multiply: the scale {show_int(right)} is past float64's range")
    if isinstance(right, (torch.SymFloat, torch.SymInt)) or type(right) in (int, float):
        # a real number, perhaps symbolic while compiling (a schedule: dynamo makes it a symbol from its second
        # value on): no complex(), which dynamo does not trace on a symbol
        return type(tt_left)._from_valid(_scale_balanced(list(tt_left.tt_cores), right))
    if isinstance(right, bool) or not isinstance(right, numbers.Number):
        raise TypeError(f"multiply: expects a number or a TT object, got {type(right).__name__}")
    c = complex(right)  # type: ignore[call-overload]
    if c.imag != 0 and not tt_left.dtype.is_complex:
        raise TypeError(
            f"multiply: a complex number {right!r} cannot scale {tt_left.dtype} cores; cast first, "
            "e.g. tt.cast(a, torch.complex64)"
        )
    return type(tt_left)._from_valid(_scale_balanced(list(tt_left.tt_cores), c if c.imag != 0 else c.real))


def _scale_balanced(cores: list[torch.Tensor], c: Any) -> list[torch.Tensor]:
    """``|c|^(1/d)`` on each core, the sign or phase on the first; ``c`` a real (possibly symbolic) or complex
    number."""
    d = len(cores)
    if c == 0:
        return [core * 0.0 for core in cores]
    # inf / inf**(d - 1) would be NaN: the whole factor goes on the first core (comparisons, not math.isfinite,
    # which does not trace a symbol; NaN != NaN, and abs is inf for a complex with an infinite part)
    if not (c == c and abs(c) != math.inf):
        return [cores[0] * c, *(core.clone() for core in cores[1:])]  # (a result of its own, as below)
    each = abs(c) ** (1.0 / d)
    return [cores[0] * (c / each ** (d - 1))] + [core * each for core in cores[1:]]


def _hadamard(a: TensorTrainBase, b: TensorTrainBase) -> Any:
    check_same_raw_shape("multiply", a, b)
    (ca, cb), batch = pair_cores("multiply", a, b)
    lead = int(batch)
    cores = []
    for x, y in zip(ca, cb, strict=True):
        bs, rx, sx, ry, sy = x.shape[:lead], x.shape[lead], x.shape[-1], y.shape[lead], y.shape[-1]
        # slice by slice Kronecker products as one broadcast product (one multiplication per entry, as the
        # einsum it replaces; written in the result's order, no copy after it)
        z = x.reshape(*bs, rx, 1, -1, sx, 1) * y.reshape(*bs, 1, ry, -1, 1, sy)
        cores.append(z.reshape(*bs, rx * ry, *x.shape[lead + 1 : -1], sx * sy))
    return wrap_valid(cores, batch)


def kron(a: TensorTrainBase, b: TensorTrainBase) -> Any:
    """Kronecker product by concatenating cores (for TT-matrices ``full(kron(a, b)) == torch.kron(full(a),
    full(b))``; for TT-tensors the outer product, of shape ``a.shape + b.shape``).

    For TT-matrices ``A (M1 x N1)`` and ``B (M2 x N2)`` the result is the ``M1 M2 x N1 N2`` TT-matrix with
    the cores of ``a`` followed by those of ``b`` (how t3f builds Kronecker-structured matrices). For
    TT-tensors it is the outer product reshaped to raw shape ``a.raw_shape + b.raw_shape``. Batches
    broadcast.

    Args:
        a: a TT object (d_a cores).
        b: a TT object of the same kind (d_b cores).

    Returns:
        A TT object with ``d_a + d_b`` cores and TT-ranks ``(*a.tt_ranks, *b.tt_ranks[1:])``.

    Raises:
        TypeError: an operand is not a TT object.
        ShapeError: kinds, batch sizes, dtypes or devices disagree.

    Complexity: O(1) arithmetic; a view of the cores.

    Example:
        >>> import tensortrain as tt
        >>> k = tt.kron(tt.random_matrix([[2], [3]]), tt.random_matrix([[4], [5]]))
        >>> k.shape
        torch.Size([8, 15])
    """
    check_tt(a, "kron", "a")
    check_tt(b, "kron", "b")
    if a.is_tt_matrix() != b.is_tt_matrix():
        raise ShapeError(
            f"kron: both operands must be TT-matrices or both TT-tensors, got {describe(a)} and {describe(b)}"
        )
    (ca, cb), _, batch = paired_cores("kron", a, b)
    return wrap(ca + cb, batch)


def _row_norms(core: torch.Tensor) -> torch.Tensor:
    """The norms ``(B,)`` of a batched core's elements in the wide dtype. Where that is the core's own (float64:
    no wider type), over the largest magnitude first: squares of 1e160 overflow float64 (inf / inf made NaN cores)
    and those of 1e-170 underflow it."""
    flat = core.reshape(core.shape[0], -1)
    wide = flat.to(wide_dtype(core))
    if wide.dtype != flat.dtype:  # (the squares of a narrower dtype's numbers fit the wide one)
        return torch.linalg.vector_norm(wide, dim=1)
    top = wide.abs().amax(dim=1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    return torch.linalg.vector_norm(wide / top, dim=1) * top.squeeze(1)


def renormalize_tt_cores(tt: TensorTrainBase, epsilon: float = 1e-8) -> Any:
    """The same tensor with every core rescaled to the same Frobenius norm (per element for batches).

    Core ``k`` is multiplied by ``g / max(||G_k||, epsilon)`` where ``g`` is the geometric mean of the
    clamped core norms; the factors multiply to 1, so the tensor is unchanged. A core whose norm is below
    ``epsilon`` is scaled as if its norm were ``epsilon``, so the norms then do not all end equal. Useful
    against overflow/underflow after many products.

    Args:
        tt: a TT object.
        epsilon: floor for core norms, guards division by zero.

    Returns:
        A TT object of the same class, shape and ranks.

    Raises:
        TypeError: ``tt`` is not a TT object, or ``epsilon`` is not a real number.
        ValueError: ``epsilon`` is negative or not finite.

    Complexity: O(d r^2 n).

    Example:
        >>> import tensortrain as tt
        >>> a = tt.random_tensor((3, 4, 5), tt_rank=2) * 1000.0
        >>> b = tt.renormalize_tt_cores(a)
        >>> [round(float(c.norm()), 3) for c in b.tt_cores][0] == round(float(b.tt_cores[1].norm()), 3)
        True
    """
    check_tt(tt, "renormalize_tt_cores", "tt")
    check_nonnegative(epsilon, "renormalize_tt_cores: epsilon")  # (an infinite floor made every core NaN)
    cores = batched_cores(tt)
    # (d, B) norms in float64 (float32 on MPS): the cores this is meant for may have norms whose squares leave
    # their own dtype's range (a float32 core of norm 1e20 would read as inf, one of 1e-20 as 0)
    norms = torch.stack([_row_norms(c) for c in cores])
    norms = norms.clamp_min(float(epsilon)) if epsilon > 0 else norms  # (float: an int past int64 overflowed)
    # With epsilon=0 a zero core (a zero tensor) gives 0/0: leave such an element as it is, every core. The log
    # and the division run on safe norms, so that the branch torch.where drops has no NaN to send to backward.
    zero = (norms == 0).any(dim=0)  # (B,)
    safe = torch.where(norms == 0, torch.ones_like(norms), norms)
    mean = safe.log().mean(dim=0).exp()
    factors = torch.where(zero, torch.ones_like(norms), mean / safe)
    shape = (-1,) + (1,) * (cores[0].dim() - 1)
    # the product in the wide dtype, then cast: the factor alone may leave the cores' range (float16: 2e5)
    # (complex cores: the real factors scale them in complex128; casting a core to the factors' real dtype would
    # drop its imaginary part)
    new = [(c.to(wide_dtype(c)) * f.reshape(shape)).to(c.dtype) for c, f in zip(cores, factors, strict=True)]
    return wrap(new, is_batch(tt))
