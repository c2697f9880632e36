"""Consistency-regularised semi-supervised training as step functions of :class:`valleys.training.trainer.Trainer`:
the Pi model (Laine & Aila 2017, "Temporal Ensembling for Semi-Supervised Learning", ICLR) and the mean
teacher (Tarvainen & Valpola 2017, "Mean teachers are better role models", NeurIPS), on top of which
Athiwaratkun et al. (2019, "There Are Many Consistent Explanations of Unlabeled Data: Why You Should Average",
ICLR) average with SWA and fast-SWA.

The loss of a batch with labelled part ``L`` (targets ``>= 0``; unlabelled examples carry
:data:`valleys.training.semisup_data.NO_LABEL`) is

    loss = (1/B) sum_{i in L} CE(f_w(v1(x_i)), y_i) + lambda(t) * mean_i l_cons(f_w(v1(x_i)), f_T(v2(x_i)))

over every example ``i`` of the batch of ``B`` examples (the supervised sum divided by the whole batch, as the
authors' code does: ``CrossEntropyLoss(size_average=False) / minibatch_size``; ``ce_normalisation="labelled"``
averages over the labelled examples instead, ``B / |L|`` times larger), with ``v1``, ``v2`` two stochastic
views (augmentations, and the network's own Dropout) and the target network ``f_T`` detached: the student
itself for the Pi model, its exponential moving average for the mean teacher (:class:`MeanTeacher`).
``l_cons`` is the squared error between the two softmax outputs averaged over the C classes,
``(1/C) sum_c (p_c - q_c)^2`` (the mean-teacher code's ``softmax_mse_loss``; summing over classes instead
multiplies lambda by C), or ``KL(q || p)`` with ``loss="kl"``. The weight ramps up over the first ``r`` epochs
(:func:`ramp_up`): ``lambda(t) = lambda_max exp(-5 (1 - min(t, r) / r)^2)`` at the epoch index ``t`` (0, 1, 2,
...: the authors' code ramps by the integer epoch; ``ramp_epoch="fractional"`` uses ``step / steps_per_epoch``).

With ``logit_distance = w`` (the mean-teacher code's ``--logit-distance-cost``, 0.01 in the fast-SWA runs;
off by default) the student has two heads and returns ``(z1, z2)`` in training mode (e.g.
``build_model(..., heads=2)``): the cross-entropy reads ``z1``, the consistency term compares ``z2`` with the
target's first head, and ``w (1/B) sum_i (1/C) sum_c (z1_ic - z2_ic)^2`` (the code's ``symmetric_mse_loss``
divided by the batch) ties the heads together; evaluation reads the first head.

Use in the trainer::

    teacher = MeanTeacher(model, decay=0.99, eval_loaders={"test": test_loader})
    step = ConsistencyStep("mean-teacher", augment=SignalAugment(), weight=100.0, rampup=5, teacher=teacher)
    Trainer(model, opt, loader, 60, step_fn=step, callbacks=[teacher]).fit()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batches import to_device
from ..core.distributed import rank, world_size
from ..errors import BatchFormatError, InputError
from ..methods.averaging import EMA
from .trainer import Callback, StepResult, Trainer

__all__ = [
    "CONSISTENCY",
    "CONSISTENCY_LOSSES",
    "CE_NORMALISATIONS",
    "RAMP_EPOCHS",
    "ramp_up",
    "consistency_loss",
    "select_examples",
    "ConsistencyStep",
    "MeanTeacher",
]

#: The consistency terms: none (supervised on the labelled examples only), Pi model, mean teacher.
CONSISTENCY = ("none", "pi", "mean-teacher")
#: The consistency losses between the student's and the target's softmax outputs.
CONSISTENCY_LOSSES = ("mse", "kl")
#: How the supervised cross-entropy is normalised: by the whole batch (the authors' code) or the labelled part.
CE_NORMALISATIONS = ("batch", "labelled")
#: The epoch the consistency ramp-up reads: the epoch index (the authors' code) or the fractional epoch.
RAMP_EPOCHS = ("integer", "fractional")


def ramp_up(epoch: float, length: float) -> float:
    """The sigmoid-shaped ramp of Laine & Aila (2017): ``exp(-5 (1 - min(t, r) / r)^2)`` at epoch ``t`` with
    ramp-up length ``r`` epochs; 1 for ``r = 0``. ``ramp_up(0, 5) = exp(-5)``, ``ramp_up(5, 5) = 1``."""
    if length < 0:
        raise InputError(f"the ramp-up length must be >= 0 epochs, got {length}")
    if length == 0:
        return 1.0
    t = min(max(float(epoch), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(student: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Consistency between the student's logits and the (detached) target's logits, averaged over the batch.

    ``mse``: ``mean_i (1/C) sum_c (softmax(s_i)_c - softmax(t_i)_c)^2``; ``kl``:
    ``mean_i sum_c q_ic (log q_ic - log p_ic)`` with ``q = softmax(t)``, ``p = softmax(s)``. Gradients flow
    into ``student`` only.
    """
    if kind not in CONSISTENCY_LOSSES:
        raise InputError(f"unknown consistency loss {kind!r}; choose one of {', '.join(CONSISTENCY_LOSSES)}")
    if student.shape != target.shape or student.dim() != 2:
        raise InputError(
            f"student and target logits must both be (N, C), got {tuple(student.shape)} and {tuple(target.shape)}"
        )
    target = target.detach()
    if kind == "mse":
        return ((student.softmax(1) - target.softmax(1)) ** 2).mean()
    q_log = target.log_softmax(1)
    return (q_log.exp() * (q_log - student.log_softmax(1))).sum(1).mean()


def select_examples(batch: Any, mask: Tensor) -> Any:
    """The examples of ``batch`` where ``mask`` is true: every tensor whose first dimension is the batch size
    is indexed (tuples, lists and dicts are walked); other entries are kept as they are."""
    n = mask.shape[0]
    if isinstance(batch, Tensor):
        return batch[mask.to(batch.device)] if batch.dim() > 0 and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        return {k: select_examples(v, mask) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(select_examples(v, mask) for v in batch)
    return batch


class MeanTeacher(Callback):
    """The mean teacher (Tarvainen & Valpola 2017): a copy of the student whose parameters are the exponential
    moving average of the student's, updated after every optimizer step with decay
    ``min(1 - 1 / (step + 1), decay)`` (:class:`valleys.methods.averaging.EMA` with ``warmup=True``; the teacher
    starts as the student). Its BatchNorm statistics come from its own forward passes in train mode, as in the
    reference code. With ``eval_loaders`` the teacher is evaluated beside the student (``teacher_test_accuracy``,
    ...).

    Args:
        model: the student (copied once; the copy is the teacher, ``self.model``).
        decay: alpha in [0, 1) (0.97-0.999 in the papers).
        eval_loaders: ``{"test": loader}`` evaluated at the trainer's evaluation epochs.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.99,
        *,
        eval_loaders: Mapping[str, Iterable] | None = None,
        prefix: str = "teacher",
    ) -> None:
        if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise InputError(f"the EMA decay must be in [0, 1), got {decay!r}")
        self.ema = EMA(model, decay, warmup=True)
        self.model = copy.deepcopy(model)  # not frozen: it shares the student's weight space; run under no_grad
        self.eval_loaders = dict(eval_loaders or {})
        self.prefix = prefix

    @property
    def decay(self) -> float:
        return self.ema.decay

    def _sync(self) -> None:
        self.ema.write(self.model)

    def on_train_start(self, trainer: Trainer) -> None:
        self.model.to(trainer.device)
        if self.ema.n == 0:
            self.ema.collect(trainer.model)
        self._sync()

    def on_step_end(self, trainer: Trainer) -> None:
        self.ema.collect(trainer.model)
        self._sync()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.eval_loaders and trainer.should_evaluate(self.eval_loaders):
            for name, loader in self.eval_loaders.items():
                logs.update(trainer.log_entries(f"{self.prefix}_{name}", trainer.evaluate_on(loader, model=self.model)))

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "buffers": {k: b for k, b in self.model.named_buffers()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        buffers = dict(self.model.named_buffers())
        for k, b in state["buffers"].items():
            buffers[k].copy_(b)
        self._sync()


def _tuple_views(augment: Callable[[Tensor], Tensor]) -> Callable[[Any], Any]:
    from .augment import augment_input

    return lambda batch: augment_input(batch, augment)


class ConsistencyStep:
    """The step function of consistency training (see the module docstring for the loss).

    Args:
        consistency: ``"none"`` (cross-entropy on the labelled examples only: the supervised baseline),
            ``"pi"`` (the target is the student on a second view, detached) or ``"mean-teacher"``.
        augment: ``callable(x) -> x`` applied to the input of ``(input, label)`` batches, once per view
            (e.g. :class:`valleys.training.augment.SignalAugment`); None: no augmentation (Dropout alone).
        views: ``callable(batch) -> batch`` drawing one view of any batch (dicts, several inputs), instead of
            ``augment``.
        weight: lambda_max >= 0 (the papers: 100 with the MSE loss).
        rampup: ramp-up length r in epochs (>= 0).
        loss: ``"mse"`` or ``"kl"``.
        teacher: the :class:`MeanTeacher` callback (required for ``"mean-teacher"``; add it to the trainer's
            callbacks too).
        ce_normalisation: ``"batch"`` (the supervised cross-entropy summed over the labelled examples and
            divided by the whole batch, as in the authors' code) or ``"labelled"`` (its mean over the labelled
            examples).
        ramp_epoch: ``"integer"`` (lambda at the epoch index, as in the authors' code) or ``"fractional"``.
        logit_distance: ``None`` (one head) or the weight ``w >= 0`` of the logit distance between the two heads
            of a student that returns ``(class logits, consistency logits)`` in training mode (see above).
    """

    def __init__(
        self,
        consistency: str = "pi",
        *,
        augment: Callable[[Tensor], Tensor] | None = None,
        views: Callable[[Any], Any] | None = None,
        weight: float = 100.0,
        rampup: float = 5.0,
        loss: str = "mse",
        teacher: MeanTeacher | None = None,
        ce_normalisation: str = "batch",
        ramp_epoch: str = "integer",
        logit_distance: float | None = None,
    ) -> None:
        if consistency not in CONSISTENCY:
            raise InputError(f"unknown consistency {consistency!r}; choose one of {', '.join(CONSISTENCY)}")
        if loss not in CONSISTENCY_LOSSES:
            raise InputError(f"unknown consistency loss {loss!r}; choose one of {', '.join(CONSISTENCY_LOSSES)}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise InputError(f"the consistency weight must be finite and >= 0, got {weight!r}")
        if not (isinstance(rampup, (int, float)) and math.isfinite(rampup) and rampup >= 0):
            raise InputError(f"the ramp-up must be finite and >= 0 epochs, got {rampup!r}")
        if ce_normalisation not in CE_NORMALISATIONS:
            raise InputError(
                f"unknown ce_normalisation {ce_normalisation!r}; choose one of {', '.join(CE_NORMALISATIONS)}"
            )
        if ramp_epoch not in RAMP_EPOCHS:
            raise InputError(f"unknown ramp_epoch {ramp_epoch!r}; choose one of {', '.join(RAMP_EPOCHS)}")
        if consistency == "mean-teacher" and teacher is None:
            raise InputError(
                "consistency='mean-teacher' needs teacher=MeanTeacher(model, decay) (also passed to "
                "the trainer's callbacks)"
            )
        if augment is not None and views is not None:
            raise InputError("pass augment= (for (input, label) batches) or views= (any batch), not both")
        self.consistency, self.loss, self.teacher = consistency, loss, teacher
        self.weight, self.rampup = float(weight), float(rampup)
        if logit_distance is not None and not (
            isinstance(logit_distance, (int, float)) and math.isfinite(logit_distance) and logit_distance >= 0
        ):
            raise InputError(f"logit_distance must be None or finite and >= 0, got {logit_distance!r}")
        self.ce_normalisation, self.ramp_epoch = ce_normalisation, ramp_epoch
        self.logit_distance = None if logit_distance is None else float(logit_distance)
        self.view: Callable[[Any], Any] = views or (_tuple_views(augment) if augment is not None else (lambda b: b))

    def _views(self, trainer: Trainer, batch: Any, k: int) -> Any:
        """View ``k`` (0 or 1) of ``batch``. Under torch.distributed every rank draws from its own stream
        (seeded by the trainer's seed, the step, the view and the rank), so the ranks' slices are not
        augmented with the same random numbers; in one process the global generator, as always."""
        if world_size() == 1:
            return self.view(batch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((int(trainer.seed) * 1_000_003 + trainer.step * 4 + 2 * k + 1) * 65_537 + rank())
            return self.view(batch)

    def _class_loss(self, out: Tensor, y: Tensor, batch_size: int) -> Tensor:
        """The supervised term on the labelled outputs ``out``: summed and divided by the whole batch
        (``"batch"``) or averaged over the labelled examples (``"labelled"``); 0 (with a graph) for none."""
        if not out.shape[0]:
            return out.sum() * 0
        if self.ce_normalisation == "labelled":
            return F.cross_entropy(out, y)
        return F.cross_entropy(out, y, reduction="sum") / batch_size

    def _heads(self, trainer: Trainer, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        """The (class, consistency) logits of ``model`` on ``batch``: both the adapter's prediction with one head;
        with ``logit_distance`` the two parts of the ``(z1, z2)`` the model returns."""
        adapter = trainer.adapter
        if self.logit_distance is None:
            out = adapter.forward(model, batch, trainer.device)
            return out, out
        raw = adapter.call_inputs(model, batch, trainer.device)
        if not (isinstance(raw, (tuple, list)) and len(raw) == 2 and all(isinstance(z, Tensor) for z in raw)):
            raise BatchFormatError(
                f"logit_distance needs a model with two heads that returns (class logits, consistency logits) in "
                f"training mode, got a {type(raw).__name__}; build it with heads=2 (valleys.zoo.models) or drop "
                "logit_distance"
            )
        return raw[0], raw[1]

    def _logit_distance(self, z1: Tensor, z2: Tensor, batch_size: int) -> Tensor:
        """``w (1/B) sum_i (1/C) sum_c (z1_ic - z2_ic)^2``: the mean-teacher code's ``symmetric_mse_loss``
        (gradients into both heads) times the cost, divided by the whole batch."""
        assert self.logit_distance is not None
        return self.logit_distance * ((z1 - z2) ** 2).sum() / (z1.shape[1] * batch_size)

    def weight_at(self, epoch: float) -> float:
        """``lambda(t) = weight * ramp_up(t, rampup)``."""
        return self.weight * ramp_up(epoch, self.rampup)

    def __call__(self, trainer: Trainer, batch: Any) -> StepResult:
        adapter, device, model = trainer.adapter, trainer.device, trainer.model
        student = trainer.forward_model  # the DDP wrapper under torch.distributed
        y = to_device(adapter.targets(batch), device)
        if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
            raise BatchFormatError(
                "semi-supervised batches need one integer label per example (NO_LABEL = -1 for the "
                "unlabelled ones); see valleys.training.semisup_data.semisup_loader"
            )
        labelled = y >= 0
        if self.consistency == "none":
            out, out2 = self._heads(trainer, student, self._views(trainer, select_examples(batch, labelled), 0))
            ce = self._class_loss(out, y[labelled], len(y))
            logs: dict[str, Any] = {"class_loss": ce.detach()}
            if self.logit_distance is not None:
                res = self._logit_distance(out, out2, len(y))
                ce, logs["logit_distance_loss"] = ce + res, res.detach()
            return StepResult(ce, logs, prediction=out, targets=y[labelled])
        out, cons_out = self._heads(trainer, student, self._views(trainer, batch, 0))
        target_model = model
        if self.consistency == "mean-teacher":
            assert self.teacher is not None  # __init__ refuses mean-teacher without one
            target_model = self.teacher.model
        with torch.no_grad():
            target, _ = self._heads(trainer, target_model, self._views(trainer, batch, 1))
        ce = self._class_loss(out[labelled], y[labelled], len(y))
        cons = consistency_loss(cons_out, target, self.loss)
        t = trainer.epoch if self.ramp_epoch == "integer" else trainer.step / trainer.steps_per_epoch
        lam = self.weight_at(t)
        logs = {"class_loss": ce.detach(), "consistency_loss": cons.detach(), "consistency_weight": lam}
        loss = ce + lam * cons
        if self.logit_distance is not None:
            res = self._logit_distance(out, cons_out, len(y))
            loss, logs["logit_distance_loss"] = loss + res, res.detach()
        return StepResult(loss, logs, prediction=out[labelled], targets=y[labelled])
