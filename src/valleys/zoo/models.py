"""Reference architectures for the built-in datasets. valleys works with any ``nn.Module``; these exist so
the CLI and demo have something to train, and tests cover BatchNorm, Dropout and residual nets.

* ``mlp``: fully connected ReLU net (optionally with Dropout), flattens its input.
* ``cnn1d``: the 1-D CNN of the MNIST-1D paper (Greydanus 2020) for ``(N, L)`` or ``(N, 1, L)`` signals.
* ``cnn``: a small CNN with BatchNorm for ``(N, C, H, W)`` images.
* ``preresnet``: a small pre-activation ResNet (He et al. 2016) with BatchNorm.
* ``vgg``: a VGG-style net without BatchNorm, with Dropout in the classifier (Simonyan & Zisserman 2015).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from .catalog import MODELS  # noqa: F401  (re-exported)

__all__ = ["MLP", "CNN1D", "SmallCNN", "ConvLarge", "PreResNet", "VGG", "MODELS", "build_model"]


class MLP(nn.Module):
    """``x -> Linear -> ReLU [-> Dropout] -> ... -> Linear`` on the flattened input."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (100, 100), dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _second_head(width: int, num_classes: int, heads: int) -> nn.Linear | None:
    """``heads=2``: the mean-teacher code's second linear head (tied to the first by a logit-distance cost; see
    :class:`valleys.training.semisup.ConsistencyStep`); in training mode the network then returns ``(class
    logits, consistency logits)``, in evaluation mode the first head's logits only."""
    if heads not in (1, 2) or isinstance(heads, bool):
        raise InputError(f"heads must be 1 or 2, got {heads!r}")
    return nn.Linear(width, num_classes) if heads == 2 else None


def _heads(model: Any, f: Tensor) -> Tensor:
    out = model.head(f)
    if model.head2 is not None and model.training:
        return out, model.head2(f)  # type: ignore[return-value]
    return out


class CNN1D(nn.Module):
    """Three strided 1-D convolutions (25 channels) and a linear head, as in the MNIST-1D paper."""

    def __init__(self, length: int, num_classes: int, channels: int = 25, heads: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, 1, length)).shape[1]
        self.head = nn.Linear(width, num_classes)
        self.head2 = _second_head(width, num_classes, heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return _heads(self, self.features(x))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks (``width``, ``2 width`` channels), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, heads: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)
        self.head2 = _second_head(2 * width, num_classes, heads)

    def forward(self, x: Tensor) -> Tensor:
        return _heads(self, self.features(x))


class ConvLarge(nn.Module):
    """The 13-layer CNN of the semi-supervised papers ("ConvLarge": Laine & Aila 2017, Tarvainen & Valpola
    2017, Athiwaratkun et al. 2019), with BatchNorm in place of weight normalisation: three 3x3 convolutions of
    ``width`` channels, 2x2 max pooling, Dropout; three of ``2 width``, pooling, Dropout; a 3x3 valid convolution
    of ``4 width``, 1x1 convolutions to ``2 width`` and ``width``, global average pooling and a linear head; every
    convolution followed by BatchNorm and LeakyReLU(0.1). At ``width = 128`` on 32x32 images it costs about 0.73
    GMAC per example (0.56 on 28x28)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 128, dropout: float = 0.5, heads: int = 1
    ) -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]

        self.features = nn.Sequential(
            *conv(in_channels, w, 3, 1),
            *conv(w, w, 3, 1),
            *conv(w, w, 3, 1),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            *conv(w, 2 * w, 3, 1),
            *conv(2 * w, 2 * w, 3, 1),
            *conv(2 * w, 2 * w, 3, 1),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            *conv(2 * w, 4 * w, 3, 0),
            *conv(4 * w, 2 * w, 1, 0),
            *conv(2 * w, w, 1, 0),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w, num_classes)
        self.head2 = _second_head(w, num_classes, heads)

    def forward(self, x: Tensor) -> Tensor:
        return _heads(self, self.features(x))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreResNet(nn.Module):
    """Pre-activation ResNet with three stages of ``blocks`` blocks (widths w, 2w, 4w); depth = 6 blocks + 2."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stages.append(_PreActBlock(cin, cout, stride=2 if (i > 0 and b == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn(self.stages(self.stem(x))))
        return self.head(out.mean(dim=(2, 3)))


class VGG(nn.Module):
    """VGG-style: conv-ReLU blocks with max pooling, no BatchNorm; classifier with Dropout."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(8 * w, 4 * w),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4 * w, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """Build a reference model by name for inputs of ``input_shape`` (without the batch dimension).

    Raises ``ValueError`` naming the valid models for an unknown name or an input it cannot take.
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    shape = tuple(input_shape)
    numel = 1
    for s in shape:
        numel *= s
    if name == "mlp":
        return MLP(numel, num_classes, **kwargs)
    if name == "cnn1d":
        if len(shape) != 1 and not (len(shape) == 2 and shape[0] == 1):
            raise InputError(f"model 'cnn1d' needs 1-D signals, got input shape {shape}; use 'cnn' for images")
        return CNN1D(shape[-1], num_classes, **kwargs)
    if len(shape) != 3:
        raise InputError(
            f"model {name!r} needs images of shape (C, H, W), got input shape {shape}; "
            "use 'mlp' or 'cnn1d' for this dataset"
        )
    if name == "convlarge" and min(shape[1:]) < 12:
        raise InputError(
            f"model 'convlarge' needs images of at least 12x12 (two poolings, then a 3x3 valid convolution), got "
            f"{shape[1]}x{shape[2]}; use 'cnn' for this dataset"
        )
    cls = {"cnn": SmallCNN, "convlarge": ConvLarge, "preresnet": PreResNet, "vgg": VGG}[name]
    return cls(shape[0], num_classes, **kwargs)
