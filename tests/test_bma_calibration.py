import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import BNCNN, DropoutBNMLP, loader
from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.errors import MissingBNLoaderError, NoWeightsError
from valleys.evaluation.calibration import apply_temperature, auroc, fit_temperature, predictive_entropy
from valleys.evaluation.engine import BNPolicy, VmapPolicy
from valleys.evaluation.predict import bma, evaluate
from valleys.methods.ensembles import snapshot
from valleys.methods.swag import SWAG
from valleys.training.callbacks import FGECallback
from valleys.training.schedules import TriangularCyclic
from valleys.training.trainer import Callback, Trainer
from valleys.zoo.data import make_loader


def test_bma_of_identical_samples_equals_one_model(img_data):
    torch.manual_seed(0)
    model = BNCNN().eval()
    w = WeightSpace(model).read(model)
    one = evaluate(model, loader(img_data))
    # the exactness claim holds for the loop (same kernels, same summation order); vmap may pick other kernels
    many = bma(model, [w.clone() for _ in range(4)], loader(img_data), bn="keep", batched=False)
    for k in ("accuracy", "nll", "brier", "ece"):
        assert getattr(many.metrics, k) == pytest.approx(getattr(one, k), abs=1e-12)
    assert many.num_samples == 4
    with pytest.raises(MissingBNLoaderError, match="bn=train_loader"):  # weight vectors on a BN model need a recompute
        bma(model, [w], loader(img_data))


def test_state_dict_sample_of_another_architecture_leaves_the_model_untouched(vec_data):
    model = DropoutBNMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = DropoutBNMLP(h=8)
    from valleys.core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="another architecture"):
        bma(model, [snapshot(other)], loader(vec_data))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


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
    assert torch.allclose(res.probs, expected, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


def test_bma_recomputes_bn_per_weight_sample(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    w = WeightSpace(model).read(model) * 1.5
    ref = BNCNN()
    WeightSpace(ref).write(ref, w)
    from valleys.core.batchnorm import recompute_bn

    recompute_bn(ref, loader(img_data))
    expected = evaluate(ref, loader(img_data))
    got = bma(model, [w], loader(img_data), bn=loader(img_data))
    assert got.metrics.nll == pytest.approx(expected.nll, abs=1e-9)
    with pytest.raises(NoWeightsError, match="no samples"):
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
    res = bma(
        model,
        swag.samples(5, generator=torch.Generator().manual_seed(0)),
        loader(vec_data),
        bn=BNPolicy("recompute", loader(vec_data), num_batches=2),
    )
    assert res.num_samples == 5 and 0 <= res.metrics.accuracy <= 1


def test_fge_snapshots_at_mid_cycle(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fge = FGECallback(cycle=2, start=1)
    record = {}

    class Record(Callback):  # an independent log of every step's LR and resulting weights
        def on_step_end(self, trainer):
            record[trainer.step] = (trainer.lr, snapshot(trainer.model))

    sched = TriangularCyclic(0.05, 0.001, cycle=2, offset=1)
    tr = Trainer(model, opt, make_loader(vec_data, 10), 7, schedule=sched, callbacks=[Record(), fge])
    tr.fit(progress=False)
    spe = tr.steps_per_epoch  # 11
    lrs = [lr for lr, _ in record.values()]
    # the snapshots are the weights after the steps with the lowest LR of each cycle
    expected_steps = [spe + c * 2 * spe + spe for c in range(3)]
    assert len(fge.snapshots) == 3
    for snap, step in zip(fge.snapshots, expected_steps, strict=True):
        assert all(torch.equal(snap[k], record[step][1][k]) for k in snap)
        lo = min(lrs[step - spe - 1 : step + spe - 1])  # the cycle containing that step
        assert record[step][0] <= lo + (0.05 - 0.001) / spe + 1e-12
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


@pytest.mark.parametrize("likelihood", ["classification", "gaussian"])
def test_vmap_batched_bma_equals_the_loop(vec_data, likelihood):
    from valleys.zoo.regression import GaussianMLP

    torch.manual_seed(0)
    model = DropoutBNMLP() if likelihood == "classification" else GaussianMLP(5)
    space = WeightSpace(model)
    w0 = space.read(model)
    ws = [w0 + 0.05 * torch.randn_like(w0) for _ in range(11)]  # chunks of 4: 4 + 4 + 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(
        return_probs=True,
        adapter=ModelAdapter(loss="gaussian" if likelihood == "gaussian" else "cross_entropy"),
        bn="keep",
    )
    loop = bma(model, ws, loader(vec_data), batched=VmapPolicy(False, 4), **kw)
    vm = bma(model, ws, loader(vec_data), batched=VmapPolicy(True, 4), **kw)
    auto = bma(model, iter(ws), loader(vec_data), batched=VmapPolicy("auto", 4), **kw)
    key = "probs" if likelihood == "classification" else "mean"
    assert vm.batched and not loop.batched and vm.num_samples == loop.num_samples == auto.num_samples == 11
    assert torch.allclose(getattr(vm, key), getattr(loop, key), atol=1e-6)
    assert torch.allclose(getattr(auto, key), getattr(loop, key), atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_vmap_and_loop_bma_agree_closely(vec_data):
    """vmap and the loop sum the same float64 probabilities in a different order, from logits of batched vs
    plain kernels: in float64 they agree to ~1e-10 (in float32 the logits alone differ by ~1e-8)."""
    from torch.utils.data import TensorDataset

    from conftest import mlp

    torch.manual_seed(0)
    model = mlp().double()
    x, y = vec_data.tensors
    vec_data = TensorDataset(x.double(), y)
    space = WeightSpace(model)
    w0 = space.read(model)
    ws = [w0 + 0.05 * torch.randn_like(w0) for _ in range(6)]
    loop = bma(model, ws, loader(vec_data), batched=VmapPolicy(False, 3), return_probs=True)
    vm = bma(model, ws, loader(vec_data), batched=VmapPolicy(True, 3), return_probs=True)
    assert vm.batched and not loop.batched
    assert torch.allclose(vm.probs, loop.probs, rtol=0, atol=1e-10)
    assert vm.metrics.nll == pytest.approx(loop.metrics.nll, abs=1e-10)
