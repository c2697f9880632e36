"""Small models and data shared by the tests: MLP, BatchNorm CNN, Dropout, LayerNorm + embeddings, tied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BNCNN(nn.Module):
    """Conv-BN-ReLU twice, then a linear head: BatchNorm2d in the middle of the network."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c * 6 * 6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


class DropoutBNMLP(nn.Module):
    """BatchNorm1d on the input, Dropout between layers."""

    def __init__(self, d: int = 5, h: int = 16, k: int = 3) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm1d(d)
        self.fc1 = nn.Linear(d, h)
        self.drop = nn.Dropout(0.3)
        self.bn1 = nn.BatchNorm1d(h)
        self.fc2 = nn.Linear(h, k)

    def forward(self, x):
        return self.fc2(self.bn1(self.drop(torch.relu(self.fc1(self.bn0(x))))))


class TinyTransformer(nn.Module):
    """Embeddings, LayerNorm, Dropout and an output layer tied to the embedding."""

    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, tokens):
        return self.out(self.norm(self.layer(self.emb(tokens))).mean(dim=1))


def mlp(d: int = 5, h: int = 16, k: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))


@pytest.fixture
def vec_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(103, 5, generator=g) * 2 + 1
    y = torch.randint(0, 3, (103,), generator=g)
    return TensorDataset(x, y)


@pytest.fixture
def img_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, 1, 6, 6, generator=g) * 3 - 1
    y = torch.randint(0, 3, (70,), generator=g)
    return TensorDataset(x, y)


def loader(ds, bs: int = 25, shuffle: bool = False, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen)


@pytest.fixture(scope="session", autouse=True)
def _valleys_cache(tmp_path_factory):
    """Every test (and every CLI subprocess it starts) caches generated data (MNIST-1D) in one session folder,
    never in the real ``~/.cache/valleys``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VALLEYS_CACHE", str(tmp_path_factory.mktemp("valleys-cache")))
        yield
