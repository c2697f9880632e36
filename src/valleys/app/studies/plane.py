"""``valleys plane``: loss and error on the plane through three networks, a curve's bend, or a trajectory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..options import setting
from .base import Study, StudyContext, StudyResult, bn_setting, grid_setting, margin_setting

__all__ = ["PlaneSettings", "PlaneStudy", "trajectory_plane", "pca_plane"]


@dataclass
class PlaneSettings:
    """Which plane: three networks ``points``, or ``curve``, or ``trajectory`` (with ``pca``: its principal
    plane); how finely it is sampled."""

    points: list[str] = setting(
        [], "three run folders or model checkpoints A B C", positional=True, nargs="*", check="path"
    )
    curve: str | None = setting(
        None, "a 'valleys connect' folder: the plane of its two ends and its middle control point", check="path"
    )
    trajectory: str | None = setting(
        None, "a swa/swag run: its iterates W1, W2, W3 and SWA (slides 9-13)", check="path"
    )
    pca: bool = setting(False, "with --trajectory: the plane of the iterates' top two principal directions")
    bn: str = bn_setting()
    grid: int = grid_setting()
    margin: float = margin_setting()


def trajectory_plane(
    run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute", progress: bool = False
) -> dict[str, Any]:
    """Slides 9-13: the plane through three SGD iterates W1, W2, W3 of a SWA/SWAG run (first, middle and last
    collected epochs) with the SWA solution projected onto it."""
    from ...evaluation.engine import BNPolicy
    from ...geometry.studies import plane_study
    from .common import load_context, load_trajectory

    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    if len(iterates) < 3:
        raise InputError(f"{run_dir} collected {len(iterates)} iterates; a trajectory plane needs at least 3")
    idx = [0, len(iterates) // 2, len(iterates) - 1]
    a, b, c = (iterates[i] for i in idx)
    res = plane_study(
        model,
        a,
        b,
        c,
        loaders,
        extra={"SWA": w_swa},
        n=n,
        margin=margin,
        bn=BNPolicy(bn, bn_loader),
        progress=progress,
        adapter=cfg.adapter(),
    )
    res["points"] = {
        f"W{j + 1} (epoch {epochs[i]})": res["points"][k]
        for j, (i, k) in enumerate(zip(idx, ("a", "b", "c"), strict=True))
    } | {"SWA": res["points"]["SWA"]}
    return res


def pca_plane(
    run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute", progress: bool = False
) -> dict[str, Any]:
    """The plane through the mean of a run's collected iterates spanned by their top two principal directions
    (u = PC1, v = PC2), with every iterate and SWA projected onto it."""
    from ...evaluation.engine import BNPolicy
    from ...geometry.studies import plane_study
    from ...geometry.surfaces import pca_plane as principal_plane
    from .common import load_context, load_trajectory

    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    mean, u, v, explained = principal_plane(iterates)
    extra = {f"epoch {e}": w for e, w in zip(epochs, iterates, strict=True)}
    extra["SWA"] = w_swa
    res = plane_study(
        model,
        mean,
        mean + v,
        mean + u,
        loaders,
        extra=extra,
        n=n,
        margin=margin,
        bn=BNPolicy(bn, bn_loader),
        progress=progress,
        adapter=cfg.adapter(),
    )
    res["points"] = {k: p for k, p in res["points"].items() if k not in ("a", "b", "c")}
    res["explained_variance"] = explained.tolist()
    res["units"] = "Euclidean distance in weight space along PC1 (u) and PC2 (v)"
    return res


class PlaneStudy(Study):
    """Loss and error on a 2-D plane of weight space (Garipov et al. 2018; Izmailov et al. 2018, slides 9-13),
    ``w(x, y) = A + x u + y v`` with ``u, v`` an orthonormal basis of the plane."""

    name = "plane"
    help = "loss and error on the plane through three networks (or a curve or trajectory)"
    settings = PlaneSettings

    def check(self, settings: PlaneSettings) -> None:
        s = settings
        kinds = [
            k
            for k, v in (("three networks A B C", s.points), ("--curve", s.curve), ("--trajectory", s.trajectory))
            if v
        ]
        if len(kinds) != 1 or (s.pca and not s.trajectory) or (s.points and len(s.points) != 3):
            raise InputError(
                "plane needs three networks A B C, or --curve or --trajectory (--pca goes with "
                f"--trajectory); got {' and '.join(kinds) or 'none'}"
                + (f" ({len(s.points)} networks)" if s.points and len(s.points) != 3 else "")
            )

    def run(self, settings: PlaneSettings, context: StudyContext) -> StudyResult:
        s, progress = settings, context.progress
        if s.trajectory and s.pca:
            res = pca_plane(s.trajectory, n=s.grid, margin=s.margin, bn=s.bn, progress=progress)
            return StudyResult("plane", f"PCA plane of the trajectory of {s.trajectory}", res)
        if s.trajectory:
            res = trajectory_plane(s.trajectory, n=s.grid, margin=s.margin, bn=s.bn, progress=progress)
            return StudyResult("plane", f"trajectory plane of {s.trajectory}", res)
        from ...core.weights import WeightSpace
        from ...evaluation.engine import BNPolicy
        from ...geometry.studies import plane_study
        from .common import load_context, one_weight_space

        if s.curve:
            from ..connect import load_curve, read_curve_config

            model, _, cfg, loaders, bn = load_context(read_curve_config(s.curve).run_a)
            curve = load_curve(Path(s.curve), WeightSpace(model))
            pts = curve.control_points().detach()
            if len(pts) < 3:
                raise InputError("the curve has 2 control points (a straight segment): it spans no plane")
            extra = {f"t={t}": curve.point(t).detach() for t in (0.25, 0.5, 0.75)}
            res = plane_study(
                model,
                pts[0],
                pts[len(pts) // 2],
                pts[-1],
                loaders,
                extra=extra,
                n=s.grid,
                margin=s.margin,
                bn=BNPolicy(s.bn, bn),
                progress=progress,
                adapter=cfg.adapter(),
            )
            res["points"] = {
                "A": res["points"]["a"],
                "bend": res["points"]["b"],
                "B": res["points"]["c"],
                **{k: v for k, v in res["points"].items() if k.startswith("t=")},
            }
            return StudyResult("plane", f"plane of the curve {s.curve}", res)
        ctx = [load_context(p) for p in s.points]
        one_weight_space(dict(zip(s.points, ctx, strict=True)))
        model, _, cfg, loaders, bn = ctx[0]
        res = plane_study(
            model,
            ctx[0][1],
            ctx[1][1],
            ctx[2][1],
            loaders,
            n=s.grid,
            margin=s.margin,
            bn=BNPolicy(s.bn, bn),
            progress=progress,
            adapter=cfg.adapter(),
        )
        return StudyResult("plane", "plane through " + ", ".join(s.points), res)

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        from .common import plane_contours

        return plane_contours(result.values, out, result.title)
