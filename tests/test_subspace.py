"""Subspaces (random, PCA, curve, frequent directions) and the subspace posterior, against dense oracles."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import DropoutBNMLP
from valleys.core.weights import WeightSpace
from valleys.methods.subspace import (
    FrequentDirections,
    Subspace,
    SubspaceError,
    curve_subspace,
    pca_subspace,
    random_subspace,
)
from valleys.methods.subspace_posterior import SubspacePosterior
from valleys.methods.swag import SWAG


def _trajectory(n=12, p=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.randn(3, p, generator=g, dtype=torch.float64)
    return low * torch.tensor([3.0, 2.0, 1.0]).repeat_interleave(1).sum() + 0.01 * torch.randn(
        n, p, generator=g, dtype=torch.float64
    )


def test_random_subspace_rows_are_unit_norm_and_projection_inverts_to_weights():
    shift = torch.randn(40, dtype=torch.float64)
    s = random_subspace(shift, 5, generator=torch.Generator().manual_seed(0))
    assert s.k == 5 and s.kind == "random"
    assert torch.allclose(s.basis.norm(dim=1), torch.ones(5, dtype=torch.float64))
    z = torch.randn(7, 5, dtype=torch.float64)
    w = s.to_weights(z)
    assert w.shape == (7, 40) and torch.allclose(s.project(w), z, atol=1e-10)
    assert torch.allclose(s.to_weights(z[0]), shift + z[0] @ s.basis)


@pytest.mark.parametrize("block", [1 << 20, 7])  # one block, and column blocks that split the 50 weights
def test_pca_subspace_equals_a_dense_svd_of_the_deviations(block, monkeypatch):
    monkeypatch.setattr("valleys.methods.subspace.PCA_BLOCK", block)
    d = _trajectory()
    d = d - d.mean(0)
    shift = torch.zeros(50, dtype=torch.float64)
    before = d.clone()
    s = pca_subspace(d, 3, shift=shift)
    assert torch.equal(d, before)  # the caller's deviations are read, never scaled in place
    u, sv, vt = torch.linalg.svd(d / math.sqrt(len(d) - 1), full_matrices=False)
    dense = sv[:3, None] * vt[:3]
    for i in range(3):  # up to sign
        sign = torch.sign((s.basis[i] * dense[i]).sum())
        assert torch.allclose(s.basis[i] * sign, dense[i], atol=1e-9)
    assert s.info["singular_values"] == pytest.approx(sv[:3].tolist(), rel=1e-9)
    assert sum(s.info["explained_variance_ratio"]) == pytest.approx(float((sv[:3] ** 2).sum() / (sv**2).sum()))
    r = pca_subspace(d, 3, shift=shift, method="randomized", generator=torch.Generator().manual_seed(0))
    assert r.info["singular_values"] == pytest.approx(sv[:3].tolist(), rel=1e-6)
    # the subspace reproduces every w in it
    w = s.to_weights(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(s.to_weights(s.project(w)), w, atol=1e-9)


def test_pca_subspace_from_a_swag_run_and_its_refusals():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    swag = SWAG(model, rank=5)
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        swag.collect(model)
    s = pca_subspace(swag.deviations, 2, shift=swag.mean)
    assert s.basis.shape == (2, 15) and torch.equal(s.shift, swag.mean)
    with pytest.raises(SubspaceError, match="larger than the 5 collected deviations"):
        pca_subspace(swag.deviations, 6, shift=swag.mean)
    with pytest.raises(SubspaceError, match="integer >= 1"):
        pca_subspace(swag.deviations, 0, shift=swag.mean)
    with pytest.raises(SubspaceError, match="at least 2"):
        pca_subspace(swag.deviations[:1], 1, shift=swag.mean)
    with pytest.raises(SubspaceError, match="NaN"):
        Subspace(torch.full((3,), math.nan), torch.ones(1, 3))


def test_curve_subspace_is_orthonormal_and_holds_the_three_points():
    g = torch.Generator().manual_seed(1)
    w0, theta, w1 = (torch.randn(30, generator=g, dtype=torch.float64) for _ in range(3))
    mid = 0.25 * (w0 + w1) + 0.5 * theta  # a quadratic Bezier curve at t = 1/2
    s = curve_subspace(w0, mid, w1)
    assert s.is_orthonormal() and s.k == 2
    assert torch.allclose(s.shift, (w0 + mid + w1) / 3)
    for w in (w0, mid, w1):
        assert torch.allclose(s.to_weights(s.project(w)), w, atol=1e-10)
    with pytest.raises(SubspaceError, match="coincide"):
        curve_subspace(w0, mid, w0)
    with pytest.raises(SubspaceError, match="no plane"):
        curve_subspace(w0, 0.5 * (w0 + w1), w1)


def test_frequent_directions_meets_its_error_bound():
    a = _trajectory(n=60, p=40, seed=3)
    ell = 8
    fd = FrequentDirections(ell, 40)
    for row in a:
        fd.update(row)
    b = fd.sketch()
    assert b.shape[0] <= ell and fd.rows_seen == 60
    err = float(torch.linalg.matrix_norm(a.T @ a - b.T @ b, ord=2))
    sv = torch.linalg.svdvals(a)
    for r in range(ell):  # ||A^T A - B^T B||_2 <= ||A - A_r||_F^2 / (ell - r) for every r < ell
        assert err <= float((sv[r:] ** 2).sum()) / (ell - r) * (1 + 1e-9)
    s = fd.subspace(2, torch.zeros(40, dtype=torch.float64))
    dense = pca_subspace(a, 2, shift=torch.zeros(40, dtype=torch.float64))
    cos = (s.basis / s.basis.norm(dim=1, keepdim=True)) @ (dense.basis / dense.basis.norm(dim=1, keepdim=True)).T
    assert cos.abs().diagonal().min() > 0.99  # the sketch finds the same top directions


def _posterior_setup(bn=False):
    torch.manual_seed(0)
    model = DropoutBNMLP() if bn else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    space = WeightSpace(model)
    sub = random_subspace(space.read(model), 2, generator=torch.Generator().manual_seed(1))
    return model, batches, x, y, space, sub


def test_posterior_temperature_and_prior_enter_as_written():
    model, batches, x, y, space, sub = _posterior_setup()
    post = SubspacePosterior(model, sub, batches, temperature=3.0, prior_scale=2.0)
    z = torch.tensor([0.4, -0.7], dtype=torch.float64)
    with torch.no_grad():
        logits = torch.func.functional_call(model, space.unflatten(sub.to_weights(z.float())), (x,)).double()
        nll = float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    prior = -float((z**2).sum()) / (2 * 4.0) - math.log(2 * math.pi * 4.0)
    assert float(post.log_likelihood(z)) == pytest.approx(-nll / 3.0, rel=1e-6)
    assert float(post.log_prob(z)) == pytest.approx(-nll / 3.0 + prior, rel=1e-6)
    zs = torch.stack([z, -z, torch.zeros(2, dtype=torch.float64)])
    many = post.log_likelihood(zs)
    assert many.shape == (3,) and float(many[0]) == pytest.approx(float(post.log_likelihood(z)), rel=1e-6)
    diff = post.differentiable_log_likelihood(z.clone().requires_grad_(True))
    assert float(diff) == pytest.approx(-nll / 3.0, rel=1e-5)
    # the gradient against central finite differences in float64 on a float64 copy of the model
    model64 = copy.deepcopy(model).double()
    sub64 = Subspace(sub.shift.double(), sub.basis.double())
    post64 = SubspacePosterior(model64, sub64, [(a.double(), b) for a, b in batches], temperature=3.0)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(post64.differentiable_log_likelihood(zz), zz)
    eps = 1e-6
    fd = torch.tensor(
        [
            (float(post64.log_likelihood(z + eps * e)) - float(post64.log_likelihood(z - eps * e))) / (2 * eps)
            for e in torch.eye(2, dtype=torch.float64)
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6)
    # a minibatch estimate is the batch's NLL scaled by N / batch size
    est = post.differentiable_log_likelihood(z, batches[1])
    with torch.no_grad():
        nll_b = float(nn.functional.cross_entropy(logits[25:], y[25:], reduction="sum"))
    assert float(est) == pytest.approx(-nll_b * 40 / 15 / 3.0, rel=1e-5)


def test_posterior_on_a_batchnorm_model_leaves_it_untouched_and_recomputes_at_the_shift():
    model, batches, x, y, space, sub = _posterior_setup(bn=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)  # Dropout is active during a BatchNorm recompute (train mode): same masks for the oracle
    post = SubspacePosterior(model, sub, batches, prior_scale=1.0)
    assert post.bn_label == "shift"
    z = torch.tensor([0.2, 0.1], dtype=torch.float64)
    ll = float(post.log_likelihood(z))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training
    # oracle: statistics recomputed at the shift on a copy (exact batch statistics), evaluated at w(z)
    ref = copy.deepcopy(model)
    from valleys.core.batchnorm import recompute_bn

    space.write(ref, sub.shift)
    torch.manual_seed(5)
    recompute_bn(ref, batches)
    space.write(ref, sub.to_weights(z.float()))
    ref.eval()
    with torch.no_grad():
        nll = float(nn.functional.cross_entropy(ref(x).double(), y, reduction="sum"))
    assert ll == pytest.approx(-nll, rel=1e-5)
    exact = SubspacePosterior(model, sub, batches, bn="recompute")
    assert math.isfinite(float(exact.log_likelihood(z)))
    with pytest.raises(ValueError, match="bn='shift'"):
        exact.differentiable_log_likelihood(z)


def test_posterior_refusals():
    model, batches, _, _, _, sub = _posterior_setup()
    for kw, msg in (
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"prior_scale": -1.0}, "prior scale"),
        ({"bn": "fresh"}, "BatchNorm policy"),
    ):
        with pytest.raises(ValueError, match=msg):
            SubspacePosterior(model, sub, batches, **kw)
    with pytest.raises(ValueError, match="different architecture"):
        SubspacePosterior(nn.Linear(5, 3), sub, batches)
