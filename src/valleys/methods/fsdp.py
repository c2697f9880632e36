"""SWA and SWAG over the parameter shards of a model trained with PyTorch's FSDP2 (``fully_shard``), in the
user's own loop: each rank keeps the moments of its own shards only.

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor`` whose rank-local part
(``p.to_local()``) is a chunk of its rows. SWA's mean and second moments and SWAG's deviations are
coordinate-wise, so each rank can keep them for the coordinates it holds: with ``R`` ranks, a SWAG of rank
``K`` takes (K + 2) x P / R numbers per rank, as :class:`valleys.methods.swag_sharded.ShardedSWAG` does for
data-parallel training. :class:`ShardAverager` keeps a :class:`valleys.methods.averaging.SWA` (or
:class:`valleys.methods.swag.SWAG`) over the flat vector of the local shards, writes the average back into the
shards (every rank its own, so the model's full state dict is the average), and gathers the full vectors on
demand (:meth:`ShardAverager.full`). Parameters that are not sharded (plain tensors) are averaged whole on
every rank. BatchNorm statistics of the average are recomputed as usual with
:func:`valleys.core.batchnorm.recompute_bn`, which all-reduces over the ranks.

Example (inside each process of a ``torchrun`` job)::

    from torch.distributed.fsdp import fully_shard
    from valleys.methods.fsdp import ShardAverager

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    swag = ShardAverager(model, rank=20)             # SWAG; rank=None: SWA
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)             # your loop
        if epoch >= swa_start:
            swag.collect(model)
    swag.write_average(model)                         # every rank writes its shards of the mean
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from .averaging import SWA
from .swag import SWAG

__all__ = ["ShardAverager", "local_shard"]


def local_shard(p: Tensor) -> Tensor:
    """The rank-local part of a parameter: ``p.to_local()`` for a ``DTensor``, the tensor itself otherwise."""
    to_local = getattr(p, "to_local", None)
    return to_local() if callable(to_local) else p


def _is_sharded(p: Tensor) -> bool:
    return callable(getattr(p, "to_local", None))


class _Shadow(nn.Module):
    """A module whose parameters have the shapes of another module's local shards (the averager's space)."""

    def __init__(self, shapes: Sequence[tuple[str, torch.Size]], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.slots = nn.ParameterList(
            [nn.Parameter(torch.zeros(shape, dtype=dtype, device=device), requires_grad=True) for _, shape in shapes]
        )


class ShardAverager:
    """SWA (``rank=None``) or SWAG of rank ``rank`` over this rank's FSDP2 shards of ``model``'s trainable
    parameters (``names``: a subset); see the module docstring.

    Memory per rank: (2 + K) x the local shard size (SWA: 2, the mean and second moments).
    """

    def __init__(self, model: nn.Module, *, rank: int | None = None, names: Sequence[str] | None = None) -> None:
        chosen = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
        if not chosen:
            raise InputError("ShardAverager: the model has no trainable parameter to average (check names=)")
        if names is not None:
            missing = sorted(set(names) - {n for n, _ in chosen})
            if missing:
                raise InputError(f"ShardAverager: names not among the model's trainable parameters: {missing[:3]}")
        self.names = [n for n, _ in chosen]
        locals_ = [local_shard(p) for _, p in chosen]
        self.shapes = [(n, t.shape) for n, t in zip(self.names, locals_, strict=True)]
        self.sharded = [_is_sharded(p) for _, p in chosen]
        ref = locals_[0]
        self._shadow = _Shadow(self.shapes, ref.dtype, ref.device)
        self.averager: SWA | SWAG = SWA(self._shadow) if rank is None else SWAG(self._shadow, rank=rank)

    # ------------------------------------------------------------------ the local flat vector
    def _params(self, model: nn.Module) -> list[Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise InputError(f"ShardAverager: the model lacks {missing[:3]}; collect from the model it was built on")
        out = []
        for (n, shape), p in zip(self.shapes, (params[n] for n in self.names), strict=True):
            t = local_shard(p)
            if t.shape != shape:
                raise InputError(f"ShardAverager: {n}'s local shard is {list(t.shape)}, was {list(shape)}")
            out.append(t)
        return out

    def read(self, model: nn.Module) -> Tensor:
        """This rank's shards of ``model``'s parameters as one flat vector."""
        return torch.cat([t.detach().reshape(-1) for t in self._params(model)])

    def write(self, model: nn.Module, vector: Tensor) -> None:
        """Write a local flat vector (see :meth:`read`) into ``model``'s shards, in place."""
        with torch.no_grad():
            offset = 0
            for t in self._params(model):
                k = t.numel()
                t.copy_(vector[offset : offset + k].view_as(t).to(t.dtype))
                offset += k

    # ------------------------------------------------------------------ averaging
    @property
    def n(self) -> int:
        """Weights collected so far."""
        return self.averager.n

    def collect(self, model: nn.Module) -> None:
        """Add this rank's shards of the current weights (no communication)."""
        self.averager.collect(self.read(model))

    def write_average(self, model: nn.Module) -> None:
        """Write the mean into the model's shards on every rank (the full state dict is then the average)."""
        self.write(model, self.averager.mean)

    def memory(self) -> int:
        """Numbers this rank holds: (2 + K) x its shard size (2 for SWA)."""
        return sum(int(v.numel()) for v in self.averager.state_dict().values() if isinstance(v, Tensor))

    def full(self, model: nn.Module, local: Tensor) -> Tensor:
        """The full flat vector (every parameter whole, in ``model``'s order) of a local vector such as
        ``self.averager.mean``: each sharded parameter's rows gathered from all ranks (a collective: every rank
        calls it)."""
        from torch.distributed.tensor import DTensor

        params = dict(model.named_parameters())
        pieces, offset = [], 0
        for (n, shape), sharded in zip(self.shapes, self.sharded, strict=True):
            k = int(torch.Size(shape).numel())
            chunk = local[offset : offset + k].reshape(shape)
            offset += k
            if sharded:
                p: Any = params[n]
                whole = DTensor.from_local(
                    chunk.to(p.to_local().dtype), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                )
                pieces.append(whole.full_tensor().reshape(-1))
            else:
                pieces.append(chunk.reshape(-1))
        return torch.cat(pieces)
