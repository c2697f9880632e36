"""Evaluation of any training run folder: the Bayesian model average of the run's method's samples.

Every method is evaluated the same way: :func:`valleys.evaluation.predict.bma` over the method's samples (one
network for SGD and SWA, S draws for SWAG with a BatchNorm recompute each, the snapshots for FGE, the members
for an ensemble, S draws per member for MultiSWAG), ``p(y|x) = (1/S) sum_s p(y|x, w_s)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checkpoint import CheckpointError, check_model_signature, checkpoint_field, load_checkpoint, write_json
from ..errors import InputError, MissingFileError
from ..evaluation.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from ..evaluation.engine import BNPolicy
from ..evaluation.metrics import LOG_EDGES, classification_metrics, regression_metrics
from ..evaluation.predict import bma
from ..evaluation.results import BMAResult, ClassificationScores, Scores
from ..zoo.data import Splits
from ..zoo.regression import unstandardise
from .config import TrainConfig, read_run_config
from .methods.base import Method, Predictive
from .registry import METHODS, get_method
from .run_data import bn_loader, build_run_model, eval_loaders, load_splits

__all__ = [
    "evaluate_run",
    "evaluate_folder",
    "load_run_model",
    "regression_predictive",
    "regression_summary",
    "summary_metrics",
    "prefix_accuracy",
    "views",
    "SUMMARY_KEYS",
    "REGRESSION_KEYS",
]

SUMMARY_KEYS = ("accuracy", "error", "nll", "brier", "ece", "mce")
REGRESSION_KEYS = ("rmse", "nll", "coverage_95")


def summary_metrics(res: Scores | Mapping[str, Any] | None) -> dict[str, float]:
    """The headline numbers of scores: an :func:`valleys.evaluation.predict.evaluate` result, the ``metrics`` of
    a :func:`valleys.evaluation.predict.bma` result, or a :mod:`valleys.evaluation.metrics` dict."""
    if res is None:
        raise InputError("no scores to summarise (the evaluation was not scored)")
    values = res if isinstance(res, Mapping) else dataclasses.asdict(res)
    keys = REGRESSION_KEYS if "rmse" in values else SUMMARY_KEYS
    return {k: float(values[k]) for k in keys}


def load_run_model(
    run_dir: str | Path, splits: Splits | None = None, *, method: Method | None = None
) -> tuple[nn.Module, TrainConfig, Splits]:
    """Rebuild a run's model from ``config.json`` and load ``model.safetensors`` (architecture checked; an
    ensemble's first member). ``method``: the run's method, if the caller has it already."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    method = method or get_method(cfg.method)
    splits = splits or load_splits(cfg)
    model = build_run_model(cfg, splits)
    path = run_dir / ("member-0" if method.member is not None else "") / "model.safetensors"
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


def _evaluate_regression(
    run_dir: Path,
    cfg: TrainConfig,
    model: nn.Module,
    splits: Splits,
    draw: Any,
    bn: Any,
    loaders: dict[str, Any],
    method: str,
    progress: bool,
    write: bool,
) -> dict[str, Any]:
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
        **_data_notes(splits),
    }
    if write:
        write_json(run_dir / ("evaluation.json" if method == cfg.method else f"evaluation-{method}.json"), out)
    out["eval_s"] = time.perf_counter() - start
    return out


def _data_notes(splits: Any) -> dict[str, list[str]]:
    """``{"data_notes": [...]}``: what valleys changed in the user's data (a shuffling loader rebuilt in order, a
    validation split held out); empty for the built-in datasets."""
    notes = splits.info.get("notes") if isinstance(getattr(splits, "info", None), dict) else None
    return {"data_notes": list(notes)} if notes else {}


def _kept(res: BMAResult) -> tuple[Tensor, Tensor]:
    """The averaged class probabilities and the targets of a :func:`valleys.evaluation.predict.bma` result
    computed with ``return_probs=True`` (or ``score=False``)."""
    if res.probs is None or res.targets is None:
        raise InputError("the BMA result holds no probabilities; evaluate with return_probs=True")
    return res.probs, res.targets


def prefix_accuracy(member_probs: list[torch.Tensor], targets: torch.Tensor) -> list[float]:
    """Accuracy of the ensemble of the first k members, k = 1..K: argmax of ``(1/k) sum_{i<=k} p_i``
    (Garipov et al. 2018, FGE accuracy against the number of snapshots)."""
    out, total = [], torch.zeros_like(member_probs[0], dtype=torch.float64)
    for p in member_probs:
        total += p
        out.append(float((total.argmax(-1) == targets).double().mean()))
    return out


def views() -> dict[str, tuple[str, ...]]:
    """Which other methods a run's files can also be evaluated as (a SWAG run holds SWA and SWAG-diagonal)."""
    return {name: m.views for name, m in METHODS.items() if m.views}


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
        as_method: evaluate the run's files as another method they contain (see :func:`views`: a SWAG run
            as ``swa`` or ``swag-diag``); results then go to ``evaluation-<method>.json``.
        splits: the run's data (default: loaded from its config).
        progress: show progress bars.
        write: write ``evaluation.json`` into the run folder.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    run_method = get_method(cfg.method)  # resolved once: the run's method, and the view it is evaluated as
    model, cfg, splits = load_run_model(run_dir, splits, method=run_method)
    s = samples if samples is not None else cfg.samples
    if s < 1:
        raise InputError(f"samples must be at least 1, got {s}")
    if ood and splits.ood is None:
        raise InputError(
            f"{run_dir} was not trained with the split-classes protocol; train it with --ood-split "
            "to measure OOD detection"
        )
    method = as_method or cfg.method
    if method != cfg.method and method not in run_method.views:
        raise InputError(
            f"a {cfg.method} run cannot be evaluated as {method}; possible: "
            f"{', '.join((cfg.method,) + run_method.views)}"
        )
    view = run_method if method == cfg.method else get_method(method)
    predictive: Predictive = view.predictive(run_dir, cfg, model, s)
    draw, needs_bn, ensemble = predictive.draw, predictive.needs_bn, predictive.ensemble
    loaders = eval_loaders(splits)
    if ood is False:
        loaders.pop("ood", None)
    bn = bn_loader(cfg, splits) if needs_bn else None
    if cfg.is_regression:
        if temperature_scaling:
            raise InputError("temperature scaling is for classification; it does not apply to regression runs")
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
        **_data_notes(splits),
    }
    if ensemble:  # each member alone (against the best member), and the ensemble of the first k (k = 1..K)
        members = [bma(model, [m], loaders["test"], adapter=cfg.adapter(), return_probs=True) for m in draw()]
        out["member_test_accuracy"] = [summary_metrics(r.metrics)["accuracy"] for r in members]
        out["ensemble_prefix_test_accuracy"] = prefix_accuracy([_kept(r)[0] for r in members], _kept(members[0])[1])
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


def evaluate_folder(
    run_dir: str | Path,
    *,
    points: int | None = None,
    samples: int | None = None,
    ood: bool = False,
    temperature_scaling: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[str, dict[str, Any]]:
    """``valleys evaluate``: a training run (:func:`evaluate_run`) or a curve folder
    (:func:`valleys.app.connect.evaluate_curve_dir`); returns ``("run" or "curve", results)``. Flags that do
    not apply to the folder's kind are refused, and an ``evaluation.json`` already there unless ``overwrite``,
    before any work."""
    from .config import read_json_object
    from .folders import OutputFolderError, check_writable
    from .registry import methods_using

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir} is not a run folder (train one with 'valleys train')")
    config = run_dir / "config.json"
    raw = read_json_object(config) if config.is_file() else {}
    if (run_dir / "evaluation.json").exists() and not overwrite:
        raise OutputFolderError(f"{run_dir} already holds evaluation.json; pass --overwrite to replace it")
    check_writable(run_dir, str(run_dir))
    if raw.get("folder") == "curve":
        from .connect import evaluate_curve_dir

        for flag, given in (("--samples", samples), ("--ood", ood), ("--temperature-scaling", temperature_scaling)):
            if given:
                raise InputError(f"{flag} applies to training runs; {run_dir} is a curve folder")
        return "curve", evaluate_curve_dir(run_dir, points=points, progress=progress)
    if points is not None:
        raise InputError(f"--points applies to curve folders (made by 'valleys connect') only; {run_dir} is not one")
    if samples is not None and raw.get("method") not in methods_using("samples"):
        raise InputError(
            f"--samples applies to runs of --method {', '.join(methods_using('samples'))}; "
            f"{run_dir} is a {raw.get('method')} run"
        )
    res = evaluate_run(
        run_dir, samples=samples, ood=True if ood else None, temperature_scaling=temperature_scaling, progress=progress
    )
    return "run", res
