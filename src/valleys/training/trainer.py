"""The one training loop of valleys, with callbacks, schedules, checkpoints and exact resume.

Methods plug in through :class:`Callback` (SWA collects at epoch ends, SWAG and FGE later do the same), so
there is one loop over the training loader in the whole project. Every step: set the LR from the schedule at
the fractional epoch, compute the batch's loss with the step function (default :func:`supervised_step`: one
forward pass through the :class:`valleys.core.adapter.ModelAdapter` and its loss), check the loss is finite,
backward, optimizer step, callbacks. Every epoch: evaluate on the given loaders, let callbacks add metrics,
append the log line, checkpoint every N epochs.

Distributed data parallel: when ``torch.distributed`` is initialised (e.g. under ``torchrun``), the model is
wrapped in ``DistributedDataParallel`` for the training forward passes (:class:`DistributedPolicy`), and a
``DataLoader`` of global batches is cut so that rank ``r`` takes its contiguous slice of every global batch
(:class:`valleys.core.distributed.RankSliceBatchSampler`): the batch size stays the global one and the ranks
together see exactly the batches of one process, in the same order. Each rank's loss is weighted by
``n_r R / N`` (its share ``n_r`` of the global batch of ``N`` over ``R`` ranks) so that DDP's gradient
average is the gradient of the global batch's mean loss, also for a last batch that does not split evenly;
N processes then reproduce one process up to the order of floating-point sums, for models without
BatchNorm or Dropout (BatchNorm uses each rank's batch statistics unless ``sync_batchnorm``; Dropout draws
its masks per rank). Evaluation loaders are cut the same way and their metrics all-reduced; training loss
and accuracy are all-reduced into the log; the finiteness check agrees across ranks (one rank's NaN stops
all). Only rank 0 writes checkpoints, the JSON log and the progress bar; a checkpoint records the world size
and resuming under another one is refused. A loader with a ``DistributedSampler`` is left as it is (its
``sampler.set_epoch(epoch)`` is called every epoch). Without a process group nothing changes.

Determinism: the loader's generator (see :func:`valleys.zoo.data.make_loader`) is reseeded with ``seed + epoch``
at every epoch and the global torch RNG state (Dropout) is saved in checkpoints, so a run interrupted after
epoch k and resumed ends with the same weights as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..core import stopping
from ..core.adapter import ModelAdapter, as_adapter
from ..core.batches import to_device
from ..core.checkpoint import (
    check_model_signature,
    checkpoint_field,
    load_checkpoint,
    model_signature,
    save_checkpoint,
    to_json_text,
    write_text,
)
from ..core.distributed import (
    RankSliceBatchSampler,
    check_same_everywhere,
    is_distributed,
    is_main,
    shard_loader,
    world_size,
)
from ..core.weights import unwrap
from ..errors import (
    CheckpointError,
    EmptyLoaderError,
    InputError,
    InputTypeError,
    NonFinitePredictionError,
    TrainingDiverged,
)
from ..evaluation.predict import evaluate
from ..evaluation.results import Scores
from .schedules import Schedule

__all__ = [
    "Callback",
    "Trainer",
    "TrainingDiverged",
    "StepResult",
    "StepFn",
    "supervised_step",
    "CheckpointPolicy",
    "EvaluationPolicy",
    "DistributedPolicy",
    "is_main_process",
]


#: True without a ``torch.distributed`` process group, else whether this is rank 0 (kept under this name).
is_main_process = is_main


@dataclass
class StepResult:
    """What a step function returns for one batch.

    Attributes:
        loss: the scalar to minimise (``loss.backward()`` is called on it).
        logs: extra per-batch numbers (floats or 0-d tensors); each is averaged over the epoch's batches and
            logged under its own key in the epoch's log line.
        prediction, targets: optional; with them the trainer weights ``train_loss`` by the batch size and
            counts ``train_accuracy`` for a classification head (2-D logits, integer class targets).
    """

    loss: Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    prediction: Tensor | None = None
    targets: Any = None


#: ``step_fn(trainer, batch)``: the loss of one training batch, as a :class:`StepResult` or a
#: ``(loss, logs)`` tuple. The trainer does the rest (LR, finiteness check, backward, optimizer step).
StepFn = Callable[["Trainer", Any], Union[StepResult, "tuple[Tensor, dict[str, Any]]"]]


def supervised_step(trainer: Trainer, batch: Any) -> StepResult:
    """The default step: ``loss = L(f(x), y)`` with the trainer's :class:`valleys.core.adapter.ModelAdapter`
    (its inputs, prediction, targets and loss), one forward pass."""
    adapter = trainer.adapter
    target = to_device(adapter.targets(batch), trainer.device)
    out = adapter.forward(trainer.forward_model, batch, trainer.device)
    return StepResult(adapter.compute_loss(out, target), prediction=out, targets=target)


@dataclass
class CheckpointPolicy:
    """The files of a :class:`Trainer` run: its training checkpoint, and the JSON log that goes with it.

    Attributes:
        path: the checkpoint file (safetensors); None: no checkpoints.
        every: write it every this many epochs (and after the last).
        header: JSON-able run configuration stored in every checkpoint.
        log: a JSON-lines file that gets one line per epoch; None: no log. ``fit(resume=...)`` rewrites it from
            the checkpoint's history first, so the log always matches the checkpoint it resumed from.
    """

    path: str | Path | None = None
    every: int = 1
    header: dict[str, Any] | None = None
    log: str | Path | None = None


@dataclass
class EvaluationPolicy:
    """What :class:`Trainer` evaluates at epoch ends.

    Attributes:
        loaders: ``{"val": loader, ...}`` evaluated at the end of every ``every`` epochs (and the last), scored
            as the trainer's adapter says (classification metrics, or regression ones for a Gaussian head).
        every: epochs between evaluations.
    """

    loaders: Mapping[str, Iterable] | None = None
    every: int = 1


@dataclass
class DistributedPolicy:
    """How :class:`Trainer` trains under ``torch.distributed`` (ignored without a process group).

    Attributes:
        ddp: wrap the model in ``DistributedDataParallel`` for the training forward passes (gradients averaged
            across ranks during backward). False: the step function must synchronise gradients itself.
        shard_data: cut a ``DataLoader`` of global batches into each rank's slice of every batch (train and
            evaluation loaders); False: the loaders already hold each rank's data.
        sync_batchnorm: convert BatchNorm layers to ``SyncBatchNorm`` (batch statistics over the global batch,
            exact; needs CUDA in PyTorch); False: each rank normalises with its own slice's statistics.
        find_unused_parameters: passed to ``DistributedDataParallel`` (models whose forward skips parameters).
        ignore: names of parameters and buffers DDP should neither all-reduce nor broadcast (parameters that
            never receive a gradient, constant buffers), e.g. the network inside a curve model.
    """

    ddp: bool = True
    shard_data: bool = True
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    ignore: tuple[str, ...] = ()


class Callback:
    """Hooks into :class:`Trainer`. Override what you need; state goes into checkpoints via ``state_dict``."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step; ``trainer.step`` counts steps from 1, ``trainer.epoch`` from 0."""

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        """After each epoch's evaluation; add entries to ``logs`` to have them logged."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader`` for ``epochs`` epochs.

    The model trains where it is: put it on its device (``model.to("cuda")``) before building the optimizer;
    batches are moved to the device of its parameters (:attr:`device`).

    Args:
        model: the network, already on its device.
        optimizer: a ``torch.optim.Optimizer`` over (some of) its parameters.
        train_loader: the training batches; it must have a length (a ``DataLoader`` or a list).
        epochs: number of epochs (>= 1).
        adapter: a :class:`valleys.core.adapter.ModelAdapter`: how a batch becomes a model call, where the
            targets are, and the loss (``ModelAdapter(loss=...)``: cross-entropy by default, ``"gaussian"`` or
            any ``callable(prediction, targets)``); its predictive also says how evaluation loaders are scored.
        schedule: a :class:`valleys.training.schedules.Schedule` setting the LR before every step (None: keep LR).
        callbacks: :class:`Callback` objects (e.g. :class:`valleys.training.callbacks.SWACallback`).
        step_fn: ``step_fn(trainer, batch) -> StepResult | (loss, logs)``, the loss of one batch (default
            :func:`supervised_step`). E.g. a Pi model (Laine & Aila 2017) adds the MSE between the softmaxes of
            two noisy forward passes; its extra ``logs`` are averaged per epoch into the log line.
        evaluation: an :class:`EvaluationPolicy`: loaders evaluated at epoch ends and how often (None: none).
        checkpoint: a :class:`CheckpointPolicy`: the run's files (the checkpoint, how often it is written, its
            header, the JSON log of one line per epoch); None: no files.
        distributed: a :class:`DistributedPolicy` (default ``DistributedPolicy()``), used only when a
            ``torch.distributed`` process group is initialised (see the module docstring).
        seed: seeds the global RNG at the start of :meth:`fit` and the loader's generator per epoch
            (``seed + epoch``); step functions may derive their own streams from it (``trainer.seed``).

    The progress bar is a matter of one call to the loop: ``fit(progress=False)`` hides it.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable,
        epochs: int,
        *,
        adapter: ModelAdapter | None = None,
        schedule: Schedule | None = None,
        callbacks: Sequence[Callback] = (),
        step_fn: StepFn | None = None,
        evaluation: EvaluationPolicy | None = None,
        checkpoint: CheckpointPolicy | None = None,
        distributed: DistributedPolicy | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(getattr(optimizer, "param_groups", None), list):
            raise InputTypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}: Trainer(model, "
                "optimizer, train_loader, epochs); the loss goes in adapter=ModelAdapter(loss=...)"
            )
        self.adapter = as_adapter(adapter)
        evaluation = evaluation if evaluation is not None else EvaluationPolicy()
        checkpoint = checkpoint if checkpoint is not None else CheckpointPolicy()
        for name, value, cls, example in (
            ("evaluation", evaluation, EvaluationPolicy, 'EvaluationPolicy({"val": loader}, every=1)'),
            ("checkpoint", checkpoint, CheckpointPolicy, 'CheckpointPolicy("run/checkpoint.safetensors")'),
            (
                "distributed",
                distributed if distributed is not None else DistributedPolicy(),
                DistributedPolicy,
                "DistributedPolicy()",
            ),
        ):
            if not isinstance(value, cls):
                raise InputTypeError(
                    f"{name} must be an instance of {cls.__name__}, got {type(value).__name__}; e.g. {example}"
                )
        if schedule is not None and not callable(schedule):
            raise InputTypeError(
                f"schedule must be a Schedule (a callable epoch -> LR), got {type(schedule).__name__}; for a "
                "constant LR set it on the optimizer and pass schedule=None"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"epochs must be a positive integer, got {epochs!r}")
        if checkpoint.every < 1 or evaluation.every < 1:
            raise InputError(
                f"CheckpointPolicy.every and EvaluationPolicy.every must be at least 1, got {checkpoint.every} "
                f"and {evaluation.every}"
            )
        try:
            steps = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise InputTypeError("train_loader must have a length (a DataLoader or a list of batches)") from None
        if steps == 0:
            raise EmptyLoaderError("the training loader is empty (no batches): check the dataset and batch_size")
        eval_loaders = evaluation.loaders
        self.model = model
        self.distributed = distributed or DistributedPolicy()
        self.world_size = world_size()
        self.ddp_model: nn.Module | None = None
        if self.world_size > 1:
            dev = self.device
            check_same_everywhere(
                [float(dev.type == "cuda"), float(sum(p.numel() for p in self.model.parameters()))],
                "(model on CUDA, parameter count)",
            )
            if self.distributed.sync_batchnorm:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            if self.distributed.shard_data:
                train_loader = shard_loader(train_loader, "train")
                eval_loaders = {k: shard_loader(v, "evaluation") for k, v in (eval_loaders or {}).items()}
            if self.distributed.ddp:
                from torch.nn.parallel import DistributedDataParallel

                dev = self.device
                if self.distributed.ignore:
                    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                        self.model, list(self.distributed.ignore)
                    )
                self.ddp_model = DistributedDataParallel(
                    self.model,
                    device_ids=[dev] if dev.type == "cuda" else None,
                    find_unused_parameters=self.distributed.find_unused_parameters,
                )
        self.step_fn: StepFn = step_fn or supervised_step
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.steps_per_epoch = steps
        self.epochs = epochs
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.eval_loaders = dict(eval_loaders or {})
        self.eval_every = evaluation.every
        self.seed = seed
        self.checkpoint_path = Path(checkpoint.path) if checkpoint.path is not None else None
        self.checkpoint_every = checkpoint.every
        self.log_path = Path(checkpoint.log) if checkpoint.log is not None else None
        self.header = dict(checkpoint.header or {})
        self.epoch = 0  # the epoch being trained (0-based); after fit, == epochs
        self.step = 0  # optimizer steps done
        self.history: list[dict[str, Any]] = []
        self.lr = float(optimizer.param_groups[0]["lr"])
        # an epoch stopped part-way by a signal: its position and sums (see valleys.core.stopping)
        self._partial: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        """Where the model is (its first parameter's, else first buffer's device; CPU for neither): batches
        and evaluations go there."""
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ checkpoints
    def _callback_key(self, i: int, cb: Callback) -> str:
        return f"{i}_{type(cb).__name__}"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, callbacks, RNG, counters, history."""
        return {
            "model": unwrap(self.model).state_dict(),  # a compiled model's own names, no "_orig_mod."
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {self._callback_key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": to_json_text(self.history),
            **({"partial": self._partial} if self._partial is not None else {}),
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default: ``checkpoint_path``); the trainer calls it on rank 0 only."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise InputError(
                "no checkpoint path: pass checkpoint=CheckpointPolicy(path) to Trainer or a path to save()"
            )
        header = {
            **self.header,
            "kind": "training",
            "epoch": self.epoch,
            "epochs": self.epochs,
            "signature": model_signature(self.model),
            "world_size": self.world_size,
            "position": 0 if self._partial is None else int(self._partial["position"]),
        }
        return save_checkpoint(path, self.state_dict(), header)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (checks the architecture first)."""
        state, header = load_checkpoint(path)
        if header.get("kind") != "training":
            raise CheckpointError(f"{path} is not a training checkpoint (kind {header.get('kind')!r})")
        check_model_signature(checkpoint_field(header, "signature", path), self.model, str(path))
        written = int(header.get("world_size", 1))
        if written != self.world_size:
            raise CheckpointError(
                f"{path} was written by a run on {written} process{'es' if written > 1 else ''}, this run has "
                f"{self.world_size}: resume with the same number (torchrun --nproc-per-node {written} ...), since the "
                "ranks' data shards and the random streams depend on it"
            )
        for key in ("model", "optimizer", "callbacks", "rng", "epoch", "step", "history"):
            checkpoint_field(state, key, path, "state")
        keys = [self._callback_key(i, cb) for i, cb in enumerate(self.callbacks)]
        if sorted(keys) != sorted(state["callbacks"]):
            raise CheckpointError(
                f"{path} was written with callbacks {sorted(state['callbacks'])}, this trainer has {keys}"
            )
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, cb in zip(keys, self.callbacks, strict=True):
            cb.load_state_dict(state["callbacks"][key])
        torch.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self._partial = state.get("partial")

    # ------------------------------------------------------------------ loop
    def _set_lr(self, epoch_float: float) -> None:
        if self.schedule is not None:
            self.lr = float(self.schedule(epoch_float))
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr

    def _reseed_loader(self) -> None:
        gen = getattr(self.train_loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.seed + self.epoch)
        set_epoch = getattr(getattr(self.train_loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):  # DistributedSampler: a new shuffle per epoch
            set_epoch(self.epoch)

    def fit(self, resume: str | Path | None = None, *, progress: bool = True) -> list[dict[str, Any]]:
        """Train to ``epochs`` (from a checkpoint if ``resume`` is given) and return the per-epoch log;
        ``progress`` shows a progress bar (steps, rate, ETA) on rank 0."""
        with stopping.deferred():  # a signal stops at the next step boundary, after a checkpoint
            return self._fit(resume, progress)

    def _fit(self, resume: str | Path | None, progress: bool) -> list[dict[str, Any]]:
        if resume is not None:
            self.load(resume)
        else:
            torch.manual_seed(self.seed)
        main = is_main_process()
        if self.log_path is not None and main:  # a fresh log, or the resumed history without later epochs
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.log_path, "".join(to_json_text(h) + "\n" for h in self.history))
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = None
        if progress and main:
            from ..core.optional import progress_bar

            bar = progress_bar(
                total=self.epochs * self.steps_per_epoch,
                initial=self.epoch * self.steps_per_epoch + (self._partial or {}).get("position", 0),
                unit="step",
                dynamic_ncols=True,
                leave=False,
            )
        try:
            while self.epoch < self.epochs:
                logs = self._train_epoch(bar)
                self.epoch += 1
                self._end_epoch(logs)
                signum = self._stop_agreed()
                if signum:  # a signal during the epoch's end: its checkpoint, then stop
                    self._stop(signum)
        finally:
            if bar is not None:
                bar.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _share(self, i: int) -> float:
        """``n_r R / N`` for global batch ``i`` of the epoch: DDP averages the ranks' gradients, so weighting rank
        ``r``'s mean loss by its share of the global batch makes the average the global batch's gradient."""
        sampler = getattr(self.train_loader, "batch_sampler", None)
        return sampler.share(i) if isinstance(sampler, RankSliceBatchSampler) else 1.0

    def _train_epoch(self, bar) -> dict[str, Any]:
        model, opt = self.model, self.optimizer
        model.train()
        self._reseed_loader()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device="cpu")
        correct, seen, batches, classified = 0, 0, 0, False
        extra: dict[str, float] = {}
        partial, self._partial = self._partial, None
        if partial is not None:  # the loader draws its shuffle (and augmentation) from the epoch's start state
            torch.set_rng_state(partial["epoch_rng"])
        epoch_rng = torch.get_rng_state()
        loader = iter(self.train_loader)
        first = 0
        if partial is not None:  # resume an epoch stopped part-way: skip its done batches, restore its sums
            first = int(partial["position"])
            for _ in range(first):
                next(loader)
            torch.set_rng_state(partial["rng"])
            loss_sum = partial["loss_sum"].clone()
            correct, seen, batches = int(partial["correct"]), int(partial["seen"]), int(partial["batches"])
            classified, extra = bool(partial["classified"]), dict(partial["extra"])
        for i, batch in enumerate(loader, start=first):
            self._set_lr(self.epoch + i / self.steps_per_epoch)
            result = self.step_fn(self, batch)
            if not isinstance(result, StepResult):
                loss_, logs_ = result
                result = StepResult(loss_, dict(logs_ or {}))
            loss, out, target = result.loss, result.prediction, result.targets
            finite = bool(torch.isfinite(loss))
            if self.world_size > 1:  # every rank stops together, or none does (no rank left waiting in DDP)
                flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
                torch.distributed.all_reduce(flag)
                finite = flag.item() == 0
            if not finite:
                good = (
                    self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
                )
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} at epoch {self.epoch + 1}, step {i + 1} of "
                    f"{self.steps_per_epoch} (global step {self.step + 1}) with lr {self.lr:g}; training "
                    "stopped",
                    checkpoint=good,
                    advice="Lower the learning rate or check the data.",
                )
            opt.zero_grad(set_to_none=True)
            (loss * self._share(i) if self.ddp_model is not None else loss).backward()
            opt.step()
            self.step += 1
            n = target.shape[0] if isinstance(target, Tensor) and target.dim() > 0 else 1
            loss_sum += loss.detach().double().cpu() * n
            seen += n
            batches += 1
            for k, v in result.logs.items():
                extra[k] = extra.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v)
            if (
                isinstance(out, Tensor)
                and out.dim() == 2
                and isinstance(target, Tensor)
                and target.dim() == 1
                and not target.is_floating_point()
            ):
                correct += int((out.detach().argmax(dim=1) == target).sum())
                classified = True
            for cb in self.callbacks:
                cb.on_step_end(self)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(
                        epoch=f"{self.epoch + 1}/{self.epochs}",
                        loss=f"{float(loss.detach()):.4f}",
                        lr=f"{self.lr:.3g}",
                        refresh=False,
                    )
            signum = self._stop_agreed()
            if signum:
                self._partial = {
                    "position": i + 1,
                    "epoch_rng": epoch_rng,
                    "rng": torch.get_rng_state(),
                    "loss_sum": loss_sum,
                    "correct": correct,
                    "seen": seen,
                    "batches": batches,
                    "classified": classified,
                    "extra": dict(extra),
                }
                self._stop(signum)
        if self.world_size > 1:  # the log holds the numbers of all ranks' examples
            keys = sorted(extra)
            t = torch.tensor(
                [float(loss_sum), seen, correct, float(classified)] + [extra[k] for k in keys],
                dtype=torch.float64,
                device=next(self.model.parameters()).device,
            )
            torch.distributed.all_reduce(t)
            loss_sum, seen, correct = t[0].cpu(), int(t[1]), int(t[2])
            classified = bool(t[3] > 0)
            extra = {k: float(v) / self.world_size for k, v in zip(keys, t[4:].tolist(), strict=True)}
        logs: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.lr, "train_loss": float(loss_sum) / max(seen, 1)}
        if classified:
            logs["train_accuracy"] = correct / max(seen, 1)
        logs.update({k: v / max(batches, 1) for k, v in extra.items()})
        logs["train_time"] = time.perf_counter() - start
        return logs

    def _stop_agreed(self) -> int:
        """The signal that asked to stop (:mod:`valleys.core.stopping`), 0 for none; under torch.distributed the
        ranks all-reduce it (the largest: SIGTERM over SIGINT), so that all stop after the same step."""
        signum = stopping.requested() or 0
        if self.world_size > 1:
            flag = torch.tensor([float(signum)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _stop(self, signum: int) -> None:
        """Write the checkpoint of this step boundary (rank 0; every rank waits for it) and raise
        :class:`valleys.core.stopping.Stopped` naming it."""
        if self.checkpoint_path is not None and is_main_process():
            self.save()
        if self.world_size > 1:  # no rank leaves (torchrun would then kill rank 0) before the checkpoint is written
            torch.distributed.barrier()
        raise stopping.Stopped(signum, None if self.checkpoint_path is None else str(self.checkpoint_path))

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a divergence found at an epoch end (``self.epoch`` epochs done), worded as the per-step one."""
        good = self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
        return TrainingDiverged(
            f"{what} at the end of epoch {self.epoch} of {self.epochs} (global step {self.step}) with lr "
            f"{self.lr:g}; training stopped",
            checkpoint=good,
            advice="Lower the learning rate (for an averaging method, also the averaging-phase LR such as "
            "--swa-lr) or check the data.",
        )

    def _check_weights(self) -> None:
        """The last step of an epoch can overflow the weights while its loss (computed before it) was finite."""
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                raise self._diverged(f"the weights became non-finite (parameter {name})")

    @property
    def forward_model(self) -> nn.Module:
        """The module a step function calls for the training forward pass whose loss is back-propagated: the
        ``DistributedDataParallel`` wrapper under torch.distributed (it averages the gradients across ranks),
        else the model itself. Everything else (callbacks, evaluation, checkpoints) uses ``self.model``."""
        return self.ddp_model if self.ddp_model is not None else self.model

    def evaluate_on(self, loader: Iterable, model: nn.Module | None = None) -> Scores:
        """Metrics of the model (or of ``model``, e.g. a mean teacher), as it is now, on one loader (see
        :func:`valleys.evaluation.predict.evaluate`).

        Under ``torch.distributed`` every rank scores its part of the loader and the metric state (counts,
        sums, per-bin arrays) is all-reduced, so every rank gets the metrics of all ranks' examples; every rank
        must call this at the same points (the trainer does)."""
        try:
            return evaluate(
                self.model if model is None else model, loader, adapter=self.adapter, all_reduce=is_distributed()
            )
        except NonFinitePredictionError as e:  # the weights (or an average's BatchNorm statistics) diverged
            raise self._diverged("the evaluated network's predictions became non-finite") from e

    @staticmethod
    def log_entries(prefix: str, result: Scores) -> dict[str, float]:
        """The headline numbers of an evaluation for the epoch log, keyed ``<prefix>_<metric>``."""
        keys = ("accuracy", "nll", "ece", "rmse", "coverage_95")
        return {f"{prefix}_{k}": float(getattr(result, k)) for k in keys if hasattr(result, k)}

    def should_evaluate(self, loaders: Mapping[str, Iterable] | None = None) -> bool:
        """Whether this epoch end evaluates ``loaders`` (default: the eval loaders): every ``eval_every``
        epochs and after the last."""
        loaders = self.eval_loaders if loaders is None else loaders
        return bool(loaders) and (self.epoch % self.eval_every == 0 or self.epoch == self.epochs)

    def _end_epoch(self, logs: dict[str, Any]) -> None:
        self._check_weights()
        if self.should_evaluate():
            for name, loader in self.eval_loaders.items():
                logs.update(self.log_entries(name, self.evaluate_on(loader)))
        for cb in self.callbacks:
            cb.on_epoch_end(self, logs)
        self.history.append(logs)
        main = is_main_process()
        if self.log_path is not None and main:
            with open(self.log_path, "a") as f:
                f.write(to_json_text(logs) + "\n")
        if (
            main
            and self.checkpoint_path is not None
            and (self.epoch % self.checkpoint_every == 0 or self.epoch == self.epochs)
        ):
            self.save()
