"""A small on-disk cache of generated numpy arrays (e.g. MNIST-1D, which takes seconds to generate).

Where: ``$VALLEYS_CACHE`` if set, else ``$XDG_CACHE_HOME/valleys``, else ``~/.cache/valleys``. An entry is a
``.npz`` file (no pickle: loaded with ``allow_pickle=False``) and a sidecar ``.json`` holding the key it was made
from, the arrays' dtypes and shapes and the SHA-256 of the ``.npz`` bytes. Both files are written to a temporary
file in the cache folder and renamed into place, so a reader never sees a half-written file; a reader checks the
key, the checksum, the names, dtypes and shapes, and regenerates (and rewrites) an entry that fails any check.
A cache that cannot be written (read-only home, full disk) only costs the regeneration next time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["cache_dir", "cached_arrays", "entry_paths"]

FORMAT = 1


def cache_dir() -> Path:
    """The cache folder: ``$VALLEYS_CACHE``, else ``$XDG_CACHE_HOME/valleys``, else ``~/.cache/valleys``."""
    if os.environ.get("VALLEYS_CACHE"):
        return Path(os.environ["VALLEYS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "valleys"
    return Path.home() / ".cache" / "valleys"


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def entry_paths(name: str, key: Mapping[str, Any]) -> tuple[Path, Path]:
    """``(arrays .npz, sidecar .json)`` of the entry ``name`` made from ``key``."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]
    stem = cache_dir() / f"{name}-{digest}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def _read(npz: Path, sidecar: Path, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The entry's arrays, ``None`` if it is absent; ``ValueError`` if it is there but fails a check."""
    if not sidecar.is_file() and not npz.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        raw = npz.read_bytes()
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError("unknown sidecar format")
    if meta.get("key") != json.loads(_canonical(key)):
        raise InputError("made from another key")
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        raise InputError("checksum mismatch")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"not a valid npz ({e})") from None
    spec = meta.get("arrays")
    if (
        not isinstance(spec, dict)
        or set(spec) != set(arrays)
        or any([str(a.dtype), list(a.shape)] != spec[k] for k, a in arrays.items())
    ):
        raise InputError("arrays differ from the sidecar")
    return arrays


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache entry is ordinary data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(npz: Path, sidecar: Path, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    # numpy's stubs check **kwds against savez's allow_pickle keyword too (numpy >= 2.1); the keys are names
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    raw = buf.getvalue()
    meta = {
        "format": FORMAT,
        "key": json.loads(_canonical(key)),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "arrays": {k: [str(np.asarray(v).dtype), list(np.shape(v))] for k, v in arrays.items()},
    }
    npz.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(npz, raw)  # the arrays first: a reader that meets the old sidecar fails the checksum
    _write_atomic(sidecar, (json.dumps(meta, indent=1) + "\n").encode())


def cached_arrays(
    name: str, key: Mapping[str, Any], make: Callable[[], Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``make()`` returns for ``key`` (JSON-serialisable), from the cache when a valid entry exists.

    A missing entry is made and written; a corrupt or mismatched one is reported (``RuntimeWarning``), made
    again and rewritten, never trusted. Arrays must be plain numeric (no object dtype).
    """
    npz, sidecar = entry_paths(name, key)
    try:
        arrays = _read(npz, sidecar, key)
    except ValueError as e:
        warnings.warn(f"valleys cache entry {npz} is invalid ({e}); regenerating it", RuntimeWarning, stacklevel=2)
        arrays = None
    if arrays is not None:
        return arrays
    arrays = {k: np.asarray(v) for k, v in make().items()}
    try:
        _write(npz, sidecar, key, arrays)
    except OSError as e:
        warnings.warn(
            f"could not write the valleys cache in {npz.parent} ({e}); set VALLEYS_CACHE to a "
            "writable folder to avoid regenerating",
            RuntimeWarning,
            stacklevel=2,
        )
    return arrays
