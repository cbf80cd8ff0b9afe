"""docs/: the API reference lists every exported name and only names that exist; the concepts guide runs as
written, and prints what it shows."""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
API = DOCS / "api.md"
CONCEPTS = DOCS / "concepts.md"
KERAS = Path(__file__).resolve().parents[1] / "src" / "tensortrain" / "keras.py"

# every public namespace, and the prefix its names carry in docs/api.md
NAMESPACES = {
    "tensortrain": "tt",
    "tensortrain.riemannian": "tt",  # a namespace whose names are all top-level names too
    "tensortrain.contraction": "tt.contraction",
    "tensortrain.workspace": "tt.workspace",
    "tensortrain.approximate": "tt.approximate",
    "tensortrain.kronecker": "tt.kronecker",
    "tensortrain.nn": "tt.nn",
    "tensortrain.nn.functional": "tt.nn.functional",
    "tensortrain.nn.init": "tt.nn.init",
    "tensortrain.optim": "tt.optim",
    "tensortrain.datasets": "tt.datasets",
    "tensortrain.keras": "tensortrain.keras",
}


def _keras_all() -> list[str]:
    """``tensortrain.keras.__all__`` read from the source: importing it needs the optional keras extra."""
    for node in ast.parse(KERAS.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("src/tensortrain/keras.py has no __all__")


def _exported(module: str) -> list[str]:
    if module == "tensortrain.keras":
        return _keras_all()
    return list(importlib.import_module(module).__all__)


def _missing_entries(text: str, module: str) -> list[str]:
    """Names of ``module.__all__`` without their own entry (``- `prefix.name(...)` `` or ``- class ...``)."""
    prefix = NAMESPACES[module]
    return [
        name
        for name in _exported(module)
        if not re.search(rf"^- (?:class )?`{re.escape(prefix)}\.{re.escape(name)}[(`]", text, re.M)
    ]


def _resolve(dotted: str) -> None:
    """Import the longest importable prefix of ``dotted`` (``tt.`` is ``tensortrain.``), then getattr the rest;
    ``tensortrain.keras`` names are checked against its source instead of importing keras."""
    if dotted.startswith("tt."):
        dotted = "tensortrain." + dotted[3:]
    parts = dotted.split(".")
    if parts[:2] == ["tensortrain", "keras"]:
        if len(parts) > 2:
            assert parts[2] in _keras_all(), f"{dotted}: not in tensortrain.keras.__all__"
        if len(parts) > 3:
            assert re.search(rf"def {re.escape(parts[3])}\(", KERAS.read_text()), f"{dotted}: no such member"
        return
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return
    raise ImportError(dotted)


def _unresolved(text: str) -> list[str]:
    names = sorted(set(re.findall(r"`((?:tt|tensortrain)\.[A-Za-z_][\w.]*\w)", text)))
    bad = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ImportError, AssertionError) as e:
            bad.append(f"{name} ({e})")
    return bad


@pytest.mark.parametrize("module", sorted(NAMESPACES))
def test_every_exported_name_has_an_entry_in_the_api_reference(module):
    missing = _missing_entries(API.read_text(), module)
    assert not missing, f"docs/api.md lacks entries for {NAMESPACES[module]}.{{{', '.join(missing)}}}"


@pytest.mark.parametrize("doc", [API, CONCEPTS], ids=lambda p: p.name)
def test_every_documented_name_resolves(doc):
    text = doc.read_text()
    assert "`tt." in text
    bad = _unresolved(text)
    assert not bad, f"{doc.name} names what does not exist: {bad}"


# ----------------------------------------------------------------------------------- the concepts guide runs
# A ```python block may be followed by a ```text block: exactly what the block prints. Numbers with a decimal
# point are compared to the digits shown (round-off differs between machines); "..." matches anything.
_BLOCKS = re.compile(r"```python\n(.*?)```\n(?:\n?```text\n(.*?)```\n)?", re.S)
_FLOAT = r"-?\d+\.\d+(?:e[-+]?\d+)?"


def _output_matches(expected: str, got: str) -> bool:
    pieces = re.split(rf"({_FLOAT}|\.\.\.)", expected)
    pattern, shown = "", []
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            pattern += re.escape(piece)
        elif piece == "...":
            pattern += ".*?"
        else:
            pattern += f"({_FLOAT})"
            shown.append(piece)
    m = re.fullmatch(pattern, got, re.S)
    if m is None:
        return False
    for want, have in zip(shown, m.groups(), strict=True):
        mantissa, _, exp = want.partition("e")
        digits = len(mantissa.partition(".")[2])
        if abs(float(have) - float(want)) > 1.5 * 10.0 ** (int(exp or 0) - digits):
            return False
    return True


def _run_blocks(text: str) -> list[str]:
    """Run the python blocks in order in one namespace; return a message per block whose output differs."""
    blocks = _BLOCKS.findall(text)
    assert len(blocks) >= 10, f"expected the guide's examples, found {len(blocks)} python blocks"
    torch.manual_seed(0)
    namespace: dict = {}
    failures = []
    for k, (code, expected) in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"concepts.md block {k}", "exec"), namespace)
        got = out.getvalue()
        if not _output_matches(expected, got):
            first = code.splitlines()[0]
            failures.append(f"block {k} ({first!r}) printed:\n{got}but the guide shows:\n{expected}")
    return failures


def test_concepts_examples_print_what_the_guide_shows():
    failures = _run_blocks(CONCEPTS.read_text())
    assert not failures, "\n\n".join(failures)


def test_output_comparison_is_strict():
    assert _output_matches("ranks (1, 3, 1)\n", "ranks (1, 3, 1)\n")
    assert not _output_matches("ranks (1, 3, 1)\n", "ranks (1, 4, 1)\n")
    assert not _output_matches("True\n", "True\nTrue\n")
    assert _output_matches("error 0.977\n", "error 0.9774\n")
    assert not _output_matches("error 0.977\n", "error 0.981\n")
    assert _output_matches("err 9.73e-01\n", "err 9.74e-01\n")
    assert not _output_matches("err 9.73e-01\n", "err 9.73e-02\n")
    assert _output_matches("est. ... ms\n", "est. 5.99 ms\n")


def test_api_reference_is_what_the_generator_renders(monkeypatch):
    """docs/api.md is docs/gen_api.py's output for the package as it is: signatures and summaries stay current."""
    if "keras" not in sys.modules:  # Keras picks its backend at first import (as in test_keras.py)
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras was already imported with the {keras.backend.backend()!r} backend")
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    want, have = gen.render().splitlines(), API.read_text().splitlines()
    diff = list(difflib.unified_diff(have, want, "docs/api.md", "rendered", lineterm="", n=1))
    assert not diff, "docs/api.md is stale; run .venv/bin/python docs/gen_api.py:\n" + "\n".join(diff[:40])
