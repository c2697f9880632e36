"""Figures (matplotlib, Agg backend). Nothing in the library imports this module except reports and the CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_error_curves", "plot_reliability", "plot_paths"]


def _save(fig, path: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder) and close the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_curves(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *,
                      title: str = "Test error against epoch", marker_epoch: int | None = None) -> Path:
    """Test error (%) against epoch, one line per name (mean over seeds, band = min..max); talk slide 20.

    ``curves[name]`` is a list of per-seed sequences of ``(epoch, error)`` pairs. The left panel shows the
    whole run, the right panel zooms in on the epochs from ``marker_epoch`` (or the second half) on.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    zoom_from = marker_epoch if marker_epoch is not None else None
    lows, highs = [], []
    for name, runs in curves.items():
        runs = [np.asarray(r, dtype=float) for r in runs if len(r)]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        stack = np.stack([r[-n:] for r in runs])
        epochs = stack[0, :, 0]
        err = 100 * stack[:, :, 1]
        mean = err.mean(axis=0)
        if zoom_from is None:
            zoom_from = int(epochs[-1] // 2)
        for ax in axes:
            ax.plot(epochs, mean, label=name, lw=1.8)
            if len(runs) > 1:
                ax.fill_between(epochs, err.min(axis=0), err.max(axis=0), alpha=0.2)
        late = epochs >= zoom_from
        if late.any():
            lows.append(err[:, late].min())
            highs.append(err[:, late].max())
    for ax in axes:
        if marker_epoch is not None:
            ax.axvline(marker_epoch, color="grey", ls=":", lw=1, label="SWA start")
        ax.set_xlabel("Epochs")
        ax.set_ylabel("Test error (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[1].set_title("zoom: from the start of averaging")
    if lows and zoom_from is not None:
        pad = 0.1 * (max(highs) - min(lows) + 1e-9)
        axes[1].set_xlim(zoom_from - 1, None)
        axes[1].set_ylim(min(lows) - pad, max(highs) + pad)
    axes[1].legend()
    return _save(fig, path)


def plot_reliability(reliability: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *,
                     title: str = "Reliability", min_count: int = 10) -> Path:
    """The talk's reliability plot (slide 23): confidence minus accuracy against confidence, one line per
    method. ``reliability[name]`` holds per-bin ``confidence``, ``accuracy`` and ``count`` (empty bins are
    skipped, and so are bins with fewer than ``min_count`` examples). Above zero means over-confident. The
    x axis is spaced like the talk's, by ``-log(1 - conf)``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rel in reliability.items():
        conf = np.asarray(rel["confidence"], dtype=float)
        acc = np.asarray(rel["accuracy"], dtype=float)
        keep = np.asarray(rel["count"], dtype=float) >= max(min_count, 1)
        x = -np.log1p(-np.clip(conf[keep], 0, 1 - 1e-6))
        ax.plot(x, conf[keep] - acc[keep], marker="o", ms=3, lw=1.5, label=name)
    ax.axhline(0, color="black", lw=1, ls="--")
    ticks = np.array([0.2, 0.759, 0.927, 0.978, 0.993, 0.998])
    ax.set_xticks(-np.log1p(-ticks))
    ax.set_xticklabels([f"{t:.3f}" for t in ticks])
    ax.set_xlabel("Confidence (max prob)")
    ax.set_ylabel("Confidence - Accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_paths(paths: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *,
               title: str = "Along the paths") -> Path:
    """Train loss and test error (%) against t for several paths (e.g. the segment and a curve; slide 7)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, res in paths.items():
        t = np.asarray(res["t"])
        axes[0].plot(t, res["train_loss"], lw=1.8, label=name)
        axes[1].plot(t, 100 * np.asarray(res["test_error"]), lw=1.8, label=name)
    axes[0].set_ylabel("Train loss (mean NLL)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("Test error (%)")
    for ax in axes:
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)
