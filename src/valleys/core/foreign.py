"""Weights written by other tools: a PyTorch ``state_dict`` file, a safetensors file, a Hugging Face
``save_pretrained`` folder, a Lightning ``.ckpt``, or a valleys run's ``model.safetensors``.

:func:`read_state_dict` returns the tensors of such a file without ever unpickling code: ``.pt``/``.pth``/
``.bin``/``.ckpt`` files are read with ``torch.load(weights_only=True)``, and only the classes a Lightning
checkpoint needs for its hyperparameters (``AttributeDict``) are let through, as plain dicts; any other global
is refused by name. :func:`match_state_dict` pairs its keys with a model's, stripping the prefix a wrapper adds
(``model.``, ``module.``, a LightningModule's attribute), and names the first missing, unexpected or misshapen
tensor when they do not fit.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .checkpoint import FORMAT, load_checkpoint

__all__ = ["read_state_dict", "match_state_dict", "load_foreign_weights", "read_swag_state"]

# Lightning saves ``hparams`` as an AttributeDict (a dict subclass); read it as a plain dict, nothing else
_LIGHTNING_GLOBALS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "network", "net")


class _PlainDict(dict):
    """What a Lightning ``AttributeDict`` is read as: its items, without its code."""


def _torch_load(path: Path) -> Any:
    safe = [(_PlainDict, name) for name in _LIGHTNING_GLOBALS]
    try:
        with torch.serialization.safe_globals(safe):  # type: ignore[arg-type]
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint torch.load can read") from None
        raise CheckpointError(
            f"{path} needs code to load ({found.group(1)}); valleys never unpickles code from a checkpoint. Save the "
            "weights alone (torch.save(model.state_dict(), path) or safetensors) and import that"
        ) from None
    except Exception as e:  # a file of another kind: torch.load raises whatever its unpickler meets
        raise CheckpointError(f"{path} is not a PyTorch checkpoint torch.load can read ({type(e).__name__})") from None


def _tensors_of(obj: Any, path: Path) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` inside a loaded checkpoint object (a state dict, or a dict holding one)."""
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _tensors_of(obj[key], path)
        if tensors:
            return dict(tensors)
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__} without a state dict (a mapping of names to tensors, or one under "
        f"{', '.join(repr(k) for k in _STATE_KEYS)})"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a checkpoint written by any tool (see the module docstring); a folder is read as a Hugging
    Face ``save_pretrained`` folder (``model.safetensors`` or ``pytorch_model.bin``) or a valleys run folder.
    :class:`valleys.errors.CheckpointError` saying why when it cannot be read safely."""
    path = Path(path)
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        if (path / "member-0" / "model.safetensors").is_file():
            return read_state_dict(path / "member-0" / "model.safetensors")
        if any(path.glob("*.safetensors.index.json")) or any(path.glob("*.bin.index.json")):
            raise CheckpointError(f"{path} holds a sharded checkpoint; merge it into one file first")
        raise CheckpointError(f"{path} holds no weights ({' or '.join(_WEIGHT_FILES)})")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        if meta.get("format") == FORMAT:  # a valleys checkpoint: a run's model, or tensors in a structure
            state, header = load_checkpoint(path)
            if header.get("kind") == "model" and isinstance(state.get("model"), Mapping):
                return dict(state["model"])
            return _tensors_of(state, path)
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    return _tensors_of(_torch_load(path), path)


def match_state_dict(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """``tensors`` renamed to ``model``'s state keys: exactly, or after stripping one prefix that all of the
    model's keys share in the file (``model.``, ``module.``, ...). :class:`valleys.errors.CheckpointError` naming
    the first missing, unexpected or misshapen tensor when they do not fit."""
    want = model.state_dict()
    first = next(iter(want))
    prefixes = [k[: -len(first)] for k in tensors if k == first or k.endswith("." + first)]
    best: dict[str, Tensor] = dict(tensors)
    for p in sorted(prefixes, key=len):
        renamed = {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
        if all(k in renamed for k in want):
            best = renamed
            break
    missing = [k for k in want if k not in best]
    extra = [k for k in best if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors the model has are not in it (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} tensors in it are not the model's (first: {extra[0]!r})")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    for k, v in want.items():
        if tuple(best[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source} does not fit the model: {k!r} has shape {list(best[k].shape)} in it and {list(v.shape)} "
                "in the model"
            )
    return {k: best[k] for k in want}


def load_foreign_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of the checkpoint ``path`` (any format of :func:`read_state_dict`) into ``model`` (dtypes
    converted to the model's); returns ``model``."""
    matched = match_state_dict(model, read_state_dict(path), str(path))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in matched.items()})
    return model


def _swag_states(obj: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every SWAG state (a mapping with ``kind == "SWAG"``) inside ``obj``, with where it was found."""
    found = []
    if isinstance(obj, Mapping):
        if obj.get("kind") == "SWAG":
            return [(where, dict(obj))]
        for k, v in obj.items():
            found += _swag_states(v, f"{where}[{k!r}]" if where else repr(k))
    return found


def read_swag_state(path: str | os.PathLike) -> dict[str, Any]:
    """The SWAG posterior state (:meth:`valleys.methods.swag.SWAG.state_dict`) saved by valleys: a run's
    ``posterior.safetensors``, the file of :meth:`valleys.hf.SWAGCallback.save`, or a Lightning ``.ckpt`` whose
    callbacks include :class:`valleys.lightning.SWAGCallback`. :class:`valleys.errors.CheckpointError` when
    there is none, or several (a checkpoint of two SWAG callbacks: save one posterior alone)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--posterior {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    obj = load_checkpoint(path)[0] if head[8:9] == b"{" else _torch_load(path)
    states = _swag_states(obj, "")
    if not states:
        raise CheckpointError(
            f"--posterior {path} holds no SWAG state (from a valleys swag run, valleys.hf.SWAGCallback.save or a "
            "Lightning checkpoint with valleys.lightning.SWAGCallback)"
        )
    if len(states) > 1:
        raise CheckpointError(
            f"--posterior {path} holds {len(states)} SWAG states ({', '.join(w for w, _ in states)}); save the one "
            "to import alone"
        )
    state = states[0][1]
    for key in ("n", "size", "rank", "mean", "deviations"):
        if key not in state:
            raise CheckpointError(f"--posterior {path}: its SWAG state lacks {key!r}")
    return state
