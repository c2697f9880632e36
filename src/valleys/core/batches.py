"""Batch plumbing below the model adapter: moving nested batches to a device and turning a model input (a
tensor, a tuple of positional inputs, a dict of keyword inputs) into ``(args, kwargs)``. Where the input and
the targets are in a batch is decided by :class:`valleys.core.adapter.ModelAdapter` alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from typing import Any

import torch
from torch import Tensor

from ..errors import BatchFormatError, InputTypeError

__all__ = ["InputFn", "to_device", "as_call_args", "sized_length", "head_of_batch", "BatchFormatError"]

InputFn = Callable[[Any], Any]


def to_device(obj: Any, device: torch.device | str | None) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``; ``None`` leaves them."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def as_call_args(inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for an input that may be a tensor, a tuple of positional inputs, or a dict of kwargs."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def sized_length(obj: object, what: str = "dataset") -> int:
    """``len(obj)`` for a map-style dataset or a sampler; a ``TypeError`` naming ``what`` for one without a
    length (an iterable-style dataset)."""
    if not isinstance(obj, Sized):
        raise InputTypeError(f"the {what} ({type(obj).__name__}) has no length; a map-style {what} is needed here")
    return len(obj)


def head_of_batch(batch: Any, n: int) -> Any:
    """The first ``n`` examples of a batch: every tensor (also inside tuples, lists and dicts) cut to its first
    ``n`` rows; anything else kept."""
    if isinstance(batch, Tensor):
        return batch[:n] if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        return {k: head_of_batch(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(head_of_batch(v, n) for v in batch)
    return batch
