"""SWA, SWAG and FGE as PyTorch Lightning callbacks (``pip install 'valleys[lightning]'``).

They use valleys' own pieces, so a Lightning run averages exactly as :class:`valleys.training.trainer.Trainer`
does: :class:`valleys.training.callbacks.CollectionSchedule` decides when to collect (end of every epoch after
``start`` epochs, every ``k`` steps, or once per cycle), :class:`valleys.methods.averaging.SWA` and
:class:`valleys.methods.swag.SWAG` keep the moments on the flat weight vector, and
:func:`valleys.core.batchnorm.recompute_bn` computes the exact BatchNorm statistics of the average on the
training data. Lightning's own ``StochasticWeightAveraging`` and ``WeightAveraging`` average the BatchNorm
buffers instead (Izmailov et al. 2018 recompute them), and have no SWAG, FGE or model averaging.

Each callback's state (the averages, the deviations, the snapshots) goes into Lightning checkpoints through
``state_dict`` and comes back on ``trainer.fit(ckpt_path=...)``. Under Lightning's DDP strategy every rank
collects from its replica (the replicas are identical) and the BatchNorm recompute all-reduces over the
ranks' shards of the training data.

Example::

    import lightning.pytorch as pl
    from valleys.lightning import SWACallback

    swa = SWACallback(start=50)                    # average the ends of epochs 51..100
    pl.Trainer(max_epochs=100, callbacks=[swa]).fit(module, train_loader)
    # module now holds the SWA average with exact BatchNorm statistics; swa.averager.mean is the flat mean
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .core.adapter import ModelAdapter
from .core.batchnorm import recompute_bn
from .core.optional import require
from .errors import InputError
from .evaluation.engine import BNArg
from .evaluation.predict import bma
from .evaluation.results import BMAResult, ClassificationScores
from .methods.averaging import SWA, NotCollectedError
from .methods.ensembles import snapshot
from .methods.swag import SWAG
from .training.callbacks import CollectingCore, CollectionSchedule
from .training.schedules import TriangularCyclic

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:  # a clear ImportError naming the extra
    pl = require("lightning.pytorch", "lightning")

__all__ = ["SWACallback", "SWAGCallback", "FGECallback"]


class _Collecting(CollectingCore, pl.Callback):
    """:class:`valleys.training.callbacks.CollectingCore` in Lightning's hooks: the averager built at
    ``setup`` (before Lightning restores a checkpoint), collection at step and epoch ends, the checkpointed
    state, the constant SWA learning rate, BatchNorm recompute."""

    def __init__(
        self,
        start: int,
        *,
        every: str = "epoch",
        k: int = 1,
        names: Sequence[str] | None = None,
        adapter: ModelAdapter | None = None,
        swa_lr: float | None = None,
    ) -> None:
        if swa_lr is not None and not (math.isfinite(swa_lr) and swa_lr > 0):
            raise InputError(f"swa_lr must be finite and > 0, got {swa_lr!r}")
        super().__init__(start, every=every, k=k, names=list(names) if names is not None else None, adapter=adapter)
        self.swa_lr = swa_lr
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up and state
    def _make(self, model: nn.Module) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.build(pl_module, self._make)
        if self._pending is not None:
            self.averager.load_state_dict(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.averager is None else self.averager.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.averager is None:
            self._pending = dict(state_dict)
        else:
            self.averager.load_state_dict(state_dict)

    # ------------------------------------------------------------------ collection
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.swa_lr is not None and trainer.current_epoch >= self.start:
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] = self.swa_lr

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule.every != "epoch" and self.schedule.after_step(
            trainer.global_step, trainer.current_epoch, trainer.num_training_batches
        ):
            self.collect(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.at_epoch_end(trainer.current_epoch + 1):
            self.collect(pl_module)

    def _recompute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Iterable | None) -> None:
        loader = loader if loader is not None else trainer.train_dataloader
        if loader is None:
            raise InputError("no loader for the BatchNorm recompute: pass bn_loader= or fit with a train loader")
        recompute_bn(pl_module, loader, adapter=self.adapter, device=pl_module.device)


class SWACallback(_Collecting):
    """Stochastic Weight Averaging (Izmailov et al. 2018) in a Lightning run.

    Collects the weights at the end of every epoch after ``start`` epochs (``every="steps"``: after every
    ``k`` optimizer steps from epoch ``start`` on), then, at the end of ``fit``, writes the average into the
    module and recomputes its BatchNorm statistics exactly on the training data (``bn_loader`` to use another
    loader). ``swa_lr`` sets a constant learning rate from epoch ``start`` on (SWA's constant-LR phase);
    without it the user's schedule is kept. ``names`` restricts the average to some parameters. With
    ``val_loader`` the average (BatchNorm recomputed, the module restored afterwards) is scored with
    valleys' metrics at every epoch end once something was collected, logged as ``swa_val_accuracy`` and
    ``swa_val_nll``.
    """

    def __init__(
        self,
        start: int,
        *,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        apply_at_end: bool = True,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__(start, every=every, k=k, names=names, adapter=adapter, swa_lr=swa_lr)
        self.bn_loader, self.val_loader, self.apply_at_end = bn_loader, val_loader, apply_at_end

    def _make(self, model: nn.Module) -> SWA:
        return SWA(model, self.names)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.val_loader is not None and self.averager.n > 0:
            # the average as a one-sample BMA: BatchNorm recomputed for it, the run's weights and statistics restored
            bn = self.bn_loader if self.bn_loader is not None else trainer.train_dataloader
            scores = bma(
                pl_module, [self.averager.mean], self.val_loader, space=self.averager.space, bn=bn, adapter=self.adapter
            ).metrics
            assert isinstance(scores, ClassificationScores)  # the logged numbers are classification scores
            pl_module.log_dict({"swa_val_accuracy": float(scores.accuracy), "swa_val_nll": float(scores.nll)})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.apply_at_end and self.averager is not None and self.averager.n > 0:
            self.averager.write(pl_module)
            self._recompute(trainer, pl_module, self.bn_loader)


class SWAGCallback(_Collecting):
    """SWAG (Maddox et al. 2019) in a Lightning run: collects like :class:`SWACallback` into a
    :class:`valleys.methods.swag.SWAG` of rank ``rank``; the module keeps its last weights. At
    ``trainer.test`` (and with :meth:`bma`) the Bayesian model average of ``samples`` draws (scale
    ``scale``), each with its BatchNorm statistics recomputed on the training data, is computed on every
    test loader and logged as ``swag_test_accuracy``, ``swag_test_nll``, ``swag_test_ece`` (also kept in
    ``self.test_metrics``)."""

    def __init__(
        self,
        start: int,
        *,
        rank: int = 20,
        samples: int = 30,
        scale: float = 0.5,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(start, every=every, k=k, names=names, adapter=adapter, swa_lr=swa_lr)
        self.rank, self.samples, self.scale, self.seed = rank, samples, scale, seed
        self.bn_loader = bn_loader
        self.test_metrics: list[dict[str, float]] = []

    def _make(self, model: nn.Module) -> SWAG:
        return SWAG(model, self.names, rank=self.rank)

    def bma(
        self, pl_module: pl.LightningModule, loader: Iterable, bn: BNArg = None, *, return_probs: bool = False
    ) -> BMAResult:
        """The BMA of ``self.samples`` SWAG draws on ``loader`` (:func:`valleys.evaluation.predict.bma`), their
        BatchNorm statistics recomputed on ``bn`` (a loader or a policy; default the callback's ``bn_loader``)."""
        self.require_collected("testing or predicting with SWAG")
        gen = torch.Generator(device=self.averager.device).manual_seed(self.seed)
        return bma(
            pl_module,
            self.averager.samples(self.samples, scale=self.scale, generator=gen),
            loader,
            space=self.averager.space,
            bn=bn if bn is not None else self.bn_loader,
            adapter=self.adapter,
            return_probs=return_probs,
        )

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.require_collected("testing with SWAG")  # before Lightning runs the test loop

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        bn = self.bn_loader if self.bn_loader is not None else getattr(trainer, "train_dataloader", None)
        self.test_metrics = []
        for i, loader in enumerate(loaders):
            scores = self.bma(pl_module, loader, bn).metrics
            assert isinstance(scores, ClassificationScores)  # the logged numbers are classification scores
            m = {
                "swag_test_accuracy": float(scores.accuracy),
                "swag_test_nll": float(scores.nll),
                "swag_test_ece": float(scores.ece),
            }
            self.test_metrics.append(m)
            if trainer.logger is not None:
                trainer.logger.log_metrics(
                    {f"{k}/{i}" if len(loaders) > 1 else k: v for k, v in m.items()}, step=trainer.global_step
                )


class FGECallback(pl.Callback):
    """Fast geometric ensembling (Garipov et al. 2018) in a Lightning run: from epoch ``start`` on, sets the
    learning rate of every optimizer to the triangular cyclic schedule between ``lr_1`` and ``lr_2`` with
    cycles of ``cycle`` epochs (per step) and keeps a snapshot of the module (parameters and buffers) at each
    cycle's midpoint, the LR minimum. ``self.snapshots`` (state dicts on the CPU) go into checkpoints;
    :meth:`bma` averages their predictions."""

    def __init__(
        self, start: int, cycle: int, lr_1: float, lr_2: float, *, adapter: ModelAdapter | None = None
    ) -> None:
        super().__init__()
        self.schedule = CollectionSchedule(start, "cycle", cycle=cycle, phase=0.5)
        self.lr = TriangularCyclic(lr_1, lr_2, cycle, offset=start)
        self.start, self.cycle = start, cycle
        self.adapter = adapter or ModelAdapter()
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        epoch = trainer.current_epoch + batch_idx / max(trainer.num_training_batches, 1)
        if epoch >= self.start:
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] = self.lr(epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule.after_step(trainer.global_step, trainer.current_epoch, trainer.num_training_batches):
            self.snapshots.append(snapshot(pl_module))

    def bma(self, pl_module: pl.LightningModule, loader: Iterable, *, return_probs: bool = False) -> BMAResult:
        """The average of the snapshots' predictions on ``loader`` (:func:`valleys.evaluation.predict.bma`)."""
        if not self.snapshots:
            raise NotCollectedError(
                "FGECallback: no snapshot yet (the first is taken mid-way through the first cycle "
                f"after epoch {self.start})"
            )
        return bma(pl_module, self.snapshots, loader, adapter=self.adapter, return_probs=return_probs)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.snapshots = list(state_dict.get("snapshots", []))
