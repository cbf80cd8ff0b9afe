"""compress / decompress on small models: outputs, ratios, report bookkeeping, selection, errors."""

from __future__ import annotations

import json
import re
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tensortrain as tt
import tensortrain.compression as compression
from conftest import assert_close
from tensortrain.compression_layers import CONVERTERS

DT = torch.float64


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, dtype=DT) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / x.shape[-1] ** 0.5, dim=-1)
        return self.o(a @ self.v(x))


class TinyTransformer(nn.Module):
    """Embedding -> attention block -> MLP block -> vocabulary head, with residuals and LayerNorm."""

    def __init__(self, vocab: int = 1000, dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=DT)
        self.attn = Attention(dim)
        self.norm = nn.LayerNorm(dim, dtype=DT)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden, dtype=DT), nn.GELU(), nn.Linear(hidden, dim, dtype=DT)
        )
        self.head = nn.Linear(dim, vocab, dtype=DT)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        h = h + self.attn(self.norm(h))
        return self.head(h + self.mlp(h))


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 48, dtype=DT),
        nn.ReLU(),
        nn.Linear(48, 36, dtype=DT),
        nn.ReLU(),
        nn.Linear(36, 10, dtype=DT),
    )


def make_low_tt_rank(model: nn.Module, rank: int, seed: int = 0) -> nn.Module:
    """Give every convertible layer a weight of exact TT-rank ``rank`` in the dims compress will use, so that
    compression at rank >= ``rank`` must reproduce the model (up to round-off)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m) in CONVERTERS:
            dims = CONVERTERS[type(m)].dims(m)
            w = tt.full(
                tt.random_matrix(
                    [list(dims[0]), list(dims[1])], tt_rank=rank, stddev=0.3, generator=gen, dtype=DT
                )
            )
            with torch.no_grad():
                m.weight.copy_(w[: m.weight.shape[0]])
    return model


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------- outputs
def test_mlp_high_rank_keeps_outputs(gen):
    model = make_low_tt_rank(mlp(), rank=3)
    x = torch.randn(8, 64, generator=gen, dtype=DT)
    small, report = tt.compress(model, max_tt_rank=3)
    assert (
        all(isinstance(small[i], tt.nn.TTLinear) for i in (0, 2))
        and report.params_after < report.params_before
    )
    assert_close(small(x), model(x), rtol=1e-8, atol=1e-8)
    assert all(lay.rel_error is not None and lay.rel_error < 1e-10 for lay in report.layers if lay.replaced)
    dense = tt.decompress(small)
    assert all(type(m) is nn.Linear for m in (dense[0], dense[2], dense[4]))
    assert_close(dense(x), small(x))


def test_transformer_high_rank_keeps_outputs(gen):
    model = make_low_tt_rank(TinyTransformer(), rank=2)
    idx = torch.randint(0, 1000, (2, 7), generator=gen)
    small, report = tt.compress(model, max_tt_rank=4)
    kinds = {type(m) for m in small.modules()}
    assert tt.nn.TTEmbedding in kinds and tt.nn.TTLinear in kinds and nn.Linear not in kinds
    assert_close(small(idx), model(idx), rtol=1e-8, atol=1e-8)
    assert report.ratio > 5
    back = tt.decompress(small)
    assert type(back.embed) is nn.Embedding and type(back.head) is nn.Linear
    assert_close(back(idx), small(idx))


def test_random_weights_error_falls_with_rank():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=100, dim=32, hidden=64)
    errors = []
    for rank in (2, 8, 32):
        _, report = tt.compress(model, max_tt_rank=rank, include="mlp.*")
        errors.append(max(lay.rel_error or 0.0 for lay in report.layers))
    assert errors[0] > errors[1] > errors[2]


# ------------------------------------------------------------------------------------------ ratio
@pytest.mark.parametrize("target", [3.0, 20.0])
def test_ratio_is_met_with_the_largest_rank(target):
    torch.manual_seed(0)
    model = TinyTransformer()
    small, report = tt.compress(model, ratio=target)
    assert report.ratio >= target
    rank = max(max(lay.tt_ranks) for lay in report.layers if lay.tt_ranks)
    _, looser = tt.compress(model, max_tt_rank=rank + 1)
    assert looser.ratio < target  # one more rank would miss the target: the largest rank was chosen
    assert report.model_params_after == count(small)


def test_unreachable_ratio():
    with pytest.raises(ValueError, match=r"ratio=1000000.0 is out of reach; even TT-rank 1 gives [0-9.]+x"):
        tt.compress(mlp(), ratio=1e6)


# ------------------------------------------------------------------------------------ bookkeeping
def test_report_counts_equal_parameter_counts():
    torch.manual_seed(0)
    model = TinyTransformer()
    model.tiny = nn.Linear(4, 3, dtype=DT)  # TT cannot save anything here: stays dense
    small, report = tt.compress(model, max_tt_rank=8)
    assert report.model_params_before == count(model)
    assert report.model_params_after == count(small)
    for lay in report.layers:
        assert lay.params_before == count(model.get_submodule(lay.name))
        assert lay.params_after == count(small.get_submodule(lay.name))
    tiny = next(lay for lay in report.layers if lay.name == "tiny")
    assert not tiny.replaced and "would not save parameters" in tiny.reason and type(small.tiny) is nn.Linear
    assert (
        report.params_before - report.params_after == report.model_params_before - report.model_params_after
    )
    text = str(report)
    assert (
        "attn.q" in text
        and "embed" in text
        and f"{report.model_params_after:,}" in text
        and "kept dense tiny" in text
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["model_params_after"] == count(small) and len(data["layers"]) == len(report.layers)


def test_original_untouched_unless_inplace(gen):
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small, _ = tt.compress(model, max_tt_rank=2)
    assert small is not model and type(model[0]) is nn.Linear
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    same, _ = tt.compress(model, max_tt_rank=2, inplace=True)
    assert same is model and isinstance(model[0], tt.nn.TTLinear)


def test_dry_run_plans_without_touching(gen):
    torch.manual_seed(0)
    model = TinyTransformer(vocab=100, dim=32, hidden=64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    same, plan = tt.compress(model, ratio=4, dry_run=True)
    assert same is model and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, tt.nn.TTLinear | tt.nn.TTEmbedding) for m in model.modules())
    small, report = tt.compress(model, ratio=4)
    assert {**plan.to_dict(), "dry_run": False} == report.to_dict() and plan.model_params_after == count(
        small
    )
    # a dry run's report says so: it read "replaced 2 of 2 selected layers" with nothing replaced
    assert plan.dry_run and not report.dry_run
    assert "dry run, nothing replaced: would replace" in str(plan) and "dry run" not in str(report)


def test_selection_globs_shared_modules_and_subclasses():
    torch.manual_seed(0)
    model = TinyTransformer()
    _, report = tt.compress(model, max_tt_rank=4, include="attn.*", exclude=["attn.o"])
    assert [lay.name for lay in report.layers] == ["attn.q", "attn.k", "attn.v"]
    shared = nn.Linear(64, 64, dtype=DT)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    out, _ = tt.compress(seq, max_tt_rank=2)
    assert out[0] is out[2] and isinstance(out[0], tt.nn.TTLinear)
    mha = nn.Sequential(nn.Linear(64, 64), nn.MultiheadAttention(64, 4, batch_first=True))
    out, report = tt.compress(mha, max_tt_rank=2)  # out_proj is a Linear subclass read as a tensor: skipped
    assert [lay.name for lay in report.layers] == ["0"] and type(out[1].out_proj) is not tt.nn.TTLinear
    root, _ = tt.compress(nn.Linear(64, 64), max_tt_rank=2)
    assert isinstance(root, tt.nn.TTLinear)
    bare = nn.Linear(64, 64)
    root, _ = tt.compress(bare, max_tt_rank=2, inplace=True)  # (as the docstring says: returned, not turned)
    assert isinstance(root, tt.nn.TTLinear) and type(bare) is nn.Linear


def test_tied_weights_stay_dense():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=100, dim=32, hidden=64)
    model.head.weight = model.embed.weight  # weight tying, as in language models
    small, report = tt.compress(model, ratio=2)
    by_name = {lay.name: lay for lay in report.layers}
    for name in ("embed", "head"):
        assert not by_name[name].replaced and "tied to" in by_name[name].reason
    assert small.head.weight is small.embed.weight and isinstance(small.mlp[0], tt.nn.TTLinear)
    assert report.ratio >= 2 and report.model_params_after == count(small)
    with pytest.raises(ValueError, match="out of reach"):
        tt.compress(model, ratio=2, include=["embed", "head"])


def test_epsilon_budget_and_unsupported_embedding():
    torch.manual_seed(0)
    model = make_low_tt_rank(mlp(), rank=2)
    model.append(nn.Embedding(100, 16, max_norm=1.0, dtype=DT))
    small, report = tt.compress(model, epsilon=1e-6)
    for lay in report.layers[:3]:
        assert lay.replaced and lay.rel_error is not None and lay.rel_error <= 1e-6 and max(lay.tt_ranks) == 2
    assert not report.layers[3].replaced and "max_norm" in report.layers[3].reason


def test_report_under_autocast_gives_the_error_reached():
    """The report's rel_error was taken from the TT layer's dense weight built under autocast (bfloat16): a float32
    layer compressed exactly (4.6e-7, from float32 SVDs) was reported 2.9e-3 off."""
    model = make_low_tt_rank(mlp(), rank=2).float()
    _, want = tt.compress(model, max_tt_rank=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, got = tt.compress(model, max_tt_rank=2)
    for a, b in zip(got.layers, want.layers, strict=True):
        assert a.replaced and a.rel_error is not None and b.rel_error is not None
        assert a.rel_error < 1e-5 and abs(a.rel_error - b.rel_error) < 1e-7


# ----------------------------------------------------------------------------------------- errors
def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of max_tt_rank, epsilon, ratio; got none"):
        tt.compress(mlp())
    with pytest.raises(ValueError, match=r"exactly one.*\['max_tt_rank', 'ratio'\]"):
        tt.compress(mlp(), max_tt_rank=4, ratio=10)
    with pytest.raises(ValueError, match="max_tt_rank must be >= 1"):
        tt.compress(mlp(), max_tt_rank=0)
    with pytest.raises(ValueError, match="ratio .* must be > 1"):
        tt.compress(mlp(), ratio=0.5)
    with pytest.raises(ValueError, match=r"epsilon .* must be in \(0, 1\)"):
        tt.compress(mlp(), epsilon=2.0)
    for name, bad, shown in (
        ("ratio", "2", "'2'"),
        ("ratio", True, "True"),
        ("epsilon", "0.1", "'0.1'"),
        ("epsilon", torch.tensor(True), "True"),
    ):
        with pytest.raises(TypeError, match=f"compress: {name} must be a real number, got {shown}"):
            tt.compress(mlp(), **{name: bad})
    # 0-d NumPy and torch values, as max_tt_rank takes them (a tensor was refused as not a real number)
    for name, value, same in (("epsilon", torch.tensor(0.3), 0.3), ("ratio", np.float32(4.0), 4.0)):
        got, want = tt.compress(mlp(), **{name: value})[1], tt.compress(mlp(), **{name: same})[1]
        assert [r.tt_ranks for r in got.layers] == [r.tt_ranks for r in want.layers]
    with pytest.raises(
        ValueError, match=r"no nn.Linear or nn.Embedding layer matched include='enc\*'.*\['0', '2', '4'\]"
    ):
        tt.compress(mlp(), max_tt_rank=4, include="enc*")
    # a model without candidates: what it holds and what compress converts ("candidate layers: none" before)
    with pytest.raises(
        ValueError, match=r"the model has none \(its layers: Conv2d, ReLU\); only those are conv"
    ):
        tt.compress(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()), max_tt_rank=4)
    done = nn.Sequential(tt.nn.TTLinear(8, 8, tt_rank=2), nn.ReLU())  # (its ParameterList was named, not it)
    with pytest.raises(ValueError, match=r"its layers: ReLU, TTLinear\)"):
        tt.compress(done, max_tt_rank=4)
    # a module's name matches itself, not its layers: the hint says how to select them
    block = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"match their names: \['0\.\*'\]"):
        tt.compress(block, max_tt_rank=2, include="0")
    with pytest.warns(UserWarning, match=r"include pattern\(s\) \['0'\] match no .*\['0\.\*'\]"):
        tt.compress(block, max_tt_rank=2, include=["0", "1"])
    fcs = nn.ModuleDict({"fc1": nn.Linear(8, 8), "fc2": nn.Linear(8, 8)})
    with pytest.raises(ValueError, match=r"candidate layers: \['fc1', 'fc2'\]$"):  # fc is no parent: no hint
        tt.compress(fcs, max_tt_rank=2, include="fc")
    with pytest.raises(TypeError, match="include must be a glob string or a sequence of them, got 3"):
        tt.compress(mlp(), max_tt_rank=4, include=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects an nn.Module, got dict"):
        tt.compress({}, max_tt_rank=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no TTLinear or TTEmbedding"):
        tt.decompress(mlp())


def test_compressed_model_fine_tunes(gen):
    torch.manual_seed(0)
    teacher = mlp()
    x = torch.randn(256, 64, generator=gen, dtype=DT)
    with torch.no_grad():
        y = teacher(x)
    small, _ = tt.compress(teacher, max_tt_rank=2)
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(small(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lazy_model_is_refused_with_a_clear_error():
    with pytest.raises(
        ValueError, match=r"uninitialized lazy parameters \(0.weight, 0.bias\); run one forward"
    ):
        tt.compress(nn.Sequential(nn.LazyLinear(10)), max_tt_rank=4)


def test_uninitialized_lazy_buffers_are_named_when_the_model_is_copied():
    """A LazyBatchNorm1d(affine=False) has lazy buffers and no parameters: compress and decompress let torch's
    deepcopy fail on them ("Attempted to use an uninitialized parameter in <function Tensor.__deepcopy__>"), naming
    neither the buffers nor the way out. In place, nothing is copied and both work."""
    model = nn.Sequential(nn.Linear(64, 64), nn.LazyBatchNorm1d(affine=False))
    with pytest.raises(
        ValueError, match=r"compress: the model has uninitialized lazy buffers \(1.running_mean, "
    ):
        tt.compress(model, max_tt_rank=4)
    small, _ = tt.compress(model, max_tt_rank=4, inplace=True)
    with pytest.raises(ValueError, match=r"decompress: .* lazy buffers .* or pass inplace=True"):
        tt.decompress(small)
    assert type(tt.decompress(small, inplace=True)[0]) is nn.Linear


def test_meta_model_gets_the_structure_of_a_compressed_checkpoint(gen):
    """Compress a meta-device model by rank alone (no values needed), then load a real compressed state_dict."""

    def mlp(device=None):
        return nn.Sequential(nn.Embedding(100, 64, device=device), nn.Linear(64, 48, device=device))

    real = mlp()
    small, _ = tt.compress(real, max_tt_rank=4)
    skeleton, report = tt.compress(mlp(device="meta"), max_tt_rank=4)
    assert [lay.rel_error for lay in report.layers] == [None, None]
    assert [lay.tt_ranks for lay in report.layers] == [m.tt_ranks for m in small]
    skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(small.state_dict())
    idx = torch.randint(0, 100, (5,), generator=gen)
    torch.testing.assert_close(skeleton(idx), small(idx), rtol=0, atol=0)
    # epsilon needs singular values, which a meta weight has not: a clear error, not a dense "compressed" model
    for dry_run in (False, True):
        with pytest.raises(ValueError, match=r"epsilon .* singular values.*meta device \(0, 1\)"):
            tt.compress(mlp(device="meta"), epsilon=0.5, dry_run=dry_run)


# ------------------------------------------------------------------------------ sharing, zero weights
def test_tied_parameters_are_counted_once():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(512, 64), nn.Linear(64, 256), nn.Linear(256, 64), nn.Linear(64, 512, bias=False)
    )
    model[3].weight = model[0].weight
    small, report = tt.compress(model, ratio=1.3)
    assert (report.model_params_before, report.model_params_after) == (count(model), count(small))
    assert report.params_before == count(model)  # every layer is selected: the whole model, counted once
    assert report.params_after == count(small) and report.ratio == count(model) / count(small)
    assert report.ratio >= 1.3 and small[3].weight is small[0].weight
    head = report.layers[3]
    assert head.params_before == 512 * 64 and head.tied_params == 512 * 64 and not head.replaced
    assert report.to_dict()["layers"][3]["tied_params"] == 512 * 64
    # the rank search sees the true counts: one more rank would miss the target on the real model
    rank = max(max(lay.tt_ranks) for lay in report.layers if lay.tt_ranks)
    looser, _ = tt.compress(model, max_tt_rank=rank + 1)
    assert count(model) / count(looser) < 1.3


def test_a_module_shared_under_several_names_is_selected_by_any_of_them():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(64, 64)
            self.b = self.a
            self.c = nn.Linear(64, 64)

    for include in ("a", "b"):
        small, report = tt.compress(Shared(), max_tt_rank=2, include=include)
        assert isinstance(small.a, tt.nn.TTLinear) and small.b is small.a and type(small.c) is nn.Linear
        assert [(lay.name, lay.aliases) for lay in report.layers] == [("a", ("b",))]
        assert report.model_params_after == count(small) < count(Shared())
        assert "a = b" in str(report)
    # exclusion under any name keeps it dense under all of them
    small, report = tt.compress(Shared(), max_tt_rank=2, exclude="b")
    assert type(small.a) is nn.Linear and small.b is small.a and [lay.name for lay in report.layers] == ["c"]


def test_rel_error_of_a_zero_weight_is_zero():
    model = nn.Sequential(nn.Linear(64, 64))
    nn.init.zeros_(model[0].weight)
    _, report = tt.compress(model, max_tt_rank=4)
    assert report.layers[0].replaced and report.layers[0].rel_error == 0.0
    half = nn.Sequential(nn.Linear(64, 64, dtype=torch.float16))
    nn.init.zeros_(half[0].weight)
    assert tt.compress(half, max_tt_rank=4)[1].layers[0].rel_error == 0.0


# ------------------------------------------------------------------- layers that cannot be converted
def test_ratio_counts_layers_that_cannot_be_converted_as_dense():
    """A selected layer the converter refuses (an Embedding option, a non-finite weight) stays dense whatever
    the rank: the ratio search counts it as fixed, so the target is met or refused, never silently missed."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(1000, 64, max_norm=1.0), "head": nn.Linear(64, 1000)})
    with pytest.raises(ValueError, match=r"ratio=4.0 is out of reach.*emb: .*max_norm"):
        tt.compress(model, ratio=4)
    small, report = tt.compress(model, ratio=1.5)
    emb, head = report.layers
    assert not emb.replaced and "max_norm=1.0" in emb.reason and head.replaced
    assert report.ratio >= 1.5 and report.model_params_after == count(small)
    inf = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    with torch.no_grad():
        inf[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"ratio=8.0 is out of reach.*0: .*NaN or inf"):
        tt.compress(inf, ratio=8)
    small, report = tt.compress(inf, ratio=1.8)
    assert report.ratio >= 1.8 and not report.layers[0].replaced and report.layers[1].replaced
    assert "NaN or inf" in report.layers[0].reason and type(small[0]) is nn.Linear


def test_ratio_below_target_after_converting_is_an_error(monkeypatch):
    """The safety net: a conversion that misses the planned ratio raises, and leaves an inplace model whole."""
    model = mlp()
    monkeypatch.setattr(compression, "_rank_for_ratio", lambda *args: 64)  # a plan that misses the target
    with pytest.raises(ValueError, match=r"ratio=3.0 was not reached: the converted layers give 1.0x"):
        tt.compress(model, ratio=3, inplace=True)
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))


def test_sparse_embedding_stays_dense():
    model = nn.Sequential(nn.Embedding(1000, 64, sparse=True), nn.Linear(64, 64))
    small, report = tt.compress(model, max_tt_rank=4)
    assert not report.layers[0].replaced and "sparse=True" in report.layers[0].reason
    assert type(small[0]) is nn.Embedding and report.layers[1].replaced


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_empty_layers_stay_dense_and_the_rest_is_compressed():
    model = nn.ModuleDict({"body": nn.Linear(64, 256), "aux_head": nn.Linear(256, 0)})  # 0 aux classes
    small, report = tt.compress(model, max_tt_rank=4)
    body, aux = report.layers
    assert body.replaced and not aux.replaced and aux.reason == "empty layer"
    assert aux.shape == (0, 256) and aux.params_before == aux.params_after == 0
    assert isinstance(small["body"], tt.nn.TTLinear) and type(small["aux_head"]) is nn.Linear
    assert "kept dense aux_head: empty layer" in str(report)
    assert tt.compress(model, ratio=2)[1].ratio >= 2
    alone, report = tt.compress(nn.Embedding(0, 8), max_tt_rank=4)
    assert type(alone) is nn.Embedding and report.ratio == 1.0 and "empty layer" in str(report)


def test_layer_with_extra_parameters_or_buffer_clashing_stays_dense():
    model = mlp()
    model[0].register_parameter("scale", nn.Parameter(torch.ones(48, dtype=DT)))
    model[2].register_buffer("cores", torch.zeros(1, dtype=DT))  # a TTLinear attribute: cannot be carried
    small, report = tt.compress(model, max_tt_rank=2)
    assert "parameters or submodules the TT layer would drop (scale)" in report.layers[0].reason
    assert "buffer 'cores'" in report.layers[1].reason and report.layers[2].replaced
    assert type(small[0]) is nn.Linear and type(small[2]) is nn.Linear


# --------------------------------------------------------------------- weights recomputed by hooks
def hooked_models() -> list[tuple[nn.Sequential, str]]:
    """Linear layers whose .weight is recomputed by a forward pre-hook, with the remedy compress names."""
    pruned = mlp()
    torch.nn.utils.prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    with warnings.catch_warnings():  # the old-style API is deprecated (parametrizations replace it)
        warnings.simplefilter("ignore", FutureWarning)
        normed = mlp()
        torch.nn.utils.weight_norm(normed[0])
    spectral = mlp()
    torch.nn.utils.spectral_norm(spectral[0])
    return [
        (pruned, r"prune.remove\(module, 'weight'\)"),
        (normed, r"remove_weight_norm\(module, 'weight'\)"),
        (spectral, r"remove_spectral_norm\(module, 'weight'\)"),
    ]


def test_layers_whose_weight_a_hook_recomputes_stay_dense(gen):
    """Pruning and the old-style weight_norm / spectral_norm refresh .weight in a forward pre-hook: between
    forwards it is a stale copy, so compressing it would be wrong (and report a wrong error)."""
    x = torch.randn(4, 64, generator=gen, dtype=DT)
    for model, remedy in hooked_models():
        model.eval()  # spectral_norm's power iteration would change the weight at each training forward
        first = model[0](x)
        small, report = tt.compress(model, max_tt_rank=2, inplace=True)
        hooked = report.layers[0]
        assert small is model and not hooked.replaced and type(small[0]) is nn.Linear
        assert re.search(f"recomputed before each forward.*{remedy}", hooked.reason)
        assert report.layers[1].replaced and report.layers[2].replaced
        assert_close(small[0](x), first)


def test_layers_whose_weight_a_hook_recomputes_are_copied_and_stay_dense(gen):
    """deepcopy refuses the non-leaf weight that a pruning / old-style weight_norm hook computed with gradients:
    compress without inplace=True raised where its docs say such a layer stays dense. The copy takes a detached
    copy of that weight, which the copied hook recomputes from the copied parameters."""
    x = torch.randn(4, 64, generator=gen, dtype=DT)
    for model, remedy in hooked_models():
        model.eval()
        first = model(x)
        small, report = tt.compress(model, max_tt_rank=2)
        assert small is not model and type(small[0]) is nn.Linear and type(model[2]) is nn.Linear
        assert not report.layers[0].replaced and re.search(remedy, report.layers[0].reason)
        assert_close(small[0](x), model[0](x), rtol=0, atol=0)
        with torch.no_grad():
            for p in small[0].parameters():
                p.mul_(2.0)
        assert not torch.allclose(small[0](x), model[0](x))  # the copy's hook reads the copy's parameters
        assert_close(model(x), first, rtol=0, atol=0)


def test_model_that_cannot_be_copied_gets_a_clear_error():
    model = mlp()
    model[0].cached = model[0].weight * 2.0  # a non-leaf tensor that deepcopy refuses
    with pytest.raises(
        ValueError, match=r"cannot be copied.*non-leaf tensor.*inplace=True to compress the model itself"
    ):
        tt.compress(model, max_tt_rank=2)
    _, report = tt.compress(model, max_tt_rank=2, dry_run=True)  # nothing is copied in a dry run
    assert report.layers[0].replaced


# ------------------------------------------------------------------ what the replaced layer keeps
def test_hooks_and_extra_buffers_move_to_the_tt_layer(gen):
    model = mlp()
    calls: list[str] = []
    handles = [
        model[0].register_forward_hook(lambda m, i, o: calls.append(f"post {type(m).__name__}")),
        model[0].register_forward_pre_hook(
            lambda m, args, kwargs: calls.append("pre kwargs") or None, with_kwargs=True
        ),
        model[0].register_forward_hook(lambda m, i, o: calls.append("always"), always_call=True),
    ]
    model[0].register_buffer("calib_scale", torch.full((48,), 2.0, dtype=DT))
    model[0].register_buffer("scratch", torch.zeros(3, dtype=DT), persistent=False)
    small, _ = tt.compress(model, max_tt_rank=2, inplace=True)
    assert isinstance(small[0], tt.nn.TTLinear)
    small(torch.randn(2, 64, generator=gen, dtype=DT))
    assert calls == ["pre kwargs", "post TTLinear", "always"]
    assert_close(small[0].calib_scale, torch.full((48,), 2.0, dtype=DT))
    assert "0.calib_scale" in small.state_dict() and "0.scratch" not in small.state_dict()
    assert small[0].scratch.shape == (3,)
    for handle in handles:  # the user's handles still remove the hooks from the TT layer
        handle.remove()
    calls.clear()
    dense = tt.decompress(small)
    dense(torch.randn(2, 64, generator=gen, dtype=DT))
    assert calls == [] and "0.calib_scale" in dense.state_dict()
    # decompress carries them back too
    small[0].register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    dense = tt.decompress(small)
    dense(torch.randn(2, 64, generator=gen, dtype=DT))
    assert calls == ["Linear"] and type(dense[0]) is nn.Linear and dense[0].scratch.shape == (3,)


def test_replaced_layers_keep_train_or_eval_mode():
    for training in (True, False):
        model = nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.1), nn.Embedding(100, 16))
        model.train(training)
        small, _ = tt.compress(model, max_tt_rank=4)
        assert isinstance(small[0], tt.nn.TTLinear) and isinstance(small[2], tt.nn.TTEmbedding)
        assert all(m.training is training for m in small.modules())
        assert all(m.training is training for m in tt.decompress(small.train(training)).modules())
    small[0].train()  # a layer whose mode differs from its parent's keeps its own
    assert tt.decompress(small)[0].training and not tt.decompress(small)[2].training


def test_reading_a_replaced_layers_weight_directly_fails_clearly(gen):
    """Code that uses a layer's .weight outside its forward cannot be detected; its first call says why."""

    class ReadsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 256)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.lin.weight, self.lin.bias)

    small, report = tt.compress(ReadsWeight(), max_tt_rank=4)
    assert report.layers[0].replaced
    with pytest.raises(TypeError, match=r"'linear' got a TensorTrain.*called as modules.*tt.full\(w\)"):
        small(torch.randn(2, 64, generator=gen))


def test_float16_layers_with_large_norms_get_finite_cores():
    """TT-SVD leaves the whole norm in one core: cast back to float16 that core was inf (rel_error inf, the layer
    replaced anyway)."""
    lin = nn.Linear(256, 256).half()
    emb = nn.Embedding(256, 64).half()
    with torch.no_grad():
        lin.weight.fill_(6e4)  # every entry fits float16; the norm, 1.5e7, does not
        emb.weight.fill_(6e4)
    small, report = tt.compress(nn.Sequential(lin), max_tt_rank=2)
    assert report.layers[0].replaced and report.layers[0].rel_error < 1e-2
    assert torch.isfinite(small[0].dense_weight()).all()
    table = tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=2).to_embedding().weight
    assert torch.isfinite(table).all() and torch.allclose(table.float(), emb.weight.float(), rtol=1e-2)


def test_report_error_of_huge_weights_is_not_nan():
    lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight.mul_(1e30)  # its squared norm leaves float32's range
    _, report = tt.compress(nn.Sequential(lin), max_tt_rank=2)
    assert 0 < report.layers[0].rel_error < 1


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_ratio_of_only_empty_layers_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"ratio=2.0 is out of reach: the selected layers hold no parameters"
    ):
        tt.compress(nn.Sequential(nn.Linear(64, 0)), ratio=2)


def test_patterns_that_match_no_layer_warn():
    model = nn.ModuleDict(
        {"a": nn.Sequential(nn.Linear(256, 256)), "b": nn.ModuleList([nn.Linear(256, 128)])}
    )
    with pytest.warns(UserWarning, match=r"exclude pattern\(s\) \['lm_haed'\] match no .* candidate layers"):
        tt.compress(model, max_tt_rank=4, exclude="lm_haed")
    with pytest.warns(UserWarning, match=r"include pattern\(s\) \['zzz'\]"):
        _, report = tt.compress(model, max_tt_rank=4, include=["a.0", "zzz"])
    assert [lay.name for lay in report.layers] == ["a.0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.compress(model, max_tt_rank=4, include="a.*", exclude="b.*")  # every pattern matches: silent
    # (a pattern naming a subclass, such as an attention block's out_proj, says why it is no candidate, as the
    # error for a selection of nothing does)
    attn = nn.ModuleDict({"attn": nn.MultiheadAttention(64, 4), "mlp": nn.Linear(64, 64)})
    with pytest.warns(
        UserWarning,
        match=r"\['attn.out_proj'\] match no .*left alone .*\['attn.out_proj \(NonDynamicallyQuantizableLinear\)'\]",
    ):
        tt.compress(attn, max_tt_rank=4, exclude="attn.out_proj")


def test_a_lazy_linear_given_its_shape_by_load_state_dict_is_compressed():
    """Still of class LazyLinear (in_features 0) until a first forward: compress skipped it without a report
    row, leaving the model's largest layer dense."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    lazy = nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.Linear(256, 10))
    lazy.load_state_dict(dense.state_dict())
    small, report = tt.compress(lazy, max_tt_rank=4)
    want_small, want = tt.compress(dense, max_tt_rank=4)
    assert [layer.name for layer in report.layers] == [
        "0",
        "2",
    ] and report.model_params_after == want.model_params_after
    assert isinstance(small[0], tt.nn.TTLinear) and type(lazy[0]) is nn.LazyLinear  # the original untouched
    x = torch.randn(3, 512)
    assert_close(small(x), want_small(x))
    with pytest.raises(ValueError, match="uninitialized lazy parameters"):  # no shapes yet: still refused
        tt.compress(nn.Sequential(nn.LazyLinear(8)), max_tt_rank=2)


def test_an_out_of_reach_ratio_is_not_rounded_up_to_itself():
    with pytest.raises(ValueError, match=r"ratio=2.0 is out of reach; even TT-rank 1 gives 1.95x"):
        tt.compress(nn.Linear(1, 1000), ratio=2)  # 1.955x printed as "2.0x"


def test_a_non_zero_padding_row_keeps_the_embedding_dense():
    """nn.Embedding returns its padding row as it is (only its gradient is zero); TTEmbedding returns zeros there,
    so compress changed the padding token's output silently."""
    model = nn.Sequential(nn.Embedding(100, 16, padding_idx=0, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight[0] = 1.0
    small, report = tt.compress(model, max_tt_rank=64)
    assert isinstance(small[0], nn.Embedding) and not report.layers[0].replaced
    assert "padding row (padding_idx=0) is not zero" in report.layers[0].reason
    idx = torch.tensor([0, 5])
    assert_close(small(idx), model(idx))
    with torch.no_grad():
        model[0].weight[0] = 0.0  # the usual zero row converts
    assert tt.compress(model, max_tt_rank=4)[1].layers[0].replaced


def test_a_weight_replaced_by_hand_keeps_its_layer_dense():
    """A weight of another shape than in_features/out_features (pruned by hand; nn.Linear's forward ignores the
    sizes): from_linear zero-padded or cropped it into a wrong layer, compress failed in a broadcast."""
    lin = nn.Linear(32, 24, dtype=torch.float64)
    lin.weight = nn.Parameter(lin.weight[:, :16].clone())
    with pytest.raises(ValueError, match=r"weight has shape \(24, 16\) but out_features=24, in_features=32"):
        tt.nn.TTLinear.from_linear(lin, max_tt_rank=4)
    emb = nn.Embedding(40, 8, dtype=torch.float64)
    emb.weight = nn.Parameter(emb.weight[:30].clone())
    with pytest.raises(ValueError, match=r"weight has shape \(30, 8\) but num_embeddings=40"):
        tt.nn.TTEmbedding.from_embedding(emb, max_tt_rank=4)
    model = nn.Sequential(lin, nn.Tanh(), nn.Linear(24, 24, dtype=torch.float64))
    small, report = tt.compress(model, max_tt_rank=64)
    row = report.layers[0]
    assert (
        not row.replaced and "its weight has shape (24, 16) but out_features=24, in_features=32" in row.reason
    )
    x = torch.randn(3, 16, dtype=torch.float64)
    assert_close(small(x), model(x), rtol=1e-9, atol=1e-9)


def test_a_parametrized_layer_gets_a_kept_dense_row():
    """torch.nn.utils.parametrizations (weight_norm, spectral_norm, orthogonal) make a ParametrizedLinear, which
    compress skipped without a report row, or refused as "candidate layers: none"."""
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    parametrizations.weight_norm(model[0])
    small, report = tt.compress(model, max_tt_rank=4)
    rows = {row.name: row for row in report.layers}
    assert not rows["0"].replaced and "remove_parametrizations(module, 'weight')" in rows["0"].reason
    assert rows["2"].replaced
    only = nn.Sequential(nn.Linear(64, 64))
    parametrizations.spectral_norm(only[0])
    _, report = tt.compress(only, max_tt_rank=4)
    assert [row.replaced for row in report.layers] == [False]


def test_decompress_carries_over_what_was_added_to_a_tt_layer():
    """Parameters and submodules added to a TT layer (a learned scale, an adapter) were dropped, and a hook that
    read them failed at the next forward."""
    small, _ = tt.compress(nn.Sequential(nn.Linear(64, 32, dtype=torch.float64)), max_tt_rank=4)
    layer = small[0]
    layer.register_parameter("scale", nn.Parameter(torch.full((32,), 2.0, dtype=torch.float64)))
    layer.adapter = nn.Linear(64, 32, dtype=torch.float64)
    layer.register_forward_hook(lambda m, i, o: o * m.scale + m.adapter(i[0]))
    x = torch.randn(3, 64, dtype=torch.float64)
    dense = tt.decompress(small)
    assert dense[0].scale is layer.scale or torch.equal(dense[0].scale, layer.scale)
    assert_close(dense(x), small(x))
    emb, _ = tt.compress(nn.Sequential(nn.Embedding(64, 8)), max_tt_rank=2)
    emb[0].register_parameter("sparse", nn.Parameter(torch.zeros(1)))  # a name nn.Embedding uses
    with pytest.raises(
        ValueError, match="the TT layer holds 'sparse', which the dense Embedding has already"
    ):
        tt.decompress(emb)


def test_decompress_refuses_a_pruned_or_parametrized_tt_layer():
    """A pruned TT bias failed deep in copy.deepcopy; with inplace=True the dense layer took over bias_orig, the
    mask and the pruning hook and raised at its first forward; a parametrized bias left a plain Linear still
    parametrized, with a stale bias and a stray parameter. Both are refused, naming the layer and the remedy."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    pruned = tt.nn.TTLinear(12, 10, tt_rank=3)
    prune.l1_unstructured(pruned, "bias", amount=0.5)
    for inplace in (False, True):
        with pytest.raises(ValueError, match=r"TT layer '0' cannot be converted: .*prune\.remove"):
            tt.decompress(nn.Sequential(pruned), inplace=inplace)
    assert hasattr(pruned, "bias_orig")  # untouched

    class Twice(nn.Module):
        def forward(self, b):
            return 2 * b

    twice = tt.nn.TTLinear(12, 10, tt_rank=3)
    parametrize.register_parametrization(twice, "bias", Twice())
    with pytest.raises(ValueError, match="'bias' is parametrized"):
        tt.decompress(nn.Sequential(twice))


def test_decompress_keeps_tt_layers_tied_by_their_cores():
    """An embedding and its output head sharing one ParameterList became two independent dense tables (twice the
    parameters, and a tie that training no longer kept): they now share one dense Parameter."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(100, 32, tt_rank=4, voc_dims=(4, 5, 5), emb_dims=(4, 4, 2))
    head = tt.nn.TTLinear(32, 100, tt_rank=4, in_dims=(4, 4, 2), out_dims=(4, 5, 5), bias=False)
    head.cores = emb.cores
    model = nn.ModuleDict({"emb": emb, "head": head})
    dense = tt.decompress(model)
    assert dense["head"].weight is dense["emb"].weight
    assert sum(p.numel() for p in dense.parameters()) == 100 * 32
    idx = torch.tensor([1, 5, 99])
    assert_close(dense["head"](dense["emb"](idx)), model["head"](model["emb"](idx)), atol=1e-4, rtol=1e-4)

    other = tt.nn.TTLinear(32, 100, tt_rank=4, in_dims=(4, 4, 2), out_dims=(4, 5, 5), bias=False)
    other.cores[1] = emb.cores[1]  # one core shared
    both = nn.ModuleDict({"emb": emb, "other": other})
    with pytest.raises(ValueError, match="share cores, but not the same cores in the same order"):
        tt.decompress(both, inplace=True)
    assert both["emb"] is emb and both["other"] is other  # nothing swapped in before the error
    narrow = tt.nn.TTLinear(30, 100, tt_rank=4, in_dims=(4, 4, 2), out_dims=(4, 5, 5), pad=True, bias=False)
    narrow.cores = emb.cores  # the same cores, of which a padded 100 x 30 layer reads 30 columns
    with pytest.raises(ValueError, match="converting would untie them"):
        tt.decompress(nn.ModuleDict({"emb": emb, "narrow": narrow}))


@pytest.mark.parametrize("inplace", [False, True])
def test_decompress_keeps_a_shared_or_tied_bias(inplace):
    """to_linear copies the bias: two TT layers sharing one bias (or a TT bias tied to a dense layer's) became
    independent biases (528 parameters, not 512 + 16), silently, where compress keeps such a tie."""
    torch.manual_seed(0)
    a = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=torch.float64)
    b = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=torch.float64)
    c = nn.Linear(16, 16, dtype=torch.float64)
    b.bias = a.bias
    c.bias = a.bias
    model = nn.Sequential(a, nn.Tanh(), b, nn.Tanh(), c)
    x = torch.randn(3, 16, dtype=torch.float64)
    want = model(x)
    dense = tt.decompress(model, inplace=inplace)
    assert dense[0].bias is dense[2].bias is dense[4].bias
    assert sum(p.numel() for p in dense.parameters()) == 2 * 256 + 256 + 16
    assert_close(dense(x), want)
    # a bias of another dtype than the cores cannot be the dense layer's: converted (untied), as before
    odd = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=torch.float64)
    odd.bias = nn.Parameter(torch.zeros(16, dtype=torch.float32))
    assert tt.decompress(odd).bias.dtype == torch.float64
    # nor can a bias that is a plain tensor (nn.Linear takes Parameters only: torch's TypeError, from a review)
    plain = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=torch.float64)
    values = plain.bias.detach().clone()
    del plain.bias
    plain.bias = values
    want = plain(x)
    got = tt.decompress(nn.Sequential(plain), inplace=inplace)[0]
    assert isinstance(got.bias, nn.Parameter) and got.bias is not values
    assert_close(got(x), want)


@pytest.mark.parametrize("head_first", [False, True])
def test_decompress_refuses_a_tie_with_a_padding_row_the_head_uses(head_first):
    """A tied TTEmbedding with padding_idx returns zeros at that row while the head uses the TT's row: one dense
    weight changed the outputs (the head's logit column zeroed, or the embedding returning the head's row)."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=1)
    head = tt.nn.TTLinear(8, 30, tt_rank=3, in_dims=(2, 2, 2), out_dims=(2, 4, 4), pad=True, bias=False)
    head.cores = emb.cores
    model = nn.ModuleDict({"head": head, "emb": emb} if head_first else {"emb": emb, "head": head})
    with pytest.raises(ValueError, match="has padding_idx=1, whose row of the shared TT is not zero"):
        tt.decompress(model)
    emb.cores[0].data[:, 0] = (
        0.0  # rows 0-15 of the TT are zero now, the padding row among them: one weight fits
    )
    dense = tt.decompress(model)
    idx = torch.tensor([0, 1, 5, 29])
    assert_close(dense["head"](dense["emb"](idx)), model["head"](model["emb"](idx)))


def test_decompress_keeps_a_tie_with_a_padding_row_on_the_meta_device():
    """A meta model (structure only) has no padding row to check: the check read one and raised torch's
    "Tensor.item() cannot be called on meta tensors"; the tie is kept, as compress skips its value checks there."""
    with torch.device("meta"):
        emb = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=1)
        head = tt.nn.TTLinear(8, 30, tt_rank=3, in_dims=(2, 2, 2), out_dims=(2, 4, 4), pad=True, bias=False)
    head.cores = emb.cores
    dense = tt.decompress(nn.ModuleDict({"emb": emb, "head": head}))
    assert dense["emb"].weight is dense["head"].weight and dense["emb"].weight.is_meta
    assert dense["emb"].padding_idx == 1


def test_emb_dims_that_multiply_to_more_get_no_hint_of_padding():
    """The error suggested pad=True, which TTEmbedding does not take (its width is never padded)."""
    with pytest.raises(tt.ShapeError, match=r"multiply to 9, but embedding_dim=8$"):
        tt.nn.TTEmbedding(30, 8, tt_rank=2, emb_dims=(3, 3))


def test_conversions_leave_the_global_random_stream_alone():
    """Each conversion built a layer that drew its init from the global generator and then overwrote it: a
    seeded script got other dropout masks and heads depending on how many dry runs it made."""
    model = nn.Sequential(nn.Linear(784, 625), nn.ReLU(), nn.Linear(625, 10), nn.Embedding(1000, 64))
    calls = [
        lambda: tt.compress(model, max_tt_rank=16, dry_run=True),
        lambda: tt.decompress(tt.compress(model, max_tt_rank=16)[0]),
        lambda: tt.nn.TTLinear.from_linear(model[0], max_tt_rank=4).to_linear(),
        lambda: tt.nn.TTEmbedding.from_embedding(model[3], max_tt_rank=4),
    ]
    for call in calls:
        state = torch.get_rng_state()
        call()
        assert torch.equal(torch.get_rng_state(), state)


def test_compress_refuses_epsilon_zero():
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match=r"epsilon"):
        tt.compress(model, epsilon=0.0)


def test_report_model_ratio_counts_the_whole_model():
    # (test_compression.py) model_ratio is the whole model's compression, layers left out of the selection included
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64))
    before = sum(p.numel() for p in model.parameters())
    compressed, report = tt.compress(model, max_tt_rank=2, include=["0"])
    after = sum(p.numel() for p in compressed.parameters())
    assert (report.model_params_before, report.model_params_after) == (before, after)
    assert report.model_ratio == pytest.approx(before / after)
    assert report.ratio != pytest.approx(report.model_ratio)
    assert report.to_dict()["totals"]["model_ratio"] == report.model_ratio
    assert f"whole model {before:,} -> {after:,} ({before / after:.1f}x)" in str(report)


def test_report_table_cells():
    # (test_compression.py) the table's shape cell is out x in, rel_error in scientific notation, and only replaced
    # layers get a "padded" line
    from tensortrain.compression_report import CompressionReport, LayerReport

    replaced = LayerReport("fc", "Linear", (30, 20), ((5, 6), (4, 5)), (1, 3, 1), 630, 150, 1.234e-3, "")
    dense = LayerReport("head", "Linear", (7, 9), ((2, 4), (3, 3)), None, 70, 70, None, "too small")
    text = str(CompressionReport((replaced, dense), 700, 220))
    row = next(line for line in text.splitlines() if line.startswith("fc "))
    assert "30x20" in row and "1.23e-03" in row
    assert "padded fc" not in text and "padded head" not in text
    padded = LayerReport("fc", "Linear", (30, 20), ((6, 6), (4, 5)), (1, 3, 1), 630, 150, 0.5, "")
    assert "padded fc: its dims multiply to 36x20" in str(CompressionReport((padded, dense), 700, 220))


def test_a_transformer_encoder_with_a_later_layer_compressed_keeps_working():
    """The encoder picks its nested-tensor fast path from the first layer alone: with layer 0 kept dense, eval
    with a padding mask handed the TT layers of layer 1 a nested tensor (torch's "NestedTensorImpl doesn't
    support sizes")."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch warns about the nested-tensor path of its own accord)
        enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    assert enc.use_nested_tensor
    x = torch.randn(2, 6, 64)
    mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    small, report = tt.compress(enc, max_tt_rank=4, include="layers.1.*")
    assert [r.name for r in report.layers if r.replaced] == ["layers.1.linear1", "layers.1.linear2"]
    assert not small.use_nested_tensor and enc.use_nested_tensor  # the original keeps its fast path
    dense = tt.decompress(small)
    with torch.no_grad(), warnings.catch_warnings():
        # (the dense encoder's own nested-tensor path warns of its prototype API)
        warnings.simplefilter("ignore")
        y, want = small(x, src_key_padding_mask=mask), dense(x, src_key_padding_mask=mask)
    assert torch.allclose(y[~mask], want[~mask], atol=1e-5)
    assert dense.use_nested_tensor  # decompress gives the fast path back
    # and a TT layer given a nested tensor says so
    nested = torch.nested.nested_tensor([torch.randn(3, 256), torch.randn(2, 256)], layout=torch.jagged)
    with pytest.raises(TypeError, match="input is a nested tensor"):
        small.layers[1].linear2(nested)


def test_compress_refuses_epsilon_one_and_meets_a_ratio_exactly_at_its_rank():
    """epsilon=1 allows a 100% error (refused: the range is (0, 1)); a ratio exactly what rank 6 gives picks rank
    6, the largest meeting it (a mutant's strict comparison picked 5)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False), torch.nn.Linear(256, 256, bias=False))
    with pytest.raises(ValueError, match=r"must be in \(0, 1\), got 1"):
        tt.compress(model, epsilon=1.0)
    _, rep = tt.compress(model, max_tt_rank=6, dry_run=True)
    _, chosen = tt.compress(model, ratio=rep.ratio, dry_run=True)
    assert [r.tt_ranks for r in chosen.layers] == [r.tt_ranks for r in rep.layers]


def test_no_match_names_the_subclassed_layers_it_leaves_alone():
    """include="self_attn.out_proj" matched nothing without saying why: out_proj subclasses nn.Linear."""
    model = nn.TransformerEncoderLayer(16, 2, 32)
    with pytest.raises(
        ValueError, match=r"left alone .*'self_attn.out_proj \(NonDynamicallyQuantizableLinear\)'"
    ):
        tt.compress(model, max_tt_rank=2, include="self_attn.out_proj")


def test_a_forward_overridden_on_the_instance_keeps_its_layer_dense():
    """A forward set on the instance (accelerate's hooks, a monkey-patched adapter) was dropped: compress
    replaced the layer, reported it converted at a tiny error, and the model computed something else. It stays
    dense with the reason, as a subclass's layer does; decompress refuses such a TT layer."""
    model = nn.Sequential(
        nn.Linear(64, 64, dtype=torch.float64), nn.ReLU(), nn.Linear(64, 64, dtype=torch.float64)
    )
    plain = model[0].forward
    model[0].forward = lambda x: 2.0 * plain(x)
    small, report = tt.compress(model, max_tt_rank=4)
    rows = {row.name: row for row in report.layers}
    assert not rows["0"].replaced and "forward is overridden on the instance" in rows["0"].reason
    assert rows["2"].replaced
    x = torch.randn(3, 64, dtype=torch.float64)
    assert_close(
        small[0](x), 2.0 * nn.functional.linear(x, model[0].weight, model[0].bias), rtol=1e-12, atol=0
    )
    _, report = tt.compress(nn.Sequential(model[0]), max_tt_rank=4)
    assert [row.replaced for row in report.layers] == [False]
    tt_model, _ = tt.compress(nn.Sequential(nn.Linear(64, 64, dtype=torch.float64)), max_tt_rank=4)
    tt_plain = tt_model[0].forward
    tt_model[0].forward = lambda x: tt_plain(x) + 1.0
    with pytest.raises(ValueError, match=r"TT layer '0' cannot be converted: its forward is overridden"):
        tt.decompress(tt_model)
    # the class's own forward bound to the layer (what accelerate's remove_hook_from_module leaves) is no override
    for layer in (model[0], tt_model[0]):
        layer.forward = types.MethodType(type(layer).forward, layer)
    assert all(row.replaced for row in tt.compress(model, max_tt_rank=4)[1].layers)
    assert type(tt.decompress(tt_model)[0]) is nn.Linear
    model[0].forward = None  # (not callable at all: still an override)
    assert not tt.compress(model, max_tt_rank=4)[1].layers[0].replaced


def test_a_linear_whose_parent_reads_its_weight_stays_dense(gen):
    """nn.LinearCrossEntropyLoss reads self.linear.weight in its own forward: compress replaced that plain
    nn.Linear, reported it converted, and the model failed at its first call."""
    if not hasattr(nn, "LinearCrossEntropyLoss"):
        pytest.skip("this torch has no nn.LinearCrossEntropyLoss")
    model = nn.ModuleDict({"body": nn.Linear(64, 64), "loss": nn.LinearCrossEntropyLoss(64, 512)})
    small, report = tt.compress(model, max_tt_rank=8)
    rows = {row.name: row for row in report.layers}
    assert rows["body"].replaced and not rows["loss.linear"].replaced
    assert "parent LinearCrossEntropyLoss reads its weight" in rows["loss.linear"].reason
    x, t = torch.randn(4, 64, generator=gen), torch.randint(0, 512, (4,), generator=gen)
    want = model["loss"](small["body"](x), t)
    assert_close(small["loss"](small["body"](x), t), want)
    sub = types.new_class("MyLoss", (nn.LinearCrossEntropyLoss,))  # (inherits the forward that reads it)
    _, report = tt.compress(nn.ModuleDict({"loss": sub(64, 512)}), max_tt_rank=8)
    assert "parent MyLoss reads its weight" in report.layers[0].reason


def test_full_backward_hooks_move_with_the_layer_and_old_style_ones_keep_it_dense(gen):
    """Full backward hooks (gradients of the layer's inputs and outputs) were dropped without a word; a hook of
    the deprecated register_backward_hook (gradients of the last operation) cannot follow: that layer stays
    dense, and decompress refuses such a TT layer."""
    model = mlp()
    calls: list[object] = []
    handle = model[0].register_full_backward_hook(lambda m, gi, go: calls.append((gi[0].shape, go[0].shape)))
    model[0].register_full_backward_pre_hook(lambda m, go: calls.append(type(m).__name__))
    small, _ = tt.compress(model, max_tt_rank=2, inplace=True)
    assert isinstance(small[0], tt.nn.TTLinear)
    x = torch.randn(2, 64, generator=gen, dtype=DT, requires_grad=True)
    small(x).sum().backward()
    assert calls == ["TTLinear", (torch.Size([2, 64]), torch.Size([2, 48]))]
    handle.remove()  # the user's handle still removes it
    calls.clear()
    dense = tt.decompress(small)
    dense(x).sum().backward()
    assert calls == ["Linear"] and type(dense[0]) is nn.Linear
    old = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch warns that register_backward_hook is deprecated)
        old[0].register_backward_hook(lambda m, gi, go: None)
        small, report = tt.compress(old, max_tt_rank=2)
        assert not report.layers[0].replaced and "register_full_backward_hook" in report.layers[0].reason
        assert report.layers[1].replaced
        small = nn.Sequential(tt.nn.TTLinear(64, 48, tt_rank=2))
        small[0].register_backward_hook(lambda m, gi, go: None)
    with pytest.raises(ValueError, match=r"TT layer '0' cannot be converted: .*register_backward_hook"):
        tt.decompress(small)


def test_no_match_qualifies_layer_names_that_read_as_torch_nn_ones():
    """A dynamically quantized model was said to have no nn.Linear while listing 'Linear' among its layers."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    quantized = types.new_class("Linear", (nn.Module,))  # (another Linear: torch.ao's quantized one, say)
    model[0] = quantized()
    with pytest.raises(ValueError, match=r"its layers: ReLU, \S+\.Linear\)"):
        tt.compress(model, max_tt_rank=2)


# ------------------------------------------------------- from a mutation audit of compress (session 28)
def test_decompress_refuses_tied_embeddings_that_differ_in_padding_idx():
    """Two TTEmbeddings sharing cores, one with padding_idx: one dense weight either zeroed the other's row or
    gave the padding row its TT values, silently (row 1: 2.97 under TT, 0 after decompress)."""
    torch.manual_seed(0)
    a = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=1)
    b = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2))
    b.cores = a.cores
    for order in (("a", "b"), ("b", "a")):
        model = nn.ModuleDict({k: {"a": a, "b": b}[k] for k in order})
        with pytest.raises(ValueError, match=r"embedding 'a' has padding_idx=1.*the other layer uses it"):
            tt.decompress(model)
    c = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=1)
    c.cores = a.cores  # the same padding_idx: one weight serves both
    dense = tt.decompress(nn.ModuleDict({"a": a, "c": c}))
    assert dense["a"].weight is dense["c"].weight
    idx = torch.arange(30)
    assert_close(dense["c"](idx), c(idx))


def test_decompress_of_a_tt_layer_converts_the_tt_layers_added_to_it():
    """With the model a TT layer itself, the TT layers under its added submodules stayed TT layers."""
    root = tt.nn.TTLinear(16, 16, tt_rank=2)
    root.adapter = tt.nn.TTLinear(16, 16, tt_rank=2)
    x = torch.randn(3, 16)
    want = root.adapter(root(x))
    for inplace in (False, True):
        dense = tt.decompress(root, inplace=inplace)
        assert type(dense) is nn.Linear and type(dense.adapter) is nn.Linear
        assert_close(dense.adapter(dense(x)), want)


def test_decompress_inplace_shared_layers_and_encoder_flags():
    m = nn.Sequential(tt.nn.TTLinear(16, 16, tt_rank=2))
    assert tt.decompress(m, inplace=True) is m and type(m[0]) is nn.Linear
    t = tt.nn.TTLinear(16, 16, tt_rank=2)
    d = tt.decompress(nn.ModuleDict({"a": t, "b": t}))
    assert type(d["a"]) is nn.Linear and d["a"] is d["b"]
    for nested in (False, True):  # the user's choice comes back, and no private mark is left behind
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        small, _ = tt.compress(enc, max_tt_rank=2, include="layers.1.linear1")
        back = tt.decompress(small)
        assert back.use_nested_tensor is nested and not hasattr(back, "_tensortrain_nested_off")


def test_ratio_edges_and_kept_dense_reasons():
    with pytest.raises(ValueError, match=r"ratio \(target compression factor\) must be > 1, got 1"):
        tt.compress(nn.Linear(64, 64), ratio=1)
    torch.manual_seed(0)
    two = nn.Sequential(nn.Linear(256, 256), nn.Linear(16, 16))  # the second's TT is larger than it
    for ratio, rank in ((1.5, 25), (2.0, 22), (3.0, 17)):
        assert tt.compress(two, ratio=ratio)[1].layers[0].tt_ranks == (1, rank, rank, 1)
    one = nn.Linear(64, 64, bias=False)
    exact = tt.compress(one, max_tt_rank=1, dry_run=True)[1].ratio  # reachable exactly at rank 1
    assert tt.compress(one, ratio=exact)[1].layers[0].replaced
    # a TT exactly as large as the layer stays dense, by max_tt_rank or by epsilon
    (row,) = tt.compress(nn.Linear(2, 2), max_tt_rank=1)[1].layers
    assert not row.replaced and "TT would not save parameters (6 >= 6" in row.reason
    lin = nn.Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64))  # rank 1
    (row,) = tt.compress(lin, epsilon=1e-6)[1].layers
    assert not row.replaced and "6 >= 6 at epsilon" in row.reason
    emb = nn.Embedding(256, 64, scale_grad_by_freq=True)
    swapped = nn.Embedding(256, 64)
    swapped.weight = nn.Parameter(torch.randn(128, 64))
    a, b = nn.Linear(64, 64), nn.Linear(64, 64)
    a.forward = b.forward  # another instance's forward: an override
    parent = nn.Linear(64, 64)
    parent.adapter = nn.Linear(64, 64)
    model = nn.ModuleDict({"emb": emb, "swapped": swapped, "a": a, "parent": parent})
    rows = {r.name: r for r in tt.compress(model, max_tt_rank=2)[1].layers}
    assert "scale_grad_by_freq" in rows["emb"].reason
    assert "weight has shape (128, 64) but num_embeddings=256" in rows["swapped"].reason
    assert "forward is overridden on the instance" in rows["a"].reason
    assert "submodules the TT layer would drop (adapter)" in rows["parent"].reason
    assert rows["parent.adapter"].replaced
    removed = nn.Linear(64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        removed.register_backward_hook(lambda *a: None).remove()  # registered, then removed: nothing left
    assert tt.compress(nn.Sequential(removed), max_tt_rank=2)[1].layers[0].replaced


def test_copy_failures_meta_layers_and_hook_flags():
    import threading

    class Locked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 64)
            self.lock = threading.Lock()

    with pytest.raises(ValueError, match="the model cannot be copied"):
        tt.compress(Locked(), max_tt_rank=4)
    # epsilon reads values only of the layers it converts: a meta layer kept dense anyway is fine
    model = nn.ModuleDict(
        {"lin": nn.Linear(64, 64), "emb": nn.Embedding(100, 16, sparse=True, device="meta")}
    )
    rows = tt.compress(model, epsilon=0.5)[1].layers
    assert [r.replaced for r in rows] == [True, False]
    calls: list[str] = []
    lin = nn.Linear(64, 64)
    lin.register_forward_hook(lambda *a: calls.append("always"), always_call=True)
    lin.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(type(kwargs).__name__), with_kwargs=True
    )
    small, _ = tt.compress(nn.Sequential(lin), max_tt_rank=2)
    small(torch.randn(2, 64))
    assert calls == ["always", "dict"]
    calls.clear()
    with pytest.raises(tt.ShapeError):
        small(torch.randn(2, 7))
    assert calls == ["always"]  # (always_call: even when forward raises)


def test_report_table_notes_and_meta_rows():
    m = nn.ModuleDict(
        {"emb": nn.Embedding(64, 32), "head": nn.Linear(32, 64, bias=False), "fc": nn.Linear(64, 64)}
    )
    m["head"].weight = m["emb"].weight
    text = str(tt.compress(m, max_tt_rank=2)[1])
    assert "(tied parameters counted once)" in text
    assert all(line == line.rstrip() for line in text.splitlines())
    assert (
        str(tt.compress(nn.Sequential(nn.Linear(64, 64)), max_tt_rank=2)[1]).splitlines()[2].split()[-2]
        == "13.0x"
    )
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(64, 64))
    report = tt.compress(meta, max_tt_rank=2)[1]
    assert report.layers[0].replaced and report.layers[0].rel_error is None
    assert "replaced 1 of 1 selected layers" in str(report)


def test_decompress_refuses_a_head_tied_to_an_embedding_with_padding_idx_0():
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=0)
    head = tt.nn.TTLinear(8, 30, tt_rank=3, in_dims=(2, 2, 2), out_dims=(2, 4, 4), pad=True, bias=False)
    head.cores = emb.cores
    with pytest.raises(ValueError, match=r"embedding 'emb' has padding_idx=0"):
        tt.decompress(nn.ModuleDict({"emb": emb, "head": head}))


# ------------------------------------------------------- from a mutation audit of compress (session 35)
def test_an_out_of_reach_ratio_says_the_counts_and_the_layers_that_stay_dense():
    """The refusal of an unreachable ratio is what a user acts on: its parameter counts (before -> after at rank 1,
    in that order), how many selected layers stay dense whatever the rank, the first three of them, and "; ..."
    when there are more."""
    model = nn.ModuleDict({f"e{i}": nn.Embedding(64, 8, max_norm=1.0) for i in range(4)})
    model["fc"] = nn.Linear(256, 256)
    best = tt.compress(model, max_tt_rank=1, dry_run=True)[1]
    with pytest.raises(ValueError) as info:
        tt.compress(model, ratio=100)
    message = str(info.value)
    assert f"({best.params_before:,} -> {best.params_after:,} parameters in the selected layers)" in message
    assert re.search(
        r"; 4 of them stay dense whatever the rank: e0: [^;]*max_norm=1.0; e1: [^;]*; e2: [^;]*; \.\.\.$",
        message,
    )


def test_a_layer_nested_in_a_selected_layer_is_counted_once():
    """A layer added as a submodule of another (an adapter on an nn.Linear, which then stays dense) is a row of its
    own, held by the outer row, whose counts include it before and after: the totals count its parameters once,
    as model.parameters() does."""
    outer = nn.Linear(64, 64)
    outer.adapter = nn.Linear(64, 64)
    model = nn.ModuleDict({"outer": outer})
    small, report = tt.compress(model, max_tt_rank=2)
    row, inner = report.layers
    assert (row.name, inner.name) == ("outer", "outer.adapter") and not row.replaced and inner.replaced
    assert row.params_before == count(model) and (inner.held_by, inner.tied_params) == ("outer", 0)
    assert row.held_by == "" and row.params_after == count(small.outer)
    assert (report.params_before, report.params_after) == (count(model), count(small))
    assert report.to_dict()["layers"][1]["held_by"] == "outer"
    assert "(a layer inside another selected one counted in it)" in str(report)
    assert (report.model_params_before, report.model_params_after) == (count(model), count(small))


def test_a_dry_run_counts_a_nested_layer_saving_once_in_the_whole_model():
    """A dry run's whole-model count is what compress would return: the nested layer's saving is already in its
    holder's row, and was subtracted a second time (8,448 -> 768 for a result of 4,608 parameters)."""
    outer = nn.Linear(64, 64)
    outer.adapter = nn.Linear(64, 64)
    model = nn.ModuleDict({"outer": outer, "rest": nn.LayerNorm(64)})
    small, report = tt.compress(model, max_tt_rank=2)
    _, plan = tt.compress(model, max_tt_rank=2, dry_run=True)
    assert plan.model_params_after == report.model_params_after == count(small)
    assert plan.model_ratio == report.model_ratio


def test_the_ratio_search_counts_a_nested_layer_once():
    """compress(ratio=) plans on the same counts as the report: with an adapter nested in a layer that stays dense,
    a ratio that max_tt_rank=1 reaches (1.91x) was refused as out of reach ("1.46x (12,480 -> 8,512 parameters)"
    for a model of 8,320), and a reachable one got a smaller rank than the largest meeting it."""
    outer = nn.Linear(64, 64)
    outer.adapter = nn.Linear(64, 64)
    model = nn.ModuleDict({"outer": outer})
    best = tt.compress(model, max_tt_rank=1, dry_run=True)[1].ratio
    assert tt.compress(model, ratio=best, dry_run=True)[1].ratio >= best
    _, report = tt.compress(model, ratio=1.3, dry_run=True)
    rank = max(report.layers[1].tt_ranks)
    assert tt.compress(model, max_tt_rank=rank + 1, dry_run=True)[1].ratio < 1.3


def test_the_row_of_a_layer_holding_a_replaced_one_counts_what_it_holds():
    """LayerReport.params_after is the parameters of the layer in the returned model: the outer layer, kept dense,
    holds its replaced adapter's TT cores, not the dense adapter (it said 8,320 for a module of 4,480)."""
    outer = nn.Linear(64, 64)
    outer.adapter = nn.Linear(64, 64)
    model = nn.ModuleDict({"outer": outer})
    small, report = tt.compress(model, max_tt_rank=2)
    for row in report.layers:
        assert row.params_before == count(model.get_submodule(row.name))
        assert row.params_after == count(small.get_submodule(row.name))


def test_a_layer_that_would_not_shrink_at_the_rank_cap_names_the_planned_ranks():
    """With a rank cap the layer is judged from its planned TT (cores plus bias) before any TT-SVD, and the reason
    says at which ranks: 4 core parameters and a bias of 2 are no fewer than the layer's 6."""
    (row,) = tt.compress(nn.Linear(2, 2), max_tt_rank=1)[1].layers
    assert row.reason == "TT would not save parameters (6 >= 6 at tt_ranks (1, 1, 1))"
    (row,) = tt.compress(nn.Linear(6, 6), max_tt_rank=3)[1].layers
    assert row.reason == "TT would not save parameters (42 >= 42 at tt_ranks (1, 3, 1))"


def test_a_copy_failure_quotes_what_deepcopy_said():
    """The message names what deepcopy refused (its own first line), not just its exception type."""
    import threading

    model = nn.Sequential(nn.Linear(8, 8))
    model.lock = threading.Lock()
    with pytest.raises(ValueError, match=r"copy\.deepcopy failed: cannot pickle '_thread\.lock' object\)"):
        tt.compress(model, max_tt_rank=2)


def test_shared_layers_kept_dense_or_on_meta_are_named_by_their_first_name():
    """A module shared under several names is one row under its first name, its other names as aliases, also when
    it stays dense; epsilon's refusal of meta layers names it by that first name too."""
    shared = nn.Embedding(100, 16, max_norm=1.0)
    model = nn.ModuleDict({"a": shared, "b": shared, "fc": nn.Linear(64, 64)})
    _, report = tt.compress(model, max_tt_rank=2)
    assert [(row.name, row.aliases, row.replaced) for row in report.layers] == [
        ("a", ("b",), False),
        ("fc", (), True),
    ]
    meta = nn.Linear(64, 64, device="meta")
    with pytest.raises(ValueError, match=r"layers on the meta device \(a\) have no values"):
        tt.compress(nn.ModuleDict({"a": meta, "b": meta}), epsilon=0.5)


def test_frozen_parameters_are_counted_in_the_report():
    """A frozen backbone's parameters are parameters: the whole-model counts are sum(p.numel()) over all of them,
    not only those that require gradients."""
    model = mlp()
    model[0].requires_grad_(False)
    small, report = tt.compress(model, max_tt_rank=2, include="2")
    assert (report.model_params_before, report.model_params_after) == (count(model), count(small))
    assert report.model_ratio == count(model) / count(small)


def test_a_ratio_plans_a_meta_model_by_shapes_alone():
    """ratio, like max_tt_rank, needs shapes only (the meta-device error for epsilon says so): a meta skeleton is
    compressed to the target, with no error values."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    small, report = tt.compress(model, ratio=4)
    assert report.ratio >= 4 and all(row.replaced and row.rel_error is None for row in report.layers)
    assert isinstance(small[0], tt.nn.TTLinear) and report.model_params_after == count(small)


def test_a_layer_shared_into_an_encoder_under_a_later_name_turns_its_fast_path_off(gen):
    """An encoder holding a replaced layer under any of its names loses the nested-tensor fast path: here the
    layer's first name is outside the encoder, and eval with a padding mask must still run."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch warns about the nested-tensor path of its own accord)
        enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    model = nn.ModuleDict({"a": enc.layers[1].linear1, "enc": enc})
    small, report = tt.compress(model, max_tt_rank=4, include="a")
    assert [(row.name, row.aliases, row.replaced) for row in report.layers] == [
        ("a", ("enc.layers.1.linear1",), True)
    ]
    assert not small["enc"].use_nested_tensor and enc.use_nested_tensor
    x = torch.randn(2, 6, 64, generator=gen)
    mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    with torch.no_grad():
        assert small["enc"](x, src_key_padding_mask=mask).shape == x.shape


def test_a_pattern_warning_points_at_the_callers_line():
    """The warning for a pattern that matches no layer is attributed to the line that called compress (where the
    mistyped pattern is), not to a line inside tensortrain."""
    with pytest.warns(UserWarning, match="match no") as record:
        tt.compress(mlp(), max_tt_rank=2, exclude="lm_haed")
    assert record[0].filename == __file__


def test_selection_errors_say_what_was_given_and_found():
    """An empty include list selects nothing (not everything); exclude's type error names exclude; an Embedding
    subclass is listed as left alone; a model's own class is not one of "its layers"."""
    with pytest.raises(ValueError, match=r"no nn.Linear or nn.Embedding layer matched include=\[\]"):
        tt.compress(mlp(), max_tt_rank=2, include=[])
    with pytest.raises(TypeError, match="exclude must be a glob string or a sequence of them, got 3"):
        tt.compress(mlp(), max_tt_rank=2, exclude=3)  # type: ignore[arg-type]
    sub = types.new_class("MyEmbedding", (nn.Embedding,))
    with pytest.raises(ValueError, match=r"left alone .*\['0 \(MyEmbedding\)'\]"):
        tt.compress(nn.Sequential(sub(10, 4), nn.ReLU()), max_tt_rank=2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 1, 3), nn.ReLU()

    with pytest.raises(ValueError, match=r"\(its layers: Conv2d, ReLU\); only those"):
        tt.compress(Net(), max_tt_rank=2)


def test_a_tied_layers_reason_names_every_other_owner():
    """A weight tied to two heads keeps all three layers dense, each reason naming the other owners."""
    model = nn.ModuleDict(
        {
            "emb": nn.Embedding(64, 32),
            "h1": nn.Linear(32, 64, bias=False),
            "h2": nn.Linear(32, 64, bias=False),
        }
    )
    model["h1"].weight = model["h2"].weight = model["emb"].weight
    rows = {row.name: row for row in tt.compress(model, max_tt_rank=2)[1].layers}
    assert "tied to h1.weight, h2.weight: converting" in rows["emb"].reason
    assert "tied to emb.weight, h2.weight: converting" in rows["h1"].reason


def test_padding_rows_one_entry_off_zero_and_on_meta():
    """A padding row with a single non-zero entry is not zero (TTEmbedding would return zeros there): the layer
    stays dense. A meta skeleton has no values to check and converts by rank, as without padding_idx."""
    emb = nn.Embedding(100, 16, padding_idx=3, dtype=DT)
    with torch.no_grad():
        emb.weight[3] = 0.0
        emb.weight[3, 5] = 1.0
    small, report = tt.compress(nn.Sequential(emb), max_tt_rank=64)
    assert (
        not report.layers[0].replaced and "padding row (padding_idx=3) is not zero" in report.layers[0].reason
    )
    assert_close(small(torch.tensor([3])), emb(torch.tensor([3])))
    meta = nn.Sequential(nn.Embedding(100, 16, padding_idx=0, device="meta"))
    small, report = tt.compress(meta, max_tt_rank=2)
    assert report.layers[0].replaced and isinstance(small[0], tt.nn.TTEmbedding) and small[0].padding_idx == 0


def test_kept_dense_reasons_name_the_option_and_the_tensor():
    """The SparseAdam hint is for sparse=True only; a pruned bias is named as the bias, with the remedy for it."""
    rows = tt.compress(
        nn.ModuleDict(
            {"norm": nn.Embedding(64, 8, max_norm=1.0), "sparse": nn.Embedding(64, 8, sparse=True)}
        ),
        max_tt_rank=2,
    )[1].layers
    assert rows[0].reason == "TTEmbedding.from_embedding does not support max_norm=1.0"
    assert "max_norm" not in rows[1].reason and "SparseAdam" in rows[1].reason
    pruned = nn.Linear(64, 64)
    torch.nn.utils.prune.l1_unstructured(pruned, "bias", amount=0.5)
    (row,) = tt.compress(nn.Sequential(pruned), max_tt_rank=2, inplace=True)[1].layers
    assert not row.replaced and "its 'bias' is recomputed" in row.reason
    assert "torch.nn.utils.prune.remove(module, 'bias')" in row.reason


def test_complex_layers_are_compressed_and_back(gen):
    """Complex weights (complex64 and up) are TT cores like real ones: converted, not refused as a dtype."""
    CT = torch.complex128
    real = make_low_tt_rank(nn.Sequential(nn.Linear(64, 48, dtype=DT)), rank=2)[0]
    model = nn.Sequential(nn.Linear(64, 48, dtype=CT))
    with torch.no_grad():
        model[0].weight.copy_(real.weight * (1 + 2j))  # (TT-rank 2 still)
    small, report = tt.compress(model, max_tt_rank=2)
    assert report.layers[0].replaced and report.layers[0].rel_error < 1e-10
    x = torch.randn(3, 64, generator=gen, dtype=CT)
    assert_close(small(x), model(x), rtol=1e-8, atol=1e-8)
    back = tt.decompress(small)
    assert back[0].weight.dtype == CT
    assert_close(back(x), model(x), rtol=1e-8, atol=1e-8)


def test_a_buffer_named_like_any_tt_layer_attribute_keeps_the_layer_dense():
    """A buffer whose name the TT layer already uses (here "padded") cannot be carried over: the layer stays dense
    with the reason, rather than compress failing while registering it."""
    model = mlp()
    model[0].register_buffer("padded", torch.zeros(48, dtype=torch.bool))
    small, report = tt.compress(model, max_tt_rank=2)
    assert "its buffer 'padded' cannot be carried over" in report.layers[0].reason
    assert type(small[0]) is nn.Linear and report.layers[1].replaced


def test_report_cells_and_dict_of_replaced_and_kept_layers():
    """The table shows "dense" for a kept layer's ranks and 0.00e+00 for an exact zero error (not "-", which means
    no error), counts the layers actually replaced; to_dict's totals and "replaced" flags agree with the report."""
    zero = nn.Linear(64, 64)
    nn.init.zeros_(zero.weight)
    model = nn.ModuleDict({"zero": zero, "tiny": nn.Linear(4, 3)})
    _, report = tt.compress(model, max_tt_rank=4)
    lines = str(report).splitlines()
    assert lines[2].split()[-1] == "0.00e+00" and lines[3].split()[4] == "dense"
    assert "replaced 1 of 2 selected layers" in str(report)
    data = report.to_dict()
    assert [row["replaced"] for row in data["layers"]] == [True, False]
    assert (data["totals"]["params_before"], data["totals"]["params_after"]) == (
        report.params_before,
        report.params_after,
    )
    from tensortrain.compression_report import CompressionReport, LayerReport

    cols = LayerReport("fc", "Linear", (30, 20), ((5, 6), (4, 6)), (1, 3, 1), 630, 150, 0.5, "")
    assert "padded fc: its dims multiply to 30x24" in str(CompressionReport((cols,), 630, 150))


def test_decompress_keeps_frozen_shared_biases_and_refuses_reordered_cores():
    """A frozen shared bias stays one frozen Parameter; layers sharing the same cores in another order have other
    dense weights, which one Parameter cannot hold."""
    a = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=DT)
    b = tt.nn.TTLinear(16, 16, tt_rank=2, dtype=DT)
    b.bias = a.bias
    a.bias.requires_grad_(False)
    dense = tt.decompress(nn.Sequential(a, nn.Tanh(), b))
    assert dense[0].bias is dense[2].bias and not dense[0].bias.requires_grad
    c = tt.nn.TTLinear(16, 16, tt_rank=1, in_dims=(4, 4), out_dims=(4, 4), dtype=DT)
    d = tt.nn.TTLinear(16, 16, tt_rank=1, in_dims=(4, 4), out_dims=(4, 4), dtype=DT)
    d.cores = nn.ParameterList([c.cores[1], c.cores[0]])
    with pytest.raises(ValueError, match="share cores, but not the same cores in the same order"):
        tt.decompress(nn.ModuleDict({"c": c, "d": d}))


def test_decompress_refuses_a_tie_whose_padding_row_is_only_partly_zero():
    """One dense weight cannot serve a head and an embedding whose padding row holds any non-zero entry."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(30, 8, tt_rank=3, voc_dims=(2, 4, 4), emb_dims=(2, 2, 2), padding_idx=1)
    head = tt.nn.TTLinear(8, 30, tt_rank=3, in_dims=(2, 2, 2), out_dims=(2, 4, 4), pad=True, bias=False)
    head.cores = emb.cores
    with torch.no_grad():
        emb.cores[0][:, 0, 0] = 0.0  # rows 0-15 (the padding row 1 among them): half their entries zero
    row = head.dense_weight().T[1]
    assert bool((row == 0).any()) and bool((row != 0).any())
    with pytest.raises(ValueError, match="has padding_idx=1, whose row of the shared TT is not zero"):
        tt.decompress(nn.ModuleDict({"emb": emb, "head": head}))


def test_report_errors_are_the_relative_errors_of_the_returned_layers():
    """rel_error is ||W - W_tt||_F / ||W||_F of the layer returned, for an embedding (its table) as for a linear
    layer (its weight), checked against the dense weights at a rank that truncates."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(200, 32, dtype=DT), "fc": nn.Linear(64, 48, dtype=DT)})
    small, report = tt.compress(model, max_tt_rank=3)
    with torch.no_grad():  # (to_embedding's table is a new Parameter: detached)
        approx = {"emb": small["emb"].to_embedding().weight.detach(), "fc": small["fc"].dense_weight()}
    for row in report.layers:
        w = model[row.name].weight.detach()
        want = float(torch.linalg.norm(approx[row.name] - w) / torch.linalg.norm(w))
        assert row.replaced and 0.1 < want < 1 and row.rel_error == pytest.approx(want, rel=1e-10)


def test_a_lazy_linear_with_non_finite_weights_stays_dense():
    """A LazyLinear given its shape by load_state_dict is checked as an nn.Linear is: an inf weight keeps it dense
    with the reason, rather than failing in the TT-SVD."""
    dense = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        dense[0].weight[0, 0] = float("inf")
    lazy = nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.Linear(256, 10))
    lazy.load_state_dict(dense.state_dict())
    small, report = tt.compress(lazy, max_tt_rank=4)
    assert not report.layers[0].replaced and "NaN or inf" in report.layers[0].reason
    assert type(small[0]) is nn.LazyLinear and report.layers[1].replaced


# ------------------------------------------------------------------------ the rest of the model
def _nested() -> nn.Module:
    outer = nn.Linear(64, 64, dtype=DT)
    outer.adapter = nn.Linear(64, 64, dtype=DT)
    return nn.ModuleDict({"outer": outer, "norm": nn.LayerNorm(64, dtype=DT)})


def _tied_head() -> nn.Module:
    model = TinyTransformer(vocab=100, dim=32, hidden=64)
    model.head.weight = model.embed.weight  # the output head shares the embedding's table
    return model


@pytest.mark.parametrize(
    ("build", "include", "exclude"),
    [
        (mlp, None, None),
        (mlp, None, "2"),
        (TinyTransformer, None, None),
        (TinyTransformer, "mlp.*", None),
        (_tied_head, None, "head"),
        (_tied_head, "head", None),
        (_tied_head, "mlp.*", None),  # the tied table outside, under two modules: counted once
        (_nested, None, None),
    ],
)
def test_outside_and_the_selected_layers_add_up_to_the_model(build, include, exclude):
    """The report's groups of parameters outside the selected layers count each parameter once, a tied one in
    a selected layer there only: with the selected layers' count they make the whole model's."""
    torch.manual_seed(0)
    model = build()
    small, report = tt.compress(model, max_tt_rank=3, include=include, exclude=exclude)
    assert sum(params for _, _, params, _ in report.outside) + report.params_before == count(model)
    selected = {id(p) for lay in report.layers for p in model.get_submodule(lay.name).parameters()}
    rest = [p for p in model.parameters() if id(p) not in selected]
    assert sum(n for _, n, _, _ in report.outside) == len(
        {id(m) for m in model.modules() if any(id(p) in map(id, rest) for p in m.parameters(recurse=False))}
    )
    counts = [params for _, _, params, _ in report.outside]
    assert counts == sorted(counts, reverse=True) and all(c > 0 for c in counts)


def test_outside_names_an_encoders_attention_and_why_its_out_proj_stays():
    """An nn.TransformerEncoder's attention (in_proj_weight on the MultiheadAttention, its out_proj an nn.Linear
    subclass its parent reads through .weight) is never a candidate: the report says where those parameters are,
    or its 4x on the selected layers and 2x on the model do not add up."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dtype=DT)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    _, report = tt.compress(enc, max_tt_rank=4)
    assert [lay.name for lay in report.layers] == [f"layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)]
    mha = 3 * 32 * 32 + 3 * 32  # in_proj_weight, in_proj_bias
    out = 32 * 32 + 32
    assert report.outside == (
        ("MultiheadAttention", 2, 2 * mha, ""),
        ("NonDynamicallyQuantizableLinear", 2, 2 * out, "an nn.Linear subclass: left alone"),
        ("LayerNorm", 4, 4 * 64, ""),
    )
    assert (
        f"outside the selected layers, unchanged: {2 * mha + 2 * out + 256:,} parameters (MultiheadAttention x2: "
        f"{2 * mha:,}; NonDynamicallyQuantizableLinear x2: {2 * out:,}, an nn.Linear subclass: left alone; "
        "LayerNorm x4: 256)"
    ) in str(report).splitlines()
    assert report.to_dict()["outside"][2] == {"type": "LayerNorm", "modules": 4, "params": 256, "note": ""}


def test_outside_says_a_layer_was_not_selected_and_lists_at_most_five_types():
    torch.manual_seed(0)
    _, report = tt.compress(mlp(), max_tt_rank=3, exclude="4")
    assert report.outside == (("Linear", 1, 36 * 10 + 10, "not selected by include/exclude"),)
    assert "(Linear x1: 370, not selected by include/exclude)" in str(report)
    model = nn.Sequential(
        nn.Linear(64, 64, dtype=DT),
        nn.LayerNorm(4, dtype=DT),
        nn.BatchNorm1d(4, dtype=DT),
        nn.GroupNorm(2, 4, dtype=DT),
        nn.RMSNorm(4, dtype=DT),
        nn.InstanceNorm1d(4, affine=True, dtype=DT),
        nn.PReLU(num_parameters=3, dtype=DT),
    )
    _, report = tt.compress(model, max_tt_rank=3)
    assert len(report.outside) == 6 and str(report).count(" x1: ") == 5
    assert "; ...)" in str(report)
    _, whole = tt.compress(nn.Linear(64, 64, dtype=DT), max_tt_rank=3)  # the model is the selected layer
    assert whole.outside == () and "outside" not in str(whole)
