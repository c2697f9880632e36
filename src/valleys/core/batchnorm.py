"""Recompute BatchNorm statistics for the weights a network holds now.

Weights the network was never trained at (an SWA average, a SWAG sample, a point on a curve or a plane) come
without valid running statistics. :func:`recompute_bn` is the one routine every method calls for them
(Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima", Alg. 1 last step).

Statistics are exact: each BatchNorm layer runs with momentum 1 during the pass, so after every batch its
running buffers hold that batch's per-channel mean and unbiased variance (computed by the layer itself, no
extra pass over the activations); a forward hook combines them across batches in float64 with Chan's
parallel update ``M2 = M2_a + M2_b + delta^2 n_a n_b / (n_a + n_b)``, so unequal batch sizes are weighted
correctly. The running mean becomes the data mean and the running variance the unbiased data variance
(PyTorch's convention for ``running_var``). Momenta and every module's train/eval flag are restored.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Sized

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import EmptyLoaderError, InputError, InputTypeError
from .adapter import ModelAdapter, as_adapter
from .weights import preserved_modes

__all__ = ["recompute_bn", "has_batchnorm", "EmptyLoaderError"]


def has_batchnorm(model: nn.Module) -> bool:
    """True if the model has a BatchNorm layer that tracks running statistics."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def _running_stats(module: nn.Module) -> tuple[Tensor, Tensor]:
    """``(running_mean, running_var)`` of a BatchNorm layer that tracks running statistics."""
    mean, var = module.running_mean, module.running_var
    assert isinstance(mean, Tensor) and isinstance(var, Tensor), "a BatchNorm layer without running statistics"
    return mean, var


class _Moments:
    """Per-channel count, mean and M2 of a BN layer's inputs, combined exactly across batches."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        # with momentum 1 the layer's running buffers now hold this batch's mean and unbiased variance
        x = args[0]
        nb = x.numel() // x.shape[1]
        running_mean, running_var = _running_stats(module)
        mean_b = running_mean.detach().double()
        m2_b = running_var.detach().double() * max(nb - 1, 1)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    def all_reduce(self, like: Tensor) -> None:
        """Combine the moments of all ranks of a torch.distributed group (sum of n, sum, sum of squares) in one
        collective. A rank whose forward never reached the layer (no batch, or a branch it did not take)
        takes part with zeros (``like``: the layer's running mean, for the shape and device), so every rank
        calls the same collectives in the same order and none waits forever."""
        if self.mean is None or self.m2 is None:
            mean = torch.zeros_like(like, dtype=torch.float64)
            m2 = torch.zeros_like(mean)
        else:
            mean, m2 = self.mean, self.m2
        flat = torch.cat(
            [
                torch.tensor([float(self.n)], dtype=torch.float64, device=mean.device),
                mean * self.n,
                m2 + self.n * mean.pow(2),
            ]
        )  # count, sum, sum of squares about zero
        dist.all_reduce(flat)
        c = mean.numel()
        self.n = int(round(float(flat[0])))
        if self.n == 0:
            self.mean = self.m2 = None
            return
        self.mean = flat[1 : 1 + c] / self.n
        self.m2 = flat[1 + c :] - self.n * self.mean.pow(2)


def _agree_on_batches(seen: int, device: torch.device) -> None:
    """Under torch.distributed: warn on a rank that saw no batch (it still takes part); raise on every rank
    when no rank saw one."""
    total = torch.tensor([float(seen)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    if total.item() == 0:
        raise EmptyLoaderError(
            "recompute_bn: the loader yielded no batches on any rank; pass a non-empty training loader"
        )
    if seen == 0:
        warnings.warn(
            f"recompute_bn: rank {dist.get_rank()} has no batches; it takes part in the all-reduce with zero counts",
            RuntimeWarning,
            stacklevel=3,
        )


def recompute_bn(
    model: nn.Module,
    loader: Iterable,
    *,
    adapter: ModelAdapter | None = None,
    num_batches: int | None = None,
    fraction: float | None = None,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
) -> int:
    """Set every BatchNorm layer's running statistics to the exact statistics of its inputs over ``loader``.

    For each ``_BatchNorm`` layer with running statistics: ``running_mean = mean(x)`` and
    ``running_var = sum((x - mean)^2) / (n - 1)`` over all examples (and spatial positions) of the pass,
    where the network runs forward in train mode without gradients, as in SWA's final BN update.

    Args:
        model: the network, already holding the weights to recompute for. Modified in place (buffers only).
        loader: iterable of batches (tensors, ``(input, target)`` tuples or dicts).
        adapter: a :class:`valleys.core.adapter.ModelAdapter` mapping a batch to the model call (dict batches
            keep every non-target key, e.g. masks; ``ModelAdapter(input=callable)`` for anything else);
            default ``ModelAdapter()``.
        num_batches: use only the first ``num_batches`` batches.
        fraction: use only the first ``ceil(fraction * len(loader))`` batches (needs ``len(loader)``).
        device: move inputs there first (default: the device of the BatchNorm layers' statistics, so that a
            CUDA model is fed by CPU loaders).
        distributed: all-reduce statistics over ``torch.distributed`` ranks; default: if initialised.

    Returns:
        The number of batches used (0 when the model has no BatchNorm layer; then nothing runs).

    Raises:
        EmptyLoaderError: the loader (or the chosen subset) has no batches.
        InputError: ``num_batches`` < 1 or ``fraction`` outside (0, 1], or both given.
    """
    if num_batches is not None and fraction is not None:
        raise InputError("give num_batches or fraction, not both")
    if num_batches is not None and num_batches < 1:
        raise InputError(f"num_batches must be at least 1, got {num_batches}")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise InputError(f"fraction must be in (0, 1], got {fraction}")
        if not isinstance(loader, Sized):
            raise InputTypeError(f"fraction= needs a loader with a length; {type(loader).__name__} has none")
        num_batches = max(1, math.ceil(fraction * len(loader)))
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    from .weights import unwrap

    model = unwrap(model)  # a torch.compile wrapper: the train-mode passes run the original module eagerly
    adapter = as_adapter(adapter)
    if device is None:
        device = layers[0].running_mean.device if layers[0].running_mean is not None else None
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    saved = {
        m: [b.detach().clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        for m in layers
    }
    moments = {m: _Moments() for m in layers}
    momenta = {m: m.momentum for m in layers}
    hooks = [m.register_forward_hook(moments[m]) for m in layers]
    for m in layers:
        m.momentum = 1.0
    seen = 0
    try:
        batches = loader if num_batches is None else itertools.islice(loader, num_batches)
        with preserved_modes(model, train=True), torch.no_grad():
            for batch in batches:
                adapter.call_inputs(model, batch, device)
                seen += 1
    except BaseException:  # leave the statistics as they were, not half-updated by momentum
        with torch.no_grad():
            for m, bufs in saved.items():
                for b, old in zip(
                    [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None],
                    bufs,
                    strict=True,
                ):
                    b.copy_(old)
        raise
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in momenta.items():
            m.momentum = momentum
    if seen == 0 and not distributed:
        with torch.no_grad():
            for m, bufs in saved.items():
                for b, old in zip(
                    [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None],
                    bufs,
                    strict=True,
                ):
                    b.copy_(old)
        raise EmptyLoaderError("recompute_bn: the loader yielded no batches; pass a non-empty training loader")
    if distributed:
        _agree_on_batches(seen, _running_stats(layers[0])[0].device)
    with torch.no_grad():
        for m in layers:
            mom = moments[m]
            running_mean, running_var = _running_stats(m)
            if distributed:  # every rank, every layer, same order: also a rank that saw no batch or skipped it
                mom.all_reduce(running_mean)
            if mom.mean is None or mom.m2 is None:  # layer not reached by any forward (e.g. an unused branch)
                continue
            running_mean.copy_(mom.mean.to(running_mean.dtype))
            var = mom.m2 / max(mom.n - 1, 1)
            running_var.copy_(var.to(running_var.dtype))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(seen)
    return seen
