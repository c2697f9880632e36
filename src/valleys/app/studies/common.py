"""What the studies share: a run folder's network, weights and data, and the SGD trajectory a SWA run kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ...core.checkpoint import checkpoint_field, load_checkpoint, model_signature
from ...core.weights import WeightSpace
from ...errors import InputError
from ..config import TrainConfig
from ..run_data import load_splits, split_loader

__all__ = ["load_context", "load_trajectory", "one_weight_space", "plane_contours"]


def load_context(path: str | Path) -> tuple[nn.Module, Tensor, TrainConfig, dict[str, Any], Any]:
    """``(model, weights, cfg, loaders, bn_loader)`` for a run folder or model checkpoint: ``loaders`` has
    ``train`` (the training split, unshuffled) and ``test``; ``bn_loader`` is the training split."""
    from ..connect import load_endpoint

    model, cfg = load_endpoint(path)
    splits = load_splits(cfg)
    train = split_loader(splits, "train", 1000)
    return (
        model,
        WeightSpace(model).read(model),
        cfg,
        {"train": train, "test": split_loader(splits, "test", 1000)},
        train,
    )


def load_trajectory(run_dir: str | Path) -> tuple[Tensor, list[int]]:
    """The iterates a SWA/SWAG run collected (``trajectory.safetensors``) and their epochs."""
    if not (Path(run_dir) / "trajectory.safetensors").is_file():
        raise InputError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    state, header = load_checkpoint(Path(run_dir) / "trajectory.safetensors")
    if header.get("kind") != "trajectory":
        raise InputError(f"{run_dir} holds no trajectory; train it with --method swa or swag")
    path = Path(run_dir) / "trajectory.safetensors"
    return checkpoint_field(state, "iterates", path, "state"), list(checkpoint_field(header, "epochs", path))


def one_weight_space(ctx: Mapping[str, tuple]) -> None:
    """Refuse networks of different architectures or datasets in one study (``{path: (model, w, cfg, ...)}``)."""
    (first, (m0, _, c0, *_)), *rest = ctx.items()
    sig0 = model_signature(m0)
    for path, (m, _, c, *_) in rest:
        if model_signature(m) != sig0 or c.dataset != c0.dataset:
            raise InputError(
                f"{path} is {c.model} on {c.dataset} and {first} is {c0.model} on {c0.dataset}"
                f"{' with other parameter shapes' if model_signature(m) != sig0 else ''}: a study needs "
                "networks of one architecture and dataset (one weight space)"
            )


def plane_contours(values: Mapping[str, Any], out: Path, title: str) -> list[Path]:
    """The contour figures of a plane result: error and loss on each of its loaders."""
    from ..plots import plot_contours

    figs = []
    for loader, grid in values["grids"].items():
        for m in ("error", "loss"):
            figs.append(
                plot_contours(
                    values["xs"],
                    values["ys"],
                    grid[m],
                    values["points"],
                    out / "figures" / f"{loader}_{m}.png",
                    title=f"{title}: {loader} {'error (%)' if m == 'error' else 'loss'}",
                    percent=m == "error",
                    units=values["units"],
                )
            )
    return figs
