"""How the ``fashion-mnist`` demo preset was chosen: a sweep on the validation split of all 60,000 images.

Stage 1 chooses the SGD budget (epochs) and learning rate: the lowest mean *validation* error of SGD (the
demo's decaying schedule) over the seeds; the candidate budgets (20, 40, 60 epochs) were picked so that the
whole preset fits 45 minutes on two cores (the 20-epoch preset took 24 minutes).
Stage 2, at that budget, chooses SWA's constant learning rate and start: the lowest mean validation NLL of
SWA. Stage 3 chooses FGE's start (so its number of snapshots) the same way. The test split is never looked
at. Writes ``OUT/sweep.json`` and prints the three tables.

Usage::

    python experiments/fashion_mnist_preset.py /tmp/fmnist-sweep            # the sweep reported in the README
    python experiments/fashion_mnist_preset.py /tmp/fmnist-sweep --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from valleys.app.config import TrainConfig
from valleys.app.parallel import call, default_jobs, run_jobs
from valleys.app.report import aggregate
from valleys.app.train import train_run
from valleys.zoo.data import load_dataset

BASE = TrainConfig(dataset="fashion-mnist", model="mlp", wd=5e-4, samples=10)
STAGE1 = [{"epochs": e, "lr": lr} for e in (20, 40, 60) for lr in (0.05, 0.1)]
STAGE2 = [{"swa_lr": a, "swa_start": s} for a in (1.0, 0.5, 0.2) for s in (0.5, 0.75)]  # fractions of lr, epochs
STAGE3 = [0.6, 0.8]  # FGE's start, a fraction of the epochs


def _runs(calls: list[dict], jobs: int) -> list[dict]:
    return list(run_jobs(call, calls, jobs=jobs))


def _stage(settings: list[dict], changes, name, a, splits) -> list[dict]:
    """Train ``BASE`` with ``changes(setting)`` for every setting and seed; per setting, the mean validation
    error and NLL over the seeds, the mean training time and the runs' results."""
    calls = [
        {
            "fn": train_run,
            "cfg": dataclasses.replace(BASE, seed=s, **changes(c)),
            "out": a.out / f"{name(c)}-seed{s}",
            "overwrite": True,
            "progress": False,
            "splits": splits,
        }
        for c in settings
        for s in a.seeds
    ]
    res = _runs(calls, a.jobs)
    n, out = len(a.seeds), []
    for i in range(len(settings)):
        runs = res[i * n : (i + 1) * n]
        agg = aggregate([{k: r["metrics"]["val"][k] for k in ("accuracy", "nll")} for r in runs], ["accuracy", "nll"])
        out.append(
            {
                "val_error": 1 - agg["accuracy"]["mean"],
                "val_nll": agg["nll"]["mean"],
                "train_s": sum(r["timing"]["total_train_s"] for r in runs) / n,
                "runs": runs,
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=default_jobs())
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("fashion-mnist", val_fraction=BASE.val_fraction)
    start = time.perf_counter()

    stage1 = [
        {**c, **{k: v for k, v in r.items() if k != "runs"}}
        for c, r in zip(
            STAGE1,
            _stage(STAGE1, lambda c: {"method": "sgd", **c}, lambda c: f"sgd-e{c['epochs']}-lr{c['lr']}", a, splits),
            strict=True,
        )
    ]
    best = min(stage1, key=lambda r: r["val_error"])
    print("stage 1, SGD (mean over seeds", a.seeds, ")")
    for r in stage1:
        print(
            f"  epochs {r['epochs']:3d} lr {r['lr']:<5g} val error {100 * r['val_error']:.2f}%  "
            f"NLL {r['val_nll']:.4f}  ({r['train_s']:.1f}s per run){'  <- chosen' if r is best else ''}"
        )

    e, lr = best["epochs"], best["lr"]
    swa = [{"swa_lr": c["swa_lr"] * lr, "swa_start": round(c["swa_start"] * e)} for c in STAGE2]
    stage2 = [
        {**c, "val_error": r["val_error"], "val_nll": r["val_nll"]}
        for c, r in zip(
            swa,
            _stage(
                swa,
                lambda c: {"method": "swa", "epochs": e, "lr": lr, **c},
                lambda c: f"swa-e{e}-a{c['swa_lr']:g}-s{c['swa_start']}",
                a,
                splits,
            ),
            strict=True,
        )
    ]
    best2 = min(stage2, key=lambda r: r["val_nll"])
    print(
        f"stage 2, SWA at {e} epochs from LR {lr:g} (SGD's validation error {100 * best['val_error']:.2f}%, "
        f"NLL {best['val_nll']:.4f})"
    )
    for r in stage2:
        print(
            f"  swa_lr {r['swa_lr']:<6g} swa_start {r['swa_start']:3d} val error {100 * r['val_error']:.2f}%  "
            f"NLL {r['val_nll']:.4f}{'  <- chosen' if r is best2 else ''}"
        )

    fge = [{"fge_start": round(f * e)} for f in STAGE3]
    stage3 = [
        {
            **c,
            "snapshots": len(r["runs"][0]["member_test_accuracy"]),
            "val_error": r["val_error"],
            "val_nll": r["val_nll"],
        }
        for c, r in zip(
            fge,
            _stage(
                fge,
                lambda c: {"method": "fge", "epochs": e, "lr": lr, **c},
                lambda c: f"fge-e{e}-start{c['fge_start']}",
                a,
                splits,
            ),
            strict=True,
        )
    ]
    best3 = min(stage3, key=lambda r: r["val_nll"])
    print(f"stage 3, FGE at {e} epochs from LR {lr:g}")
    for r in stage3:
        print(
            f"  fge_start {r['fge_start']:3d} ({r['snapshots']} snapshots) val error {100 * r['val_error']:.2f}%  "
            f"NLL {r['val_nll']:.4f}{'  <- chosen' if r is best3 else ''}"
        )
    (a.out / "sweep.json").write_text(
        json.dumps(
            {
                "seeds": a.seeds,
                "stage1": stage1,
                "stage2": stage2,
                "stage3": stage3,
                "chosen": {
                    "epochs": e,
                    "lr": lr,
                    "swa_lr": best2["swa_lr"],
                    "swa_start": best2["swa_start"],
                    "fge_start": best3["fge_start"],
                },
                "total_s": time.perf_counter() - start,
            },
            indent=1,
        )
    )
    print(f"total {time.perf_counter() - start:.0f}s; wrote {a.out / 'sweep.json'}")


if __name__ == "__main__":
    main()
