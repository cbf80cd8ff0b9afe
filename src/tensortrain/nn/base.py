"""What the TT layers share: cores held in an ``nn.ParameterList`` named ``cores``, their ranks and
parameter count, and state_dict loading that survives rank changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__: list[str] = []


def assign_cores_(params: nn.ParameterList, cores: Sequence[torch.Tensor]) -> None:
    """Copy ``cores`` into ``params`` (cast to their dtype/device); cores of new shapes replace the Parameter."""
    like = params[0]
    with torch.no_grad():
        for k, c in enumerate(cores):
            c = c.detach().to(dtype=like.dtype, device=like.device)
            if params[k].shape == c.shape:
                params[k].copy_(c)
            else:
                params[k] = nn.Parameter(c.clone())


def resize_cores_to_state(params: nn.ParameterList, state_dict: Any, prefix: str) -> None:
    """Before loading: give core Parameters the shapes saved in ``state_dict`` (a state saved after a rank
    change), so a state_dict round trip survives rank changes."""
    for k in range(len(params)):
        saved = state_dict.get(f"{prefix}cores.{k}")
        if (
            isinstance(saved, torch.Tensor)
            and saved.dim() == params[k].dim()
            and saved.shape != params[k].shape
        ):
            like = params[k]
            params[k] = nn.Parameter(torch.empty(saved.shape, dtype=like.dtype, device=like.device))


class TTModule(nn.Module):
    """Base of :class:`TTLinear` and :class:`TTEmbedding`: a module whose TT-matrix lives in ``self.cores``.

    Both keep small tensors derived from the cores between inference calls in ``self._cache`` (merged core
    groups, never the dense weight), rebuilt whenever a core changes; see :meth:`clear_cache`.
    """

    cores: nn.ParameterList

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_cache"] = {}  # derived tensors: not pickled, not deep-copied
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_cache", {})  # modules pickled before the cache existed

    def clear_cache(self) -> None:
        """Forget the merged cores kept for inference (they are rebuilt on the next call).

        Inference (no gradients) reuses merged groups of cores while the cores are unchanged: same tensors,
        storage and version counter, which every in-place update bumps (optimizer steps, ``load_state_dict``,
        ``nn.init``). Only writes through ``.data`` go unseen: call this after them. The cache is a few times the
        cores' size and never holds the dense weight.

        Example:
            >>> layer = tt.nn.TTLinear(784, 625, tt_rank=4)
            >>> with torch.no_grad():
            ...     layer.cores[0].data.mul_(2.0)  # bypasses the version counter
            >>> layer.clear_cache()
        """
        self._cache.clear()

    @property
    def tt_ranks(self) -> tuple[int, ...]:
        """The TT-ranks ``(1, r_1, ..., r_{d-1}, 1)`` of the layer's TT-matrix."""
        return (*(int(c.shape[0]) for c in self.cores), 1)

    def num_tt_parameters(self) -> int:
        """The number of scalars in the cores (bias excluded)."""
        return sum(c.numel() for c in self.cores)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        resize_cores_to_state(self.cores, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
