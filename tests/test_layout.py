"""docs/architecture.md lists every module of src/tensortrain once, in an order the imports keep: a module's
top-level imports name only modules listed above it, and the imports that point down the list (made inside a
function) are exactly those the file names. Read from the source text, nothing imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tensortrain"
DOC = ROOT / "docs" / "architecture.md"


def _module(path: str) -> str:
    """``contraction/cost.py`` -> ``tensortrain.contraction.cost``; ``nn/__init__.py`` -> ``tensortrain.nn``."""
    parts = ["tensortrain", *Path(path).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _listed() -> list[str]:
    """The modules of the doc's tables, in order (each row's first cell)."""
    rows = re.findall(r"^\| `([\w/]+\.py)` \|", DOC.read_text(), flags=re.M)
    return [_module(r) for r in rows]


def _down_named() -> set[tuple[str, str]]:
    """(importer, imported) pairs named in the doc's section on imports that point down."""
    section = DOC.read_text().split("## Imports that point down", 1)[1]
    pairs = set()
    for line in section.splitlines():
        if line.startswith("- "):
            names = [_module(p) for p in re.findall(r"`([\w/]+\.py)`", line.split(" for ", 1)[0])]
            pairs |= {(names[0], other) for other in names[1:]}
    return pairs


def _sources() -> dict[str, Path]:
    return {_module(str(p.relative_to(SRC))): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """The package modules ``name`` imports: (at module level, inside functions). Imports under ``if
    TYPE_CHECKING:`` do not run and are left out."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    inside, typing_only = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node)}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    top: set[str] = set()
    inner: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            # `from . import ops` names a module; `from .ops import full` names its module
            found = {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        else:
            continue
        if id(node) not in typing_only:
            (inner if id(node) in inside else top).update(found & (modules - {name}))
    return top, inner


def test_every_module_is_listed_once():
    listed = _listed()
    dupes = sorted({m for m in listed if listed.count(m) > 1})
    assert not dupes, f"listed more than once in {DOC.name}: {dupes}"
    sources = set(_sources())
    assert not sources - set(listed), f"modules missing from {DOC.name}: {sorted(sources - set(listed))}"
    assert not set(listed) - sources, (
        f"{DOC.name} lists modules that do not exist: {sorted(set(listed) - sources)}"
    )


@pytest.fixture(scope="module")
def imports():
    sources = _sources()
    return {name: _imports(name, path, set(sources)) for name, path in sources.items()}


def test_top_level_imports_name_only_modules_listed_above(imports):
    position = {m: i for i, m in enumerate(_listed())}
    wrong = [
        f"{name} imports {other}"
        for name, (top, _) in imports.items()
        for other in sorted(top)
        if position[other] > position[name]
    ]
    assert not wrong, f"top-level imports that point down the list of {DOC.name}: {wrong}"


def test_imports_that_point_down_are_the_ones_the_doc_names(imports):
    position = {m: i for i, m in enumerate(_listed())}
    down = {
        (name, other)
        for name, (_, inner) in imports.items()
        for other in inner
        if position[other] > position[name]
    }
    assert down == _down_named(), (
        f"imports inside functions that point down the list: {sorted(down)}; "
        f"named in {DOC.name}: {sorted(_down_named())}"
    )


def test_the_checks_see_imports(imports):
    # the parser finds a module-level relative import, a from-package import and a function-level one
    assert "tensortrain.errors" in imports["tensortrain.shapes"][0]
    assert "tensortrain.contraction.cost" in imports["tensortrain.contraction.plans"][0]
    assert {"tensortrain.ops", "tensortrain.indexing"} <= imports["tensortrain.tensor_train"][1]
