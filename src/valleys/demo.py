"""The main job: SGD against SWA with the same epoch budget on the embedded default dataset (talk slides
17-20), several seeds, one run folder with a table, results.json, a report and the test-error figure."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import write_json
from .data import load_dataset
from .report import aggregate, describe_config, format_table, markdown_table
from .runs import TrainConfig, prepare_run_dir, train_run

__all__ = ["DEMO_CONFIG", "run_demo"]

# Chosen on the validation split (see README, "Why this default"): the 1-D CNN of the MNIST-1D paper, where
# constant-LR SWA from epoch 50 beat SGD on validation error and NLL; an MLP overfits and showed no gain.
DEMO_CONFIG = TrainConfig(dataset="mnist1d", model="cnn1d", epochs=100, lr=0.1, wd=5e-4, swa_start=50, swa_lr=0.1)
QUICK = {"epochs": 30, "swa_start": 15}


def _error_curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["epoch"], 1.0 - r[key]) for r in rows if key in r]


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, seeds: Sequence[int] | None = None,
             overwrite: bool = False, progress: bool = True, base: TrainConfig | None = None,
             log=print) -> dict[str, Any]:
    """Train SGD and SWA for each seed into ``out/<method>-seed<s>`` and write the summary into ``out``.

    Returns the content of ``out/results.json``: one entry per method with mean/std/min/max over seeds.
    """
    base = base or DEMO_CONFIG
    if quick:
        base = dataclasses.replace(base, **QUICK)
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    cfgs = {m: dataclasses.replace(base, method=m) for m in ("sgd", "swa")}
    for c in cfgs.values():
        c.resolved()  # every check before any work
    out = prepare_run_dir(out, overwrite=overwrite)
    if (out / "report.md").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a demo report; pass --overwrite")
    start = time.perf_counter()
    splits = load_dataset(base.dataset, val_fraction=base.val_fraction, train_subset=base.train_subset,
                          test_subset=base.test_subset, root=base.data_root)
    per_method: dict[str, list[dict]] = {m: [] for m in cfgs}
    for seed in seeds:
        for method, cfg in cfgs.items():
            run_dir = out / f"{method}-seed{seed}"
            res = train_run(dataclasses.replace(cfg, seed=seed), run_dir, overwrite=True, progress=progress,
                            splits=splits)
            per_method[method].append(res)
            t = res["metrics"]["test"]
            log(f"  {method:4s} seed {seed}: test accuracy {100 * t['accuracy']:.2f}%  NLL {t['nll']:.4f}  "
                f"ECE {t['ece']:.4f}  ({res['timing']['train_s']:.1f}s)")
    rows = {m: aggregate([r["metrics"]["test"] for r in rs]) for m, rs in per_method.items()}
    val_rows = {m: aggregate([r["metrics"]["val"] for r in rs]) for m, rs in per_method.items()}
    results = {
        "dataset": base.dataset, "model": base.model, "seeds": seeds, "quick": quick,
        "methods": [
            {"method": m, "dataset": base.dataset, "model": base.model, "seeds": seeds,
             "metrics": {"test": {k: v["mean"] for k, v in rows[m].items()},
                         "val": {k: v["mean"] for k, v in val_rows[m].items()}},
             "spread": {"test": rows[m], "val": val_rows[m]},
             "runs": [f"{m}-seed{s}" for s in seeds]}
            for m in cfgs
        ],
        "timing": {"total_s": time.perf_counter() - start},
    }
    write_json(out / "config.json", {"base": dataclasses.asdict(cfgs["swa"].resolved()), "seeds": seeds,
                                     "methods": list(cfgs), "quick": quick})
    write_json(out / "results.json", results)

    from .plots import plot_error_curves

    swa_start = cfgs["swa"].resolved().swa_start
    curves = {
        "SGD (decaying LR)": [_error_curve(out / f"sgd-seed{s}", "test_accuracy") for s in seeds],
        "SGD iterates of the SWA run": [_error_curve(out / f"swa-seed{s}", "test_accuracy") for s in seeds],
        "SWA average": [_error_curve(out / f"swa-seed{s}", "swa_test_accuracy") for s in seeds],
    }
    fig = plot_error_curves(curves, out / "figures" / "test_error_vs_epoch.png", marker_epoch=swa_start,
                            title=f"{base.model} on {base.dataset}: test error (mean of {len(seeds)} seeds)")
    better = rows["swa"]["accuracy"]["mean"] > rows["sgd"]["accuracy"]["mean"] and \
        rows["swa"]["nll"]["mean"] < rows["sgd"]["nll"]["mean"]
    report = [
        f"# valleys demo: SGD vs SWA on {base.dataset}",
        "",
        f"Model `{base.model}`, {base.epochs} epochs for both methods, seeds {seeds}. SWA averages one iterate "
        f"per epoch from epoch {swa_start} on; SGD's LR decays to 1% of its start over all epochs.",
        "",
        "## Test metrics (mean ± std over seeds)",
        "",
        markdown_table(rows),
        "",
        "## Validation metrics",
        "",
        markdown_table(val_rows),
        "",
        f"SWA {'beats' if better else 'does not beat'} SGD on both test accuracy and test NLL here.",
        "",
        "## Test error against epoch (talk slide 20)",
        "",
        f"![test error]({fig.relative_to(out)})",
        "",
        "## Settings",
        "",
        describe_config(dataclasses.asdict(cfgs["swa"].resolved())),
        "",
        f"Total time {results['timing']['total_s']:.1f} s.",
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    log("")
    log(format_table(rows))
    log(f"\nwrote {out}/results.json, {out}/report.md and {fig}")
    return results
