"""SGD: the baseline, one network."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Method, Predictive

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...training.schedules import Schedule
    from ..config import TrainConfig


class SGD(Method):
    """SGD with momentum, the SWA schedule's shape over all epochs (Izmailov et al. 2018's SGD baseline):
    ``lr(e) = lr`` for ``e/E <= 0.5``, linear to ``0.01 lr`` at ``e/E = 0.9``, then ``0.01 lr``."""

    name = "sgd"
    help = "SGD with momentum; LR decays with the SWA schedule's shape to 0.01 lr over all epochs"

    def schedule(self, cfg: TrainConfig) -> Schedule:
        from ...training.schedules import SWASchedule

        return SWASchedule(cfg.lr, swa_start=cfg.epochs, swa_lr=0.01 * cfg.lr)

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        from ...methods.ensembles import snapshot

        state = snapshot(model)
        return Predictive(lambda: [state])
