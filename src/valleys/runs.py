"""Friendly entry point: a whole training run from one :class:`TrainConfig`, into one run folder.

A run folder holds ``config.json`` (every setting), ``metrics.jsonl`` (one line per epoch),
``checkpoint.safetensors`` (training state, for resume), ``model.safetensors`` (the final weights: the SGD
end point, or the SWA average with recomputed BatchNorm), ``results.json`` (DESIGN 3) and ``report.md``.
The CLI's ``train`` and ``evaluate`` are thin wrappers over :func:`train_run` and :func:`evaluate_run`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .averaging import SWA
from .checkpoint import (CheckpointError, check_model_signature, load_checkpoint, model_signature,
                         save_checkpoint, write_json)
from .data import DATASETS, Splits, load_dataset, make_loader
from .models import MODELS, build_model
from .predict import evaluate
from .schedules import build_schedule
from .swa import SWACallback
from .training import Trainer

__all__ = ["TrainConfig", "METHODS", "train_run", "evaluate_run", "load_run_model", "RunFolderError",
           "prepare_run_dir", "summary_metrics"]

METHODS: dict[str, str] = {
    "sgd": "SGD with momentum; LR decays with the SWA schedule's shape to 0.01 lr over all epochs",
    "swa": "SGD, then from --swa-start an SWA schedule to --swa-lr and a uniform average of one iterate per epoch",
}
RUN_FILES = ("config.json", "results.json", "checkpoint.safetensors", "model.safetensors", "metrics.jsonl")
SUMMARY_KEYS = ("accuracy", "error", "nll", "brier", "ece", "mce")


class RunFolderError(FileExistsError):
    """An output folder already holds another run (pass overwrite=True / --overwrite)."""


@dataclass
class TrainConfig:
    """Every setting of a training run (all have defaults; see ``valleys train --help``)."""

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    method: str = "swa"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 128
    swa_start: int | None = None  # default: half the epochs
    swa_lr: float | None = None   # default: lr (constant-LR SWA)
    seed: int = 0
    val_fraction: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 10
    eval_every: int = 1

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value checked; raises ``ValueError`` saying what is wrong."""
        cfg = dataclasses.replace(self)
        if cfg.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        if cfg.model not in MODELS:
            raise ValueError(f"unknown model {cfg.model!r}; valid models: {', '.join(MODELS)}")
        if cfg.method not in METHODS:
            raise ValueError(f"unknown method {cfg.method!r}; valid methods: {', '.join(METHODS)}")
        if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {cfg.epochs}")
        for name in ("lr", "batch_size", "checkpoint_every", "eval_every"):
            v = getattr(cfg, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {v}")
        if cfg.wd < 0 or cfg.momentum < 0:
            raise ValueError(f"wd and momentum must be non-negative, got wd={cfg.wd}, momentum={cfg.momentum}")
        if cfg.method == "swa":
            if cfg.swa_start is None:
                cfg.swa_start = cfg.epochs // 2
            if cfg.swa_lr is None:
                cfg.swa_lr = cfg.lr
            if not 1 <= cfg.swa_start < cfg.epochs:
                raise ValueError(
                    f"swa-start must be at least 1 and below epochs ({cfg.epochs}) so that at least one epoch is "
                    f"averaged, got {cfg.swa_start}"
                )
            if not cfg.swa_lr > 0:
                raise ValueError(f"swa-lr must be positive, got {cfg.swa_lr}")
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} requested but CUDA is not available; use --device cpu")
        return cfg


def prepare_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``out`` or check it may be used: refuse a folder holding another run unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    present = [f for f in RUN_FILES if (out / f).exists()]
    if present and not (overwrite or resume):
        raise RunFolderError(
            f"{out} already holds a run ({', '.join(present)}); choose another --out, pass --overwrite to "
            "replace it, or --resume to continue it"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    return out


def _loaders(cfg: TrainConfig, splits: Splits):
    train = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    bn = make_loader(splits.train, max(cfg.batch_size, 256))
    evals = {"val": make_loader(splits.val, 1000), "test": make_loader(splits.test, 1000)}
    return train, bn, evals


def _build(cfg: TrainConfig, splits: Splits) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, splits.input_shape, splits.num_classes)


def summary_metrics(res: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an :func:`valleys.predict.evaluate` result."""
    return {k: float(res[k]) for k in SUMMARY_KEYS}


def train_run(cfg: TrainConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False,
              progress: bool = True, splits: Splits | None = None) -> dict[str, Any]:
    """Train one run into folder ``out`` and return its ``results.json`` content.

    All checks (config, folder) happen before any data is loaded or any file is written. With
    ``resume=True`` training continues from ``out/checkpoint.safetensors`` (the config must match).
    """
    cfg = cfg.resolved()
    out = Path(out)
    if resume:
        if not (out / "checkpoint.safetensors").exists():
            raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
        saved = json.loads((out / "config.json").read_text())
        if saved != asdict(cfg):
            diff = {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v}
            raise ValueError(f"cannot resume {out}: the config differs from the saved one (saved, now): {diff}")
    prepare_run_dir(out, overwrite=overwrite, resume=resume)
    splits = splits or load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, train_subset=cfg.train_subset,
                                    test_subset=cfg.test_subset, root=cfg.data_root)
    model = _build(cfg, splits)
    train, bn, evals = _loaders(cfg, splits)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    schedule = build_schedule(cfg.method, lr=cfg.lr, epochs=cfg.epochs, swa_start=cfg.swa_start, swa_lr=cfg.swa_lr)
    callbacks = []
    if cfg.method == "swa":
        callbacks.append(SWACallback(SWA(model, moments=True), cfg.swa_start, bn_loader=bn, eval_loaders=evals))
    if not resume:
        write_json(out / "config.json", asdict(cfg))
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, train, epochs=cfg.epochs, schedule=schedule,
                      callbacks=callbacks, eval_loaders=evals, eval_every=cfg.eval_every, device=cfg.device,
                      seed=cfg.seed, checkpoint_path=out / "checkpoint.safetensors",
                      checkpoint_every=cfg.checkpoint_every, log_path=out / "metrics.jsonl",
                      header={"config": asdict(cfg)}, progress=progress)
    start = time.perf_counter()
    history = trainer.fit(resume=out / "checkpoint.safetensors" if resume else None)
    train_s = time.perf_counter() - start
    save_checkpoint(out / "model.safetensors", {"model": model.state_dict()},
                    {"kind": "model", "config": asdict(cfg), "signature": model_signature(model)})
    start = time.perf_counter()
    metrics = {name: summary_metrics(evaluate(model, loader, device=cfg.device)) for name, loader in evals.items()}
    results = {
        "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed,
        "epochs": cfg.epochs, "metrics": metrics,
        "timing": {"train_s": train_s, "eval_s": time.perf_counter() - start,
                   "epoch_s": sum(h["train_time"] for h in history) / max(len(history), 1)},
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(out / "results.json", results)
    return results


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, TrainConfig, Splits]:
    """Rebuild a run's model from ``config.json`` and load ``model.safetensors`` (architecture checked)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no config.json (train one with 'valleys train')")
    cfg = TrainConfig(**json.loads((run_dir / "config.json").read_text())).resolved()
    state, header = load_checkpoint(run_dir / "model.safetensors")
    if header.get("kind") != "model":
        raise CheckpointError(f"{run_dir / 'model.safetensors'} is not a model checkpoint")
    splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, train_subset=cfg.train_subset,
                          test_subset=cfg.test_subset, root=cfg.data_root)
    model = _build(cfg, splits)
    check_model_signature(header["signature"], model, str(run_dir / "model.safetensors"))
    model.load_state_dict(state["model"])
    return model, cfg, splits


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluate a run's final model on its validation and test splits; writes ``evaluation.json``."""
    model, cfg, splits = load_run_model(run_dir)
    _, _, evals = _loaders(cfg, splits)
    res = {name: evaluate(model, loader, device=cfg.device, reliability=True) for name, loader in evals.items()}
    out = {"method": cfg.method, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed,
           "metrics": {k: summary_metrics(v) for k, v in res.items()},
           "reliability": {k: v["reliability"] for k, v in res.items()}}
    write_json(Path(run_dir) / "evaluation.json", out)
    return out
