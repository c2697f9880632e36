"""The posterior over subspace coordinates z (Izmailov et al. 2019, "Subspace Inference for Bayesian Deep
Learning", UAI):

    log p(z | D) = -(1 / T) sum_{(x, y) in D} nll(y | f(x; w(z))) + log N(z; 0, s^2 I) + const,
    w(z) = shift + z @ basis,

with the temperature T dividing the likelihood only (T = 1 is the Bayes posterior; the paper needed large T
for classification) and s the prior scale. ``nll`` is the adapter's loss (cross-entropy on logits, or the
Gaussian NLL of a (mean, variance) head), summed over the whole data set: the mean loss over N examples
times N.

Evaluations go through the engine (:func:`valleys.evaluation.engine.evaluate_many`): many z at once are
evaluated like the points of a grid (vmap or loop, chosen by timing). BatchNorm (``bn``):

* ``"shift"`` (the default for BatchNorm models): statistics recomputed once at the shift, on a copy of the
  model, and kept for every z (cheap; the paper's choice);
* ``"recompute"``: recomputed for every z on ``bn_loader`` (exact, one extra pass per z);
* ``"keep"``: the model's current statistics.

The user's model is never modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.batches import as_tensor, to_device
from ..core.batchnorm import EmptyLoaderError, has_batchnorm, recompute_bn
from ..core.weights import WeightSpace, preserved_modes
from ..errors import InputError, InputTypeError
from ..evaluation.engine import BNPolicy, LossError, VmapPolicy, evaluate_many
from ..evaluation.folding import AffinePoints
from .samplers import gaussian_log_prior
from .subspace import Subspace

__all__ = ["SubspacePosterior", "SUBSPACE_BN"]

SUBSPACE_BN = ("shift", "recompute", "keep")


class SubspacePosterior:
    """``log p(z | D)`` over a :class:`valleys.methods.subspace.Subspace` of ``model``'s weights.

    Args:
        model: the network (left untouched).
        subspace: shift and basis over ``space`` (default: all trainable parameters).
        loader: the training data D (a loader or a list of batches; the same batches on every pass).
        temperature: T > 0, dividing the log-likelihood.
        prior_scale: s > 0, the prior N(0, s^2 I) over z.
        adapter: batch format, prediction and loss (default: tuple batches, cross-entropy).
        bn: ``"shift"``, ``"recompute"`` or ``"keep"`` (see the module docstring); ignored without BatchNorm.
        bn_loader: the loader for BatchNorm statistics (default: ``loader``).
        device: where batches go.
    """

    def __init__(
        self,
        model: nn.Module,
        subspace: Subspace,
        loader: Iterable,
        *,
        temperature: float = 1.0,
        prior_scale: float = 1.0,
        adapter: ModelAdapter | None = None,
        bn: str = "shift",
        bn_loader: Iterable | None = None,
        space: WeightSpace | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise InputError(f"the temperature must be a finite number > 0, got {temperature!r}")
        if not (isinstance(prior_scale, (int, float)) and math.isfinite(prior_scale) and prior_scale > 0):
            raise InputError(f"the prior scale must be a finite number > 0, got {prior_scale!r}")
        if bn not in SUBSPACE_BN:
            raise InputError(f"unknown BatchNorm policy {bn!r}; choose one of {', '.join(SUBSPACE_BN)}")
        if not isinstance(subspace, Subspace):
            raise InputTypeError(
                f"subspace must be a valleys.methods.subspace.Subspace (from pca_subspace, random_subspace or "
                f"curve_subspace), got {type(subspace).__name__}"
            )
        self.space = space or WeightSpace(model)
        if subspace.num_weights != self.space.size:
            raise InputError(
                f"the subspace lives in a weight space of {subspace.num_weights} weights but the model "
                f"has {self.space.size}: a different architecture"
            )
        self.adapter = adapter or ModelAdapter()
        self.subspace = subspace
        self.loader = loader
        self.temperature = float(temperature)
        self.prior_scale = float(prior_scale)
        # batches go where the model is unless told otherwise (a CUDA model fed by CPU loaders)
        self.device = device if device is not None else next((p.device for p in model.parameters()), None)
        self.bn_label = bn if has_batchnorm(model) else "none (no BatchNorm)"
        bn_loader = loader if bn_loader is None else bn_loader
        if has_batchnorm(model) and bn == "shift":
            model = copy.deepcopy(model)  # statistics at the shift, kept for every z; the user's model untouched
            with self.space.at(model, subspace.shift.to(self.space.parameters(model)[0]), keep_buffers=True):
                recompute_bn(model, bn_loader, device=self.device, adapter=self.adapter)
            self.policy = BNPolicy("keep")
        elif has_batchnorm(model) and bn == "recompute":
            self.policy = BNPolicy("recompute", bn_loader)
        else:
            self.policy = BNPolicy("keep")
        self.model = model
        self.num_examples = self._count()
        self.evaluations = 0

    def _count(self) -> int:
        n = 0
        for batch in self.loader:
            y = self.adapter.targets(batch)
            n += int(y.shape[0]) if isinstance(y, Tensor) and y.dim() > 0 else len(y)
        if n == 0:
            raise EmptyLoaderError("the training loader of the subspace posterior yielded no examples")
        return n

    # ------------------------------------------------------------------ densities
    def log_prior(self, z: Tensor) -> Tensor:
        """``log N(z; 0, s^2 I)`` for (k,) or (n, k)."""
        return gaussian_log_prior(as_tensor(z, torch.float64), self.prior_scale)

    def log_likelihood(self, z: Tensor, *, batched: bool | str | VmapPolicy = "auto") -> Tensor:
        """The tempered log-likelihood ``-(N / T) * mean nll`` at (k,) -> scalar, or at (n, k) -> (n,), through
        the engine (no gradients). A non-finite network output gives ``-inf``."""
        z = as_tensor(z, torch.float64)
        single = z.dim() == 1
        zs = z[None] if single else z
        sub = self.subspace
        weights = AffinePoints(sub.basis, zs, sub.shift, dtype=sub.basis.dtype)  # shift + z B, foldable
        res = evaluate_many(
            self.model,
            weights,
            {"data": self.loader},
            reduce=LossError(self.adapter),
            adapter=self.adapter,
            bn=self.policy,
            space=self.space,
            batched=batched,
        )
        self.evaluations += len(zs)
        mean = torch.tensor(res.value["data"]["loss"], dtype=torch.float64, device="cpu")
        ll = -self.num_examples * mean / self.temperature
        ll = torch.where(torch.isnan(ll), torch.full_like(ll, -math.inf), ll)
        return ll[0] if single else ll

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z | D)`` up to a constant: the tempered log-likelihood plus the log prior."""
        return self.log_likelihood(z) + self.log_prior(z)

    def differentiable_log_likelihood(self, z: Tensor, batch: Any | None = None) -> Tensor:
        """The tempered log-likelihood as a differentiable function of z (for VI and NUTS), in eval mode:
        over the whole loader, or over one ``batch`` scaled by ``N / len(batch)`` (an unbiased minibatch
        estimate). BatchNorm uses the statistics of the policy ``"shift"``/``"keep"`` (``"recompute"`` is not
        differentiable per z and is refused here)."""
        if self.policy.mode == "recompute" and has_batchnorm(self.model):
            raise InputError("gradients through a per-z BatchNorm recompute are not available; use bn='shift'")
        z = as_tensor(z)
        w = self.subspace.shift + z.to(self.subspace.basis) @ self.subspace.basis
        views = self.space.views(w)
        batches = self.loader if batch is None else [batch]
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        seen = 0
        with preserved_modes(self.model, train=False):
            for b in batches:
                args, kwargs = self.adapter.inputs(b)
                args, kwargs = to_device(args, self.device), to_device(kwargs, self.device)
                pred = self.adapter.prediction(self.space.call_with(self.model, views, args, kwargs))
                y = self.adapter.targets(b)
                y = y.to(pred.device) if isinstance(y, Tensor) else y
                n = int(y.shape[0]) if isinstance(y, Tensor) and y.dim() > 0 else len(y)
                total = total + self.adapter.loss_fn(pred, y).to(torch.float64) * n
                seen += n
        self.evaluations += 1
        scale = self.num_examples / max(seen, 1)
        return -(total * scale) / self.temperature
