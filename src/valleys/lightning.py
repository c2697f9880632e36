"""SWA, SWAG and FGE as PyTorch Lightning callbacks (``pip install 'valleys[lightning]'``).

They use valleys' own pieces, so a Lightning run averages exactly as :class:`valleys.training.trainer.Trainer`
does: :class:`valleys.training.callbacks.CollectionSchedule` decides when to collect (end of every epoch after
``start`` epochs, every ``k`` optimizer steps, or once per cycle), :class:`valleys.methods.averaging.SWA` and
:class:`valleys.methods.swag.SWAG` keep the moments on the flat weight vector, and
:func:`valleys.core.batchnorm.recompute_bn` computes the exact BatchNorm statistics of the average on the
training data. Lightning's own ``StochasticWeightAveraging`` and ``WeightAveraging`` average the BatchNorm
buffers instead (Izmailov et al. 2018 recompute them), and have no SWAG, FGE or model averaging.

The settings are those of :class:`valleys.training.collecting.CollectingCore`, shared with :mod:`valleys.hf`:
``start`` (epochs, or a float fraction of ``max_epochs``), ``every``/``k`` (optimizer steps: gradient
accumulation and manual optimisation counted right), ``swa_lr`` (constant from ``start``, winning over the
user's scheduler), ``names``, ``bn_loader`` (default: the training loader, remembered for ``trainer.test``),
``adapter``; SWAG adds ``rank``, ``samples``, ``scale``, ``seed``.

Each callback's state (the averages, the deviations, the snapshots) goes into Lightning checkpoints under a
``state_key`` that includes its settings (two callbacks of one class can share a Trainer), and comes back on
``trainer.fit(ckpt_path=...)`` (a SWAG posterior is (K + 2) x the model's size in every checkpoint). After
``fit`` the module holds the SWA average, but a checkpoint written then (``trainer.save_checkpoint``) holds
the trained weights, so that resuming from it continues the run; the average is in the callback's state.
Under DDP every rank collects from its replica and the BatchNorm recompute all-reduces over the ranks'
shards; FSDP and DeepSpeed are refused at setup.

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
from .core.distributed import world_size
from .core.optional import require
from .errors import InputError
from .evaluation.engine import BNArg
from .evaluation.predict import bma
from .evaluation.results import BMAResult, ClassificationScores
from .methods.averaging import SWA, NotCollectedError
from .methods.ensembles import snapshot
from .methods.swag import SWAG
from .training.callbacks import CollectionSchedule
from .training.collecting import CollectingCore, StepCounter
from .training.schedules import TriangularCyclic

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:  # a clear ImportError naming the extra
    pl = require("lightning.pytorch", "lightning")

__all__ = ["SWACallback", "SWAGCallback", "FGECallback", "PosteriorInLastCheckpoint"]


def _refuse_sharded(trainer: pl.Trainer, who: str) -> None:
    """FSDP and DeepSpeed shard or flatten the parameters; a weight average over them is not supported here."""
    name = type(trainer.strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name:
        raise InputError(
            f"{who}: the {name} strategy shards the parameters, which valleys' Lightning callbacks do not "
            "average; use strategy='ddp', or FSDP2 (torch.distributed.fsdp.fully_shard) in your own loop with "
            "valleys' sharded SWA/SWAG (see the integrations guide)"
        )


def _undistributed(loader: Any) -> Any:
    """A loader over the whole dataset of ``loader`` when Lightning gave it a ``DistributedSampler`` (each rank
    its shard), in order; anything else as it is."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader):
        return loader
    sampler = getattr(loader.batch_sampler, "sampler", None) if loader.batch_sampler is not None else None
    if not isinstance(loader.sampler, DistributedSampler) and not isinstance(sampler, DistributedSampler):
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn)


def _steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps per epoch: the batches divided by the gradient accumulation, rounded up (Lightning steps
    at the end of an epoch's last, partial accumulation); manual optimisation counts batches."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        return 0
    accumulate = 1 if not trainer.lightning_module.automatic_optimization else trainer.accumulate_grad_batches
    return math.ceil(int(batches) / max(int(accumulate), 1))


def _scheduler_name(trainer: pl.Trainer) -> str | None:
    configs = getattr(trainer, "lr_scheduler_configs", None) or []
    return ", ".join(type(c.scheduler).__name__ for c in configs) or None


class _Collecting(CollectingCore, pl.Callback):
    """:class:`valleys.training.collecting.CollectingCore` in Lightning's hooks."""

    def __init__(self, start: int | float, **kwargs: Any) -> None:
        super().__init__(start, **kwargs)
        self._trained_state: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.state_key_fields())

    # ------------------------------------------------------------------ set-up and state
    def _make(self, model: nn.Module) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _refuse_sharded(trainer, type(self).__name__)
        if stage == "fit":
            self.resolve(trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None)
        self.build(pl_module, self._make)

    def state_dict(self) -> dict[str, Any]:
        return self.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restore(state_dict)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._trained_state is not None:  # after fit the module holds the average: keep the trained weights
            checkpoint["state_dict"] = {k: v.clone() for k, v in self._trained_state.items()}

    # ------------------------------------------------------------------ collection
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_loader = trainer.train_dataloader  # kept for BatchNorm recompute in the test stage
        self._trained_state = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps.start_epoch(trainer.current_epoch, _steps_per_epoch(trainer), trainer.global_step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.constant_lr(trainer.optimizers, trainer.current_epoch, _scheduler_name(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.steps.advanced(trainer.global_step) and self.schedule.after_step(
            self.steps.steps, trainer.current_epoch, _steps_per_epoch(trainer)
        ):
            self.collect(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.at_epoch_end(trainer.current_epoch + 1):
            self.collect(pl_module)

    def _recompute(self, pl_module: pl.LightningModule) -> None:
        loader = self.bn_source()
        if loader is None:
            raise InputError(
                f"{type(self).__name__}: no loader for the BatchNorm recompute: pass bn_loader= or fit with a "
                "train loader"
            )
        recompute_bn(pl_module, loader, adapter=self.adapter, device=pl_module.device)


class SWACallback(_Collecting):
    """Stochastic Weight Averaging (Izmailov et al. 2018) in a Lightning run.

    Collects the weights at the end of every epoch after ``start`` epochs (``every="steps"``: after every
    ``k`` optimizer steps from epoch ``start`` on), then, at the end of ``fit``, writes the average into the
    module and recomputes its BatchNorm statistics exactly on the training data (``bn_loader`` to use another
    loader); ``apply_at_end=False`` leaves the trained weights in the module. ``swa_lr`` sets a constant
    learning rate from epoch ``start`` on (SWA's constant-LR phase); without it the user's schedule is kept.
    ``names`` restricts the average to some parameters. With ``val_loader`` the average (BatchNorm
    recomputed, the module restored afterwards) is scored with valleys' metrics at every epoch end once
    something was collected, logged as ``swa_val_accuracy`` and ``swa_val_nll``.
    """

    def __init__(
        self,
        start: int | float,
        *,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
        apply_at_end: bool = True,
        val_loader: Iterable | None = None,
    ) -> None:
        super().__init__(
            start,
            every=every,
            k=k,
            swa_lr=swa_lr,
            names=names,
            bn_loader=bn_loader,
            adapter=adapter,
        )
        self.val_loader, self.apply_at_end = val_loader, apply_at_end

    def _make(self, model: nn.Module) -> SWA:
        return SWA(model, self.names if not isinstance(self.names, str) else [self.names])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.val_loader is not None and self.averager.n > 0:
            # the average as a one-sample BMA: BatchNorm recomputed for it, the run's weights and statistics restored
            scores = bma(
                pl_module,
                [self.averager.mean],
                self.val_loader,
                space=self.averager.space,
                bn=self.bn_source(),
                adapter=self.adapter,
            ).metrics
            assert isinstance(scores, ClassificationScores)  # the logged numbers are classification scores
            pl_module.log_dict({"swa_val_accuracy": float(scores.accuracy), "swa_val_nll": float(scores.nll)})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.apply_at_end and self.built and self.averager.n > 0:
            self._trained_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.averager.write(pl_module)
            self._recompute(pl_module)


class SWAGCallback(_Collecting):
    """SWAG (Maddox et al. 2019) in a Lightning run: collects like :class:`SWACallback` into a
    :class:`valleys.methods.swag.SWAG` of rank ``rank``; the module keeps its last weights. At
    ``trainer.test`` (and with :meth:`bma`) the Bayesian model average of ``samples`` draws (scale
    ``scale``, generator seeded with ``seed``), each with its BatchNorm statistics recomputed on ``bn_loader``
    (default: the training loader of the last ``fit``), is computed on every test loader and logged as
    ``swag_test_accuracy``, ``swag_test_nll``, ``swag_test_ece`` (also kept in ``self.test_metrics``). Under
    DDP every rank evaluates the whole test set with its share of the draws (each recomputing BatchNorm on
    the whole training set) and the sums are all-reduced, so all ranks report what one process would."""

    def __init__(
        self,
        start: int | float,
        *,
        rank: int = 20,
        samples: int = 30,
        scale: float = 0.5,
        seed: int = 0,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__(
            start,
            every=every,
            k=k,
            swa_lr=swa_lr,
            names=names,
            bn_loader=bn_loader,
            adapter=adapter,
        )
        self.rank, self.samples, self.scale, self.seed = rank, samples, scale, seed
        self.test_metrics: list[dict[str, float]] = []

    def state_key_fields(self) -> dict[str, Any]:
        return {**super().state_key_fields(), "rank": self.rank}

    def _make(self, model: nn.Module) -> SWAG:
        return SWAG(model, self.names if not isinstance(self.names, str) else [self.names], rank=self.rank)

    def bma(
        self, pl_module: pl.LightningModule, loader: Iterable, bn: BNArg = None, *, return_probs: bool = False
    ) -> BMAResult:
        """The BMA of ``self.samples`` SWAG draws on ``loader`` (:func:`valleys.evaluation.predict.bma`), their
        BatchNorm statistics recomputed on ``bn`` (a loader or a policy; default the callback's ``bn_loader``,
        else the training loader of the last ``fit``)."""
        self.require_collected("testing or predicting with SWAG")
        gen = torch.Generator(device=self.averager.device).manual_seed(self.seed)
        bn = bn if bn is not None else self.bn_source()
        shard = world_size() > 1
        if shard:  # under DDP: every rank the whole test set, its share of the draws (see bma's shard=True)
            loader, bn = _undistributed(loader), _undistributed(bn)
        return bma(
            pl_module,
            self.averager.samples(self.samples, scale=self.scale, generator=gen),
            loader,
            space=self.averager.space,
            bn=bn,
            adapter=self.adapter,
            return_probs=return_probs,
            shard=shard,
        )

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.require_collected("testing with SWAG")  # before Lightning runs the test loop

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        self.test_metrics = []
        for i, loader in enumerate(loaders):
            scores = self.bma(pl_module, loader).metrics
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
    cycle's midpoint, the LR minimum, counted in optimizer steps (gradient accumulation and manual
    optimisation counted right). ``self.snapshots`` (state dicts on the CPU) go into checkpoints;
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
        self.steps = StepCounter()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(start=self.start, cycle=self.cycle)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _refuse_sharded(trainer, type(self).__name__)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps.start_epoch(trainer.current_epoch, _steps_per_epoch(trainer), trainer.global_step)

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
        if self.steps.advanced(trainer.global_step) and self.schedule.after_step(
            self.steps.steps, trainer.current_epoch, _steps_per_epoch(trainer)
        ):
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


def _posterior_in_last_io() -> type:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class PosteriorInLastCheckpoint(TorchCheckpointIO):
        """A checkpoint plugin that keeps valleys' callback states (a SWAG posterior is (K + 2) x the model's size)
        only in ``last.ckpt``, so that the ``save_top_k`` checkpoints do not multiply it: in every other file they
        are empty (resuming from one starts the callbacks without a posterior). ``callback.save(path)`` writes
        the posterior on its own.

        Example::

            pl.Trainer(callbacks=[SWAGCallback(start=50), ModelCheckpoint(save_top_k=3, save_last=True)],
                       plugins=[PosteriorInLastCheckpoint()])
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            from pathlib import Path

            if Path(str(path)).name != "last.ckpt":
                states = dict(checkpoint.get("callbacks", {}))
                for key in [k for k in states if k.split("{")[0] in ("SWACallback", "SWAGCallback", "FGECallback")]:
                    states[key] = {}  # restored as empty: the callback starts without a posterior
                checkpoint = {**checkpoint, "callbacks": states}
            super().save_checkpoint(checkpoint, path, storage_options)

    return PosteriorInLastCheckpoint


PosteriorInLastCheckpoint = _posterior_in_last_io()
