"""Deep ensembles (Lakshminarayanan et al. 2017): independent SGD runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...core.checkpoint import check_model_signature, load_checkpoint
from ...training.schedules import Schedule
from .base import Method, Predictive
from .sgd import SGD

if TYPE_CHECKING:  # pragma: no cover
    from ..runs import TrainConfig


class Ensemble(Method):
    """``--members`` SGD runs with seeds ``seed, seed + 1, ...`` in ``member-<i>``; the predictive is
    ``p(y|x) = (1/M) sum_m p(y|x, w_m)``."""

    name = "ensemble"
    help = "--members independent SGD runs (seeds seed, seed+1, ...); ensemble of their predictions"
    uses = ("members",)
    member = "sgd"

    def schedule(self, cfg: TrainConfig) -> Schedule:
        return SGD().schedule(cfg)

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        members = []
        for i in range(cfg.members):
            state, header = load_checkpoint(run_dir / f"member-{i}" / "model.safetensors")
            check_model_signature(header.get("signature"), model, f"ensemble member {i}")
            members.append(state["model"])
        return Predictive(lambda: members, ensemble=True)
