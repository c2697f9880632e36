"""``valleys landscape``: the loss on a random 2-D plane around a network (Li et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..options import setting
from .base import Study, StudyContext, StudyResult, bn_setting, grid_setting, margin_setting, seed_setting

__all__ = ["LandscapeSettings", "LandscapeStudy"]


@dataclass
class LandscapeSettings:
    """``w + x d_1 + y d_2`` for random directions ``d_1, d_2``, ``x, y`` in ``[-span, span]``."""

    run: str = setting(help="run folder or checkpoint", positional=True, check="path")
    random: bool = setting(True, "random directions (the only kind for now)", required=True)
    filter_norm: bool = setting(
        True, "filter-normalised directions (the default)", negation="unit-norm directions instead"
    )
    span: float = setting(1.0, "coordinates in [-span, span]", check="positive")
    seed: int = seed_setting()
    bn: str = bn_setting()
    grid: int = grid_setting()
    margin: float = margin_setting()


class LandscapeStudy(Study):
    """Loss-landscape visualisation (Li et al. 2018): the loss on the plane of two random directions through a
    network, each direction filter-normalised (scaled per filter to the norm of the network's filter)."""

    name = "landscape"
    help = "loss on a random 2-D plane around a network (Li et al. 2018)"
    settings = LandscapeSettings

    def check(self, settings: LandscapeSettings) -> None:
        if not settings.random:
            raise InputError("landscape needs random directions (random=True): the only kind for now")

    def run(self, settings: LandscapeSettings, context: StudyContext) -> StudyResult:
        from ...evaluation.engine import BNPolicy
        from ...geometry.studies import random_plane_study
        from .common import load_context

        s = settings
        model, w, cfg, loaders, bn = load_context(s.run)
        res = random_plane_study(
            model,
            w,
            loaders,
            n=s.grid,
            span=s.span,
            filter_norm=s.filter_norm,
            seed=s.seed,
            bn=BNPolicy(s.bn, bn),
            progress=context.progress,
            adapter=cfg.adapter(),
        )
        return StudyResult("random-plane", f"random plane around {s.run}", res)

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        from .common import plane_contours

        return plane_contours(result.values, out, result.title)
