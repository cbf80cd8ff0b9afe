"""Generate ``docs/api.md`` from the package's ``__all__`` lists: ``.venv/bin/python docs/gen_api.py [OUT]``.

Each public name gets its signature (as written in the source) and the first paragraph of its docstring;
classes list the public members they define. ``tests/test_docs.py`` renders the reference again and fails when
``docs/api.md`` differs, so a change to a public name, signature or summary line comes with a rerun of this
script. Needs the ``keras`` extra (``tensortrain.keras`` is documented too).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import typing
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
import tensortrain as tt  # noqa: E402

API = Path(__file__).resolve().parent / "api.md"

# (heading, intro, module whose __all__ names are documented, prefix under which they are documented)
# top-level names are grouped by the module that owns them, in DESIGN.md's data-flow order
TOP = [
    ("Errors", "tensortrain.errors", "The library's exception types."),
    ("TT objects", "tensortrain.tensor_train", None),
    ("Shapes and ranks", "tensortrain.shapes", None),
    ("Initializers", "tensortrain.initializers", None),
    ("TT-SVD, rounding, orthogonalization", "tensortrain.decompositions", None),
    ("The algebra", "tensortrain.ops", None),
    ("Batches", "tensortrain.batch_ops", None),
    ("TT variables", "tensortrain.variables", None),
    ("Riemannian geometry", "tensortrain.riemannian", None),
    ("Riemannian autodiff", "tensortrain.autodiff", None),
    ("Regularizers", "tensortrain.regularizers", None),
    ("Model compression", "tensortrain.compression", None),
    ("Model decompression", "tensortrain.decompression", None),
    ("Saving and loading", "tensortrain.io", None),
]
NAMESPACES = [
    ("tt.contraction", "tensortrain.contraction"),
    ("tt.workspace", "tensortrain.workspace"),
    ("tt.approximate", "tensortrain.approximate"),
    ("tt.kronecker", "tensortrain.kronecker"),
    ("tt.nn", "tensortrain.nn"),
    ("tt.nn.functional", "tensortrain.nn.functional"),
    ("tt.nn.init", "tensortrain.nn.init"),
    ("tt.optim", "tensortrain.optim"),
    ("tt.datasets", "tensortrain.datasets"),
    ("tensortrain.keras", "tensortrain.keras"),
]
# the order of NAMESPACES in the file: contraction sits after the algebra, nn before compression, ...
ORDER = [
    "Errors", "TT objects", "Shapes and ranks", "Initializers", "TT-SVD, rounding, orthogonalization",
    "The algebra", "Batches", "TT variables", "tt.contraction", "tt.workspace", "Riemannian geometry",
    "Riemannian autodiff", "tt.approximate", "tt.kronecker", "Regularizers", "tt.nn", "tt.nn.functional",
    "tt.nn.init", "tt.optim", "Model compression", "Model decompression", "Saving and loading", "tt.datasets",
    "tensortrain.keras",
]  # fmt: skip


class _Ann:
    """An annotation shown as written in the source (``from __future__ import annotations`` keeps strings)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def signature(obj: object) -> str:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""

    def ann(a: object) -> object:
        if isinstance(a, typing.ForwardRef):  # NamedTuple fields keep theirs as ForwardRef objects
            return _Ann(a.__forward_arg__)
        return _Ann(a) if isinstance(a, str) else a

    params = [p.replace(annotation=ann(p.annotation)) for p in sig.parameters.values()]
    ret = sig.return_annotation
    if isinstance(ret, str):
        ret = _Ann(ret)
    if inspect.isclass(obj):
        ret = inspect.Signature.empty
    if params and params[0].name == "self":  # methods are shown as called on an object
        params = params[1:]
    return str(sig.replace(parameters=params, return_annotation=ret))


def summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    lines = []
    for line in doc.splitlines():  # the first paragraph's first sentence may wrap over lines
        if not line.strip():
            break
        lines.append(line.strip())
    return summary_text(" ".join(lines))


def summary_text(text: str) -> str:
    """Docstring text as markdown: Sphinx roles and double backticks become single backticks."""
    text = re.sub(r":(?:attr|func|class|meth|mod|data):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def describe_value(obj: object) -> str:
    if typing.get_origin(obj) is typing.Literal:
        return "`Literal[" + ", ".join(repr(a) for a in typing.get_args(obj)) + "]`"
    if isinstance(obj, dict):  # sorted: tests may reorder a module dict (monkeypatch), the reference must not
        r = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in sorted(obj.items())) + "}"
    else:
        r = repr(obj)
    if len(r) > 100:
        r = r[:97] + "..."
    return f"`{r}`"


CONSTANT_DOCS = {
    "tensortrain.contraction.Strategy": "The strategies `linear`/`plan` accept (a type alias).",
    "tensortrain.contraction.STRATEGIES": "The values of `Strategy`, as a tuple.",
    "tensortrain.workspace.MIN_BYTES": "Requests below this size are plain allocations, never lent.",
}
"""Summaries of constants that have no ``#:`` comment in their module (those with one use it)."""


def attribute_doc(module_path: str, name: str) -> str:
    """The ``#:`` comment lines right above ``name``'s assignment in the module's source (Sphinx's form)."""
    lines = inspect.getsource(importlib.import_module(module_path)).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*[:=]", line):
            doc = []
            for above in reversed(lines[:i]):
                if not above.startswith("#:"):
                    break
                doc.insert(0, above[2:].strip())
            return summary_text(" ".join(doc))
    return ""


def entry(shown: str, obj: object, module_path: str, name: str) -> list[str]:
    if inspect.ismodule(obj):
        return [f"- `{shown}`: a namespace ({summary(obj)}); its names are listed below.", ""]
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        kind = "class " if inspect.isclass(obj) else ""
        return [f"- {kind}`{shown}{signature(obj)}`", f"  {summary(obj)}", ""]
    doc = attribute_doc(module_path, name) or CONSTANT_DOCS.get(f"{module_path}.{name}", "")
    return [f"- `{shown}` = {describe_value(obj)}", f"  {doc}", ""]


DOCUMENTED: set[type] = set()  # classes with their own entry: subclasses refer to them


def members(cls: type) -> list[tuple[str, object]]:
    """Public members defined by the package's own classes in ``cls``'s MRO (torch's and keras' left out, and
    those of a documented base class, which has its own list)."""
    seen: dict[str, object] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tensortrain") or (klass is not cls and klass in DOCUMENTED):
            continue
        for n, v in vars(klass).items():
            if n.startswith("_") or n in seen or n == "extra_repr":  # (extra_repr: nn.Module's print hook)
                continue
            seen[n] = v
    return sorted(seen.items())


def member_lines(prefix: str, cls: type) -> list[str]:
    out = []
    for base in cls.__mro__[1:]:
        if base in DOCUMENTED:
            out.append(f"  - the members of `tt.{base.__name__}`")
    for n, v in members(cls):
        if isinstance(v, property):
            ann = getattr(v.fget, "__annotations__", {})
            ret = ann.get("return", "")
            out += [f"  - `{prefix}.{n}` (property{': ' + ret if ret else ''}): {summary(v)}"]
        elif isinstance(v, classmethod | staticmethod):
            f = v.__func__
            sig = signature(getattr(cls, n))
            out += [f"  - `{prefix}.{n}{sig}` ({type(v).__name__}): {summary(f)}"]
        elif inspect.isfunction(v):
            sig = signature(v)
            out += [f"  - `{prefix}.{n}{sig}`: {summary(v)}"]
        elif isinstance(v, str | int | float | tuple) or v is None:
            continue  # class attributes (annotations, defaults)
        else:
            out += [f"  - `{prefix}.{n}`: {summary(v)}"]
    return out


def section(title: str, module_path: str, prefix: str, names: list[str], intro: str | None) -> list[str]:
    mod = importlib.import_module(module_path)
    lines = [f"## {title}", ""]
    first = intro or summary(mod)
    lines += [f"`{module_path}`: {first}", ""]
    DOCUMENTED.update(getattr(mod, n) for n in names if inspect.isclass(getattr(mod, n)))
    for name in names:
        obj = getattr(mod, name)
        shown = f"{prefix}.{name}"
        lines += entry(shown, obj, module_path, name)
        if (
            inspect.isclass(obj)
            and obj.__module__.startswith("tensortrain")
            and not issubclass(obj, BaseException)
        ):
            extra = member_lines(shown, obj)
            if extra:
                lines[-1:] = ["  Members:", *extra, ""]
    return lines


def render() -> str:
    """The text of ``docs/api.md`` for the package as installed."""
    DOCUMENTED.clear()
    blocks: dict[str, list[str]] = {}
    covered: set[str] = set()
    for title, path, intro in TOP:
        mod = importlib.import_module(path)
        names = [n for n in mod.__all__ if n in tt.__all__]
        if path == "tensortrain.ops":  # ops re-exports forms, products, indexing; keep its own order
            names = list(mod.__all__)
        names = [n for n in names if n not in covered]
        if path == "tensortrain.tensor_train":  # the shared base last: its members are listed there
            names = ["TensorTrain", "TensorTrainBatch", "TensorTrainBase"]
        covered.update(names)
        blocks[title] = section(title, path, "tt", names, intro)
    missing = sorted(set(tt.__all__) - covered)
    assert not missing, f"top-level names not grouped: {missing}"
    for prefix, path in NAMESPACES:
        if path == "tensortrain.keras":
            try:
                mod = importlib.import_module(path)
                names = list(mod.__all__)
            except ImportError:
                raise SystemExit('docs/gen_api.py needs the keras extra: pip install -e ".[keras]"') from None
        else:
            mod = importlib.import_module(path)
            names = list(mod.__all__)
        if path == "tensortrain.nn":  # the linear layer first
            names = sorted(
                names, key=lambda n: ["TTLinear", "TTEmbedding"].index(n) if n.startswith("TT") else 2
            )
        blocks[prefix] = section(f"`{prefix}`", path, prefix, names, None)
    head = [
        "# API reference",
        "",
        "Generated by `docs/gen_api.py` from every public namespace's `__all__`: each name with its signature as `inspect.signature` gives it and the first "
        "paragraph of its docstring; classes list the public methods and properties they define. "
        "`tests/test_docs.py` renders it again and fails when this file differs: after changing a public "
        "name, signature or docstring summary, run `.venv/bin/python docs/gen_api.py`. "
        "`tt` is `import tensortrain as tt`; the full docstrings (Args, Returns, Raises, Shape, Complexity, "
        "Example) are one `help(tt.name)` away. Concepts: [concepts.md](concepts.md); t3f names: "
        "[migrating-from-t3f.md](migrating-from-t3f.md).",
        "",
        "Sections follow the order data flows through the library: TT "
        "objects, their construction and algebra, the contraction planner, the advanced algebra, the layers, "
        "model compression, I/O, datasets, Keras.",
        "",
        "## Contents",
        "",
    ]
    for key in ORDER:
        title = blocks[key][0][3:]
        anchor = title.lower().replace("`", "").replace(".", "").replace(",", "").replace(" ", "-")
        head.append(f"- [{title}](#{anchor})")
    head.append("")
    body = [line for key in ORDER for line in blocks[key]]
    return "\n".join(head + body).rstrip() + "\n"


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else API
    text = render()
    out.write_text(text)
    print(f"wrote {out}: {len(text.splitlines())} lines")


if __name__ == "__main__":
    main(sys.argv[1:])
