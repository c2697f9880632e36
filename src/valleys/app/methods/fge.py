"""FGE (Garipov et al. 2018): snapshots at the LR minima of a cyclical schedule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ..options import setting
from .base import Method, Predictive, find_callback

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...training.schedules import Schedule
    from ...training.trainer import Callback
    from ..config import TrainConfig


@dataclass
class FGESettings:
    """FGE's cycles: their length, highest and lowest learning rates, and when they start."""

    cycle: int = setting(2, "cycle length in epochs (even)", check="positive")
    lr_1: float | None = setting(
        None, "cycle's highest LR (default: lr / 2)", check="positive", metavar="LR", exclusive=True
    )
    lr_2: float | None = setting(
        None, "cycle's lowest LR (default: lr / 200)", check="positive", metavar="LR", exclusive=True
    )
    fge_start: int | None = setting(
        None,
        "pre-training epochs (default: the first 80%%, whole cycles; 0 with --init: cycle from the start)",
        check="non_negative",
        exclusive=True,
    )


class FGE(Method):
    """Fast Geometric Ensembling (Garipov et al. 2018): the SWA schedule's shape to ``lr_1`` by ``fge_start``,
    then cycles of ``c`` epochs with ``lr(t) = lr_1 + (lr_2 - lr_1) (2t if t <= 1/2 else 2(1 - t))`` (``t``: the
    position in the cycle) and a snapshot at every cycle's middle; the predictive is their ensemble."""

    name = "fge"
    help = (
        "SGD to --fge-start, then cycles of --cycle epochs between --lr-1 and --lr-2; ensemble of mid-cycle snapshots"
    )
    settings = (FGESettings,)
    saves = ("posterior.safetensors",)

    def resolve(self, cfg: TrainConfig) -> None:
        if cfg.cycle < 2 or cfg.cycle % 2:
            raise InputError(f"--cycle must be an even number of epochs >= 2 for FGE, got {cfg.cycle}")
        cfg.lr_1 = cfg.lr / 2 if cfg.lr_1 is None else cfg.lr_1
        cfg.lr_2 = cfg.lr / 200 if cfg.lr_2 is None else cfg.lr_2
        if not (cfg.lr_1 > 0 and cfg.lr_2 > 0):
            raise InputError(f"--lr-1 and --lr-2 must be positive, got {cfg.lr_1} and {cfg.lr_2}")
        if cfg.fge_start is None:
            cycles = max(1, round(0.2 * cfg.epochs / cfg.cycle))
            cfg.fge_start = cfg.epochs - cycles * cfg.cycle
        if cfg.epochs - cfg.cycle < 1:
            raise InputError(
                f"FGE needs a pre-trained start and at least one --cycle of {cfg.cycle} epochs: "
                f"--epochs must be at least {cfg.cycle + 1}, got {cfg.epochs}"
            )
        if not (0 if cfg.init else 1) <= cfg.fge_start <= cfg.epochs - cfg.cycle:
            raise InputError(
                f"FGE needs a pre-trained start and at least one {cfg.cycle}-epoch cycle: --fge-start must be in "
                f"[{0 if cfg.init else 1}, {cfg.epochs - cfg.cycle}] for {cfg.epochs} epochs, got {cfg.fge_start}"
            )

    def schedule(self, cfg: TrainConfig) -> Schedule:
        from ...training.schedules import Piecewise, SWASchedule, TriangularCyclic

        start = cfg.fge_start
        return Piecewise(
            SWASchedule(cfg.lr, swa_start=start, swa_lr=cfg.lr_1),
            start,  # type: ignore[arg-type]
            TriangularCyclic(cfg.lr_1, cfg.lr_2, cfg.cycle, offset=start),
        )  # type: ignore[arg-type]

    def callbacks(
        self, cfg: TrainConfig, model: nn.Module, *, bn_loader: Iterable, eval_loaders: Mapping[str, Iterable]
    ) -> list[Callback]:
        from ...training.callbacks import FGECallback

        return [FGECallback(cfg.cycle, start=cfg.fge_start)]  # type: ignore[arg-type]

    def save(self, out: Path, callbacks: list[Callback], header: dict[str, Any]) -> None:
        from ...core.checkpoint import save_checkpoint
        from ...training.callbacks import FGECallback

        save_checkpoint(
            out / "posterior.safetensors",
            {"snapshots": find_callback(callbacks, FGECallback).snapshots},
            {**header, "kind": "fge"},
        )

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        from ...core.checkpoint import checkpoint_field, load_checkpoint

        state, _ = load_checkpoint(run_dir / "posterior.safetensors")
        snaps = checkpoint_field(state, "snapshots", run_dir / "posterior.safetensors", "state")
        return Predictive(lambda: snaps, ensemble=True)
