"""valleys: loss valleys for any PyTorch model.

SWA, SWAG, FGE, mode connectivity and loss-surface geometry on flat weight vectors, after the talk
"Loss Valleys and Generalization in Deep Learning" (A. G. Wilson, 2019). See the README for the tour.

Core (import nothing else of the project): :mod:`valleys.core.weights`, :mod:`valleys.core.batchnorm`,
:mod:`valleys.evaluation.metrics`, :mod:`valleys.training.schedules`, :mod:`valleys.core.checkpoint`.
Methods: :mod:`valleys.methods.averaging` (SWA, EMA), :mod:`valleys.training.callbacks` (the training-loop callback),
:mod:`valleys.methods.swag` (SWAG, MultiSWAG), :mod:`valleys.methods.ensembles` (FGE),
:mod:`valleys.evaluation.calibration`, :mod:`valleys.zoo.regression`; :mod:`valleys.evaluation.predict` averages
any of them (BMA).
Loop and entry points: :mod:`valleys.training.trainer`, :mod:`valleys.app.train` (a run folder from one
:class:`valleys.app.config.TrainConfig`); the CLI in :mod:`valleys.app.cli`.

Importing ``valleys`` is cheap: the public names below are loaded on first use (PEP 562), so the command
line's parser (``valleys --help``) starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - what static tools see; at run time the names load lazily
    from .core.adapter import ModelAdapter
    from .core.batchnorm import recompute_bn
    from .core.checkpoint import load_checkpoint, save_checkpoint
    from .core.weights import WeightSpace
    from .errors import (
        AdapterError,
        BatchFormatError,
        CheckpointError,
        ConfigError,
        DatasetNotFoundError,
        DistributedSetupError,
        EmptyLoaderError,
        EvaluationError,
        InputError,
        InputTypeError,
        MissingBNLoaderError,
        MissingExtraError,
        MissingFileError,
        MissingLabelsError,
        NonFinitePredictionError,
        NotCollectedError,
        NoWeightsError,
        OutputFolderError,
        SamplerError,
        SubspaceError,
        TrainingDiverged,
        UCIFormatError,
        UsageError,
        UserCodeError,
        ValleysError,
        WeightSpaceError,
    )
    from .evaluation.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
    from .evaluation.engine import BNPolicy, Progress, VmapPolicy, evaluate_many
    from .evaluation.folding import AffinePoints
    from .evaluation.grid import evaluate_points
    from .evaluation.metrics import ClassificationMetrics, RegressionMetrics, classification_metrics, regression_metrics
    from .evaluation.predict import bma, evaluate
    from .geometry.curves import Curve, CurveModel
    from .geometry.hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos, power_iteration
    from .geometry.paths import evaluate_path, segment
    from .geometry.surfaces import Plane, line, random_direction, valley_width
    from .methods.averaging import EMA, SWA
    from .methods.ensembles import snapshot
    from .methods.swag import SWAG, MultiSWAG
    from .training.callbacks import FGECallback, SWACallback, TrajectoryCallback, TravelCallback
    from .training.schedules import Constant, CosineReplay, SWALRAnneal, SWASchedule, TriangularCyclic
    from .training.semisup import ConsistencyStep, MeanTeacher
    from .training.trainer import Callback, CheckpointPolicy, DistributedPolicy, EvaluationPolicy, Trainer

from .errors import __all__ as _ERRORS  # noqa: E402 - imports nothing; every error class is public

#: ``{module: public names}``: where each name of :data:`__all__` lives.
_SOURCES: dict[str, tuple[str, ...]] = {
    ".errors": tuple(_ERRORS),
    ".methods.averaging": ("EMA", "SWA"),
    ".core.batchnorm": ("recompute_bn",),
    ".core.checkpoint": ("load_checkpoint", "save_checkpoint"),
    ".evaluation.metrics": (
        "ClassificationMetrics",
        "RegressionMetrics",
        "classification_metrics",
        "regression_metrics",
    ),
    ".evaluation.calibration": ("apply_temperature", "auroc", "fit_temperature", "predictive_entropy"),
    ".geometry.curves": ("Curve", "CurveModel"),
    ".methods.ensembles": ("snapshot",),
    ".geometry.paths": ("evaluate_path", "segment"),
    ".evaluation.predict": ("bma", "evaluate"),
    ".training.schedules": ("Constant", "CosineReplay", "SWALRAnneal", "SWASchedule", "TriangularCyclic"),
    ".training.callbacks": ("FGECallback", "SWACallback", "TrajectoryCallback", "TravelCallback"),
    ".training.semisup": ("ConsistencyStep", "MeanTeacher"),
    ".methods.swag": ("SWAG", "MultiSWAG"),
    ".training.trainer": ("Callback", "CheckpointPolicy", "DistributedPolicy", "EvaluationPolicy", "Trainer"),
    ".core.adapter": ("ModelAdapter",),
    ".core.weights": ("WeightSpace",),
    ".evaluation.engine": ("BNPolicy", "VmapPolicy", "Progress", "evaluate_many"),
    ".evaluation.grid": ("evaluate_points",),
    ".evaluation.folding": ("AffinePoints",),
    ".geometry.hessian": ("LossFunction", "epsilon_sharpness", "hutchinson_trace", "lanczos", "power_iteration"),
    ".geometry.surfaces": ("Plane", "line", "random_direction", "valley_width"),
}
_WHERE: dict[str, str] = {name: module for module, names in _SOURCES.items() for name in names}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("valleys")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    """Load a public name (and ``__version__``) on first access; it is cached in the module afterwards."""
    if name == "__version__":
        value: Any = _version()
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ValleysError",
    "InputError",
    "InputTypeError",
    "NonFinitePredictionError",
    "ConfigError",
    "CheckpointError",
    "WeightSpaceError",
    "EmptyLoaderError",
    "MissingBNLoaderError",
    "MissingFileError",
    "NoWeightsError",
    "SubspaceError",
    "UCIFormatError",
    "MissingExtraError",
    "MissingLabelsError",
    "UserCodeError",
    "BatchFormatError",
    "AdapterError",
    "NotCollectedError",
    "UsageError",
    "EvaluationError",
    "SamplerError",
    "DistributedSetupError",
    "DatasetNotFoundError",
    "OutputFolderError",
    "TrainingDiverged",
    "WeightSpace",
    "recompute_bn",
    "SWA",
    "EMA",
    "SWACallback",
    "Trainer",
    "Callback",
    "CheckpointPolicy",
    "EvaluationPolicy",
    "DistributedPolicy",
    "ClassificationMetrics",
    "RegressionMetrics",
    "classification_metrics",
    "regression_metrics",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "Constant",
    "SWASchedule",
    "SWALRAnneal",
    "TriangularCyclic",
    "CosineReplay",
    "SWAG",
    "MultiSWAG",
    "FGECallback",
    "snapshot",
    "bma",
    "fit_temperature",
    "apply_temperature",
    "predictive_entropy",
    "auroc",
    "Curve",
    "CurveModel",
    "evaluate_path",
    "segment",
    "__version__",
    "TrajectoryCallback",
    "evaluate_points",
    "LossFunction",
    "lanczos",
    "power_iteration",
    "hutchinson_trace",
    "epsilon_sharpness",
    "Plane",
    "line",
    "random_direction",
    "valley_width",
    "ModelAdapter",
    "evaluate_many",
    "BNPolicy",
    "VmapPolicy",
    "AffinePoints",
    "Progress",
    "TravelCallback",
    "ConsistencyStep",
    "MeanTeacher",
]
