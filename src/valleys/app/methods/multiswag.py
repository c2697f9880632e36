"""MultiSWAG (Wilson & Izmailov 2020): an ensemble of SWAG posteriors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Method, Predictive
from .ensemble import MembersSettings
from .swag import SWAG, swag_predictive

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...training.schedules import Schedule
    from ..config import TrainConfig


class MultiSWAG(Method):
    """``--members`` SWAG runs (Maddox et al. 2019) in ``member-<i>``; the predictive averages ``S`` draws from
    each: ``p(y|x) = (1/(M S)) sum_m sum_s p(y|x, w_ms)``, ``w_ms ~ SWAG_m`` (Wilson & Izmailov 2020)."""

    name = "multiswag"
    help = "--members independent SWAG runs; BMA over --samples draws from each"
    settings = SWAG.settings + (MembersSettings,)
    member = "swag"

    def resolve(self, cfg: TrainConfig) -> None:
        SWAG().resolve(cfg)

    def schedule(self, cfg: TrainConfig) -> Schedule:
        return SWAG().schedule(cfg)

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        dirs = [run_dir / f"member-{i}" for i in range(cfg.members)]
        return swag_predictive(dirs, cfg, model, samples, diagonal=SWAG.diagonal, scale=SWAG.scale)
