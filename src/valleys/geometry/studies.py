"""The talk's loss-surface instruments on trained runs: planes, the path between two solutions, random rays,
random filter-normalised planes and flatness. Each function returns arrays plus metadata (units stated);
the registered studies of :mod:`valleys.app.studies` run them on run folders and write ``results.json``, figures and
``report.md``.

Distances and plane coordinates are Euclidean in weight space (weight units) except for filter-normalised
random planes, whose coordinates are multiples of the filter-normalised directions. Every study takes an
``adapter`` (:class:`valleys.core.adapter.ModelAdapter`: batch format, prediction, loss; a Gaussian regression
head is scored by its negative log-likelihood) and reports the loss it computes; the error is the
classification error (NaN for regression).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.optional import progress_bar
from ..core.weights import WeightSpace
from ..errors import InputError
from ..evaluation.engine import BNArg, Progress
from ..evaluation.folding import AffinePoints
from ..evaluation.grid import evaluate_points
from .hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos
from .surfaces import Plane, grid_axes, line, random_direction, valley_width

__all__ = ["plane_study", "path_study", "rays_study", "random_plane_study", "sharpness_study"]


def plane_study(
    model: nn.Module,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    loaders: Mapping[str, Iterable],
    *,
    extra: Mapping[str, Tensor] | None = None,
    n: int = 21,
    margin: float = 0.2,
    bn: BNArg = None,
    progress: bool = False,
    adapter: ModelAdapter | None = None,
) -> dict[str, Any]:
    """Loss and error on the ``n x n`` grid of the plane through ``a, b, c`` (coordinates of a, b, c and of
    ``extra`` points, e.g. SWA, projected; grid with ``margin`` around all of them)."""
    plane = Plane(a, b, c)
    marks = {"a": plane.project(a), "b": plane.project(b), "c": plane.project(c)}
    for name, p in (extra or {}).items():
        marks[name] = plane.project(p)
    xs, ys = grid_axes(list(marks.values()), n=n, margin=margin)
    pts = plane.grid(xs, ys)
    res = evaluate_points(model, pts, loaders, bn=bn, progress=progress and Progress("plane"), adapter=adapter)
    grids = {
        name: {k: torch.tensor(res.per_loader[name][k]).view(len(ys), len(xs)).tolist() for k in ("loss", "error")}
        for name in loaders
    }
    residuals = {name: plane.residual(p) for name, p in (extra or {}).items()}
    return {
        "kind": "plane",
        "xs": xs,
        "ys": ys,
        "grids": grids,
        "points": marks,
        "off_plane_distance": residuals,
        "units": "Euclidean distance in weight space",
        "bn": res.bn,
        "nonfinite": res.nonfinite,
    }


def path_study(
    model: nn.Module,
    a: Tensor,
    b: Tensor,
    loaders: Mapping[str, Iterable],
    *,
    points: int = 41,
    extend: float = 0.5,
    bn: BNArg = None,
    progress: bool = False,
    adapter: ModelAdapter | None = None,
) -> dict[str, Any]:
    """Loss and error on the line through ``a`` and ``b`` against signed distance from ``a`` (slide 15),
    from ``-extend * d`` to ``(1 + extend) * d`` with ``d = ||b - a||``."""
    f = line(a, b)
    d = f.length
    dist = torch.linspace(-extend * d, (1 + extend) * d, points).tolist()
    res = evaluate_points(
        model,
        f.points(dist),
        loaders,
        bn=bn,
        progress=progress and Progress("line"),
        adapter=adapter,
    )
    return {
        "kind": "path",
        "distance": dist,
        "length": d,
        "curves": {n: res.per_loader[n] for n in loaders},
        "units": "Euclidean distance in weight space from a",
        "bn": res.bn,
        "nonfinite": res.nonfinite,
    }


def rays_study(
    model: nn.Module,
    centers: Mapping[str, Tensor],
    loader: Iterable,
    *,
    rays: int = 10,
    max_distance: float = 50.0,
    steps: int = 21,
    rise: float = 0.1,
    seed: int = 0,
    bn: BNArg = None,
    progress: bool = False,
    adapter: ModelAdapter | None = None,
) -> dict[str, Any]:
    """Train loss along ``rays`` random unit directions (the same for every center) from each center
    (slide 14); valley width = distance where the loss first rises by ``rise`` over the center's."""
    space = WeightSpace(model)
    gen = torch.Generator().manual_seed(seed)
    if rays < 1 or steps < 2:
        raise InputError(f"rays needs at least 1 ray and 2 steps per ray, got {rays} and {steps}")
    dirs = [
        random_direction(space, next(iter(centers.values())), filter_norm=False, generator=gen) for _ in range(rays)
    ]
    dist = torch.linspace(0, max_distance, steps).tolist()
    out: dict[str, Any] = {
        "kind": "rays",
        "distance": dist,
        "rise": rise,
        "rays": rays,
        "units": "Euclidean distance in weight space (unit-norm Gaussian directions)",
        "centers": {},
    }
    for name, w in centers.items():
        eye = torch.eye(rays, dtype=torch.float64)
        coords = torch.cat([eye[r : r + 1] * torch.tensor(dist, dtype=torch.float64)[:, None] for r in range(rays)])
        pts = AffinePoints(torch.stack([dvec.to(w) for dvec in dirs]), coords, w)
        res = evaluate_points(
            model,
            pts,
            {"train": loader},
            bn=bn,
            progress=progress and Progress(f"rays {name}"),
            adapter=adapter,
        )
        losses = torch.tensor(res.loss("train")).view(rays, steps)
        widths = [valley_width(dist, row.tolist(), rise) for row in losses]
        finite = [x for x in widths if x != float("inf")]
        out["centers"][name] = {
            "loss": losses.tolist(),
            "width": widths,
            "mean_width": sum(finite) / len(finite) if len(finite) == len(widths) else float("inf"),
            "bn": res.bn,
        }
    return out


def random_plane_study(
    model: nn.Module,
    w: Tensor,
    loaders: Mapping[str, Iterable],
    *,
    n: int = 21,
    span: float = 1.0,
    filter_norm: bool = True,
    seed: int = 0,
    bn: BNArg = None,
    progress: bool = False,
    adapter: ModelAdapter | None = None,
) -> dict[str, Any]:
    """Loss and error on ``w + x d1 + y d2`` for x, y in ``[-span, span]`` with two random directions,
    filter-normalised by default (Li et al. 2018)."""
    if n < 2:
        raise InputError(f"a grid needs at least 2 points per axis, got {n}")
    space = WeightSpace(model)
    gen = torch.Generator().manual_seed(seed)
    d1 = random_direction(space, w, filter_norm=filter_norm, generator=gen)
    d2 = random_direction(space, w, filter_norm=filter_norm, generator=gen)
    xs = torch.linspace(-span, span, n).tolist()
    coords = torch.tensor([(x, y) for y in xs for x in xs], dtype=torch.float64)
    pts = AffinePoints(torch.stack([d1, d2]), coords, w)  # w + x d1 + y d2, the first layer folded where it pays
    res = evaluate_points(model, pts, loaders, bn=bn, progress=progress and Progress("landscape"), adapter=adapter)
    grids = {
        name: {k: torch.tensor(res.per_loader[name][k]).view(n, n).tolist() for k in ("loss", "error")}
        for name in loaders
    }
    units = (
        "multiples of filter-normalised directions (each filter scaled to its weights' norm; 1-D parameters fixed)"
        if filter_norm
        else "Euclidean distance (unit-norm directions)"
    )
    return {
        "kind": "random-plane",
        "xs": xs,
        "ys": xs,
        "grids": grids,
        "points": {"w": (0.0, 0.0)},
        "units": units,
        "bn": res.bn,
        "nonfinite": res.nonfinite,
    }


def sharpness_study(
    model: nn.Module,
    batches: Sequence,
    *,
    k: int = 3,
    iterations: int = 30,
    trace_samples: int = 30,
    epsilon: float = 1e-3,
    seed: int = 0,
    adapter: ModelAdapter | None = None,
    progress: bool = False,
    trace_method: str = "hutchinson",
    density: tuple[int, int] | None = None,
    blocks: bool = False,
) -> dict[str, Any]:
    """Top-``k`` Hessian eigenvalues (Lanczos), trace (Hutchinson, or Hutch++ with ``trace_method="hutchpp"``:
    ``trace_samples`` products either way) and epsilon-sharpness of the training loss on ``batches`` with the
    model in eval mode (BatchNorm running statistics, Dropout off). ``density=(steps, starts)`` adds the
    eigenvalue density by stochastic Lanczos quadrature (:func:`valleys.geometry.spectrum.spectral_density`:
    its nodes, weights, first four moments and the smoothed curve on 1000 points); ``blocks`` adds each layer's
    top eigenvalue and Hutch++ trace (:func:`valleys.geometry.spectrum.block_spectra`). ``progress``: a bar on
    stderr counting the Hessian-vector products and ascent steps."""
    from .spectrum import block_spectra, density_curve, hutchpp_trace, spectral_density, spectral_moments

    if trace_method not in ("hutchinson", "hutchpp"):
        raise InputError(f"trace method must be 'hutchinson' or 'hutchpp', got {trace_method!r}")
    loss = LossFunction(model, batches, mode="eval", adapter=adapter)
    w = loss.space.read(model)
    gen = torch.Generator().manual_seed(seed)
    iterations = min(iterations, w.numel())
    ascent_steps = 20  # epsilon_sharpness's default
    bar = None
    if progress:
        bar = progress_bar(
            total=iterations + trace_samples + ascent_steps + (density[0] * density[1] if density else 0),
            unit="product",
            desc="Lanczos",
            leave=False,
            dynamic_ncols=True,
        )
        hvp, grad = loss.hvp, loss.grad

        def counted_hvp(w: Tensor, v: Tensor) -> Tensor:
            out = hvp(w, v)
            bar.update(1)
            return out

        def counted_grad(w: Tensor) -> Tensor:
            out = grad(w)
            bar.update(1)
            return out

        loss.hvp, loss.grad = counted_hvp, counted_grad  # type: ignore[method-assign]
    try:
        top = lanczos(loss, w, k=min(k, w.numel()), iterations=iterations, generator=gen)
        if bar is not None:
            bar.n = iterations  # Lanczos may stop early on an exhausted Krylov space
            bar.set_description("Hutchinson", refresh=False)
        if trace_method == "hutchpp":
            tr = hutchpp_trace(loss, w, max(6, trace_samples), gen, batch=8)
        else:
            tr = hutchinson_trace(loss, w, samples=trace_samples, generator=gen)
        if bar is not None:
            bar.set_description("epsilon-sharpness", refresh=False)
        sh = epsilon_sharpness(loss, w, epsilon, steps=ascent_steps)
        extra: dict[str, Any] = {}
        if density is not None:
            if bar is not None:
                bar.set_description("density (SLQ)", refresh=False)
            d = spectral_density(loss, w, steps=density[0], starts=density[1], generator=gen)
            grid, curve = density_curve(d["nodes"], d["weights"], bins=1000)
            extra["density"] = {
                **d,
                "moments": spectral_moments(d["nodes"], d["weights"], 4),
                "grid": grid.tolist(),
                "curve": curve.tolist(),
                "method": "stochastic Lanczos quadrature (Ghorbani et al. 2019), PyHessian's smoothing",
            }
        if blocks:
            if bar is not None:
                bar.set_description("per-layer blocks", refresh=False)
            extra["blocks"] = block_spectra(
                model, batches, k=1, iterations=min(iterations, 20), trace_products=30, adapter=adapter, generator=gen
            )
    finally:
        if bar is not None:
            bar.close()
    return {
        "kind": "sharpness",
        "top_eigenvalues": top["eigenvalues"].tolist(),
        "num_hvp": top["num_hvp"],
        "trace": {**tr, "method": trace_method},
        "epsilon_sharpness": sh,
        "loss": loss.value(w),
        "mode": "eval (BN running statistics)",
        "examples": int(sum(loss.weights)),
        **extra,
    }
