"""The ``tensortrain`` command: a short MNIST demo that must learn, its outputs, torchrun, argument errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tensortrain as tt
from conftest import run_closing_stdout
from tensortrain.cli import build_parser, main

_CANDIDATES = [os.environ.get("TENSORTRAIN_DATA", ""), str(Path(__file__).parents[2] / "shared/data/mnist")]
REAL_MNIST = next(
    (Path(c) for c in _CANDIDATES if c and (Path(c) / "train-images-idx3-ubyte.gz").is_file()), None
)
needs_real = pytest.mark.skipif(
    REAL_MNIST is None, reason="real MNIST files not found (../shared/data/mnist)"
)

SHORT = ["--train-subset", "3000", "--test-subset", "1000", "--epochs-dense", "1", "--epochs-finetune", "1"]


@needs_real
def test_short_demo_learns_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["demo", "mnist", "--data", str(REAL_MNIST), "--out", str(out), "--epochs-tt", "2", *SHORT]
    assert main([*argv, "--threads", "1"]) == 0  # with progress bars (tqdm, on stderr)
    captured = capsys.readouterr()
    printed = captured.out
    assert "a: epoch 1/2" in captured.err  # the tqdm bar
    report = json.loads((out / "results.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["a", "b", "c", "d"]
    # the tutorial's parameter counts: 1,725 in the TT layer; 496,885 dense; 21,845 after compression
    assert stages["a"]["tt_layer_params"] == 1725
    assert stages["b"]["params"] == 496_885 and stages["b"]["tt_layer_params"] is None
    assert stages["c"]["params"] == stages["d"]["params"] == 21_845
    # learning: 10 classes, chance is 0.1
    assert stages["a"]["test_accuracy"] > 0.8
    assert stages["b"]["test_accuracy"] > 0.7
    assert stages["d"]["test_accuracy"] > 0.5
    assert [h["epoch"] for h in stages["a"]["history"]] == [1, 2]
    assert stages["a"]["history"][1]["loss"] < stages["a"]["history"][0]["loss"]
    assert report["config"]["train_subset"] == 3000 and report["world_size"] == 1
    assert report["data_folder"] == os.path.abspath(REAL_MNIST)
    png = (out / "accuracy_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the summary table, one row per stage, with the accuracies of results.json
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 4
    for row, s in zip(rows, report["stages"], strict=True):
        assert f"| {s['stage']} |" in row and f"{100 * s['test_accuracy']:.2f}%" in row
    assert "21,845" in printed
    # a shortened run is not compared with the full recipe's targets
    assert "target a:" not in printed and "apply to the tutorial's full run (the default options)" in printed


@needs_real
@pytest.mark.slow
def test_demo_under_torchrun_matches_one_process(tmp_path):
    """Two gloo processes with half of each global batch learn what one process learns; rank 0 alone reports."""
    tiny = ["--data", str(REAL_MNIST), "--train-subset", "640", "--test-subset", "500", "--no-progress"]
    tiny += ["--epochs-tt", "1", "--epochs-dense", "1", "--epochs-finetune", "0", "--compress-rank", "4"]
    assert main(["demo", "mnist", *tiny, "--out", str(tmp_path / "w1"), "--threads", "1"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "tensortrain.cli", "demo", "mnist", *tiny, "--out", str(tmp_path / "w2")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| stage |") == 1  # one summary table: only rank 0 prints
    runs = {w: json.loads((tmp_path / f"w{w}/results.json").read_text()) for w in (1, 2)}
    assert runs[2]["world_size"] == 2 and runs[1]["world_size"] == 1
    for one, two in zip(runs[1]["stages"], runs[2]["stages"], strict=True):
        # same global batches and averaged gradients: equal up to float round-off in the all-reduce
        assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 0.01, (one, two)
        for h1, h2 in zip(one["history"], two["history"], strict=True):
            assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-3)


@pytest.mark.slow
def test_an_unusable_out_under_torchrun_stops_every_rank_cleanly(tmp_path):
    """Only rank 0 creates --out: when it could not, rank 1 went on into DDP's first collective and died with a
    traceback about a closed connection. Every rank now stops with the message and no traceback: a folder under
    a file is refused by each rank's own check, before the data is loaded (the error rank 0 alone meets is
    shared by ``demo_output.on_rank_zero``, tested below)."""
    argv = _short_demo(tmp_path, 64, 16)
    (tmp_path / "afile").write_text("")
    argv[argv.index("--out") + 1] = str(tmp_path / "afile" / "sub")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "tensortrain.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    # (torchrun's own launcher prints a traceback of its ChildFailedError whenever a worker exits non-zero)
    assert "Connection closed" not in proc.stderr and "tensortrain/" not in proc.stderr, proc.stderr[-3000:]
    message = f"tensortrain: error: {tmp_path / 'afile'} is not a folder; the output folder (out)"
    assert proc.stderr.count(message) == 2, proc.stderr[-3000:]


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_only_rank_zero_meets_stops_every_rank(monkeypatch, rank):
    """``on_rank_zero``: rank 0 runs the step and raises its own error; the others get it through a broadcast
    and raise it too, instead of going on into DDP's first collective."""
    from tensortrain import demo_output

    sent = []

    def broadcast(objects, src):  # rank 0's list as it would arrive on every rank
        assert src == 0
        if rank == 0:
            sent.append(list(objects))
        else:
            objects[0] = "[Errno 20] Not a directory: 'out'"

    monkeypatch.setattr(demo_output.dist, "broadcast_object_list", broadcast)

    def step():
        assert rank == 0, "only rank 0 runs the step"
        raise NotADirectoryError(20, "Not a directory", "out")

    with pytest.raises(OSError) as info:
        demo_output.on_rank_zero(step, rank, 2)
    if rank == 0:
        assert isinstance(info.value, NotADirectoryError) and sent == [["[Errno 20] Not a directory: 'out'"]]
    else:
        assert (
            str(info.value) == "rank 0 could not prepare the output folder: [Errno 20] Not a directory: 'out'"
        )
    demo_output.on_rank_zero(lambda: None, rank, 1)  # (one process: no broadcast)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tensortrain {tt.__version__} (torch {torch.__version__})"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "mnist", "--epochs-tt", "-1"], "argument --epochs-tt: must be >= 0, got -1"),
        (["demo", "mnist", "--rank", "0"], "argument --rank: must be >= 1, got 0"),
        (["demo", "mnist", "--batch-size", "many"], "argument --batch-size: expected an integer, got 'many'"),
        (["demo", "mnist", "--bogus"], "unrecognized arguments: --bogus"),
        (["demo", "cifar"], "invalid choice: 'cifar'"),
    ],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_usage_without_a_command(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err
    assert main(["demo"]) == 2
    assert "mnist" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", "http://127.0.0.1:9/")  # the discard port: refused
    assert main(["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: error: could not download train-images-idx3-ubyte.gz")
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be an integer, got 'abc'"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but the process group cannot start (run under torchrun)"),
    ],
)
def test_bad_torchrun_environment_is_a_clear_error(tmp_path, capsys, monkeypatch, env, message):
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: error: ") and message in err


@pytest.mark.parametrize("seed", ["5000000000", str(2**32), "-1"])
def test_seed_out_of_range_is_a_usage_error(tmp_path, capsys, seed):
    """Rejected by the parser (exit 2, like every other bad option), before any data is read."""
    argv = ["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--seed", seed]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument --seed: must lie in [0, 4294967295], got {seed}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_seed_range_ends_are_accepted():
    parser = build_parser()
    for seed in (0, 2**32 - 1):
        assert parser.parse_args(["demo", "mnist", "--seed", str(seed)]).seed == seed


@pytest.mark.parametrize("option", ["--data", "--out"])
def test_data_or_out_that_is_a_file_is_a_clear_error(tmp_path, capsys, option):
    from test_datasets import fake_mnist

    fake_mnist(tmp_path / "data", n_train=8, n_test=4)
    (tmp_path / "file").write_text("not a folder")
    paths = {"--data": str(tmp_path / "data"), "--out": str(tmp_path / "out"), option: str(tmp_path / "file")}
    argv = [
        "demo",
        "mnist",
        "--no-progress",
        "--epochs-tt",
        "0",
        "--epochs-dense",
        "0",
        "--epochs-finetune",
        "0",
    ]
    assert main([*argv, "--data", paths["--data"], "--out", paths["--out"]]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"tensortrain: error: {tmp_path / 'file'} is not a folder" + (
        "; the MNIST folder must be a directory\n"
        if option == "--data"
        else "; the output folder (out) must be a directory\n"
    )
    assert "epoch" not in captured.out and not (tmp_path / "out").exists()


def test_out_under_a_file_is_refused_before_the_data_is_loaded(tmp_path, capsys, monkeypatch):
    """--out file/sub/run (file a regular file) failed only in mkdir, after MNIST was loaded or downloaded."""
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "sub" / "run"
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", "http://127.0.0.1:9/")  # (an empty --data would download)
    argv = ["demo", "mnist", "--no-progress", "--data", str(tmp_path / "empty"), "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"tensortrain: error: {tmp_path / 'file'} is not a folder; the output folder (out) {out} cannot be made in it\n"
    )
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"train_subset": -100}, "train_subset must be None or >= 1, got -100"),
        ({"test_subset": 0}, "test_subset must be None or >= 1, got 0"),
        ({"epochs_tt": -1}, "epochs_tt must be >= 0, got -1"),
        ({"epochs_dense": -2}, "epochs_dense must be >= 0, got -2"),
        ({"epochs_finetune": -1}, "epochs_finetune must be >= 0, got -1"),
        ({"rank": 0}, "rank must be >= 1, got 0"),
        ({"compress_rank": -3}, "compress_rank must be >= 1, got -3"),
        ({"threads": 0}, "threads must be None or >= 1, got 0"),
        ({"seed": 2**32}, r"seed must lie in \[0, 2\*\*32\), got 4294967296"),
        ({"seed": -1}, r"seed must lie in \[0, 2\*\*32\), got -1"),
        ({"device": "gpu"}, "device 'gpu' is not a device: expected 'auto' or a torch device such as 'cpu'"),
    ],
)
def test_demo_config_rejects_bad_options(options, message):
    from tensortrain.demo import DemoConfig

    with pytest.raises(ValueError, match=message):
        DemoConfig(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 64.0}, "batch_size must be an int, got 64.0"),
        ({"train_subset": "100"}, "train_subset must be an int or None, got '100'"),
        ({"rank": True}, "rank must be an int, got True"),
        ({"device": 0}, r"device must be a str \('auto', 'cpu', 'cuda', 'cuda:0', ...\), got 0"),
    ],
)
def test_demo_config_rejects_non_integers(options, message):
    from tensortrain.demo import DemoConfig

    with pytest.raises(TypeError, match=message):
        DemoConfig(**options)


def test_demo_config_takes_path_folders_as_str(tmp_path):
    """A Path for out or data trained every stage and then failed to write results.json ('Object of type
    PosixPath is not JSON serializable'), leaving nothing; an empty out meant the current folder, which the CLI
    refuses."""
    import tensortrain.demo as demo

    cfg = demo.DemoConfig(
        out=tmp_path / "o", data=tmp_path / "d", epochs_tt=0, epochs_dense=0, epochs_finetune=0
    )
    assert (cfg.out, cfg.data) == (str(tmp_path / "o"), str(tmp_path / "d"))
    demo.run_mnist_demo(cfg, data=_tiny_mnist())
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert report["config"]["out"] == str(tmp_path / "o") and report["config"]["data"] == str(tmp_path / "d")
    with pytest.raises(TypeError, match=r"out must be a folder path \(a str or os.PathLike\), got 3"):
        demo.DemoConfig(out=3)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"data must be a folder path \(a str or os.PathLike\) or None, got b'd'"
    ):
        demo.DemoConfig(data=b"d")  # type: ignore[arg-type]
    for name in ("out", "data"):
        with pytest.raises(ValueError, match=f"{name} is an empty path"):
            demo.DemoConfig(**{name: ""})


def test_demo_config_accepts_the_boundaries():
    from tensortrain.demo import DemoConfig

    cfg = DemoConfig(epochs_tt=0, epochs_dense=0, epochs_finetune=0, rank=1, compress_rank=1, seed=2**32 - 1)
    assert DemoConfig(batch_size=1, train_subset=1, test_subset=1, threads=1).train_subset == 1
    assert cfg.seed == 2**32 - 1


@pytest.mark.skipif(shutil.which("tensortrain") is None and not Path(sys.executable).with_name("tensortrain").exists(),
                    reason="console script not installed")  # fmt: skip
def test_console_script_entry_point():
    script = Path(sys.executable).with_name("tensortrain")
    exe = str(script) if script.exists() else "tensortrain"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"tensortrain {tt.__version__}")


@needs_real
def test_unwritable_out_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["demo", "mnist", "--data", str(REAL_MNIST), "--out", str(blocker / "out"), "--no-progress"]
    assert main([*argv, "--train-subset", "64", "--test-subset", "64"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("tensortrain: error: ") and "file/out" in captured.err
    assert "epoch" not in captured.out


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "mnist", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data DIR", "--epochs-tt N", "--compress-rank R", "--threads N", "--no-progress"):
        assert option in out
    assert "(default: 16)" in out and "torchrun" in out
    assert "--device DEV" in out and "auto (cuda when available, else cpu)" in " ".join(out.split())


def _short_demo(tmp_path, n_train: int, n_test: int) -> list[str]:
    """Synthetic IDX files in tmp_path/data and the argv of a one-epoch demo on them writing to tmp_path/out."""
    from test_datasets import fake_mnist

    fake_mnist(tmp_path / "data", n_train=n_train, n_test=n_test)
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    fast = ["--epochs-tt", "1", "--epochs-dense", "1", "--epochs-finetune", "1", "--batch-size", "32"]
    return ["demo", "mnist", "--data", data, "--out", out, "--no-progress", *fast]


def test_demo_pipeline_on_synthetic_files(tmp_path, capsys):
    """Runs everywhere (no real MNIST needed): IDX files the test writes, every stage, both outputs."""
    assert main(_short_demo(tmp_path, 96, 40)) == 0
    report = json.loads((tmp_path / "out/results.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["a", "b", "c", "d"]
    assert [s["params"] for s in report["stages"]] == [7985, 496_885, 21_845, 21_845]
    assert report["data_folder"] == str(tmp_path / "data") and report["config"]["data"] == str(
        tmp_path / "data"
    )
    assert [len(s["history"]) for s in report["stages"]] == [1, 1, 0, 1]
    assert all(0.0 <= s["test_accuracy"] <= 1.0 for s in report["stages"])
    assert report["config"]["batch_size"] == 32 and report["world_size"] == 1
    assert (tmp_path / "out/accuracy_vs_params.png").read_bytes().startswith(b"\x89PNG")
    assert "MNIST: 96 training and 40 test images" in capsys.readouterr().out


def test_demo_without_matplotlib_says_so_and_leaves_no_stale_plot(tmp_path, capsys, monkeypatch):
    """Without the demo extra the plot was skipped silently, and an earlier run's plot stayed next to the new
    results.json."""
    import tensortrain.demo_output

    argv = _short_demo(tmp_path, 64, 32)
    stale = tmp_path / "out/accuracy_vs_params.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's plot")
    monkeypatch.setattr(tensortrain.demo_output, "_plot", lambda results: None)  # as without matplotlib
    assert main(argv) == 0
    assert not stale.exists() and (tmp_path / "out/results.json").exists()
    assert 'no plot: matplotlib is not installed (pip install "tensortrain[demo]")' in capsys.readouterr().out


def test_demo_names_the_ranks_it_used_and_refuses_oversized_subsets(tmp_path, capsys, monkeypatch):
    """A rank above the useful ones was clipped while the table said the requested one; a subset larger than the
    data was used whole while results.json recorded the request; a missing --data folder was hinted as root=."""
    argv = _short_demo(tmp_path, 64, 32)
    assert main([*argv, "--rank", "100000", "--compress-rank", "100000"]) == 0
    names = [s["name"] for s in json.loads((tmp_path / "out/results.json").read_text())["stages"]]
    assert names[0] == "TT net (rank 700)" and names[2] == "b compressed (TT-SVD, rank 700)"
    capsys.readouterr()
    assert main([*argv, "--train-subset", "65"]) == 1
    assert "train_subset=65 is more than the 64 images MNIST has" in capsys.readouterr().err
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", "http://127.0.0.1:9/")  # nothing listens: fails at once
    assert (
        main(["demo", "mnist", "--data", str(tmp_path / "none" / "deeper"), "--out", str(tmp_path / "o2")])
        == 1
    )
    err = capsys.readouterr().err
    # (a --data given overrides $TENSORTRAIN_DATA: setting it would not help; the folders the failed download
    # made are gone again: a mistyped --data left them behind)
    assert (
        "or pass --data a folder holding them" in err and "root=" not in err and "TENSORTRAIN_DATA" not in err
    )
    assert not (tmp_path / "none").exists()
    monkeypatch.setenv("TENSORTRAIN_DATA", str(tmp_path / "env"))  # (no --data: the variable may help)
    assert main(["demo", "mnist", "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert (
        "or pass --data / set $TENSORTRAIN_DATA to a folder holding them" in err and "/ set / set" not in err
    )


def test_results_record_the_data_folder_read_from_the_environment(tmp_path, monkeypatch):
    """Without --data, config's data is None: results.json's data_folder says which folder was read
    ($TENSORTRAIN_DATA here; relative, as the variable may be, it is recorded absolute, '..' resolved)."""
    argv = _short_demo(tmp_path, 96, 40)
    at = argv.index("--data")
    del argv[at : at + 2]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.setenv("TENSORTRAIN_DATA", "sub/../data")
    assert main(argv) == 0
    report = json.loads((tmp_path / "out/results.json").read_text())
    assert report["config"]["data"] is None and report["data_folder"] == str(tmp_path / "data")


def test_seeds_runs_every_seed_and_summarizes_them(tmp_path, capsys):
    """--seeds runs the demo once per seed into OUT/seed-S, each run equal to a --seed run, then the table."""
    argv = _short_demo(tmp_path, 96, 40)
    assert main([*argv, "--seeds", "3,5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    per_seed = {s: json.loads((out / f"seed-{s}/results.json").read_text()) for s in (3, 5)}
    assert [r["config"]["seed"] for r in per_seed.values()] == [3, 5]
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 5] and "seed" not in summary["config"]
    data = str(tmp_path / "data")
    assert summary["data_folder"] == data and [r["data_folder"] for r in per_seed.values()] == [data, data]
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["config"]["device"] == "cpu"
    assert [s["stage"] for s in summary["stages"]] == ["a", "b", "c", "d"]
    for k, stage in enumerate(summary["stages"]):
        accs = [per_seed[s]["stages"][k]["test_accuracy"] for s in (3, 5)]
        assert stage["test_accuracy"] == {"3": accs[0], "5": accs[1]}
        assert stage["mean"] == pytest.approx(sum(accs) / 2)
        assert stage["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
        assert stage["target"] is None and stage["runs_meeting_target"] is None  # a shortened run
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert rows[0] == "| seed | 3 | 5 | mean ± sd |"
    a = summary["stages"][0]
    assert rows[2] == (
        f"| a | {100 * a['test_accuracy']['3']:.2f} | {100 * a['test_accuracy']['5']:.2f} "
        f"| {100 * a['mean']:.2f} ± {100 * a['sd']:.2f} |"
    )
    assert "not compared" in printed and "seeds.json" in printed
    # a seed's run inside --seeds is the run of --seed alone: nothing carries over from the seed before it
    alone = tmp_path / "alone"
    assert main([*argv, "--seed", "5", "--threads", "1", "--out", str(alone)]) == 0
    solo = json.loads((alone / "results.json").read_text())["stages"]
    assert [s["test_accuracy"] for s in solo] == [s["test_accuracy"] for s in per_seed[5]["stages"]]
    assert [s["history"] for s in solo] == [s["history"] for s in per_seed[5]["stages"]]


def test_seeds_checks_every_seed_folder_before_training(tmp_path, capsys):
    """A blocked OUT/seed-S was found only after the seeds before it had trained."""
    argv = _short_demo(tmp_path, 96, 40)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "seed-3").write_text("")
    assert main([*argv, "--seeds", "0,3", "--threads", "1"]) == 1
    assert "seed-3 is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "seed-0").exists()
    (tmp_path / "out" / "seed-3").unlink()
    (tmp_path / "out" / "seed-3").symlink_to(tmp_path / "nowhere")  # mkdir(exist_ok=True) fails on it
    assert main([*argv, "--seeds", "0,3", "--threads", "1"]) == 1
    assert "seed-3 is a link to nothing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "seed-0").exists()
    (tmp_path / "out" / "seed-3").unlink()
    (
        tmp_path / "out" / "seeds.json"
    ).mkdir()  # an output file's path taken by a folder: found before training too
    assert main([*argv, "--seeds", "0,3", "--threads", "1"]) == 1
    assert "seeds.json is a folder; the demo writes its seeds.json there" in capsys.readouterr().err
    assert not (tmp_path / "out" / "seed-0").exists()
    (tmp_path / "out" / "seeds.json").rmdir()
    (tmp_path / "out" / "results.json").mkdir()
    assert main(argv) == 1
    assert "results.json is a folder; the demo writes its results.json there" in capsys.readouterr().err
    (tmp_path / "out" / "results.json").rmdir()
    (tmp_path / "out" / "seed-3" / "accuracy_vs_params.png").mkdir(parents=True)  # a later seed's file
    assert main([*argv, "--seeds", "0,3", "--threads", "1"]) == 1
    assert "accuracy_vs_params.png is a folder; the demo writes" in capsys.readouterr().err
    assert not (tmp_path / "out" / "seed-0").exists()


@pytest.mark.parametrize(
    ("text", "seeds"), [("7", [7]), ("0-3", [0, 1, 2, 3]), ("0-1, 5,9-10", [0, 1, 5, 9, 10])]
)
def test_seeds_lists_and_ranges_parse(text, seeds):
    args = build_parser().parse_args(["demo", "mnist", "--seeds", text])
    assert args.seeds == seeds


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "3-1"], "range '3-1' ends below its start"),
        (["--seeds", "0-2,1"], "seed 1 is listed twice in '0-2,1'"),
        (["--seeds", "a-b"], "expected an integer, got 'a'"),
        (["--seeds", "0-1000"], "at most 1000 seeds"),
        (["--seeds", "0-4294967296"], "must lie in [0, 4294967295], got 4294967296"),
        (["--seeds", "0-2", "--seed", "1"], "not allowed with argument --seeds"),
        (["--seeds", "-1"], "'-1' is neither a seed nor a range A-B"),  # (was "expected an integer, got ''")
        (["--seeds", "1-"], "'1-' is neither a seed nor a range A-B"),
        (
            ["--threads", "99999999999"],
            "must lie in [1, 4096]",
        ),  # (was torch's "Overflow when unpacking long")
    ],
)
def test_seeds_errors_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "mnist", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_seed_summary_counts_runs_meeting_the_targets():
    from tensortrain.demo_config import TARGETS, StageResult
    from tensortrain.demo_seeds import format_seeds_table, summarize_seeds

    def run(b: float, c: float) -> list[StageResult]:
        return [
            StageResult("b", "dense", 1, None, b, 1.0, 5, 1e-3),
            StageResult("c", "tt", 1, 1, c, 0.1, 0, None),
        ]

    summary = summarize_seeds({0: run(0.9698, 0.6), 1: run(0.9700, 0.7), 2: run(0.9750, 0.5)}, TARGETS)
    b, c = summary
    assert b["runs_meeting_target"] == 2 and b["target"] == 0.97  # >= counts: 97.00 meets 97.0
    assert (b["min"], b["max"]) == (0.9698, 0.975)
    assert b["mean"] == pytest.approx((0.9698 + 0.97 + 0.975) / 3, abs=1e-12)  # the mean, not the median
    assert c["target"] is None and c["runs_meeting_target"] is None
    assert (c["min"], c["max"]) == (0.5, 0.7)  # of 0.6, 0.7, 0.5: neither the first nor the last
    table = format_seeds_table(summary).splitlines()
    assert table[0] == "| seed | 0 | 1 | 2 | mean ± sd | runs meeting the target |"
    assert table[2].endswith("| 2 of 3 (>= 97.0) |") and table[3].endswith("| (reported) |")
    one = summarize_seeds({4: run(0.9, 0.5)})
    assert one[0]["sd"] is None and format_seeds_table(one).splitlines()[2] == "| b | 90.00 | 90.00 |"
    with pytest.raises(ValueError, match="runs is empty"):
        summarize_seeds({})
    with pytest.raises(ValueError, match="seeds must be distinct"):
        from tensortrain.demo_config import DemoConfig
        from tensortrain.demo_seeds import run_mnist_seeds

        run_mnist_seeds(DemoConfig(), [1, 2, 1])
    with pytest.raises(ValueError, match="seeds is empty"):
        run_mnist_seeds(DemoConfig(), [])


def test_demo_into_a_closed_pipe_still_writes_its_results(tmp_path):
    """``demo mnist ... | head -1`` ended the training with "error: [Errno 32] Broken pipe" and wrote nothing."""
    argv = _short_demo(tmp_path, 64, 32)
    tests = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); from tensortrain.cli import main; sys.exit(main({argv!r}))"
    status, err = run_closing_stdout(code, timeout=300)
    assert status == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err, err
    report = json.loads((tmp_path / "out/results.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["a", "b", "c", "d"]


def test_a_huge_batch_size_is_a_usage_error(tmp_path, capsys):
    """It failed after loading the data with "Overflow when unpacking long long"."""
    argv = ["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--batch-size", str(10**20)])
    assert info.value.code == 2
    assert "argument --batch-size: must lie in [1, 2147483647]" in capsys.readouterr().err


def test_demo_scales_images_as_the_tutorial():
    # (test_cli.py) the module docstring's "inputs x / 127.5 - 1": pixel 0 -> -1, 255 -> 1
    from tensortrain import demo

    images = torch.tensor([[[0, 51, 255]], [[255, 0, 0]]], dtype=torch.uint8)
    x = demo._preprocess(images, 1)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 3)
    assert torch.equal(x, torch.tensor([[[-1.0, 51 / 127.5 - 1.0, 1.0]]]))


@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_demo_accuracy_is_the_fraction_classified_right(batch):
    # (test_cli.py) accuracy(model, x, y) = correct / len(y), for any batch size; the model is left in train mode
    from torch import nn

    from tensortrain import demo

    model = nn.Sequential(nn.Identity())  # the logits are the inputs
    x = torch.eye(3)[[0, 1, 2, 1, 0]]
    y = torch.tensor([0, 1, 2, 2, 2])
    assert demo.accuracy(model, x, y, batch=batch) == 3 / 5
    assert model.training
    assert demo.accuracy(model, x[:0], y[:0], batch=batch) == 0.0


# --seeds takes up to 1000 seeds: exactly 1000 is accepted, 1001 is a usage error
def test_seeds_takes_exactly_the_maximum(capsys):
    from tensortrain.cli import build_parser

    assert build_parser().parse_args(["demo", "mnist", "--seeds", "0-999"]).seeds == list(range(1000))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "mnist", "--seeds", "0-1000"])
    assert "at most 1000 seeds" in capsys.readouterr().err


# a tutorial run whose accuracy equals a target meets it (the targets are ">= x%")
def test_an_accuracy_equal_to_the_target_is_met(monkeypatch, tmp_path, capsys):
    import tensortrain.demo as demo
    from tensortrain.cli import main
    from tensortrain.demo_config import TARGETS

    def fake_run(cfg, log=None, progress=None):
        return [demo.StageResult(s, f"net {s}", 10, None, acc, 0.0, 1, None) for s, acc in TARGETS.items()]

    monkeypatch.setattr(demo, "run_mnist_demo", fake_run)
    assert main(["demo", "mnist", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in TARGETS:
        assert f"target {stage}: " in out
    assert "MISSED" not in out and out.count(": met") == len(TARGETS)


def test_every_demo_option_reaches_the_config(monkeypatch, tmp_path, capsys):
    import tensortrain.demo as demo
    from tensortrain.demo_config import DemoConfig

    seen = []

    def fake_run(cfg, log=None, progress=None):
        seen.append(cfg)
        return [demo.StageResult(s, f"net {s}", 10, None, 0.5, 0.0, 1, None) for s in "abcd"]

    monkeypatch.setattr(demo, "run_mnist_demo", fake_run)
    argv = ["demo", "mnist", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--no-progress"]
    options = {
        "epochs-tt": 1,
        "epochs-dense": 2,
        "epochs-finetune": 3,
        "rank": 5,
        "compress-rank": 6,
        "seed": 7,
    }
    options.update({"batch-size": 8, "train-subset": 90, "test-subset": 100, "threads": 11})
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    assert main(argv) == 0
    given = {k.replace("-", "_"): v for k, v in options.items()}
    assert seen == [DemoConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o"), **given)]


def _accuracies_and_losses(out: Path) -> list[tuple[float, list[float]]]:
    report = json.loads((out / "results.json").read_text())
    return [(s["test_accuracy"], [h["loss"] for h in s["history"]]) for s in report["stages"]]


def test_demo_device_cpu_is_the_default_run_and_auto_resolves_here(tmp_path, capsys):
    """--device cpu is the run without --device, digit for digit; --device auto names in results.json the
    device it chose (the CPU on a machine without CUDA) and keeps "auto" in the configuration."""
    argv = [*_short_demo(tmp_path, 96, 40), "--threads", "1"]
    runs = {}
    for device in (None, "cpu", "auto"):
        out = tmp_path / f"out-{device}"
        assert main([*argv, "--out", str(out), *(["--device", device] if device else [])]) == 0
        runs[device] = json.loads((out / "results.json").read_text())
        assert runs[device]["config"]["device"] == (device or "cpu")
    assert runs[None]["device"] == runs["cpu"]["device"] == "cpu"
    assert runs[None]["gpu"] is None and runs["cpu"]["gpu"] is None
    assert _accuracies_and_losses(tmp_path / "out-None") == _accuracies_and_losses(tmp_path / "out-cpu")
    if torch.cuda.is_available():
        assert runs["auto"]["device"] == f"cuda:{torch.cuda.current_device()}"
        assert runs["auto"]["gpu"] == torch.cuda.get_device_name()
    else:
        assert runs["auto"]["device"] == "cpu" and runs["auto"]["gpu"] is None
        assert _accuracies_and_losses(tmp_path / "out-auto") == _accuracies_and_losses(tmp_path / "out-cpu")
    assert "1 process(es) on cpu" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_demo_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    """A usage error (exit 2, as every bad option) naming what is available, before any data is read."""
    argv = ["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    for device in ("cuda", "cuda:0"):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--device", device])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"error: argument --device: device '{device}': CUDA is not available (" in err
        assert err.rstrip().endswith("available: cpu") and "Traceback" not in err
    assert not list(tmp_path.iterdir())
    from tensortrain.demo import DemoConfig, run_mnist_demo

    # the library says the same (the CLI checks first; a DemoConfig is built without looking for devices)
    cfg = DemoConfig(data=str(tmp_path / "none"), out=str(tmp_path / "out"), device="cuda")
    with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available \(.*\); available: cpu"):
        run_mnist_demo(cfg)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("garbage", "device 'garbage' is not a device: expected 'auto' or a torch device such as 'cpu', "),
        ("cuda:x", "device 'cuda:x' is not a device: expected 'auto' or a torch device such as 'cpu', "),
        ("", "device '' is not a device: expected 'auto' or a torch device such as 'cpu', "),
        ("meta", "device 'meta' holds no values (shapes only): the demo cannot train on it"),
    ],
)
def test_demo_unusable_device_is_a_usage_error(tmp_path, capsys, device, message):
    argv = ["demo", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--device", device])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"tensortrain demo mnist: error: argument --device: {message}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_demo_on_cuda_keeps_data_batches_and_evaluation_on_the_gpu(tmp_path, monkeypatch, capsys):
    """Every batch of indices and every evaluation is on the GPU; the batches are the CPU run's, in its
    order; results.json names the GPU; the losses are the CPU run's up to float32 round-off."""
    from tensortrain import demo

    seen: dict[str, list[torch.Tensor]] = {"cpu": [], "cuda": []}
    batches, accuracy = demo._batches, demo.accuracy

    def recording_batches(ctx, seed, epoch):
        out = batches(ctx, seed, epoch)
        assert all(idx.device == ctx.device for idx in out)
        seen[ctx.device.type].extend(idx.cpu() for idx in out)
        return out

    def checked_accuracy(model, x, y, batch=1000):
        assert x.is_cuda and y.is_cuda and all(p.is_cuda for p in model.parameters())
        return accuracy(model, x, y, batch)

    monkeypatch.setattr(demo, "_batches", recording_batches)
    argv = [*_short_demo(tmp_path, 96, 40), "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "cpu")]) == 0
    monkeypatch.setattr(demo, "accuracy", checked_accuracy)
    assert main([*argv, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 0
    assert len(seen["cuda"]) == len(seen["cpu"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(seen["cpu"], seen["cuda"], strict=True))
    report = json.loads((tmp_path / "gpu/results.json").read_text())
    assert report["device"] == f"cuda:{torch.cuda.current_device()}" and report["config"]["device"] == "cuda"
    assert report["gpu"] == torch.cuda.get_device_name()
    # the same initial weights and batches: the losses agree up to float32 round-off (and TT-SVDs on c)
    cpu, gpu = ([loss for _, h in _accuracies_and_losses(tmp_path / d) for loss in h] for d in ("cpu", "gpu"))
    assert gpu == pytest.approx(cpu, rel=1e-3)
    n = torch.cuda.device_count()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*argv, "--device", f"cuda:{n}"])
    assert info.value.code == 2
    assert f"device 'cuda:{n}': there is no GPU {n} ({n} CUDA device(s)); available: cpu, cuda:0" in (
        capsys.readouterr().err
    )


# --- session 20's audit: empty paths, an existing folder that cannot be written, interrupted runs -----------


@pytest.mark.parametrize("option", ["--data", "--out"])
def test_an_empty_path_is_a_usage_error(tmp_path, capsys, option):
    """`--data ""` downloaded MNIST into the current folder and `--out ""` wrote the results there (Path("") is
    "."), while an empty $TENSORTRAIN_DATA counts as unset."""
    argv = _short_demo(tmp_path, 64, 32)
    argv[argv.index(option) + 1] = ""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument {option}: expected a path, got an empty string" in capsys.readouterr().err
    with pytest.raises(ValueError, match="root is an empty path"):
        tt.datasets.load_mnist("", download=False)


def _unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot create files in (chmod does not stop root: a sysfs folder)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):
        return ro
    for candidate in (Path("/sys/kernel"), Path("/sys")):
        try:
            (candidate / ".tt-write-test").touch()
        except OSError:
            return candidate
    pytest.skip("no folder here refuses writes to this process")


def test_an_existing_unwritable_out_fails_before_training(tmp_path, capsys):
    """mkdir(exist_ok=True) succeeds on an existing read-only folder: every stage trained, then the first write
    failed."""
    argv = _short_demo(tmp_path, 64, 32)
    out = _unwritable_folder(tmp_path)
    argv[argv.index("--out") + 1] = str(out)
    try:
        assert main(argv) == 1
    finally:
        (tmp_path / "ro").chmod(0o700)
    captured = capsys.readouterr()
    assert "cannot write into the output folder" in captured.err and str(out) in captured.err
    assert "MNIST:" not in captured.out and "epoch" not in captured.out


def test_a_write_protected_output_file_fails_before_training(tmp_path, capsys, monkeypatch):
    """tt's writes refuse a write-protected file as open() does: a re-run over a 0o444 results.json trained
    every stage, failed at the end and had removed the earlier run's plot. (os.access as a process without
    root's override would answer: chmod does not stop root.)"""
    argv = _short_demo(tmp_path, 64, 32)
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True)
    (out / "results.json").write_text("{}")
    (out / "accuracy_vs_params.png").write_bytes(b"png")
    real = os.access
    monkeypatch.setattr(  # write access refused, as to a process without root's override
        "tensortrain.demo_output.os.access",
        lambda p, mode: real(p, mode) and not (Path(p).name == "results.json" and mode & os.W_OK),
    )
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "results.json there, but the file is write-protected" in captured.err
    assert "epoch" not in captured.out
    assert sorted(os.listdir(out)) == ["accuracy_vs_params.png", "results.json"]


def test_an_interrupted_run_never_pairs_its_results_with_another_runs_plot(tmp_path, monkeypatch):
    """results.json was replaced before the plot was rendered: a Ctrl-C there left the new results beside the
    previous run's plot."""
    import tensortrain.demo_output

    argv = _short_demo(tmp_path, 64, 32)
    assert main(argv) == 0
    out = tmp_path / "out"
    first = (out / "results.json").read_bytes()
    real_write = tensortrain.demo_output.atomic_write

    def interrupted_at_the_plot(path, data):
        if path.name == "accuracy_vs_params.png":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(tensortrain.demo_output, "atomic_write", interrupted_at_the_plot)
    assert main([*argv, "--seed", "1"]) == 130
    assert (out / "results.json").read_bytes() != first  # this run's results, and no plot beside them
    assert not (out / "accuracy_vs_params.png").exists()


def test_sigterm_during_a_download_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """kill/timeout send SIGTERM, which ended Python at once: the download's .part file stayed in the cache."""
    import signal

    import tensortrain.cli
    from tensortrain import datasets_download

    def killed_midway(url, part, sha256, size, timeout):
        part.write_bytes(b"half a file")
        # (only once main's handler is in place: the default one would end the test process)
        assert signal.getsignal(signal.SIGTERM) is tensortrain.cli._terminate
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # (the handler runs at the next bytecode; nothing to wait for)
        raise AssertionError("SIGTERM did not stop the download")

    monkeypatch.setattr(datasets_download, "_fetch_one", killed_midway)
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", "http://127.0.0.1:9/")
    before = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "mnist"
    assert (
        main(["demo", "mnist", "--data", str(target), "--out", str(tmp_path / "o"), "--no-progress"]) == 143
    )
    assert "tensortrain: terminated (SIGTERM)" in capsys.readouterr().err
    assert not target.exists()  # (no partial file, and no folder either: the download made it)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_an_ignored_sighup_stays_ignored(tmp_path, monkeypatch):
    """nohup ignores SIGHUP; main() replaced that with its own handler, so closing the terminal stopped the run."""
    import signal

    import tensortrain.cli

    seen = []
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        monkeypatch.setattr(
            tensortrain.cli, "build_parser", lambda: _Recording(seen, lambda: signal.getsignal(signal.SIGHUP))
        )
        assert main([]) == 0
        assert seen == [signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_main_puts_the_callers_signal_handlers_back(monkeypatch):
    """SIGTERM and SIGHUP are main()'s while the command runs, the caller's again once it returns (a check
    against the handler found before passes whenever an earlier main() left its own installed)."""
    import signal

    import tensortrain.cli

    def callers(signum, frame):
        raise AssertionError("not called")

    seen = []
    previous = {s: signal.signal(s, callers) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        probe = lambda: (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP))  # noqa: E731
        monkeypatch.setattr(tensortrain.cli, "build_parser", lambda: _Recording(seen, probe))
        assert main([]) == 0
        assert seen == [(tensortrain.cli._terminate, tensortrain.cli._terminate)]
        assert signal.getsignal(signal.SIGTERM) is callers and signal.getsignal(signal.SIGHUP) is callers
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Recording:
    """A parser whose command records what ``probe`` returns while it runs."""

    def __init__(self, seen, probe):
        self.seen, self.probe = seen, probe

    def parse_args(self, argv):
        import argparse

        return argparse.Namespace(run=lambda args: self.seen.append(self.probe()) or 0)


def test_python_dash_m_tensortrain_runs_the_command():
    """``python -m tensortrain`` failed: the package had no ``__main__``."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tensortrain", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tensortrain ")


# --- the demo's stages and options, checked without training (from a mutation audit, session 29) ----------
def _tiny_mnist():
    from tensortrain.datasets import MNIST

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return MNIST(x, y, x[:32], y[:32])


def test_stage_c_compresses_stage_bs_trained_network():
    import tensortrain.demo as demo

    torch.manual_seed(0)
    dense = demo.dense_net()
    with torch.no_grad():  # a rank-1 weight: TT-SVD at rank 16 keeps it to round-off
        dense[1].weight.copy_(torch.outer(torch.linspace(-1, 1, 625), torch.linspace(0, 1, 784)))
    compressed, err = demo._compress(dense, 16, torch.device("cpu"))
    w = compressed[1].dense_weight().detach()
    assert (
        float((w - dense[1].weight.detach()).norm() / dense[1].weight.detach().norm()) < 1e-5 and err < 1e-5
    )
    assert torch.equal(compressed[3].weight, dense[3].weight) and torch.equal(
        compressed[3].bias, dense[3].bias
    )


def test_each_epoch_and_each_stage_shuffles_differently(tmp_path, monkeypatch):
    import tensortrain.demo as demo

    seeds, real = [], demo._batches
    monkeypatch.setattr(
        demo, "_batches", lambda ctx, seed, epoch: (seeds.append((seed, epoch)), real(ctx, seed, epoch))[1]
    )
    cfg = demo.DemoConfig(out=str(tmp_path), epochs_tt=2, epochs_dense=1, epochs_finetune=1, batch_size=32)
    demo.run_mnist_demo(cfg, data=_tiny_mnist())
    assert [epoch for _, epoch in seeds] == [0, 1, 0, 0]
    assert len({seed for seed, _ in seeds}) == 3  # one stream per stage a, b, d
    ctx = type("Ctx", (), {"y_train": torch.zeros(12, dtype=torch.long), "world": 1, "rank": 0})()
    ctx.device, ctx.cfg = torch.device("cpu"), cfg
    first, second = (torch.cat(real(ctx, 97, e)).tolist() for e in (0, 1))
    assert sorted(first) == sorted(second) == list(range(12)) and first != second


def test_threads_and_a_whole_subset_and_a_batch_not_split_over_processes(tmp_path, monkeypatch):
    import tensortrain.demo as demo

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # recorded, not applied
    quick = dict(out=str(tmp_path), epochs_tt=0, epochs_dense=0, epochs_finetune=0)
    results = demo.run_mnist_demo(
        demo.DemoConfig(**quick, threads=3, train_subset=64, test_subset=32), data=_tiny_mnist()
    )
    assert calls == [3] and len(results) == 4  # (a subset of all the images there are is not "more than")
    monkeypatch.setattr(demo.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(demo.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(demo.dist, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch size 64 is not divisible by the 3 processes"):
        demo.run_mnist_demo(demo.DemoConfig(**quick), data=_tiny_mnist())


def test_a_test_subset_is_not_the_tutorial():
    from tensortrain.demo import DemoConfig, is_tutorial

    assert is_tutorial(DemoConfig(seed=5, threads=1))
    assert not is_tutorial(DemoConfig(test_subset=1000)) and not is_tutorial(DemoConfig(train_subset=1000))


def test_seeds_of_the_tutorial_recipe_are_compared_with_the_targets(monkeypatch, tmp_path, capsys):
    import tensortrain.demo_seeds as demo_seeds
    from tensortrain.demo_config import TARGETS, StageResult

    def fake_seeds(cfg, seeds, log=None, progress=None):
        return {
            s: [StageResult(k, f"net {k}", 10, None, TARGETS.get(k, 0.6), 0.0, 1, None) for k in "abcd"]
            for s in seeds
        }

    monkeypatch.setattr(demo_seeds, "run_mnist_seeds", fake_seeds)
    assert main(["demo", "mnist", "--out", str(tmp_path), "--no-progress", "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    for stage in TARGETS:
        assert f"target {stage}: met by 2 of 2 runs" in out
    assert "target c:" not in out  # stage c (the compression before fine-tuning) has no target


def test_an_epochs_loss_is_the_mean_of_its_batch_losses(tmp_path, monkeypatch):
    import torch.nn.functional as F

    import tensortrain.demo as demo

    losses, real = [], F.cross_entropy

    def recorded(*args, **kwargs):
        loss = real(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(F, "cross_entropy", recorded)
    cfg = demo.DemoConfig(out=str(tmp_path), epochs_tt=1, epochs_dense=0, epochs_finetune=0, batch_size=8)
    results = demo.run_mnist_demo(cfg, data=_tiny_mnist())
    assert len(losses) == 64 // 8  # stage a's one epoch: 8 batches
    assert results[0].history[0]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_stage_c_reports_the_relative_error_of_the_compressed_weight():
    import tensortrain.demo as demo

    torch.manual_seed(0)
    dense = demo.dense_net()
    compressed, err = demo._compress(dense, 1, torch.device("cpu"))
    w, w0 = compressed[1].dense_weight().detach(), dense[1].weight.detach()
    assert err == pytest.approx(float((w - w0).norm() / w0.norm()), rel=1e-6) and 0.5 < err < 1


def test_the_table_sets_the_t3f_tutorials_accuracies_beside_ours():
    from tensortrain.demo import StageResult, format_table
    from tensortrain.demo_config import T3F_TUTORIAL

    table = format_table([StageResult(s, f"net {s}", 10, 5, 0.5, 1.0, 1, 1e-3) for s in "abcd"])
    rows = table.splitlines()[2:]
    for row, (stage, acc) in zip(rows, T3F_TUTORIAL.items(), strict=True):
        assert row.startswith(f"| {stage} | net {stage} |") and f"| 50.00% | {100 * acc:.2f}% |" in row


def test_the_dense_layers_start_as_keras_dense_glorot_uniform_and_zero_bias():
    import math

    import tensortrain.demo as demo

    torch.manual_seed(0)
    for model in (demo.dense_net(), demo.tt_net(4)):
        for layer in (m for m in model if isinstance(m, torch.nn.Linear)):
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert torch.count_nonzero(layer.bias) == 0
            assert 0.95 * bound < float(layer.weight.detach().abs().max()) <= bound


def test_the_tutorial_recipe_is_its_batch_size_too():
    from tensortrain.demo import DemoConfig, is_tutorial

    assert not is_tutorial(DemoConfig(batch_size=32)) and not is_tutorial(DemoConfig(compress_rank=8))


def test_the_mnist_folder_is_absolute_with_dots_resolved(tmp_path, monkeypatch):
    from tensortrain.demo_config import DemoConfig, mnist_folder

    monkeypatch.chdir(tmp_path)
    assert mnist_folder(DemoConfig(data="sub/../data")) == str(tmp_path / "data")


def test_results_record_the_threads_the_run_had_and_the_compression_error(tmp_path):
    import tensortrain.demo as demo

    lines = []
    cfg = demo.DemoConfig(out=str(tmp_path), epochs_tt=0, epochs_dense=0, epochs_finetune=1)
    results = demo.run_mnist_demo(cfg, data=_tiny_mnist(), log=lines.append)
    assert [r.epochs for r in results] == [0, 0, 0, 1] and len(results[3].history) == 1  # d: epochs_finetune
    report = json.loads((tmp_path / "results.json").read_text())
    assert cfg.threads is None and report["threads"] == torch.get_num_threads()
    err = report["compressed_weight_relative_error"]
    assert (
        0 < err < 1
        and f"c: relative Frobenius error of the compressed first-layer weight: {err:.4f}" in lines
    )


def test_the_write_check_of_an_existing_output_folder_leaves_nothing_there(tmp_path):
    from tensortrain.demo_output import check_writable

    check_writable(tmp_path, tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


def test_seeds_load_mnist_once_check_every_folder_and_record_the_data_folder(tmp_path, monkeypatch):
    import tensortrain.demo as demo
    import tensortrain.demo_seeds as demo_seeds

    loads, checked, check = [], [], demo_seeds.check_writable

    def fake_load(root=None):
        loads.append(root)
        return _tiny_mnist()

    monkeypatch.setattr(demo_seeds, "load_mnist", fake_load)
    monkeypatch.setattr(demo, "load_mnist", fake_load)
    monkeypatch.setattr(
        demo_seeds, "check_writable", lambda *folders: (checked.append(folders), check(*folders))
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENSORTRAIN_DATA", "sub/../data")
    cfg = demo.DemoConfig(out="out", epochs_tt=0, epochs_dense=0, epochs_finetune=0)
    demo_seeds.run_mnist_seeds(cfg, [3, 0])
    assert loads == [None]  # once, for every seed
    assert checked == [(Path("out"), Path("out/seed-3"), Path("out/seed-0"))]  # all, before the first seed
    report = json.loads((tmp_path / "out/seeds.json").read_text())
    assert report["data_folder"] == str(tmp_path / "data") and report["seeds"] == [3, 0]  # in the order run
