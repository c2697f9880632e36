"""Typed results of the evaluation entry points: frozen dataclasses read by attribute.

:func:`valleys.evaluation.predict.evaluate` returns :class:`ClassificationScores` (or :class:`RegressionScores`
for a Gaussian head), and :class:`BMAResult` holds the same object as ``metrics``: ``evaluate(...).accuracy``,
``bma(...).metrics.accuracy``. :class:`GridResult` and :class:`PathResult` hold loss and error per point.
``to_json()`` gives the strict-JSON dict that results files store (non-finite numbers become ``null``;
tensors are left out: write them with :mod:`safetensors` if they are needed);
:func:`valleys.core.checkpoint.json_safe` calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..core.checkpoint import json_safe

__all__ = [
    "ClassificationScores",
    "RegressionScores",
    "Scores",
    "scores_from_dict",
    "GridResult",
    "BMAResult",
    "PathResult",
]


@dataclass(frozen=True)
class ClassificationScores:
    """Scores of a classifier's predictive ``p = softmax(f)`` (float64) on ``n`` examples
    (:class:`valleys.evaluation.metrics.ClassificationMetrics`).

    Attributes:
        accuracy: ``mean[argmax p = y]``; error: ``1 - accuracy``.
        nll: ``-(1/N) sum_i log p(y_i | x_i)``.
        brier: ``(1/N) sum_i sum_c (p_ic - 1[c = y_i])^2`` (Brier 1950).
        ece, mce: expected and maximum calibration error over ``bins`` equal-width confidence bins
            (Guo et al. 2017).
        n: the number of examples; bins: the number of confidence bins.
        reliability: per-bin ``edges``, ``confidence``, ``accuracy`` and ``count`` (``None`` when not kept).
    """

    accuracy: float
    error: float
    nll: float
    brier: float
    ece: float
    mce: float
    n: int
    bins: int
    reliability: dict[str, list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: the scores by name (``reliability`` only when kept)."""
        out = dataclasses.asdict(self)
        if self.reliability is None:
            del out["reliability"]
        return json_safe(out)


@dataclass(frozen=True)
class RegressionScores:
    """Scores of a Gaussian predictive ``N(mu_i, var_i)`` on ``n`` examples
    (:class:`valleys.evaluation.metrics.RegressionMetrics`).

    Attributes:
        rmse: ``sqrt((1/N) sum_i (y_i - mu_i)^2)``.
        nll: ``(1/N) sum_i [0.5 log(2 pi var_i) + (y_i - mu_i)^2 / (2 var_i)]``.
        coverage_95: the fraction of targets inside ``mu_i +- 1.96 sqrt(var_i)``.
        n: the number of examples.
    """

    rmse: float
    nll: float
    coverage_95: float
    n: int

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: the scores by name."""
        return json_safe(dataclasses.asdict(self))


Scores = ClassificationScores | RegressionScores


def scores_from_dict(values: Mapping[str, Any]) -> Scores:
    """The typed scores of a :meth:`valleys.evaluation.metrics.ClassificationMetrics.compute` or
    :meth:`valleys.evaluation.metrics.RegressionMetrics.compute` dict (other keys are ignored)."""
    cls: type[ClassificationScores] | type[RegressionScores] = (
        RegressionScores if "rmse" in values else ClassificationScores
    )
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


@dataclass(frozen=True)
class GridResult:
    """Loss and error at each point of a grid, line or list of weight vectors
    (:func:`valleys.evaluation.grid.evaluate_points`).

    Attributes:
        per_loader: per loader name, ``{"loss": [...], "error": [...]}`` (one number per point; NaN where the
            output was not finite; the error is NaN for a Gaussian or custom loss).
        nonfinite: how many points gave a non-finite loss on some loader.
        bn: the BatchNorm label: ``"recompute"``, ``"keep"`` or ``"none (no BatchNorm)"``.
        batched: whether ``torch.func.vmap`` evaluated the points.
    """

    per_loader: dict[str, dict[str, list[float]]]
    nonfinite: int
    bn: str
    batched: bool

    def loss(self, loader: str) -> list[float]:
        """The mean loss at each point on ``loader``."""
        return self.per_loader[loader]["loss"]

    def error(self, loader: str) -> list[float]:
        """The classification error at each point on ``loader``."""
        return self.per_loader[loader]["error"]

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: ``{"<loader>": {"loss": [...], "error": [...]}, "nonfinite", "bn", "batched"}``."""
        return json_safe({**self.per_loader, "nonfinite": self.nonfinite, "bn": self.bn, "batched": self.batched})


@dataclass(frozen=True, eq=False)
class BMAResult:
    """The Bayesian model average over weight samples (:func:`valleys.evaluation.predict.bma`).

    Attributes:
        metrics: the scores of the averaged predictive (:class:`ClassificationScores`: ``accuracy``, ``nll``,
            ``ece``, ``brier``, ...; :class:`RegressionScores` for Gaussian regression: ``rmse``, ``nll``,
            ``coverage_95``); ``None`` when scoring was skipped.
        num_samples: how many samples were averaged.
        batched: whether ``torch.func.vmap`` evaluated them.
        likelihood: ``"classification"`` or ``"gaussian"``.
        probs: the averaged class probabilities (N, C), when asked for (classification).
        mean, var: the moment-matched predictive mean and variance (N,), when asked for (regression).
        targets: the targets (N,), with ``probs`` or ``mean``.
    """

    metrics: Scores | None
    num_samples: int
    batched: bool
    likelihood: str = "classification"
    probs: Tensor | None = None
    mean: Tensor | None = None
    var: Tensor | None = None
    targets: Tensor | None = None

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: the metrics by name, ``num_samples`` and ``batched`` (the tensors are left out)."""
        scores = self.metrics.to_json() if self.metrics is not None else {}
        return json_safe({**scores, "num_samples": self.num_samples, "batched": self.batched})


@dataclass(frozen=True)
class PathResult:
    """Metrics along a path ``t -> w(t)`` in weight space (:func:`valleys.geometry.paths.evaluate_path`).

    Attributes:
        t: the path parameters evaluated.
        train_loss, train_error, test_error, test_nll: one number per ``t``.
        lengths: the Euclidean length of each piece between consecutive points (weight units).
        summary: per metric, ``{"min", "max", "arc_mean"}`` (the arc-length average).
        bn: the BatchNorm label.
    """

    t: list[float]
    train_loss: list[float]
    train_error: list[float]
    test_error: list[float]
    test_nll: list[float]
    lengths: list[float]
    summary: dict[str, dict[str, float]]
    bn: str
    length_units: str = "Euclidean norm in weight space"

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: every field by name."""
        return json_safe(dataclasses.asdict(self))
