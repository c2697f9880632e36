"""How long to train a mode-connecting curve: the validation sweep behind ``valleys connect``'s default budget.

For two SGD networks of ``make demo`` (seeds 0 and 1 under ``runs/demo``), trains a Bezier curve per setting
and reports the maximum *validation* error over 21 evenly spaced points against the worse endpoint's, with
the maximum train loss along the curve. The test split is never touched. Settings are JSON objects with
``epochs``, ``lr`` and optionally ``bends``, ``kind`` and ``wd``.

Usage::

    python experiments/curve_budget.py runs/demo                          # the sweep reported in the README
    python experiments/curve_budget.py runs/demo '{"epochs": 200, "lr": 0.1, "bends": 3}'
"""

from __future__ import annotations

import json
import sys
import time

import torch

from valleys.app.connect import ConnectConfig, load_endpoint, train_curve
from valleys.app.run_data import load_splits
from valleys.core.weights import WeightSpace
from valleys.geometry.paths import evaluate_path
from valleys.zoo.data import make_loader

SWEEP = [
    {"epochs": 50, "lr": 0.05, "bends": 3},
    {"epochs": 100, "lr": 0.05, "bends": 3},
    {"epochs": 200, "lr": 0.05, "bends": 3},
    {"epochs": 100, "lr": 0.1, "bends": 3},
    {"epochs": 200, "lr": 0.1, "bends": 3},
    {"epochs": 400, "lr": 0.1, "bends": 3},
    {"epochs": 800, "lr": 0.1, "bends": 3},
    {"epochs": 100, "lr": 0.05, "bends": 5},
    {"epochs": 200, "lr": 0.05, "bends": 5},
    {"epochs": 400, "lr": 0.1, "bends": 5},
    {"epochs": 400, "lr": 0.1, "bends": 3, "kind": "polychain"},
    {"epochs": 400, "lr": 0.1, "bends": 3, "wd": 1e-3},
    {"epochs": 400, "lr": 0.1, "bends": 3, "wd": 2e-3},
]


def main(argv: list[str]) -> None:
    root, settings = argv[0], [json.loads(a) for a in argv[1:]] or SWEEP
    torch.set_num_threads(1)
    model_a, cfg = load_endpoint(f"{root}/sgd-seed0")
    model_b, _ = load_endpoint(f"{root}/sgd-seed1")
    splits = load_splits(cfg)
    space = WeightSpace(model_a)
    train_eval, val = make_loader(splits.train, 1000), make_loader(splits.val, 1000)
    print(
        f"endpoints: {root}/sgd-seed0 and sgd-seed1 ({cfg.model} on {cfg.dataset}, {cfg.epochs} epochs, "
        f"lr {cfg.lr}); validation split of {len(splits.val)} examples; 21 points per curve"
    )
    for s in settings:
        start = time.perf_counter()
        cfg_s = ConnectConfig(
            f"{root}/sgd-seed0",
            f"{root}/sgd-seed1",
            kind=s.get("kind", "bezier"),
            bends=s["bends"],
            epochs=s["epochs"],
            lr=s["lr"],
            wd=s.get("wd", 5e-4),
            seed=0,
        )
        curve = train_curve(
            model_a,
            space,
            space.read(model_a),
            space.read(model_b),
            make_loader(splits.train, cfg_s.batch_size, shuffle=True, seed=0),
            cfg_s,
        )
        res = evaluate_path(
            model_a,
            curve.point,
            torch.linspace(0, 1, 21).tolist(),
            train_loader=train_eval,
            test_loader=val,
            space=space,
        )
        worse = max(res.test_error[0], res.test_error[-1])
        print(
            f"{json.dumps(s):60s} max val error {100 * res.summary['test_error']['max']:5.2f}%  worse endpoint "
            f"{100 * worse:5.2f}%  max train loss {res.summary['train_loss']['max']:.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/demo"])
