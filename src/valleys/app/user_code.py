"""References to the user's own code on the command line: ``module.path:name`` or ``path/to/file.py:name``.

``--model``, ``--data`` and ``--loss`` take such a reference; :func:`load_reference` imports the object it
names and :func:`call_factory` calls it, turning every way this can fail (no such module or file, a file that is
not Python, a missing name, a factory that raises) into one :class:`valleys.errors.UserCodeError` line naming
the flag. :func:`reference_sha256` hashes the file behind a reference, so that a run folder can refuse to be
rebuilt from a file that changed since it was trained. No torch at import.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserCodeError

__all__ = [
    "is_reference",
    "split_reference",
    "absolute_reference",
    "load_reference",
    "call_factory",
    "reference_file",
    "reference_sha256",
    "parse_key_values",
    "short_name",
]

_FILE_MODULES: dict[tuple[str, float], Any] = {}


def is_reference(text: str) -> bool:
    """Whether ``text`` names user code (``module:name`` or ``file.py:name``) rather than a built-in name."""
    return ":" in text


def split_reference(ref: str, flag: str) -> tuple[str, str]:
    """``(module or file, name)`` of a reference; :class:`UserCodeError` if either part is empty."""
    where, _, name = ref.rpartition(":")
    if not where or not name or not name.replace(".", "_").isidentifier():
        raise UserCodeError(
            f"{flag} {ref!r} is not a reference to your code: write module.path:name or path/to/file.py:name"
        )
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def absolute_reference(ref: str, flag: str) -> str:
    """``ref`` with a file part made absolute (a run folder must rebuild the model from any working folder);
    module references are kept as given."""
    where, name = split_reference(ref, flag)
    return f"{Path(where).resolve()}:{name}" if _is_file(where) else ref


def reference_file(ref: str, flag: str) -> Path | None:
    """The source file behind a reference (the ``.py`` file, or the module's ``__file__``), ``None`` if the
    module has no file (a built-in or namespace package)."""
    where, _ = split_reference(ref, flag)
    if _is_file(where):
        return Path(where)
    module = _import_module(where, flag, ref)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def reference_sha256(ref: str, flag: str) -> str | None:
    """SHA-256 of the source file behind ``ref`` (see :func:`reference_file`), ``None`` without a file."""
    path = reference_file(ref, flag)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def _import_module(where: str, flag: str, ref: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: the working folder first
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name is not None and where.startswith(e.name):
            raise UserCodeError(
                f"{flag} {ref!r}: no module named {e.name!r} (install it, run from the folder that holds it, add "
                "that folder to PYTHONPATH, or give a file: path/to/file.py:name)"
            ) from None
        raise UserCodeError(f"{flag} {ref!r}: importing {where} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing
        raise UserCodeError(f"{flag} {ref!r}: importing {where} raised {type(e).__name__}: {e}") from None


def _import_file(where: str, flag: str, ref: str) -> Any:
    path = Path(where)
    if not path.is_file():
        raise UserCodeError(f"{flag} {ref!r}: the file {where} does not exist")
    if path.suffix != ".py":
        raise UserCodeError(f"{flag} {ref!r}: {where} is not a Python file (.py); name a .py file or a module")
    source = path.read_bytes()
    try:
        ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as e:
        line = f" (line {e.lineno}: {e.msg})" if isinstance(e, SyntaxError) else ""
        raise UserCodeError(f"{flag} {ref!r}: {where} is not valid Python{line}") from None
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    digest = hashlib.sha256(key[0].encode()).hexdigest()[:12]
    name = f"valleys_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file that exists always has a spec
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # the file may import its neighbours, as when run as a script
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UserCodeError(f"{flag} {ref!r}: running {where} raised {type(e).__name__}: {e}") from None
    _FILE_MODULES[key] = module
    return module


def load_reference(ref: str, flag: str) -> Callable[..., Any]:
    """The callable that ``ref`` names (``module.path:name``, ``file.py:name``; ``name`` may be dotted, as in
    ``Class.build``); :class:`UserCodeError` naming ``flag`` if it cannot be found or is not callable."""
    where, name = split_reference(ref, flag)
    module = _import_file(where, flag, ref) if _is_file(where) else _import_module(where, flag, ref)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"{flag} {ref!r}: {where} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{flag} {ref!r}: {name} is a {type(obj).__name__}, not a callable")
    return obj


def call_factory(ref: str, flag: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Call the factory ``ref`` names with ``kwargs``; an exception inside it becomes a :class:`UserCodeError`
    that shows its message (the traceback belongs to the user's code, not to valleys)."""
    fn = load_reference(ref, flag)
    try:
        return fn(**(kwargs or {}))
    except Exception as e:
        raise UserCodeError(f"{flag} {ref!r}: the factory raised {type(e).__name__}: {e}") from None


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["width=64", "act=relu", "p=0.1"]`` -> ``{"width": 64, "act": "relu", "p": 0.1}``: each value is read as
    JSON when it is JSON (numbers, ``true``, lists, quoted strings), else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserCodeError(f"{flag} expects key=value pairs (a Python name, =, a value), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def short_name(text: str) -> str:
    """A name for folders and reports: a reference's object name (``file.py:make_net`` -> ``make_net``), a file's
    stem (``data.npz`` -> ``data``), a built-in name as it is."""
    if is_reference(text):
        return text.rpartition(":")[2]
    return Path(text).stem if text.endswith(".npz") else text
