"""Stopping and resuming the samplers (issue 25): a run stopped at any step and resumed from the state its
:class:`SamplerCheckpoint` saved gives the draws of an uninterrupted run, bit for bit."""

from __future__ import annotations

import signal

import pytest
import torch

from valleys.core import stopping
from valleys.errors import InputError
from valleys.methods.samplers import SamplerCheckpoint, elliptical_slice, flow_vi, mean_field_vi

K = 3
MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def gaussian_ll(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((z - MEAN) ** 2 / 0.25).sum()


class Minibatches:
    """A stateful likelihood (as the subspace command's minibatch source): its value depends on a counter."""

    def __init__(self) -> None:
        self.position = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.position += 1
        return gaussian_ll(z) * (1 + 0.1 * (self.position % 3))

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def _stopping_at(step: int, saves: list) -> SamplerCheckpoint:
    """A checkpoint that saves every 4 steps and requests a stop after step ``step``."""

    def save(state):
        saves.append(state)

    ck = SamplerCheckpoint(save, None, every=4)
    after = ck.after_step

    def after_step(done, total, state):
        if done == step:
            stopping._state["requested"] = signal.SIGTERM
        after(done, total, state)

    ck.after_step = after_step  # type: ignore[method-assign]
    return ck


def _run_stopped_then_resumed(sampler, stop_at: int, **kw):
    saves: list = []
    try:
        with pytest.raises(stopping.Stopped) as e:
            sampler(checkpoint=_stopping_at(stop_at, saves), generator=torch.Generator().manual_seed(0), **kw)
    finally:
        stopping.reset()
    assert e.value.exit_code == 143
    assert saves[-1]["step"] == stop_at and [s["step"] for s in saves[:-1]] == list(range(4, stop_at, 4))
    torch.manual_seed(123)  # the resumed process starts from another global RNG state: the checkpoint restores it
    return sampler(
        checkpoint=SamplerCheckpoint(lambda s: None, saves[-1]), generator=torch.Generator().manual_seed(9), **kw
    )


@pytest.mark.parametrize("stop_at", [1, 7, 29])
def test_ess_resumed_equals_uninterrupted(stop_at):
    kw = dict(prior_scale=1.0, num_samples=20, burn_in=5, thin=2)
    whole = elliptical_slice(
        lambda z: float(gaussian_ll(z)), torch.zeros(K), generator=torch.Generator().manual_seed(0), **kw
    )
    resumed = _run_stopped_then_resumed(
        lambda **a: elliptical_slice(lambda z: float(gaussian_ll(z)), torch.zeros(K), **a), stop_at, **kw
    )
    assert torch.equal(resumed.samples, whole.samples)
    assert torch.equal(resumed.log_likelihood, whole.log_likelihood)
    assert resumed.diagnostics["likelihood_evaluations"] == whole.diagnostics["likelihood_evaluations"]


@pytest.mark.parametrize("fit", [mean_field_vi, flow_vi])
def test_vi_resumed_equals_uninterrupted(fit):
    kw = dict(prior_scale=1.0, num_samples=15, steps=40, lr=0.05)
    torch.manual_seed(5)
    whole = fit(Minibatches(), K, generator=torch.Generator().manual_seed(0), **kw)

    def sampler(**a):
        torch.manual_seed(5)  # the flow's initial weights (then replaced by the saved ones)
        return fit(Minibatches(), K, **a)

    resumed = _run_stopped_then_resumed(sampler, 13, **kw)
    assert torch.equal(resumed.samples, whole.samples)
    assert resumed.diagnostics["elbo_trace"] == whole.diagnostics["elbo_trace"]


def test_periodic_saves_come_every_n_steps_and_not_after_the_last():
    """Without a requested stop the sampler runs to the end: a save every ``every`` steps, none after the last
    step (the result is written instead), nothing raised."""
    saves = []
    elliptical_slice(
        lambda z: float(gaussian_ll(z)),
        torch.zeros(K),
        prior_scale=1.0,
        num_samples=5,
        checkpoint=SamplerCheckpoint(saves.append, every=2),
        generator=torch.Generator().manual_seed(0),
    )
    assert [s["step"] for s in saves] == [2, 4]  # never after the last step: the result is written instead


def test_checkpoint_every_is_checked():
    with pytest.raises(InputError, match="checkpoint every"):
        SamplerCheckpoint(lambda s: None, every=0)


def test_nuts_resumes_after_its_completed_chains():
    pytest.importorskip("pyro")
    from valleys.methods.samplers import nuts

    kw = dict(prior_scale=1.0, num_samples=8, warmup=8, chains=3, seed=4)
    whole = nuts(gaussian_ll, torch.zeros(K), **kw)
    saves = []

    def save(state):
        saves.append(state)
        if len(state["chains"]) == 2:
            raise stopping.Stopped(signal.SIGTERM)  # a signal during chain 3: its work is lost, not the others'

    with pytest.raises(stopping.Stopped):
        nuts(gaussian_ll, torch.zeros(K), checkpoint=SamplerCheckpoint(save), **kw)
    resumed = nuts(gaussian_ll, torch.zeros(K), checkpoint=SamplerCheckpoint(lambda s: None, saves[-1]), **kw)
    assert torch.equal(resumed.samples, whole.samples)
    assert resumed.diagnostics["r_hat"] == whole.diagnostics["r_hat"]
