"""Checkpoints: one safetensors file, tensors plus a JSON header; loading never runs code from the file.

Any nested state (dicts, lists, numbers, strings, tensors; dicts with int keys such as an optimizer's) is
encoded as JSON in the safetensors metadata, with each tensor replaced by a reference to a named tensor in
the file. Files are written to a temporary file in the same folder and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import CheckpointError, InputTypeError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "FORMAT",
    "check_model_signature",
    "model_signature",
    "write_json",
    "write_text",
    "to_json_text",
    "json_safe",
    "checkpoint_field",
]

FORMAT = "valleys-checkpoint-v1"


def _encode(obj: Any, tensors: dict[str, Tensor], path: str) -> Any:
    if isinstance(obj, Tensor):
        key = path or "tensor"
        while key in tensors:
            key += "_"
        t = obj.detach().cpu()
        tensors[key] = t.contiguous().clone() if t.dim() else t.reshape(1).clone()
        return {"__tensor__": key, "scalar": t.dim() == 0}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}}
        return {"__pairs__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise CheckpointError(f"cannot store a value of type {type(obj).__name__} at {path!r} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            t = tensors[obj["__tensor__"]]
            return t.reshape(()) if obj.get("scalar") else t
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__pairs__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__pairs__"]}
        if "__list__" in obj:
            items = [_decode(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
    return obj


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions (mkstemp makes it private) and rename it into place."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def json_safe(obj: Any) -> Any:
    """``obj`` with plain JSON values only: non-finite floats become ``None``, numpy scalars and arrays and
    tensors become numbers and lists, tuples become lists, paths strings; dict keys become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if callable(getattr(obj, "to_json", None)):  # typed results (dataclasses with their own JSON form)
        return json_safe(obj.to_json())
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else json.dumps(json_safe(k)).strip('"'): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return json_safe(obj.tolist())
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    try:
        return json_safe(float(obj))
    except (TypeError, ValueError):
        raise InputTypeError(f"cannot write a value of type {type(obj).__name__} as JSON") from None


def to_json_text(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (no ``NaN``/``Infinity`` tokens: non-finite floats are ``null``), readable by
    browsers and other languages. ``indent=None`` gives one line, as a JSON-lines record needs."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write strict JSON (see :func:`to_json_text`) atomically (temporary file in the same folder, then rename)."""
    write_text(path, to_json_text(data, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then a rename, so a reader
    never sees half a file."""
    path = Path(path)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            _publish(tmp, path)
        except OSError as e:  # a full disk or a file size limit: name the file and what is left of it
            if e.filename is not None and Path(e.filename) == path:
                raise
            raise OSError(
                e.errno,
                f"cannot write {path.name} ({e.strerror or e})"
                + (f"; the previous {path.name} is intact" if existed else ""),
                str(path),
            ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_signature(model: nn.Module) -> list[list]:
    """Names and shapes of a model's state (parameters and buffers): what a checkpoint must match."""
    from .weights import unwrap

    return [[k, list(v.shape)] for k, v in unwrap(model).state_dict().items()]


def check_model_signature(expected: list, model: nn.Module, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first difference if ``model`` is not the saved architecture
    (or if ``expected``, read from a header, is missing or malformed)."""
    have = {k: s for k, s in model_signature(model)}
    if not isinstance(expected, list) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in expected):
        raise CheckpointError(
            f"{source} has no valid architecture signature in its header "
            f"({'missing' if expected is None else 'malformed'}); was it written by valleys?"
        )
    want = {k: s for k, s in expected}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shape = [(k, want[k], have[k]) for k in want if k in have and list(want[k]) != list(have[k])]
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors the model lacks (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} tensors only the model has (first: {extra[0]!r})")
        if shape:
            k, w, h = shape[0]
            parts.append(f"{len(shape)} shape mismatches (first: {k!r} saved {w}, model {h})")
        raise CheckpointError(f"{source} is from another architecture: " + "; ".join(parts))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], header: dict[str, Any] | None = None) -> Path:
    """Save ``state`` (nested dicts/lists of tensors and plain values) and a JSON ``header`` atomically.

    ``state`` typically holds ``model`` (a state_dict), ``optimizer``, ``callbacks`` and ``rng``; the header
    holds the run config and epoch. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    structure = _encode(state, tensors, "")
    meta = {"format": FORMAT, "header": json.dumps(header or {}, default=float), "structure": json.dumps(structure)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=meta)
        except SafetensorError as e:  # safetensors reports a failed write (full disk, file size limit) this way
            raise OSError(
                _errno_of(str(e)),
                f"cannot write the checkpoint ({_reason(str(e))}); "
                f"{'the previous one is intact' if path.exists() else 'nothing was written'}",
                str(path),
            ) from None
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _errno_of(text: str) -> int | None:

    m = re.search(r"code: (\d+)", text)
    return int(m.group(1)) if m else None


def _reason(text: str) -> str:
    """The readable part of safetensors' ``IoError(Os { code: 28, kind: StorageFull, message: "No space ..." })``."""
    m = re.search(r'message: "([^"]+)"', text)
    return m.group(1) if m else text


def checkpoint_field(mapping: Any, key: str, path: str | os.PathLike, what: str = "header") -> Any:
    """``mapping[key]`` of a loaded checkpoint, or a :class:`CheckpointError` naming the file (not a KeyError)."""
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise CheckpointError(f"{path} is incomplete: its {what} has no {key!r} (a damaged or foreign checkpoint)")
    return mapping[key]


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load ``(state, header)`` saved by :func:`save_checkpoint`, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        tensors = load_file(str(path), device=str(map_location))

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint (truncated or another format): {e}"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a valleys checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        state = _decode(json.loads(meta["structure"]), tensors)
        header = json.loads(meta["header"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has a damaged header: {e}") from None
    return state, header
