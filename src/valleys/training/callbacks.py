"""SWA, SWAG and FGE in our training loop: :class:`SWACallback` collects into a
:class:`valleys.methods.averaging.SWA` (or EMA, or SWAG), :class:`FGECallback` keeps snapshots.

When to collect is one :class:`CollectionSchedule` shared by both (Izmailov et al. 2018, Alg. 1): at the end
of every epoch after ``start`` epochs (constant or SWA schedule), every ``k`` optimizer steps (fast-SWA,
Athiwaratkun et al. 2019), or once per cycle of a cyclical schedule at a given phase (``phase=0.5`` is the LR
minimum of :class:`valleys.training.schedules.TriangularCyclic`, where FGE, Garipov et al. 2018, snapshots).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.batchnorm import recompute_bn
from ..core.weights import WeightSpace, preserved_modes
from ..errors import InputError
from ..methods.averaging import Averager
from ..methods.ensembles import snapshot
from .trainer import Callback, Trainer

__all__ = ["CollectionSchedule", "SWACallback", "TrajectoryCallback", "TravelCallback", "FGECallback"]

_MODES = ("epoch", "steps", "cycle")


@dataclass(frozen=True)
class CollectionSchedule:
    """When a weight-collecting method (SWA, SWAG, FGE) takes the current weights.

    With ``s`` the global optimizer step (counted from 1), ``P`` the steps per epoch and ``e`` the epochs done:

    * ``every="epoch"``: at the end of epoch ``e`` whenever ``e > start`` and ``(e - start) mod k = 0``
      (SWA/SWAG, Izmailov et al. 2018; Maddox et al. 2019: one iterate per epoch, ``k = 1``; fast-SWA every
      ``k`` epochs, and SWA once per cycle with ``k`` the cycle, Athiwaratkun et al. 2019); with
      ``include_start`` from ``e >= start`` on, so the weights after epoch ``start`` itself are the first (the
      fast-SWA rule of the authors' code, ``epoch >= l - c and (epoch - l + c) % k == 0``);
    * ``every="steps"``: after step ``s`` in an epoch ``>= start`` whenever ``s mod k = 0`` (fast-SWA);
    * ``every="cycle"``: with ``L = cycle P`` and ``u = s - start P`` (cycles counted from ``start``), after the
      step with ``u > 0`` and ``u mod L = round(phase L) mod L``; FGE (Garipov et al. 2018) uses ``phase=0.5``,
      the LR minimum of a triangular cycle.

    Args:
        start: epochs completed before collecting starts (>= 0).
        every: ``"epoch"``, ``"steps"`` or ``"cycle"``.
        k: steps between collects for ``every="steps"``, epochs for ``every="epoch"`` (>= 1).
        cycle, phase: cycle length in epochs (>= 1) and the position in the cycle, in [0, 1).
        include_start: ``every="epoch"`` only: also collect the weights after epoch ``start`` (``start >= 1``).
    """

    start: int = 0
    every: str = "epoch"
    k: int = 1
    cycle: int | None = None
    phase: float = 0.5
    include_start: bool = False

    def __post_init__(self) -> None:
        if self.every not in _MODES:
            raise InputError(f"unknown collect mode {self.every!r}; choose one of {', '.join(_MODES)}")
        if self.start < 0:
            raise InputError(f"start must be >= 0 epochs, got {self.start}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InputError(
                f"k must be an integer >= 1 ({'steps' if self.every == 'steps' else 'epochs'}), got {self.k!r}"
            )
        if self.every == "cycle" and (self.cycle is None or self.cycle < 1 or not 0 <= self.phase < 1):
            raise InputError("every='cycle' needs cycle >= 1 epochs and phase in [0, 1)")
        if self.include_start and self.every != "epoch":
            raise InputError(f"include_start applies to every='epoch' only, got every={self.every!r}")

    def after_step(self, step: int, epoch: int, steps_per_epoch: float) -> bool:
        """Whether to collect after global step ``step`` (from 1), taken in epoch ``epoch`` (from 0).
        ``steps_per_epoch`` may be a float: Lightning reports ``inf`` for a loader without a length."""
        if epoch < self.start or self.every == "epoch":
            return False
        if self.every == "steps":
            return step % self.k == 0
        assert self.cycle is not None  # __post_init__ refuses every="cycle" without it
        length = self.cycle * steps_per_epoch
        u = step - self.start * steps_per_epoch
        return u > 0 and u % length == round(self.phase * length) % length

    def at_epoch_end(self, epochs_done: int) -> bool:
        """Whether to collect at the end of an epoch, ``epochs_done`` epochs having been trained."""
        first = self.start if self.include_start else self.start + 1
        return self.every == "epoch" and epochs_done >= first and (epochs_done - self.start) % self.k == 0


class SWACallback(Callback):
    """Collect weights into ``averager`` during :class:`valleys.training.trainer.Trainer` training.

    Args:
        averager: an :class:`valleys.methods.averaging.SWA` or :class:`valleys.methods.averaging.EMA` over the
            trained model.
        start: number of epochs completed before collecting starts (0 collects from the first epoch).
        every: ``"epoch"`` (end of each epoch), ``"steps"`` (every ``k`` steps) or ``"cycle"``.
        k: steps between collects for ``every="steps"``, epochs for ``every="epoch"``.
        cycle, phase: cycle length in epochs and the position in the cycle (in [0, 1)) to collect at;
            cycles are counted from ``start``, so use a cyclic schedule with ``offset=start``.
        bn_loader: training loader for BatchNorm recompute of the average (evaluation and the final model).
        eval_loaders: ``{"test": loader}``: evaluate the average (after BN recompute) at every epoch end
            from ``start`` on; logged as ``swa_<name>_accuracy`` etc.
        apply_at_end: write the average into the model at the end of training (with BN recompute).
        include_start: ``every="epoch"``: the weights after epoch ``start`` are the first collected
            (:class:`CollectionSchedule`; fast-SWA as in the authors' code).
    """

    def __init__(
        self,
        averager: Averager,
        start: int = 0,
        *,
        every: str = "epoch",
        k: int = 1,
        cycle: int | None = None,
        phase: float = 0.5,
        bn_loader: Iterable | None = None,
        eval_loaders: Mapping[str, Iterable] | None = None,
        apply_at_end: bool = True,
        prefix: str = "swa",
        include_start: bool = False,
    ) -> None:
        self.schedule = CollectionSchedule(start, every, k, cycle, phase, include_start)
        self.averager = averager
        self.start, self.every, self.k, self.cycle, self.phase = start, every, k, cycle, phase
        self.bn_loader = bn_loader
        self.eval_loaders = dict(eval_loaders or {})
        self.apply_at_end = apply_at_end
        self.prefix = prefix

    def on_train_start(self, trainer: Trainer) -> None:
        if self.start >= trainer.epochs:
            raise InputError(
                f"SWA would start after epoch {self.start} but training has only {trainer.epochs} epochs; "
                "choose a start below the number of epochs"
            )

    def on_step_end(self, trainer: Trainer) -> None:
        if self.schedule.after_step(trainer.step, trainer.epoch, trainer.steps_per_epoch):
            self.averager.collect(trainer.model)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.schedule.at_epoch_end(trainer.epoch):
            self.averager.collect(trainer.model)
        logs[f"{self.prefix}_n"] = self.averager.n
        if self.eval_loaders and self.averager.n > 0 and trainer.should_evaluate(self.eval_loaders):
            space = self.averager.space
            with space.at(trainer.model, self.averager.mean):
                if self.bn_loader is not None:
                    recompute_bn(trainer.model, self.bn_loader, device=trainer.device, adapter=trainer.adapter)
                for name, loader in self.eval_loaders.items():
                    logs.update(trainer.log_entries(f"{self.prefix}_{name}", trainer.evaluate_on(loader)))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.apply_at_end and self.averager.n > 0:
            self.averager.write(trainer.model)
            if self.bn_loader is not None:
                recompute_bn(trainer.model, self.bn_loader, device=trainer.device, adapter=trainer.adapter)

    def state_dict(self) -> dict[str, Any]:
        return self.averager.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averager.load_state_dict(state)


class TrajectoryCallback(Callback):
    """Keep a CPU copy of the flat weights at the end of every epoch after ``start`` (the iterates SWA
    averages), for trajectory planes and PCA subspaces (talk slides 9-13)."""

    def __init__(self, space, start: int = 0) -> None:
        self.space, self.start = space, start
        self.iterates: list = []
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if trainer.epoch > self.start:
            self.iterates.append(self.space.read(trainer.model, device="cpu"))
            self.epochs.append(trainer.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"iterates": self.iterates, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterates, self.epochs = list(state["iterates"]), list(state["epochs"])


class TravelCallback(Callback):
    """How far the iterates travel between consecutive epoch ends (Athiwaratkun et al. 2019, Fig. 2; talk
    slide 35): the Euclidean distance ``||w_e - w_{e-1}||`` in the flat weight space, and the share of the
    ``probe`` examples (e.g. unlabelled inputs) whose predicted class changed. Logged as ``travel_distance``
    and ``travel_disagreement`` at every epoch end (the first measured from the weights training started with).

    Args:
        space: the :class:`valleys.core.weights.WeightSpace` of the trained model.
        probe: one batch the adapter can call the model on (its targets are not used).
    """

    def __init__(self, space: WeightSpace, probe: Any) -> None:
        self.space, self.probe = space, probe
        self._last_w: Tensor | None = None
        self._last_pred: Tensor | None = None

    def _predict(self, trainer: Trainer) -> Tensor:
        with preserved_modes(trainer.model, train=False), torch.no_grad():
            return trainer.adapter.forward(trainer.model, self.probe, trainer.device).argmax(1).cpu()

    def on_train_start(self, trainer: Trainer) -> None:
        if self._last_w is None:
            self._last_w = self.space.read(trainer.model, device="cpu")
            self._last_pred = self._predict(trainer)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        w, pred = self.space.read(trainer.model, device="cpu"), self._predict(trainer)
        last_w, last_pred = self._last_w, self._last_pred
        assert last_w is not None and last_pred is not None  # set by on_train_start or load_state_dict
        logs["travel_distance"] = float((w - last_w).double().norm())
        logs["travel_disagreement"] = float((pred != last_pred).double().mean())
        self._last_w, self._last_pred = w, pred

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._last_w, "predictions": self._last_pred}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_w, self._last_pred = state["weights"], state["predictions"]


class FGECallback(Callback):
    """Snapshot the model at the LR minimum (mid-cycle) of every cycle of ``cycle`` epochs (FGE, Garipov et
    al. 2018): a :class:`CollectionSchedule` with ``every="cycle"`` and ``phase=0.5``.

    Args:
        cycle: the cycle length in epochs (even, as in the paper); the snapshot is taken after step
            ``cycle * steps_per_epoch // 2`` of each cycle, counted from the start of the FGE phase.
        start: epochs of pre-training before the first cycle (the FGE phase starts there).
    """

    def __init__(self, cycle: int, start: int = 0) -> None:
        if not isinstance(cycle, int) or cycle < 2 or cycle % 2:
            raise InputError(f"the FGE cycle must be an even number of epochs >= 2, got {cycle!r}")
        if start < 0:
            raise InputError(f"start must be >= 0 epochs, got {start}")
        self.cycle = cycle
        self.start = start
        self.schedule = CollectionSchedule(start, "cycle", cycle=cycle, phase=0.5)
        self.snapshots: list[dict[str, Tensor]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        if self.start + self.cycle > trainer.epochs:
            raise InputError(
                f"FGE starting after epoch {self.start} with {self.cycle}-epoch cycles needs at least "
                f"{self.start + self.cycle} epochs, training has {trainer.epochs}"
            )

    def on_step_end(self, trainer: Trainer) -> None:
        if self.schedule.after_step(trainer.step, trainer.epoch, trainer.steps_per_epoch):
            self.snapshots.append(snapshot(trainer.model))

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = list(state["snapshots"])
