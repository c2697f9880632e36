"""How the ``mnist1d`` preset's semi-supervised settings were re-chosen after the rules changed to the authors'
code's (fast-SWA from the weights after epoch l - c, the replay from exactly epoch l, the labelled
cross-entropy divided by the whole batch, the ramp-up at the epoch index).

With 32 labelled examples in batches of 128, dividing the cross-entropy by the whole batch makes it 4x weaker
than the labelled mean the preset was tuned with (LR 0.1, consistency weight 30): test error of the student
rose from 10.4% to 22.1% (none), 6.2% to 16.3% (Pi) and 5.7% to 16.5% (mean teacher) over seeds 0-2. The
candidates: LR 0.1 or 0.4 (0.4 restores the supervised step's size) times consistency weight 30 or 100 (the
papers' 100 with the MSE loss). The criterion, fixed before any run: the lowest mean *validation* error of
the student and fast-SWA over the three consistency terms (none, Pi, mean teacher) and seeds 0 and 1; the test
split is never looked at. Writes ``OUT/selection-round<R>.json`` and prints the table.

Usage::

    python experiments/semisup_reference_preset.py /tmp/semi-select      # about 6 minutes on 2 cores
    python experiments/semisup_reference_preset.py /tmp/semi-select --round 2 --seeds 0 1 2   # about 8 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: round 1 (seeds 0 and 1)
CANDIDATES = [{"lr": lr, "consistency_weight": w} for lr in (0.1, 0.4) for w in (30.0, 100.0)]
#: round 2 (seeds 0, 1 and 2), after round 1's choice (LR 0.4, weight 30) trained the mean teacher of seed 4 to
#: 34.8% test error in a 10-seed demo: the settings whose steps equal the earlier tuned ones under the new
#: normalisation (LR 0.4 x (32/128) = 0.1 on the cross-entropy, 0.4 x 7.5 = 0.1 x 30 on the consistency term,
#: weight decay 5e-5 x 0.4 = 2e-4 x 0.1), and the same at half the LR, against round 1's choice
ROUND2 = [
    {"lr": 0.4, "consistency_weight": 30.0, "wd": 2e-4},
    {"lr": 0.4, "consistency_weight": 7.5, "wd": 5e-5},
    {"lr": 0.2, "consistency_weight": 15.0, "wd": 1e-4},
]
FIXED = [
    "--dataset", "mnist1d", "--model", "cnn1d", "--labels-per-class", "40", "--epochs", "90", "--cycle", "15",
    "--fast-swa-every", "1", "--no-progress",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--round", type=int, choices=(1, 2), default=1)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in CANDIDATES if a.round == 1 else ROUND2:
        name = f"lr{c['lr']:g}-w{c['consistency_weight']:g}" + (f"-wd{c['wd']:g}" if "wd" in c else "")
        argv = [sys.executable, "-m", "valleys", "semisup", *FIXED, "--lr", str(c["lr"])]
        argv += ["--wd", str(c["wd"])] if "wd" in c else []
        argv += ["--consistency-weight", str(c["consistency_weight"]), "--seeds", *map(str, a.seeds)]
        argv += ["--out", str(a.out / name), "--overwrite", "--jobs", "2"]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        res = json.loads((a.out / name / "results.json").read_text())["summary"]
        kinds = ("student", "fastswa")
        val = {f"{term}-{kind}": res[term][kind]["val_error"]["mean"] for term in res for kind in kinds}
        rows.append({**c, "name": name, "val_error": val, "criterion": sum(val.values()) / len(val)})
        rows[-1]["seconds"] = time.perf_counter() - t0
        print(f"{name:14s} criterion {100 * rows[-1]['criterion']:.2f}%  ({rows[-1]['seconds']:.0f} s)", flush=True)
    best = min(rows, key=lambda r: r["criterion"])
    print(f"chosen: {best['name']}")
    log = {"seeds": a.seeds, "rows": rows, "chosen": best}
    (a.out / f"selection-round{a.round}.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
