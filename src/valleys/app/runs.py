"""Friendly entry point: a whole training run from one :class:`TrainConfig`, into one run folder.

A run folder holds ``config.json`` (every setting), ``metrics.jsonl`` (one line per epoch),
``checkpoint.safetensors`` (training state, for resume), ``model.safetensors`` (the final network: the SGD
end point, the SWA mean with recomputed BatchNorm, or FGE's final weights), ``posterior.safetensors``
(SWAG moments and deviations, or FGE snapshots), ``results.json`` and ``report.md``. Ensembles
and MultiSWAG train their members into ``member-<i>`` sub-folders.

The methods live in :mod:`valleys.app.registry` (one :class:`valleys.app.methods.Method` each: settings,
schedule, callbacks, saved files, predictive). Every method is evaluated the same way:
:func:`valleys.evaluation.predict.bma` over the method's samples (one network for SGD and SWA, S draws for
SWAG with a BatchNorm recompute each, the snapshots for FGE, the members for an ensemble, S draws per member
for MultiSWAG). The CLI's ``train`` and ``evaluate`` are thin wrappers over
:func:`train_run` and :func:`evaluate_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.checkpoint import (
    CheckpointError,
    check_model_signature,
    checkpoint_field,
    load_checkpoint,
    model_signature,
    save_checkpoint,
    write_json,
)
from ..core.distributed import barrier, is_main, shard_loader, world_size
from ..errors import ConfigError
from ..evaluation.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from ..evaluation.engine import BNPolicy
from ..evaluation.metrics import LOG_EDGES, classification_metrics, regression_metrics
from ..evaluation.predict import bma
from ..evaluation.results import BMAResult, ClassificationScores, Scores
from ..training.trainer import CheckpointPolicy, EvaluationPolicy, Trainer
from ..zoo.catalog import INPUT_KINDS, MODEL_INPUTS
from ..zoo.data import DATASETS, Splits, load_dataset, make_loader
from ..zoo.models import MODELS, build_model
from ..zoo.regression import REGRESSION_DATASETS, GaussianMLP, load_regression, unstandardise
from .folders import OutputFolderError, check_output, ours, output_guard
from .methods.base import Predictive
from .registry import REGISTRY, get_method, method_help
from .settings import TrainSettings

__all__ = [
    "TrainConfig",
    "METHODS",
    "train_run",
    "evaluate_run",
    "load_run_model",
    "RunFolderError",
    "ConfigError",
    "read_json_object",
    "read_epoch_log",
    "check_saved_settings",
    "ranks_folder",
    "read_run_config",
    "prepare_run_dir",
    "summary_metrics",
    "SEED_MAX",
]

#: ``{method: one-line help}``, from :data:`valleys.app.registry.REGISTRY`.
METHODS: dict[str, str] = method_help()
RUN_FILES = (
    "config.json",
    "results.json",
    "checkpoint.safetensors",
    "model.safetensors",
    "metrics.jsonl",
    "posterior.safetensors",
    "trajectory.safetensors",
    "report.md",
)
SUMMARY_KEYS = ("accuracy", "error", "nll", "brier", "ece", "mce")
REGRESSION_KEYS = ("rmse", "nll", "coverage_95")


#: An output folder already holds another run (pass overwrite=True / --overwrite), or cannot be a folder.
RunFolderError = OutputFolderError


SEED_MAX = 2**63 - 1  # seeds live in [0, 2**63 - 1]: torch, numpy and seed + epoch all fit


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ConfigError` naming the file if it is not valid JSON or not an object
    (``FileNotFoundError`` if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of settings, found a JSON {type(raw).__name__}")
    return raw


def read_epoch_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch log of a run folder (``metrics.jsonl``, one JSON object per line)."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_saved_settings(out: Path, settings: dict[str, Any], what: str) -> None:
    """Before ``--resume`` of a multi-run command: ``out/config.json`` must exist and hold ``settings`` (its
    ``folder`` tag aside); else a ``ValueError`` naming ``what`` or listing the settings that differ."""
    if not (out / "config.json").is_file():
        raise ValueError(f"cannot resume: {out} holds no {what} (no config.json)")
    saved = read_json_object(out / "config.json")
    saved.pop("folder", None)
    if saved != settings:
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise ValueError(f"cannot resume {out}: the settings differ from the saved ones (saved, now): {diff}")


def _type_name(annotation: str) -> tuple[str, bool]:
    base, _, rest = annotation.partition(" | ")
    return base, rest == "None"


def check_types(obj: Any) -> None:
    """Every field of the dataclass ``obj`` has its annotated type (``int`` excludes ``bool``; a ``float`` field
    takes an int; ``X | None`` takes ``None``); ``ValueError`` naming the field otherwise."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        base, optional = _type_name(str(f.type))
        if v is None and optional:
            continue
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
        }.get(base, True)
        if not ok:
            want = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[base]
            raise ValueError(f"{f.name} must be {want}{' or null' if optional else ''}, got {v!r} ({type(v).__name__})")


def settings_from_dict(cls: type, raw: dict[str, Any], source: str | Path, *, ignore: tuple[str, ...] = ()) -> Any:
    """``cls(**raw)`` for a settings dataclass read from ``source``, refusing unknown fields and wrong types with
    a :class:`ConfigError` naming ``source`` (``ignore``: keys that are not settings)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names - set(ignore))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(written by another version of valleys, or edited by hand?); known: {', '.join(sorted(names))}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing setting{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    obj = cls(**{k: v for k, v in raw.items() if k in names})
    try:
        check_types(obj)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return obj


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved :class:`TrainConfig` of a run folder's ``config.json``, every error naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: it has no config.json (train one with 'valleys train')"
        )
    raw = read_json_object(path)
    if raw.get("folder") == "curve":
        raise ConfigError(f"{run_dir} is a curve folder (made by 'valleys connect'), not a training run")
    return config_from_dict(raw, path)


def config_from_dict(raw: Any, source: str | Path) -> TrainConfig:
    """A resolved :class:`TrainConfig` from saved settings (a run's ``config.json`` or a checkpoint header)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the run's settings must be a JSON object, found {type(raw).__name__}")
    cfg = settings_from_dict(TrainConfig, raw, source)
    try:
        return cfg.resolved()
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


@dataclass
class TrainConfig(TrainSettings):
    """Every setting of a training run (all have defaults, the fields of :class:`TrainSettings`; see
    ``valleys train --help``)."""

    @property
    def is_regression(self) -> bool:
        """Whether the dataset is a regression task (Gaussian likelihood)."""
        return self.dataset in REGRESSION_DATASETS

    def adapter(self) -> ModelAdapter:
        """How this run's ``(x, y)`` batches and outputs are read: Gaussian NLL on the (mean, variance) head for a
        regression dataset, cross-entropy on the logits otherwise. Every evaluation of the run uses it."""
        return ModelAdapter(loss="gaussian") if self.is_regression else ModelAdapter()

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value checked; raises ``ValueError`` saying what is wrong."""
        cfg = dataclasses.replace(self)
        check_types(cfg)
        if cfg.dataset not in DATASETS and cfg.dataset not in REGRESSION_DATASETS:
            raise ValueError(
                f"unknown dataset {cfg.dataset!r}; valid datasets: "
                f"{', '.join(list(DATASETS) + list(REGRESSION_DATASETS))}"
            )
        if cfg.is_regression:
            if cfg.model != "mlp":
                raise ValueError(f"regression datasets use --model mlp (a Gaussian-head MLP), got {cfg.model!r}")
            if cfg.ood_split:
                raise ValueError("--ood-split is a classification protocol; it does not apply to regression")
        if cfg.model not in MODELS:
            raise ValueError(f"unknown model {cfg.model!r}; valid models: {', '.join(MODELS)}")
        needs, gives = MODEL_INPUTS.get(cfg.model, "any"), INPUT_KINDS.get(cfg.dataset)
        if gives is not None and needs not in ("any", gives):
            fits = [m for m, k in MODEL_INPUTS.items() if k in ("any", gives)]
            raise ValueError(
                f"model {cfg.model!r} needs {needs}, dataset {cfg.dataset!r} gives {gives}; use "
                f"--model {' or '.join(fits)}"
            )
        if cfg.method not in METHODS:
            raise ValueError(f"unknown method {cfg.method!r}; valid methods: {', '.join(METHODS)}")
        if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {cfg.epochs}")
        for name in ("lr", "batch_size", "checkpoint_every", "eval_every", "samples", "members"):
            v = getattr(cfg, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {v}")
        if cfg.rank < 1:
            raise ValueError(f"rank must be at least 1, got {cfg.rank}")
        if not (math.isfinite(cfg.val_fraction) and 0 <= cfg.val_fraction < 1):
            raise ValueError(f"val-fraction must be in [0, 1), got {cfg.val_fraction}")
        if cfg.bn_batches is not None and cfg.bn_batches < 1:
            raise ValueError(f"bn-batches must be at least 1, got {cfg.bn_batches}")
        if not (math.isfinite(cfg.wd) and cfg.wd >= 0):
            raise ValueError(f"wd must be finite and >= 0, got {cfg.wd}")
        if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {cfg.momentum}")
        if not 0 <= cfg.seed <= SEED_MAX:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {cfg.seed}")
        if cfg.uci_split < 0:
            raise ValueError(f"uci-split must be >= 0, got {cfg.uci_split}")
        for name in ("train_subset", "test_subset"):
            v = getattr(cfg, name)
            if v is not None and v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {v}")
        if cfg.data_root is not None and not cfg.data_root.strip():
            raise ValueError("data-root must be a path, got an empty string")
        for name in ("swa_lr", "lr_1", "lr_2"):
            v = getattr(cfg, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be finite and positive, got {v}")
        get_method(cfg.method).resolve(cfg)
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise ValueError(f"unknown device {cfg.device!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} requested but CUDA is not available; use --device cpu")
        return cfg


def prepare_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False, create: bool = True) -> Path:
    """Create ``out`` or check it may be used (see :func:`valleys.app.folders.check_output`): refuse a folder
    holding another run or other valleys output unless ``overwrite``, a path under a file, a place without write
    permission. ``create=False`` only checks (nothing is created or deleted). With ``overwrite`` (and not
    ``resume``) the earlier run's files are removed (sub-folders other than ``member-*`` are kept)."""
    out = check_output(out, overwrite=overwrite, resume=resume)
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        import shutil

        for name in ours(out):
            p = out / name
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
            elif name == "figures" or (name.startswith("member-") and (p / "config.json").exists()):
                shutil.rmtree(p)
    return out


def _has_checkpoint(out: Path) -> bool:
    """Whether an interrupted run in ``out`` can be resumed (a training checkpoint in it or a member)."""
    return (out / "checkpoint.safetensors").is_file() or any(out.glob("member-*/checkpoint.safetensors"))


def load_splits(cfg: TrainConfig) -> Splits:
    if cfg.is_regression:
        return load_regression(
            cfg.dataset,
            root=cfg.data_root,
            split=cfg.uci_split,  # type: ignore[return-value]
            val_fraction=cfg.val_fraction,
        )
    return load_dataset(
        cfg.dataset,
        val_fraction=cfg.val_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        root=cfg.data_root,
        ood_split=cfg.ood_split,
    )


def _eval_loaders(splits: Splits) -> dict[str, Any]:
    loaders = {"val": make_loader(splits.val, 1000), "test": make_loader(splits.test, 1000)}
    if splits.ood is not None:
        loaders["ood"] = make_loader(splits.ood, 1000)
    return loaders


def _bn_loader(cfg: TrainConfig, splits: Splits):
    return make_loader(splits.train, max(cfg.batch_size, 256))


def build_run_model(cfg: TrainConfig, splits: Splits) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.is_regression:
        return GaussianMLP(splits.input_shape[0], heteroscedastic=cfg.heteroscedastic).to(cfg.device)
    return build_model(cfg.model, splits.input_shape, splits.num_classes).to(cfg.device)


def summary_metrics(res: Scores | Mapping[str, Any] | None) -> dict[str, float]:
    """The headline numbers of scores: an :func:`valleys.evaluation.predict.evaluate` result, the ``metrics`` of
    a :func:`valleys.evaluation.predict.bma` result, or a :mod:`valleys.evaluation.metrics` dict."""
    if res is None:
        raise ValueError("no scores to summarise (the evaluation was not scored)")
    values = res if isinstance(res, Mapping) else dataclasses.asdict(res)
    keys = REGRESSION_KEYS if "rmse" in values else SUMMARY_KEYS
    return {k: float(values[k]) for k in keys}


# ---------------------------------------------------------------------- one training run
def _train_single(cfg: TrainConfig, out: Path, splits: Splits, *, resume: bool, progress: bool) -> dict[str, Any]:
    """Train one network with a method that has no members into ``out``; returns timing and posterior info."""
    method = get_method(cfg.method)
    model = build_run_model(cfg, splits)
    train = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    bn = shard_loader(_bn_loader(cfg, splits), "BatchNorm")  # under torchrun: each rank its slice, all-reduced
    evals = {k: v for k, v in _eval_loaders(splits).items() if k != "ood"}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    schedule = method.schedule(cfg)
    callbacks = method.callbacks(
        cfg, model, bn_loader=bn, eval_loaders={k: shard_loader(v, k) for k, v in evals.items()}
    )
    if not resume and is_main():
        write_json(out / "config.json", asdict(cfg))
    trainer = Trainer(  # the model is on cfg.device already (build_run_model)
        model,
        opt,
        train,
        cfg.epochs,
        adapter=cfg.adapter(),
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
    return {"train_s": train_s, "epoch_s": sum(h["train_time"] for h in history) / max(len(history), 1)}


def _member_config(cfg: TrainConfig, i: int) -> TrainConfig:
    return dataclasses.replace(cfg, method=get_method(cfg.method).member, seed=cfg.seed + i).resolved()


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
    out = Path(out)
    if resume:
        check_saved_settings(out, asdict(cfg), "run")
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)  # refuse an existing run first
    splits = splits or load_splits(cfg)  # data and model errors surface here, before a file is touched
    if len(splits.val) == 0:
        raise ValueError(
            f"--val-fraction {cfg.val_fraction} leaves no validation examples; every run is evaluated "
            "on its validation split: use a fraction that holds out at least one example"
        )
    build_run_model(cfg, splits)
    if world_size() > 1:
        return _train_run_ranks(cfg, out, splits, overwrite=overwrite, resume=resume, progress=progress)
    with output_guard(out, resumable=lambda: _has_checkpoint(out)):
        prepare_run_dir(out, overwrite=overwrite, resume=resume)
        start = time.perf_counter()
        if get_method(cfg.method).member is not None:
            write_json(out / "config.json", asdict(cfg))
            timing = {"train_s": 0.0}
            for i in range(cfg.members):
                member = out / f"member-{i}"
                done = resume and (member / "model.safetensors").exists()
                if not done:
                    again = resume and (member / "checkpoint.safetensors").exists()
                    prepare_run_dir(member, overwrite=True, resume=again)
                    t = _train_single(_member_config(cfg, i), member, splits, resume=again, progress=progress)
                    timing["train_s"] += t["train_s"]
        else:
            if resume and not (out / "checkpoint.safetensors").exists():
                raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
            timing = _train_single(cfg, out, splits, resume=resume, progress=progress)
        timing["total_train_s"] = time.perf_counter() - start
        results = evaluate_run(out, splits=splits, progress=progress, write=False)
        results["timing"] = {**timing, "eval_s": results.pop("eval_s")}
        write_json(out / "results.json", results)
    return results


@contextlib.contextmanager
def ranks_folder(out: Path, *, overwrite: bool, resume: bool, resumable: Any) -> Any:
    """The output folder of a command that may run under torchrun: rank 0 guards it
    (:func:`valleys.app.folders.output_guard`) and prepares it (:func:`prepare_run_dir`), then every rank
    meets; the body runs on every rank and learns whether it writes (rank 0); at the end every rank meets
    again, so the others can read what rank 0 wrote. In one process: the guard and the preparation."""
    guard = output_guard(out, resumable=resumable) if is_main() else contextlib.nullcontext()
    with guard:
        if is_main():
            prepare_run_dir(out, overwrite=overwrite, resume=resume)
        barrier()
        yield is_main()
        barrier()


def _train_run_ranks(
    cfg: TrainConfig, out: Path, splits: Splits, *, overwrite: bool, resume: bool, progress: bool
) -> dict[str, Any]:
    """:func:`train_run` on every rank of a process group: rank 0 prepares the folder, all train, rank 0
    evaluates and writes ``results.json``, the others read it once rank 0 is done."""
    if get_method(cfg.method).member is not None:
        raise ValueError(
            f"--method {cfg.method} trains several members; under torchrun train each member as its own "
            "run (--method swag or sgd with --seed), or run it in one process"
        )
    if resume and not (out / "checkpoint.safetensors").exists():
        raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
    with ranks_folder(out, overwrite=overwrite, resume=resume, resumable=lambda: _has_checkpoint(out)) as writes:
        start = time.perf_counter()
        timing = _train_single(cfg, out, splits, resume=resume, progress=progress and writes)
        timing["total_train_s"] = time.perf_counter() - start
        if writes:
            results = evaluate_run(out, splits=splits, progress=progress, write=False)
            results["timing"] = {**timing, "eval_s": results.pop("eval_s"), "world_size": world_size()}
            write_json(out / "results.json", results)
    return results if writes else read_json_object(out / "results.json")


# ---------------------------------------------------------------------- evaluation of any run
def load_run_model(run_dir: str | Path, splits: Splits | None = None) -> tuple[nn.Module, TrainConfig, Splits]:
    """Rebuild a run's model from ``config.json`` and load ``model.safetensors`` (architecture checked)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    splits = splits or load_splits(cfg)
    model = build_run_model(cfg, splits)
    path = run_dir / ("member-0" if get_method(cfg.method).member is not None else "") / "model.safetensors"
    state, header = load_checkpoint(path)
    if header.get("kind") != "model":
        raise CheckpointError(f"{path} is not a model checkpoint")
    check_model_signature(checkpoint_field(header, "signature", path), model, str(path))
    model.load_state_dict(checkpoint_field(state, "model", path, "state"))
    return model, cfg, splits


def regression_predictive(
    model: nn.Module,
    weights: Any,
    loader: Any,
    cfg: TrainConfig,
    splits: Any,
    *,
    bn_loader: Any = None,
    bn: str | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """The moment-matched Gaussian BMA predictive of a regression run in the target's units: ``(mean, var,
    targets, num_samples)`` with ``mean = mean_s mu_s`` and ``var = mean_s (sigma_s^2 + mu_s^2) - mean^2``
    over the weight vectors ``weights``, then ``mean * y_std + y_mean`` and ``var * y_std^2``."""
    res = bma(
        model,
        weights,
        loader,
        bn=BNPolicy(bn or "recompute", bn_loader, cfg.bn_batches),
        progress=progress,
        score=False,
        adapter=cfg.adapter(),
    )
    assert res.mean is not None and res.var is not None and res.targets is not None  # score=False keeps them
    mean, var = unstandardise(res.mean, res.var, splits)
    target, _ = unstandardise(res.targets.double(), res.var, splits)
    return mean, var, target, res.num_samples


def regression_summary(
    model: nn.Module, weights: Any, loader: Any, cfg: TrainConfig, splits: Any, **kwargs: Any
) -> dict[str, float]:
    """RMSE, mean Gaussian NLL and 95% coverage of :func:`regression_predictive`, in the target's units."""
    mean, var, target, _ = regression_predictive(model, weights, loader, cfg, splits, **kwargs)
    return summary_metrics(regression_metrics(mean, var, target))


def _evaluate_regression(run_dir, cfg, model, splits, draw, bn, loaders, method, progress, write) -> dict[str, Any]:
    start = time.perf_counter()
    metrics = {}
    for name, loader in loaders.items():
        mean, var, target, num = regression_predictive(
            model, draw(), loader, cfg, splits, bn_loader=bn, progress=progress
        )
        metrics[name] = regression_metrics(mean, var, target)
    out: dict[str, Any] = {
        "method": method,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "num_samples": num,
        "units": "target units (unstandardised)",
        "metrics": {k: summary_metrics(v) for k, v in metrics.items()},
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if write:
        write_json(run_dir / ("evaluation.json" if method == cfg.method else f"evaluation-{method}.json"), out)
    out["eval_s"] = time.perf_counter() - start
    return out


def _kept(res: BMAResult) -> tuple[Tensor, Tensor]:
    """The averaged class probabilities and the targets of a :func:`valleys.evaluation.predict.bma` result
    computed with ``return_probs=True`` (or ``score=False``)."""
    if res.probs is None or res.targets is None:
        raise ValueError("the BMA result holds no probabilities; evaluate with return_probs=True")
    return res.probs, res.targets


def _prefix_accuracy(member_probs: list[torch.Tensor], targets: torch.Tensor) -> list[float]:
    """Accuracy of the ensemble of the first k members, k = 1..K: argmax of ``(1/k) sum_{i<=k} p_i``
    (Garipov et al. 2018, FGE accuracy against the number of snapshots)."""
    out, total = [], torch.zeros_like(member_probs[0], dtype=torch.float64)
    for p in member_probs:
        total += p
        out.append(float((total.argmax(-1) == targets).double().mean()))
    return out


# which other methods a run's files can also be evaluated as (a SWAG run holds SWA and SWAG-diagonal)
VIEWS: dict[str, tuple[str, ...]] = {name: m.views for name, m in REGISTRY.items() if m.views}


def evaluate_run(
    run_dir: str | Path,
    *,
    samples: int | None = None,
    ood: bool | None = None,
    temperature_scaling: bool = False,
    as_method: str | None = None,
    splits: Splits | None = None,
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's predictive distribution on its validation and test splits (and OOD set).

    Args:
        samples: SWAG draws (per member) to average; default the run's ``samples`` setting.
        ood: report ``ood_auroc``, the AUROC of predictive entropy for telling the held-out classes' test
            examples from the in-distribution test examples; needs a run trained with ``ood_split``.
            ``None``: whenever the run has an OOD set; ``True``: required (error otherwise).
        temperature_scaling: also fit a temperature on the validation predictive and report the test
            metrics after scaling (``metrics.test_temperature``; the SWA-Temp baseline for an SWA run).
        as_method: evaluate the run's files as another method they contain (see :data:`VIEWS`: a SWAG run
            as ``swa`` or ``swag-diag``); results then go to ``evaluation-<method>.json``.
        splits: the run's data (default: loaded from its config).
        progress: show progress bars.
        write: write ``evaluation.json`` into the run folder.
    """
    run_dir = Path(run_dir)
    model, cfg, splits = load_run_model(run_dir, splits)
    s = samples if samples is not None else cfg.samples
    if s < 1:
        raise ValueError(f"samples must be at least 1, got {s}")
    if ood and splits.ood is None:
        raise ValueError(
            f"{run_dir} was not trained with the split-classes protocol; train it with --ood-split "
            "to measure OOD detection"
        )
    method = as_method or cfg.method
    views = get_method(cfg.method).views
    if method != cfg.method and method not in views:
        raise ValueError(
            f"a {cfg.method} run cannot be evaluated as {method}; possible: {', '.join((cfg.method,) + views)}"
        )
    predictive: Predictive = get_method(method).predictive(run_dir, cfg, model, s)
    draw, needs_bn, ensemble = predictive.draw, predictive.needs_bn, predictive.ensemble
    loaders = _eval_loaders(splits)
    if ood is False:
        loaders.pop("ood", None)
    bn = _bn_loader(cfg, splits) if needs_bn else None
    if cfg.is_regression:
        if temperature_scaling:
            raise ValueError("temperature scaling is for classification; it does not apply to regression runs")
        return _evaluate_regression(run_dir, cfg, model, splits, draw, bn, loaders, method, progress, write)
    start = time.perf_counter()
    res = {
        name: bma(
            model,
            draw(),
            loader,
            bn=BNPolicy("recompute", bn, cfg.bn_batches),
            return_probs=True,
            progress=progress,
            score=name != "ood",
            adapter=cfg.adapter(),
        )
        for name, loader in loaders.items()
    }
    eval_s = time.perf_counter() - start
    test_scores = res["test"].metrics
    assert isinstance(test_scores, ClassificationScores)  # a classification run, scored on its test split
    out: dict[str, Any] = {
        "method": method,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "num_samples": res["test"].num_samples,
        "metrics": {k: summary_metrics(v.metrics) for k, v in res.items() if k != "ood"},
        "reliability": {
            "test": test_scores.reliability,
            "test_log_bins": classification_metrics(*_kept(res["test"]), edges=LOG_EDGES)["reliability"],
        },
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if ensemble:  # each member alone (against the best member), and the ensemble of the first k (k = 1..K)
        members = [bma(model, [m], loaders["test"], adapter=cfg.adapter(), return_probs=True) for m in draw()]
        out["member_test_accuracy"] = [summary_metrics(r.metrics)["accuracy"] for r in members]
        out["ensemble_prefix_test_accuracy"] = _prefix_accuracy([_kept(r)[0] for r in members], _kept(members[0])[1])
    test_probs, test_targets = _kept(res["test"])
    if "ood" in res:
        out["ood_auroc"] = auroc(predictive_entropy(_kept(res["ood"])[0]), predictive_entropy(test_probs))
    if temperature_scaling:
        t = fit_temperature(*_kept(res["val"]))
        scaled = classification_metrics(apply_temperature(test_probs, t), test_targets)
        out["temperature"] = t
        out["metrics"]["test_temperature"] = summary_metrics(scaled)
        out["reliability"]["test_temperature"] = scaled["reliability"]
        out["reliability"]["test_temperature_log_bins"] = classification_metrics(
            apply_temperature(test_probs, t), test_targets, edges=LOG_EDGES
        )["reliability"]
    if write:
        write_json(run_dir / ("evaluation.json" if method == cfg.method else f"evaluation-{method}.json"), out)
    out["eval_s"] = eval_s
    return out
