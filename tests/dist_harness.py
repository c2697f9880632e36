"""Run a function on several CPU processes joined by a gloo process group, from pytest.

``run_ranks(fn, world, tmp_path, *args)`` spawns ``world`` processes; each initialises the group, calls
``fn(rank, world, *args)`` and saves what it returns (tensors, lists, dicts of them) with ``torch.save``; the
results come back in rank order. An exception in a rank fails the test with that rank's traceback. A timeout
(default 120 s) kills the processes: a hang (mismatched collectives) fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, fn: Callable, args: tuple) -> None:
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result: Any = {"ok": fn(rank, world, *args)}
    except BaseException:  # noqa: BLE001 - reported to the test
        result = {"error": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


def run_ranks(fn: Callable, world: int, tmp_path: Path, *args: Any, timeout: float = 120.0) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each in its own process (see module doc)."""
    out = Path(tmp_path) / f"ranks-{_free_port()}"
    out.mkdir(parents=True)
    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(out), fn, args), nprocs=world, join=False,
                             start_method="spawn")
    import time

    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"the {world} ranks did not finish within {timeout:.0f} s (a hang?)")
    results = []
    for r in range(world):
        res = torch.load(out / f"rank{r}.pt", weights_only=False)
        if "error" in res:
            raise AssertionError(f"rank {r} failed:\n{res['error']}")
        results.append(res["ok"])
    return results
