"""valleys' Lightning callbacks against valleys' own loop, torch.optim.swa_utils and brute force."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip(
    "lightning.pytorch", reason="the lightning extra is not installed (pip install 'valleys[lightning]')"
)

from valleys.core.weights import WeightSpace  # noqa: E402
from valleys.methods.averaging import SWA, NotCollectedError  # noqa: E402


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return TensorDataset(x, y)


class Net(pl.LightningModule):
    def __init__(self, bn: bool = False, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 3))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Record(pl.Callback):
    """The flat weights at every epoch end, and AveragedModel updated at the same points (the oracles)."""

    def __init__(self, start):
        self.start, self.epochs, self.averaged = start, [], None

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(WeightSpace(pl_module).read(pl_module).double().clone())
        if trainer.current_epoch + 1 > self.start:
            if self.averaged is None:
                self.averaged = torch.optim.swa_utils.AveragedModel(pl_module.net)
            self.averaged.update_parameters(pl_module.net)  # the first update copies, the next ones average


def _trainer(epochs, callbacks, **kw):
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kw,
    )


def _loader():
    return DataLoader(_data(), batch_size=16, shuffle=False)


def test_swa_callback_equals_our_loop_averaged_model_and_brute_force():
    from valleys.lightning import SWACallback
    from valleys.training.callbacks import SWACallback as LoopSWA
    from valleys.training.trainer import Trainer

    torch.manual_seed(0)
    module = Net()
    init = {k: v.clone() for k, v in module.state_dict().items()}
    swa, rec = SWACallback(start=2, apply_at_end=False), Record(2)
    _trainer(6, [swa, rec]).fit(module, _loader())
    brute = torch.stack(rec.epochs[2:]).mean(0)
    assert swa.averager.n == 4 and torch.allclose(swa.averager.mean.double(), brute, atol=1e-6)
    averaged = torch.cat([p.detach().flatten() for p in rec.averaged.module.parameters()]).double()
    assert torch.allclose(swa.averager.mean.double(), averaged, atol=1e-6)
    # valleys' own loop, same model, data and optimizer: the same average
    torch.manual_seed(0)
    mine = Net()
    mine.load_state_dict(init)
    loop = SWA(mine)
    opt = torch.optim.SGD(mine.parameters(), lr=0.05, momentum=0.9)
    Trainer(mine, opt, _loader(), 6, callbacks=[LoopSWA(loop, 2, apply_at_end=False)]).fit(progress=False)
    assert torch.allclose(loop.mean, swa.averager.mean, atol=1e-6)


def test_swa_callback_writes_the_average_with_exact_batchnorm_statistics():
    from valleys.core.batchnorm import recompute_bn
    from valleys.lightning import SWACallback

    torch.manual_seed(0)
    module = Net(bn=True)
    swa = SWACallback(start=2)
    _trainer(5, [swa]).fit(module, _loader())
    assert torch.allclose(WeightSpace(module).read(module), swa.averager.mean)
    twin = Net(bn=True)
    twin.load_state_dict(module.state_dict())
    recompute_bn(twin, _loader())
    bn, bn2 = module.net[1], twin.net[1]
    assert torch.allclose(bn.running_mean, bn2.running_mean) and torch.allclose(bn.running_var, bn2.running_var)
    # and they are the data's statistics of the first layer's outputs under the average
    with torch.no_grad():
        h = module.net[0](_data().tensors[0])
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(0, unbiased=True), atol=1e-5)


def test_a_resumed_lightning_run_ends_with_the_same_posterior(tmp_path):
    from valleys.lightning import SWAGCallback

    torch.manual_seed(0)
    a = Net()
    init = {k: v.clone() for k, v in a.state_dict().items()}
    whole = SWAGCallback(start=1, rank=3)
    _trainer(5, [whole]).fit(a, _loader())
    torch.manual_seed(0)
    b = Net()
    b.load_state_dict(init)
    first = SWAGCallback(start=1, rank=3)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1, save_top_k=-1)
    _trainer(3, [first, ckpt], enable_checkpointing=True).fit(b, _loader())
    c = Net()
    resumed = SWAGCallback(start=1, rank=3)
    _trainer(5, [resumed]).fit(c, _loader(), ckpt_path=tmp_path / "last.ckpt")
    for key in ("mean", "m2", "deviations"):
        assert torch.allclose(resumed.averager.state_dict()[key], whole.averager.state_dict()[key], atol=1e-6), key
    assert resumed.averager.n == whole.averager.n == 4


def test_swag_callback_bma_at_test_time_and_refusals():
    from valleys.lightning import FGECallback, SWAGCallback

    torch.manual_seed(0)
    module = Net()
    swag = SWAGCallback(start=1, rank=3, samples=4)
    trainer = _trainer(4, [swag])
    trainer.fit(module, _loader())
    trainer.test(module, _loader(), verbose=False)
    m = swag.test_metrics[0]
    direct = swag.bma(module, _loader())
    assert direct.metrics.nll == pytest.approx(m["swag_test_nll"], rel=1e-9)  # same seed: the same samples
    assert direct.metrics.accuracy == pytest.approx(m["swag_test_accuracy"], rel=1e-12)
    # an independent oracle: the same 4 draws written into a copy of the net (no BatchNorm), softmax averaged
    x, y = _loader().dataset.tensors
    space = WeightSpace(module)
    manual = torch.zeros(len(y), 3, dtype=torch.float64)
    with torch.no_grad():
        for w in swag.averager.samples(4, scale=0.5, generator=torch.Generator().manual_seed(0)):
            space.write(module, w)
            manual += module.net(x).double().softmax(-1) / 4
    nll = -manual[torch.arange(len(y)), y].log().mean()
    assert m["swag_test_nll"] == pytest.approx(float(nll), rel=1e-5)
    assert m["swag_test_accuracy"] == pytest.approx(float((manual.argmax(-1) == y).double().mean()))
    late = SWAGCallback(start=10)
    t2 = _trainer(2, [late])
    t2.fit(Net(), _loader())
    with pytest.raises(NotCollectedError, match="collection starts after epoch 10"):
        t2.test(Net(), _loader(), verbose=False)
    fge = FGECallback(start=2, cycle=2, lr_1=0.05, lr_2=0.0005)
    _trainer(6, [fge]).fit(Net(), _loader())
    assert len(fge.snapshots) == 2  # mid-cycle of epochs 3-4 and 5-6
    # oracle: each snapshot loaded into a fresh net, softmax averaged by hand
    fresh, avg = Net(), 0
    with torch.no_grad():
        for snap in fge.snapshots:
            fresh.load_state_dict(snap)
            avg = avg + fresh(x).double().softmax(-1) / 2
    assert fge.bma(Net(), _loader()).metrics.accuracy == pytest.approx(float((avg.argmax(-1) == y).double().mean()))


def test_a_model_whose_parameters_change_shape_is_refused():
    from valleys.lightning import SWACallback

    class Growing(Net):
        def on_train_epoch_end(self):
            if self.current_epoch == 2:
                self.net[2] = nn.Linear(16, 3)  # a new layer object: same shape, new parameters
                self.net[2].weight = nn.Parameter(torch.zeros(3, 16))
                self.net.append(nn.Linear(3, 3))

    with pytest.raises(ValueError, match="changed shape or names"):
        _trainer(5, [SWACallback(start=1)]).fit(Growing(), _loader())


def test_the_extra_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "valleys.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'valleys\[lightning\]'"):
        import valleys.lightning  # noqa: F401


class _KeepAverage(pl.Callback):
    """Saves what the SWA callback holds on rank 0 at the end of fit (ddp_spawn runs fit in child processes)."""

    def __init__(self, swa, path):
        self.swa, self.path = swa, str(path)

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            import os

            torch.save(
                {
                    "mean": self.swa.averager.mean.clone(),
                    "n": self.swa.averager.n,
                    "weights": WeightSpace(pl_module).read(pl_module).clone(),
                },
                self.path + ".tmp",
            )
            os.replace(self.path + ".tmp", self.path)  # present means complete


@pytest.mark.slow
def test_swa_callback_under_lightning_ddp_on_two_cpu_processes(tmp_path):
    from valleys.lightning import SWACallback

    torch.manual_seed(0)
    module = Net(bn=True)
    swa = SWACallback(start=1)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[swa, _KeepAverage(swa, tmp_path / "avg.pt")],
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(module, DataLoader(_data(), batch_size=16, shuffle=False))
    except torch.multiprocessing.ProcessExitedException as e:
        # gloo's threads now and then abort a spawned process on its way out, after fit has ended (the same
        # happens with plain torch.distributed); only an abort before the result was written is a failure
        if "SIGABRT" not in str(e) or not (tmp_path / "avg.pt").is_file():
            raise
    got = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert got["n"] == 2 and torch.allclose(got["weights"], got["mean"])  # the average written into the module


def test_swa_callback_scores_the_average_on_validation_and_leaves_the_run_alone():
    from valleys.evaluation.predict import evaluate
    from valleys.lightning import SWACallback

    class Logged(Net):
        def __init__(self):
            super().__init__(bn=True)
            self.seen = []

        def log_dict(self, values, **kw):  # what the callback logs, kept for the test
            self.seen.append(dict(values))

    torch.manual_seed(0)
    module = Logged()
    swa = SWACallback(start=2, val_loader=_loader(), apply_at_end=False)
    _trainer(4, [swa]).fit(module, _loader())
    assert len(module.seen) == 2  # the ends of epochs 3 and 4, once something was collected
    last_weights = WeightSpace(module).read(module)
    assert not torch.allclose(last_weights, swa.averager.mean)  # apply_at_end=False: the run's own weights stay
    with swa.averager.space.at(module, swa.averager.mean):
        from valleys.core.batchnorm import recompute_bn

        recompute_bn(module, _loader())
        want = evaluate(module, _loader())
    assert module.seen[-1]["swa_val_accuracy"] == pytest.approx(want.accuracy)
    assert module.seen[-1]["swa_val_nll"] == pytest.approx(want.nll, rel=1e-6)
