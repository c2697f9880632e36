"""Drive the ``valleys`` command line as a user would and check how it refuses bad input.

``refused(argv, capsys, names=..., untouched=[...])`` runs ``valleys.app.cli.main(argv)`` in this process
and asserts the contract of every refusal: no exception escapes (a user would see a traceback), the exit
status is nonzero, stderr ends with one line ``valleys <command>: error: ...`` (argparse's usage line may
precede it) that names the flag or file, nothing says "Traceback", and every folder in ``untouched`` is
byte-identical afterwards (same files, same SHA-256).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from valleys.app.cli import main

# every refusal, by command: the bad-input suite counts them (tests/bad_input/test_count.py prints the table)
CASES: dict[str, int] = {}


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def digest(path: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``path`` (a file: itself); ``{}`` if it does not exist."""
    root = Path(path)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(argv: Sequence[str], capsys) -> Outcome:
    """``main(argv)`` in this process; SystemExit (argparse) becomes its code. Any other exception fails the
    test with the traceback the user would have seen."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def refused(
    argv: Sequence[str],
    capsys,
    *,
    names: str | Iterable[str] = (),
    untouched: Iterable[str | os.PathLike] = (),
    command: str | None = None,
) -> str:
    """Assert the refusal contract (see the module docstring); returns the error line."""
    argv = [str(a) for a in argv]
    command = command or (argv[0] if argv else "valleys")
    CASES[command] = CASES.get(command, 0) + 1
    folders = list(untouched)
    before = [digest(f) for f in folders]
    res = run(argv, capsys)
    assert res.code != 0, f"{argv} was accepted (exit 0); stdout: {res.out[-500:]}"
    assert "Traceback" not in res.err and "Traceback" not in res.out, res.err
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert lines, f"{argv} failed with exit {res.code} and no message"
    last = lines[-1]
    assert "error:" in last, f"the last line is not an error message: {last!r}"
    assert "internal error" not in last, f"a bug, not a refusal: {last!r}"
    others = [
        ln
        for ln in lines[:-1]
        if not ln.startswith(("usage:", " ", "\t"))
        and "interrupted" not in ln
        and not re.search(r"\d+s elapsed|\[\d+:\d+", ln)
    ]  # progress lines (plain or tqdm) are not messages
    assert not others, f"more than one line of message: {lines}"
    for name in [names] if isinstance(names, str) else list(names):
        assert name.lower() in last.lower(), f"{name!r} not named in {last!r}"
    for f, b in zip(folders, before, strict=True):
        assert digest(f) == b, f"{f} changed"
    return last
