"""Points on an affine subspace, and folding the first affine layer of a grid's forward passes.

Planes, lines, rays, random landscapes and subspace posteriors evaluate the model at points
``w_i = o + sum_j t_ij d_j`` of a low-dimensional affine subspace (:class:`AffinePoints`). A ``Linear`` or
``Conv`` layer ``F(x; W, b) = W * x + b`` is linear in its parameters ``(W, b)``, so on such points the output of
the first layer that reads the input is

    F(x; w_i) = F(x; o) + sum_j t_ij F(x; d_j)                     (exact in real arithmetic)

with ``F(x; o)`` and ``F(x; d_j)`` the layer applied to the slices of the origin and of each direction. For a
grid of ``n`` points that is ``r + 1`` products per batch instead of ``n``: on a 784-100-100-10 MLP the first
layer holds 88% of the multiply-adds. :class:`FirstLayer` finds that layer by running the model once with
hooks (the first ``nn.Linear``/``nn.Conv1d/2d/3d`` called on a view of an input tensor, whose parameters all
lie in the weight space, without hooks or parametrizations) and, inside :meth:`FirstLayer.folded`, replaces
its ``forward`` with the combination; a call on any other input (or with other arguments) runs the layer's
own forward, so folding never changes what the model computes, only the rounding (to about 1e-7 relative in
float32). The engine (:func:`valleys.evaluation.engine.evaluate_many`) times folding against its other modes
on the first batch and uses it only where it pays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import Tensor, nn

from ..core.batches import iter_tensors
from ..core.weights import WeightSpace
from ..errors import InputError

__all__ = ["AffinePoints", "FirstLayer", "FOLDABLE"]

#: the layer types whose output is folded (exact types: a subclass may override ``forward``)
FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class AffinePoints(Sequence[Tensor]):
    """The points ``w_i = origin + coords[i] @ basis`` (``origin`` omitted: ``coords[i] @ basis``).

    Args:
        basis: (r, P) directions (or, without an origin, e.g. the control points of a curve).
        coords: (n, r) coordinates of the points.
        origin: (P,) or ``None``.
        dtype: the dtype of the vectors handed out (default: the origin's, else the basis's); each vector is
            computed in the wider of the basis's and origin's dtypes and then rounded (a plane's float64
            directions: as ``Plane.point`` does).

    A sequence of (P,) vectors: anything that takes a list of weight vectors takes it, and the engine
    folds the first affine layer of the model when that pays (see the module docstring).
    """

    def __init__(
        self, basis: Tensor, coords: Tensor, origin: Tensor | None = None, *, dtype: torch.dtype | None = None
    ):
        if not isinstance(basis, Tensor) or basis.dim() != 2 or basis.shape[0] < 1:
            raise InputError(f"basis must be an (r, P) tensor with r >= 1, got {getattr(basis, 'shape', basis)!r}")
        coords = torch.as_tensor(coords, device=basis.device)
        if coords.dim() != 2 or coords.shape[1] != basis.shape[0]:
            raise InputError(
                f"coords must be (n, {basis.shape[0]}) for a basis of {basis.shape[0]} rows, got {tuple(coords.shape)}"
            )
        if origin is not None and (origin.dim() != 1 or origin.numel() != basis.shape[1]):
            raise InputError(f"origin must be a vector of length {basis.shape[1]}, got {tuple(origin.shape)}")
        self.basis = basis.detach()
        self.origin = origin.detach().to(basis.device) if origin is not None else None
        self.dtype = dtype or (origin.dtype if origin is not None else basis.dtype)
        self.work_dtype = (
            torch.promote_types(basis.dtype, self.origin.dtype) if self.origin is not None else basis.dtype
        )
        self.coords = coords.to(self.work_dtype)

    @property
    def rank(self) -> int:
        """r, the number of directions."""
        return int(self.basis.shape[0])

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @overload
    def __getitem__(self, i: int) -> Tensor: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Tensor]: ...

    def __getitem__(self, i: int | slice) -> Tensor | Sequence[Tensor]:
        if isinstance(i, slice):
            return AffinePoints(self.basis, self.coords[i], self.origin, dtype=self.dtype)
        return self.rows([range(len(self))[i]])[0]

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(len(self)):
            yield self.rows([i])[0]

    def rows(self, idx: Sequence[int]) -> Tensor:
        """The points ``idx`` as a (c, P) tensor (computed in :attr:`work_dtype`, rounded to :attr:`dtype`)."""
        t, basis = self.coords[list(idx)], self.basis.to(self.work_dtype)
        w = t @ basis if self.origin is None else torch.addmm(self.origin.to(self.work_dtype), t, basis)
        return w.to(self.dtype)


def _storage(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (functional wrappers, meta)
        return -1


@dataclass
class FirstLayer:
    """The first affine layer of a model that reads its input, and where its parameters lie in the flat
    vector (see the module docstring). Build with :meth:`find`."""

    module: nn.Module
    name: str
    slots: tuple[tuple[int, int, tuple[int, ...]], ...]  # (offset, numel, shape) of weight [, bias]
    #: the layer is called once per forward pass (else a later call on another input runs its own forward,
    #: which needs the point's weights in the layer)
    only_call: bool = True
    coords: Tensor | None = None  # the current point's coordinates (r,), set per point (batched under vmap)
    _raw: set[int] = field(default_factory=set)
    _cache: dict[Any, tuple[Tensor, tuple[int, ...]]] = field(default_factory=dict)
    last_input: Tensor | None = None  # the layer's last input whose outputs were computed (for timing)
    #: 2-D convolution outputs handed on in channels-last memory format (the engine's choice for the model)
    channels_last: bool = False
    _points: AffinePoints | None = None
    _stacked: tuple[Tensor, Tensor | None] = (torch.empty(0, device="cpu"), None)

    @classmethod
    def find(cls, model: nn.Module, space: WeightSpace, args: tuple, kwargs: dict) -> FirstLayer | None:
        """Run ``model(*args, **kwargs)`` once (no gradients, the caller sets eval mode) with a pre-hook on
        every candidate layer; the first one called on a view of an input tensor, or ``None``."""
        index = {s.name: s for s in space.slots}
        candidates: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            if type(m) not in FOLDABLE or m._forward_hooks or m._forward_pre_hooks or hasattr(m, "parametrizations"):
                continue
            if "forward" in vars(m):  # already patched (nested evaluation)
                continue
            prefix = f"{name}." if name else ""
            if f"{prefix}weight" not in index or (m.bias is not None and f"{prefix}bias" not in index):
                continue
            candidates[m] = name
        if not candidates:
            return None
        raw = {_storage(t) for t in iter_tensors((args, kwargs))} - {-1}
        found: list[nn.Module] = []
        calls: dict[nn.Module, int] = {}

        def hook(m: nn.Module, inputs: tuple) -> None:
            calls[m] = calls.get(m, 0) + 1
            if not found and len(inputs) == 1 and isinstance(inputs[0], Tensor) and _storage(inputs[0]) in raw:
                found.append(m)

        handles = [m.register_forward_pre_hook(hook) for m in candidates]
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if not found:
            return None
        m = found[0]
        name = candidates[m]
        prefix = f"{name}." if name else ""
        slots = [index[f"{prefix}weight"]] + ([index[f"{prefix}bias"]] if m.bias is not None else [])
        return cls(m, name, tuple((s.offset, s.numel, s.shape) for s in slots), only_call=calls[m] == 1)

    @property
    def fan_in(self) -> int:
        """Multiply-adds per output element of the layer: ``in_features``, or ``in_channels / groups x
        kernel size``; folding replaces them by ``r + 1`` (``r`` directions) per point."""
        return int(self.slots[0][1] // self.slots[0][2][0])

    # ------------------------------------------------------------------ folded forward
    def _apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        m = self.module
        if isinstance(m, nn.Linear):
            return nn.functional.linear(x, weight, bias)
        return m._conv_forward(x, weight, bias)  # type: ignore[operator]

    def _stack(self, points: AffinePoints) -> tuple[Tensor, Tensor | None]:
        """The layer's parameters at the origin (if any) and along each direction, stacked along the output
        dimension: weight (q * out, ...), bias (q * out,) with q = r + 1 (or r without an origin)."""
        weight = self.module.weight
        assert isinstance(weight, Tensor)
        parts = []
        for off, numel, shape in self.slots:
            rows = [points.basis[:, off : off + numel]]
            if points.origin is not None:
                rows.insert(0, points.origin[None, off : off + numel].to(points.basis.dtype))
            block = torch.cat(rows)
            parts.append(block.reshape(block.shape[0] * shape[0], *shape[1:]).to(weight.device, weight.dtype))
        return parts[0], parts[1] if len(parts) > 1 else None

    def basis_outputs(self, x: Tensor) -> Tensor:
        """``F(x; o)`` (when there is an origin) and ``F(x; d_j)`` stacked along a new first dimension, with
        one call of the layer on the stacked parameters (the groups of a grouped convolution one by one)."""
        m = self.module
        weights, bias = self._stacked
        out_features = self.slots[0][2][0]
        q = weights.shape[0] // out_features
        if isinstance(m, nn.Linear):
            return self._apply(x, weights, bias).unflatten(-1, (q, out_features)).movedim(-2, 0).contiguous()
        if m.groups == 1:
            return self._apply(x, weights, bias).unflatten(1, (q, out_features)).movedim(1, 0).contiguous()
        ws = weights.view(q, out_features, *weights.shape[1:])
        bs = list(bias.view(q, out_features)) if bias is not None else [None] * q
        return torch.stack([self._apply(x, w, b) for w, b in zip(ws, bs, strict=True)])

    def _forward(self, original: Any, *inputs: Any, **kw: Any) -> Tensor:
        x = inputs[0] if len(inputs) == 1 and not kw else None
        if not isinstance(x, Tensor) or _storage(x) not in self._raw or self.coords is None:
            return original(*inputs, **kw)
        key = (_storage(x), tuple(x.shape), x.stride(), x.storage_offset(), x.dtype)
        hit = self._cache.get(key)
        if hit is None:
            ys = self.basis_outputs(x)
            shape = tuple(ys.shape[1:])
            if self.channels_last and ys.dim() == 5:  # (q, N, C, H, W) kept as (q, N, H, W, C): channels last
                ys = ys.permute(0, 1, 3, 4, 2).contiguous()
            hit = self._cache[key] = (ys.flatten(1), shape)  # (q, M) and the output's shape
            self.last_input = x
        assert self._points is not None
        rows, shape = hit
        t = self.coords.to(rows.dtype)[None]
        if self._points.origin is not None:  # F(x; o) + sum_j t_j F(x; d_j), one fused pass
            flat = torch.addmm(rows[:1], t, rows[1:])
        else:
            flat = t @ rows
        if self.channels_last and len(shape) == 4:  # an (N, C, H, W) tensor in channels-last memory format
            n, c, h, w = shape
            return flat.view(n, h, w, c).permute(0, 3, 1, 2)
        return flat.view(shape)

    @contextlib.contextmanager
    def folded(self, points: AffinePoints) -> Iterator[FirstLayer]:
        """Inside the block the layer's ``forward`` returns the combination for :attr:`coords` (set it per
        point) on the inputs announced by :meth:`batch`; its own ``forward`` is back on exit."""
        original = self.module.forward
        self._points = points
        self._stacked = self._stack(points)
        self.module.forward = lambda *a, **k: self._forward(original, *a, **k)
        try:
            yield self
        finally:
            del self.module.forward
            self._points, self.coords = None, None
            self._raw, self._cache, self.last_input = set(), {}, None

    def batch(self, args: tuple, kwargs: dict) -> None:
        """A new input batch: the layer's outputs on the origin and directions are computed at its first
        call on (a view of) one of these tensors and reused for every point."""
        self._raw = {_storage(t) for t in iter_tensors((args, kwargs))} - {-1}
        self._cache = {}
