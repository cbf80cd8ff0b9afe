"""Whether a call runs under a transform rather than plain eager autograd: ``torch.compile`` or ``torch.export``
tracing, a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ...), or forward-mode AD
(``torch.autograd.forward_ad`` with a dual level open).

Private. Under a transform the contraction runs plain autograd ops only: no custom ``autograd.Function`` (they
have no forward-mode rule, ``torch.func`` needs ones with ``setup_context`` and a vmap rule, and Dynamo
instantiates them with a warning), no ``out=`` writes into reused scratch (a transform's wrapped tensors cannot be
written into a plain buffer), no caches keyed on storage addresses (wrapped tensors have none), and no
data-dependent Python checks (``.item()``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.autograd.forward_ad as _fwad

__all__: list[str] = []

# private in torch (torch.autograd.Function consults it the same way); absent: no transforms to detect
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # (torch 2.7 and later)


def transforms_active() -> bool:
    """True while tracing for compile/export (or ``torch.jit.trace``, which would record a cached tensor as a
    constant), inside a ``torch.func`` transform, or with a forward-AD dual level open (``_current_level`` is
    -1 outside ``forward_ad.dual_level()``)."""
    return (
        torch.compiler.is_compiling()
        or _is_exporting()
        or torch.jit.is_tracing()
        or bool(_functorch_active())
        or getattr(_fwad, "_current_level", -1) >= 0
    )


def tangents_possible() -> bool:
    """True inside a ``torch.func`` transform or with a forward-AD dual level open: derivatives may be taken
    that ``requires_grad`` does not show (a jvp's tangents, a transform's wrapped tensors), and ``no_grad``
    stops none of the forward-mode ones."""
    return bool(_functorch_active()) or getattr(_fwad, "_current_level", -1) >= 0


def traced_unflatten(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``rows`` ``(K, m)`` reshaped to ``(*like.shape[:-1], m)``, for ``like`` whose last dim is 1, through the shape
    of a broadcast view read when a ``torch.jit.trace`` runs. A trace records shapes read in Python as constants:
    ``rows.reshape(*lead, m)`` would fix it to the example's number of dimensions (a trace of an ``(in,)``
    example gave ``(out,)`` for a ``(1, in)`` input), where a traced ``nn.Linear`` takes any."""
    return rows.reshape_as(torch.broadcast_tensors(like, rows.new_empty(rows.shape[-1]))[0])


def capturing(t: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured and ``t`` is a CUDA tensor: as under a transform, no value may be
    read on the host (a sync ends the capture with an error) and nothing computed may be kept between calls (it
    would be a constant of the graph, which its replays reuse however the inputs change)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


try:  # (private in torch; FakeTensorMode is what shape and memory dry runs, and torch.compile, trace with)
    from torch._subclasses.fake_tensor import FakeTensor as _FakeTensor
except ImportError:  # pragma: no cover  (every supported torch has it)
    _FakeTensor = ()  # type: ignore[assignment,misc]


_FAKE_KEY = getattr(getattr(torch._C, "_TorchDispatchModeKey", None), "FAKE", None)


def _fake_mode_active() -> bool:
    """Whether a ``FakeTensorMode`` is on: real tensors (a layer's cores) then meet fake ones and give fake
    results (``allow_non_fake_inputs=True``, as dry runs of real modules use)."""
    return _FAKE_KEY is not None and torch._C._get_dispatch_mode(_FAKE_KEY) is not None


def valueless(t: torch.Tensor) -> bool:
    """True where ``t``'s values, or what is computed from it, cannot be read on the host: a meta tensor, a fake
    one or any tensor while a ``FakeTensorMode`` is on (as memory estimators and dry runs use; reading one raises
    a data-dependent error), or a CUDA tensor while a graph is captured (:func:`capturing`). Value checks are
    skipped there, as under a transform, and nothing computed is kept between calls (a fake merge kept in a real
    layer's cache made its next real call return a fake tensor)."""
    # (cheapest tests first: this runs on every layer call, ~0.3 us)
    return (
        t.is_meta
        or isinstance(t, _FakeTensor)
        or capturing(t)
        or (not torch.compiler.is_compiling() and _fake_mode_active())  # (dynamo would trace the C call)
    )


def _autocast_knows(device_type: str) -> bool:
    try:
        torch.is_autocast_enabled(device_type)
        return True
    except RuntimeError:  # "unknown device type for autocast" (meta; mtia in torch 2.6)
        return False


# the types autocast knows, asked once here: traced, torch's RuntimeError for an unknown type cannot be caught
_AUTOCAST_TYPES = tuple(k for k in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia") if _autocast_knows(k))


# The dtypes autocast casts to its lower precision: float64 (and complex) it leaves alone, as F.linear shows
AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def autocasting(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for types autocast does not know, such as meta)."""
    if device_type in _AUTOCAST_TYPES:
        return torch.is_autocast_enabled(device_type)
    return device_type != "meta" and _autocast_knows(device_type) and torch.is_autocast_enabled(device_type)


def autocast_casts(a: Any, b: Any) -> bool:
    """Whether autocast is on for ``a``'s device and casts both ``a``'s and ``b``'s dtypes (tensors or TT
    objects), so that they may differ in a product's operands, as ``F.linear`` and ``torch.matmul`` take them."""
    return a.dtype in AUTOCAST_DTYPES and b.dtype in AUTOCAST_DTYPES and autocasting(a.device.type)


def valueless_kind(t: torch.Tensor) -> str:
    """What :func:`valueless` found ``t`` to be, as an error message names it."""
    if t.is_meta:
        return "a meta tensor"
    return "a CUDA graph's capture" if capturing(t) else "a fake tensor"


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device_type`` (a no-op where it is off already)."""
    if not autocasting(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _autocast_on() -> bool:
    """Whether autocast is on for any of the device types :func:`_no_autocast` turns it off for."""
    for kind in _AUTOCAST_TYPES:
        if autocasting(kind):
            return True
    return False


@contextlib.contextmanager
def _no_autocast() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for kind in _AUTOCAST_TYPES:
            stack.enter_context(full_precision(kind))
        yield


_F = TypeVar("_F", bound=Callable[..., Any])


def without_autocast(fn: _F) -> _F:
    """Run ``fn`` with autocast off on every device: decompositions whose SVDs and QRs autocast leaves in full
    precision but whose glue products it would lower (a float32 round under bf16 autocast lost three digits,
    breaking its error bound, with float32 cores that did not show it)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _autocast_on():  # (the usual case: no context stack to enter, ~4 us a call)
            return fn(*args, **kwargs)
        with _no_autocast():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def grad_recorded() -> bool:
    """Whether autograd records ops now: grad mode on and not in inference mode, where nothing is recorded
    whatever grad mode says (``enable_grad`` inside ``inference_mode``: ``nn.Linear``'s output does not require
    grad there). While compiling, grad mode alone decides (dynamo refuses the inference-mode query)."""
    if not torch.is_grad_enabled():
        return False
    return torch.compiler.is_compiling() or not torch.is_inference_mode_enabled()


def derivatives_possible(*ts: torch.Tensor) -> bool:
    """Whether derivatives of results computed from ``ts`` may be taken: autograd records one of them, or a
    ``torch.func`` transform or forward-AD level is open (whose tangents ``requires_grad`` does not show: under
    ``jvp`` it reads False)."""
    return (grad_recorded() and any(t.requires_grad for t in ts)) or tangents_possible()


_is_legacy_batched = getattr(
    getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor", lambda t: False
)


def legacy_batched(*ts: torch.Tensor) -> bool:
    """Whether any of ``ts`` is a tensor of autograd's own (legacy) vmap: gradients batched by
    ``torch.autograd.grad(..., is_grads_batched=True)`` (``jacobian``/``hessian(vectorize=True)``,
    ``gradcheck(check_batched_grad=True)``), which reach a custom Function's backward. That vmap refuses ``out=``
    writes, and :func:`transforms_active` does not see it."""
    return any(_is_legacy_batched(t) for t in ts)
