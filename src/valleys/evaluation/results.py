"""Typed results of the evaluation entry points: small dataclasses with fixed fields and ``to_json``.

Each result is also a read-only mapping (``res["accuracy"]``, ``res["train"]["loss"]``, ``dict(res)``) over
the fields that are set, so code written against the older dict results keeps working; new code reads the
attributes. ``to_json()`` gives strict JSON (non-finite numbers become ``null``; tensors are left out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..core.checkpoint import json_safe

__all__ = ["GridResult", "BMAResult", "PathResult"]


class _MappingView(Mapping):
    """Read-only mapping over :meth:`_items` (the dict form of a result)."""

    def _items(self) -> dict[str, Any]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def to_json(self) -> dict[str, Any]:
        """Strict JSON (tensors left out: write them with :mod:`safetensors` if they are needed)."""
        return json_safe({k: v for k, v in self._items().items() if not isinstance(v, Tensor)})


@dataclass(eq=False)
class GridResult(_MappingView):
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

    def _items(self) -> dict[str, Any]:
        return {**self.per_loader, "nonfinite": self.nonfinite, "bn": self.bn, "batched": self.batched}


@dataclass(eq=False)
class BMAResult(_MappingView):
    """The Bayesian model average over weight samples (:func:`valleys.evaluation.predict.bma`).

    Attributes:
        metrics: the scores of the averaged predictive (``accuracy``, ``nll``, ``ece``, ``brier``, ... for
            classification; ``rmse``, ``nll``, ``coverage_95``, ... for Gaussian regression); empty when scoring
            was skipped.
        num_samples: how many samples were averaged.
        batched: whether ``torch.func.vmap`` evaluated them.
        likelihood: ``"classification"`` or ``"gaussian"``.
        probs: the averaged class probabilities (N, C), when asked for (classification).
        mean, var: the moment-matched predictive mean and variance (N,), when asked for (regression).
        targets: the targets (N,), with ``probs`` or ``mean``.
    """

    metrics: dict[str, Any]
    num_samples: int
    batched: bool
    likelihood: str = "classification"
    probs: Tensor | None = None
    mean: Tensor | None = None
    var: Tensor | None = None
    targets: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _items(self) -> dict[str, Any]:
        out = {**self.metrics, "num_samples": self.num_samples, "batched": self.batched}
        for name in ("probs", "mean", "var", "targets"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return {**out, **self.extra}


@dataclass(eq=False)
class PathResult(_MappingView):
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

    def _items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
