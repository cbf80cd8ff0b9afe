"""Riemannian gradients and Hessian-vector products of functions of a TT, by autograd (t3f's autodiff).

The point ``x`` is rewritten as a tangent vector at itself, ``x = sum_k U_{<k} dU_k V_{>k}`` with
``dU_1 = V_1`` (the first core of the right-orthogonal form) and all other deltas zero. Differentiating
``func`` with respect to the deltas gives ``U_{<k}^T grad V_{>k}^T``; removing the gauge component
(``U_k U_k^T``) turns these into the deltas of the projected Euclidean gradient (Steinlechner 2016,
Novikov et al. 2021 "Automatic differentiation for Riemannian optimization on low-rank matrix and tensor-train
manifolds"). The cost is about that of one evaluation of ``func`` on a TT of doubled ranks.

``func`` must depend on ``x`` only through the tensor it represents (not on its cores); ``runtime_check``
evaluates ``func`` on two representations of ``x`` and raises if they disagree. Functions that use QR or SVD
of the cores internally can still give wrong gradients (their derivatives are not gauge invariant).

Symbols: ``d`` cores, ``n`` mode size, ``r`` rank of ``x``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from . import tangent as ts
from ._transforms import valueless, without_autocast
from .errors import ShapeError
from .operands import as_flag
from .tensor_train import TensorTrain, TensorTrainBase

__all__ = ["gradients", "hessian_vector_product"]

Func = Callable[[TensorTrain], torch.Tensor]
# (the vector's projection too runs with autocast off: see _delta_point)
_project_deltas = without_autocast(ts.project_deltas)


# The frame, its gauge and projections run with autocast off, as project's (the products between QR steps lost
# bfloat16's three digits); only func runs under the caller's autocast.
@without_autocast
def _delta_point(
    x: TensorTrain, fname: str
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The frame ``(U, V)`` of ``x`` and deltas (requiring grad) that represent ``x`` itself."""
    if not isinstance(x, TensorTrain):
        raise TypeError(f"{fname}: `x` must be a TensorTrain, got {type(x).__name__}")
    ts.check_where(x, fname)
    u, v = ts.tangent_frame(x.detach())
    deltas = [v[0].detach().clone().unsqueeze(0).requires_grad_()]
    deltas += [torch.zeros_like(c).unsqueeze(0).requires_grad_() for c in u[1:]]
    return u, v, deltas


def _value(func: Func, point: TensorTrainBase, fname: str) -> torch.Tensor:
    value = func(point)  # type: ignore[arg-type]
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(
            f"{fname}: func must return a scalar tensor, got "
            f"{type(value).__name__}{'' if not isinstance(value, torch.Tensor) else tuple(value.shape)}"
        )
    if value.is_complex():
        raise TypeError(f"{fname}: func must return a real scalar (a loss), got dtype {value.dtype}")
    return value.reshape(())


def _check_invariance(
    func: Func,
    x: TensorTrain,
    value: torch.Tensor,
    grads: list[torch.Tensor],
    u: list[torch.Tensor],
    v0: torch.Tensor,
    fname: str,
) -> None:
    """Raise when ``func`` gives different values on two TT representations of the same tensor (not checked on
    meta or fake tensors, which have no values to compare). ``grads``: func's gradients with respect to the
    deltas (detached), ``u`` the left frame, ``v0`` the first delta (``x``'s right-orthogonal first core).

    The tolerance, ``eps`` of the less precise of ``x``'s dtype and the value's, is
    ``100 sqrt(eps) max(1, |a|, |b|, |<grad, x>|) + 100 d eps |P_x grad| |x|``: the first term for round-off in
    evaluating ``func``, on the scale of its value and of its terms (``<grad, x>``, how much ``func`` moves when
    ``x`` is scaled: ``c`` for ``sum(x) - c``); the second bounds what the representations' own round-off
    (about ``eps |x|`` per core) can change (a first-order change of the cores moves the tensor within the
    tangent space, where ``|P_x grad|`` is the slope)."""
    if valueless(value):
        return
    with torch.no_grad():
        other = _value(func, x.detach(), fname)
        a, b = float(value.detach()), float(other)
        # <grad, x>: x is the tangent vector whose only delta is v0
        scale = abs(float((grads[0].double() * v0.double()).sum()))
        # the frames are orthonormal and the gauged deltas orthogonal to them: a tangent vector's norm is its
        # deltas'
        slope = math.sqrt(sum(float(g.double().square().sum()) for g in _gauge_all(grads, u)))
        slope *= float(torch.linalg.vector_norm(v0.double()))
    eps = max(_eps(value.dtype), _eps(x.dtype))
    tol = 100 * eps**0.5 * max(1.0, abs(a), abs(b), scale) + 100 * len(u) * eps * slope
    if abs(a - b) > tol:
        raise ValueError(
            f"{fname}: func is not invariant to the TT gauge: func(x) = {b:.6g} but func evaluated on "
            f"another TT representation of the same tensor = {a:.6g}. func must depend on x only through "
            "the tensor it represents (use full, flat_inner, gather_nd, ...; not x.tt_cores). "
            "Pass runtime_check=False to skip this check."
        )


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point or dtype.is_complex else 1e-7


@contextlib.contextmanager
def _recording(fname: str) -> Iterator[None]:
    """Autograd on, also under ``torch.inference_mode`` (where ``enable_grad`` alone records nothing: the
    gradient came back zero, as if ``func`` did not depend on ``x``); torch's refusal to keep an inference tensor
    ``func`` closes over for backward is said in terms of ``fname``."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    except RuntimeError as e:
        if "Inference tensors cannot be saved for backward" not in str(e):
            raise
        raise RuntimeError(
            f"{fname}: func uses a tensor made under torch.inference_mode, which autograd cannot keep for the "
            "backward pass; make it outside inference mode (or under torch.inference_mode(False))"
        ) from e


@without_autocast  # (backward passes run under autocast lowered the hand-written backwards of norms and sweeps)
def _grads(outputs: torch.Tensor, deltas: list[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    if not outputs.requires_grad:  # func does not depend on x at all
        return [torch.zeros_like(dl) for dl in deltas]
    grads = torch.autograd.grad(outputs, deltas, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(dl) if g is None else g for g, dl in zip(grads, deltas, strict=True)]


@without_autocast
def _gauge_all(grads: list[torch.Tensor], u: list[torch.Tensor]) -> list[torch.Tensor]:
    return [ts.gauge(u[k], g) for k, g in enumerate(grads[:-1])] + [grads[-1]]


@torch.compiler.disable  # (its gauge check reads values: compiled, it failed on a data-dependent guard)
def gradients(func: Func, x: TensorTrain, runtime_check: bool = True) -> TensorTrain:
    """The Riemannian gradient of a scalar function of a TT: the projection of its Euclidean gradient.

    Args:
        func: maps a TT object (shaped like ``x``) to a scalar tensor, depending only on the tensor it
            represents.
        x: the point, a TensorTrain (TT-tensor or TT-matrix); ranks above the mode sizes are fine.
        runtime_check: evaluate ``func`` on ``x`` too and raise if the two values disagree (a ``func`` that
            reads the cores directly). The values are compared to ``100 sqrt(eps)`` times the larger of 1, the
            value and ``|<grad, x>|`` (the scale of ``func``'s terms, however much they cancel), plus a bound on
            what round-off in the two representations can move the value (``100 d eps |grad| |x|``, ``grad`` the
            Riemannian gradient), ``eps`` of the less precise of ``x``'s and the value's dtypes: so round-off
            never raises, and 1.5e-6 relative in float64, 3.5e-2 in float32 (a weak dependence on the cores
            passes there; check in float64), none in half precision. A bool.

    Returns:
        A tangent vector at ``x`` (ranks ``2 r``, ``projection_on = x``), equal to
        ``project(dfunc/dfull(x), x)``. Detached: it carries no autograd graph to ``x``'s cores or to tensors
        ``func`` closes over (differentiate ``tt.project`` of a dense gradient for that).

    Works under ``torch.no_grad`` and ``torch.inference_mode`` too (it records its own graph); tensors ``func``
    uses that autograd keeps for backward (a target in a product) must be made outside inference mode.

    Raises:
        TypeError: ``x`` is not a TensorTrain, or ``runtime_check`` is not a bool.
        ValueError: ``func`` does not return a scalar, or fails the gauge check.
        RuntimeError: ``func`` uses a tensor made under ``torch.inference_mode`` that autograd would keep.

    Complexity:
        O(d n r^3) for the orthogonalization plus one forward and backward pass of ``func`` at ranks 2 r.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> g = tt.gradients(lambda y: 0.5 * (tt.full(y) ** 2).sum(), x)  # the gradient is x itself
        >>> torch.allclose(tt.full(g), tt.full(x), atol=1e-5)
        True
    """
    fname = "gradients"
    runtime_check = as_flag(runtime_check, fname, "runtime_check")
    with _recording(fname):
        u, v, deltas = _delta_point(x, fname)
        point = ts.tangent(deltas, u, v, x, batch=False)
        value = _value(func, point, fname)
        grads = _grads(value, deltas, create_graph=False)
        if runtime_check:
            _check_invariance(func, x, value, grads, u, deltas[0].detach(), fname)
        return ts.tangent(_gauge_all(grads, u), u, v, x, batch=False)  # type: ignore[return-value]


@torch.compiler.disable  # (compiled, the double backward came back zero: AOTAutograd has none)
def hessian_vector_product(
    func: Func, x: TensorTrain, vector: TensorTrainBase | torch.Tensor, runtime_check: bool = True
) -> TensorTrain:
    """The projected Hessian-vector product ``P_x Hess func(x) P_x vector`` (no curvature term, as t3f).

    Args:
        func: maps a TT object to a scalar tensor, depending only on the tensor it represents; twice
            differentiable.
        x: the point, a TensorTrain.
        vector: a TensorTrain or dense tensor shaped like ``x`` (projected onto the tangent space first).
        runtime_check: as in :func:`gradients`.

    Returns:
        A tangent vector at ``x`` (ranks ``2 r``, ``projection_on = x``). Detached, as :func:`gradients`'
        result: no autograd graph to ``x``, ``vector`` or tensors ``func`` closes over.

    Works under ``torch.no_grad`` and ``torch.inference_mode`` too, as :func:`gradients` (with its caveat).

    Raises:
        TypeError: ``x`` is not a TensorTrain, ``runtime_check`` is not a bool, or ``func`` is compiled by
            ``torch.compile`` (AOTAutograd has no double backward: the product came back zero; a plain function
            that calls a compiled one is not detected, and gives zero).
        ShapeError: ``vector``'s shape, dtype or device disagrees with ``x``'s.
        ValueError: ``func`` does not return a scalar, or fails the gauge check.
        RuntimeError: as in :func:`gradients`.

    Under ``torch.compile`` it runs eagerly (``torch.compiler.disable``), for the same reason.

    Shape:
        dense ``vector``: ``x.shape``.

    Complexity:
        about twice :func:`gradients` (double backward), plus one projection of ``vector``.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
        >>> f = lambda y: 0.5 * (tt.full(y) ** 2).sum()  # the Hessian is the identity
        >>> v = torch.randn(3, 4)
        >>> hv = tt.hessian_vector_product(f, x, v)
        >>> torch.allclose(tt.full(hv), tt.full(tt.project(v, x)), atol=1e-5)
        True
    """
    fname = "hessian_vector_product"
    # (torch.compile's wrappers carry the original; torch.compiler.disable's too, marked as disabled)
    compiled = getattr(func, "_torchdynamo_orig_callable", None) is not None
    compiled = compiled and not getattr(func, "_torchdynamo_disable", False)
    if compiled or isinstance(func, torch._dynamo.eval_frame.OptimizedModule):
        raise TypeError(
            f"{fname}: func is compiled by torch.compile, whose AOTAutograd has no double backward (the product "
            "came back zero); pass the function itself, uncompiled"
        )
    runtime_check = as_flag(runtime_check, fname, "runtime_check")
    with _recording(fname):
        return _hvp(func, x, vector, runtime_check, fname)


def _hvp(
    func: Func, x: TensorTrain, vector: TensorTrainBase | torch.Tensor, check: bool, fname: str
) -> TensorTrain:
    u, v, deltas = _delta_point(x, fname)
    if isinstance(vector, TensorTrainBase) and not isinstance(vector, TensorTrain):
        raise TypeError(f"{fname}: `vector` must be a TensorTrain or a dense tensor, got a batch")
    if isinstance(vector, torch.Tensor) and tuple(vector.shape) != tuple(x.shape):
        # (projecting would accept a leading batch axis, and the pairing below would sum over it)
        raise ShapeError(
            f"{fname}: the dense `vector` has shape {tuple(vector.shape)} but `x` has shape {tuple(x.shape)} "
            "(one vector: no batch axis)"
        )
    vec_deltas, _, _, _ = _project_deltas(vector, x, fname, frame=(u, v), names=("vector", "x"))
    point = ts.tangent(deltas, u, v, x, batch=False)
    value = _value(func, point, fname)
    first = _grads(value, deltas, create_graph=True)
    if check:
        _check_invariance(func, x, value, [g.detach() for g in first], u, deltas[0].detach(), fname)
    # vec_deltas obey the gauge, so pairing with the raw gradient equals pairing with its projection.
    inner = sum((g * w).sum() for g, w in zip(first, vec_deltas, strict=True))
    second = _grads(inner, deltas, create_graph=False)  # type: ignore[arg-type]
    return ts.tangent(_gauge_all(second, u), u, v, x, batch=False)  # type: ignore[return-value]
