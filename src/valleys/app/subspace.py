"""``valleys subspace``: Bayesian inference in a low-dimensional subspace of a trained run's weights
(Izmailov, Maddox, Kirichenko, Garipov, Vetrov, Wilson 2019, "Subspace Inference for Bayesian Deep
Learning", UAI), written as a run folder: ``results.json``, ``subspace.safetensors`` (shift, basis and the
z samples), ``report.md`` and ``figures/``.

The subspace (``--space``): ``pca`` (the top ``--rank`` principal directions of a SWAG run's deviations,
shift at its SWA mean), ``random`` (unit-norm Gaussian directions around the run's weights) or ``curve``
(the plane of a curve folder's endpoints and midpoint). The posterior: ``-N mean nll / T + log N(z; 0, s^2
I)`` on the run's training split. Inference (``--inference``): ``ess`` (elliptical slice sampling), ``vi``
(mean-field Gaussian), ``flow`` (a RealNVP normalising flow) or ``nuts`` (Pyro). The predictive is the Bayesian
model average over the samples'
weights on the validation and test splits.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .registry import Registry

__all__ = ["SubspaceConfig", "subspace_run", "build_subspace", "SUBSPACES", "INFERENCE"]


@dataclass
class SubspaceConfig:
    """Settings of one subspace-inference run (see the module docstring); ``check()`` refuses bad values."""

    run: str
    space: str = "pca"
    rank: int = 5
    inference: str = "ess"
    samples: int = 30
    burn_in: int = 20
    thin: int = 1
    temperature: float | list[float] = 1.0  # several: chosen on the validation split
    prior_scale: float | list[float] = 1.0
    curve: str | None = None
    seed: int = 0
    bn: str = "shift"
    vi_steps: int = 1000
    vi_lr: float = 0.01
    flow_layers: int = 4
    warmup: int = 100
    chains: int = 1
    grid: int = 0

    def check(self) -> None:
        from ..methods.subspace_posterior import SUBSPACE_BN

        SUBSPACES.get(self.space)  # an unknown name: InputError listing the valid ones
        INFERENCE.get(self.inference)
        if self.bn not in SUBSPACE_BN:
            raise InputError(f"--bn must be one of {', '.join(SUBSPACE_BN)}, got {self.bn!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**63 - 1:
            raise InputError(f"--seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        if not str(self.run).strip():
            raise InputError("the run must be a path, got an empty string")
        if self.inference == "nuts" and self.samples < 4:
            raise InputError(
                f"--inference nuts needs --samples of at least 4 per chain (its convergence diagnostics need "
                f"4 draws), got {self.samples}"
            )
        for name in ("rank", "samples", "thin", "vi_steps", "chains"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        for name in ("burn_in", "warmup", "grid", "flow_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}")
        if self.grid == 1:
            raise InputError("--grid must be 0 (no density figure) or at least 2")
        for name in ("temperature", "prior_scale", "vi_lr"):
            v = getattr(self, name)
            values = v if name != "vi_lr" and isinstance(v, (list, tuple)) else [v]
            if not values:
                raise InputError(f"--{name.replace('_', '-')} needs at least one value")
            for x in values:
                if not (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0):
                    raise InputError(f"--{name.replace('_', '-')} must be a finite number > 0, got {x!r}")
        if self.space == "curve" and not self.curve:
            raise InputError("--space curve needs --curve CURVE_FOLDER (made by 'valleys connect')")
        if self.space != "curve" and self.curve:
            raise InputError(f"--curve goes with --space curve, not --space {self.space}")
        if self.space == "curve" and self.rank != 2:
            raise InputError(f"a curve subspace is a plane: --rank must be 2, got {self.rank}")
        if self.bn == "recompute" and self.inference in ("vi", "flow", "nuts"):
            raise InputError(
                f"--inference {self.inference} needs gradients in z, which a per-sample BatchNorm "
                "recompute does not give; use --bn shift"
            )


def _load_swag(run_dir: Path, model: torch.nn.Module):
    from ..core.checkpoint import CheckpointError, load_checkpoint
    from ..methods.swag import SWAG

    path = run_dir / "posterior.safetensors"
    if not path.is_file():
        raise InputError(
            f"--space pca needs a SWAG run (train it with --method swag); {run_dir} has no posterior.safetensors"
        )
    state, header = load_checkpoint(path)
    if header.get("kind") != "swag":
        raise CheckpointError(f"{path} holds no SWAG posterior")
    swag = SWAG(model, rank=int(state["swag"]["rank"]), device="cpu")
    swag.load_state_dict(state["swag"])
    return swag


def build_subspace(cfg: SubspaceConfig, model: torch.nn.Module, w_run: torch.Tensor):
    """The :class:`valleys.methods.subspace.Subspace` that ``cfg`` describes, for the run's ``model``
    (``cfg.space`` looked up in :data:`SUBSPACES`)."""
    return SUBSPACES.get(cfg.space)(cfg, model, w_run)


def _random_subspace(cfg: SubspaceConfig, model: torch.nn.Module, w_run: torch.Tensor):
    """``k`` random unit Gaussian directions around the run's weights (Izmailov et al. 2019)."""
    from ..methods.subspace import random_subspace

    return random_subspace(w_run, cfg.rank, generator=torch.Generator().manual_seed(cfg.seed))


def _pca_subspace(cfg: SubspaceConfig, model: torch.nn.Module, w_run: torch.Tensor):
    """The top ``k`` principal directions of a SWAG run's deviations, shifted to its SWA mean."""
    from ..methods.subspace import pca_subspace

    swag = _load_swag(Path(cfg.run), model)
    if swag.k < 2 or cfg.rank > swag.k:
        raise InputError(
            f"--rank {cfg.rank} is larger than the {swag.k} deviations the SWAG run {cfg.run} "
            f"collected; choose --rank at most {swag.k}"
        )
    return pca_subspace(swag.deviations, cfg.rank, shift=swag.mean.to(w_run))


def _curve_subspace(cfg: SubspaceConfig, model: torch.nn.Module, w_run: torch.Tensor):
    """The plane of a Bezier curve's ends and bend (Izmailov et al. 2019's curve subspace)."""
    from ..core.weights import WeightSpace
    from ..methods.subspace import curve_subspace
    from .connect import load_curve

    curve_dir = Path(cfg.curve)  # type: ignore[arg-type]
    if not (curve_dir / "curve.safetensors").is_file():
        raise InputError(f"--curve {curve_dir} is not a curve folder (made by 'valleys connect')")
    space = WeightSpace(model)
    try:
        curve = load_curve(curve_dir, space)
    except Exception as e:  # noqa: BLE001 - a curve of another architecture: the message says so
        raise InputError(f"--curve {curve_dir} does not fit the run {cfg.run}: {e}") from None
    with torch.no_grad():
        return curve_subspace(curve.start.detach(), curve.point(0.5).detach(), curve.end.detach())


def subspace_run(
    cfg: SubspaceConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Build the subspace, sample its posterior, average the predictions; write the run folder ``out``."""
    from ..core.checkpoint import save_checkpoint, write_json
    from ..evaluation.engine import BNPolicy
    from ..evaluation.predict import bma
    from ..methods.subspace_posterior import SubspacePosterior
    from .evaluate import regression_summary, summary_metrics
    from .folders import output_guard, prepare_run_dir, refuse_reading_from
    from .run_data import load_splits, split_loader
    from .studies.common import load_context

    cfg.check()
    out = Path(out)
    prepare_run_dir(out, overwrite=overwrite, create=False)
    refuse_reading_from(out, [cfg.run] + ([cfg.curve] if cfg.curve else []))  # with --overwrite too
    model, w_run, run_cfg, loaders, bn_loader = load_context(cfg.run)
    adapter = run_cfg.adapter()
    subspace = build_subspace(cfg, model, w_run)
    splits = load_splits(run_cfg)
    train = split_loader(splits, "train", 1000)
    start = time.perf_counter()
    candidates = [(t, p) for t in _values(cfg.temperature) for p in _values(cfg.prior_scale)]
    base = SubspacePosterior(
        model,
        subspace,
        train,
        temperature=1.0,
        prior_scale=1.0,
        adapter=adapter,
        bn=cfg.bn,
        bn_loader=bn_loader,
        device=run_cfg.device,
    )
    posts = {}
    for t, p in candidates:  # one BatchNorm recompute and one count of the data, shared by every candidate
        posts[t, p] = q = copy.copy(base)
        q.temperature, q.prior_scale = t, p
    post = posts[candidates[0]]
    z0 = torch.zeros(subspace.k, dtype=torch.float64)
    ll0 = float(base.log_likelihood(z0))  # untempered (T = 1)
    if not math.isfinite(ll0):
        raise InputError(
            f"the log-likelihood at the subspace's shift is {ll0}: the run's weights do not fit its "
            "training data (a diverged run?)"
        )
    evals = {"val": split_loader(splits, "val", 1000), "test": split_loader(splits, "test", 1000)}

    def score(ws: list[torch.Tensor], loader: Any, bn: str | None) -> dict[str, float]:
        if run_cfg.is_regression:  # in the target's units, as every regression result
            return regression_summary(
                post.model, ws, loader, run_cfg, splits, bn=bn, bn_loader=None if bn else bn_loader
            )
        return summary_metrics(
            bma(post.model, ws, loader, adapter=adapter, bn=bn if bn else BNPolicy("recompute", bn_loader)).metrics
        )

    bn = "keep" if post.policy.mode == "keep" else None
    with output_guard(out):
        prepare_run_dir(out, overwrite=overwrite)
        write_json(out / "config.json", {"folder": "subspace", **asdict(cfg), "data": asdict(run_cfg)})
        selection = []
        best = None
        for t, p in candidates:
            res = _infer(
                cfg,
                posts[t, p],
                splits,
                z0,
                progress=progress,
                label=f" T={t:g} s={p:g}" if len(candidates) > 1 else "",
            )
            weights = list(subspace.to_weights(res.samples.to(subspace.basis.dtype)))
            val = score(weights, evals["val"], bn)
            selection.append(
                {"temperature": t, "prior_scale": p, "val": val, "acceptance": res.diagnostics.get("acceptance_rate")}
            )
            if best is None or val["nll"] < best[0]["nll"]:
                best = (val, t, p, res, weights)
        assert best is not None
        val, t_best, p_best, res, weights = best
        post = posts[t_best, p_best]
        sample_s = time.perf_counter() - start
        metrics = {"val": val, "test": score(weights, evals["test"], bn)}
        shift_metrics = {name: score([subspace.shift], loader, "keep") for name, loader in evals.items()}
        results: dict[str, Any] = {
            "folder": "subspace",
            "space": cfg.space,
            "rank": subspace.k,
            "inference": cfg.inference,
            "run": str(Path(cfg.run).resolve()),
            "dataset": run_cfg.dataset,
            "model": run_cfg.model,
            "num_samples": int(res.samples.shape[0]),
            "metrics": metrics,
            "shift_metrics": shift_metrics,
            "posterior": {
                "temperature": t_best,
                "prior_scale": p_best,
                "num_examples": post.num_examples,
                "bn": post.bn_label,
                "log_likelihood_at_shift": ll0,
            },
            "selection": {
                "rule": "the (temperature, prior scale) with the lowest validation NLL of the BMA",
                "candidates": selection,
            }
            if len(candidates) > 1
            else None,
            "subspace": {"kind": subspace.kind, **subspace.info},
            "sampler": res.to_json(),
            "likelihood_evaluations": base.evaluations + sum(q.evaluations for q in posts.values()),
            "timing": {"sample_s": sample_s, "total_s": time.perf_counter() - start},
        }
        if cfg.grid and subspace.k >= 2:
            results["density"] = _density_grid(post, res.samples, cfg.grid)
        tensors, header = subspace.state()
        save_checkpoint(
            out / "subspace.safetensors",
            {**tensors, "samples": res.samples},
            {**header, "kind": "subspace", "signature": post.space.signature()},
        )
        write_json(out / "results.json", results)
        _figures_and_report(out, cfg, results, res.samples)
        return results


def _values(v: float | list[float] | tuple[float, ...]) -> list[float]:
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]


def _infer(cfg: SubspaceConfig, post: Any, splits: Any, z0: torch.Tensor, *, progress: bool, label: str = ""):
    """Run the sampler ``cfg.inference`` (looked up in :data:`INFERENCE`) on the posterior ``post``; a
    :class:`SamplerResult`."""
    from ..core.optional import progress_bar

    inference = INFERENCE.get(cfg.inference)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = (
        progress_bar(
            total=inference.steps(cfg),
            unit="step",
            desc=f"subspace {cfg.inference}{label}",
            leave=False,
            dynamic_ncols=True,
        )
        if progress
        else None
    )
    try:
        return inference.run(cfg, post, splits, z0, gen, bar)
    finally:
        if bar is not None:
            bar.close()


@dataclass(frozen=True)
class Inference:
    """A sampler of the subspace posterior: the steps its progress bar counts, and ``run(cfg, post, splits, z0,
    generator, bar)`` returning a :class:`valleys.methods.samplers.SamplerResult`."""

    steps: Callable[[SubspaceConfig], int]
    run: Callable[..., Any]


def _ess(cfg: SubspaceConfig, post: Any, splits: Any, z0: torch.Tensor, gen: torch.Generator, bar: Any) -> Any:
    """Elliptical slice sampling (Murray et al. 2010) of the full-batch tempered posterior."""
    from ..methods.samplers import elliptical_slice

    return elliptical_slice(
        lambda z: float(post.log_likelihood(z)),
        z0,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        burn_in=cfg.burn_in,
        thin=cfg.thin,
        generator=gen,
        progress=bar,
    )


def _minibatch_log_likelihood(cfg: SubspaceConfig, post: Any, splits: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The differentiable log-likelihood of ``z`` on the next minibatch of 256 (cycling through the epochs)."""
    from .run_data import split_loader

    minibatches = split_loader(splits, "train", 256, shuffle=True, seed=cfg.seed)
    it = iter(())

    def minibatch_ll(z: torch.Tensor) -> torch.Tensor:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(minibatches)
            batch = next(it)
        return post.differentiable_log_likelihood(z, batch)

    return minibatch_ll


def _vi(cfg: SubspaceConfig, post: Any, splits: Any, z0: torch.Tensor, gen: torch.Generator, bar: Any) -> Any:
    """Mean-field Gaussian variational inference (Blundell et al. 2015) on minibatches."""
    from ..methods.samplers import mean_field_vi

    return mean_field_vi(
        _minibatch_log_likelihood(cfg, post, splits),
        post.subspace.k,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        steps=cfg.vi_steps,
        lr=cfg.vi_lr,
        generator=gen,
        progress=bar,
    )


def _flow(cfg: SubspaceConfig, post: Any, splits: Any, z0: torch.Tensor, gen: torch.Generator, bar: Any) -> Any:
    """Variational inference with a RealNVP flow (Dinh et al. 2017) on minibatches."""
    from ..methods.samplers import flow_vi

    return flow_vi(
        _minibatch_log_likelihood(cfg, post, splits),
        post.subspace.k,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        steps=cfg.vi_steps,
        lr=cfg.vi_lr,
        layers=cfg.flow_layers,
        generator=gen,
        progress=bar,
    )


def _nuts(cfg: SubspaceConfig, post: Any, splits: Any, z0: torch.Tensor, gen: torch.Generator, bar: Any) -> Any:
    """The No-U-Turn sampler (Hoffman & Gelman 2014, through Pyro) of the full-batch tempered posterior."""
    from ..methods.samplers import nuts

    return nuts(
        post.differentiable_log_likelihood,
        z0,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        warmup=cfg.warmup,
        chains=cfg.chains,
        seed=cfg.seed,
    )


#: ``--space``: how the subspace is built, ``(cfg, model, run weights) -> Subspace``.
SUBSPACES: Registry[Callable[..., Any]] = Registry(
    "subspace", {"pca": _pca_subspace, "random": _random_subspace, "curve": _curve_subspace}, flag="--space"
)
#: ``--inference``: the samplers of the subspace posterior.
INFERENCE: Registry[Inference] = Registry(
    "inference method",
    {
        "ess": Inference(lambda cfg: cfg.burn_in + cfg.samples * cfg.thin, _ess),
        "vi": Inference(lambda cfg: cfg.vi_steps, _vi),
        "flow": Inference(lambda cfg: cfg.vi_steps, _flow),
        "nuts": Inference(lambda cfg: cfg.chains, _nuts),
    },
    flag="--inference",
)


def _density_grid(post, samples: torch.Tensor, n: int) -> dict[str, Any]:
    """``log p(z | D)`` on an n x n grid over the first two coordinates (the others at 0), spanning the samples
    and the shift with a margin; all grid points through the engine at once."""
    lo = torch.minimum(samples[:, :2].min(0).values, torch.zeros(2, dtype=samples.dtype))
    hi = torch.maximum(samples[:, :2].max(0).values, torch.zeros(2, dtype=samples.dtype))
    pad = (hi - lo).clamp_min(1e-3) * 0.3
    xs = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), n, dtype=torch.float64)
    ys = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), n, dtype=torch.float64)
    zz = torch.zeros(n * n, post.subspace.k, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    zz[:, 0], zz[:, 1] = gx.reshape(-1), gy.reshape(-1)
    logp = post.log_prob(zz).view(n, n)
    return {
        "xs": xs.tolist(),
        "ys": ys.tolist(),
        "log_posterior": logp.tolist(),
        "units": "subspace coordinates z_1, z_2 (other coordinates 0)",
    }


def _figures_and_report(out: Path, cfg: SubspaceConfig, results: dict[str, Any], samples: torch.Tensor) -> None:
    figures = []
    try:
        from .plots import plot_subspace

        figures.append(
            plot_subspace(
                results.get("density"),
                samples,
                out / "figures" / "posterior.png",
                title=f"{cfg.space} subspace (k = {results['rank']}), {cfg.inference}",
            )
        )
    except ImportError:
        pass
    m, s = results["metrics"], results["shift_metrics"]
    keys = [k for k in ("accuracy", "nll", "ece", "rmse", "coverage_95") if k in m["test"]]

    def fmt(v: float, k: str) -> str:
        return f"{100 * v:.2f}" if k == "accuracy" else f"{v:.4f}"

    lines = [
        f"# Subspace inference: {cfg.space} subspace, {cfg.inference}",
        "",
        f"Run: `{results['run']}` ({results['model']} on {results['dataset']}). Rank k = {results['rank']}, "
        f"{results['num_samples']} samples, temperature {results['posterior']['temperature']:g}, prior scale "
        f"{results['posterior']['prior_scale']:g}, "
        f"BatchNorm: {results['posterior']['bn']}. Likelihood on {results['posterior']['num_examples']} "
        f"training examples; {results['likelihood_evaluations']} likelihood evaluations.",
        "",
        "| predictive | split | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for label, table in (("subspace BMA", m), ("shift only", s)):
        for split in ("val", "test"):
            lines.append(f"| {label} | {split} | " + " | ".join(fmt(table[split][k], k) for k in keys) + " |")
    if results.get("selection"):
        lines += [
            "",
            "Settings chosen on the validation split (lowest validation NLL of the BMA):",
            "",
            "| temperature | prior scale | val NLL | chosen |",
            "|---|---|---|---|",
        ]
        for c in results["selection"]["candidates"]:
            chosen = (c["temperature"], c["prior_scale"]) == (
                results["posterior"]["temperature"],
                results["posterior"]["prior_scale"],
            )
            lines.append(
                f"| {c['temperature']:g} | {c['prior_scale']:g} | {c['val']['nll']:.4f} | {'yes' if chosen else ''} |"
            )
    lines += [""] + [f"![posterior]({f.relative_to(out)})" for f in figures] + [""]
    (out / "report.md").write_text("\n".join(lines))


def subspace_config_from(args: Any) -> SubspaceConfig:
    """A :class:`SubspaceConfig` from the CLI's parsed arguments (fields of the same names)."""
    names = {f.name for f in dataclasses.fields(SubspaceConfig)}
    return SubspaceConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
