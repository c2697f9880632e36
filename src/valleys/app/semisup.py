"""``valleys semisup``: semi-supervised training with consistency regularisation, SWA and fast-SWA
(Athiwaratkun et al. 2019, "There Are Many Consistent Explanations of Unlabeled Data: Why You Should Average",
ICLR; talk slides 34-36), written as one folder.

For every consistency term (``none``: cross-entropy on the labelled examples only; ``pi``: the Pi model of
Laine & Aila 2017; ``mean-teacher``: Tarvainen & Valpola 2017) and every seed: ``labels_per_class`` labelled
examples per class drawn from the seed (:func:`valleys.training.semisup_data.labelled_split`; the validation
split is held out of both parts), mixed batches of ``batch_size`` with ``labelled_batch_size`` labelled ones,
two augmented views per example, SGD with Nesterov momentum on the cosine-with-replay schedule
(:class:`valleys.training.schedules.CosineReplay`: a cosine that would reach 0 at epoch ``l + c``, followed
for the first ``l = cosine_epochs`` epochs, then cycles of ``c = cycle`` epochs replaying its epochs
``l - c .. l``, as in the authors' code, where the cosine ramps down over 210 epochs but stops at 180, so the
cycles keep a learning rate high enough to explore). By default the rules are the authors' code's
(benathi/fastswa-semi-sup ``main.py``): fast-SWA's first average holds the weights after epoch ``l - c``, the
first cycle starts at exactly epoch ``l``, the supervised cross-entropy is divided by the whole batch and the
consistency ramp-up reads the epoch index; ``fast_swa_start``, ``cosine_end``, ``ce_normalisation`` and
``ramp_epoch`` name the alternatives (valleys' rules before 0.1). SWA averages the student at the end of every
cycle (epochs ``l, l + c, ...``), fast-SWA every ``fast_swa_every`` epochs (or steps) from epoch ``l - c`` on;
both with a BatchNorm recompute on the training inputs (labelled and unlabelled) before every evaluation. The
student, the teacher (mean teacher only), SWA and fast-SWA are evaluated side by side every ``eval_every`` epochs, and
:class:`valleys.training.callbacks.TravelCallback` logs how far the student moves between epochs.

Layout of ``--out``: ``config.json``, ``results.json`` (per run and summarised), ``report.md``, ``figures/``
(test error against epoch per consistency term, and the travel of the iterates), and one run folder per
consistency term and seed (``<consistency>/seed-<s>/`` with ``config.json``, ``metrics.jsonl``,
``checkpoint.safetensors``, ``results.json``); ``--resume`` reads the finished runs back and continues an
interrupted one from its checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..zoo.catalog import DATASETS, MODELS
from .claims import paired, verdict  # noqa: F401 (verdict: re-exported)
from .options import setting
from .registry import Registry
from .report import cell

__all__ = [
    "SemisupConfig",
    "semisup_run",
    "semisup_one",
    "semisup_calls",
    "semisup_finish",
    "claims",
    "claim_rows",
    "summary_lines",
    "MODEL_KINDS",
    "CONSISTENCY_TERMS",
]

#: The built-in models that can have a second head (``--logit-distance``).
TWO_HEADS = ("cnn1d", "cnn", "convlarge")
#: The networks evaluated side by side in every run (the teacher only with the mean teacher).
MODEL_KINDS = ("student", "teacher", "swa", "fastswa")
_LABELS = {"student": "base", "teacher": "teacher", "swa": "SWA", "fastswa": "fast-SWA"}


def _no_teacher(model: Any, decay: float, evals: Any) -> None:
    """The Pi model and supervised-only training have no teacher network."""
    return None


def _mean_teacher(model: Any, decay: float, evals: Any) -> Any:
    """The mean teacher (Tarvainen & Valpola 2017): an exponential moving average of the student's weights."""
    from ..training.semisup import MeanTeacher

    return MeanTeacher(model, decay, eval_loaders=evals)


#: ``--consistency``: each term's teacher callback, ``(model, ema_decay, eval loaders) -> MeanTeacher | None``
#: (the term itself is :class:`valleys.training.semisup.ConsistencyStep`'s).
CONSISTENCY_TERMS: Registry[Callable[[Any, float, Any], Any]] = Registry(
    "consistency term",
    {"none": _no_teacher, "pi": _no_teacher, "mean-teacher": _mean_teacher},
    flag="--consistency",
)


@dataclass
class SemisupConfig:
    """Settings of :func:`semisup_run` (see ``valleys semisup --help``)."""

    dataset: str = setting("mnist1d", "built-in dataset", choices=DATASETS)
    model: str = setting(
        "cnn1d",
        "reference architecture (mlp, cnn1d, cnn, preresnet, vgg) or your own factory, called without arguments: "
        "module.path:factory or file.py:factory",
    )
    consistency: list[str] = setting(
        ["none", "pi", "mean-teacher"],
        "consistency terms, each a run per seed (none: cross-entropy on the labelled examples only)",
        nargs="+",
        choices=CONSISTENCY_TERMS.names(),
    )
    labels_per_class: int = setting(
        40, "labelled training examples per class, drawn from the seed; the rest are unlabelled", check="positive"
    )
    batch_size: int = setting(128, "examples per batch", check="positive")
    labelled_batch_size: int = setting(32, "labelled examples in every batch (the rest unlabelled)", check="positive")
    epochs: int = setting(90, "epochs (one epoch: a pass over the unlabelled examples)", check="positive")
    cosine_epochs: int | None = setting(  # l
        None, "length l of the first cosine phase (default: --epochs minus two cycles)", check="positive"
    )
    cycle: int = setting(
        15,
        "cycle length c in epochs: after the cosine phase the LR replays its last c epochs; SWA averages at every "
        "cycle end",
        check="positive",
    )
    fast_swa_every: int = setting(
        1, "fast-SWA averages every k epochs (or steps, --fast-swa-unit) from epoch l - c on", check="positive"
    )
    fast_swa_unit: str = setting("epochs", "unit of --fast-swa-every", choices=("epochs", "steps"))
    fast_swa_start: str = setting(
        "reference",
        "reference: the weights after epoch l - c are the first fast-SWA averages, as in the authors' code "
        "(epoch >= l - c and (epoch - l + c) mod k = 0); after-first-interval: the first are those after epoch "
        "l - c + k (valleys before 0.1). --fast-swa-unit epochs only",
        choices=("reference", "after-first-interval"),
    )
    cosine_end: str = setting(
        "replay",
        "the LR of epoch l itself: replay (the first cycle starts at exactly l, at the rate of epoch l - c, as in "
        "the authors' code) or cosine (epoch l's first step still at the cosine's end value, valleys before 0.1)",
        choices=("replay", "cosine"),
    )
    ce_normalisation: str = setting(
        "batch",
        "batch: the labelled cross-entropy summed and divided by the whole batch, as in the authors' code; "
        "labelled: averaged over the labelled examples (batch-size / labelled-batch-size times stronger)",
        choices=("batch", "labelled"),
    )
    ramp_epoch: str = setting(
        "integer",
        "the epoch the consistency ramp-up reads: integer (the epoch index, as in the authors' code) or "
        "fractional (step / steps per epoch)",
        choices=("integer", "fractional"),
    )
    logit_distance: float | None = setting(
        None,
        "give a weight (the authors' code: 0.01) for a second head: the consistency term reads it and a "
        "logit-distance cost of this weight ties it to the first, which the cross-entropy and every evaluation "
        "read (built-in cnn1d, cnn and convlarge; your factory's model must return both heads' logits in "
        "training mode); default: one head",
        check="non_negative",
    )
    lr: float = setting(0.1, "initial LR of the cosine", check="positive")
    momentum: float = setting(0.9, "Nesterov momentum", check="fraction")
    wd: float = setting(2e-4, "weight decay", check="non_negative")
    consistency_weight: float = setting(
        30.0, "lambda_max, the consistency loss's weight after the ramp-up", check="non_negative"
    )
    consistency_loss: str = setting(
        "mse",
        "mse: squared error between the softmax outputs (mean over classes); kl: KL(target || student)",
        choices=("mse", "kl"),
    )
    rampup: float = setting(
        5.0, "epochs r of the ramp-up lambda(t) = lambda_max exp(-5 (1 - min(t, r) / r)^2)", check="non_negative"
    )
    ema_decay: float = setting(
        0.97, "mean teacher: EMA decay alpha in [0, 1), used as min(1 - 1/(step + 1), alpha)", check="fraction"
    )
    augment: bool = setting(
        True,
        "input augmentation (the default)",
        negation="no input augmentation: the two views differ only through Dropout",
    )
    seeds: list[int] = setting(
        [0], "seeds (each draws its own labelled examples and initialisation)", nargs="+", check="seed"
    )
    val_fraction: float = setting(
        0.1, "labelled validation split held out of training (choose settings on it)", check="fraction"
    )
    train_subset: int | None = setting(None, "keep only N training examples", check="positive")
    test_subset: int | None = setting(None, "keep only N test examples", check="positive")
    data_root: str | None = setting(None, "torchvision data root (Fashion-MNIST files)", check="path")
    eval_every: int = setting(2, "epochs between evaluations", check="positive")
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    # keyword arguments of the built-in model (e.g. {"width": 16}); set by a preset or in Python, not a flag
    model_args: dict[str, Any] = field(default_factory=dict)

    @property
    def l(self) -> int:  # noqa: E743 - the paper's name for the cosine phase's length
        return self.cosine_epochs if self.cosine_epochs is not None else self.epochs - 2 * self.cycle

    def check(self) -> None:
        """Refuse bad values before any work (``ValueError`` naming the flag and the valid choice)."""
        from ..zoo.catalog import DATASETS

        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if ":" in self.model:
            from .user_code import absolute_reference

            self.model = absolute_reference(self.model, "--model")
        elif self.model not in MODELS:
            raise InputError(
                f"unknown model {self.model!r}; valid: {', '.join(MODELS)}, or your own factory "
                "(module.path:factory or file.py:factory)"
            )
        if not isinstance(self.model_args, dict) or not all(isinstance(k, str) for k in self.model_args):
            raise InputError(f"model_args must be a dict of keyword arguments, got {self.model_args!r}")
        if self.logit_distance is not None and ":" not in self.model and self.model not in TWO_HEADS:
            raise InputError(
                f"--logit-distance needs a second head, which the built-in {self.model!r} has not; use --model "
                f"{' or '.join(TWO_HEADS)} (or your own two-headed factory), or drop --logit-distance"
            )
        if self.model_args and ":" in self.model:
            raise InputError("model_args are keyword arguments of a built-in model; your factory takes none")
        if not self.consistency:
            raise InputError("--consistency needs at least one of none, pi, mean-teacher")
        for c in self.consistency:
            CONSISTENCY_TERMS.get(c)  # an unknown name: InputError listing the valid ones
        if len(set(self.consistency)) != len(self.consistency):
            raise InputError(f"--consistency lists a term twice: {self.consistency}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds needs distinct seeds, got {self.seeds}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise InputError(f"--seeds must be integers >= 0, got {self.seeds}")
        for name in ("labels_per_class", "batch_size", "labelled_batch_size", "epochs", "cycle", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                extra = (
                    " (with no labels there is nothing to learn the classes from)" if name == "labels_per_class" else ""
                )
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}{extra}")
        if self.labelled_batch_size > self.batch_size:
            raise InputError(
                f"--labelled-batch-size {self.labelled_batch_size} is larger than --batch-size "
                f"{self.batch_size}; choose at most {self.batch_size}"
            )
        if not (math.isfinite(self.consistency_weight) and self.consistency_weight >= 0):
            raise InputError(f"--consistency-weight must be finite and >= 0, got {self.consistency_weight!r}")
        if self.consistency_loss not in ("mse", "kl"):
            raise InputError(f"--consistency-loss must be mse or kl, got {self.consistency_loss!r}")
        if not (math.isfinite(self.rampup) and self.rampup >= 0):
            raise InputError(f"--rampup must be finite and >= 0 epochs, got {self.rampup!r}")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"--ema-decay must be in [0, 1) (the teacher's EMA decay alpha), got {self.ema_decay!r}")
        for name in ("lr",):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"--{name} must be finite and > 0, got {v!r}")
        if not (math.isfinite(self.wd) and self.wd >= 0):
            raise InputError(f"--wd must be finite and >= 0, got {self.wd!r}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.val_fraction < 1:
            raise InputError(
                f"--val-fraction must be in (0, 1): settings are chosen on a labelled validation "
                f"split, got {self.val_fraction!r}"
            )
        l, c, e = self.l, self.cycle, self.epochs  # noqa: E741 - l: the cosine phase, as in Athiwaratkun et al.
        if self.cosine_epochs is None and l < 1:
            raise InputError(
                f"a cycle of {c} epochs is too long for --epochs {e}: the cosine phase (by default "
                f"--epochs minus two cycles) would have {l} epochs; use --cycle at most {(e - 1) // 2}, "
                "raise --epochs or set --cosine-epochs"
            )
        if self.cosine_epochs is not None and not 1 <= self.cosine_epochs <= e:
            raise InputError(f"--cosine-epochs must be in [1, --epochs {e}], got {self.cosine_epochs}")
        if c > e - l:
            raise InputError(
                f"a cycle of {c} epochs is longer than the {e - l} epochs that remain after the cosine "
                f"phase of {l} epochs (--epochs {e}); use --cycle at most {max(e - l, 0)}, or fewer "
                f"--cosine-epochs (default: --epochs minus two cycles)"
            )
        if c > l:
            raise InputError(
                f"a cycle of {c} epochs is longer than the cosine phase of {l} epochs it replays; "
                f"use --cycle at most {l} or raise --epochs"
            )
        if (e - l) % c:
            raise InputError(
                f"the {e - l} epochs after the cosine phase are not a whole number of {c}-epoch cycles; "
                f"choose --epochs {l + c * ((e - l) // c)} or {l + c * ((e - l) // c + 1)}"
            )
        if self.fast_swa_unit not in ("epochs", "steps"):
            raise InputError(f"--fast-swa-unit must be epochs or steps, got {self.fast_swa_unit!r}")
        if isinstance(self.fast_swa_every, bool) or not isinstance(self.fast_swa_every, int) or self.fast_swa_every < 1:
            raise InputError(f"--fast-swa-every must be an integer >= 1, got {self.fast_swa_every!r}")
        if self.fast_swa_unit == "epochs" and self.fast_swa_every > c:
            raise InputError(
                f"--fast-swa-every {self.fast_swa_every} epochs is longer than the {c}-epoch cycle; "
                f"fast-SWA averages several points per cycle: choose at most {c}"
            )
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")

    def check_data(self, splits: Any) -> None:
        """The checks that need the data: enough examples of every class, a batch's worth of unlabelled
        examples, a fast-SWA interval in steps within a cycle."""
        from ..training.semisup_data import dataset_targets

        y = dataset_targets(splits.train)
        counts = {int(c): int((y == c).sum()) for c in y.unique()}
        fewest = min(counts.values())
        if self.labels_per_class > fewest:
            worst = min(counts, key=counts.get)
            raise InputError(
                f"--labels-per-class {self.labels_per_class} is more than a class has: class {worst} has "
                f"{fewest} training examples (after the validation split); choose at most {fewest}"
            )
        unlabelled = len(y) - self.labels_per_class * len(counts)
        need = self.batch_size - self.labelled_batch_size
        if need and unlabelled < need:
            raise InputError(
                f"{unlabelled} unlabelled examples do not fill one batch's {need} unlabelled places; "
                "lower --batch-size or --labels-per-class"
            )
        from ..core.distributed import world_size

        world = world_size()
        if world > 1 and (self.labelled_batch_size % world or need % world):
            raise InputError(
                f"under torchrun with {world} processes, --labelled-batch-size "
                f"{self.labelled_batch_size} and the unlabelled part of a batch ({need}) must both be "
                f"multiples of {world}: every rank trains on an equal share of both"
            )
        # one epoch is a pass over the unlabelled examples (MixedBatchSampler)
        steps_per_epoch = unlabelled // need if need else max(1, self.labels_per_class * len(counts) // self.batch_size)
        if self.fast_swa_unit == "steps" and self.fast_swa_every > self.cycle * steps_per_epoch:
            raise InputError(
                f"--fast-swa-every {self.fast_swa_every} steps is longer than the cycle of "
                f"{self.cycle * steps_per_epoch} steps ({self.cycle} epochs of {steps_per_epoch})"
            )


def _splits(cfg: SemisupConfig):
    from ..zoo.data import load_dataset

    return load_dataset(
        cfg.dataset,
        val_fraction=cfg.val_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        root=cfg.data_root,
    )


def _run_settings(cfg: SemisupConfig, consistency: str, seed: int) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("seeds")
    return {**d, "consistency": consistency, "seed": seed, "l": cfg.l}


def semisup_one(
    cfg: SemisupConfig, consistency: str, seed: int, folder: str | Path, *, resume: bool = False, progress: bool = False
) -> dict[str, Any]:
    """One run (a consistency term and a seed) into ``folder``; returns its ``results.json``. With ``resume``
    a finished run is read back and an interrupted one continues from its checkpoint."""
    import torch

    from ..core.checkpoint import write_json
    from ..core.distributed import barrier, is_main, shard_loader
    from ..core.weights import WeightSpace
    from ..methods.averaging import SWA
    from ..training.augment import default_augment
    from ..training.callbacks import SWACallback, TravelCallback
    from ..training.schedules import CosineReplay
    from ..training.semisup import ConsistencyStep
    from ..training.semisup_data import dataset_targets, labelled_split, semisup_loader
    from ..training.trainer import CheckpointPolicy, EvaluationPolicy, Trainer
    from ..zoo.data import make_loader
    from ..zoo.models import build_model
    from .config import read_json_object

    folder = Path(folder)
    settings = _run_settings(cfg, consistency, seed)
    if resume and (folder / "results.json").is_file():
        done = read_json_object(folder / "results.json")
        if done.get("settings") == settings:
            return done
    again = (
        resume
        and (folder / "checkpoint.safetensors").is_file()
        and (folder / "config.json").is_file()
        and read_json_object(folder / "config.json") == settings
    )
    barrier()  # under torchrun: every rank has decided before rank 0 touches the folder
    splits = _splits(cfg)
    cfg.check_data(splits)
    labelled, unlabelled = labelled_split(dataset_targets(splits.train), cfg.labels_per_class, seed)
    loader = semisup_loader(
        splits.train,
        labelled,
        unlabelled=unlabelled,
        batch_size=cfg.batch_size,
        labelled_batch_size=cfg.labelled_batch_size,
        seed=seed,
    )
    torch.manual_seed(seed)
    if ":" in cfg.model:  # the user's factory (see valleys.app.user_code)
        from ..errors import UserCodeError
        from .user_code import call_factory

        model = call_factory(cfg.model, "--model")
        if not isinstance(model, torch.nn.Module):
            raise UserCodeError(f"--model {cfg.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
        model = model.to(cfg.device)
    else:
        heads = {"heads": 2} if cfg.logit_distance is not None else {}
        model = build_model(cfg.model, splits.input_shape, splits.num_classes, **cfg.model_args, **heads)
        model = model.to(cfg.device)
    # under torchrun each rank evaluates and recomputes BatchNorm on its slice of these, all-reduced
    evals = {k: shard_loader(make_loader(d, 1000), k) for k, d in (("val", splits.val), ("test", splits.test))}
    bn = shard_loader(make_loader(splits.train, 1000), "BatchNorm")  # every training input, no augmentation
    teacher = CONSISTENCY_TERMS.get(consistency)(model, cfg.ema_decay, evals)
    augment = default_augment(tuple(splits.input_shape), dataset=cfg.dataset) if cfg.augment else None
    step = ConsistencyStep(
        consistency,
        augment=augment,
        weight=cfg.consistency_weight,
        rampup=cfg.rampup,
        loss=cfg.consistency_loss,
        teacher=teacher,
        ce_normalisation=cfg.ce_normalisation,
        ramp_epoch=cfg.ramp_epoch,
        logit_distance=cfg.logit_distance,
    )
    l, c = cfg.l, cfg.cycle  # noqa: E741 - l: the cosine phase, as in Athiwaratkun et al. (2019)
    fast_k = cfg.fast_swa_every
    probe = next(iter(make_loader(torch.utils.data.Subset(splits.train, unlabelled[:1000].tolist()), 1000)))
    callbacks = ([teacher] if teacher is not None else []) + [
        SWACallback(
            SWA(model, moments=False),
            l - c,
            every="epoch",
            k=c,
            bn_loader=bn,
            eval_loaders=evals,
            apply_at_end=False,
            prefix="swa",
        ),
        SWACallback(
            SWA(model, moments=False),
            l - c,
            every="epoch" if cfg.fast_swa_unit == "epochs" else "steps",
            k=fast_k,
            bn_loader=bn,
            eval_loaders=evals,
            apply_at_end=False,
            prefix="fastswa",
            include_start=cfg.fast_swa_unit == "epochs" and cfg.fast_swa_start == "reference",
        ),
        TravelCallback(WeightSpace(model), probe),
    ]
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.wd
    )
    folder.mkdir(parents=True, exist_ok=True)
    if not again and is_main():
        for name in ("checkpoint.safetensors", "metrics.jsonl", "results.json"):
            (folder / name).unlink(missing_ok=True)
        write_json(folder / "config.json", settings)
    trainer = Trainer(  # the model is on cfg.device already
        model,
        opt,
        loader,
        cfg.epochs,
        schedule=CosineReplay(cfg.lr, l, c, total=l + c, replay_at_length=cfg.cosine_end == "replay"),
        callbacks=callbacks,
        step_fn=step,
        evaluation=EvaluationPolicy(evals, every=cfg.eval_every),
        checkpoint=CheckpointPolicy(
            folder / "checkpoint.safetensors", every=1, header={"config": settings}, log=folder / "metrics.jsonl"
        ),
        seed=seed,
    )
    start = time.perf_counter()
    history = trainer.fit(resume=folder / "checkpoint.safetensors" if again else None, progress=progress)
    last = history[-1]
    final: dict[str, Any] = {}
    for kind in MODEL_KINDS:
        prefix = "" if kind == "student" else f"{kind}_"
        if f"{prefix}test_accuracy" in last:
            final[kind] = {
                split: {m: last[f"{prefix}{split}_{m}"] for m in ("accuracy", "nll", "ece")}
                for split in ("val", "test")
            }
    results = {
        "folder": "semisup-run",
        "consistency": consistency,
        "seed": seed,
        "settings": settings,
        "labelled": len(labelled),
        "unlabelled": len(unlabelled),
        "val": len(splits.val),
        "test": len(splits.test),
        "steps_per_epoch": len(loader),
        "metrics": final,
        "swa_collects": last.get("swa_n"),
        "fastswa_collects": last.get("fastswa_n"),
        "timing": {
            "train_s": time.perf_counter() - start,
            "epoch_s": sum(h["train_time"] for h in history) / len(history),
        },
    }
    if is_main():
        write_json(folder / "results.json", results)
    return results


def summarise(runs: list[dict[str, Any]], consistency: list[str]) -> dict[str, dict[str, Any]]:
    """Mean, std, min and max over seeds of every model's test error, NLL and ECE (and validation error),
    per consistency term."""
    from .report import aggregate

    table: dict[str, dict[str, Any]] = {}
    for c in consistency:
        rows = [r for r in runs if r["consistency"] == c]
        table[c] = {}
        for kind in MODEL_KINDS:
            vals = [r["metrics"][kind] for r in rows if kind in r["metrics"]]
            if not vals:
                continue
            flat = [
                {
                    "error": 1 - v["test"]["accuracy"],
                    "nll": v["test"]["nll"],
                    "ece": v["test"]["ece"],
                    "val_error": 1 - v["val"]["accuracy"],
                }
                for v in vals
            ]
            table[c][kind] = aggregate(flat, ("error", "nll", "ece", "val_error"))
    return table


def semisup_run(
    cfg: SemisupConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Every consistency term and seed into ``out`` (module docstring); returns what ``results.json`` holds.
    ``jobs``: worker processes over the runs (:mod:`valleys.app.parallel`)."""
    from ..core.checkpoint import write_json
    from ..core.distributed import world_size
    from ..core.optional import progress_bar
    from .config import check_saved_settings, read_json_object
    from .folders import prepare_run_dir, ranks_folder
    from .parallel import call, run_jobs

    cfg.check()
    out = Path(out)
    if resume:
        check_saved_settings(out, asdict(cfg), "semi-supervised study")
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)
    splits = _splits(cfg)  # data errors and the checks that need the data, before a file is written
    cfg.check_data(splits)
    start = time.perf_counter()
    # under torchrun: every run data-parallel on all ranks, one after the other; rank 0 writes the study
    jobs = 1 if world_size() > 1 else jobs
    with ranks_folder(out, overwrite=overwrite, resume=resume, resumable=(out / "config.json").is_file) as writes:
        if writes:
            write_json(out / "config.json", {"folder": "semisup", **asdict(cfg)})
        calls = semisup_calls(cfg, out, resume=resume)
        bar = (
            progress_bar(total=len(calls), unit="run", desc="semi-supervised runs", dynamic_ncols=True)
            if progress and writes
            else None
        )
        try:
            runs = list(run_jobs(call, calls, jobs=jobs, progress=bar))
        finally:
            if bar is not None:
                bar.close()
        results = semisup_finish(cfg, out, runs, start) if writes else None
    return results if results is not None else read_json_object(out / "results.json")


def semisup_calls(cfg: SemisupConfig, out: Path, *, resume: bool = False) -> list[dict[str, Any]]:
    """The runs of a study as :func:`valleys.app.parallel.call` arguments (``fn`` is :func:`semisup_one`), one
    per consistency term and seed, into ``out/<consistency>/seed-<s>``; the demo runs them in its own pool."""
    return [
        {
            "fn": semisup_one,
            "cfg": cfg,
            "consistency": c,
            "seed": s,
            "folder": out / c / f"seed-{s}",
            "resume": resume,
            "progress": False,
        }
        for c in cfg.consistency
        for s in cfg.seeds
    ]


def semisup_finish(
    cfg: SemisupConfig, out: Path, runs: list[dict[str, Any]], start: float | None = None
) -> dict[str, Any]:
    """Summarise finished runs (:func:`semisup_calls`' results, in order) into ``out``: ``results.json``,
    ``figures/`` and ``report.md``; returns what ``results.json`` holds."""
    from ..core.checkpoint import write_json, write_text

    results: dict[str, Any] = {
        "folder": "semisup",
        "settings": asdict(cfg),
        "l": cfg.l,
        "summary": summarise(runs, cfg.consistency),
        "runs": runs,
    }
    results["claims"] = claims(runs)
    results["claim_rows"] = claim_rows(runs)
    figures = _figures(cfg, out)
    results["figures"] = [str(f.relative_to(out)) for f in figures]
    results["timing"] = {"total_s": time.perf_counter() - start if start is not None else None}
    write_json(out / "results.json", results)
    write_text(out / "report.md", report(cfg, results, figures, out))
    return results


def _figures(cfg: SemisupConfig, out: Path) -> list[Path]:
    try:
        from .plots import plot_error_curves, plot_travel
    except ImportError:
        return []
    figures = []
    from .config import read_epoch_log

    logs = {c: [read_epoch_log(out / c / f"seed-{s}") for s in cfg.seeds] for c in cfg.consistency}
    for c in cfg.consistency:
        curves: dict[str, list] = {}
        for kind in MODEL_KINDS:
            prefix = "" if kind == "student" else f"{kind}_"
            runs = [
                [(h["epoch"], 1 - h[f"{prefix}test_accuracy"]) for h in log if f"{prefix}test_accuracy" in h]
                for log in logs[c]
            ]
            if any(runs):
                curves[_LABELS[kind]] = runs
        figures.append(
            plot_error_curves(
                curves,
                out / "figures" / f"error-{c}.png",
                marker_epoch=cfg.l - cfg.cycle,
                title=f"{cfg.model} on {cfg.dataset}, {cfg.labels_per_class} labels per class, consistency {c}: test "
                f"error (mean of {len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''})",
            )
        )
    travel = {
        c: [
            [(h["epoch"], h["travel_distance"], h["travel_disagreement"]) for h in log if "travel_distance" in h]
            for log in logs[c]
        ]
        for c in cfg.consistency
    }
    figures.append(
        plot_travel(
            travel,
            out / "figures" / "travel.png",
            marker_epoch=cfg.l - cfg.cycle,
            title=f"How far the student travels per epoch ({cfg.model} on {cfg.dataset})",
        )
    )
    return figures


def summary_lines(cfg: SemisupConfig, results: dict[str, Any]) -> list[str]:
    """The settings in words, the table (mean ± std over seeds) and the claims, as Markdown lines."""
    lines = [
        f"`{cfg.model}` on `{cfg.dataset}` with {cfg.labels_per_class} labels per class (drawn per seed; the "
        "rest of the training split"
        + (f" of a {cfg.train_subset:,}-example subset" if cfg.train_subset else "")
        + f" unlabelled, the validation split held out), batches of {cfg.batch_size} "
        f"with {cfg.labelled_batch_size} labelled, {cfg.epochs} epochs: cosine from LR {cfg.lr:g} (reaching 0 "
        f"at epoch {cfg.l + cfg.cycle}) over {cfg.l} epochs, then cycles of {cfg.cycle} epochs replaying its "
        f"last {cfg.cycle} (epoch {cfg.l} itself: {cfg.cosine_end}). SWA averages at every cycle end, fast-SWA "
        f"every {cfg.fast_swa_every} {cfg.fast_swa_unit} from epoch {cfg.l - cfg.cycle} (first average: "
        f"{cfg.fast_swa_start}). Consistency loss `{cfg.consistency_loss}` between softmax outputs, weight "
        f"{cfg.consistency_weight:g} ramped up over {cfg.rampup:g} epochs ({cfg.ramp_epoch} epoch); labelled "
        f"cross-entropy normalised by the {'whole batch' if cfg.ce_normalisation == 'batch' else 'labelled part'}; "
        f"mean-teacher EMA decay {cfg.ema_decay}. Seeds {cfg.seeds}; mean ± std over seeds; test split, "
        "validation error beside it.",
        "",
        "| consistency | model | test error (%) | NLL | ECE | val error (%) |",
        "|---|---|---|---|---|---|",
    ]
    for c, kinds in results["summary"].items():
        for kind, st in kinds.items():
            cells = [cell(st[k], k) for k in ("error", "nll", "ece", "val_error")]
            lines.append(f"| {c} | {_LABELS[kind]} | " + " | ".join(cells) + " |")
    return (
        lines
        + [
            "",
            "The claims of Athiwaratkun et al. (2019) on test error. Verdict: the paired t-test over seeds at "
            "the two-sided 5% level (Student's t with n - 1 degrees of freedom), with the difference these seeds "
            "detect at 80% power.",
            "",
        ]
        + results["claims"]
        + [""]
    )


def report(cfg: SemisupConfig, results: dict[str, Any], figures: list[Path], out: Path) -> str:
    """The Markdown report of a study: settings, the table, the claims, the figures."""
    lines = ["# Semi-supervised learning: consistency regularisation, SWA and fast-SWA", ""]
    lines += summary_lines(cfg, results)
    for f in figures:
        name = f.stem
        caption = (
            "How far the student moves between consecutive epochs: the Euclidean distance in weight space "
            "and the share of unlabelled inputs whose predicted class changes (slide 35)."
            if name == "travel"
            else f"Test error against epoch, consistency `{name[6:]}` (slide 36)."
        )
        lines += [caption, "", f"![{name}]({f.relative_to(out)})", ""]
    return "\n".join(lines)


def _errors(runs: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str]) -> tuple[list[float], list[float]]:
    """The per-seed test errors of ``a`` and ``b`` (``(consistency, model)``), over the seeds both have."""
    err = {
        (r["consistency"], kind, r["seed"]): 1 - m["test"]["accuracy"] for r in runs for kind, m in r["metrics"].items()
    }
    seeds = sorted({s for (c, k, s) in err if (a[0], a[1], s) in err and (b[0], b[1], s) in err})
    return [err[(*a, s)] for s in seeds], [err[(*b, s)] for s in seeds]


def claim_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims of Athiwaratkun et al. (2019) on these runs as :func:`valleys.app.claims.paired` rows on test
    error (the demo's claims table takes them as they are): consistency beats supervised-only on the same
    labels, SWA and fast-SWA improve on their base model, fast-SWA improves on SWA."""
    rows = []
    present = {(r["consistency"], kind) for r in runs for kind in r["metrics"]}

    def add(text: str, a: tuple[str, str], b: tuple[str, str]) -> None:
        ea, eb = _errors(runs, a, b)
        rows.append(paired(f"semi-supervised: {text}", "-".join(a), ea, "-".join(b), eb, metric="test error"))

    for c in ("pi", "mean-teacher"):
        if (c, "student") not in present:
            continue
        if ("none", "student") in present:
            add(f"{c} beats supervised-only on the same labels", (c, "student"), ("none", "student"))
        for kind in ("swa", "fastswa"):
            if (c, kind) in present:
                add(f"{c}: {_LABELS[kind]} improves on its base model", (c, kind), (c, "student"))
        if (c, "swa") in present and (c, "fastswa") in present:
            add(f"{c}: fast-SWA improves on SWA", (c, "fastswa"), (c, "swa"))
    return rows


def claims(runs: list[dict[str, Any]]) -> list[str]:
    """:func:`claim_rows` as Markdown list lines: the two mean test errors, their paired difference over seeds
    ± its standard error, the verdict and the power of that many seeds."""
    out = []
    for r in claim_rows(runs):
        spread = f" ± {100 * r['se']:.2f}" if not math.isnan(r["se"]) else ""
        n = r["n"]
        power = ""
        if n > 1 and not math.isnan(r["detectable"]):
            need = r["seeds_needed"]
            power = f"; detectable at 80% power: {100 * r['detectable']:.2f} points, seeds for this difference: " + (
                str(need) if need is not None else "> 10,000"
            )
        out.append(
            f"- {r['claim'][len('semi-supervised: ') :]}: {r['verdict']} ({100 * r['a_mean']:.2f}% against "
            f"{100 * r['b_mean']:.2f}%, difference {100 * r['difference']:+.2f}{spread} points over {n} "
            f"seed{'s' if n > 1 else ''}{power})"
        )
    return out or ["- (run with --consistency none and pi or mean-teacher to check them)"]
