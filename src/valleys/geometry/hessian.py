"""Flatness of a solution: Hessian-vector products, top eigenvalues, trace, epsilon-sharpness (talk slide 6).

The loss is ``L(w) = mean over a fixed list of batches of loss_fn(f(x; w), y)``, evaluated functionally at
the flat weight vector ``w`` (:class:`valleys.WeightSpace`) with the model in a stated mode: ``"eval"`` (the
default: BatchNorm uses its running statistics, Dropout is off, so L is a deterministic function of w) or
``"train"``.

* ``hvp(v) = d/de grad L(w + e v)`` by forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``).
* Top-k eigenvalues by Lanczos with full reorthogonalisation (Lanczos 1950; Golub & Van Loan 10.1): the k
  largest (algebraic) eigenvalues of the m x m tridiagonal matrix after m products; far fewer products than
  power iteration for the same accuracy (power iteration finds the largest in magnitude instead).
* Trace by Hutchinson's estimator ``E[z^T H z]`` with Rademacher z (Hutchinson 1990), with its standard error.
* Epsilon-sharpness (Keskar et al. 2017): ``max_{|d_i| <= eps (|w_i| + 1)} L(w + d) - L(w)``, by projected
  gradient ascent, reported relative to ``1 + L(w)`` as in the paper (times 100).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batches import default_input_fn, default_target_fn
from ..core.weights import WeightSpace, preserved_modes

__all__ = ["LossFunction", "lanczos", "power_iteration", "hutchinson_trace", "epsilon_sharpness"]


class LossFunction:
    """``L(w)`` over a fixed data subset, its gradient and Hessian-vector products, at flat vectors ``w``.

    Args:
        model: the network (left untouched: evaluation is functional).
        batches: a fixed list of batches (kept in memory; use a subset of the training data).
        loss_fn: ``loss_fn(output, target)`` (mean over the batch), e.g. ``nn.functional.cross_entropy``.
        mode: ``"eval"`` (BatchNorm running statistics, no Dropout) or ``"train"``.
        space: the weight space (default: all trainable parameters).
    """

    def __init__(self, model: nn.Module, batches: Iterable, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 *, mode: str = "eval", space: WeightSpace | None = None, input_fn=None, target_fn=None) -> None:
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        from ..core.batchnorm import has_batchnorm

        if mode == "train" and has_batchnorm(model):
            raise ValueError("mode='train' on a model with BatchNorm would update its running statistics and is "
                             "not a function of w alone; use mode='eval' (the default)")
        self.model, self.mode = model, mode
        self.space = space or WeightSpace(model)
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        input_fn = input_fn or default_input_fn
        target_fn = target_fn or default_target_fn
        self.batches = [(input_fn(b), target_fn(b)) for b in batches]
        if not self.batches or sum(len(y) for _, y in self.batches) == 0:
            raise ValueError("the data subset is empty: pass at least one non-empty batch")
        self.weights = [float(len(y)) for _, y in self.batches]
        self.num_hvp = 0

    def _loss(self, w: Tensor) -> Tensor:
        params = self.space.views(w)
        total = sum(self.weights)
        out = 0.0
        for (x, y), n in zip(self.batches, self.weights):
            pred = self.space.call_with(self.model, params, (x,))
            out = out + self.loss_fn(pred, y) * (n / total)
        return out

    def _in_mode(self, fn: Callable[[], Any]) -> Any:
        with preserved_modes(self.model, train=self.mode == "train"):
            return fn()

    def value(self, w: Tensor) -> float:
        """``L(w)``."""
        with torch.no_grad():
            return float(self._in_mode(lambda: self._loss(w)))

    def grad(self, w: Tensor) -> Tensor:
        """``grad L(w)``."""
        return self._in_mode(lambda: torch.func.grad(self._loss)(w)).detach()

    def hvp(self, w: Tensor, v: Tensor) -> Tensor:
        """``H(w) v`` by forward-over-reverse differentiation."""
        self.num_hvp += 1
        return self._in_mode(lambda: torch.func.jvp(torch.func.grad(self._loss), (w,), (v,))[1]).detach()


def lanczos(loss: LossFunction, w: Tensor, k: int = 1, *, iterations: int | None = None,
            generator: torch.Generator | None = None, tol: float = 0.0) -> dict[str, Any]:
    """Top-``k`` Hessian eigenvalues (largest first) and eigenvectors at ``w`` by Lanczos.

    Runs ``iterations`` products (default ``max(3k, 20)``, at most P), with full reorthogonalisation in
    float64; returns ``eigenvalues`` (k,), ``eigenvectors`` (k, P) and ``num_hvp``. ``tol > 0`` stops early
    once the top-k Ritz values change by less than ``tol`` relative between two iterations.
    """
    p = w.numel()
    if not isinstance(k, int) or k < 1 or k > p:
        raise ValueError(f"k must be between 1 and the number of parameters ({p}), got {k}")
    m = min(p, iterations or max(3 * k, 20))
    if m < k:
        raise ValueError(f"iterations ({m}) must be at least k ({k})")
    start = loss.num_hvp
    q = torch.randn(p, generator=generator, dtype=torch.float64)
    q /= q.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    prev: Tensor | None = None
    for j in range(m):
        z = loss.hvp(w, basis[-1].to(w.dtype)).double()
        alpha = float(z @ basis[-1])
        alphas.append(alpha)
        qs = torch.stack(basis)
        z -= qs.T @ (qs @ z)  # full reorthogonalisation (twice is enough)
        z -= qs.T @ (qs @ z)
        beta = float(z.norm())
        if tol > 0 and j + 1 >= k:
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                t += torch.diag(off, 1) + torch.diag(off, -1)
            cur = torch.linalg.eigvalsh(t).flip(0)[:k]
            if prev is not None and bool(((cur - prev).abs() <= tol * cur.abs().clamp_min(1e-12)).all()):
                break
            prev = cur
        if j == m - 1 or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(z / beta)
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)
    order = torch.argsort(evals, descending=True)[:k]
    vectors = evecs[:, order].T @ torch.stack(basis[:n])
    return {"eigenvalues": evals[order], "eigenvectors": vectors.to(w.dtype), "num_hvp": loss.num_hvp - start}


def power_iteration(loss: LossFunction, w: Tensor, *, iterations: int = 100, tol: float = 0.0,
                    generator: torch.Generator | None = None) -> dict[str, Any]:
    """The eigenvalue of largest magnitude by power iteration (the baseline Lanczos is measured against)."""
    v = torch.randn(w.numel(), generator=generator, dtype=torch.float64)
    v /= v.norm()
    start = loss.num_hvp
    value = 0.0
    for _ in range(iterations):
        hv = loss.hvp(w, v.to(w.dtype)).double()
        new = float(v @ hv)
        norm = float(hv.norm())
        if norm == 0:
            break
        v = hv / norm
        if tol > 0 and abs(new - value) <= tol * abs(new):
            value = new
            break
        value = new
    return {"eigenvalue": value, "eigenvector": v.to(w.dtype), "num_hvp": loss.num_hvp - start}


def hutchinson_trace(loss: LossFunction, w: Tensor, samples: int = 100,
                     generator: torch.Generator | None = None) -> dict[str, float]:
    """``tr(H) ~ mean_i z_i^T H z_i`` with Rademacher ``z_i``; returns ``trace``, ``stderr`` and ``samples``."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (for a standard error), got {samples}")
    vals = []
    for _ in range(samples):
        z = torch.randint(0, 2, (w.numel(),), generator=generator).to(w.dtype) * 2 - 1
        vals.append(float(z @ loss.hvp(w, z)))
    t = torch.tensor(vals, dtype=torch.float64)
    return {"trace": float(t.mean()), "stderr": float(t.std() / math.sqrt(samples)), "samples": samples}


def epsilon_sharpness(loss: LossFunction, w: Tensor, epsilon: float = 1e-3, *, steps: int = 20,
                      lr: float | None = None) -> dict[str, float]:
    """Keskar et al. (2017) sharpness: the largest loss increase in the box ``|d_i| <= eps (|w_i| + 1)``.

    Projected gradient ascent: sign steps of ``lr`` times the box half-width (default 0.25), clipped to the box.
    Returns ``increase`` (``max L(w + d) - L(w)``), ``sharpness`` (``100 increase / (1 + L(w))``) and ``base``.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    box = epsilon * (w.abs() + 1)
    step = box * (lr if lr is not None else 0.25)
    base = loss.value(w)
    d = torch.zeros_like(w)
    best = base
    for _ in range(steps):
        g = loss.grad(w + d)
        d = torch.maximum(torch.minimum(d + step * g.sign(), box), -box)
        best = max(best, loss.value(w + d))
    inc = best - base
    return {"increase": inc, "sharpness": 100 * inc / (1 + base), "base": base, "epsilon": epsilon}
