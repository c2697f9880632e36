"""SWA and SWAG over FSDP2 shards (``fully_shard``) in the user's own loop: two gloo processes against one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dist_harness import run_ranks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

EPOCHS, START, K = 4, 1, 2


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def _batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def _train(model, batches, averager, collect):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(EPOCHS):
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if epoch + 1 > START:
            collect(model)


def _fsdp_rank(rank, world, swag):
    from torch.distributed.fsdp import fully_shard

    from valleys.methods.fsdp import ShardAverager

    model = _model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    avg = ShardAverager(model, rank=K if swag else None)
    half = [(x[rank::world], y[rank::world]) for x, y in _batches()]  # this rank's half of every global batch
    _train(model, half, avg, avg.collect)
    out = {
        "n": avg.n,
        "local": avg.averager.space.size,
        "memory": avg.memory(),
        "mean": avg.full(model, avg.averager.mean),
    }
    if swag:
        out["deviations"] = torch.stack([avg.full(model, row) for row in avg.averager.deviations])
        out["variance"] = avg.full(model, avg.averager.variance)
    avg.write_average(model)
    out["written"] = avg.full(model, avg.read(model))
    return out


@pytest.mark.parametrize("swag", [False, True], ids=["swa", "swag"])
def test_fsdp2_shards_average_like_one_process(tmp_path, swag):
    from valleys.core.weights import WeightSpace
    from valleys.methods.averaging import SWA
    from valleys.methods.swag import SWAG

    r0, r1 = run_ranks(_fsdp_rank, 2, tmp_path, swag)
    one = _model()
    ref = SWAG(one, rank=K) if swag else SWA(one)
    _train(one, _batches(), ref, ref.collect)
    size = WeightSpace(one).size
    assert r0["n"] == r1["n"] == ref.n == EPOCHS - START
    assert r0["local"] + r1["local"] == size and 0 < r0["local"] < size  # each rank holds its shards only
    assert r0["memory"] == (K + 2 if swag else 2) * r0["local"]
    for r in (r0, r1):
        assert torch.allclose(r["mean"], ref.mean, atol=1e-6)
        assert torch.allclose(r["written"], ref.mean, atol=1e-6)  # the model's full weights are the average
        if swag:
            assert torch.allclose(r["deviations"], ref.deviations, atol=1e-6)
            assert torch.allclose(r["variance"], ref.variance, atol=1e-6)
