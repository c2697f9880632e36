"""Predictions of a network over a loader, streamed into :mod:`valleys.evaluation.metrics`.

:func:`evaluate` and :func:`bma` are reductions of :func:`valleys.evaluation.engine.evaluate_many` (eval mode, no
gradients, softmax in float64, the model restored bit for bit); :func:`predict_probs` streams one network's
predictions. Batches and outputs go through a :class:`valleys.core.adapter.ModelAdapter`. :func:`evaluate`
scores one network; :func:`bma` scores the Bayesian model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))``
over any source of weights: SWAG samples (flat vectors, BatchNorm recomputed per sample), FGE snapshots or
ensemble members (full state dicts, used as they are), MultiSWAG. Probabilities are averaged, never logits, and
streamed: one running sum per test example.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.batchnorm import EmptyLoaderError
from ..core.weights import WeightSpace, preserved_modes
from ..errors import NoWeightsError
from .engine import (
    BMASum,
    BNArg,
    Metrics,
    Progress,
    Sample,
    VmapPolicy,
    evaluate_many,
    gaussian_moments,
    softmax_probs,
)
from .metrics import ClassificationMetrics, RegressionMetrics
from .results import BMAResult, Scores, scores_from_dict

__all__ = ["evaluate", "predict_probs", "bma", "Sample", "softmax_probs", "gaussian_moments"]


def _model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` for a model with neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def predict_probs(
    model: nn.Module, loader: Iterable, *, adapter: ModelAdapter | None = None
) -> Iterator[tuple[Tensor, Any]]:
    """Yield ``(T(prediction), targets)`` per batch: ``T = softmax`` in float64 (the class probabilities) or,
    for a Gaussian adapter, the moments ``(mu, var + mu^2)`` (N, 2); with the model in eval mode, no gradients
    (flags restored when exhausted), batches moved to the device of the model's parameters."""
    adapter = as_adapter(adapter)
    transform = gaussian_moments if adapter.likelihood == "gaussian" else softmax_probs
    device = _model_device(model)
    with preserved_modes(model, train=False), torch.no_grad():
        for batch in loader:
            yield transform(adapter.forward(model, batch, device)), adapter.targets(batch)


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    adapter: ModelAdapter | None = None,
    reliability: bool = False,
    all_reduce: bool = False,
) -> Scores:
    """Scores of one network on ``loader``: classification (accuracy, error, NLL ``-(1/N) sum_i log p(y_i|x_i)``
    with ``p = softmax(f)`` in float64, Brier, ECE and MCE over 15 confidence bins) or, for a Gaussian
    adapter (``ModelAdapter(loss="gaussian")``), regression (RMSE, Gaussian NLL, 95% coverage) from a
    ``(mean, variance)`` head.

    The model is evaluated as it is (one point of :func:`valleys.evaluation.engine.evaluate_many`), in eval
    mode, on the device of its parameters, and left in the mode it had. ``reliability=True`` keeps the
    per-bin reliability data. ``all_reduce=True`` (under ``torch.distributed``, each rank passing its share
    of the data) sums the metric state over all ranks first, so every rank returns the metrics of all
    examples; every rank must call it. Other bin counts: feed :func:`predict_probs` to
    :class:`valleys.evaluation.metrics.ClassificationMetrics`.

    Returns :class:`valleys.evaluation.results.ClassificationScores` (``.accuracy``, ``.nll``, ...) or
    :class:`valleys.evaluation.results.RegressionScores` (``.rmse``, ``.nll``, ``.coverage_95``).
    """
    adapter = as_adapter(adapter)
    try:
        res = evaluate_many(
            model,
            None,
            {"data": loader},
            reduce=Metrics(adapter, all_reduce=all_reduce),
            adapter=adapter,
            bn="keep",
            batched=False,
        )
    except EmptyLoaderError:
        raise EmptyLoaderError(
            "evaluate: the loader yielded no examples" + (" on any rank" if all_reduce else "")
        ) from None
    out = dict(res.value[0]["data"])
    if not reliability:
        out.pop("reliability", None)
    return scores_from_dict(out)


def bma(
    model: nn.Module,
    samples: Iterable[Sample],
    loader: Iterable,
    *,
    adapter: ModelAdapter | None = None,
    bn: BNArg = None,
    space: WeightSpace | None = None,
    batched: bool | str | VmapPolicy = "auto",
    progress: bool | Progress = False,
    return_probs: bool = False,
    score: bool = True,
    shard: bool = False,
) -> BMAResult:
    """Metrics of the Bayesian model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))`` over ``samples`` on
    ``loader``.

    Each sample is either a flat weight vector over ``space`` (a SWAG draw; BatchNorm statistics are
    recomputed for it, see ``bn``) or a state dict (an FGE snapshot or an ensemble member, evaluated with its
    own statistics). The user's model is restored after every sample. Everything runs on the device of the
    model's parameters (batches are moved there). ``loader`` must yield the same batches in the same order
    on every pass (no shuffling).

    Args:
        adapter: a :class:`valleys.core.adapter.ModelAdapter`: how batches become model calls, which output is
            the prediction, and the likelihood (``ModelAdapter(loss="gaussian")`` for regression).
        bn: the BatchNorm policy for weight vectors: a loader (usually the training loader; shorthand for
            ``BNPolicy("recompute", loader)``), a :class:`valleys.evaluation.engine.BNPolicy` (e.g. with
            ``num_batches``), or ``"keep"`` to use the model's current statistics on purpose. ``None``:
            recompute where needed; weight vectors for a BatchNorm model then raise
            :class:`valleys.errors.MissingBNLoaderError` before any forward pass (their statistics would be
            stale).
        space: the weight space of flat vectors (default: every parameter of ``model``).
        batched: weight vectors that need no BatchNorm recompute are evaluated ``chunk`` at a time with
            ``torch.func.vmap`` over the stacked weights (``True``), one at a time (``False``), or (``"auto"``,
            the default) whichever is faster on the first input batch (best of three timings each): vmap wins
            for tiny networks and loses for CNNs on the CPU; the choice is cached per model and input shape
            and returned as ``batched``. A :class:`valleys.evaluation.engine.VmapPolicy` also sets ``chunk``.
        progress: ``True`` or a :class:`valleys.evaluation.engine.Progress` (label, expected ``total`` for a
            generator of samples) shows a bar over the samples.
        return_probs: also return the averaged ``probs`` (N, C) and ``targets`` (N,).
        score: ``False`` skips the metrics (for out-of-distribution inputs whose labels are not among the
            model's classes) and returns the tensors.
        shard: under ``torch.distributed``, every rank passes the same samples (e.g. the same generator seed)
            and the same loader; rank ``r`` evaluates the samples ``s`` with ``s mod R = r`` and the
            per-example sums are all-reduced, so every rank returns the average over all S samples (at
            least R samples needed).

    Returns a :class:`valleys.evaluation.results.BMAResult`: ``metrics``
    (:class:`valleys.evaluation.results.ClassificationScores` from
    :class:`valleys.evaluation.metrics.ClassificationMetrics` with 15 confidence bins, reliability included;
    ``None`` with ``score=False``), ``num_samples``, ``batched``, and the tensors asked for. Built on
    :func:`valleys.evaluation.engine.evaluate_many` with the :class:`valleys.evaluation.engine.BMASum` reduction
    (probabilities are averaged, never logits; one running sum per test example).

    A Gaussian adapter is regression with a head that outputs ``(mean, variance)``: the predictive is the
    moment-matched Gaussian ``mu = mean_s mu_s``, ``var = mean_s(var_s + mu_s^2) - mu^2``, scored by
    :class:`valleys.evaluation.metrics.RegressionMetrics` (RMSE, NLL, 95% coverage;
    :class:`valleys.evaluation.results.RegressionScores`); ``mean`` and ``var`` are returned with
    ``return_probs=True``.

    Raises :class:`valleys.errors.NoWeightsError` when ``samples`` is empty and
    :class:`valleys.errors.MissingBNLoaderError` as above (both are ``ValueError``).
    """
    adapter = as_adapter(adapter)
    try:
        res = evaluate_many(
            model,
            samples,
            {"test": loader},
            reduce=BMASum(adapter),
            adapter=adapter,
            bn=bn,
            space=space,
            batched=batched,
            progress=Progress.of(progress, "BMA") or False,
            shard=shard,
        )
    except NoWeightsError:
        raise NoWeightsError("bma: no samples were given; collect weights or pass at least one sample") from None
    probs, y = res.value
    keep = return_probs or not score
    if adapter.likelihood == "gaussian":
        mean, var = probs[:, 0], (probs[:, 1] - probs[:, 0] ** 2).clamp_min(torch.finfo(torch.float64).tiny)
        reg_scores: Scores | None = None
        if score:
            reg = RegressionMetrics()
            reg.update(mean, var, y)
            reg_scores = scores_from_dict(reg.compute())
        return BMAResult(
            reg_scores,
            res.num_points,
            bool(res.batched),
            "gaussian",
            mean=mean if keep else None,
            var=var if keep else None,
            targets=y if keep else None,
        )
    cls_scores: Scores | None = None
    if score:
        cls_metrics = ClassificationMetrics()
        cls_metrics.update(probs, y)
        cls_scores = scores_from_dict(cls_metrics.compute())
    return BMAResult(
        cls_scores,
        res.num_points,
        bool(res.batched),
        "classification",
        probs=probs if keep else None,
        targets=y if keep else None,
    )
