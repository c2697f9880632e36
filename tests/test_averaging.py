import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from conftest import BNCNN, DropoutBNMLP, loader
from valleys.core.weights import WeightSpace, WeightSpaceError
from valleys.methods.averaging import EMA, SWA, NotCollectedError


def _sgd_trajectory(model, data, steps=12, lr=0.05):
    """Yield after each SGD step on ``data`` (the model is trained in place)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    it = iter(loader(data, bs=10, shuffle=True))
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader(data, bs=10, shuffle=True))
            x, y = next(it)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        yield


@pytest.mark.slow
@pytest.mark.parametrize("make,data", [(BNCNN, "img_data"), (DropoutBNMLP, "vec_data")])
def test_mean_equals_averaged_model_and_float64_brute_force(make, data, request):
    ds = request.getfixturevalue(data)
    torch.manual_seed(0)
    model = make()
    swa, ref = SWA(model), AveragedModel(model)
    space = WeightSpace(model)
    iterates = []
    for _ in _sgd_trajectory(model, ds):
        swa.collect(model)
        ref.update_parameters(model)
        iterates.append(space.read(model, dtype=torch.float64))
    ref_w = WeightSpace(ref.module).read(ref.module)
    assert swa.n == 12
    assert (swa.mean - ref_w).abs().max() <= 1e-6
    brute = torch.stack(iterates)
    assert torch.allclose(swa.mean.double(), brute.mean(0), atol=1e-6)
    assert torch.allclose(swa.variance.double(), brute.var(0, unbiased=False), atol=1e-6, rtol=1e-4)


def test_apply_with_bn_recompute_equals_averaged_model_plus_update_bn(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    swa, ref = SWA(model), AveragedModel(model)
    for _ in _sgd_trajectory(model, img_data, steps=6):
        swa.collect(model)
        ref.update_parameters(model)
    target = BNCNN()
    swa.apply(target, loader(img_data, bs=14))
    update_bn(loader(img_data, bs=14), ref)
    assert (WeightSpace(target).read(target) - WeightSpace(ref.module).read(ref.module)).abs().max() <= 1e-6
    mine = dict(target.named_buffers())
    for name, buf in ref.module.named_buffers():
        if name.endswith("running_mean"):
            assert torch.allclose(mine[name], buf, atol=1e-5), name
        elif name.endswith("running_var"):  # update_bn averages per-batch variances: close, not exact
            assert torch.allclose(mine[name], buf, rtol=1e-2), name


def test_welford_variance_survives_large_mean_where_naive_formula_fails():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(50, 20)  # P = 1020
    space = WeightSpace(model)
    # |mean| / std = 1e4: mean 1000, std 0.1
    traj = 1000.0 + 0.1 * torch.randn(200, space.size, generator=g, dtype=torch.float64)
    exact = traj.var(0, unbiased=False)
    swa = SWA(model)
    s1 = torch.zeros(space.size)
    s2 = torch.zeros(space.size)
    for w in traj.float():
        swa.collect(w)
        s1 += w
        s2 += w * w
    naive = s2 / 200 - (s1 / 200) ** 2  # E[w^2] - E[w]^2 in float32
    welford_err = ((swa.variance.double() - exact).abs() / exact).max()
    naive_err = ((naive.double() - exact).abs() / exact).max()
    assert welford_err < 1e-2, welford_err
    assert naive_err > 1.0, naive_err  # garbage: relative errors above 100%, some negative
    assert (naive < 0).any()


def test_ema_matches_formula_and_warmup():
    model = nn.Linear(3, 2)
    ws = [torch.randn(8) for _ in range(5)]
    ema = EMA(model, decay=0.9)
    for w in ws:
        ema.collect(w)
    m = ws[0].clone()
    for w in ws[1:]:
        m = 0.9 * m + 0.1 * w
    assert torch.allclose(ema.mean, m, atol=1e-6)
    warm = EMA(model, decay=0.99, warmup=True)
    for w in ws:
        warm.collect(w)
    assert torch.allclose(warm.mean, torch.stack(ws).mean(0), atol=1e-6)  # uniform while 1-1/(n+1) < decay
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_errors_before_collect_nan_and_mismatched_state():
    model = nn.Linear(3, 2)
    swa = SWA(model)
    with pytest.raises(NotCollectedError, match="collect"):
        _ = swa.mean
    with pytest.raises(NotCollectedError):
        swa.apply(model)
    bad = torch.randn(8)
    bad[0] = float("inf")
    with pytest.raises(WeightSpaceError, match="NaN or infinite"):
        swa.collect(bad)
    assert swa.n == 0
    with pytest.raises(WeightSpaceError, match="length 8"):
        swa.collect(torch.randn(9))
    with pytest.raises(WeightSpaceError, match="shape"):
        swa.collect(nn.Linear(3, 3))
    other = SWA(nn.Linear(4, 2))
    other.collect(nn.Linear(4, 2))
    with pytest.raises(WeightSpaceError, match="cannot be loaded"):
        swa.load_state_dict(other.state_dict())


def test_state_dict_roundtrip_and_subset():
    torch.manual_seed(0)
    model = DropoutBNMLP()
    swa = SWA(model, ["fc2.weight", "fc2.bias"], dtype=torch.float64)
    for _ in range(3):
        swa.collect(model)
        with torch.no_grad():
            model.fc2.weight.add_(1.0)
    assert swa.mean.dtype == torch.float64 and swa.space.size == 16 * 3 + 3
    again = SWA(model, ["fc2.weight", "fc2.bias"], dtype=torch.float64)
    again.load_state_dict(swa.state_dict())
    assert again.n == 3 and torch.equal(again.mean, swa.mean) and torch.equal(again.variance, swa.variance)
    fc1 = model.fc1.weight.detach().clone()
    again.write(model)
    assert torch.equal(model.fc1.weight, fc1)  # outside the subset: untouched
    assert torch.allclose(model.fc2.weight.double(), swa.mean[:48].view(3, 16))
