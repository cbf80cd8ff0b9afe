"""Checking and pairing the operands of TT operations: kinds, raw shapes, dtypes, devices, batch broadcasting.

Private helpers shared by :mod:`tensortrain.ops`, :mod:`tensortrain.products`, :mod:`tensortrain.indexing`
and :mod:`tensortrain.batch_ops`. Every algorithm there works on *batched* cores (one leading batch axis,
of size 1 for a plain :class:`~tensortrain.TensorTrain`), so one code path serves single objects and
batches; :func:`wrap` turns the result back into the right class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from ._transforms import transforms_active, valueless
from .errors import ShapeError
from .shapes import is_finite, past_int64, show_int
from .tensor_train import TensorTrain, TensorTrainBase, TensorTrainBatch, dtensor_hint, is_dtensor

__all__: list[str] = []


def check_strided(fn: str, name: str, t: torch.Tensor) -> None:
    """``t`` is an ordinary dense tensor: sparse and nested ones failed inside a reshape (in the layers, in some
    plans only). ``name``: how the message calls ``t`` (``"input"``, ``"indices"``)."""
    if t.layout != torch.strided or t.is_nested:
        x = name if name.isidentifier() else "x"
        if t.is_nested:
            kind, hint = "a nested", f"{x}.values() (jagged layout) or {x}.to_padded_tensor(0.0)"
        else:
            kind, hint = f"a {str(t.layout).removeprefix('torch.')}", f"{x}.to_dense()"
        raise TypeError(
            f"{fn}: {name} is {kind} tensor; tensortrain takes dense (strided) tensors: pass {hint}"
        )


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()  # (absolute: two storages can view the same memory, as torch.from_numpy's views do)
    extent = sum((int(n) - 1) * abs(int(s)) for n, s in zip(t.shape, t.stride(), strict=True)) + 1
    return start, start + extent * t.element_size()


def memory_overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors' byte ranges in memory intersect: a write to one may change the other (ranges, not
    elements: interleaved views of one buffer count; disjoint views of one flat buffer, as FSDP's, do not).
    False where there is no data pointer to compare (meta and fake tensors, a DTensor's wrapper)."""
    if a.device != b.device or valueless(a) or valueless(b) or not a.numel() or not b.numel():
        return False
    try:
        (a0, a1), (b0, b1) = _byte_span(a), _byte_span(b)
    except RuntimeError:
        return False
    if (
        not a0 or not b0
    ):  # (a wrapper subclass, as DTensor, reports 0 rather than raising: no memory of its own)
        return False
    return a0 < b1 and b0 < a1


def check_writable(fn: str, targets: Sequence[torch.Tensor], what: str = "core") -> None:
    """Tensors about to be written in place, checked before any is: a write that raised half-way left some
    written. A ``ValueError`` for one whose elements share memory (an expanded, stride-0 view: torch refuses the
    write) or that overlaps another (two positions written through one buffer: the last write would win); a
    ``TypeError`` for a DTensor (a shard: the write would mix it with whole tensors)."""
    for k, t in enumerate(targets):
        if is_dtensor(t):
            raise TypeError(dtensor_hint(fn, f"{what} {k}"))
        if any(s == 0 and n > 1 for n, s in zip(t.shape, t.stride(), strict=True)):
            raise ValueError(
                f"{fn}: {what} {k} is an expanded view (stride 0, shape {tuple(t.shape)}, strides {t.stride()}) "
                "whose elements share memory, so it cannot be written in place; use a contiguous copy"
            )
        for j in range(k):
            if memory_overlaps(targets[j], t):
                raise ValueError(
                    f"{fn}: {what} {j} and {what} {k} share memory (the same tensor, or views of one buffer), so "
                    "writing one would change the other; give each its own tensor"
                )


def check_has_data(t: Any, device: Any, fn: str, name: str) -> None:
    """A ``ValueError`` for a meta tensor ``t`` that an operation on ``device`` would copy there (a scale,
    weights, indices): it has no data (torch's error came from deep inside the copy)."""
    if isinstance(t, torch.Tensor) and t.is_meta and torch.device(device).type != "meta":
        raise ValueError(f"{fn}: {name}: a meta tensor, with no data to use with cores on {device}")


def as_tensor(x: Any, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
    """``torch.as_tensor``, also for NumPy arrays with negative strides (``np.flip`` views), which torch cannot
    view: those are copied, where ``as_tensor`` raises its own ValueError."""
    try:
        return torch.as_tensor(x, dtype=dtype, device=device)
    except ValueError:
        if not (hasattr(x, "__array__") and hasattr(x, "strides") and any(s < 0 for s in x.strides)):
            raise
        return torch.as_tensor(x.copy(), dtype=dtype, device=device)


def wide_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 (complex128 for a complex ``t``), float32 on MPS, which has no float64: the type for norms and
    rank decisions that must not over- or underflow ``t``'s own dtype."""
    if t.is_complex():  # (a lookup: dynamo does not trace dtype.to_complex())
        return torch.complex64 if t.device.type == "mps" else torch.complex128
    return torch.float32 if t.device.type == "mps" else torch.float64


def pow2_exponents(t: torch.Tensor) -> torch.Tensor:
    """Per batch element of ``t`` ``(B, ...)``, an exponent ``e`` ``(B,)`` (int64) with ``max |t| = m 2^e``,
    ``m`` in ``[0.5, 1)`` (``e = 0`` for an all-zero or non-finite element), clamped so that ``2^-e`` is a
    number of ``t``'s dtype.

    Sweeps that carry a product of core scales (QR sweeps push every core's scale into the next one) divide it
    out by :func:`unscale_pow2` at each step and put the sum of exponents back once (:func:`scale_pow2`):
    powers of two scale exactly, so the result is the same, and the carried product cannot overflow or
    underflow on the way when the final value fits the dtype.
    """
    # (abs().amax(): the inf-norm reduction is about 10x slower on CPU; both keep NaN)
    top = t.detach().flatten(1).abs().amax(dim=1)
    info = torch.finfo(top.dtype)
    # frexp exponents of the smallest normal and the largest number: 2^-e stays a (normal or exact subnormal)
    # number of the dtype for e in [lo, hi - 1]
    lo, hi = math.frexp(info.tiny)[1], math.frexp(info.max)[1]
    return torch.frexp(top)[1].to(torch.int64).clamp(lo, hi - 1)


def unscale_pow2(t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``t / 2^e`` per batch element, in ``t``'s dtype (exact; ``e`` from :func:`pow2_exponents`)."""
    return t * torch.exp2((-e).to(device=t.device, dtype=t.real.dtype)).reshape(-1, *([1] * (t.dim() - 1)))


def scale_pow2(t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``t * 2^e`` per batch element (``e`` ``(B,)``), exact; computed in the wide dtype so that ``2^e`` itself
    cannot overflow ``t``'s dtype (2^130 does not fit float32, ``t * 2^130`` may)."""
    wide, shape = wide_dtype(t.real), (-1, *([1] * (t.dim() - 1)))
    half = torch.div(e.to(device=t.device), 2, rounding_mode="floor")
    # in two halves: 2^e alone overflows float64 past e = 1023 where t * 2^e may still fit
    first, second = (torch.exp2(h.to(wide)).reshape(shape) for h in (half, e.to(device=t.device) - half))
    out = t.to(wide_dtype(t)) * first * second
    # an exact 0 stays 0 (not 0 * inf = NaN) where 2^e itself is past the wide dtype: a sweep whose large cores
    # are followed by a zero one. Only the value: the gradient there is still 0 * inf (NaN)
    past = (t == 0) & ~torch.isfinite(first * second)
    return torch.where(past, torch.zeros_like(out), out).to(t.dtype)


def rescale_pow2(t: torch.Tensor, exps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a scaled sweep: ``t`` ``(B, ...)`` brought to a largest magnitude below 1 per batch element
    by a power of two, and its exponents added to the running ``exps`` (``None``: none yet). Put them back once
    at the end with :func:`scale_pow2`."""
    e = pow2_exponents(t)
    return unscale_pow2(t, e), e if exps is None else exps + e


def run_scaled(
    run: Callable[[bool], torch.Tensor], *operands: Sequence[torch.Tensor], contracted: bool = False
) -> torch.Tensor:
    """``run(scaled)``, a left-to-right product sweep over these cores, plain or with every step scaled by a
    power of two, as :func:`scaling_mode` decides; where it answers ``"check"`` the plain sweep runs first and
    runs again scaled only if its result is not finite (one more sync).
    """
    mode = scaling_mode(*operands, contracted=contracted)
    if mode != "check":
        return run(mode == "scale")
    res = run(False)
    # a finite sum proves every entry finite (NaN and inf propagate) at a small part of an elementwise check's
    # cost (1/30 on a million float32 entries); only a sum that is not finite (or overflowed) needs the full check
    if bool(torch.isfinite(res.detach().sum())) or bool(torch.isfinite(res).all()):
        return res
    return run(True)


def scaling_mode(
    *operands: Sequence[torch.Tensor], contracted: bool = False
) -> Literal["plain", "check", "scale"]:
    """How a left-to-right product sweep over these cores (one list of ``d`` cores per operand, contracted
    together: ``<a, b>`` passes two) must run: ``"scale"`` where it may leave the dtype's range on the way, so
    that its steps must be scaled, ``"plain"`` where it cannot, ``"check"`` where only coherent cores would.

    Decided before the sweep from the cores' scales, each core's Frobenius norm over ``sqrt(numel / r_k)``
    (``r_k`` its last rank: the typical entry times ``sqrt(r_k)``, what a step multiplies a partial product by;
    ``contracted``: over ``sqrt(B r_k)``, for sweeps that also sum over the modes, as inner products do; cores
    batched, ``(B, r, ..., r')``):
    scaling when their running product (the partial products' scale) passes three quarters of the dtype's
    exponent range either way (2^96 for float32, 2^768 for float64; the rest is margin for the estimate). A
    tensor of norm 1 over 2^100 stored with cores of 10 on half of its modes and 0.1 on the rest reaches 2^166;
    a balanced one stays near its entries' scale. That estimate is for incoherent cores: where the terms of a
    step add up coherently (cores of equal signs) a partial product grows up to ``sqrt(r_k)`` times faster (40
    cores of rank 16 whose entries all equal 2^2.6 overflowed float32's plain sweep). So ``"check"`` where the
    running product of the cores' Frobenius norms (of the whole batch: a bound on every element's partial
    products), passes the dtype's largest number (2^127
    in float32): that bound is loose by about ``r`` per step of an inner product of random cores, and would
    scale most long float32 sweeps of rank 16 and up. ``"scale"`` with a core of norm 0 (an all-zero core makes
    the result exactly 0, but the plain sweep may reach it as inf * 0 = NaN where the cores before it overflow;
    the scaled one gives 0). One sync; ``"plain"`` under compile and ``torch.func`` transforms and on meta or
    fake tensors.
    """
    first = operands[0][0]
    if valueless(first) or transforms_active():
        return "plain"
    # (detached where needed: cheaper than a no_grad context)
    cores = [c.detach() if c.requires_grad else c for cores in operands for c in cores]
    # (one fused kernel for all the norms, one sync; the inf-norm reduction takes 10x as long on CPU)
    norms = torch.stack(torch._foreach_norm(cores)).tolist()
    if any(n == 0 for n in norms):  # (not min(): a NaN first norm makes min() NaN and hides a zero)
        # a norm of 0 is an all-zero core (the result is exactly 0, which only the scaled sweep reaches without
        # inf * 0 where the cores before it overflow) or one whose squares underflowed (entries below 1e-23 in
        # float32, 1e-162 in float64), scaled like any other small core
        return "scale"
    d, limit = len(operands[0]), _scale_limit(first.dtype)
    log2 = math.log2
    # the bound, summed over the operands at each k: a batched core's norm bounds each of its elements' (their
    # root mean square would not: a batch of one large train and small ones hides the large one)
    logs = [log2(n) for n in norms]
    bound, top, coherent = 0.0, _largest_exponent(first.dtype) - 1, False
    for k in range(d):
        bound += sum(logs[k::d])
        if not bound <= top:  # (an inf or NaN norm ends it too; then the estimate below says "scale")
            coherent = True
            break
    if contracted:
        scale = [log2(n) - 0.5 * log2(c.shape[0] * c.shape[-1]) for n, c in zip(norms, cores, strict=True)]
    else:
        scale = [log2(n) - 0.5 * log2(c.numel() / c.shape[-1]) for n, c in zip(norms, cores, strict=True)]
    if len(operands) > 1:  # the operands' scales at each k summed
        scale = [sum(at_k) for at_k in zip(*(scale[i : i + d] for i in range(0, len(scale), d)), strict=True)]
    run = 0.0
    for s in scale:
        run += s
        if not abs(run) <= limit:  # (an inf or NaN norm asks for scaling too)
            return "scale"
    return "check" if coherent else "plain"


@functools.cache
def _largest_exponent(dtype: torch.dtype) -> int:
    """``e`` with ``2^(e-1) <= max < 2^e`` for ``dtype`` (its real part's): 128 for float32."""
    return math.frexp(torch.finfo(dtype.to_real() if dtype.is_complex else dtype).max)[1]


@functools.cache
def _scale_limit(dtype: torch.dtype) -> float:
    """Three quarters of ``dtype``'s exponent range (its real part's): :func:`scaling_mode`'s estimate."""
    return 0.75 * _largest_exponent(dtype)


def prescale(*operands: Sequence[torch.Tensor]) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Each operand's batched cores ``(B, ...)`` brought to a largest magnitude below 1 per batch element by a
    power of two, and the sum of all the exponents ``(B,)``: for sweeps whose step multiplies the state by
    several cores, as two cores of 1e20 overflow float32 inside one step, before a scaled sweep rescales the
    state."""
    out, exps = [], None
    for cores in operands:
        scaled = []
        for c in cores:
            c, exps = rescale_pow2(c, exps)
            scaled.append(c)
        out.append(scaled)
    assert exps is not None
    return out, exps


def scaled_sweep(
    start: torch.Tensor,
    step: Callable[[torch.Tensor, int], torch.Tensor],
    d: int,
    scaled: bool,
    lead: int = 2,
    exps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``v = step(v, k)`` for ``k < d`` from ``start`` ``(*lead dims, 1, ..., 1)``; the value ``v[..., 0, .., 0]``
    (the ``lead`` leading dims). ``scaled`` (from :func:`scaling_mode`): ``v`` brought to a largest magnitude
    below 1 by a power of two per leading index at every step, the exponents put back at the end, with
    ``exps`` (the leading dims flattened; from :func:`prescale`) when the cores were scaled too."""
    v = start
    for k in range(d):
        v = step(v, k)
        if scaled:
            flat, exps = rescale_pow2(v.reshape(-1, *v.shape[lead:]), exps)
            v = flat.reshape(v.shape)
    out = v.reshape(*v.shape[:lead], -1)[..., 0]
    return out if exps is None else scale_pow2(out.reshape(-1), exps).reshape(out.shape)


def as_flag(value: Any, fn: str, name: str) -> bool:
    """A yes/no argument: a bool (NumPy's too). Anything else is a ``TypeError``: ``inplace="False"`` is truthy
    and would, read as a flag, do what it says not to."""
    if isinstance(value, bool) or (
        type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    ):
        return bool(value)
    raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")


def holds_tensor(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and any(
        isinstance(v, torch.Tensor) or holds_tensor(v) for v in values
    )


def as_scales(
    values: Any, dtype: torch.dtype | None = None, device: Any = None, *, fn: str = "", name: str = "weights"
) -> torch.Tensor:
    """``torch.as_tensor`` for weights and coefficients that keeps autograd: a (nested) list or tuple holding
    tensors (learned scalars, t3f's list of variables) is stacked, where ``as_tensor`` reads each value out and
    drops the graph with only a warning. Bools are refused (a mask is not weights: it would read as 0 and 1)."""
    if device is not None:
        check_has_data(values, device, fn, name)
    if not holds_tensor(values):
        try:
            raw = values if isinstance(values, torch.Tensor) else as_tensor(values)
        except (TypeError, ValueError, RuntimeError):  # (None, strings, ragged lists: torch's own messages)
            big = past_int64(values)
            if big is not None:  # (torch reads a list of ints as int64 and overflows)
                hint = "pass it as a float" if is_finite(big) else "it is past float64's range too"
                raise ValueError(
                    f"{fn}: {name} hold the int {show_int(big)}, which int64 cannot hold; {hint}"
                ) from None
            raise TypeError(f"{fn}: {name} must be numbers, got {type(values).__name__}") from None
        if raw.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} must be numbers, got bools (a mask?)")
        # a list or array is read straight in ``dtype``: through float32 a float64 weight keeps 7 digits
        return as_tensor(values, dtype=dtype, device=device)
    parts = [as_scales(v, fn=fn, name=name) for v in values]
    kind = parts[0].dtype
    for p in parts[1:]:
        kind = torch.promote_types(kind, p.dtype)
    where = next(v.device for v in values if isinstance(v, torch.Tensor)) if device is None else device
    return torch.stack([p.to(dtype=kind, device=where) for p in parts]).to(dtype=dtype or kind)


def check_tt(x: Any, op: str, name: str = "argument") -> TensorTrainBase:
    """Raise ``TypeError`` unless ``x`` is a TT object."""
    if not isinstance(x, TensorTrainBase):
        raise TypeError(f"{op}: {name} must be a TensorTrain or TensorTrainBatch, got {type(x).__name__}")
    return x


def check_matrix(x: Any, op: str, name: str = "argument") -> TensorTrainBase:
    """Raise ``TypeError`` unless ``x`` is a TT-matrix (or a batch of them)."""
    check_tt(x, op, name)
    if not x.is_tt_matrix():
        raise TypeError(f"{op}: {name} must be a TT-matrix, got a TT-tensor of shape {describe(x)}")
    return x


def is_batch(x: TensorTrainBase) -> bool:
    """True for a :class:`TensorTrainBatch`."""
    return isinstance(x, TensorTrainBatch)


def batch_size(x: TensorTrainBase) -> int:
    """The batch size, 1 for a single TT object."""
    return int(x.tt_cores[0].shape[0]) if is_batch(x) else 1


def describe(x: TensorTrainBase) -> str:
    """Raw shape for messages: ``(2, 3)`` or ``(2, 3) x (4, 5)``, with ``batch of B`` for batches."""
    if x.is_tt_matrix():
        rows, cols = matrix_dims(x)
        text = f"{rows} x {cols}"
    else:
        text = str(tensor_dims(x))
    return f"{text} (batch of {batch_size(x)})" if is_batch(x) else text


def matrix_dims(x: TensorTrainBase) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row and column mode sizes of a TT-matrix, typed."""
    rows, cols = x.raw_shape  # type: ignore[misc]
    return tuple(rows), tuple(cols)  # type: ignore[arg-type]


def tensor_dims(x: TensorTrainBase) -> tuple[int, ...]:
    """Mode sizes of a TT-tensor, typed."""
    return tuple(x.raw_shape)  # type: ignore[arg-type]


def batched_cores(x: TensorTrainBase) -> list[torch.Tensor]:
    """The cores with one leading batch axis (size 1 for a single TT object); views, no copies."""
    return list(x.tt_cores) if is_batch(x) else [c.unsqueeze(0) for c in x.tt_cores]


def wrap(cores: Sequence[torch.Tensor], batch: bool) -> Any:
    """Build a :class:`TensorTrainBatch` from batched cores, or a :class:`TensorTrain` from batch-1 cores."""
    if batch:
        return TensorTrainBatch(list(cores))
    return TensorTrain([c[0] for c in cores])


def wrap_valid(cores: Sequence[torch.Tensor], batch: bool) -> Any:
    """A :class:`TensorTrainBatch` (``batch``) or :class:`TensorTrain` over ``cores`` as they are (a batch axis
    only for a batch), not checked again: for results valid by construction (see ``_from_valid``)."""
    return (TensorTrainBatch if batch else TensorTrain)._from_valid(cores)


def pair_cores(op: str, *xs: TensorTrainBase) -> tuple[list[list[torch.Tensor]], bool]:
    """The operands' cores and whether any is a batch: as stored (no batch axis) when none is a batch, else as
    :func:`paired_cores` gives them (batched, expanded to the common size). Checks as :func:`paired_cores`."""
    if not any(isinstance(x, TensorTrainBatch) for x in xs):
        check_dtype_device(op, *xs)
        return [list(x.tt_cores) for x in xs], False
    cores, _, batch = paired_cores(op, *xs)
    return cores, batch


def check_dtype_device(op: str, *xs: TensorTrainBase | torch.Tensor) -> None:
    """Raise ``ShapeError`` when operands disagree in dtype or device."""
    first = xs[0]
    for x in xs[1:]:
        if x.dtype != first.dtype:
            raise ShapeError(
                f"{op}: operands have different dtypes {first.dtype} and {x.dtype}; cast one first "
                "(tt.cast(a, dtype) or tensor.to(dtype))"
            )
        if x.device != first.device:
            raise ShapeError(f"{op}: operands are on different devices {first.device} and {x.device}")


def check_same_raw_shape(op: str, a: TensorTrainBase, b: TensorTrainBase) -> None:
    """Raise ``ShapeError`` unless both are TT-tensors or both TT-matrices with equal raw shapes."""
    if a.is_tt_matrix() != b.is_tt_matrix():
        kinds = ["TT-matrix" if x.is_tt_matrix() else "TT-tensor" for x in (a, b)]
        raise ShapeError(f"{op}: cannot combine a {kinds[0]} {describe(a)} with a {kinds[1]} {describe(b)}")
    if a.raw_shape != b.raw_shape:
        raise ShapeError(f"{op}: raw shapes differ: {describe(a)} vs {describe(b)}")


def broadcast_batch_size(op: str, *xs: TensorTrainBase) -> tuple[int, bool]:
    """The common batch size of the operands (batch size 1 broadcasts) and whether any is a batch."""
    sizes = {batch_size(x) for x in xs if is_batch(x)} - {1}
    if len(sizes) > 1:
        raise ShapeError(f"{op}: batch sizes {sorted(sizes)} do not broadcast (they must be equal, or 1)")
    return (sizes.pop() if sizes else 1), any(is_batch(x) for x in xs)


def expand_cores(cores: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Expand batched cores of batch size 1 to ``size`` (a view, no copy)."""
    if cores[0].shape[0] == size:
        return list(cores)
    return [c.expand(size, *c.shape[1:]) for c in cores]


def paired_cores(op: str, *xs: TensorTrainBase) -> tuple[list[list[torch.Tensor]], int, bool]:
    """Batched cores of each operand, expanded to the common batch size; the size; whether any is a batch."""
    check_dtype_device(op, *xs)
    size, batch = broadcast_batch_size(op, *xs)
    return [expand_cores(batched_cores(x), size) for x in xs], size, batch


def flat_modes(core: torch.Tensor) -> torch.Tensor:
    """A batched core ``(B, r, modes..., s)`` viewed as ``(B, r, prod(modes), s)``."""
    return core.reshape(core.shape[0], core.shape[1], -1, core.shape[-1])


def vector_cores(v: Any, dims: tuple[int, ...], op: str, name: str) -> list[torch.Tensor]:
    """Batched ``(B, r, n, s)`` cores of a TT vector over modes ``dims``: a TT-tensor of that raw shape,
    or a TT-matrix ``dims x (1, ..., 1)`` (t3f's N x 1 form) or ``(1, ..., 1) x dims``."""
    check_tt(v, op, name)
    if v.is_tt_matrix():
        rows, cols = matrix_dims(v)
        if rows == dims and all(c == 1 for c in cols):
            return [c[:, :, :, 0] for c in batched_cores(v)]
        if cols == dims and all(r == 1 for r in rows):
            return [c[:, :, 0] for c in batched_cores(v)]
    elif tensor_dims(v) == dims:
        return batched_cores(v)
    raise ShapeError(
        f"{op}: {name} must be a vector with modes {dims} (a TT-tensor, or a TT-matrix {dims} x (1, ...)), "
        f"got raw shape {describe(v)}"
    )
