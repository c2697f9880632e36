"""``--config FILE.toml`` for every command, and the ``config.toml`` a run folder holds (no torch at import).

A config file's keys are the command's flags, spelt as settings (``batch_size = 64`` or ``batch-size = 64``;
``model_args = {hidden = 8}`` for ``--model-args hidden=8``); flags typed on the command line win over the
file. :func:`config_argv` turns the file into command-line tokens, so every value goes through the same
parser, validators and messages as a typed flag; a key that is not a flag of the command, or a value of the wrong
type, is refused naming the file and the key. :func:`write_toml` writes a run's fully resolved settings in
the same format, so ``valleys train --config RUN/config.toml --out RUN2`` trains the same run again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["read_toml", "write_toml", "toml_text", "config_argv", "find_config"]


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table in a TOML file; :class:`ConfigError` naming the file if it is missing or not valid TOML."""
    import importlib

    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")  # tomli: Python 3.10
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: the file does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path} is not valid TOML ({e})") from None


def _value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"{key} = {v}: TOML settings must be finite")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, key) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {_value(x, key)}" for k, x in v.items()) + "}"
    raise ConfigError(f"{key}: a {type(v).__name__} cannot be written to TOML")


def toml_text(settings: Mapping[str, Any], header: str = "") -> str:
    """``settings`` as TOML ``key = value`` lines (``None`` values left out: TOML has no null; tables inline)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_value(v, k)}" for k, v in settings.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_toml(path: str | Path, settings: Mapping[str, Any], header: str = "") -> None:
    """Write ``settings`` to ``path`` as TOML, atomically (see :func:`toml_text`)."""
    from ..core.checkpoint import write_text

    write_text(path, toml_text(settings, header))


def find_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(path, argv without --config PATH)``: the ``--config`` of a command line, if any."""
    rest, path = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file: --config FILE.toml")
            path, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def _typed(argv: Sequence[str], parser: argparse.ArgumentParser) -> set[str]:
    """The destinations of the flags typed in ``argv``."""
    dests = set()
    for a in argv:
        if a.startswith("-"):
            action = parser._option_string_actions.get(a.split("=", 1)[0])
            if action is not None:
                dests.add(action.dest)
    return dests


def config_argv(path: str, parser: argparse.ArgumentParser, typed: Sequence[str]) -> list[str]:
    """The tokens that the TOML file ``path`` stands for in the sub-command ``parser`` (flags in ``typed``, the
    rest of the command line, left out: they win). :class:`ConfigError` for a key that is not a flag."""
    table = read_toml(path)
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", argparse.SUPPRESS):
            by_dest.setdefault(action.dest, []).append(action)
    by_flag = {s.lstrip("-").replace("-", "_"): a.dest for a in parser._actions for s in a.option_strings}
    given = _typed(typed, parser)
    tokens: list[str] = []
    for key, value in table.items():
        dest = by_flag.get(key.replace("-", "_"), key.replace("-", "_"))
        if dest not in by_dest or dest == "config":
            positional = [a.dest for a in parser._actions if not a.option_strings]
            hint = f" ({key} is an argument: give it on the command line)" if key in positional else ""
            raise ConfigError(
                f"--config {path}: {key!r} is not a flag of this command{hint}; flags: "
                + ", ".join(sorted(k for k in by_dest if k != "config"))
            )
        if dest in given:
            continue
        tokens += _tokens(by_dest[dest], value, path, key)
    return tokens


def _tokens(actions: list[argparse.Action], value: Any, path: str, key: str) -> list[str]:
    if isinstance(value, dict):
        if not value:  # an empty table: the flag's default
            return []
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"--config {path}: {key} must be a table of key = value")
        return [actions[0].option_strings[-1], *[f"{k}={json.dumps(v)}" for k, v in value.items()]]
    if isinstance(value, bool):
        for a in actions:
            if isinstance(a, argparse._StoreTrueAction):
                return [a.option_strings[-1]] if value else []
            if isinstance(a, argparse._StoreFalseAction):
                return [] if value else [a.option_strings[-1]]
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, (dict, list)) for v in values):
        raise ConfigError(f"--config {path}: {key} = {value!r} has the wrong type for its flag")
    for a in actions:
        if a.nargs == 0:
            raise ConfigError(f"--config {path}: {key} is an on/off flag; write {key} = true or false")
        if a.choices is not None and not all(v in a.choices for v in values):
            continue
        if isinstance(value, list) and a.nargs in (None, "?"):
            raise ConfigError(f"--config {path}: {key} takes one value, got a list {value!r}")
        flag = a.option_strings[-1]
        if not isinstance(value, list):  # --flag=value: a value that starts with "-" stays a value
            return [f"{flag}={_text(value)}"]
        return [flag, *(_text(v) for v in values)]
    flag = actions[0].option_strings[-1]  # no flag takes it: the parser names the valid choices
    return [f"{flag}={_text(value)}"] if not isinstance(value, list) else [flag, *(_text(v) for v in values)]


def _text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)
