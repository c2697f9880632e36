"""CUDA: the entry points keep tensors on the model's device, and a seeded CPU generator gives the same random
draws on every device (skipped without a GPU; ``benchmarks/gpu_check.py`` runs them on a lent one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    return x, x[:, :3].argmax(1)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 3))


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Linear(32, 3))


def test_gpu_swag_draws_with_a_cpu_generator_equal_the_cpu_draws():
    from valleys.methods.swag import SWAG

    posts = {}
    for dev in ("cpu", "cuda"):
        model = _model().to(dev)
        swag = SWAG(model, rank=4)
        for i in range(5):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * (i + 1))
            swag.collect(model)
        posts[dev] = swag.sample(3, generator=torch.Generator().manual_seed(1))
    assert posts["cuda"].is_cuda
    assert torch.allclose(posts["cuda"].cpu(), posts["cpu"], atol=1e-5)


def test_gpu_hessian_routines_equal_the_cpu_for_a_seed():
    from valleys.geometry.hessian import LossFunction, hutchinson_trace, lanczos
    from valleys.geometry.spectrum import hutchpp_trace, spectral_density, spectral_moments

    x, y = _data()
    out = {}
    for dev in ("cpu", "cuda"):
        model = _model().to(dev)
        loss = LossFunction(model, [(x.to(dev), y.to(dev))])
        w = loss.space.read(model)
        d = spectral_density(loss, w, steps=15, generator=torch.Generator().manual_seed(0))
        out[dev] = [
            *lanczos(loss, w, k=2, iterations=15, generator=torch.Generator().manual_seed(0))["eigenvalues"].tolist(),
            hutchinson_trace(loss, w, 10, torch.Generator().manual_seed(0), batch=5)["trace"],
            hutchpp_trace(loss, w, 12, torch.Generator().manual_seed(0))["trace"],
            *spectral_moments(d["nodes"], d["weights"], 2),
        ]
    assert out["cuda"] == pytest.approx(out["cpu"], rel=1e-3, abs=1e-6)


def test_gpu_subspace_posterior_feeds_cpu_batches_to_a_cuda_model():
    from valleys.core.weights import WeightSpace
    from valleys.methods.subspace import random_subspace
    from valleys.methods.subspace_posterior import SubspacePosterior

    x, y = _data()
    lls = []
    for dev in ("cpu", "cuda"):  # with BatchNorm: its statistics recomputed at the shift from CPU batches
        model = _bn_model().to(dev)
        w = WeightSpace(model).read(model)
        sub = random_subspace(w, 2, generator=torch.Generator().manual_seed(0))
        post = SubspacePosterior(model, sub, [(x, y)], temperature=10.0)
        lls.append(float(post.log_likelihood(torch.tensor([0.1, -0.2], dtype=torch.float64))))
    assert lls[1] == pytest.approx(lls[0], rel=1e-4)


def test_gpu_folded_grids_and_chunked_draws_keep_to_the_models_device():
    from valleys.core.weights import WeightSpace
    from valleys.evaluation.engine import VmapPolicy
    from valleys.evaluation.folding import AffinePoints
    from valleys.evaluation.grid import evaluate_points
    from valleys.methods.swag import SWAG

    x, y = _data()
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    losses = {}
    for dev in ("cpu", "cuda"):
        model = _model().to(dev).eval()
        space = WeightSpace(model)
        basis = torch.randn(2, space.size, generator=torch.Generator().manual_seed(2)).to(dev) * 0.1
        coords = torch.cartesian_prod(*[torch.linspace(-1, 1, 4, dtype=torch.float64)] * 2)
        pts = AffinePoints(basis, coords, space.read(model))
        for fold in (True, False):
            res = evaluate_points(model, pts, {"d": batches}, bn="keep", batched=VmapPolicy(False, fold=fold))
            losses[(dev, fold)] = torch.tensor(res.loss("d"), dtype=torch.float64)
        swag = SWAG(model, rank=3)
        for k in range(4):
            swag.collect(space.read(model) + 0.01 * k)
        draws = torch.stack(list(swag.samples(5, generator=torch.Generator().manual_seed(3), chunk=2)))
        assert draws.device.type == dev
        losses[(dev, "draws")] = draws.double().cpu()
    for key in (True, False, "draws"):
        torch.testing.assert_close(losses[("cuda", key)], losses[("cpu", key)], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[("cuda", True)], losses[("cuda", False)], rtol=1e-5, atol=0)
