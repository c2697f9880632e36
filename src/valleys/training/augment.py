"""Stochastic input transforms for consistency regularisation: each call draws new random parameters per
example, so two calls on one batch give two views (Laine & Aila 2017, "Temporal Ensembling for
Semi-Supervised Learning"; Tarvainen & Valpola 2017).

They act on whole batches (one vectorised call, randomness from the global torch generator, which the
trainer saves in its checkpoints, so a resumed run draws the same views):

* :class:`SignalAugment` for 1-D signals ``(N, L)`` or ``(N, C, L)`` such as MNIST-1D: a random shift by up
  to ``shift`` samples (zero-padded, or circular), a random gain ``1 + U(-scale, scale)`` and Gaussian noise.
* :class:`ImageAugment` for images ``(N, C, H, W)``: a random translation by up to ``translate`` pixels
  (zero padding, as the mean-teacher code's random crop of a padded image), a horizontal flip with
  probability 1/2 where ``flip=True``, and Gaussian noise.

Any ``callable(x) -> x`` of the same shape can be used instead.

For supervised training, :func:`supervised_augment` gives the usual label-preserving transforms of a built-in
dataset (random translation, i.e. a random crop of a zero-padded image, and horizontal flips where they keep
the class; no noise), and :func:`augmented_step` wraps a trainer's step function so that every training batch
is transformed before its forward pass (as the SWA and FGE papers train their CNNs: Izmailov et al. 2018;
Garipov et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import BatchFormatError, InputError

__all__ = [
    "SignalAugment",
    "ImageAugment",
    "default_augment",
    "supervised_augment",
    "augment_input",
    "augmented_step",
    "AUGMENTATIONS",
]

#: ``augment`` of a training run (``valleys train --augment``): what each name does to a training batch.
AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation",
    "standard": "images: random translation by up to 2 pixels (1 at 14 pixels or fewer; zero padding, a random "
    "crop of the padded image) and, for Fashion-MNIST, horizontal flips; signals: random shifts by up to 3 "
    "samples",
}


def _check(name: str, value: float, *, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    if not value >= 0:
        raise InputError(f"{name} must be >= 0, got {value!r}")


def _shift_last(x: Tensor, offsets: Tensor, circular: bool) -> Tensor:
    """``out[n, ..., i] = x[n, ..., i - offsets[n]]`` along the last axis (zero outside unless circular)."""
    length = x.shape[-1]
    pos = torch.arange(length, device=x.device).expand(x.shape[0], length) - offsets[:, None]
    if circular:
        src = pos % length
        valid = None
    else:
        valid = (pos >= 0) & (pos < length)
        src = pos.clamp(0, length - 1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (length,)
    out = torch.gather(x, -1, src.view(shape).expand_as(x))
    if valid is not None:
        out = out * valid.view(shape).to(x.dtype)
    return out


@dataclass
class SignalAugment:
    """Random shift (up to ``shift`` samples, zero-padded unless ``circular``), gain ``1 + U(-scale, scale)``
    and additive Gaussian noise of standard deviation ``noise``, drawn independently per example."""

    shift: int = 3
    scale: float = 0.1
    noise: float = 0.1
    circular: bool = False

    def __post_init__(self) -> None:
        _check("shift", self.shift, integer=True)
        _check("scale", self.scale)
        _check("noise", self.noise)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3):
            raise InputError(
                f"SignalAugment takes signals of shape (N, L) or (N, C, L), got {tuple(x.shape)}; "
                "use ImageAugment for images or pass your own augment"
            )
        n = x.shape[0]
        if self.shift:
            offsets = torch.randint(-self.shift, self.shift + 1, (n,), device=x.device)
            x = _shift_last(x, offsets, self.circular)
        if self.scale:
            gain = 1 + (2 * torch.rand(n, device=x.device, dtype=x.dtype) - 1) * self.scale
            x = x * gain.view((n,) + (1,) * (x.dim() - 1))
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return x


@dataclass
class ImageAugment:
    """Random translation by up to ``translate`` pixels in each direction (zero padding), a horizontal flip
    with probability 1/2 when ``flip``, and additive Gaussian noise of standard deviation ``noise``."""

    translate: int = 2
    flip: bool = False
    noise: float = 0.15

    def __post_init__(self) -> None:
        _check("translate", self.translate, integer=True)
        _check("noise", self.noise)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(
                f"ImageAugment takes images of shape (N, C, H, W), got {tuple(x.shape)}; use "
                "SignalAugment for 1-D signals or pass your own augment"
            )
        n = x.shape[0]
        if self.flip:
            flip = torch.rand(n, device=x.device) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        if self.translate:
            t = self.translate
            dy = torch.randint(-t, t + 1, (n,), device=x.device)
            dx = torch.randint(-t, t + 1, (n,), device=x.device)
            x = _shift_last(x, dx, False)
            x = _shift_last(x.transpose(-1, -2), dy, False).transpose(-1, -2)
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return x


_FLIPS = ("fashion-mnist", "fashion-mnist-14")  # a mirrored garment is still the same class; a mirrored digit is not


def _is_signal(input_shape: tuple[int, ...]) -> bool:
    return len(input_shape) == 1 or (len(input_shape) == 2 and input_shape[0] == 1)


def default_augment(input_shape: tuple[int, ...], *, dataset: str | None = None):
    """The views used for a built-in dataset: :class:`SignalAugment` for 1-D inputs, :class:`ImageAugment`
    for images (flips only for Fashion-MNIST, where a mirrored garment is still the same class; one pixel of
    translation for the 8x8 digits, two otherwise)."""
    if _is_signal(input_shape):
        return SignalAugment()
    if len(input_shape) == 3:
        small = min(input_shape[1:]) <= 8
        return ImageAugment(translate=1 if small else 2, flip=dataset in _FLIPS)
    raise InputError(f"no default augmentation for inputs of shape {input_shape}; pass augment=callable")


def supervised_augment(name: str, input_shape: tuple[int, ...], *, dataset: str | None = None):
    """The transform ``augment = name`` (one of :data:`AUGMENTATIONS`) makes of a supervised training batch of
    inputs of ``input_shape`` (without the batch dimension): ``None`` for ``"none"``; for ``"standard"`` an
    :class:`ImageAugment` without noise (translation by up to 2 pixels, 1 for images of 14 pixels or fewer;
    flips for Fashion-MNIST) or a :class:`SignalAugment` that only shifts (up to 3 samples)."""
    if name not in AUGMENTATIONS:
        raise InputError(f"unknown augment {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    if name == "none":
        return None
    if _is_signal(input_shape):
        return SignalAugment(shift=3, scale=0.0, noise=0.0)
    if len(input_shape) == 3:
        return ImageAugment(translate=1 if min(input_shape[1:]) <= 14 else 2, flip=dataset in _FLIPS, noise=0.0)
    raise InputError(
        f"--augment {name} has no transform for inputs of shape {input_shape} (it knows 1-D signals and "
        "(C, H, W) images); use --augment none, or augment in your data factory"
    )


def augment_input(batch: Any, augment: Callable[[Tensor], Tensor]) -> Any:
    """``batch`` with ``augment`` applied to its input: the first element of an ``(input, label, ...)`` tuple or
    list. Other batches raise :class:`valleys.errors.BatchFormatError` naming what to pass instead."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return type(batch)([augment(batch[0]), *batch[1:]])
    raise BatchFormatError(
        f"augment= transforms the input of (input, label) batches, but this batch is a "
        f"{type(batch).__name__}; augment in your data pipeline (or pass views=callable(batch) -> batch to "
        "ConsistencyStep) instead"
    )


def augmented_step(augment: Callable[[Tensor], Tensor], step: Callable[[Any, Any], Any] | None = None):
    """A trainer step function (see :class:`valleys.training.trainer.Trainer`'s ``step_fn``) that applies
    ``augment`` to every training batch's input and then runs ``step`` (default
    :func:`valleys.training.trainer.supervised_step`). The randomness comes from the global generator, which
    the trainer's checkpoints save, so a resumed run draws the same transforms."""
    if not callable(augment):
        raise InputError(f"augment must be a callable(x) -> x, got {type(augment).__name__}")
    if step is None:
        from .trainer import supervised_step

        step = supervised_step

    def augmented(trainer: Any, batch: Any) -> Any:
        return step(trainer, augment_input(batch, augment))

    return augmented
