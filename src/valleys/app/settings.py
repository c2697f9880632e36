"""The settings of a training run as plain data (no torch): the command line's parser reads their defaults
from :class:`TrainSettings` without importing the library; :class:`valleys.app.runs.TrainConfig` adds the
checks and the rest."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainSettings"]


@dataclass
class TrainSettings:
    """Every setting of a training run and its default (see ``valleys train --help``); the fields of
    :class:`valleys.app.runs.TrainConfig`."""

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    method: str = "swa"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 128
    swa_start: int | None = None  # default: half the epochs
    swa_lr: float | None = None  # default: lr (constant-LR SWA)
    rank: int = 20  # SWAG: K deviation vectors
    samples: int = 30  # SWAG / MultiSWAG: S draws (per member) at test time
    bn_batches: int | None = None  # BN recompute per sample on this many batches (None: all)
    cycle: int = 2  # FGE cycle length (epochs, even)
    lr_1: float | None = None  # FGE: default lr / 2
    lr_2: float | None = None  # FGE: default lr / 200
    fge_start: int | None = None  # FGE: default the last 20% of the budget, a whole number of cycles
    members: int = 3  # ensemble / multiswag
    ood_split: bool = False  # train on the first half of the classes; the rest are OOD
    uci_split: int = 0  # regression: which index_train_<i>/index_test_<i> pair (or diabetes split seed)
    heteroscedastic: bool = True  # regression: per-input variance (else one learned noise variance)
    seed: int = 0
    val_fraction: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 10
    eval_every: int = 1
