"""The loss-surface studies on run folders: load a run (model, weights, data), run a study from
:mod:`valleys.geometry.studies`, and write ``results.json``, figures and ``report.md`` into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..core.checkpoint import write_json
from ..core.weights import WeightSpace
from ..geometry.studies import (
    path_study,
    plane_study,
    random_plane_study,
    rays_study,  # noqa: F401
    sharpness_study,
)
from .folders import check_output, output_guard

__all__ = [
    "write_study",
    "load_context",
    "load_trajectory",
    "trajectory_plane_study",
    "pca_plane_study",
    "plane_study",
    "path_study",
    "rays_study",
    "random_plane_study",
    "sharpness_study",
    "WeightSpace",
]


def write_study(
    out: str | Path, result: dict[str, Any], *, title: str, metric: str = "loss", overwrite: bool = False
) -> Path:
    """Write ``results.json``, the matching figure and a short ``report.md`` for a study into ``out``.

    A folder that already holds valleys output is refused unless ``overwrite`` (an earlier study's files are
    then replaced); a run or curve folder is always refused (see :func:`valleys.app.folders.check_output`). If
    writing fails, what this call created is removed."""
    out = check_output(out, overwrite=overwrite, study=True)
    with output_guard(out):
        _clear_study(out)
        return _write_study(out, result, title=title)


def _clear_study(out: Path) -> None:
    """Remove an earlier study's files from ``out`` (its figures would otherwise outlive it)."""
    import shutil

    for name in ("results.json", "report.md", "summary.json"):
        (out / name).unlink(missing_ok=True)
    if (out / "figures").is_dir():
        shutil.rmtree(out / "figures")


def _write_study(out: Path, result: dict[str, Any], *, title: str) -> Path:
    from .plots import plot_contours, plot_line, plot_rays

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    kind = result["kind"]
    figs = []
    if kind in ("plane", "random-plane"):
        for loader, grid in result["grids"].items():
            for m in ("error", "loss"):
                figs.append(
                    plot_contours(
                        result["xs"],
                        result["ys"],
                        grid[m],
                        result["points"],
                        out / "figures" / f"{loader}_{m}.png",
                        title=f"{title}: {loader} {'error (%)' if m == 'error' else 'loss'}",
                        percent=m == "error",
                        units=result["units"],
                    )
                )
    elif kind == "path":
        figs.append(plot_line(result, out / "figures" / "path.png", title=title))
    elif kind == "rays":
        figs.append(plot_rays(result, out / "figures" / "rays.png", title=title))
    lines = [f"# {title}", "", f"Units: {result.get('units', 'n/a')}. BatchNorm: {result.get('bn', 'n/a')}.", ""]
    if kind == "rays":
        lines += ["| center | mean valley width |", "|---|---|"]
        lines += [f"| {k} | {v['mean_width']:.3f} |" for k, v in result["centers"].items()]
    if kind == "sharpness":
        lines += [
            f"- top Hessian eigenvalues: {[round(x, 4) for x in result['top_eigenvalues']]} "
            f"({result['num_hvp']} Hessian-vector products)",
            f"- trace (Hutchinson): {result['trace']['trace']:.4f} ± {result['trace']['stderr']:.4f}",
            f"- epsilon-sharpness (eps {result['epsilon_sharpness']['epsilon']}): "
            f"{result['epsilon_sharpness']['sharpness']:.4f}",
            f"- mode: {result['mode']}",
        ]
    lines += [""] + [f"![{f.stem}]({f.relative_to(out)})" for f in figs] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out


# ---------------------------------------------------------------------- from run folders (the CLI's entry)
def load_context(path: str | Path):
    """``(model, weights, cfg, loaders, bn_loader)`` for a run folder or model checkpoint: ``loaders`` has
    ``train`` (the training split, unshuffled) and ``test``; ``bn_loader`` is the training split."""
    from ..zoo.data import make_loader
    from .connect import load_endpoint
    from .runs import load_splits

    model, cfg = load_endpoint(path)
    splits = load_splits(cfg)
    train = make_loader(splits.train, 1000)
    return model, WeightSpace(model).read(model), cfg, {"train": train, "test": make_loader(splits.test, 1000)}, train


def load_trajectory(run_dir: str | Path) -> tuple[Tensor, list[int]]:
    """The iterates a SWA/SWAG run collected (``trajectory.safetensors``) and their epochs."""
    from ..core.checkpoint import checkpoint_field, load_checkpoint

    if not (Path(run_dir) / "trajectory.safetensors").is_file():
        raise ValueError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    state, header = load_checkpoint(Path(run_dir) / "trajectory.safetensors")
    if header.get("kind") != "trajectory":
        raise ValueError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    path = Path(run_dir) / "trajectory.safetensors"
    return checkpoint_field(state, "iterates", path, "state"), list(checkpoint_field(header, "epochs", path))


def trajectory_plane_study(
    run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute", progress: bool = False
) -> dict[str, Any]:
    """Slides 9-13: the plane through three SGD iterates W1, W2, W3 of a SWA/SWAG run (first, middle and last
    collected epochs) with the SWA solution projected onto it."""
    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    if len(iterates) < 3:
        raise ValueError(f"{run_dir} collected {len(iterates)} iterates; a trajectory plane needs at least 3")
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
        bn=bn,
        bn_loader=bn_loader,
        progress=progress,
        adapter=cfg.adapter(),
    )
    res["points"] = {
        f"W{j + 1} (epoch {epochs[i]})": res["points"][k] for j, (i, k) in enumerate(zip(idx, ("a", "b", "c")))
    } | {"SWA": res["points"]["SWA"]}
    return res


def pca_plane_study(
    run_dir: str | Path, *, n: int = 21, margin: float = 0.2, bn: str = "recompute", progress: bool = False
) -> dict[str, Any]:
    """The plane through the mean of a run's collected iterates spanned by their top two principal directions
    (u = PC1, v = PC2), with every iterate and SWA projected onto it."""
    from ..geometry.surfaces import pca_plane

    model, w_swa, cfg, loaders, bn_loader = load_context(run_dir)
    iterates, epochs = load_trajectory(run_dir)
    mean, u, v, explained = pca_plane(iterates)
    extra = {f"epoch {e}": w for e, w in zip(epochs, iterates)}
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
        bn=bn,
        bn_loader=bn_loader,
        progress=progress,
        adapter=cfg.adapter(),
    )
    res["points"] = {k: p for k, p in res["points"].items() if k not in ("a", "b", "c")}
    res["explained_variance"] = explained.tolist()
    res["units"] = "Euclidean distance in weight space along PC1 (u) and PC2 (v)"
    return res
