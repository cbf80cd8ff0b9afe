"""The suite runner benchmarks/run.py (no timing judged): repeats, peers timed once, each section's rows, the tables,
its arguments and results file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

# the results' metadata the markdown needs (a real run records much more)
META = {"threads": 1, "torch": "x", "load_before": "0"}


def test_interleaved_marks_peers_timed_once():
    """A slow peer was timed on its first (setup) call, unmarked; with every fn dropped, StopIteration."""
    calls = {"n": 0}

    def peer() -> None:
        calls["n"] += 1
        time.sleep(0.05 if calls["n"] == 1 else 0.02)

    out = run.interleaved({"fast": lambda: None, "peer": peer}, 3, droppable=("peer",), slow_s=0.01)
    assert out["_once"] == ["peer"] and out["_n"] == 3
    assert calls["n"] == 2  # a second call was timed, after the first one's setup
    alone = run.interleaved({"peer": peer}, 3, droppable=("peer",), slow_s=0.001)
    assert alone["_once"] == ["peer"] and alone["_n"] == 0


def test_interleaved_keeps_a_minimum_of_repeats_past_its_budget():
    out = run.interleaved({"a": lambda: time.sleep(0.002)}, 11, budget_s=0.0, min_repeats=7)
    assert out["_n"] == 7
    assert run.interleaved({"a": lambda: None}, 11, budget_s=0.0, min_repeats=20)["_n"] == 11


@pytest.mark.parametrize("shuffled", [False, True])
def test_interleaved_shuffles_the_turn_order_only_when_asked(shuffled):
    """A/B tools take the fns in a fresh order every repeat: in a fixed one, "old" was always timed right after
    nn.Linear and "new" right after "old", a slot that favoured "new" by a few per cent."""
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("dense", "old", "new")}
    out = run.interleaved(fns, 30, warmup=0, budget_s=1e9, shuffled=shuffled)
    assert out["_n"] == 30 and sorted(calls) == sorted(["dense", "old", "new"] * 30)
    turns = [calls[i : i + 3] for i in range(0, 90, 3)]
    # within the repeats, how often each fn came right after nn.Linear: balanced over whole cycles of the six
    # orders (a fresh random order each repeat had left "old" there 6 times in 11, "new" 3)
    after = {
        k: sum(t[i + 1] == k for t in turns for i in range(2) if t[i] == "dense") for k in ("old", "new")
    }
    assert after == ({"old": 10, "new": 10} if shuffled else {"old": 30, "new": 0})
    assert len({tuple(t) for t in turns}) == (6 if shuffled else 1)


def test_train_step_adds_nothing_into_grad():
    """Timed steps called .backward() again and again: every step added its gradients into .grad, an extra pass
    of the dense weight's size for nn.Linear (up to 1.6x its step time) and of the small cores for TT layers."""
    import torch

    import tensortrain as tt

    torch.manual_seed(0)
    for layer in (torch.nn.Linear(12, 10), tt.nn.TTLinear(12, 10, tt_rank=2)):
        x = torch.randn(5, 12, requires_grad=True)
        grads = run.train_step(layer, x)
        assert all(p.grad is None for p in layer.parameters()) and x.grad is None
        layer(x).sum().backward()
        for g, t in zip(grads, [x, *layer.parameters()], strict=True):
            assert torch.allclose(g, t.grad)
        frozen_input = run.train_step(layer, x.detach())  # (a first layer: parameters only)
        assert len(frozen_input) == len(list(layer.parameters()))
    layer = torch.nn.Linear(12, 10)
    layer.weight.requires_grad_(False)  # (cell.py --frozen: autograd refused a gradient of a frozen weight)
    gx, gbias = run.train_step(layer, x)
    assert torch.allclose(gx, layer.weight.sum(0).expand(5, 12))
    assert torch.equal(gbias, torch.full((10,), 5.0))


def test_interleaved_takes_medians_and_times_close_peers_like_the_layers(monkeypatch):
    """On a fake clock: each fn's median (one slow call moved a mean), an untimed call before each timed one with
    warm_each, and a peer within twice the slowest layer's warm-up timed in every repeat like the layers (timed
    once, a single call against their medians decided cells within 10%)."""
    import types

    clock = {"now": 0.0}
    monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    def costs(*seconds: float):  # noqa: ANN202
        """A fn whose calls take these fake seconds in turn (the last one repeats), counting its calls."""

        def f() -> None:
            clock["now"] += seconds[min(f.calls, len(seconds) - 1)]
            f.calls += 1

        f.calls = 0
        return f

    # (listed first, the peer is still warmed up after the layer, whose slowest warm-up call counts, not its last)
    out = run.interleaved({"peer": costs(4.0), "layer": costs(3.0, 1.0)}, 3, droppable=("peer",))
    assert out == {"peer": 4.0, "layer": 1.0, "_n": 3, "_once": []}
    out = run.interleaved({"peer": costs(7.0), "layer": costs(3.0, 1.0)}, 3, droppable=("peer",))
    assert out["_once"] == ["peer"] and out["peer"] == 7.0 and out["_n"] == 3
    out = run.interleaved({"a": costs(0.0, 0.0, 0.001, 0.002, 0.003, 0.004, 0.1)}, 5)
    assert out["a"] == pytest.approx(0.003) and out["_n"] == 5
    for warm_each, calls in ((False, 2 + 3), (True, 2 + 2 * 3)):
        f = costs(0.001)
        run.interleaved({"a": f}, 3, warm_each=warm_each)
        assert f.calls == calls


def test_memory_columns_count_what_a_step_allocates_and_keeps():
    """The bytes kept for backward count each storage once and leave out the input and the parameters, the peak
    is the most allocated at once (not the last count, nor frees added as allocations), and a TT layer's peak adds
    the tt.workspace scratch that it alone holds between steps."""
    import torch

    import tensortrain as tt

    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 10)
    xg = torch.randn(64, 12, requires_grad=True)
    # (relu keeps its output for backward; addmm keeps only the input and the weight)
    assert run.saved_bytes(lambda: torch.relu(lin(xg)), [xg, *lin.parameters()]) == 64 * 10 * 4

    def squared() -> torch.Tensor:
        h = torch.relu(lin(xg))
        return h * h  # (the product keeps relu's output twice more: still one storage)

    assert run.saved_bytes(squared, [xg, *lin.parameters()]) == 64 * 10 * 4

    def step() -> None:
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)
        del a
        c = torch.ones(1 << 19)
        del b, c

    assert run.peak_bytes(step) == 8 << 20

    class BorrowsScratch(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with tt.workspace.scratch((1 << 20,), torch.float32, x.device) as buf:  # 4 MiB, held afterwards
                buf.zero_()
            return super().forward(x)

    try:
        with tt.workspace.scratch((2 << 20,), torch.float32, xg.device):
            pass  # another module's 8 MiB, held before: not this layer's
        peak = run.tt_peak_bytes(BorrowsScratch(12, 10), xg)
        assert tt.workspace.held_bytes() == 4 << 20 and 4 << 20 < peak < (4 << 20) + (1 << 16)
    finally:
        tt.workspace.empty_cache()


def test_the_results_name_the_cpu_and_a_failed_write_keeps_the_last_file(tmp_path, monkeypatch):
    """The CPU's model name, not /proc/cpuinfo's field name; a write that fails midway (an unserializable value)
    leaves the previous results file whole, not truncated."""
    import io

    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n"
    with monkeypatch.context() as m:
        m.setattr(run, "open", lambda *a, **k: io.StringIO(cpuinfo), raising=False)
        assert run.cpu_model() == "Intel(R) Xeon(R) Processor"
    path = str(tmp_path / "results.json")
    run.write_json(path, {"layers": [1]})
    with pytest.raises(TypeError):
        run.write_json(path, {"layers": [object()]})
    assert json.loads(Path(path).read_text()) == {"layers": [1]}


def test_layer_rows_hold_each_turns_times_and_the_plans_figures(monkeypatch, capsys):
    """A layer row's times, repeats and "timed once" marks come from their own turn (forward or training), its
    plans, floor and GFLOP/s from the TT layer's plans at its batch and the dense FLOPs (3 products in training),
    its kept-for-backward bytes leave the input out, its peak includes the input's gradient, the progress line
    prints its ratios, and a bounded row, timed in the training turn, only where the free plan keeps more than the
    dense weight's bytes."""
    import torch

    import tensortrain as tt

    fwd = {"dense": 1e-3, "peer": 2e-3, "tt": 3e-3}
    train = {"dense": 4e-3, "peer": 5e-3, "tt": 8e-3, "bounded": 12e-3}
    turns = []

    def fake_interleaved(fns, repeats, **kw):  # noqa: ANN001, ANN202
        training = torch.is_grad_enabled()  # (forward turns run under no_grad)
        turns.append((training, sorted(fns), kw))
        times = train if training else fwd
        once = [] if training else ["peer"]
        return {k: times[k] for k in fns} | {"_n": 4 if training else 5, "_once": once}

    monkeypatch.setattr(run, "interleaved", fake_interleaved)
    notes = {"t3f": "skipped: not installed"}
    monkeypatch.setattr(run, "peer_layers", lambda *a: ({"peer": torch.nn.Linear(12, 6)}, dict(notes)))
    rows = run.bench_layers([("tiny", 12, 6, (3, 4), (2, 3), 2)], (1, 512), repeats=5, peers=True)
    assert [(t[0], t[1]) for t in turns] == [
        (False, ["dense", "peer", "tt"]),
        (True, ["dense", "peer", "tt"]),
    ] * 2
    assert all(t[2]["droppable"] == ("peer",) and t[2]["warm_each"] for t in turns)
    ref = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3))
    printed = capsys.readouterr().out.splitlines()
    for row, b, line in zip(rows, (1, 512), printed, strict=True):
        assert row["fwd_s"] == fwd and row["fwdbwd_s"] == {k: train[k] for k in fwd}
        assert row["peer_notes"] == notes
        assert row["repeats"] == 5 and row["repeats_fwdbwd"] == 4
        assert row["timed_once"] == {"fwd": ["peer"], "fwdbwd": []}
        p_inf, p_tr = ref.plan(b, requires_grad=False), ref.plan(b, requires_grad=True)
        training_flops = p_tr.flops_forward + p_tr.flops_backward
        assert row["plan_forward"] == p_inf.describe() and row["plan_training"] == p_tr.describe()
        assert row["plan_flops_forward"] == p_inf.flops_forward
        assert row["flop_floor_forward"] == tt.contraction.flop_floor(ref.weight, b)
        assert (
            line == f"  tiny B={b}: fwd tt 3 ms / dense 1 ms = 3.00x; fwd+bwd 2.00x; plan {p_inf.describe()}"
        )
        assert row["plan_flops_training"] == training_flops
        dense_flops = 2 * b * 12 * 6
        assert row["gflops_fwd"] == pytest.approx(
            {"tt": p_inf.flops_forward / 3e-3 / 1e9, "dense": dense_flops / 1e-3 / 1e9}
        )
        assert row["gflops_fwdbwd"] == pytest.approx(
            {"tt": training_flops / 8e-3 / 1e9, "dense": 3 * dense_flops / 4e-3 / 1e9}
        )
        # (nn.Linear keeps only its input and weight for backward)
        assert row["saved_bytes"]["dense"] == row["saved_bytes"]["peer"] == 0
        assert row["saved_bytes"]["tt"] <= 12 * 6 * 4 and "bounded" not in row
        assert row["peak_bytes"]["tt"] >= b * 12 * 4  # (the input's gradient alone)
    # (784x625 at rank 16, batch 64: the free sweep keeps 2.8 MiB, the dense weight takes 1.9 MiB)
    case = ("784x625-r16", 784, 625, (4, 7, 4, 7), (5, 5, 5, 5), 16)
    (row,) = run.bench_layers([case], (64,), repeats=5, peers=False)
    assert [(t[0], t[1]) for t in turns[4:]] == [(False, ["dense", "tt"]), (True, ["bounded", "dense", "tt"])]
    ref = tt.nn.TTLinear(784, 625, tt_rank=16, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    ref.max_saved_bytes = 784 * 625 * 4
    bounded = row["bounded"]
    assert bounded["max_saved_bytes"] == 784 * 625 * 4 and bounded["fwdbwd_s"] == 12e-3
    assert bounded["plan_training"] == ref.plan(64, requires_grad=True).describe() != row["plan_training"]
    assert bounded["saved_bytes"] <= 784 * 625 * 4 < row["saved_bytes"]["tt"]


def test_the_stack_table_names_the_first_layers_plan_apart():
    """The stack's input needs no gradient, so its first layer's backward computes none: the label is the inner
    layers' training plan, then the first layer's own in parentheses."""
    import torch

    import tensortrain as tt

    torch.manual_seed(0)
    layers = [tt.nn.TTLinear(12, 12, tt_rank=2, in_dims=(3, 4), out_dims=(3, 4)) for _ in range(2)]
    stack = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU())
    inner = stack[2].plan(64, requires_grad=True).describe()
    first = stack[0].plan(64, requires_grad=True, input_requires_grad=False).describe()
    assert first != inner and run._stack_plan(stack, 64) == f"{inner} (first layer: {first})"


@pytest.mark.parametrize("peers", [False, True])
def test_small_algebra_rows_pair_our_time_with_torchtts(monkeypatch, peers):
    """Each op's row holds our time and torchTT's for the same op (not ours twice, every ratio 1.00x), and no
    torchTT time with --no-peers; the table's ratio is ours over torchTT's."""
    if peers:
        pytest.importorskip("torchtt")
    seen = []

    def fake_interleaved(fns, repeats, **kw):  # noqa: ANN001, ANN202
        seen.append(sorted(fns))
        return {k: 3e-6 if k.startswith("torchtt|") else 1e-6 for k in fns}

    monkeypatch.setattr(run, "interleaved", fake_interleaved)
    small = run._bench_small_algebra(1, peers)
    theirs = 3e-6 if peers else None
    assert len(small["ops"]) == 7 and all(v == {"tt": 1e-6, "torchtt": theirs} for v in small["ops"].values())
    assert all(k.startswith("tt|") for k in seen[-1]) is not peers
    algebra = {"case": "16^8 r32", "flat_inner_s": 1e-3, "frobenius_norm_s": 2e-3, "small": small}
    lines = run.markdown({"meta": META, "algebra": algebra})
    add_row = "| add | 1 | 3 | 0.33x |" if peers else "| add | 1 | - | - |"  # (ours / theirs)
    assert add_row in lines.splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "argument --repeats: expected an int >= 1, got 0"),
        (["--threads", "-1"], "argument --threads: expected an int >= 1, got -1"),
        (["--sections", "layers,bogus"], "--sections: unknown ['bogus']"),
        (["--sections", ","], "--sections: unknown none given"),
        (["--json", "no/such/folder/x.json"], "its folder does not exist"),
    ],
)
def test_run_refuses_bad_arguments_before_running(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        run.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_the_committed_results_render():
    """Every committed layer results file renders (an older one, predating the embedding's rebuilt-halves timing,
    raised KeyError)."""
    for path in sorted(BENCH.glob("results*.json")):
        data = json.loads(path.read_text())
        if "layers" in data and "meta" in data and "gpu" not in path.name:
            assert "| case | batch |" in run.markdown(data)


# torchTT warns when imported (no C++ extension) and when built (NumPy): under filterwarnings=error it was left out
@pytest.mark.filterwarnings(
    "ignore:(?s).*C\\+\\+ implementation not available:UserWarning",
    "ignore:__array_wrap__ must accept context:DeprecationWarning",
)
def test_peers_get_the_tt_layers_ranks():
    """tltorch and torchTT were built at rank 64 where TTLinear clips the first rank to 16 (768x3072): each peer's
    cores have our cores' shapes, and it maps 768 inputs to 3072 outputs (torchTT's, in and out swapped, did not)."""
    pytest.importorskip("tltorch")
    pytest.importorskip("torchtt")
    import torch

    import tensortrain as tt

    ttl = tt.nn.TTLinear(768, 3072, tt_rank=64, in_dims=(4, 4, 6, 8), out_dims=(4, 8, 8, 12))
    peers, _ = run.peer_layers((4, 4, 6, 8), (4, 8, 8, 12), ttl.weight.tt_ranks)
    ours = [p.shape for p in ttl.cores.parameters()]
    assert sorted(peers) == ["tltorch", "tltorch-rec", "torchtt"]
    for layer in peers.values():
        assert [p.shape for n, p in layer.named_parameters() if not n.endswith("bias")] == ours
        assert layer(torch.randn(2, 768)).shape == (2, 3072)


def test_the_results_commit_says_when_the_checkout_was_modified(monkeypatch):
    """Results measured with tracked files changed carry "+dirty" after the commit (else they read as that
    commit's own numbers), and no commit outside a git checkout."""
    import subprocess
    import types

    def git(diff_rc: int | None):  # noqa: ANN202
        def fake_run(cmd, **kw):  # noqa: ANN001, ANN202
            if diff_rc is None:
                raise subprocess.CalledProcessError(128, cmd)
            return types.SimpleNamespace(stdout="abc1234\n", returncode=diff_rc if "diff" in cmd else 0)

        return types.SimpleNamespace(run=fake_run, CalledProcessError=subprocess.CalledProcessError)

    for diff_rc, commit in ((0, "abc1234"), (1, "abc1234+dirty"), (None, None)):
        monkeypatch.setattr(run, "subprocess", git(diff_rc))
        assert run.git_commit() == commit


def test_stack_rows_time_free_bounded_and_dense_stacks_of_one_depth(monkeypatch):
    """A stack row trains the TT stack free and with each layer's max_saved_bytes at its dense weight's bytes,
    against as deep a stack of nn.Linear, warm, on an input that needs no gradient; its plans, times and peaks
    are each stack's own (a mix-up would credit the bound with the free stack's memory or time)."""
    import tensortrain as tt

    monkeypatch.setattr(run, "STACK_CASES", [(784, (4, 7, 4, 7), 4)])
    monkeypatch.setattr(run, "STACK_DEPTH", 2)
    monkeypatch.setattr(run, "STACK_BATCHES", (1024,))
    steps = []
    monkeypatch.setattr(run, "train_step", lambda m, x: steps.append((m, x)))
    times = {"free": 3e-3, "bounded": 4e-3, "dense": 2e-3}
    stacks, turns = {}, []

    def fake_interleaved(fns, repeats, **kw):  # noqa: ANN001, ANN202
        turns.append((sorted(fns), kw))
        for k, f in fns.items():
            f()
            stacks[k] = steps[-1][0]
        return {k: times[k] for k in fns} | {"_n": repeats, "_once": []}

    monkeypatch.setattr(run, "interleaved", fake_interleaved)
    peaks = {"free": 3 << 20, "bounded": 2 << 20, "dense": 5 << 20}
    monkeypatch.setattr(
        run, "tt_peak_bytes", lambda m, x: next(peaks[k] for k, s in stacks.items() if s is m)
    )
    (row,) = run.bench_stack(7)
    assert turns == [(["bounded", "dense", "free"], {"warm_each": True})]
    assert row["case"] == "2 x TTLinear(784, 784) r4 + ReLU" and row["batch"] == 1024
    assert row["fwdbwd_s"] == times and row["peak_bytes"] == peaks
    assert all(x.shape == (1024, 784) and not x.requires_grad for _, x in steps)
    assert [type(m).__name__ for m in stacks["dense"]] == ["Linear", "ReLU"] * 2
    bounds = {k: [m.max_saved_bytes for m in stacks[k][::2]] for k in ("free", "bounded")}
    assert bounds == {"free": [None, None], "bounded": [784 * 784 * 4] * 2}
    ref = tt.nn.TTLinear(784, 784, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(4, 7, 4, 7))
    free = ref.plan(1024, requires_grad=True).describe()
    ref.max_saved_bytes = 784 * 784 * 4
    bounded = ref.plan(1024, requires_grad=True).describe()
    assert free != bounded  # (the bound changes this case's plan: each label must be its own stack's)
    assert row["plan_training"]["free"].startswith(free)
    assert row["plan_training"]["bounded"].startswith(bounded)


def test_decomposition_rows_hold_each_methods_median_and_error(monkeypatch):
    """Each method's row holds the median of its timed calls and the relative error of its own result against its
    own matrix (Gaussian or structured), and its error over exact's on that matrix; each rounding row its own
    method's time and error; the table prints them, exact's ratio as 1."""
    import itertools
    import types

    import torch

    import tensortrain as tt

    gen = torch.Generator().manual_seed(5)
    calls, rounds = [], {}

    # (random rank-2 results, a different one per call: no TT-SVD of 1024 x 1024 or rounding of rank 64)
    def to_tt_matrix(w, shape, max_tt_rank, method="auto"):  # noqa: ANN001, ANN202
        calls.append((w, shape, max_tt_rank, method, tt.random_matrix(shape, tt_rank=2, generator=gen)))
        return calls[-1][-1]

    def round_(x, max_tt_rank, method="auto"):  # noqa: ANN001, ANN202
        rounds[method] = (x, max_tt_rank, tt.random_matrix([[8] * 4] * 2, tt_rank=2, generator=gen))
        return rounds[method][-1]

    monkeypatch.setattr(tt, "to_tt_matrix", to_tt_matrix)
    monkeypatch.setattr(tt, "round", round_)
    # each method's three timed calls take 1, 5 and 2 fake seconds: their median is 2
    ticks = itertools.accumulate(itertools.cycle([1.0, 1.0, 1.0, 5.0, 1.0, 2.0]))
    monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    fake_times = {"exact": 0.25, "auto": 0.125}

    def fake_interleaved(fns, repeats, **kw):  # noqa: ANN001, ANN202
        for f in fns.values():
            f()
        return {k: fake_times[k] for k in fns}

    monkeypatch.setattr(run, "interleaved", fake_interleaved)
    out = run.bench_decompositions(True, 3)

    def rel_error(dense: torch.Tensor, approx: torch.Tensor) -> float:
        return float(torch.linalg.norm(dense - approx) / torch.linalg.norm(dense))

    methods = ("exact", "auto", "randomized")
    assert [c[3] for c in calls] == [m for m in methods for _ in range(3)] * 2
    assert all(c[1] == [[4, 8, 8, 4], [4, 8, 8, 4]] and c[2] == 32 for c in calls)
    for i, key in enumerate(("to_tt_matrix", "to_tt_matrix_structured")):
        rows = out[key]
        for j, method in enumerate(methods):
            w, *_, res = calls[9 * i + 3 * j + 2]  # (its last call's result is the one scored)
            assert rows[method]["s"] == 2.0 and rows[method]["n"] == 3
            assert rows[method]["rel_error"] == pytest.approx(rel_error(w, tt.full(res)))
        for method in ("auto", "randomized"):
            ratio = rows[method]["rel_error"] / rows["exact"]["rel_error"]
            assert rows[method]["error_ratio_vs_exact"] == pytest.approx(ratio)
    dense = tt.full(rounds["exact"][0])
    for method in ("exact", "auto"):
        x, rank, res = rounds[method]
        assert rank == 16 and out[f"round_{method}"]["s"] == fake_times[method]
        assert out[f"round_{method}"]["rel_error"] == pytest.approx(rel_error(dense, tt.full(res)))
    lines = run.markdown({"meta": META, "decompositions": out}).splitlines()
    st, ra = out["to_tt_matrix_structured"], out["round_auto"]
    head = "| to_tt_matrix 1024x1024 (structured) r32 method="
    assert f"{head}exact | 2 | {st['exact']['rel_error']:.6f} | 1.0000 |" in lines
    assert (
        f"{head}auto | 2 | {st['auto']['rel_error']:.6f} | {st['auto']['error_ratio_vs_exact']:.4f} |"
        in lines
    )
    assert f"| round ttm 8^4x8^4 r64 -> r16 (round_auto) | 0.125 | {ra['rel_error']:.6f} | |" in lines


def test_embedding_row_times_lookups_and_training_against_both_nn_embeddings(monkeypatch):
    """The TT lookup, the same lookup rebuilding its kept halves and nn.Embedding's are timed without autograd,
    training against nn.Embedding's dense and sparse=True gradients; the report line reads TT over each (a
    baseline left out or a ratio inverted would read as the opposite finding)."""
    import types

    import torch

    made = []

    def embedding(v, d, sparse=False):  # noqa: ANN001, ANN202
        made.append(sparse)  # (on the meta device: the 1M x 128 tables are never allocated)
        return torch.nn.Embedding(v, d, sparse=sparse, device="meta")

    monkeypatch.setattr(run, "nn", types.SimpleNamespace(Embedding=embedding))
    fwd = {"dense": 1e-3, "tt": 3e-3, "tt_rebuilt": 5e-3}
    train = {"dense": 8e-3, "tt": 4e-3, "dense_sparse": 2e-3}
    turns = []

    def fake_interleaved(fns, repeats, **kw):  # noqa: ANN001, ANN202
        training = torch.is_grad_enabled()
        turns.append((training, sorted(fns), kw))
        return {k: (train if training else fwd)[k] for k in fns} | {"_n": repeats, "_once": []}

    monkeypatch.setattr(run, "interleaved", fake_interleaved)
    e = run.bench_embedding(3)
    assert turns == [
        (False, ["dense", "tt", "tt_rebuilt"], {"warm_each": True}),
        (True, ["dense", "dense_sparse", "tt"], {"warm_each": True}),
    ]
    assert made == [False, True] and e["fwd_s"] == fwd and e["fwdbwd_s"] == train
    assert e["case"] == "1000000x128 r16, 4096 tokens" and e["params"]["dense"] == 128_000_000
    assert run.markdown({"meta": META, "embedding": e}).splitlines()[-1] == (
        "TTEmbedding 1000000x128 r16, 4096 tokens: lookup 3 ms / nn.Embedding 1 ms (3.0x; 5 ms rebuilding the "
        "kept halves); lookup+backward 4 ms / 8 ms (0.50x), 2 ms with sparse=True (2.00x); parameters "
        f"{e['params']['tt']:,} / 128,000,000"
    )


def test_demo_row_is_seconds_per_epoch_of_938_steps(tmp_path, monkeypatch):
    """A step's seconds are the timed steps' time over their count (the warm-up steps untimed), an epoch is 938
    batches of 64 (60,000 images), the demo's own results file is referenced where it exists, and the report
    reads each net's own seconds per epoch."""
    import types

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "demo").mkdir(parents=True)
    (tmp_path / "out" / "demo" / "results.json").write_text("{}")
    clock = iter([0.0, 0.002, 1.0, 1.001])  # the TT net's 2 timed steps take 2 ms, the dense net's 1 ms
    monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    dm = run.bench_demo(2)
    assert (dm["steps_timed"], dm["steps_per_epoch"], dm["batch_size"]) == (2, 938, 64)
    assert dm["tt_net_r4"] == pytest.approx({"s_per_step": 1e-3, "s_per_epoch": 0.938})
    assert dm["dense_net"] == pytest.approx({"s_per_step": 5e-4, "s_per_epoch": 0.469})
    assert dm["demo_results_json"] == "out/demo/results.json"
    assert run.markdown({"meta": META, "demo": dm}).splitlines()[-1] == (
        "MNIST demo training (batch 64, Adam, 2 timed steps, synthetic data of MNIST's size): TT net 0.938 "
        "s/epoch, dense net 0.469 s/epoch"
    )


def test_the_floors_section_counts_flops_without_timing(tmp_path, capsys):
    """--sections floors: per case and batch the planner's forward FLOPs and the fewest of any order, against
    dense; the floor never exceeds the plan's."""
    assert run.main(["--threads", "1", "--sections", "floors", "--json", str(tmp_path / "f.json")]) == 0
    rows = json.loads((tmp_path / "f.json").read_text())["floors"]
    assert len(rows) == len(run.LAYER_CASES) * len(run.BATCHES)
    assert all(r["floor_flops"] <= r["plan_flops"] for r in rows)
    r16 = next(r for r in rows if r["case"] == "784x625-r16" and r["batch"] == 64)
    assert r16["floor_flops"] == 76697600 and r16["dense_flops"] == 2 * 64 * 784 * 625
    assert "| 784x625-r16 | 64 |" in capsys.readouterr().out


def test_a_peer_that_fails_when_called_is_a_note_not_a_crash(monkeypatch):
    """A peer that built but raised in its forward or its backward aborted the whole run (every row before it
    lost)."""

    import torch

    class Broken(torch.nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN202
            raise RuntimeError("peer broke")

    class BreaksInBackward(torch.nn.Linear):
        def forward(self, x):  # noqa: ANN001, ANN202
            y = super().forward(x)
            if y.requires_grad:
                y.register_hook(self.boom)
            return y

        @staticmethod
        def boom(grad):  # noqa: ANN001, ANN205
            raise RuntimeError("backward broke")

    class FailsAtFive(torch.nn.Linear):
        def forward(self, x):  # noqa: ANN001, ANN202
            if x.shape[0] == 5:
                raise RuntimeError("too big")
            return super().forward(x)

    peers = {"torchtt": Broken(), "tltorch": FailsAtFive(12, 6), "tltorch-rec": BreaksInBackward(12, 6)}
    monkeypatch.setattr(run, "peer_layers", lambda *a: (peers, {}))
    rows = run.bench_layers([("tiny", 12, 6, (3, 4), (2, 3), 2)], (4, 5), repeats=1, peers=True)
    assert rows[0]["peer_notes"]["torchtt"].startswith("error at batch 4: RuntimeError: peer broke")
    assert rows[0]["peer_notes"]["tltorch-rec"].startswith("error at batch 4: RuntimeError: backward broke")
    assert "tltorch-rec" not in rows[0]["params"]
    # (a peer failing at a later batch only: noted in that row, timed in the earlier one)
    assert "tltorch" not in rows[0]["peer_notes"] and "tltorch" in rows[0]["params"]
    assert rows[1]["peer_notes"]["tltorch"].startswith("error at batch 5: RuntimeError: too big")
    # (the rest of the row is timed)
    assert "torchtt" not in rows[0]["params"] and rows[0]["params"]["tt"] > 0


def test_a_tltorch_forward_that_fails_to_build_is_noted_under_its_own_key(monkeypatch):
    """tensorly-torch's two forwards are built one by one: a failing "reconstructed" leaves "factorized" timed and
    says why under "tltorch-rec" (its note, filed under the timed "tltorch", was hidden and the column vanished)."""
    import math
    import types

    import torch

    def factorized_linear(in_dims, out_dims, *, factorization, rank, implementation):  # noqa: ANN001, ANN202
        if implementation == "reconstructed":
            raise RuntimeError("no reconstruction here")
        return torch.nn.Linear(math.prod(in_dims), math.prod(out_dims))

    monkeypatch.setitem(sys.modules, "tltorch", types.SimpleNamespace(FactorizedLinear=factorized_linear))
    layers, notes = run.peer_layers((3, 4), (2, 3), (1, 2, 1))
    assert "tltorch" in layers and "tltorch" not in notes and "tltorch-rec" not in layers
    assert notes["tltorch-rec"] == "error: RuntimeError: no reconstruction here"


def test_markdown_cells_are_the_results_numbers():
    """Each table cell is its own field of the results: a ratio is TT over dense (or bounded over free), a pair
    reads TT / dense, the plans stand in their columns' order, every peer note is shown and a turn cut short by
    the time budget says its repeats; a swapped or inverted cell would read as the opposite finding."""
    mib = 2**20
    layer = {
        "case": "tiny",
        "batch": 8,
        "plan_forward": "sweep rtl [0:2]",
        "plan_training": "full (W from halves split at core 1, one GEMM, W kept for backward)",
        "fwd_s": {"dense": 2e-3, "tt": 3e-3, "peer": 5e-3},
        "fwdbwd_s": {"dense": 4e-3, "tt": 9e-3, "peer": 2e-3},
        "repeats": 11,
        "repeats_fwdbwd": 5,
        "timed_once": {"fwd": ["peer"], "fwdbwd": []},
        "gflops_fwd": {"tt": 1.5, "dense": 7.0},
        "gflops_fwdbwd": {"tt": 2.5, "dense": 9.0},
        "plan_flops_forward": 4e9,
        "plan_flops_training": 12e9,
        "dense_flops_forward": 2e9,
        "flop_floor_forward": 3e9,
        "saved_bytes": {"dense": 1 * mib, "tt": 3 * mib, "peer": 0},
        "peak_bytes": {"tt": 6 * mib, "dense": 5 * mib},
        "peer_notes": {"t3f": "skipped: not installed"},
        "bounded": {
            "plan_training": "sweep rtl [0:2], step inputs recomputed in backward",
            "fwdbwd_s": 12e-3,
            "saved_bytes": mib / 2,
            "peak_bytes": 4 * mib,
        },
    }
    stack = {
        "case": "2 x TTLinear(12, 12) r2 + ReLU",
        "batch": 16,
        "plan_training": {"free": "sweep ltr [0:2]", "bounded": "sweep ltr [0:2], step inputs recomputed"},
        "fwdbwd_s": {"free": 7e-3, "bounded": 8e-3, "dense": 6e-3},
        "peak_bytes": {"free": 3 * mib, "bounded": 2 * mib, "dense": 1 * mib},
    }
    method = {"s": 0.5, "rel_error": 0.25, "error_ratio_vs_exact": 1.0}
    decompositions = {
        "to_tt_matrix": {
            "size": "64x64",
            "max_tt_rank": 4,
            "exact": method,
            "auto": method,
            "randomized": {"s": 0.125, "rel_error": 0.3, "error_ratio_vs_exact": 1.2},
        },
        "round_exact": {"case": "64x64", "s": 0.1, "rel_error": 0.0},
        "round_auto": {"case": "64x64", "s": 0.1, "rel_error": 0.0},
    }
    floor = {"case": "tiny", "batch": 1, "plan": "sweep rtl [0:1][1:2]"}
    floor |= {"plan_flops": 300, "floor_flops": 200, "dense_flops": 100}
    results = {
        "meta": META | {"repeats": 11},
        "layers": [layer],
        "stack": [stack],
        "decompositions": decompositions,
        "floors": [floor],
    }
    lines = run.markdown(results).splitlines()
    assert (
        "| tiny | 8 | sweep rtl [0:2]; full (W from halves split at core 1, one GEMM, W kept for backward) "
        "| 3 / 2 (**1.50x**) | 9 / 4 (**2.25x**, n=5) | 1.5 / 7; 2.5 / 9 | 4 / 2 (floor 3) | 3 / 1 | 6 / 5 "
        "| peer 2.50x (timed once), 0.50x; t3f: skipped: not installed |"
    ) in lines
    assert (
        "| tiny | 8 | sweep rtl [0:2], step inputs recomputed in backward | 12 / 9 / 4 (1.33x free) | 0.5 / 3 "
        "| 4 / 6 / 5 |"
    ) in lines
    assert (
        "| 2 x TTLinear(12, 12) r2 + ReLU | 16 | sweep ltr [0:2]; sweep ltr [0:2], step inputs recomputed "
        "| 7 / 8 / 6 | 3 / 2 / 1 |"
    ) in lines
    assert "| to_tt_matrix 64x64 (Gaussian) r4 method=randomized | 0.125 | 0.300000 | 1.2000 |" in lines
    assert "| tiny | 1 | sweep rtl [0:1][1:2] | 3.000x | 2.000x |" in lines


def test_run_takes_its_arguments_as_given(tmp_path, monkeypatch):
    """--quick runs three cases at 5 repeats (the stacks 5 instead of 7, unless --repeats says), --sections takes
    spaces after commas, --json a relative path, the metadata records the command and the timing mode and
    --no-peers reaches the layers; the floors section's plans are inference plans (nothing kept for backward)."""
    monkeypatch.chdir(tmp_path)
    argv = ["--threads", "1", "--quick", "--sections", "floors, floors", "--json", "f.json"]
    assert run.main(argv) == 0
    out = json.loads((tmp_path / "f.json").read_text())
    quick = {"784x625-r4", "784x625-r16", "768x3072-r16"}
    assert sorted((r["case"], r["batch"]) for r in out["floors"]) == sorted(
        (c, b) for c in quick for b in run.BATCHES
    )
    assert not any("backward" in r["plan"] for r in out["floors"])
    meta = out["meta"]
    assert meta["repeats"] == 5 and meta["layer_timing"] == "warm"
    assert meta["command"].endswith(" ".join(argv))

    got = []
    monkeypatch.setattr(run, "bench_layers", lambda *a: got.append(a[3]) or [])
    monkeypatch.setattr(run, "bench_stack", lambda repeats: got.append(repeats) or [])
    for extra in (
        ["layers", "--no-peers"],
        ["layers"],
        ["stack"],
        ["stack", "--quick"],
        ["stack", "--repeats", "3"],
    ):
        assert run.main(["--threads", "1", "--sections", *extra]) == 0
    assert got == [False, True, 7, 5, 3]
