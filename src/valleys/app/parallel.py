"""Independent jobs (training runs, curves, subspace runs) in worker processes, one torch thread each.

On a CPU, two single-threaded processes train two small networks in about the time one process with two
threads trains one (measured on two cores with the demo's 1-D CNN: 7.7 s for two 20-epoch runs side by side
against 6.8 s for one run with two threads), so the demo spreads its independent runs over ``jobs`` workers.
A worker sets ``torch.set_num_threads(1)``, so its results do not depend on how many cores the machine has;
with ``jobs=1`` everything runs in this process, with its own thread settings. Workers are started with
``spawn`` (forking a process that has started torch's thread pool is unsafe).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["call", "default_jobs", "run_jobs"]


def default_jobs(device: str = "cpu") -> int:
    """The CPU cores this process may use (1 for a CUDA device: one process owns the GPU)."""
    if not str(device).startswith("cpu"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from ..core import stopping

    torch.set_num_threads(1)
    if stopping.installed_in_parent():  # a worker stops at a step boundary after a checkpoint, as its parent
        stopping.install()


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)``: lets one :func:`run_jobs` mix functions (pass ``fn`` in each call's arguments)."""
    return fn(**kwargs)


def run_jobs(
    fn: Callable[..., Any], calls: Sequence[dict[str, Any]], *, jobs: int, progress: Any = None
) -> Iterator[Any]:
    """Yield ``fn(**kwargs)`` for each ``kwargs`` in ``calls``, in order, as they finish: in this process when
    ``jobs <= 1`` (or there is a single call), else over ``min(jobs, len(calls))`` worker processes with one
    torch thread each. ``fn`` and the arguments must be picklable (a module-level function). An exception in a
    job is raised here (the pending jobs are cancelled); ``progress`` (a bar) is advanced once per job."""
    if jobs <= 1 or len(calls) <= 1:
        for kw in calls:
            out = fn(**kw)
            if progress is not None:
                progress.update(1)
            yield out
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..core import stopping

    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=ctx, initializer=_one_thread)
    futures = [ex.submit(fn, **kw) for kw in calls]
    try:
        for f in futures:
            # a SIGTERM here goes on to the workers, which checkpoint and raise Stopped through f.result()
            with stopping.deferred(), stopping.forward_to(lambda: list(getattr(ex, "_processes", None) or {})):
                out = f.result()
            if progress is not None:
                progress.update(1)
            yield out
    finally:
        for f in futures:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)
