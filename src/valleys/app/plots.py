"""Figures (matplotlib, Agg backend). Nothing in the library imports this module except reports and the CLI."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.optional import require

require("matplotlib", "plots").use("Agg")
plt = require("matplotlib.pyplot", "plots")

__all__ = [
    "plot_error_curves",
    "plot_reliability",
    "plot_paths",
    "plot_contours",
    "plot_line",
    "plot_rays",
    "plot_subspace",
    "plot_toy_regression",
    "plot_travel",
]


def _wrap(text: str, ax, share: float = 1.0) -> str:
    """``text`` wrapped to the width of ``ax``'s figure (``share`` of it): long titles, such as ones naming run
    folders, break over lines instead of running off the figure's edges."""
    fontsize = plt.rcParams["axes.titlesize"]
    points = fontsize if isinstance(fontsize, (int, float)) else 12.0
    chars = max(20, int(share * ax.figure.get_figwidth() * 72 / (0.6 * points)))
    return "\n".join(_fill(line, chars) for line in text.splitlines() or [""])


def _fill(text: str, width: int) -> str:
    """Greedy line filling that breaks after spaces, path separators and hyphens (a folder name stays readable); a
    piece longer than ``width`` on its own is cut."""
    lines, cur = [], ""
    for part in re.split(r"(?<=[ /-])", text):
        piece = part
        while len(piece) > width:
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(cur) + len(piece.rstrip()) > width and cur:
            lines.append(cur)
            cur = ""
        cur += piece
    lines.append(cur)
    return "\n".join(line.rstrip() for line in lines if line.strip()) or text


def _title(ax, text: str, share: float = 1.0) -> None:
    ax.set_title(_wrap(text, ax, share))


def _save(fig, path: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder; the bounding box grown to any text that still sticks out)
    and close the figure."""
    import os
    import tempfile

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomically, as every file valleys writes: a full disk leaves the previous figure, never half of one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", pad_inches=0.1, format=path.suffix.lstrip(".") or "png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


#: The reliability plot's confidence ticks (the talk's, slide 23): evenly spaced in ``-log(1 - conf)``.
RELIABILITY_TICKS = (0.2, 0.759, 0.927, 0.978, 0.993, 0.998)


def _confidence_ticks(x_max: float) -> tuple[list[float], list[str]]:
    """Tick positions (in ``-log(1 - conf)``) and labels: the talk's, continued at the same spacing until they
    cover ``x_max``, each label with enough decimals to tell it from 1."""
    xs = [-math.log1p(-t) for t in RELIABILITY_TICKS]
    spacing = (xs[-1] - xs[0]) / (len(xs) - 1)
    while xs[-1] < x_max:
        xs.append(xs[-1] + spacing)
    labels = []
    for i, x in enumerate(xs):
        if i < len(RELIABILITY_TICKS):
            labels.append(f"{RELIABILITY_TICKS[i]:.3f}")
            continue
        rest = math.exp(-x)  # 1 - conf
        decimals = max(3, math.ceil(-math.log10(rest)))
        labels.append(f"{1 - rest:.{decimals}f}")
    return xs, labels


def plot_error_curves(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | Path,
    *,
    title: str = "Test error against epoch",
    marker_epoch: int | None = None,
) -> Path:
    """Test error (%) against epoch, one line per name (mean over seeds, band = min..max); talk slide 20.

    ``curves[name]`` is a list of per-seed sequences of ``(epoch, error)`` pairs. The left panel shows the
    whole run, the right panel zooms in on the epochs from ``marker_epoch`` (or the second half) on.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    zoom_from = marker_epoch if marker_epoch is not None else None
    lows, highs = [], []
    for name, given in curves.items():
        runs = [np.asarray(r, dtype=float) for r in given if len(r)]
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
    _title(axes[0], title, 0.5)
    axes[1].set_title("zoom: from the start of averaging")
    if lows and zoom_from is not None:
        pad = 0.1 * (max(highs) - min(lows) + 1e-9)
        axes[1].set_xlim(zoom_from - 1, None)
        axes[1].set_ylim(min(lows) - pad, max(highs) + pad)
    axes[1].legend()
    return _save(fig, path)


def plot_reliability(
    reliability: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str = "Reliability",
    min_count: int = 10,
) -> Path:
    """The talk's reliability plot (slide 23): confidence minus accuracy against confidence, one line per
    method. ``reliability[name]`` holds per-bin ``confidence``, ``accuracy`` and ``count`` (empty bins are
    skipped, and so are bins with fewer than ``min_count`` examples). Above zero means over-confident. The
    x axis is spaced like the talk's, by ``-log(1 - conf)``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x_max = 0.0
    for name, rel in reliability.items():
        conf = np.asarray(rel["confidence"], dtype=float)
        acc = np.asarray(rel["accuracy"], dtype=float)
        keep = np.asarray(rel["count"], dtype=float) >= max(min_count, 1)
        x = -np.log1p(-np.clip(conf[keep], 0, 1 - 1e-6))
        if x.size:
            x_max = max(x_max, float(x.max()))
        ax.plot(x, conf[keep] - acc[keep], marker="o", ms=3, lw=1.5, label=name)
    ax.axhline(0, color="black", lw=1, ls="--")
    xs, labels = _confidence_ticks(x_max)  # labelled over the whole range of the points
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30 if len(xs) > 8 else 0, ha="right" if len(xs) > 8 else "center")
    ax.set_xlabel("Confidence (max prob)")
    ax.set_ylabel("Confidence - Accuracy")
    _title(ax, title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_paths(
    paths: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *, title: str = "Along the paths"
) -> Path:
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
    fig.suptitle(_wrap(title, axes[0], 0.9))
    return _save(fig, path)


def plot_contours(
    xs: Sequence[float],
    ys: Sequence[float],
    grid: Sequence[Sequence[float]],
    points: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    percent: bool = False,
    units: str = "",
    levels: int = 8,
) -> Path:
    """Filled contours in the talk's style (slides 7, 9-13): log-spaced levels from the minimum, the top level
    open-ended, and the marked points (e.g. W1, W2, W3 and SWA). NaN cells are left blank."""
    z = np.asarray(grid, dtype=float) * (100 if percent else 1)
    finite = z[np.isfinite(z)]
    lo = max(finite.min(), 1e-8) if finite.size else 1e-3
    hi = np.percentile(finite, 90) if finite.size else 1.0
    hi = max(hi, lo * 1.5)
    lv = np.unique(np.geomspace(lo, hi, levels))
    fig, ax = plt.subplots(figsize=(6.2, 5))
    cs = ax.contourf(
        xs, ys, np.clip(z, None, hi * 1.001), levels=np.append(lv, hi * 1.001), cmap="viridis_r", extend="max"
    )
    ax.contour(xs, ys, z, levels=lv, colors="k", linewidths=0.4, alpha=0.5)
    cbar = fig.colorbar(cs, ax=ax)
    cbar.set_label("test error (%)" if percent else "loss")
    for name, (px, py) in points.items():
        ax.plot(
            px,
            py,
            marker="*" if "SWA" in name.upper() else "o",
            ms=11 if "SWA" in name.upper() else 7,
            color="white" if "SWA" not in name.upper() else "gold",
            mec="black",
        )
        right = px > xs[0] + 0.6 * (xs[-1] - xs[0])  # labels in the right part point left, inside the axes
        ax.annotate(
            name,
            (px, py),
            textcoords="offset points",
            xytext=(-6, 6) if right else (6, 6),
            ha="right" if right else "left",
            fontsize=9,
        )
    _title(ax, title, 0.8)  # the colorbar takes the rest of the width
    if units:
        ax.set_xlabel(f"u ({units})", fontsize=8)
        ax.set_ylabel("v", fontsize=8)
    return _save(fig, path)


def plot_line(result: Mapping, path: str | Path, *, title: str = "") -> Path:
    """Loss and error against signed distance along a line through two solutions (slide 15)."""
    fig, ax1 = plt.subplots(figsize=(6.4, 4.2))
    dist = np.asarray(result["distance"])
    ax2 = ax1.twinx()
    for name, curve in result["curves"].items():
        style = "-" if name == "test" else "--"
        if name == "test":
            ax1.plot(dist, 100 * np.asarray(curve["error"]), style, color="tab:blue", label=f"{name} error")
        if name == "train":
            ax2.plot(dist, curve["loss"], style, color="tab:red", label=f"{name} loss")
    for x, label in ((0.0, result.get("a_label", "a")), (result["length"], result.get("b_label", "b"))):
        ax1.axvline(x, color="grey", ls=":", lw=1)
        ax1.annotate(label, (x, ax1.get_ylim()[1]), textcoords="offset points", xytext=(3, -12), fontsize=9)
    ax1.set_xlabel(f"distance ({result.get('units', '')})", fontsize=8)
    ax1.set_ylabel("test error (%)", color="tab:blue")
    ax2.set_ylabel("train loss", color="tab:red")
    _title(ax1, title, 0.85)
    ax1.grid(alpha=0.3)
    return _save(fig, path)


def plot_density(grid: Sequence[float], density: Sequence[float], path: str | Path, *, title: str = "") -> Path:
    """The Hessian eigenvalue density (stochastic Lanczos quadrature) on a log scale, as PyHessian draws it
    (Ghorbani et al. 2019; Yao et al. 2020): ``density + 1e-7`` against the eigenvalue."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.semilogy(np.asarray(grid), np.asarray(density) + 1e-7)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    _title(ax, title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_rays(result: Mapping, path: str | Path, *, title: str = "") -> Path:
    """Train loss along random rays from each center (slide 14): thin lines per ray, thick mean."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dist = np.asarray(result["distance"])
    for i, (name, c) in enumerate(result["centers"].items()):
        losses = np.asarray(c["loss"])
        color = f"C{i}"
        for row in losses:
            ax.plot(dist, row, color=color, lw=0.6, alpha=0.35)
        ax.plot(dist, np.nanmean(losses, axis=0), color=color, lw=2.2, label=f"{name} (width {c['mean_width']:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel(f"distance ({result.get('units', '')})", fontsize=8)
    ax.set_ylabel("train loss")
    _title(ax, title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_subspace(density: Mapping | None, samples, path: str | Path, *, title: str = "") -> Path:
    """The posterior log density over the first two subspace coordinates (filled contours, the top 30 units
    below the maximum) with the samples on it (Izmailov et al. 2019, Fig. 1); without a density grid, the
    samples alone (a histogram for k = 1)."""
    s = np.asarray(samples, dtype=float)
    fig, ax = plt.subplots(figsize=(6.2, 5))
    if s.shape[1] == 1:
        ax.hist(s[:, 0], bins=max(5, min(40, len(s) // 3)), color="C0", alpha=0.8)
        ax.set_xlabel("z_1")
        ax.set_ylabel("samples")
    else:
        if density is not None:
            z = np.asarray(density["log_posterior"], dtype=float)
            top = np.nanmax(z)
            cs = ax.contourf(density["xs"], density["ys"], np.clip(z, top - 30, None), levels=15, cmap="viridis")
            fig.colorbar(cs, ax=ax).set_label("log posterior (up to a constant)")
        ax.scatter(s[:, 0], s[:, 1], s=10, color="white", edgecolor="black", linewidths=0.4, label="samples")
        ax.plot(0, 0, marker="*", ms=12, color="gold", mec="black", label="shift")
        ax.set_xlabel("z_1")
        ax.set_ylabel("z_2")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_toy_regression(
    xs: Sequence[float],
    panels: Mapping[str, tuple],
    x_train: Sequence[float],
    y_train: Sequence[float],
    path: str | Path,
    *,
    truth=None,
    title: str = "",
) -> Path:
    """The 1-D regression predictive of several methods side by side (Izmailov et al. 2019, Fig. 5; slide 32):
    per panel the predictive mean and the band ``mean +- 2 sd`` over the inputs ``xs``, the training points
    and, if given, the noiseless function ``truth(xs)``. ``panels`` maps a label to ``(mean, sd)``."""
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    xs = np.asarray(xs, dtype=float)
    labels = {"sgd": "SGD", "swa": "SWA", "swag": "SWAG"}
    # a grid may hold more axes than panels
    for ax, (name, (mean_given, sd_given)) in zip(axes.flat, panels.items(), strict=False):
        mean, sd = np.asarray(mean_given, dtype=float), np.asarray(sd_given, dtype=float)
        ax.fill_between(xs, mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.25, lw=0, label="mean ± 2 sd")
        ax.plot(xs, mean, color="C0", lw=1.5, label="predictive mean")
        if truth is not None:
            ax.plot(xs, truth(xs), color="black", lw=0.8, ls="--", label="true function")
        ax.scatter(x_train, y_train, s=6, color="C3", zorder=3, label="training data")
        ax.set_title(labels.get(name, name.replace("-", " + ").upper()), fontsize=10)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    lo, hi = float(np.min(y_train)), float(np.max(y_train))
    pad = hi - lo
    for ax in axes.flat[:n]:
        ax.set_ylim(lo - pad, hi + pad)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_travel(
    runs: Mapping[str, Sequence[Sequence[Sequence[float]]]],
    path: str | Path,
    *,
    marker_epoch: int | None = None,
    title: str = "How far the iterates travel",
) -> Path:
    """Distance in weight space between consecutive epochs (left) and the share of probe inputs whose predicted
    class changed (right), against epoch, one line per name (mean over seeds); talk slide 35.

    ``runs[name]`` is a list of per-seed sequences of ``(epoch, distance, disagreement)`` triples.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, given in runs.items():
        seeds = [np.asarray(r, dtype=float) for r in given if len(r)]
        if not seeds:
            continue
        n = min(len(r) for r in seeds)
        stack = np.stack([r[:n] for r in seeds])
        epochs = stack[0, :, 0]
        axes[0].plot(epochs, stack[:, :, 1].mean(axis=0), lw=1.8, label=name)
        axes[1].plot(epochs, 100 * stack[:, :, 2].mean(axis=0), lw=1.8, label=name)
    axes[0].set_ylabel("||w(e) - w(e-1)||")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("Predictions changed (%)")
    for ax in axes:
        if marker_epoch is not None:
            ax.axvline(marker_epoch, color="grey", ls=":", lw=1, label="averaging starts")
        ax.set_xlabel("Epochs")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(_wrap(title, axes[0], 0.9))
    return _save(fig, path)
