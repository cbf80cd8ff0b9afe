"""The import surface: every exported name resolves and is documented; importing prints nothing."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import tensortrain as tt

NAMESPACES = ["tensortrain", "tensortrain.nn", "tensortrain.nn.functional", "tensortrain.contraction",
              "tensortrain.approximate", "tensortrain.kronecker", "tensortrain.optim", "tensortrain.datasets",
              "tensortrain.riemannian"]  # fmt: skip


@pytest.mark.parametrize("module", NAMESPACES)
def test_every_exported_name_resolves_and_has_a_docstring(module):
    mod = importlib.import_module(module)
    assert mod.__all__, f"{module} exports nothing"
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):  # not typing aliases such as Literal[...]
            assert (obj.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_version_and_t3f_vocabulary():
    assert tt.__version__
    for name in ["TensorTrain", "TensorTrainBatch", "to_tt_matrix", "to_tt_tensor", "round", "orthogonalize",
                 "full", "matmul", "flat_inner", "frobenius_norm", "random_matrix", "glorot_initializer",
                 "project", "gradients", "gather_nd", "gram_matrix", "save", "load", "compress"]:  # fmt: skip
        assert name in tt.__all__


def test_import_prints_nothing_and_does_not_import_keras():
    code = "import sys, tensortrain; assert 'keras' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""


# t3f's positional parameters, in order (t3f/decompositions.py, t3f/initializers.py; its trailing `name`, a
# TF name scope, has no counterpart): t3f code that passes them positionally or by name ports unchanged.
T3F_POSITIONAL = {
    "to_tt_tensor": ("tens", "max_tt_rank", "epsilon"),
    "to_tt_matrix": ("mat", "shape", "max_tt_rank", "epsilon"),
    "round": ("tt", "max_tt_rank", "epsilon"),
    "tensor_ones": ("shape", "dtype"),
    "tensor_zeros": ("shape", "dtype"),
    "matrix_ones": ("shape", "dtype"),
    "matrix_zeros": ("shape", "dtype"),
    "eye": ("shape", "dtype"),
    "ones_like": ("tt",),
    "zeros_like": ("tt",),
    "random_tensor": ("shape", "tt_rank", "mean", "stddev", "dtype"),
    "random_tensor_batch": ("shape", "tt_rank", "batch_size", "mean", "stddev", "dtype"),
    "random_matrix": ("shape", "tt_rank", "mean", "stddev", "dtype"),
    "random_matrix_batch": ("shape", "tt_rank", "batch_size", "mean", "stddev", "dtype"),
    "tensor_with_random_cores": ("shape", "tt_rank", "mean", "stddev", "dtype"),
    "tensor_batch_with_random_cores": ("shape", "tt_rank", "batch_size", "mean", "stddev", "dtype"),
    "matrix_with_random_cores": ("shape", "tt_rank", "mean", "stddev", "dtype"),
    "matrix_batch_with_random_cores": ("shape", "tt_rank", "batch_size", "mean", "stddev", "dtype"),
    "glorot_initializer": ("shape", "tt_rank", "dtype"),
    "he_initializer": ("shape", "tt_rank", "dtype"),
    "lecun_initializer": ("shape", "tt_rank", "dtype"),
}


@pytest.mark.parametrize("name", sorted(T3F_POSITIONAL))
def test_t3f_positional_parameters_come_first_in_t3f_order(name):
    params = inspect.signature(getattr(tt, name)).parameters.values()
    positional = tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert positional[: len(T3F_POSITIONAL[name])] == T3F_POSITIONAL[name]


def test_installed_metadata_matches_the_package():
    """The version is written in two places (pyproject.toml, __init__); the wheel must carry py.typed (type
    checkers ignore the annotations without it) and require numpy, which safetensors' save needs and only asks
    for through its own extras."""
    from importlib import metadata
    from pathlib import Path

    assert metadata.version("tensortrain") == tt.__version__
    assert (Path(tt.__file__).parent / "py.typed").is_file()
    required = {
        r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        for r in metadata.requires("tensortrain") or []
        if "extra ==" not in r
    }
    assert {"torch", "safetensors", "numpy"} <= required


def test_contraction_submodules_do_not_shadow_its_names():
    """``tensortrain.contraction`` is a package: importing a submodule binds its name on the package, so a
    submodule named like a name the facade defines or imports (``plan``, ``run``, ...) would replace that name
    with the module. After every submodule is imported, each name of ``__all__`` is still the facade's own and
    no submodule shares a name with anything the facade binds."""
    import ast
    import pkgutil

    import tensortrain.contraction as C

    subs = {m.name for m in pkgutil.iter_modules(C.__path__)}
    assert len(subs) == 12, sorted(subs)
    before = {name: getattr(C, name) for name in C.__all__}
    for sub in sorted(subs):
        importlib.import_module(f"tensortrain.contraction.{sub}")
    for name in C.__all__:
        obj = getattr(C, name)
        assert not inspect.ismodule(obj), f"tt.contraction.{name} is a module"
        assert obj is before[name], name
    for name in ("plan", "linear", "run", "enumerate_plans", "flop_floor", "choose_program"):
        assert inspect.isfunction(getattr(C, name)), name
    assert inspect.isclass(C.ContractionPlan)
    bound = set()  # the names the facade's source binds (defs, classes, assignments, imports' local names)
    for node in ast.parse(inspect.getsource(C)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    assert not subs & bound, sorted(subs & bound)
