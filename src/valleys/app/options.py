"""Settings dataclasses that describe themselves, and the command-line flags generated from them (no torch).

A method's or a study's settings are a small dataclass whose fields are made with :func:`setting`: the field's
type and default, its help text, the rule its value obeys (``check``) and the shape of its flag live in the
field's ``metadata``. From that one description :func:`add_flags` generates the ``argparse`` flags (type,
validator, default, help) and :func:`check_settings` checks a settings object made in Python, with the same
rules and the same wording, so that the command line and the library cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError

__all__ = [
    "SEED_MAX",
    "setting",
    "add_flags",
    "check_settings",
    "check_types",
    "flag_name",
    "settings_fields",
    "int_flag",
    "float_flag",
    "path_flag",
    "CHECKS",
]

SEED_MAX = 2**63 - 1  # what every seeded generator (torch, numpy) accepts, with room for seed + epoch


# ---------------------------------------------------------------------- flag validators (argparse ``type=``)
def int_flag(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An ``argparse`` type: an integer in ``[lo, hi]``; argparse prefixes the message with the flag."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rule = what or (f"in [{lo}, {hi}]" if hi is not None else f">= {lo}")
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    parse.__name__ = "integer"
    return parse


def float_flag(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False, what: str = ""
) -> Callable[[str], float]:
    """An ``argparse`` type: a finite float with optional bounds (open or closed); NaN and infinities are always
    refused."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(v)
        bad = bad or (lo is not None and (v <= lo if lo_open else v < lo))
        bad = bad or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            raise argparse.ArgumentTypeError(f"must be {what or 'a finite number'}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def path_flag(text: str) -> str:
    """A file or folder argument: an empty string would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return text


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: ``{check: (rule for ints, rule for floats, predicate, flag type for int, flag type for float)}``
CHECKS: dict[str, tuple[str, str, Callable[[Any], bool], Callable[[str], Any], Callable[[str], Any]]] = {
    "positive": (
        "at least 1",
        "finite and positive",
        lambda v: _finite(v) and v > 0,
        int_flag(1, what="a positive integer"),
        float_flag(0, lo_open=True, what="finite and positive"),
    ),
    "non_negative": (
        "an integer >= 0",
        "finite and >= 0",
        lambda v: _finite(v) and v >= 0,
        int_flag(0, what="an integer >= 0"),
        float_flag(0, what="finite and >= 0"),
    ),
    "at_least_two": (
        "at least 2",
        "at least 2",
        lambda v: _finite(v) and v >= 2,
        int_flag(2, what="at least 2"),
        float,
    ),
    "fraction": (
        "in [0, 1)",
        "a finite number in [0, 1)",
        lambda v: _finite(v) and 0 <= v < 1,
        int,
        float_flag(0, 1, hi_open=True, what="a finite number in [0, 1)"),
    ),
    "seed": (
        "an integer in [0, 2**63 - 1]",
        "an integer in [0, 2**63 - 1]",
        lambda v: isinstance(v, int) and 0 <= v <= SEED_MAX,
        int_flag(0, SEED_MAX, what="an integer in [0, 2**63 - 1]"),
        int_flag(0, SEED_MAX, what="an integer in [0, 2**63 - 1]"),
    ),
    "path": ("a path", "a path", lambda v: isinstance(v, str) and bool(v.strip()), path_flag, path_flag),
}


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    check: str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    exclusive: bool = False,
    positional: bool = False,
    nargs: str | int | None = None,
    choices: Sequence[str] | None = None,
    required: bool = False,
    negation: str | None = None,
    off: str | None = None,
) -> Any:
    """A settings field with everything its flag needs in ``metadata``.

    Args:
        default: the default (a list is copied for each object).
        help: the flag's help text (``%`` written as ``%%``, as argparse wants).
        check: the rule of every value (a key of :data:`CHECKS`); elements of a list each obey it.
        metavar: the flag's value name in ``--help``.
        exclusive: a method setting that other methods refuse (``--swa-lr`` for ``--method fge``).
        positional: a positional argument (named like the field) instead of a ``--flag``.
        nargs, choices, required: as in ``argparse``.
        negation: for a ``bool`` that defaults to ``True``: the help of its ``--no-<name>`` flag.
        off: for a ``bool`` that defaults to ``True``: the name of the one switch that turns it off instead
            (``--homoscedastic`` for ``heteroscedastic``); ``help`` is that switch's.

    A ``{default}`` in ``help`` is replaced by the default (a list's items joined by spaces).
    """
    if check is not None and check not in CHECKS:
        raise InputError(f"unknown check {check!r}; valid checks: {', '.join(CHECKS)}")
    meta = {
        "help": help,
        "check": check,
        "metavar": metavar,
        "exclusive": exclusive,
        "positional": positional,
        "nargs": nargs,
        "choices": tuple(choices) if choices is not None else None,
        "required": required,
        "negation": negation,
        "off": off,
    }
    if isinstance(default, list):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    """``swa_start`` -> ``--swa-start``."""
    return "--" + name.replace("_", "-")


def _base_type(f: dataclasses.Field) -> tuple[str, bool]:
    """``("int", True)`` for a field annotated ``int | None``; lists give their element type."""
    text = str(f.type).replace(" ", "")
    optional = text.endswith("|None")
    text = text.removesuffix("|None")
    if text.startswith("list["):
        text = text[5:-1]
    return text, optional


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def settings_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass made with :func:`setting` (others are not flags)."""
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def add_flags(
    parser: argparse.ArgumentParser | Any, cls: type, *, help_prefix: Callable[[str], str] = lambda name: ""
) -> None:
    """Add a flag (or positional argument) for every :func:`setting` field of the dataclass ``cls`` to
    ``parser``; ``dest`` is the field's name, the default the field's, the type the validator of its ``check``.
    ``help_prefix(name)`` goes before each help text (the methods a train flag applies to)."""
    for f in settings_fields(cls):
        m = f.metadata
        base, _ = _base_type(f)
        default = _default(f)
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        text = help_prefix(f.name) + m["help"].replace("{default}", shown)
        if base == "bool":
            if m.get("off"):  # one switch that turns a True-by-default setting off
                parser.add_argument("--" + m["off"], dest=f.name, action="store_false", help=text)
            elif m["required"]:  # a switch that must be given (the only choice for now)
                parser.add_argument(flag_name(f.name), action="store_true", required=True, help=text)
            elif _default(f) is True:
                parser.add_argument(flag_name(f.name), dest=f.name, action="store_true", default=True, help=text)
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=m["negation"]
                )
            else:
                parser.add_argument(flag_name(f.name), action="store_true", help=text)
            continue
        kwargs: dict[str, Any] = {"help": text}
        check = m["check"]
        if check is not None:
            kwargs["type"] = CHECKS[check][3 if base == "int" else 4]
        elif base in ("int", "float"):
            kwargs["type"] = int if base == "int" else float
        for key in ("nargs", "choices", "metavar"):
            if m[key] is not None:
                kwargs[key] = list(m[key]) if key == "choices" else m[key]
        if m["positional"]:
            parser.add_argument(f.name, **kwargs)
            continue
        if m["required"]:
            kwargs["required"] = True
        parser.add_argument(flag_name(f.name), default=_default(f), **kwargs)


def _type_name(annotation: str) -> tuple[str, bool]:
    base, _, rest = annotation.partition(" | ")
    return base, rest == "None"


def check_types(obj: Any) -> None:
    """Every field of the dataclass ``obj`` has its annotated type (``int`` excludes ``bool``; a ``float`` field
    takes an int; ``X | None`` takes ``None``); :class:`InputError` naming the field otherwise."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        base, optional = _type_name(str(f.type))
        if v is None and optional:
            continue
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
        }.get(base, True)
        if not ok:
            want = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[base]
            raise InputError(f"{f.name} must be {want}{' or null' if optional else ''}, got {v!r} ({type(v).__name__})")


def check_settings(obj: Any, fields: Sequence[dataclasses.Field] | None = None) -> None:
    """Check the values of a settings object against its fields' rules (see :func:`setting`): ``None`` where the
    type allows it, each value (each element of a list) obeying its ``check``, one of its ``choices``;
    :class:`InputError` naming the setting as its flag (``swa-lr must be finite and positive, got -1``)."""
    for f in fields if fields is not None else settings_fields(type(obj)):
        m = f.metadata
        v = getattr(obj, f.name)
        base, optional = _base_type(f)
        if v is None and (optional or m["positional"]):
            continue
        label = f.name.replace("_", "-")
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if m["check"] is not None:
                int_rule, float_rule, ok, *_ = CHECKS[m["check"]]
                if not ok(x):
                    raise InputError(f"{label} must be {int_rule if base == 'int' else float_rule}, got {x}")
            if m["choices"] is not None and x not in m["choices"]:
                raise InputError(f"{label} must be one of {', '.join(m['choices'])}, got {x!r}")
