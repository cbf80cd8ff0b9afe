"""Every docstring example in the package runs and prints what it shows (``tensortrain.keras`` has its own tests:
its import needs Keras' torch backend chosen before Keras is first imported)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tensortrain

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(tensortrain.__path__, "tensortrain.")
    if m.name not in ("tensortrain.keras", "tensortrain.__main__")  # (__main__ runs the command on import)
)


@pytest.mark.parametrize("name", ["tensortrain", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
