"""A whole training run from one :class:`~valleys.app.config.TrainConfig`, into one run folder.

A run folder holds ``config.json`` (every setting), ``metrics.jsonl`` (one line per epoch),
``checkpoint.safetensors`` (training state, for resume), ``model.safetensors`` (the final network: the SGD
end point, the SWA mean with recomputed BatchNorm, or FGE's final weights), ``posterior.safetensors``
(SWAG moments and deviations, or FGE snapshots), ``results.json`` and ``report.md``. Ensembles
and MultiSWAG train their members into ``member-<i>`` sub-folders. The method
(:class:`valleys.app.methods.Method`, from :mod:`valleys.app.registry`) is looked up once per run and
provides the schedule, the callbacks and the saved files; :func:`valleys.app.evaluate.evaluate_run`
evaluates the result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.checkpoint import CheckpointError, model_signature, save_checkpoint, write_json
from ..core.distributed import is_main, shard_loader, world_size
from ..errors import InputError
from ..training.augment import augmented_step, supervised_augment
from ..training.trainer import CheckpointPolicy, EvaluationPolicy, Trainer
from ..zoo.catalog import REGRESSION_DATASETS
from ..zoo.data import Splits
from .config import (
    FUTURE_SETTINGS,
    TrainConfig,
    amend,
    before_amendments,
    check_resume_flags,
    check_saved_settings,
    read_json_object,
    read_run_config,
    write_run_config,
)
from .evaluate import evaluate_run
from .folders import has_checkpoint, output_guard, prepare_run_dir, ranks_folder
from .methods.base import Method
from .registry import get_method, refuse_foreign_settings
from .run_data import bn_loader, build_run_model, eval_loaders, load_init, load_splits, split_loader, with_sources

__all__ = ["train_run", "train_config_from_flags", "RunTiming"]


@dataclass(frozen=True)
class RunTiming:
    """Where a run's time went (seconds): training (``train_s``, all members), per epoch (one network), training
    with setup (``total_train_s``), the final evaluation (``eval_s``); ``world_size`` under torchrun. Its JSON
    (``results.json``'s ``timing``) holds the fields that were measured."""

    train_s: float
    epoch_s: float | None = None
    total_train_s: float | None = None
    eval_s: float | None = None
    world_size: int | None = None

    def to_json(self) -> dict[str, float]:
        """The measured fields (``None`` ones left out), in field order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# ---------------------------------------------------------------------- one training run
def _train_single(
    cfg: TrainConfig, method: Method, out: Path, splits: Splits, *, resume: bool, progress: bool
) -> RunTiming:
    """Train one network with ``method`` (one without members) into ``out``; returns its timing."""
    model = build_run_model(cfg, splits)
    if cfg.init is not None and not resume:  # start from trained weights (a resumed run has its own)
        load_init(model, cfg)
    train = split_loader(splits, "train", cfg.batch_size, shuffle=True, seed=cfg.seed)
    bn = shard_loader(bn_loader(cfg, splits), "BatchNorm")  # under torchrun: each rank its slice, all-reduced
    evals = {k: v for k, v in eval_loaders(splits).items() if k != "ood"}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    schedule = method.schedule(cfg)
    callbacks = method.callbacks(
        cfg, model, bn_loader=bn, eval_loaders={k: shard_loader(v, k) for k, v in evals.items()}
    )
    if (not resume or cfg.amendments) and is_main():  # a resume records its amendments
        write_run_config(out, cfg)
    augment = supervised_augment(cfg.augment, tuple(splits.input_shape), dataset=cfg.dataset)
    trainer = Trainer(  # the model is on cfg.device already (build_run_model)
        model,
        opt,
        train,
        cfg.epochs,
        adapter=cfg.adapter(),
        step_fn=augmented_step(augment) if augment is not None else None,
        schedule=schedule,
        callbacks=callbacks,
        evaluation=EvaluationPolicy(evals, every=cfg.eval_every),
        checkpoint=CheckpointPolicy(
            out / "checkpoint.safetensors",
            every=cfg.checkpoint_every,
            header={"config": asdict(cfg)},
            log=out / "metrics.jsonl",
        ),
        seed=cfg.seed,
    )
    start = time.perf_counter()
    history = trainer.fit(resume=out / "checkpoint.safetensors" if resume else None, progress=progress)
    train_s = time.perf_counter() - start
    header = {"config": asdict(cfg), "signature": model_signature(model)}
    if is_main():  # the replicas hold the same weights and posteriors: rank 0 writes them
        save_checkpoint(out / "model.safetensors", {"model": model.state_dict()}, {**header, "kind": "model"})
        method.save(out, callbacks, header)
    return RunTiming(train_s, epoch_s=sum(h["train_time"] for h in history) / max(len(history), 1))


def _member_config(cfg: TrainConfig, method: Method, i: int) -> TrainConfig:
    """Member ``i`` of an ensemble of runs: the member method, seed ``seed + i``."""
    assert method.member is not None  # only ensembles of runs have members
    return dataclasses.replace(cfg, method=method.member, seed=cfg.seed + i).resolved()


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    splits: Splits | None = None,
) -> dict[str, Any]:
    """Train one run into folder ``out``, evaluate its predictive distribution and return ``results.json``.

    All checks (config, folder) happen before any data is loaded or any file is written. With
    ``resume=True`` training continues from ``out/checkpoint.safetensors`` (the config must match).

    Under ``torchrun`` (a ``torch.distributed`` process group): every rank trains its slice of every global
    batch of ``cfg.batch_size`` with ``DistributedDataParallel`` (:class:`valleys.training.trainer.Trainer`);
    rank 0 alone writes the folder and evaluates the result while the others wait; every rank returns the
    results. Members of ensembles are trained one after the other, each on all ranks.
    """
    cfg = cfg.resolved()
    method = get_method(cfg.method)  # resolved once for the whole run
    out = Path(out)
    if resume:  # the saved settings, once the changes this resume makes (amendments) are undone
        saved_amendments = len(read_json_object(out / "config.json").get("amendments", []))
        check_saved_settings(out, asdict(before_amendments(cfg, saved_amendments)), "run")
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)  # refuse an existing run first
    splits = splits or load_splits(cfg)  # data and model errors surface here, before a file is touched
    if not resume:  # a resumed run has them recorded already
        cfg = with_sources(cfg, splits)
    if len(splits.val) == 0:
        raise InputError(
            f"--val-fraction {cfg.val_fraction} leaves no validation examples; every run is evaluated "
            "on its validation split: use a fraction that holds out at least one example"
        )
    model = build_run_model(cfg, splits)
    if cfg.init is not None:
        load_init(model, cfg)  # a checkpoint that does not fit is refused before any file is written
    if world_size() > 1:
        return _train_run_ranks(cfg, method, out, splits, overwrite=overwrite, resume=resume, progress=progress)
    with output_guard(out, resumable=lambda: has_checkpoint(out)):
        prepare_run_dir(out, overwrite=overwrite, resume=resume)
        start = time.perf_counter()
        if method.member is not None:
            member_method = get_method(method.member)
            write_run_config(out, cfg)
            timing = RunTiming(0.0)
            for i in range(cfg.members):
                member = out / f"member-{i}"
                done = resume and (member / "model.safetensors").exists()
                if not done:
                    again = resume and (member / "checkpoint.safetensors").exists()
                    prepare_run_dir(member, overwrite=True, resume=again)
                    t = _train_single(
                        _member_config(cfg, method, i), member_method, member, splits, resume=again, progress=progress
                    )
                    timing = dataclasses.replace(timing, train_s=timing.train_s + t.train_s)
        else:
            if resume and not (out / "checkpoint.safetensors").exists():
                raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
            timing = _train_single(cfg, method, out, splits, resume=resume, progress=progress)
        timing = dataclasses.replace(timing, total_train_s=time.perf_counter() - start)
        results = evaluate_run(out, splits=splits, progress=progress, write=False)
        results["timing"] = dataclasses.replace(timing, eval_s=results.pop("eval_s")).to_json()
        write_json(out / "results.json", results)
    return results


def _train_run_ranks(
    cfg: TrainConfig, method: Method, out: Path, splits: Splits, *, overwrite: bool, resume: bool, progress: bool
) -> dict[str, Any]:
    """:func:`train_run` on every rank of a process group: rank 0 prepares the folder, all train, rank 0
    evaluates and writes ``results.json``, the others read it once rank 0 is done."""
    if method.member is not None:
        raise InputError(
            f"--method {cfg.method} trains several members; under torchrun train each member as its own "
            "run (--method swag or sgd with --seed), or run it in one process"
        )
    if resume and not (out / "checkpoint.safetensors").exists():
        raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
    with ranks_folder(out, overwrite=overwrite, resume=resume, resumable=lambda: has_checkpoint(out)) as writes:
        start = time.perf_counter()
        timing = _train_single(cfg, method, out, splits, resume=resume, progress=progress and writes)
        timing = dataclasses.replace(timing, total_train_s=time.perf_counter() - start)
        if writes:
            results = evaluate_run(out, splits=splits, progress=progress, write=False)
            timing = dataclasses.replace(timing, eval_s=results.pop("eval_s"), world_size=world_size())
            results["timing"] = timing.to_json()
            write_json(out / "results.json", results)
    return results if writes else read_json_object(out / "results.json")


def train_config_from_flags(flags: dict[str, Any], *, given: dict[str, Any] | None = None) -> tuple[TrainConfig, Path]:
    """The resolved settings and the run folder of ``valleys train`` from its flags (``{setting: value}``,
    ``None``: not given; ``out``, ``resume``: the folder and whether to continue it). Without ``model`` the
    dataset's default architecture. With ``resume`` the settings are the saved run's; ``given`` (the flags typed,
    not their defaults) must agree with them. Method settings given for a method that does not use them are
    refused."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in flags.items() if k in fields and v is not None})
    if flags.get("model") is None:  # a Gaussian-head MLP for regression, an MLP for the user's data
        cfg.model = "mlp" if cfg.dataset in REGRESSION_DATASETS or cfg.user_data else TrainConfig.model
    method = flags.get("method", cfg.method)
    if flags.get("resume"):  # the run's own settings; flags typed now must agree with them
        out = Path(flags.get("out") or _default_folder(cfg))
        if not (out / "config.json").is_file():
            raise CheckpointError(
                f"cannot resume: {out} holds no run (no config.json); train it first without --resume"
            )
        saved = read_run_config(out)
        typed = {k: v for k, v in (given or {}).items() if k in fields}
        future = {k: typed.pop(k) for k in FUTURE_SETTINGS if k in typed}
        check_resume_flags(
            typed, asdict(saved), out / "config.json", {"heteroscedastic": "--homoscedastic"}, FUTURE_SETTINGS
        )
        method, cfg = saved.method, saved
        changed = {k: v for k, v in future.items() if getattr(saved, k) != v}
        if changed:  # settings of the epochs still to run (after a divergence): recorded as an amendment
            epoch, step = _resumed_at(out)
            if epoch >= saved.epochs:  # a finished run: nothing left that the change could act on
                check_resume_flags(changed, asdict(saved), out / "config.json", {})
            cfg = amend(saved, changed, epoch, step)
    refuse_foreign_settings(method, flags)
    cfg = cfg.resolved()
    return cfg, Path(flags.get("out") or _default_folder(cfg))


def _resumed_at(out: Path) -> tuple[int, int]:
    """The epoch and step of the checkpoint a ``--resume`` of ``out`` continues from (for an amendment)."""
    from ..core.checkpoint import load_checkpoint

    path = out / "checkpoint.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume with changed settings: {path} does not exist (the run has no checkpoint to continue)"
        )
    state, header = load_checkpoint(path)
    return int(header.get("epoch", 0)), int(state.get("step", 0))


def _default_folder(cfg: TrainConfig) -> str:
    from .user_code import short_name

    return f"runs/{short_name(cfg.dataset)}-{short_name(cfg.model)}-{cfg.method}-seed{cfg.seed}"
