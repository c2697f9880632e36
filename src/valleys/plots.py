"""Figures (matplotlib, Agg backend). Nothing in the library imports this module except reports and the CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_error_curves"]


def plot_error_curves(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *,
                      title: str = "Test error against epoch", marker_epoch: int | None = None) -> Path:
    """Test error (%) against epoch, one line per name (mean over seeds, band = min..max); talk slide 20.

    ``curves[name]`` is a list of per-seed sequences of ``(epoch, error)`` pairs.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, runs in curves.items():
        runs = [np.asarray(r, dtype=float) for r in runs if len(r)]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        stack = np.stack([r[-n:] for r in runs])
        epochs = stack[0, :, 0]
        err = 100 * stack[:, :, 1]
        ax.plot(epochs, err.mean(axis=0), label=name, lw=1.8)
        if len(runs) > 1:
            ax.fill_between(epochs, err.min(axis=0), err.max(axis=0), alpha=0.2)
    if marker_epoch is not None:
        ax.axvline(marker_epoch, color="grey", ls=":", lw=1, label="SWA start")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Test error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
