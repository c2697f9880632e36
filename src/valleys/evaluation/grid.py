"""The evaluation engine for many weight vectors: planes, lines, rays and random landscapes share it.

For every point ``w`` it reports, per loader, the mean cross-entropy (``loss``) and the ``error`` of the
network at ``w``, with an explicit BatchNorm policy: ``"recompute"`` (statistics recomputed on
``bn_loader`` for each point; the right choice off the trained points), ``"keep"`` (the model's current
statistics). Points without a recompute are evaluated ``chunk`` at a time with ``torch.func.vmap`` or one by
one, whichever is faster on the first batch, counting that the loop fetches every batch once per point
(``batched="auto"``; vmap wins for tiny networks).
A non-finite loss at a point is recorded as NaN and counted (``nonfinite``); the sweep never stops for it.
The user's model is restored bit for bit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batches import default_input_fn, to_device
from ..core.batchnorm import has_batchnorm, recompute_bn
from .predict import first_batch, vmap_is_faster, predict_probs, predict_stacked
from ..core.weights import WeightSpace, preserved_modes

__all__ = ["evaluate_points"]


def _loss_error(logits: Tensor, y: Tensor) -> tuple[float, float]:
    """Summed cross-entropy and number of errors of one batch (NaN loss if the outputs are not finite)."""
    logits = logits.double()
    if not bool(torch.isfinite(logits).all()):
        return math.nan, math.nan
    loss = float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return loss, float((logits.argmax(-1) != y).sum())


def evaluate_points(model: nn.Module, points: Sequence[Tensor], loaders: Mapping[str, Iterable], *,
                    bn: str = "recompute", bn_loader: Iterable | None = None, space: WeightSpace | None = None,
                    batched: bool | str = "auto", chunk: int = 8, device: torch.device | str | None = None,
                    progress: bool = False, desc: str = "points") -> dict[str, Any]:
    """Loss and error of ``model`` at each of ``points`` on each loader; see the module docstring.

    Returns ``{"<loader>": {"loss": [...], "error": [...]}, "nonfinite": int, "bn": str, "batched": bool}``.
    """
    if bn not in ("recompute", "keep"):
        raise ValueError(f"unknown BatchNorm policy {bn!r}; choose 'recompute' or 'keep'")
    if not loaders:
        raise ValueError("give at least one loader to evaluate on")
    space = space or WeightSpace(model)
    points = list(points)
    for i, p in enumerate(points):
        if p.dim() != 1 or p.numel() != space.size:
            raise ValueError(f"point {i} has shape {tuple(p.shape)}; every point must be a vector of length {space.size}")
    recompute = bn == "recompute" and has_batchnorm(model)
    if recompute and bn_loader is None:
        raise ValueError("bn='recompute' on a model with BatchNorm needs bn_loader (the training loader)")
    ref = space.parameters(model)[0]
    out: dict[str, Any] = {name: {"loss": [], "error": []} for name in loaders}
    use_vmap: bool | None = None if batched == "auto" else bool(batched)
    if recompute:
        use_vmap = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points), unit="point", desc=desc, leave=False, dynamic_ncols=True)
    try:
        it = iter(points)
        while True:
            group = list(itertools.islice(it, chunk))
            if not group:
                break
            if use_vmap is None:
                first, fetch_s = first_batch(next(iter(loaders.values())))
                with preserved_modes(model, train=False), torch.no_grad():
                    use_vmap = first is not None and vmap_is_faster(
                        model, space, torch.stack(group).to(ref), to_device(default_input_fn(first), device), fetch_s)
            sums = {name: [[0.0, 0.0, 0] for _ in group] for name in loaders}

            def add(name: str, j: int, logits: Tensor, y: Tensor) -> None:
                loss, err = _loss_error(logits, y.to(logits.device))
                sums[name][j][0] += loss
                sums[name][j][1] += err
                sums[name][j][2] += len(y)

            if use_vmap:
                stacked = torch.stack(group).to(ref)
                for name, loader in loaders.items():
                    for outs, y in predict_stacked(model, space, stacked, loader, device=device):
                        for j, o in enumerate(outs):
                            add(name, j, o, y)
            else:
                for j, w in enumerate(group):
                    with space.at(model, w.to(ref)):
                        if recompute:
                            recompute_bn(model, bn_loader, device=device)  # type: ignore[arg-type]
                        for name, loader in loaders.items():
                            for logits, y in predict_probs(model, loader, device=device, transform=lambda o: o):
                                add(name, j, logits, y)
            for name in loaders:
                for loss, err, n in sums[name]:
                    out[name]["loss"].append(loss / n if n else math.nan)
                    out[name]["error"].append(err / n if n else math.nan)
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()
    nonfinite = sum(1 for i in range(len(points)) if any(math.isnan(out[n]["loss"][i]) for n in loaders))
    if nonfinite:
        import warnings

        warnings.warn(f"{nonfinite} of {len(points)} points gave a non-finite loss; recorded as NaN", stacklevel=2)
    out["nonfinite"] = nonfinite
    out["bn"] = "recompute" if recompute else ("keep" if has_batchnorm(model) else "none (no BatchNorm)")
    out["batched"] = bool(use_vmap)
    return out
