"""Model surgery back: ``decompress`` replaces a model's ``TTLinear`` / ``TTEmbedding`` layers by their exact
dense equivalents, the inverse of ``compress`` up to the TT approximation it made.

Each dense layer takes over what ``compress`` carried the other way (hooks, buffers, train/eval mode:
``compression_layers.carry_over``), and the parameters and submodules added to the TT layer; TT layers that share
their cores become dense layers that share one weight, as the tie was; an encoder whose nested-tensor fast path
``compress`` turned off gets it back once no TT layer is left in it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._transforms import valueless
from .compression import copy_model, refuse_wrapped
from .compression_layers import carry_over, old_backward_hooks, overridden, recomputed
from .nn.embedding import TTEmbedding
from .nn.linear import TTLinear
from .operands import as_flag

__all__ = ["decompress"]


def _with_extras(tt_layer: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` with the parameters and submodules a user added to the TT layer (an adapter, a learned scale), which
    its hooks may read: carried over under their names, or a ValueError where the dense layer has that name."""
    extras: list[tuple[str, Any]] = [(n, p) for n, p in tt_layer._parameters.items() if n != "bias"]
    extras += [(n, s) for n, s in tt_layer._modules.items() if n != "cores"]
    for name, value in extras:
        if hasattr(new, name):
            raise ValueError(
                f"decompress: the TT layer holds {name!r}, which the dense {type(new).__name__} has already"
            )
        if name in tt_layer._modules:
            new.add_module(name, value)
        else:
            new.register_parameter(name, value)
    return new


def decompress(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every ``TTLinear`` / ``TTEmbedding`` by its exact dense equivalent (``to_linear`` /
    ``to_embedding``): the inverse of :func:`compress` up to the TT approximation already made. Each dense
    layer takes over the TT layer's forward and full backward hooks and pre-hooks, buffers and train/eval
    mode, as :func:`compress` carried them the other way, and any parameters and submodules added to the TT
    layer (an adapter, a learned scale) under their names, with the TT layers among them converted too.

    Args:
        model: a module containing TT layers (or a TT layer itself).
        inplace: modify ``model`` itself; by default a deep copy is returned. (A TT layer that is the model
            itself cannot become dense in place: the dense layer returned takes over its submodules, whose TT
            layers are replaced in place.)

    Returns:
        The dense model.

    TT layers that share their cores (``head.cores = embedding.cores``) become dense layers that share one
    weight ``Parameter``, as the tie was. A dense layer keeps its TT layer's bias ``Parameter`` itself (its
    ``.grad`` too, with ``inplace=True``), so a shared or tied bias stays so; a bias that is not a ``Parameter``
    (a plain or computed tensor) is copied into a new one.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or is or holds a ``DistributedDataParallel`` or FSDP wrapper
            (decompress the module it wraps, then wrap the result again).
        ValueError: the model contains no TT layer; a TT layer holds an added parameter or submodule under
            a name the dense layer uses; a TT layer's bias is parametrized or pruned (the dense layer would keep a
            stale copy: remove that first), its forward is overridden on the instance, or it has a hook of the
            deprecated ``register_backward_hook``; TT layers share cores but not the same ones in the same order,
            or share them all but would give dense weights of different shapes, or an embedding's non-zero
            padding row that the other layer (a head, an embedding without that ``padding_idx``) reads (the tie
            cannot be kept). With ``inplace=True`` the model is left unchanged then. Without it, a model
            ``copy.deepcopy`` cannot copy (uninitialized lazy parameters or buffers, a lock: pass ``inplace=True``).

    Example:
        >>> dense = tt.decompress(small)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"decompress expects an nn.Module, got {type(model).__name__}")
    # (as compress: dense layers swapped in under DDP/FSDP would leave their gradients unaveraged)
    refuse_wrapped(model, "decompress")
    in_place = as_flag(inplace, "decompress", "inplace")
    for name, m in model.named_modules():
        tt_layer = isinstance(m, (TTLinear, TTEmbedding))
        why = recomputed(m) or overridden(m) or old_backward_hooks(m) if tt_layer else None
        if why is not None:
            raise ValueError(f"decompress: the TT layer {name or '(the model)'!r} cannot be converted: {why}")
    target = model if in_place else copy_model(model, "decompress")
    found = [
        (n, m)
        for n, m in target.named_modules(remove_duplicate=False)
        if isinstance(m, (TTLinear, TTEmbedding))
    ]
    if not found:
        raise ValueError("decompress: the model contains no TTLinear or TTEmbedding layer")
    dense: dict[int, nn.Module] = {}
    # one dense weight per set of shared cores: (name, dense layer, TT layer) of the first converted
    tied: dict[tuple[int, ...], tuple[str, nn.Module, nn.Module]] = {}
    # every layer is converted (and every refusal raised) before the first is swapped in: with inplace=True an
    # error leaves the model as it was
    for name, m in found:
        if id(m) not in dense:  # hooks, extra buffers and train/eval mode come back, as compress took them
            new = _with_extras(
                m, carry_over(m, m.to_linear() if isinstance(m, TTLinear) else m.to_embedding())
            )
            if isinstance(m, TTLinear) and isinstance(new, nn.Linear) and _same_kind(m.bias, new.bias):
                # the TT layer's own bias Parameter, not to_linear's copy: a bias tied to another layer's (or
                # shared by two TT layers) stays tied, as compress kept it
                new.bias = m.bias
            _keep_tie(tied, name, m, new)
            dense[id(m)] = new
    if id(target) in dense:
        # the model is a TT layer itself: its dense layer holds the submodules added to it (_with_extras), so the
        # TT layers under them are swapped in there
        target = dense[id(target)]
    for name, m in found:
        if name:
            target.set_submodule(name, dense[id(m)])
    # encoders whose nested-tensor fast path compress turned off get it back once no TT layer is left in them
    for module in target.modules():
        if getattr(module, "_tensortrain_nested_off", False) and not any(
            isinstance(m, (TTLinear, TTEmbedding)) for m in module.modules()
        ):
            setattr(module, "use_nested_tensor", True)  # noqa: B010 (a bool; mypy reads Module attributes as Tensor | Module)
            delattr(module, "_tensortrain_nested_off")
    return target


def _same_kind(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether the Parameter ``a`` can stand in for ``b`` (a plain or computed tensor cannot be a Parameter)."""
    return (
        isinstance(a, nn.Parameter)
        and b is not None
        and (a.dtype, a.device, a.shape) == (b.dtype, b.device, b.shape)
    )


def _keep_tie(
    tied: dict[tuple[int, ...], tuple[str, nn.Module, nn.Module]], name: str, m: nn.Module, new: nn.Module
) -> None:
    """Give ``new`` the dense weight of the layer converted before it from the same cores (an embedding and its
    tied output head), so that the tie survives; a ValueError where it cannot."""
    key = tuple(id(c) for c in m.cores)  # type: ignore[union-attr]
    if key not in tied:
        shared = [other for k, (other, _, _) in tied.items() if set(k) & set(key)]
        if shared:
            raise ValueError(
                f"decompress: the TT layers {shared[0]!r} and {name!r} share cores, but not the same cores in the "
                "same order: their dense weights cannot share them"
            )
        tied[key] = (name, new, m)
        return
    first_name, first, first_tt = tied[key]
    w0, w = first.weight, new.weight
    assert isinstance(w0, nn.Parameter) and isinstance(w, nn.Parameter)  # (nn.Linear's or nn.Embedding's)
    if w.shape != w0.shape:
        raise ValueError(
            f"decompress: the TT layers {first_name!r} and {name!r} share their cores, but their dense weights "
            f"have shapes {tuple(w0.shape)} and {tuple(w.shape)}: converting would untie them"
        )
    # One dense weight cannot hold both the zero padding row nn.Embedding needs (TTEmbedding returns zeros there
    # whatever its TT holds) and the other layer's row of the TT: the dense model would change its outputs (a logit
    # column zeroed, or the embedding returning the head's row). The other layer is a head, or an embedding
    # without that padding_idx (whose dense weight keeps the row; a layer's own dense weight has it zeroed).
    pairs = ((name, m, new), (first_name, first_tt, first))
    # (a meta or fake weight has no row to read: the tie is kept, as compress skips its value checks there)
    weights = [
        d.weight for _, _, d in pairs if isinstance(d.weight, torch.Tensor) and not valueless(d.weight)
    ]
    for lname, t, _ in pairs:
        pad = getattr(t, "padding_idx", None) if isinstance(t, TTEmbedding) else None
        if pad is not None and any(bool(w[pad].detach().ne(0).any()) for w in weights):
            raise ValueError(
                f"decompress: the TT layers {first_name!r} and {name!r} share their cores, and the embedding "
                f"{lname!r} has padding_idx={pad}, whose row of the shared TT is not zero (the other layer uses it, "
                "the embedding returns zeros there): one dense weight cannot do both; zero that row first (or untie)"
            )
    new.weight = w0
