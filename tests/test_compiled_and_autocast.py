"""A ``torch.compile``d module (``backend="eager"``: the same wrapper and names as inductor, without its
compile time) with SWA, SWAG, curves, the engine and the trainer's checkpoints: names and state dicts are the
original module's; and ``torch.autocast`` / low-precision training keeps averages and moments in float32."""

import copy

import pytest
import torch
from torch import nn

from valleys.core.weights import WeightSpace, unwrap
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.predict import bma
from valleys.geometry.curves import Curve, CurveModel
from valleys.methods.averaging import SWA
from valleys.methods.swag import SWAG
from valleys.training.callbacks import SWACallback
from valleys.training.trainer import CheckpointPolicy, Trainer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def _data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def test_compiled_module_names_and_averages_are_the_original_modules():
    plain = _net()
    compiled = torch.compile(copy.deepcopy(plain), backend="eager")
    assert unwrap(compiled) is compiled._orig_mod and unwrap(plain) is plain
    space = WeightSpace(compiled)
    assert space.names == WeightSpace(plain).names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    swa_c, swa_p, swag_c = SWA(compiled), SWA(plain), SWAG(compiled, rank=3)
    for k in range(4):
        with torch.no_grad():
            for m in (plain, compiled):
                for p in m.parameters():
                    p.add_(0.01 * (k + 1))
        swa_c.collect(compiled)
        swa_p.collect(plain)
        swag_c.collect(compiled)
    assert torch.equal(swa_c.mean, swa_p.mean)
    again = SWAG(plain, rank=3)
    again.load_state_dict(swag_c.state_dict())  # a posterior collected on the compiled module, loaded on the plain
    assert torch.equal(again.deviations, swag_c.deviations)
    swa_c.write(compiled)  # through the wrapper into the original module
    assert torch.equal(WeightSpace(plain).read(unwrap(compiled)), swa_c.mean)


def test_the_engine_and_bma_evaluate_a_compiled_module_like_the_plain_one():
    plain = _net().eval()
    compiled = torch.compile(copy.deepcopy(plain), backend="eager")
    data = _data()
    space = WeightSpace(plain)
    w = space.read(plain)
    points = [w + 0.1 * k for k in range(3)]
    a = evaluate_points(compiled, points, {"d": data}, bn=data).loss("d")
    b = evaluate_points(plain, points, {"d": data}, bn=data).loss("d")
    assert a == b
    swag = SWAG(compiled, rank=3)
    for k in range(4):
        swag.collect(w + 0.05 * k * torch.randn(w.shape, generator=torch.Generator().manual_seed(k)))
    pa = bma(compiled, swag.samples(3, generator=torch.Generator().manual_seed(0)), data, bn=data, return_probs=True)
    pb = bma(plain, swag.samples(3, generator=torch.Generator().manual_seed(0)), data, bn=data, return_probs=True)
    assert torch.equal(pa.probs, pb.probs)
    assert all(
        torch.equal(x, y)
        for x, y in zip(unwrap(compiled).state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_a_curve_over_a_compiled_module_trains_the_original_modules_weights():
    plain = _net().eval()
    compiled = torch.compile(copy.deepcopy(plain), backend="eager")
    space = WeightSpace(compiled)
    w = space.read(compiled)
    curve = Curve(w, w + 0.5, bends=3)
    cm = CurveModel(compiled, curve)
    assert cm.model is unwrap(compiled)
    assert all("_orig_mod" not in k for k in cm.state_dict())
    x, y = _data()[0]
    loss = nn.functional.cross_entropy(cm(x), y)
    loss.backward()
    assert all(p.grad is not None for p in curve.parameters() if p.requires_grad)


def test_trainer_checkpoints_of_a_compiled_model_load_into_the_plain_model(tmp_path):
    model = torch.compile(_net(), backend="eager")
    data = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    swa = SWA(model)
    trainer = Trainer(
        model,
        opt,
        data,
        2,
        callbacks=[SWACallback(swa, 0, bn_loader=data)],
        checkpoint=CheckpointPolicy(tmp_path / "c.safetensors"),
    )
    trainer.fit(progress=False)
    state = trainer.state_dict()
    assert all(not k.startswith("_orig_mod.") for k in state["model"])
    fresh = _net()
    fresh.load_state_dict(state["model"])
    assert torch.equal(WeightSpace(fresh).read(fresh), swa.mean)  # the average was applied at the end


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_keeps_averages_and_moments_in_float32(dtype):
    """A loop under torch.autocast: the parameters stay float32, so do SWA's mean and SWAG's moments, equal to
    a float64 average of the collected float32 iterates."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    swag = SWAG(model, rank=3)
    space = WeightSpace(model)
    seen = []
    for x, y in _data() * 2:
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
            assert out.dtype == dtype
            loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        swag.collect(model)
        seen.append(space.read(model).double())
    assert swag.mean.dtype == swag.variance.dtype == swag.deviations.dtype == torch.float32
    stack = torch.stack(seen)
    torch.testing.assert_close(swag.mean.double(), stack.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(swag.variance.double(), stack.var(0, unbiased=False), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_model_is_averaged_in_float32(dtype):
    """Pure bfloat16/float16 weights: the average of iterates that differ in their last bits is kept in
    float32 (in the model's dtype it would round the small steps away)."""
    model = nn.Linear(4, 4).to(dtype)
    swa = SWA(model)
    assert swa.dtype == torch.float32
    base = model.weight.detach().float().clone()
    steps = []
    for k in range(10):
        with torch.no_grad():
            model.weight.copy_((base + 0.003 * k).to(dtype))
        steps.append(WeightSpace(model).read(model).double())
        swa.collect(model)
    torch.testing.assert_close(swa.mean.double(), torch.stack(steps).mean(0), rtol=1e-6, atol=1e-7)
    swa.write(model)
    assert model.weight.dtype == dtype
