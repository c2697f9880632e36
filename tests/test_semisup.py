"""Semi-supervised training (Athiwaratkun et al. 2019): the split and mixed batches, the Pi and mean-teacher
losses against hand-computed values, the teacher against an explicit EMA recursion in float64, the ramp-up,
SWA and fast-SWA against brute-force means of the snapshots they should have taken, exact resume mid-cycle,
and the study's command line with its refusals."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from cli_harness import refused, run
from valleys.app.semisup import SemisupConfig, semisup_one, semisup_run
from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.errors import InputError
from valleys.methods.averaging import SWA
from valleys.training.augment import ImageAugment, SignalAugment, default_augment
from valleys.training.callbacks import CollectionSchedule, SWACallback, TravelCallback
from valleys.training.schedules import CosineReplay
from valleys.training.semisup import ConsistencyStep, MeanTeacher, consistency_loss, ramp_up, select_examples
from valleys.training.semisup_data import (
    NO_LABEL,
    MissingLabelsError,
    MixedBatchSampler,
    PartiallyLabelled,
    dataset_targets,
    labelled_split,
    semisup_loader,
)
from valleys.training.trainer import Callback, Trainer


def _toy(n: int = 120, classes: int = 4, d: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g) + y[:, None].float()
    return TensorDataset(x, y)


# ---------------------------------------------------------------------- data
def test_split_has_exactly_n_labels_per_class_and_partitions_the_data():
    ds = _toy(120, 4)
    y = dataset_targets(ds)
    lab, unl = labelled_split(y, 7, seed=3)
    assert len(lab) == 28 and len(unl) == 92
    assert torch.bincount(y[lab], minlength=4).tolist() == [7, 7, 7, 7]
    assert set(lab.tolist()).isdisjoint(unl.tolist())
    assert sorted(lab.tolist() + unl.tolist()) == list(range(120))
    lab2, _ = labelled_split(y, 7, seed=3)
    lab3, _ = labelled_split(y, 7, seed=4)
    assert torch.equal(lab, lab2) and not torch.equal(lab, lab3)


def test_mixed_batches_carry_the_stated_numbers_and_cover_the_unlabelled_set_once():
    ds = _toy(120, 4)
    lab, unl = labelled_split(dataset_targets(ds), 5, seed=0)
    loader = semisup_loader(ds, lab, batch_size=16, labelled_batch_size=4, seed=1)
    assert len(loader) == len(unl) // 12 == 8
    seen = []
    for x, y in loader:
        assert x.shape[0] == 16
        assert (y[:4] >= 0).all() and (y[4:] == NO_LABEL).all()
        seen += y[4:].tolist()
    idx = list(loader.batch_sampler)
    flat_u = [i for b in idx for i in b[4:]]
    assert len(set(flat_u)) == len(flat_u) == 96 and set(flat_u) <= set(unl.tolist())
    assert all(i in set(lab.tolist()) for b in idx for i in b[:4])
    loader.generator.manual_seed(5)  # the trainer reseeds it per epoch: the same seed, the same batches
    first = list(loader.batch_sampler)
    loader.generator.manual_seed(5)
    assert list(loader.batch_sampler) == first


def test_dataset_targets_reads_subsets_dicts_and_refuses_missing_labels():
    ds = _toy(20, 2)
    sub = Subset(ds, [3, 4, 5])
    assert dataset_targets(sub).tolist() == [1, 0, 1]

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"input": torch.zeros(2), "label": i % 2}

    assert dataset_targets(Dicts()).tolist() == [0, 1, 0, 1]
    assert PartiallyLabelled(Dicts(), [0])[1]["label"].item() == NO_LABEL
    with pytest.raises(MissingLabelsError, match="inputs only"):
        dataset_targets(TensorDataset(torch.zeros(3, 2)))

    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(2)

    with pytest.raises(MissingLabelsError, match="without labels"):
        dataset_targets(Bare())


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"labels_per_class": 31}, "class 0 has 30"),
        ({"labels_per_class": 0}, "no labels"),
    ],
)
def test_split_refusals(kw, msg):
    with pytest.raises(ValueError, match=msg):
        labelled_split(dataset_targets(_toy(120, 4)), **kw)


def test_labelled_batch_larger_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="larger than the batch size 8"):
        MixedBatchSampler([0, 1], list(range(2, 50)), 8, 9)


def test_augmentations_draw_two_different_views_of_the_same_shape():
    torch.manual_seed(0)
    x = torch.randn(5, 40)
    a, b = SignalAugment()(x), SignalAugment()(x)
    assert a.shape == x.shape and not torch.allclose(a, b)
    img = torch.randn(3, 1, 8, 8)
    shifted = ImageAugment(translate=2, noise=0.0)(img)
    assert shifted.shape == img.shape
    # a pure translation of a one-hot image moves the one by at most 2 pixels in each direction
    one = torch.zeros(1, 1, 8, 8)
    one[0, 0, 4, 4] = 1
    out = ImageAugment(translate=2, noise=0.0)(one)
    r, c = (out[0, 0] == 1).nonzero()[0].tolist()
    assert abs(r - 4) <= 2 and abs(c - 4) <= 2 and out.sum() == 1
    flipped = ImageAugment(translate=0, noise=0.0, flip=True)(torch.arange(4.0).view(1, 1, 1, 4).repeat(64, 1, 1, 1))
    assert {tuple(r[0, 0].tolist()) for r in flipped} == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}
    assert isinstance(default_augment((40,)), SignalAugment)
    assert default_augment((1, 28, 28), dataset="fashion-mnist").flip


# ---------------------------------------------------------------------- losses
def test_ramp_up_values():
    assert ramp_up(0, 5) == pytest.approx(math.exp(-5))
    assert ramp_up(2.5, 5) == pytest.approx(math.exp(-1.25))
    assert ramp_up(4, 5) == pytest.approx(math.exp(-5 * 0.04))
    assert ramp_up(5, 5) == 1.0 and ramp_up(12, 5) == 1.0 and ramp_up(0, 0) == 1.0


def _views():
    """Deterministic 'augmentations': the first call adds +0.5, the second -0.25 (to the input only)."""
    calls = []

    def view(batch):
        shift = 0.5 if len(calls) % 2 == 0 else -0.25
        calls.append(shift)
        return (batch[0] + shift, batch[1])

    return view


def _fake_trainer(model, step=12, steps_per_epoch=4):
    return SimpleNamespace(
        adapter=ModelAdapter(),
        device=None,
        model=model,
        forward_model=model,
        seed=0,
        step=step,
        epoch=step // steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
    )


def _hand_loss(student, target_net, x, y, lam, norm="batch"):
    """CE summed over the labelled rows and divided by the whole batch (the authors' code; ``norm="labelled"``:
    their mean) + lam * mean over rows and classes of the squared softmax difference, float64."""
    s = student.double()(x.double() + 0.5)
    t = target_net.double()(x.double() - 0.25)
    lab = y >= 0
    nll = -torch.log_softmax(s[lab], 1).gather(1, y[lab, None])
    ce = nll.sum() / len(y) if norm == "batch" else nll.mean()
    ps, pt = torch.exp(s) / torch.exp(s).sum(1, keepdim=True), torch.exp(t) / torch.exp(t).sum(1, keepdim=True)
    return float((ce + lam * ((ps - pt) ** 2).sum(1).mean() / s.shape[1]).detach())


def test_pi_and_mean_teacher_losses_match_hand_computed_values():
    torch.manual_seed(0)
    student = nn.Linear(3, 4)
    x = torch.randn(6, 3)
    y = torch.tensor([2, 0, NO_LABEL, NO_LABEL, 1, NO_LABEL])
    lam = 30.0 * math.exp(-5 * (1 - 3.0 / 5) ** 2)  # step 12 of 4 per epoch: t = 3 epochs into a 5-epoch ramp
    pi = ConsistencyStep("pi", views=_views(), weight=30.0, rampup=5)
    res = pi(_fake_trainer(student), (x, y))
    assert float(res.loss.detach()) == pytest.approx(
        _hand_loss(copy.deepcopy(student), copy.deepcopy(student), x, y, lam), rel=1e-5
    )
    assert res.logs["consistency_weight"] == pytest.approx(lam)
    assert res.prediction.shape == (3, 4) and res.targets.tolist() == [2, 0, 1]

    teacher = MeanTeacher(student, 0.9)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.3)
    mt = ConsistencyStep("mean-teacher", views=_views(), weight=30.0, rampup=5, teacher=teacher)
    res = mt(_fake_trainer(student), (x, y))
    assert float(res.loss.detach()) == pytest.approx(
        _hand_loss(copy.deepcopy(student), copy.deepcopy(teacher.model), x, y, lam), rel=1e-5
    )
    res.loss.backward()  # gradients reach the student only
    assert student.weight.grad is not None and teacher.model.weight.grad is None

    # the alternatives: the labelled mean of the cross-entropy (6 / 3 = 2x the batch-normalised one here), and
    # the ramp at the fractional epoch (step 14 of 4 per epoch: 3.5 epochs, against the epoch index 3)
    by_labelled = ConsistencyStep("pi", views=_views(), weight=30.0, rampup=5, ce_normalisation="labelled")
    res = by_labelled(_fake_trainer(student), (x, y))
    assert float(res.loss.detach()) == pytest.approx(
        _hand_loss(copy.deepcopy(student), copy.deepcopy(student), x, y, lam, norm="labelled"), rel=1e-5
    )
    ce_batch = ConsistencyStep("none")(_fake_trainer(student), (x, y)).loss
    ce_lab = ConsistencyStep("none", ce_normalisation="labelled")(_fake_trainer(student), (x, y)).loss
    assert float(ce_lab) == pytest.approx(2 * float(ce_batch), rel=1e-6)
    integer = ConsistencyStep("pi", views=_views(), weight=30.0, rampup=5)(_fake_trainer(student, step=14), (x, y))
    frac = ConsistencyStep("pi", views=_views(), weight=30.0, rampup=5, ramp_epoch="fractional")(
        _fake_trainer(student, step=14), (x, y)
    )
    assert integer.logs["consistency_weight"] == pytest.approx(30.0 * math.exp(-5 * (1 - 3 / 5) ** 2))
    assert frac.logs["consistency_weight"] == pytest.approx(30.0 * math.exp(-5 * (1 - 3.5 / 5) ** 2))


def test_kl_consistency_and_the_supervised_step():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    q = t.softmax(1).double()
    want = (q * (q.log() - s.double().log_softmax(1))).sum(1).mean()
    assert float(consistency_loss(s, t, "kl")) == pytest.approx(float(want), rel=1e-6)
    model = nn.Linear(3, 4)
    x, y = torch.randn(6, 3), torch.tensor([1, NO_LABEL, 3, NO_LABEL, NO_LABEL, 0])
    res = ConsistencyStep("none")(_fake_trainer(model), (x, y))
    lab = y >= 0
    assert float(res.loss.detach()) == pytest.approx(  # summed over the 3 labelled, divided by the batch of 6
        float(nn.functional.cross_entropy(model(x[lab]), y[lab], reduction="sum").detach()) / 6, rel=1e-6
    )
    assert select_examples({"a": x, "n": 3}, lab)["a"].shape == (3, 3)


def test_dict_batches_need_views():
    step = ConsistencyStep("pi", augment=SignalAugment())
    with pytest.raises(TypeError, match="views="):
        step(_fake_trainer(nn.Linear(3, 4)), {"input": torch.randn(2, 3), "label": torch.tensor([0, -1])})


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"consistency": "temporal"}, "unknown consistency"),
        ({"weight": -1.0}, ">= 0"),
        ({"consistency": "mean-teacher"}, "teacher=MeanTeacher"),
        ({"loss": "l1"}, "unknown consistency loss"),
    ],
)
def test_consistency_step_refusals(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ConsistencyStep(**kw)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_ema_decay_outside_the_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MeanTeacher(nn.Linear(2, 2), decay)


# ---------------------------------------------------------------------- training: teacher, SWA, fast-SWA
class _BNDropNet(nn.Module):
    """BatchNorm and Dropout: the teacher's own statistics and two stochastic views through Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class _Record(Callback):
    """The student's flat weights after every step and at every epoch end, in float64."""

    def __init__(self, space):
        self.space, self.steps, self.epochs = space, [], []

    def on_train_start(self, trainer):
        self.steps.append(self.space.read(trainer.model).double())

    def on_step_end(self, trainer):
        self.steps.append(self.space.read(trainer.model).double())

    def on_epoch_end(self, trainer, logs):
        self.epochs.append(self.space.read(trainer.model).double())


def _setup(seed=0):
    ds = _toy(160, 4)
    lab, unl = labelled_split(dataset_targets(ds), 6, seed=seed)
    loader = semisup_loader(ds, lab, batch_size=20, labelled_batch_size=5, seed=seed)
    torch.manual_seed(seed)
    return ds, loader, _BNDropNet()


def test_teacher_equals_an_explicit_ema_recursion_in_float64():
    ds, loader, model = _setup()
    alpha = 0.9
    teacher = MeanTeacher(model, alpha)
    space = WeightSpace(model)
    rec = _Record(space)
    step = ConsistencyStep("mean-teacher", augment=SignalAugment(shift=1), weight=5.0, rampup=1, teacher=teacher)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    Trainer(model, opt, loader, 2, callbacks=[teacher, rec], step_fn=step).fit(progress=False)
    m = rec.steps[0].clone()
    for s, w in enumerate(rec.steps[1:], start=1):
        d = min(1 - 1 / (s + 1), alpha)
        m = d * m + (1 - d) * w
    assert len(rec.steps) - 1 == 2 * len(loader)
    got = space.read(teacher.model).double()
    assert torch.allclose(got, m, atol=1e-6, rtol=0), float((got - m).abs().max())
    assert not torch.allclose(got, rec.steps[-1], atol=1e-4)  # the teacher lags the student


def _reference_lr(lr, epoch, l, c, total):  # noqa: E741 - l as in the paper
    """``adjust_learning_rate`` of the authors' code (benathi/fastswa-semi-sup ``main.py``), no warm-up:
    ``cosine_rampdown(current, L) = (cos(pi current / L) + 1) / 2``; ``epoch`` fractional."""

    def rampdown(current, length):
        assert 0 <= current <= length
        return 0.5 * (math.cos(math.pi * current / length) + 1)

    if epoch < l:
        return lr * rampdown(epoch, total)
    return lr * rampdown((total - (total - l) - c) + ((epoch - l) % c), total)


def _reference_fast_swa(epoch, l, c, k):  # noqa: E741
    """The authors' fast-SWA rule, ``epoch`` the number of epochs trained."""
    return epoch >= l - c and (epoch - l + c) % k == 0


@pytest.mark.parametrize(("l", "c", "total"), [(8, 2, 10), (180, 30, 210), (5, 5, 12), (6, 3, 9)])
def test_cosine_replay_rates_equal_the_reference_rule_including_epoch_exactly_l(l, c, total):  # noqa: E741
    s = CosineReplay(0.1, l, c, total=total)
    steps = 4
    for e in range(l + 3 * c):
        for i in range(steps):
            t = e + i / steps
            assert s(t) == pytest.approx(_reference_lr(0.1, t, l, c, total), rel=1e-12, abs=1e-15), (e, i)
    # epoch exactly l starts the first cycle at the rate of epoch l - c, like every later cycle start
    assert s(l) == pytest.approx(s(l - c)) == pytest.approx(s(l + c))
    old = CosineReplay(0.1, l, c, total=total, replay_at_length=False)
    assert old(l) == pytest.approx(0.1 * (math.cos(math.pi * l / total) + 1) / 2) and old(l + 0.25) == s(l + 0.25)


@pytest.mark.parametrize(("l", "c", "k", "epochs"), [(5, 2, 1, 9), (6, 3, 1, 12), (8, 4, 2, 16), (7, 3, 3, 13)])
def test_fast_swa_and_swa_epochs_equal_the_reference_rule(l, c, k, epochs):  # noqa: E741
    fast = CollectionSchedule(l - c, "epoch", k=k, include_start=True)
    got = [e for e in range(1, epochs + 1) if fast.at_epoch_end(e)]
    assert got == [e for e in range(epochs + 1) if _reference_fast_swa(e, l, c, k)]
    assert got[0] == l - c  # the weights after epoch l - c are the first
    before = CollectionSchedule(l - c, "epoch", k=k)  # valleys before 0.1: one average fewer
    assert [e for e in range(1, epochs + 1) if before.at_epoch_end(e)] == got[1:]
    swa = CollectionSchedule(l - c, "epoch", k=c)  # SWA: epoch >= l and (epoch - l) % c == 0
    assert [e for e in range(1, epochs + 1) if swa.at_epoch_end(e)] == [
        e for e in range(epochs + 1) if e >= l and (e - l) % c == 0
    ]
    with pytest.raises(InputError, match="include_start applies to every='epoch' only"):
        CollectionSchedule(2, "steps", k=3, include_start=True)


@pytest.mark.parametrize("unit", ["epochs", "steps", "epochs-reference"])
def test_swa_and_fast_swa_equal_brute_force_means_of_their_snapshots(unit):
    ds, loader, model = _setup()
    space = WeightSpace(model)
    rec = _Record(space)
    epochs, first, c, k = 9, 5, 2, 3 if unit == "steps" else 1
    swa = SWACallback(SWA(model, moments=False), first - c, every="epoch", k=c, apply_at_end=False)
    fast = SWACallback(
        SWA(model, moments=False),
        first - c,
        every="steps" if unit == "steps" else "epoch",
        k=k,
        apply_at_end=False,
        prefix="fastswa",
        include_start=unit == "epochs-reference",
    )
    step = ConsistencyStep("pi", augment=SignalAugment(shift=1), weight=5.0, rampup=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    Trainer(
        model, opt, loader, epochs, schedule=CosineReplay(0.05, first, c), callbacks=[swa, fast, rec], step_fn=step
    ).fit(progress=False)
    # SWA: the ends of epochs first, first + c, ..., epochs (every cycle end); the epoch list is 1-based
    swa_epochs = [5, 7, 9]
    want = torch.stack([rec.epochs[e - 1] for e in swa_epochs]).mean(0)
    assert swa.averager.n == 3 and torch.allclose(swa.averager.mean.double(), want, atol=1e-6)
    if unit == "epochs":
        fast_w = [rec.epochs[e - 1] for e in range(first - c + 1, epochs + 1)]  # every epoch after first - c
    elif unit == "epochs-reference":
        fast_w = [rec.epochs[e - 1] for e in range(first - c, epochs + 1)]  # and the weights after first - c
    else:
        spe = len(loader)
        fast_w = [rec.steps[s] for s in range(1, epochs * spe + 1) if s > (first - c) * spe and s % k == 0]
    want = torch.stack(fast_w).mean(0)
    assert fast.averager.n == len(fast_w) and torch.allclose(fast.averager.mean.double(), want, atol=1e-6)
    assert CollectionSchedule(3, "epoch", k=2).at_epoch_end(5) and not CollectionSchedule(3, "epoch", k=2).at_epoch_end(
        4
    )


def test_travel_callback_logs_the_distance_and_changed_predictions():
    ds, loader, model = _setup()
    space = WeightSpace(model)
    rec = _Record(space)
    travel = TravelCallback(space, (ds.tensors[0][:50], ds.tensors[1][:50]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    h = Trainer(model, opt, loader, 2, callbacks=[rec, travel], step_fn=ConsistencyStep("pi")).fit(progress=False)
    assert h[1]["travel_distance"] == pytest.approx(float((rec.epochs[1] - rec.epochs[0]).norm()), rel=1e-5)
    assert 0 <= h[1]["travel_disagreement"] <= 1


# ---------------------------------------------------------------------- the study
SMALL = dict(
    dataset="mnist1d",
    model="mlp",
    labels_per_class=5,
    batch_size=64,
    labelled_batch_size=16,
    epochs=6,
    cycle=2,
    fast_swa_every=1,
    train_subset=600,
    test_subset=200,
    eval_every=1,
    seeds=[0],
)


def test_resume_mid_cycle_ends_bit_identical(tmp_path, monkeypatch):
    cfg = SemisupConfig(**SMALL, consistency=["mean-teacher"])
    whole = semisup_one(cfg, "mean-teacher", 0, tmp_path / "whole")
    original = Trainer.save

    def save_then_stop(self, path=None):
        out = original(self, path)
        if self.epoch == 3:  # mid-cycle: cosine phase l = 2, cycles of 2 epochs
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        semisup_one(cfg, "mean-teacher", 0, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "save", original)
    resumed = semisup_one(cfg, "mean-teacher", 0, tmp_path / "cut", resume=True)
    from valleys.core.checkpoint import load_checkpoint

    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for cb in a["callbacks"]:
        sa, sb = a["callbacks"][cb], b["callbacks"][cb]
        for key in ("ema", "mean"):
            if key in sa:
                va, vb = (sa[key]["mean"], sb[key]["mean"]) if key == "ema" else (sa[key], sb[key])
                assert torch.equal(va, vb), cb
    assert resumed["metrics"] == whole["metrics"]


def test_study_writes_tables_figures_and_a_report(tmp_path):
    out = tmp_path / "semi"
    res = semisup_run(SemisupConfig(**SMALL, consistency=["none", "pi"]), out, progress=False)
    assert set(res["summary"]) == {"none", "pi"}
    assert set(res["summary"]["pi"]) == {"student", "swa", "fastswa"}
    run0 = res["runs"][1]
    assert run0["labelled"] == 50 and run0["swa_collects"] == 3 and run0["fastswa_collects"] == 6
    report = (out / "report.md").read_text()
    assert "fast-SWA" in report and "figures/travel.png" in report and "figures/error-pi.png" in report
    for f in ("travel.png", "error-none.png", "error-pi.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    lines = [json.loads(x) for x in (out / "pi" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and "fastswa_test_accuracy" in lines[-1] and "travel_distance" in lines[-1]


def test_cli_runs_the_study(tmp_path, capsys):
    out = tmp_path / "cli"
    res = run(
        [
            "semisup",
            "--model",
            "mlp",
            "--consistency",
            "pi",
            "--labels-per-class",
            "5",
            "--epochs",
            "4",
            "--cycle",
            "1",
            "--train-subset",
            "400",
            "--test-subset",
            "100",
            "--batch-size",
            "64",
            "--labelled-batch-size",
            "16",
            "--fast-swa-every",
            "1",
            "--no-progress",
            "--jobs",
            "1",
            "--out",
            out,
        ],
        capsys,
    )
    assert res.code == 0, res.err
    assert "fast" not in res.err and "pi" in res.out and (out / "report.md").is_file()


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--labels-per-class", "400"], ["--labels-per-class", "has"]),
        (["--labels-per-class", "0"], ["--labels-per-class"]),
        (["--labelled-batch-size", "200"], ["--labelled-batch-size", "--batch-size"]),
        (["--consistency-weight", "-1"], ["--consistency-weight"]),
        (["--ema-decay", "1"], ["--ema-decay"]),
        (["--ema-decay", "-0.5"], ["--ema-decay"]),
        (["--cycle", "45"], ["--cycle", "too long"]),
        (["--cosine-epochs", "80", "--cycle", "15"], ["cycle", "remain"]),
        (["--epochs", "60", "--cosine-epochs", "35", "--cycle", "10"], ["whole number"]),
        (["--fast-swa-every", "0"], ["--fast-swa-every"]),
        (["--fast-swa-every", "16"], ["--fast-swa-every", "cycle"]),
        (["--consistency", "temporal"], ["--consistency"]),
        (["--consistency", "pi", "pi"], ["--consistency"]),
        (["--val-fraction", "0"], ["--val-fraction"]),
        (["--device", "cuda"], ["cuda"]),
    ],
)
def test_cli_refuses_bad_settings_before_any_work(argv, names, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "semi"
    refused(["semisup", *argv, "--out", out], capsys, names=names)
    assert not out.exists()


def test_cli_refuses_fast_swa_steps_longer_than_the_cycle(tmp_path, capsys):
    out = tmp_path / "semi"
    refused(
        ["semisup", "--model", "mlp", "--fast-swa-unit", "steps", "--fast-swa-every", "100000", "--out", out],
        capsys,
        names=["--fast-swa-every", "steps"],
    )
    assert not out.exists()


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "semi"
    semisup_run(SemisupConfig(**SMALL, consistency=["none"]), out, progress=False)
    refused(
        ["semisup", "--consistency", "none", "--out", out, "--resume"],
        capsys,
        names=["settings differ"],
        untouched=[out],
    )


def test_claims_verdicts_on_constructed_runs():
    from valleys.app.semisup import claims, verdict

    def runs(errors):  # {(consistency, kind): [error per seed]}
        out = {}
        for (c, kind), errs in errors.items():
            for s, e in enumerate(errs):
                r = out.setdefault((c, s), {"consistency": c, "seed": s, "metrics": {}})
                r["metrics"][kind] = {"test": {"accuracy": 1 - e}}
        return list(out.values())

    lines = claims(
        runs(
            {
                ("none", "student"): [0.20, 0.22, 0.21],
                ("pi", "student"): [0.10, 0.12, 0.11],
                ("pi", "swa"): [0.11, 0.11, 0.11],
                ("pi", "fastswa"): [0.15, 0.16, 0.17],
            }
        )
    )
    assert lines[0].startswith(
        "- pi beats supervised-only on the same labels: holds (11.00% against 21.00%, "
        "difference -10.00 ± 0.00 points over 3 seeds; detectable at 80% power: 0.00 points, seeds for this "
        "difference: 2)"
    )
    assert "SWA improves on its base model: within noise" in lines[1]
    assert "fast-SWA improves on its base model: does not hold" in lines[2]
    assert verdict(-0.01, float("nan"), 1) == "holds (one seed: no spread)"


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import valleys.app.semisup as semisup

    out = tmp_path / "semi"

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(semisup, "semisup_one", interrupted)
    code = run(
        ["semisup", "--model", "mlp", "--consistency", "none", "--jobs", "1", "--no-progress", "--out", out], capsys
    )
    assert code.code == 130 and f"valleys semisup ... --out {out} --resume" in code.err
    assert (out / "config.json").is_file()  # kept for --resume


def test_dict_batches_with_a_mask_train_through_the_adapter():
    """An attention-style model fed dict batches (input and mask as keyword arguments): the split reads the
    dict labels, unlabelled examples get label -1, and views= draws the two views of any batch."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Linear(3, 8), nn.Linear(8, 4)

        def forward(self, input, mask):
            h = torch.relu(self.proj(input)) * mask[..., None]
            return self.head(h.sum(1) / mask.sum(1, keepdim=True))

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(80, 5, 3, generator=g), torch.arange(80) % 4
            self.m = (torch.arange(5)[None] < torch.randint(2, 6, (80, 1), generator=g)).float()

        def __len__(self):
            return 80

        def __getitem__(self, i):
            return {"input": self.x[i], "mask": self.m[i], "label": self.y[i]}

    ds = Tokens()
    lab, unl = labelled_split(dataset_targets(ds), 3, seed=0)
    loader = semisup_loader(ds, lab, batch_size=16, labelled_batch_size=4, seed=0)
    batch = next(iter(loader))
    assert batch["label"][:4].ge(0).all() and batch["label"][4:].eq(NO_LABEL).all()
    torch.manual_seed(0)
    model = Masked()
    teacher = MeanTeacher(model, 0.9)
    step = ConsistencyStep(
        "mean-teacher",
        teacher=teacher,
        weight=10.0,
        rampup=0,
        views=lambda b: {**b, "input": b["input"] + 0.1 * torch.randn_like(b["input"])},
    )
    adapter = ModelAdapter(target="label", input=["input", "mask"])
    h = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        2,
        adapter=adapter,
        callbacks=[teacher],
        step_fn=step,
    ).fit(progress=False)
    assert h[-1]["consistency_weight"] == 10.0 and math.isfinite(h[-1]["train_loss"]) and h[-1]["consistency_loss"] > 0


def test_logit_distance_second_head_loss_equals_the_reference_formula_by_hand():
    """The mean-teacher code's two heads: CE on z1 (summed / B), consistency between z2 and the teacher's first
    head, and w * sum (z1 - z2)^2 / (C B) (symmetric_mse_loss / minibatch_size); evaluation reads z1."""
    import torch.nn.functional as F

    from valleys.training.semisup import ConsistencyStep, MeanTeacher
    from valleys.training.trainer import Trainer
    from valleys.zoo.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn1d", (40,), 4, heads=2)
    model.train()
    z = model(torch.randn(3, 40))
    assert isinstance(z, tuple) and len(z) == 2 and z[0].shape == z[1].shape == (3, 4)
    model.eval()
    assert isinstance(model(torch.randn(3, 40)), torch.Tensor)  # evaluation: the first head only
    model.train()
    teacher = MeanTeacher(model, 0.9)
    w, lam_max = 0.01, 7.5
    step = ConsistencyStep("mean-teacher", weight=lam_max, rampup=0, teacher=teacher, logit_distance=w)
    x, y = torch.randn(6, 40), torch.tensor([0, 2, -1, -1, -1, 1])
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)], 1, step_fn=step)
    torch.manual_seed(1)
    got = step(trainer, (x, y))
    with torch.no_grad():
        z1, z2 = model(x)
        t1, _ = teacher.model(x)
        lab = y >= 0
        ce = F.cross_entropy(z1[lab], y[lab], reduction="sum") / 6
        cons = ((z2.softmax(1) - t1.softmax(1)) ** 2).sum() / (4 * 6)
        res = w * ((z1 - z2) ** 2).sum() / (4 * 6)
    torch.testing.assert_close(got.loss.detach(), ce + lam_max * cons + res, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.logs["logit_distance_loss"], res, rtol=1e-5, atol=1e-7)
    one_head = ConsistencyStep("pi", weight=1.0, logit_distance=0.01)
    plain = Trainer(build_model("cnn1d", (40,), 4), torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)], 1)
    with pytest.raises(TypeError, match="heads=2"):
        one_head(plain, (x, y))
    with pytest.raises(ValueError, match="logit_distance"):
        ConsistencyStep("pi", logit_distance=-1.0)


def test_logit_distance_refuses_a_model_without_a_second_head_before_any_work(tmp_path, capsys):
    from cli_harness import refused

    refused(
        ["semisup", "--model", "mlp", "--logit-distance", "0.01", "--out", tmp_path / "s"],
        capsys,
        names=["--logit-distance", "cnn1d"],
    )
    assert not (tmp_path / "s").exists()
