"""SWA (Izmailov et al. 2018): the uniform average of one SGD iterate per epoch from ``swa_start`` on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import InputError
from ..options import setting
from .base import Method, Predictive, find_callback

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...methods.averaging import Averager
    from ...training.schedules import Schedule
    from ...training.trainer import Callback
    from ..config import TrainConfig


@dataclass
class SWASettings:
    """When SWA starts averaging and at which learning rate (shared by every method built on SWA)."""

    swa_start: int | None = setting(
        None,
        "epochs of SGD before averaging starts (default: epochs // 2; 0 with --init: average from the start)",
        check="non_negative",
        exclusive=True,
    )
    swa_lr: float | None = setting(None, "SWA learning rate (default: --lr)", check="positive", exclusive=True)


class SWA(Method):
    """Stochastic Weight Averaging (Izmailov et al. 2018): ``w_SWA = (1/n) sum_i w_i`` over the iterates at the
    ends of epochs ``swa_start + 1 .. E``, under the SWA schedule (``lr`` to ``swa_lr`` at ``swa_start``),
    BatchNorm recomputed for the average; the SGD trajectory is kept for the geometry studies."""

    name = "swa"
    help = "SGD, then from --swa-start an SWA schedule to --swa-lr and a uniform average of one iterate per epoch"
    settings: ClassVar[tuple[type, ...]] = (SWASettings,)
    saves: ClassVar[tuple[str, ...]] = ("trajectory.safetensors",)

    def resolve(self, cfg: TrainConfig) -> None:
        if cfg.swa_start is None:
            cfg.swa_start = cfg.epochs // 2
        if cfg.swa_lr is None:
            cfg.swa_lr = cfg.lr
        if not (0 if cfg.init else 1) <= cfg.swa_start < cfg.epochs:
            raise InputError(
                f"--swa-start must be at least 1 and below epochs ({cfg.epochs}) so that at least one epoch is "
                f"averaged (0 is allowed with --init: SWA from a trained network), got {cfg.swa_start}"
            )
        if not cfg.swa_lr > 0:
            raise InputError(f"swa-lr must be positive, got {cfg.swa_lr}")

    def schedule(self, cfg: TrainConfig) -> Schedule:
        from ...training.schedules import SWASchedule

        return SWASchedule(cfg.lr, swa_start=cfg.swa_start, swa_lr=cfg.swa_lr)  # type: ignore[arg-type]

    def averager(self, cfg: TrainConfig, model: nn.Module) -> Averager:
        """What collects the iterates."""
        from ...methods.averaging import SWA as SWAAverager

        return SWAAverager(model)

    def callbacks(
        self, cfg: TrainConfig, model: nn.Module, *, bn_loader: Iterable, eval_loaders: Mapping[str, Iterable]
    ) -> list[Callback]:
        from ...training.callbacks import SWACallback, TrajectoryCallback

        averager = self.averager(cfg, model)
        return [
            SWACallback(averager, cfg.swa_start, bn_loader=bn_loader, eval_loaders=eval_loaders),  # type: ignore[arg-type]
            TrajectoryCallback(averager.space, cfg.swa_start),
        ]  # type: ignore[arg-type]

    def save(self, out: Path, callbacks: list[Callback], header: dict[str, Any]) -> None:
        import torch

        from ...core.checkpoint import save_checkpoint
        from ...training.callbacks import TrajectoryCallback

        traj = find_callback(callbacks, TrajectoryCallback)
        save_checkpoint(
            out / "trajectory.safetensors",
            {"iterates": torch.stack(traj.iterates)},
            {**header, "kind": "trajectory", "epochs": traj.epochs},
        )

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        from ...methods.ensembles import snapshot

        state = snapshot(model)  # model.safetensors holds the SWA mean with recomputed BatchNorm
        return Predictive(lambda: [state])
