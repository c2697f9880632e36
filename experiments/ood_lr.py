"""The learning rate of the MNIST-1D preset's split-classes OOD runs, chosen on the validation split.

The OOD protocol trains on classes 0-4 only, so on half the data (15 steps per epoch instead of 29). At the
main runs' LR 0.1 (momentum 0.9) some seeds diverge there and end at chance level (a network whose ReLUs all
died: training loss log 5); this sweep trains SGD and SWA at LR 0.1 and 0.05 for seeds 0-2 on the OOD split
and prints each run's *validation* accuracy and NLL. The test split is never looked at.

Usage::

    python experiments/ood_lr.py /tmp/ood-lr
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from valleys.app.demo import DEMO_CONFIG
from valleys.app.parallel import call, default_jobs, run_jobs
from valleys.app.train import train_run
from valleys.zoo.data import load_dataset


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ood-lr")
    splits = load_dataset("mnist1d", val_fraction=DEMO_CONFIG.val_fraction, ood_split=True)
    calls = [
        {
            "fn": train_run,
            "cfg": dataclasses.replace(DEMO_CONFIG, method=m, lr=lr, swa_lr=lr, seed=s, ood_split=True),
            "out": out / f"{m}-lr{lr}-seed{s}",
            "overwrite": True,
            "progress": False,
            "splits": splits,
        }
        for lr in (0.1, 0.05)
        for m in ("sgd", "swa")
        for s in (0, 1, 2)
    ]
    for c, r in zip(calls, run_jobs(call, calls, jobs=default_jobs()), strict=True):
        v = r["metrics"]["val"]
        print(f"{c['out'].name:18s} validation accuracy {100 * v['accuracy']:.2f}%  NLL {v['nll']:.4f}", flush=True)


if __name__ == "__main__":
    main()
