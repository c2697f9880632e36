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
