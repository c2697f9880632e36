"""Batch plumbing below the model adapter: moving nested batches to a device and turning a model input (a
tensor, a tuple of positional inputs, a dict of keyword inputs) into ``(args, kwargs)``. Where the input and
the targets are in a batch is decided by :class:`valleys.core.adapter.ModelAdapter` alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch import Tensor

from ..errors import BatchFormatError, InputTypeError

__all__ = [
    "InputFn",
    "as_tensor",
    "iter_tensors",
    "map_tensors",
    "to_device",
    "as_call_args",
    "sized_length",
    "head_of_batch",
    "BatchFormatError",
]

InputFn = Callable[[Any], Any]


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.as_tensor`` that never uses torch's default device: a tensor stays where it is (converted to
    ``dtype``), anything else (numbers, lists, arrays) becomes a CPU tensor. Under
    ``torch.set_default_device("cuda")`` the plain call would move a CPU tensor to the GPU."""
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(x, dtype=dtype, device="cpu")


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (also inside tuples, lists and dicts)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def iter_tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor in ``obj`` (also inside tuples, lists and dicts), in order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from iter_tensors(v)


def to_device(obj: Any, device: torch.device | str | None) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``; ``None`` leaves them."""
    if device is None:
        return obj
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


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
