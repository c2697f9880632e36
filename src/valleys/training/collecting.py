"""What the callbacks for other training loops (:mod:`valleys.lightning`, :mod:`valleys.hf`) share: one API.

:class:`CollectingCore` holds the settings both frameworks' ``SWACallback`` and ``SWAGCallback`` take, with one
name and one default each:

* ``start``: when averaging starts, an int (epochs completed first) or a float in ``(0, 1)`` (that fraction of
  the run's epochs, as Lightning's ``swa_epoch_start``; resolved when training starts);
* ``every`` (``"epoch"`` or ``"steps"``) and ``k``: collect at the end of every ``k``-th epoch from ``start``,
  or after every ``k``-th *optimizer step* (gradient accumulation and manual optimisation counted right: see
  :class:`StepCounter`);
* ``swa_lr``: a constant learning rate from ``start`` on, set before every batch so that it also wins over the
  user's per-step scheduler (with one warning naming that scheduler), as Lightning's
  ``StochasticWeightAveraging`` does;
* ``names``: the parameters averaged (``None``: every trainable one);
* ``bn_loader``: the loader BatchNorm statistics are recomputed on (default: the run's training loader,
  remembered when training starts, so ``trainer.test`` after ``fit`` still has it);
* ``adapter``: how batches and outputs are read (:class:`valleys.core.adapter.ModelAdapter`);
* SWAG adds ``rank``, ``samples``, ``scale`` and ``seed`` (the Bayesian model average's draws).

Before training starts the averager does not exist: :attr:`CollectingCore.averager` raises
:class:`valleys.errors.NotCollectedError` saying so, as :meth:`CollectingCore.require_collected` does before
anything was collected. :meth:`CollectingCore.save` writes the posterior to a safetensors file (never unpickled
on load) and :meth:`CollectingCore.load` reads it back (before training: applied when the averager is built).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.adapter import ModelAdapter
from ..errors import InputError, NotCollectedError
from .callbacks import CollectionSchedule

__all__ = ["CollectingCore", "StepCounter", "resolve_start"]

_EVERY = ("epoch", "steps")


def resolve_start(start: int | float, epochs: int | None) -> int:
    """Epochs completed before averaging starts: ``start`` itself for an int, ``int(start * epochs)`` for a
    float fraction of a run of ``epochs`` epochs (Lightning's ``swa_epoch_start`` rule)."""
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise InputError(f"start must be an int (epochs) or a float fraction in (0, 1), got {start!r}")
    if isinstance(start, int):
        if start < 0:
            raise InputError(f"start must be >= 0 epochs, got {start}")
        return start
    if not (math.isfinite(start) and 0 < start < 1):
        raise InputError(f"a float start is a fraction of the run in (0, 1), got {start}")
    if epochs is None or epochs < 1:
        raise InputError(
            f"start={start} is a fraction of the run, but the run's number of epochs is not known; give start as "
            "an int number of epochs"
        )
    return int(start * epochs)


class StepCounter:
    """Optimizer steps, counted from the framework's global step: a batch counts only when the global step
    moved (gradient accumulation: one step per ``accumulate`` batches), once however many optimizers stepped
    (manual optimisation with two optimizers moves Lightning's global step by two per batch)."""

    def __init__(self) -> None:
        self.steps = 0
        self._last_global: int | None = None

    def start_epoch(self, epoch: int, steps_per_epoch: int, global_step: int) -> None:
        """At the start of epoch ``epoch`` (from 0), the framework's global step being ``global_step``: the
        optimizer steps done so far, from the steps per epoch (also after a resume)."""
        self.steps = epoch * steps_per_epoch
        self._last_global = global_step

    def advanced(self, global_step: int) -> bool:
        """After a batch: whether an optimizer step happened (the global step moved); counts it."""
        moved = global_step != (self._last_global or 0)
        self._last_global = global_step
        self.steps += moved
        return moved


class CollectingCore:
    """The shared part of the framework callbacks (see the module docstring): settings, the averager built
    from the model when training starts, the parameter signature check at every collect, the refusal to
    predict before anything was collected, ``save``/``load``, the constant SWA learning rate."""

    def __init__(
        self,
        start: int | float,
        *,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: str | Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__()
        if every not in _EVERY:
            raise InputError(f"every must be one of {', '.join(_EVERY)}, got {every!r}")
        resolve_start(start, 2)  # refuse a bad start now (the run's epochs are known when training starts)
        if swa_lr is not None and not (isinstance(swa_lr, (int, float)) and math.isfinite(swa_lr) and swa_lr > 0):
            raise InputError(f"swa_lr must be finite and > 0, got {swa_lr!r}")
        self.start_setting = start
        self.schedule = CollectionSchedule(start if isinstance(start, int) else 0, every, k)
        self.every, self.k = every, k
        self.swa_lr = swa_lr
        self.names = names if isinstance(names, str) or names is None else list(names)
        self.bn_loader = bn_loader
        self.adapter = adapter or ModelAdapter()
        self.steps = StepCounter()
        self._averager: Any = None
        self._pending: dict[str, Any] | None = None
        self._signature: list[tuple[str, list[int]]] | None = None
        self._train_loader: Iterable | None = None
        self._warned_scheduler = False

    # ------------------------------------------------------------------ when
    @property
    def start(self) -> int:
        """Epochs completed before averaging starts (a fraction is resolved when training starts)."""
        return self.schedule.start

    def resolve(self, epochs: int | None) -> None:
        """Fix ``start`` for a run of ``epochs`` epochs (a float ``start`` is a fraction of them)."""
        self.schedule = CollectionSchedule(resolve_start(self.start_setting, epochs), self.every, self.k)

    def state_key_fields(self) -> dict[str, Any]:
        """The settings that tell two callbacks of one class apart (Lightning's ``state_key``)."""
        return {"start": self.start_setting, "every": self.every, "k": self.k, "names": self.names}

    # ------------------------------------------------------------------ the averager
    @property
    def averager(self) -> Any:
        """The posterior (:class:`valleys.methods.averaging.SWA` or :class:`valleys.methods.swag.SWAG`); built
        when training starts, so :class:`NotCollectedError` before."""
        if self._averager is None:
            raise NotCollectedError(
                f"{type(self).__name__}: the averager is built when training starts; fit first (or load a saved "
                "posterior with .load(path) and then fit or call setup)"
            )
        return self._averager

    @property
    def built(self) -> bool:
        """Whether the averager exists (training started)."""
        return self._averager is not None

    def build(self, model: torch.nn.Module, make: Callable[[torch.nn.Module], Any]) -> None:
        """Create the averager with ``make(model)`` once, remember the model's parameter signature, and apply a
        state given to :meth:`load` or :meth:`load_state_dict` before."""
        if self._averager is None:
            self._averager = make(model)
            self._signature = [(n, list(p.shape)) for n, p in model.named_parameters()]
        if self._pending is not None:
            self._averager.load_state_dict(self._pending)
            self._pending = None

    def collect(self, model: torch.nn.Module) -> None:
        """Add the model's weights to the averager, after checking its parameters are those it was built on."""
        now = [(n, list(p.shape)) for n, p in model.named_parameters()]
        if self._signature is not None and now != self._signature:
            # strict=False: when the number of parameters changed, the message says so below
            changed = [n for (n, s), (m, t) in zip(now, self._signature, strict=False) if n != m or s != t]
            raise InputError(
                f"{type(self).__name__}: the module's parameters changed shape or names since the callback "
                f"was set up ({', '.join(changed[:3]) or 'their number changed'}); a weight average needs "
                "the same parameters throughout: attach a new callback to a changed model"
            )
        self.averager.collect(model)

    def require_collected(self, before: str) -> None:
        """Refuse (:class:`NotCollectedError`) when nothing was collected yet, saying when collection starts."""
        if self._averager is None or self._averager.n == 0:
            raise NotCollectedError(
                f"{type(self).__name__}: nothing was collected (collection starts after epoch "
                f"{self.start}); train past the start before {before}"
            )

    def size(self) -> int:
        """Numbers the posterior holds (SWA: the mean and second moments; SWAG: also the K deviations)."""
        return sum(int(v.numel()) for v in self.averager.state_dict().values() if isinstance(v, Tensor))

    # ------------------------------------------------------------------ state and files
    def state(self) -> dict[str, Any]:
        """The posterior's state (``{}`` before training)."""
        return {} if self._averager is None else self._averager.state_dict()

    def restore(self, state: dict[str, Any]) -> None:
        """Restore a posterior state (kept until the averager is built when it does not exist yet)."""
        if not state:
            return
        if self._averager is None:
            self._pending = dict(state)
        else:
            self._averager.load_state_dict(state)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to ``path`` (safetensors plus a JSON header naming the parameters it covers);
        :meth:`load` (or ``valleys import --posterior``) reads it back without running code."""
        from ..core.checkpoint import save_checkpoint

        self.require_collected("saving the posterior")
        header = {
            "kind": f"callback-{type(self.averager).__name__.lower()}",
            "names": [s.name for s in self.averager.space.slots],
        }
        return save_checkpoint(path, dict(self.averager.state_dict()), header)

    def load(self, path: str | os.PathLike) -> None:
        """Read a posterior written by :meth:`save` (applied now, or when training starts)."""
        from ..core.checkpoint import load_checkpoint

        state, _ = load_checkpoint(path)
        self.restore(state)

    # ------------------------------------------------------------------ the learning rate
    def constant_lr(self, optimizers: Iterable[torch.optim.Optimizer], epoch: int, scheduler: str | None) -> None:
        """Set every param group's rate to ``swa_lr`` in epochs ``>= start`` (before each batch, so that it wins
        over a per-step scheduler), warning once that ``scheduler`` (the user's) is overridden."""
        if self.swa_lr is None or epoch < self.start:
            return
        if scheduler and not self._warned_scheduler:
            import warnings

            warnings.warn(
                f"{type(self).__name__}: swa_lr={self.swa_lr:g} replaces the learning rate of your {scheduler} from "
                f"epoch {self.start} on (SWA's constant-rate phase)",
                stacklevel=2,
            )
            self._warned_scheduler = True
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = self.swa_lr

    def bn_source(self) -> Iterable | None:
        """The loader BatchNorm statistics are recomputed on: ``bn_loader``, else the run's training loader."""
        return self.bn_loader if self.bn_loader is not None else self._train_loader
