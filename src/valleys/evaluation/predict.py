"""Predictions of a network over a loader, streamed into :mod:`valleys.evaluation.metrics`.

:func:`evaluate` and :func:`bma` are reductions of :func:`valleys.evaluation.engine.evaluate_many` (eval mode, no
gradients, softmax in float64, the model restored bit for bit); :func:`predict_probs` streams one network's
predictions. Batches and outputs go through a :class:`valleys.core.adapter.ModelAdapter`. :func:`evaluate` scores one network; :func:`bma` scores the Bayesian
model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))`` over any source of weights: SWAG samples (flat
vectors, BatchNorm recomputed per sample), FGE snapshots or ensemble members (full state dicts, used as they
are), MultiSWAG. Probabilities are averaged, never logits, and streamed: one running sum per test example.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.batches import InputFn
from ..core.batchnorm import EmptyLoaderError
from ..core.weights import WeightSpace, preserved_modes
from .engine import BMASum, BNPolicy, Metrics, Sample, evaluate_many, gaussian_moments, softmax_probs
from .metrics import ClassificationMetrics, RegressionMetrics
from .results import BMAResult

__all__ = ["evaluate", "predict_probs", "bma", "Sample", "softmax_probs", "gaussian_moments"]

LIKELIHOODS = {"classification": softmax_probs, "gaussian": gaussian_moments}


def predict_probs(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    input_fn: InputFn | None = None,
    target_fn=None,
    transform=softmax_probs,
    adapter: ModelAdapter | None = None,
) -> Iterator[tuple[Tensor, Any]]:
    """Yield ``(transform(prediction), targets)`` per batch, by default ``(softmax probs in float64, targets)``,
    with the model in eval mode and no gradients (flags restored when exhausted)."""
    adapter = as_adapter(adapter, input_fn=input_fn, target_fn=target_fn)
    with preserved_modes(model, train=False), torch.no_grad():
        for batch in loader:
            yield transform(adapter.forward(model, batch, device)), adapter.targets(batch)


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    input_fn: InputFn | None = None,
    target_fn=None,
    bins: int = 15,
    reliability: bool = False,
    likelihood: str = "classification",
    adapter: ModelAdapter | None = None,
    all_reduce: bool = False,
) -> dict[str, Any]:
    """Metrics of one network on ``loader``: classification (accuracy, error, NLL ``-(1/N) sum_i log p(y_i|x_i)``
    with ``p = softmax(f)`` in float64, Brier, ECE, MCE) or, for a Gaussian adapter (``likelihood="gaussian"``),
    regression (RMSE, Gaussian NLL, 95% coverage) from a ``(mean, variance)`` head.

    The model is evaluated as it is (one point of :func:`valleys.evaluation.engine.evaluate_many`), in eval
    mode, and left in the mode it had. ``reliability=True`` keeps the per-bin reliability data.
    ``all_reduce=True`` (under ``torch.distributed``, each rank passing its share of the data) sums the metric
    state over all ranks first, so every rank returns the metrics of all examples; every rank must call it.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    adapter = as_adapter(adapter, input_fn=input_fn, target_fn=target_fn, likelihood=likelihood)
    try:
        res = evaluate_many(
            model,
            None,
            {"data": loader},
            reduce=Metrics(adapter, bins, all_reduce=all_reduce),
            adapter=adapter,
            bn="keep",
            batched=False,
            device=device,
        )
    except EmptyLoaderError:
        raise EmptyLoaderError(
            "evaluate: the loader yielded no examples" + (" on any rank" if all_reduce else "")
        ) from None
    out = res.value[0]["data"]
    if adapter.likelihood == "gaussian":
        out.pop("error", None)
    elif not reliability:
        out.pop("reliability")
    return out


def bma(
    model: nn.Module,
    samples: Iterable[Sample],
    loader: Iterable,
    *,
    space: WeightSpace | None = None,
    bn_loader: Iterable | None = None,
    bn_batches: int | None = None,
    device: torch.device | str | None = None,
    input_fn: InputFn | None = None,
    target_fn=None,
    bins: int = 15,
    num_samples: int | None = None,
    progress: bool = False,
    return_probs: bool = False,
    score: bool = True,
    likelihood: str = "classification",
    stale_bn_ok: bool = False,
    batched: bool | str = "auto",
    chunk: int = 8,
    adapter: ModelAdapter | None = None,
    bn: BNPolicy | str | None = None,
    shard: bool = False,
) -> BMAResult:
    """Metrics of the Bayesian model average over ``samples`` on ``loader``.

    ``shard=True`` under ``torch.distributed``: every rank passes the same samples (e.g. the same generator
    seed) and the same loader; rank ``r`` evaluates the samples ``s`` with ``s mod R = r`` and the per-example
    sums are all-reduced, so every rank returns the average over all S samples (at least R samples needed).

    Each sample is either a flat weight vector (a SWAG draw; BatchNorm statistics are recomputed on
    ``bn_loader`` for it, on its first ``bn_batches`` batches if given) or a state dict (an FGE snapshot or an
    ensemble member, evaluated with its own statistics). The user's model is restored after every sample.
    ``loader`` must yield the same batches in the same order on every pass (no shuffling). A weight vector
    for a model with BatchNorm needs ``bn_loader`` (its statistics would be stale); pass ``bn="keep"`` (or the
    older ``stale_bn_ok=True``) to evaluate with the model's current statistics on purpose. ``adapter`` (a
    :class:`valleys.core.adapter.ModelAdapter`) says how batches become model calls and which output is the
    prediction; ``input_fn``/``target_fn``/``likelihood`` are its older form. Built on
    :func:`valleys.evaluation.engine.evaluate_many` with the :class:`valleys.evaluation.engine.BMASum` reduction.

    Weight vectors that need no BatchNorm recompute can be evaluated ``chunk`` at a time with
    ``torch.func.vmap`` over the stacked weights (``batched=True``), one at a time (``False``), or
    (``"auto"``, the default) whichever is faster on the first input batch (best of three timings each):
    vmap wins for tiny networks and loses for CNNs on the CPU; the choice is cached per model and input
    shape and returned as ``batched``.

    Returns a :class:`valleys.evaluation.results.BMAResult`: the ``metrics`` of
    :class:`valleys.evaluation.metrics.ClassificationMetrics`, ``num_samples``, ``batched``, and with
    ``return_probs=True`` the averaged ``probs`` (N, C) and ``targets`` (N,). ``score=False`` skips the
    metrics (for out-of-distribution inputs whose labels are not among the model's classes). Read as a
    mapping it is the metrics plus ``num_samples``, ``batched`` and the tensors that were asked for.

    ``likelihood="gaussian"`` is regression with a head that outputs ``(mean, variance)``: the predictive is
    the moment-matched Gaussian ``mu = mean_s mu_s``, ``var = mean_s(var_s + mu_s^2) - mu^2``, scored by
    :class:`valleys.evaluation.metrics.RegressionMetrics` (RMSE, NLL, 95% coverage); ``mean`` and ``var`` are returned
    with ``return_probs=True``.
    """
    adapter = as_adapter(adapter, input_fn=input_fn, target_fn=target_fn, likelihood=likelihood)
    if bn is None:
        bn = (
            BNPolicy("keep")
            if stale_bn_ok and bn_loader is None
            else BNPolicy("recompute", bn_loader, bn_batches if bn_loader is not None else None)
        )
    elif isinstance(bn, str):
        bn = BNPolicy(bn, bn_loader, bn_batches)
    try:
        res = evaluate_many(
            model,
            samples,
            {"test": loader},
            reduce=BMASum(adapter),
            adapter=adapter,
            bn=bn,
            space=space,
            device=device,
            batched=batched,
            chunk=chunk,
            progress=progress,
            desc="BMA",
            total=num_samples,
            shard=shard,
        )
    except ValueError as e:
        if str(e).startswith("no weights"):
            raise ValueError("bma: no samples were given; collect weights or pass at least one sample") from None
        if str(e).startswith("the model has BatchNorm"):
            raise ValueError(
                "bma: the model has BatchNorm layers and the samples are weight vectors; pass "
                "bn_loader=train_loader to recompute their statistics per sample (or "
                "stale_bn_ok=True / bn='keep' to keep the current ones)"
            ) from None
        raise
    probs, y = res.value
    keep = return_probs or not score
    if adapter.likelihood == "gaussian":
        mean, var = probs[:, 0], (probs[:, 1] - probs[:, 0] ** 2).clamp_min(torch.finfo(torch.float64).tiny)
        metrics: dict[str, Any] = {}
        if score:
            reg = RegressionMetrics()
            reg.update(mean, var, y)
            metrics = reg.compute()
        return BMAResult(
            metrics,
            res.num_points,
            bool(res.batched),
            "gaussian",
            mean=mean if keep else None,
            var=var if keep else None,
            targets=y if keep else None,
        )
    metrics = {}
    if score:
        cls_metrics = ClassificationMetrics(bins)
        cls_metrics.update(probs, y)
        metrics = cls_metrics.compute()
    return BMAResult(
        metrics,
        res.num_points,
        bool(res.batched),
        "classification",
        probs=probs if keep else None,
        targets=y if keep else None,
    )
