"""Hutch++, batched Hessian-vector products, stochastic Lanczos quadrature and per-block spectra against exact
float64 Hessians of small models (``torch.autograd.functional.hessian``) and known matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.geometry.hessian import LossFunction, hutchinson_trace
from valleys.geometry.spectrum import (
    block_spectra,
    density_curve,
    hutchpp_trace,
    layer_blocks,
    spectral_density,
    spectral_moments,
)


class Quadratic(nn.Module):
    """``L(w) = w^T A w / 2`` as a model whose 'prediction' is the loss: its Hessian is exactly ``A``."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.randn(a.shape[0], dtype=a.dtype, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return (0.5 * self.w @ self.a @ self.w).expand(x.shape[0])


def quadratic_loss(a: torch.Tensor) -> tuple[LossFunction, torch.Tensor]:
    model = Quadratic(a)
    batches = [(torch.zeros(3, 1, dtype=a.dtype), torch.zeros(3))]
    loss = LossFunction(model, batches, adapter=ModelAdapter(loss=lambda pred, y: pred.mean()))
    return loss, loss.space.read(model)


def decaying(p: int = 60, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with eigenvalues 1/j^2 (decaying) and random eigenvectors, float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q @ torch.diag(1.0 / torch.arange(1, p + 1, dtype=torch.float64) ** 2) @ q.T


def tiny_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return model, [(x[:25], y[:25]), (x[25:], y[25:])]


def exact_hessian(model, batches) -> torch.Tensor:
    space = WeightSpace(model)
    w = space.read(model)
    total = sum(len(b[1]) for b in batches)

    def f(v):
        return sum(
            nn.functional.cross_entropy(space.call_with(model, space.views(v), (x,)), y) * len(y) / total
            for x, y in batches
        )

    return torch.autograd.functional.hessian(f, w)


@pytest.mark.parametrize("route", ["double_backward", "forward_over_reverse"])
@pytest.mark.parametrize("batched", [True, False, "auto"])
def test_batched_products_equal_the_loop(route, batched):
    model, batches = tiny_net()
    loss = LossFunction(model, batches, route=route)
    w = loss.space.read(model)
    vs = torch.randn(7, w.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    one = torch.stack([loss.hvp(w, v) for v in vs])
    many = loss.hvp_many(w, vs, batched=batched)
    assert torch.allclose(many, one, rtol=1e-10, atol=1e-12)
    assert torch.allclose(many, vs @ exact_hessian(model, batches), rtol=1e-8, atol=1e-10)
    if batched == "auto":
        assert loss._batched_choice in (True, False)  # the probe chose and remembered


def test_batched_hutchinson_draws_the_same_probes():
    model, batches = tiny_net()
    loss = LossFunction(model, batches)
    w = loss.space.read(model)
    a = hutchinson_trace(loss, w, 12, torch.Generator().manual_seed(5))
    b = hutchinson_trace(loss, w, 12, torch.Generator().manual_seed(5), batch=4)
    assert a["trace"] == pytest.approx(b["trace"], rel=1e-12) and a["stderr"] == pytest.approx(b["stderr"], rel=1e-9)


def test_hutchpp_is_exact_when_its_sketch_spans_the_space():
    a = decaying(12)
    loss, w = quadratic_loss(a)
    r = hutchpp_trace(loss, w, 36, torch.Generator().manual_seed(0))  # sketch of 12 = P columns
    assert r["rank"] == 12 and r["products"] == 36
    assert r["trace"] == pytest.approx(float(torch.trace(a)), rel=1e-10)


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum_with_the_same_products():
    """Over 40 seeds, 30 products each: the spread of Hutch++ around the true trace is far below Hutchinson's
    (Meyer et al. 2021), and both are centred on it."""
    a = decaying(60)
    loss, w = quadratic_loss(a)
    true = float(torch.trace(a))
    pp = [hutchpp_trace(loss, w, 30, torch.Generator().manual_seed(s))["trace"] for s in range(40)]
    hu = [hutchinson_trace(loss, w, 30, torch.Generator().manual_seed(s))["trace"] for s in range(40)]
    err_pp = math.sqrt(sum((t - true) ** 2 for t in pp) / 40)
    err_hu = math.sqrt(sum((t - true) ** 2 for t in hu) / 40)
    assert err_pp < err_hu / 5, (err_pp, err_hu)
    assert abs(sum(pp) / 40 - true) < 4 * err_pp / math.sqrt(40) + 1e-9


def test_full_lanczos_quadrature_recovers_the_spectrum_and_its_moments():
    model, batches = tiny_net()
    h = exact_hessian(model, batches)
    p = h.shape[0]
    eig = torch.linalg.eigvalsh(h)
    loss = LossFunction(model, batches)
    w = loss.space.read(model)
    one = spectral_density(loss, w, steps=p, starts=1, generator=torch.Generator().manual_seed(0))
    nodes = np.array(sorted(one["nodes"][0]))
    # m = P steps: the Ritz values are the distinct eigenvalues (a Krylov space holds one direction per distinct
    # eigenvalue; cross-entropy's Hessian repeats 0, so Lanczos stops early when the space is exhausted)
    distinct = np.unique(np.round(eig.numpy(), 6))
    assert len(nodes) < p and len(nodes) == len(distinct)
    assert np.abs(nodes[:, None] - eig.numpy()[None, :]).min(1).max() < 1e-7
    assert np.abs(distinct[:, None] - nodes[None, :]).min(1).max() < 1e-5
    assert sum(one["weights"][0]) == pytest.approx(1.0, rel=1e-10)
    # moments: a single start gives v^T H^j v / P exactly (v the Rademacher start); many starts -> tr(H^j) / P
    many = spectral_density(loss, w, steps=p, starts=60, generator=torch.Generator().manual_seed(1))
    for j, m in enumerate(spectral_moments(many["nodes"], many["weights"], 3), start=1):
        exact = float((eig**j).sum()) / p
        # Rademacher probes: the variance of v^T A v / P is 2 (|A|_F^2 - sum diag^2) / P^2
        a = torch.linalg.matrix_power(h, j)
        sd = math.sqrt(2 * (float((a**2).sum()) - float((a.diagonal() ** 2).sum()))) / p
        assert abs(m - exact) < 5 * sd / math.sqrt(60) + 1e-12, (j, m, exact)


def test_density_curve_is_pyhessians_density_generate():
    g = np.random.default_rng(0)
    nodes = np.sort(g.normal(size=(3, 20)), axis=1)
    weights = g.random((3, 20))
    weights /= weights.sum(1, keepdims=True)
    grid, dens = density_curve(nodes.tolist(), weights.tolist(), bins=500, sigma_squared=1e-3)
    # PyHessian's density_generate (Yao et al. 2020), as published, in numpy
    lmax = np.mean(np.max(nodes, axis=1)) + 0.01
    lmin = np.mean(np.min(nodes, axis=1)) - 0.01
    grids = np.linspace(lmin, lmax, num=500)
    sigma = 1e-3 * max(1, lmax - lmin)
    out = np.zeros((3, 500))
    for i in range(3):
        for j in range(500):
            out[i, j] = np.sum(
                np.exp(-((grids[j] - nodes[i]) ** 2) / (2.0 * sigma)) / np.sqrt(2 * np.pi * sigma) * weights[i]
            )
    ref = out.mean(0)
    ref /= ref.sum() * (grids[1] - grids[0])
    assert np.allclose(grid.numpy(), grids) and np.allclose(dens.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_block_traces_add_up_and_block_eigenvalues_are_the_blocks():
    model, batches = tiny_net()
    h = exact_hessian(model, batches)
    blocks = layer_blocks(model)
    assert list(blocks) == ["0", "2"]
    res = block_spectra(model, batches, k=2, iterations=40, trace="exact")
    sizes = [res[b]["parameters"] for b in blocks]
    assert sum(sizes) == h.shape[0]
    start = 0
    for b, n in zip(blocks, sizes, strict=True):
        sub = h[start : start + n, start : start + n]
        assert res[b]["trace"] == pytest.approx(float(torch.trace(sub)), rel=1e-9)
        top = torch.linalg.eigvalsh(sub).flip(0)[:2]
        assert np.allclose(res[b]["eigenvalues"], top.numpy(), rtol=1e-6, atol=1e-9)
        start += n
    assert sum(res[b]["trace"] for b in blocks) == pytest.approx(float(torch.trace(h)), rel=1e-9)
    est = block_spectra(model, batches, trace="hutchpp", trace_products=30, generator=torch.Generator().manual_seed(0))
    for b in blocks:  # Hutch++ with more products than a block has parameters: exact up to rounding
        if est[b]["parameters"] * 3 <= 30:
            assert est[b]["trace"] == pytest.approx(res[b]["trace"], rel=1e-8)


def test_bad_arguments_are_refused():
    from valleys.errors import InputError

    model, batches = tiny_net()
    loss = LossFunction(model, batches)
    w = loss.space.read(model)
    with pytest.raises(InputError, match="products"):
        hutchpp_trace(loss, w, 5)
    with pytest.raises(InputError, match="steps"):
        spectral_density(loss, w, steps=0)
    with pytest.raises(InputError, match="trace"):
        block_spectra(model, batches, trace="diag")
    with pytest.raises(InputError, match="nodes and weights"):
        density_curve([[1.0, 2.0]], [[1.0]])
