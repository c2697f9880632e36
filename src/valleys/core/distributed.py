"""``torch.distributed`` helpers: rank and world size without a process group, process-group set-up from the
environment ``torchrun`` sets, sums across ranks, and the rank's share of every global batch.

Everything here is a no-op (rank 0 of a world of 1) when no process group is initialised, so library code
calls these unconditionally. Launch with ``torchrun --nproc-per-node N -m valleys ...`` (gloo on CPU, NCCL on
GPU); :func:`init_from_env` starts the group when ``WORLD_SIZE > 1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import DistributedSetupError, InputError
from .batches import sized_length

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "init_from_env",
    "all_reduce_sum",
    "shard_bounds",
    "RankSliceBatchSampler",
    "shard_loader",
    "barrier",
    "check_same_everywhere",
    "DistributedSetupError",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the process that writes files and shows progress."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Start the process group from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE > 1`` and none is running; gloo on CPU, NCCL when CUDA
    is available (``backend`` overrides). Returns whether a group is running afterwards."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    torch.distributed.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over ranks, in place (a no-op without a process group); returns ``t``."""
    if is_distributed():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def shard_bounds(n: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous share ``[r n // R, (r + 1) n // R)`` of ``n`` items (sizes differ by at most 1)."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    return r * n // world, (r + 1) * n // world


class RankSliceBatchSampler(torch.utils.data.Sampler):
    """Rank ``r``'s contiguous slice of every global batch of ``batch_sampler``.

    Every rank draws the same global batches (the same sampler with the same seed), so the union of the ranks'
    slices is exactly the batch one process would train on, in the same order; :meth:`global_size` gives the
    size of global batch ``i``, which :class:`valleys.training.trainer.Trainer` uses to weight the ranks'
    losses so that DDP's gradient average equals the one-process gradient.
    """

    def __init__(self, batch_sampler: Any, r: int | None = None, world: int | None = None) -> None:
        self.batch_sampler = batch_sampler
        self.r = rank() if r is None else r
        self.world = world_size() if world is None else world
        self.last_global_size = 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def global_size(self, i: int) -> int:
        """The size of global batch ``i`` of an epoch: derived from a ``torch.utils.data.BatchSampler``'s batch
        size, ``drop_last`` and dataset size (so it is right while ``DataLoader`` workers draw batches ahead);
        for another batch sampler, the size of the last global batch drawn (exact without workers)."""
        bs = self.batch_sampler
        if isinstance(bs, torch.utils.data.BatchSampler):
            n = sized_length(bs.sampler, "sampler")
            return bs.batch_size if bs.drop_last or i < n // bs.batch_size else n % bs.batch_size
        return self.last_global_size

    def share(self, i: int) -> float:
        """``n_r R / N`` for global batch ``i``: this rank's slice size ``n_r`` of its ``N`` examples, times the
        world size ``R`` (0 for a batch this rank has no slice of)."""
        size = self.global_size(i)
        lo, hi = shard_bounds(size, self.r, self.world)
        return (hi - lo) * self.world / size if size else 1.0

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.batch_sampler:
            batch = list(indices)
            self.last_global_size = len(batch)
            lo, hi = shard_bounds(len(batch), self.r, self.world)
            if hi > lo:  # a batch smaller than the world leaves some ranks without a slice (evaluation only:
                yield batch[lo:hi]  # training loaders with such batches are refused by shard_loader)


def check_same_everywhere(value: Sequence[float] | float, what: str) -> None:
    """Raise :class:`DistributedSetupError` naming the first rank whose ``value`` differs from rank 0's (one
    all-gather); a no-op without a process group."""
    if not is_distributed():
        return
    mine = torch.tensor([float(v) for v in (value if isinstance(value, Sequence) else [value])], dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(gathered, mine)
    for r, g in enumerate(gathered):
        if not torch.equal(g, gathered[0]):
            raise DistributedSetupError(f"rank {r} has {what} {g.tolist()}, rank 0 has {gathered[0].tolist()}")


def shard_loader(loader: Any, what: str = "train") -> Any:
    """``loader`` with every global batch cut to this rank's slice (:class:`RankSliceBatchSampler`), for a
    ``DataLoader`` with a plain batch sampler; other loaders (and any loader without a process group) are
    returned as they are. The new loader shares the old one's generator, so reseeding it reseeds the order.

    A training loader whose batches (or last batch) hold fewer examples than there are ranks is refused: every
    rank must take part in every step (``what`` names the loader in the message)."""
    world = world_size()
    if (
        world == 1
        or not isinstance(loader, DataLoader)
        or loader.batch_sampler is None
        or isinstance(loader.batch_sampler, RankSliceBatchSampler)
        or isinstance(loader.sampler, DistributedSampler)
    ):
        return loader
    bs = loader.batch_sampler
    batch_size = getattr(bs, "batch_size", None)
    if batch_size is not None and what == "train":
        n = sized_length(loader.dataset)
        last = 0 if getattr(bs, "drop_last", False) else n % batch_size
        if any(0 < v < world for v in (batch_size, last)):
            raise InputError(
                f"the {what} loader's batches of {batch_size} (the last of {last}) cannot be split over {world} "
                f"processes: every rank needs at least one example of every batch; use a batch size >= {world} and "
                "a dataset size whose last batch is 0 or >= the number of processes (or drop_last=True)"
            )
    return DataLoader(
        loader.dataset,
        batch_sampler=RankSliceBatchSampler(bs),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        worker_init_fn=loader.worker_init_fn,
    )
