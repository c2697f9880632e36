"""``valleys path``: loss and error along the line through two networks (slide 15)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..options import setting
from .base import Study, StudyContext, StudyResult, bn_setting

__all__ = ["PathSettings", "PathStudy"]


@dataclass
class PathSettings:
    """The line ``w(t) = A + t (B - A)`` from ``a`` (distance 0) through ``b``, extended past both ends."""

    a: str = setting(help="run folder or checkpoint (distance 0)", positional=True, check="path")
    b: str = setting(help="run folder or checkpoint", positional=True, check="path")
    points: int = setting(41, "points on the line", check="at_least_two")
    extend: float = setting(0.5, "extend beyond both ends by this fraction", check="non_negative")
    labels: list[str] | None = setting(
        None, "names of A and B in the figure (default: their folder names)", nargs=2, metavar=("A", "B")
    )
    bn: str = bn_setting()


class PathStudy(Study):
    """Train and test loss and error along a straight line in weight space (Izmailov et al. 2018, slide 15)."""

    name = "path"
    help = "loss and error along the line through two networks (slide 15)"
    settings = PathSettings

    def run(self, settings: PathSettings, context: StudyContext) -> StudyResult:
        from ...evaluation.engine import BNPolicy
        from ...geometry.studies import path_study
        from .common import load_context, one_weight_space

        s = settings
        model, wa, cfg, loaders, bn = load_context(s.a)
        ctx_b = load_context(s.b)
        one_weight_space({s.a: (model, wa, cfg), s.b: ctx_b})
        res = path_study(
            model,
            wa,
            ctx_b[1],
            loaders,
            points=s.points,
            extend=s.extend,
            bn=BNPolicy(s.bn, bn),
            progress=context.progress,
            adapter=cfg.adapter(),
        )
        res["a_label"], res["b_label"] = s.labels or (Path(s.a).name, Path(s.b).name)
        return StudyResult("path", f"line from {s.a} to {s.b}", res)

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        from ..plots import plot_line

        return [plot_line(result.values, out / "figures" / "path.png", title=result.title)]
