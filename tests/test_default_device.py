"""Tensors created without a device (issue 26): with ``torch.set_default_device("meta")`` and the model and data on
the CPU, any tensor a routine creates without naming its device lands on the meta device and fails, as it would
on a CUDA run with the default left on the CPU. The routines below name their devices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from valleys.core.batchnorm import recompute_bn
from valleys.geometry.hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos, power_iteration
from valleys.geometry.spectrum import block_spectra, density_curve, hutchpp_trace, spectral_density
from valleys.methods.swag import SWAG


@pytest.fixture
def on_cpu_meta_default():
    """The model and data on the CPU, then the default device switched to meta for the test."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    y = x[:, :3].argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)).eval()
    torch.set_default_device("meta")
    try:
        yield model, [(x[:32], y[:32]), (x[32:], y[32:])]
    finally:
        torch.set_default_device(None)


def gen() -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(0)


def test_hessian_and_spectrum_routines_name_their_devices(on_cpu_meta_default):
    model, batches = on_cpu_meta_default
    loss = LossFunction(model, batches)
    w = loss.space.read(model)
    assert lanczos(loss, w, k=2, iterations=10, generator=gen())["eigenvalues"].device.type == "cpu"
    assert power_iteration(loss, w, iterations=5, generator=gen())["eigenvector"].device.type == "cpu"
    batched = hutchinson_trace(loss, w, 5, gen(), batch=2)["trace"]
    assert batched == pytest.approx(hutchinson_trace(loss, w, 5, gen())["trace"], rel=1e-5)
    assert isinstance(hutchpp_trace(loss, w, 9, gen())["trace"], float)
    assert len(spectral_density(loss, w, steps=5, starts=2, generator=gen())["nodes"]) == 2
    assert set(block_spectra(model, batches, generator=gen())) == {"0", "1", "3"}
    assert epsilon_sharpness(loss, w, steps=3)["increase"] >= 0
    grid, dens = density_curve([[0.1, 0.2]], [[0.5, 0.5]], bins=10)
    assert grid.device.type == dens.device.type == "cpu"


def test_swag_draws_and_batchnorm_recompute_name_their_devices(on_cpu_meta_default):
    model, batches = on_cpu_meta_default
    assert recompute_bn(model, batches) == 2
    swag = SWAG(model, rank=3)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        swag.collect(model)
    assert swag.sample(2, generator=gen()).device.type == "cpu"


def test_the_engine_bma_and_grids_name_their_devices(on_cpu_meta_default):
    from valleys.core.weights import WeightSpace
    from valleys.evaluation.engine import VmapPolicy
    from valleys.evaluation.folding import AffinePoints
    from valleys.evaluation.grid import evaluate_points
    from valleys.evaluation.predict import bma, evaluate

    model, batches = on_cpu_meta_default
    space = WeightSpace(model)
    w = space.read(model)
    basis = torch.randn(2, space.size, generator=gen(), device="cpu") * 0.1
    coords = torch.tensor([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)], device="cpu")
    pts = AffinePoints(basis, coords, w)
    for policy in (VmapPolicy(False, fold=True), VmapPolicy(True, fold=True), VmapPolicy("auto", fold=False)):
        res = evaluate_points(model, pts, {"d": batches}, bn=batches, batched=policy)
        assert len(res.loss("d")) == 9
    res = evaluate_points(model, pts, {"d": batches}, bn="keep", batched=VmapPolicy(False, fold=True))
    assert all(v == v for v in res.loss("d"))
    swag = SWAG(model, rank=3)
    for k in range(4):
        swag.collect(w + 0.01 * k)
    out = bma(model, swag.samples(3, generator=gen()), batches, bn=batches, return_probs=True)
    assert out.probs.device.type == "cpu"
    assert 0 <= evaluate(model, batches, reliability=True).accuracy <= 1


def test_subspace_sampling_names_its_devices(on_cpu_meta_default):
    from valleys.methods.samplers import elliptical_slice
    from valleys.methods.subspace import random_subspace
    from valleys.methods.subspace_posterior import SubspacePosterior

    model, batches = on_cpu_meta_default
    from valleys.core.weights import WeightSpace

    w = WeightSpace(model).read(model)
    sub = random_subspace(w, 2, generator=gen())
    post = SubspacePosterior(model, sub, batches, bn="keep")
    z0 = torch.zeros(2, dtype=torch.float64, device="cpu")
    out = elliptical_slice(post.log_likelihood, z0, prior_scale=1.0, num_samples=5, generator=gen())
    assert out.samples.device.type == "cpu" and out.samples.shape == (5, 2)


def test_the_trainer_names_its_devices(on_cpu_meta_default):
    from valleys.methods.averaging import SWA
    from valleys.training.callbacks import SWACallback
    from valleys.training.trainer import Trainer

    model, batches = on_cpu_meta_default
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    swa = SWA(model)
    log = Trainer(model, opt, batches, 2, callbacks=[SWACallback(swa, 0, bn_loader=batches)]).fit(progress=False)
    assert len(log) == 2 and swa.n == 2
