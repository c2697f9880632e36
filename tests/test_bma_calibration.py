import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from valleys.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from valleys.data import make_loader
from valleys.ensembles import FGECallback, snapshot
from valleys.predict import bma, evaluate
from valleys.schedules import TriangularCyclic
from valleys.swag import SWAG
from valleys.training import Trainer
from valleys.weights import WeightSpace
from conftest import BNCNN, DropoutBNMLP, loader


def test_bma_of_identical_samples_equals_one_model(img_data):
    torch.manual_seed(0)
    model = BNCNN().eval()
    w = WeightSpace(model).read(model)
    one = evaluate(model, loader(img_data))
    many = bma(model, [w.clone() for _ in range(4)], loader(img_data))
    for k in ("accuracy", "nll", "brier", "ece"):
        assert many[k] == pytest.approx(one[k], abs=1e-12)
    assert many["num_samples"] == 4


def test_bma_averages_probabilities_not_logits_and_restores_the_model(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = DropoutBNMLP(), DropoutBNMLP()
    res = bma(model, [snapshot(a), snapshot(b)], loader(vec_data), return_probs=True)
    x = vec_data.tensors[0]
    a.eval(), b.eval()
    with torch.no_grad():
        expected = (torch.softmax(a(x).double(), -1) + torch.softmax(b(x).double(), -1)) / 2
    assert torch.allclose(res["probs"], expected, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


def test_bma_recomputes_bn_per_weight_sample(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    w = WeightSpace(model).read(model) * 1.5
    ref = BNCNN()
    WeightSpace(ref).write(ref, w)
    from valleys.batchnorm import recompute_bn
    recompute_bn(ref, loader(img_data))
    expected = evaluate(ref, loader(img_data))
    got = bma(model, [w], loader(img_data), bn_loader=loader(img_data))
    assert got["nll"] == pytest.approx(expected["nll"], abs=1e-9)
    with pytest.raises(ValueError, match="no samples"):
        bma(model, [], loader(img_data))


def test_swag_samples_through_bma_run(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    swag = SWAG(model, rank=3)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        swag.collect(model)
    res = bma(model, swag.samples(5, generator=torch.Generator().manual_seed(0)), loader(vec_data),
              bn_loader=loader(vec_data), bn_batches=2)
    assert res["num_samples"] == 5 and 0 <= res["accuracy"] <= 1


def test_fge_snapshots_at_mid_cycle(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fge = FGECallback(cycle=2)
    lrs = []

    class LR(FGECallback):
        def on_step_end(self, trainer):
            if trainer.step % (2 * trainer.steps_per_epoch) == trainer.steps_per_epoch:
                lrs.append(trainer.lr)

    sched = TriangularCyclic(0.05, 0.001, cycle=2)
    Trainer(model, nn.CrossEntropyLoss(), opt, make_loader(vec_data, 10), epochs=6, schedule=sched,
            callbacks=[fge, LR(2)], progress=False).fit()
    assert len(fge.snapshots) == 3
    # the step that is snapshotted ran at the LR just before the minimum: within one step of lr_2
    assert all(lr <= 0.001 + (0.05 - 0.001) / 11 + 1e-12 for lr in lrs)
    with pytest.raises(ValueError, match="even"):
        FGECallback(cycle=3)


def test_temperature_scaling_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(20000, 5, generator=g, dtype=torch.float64)
    y = torch.distributions.Categorical(logits=logits).sample()
    overconfident = torch.softmax(3.0 * logits, -1)  # true temperature 3
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.05)
    assert torch.allclose(apply_temperature(overconfident, t), torch.softmax(3.0 * logits / t, -1), atol=1e-6)


def test_entropy_and_auroc_against_references():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert torch.allclose(predictive_entropy(p), torch.tensor([0.0, 0.6931471805599453], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(300, generator=g).round(decimals=1) + 0.5  # ties on purpose
    neg = torch.randn(400, generator=g).round(decimals=1)
    ref = roc_auc_score([1] * 300 + [0] * 400, torch.cat([pos, neg]).numpy())
    assert auroc(pos, neg) == pytest.approx(ref, abs=1e-12)
    assert auroc(torch.ones(3), torch.ones(4)) == 0.5
