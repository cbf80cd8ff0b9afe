"""Reusable scratch memory for the large dense temporaries of TT contractions (the built ``W`` and its gradient).

Why: on Linux, glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages from the
kernel, and the first write to each 4 KiB page faults and zeroes it. For the 64 MiB ``W`` of a 4096x4096 layer
that costs ~23 ms on the 2-core EPYC, more than the 2.1 GFLOP GEMM that builds ``W`` at rank 64 (~13 ms into
reused memory). The full plan (:mod:`tensortrain.contraction`) builds such a ``W`` on every call, so it borrows it
(and the blocks it is built from) from here instead; CUDA's caching allocator already reuses memory, and is left
to do so.

A buffer is lent only for the duration of a ``with scratch(...)`` block, and only to code that does not let the
tensor escape the block (nothing saved for backward, nothing returned). Buffers are per thread, so concurrent
inference in several threads never shares one. Between calls each thread keeps at most :func:`limit` bytes of
returned buffers (256 MiB by default; :func:`set_limit` changes it, ``set_limit(0)`` turns reuse off) and
:func:`empty_cache` frees them, like ``torch.cuda.empty_cache``.

Example::

    >>> import tensortrain as tt
    >>> tt.workspace.set_limit(64 * 2**20)  # keep at most 64 MiB of scratch per thread
    >>> tt.workspace.empty_cache()  # free it now
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch

from ._transforms import transforms_active
from .shapes import int_at_least

__all__ = ["scratch", "empty_cache", "limit", "set_limit", "held_bytes", "MIN_BYTES"]

# Smaller requests are plain allocations: small blocks come back from the allocator's own free lists.
MIN_BYTES = 4 * 2**20

_limit = 256 * 2**20


class _Free(threading.local):
    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []  # flat uint8 buffers, free to lend


_free = _Free()


def limit() -> int:
    """Bytes of returned scratch buffers each thread keeps between calls."""
    return _limit


def set_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of returned scratch per thread (0: no reuse); frees any excess of this thread's."""
    global _limit
    _limit = int_at_least(nbytes, 0, "set_limit: nbytes")
    _trim()


def held_bytes() -> int:
    """Bytes of scratch this thread holds between calls (buffers not lent out)."""
    return sum(b.numel() for b in _free.buffers)


def empty_cache() -> None:
    """Free the scratch buffers this thread holds."""
    _free.buffers.clear()


def _trim() -> None:
    bufs = sorted(_free.buffers, key=lambda b: b.numel())
    while bufs and sum(b.numel() for b in bufs) > _limit:
        bufs.pop()  # drop the largest first: the limit is about bytes held
    _free.buffers = bufs


@contextlib.contextmanager
def scratch(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
    """An uninitialized contiguous tensor for use inside the block only; its memory is reused afterwards.

    Falls back to a plain ``torch.empty`` on non-CPU devices, below :data:`MIN_BYTES`, under a transform (compile,
    export, ``torch.func``, forward AD), and with
    a limit of 0. The tensor must not escape the block.

    Complexity: ``O(#held buffers)`` bookkeeping; no page faults when a held buffer is large enough.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * dtype.itemsize
    device = torch.device(device)
    if device.type != "cpu" or nbytes < MIN_BYTES or _limit == 0 or transforms_active():
        if _free.buffers and _limit < held_bytes():
            # a lower limit set from another thread: this thread's excess goes now, not only at its next large
            # request (set_limit and empty_cache reach the calling thread's buffers only)
            _trim()
        yield torch.empty(tuple(shape), dtype=dtype, device=device)
        return
    fits = [b for b in _free.buffers if b.numel() >= nbytes]
    if fits:
        buf = min(fits, key=lambda b: b.numel())
        _free.buffers = [b for b in _free.buffers if b is not buf]
    else:
        # a normal tensor even under inference_mode: an inference tensor could not be written in place later,
        # outside inference mode
        with torch.inference_mode(False):
            buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    try:
        yield buf[:nbytes].view(dtype).view(tuple(shape))
    finally:
        _free.buffers.append(buf)
        _trim()
