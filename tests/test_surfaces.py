import math

import pytest
import torch

from conftest import BNCNN, loader, mlp
from valleys.core.weights import WeightSpace, WeightSpaceError
from valleys.errors import MissingBNLoaderError
from valleys.evaluation.engine import VmapPolicy
from valleys.evaluation.grid import evaluate_points
from valleys.geometry.surfaces import Plane, grid_axes, line, pca_plane, random_direction, valley_width


def test_plane_coordinates_orthonormal_basis_and_reconstruction():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    pl = Plane(a, b, c)
    assert float(pl.u @ pl.u) == pytest.approx(1) and float(pl.v @ pl.v) == pytest.approx(1)
    assert abs(float(pl.u @ pl.v)) < 1e-12
    assert pl.project(a) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert pl.project(c) == pytest.approx((float((c - a).norm()), 0.0), abs=1e-12)
    bx, by = pl.project(b)
    assert by > 0 and math.hypot(bx, by) == pytest.approx(float((b - a).norm()))
    for p in (a, b, c):
        assert torch.allclose(pl.point(*pl.project(p)), p, atol=1e-12)
    q = torch.randn(50, generator=g, dtype=torch.float64)
    x, y = pl.project(q)
    assert pl.residual(pl.point(x, y)) < 1e-10 and pl.residual(q) > 0.1


def test_plane_errors():
    a = torch.zeros(4)
    b = torch.ones(4)
    with pytest.raises(WeightSpaceError, match="coincide"):
        Plane(a, b, a.clone())
    with pytest.raises(WeightSpaceError, match="collinear"):
        Plane(a, b, 2 * b)
    with pytest.raises(WeightSpaceError, match="equal length"):
        Plane(a, b, torch.ones(5))
    with pytest.raises(ValueError, match="at least 2"):
        grid_axes([(0, 0), (1, 1)], n=1)
    xs, ys = grid_axes([(0, 0), (1, 0), (0, 2)], n=3, margin=0.5)
    assert xs == pytest.approx([-0.5, 0.5, 1.5]) and ys == pytest.approx([-1.0, 1.0, 3.0])


def test_line_is_parametrised_by_distance():
    a, b = torch.zeros(3), torch.tensor([3.0, 4.0, 0.0])
    f = line(a, b)
    assert f.length == pytest.approx(5.0)
    assert torch.allclose(f(5.0), b) and torch.allclose(f(-5.0), -b)


def test_filter_normalisation_equals_a_per_filter_loop():
    torch.manual_seed(0)
    model = BNCNN()
    space = WeightSpace(model)
    w = space.read(model)
    d = random_direction(space, w, generator=torch.Generator().manual_seed(1))
    raw = torch.randn(space.size, generator=torch.Generator().manual_seed(1))
    for name, p in model.named_parameters():  # the oracle: filter by filter
        s = next(s for s in space.slots if s.name == name)
        got = d[s.offset : s.offset + s.numel].view(s.shape)
        r = raw[s.offset : s.offset + s.numel].view(s.shape)
        if p.dim() <= 1:
            assert got.abs().sum() == 0  # biases and BN scales: zero unless include_1d
            continue
        for i in range(p.shape[0]):
            expected = r[i] / r[i].norm() * p[i].detach().norm()
            assert torch.allclose(got[i], expected, atol=1e-6)
    unit = random_direction(space, w, filter_norm=False, generator=torch.Generator().manual_seed(2))
    assert float(unit.norm()) == pytest.approx(1.0)
    with_1d = random_direction(space, w, include_1d=True, generator=torch.Generator().manual_seed(1))
    s = next(s for s in space.slots if s.name == "bn1.weight")
    assert float(with_1d[s.offset : s.offset + s.numel].norm()) == pytest.approx(
        float(model.bn1.weight.detach().norm()), rel=1e-5
    )


def test_pca_plane_recovers_a_two_dimensional_trajectory():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(30, 2, generator=g, dtype=torch.float64))[0].T
    coef = torch.randn(20, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    iterates = 5 + coef @ basis
    mean, u, v, explained = pca_plane(iterates)
    assert float(explained.sum()) == pytest.approx(1.0)
    proj = torch.stack([u, v]) @ basis.T  # u, v span the same plane
    assert float(torch.linalg.det(proj).abs()) == pytest.approx(1.0, abs=1e-8)


def test_valley_width():
    assert valley_width([0, 1, 2, 3], [0.1, 0.2, 0.6, 2.0], rise=0.3) == pytest.approx(1.5)
    assert valley_width([0, 1], [0.1, 0.1], rise=0.3) == math.inf


def test_grid_engine_leaves_model_bit_identical_and_vmap_equals_loop(vec_data):
    torch.manual_seed(0)
    model = mlp()
    space = WeightSpace(model)
    w = space.read(model)
    pts = [w + 0.1 * torch.randn_like(w) for _ in range(5)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = evaluate_points(model, pts, {"train": loader(vec_data)}, batched=VmapPolicy(False, 2))
    vm = evaluate_points(model, pts, {"train": loader(vec_data)}, batched=VmapPolicy(True, 2))
    assert vm.batched and not loop.batched
    assert loop.loss("train") == pytest.approx(vm.loss("train"), rel=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_grid_engine_with_bn_recompute_and_nan_points(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    model.train()
    space = WeightSpace(model)
    w = space.read(model)
    bad = w.clone()
    bad[0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightSpaceError):  # writing NaN weights is refused by the core...
        evaluate_points(model, [w, bad], {"test": loader(img_data)}, bn=loader(img_data))
    huge = w * 1e30  # ...but finite weights with overflowing outputs are recorded as NaN
    with pytest.warns(UserWarning, match="1 of 2 points"):
        res = evaluate_points(model, [w, huge], {"test": loader(img_data)}, bn=loader(img_data))
    assert res.nonfinite == 1 and math.isnan(res.loss("test")[1]) and math.isfinite(res.loss("test")[0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training
    with pytest.raises(MissingBNLoaderError, match="bn=train_loader"):
        evaluate_points(model, [w], {"test": loader(img_data)})
