"""The README's tour runs as written (its claims are printed output, checked here)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_starts_with_the_two_commands():
    quick = _section("Quick start")
    commands = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert len(commands) == 2
    assert "tensortrain demo mnist" in commands[0]
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must call the README's test command"


def test_tour_runs(capsys):
    code = re.findall(r"```python\n(.*?)\n```", _section("Tour"), re.S)[0]
    torch.manual_seed(0)
    exec(compile(code, "README-tour", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith(
        "A TT-Matrix of size 784 x 625, underlying tensor shape: (4, 7, 4, 7) x (5, 5, 5, 5), "
        "TT-ranks: (1, 2, 2, 2, 1)\n"
    )
    assert "490,625" in out and "15,585" in out
