"""How valleys reads a batch: tensors, ``(input, target, ...)`` tuples, or dicts.

One place decides what the model input and the target of a batch are, so the training loop, BatchNorm
recompute and prediction accept the same batches. Pass ``input_fn`` / ``target_fn`` for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["InputFn", "default_input_fn", "default_target_fn", "to_device", "BatchFormatError"]

InputFn = Callable[[Any], Any]

_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("target", "targets", "y", "label", "labels")


class BatchFormatError(TypeError):
    """A batch whose input or target cannot be found without an explicit ``input_fn``/``target_fn``."""


def _from_mapping(batch: Mapping, keys: tuple[str, ...], what: str, fn_name: str) -> Any:
    for k in keys:
        if k in batch:
            return batch[k]
    raise BatchFormatError(
        f"dict batch with keys {sorted(batch)} has no {what} key (tried {list(keys)}); "
        f"pass {fn_name}=lambda batch: ... to say where the {what} is"
    )


def default_input_fn(batch: Any) -> Any:
    """The model input of a batch: the tensor itself, the first element of a tuple/list, or a dict entry."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise BatchFormatError("empty tuple batch; pass input_fn=... to say where the input is")
        return batch[0]
    if isinstance(batch, Mapping):
        return _from_mapping(batch, _INPUT_KEYS, "input", "input_fn")
    raise BatchFormatError(f"cannot find the input in a batch of type {type(batch).__name__}; pass input_fn=...")


def default_target_fn(batch: Any) -> Tensor:
    """The target of a batch: the second element of a tuple/list, or a dict entry."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, Mapping):
        return _from_mapping(batch, _TARGET_KEYS, "target", "target_fn")
    raise BatchFormatError(
        f"cannot find the target in a batch of type {type(batch).__name__}; pass target_fn=..."
    )


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


def call_model(model: torch.nn.Module, inputs: Any) -> Tensor:
    """Call ``model`` on an input that may be a tensor, a tuple of positional inputs, or a dict of kwargs."""
    args, kwargs = as_call_args(inputs)
    return model(*args, **kwargs)
