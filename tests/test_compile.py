"""torch.compile(fullgraph=True): TT layers and the ops in their forward trace without graph breaks.

``fullgraph=True`` turns any graph break into an error, so a passing test proves a single graph. The
``aot_eager`` backend runs dynamo and AOTAutograd (forward and backward graphs) without a C++ compiler:
inductor's generated-code compile takes ~40 s for one small layer on 2 CPU cores (cold cache), too slow for every
case, and adds nothing about graph breaks. Outputs and gradients are compared with eager mode in float64. One
test runs the default backend, inductor, end to end on the tutorial's layer.
"""

from __future__ import annotations

import pytest
import torch

import tensortrain as tt
from conftest import assert_close
from strategies import random_tt

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(fn, **kw):
    return torch.compile(fn, fullgraph=True, backend=BACKEND, **kw)


def _grads(params) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


def _matches_eager(fn, args, params) -> torch.Tensor:
    """``fn(*args)`` compiled against eager: the same values and the same gradients of a squared-sum loss."""
    expected = fn(*args)
    (expected**2).sum().backward()
    expected_grads = _grads(params)
    got = _compiled(fn)(*args)
    (got**2).sum().backward()
    assert_close(got, expected)
    for g, e in zip(_grads(params), expected_grads, strict=True):
        assert_close(g, e)
    return got


@pytest.mark.parametrize("lead", [(2, 3), ()])
def test_tt_linear_layer(lead):
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(24, 10, tt_rank=3, in_dims=(2, 3, 4), out_dims=(1, 5, 2), dtype=torch.float64)
    x = torch.randn(*lead, 24, dtype=torch.float64, requires_grad=True)
    got = _matches_eager(layer, (x,), [x, *layer.parameters()])
    assert got.shape == (*lead, 10)


def test_padded_tt_linear_layer():
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(11, 13, tt_rank=3, in_dims=(3, 4), out_dims=(4, 4), pad=True, dtype=torch.float64)
    x = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    assert _matches_eager(layer, (x,), [x, *layer.parameters()]).shape == (5, 13)


def test_tt_linear_dynamic_batch():
    # one graph for any batch size: mark_dynamic makes dynamo fail instead of specializing the batch dim
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(12, 6, tt_rank=2, in_dims=(3, 4), out_dims=(2, 3), bias=False, dtype=torch.float64)
    f = _compiled(layer, dynamic=True)
    for b in (3, 7, 16):
        x = torch.randn(b, 12, dtype=torch.float64)
        torch._dynamo.mark_dynamic(x, 0)
        assert_close(f(x), layer(x))


def test_training_sweep_keeps_one_graph_and_exports_strictly():
    """The tutorial layer trains through a sweep: under dynamo its batch must stay symbolic (no guard on the
    eager-only SweepFunction threshold), so one graph serves every batch and strict export with a dynamic batch
    works in grad mode."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    assert layer.plan(16, requires_grad=True).kind == "sweep"
    f = _compiled(layer, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in (3, 7, 16, 100):
            x = torch.randn(b, 784)
            torch._dynamo.mark_dynamic(x, 0)
            y = f(x)
            assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
            y.sum().backward()
    batch = torch.export.Dim("batch")
    prog = torch.export.export(
        layer, (torch.randn(64, 784),), dynamic_shapes={"input": {0: batch}}, strict=True
    )
    x = torch.randn(9, 784)
    assert_close(prog.module()(x), layer(x), rtol=1e-5, atol=1e-5)


def test_full_and_matmul_with_dense(gen):
    w = random_tt(((2, 3), (4, 2)), (1, 3, 1), gen=gen)
    cores = [c.clone().requires_grad_() for c in w.tt_cores]
    x = torch.randn(8, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)

    def ops(x, y, *cores):
        m = tt.TensorTrain(list(cores))
        return tt.full(m), tt.matmul(m, x), tt.matmul(y, m)

    expected = ops(x, y, *cores)
    sum((e**2).sum() for e in expected).backward()
    expected_grads = _grads([x, y, *cores])

    got = _compiled(ops)(x, y, *cores)
    sum((g**2).sum() for g in got).backward()
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e)
    for g, e in zip(_grads([x, y, *cores]), expected_grads, strict=True):
        assert_close(g, e)


@pytest.mark.parametrize("batch", [None, 2])
def test_norms_and_inner_products(gen, batch):
    """Regularizers and losses built from norms compile in one graph (the norm's real dtype read through
    dtype.to_real() was a graph break), with the eager values and gradients."""
    x = random_tt((3, 4, 5), (1, 3, 2, 1), gen=gen, batch_size=batch)
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    cls = tt.TensorTrainBatch if batch else tt.TensorTrain

    def norms(*cores):
        t = cls(list(cores))
        return (
            tt.frobenius_norm(t),
            tt.frobenius_norm(t, epsilon=1e-5),
            tt.frobenius_norm_squared(t),
            tt.flat_inner(t, t),
        )

    expected = norms(*cores)
    sum(e.sum() for e in expected).backward()
    expected_grads = _grads(cores)
    got = _compiled(norms)(*cores)
    sum(g.sum() for g in got).backward()
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e)
    for g, e in zip(_grads(cores), expected_grads, strict=True):
        assert_close(g, e)


@pytest.mark.parametrize("batch", [None, 2])
def test_qr_and_svd_sweeps(gen, batch):
    """orthogonalize, round and TT-SVD with max_tt_rank (an epsilon's ranks depend on values: graph breaks) and
    the Riemannian projection compile in one graph, with the eager values and gradients: their NaN/inf checks
    (one sync each) were graph breaks."""
    x = random_tt((3, 4, 5), (1, 3, 3, 1), gen=gen, batch_size=batch)
    where = random_tt((3, 4, 5), (1, 2, 2, 1), gen=gen)
    cores = [c.clone().requires_grad_() for c in x.tt_cores]
    cls = tt.TensorTrainBatch if batch else tt.TensorTrain

    def sweeps(*cores):
        t = cls(list(cores))
        outs = [
            *tt.orthogonalize(t).tt_cores,
            *tt.orthogonalize(t, left_to_right=False).tt_cores,
            *tt.round(t, max_tt_rank=2).tt_cores,
            *tt.riemannian.project(t, where).tt_cores,
        ]
        if batch is None:
            outs += tt.to_tt_tensor(tt.full(t), max_tt_rank=2).tt_cores
        return outs

    expected = sweeps(*cores)
    sum(
        (e * torch.linspace(-1, 1, e.numel(), dtype=e.dtype).reshape(e.shape)).sum() for e in expected
    ).backward()
    expected_grads = _grads(cores)
    got = _compiled(sweeps)(*cores)
    sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).reshape(g.shape)).sum() for g in got).backward()
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e)
    for g, e in zip(_grads(cores), expected_grads, strict=True):
        assert_close(g, e)


def test_traced_sweeps_take_nan_through():
    """Traced, the sweeps do not check values (a check would break the graph): NaN comes out as NaN, where eager
    raises; and a TT-matrix's TT-SVD compiles too."""
    w = torch.randn(6, 8, dtype=torch.float64)
    got = _compiled(lambda w: tt.to_tt_matrix(w, ((2, 3), (2, 4)), max_tt_rank=2).tt_cores)(w)
    for g, e in zip(got, tt.to_tt_matrix(w, ((2, 3), (2, 4)), max_tt_rank=2).tt_cores, strict=True):
        assert_close(g, e)
    x = tt.random_tensor((3, 4), tt_rank=2, dtype=torch.float64)
    bad = [x.tt_cores[0], torch.full_like(x.tt_cores[1], float("nan"))]
    with pytest.raises(ValueError, match="core 1 contains NaN"):
        tt.orthogonalize(tt.TensorTrain(bad))
    torch._dynamo.reset()
    out = _compiled(lambda *c: tt.orthogonalize(tt.TensorTrain(list(c))).tt_cores)(*bad)
    assert torch.isnan(out[-1]).all()


@pytest.mark.parametrize("strategy", [s for s in tt.contraction.STRATEGIES if s != "auto"])
def test_every_contraction_plan(gen, strategy):
    # TTLinear's forward runs whichever plan the cost model picks: each must trace in one graph
    w = random_tt(((2, 5, 1), (3, 2, 4)), (1, 3, 2, 1), gen=gen)
    cores = [c.clone().requires_grad_() for c in w.tt_cores]
    x = torch.randn(6, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(10, dtype=torch.float64, generator=gen, requires_grad=True)
    params = [x, bias, *cores]

    def f(x, bias, *cores):
        return tt.contraction.linear(x, list(cores), bias, strategy=strategy)

    _matches_eager(f, params, params)


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_tt_embedding_layer(padding_idx):
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(
        20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4), padding_idx=padding_idx, dtype=torch.float64
    )
    idx = torch.tensor([[0, 7, 7, 3], [19, 3, 12, 0]])  # repeated indices and the padding index
    params = list(emb.parameters())
    weights = torch.randn(2, 4, 8, dtype=torch.float64)

    expected = emb(idx)
    (expected * weights).sum().backward()
    expected_grads = _grads(params)

    got = _compiled(emb)(idx)
    (got * weights).sum().backward()
    assert_close(got, expected)
    for g, e in zip(_grads(params), expected_grads, strict=True):
        assert_close(g, e)


# inductor's own imports use torch.jit.script_method, deprecated in torch 2.13; torch 2.6's inductor warns about
# its own config while caching
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Skipping serialization of skipfiles_inline_module_allowlist:UserWarning")
def test_inductor_compiles_the_tutorial_layer():
    """The default backend (inductor, generated C++) too: forward, backward and a no-grad recompile, one layer.

    Kept to one case: each inductor compile takes seconds on 2 cores (~20 s for this test).
    """
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(784, 625, tt_rank=4, in_dims=(4, 7, 4, 7), out_dims=(5, 5, 5, 5))
    x = torch.randn(64, 784)
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    got = _grads(list(layer.cores))
    layer(x).square().sum().backward()
    for a, b in zip(got, _grads(list(layer.cores)), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Skipping serialization of skipfiles_inline_module_allowlist:UserWarning")
def test_inductor_embedding_refuses_indices_outside_the_table():
    """Traced lookups sent out-of-range indices to -1, which inductor's gather wraps: -1, a padded row's index and
    one past the table all returned the last (padded) row, silently; eager and nn.Embedding raise."""
    torch.manual_seed(0)
    emb = tt.nn.TTEmbedding(18, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4)).eval()  # 20 rows, 2 padded
    compiled = torch.compile(emb, dynamic=False)
    good = torch.tensor([[0, 17], [5, 9]])
    with torch.no_grad():
        assert_close(compiled(good), emb(good))
        for bad in (18, 500, -1):
            with pytest.raises(RuntimeError, match="index out of bounds"):
                compiled(torch.tensor([[1, bad], [2, 3]]))


def test_jit_trace_follows_the_weights_and_script_is_refused():
    """A trace recorded after an inference call used to capture the cached merged cores as constants (stale
    after any weight change); a fresh layer failed the trace's own check (the first call filled the cache)."""
    import warnings

    torch.manual_seed(0)
    x = torch.randn(8, 784)
    cases = [
        (tt.nn.TTLinear(784, 625, tt_rank=4).eval(), x),
        (tt.nn.TTEmbedding(10000, 64, tt_rank=8), torch.randint(0, 10000, (50,))),
    ]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, arg in cases:
            module(arg)  # fills the inference cache
            traced = torch.jit.trace(module, (arg,))
            for c in module.cores:
                c.mul_(0.5)
            torch.testing.assert_close(traced(arg), module(arg))
        fresh = tt.nn.TTLinear(24, 10, tt_rank=3)
        torch.testing.assert_close(
            torch.jit.trace(fresh, (torch.randn(4, 24),))(x[:2, :24]), fresh(x[:2, :24])
        )
    # with gradients on, torch.jit.trace checks its graph by tracing again under no_grad: the plan must not depend
    # on the grad mode while tracing (it did, and the check failed: "Graphs differed across invocations")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer, arg in [(tt.nn.TTLinear(24, 10, tt_rank=3), torch.randn(4, 24)), (fresh, x[:2, :24])]:
            traced = torch.jit.trace(layer, (arg,))
            torch.testing.assert_close(traced(arg), layer(arg))
            traced(arg).sum().backward()  # the traced graph is differentiable
            assert all(c.grad is not None for c in layer.cores)
    with warnings.catch_warnings(), pytest.raises(TypeError, match="does not support torch.jit.script"):
        warnings.simplefilter("ignore")  # (torch 2.13 deprecates TorchScript)
        torch.jit.script(torch.nn.Sequential(tt.nn.TTLinear(24, 10, tt_rank=3)))


@pytest.mark.parametrize("strategy", ["auto", "full", "grouped_rtl", "grouped_ltr", "cores_rtl", "cores_ltr"])
def test_jit_trace_works_at_any_number_of_dimensions(strategy):
    """A trace recorded the input's leading dims as constants: traced from an (in,) example, a (1, in) input gave
    (out,) silently and a (3, in) one failed in a reshape; TTEmbedding likewise. A traced nn.Linear takes any."""
    import warnings

    torch.manual_seed(0)
    for i, o in ((64, 48), (30, 97)):  # (97: a padded layer, whose output slice was recorded at a fixed dim)
        layer = tt.nn.TTLinear(i, o, tt_rank=3, dtype=torch.float64)
        layer.strategy = strategy
        for example, grad in (((i,), False), ((2, 3, i), True)):
            with warnings.catch_warnings(), torch.set_grad_enabled(grad):
                warnings.simplefilter("ignore")  # (torch 2.13 deprecates TorchScript)
                traced = torch.jit.trace(layer, (torch.randn(example, dtype=torch.float64),))
            for shape in ((i,), (1, i), (5, i), (1, 1, i), (0, i), (2, 1, 4, i)):
                x = torch.randn(shape, dtype=torch.float64)
                assert_close(traced(x), layer(x))
    # a layer built under inference_mode: its cores were cloned only in grad mode, so torch's check of the trace
    # (tracing again under no_grad) found the graphs differed (from a review)
    with torch.inference_mode():
        frozen = tt.nn.TTLinear(24, 10, tt_rank=3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(frozen, (torch.randn(4, 24, dtype=torch.float64),))
    x = torch.randn(2, 3, 24, dtype=torch.float64)
    assert_close(traced(x), frozen(x))
    emb = tt.nn.TTEmbedding(97, 12, tt_rank=3, padding_idx=3, dtype=torch.float64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(emb, (torch.tensor(5),))
        # (empty and all-padding batches too: the padding positions' stand-in row was picked by a branch on the
        # batch's size, which the trace fixed from its example; argmin of an empty batch then failed)
        empty = torch.zeros(0, dtype=torch.long)
        for idx in (
            torch.tensor(7),
            torch.tensor([3]),
            torch.tensor([[3]]),
            torch.randint(0, 97, (2, 3, 4)),
            empty,
        ):
            assert_close(traced(idx), emb(idx))
        assert traced(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 12)


def test_a_memory_bounded_layer_compiles_in_one_graph():
    """``max_saved_bytes`` picks a recomputing sweep; traced, it runs as autograd's sweep (the compiler's
    partitioner decides what is kept) with the same values and gradients."""
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(24, 10, tt_rank=3, in_dims=(2, 3, 4), out_dims=(1, 5, 2), dtype=torch.float64)
    layer.max_saved_bytes = 0
    assert layer.plan(64, requires_grad=True).recompute
    x = torch.randn(64, 24, dtype=torch.float64, requires_grad=True)
    _matches_eager(layer, (x,), [x, *layer.parameters()])


def test_fx_symbolic_trace_says_to_make_the_layers_leaves():
    """fx proxies failed with 'input must be a Tensor, got Proxy' (TTEmbedding: 'core 0 is a Proxy'), naming no
    way out; as leaf modules the layers trace and run."""
    model = torch.nn.Sequential(tt.nn.TTLinear(30, 24, tt_rank=3), torch.nn.ReLU())
    emb = tt.nn.TTEmbedding(100, 8, tt_rank=2)
    padded = tt.nn.TTLinear(30, 97, tt_rank=2)  # (its own forward: the hint was missing there)
    assert padded.padded
    for module in (model, emb, padded):
        with pytest.raises(
            TypeError, match=r"Proxy.*is_leaf_module returns True for tensortrain.nn.TTLinear"
        ):
            torch.fx.symbolic_trace(module)

    class Leaves(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, name: str) -> bool:
            return isinstance(m, (tt.nn.TTLinear, tt.nn.TTEmbedding)) or super().is_leaf_module(m, name)

    x, idx = torch.randn(5, 30), torch.tensor([[1, 2], [3, 99]])
    for module, arg in ((model, x), (torch.nn.Sequential(emb), idx)):  # (the root itself is never a leaf)
        traced = torch.fx.GraphModule(module, Leaves().trace(module))
        assert_close(traced(arg), module(arg))


@pytest.mark.parametrize("case", ["padded", "3-D", "transposed"])
def test_a_memory_bound_with_a_dynamic_batch(case):
    """max_saved_bytes less what a padded or non-view input copy keeps became a symbolic bound (a dynamo crash,
    "BooleanAtom not allowed", at the second batch size), and a 3-D input's data_ptr check broke the graph."""
    torch.manual_seed(0)
    if case == "padded":
        layer = tt.nn.TTLinear(
            11, 13, tt_rank=3, in_dims=(3, 4), out_dims=(4, 4), pad=True, dtype=torch.float64
        )
    else:
        layer = tt.nn.TTLinear(24, 10, tt_rank=3, in_dims=(2, 3, 4), out_dims=(1, 5, 2), dtype=torch.float64)
    layer.max_saved_bytes = 10**6
    f = _compiled(layer, dynamic=True)
    for b in (4, 6):
        if case == "padded":
            x = torch.randn(b, 11, dtype=torch.float64)
        elif case == "3-D":
            x = torch.randn(b, 3, 24, dtype=torch.float64)
        else:
            x = torch.randn(24, b, dtype=torch.float64).T
        torch._dynamo.mark_dynamic(x, 0)
        assert_close(f(x), layer(x))
    if case != "transposed":
        batch = torch.export.Dim("batch")
        x = torch.randn(5, *x.shape[1:], dtype=torch.float64)
        prog = torch.export.export(layer, (x,), dynamic_shapes={"input": {0: batch}})
        x = torch.randn(9, *x.shape[1:], dtype=torch.float64)
        assert_close(prog.module()(x), layer(x))


def test_the_full_plan_keeps_autocast_dtype_when_traced():
    """Traced (compile, torch.func), the full plan added the float32 bias to its bf16 product: a float32 output
    where eager and nn.Linear give bf16."""
    layer = tt.nn.TTLinear(24, 10, tt_rank=3, in_dims=(2, 3, 4), out_dims=(1, 5, 2))
    layer.strategy = "full"
    x = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = layer(x)
        assert want.dtype == torch.bfloat16
        assert _compiled(layer)(x).dtype == torch.bfloat16
        assert torch.func.vmap(layer)(x[:, None]).dtype == torch.bfloat16


def test_a_replaced_core_that_does_not_chain_is_named_when_compiling():
    layer = tt.nn.TTLinear(24, 10, tt_rank=3, in_dims=(2, 3, 4), out_dims=(1, 5, 2))
    layer.cores[1] = torch.nn.Parameter(torch.randn(3, 5, 3, 3))
    with pytest.raises(Exception, match="do not chain"):
        torch.compile(layer, backend="eager")(torch.randn(4, 24))


def test_no_source_constructs_older_dynamo_cannot_trace():
    """CI runs one torch release; the dynamo of torch 2.6-2.12 cannot trace what this test looks for, and each
    one of them broke torch.compile of the layers there (``.ci/torch-versions`` runs the suite on other releases):
    ``isinstance(x, A | B)``, ``NamedTuple._replace``, and methods or operators defined on a NamedTuple."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted(Path(tt.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                if len(node.args) == 2 and isinstance(node.args[1], ast.BinOp):
                    found.append(f"{where} isinstance with a union")
            if isinstance(node, ast.Attribute) and node.attr == "_replace":
                found.append(f"{where} _replace")
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", None) == "NamedTuple" for b in node.bases
            ):
                methods = [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
                if methods:
                    found.append(f"{where} NamedTuple {node.name} defines {methods}")
    assert not found, found


def test_operators_on_tt_objects_break_the_graph_instead_of_swapping_operands(gen):
    """dynamo hands `W @ x` to __torch_function__ as Tensor.matmul(x, W), the very call `x @ W` makes: compiled,
    `W @ x` silently gave `x @ W` for a square W. Now the operators break the graph (Python runs them; fullgraph
    raises); tt.matmul and number scaling still trace."""
    torch._dynamo.reset()
    w = random_tt(((2, 3), (3, 2)), (1, 2, 1), gen=gen)
    x = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    wf = tt.full(w)
    for fn, want in (
        (lambda cs: tt.TensorTrain(list(cs)) @ x, wf @ x),
        (lambda cs: x @ tt.TensorTrain(list(cs)), x @ wf),
        (lambda cs: x @ tt.TensorTrain(list(cs)) @ x, x @ wf @ x),
    ):
        torch._dynamo.reset()
        assert_close(torch.compile(fn, backend=BACKEND)(w.tt_cores), want)
        torch._dynamo.reset()  # (else the frames compiled with breaks above are reused)
        with pytest.raises(Exception, match="graph_break"):
            torch.compile(fn, backend=BACKEND, fullgraph=True)(w.tt_cores)
    # torch.matmul reaches __torch_function__ as itself, operands in order: it still traces in one graph
    assert_close(_compiled(lambda cs: torch.matmul(x, tt.TensorTrain(list(cs))))(w.tt_cores), x @ wf)
    # number scaling traces in one graph (cmath.isfinite did not)
    for fn, want in (
        (lambda cs: tt.full(tt.TensorTrain(list(cs)) * 2.0), 2 * wf),
        (lambda cs: tt.full(-tt.TensorTrain(list(cs))), -wf),
    ):
        assert_close(_compiled(fn)(w.tt_cores), want)


def test_second_order_and_symbolic_numbers_under_compile(gen):
    """hessian_vector_product came back zero compiled (AOTAutograd has no double backward); a scale that changes
    between calls, epsilon under dynamic=True, a batch whose size changes and complex cores failed fullgraph."""
    torch._dynamo.reset()
    y = random_tt((4, 5, 6), (1, 2, 2, 1), gen=gen)
    v = torch.randn(4, 5, 6, dtype=torch.float64, generator=gen)
    target = torch.randn(4, 5, 6, dtype=torch.float64, generator=gen)

    def loss(t):
        return 0.5 * ((tt.full(t) - target) ** 2).sum()

    def hvp(*cores):
        return tt.full(tt.hessian_vector_product(loss, tt.TensorTrain(list(cores)), v))

    want = hvp(*y.tt_cores)
    assert float(want.norm()) > 1
    assert_close(torch.compile(hvp, backend=BACKEND)(*y.tt_cores), want)  # (runs eagerly inside)
    with pytest.raises(TypeError, match="compiled by torch.compile"):
        tt.hessian_vector_product(torch.compile(loss, backend=BACKEND), y, v)
    # (not compiled)
    assert_close(tt.full(tt.hessian_vector_product(torch.compiler.disable(loss), y, v)), want)

    scaled = _compiled(lambda s, *cores: tt.full(tt.TensorTrain(list(cores)) * s))
    for s in (2.0, -3.0, 0.5):  # (dynamo makes s symbolic from its second value on)
        assert_close(scaled(s, *y.tt_cores), s * tt.full(y))
    # a float16 TT scaled by 1e5 stays finite compiled, as eagerly: the number is spread over the cores (e1db27d put
    # it all on the first core while compiling, which overflowed)
    h = tt.TensorTrain([c.half() for c in y.tt_cores])
    compiled_h = _compiled(lambda *cores: tt.TensorTrain(list(cores)) * 1e5)(*h.tt_cores)
    assert all(bool(torch.isfinite(c).all()) for c in compiled_h.tt_cores)
    norm = torch.compile(
        lambda *cores: tt.frobenius_norm(tt.TensorTrain(list(cores))),
        backend=BACKEND,
        fullgraph=True,
        dynamic=True,
    )
    assert_close(norm(*y.tt_cores), tt.full(y).norm())
    orth = _compiled(lambda *cores: tt.full(tt.orthogonalize(tt.TensorTrainBatch(list(cores)))))
    for b in (2, 3):
        batch = tt.concat_along_batch_dim([y] * b)
        assert_close(orth(*batch.tt_cores), tt.full(batch))
    z = tt.cast(y, torch.complex128)
    assert_close(
        _compiled(lambda *cores: tt.frobenius_norm(tt.TensorTrain(list(cores))))(*z.tt_cores),
        tt.full(y).norm(),
    )


def test_int_scales_and_epsilons_that_change_compile_whole():
    """The check for ints past float64's range called math.isfinite on a traced int (an int64 symbol): a changing
    int scale or epsilon broke a fullgraph compile."""
    a = tt.random_tensor((2, 3, 4), tt_rank=2, dtype=torch.float64)
    for fn, dense in (
        (lambda k: tt.full(a * k), lambda k: tt.full(a) * k),
        (lambda k: tt.frobenius_norm(a, epsilon=k), lambda k: (tt.full(a).square().sum() + k).sqrt()),
    ):
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        for k in (2, 3, 5):
            torch.testing.assert_close(compiled(k), dense(k))


def test_a_large_inference_batch_traces_whole_where_eager_runs_it_in_chunks(monkeypatch):
    """Eager inference sweeps run batches past the cache in chunks of rows (into scratch, outside autograd);
    traced at a static batch the sweep runs whole, in one graph."""
    from tensortrain.contraction import machine, sweeps

    monkeypatch.setattr(machine, "CHUNK_BYTES", 8 * 8 * 50)
    monkeypatch.setattr(machine, "CACHE_BYTES", 8 * 8 * 100)
    tt.contraction.clear_plan_cache()
    torch.manual_seed(0)
    layer = tt.nn.TTLinear(24, 30, tt_rank=3, in_dims=(3, 4, 2), out_dims=(2, 5, 3), dtype=torch.float64)
    layer.strategy = "grouped_rtl"
    x = torch.randn(37, 24, dtype=torch.float64)
    chunks = []
    real = sweeps.sweep
    monkeypatch.setattr(
        sweeps, "sweep", lambda x2d, s, d, chunk=None: chunks.append(chunk) or real(x2d, s, d, chunk)
    )
    with torch.no_grad():
        expected = layer(x)
        assert chunks[0] is not None and chunks[0] < 37  # (eager: in chunks)
        assert_close(_compiled(layer)(x), expected)
    tt.contraction.clear_plan_cache()
