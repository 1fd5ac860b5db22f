"""An own model: the function named by ``model:`` in the parameters, its source, and its signature as a registry.

``model: nets.py:build`` (a file relative to the parameters file) or ``model: package.module:build`` names
``build(n_inputs, n_outputs, *, <hyperparameters>) -> keras.Model``. Its keyword-only arguments are the model's
hyperparameters, typed by their annotations (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``) with the
signature's defaults. The signature is read from the source text (``ast``), never by importing it: the
configuration stays instant and Keras is not imported before its backend is chosen. The function is imported only
where it is built (:func:`load_function`), from the copy a scan keeps of the source.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hhscan.errors import ModelError, UserCodeError, did_you_mean
from hhscan.settings import hyperparameters as hp

_KINDS = {"int": int, "float": float, "bool": bool, "str": str}
POSITIONAL = ("n_inputs", "n_outputs")


def split_spec(spec: str) -> tuple[str, str]:
    """``nets.py:build`` → (``nets.py``, ``build``); the text before the last colon names the file or module."""
    where, colon, function = spec.rpartition(":")
    if not colon or not where or not function.isidentifier():
        raise ValueError(f"'{spec}' is not 'file.py:function' or 'package.module:function'")
    return where, function


def resolve(spec: str, base: Path) -> tuple[str, str]:
    """The spec with its file made absolute (a module is replaced by its file), and that file's text.

    A file is relative to ``base`` (the parameters file's directory); a missing one lists the closest ``.py`` files
    there, a missing module the closest names of its package.
    """
    where, function = split_spec(spec)
    if where.endswith(".py") or "/" in where:
        path = (base / where).resolve()
        if not path.is_file():
            siblings = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
            raise ValueError(f"{path}: no such file ({did_you_mean(path.name, siblings, 'Python files there')})")
    else:
        path = _module_file(where)
    return f"{path}:{function}", path.read_text()


def _module_file(name: str) -> Path:
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package that is missing
        found = None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        parent, _, leaf = name.rpartition(".")
        import pkgutil

        known = [m.name for m in pkgutil.iter_modules(_package_path(parent))] if parent else []
        hint = f" ({did_you_mean(leaf, known, 'modules')})" if known else ""
        raise ValueError(f"no importable Python module '{name}'{hint}")
    return Path(found.origin)


def _package_path(name: str) -> list[str] | None:
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return list(found.submodule_search_locations or []) if found else None


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@functools.lru_cache(maxsize=32)
def registry(spec: str, source: str) -> dict[str, hp.Hyperparameter]:
    """The training entries of hhscan's registry followed by the function's keyword-only arguments.

    Errors are ``ValueError`` naming the function and the argument (the configuration adds ``file:model``).
    """
    where, function = split_spec(spec)
    file = Path(where).name
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as error:
        raise ValueError(f"{where}:{error.lineno}: {error.msg} (the file does not parse)") from None
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if function not in functions:
        raise ValueError(f"{file} has no function '{function}' ({did_you_mean(function, functions, 'functions')})")
    arguments = functions[function].args
    positional = [a.arg for a in arguments.posonlyargs + arguments.args]
    if len(positional) != len(POSITIONAL) or arguments.vararg or arguments.kwarg:
        raise ValueError(f"{function}() in {file} must be {function}(n_inputs, n_outputs, *, <hyperparameters>), "
                         f"not {function}({ast.unparse(arguments)})")  # fmt: skip
    training = {name: entry for name, entry in hp.REGISTRY.items() if not entry.network}
    entries = dict(training)
    for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        name, what = argument.arg, f"{function}() in {file}: argument '{argument.arg}'"
        if name in training:
            raise ValueError(f"{what} is one of hhscan's training hyperparameters ({', '.join(training)}): rename it")
        if default is None:
            raise ValueError(f"{what} needs a default (the value a grid that omits it takes)")
        kind, choices = _annotation(argument.annotation, what)
        try:
            value = ast.literal_eval(default)
        except ValueError:
            raise ValueError(f"{what}: its default {ast.unparse(default)} is not a literal value") from None
        entry = hp.Hyperparameter(name, kind, value, choices=choices, network=True, hashed_at_default=False)
        try:
            entry.check(value)
        except hp.InvalidHyperparameter as error:
            raise ValueError(f"{what}: default {error.message}") from None
        entries[name] = entry
    return entries


def _annotation(node: ast.expr | None, what: str) -> tuple[type, tuple[str, ...] | None]:
    """``int``/``float``/``bool``/``str`` or ``Literal['a', 'b']`` (a string annotation is read the same way)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "int", or from __future__ import annotations
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            node = None
    if isinstance(node, ast.Name) and node.id in _KINDS:
        return _KINDS[node.id], None
    if isinstance(node, ast.Subscript) and (getattr(node.value, "id", None) == "Literal"
                                            or getattr(node.value, "attr", None) == "Literal"):  # fmt: skip
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        values = [item.value for item in items if isinstance(item, ast.Constant)]
        if len(values) == len(items) and values and all(isinstance(v, str) for v in values):
            return str, tuple(values)
        raise ValueError(f"{what}: a Literal hyperparameter takes strings, e.g. Literal['relu', 'gelu']")
    shown = "no annotation" if node is None else f"'{ast.unparse(node)}'"
    raise ValueError(f"{what} has {shown}; annotate it int, float, bool, str or Literal[...]")


def arguments(spec: str, source: str, point: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one trial's call: the model's own entries of its (canonical) point."""
    entries = registry(spec, source)
    return {name: entry.canonical(point.get(name, entry.default)) for name, entry in entries.items() if entry.network}


def module_name(source: str) -> str:
    """The module an own model's source is imported as: one per content, the same in every process."""
    return f"hhscan_model_{source_hash(source)[:16]}"


def load_function(spec: str) -> Callable[..., Any]:
    """Import the spec's file (under a name unique to its content, so a changed file is another module) and return
    the function. An import that fails shows the user's own traceback, not hhscan's."""
    where, function = split_spec(spec)
    path = Path(where)
    name = module_name(path.read_text())
    module = sys.modules.get(name)
    if module is None:
        module = import_source(name, path)
    found = getattr(module, function, None)
    if not callable(found):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelError(f"{path}: no function '{function}' ({did_you_mean(function, names, 'functions')})")
    return found


def import_source(name: str, path: Path):
    """The module ``name`` executed from ``path`` and registered in ``sys.modules`` (Keras finds custom layers'
    classes there when it loads a saved model)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    imported = False
    try:  # the user's error passes through as it is: callers translate it (``import_failure``) under their policy
        spec.loader.exec_module(module)
        imported = True
    finally:
        if not imported:
            del sys.modules[name]
    return module


def import_failure(spec: str, error: BaseException) -> UserCodeError:
    """The one-line error for an own model's file that failed to import, carrying the user's traceback."""
    theirs = user_frames(error)
    where = f" (line {theirs[-1].lineno} of {Path(theirs[-1].filename).name})" if theirs else ""
    return UserCodeError(f"{split_spec(spec)[0]}: importing it failed{where}: {type(error).__name__}: {error}",
                         user_traceback(error))


def user_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``error``'s traceback outside hhscan and importlib: the user's part."""
    own = str(Path(__file__).resolve().parents[1])
    frames = traceback.extract_tb(error.__traceback__)
    return [f for f in frames if not (f.filename.startswith(own) or f.filename.startswith("<frozen"))]


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` as Python prints it, with the user's frames only."""
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(user_frames(error))]
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines).rstrip()

