"""The talk's loss-surface instruments on trained runs: planes, the path between two solutions, random rays,
random filter-normalised planes and flatness. Each function returns arrays plus metadata (units stated);
:func:`write_study` writes them as ``results.json``, a figure and ``report.md`` into a folder.

Distances and plane coordinates are Euclidean in weight space (weight units) except for filter-normalised
random planes, whose coordinates are multiples of the filter-normalised directions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import write_json
from .grid import evaluate_points
from .hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos
from .surfaces import Plane, grid_axes, line, random_direction, valley_width
from .weights import WeightSpace  # noqa: F401  (used by the CLI too)

__all__ = ["plane_study", "path_study", "rays_study", "random_plane_study", "sharpness_study", "write_study"]


def plane_study(model: nn.Module, a: Tensor, b: Tensor, c: Tensor, loaders: Mapping[str, Iterable], *,
                extra: Mapping[str, Tensor] | None = None, n: int = 21, margin: float = 0.2, bn: str = "recompute",
                bn_loader: Iterable | None = None, progress: bool = False) -> dict[str, Any]:
    """Loss and error on the ``n x n`` grid of the plane through ``a, b, c`` (coordinates of a, b, c and of
    ``extra`` points, e.g. SWA, projected; grid with ``margin`` around all of them)."""
    plane = Plane(a, b, c)
    marks = {"a": plane.project(a), "b": plane.project(b), "c": plane.project(c)}
    for name, p in (extra or {}).items():
        marks[name] = plane.project(p)
    xs, ys = grid_axes(list(marks.values()), n=n, margin=margin)
    pts = [plane.point(x, y) for y in ys for x in xs]
    res = evaluate_points(model, pts, loaders, bn=bn, bn_loader=bn_loader, progress=progress, desc="plane")
    grids = {name: {k: torch.tensor(res[name][k]).view(len(ys), len(xs)).tolist() for k in ("loss", "error")}
             for name in loaders}
    residuals = {name: plane.residual(p) for name, p in (extra or {}).items()}
    return {"kind": "plane", "xs": xs, "ys": ys, "grids": grids, "points": marks, "off_plane_distance": residuals,
            "units": "Euclidean distance in weight space", "bn": res["bn"], "nonfinite": res["nonfinite"]}


def path_study(model: nn.Module, a: Tensor, b: Tensor, loaders: Mapping[str, Iterable], *, points: int = 41,
               extend: float = 0.5, bn: str = "recompute", bn_loader: Iterable | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Loss and error on the line through ``a`` and ``b`` against signed distance from ``a`` (slide 15),
    from ``-extend * d`` to ``(1 + extend) * d`` with ``d = ||b - a||``."""
    f = line(a, b)
    d = f.length
    dist = torch.linspace(-extend * d, (1 + extend) * d, points).tolist()
    res = evaluate_points(model, [f(s) for s in dist], loaders, bn=bn, bn_loader=bn_loader, progress=progress,
                          desc="line")
    return {"kind": "path", "distance": dist, "length": d, "curves": {n: res[n] for n in loaders},
            "units": "Euclidean distance in weight space from a", "bn": res["bn"], "nonfinite": res["nonfinite"]}


def rays_study(model: nn.Module, centers: Mapping[str, Tensor], loader: Iterable, *, rays: int = 10,
               max_distance: float = 50.0, steps: int = 21, rise: float = 0.1, seed: int = 0, bn: str = "recompute",
               bn_loader: Iterable | None = None, progress: bool = False) -> dict[str, Any]:
    """Train loss along ``rays`` random unit directions (the same for every center) from each center
    (slide 14); valley width = distance where the loss first rises by ``rise`` over the center's."""
    space = WeightSpace(model)
    gen = torch.Generator().manual_seed(seed)
    if rays < 1 or steps < 2:
        raise ValueError(f"rays needs at least 1 ray and 2 steps per ray, got {rays} and {steps}")
    dirs = [random_direction(space, next(iter(centers.values())), filter_norm=False, generator=gen)
            for _ in range(rays)]
    dist = torch.linspace(0, max_distance, steps).tolist()
    out: dict[str, Any] = {"kind": "rays", "distance": dist, "rise": rise, "rays": rays,
                           "units": "Euclidean distance in weight space (unit-norm Gaussian directions)", "centers": {}}
    for name, w in centers.items():
        pts = [w + s * dvec.to(w) for dvec in dirs for s in dist]
        res = evaluate_points(model, pts, {"train": loader}, bn=bn, bn_loader=bn_loader, progress=progress,
                              desc=f"rays {name}")
        losses = torch.tensor(res["train"]["loss"]).view(rays, steps)
        widths = [valley_width(dist, row.tolist(), rise) for row in losses]
        finite = [x for x in widths if x != float("inf")]
        out["centers"][name] = {"loss": losses.tolist(), "width": widths,
                                "mean_width": sum(finite) / len(finite) if len(finite) == len(widths) else float("inf"),
                                "bn": res["bn"]}
    return out


def random_plane_study(model: nn.Module, w: Tensor, loaders: Mapping[str, Iterable], *, n: int = 21,
                       span: float = 1.0, filter_norm: bool = True, seed: int = 0, bn: str = "recompute",
                       bn_loader: Iterable | None = None, progress: bool = False) -> dict[str, Any]:
    """Loss and error on ``w + x d1 + y d2`` for x, y in ``[-span, span]`` with two random directions,
    filter-normalised by default (Li et al. 2018)."""
    if n < 2:
        raise ValueError(f"a grid needs at least 2 points per axis, got {n}")
    space = WeightSpace(model)
    gen = torch.Generator().manual_seed(seed)
    d1 = random_direction(space, w, filter_norm=filter_norm, generator=gen)
    d2 = random_direction(space, w, filter_norm=filter_norm, generator=gen)
    xs = torch.linspace(-span, span, n).tolist()
    pts = [w + x * d1 + y * d2 for y in xs for x in xs]
    res = evaluate_points(model, pts, loaders, bn=bn, bn_loader=bn_loader, progress=progress, desc="landscape")
    grids = {name: {k: torch.tensor(res[name][k]).view(n, n).tolist() for k in ("loss", "error")} for name in loaders}
    units = ("multiples of filter-normalised directions (each filter scaled to its weights' norm; 1-D parameters "
             "fixed)" if filter_norm else "Euclidean distance (unit-norm directions)")
    return {"kind": "random-plane", "xs": xs, "ys": xs, "grids": grids, "points": {"w": (0.0, 0.0)},
            "units": units, "bn": res["bn"], "nonfinite": res["nonfinite"]}


def sharpness_study(model: nn.Module, batches: Sequence, *, k: int = 3, iterations: int = 30, trace_samples: int = 30,
                    epsilon: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Top-``k`` Hessian eigenvalues (Lanczos), trace (Hutchinson) and epsilon-sharpness of the training loss
    on ``batches`` with the model in eval mode (BatchNorm running statistics, Dropout off)."""
    loss = LossFunction(model, batches, mode="eval")
    w = loss.space.read(model)
    gen = torch.Generator().manual_seed(seed)
    top = lanczos(loss, w, k=min(k, w.numel()), iterations=min(iterations, w.numel()), generator=gen)
    tr = hutchinson_trace(loss, w, samples=trace_samples, generator=gen)
    sh = epsilon_sharpness(loss, w, epsilon)
    return {"kind": "sharpness", "top_eigenvalues": top["eigenvalues"].tolist(), "num_hvp": top["num_hvp"],
            "trace": tr, "epsilon_sharpness": sh, "loss": loss.value(w), "mode": "eval (BN running statistics)",
            "examples": int(sum(loss.weights))}


def write_study(out: str | Path, result: dict[str, Any], *, title: str, metric: str = "loss") -> Path:
    """Write ``results.json``, the matching figure and a short ``report.md`` for a study into ``out``."""
    from .plots import plot_contours, plot_line, plot_rays

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    kind = result["kind"]
    figs = []
    if kind in ("plane", "random-plane"):
        for loader, grid in result["grids"].items():
            for m in ("error", "loss"):
                figs.append(plot_contours(result["xs"], result["ys"], grid[m], result["points"],
                                          out / "figures" / f"{loader}_{m}.png",
                                          title=f"{title}: {loader} {'error (%)' if m == 'error' else 'loss'}",
                                          percent=m == "error", units=result["units"]))
    elif kind == "path":
        figs.append(plot_line(result, out / "figures" / "path.png", title=title))
    elif kind == "rays":
        figs.append(plot_rays(result, out / "figures" / "rays.png", title=title))
    lines = [f"# {title}", "", f"Units: {result.get('units', 'n/a')}. BatchNorm: {result.get('bn', 'n/a')}.", ""]
    if kind == "rays":
        lines += ["| center | mean valley width |", "|---|---|"]
        lines += [f"| {k} | {v['mean_width']:.3f} |" for k, v in result["centers"].items()]
    if kind == "sharpness":
        lines += [f"- top Hessian eigenvalues: {[round(x, 4) for x in result['top_eigenvalues']]} "
                  f"({result['num_hvp']} Hessian-vector products)",
                  f"- trace (Hutchinson): {result['trace']['trace']:.4f} ± {result['trace']['stderr']:.4f}",
                  f"- epsilon-sharpness (eps {result['epsilon_sharpness']['epsilon']}): "
                  f"{result['epsilon_sharpness']['sharpness']:.4f}", f"- mode: {result['mode']}"]
    lines += [""] + [f"![{f.stem}]({f.relative_to(out)})" for f in figs] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out


# ---------------------------------------------------------------------- from run folders (the CLI's entry)
def load_context(path: str | Path):
    """``(model, weights, cfg, loaders, bn_loader)`` for a run folder or model checkpoint: ``loaders`` has
    ``train`` (the training split, unshuffled) and ``test``; ``bn_loader`` is the training split."""
    from .connect import load_endpoint
    from .data import make_loader
    from .runs import _load_splits

    model, cfg = load_endpoint(path)
    splits = _load_splits(cfg)
    train = make_loader(splits.train, 1000)
    return model, WeightSpace(model).read(model), cfg, {"train": train, "test": make_loader(splits.test, 1000)}, train


def load_trajectory(run_dir: str | Path) -> tuple[Tensor, list[int]]:
    """The iterates a SWA/SWAG run collected (``trajectory.safetensors``) and their epochs."""
    from .checkpoint import load_checkpoint

    if not (Path(run_dir) / "trajectory.safetensors").is_file():
        raise ValueError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    state, header = load_checkpoint(Path(run_dir) / "trajectory.safetensors")
    if header.get("kind") != "trajectory":
        raise ValueError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    return state["iterates"], list(header["epochs"])


def trajectory_plane_study(run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute",
                           progress: bool = False) -> dict[str, Any]:
    """Slides 9-13: the plane through three SGD iterates W1, W2, W3 of a SWA/SWAG run (first, middle and last
    collected epochs) with the SWA solution projected onto it."""
    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    if len(iterates) < 3:
        raise ValueError(f"{run_dir} collected {len(iterates)} iterates; a trajectory plane needs at least 3")
    idx = [0, len(iterates) // 2, len(iterates) - 1]
    a, b, c = (iterates[i] for i in idx)
    res = plane_study(model, a, b, c, loaders, extra={"SWA": w_swa}, n=n, margin=margin, bn=bn,
                      bn_loader=bn_loader, progress=progress)
    res["points"] = {f"W{j + 1} (epoch {epochs[i]})": res["points"][k]
                     for j, (i, k) in enumerate(zip(idx, ("a", "b", "c")))} | {"SWA": res["points"]["SWA"]}
    return res


def pca_plane_study(run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute",
                    progress: bool = False) -> dict[str, Any]:
    """The plane through the mean of a run's collected iterates spanned by their top two principal directions
    (u = PC1, v = PC2), with every iterate and SWA projected onto it."""
    from .surfaces import pca_plane

    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    mean, u, v, explained = pca_plane(iterates)
    extra = {f"epoch {e}": w for e, w in zip(epochs, iterates)}
    extra["SWA"] = w_swa
    res = plane_study(model, mean, mean + v, mean + u, loaders, extra=extra, n=n, margin=margin, bn=bn,
                      bn_loader=bn_loader, progress=progress)
    res["points"] = {k: p for k, p in res["points"].items() if k not in ("a", "b", "c")}
    res["explained_variance"] = explained.tolist()
    res["units"] = "Euclidean distance in weight space along PC1 (u) and PC2 (v)"
    return res
