"""Learning-rate schedules of the talk (slide 8) as pure functions of the (fractional) epoch.

Each schedule maps ``epoch`` (a float: ``e + i / steps_per_epoch`` inside epoch ``e``) to a learning rate.
``per_iteration`` says whether it changes within an epoch. Which schedule a method of ``valleys train`` uses
is the method's business (:mod:`valleys.app.registry`). The training loop sets the LR from ``lr(epoch)``
before every step, which makes resuming exact; :meth:`Schedule.lr_scheduler` wraps the same function as a
``torch.optim.lr_scheduler.LambdaLR`` stepped once per iteration, for a user's own loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = [
    "Schedule",
    "Constant",
    "SWASchedule",
    "SWALRAnneal",
    "TriangularCyclic",
    "CosineReplay",
    "Piecewise",
]


class Schedule:
    """Base class: ``lr(epoch)`` gives the learning rate at a fractional epoch."""

    per_iteration: bool = False

    def lr(self, epoch: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, epoch: float) -> float:
        return self.lr(epoch if self.per_iteration else math.floor(epoch + 1e-9))

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        """A ``LambdaLR`` that follows this schedule when ``.step()`` is called after every iteration.

        The optimizer's ``lr`` is treated as the base; the lambda returns ``self(step / steps_per_epoch) / base``.
        """
        if steps_per_epoch < 1:
            raise InputError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        bases = [g["lr"] for g in optimizer.param_groups]
        if any(b <= 0 for b in bases):
            raise InputError("the optimizer's lr must be positive to serve as the schedule's base")

        def factor(base: float) -> Callable[[int], float]:
            return lambda step: self(step / steps_per_epoch) / base

        return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InputError(f"{name} must be positive, got {value}")


@dataclass
class Constant(Schedule):
    """``lr(epoch) = lr``."""

    lr_init: float

    def __post_init__(self) -> None:
        _positive("lr", self.lr_init)

    def lr(self, epoch: float) -> float:
        return self.lr_init


@dataclass
class SWASchedule(Schedule):
    """The SWA schedule (Izmailov et al. 2018), per epoch, with ``t = epoch / swa_start``.

    factor(t) = 1 for t <= 0.5; 1 - (1 - r)(t - 0.5)/0.4 for 0.5 < t <= 0.9; r after, with ``r = swa_lr / lr``.
    For plain SGD use ``swa_start = epochs`` and ``swa_lr = 0.01 * lr`` (the paper's SGD baseline). With
    ``swa_start = 0`` (SWA from a pre-trained network, as in the paper's ImageNet experiments) the rate is
    ``swa_lr`` throughout.
    """

    lr_init: float
    swa_start: float
    swa_lr: float

    def __post_init__(self) -> None:
        _positive("lr", self.lr_init)
        _positive("swa_lr", self.swa_lr)
        if self.swa_start != 0:
            _positive("swa_start", self.swa_start)

    def lr(self, epoch: float) -> float:
        if self.swa_start == 0:
            return self.swa_lr
        t = epoch / self.swa_start
        r = self.swa_lr / self.lr_init
        if t <= 0.5:
            factor = 1.0
        elif t < 0.9:
            factor = 1.0 - (1.0 - r) * (t - 0.5) / 0.4
        else:
            factor = r
        return self.lr_init * factor


@dataclass
class SWALRAnneal(Schedule):
    """``torch.optim.swa_utils.SWALR``-style: ``lr_init`` until ``start``, then anneal to ``swa_lr`` over
    ``anneal_epochs`` (cosine: ``swa_lr + (lr - swa_lr)(1 + cos(pi s))/2``, or linear), then constant."""

    lr_init: float
    start: float
    swa_lr: float
    anneal_epochs: float = 5
    strategy: str = "cos"
    per_iteration: bool = True

    def __post_init__(self) -> None:
        _positive("lr", self.lr_init)
        _positive("swa_lr", self.swa_lr)
        if self.strategy not in ("cos", "linear"):
            raise InputError(f"unknown anneal strategy {self.strategy!r}; choose 'cos' or 'linear'")

    def lr(self, epoch: float) -> float:
        if epoch <= self.start:
            return self.lr_init
        s = 1.0 if self.anneal_epochs <= 0 else min(1.0, (epoch - self.start) / self.anneal_epochs)
        w = (1 + math.cos(math.pi * s)) / 2 if self.strategy == "cos" else 1 - s
        return self.swa_lr + (self.lr_init - self.swa_lr) * w


@dataclass
class TriangularCyclic(Schedule):
    """FGE's cyclic schedule (Garipov et al. 2018), per iteration, cycles of ``cycle`` epochs (even).

    With ``t`` the position in the cycle in [0, 1): ``lr_1 -> lr_2`` linearly on [0, 1/2], back on [1/2, 1).
    ``offset`` is the epoch the first cycle starts at. The minimum ``lr_2`` is at mid-cycle.
    """

    lr_1: float
    lr_2: float
    cycle: int
    offset: float = 0.0
    per_iteration: bool = True

    def __post_init__(self) -> None:
        _positive("lr_1", self.lr_1)
        _positive("lr_2", self.lr_2)
        if self.cycle < 2 or self.cycle % 2:
            raise InputError(f"the cycle must be an even number of epochs >= 2, got {self.cycle}")

    def lr(self, epoch: float) -> float:
        t = ((epoch - self.offset) / self.cycle) % 1.0
        frac = 2 * t if t <= 0.5 else 2 * (1 - t)
        return self.lr_1 + (self.lr_2 - self.lr_1) * frac


@dataclass
class CosineReplay(Schedule):
    """fast-SWA schedule (Athiwaratkun et al. 2019): cosine from ``lr_init`` to 0 over ``length`` epochs
    (``lr(e) = lr_init (1 + cos(pi e / total)) / 2`` with ``total`` the epoch where it would reach 0),
    then cycles of ``cycle`` epochs replaying its values on epochs ``length - cycle .. length``.

    As in the authors' code (``adjust_learning_rate``: the cosine for ``epoch < l``, the replay from
    ``epoch >= l``), the replay starts at exactly ``e = length``: the first step of epoch ``length`` runs at
    the cycle's starting rate ``lr(length - cycle)``, like every later cycle start. ``replay_at_length=False``
    keeps ``e = length`` itself on the cosine (its end value), as valleys did before 0.1."""

    lr_init: float
    length: float
    cycle: float
    total: float | None = None
    per_iteration: bool = True
    replay_at_length: bool = True

    def __post_init__(self) -> None:
        _positive("lr", self.lr_init)
        _positive("length", self.length)
        if not 0 < self.cycle <= self.length:
            raise InputError(f"cycle must be in (0, length], got {self.cycle}")
        if self.total is not None and not self.total > 0:
            raise InputError(f"total must be positive, got {self.total}")

    def _cos(self, e: float) -> float:
        total = self.total if self.total is not None else self.length
        return self.lr_init * (1 + math.cos(math.pi * min(e, total) / total)) / 2

    def lr(self, epoch: float) -> float:
        if epoch < self.length or (epoch == self.length and not self.replay_at_length):
            return self._cos(epoch)
        into = (epoch - self.length) % self.cycle
        return self._cos(self.length - self.cycle + into)


class Piecewise(Schedule):
    """``first`` before epoch ``switch``, ``second`` from it on (both see the absolute epoch).

    FGE in one run: ``Piecewise(SWASchedule(lr, pre, lr_1), pre, TriangularCyclic(lr_1, lr_2, c, offset=pre))``.
    """

    def __init__(self, first: Schedule, switch: float, second: Schedule) -> None:
        self.first, self.switch, self.second = first, switch, second
        self.per_iteration = first.per_iteration or second.per_iteration

    def __call__(self, epoch: float) -> float:
        return self.first(epoch) if epoch < self.switch else self.second(epoch)

    def __repr__(self) -> str:
        return f"Piecewise({self.first!r}, switch={self.switch}, {self.second!r})"
