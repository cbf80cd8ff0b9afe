"""What ``compress`` and ``decompress`` need to know per dense layer type: its weight, its TT dims, the
conversion, why a layer cannot be converted, and what a TT layer takes over from the layer it replaces.

The types converted are exact: ``nn.Linear`` -> :class:`~tensortrain.nn.TTLinear` and ``nn.Embedding`` ->
:class:`~tensortrain.nn.TTEmbedding` (see :data:`CONVERTERS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ._transforms import valueless
from .compression_report import Dims
from .nn.dims import resolve_dims, resolve_embedding_dims
from .nn.embedding import TTEmbedding
from .nn.linear import TTLinear, as_linear
from .shapes import svd_tt_ranks

__all__ = [
    "CONVERTERS",
    "Converter",
    "carry_over",
    "converter_for",
    "converter_of",
    "layer_dims",
    "planned_tt_params",
    "refusal",
]


@dataclass(frozen=True)
class Converter:
    """How one dense layer type becomes a TT layer: its weight, its TT dims, and the conversion."""

    kind: str
    tt_type: type[TTLinear] | type[TTEmbedding]
    own_params: tuple[str, ...]  # the dense layer's parameters that the conversion carries over
    dims: Callable[[Any], Dims]  # (row dims, col dims) of the TT weight
    weight: Callable[[Any], torch.Tensor]  # the dense weight the TT-SVD approximates
    refuse: Callable[[Any], str | None]  # why the converter would refuse this layer (its options), or None
    convert: Callable[[Any, int | None, float | None, Dims], TTLinear | TTEmbedding]
    tt_weight: Callable[[Any], torch.Tensor]  # the converted layer's dense weight, same shape as weight
    extra_params: Callable[[Any], int]  # parameters kept beside the cores (a bias)


def _linear_dims(m: nn.Linear) -> Dims:
    in_dims, out_dims = resolve_dims(m.in_features, m.out_features, None, None)  # padded where needed
    return out_dims, in_dims


def _embedding_dims(m: nn.Embedding) -> Dims:
    return resolve_embedding_dims(m.num_embeddings, m.embedding_dim, None, None)


def _non_finite(w: torch.Tensor, skip_row: int | None = None) -> bool:
    """Whether ``w`` holds NaN or inf (outside row ``skip_row``), which TT-SVD refuses. A finite sum proves
    every entry finite at a fraction of an elementwise check's cost; meta tensors have no values."""
    w = w.detach()
    if valueless(w) or bool(torch.isfinite(w.sum())):
        return False
    ok = torch.isfinite(w)
    if skip_row is not None:
        ok[skip_row] = True
    return not bool(ok.all())


def _dtype_refusal(w: torch.Tensor) -> str | None:
    if not (w.is_floating_point() or w.is_complex()) or w.element_size() == 1 or w.dtype == torch.complex32:
        # (float8 and complex32 have no sums, products or SVDs to run TT-SVD or a TT layer in)
        return (
            f"its weight has dtype {w.dtype}; TT cores are 16 bits or more (float16 and up, complex64 and up)"
        )
    return None


def _linear_refusal(m: nn.Linear) -> str | None:
    if tuple(m.weight.shape) != (m.out_features, m.in_features):
        return _size_mismatch(m.weight, ("out_features", m.out_features), ("in_features", m.in_features))
    if (why := _dtype_refusal(m.weight)) is not None:
        return why
    if _non_finite(m.weight):
        return "the weight contains NaN or inf values; TT-SVD needs finite entries"
    return None


def _embedding_refusal(m: nn.Embedding) -> str | None:
    """The options ``TTEmbedding.from_embedding`` refuses (the same checks, made before any TT-SVD so that
    the ratio search knows the layer stays dense), and a non-finite table (its padding row is ignored, as
    ``from_embedding`` zeroes it)."""
    opts = {"max_norm": m.max_norm, "scale_grad_by_freq": m.scale_grad_by_freq, "sparse": m.sparse}
    bad = [f"{k}={v}" for k, v in opts.items() if v not in (None, False)]
    if bad:
        dense_grads = " (the TT cores' gradients are dense: SparseAdam and the like would fail)"
        return f"TTEmbedding.from_embedding does not support {', '.join(bad)}" + (
            dense_grads if m.sparse else ""
        )
    if tuple(m.weight.shape) != (m.num_embeddings, m.embedding_dim):
        return _size_mismatch(
            m.weight, ("num_embeddings", m.num_embeddings), ("embedding_dim", m.embedding_dim)
        )
    if (why := _dtype_refusal(m.weight)) is not None:
        return why
    if _non_finite(m.weight, m.padding_idx):
        return "the table contains NaN or inf values; TT-SVD needs finite entries"
    pad = m.padding_idx
    if pad is not None and not valueless(m.weight) and bool(m.weight[pad].detach().ne(0).any()):
        # nn.Embedding returns that row as it is (it only gets no gradient); TTEmbedding returns zeros there
        return (
            f"its padding row (padding_idx={pad}) is not zero, and TTEmbedding outputs zeros for padding_idx"
        )
    return None


def _size_mismatch(w: torch.Tensor, rows: tuple[str, int], cols: tuple[str, int]) -> str:
    """A layer whose weight was replaced by one of another shape (pruned or grown by hand): its forward uses the
    weight, the conversion the sizes."""
    return (
        f"its weight has shape {tuple(w.shape)} but {rows[0]}={rows[1]}, {cols[0]}={cols[1]}; set the sizes to "
        "the weight's"
    )


CONVERTERS: dict[type[nn.Module], Converter] = {
    nn.Linear: Converter(
        kind="Linear",
        tt_type=TTLinear,
        own_params=("weight", "bias"),
        dims=_linear_dims,
        weight=lambda m: m.weight,
        refuse=_linear_refusal,
        convert=lambda m, r, eps, dims: TTLinear.from_linear(
            m, r, eps, in_dims=dims[1], out_dims=dims[0], pad=True
        ),
        tt_weight=lambda t: t.dense_weight(),
        extra_params=lambda m: 0 if m.bias is None else m.bias.numel(),
    ),
    nn.Embedding: Converter(
        kind="Embedding",
        tt_type=TTEmbedding,
        own_params=("weight",),
        dims=_embedding_dims,
        weight=lambda m: m.weight,
        refuse=_embedding_refusal,
        convert=lambda m, r, eps, dims: TTEmbedding.from_embedding(
            m, r, eps, voc_dims=dims[0], emb_dims=dims[1]
        ),
        tt_weight=lambda t: t.to_embedding().weight,
        extra_params=lambda m: 0,
    ),
}


def converter_of(module: nn.Module) -> Converter | None:
    """How ``module`` converts to a TT layer (its exact type's :data:`CONVERTERS` entry), or None.

    A subclass is not its base (an attention block's ``out_proj`` is read through ``.weight`` by its parent),
    except ``nn.LazyLinear`` once its parameters have shapes: ``load_state_dict`` gives them without the first
    forward that turns the module into an ``nn.Linear``."""
    conv = CONVERTERS.get(type(module))
    if conv is None and parametrize.is_parametrized(module):
        # parametrize makes the class Parametrized<Base>(Base): selected, so that refusal says why it stays dense
        conv = CONVERTERS.get(type(module).__bases__[0])
    if conv is None and isinstance(module, nn.LazyLinear) and not module.has_uninitialized_params():
        return _LAZY_LINEAR
    return conv


_LAZY_LINEAR = dataclasses.replace(
    CONVERTERS[nn.Linear],
    dims=lambda m: CONVERTERS[nn.Linear].dims(as_linear(m)),
    refuse=lambda m: CONVERTERS[nn.Linear].refuse(as_linear(m)),
    convert=lambda m, r, eps, dims: CONVERTERS[nn.Linear].convert(as_linear(m), r, eps, dims),
)


"""Exact types that ``compress`` converts (subclasses such as MultiheadAttention's ``out_proj``, whose
weight its parent reads as a tensor, are deliberately not matched)."""


_WEIGHT_HOOKS: tuple[tuple[type, str, str], ...] = (
    (
        BasePruningMethod,
        "torch.nn.utils.prune",
        "make the pruning permanent first: torch.nn.utils.prune.remove",
    ),
    (WeightNorm, "weight_norm", "remove it first: torch.nn.utils.remove_weight_norm"),
    (SpectralNorm, "spectral_norm", "remove it first: torch.nn.utils.remove_spectral_norm"),
)
"""Forward pre-hooks that recompute a parameter before each forward (as a plain, non-leaf tensor attribute),
with the way to remove them. Between forwards the attribute is a stale copy."""

_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
)
"""The dicts in which ``nn.Module`` keeps forward (pre-)hooks and their ``with_kwargs`` / ``always_call``
flags, by hook id, and its backward (pre-)hooks with the flag that says they are full ones (their arguments are
the gradients of the layer's inputs and outputs, the same for any layer computing the same function)."""


def layer_dims(module: nn.Module) -> Dims:
    """The TT dims compress uses; an empty layer (which stays dense) gets its trivial one-core dims."""
    w = converter_for(module).weight(module)
    if w.numel() == 0:
        return (int(w.shape[0]),), (int(w.shape[1]),)
    return converter_for(module).dims(module)


_TT_ATTRIBUTES: dict[type[nn.Module], frozenset[str]] = {}


def _tt_attributes(tt_type: type[nn.Module]) -> frozenset[str]:
    """Names a TT layer already uses: an extra buffer of the dense layer cannot be carried over under them.
    Read once from a tiny layer on the meta device (no memory, no values)."""
    if tt_type not in _TT_ATTRIBUTES:
        _TT_ATTRIBUTES[tt_type] = frozenset(dir(tt_type(4, 4, tt_rank=1, device="meta")))  # type: ignore[call-arg]
    return _TT_ATTRIBUTES[tt_type]


def _weight_hooks(module: nn.Module) -> Iterator[tuple[str, str, str]]:
    """``(tensor name, what, remedy)`` per pruning / old-style weight_norm / spectral_norm pre-hook of
    ``module`` (see :data:`_WEIGHT_HOOKS`)."""
    for hook in module._forward_pre_hooks.values():
        for hook_type, what, remedy in _WEIGHT_HOOKS:
            if isinstance(hook, hook_type):
                yield getattr(hook, "_tensor_name", getattr(hook, "name", "weight")), what, remedy


def hooked_tensors(module: nn.Module) -> list[str]:
    """Names of ``module``'s tensors that a pruning / old-style weight_norm / spectral_norm pre-hook recomputes
    before each forward (plain attributes, not parameters)."""
    return [name for name, _, _ in _weight_hooks(module)]


def recomputed(module: nn.Module) -> str | None:
    """Why a layer's parameter is not the tensor it holds (a parametrization, or a pruning / weight_norm /
    spectral_norm pre-hook recomputes it), with the way to remove that, or None: converting such a layer
    either way would freeze a stale copy."""
    if parametrize.is_parametrized(module):
        name = next(iter(module._modules["parametrizations"]._modules))  # type: ignore[union-attr]
        return (
            f"its {name!r} is parametrized (torch.nn.utils.parametrize: weight_norm, spectral_norm, orthogonal, ...) "
            f"and recomputed at every access; remove it first: "
            f"torch.nn.utils.parametrize.remove_parametrizations(module, {name!r})"
        )
    for name, what, remedy in _weight_hooks(module):
        return (
            f"its {name!r} is recomputed before each forward by a {what} hook (the tensor there now is a stale "
            f"copy); {remedy}(module, {name!r})"
        )
    return None


def overridden(module: nn.Module) -> str | None:
    """Why a layer's forward is not its class's (a ``forward`` set on the instance, as accelerate's hooks and
    monkey-patched adapters set one), or None: the converted layer would run its own class's forward and
    silently drop the override, as it would a subclass's (which is why subclasses are not matched)."""
    if "forward" not in module.__dict__:
        return None
    f = module.__dict__["forward"]
    if getattr(f, "__func__", None) is type(module).forward and getattr(f, "__self__", None) is module:
        return None  # the class's own forward bound to the module: accelerate's remove_hook leaves that
    return (
        "its forward is overridden on the instance (module.forward = ...), which the converted layer would "
        "drop; restore the class's forward first: del module.forward"
    )


def old_backward_hooks(module: nn.Module) -> str | None:
    """Why a layer's backward hooks cannot follow it to another layer (hooks of the deprecated
    ``register_backward_hook``, whose arguments are the gradients of the layer's last autograd operation, not
    of its inputs), or None."""
    if module._is_full_backward_hook is False and module._backward_hooks:
        return (
            "it has a hook of the deprecated register_backward_hook, whose arguments depend on the layer's last "
            "operation; register it with register_full_backward_hook instead"
        )
    return None


def refusal(module: nn.Module) -> str | None:
    """Why a selected layer cannot be converted whatever the budget (it then stays dense), or None: the
    ratio search counts such layers as fixed, as it does tied ones."""
    # (first: reading a parametrized weight below would recompute it)
    why = recomputed(module) or overridden(module) or old_backward_hooks(module)
    if why is not None:
        return why
    conv = converter_for(module)
    if conv.weight(module).numel() == 0:  # e.g. a head with 0 classes: nothing to factor
        return "empty layer"
    extra = [n for n in module._parameters if n not in conv.own_params] + list(module._modules)
    if extra:
        return f"it holds parameters or submodules the TT layer would drop ({', '.join(extra)})"
    taken = [n for n in module._buffers if n in _tt_attributes(conv.tt_type)]
    if taken:
        return (
            f"its buffer {taken[0]!r} cannot be carried over: {conv.tt_type.__name__} already has an "
            "attribute of that name"
        )
    return conv.refuse(module)


def carry_over(old: nn.Module, new: nn.Module) -> nn.Module:
    """Give ``new`` what ``old`` held beside its weights: its buffers, forward and full backward hooks and
    pre-hooks (the same dicts, so the handles returned by ``register_forward_hook`` on ``old`` still remove them)
    and its train/eval mode."""
    for name, buf in old._buffers.items():
        new.register_buffer(name, buf, persistent=name not in old._non_persistent_buffers_set)
    if isinstance(old, nn.modules.lazy.LazyModuleMixin):
        # a materialized lazy layer's own hooks (shape inference at the first forward, lazy loading) are not the
        # user's, and a TT layer has nothing lazy: they stay behind, as that first forward would remove them
        for handle in ("_initialize_hook", "_load_hook"):
            if hasattr(old, handle):
                getattr(old, handle).remove()
    for attr in _HOOK_DICTS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    return new.train(old.training)


def planned_tt_params(dims: Dims, max_tt_rank: int) -> tuple[int, tuple[int, ...]]:
    """Core parameters and ranks TT-SVD gives with a rank cap."""
    rows, cols = dims
    ranks = svd_tt_ranks(max_tt_rank, [m * n for m, n in zip(rows, cols, strict=True)])
    return sum(ranks[k] * rows[k] * cols[k] * ranks[k + 1] for k in range(len(rows))), ranks


def converter_for(module: nn.Module) -> Converter:
    """:func:`converter_of` for a module known to convert (a selected layer)."""
    conv = converter_of(module)
    assert conv is not None, type(module)  # callers pass selected layers only
    return conv
