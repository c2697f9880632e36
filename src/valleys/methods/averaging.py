"""Weight averaging on flat vectors: SWA (uniform running mean with Welford moments) and EMA.

SWA (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization", UAI):
collect weights ``w_1 .. w_n`` along the SGD trajectory and keep

    m_{n+1} = m_n + (w - m_n) / (n + 1)                      (the first collect copies)
    M2_{n+1} = M2_n + (w - m_n) * (w - m_{n+1})  = M2_n + delta^2 * n / (n + 1),   delta = w - m_n

(Welford 1962), so ``variance = M2 / n`` is exact in floating point, where ``E[w^2] - E[w]^2`` in float32
cancels to garbage when |mean| >> std. SWAG (Maddox et al. 2019) builds on these moments.

Use in your own loop::

    swa = SWA(model)
    for epoch in range(epochs):
        train_one_epoch(model)
        if epoch >= swa_start:
            swa.collect(model)
    swa.apply(model, train_loader)   # writes the mean into model and recomputes BatchNorm
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batchnorm import recompute_bn
from ..core.weights import WeightSpace, WeightSpaceError
from ..errors import InputError, NotCollectedError, UsageError

__all__ = ["Averager", "SWA", "EMA", "NotCollectedError", "welford_"]


def welford_(means: list[Tensor], m2s: list[Tensor] | None, deltas: list[Tensor], n: int) -> None:
    """One Welford (1962) step in place over lists of tensors (views of flat buffers, or slices of them):
    ``m += d / (n + 1)`` and, with ``m2s``, ``M2 += d^2 n / (n + 1)``, where ``d = w - m_old`` and ``n`` is
    the number of collects before this one. SWA, SWAG and the sharded SWAG all collect through it."""
    torch._foreach_add_(means, deltas, alpha=1.0 / (n + 1))
    if m2s is not None and n > 0:
        torch._foreach_addcmul_(m2s, deltas, deltas, value=n / (n + 1))


#: parameter dtypes whose averages and moments are kept in float32 by default
LOW_PRECISION = (torch.float16, torch.bfloat16)


class Averager:
    """Common part of :class:`SWA` and :class:`EMA`: a flat mean over a :class:`WeightSpace`.

    Args:
        model: defines the weight space (and, by default, the device and dtype of the buffers).
        names: optional parameter subset (see :class:`WeightSpace`).
        device, dtype: where to keep the buffers (e.g. ``"cpu"`` to offload a GPU model; ``torch.float64``).
            By default the parameters' dtype, but at least float32: a model held in bfloat16 or float16
            (pure low-precision training) is averaged in float32, whose 24-bit significand keeps the small
            steps between iterates that a 8- or 11-bit one rounds away. Under ``torch.autocast`` the
            parameters stay float32, and so do the averages.
        check_finite: refuse to collect weights with NaN or inf entries (one extra reduction per collect).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        self.space = WeightSpace(model, names)
        ref = self.space.parameters(model)[0]
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype or (torch.float32 if self.space.dtype in LOW_PRECISION else self.space.dtype)
        self.check_finite = check_finite
        self.n = 0
        self._mean = torch.zeros(self.space.size, device=self.device, dtype=self.dtype)
        self._mean_views = self.space.views(self._mean)

    # ------------------------------------------------------------------ inputs
    def _current(self, source: nn.Module | Tensor) -> list[Tensor]:
        """The collected weights as a list of tensors aligned with the flat layout (no copy for modules)."""
        if isinstance(source, Tensor):
            self.space.check_vector(source, what="collected weight vector", finite=False)
            return self.space.views(source.detach().to(self.device, self.dtype))
        ps = [p.detach() for p in self.space.parameters(source)]  # names and shapes checked every time
        if ps[0].device != self.device or ps[0].dtype != self.dtype:
            ps = [p.to(self.device, self.dtype) for p in ps]
        return ps

    def collect(self, source: nn.Module | Tensor) -> None:
        """Fold the weights of a module (or a flat vector) into the average (SWA: equal weights; EMA: decay)."""
        raise NotImplementedError

    def _check_finite(self, delta: list[Tensor]) -> None:
        if self.check_finite:
            total = torch.stack(torch._foreach_norm(delta)).sum()
            if not torch.isfinite(total):
                raise WeightSpaceError(
                    f"collect #{self.n + 1}: the weights hold NaN or infinite entries; nothing was collected "
                    "(training has diverged: lower the learning rate or resume from the last good checkpoint)"
                )

    # ------------------------------------------------------------------ outputs
    @property
    def mean(self) -> Tensor:
        """The current average as a flat vector (raises if nothing was collected)."""
        if self.n == 0:
            raise NotCollectedError(
                f"{type(self).__name__}: no weights collected yet; call collect(model) during training first"
            )
        return self._mean

    def write(self, model: nn.Module) -> None:
        """Write the average into ``model``'s parameters (BatchNorm statistics are NOT updated: see apply)."""
        self.space.write(model, self.mean.to(self.space.parameters(model)[0].device, self.space.dtype))

    def apply(self, model: nn.Module, loader: Iterable | None = None, **bn_kwargs: Any) -> nn.Module:
        """Write the average into ``model`` and, given a training ``loader``, recompute its BatchNorm
        statistics with :func:`valleys.core.batchnorm.recompute_bn` (keyword arguments go there). Returns model."""
        self.write(model)
        if loader is not None:
            recompute_bn(model, loader, **bn_kwargs)
        return model

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain state: ``n`` and the flat buffers (tensors)."""
        return {"kind": type(self).__name__, "n": self.n, "size": self.space.size, "mean": self._mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`, after checking kind and size."""
        if state.get("kind") != type(self).__name__ or int(state.get("size", -1)) != self.space.size:
            raise WeightSpaceError(
                f"state of a {state.get('kind')} over {state.get('size')} weights cannot be loaded into a "
                f"{type(self).__name__} over {self.space.size} weights"
            )
        self.n = int(state["n"])
        self._mean.copy_(state["mean"])


class SWA(Averager):
    """Stochastic Weight Averaging: uniform running mean of collected weights, with Welford second moments.

    ``collect`` costs O(P): ``delta = w - m``; ``m += delta / (n + 1)``; ``M2 += delta^2 n / (n + 1)``,
    computed with ``torch._foreach`` kernels over per-parameter views (no flattening copy).
    ``moments=False`` keeps only the mean (SWA proper); SWAG needs the moments.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        *,
        moments: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(model, names, device=device, dtype=dtype, check_finite=check_finite)
        self.moments = moments
        self._m2 = torch.zeros_like(self._mean) if moments else None
        self._m2_views = self.space.views(self._m2) if self._m2 is not None else None

    def collect(self, source: nn.Module | Tensor) -> None:
        """Add the weights of a module (or a flat vector) to the average."""
        w = self._current(source)
        delta = list(torch._foreach_sub(w, self._mean_views))
        self._check_finite(delta)
        n = self.n
        welford_(self._mean_views, self._m2_views, delta, n)
        self.n = n + 1
        self._after_collect(delta, n)

    def _after_collect(self, delta: list[Tensor], n_before: int) -> None:
        """Hook for subclasses (SWAG's deviation buffer): ``delta = w - m_old``, ``n_before`` collects before."""

    @property
    def variance(self) -> Tensor:
        """Per-weight population variance ``M2 / n`` of the collected weights (Welford)."""
        if self._m2 is None:
            raise UsageError("this SWA was created with moments=False; pass moments=True to keep variances")
        return self._m2 / self.mean.new_tensor(float(self.n))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._m2 is not None:
            state["m2"] = self._m2
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._m2 is not None:
            if "m2" not in state:
                raise WeightSpaceError("this SWA keeps second moments but the state has none")
            self._m2.copy_(state["m2"])


class EMA(Averager):
    """Exponential moving average ``m <- decay * m + (1 - decay) * w`` (the first collect copies).

    With ``warmup=True`` the effective decay is ``min(decay, 1 - 1 / (n + 1))`` so early averages are
    uniform (as in mean teacher, Tarvainen & Valpola 2017).
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        names: Sequence[str] | None = None,
        *,
        warmup: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        if not 0 <= decay < 1:
            raise InputError(f"decay must be in [0, 1), got {decay}")
        super().__init__(model, names, device=device, dtype=dtype, check_finite=check_finite)
        self.decay = decay
        self.warmup = warmup

    def collect(self, source: nn.Module | Tensor) -> None:
        """Move the average towards the current weights."""
        w = self._current(source)
        delta = list(torch._foreach_sub(w, self._mean_views))
        self._check_finite(delta)
        if self.n == 0:
            weight = 1.0
        else:
            decay = min(self.decay, 1 - 1 / (self.n + 1)) if self.warmup else self.decay
            weight = 1 - decay
        torch._foreach_add_(self._mean_views, delta, alpha=weight)
        self.n += 1
