"""``tensortrain inspect`` and ``tensortrain compress``: what they print and write, the reload recipe, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import tensortrain as tt
from conftest import run_closing_stdout
from tensortrain import cli_compress, cli_inspect
from tensortrain.cli import main
from tensortrain.cli_inspect import inspect_path

MODELS = '''
import torch
from torch import nn

import tensortrain as tt


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


class Tiny(nn.Module):
    """An embedding, a hidden layer and a vocabulary head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(120, 32, padding_idx=0)
        self.fc = nn.Linear(32, 64)
        self.head = nn.Linear(64, 120)

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.embed(x))))


class Tied(nn.Module):
    """An output head sharing the embedding's weight (compress keeps both dense)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Embedding(64, 32)
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.embed(x))))


instance = mlp()
number = 3


def returns_dict():
    return {"not": "a module"}


def needs_an_argument(n):
    return nn.Linear(n, n)


def meta_mlp():
    """mlp()'s architecture on the meta device: the weights come from a checkpoint."""
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


class Scaler(nn.Module):
    """A module with extra state: its state_dict holds a non-tensor value."""

    def __init__(self):
        super().__init__()
        self.scale = 2.0

    def get_extra_state(self):
        return {"scale": self.scale}

    def set_extra_state(self, state):
        self.scale = state["scale"]

    def forward(self, x):
        return x * self.scale


def with_extra_state():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(256, 128), Scaler(), nn.Linear(128, 10))


def meta_tied():
    """Tied's architecture on the meta device (a large language model's usual pattern)."""
    with torch.device("meta"):
        return Tied()


def shared():
    """One Linear under two names."""
    torch.manual_seed(4)
    layer = nn.Linear(256, 256)
    return nn.Sequential(layer, nn.ReLU(), layer)


class SharedBuffer(nn.Module):
    """Two layers registering one buffer, each under its own name."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)
        scale = torch.ones(64)
        self.a.register_buffer("scale", scale)
        self.b.register_buffer("scale", scale)

    def forward(self, x):
        return self.b(self.a(x) * self.a.scale)


def meta_shared_buffer():
    with torch.device("meta"):
        return SharedBuffer()


def bracketed():
    """A layer whose name holds glob characters."""
    torch.manual_seed(6)
    return nn.Sequential(nn.ModuleDict({"a[0]": nn.Linear(64, 64)}))


def lazy_norm():
    """A normalization whose buffers get their shapes at the first forward (it has no parameters)."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(256, 64), nn.LazyBatchNorm1d(affine=False))
'''


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A model module ``clitoolmodels`` in tmp_path, the current folder (as a user's project would be)."""
    (tmp_path / "clitoolmodels.py").write_text(MODELS)
    (tmp_path / "clitoolbroken.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.chdir(tmp_path)
    for name in ("clitoolmodels", "clitoolbroken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    import clitoolmodels  # type: ignore[import-not-found]

    return clitoolmodels


def _inputs(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if isinstance(model, nn.Sequential):
        return torch.randn(5, 256, generator=gen)
    return torch.randint(0, 120, (4, 6), generator=gen)


# ------------------------------------------------------------------------------------------------ inspect
def test_inspect_tt_file_text_and_json(tmp_path, capsys):
    w = tt.random_matrix(((4, 7, 4, 7), (5, 5, 5, 5)), tt_rank=3, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "w.safetensors"
    tt.save(w, path, metadata={"note": "fc1"})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{path}: a tt.save file",
        f"  {w}",
        "  dtype: float32",
        f"  parameters (cores): {w.num_parameters():,}",
        "  dense entries: 490,000",
        f"  compression: {490_000 / w.num_parameters():,.1f}x",
        "  metadata: {'note': 'fc1'}",
    ]
    assert main(["inspect", "--json", str(path)]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["description"] == str(w)
    assert info["description"].startswith("A TT-Matrix of size 784 x 625")
    assert info["tt_ranks"] == [1, 3, 3, 3, 1] and info["raw_shape"] == [[4, 7, 4, 7], [5, 5, 5, 5]]
    assert info["parameters"] == w.num_parameters() == 3 * (20 + 3 * 20 + 3 * 35 + 35)
    assert info["dense_entries"] == 490_000 and info["compression"] == 490_000 / w.num_parameters()
    assert info["metadata"] == {"note": "fc1"} and info["dtype"] == "float32" and info["batch_size"] is None


def test_inspect_tt_batch_file_counts_every_element(tmp_path, capsys):
    b = tt.random_tensor_batch((3, 4, 5), tt_rank=2, batch_size=6, dtype=torch.float64)
    tt.save(b, tmp_path / "b.safetensors")
    assert main(["inspect", "--json", str(tmp_path / "b.safetensors")]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["batch_size"] == 6 and info["dense_entries"] == 6 * 60 and info["dtype"] == "float64"
    assert info["parameters"] == b.num_parameters() and info["metadata"] == {}


def _tt_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "emb": tt.nn.TTEmbedding(100, 16, tt_rank=2),
            "fc": tt.nn.TTLinear(16, 48, tt_rank=3),
            "norm": nn.LayerNorm(48),
        }
    )


@pytest.mark.parametrize("fmt", ["pt", "wrapped.pt", "safetensors"])
def test_inspect_state_dict_with_tt_layers(tmp_path, capsys, fmt):
    model = _tt_model()
    state = model.state_dict()
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save({"state_dict": state, "epoch": 3} if fmt.startswith("wrapped") else state, path)
    assert main(["inspect", "--json", str(path)]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["format"] == ("safetensors" if fmt == "safetensors" else "torch")
    layers = {layer["name"]: layer for layer in info["tt_layers"]}
    emb, fc = model["emb"], model["fc"]
    assert set(layers) == {"emb", "fc"}
    assert layers["fc"]["rows"] == 48 and layers["fc"]["cols"] == 16
    assert layers["fc"]["row_dims"] == list(fc.out_dims) and layers["fc"]["col_dims"] == list(fc.in_dims)
    assert layers["fc"]["tt_ranks"] == list(fc.tt_ranks) and layers["fc"]["bias"] is True
    assert layers["fc"]["parameters"] == fc.num_tt_parameters()
    assert layers["fc"]["compression"] == pytest.approx(fc.compression_factor())
    assert layers["emb"]["row_dims"] == list(emb.voc_dims) and layers["emb"]["cols"] == 16
    assert layers["emb"]["tt_ranks"] == list(emb.tt_ranks) and layers["emb"]["bias"] is False
    assert layers["emb"]["dense_entries"] == layers["emb"]["rows"] * 16
    tt_params = emb.num_tt_parameters() + fc.num_tt_parameters()
    total = sum(t.numel() for t in state.values())
    assert info["tt_parameters"] == tt_params and info["total_parameters"] == total
    assert info["other_parameters"] == total - tt_params == 48 + 2 * 48  # bias, LayerNorm weight and bias

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: a state dict" in out and "2 TT layers" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("fc "))
    assert "48 x 16" in row and str(fc.tt_ranks).replace(" ", "") in row and row.rstrip().endswith("yes")
    assert (
        f"parameters: {tt_params:,} in TT cores, {total - tt_params:,} in other tensors (buffers included), "
        f"{total:,} in total" in out
    )


def test_inspect_reports_cores_that_do_not_form_a_tt_layer(tmp_path, capsys):
    state = {
        "a.cores.0": torch.zeros(1, 2, 3, 4),
        "a.cores.1": torch.zeros(5, 2, 3, 1),  # rank 4 then 5
        "b.cores.0": torch.zeros(1, 2, 3),  # 3-D
        "c.cores.1": torch.zeros(1, 2, 2, 1),  # cores.0 missing
        "d.weight": torch.zeros(3, 3),
    }
    torch.save(state, tmp_path / "odd.pt")
    assert main(["inspect", str(tmp_path / "odd.pt")]) == 0
    out = capsys.readouterr().out
    assert "a: not a valid TT layer: a.cores.0 ends with rank 4 but a.cores.1 starts with rank 5" in out
    assert "b: not a valid TT layer: b.cores.0 has shape (1, 2, 3), expected 4-D" in out
    assert "c: not a valid TT layer: c.cores.0 is missing (found cores [1])" in out
    assert "parameters: 64 in TT cores, 9 in other tensors (buffers included), 73 in total" in out


def test_inspect_counts_shared_tensors_once_and_reads_the_tutorial_checkpoint_layout(tmp_path, capsys):
    """A tied weight and a layer used under two names were counted once per key (the totals disagreed with
    compress's report); PyTorch's checkpoint recipe ({"model_state_dict": ..., "epoch": ...}) was refused."""
    layer = tt.nn.TTLinear(64, 64, tt_rank=4)
    model = nn.Sequential(nn.Embedding(100, 16), layer, nn.ReLU(), layer, nn.Linear(16, 100, bias=False))
    model[4].weight = model[0].weight  # tied
    small_params = sum(p.numel() for p in model.parameters())  # each shared tensor once
    path = tmp_path / "tied.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3, "optimizer_state_dict": {}}, path)
    info = inspect_path(path)
    assert info["total_parameters"] == small_params and info["shared_tensors"] == 1 + len(layer.cores) + 1
    assert info["tt_parameters"] == sum(c.numel() for c in layer.cores)
    assert [(x["name"], x["shared_with"]) for x in info["tt_layers"]] == [("1", None), ("3", "1")]
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  3: the same tensors as 1 (one layer under two names, counted once)" in out
    assert f"{small_params:,} in total ({1 + len(layer.cores) + 1} tensors stored under a second name" in out
    rows = [line for line in out.splitlines() if line.startswith("  1 ") or line.startswith("  3 ")]
    assert len(rows) == 1  # the shared layer is listed once in the table
    # safetensors' save_model stores each shared tensor once, the other names as metadata: the same report
    saved = tmp_path / "tied.safetensors"
    safetensors.torch.save_model(model, str(saved))
    again = inspect_path(saved)
    for key in ("total_parameters", "tt_parameters", "shared_tensors", "tt_layers"):
        assert again[key] == info[key], key
    assert not again["metadata"]  # the alias entries are read as aliases, not shown as metadata


def test_inspect_errors_name_the_file_and_the_rest_is_still_done(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save(_tt_model().state_dict(), good)
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)
    listed = tmp_path / "list.pt"
    torch.save([torch.ones(2)], listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2), "step": 3}, mixed)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    missing = tmp_path / "missing.pt"
    paths = [missing, pickled, good, listed, mixed, junk]
    assert main(["inspect", *map(str, paths)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors == [
        f"tensortrain: error: {missing}: no such file",
        errors[1],
        f"tensortrain: error: {listed}: not a state dict: the file holds a list, expected a mapping of names "
        "to tensors (or one under 'state_dict' / 'model' / 'model_state_dict')",
        f"tensortrain: error: {mixed}: not a state dict: entry 'step' is a int, expected a tensor (a mapping of "
        "names to tensors, or one under 'state_dict' / 'model' / 'model_state_dict')",
        errors[-1],
    ]
    assert errors[1].startswith(f"tensortrain: error: {pickled}: torch.load(weights_only=True) refuses it (")
    assert "torch.nn.modules.linear.Linear" in errors[1]  # the global it refused, as torch names it
    assert errors[1].endswith("): a pickled object, not a state dict; save model.state_dict() instead")
    assert errors[-1].startswith(f"tensortrain: error: {junk}: unreadable safetensors file (SafetensorError")
    assert f"{good}: a state dict (torch)" in captured.out

    assert main(["inspect", "--json", str(missing), str(good)]) == 1
    infos = json.loads(capsys.readouterr().out)
    assert infos[0] == {"path": str(missing), "error": f"{missing}: no such file"}
    assert infos[1]["path"] == str(good) and len(infos[1]["tt_layers"]) == 2


def test_inspect_through_the_console_module(tmp_path):
    path = tmp_path / "w.safetensors"
    tt.save(tt.TensorTrain([torch.ones(1, 2, 3, 2), torch.ones(2, 4, 5, 1)]), path)
    proc = subprocess.run(
        [sys.executable, "-m", "tensortrain.cli", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (info,) = json.loads(proc.stdout)
    assert info["tt_ranks"] == [1, 2, 1] and info["dense_entries"] == 120 and info["parameters"] == 52


# ----------------------------------------------------------------------------------------------- compress
BUDGETS = {
    "max_tt_rank": (["--max-tt-rank", "4"], {"max_tt_rank": 4}),
    "epsilon": (["--epsilon", "0.6"], {"epsilon": 0.6}),
    "ratio": (["--ratio", "8"], {"ratio": 8.0}),
}


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_compress_prints_the_report_of_each_budget(models, capsys, budget):
    argv, kwargs = BUDGETS[budget]
    assert main(["compress", "--model", "clitoolmodels:mlp", *argv]) == 0
    out = capsys.readouterr().out
    _, report = tt.compress(models.mlp(), **kwargs)
    assert out == f"{report}\n"
    assert all(layer.replaced for layer in report.layers)


def test_include_exclude_and_dry_run_write_no_model(models, tmp_path, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["compress", "--model", "clitoolmodels:Tiny", "--max-tt-rank", "3", "--include", "fc"]
    argv += ["--include", "he*", "--exclude", "head", "--dry-run", "--report-json", "r.json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    _, report = tt.compress(
        models.Tiny(), max_tt_rank=3, include=["fc", "he*"], exclude=["head"], dry_run=True
    )
    assert out == f"{report}\nwrote r.json\n" and "dry run, nothing replaced" in out
    assert [layer.name for layer in report.layers] == ["fc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "r.json"])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report.to_dict()))


def test_report_json_holds_the_reports_numbers(models, tmp_path, capsys):
    argv = ["compress", "--model", "clitoolmodels:mlp", "--epsilon", "0.5", "--report-json", "rep.json"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "rep.json").read_text())
    _, report = tt.compress(models.mlp(), epsilon=0.5)
    assert data["totals"]["params_after"] == report.params_after
    assert data["totals"]["ratio"] == report.ratio and data["totals"]["model_ratio"] == report.model_ratio
    for row, layer in zip(data["layers"], report.layers, strict=True):
        assert row["tt_ranks"] == list(layer.tt_ranks) and row["rel_error"] == layer.rel_error
        assert row["params_before"] == layer.params_before and row["replaced"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tt-")]  # no temporary file left


def _recipe(out: str) -> str:
    """The indented lines after 'to load it back:'."""
    block = out.split("to load it back:\n", 1)[1]
    lines = [line for line in block.splitlines() if line.startswith("    ")]
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
@pytest.mark.parametrize("budget", ["max_tt_rank", "epsilon"])
@pytest.mark.parametrize("attr", ["mlp", "Tiny"])
def test_out_and_the_printed_reload_recipe(models, tmp_path, capsys, suffix, budget, attr):
    argv, kwargs = BUDGETS[budget]
    out_file = f"small.{suffix}"
    assert main(["compress", "--model", f"clitoolmodels:{attr}", *argv, "--out", out_file]) == 0
    out = capsys.readouterr().out
    compressed, report = tt.compress(getattr(models, attr)(), **kwargs)  # the same, in this process
    replaced = [layer.name for layer in report.layers if layer.replaced]
    assert len(replaced) == (2 if attr == "mlp" else 3)
    saved = (
        safetensors.torch.load_file(out_file)
        if suffix == "safetensors"
        else torch.load(out_file, weights_only=True)
    )
    expected = compressed.state_dict()
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key
    recipe = _recipe(out)
    assert f"model, _ = tensortrain.compress(model, max_tt_rank=1, include={replaced!r})" in recipe
    scope: dict = {}
    exec(compile(recipe, "recipe", "exec"), scope)
    reloaded = scope["model"]
    for name in replaced:
        assert reloaded.get_submodule(name).tt_ranks == compressed.get_submodule(name).tt_ranks
    x = _inputs(compressed)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), compressed(x))
    if suffix == "safetensors":
        with safetensors.safe_open(out_file, "pt") as f:
            header = json.loads(f.metadata()["tensortrain_compress"])
        assert header == {
            "model": f"clitoolmodels:{attr}",
            "budget": kwargs,
            "include": None,
            "exclude": None,
            "replaced": replaced,
            "tensortrain_version": tt.__version__,
        }


def test_tied_weights_save_to_safetensors(models, tmp_path, capsys):
    argv = ["compress", "--model", "clitoolmodels:Tied", "--max-tt-rank", "2", "--out", "tied.safetensors"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "kept dense embed: its parameters are tied to head.weight" in out
    exec(compile(_recipe(out), "recipe", "exec"), scope := {})
    reloaded, (compressed, _) = scope["model"], tt.compress(models.Tied(), max_tt_rank=2)
    assert reloaded.head.weight is reloaded.embed.weight  # still tied after the load
    x = torch.randint(0, 64, (3, 4))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), compressed(x))


def test_weights_saved_by_safetensors_save_model_keep_their_ties(models, tmp_path, capsys):
    """safetensors' save_model stores a tied tensor under one name: --weights refused the file as missing the
    other key; a partial file is still refused."""
    trained = models.Tied()
    with torch.no_grad():
        trained.embed.weight.mul_(3.0)
    safetensors.torch.save_model(trained, str(tmp_path / "tied_dense.safetensors"))
    assert len(safetensors.torch.load_file(tmp_path / "tied_dense.safetensors")) < len(trained.state_dict())
    argv = ["compress", "--model", "clitoolmodels:Tied", "--weights", "tied_dense.safetensors"]
    assert main([*argv, "--max-tt-rank", "2"]) == 0
    _, report = tt.compress(trained, max_tt_rank=2)
    assert capsys.readouterr().out == f"{report}\n"  # the weights given, tie kept


def test_recipe_when_no_layer_was_replaced(models, tmp_path, capsys):
    argv = ["compress", "--model", "clitoolmodels:mlp", "--max-tt-rank", "500", "--include", "2"]
    assert main([*argv, "--out", "same.pt"]) == 0
    out = capsys.readouterr().out
    assert "replaced 0 of 1 selected layers" in out and "kept dense 2: TT would not save parameters" in out
    recipe = _recipe(out)
    assert "compress" not in recipe
    exec(compile(recipe, "recipe", "exec"), scope := {})
    x = _inputs(scope["model"])
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), models.mlp()(x))


def test_weights_are_loaded_before_compressing(models, tmp_path, capsys):
    trained = models.mlp()
    with torch.no_grad():
        trained[0].weight.mul_(3.0)
    safetensors.torch.save_file(trained.state_dict(), tmp_path / "trained.safetensors")
    argv = ["compress", "--model", "clitoolmodels:instance", "--weights", "trained.safetensors"]
    assert main([*argv, "--max-tt-rank", "4"]) == 0
    _, report = tt.compress(trained, max_tt_rank=4)
    assert capsys.readouterr().out == f"{report}\n"

    torch.save({"0.weight": trained[0].weight}, tmp_path / "partial.pt")
    argv = ["compress", "--model", "clitoolmodels:mlp", "--weights", "partial.pt", "--max-tt-rank", "4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: error: --weights partial.pt: RuntimeError: Error(s) in loading ")
    assert 'Missing key(s) in state_dict: "0.bias", "2.weight", "2.bias".' in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "nosuchmodule_xyz:m", "--max-tt-rank", "4"],
            "cannot import 'nosuchmodule_xyz' (the current",
        ),
        (["--model", "clitoolbroken:m", "--max-tt-rank", "4"], "RuntimeError: broken at import"),
        (["--model", "clitoolmodels:nope", "--max-tt-rank", "4"], "clitoolmodels.py has no attribute 'nope'"),
        (["--model", "clitoolmodels:number", "--max-tt-rank", "4"], "is a int, expected an nn.Module or a "),
        (
            ["--model", "clitoolmodels:returns_dict", "--max-tt-rank", "4"],
            "returns_dict() returned an object of type dict",
        ),
        (
            ["--model", "clitoolmodels:needs_an_argument", "--max-tt-rank", "4"],
            "calling needs_an_argument() fa",
        ),
        (
            ["--model", "clitoolmodels:mlp", "--weights", "none.pt", "--max-tt-rank", "4"],
            "none.pt: no such file",
        ),
        (
            ["--model", "clitoolmodels:mlp", "--max-tt-rank", "4", "--include", "x*"],
            "no nn.Linear or nn.Embed",
        ),
        (["--model", "clitoolmodels:mlp", "--ratio", "1e9"], "ratio=1000000000.0 is out of reach"),
        (
            ["--model", "clitoolmodels:mlp", "--max-tt-rank", "4", "--out", "no/dir/m.pt"],
            "the folder no/dir does",
        ),
    ],
)
def test_compress_errors(models, tmp_path, capsys, argv, message):
    before = sorted(tmp_path.iterdir())
    assert main(["compress", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("tensortrain: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m:a"], "one of the arguments --max-tt-rank --epsilon --ratio is required"),
        (["--model", "m:a", "--max-tt-rank", "2", "--epsilon", "0.1"], "not allowed with argument"),
        (
            ["--model", "m:a", "--max-tt-rank", "two"],
            "argument --max-tt-rank: expected an integer, got 'two'",
        ),
        # (budgets out of range were exit 1, found after the model was built and its weights loaded)
        (["--model", "m:a", "--max-tt-rank", "0"], "argument --max-tt-rank: must be >= 1, got 0"),
        (["--model", "m:a", "--epsilon", "1.5"], "argument --epsilon: must lie in (0, 1), got 1.5"),
        (["--model", "m:a", "--epsilon", "nan"], "argument --epsilon: must lie in (0, 1), got nan"),
        # the bounds themselves (open intervals)
        (["--model", "m:a", "--epsilon", "0"], "argument --epsilon: must lie in (0, 1), got 0"),
        (["--model", "m:a", "--epsilon", "1"], "argument --epsilon: must lie in (0, 1), got 1"),
        (["--model", "m:a", "--ratio", "1"], "argument --ratio: must be > 1, got 1"),
        (["--model", "m:a", "--ratio", "0.5"], "argument --ratio: must be > 1, got 0.5"),
        (["--model", "m:a", "--ratio=-inf"], "argument --ratio: must be > 1, got -inf"),
        (["--model", "m:a", "--ratio", "2", "--dry-run", "--out", "x.pt"], "not allowed with argument"),
        (["--max-tt-rank", "2"], "the following arguments are required: --model"),
        # (a malformed --model was exit 1, the only usage error not 2)
        (["--model", "clitoolmodels", "--max-tt-rank", "4"], "argument --model: must be MODULE:ATTR (e.g. "),
    ],
)
def test_compress_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_command_lists_the_new_subcommands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "inspect" in err and "compress" in err and "demo" in err
    assert re.search(r"inspect\s+describe a tt.save file", err)


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``tensortrain inspect --json ... | head`` must not end with a BrokenPipeError traceback."""
    path = tmp_path / "w.safetensors"
    tt.save(tt.random_matrix([[4, 7, 4, 7], [5, 5, 5, 5]], tt_rank=2), path)
    code = (
        "import sys; from tensortrain.cli import main; "
        f"sys.exit(main(['inspect', '--json'] + [{str(path)!r}] * 2000))"
    )
    status, err = run_closing_stdout(code, timeout=120)
    assert status == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_model_built_on_the_meta_device_takes_its_weights(models, tmp_path, capsys):
    """Loading into meta parameters copies nothing: --weights did nothing and --out saved a file of meta tensors
    (or crashed, as safetensors)."""
    safetensors.torch.save_file(models.mlp().state_dict(), tmp_path / "w.safetensors")
    argv = ["compress", "--model", "clitoolmodels:meta_mlp", "--max-tt-rank", "4"]
    assert main([*argv, "--weights", "w.safetensors", "--out", "small.pt"]) == 0
    compressed, report = tt.compress(models.mlp(), max_tt_rank=4)
    out = capsys.readouterr().out
    assert out.startswith(f"{report}\n")
    saved = torch.load(tmp_path / "small.pt", weights_only=True)
    for key, want in compressed.state_dict().items():
        torch.testing.assert_close(saved[key], want)
    recipe = _recipe(out)  # the model is built on meta again: loading must assign
    assert "assign=True" in recipe
    exec(compile(recipe, "recipe", "exec"), scope := {})
    x = _inputs(compressed)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), compressed(x))
    for suffix in ("pt", "safetensors"):  # no weights: nothing to save, and the message says so
        assert main([*argv, "--out", f"empty.{suffix}"]) == 1
        assert "meta device and hold no values; pass --weights" in capsys.readouterr().err
        assert not (tmp_path / f"empty.{suffix}").exists()
    assert main([*argv, "--dry-run"]) == 0  # planning needs shapes only


def test_inspect_a_huge_core_index_is_reported_not_listed(tmp_path, capsys):
    """The listing went up to the largest core index found: a key 'a.cores.999999999999' hung the command."""
    torch.save({"a.cores.999999999999": torch.zeros(1), "a.cores.1": torch.zeros(2)}, tmp_path / "evil.pt")
    assert main(["inspect", str(tmp_path / "evil.pt")]) == 0
    out = capsys.readouterr().out
    assert "a: not a valid TT layer: a.cores.0 is missing (found cores [1, 999999999999])" in out


def test_state_dicts_with_extra_state(models, tmp_path, capsys):
    """A module's get_extra_state puts a non-tensor value in the state dict: --out .safetensors crashed, and
    inspect / --weights refused the .pt file compress itself wrote."""
    argv = ["compress", "--model", "clitoolmodels:with_extra_state", "--max-tt-rank", "4"]
    assert main([*argv, "--out", "x.safetensors"]) == 1
    err = capsys.readouterr().err
    assert "'1._extra_state' is a dict (a module's extra state); save to a .pt file instead" in err
    assert main([*argv, "--out", "x.pt"]) == 0
    capsys.readouterr()
    assert main(["inspect", "x.pt"]) == 0
    out = capsys.readouterr().out
    assert "2 TT layers" in out and "in total" in out
    torch.save(models.with_extra_state().state_dict(), tmp_path / "w.pt")
    assert main([*argv, "--weights", "w.pt", "--dry-run"]) == 0


def test_a_closed_pipe_does_not_cost_the_saved_model(models, tmp_path):
    """The report was printed before the model was saved, so a reader that went away lost the file."""
    code = (
        "import sys; from tensortrain.cli import main; "
        "sys.exit(main(['compress', '--model', 'clitoolmodels:mlp', '--max-tt-rank', '4', '--out', 'm.pt']))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before anything is printed
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 1
    assert err == ""
    compressed, _ = tt.compress(models.mlp(), max_tt_rank=4)
    assert set(torch.load(tmp_path / "m.pt", weights_only=True)) == set(compressed.state_dict())


def test_the_recipe_works_for_a_module_named_tt(tmp_path, capsys, monkeypatch):
    """The recipe imported tensortrain as tt and then the user's module tt, which shadowed it."""
    (tmp_path / "tt.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tt", raising=False)
    assert main(["compress", "--model", "tt:mlp", "--max-tt-rank", "4", "--out", "m.pt"]) == 0
    recipe = _recipe(capsys.readouterr().out)
    exec(compile(recipe, "recipe", "exec"), scope := {})
    expected, _ = tt.compress(scope["tt"].mlp(), max_tt_rank=4)
    x = torch.randn(3, 256)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), expected(x))
    monkeypatch.delitem(sys.modules, "tt", raising=False)


def test_inspect_names_what_a_non_state_dict_file_is(tmp_path, capsys):
    """A text file got 'refuses it (): a pickled object', and a pickled TT object was told to save a state dict."""
    (tmp_path / "notes.py").write_text("print('hello')\n")
    torch.save(tt.random_tensor((2, 3), tt_rank=2), tmp_path / "obj.pt")
    assert main(["inspect", str(tmp_path / "notes.py"), str(tmp_path / "obj.pt")]) == 1
    err = capsys.readouterr().err
    assert "notes.py: neither a safetensors file nor a torch file torch.load can read (" in err
    assert "refuses it ()" not in err
    assert (
        "obj.pt: a pickled tensortrain object (" in err and "saved with tt.save and read with tt.load" in err
    )


def test_out_refuses_sparse_buffers_in_safetensors(models, tmp_path, capsys):
    (tmp_path / "sparsemodels.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def sparsebuf():\n"
        "    m = nn.Sequential(nn.Linear(256, 128))\n"
        "    m.register_buffer('sp', torch.eye(3).to_sparse())\n"
        "    return m\n"
    )
    args = ["compress", "--model", "sparsemodels:sparsebuf", "--max-tt-rank", "4", "--out"]
    assert main([*args, "s.safetensors"]) != 0
    err = capsys.readouterr().err
    assert "safetensors stores dense tensors only, and 'sp' is a torch.sparse_coo tensor" in err
    assert "Traceback" not in err and not (tmp_path / "s.safetensors").exists()
    assert main([*args, "s.pt"]) == 0


def test_the_recipe_imports_a_module_whose_name_is_not_an_identifier(models, tmp_path, capsys, monkeypatch):
    (tmp_path / "my-models.py").write_text(MODELS)
    monkeypatch.delitem(sys.modules, "my-models", raising=False)
    assert main(["compress", "--model", "my-models:mlp", "--max-tt-rank", "4", "--out", "m.pt"]) == 0
    recipe = _recipe(capsys.readouterr().out)
    assert "importlib.import_module('my-models')" in recipe
    exec(compile(recipe, "recipe", "exec"), scope := {})
    expected, _ = tt.compress(models.mlp(), max_tt_rank=4)
    x = torch.randn(3, 256)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), expected(x))
    monkeypatch.delitem(sys.modules, "my-models", raising=False)


def test_a_tied_model_built_on_meta_keeps_its_ties(models, tmp_path, capsys):
    """Assigning the --weights gave each name its own tensor: the meta model's tied layers were compressed as
    independent ones (parameters counted twice), and the printed recipe failed (its fresh model, still tied,
    kept them dense)."""
    torch.save(models.Tied().state_dict(), tmp_path / "tied.pt")
    _, want = tt.compress(models.Tied(), max_tt_rank=2)
    for suffix in ("pt", "safetensors"):
        argv = [
            "compress",
            "--model",
            "clitoolmodels:meta_tied",
            "--weights",
            "tied.pt",
            "--max-tt-rank",
            "2",
        ]
        assert main([*argv, "--out", f"small.{suffix}"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{want}\n")  # the same report as the model built with its weights
        exec(compile(_recipe(out), "recipe", "exec"), scope := {})
        reloaded, (compressed, _) = scope["model"], tt.compress(models.Tied(), max_tt_rank=2)
        assert reloaded.head.weight is reloaded.embed.weight
        x = torch.randint(0, 64, (3, 4))
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), compressed(x))


@pytest.mark.parametrize("attr", ["Tied", "shared"])
def test_safetensors_out_stores_a_shared_tensor_once(models, tmp_path, capsys, attr):
    """--out X.safetensors wrote a tied or shared tensor once per name (twice the file) and inspect then counted
    it twice, disagreeing with the report compress printed."""
    argv = ["compress", "--model", f"clitoolmodels:{attr}", "--max-tt-rank", "2"]
    assert main([*argv, "--out", "m.safetensors"]) == 0
    out = capsys.readouterr().out
    compressed, report = tt.compress(getattr(models, attr)(), max_tt_rank=2)
    state = compressed.state_dict()
    stored = safetensors.torch.load_file(tmp_path / "m.safetensors")
    assert len(stored) < len(state)
    unique = {id(p): p.numel() for p in compressed.parameters()}
    assert main(["inspect", "--json", "m.safetensors"]) == 0
    info = json.loads(capsys.readouterr().out)[0]
    assert info["total_parameters"] == sum(unique.values()) == report.model_params_after
    exec(compile(_recipe(out), "recipe", "exec"), scope := {})
    for key, want in state.items():
        torch.testing.assert_close(scope["model"].state_dict()[key], want)


def test_the_same_file_for_two_options_is_refused(models, tmp_path, capsys):
    """--out m.pt --report-json m.pt replaced the saved model by the report (exit 0); --weights was overwritten
    the same way."""
    torch.save(models.mlp().state_dict(), tmp_path / "w.pt")
    before = (tmp_path / "w.pt").read_bytes()
    argv = ["compress", "--model", "clitoolmodels:mlp", "--max-tt-rank", "2"]
    for extra, message in [
        (["--out", "m.pt", "--report-json", "m.pt"], "--out m.pt and --report-json m.pt are the same file"),
        (
            ["--weights", "w.pt", "--report-json", "./w.pt"],
            "--weights w.pt and --report-json ./w.pt are the same",
        ),
        (["--weights", "w.pt", "--out", str(tmp_path / "w.pt")], "--weights w.pt and --out"),
    ]:
        assert main([*argv, *extra]) == 1
        assert message in capsys.readouterr().err
    assert (tmp_path / "w.pt").read_bytes() == before and not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_two_outputs_into_one_device_are_fine(tmp_path):
    """--out /dev/null --report-json /dev/null was refused as "the same file", though devices and FIFOs are
    written into, not replaced."""
    import argparse

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cli_compress._check_distinct(argparse.Namespace(weights=None, out=str(fifo), report_json=str(fifo)))


@pytest.mark.parametrize("option", ["--out", "--report-json"])
def test_a_target_ending_with_a_separator_is_refused(models, tmp_path, capsys, option):
    """--out ckpts/ wrote a file named ckpts and printed a recipe loading 'ckpts/'."""
    argv = ["compress", "--model", "clitoolmodels:mlp", "--max-tt-rank", "2", option, "ckpts/"]
    assert main(argv) == 1
    assert "ckpts/ names a folder; give a file name" in capsys.readouterr().err
    assert not (tmp_path / "ckpts").exists()


def test_inspect_checks_sparse_tensors(tmp_path, capsys):
    """A sparse tensor whose indices fall outside its size was read unchecked (torch leaves the checks off unless
    asked; using such a tensor can crash the process): inspect asks for them and says what is wrong."""
    bad = torch.sparse_coo_tensor(torch.tensor([[5]]), torch.tensor([1.0]), (3,), check_invariants=False)
    torch.save({"sp": bad, "w": torch.ones(2)}, tmp_path / "bad.pt")
    assert main(["inspect", str(tmp_path / "bad.pt")]) == 1
    assert "size is 3 but found index 5" in capsys.readouterr().err


def test_inspect_sparse_nested_and_meta_tensors(tmp_path, capsys):
    """A sparse tensor (as a compressed model's sparse buffer saves) and a nested one gave tracebacks; distinct
    meta tensors (all at data_ptr 0) were counted as one."""
    torch.save({"w": torch.ones(3), "sp": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    assert main(["inspect", "--json", str(tmp_path / "sparse.pt")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["total_parameters"] == 12
    torch.save(
        {"a": torch.empty(3, 4, device="meta"), "b": torch.empty(3, 4, device="meta")}, tmp_path / "m.pt"
    )
    assert main(["inspect", "--json", str(tmp_path / "m.pt")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["total_parameters"] == 24
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are in prototype stage"
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    torch.save({"nt": nested}, tmp_path / "nested.pt")
    assert main(["inspect", str(tmp_path / "nested.pt")]) == 1
    assert "entry 'nt' is a nested tensor" in capsys.readouterr().err
    torch.save({0: torch.ones(2)}, tmp_path / "intkey.pt")
    assert main(["inspect", str(tmp_path / "intkey.pt")]) == 1
    assert "not a state dict: key 0 is a int, expected a str name" in capsys.readouterr().err


def test_a_model_module_that_exits_is_a_clear_error(models, tmp_path, capsys):
    """A script that parses its command line at import printed another program's usage and exited 2, and a factory
    calling sys.exit(0) ended the command silently with status 0."""
    (tmp_path / "clitoolscript.py").write_text(
        # (as argparse's parse_args does on arguments it does not know: pytest's own argv may parse here)
        "import sys\nfrom torch import nn\nsys.exit(2)\ndef mlp():\n    return nn.Linear(4, 4)\n"
    )
    (tmp_path / "clitoolquits.py").write_text("import sys\ndef build():\n    sys.exit(0)\n")
    for name in ("clitoolscript", "clitoolquits"):
        sys.modules.pop(name, None)
    assert main(["compress", "--model", "clitoolscript:mlp", "--max-tt-rank", "2", "--out", "a.pt"]) == 1
    err = capsys.readouterr().err
    assert "importing 'clitoolscript' called sys.exit(2)" in err and "__main__" in err
    assert main(["compress", "--model", "clitoolquits:build", "--max-tt-rank", "2", "--out", "b.pt"]) == 1
    assert "calling build() called sys.exit(0)" in capsys.readouterr().err
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_warnings_and_ctrl_c_are_one_line(models, tmp_path, capsys, monkeypatch):
    """A library warning printed a source path and a code line; Ctrl-C a traceback."""
    argv = [
        "compress",
        "--model",
        "clitoolmodels:mlp",
        "--max-tt-rank",
        "2",
        "--include",
        "0",
        "--include",
        "zzz",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # (the suite turns warnings into errors)
        assert main([*argv, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: warning: compress: include pattern(s) ['zzz'] match no"), err
    assert "cli_compress.py" not in err and len(err.strip().splitlines()) == 1

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_compress, "_load_model", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == "tensortrain: interrupted\n"


def test_uninitialized_lazy_buffers_are_not_saved(models, tmp_path, capsys):
    """A model whose lazy buffers have no values yet crashed with torch's traceback when saved to safetensors, and
    to a torch file wrote UninitializedBuffer objects that the printed recipe's torch.load(weights_only=True)
    refuses; the command now says so, as it does for tensors on the meta device, and writes nothing."""
    argv = ["compress", "--model", "clitoolmodels:lazy_norm", "--max-tt-rank", "4"]
    for suffix in ("pt", "safetensors"):
        assert main([*argv, "--out", str(tmp_path / f"m.{suffix}")]) == 1
        err = capsys.readouterr().err
        assert "1.running_mean, 1.running_var are uninitialized lazy buffers" in err, err
        assert not (tmp_path / f"m.{suffix}").exists()
    assert main([*argv, "--dry-run"]) == 0  # planning needs the Linear's shape only
    # --weights give the buffers values; the recipe loads them before its compress, which copies the model
    torch.save(nn.Sequential(nn.Linear(256, 64), nn.BatchNorm1d(64, affine=False)).state_dict(), "w.pt")
    assert main([*argv, "--weights", "w.pt", "--out", "small.pt"]) == 0
    exec(compile(_recipe(capsys.readouterr().out), "recipe", "exec"), scope := {})
    torch.testing.assert_close(scope["model"].state_dict(), torch.load("small.pt", weights_only=True))


def test_a_pattern_warning_is_printed_once_with_weights_and_out(models, tmp_path, capsys):
    """With --weights and --out the command also plans the reload recipe by a dry-run compress of the model as
    built, which printed the unmatched pattern's warning a second time."""
    torch.save(models.mlp().state_dict(), "trained.pt")
    argv = ["compress", "--model", "clitoolmodels:mlp", "--weights", "trained.pt", "--max-tt-rank", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # (the suite turns warnings into errors)
        assert main([*argv, "--exclude", "zzz", "--out", str(tmp_path / "m.pt")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: warning: compress: exclude pattern(s) ['zzz'] match no"), err
    assert len(err.strip().splitlines()) == 1


def test_cli_inspect_reports_a_last_core_that_does_not_end_with_rank_one(tmp_path, capsys):
    # (test_cli_tools.py, beside test_inspect_reports_cores_that_do_not_form_a_tt_layer) the closing rank is
    # checked as the opening one is
    from tensortrain.cli import main

    state = {"a.cores.0": torch.zeros(1, 2, 3, 2), "a.cores.1": torch.zeros(2, 2, 3, 2)}
    torch.save(state, tmp_path / "odd.pt")
    assert main(["inspect", str(tmp_path / "odd.pt")]) == 0
    out = capsys.readouterr().out
    assert "a: not a valid TT layer: the boundary TT-ranks are 1 and 2, expected 1 and 1" in out


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_cli_compress_out_is_written_atomically(models, tmp_path, monkeypatch, capsys, suffix):
    # (test_cli_tools.py) "compress ... saves the result atomically": an interrupted write (here: a failing
    # os.replace) leaves the previous --out file as it was, and no stray temporary file
    from tensortrain.cli import main

    out = tmp_path / f"small.{suffix}"
    out.write_bytes(b"previous")

    def fail(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    code = main(["compress", "--model", "clitoolmodels:mlp", "--max-tt-rank", "2", "--out", str(out)])
    assert code != 0 and "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tt-")) == []


LAZY_AND_PADDED = """
import torch
from torch import nn

def lazy():
    return nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.Linear(256, 10))

def padded():
    m = nn.Sequential(nn.Embedding(1000, 64, padding_idx=0), nn.Linear(64, 64))
    nn.init.normal_(m[0].weight, std=0.02)  # a common init: it fills the padding row too
    return m
"""


@pytest.mark.parametrize("attr", ["lazy", "padded"])
def test_the_recipe_loads_the_weights_first_where_a_fresh_model_differs(tmp_path, capsys, monkeypatch, attr):
    """The recipe compressed a freshly built model, whose values decide what compress replaces: a lazy model has
    no shapes ("uninitialized lazy parameters"), and a fresh padding row that is not zero keeps the embedding
    dense (then "Missing key(s)"). Where --weights make the difference, the recipe loads them first."""
    (tmp_path / "clitoollazy.py").write_text(LAZY_AND_PADDED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "clitoollazy", raising=False)
    import clitoollazy  # type: ignore[import-not-found]

    torch.manual_seed(0)
    if attr == "lazy":
        trained = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
        x = torch.randn(3, 512)
    else:
        trained = clitoollazy.padded()
        with torch.no_grad():
            trained[0].weight[0].zero_()  # a trained checkpoint's padding row
        x = torch.tensor([[0, 5, 7]])
    torch.save(trained.state_dict(), "w.pt")
    argv = ["compress", "--model", f"clitoollazy:{attr}", "--weights", "w.pt", "--max-tt-rank", "4"]
    assert main([*argv, "--out", "c.pt"]) == 0
    recipe = _recipe(capsys.readouterr().out)
    assert "model.load_state_dict(read_state_dict('w.pt'), strict=False)" in recipe
    exec(compile(recipe, "recipe", "exec"), scope := {})
    compressed, _ = tt.compress(trained, max_tt_rank=4)
    assert torch.allclose(scope["model"](x), compressed(x))

    # a model whose fresh build gives the same layers: no weights in the recipe (they need not be at hand)
    monkeypatch.setattr(clitoollazy, "padded", lambda: nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)))
    torch.save(clitoollazy.padded().state_dict(), "w2.pt")
    assert (
        main(
            [
                "compress",
                "--model",
                "clitoollazy:padded",
                "--weights",
                "w2.pt",
                "--max-tt-rank",
                "4",
                "--out",
                "d.pt",
            ]
        )
        == 0
    )
    assert "read_state_dict" not in _recipe(capsys.readouterr().out)


def test_the_recipe_check_runs_only_for_a_written_model(models, tmp_path, capsys, monkeypatch):
    """The rank-1 check of the model as built ran on every layer whenever --weights was given, also with
    --dry-run (no recipe) and outside --include."""
    torch.save(models.mlp().state_dict(), "w.pt")
    calls = []
    real = cli_compress._replaceable
    monkeypatch.setattr(cli_compress, "_replaceable", lambda *a: calls.append(a[1:]) or real(*a))
    argv = [
        "compress",
        "--model",
        "clitoolmodels:mlp",
        "--weights",
        "w.pt",
        "--max-tt-rank",
        "4",
        "--include",
        "0",
    ]
    assert main([*argv, "--dry-run"]) == 0
    assert calls == []
    assert main([*argv, "--out", "c.pt"]) == 0
    assert calls == [(["0"], None)]
    assert "read_state_dict" not in _recipe(capsys.readouterr().out)


def test_inspect_describes_pruned_and_parametrized_tt_layers(tmp_path, capsys):
    """A pruned core is stored as cores.<k>_orig (+ a mask buffer), a parametrized one as
    cores.parametrizations.<k>.original: inspect called such layers invalid ("cores.0 is missing", wrong boundary
    ranks) and counted their cores as other tensors."""
    from torch.nn.utils import parametrize, prune

    model = _tt_model()
    prune.l1_unstructured(model["emb"].cores, name="0", amount=0.3)

    class Twice(nn.Module):
        def forward(self, x):
            return 2 * x

    parametrize.register_parametrization(model["fc"].cores, "1", Twice())
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    info = inspect_path(path)
    first, second = info["tt_layers"]
    assert first["problem"] is None and second["problem"] is None
    assert (first["pruned"], first["parametrized"], second["pruned"], second["parametrized"]) == (
        [0],
        [],
        [],
        [1],
    )
    cores = sum(c.numel() for m in (model["emb"], model["fc"]) for c in m.weight.tt_cores)
    assert first["parameters"] + second["parameters"] == info["tt_parameters"] == cores
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "emb: cores [0] pruned: the table counts their stored originals, which the layer masks" in out
    assert "fc: cores [1] parametrized" in out and "not a valid TT layer" not in out


def test_inspect_names_torchscript_archives_and_unreadable_files(tmp_path, capsys, monkeypatch):
    """A TorchScript archive read as 'neither a safetensors file nor a torch file' after a stray torch warning,
    and an unreadable file the same way."""
    scripted = tmp_path / "ts.pt"
    with warnings.catch_warnings():  # (torch.jit is deprecated; its archives are still around)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(nn.Linear(4, 2)).save(str(scripted))
    assert main(["inspect", str(scripted)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"tensortrain: error: {scripted}: a TorchScript archive (torch.jit.save), not a state dict; save "
        "model.state_dict() instead\n"
    )
    locked = tmp_path / "locked.pt"
    torch.save(nn.Linear(4, 2).state_dict(), locked)
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cli_inspect, "open", refuse, raising=False)
    assert main(["inspect", str(locked)]) == 1
    assert capsys.readouterr().err == f"tensortrain: error: {locked}: cannot read it (Permission denied)\n"


def test_inspect_and_compress_name_torch_export_archives(tmp_path, capsys):
    """A torch.export.save archive (.pt2) is named, as a TorchScript one is; torch.load's own message called it a
    checkpoint that is likely corrupted ('failed locating file data.pkl')."""
    exported = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 2), (torch.randn(2, 4),)), exported)
    expected = (
        f"tensortrain: error: {exported}: a torch.export archive (torch.export.save), not a state dict; save "
        "model.state_dict() instead\n"
    )
    assert main(["inspect", str(exported)]) == 1
    assert capsys.readouterr().err == expected
    (tmp_path / "pt2models.py").write_text(
        "from torch import nn\n\n\ndef lin():\n    return nn.Linear(4, 2)\n"
    )
    argv = ["compress", "--model", "pt2models:lin", "--max-tt-rank", "2", "--weights", str(exported)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.syspath_prepend(str(tmp_path))
        assert main(argv) == 1
    assert capsys.readouterr().err == expected


# --- from a mutation audit (session 29) ----------------------------------------------------------------------
def test_a_buffer_shared_by_two_layers_of_a_meta_model_takes_its_weights(models, tmp_path, capsys):
    torch.save(models.SharedBuffer().state_dict(), tmp_path / "w.pt")
    argv = [
        "compress",
        "--model",
        "clitoolmodels:meta_shared_buffer",
        "--weights",
        "w.pt",
        "--max-tt-rank",
        "2",
    ]
    assert main([*argv, "--out", "o.pt"]) == 0
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    assert torch.equal(saved["a.scale"], torch.ones(64)) and torch.equal(saved["b.scale"], torch.ones(64))


def test_the_recipe_escapes_glob_characters_in_layer_names(models, tmp_path, capsys):
    assert (
        main(["compress", "--model", "clitoolmodels:bracketed", "--max-tt-rank", "2", "--out", "m.pt"]) == 0
    )
    recipe = _recipe(capsys.readouterr().out)
    exec(compile(recipe, "recipe", "exec"), scope := {})
    expected, _ = tt.compress(models.bracketed(), max_tt_rank=2)
    assert isinstance(scope["model"][0]["a[0]"], tt.nn.TTLinear)
    for key, want in expected.state_dict().items():
        torch.testing.assert_close(scope["model"].state_dict()[key], want)


def test_inspect_tells_views_and_empty_tensors_from_shared_ones(tmp_path):
    w = torch.arange(16.0).reshape(4, 4)
    for state, total in (
        ({"w": w, "row": w[0]}, 20),
        ({"a": torch.empty(0), "b": torch.empty(0), "w": w}, 16),
    ):
        torch.save(state, tmp_path / "s.pt")
        info = inspect_path(tmp_path / "s.pt")
        assert (info["total_parameters"], info["shared_tensors"]) == (total, 0)


def test_inspect_accepts_non_tensors_only_as_a_modules_extra_state(tmp_path, capsys):
    torch.save({"w": torch.zeros(2), "my_extra_state": 3}, tmp_path / "x.pt")
    assert main(["inspect", str(tmp_path / "x.pt")]) == 1
    assert "'my_extra_state' is a int" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["clitoolmodels:", ":mlp"])
def test_a_model_spec_missing_one_side_is_a_usage_error(spec, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress", "--model", spec, "--max-tt-rank", "2", "--dry-run"])
    assert info.value.code == 2
    assert "argument --model: must be MODULE:ATTR" in capsys.readouterr().err


def test_error_lines_drop_terminal_colours():
    err = RuntimeError("\x1b[31mbad\x1b[0m file\nsecond line")
    assert cli_inspect.one_line(err) == "RuntimeError: bad file; second line"


def test_inspect_lists_a_layer_sharing_the_root_layers_cores_once(tmp_path, capsys):
    """A layer whose cores are the root's (keys ``cores.<k>``, the layer named ""): its ``shared_with`` is "",
    which the table read as not shared, so the layer was listed twice (a row, and the 'same tensors' line)."""
    layer = tt.nn.TTLinear(64, 64, tt_rank=4)
    state = {**layer.state_dict(), **{f"sub.{k}": v for k, v in layer.state_dict().items()}}
    torch.save(state, tmp_path / "root.pt")
    info = inspect_path(tmp_path / "root.pt")
    assert [(x["name"], x["shared_with"]) for x in info["tt_layers"]] == [("", None), ("sub", "")]
    assert main(["inspect", str(tmp_path / "root.pt")]) == 0
    out = capsys.readouterr().out
    assert "  sub: the same tensors as (model) (one layer under two names, counted once)" in out
    rows = [line for line in out.splitlines() if line.startswith(("  (model) ", "  sub "))]
    assert len(rows) == 1 and rows[0].startswith("  (model) ")  # the shared layer is listed once in the table


def test_the_recipe_takes_a_module_instance_as_it_is_and_the_header_keeps_the_selection(models, capsys):
    argv = ["compress", "--model", "clitoolmodels:instance", "--max-tt-rank", "2"]
    assert main([*argv, "--out", "inst.safetensors", "--include", "*", "--exclude", "2"]) == 0
    recipe = _recipe(capsys.readouterr().out).splitlines()
    assert "model = clitoolmodels.instance" in recipe  # (not instance(): calling it would run its forward)
    with safetensors.safe_open("inst.safetensors", "pt") as f:
        header = json.loads(f.metadata()["tensortrain_compress"])
    assert (header["include"], header["exclude"], header["replaced"]) == (["*"], ["2"], ["0"])


def test_the_model_module_in_the_current_folder_comes_before_one_elsewhere(tmp_path, capsys, monkeypatch):
    """MODULE is looked up in the current folder first, as ``python -m`` does: a module of the same name in a
    folder already on sys.path loses."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    model = "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(64, {}))\n"
    (tmp_path / "here/clitoolshadowed.py").write_text(model.format(64))
    (tmp_path / "elsewhere/clitoolshadowed.py").write_text(model.format(32))
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.delitem(sys.modules, "clitoolshadowed", raising=False)
    try:
        assert main(["compress", "--model", "clitoolshadowed:build", "--max-tt-rank", "2", "--dry-run"]) == 0
        assert sys.modules["clitoolshadowed"].__file__ == str(tmp_path / "here/clitoolshadowed.py")
    finally:
        sys.modules.pop("clitoolshadowed", None)


def test_inspect_tells_a_tt_tensor_file_from_a_tt_matrix_one(tmp_path):
    tt.save(tt.random_tensor((2, 3, 4), 2), tmp_path / "t.safetensors")
    tt.save(tt.random_matrix([[2, 3], [4, 5]], 2), tmp_path / "m.safetensors")
    assert inspect_path(tmp_path / "t.safetensors")["tt_kind"] == "tensor"
    assert inspect_path(tmp_path / "m.safetensors")["tt_kind"] == "matrix"


def test_inspect_accepts_the_root_modules_extra_state(tmp_path, capsys):
    # a model whose own get_extra_state is set stores it under the key "_extra_state", with no prefix
    torch.save({"w": torch.zeros(2), "_extra_state": {"scale": 2.0}}, tmp_path / "x.pt")
    assert main(["inspect", str(tmp_path / "x.pt")]) == 0
    assert capsys.readouterr().err == ""


def test_inspect_a_layer_sharing_cores_with_two_layers_is_not_shared_with_either(tmp_path):
    a, c = tt.nn.TTLinear(64, 64, tt_rank=4), tt.nn.TTLinear(64, 64, tt_rank=4)
    state = {
        **{f"a.{k}": v for k, v in a.state_dict().items()},
        **{f"c.{k}": v for k, v in c.state_dict().items()},
    }
    state.update({"b.cores.0": a.cores[0], "b.cores.1": c.cores[1]})
    torch.save(state, tmp_path / "mixed.pt")
    info = inspect_path(tmp_path / "mixed.pt")
    shared = [(x["name"], x["shared_with"]) for x in info["tt_layers"]]
    assert shared == [("a", None), ("c", None), ("b", None)]


def test_inspect_reads_safetensors_metadata_naming_two_tensors_as_metadata(tmp_path):
    # only a name that holds no tensor is an alias (safetensors' save_model); here "a" is a tensor of its own
    safetensors.torch.save_file(
        {"a": torch.zeros(2), "b": torch.zeros(3)}, tmp_path / "m.safetensors", {"a": "b"}
    )
    info = inspect_path(tmp_path / "m.safetensors")
    assert (info["total_parameters"], info["shared_tensors"], info["metadata"]) == (5, 0, {"a": "b"})


def test_inspect_tells_a_folder_from_a_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path), str(tmp_path / "gone.pt")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a file" in err and f"{tmp_path / 'gone.pt'}: no such file" in err
