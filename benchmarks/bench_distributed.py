"""valleys on 1 and 2 processes (torch.distributed, gloo on CPU), side by side in one run.

Each setting runs in R freshly spawned processes (R = 1, then 2), one torch thread each, joined by a gloo
process group; a timing is the slowest rank's wall time between two barriers.

(a) A 21 x 21 grid (441 points) on the plane through three weight vectors of the MNIST-1D 1-D CNN
    (``CNN1D(40, 10)``, 1000 MNIST-1D-sized training signals), loss and error at every point:
    ``evaluate_points(..., shard=True)`` (rank r evaluates the points i with i mod R = r; the per-point sums
    are all-reduced). Check: the 2-process grid equals the 1-process grid.
(b) A 30-sample Bayesian model average of SWAG samples with a BatchNorm recompute per sample
    (``SmallCNN(1, 10, width=16)``, 2048 random 1x28x28 training images, 1000 test images):
    ``bma(..., shard=True)``. Check: the same averaged probabilities.
(c) SWAG memory per rank: :class:`valleys.methods.swag_sharded.ShardedSWAG` with K = 20 over
    ``MLP(784, 10, hidden=(1024, 1024))`` (1,863,690 parameters), after 25 collects: the buffers it holds on
    each rank (exact) and the growth of the process's resident memory, against ``(K + 2) P / R`` float32
    numbers (target: within 10%).

Speed-ups are 1-process time / 2-process time on this machine (its core count is printed; two processes on two
cores can at best halve the time). The script always exits 0.

Usage::

    python benchmarks/bench_distributed.py            # about 2 minutes on two cores
    python benchmarks/bench_distributed.py --quick    # a 7 x 7 grid and 8 samples
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import checks_json, run_measurement, verdict, write_results  # noqa: E402

MEMORY_TOLERANCE = 0.10


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed(fn):
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    out = fn()
    dist.barrier()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t), out


def _grid_case(n: int):
    from torch.utils.data import TensorDataset

    from valleys.core.weights import WeightSpace
    from valleys.evaluation.grid import evaluate_points
    from valleys.zoo.data import make_loader
    from valleys.zoo.models import CNN1D

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 40, generator=g)
    y = torch.randint(0, 10, (1000,), generator=g)
    torch.manual_seed(0)
    model = CNN1D(40, 10)
    space = WeightSpace(model)
    a = space.read(model)
    b, c = a + 0.3 * torch.randn(a.shape, generator=g), a + 0.3 * torch.randn(a.shape, generator=g)
    coords = torch.linspace(-0.5, 1.5, n)
    points = torch.stack([a + u * (b - a) + v * (c - a) for u in coords for v in coords])
    loader = make_loader(TensorDataset(x, y), 500)
    return lambda: evaluate_points(model, points, {"train": loader}, batched=False, shard=True)


def _bma_case(samples: int):
    from torch.utils.data import TensorDataset

    from valleys.evaluation.predict import bma
    from valleys.methods.swag import SWAG
    from valleys.zoo.data import make_loader
    from valleys.zoo.models import SmallCNN

    g = torch.Generator().manual_seed(1)
    x_tr, y_tr = torch.randn(2048, 1, 28, 28, generator=g), torch.randint(0, 10, (2048,), generator=g)
    x_te, y_te = torch.randn(1000, 1, 28, 28, generator=g), torch.randint(0, 10, (1000,), generator=g)
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=16)
    swag = SWAG(model, rank=5)
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        swag.collect(model)
    train, test = make_loader(TensorDataset(x_tr, y_tr), 256), make_loader(TensorDataset(x_te, y_te), 250)
    return lambda: bma(
        model,
        swag.samples(samples, generator=torch.Generator().manual_seed(2)),
        test,
        bn=train,
        return_probs=True,
        shard=True,
        batched=False,
    )


def _memory_case(k: int):
    from valleys.methods.swag_sharded import ShardedSWAG
    from valleys.zoo.models import MLP

    torch.manual_seed(0)
    model = MLP(784, 10, hidden=(1024, 1024))
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    scratch = torch.empty_like(w)  # the collect's transient slice-sized tensors, allocated once before measuring
    del scratch
    before = _rss()
    swag = ShardedSWAG(model, rank=k)
    for _ in range(k + 5):
        w.add_(0.01)
        swag.collect(w)
    held = 4 * (swag._mean.numel() + swag._m2.numel() + swag._dev.numel())
    return {"P": swag.space.size, "slice": swag.slice_size, "held_bytes": held, "rss_growth_bytes": _rss() - before}


def _worker(rank: int, world: int, port: int, out: str, grid_n: int, samples: int, k: int) -> None:
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res = {}
    mem = _memory_case(k)  # first: the resident memory grows by the posterior's buffers alone
    grid_fn = _grid_case(grid_n)
    _timed(lambda: None)
    res["grid_s"], grid = _timed(grid_fn)
    bma_fn = _bma_case(samples)
    res["bma_s"], b = _timed(bma_fn)
    res["memory"] = mem
    if rank == 0:
        res["grid"] = torch.tensor(grid.per_loader["train"]["loss"])
        res["probs"] = b.probs
    torch.save(res, Path(out) / f"r{world}-rank{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 7 x 7 grid and 8 samples")
    ap.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/)")
    args = ap.parse_args()
    import tempfile

    import torch.multiprocessing as mp

    grid_n, samples, k = (7, 8, 20) if args.quick else (21, 30, 20)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"torch {torch.__version__}, {platform.machine()}, {cores} CPU cores, gloo, one thread per process"
        f"{', quick' if args.quick else ''}"
    )
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            mp.start_processes(
                _worker, args=(world, _port(), tmp, grid_n, samples, k), nprocs=world, join=True, start_method="spawn"
            )
            runs[world] = [torch.load(Path(tmp) / f"r{world}-rank{r}.pt", weights_only=False) for r in range(world)]
    one, two = runs[1][0], runs[2][0]
    checks = []
    same_grid = torch.allclose(one["grid"], two["grid"], rtol=1e-9, atol=1e-12)
    same_bma = torch.allclose(one["probs"], two["probs"], rtol=0, atol=1e-10)
    print(
        f"\n(a) {grid_n} x {grid_n} grid, CNN1D, 1000 examples: 1 process {one['grid_s']:.2f} s, 2 processes "
        f"{two['grid_s']:.2f} s, speed-up {one['grid_s'] / two['grid_s']:.2f}x; same grid: {same_grid}"
    )
    print(
        f"(b) BMA of {samples} SWAG samples, BN recompute each, SmallCNN: 1 process {one['bma_s']:.2f} s, "
        f"2 processes {two['bma_s']:.2f} s, speed-up {one['bma_s'] / two['bma_s']:.2f}x; same probabilities: "
        f"{same_bma}"
    )
    checks += [
        (f"sharded grid equals one process's ({grid_n * grid_n} points)", same_grid),
        (f"sharded BMA equals one process's ({samples} samples)", same_bma),
    ]
    print(f"(c) ShardedSWAG, K = {k}, P = {one['memory']['P']:,}: formula (K + 2) P / R float32")
    memory = {}
    for world in (1, 2):
        for r, res in enumerate(runs[world]):
            m = res["memory"]
            want = 4 * (k + 2) * m["P"] / world
            held, rss = m["held_bytes"], m["rss_growth_bytes"]
            ok = abs(held - want) / want <= MEMORY_TOLERANCE and abs(rss - want) / want <= MEMORY_TOLERANCE
            print(
                f"    R = {world}, rank {r}: formula {want / 2**20:7.1f} MiB, buffers held {held / 2**20:7.1f} MiB, "
                f"resident memory grew {rss / 2**20:7.1f} MiB  {verdict(ok)}"
            )
            checks.append((f"R = {world} rank {r}: held and resident within 10% of (K + 2) P / R", ok))
            memory[f"R{world}_rank{r}"] = {"formula_bytes": want, "held_bytes": held, "rss_growth_bytes": rss}
    write_results(
        "bench_distributed",
        {
            "quick": args.quick,
            "cores": cores,
            "grid_points": grid_n * grid_n,
            "samples": samples,
            "grid_s": {"1": one["grid_s"], "2": two["grid_s"]},
            "bma_s": {"1": one["bma_s"], "2": two["bma_s"]},
            "speedup": {"grid": one["grid_s"] / two["grid_s"], "bma": one["bma_s"] / two["bma_s"]},
            "memory": memory,
            "checks": checks_json(checks),
        },
        args.json,
    )


if __name__ == "__main__":
    run_measurement(main)
