"""tensortrain.workspace: scratch buffers lent for one block, reused between calls, per thread, within a limit."""

import threading

import pytest
import torch

from tensortrain import workspace


@pytest.fixture(autouse=True)
def _small(monkeypatch):
    monkeypatch.setattr(workspace, "MIN_BYTES", 64)
    workspace.empty_cache()
    yield
    workspace.empty_cache()


def test_lent_buffer_is_reused_and_shaped():
    with workspace.scratch((4, 8), torch.float32, torch.device("cpu")) as a:
        assert a.shape == (4, 8) and a.dtype == torch.float32 and a.is_contiguous()
        ptr = a.data_ptr()
        a.fill_(1.0)
    assert workspace.held_bytes() == 128
    with workspace.scratch((2, 8), torch.float64, "cpu") as b:  # same bytes, other dtype: same buffer
        assert b.data_ptr() == ptr and b.dtype == torch.float64
    with (
        workspace.scratch((4, 8), torch.float32, "cpu") as a,
        workspace.scratch((4, 8), torch.float32, "cpu") as c,
    ):
        assert a.data_ptr() != c.data_ptr()  # nested blocks never share a buffer
    assert workspace.held_bytes() == 256


def test_smallest_fitting_buffer_is_lent():
    with workspace.scratch((64,), torch.uint8, "cpu"), workspace.scratch((256,), torch.uint8, "cpu"):
        pass
    with workspace.scratch((100,), torch.uint8, "cpu") as a:
        assert workspace.held_bytes() == 64  # the 256-byte one was lent, the 64-byte one stays
        assert a.numel() == 100
    with workspace.scratch((128,), torch.uint8, "cpu"), workspace.scratch((128,), torch.uint8, "cpu"):
        pass  # (the 256-byte buffer, and a new 128-byte one): 64, 128 and 256 held
    with workspace.scratch((100,), torch.uint8, "cpu"):  # two fit: the smaller is lent
        assert workspace.held_bytes() == 64 + 256


def test_the_limit_is_inclusive_and_drops_the_largest_first():
    workspace.set_limit(128)
    try:
        with workspace.scratch((128,), torch.uint8, "cpu"):
            pass
        assert workspace.held_bytes() == 128  # exactly the limit: kept
        workspace.empty_cache()
        workspace.set_limit(200)
        with workspace.scratch((64,), torch.uint8, "cpu"), workspace.scratch((192,), torch.uint8, "cpu"):
            pass
        assert sorted(b.numel() for b in workspace._free.buffers) == [64]
    finally:
        workspace.set_limit(256 * 2**20)


def test_no_buffer_is_lent_under_a_transform():
    """Forward AD (like compile, export and torch.func) gets a plain allocation: nothing is kept."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), workspace.scratch((128,), torch.uint8, "cpu") as a:
        assert a.shape == (128,)
    assert workspace.held_bytes() == 0


def test_small_and_non_cpu_requests_are_plain_allocations():
    with workspace.scratch((4,), torch.float32, "cpu") as a:  # 16 bytes < MIN_BYTES
        assert a.shape == (4,)
    with workspace.scratch((64,), torch.float32, "meta") as m:
        assert m.device.type == "meta"
    assert workspace.held_bytes() == 0


def test_limit_bounds_what_is_held():
    workspace.set_limit(200)
    try:
        with workspace.scratch((128,), torch.uint8, "cpu"), workspace.scratch((128,), torch.uint8, "cpu"):
            pass
        assert workspace.held_bytes() == 128  # the second 128 bytes would pass the limit
        workspace.set_limit(0)
        assert workspace.held_bytes() == 0
        with workspace.scratch((128,), torch.uint8, "cpu"):
            pass
        assert workspace.held_bytes() == 0  # limit 0: no reuse
    finally:
        workspace.set_limit(256 * 2**20)
    assert workspace.limit() == 256 * 2**20


def test_buffer_returns_even_when_the_block_raises():
    with pytest.raises(RuntimeError), workspace.scratch((128,), torch.uint8, "cpu"):
        raise RuntimeError("boom")
    assert workspace.held_bytes() == 128


def test_threads_have_their_own_buffers():
    with workspace.scratch((128,), torch.uint8, "cpu"):
        pass
    seen: list[int] = []

    def other() -> None:
        seen.append(workspace.held_bytes())
        with workspace.scratch((128,), torch.uint8, "cpu"):
            pass
        seen.append(workspace.held_bytes())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [0, 128] and workspace.held_bytes() == 128


@pytest.mark.parametrize(
    ("bad", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)]
)
def test_set_limit_rejects_bad_values(bad, error):
    with pytest.raises(error, match="nbytes"):
        workspace.set_limit(bad)


def test_set_limit_takes_numpy_and_tensor_ints():
    import numpy as np

    before = workspace.limit()
    try:
        workspace.set_limit(np.int64(2**20))
        assert workspace.limit() == 2**20
        workspace.set_limit(torch.tensor(2**21))
        assert workspace.limit() == 2**21
    finally:
        workspace.set_limit(before)


def test_a_lower_limit_set_in_another_thread_is_applied_at_the_next_request():
    """set_limit(0) from the main thread never freed what a pool thread held: with the limit at 0 scratch returned
    before trimming, so the worker kept its buffers for its lifetime."""
    from concurrent.futures import ThreadPoolExecutor

    mib = 2**20
    pool = ThreadPoolExecutor(1)

    def borrow(nbytes: int) -> int:
        with workspace.scratch((nbytes,), torch.uint8, "cpu"):
            pass
        return workspace.held_bytes()

    try:
        assert pool.submit(borrow, 8 * mib).result() == 8 * mib
        workspace.set_limit(0)
        assert pool.submit(borrow, 16).result() == 0  # a small request trims the worker's own buffers
        workspace.set_limit(4 * mib)
        assert pool.submit(borrow, 8 * mib).result() == 0  # over the limit: not kept
    finally:
        pool.shutdown()
        workspace.set_limit(256 * mib)


def test_a_buffer_first_lent_under_inference_mode_is_a_normal_tensor():
    """A buffer allocated inside ``torch.inference_mode`` (an inference call) is lent again to training steps,
    which write it in place: it is held as a normal tensor, not an inference one (the lent view is writable)."""
    with torch.inference_mode(), workspace.scratch((128,), torch.uint8, "cpu"):
        pass
    assert workspace.held_bytes() == 128
    assert not any(b.is_inference() for b in workspace._free.buffers)
    with workspace.scratch((32,), torch.float32, "cpu") as a:
        a.fill_(1.0)
