"""Shared test configuration: one tolerance table, seeded generators, hypothesis profile."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# One shared tolerance table (STYLE.md): float64 tight, float32 at single-precision round-off.
TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # CI runs the same examples every time; HYPOTHESIS_RANDOM=1 (with a large HYPOTHESIS_MAX_EXAMPLES) hunts bugs
    derandomize=os.environ.get("HYPOTHESIS_RANDOM") is None,
)
settings.load_profile("ci")

# Tests run with a fixed small thread count so that the suite behaves the same on any machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _keep_threads():
    """The benchmark scripts' main() set the process's thread count: each test leaves it as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator: every random value in a test comes from one of these."""
    return torch.Generator().manual_seed(1234)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, **kw) -> None:
    """``torch.testing.assert_close`` with the table's tolerance for the actual dtype."""
    tol = dict(TOL.get(actual.dtype, TOL[torch.float32]))
    tol.update(kw)
    torch.testing.assert_close(actual, expected, **tol)


def run_closing_stdout(code: str, timeout: float) -> tuple[int, str]:
    """Run ``python -c code`` and close its stdout after the first bytes, as a reader such as ``head`` does:
    the exit status and the standard error."""
    import subprocess
    import sys
    import threading

    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        # a watchdog for the whole exchange: a child that writes no stdout while it fills the stderr pipe would
        # block both reads below forever (wait's timeout alone comes too late)
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.stdout.read(10)
            proc.stdout.close()  # the reader goes away
            err = proc.stderr.read().decode()
            status = proc.wait()
        finally:
            timer.cancel()
        assert not expired.is_set(), f"no exit within {timeout} s; stderr: {err[-2000:]}"
        return status, err
