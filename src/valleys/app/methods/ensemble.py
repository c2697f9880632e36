"""Deep ensembles (Lakshminarayanan et al. 2017): independent SGD runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import setting
from .base import Method, Predictive
from .sgd import SGD

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...training.schedules import Schedule
    from ..config import TrainConfig


@dataclass
class MembersSettings:
    """How many independent runs an ensemble of runs trains."""

    members: int = setting(3, "number of runs", check="positive")


class Ensemble(Method):
    """``--members`` SGD runs with seeds ``seed, seed + 1, ...`` in ``member-<i>``; the predictive is
    ``p(y|x) = (1/M) sum_m p(y|x, w_m)``."""

    name = "ensemble"
    help = "--members independent SGD runs (seeds seed, seed+1, ...); ensemble of their predictions"
    settings = (MembersSettings,)
    member = "sgd"

    def schedule(self, cfg: TrainConfig) -> Schedule:
        return SGD().schedule(cfg)

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        from ...core.checkpoint import check_model_signature, checkpoint_field, load_checkpoint

        members = []
        for i in range(cfg.members):
            path = run_dir / f"member-{i}" / "model.safetensors"
            state, header = load_checkpoint(path)
            check_model_signature(checkpoint_field(header, "signature", path), model, f"ensemble member {i}")
            members.append(checkpoint_field(state, "model", path, "state"))
        return Predictive(lambda: members, ensemble=True)
