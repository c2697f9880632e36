"""Inference over a few coordinates z in R^k with a Gaussian prior N(0, s^2 I): elliptical slice sampling,
mean-field variational inference, and NUTS through Pyro.

Each takes the log-likelihood as a function of z, so that it can be tested on targets with known answers
and used on the subspace posterior of :class:`valleys.methods.subspace_posterior.SubspacePosterior`
(Izmailov et al. 2019, "Subspace Inference for Bayesian Deep Learning").

* :func:`elliptical_slice` (Murray, Adams, MacKay 2010, "Elliptical slice sampling", AISTATS): a rejection-
  free MCMC for a Gaussian prior times a likelihood; only the likelihood is evaluated.
* :func:`mean_field_vi`: q(z) = N(mu, diag(sigma^2)) fitted by maximising the ELBO
  ``E_q[log L(z)] - KL(q || N(0, s^2 I))`` with the reparameterisation trick (Kingma & Welling 2014) and Adam.
* :func:`flow_vi`: q(z) a RealNVP normalising flow (Dinh, Sohl-Dickstein, Bengio 2017, "Density estimation
  using Real NVP") on a diagonal Gaussian, fitted by the same ELBO; it captures correlations between the
  coordinates that the mean-field q cannot.
* :func:`nuts`: the No-U-Turn sampler (Hoffman & Gelman 2014) of Pyro (``pip install 'valleys[pyro]'``) on
  the potential ``-log L(z) - log N(z; 0, s^2 I)``, with its diagnostics.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import stopping
from ..core.batches import as_tensor
from ..core.checkpoint import json_safe
from ..core.optional import Progress
from ..errors import InputError, SamplerError

__all__ = [
    "SamplerResult",
    "SamplerCheckpoint",
    "elliptical_slice",
    "mean_field_vi",
    "flow_vi",
    "RealNVP",
    "nuts",
    "SamplerError",
    "gaussian_log_prior",
]


@dataclass
class SamplerResult:
    """Samples of z (S, k) and what the sampler reports.

    Attributes:
        samples: (S, k) draws (after burn-in and thinning).
        log_likelihood: the log-likelihood at each draw (S,), where the sampler computes it.
        diagnostics: sampler-specific numbers (evaluations, acceptance, ELBO trace, r_hat, n_eff, ...).
        method: ``"ess"``, ``"vi"`` or ``"nuts"``.
    """

    samples: Tensor
    log_likelihood: Tensor | None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    method: str = ""

    def to_json(self) -> dict[str, Any]:
        """Strict JSON of the diagnostics and the sample summary (mean and standard deviation per coordinate)."""
        return json_safe(
            {
                "method": self.method,
                "num_samples": int(self.samples.shape[0]),
                "mean": self.samples.mean(0),
                "std": self.samples.std(0) if len(self.samples) > 1 else None,
                "diagnostics": self.diagnostics,
            }
        )


@dataclass
class SamplerCheckpoint:
    """Makes a sampler stoppable and resumable exactly: it calls ``save(state)`` with its whole state (position,
    current point, kept draws, optimizer, generator and global RNG states) every ``every`` steps and when a stop
    is requested (:mod:`valleys.core.stopping`: SIGINT or SIGTERM under the command line), then raises
    :class:`valleys.core.stopping.Stopped`; given ``state`` (an earlier save), it continues from there, ending
    with the draws an uninterrupted run gives. NUTS saves after every completed chain (Pyro's ``MCMC.run``
    exposes no state within a chain) and is stopped at once by a signal.
    """

    save: Callable[[dict[str, Any]], None]
    state: dict[str, Any] | None = None
    every: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise InputError(f"checkpoint every must be an integer >= 1, got {self.every!r}")

    def after_step(self, done: int, total: int, state: Callable[[], dict[str, Any]]) -> None:
        """After step ``done`` (1-based) of ``total``: save every ``every`` steps; on a requested stop, save and
        raise :class:`valleys.core.stopping.Stopped`."""
        stop = stopping.requested() is not None
        if stop or (done % self.every == 0 and done < total):
            self.save(state())
        if stop:
            raise stopping.stop_exception()


def _rng_states(generator: torch.Generator | None) -> dict[str, Tensor]:
    out = {"rng": torch.get_rng_state()}
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def _set_rng_states(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["rng"])
    if generator is not None:
        if "generator" not in state:
            raise InputError("the sampler checkpoint holds no generator state, but a generator was given")
        generator.set_state(state["generator"])


def gaussian_log_prior(z: Tensor, scale: float) -> Tensor:
    """``log N(z; 0, s^2 I) = -|z|^2 / (2 s^2) - (k / 2) log(2 pi s^2)`` (over the last dimension)."""
    k = z.shape[-1]
    return -0.5 * (z * z).sum(-1) / scale**2 - 0.5 * k * math.log(2 * math.pi * scale**2)


def _check_scale(prior_scale: float) -> None:
    if not (isinstance(prior_scale, (int, float)) and math.isfinite(prior_scale) and prior_scale > 0):
        raise InputError(f"the prior scale must be a finite number > 0, got {prior_scale!r}")


def _check_counts(num_samples: int, burn_in: int, thin: int) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not isinstance(burn_in, int) or burn_in < 0:
        raise InputError(f"burn_in must be an integer >= 0, got {burn_in!r}")
    if not isinstance(thin, int) or thin < 1:
        raise InputError(f"thin must be an integer >= 1, got {thin!r}")


def _on(generator: torch.Generator | None) -> torch.device | str:
    """Where random draws are made: the generator's device, else the CPU (never torch's default device)."""
    return generator.device if generator is not None else "cpu"


def elliptical_slice(
    log_likelihood: Callable[[Tensor], float],
    z0: Tensor,
    *,
    prior_scale: float,
    num_samples: int,
    burn_in: int = 0,
    thin: int = 1,
    max_shrinks: int = 100,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    checkpoint: SamplerCheckpoint | None = None,
) -> SamplerResult:
    """Elliptical slice sampling (Murray, Adams & MacKay 2010) of ``p(z) ~ L(z) N(z; 0, s^2 I)``.

    One step from z: draw ``nu ~ N(0, s^2 I)`` and the threshold ``log y = log L(z) + log u``, u ~ U(0, 1);
    draw the angle ``theta ~ U(0, 2 pi)`` and the bracket ``[theta - 2 pi, theta]``; propose
    ``z' = z cos(theta) + nu sin(theta)``; accept if ``log L(z') > log y``, else shrink the bracket towards 0
    and draw theta again inside it. Every step moves (no rejections); the shrinks are capped at
    ``max_shrinks`` per step (a :class:`SamplerError` with the diagnostics, never a hang).

    Args:
        log_likelihood: ``log L(z)`` for a (k,) tensor, a float (tempered as the caller wants).
        z0: the starting point (k,), e.g. zeros (the subspace's shift).
        prior_scale: s.
        num_samples, burn_in, thin: keep every ``thin``-th state after ``burn_in`` steps.
        generator: for reproducible draws.
        progress: an optional bar with ``update()`` (one per step).
        checkpoint: save the state every few steps and on a stop; resume from a saved state
            (:class:`SamplerCheckpoint`).

    Returns a :class:`SamplerResult` with ``diagnostics``: ``likelihood_evaluations``,
    ``evaluations_per_step``, ``max_shrinks_in_a_step``, ``steps``, ``time_s``.
    """
    _check_scale(prior_scale)
    _check_counts(num_samples, burn_in, thin)
    z = as_tensor(z0, torch.float64).clone()
    if z.dim() != 1:
        raise InputError(f"z0 must be a 1-D tensor (k,), got shape {tuple(z.shape)}")
    start = time.perf_counter()
    steps = burn_in + num_samples * thin
    first, elapsed = 0, 0.0
    saved = checkpoint.state if checkpoint is not None else None
    if saved is not None:  # resume: the chain's state after step `first`
        first, z, ll, evals = int(saved["step"]), saved["z"].clone(), float(saved["ll"]), int(saved["evals"])
        kept, kept_ll = list(saved["kept"]), [float(v) for v in saved["kept_ll"]]
        shrinks_max, elapsed = int(saved["shrinks_max"]), float(saved["time_s"])
        _set_rng_states(saved, generator)
    else:
        ll = float(log_likelihood(z))
        if not math.isfinite(ll):
            raise SamplerError(
                f"the log-likelihood at the starting point is {ll}; start where it is finite (the "
                "subspace's shift should be a trained solution)"
            )
        evals = 1
        kept, kept_ll, shrinks_max = [], [], 0

    def state(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "z": z,
            "ll": ll,
            "evals": evals,
            "kept": list(kept),
            "kept_ll": list(kept_ll),
            "shrinks_max": shrinks_max,
            "time_s": elapsed + time.perf_counter() - start,
            **_rng_states(generator),
        }

    with stopping.deferred():  # a signal stops after the current step, with a checkpoint
        for step in range(first, steps):
            z, ll, evals, shrinks = _ess_step(log_likelihood, z, ll, evals, step, prior_scale, max_shrinks, generator)
            shrinks_max = max(shrinks_max, shrinks)
            if step >= burn_in and (step - burn_in + 1) % thin == 0:
                kept.append(z.clone())
                kept_ll.append(ll)
            if progress is not None:
                progress.update(1)
            if checkpoint is not None:
                checkpoint.after_step(step + 1, steps, functools.partial(state, step + 1))
    return SamplerResult(
        torch.stack(kept),
        torch.tensor(kept_ll, dtype=torch.float64, device="cpu"),
        {
            "likelihood_evaluations": evals,
            "evaluations_per_step": (evals - 1) / steps,
            "max_shrinks_in_a_step": shrinks_max,
            "steps": steps,
            "time_s": elapsed + time.perf_counter() - start,
        },
        "ess",
    )


def _ess_step(
    log_likelihood: Callable[[Tensor], float],
    z: Tensor,
    ll: float,
    evals: int,
    step: int,
    prior_scale: float,
    max_shrinks: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, float, int, int]:
    """One elliptical slice step from ``(z, ll)``: the new point, its log-likelihood, the evaluation count,
    and the shrinks it took."""
    nu = torch.randn(z.shape, generator=generator, dtype=torch.float64, device=_on(generator)) * prior_scale
    log_y = ll + math.log(
        float(torch.rand((), generator=generator, dtype=torch.float64, device=_on(generator))) or 1e-300
    )
    theta = float(torch.rand((), generator=generator, dtype=torch.float64, device=_on(generator))) * 2 * math.pi
    lo, hi = theta - 2 * math.pi, theta
    shrinks = nans = 0
    while True:
        proposal = z * math.cos(theta) + nu * math.sin(theta)
        new_ll = float(log_likelihood(proposal))
        evals += 1
        if new_ll > log_y:  # NaN compares False: a NaN proposal is shrunk away, never accepted
            z, ll = proposal, new_ll
            break
        shrinks += 1
        nans += math.isnan(new_ll)
        if shrinks > max_shrinks:
            why = (
                f"the log-likelihood was NaN at {nans} of its {shrinks} proposals (the network's outputs "
                "overflow away from the starting point?): lower --prior-scale to stay closer to it"
                if nans > shrinks // 2
                else "the likelihood may be too peaked for the prior scale (lower --prior-scale, raise --temperature)"
            )
            raise SamplerError(
                f"elliptical slice sampling: no acceptance after {max_shrinks} shrinks in step "
                f"{step + 1} ({evals} likelihood evaluations so far, log L = {ll:.6g}); {why}"
            )
        if theta < 0:
            lo = theta
        else:
            hi = theta
        theta = lo + float(torch.rand((), generator=generator, dtype=torch.float64, device=_on(generator))) * (hi - lo)
    return z, ll, evals, shrinks


def _maximise_elbo(
    elbo: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    lr: float,
    what: str,
    progress: Progress | None,
    *,
    checkpoint: SamplerCheckpoint | None = None,
    generator: torch.Generator | None = None,
    data: Any = None,
) -> tuple[float, list[tuple[int, float]], float]:
    """Adam on ``-elbo()`` for ``steps`` steps; the last ELBO, its trace (every 1% of the steps) and the time
    spent. A non-finite ELBO stops with a :class:`SamplerError` naming the step and the learning rate. With a
    ``checkpoint`` the parameters, Adam's moments, the trace, the RNG states and ``data``'s position (a
    minibatch source with ``state_dict`` and ``load_state_dict``) are saved and restored."""
    opt = torch.optim.Adam(params, lr=lr)
    trace: list[tuple[int, float]] = []
    every = max(1, steps // 100)
    value, first, elapsed = math.nan, 0, 0.0
    saved = checkpoint.state if checkpoint is not None else None
    if saved is not None:  # resume after step `first`
        first, value, elapsed = int(saved["step"]), float(saved["value"]), float(saved["time_s"])
        trace = [(int(a), float(b)) for a, b in saved["trace"]]
        with torch.no_grad():
            for p, v in zip(params, saved["params"], strict=True):
                p.copy_(v)
        opt.load_state_dict(saved["adam"])
        if data is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(saved["data"])
        _set_rng_states(saved, generator)
    start = time.perf_counter()

    def state(done: int) -> dict[str, Any]:
        return {
            "step": done,
            "value": value,
            "trace": [list(t) for t in trace],
            "params": [p.detach().clone() for p in params],
            "adam": opt.state_dict(),
            "time_s": elapsed + time.perf_counter() - start,
            **({"data": data.state_dict()} if data is not None and hasattr(data, "state_dict") else {}),
            **_rng_states(generator),
        }

    with stopping.deferred():  # a signal stops after the current step, with a checkpoint
        for step in range(first, steps):
            e = elbo()
            if not torch.isfinite(e):
                raise SamplerError(
                    f"{what}: the ELBO became {float(e.detach())} at step {step + 1}; lower lr (now {lr}) or check the "
                    "likelihood"
                )
            opt.zero_grad()
            (-e).backward()
            opt.step()
            value = float(e.detach())
            if step % every == 0 or step == steps - 1:
                trace.append((step + 1, value))
            if progress is not None:
                progress.update(1)
            if checkpoint is not None:
                checkpoint.after_step(step + 1, steps, functools.partial(state, step + 1))
    return value, trace, elapsed + time.perf_counter() - start


def mean_field_vi(
    log_likelihood: Callable[[Tensor], Tensor],
    k: int,
    *,
    prior_scale: float,
    num_samples: int,
    steps: int = 2000,
    lr: float = 0.01,
    mc_samples: int = 1,
    init_mean: Tensor | None = None,
    init_std: float | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    checkpoint: SamplerCheckpoint | None = None,
) -> SamplerResult:
    """Mean-field Gaussian variational inference: ``q(z) = N(mu, diag(sigma^2))`` maximising

        ELBO(mu, sigma) = E_q[log L(z)] - KL(q || N(0, s^2 I)),
        KL = sum_j [log(s / sigma_j) + (sigma_j^2 + mu_j^2) / (2 s^2) - 1/2],

    with ``z = mu + sigma * eps``, eps ~ N(0, I) (the reparameterisation trick, ``mc_samples`` draws per
    step) and Adam at ``lr`` on ``(mu, log sigma)``. ``log_likelihood`` must be differentiable in z; it may
    be a minibatch estimate (scaled to the whole data set; an object with ``state_dict`` and
    ``load_state_dict`` has its position saved by a ``checkpoint``, see :class:`SamplerCheckpoint`). Returns
    ``num_samples`` draws from the fitted q and ``diagnostics`` with ``mean``, ``std``, the ELBO trace (every 1%
    of the steps) and the final ELBO.
    """
    _check_scale(prior_scale)
    _check_counts(num_samples, 0, 1)
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    mu = (
        torch.zeros(k, dtype=torch.float64, device="cpu")
        if init_mean is None
        else as_tensor(init_mean, torch.float64).clone()
    ).requires_grad_(True)
    log_sigma = torch.full(
        (k,),
        math.log(init_std if init_std is not None else prior_scale * 0.1),
        dtype=torch.float64,
        device="cpu",
        requires_grad=True,
    )

    def elbo() -> Tensor:
        sigma = log_sigma.exp()
        eps = torch.randn(mc_samples, k, generator=generator, dtype=torch.float64, device=_on(generator))
        z = mu + sigma * eps
        ll = torch.stack([as_tensor(log_likelihood(zi), torch.float64) for zi in z]).mean()
        kl = (math.log(prior_scale) - log_sigma + (sigma**2 + mu**2) / (2 * prior_scale**2) - 0.5).sum()
        return ll - kl

    elbo_value, trace, time_s = _maximise_elbo(
        elbo,
        [mu, log_sigma],
        steps,
        lr,
        "variational inference",
        progress,
        checkpoint=checkpoint,
        generator=generator,
        data=log_likelihood,
    )
    with torch.no_grad():
        mean, std = mu.detach().clone(), log_sigma.exp().detach().clone()
        draws = mean + std * torch.randn(
            num_samples, k, generator=generator, dtype=torch.float64, device=_on(generator)
        )
    return SamplerResult(
        draws,
        None,
        {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "elbo": elbo_value,
            "elbo_trace": trace,
            "steps": steps,
            "time_s": time_s,
        },
        "vi",
    )


class RealNVP(torch.nn.Module):
    """A RealNVP flow on R^k: ``z = mu + sigma * g(eps)`` with ``g`` a stack of affine coupling layers
    (Dinh et al. 2017). Coupling layer i keeps the coordinates of a binary mask m_i and maps the others as
    ``x <- x * exp(s(m x)) + t(m x)`` with ``s = tanh(.)`` and ``t`` from a small MLP of the kept ones; the
    masks alternate (even / odd coordinates; for k = 1 the flow is the diagonal Gaussian alone). The last
    layer of every MLP starts at zero, so the flow starts as ``N(mu, diag(sigma^2))``.

    ``sample(n)`` returns ``(z, log q(z))`` with ``log q(z) = log N(eps; 0, I) - log |det dz/deps|``.
    """

    masks: Tensor

    def __init__(self, k: int, *, layers: int = 4, hidden: int = 32, init_std: float = 0.1) -> None:
        super().__init__()
        self.k = k
        self.mu = torch.nn.Parameter(torch.zeros(k, dtype=torch.float64, device="cpu"))
        self.log_sigma = torch.nn.Parameter(torch.full((k,), math.log(init_std), dtype=torch.float64, device="cpu"))
        idx = torch.arange(k, device="cpu")
        self.register_buffer(
            "masks",
            torch.stack([((idx + i) % 2 == 0).double() for i in range(layers)])
            if k > 1
            else torch.zeros(0, k, dtype=torch.float64, device="cpu"),
        )
        self.nets = torch.nn.ModuleList()
        for _ in range(len(self.masks)):
            first, last = torch.nn.Linear(k, hidden), torch.nn.Linear(hidden, 2 * k)
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
            self.nets.append(torch.nn.Sequential(first, torch.nn.Tanh(), last).double())

    def forward(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log |det dz/deps|)`` for eps (n, k)."""
        x, logdet = eps, torch.zeros(eps.shape[0], dtype=eps.dtype, device=eps.device)
        for m, net in zip(self.masks, self.nets, strict=True):
            s, t = net(x * m).chunk(2, dim=-1)
            s = torch.tanh(s) * (1 - m)
            x = x * m + (1 - m) * (x * s.exp() + t)
            logdet = logdet + s.sum(-1)
        return self.mu + self.log_sigma.exp() * x, logdet + self.log_sigma.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws and their log density under the flow."""
        eps = torch.randn(n, self.k, generator=generator, dtype=torch.float64, device=_on(generator))
        z, logdet = self(eps)
        base = -0.5 * (eps**2).sum(-1) - 0.5 * self.k * math.log(2 * math.pi)
        return z, base - logdet


def flow_vi(
    log_likelihood: Callable[[Tensor], Tensor],
    k: int,
    *,
    prior_scale: float,
    num_samples: int,
    steps: int = 2000,
    lr: float = 0.005,
    mc_samples: int = 4,
    layers: int = 4,
    hidden: int = 32,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    checkpoint: SamplerCheckpoint | None = None,
) -> SamplerResult:
    """Variational inference with a RealNVP flow q (:class:`RealNVP`), maximising the ELBO

        ELBO = E_q[log L(z) + log N(z; 0, s^2 I) - log q(z)]

    by the reparameterisation trick (``mc_samples`` draws per step, Adam at ``lr``), starting from
    ``N(0, (0.1 s)^2 I)``. ``log_likelihood`` must be differentiable in z (a minibatch estimate scaled to the
    whole data set is fine). Returns ``num_samples`` draws from the fitted flow and ``diagnostics`` with the
    ELBO trace (every 1% of the steps), the final ELBO and the flow's size.
    """
    _check_scale(prior_scale)
    _check_counts(num_samples, 0, 1)
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    for name, v in (("steps", steps), ("mc_samples", mc_samples), ("hidden", hidden)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    if not isinstance(layers, int) or layers < 0:
        raise InputError(f"layers must be an integer >= 0, got {layers!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    if generator is not None:
        torch.manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=_on(generator)))
        )  # the MLPs' init
    flow = RealNVP(k, layers=layers, hidden=hidden, init_std=0.1 * prior_scale)

    def elbo() -> Tensor:
        z, log_q = flow.sample(mc_samples, generator)
        ll = torch.stack([as_tensor(log_likelihood(zi), torch.float64) for zi in z])
        return (ll + gaussian_log_prior(z, prior_scale) - log_q).mean()

    elbo_value, trace, time_s = _maximise_elbo(
        elbo,
        list(flow.parameters()),
        steps,
        lr,
        "flow variational inference",
        progress,
        checkpoint=checkpoint,
        generator=generator,
        data=log_likelihood,
    )
    with torch.no_grad():
        draws, _ = flow.sample(num_samples, generator)
    return SamplerResult(
        draws.detach(),
        None,
        {
            "elbo": elbo_value,
            "elbo_trace": trace,
            "steps": steps,
            "layers": len(flow.masks),
            "hidden": hidden,
            "time_s": time_s,
        },
        "flow",
    )


def nuts(
    log_likelihood: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    prior_scale: float,
    num_samples: int,
    warmup: int = 200,
    chains: int = 1,
    max_tree_depth: int = 10,
    seed: int = 0,
    checkpoint: SamplerCheckpoint | None = None,
) -> SamplerResult:
    """NUTS (Hoffman & Gelman 2014) through Pyro on the potential ``U(z) = -log L(z) - log N(z; 0, s^2 I)``
    (``log_likelihood`` differentiable in z, evaluated on the whole data), ``warmup`` adaptation steps,
    ``chains`` chains run one after another from ``z0`` (jittered for the chains after the first).

    Returns the draws of all chains (chains * num_samples, k) and ``diagnostics``: ``r_hat`` and ``n_eff`` per
    coordinate (Pyro's ``mcmc.diagnostics()``), ``divergences`` and ``acceptance_rate`` per chain.
    Needs ``pyro-ppl`` (``pip install 'valleys[pyro]'``). A ``checkpoint`` saves the completed chains after
    each one and resumes after the last completed one (each chain is seeded ``seed + c``, so it is the same
    chain whether or not the run was resumed); a signal stops a chain at once.
    """
    from ..core.optional import require

    _check_scale(prior_scale)
    _check_counts(num_samples, 0, 1)
    if not isinstance(chains, int) or chains < 1:
        raise InputError(f"chains must be an integer >= 1, got {chains!r}")
    require("pyro", "pyro")
    import pyro
    from pyro.infer import MCMC, NUTS

    z0 = as_tensor(z0, torch.float64)
    saved = checkpoint.state if checkpoint is not None else None
    if saved is None:
        ll0 = float(log_likelihood(z0))
        if not math.isfinite(ll0):
            raise SamplerError(f"the log-likelihood at the starting point is {ll0}; start where it is finite")
    start = time.perf_counter()

    def potential(params: dict[str, Tensor]) -> Tensor:
        z = params["z"]
        return -(as_tensor(log_likelihood(z)).to(z) + gaussian_log_prior(z, prior_scale))

    all_samples: list[Tensor] = []
    per_chain: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    elapsed = 0.0
    if saved is not None:  # the completed chains
        all_samples = [t.clone() for t in saved["chains"]]
        per_chain = [dict(c) for c in saved["per_chain"]]
        gen.set_state(saved["generator"])
        elapsed = float(saved["time_s"])
    for c in range(len(all_samples), chains):
        pyro.set_rng_seed(seed + c)
        init = (
            z0
            if c == 0
            else z0 + 0.1 * prior_scale * torch.randn(z0.shape, generator=gen, dtype=torch.float64, device=_on(gen))
        )
        kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth)
        mcmc = MCMC(
            kernel, num_samples=num_samples, warmup_steps=warmup, initial_params={"z": init}, disable_progbar=True
        )
        mcmc.run()
        draws = mcmc.get_samples()["z"].detach().to(torch.float64)
        all_samples.append(draws)
        extra = mcmc.get_samples(group_by_chain=False)
        diag = mcmc.diagnostics()
        per_chain.append(
            {
                "divergences": int(len(diag.get("divergences", {}).get("chain 0", []))),
                "acceptance_rate": float(diag.get("acceptance rate", {}).get("chain 0", math.nan)),
            }
        )
        del extra
        if checkpoint is not None:
            checkpoint.save(
                {
                    "chains": list(all_samples),
                    "per_chain": list(per_chain),
                    "generator": gen.get_state(),
                    "time_s": elapsed + time.perf_counter() - start,
                }
            )
    stacked = torch.stack(all_samples)  # (chains, S, k)
    from pyro.ops.stats import effective_sample_size, gelman_rubin

    n_eff = effective_sample_size(stacked, chain_dim=0, sample_dim=1)
    r_hat = (
        gelman_rubin(stacked, chain_dim=0, sample_dim=1)
        if chains > 1
        else torch.full((z0.numel(),), math.nan, device="cpu")
    )
    return SamplerResult(
        stacked.reshape(-1, z0.numel()),
        None,
        {
            "n_eff": n_eff.tolist(),
            "r_hat": r_hat.tolist(),
            "chains": per_chain,
            "divergences": sum(c["divergences"] for c in per_chain),
            "warmup": warmup,
            "time_s": elapsed + time.perf_counter() - start,
        },
        "nuts",
    )
