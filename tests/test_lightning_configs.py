"""valleys' Lightning callbacks in the configurations people train with: BatchNorm models at test and predict
time, gradient accumulation, manual optimisation, a checkpoint written after fit, a user LR scheduler beside
``swa_lr``, two callbacks on one Trainer, a fractional start, the state before fit, sharded strategies.
Each oracle is computed by hand from weights recorded after every optimizer step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip(
    "lightning.pytorch", reason="the lightning extra is not installed (pip install 'valleys[lightning]')"
)

from valleys.core.weights import WeightSpace  # noqa: E402
from valleys.errors import InputError, NotCollectedError  # noqa: E402
from valleys.lightning import FGECallback, SWACallback, SWAGCallback  # noqa: E402


def _data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return TensorDataset(x, y)


def _loader(n=100, seed=0, batch=10):
    return DataLoader(_data(n, seed), batch_size=batch, shuffle=False)


class BNNet(pl.LightningModule):
    """A BatchNorm MLP; ``scheduler="step"`` adds a per-step StepLR, ``manual=True`` trains two optimizers by
    hand (the body and the head), each stepping once per batch."""

    def __init__(self, lr: float = 0.05, scheduler: str | None = None, manual: bool = False, bn: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU())
        self.head = nn.Linear(16, 3)
        self.lr, self.scheduler = lr, scheduler
        self.automatic_optimization = not manual

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.automatic_optimization:
            return loss
        opts = self.optimizers()
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in opts:
            opt.step()
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        if not self.automatic_optimization:
            return [
                torch.optim.SGD(self.body.parameters(), lr=self.lr),
                torch.optim.SGD(self.head.parameters(), lr=self.lr),
            ]
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


class Steps(pl.Callback):
    """After every batch: the global step, whether an optimizer step happened, the weights and the rates."""

    def __init__(self):
        self.rows, self._last, self.step_lrs = [], 0, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.step_lrs.append((trainer.current_epoch, optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stepped = trainer.global_step != self._last
        self._last = trainer.global_step
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "stepped": stepped,
                "w": WeightSpace(pl_module).read(pl_module).double().clone(),
                "lr": lrs,
            }
        )


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


def _optimizer_steps(rows):
    """The weights after each optimizer step, with the epoch it was taken in."""
    return [(r["epoch"], r["w"]) for r in rows if r["stepped"]]


# ---------------------------------------------------------------------- BatchNorm at test and predict time
def test_swag_test_after_fit_on_a_batchnorm_model_recomputes_on_the_training_loader():
    swag, train = SWAGCallback(start=1, rank=2, samples=3), _loader()
    module = BNNet()
    trainer = _trainer(4, [swag])
    trainer.fit(module, train)
    trainer.test(module, _loader(40, 1), verbose=False)  # failed before: no loader for the BatchNorm recompute
    direct = swag.bma(module, _loader(40, 1), bn=train).metrics
    assert swag.test_metrics[0]["swag_test_nll"] == pytest.approx(float(direct.nll), rel=1e-12)


def test_swa_predict_after_fit_uses_the_average_with_recomputed_batchnorm():
    swa, train = SWACallback(start=1), _loader()
    module = BNNet()
    trainer = _trainer(3, [swa])
    trainer.fit(module, train)
    preds = torch.cat(trainer.predict(module, _loader(40, 1)))
    assert torch.allclose(WeightSpace(module).read(module), swa.averager.mean)
    twin = BNNet()
    WeightSpace(twin).write(twin, swa.averager.mean)
    from valleys.core.batchnorm import recompute_bn

    recompute_bn(twin, train)
    with torch.no_grad():
        assert torch.allclose(preds, twin.eval()(_data(40, 1).tensors[0]), atol=1e-6)


def test_fge_bma_on_a_batchnorm_model_keeps_each_snapshots_statistics():
    fge = FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005)
    module = BNNet()
    _trainer(5, [fge]).fit(module, _loader())
    assert len(fge.snapshots) == 2 and all("body.1.running_mean" in s for s in fge.snapshots)
    res = fge.bma(module, _loader(40, 1), return_probs=True)
    x = _data(40, 1).tensors[0]
    manual = 0
    for snap in fge.snapshots:
        twin = BNNet()
        twin.load_state_dict(snap)
        with torch.no_grad():
            manual = manual + twin.eval()(x).double().softmax(-1) / len(fge.snapshots)
    assert torch.allclose(res.probs, manual, atol=1e-6)


# ---------------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_fge_snapshots_at_cycle_midpoints_counted_in_optimizer_steps(accumulate):
    fge, rec = FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005), Steps()
    _trainer(5, [fge, rec], accumulate_grad_batches=accumulate).fit(BNNet(), _loader())
    steps = _optimizer_steps(rec.rows)
    per_epoch = math.ceil(10 / accumulate)
    assert len(steps) == 5 * per_epoch
    # the snapshots are the weights after steps start*P + P (mid-cycle), + 2P + P, ... (cycle = 2 epochs)
    want = [per_epoch + per_epoch * (1 + 2 * i) for i in range(2)]
    for snap, s in zip(fge.snapshots, want, strict=True):
        module = BNNet()
        module.load_state_dict(snap)
        assert torch.equal(WeightSpace(module).read(module).double(), steps[s - 1][1])


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_per_step_swa_averages_every_kth_optimizer_step_under_accumulation(accumulate):
    swa, rec = SWACallback(start=1, every="steps", k=2, apply_at_end=False), Steps()
    _trainer(3, [swa, rec], accumulate_grad_batches=accumulate).fit(BNNet(), _loader())
    steps = _optimizer_steps(rec.rows)
    chosen = [w for i, (epoch, w) in enumerate(steps, start=1) if epoch >= 1 and i % 2 == 0]
    assert swa.averager.n == len(chosen) > 0
    assert torch.allclose(swa.averager.mean.double(), torch.stack(chosen).mean(0), atol=1e-6)


@pytest.mark.parametrize("accumulate", [2, 4])
def test_per_step_swag_collects_the_same_steps_as_swa_under_accumulation(accumulate):
    swag, rec = SWAGCallback(start=1, rank=2, every="steps", k=2), Steps()
    _trainer(3, [swag, rec], accumulate_grad_batches=accumulate).fit(BNNet(), _loader())
    chosen = [w for i, (epoch, w) in enumerate(_optimizer_steps(rec.rows), start=1) if epoch >= 1 and i % 2 == 0]
    assert swag.averager.n == len(chosen) > 1
    assert torch.allclose(swag.averager.mean.double(), torch.stack(chosen).mean(0), atol=1e-6)
    var = torch.stack(chosen).var(0, unbiased=False)
    assert torch.allclose(swag.averager.variance.double(), var, atol=1e-6)  # SWAG's diagonal, brute force


def test_fge_under_manual_optimisation_snapshots_at_cycle_midpoints():
    fge, rec = FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005), Steps()
    _trainer(5, [fge, rec]).fit(BNNet(manual=True), _loader())
    # one step per batch (two optimizers): the midpoints are batches 10 + 10 and 10 + 30
    for snap, batch in zip(fge.snapshots, (20, 40), strict=True):
        module = BNNet(manual=True)
        module.load_state_dict(snap)
        assert torch.equal(WeightSpace(module).read(module).double(), rec.rows[batch - 1]["w"])
    assert len(fge.snapshots) == 2


def test_epoch_swa_is_the_same_with_and_without_accumulation_oracle():
    swa, rec = SWACallback(start=1, apply_at_end=False), Steps()
    _trainer(3, [swa, rec], accumulate_grad_batches=2).fit(BNNet(), _loader())
    ends = [r["w"] for i, r in enumerate(rec.rows) if (i + 1) % 10 == 0][1:]
    assert torch.allclose(swa.averager.mean.double(), torch.stack(ends).mean(0), atol=1e-6)


@pytest.mark.parametrize("cls", [SWACallback, SWAGCallback])
def test_manual_optimisation_with_two_optimizers_counts_each_batch_once(cls):
    cb, rec = cls(start=1, every="steps", k=2, **({"apply_at_end": False} if cls is SWACallback else {})), Steps()
    _trainer(3, [cb, rec]).fit(BNNet(manual=True), _loader())
    # Lightning's global step moves by 2 per batch (two optimizers); every 2nd batch is every 2nd step
    chosen = [r["w"] for i, r in enumerate(rec.rows, start=1) if r["epoch"] >= 1 and i % 2 == 0]
    assert cb.averager.n == len(chosen) == 10
    assert torch.allclose(cb.averager.mean.double(), torch.stack(chosen).mean(0), atol=1e-6)


# ---------------------------------------------------------------------- checkpoints, schedulers, two callbacks
def test_a_checkpoint_written_after_fit_holds_the_trained_weights_and_the_average_beside_them(tmp_path):
    swa, rec = SWACallback(start=1), Steps()
    module = BNNet()
    trainer = _trainer(3, [swa, rec])
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    ckpt = torch.load(tmp_path / "after.ckpt", weights_only=False)
    trained = BNNet()
    trained.load_state_dict(ckpt["state_dict"])
    assert torch.equal(WeightSpace(trained).read(trained).double(), rec.rows[-1]["w"])  # the last iterate
    assert torch.allclose(WeightSpace(module).read(module), swa.averager.mean)  # the module holds the average
    assert torch.equal(ckpt["callbacks"][swa.state_key]["mean"], swa.averager.mean)
    # resuming from it continues training from the trained weights, not from the average
    resumed, again = SWACallback(start=1), Steps()
    _trainer(4, [resumed, again]).fit(BNNet(), _loader(), ckpt_path=tmp_path / "after.ckpt")
    first = again.rows[0]["w"]
    assert not torch.allclose(first, swa.averager.mean.double(), atol=1e-3)
    assert resumed.averager.n == 3


@pytest.mark.parametrize("cls", [SWACallback, SWAGCallback])
def test_swa_lr_wins_over_a_per_step_scheduler_with_a_warning(cls):
    cb, rec = cls(start=1, swa_lr=0.02), Steps()
    with pytest.warns(UserWarning, match="StepLR"):
        _trainer(3, [cb, rec]).fit(BNNet(scheduler="step"), _loader())
    rates = [lr for epoch, lr in rec.step_lrs if epoch >= 1]  # the rate each optimizer step used
    assert len(rates) == 20 and all(lr == 0.02 for lr in rates)  # the scheduler halves it after every step


def test_two_averaging_callbacks_share_a_trainer_and_a_checkpoint(tmp_path):
    swa = SWACallback(start=1, apply_at_end=False)
    fast = SWACallback(start=1, every="steps", k=5, apply_at_end=False)
    swag = SWAGCallback(start=1, rank=2)
    fge = FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005)
    trainer = _trainer(3, [swa, fast, swag, fge])
    trainer.fit(BNNet(), _loader())  # refused by Lightning before: the same state_key twice
    assert (swa.averager.n, fast.averager.n, swag.averager.n, len(fge.snapshots)) == (2, 4, 2, 1)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    swa2, fast2 = SWACallback(start=1, apply_at_end=False), SWACallback(start=1, every="steps", k=5, apply_at_end=False)
    swag2, fge2 = SWAGCallback(start=1, rank=2), FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005)
    _trainer(3, [swa2, fast2, swag2, fge2]).fit(BNNet(), _loader(), ckpt_path=tmp_path / "two.ckpt")
    assert torch.equal(swa2.averager.mean, swa.averager.mean) and torch.equal(fast2.averager.mean, fast.averager.mean)
    assert torch.equal(swag2.averager.deviations, swag.averager.deviations)
    assert all(torch.equal(fge2.snapshots[0][k], v) for k, v in fge.snapshots[0].items())


def test_resuming_mid_averaging_ends_with_the_uninterrupted_posteriors(tmp_path):
    """Stop after epoch 2 of 5 (a checkpoint), resume to 5: the same SWA, SWAG and FGE states as one run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def callbacks():
        return [
            SWACallback(start=1, apply_at_end=False),
            SWAGCallback(start=1, rank=2),
            FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005),
        ]

    whole = callbacks()
    _trainer(5, whole).fit(BNNet(), _loader())
    first = callbacks()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    _trainer(2, [*first, ckpt], enable_checkpointing=True).fit(BNNet(), _loader())
    resumed = callbacks()
    _trainer(5, resumed).fit(BNNet(), _loader(), ckpt_path=tmp_path / "epoch=1-step=20.ckpt")
    assert torch.equal(resumed[0].averager.mean, whole[0].averager.mean)  # bit for bit
    assert torch.equal(resumed[1].averager.deviations, whole[1].averager.deviations)
    assert len(resumed[2].snapshots) == len(whole[2].snapshots) == 2
    for a, b in zip(resumed[2].snapshots, whole[2].snapshots, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_float_start_is_a_fraction_of_max_epochs():
    swa = SWACallback(start=0.5, apply_at_end=False)
    _trainer(4, [swa]).fit(BNNet(), _loader())
    assert swa.start == 2 and swa.averager.n == 2
    with pytest.raises(InputError, match="fraction"):
        SWACallback(start=1.5)


def test_before_fit_the_averager_says_what_to_do():
    swa = SWACallback(start=1)
    with pytest.raises(NotCollectedError, match="built when training starts"):
        _ = swa.averager.mean
    with pytest.raises(NotCollectedError, match="nothing was collected"):
        SWAGCallback(start=1).bma(BNNet(), _loader())


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sharded_strategies_are_refused_at_setup_naming_ddp_and_fsdp2(strategy):
    fake = SimpleNamespace(strategy=type(strategy, (), {})(), max_epochs=3)
    for cb in (SWACallback(start=1), SWAGCallback(start=1), FGECallback(start=1, cycle=2, lr_1=0.1, lr_2=0.01)):
        with pytest.raises(InputError, match="ddp.*fully_shard"):
            cb.setup(fake, BNNet(), "fit")


# ---------------------------------------------------------------------- DDP, two processes
class _EpochEnds(pl.Callback):
    def __init__(self):
        self.weights = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append(WeightSpace(pl_module).read(pl_module).double().clone())


def _ddp_rank(rank, world, port):
    import os

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
        }
    )  # the harness's process group is already up: Lightning joins it instead of launching processes
    swa, swag, ends = SWACallback(start=1, apply_at_end=False), SWAGCallback(start=1, rank=2, samples=3), _EpochEnds()
    fge = FGECallback(start=1, cycle=2, lr_1=0.05, lr_2=0.0005)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[swa, swag, ends, fge],
        accelerator="cpu",
        devices=world,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accumulate_grad_batches=2,
    )
    module = BNNet()
    trainer.fit(module, _loader(batch=5))  # each rank 5 of every 10 examples; BatchNorm per rank
    trainer.test(module, _loader(40, 1), verbose=False)  # every rank: the whole test set, its share of draws
    return {
        "swa": swa.averager.mean.clone(),
        "m2": swag.averager.state_dict()["m2"].clone(),
        "dev_raw": swag.averager.state_dict()["deviations"].clone(),
        "dev": swag.averager.deviations.clone(),
        "n": swag.averager.n,
        "ends": torch.stack(ends.weights),
        "world": trainer.world_size,
        "fge": fge.snapshots,
        "test": swag.test_metrics,
        "module": {k: v.clone() for k, v in module.state_dict().items()},
    }


def test_ddp_on_two_processes_collects_identical_posteriors_on_every_rank(tmp_path):
    import random

    from dist_harness import run_ranks

    r0, r1 = run_ranks(_ddp_rank, 2, tmp_path, random.randint(20000, 40000))
    assert r0["world"] == 2 and r0["n"] == r1["n"] == 2
    assert torch.equal(r0["swa"], r1["swa"]) and torch.equal(r0["dev"], r1["dev"])  # identical replicas
    assert torch.allclose(r0["swa"].double(), r0["ends"][1:].mean(0), atol=1e-6)  # the ends of epochs 2 and 3
    assert r0["test"] == r1["test"]  # the same BMA on both ranks
    assert len(r0["fge"]) == len(r1["fge"]) == 1  # the midpoint of the first cycle, in optimizer steps
    params = [k for k in r0["fge"][0] if "running" not in k and "num_batches" not in k]  # BatchNorm buffers: per rank
    assert params and all(torch.equal(r0["fge"][0][k], r1["fge"][0][k]) for k in params)
    one = BNNet()  # one process, the same posterior and draws, BatchNorm recomputed on the whole training set
    one.load_state_dict(r0["module"])
    swag = SWAGCallback(start=1, rank=2, samples=3)
    swag.build(one, swag._make)
    swag.averager.load_state_dict(
        {
            "kind": "SWAG",
            "n": 2,
            "size": len(r0["swa"]),
            "rank": 2,
            "mean": r0["swa"],
            "m2": r0["m2"],
            "deviations": r0["dev_raw"],
        }
    )
    lone = swag.bma(one, _loader(40, 1), bn=_loader()).metrics
    assert r0["test"][0]["swag_test_nll"] == pytest.approx(float(lone.nll), rel=1e-6)
    w = r0["ends"][1:]  # SWAG's deviations: each collected iterate minus the running mean after it
    running = torch.stack([w[: i + 1].mean(0) for i in range(len(w))])
    assert torch.allclose(r0["dev"].double(), w - running, atol=1e-6)


def test_the_posterior_can_live_in_last_ckpt_only(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from valleys.lightning import PosteriorInLastCheckpoint

    swag = SWAGCallback(start=1, rank=2)
    ckpts = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_last=True)
    trainer = _trainer(3, [swag, ckpts], enable_checkpointing=True, plugins=[PosteriorInLastCheckpoint()])
    trainer.fit(BNNet(), _loader())
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert "last.ckpt" in files and len(files) == 4  # three epochs and last
    for name in files:
        state = torch.load(tmp_path / name, weights_only=False)["callbacks"][swag.state_key]
        if name == "last.ckpt":
            assert torch.equal(state["deviations"], swag.averager.state_dict()["deviations"])
        else:
            assert state == {}
