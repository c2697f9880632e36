"""The results page (docs/results.md) from a finished demo folder: ``python tools/results_tables.py DEMO_DIR``.

Reads ``DEMO_DIR/results.json`` (what ``valleys demo`` / ``make demo`` writes) and prints Markdown: where the
numbers come from (the date the demo finished, the command, the machine), the test metrics of every method,
the budget protocol, the talk's claims with their verdicts, OOD detection, mode connectivity, flatness,
subspace inference and the semi-supervised study. The tables are formatted by the same functions as the
demo's own ``report.md`` (:func:`valleys.app.report.markdown_table`, :func:`valleys.app.claims.claims_markdown`),
so the page says what the run says and nothing else::

    python tools/results_tables.py runs/demo > docs/results.md
    python tools/results_tables.py runs/demo --command "make demo" --machine "2-core Xeon VM" > docs/results.md

``--machine`` defaults to a description of the machine running the script (CPU model, core count, torch
version): pass it when the demo ran elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from valleys.app.claims import claims_markdown
from valleys.app.report import cell, markdown_table


def describe_machine() -> str:
    """CPU model, logical core count, OS, Python and torch versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_v = f"torch {torch.__version__}"
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_v = "torch not installed"
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}, Python {platform.python_version()}, {torch_v}"


def _stats_row(stats: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    return {k: dict(stats[k]) for k in keys}


def _section_methods(res: Mapping[str, Any]) -> list[str]:
    rows = {m["method"]: m["spread"]["test"] for m in res["methods"]}
    return [
        "## Test metrics",
        "",
        f"`{res['model']}` on `{res['dataset']}`, mean ± std over seeds {res['seeds']}; every method has the same "
        "training budget.",
        "",
        markdown_table(rows),
        "",
    ]


def _section_budgets(res: Mapping[str, Any]) -> list[str]:
    b = res.get("budgets")
    if not b:
        return []
    spe = b["steps_per_epoch"]
    budgets = ", ".join(f"{k} = {e} epochs ({e * spe} steps)" for k, e in b["epochs"].items())
    return [
        "## The budget protocol (Izmailov et al. 2018)",
        "",
        f"SGD at one budget against SWA and SWAG at each multiple of it, the same averaging start. {budgets}.",
        "",
        markdown_table(b["rows"]),
        "",
    ]


def _section_claims(res: Mapping[str, Any]) -> list[str]:
    if not res.get("claims"):
        return []
    return [
        "## The talk's claims",
        "",
        "One row per claim of the talk the demo measures: the two numbers, their paired difference over seeds "
        "± its standard error (negative favours the claim) and the verdict.",
        "",
        *claims_markdown(res["claims"]),
        "",
    ]


def _section_ood(res: Mapping[str, Any]) -> list[str]:
    rows = [m for m in res["methods"] if "ood_auroc" in m]
    if not rows:
        return []
    return [
        "## Out-of-distribution detection",
        "",
        "Trained on classes 0-4; the test inputs of classes 5-9 are out of distribution. AUROC of the predictive "
        "entropy, mean ± std over seeds.",
        "",
        "| method | OOD AUROC |",
        "|---|---|",
        *[f"| {m['method']} | {m['ood_auroc']['mean']:.4f} ± {m['ood_auroc']['std']:.4f} |" for m in rows],
        "",
    ]


def _section_curves(res: Mapping[str, Any]) -> list[str]:
    mc = res.get("mode_connectivity")
    if not mc:
        return []
    s = mc["summary"]
    return [
        "## Mode connectivity (Garipov et al. 2018)",
        "",
        f"{mc['kind'].capitalize()} curves ({mc['bends']} control points, {mc['epochs']} epochs from LR "
        f"{mc['lr']:g}) between the SGD networks of different seeds, {len(mc['pairs'])} pairs, {mc['points']} "
        f"points per path, BatchNorm: {mc['bn']}. Mean ± std over pairs.",
        "",
        "| path | max test error (%) | max train loss |",
        "|---|---|---|",
        f"| worse endpoint | {cell(s['worse_endpoint_test_error'], 'error')} | |",
        f"| straight segment | {cell(s['segment_max_test_error'], 'error')} | "
        f"{cell(s['segment_max_train_loss'], 'loss')} |",
        f"| curve | {cell(s['curve_max_test_error'], 'error')} | {cell(s['curve_max_train_loss'], 'loss')} |",
        "",
    ]


def _section_geometry(res: Mapping[str, Any]) -> list[str]:
    g = res.get("geometry")
    if not g:
        return []
    s = g["summary"]
    return [
        "## Flatness and valley width",
        "",
        f"Top Hessian eigenvalue of the train loss on the {g['sharpness_subset']} (Lanczos); valley width: the "
        f"distance along a random unit direction where the train loss first rises by {g['rise']} ({g['units']}); "
        "the change of the train loss from each end of the SWA-SGD line to half their distance further out. "
        "Mean ± std over seeds.",
        "",
        "| | SWA | SGD |",
        "|---|---|---|",
        f"| top Hessian eigenvalue | {cell(s['eig_SWA'], 'x')} | {cell(s['eig_SGD'], 'x')} |",
        f"| valley width | {cell(s['width_SWA'], 'x')} | {cell(s['width_SGD'], 'x')} |",
        f"| train loss on the line | {cell(s['loss_SWA'], 'x')} | {cell(s['loss_SGD'], 'x')} |",
        f"| test error on the line (%) | {cell(s['error_SWA'], 'error')} | {cell(s['error_SGD'], 'error')} |",
        f"| train loss change 0.5 d further out | {cell(s['rise_out_SWA'], 'x')} | {cell(s['rise_out_SGD'], 'x')} |",
        "",
    ]


def _section_subspace(res: Mapping[str, Any]) -> list[str]:
    sub = res.get("subspace")
    if not sub or not sub.get("rows"):
        return []
    base = {m["method"]: m["spread"]["test"] for m in res["methods"] if m["method"] in ("SGD", "SWA", "SWAG")}
    rows = {**base, **{f"{k} (k = {sub['rank']})": v for k, v in sub["rows"].items()}}
    chosen = "; ".join(f"{k}: T {v['temperature']:g}, s {v['prior_scale']:g}" for k, v in sub.get("chosen", {}).items())
    cands = sub.get("candidates", {})
    return [
        "## Subspace inference (Izmailov et al. 2019)",
        "",
        f"Subspaces of dimension {sub['rank']} around each SWAG run's mean, {sub['settings']['samples']} samples "
        f"after {sub['settings']['burn_in']} burn-in steps of elliptical slice sampling. Temperature T among "
        f"{cands.get('temperature')} and prior scale s among {cands.get('prior_scale')} chosen on the "
        f"{sub.get('chosen_on', 'validation split')} ({chosen}). Test metrics, mean ± std over seeds.",
        "",
        markdown_table(rows),
        "",
    ]


def _section_semisup(res: Mapping[str, Any]) -> list[str]:
    ss = res.get("semisup")
    if not ss:
        return []
    st = ss["settings"]
    lines = [
        "## Semi-supervised learning (Athiwaratkun et al. 2019)",
        "",
        f"`{st['model']}` on `{st['dataset']}` with {st['labels_per_class']} labels per class, {st['epochs']} "
        f"epochs in cycles of {st['cycle']}, consistency weight {st['consistency_weight']:g}, EMA decay "
        f"{st['ema_decay']}. Test error (%), mean ± std over seeds {st['seeds']}.",
        "",
        "| consistency | base | teacher | SWA | fast-SWA |",
        "|---|---|---|---|---|",
    ]
    for term, kinds in ss["summary"].items():
        cells = [
            cell(kinds[k]["error"], "error") if k in kinds else "" for k in ("student", "teacher", "swa", "fastswa")
        ]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    return lines + [""]


def _section_semisup_study(study_dir: str | Path, command: str) -> list[str]:
    """A ``valleys semisup`` folder's results (a preset whose study runs alone): the table of
    :func:`_section_semisup`, its wall time and its claims table."""
    res = json.loads((Path(study_dir) / "results.json").read_text())
    total = res.get("timing", {}).get("total_s")
    lines = _section_semisup({"semisup": res})
    lines[2:2] = [f"Run: `{command}`" + (f", in {total / 60:.1f} minutes" if total else "") + ".", ""]
    return lines + ["Its claims:", "", *claims_markdown(res.get("claim_rows") or []), ""]


def render(
    demo_dir: str | Path,
    *,
    command: str,
    machine: str | None = None,
    semisup: str | Path | None = None,
    semisup_command: str = "",
) -> str:
    """The results page of one demo folder as Markdown (``semisup``: a ``valleys semisup`` folder whose study
    goes in the semi-supervised section, made by ``semisup_command``)."""
    demo_dir = Path(demo_dir)
    path = demo_dir / "results.json"
    res = json.loads(path.read_text())
    when = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total = res.get("timing", {}).get("total_s")
    took = f", in {total / 60:.1f} minutes" if total else ""
    warnings = res.get("warnings") or []
    lines = [
        "# Results",
        "",
        "<!-- Generated by tools/results_tables.py from a demo folder's results.json; do not edit by hand. -->",
        "",
        "Every number on this page comes from one run of the demo, read from its `results.json`. Regenerate it "
        "after a new run with `python tools/results_tables.py runs/demo > docs/results.md`.",
        "",
        f"- **Run**: `{command}` (preset `{res.get('preset', '?')}`"
        + (", `--quick`" if res.get("quick") else "")
        + f"), finished {when}{took}.",
        f"- **Machine**: {machine or describe_machine()}.",
        f"- **Data and model**: `{res['dataset']}`, `{res['model']}`, seeds {res['seeds']}, "
        f"{res.get('steps_per_epoch', '?')} steps per epoch.",
        "- **Verdicts**: the paired t-test over seeds at the two-sided 5% level (Student's t with n - 1 degrees "
        "of freedom): *holds*, *does not hold*, else *within noise*; each claim also states the difference its "
        "seeds detect with 80% power and the seeds that would detect the observed difference.",
        "",
    ]
    if warnings:
        lines += ["**Warnings of the run:** " + "; ".join(warnings) + ".", ""]
    for section in (
        _section_claims,
        _section_methods,
        _section_budgets,
        _section_ood,
        _section_curves,
        _section_geometry,
        _section_subspace,
        _section_semisup,
    ):
        lines += section(res)
    if semisup is not None:
        lines += _section_semisup_study(semisup, semisup_command)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("demo_dir", help="a finished demo folder (holding results.json)")
    p.add_argument("--command", default="make demo", help="the command that made the folder (default: make demo)")
    p.add_argument("--machine", default=None, help="where it ran (default: this machine's CPU, cores, torch)")
    p.add_argument("--semisup", default=None, help="a valleys semisup folder for the semi-supervised section")
    p.add_argument("--semisup-command", default="valleys semisup", help="the command that made --semisup's folder")
    args = p.parse_args(argv)
    sys.stdout.write(
        render(
            args.demo_dir,
            command=args.command,
            machine=args.machine,
            semisup=args.semisup,
            semisup_command=args.semisup_command,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
