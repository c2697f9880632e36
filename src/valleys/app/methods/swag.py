"""SWAG (Maddox et al. 2019): a Gaussian over the SWA iterates, low-rank plus diagonal."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import InputError
from ..options import setting
from .base import Predictive, find_callback
from .swa import SWA, SWASettings

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...evaluation.predict import Sample
    from ...methods.averaging import Averager
    from ...training.trainer import Callback
    from ..config import TrainConfig


@dataclass
class SamplingSettings:
    """How a Gaussian posterior over the weights is averaged at test time (SWAG, SWAG-diagonal, MultiSWAG)."""

    samples: int = setting(30, "test-time draws S (per member)", check="positive")
    bn_batches: int | None = setting(None, "BN recompute per sample on N batches (default: all)", check="positive")


@dataclass
class RankSettings:
    """The low-rank part of SWAG."""

    rank: int = setting(20, "number of deviation vectors K", check="positive")


def swag_predictive(
    dirs: Sequence[Path], cfg: TrainConfig, model: nn.Module, samples: int, *, diagonal: bool, scale: float
) -> Predictive:
    """``samples`` draws ``w ~ N(w_SWA, scale (Sigma_diag [+ D^T D / (K - 1)]))`` from the SWAG posterior in each
    of ``dirs`` (``posterior.safetensors``), seeded with the run's seed, a BatchNorm recompute each."""
    import torch

    from ...core.checkpoint import CheckpointError, checkpoint_field, load_checkpoint
    from ...methods.swag import SWAG as SWAGPosterior

    swags = []
    for d in dirs:
        state, header = load_checkpoint(d / "posterior.safetensors")
        if header.get("kind") != "swag":
            raise CheckpointError(f"{d / 'posterior.safetensors'} holds no SWAG posterior")
        post = checkpoint_field(state, "swag", d / "posterior.safetensors", "state")
        swag = SWAGPosterior(
            model, rank=int(checkpoint_field(post, "rank", d / "posterior.safetensors", "state")), device="cpu"
        )
        swag.load_state_dict(state["swag"])
        swags.append(swag)

    def draw() -> Iterable[Sample]:
        gen = torch.Generator().manual_seed(cfg.seed)  # the same S draws for every split
        return itertools.chain.from_iterable(
            s.samples(samples, scale=scale, diagonal=diagonal, generator=gen) for s in swags
        )

    return Predictive(draw, needs_bn=True)


class SWAG(SWA):
    """SWAG (Maddox et al. 2019): the SWA iterates' mean ``w_SWA``, diagonal ``Sigma_diag = mean(w^2) - w_SWA^2``
    and the last ``K`` deviations ``D`` (rows ``w_i - w_SWA``); the predictive averages ``S`` draws from
    ``N(w_SWA, s (Sigma_diag + D^T D / (K - 1)))``, i.e. ``w = w_SWA + sqrt(s) (Sigma_diag^(1/2) z_1 +
    D^T z_2 / sqrt(K - 1))``, with scale ``s = 0.5`` and a BatchNorm recompute per draw."""

    name = "swag"
    help = "as swa, plus a low-rank-plus-diagonal Gaussian (--rank); BMA over --samples draws, scale 0.5"
    views: ClassVar[tuple[str, ...]] = ("swa", "swag-diag")
    settings: ClassVar[tuple[type, ...]] = (SWASettings, RankSettings, SamplingSettings)
    saves = ("trajectory.safetensors", "posterior.safetensors")
    diagonal = False
    scale = 0.5
    min_collected = 2  # the low-rank part needs two deviations

    def resolve(self, cfg: TrainConfig) -> None:
        super().resolve(cfg)
        if not self.diagonal and cfg.rank < 2:  # the low-rank part averages D^T D / (K - 1) over K >= 2 deviations
            raise InputError(
                f"--rank must be at least 2 for low-rank SWAG (its covariance needs two deviation "
                f"vectors), got {cfg.rank}; use --method swag-diag for the diagonal Gaussian alone"
            )
        if cfg.epochs - cfg.swa_start < self.min_collected:  # type: ignore[operator]
            raise InputError(
                f"{self.name} needs at least {self.min_collected} collected epochs; --epochs - --swa-start is "
                f"{cfg.epochs} - {cfg.swa_start} = {cfg.epochs - cfg.swa_start}: lower --swa-start"
                + (" or use --method swag-diag" if not self.diagonal else "")  # type: ignore[operator]
            )

    def averager(self, cfg: TrainConfig, model: nn.Module) -> Averager:
        from ...methods.swag import SWAG as SWAGPosterior

        return SWAGPosterior(model, rank=cfg.rank)

    def save(self, out: Path, callbacks: list[Callback], header: dict[str, Any]) -> None:
        from ...core.checkpoint import save_checkpoint
        from ...training.callbacks import SWACallback

        super().save(out, callbacks, header)
        save_checkpoint(
            out / "posterior.safetensors",
            {"swag": find_callback(callbacks, SWACallback).averager.state_dict()},
            {**header, "kind": "swag"},
        )

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        return swag_predictive([run_dir], cfg, model, samples, diagonal=self.diagonal, scale=self.scale)
