"""Writing a study's folder: ``results.json``, its figures and ``report.md``."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...core.checkpoint import write_json
from ..folders import check_output, output_guard
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
        (out / "report.md").write_text("\n".join(lines))
    return out


def _clear_study(out: Path) -> None:
    """Remove an earlier study's files from ``out`` (its figures would otherwise outlive it)."""
    for name in ("results.json", "report.md", "summary.json"):
        (out / name).unlink(missing_ok=True)
    if (out / "figures").is_dir():
        shutil.rmtree(out / "figures")
