"""Connect two trained runs by a curve: train it, evaluate it against the straight segment, report.

A curve folder holds ``config.json`` (``"folder": "curve"``), ``metrics.jsonl`` and ``checkpoint.safetensors`` of
the curve training, ``curve.safetensors`` (the control points), ``results.json`` (per-point arrays and
min/max/arc-length averages for the segment and the curve), ``report.md`` and ``figures/path.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.checkpoint import (
    CheckpointError,
    check_model_signature,
    checkpoint_field,
    load_checkpoint,
    save_checkpoint,
    write_json,
    write_text,
)
from ..core.distributed import world_size
from ..core.weights import WeightSpace
from ..errors import InputError, MissingFileError
from ..geometry.curves import CURVE_KINDS, Curve, CurveModel
from ..geometry.paths import BN_POLICIES, evaluate_path, segment
from ..training.schedules import SWASchedule
from ..training.trainer import CheckpointPolicy, DistributedPolicy, Trainer
from .config import (
    SEED_MAX,
    ConfigError,
    TrainConfig,
    check_types,
    config_from_dict,
    read_json_object,
    settings_from_dict,
)
from .evaluate import load_run_model
from .folders import prepare_run_dir, ranks_folder, refuse_reading_from
from .run_data import build_run_model, load_splits, split_loader

__all__ = [
    "ConnectConfig",
    "connect_config_from_flags",
    "connect_runs",
    "evaluate_curve_dir",
    "load_endpoint",
    "read_curve_config",
    "train_curve",
]


@dataclass
class ConnectConfig:
    """Settings of ``valleys connect`` (curve training follows the SGD schedule shape, decaying to 1%).

    ``epochs`` and ``lr`` default to ``None``: twice the first endpoint's training epochs and its initial LR
    (resolved when the curve is trained and written to the folder's ``config.json``). On MNIST-1D the
    curve's maximum validation error stopped improving past the networks' own budget at their LR, while its
    train loss kept falling up to about twice it (experiments/curve_budget.py; README, "Mode connectivity").
    """

    run_a: str
    run_b: str
    kind: str = "bezier"
    bends: int = 3
    epochs: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    points: int = 61
    bn: str = "recompute"
    checkpoint_every: int = 10

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        check_types(self)
        if not (self.run_a.strip() and self.run_b.strip()):
            raise InputError("run_a and run_b must be paths, got an empty string")
        if self.kind not in CURVE_KINDS:
            raise InputError(f"unknown curve kind {self.kind!r}; choose one of {', '.join(CURVE_KINDS)}")
        if self.bends < 2:
            raise InputError(f"a curve needs at least 2 control points, got --bends {self.bends}")
        if (
            (self.epochs is not None and self.epochs < 1)
            or (self.lr is not None and not 0 < self.lr < math.inf)
            or self.batch_size < 1
            or self.checkpoint_every < 1
        ):
            raise InputError("epochs, lr, batch-size and checkpoint-every must be positive (and finite)")
        if self.points < 2:
            raise InputError(f"points must be at least 2, got {self.points}")
        if not 0 <= self.wd < math.inf:
            raise InputError(f"wd must be finite and >= 0, got {self.wd}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        if self.bn not in BN_POLICIES:
            raise InputError(f"unknown BatchNorm policy {self.bn!r}; choose one of {', '.join(BN_POLICIES)}")


def load_endpoint(path: str | Path) -> tuple[nn.Module, TrainConfig]:
    """A trained network from a run folder or a ``model.safetensors`` file written by valleys."""
    path = Path(path)
    if path.is_dir():
        model, cfg, _ = load_run_model(path)
        return model, cfg
    state, header = load_checkpoint(path)
    if header.get("kind") != "model" or "config" not in header:
        raise CheckpointError(f"{path} is not a valleys model checkpoint (a run's model.safetensors)")
    cfg = config_from_dict(header["config"], f"{path} (its header's config)")
    model = build_run_model(cfg, load_splits(cfg))
    check_model_signature(checkpoint_field(header, "signature", path), model, str(path))
    model.load_state_dict(checkpoint_field(state, "model", path, "state"))
    return model, cfg


def _endpoints(cfg: ConnectConfig):
    model_a, cfg_a = load_endpoint(cfg.run_a)
    model_b, cfg_b = load_endpoint(cfg.run_b)
    if (cfg_a.dataset, cfg_a.model) != (cfg_b.dataset, cfg_b.model):
        raise InputError(
            f"endpoints differ: {cfg.run_a} is {cfg_a.model} on {cfg_a.dataset}, {cfg.run_b} is "
            f"{cfg_b.model} on {cfg_b.dataset}; connect two networks of one architecture and dataset"
        )
    space = WeightSpace(model_a)
    try:
        w_b = space.read(model_b)
    except ValueError as e:
        raise InputError(f"endpoints have different parameter shapes: {e}") from None
    w_a = space.read(model_a)
    if torch.equal(w_a, w_b):
        raise InputError(
            f"the two endpoints {cfg.run_a} and {cfg.run_b} are identical networks: there is nothing "
            "to connect; pass two different runs"
        )
    return model_a, model_b, cfg_a, space, w_a, w_b


def _loaders(cfg: ConnectConfig, data_cfg: TrainConfig, splits):
    return (
        split_loader(splits, "train", cfg.batch_size, shuffle=True, seed=cfg.seed),
        split_loader(splits, "train", 1000),
        split_loader(splits, "test", 1000),
    )


def connect_runs(
    cfg: ConnectConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a curve between ``cfg.run_a`` and ``cfg.run_b`` into ``out`` and evaluate it (and the segment)."""
    cfg.check()
    cfg = dataclasses.replace(cfg, run_a=str(Path(cfg.run_a).resolve()), run_b=str(Path(cfg.run_b).resolve()))
    if Path(cfg.run_a) == Path(cfg.run_b):
        raise InputError(
            f"the two endpoints are the same run ({cfg.run_a}): there is nothing to connect; pass two different runs"
        )
    out = Path(out)
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)  # a run there: refused, named so
    refuse_reading_from(out, [cfg.run_a, cfg.run_b])  # with --overwrite too
    if resume and (out / "config.json").is_file():  # continue with the budget the curve was started with
        saved = read_curve_config(out)
        cfg = dataclasses.replace(cfg, epochs=cfg.epochs or saved.epochs, lr=cfg.lr or saved.lr)
        diff = {k: (getattr(saved, k), v) for k, v in asdict(cfg).items() if getattr(saved, k) != v}
        if diff:
            raise InputError(
                f"cannot resume {out}: the settings differ from its config.json: "
                + "; ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
    model_a, model_b, data_cfg, space, w_a, w_b = _endpoints(cfg)
    cfg = dataclasses.replace(cfg, epochs=cfg.epochs or 2 * data_cfg.epochs, lr=cfg.lr or data_cfg.lr)
    splits = load_splits(data_cfg)
    if resume and not (out / "checkpoint.safetensors").is_file() and not (out / "curve.safetensors").is_file():
        raise CheckpointError(f"cannot resume: {out / 'checkpoint.safetensors'} does not exist")
    # under torchrun every rank trains the curve on its slice of each batch; rank 0 writes and evaluates
    with ranks_folder(
        out, overwrite=overwrite, resume=resume, resumable=(out / "checkpoint.safetensors").is_file
    ) as writes:
        if writes and not resume:
            write_json(out / "config.json", {"folder": "curve", **asdict(cfg), "data": asdict(data_cfg)})
        train, train_eval, test = _loaders(cfg, data_cfg, splits)
        start = time.perf_counter()
        curve = train_curve(
            model_a,
            space,
            w_a,
            w_b,
            train,
            cfg,
            out=out,
            resume=resume,
            progress=progress and writes,
            adapter=data_cfg.adapter(),
        )
        train_s = time.perf_counter() - start
        if writes:
            save_checkpoint(
                out / "curve.safetensors",
                {"control_points": curve.control_points().detach()},
                {"kind": "curve", "curve": cfg.kind, "bends": cfg.bends, "signature": space.signature()},
            )
            results = evaluate_curve_dir(
                out, progress=progress, write=False, _cache=(model_a, model_b, data_cfg, splits)
            )
            results["timing"] = {"train_s": train_s, "eval_s": results.pop("eval_s")}
            results["training"] = {"epochs": cfg.epochs, "lr": cfg.lr, "wd": cfg.wd, "batch_size": cfg.batch_size}
            write_json(out / "results.json", results)
    return results if writes else read_json_object(out / "results.json")


def train_curve(
    model: nn.Module,
    space: WeightSpace,
    w_a: Tensor,
    w_b: Tensor,
    train_loader: Iterable,
    cfg: ConnectConfig,
    *,
    out: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    adapter: ModelAdapter | None = None,
) -> Curve:
    """Train a ``cfg.kind`` curve with ``cfg.bends`` control points from ``w_a`` to ``w_b`` (Garipov et al.
    2018): SGD with momentum on the inner points, the LR decaying from ``cfg.lr`` to 1% with the SWA
    schedule's shape over ``cfg.epochs`` (both must be set), objective cross-entropy at ``w(t)`` plus
    ``0.5 cfg.wd ||w(t)||^2``. Trains on a copy of ``model`` (a train-mode forward updates BatchNorm
    buffers, and the endpoint's own statistics are needed afterwards). With ``out``, checkpoints and the
    epoch log go there (and ``resume`` continues from its checkpoint). ``adapter`` (a
    :class:`valleys.core.adapter.ModelAdapter`) says how batches become model calls (dict batches as keyword
    arguments), which output is the prediction, where the targets are and which loss to use (default:
    tensor or tuple batches, the output itself, cross-entropy)."""
    torch.manual_seed(cfg.seed)
    curve = Curve(w_a, w_b, kind=cfg.kind, bends=cfg.bends, sizes=[s.numel for s in space.slots])
    if cfg.bends == 2:
        return curve  # the straight segment: nothing to train
    # the loss depends on w(t) only through the returned prediction: loss_through_output holds
    cm = CurveModel(copy.deepcopy(model), curve, space, loss_through_output=True, adapter=adapter)
    opt = torch.optim.SGD(curve.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    files = (
        None
        if out is None
        else CheckpointPolicy(
            out / "checkpoint.safetensors",
            every=cfg.checkpoint_every,
            header={"config": asdict(cfg)},
            log=out / "metrics.jsonl",
        )
    )
    objective = cm.l2_loss(nn.CrossEntropyLoss() if adapter is None else adapter.loss_fn, cfg.wd)
    # CurveModel already picks the prediction out of the network's output; the trainer reads the batch
    curve_adapter = (
        ModelAdapter(loss=objective)
        if adapter is None
        else ModelAdapter(input=lambda batch: _call_input(adapter, batch), target=adapter.targets, loss=objective)
    )
    dist_policy = None
    if world_size() > 1:  # DDP averages the curve's gradients; the L2 term goes in after that, before the step
        cm.defer_l2 = True
        opt.register_step_pre_hook(lambda *_: cm.apply_pending_l2())
        # the inner points are per-tensor slices of one control-point storage: their strides differ from
        # DDP's bucket views, which costs one copy per bucket and nothing else
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        dist_policy = DistributedPolicy(ignore=cm.ddp_ignore())
    Trainer(
        cm,
        opt,
        train_loader,
        cfg.epochs,
        adapter=curve_adapter,
        schedule=SWASchedule(cfg.lr, cfg.epochs, 0.01 * cfg.lr),
        checkpoint=files,
        distributed=dist_policy,
        seed=cfg.seed,
    ).fit(resume=out / "checkpoint.safetensors" if resume and out is not None else None, progress=progress)
    return curve


def _call_input(adapter: ModelAdapter, batch: Any) -> Any:
    """The adapter's ``(args, kwargs)`` as the one input value the trainer expands (a tuple or a dict)."""
    args, kwargs = adapter.inputs(batch)
    if args and kwargs:
        raise InputError(
            "curve training takes positional or keyword model inputs, not both; pass input=... to the adapter"
        )
    if kwargs:
        return kwargs
    return args[0] if len(args) == 1 else args


def read_curve_config(curve_dir: str | Path) -> ConnectConfig:
    """The :class:`ConnectConfig` of a curve folder's ``config.json``; errors name the file (a training run's
    folder is refused: it is not a curve folder)."""
    path = Path(curve_dir) / "config.json"
    if not path.is_file():
        raise MissingFileError(
            f"{curve_dir} is not a curve folder: it has no config.json (make one with 'valleys connect')"
        )
    raw = read_json_object(path)
    if raw.get("folder") != "curve":
        raise ConfigError(
            f"{curve_dir} is not a curve folder (made by 'valleys connect'); {path} describes a training run"
        )
    cfg = settings_from_dict(ConnectConfig, raw, path, ignore=("folder", "data"))
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def load_curve(curve_dir: Path, space: WeightSpace) -> Curve:
    state, header = load_checkpoint(curve_dir / "curve.safetensors")
    if header.get("kind") != "curve" or not isinstance(state.get("control_points"), torch.Tensor):
        raise CheckpointError(f"{curve_dir / 'curve.safetensors'} is not a curve checkpoint")
    path = curve_dir / "curve.safetensors"
    if checkpoint_field(header, "signature", path) != space.signature():
        raise CheckpointError(f"{curve_dir / 'curve.safetensors'} belongs to another architecture than its endpoints")
    pts = checkpoint_field(state, "control_points", path, "state")
    curve = Curve(
        pts[0],
        pts[-1],
        kind=checkpoint_field(header, "curve", path),
        bends=int(checkpoint_field(header, "bends", path)),
        sizes=[s.numel for s in space.slots],
    )
    curve.set_inner(pts[1:-1])
    return curve


def evaluate_curve_dir(
    curve_dir: str | Path, *, points: int | None = None, progress: bool = False, write: bool = True, _cache=None
) -> dict[str, Any]:
    """Evaluate a curve folder's curve and the straight segment at ``points`` evenly spaced t (default: the
    folder's setting, 61), writing ``evaluation.json`` (or returning ``results.json`` content to
    :func:`connect_runs`), the figure ``figures/path.png`` and ``report.md``."""
    curve_dir = Path(curve_dir)
    cfg = read_curve_config(curve_dir)
    if points is not None:
        cfg = dataclasses.replace(cfg, points=points)
    cfg.check()
    if _cache is None:
        model_a, model_b, data_cfg, space, _, _ = _endpoints(cfg)
        splits = load_splits(data_cfg)
    else:
        model_a, model_b, data_cfg, splits = _cache
        space = WeightSpace(model_a)
    curve = load_curve(curve_dir, space)
    _, train_eval, test = _loaders(cfg, data_cfg, splits)
    ts = torch.linspace(0, 1, cfg.points).tolist()
    start = time.perf_counter()
    kw = dict(
        train_loader=train_eval, test_loader=test, bn=cfg.bn, space=space, progress=progress, adapter=data_cfg.adapter()
    )
    seg = evaluate_path(model_a, segment(curve.start, curve.end), ts, **kw)
    cur = evaluate_path(model_a, curve.point, ts, **kw)
    ends = {
        "a": {k: getattr(seg, k)[0] for k in ("train_loss", "train_error", "test_error", "test_nll")},
        "b": {k: getattr(seg, k)[-1] for k in ("train_loss", "train_error", "test_error", "test_nll")},
    }
    results = {
        "kind": cfg.kind,
        "bends": cfg.bends,
        "points": cfg.points,
        "dataset": data_cfg.dataset,
        "model": data_cfg.model,
        "endpoints": ends,
        "segment": dataclasses.asdict(seg),  # the record written to evaluation.json: plain dicts
        "curve": dataclasses.asdict(cur),
        "barrier": {
            "segment_max_test_error": seg.summary["test_error"]["max"],
            "curve_max_test_error": cur.summary["test_error"]["max"],
            "worse_endpoint_test_error": max(ends["a"]["test_error"], ends["b"]["test_error"]),
            "segment_max_test_nll": seg.summary["test_nll"]["max"],
            "curve_max_test_nll": cur.summary["test_nll"]["max"],
            "worse_endpoint_test_nll": max(ends["a"]["test_nll"], ends["b"]["test_nll"]),
        },
        "eval_s": time.perf_counter() - start,
    }
    _figure_and_report(curve_dir, cfg, results)
    if write:
        eval_s = results.pop("eval_s")
        write_json(curve_dir / "evaluation.json", results)
        results["eval_s"] = eval_s
    return results


def _figure_and_report(curve_dir: Path, cfg: ConnectConfig, res: dict[str, Any]) -> None:
    from .plots import plot_paths

    fig = plot_paths(
        {"segment": res["segment"], f"{cfg.kind} curve": res["curve"]},
        curve_dir / "figures" / "path.png",
        title=f"{res['model']} on {res['dataset']}: {cfg.run_a} to {cfg.run_b}",
    )

    # regression runs have no classification error: their test column is the Gaussian NLL
    metric, scale, label = (
        ("test_nll", 1.0, "test NLL")
        if math.isnan(res["segment"]["summary"]["test_error"]["max"])
        else ("test_error", 100.0, "test error (%)")
    )

    def row(name: str, s: dict) -> str:
        return (
            f"| {name} | {s['train_loss']['min']:.4f} | {s['train_loss']['max']:.4f} | "
            f"{scale * s[metric]['min']:.4f} | {scale * s[metric]['max']:.4f} | "
            f"{scale * s[metric]['arc_mean']:.4f} |"
        )

    ends = res["endpoints"]
    end_stats = {
        k: {
            "min": min(ends["a"][k], ends["b"][k]),
            "max": max(ends["a"][k], ends["b"][k]),
            "arc_mean": (ends["a"][k] + ends["b"][k]) / 2,
        }
        for k in ("train_loss", metric)
    }
    lines = [
        f"# Mode connectivity: {cfg.run_a} to {cfg.run_b}",
        "",
        f"{cfg.kind} curve with {cfg.bends} control points trained {cfg.epochs} epochs; {cfg.points} points per "
        f"path; BatchNorm policy: {res['curve']['bn']}. Train loss is the mean NLL on the training split "
        "(without the L2 term).",
        "",
        f"| path | train loss min | train loss max | {label} min | {label} max | {label} arc mean |",
        "|---|---|---|---|---|---|",
        row("endpoints", end_stats),
        row("segment", res["segment"]["summary"]),
        row(f"{cfg.kind} curve", res["curve"]["summary"]),
        "",
        f"![loss and error along the paths]({fig.relative_to(curve_dir)})",
        "",
    ]
    write_text(curve_dir / "report.md", "\n".join(lines))


def connect_config_from_flags(flags: dict[str, Any]) -> ConnectConfig:
    """The settings of ``valleys connect`` from its flags (``None``: not given): with ``resume`` and a saved
    curve in ``out``, the saved settings (the flags given must agree with them); else both endpoints
    ``run_a`` and ``run_b`` are needed."""
    from .config import check_resume_flags

    settings = ("kind", "bends", "epochs", "lr", "wd", "seed", "points", "bn")
    given = {k: flags[k] for k in settings if flags.get(k) is not None}
    out = Path(flags["out"])
    if flags.get("resume") and (out / "config.json").is_file():  # the curve's own settings
        saved = read_curve_config(out)
        for end in ("run_a", "run_b"):
            if flags.get(end) is not None:
                given[end] = str(Path(flags[end]).resolve())
        check_resume_flags(given, asdict(saved), out / "config.json", {"run_a": "RUN_A", "run_b": "RUN_B"})
        return saved
    if flags.get("run_a") is None or flags.get("run_b") is None:
        raise InputError(
            "connect needs two endpoints RUN_A RUN_B (run folders or model.safetensors files); "
            "only --out FOLDER --resume continues a curve without them"
        )
    return ConnectConfig(flags["run_a"], flags["run_b"], **given)
