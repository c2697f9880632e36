"""The user's own data on the command line: ``--data file.npz`` or ``--data module.path:factory``.

**Arrays** (``.npz``): ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally ``x_val``, ``y_val``; inputs
become float32 tensors, integer targets class labels (int64), float targets regression targets (float32).

**A factory** (``module.path:factory`` or ``file.py:factory``, called with ``--data-args key=value ...``) returns
the splits as a mapping ``{"train": ..., "test": ..., "val": ...}`` (``"validation"`` also works; ``val`` is
optional) or any object with those attributes (a small dataclass). Each split is a ``Dataset`` or a
``DataLoader``. Of a loader only its dataset and its ``collate_fn`` are kept: valleys builds its own loaders
(training: shuffled with the run's seed, so a resumed run sees the same batches; evaluation and BatchNorm: in
order, since a Bayesian model average must see the examples in the same order at every pass), so a shuffling
test loader is rebuilt in order and the run's notes say so.

Without a validation split, ``--val-fraction`` of the training split is held out (a fixed permutation). The
task is inferred from the training targets (integers: classification with ``max + 1`` classes; floats:
regression) unless ``--task`` states it. No torch at import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, UserCodeError
from .user_code import call_factory, short_name

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig

__all__ = ["UserSplits", "load_user_splits", "infer_task", "is_user_data"]

TASKS = ("classification", "regression")


def is_user_data(dataset: str) -> bool:
    """Whether a ``dataset`` setting names the user's data (a reference or an ``.npz`` file)."""
    return ":" in dataset or dataset.endswith(".npz")


@dataclass
class UserSplits:
    """The user's train, validation and test datasets, read like the built-in splits (see
    :class:`valleys.zoo.data.Splits`), with the ``collate`` function their loaders need (``None``: PyTorch's
    default) and ``notes`` on what valleys changed (a shuffling loader rebuilt in order, a validation split
    held out). Regression targets are used in their own units (``y_mean`` 0, ``y_std`` 1)."""

    name: str
    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...] = ()
    info: dict = field(default_factory=dict)
    ood: None = None
    collate: Callable[[list], Any] | None = None
    y_mean: float = 0.0
    y_std: float = 1.0

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _arrays(path: Path, flag: str) -> dict[str, Any]:
    import numpy as np
    import torch

    if not path.is_file():
        raise InputError(f"{flag} {path}: the file does not exist")
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{flag} {path} is not a NumPy .npz archive of arrays ({e})") from None
    with raw:
        keys = set(raw.files)
        need = ["x_train", "y_train", "x_test", "y_test"]
        missing = [k for k in need if k not in keys]
        if missing:
            raise InputError(
                f"{flag} {path} lacks {', '.join(missing)}; it must hold x_train, y_train, x_test, y_test "
                f"(and optionally x_val, y_val); found: {', '.join(sorted(keys)) or 'nothing'}"
            )
        if ("x_val" in keys) != ("y_val" in keys):
            raise InputError(f"{flag} {path} holds only one of x_val and y_val; give both or neither")
        out: dict[str, Any] = {}
        for split in ("train", "val", "test"):
            if f"x_{split}" not in keys:
                continue
            x, y = raw[f"x_{split}"], raw[f"y_{split}"]
            if len(x) != len(y):
                raise InputError(
                    f"{flag} {path}: x_{split} has {len(x)} rows and y_{split} {len(y)}; they must have equal lengths"
                )
            if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
                raise InputError(f"{flag} {path}: x_{split} and y_{split} must be numeric arrays")
            xt = torch.from_numpy(np.ascontiguousarray(x)).float()
            yt = torch.from_numpy(np.ascontiguousarray(y))
            yt = yt.long() if y.dtype.kind in "biu" else yt.float()
            out[split] = torch.utils.data.TensorDataset(xt, yt)
    return out


def _factory_parts(obj: Any, ref: str) -> dict[str, Any]:
    names = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
    parts: dict[str, Any] = {}
    for split, keys in names.items():
        for k in keys:
            v = obj.get(k) if isinstance(obj, Mapping) else getattr(obj, k, None)
            if v is not None:
                parts[split] = v
                break
    if "train" not in parts or "test" not in parts:
        raise UserCodeError(
            f"--data {ref!r} returned a {type(obj).__name__}; return a mapping {{'train': ..., 'test': ..., "
            "'val': ... (optional)}} or an object with train, test (and val) attributes, each a Dataset or DataLoader"
        )
    return parts


def load_user_splits(cfg: TrainConfig, *, num_classes: int | None = None) -> UserSplits:
    """The splits of a run whose ``dataset`` is the user's data (see the module docstring); every error names
    ``--data``. The task and the number of classes are inferred from the targets unless ``cfg.task`` is set."""
    import torch
    from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

    ref = cfg.dataset
    notes: list[str] = []
    collate = None
    if ref.endswith(".npz") and ":" not in ref:
        parts = _arrays(Path(ref), "--data")
    else:
        raw = _factory_parts(call_factory(ref, "--data", dict(cfg.data_args)), ref)
        parts = {}
        collates = {}
        for split, given in raw.items():
            ds = given
            if isinstance(given, DataLoader):
                if split != "train" and isinstance(given.sampler, RandomSampler):
                    notes.append(f"the factory's {split} loader shuffles; valleys rebuilt it in order")
                collates[split] = given.collate_fn
                ds = given.dataset
            if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
                raise UserCodeError(
                    f"--data {ref!r}: its {split!r} split is a {type(ds).__name__}; give a Dataset with __len__ "
                    "or a DataLoader over one"
                )
            parts[split] = ds
        from torch.utils.data import default_collate

        chosen = {id(c): c for c in collates.values() if c is not default_collate}
        if len(chosen) > 1:
            raise UserCodeError(f"--data {ref!r}: the loaders use different collate functions; use one for all splits")
        collate = next(iter(chosen.values()), None)
    for split, ds in parts.items():
        if len(ds) == 0:
            raise InputError(f"--data {ref!r}: its {split} split is empty")
    if "val" not in parts:
        n = len(parts["train"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        n_val = int(round(cfg.val_fraction * n))
        parts["val"] = Subset(parts["train"], perm[:n_val])
        parts["train"] = Subset(parts["train"], perm[n_val:])
        notes.append(f"no validation split given: {n_val} of the {n} training examples held out (--val-fraction)")
    if cfg.train_subset is not None:
        parts["train"] = Subset(parts["train"], list(range(min(cfg.train_subset, len(parts["train"])))))
    if cfg.test_subset is not None:
        parts["test"] = Subset(parts["test"], list(range(min(cfg.test_subset, len(parts["test"])))))
    splits = UserSplits(short_name(ref), parts["train"], parts["val"], parts["test"], 0, collate=collate)
    if cfg.task is not None and cfg.user_model and cfg.data_sha256 is not None and num_classes is None:
        task, classes = (
            cfg.task,
            0,
        )  # a made run (its data file is hashed) recorded it; the user's model needs no class count
    else:
        task, classes = infer_task(splits, cfg)
    splits.num_classes = num_classes if num_classes is not None else classes
    first = parts["train"][0]
    x = first[0] if isinstance(first, (tuple, list)) else None
    splits.input_shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
    splits.info = {"task": task, "notes": notes, "source": ref}
    return splits


def _tensor_targets(ds: Any) -> Any:
    """The second tensor of a ``TensorDataset`` (indexed for a ``Subset`` of one), ``None`` for other datasets."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[1]
    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset) and len(ds.dataset.tensors) >= 2:
        return ds.dataset.tensors[1][list(ds.indices)]
    return None


def infer_task(splits: UserSplits, cfg: TrainConfig) -> tuple[str, int]:
    """``(task, num_classes)`` from the targets of every split (read through the run's adapter): integer labels
    in ``[0, C)`` make a classification task with ``C`` classes, float targets a regression task (0 classes).
    ``cfg.task``, when set, must fit the targets; :class:`InputError` for targets that fit neither task."""
    import torch

    from ..zoo.data import make_loader

    adapter = cfg.adapter(task="classification")
    ys = []
    for split in ("train", "val", "test"):
        ds = getattr(splits, split)
        if len(ds) == 0:
            continue
        direct = _tensor_targets(ds) if splits.collate is None and adapter.target in (None, 1) else None
        if direct is not None:  # a TensorDataset (or a subset of one): its target tensor, without a pass
            ys.append(direct)
            continue
        for batch in make_loader(ds, 1000, collate_fn=splits.collate):
            y = adapter.targets(batch)
            if not isinstance(y, torch.Tensor):
                raise InputError(
                    f"--data {splits.name!r}: the targets of a batch are a {type(y).__name__}, not a tensor; say "
                    "where they are with --target KEY (or INDEX)"
                )
            ys.append(y)
    y = torch.cat([t.reshape(len(t), -1) if t.dim() > 1 else t for t in ys])
    if y.is_floating_point():
        if cfg.task == "classification":
            raise InputError(
                f"--task classification needs integer class labels, but --data {splits.name!r} has float targets; "
                "convert them to int64 labels or use --task regression"
            )
        if y.dim() > 1 and y.shape[1] != 1:
            raise InputError(
                f"--data {splits.name!r}: float targets of shape {tuple(y.shape[1:])} per example fit neither task: "
                "regression takes one number per example"
            )
        return "regression", 0
    if y.dtype == torch.bool or y.dim() != 1 or int(y.min()) < 0:
        raise InputError(
            f"--data {splits.name!r}: targets of dtype {y.dtype} and shape {tuple(y.shape[1:])} per example fit "
            "neither task: classification takes one integer label >= 0 per example, regression one float"
        )
    if cfg.task == "regression":
        raise InputError(
            f"--task regression needs float targets, but --data {splits.name!r} has integer ones ({y.dtype}); "
            "convert them to float or use --task classification"
        )
    return "classification", int(y.max()) + 1
