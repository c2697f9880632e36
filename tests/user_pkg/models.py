"""Models as a user writes them: an attention model fed dict batches with a mask, a model returning a tuple,
and a BatchNorm CNN. Plain PyTorch; nothing here knows valleys."""

from __future__ import annotations

import torch
from torch import nn


class MaskedAttention(nn.Module):
    """One attention layer over a padded sequence (``tokens``: (N, L, D), ``mask``: (N, L), True = real),
    mean-pooled over the real positions, then a linear head."""

    def __init__(self, dim: int = 4, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, hidden)
        self.attn = nn.MultiheadAttention(hidden, num_heads=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        m = mask.unsqueeze(-1).to(a.dtype)
        return self.head((a * m).sum(1) / m.sum(1).clamp_min(1.0))


class TupleNet(nn.Module):
    """An MLP that returns ``(logits, features)``, as many research models do."""

    def __init__(self, inputs: int = 16, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return self.head(f), f


class BNConv(nn.Module):
    """A 1-D CNN with BatchNorm on (N, 16) signals."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 3, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(4),
            nn.Flatten(),
            nn.Linear(4 * channels, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1))


def attention(hidden: int = 8) -> nn.Module:
    return MaskedAttention(hidden=hidden)


def tuple_net(hidden: int = 16) -> nn.Module:
    return TupleNet(hidden=hidden)


def bn_conv(channels: int = 4) -> nn.Module:
    return BNConv(channels=channels)


def not_a_module() -> object:
    return "a string"


def broken() -> nn.Module:
    raise RuntimeError("out of coffee")


class GaussianNet(nn.Module):
    """A regression network whose output is (N, 2) = (mean, variance), for the diabetes set's 10 inputs."""

    def __init__(self, inputs: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return torch.stack([out[:, 0], nn.functional.softplus(out[:, 1]) + 1e-3], dim=1)


def gaussian_net() -> nn.Module:
    return GaussianNet()


def signal_mlp() -> nn.Module:
    """An MLP for MNIST-1D's 40-sample signals and 10 classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))
