"""One engine for "this model at many weight vectors over one or more loaders".

BMA (:func:`valleys.evaluation.predict.bma`), loss surfaces (:func:`valleys.evaluation.grid.evaluate_points`)
and paths (:func:`valleys.geometry.paths.evaluate_path`) are reductions on top of :func:`evaluate_many`:

* every prediction goes through a :class:`valleys.core.adapter.ModelAdapter` (batch -> model call ->
  prediction, targets, loss), so custom batch formats, tuple/dict outputs and regression heads work everywhere;
* one BatchNorm policy, :class:`BNPolicy` (``bn=``: a policy, a loader as shorthand for
  ``BNPolicy("recompute", loader)``, or ``"keep"``): ``"recompute"`` (statistics recomputed for every weight vector on a
  BN loader, Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima", Alg. 1) or ``"keep"`` (the
  model's current statistics, on purpose). The label reported is ``"recompute"``, ``"keep"`` or
  ``"none (no BatchNorm)"``. A flat weight vector on a BatchNorm model with neither a BN loader nor an
  explicit ``"keep"`` is refused before any work. State dicts (FGE snapshots, ensemble members) carry their
  own buffers and are evaluated as they are;
* weight vectors that need no recompute are evaluated ``chunk`` at a time with ``torch.func.vmap`` over the
  stacked vectors or one at a time (:class:`VmapPolicy`; ``batched=True``/``False``/``"auto"`` is shorthand
  for ``VmapPolicy(mode)``): ``"auto"`` is whichever is faster on the first
  input batch (best of three interleaved timings), decided once per model, weight space, chunk size and input
  shape/dtype and cached (weakly keyed on the model). A model without vmap batching rules (``nn.GRU``,
  ``nn.LSTM``, ...) falls back to the loop with one warning.

Everything runs on the device of the model's parameters: input batches (and BN batches) are moved there,
so a model on a GPU is evaluated on the GPU from loaders that yield CPU tensors. The user's model is restored
bit for bit after every vector: parameters, buffers, train/eval flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.batches import BatchFormatError, iter_tensors, map_tensors, to_device
from ..core.batchnorm import EmptyLoaderError, has_batchnorm, recompute_bn
from ..core.checkpoint import json_safe
from ..core.distributed import all_reduce_sum, rank, world_size
from ..core.weights import WeightSpace, preserved_modes, unwrap
from ..errors import EvaluationError, InputError, InputTypeError, MissingBNLoaderError, NoWeightsError
from .folding import AffinePoints, FirstLayer

__all__ = [
    "evaluate_many",
    "BNPolicy",
    "VmapPolicy",
    "Progress",
    "BNArg",
    "as_bn_policy",
    "ManyResult",
    "Reduction",
    "LossError",
    "Metrics",
    "BMASum",
    "Predictions",
    "Sample",
    "vmap_is_faster",
    "holding",
    "softmax_probs",
    "gaussian_moments",
    "clear_vmap_cache",
    "BN_POLICIES",
    "to_json",
]

Sample = Tensor | Mapping[str, Tensor]
BN_POLICIES = ("recompute", "keep")


# ---------------------------------------------------------------------------------------------- transforms
def softmax_probs(output: Tensor) -> Tensor:
    """Classification: the predictive is ``softmax(logits)`` (float64); BMA averages it."""
    return torch.softmax(output.double(), dim=-1)


def gaussian_moments(output: Tensor) -> Tensor:
    """Gaussian regression heads output ``(mean, variance)`` per example as an (N, 2) tensor; BMA averages the
    first two moments ``(mu, var + mu^2)`` so that the mixture's variance is ``E[var + mu^2] - E[mu]^2``."""
    out = output.double()
    if out.dim() != 2 or out.shape[1] != 2:
        raise InputError(f"a Gaussian head must output (N, 2) = (mean, variance), got {tuple(out.shape)}")
    mu, var = out[:, 0], out[:, 1]
    return torch.stack([mu, var + mu * mu], dim=1)


def to_json(obj: Any) -> Any:
    """Strict-JSON form (NaN/inf -> ``None``, tensors -> lists, typed results by their ``to_json``); the one
    sanitiser of :func:`valleys.core.checkpoint.json_safe`."""
    return json_safe(obj)


# ---------------------------------------------------------------------------------------------- BN policy
@dataclass(frozen=True)
class BNPolicy:
    """What to do with BatchNorm statistics at each weight vector.

    Args:
        mode: ``"recompute"`` (exact statistics on ``loader`` per vector) or ``"keep"`` (the model's current
            statistics, on purpose).
        loader: the BN loader (usually the training loader); needed by ``"recompute"`` on a BatchNorm model.
        num_batches: recompute on the first ``num_batches`` batches only.
    """

    mode: str = "recompute"
    loader: Iterable | None = None
    num_batches: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in BN_POLICIES:
            raise InputError(f"unknown BatchNorm policy {self.mode!r}; choose one of {', '.join(BN_POLICIES)}")
        if self.num_batches is not None and self.num_batches < 1:
            raise InputError(f"num_batches must be at least 1, got {self.num_batches}")

    def label(self, model: nn.Module) -> str:
        """``"recompute"``, ``"keep"`` or ``"none (no BatchNorm)"``."""
        return self.mode if has_batchnorm(model) else "none (no BatchNorm)"


#: what the ``bn=`` argument of the evaluation functions accepts: a :class:`BNPolicy`, a loader (shorthand for
#: ``BNPolicy("recompute", loader)``), ``"recompute"``/``"keep"``, or ``None`` (recompute where needed; an
#: error for flat vectors on a BatchNorm model, which need a loader)
BNArg = BNPolicy | Iterable | str | None


def as_bn_policy(bn: BNArg, default_loader: Iterable | None = None) -> BNPolicy:
    """The :class:`BNPolicy` that ``bn`` stands for (see :data:`BNArg`); a ``"recompute"`` policy without a
    loader gets ``default_loader`` (e.g. the training loader of a path)."""
    if bn is None:
        policy = BNPolicy()
    elif isinstance(bn, str):
        policy = BNPolicy(bn)
    elif isinstance(bn, BNPolicy):
        policy = bn
    elif isinstance(bn, Iterable) and not isinstance(bn, (Tensor, Mapping)):
        policy = BNPolicy("recompute", bn)
    else:
        raise InputTypeError(
            f"bn must be a BNPolicy, a loader (recompute on it), 'recompute' or 'keep', got {type(bn).__name__}"
        )
    if policy.mode == "recompute" and policy.loader is None and default_loader is not None:
        policy = BNPolicy("recompute", default_loader, policy.num_batches)
    return policy


@dataclass(frozen=True)
class VmapPolicy:
    """How weight vectors that need no BatchNorm recompute are evaluated.

    Args:
        mode: ``True``: ``chunk`` vectors at a time through ``torch.func.vmap`` over the stacked vectors;
            ``False``: one at a time; ``"auto"``: whichever is faster on the first input batch (best of three
            timings each; cached per model and input shape).
        chunk: how many vectors one vmapped call evaluates (memory grows with it); ``"auto"``:
            :data:`VMAP_CHUNK` (8), or more for a small model evaluated at many points (at least 100): as many
            as keep one vmapped call's stacked weights and layer outputs on the first batch within
            :data:`VMAP_CHUNK_BYTES`, at most :data:`VMAP_MAX_CHUNK`.
        fold: for points on an affine subspace (:class:`valleys.evaluation.folding.AffinePoints`), fold the
            model's first affine layer (its outputs on the origin and directions computed once per batch and
            combined per point): ``"auto"``: where the first-batch timing says it pays (for 100 points or more;
            below that when the layer's fan-in is at least ``16 (r + 1)`` and there are more than ``r + 1``
            points);
            ``True``: whenever the model has such a layer; ``False``: never.
        channels_last: 4-D image inputs in channels-last memory format for the eval passes (oneDNN and cuDNN
            convolutions run faster on it; the same values): ``"auto"``: where a timed forward pass on the
            first batch says so (for evaluations of at least 40 points); ``True``: always; ``False``: never.
    """

    mode: bool | str = "auto"
    chunk: int | str = "auto"
    fold: bool | str = "auto"
    channels_last: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in (True, False, "auto"):
            raise InputError(f"batched must be True, False or 'auto', got {self.mode!r}")
        if self.fold not in (True, False, "auto"):
            raise InputError(f"fold must be True, False or 'auto', got {self.fold!r}")
        if self.channels_last not in (True, False, "auto"):
            raise InputError(f"channels_last must be True, False or 'auto', got {self.channels_last!r}")
        if self.chunk != "auto" and (isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1):
            raise InputError(f"chunk must be an integer of at least 1 or 'auto', got {self.chunk!r}")

    @classmethod
    def of(cls, batched: bool | str | VmapPolicy) -> VmapPolicy:
        """``batched`` as a policy: a :class:`VmapPolicy` as it is, ``True``/``False``/``"auto"`` with the
        chunk chosen by the engine."""
        return batched if isinstance(batched, VmapPolicy) else cls(batched)


@dataclass(frozen=True)
class Progress:
    """A progress bar over the weight vectors (or path points) evaluated.

    Args:
        desc: the bar's label (default: the function's, e.g. ``"BMA"``, ``"points"``, ``"path"``).
        total: how many points to expect, for a bar with an end (default: the length of the weights when it
            is known, e.g. not for a generator of samples).
    """

    desc: str | None = None
    total: int | None = None

    @classmethod
    def of(cls, progress: bool | Progress, desc: str | None = None) -> Progress | None:
        """``progress`` as a policy: ``False`` -> ``None`` (no bar), ``True`` -> ``Progress()``; ``desc`` is
        the label when the policy has none."""
        policy = progress if isinstance(progress, Progress) else cls() if progress else None
        if policy is not None and policy.desc is None and desc is not None:
            policy = cls(desc, policy.total)
        return policy

    def bar(self, desc: str, total: int | None) -> Any:
        """An open progress bar with this policy's label and total, else the given ones."""
        from ..core.optional import progress_bar

        return progress_bar(
            total=self.total if self.total is not None else total,
            unit="point",
            desc=self.desc or desc,
            leave=False,
            dynamic_ncols=True,
        )


# ---------------------------------------------------------------------------------------------- reductions
class Reduction:
    """Receives the predictions of every (weight vector, loader, batch) and turns them into a result.

    ``add`` is called in loop order; ``add_stacked`` gets the (c, N, ...) predictions of a vmap chunk (the
    default calls ``add`` for each row). ``end_pass`` is called after each (vector, loader) pass with its
    number of batches."""

    def begin(self, loaders: Sequence[str]) -> None:
        self.loaders = list(loaders)

    def add(self, point: int, loader: str, batch: int, prediction: Tensor, targets: Any) -> None:
        raise NotImplementedError

    def add_stacked(self, points: Sequence[int], loader: str, batch: int, predictions: Tensor, targets: Any) -> None:
        for j, p in zip(points, predictions, strict=True):
            self.add(j, loader, batch, p, targets)

    def end_pass(self, point: int, loader: str, batches: int) -> None:
        pass

    def result(self, num_points: int) -> Any:
        raise NotImplementedError

    def all_reduce_points(self, num_points: int) -> None:
        """Combine the ranks' shares of the points (sharded evaluation, ``evaluate_many(shard=True)``): every rank
        ends holding what one process evaluating every point would hold. Reductions that cannot say so raise."""
        raise NotImplementedError(f"{type(self).__name__} cannot be sharded over ranks; evaluate with shard=False")


class LossError(Reduction):
    """Per point and loader: mean loss ``(1/N) sum_i loss(f(x_i; w), y_i)`` with the adapter's loss, and the
    classification error ``(1/N) sum_i 1[argmax f(x_i; w) != y_i]`` (NaN for a Gaussian or custom loss, where
    it is not defined). Cross-entropy is summed in float64 per batch; a non-finite output gives a NaN loss."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.sums: dict[str, dict[int, list[float]]] = {}

    def begin(self, loaders: Sequence[str]) -> None:
        super().begin(loaders)
        self.sums = {name: {} for name in loaders}

    def add(self, point: int, loader: str, batch: int, prediction: Tensor, targets: Any) -> None:
        s = self.sums[loader].setdefault(point, [0.0, 0.0, 0])
        y = targets.to(prediction.device) if isinstance(targets, Tensor) else targets
        out = prediction.double()
        n = len(out)
        if not bool(torch.isfinite(out).all()):
            loss, err = math.nan, math.nan
        elif self.adapter.loss == "cross_entropy":
            loss = float(nn.functional.cross_entropy(out, y, reduction="sum"))
            err = float((out.argmax(-1) != y).sum())
        else:
            loss = float(self.adapter.compute_loss(out, y)) * n
            err = math.nan
        s[0] += loss
        s[1] += err
        s[2] += n

    def add_stacked(self, points: Sequence[int], loader: str, batch: int, predictions: Tensor, targets: Any) -> None:
        """The (c, N, C) logits of c points on one batch of class indices in one pass: ``-log softmax`` in the
        logits' precision (at least float32), summed in float64 (:meth:`add` per point works in float64
        throughout; the two agree to about 1e-7 relative); other shapes and losses point by point."""
        y = targets.to(predictions.device) if isinstance(targets, Tensor) else targets
        if self.adapter.loss != "cross_entropy" and isinstance(y, Tensor):
            self._add_stacked_loss(points, loader, predictions, y)
            return
        if predictions.dim() != 3 or not isinstance(y, Tensor) or y.dim() != 1:
            super().add_stacked(points, loader, batch, predictions, targets)
            return
        c, n, k = predictions.shape
        finite = torch.isfinite(predictions.reshape(c, -1)).all(1).tolist()  # float64 changes neither test
        errors = (predictions.argmax(-1) != y).sum(1).tolist()
        work = predictions if predictions.dtype in (torch.float32, torch.float64) else predictions.float()
        picked = torch.log_softmax(work, -1).gather(-1, y.view(1, n, 1).expand(c, n, 1))
        losses = -picked.view(c, n).double().sum(1)  # per-example terms in the model's precision, summed in float64
        for j, loss, err, ok in zip(points, losses.tolist(), errors, finite, strict=True):
            row = self.sums[loader].setdefault(j, [0.0, 0.0, 0])
            row[0] += loss if ok else math.nan
            row[1] += float(err) if ok else math.nan
            row[2] += n

    def _add_stacked_loss(self, points: Sequence[int], loader: str, predictions: Tensor, y: Tensor) -> None:
        """Any other loss (Gaussian NLL, a callable) on c points at once, ``torch.func.vmap`` over the points
        in float64; a loss vmap cannot batch goes point by point."""
        out = predictions.double()
        c, n = out.shape[0], out.shape[1]
        try:
            values = torch.func.vmap(lambda o: self.adapter.compute_loss(o, y))(out).reshape(c).tolist()
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            for j, p in zip(points, predictions, strict=True):
                self.add(j, loader, 0, p, y)
            return
        finite = torch.isfinite(out.reshape(c, -1)).all(1).tolist()
        for j, value, ok in zip(points, values, finite, strict=True):
            row = self.sums[loader].setdefault(j, [0.0, 0.0, 0])
            row[0] += value * n if ok else math.nan
            row[1] += math.nan
            row[2] += n

    def all_reduce_points(self, num_points: int) -> None:
        """Each rank's points filled in, zeros elsewhere, summed over ranks (one collective)."""
        t = torch.zeros(len(self.loaders), num_points, 3, dtype=torch.float64, device="cpu")
        for a, name in enumerate(self.loaders):
            for i, row in self.sums[name].items():
                t[a, i] = torch.tensor(row, dtype=torch.float64, device="cpu")
        all_reduce_sum(t)
        self.sums = {
            name: {i: [float(t[a, i, 0]), float(t[a, i, 1]), int(t[a, i, 2])] for i in range(num_points)}
            for a, name in enumerate(self.loaders)
        }

    def result(self, num_points: int) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for name in self.loaders:
            rows = [self.sums[name].get(i, [0.0, 0.0, 0]) for i in range(num_points)]
            out[name] = {
                "loss": [loss / n if n else math.nan for loss, _, n in rows],
                "error": [e / n if n else math.nan for _, e, n in rows],
            }
        return out


class Metrics(Reduction):
    """Per point and loader, the full metrics of :class:`valleys.evaluation.metrics.ClassificationMetrics`
    (from ``softmax(f)`` in float64) or, for ``adapter.likelihood == "gaussian"``,
    :class:`valleys.evaluation.metrics.RegressionMetrics` (Gaussian NLL, RMSE, coverage) plus ``error = NaN``.

    ``all_reduce=True`` (under ``torch.distributed``, each rank evaluating its share of the data) sums the
    metric state over the ranks of ``group`` before computing, so every rank gets the metrics of all
    examples; every rank must then take part, also one that saw no batch."""

    def __init__(self, adapter: ModelAdapter, bins: int = 15, *, all_reduce: bool = False, group: Any = None) -> None:
        self.adapter = adapter
        self.bins = bins
        self.all_reduce = all_reduce
        self.group = group
        self.acc: dict[tuple[int, str], Any] = {}

    def _new(self) -> Any:
        from .metrics import ClassificationMetrics, RegressionMetrics

        return RegressionMetrics() if self.adapter.likelihood == "gaussian" else ClassificationMetrics(self.bins)

    def add(self, point: int, loader: str, batch: int, prediction: Tensor, targets: Any) -> None:
        key = (point, loader)
        acc = self.acc.get(key)
        if acc is None:
            acc = self.acc[key] = self._new()
        if self.adapter.likelihood == "gaussian":
            m = gaussian_moments(prediction)
            acc.update(m[:, 0], m[:, 1] - m[:, 0] ** 2, targets)
        else:
            acc.update(softmax_probs(prediction), targets)

    def result(self, num_points: int) -> list[dict[str, dict[str, Any]]]:
        out = []
        for i in range(num_points):
            row = {}
            for name in self.loaders:
                acc = self.acc.get((i, name))
                if acc is None:
                    acc = self._new()
                if self.all_reduce:
                    acc.all_reduce(self.group)
                if acc.n == 0:
                    raise EmptyLoaderError(
                        f"loader {name!r} yielded no examples" + (" on any rank" if self.all_reduce else "")
                    )
                res = acc.compute()
                if self.adapter.likelihood == "gaussian":
                    res["error"] = math.nan
                row[name] = res
            out.append(row)
        return out


class BMASum(Reduction):
    """The Bayesian model average ``p(y | x) = (1/S) sum_s T(f(x; w_s))`` with ``T = softmax`` in float64
    (classification) or ``T = (mu, var + mu^2)`` (Gaussian moment matching), streamed: one running sum per
    example (Wilson & Izmailov 2020, "Bayesian Deep Learning and a Probabilistic Perspective of
    Generalization"). One loader; it must yield the same batches on every pass."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.transform = gaussian_moments if adapter.likelihood == "gaussian" else softmax_probs
        self.sums: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.passes = 0

    def _add(self, b: int, value: Tensor, y: Any) -> None:
        if self.passes == 0:
            self.sums.append(value.cpu())
            self.targets.append(y.cpu() if isinstance(y, Tensor) else torch.as_tensor(y, device="cpu"))
        elif b >= len(self.sums) or self.sums[b].shape != value.shape:
            raise InputError("bma: the loader yielded different batches on two passes; use a loader without shuffling")
        else:
            self.sums[b] += value.cpu()

    def add(self, point: int, loader: str, batch: int, prediction: Tensor, targets: Any) -> None:
        self._add(batch, self.transform(prediction), targets)

    def add_stacked(self, points: Sequence[int], loader: str, batch: int, predictions: Tensor, targets: Any) -> None:
        self._add(batch, functools.reduce(torch.add, [self.transform(o) for o in predictions]), targets)

    def end_pass(self, point: int, loader: str, batches: int) -> None:
        if batches != len(self.sums):
            raise InputError("bma: the loader yielded a different number of batches on two passes")
        self.passes += 1

    def all_reduce_points(self, num_points: int) -> None:
        """The per-example sums over every rank's samples (one collective; every rank evaluated at least one)."""
        if not self.sums:
            raise EmptyLoaderError("bma: the evaluation loader yielded no batches")
        flat = all_reduce_sum(torch.cat([x.reshape(-1).double() for x in self.sums]))
        out, at = [], 0
        for x in self.sums:
            out.append(flat[at : at + x.numel()].view(x.shape).to(x.dtype))
            at += x.numel()
        self.sums = out

    def result(self, num_points: int) -> tuple[Tensor, Tensor]:
        if not self.sums:
            raise EmptyLoaderError("bma: the evaluation loader yielded no batches")
        return torch.cat(self.sums) / num_points, torch.cat(self.targets)


class Predictions(Reduction):
    """Per point and loader, the predictions ``f(x; w)`` (concatenated on the CPU) and the targets."""

    def __init__(self) -> None:
        self.preds: dict[tuple[int, str], list[Tensor]] = {}
        self.ys: dict[tuple[int, str], list[Any]] = {}

    def add(self, point: int, loader: str, batch: int, prediction: Tensor, targets: Any) -> None:
        self.preds.setdefault((point, loader), []).append(prediction.detach().cpu())
        self.ys.setdefault((point, loader), []).append(targets)

    def result(self, num_points: int) -> dict[str, list[Tensor]]:
        return {
            name: [
                torch.cat(self.preds[(i, name)]) if (i, name) in self.preds else torch.empty(0, device="cpu")
                for i in range(num_points)
            ]
            for name in self.loaders
        }


@dataclass
class ManyResult:
    """What :func:`evaluate_many` returns: the reduction's ``value``, the number of weight vectors, the
    BatchNorm label (``"recompute"``, ``"keep"``, ``"none (no BatchNorm)"``) and whether vmap was used."""

    value: Any
    num_points: int
    bn: str
    batched: bool
    extra: dict[str, Any] = field(default_factory=dict)
    folded: bool = False

    def to_json(self) -> dict[str, Any]:
        """Strict JSON (NaN -> null, tensors -> lists)."""
        return json_safe(
            {
                "value": self.value,
                "num_points": self.num_points,
                "bn": self.bn,
                "batched": self.batched,
                "folded": self.folded,
                **self.extra,
            }
        )


# ---------------------------------------------------------------------------------------------- inputs
def _is_image(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_floating_point()


def _to_channels_last(obj: Any) -> Any:
    """4-D floating tensors (images) in ``channels_last`` memory format; everything else as it is."""
    return map_tensors(obj, lambda t: t.contiguous(memory_format=torch.channels_last) if _is_image(t) else t)


@contextlib.contextmanager
def channels_last_weights(model: nn.Module) -> Iterator[None]:
    """Inside the block the weights of the model's 2-D convolutions are held in channels-last memory format
    (a copy each: the same values), so that oneDNN and cuDNN run the convolutions, and the layers after them,
    in that format; on exit every parameter gets its own storage back, untouched (whatever the block wrote
    went to the copies), so views into a user's flat buffer stay views."""
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
                saved.append((m.weight, m.weight.data))
                m.weight.data = torch.empty_like(m.weight.data, memory_format=torch.channels_last).copy_(m.weight.data)
        yield
    finally:
        for p, data in saved:
            p.data = data


@dataclass(frozen=True)
class Placement:
    """Where and how an eval pass's input batches are placed: moved to ``device``, and with
    ``channels_last`` their 4-D floating tensors (images) put in channels-last memory format and the model's
    2-D convolution weights held in it (:func:`channels_last_weights`), which oneDNN and cuDNN convolutions
    run faster on (the same values; the engine times it on the first batch)."""

    device: Any
    channels_last: bool = False

    def inputs(self, adapter: ModelAdapter, batch: Any) -> tuple[tuple, dict]:
        """The model's ``(args, kwargs)`` for ``batch``, placed."""
        args, kwargs = adapter.inputs(batch)
        args, kwargs = to_device(args, self.device), to_device(kwargs, self.device)
        if self.channels_last:
            args, kwargs = _to_channels_last(args), _to_channels_last(kwargs)
        return args, kwargs


#: channels-last inputs are chosen only when a forward pass is this much faster with them
FORMAT_MARGIN = 1.1
#: the memory format is timed only for evaluations of at least this many points (or of an unknown number):
#: the timing costs about six forward passes of the first batch
FORMAT_MIN_POINTS = 40


def _decide_format(
    model: nn.Module, loader: Iterable, adapter: ModelAdapter, device: Any, *, probe: bool = True
) -> Placement:
    """Channels-last inputs or not: a forward pass on the first batch timed both ways (best of three,
    interleaved) for a model with 2-D convolutions fed 4-D inputs; cached per model and input shape. Without
    ``probe`` only a cached decision is used (else the inputs stay as they are)."""
    plain = Placement(device)
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return plain
    first = next(iter(loader), None)
    if first is None:
        return plain
    args, kwargs = plain.inputs(adapter, first)
    if not any(_is_image(t) for t in iter_tensors((args, kwargs))):
        return plain
    key = ("format", _signature((args, kwargs)))
    cache = _VMAP_CACHE.setdefault(model, {})
    if key in cache or not probe:
        return Placement(device, cache.get(key, False))
    cl_args, cl_kwargs = _to_channels_last(args), _to_channels_last(kwargs)
    times: list[list[float]] = [[], []]

    def channels_last() -> None:
        with channels_last_weights(model):
            model(*cl_args, **cl_kwargs)

    try:
        with preserved_modes(model, train=False), torch.no_grad():
            runs = (lambda: model(*args, **kwargs), channels_last)
            channels_last()  # warm-up: its first call sets up the convolutions for the new format
            for r in range(3):
                for i, fn in enumerate(runs):
                    times[i].append(_timed(fn))
                if r == 0 and max(times[0][0], times[1][0]) > 1.3 * min(times[0][0], times[1][0]):
                    break  # a clear winner after one round
        choice = min(times[1]) * FORMAT_MARGIN < min(times[0])
    except RuntimeError:  # e.g. a model that calls .view() on its input: keep the format it was given
        choice = False
    cache[key] = choice
    return Placement(device, choice)


# ---------------------------------------------------------------------------------------------- vmap or loop
def _vmap_outputs(
    model: nn.Module, space: WeightSpace, stacked: Tensor, adapter: ModelAdapter, args: tuple, kwargs: dict
) -> Tensor:
    """Predictions of the model at each row of ``stacked`` (c, P) on one input batch: (c, N, ...), via vmap."""
    return torch.func.vmap(lambda w: adapter.prediction(space.call_with(model, space.views(w), args, kwargs)))(stacked)


#: vmap is chosen only when it is this much faster than the loop: the loop is the safe default, and a busy
#: machine's noise must not tip a near tie (a CNN on the CPU, where vmap is often 2x slower) towards vmap
VMAP_MARGIN = 1.2

#: the vmap chunk when the engine does not grow it (few points, or a model too large to stack more)
VMAP_CHUNK = 8
#: ``chunk="auto"`` grows the chunk while one vmapped call's stacked weights and layer outputs stay below this
#: (measured on an 8-50-2 MLP over 834 rows: 45 vectors (16 MiB) 2.2x faster per vector than the loop, 123
#: (45 MiB) no faster: beyond the CPU's caches)
VMAP_CHUNK_BYTES = 16 << 20
#: and never beyond this many vectors in one call
VMAP_MAX_CHUNK = 128


def _pass_bytes(model: nn.Module, args: tuple, kwargs: dict) -> int:
    """Bytes of every tensor the model's submodules return in one forward pass of this batch: an upper bound
    on the activations one weight vector keeps alive in a vmapped call (forward hooks, no gradients)."""
    total = [0]

    def hook(_m: nn.Module, _inputs: Any, out: Any) -> None:
        total[0] += sum(t.numel() * t.element_size() for t in iter_tensors(out))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with preserved_modes(model, train=False), torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _resolve_chunk(
    vm: VmapPolicy,
    model: nn.Module,
    space: WeightSpace,
    loader: Iterable,
    adapter: ModelAdapter,
    place: Placement,
    points: int | None,
) -> int:
    """``vm.chunk`` as a number: as given, or for ``"auto"`` :data:`VMAP_CHUNK`, grown for a small model
    evaluated at :data:`PLAN_MIN_POINTS` or more points to as many vectors as keep (stacked weights + one
    pass's layer outputs on the first batch) x chunk within :data:`VMAP_CHUNK_BYTES` (at most
    :data:`VMAP_MAX_CHUNK` and the number of points). Cached per model, weight space and input shape."""
    if isinstance(vm.chunk, int):
        return vm.chunk
    if vm.mode is False or points is None or points < PLAN_MIN_POINTS:
        return VMAP_CHUNK
    batch = next(iter(loader), None)
    if batch is None:
        return VMAP_CHUNK
    args, kwargs = place.inputs(adapter, batch)
    key = ("chunk", tuple(space.names), _signature((args, kwargs)))
    cache = _VMAP_CACHE.setdefault(model, {})
    if key not in cache:
        ref = space.parameters(model)[0]
        per = space.size * ref.element_size() + _pass_bytes(model, args, kwargs)
        cache[key] = max(VMAP_CHUNK, min(VMAP_MAX_CHUNK, VMAP_CHUNK_BYTES // max(per, 1)))
    return min(cache[key], max(points, VMAP_CHUNK))


def vmap_is_faster(
    model: nn.Module,
    space: WeightSpace,
    stacked: Tensor,
    inputs: tuple[tuple, dict],
    fetch_s: float = 0.0,
    adapter: ModelAdapter | None = None,
    *,
    probe: int = 4,
) -> bool:
    """Time one input batch both ways, per weight vector: the loop over the first ``probe`` vectors, vmap over
    all of ``stacked`` (the chunk as it will be evaluated: a vmapped call's fixed cost spreads over the whole
    chunk). After a warm-up of each, interleaved timings compared by their minimum (robust to a busy
    machine's interruptions); a clear winner (1.5x) after the first round decides at once, otherwise three
    rounds are taken; vmap must be :data:`VMAP_MARGIN` (1.2x) faster to be chosen. The loop also fetches
    every batch once per vector, the vmap path once per chunk: ``fetch_s`` (the time to get one batch from
    the loader) is charged to the loop once per vector but the first. The probe costs about ten loop passes
    over one batch per model and input shape (its decision is cached by the engine). Raises what vmap raises
    for a model without batching rules (the caller falls back to the loop)."""
    adapter = as_adapter(adapter)
    args, kwargs = inputs
    vectors = stacked[: max(1, probe)]
    k, c = len(vectors), len(stacked)

    def looped():
        for w in vectors:
            with space.at(model, w):
                model(*args, **kwargs)

    fns = (looped, lambda: _vmap_outputs(model, space, stacked, adapter, args, kwargs))
    for fn in fns:
        fn()
    times: list[list[float]] = [[], []]
    extra = (c - 1) * fetch_s / c  # per vector, the loop's extra fetches over a chunk
    for r in range(3):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
        loop_s, vmap_s = min(times[0]) / k + extra, min(times[1]) / c
        if r == 0 and (vmap_s > 1.5 * loop_s or loop_s > 1.5 * vmap_s):
            break
    return min(times[1]) / c * VMAP_MARGIN < min(times[0]) / k + extra


_VMAP_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def clear_vmap_cache() -> None:
    """Forget every cached vmap-or-loop decision."""
    _VMAP_CACHE.clear()


def _signature(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return ("T", tuple(obj.shape), str(obj.dtype), str(obj.device))
    if isinstance(obj, Mapping):
        return tuple((k, _signature(v)) for k, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return tuple(_signature(v) for v in obj)
    return type(obj).__name__


def _decide_vmap(
    model: nn.Module,
    space: WeightSpace,
    stacked: Tensor,
    loader: Iterable,
    adapter: ModelAdapter,
    place: Placement,
    batched: bool | str,
) -> bool:
    """``batched=True``: vmap unless it fails on the first batch; ``"auto"``: the cached or probed choice.
    Either falls back to the loop with one warning when vmap cannot run the model."""
    t0 = time.perf_counter()
    first = next(iter(loader), None)
    fetch_s = time.perf_counter() - t0
    if first is None:
        return False
    args, kwargs = place.inputs(adapter, first)
    key = (tuple(space.names), len(stacked), str(stacked.dtype), _signature((args, kwargs)), batched)
    cache = _VMAP_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    try:
        with preserved_modes(model, train=False), torch.no_grad():
            if batched == "auto":
                choice = vmap_is_faster(model, space, stacked, (args, kwargs), fetch_s, adapter)
            else:
                _vmap_outputs(model, space, stacked, adapter, args, kwargs)
                choice = True
    except (RuntimeError, NotImplementedError, TypeError) as e:
        if isinstance(e, BatchFormatError):  # the batch or output does not fit the adapter: the user's to fix
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        warnings.warn(
            f"torch.func.vmap cannot evaluate {type(model).__name__} ({type(e).__name__}: "
            f"{first_line}); evaluating the weight vectors one at a time",
            RuntimeWarning,
            stacklevel=4,
        )
        choice = False
    cache[key] = choice
    return choice


@contextlib.contextmanager
def holding(model: nn.Module, sample: Sample, space: WeightSpace) -> Iterator[nn.Module]:
    """The model holds ``sample`` inside the block (a flat weight vector over ``space``, or a full state
    dict) and is restored bit for bit afterwards: parameters, buffers and train/eval flags."""
    if isinstance(sample, Tensor):
        with space.at(model, sample.to(space.parameters(model)[0].device)):
            yield model
        return
    from ..core.checkpoint import check_model_signature

    check_model_signature([[k, list(v.shape)] for k, v in sample.items()], model, "a state-dict sample")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with preserved_modes(model):
            model.load_state_dict(sample)
            yield model
    finally:
        model.load_state_dict(saved)


# ---------------------------------------------------------------------------------------------- the engine
def _iter_weights(weights: Iterable[Sample] | Tensor | None) -> Iterator[Sample | None]:
    if weights is None:
        return iter([None])
    if isinstance(weights, Tensor):
        if weights.dim() == 1:
            return iter([weights])
        if weights.dim() != 2:
            raise InputError(f"a stack of weight vectors must be (c, P), got shape {tuple(weights.shape)}")
        return iter(weights)
    if isinstance(weights, Mapping):
        return iter([weights])
    return (_checked_sample(i, w) for i, w in enumerate(weights))


def _checked_sample(i: int, w: Any) -> Sample:
    """``w`` if it is a weight vector (a tensor) or a state dict (a mapping); a clear error otherwise."""
    if not isinstance(w, (Tensor, Mapping)):
        raise InputTypeError(
            f"weight sample {i} is a {type(w).__name__}; each sample must be a flat weight vector (a tensor) or "
            "a state dict (a mapping name -> tensor)"
        )
    return w


def _vmap_group(
    model: nn.Module,
    space: WeightSpace,
    stacked: Tensor,
    idx: list[int],
    loaders: Mapping[str, Iterable],
    reduce: Reduction,
    adapter: ModelAdapter,
    place: Placement,
) -> bool:
    """The (c, P) ``stacked`` vectors over every loader with one vmapped call per batch. Returns ``False``
    (after one warning) when vmap fails before any prediction was fed to ``reduce`` (the caller then uses
    the loop); a failure after that raises a ``RuntimeError`` naming ``batched=False``."""
    fed = False
    with preserved_modes(model, train=False), torch.no_grad():
        for name, loader in loaders.items():
            b = -1
            for b, batch in enumerate(loader):
                args, kwargs = place.inputs(adapter, batch)
                try:
                    outs = _vmap_outputs(model, space, stacked, adapter, args, kwargs)
                except (RuntimeError, NotImplementedError) as e:
                    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    if fed:
                        raise EvaluationError(
                            f"torch.func.vmap failed on batch {b} of loader {name!r} after earlier "
                            f"batches worked ({type(e).__name__}: {first_line}); evaluate with "
                            "batched=False"
                        ) from e
                    warnings.warn(
                        f"torch.func.vmap cannot evaluate {type(model).__name__} on this batch "
                        f"({type(e).__name__}: {first_line}); evaluating the weight vectors one at a "
                        "time",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    return False
                reduce.add_stacked(idx, name, b, outs, adapter.targets(batch))
                fed = True
            for j in idx:
                reduce.end_pass(j, name, b + 1)
    return True


def _one_pass(
    model: nn.Module,
    point: int,
    loaders: Mapping[str, Iterable],
    reduce: Reduction,
    adapter: ModelAdapter,
    place: Placement,
    set_eval: bool = True,
) -> None:
    """The model as it is, in eval mode without gradients, over every loader, each batch fed to ``reduce``
    (``set_eval=False``: the caller has put the model in eval mode and restores it)."""
    with preserved_modes(model, train=False) if set_eval else contextlib.nullcontext(), torch.no_grad():
        for name, loader in loaders.items():
            b = -1
            for b, batch in enumerate(loader):
                args, kwargs = place.inputs(adapter, batch)
                reduce.add(point, name, b, adapter.prediction(model(*args, **kwargs)), adapter.targets(batch))
            reduce.end_pass(point, name, b + 1)


# ---------------------------------------------------------------------------------------------- affine points
#: points whose (c, P) block the folded loop keeps at once: at most this many bytes (and at least the vmap chunk)
FOLD_BLOCK_BYTES = 1 << 26
#: affine families of fewer points are not timed (the probe costs about 20 forward passes of the first batch):
#: the first layer is folded when the model has one, else vmap or the loop is chosen as for a list of vectors
PLAN_MIN_POINTS = 100
#: the first layer is folded (untimed) or considered for folding (timed) when its fan-in is at least this many
#: times r + 1 (a 784-input Linear on a plane: 784 multiply-adds per output against 3; a 1-channel 3x3
#: convolution, 9 against 3, is not: combining its outputs per point costs more memory traffic than it saves)
FOLD_FAN_IN = 16
#: folding is chosen only when it is this much faster than the best unfolded mode (noise must not tip a tie)
FOLD_MARGIN = 1.05
_MODES = ("loop", "vmap", "fold-loop", "fold-vmap")


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _check_affine(space: WeightSpace, points: AffinePoints) -> None:
    """The origin and directions are finite vectors of this space, the coordinates finite (checked once, not
    per point)."""
    if points.basis.shape[1] != space.size:
        raise InputError(
            f"the points' basis has {points.basis.shape[1]} entries per row; this weight space has {space.size}"
        )
    if points.origin is not None:
        space.check_vector(points.origin, what="the points' origin")
    if not bool(torch.isfinite(points.basis).all()) or not bool(torch.isfinite(points.coords).all()):
        raise InputError("the points' basis or coordinates hold NaN or infinite entries")


def _fold_block(points: AffinePoints, n: int, chunk: int) -> int:
    """How many points the folded loop takes per pass over the loaders: as many as fit in
    :data:`FOLD_BLOCK_BYTES` (each pass recomputes the first layer's outputs on the origin and directions)."""
    per = points.basis.shape[1] * torch.empty((), dtype=points.dtype, device="cpu").element_size()
    return max(1, min(n, max(chunk, FOLD_BLOCK_BYTES // max(per, 1))))


def _folded_outputs(
    model: nn.Module,
    space: WeightSpace,
    first: FirstLayer,
    stacked: Tensor,
    coords: Tensor,
    adapter: ModelAdapter,
    args: tuple,
    kwargs: dict,
    use_vmap: bool,
    load: Any,
) -> Tensor:
    """Predictions at the (c, P) ``stacked`` points (coordinates ``coords``, (c, r)) on one batch with the
    first layer folded (:meth:`FirstLayer.batch` called for this batch): by vmap or one point at a time. The
    layer is back to its own forward after the call (``first.coords`` is cleared)."""
    try:
        if use_vmap:

            def one(w: Tensor, t: Tensor) -> Tensor:
                first.coords = t
                return adapter.prediction(space.call_with(model, space.views(w), args, kwargs))

            return torch.func.vmap(one)(stacked, coords)
        outs = []
        for w, t in zip(stacked, coords, strict=True):
            load(w)
            first.coords = t
            outs.append(adapter.prediction(model(*args, **kwargs)))
        return torch.stack(outs)
    finally:
        first.coords = None


def _plan_affine(
    model: nn.Module,
    space: WeightSpace,
    points: AffinePoints,
    loader: Iterable,
    adapter: ModelAdapter,
    place: Placement,
    vm: VmapPolicy,
    n: int,
) -> tuple[str, FirstLayer | None]:
    """The mode for points on an affine subspace: ``"loop"``, ``"vmap"``, ``"fold-loop"`` or ``"fold-vmap"``,
    and the folded layer.

    Folding is considered only for a first layer whose fan-in is at least :data:`FOLD_FAN_IN` x (r + 1). The
    first batch is timed each allowed way, per point: the loops over 2 points (the plain loop also fetches
    the batch once per point), vmap over 4 and then over its chunk (fetching once per block), the folded modes also
    paying the first layer's outputs on the origin and directions once per block. Interleaved rounds, the
    minimum of each mode kept; a mode 1.5x slower than the best after the first round, 1.2x after the
    second, drops out, and the timing stops when one mode is left or after three rounds (the probe costs a
    few forward passes of the first batch). vmap
    must win by :data:`VMAP_MARGIN`, folding by :data:`FOLD_MARGIN`. Cached per model, weight space, subspace
    rank, input shape, block size and policy."""
    t0 = time.perf_counter()
    first_batch = next(iter(loader), None)
    fetch_s = time.perf_counter() - t0
    if first_batch is None:
        return "loop", None
    args, kwargs = place.inputs(adapter, first_batch)
    chunk = int(vm.chunk)  # resolved by evaluate_many
    block = _fold_block(points, n, chunk)
    key = (
        "affine",
        tuple(space.names),
        points.rank,
        points.origin is not None,
        str(points.dtype),
        _signature((args, kwargs)),
        place.channels_last,
        vm.mode,
        vm.fold,
        min(n, chunk),
        block,
    )
    cache = _VMAP_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    with preserved_modes(model, train=False), torch.no_grad():
        first = FirstLayer.find(model, space, args, kwargs) if vm.fold is not False else None
    if first is not None:
        first.channels_last = place.channels_last
    allowed = [
        m
        for m in _MODES
        if (vm.mode == "auto" or (m.endswith("vmap") == bool(vm.mode)))
        and (first is not None or not m.startswith("fold"))
        and (vm.fold is not True or first is None or m.startswith("fold"))
    ]
    wide = first is not None and (vm.fold is True or first.fan_in >= FOLD_FAN_IN * (points.rank + 1))
    if not wide:  # no first layer worth folding (a 1-channel 3x3 convolution): vmap or loop as for a list
        cache[key] = ("", None)
        return cache[key]
    if n < PLAN_MIN_POINTS:  # too few points to pay for timing the modes: fold a layer with a wide fan-in
        choice = ("fold-loop" if "fold-loop" in allowed else "fold-vmap", first) if wide else ("", None)
        cache[key] = choice
        return choice
    if len(allowed) == 1:
        cache[key] = (allowed[0], first if allowed[0].startswith("fold") else None)
        return cache[key]
    ref = space.parameters(model)[0]
    many = list(range(min(max(4, chunk), n)))  # vmap is timed on its chunk, the loops on 2 points
    stacked = points.rows(many).to(ref)
    coords = points.coords[many].to(device=ref.device, dtype=ref.dtype)
    per_block = {"loop": 1, "vmap": chunk, "fold-loop": block, "fold-vmap": chunk}
    margin = {"loop": 1.0, "vmap": VMAP_MARGIN, "fold-loop": FOLD_MARGIN, "fold-vmap": FOLD_MARGIN * VMAP_MARGIN}
    failed: list[BaseException] = []
    best: dict[str, float] = {}
    ys_s = 0.0
    with (
        preserved_modes(model, train=False),
        torch.no_grad(),
        space.visiting(model) as load,
        first.folded(points) if first is not None else contextlib.nullcontext(),
    ):

        def loop(k: int) -> None:
            for w in stacked[:k]:
                load(w)
                model(*args, **kwargs)

        def folded(use_vmap: bool, k: int) -> None:
            assert first is not None
            _folded_outputs(model, space, first, stacked[:k], coords[:k], adapter, args, kwargs, use_vmap, load)

        runs: dict[str, Any] = {
            "loop": loop,
            "vmap": lambda k: _vmap_outputs(model, space, stacked[:k], adapter, args, kwargs),
            "fold-loop": lambda k: folded(False, k),
            "fold-vmap": lambda k: folded(True, k),
        }
        runs = {m: r for m, r in runs.items() if m in allowed}
        if first is not None:
            first.batch(args, kwargs)
            folded(False, 1)  # the first layer's outputs on this batch, then cached for the timings
            if first.last_input is not None:
                ys_s = _timed(first.basis_outputs, first.last_input)
        for r in range(3):
            for m, fn in list(runs.items()):
                k = min(2 if m.endswith("loop") else (4 if r == 0 else chunk), len(many))
                try:
                    per_point = _timed(fn, k) / k
                except (RuntimeError, NotImplementedError, TypeError) as e:
                    if isinstance(e, BatchFormatError) or m.endswith("loop"):
                        raise
                    failed.append(e)  # vmap without batching rules for this model: the loop modes remain
                    del runs[m]
                    continue
                cost = (per_point + ((ys_s if m.startswith("fold") else 0.0) + fetch_s) / per_block[m]) * margin[m]
                best[m] = min(best.get(m, math.inf), cost)
            if not best:
                break
            low = min(best.values())
            runs = {m: v for m, v in runs.items() if best[m] <= (1.5 if r == 0 else 1.2) * low}
            if len(runs) == 1:
                break
    if failed:
        err = failed[0]
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.warn(
            f"torch.func.vmap cannot evaluate {type(model).__name__} ({type(err).__name__}: {first_line}); "
            "evaluating the weight vectors one at a time",
            RuntimeWarning,
            stacklevel=4,
        )
    mode = min(best, key=best.__getitem__) if best else "loop"
    cache[key] = (mode, first if mode.startswith("fold") else None)
    return cache[key]


def _evaluate_folded(
    model: nn.Module,
    space: WeightSpace,
    points: AffinePoints,
    mine: list[int],
    loaders: Mapping[str, Iterable],
    reduce: Reduction,
    adapter: ModelAdapter,
    place: Placement,
    first: FirstLayer,
    use_vmap: bool,
    block: int,
    bar: Any,
) -> None:
    """The points ``mine`` of ``points`` in blocks of ``block``, each block one pass over every loader with the
    first layer folded: per batch, its outputs on the origin and directions once, then every point of the
    block (vmapped or one at a time); predictions fed to ``reduce`` stacked, as the vmap path does."""
    params = space.parameters(model)
    ref = params[0]
    # the folded layer's parameters are never read when it is called once per forward: the loop materialises
    # and copies only the others (a 784-100-100-10 MLP: 11k of its 90k weights per point)
    skip = {off for off, _, _ in first.slots} if first.only_call and not use_vmap else set()
    moving = [(p, sl) for p, sl in zip(params, space.slots, strict=True) if sl.offset not in skip]
    at, layout = 0, []
    for p, sl in moving:
        layout.append((p, at, sl.numel, sl.shape))
        at += sl.numel
    compact = (
        AffinePoints(
            torch.cat([points.basis[:, sl.offset : sl.offset + sl.numel] for _, sl in moving], 1),
            points.coords,
            None
            if points.origin is None
            else torch.cat([points.origin[sl.offset : sl.offset + sl.numel] for _, sl in moving]),
            dtype=points.dtype,
        )
        if skip
        else points
    )

    def load(w: Tensor) -> None:
        for p, lo, numel, shape in layout:
            p.copy_(w[lo : lo + numel].view(shape))

    with (
        preserved_modes(model, train=False),
        torch.no_grad(),
        space.visiting(model),
        first.folded(points),
    ):
        for start in range(0, len(mine), block):
            idx = mine[start : start + block]
            stacked = compact.rows(idx).to(ref)  # every weight (vmap), or only those the loop loads
            coords = points.coords[idx].to(device=ref.device, dtype=ref.dtype)
            for name, loader in loaders.items():
                b = -1
                for b, batch in enumerate(loader):
                    args, kwargs = place.inputs(adapter, batch)
                    first.batch(args, kwargs)
                    outs = _folded_outputs(model, space, first, stacked, coords, adapter, args, kwargs, use_vmap, load)
                    reduce.add_stacked(idx, name, b, outs, adapter.targets(batch))
                for j in idx:
                    reduce.end_pass(j, name, b + 1)
            if bar is not None:
                bar.update(len(idx))


def evaluate_many(
    model: nn.Module,
    weights: Iterable[Sample] | Tensor | None,
    loaders: Mapping[str, Iterable],
    *,
    reduce: Reduction,
    adapter: ModelAdapter | None = None,
    bn: BNArg = None,
    space: WeightSpace | None = None,
    batched: bool | str | VmapPolicy = "auto",
    progress: bool | Progress = False,
    shard: bool = False,
) -> ManyResult:
    """Evaluate ``model`` at every weight vector of ``weights`` on every loader, feeding ``reduce``.

    For each vector ``w_s`` (a flat vector over ``space``, a row of a (c, P) stack, a full state dict, or
    ``None`` for the model as it is) and each loader, the prediction ``f(x; w_s) = adapter.forward(...)``
    of every batch is passed to ``reduce`` in eval mode without gradients, on the device of the model's
    parameters (batches are moved there). BatchNorm: ``bn`` (see :class:`BNPolicy` and :data:`BNArg`;
    recomputed once per vector, before its loaders). ``batched``: see :class:`VmapPolicy`. ``progress``:
    ``True`` or a :class:`Progress` shows a bar over the points. Returns a :class:`ManyResult`.

    ``shard=True`` under ``torch.distributed``: every rank walks the same ``weights`` (the same samples, the
    same grid) on the same loaders, evaluates only the points ``i`` with ``i mod R = r`` (BatchNorm recomputed
    on the rank's own full BN loader, not all-reduced), and the reduction's results are combined across ranks
    (:meth:`Reduction.all_reduce_points`), so every rank returns what one process would, up to the order of
    floating-point sums; at least R points are needed. Without a process group it changes nothing.

    Raises (before any evaluation): :class:`valleys.errors.InputError` for no loaders, a bad ``batched`` or
    chunk, an unknown BN policy; :class:`valleys.errors.MissingBNLoaderError` for flat vectors on a BatchNorm
    model with ``"recompute"`` and no BN loader; :class:`valleys.core.weights.WeightSpaceError` for vectors
    of the wrong length. :class:`valleys.errors.NoWeightsError` if no weights are given.
    """
    if not isinstance(loaders, Mapping):
        raise InputTypeError(
            f"loaders must be a mapping name -> loader, got {type(loaders).__name__}; e.g. {{'test': test_loader}}"
        )
    if not loaders:
        raise InputError("give at least one loader to evaluate on")
    model = unwrap(model)  # a torch.compile wrapper: its original module, run eagerly at every point
    vm = VmapPolicy.of(batched)
    batched = vm.mode
    bar_policy = Progress.of(progress)
    policy = as_bn_policy(bn)
    adapter = as_adapter(adapter)
    space = space or WeightSpace(model)
    is_bn = has_batchnorm(model)
    recompute = policy.mode == "recompute" and is_bn
    ref = space.parameters(model)[0]
    device = ref.device  # batches go where the model's parameters are
    reduce.begin(list(loaders))
    world, me = (world_size(), rank()) if shard else (1, 0)
    seen = [0]

    def numbered() -> Iterator[tuple[int, Sample | None]]:  # this rank's points, numbered globally
        for i, w in enumerate(_iter_weights(weights)):
            seen[0] = i + 1
            if i % world == me:
                yield i, w

    iterator = numbered()
    use_vmap: bool | None = None if batched == "auto" else bool(batched)
    if recompute:
        use_vmap = False
    used_vmap = False
    known = len(weights) if isinstance(weights, (Tensor, Sequence)) and not isinstance(weights, Mapping) else None
    if weights is None or isinstance(weights, Mapping) or isinstance(weights, Tensor) and weights.dim() == 1:
        known = 1  # the model as it is, one state dict or one vector: nothing to amortise a probe over
    if known == 1 and batched == "auto":
        use_vmap = False  # one point: the loop, never a timed choice (whose rounding would vary run to run)
    # channels-last images where a convolutional model runs faster on them (timed once per model and input
    # shape, and only for enough points to pay for the timing)
    place = (
        Placement(device, vm.channels_last)
        if isinstance(vm.channels_last, bool)
        else _decide_format(
            model,
            next(iter(loaders.values())),
            adapter,
            device,
            probe=(known is None or known >= FORMAT_MIN_POINTS) and not (recompute and policy.loader is None),
        )
    )
    chunk = (
        VMAP_CHUNK
        if recompute
        else _resolve_chunk(vm, model, space, next(iter(loaders.values())), adapter, place, known)
    )
    vm = dataclasses.replace(vm, chunk=chunk)
    bar = bar_policy.bar("points", known) if bar_policy is not None else None

    def visit(j: int, recompute_now: bool, set_eval: bool = True) -> None:
        """The model as it holds point ``j`` now: BatchNorm recomputed if asked, one pass over the loaders."""
        if recompute_now:  # per process (sharded: each rank its own point), never all-reduced across ranks
            assert policy.loader is not None  # checked before any evaluation (MissingBNLoaderError)
            recompute_bn(
                model,
                policy.loader,
                num_batches=policy.num_batches,
                device=device,
                adapter=adapter,
                distributed=False,
            )
        _one_pass(model, j, loaders, reduce, adapter, place, set_eval or recompute_now)
        if bar is not None:
            bar.update(1)

    folded = False
    # channels-last convolution weights for the whole evaluation when chosen (their own storage back after)
    with channels_last_weights(model) if place.channels_last else contextlib.nullcontext():
        if (
            isinstance(weights, AffinePoints)
            and not recompute
            and vm.fold is not False
            and len(weights) > (weights.rank + 1 if vm.fold == "auto" else 0)  # fewer points: r + 1 products cost more
        ):
            _check_affine(space, weights)
            mode, first = _plan_affine(
                model, space, weights, next(iter(loaders.values())), adapter, place, vm, len(weights)
            )
            if first is not None:
                first.channels_last = place.channels_last
                mine = [i for i in range(len(weights)) if i % world == me]
                block = _fold_block(weights, len(mine), chunk) if mode == "fold-loop" else chunk
                try:
                    _evaluate_folded(
                        model,
                        space,
                        weights,
                        mine,
                        loaders,
                        reduce,
                        adapter,
                        place,
                        first,
                        mode == "fold-vmap",
                        block,
                        bar,
                    )
                finally:
                    if bar is not None:
                        bar.close()
                seen[0], used_vmap, folded = len(weights), mode == "fold-vmap", True
            else:
                use_vmap = {"vmap": True, "loop": False}.get(mode, use_vmap)  # "": decided as for a list
        if not folded:
            try:
                while True:
                    pairs = list(itertools.islice(iterator, chunk))
                    if not pairs:
                        break
                    idx = [i for i, _ in pairs]
                    group = [g for _, g in pairs]
                    vectors = all(isinstance(g, Tensor) for g in group)
                    for k, g in zip(idx, group, strict=True):
                        if isinstance(g, Tensor):
                            space.check_vector(g, what=f"weight vector {k}")
                    if recompute and policy.loader is None and any(isinstance(g, Tensor) for g in group):
                        raise MissingBNLoaderError(
                            "the model has BatchNorm layers and the weights are flat vectors; pass bn=train_loader "
                            "(or bn=BNPolicy('recompute', train_loader)) to recompute their statistics per vector, "
                            "or bn='keep' to use the current ones on purpose"
                        )
                    if vectors and not recompute and use_vmap is not False:
                        stacked = torch.stack([g.to(ref) for g in group if isinstance(g, Tensor)])
                        if use_vmap is None or batched is True and not used_vmap:
                            use_vmap = _decide_vmap(
                                model, space, stacked, next(iter(loaders.values())), adapter, place, batched
                            )
                        if use_vmap and _vmap_group(model, space, stacked, idx, loaders, reduce, adapter, place):
                            used_vmap = True
                            if bar is not None:
                                bar.update(len(group))
                            continue
                        use_vmap = False  # vmap failed before feeding anything: this group and the rest by the loop
                    if vectors:  # saved once per group, each vector copied in, restored bit for bit at the end
                        # without a recompute the modes are set once for the group, not once per vector
                        eval_once = contextlib.nullcontext() if recompute else preserved_modes(model, train=False)
                        with space.visiting(model) as load, eval_once:
                            for j, w in zip(idx, group, strict=True):
                                assert isinstance(w, Tensor)  # vectors: every sample of the group is one
                                load(w.to(ref))
                                visit(j, recompute, set_eval=recompute)
                        continue
                    for j, sample in zip(
                        idx, group, strict=True
                    ):  # state dicts (and the model as it is) carry their own buffers
                        with contextlib.nullcontext(model) if sample is None else holding(model, sample, space):
                            visit(j, isinstance(sample, Tensor) and recompute)
            finally:
                if bar is not None:
                    bar.close()
    total = seen[0]  # points walked (all of them: the loop ran the iterator to its end)
    if total == 0:
        raise NoWeightsError("no weights were given; pass at least one weight vector or state dict")
    if world > 1:
        if total < world:  # every rank knows total: all raise together, no collective left waiting
            raise InputError(
                f"sharded evaluation over {world} processes needs at least {world} weight vectors, "
                f"got {total}; evaluate with shard=False"
            )
        reduce.all_reduce_points(total)
        used_vmap = bool(all_reduce_sum(torch.tensor([float(used_vmap)], device="cpu")).item() > 0)
    label = ("recompute" if recompute else "keep") if is_bn else "none (no BatchNorm)"
    return ManyResult(reduce.result(total), total, label, used_vmap, folded=folded)
