"""Pluggable steps, policy objects, the shared collection schedule and the distributed code paths."""

import dataclasses
import json
import math
import socket

import pytest
import torch
from torch import nn

from conftest import DropoutBNMLP
from valleys.core.adapter import ModelAdapter
from valleys.core.checkpoint import load_checkpoint
from valleys.errors import NonFinitePredictionError
from valleys.evaluation.metrics import ClassificationMetrics, RegressionMetrics
from valleys.evaluation.predict import evaluate
from valleys.methods.averaging import SWA
from valleys.training.callbacks import CollectionSchedule, FGECallback, SWACallback
from valleys.training.trainer import (
    CheckpointPolicy,
    EvaluationPolicy,
    StepResult,
    Trainer,
    is_main_process,
    supervised_step,
)
from valleys.zoo.data import make_loader


# ---------------------------------------------------------------------- the collection schedule
def _old_swa_step(step, epoch, spe, start, every, k, cycle, phase):  # the callbacks' formulas before
    if epoch < start or every == "epoch":
        return False
    if every == "steps":
        return step % k == 0
    length = cycle * spe
    s = step - start * spe
    return s > 0 and s % length == round(phase * length) % length


def _old_fge_step(step, spe, start, cycle):
    length = cycle * spe
    s = step - start * spe
    return s > 0 and s % length == length // 2


@pytest.mark.parametrize("spe", [1, 3, 7])
@pytest.mark.parametrize("start", [0, 1, 4])
def test_collection_schedule_collects_where_the_callbacks_did(spe, start):
    epochs = 12
    steps = [(s, (s - 1) // spe) for s in range(1, epochs * spe + 1)]
    for every, k, cycle, phase in [
        ("epoch", 1, None, 0.5),
        ("steps", 1, None, 0.5),
        ("steps", 4, None, 0.5),
        ("cycle", 1, 2, 0.5),
        ("cycle", 1, 3, 0.0),
        ("cycle", 1, 4, 0.25),
    ]:
        sch = CollectionSchedule(start, every, k, cycle, phase)
        assert [sch.after_step(s, e, spe) for s, e in steps] == [
            _old_swa_step(s, e, spe, start, every, k, cycle, phase) for s, e in steps
        ]
        assert [sch.at_epoch_end(e) for e in range(1, epochs + 1)] == [
            every == "epoch" and e > start for e in range(1, epochs + 1)
        ]
    for cycle in (2, 4, 6):
        fge = FGECallback(cycle, start=start).schedule
        assert [fge.after_step(s, e, spe) for s, e in steps] == [_old_fge_step(s, spe, start, cycle) for s, _ in steps]


def test_collection_schedule_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown collect mode"):
        CollectionSchedule(every="hourly")
    with pytest.raises(ValueError, match="k must"):
        CollectionSchedule(every="steps", k=0)
    with pytest.raises(ValueError, match="cycle"):
        CollectionSchedule(every="cycle", cycle=None)
    with pytest.raises(ValueError, match="start"):
        CollectionSchedule(-1)


def test_fge_callback_snapshots_at_the_schedule_points(vec_data):
    model = DropoutBNMLP()
    fge = FGECallback(2, start=1)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), make_loader(vec_data, 20), 5, callbacks=[fge])
    tr.fit(progress=False)
    assert len(fge.snapshots) == 2  # steps 6 * (1 + 1) and 6 * (1 + 3): mid-cycle of the two cycles


# ---------------------------------------------------------------------- step functions
def test_pi_model_step_fn_logs_its_consistency_term(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()

    def pi_step(trainer, batch):
        x, y = batch
        a = trainer.model(x + 0.1 * torch.randn_like(x))
        b = trainer.model(x + 0.1 * torch.randn_like(x))
        ce = nn.functional.cross_entropy(a, y)
        consistency = nn.functional.mse_loss(a.softmax(1), b.softmax(1))
        return ce + 2.0 * consistency, {"train_consistency": consistency.detach(), "train_ce": float(ce.detach())}

    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), make_loader(vec_data, 20), 2, step_fn=pi_step)
    hist = tr.fit(progress=False)
    assert len(hist) == 2
    for h in hist:
        assert h["train_consistency"] > 0 and h["train_ce"] > 0
        assert "train_accuracy" not in h  # no prediction/targets returned


def test_step_result_with_prediction_counts_accuracy(vec_data):
    model = DropoutBNMLP()

    def step(trainer, batch):
        res = supervised_step(trainer, batch)
        return StepResult(res.loss, {"double": 2 * float(res.loss.detach())}, res.prediction, res.targets)

    hist = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), make_loader(vec_data, 20), 1, step_fn=step).fit(
        progress=False
    )
    assert 0 <= hist[0]["train_accuracy"] <= 1 and hist[0]["double"] > 0


def test_custom_adapter_loss_is_the_loss_that_is_logged_and_minimised():
    """Oracle: the Brier score of the one batch computed by hand at the initial weights, and one SGD step
    ``w - lr * grad`` with its gradient taken by autograd on a copy of the model."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    model = nn.Linear(5, 3)

    def brier(out, t):
        return ((out.softmax(1) - nn.functional.one_hot(t, 3)) ** 2).sum(1).mean()

    ref = nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    loss = brier(ref(x), y)
    loss.backward()
    by_hand = float(loss.detach())
    step = {n: (p - 0.3 * p.grad).detach() for n, p in ref.named_parameters()}
    with torch.no_grad():  # the default loss would log another number
        assert abs(by_hand - float(nn.functional.cross_entropy(ref(x), y))) > 0.1
    hist = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.3), [(x, y)], 1, adapter=ModelAdapter(loss=brier)
    ).fit(progress=False)
    assert hist[0]["train_loss"] == pytest.approx(by_hand, rel=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p, step[n], atol=1e-6)


def test_policies_decide_evaluations_checkpoints_header_and_log(vec_data, tmp_path):
    model = DropoutBNMLP()
    tr = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        make_loader(vec_data, 16, shuffle=True, seed=0),
        3,
        evaluation=EvaluationPolicy({"val": make_loader(vec_data, 50)}, every=2),
        checkpoint=CheckpointPolicy(tmp_path / "c.safetensors", every=2, header={"x": 1}, log=tmp_path / "m.jsonl"),
    )
    saved = []
    tr.save = lambda *a, _save=tr.save: saved.append(tr.epoch) or _save(*a)
    hist = tr.fit(progress=False)
    assert ["val_accuracy" in h for h in hist] == [False, True, True]  # every 2 epochs and the last
    assert saved == [2, 3]
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == hist
    _, header = load_checkpoint(tmp_path / "c.safetensors")
    assert header["x"] == 1 and header["epoch"] == 3 and header["kind"] == "training"
    assert tr.device == torch.device("cpu")


def test_the_removed_flat_arguments_are_refused(vec_data):
    model = DropoutBNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(vec_data)
    for old in ("loss_fn", "input_fn", "target_fn", "likelihood", "eval_loaders", "checkpoint_path", "log_path"):
        with pytest.raises(TypeError, match=old):
            Trainer(model, opt, loader, 1, **{old: None})
    with pytest.raises(TypeError, match="the loss goes in adapter=ModelAdapter"):  # the old positional order
        Trainer(model, nn.CrossEntropyLoss(), opt, loader)
    with pytest.raises(ValueError, match="every"):
        Trainer(model, opt, loader, 1, checkpoint=CheckpointPolicy(every=0))


# ---------------------------------------------------------------------- distributed code paths
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_rank_zero_trainer_in_a_one_process_group(gloo_group, vec_data, tmp_path):
    assert is_main_process()
    model = DropoutBNMLP()
    sampler = _EpochSampler(len(vec_data))
    loader = torch.utils.data.DataLoader(vec_data, batch_size=20, sampler=sampler)
    swa = SWACallback(SWA(model), start=1)
    tr = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        loader,
        3,
        callbacks=[swa],
        evaluation=EvaluationPolicy({"val": make_loader(vec_data, 50)}),
        checkpoint=CheckpointPolicy(tmp_path / "c.safetensors", log=tmp_path / "log.jsonl"),
    )
    tr.fit(progress=False)
    assert sampler.epochs == [0, 1, 2]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["swa_n"] == 2
    assert (tmp_path / "c.safetensors").exists()
    single = evaluate(model, make_loader(vec_data, 50))
    reduced = tr.evaluate_on(make_loader(vec_data, 50))  # the all-reduced path
    assert reduced.n == single.n and reduced.accuracy == pytest.approx(single.accuracy)
    assert reduced.nll == pytest.approx(single.nll) and reduced.ece == pytest.approx(single.ece)
    tr.adapter = dataclasses.replace(tr.adapter, predictive="gaussian")
    with pytest.raises(ValueError):  # a 3-class head is no (mean, variance) head: the regression path is taken
        tr.evaluate_on(make_loader(vec_data, 50))


def test_metrics_all_reduce_in_a_one_process_group(gloo_group):
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 4), 1)
    y = torch.randint(0, 4, (50,))
    m = ClassificationMetrics()
    m.update(probs, y)
    before = m.compute()
    after = m.all_reduce().compute()
    assert after["n"] == 50
    assert after["accuracy"] == pytest.approx(before["accuracy"]) and after["ece"] == pytest.approx(before["ece"])
    assert after["reliability"]["count"] == before["reliability"]["count"]
    r = RegressionMetrics()
    r.update(torch.zeros(10), torch.ones(10), torch.linspace(-1, 1, 10))
    ref = r.compute()
    assert r.all_reduce().compute() == pytest.approx(ref) and ref["n"] == 10


def test_metrics_all_reduce_without_a_group_is_a_no_op():
    m = ClassificationMetrics()
    m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    assert m.all_reduce().compute()["accuracy"] == 0.5


def test_non_finite_predictions_have_their_own_error_class():
    """The trainer turns exactly this class into TrainingDiverged; other bad metric inputs stay ValueErrors."""
    with pytest.raises(NonFinitePredictionError):
        ClassificationMetrics().update_logits(torch.tensor([[math.nan, 0.0]]), torch.tensor([0]))
    with pytest.raises(NonFinitePredictionError):
        RegressionMetrics().update(torch.tensor([math.inf]), torch.ones(1), torch.zeros(1))
    for bad in (
        lambda: ClassificationMetrics().update(torch.tensor([[0.7, 0.7]]), torch.tensor([0])),  # rows sum to 1.4
        lambda: RegressionMetrics().update(torch.zeros(1), -torch.ones(1), torch.zeros(1)),  # negative variance
    ):
        with pytest.raises(ValueError) as info:
            bad()
        assert not isinstance(info.value, NonFinitePredictionError)
