"""Predictions of a network over a loader, streamed into :mod:`valleys.metrics`.

:func:`evaluate` is the one evaluation loop: eval mode, no gradients, softmax in float64, and the
model's train/eval flags restored afterwards. Later methods (BMA over SWAG samples, FGE ensembles)
stream averaged probabilities through the same metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .batches import InputFn, call_model, default_input_fn, default_target_fn, to_device
from .batchnorm import EmptyLoaderError
from .metrics import ClassificationMetrics

__all__ = ["evaluate", "predict_probs"]


def predict_probs(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
                  input_fn: InputFn | None = None, target_fn=None):
    """Yield ``(probs, targets)`` per batch with the model in eval mode (flags restored when exhausted)."""
    input_fn = input_fn or default_input_fn
    target_fn = target_fn or default_target_fn
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                logits = call_model(model, to_device(input_fn(batch), device))
                yield torch.softmax(logits.double(), dim=-1), target_fn(batch)
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             input_fn: InputFn | None = None, target_fn=None, bins: int = 15,
             reliability: bool = False) -> dict[str, Any]:
    """Classification metrics (accuracy, error, NLL, Brier, ECE, MCE) of ``model`` on ``loader``.

    The model is evaluated in eval mode and left in the mode it had. ``reliability=True`` keeps the
    per-bin reliability data in the result.
    """
    metrics = ClassificationMetrics(bins)
    for probs, targets in predict_probs(model, loader, device=device, input_fn=input_fn, target_fn=target_fn):
        metrics.update(probs, targets)
    if metrics.n == 0:
        raise EmptyLoaderError("evaluate: the loader yielded no examples")
    out = metrics.compute()
    if not reliability:
        out.pop("reliability")
    return out
