"""How the ``fashion-cnn`` preset's settings were chosen, on the validation split only (the test split is never
looked at), by criteria fixed before any run.

* ``supervised``: the constant SWA learning rate of the BatchNorm CNN (widths 16-32-32, 14x14 Fashion-MNIST,
  20,000 training images, random translations and flips, SGD at LR 0.1 as in the SWA paper's CNNs, 30 epochs,
  averaging from epoch 15) among 0.05 and 0.02: the lower validation NLL of SWA, seed 0.
* ``semisup``: the semi-supervised study (the same CNN, 100 labels per class, 60 epochs, cycles of 10) between
  the mnist1d preset's steps (LR 0.4, consistency weight 7.5, weight decay 5e-5) and the papers' LR 0.1 with
  weight 30 and decay 2e-4: the lowest mean validation error of the student and fast-SWA over the three
  consistency terms (none, Pi, mean teacher), seed 0.

Each candidate runs in a subprocess of one thread (``OMP_NUM_THREADS=1``) so that the two parts can run side by
side on two cores. Writes ``OUT/selection-<part>.json`` and prints the table.

Usage::

    python experiments/fashion_cnn_preset.py supervised /tmp/fcnn-select   # about 5 minutes on one core
    python experiments/fashion_cnn_preset.py semisup /tmp/fcnn-select      # about 25 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = ["--dataset", "fashion-mnist-14", "--train-subset", "20000"]
SUPERVISED = [{"swa_lr": 0.05}, {"swa_lr": 0.02}]
SUPERVISED_FIXED = [
    *DATA, "--model", "cnn", "--model-args", "width=16", "--augment", "standard", "--method", "swa",
    "--epochs", "30", "--lr", "0.1", "--wd", "5e-4", "--swa-start", "15", "--no-progress",
]  # fmt: skip
SEMISUP = [
    {"lr": 0.4, "consistency_weight": 7.5, "wd": 5e-5},
    {"lr": 0.1, "consistency_weight": 30.0, "wd": 2e-4},
]


def _run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "valleys", *argv], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def supervised(out: Path) -> dict:
    rows = []
    for c in SUPERVISED:
        name = f"swa-lr{c['swa_lr']:g}"
        seconds = _run(
            ["train", *SUPERVISED_FIXED, "--swa-lr", str(c["swa_lr"]), "--out", str(out / name), "--overwrite"]
        )
        val = json.loads((out / name / "results.json").read_text())["metrics"]["val"]
        rows.append({**c, "name": name, "val_nll": val["nll"], "val_error": 1 - val["accuracy"], "seconds": seconds})
        print(f"{name:12s} SWA val NLL {val['nll']:.4f}  error {100 * (1 - val['accuracy']):.2f}%  ({seconds:.0f} s)")
    return {"criterion": "lowest SWA validation NLL", "rows": rows, "chosen": min(rows, key=lambda r: r["val_nll"])}


def semisup(out: Path) -> dict:
    rows = []
    for c in SEMISUP:
        name = f"lr{c['lr']:g}-w{c['consistency_weight']:g}-wd{c['wd']:g}"
        argv = ["semisup", "--preset", "fashion-cnn", "--seeds", "0", "--jobs", "1", "--no-progress"]
        argv += ["--lr", str(c["lr"]), "--consistency-weight", str(c["consistency_weight"]), "--wd", str(c["wd"])]
        seconds = _run([*argv, "--out", str(out / name), "--overwrite"])
        res = json.loads((out / name / "results.json").read_text())["summary"]
        val = {f"{t}-{k}": res[t][k]["val_error"]["mean"] for t in res for k in ("student", "fastswa")}
        rows.append(
            {**c, "name": name, "val_error": val, "criterion": sum(val.values()) / len(val), "seconds": seconds}
        )
        print(f"{name:20s} criterion {100 * rows[-1]['criterion']:.2f}%  ({seconds:.0f} s)", flush=True)
    return {
        "criterion": "lowest mean validation error of student and fast-SWA over none, Pi, mean teacher",
        "rows": rows,
        "chosen": min(rows, key=lambda r: r["criterion"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("supervised", "semisup"))
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log = (supervised if a.part == "supervised" else semisup)(a.out)
    print(f"chosen: {log['chosen']['name']}")
    (a.out / f"selection-{a.part}.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
