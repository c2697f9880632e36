"""What every loss-surface study of the command line provides, and their registry (no torch at import).

A :class:`Study` has a name (its ``valleys <name>`` subcommand), a one-line help, a settings dataclass (fields
made with :func:`valleys.app.options.setting`, from which the subcommand's flags are generated), a ``run``
that returns a typed :class:`StudyResult`, the figures it draws and the lines of its report.
:func:`run_study` checks the output folder, runs the study and writes ``results.json``, the figures and
``report.md``. Adding a study is one new module in ``valleys/app/studies/`` plus one
:func:`register_study` line in its ``__init__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from ..options import check_settings, setting
from ..registry import Registration, Registry

__all__ = ["Study", "StudyContext", "StudyResult", "STUDIES", "register_study", "get_study", "run_study"]


@dataclass(frozen=True)
class StudyContext:
    """How a study runs (not what it studies): whether progress bars show."""

    progress: bool = False


@dataclass(frozen=True)
class StudyResult:
    """What a study found: ``values`` is exactly what ``results.json`` holds (read-only); ``title`` heads its
    report and figures; ``kind`` names the result's shape (``plane``, ``path``, ...)."""

    kind: str
    title: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` object (see :func:`valleys.core.checkpoint.json_safe`)."""
        return dict(self.values)


class Study:
    """One loss-surface study: override ``run`` (and ``figures``, ``report_lines``, ``summary`` if it has them).

    Class attributes:
        name: the subcommand; help: its one-line help.
        settings: the settings dataclass; its fields are the subcommand's flags and arguments.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    settings: ClassVar[type] = object

    def check(self, settings: Any) -> None:
        """Refuse settings that do not fit together (before any work); :class:`valleys.errors.InputError`."""

    def run(self, settings: Any, context: StudyContext) -> StudyResult:  # pragma: no cover - abstract
        """Run the study and return its result."""
        raise NotImplementedError

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        """Draw the result's figures under ``out / "figures"``; their paths."""
        return []

    def report_lines(self, result: StudyResult) -> list[str]:
        """The Markdown lines of ``report.md`` between its header and its figures."""
        return []

    def summary(self, result: StudyResult) -> str:
        """One line the command prints besides the files it wrote (empty: none)."""
        return ""


#: The studies of the command line, ``valleys <name>`` each.
STUDIES: Registry[Study] = Registry("study", plural="studies")


def register_study(study: Study) -> Registration:
    """Register ``study`` under ``study.name``: ``valleys <name>`` runs it. Returns a :class:`Registration`
    (``with register_study(S()): ...`` undoes it on exit)."""
    return STUDIES.register(study.name, study)


def get_study(name: str) -> Study:
    """The registered study called ``name``; :class:`valleys.errors.InputError` listing the valid names."""
    return STUDIES.get(name)


def run_study(
    study: Study | str,
    settings: Any,
    out: str | Path,
    *,
    context: StudyContext | None = None,
    overwrite: bool = False,
    title: str | None = None,
) -> StudyResult:
    """Run ``study`` with ``settings`` and write it into the folder ``out`` (``results.json``, figures,
    ``report.md``): the folder is checked first (see :func:`valleys.app.folders.check_output`; a run or curve
    folder is never replaced), the settings are checked by their fields' rules and by the study. ``title``
    replaces the result's own title."""
    from ..folders import check_output, refuse_reading_from
    from .write import write_study

    study = get_study(study) if isinstance(study, str) else study
    check_output(out, overwrite=overwrite, study=True)  # before any work (a run folder: refused, named so)
    refuse_reading_from(out, _input_paths(settings))
    check_settings(settings)
    study.check(settings)
    result = study.run(settings, context or StudyContext())
    if title is not None:
        result = StudyResult(result.kind, title, result.values)
    write_study(out, study, result, overwrite=overwrite)
    return result


def _input_paths(settings: Any) -> list[str]:
    """The files and folders a study's settings name (string settings, or lists of them, that exist)."""
    import dataclasses

    found: list[str] = []
    for f in dataclasses.fields(settings) if dataclasses.is_dataclass(settings) else []:
        if f.name == "out":
            continue
        v = getattr(settings, f.name)
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(x, str) and x and Path(x).exists():
                found.append(x)
    return found


# ---------------------------------------------------------------------- settings several studies share
def bn_setting() -> Any:
    """``--bn``: BatchNorm statistics recomputed at every point, or the network's own kept."""
    return setting("recompute", "BatchNorm policy per point", choices=("recompute", "keep"))


def grid_setting() -> Any:
    """``--grid``: points per axis of a plane."""
    return setting(21, "points per axis (>= 2)", check="at_least_two")


def margin_setting() -> Any:
    """``--margin``: the plane's margin around its marked points."""
    return setting(0.2, "margin around the marked points (fraction)", check="non_negative")


def seed_setting(help: str = "seed of the directions") -> Any:
    """``--seed``."""
    return setting(0, help, check="seed")
