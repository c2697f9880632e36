"""``valleys regression``: the UCI regression protocol of Izmailov et al. (2019, "Subspace Inference for
Bayesian Deep Learning", UAI) and Maddox et al. (2019, "A Simple Baseline for Bayesian Uncertainty in Deep
Learning", NeurIPS), written as one folder.

For every dataset and every 90/10 split ``i`` (inputs and targets standardised with the training split's
statistics, a validation tenth carved from the training rows): an SGD network (``--method sgd``: the LR
decays to 1% of its start) and a SWAG run (constant-LR collection over the second half of the epochs) of
the same Gaussian MLP; from the SWAG run its SWA mean and its SWAG predictive; then subspace inference
around the SWA mean in the PCA subspace of the SWAG deviations (and a random subspace with ``--spaces``),
with each ``--inference`` (ESS, VI, NUTS). The predictive of every method is a Gaussian: the network's
``(mean, variance)``, or for a set of weight samples their moment-matched mixture (``mean = E_s mu_s``,
``var = E_s (sigma_s^2 + mu_s^2) - mean^2``). Reported in the target's units: RMSE, the mean test negative
log-likelihood (NLL; the papers' "test log-likelihood" is its negative) and the coverage of the central 95%
interval ``mean +- 1.96 sqrt(var)``; then mean and standard error over splits.

On the 1-D toy (``--datasets toy1d``) it also draws the predictive (mean and +-2 sigma) over a dense input
grid for each method (Izmailov et al. 2019, Fig. 5; slide 32 of the talk): the uncertainty of a good
posterior grows in the gap between the two clusters of inputs.

Layout of ``--out``: ``config.json``, ``results.json`` (per split and summarised), ``report.md``,
``figures/``, and one run folder per dataset, split and method (``<dataset>/split-<i>/<method>/``); with
``--resume`` the finished ones are read back instead of redone.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..zoo.catalog import REGRESSION_DATASETS
from .options import setting

__all__ = ["RegressionProtocol", "regression_protocol", "method_names"]


@dataclass
class RegressionProtocol:
    """Settings of :func:`regression_protocol` (see ``valleys regression --help``)."""

    datasets: list[str] = setting(
        ["diabetes", "concrete", "boston"],
        "regression sets (default: {default})",
        nargs="+",
        choices=REGRESSION_DATASETS,
    )
    splits: int = setting(10, "random 90/10 splits per dataset", check="positive")
    model: str = setting(
        "mlp",
        "the network: mlp (the Gaussian-head MLP) or your own factory (module.path:factory or file.py:factory, "
        "called without arguments) returning a module whose output is (N, 2) = (mean, variance)",
    )
    epochs: int = setting(200, "epochs of each network", check="positive")
    lr: float = setting(0.01, "initial LR (SGD decays it; SWAG keeps it)", check="positive")
    swa_lr: float | None = setting(None, "SWAG's constant collection LR (default: --lr)", check="positive")
    wd: float = setting(1e-4, "weight decay", check="non_negative")
    batch_size: int = setting(32, "minibatch size", check="positive")
    heteroscedastic: bool = setting(
        True, "one learned noise variance (default: the variance predicted per input)", off="homoscedastic"
    )
    swag_rank: int = setting(20, "SWAG deviations collected (K)", check="positive")
    samples: int = setting(30, "samples averaged by SWAG and subspaces", check="positive")
    rank: int = setting(5, "subspace dimension k", check="positive")
    spaces: list[str] = setting(["pca"], "subspaces", nargs="+", choices=("pca", "random"))
    inference: list[str] = setting(
        ["ess", "vi"],
        "samplers in each subspace (nuts needs valleys[pyro])",
        nargs="+",
        choices=("ess", "vi", "flow", "nuts"),
    )
    temperature: list[float] = setting(
        [1.0], "candidate temperatures, chosen per split on validation NLL", nargs="+", check="positive"
    )
    prior_scale: list[float] = setting(
        [1.0, 3.0, 10.0], "candidate prior scales, chosen per split on validation NLL", nargs="+", check="positive"
    )
    burn_in: int = setting(20, "ESS steps discarded first", check="non_negative")
    vi_steps: int = setting(1000, "VI optimisation steps", check="positive")
    warmup: int = setting(100, "NUTS warm-up steps", check="non_negative")
    data_root: str | None = setting(None, "the folder of --datasets uci (UCI layout)", check="path")
    seed: int = setting(0, "base seed (split i uses seed + i)", check="seed")

    def check(self) -> None:
        """Refuse bad values before any work (``ValueError`` naming the flag)."""
        from ..zoo.catalog import REGRESSION_DATASETS
        from .subspace import INFERENCE, SubspaceConfig

        if not self.datasets:
            raise InputError("--datasets needs at least one dataset")
        if ":" in self.model:
            from .user_code import absolute_reference

            self.model = absolute_reference(self.model, "--model")
        elif self.model != "mlp":
            raise InputError(
                f"--model must be mlp (the Gaussian-head MLP) or your own factory (module.path:factory or "
                f"file.py:factory), got {self.model!r}"
            )
        for d in self.datasets:
            if d not in REGRESSION_DATASETS:
                raise InputError(f"unknown regression dataset {d!r}; valid: {', '.join(REGRESSION_DATASETS)}")
        if "uci" in self.datasets and not self.data_root:
            raise InputError("--datasets uci needs --data-root FOLDER (a folder in the UCI layout)")
        if self.data_root is not None and "uci" not in self.datasets:
            raise InputError(
                f"--data-root {self.data_root} is read only by --datasets uci; the built-in sets "
                f"({', '.join(self.datasets)}) ship with valleys: drop --data-root"
            )
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise InputError(f"--data-root {self.data_root} is not a folder")
        if len(set(self.datasets)) != len(self.datasets):
            raise InputError(f"--datasets lists a dataset twice: {self.datasets}")
        for s in self.spaces:
            if s not in ("pca", "random"):
                raise InputError(f"--spaces takes pca and random, got {s!r}")
        for inf in self.inference:
            INFERENCE.get(inf)  # an unknown name: InputError listing the valid ones
        if "nuts" in self.inference:
            from ..core.optional import require

            require("pyro", "pyro")
        for name in ("splits", "epochs", "batch_size", "samples", "rank", "vi_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if not isinstance(self.swag_rank, int) or self.swag_rank < 2:
            raise InputError(
                f"--swag-rank must be an integer >= 2 (the PCA subspace needs deviations), got {self.swag_rank!r}"
            )
        if self.rank > self.swag_rank:
            raise InputError(
                f"--rank {self.rank} is larger than the {self.swag_rank} SWAG deviations collected "
                f"(--swag-rank); choose --rank at most {self.swag_rank}"
            )
        collected = min(self.swag_rank, self.epochs - self.epochs // 2)  # one deviation per epoch, second half
        if self.rank > collected - 1:  # the first deviation is zero (w_1 - mean_1): collected - 1 directions
            raise InputError(
                f"--rank {self.rank} needs at least {self.rank + 1} SWAG deviations, but {self.epochs} "
                f"epochs with --swag-rank {self.swag_rank} collect {collected}; raise --epochs or "
                "lower --rank"
            )
        for name in ("lr", "swa_lr"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InputError(f"--{name.replace('_', '-')} must be finite and > 0, got {v!r}")
        if not (math.isfinite(self.wd) and self.wd >= 0):
            raise InputError(f"--wd must be finite and >= 0, got {self.wd!r}")
        SubspaceConfig(
            run="-",
            rank=self.rank,
            inference=self.inference[0] if self.inference else "ess",
            samples=self.samples,
            burn_in=self.burn_in,
            temperature=self.temperature,
            prior_scale=self.prior_scale,
            vi_steps=self.vi_steps,
            warmup=self.warmup,
        ).check()


def method_names(cfg: RegressionProtocol) -> list[str]:
    """The methods compared, in table order: ``sgd``, ``swa``, ``swag``, then ``<space>-<inference>``."""
    return ["sgd", "swa", "swag"] + [f"{s}-{i}" for s in cfg.spaces for i in cfg.inference]


def _train_config(cfg: RegressionProtocol, dataset: str, split: int, method: str):
    from .config import TrainConfig

    return TrainConfig(
        dataset=dataset,
        model=cfg.model,
        method=method,
        epochs=cfg.epochs,
        lr=cfg.lr,
        wd=cfg.wd,
        swa_lr=cfg.swa_lr if method == "swag" else None,
        batch_size=cfg.batch_size,
        heteroscedastic=cfg.heteroscedastic,
        rank=cfg.swag_rank,
        samples=cfg.samples,
        uci_split=split,
        seed=cfg.seed + split,
        data_root=cfg.data_root,
        checkpoint_every=max(1, cfg.epochs // 4),  # a killed study loses at most a quarter of a run
        eval_every=cfg.epochs,
    )


def _done(folder: Path, name: str = "results.json") -> dict[str, Any] | None:
    """The finished step's results in ``folder``, or ``None`` when it is missing or unreadable (to be redone)."""
    from .config import ConfigError, read_json_object

    try:
        return read_json_object(folder / name)
    except (FileNotFoundError, ConfigError):
        return None


def _one_split(
    cfg: RegressionProtocol, dataset: str, split: int, root: Path, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """Every method on one split; each method's run folder under ``root``. Returns method -> result."""
    from .config import read_run_config
    from .evaluate import evaluate_run
    from .subspace import SubspaceConfig, subspace_run
    from .train import train_run

    out: dict[str, Any] = {}
    for method in ("sgd", "swag"):
        folder = root / method
        res = _done(folder) if resume else None
        if res is None:  # a run stopped part-way continues from its checkpoint
            again = resume and (folder / "checkpoint.safetensors").is_file() and (folder / "config.json").is_file()
            run_cfg = read_run_config(folder) if again else _train_config(cfg, dataset, split, method)
            res = train_run(run_cfg, folder, overwrite=not again, resume=again, progress=False)
        out[method] = {
            "test": res["metrics"]["test"],
            "val": res["metrics"]["val"],
            "train_s": res.get("timing", {}).get("train_s"),
        }
    swa = (_done(root / "swag", "evaluation-swa.json") if resume else None) or evaluate_run(
        root / "swag", as_method="swa", write=True
    )
    out["swa"] = {"test": swa["metrics"]["test"], "val": swa["metrics"]["val"]}
    for space in cfg.spaces:
        for inf in cfg.inference:
            name = f"{space}-{inf}"
            folder = root / name
            res = _done(folder) if resume else None
            if res is None:
                sc = SubspaceConfig(
                    run=str(root / "swag"),
                    space=space,
                    rank=cfg.rank,
                    inference=inf,
                    samples=cfg.samples,
                    burn_in=cfg.burn_in,
                    temperature=list(cfg.temperature),
                    prior_scale=list(cfg.prior_scale),
                    vi_steps=cfg.vi_steps,
                    warmup=cfg.warmup,
                    chains=2 if inf == "nuts" else 1,
                    seed=cfg.seed + split,
                    grid=0,
                )
                again = resume and (folder / "checkpoint.safetensors").is_file()
                res = subspace_run(sc, folder, overwrite=not again, resume=again, progress=False)
            out[name] = {
                "test": res["metrics"]["test"],
                "val": res["metrics"]["val"],
                "temperature": res["posterior"]["temperature"],
                "prior_scale": res["posterior"]["prior_scale"],
                "sampler": res["sampler"],
                "sample_s": res["timing"]["sample_s"],
            }
    return out


def summarise(per_split: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard error (std / sqrt(n), ddof 1) over splits of each method's test metrics."""
    from .report import mean_and_se

    table: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        rows = [s[m]["test"] for s in per_split if m in s]
        if not rows:
            continue
        table[m] = {}
        for k in ("rmse", "nll", "coverage_95"):
            v = [float(r[k]) for r in rows]
            mean, se = mean_and_se(v)
            table[m][k] = {"mean": mean, "se": se, "n": len(v)}
    return table


def _nuts_diagnostics(per_split: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out = {}
    for m in methods:
        if not m.endswith("-nuts"):
            continue
        diags = [s[m]["sampler"]["diagnostics"] for s in per_split if m in s]
        if not diags:
            continue
        r_hat = [max(d["r_hat"]) for d in diags if d.get("r_hat") and not any(math.isnan(v) for v in d["r_hat"])]
        n_eff = [min(d["n_eff"]) for d in diags if d.get("n_eff")]
        acc = [c["acceptance_rate"] for d in diags for c in d.get("chains", [])]
        out[m] = {
            "splits": len(diags),
            "r_hat_max": max(r_hat) if r_hat else None,
            "n_eff_min": min(n_eff) if n_eff else None,
            "divergences": sum(int(d.get("divergences", 0)) for d in diags),
            "acceptance_mean": sum(acc) / len(acc) if acc else float("nan"),
        }
    return out


def regression_protocol(
    cfg: RegressionProtocol,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the protocol (module docstring) into ``out``; returns what ``results.json`` holds. ``jobs``: worker
    processes over the (dataset, split) pairs (:mod:`valleys.app.parallel`; 1: all in this process)."""
    from ..core.checkpoint import write_json, write_text
    from ..core.optional import progress_bar
    from .config import check_saved_settings
    from .folders import output_guard, prepare_run_dir
    from .parallel import run_jobs

    cfg.check()
    out = Path(out)
    if resume:
        check_saved_settings(out, asdict(cfg), "regression protocol")
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)
    methods = method_names(cfg)
    start = time.perf_counter()
    with output_guard(out, resumable=(out / "config.json").is_file):
        prepare_run_dir(out, overwrite=overwrite, resume=resume)
        write_json(out / "config.json", {"folder": "regression", **asdict(cfg)})
        bar = (
            progress_bar(
                total=len(cfg.datasets) * cfg.splits, unit="split", desc="regression protocol", dynamic_ncols=True
            )
            if progress
            else None
        )
        results: dict[str, Any] = {
            "folder": "regression",
            "methods": methods,
            "datasets": {},
            "units": "target units; nll is the mean negative log-likelihood per test point",
            "settings": asdict(cfg),
        }
        try:
            calls = [
                {
                    "cfg": cfg,
                    "dataset": dataset,
                    "split": i,
                    "root": out / dataset / f"split-{i}",
                    "resume": resume,
                    "progress": False,
                }
                for dataset in cfg.datasets
                for i in range(cfg.splits)
            ]
            done = list(run_jobs(_one_split, calls, jobs=jobs, progress=bar))  # splits are independent
            for dataset in cfg.datasets:
                per_split = [d for c, d in zip(calls, done, strict=True) if c["dataset"] == dataset]
                results["datasets"][dataset] = {
                    "summary": summarise(per_split, methods),
                    "nuts": _nuts_diagnostics(per_split, methods),
                    "splits": per_split,
                }
        finally:
            if bar is not None:
                bar.close()
        figures = []
        if "toy1d" in cfg.datasets:
            figures.append(_toy_figure(cfg, out))
        results["timing"] = {"total_s": time.perf_counter() - start}
        write_json(out / "results.json", results)
        write_text(out / "report.md", _report(cfg, results, [f for f in figures if f is not None], out))
    return results


def toy_predictive(run_dir: Path, kind: str, xs: Any) -> tuple[Any, Any]:
    """The predictive mean and standard deviation (target units) of one method's folder of the toy protocol
    at the inputs ``xs`` (original units): ``kind`` is ``sgd``, ``swa``, ``swag`` or a subspace folder."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from ..core.checkpoint import load_checkpoint
    from ..methods.subspace import Subspace
    from ..zoo.data import make_loader
    from .evaluate import load_run_model, regression_predictive
    from .registry import get_method

    swag_dir = run_dir.parent / "swag"
    model, cfg, splits = load_run_model(run_dir if kind == "sgd" else swag_dir)
    x_mean, x_std = splits.info["x_mean"], splits.info["x_std"]
    x = torch.tensor((np.asarray(xs, dtype=float)[:, None] - x_mean) / x_std, dtype=torch.float32)
    loader = make_loader(TensorDataset(x, torch.zeros(len(x))), 1000)
    if kind in ("sgd", "swa", "swag"):
        method = "sgd" if kind == "sgd" else kind
        draw = get_method(method).predictive(run_dir if kind == "sgd" else swag_dir, cfg, model, cfg.samples).draw
        weights = draw()
    else:
        state, header = load_checkpoint(run_dir / "subspace.safetensors")
        sub = Subspace.from_state({k: v for k, v in state.items() if k != "samples"}, header)
        weights = list(sub.to_weights(state["samples"].to(sub.basis.dtype)))
    mean, var, _, _ = regression_predictive(model, weights, loader, cfg, splits)
    return mean.numpy(), var.sqrt().numpy()


def _toy_figure(cfg: RegressionProtocol, out: Path) -> Path | None:
    try:
        from .plots import plot_toy_regression
    except ImportError:
        return None
    import numpy as np

    from ..zoo.regression import toy1d_curve, toy1d_data

    xs = np.linspace(-1.6, 1.6, 400)
    root = out / "toy1d" / "split-0"
    panels = {}
    for kind in method_names(cfg):
        folder = root / ("swag" if kind in ("swa", "swag") else kind)
        panels[kind] = toy_predictive(folder if kind not in ("swa", "swag") else root / "swag", kind, xs)
    x, y = toy1d_data(100, seed=0)
    return plot_toy_regression(
        xs,
        panels,
        x[:, 0],
        y,
        out / "figures" / "toy1d.png",
        truth=toy1d_curve,
        title="1-D regression with a gap: predictive mean ± 2 sd",
    )


def _num(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _report(cfg: RegressionProtocol, results: dict[str, Any], figures: list[Path], out: Path) -> str:
    labels = {"sgd": "SGD", "swa": "SWA", "swag": "SWAG"}
    lines = [
        "# Regression protocol: SGD, SWA, SWAG and subspace inference",
        "",
        f"Gaussian MLP (one hidden layer of 50, {'heteroscedastic' if cfg.heteroscedastic else 'homoscedastic'} "
        f"noise), {cfg.epochs} epochs, LR {cfg.lr}, weight decay {cfg.wd}, batch {cfg.batch_size}; SWAG "
        f"collects {cfg.swag_rank} deviations over the second half at constant LR {cfg.swa_lr or cfg.lr}; "
        f"subspaces of rank "
        f"{cfg.rank} around the SWA mean, {cfg.samples} samples; temperature and prior scale chosen per "
        f"split on validation NLL among T in {cfg.temperature} and s in {cfg.prior_scale}. "
        f"{cfg.splits} random 90/10 splits per dataset; mean ± standard error over splits, test set, "
        "target units. Coverage: fraction of test targets inside the central 95% predictive interval "
        "(best: closest to 0.95).",
        "",
    ]
    for dataset, d in results["datasets"].items():
        lines += [f"## {dataset}", "", "| method | RMSE | NLL | 95% coverage |", "|---|---|---|---|"]
        for m, row in d["summary"].items():
            lines.append(
                f"| {labels.get(m, m.replace('-', ' + ').upper())} | "
                + " | ".join(f"{row[k]['mean']:.3f} ± {row[k]['se']:.3f}" for k in ("rmse", "nll", "coverage_95"))
                + " |"
            )
        for m, diag in d.get("nuts", {}).items():
            lines += [
                "",
                f"NUTS diagnostics ({m}, 2 chains per split, {diag['splits']} splits): largest r_hat "
                f"{_num(diag['r_hat_max'], '.3f')}, smallest n_eff {_num(diag['n_eff_min'], '.0f')} (over "
                "coordinates and splits), "
                f"{diag['divergences']} divergences, "
                f"mean acceptance {diag['acceptance_mean']:.3f}.",
            ]
        lines.append("")
    for f in figures:
        lines += [
            "## 1-D regression with a gap (slide 32)",
            "",
            "Predictive mean and ±2 standard deviations of each method on the toy's split 0; the points are "
            "the training data.",
            "",
            f"![1-D toy]({f.relative_to(out)})",
            "",
        ]
    return "\n".join(lines)
