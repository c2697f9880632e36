"""A training run's data and network, rebuilt the same way by training, evaluation and the studies."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..zoo.data import Splits, load_dataset, make_loader
from ..zoo.models import build_model
from ..zoo.regression import GaussianMLP, load_regression
from .config import TrainConfig

__all__ = ["load_splits", "build_run_model", "eval_loaders", "bn_loader"]


def load_splits(cfg: TrainConfig) -> Splits:
    """The run's train, validation and test splits (and OOD set), from its dataset settings."""
    if cfg.is_regression:
        return load_regression(
            cfg.dataset,
            root=cfg.data_root,
            split=cfg.uci_split,  # type: ignore[return-value]
            val_fraction=cfg.val_fraction,
        )
    return load_dataset(
        cfg.dataset,
        val_fraction=cfg.val_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        root=cfg.data_root,
        ood_split=cfg.ood_split,
    )


def eval_loaders(splits: Splits) -> dict[str, Any]:
    """Unshuffled loaders of the validation and test splits (and the OOD set), batches of 1000."""
    loaders = {"val": make_loader(splits.val, 1000), "test": make_loader(splits.test, 1000)}
    if splits.ood is not None:
        loaders["ood"] = make_loader(splits.ood, 1000)
    return loaders


def bn_loader(cfg: TrainConfig, splits: Splits) -> Any:
    """The loader BatchNorm statistics are recomputed on: the training split."""
    return make_loader(splits.train, max(cfg.batch_size, 256))


def build_run_model(cfg: TrainConfig, splits: Splits) -> nn.Module:
    """The run's network, initialised from its seed, on its device."""
    torch.manual_seed(cfg.seed)
    if cfg.is_regression:
        return GaussianMLP(splits.input_shape[0], heteroscedastic=cfg.heteroscedastic).to(cfg.device)
    return build_model(cfg.model, splits.input_shape, splits.num_classes).to(cfg.device)
