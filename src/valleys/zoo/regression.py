"""Regression with a Gaussian likelihood: the model, its loss, and the data (UCI setup of Maddox et al. 2019).

* :class:`GaussianMLP` outputs ``(mean, variance)`` per example: heteroscedastic (a second output through
  ``softplus`` plus a floor) or homoscedastic (one learned noise variance for all inputs).
* :func:`gaussian_nll` is the mean negative log likelihood ``0.5 log(2 pi var) + (y - mu)^2 / (2 var)``.
* BMA over weight samples is moment matching (:func:`valleys.evaluation.predict.bma` with ``likelihood="gaussian"``).
* Data: scikit-learn's diabetes (442 patients, 10 features) as the built-in example, and any folder in the
  common UCI layout (``data.txt`` plus ``index_features.txt``, ``index_target.txt`` and
  ``index_train_<i>.txt`` / ``index_test_<i>.txt`` of 0-based row indices, as in Hernandez-Lobato & Adams
  2015 and Gal & Ghahramani 2016). Inputs and targets are standardised with the training split's mean and
  std; :class:`RegressionSplits` keeps ``y_mean`` and ``y_std`` to report metrics in the target's units.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..core.adapter import gaussian_nll  # noqa: F401  (re-exported: the loss of the Gaussian heads)
from ..core.optional import require
from .catalog import REGRESSION_DATASETS  # noqa: F401  (re-exported)

__all__ = ["GaussianMLP", "gaussian_nll", "RegressionSplits", "load_regression", "REGRESSION_DATASETS",
           "UCIFormatError"]


class UCIFormatError(ValueError):
    """A UCI-layout folder with missing or inconsistent files."""


class GaussianMLP(nn.Module):
    """ReLU MLP with a Gaussian head: ``forward(x)`` returns (N, 2) = ``(mean, variance)``.

    Args:
        in_features: input size.
        hidden: hidden widths (the UCI protocol uses one layer of 50).
        heteroscedastic: predict the variance per input (``softplus(raw) + min_var``) or learn one
            homoscedastic noise variance ``exp(2 log_sigma) + min_var``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (50,), heteroscedastic: bool = True,
                 min_var: float = 1e-6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.heteroscedastic = heteroscedastic
        self.min_var = min_var
        self.head = nn.Linear(width, 2 if heteroscedastic else 1)
        self.log_sigma = None if heteroscedastic else nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.body(x))
        mean = out[:, 0]
        if self.heteroscedastic:
            var = nn.functional.softplus(out[:, 1]) + self.min_var
        else:
            var = torch.exp(2 * self.log_sigma).expand_as(mean) + self.min_var
        return torch.stack([mean, var], dim=1)


@dataclass
class RegressionSplits:
    """Standardised train/validation/test splits of a regression dataset and the target's scale."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    y_mean: float
    y_std: float
    info: dict = field(default_factory=dict)
    num_classes: int = 0  # not a classification task
    ood: None = None

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _read_index(path: Path, n_rows: int, what: str) -> np.ndarray:
    try:
        idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise UCIFormatError(f"{path} is not a list of integer indices: {e}") from None
    if idx.size == 0:
        raise UCIFormatError(f"{path} is empty: {what} needs at least one index")
    if idx.min() < 0 or idx.max() >= n_rows:
        raise UCIFormatError(f"{path} holds indices in [{idx.min()}, {idx.max()}] but the data has {n_rows} "
                             f"{'columns' if 'feature' in what or 'target' in what else 'rows'}")
    return idx


def _uci(root: str | os.PathLike, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = Path(root)
    base = root / "data" if (root / "data" / "data.txt").is_file() else root
    need = ["data.txt", "index_features.txt", "index_target.txt", f"index_train_{split}.txt",
            f"index_test_{split}.txt"]
    missing = [f for f in need if not (base / f).is_file()]
    if missing:
        raise UCIFormatError(
            f"the UCI folder {base} lacks {', '.join(missing)}; it needs data.txt, index_features.txt, "
            "index_target.txt and index_train_<i>.txt / index_test_<i>.txt for the chosen split"
        )
    data = np.loadtxt(base / "data.txt", ndmin=2)
    feats = _read_index(base / "index_features.txt", data.shape[1], "the feature list")
    target = _read_index(base / "index_target.txt", data.shape[1], "the target index")
    if target.size != 1:
        raise UCIFormatError(f"index_target.txt must hold one column index, it holds {target.size}")
    if int(target[0]) in set(feats.tolist()):
        raise UCIFormatError(f"the target column {int(target[0])} is also listed as a feature")
    train = _read_index(base / f"index_train_{split}.txt", data.shape[0], "the training split")
    test = _read_index(base / f"index_test_{split}.txt", data.shape[0], "the test split")
    overlap = np.intersect1d(train, test)
    if overlap.size:
        raise UCIFormatError(f"split {split}: {overlap.size} rows are in both the training and the test index")
    x, y = data[:, feats], data[:, int(target[0])]
    return x[train], y[train], x[test], y[test]


def _diabetes(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = require("sklearn.datasets", "data").load_diabetes(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(0.1 * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_regression(name: str = "diabetes", *, root: str | os.PathLike | None = None, split: int = 0,
                    val_fraction: float = 0.1, split_seed: int = 0) -> RegressionSplits:
    """Load a regression dataset, standardised with training statistics, with a validation split carved
    from the training rows (fixed ``split_seed``)."""
    if name not in REGRESSION_DATASETS:
        raise ValueError(f"unknown regression dataset {name!r}; valid: {', '.join(REGRESSION_DATASETS)}")
    if name == "uci":
        if root is None:
            raise UCIFormatError("dataset 'uci' needs the folder: pass --data-root PATH (root=...)")
        xtr, ytr, xte, yte = _uci(root, split)
    else:
        xtr, ytr, xte, yte = _diabetes(split)
    x_mean, x_std = xtr.mean(0), xtr.std(0)
    x_std[x_std == 0] = 1.0
    y_mean, y_std = float(ytr.mean()), float(ytr.std()) or 1.0
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    xtr, xte = t((xtr - x_mean) / x_std), t((xte - x_mean) / x_std)
    ytr, yte = t((ytr - y_mean) / y_std), t((yte - y_mean) / y_std)
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(val_fraction * len(ytr)))
    va, tr = perm[:n_val], perm[n_val:]
    return RegressionSplits(name, TensorDataset(xtr[tr], ytr[tr]), TensorDataset(xtr[va], ytr[va]),
                            TensorDataset(xte, yte), input_shape=(xtr.shape[1],), y_mean=y_mean, y_std=y_std,
                            info={"split": split, "val_fraction": val_fraction})


def unstandardise(mean: Tensor, var: Tensor, splits: RegressionSplits) -> tuple[Tensor, Tensor]:
    """Predictive mean and variance back in the target's units."""
    return mean * splits.y_std + splits.y_mean, var * splits.y_std ** 2
