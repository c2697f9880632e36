"""SWAG with its moments and deviations split over the ranks of a ``torch.distributed`` group.

The posterior of Maddox et al. (2019, "A Simple Baseline for Bayesian Uncertainty in Deep Learning",
NeurIPS) is ``N(m, scale (diag(var) + D^T D / (k - 1)))`` over the flat weight vector of size P. Rank ``r`` of
R keeps only its slice ``[r P / R, (r + 1) P / R)`` of the running mean ``m``, of the Welford second moments
and of the K deviation rows ``D_i``, so its memory is ``(K + 2) P / R`` numbers instead of ``(K + 2) P``. The
replicas of a data-parallel model hold the same weights, so every rank collects its slice from its own copy
with no communication.

A sample ``w = m + sqrt(scale) (sqrt(var) z1 + D^T z2 / sqrt(k - 1))`` needs ``D^T z2`` with one ``z2`` in
R^k for all slices and ``z1`` in R^P: every rank draws both from the same generator seed, in the order
:meth:`valleys.methods.swag.SWAG.sample` draws them, and keeps its slice of ``z1``, so a sharded sample is
the unsharded sample of the same seed. :meth:`ShardedSWAG.sample_slice` gives the rank its slice (for
streaming); :meth:`ShardedSWAG.sample` all-gathers the full vector when a whole model must hold it.

Saving writes one file per rank (``<stem>.rank<r>-of-<R>.safetensors``) plus an index (``<stem>.json``,
written by rank 0) naming the shards and their slices; loading checks that every shard is there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_json
from ..core.distributed import DistributedSetupError, is_distributed, shard_bounds, world_size
from ..core.distributed import rank as rank_of  # the constructor's ``rank`` is SWAG's K
from ..core.weights import WeightSpace, WeightSpaceError
from ..errors import InputError
from .averaging import LOW_PRECISION, welford_
from .swag import CHUNK, check_chunk, check_count, check_sampling, draw, in_chunks

__all__ = ["ShardedSWAG"]


class ShardedSWAG:
    """This rank's slice of a SWAG posterior (see the module docstring); without a process group, the whole.

    Args:
        model: defines the weight space (every rank passes the same architecture).
        names: optional parameter subset.
        rank: K, the deviations kept.
        device, dtype: where this rank's buffers live.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        *,
        rank: int = 20,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise InputError(f"rank must be an integer >= 1, got {rank!r}")
        self.space = WeightSpace(model, names)
        self.rank = rank
        self.r, self.world = rank_of(), world_size()
        self.lo, self.hi = shard_bounds(self.space.size, self.r, self.world)
        ref = self.space.parameters(model)[0]
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype or (torch.float32 if self.space.dtype in LOW_PRECISION else self.space.dtype)
        m = self.hi - self.lo
        self.n = 0
        self._mean = torch.zeros(m, device=self.device, dtype=self.dtype)
        self._m2 = torch.zeros(m, device=self.device, dtype=self.dtype)
        self._dev = torch.zeros(rank, m, device=self.device, dtype=self.dtype)

    @property
    def slice_size(self) -> int:
        """The number of weights this rank holds: ``hi - lo``."""
        return self.hi - self.lo

    def memory(self) -> int:
        """Numbers held by this rank: ``(K + 2) (hi - lo)``."""
        return (self.rank + 2) * self.slice_size

    # ------------------------------------------------------------------ collection
    def _slice_of(self, source: nn.Module | Tensor) -> Tensor:
        if isinstance(source, Tensor):
            self.space.check_vector(source, what="collected weight vector", finite=False)
            w = source.detach()
        else:
            w = self.space.read(source)
        return w[self.lo : self.hi].to(self.device, self.dtype)

    def collect(self, source: nn.Module | Tensor) -> None:
        """Add this rank's slice of the current weights: Welford ``m += d / (n + 1)``, ``M2 += d^2 n / (n + 1)``
        and the deviation ``w - m_new = d n / (n + 1)`` into the next ring slot (``d = w - m_old``), all in
        place. A module is read as one flat vector first (P numbers for the moment); pass the flat vector to
        avoid that."""
        w = self._slice_of(source)
        if not bool(torch.isfinite(w.sum())):
            raise WeightSpaceError(
                f"collect #{self.n + 1}: the weights hold NaN or infinite entries on rank {self.r}; "
                "nothing was collected"
            )
        n = self.n
        row = self._dev[n % self.rank]
        torch.sub(w, self._mean, out=row)  # delta, computed in its ring slot: no temporary of the slice's size
        welford_([self._mean], [self._m2], [row], n)
        row.mul_(n / (n + 1))
        self.n = n + 1

    # ------------------------------------------------------------------ the Gaussian, sliced
    @property
    def k(self) -> int:
        return min(self.n, self.rank)

    @property
    def mean_slice(self) -> Tensor:
        self._check(0.0, True)
        return self._mean

    @property
    def variance_slice(self) -> Tensor:
        self._check(0.0, True)
        return self._m2 / self.n

    @property
    def deviations_slice(self) -> Tensor:
        return self._dev[: self.k]

    def _check(self, scale: float, diagonal: bool) -> None:
        check_sampling("ShardedSWAG", self.n, self.k, scale, diagonal)

    def sample_slice(
        self,
        n: int | None = None,
        *,
        scale: float = 0.5,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """This rank's slice of one sample (``n=None``) or of a block of ``n`` samples, (n, slice); the generator
        must be seeded alike on every rank (it draws the block's full ``z1`` and keeps the slice, then ``z2``:
        the draws of :meth:`valleys.methods.swag.SWAG.sample`)."""
        self._check(scale, diagonal)
        block = draw(
            self._mean,
            self.variance_slice,
            self.deviations_slice,
            1 if n is None else n,
            size=self.space.size,
            lo=self.lo,
            scale=scale,
            diagonal=diagonal,
            generator=generator,
        )
        return block[0] if n is None else block

    def gather(self, part: Tensor) -> Tensor:
        """The full P-vector from every rank's slice (one all-gather; every rank must call it)."""
        if self.world == 1:
            return part
        width = max(b - a for a, b in (shard_bounds(self.space.size, r, self.world) for r in range(self.world)))
        padded = torch.zeros(width, device=part.device, dtype=part.dtype)
        padded[: part.numel()] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat(
            [
                parts[r][: b - a]
                for r, (a, b) in enumerate(shard_bounds(self.space.size, r, self.world) for r in range(self.world))
            ]
        )

    def sample(self, *, scale: float = 0.5, diagonal: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """One full sample on every rank (:meth:`sample_slice`, then :meth:`gather`)."""
        return self.gather(self.sample_slice(scale=scale, diagonal=diagonal, generator=generator))

    def samples(
        self,
        n: int,
        *,
        scale: float = 0.5,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
        chunk: int = CHUNK,
    ) -> Iterator[Tensor]:
        """Yield ``n`` full samples one at a time, their slices drawn ``chunk`` at a time (``chunk`` slices per
        rank at once, never (K, P)): the draws of :meth:`valleys.methods.swag.SWAG.samples` with the same
        generator and ``chunk``. Bad arguments raise at the call."""
        check_count(n)
        check_chunk(chunk)
        self._check(scale, diagonal)
        rows = in_chunks(n, chunk, lambda c: self.sample_slice(c, scale=scale, diagonal=diagonal, generator=generator))
        return (self.gather(row) for row in rows)

    # ------------------------------------------------------------------ files
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "ShardedSWAG",
            "n": self.n,
            "size": self.space.size,
            "rank": self.rank,
            "lo": self.lo,
            "hi": self.hi,
            "world": self.world,
            "shard": self.r,
            "mean": self._mean,
            "m2": self._m2,
            "deviations": self._dev,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want = {"size": self.space.size, "rank": self.rank, "lo": self.lo, "hi": self.hi, "world": self.world}
        got = {k: int(state.get(k, -1)) for k in want}
        if got != want:
            raise CheckpointError(
                f"rank {self.r}: the shard holds {got}, this posterior expects {want} (another "
                "world size, model or rank K?)"
            )
        self.n = int(state["n"])
        self._mean.copy_(state["mean"])
        self._m2.copy_(state["m2"])
        self._dev.copy_(state["deviations"])

    @staticmethod
    def shard_path(path: str | os.PathLike, r: int, world: int) -> Path:
        p = Path(path)
        return p.with_name(f"{p.stem}.rank{r}-of-{world}.safetensors")

    def save(self, path: str | os.PathLike) -> Path:
        """Write this rank's shard (atomically) and, on rank 0, the index ``path`` (JSON); every rank calls it."""
        p = Path(path)
        save_checkpoint(
            self.shard_path(p, self.r, self.world),
            {k: v for k, v in self.state_dict().items()},
            {"kind": "swag-shard", "world": self.world, "shard": self.r},
        )
        if self.r == 0:
            write_json(
                p,
                {
                    "kind": "sharded-swag",
                    "world": self.world,
                    "size": self.space.size,
                    "rank": self.rank,
                    "shards": [
                        {"rank": r, "lo": a, "hi": b, "file": self.shard_path(p, r, self.world).name}
                        for r, (a, b) in enumerate(
                            shard_bounds(self.space.size, r, self.world) for r in range(self.world)
                        )
                    ],
                },
            )
        if is_distributed():
            torch.distributed.barrier()
        return p

    def load(self, path: str | os.PathLike) -> None:
        """Read this rank's shard named by the index ``path``; a missing shard, or an index written by another
        world size, is refused naming the rank."""
        p = Path(path)
        try:
            index = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{p}: not a sharded SWAG index ({e})") from None
        if index.get("kind") != "sharded-swag":
            raise CheckpointError(f"{p} is not a sharded SWAG index (kind {index.get('kind')!r})")
        if int(index["world"]) != self.world:
            raise DistributedSetupError(
                f"{p} holds {index['world']} shards; this run has {self.world} processes: "
                f"load it with torchrun --nproc-per-node {index['world']}"
            )
        missing = [s["rank"] for s in index["shards"] if not (p.parent / s["file"]).is_file()]
        if missing:
            raise CheckpointError(
                f"{p}: the shard of rank {missing[0]} ({index['shards'][missing[0]]['file']}) is "
                f"missing{' (and of ranks ' + str(missing[1:]) + ')' if missing[1:] else ''}"
            )
        state, _ = load_checkpoint(p.parent / index["shards"][self.r]["file"])
        self.load_state_dict(state)
