"""Elliptical slice sampling, mean-field VI and NUTS on posteriors known in closed form.

The target: a Gaussian prior N(0, s^2 I) times a Gaussian likelihood L(z) = N(A z; b, noise^2 I) (Bayesian
linear regression), whose posterior is N(m, C) with C = (A^T A / noise^2 + I / s^2)^-1, m = C A^T b / noise^2.
"""

import math

import pytest
import torch

from valleys.methods.samplers import SamplerError, elliptical_slice, flow_vi, gaussian_log_prior, mean_field_vi, nuts


def _linear_gaussian(correlated: bool):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 2, generator=g, dtype=torch.float64)
    if correlated:
        a[:, 1] = a[:, 0] + 0.5 * a[:, 1]  # strongly correlated posterior
    b = torch.randn(30, generator=g, dtype=torch.float64)
    noise, s = 1.5, 2.0
    cov = torch.linalg.inv(a.T @ a / noise**2 + torch.eye(2, dtype=torch.float64) / s**2)
    mean = cov @ a.T @ b / noise**2

    def log_lik(z):
        r = a @ z - b
        return -0.5 * (r * r).sum() / noise**2 - 30 * math.log(noise * math.sqrt(2 * math.pi))

    return log_lik, s, mean, cov


def test_gaussian_log_prior_is_the_normal_density():
    z = torch.tensor([0.3, -1.2], dtype=torch.float64)
    expected = float(
        torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
        .log_prob(z)
        .sum()
    )
    assert float(gaussian_log_prior(z, 2.0)) == pytest.approx(expected, rel=1e-12)


def test_ess_recovers_a_correlated_gaussian_posterior():
    log_lik, s, mean, cov = _linear_gaussian(correlated=True)
    res = elliptical_slice(
        log_lik,
        torch.zeros(2),
        prior_scale=s,
        num_samples=4000,
        burn_in=200,
        generator=torch.Generator().manual_seed(1),
    )
    x = res.samples
    assert x.shape == (4000, 2) and res.method == "ess"
    # Monte-Carlo error: ESS draws are autocorrelated; allow 6 standard errors of an effective size of 400
    se = torch.diagonal(cov).sqrt() / math.sqrt(400)
    assert ((x.mean(0) - mean).abs() <= 6 * se).all(), (x.mean(0), mean)
    emp = torch.cov(x.T)
    assert torch.allclose(emp, cov, rtol=0.25, atol=0.05 * float(cov.abs().max())), (emp, cov)
    # a Kolmogorov-Smirnov test on a projection against its exact normal marginal, on thinned draws
    d = torch.tensor([1.0, -1.0], dtype=torch.float64)
    proj = (x[::10] @ d).sort().values
    sd = math.sqrt(float(d @ cov @ d))
    cdf = 0.5 * (1 + torch.erf((proj - float(d @ mean)) / (sd * math.sqrt(2))))
    n = len(proj)
    ks = float(torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(0, n) / n).max())
    assert ks < 1.63 / math.sqrt(n) * 1.5  # the 1% critical value, with room for the residual autocorrelation
    assert res.diagnostics["likelihood_evaluations"] > 4200 and res.log_likelihood.shape == (4000,)


def test_ess_refuses_a_nonfinite_start_and_caps_the_shrinks():
    with pytest.raises(SamplerError, match="starting point"):
        elliptical_slice(lambda z: float("nan"), torch.zeros(2), prior_scale=1.0, num_samples=3)
    calls = {"n": 0}

    def never(z):  # finite at the start only: every proposal is rejected
        calls["n"] += 1
        return 0.0 if calls["n"] == 1 else -math.inf

    with pytest.raises(SamplerError, match="no acceptance after 20 shrinks"):
        elliptical_slice(never, torch.zeros(2), prior_scale=1.0, num_samples=3, max_shrinks=20)
    with pytest.raises(ValueError, match="prior scale"):
        elliptical_slice(lambda z: 0.0, torch.zeros(2), prior_scale=0.0, num_samples=3)
    with pytest.raises(ValueError, match="num_samples"):
        elliptical_slice(lambda z: 0.0, torch.zeros(2), prior_scale=1.0, num_samples=0)


@pytest.mark.slow
def test_mean_field_vi_matches_the_exact_posterior_where_it_is_diagonal():
    log_lik, s, mean, cov = _linear_gaussian(correlated=False)
    g = torch.Generator().manual_seed(2)
    res = mean_field_vi(
        lambda z: torch.as_tensor(log_lik(z)),
        2,
        prior_scale=s,
        num_samples=500,
        steps=1500,
        lr=0.03,
        mc_samples=4,
        generator=g,
    )
    mu = torch.tensor(res.diagnostics["mean"], dtype=torch.float64)
    sd = torch.tensor(res.diagnostics["std"], dtype=torch.float64)
    # mean-field VI on a Gaussian: the optimum has the exact means and std_j = 1 / sqrt((C^-1)_jj)
    prec_diag = torch.diagonal(torch.linalg.inv(cov))
    assert torch.allclose(mu, mean, atol=0.03), (mu, mean)
    assert torch.allclose(sd, 1 / prec_diag.sqrt(), rtol=0.1), (sd, 1 / prec_diag.sqrt())
    assert res.samples.shape == (500, 2) and math.isfinite(res.diagnostics["elbo"])


@pytest.mark.slow
def test_nuts_recovers_the_gaussian_posterior_with_diagnostics():
    pytest.importorskip("pyro")
    log_lik, s, mean, cov = _linear_gaussian(correlated=True)

    res = nuts(log_lik, torch.zeros(2, dtype=torch.float64), prior_scale=s, num_samples=400, warmup=200, chains=2)
    x = res.samples
    assert x.shape == (800, 2)
    se = torch.diagonal(cov).sqrt() / math.sqrt(200)
    assert ((x.mean(0) - mean).abs() <= 5 * se).all(), (x.mean(0), mean)
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.3, atol=0.05 * float(cov.abs().max()))
    assert all(r < 1.1 for r in res.diagnostics["r_hat"]) and all(n > 100 for n in res.diagnostics["n_eff"])
    assert res.diagnostics["divergences"] == 0


def test_flow_vi_captures_a_correlation_that_mean_field_cannot():
    # target: prior N(0, 10^2 I) times a Gaussian likelihood with correlation 0.9; the posterior is Gaussian
    # with precision C^-1 + I / 100 (closed form). Mean-field q has zero correlation by construction.
    torch.manual_seed(0)
    c = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    prec = torch.linalg.inv(c)
    s = 10.0
    post_cov = torch.linalg.inv(prec + torch.eye(2, dtype=torch.float64) / s**2)
    post_mean = post_cov @ prec @ m
    log_lik = lambda z: -0.5 * (z - m) @ prec @ (z - m)  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    res = flow_vi(log_lik, 2, prior_scale=s, num_samples=4000, steps=1500, lr=0.01, mc_samples=8, generator=gen)
    cov = torch.cov(res.samples.T)
    corr = cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()
    true_corr = post_cov[0, 1] / (post_cov[0, 0] * post_cov[1, 1]).sqrt()
    assert abs(float(corr - true_corr)) < 0.08, (float(corr), float(true_corr))
    assert torch.allclose(res.samples.mean(0), post_mean, atol=0.15)  # posterior sd about 1
    assert torch.allclose(cov.diagonal(), post_cov.diagonal(), rtol=0.2)
    mf = mean_field_vi(log_lik, 2, prior_scale=s, num_samples=4000, steps=1500, generator=gen)
    mf_cov = torch.cov(mf.samples.T)
    assert abs(float(mf_cov[0, 1] / (mf_cov[0, 0] * mf_cov[1, 1]).sqrt())) < 0.1  # what the flow adds
    with pytest.raises(ValueError, match="layers"):
        flow_vi(log_lik, 2, prior_scale=s, num_samples=5, layers=-1)
