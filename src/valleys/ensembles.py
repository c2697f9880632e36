"""Ensembles of networks: FGE snapshots (and the snapshot helper deep ensembles use).

FGE (Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs", NeurIPS): start from a network trained for most of the budget (with its optimizer
state), follow the triangular cyclic schedule :class:`valleys.schedules.TriangularCyclic` with a short even
cycle (2 to 4 epochs) and take a snapshot at the middle of every cycle, where the LR is at its minimum
``lr_2``. The ensemble averages the snapshots' predicted probabilities (:func:`valleys.predict.bma`); each
snapshot keeps its own BatchNorm statistics, so none are recomputed. FGE averages predictions; SWA averages
weights: the two stay separate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .training import Callback, Trainer

__all__ = ["FGECallback", "snapshot"]


def snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's full state (parameters and buffers) on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class FGECallback(Callback):
    """Snapshot the model at the LR minimum (mid-cycle) of every cycle of ``cycle`` epochs.

    Args:
        cycle: the cycle length in epochs (even, as in the paper); the snapshot is taken after step
            ``cycle * steps_per_epoch // 2`` of each cycle, counted from the start of the FGE phase.
        start: epochs of pre-training before the first cycle (the FGE phase starts there).
    """

    def __init__(self, cycle: int, start: int = 0) -> None:
        if not isinstance(cycle, int) or cycle < 2 or cycle % 2:
            raise ValueError(f"the FGE cycle must be an even number of epochs >= 2, got {cycle!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0 epochs, got {start}")
        self.cycle = cycle
        self.start = start
        self.snapshots: list[dict[str, Tensor]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        if self.start + self.cycle > trainer.epochs:
            raise ValueError(
                f"FGE starting after epoch {self.start} with {self.cycle}-epoch cycles needs at least "
                f"{self.start + self.cycle} epochs, training has {trainer.epochs}"
            )

    def on_step_end(self, trainer: Trainer) -> None:
        length = self.cycle * trainer.steps_per_epoch
        step = trainer.step - self.start * trainer.steps_per_epoch
        if step > 0 and step % length == length // 2:
            self.snapshots.append(snapshot(trainer.model))

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = list(state["snapshots"])
