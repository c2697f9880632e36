"""SWA and SWAG as Hugging Face ``transformers.TrainerCallback`` subclasses (``pip install 'valleys[hf]'``),
including SWAG over only the LoRA adapter of a ``peft`` model.

SWAG over the low-rank adapters of a fine-tuned model is the recipe of Onal et al. (2024, "Gaussian Stochastic
Weight Averaging for Bayesian Low-Rank Adaptation of Large Language Models"): the posterior lives in the
adapter's small weight space (``names="lora"``: every trainable parameter whose name contains ``lora_``), so
it holds (K + 2) x the adapter's size, not the model's. Collection follows
:class:`valleys.training.callbacks.CollectionSchedule` (epoch ends after ``start`` epochs, or every ``k``
optimizer steps); :meth:`SWAGCallback.bma` averages the predictions of samples through valleys' model adapter
(dict batches as keyword arguments, ``ModelOutput.logits`` as the prediction).

Example::

    from transformers import Trainer
    from valleys.hf import SWAGCallback

    swag = SWAGCallback(start=1, rank=10, names="lora")
    Trainer(model=peft_model, args=args, train_dataset=train, callbacks=[swag]).train()
    result = swag.bma(peft_model, test_loader, samples=10)      # result.metrics: NLL, ECE, accuracy of the average
    swag.save("adapter_dir/swag_posterior.safetensors")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .core.adapter import ModelAdapter
from .core.checkpoint import save_checkpoint
from .core.optional import require
from .errors import InputError
from .evaluation.engine import Progress
from .evaluation.predict import bma
from .evaluation.results import BMAResult
from .methods.averaging import SWA
from .methods.swag import SWAG
from .training.callbacks import CollectingCore

if TYPE_CHECKING:
    import transformers
else:  # a clear ImportError naming the extra
    transformers = require("transformers", "hf")

__all__ = ["SWACallback", "SWAGCallback", "adapter_names"]


def adapter_names(model: nn.Module, names: str | Sequence[str] | None) -> list[str] | None:
    """The parameter names a posterior covers: ``"lora"`` (trainable parameters whose name contains
    ``lora_``), an explicit list, or ``None`` (every trainable parameter). A selection that matches nothing is
    refused, listing the trainable parameters there are."""
    if names is None:
        return None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    chosen = [n for n in trainable if "lora_" in n] if names == "lora" else list(names)
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


class _Collecting(CollectingCore, transformers.TrainerCallback):
    """:class:`valleys.training.callbacks.CollectingCore` in the ``Trainer``'s hooks: the averager built when
    training begins, over the parameters ``names`` selects (:func:`adapter_names`)."""

    def _make(self, model: nn.Module, names: list[str] | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        self.build(_given(model), lambda m: self._make(m, adapter_names(m, self.names)))

    def on_step_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        if self.schedule.every != "epoch":
            steps_per_epoch = max(1, round(state.max_steps / max(args.num_train_epochs, 1)))
            if self.schedule.after_step(state.global_step, int(state.epoch or 0), steps_per_epoch):
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior (safetensors plus a JSON header naming the parameters it covers), e.g. beside the
        saved adapter; loading never runs code."""
        self.require_collected("saving the posterior")
        header = {
            "kind": f"hf-{type(self.averager).__name__.lower()}",
            "names": [s.name for s in self.averager.space.slots],
        }
        return save_checkpoint(path, {k: v for k, v in self.averager.state_dict().items()}, header)


class SWACallback(_Collecting):
    """SWA of the collected weights (all trainable ones, ``names="lora"`` or a list); at the end of training
    the average is written into the model (Transformers' LayerNorm keeps no running statistics)."""

    def __init__(
        self,
        start: int = 0,
        *,
        every: str = "epoch",
        k: int = 1,
        names: str | Sequence[str] | None = None,
        apply_at_end: bool = True,
    ) -> None:
        super().__init__(start, every=every, k=k, names=names)
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
        if self.apply_at_end and self.averager is not None and self.averager.n > 0:
            self.averager.write(model)


class SWAGCallback(_Collecting):
    """SWAG (Maddox et al. 2019) over the collected weights, with rank ``rank``; the model keeps its last
    weights, and :meth:`bma` averages ``samples`` draws on a loader of dict batches."""

    def __init__(
        self,
        start: int = 0,
        *,
        rank: int = 20,
        every: str = "epoch",
        k: int = 1,
        names: str | Sequence[str] | None = None,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__(start, every=every, k=k, names=names, adapter=adapter)
        self.rank = rank

    def _make(self, model: nn.Module, names: list[str] | None) -> SWAG:
        return SWAG(model, names, rank=self.rank)

    def bma(
        self,
        model: nn.Module,
        loader: Iterable,
        *,
        samples: int = 10,
        scale: float = 0.5,
        seed: int = 0,
        return_probs: bool = False,
        progress: bool = False,
    ) -> BMAResult:
        """The Bayesian model average ``p(y | x) = (1/S) sum_s softmax(f(x; w_s))`` of ``samples`` SWAG draws on
        ``loader`` (:func:`valleys.evaluation.predict.bma`, BatchNorm statistics kept), on the device of the
        model's parameters. The model's weights are restored afterwards."""
        self.require_collected("predicting with SWAG")
        gen = torch.Generator(device=self.averager.device).manual_seed(seed)
        return bma(
            model,
            self.averager.samples(samples, scale=scale, generator=gen),
            loader,
            space=self.averager.space,
            adapter=self.adapter,
            bn="keep",
            progress=Progress(total=samples) if progress else False,
            return_probs=return_probs,
        )
