"""Loss and error at many weight vectors: planes, lines, rays and random landscapes share it.

:func:`evaluate_points` is the :class:`valleys.evaluation.engine.LossError` reduction of
:func:`valleys.evaluation.engine.evaluate_many`: for every point ``w`` and loader, the mean loss
``(1/N) sum_i loss(f(x_i; w), y_i)`` with the adapter's loss (cross-entropy by default, summed per batch in
float64; Gaussian NLL or any callable otherwise) and the classification ``error`` (NaN for a non-classification
loss), with an explicit BatchNorm policy (``bn=train_loader``: recomputed on it per point, the right choice
off the trained points, or ``"keep"``). A non-finite loss at a point is recorded as NaN and counted (``nonfinite``);
the sweep never stops for it. The user's model is restored bit for bit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.weights import WeightSpace
from ..errors import InputError
from .engine import BNArg, LossError, Progress, VmapPolicy, as_bn_policy, evaluate_many
from .folding import AffinePoints
from .results import GridResult

__all__ = ["evaluate_points"]


def evaluate_points(
    model: nn.Module,
    points: Sequence[Tensor] | Tensor,
    loaders: Mapping[str, Iterable],
    *,
    adapter: ModelAdapter | None = None,
    bn: BNArg = None,
    space: WeightSpace | None = None,
    batched: bool | str | VmapPolicy = "auto",
    progress: bool | Progress = False,
    shard: bool = False,
) -> GridResult:
    """Loss and error of ``model`` at each of ``points`` on each loader; see the module docstring.

    ``bn``: a loader (recompute on it per point), a :class:`valleys.evaluation.engine.BNPolicy` or ``"keep"``;
    ``None`` recomputes where needed and raises :class:`valleys.errors.MissingBNLoaderError` for a BatchNorm
    model (before any forward pass). ``batched``: see :class:`valleys.evaluation.engine.VmapPolicy`.
    ``progress``: ``True`` or a :class:`valleys.evaluation.engine.Progress` (label) shows a bar. Everything
    runs on the device of the model's parameters. Points given as
    :class:`valleys.evaluation.folding.AffinePoints` (a plane, a line, a subspace) let the engine fold the
    model's first affine layer (its outputs on the origin and directions computed once per batch) where its
    timing says that pays; ``batched=VmapPolicy(fold=False)`` turns that off.

    ``shard=True`` under ``torch.distributed`` splits the points across ranks (every rank passes the same
    points and loaders) and gathers the per-point values, so every rank returns the whole grid (see
    :func:`valleys.evaluation.engine.evaluate_many`).

    Returns a :class:`valleys.evaluation.results.GridResult`: ``loss(name)`` and ``error(name)`` (one number
    per point), ``per_loader``, ``nonfinite``, ``bn`` (one of ``"recompute"``, ``"keep"``,
    ``"none (no BatchNorm)"``) and ``batched``.
    """
    policy = as_bn_policy(bn)
    if not loaders:
        raise InputError("give at least one loader to evaluate on")
    adapter = as_adapter(adapter)
    space = space or WeightSpace(model)
    if isinstance(points, AffinePoints):  # kept whole: the engine may fold the first affine layer
        if points.basis.shape[1] != space.size:
            raise InputError(f"the points have {points.basis.shape[1]} entries; this weight space has {space.size}")
    else:
        points = list(points)
        for i, p in enumerate(points):
            if p.dim() != 1 or p.numel() != space.size:
                raise InputError(
                    f"point {i} has shape {tuple(p.shape)}; every point must be a vector of length {space.size}"
                )
    if not points:
        return GridResult({name: {"loss": [], "error": []} for name in loaders}, 0, policy.label(model), False)
    res = evaluate_many(
        model,
        points,
        loaders,
        reduce=LossError(adapter),
        adapter=adapter,
        bn=policy,
        space=space,
        batched=batched,
        progress=Progress.of(progress, "points") or False,
        shard=shard,
    )
    values: dict[str, dict[str, list[float]]] = dict(res.value)
    nonfinite = sum(1 for i in range(len(points)) if any(math.isnan(values[n]["loss"][i]) for n in loaders))
    if nonfinite:
        warnings.warn(f"{nonfinite} of {len(points)} points gave a non-finite loss; recorded as NaN", stacklevel=2)
    return GridResult(values, nonfinite, res.bn, res.batched)
