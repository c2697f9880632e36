"""The one training loop of valleys, with callbacks, schedules, checkpoints and exact resume.

Methods plug in through :class:`Callback` (SWA collects at epoch ends, SWAG and FGE later do the same), so
there is one loop over the training loader in the whole project. Every step: set the LR from the schedule at
the fractional epoch, forward, check the loss is finite, backward, optimizer step, callbacks. Every epoch:
evaluate on the given loaders, let callbacks add metrics, append the log line, checkpoint every N epochs.

Determinism: the loader's generator (see :func:`valleys.zoo.data.make_loader`) is reseeded with ``seed + epoch``
at every epoch and the global torch RNG state (Dropout) is saved in checkpoints, so a run interrupted after
epoch k and resumed ends with the same weights as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batches import InputFn, call_model, default_input_fn, default_target_fn, to_device
from ..core.batchnorm import EmptyLoaderError
from ..core.checkpoint import CheckpointError, check_model_signature, load_checkpoint, model_signature, save_checkpoint
from ..evaluation.predict import evaluate
from .schedules import Schedule

__all__ = ["Callback", "Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message says where and which checkpoint is the last good one."""


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

    Args:
        model, loss_fn, optimizer, train_loader: the usual; ``loss_fn(output, target)`` returns a scalar.
        epochs: number of epochs (>= 1).
        schedule: a :class:`valleys.training.schedules.Schedule` setting the LR before every step (None: keep LR).
        callbacks: :class:`Callback` objects (e.g. :class:`valleys.methods.SWACallback`).
        eval_loaders: ``{"val": loader, ...}`` evaluated at the end of every epoch (accuracy, NLL, ...).
        eval_every: evaluate every this many epochs (and always at the last).
        device: where to train; the model is moved there.
        seed: seeds the global RNG at the start and the loader's generator per epoch (``seed + epoch``).
        checkpoint_path: where to write the training checkpoint (safetensors); None: no checkpoints.
        checkpoint_every: write it every this many epochs (and after the last).
        log_path: append one JSON line per epoch there.
        header: JSON-able run configuration stored in every checkpoint.
        progress: show a progress bar (rate and ETA).
        input_fn, target_fn: how to read a batch (see :mod:`valleys.core.batches`).
        likelihood: how eval loaders are scored: ``"classification"`` (logits) or ``"gaussian"`` (a
            ``(mean, variance)`` regression head); see :func:`valleys.evaluation.predict.evaluate`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable,
        *,
        epochs: int,
        schedule: Schedule | None = None,
        callbacks: Sequence[Callback] = (),
        eval_loaders: Mapping[str, Iterable] | None = None,
        eval_every: int = 1,
        device: torch.device | str | None = None,
        seed: int = 0,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 1,
        log_path: str | Path | None = None,
        header: dict[str, Any] | None = None,
        progress: bool = True,
        input_fn: InputFn | None = None,
        target_fn: Callable[[Any], Tensor] | None = None,
        likelihood: str = "classification",
    ) -> None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if checkpoint_every < 1 or eval_every < 1:
            raise ValueError("checkpoint_every and eval_every must be at least 1")
        try:
            steps = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("train_loader must have a length (a DataLoader or a list of batches)") from None
        if steps == 0:
            raise EmptyLoaderError("the training loader is empty (no batches): check the dataset and batch_size")
        self.model = model.to(device) if device is not None else model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.steps_per_epoch = steps
        self.epochs = epochs
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.eval_loaders = dict(eval_loaders or {})
        self.eval_every = eval_every
        self.device = device
        self.seed = seed
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every = checkpoint_every
        self.log_path = Path(log_path) if log_path is not None else None
        self.header = dict(header or {})
        self.progress = progress
        self.input_fn = input_fn or default_input_fn
        self.target_fn = target_fn or default_target_fn
        self.likelihood = likelihood
        self.epoch = 0  # the epoch being trained (0-based); after fit, == epochs
        self.step = 0   # optimizer steps done
        self.history: list[dict[str, Any]] = []
        self.lr = float(optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ checkpoints
    def _callback_key(self, i: int, cb: Callback) -> str:
        return f"{i}_{type(cb).__name__}"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, callbacks, RNG, counters, history."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {self._callback_key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": json.dumps(self.history),
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default: ``checkpoint_path``)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass checkpoint_path to Trainer or a path to save()")
        header = {**self.header, "kind": "training", "epoch": self.epoch, "epochs": self.epochs,
                  "signature": model_signature(self.model)}
        return save_checkpoint(path, self.state_dict(), header)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (checks the architecture first)."""
        state, header = load_checkpoint(path)
        if header.get("kind") != "training":
            raise CheckpointError(f"{path} is not a training checkpoint (kind {header.get('kind')!r})")
        check_model_signature(header["signature"], self.model, str(path))
        keys = [self._callback_key(i, cb) for i, cb in enumerate(self.callbacks)]
        if sorted(keys) != sorted(state["callbacks"]):
            raise CheckpointError(
                f"{path} was written with callbacks {sorted(state['callbacks'])}, this trainer has {keys}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, cb in zip(keys, self.callbacks):
            cb.load_state_dict(state["callbacks"][key])
        torch.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])

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

    def fit(self, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train to ``epochs`` (from a checkpoint if ``resume`` is given) and return the per-epoch log."""
        if resume is not None:
            self.load(resume)
        else:
            torch.manual_seed(self.seed)
        if self.log_path is not None:  # a fresh log, or the resumed history without later epochs
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.epochs * self.steps_per_epoch, initial=self.epoch * self.steps_per_epoch,
                       unit="step", dynamic_ncols=True, leave=False)
        try:
            while self.epoch < self.epochs:
                logs = self._train_epoch(bar)
                self.epoch += 1
                self._end_epoch(logs)
        finally:
            if bar is not None:
                bar.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _train_epoch(self, bar) -> dict[str, Any]:
        model, opt = self.model, self.optimizer
        model.train()
        self._reseed_loader()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct, seen, batches, classified = 0, 0, 0, False
        for i, batch in enumerate(self.train_loader):
            self._set_lr(self.epoch + i / self.steps_per_epoch)
            inputs = to_device(self.input_fn(batch), self.device)
            target = to_device(self.target_fn(batch), self.device)
            out = call_model(model, inputs)
            loss = self.loss_fn(out, target)
            if not bool(torch.isfinite(loss)):
                last = (f"the last good checkpoint is {self.checkpoint_path}"
                        if self.checkpoint_path is not None and self.checkpoint_path.exists()
                        else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} at epoch {self.epoch + 1}, step {i + 1} of "
                    f"{self.steps_per_epoch} (global step {self.step + 1}) with lr {self.lr:g}; training "
                    f"stopped; {last}. Lower the learning rate or check the data."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.step += 1
            n = target.shape[0] if isinstance(target, Tensor) and target.dim() > 0 else 1
            loss_sum += loss.detach().double().cpu() * n
            seen += n
            batches += 1
            if out.dim() == 2 and isinstance(target, Tensor) and target.dim() == 1 and not target.is_floating_point():
                correct += int((out.detach().argmax(dim=1) == target).sum())
                classified = True
            for cb in self.callbacks:
                cb.on_step_end(self)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(epoch=f"{self.epoch + 1}/{self.epochs}", loss=f"{float(loss.detach()):.4f}",
                                    lr=f"{self.lr:.3g}", refresh=False)
        logs: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.lr, "train_loss": float(loss_sum) / max(seen, 1)}
        if classified:
            logs["train_accuracy"] = correct / seen
        logs["train_time"] = time.perf_counter() - start
        return logs

    def evaluate_on(self, loader: Iterable) -> dict[str, Any]:
        """Classification metrics of the model, as it is now, on one loader."""
        return evaluate(self.model, loader, device=self.device, input_fn=self.input_fn, target_fn=self.target_fn,
                        likelihood=self.likelihood)

    @staticmethod
    def log_entries(prefix: str, result: Mapping[str, Any]) -> dict[str, float]:
        """The headline numbers of an evaluation for the epoch log, keyed ``<prefix>_<metric>``."""
        keys = ("accuracy", "nll", "ece", "rmse", "coverage_95")
        return {f"{prefix}_{k}": float(result[k]) for k in keys if k in result}

    def should_evaluate(self, loaders: Mapping[str, Iterable] | None = None) -> bool:
        """Whether this epoch end evaluates ``loaders`` (default: the eval loaders): every ``eval_every``
        epochs and after the last."""
        loaders = self.eval_loaders if loaders is None else loaders
        return bool(loaders) and (self.epoch % self.eval_every == 0 or self.epoch == self.epochs)

    def _end_epoch(self, logs: dict[str, Any]) -> None:
        if self.should_evaluate():
            for name, loader in self.eval_loaders.items():
                logs.update(self.log_entries(name, self.evaluate_on(loader)))
        for cb in self.callbacks:
            cb.on_epoch_end(self, logs)
        self.history.append(logs)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(logs) + "\n")
        if self.checkpoint_path is not None and (self.epoch % self.checkpoint_every == 0 or self.epoch == self.epochs):
            self.save()
