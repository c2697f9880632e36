"""``valleys rays``: train loss along random rays from networks, and the width of their valleys (slide 14)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..options import setting
from .base import Study, StudyContext, StudyResult, bn_setting, seed_setting

__all__ = ["RaysSettings", "RaysStudy"]


@dataclass
class RaysSettings:
    """The same random unit directions ``d`` from every network ``w``: ``w + t d``, ``0 <= t <= max_distance``."""

    runs: list[str] = setting(
        help="run folders or checkpoints (the same rays from each)", positional=True, nargs="+", check="path"
    )
    rays: int = setting(10, "number of random unit directions", check="positive")
    max_distance: float = setting(50.0, "distance along each ray (weight units)", check="positive")
    steps: int = setting(21, "points per ray", check="at_least_two")
    rise: float = setting(0.1, "valley width: distance where the loss rises this much", check="positive")
    seed: int = seed_setting()
    labels: list[str] | None = setting(
        None, "names of the networks in the figure, one per run (default: the paths)", nargs="+"
    )
    bn: str = bn_setting()


class RaysStudy(Study):
    """Valley width (Izmailov et al. 2018, slide 14): along each random ray, the distance at which the train loss
    first rises by ``rise`` above its value at the network."""

    name = "rays"
    help = "train loss along random rays from a network: valley width (slide 14)"
    settings = RaysSettings

    def check(self, settings: RaysSettings) -> None:
        from ...errors import InputError

        if settings.labels is not None and len(settings.labels) != len(settings.runs):
            raise InputError(f"--labels names {len(settings.labels)} networks for {len(settings.runs)} runs")

    def run(self, settings: RaysSettings, context: StudyContext) -> StudyResult:
        from ...evaluation.engine import BNPolicy
        from ...geometry.studies import rays_study
        from .common import load_context, one_weight_space

        s = settings
        ctx = {p: load_context(p) for p in s.runs}
        one_weight_space(ctx)
        model, _, cfg, loaders, bn = next(iter(ctx.values()))
        names = s.labels or s.runs
        res = rays_study(
            model,
            {name: c[1] for name, c in zip(names, ctx.values(), strict=True)},
            loaders["train"],
            rays=s.rays,
            max_distance=s.max_distance,
            steps=s.steps,
            rise=s.rise,
            seed=s.seed,
            bn=BNPolicy(s.bn, bn),
            progress=context.progress,
            adapter=cfg.adapter(),
        )
        return StudyResult("rays", "random rays from " + ", ".join(s.runs), res)

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        from ..plots import plot_rays

        return [plot_rays(result.values, out / "figures" / "rays.png", title=result.title)]

    def report_lines(self, result: StudyResult) -> list[str]:
        lines = ["| center | mean valley width |", "|---|---|"]
        return lines + [f"| {k} | {v['mean_width']:.3f} |" for k, v in result["centers"].items()]
