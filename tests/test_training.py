import json

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from conftest import BNCNN, DropoutBNMLP
from valleys.core.batchnorm import EmptyLoaderError
from valleys.core.checkpoint import CheckpointError, load_checkpoint
from valleys.core.weights import WeightSpace
from valleys.methods.averaging import SWA
from valleys.training.callbacks import SWACallback
from valleys.training.schedules import SWASchedule
from valleys.training.trainer import Callback, CheckpointPolicy, EvaluationPolicy, Trainer, TrainingDiverged
from valleys.zoo.data import make_loader


class Interrupt(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, trainer):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


def _trainer(make, data, tmp_path, extra=(), epochs=6, seed=0):
    torch.manual_seed(123)  # same init for every trainer; fit() reseeds with `seed`
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    train = make_loader(data, 16, shuffle=True, seed=seed)
    swa = SWACallback(SWA(model), start=2, bn_loader=make_loader(data, 32))
    tr = Trainer(
        model,
        opt,
        train,
        epochs,
        schedule=SWASchedule(0.05, 3, 0.02),
        callbacks=[swa, *extra],
        evaluation=EvaluationPolicy({"val": make_loader(data, 50)}),
        checkpoint=CheckpointPolicy(tmp_path / "ckpt.safetensors", log=tmp_path / "log.jsonl"),
        seed=seed,
    )
    return tr, swa


@pytest.mark.parametrize("make,data", [(DropoutBNMLP, "vec_data"), (BNCNN, "img_data")])
def test_interrupted_and_resumed_run_ends_with_identical_weights(make, data, tmp_path, request):
    ds = request.getfixturevalue(data)
    full, full_swa = _trainer(make, ds, tmp_path / "a")
    full.fit(progress=False)
    steps = full.steps_per_epoch
    broken, _ = _trainer(make, ds, tmp_path / "b", extra=[Interrupt(at_step=3 * steps + 2)])
    with pytest.raises(KeyboardInterrupt):
        broken.fit(progress=False)
    _, header = load_checkpoint(tmp_path / "b" / "ckpt.safetensors")
    assert header["epoch"] == 3
    resumed, resumed_swa = _trainer(make, ds, tmp_path / "b", extra=[Interrupt(at_step=-1)])
    torch.manual_seed(999)  # scramble the global RNG: resume must restore it
    resumed.fit(progress=False, resume=tmp_path / "b" / "ckpt.safetensors")
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed_swa.averager.n == full_swa.averager.n == 4
    assert torch.equal(resumed_swa.averager.mean, full_swa.averager.mean)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [round(r["train_loss"], 10) for r in log] == [round(r["train_loss"], 10) for r in full.history]


def test_swa_callback_equals_averaged_model_on_the_same_trajectory(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    ref = AveragedModel(model)

    class Ref(Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.epoch > 2:
                ref.update_parameters(trainer.model)

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    swa = SWACallback(SWA(model), start=2, apply_at_end=False)
    Trainer(model, opt, make_loader(vec_data, 16, shuffle=True), 6, callbacks=[swa, Ref()]).fit(progress=False)
    assert swa.averager.n == 4 and int(ref.n_averaged) == 4
    assert (swa.averager.mean - WeightSpace(ref.module).read(ref.module)).abs().max() <= 1e-6


def test_collect_modes_count(vec_data):
    def count(**kw):
        model = DropoutBNMLP()
        cb = SWACallback(SWA(model), apply_at_end=False, **kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        Trainer(model, opt, make_loader(vec_data, 10), 4, callbacks=[cb]).fit(progress=False)
        return cb.averager.n

    assert count(start=1) == 3
    assert count(start=0, every="steps", k=5) == 44 // 5  # 11 steps per epoch, 44 steps
    assert count(start=0, every="cycle", cycle=2) == 2  # mid-cycle of each 2-epoch cycle
    assert count(start=1, every="cycle", cycle=2) == 2  # cycles counted from epoch 1: mid-cycle steps 22 and 44
    with pytest.raises(ValueError, match="unknown collect mode"):
        SWACallback(SWA(DropoutBNMLP()), every="hourly")


def test_swa_start_beyond_epochs_is_refused_before_training(vec_data):
    model = DropoutBNMLP()
    before = WeightSpace(model).read(model)
    tr = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        make_loader(vec_data, 10),
        3,
        callbacks=[SWACallback(SWA(model), start=3)],
    )
    with pytest.raises(ValueError, match="only 3 epochs"):
        tr.fit(progress=False)
    assert torch.equal(WeightSpace(model).read(model), before)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(vec_data, tmp_path):
    x, y = vec_data.tensors
    model = DropoutBNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    class Poison(Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.epoch == 2:
                with torch.no_grad():
                    trainer.model.fc2.weight.fill_(float("nan"))

    tr = Trainer(
        model,
        opt,
        make_loader(vec_data, 20),
        5,
        callbacks=[Poison()],
        checkpoint=CheckpointPolicy(tmp_path / "c.safetensors"),
    )
    with pytest.raises(TrainingDiverged, match=r"epoch 3, step 1 of 6 .*last good checkpoint"):
        tr.fit(progress=False)
    state, header = load_checkpoint(tmp_path / "c.safetensors")
    assert header["epoch"] == 2
    assert torch.isfinite(state["model"]["fc1.weight"]).all()


def test_empty_loader_and_bad_epochs(vec_data):
    model = DropoutBNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(EmptyLoaderError, match="empty"):
        Trainer(model, opt, [], 1)
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, opt, make_loader(vec_data), 0)


def test_resume_into_other_architecture_is_refused(vec_data, tmp_path):
    tr, _ = _trainer(DropoutBNMLP, vec_data, tmp_path, epochs=3)
    tr.fit(progress=False)
    other = nn.Sequential(nn.Linear(5, 3))
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    t2 = Trainer(other, opt, make_loader(vec_data), 2)
    with pytest.raises(CheckpointError, match="another architecture"):
        t2.fit(progress=False, resume=tmp_path / "ckpt.safetensors")
