"""What ``tensortrain compress`` does (its options are in :mod:`tensortrain.cli`): build a model from
``MODULE:ATTR``, optionally load a checkpoint into it (read as :mod:`tensortrain.cli_inspect` reads one), run
``tt.compress`` and save the result atomically.

Every failure the user can fix raises :class:`~tensortrain.cli_inspect.CommandError`, whose one-line message the
command prints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import __version__
from .cli_inspect import META_KEY, CommandError, one_line, read_state_dict, storage_aliases
from .compression import CompressionReport, compress
from .files import atomic_write, names_folder, special_file

__all__ = ["run_compress"]


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """The current folder first on ``sys.path`` (as ``python -m`` puts it), for as long as the model is built."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)  # the first occurrence: ours


def _build_model(spec: str) -> tuple[nn.Module, bool]:
    """The module ``MODULE:ATTR`` names (an instance, or what calling it with no arguments returns), and
    whether ATTR was called."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"--model must be MODULE:ATTR (e.g. mymodels:build_mlp), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as err:  # a script that parses its command line (or exits) when imported
        raise CommandError(
            f"--model {spec}: importing {module_name!r} called sys.exit({err.code!r}); a script that runs when "
            "imported needs an if __name__ == '__main__': guard"
        ) from err
    except Exception as err:
        raise CommandError(
            f"--model {spec}: cannot import {module_name!r} (the current folder {os.getcwd()} is searched "
            f"first): {one_line(err)}"
        ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = getattr(module, "__file__", None) or module_name
            raise CommandError(f"--model {spec}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj, False
    if not callable(obj):
        raise CommandError(
            f"--model {spec} is a {type(obj).__name__}, expected an nn.Module or a function that returns one"
        )
    try:
        built = obj()
    except SystemExit as err:
        raise CommandError(f"--model {spec}: calling {attr}() called sys.exit({err.code!r})") from err
    except Exception as err:
        raise CommandError(f"--model {spec}: calling {attr}() failed: {one_line(err)}") from err
    if not isinstance(built, nn.Module):
        raise CommandError(
            f"--model {spec}: {attr}() returned an object of type {type(built).__name__}, expected an nn.Module"
        )
    return built, True


def _check_target(path: str | None, option: str) -> None:
    """Fail before any work when ``path`` cannot be written (a folder, or in a missing folder)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir() or names_folder(path):
        raise CommandError(f"{option} {path} names a folder; give a file name")
    if not p.parent.is_dir():
        raise CommandError(f"{option} {p}: the folder {p.parent} does not exist")


def _check_distinct(args: argparse.Namespace) -> None:
    """Fail before any work when two of --weights, --out and --report-json name the same file (the report
    would replace the saved model, or the saved model the weights)."""
    named = [
        (o, p)
        for o, p in (("--weights", args.weights), ("--out", args.out), ("--report-json", args.report_json))
        if p
    ]
    for i, (opt_a, a) in enumerate(named):
        for opt_b, b in named[i + 1 :]:
            # (devices and FIFOs are written into, not replaced: --out /dev/null --report-json /dev/null is fine)
            if os.path.realpath(a) == os.path.realpath(b) and not special_file(a):
                raise CommandError(
                    f"{opt_a} {a} and {opt_b} {b} are the same file; give {opt_b} another name"
                )


def _glob_escape(name: str) -> str:
    """A module name as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?[])", r"[\1]", name)


def _budget(args: argparse.Namespace) -> dict[str, float | int]:
    names = ("max_tt_rank", "epsilon", "ratio")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _save(path: Path, model: nn.Module, header: dict[str, Any]) -> bool:
    """Write the model's state dict to ``path`` (safetensors or torch, by suffix); returns whether a safetensors
    file stores some tensor once for several names (the recipe must then fill them in)."""
    state = model.state_dict()
    # (compress refuses lazy parameters; lazy buffers, a LazyBatchNorm1d(affine=False)'s, pass it)
    lazy = [k for k, v in state.items() if isinstance(v, torch.Tensor) and nn.parameter.is_lazy(v)]
    if lazy:
        raise CommandError(
            f"--out {path}: the model's {', '.join(lazy[:3])}{', ...' if len(lazy) > 3 else ''} are uninitialized "
            "lazy buffers and hold no values yet; run a forward pass where the model is built, or pass --weights "
            "to load them"
        )
    meta = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_meta]
    if meta:
        raise CommandError(
            f"--out {path}: the model's tensors {', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''} are on "
            "the meta device and hold no values; pass --weights to load them"
        )
    if path.suffix == ".safetensors":
        others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if others:
            raise CommandError(
                f"--out {path}: safetensors stores tensors only, and {others[0]!r} is a "
                f"{type(state[others[0]]).__name__} (a module's extra state); save to a .pt file instead"
            )
        sparse = [k for k, v in state.items() if v.layout != torch.strided]
        if sparse:
            raise CommandError(
                f"--out {path}: safetensors stores dense tensors only, and {sparse[0]!r} is a {state[sparse[0]].layout} "
                "tensor; save to a .pt file instead"
            )
        # a tensor under several names (tied weights, a shared module) stored once, the other names as
        # metadata {name: stored name}, the layout of safetensors.torch.save_model (which inspect reads);
        # one contiguous CPU copy per stored key (safetensors refuses tensors that share storage)
        aliases = storage_aliases(state)
        tensors = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if k not in aliases
        }
        data = safetensors.torch.save(tensors, metadata={**aliases, META_KEY: json.dumps(header)})
    else:
        aliases = {}  # (torch.save stores a shared tensor once and gives it back under every name)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    atomic_write(path, data)
    return bool(aliases)


def _recipe(
    spec: str,
    called: bool,
    out: str,
    replaced: list[str],
    assign: bool = False,
    ties: Sequence[tuple[str, str, bool]] = (),
    aliased: bool = False,
    weights_first: str | None = None,
) -> list[str]:
    """Python lines that rebuild the compressed model and load ``out`` into it (tested in test_cli_tools);
    ``assign``: the model is built on the meta device, so loading must assign the tensors; ``ties``: (name,
    name of the same tensor, whether a parameter) for every tensor the model holds under a second name;
    ``aliased``: the file stores some tensor once for several names; ``weights_first``: the ``--weights``
    file, loaded before the rank-1 compress where a fresh model would not give the same TT layers."""
    module_name, _, attr = spec.partition(":")
    if out.endswith(".safetensors"):
        lines, load = ["import safetensors.torch"], f"safetensors.torch.load_file({out!r})"
    else:
        lines, load = ["import torch"], f"torch.load({out!r}, weights_only=True)"
    if all(part.isidentifier() for part in module_name.split(".")):
        lines += ["import tensortrain", f"import {module_name}"]
        mod = module_name
    else:  # importlib takes any module name, the import statement only identifiers (e.g. "my-models")
        lines += ["import importlib", "import tensortrain", f"mod = importlib.import_module({module_name!r})"]
        mod = "mod"
    lines.append(f"model = {mod}.{attr}{'()' if called else ''}")
    # the values compress decided on (lazy shapes, padding rows, finite weights)
    if weights_first is not None:
        lines += [
            "from tensortrain.cli_inspect import read_state_dict",
            f"model.load_state_dict(read_state_dict({weights_first!r}), strict=False)",
        ]
    if replaced:  # rank 1 gives the same TT layers at the smallest ranks; loading resizes them to the saved
        lines.append(f"model, _ = tensortrain.compress(model, max_tt_rank=1, include={replaced!r})")
    if aliased and out.endswith(".safetensors"):  # names stored once: give every name its tensor
        lines += [
            f"state = {load}",
            f"with safetensors.safe_open({out!r}, framework='pt') as f:  # tied tensors are stored once",
            "    state.update({k: state[v] for k, v in f.metadata().items() if v in state})",
        ]
        load = "state"
    lines.append(f"model.load_state_dict({load}{', assign=True' if assign else ''})")
    if assign:  # assigning gives every name its own new tensor: tie them again (as _retie does)
        for name, first, param in ties:
            owner, _, attr = name.rpartition(".")
            register, get = (
                ("register_parameter", "get_parameter") if param else ("register_buffer", "get_buffer")
            )
            lines.append(f"model.get_submodule({owner!r}).{register}({attr!r}, model.{get}({first!r}))")
    return lines


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, bool, bool, set[str] | None]:
    """The model ``--model`` names, with ``--weights`` loaded (strict), whether ATTR was called, whether the
    model was built on the meta device, and (with ``--weights``, off meta) the layers the reload recipe's rank-1
    compress replaces in the model as built, before the weights (see :func:`_replaceable`)."""
    replaceable = None
    with _cwd_on_path():
        model, called = _build_model(args.model)
        # a model built on the meta device takes the loaded tensors themselves (copying into meta parameters
        # does nothing)
        meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        if args.weights is not None and not meta and args.out is not None and not args.dry_run:
            replaceable = _replaceable(model, args.include, args.exclude)
        if args.weights is not None:
            state = read_state_dict(args.weights)
            groups = _tied_groups(model)
            try:
                model.load_state_dict(_with_tied(model, state), strict=True, assign=meta)
            except RuntimeError as err:
                raise CommandError(f"--weights {args.weights}: {one_line(err)}") from err
            if meta:  # assigning gave every name its own new tensor: tie them again, as the model built them
                _retie(model, _ties(model, groups))
    return model, called, meta, replaceable


def _replaceable(model: nn.Module, include: Any, exclude: Any) -> set[str]:
    """The layers a rank-1 ``compress`` replaces in ``model`` as built: the reload recipe's compress decides on a
    fresh model's values (a lazy layer has no shapes; a padding row that is not zero or non-finite weights keep
    a layer dense), so where --weights change that, the recipe loads them first. Only the layers the run selects
    (``include``/``exclude``) are converted, at rank 1. Any failure: none."""
    if any(nn.parameter.is_lazy(t) for t in model.buffers()):
        # the recipe's compress copies the model, which uninitialized buffers refuse: the weights go first
        return set()
    try:
        with warnings.catch_warnings():  # (the run's own compress warns about its patterns: once is enough)
            warnings.simplefilter("ignore")
            _, report = compress(model, max_tt_rank=1, include=include, exclude=exclude, dry_run=True)
    except Exception:  # (whatever stops it, the recipe is safe with the weights loaded first)
        return set()
    return {layer.name for layer in report.layers if layer.replaced}


def _retie(model: nn.Module, ties: Sequence[tuple[str, str, bool]]) -> None:
    """Make every name of :func:`_ties` hold its first name's tensor again (what the recipe's lines do)."""
    for name, first, param in ties:
        owner, _, attr = name.rpartition(".")
        if param:
            model.get_submodule(owner).register_parameter(attr, model.get_parameter(first))
        else:
            model.get_submodule(owner).register_buffer(attr, model.get_buffer(first))


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """The state dict keys of ``model`` that name one tensor (tied weights, a module under two names), by
    tensor, first key first; tensors under one name only are left out."""
    groups: dict[int, list[str]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor):
            groups.setdefault(id(t), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _ties(model: nn.Module, groups: list[list[str]] | None = None) -> list[tuple[str, str, bool]]:
    """(key, the first key of its tensor, whether a parameter) for every key but the first of each group of
    :func:`_tied_groups` (``groups``: ones found before the tensors were replaced)."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    found = _tied_groups(model) if groups is None else groups
    return [(k, keys[0], k in params) for keys in found for k in keys[1:]]


def _with_tied(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` plus the keys it leaves out because their tensor is another key's in ``model`` (tied weights:
    ``safetensors.torch.save_model`` stores a shared tensor once), so that a strict load accepts it."""
    filled = dict(state)
    for keys in _tied_groups(model):
        given = next((k for k in keys if k in state), None)
        if given is not None:
            filled.update({k: state[given] for k in keys if k not in state})
    return filled


def _write_model(
    args: argparse.Namespace,
    model: nn.Module,
    report: CompressionReport,
    called: bool,
    meta: bool,
    replaceable: set[str] | None,
) -> list[str]:
    """Save the compressed model to ``--out``; returns the lines that say how to load it back."""
    replaced = [layer.name for layer in report.layers if layer.replaced]
    header = {
        "model": args.model,
        "budget": _budget(args),
        "include": args.include,
        "exclude": args.exclude,
        "replaced": replaced,
        "tensortrain_version": __version__,
    }
    aliased = _save(Path(args.out), model, header)
    escaped = [_glob_escape(name) for name in replaced]
    first = None
    if replaceable is not None and not set(replaced) <= replaceable:
        first = args.weights
    recipe = _recipe(args.model, called, args.out, escaped, meta, _ties(model), aliased, first)
    return ["", f"wrote {args.out}; to load it back:", *("    " + line for line in recipe)]


def run_compress(args: argparse.Namespace) -> int:
    """``tensortrain compress --model MODULE:ATTR ...``: ``tt.compress`` a model, print the report, save it.

    Example:
        >>> from tensortrain.cli import main
        >>> main(["compress", "--model", "mymodels:mlp", "--max-tt-rank", "8", "--out", "m.pt"])  # doctest: +SKIP
    """
    try:
        _check_target(args.out, "--out")
        _check_target(args.report_json, "--report-json")
        _check_distinct(args)
        model, called, meta, replaceable = _load_model(args)
        try:
            model, report = compress(
                model,
                max_tt_rank=args.max_tt_rank,
                epsilon=args.epsilon,
                ratio=args.ratio,
                include=args.include,
                exclude=args.exclude,
                inplace=True,
                dry_run=args.dry_run,
            )
        except (TypeError, ValueError) as err:
            raise CommandError(str(err)) from err
        # files first, then the printing: a reader that closes the pipe early must not cost the saved model
        lines = [str(report)]
        if args.out is not None:
            lines += _write_model(args, model, report, called, meta, replaceable)
        if args.report_json is not None:
            text = json.dumps(report.to_dict(), indent=2) + "\n"
            atomic_write(Path(args.report_json), text.encode())
            lines.append(f"wrote {args.report_json}")
        print("\n".join(lines), flush=True)
    except BrokenPipeError:
        raise  # (an OSError: main() ends quietly)
    except (CommandError, OSError) as err:  # OSError: an unwritable --out or --report-json
        text = str(err) if isinstance(err, CommandError) else one_line(err)
        print(f"tensortrain: error: {text}", file=sys.stderr)
        return 1
    return 0
