"""valleys on two CPU processes (gloo, spawned from pytest) against one process with the same settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dist_harness import run_ranks
from valleys.core.batchnorm import recompute_bn
from valleys.core.distributed import RankSliceBatchSampler, shard_bounds

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


class _Branchy(nn.Module):
    """A BatchNorm net with a second BatchNorm layer on a branch taken only for inputs with a positive sum."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.lin, self.bn2 = nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        h = self.lin(self.bn1(x))
        return self.bn2(h) if float(x.sum()) > 0 else h


def _data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 4, generator=g) + 3.0  # positive: takes the branch
    b = torch.randn(8, 4, generator=g) - 3.0  # negative: skips it
    c = torch.randn(5, 4, generator=g) + 3.0
    return [a, b, c]


def _bn_rank(rank, world, batches_per_rank):
    torch.manual_seed(0)
    model = _Branchy()
    data = _data()
    mine = [data[i] for i in batches_per_rank[rank]]
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recompute_bn(model, mine)
    return {k: v.clone() for k, v in model.state_dict().items()}, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "split",
    [
        ([0, 1], [2]),  # both ranks reach both layers
        ([0, 2], [1]),  # rank 1 sees only the batch that skips bn2: it must still join bn2's all-reduce
        ([0, 1, 2], []),  # rank 1 has no data at all: warned, still takes part
    ],
)
def test_bn_recompute_all_reduces_every_layer_on_every_rank(split, tmp_path):
    (s0, w0), (s1, w1) = run_ranks(_bn_rank, 2, tmp_path, split)
    torch.manual_seed(0)
    one = _Branchy()
    data = _data()
    recompute_bn(one, [data[i] for i in split[0] + split[1]])
    for k, v in one.state_dict().items():
        if "num_batches_tracked" in k:
            continue
        assert torch.allclose(s0[k], v, atol=1e-5) and torch.allclose(s1[k], v, atol=1e-5), k
    assert (not split[1]) == any("has no batches" in w for w in w1)


def _raised(call) -> str:
    """The message of the exception ``call()`` raises on this rank (``"no error"`` if none)."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the test checks the message
        return str(e)
    return "no error"


def _empty_rank(rank, world):
    return _raised(lambda: recompute_bn(_Branchy(), []))


def test_bn_recompute_with_no_data_on_any_rank_raises_on_every_rank(tmp_path):
    assert all("no batches on any rank" in r for r in run_ranks(_empty_rank, 2, tmp_path))


def test_rank_slices_of_the_global_batches_are_one_process_batches():
    sampler = torch.utils.data.BatchSampler(range(10), 4, drop_last=False)
    slices = [list(RankSliceBatchSampler(sampler, r, 2)) for r in range(2)]
    glued = [sum((s[b] for s in slices), []) for b in range(len(sampler))]
    assert glued == [list(b) for b in sampler]
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    # three ranks: the last batch of 2 leaves rank 0 without a slice, which it skips (evaluation loaders)
    three = [list(RankSliceBatchSampler(sampler, r, 3)) for r in range(3)]
    assert [len(s) for s in three] == [2, 3, 3] and sorted(i for s in three for b in s for i in b) == list(range(10))


# ---------------------------------------------------------------------- training under DDP
def _train(epochs, ckpt=None, swa_start=0):
    from torch.utils.data import TensorDataset

    from valleys.methods.averaging import SWA
    from valleys.training.callbacks import SWACallback
    from valleys.training.trainer import CheckpointPolicy, EvaluationPolicy, Trainer
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    train = make_loader(TensorDataset(x, y), 8, shuffle=True, seed=3)  # 7 batches, the last of 2 examples
    test = make_loader(TensorDataset(x[:20], y[:20]), 7)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    swa = SWA(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(
        model,
        opt,
        train,
        epochs,
        callbacks=[SWACallback(swa, swa_start, apply_at_end=False)],
        evaluation=EvaluationPolicy({"test": test}),
        checkpoint=CheckpointPolicy(ckpt),
        seed=3,
    )
    history = trainer.fit(progress=False)
    return {
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
        "swa": swa.mean.clone(),
        "variance": swa.variance.clone(),
        "history": history,
    }


def _train_rank(rank, world, epochs, ckpt):
    return _train(epochs, ckpt if rank == 0 else None)


def test_two_processes_train_like_one(tmp_path):
    one = _train(3)
    r0, r1 = run_ranks(_train_rank, 2, tmp_path, 3, str(tmp_path / "ckpt.safetensors"))
    assert torch.equal(r0["weights"], r1["weights"])  # DDP keeps the replicas identical
    diff = (r0["weights"] - one["weights"]).abs().max().item()
    assert diff < 1e-5, diff
    assert torch.allclose(r0["swa"], one["swa"], atol=1e-5) and torch.equal(r0["swa"], r1["swa"])
    assert torch.allclose(r0["variance"], one["variance"], atol=1e-6) and torch.equal(r0["variance"], r1["variance"])
    for a, b in zip(r0["history"], one["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_accuracy"] == b["train_accuracy"] and a["test_accuracy"] == b["test_accuracy"]
        assert a["test_nll"] == pytest.approx(b["test_nll"], rel=1e-5)


def _stop_rank(rank, world, ckpt, stop_step, resume):
    """3 epochs of 7 steps on 2 ranks; rank 1 alone gets a SIGTERM after step ``stop_step`` (None: never)."""
    import signal

    from valleys.core import stopping
    from valleys.training.trainer import Callback, CheckpointPolicy, Trainer
    from valleys.zoo.data import make_loader

    class Signal(Callback):
        def on_step_end(self, trainer):
            if rank == 1 and trainer.step == stop_step:
                stopping._state["requested"] = signal.SIGTERM

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    train = make_loader(torch.utils.data.TensorDataset(x, y), 8, shuffle=True, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, opt, train, 3, callbacks=[Signal()], checkpoint=CheckpointPolicy(ckpt, every=3), seed=3)
    try:
        trainer.fit(resume=ckpt if resume else None, progress=False)
        stopped = None
    except stopping.Stopped as e:
        stopped = {"step": trainer.step, "code": e.exit_code, "checkpoint": e.checkpoint}
    return {"stopped": stopped, "weights": torch.cat([p.detach().flatten() for p in model.parameters()])}


def test_a_sigterm_on_one_rank_stops_every_rank_at_the_same_step_and_resumes_exactly(tmp_path):
    """Under torchrun the signal reaches the ranks at different steps; the trainer all-reduces the flag after
    every step, so both stop after the same step (none waits in a collective), rank 0 writes the checkpoint
    of that step, and two processes resumed from it end with the uninterrupted run's weights."""
    from valleys.core.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt.safetensors"
    whole = run_ranks(_stop_rank, 2, tmp_path, str(tmp_path / "whole.safetensors"), None, False)
    r0, r1 = run_ranks(_stop_rank, 2, tmp_path, str(ckpt), 10, False)
    assert r0["stopped"] == r1["stopped"] == {"step": 10, "code": 143, "checkpoint": str(ckpt)}
    state, header = load_checkpoint(ckpt)
    assert (header["epoch"], header["position"], header["world_size"]) == (1, 3, 2)
    r0, r1 = run_ranks(_stop_rank, 2, tmp_path, str(ckpt), None, True)
    assert r0["stopped"] is None and torch.equal(r0["weights"], r1["weights"])
    assert torch.equal(r0["weights"], whole[0]["weights"])


def test_resume_under_another_world_size_is_refused(tmp_path):
    from valleys.core.checkpoint import CheckpointError
    from valleys.methods.averaging import SWA
    from valleys.training.callbacks import SWACallback
    from valleys.training.trainer import Trainer

    ckpt = tmp_path / "ckpt.safetensors"
    run_ranks(_train_rank, 2, tmp_path, 1, str(ckpt))
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    loader = [(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))]
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader, 2, callbacks=[SWACallback(SWA(model))]
    )
    with pytest.raises(CheckpointError, match="written by a run on 2 processes, this run has 1"):
        trainer.fit(progress=False, resume=ckpt)


# ---------------------------------------------------------------------- sharded evaluation
class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        return self.net(x)


def _eval_setup():
    from torch.utils.data import TensorDataset

    from valleys.core.weights import WeightSpace
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 2] > 0.5).long()
    torch.manual_seed(0)
    model = _BNNet()
    space = WeightSpace(model)
    w0 = space.read(model)
    u, v = 0.1 * torch.randn(w0.shape, generator=g), 0.1 * torch.randn(w0.shape, generator=g)
    grid = torch.linspace(-1, 1, 5)
    points = torch.stack([w0 + a * u + b * v for a in grid for b in grid])  # a 5 x 5 grid on a plane
    return model, points, make_loader(TensorDataset(x, y), 16), make_loader(TensorDataset(x[:40], y[:40]), 16)


def _sharded_eval(rank, world):
    from valleys.evaluation.grid import evaluate_points
    from valleys.evaluation.predict import bma

    model, points, train, test = _eval_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = bma(model, list(points), test, bn=train, return_probs=True, shard=True)
    grid = evaluate_points(model, points, {"train": train, "test": test}, bn=train, shard=True)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return res.probs, res.num_samples, dict(grid.per_loader), unchanged


def test_sharded_bma_and_5x5_grid_equal_one_process(tmp_path):
    from valleys.evaluation.grid import evaluate_points
    from valleys.evaluation.predict import bma

    model, points, train, test = _eval_setup()
    one = bma(model, list(points), test, bn=train, return_probs=True)
    grid = evaluate_points(model, points, {"train": train, "test": test}, bn=train)
    for probs, n, per_loader, unchanged in run_ranks(_sharded_eval, 2, tmp_path):
        assert n == 25 and unchanged
        # float32 forward passes: the ranks run one thread, this process perhaps several (another summation order)
        assert torch.allclose(probs, one.probs, atol=1e-6, rtol=0)
        for name in ("train", "test"):
            for key in ("loss", "error"):
                assert per_loader[name][key] == pytest.approx(grid.per_loader[name][key], rel=1e-6, abs=1e-9)


def _too_few(rank, world):
    from valleys.evaluation.predict import bma

    model, points, train, test = _eval_setup()
    return _raised(lambda: bma(model, list(points[:1]), test, bn=train, shard=True))


def test_sharded_evaluation_with_fewer_points_than_ranks_is_refused_on_every_rank(tmp_path):
    assert all("needs at least 2 weight vectors, got 1" in m for m in run_ranks(_too_few, 2, tmp_path))


# ---------------------------------------------------------------------- sharded SWAG
def _trajectory():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))  # P = 58: slices of 29 and 29
    from valleys.core.weights import WeightSpace

    w0 = WeightSpace(model).read(model)
    return model, [w0 + 0.05 * t + 0.1 * torch.randn(w0.shape, generator=g) for t in range(9)]


def _sharded_swag(rank, world, folder):
    from valleys.methods.swag_sharded import ShardedSWAG

    model, ws = _trajectory()
    swag = ShardedSWAG(model, rank=4)
    for w in ws:
        swag.collect(w)
    sample = swag.sample(generator=torch.Generator().manual_seed(7))
    swag.save(f"{folder}/posterior.json")
    again = ShardedSWAG(model, rank=4)
    again.load(f"{folder}/posterior.json")
    same = torch.equal(again.deviations_slice, swag.deviations_slice) and again.n == swag.n
    return (swag.lo, swag.hi, swag.mean_slice, swag.variance_slice, swag.deviations_slice, sample, same, swag.memory())


def test_sharded_swag_equals_swag_slice_by_slice_and_samples_alike(tmp_path):
    from valleys.methods.swag import SWAG

    model, ws = _trajectory()
    full = SWAG(model, rank=4)
    for w in ws:
        full.collect(w)
    want = full.sample(1, generator=torch.Generator().manual_seed(7))[0]
    # brute-force oracle in float64: moments of the stacked iterates, deviations w_t - mean(w_1..w_t) in ring
    # slot t mod K, and the sample m + sqrt(1/2) (sqrt(var) z1 + D^T z2 / sqrt(K - 1)) with the same draws
    stack = torch.stack(ws).double()
    mean64, var64 = stack.mean(0), stack.var(0, unbiased=False)
    dev64 = torch.zeros(4, stack.shape[1], dtype=torch.float64)
    for t in range(len(ws)):
        dev64[t % 4] = stack[t] - stack[: t + 1].mean(0)
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(1, stack.shape[1], generator=g).double(), torch.randn(1, 4, generator=g).double()
    by_hand = mean64 + 0.5**0.5 * (var64.sqrt() * z1[0] + (z2 @ dev64)[0] / 3**0.5)
    assert torch.allclose(want.double(), by_hand, atol=1e-5)
    shards = run_ranks(_sharded_swag, 2, tmp_path, str(tmp_path))
    assert [s[:2] for s in shards] == [(0, 29), (29, 58)]
    for lo, hi, mean, var, dev, sample, same, memory in shards:
        assert torch.allclose(mean, full.mean[lo:hi], atol=1e-6) and torch.allclose(
            var, full.variance[lo:hi], atol=1e-6
        )
        assert torch.allclose(dev, full.deviations[:, lo:hi], atol=1e-6)
        assert torch.allclose(mean.double(), mean64[lo:hi], atol=1e-6)
        assert torch.allclose(var.double(), var64[lo:hi], atol=1e-6) and torch.allclose(
            dev.double(), dev64[:, lo:hi], atol=1e-6
        )
        assert torch.allclose(sample, want, atol=1e-6) and same
        assert memory == (4 + 2) * 29  # (K + 2) P / R
    from valleys.core.distributed import DistributedSetupError
    from valleys.methods.swag_sharded import ShardedSWAG

    with pytest.raises(DistributedSetupError, match="2 shards; this run has 1 processes"):
        ShardedSWAG(model, rank=4).load(tmp_path / "posterior.json")


def _missing_shard(rank, world, folder):
    from valleys.methods.swag_sharded import ShardedSWAG

    model, _ = _trajectory()
    return _raised(lambda: ShardedSWAG(model, rank=4).load(f"{folder}/posterior.json"))


def test_a_missing_shard_is_named(tmp_path):
    run_ranks(_sharded_swag, 2, tmp_path, str(tmp_path))
    (tmp_path / "posterior.rank1-of-2.safetensors").unlink()
    msgs = run_ranks(_missing_shard, 2, tmp_path, str(tmp_path))
    assert all("the shard of rank 1 (posterior.rank1-of-2.safetensors) is missing" in m for m in msgs)


def _train64(rank, world):
    from torch.utils.data import TensorDataset

    from valleys.training.trainer import Trainer
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    Trainer(model, opt, make_loader(TensorDataset(x, y), 64, shuffle=True, seed=1), 3, seed=1).fit(progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_two_processes_equal_one_to_float64_rounding(tmp_path):
    """In float64 the only difference is the order of the sums: 1e-16, not the float32 rounding that SGD at a
    high learning rate amplifies from step to step (on MNIST-1D's MLP, 1.2e-3 after one epoch at LR 0.1)."""
    one = _train64(0, 1)
    two = run_ranks(_train64, 2, tmp_path)
    assert float((two[0] - one).abs().max()) < 1e-12 and torch.equal(two[0], two[1])


# ---------------------------------------------------------------------- curve training under DDP
def _curve(rank, world, folder):
    import json
    from pathlib import Path

    from torch.utils.data import TensorDataset

    from valleys.app.connect import ConnectConfig, train_curve
    from valleys.core.weights import WeightSpace
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    space = WeightSpace(model)
    w_a = space.read(model)
    w_b = w_a + 0.5 * torch.randn(w_a.shape, generator=g)
    out = Path(folder) / f"world{world}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = ConnectConfig("-", "-", epochs=3, lr=0.05, wd=5e-3, seed=4, checkpoint_every=10)
    curve = train_curve(
        model, space, w_a, w_b, make_loader(TensorDataset(x, y), 16, shuffle=True, seed=4), cfg, out=out
    )
    log = (
        [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        if rank == 0
        else None
    )
    return curve.inner_points().detach().clone(), log


def test_curve_training_under_ddp_follows_one_process(tmp_path):
    """The L2 term (added after DDP's all-reduce) and the per-step t (same on every rank) as in one process."""
    inner, log = _curve(0, 1, tmp_path)
    (r0, log0), (r1, _) = run_ranks(_curve, 2, tmp_path, str(tmp_path))
    assert torch.equal(r0, r1)
    assert float((r0 - inner).abs().max()) < 1e-5, float((r0 - inner).abs().max())
    assert log0 == pytest.approx(log, rel=1e-5)


# ---------------------------------------------------------------------- the command line under torchrun
def _torchrun(args, tmp_path, n=2):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(n),
        "-m",
        "valleys",
        *map(str, args),
    ]  # --standalone: a free rendezvous port of its own
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)


@pytest.mark.slow
def test_valleys_train_and_connect_under_torchrun(tmp_path, capsys):
    import json

    from valleys.app.cli import main

    common = ["--model", "mlp", "--epochs", "2", "--no-progress", "--train-subset", "1000", "--test-subset", "200"]
    r = _torchrun(["train", "--method", "swa", "--swa-start", "1", *common, "--out", tmp_path / "two"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert main(["train", "--method", "swa", "--swa-start", "1", *common, "--out", str(tmp_path / "one")]) == 0
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-5)
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["timing"]["world_size"] == 2 and r.stdout.count("wrote ") == 1  # rank 0 alone reports
    # a resume under another number of processes, and a command that does not run data-parallel
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "two"), "--resume", "--no-progress"]) == 2
    assert "written by a run on 2 processes, this run has 1" in capsys.readouterr().err
    r = _torchrun(["demo", "--quick", "--out", tmp_path / "demo"], tmp_path)
    assert (
        r.returncode != 0
        and "only 'valleys train', 'valleys connect' and 'valleys semisup' run data-parallel" in r.stderr
    )
    assert main(["train", "--method", "sgd", "--seed", "1", *common, "--out", str(tmp_path / "b")]) == 0
    r = _torchrun(
        [
            "connect",
            tmp_path / "one",
            tmp_path / "b",
            "--epochs",
            "1",
            "--points",
            "3",
            "--no-progress",
            "--out",
            tmp_path / "curve",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "curve" / "curve.safetensors").is_file() and r.stdout.count("wrote ") == 1


def _mixed(rank, world):
    from valleys.core.distributed import DistributedSetupError
    from valleys.training.trainer import Trainer

    model = nn.Linear(3 + rank, 2)  # rank 1 builds another model: the ranks disagree
    loader = [(torch.zeros(2, 3 + rank), torch.zeros(2, dtype=torch.long))]
    try:
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, 1)
    except DistributedSetupError as e:  # this error and no other
        return str(e)
    return "accepted"


def test_ranks_with_different_models_or_devices_are_refused_naming_the_rank(tmp_path):
    msgs = run_ranks(_mixed, 2, tmp_path)
    assert all(
        m.startswith("rank 1 has (model on CUDA, parameter count) [0.0, 10.0], rank 0 has [0.0, 8.0]") for m in msgs
    ), msgs


def _eval_small_batches(rank, world):
    from torch.utils.data import TensorDataset

    from valleys.core.distributed import shard_loader
    from valleys.evaluation.predict import evaluate
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 4, generator=g), torch.arange(9) % 3
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    loader = shard_loader(make_loader(TensorDataset(x, y), 4), "evaluation")  # last batch: 1 example, rank 1 none
    return evaluate(model, loader, all_reduce=True).nll


def test_evaluation_with_a_rank_left_without_examples_still_reduces(tmp_path):
    from torch.utils.data import TensorDataset

    from valleys.evaluation.predict import evaluate
    from valleys.zoo.data import make_loader

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 4, generator=g), torch.arange(9) % 3
    torch.manual_seed(0)
    one = evaluate(nn.Linear(4, 3), make_loader(TensorDataset(x, y), 4)).nll
    assert run_ranks(_eval_small_batches, 2, tmp_path) == pytest.approx([one, one], rel=1e-12)


@pytest.mark.slow
def test_valleys_semisup_under_torchrun_splits_both_parts_of_every_batch(tmp_path):
    import json

    from valleys.app.cli import main

    common = [
        "semisup",
        "--model",
        "mlp",
        "--labels-per-class",
        "5",
        "--epochs",
        "3",
        "--cycle",
        "1",
        "--train-subset",
        "600",
        "--test-subset",
        "200",
        "--batch-size",
        "64",
        "--labelled-batch-size",
        "16",
        "--fast-swa-every",
        "1",
        "--no-augment",
        "--consistency",
        "none",
        "pi",
        "--no-progress",
        "--jobs",
        "1",
    ]
    r = _torchrun([*common, "--out", tmp_path / "two"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    for c in ("none", "pi"):
        one = [json.loads(x) for x in (tmp_path / "one" / c / "seed-0" / "metrics.jsonl").read_text().splitlines()]
        two = [json.loads(x) for x in (tmp_path / "two" / c / "seed-0" / "metrics.jsonl").read_text().splitlines()]
        # no augmentation and no Dropout: the same global batches, so the same first-epoch losses
        assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-5), c
    assert (tmp_path / "two" / "figures" / "travel.png").is_file() and r.stdout.count("wrote ") == 1
    r = _torchrun([*common[:-2], "--labelled-batch-size", "15", "--out", tmp_path / "odd"], tmp_path)
    assert r.returncode != 0 and "must both be multiples of 2" in r.stderr and not (tmp_path / "odd").exists()


def test_mixed_batches_laid_out_for_two_ranks_give_each_an_equal_share():
    from valleys.core.distributed import RankSliceBatchSampler
    from valleys.training.semisup_data import MixedBatchSampler

    lab, unl = list(range(10)), list(range(10, 60))
    sampler = MixedBatchSampler(lab, unl, 16, 4, generator=torch.Generator().manual_seed(0), ranks=2)
    for r in range(2):
        for b in RankSliceBatchSampler(sampler, r, 2):
            assert sum(i < 10 for i in b) == 2 and len(b) == 8
    with pytest.raises(ValueError, match="multiples of 2"):
        MixedBatchSampler(lab, unl, 16, 3, ranks=2)


def test_global_batch_sizes_are_derived_not_remembered():
    """The loss share of global batch i comes from the batch sampler's sizes, so DataLoader workers drawing
    batches ahead cannot give a step the share of another batch; oracle: the sizes the sampler yields."""
    from torch.utils.data import BatchSampler, SequentialSampler

    from valleys.core.distributed import RankSliceBatchSampler

    for n, b, drop in ((10, 4, False), (10, 4, True), (12, 4, False), (11, 4, False)):  # (training: no slice < 1)
        inner = BatchSampler(SequentialSampler(range(n)), b, drop)
        sizes = [len(batch) for batch in inner]
        ranks = [RankSliceBatchSampler(inner, r, 2) for r in range(2)]
        assert [ranks[0].global_size(i) for i in range(len(sizes))] == sizes
        for i, size in enumerate(sizes):  # the shares n_r R / N of the two ranks average to 1
            assert sum(s.share(i) for s in ranks) / 2 == pytest.approx(1.0)
            assert ranks[0].share(i) == pytest.approx(len(list(ranks[0])[i]) * 2 / size)


@pytest.mark.slow
def test_a_refusal_under_torchrun_is_printed_once(tmp_path):
    """Bad input is refused alike on every rank; only the first rank says so (argparse's errors and ours)."""
    for args in (["train", "--epochs", "0"], ["train", "--method", "swa", "--swa-start", "500", "--epochs", "3"]):
        res = _torchrun([*args, "--out", tmp_path / "r"], tmp_path)
        assert res.returncode != 0
        assert res.stderr.count("valleys train: error:") == 1, res.stderr[-2000:]
        assert "(rank 1)" not in res.stderr and not (tmp_path / "r").exists()
