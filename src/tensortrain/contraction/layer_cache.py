"""What TT layers keep between inference calls: merged core groups and the halves of W, per layer.

A layer passes its own dict; an entry lives until one of the cores changes (see :func:`cached`). Only small
merges are kept (``contraction.cost.cacheable``), never the dense W.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._transforms import full_precision, valueless
from . import cost as _cost
from . import full_plan as _full
from . import sweeps as _exec
from .checks import dims_of
from .plans import Groups

__all__ = ["cached", "cached_halves", "cached_supers"]


# Optimizer steps seen so far (any optimizer, by a global post-step hook): the fused optimizers (``fused=True``)
# write parameters in place without bumping their version counters. Registered at import, not at the first cached
# call: registering while another thread's optimizer iterates the global hooks made that step raise
# ("OrderedDict mutated during iteration").
_optimizer_steps = [0]


def _count_step(*_: Any) -> None:
    _optimizer_steps[0] += 1


_step_hook = register_optimizer_step_post_hook(_count_step)


def _steps_seen() -> int:
    return _optimizer_steps[0]


def cached(
    cache: dict, key: tuple, cores: Sequence[torch.Tensor], make: Callable[[Sequence[torch.Tensor]], Any]
) -> Any:
    """``make(cores)`` (run without grad), kept in a layer's ``cache`` under ``key`` until a core changes.

    A core counts as unchanged while it is the same tensor object with the same storage address, shape, strides,
    dtype, conj bit and version counter (every in-place op bumps the counter: optimizer steps, ``load_state_dict``,
    ``nn.init``) and no optimizer has stepped since (fused optimizers write in place without bumping version
    counters). The entry holds the cores' old storages, so a freed address cannot come back as a false match.
    Writes through ``.data`` bypass the version counter, as they bypass autograd's own checks, and so do
    ``torch.distributed`` collectives writing into a core and writes through another tensor sharing its
    storage (``vector_to_parameters``' vector, a NumPy view), which has a counter of its own: after those,
    call the layer's ``clear_cache()``. Cores made under ``torch.inference_mode`` have no version counter to
    watch, and cores in shared memory (``share_memory()``, Hogwild workers) are written by other processes,
    whose writes no version counter here sees: for both, ``make`` runs on every call, and so it does for cores
    that are not ``nn.Parameter``s (tensors ``torch.func.functional_call`` swaps in: kept, they would outlive
    the call) and while a CUDA graph is captured (the merges are then part of the graph, redone from the cores
    at each replay).

    ``make`` receives detached aliases of the cores and runs outside inference mode: a value that is a view of a
    core (a one-core group, a half that is core 0) then does not hold the Parameter itself, which
    ``torch.utils.swap_tensors`` (``load_state_dict`` under ``set_swap_module_params_on_conversion``) needs
    unreferenced, and a value first made under ``torch.inference_mode`` can still be saved for backward by a
    later call that trains only the bias.
    """
    if valueless(cores[0]):
        # meta and fake cores have no values worth keeping; and a CUDA graph being captured would bake a kept
        # value into the graph, whose replays would then miss later in-place updates of the cores (an optimizer
        # step), which a captured nn.Linear sees: merged in the graph, every replay merges the cores as they are
        return make(cores)
    try:
        # id(): the entry holds the cores, so their ids cannot be reused while it lives (this check runs on every
        # inference call: one list of tuples, ~3 us for 4 cores). Strides, dtype and the conj bit: `p.data = view`
        # of the same storage and shape (a transpose of square modes, a lazy conj, a float16 core viewed as
        # bfloat16) leaves the rest as it was; only complex tensors carry a conj bit (asked once: 4 calls are ~1%
        # of a batch-1 forward)
        conj = cores[0].is_complex()
        stamp = [
            _steps_seen(),
            *(
                (id(c), c.data_ptr(), c._version, c.shape, c.stride(), c.dtype, conj and c.is_conj())
                for c in cores
            ),
        ]
    except RuntimeError:  # inference tensors track no version counter
        return make(cores)
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        # kept in the cores' own precision: merged under autocast, a cached value would stay in the lower
        # precision after autocast ends (the ops that use it cast it again while autocast is on)
        with torch.no_grad(), torch.inference_mode(False), full_precision(cores[0].device.type):
            # detach() shares the storage (keeping it alive) without autograd history or the Parameter
            aliases = tuple(c.detach() for c in cores)
            value = make(aliases)
        # (a CPU check only: is_shared() is True for every CUDA tensor)
        if any(c.device.type == "cpu" and c.is_shared() for c in cores):
            return value
        if not all(isinstance(c, torch.nn.Parameter) for c in cores):
            # not the layer's own cores: tensors swapped in by torch.func.functional_call (an EMA copy, another
            # checkpoint), which the entry would keep alive after the caller let them go
            return value
        if hit is not None:
            # the cores changed or an optimizer stepped: every entry is stale (all hold the old cores), not only
            # this key's; dropped now rather than when their own key comes back
            cache.clear()
        hit = cache[key] = (stamp, tuple(cores), value, aliases)
    return hit[2]


def cached_supers(cache: dict, cores: Sequence[torch.Tensor], groups: Groups, direction: str) -> list:
    """The sweep's super-cores, the small ones kept in a layer's cache (:func:`cached`).

    Only groups that pass :func:`~tensortrain.contraction.cost.cacheable` are kept (at most a few times the
    size of their cores, never the dense weight); the others are merged on every call.
    """

    def make(parts: Sequence[torch.Tensor]) -> list:
        # (only on a miss: the hit path is every batch-1 call's overhead)
        dims = dims_of(parts)
        return [
            _exec.super_of(parts, i, j, direction) if _cost.cacheable(dims, i, j) else None for i, j in groups
        ]

    kept = cached(cache, (groups, direction), cores, make)
    if all(k is not None for k in kept):
        return kept
    return [
        k if k is not None else _exec.super_of(cores, i, j, direction)
        for k, (i, j) in zip(kept, groups, strict=True)
    ]


def cached_halves(cache: dict, cores: Sequence[torch.Tensor], split: int) -> tuple | None:
    """The full plan's two halves of W, kept in a layer's cache when both pass ``cacheable`` (else None)."""
    if not _cost.halves_cacheable(dims_of(cores), split):
        return None
    return cached(cache, ("halves", split), cores, lambda parts: _full.halves(parts, split))
