"""The demo's subspace-inference section (talk slides 25-33; Izmailov et al. 2019, "Subspace Inference for
Bayesian Deep Learning", UAI) on the demo's own runs, and its 1-D regression figure (slide 32).

Per seed, in the demo (:data:`DEMO_RUNS`): the PCA subspace of the SWAG run's deviations (shift: its SWA
mean) and a random subspace around the same SWA mean, both with elliptical slice sampling (ESS). The full
comparison (:data:`FULL_RUNS`, ``valleys subspace-table DEMO_DIR``) adds the PCA subspace with mean-field VI
and the curve subspace of the Bezier curve that starts at that seed's SGD network, with ESS. The temperature T
and the prior scale s
of each (subspace, inference) pair are chosen on the first seed's validation split (lowest validation NLL of
the BMA among the candidates :data:`CANDIDATES`) and reused for the other seeds; the test split is never
looked at for a choice. The regression figure is :func:`valleys.app.regression.regression_protocol` on the
1-D toy with one split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingFileError
from .report import aggregate

__all__ = [
    "CANDIDATES",
    "DEMO_RUNS",
    "FULL_RUNS",
    "SubspacePlan",
    "subspace_plan",
    "subspace_finish",
    "subspace_section",
    "subspace_lines",
    "subspace_table",
]

#: (space, inference) of each row, in table order: the demo's, and the full comparison's.
DEMO_RUNS = (("pca", "ess"), ("random", "ess"))
FULL_RUNS = (("pca", "ess"), ("pca", "vi"), ("random", "ess"), ("curve", "ess"))
#: Candidate temperatures and prior scales chosen among on validation (the first seed's).
CANDIDATES = {"temperature": [10.0, 100.0, 1000.0], "prior_scale": [1.0, 5.0]}
SETTINGS = {"rank": 5, "samples": 30, "burn_in": 20, "vi_steps": 300, "grid": 15}
QUICK_SETTINGS = {"rank": 3, "samples": 8, "burn_in": 4, "vi_steps": 50, "grid": 7}
#: The toy regression of the figure: homoscedastic noise, plain SGD fits it; SWAG collects at LR 0.001.
TOY = {"epochs": 3000, "lr": 0.01, "swa_lr": 0.001, "wd": 0.0, "heteroscedastic": False}
TOY_QUICK = {"epochs": 300, "lr": 0.01, "swa_lr": 0.001, "wd": 0.0, "heteroscedastic": False}


def _label(space: str, inference: str) -> str:
    names = {"ess": "ESS", "vi": "VI", "flow": "flow VI", "nuts": "NUTS"}
    return f"{space.upper() if space == 'pca' else space} + {names[inference]}"


@dataclass
class SubspacePlan:
    """The section's work, planned: ``first_calls`` (the first seed of every row, each choosing among the
    candidates, and the toy) can run in any pool (:func:`valleys.app.parallel.run_jobs` with
    :func:`valleys.app.parallel.call`); :func:`subspace_finish` runs the other seeds with the choices."""

    out: Path
    seeds: list[int]
    curves: dict[int, str] | None
    runs: tuple[tuple[str, str], ...]
    folder: str
    settings: dict[str, Any]
    toy_settings: dict[str, Any] | None
    rank: int
    progress: bool
    jobs: int
    first_calls: list[dict[str, Any]] = field(default_factory=list)

    def job(self, seed: int, space: str, inference: str, t: Any, s: Any, first: bool) -> dict[str, Any]:
        """The arguments of one subspace run (for :func:`valleys.app.parallel.call`)."""
        from .subspace import SubspaceConfig, subspace_run

        st = self.settings
        run = self.out / (f"sgd-seed{seed}" if space == "curve" else f"swag-seed{seed}")
        cfg = SubspaceConfig(
            str(run),
            space=space,
            rank=2 if space == "curve" else self.rank,
            inference=inference,
            samples=st["samples"],
            burn_in=st["burn_in"],
            vi_steps=st["vi_steps"],
            temperature=t,
            prior_scale=s,
            seed=seed,
            curve=str(self.out / self.curves[seed]) if space == "curve" and self.curves else None,
            grid=st["grid"] if (first and space == "pca" and inference == "ess") else 0,
        )
        return {
            "fn": subspace_run,
            "cfg": cfg,
            "out": self.out / self.folder / f"{space}-{inference}-seed{seed}",
            "overwrite": True,
            "progress": self.progress and self.jobs <= 1,
        }


def subspace_plan(
    out: Path,
    seeds: list[int],
    curves: dict[int, str] | None,
    *,
    quick: bool,
    progress: bool,
    runs: tuple[tuple[str, str], ...] = DEMO_RUNS,
    folder: str = "subspace",
    settings: dict[str, Any] | None = None,
    toy: bool = True,
    jobs: int = 1,
) -> SubspacePlan:
    """Plan the section (module docstring) on the demo folder ``out``, to write under ``out / folder``.

    Args:
        curves: seed -> the curve folder (relative to ``out``) whose first endpoint is that seed's SGD run
            (``None``: no curve rows).
        runs: the (space, inference) rows (:data:`DEMO_RUNS` or :data:`FULL_RUNS`).
        settings: overrides of :data:`SETTINGS` (or :data:`QUICK_SETTINGS`) and, under ``"toy"``, of the toy's.
        toy: also the 1-D regression figure.
        jobs: worker processes (:mod:`valleys.app.parallel`) for the other seeds' runs.
    """
    from .regression import RegressionProtocol, regression_protocol

    overrides = dict(settings or {})
    toy_settings = {**(TOY_QUICK if quick else TOY), **overrides.pop("toy", {})}
    st = {**(QUICK_SETTINGS if quick else SETTINGS), **overrides}
    plan = SubspacePlan(
        out,
        list(seeds),
        curves,
        tuple(r for r in runs if r[0] != "curve" or curves),
        folder,
        st,
        toy_settings if toy else None,
        min(st["rank"], _deviations(out / f"swag-seed{seeds[0]}") - 1),
        progress,
        jobs,
    )
    plan.first_calls = [
        plan.job(seeds[0], sp, inf, CANDIDATES["temperature"], CANDIDATES["prior_scale"], True) for sp, inf in plan.runs
    ]
    if toy:
        e = toy_settings["epochs"]
        proto = RegressionProtocol(
            datasets=["toy1d"],
            splits=1,
            spaces=["pca", "random"],
            inference=["ess"],
            samples=st["samples"],
            burn_in=st["burn_in"],
            rank=max(1, min(st["rank"], min(20, e - e // 2) - 1)),
            **toy_settings,
        )
        plan.first_calls.append(
            {
                "fn": regression_protocol,
                "cfg": proto,
                "out": out / folder / "toy1d",
                "overwrite": True,
                "progress": False,
            }
        )
    return plan


def subspace_finish(plan: SubspacePlan, first: list[Any], log: Callable[..., None] = print) -> dict[str, Any]:
    """Given the results of ``plan.first_calls``, run the other seeds with the chosen settings; the summary."""
    from .parallel import call, run_jobs

    out, seeds, folder = plan.out, plan.seeds, plan.folder
    chosen = {
        r: (res["posterior"]["temperature"], res["posterior"]["prior_scale"])
        for r, res in zip(plan.runs, first[: len(plan.runs)], strict=True)  # after them: the toy's result
    }
    done = {(seeds[0], *r): res for r, res in zip(plan.runs, first[: len(plan.runs)], strict=True)}
    section: dict[str, Any] = {"folder": folder, "toy": None}
    if plan.toy_settings is not None:
        toy_res = first[len(plan.runs)]
        log(f"  1-D toy regression: {len(toy_res['methods'])} methods, figure {folder}/toy1d/figures/toy1d.png")
        section["toy"] = {
            "folder": f"{folder}/toy1d",
            "figure": f"{folder}/toy1d/figures/toy1d.png",
            "settings": plan.toy_settings,
            "summary": toy_res["datasets"]["toy1d"]["summary"],
        }
    rest = [(seed, sp, inf) for seed in seeds[1:] for sp, inf in plan.runs]
    calls = [plan.job(seed, sp, inf, *chosen[sp, inf], False) for seed, sp, inf in rest]
    done.update(zip(rest, run_jobs(call, calls, jobs=plan.jobs), strict=True))
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for space, inference in plan.runs:
            res = done[seed, space, inference]
            where = out / folder / f"{space}-{inference}-seed{seed}"
            per_seed.setdefault(_label(space, inference), []).append(
                {
                    "folder": str(where.relative_to(out)),
                    "test": res["metrics"]["test"],
                    "val": res["metrics"]["val"],
                    "evaluations": res["likelihood_evaluations"],
                    "sample_s": res["timing"]["sample_s"],
                }
            )
            log(
                f"  {_label(space, inference):13s} seed {seed}: "
                f"test accuracy {100 * res['metrics']['test']['accuracy']:.2f}%"
                f"  NLL {res['metrics']['test']['nll']:.4f}  (T {res['posterior']['temperature']:g}, "
                f"s {res['posterior']['prior_scale']:g}; {res['timing']['sample_s']:.1f}s)"
            )
    keys = ["accuracy", "nll", "ece", "brier"]
    return {
        **section,
        "rank": plan.rank,
        "settings": plan.settings,
        "candidates": CANDIDATES,
        "chosen": {_label(*k): {"temperature": v[0], "prior_scale": v[1]} for k, v in chosen.items()},
        "chosen_on": f"validation split of seed {seeds[0]}",
        "rows": {label: aggregate([r["test"] for r in rows], keys) for label, rows in per_seed.items()},
        "per_seed": per_seed,
    }


def subspace_section(
    out: Path,
    seeds: list[int],
    curves: dict[int, str] | None,
    *,
    quick: bool,
    progress: bool,
    log: Callable[..., None] = print,
    jobs: int = 1,
    **plan: Any,
) -> dict[str, Any]:
    """:func:`subspace_plan` (its keyword arguments ``plan``), its first calls, then :func:`subspace_finish`."""
    from .parallel import call, run_jobs

    p = subspace_plan(out, seeds, curves, quick=quick, progress=progress, jobs=jobs, **plan)
    return subspace_finish(p, list(run_jobs(call, p.first_calls, jobs=jobs)), log)


def _deviations(swag_run: Path) -> int:
    """How many deviations the SWAG run collected: ``min(n, K)``."""
    from ..core.checkpoint import load_checkpoint

    state, _ = load_checkpoint(swag_run / "posterior.safetensors")
    return min(int(state["swag"]["n"]), int(state["swag"]["rank"]))


def subspace_lines(section: dict[str, Any], rows: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The report's lines: SGD, SWA and SWAG from the demo's table beside each subspace row."""

    def cell(r, k, pct=False):
        return (
            f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['std']:.2f}"
            if pct  # noqa: E731
            else f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}"
        )

    chosen = "; ".join(
        f"{label}: T {c['temperature']:g}, s {c['prior_scale']:g}" for label, c in section["chosen"].items()
    )
    lines = [
        "## Subspace inference (slides 25-33)",
        "",
        f"Bayesian model averages over {section['settings']['samples']} samples of z in a k-dimensional "
        f"subspace w = w_hat + P z (PCA and random: k = {section['rank']}, shift the SWA mean; curve: the plane "
        "of the Bezier curve's endpoints and midpoint). Posterior: the training NLL times N / T plus log "
        "N(z; 0, s^2 I). T among "
        f"{section['candidates']['temperature']} and s among {section['candidates']['prior_scale']}, chosen "
        f"on the {section['chosen_on']} (lowest validation NLL): {chosen}. Test metrics, mean ± std over seeds.",
        "",
        "| method | accuracy (%) | nll | ece | brier |",
        "|---|---|---|---|---|",
    ]
    for name in ("SGD", "SWA", "SWAG"):
        if name in rows:
            r = rows[name]
            lines.append(
                f"| {name} | {cell(r, 'accuracy', True)} | {cell(r, 'nll')} | {cell(r, 'ece')} | {cell(r, 'brier')} |"
            )
    for label, r in section["rows"].items():
        lines.append(
            f"| {label} | {cell(r, 'accuracy', True)} | {cell(r, 'nll')} | {cell(r, 'ece')} | {cell(r, 'brier')} |"
        )
    lines.append("")
    if section.get("toy"):
        toy = section["toy"]["summary"]
        lines += [
            "1-D regression with a gap (the toy of slide 32, one split; test NLL): "
            + ", ".join(f"{m} {toy[m]['nll']['mean']:.3f}" for m in toy)
            + ".",
            "",
        ]
    return lines


def subspace_table(
    out: str | Path,
    *,
    seeds: list[int] | None = None,
    quick: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[..., None] = print,
    jobs: int = 1,
) -> dict[str, Any]:
    """The talk's classification comparison (slides 30-31) on an existing demo folder: SGD, SWA and SWAG from
    the demo's runs beside PCA + ESS, PCA + VI, random + ESS and curve + ESS (:data:`FULL_RUNS`) for every
    seed, settings chosen on the first seed's validation split. Needs ``sgd-seed<s>``, ``swag-seed<s>`` and
    the demo's ``curve-seed<s>-seed<t>`` folders; writes ``subspace-table/`` (``summary.json``, ``report.md``
    and one subspace run folder per row and seed), refused if it exists unless ``overwrite``. ``jobs``: worker
    processes (:mod:`valleys.app.parallel`)."""
    import json

    from ..core.checkpoint import write_json, write_text
    from .folders import check_output, output_guard, set_aside_all
    from .report import aggregate

    out = Path(out)
    found = sorted(
        int(p.name[len("swag-seed") :])
        for p in out.glob("swag-seed*")
        if p.name[len("swag-seed") :].isdigit() and (out / f"sgd-seed{p.name[len('swag-seed') :]}").is_dir()
    )
    seeds = list(seeds) if seeds is not None else found
    missing = [s for s in seeds if s not in found]
    if not seeds or missing:
        raise MissingFileError(
            f"{out} needs run folders sgd-seed<s> and swag-seed<s> (a demo folder); "
            f"{'none found' if not seeds else f'missing for seeds {missing}'}"
        )
    curves = {}
    for p in out.glob("curve-seed*-seed*"):
        a = p.name.split("-")[1][len("seed") :]
        if a.isdigit() and (p / "curve.safetensors").is_file():
            curves[int(a)] = p.name
    if any(s not in curves for s in seeds):
        raise MissingFileError(
            f"{out} has no curve starting at the SGD run of seeds "
            f"{[s for s in seeds if s not in curves]} (curve-seed<s>-seed<t>, made by the demo)"
        )
    table = check_output(out / "subspace-table", overwrite=overwrite, what="a subspace table", flag="")
    with output_guard(table):
        if overwrite:  # the earlier table comes back if this one cannot be written (a full disk)
            set_aside_all(table)
        table.mkdir(parents=True, exist_ok=True)
        section = subspace_section(
            out,
            seeds,
            curves,
            quick=quick,
            progress=progress,
            log=log,
            runs=FULL_RUNS,
            folder="subspace-table",
            toy=False,
            jobs=jobs,
        )
        keys = ["accuracy", "nll", "ece", "brier"]
        base_rows = {}
        for name, (run, method) in {"SGD": ("sgd", "sgd"), "SWA": ("swag", "swa"), "SWAG": ("swag", "swag")}.items():
            per_seed = []
            for s in seeds:
                f = out / f"{run}-seed{s}" / ("results.json" if method == run else f"evaluation-{method}.json")
                if not f.is_file() and method == "swa":
                    from .evaluate import evaluate_run

                    evaluate_run(out / f"{run}-seed{s}", as_method="swa", write=True)
                per_seed.append(json.loads(f.read_text())["metrics"]["test"])
            base_rows[name] = aggregate(per_seed, keys)
        section["baselines"] = base_rows
        write_json(table / "summary.json", {"seeds": seeds, **section})
        lines = [f"# Subspace inference on {out}", "", *subspace_lines(section, base_rows)]
        write_text(table / "report.md", "\n".join(lines))
    return section
