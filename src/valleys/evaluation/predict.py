"""Predictions of a network over a loader, streamed into :mod:`valleys.evaluation.metrics`.

:func:`predict_probs` is the one evaluation loop (eval mode, no gradients, softmax in float64, the model's
train/eval flags restored afterwards). :func:`evaluate` scores one network; :func:`bma` scores the Bayesian
model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))`` over any source of weights: SWAG samples (flat
vectors, BatchNorm recomputed per sample), FGE snapshots or ensemble members (full state dicts, used as they
are), MultiSWAG. Probabilities are averaged, never logits, and streamed: one running sum per test example.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..core.batches import InputFn, as_call_args, call_model, default_input_fn, default_target_fn, to_device
from ..core.batchnorm import EmptyLoaderError, has_batchnorm, recompute_bn
from .metrics import ClassificationMetrics, RegressionMetrics
from ..core.weights import WeightSpace, preserved_modes

__all__ = ["evaluate", "predict_probs", "bma", "Sample"]

Sample = Union[Tensor, Mapping[str, Tensor]]


def softmax_probs(output: Tensor) -> Tensor:
    """Classification: the predictive is ``softmax(logits)`` (float64); BMA averages it."""
    return torch.softmax(output.double(), dim=-1)


def gaussian_moments(output: Tensor) -> Tensor:
    """Gaussian regression heads output ``(mean, variance)`` per example as an (N, 2) tensor; BMA averages the
    first two moments ``(mu, var + mu^2)`` so that the mixture's variance is ``E[var + mu^2] - E[mu]^2``."""
    out = output.double()
    if out.dim() != 2 or out.shape[1] != 2:
        raise ValueError(f"a Gaussian head must output (N, 2) = (mean, variance), got {tuple(out.shape)}")
    mu, var = out[:, 0], out[:, 1]
    return torch.stack([mu, var + mu * mu], dim=1)


LIKELIHOODS = {"classification": softmax_probs, "gaussian": gaussian_moments}


def predict_probs(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
                  input_fn: InputFn | None = None, target_fn=None, transform=softmax_probs):
    """Yield ``(transform(output), targets)`` per batch, by default ``(probs, targets)``, with the model in
    eval mode (flags restored when exhausted). This is the one prediction loop of valleys."""
    input_fn = input_fn or default_input_fn
    target_fn = target_fn or default_target_fn
    with preserved_modes(model, train=False), torch.no_grad():
        for batch in loader:
            output = call_model(model, to_device(input_fn(batch), device))
            yield transform(output), target_fn(batch)


def predict_stacked(model: nn.Module, space: WeightSpace, stacked: Tensor, loader: Iterable, *,
                    device: torch.device | str | None = None, input_fn: InputFn | None = None, target_fn=None):
    """The same loop for ``c`` weight vectors at once: yield ``(outputs (c, N, ...), targets)`` per batch,
    computed with ``torch.func.vmap`` over the rows of ``stacked`` (c, P), in eval mode (flags restored)."""
    input_fn = input_fn or default_input_fn
    target_fn = target_fn or default_target_fn
    with preserved_modes(model, train=False), torch.no_grad():
        for batch in loader:
            yield _vmap_outputs(model, space, stacked, to_device(input_fn(batch), device)), target_fn(batch)


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             input_fn: InputFn | None = None, target_fn=None, bins: int = 15,
             reliability: bool = False, likelihood: str = "classification") -> dict[str, Any]:
    """Metrics of one network on ``loader``: classification (accuracy, error, NLL, Brier, ECE, MCE) or, with
    ``likelihood="gaussian"``, regression (RMSE, NLL, 95% coverage) from a ``(mean, variance)`` head.

    The model is evaluated in eval mode and left in the mode it had. ``reliability=True`` keeps the
    per-bin reliability data in a classification result.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    if likelihood == "gaussian":
        reg = RegressionMetrics()
        for m, targets in predict_probs(model, loader, device=device, input_fn=input_fn, target_fn=target_fn,
                                        transform=gaussian_moments):
            reg.update(m[:, 0], m[:, 1] - m[:, 0] ** 2, targets)
        if reg.n == 0:
            raise EmptyLoaderError("evaluate: the loader yielded no examples")
        return reg.compute()
    metrics = ClassificationMetrics(bins)
    for probs, targets in predict_probs(model, loader, device=device, input_fn=input_fn, target_fn=target_fn):
        metrics.update(probs, targets)
    if metrics.n == 0:
        raise EmptyLoaderError("evaluate: the loader yielded no examples")
    out = metrics.compute()
    if not reliability:
        out.pop("reliability")
    return out


@contextlib.contextmanager
def holding(model: nn.Module, sample: Sample, space: WeightSpace) -> Iterator[nn.Module]:
    """The model holds ``sample`` inside the block (a flat weight vector over ``space``, or a full state
    dict) and is restored bit for bit afterwards: parameters, buffers and train/eval flags."""
    if isinstance(sample, Tensor):
        with space.at(model, sample.to(space.parameters(model)[0].device)):
            yield model
        return
    from ..core.checkpoint import check_model_signature

    check_model_signature([[k, list(v.shape)] for k, v in sample.items()], model, "a state-dict sample")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with preserved_modes(model):
            model.load_state_dict(sample)
            yield model
    finally:
        model.load_state_dict(saved)


def _vmap_outputs(model: nn.Module, space: WeightSpace, stacked: Tensor, inputs: Any) -> Tensor:
    """Outputs of the model at each row of ``stacked`` (c, P) on one input batch: (c, N, ...), via vmap."""
    args, kwargs = as_call_args(inputs)
    return torch.func.vmap(lambda w: space.call_with(model, space.views(w), args, kwargs))(stacked)


def first_batch(loader: Iterable) -> tuple[Any, float]:
    """The loader's first batch and the seconds it took to get it (a new iterator, as each pass makes)."""
    import time

    t0 = time.perf_counter()
    first = next(iter(loader), None)
    return first, time.perf_counter() - t0


def vmap_is_faster(model: nn.Module, space: WeightSpace, stacked: Tensor, inputs: Any,
                    fetch_s: float = 0.0) -> bool:
    """Time one input batch both ways for a chunk of weight vectors: after a warm-up of each, three
    interleaved timings per way, compared by their minimum (robust to a busy machine's interruptions).
    The loop also fetches every batch once per vector, the vmap path once per chunk: ``fetch_s`` (the
    time to get one batch from the loader) is charged ``len(stacked) - 1`` extra times to the loop."""
    import time

    def looped():
        for w in stacked:
            with space.at(model, w):
                call_model(model, inputs)

    fns = (looped, lambda: _vmap_outputs(model, space, stacked, inputs))
    for fn in fns:
        fn()
    times: list[list[float]] = [[], []]
    for _ in range(3):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return min(times[1]) < min(times[0]) + (len(stacked) - 1) * fetch_s


def bma(model: nn.Module, samples: Iterable[Sample], loader: Iterable, *, space: WeightSpace | None = None,
        bn_loader: Iterable | None = None, bn_batches: int | None = None,
        device: torch.device | str | None = None, input_fn: InputFn | None = None, target_fn=None,
        bins: int = 15, num_samples: int | None = None, progress: bool = False,
        return_probs: bool = False, score: bool = True, likelihood: str = "classification",
        stale_bn_ok: bool = False, batched: bool | str = "auto", chunk: int = 8) -> dict[str, Any]:
    """Metrics of the Bayesian model average over ``samples`` on ``loader``.

    Each sample is either a flat weight vector (a SWAG draw; BatchNorm statistics are recomputed on
    ``bn_loader`` for it, on its first ``bn_batches`` batches if given) or a state dict (an FGE snapshot or an
    ensemble member, evaluated with its own statistics). The user's model is restored after every sample.
    ``loader`` must yield the same batches in the same order on every pass (no shuffling). A weight vector
    for a model with BatchNorm needs ``bn_loader`` (its statistics would be stale); pass ``stale_bn_ok=True``
    to evaluate with the model's current statistics on purpose.

    Weight vectors that need no BatchNorm recompute can be evaluated ``chunk`` at a time with
    ``torch.func.vmap`` over the stacked weights (``batched=True``), one at a time (``False``), or
    (``"auto"``, the default) whichever is faster on the first input batch (best of three timings each):
    vmap wins for tiny networks and loses for CNNs on the CPU. The choice is returned as ``batched``.

    Returns the metrics of :class:`valleys.evaluation.metrics.ClassificationMetrics` plus ``num_samples``, and with
    ``return_probs=True`` the averaged ``probs`` (N, C) and ``targets`` (N,). ``score=False`` skips the
    metrics (for out-of-distribution inputs whose labels are not among the model's classes).

    ``likelihood="gaussian"`` is regression with a head that outputs ``(mean, variance)``: the predictive is
    the moment-matched Gaussian ``mu = mean_s mu_s``, ``var = mean_s(var_s + mu_s^2) - mu^2``, scored by
    :class:`valleys.evaluation.metrics.RegressionMetrics` (RMSE, NLL, 95% coverage); ``mean`` and ``var`` are returned
    with ``return_probs=True``.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched must be True, False or 'auto', got {batched!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    transform = LIKELIHOODS[likelihood]
    space = space or WeightSpace(model)
    input_fn = input_fn or default_input_fn
    target_fn = target_fn or default_target_fn
    sums: list[Tensor] = []
    targets: list[Tensor] = []
    count = 0
    passes = 0
    use_vmap: bool | None = None if batched == "auto" else bool(batched)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_samples, unit="sample", desc="BMA", leave=False, dynamic_ncols=True)

    def add(b: int, probs: Tensor, y: Any) -> None:
        if passes == 0:
            sums.append(probs.cpu())
            targets.append(torch.as_tensor(y).cpu())
        elif b >= len(sums) or sums[b].shape != probs.shape:
            raise ValueError("bma: the loader yielded different batches on two passes; use a loader without shuffling")
        else:
            sums[b] += probs.cpu()

    def finish_pass(b: int) -> None:
        if b + 1 != len(sums):
            raise ValueError("bma: the loader yielded a different number of batches on two passes")

    def vmap_pass(stacked: Tensor) -> None:
        b = -1
        for b, (out, y) in enumerate(predict_stacked(model, space, stacked, loader, device=device,
                                                     input_fn=input_fn, target_fn=target_fn)):
            add(b, sum(transform(o) for o in out), y)
        finish_pass(b)

    iterator = iter(samples)
    try:
        while True:
            group = list(itertools.islice(iterator, chunk))
            if not group:
                break
            vectors = all(isinstance(g, Tensor) for g in group)
            if vectors and bn_loader is None and not stale_bn_ok and has_batchnorm(model):
                raise ValueError("bma: the model has BatchNorm layers and the samples are weight vectors; pass "
                                 "bn_loader=train_loader to recompute their statistics per sample (or "
                                 "stale_bn_ok=True to keep the current ones)")
            vmappable = vectors and bn_loader is None and batched is not False
            if vmappable and use_vmap is None:
                first, fetch_s = first_batch(loader)
                stacked = torch.stack([g.to(space.parameters(model)[0]) for g in group])
                with preserved_modes(model, train=False), torch.no_grad():
                    use_vmap = first is not None and vmap_is_faster(model, space, stacked,
                                                                     to_device(input_fn(first), device), fetch_s)
            if vmappable and use_vmap:
                vmap_pass(torch.stack([g.to(space.parameters(model)[0]) for g in group]))
                passes += 1
                count += len(group)
                if bar is not None:
                    bar.update(len(group))
                continue
            for sample in group:
                with holding(model, sample, space):
                    if isinstance(sample, Tensor) and bn_loader is not None:
                        recompute_bn(model, bn_loader, num_batches=bn_batches, device=device, input_fn=input_fn)
                    b = -1
                    for b, (probs, y) in enumerate(predict_probs(model, loader, device=device, input_fn=input_fn,
                                                                 target_fn=target_fn, transform=transform)):
                        add(b, probs, y)
                    finish_pass(b)
                passes += 1
                count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if count == 0:
        raise ValueError("bma: no samples were given; collect weights or pass at least one sample")
    if not sums:
        raise EmptyLoaderError("bma: the evaluation loader yielded no batches")
    probs = torch.cat(sums) / count
    y = torch.cat(targets)
    out: dict[str, Any] = {}
    if likelihood == "gaussian":
        mean, var = probs[:, 0], (probs[:, 1] - probs[:, 0] ** 2).clamp_min(torch.finfo(torch.float64).tiny)
        if score:
            reg = RegressionMetrics()
            reg.update(mean, var, y)
            out = reg.compute()
        out["num_samples"] = count
        out["batched"] = bool(use_vmap)
        if return_probs or not score:
            out["mean"], out["var"], out["targets"] = mean, var, y
        return out
    if score:
        metrics = ClassificationMetrics(bins)
        metrics.update(probs, y)
        out = metrics.compute()
    out["num_samples"] = count
    out["batched"] = bool(use_vmap)
    if return_probs or not score:
        out["probs"], out["targets"] = probs, y
    return out
