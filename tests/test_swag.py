import math

import pytest
import torch
from scipy.stats import chi2
from torch import nn

from valleys.core.weights import WeightSpaceError
from valleys.methods.averaging import NotCollectedError
from valleys.methods.swag import SWAG, MultiSWAG


def _swag(n=10, rank=5, seed=0, dtype=torch.float64):
    """A SWAG over an 8-weight model fed a random trajectory; also returns the trajectory."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 2).to(dtype)
    swag = SWAG(model, rank=rank)
    traj = torch.randn(n, 8, generator=g, dtype=dtype) * torch.linspace(0.5, 2, 8, dtype=dtype) + 3
    for w in traj:
        swag.collect(w)
    return swag, traj


def _brute_deviations(traj):
    return torch.stack([traj[i] - traj[: i + 1].mean(0) for i in range(len(traj))])


def test_ring_buffer_holds_the_last_k_deviations_and_k_is_min_n_K():
    swag, traj = _swag(n=13, rank=5)
    brute = _brute_deviations(traj)[-5:]
    assert swag.k == 5
    got = sorted(swag.deviations.tolist())
    assert torch.allclose(torch.tensor(got), torch.tensor(sorted(brute.tolist())), atol=1e-12)
    few, traj3 = _swag(n=3, rank=20)
    assert few.k == 3
    d = _brute_deviations(traj3)
    expected = 0.5 * (torch.diag(traj3.var(0, unbiased=False)) + d.T @ d / (3 - 1))  # k - 1 = 2, not K - 1
    assert torch.allclose(few.covariance(0.5), expected, atol=1e-12)


def test_sample_covariance_matches_analytic_low_rank_plus_diagonal():
    swag, _ = _swag()
    cov = swag.covariance(scale=0.5)
    n = 200_000
    s = swag.sample(n, scale=0.5, generator=torch.Generator().manual_seed(1))
    emp = torch.cov(s.T)
    # standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n); allow 5 of them
    se = ((torch.diag(cov)[:, None] * torch.diag(cov)[None, :] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() <= 5 * se).all()
    assert torch.allclose(s.mean(0), swag.mean, atol=5 * math.sqrt(float(torch.diag(cov).max()) / n))


def test_95_percent_ellipsoid_coverage_within_binomial_tolerance():
    swag, _ = _swag()
    cov = swag.covariance(scale=0.5)
    n = 20_000
    s = swag.sample(n, scale=0.5, generator=torch.Generator().manual_seed(2))
    diff = s - swag.mean
    maha = (diff @ torch.linalg.inv(cov) * diff).sum(1)
    inside = float((maha <= chi2.ppf(0.95, df=8)).double().mean())
    assert abs(inside - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / n)


def test_log_prob_equals_dense_float64_reference():
    swag, _ = _swag()
    w = swag.sample(5, generator=torch.Generator().manual_seed(3))
    for diagonal, scale in ((False, 0.5), (True, 1.0)):
        ref = torch.distributions.MultivariateNormal(swag.mean, swag.covariance(scale, diagonal=diagonal))
        assert torch.allclose(swag.log_prob(w, scale=scale, diagonal=diagonal), ref.log_prob(w), atol=1e-8)


def test_scale_zero_is_swa_and_diagonal_samples():
    swag, traj = _swag()
    assert torch.equal(swag.sample(2, scale=0.0)[1], swag.mean)
    s = swag.sample(100_000, scale=1.0, diagonal=True, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(s.var(0), traj.var(0, unbiased=False), rtol=0.03)


def test_bad_input():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="rank"):
        SWAG(model, rank=0)
    swag = SWAG(model)
    with pytest.raises(NotCollectedError, match="nothing collected"):
        swag.sample()
    swag.collect(model)
    with pytest.raises(ValueError, match="at least 2 collected deviations, this SWAG has 1"):
        swag.sample()
    swag.sample(diagonal=True)
    swag.collect(torch.randn(8))
    with pytest.raises(ValueError, match="scale"):
        swag.sample(scale=-1)
    with pytest.raises(ValueError, match="samples"):
        swag.sample(0)
    nan = torch.randn(8)
    nan[2] = float("nan")
    with pytest.raises(WeightSpaceError, match="NaN"):
        swag.collect(nan)
    with pytest.raises(WeightSpaceError, match="architecture"):
        MultiSWAG([swag, SWAG(nn.Linear(4, 2))])


def test_state_dict_roundtrip():
    swag, _ = _swag(n=7, rank=4)
    other = SWAG(nn.Linear(3, 2).double(), rank=4)
    other.load_state_dict(swag.state_dict())
    assert torch.equal(other.covariance(), swag.covariance())
    with pytest.raises(WeightSpaceError, match="rank"):
        SWAG(nn.Linear(3, 2).double(), rank=3).load_state_dict(swag.state_dict())


def test_samples_refuse_bad_arguments_when_called_not_at_the_first_draw():
    swag = SWAG(nn.Linear(3, 2), rank=3)
    with pytest.raises(NotCollectedError):
        swag.samples(2)  # no next(): the refusal comes with the call
    for _ in range(3):
        swag.collect(torch.randn(8))
    with pytest.raises(ValueError, match="samples"):
        swag.samples(0)
    with pytest.raises(ValueError, match="scale"):
        swag.samples(2, scale=-1.0)
    with pytest.raises(ValueError, match="chunk"):
        swag.samples(2, chunk=0)
    with pytest.raises(ValueError, match="chunk"):
        swag.sample(2, chunk=True)
    gen = torch.Generator().manual_seed(0)
    one_by_one = torch.stack(list(swag.samples(3, generator=gen, chunk=1)))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(one_by_one, torch.cat([swag.sample(1, generator=gen) for _ in range(3)]))


@pytest.mark.parametrize("chunk", [1, 3, 8, 11])
@pytest.mark.parametrize("diagonal", [False, True])
def test_chunked_draws_are_bit_identical_to_sample_and_to_the_formula(chunk, diagonal):
    """samples(n, chunk=c) yields exactly the rows of sample(n, chunk=c); both equal the SWAG formula evaluated
    by hand on normals drawn by hand from the same seed, block by block (z1 for the block, then z2)."""
    torch.manual_seed(5)
    swag = SWAG(nn.Linear(30, 7), rank=4)
    for _ in range(6):
        swag.collect(torch.randn(swag.space.size))
    n, scale, size = 10, 0.5, swag.space.size
    streamed = torch.stack(list(swag.samples(n, scale=scale, diagonal=diagonal, generator=_gen(9), chunk=chunk)))
    whole = swag.sample(n, scale=scale, diagonal=diagonal, generator=_gen(9), chunk=chunk)
    assert torch.equal(streamed, whole)
    gen, rows = _gen(9), []
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        z1 = torch.randn(c, size, generator=gen).double()
        w = swag.mean.double() + math.sqrt(scale) * swag.variance.double().sqrt() * z1
        if not diagonal:
            z2 = torch.randn(c, swag.k, generator=gen).double()
            w = w + math.sqrt(scale) * z2 @ swag.deviations.double() / math.sqrt(swag.k - 1)
        rows.append(w)
    torch.testing.assert_close(whole.double(), torch.cat(rows), rtol=1e-6, atol=1e-6)
    if chunk >= n:  # one block: the unchunked sample(n)
        assert torch.equal(whole, swag.sample(n, scale=scale, diagonal=diagonal, generator=_gen(9)))


def _gen(seed):
    return torch.Generator().manual_seed(seed)
