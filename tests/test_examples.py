"""The examples, seeded and small: tensor completion recovers a low-rank TT from a fraction of its entries;
Riemannian gradient descent approximates a TT below the TT-SVD's error."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str = "tensor_completion"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensor_completion_reaches_small_error(capsys):
    example = load_example()
    args = ["--shape", "5", "5", "5", "5", "--rank", "2", "--fraction", "0.4", "--iterations", "100"]
    error = example.main([*args, "--tol", "1e-4", "--seed", "5"])
    out = capsys.readouterr().out
    assert error < 1e-3
    lines = [ln for ln in out.splitlines() if ln.startswith("iteration")]
    assert lines and re.match(r"iteration +1 +loss [0-9.e+-]+ +relative error [0-9.e+-]+", lines[0])
    assert out.strip().splitlines()[-1] == f"final relative error: {error:.3e}"
    first = float(lines[0].split()[-1])
    assert error < 1e-2 * first  # it really converged, not started there


def test_tensor_completion_rejects_bad_options(capsys):
    example = load_example()
    with pytest.raises(SystemExit):
        example.main(["--fraction", "1.5"])
    assert "--fraction must be in (0, 1]" in capsys.readouterr().err


def test_observed_indices_of_a_large_tensor_are_distinct_without_a_full_permutation():
    """A permutation of every position took as much memory as the dense tensor (1 GB for 10^8 entries, 10^4
    observed); large tensors draw distinct positions instead."""
    import torch

    example = load_example()
    gen = torch.Generator().manual_seed(0)
    idx = example.observed_indices([100, 100, 100, 100], 1e-4, gen)
    assert idx.shape == (10_000, 4) and int(idx.min()) >= 0 and int(idx.max()) < 100
    assert torch.unique(idx, dim=0).shape[0] == 10_000


@pytest.mark.parametrize("autograd", [False, True])
def test_riemannian_descent_goes_below_the_tt_svd(capsys, autograd):
    """t3f's Riemannian tutorial: gradient descent on the rank-2 manifold ends below TT-SVD's quasi-optimum and
    decreases F at every printed step; the autograd gradient (tt.gradients) takes the same path as tt.project."""
    example = load_example("riemannian_approximation")
    args = ["--modes", "8", "--rank-a", "6", "--iterations", "40", "--seed", "3"]
    final, quasi = example.main([*args, *(["--autograd"] if autograd else [])])
    out = capsys.readouterr().out
    values = [float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("iteration")]
    assert len(values) == 5 and values == sorted(values, reverse=True)
    assert final < quasi and final == pytest.approx(values[-1], rel=1e-5)
    # from the start's value to below the quasi-optimum: the steps did the work
    start, _ = example.main([*args, "--iterations", "0", "--quiet"])
    assert start > 1.5 * quasi


def test_riemannian_example_rejects_bad_options(capsys):
    example = load_example("riemannian_approximation")
    with pytest.raises(SystemExit):
        example.main(["--lr", "nan"])
    assert "--lr must be positive" in capsys.readouterr().err
