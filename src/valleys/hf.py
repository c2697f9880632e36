"""SWA and SWAG as Hugging Face ``transformers.TrainerCallback`` subclasses (``pip install 'valleys[hf]'``),
including SWAG over the LoRA adapter of a ``peft`` model.

SWAG over the low-rank adapters of a fine-tuned model is the recipe of Onal et al. (2024, "Gaussian Stochastic
Weight Averaging for Bayesian Low-Rank Adaptation of Large Language Models"): the posterior lives in the
adapter's small weight space, so it holds (K + 2) x the adapter's size, not the model's. ``names="lora"``
averages the LoRA matrices and peft's other trainable modules (``modules_to_save``, such as a classifier
head), so that the average is consistent; ``names="lora-only"`` takes the LoRA matrices alone (the head then
keeps its last iterate).

The settings are those of :class:`valleys.training.collecting.CollectingCore`, shared with
:mod:`valleys.lightning`: ``start`` (epochs, or a float fraction of ``num_train_epochs``), ``every``/``k``
(epoch ends or optimizer steps), ``swa_lr`` (constant from ``start``, winning over the Trainer's scheduler),
``names``, ``bn_loader`` (default: the Trainer's training loader), ``adapter``; SWAG adds ``rank``,
``samples``, ``scale`` and ``seed``. Each callback writes its state into every checkpoint folder the Trainer
saves (``valleys-<callback>.safetensors``) and reads it back on ``Trainer.train(resume_from_checkpoint=...)``,
so a resumed run ends with the posterior of an uninterrupted one. FSDP and DeepSpeed are refused when
training begins.

Example::

    from transformers import Trainer
    from valleys.hf import SWAGCallback

    swag = SWAGCallback(start=1, rank=10, samples=10, names="lora")
    Trainer(model=peft_model, args=args, train_dataset=train, callbacks=[swag]).train()
    result = swag.bma(peft_model, test_loader)       # result.metrics: NLL, ECE, accuracy of the average
    swag.save("adapter_dir/swag_posterior.safetensors")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .core.adapter import ModelAdapter
from .core.batchnorm import has_batchnorm, recompute_bn
from .core.checkpoint import load_checkpoint, save_checkpoint
from .core.optional import require
from .errors import CheckpointError, InputError
from .evaluation.engine import Progress
from .evaluation.predict import bma
from .evaluation.results import BMAResult
from .methods.averaging import SWA
from .methods.swag import SWAG
from .training.collecting import CollectingCore

if TYPE_CHECKING:
    import transformers
else:  # a clear ImportError naming the extra
    transformers = require("transformers", "hf")

__all__ = ["SWACallback", "SWAGCallback", "adapter_names"]


def adapter_names(model: nn.Module, names: str | Sequence[str] | None) -> list[str] | None:
    """The parameter names a posterior covers: ``"lora"`` (trainable parameters whose name contains ``lora_``,
    and peft's trainable ``modules_to_save`` copies such as a classifier head), ``"lora-only"`` (the ``lora_``
    ones alone), an explicit list, or ``None`` (every trainable parameter). A selection that matches nothing is
    refused, listing the trainable parameters there are."""
    if names is None:
        return None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if names == "lora":
        chosen = [n for n in trainable if "lora_" in n or "modules_to_save" in n]
    elif names == "lora-only":
        chosen = [n for n in trainable if "lora_" in n]
    elif isinstance(names, str):
        raise InputError(f"names must be 'lora', 'lora-only', a list of parameter names or None, got {names!r}")
    else:
        chosen = list(names)
    if not chosen:
        shown = ", ".join(trainable[:8]) + (f", ... ({len(trainable)} in all)" if len(trainable) > 8 else "")
        raise InputError(
            f"names={names!r} matches no parameter of {type(model).__name__}; its trainable "
            f"parameters are: {shown or 'none'}"
        )
    return chosen


def _given(model: nn.Module | None) -> nn.Module:
    """The model ``transformers.Trainer`` passes to every callback event (``None`` only outside a Trainer)."""
    if model is None:
        raise InputError("the callback event came without the model; valleys' callbacks run inside a Trainer")
    return model


def _refuse_sharded(args: transformers.TrainingArguments, who: str) -> None:
    if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        raise InputError(
            f"{who}: FSDP and DeepSpeed shard the parameters, which valleys' Hugging Face callbacks do not "
            "average; train with DDP (torchrun), or use FSDP2 (torch.distributed.fsdp.fully_shard) in your own "
            "loop with valleys' sharded SWA/SWAG (see the integrations guide)"
        )


class _Collecting(CollectingCore, transformers.TrainerCallback):
    """:class:`valleys.training.collecting.CollectingCore` in the ``Trainer``'s hooks: the averager built when
    training begins, over the parameters ``names`` selects (:func:`adapter_names`)."""

    def _make(self, model: nn.Module, names: list[str] | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _file(self) -> str:
        """The file name of this callback's state in a checkpoint folder (its settings in the name)."""
        fields = "-".join(f"{k}{v}" for k, v in self.state_key_fields().items() if k != "names")
        return f"valleys-{type(self).__name__.lower()}-{fields}.safetensors".replace(" ", "")

    def on_train_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        _refuse_sharded(args, type(self).__name__)
        self.resolve(math.ceil(args.num_train_epochs) if args.max_steps <= 0 else None)
        model = _given(model)
        self._train_loader = kw.get("train_dataloader")
        self.build(model, lambda m: self._make(m, adapter_names(m, self.names)))
        if state.global_step > 0:  # resumed: the posterior saved in the checkpoint folder comes back
            path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}" / self._file()
            if not path.is_file():
                raise CheckpointError(
                    f"{type(self).__name__}: resuming at step {state.global_step}, but {path} is missing; the "
                    "posterior would restart from nothing. Resume from a checkpoint saved with this callback"
                )
            saved, _ = load_checkpoint(path)
            self._averager.load_state_dict(saved)

    def on_save(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kw: Any,
    ) -> None:
        folder = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if self.built and folder.is_dir() and state.is_world_process_zero:
            save_checkpoint(folder / self._file(), dict(self.averager.state_dict()), {"kind": "hf-callback-state"})

    def on_step_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kw: Any,
    ) -> None:
        optimizer = kw.get("optimizer")
        if optimizer is not None:
            scheduler = kw.get("lr_scheduler")
            self.constant_lr([optimizer], int(state.epoch or 0), type(scheduler).__name__ if scheduler else None)

    def on_step_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        if self.schedule.every != "epoch":  # on_step_end comes once per optimizer step (after accumulation)
            steps_per_epoch = max(1, round(state.max_steps / max(args.num_train_epochs, 1)))
            epoch = (state.global_step - 1) // steps_per_epoch  # the epoch this step belongs to (state.epoch
            # already reads 1.0 after the last step of epoch 0)
            if self.schedule.after_step(state.global_step, epoch, steps_per_epoch):
                self.collect(_given(model))

    def on_epoch_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        if self.schedule.at_epoch_end(round(state.epoch or 0)):
            self.collect(_given(model))

    def _bn(self, model: nn.Module) -> Any:
        """BatchNorm statistics: recomputed on ``bn_loader`` (else the training loader) for a model that has
        BatchNorm layers, kept otherwise (transformers' LayerNorm keeps no running statistics)."""
        if not has_batchnorm(model):
            return "keep"
        loader = self.bn_source()
        if loader is None:
            raise InputError(f"{type(self).__name__}: the model has BatchNorm layers; pass bn_loader=")
        return loader


class SWACallback(_Collecting):
    """SWA of the collected weights (all trainable ones, ``names="lora"`` or a list); at the end of training
    the average is written into the model (``apply_at_end=False``: the trained weights stay), BatchNorm
    statistics recomputed if the model has BatchNorm layers."""

    def __init__(
        self,
        start: int | float,
        *,
        every: str = "epoch",
        k: int = 1,
        swa_lr: float | None = None,
        names: str | Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
        apply_at_end: bool = True,
    ) -> None:
        super().__init__(start, every=every, k=k, swa_lr=swa_lr, names=names, bn_loader=bn_loader, adapter=adapter)
        self.apply_at_end = apply_at_end

    def _make(self, model: nn.Module, names: list[str] | None) -> SWA:
        return SWA(model, names)

    def on_train_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        if self.apply_at_end and self.built and self.averager.n > 0:
            model = _given(model)
            self.averager.write(model)
            bn = self._bn(model)
            if bn != "keep":
                recompute_bn(model, bn, adapter=self.adapter)


class SWAGCallback(_Collecting):
    """SWAG (Maddox et al. 2019) over the collected weights, with rank ``rank``; the model keeps its last
    weights, and :meth:`bma` averages ``samples`` draws (scale ``scale``, generator seeded with ``seed``) on a
    loader of dict batches."""

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
        names: str | Sequence[str] | None = None,
        bn_loader: Iterable | None = None,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__(start, every=every, k=k, swa_lr=swa_lr, names=names, bn_loader=bn_loader, adapter=adapter)
        self.rank, self.samples, self.scale, self.seed = rank, samples, scale, seed

    def state_key_fields(self) -> dict[str, Any]:
        return {**super().state_key_fields(), "rank": self.rank}

    def _make(self, model: nn.Module, names: list[str] | None) -> SWAG:
        return SWAG(model, names, rank=self.rank)

    def bma(
        self, model: nn.Module, loader: Iterable, *, return_probs: bool = False, progress: bool = False
    ) -> BMAResult:
        """The Bayesian model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))`` of ``samples`` SWAG draws on
        ``loader`` (:func:`valleys.evaluation.predict.bma`), on the device of the model's parameters, BatchNorm
        statistics recomputed per draw if the model has BatchNorm layers. The model's weights are restored
        afterwards."""
        self.require_collected("predicting with SWAG")
        gen = torch.Generator(device=self.averager.device).manual_seed(self.seed)
        return bma(
            model,
            self.averager.samples(self.samples, scale=self.scale, generator=gen),
            loader,
            space=self.averager.space,
            adapter=self.adapter,
            bn=self._bn(model),
            progress=Progress(total=self.samples) if progress else False,
            return_probs=return_probs,
        )
