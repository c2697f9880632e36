"""valleys: loss valleys for any PyTorch model.

SWA, SWAG, FGE, mode connectivity and loss-surface geometry on flat weight vectors, after the talk
"Loss Valleys and Generalization in Deep Learning" (A. G. Wilson, 2019). See the README for the tour.

Core (import nothing else of the project): :mod:`valleys.weights`, :mod:`valleys.batchnorm`,
:mod:`valleys.metrics`, :mod:`valleys.schedules`, :mod:`valleys.checkpoint`.
Methods: :mod:`valleys.averaging` (SWA, EMA), :mod:`valleys.swa` (the training-loop callback),
:mod:`valleys.swag` (SWAG, MultiSWAG), :mod:`valleys.ensembles` (FGE), :mod:`valleys.calibration`,
:mod:`valleys.regression`; :mod:`valleys.predict` averages any of them (BMA).
Loop and entry points: :mod:`valleys.training`, :mod:`valleys.runs`; the CLI in :mod:`valleys.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

from .averaging import EMA, SWA, NotCollectedError
from .batchnorm import recompute_bn
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .metrics import ClassificationMetrics, RegressionMetrics, classification_metrics, regression_metrics
from .calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from .curves import Curve, CurveModel
from .ensembles import FGECallback, snapshot
from .paths import evaluate_path, segment
from .predict import bma, evaluate
from .schedules import Constant, CosineReplay, SWALRAnneal, SWASchedule, TriangularCyclic
from .swa import SWACallback
from .swag import SWAG, MultiSWAG
from .training import Callback, Trainer, TrainingDiverged
from .weights import WeightSpace, WeightSpaceError

try:
    __version__ = version("valleys")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = [
    "WeightSpace", "WeightSpaceError", "recompute_bn", "SWA", "EMA", "NotCollectedError", "SWACallback",
    "Trainer", "Callback", "TrainingDiverged", "ClassificationMetrics", "RegressionMetrics",
    "classification_metrics", "regression_metrics", "evaluate", "save_checkpoint", "load_checkpoint",
    "CheckpointError", "Constant", "SWASchedule", "SWALRAnneal", "TriangularCyclic", "CosineReplay",
    "SWAG", "MultiSWAG", "FGECallback", "snapshot", "bma", "fit_temperature", "apply_temperature",
    "predictive_entropy", "auroc", "Curve", "CurveModel", "evaluate_path", "segment", "__version__",
]
