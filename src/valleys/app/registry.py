"""Registries: one name -> object table per kind of choice, with one error that lists the valid names.

:data:`METHODS` holds the training methods (``valleys train --method``): their choices, help, settings (and so
the train flags), validation, schedules, callbacks, saved files and predictive all come from there (see
:class:`valleys.app.methods.Method`). Adding a method is one new file in ``valleys/app/methods/`` plus one
:func:`register_method` line below; nothing else in the run layer or the CLI names methods. The studies have
their own registry (:mod:`valleys.app.studies`).

Nothing here imports torch: the command line's parser reads the registries before any command runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from ..errors import InputError
from . import config
from .methods.base import Method
from .methods.ensemble import Ensemble
from .methods.fge import FGE
from .methods.multiswag import MultiSWAG
from .methods.sgd import SGD
from .methods.swa import SWA
from .methods.swag import SWAG
from .methods.swag_diag import SWAGDiag

__all__ = [
    "Registry",
    "Registration",
    "METHODS",
    "register_method",
    "get_method",
    "method_help",
    "optional_settings",
    "methods_using",
    "refuse_foreign_settings",
]

T = TypeVar("T")


class Registration:
    """A registration that can be undone: ``undo()``, or use it as a context manager (undone on exit), so
    that a test can register something for its own duration."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    def undo(self) -> None:
        """Restore the registry as it was before this registration (once)."""
        if self._undo is not None:
            self._undo()
            self._undo = None

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.undo()


class Registry(Generic[T]):
    """An ordered ``{name: item}`` table of one ``kind`` of choice (``"method"``, ``"subspace"``, ...).

    ``get(name)`` raises :class:`valleys.errors.InputError` listing the valid names (and naming ``flag``, the
    command-line flag the names are given with, if any); ``register(name, item)``
    adds or replaces an entry and returns a :class:`Registration` that restores the table; ``on_change`` is
    called after every change (the method registry updates :class:`valleys.app.config.TrainConfig`)."""

    def __init__(
        self, kind: str, items: dict[str, T] | None = None, *, plural: str | None = None, flag: str | None = None
    ) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self.flag = flag  # the error names the flag the name came from, if there is one
        self._items: dict[str, T] = dict(items or {})
        self.on_change: Callable[[], None] = lambda: None

    def register(self, name: str, item: T) -> Registration:
        """Add ``item`` as ``name`` (replacing an entry of that name); undo with the returned registration."""
        if not name or not isinstance(name, str):
            raise InputError(f"a {self.kind} needs a non-empty name, got {name!r}")
        before = dict(self._items)
        self._items[name] = item
        try:
            self.on_change()
        except Exception:  # the item does not fit (a method redefining another's setting): nothing changes
            self._items.clear()
            self._items.update(before)
            self.on_change()
            raise

        def undo() -> None:
            self._items.clear()
            self._items.update(before)
            self.on_change()

        return Registration(undo)

    def get(self, name: str) -> T:
        """The item called ``name``; :class:`InputError` listing the valid names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise InputError(
                f"unknown {self.flag or self.kind} {name!r}; valid {self.plural}: {', '.join(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        """``(name, item)`` pairs, in registration order."""
        return list(self._items.items())

    def values(self) -> list[T]:
        """The items, in registration order."""
        return list(self._items.values())


#: The training methods of ``valleys train``.
METHODS: Registry[Method] = Registry("method")
METHODS.on_change = lambda: config.set_method_settings([c for m in METHODS.values() for c in m.settings])


def register_method(method: Method) -> Registration:
    """Register a training method under ``method.name``: ``valleys train --method`` offers it, its settings become
    :class:`~valleys.app.config.TrainConfig` fields and ``valleys train`` flags. Returns a
    :class:`Registration` (``with register_method(M()): ...`` undoes it on exit)."""
    return METHODS.register(method.name, method)


register_method(SGD())
register_method(SWA())
register_method(SWAG())
register_method(SWAGDiag())
register_method(FGE())
register_method(Ensemble())
register_method(MultiSWAG())


def get_method(name: str) -> Method:
    """The registered method called ``name``; :class:`InputError` (a ``ValueError``) listing the valid names."""
    return METHODS.get(name)


def method_help() -> dict[str, str]:
    """``{name: one-line help}`` of every method, in registry order."""
    return {name: m.help for name, m in METHODS.items()}


def methods_using(setting: str) -> tuple[str, ...]:
    """The methods whose settings dataclasses have the field ``setting`` (for help texts)."""
    return tuple(
        name
        for name, m in METHODS.items()
        if any(setting in {f.name for f in dataclasses.fields(c)} for c in m.settings)
    )


def optional_settings() -> dict[str, tuple[str, ...]]:
    """``{setting: methods that use it}`` for the exclusive method settings (``setting(..., exclusive=True)``):
    the ones that the other methods refuse."""
    return {f.name: methods_using(f.name) for f in config.method_fields() if f.metadata.get("exclusive")}


def refuse_foreign_settings(method: str, given: dict[str, Any]) -> None:
    """Refuse exclusive method settings given (not ``None``) for a method that does not use them;
    :class:`InputError` naming the flags and the methods they apply to."""
    bad: dict[tuple[str, ...], list[str]] = {}
    for setting, users in optional_settings().items():
        if method not in users and given.get(setting) is not None:
            bad.setdefault(users, []).append("--" + setting.replace("_", "-"))
    for users, flags in bad.items():
        raise InputError(f"{' and '.join(flags)} only apply to --method {', '.join(users)}")
