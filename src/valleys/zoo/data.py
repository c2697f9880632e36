"""Built-in datasets, all available offline, with fixed train/validation/test splits.

* ``mnist1d`` (default): MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``:
  4000 training and 1000 test signals of length 40, 10 classes. Already standardised (mean 0, std 1).
  Generated once and kept in the user's cache folder (``$VALLEYS_CACHE``, else ``~/.cache/valleys``; see
  :mod:`valleys.core.cache`), checked by SHA-256 on every load.
* ``digits``: scikit-learn's 8x8 digits (1797 images), scaled to [0, 1], shape (1, 8, 8); 20% test.
* ``fashion-mnist``: Fashion-MNIST (Xiao et al. 2017), 60000 + 10000 images 28x28, scaled to [0, 1] and
  standardised with the training mean and std. Read from the IDX files of the Debian package
  ``dataset-fashion-mnist`` or from a torchvision root (``root/FashionMNIST/raw``).

The validation split is carved from the training data with a fixed split seed (``split_seed=0``), independent
of the training seed, so runs with different seeds see the same splits. The test split is never used to tune.
"""

from __future__ import annotations

import functools
import gzip
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset

from ..core.cache import cached_arrays
from ..core.optional import require
from ..errors import DatasetNotFoundError, InputError
from .catalog import DATASETS  # noqa: F401  (re-exported)

__all__ = ["Splits", "DATASETS", "load_dataset", "make_loader", "find_fashion_mnist", "DatasetNotFoundError"]


FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Splits:
    """Train, validation and test datasets of ``(input, label)`` pairs plus what a model needs to know."""

    name: str
    train: TensorDataset | Subset
    val: TensorDataset | Subset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)
    ood: TensorDataset | None = None  # test examples of held-out classes (split-classes OOD protocol)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _split(x: Tensor, y: Tensor, val_fraction: float, split_seed: int, train_subset: int | None):
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_subset is not None:
        if train_subset < 1:
            raise InputError(f"train_subset must be at least 1, got {train_subset}")
        train_idx = train_idx[:train_subset]
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


#: The arguments of ``mnist1d.data.make_dataset`` (its defaults, ``get_dataset_args()``, without the download
#: URL), pinned here so that a cached copy can be found without importing mnist1d (slow to import).
MNIST1D_ARGS: dict = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}


def _make_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D (seconds): deterministic, no download; the global ``random``/``numpy`` state that
    ``make_dataset`` reseeds is restored, so a cached load and a generation leave the same state behind."""
    mnist1d_data = require("mnist1d.data", "data")
    args = {**mnist1d_data.get_dataset_args(as_dict=True), **MNIST1D_ARGS}
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = mnist1d_data.make_dataset(SimpleNamespace(**args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: d[k] for k in ("x", "y", "x_test", "y_test")}


def _mnist1d_version() -> str:

    try:
        return version("mnist1d")
    except PackageNotFoundError:
        require("mnist1d.data", "data")  # raises the ImportError that names the extra to install
        return "unknown"  # pragma: no cover - importable but without metadata


def _mnist1d() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D from the user's cache (:mod:`valleys.core.cache`), generated and cached on the first use."""
    key = {"generator": "mnist1d.data.make_dataset", "mnist1d": _mnist1d_version(), "args": MNIST1D_ARGS}
    d = cached_arrays("mnist1d", key, _make_mnist1d)
    return (
        torch.tensor(d["x"], dtype=torch.float32),
        torch.tensor(d["y"]).long(),
        torch.tensor(d["x_test"], dtype=torch.float32),
        torch.tensor(d["y_test"]).long(),
    )


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    bunch = require("sklearn.datasets", "data").load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = int(round(0.2 * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _dpkg_dirs() -> list[Path]:
    if shutil.which("dpkg") is None:
        return []
    try:
        out = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(line).parent for line in out.splitlines() if "idx" in line and line.endswith(".gz")})


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (gzipped or not).

    With ``root`` (``--data-root``), only there: ``root``, ``root/FashionMNIST/raw`` (a torchvision root) or
    ``root/raw``; the user's path wins over any system copy, and a ``root`` without the files is an error
    naming it. Without ``root``: where ``dpkg -L dataset-fashion-mnist`` says, then in
    ``/usr/share/datasets/fashion-mnist``.
    """
    if root is not None:
        r = Path(root)
        candidates = [r, r / "FashionMNIST" / "raw", r / "raw"]
    else:
        candidates = _dpkg_dirs() + [DEBIAN_FASHION_DIR]
    for d in candidates:
        if all(_find_file(d, stem) for stem in FASHION_FILES.values()):
            return d
    expected = ", ".join(f"{stem}[.gz]" for stem in FASHION_FILES.values())
    if root is not None:
        if not Path(root).is_dir():
            raise DatasetNotFoundError(
                f"--data-root {root} does not exist or is not a folder; it should hold the "
                f"Fashion-MNIST files {expected}"
            )
        raise DatasetNotFoundError(
            f"--data-root {root} holds no Fashion-MNIST files: expected {expected} in {root}, "
            f"{Path(root) / 'FashionMNIST' / 'raw'} or {Path(root) / 'raw'}"
        )
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DatasetNotFoundError(
        f"Fashion-MNIST files ({expected}) not found (looked in: " + looked + "). Install them with\n"
        "  sudo apt-get install dataset-fashion-mnist\n"
        "or download them with torchvision and pass its root:\n"
        "  python -c \"import torchvision; torchvision.datasets.FashionMNIST('data', download=True)\"\n"
        "  valleys train --dataset fashion-mnist --data-root data"
    )


def _existing_file(directory: Path, stem: str) -> Path:
    """The file ``stem`` (or ``stem.gz``) that :func:`find_fashion_mnist` found in ``directory``."""
    path = _find_file(directory, stem)
    if path is None:  # removed since find_fashion_mnist looked
        raise DatasetNotFoundError(f"{directory} no longer holds {stem} (or {stem}.gz)")
    return path


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _fashion(root: str | os.PathLike | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _fashion_in(str(find_fashion_mnist(root)))


@functools.lru_cache(maxsize=1)
def _fashion_in(folder: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The standardised Fashion-MNIST tensors of ``folder``, decoded once per process (a demo loads them for
    every run; the callers index or transform them, never write into them)."""
    d = Path(folder)
    arr = {k: _read_idx(_existing_file(d, stem)) for k, stem in FASHION_FILES.items()}
    xtr = torch.tensor(arr["train_x"], dtype=torch.float32).unsqueeze(1) / 255.0
    xte = torch.tensor(arr["test_x"], dtype=torch.float32).unsqueeze(1) / 255.0
    mean, std = xtr.mean(), xtr.std()
    return (
        (xtr - mean) / std,
        torch.tensor(arr["train_y"]).long(),
        (xte - mean) / std,
        torch.tensor(arr["test_y"]).long(),
    )


def _fashion14(root: str | os.PathLike | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST at 14x14: each pixel the mean of a 2x2 block of the 28x28 image, then standardised again
    by the training images' mean and standard deviation."""
    xtr, ytr, xte, yte = _fashion(root)
    xtr, xte = (torch.nn.functional.avg_pool2d(x, 2) for x in (xtr, xte))
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


def load_dataset(
    name: str = "mnist1d",
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    root: str | os.PathLike | None = None,
    ood_split: bool = False,
) -> Splits:
    """Load a built-in dataset as :class:`Splits`.

    Args:
        name: one of :data:`DATASETS`.
        val_fraction: share of the training data held out for validation (fixed ``split_seed``).
        train_subset / test_subset: keep only the first N examples (after the fixed shuffle) for speed.
        root: a torchvision data root to search for Fashion-MNIST files.
        ood_split: the split-classes protocol (Maddox et al. 2019): train, validate and test on the first
            half of the classes (labels 0 .. C/2 - 1); the test examples of the other classes become
            ``splits.ood``, the out-of-distribution set.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    loader = {
        "mnist1d": _mnist1d,
        "digits": _digits,
        "fashion-mnist": lambda: _fashion(root),
        "fashion-mnist-14": lambda: _fashion14(root),
    }[name]
    xtr, ytr, xte, yte = loader()
    num_classes = int(ytr.max()) + 1
    ood = None
    if ood_split:
        num_classes //= 2
        keep_tr, keep_te = ytr < num_classes, yte < num_classes
        ood = TensorDataset(xte[~keep_te], yte[~keep_te])
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    train, val = _split(xtr, ytr, val_fraction, split_seed, train_subset)
    if test_subset is not None:
        xte, yte = xte[:test_subset], yte[:test_subset]
        if ood is not None:
            ood = TensorDataset(*(t[:test_subset] for t in ood.tensors))
    return Splits(
        name,
        train,
        val,
        TensorDataset(xte, yte),
        num_classes=num_classes,
        input_shape=tuple(xtr.shape[1:]),
        ood=ood,
        info={"split_seed": split_seed, "val_fraction": val_fraction, "ood_split": ood_split},
    )


def make_loader(
    dataset,
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn=None,
) -> DataLoader:
    """A ``DataLoader``; when shuffling, its generator is seeded so the order is reproducible. ``collate_fn``:
    how examples become a batch (``None``: PyTorch's default).

    The training loop reseeds that generator at every epoch (``seed + epoch``), which makes a resumed run
    see exactly the batches an uninterrupted run would.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last, collate_fn=collate_fn
    )
