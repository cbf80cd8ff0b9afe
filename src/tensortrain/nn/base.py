"""What the TT layers share: cores held in an ``nn.ParameterList`` named ``cores``, their ranks and
parameter count, state_dict loading that survives rank changes, and the dtype round trip of a dense weight's
TT-SVD (``from_linear``, ``from_embedding``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._transforms import valueless
from ..tensor_train import TensorTrain, check_cast, is_dtensor

__all__: list[str] = []


def check_factory_dtype(dtype: Any, fn: str) -> None:
    """A layer's ``dtype=``: None or a floating point or complex dtype of 16 bits or more (TT cores' dtypes),
    refused by name before torch's factories raise their own messages."""
    if dtype is not None:
        check_cast(torch.float32, dtype, fn)


def check_loadable(module: nn.Module, names: Sequence[str], fn: str, what: str = "core") -> None:
    """Raise ``ValueError`` when one of ``names`` is pruned or parametrized: its value is recomputed from other
    tensors before every forward, so values written into it would be dropped without a word."""
    for name in names:
        if name not in module._parameters:
            raise ValueError(
                f"{fn}: {what} {name!r} is pruned or parametrized (torch.nn.utils.prune / parametrize), so its "
                "value is recomputed from other tensors at every forward and loaded values would be dropped; "
                "remove that first (prune.remove / parametrize.remove_parametrizations), then load"
            )


def assign_cores_(params: nn.ParameterList, cores: Sequence[torch.Tensor], fn: str) -> None:
    """Copy ``cores`` into ``params`` (cast to their dtype/device); cores of new shapes replace the Parameter,
    keeping its ``requires_grad`` (a frozen layer stays frozen). Complex cores into real parameters are a
    ``TypeError`` naming ``fn``: their real parts do not multiply out to the tensor's real part; so are sharded
    (DTensor) parameters."""
    check_loadable(params, [str(k) for k in range(len(cores))], fn)
    if any(is_dtensor(p) for p in params):
        # FSDP2's shards: copying a whole core into one failed inside DTensor's copy_, and a core of new ranks
        # replaced the shard by a plain Parameter, which broke FSDP's next gather (and every forward after it)
        raise TypeError(
            f"{fn}: the layer's cores are sharded (DTensors, e.g. by FSDP2's fully_shard), which cannot be "
            "written whole or resized; load the TT-matrix into the layer before sharding it"
        )
    like = params[0]
    if cores[0].is_meta and not like.is_meta:
        raise ValueError(f"{fn}: the TT's cores are on the meta device and have no data to copy")
    if like.dtype.is_floating_point:
        check_cast(cores[0].dtype, like.dtype, fn)
    with torch.no_grad():
        for k, c in enumerate(cores):
            c = c.detach().to(dtype=like.dtype, device=like.device)
            if params[k].shape == c.shape:
                params[k].copy_(c)
            else:
                # contiguous: cores from tt.round are transposed views, and non-contiguous Parameters break
                # safetensors, DDP's gradient buckets and .view(); a normal tensor under inference_mode too, as
                # an in-place copy keeps one (an inference tensor is one no optimizer can update)
                with torch.inference_mode(False):
                    fresh = c.clone(memory_format=torch.contiguous_format)
                params[k] = nn.Parameter(fresh, requires_grad=params[k].requires_grad)


def _fmt_modes(modes: Sequence[tuple[int, ...] | None]) -> str:
    return ", ".join("?" if m is None else str(m) for m in modes)


def _rank_breaks(shapes: Sequence[torch.Size], saved: Sequence[bool], prefix: str) -> list[str]:
    """Where the ranks of the cores after loading (``shapes``; ``saved[k]``: core k comes from the checkpoint)
    fail to chain: core k's last rank must be core k+1's first, the boundary ranks 1 and the others at least 1
    (a rank of 0, chained, left empty cores that failed deep inside the next forward)."""

    def core(k: int) -> str:
        return f"{prefix}cores.{k}" + ("" if saved[k] else " (the layer's own, not in the checkpoint)")

    d = len(shapes)
    breaks = [
        f"{core(k)} {end} with rank {shapes[k][i]}, expected 1 (boundary ranks must be 1)"
        for k, i, end in ((0, 0, "starts"), (d - 1, -1, "ends"))
        if shapes[k][i] != 1
    ]
    breaks += [
        f"{core(k)} ends with rank {shapes[k][-1]} but {core(k + 1)} starts with rank {shapes[k + 1][0]}"
        for k in range(d - 1)
        if shapes[k][-1] != shapes[k + 1][0]
    ]
    breaks += [
        f"{core(k)} ends with rank 0 (TT-ranks must be at least 1)"
        for k in range(d - 1)
        if shapes[k][-1] == 0 and shapes[k + 1][0] == 0
    ]
    return breaks


def resize_cores_to_state(
    params: nn.ParameterList, state_dict: Any, prefix: str, error_msgs: list[str]
) -> None:
    """Before loading: give core Parameters the shapes saved in ``state_dict`` (a state saved after a rank
    change), so a state_dict round trip survives rank changes.

    Only the rank axes (each core's first and last) may change, and the ranks after loading must chain. A
    checkpoint of other mode sizes (another layer shape), or whose ranks do not chain with each other or with
    the cores it leaves in place (``strict=False``), resizes nothing: the reason goes to ``error_msgs``, and
    ``nn.Module._load_from_state_dict`` adds its usual "size mismatch" line per core, which
    ``load_state_dict`` raises as one RuntimeError (as for ``nn.Linear``). Resizing some cores and not others
    would leave a layer that fails deep inside its next forward.
    """
    found = [state_dict.get(f"{prefix}cores.{k}") for k in range(len(params))]
    saved = [isinstance(t, torch.Tensor) for t in found]
    shapes = [t.shape if isinstance(t, torch.Tensor) else p.shape for t, p in zip(found, params, strict=True)]
    if all(s == p.shape for s, p in zip(shapes, params, strict=True)):
        return
    on_meta = [
        k for k, t in enumerate(found) if isinstance(t, torch.Tensor) and t.is_meta and not params[k].is_meta
    ]
    if on_meta:
        # resized, the layer would keep torch.empty's garbage once the copy out of meta failed (nn.Linear keeps its
        # values then)
        error_msgs.append(
            f"size mismatch for {prefix}cores: the checkpoint's TT-ranks differ from the layer's, and its core(s) "
            f"{on_meta} are on the meta device, with no values to load; the layer keeps its cores"
        )
        return
    rerouted = [k for k in range(len(params)) if str(k) not in params._parameters]
    if rerouted:
        # a pruned or parametrized core is computed from other tensors (cores.1_orig, cores.parametrizations.1
        # .original): replacing it by a Parameter of the new shape failed half-way (a KeyError) or left both,
        # either way a layer whose ranks no longer chain
        error_msgs.append(
            f"size mismatch for {prefix}cores: the checkpoint's TT-ranks differ from the layer's, and core(s) "
            f"{rerouted} are pruned or parametrized (torch.nn.utils.prune / parametrize), so they cannot be "
            "resized; remove that first (prune.remove / parametrize.remove_parametrizations), then load"
        )
        return
    sharded = [k for k, p in enumerate(params) if is_dtensor(p)]
    if sharded:
        # FSDP2's shards: a plain Parameter of the new shape in their place broke FSDP's next gather (and every
        # forward after it); FSDP cannot resize a parameter it shards
        error_msgs.append(
            f"size mismatch for {prefix}cores: the checkpoint's TT-ranks differ from the layer's, and its cores "
            f"are sharded (DTensors, e.g. by FSDP2's fully_shard), which cannot be resized; load the checkpoint "
            "into the layer before sharding it, or build it at the checkpoint's ranks"
        )
        return
    modes = [tuple(p.shape[1:-1]) for p in params]
    got = [tuple(s[1:-1]) if ok else None for s, ok in zip(shapes, saved, strict=True)]
    if any(g is not None and g != m for g, m in zip(got, modes, strict=True)):
        error_msgs.append(
            f"size mismatch for {prefix}cores: the checkpoint's TT-cores have mode sizes "
            f"{_fmt_modes(got)} but the layer's are {_fmt_modes(modes)}; only the TT-ranks (each core's "
            "first and last axes) may differ"
        )
        return
    breaks = _rank_breaks(shapes, saved, prefix)
    if breaks:
        error_msgs.append(
            f"size mismatch for {prefix}cores: the checkpoint's TT-ranks do not chain: {'; '.join(breaks)}"
        )
        return
    for k, shape in enumerate(shapes):
        like = params[k]
        if shape != like.shape:
            # (a normal tensor under inference_mode too: nn.Module's loader copies into it in place, as into an
            # unresized core, and an inference tensor is one no optimizer can update afterwards)
            with torch.inference_mode(False):
                empty = torch.empty(shape, dtype=like.dtype, device=like.device)
            params[k] = nn.Parameter(empty, requires_grad=like.requires_grad)


# .hooks: the pre-hook registry whose layer's own loader has run them, in this thread
_LOADING = threading.local()


class _PreHooks(OrderedDict):
    """A TT layer's ``load_state_dict`` pre-hooks. The layer's ``_load_from_state_dict`` runs them itself, before
    its checks and resize, then calls ``nn.Module``'s loader, which would run them again: to that loader, in that
    thread, the registry looks empty. (Emptying the shared registry for the load instead left a copy made, a
    hook registered, or a second load run meanwhile in another thread without the hooks, some for good.)"""

    def values(self) -> Any:
        if getattr(_LOADING, "hooks", None) is self:
            return OrderedDict().values()
        return super().values()


# the key of a TT layer's sizes in its state dict's metadata (TTModule._sizes)
SIZES_KEY = "tensortrain_sizes"


class TTModule(nn.Module):
    """Base of :class:`TTLinear` and :class:`TTEmbedding`: a module whose TT-matrix lives in ``self.cores``.

    Both keep small tensors derived from the cores between inference calls in ``self._cache`` (merged core
    groups, never the dense weight), rebuilt whenever a core changes; see :meth:`clear_cache`.
    """

    cores: nn.ParameterList

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict = {}
        self.__dict__["_load_state_dict_pre_hooks"] = _PreHooks(self._load_state_dict_pre_hooks)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_cache"] = {}  # derived tensors: not pickled, not deep-copied
        # a plain OrderedDict, as nn.Module pickles it (an older tensortrain can read the file; __setstate__ wraps it)
        state["_load_state_dict_pre_hooks"] = OrderedDict(state["_load_state_dict_pre_hooks"])
        return state

    def __copy__(self) -> Any:
        """A shallow copy shares every registry with the original, as ``nn.Module``'s does, the pre-hooks' too
        (``__getstate__`` gives pickles a plain copy of them); only the inference cache is its own."""
        new = type(self).__new__(type(self))
        new.__setstate__({**self.__dict__, "_cache": {}})
        return new

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_cache", {})  # modules pickled before the cache existed
        if not isinstance(self._load_state_dict_pre_hooks, _PreHooks):  # (pickled before session 25)
            self.__dict__["_load_state_dict_pre_hooks"] = _PreHooks(self._load_state_dict_pre_hooks)

    def _current_cores(self) -> tuple[torch.Tensor, ...]:
        """The cores as the forward must use them: the ParameterList's forward pre-hooks run first, as calling
        it would run them. ``torch.nn.utils.prune`` (and the old ``weight_norm``) on a core registers such a
        hook, which recomputes the core from ``<k>_orig`` and its mask; the list itself is never called."""
        cores = self.cores
        hooks = cores._forward_pre_hooks
        if hooks:
            with_kwargs = cores._forward_pre_hooks_with_kwargs
            for hook_id, hook in list(hooks.items()):
                if hook_id in with_kwargs:
                    hook(cores, (), {})
                else:
                    hook(cores, ())
        # (indexed, not tuple(cores): the dynamo of torch 2.6 to 2.8 cannot trace tuple() of a ParameterList)
        return tuple([cores[k] for k in range(len(cores))])

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this first: say what works instead of failing on an annotation deep inside
        raise TypeError(
            f"{type(self).__name__} does not support torch.jit.script (TorchScript); use torch.compile, "
            "torch.export.export or torch.onnx.export(..., dynamo=True), or torch.jit.trace"
        )

    def clear_cache(self) -> None:
        """Forget the merged cores kept for inference (they are rebuilt on the next call).

        Inference (no gradients) reuses merged groups of cores while the cores are unchanged: same tensors,
        storage, strides and version counter, which every in-place update bumps (``load_state_dict``, ``nn.init``,
        ordinary optimizer steps), and no optimizer has stepped since (fused optimizers leave version counters as
        they were). Writes that bypass autograd's version counter go unseen: through ``.data``, by
        ``torch.distributed`` collectives (``dist.broadcast(p, 0)``, ``dist.all_reduce(p)`` on a core), and
        through another tensor sharing a core's storage (the flat vector ``vector_to_parameters`` made the
        cores views of, updated in place; a NumPy view): call this after them. ``model.train()`` /
        ``model.eval()`` clear it too, so a mode switch after such a sync is enough. The cache is a few times
        the cores' size and never holds the dense weight. A ``TTLinear`` with forward pre-hooks on its
        ``cores`` keeps none: the hooks may change the cores on every call.

        Example:
            >>> import torch, tensortrain as tt
            >>> layer = tt.nn.TTLinear(784, 625, tt_rank=4)
            >>> with torch.no_grad():
            ...     _ = layer.cores[0].data.mul_(2.0)  # bypasses the version counter
            >>> layer.clear_cache()
        """
        self._cache.clear()

    def train(self, mode: bool = True) -> TTModule:
        # a mode switch is where parameters are synced or loaded by code autograd does not see (collectives,
        # .data writes): start the new mode with no cached merges
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .to() / .double() / .cuda() give the cores new storages: the cache would only hold the old ones alive
        # until each of its keys is used again
        self._cache.clear()
        return super()._apply(fn, recurse)

    @property
    def tt_ranks(self) -> tuple[int, ...]:
        """The TT-ranks ``(1, r_1, ..., r_{d-1}, 1)`` of the layer's TT-matrix."""
        return (*(int(c.shape[0]) for c in self.cores), 1)

    def num_tt_parameters(self) -> int:
        """The number of scalars in the cores (a layer's bias, where it has one, is not counted)."""
        return sum(c.numel() for c in self.cores)

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # drop cached merges first: some are views of the cores, and swapping Parameters (load_state_dict under
        # torch.__future__.set_swap_module_params_on_conversion) needs them unreferenced
        self._cache.clear()
        # The layer's own load_state_dict pre-hooks (register_load_state_dict_pre_hook: renaming old keys, say)
        # run first, as nn.Module runs them, so that the checks and the resize below see the keys they leave;
        # nn.Module's loader, called without them below, would run them after the resize.
        hooks = self._load_state_dict_pre_hooks
        if not isinstance(hooks, _PreHooks):  # (a registry replaced whole after construction)
            hooks = self.__dict__["_load_state_dict_pre_hooks"] = _PreHooks(hooks)
        for hook in list(hooks.values()):
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        outer = getattr(_LOADING, "hooks", None)
        _LOADING.hooks = hooks
        try:
            self._load_own_state(
                (state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            )
        finally:
            _LOADING.hooks = outer

    def _sizes(self) -> dict[str, int]:
        """The layer's sizes by constructor argument name (``in_features``/``out_features``, or
        ``num_embeddings``/``embedding_dim``): what its cores do not tell when its dims are padded."""
        raise NotImplementedError

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The sizes go in the state dict's metadata, where nn.Module keeps its version: a padded layer has the
        # cores of an unpadded one with the same dims (TTLinear(10, 6) padded to 12 inputs, TTLinear(12, 6)), so
        # only they tell such checkpoints apart. Not a tensor: files that keep tensors only (safetensors) and
        # older checkpoints load as before, unchecked.
        meta = getattr(destination, "_metadata", None)
        if isinstance(meta, dict) and isinstance(meta.get(prefix[:-1]), dict):
            meta[prefix[:-1]][SIZES_KEY] = self._sizes()

    def _load_own_state(self, args: tuple) -> None:
        """The load itself, with ``_load_from_state_dict``'s arguments: the sizes and complex checks, the resize,
        then ``nn.Module``'s loader."""
        state_dict, prefix, local_metadata, error_msgs = args[0], args[1], args[2], args[-1]
        ours = [k for k in state_dict if k == prefix + "bias" or k.startswith(prefix + "cores.")]
        saved = local_metadata.get(SIZES_KEY) if isinstance(local_metadata, dict) else None
        mine = self._sizes()
        if not (isinstance(saved, dict) and all(type(saved.get(k)) is int for k in mine)):
            saved = None  # (not written by this class: ignored, as a checkpoint without it)
        if saved is not None and any(saved[k] != v for k, v in mine.items()):
            # the class the user built (FSDP2 and such wrap it in a generated subclass)
            name = next(c for c in type(self).__mro__ if c.__module__.startswith("tensortrain.")).__name__
            error_msgs.append(
                f"{prefix[:-1] + ': ' if prefix else ''}the checkpoint is of a {name}("
                f"{', '.join(f'{k}={saved[k]}' for k in mine)}), this layer is a {name}("
                f"{', '.join(f'{k}={v}' for k, v in mine.items())}); build the layer with the checkpoint's sizes"
            )
            # (entries of other shapes are left for torch, whose size mismatch lines follow)
            self._keep_current(state_dict, prefix, ours, drop=False)
            return
        if not self.cores[0].is_complex():
            # torch would copy a complex value's real part in (with a warning at most once per process): for
            # TT cores that is not even the real part of the weight
            bad = [k for k in ours if isinstance(state_dict[k], torch.Tensor) and state_dict[k].is_complex()]
            for key in bad:
                error_msgs.append(
                    f"{key}: the checkpoint holds complex values ({state_dict[key].dtype}) but the layer is real "
                    f"({self.cores[0].dtype}): build the layer with dtype="
                    f"{torch.complex64 if state_dict[key].dtype == torch.complex32 else state_dict[key].dtype}"
                )
            if bad:
                # (entries of other ranks left for torch's size mismatch lines: dropped, they read as missing)
                self._keep_current(state_dict, prefix, ours, drop=False)
                return
        resize_cores_to_state(self.cores, state_dict, prefix, error_msgs)
        super()._load_from_state_dict(*args)

    def _keep_current(self, state_dict: Any, prefix: str, keys: list[str], drop: bool = True) -> None:
        """Load nothing of this layer: the cores' ParameterList loads its entries after this layer's loader
        returns (from ``state_dict``, which torch copies for its loaders to edit), so give it the current
        values; entries of other shapes are dropped (``drop``) or left for torch to report."""
        # buffers too (a pruning mask under cores.); the Parameter itself, so that a load with assign=True
        # keeps it (an optimizer holds it)
        current = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        for key in keys:
            now = current.get(key[len(prefix) :])
            if now is not None and now.shape == state_dict[key].shape:
                state_dict[key] = now
            elif drop:
                del state_dict[key]


def svd_ready(w: torch.Tensor) -> torch.Tensor:
    """The weight in a dtype torch's SVD supports: half precision is decomposed in float32 (the cores are
    cast back by :func:`cast_back`)."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def cast_back(tt: TensorTrain, dtype: torch.dtype, fn: str) -> TensorTrain:
    """The TT-SVD's TT in the layer's ``dtype``. TT-SVD leaves the whole norm in one core, which can leave float16's
    range (a 256 x 256 weight of entries 6e4 has norm 1.5e7): the cores' norms are balanced first (the same
    tensor), and a TT that still does not fit is an error, not inf weights."""
    if tt.dtype == dtype:
        return tt
    if any(valueless(c) for c in tt.tt_cores):
        return tt.to(dtype)
    from ..ops import renormalize_tt_cores

    out = renormalize_tt_cores(tt).to(dtype)
    if not all(bool(torch.isfinite(c).all()) for c in out.tt_cores):
        raise ValueError(
            f"{fn}: the TT cores of the weight do not fit {dtype} even with balanced norms (largest core norm "
            f"{max(float(torch.linalg.vector_norm(c.float())) for c in tt.tt_cores):.3g}); convert the layer in "
            "float32"
        )
    return out
