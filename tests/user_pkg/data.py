"""Data as a user writes it: small synthetic 3-class problems, as tensors or as dict batches with a mask."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _signals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.linspace(0, 1, 16)
    x = torch.sin(2 * torch.pi * (y[:, None] + 1) * t) + 1.5 * torch.randn(n, 16, generator=g)
    return x, y


def signals(n_train: int = 192, n_test: int = 96) -> dict[str, Dataset]:
    """``{"train", "test"}`` TensorDatasets of (N, 16) signals and labels 0-2 (no validation split)."""
    return {"train": TensorDataset(*_signals(n_train, 0)), "test": TensorDataset(*_signals(n_test, 1))}


class Sequences(Dataset):
    """Padded sequences as dicts ``{"tokens": (L, 4), "mask": (L,), "label": ()}``; the label is the class
    whose direction the real tokens point to on average."""

    def __init__(self, n: int, seed: int, length: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, 3, (n,), generator=g)
        lengths = torch.randint(2, length + 1, (n,), generator=g)
        self.mask = torch.arange(length)[None, :] < lengths[:, None]
        centres = torch.eye(4)[:3] * 2.0
        self.tokens = centres[self.label][:, None, :] + torch.randn(n, length, 4, generator=g)
        self.tokens = self.tokens * self.mask[..., None]

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[i], "mask": self.mask[i], "label": self.label[i]}


def sequences(n_train: int = 160, n_test: int = 80, shuffle_test: bool = False) -> dict[str, object]:
    """Train, validation and test splits of :class:`Sequences`; the test split comes as a loader (shuffling if
    asked, as user code sometimes does)."""
    return {
        "train": Sequences(n_train, 0),
        "val": Sequences(48, 2),
        "test": DataLoader(Sequences(n_test, 1), batch_size=32, shuffle=shuffle_test),
    }


def nothing_useful() -> list[int]:
    return [1, 2, 3]
