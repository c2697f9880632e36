"""Run a function on several CPU processes joined by a gloo process group, from pytest.

``run_ranks(fn, world, tmp_path, *args)`` spawns ``world`` processes; each initialises the group, calls
``fn(rank, world, *args)`` and saves what it returns (tensors, lists, dicts of them) with ``torch.save``; the
results come back in rank order. An exception in a rank fails the test with that rank's traceback. A timeout
(default 120 s) kills the processes: a hang (mismatched collectives) fails instead of blocking the suite; a rank
that fails stops the others at once. Ranks rendezvous through a file store in the test's folder (no ports).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, store: str, out: str, fn: Callable, args: tuple) -> None:
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    # a file store in the test's own folder: no port to collide with another test's lingering sockets
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result: Any = {"ok": fn(rank, world, *args)}
    except BaseException:  # noqa: BLE001 - reported to the test
        result = {"error": traceback.format_exc()}
    tmp = Path(out) / f".rank{rank}.pt"
    torch.save(result, tmp)
    os.replace(tmp, Path(out) / f"rank{rank}.pt")  # present means complete
    # leave without tearing down gloo's threads (their destructors have aborted a process at exit now and then)
    os._exit(0)


def run_ranks(fn: Callable, world: int, tmp_path: Path, *args: Any, timeout: float = 120.0) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each in its own process (see module doc)."""
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="ranks-", dir=tmp_path))
    ctx = mp.start_processes(
        _worker, args=(world, str(out / "store"), str(out), fn, args), nprocs=world, join=False, start_method="spawn"
    )
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if ctx.join(timeout=1.0):
                break
        except mp.ProcessExitedException:
            if all((out / f"rank{r}.pt").is_file() for r in range(world)):
                break  # every rank finished and saved its result; one died on the way out
            raise
        for r in range(world):  # a rank that failed leaves the others waiting in a collective: stop them now
            f = out / f"rank{r}.pt"
            if f.is_file() and "error" in (res := torch.load(f, weights_only=False)):
                for p in ctx.processes:
                    p.kill()
                raise AssertionError(f"rank {r} failed:\n{res['error']}")
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
