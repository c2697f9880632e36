"""Ensembles of networks: FGE snapshots (and the snapshot helper deep ensembles use).

FGE (Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs", NeurIPS): start from a network trained for most of the budget (with its optimizer
state), follow the triangular cyclic schedule :class:`valleys.training.schedules.TriangularCyclic` with a short even
cycle (2 to 4 epochs) and take a snapshot at the middle of every cycle, where the LR is at its minimum
``lr_2``. The ensemble averages the snapshots' predicted probabilities (:func:`valleys.evaluation.predict.bma`); each
snapshot keeps its own BatchNorm statistics, so none are recomputed. FGE averages predictions; SWA averages
weights: the two stay separate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.weights import unwrap

__all__ = ["snapshot"]


def snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's full state (parameters and buffers) on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
