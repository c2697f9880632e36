"""Figures are written, long titles stay inside the figure, the reliability axis is labelled over its data."""

from __future__ import annotations

import math

import numpy as np
import pytest

plots = pytest.importorskip("valleys.app.plots")


@pytest.fixture
def kept(monkeypatch):
    """The figures the plotting functions make, laid out, before they are closed."""
    figs = []
    save = plots._save

    def capture(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        figs.append(fig)
        plots.plt.close = lambda *a: None  # keep it open for the test
        try:
            return save(fig, path)
        finally:
            monkeypatch.undo()

    monkeypatch.setattr(plots, "_save", capture)
    return figs


def _inside(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    width, height = fig.canvas.get_width_height()
    return box.x0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1


def test_a_long_trajectory_plane_title_is_wrapped_inside_the_figure(tmp_path, kept):
    xs = ys = np.linspace(-1, 1, 5)
    grid = np.add.outer(xs**2, ys**2) + 0.1
    title = "trajectory plane of /home/someone/experiments/runs/mnist1d-cnn1d-swag-seed0-long-folder-name: train loss"
    out = plots.plot_contours(
        xs, ys, grid, {"W1 (epoch 51)": (0.0, 0.0), "SWA": (0.5, 0.5)}, tmp_path / "f" / "plane.png", title=title
    )
    assert out.is_file() and out.stat().st_size > 1000
    ax = kept[0].axes[0]
    wrapped = ax.get_title()
    assert "\n" in wrapped and "".join(wrapped.split()) == "".join(title.split())
    assert all(line.endswith(("/", ":", "-")) or line == wrapped.splitlines()[-1] for line in wrapped.splitlines())
    assert _inside(kept[0], ax.title)


def test_reliability_ticks_cover_the_points(tmp_path, kept):
    conf = [0.3, 0.8, 0.95, 0.99, 0.999, 0.99999]
    rel = {"swa": {"confidence": conf, "accuracy": [c - 0.01 for c in conf], "count": [100] * len(conf)}}
    out = plots.plot_reliability(rel, tmp_path / "rel.png")
    assert out.is_file() and out.stat().st_size > 1000
    ax = kept[0].axes[0]
    x_max = -math.log1p(-0.99999)
    ticks = ax.get_xticks()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert max(ticks) >= x_max and all(labels) and len(set(labels)) == len(labels)
    assert labels[:6] == ["0.200", "0.759", "0.927", "0.978", "0.993", "0.998"]  # the talk's
    for x, label in zip(ticks, labels, strict=True):
        assert abs(float(label) - (1 - math.exp(-x))) < 5e-3 * (1 - float(label)) + 1e-3 or x < 6.3
    lo, hi = ax.get_xlim()
    assert lo <= min(ticks) and hi >= x_max


def test_reliability_without_confident_points_keeps_the_talks_ticks(tmp_path, kept):
    rel = {"sgd": {"confidence": [0.5, 0.9], "accuracy": [0.5, 0.85], "count": [50, 50]}}
    plots.plot_reliability(rel, tmp_path / "rel.png")
    assert [t.get_text() for t in kept[0].axes[0].get_xticklabels()] == [
        "0.200",
        "0.759",
        "0.927",
        "0.978",
        "0.993",
        "0.998",
    ]


def test_every_figure_is_written(tmp_path):
    curves = {"sgd": [[(1, 0.5), (2, 0.4), (3, 0.3)]], "swa": [[(1, 0.5), (2, 0.35), (3, 0.25)]]}
    paths = {"segment": {"t": [0, 0.5, 1], "train_loss": [0.1, 1.0, 0.1], "test_error": [0.1, 0.5, 0.1]}}
    line = {
        "distance": [0, 1, 2],
        "length": 2.0,
        "units": "weights",
        "curves": {"test": {"error": [0.1, 0.2, 0.1]}, "train": {"loss": [0.1, 0.3, 0.1]}},
    }
    rays = {
        "distance": [0, 1, 2],
        "units": "weights",
        "centers": {"swa": {"loss": [[0.1, 0.2, 0.4]], "mean_width": 1.0}},
    }
    long = "a rather long title naming " + "/very/long/run/folder" * 6
    outs = [
        plots.plot_error_curves(curves, tmp_path / "e.png", title=long, marker_epoch=2),
        plots.plot_paths(paths, tmp_path / "p.png", title=long),
        plots.plot_line(line, tmp_path / "l.png", title=long),
        plots.plot_rays(rays, tmp_path / "r.png", title=long),
    ]
    assert all(o.is_file() and o.stat().st_size > 1000 for o in outs)
