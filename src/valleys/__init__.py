"""valleys: loss valleys for any PyTorch model.

SWA, SWAG, FGE, mode connectivity and loss-surface geometry on flat weight vectors, after the talk
"Loss Valleys and Generalization in Deep Learning" (A. G. Wilson, 2019). See the README for the tour.

Core (import nothing else of the project): :mod:`valleys.core.weights`, :mod:`valleys.core.batchnorm`,
:mod:`valleys.evaluation.metrics`, :mod:`valleys.training.schedules`, :mod:`valleys.core.checkpoint`.
Methods: :mod:`valleys.methods.averaging` (SWA, EMA), :mod:`valleys.training.callbacks` (the training-loop callback),
:mod:`valleys.methods.swag` (SWAG, MultiSWAG), :mod:`valleys.methods.ensembles` (FGE), :mod:`valleys.evaluation.calibration`,
:mod:`valleys.zoo.regression`; :mod:`valleys.evaluation.predict` averages any of them (BMA).
Loop and entry points: :mod:`valleys.training.trainer`, :mod:`valleys.app.runs`; the CLI in :mod:`valleys.app.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

from .methods.averaging import EMA, SWA, NotCollectedError
from .core.batchnorm import recompute_bn
from .core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluation.metrics import ClassificationMetrics, RegressionMetrics, classification_metrics, regression_metrics
from .evaluation.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from .geometry.curves import Curve, CurveModel
from .methods.ensembles import snapshot
from .geometry.paths import evaluate_path, segment
from .evaluation.predict import bma, evaluate
from .training.schedules import Constant, CosineReplay, SWALRAnneal, SWASchedule, TriangularCyclic
from .training.callbacks import FGECallback, SWACallback, TrajectoryCallback
from .methods.swag import SWAG, MultiSWAG
from .training.trainer import Callback, Trainer, TrainingDiverged
from .core.adapter import AdapterError, ModelAdapter
from .core.weights import WeightSpace, WeightSpaceError
from .evaluation.engine import BNPolicy, evaluate_many
from .evaluation.grid import evaluate_points
from .geometry.hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos, power_iteration
from .geometry.surfaces import Plane, line, random_direction, valley_width

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
    "predictive_entropy", "auroc", "Curve", "CurveModel", "evaluate_path", "segment", "__version__", "TrajectoryCallback",
    "evaluate_points", "LossFunction", "lanczos", "power_iteration", "hutchinson_trace", "epsilon_sharpness",
    "Plane", "line", "random_direction", "valley_width", "ModelAdapter", "AdapterError", "evaluate_many", "BNPolicy",
]
