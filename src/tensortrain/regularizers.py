"""Regularizers for TT objects and TT layers, as callables that return a differentiable scalar loss term.

t3f's ``l2_regularizer`` / ``cores_regularizer``, usable in PyTorch: ``loss = criterion(out, y) + reg(model)``.
A regularizer accepts a :class:`TensorTrain`, a :class:`TensorTrainBatch` (the terms of its elements are
summed), or an ``nn.Module``: then every submodule whose ``weight`` is a TT object (``TTLinear``,
``TTEmbedding``) contributes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from . import ops
from .shapes import is_finite, plain_scalar
from .tensor_train import TensorTrainBase
from .variables import tt_from_parameters

__all__ = ["cores_regularizer", "l2_regularizer"]

TTLike = TensorTrainBase | torch.nn.Module | Sequence[torch.Tensor]
Regularizer = Callable[[TTLike], torch.Tensor]


def _check_scale(scale: float | torch.Tensor, fname: str) -> float | torch.Tensor:
    """``scale`` checked: a float, or a 0-dim tensor kept as it is (t3f documents a scalar Tensor, which its
    regularizer reads on every call: a learned or scheduled scale works; its value is checked here, once)."""
    value = plain_scalar(scale.detach() if isinstance(scale, torch.Tensor) else scale)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: scale must be a real number or 0-dim tensor, got {scale!r}")
    if not is_finite(value) or value < 0:
        raise ValueError(f"{fname}: scale must be a finite number >= 0, got {value!r}")
    if isinstance(scale, torch.Tensor) and scale.is_floating_point():
        return scale
    return float(value)


def _tt_objects(x: TTLike, fname: str) -> list[TensorTrainBase]:
    """The TT objects a regularizer applies to."""
    if isinstance(x, TensorTrainBase):
        return [x]
    if isinstance(x, torch.nn.ParameterList) or (
        isinstance(x, (list, tuple)) and x and all(isinstance(c, torch.Tensor) for c in x)
    ):
        # one TT's cores (tt.tt_parameters' ParameterList, as RiemannianSGD takes them)
        try:
            return [tt_from_parameters(x)]
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fname}: the tensors given are not one TT's cores: {err}") from None
    if isinstance(x, torch.nn.Module):
        # TTLinear/TTEmbedding hold theirs as .weight; tensortrain.keras.KerasDense as .matrix (t3f's name)
        # a Keras model on the torch backend keeps its layers in its own tree, not as torch submodules
        flatten = getattr(x, "_flatten_layers", None)
        modules = list(flatten()) if callable(flatten) else list(x.modules())
        found = [
            (m, w)
            for m in modules
            for w in (getattr(m, "weight", None), getattr(m, "matrix", None))
            if isinstance(w, TensorTrainBase)
        ]
        if not found:
            raise ValueError(
                f"{fname}: the module {type(x).__name__} has no TT weights (no TT layers inside); for cores kept "
                "in a ParameterList (tt.tt_parameters), pass that list"
            )
        # tied weights (a head sharing an embedding's cores) count once, as model.parameters() lists them: by
        # the parameters the weight comes from (a pruned core is a new masked tensor at every access)
        unique = {_source(m, w): w for m, w in found}
        return list(unique.values())
    raise TypeError(
        f"{fname}: expected a TT object, one TT's cores (a ParameterList) or an nn.Module with TT layers, got "
        f"{type(x).__name__}"
    )


def _source(module: torch.nn.Module, w: TensorTrainBase) -> tuple[tuple[int, ...], ...]:
    """What identifies a TT layer's weight, core by core in order: the parameter in its ``cores``
    ParameterList, for a pruned core its original and its mask (a pruned core is a new masked tensor at every
    access); else (no such list, a DataParallel replica's plain attributes, another hook) the cores themselves."""
    cores = getattr(module, "cores", None)
    if isinstance(cores, torch.nn.ParameterList) and len(cores) == len(w.tt_cores):
        params, buffers = cores._parameters, cores._buffers
        key: list[tuple[int, ...]] = []
        for k in range(len(cores)):
            if f"{k}_orig" in params:
                key.append((id(params[f"{k}_orig"]), id(buffers.get(f"{k}_mask"))))
            elif params.get(str(k)) is not None:
                key.append((id(params[str(k)]),))
            else:
                break
        else:
            return tuple(key)
    return tuple((id(c),) for c in w.tt_cores)


def l2_regularizer(scale: float) -> Regularizer:
    """A regularizer ``x -> scale * ||x||_F^2`` (squared Frobenius norm of the full tensor, never built).

    For a module, each TT layer's ``weight``: for a ``TTEmbedding`` whose vocabulary is padded to ``V'`` rows
    (``voc_dims`` multiply to more than ``num_embeddings``), that is the ``V' x D`` table, padding rows included
    (they are never looked up, but share the cores with the rows that are); for a padded ``TTLinear``
    (``layer.padded``) the whole padded TT-matrix likewise, not only its ``out x in`` block.

    Args:
        scale: a non-negative number, or a 0-dim floating tensor used as it is on every call (differentiable;
            an in-place schedule applies; its value is checked once, here). 0 gives a zero loss term.

    Returns:
        A callable taking a TT object or a module with TT layers and returning a 0-dim tensor (summed over
        batch elements and layers), differentiable with respect to the cores.

    Raises:
        TypeError: ``scale`` is not a real number (the callable raises it for an unsupported argument).
        ValueError: ``scale`` is negative or not finite (the callable raises it for a module without TT
            layers).

    Complexity: O(d n r^3) per TT object.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.ones(1, 2, 1), torch.ones(1, 3, 1)])
        >>> float(tt.l2_regularizer(0.5)(x))  # 0.5 * 6 entries equal to 1
        3.0
    """
    s = _check_scale(scale, "l2_regularizer")

    def regularizer(x: TTLike) -> torch.Tensor:
        terms = [
            ops.frobenius_norm_squared(t, differentiable=True).sum() for t in _tt_objects(x, "l2_regularizer")
        ]
        return _scaled(s, _total(terms))

    return regularizer


def _scaled(s: float | torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``s * total`` in ``total``'s dtype and device (a tensor scale would promote it: float64 over float32),
    multiplied in the wider of the two dtypes, as a Python float scale is: cast to float16 first, a scale of
    1e-8 was 0."""
    if not isinstance(s, torch.Tensor):
        return s * total
    wide = torch.promote_types(s.dtype, total.dtype)
    return (s.to(dtype=wide, device=total.device) * total.to(wide)).to(total.dtype)


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of scalar terms on the first one's device (a model may keep its layers on several devices)."""
    first = terms[0]
    return torch.stack([t.to(first.device) for t in terms]).sum()


def cores_regularizer(core_regularizer: Callable[[torch.Tensor], torch.Tensor], scale: float) -> Regularizer:
    """A regularizer ``x -> scale * sum_k core_regularizer(core_k)`` over the TT-cores.

    Args:
        core_regularizer: maps one core (with its batch axis, for a batch) to a scalar tensor, e.g.
            ``lambda c: c.abs().sum()``.
        scale: a non-negative number or 0-dim floating tensor, as in :func:`l2_regularizer`.

    Returns:
        A callable taking a TT object or a module with TT layers, returning a 0-dim tensor.

    Raises:
        TypeError: ``core_regularizer`` is not callable or ``scale`` not a number; the callable raises it
            for an unsupported argument.
        ValueError: ``scale`` is negative or not finite; the callable raises it when
            ``core_regularizer`` does not return a scalar.

    Complexity: d calls of ``core_regularizer`` per TT object.

    Example:
        >>> import torch, tensortrain as tt
        >>> x = tt.TensorTrain([torch.ones(1, 2, 1), torch.ones(1, 3, 1)])
        >>> float(tt.cores_regularizer(lambda c: c.abs().sum(), 2.0)(x))  # 2 * (2 + 3)
        10.0
    """
    if not callable(core_regularizer):
        raise TypeError(f"cores_regularizer: core_regularizer must be callable, got {core_regularizer!r}")
    s = _check_scale(scale, "cores_regularizer")

    def regularizer(x: TTLike) -> torch.Tensor:
        terms = []
        for t in _tt_objects(x, "cores_regularizer"):
            for core in t.tt_cores:
                value = core_regularizer(core)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise ValueError(
                        "cores_regularizer: core_regularizer must return a scalar tensor, got "
                        f"{type(value).__name__} for a core of shape {tuple(core.shape)}"
                    )
                terms.append(value.reshape(()))
        return _scaled(s, _total(terms))

    return regularizer
