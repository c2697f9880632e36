"""The model adapter: the one place that knows how a batch becomes a model call, which output is the
prediction, what the targets are, and which loss scores them.

Every entry point of valleys (evaluation, BMA, the many-weight-vectors engine, BatchNorm recompute, curves,
Hessians, the trainer and its callbacks) goes through a :class:`ModelAdapter`, so a model that works in one
works in all. The defaults cover the common cases; anything else is one argument away:

* **inputs**: a tensor batch is the one argument; an ``(input, target, ...)`` tuple gives ``input`` (itself a
  tensor: one argument; a tuple: positional arguments; a dict: keyword arguments); a dict batch without its
  target key gives one positional argument if one entry is left (``{"input": x, "label": y}`` calls
  ``model(x)``), otherwise keyword arguments with **every** remaining key (``{"input_ids", "attention_mask",
  "labels"}`` calls ``model(input_ids=..., attention_mask=...)``: nothing is silently dropped).
  ``input="key"``, ``input=["k1", "k2"]`` (keyword arguments), ``input=0`` or ``input=callable`` say otherwise.
* **output**: a tensor is the prediction; an object with ``.logits`` (Hugging Face ``ModelOutput``) or a dict
  with a ``"logits"`` key gives that; a tuple, or a dict without ``"logits"``, is refused with a message that
  names ``output=`` (an index, a key, an attribute name or a callable).
* **targets**: the second element of a tuple batch, or the first of ``target, targets, y, label, labels`` in
  a dict batch; ``target="key"``, an index or a callable otherwise.
* **loss**: ``"cross_entropy"`` (classification, the default), ``"gaussian"`` (a ``(mean, variance)`` head
  scored by the Gaussian negative log-likelihood, regression), or any ``callable(prediction, targets)``
  returning the mean loss of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AdapterError, InputError, InputTypeError
from .batches import as_call_args, to_device

__all__ = ["ModelAdapter", "AdapterError", "as_adapter", "gaussian_nll", "LOSSES"]

_TARGET_KEYS = ("target", "targets", "y", "label", "labels")

Selector = int | str | Sequence[str] | Callable[[Any], Any] | None


def gaussian_nll(output: Tensor, target: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood ``0.5 log(2 pi var) + (y - mu)^2 / (2 var)`` of targets under a
    head that outputs ``(mean, variance)`` per example as an (N, 2) tensor (constant included)."""
    if output.dim() != 2 or output.shape[1] != 2:
        raise AdapterError(
            f"a Gaussian head must output (N, 2) = (mean, variance), got {tuple(output.shape)}; "
            "pass loss=... for another likelihood"
        )
    mean, var = output[:, 0], output[:, 1]
    t = target.reshape(-1).to(mean.dtype)
    return (0.5 * torch.log(2 * math.pi * var) + (t - mean) ** 2 / (2 * var)).mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "gaussian": gaussian_nll,
}


@dataclass(frozen=True)
class ModelAdapter:
    """How valleys calls a model on a batch and scores what comes out (see the module docstring).

    Args:
        input: where the model input is in a batch: ``None`` (the defaults), a dict key, a list of dict keys
            (keyword arguments), a tuple index, or ``callable(batch)`` returning a tensor (one argument), a
            tuple (positional arguments) or a dict (keyword arguments).
        target: where the targets are: ``None`` (defaults), a key, an index or ``callable(batch)``.
        output: which part of the model's return value is the prediction: ``None`` (a tensor, ``.logits`` or
            ``["logits"]``), an index, a key or attribute name, or ``callable(raw_output)``.
        loss: ``"cross_entropy"``, ``"gaussian"`` or ``callable(prediction, targets) -> scalar`` (a mean).
        predictive: how predictions are averaged and scored: ``"classification"`` (softmax of logits) or
            ``"gaussian"`` (a ``(mean, variance)`` head); ``None`` derives it from ``loss``.

    Example:
        >>> adapter = ModelAdapter(output="logits", target="labels")
        >>> pred = adapter.forward(model, {"input_ids": ids, "attention_mask": mask, "labels": y})
    """

    input: Selector = None
    target: Selector = None
    output: Selector = None
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy"
    predictive: str | None = None

    def __post_init__(self) -> None:
        if self.predictive not in (None, "classification", "gaussian"):
            raise InputError(f"unknown predictive {self.predictive!r}; choose classification or gaussian")
        if isinstance(self.loss, str) and self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)} or pass a callable")
        if not isinstance(self.loss, str) and not callable(self.loss):
            raise InputTypeError(
                f"loss must be a name ({', '.join(LOSSES)}) or a callable, got {type(self.loss).__name__}"
            )

    # ------------------------------------------------------------------ batches
    def inputs(self, batch: Any) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for ``model(*args, **kwargs)`` from one batch."""
        sel = self.input
        if sel is None:
            return self._default_inputs(batch)
        if callable(sel):
            return as_call_args(sel(batch))
        if isinstance(sel, (list, tuple)) and not isinstance(sel, str):
            if not isinstance(batch, Mapping):
                raise AdapterError(f"input={list(sel)!r} names dict keys but the batch is a {type(batch).__name__}")
            missing = [k for k in sel if k not in batch]
            if missing:
                raise AdapterError(f"input keys {missing} are not in the batch (keys: {sorted(batch)}); fix input=...")
            return (), {k: batch[k] for k in sel}
        return as_call_args(self._pick(batch, sel, "input"))

    def targets(self, batch: Any) -> Any:
        """The targets of one batch."""
        sel = self.target
        if sel is None:
            if isinstance(batch, (tuple, list)) and len(batch) >= 2:
                return batch[1]
            if isinstance(batch, Mapping):
                for k in _TARGET_KEYS:
                    if k in batch:
                        return batch[k]
                raise AdapterError(
                    f"dict batch with keys {sorted(batch)} has no target key (tried "
                    f"{list(_TARGET_KEYS)}); pass target='key' (or a callable)"
                )
            raise AdapterError(
                f"cannot find the targets in a batch of type {type(batch).__name__}; pass "
                "target=... (a key, an index or a callable)"
            )
        if callable(sel):
            return sel(batch)
        return self._pick(batch, sel, "target")

    @staticmethod
    def _pick(batch: Any, sel: Any, what: str) -> Any:
        try:
            return batch[sel]
        except (KeyError, IndexError, TypeError):
            keys = sorted(batch) if isinstance(batch, Mapping) else f"a {type(batch).__name__}"
            raise AdapterError(f"{what}={sel!r} is not in the batch ({keys}); fix {what}=...") from None

    @staticmethod
    def _default_inputs(batch: Any) -> tuple[tuple, dict]:
        if isinstance(batch, Tensor):
            return (batch,), {}
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise AdapterError("empty tuple batch; pass input=... to say where the model input is")
            return as_call_args(batch[0])
        if isinstance(batch, Mapping):
            rest = {k: v for k, v in batch.items() if k not in _TARGET_KEYS}
            if not rest:
                raise AdapterError(f"dict batch with keys {sorted(batch)} holds only targets; pass input=...")
            if len(rest) == 1:
                return (next(iter(rest.values())),), {}
            return (), rest
        raise AdapterError(
            f"cannot find the model input in a batch of type {type(batch).__name__}; pass "
            "input=... (a key, an index or a callable)"
        )

    # ------------------------------------------------------------------ outputs
    def prediction(self, raw: Any) -> Tensor:
        """The prediction inside what the model returned."""
        sel = self.output
        if sel is None:
            if isinstance(raw, Tensor):
                return raw
            if isinstance(raw, Mapping):
                if "logits" in raw:
                    return raw["logits"]
                raise AdapterError(
                    f"the model returned a dict with keys {sorted(raw)} and no 'logits'; say which "
                    "holds the prediction with output='key'"
                )
            if isinstance(getattr(raw, "logits", None), Tensor):
                return raw.logits
            if isinstance(raw, (tuple, list)):
                raise AdapterError(
                    f"the model returned a {type(raw).__name__} of {len(raw)} outputs; say which "
                    "holds the prediction with output=0 (an index), output='key' or a callable"
                )
            raise AdapterError(
                f"the model returned a {type(raw).__name__}; pass output=... (an index, a key, an "
                "attribute name or a callable) to say where the prediction is"
            )
        if callable(sel):
            return sel(raw)
        if isinstance(sel, str) and not isinstance(raw, Mapping) and hasattr(raw, sel):
            return getattr(raw, sel)
        try:
            return raw[sel]
        except (KeyError, IndexError, TypeError):
            raise AdapterError(
                f"output={sel!r} is not in what the model returned (a {type(raw).__name__}); fix output=..."
            ) from None

    def forward(self, model: nn.Module, batch: Any, device: torch.device | str | None = None) -> Tensor:
        """``prediction(model(*args, **kwargs))`` for one batch, inputs moved to ``device`` first."""
        args, kwargs = self.inputs(batch)
        if device is not None:
            args, kwargs = to_device(args, device), to_device(kwargs, device)
        return self.prediction(model(*args, **kwargs))

    def call_inputs(self, model: nn.Module, batch: Any, device: torch.device | str | None = None) -> Any:
        """``model(*args, **kwargs)`` for one batch, its raw return value (BatchNorm recompute needs no more)."""
        args, kwargs = self.inputs(batch)
        if device is not None:
            args, kwargs = to_device(args, device), to_device(kwargs, device)
        return model(*args, **kwargs)

    # ------------------------------------------------------------------ loss
    @property
    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The loss as a callable ``(prediction, targets) -> scalar``."""
        return LOSSES[self.loss] if isinstance(self.loss, str) else self.loss

    @property
    def likelihood(self) -> str:
        """``"gaussian"`` for a ``(mean, variance)`` head, else ``"classification"`` (predictions are logits)."""
        if self.predictive is not None:
            return self.predictive
        return "gaussian" if self.loss == "gaussian" or self.loss is gaussian_nll else "classification"

    def compute_loss(self, prediction: Tensor, targets: Any) -> Tensor:
        """The batch's mean loss."""
        if isinstance(targets, Tensor):
            targets = targets.to(prediction.device)
        return self.loss_fn(prediction, targets)


def as_adapter(adapter: ModelAdapter | None = None) -> ModelAdapter:
    """The adapter an entry point uses: ``adapter`` itself, or the default :class:`ModelAdapter` (``(x, y)``
    tuples or ``{"input", "label"}`` dicts, cross-entropy on logits) when it is ``None``.

    Raises :class:`valleys.errors.InputTypeError` for anything that is not a :class:`ModelAdapter` (a loss
    function goes in ``ModelAdapter(loss=...)``, a batch reader in ``ModelAdapter(input=..., target=...)``)."""
    if adapter is None:
        return ModelAdapter()
    if not isinstance(adapter, ModelAdapter):
        raise InputTypeError(
            f"adapter must be a valleys ModelAdapter, got {type(adapter).__name__}; wrap a loss function as "
            "ModelAdapter(loss=fn) and a batch reader as ModelAdapter(input=fn, target=fn)"
        )
    return adapter
