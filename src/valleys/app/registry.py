"""The registry of training methods: ``valleys train --method`` choices, their help, validation, schedules,
callbacks, saved files and predictive all come from here (see :class:`valleys.app.methods.Method`).

Adding a method is one new file in ``valleys/app/methods/`` (a :class:`~valleys.app.methods.Method` subclass)
plus one line in :data:`REGISTRY` below; nothing else in the run layer or the CLI names methods.
"""

from __future__ import annotations

from .methods.base import Method
from .methods.ensemble import Ensemble
from .methods.fge import FGE
from .methods.multiswag import MultiSWAG
from .methods.sgd import SGD
from .methods.swa import SWA
from .methods.swag import SWAG
from .methods.swag_diag import SWAGDiag

__all__ = ["REGISTRY", "get_method", "method_help", "optional_settings", "methods_using"]

REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        SGD(),
        SWA(),
        SWAG(),
        SWAGDiag(),
        FGE(),
        Ensemble(),
        MultiSWAG(),
    )
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(REGISTRY)}") from None


def method_help() -> dict[str, str]:
    """``{name: one-line help}`` of every method, in registry order."""
    return {name: m.help for name, m in REGISTRY.items()}


def optional_settings() -> dict[str, tuple[str, ...]]:
    """``{setting: methods that use it}`` for the method-specific settings (see ``Method.settings``)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, m in REGISTRY.items():
        for s in m.settings:
            out[s] = out.get(s, ()) + (name,)
    return out


def methods_using(setting: str) -> tuple[str, ...]:
    """The methods whose ``settings`` or ``uses`` include ``setting`` (for help texts)."""
    return tuple(name for name, m in REGISTRY.items() if setting in m.settings + m.uses)
