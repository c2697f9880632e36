"""Calibration and out-of-distribution detection on predicted probabilities.

* Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` with ``p_T = softmax(log p / T)``, fitted by
  minimising the validation NLL with L-BFGS over ``log T``. Working on ``log p`` is exact: logits and log
  probabilities differ by a per-example constant, which the softmax cancels. Used as the SWA-Temp baseline.
* Predictive entropy ``H(p) = -sum_c p_c log p_c`` as the OOD score (Maddox et al. 2019, section 5.3).
* AUROC of scores of out-of-distribution (positives) against in-distribution (negatives) examples, by the
  Mann-Whitney statistic ``P(s_out > s_in) + P(s_out = s_in) / 2`` with average ranks for ties.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["fit_temperature", "apply_temperature", "predictive_entropy", "auroc"]

_TINY = torch.finfo(torch.float64).tiny  # log stays exact for every positive probability


def _log(probs: Tensor) -> Tensor:
    return probs.double().clamp_min(_TINY).log()


def apply_temperature(probs: Tensor, temperature: float) -> Tensor:
    """``softmax(log p / T)``, in float64."""
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    return torch.softmax(_log(probs) / temperature, dim=-1)


def fit_temperature(probs: Tensor, targets: Tensor, *, max_iter: int = 100) -> float:
    """The temperature minimising the mean NLL of ``softmax(log p / T)`` on held-out (validation) data."""
    if probs.dim() != 2 or probs.shape[0] != targets.shape[0] or probs.shape[0] == 0:
        raise InputError(
            f"need probs (N, C) and N targets with N > 0, got {tuple(probs.shape)} and {tuple(targets.shape)}"
        )
    if not bool(torch.isfinite(probs).all()):
        raise InputError(
            "fit_temperature got non-finite input: probs hold NaN or infinite entries (did the network diverge?)"
        )
    logp = _log(probs)
    y = targets.long()
    log_t = torch.zeros((), dtype=torch.float64, device="cpu", requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def predictive_entropy(probs: Tensor) -> Tensor:
    """``-sum_c p_c log p_c`` per row (nats); 0 log 0 = 0."""
    p = probs.double()
    return -(p * _log(p)).sum(dim=-1)


def auroc(scores_out: Tensor, scores_in: Tensor) -> float:
    """Area under the ROC curve for telling ``scores_out`` (positives) from ``scores_in`` (higher = more OOD)."""
    pos, neg = scores_out.double().reshape(-1), scores_in.double().reshape(-1)
    if pos.numel() == 0 or neg.numel() == 0:
        raise InputError("auroc needs at least one in-distribution and one out-of-distribution score")
    if not (bool(torch.isfinite(pos).all()) and bool(torch.isfinite(neg).all())):
        raise InputError("auroc got non-finite input: the scores hold NaN or infinite entries")
    scores = torch.cat([pos, neg])
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)
    # average ranks over ties
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    n_pos, n_neg = pos.numel(), neg.numel()
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
