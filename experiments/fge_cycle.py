"""FGE's cycle length for the MNIST-1D preset, in steps, chosen on the validation split.

MNIST-1D has 29 steps per epoch, so FGE's default cycle of 2 epochs (Garipov et al. 2018 use 2-4 epochs of
391 CIFAR steps) is 58 steps: snapshots a few dozen steps apart are nearly the same network. This sweep
trains FGE within the demo's 100-epoch budget with longer cycles (and an earlier start, so that the cycles fit
the budget) for seeds 0-2 and prints the mean *validation* error and NLL of each ensemble with its cycle
stated in steps. The test split is never looked at.

Usage::

    python experiments/fge_cycle.py /tmp/fge-cycle
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from valleys.app.demo import DEMO_CONFIG
from valleys.app.parallel import call, default_jobs, run_jobs
from valleys.app.report import aggregate
from valleys.app.train import train_run
from valleys.zoo.data import load_dataset

# (cycle in epochs, start epoch): the default, then longer cycles
SWEEP = [(2, 80), (2, 92), (6, 76), (10, 60), (10, 80), (20, 60)]
SEEDS = [0, 1, 2]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fge-cycle")
    splits = load_dataset("mnist1d", val_fraction=DEMO_CONFIG.val_fraction)
    spe = math.ceil(len(splits.train) / DEMO_CONFIG.batch_size)
    calls = [
        {
            "fn": train_run,
            "cfg": dataclasses.replace(DEMO_CONFIG, method="fge", cycle=c, fge_start=s, seed=seed),
            "out": out / f"fge-c{c}-s{s}-seed{seed}",
            "overwrite": True,
            "progress": False,
            "splits": splits,
        }
        for c, s in SWEEP
        for seed in SEEDS
    ]
    res = list(run_jobs(call, calls, jobs=default_jobs()))
    for i, (c, s) in enumerate(SWEEP):
        runs = res[i * len(SEEDS) : (i + 1) * len(SEEDS)]
        agg = aggregate([r["metrics"]["val"] for r in runs], ["accuracy", "nll"])
        print(
            f"cycle {c:2d} epochs ({c * spe:4d} steps) from epoch {s}: {len(runs[0]['member_test_accuracy']):2d} "
            f"snapshots, validation error {100 * (1 - agg['accuracy']['mean']):.2f}%  NLL {agg['nll']['mean']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
