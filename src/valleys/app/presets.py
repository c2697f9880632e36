"""Named configurations of ``valleys demo``, in one place: each names its dataset, model and budget, the
settings ``--quick`` changes, the curve and semi-supervised sections' settings, and how they were chosen.
``valleys demo --help`` lists them; ``valleys demo --preset NAME`` runs one; the default is :data:`DEFAULT_PRESET`.

Plain data (no torch), so the command line's parser can list them without importing the library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

__all__ = [
    "Preset",
    "PRESETS",
    "DEFAULT_PRESET",
    "get_preset",
    "presets_help",
    "preset_train",
    "preset_semisup",
    "SEMISUP_DATA",
]

#: the settings the semi-supervised study takes from the preset's training settings unless its own section sets them
SEMISUP_DATA = ("dataset", "model", "model_args", "data_root", "train_subset", "test_subset", "val_fraction")


@dataclass(frozen=True)
class Preset:
    """One named demo configuration.

    ``train``: the :class:`valleys.app.config.TrainConfig` fields every run of the demo starts from (the
    method is set per run). ``quick``: what ``--quick`` changes. ``curve`` / ``curve_quick``: the mode
    connectivity section's settings (:class:`valleys.app.connect.ConnectConfig` fields). ``semisup`` /
    ``semisup_quick``: :class:`valleys.app.semisup.SemisupConfig` overrides for the semi-supervised section
    (``None``: the section does not fit this preset's budget and is skipped); ``valleys semisup --preset NAME``
    runs them alone. ``semisup_in_demo``: whether ``valleys demo`` runs that section (``False``: only
    ``valleys semisup --preset``, for a study longer than the demo's budget). ``cuda``: on a CUDA device, the
    settings that bring the preset to the papers' size (``"train"``, ``"semisup"``: overrides of ``train`` and
    ``semisup``), used when ``--device`` names a CUDA device. ``subspace``: whether the
    subspace-inference section runs (a dict: its settings, as :data:`valleys.app.demo_subspace.SETTINGS`, used
    without ``--quick``; ``--quick`` runs the section's quick settings).
    ``ood``: training settings of the split-classes OOD runs that differ from ``train`` (they see half the
    classes, hence half the data). ``budgets``: the budget protocol's multiples (SWA and SWAG also trained for
    ``b`` times the epochs, against SGD at one). ``ood`` and ``budgets`` apply only while the data and model are
    the preset's own, and a setting the user gives wins over them. ``chosen``: how the settings were chosen, in words.
    """

    name: str
    summary: str
    train: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=lambda: {"epochs": 30, "swa_start": 15, "samples": 10})
    curve: dict[str, Any] = field(default_factory=lambda: {"points": 61})
    curve_quick: dict[str, Any] = field(default_factory=lambda: {"epochs": 5, "points": 11})
    semisup: dict[str, Any] | None = None
    semisup_quick: dict[str, Any] = field(default_factory=lambda: {"epochs": 30, "cycle": 5, "eval_every": 5})
    semisup_in_demo: bool = True
    cuda: dict[str, dict[str, Any]] = field(default_factory=dict)
    subspace: bool | dict[str, Any] = True
    ood: dict[str, Any] = field(default_factory=dict)
    budgets: tuple[float, ...] = (1.0,)
    chosen: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="mnist1d",
            summary="MNIST-1D (4,000 + 1,000 signals, generated offline), the 1-D CNN, 100 epochs; every section "
            "(about 4.5 minutes on 2 cores)",
            train={
                "dataset": "mnist1d",
                "model": "cnn1d",
                "epochs": 100,
                "lr": 0.1,
                "wd": 5e-4,
                "swa_start": 50,
                "swa_lr": 0.1,
            },
            # 40 labels per class; the consistency weight (among 10, 30 and 100), the EMA decay and the budget
            # chosen on the validation split (README, "Semi-supervised learning"); with the authors' rules (the
            # labelled cross-entropy over the whole batch, 4x weaker) re-chosen by validation error in two rounds
            # (experiments/semisup_reference_preset.py): LR 0.4, weight 7.5, weight decay 5e-5, the earlier
            # tuned steps (LR 0.1, weight 30, decay 2e-4) under the new normalisation
            semisup={
                "labels_per_class": 40,
                "epochs": 90,
                "cycle": 15,
                "fast_swa_every": 1,
                "lr": 0.4,
                "consistency_weight": 7.5,
                "wd": 5e-5,
            },
            # on half the classes (2,000 signals) LR 0.1 collapsed seed 0 to chance (validation 18.6%) and SWA's
            # seed 1 to 55.8%; LR 0.05 trained every seed (validation 96.5-98.0%): experiments/ood_lr.py
            ood={"lr": 0.05, "swa_lr": 0.05},
            budgets=(1.0, 1.5),  # the SWA paper's 1.5 budgets: three more runs of 150 epochs, about 30 s
            chosen="the 1-D CNN of the MNIST-1D paper, where constant-LR SWA from epoch 50 beat SGD on validation "
            "error and NLL; an MLP overfits and showed no gain (README, 'Why this default'); the OOD runs' LR "
            "0.05, the one of 0.1 and 0.05 that trained every seed on the half-class split",
        ),
        Preset(
            name="fashion-mnist",
            summary="all 60,000 Fashion-MNIST training images (Debian package dataset-fashion-mnist), an MLP "
            "784-100-100-10, 20 epochs; every section (about 24 minutes on 2 cores)",
            train={
                "dataset": "fashion-mnist",
                "model": "mlp",
                "epochs": 20,
                "lr": 0.05,
                "wd": 5e-4,
                "swa_start": 10,
                "swa_lr": 0.025,
                "fge_start": 12,
            },
            quick={"epochs": 10, "swa_start": 5, "fge_start": 6, "samples": 10},
            # 100 labels per class, the other 19,000 images of a 20,000-image training subset unlabelled;
            # consistency weight 10 (against 30) on validation
            semisup={
                "labels_per_class": 100,
                "train_subset": 20000,
                "epochs": 30,
                "cycle": 5,
                "eval_every": 5,
                "consistency_weight": 10.0,
            },
            semisup_quick={"epochs": 10, "cycle": 2, "eval_every": 5},
            chosen="on the validation split (6,000 images), 2 seeds: SGD's budget and LR among 20/40/60 epochs and "
            "0.05/0.1 by validation error (all within 9.84-10.00%: the MLP saturates, so the shortest); SWA's "
            "constant LR (0.05/0.025/0.01) and start (10/15) by validation NLL; FGE's start (12/16, so 4 or 2 "
            "snapshots) by validation NLL; the small CNN was left out for time (about 50 s per epoch on 2 "
            "cores against 0.8 s): experiments/fashion_mnist_preset.py",
        ),
        Preset(
            name="fashion-cnn",
            summary="Fashion-MNIST at 14x14 (20,000 training images), a BatchNorm CNN (widths 16-32-32) trained "
            "with random translations and flips, 30 epochs; SGD, SWA, SWAG, FGE, OOD, curves and geometry (about an "
            "hour on 2 cores); its semi-supervised study runs alone: valleys semisup --preset fashion-cnn",
            train={
                "dataset": "fashion-mnist-14",
                "model": "cnn",
                "model_args": {"width": 16},
                "augment": "standard",
                "train_subset": 20000,
                "epochs": 30,
                "lr": 0.1,
                "wd": 5e-4,
                "swa_start": 15,
                "swa_lr": 0.02,
                "fge_start": 22,
                "samples": 20,
            },
            quick={"epochs": 4, "swa_start": 1, "fge_start": 2, "samples": 4, "train_subset": 1000, "test_subset": 500},
            curve={"points": 31, "epochs": 30},
            curve_quick={"epochs": 2, "points": 5},
            semisup={
                "model": "cnn",
                "model_args": {"width": 16},
                "labels_per_class": 100,
                "train_subset": 20000,
                "epochs": 60,
                "cycle": 10,
                "eval_every": 5,
                "lr": 0.4,
                "consistency_weight": 7.5,
                "wd": 5e-5,
            },
            semisup_quick={
                "epochs": 6,
                "cycle": 2,
                "eval_every": 3,
                "labels_per_class": 20,
                "train_subset": 2000,
                "test_subset": 1000,
            },
            semisup_in_demo=False,
            subspace=False,
            cuda={
                # the papers' sizes: all 28x28 images; a PreResNet-20 for SWA/SWAG/FGE (Izmailov et al. 2018 train
                # PreResNet-164 on CIFAR for 150 epochs) and ConvLarge for the semi-supervised study (Athiwaratkun
                # et al. 2019: cosine over 180 of 210 epochs, then 30-epoch cycles)
                "train": {
                    "dataset": "fashion-mnist",
                    "model": "preresnet",
                    "model_args": {"width": 16, "blocks": 3},
                    "train_subset": None,
                    "epochs": 150,
                    "swa_start": 80,
                    "fge_start": 120,
                    "samples": 30,
                },
                "semisup": {
                    "dataset": "fashion-mnist",
                    "model": "convlarge",
                    "model_args": {},
                    "train_subset": None,
                    "labels_per_class": 400,
                    "batch_size": 100,
                    "labelled_batch_size": 50,
                    "epochs": 300,
                    "cosine_epochs": 180,
                    "cycle": 30,
                    "lr": 0.1,
                    "consistency_weight": 100.0,
                    "wd": 2e-4,
                    "eval_every": 10,
                },
            },
            chosen="on the validation split (see experiments/fashion_cnn_preset.py and its log)",
        ),
    )
}

#: The preset ``valleys demo`` runs without ``--preset``.
DEFAULT_PRESET = "mnist1d"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _on_cuda(device: str | None) -> bool:
    return device is not None and str(device).startswith("cuda")


def preset_train(preset: Preset, device: str | None = None) -> dict[str, Any]:
    """The training settings of ``preset`` (:attr:`Preset.train`), with its :attr:`Preset.cuda` ``"train"``
    overrides and ``device`` set when ``device`` names a CUDA device."""
    out = dict(preset.train)
    if _on_cuda(device):
        out.update(preset.cuda.get("train", {}))
    if device is not None:
        out["device"] = device
    return out


def preset_semisup(
    preset: Preset,
    *,
    quick: bool = False,
    device: str | None = None,
    data: dict[str, Any] | None = None,
    keep: tuple[str, ...] | set[str] = (),
) -> dict[str, Any] | None:
    """The :class:`valleys.app.semisup.SemisupConfig` settings of ``preset``'s semi-supervised study (``None``
    when it has none): the data settings of :data:`SEMISUP_DATA` from the training settings (``data``: those
    in use, default the preset's own), then :attr:`Preset.semisup`, then (``keep``) the data settings the user
    changed, then on a CUDA ``device`` the ``"semisup"`` overrides of :attr:`Preset.cuda`, then with ``quick``
    :attr:`Preset.semisup_quick`."""
    if preset.semisup is None:
        return None
    train = data if data is not None else preset_train(preset, device)
    own = {k: train[k] for k in SEMISUP_DATA if k in train}
    out = {**own, **preset.semisup, **{k: v for k, v in own.items() if k in keep}}
    if _on_cuda(device):
        out.update(preset.cuda.get("semisup", {}))
    if quick:
        out.update(preset.semisup_quick)
    if device is not None:
        out["device"] = device
    return out


def presets_help(width: int = 100) -> str:
    """One entry per preset (``name (default): summary``, wrapped at ``width`` and indented), for ``--help``."""
    import textwrap

    return "\n".join(
        textwrap.fill(
            f"{p.name}{' (default)' if p.name == DEFAULT_PRESET else ''}: {p.summary}",
            width,
            initial_indent="  ",
            subsequent_indent="    ",
        )
        for p in PRESETS.values()
    )
