"""The main job: SGD, SWA, SWAG and FGE with the same epoch budget (talk slides 16-24), over several seeds,
into one run folder with tables, the talk's claims checked (:mod:`valleys.app.claims`), results.json, a report
and figures, under a named preset (:mod:`valleys.app.presets`; the default runs on the embedded MNIST-1D).

Runs per seed: ``sgd``, ``swag`` (whose files also hold the SWA solution and SWAG-diagonal: one trajectory,
three methods) and ``fge``; with ``ood`` the same SGD and SWAG runs again under the split-classes protocol
(train on classes 0-4; classes 5-9 are out of distribution) for the OOD AUROC line. Mode connectivity
(slide 7): Bezier curves between the SGD networks of consecutive seeds (one pair per seed, cyclically; a
second SGD network is trained when there is one seed), against the straight segment's barrier. Geometry
(slides 6, 9-15): for the first seed, the plane through three SGD iterates of the SWAG run with SWA projected,
the line from SWA to SGD, random rays from both; for every seed, the top Hessian eigenvalue of SWA and SGD.
Subspace inference (slides 25-33): see :mod:`valleys.app.demo_subspace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.checkpoint import write_json, write_text
from ..errors import InputError, MissingFileError
from ..zoo.data import load_dataset
from .claims import claims_markdown, demo_claims
from .config import TrainConfig, read_epoch_log
from .connect import ConnectConfig, connect_runs
from .demo_subspace import subspace_finish, subspace_lines, subspace_plan
from .evaluate import evaluate_run
from .folders import check_output, output_guard, prepare_run_dir, set_aside_all
from .parallel import call, default_jobs, run_jobs
from .presets import DEFAULT_PRESET, PRESETS, SEMISUP_DATA, Preset, get_preset, preset_semisup, preset_train
from .report import aggregate, describe_config, format_table, markdown_table
from .semisup import SemisupConfig, semisup_calls, semisup_finish, summary_lines
from .train import train_run

__all__ = ["DEMO_CONFIG", "ROWS", "geometry_section", "preset_config", "run_demo"]

# The default preset's training settings (see valleys.app.presets: every named configuration and why).
DEMO_CONFIG = TrainConfig(**PRESETS[DEFAULT_PRESET].train)
QUICK = PRESETS[DEFAULT_PRESET].quick


def preset_config(preset: str | Preset, device: str | None = None) -> TrainConfig:
    """The training settings every run of the demo under ``preset`` (a name or a :class:`Preset`) starts from;
    on a CUDA ``device`` with the preset's CUDA sizes (:attr:`valleys.app.presets.Preset.cuda`)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return TrainConfig(**preset_train(p, device))


# table row -> (run to read, method to evaluate it as, temperature scaling)
ROWS: dict[str, tuple[str, str, bool]] = {
    "SGD": ("sgd", "sgd", False),
    "SWA": ("swag", "swa", False),
    "SWA-Temp": ("swag", "swa", True),
    "SWAG-diag": ("swag", "swag-diag", False),
    "SWAG": ("swag", "swag", False),
    "FGE": ("fge", "fge", False),
}
OOD_ROWS = ("SGD", "SWA", "SWAG-diag", "SWAG")


def _error_curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = read_epoch_log(run_dir)
    return [(r["epoch"], 1.0 - r[key]) for r in rows if key in r]


def _row_result(run_dir: Path, run_method: str, method: str, temp: bool, splits, cache: dict) -> dict[str, Any]:
    key = (str(run_dir), method, temp)
    if key not in cache:
        if method == run_method and not temp:
            cache[key] = json.loads((run_dir / "results.json").read_text())
        else:
            res = evaluate_run(
                run_dir,
                as_method=None if method == run_method else method,
                temperature_scaling=temp,
                splits=splits,
                write=False,
            )
            if temp:
                res["metrics"]["test"] = res["metrics"]["test_temperature"]
                res["reliability"]["test"] = res["reliability"]["test_temperature"]
                res["reliability"]["test_log_bins"] = res["reliability"]["test_temperature_log_bins"]
            cache[key] = res
    return cache[key]


def check_budgets(budgets: Sequence[float]) -> list[float]:
    """The budget multiples, checked: finite, at least 1 (the SGD budget itself), no repeats; 1 is always in."""
    out = [float(b) for b in budgets]
    for b in out:
        if not (math.isfinite(b) and b >= 1):
            raise InputError(f"--budgets takes multiples of the epoch budget >= 1 (e.g. 1 1.5), got {b:g}")
    if len(set(out)) != len(out):
        raise InputError(f"--budgets lists a multiple twice: {out}")
    return sorted(set(out) | {1.0})


def quick_base(base: TrainConfig, keep: Iterable[str] = (), quick: dict[str, Any] | None = None) -> TrainConfig:
    """``base`` with the quick budget (``quick``, default the default preset's) for every setting not named in
    ``keep``."""
    return dataclasses.replace(base, **{k: v for k, v in (quick or QUICK).items() if k not in set(keep)})


@dataclass(frozen=True)
class DemoSettings:
    """What ``valleys demo`` runs: a named preset, the budget, the seeds and the sections.

    Args:
        preset: the named configuration (:mod:`valleys.app.presets`) whose settings are the defaults of
            ``base``, the quick budget, the curve settings and the semi-supervised section (which a preset may
            leave out: it is then skipped).
        quick: shrink the budget to the preset's quick one (:attr:`Preset.quick`) except for the settings of
            ``base`` named in ``keep`` (those the user set: ``valleys demo --quick --epochs 4`` trains 4 epochs).
        seeds: the seeds of every section (default ``[0, 1, 2]``, ``[0]`` with ``quick``); distinct.
        base: the training settings (default: the preset's).
        keep: the settings of ``base`` the user set (see ``quick``).
        budgets: the budget protocol of Izmailov et al. (2018): besides SGD at one budget (``epochs``), a SWAG
            run (hence SWA and SWAG) at every multiple ``b`` of it, ``round(b * epochs)`` epochs with the same
            averaging start, compared with SGD at one budget (default: the preset's; ``[1]``: no extra runs;
            with ``quick``: none).
        ood: the out-of-distribution runs (half the classes held out).
        curves: the mode-connectivity section; ``curve``: its settings' overrides (default: the preset's).
        subspace: the subspace-inference section (:mod:`valleys.app.demo_subspace`), ``False`` to skip it, or a
            dict of its settings' overrides.
        semisup: the semi-supervised section (:mod:`valleys.app.semisup`, into ``out/semisup``), ``False`` to
            skip it, or a dict of :class:`valleys.app.semisup.SemisupConfig` overrides.
    """

    preset: str | Preset = DEFAULT_PRESET
    quick: bool = False
    seeds: Sequence[int] | None = None
    base: TrainConfig | None = None
    keep: Iterable[str] = ()
    budgets: Sequence[float] | None = None
    ood: bool = True
    curves: bool = True
    curve: dict | None = None
    subspace: bool | dict = True
    semisup: bool | dict = True


def run_demo(
    out: str | Path = "runs/demo",
    settings: DemoSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    jobs: int | None = None,
    log: Callable[..., None] = print,
) -> dict[str, Any]:
    """Train the demo's runs (:class:`DemoSettings`, default: the MNIST-1D preset) for each seed under ``out``
    and write the summary, the claims table, the figures and the report into ``out``.

    ``overwrite``: replace an earlier demo folder (never one that holds other output). ``jobs``: worker
    processes for the independent runs (default: the CPU cores; see :mod:`valleys.app.parallel`; 1 runs
    everything in this process). ``log``: where the progress lines go.

    Returns the content of ``out/results.json``: one entry per method (``method``, ``metrics.test`` with the
    mean over seeds, ``spread`` with mean/std/min/max, ``ood_auroc`` where measured).
    """
    s = settings or DemoSettings()
    preset, quick, base, keep = s.preset, s.quick, s.base, s.keep
    seeds, budgets, ood, curves, curve, subspace, semisup = (
        s.seeds,
        s.budgets,
        s.ood,
        s.curves,
        s.curve,
        s.subspace,
        s.semisup,
    )
    p = get_preset(preset) if isinstance(preset, str) else preset
    base = base or preset_config(p)
    base = quick_base(base, keep, p.quick) if quick else base
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct, got {seeds}")
    cfgs = {m: dataclasses.replace(base, method=m).resolved() for m in ("sgd", "swag", "fge")}  # checks first
    # what the user changed from the preset: its OOD settings and budgets were chosen for its own data and model
    own = preset_config(p, base.device)
    own_data = (base.dataset, base.model) == (own.dataset, own.model)
    changed = set(keep) | {
        f.name
        for f in dataclasses.fields(own)
        if f.name not in p.quick and getattr(base, f.name) != getattr(own, f.name)
    }
    budgets = check_budgets(budgets if budgets is not None else ((1.0,) if quick or not own_data else p.budgets))
    extra_budgets = {
        b: dataclasses.replace(cfgs["swag"], epochs=round(b * cfgs["swag"].epochs)).resolved()
        for b in budgets
        if b != 1.0
    }
    # the preset's own OOD settings on its own data and model, except those the user set (all of them when
    # the user set the LR): the user's flags hold for every run
    ood_over = {} if not own_data or "lr" in changed else {k: v for k, v in p.ood.items() if k not in changed}
    ood_cfgs = (
        {m: dataclasses.replace(cfgs[m], ood_split=True, **ood_over).resolved() for m in ("sgd", "swag")}
        if ood
        else None
    )
    out = Path(out)
    prepare_run_dir(out, overwrite=overwrite, create=False)  # refuse before any work
    with output_guard(out):  # a failed or interrupted demo leaves nothing that blocks running it again
        out = prepare_run_dir(out, overwrite=overwrite)
        jobs = default_jobs(base.device) if jobs is None else jobs
        semi = None
        if semisup and p.semisup is None:
            log(f"  (preset {p.name} has no semi-supervised section: it does not fit the preset's budget)")
        elif semisup and not p.semisup_in_demo and not isinstance(semisup, dict):
            log(
                f"  (preset {p.name}'s semi-supervised study runs alone, longer than this demo: "
                f"valleys semisup --preset {p.name})"
            )
        elif semisup:
            data = {k: getattr(base, k) for k in SEMISUP_DATA}
            own_semi = preset_semisup(p, quick=quick, device=base.device, data=data, keep=changed) or {}
            semi = SemisupConfig(**{**own_semi, **(semisup if isinstance(semisup, dict) else {}), "seeds": list(seeds)})
            semi.check()
        curve = curve or (p.curve_quick if quick else p.curve)
        if not p.subspace:
            subspace = False
        elif subspace is True and isinstance(p.subspace, dict) and not quick:
            subspace = dict(p.subspace)
        plan = DemoPlan(
            out=out,
            base=base,
            cfgs=cfgs,
            seeds=list(seeds),
            quick=quick,
            ood=ood_cfgs,
            curves=curves,
            curve=curve,
            subspace=subspace,
            semi=semi,
            extra_budgets=extra_budgets,
            preset=p.name,
        )
        return _demo_body(plan, progress=progress, jobs=jobs, log=log)


@dataclass(frozen=True)
class DemoPlan:
    """What :func:`run_demo` resolved and checked before any work: the output folder, the training settings
    of each method (``cfgs``, and ``ood`` for the held-out-classes runs, ``extra_budgets`` for the budget
    protocol), the seeds, and the sections' settings (``curve``, ``subspace``, ``semi``) of preset ``preset``."""

    out: Path
    base: TrainConfig
    cfgs: dict[str, TrainConfig]
    seeds: list[int]
    quick: bool
    ood: dict[str, TrainConfig] | None
    curves: bool
    curve: dict | None
    subspace: bool | dict
    semi: SemisupConfig | None
    extra_budgets: dict[float, TrainConfig]
    preset: str


def _demo_body(demo: DemoPlan, *, progress: bool, jobs: int, log: Callable[..., None]) -> dict[str, Any]:
    out, base, cfgs, seeds, quick, ood = demo.out, demo.base, demo.cfgs, demo.seeds, demo.quick, demo.ood
    curves, curve, subspace, semi, preset = demo.curves, demo.curve, demo.subspace, demo.semi, demo.preset
    extra_budgets = demo.extra_budgets
    start = time.perf_counter()
    splits = load_dataset(
        base.dataset,
        val_fraction=base.val_fraction,
        train_subset=base.train_subset,
        test_subset=base.test_subset,
        root=base.data_root,
    )  # a data error: the guard cleans up
    ood_splits = (
        load_dataset(
            base.dataset,
            val_fraction=base.val_fraction,
            train_subset=base.train_subset,
            test_subset=base.test_subset,
            root=base.data_root,
            ood_split=True,
        )
        if ood
        else None
    )
    per_row: dict[str, list[dict]] = {r: [] for r in ROWS}
    ood_auroc: dict[str, list[float]] = {r: [] for r in OOD_ROWS}
    cache: dict = {}
    # every training run is independent: spread them over the workers (see valleys.app.parallel)
    calls: list[dict[str, Any]] = []
    names: list[tuple[str, int]] = []
    for seed in seeds:
        for method, cfg in cfgs.items():
            calls.append(
                {"cfg": dataclasses.replace(cfg, seed=seed), "out": out / f"{method}-seed{seed}", "splits": splits}
            )
            names.append((method, seed))
        for b, cfg in extra_budgets.items():  # the budget protocol: SWA and SWAG at b budgets
            calls.append(
                {
                    "cfg": dataclasses.replace(cfg, seed=seed),
                    "out": out / f"swag-budget{b:g}-seed{seed}",
                    "splits": splits,
                }
            )
            names.append((f"swag x{b:g}", seed))
        for method, cfg in (ood or {}).items():
            calls.append(
                {
                    "cfg": dataclasses.replace(cfg, seed=seed),
                    "out": out / f"ood-{method}-seed{seed}",
                    "splits": ood_splits,
                }
            )
            names.append((f"ood-{method}", seed))
    for job in calls:
        job.update(overwrite=True, progress=progress and jobs <= 1)
    bar = _jobs_bar(len(calls), "demo runs", progress and jobs > 1)
    try:
        for (method, seed), res in zip(names, run_jobs(train_run, calls, jobs=jobs, progress=bar), strict=True):
            log(
                f"  {method:4s} seed {seed}: test accuracy {100 * res['metrics']['test']['accuracy']:.2f}%  "
                f"NLL {res['metrics']['test']['nll']:.4f}  ({res['timing']['total_train_s']:.1f}s training)"
            )
    finally:
        if bar is not None:
            bar.close()
    warnings = untrained_runs([(c["out"], c["splits"].num_classes) for c in calls])
    for w in warnings:
        log(f"  warning: {w}")
    for seed in seeds:
        for row, (run, method, temp) in ROWS.items():
            per_row[row].append(_row_result(out / f"{run}-seed{seed}", run, method, temp, splits, cache))
        if ood:
            for row in OOD_ROWS:
                run, method, temp = ROWS[row]
                res = _row_result(out / f"ood-{run}-seed{seed}", run, method, temp, ood_splits, cache)
                ood_auroc[row].append(res["ood_auroc"])
            log(f"  OOD seed {seed}: AUROC " + ", ".join(f"{r} {ood_auroc[r][-1]:.4f}" for r in OOD_ROWS))

    budget_rows = {
        f"{name} x{b:g}": [
            _row_result(out / f"swag-budget{b:g}-seed{s}", "swag", method, False, splits, cache) for s in seeds
        ]
        for b in extra_budgets
        for name, method in (("SWA", "swa"), ("SWAG", "swag"))
    }

    # the curves and the subspace section's first runs share one pool (they need only the trained runs)
    plan = (
        subspace_plan(
            out,
            seeds,
            None,
            quick=quick,
            progress=progress,
            jobs=jobs,
            settings=subspace if isinstance(subspace, dict) else None,
        )
        if subspace
        else None
    )
    extra = list(plan.first_calls) if plan else []
    n_sub = len(extra)
    if semi is not None:  # the semi-supervised runs are independent of everything else: the same pool
        (out / "semisup").mkdir(exist_ok=True)
        extra += semisup_calls(semi, out / "semisup")
    connectivity = None
    if curves:
        connectivity, first = _connect(out, seeds, cfgs["sgd"], splits, curve, progress, log, jobs, extra)
    else:
        first = list(run_jobs(call, extra, jobs=jobs))
    geometry = _geometry(out, seeds, quick, progress, log) if curves else None
    rows = {r: aggregate([x["metrics"]["test"] for x in xs]) for r, xs in per_row.items()}
    section = subspace_finish(plan, first[:n_sub], log) if plan else None
    semi_res = None
    if semi is not None:
        semi_res = semisup_finish(semi, out / "semisup", first[n_sub:])
        for line in semi_res["claims"]:
            log(f"  semi-supervised: {line[2:]}")
    methods = []
    for r, xs in per_row.items():
        entry: dict[str, Any] = {
            "method": r,
            "run_method": ROWS[r][0],
            "evaluated_as": ROWS[r][1],
            "temperature_scaling": ROWS[r][2],
            "dataset": base.dataset,
            "model": base.model,
            "seeds": seeds,
            "metrics": {"test": {k: v["mean"] for k, v in rows[r].items()}},
            "spread": {"test": rows[r]},
        }
        if r in ood_auroc and ood_auroc[r]:
            entry["ood_auroc"] = aggregate([{"auroc": a} for a in ood_auroc[r]], ["auroc"])["auroc"]
        if r == "FGE":
            entry["best_member_test_accuracy"] = [max(x["member_test_accuracy"]) for x in xs]
            entry["ensemble_test_accuracy"] = [x["metrics"]["test"]["accuracy"] for x in xs]
            if all("ensemble_prefix_test_accuracy" in x for x in xs):
                entry["ensemble_prefix_test_accuracy"] = [x["ensemble_prefix_test_accuracy"] for x in xs]
        methods.append(entry)
    fge_row = next(m for m in methods if m["method"] == "FGE")
    claims = demo_claims(
        per_row,
        ood_auroc if ood else None,
        {
            k: fge_row[k]
            for k in ("ensemble_test_accuracy", "best_member_test_accuracy", "ensemble_prefix_test_accuracy")
            if k in fge_row
        },
        connectivity,
        geometry,
        section,
        semi_res["claim_rows"] if semi_res else (),
        budget_rows,
    )
    budget_table = None
    spe = math.ceil(len(splits.train) / base.batch_size)  # steps per epoch (the last batch may be smaller)
    if extra_budgets:
        budget_table = {
            "epochs": {"x1": base.epochs} | {f"x{b:g}": c.epochs for b, c in extra_budgets.items()},
            "steps_per_epoch": spe,
            "rows": {
                **{f"{r} x1": rows[r] for r in ("SGD", "SWA", "SWAG")},
                **{k: aggregate([x["metrics"]["test"] for x in xs]) for k, xs in budget_rows.items()},
            },
        }
    results = {
        "preset": preset,
        "warnings": warnings,
        "dataset": base.dataset,
        "model": base.model,
        "seeds": seeds,
        "quick": quick,
        "steps_per_epoch": spe,
        "methods": methods,
        "claims": claims,
        "budgets": budget_table,
        "mode_connectivity": connectivity,
        "geometry": geometry,
        "subspace": section,
        "semisup": {k: semi_res[k] for k in ("settings", "summary", "claims", "figures")} if semi_res else None,
        "timing": {"total_s": time.perf_counter() - start},
    }
    write_json(
        out / "config.json",
        {
            "base": dataclasses.asdict(base),
            "runs": {m: dataclasses.asdict(c) for m, c in cfgs.items()},
            "seeds": seeds,
            "quick": quick,
            "preset": preset,
            "ood": {m: dataclasses.asdict(c) for m, c in ood.items()} if ood else None,
        },
    )
    write_json(out / "results.json", results)
    figures = _figures(out, seeds, cfgs, per_row, base)
    if connectivity:
        figures["mode connectivity (slide 7)"] = out / connectivity["pairs"][0]["folder"] / "figures" / "path.png"
    if geometry:
        figures.update({t: out / "geometry" / sub / "figures" / name for t, (sub, name) in GEOMETRY_FIGURES.items()})
    if section:
        figures["posterior over a 2-D slice of the PCA subspace (slides 27-29)"] = (
            out / "subspace" / f"pca-ess-seed{seeds[0]}" / "figures" / "posterior.png"
        )
        figures["1-D regression with a gap (slide 32)"] = out / section["toy"]["figure"]
    if semi_res:
        for f in semi_res["figures"]:
            name = Path(f).stem
            title = (
                "how far the iterates travel, supervised and consistency-regularised (slide 35)"
                if name == "travel"
                else f"semi-supervised test error against epoch, consistency {name[6:]} (slide 36)"
            )
            figures[title] = out / "semisup" / f
    _report(demo, results, figures)
    log("")
    log(format_table(rows))
    if ood:
        log(
            "OOD AUROC (entropy; train on classes 0-4, OOD 5-9): "
            + ", ".join(f"{r} {aggregate([{'a': a} for a in ood_auroc[r]], ['a'])['a']['mean']:.4f}" for r in OOD_ROWS)
        )
    log(f"\nwrote {out}/results.json, {out}/report.md and {len(figures)} figures")
    return results


def untrained_runs(runs: Sequence[tuple[Path, int]]) -> list[str]:
    """A line for each ``(run folder, number of classes)`` whose last logged training accuracy is below 1.5
    times chance: a run that diverged or collapsed (e.g. every ReLU dead: the loss stuck at log C), whose
    numbers in the tables and claims then say nothing about its method."""
    out = []
    for run, classes in runs:
        rows = [r for r in read_epoch_log(Path(run)) if "train_accuracy" in r]
        if rows and rows[-1]["train_accuracy"] < 1.5 / classes:
            out.append(
                f"{Path(run).name} did not train: training accuracy {100 * rows[-1]['train_accuracy']:.1f}% "
                f"at epoch {rows[-1]['epoch']} (chance {100 / classes:.1f}%); its numbers enter the tables "
                "and claims as they are, so lower the LR (e.g. --lr) or change the seed"
            )
    return out


def _jobs_bar(total: int, desc: str, show: bool) -> Any:
    """A bar over finished jobs when they run in workers (whose own bars are off)."""
    if not show:
        return None
    from ..core.optional import progress_bar

    return progress_bar(total=total, unit="run", desc=desc, dynamic_ncols=True)


def _figures(out: Path, seeds, cfgs, per_row, base) -> dict[str, Path]:
    from .plots import plot_error_curves, plot_reliability

    swa_start = cfgs["swag"].swa_start
    curves = {
        "SGD (decaying LR)": [_error_curve(out / f"sgd-seed{s}", "test_accuracy") for s in seeds],
        "SGD iterates of the SWA run": [_error_curve(out / f"swag-seed{s}", "test_accuracy") for s in seeds],
        "SWA average": [_error_curve(out / f"swag-seed{s}", "swa_test_accuracy") for s in seeds],
    }
    return {
        "test error against epoch (slide 20)": plot_error_curves(
            curves,
            out / "figures" / "test_error_vs_epoch.png",
            marker_epoch=swa_start,
            title=f"{base.model} on {base.dataset}: test error (mean of {len(seeds)} seeds)",
        ),
        "reliability (slide 23)": plot_reliability(
            {r: per_row[r][0]["reliability"]["test_log_bins"] for r in ("SGD", "SWA", "SWA-Temp", "SWAG", "FGE")},
            out / "figures" / "reliability.png",
            title=f"{base.model} on {base.dataset}, seed {seeds[0]}",
        ),
    }


def _connect(
    out: Path,
    seeds: list[int],
    sgd_cfg: TrainConfig,
    splits,
    curve: dict,
    progress: bool,
    log: Callable[..., None],
    jobs: int = 1,
    extra: list[dict] | None = None,
) -> tuple[dict[str, Any], list]:
    """Bezier curves between SGD networks of different seeds; summary of barriers (mean over pairs). ``extra``:
    other jobs (:func:`valleys.app.parallel.call` arguments) run in the same pool; their results come second."""
    ends = list(seeds)
    if len(ends) == 1:  # a second independent network
        other = ends[0] + 1
        train_run(
            dataclasses.replace(sgd_cfg, seed=other),
            out / f"sgd-seed{other}",
            overwrite=True,
            progress=progress,
            splits=splits,
        )
        ends.append(other)
    pairs = [(ends[i], ends[(i + 1) % len(ends)]) for i in range(len(ends) if len(ends) > 2 else 1)]
    rows = []
    calls = [
        {
            "fn": connect_runs,
            "cfg": ConnectConfig(str(out / f"sgd-seed{a}"), str(out / f"sgd-seed{b}"), seed=a, **curve),
            "out": out / f"curve-seed{a}-seed{b}",
            "overwrite": True,
            "progress": progress and jobs <= 1,
        }
        for a, b in pairs
    ]
    extra = list(extra or [])
    bar = _jobs_bar(len(calls) + len(extra), "curves and subspaces", progress and jobs > 1)
    try:
        results = list(run_jobs(call, calls + extra, jobs=jobs, progress=bar))
    finally:
        if bar is not None:
            bar.close()
    for (a, b), res in zip(pairs, results[: len(calls)], strict=True):  # the rest: the extra jobs
        folder = f"curve-seed{a}-seed{b}"
        bar = res["barrier"]
        rows.append(
            {
                "folder": folder,
                "segment_max_test_error": bar["segment_max_test_error"],
                "curve_max_test_error": bar["curve_max_test_error"],
                "worse_endpoint_test_error": bar["worse_endpoint_test_error"],
                "segment_max_train_loss": res["segment"]["summary"]["train_loss"]["max"],
                "curve_max_train_loss": res["curve"]["summary"]["train_loss"]["max"],
            }
        )
        log(
            f"  curve seed {a} - seed {b}: max test error segment {100 * bar['segment_max_test_error']:.2f}%, "
            f"curve {100 * bar['curve_max_test_error']:.2f}%, "
            f"worse endpoint {100 * bar['worse_endpoint_test_error']:.2f}%"
        )
    keys = [k for k in rows[0] if k != "folder"]
    return {
        "kind": "bezier",
        "bends": 3,
        **curve,
        "epochs": res["training"]["epochs"],
        "lr": res["training"]["lr"],
        "bn": res["curve"]["bn"],
        "pairs": rows,
        "summary": aggregate(rows, keys),
    }, results[len(calls) :]


def _geometry(out: Path, seeds: list[int], quick: bool, progress: bool, log: Callable[..., None]) -> dict[str, Any]:
    """Slides 6, 9-15 on the demo's runs, through the study registry: the trajectory plane (first seed), and for
    every seed the SWA-to-SGD line, random rays from both (valley width) and the top Hessian eigenvalue of
    both."""
    from .studies import STUDIES, StudyContext, run_study

    g = out / "geometry"
    ctx = StudyContext(progress=progress)
    plane_note = None
    if (out / f"swag-seed{seeds[0]}" / "trajectory.safetensors").is_file():
        plane = STUDIES.get("plane")
        run_study(
            plane,
            plane.settings(trajectory=str(out / f"swag-seed{seeds[0]}"), grid=9 if quick else 15),
            g / "plane",
            context=ctx,
            overwrite=True,
            title=f"plane through SGD iterates W1, W2, W3 and SWA (seed {seeds[0]})",
        )
    else:  # a run folder from before valleys kept trajectories
        plane_note = (
            f"no trajectory plane: {out / f'swag-seed{seeds[0]}'} holds no trajectory.safetensors "
            "(made by an older valleys); train the run again to get it"
        )
        log(f"  {plane_note}")
    rows = []
    path_study, rays_study, sharpness = STUDIES.get("path"), STUDIES.get("rays"), STUDIES.get("sharpness")
    for s in seeds:
        swag_run, sgd_run = str(out / f"swag-seed{s}"), str(out / f"sgd-seed{s}")
        path_settings = path_study.settings(swag_run, sgd_run, points=21 if quick else 41, labels=["SWA", "SGD"])
        path_settings_title = f"line from SWA (0) to SGD (seed {s})"
        reach = float(_weights(swag_run).norm())  # rays out to a perturbation as large as the weights themselves
        rays_settings = rays_study.settings(
            [swag_run, sgd_run],
            rays=3 if quick else 6,
            max_distance=reach,
            steps=11 if quick else 16,
            rise=0.1,
            seed=s,
            labels=["SWA", "SGD"],
        )
        rays_title = f"train loss along random rays (seed {s})"
        if s == seeds[0]:
            path = run_study(
                path_study, path_settings, g / "path", context=ctx, overwrite=True, title=path_settings_title
            )
            rays = run_study(rays_study, rays_settings, g / "rays", context=ctx, overwrite=True, title=rays_title)
        else:
            path = path_study.run(path_settings, ctx)
            rays = rays_study.run(rays_settings, ctx)
        eig = {  # on a fixed subset: the first 1000 training examples
            name: sharpness.run(
                sharpness.settings(run, k=1, examples=1000, iterations=20, trace_samples=10, seed=s), ctx
            )["top_eigenvalues"][0]
            for name, run in (("SWA", swag_run), ("SGD", sgd_run))
        }
        d, loss = path["distance"], path["curves"]["train"]["loss"]
        at = {
            k: min(range(len(d)), key=lambda i, x=x: abs(d[i] - x)) for k, x in (("SWA", 0.0), ("SGD", path["length"]))
        }
        row = {
            "seed": s,
            "eig_SWA": eig["SWA"],
            "eig_SGD": eig["SGD"],
            "width_SWA": rays["centers"]["SWA"]["mean_width"],
            "width_SGD": rays["centers"]["SGD"]["mean_width"],
            "distance": path["length"],
            "reach": reach,
            # a lower bound of the mean width: a ray whose loss never rose within the reach counts as the reach
            **{
                f"width_floor_{k}": sum(min(w, reach) for w in c["width"]) / len(c["width"])
                for k, c in rays["centers"].items()
            },
            "loss_SWA": loss[at["SWA"]],
            "loss_SGD": loss[at["SGD"]],
            "error_SWA": path["curves"]["test"]["error"][at["SWA"]],
            "error_SGD": path["curves"]["test"]["error"][at["SGD"]],
            "line_min_loss": min(loss),
            "line_argmin": d[loss.index(min(loss))],
            # how the train loss changes going 0.5 d further out past each end (d: SWA-SGD distance)
            "rise_out_SWA": loss[0] - loss[at["SWA"]],
            "rise_out_SGD": loss[-1] - loss[at["SGD"]],
        }
        rows.append(row)
        log(
            f"  geometry seed {s}: top Hessian eigenvalue SWA {row['eig_SWA']:.3f}, SGD {row['eig_SGD']:.3f}; "
            f"valley width SWA {row['width_SWA']:.3f}, SGD {row['width_SGD']:.3f}; line: train loss SWA "
            f"{row['loss_SWA']:.4f}, SGD {row['loss_SGD']:.4f} at distance {row['distance']:.3f}"
        )
    keys = [k for k in rows[0] if k != "seed"]
    return {
        "per_seed": rows,
        "summary": aggregate(rows, keys),
        "rise": 0.1,
        "plane_note": plane_note,
        "units": "Euclidean distance in weight space",
        "sharpness_subset": "first 1000 training examples, eval mode",
    }


def _weights(run: str | Path) -> Any:
    """The flat weight vector of a run folder's network."""
    from .studies.common import load_context

    return load_context(run)[1]


def _report(demo: DemoPlan, results: dict[str, Any], figures: dict[str, Path]) -> None:
    """Write ``report.md`` of the demo planned as ``demo`` from its ``results.json`` object and figures."""
    out, base, seeds, cfgs, preset = demo.out, demo.base, demo.seeds, demo.cfgs, demo.preset
    methods, total_s, spe = results["methods"], results["timing"]["total_s"], results["steps_per_epoch"]
    rows = {m["method"]: m["spread"]["test"] for m in methods}
    connectivity, geometry, section = results["mode_connectivity"], results["geometry"], results["subspace"]
    semisup = (demo.semi, results["semisup"]) if results["semisup"] else None
    claims, budgets, warnings = results["claims"], results["budgets"], results["warnings"]
    ood_cfg = demo.ood["swag"] if demo.ood else None
    swa_start = cfgs["swag"].swa_start
    ood_lines = [
        f"| {m['method']} | {m['ood_auroc']['mean']:.4f} ± {m['ood_auroc']['std']:.4f} |"
        for m in methods
        if "ood_auroc" in m
    ]
    fge = next(m for m in methods if m["method"] == "FGE")
    lines = [
        f"# valleys demo: SGD, SWA, SWAG and FGE on {base.dataset}",
        "",
        f"Preset `{preset}`. Model `{base.model}`, {base.epochs} epochs ({base.epochs * spe} steps of batch "
        f"{base.batch_size}; {spe} steps per epoch) for every method, seeds {seeds}. SWA averages one iterate per "
        f"epoch ({spe} steps) from epoch {swa_start} (step {swa_start * spe}) at constant LR "
        f"{cfgs['swag'].swa_lr:g}; SWAG keeps the last "
        f"{cfgs['swag'].rank} deviations and averages {cfgs['swag'].samples} samples (scale 0.5; diagonal: 1.0) "
        f"with a BatchNorm recompute each; FGE pre-trains {cfgs['fge'].fge_start} epochs "
        f"({cfgs['fge'].fge_start * spe} steps), then cycles of {cfgs['fge'].cycle} epochs "
        f"({cfgs['fge'].cycle * spe} steps) between LR {cfgs['fge'].lr_1:g} and {cfgs['fge'].lr_2:g}. SGD's LR "
        "decays to 1% of its start. SWA, SWA-Temp and SWAG-diag come from the SWAG run's trajectory. SWA-Temp: a "
        "temperature fitted on the validation split.",
        "",
        "## Test metrics (mean ± std over seeds)",
        "",
        markdown_table(rows),
        "",
        f"FGE: ensemble test accuracy per seed {[round(100 * a, 2) for a in fge['ensemble_test_accuracy']]} vs its "
        f"best single snapshot {[round(100 * a, 2) for a in fge['best_member_test_accuracy']]} (%).",
        "",
    ]
    if fge.get("ensemble_prefix_test_accuracy"):
        prefix = fge["ensemble_prefix_test_accuracy"]
        means = [sum(p[k] for p in prefix) / len(prefix) for k in range(len(prefix[0]))]
        lines[-1:-1] = [
            "FGE: test accuracy of the ensemble of its first k snapshots, mean over seeds (%): "
            + ", ".join(f"k={k + 1}: {100 * m:.2f}" for k, m in enumerate(means))
            + "."
        ]
    if warnings:
        lines[4:4] = ["**Warning.** " + "; ".join(warnings) + ".", ""]
    if budgets:
        lines += [
            "## The budget protocol (Izmailov et al. 2018)",
            "",
            "SGD trained for one budget against SWA and SWAG at each multiple of it (the same averaging "
            f"start, epoch {swa_start} = {swa_start * spe} steps; {spe} steps per epoch). Budgets: "
            + ", ".join(f"{k} = {e} epochs ({e * spe} steps)" for k, e in budgets["epochs"].items())
            + ". Test metrics, mean ± std over seeds.",
            "",
            markdown_table(budgets["rows"]),
            "",
        ]
    if claims:
        lines += ["## The talk's claims on this run", "", *claims_markdown(claims), ""]
    if ood_lines:
        lines += [
            "## Out-of-distribution detection (train on classes 0-4; test classes 5-9 are OOD)",
            "",
            "AUROC of predictive entropy, mean ± std over seeds."
            + (
                f" These runs train at LR {ood_cfg.lr:g} (SWA LR {ood_cfg.swa_lr:g}), the preset's setting for "
                "half the data."
                if ood_cfg is not None and (ood_cfg.lr, ood_cfg.swa_lr) != (cfgs["swag"].lr, cfgs["swag"].swa_lr)
                else ""
            ),
            "",
            "| method | OOD AUROC |",
            "|---|---|",
            *ood_lines,
            "",
        ]
    if connectivity:
        s = connectivity["summary"]

        def cell(k, pct=True):
            return (
                f"{100 * s[k]['mean']:.2f} ± {100 * s[k]['std']:.2f}"
                if pct  # noqa: E731
                else f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}"
            )

        lines += [
            "## Mode connectivity (slide 7)",
            "",
            f"Bezier curves (3 control points, {connectivity['epochs']} epochs from LR {connectivity['lr']:g}) "
            "between SGD networks of "
            f"different seeds, {len(connectivity['pairs'])} pair(s), {connectivity['points']} points per path, "
            f"BatchNorm: {connectivity['bn']}. Mean ± std over pairs.",
            "",
            "| path | max test error (%) | max train loss |",
            "|---|---|---|",
            f"| worse endpoint | {cell('worse_endpoint_test_error')} | |",
            f"| straight segment | {cell('segment_max_test_error')} | {cell('segment_max_train_loss', False)} |",
            f"| Bezier curve | {cell('curve_max_test_error')} | {cell('curve_max_train_loss', False)} |",
            "",
        ]
    if geometry:
        lines += _geometry_lines(geometry, seeds)
    if section:
        lines += subspace_lines(section, rows)
    if semisup:
        lines += [
            "## Semi-supervised learning with SWA and fast-SWA (slides 34-36)",
            "",
            *summary_lines(*semisup),
            "Folder: `semisup/` (one run per consistency term and seed).",
            "",
        ]
    for title, path in figures.items():
        lines += [f"## {title[0].upper() + title[1:]}", "", f"![{title}]({path.relative_to(out)})", ""]
    lines += [
        "## Settings",
        "",
        describe_config(dataclasses.asdict(cfgs["swag"])),
        "",
        f"Total time {total_s:.1f} s.",
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))


GEOMETRY_FIGURES = {
    "trajectory plane, test error (slides 9-13)": ("plane", "test_error.png"),
    "trajectory plane, train loss (slide 13)": ("plane", "train_loss.png"),
    "random rays from SWA and SGD (slide 14)": ("rays", "rays.png"),
    "path from SWA to SGD (slide 15)": ("path", "path.png"),
}


def _geometry_lines(geometry: dict[str, Any], seeds: list[int]) -> list[str]:
    gs = geometry["summary"]
    cell = lambda k, f="{:.4f}": f"{f.format(gs[k]['mean'])} ± {f.format(gs[k]['std'])}"  # noqa: E731
    return [
        "## Flatness and geometry (slides 6, 14, 15)",
        "",
        f"Mean ± std over seeds {seeds}. Top Hessian eigenvalue of the train loss on the "
        f"{geometry['sharpness_subset']} (Lanczos, 20 products). Valley width: distance along a random "
        f"unit direction where the train loss first rises by {geometry['rise']} ({geometry['units']}; "
        "inf when it never does within the weights' own norm). Line: train loss at both ends of the line "
        "from SWA to SGD, and its change from each end to half the SWA-SGD distance d further out (away "
        "from the other end): near the edge of the valley it rises.",
        "",
        "| | SWA | SGD |",
        "|---|---|---|",
        f"| top Hessian eigenvalue | {cell('eig_SWA')} | {cell('eig_SGD')} |",
        f"| valley width | {cell('width_SWA', '{:.3f}')} | {cell('width_SGD', '{:.3f}')} |",
        f"| train loss on the line | {cell('loss_SWA')} | {cell('loss_SGD')} |",
        f"| test error on the line (%) | {100 * gs['error_SWA']['mean']:.2f} | {100 * gs['error_SGD']['mean']:.2f} |",
        f"| train loss change 0.5 d further out on the line | {cell('rise_out_SWA')} | {cell('rise_out_SGD')} |",
        "",
        f"Distance SWA to SGD: {cell('distance', '{:.3f}')}.",
        "",
    ]


def geometry_section(
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    progress: bool = True,
    log: Callable[..., None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The demo's geometry section (slides 6, 9-15) on an existing demo folder, e.g. one made with
    ``valleys demo --dataset fashion-mnist ...``: the trajectory plane of the first seed's SWA run, and per
    seed the SWA-to-SGD line, random rays from both (valley width) and both top Hessian eigenvalues.

    Needs ``sgd-seed<s>`` and ``swag-seed<s>`` run folders for every seed (default: every seed that has
    both). Writes ``geometry/summary.json``, ``geometry/report.md`` and the figures under ``geometry/``; an
    existing ``geometry/`` is refused unless ``overwrite``.
    """
    out = Path(out)
    found = sorted(
        int(p.name[len("sgd-seed") :])
        for p in out.glob("sgd-seed*")
        if p.name[len("sgd-seed") :].isdigit() and (out / f"swag-seed{p.name[len('sgd-seed') :]}").is_dir()
    )
    seeds = list(seeds) if seeds is not None else found
    missing = [s for s in seeds if s not in found]
    if not seeds or missing:
        raise MissingFileError(
            f"{out} needs run folders sgd-seed<s> and swag-seed<s> (a demo folder); "
            f"{'none found' if not seeds else f'missing for seeds {missing}'}"
        )
    from .config import read_run_config

    for seed in seeds:  # the folders' names are not enough: the SWA plane needs a run that kept its trajectory
        for name, methods in ((f"sgd-seed{seed}", ("sgd",)), (f"swag-seed{seed}", ("swa", "swag", "swag-diag"))):
            cfg = read_run_config(out / name)
            if cfg.method not in methods:
                raise InputError(
                    f"{out / name} is a {cfg.method} run; the geometry section needs {name.split('-')[0]} to be "
                    f"a {' or '.join(methods)} run (as 'valleys demo' trains it)"
                )
    g = check_output(out / "geometry", overwrite=overwrite, what="a geometry section", flag="")
    with output_guard(g):
        if overwrite:  # the earlier section comes back if this one cannot be written (a full disk)
            set_aside_all(g)
        return _geometry_section(out, g, seeds, quick, progress, log)


def _geometry_section(
    out: Path, g: Path, seeds: list[int], quick: bool, progress: bool, log: Callable[..., None]
) -> dict[str, Any]:
    geometry = _geometry(out, seeds, quick, progress, log)
    write_json(g / "summary.json", {"seeds": seeds, "quick": quick, **geometry})
    lines = [f"# Loss-surface geometry of {out}", "", *_geometry_lines(geometry, seeds)]
    if geometry["plane_note"]:
        lines += [f"Note: {geometry['plane_note']}.", ""]
    for title, (sub, name) in GEOMETRY_FIGURES.items():
        if (g / sub / "figures" / name).is_file():
            lines += [f"## {title[0].upper() + title[1:]}", "", f"![{title}]({sub}/figures/{name})", ""]
    write_text(g / "report.md", "\n".join(lines))
    return geometry


def demo_base(preset: str, flags: dict[str, Any], *, quick: bool = False) -> tuple[TrainConfig, set[str]]:
    """The demo's base settings from a preset and the setting flags given (``None``: not given), and the
    settings that ``--quick`` must keep. A new epoch budget drops the preset's ``swa_start`` and ``fge_start``
    (their defaults fit the new budget), a new ``lr`` the preset's ``swa_lr`` (default: the new lr)."""
    from .presets import get_preset

    base = preset_config(preset, flags.get("device"))
    fields = {f.name for f in dataclasses.fields(base)}
    changes = {k: v for k, v in flags.items() if k in fields and v is not None}
    budget = get_preset(preset).quick.get("epochs", base.epochs) if quick else base.epochs
    base = dataclasses.replace(base, **changes)
    starts = ("swa_start", "fge_start")
    new_budget = changes.get("epochs", budget) != budget
    if new_budget:  # the preset's starts were for its budget: the defaults for the new one
        for k in starts:
            if k not in changes:
                setattr(base, k, None)
    if "lr" in changes and "swa_lr" not in changes:
        base.swa_lr = None  # default: the new lr
    keep = set(changes) | (set(starts) if new_budget else set())  # --quick changes only the rest
    return base, keep
