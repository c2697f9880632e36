"""Evaluate networks along a path in weight space: a trained curve or the straight segment (talk slides 7, 15).

At each of N points ``w(t_i)`` the model is evaluated with an explicit BatchNorm policy (``"recompute"``:
statistics recomputed on the training data for that point, the default and the only meaningful choice off
the endpoints; ``"keep"``: the model's current statistics), giving train loss (mean NLL on the training
data), train and test error and NLL. Summaries: min, max, and the arc-length-weighted average
``sum_i 0.5 (v_i + v_{i-1}) ||w(t_i) - w(t_{i-1})|| / sum_i ||w(t_i) - w(t_{i-1})||`` (Garipov et al. 2018).
The user's model is restored bit for bit after every point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.weights import WeightSpace
from ..errors import InputError
from ..evaluation.engine import BN_POLICIES, BNArg, Metrics, Progress, as_bn_policy, evaluate_many
from ..evaluation.results import PathResult

__all__ = ["evaluate_path", "segment", "arc_length_average", "BN_POLICIES"]

PATH_METRICS = ("train_loss", "train_error", "test_error", "test_nll")


def segment(a: Tensor, b: Tensor) -> Callable[[float], Tensor]:
    """The straight segment ``w(t) = (1 - t) a + t b``."""
    return lambda t: torch.lerp(a, b, float(t))


def arc_length_average(values: Sequence[float], lengths: Sequence[float]) -> float:
    """``sum 0.5 (v_i + v_{i-1}) d_i / sum d_i`` with ``d_i`` the length of the i-th piece (len(values) - 1)."""
    v = torch.tensor(values, dtype=torch.float64)
    d = torch.tensor(lengths, dtype=torch.float64)
    if d.sum() == 0:
        return float(v.mean())
    return float((0.5 * (v[1:] + v[:-1]) * d).sum() / d.sum())


def evaluate_path(
    model: nn.Module,
    point: Callable[[float], Tensor],
    ts: Sequence[float],
    *,
    train_loader: Iterable,
    test_loader: Iterable,
    adapter: ModelAdapter | None = None,
    bn: BNArg = None,
    space: WeightSpace | None = None,
    progress: bool | Progress = False,
) -> PathResult:
    """Metrics at ``w = point(t)`` for each t in ``ts``; see the module docstring.

    Each point is evaluated by :func:`valleys.evaluation.engine.evaluate_many` with the
    :class:`valleys.evaluation.engine.Metrics` reduction, on the device of the model's parameters:
    ``train_loss`` and ``test_nll`` are the mean negative log-likelihood of the adapter's likelihood
    (``-log softmax(f)_y`` for classification, the Gaussian NLL ``0.5 log(2 pi var) + (y - mu)^2 / (2 var)``
    for a ``(mean, variance)`` regression head); the errors are classification errors (NaN for regression).
    ``bn``: ``None`` (the default) recomputes the statistics on ``train_loader`` at every point; another
    loader or a :class:`valleys.evaluation.engine.BNPolicy` recomputes on that (a ``"recompute"`` policy
    without a loader uses ``train_loader``); ``"keep"`` keeps the model's current ones.

    Returns a :class:`valleys.evaluation.results.PathResult`: arrays ``t``, ``train_loss``, ``train_error``,
    ``test_error``, ``test_nll``, the piece lengths ``lengths`` (Euclidean, in weight units),
    ``summary[metric] = {min, max, arc_mean}`` and the BatchNorm label ``bn`` (``"recompute"``, ``"keep"`` or
    ``"none (no BatchNorm)"``).
    """
    if len(ts) < 2:
        raise InputError(f"a path needs at least 2 points, got {len(ts)}")
    adapter = as_adapter(adapter)
    space = space or WeightSpace(model)
    policy = as_bn_policy(bn, default_loader=train_loader)
    out: dict[str, Any] = {k: [] for k in ("t", *PATH_METRICS, "lengths")}
    bar_policy = Progress.of(progress, "path")
    bar = bar_policy.bar("path", len(ts)) if bar_policy is not None else None
    prev: Tensor | None = None
    label = policy.label(model)
    for t in ts:
        with torch.no_grad():
            w = point(float(t)).detach()
        if prev is not None:
            out["lengths"].append(float((w - prev).norm()))
        prev = w
        res = evaluate_many(
            model,
            [w],
            {"train": train_loader, "test": test_loader},
            reduce=Metrics(adapter),
            adapter=adapter,
            bn=policy,
            space=space,
            batched=False,
        )
        if bar is not None:
            bar.update(1)
        train, test = res.value[0]["train"], res.value[0]["test"]
        out["t"].append(float(t))
        out["train_loss"].append(train["nll"])
        out["train_error"].append(train["error"])
        out["test_error"].append(test["error"])
        out["test_nll"].append(test["nll"])
    if bar is not None:
        bar.close()
    summary = {
        k: {"min": min(out[k]), "max": max(out[k]), "arc_mean": arc_length_average(out[k], out["lengths"])}
        for k in PATH_METRICS
    }
    return PathResult(
        out["t"],
        out["train_loss"],
        out["train_error"],
        out["test_error"],
        out["test_nll"],
        out["lengths"],
        summary,
        label,
    )
