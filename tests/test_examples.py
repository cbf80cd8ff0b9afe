"""The examples, seeded and small: tensor completion recovers a low-rank TT from a fraction of its entries;
Riemannian gradient descent approximates a TT below the TT-SVD's error; a small transformer trained on
standard-library source is compressed by tt.compress, fine-tuned, saved and reloaded."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str = "tensor_completion"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (importlib's recipe: dataclasses look their module up there)
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


# A model small enough to train in a few seconds, large enough to learn well below the unigram baseline.
TINY_TRANSFORMER = [
    *("--d-model", "64", "--heads", "2", "--layers", "1", "--ff", "128", "--context", "32"),
    *("--steps", "300", "--finetune-steps", "150", "--batch-size", "16", "--log-every", "100", "--seed", "1"),
]


def run_transformer_example(args: list[str]):
    example = load_example("compress_transformer")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example.main(args)
    return example, result, out.getvalue()


@pytest.fixture(scope="module")
def transformer_run():
    """One run of examples/compress_transformer.py with --ratio 4, shared by the tests that read it."""
    return run_transformer_example([*TINY_TRANSFORMER, "--ratio", "4"])


def test_transformer_training_goes_well_below_the_unigram_baseline(transformer_run):
    _, result, out = transformer_run
    untrained, dense = result["untrained"], result["dense"]
    assert 2.5 < result.unigram < untrained.loss  # an untrained model is worse than character frequencies
    assert dense.loss < result.unigram - 0.5  # and training takes it well below them
    assert dense.bits == pytest.approx(dense.loss / 0.6931471805599453)
    running = [float(m) for m in re.findall(r"step +\d+ +training loss ([0-9.]+)", out)]
    assert len(running) == 3 + 2 and running[2] < running[0]  # 300 dense steps, then 150 fine-tuning ones


def test_transformer_compress_meets_the_ratio_counted_by_numel(transformer_run):
    import torch

    import tensortrain as tt

    _, result, out = transformer_run
    report, dense, small = result.report, result.dense, result.small
    selected = [layer.name for layer in report.layers]
    assert result.replaced == selected and len(selected) == 5  # tok, pos, linear1, linear2, head

    def numel(model, names):
        return sum(p.numel() for n in names for p in model.get_submodule(n).parameters())

    before, after = numel(dense, selected), numel(small, selected)
    assert before / after >= 4 and report.ratio == pytest.approx(before / after)
    for name in selected:
        assert isinstance(dense.get_submodule(name), (torch.nn.Linear, torch.nn.Embedding))
        assert isinstance(small.get_submodule(name), (tt.nn.TTLinear, tt.nn.TTEmbedding))
    total_dense, total_small = (sum(p.numel() for p in m.parameters()) for m in (dense, small))
    assert total_dense - total_small == before - after  # nothing else changed size
    assert (result["dense"].params, result["compressed"].params) == (total_dense, total_small)
    assert report.model_params_after == total_small
    # the attention block stays dense (its out_proj is a subclass of nn.Linear whose weight it reads)
    assert type(small.encoder.layers[0].self_attn.out_proj.weight) is torch.nn.Parameter
    assert str(report) in out
    assert f"whole model: {total_dense:,} -> {total_small:,} parameters" in out
    # the TT-SVD at that ratio loses much of what training gained (which the fine-tuning test then recovers)
    assert result["compressed"].loss > result["dense"].loss + 0.5


def test_transformer_fine_tuning_recovers_after_compression(transformer_run):
    _, result, _ = transformer_run
    compressed, tuned = result["compressed"], result["fine-tuned"]
    assert tuned.params == compressed.params
    assert tuned.loss < compressed.loss - 0.5 and tuned.loss < result.unigram - 0.3


def test_transformer_reload_and_decompress_give_the_same_loss(transformer_run):
    import tensortrain as tt

    _, result, out = transformer_run
    small, reloaded = result.small, result.reloaded
    assert reloaded is not small
    saved, loaded = small.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(saved[k].equal(loaded[k]) for k in saved)
    ranks = {
        n: m.tt_ranks
        for n, m in reloaded.named_modules()
        if isinstance(m, (tt.nn.TTLinear, tt.nn.TTEmbedding))
    }
    assert sorted(ranks) == sorted(result.replaced)
    assert max(max(r) for r in ranks.values()) > 1  # the rank-1 layers were resized by load_state_dict
    assert result["reloaded"].loss == pytest.approx(result["fine-tuned"].loss, rel=1e-6, abs=0)
    assert result["reloaded"].params == result["fine-tuned"].params
    assert "validation loss the same as the fine-tuned model's" in out
    decompressed = result["decompressed"]
    assert decompressed.params == result["dense"].params
    assert decompressed.loss == pytest.approx(result["fine-tuned"].loss, abs=1e-4)
    assert not any(isinstance(m, (tt.nn.TTLinear, tt.nn.TTEmbedding)) for m in result.decompressed.modules())
    table = out[out.index("\nsummary") :].splitlines()[2:]
    stages = ["untrained", "dense", "compressed", "fine-tuned", "reloaded", "decompressed"]
    assert [line.split()[0] for line in table] == ["stage", "-" * len("unigram baseline"), "unigram", *stages]
    assert table[-1].split()[1:] == [
        f"{decompressed.params:,}",
        f"{decompressed.loss:.4f}",
        f"{decompressed.bits:.4f}",
    ]


@pytest.mark.parametrize("budget", [["--max-tt-rank", "3"], ["--epsilon", "0.6"]])
def test_transformer_other_budgets(budget):
    """--max-tt-rank caps every replaced layer's ranks, --epsilon bounds every weight's error; both reload."""
    args = [*TINY_TRANSFORMER, "--steps", "40", "--finetune-steps", "10", *budget]
    _, result, out = run_transformer_example(args)
    name, value = budget[0][2:].replace("-", "_"), budget[1]
    assert f"tt.compress(model, {name}={value})" in out
    replaced = [layer for layer in result.report.layers if layer.replaced]
    assert replaced
    if name == "max_tt_rank":
        assert all(max(layer.tt_ranks) <= 3 for layer in replaced)
        assert max(max(layer.tt_ranks) for layer in replaced) == 3
    else:
        assert all(layer.rel_error <= 0.6 for layer in replaced)
    assert result["reloaded"].loss == pytest.approx(result["fine-tuned"].loss, rel=1e-6, abs=0)


def test_transformer_vocabulary_maps_unseen_characters_to_unk():
    example = load_example("compress_transformer")
    data = example.make_data("ab" * 10 + "cz", val_fraction=0.1)  # the last 3 characters validate: "bcz"
    assert data.chars == ["<unk>", "a", "b"]
    assert data.val.tolist() == [2, 0, 0] and data.train.tolist() == [1, 2] * 9 + [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ratio", "1"], "--ratio must be > 1, got 1.0"),
        (["--ratio", "3", "--max-tt-rank", "4"], "argument --max-tt-rank: not allowed with argument --ratio"),
        (["--epsilon", "1.5"], "--epsilon must be in (0, 1), got 1.5"),
        (["--max-tt-rank", "0"], "--max-tt-rank must be >= 1, got 0"),
        (["--d-model", "30", "--heads", "4"], "--d-model (30) must be divisible by --heads (4)"),
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--finetune-steps", "-1"], "--finetune-steps must be non-negative, got -1"),
        (["--lr", "nan"], "--lr must be positive, got nan"),
    ],
)
def test_transformer_example_rejects_bad_options(capsys, argv, message):
    example = load_example("compress_transformer")
    with pytest.raises(SystemExit) as exc:
        example.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage:")
