"""Writing a study's folder: ``results.json``, its figures and ``report.md``."""

from __future__ import annotations

from pathlib import Path

from ...core.checkpoint import write_json, write_text
from ..folders import check_output, output_guard, set_aside
from .base import Study, StudyResult

__all__ = ["write_study"]


def write_study(out: str | Path, study: Study, result: StudyResult, *, overwrite: bool = False) -> Path:
    """Write ``results.json``, the study's figures and a short ``report.md`` for ``result`` into ``out``.

    A folder that already holds valleys output is refused unless ``overwrite`` (an earlier study's files are
    then replaced); a run or curve folder is always refused (see :func:`valleys.app.folders.check_output`). If
    writing fails, what this call created is removed."""
    out = check_output(out, overwrite=overwrite, study=True)
    with output_guard(out):
        _clear_study(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", result)
        figs = study.figures(result, out)
        values = result.values
        lines = [
            f"# {result.title}",
            "",
            f"Units: {values.get('units', 'n/a')}. BatchNorm: {values.get('bn', 'n/a')}.",
            "",
            *study.report_lines(result),
        ]
        lines += [""] + [f"![{f.stem}]({f.relative_to(out)})" for f in figs] + [""]
        write_text(out / "report.md", "\n".join(lines))
    return out


def _clear_study(out: Path) -> None:
    """Set an earlier study's files in ``out`` aside (its figures would otherwise outlive it); they come back if
    writing the new one fails (:func:`valleys.app.folders.set_aside`)."""
    if out.is_dir():
        set_aside(out, ["results.json", "report.md", "summary.json", "figures"])
