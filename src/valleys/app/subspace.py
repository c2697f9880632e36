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

Stopping and resuming (``--resume``): the samplers write ``checkpoint.safetensors`` every
``--checkpoint-every`` steps (ESS steps, VI or flow optimisation steps; NUTS after every chain) and when a
SIGINT or SIGTERM stops them, with the candidates (temperature, prior scale) already sampled; a resumed run
ends with the samples of an uninterrupted one.
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
    checkpoint_every: int = 50  # sampler steps (ESS, VI, flow) between checkpoints; NUTS: every chain

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
        for name in ("rank", "samples", "thin", "vi_steps", "chains", "checkpoint_every"):
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
        ends = curve.start.detach(), curve.end.detach()
        if not any(torch.allclose(e.to(w_run), w_run, rtol=1e-6, atol=1e-7) for e in ends):
            raise InputError(
                f"--curve {curve_dir} does not pass through the run {cfg.run}: the run's weights are neither of "
                "the curve's ends; give one of the runs the curve connects (its config.json names them)"
            )
        return curve_subspace(ends[0], curve.point(0.5).detach(), ends[1])


class _Checkpoint:
    """``checkpoint.safetensors`` of a subspace run: the candidates (temperature, prior scale) sampled so far,
    with their samples, diagnostics and validation scores, and the state of the sampler that is running."""

    def __init__(
        self, path: Path, every: int, header: dict[str, Any], resume: bool, evaluations: Callable[[], int]
    ) -> None:
        from ..core.checkpoint import checkpoint_field, load_checkpoint

        self.path, self.every, self.header = path, every, header
        self.done: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.counter, self.offset = evaluations, 0
        if resume:
            state, saved = load_checkpoint(path)
            if saved.get("kind") != "subspace-checkpoint":
                raise InputError(f"{path} is not the checkpoint of a subspace run (kind {saved.get('kind')!r})")
            self.done = list(checkpoint_field(state, "done", path, "state"))
            self.current = state.get("current")
            # the evaluations of the stopped process; this one's setup (done by both) is not counted twice
            self.offset = int(checkpoint_field(state, "evaluations", path, "state")) - evaluations()

    def evaluations(self) -> int:
        """Likelihood evaluations of the whole run, the processes before a resume included."""
        return self.counter() + self.offset

    def _write(self) -> None:
        from ..core.checkpoint import save_checkpoint

        state: dict[str, Any] = {"done": self.done, "evaluations": self.evaluations()}
        if self.current is not None:
            state["current"] = self.current
        save_checkpoint(self.path, state, {**self.header, "kind": "subspace-checkpoint"})

    def sampler(self, i: int) -> Any:
        """The :class:`valleys.methods.samplers.SamplerCheckpoint` of candidate ``i``."""
        from ..methods.samplers import SamplerCheckpoint

        def save(state: dict[str, Any]) -> None:
            self.current = {"index": i, "state": state}
            self._write()

        resumed = self.current["state"] if self.current is not None and self.current["index"] == i else None
        return SamplerCheckpoint(save, resumed, self.every)

    def sampled(self, res: Any) -> None:
        """A candidate's sampling is done: keep its result, drop the sampler state."""
        import json

        from ..core.checkpoint import json_safe

        entry = {"samples": res.samples, "diagnostics": json.dumps(json_safe(res.diagnostics)), "method": res.method}
        if res.log_likelihood is not None:
            entry["log_likelihood"] = res.log_likelihood
        self.done.append(entry)
        self.current = None
        self._write()

    def result(self, i: int) -> Any:
        """Candidate ``i``'s :class:`valleys.methods.samplers.SamplerResult`, as saved."""
        import json

        from ..methods.samplers import SamplerResult

        d = self.done[i]
        return SamplerResult(d["samples"], d.get("log_likelihood"), json.loads(d["diagnostics"]), d["method"])


def _check_resumable(out: Path, cfg: SubspaceConfig) -> None:
    """Before ``--resume``: ``out`` must hold a subspace run made with the same settings, and its checkpoint."""
    from .config import read_json_object

    if not (out / "config.json").is_file():
        raise InputError(f"cannot resume: {out} holds no subspace run (no config.json); run it without --resume")
    saved = read_json_object(out / "config.json")
    if saved.get("folder") != "subspace":
        raise InputError(f"cannot resume: {out} is not a subspace run (made by another command)")
    now = asdict(cfg)
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v and k != "checkpoint_every"}
    if diff:
        flags = ", ".join(f"--{k.replace('_', '-')} {v!r} (config.json: {old!r})" for k, (old, v) in diff.items())
        raise InputError(
            f"--resume continues {out} with the settings of its config.json; these differ: {flags}. Give the "
            "same settings (or start a new run without --resume)"
        )
    if not (out / "checkpoint.safetensors").is_file():
        raise InputError(
            f"cannot resume: {out / 'checkpoint.safetensors'} does not exist (stopped before the first "
            "checkpoint); run the command again without --resume"
        )


def subspace_run(
    cfg: SubspaceConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Build the subspace, sample its posterior, average the predictions; write the run folder ``out``.
    ``resume``: continue a stopped run in ``out`` from its checkpoint (the same settings)."""
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
    if overwrite and resume:
        raise InputError("--overwrite and --resume contradict each other: choose one")
    prepare_run_dir(out, overwrite=overwrite, resume=resume, create=False)
    refuse_reading_from(out, [cfg.run] + ([cfg.curve] if cfg.curve else []))  # with --overwrite too
    if resume:
        _check_resumable(out, cfg)
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
    with output_guard(out, resumable=(out / "checkpoint.safetensors").is_file):
        prepare_run_dir(out, overwrite=overwrite, resume=resume)
        if not resume:
            write_json(out / "config.json", {"folder": "subspace", **asdict(cfg), "data": asdict(run_cfg)})
        ck = _Checkpoint(
            out / "checkpoint.safetensors",
            cfg.checkpoint_every,
            {"config": asdict(cfg)},
            resume,
            lambda: base.evaluations + sum(q.evaluations for q in posts.values()),
        )
        selection = []
        best = None
        for i, (t, p) in enumerate(candidates):
            if i < len(ck.done):  # sampled before the stop
                res = ck.result(i)
            else:
                res = _infer(
                    cfg,
                    posts[t, p],
                    splits,
                    z0,
                    progress=progress,
                    label=f" T={t:g} s={p:g}" if len(candidates) > 1 else "",
                    checkpoint=ck.sampler(i),
                )
                ck.sampled(res)
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
            "likelihood_evaluations": ck.evaluations(),
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


def _infer(
    cfg: SubspaceConfig,
    post: Any,
    splits: Any,
    z0: torch.Tensor,
    *,
    progress: bool,
    label: str = "",
    checkpoint: Any = None,
):
    """Run the sampler ``cfg.inference`` (looked up in :data:`INFERENCE`) on the posterior ``post``; a
    :class:`SamplerResult`. ``checkpoint``: a :class:`valleys.methods.samplers.SamplerCheckpoint`."""
    from ..core.optional import progress_bar

    inference = INFERENCE.get(cfg.inference)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    resumed = checkpoint.state if checkpoint is not None and checkpoint.state is not None else {}
    bar = (
        progress_bar(
            total=inference.steps(cfg),
            initial=int(resumed.get("step", len(resumed.get("chains", ())))),
            unit="step",
            desc=f"subspace {cfg.inference}{label}",
            leave=False,
            dynamic_ncols=True,
        )
        if progress
        else None
    )
    try:
        return inference.run(cfg, post, splits, z0, gen, bar, checkpoint)
    finally:
        if bar is not None:
            bar.close()


@dataclass(frozen=True)
class Inference:
    """A sampler of the subspace posterior: the steps its progress bar counts, and ``run(cfg, post, splits, z0,
    generator, bar, checkpoint)`` returning a :class:`valleys.methods.samplers.SamplerResult`."""

    steps: Callable[[SubspaceConfig], int]
    run: Callable[..., Any]


def _ess(
    cfg: SubspaceConfig,
    post: Any,
    splits: Any,
    z0: torch.Tensor,
    gen: torch.Generator,
    bar: Any,
    checkpoint: Any = None,
) -> Any:
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
        checkpoint=checkpoint,
    )


class _Minibatches:
    """The differentiable log-likelihood of ``z`` on the next minibatch of 256 (cycling through the epochs),
    with its position in the epoch's shuffle as state (so that a resumed VI sees the same minibatches)."""

    def __init__(self, cfg: SubspaceConfig, post: Any, splits: Any) -> None:
        from .run_data import split_loader

        self.post = post
        self.loader = split_loader(splits, "train", 256, shuffle=True, seed=cfg.seed)
        self.it: Any = iter(())
        self.epoch_start: torch.Tensor | None = None  # the loader's generator when this epoch's iterator began
        self.position = 0

    def _new_epoch(self) -> None:
        self.epoch_start = self.loader.generator.get_state()
        self.it, self.position = iter(self.loader), 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        try:
            batch = next(self.it)
        except StopIteration:
            self._new_epoch()
            batch = next(self.it)
        self.position += 1
        return self.post.differentiable_log_likelihood(z, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, **({"epoch_start": self.epoch_start} if self.position else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.it, self.position = iter(()), 0
        if int(state["position"]):
            self.loader.generator.set_state(state["epoch_start"])
            self._new_epoch()
            for _ in range(int(state["position"])):
                next(self.it)
            self.position = int(state["position"])


def _vi(
    cfg: SubspaceConfig,
    post: Any,
    splits: Any,
    z0: torch.Tensor,
    gen: torch.Generator,
    bar: Any,
    checkpoint: Any = None,
) -> Any:
    """Mean-field Gaussian variational inference (Blundell et al. 2015) on minibatches."""
    from ..methods.samplers import mean_field_vi

    return mean_field_vi(
        _Minibatches(cfg, post, splits),
        post.subspace.k,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        steps=cfg.vi_steps,
        lr=cfg.vi_lr,
        generator=gen,
        progress=bar,
        checkpoint=checkpoint,
    )


def _flow(
    cfg: SubspaceConfig,
    post: Any,
    splits: Any,
    z0: torch.Tensor,
    gen: torch.Generator,
    bar: Any,
    checkpoint: Any = None,
) -> Any:
    """Variational inference with a RealNVP flow (Dinh et al. 2017) on minibatches."""
    from ..methods.samplers import flow_vi

    return flow_vi(
        _Minibatches(cfg, post, splits),
        post.subspace.k,
        prior_scale=post.prior_scale,
        num_samples=cfg.samples,
        steps=cfg.vi_steps,
        lr=cfg.vi_lr,
        layers=cfg.flow_layers,
        generator=gen,
        progress=bar,
        checkpoint=checkpoint,
    )


def _nuts(
    cfg: SubspaceConfig,
    post: Any,
    splits: Any,
    z0: torch.Tensor,
    gen: torch.Generator,
    bar: Any,
    checkpoint: Any = None,
) -> Any:
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
        checkpoint=checkpoint,
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
    from ..core.checkpoint import write_text

    write_text(out / "report.md", "\n".join(lines))


def subspace_config_from(args: Any) -> SubspaceConfig:
    """A :class:`SubspaceConfig` from the CLI's parsed arguments (fields of the same names)."""
    names = {f.name for f in dataclasses.fields(SubspaceConfig)}
    return SubspaceConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
