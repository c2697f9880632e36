"""Loss and error at many weight vectors: planes, lines, rays and random landscapes share it.

:func:`evaluate_points` is the :class:`valleys.evaluation.engine.LossError` reduction of
:func:`valleys.evaluation.engine.evaluate_many`: for every point ``w`` and loader, the mean loss
``(1/N) sum_i loss(f(x_i; w), y_i)`` with the adapter's loss (cross-entropy by default, summed per batch in
float64; Gaussian NLL or any callable otherwise) and the classification ``error`` (NaN for a non-classification
loss), with an explicit BatchNorm policy (``"recompute"`` on ``bn_loader`` per point, the right choice off the
trained points, or ``"keep"``). A non-finite loss at a point is recorded as NaN and counted (``nonfinite``);
the sweep never stops for it. The user's model is restored bit for bit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.batches import InputFn
from ..core.weights import WeightSpace
from .engine import BNPolicy, LossError, evaluate_many
from .results import GridResult

__all__ = ["evaluate_points"]


def evaluate_points(
    model: nn.Module,
    points: Sequence[Tensor] | Tensor,
    loaders: Mapping[str, Iterable],
    *,
    bn: str | BNPolicy = "recompute",
    bn_loader: Iterable | None = None,
    space: WeightSpace | None = None,
    batched: bool | str = "auto",
    chunk: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "points",
    adapter: ModelAdapter | None = None,
    input_fn: InputFn | None = None,
    target_fn=None,
    likelihood: str | None = None,
    bn_batches: int | None = None,
    shard: bool = False,
) -> GridResult:
    """Loss and error of ``model`` at each of ``points`` on each loader; see the module docstring.

    ``shard=True`` under ``torch.distributed`` splits the points across ranks (every rank passes the same
    points and loaders) and gathers the per-point values, so every rank returns the whole grid (see
    :func:`valleys.evaluation.engine.evaluate_many`).

    Returns a :class:`valleys.evaluation.results.GridResult` (``per_loader[name]["loss"|"error"]``,
    ``nonfinite``, ``bn`` one of ``"recompute"``, ``"keep"``, ``"none (no BatchNorm)"``, ``batched``); read
    as a mapping it is ``{"<loader>": {"loss": [...], "error": [...]}, "nonfinite": ..., "bn": ..., "batched": ...}``.
    """
    policy = bn if isinstance(bn, BNPolicy) else BNPolicy(bn, bn_loader, bn_batches)
    if not loaders:
        raise ValueError("give at least one loader to evaluate on")
    adapter = as_adapter(adapter, input_fn=input_fn, target_fn=target_fn, likelihood=likelihood)
    space = space or WeightSpace(model)
    points = list(points)
    for i, p in enumerate(points):
        if p.dim() != 1 or p.numel() != space.size:
            raise ValueError(
                f"point {i} has shape {tuple(p.shape)}; every point must be a vector of length {space.size}"
            )
    if not points:
        return GridResult({name: {"loss": [], "error": []} for name in loaders}, 0, policy.label(model), False)
    try:
        res = evaluate_many(
            model,
            points,
            loaders,
            reduce=LossError(adapter),
            adapter=adapter,
            bn=policy,
            space=space,
            device=device,
            batched=batched,
            chunk=chunk,
            progress=progress,
            desc=desc,
            total=len(points),
            shard=shard,
        )
    except ValueError as e:
        if str(e).startswith("the model has BatchNorm"):
            raise ValueError("bn='recompute' on a model with BatchNorm needs bn_loader (the training loader)") from None
        raise
    values: dict[str, dict[str, list[float]]] = dict(res.value)
    nonfinite = sum(1 for i in range(len(points)) if any(math.isnan(values[n]["loss"][i]) for n in loaders))
    if nonfinite:
        warnings.warn(f"{nonfinite} of {len(points)} points gave a non-finite loss; recorded as NaN", stacklevel=2)
    return GridResult(values, nonfinite, res.bn, res.batched)
