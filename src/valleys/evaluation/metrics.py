"""Streaming metrics with O(bins) state, the one metrics implementation every method uses (ECE: Guo et al. 2017).

Classification, from predicted probabilities ``p`` (N, C) and labels ``y``:

* accuracy = mean[argmax p = y]
* NLL = mean[-log p_y]                           (a mean over examples, never a sum; p clamped at 1e-12)
* Brier = mean[sum_c (p_c - 1[c = y])^2]          (multi-class Brier score, Brier 1950)
* ECE = sum_b (n_b / N) |acc_b - conf_b|, MCE = max_b |acc_b - conf_b|   (Guo et al. 2017)
  with ``bins`` equal-width bins of the confidence ``max_c p_c`` on [0, 1]: bin b holds
  b/B <= conf < (b+1)/B, and confidence exactly 1.0 goes into the top bin. Empty bins are skipped.
  Other bin edges can be given (``edges``; :data:`LOG_EDGES` spaces them like the talk's reliability plot).

Regression, from a Gaussian predictive N(mu, var): RMSE, Gaussian NLL
``0.5 log(2 pi var) + (y - mu)^2 / (2 var)`` (mean), and the coverage of the central 95% interval
``|y - mu| <= 1.959964 sqrt(var)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.batches import as_tensor
from ..errors import InputError, NonFinitePredictionError

__all__ = ["ClassificationMetrics", "RegressionMetrics", "classification_metrics", "regression_metrics", "LOG_EDGES"]

_EPS = 1e-12
# bins evenly spaced in log(1 - confidence) from confidence 0.206 to 0.9999, as on the talk's slide 23
LOG_EDGES: tuple[float, ...] = (0.0,) + tuple(1 - 10 ** (-(0.1 + 3.9 * i / 18)) for i in range(19)) + (1.0,)
_Z95 = 1.959963984540054


def _as_labels(y: Tensor, n: int) -> Tensor:
    y = as_tensor(y)
    if y.dim() != 1 or y.numel() != n:
        raise InputError(f"targets must be a 1-D tensor of {n} class indices, got shape {tuple(y.shape)}")
    return y.long()


def _all_reduce_sums(
    scalars: Sequence[float], tensors: Sequence[Tensor], group: Any = None
) -> tuple[list[float], list[Tensor]]:
    """Sum scalars and float64 tensors over the ranks of a ``torch.distributed`` group (one collective);
    without an initialised process group they come back unchanged."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return list(scalars), list(tensors)
    flat = torch.cat(
        [torch.tensor(list(scalars), dtype=torch.float64, device="cpu")] + [t.reshape(-1).cpu() for t in tensors]
    )
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat = flat.cpu()
    out_s = flat[: len(scalars)].tolist()
    out_t, i = [], len(scalars)
    for t in tensors:
        out_t.append(flat[i : i + t.numel()].reshape(t.shape).clone())
        i += t.numel()
    return out_s, out_t


class ClassificationMetrics:
    """Accumulate accuracy, NLL, Brier, ECE/MCE and reliability data over batches of probabilities.

    State is O(bins): counts and sums in float64, independent of the number of examples.

    Example:
        >>> m = ClassificationMetrics()
        >>> m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
        >>> round(m.compute()["accuracy"], 3)
        0.5
    """

    def __init__(self, bins: int = 15, edges: Sequence[float] | None = None) -> None:
        e: Tensor | None
        self._inner: Tensor | None
        if edges is not None:
            e = torch.tensor(list(edges), dtype=torch.float64, device="cpu")
            if e.numel() < 2 or e[0] != 0 or e[-1] != 1 or not bool((e[1:] > e[:-1]).all()):
                raise InputError("edges must increase strictly from 0 to 1")
            bins = e.numel() - 1
            self._inner = e[1:-1]
        else:
            e = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device="cpu") if bins >= 1 else None
            self._inner = None
        if bins < 1 or e is None:
            raise InputError(f"bins must be at least 1, got {bins}")
        self.bins = bins
        self.edges: Tensor = e
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        self.n = 0
        self.correct = 0.0
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self.bin_count = torch.zeros(self.bins, dtype=torch.float64, device="cpu")  # metrics live on the CPU
        self.bin_conf = torch.zeros(self.bins, dtype=torch.float64, device="cpu")
        self.bin_correct = torch.zeros(self.bins, dtype=torch.float64, device="cpu")

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """Add a batch: ``probs`` (N, C) rows summing to 1, ``targets`` (N,) class indices."""
        if probs.dim() != 2:
            raise InputError(f"probs must have shape (N, C), got {tuple(probs.shape)}")
        p = probs.detach().to("cpu", torch.float64)
        y = _as_labels(targets.detach().cpu(), p.shape[0])
        if p.shape[0] == 0:
            return
        if not bool(torch.isfinite(p).all()):
            raise NonFinitePredictionError(
                "probs hold NaN or infinite values: the network's predictions are not finite (did it diverge?)"
            )
        if float(p.min()) < 0 or float(p.max()) > 1 + 1e-6 or float((p.sum(1) - 1).abs().max()) > 1e-3:
            raise InputError("probs must lie in [0, 1] and sum to 1 per row (are these logits? use update_logits)")
        if int(y.min()) < 0 or int(y.max()) >= p.shape[1]:
            raise InputError(f"targets must lie in [0, {p.shape[1] - 1}], got range [{int(y.min())}, {int(y.max())}]")
        conf, pred = p.max(dim=1)
        hit = (pred == y).double()
        py = p.gather(1, y[:, None]).squeeze(1)
        onehot = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
        self.n += p.shape[0]
        self.correct += float(hit.sum())
        self.nll_sum += float(-torch.log(py.clamp_min(_EPS)).sum())
        self.brier_sum += float(((p - onehot) ** 2).sum())
        # bin index in the input's own precision, so a float32 0.9 lands in [0.9, 1.0) as written
        conf_in = probs.detach().cpu().max(dim=1).values
        if self._inner is None:
            idx = (conf_in * self.bins).floor().long().clamp_(0, self.bins - 1)
        else:
            idx = torch.bucketize(conf_in.double(), self._inner, right=True)
        self.bin_count.index_add_(0, idx, torch.ones_like(conf))
        self.bin_conf.index_add_(0, idx, conf)
        self.bin_correct.index_add_(0, idx, hit)

    def update_logits(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch of logits (softmax is applied in float64)."""
        self.update(torch.softmax(logits.detach().double(), dim=-1), targets)

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin ``edges`` (B+1), ``confidence``, ``accuracy`` (NaN for empty bins) and ``count``."""
        cnt = self.bin_count
        safe = cnt.clamp_min(1)
        conf = torch.where(cnt > 0, self.bin_conf / safe, torch.full_like(cnt, math.nan))
        acc = torch.where(cnt > 0, self.bin_correct / safe, torch.full_like(cnt, math.nan))
        return {
            "edges": self.edges.tolist(),
            "confidence": conf.tolist(),
            "accuracy": acc.tolist(),
            "count": cnt.tolist(),
        }

    def all_reduce(self, group: Any = None) -> ClassificationMetrics:
        """Sum the state (counts, sums, per-bin arrays) over the ranks of a ``torch.distributed`` group, so
        that :meth:`compute` gives the metrics of all ranks' examples together; a no-op without a process
        group. Call it once, after the last :meth:`update`. Returns ``self``."""
        (n, correct, nll, brier), (cnt, conf, corr) = _all_reduce_sums(
            [self.n, self.correct, self.nll_sum, self.brier_sum],
            [self.bin_count, self.bin_conf, self.bin_correct],
            group,
        )
        self.n, self.correct, self.nll_sum, self.brier_sum = int(round(n)), correct, nll, brier
        self.bin_count, self.bin_conf, self.bin_correct = cnt, conf, corr
        return self

    def compute(self) -> dict[str, Any]:
        """``accuracy, error, nll, brier, ece, mce, n`` and ``reliability`` (see the module docstring)."""
        if self.n == 0:
            raise InputError("no examples were added; call update(probs, targets) first")
        filled = self.bin_count > 0
        gap = (self.bin_conf - self.bin_correct).abs() / self.bin_count.clamp_min(1)
        acc = self.correct / self.n
        return {
            "accuracy": acc,
            "error": 1.0 - acc,
            "nll": self.nll_sum / self.n,
            "brier": self.brier_sum / self.n,
            "ece": float((self.bin_count * gap).sum()) / self.n,
            "mce": float(gap[filled].max()),
            "n": self.n,
            "bins": self.bins,
            "reliability": self.reliability(),
        }


def classification_metrics(
    probs: Tensor, targets: Tensor, bins: int = 15, edges: Sequence[float] | None = None
) -> dict[str, Any]:
    """One-shot :class:`ClassificationMetrics` on full tensors."""
    m = ClassificationMetrics(bins, edges)
    m.update(probs, targets)
    return m.compute()


class RegressionMetrics:
    """Accumulate RMSE, Gaussian NLL (mean) and 95% interval coverage from predictive means and variances."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        self.n = 0
        self.se_sum = 0.0
        self.nll_sum = 0.0
        self.covered = 0.0

    def update(self, mean: Tensor, var: Tensor, targets: Tensor) -> None:
        """Add a batch of predictive means, variances (> 0) and targets of equal shape."""
        mu, v, y = (t.detach().to("cpu", torch.float64).reshape(-1) for t in (mean, var, targets))
        if not (mu.shape == v.shape == y.shape):
            raise InputError(f"mean, var and targets must have equal sizes, got {mu.numel()}, {v.numel()}, {y.numel()}")
        if not bool(torch.isfinite(mu).all() and torch.isfinite(v).all()):
            raise NonFinitePredictionError(
                "predictive means or variances hold NaN or infinite values: the network's predictions are not "
                "finite (did it diverge?)"
            )
        if bool((v <= 0).any()):
            raise InputError("predictive variances must be positive")
        err = y - mu
        self.n += y.numel()
        self.se_sum += float((err**2).sum())
        self.nll_sum += float((0.5 * torch.log(2 * math.pi * v) + err**2 / (2 * v)).sum())
        self.covered += float((err.abs() <= _Z95 * v.sqrt()).double().sum())

    def all_reduce(self, group: Any = None) -> RegressionMetrics:
        """Sum the state (count and sums) over the ranks of a ``torch.distributed`` group; a no-op without a
        process group. Call it once, after the last :meth:`update`. Returns ``self``."""
        (n, se, nll, cov), _ = _all_reduce_sums([self.n, self.se_sum, self.nll_sum, self.covered], [], group)
        self.n, self.se_sum, self.nll_sum, self.covered = int(round(n)), se, nll, cov
        return self

    def compute(self) -> dict[str, float]:
        """``rmse``, ``nll`` (mean), ``coverage_95`` and ``n``."""
        if self.n == 0:
            raise InputError("no examples were added; call update(mean, var, targets) first")
        return {
            "rmse": math.sqrt(self.se_sum / self.n),
            "nll": self.nll_sum / self.n,
            "coverage_95": self.covered / self.n,
            "n": self.n,
        }


def regression_metrics(mean: Tensor, var: Tensor, targets: Tensor) -> dict[str, float]:
    """One-shot :class:`RegressionMetrics` on full tensors."""
    m = RegressionMetrics()
    m.update(mean, var, targets)
    return m.compute()
