import math

import pytest
import torch

from valleys.app.config import TrainConfig
from valleys.app.registry import get_method
from valleys.training.schedules import Constant, CosineReplay, SWALRAnneal, SWASchedule, TriangularCyclic


def test_swa_schedule_shape():
    s = SWASchedule(0.1, swa_start=10, swa_lr=0.01)
    assert s(0) == s(5) == pytest.approx(0.1)  # t <= 0.5
    assert s(7) == pytest.approx(0.1 * (1 - 0.9 * (0.7 - 0.5) / 0.4))
    assert s(9) == s(20) == pytest.approx(0.01)
    assert s(6.99) == s(6)  # per epoch: constant within an epoch


def test_sgd_baseline_ends_at_one_percent():
    s = get_method("sgd").schedule(TrainConfig(method="sgd", lr=0.2, epochs=100).resolved())
    assert s(95) == pytest.approx(0.002)
    assert s(40) == pytest.approx(0.2)


def test_triangular_cycle():
    s = TriangularCyclic(0.05, 0.0005, cycle=4)
    assert s(0) == pytest.approx(0.05)
    assert s(1) == pytest.approx((0.05 + 0.0005) / 2)
    assert s(2) == pytest.approx(0.0005)
    assert s(3) == pytest.approx((0.05 + 0.0005) / 2)
    assert s(4) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="even"):
        TriangularCyclic(0.05, 0.0005, cycle=3)


def test_cosine_replay_and_anneal():
    s = CosineReplay(1.0, length=10, cycle=2)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.5)
    assert s(10.5) == pytest.approx(s(8.5))
    assert s(13) == pytest.approx(s(9))
    a = SWALRAnneal(0.1, start=5, swa_lr=0.02, anneal_epochs=4)
    assert a(5) == pytest.approx(0.1)
    assert a(7) == pytest.approx(0.02 + 0.08 * (1 + math.cos(math.pi / 2)) / 2)
    assert a(9) == a(50) == pytest.approx(0.02)


def test_lr_scheduler_object_follows_function():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.05)
    sched = TriangularCyclic(0.05, 0.001, cycle=2)
    lr_sched = sched.lr_scheduler(opt, steps_per_epoch=10)
    for step in range(1, 45):
        opt.step()
        lr_sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(sched(step / 10))


def test_bad_values():
    with pytest.raises(ValueError, match="lr"):
        Constant(0.0)
    with pytest.raises(ValueError, match="swa_lr"):
        SWASchedule(0.1, 10, -1)
    with pytest.raises(ValueError, match="strategy"):
        SWALRAnneal(0.1, 1, 0.01, strategy="exp")
