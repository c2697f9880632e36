"""A training run's data and network, rebuilt the same way by training, evaluation and the studies.

A run's ``dataset`` and ``model`` name a built-in set and architecture (:mod:`valleys.zoo`) or the user's own
(:mod:`valleys.app.user_data`, :mod:`valleys.app.user_code`); everything that loads a run goes through
:func:`load_splits`, :func:`build_run_model` and :func:`split_loader`, so the user's code is used the same way
everywhere. A run made from the user's files records their SHA-256 (``model_sha256``, ``data_sha256``) and is
refused, naming the file, when it is rebuilt from a file that changed since.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UserCodeError
from ..zoo.data import Splits, load_dataset, make_loader
from ..zoo.models import build_model
from ..zoo.regression import GaussianMLP, load_regression
from .config import TrainConfig

__all__ = [
    "load_splits",
    "build_run_model",
    "eval_loaders",
    "bn_loader",
    "split_loader",
    "source_hashes",
    "with_sources",
    "load_init",
]


def _data_file_hash(cfg: TrainConfig) -> str | None:
    import hashlib
    from pathlib import Path

    from .user_code import reference_sha256

    if ":" in cfg.dataset:  # a factory: its file (see TrainConfig.user_data)
        return reference_sha256(cfg.dataset, "--data")
    path = Path(cfg.dataset)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def source_hashes(cfg: TrainConfig) -> dict[str, str | None]:
    """``{"model_sha256": ..., "data_sha256": ...}`` of the user's files the run is made from (``None`` for a
    built-in model or dataset, or a module without a file)."""
    from .user_code import reference_sha256

    return {
        "model_sha256": reference_sha256(cfg.model, "--model") if cfg.user_model else None,
        "data_sha256": _data_file_hash(cfg) if cfg.user_data else None,
    }


def with_sources(cfg: TrainConfig, splits: Any) -> TrainConfig:
    """``cfg`` as a new run records it: the task inferred from the user's data (``splits.info``) when not
    stated, so every later load agrees, and the SHA-256 of the user's files where not recorded yet (see
    :func:`source_hashes`), so a later command refuses to rebuild from changed ones."""
    import dataclasses

    if cfg.user_data and cfg.task is None:
        cfg = dataclasses.replace(cfg, task=splits.info["task"])
    hashes = source_hashes(cfg)
    return dataclasses.replace(
        cfg,
        model_sha256=cfg.model_sha256 or hashes["model_sha256"],
        data_sha256=cfg.data_sha256 or hashes["data_sha256"],
    )


def _check_unchanged(what: str, ref: str, saved: str | None, now: str | None) -> None:
    if saved is not None and now != saved:
        raise CheckpointError(
            f"the {what} file behind {ref!r} changed since this run was made (sha256 {saved[:12]}..., now "
            f"{(now or 'missing')[:12]}...): restore it, or train a new run from the changed file"
        )


def load_splits(cfg: TrainConfig) -> Any:
    """The run's train, validation and test splits (and OOD set), from its dataset settings."""
    if cfg.user_data:
        from .user_data import load_user_splits

        _check_unchanged("data", cfg.dataset, cfg.data_sha256, _data_file_hash(cfg) if cfg.data_sha256 else None)
        return load_user_splits(cfg)
    if cfg.is_regression:
        return load_regression(cfg.dataset, root=cfg.data_root, split=cfg.uci_split, val_fraction=cfg.val_fraction)
    return load_dataset(
        cfg.dataset,
        val_fraction=cfg.val_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        root=cfg.data_root,
        ood_split=cfg.ood_split,
    )


def split_loader(splits: Any, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Any:
    """A loader of split ``split`` (``train``, ``val``, ``test``, ``ood``) in batches of ``batch_size``, with the
    splits' own ``collate`` function (the user's data may have one); shuffled with ``seed`` for training."""
    return make_loader(
        getattr(splits, split), batch_size, shuffle=shuffle, seed=seed, collate_fn=getattr(splits, "collate", None)
    )


def eval_loaders(splits: Any) -> dict[str, Any]:
    """Unshuffled loaders of the validation and test splits (and the OOD set), batches of 1000."""
    loaders = {"val": split_loader(splits, "val", 1000), "test": split_loader(splits, "test", 1000)}
    if splits.ood is not None:
        loaders["ood"] = split_loader(splits, "ood", 1000)
    return loaders


def bn_loader(cfg: TrainConfig, splits: Any) -> Any:
    """The loader BatchNorm statistics are recomputed on: the training split."""
    return split_loader(splits, "train", max(cfg.batch_size, 256))


def build_run_model(cfg: TrainConfig, splits: Splits | Any) -> nn.Module:
    """The run's network, initialised from its seed, on its device: the user's factory called with
    ``model_args``, or a built-in architecture sized for the data."""
    torch.manual_seed(cfg.seed)
    if cfg.user_model:
        from .user_code import call_factory, reference_sha256

        if cfg.model_sha256 is not None:
            _check_unchanged("model", cfg.model, cfg.model_sha256, reference_sha256(cfg.model, "--model"))
        model = call_factory(cfg.model, "--model", dict(cfg.model_args))
        if not isinstance(model, nn.Module):
            raise UserCodeError(
                f"--model {cfg.model!r} returned a {type(model).__name__}; the factory must return a torch.nn.Module"
            )
        return model.to(cfg.device)
    if cfg.is_regression:
        return GaussianMLP(splits.input_shape[0], heteroscedastic=cfg.heteroscedastic, **cfg.model_args).to(cfg.device)
    return build_model(cfg.model, splits.input_shape, splits.num_classes, **cfg.model_args).to(cfg.device)


def load_init(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Load the weights ``cfg.init`` names (a run folder, or a checkpoint of any format that
    :func:`valleys.core.foreign.read_state_dict` reads) into ``model``; errors name ``--init``."""
    from ..core.foreign import load_foreign_weights

    assert cfg.init is not None  # only called for runs that start from weights
    try:
        return load_foreign_weights(model, cfg.init)
    except CheckpointError as e:
        raise CheckpointError(f"--init: {e}") from None
