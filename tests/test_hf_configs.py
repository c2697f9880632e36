"""valleys' Hugging Face callbacks in the configurations people train with: resume from a checkpoint folder
(bit-identical posterior), gradient accumulation, ``swa_lr`` beside the Trainer's scheduler, a BatchNorm
model, LoRA with and without peft's ``modules_to_save``, a fractional start, sharded set-ups refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'valleys[hf]')")

from valleys.core.weights import WeightSpace  # noqa: E402
from valleys.errors import InputError, NotCollectedError  # noqa: E402
from valleys.hf import SWACallback, SWAGCallback  # noqa: E402


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Net(nn.Module):
    """A model as transformers' Trainer calls it: keyword inputs, a dict with the loss and the logits."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Record(transformers.TrainerCallback):
    """The weights and the rate after every optimizer step."""

    def __init__(self):
        self.rows = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self.rows.append((state.global_step, WeightSpace(model).read(model).double().clone()))


def _args(tmp_path, epochs=4, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        report_to=[],
        save_strategy=kw.pop("save_strategy", "no"),
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **kw,
    )


def _trainer(model, args, callbacks):
    return transformers.Trainer(model=model, args=args, train_dataset=Pairs(64, 0), callbacks=callbacks)


def test_resume_from_a_checkpoint_folder_ends_with_the_uninterrupted_posterior(tmp_path):
    """Two callbacks on one Trainer (SWAG and a per-step SWA), each restored from its own file."""
    whole, whole_fast = SWAGCallback(start=1, rank=2), SWACallback(start=1, every="steps", k=3, apply_at_end=False)
    _trainer(Net(), _args(tmp_path, save_strategy="epoch"), [whole, whole_fast]).train()
    assert whole.averager.n == 3
    resumed, fast = SWAGCallback(start=1, rank=2), SWACallback(start=1, every="steps", k=3, apply_at_end=False)
    # resume from the end of epoch 2 (8 steps per epoch): the posteriors saved in that folder come back
    _trainer(Net(), _args(tmp_path, save_strategy="epoch"), [resumed, fast]).train(
        resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-16")
    )
    assert resumed.averager.n == 3  # 2 before the fix: the collects of epochs 1-2 were lost
    for key in ("mean", "m2", "deviations"):
        assert torch.equal(resumed.averager.state_dict()[key], whole.averager.state_dict()[key]), key
    assert fast.averager.n == whole_fast.averager.n and torch.equal(fast.averager.mean, whole_fast.averager.mean)


def test_resume_without_the_callbacks_state_is_refused(tmp_path):
    _trainer(Net(), _args(tmp_path, epochs=2, save_strategy="epoch"), []).train()
    with pytest.raises(InputError, match="is missing"):
        _trainer(Net(), _args(tmp_path, epochs=3, save_strategy="epoch"), [SWACallback(start=1)]).train(
            resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-16")
        )


@pytest.mark.parametrize("accumulate", [1, 2, 4])
@pytest.mark.parametrize("cls", [SWACallback, SWAGCallback])
def test_per_step_collection_counts_optimizer_steps_under_accumulation(tmp_path, accumulate, cls):
    extra = {"apply_at_end": False} if cls is SWACallback else {"rank": 2}
    cb, rec = cls(start=1, every="steps", k=1, **extra), Record()
    _trainer(Net(), _args(tmp_path, epochs=3, gradient_accumulation_steps=accumulate), [cb, rec]).train()
    per_epoch = 8 // accumulate
    after = [w for step, w in rec.rows if (step - 1) // per_epoch >= 1]  # the steps of epochs 1 and 2
    assert cb.averager.n == len(after) == 2 * per_epoch
    assert torch.allclose(cb.averager.mean.double(), torch.stack(after).mean(0), atol=1e-6)


@pytest.mark.parametrize("cls", [SWACallback, SWAGCallback])
def test_swa_lr_is_constant_over_the_trainers_linear_decay(tmp_path, cls):
    cb = cls(start=1, swa_lr=0.01)
    seen = []

    class Rates(transformers.TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            seen.append((int(state.epoch or 0), optimizer.param_groups[0]["lr"]))

    with pytest.warns(UserWarning, match="LambdaLR"):
        _trainer(Net(), _args(tmp_path, epochs=3), [cb, Rates()]).train()
    late = [lr for epoch, lr in seen if epoch >= 1]
    assert late and all(lr == 0.01 for lr in late)


def test_a_batchnorm_model_gets_its_statistics_recomputed_for_each_draw(tmp_path):
    swag = SWAGCallback(start=1, rank=2, samples=3)
    model = Net(bn=True)
    _trainer(model, _args(tmp_path, epochs=3), [swag]).train()
    test = torch.utils.data.DataLoader(Pairs(40, 1), batch_size=20)
    res = swag.bma(model, test)  # the training loader, remembered when training began, for the recompute
    assert res.num_samples == 3
    # the oracle: the same 3 draws written into a copy, BatchNorm recomputed on the training set, softmax averaged
    from valleys.core.batchnorm import recompute_bn

    draws = swag.averager.samples(3, scale=0.5, generator=torch.Generator().manual_seed(0))
    probs = 0
    for w in draws:
        twin = Net(bn=True)
        WeightSpace(twin).write(twin, w)
        recompute_bn(twin, torch.utils.data.DataLoader(Pairs(64, 0), batch_size=8), adapter=swag.adapter)
        with torch.no_grad():
            probs = probs + twin.eval()(Pairs(40, 1).x)["logits"].double().softmax(-1) / 3
    y = Pairs(40, 1).y
    assert float(res.metrics.nll) == pytest.approx(float(-probs[torch.arange(40), y].log().mean()), rel=1e-5)


def test_a_float_start_before_fit_and_sharded_set_ups():
    assert SWACallback(start=0.5).start_setting == 0.5
    with pytest.raises(NotCollectedError, match="built when training starts"):
        _ = SWAGCallback(start=1).averager
    for args in (SimpleNamespace(fsdp="full_shard", deepspeed=None), SimpleNamespace(fsdp="", deepspeed="ds.json")):
        with pytest.raises(InputError, match="DDP.*fully_shard"):
            SWACallback(start=1).on_train_begin(args, None, None, model=Net())


def test_lora_names_include_modules_to_save_unless_lora_only():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = peft.get_peft_model(
        transformers.BertForSequenceClassification(config),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    from valleys.hf import adapter_names

    with_head, lora_only = adapter_names(model, "lora"), adapter_names(model, "lora-only")
    heads = [n for n in with_head if "modules_to_save" in n]
    assert heads and set(with_head) == set(lora_only) | set(heads)
    assert all("lora_" in n for n in lora_only)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(with_head) == trainable  # LoRA and the classifier head: every trainable parameter


def test_swa_writes_the_average_with_recomputed_batchnorm_at_train_end(tmp_path):
    from valleys.core.batchnorm import recompute_bn

    swa, rec = SWACallback(start=1), Record()
    model = Net(bn=True)
    _trainer(model, _args(tmp_path, epochs=3), [swa, rec]).train()
    assert torch.allclose(WeightSpace(model).read(model).double(), swa.averager.mean.double(), atol=1e-7)
    twin = Net(bn=True)
    WeightSpace(twin).write(twin, swa.averager.mean)
    recompute_bn(twin, torch.utils.data.DataLoader(Pairs(64, 0), batch_size=8), adapter=swa.adapter)
    for k in ("net.1.running_mean", "net.1.running_var"):
        assert torch.allclose(model.state_dict()[k], twin.state_dict()[k], atol=1e-5), k


class EpochEnds(transformers.TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, args, state, control, model=None, **kw):
        self.weights.append(WeightSpace(model).read(model).double().clone())


def _ddp_rank(rank, world, out, port):
    import os

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank)}
    )
    os.environ["LOCAL_RANK"] = str(rank)  # the harness's gloo group is up: the Trainer joins it
    swag, ends = SWAGCallback(start=1, rank=2), EpochEnds()
    swa = SWACallback(start=1, every="steps", k=2, apply_at_end=False)
    args = _args(Path(out), epochs=3, ddp_backend="gloo")
    trainer = _trainer(Net(), args, [swag, swa, ends])
    trainer.train()
    return {
        "swa": swa.averager.mean.clone(),
        "swa_n": swa.averager.n,
        "n": swag.averager.n,
        "mean": swag.averager.mean.clone(),
        "ends": torch.stack(ends.weights),
        "world": args.world_size,
        "steps": trainer.state.global_step,
    }


def test_ddp_on_two_processes_collects_identical_posteriors(tmp_path):
    import random

    from dist_harness import run_ranks

    r0, r1 = run_ranks(_ddp_rank, 2, tmp_path, str(tmp_path), random.randint(20000, 40000))
    assert r0["world"] == 2 and r0["steps"] == 3 * 64 // (2 * 8)  # each rank half of every global batch
    assert r0["n"] == r1["n"] == 2 and torch.equal(r0["mean"], r1["mean"])
    assert torch.allclose(r0["mean"].double(), r0["ends"][1:].mean(0), atol=1e-6)
    assert r0["swa_n"] == 4 and torch.equal(r0["swa"], r1["swa"])  # every 2nd of the 8 steps of epochs 1-2
