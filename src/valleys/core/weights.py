"""The weight-space core: one flat vector ``w`` of length P for a module's parameters.

Every method in valleys (SWA, SWAG, FGE, curves, planes, subspaces) is arithmetic on such vectors plus
"evaluate the network at ``w``". :class:`WeightSpace` is the one map between a module and ``w``:

* trainable parameters by default (``requires_grad=True``), or a named subset;
* tied parameters (one tensor registered under two names) counted once, under their first name;
* frozen parameters and buffers are never part of ``w`` and are never written: buffers such as BatchNorm
  running statistics are handled explicitly by :func:`valleys.core.batchnorm.recompute_bn`.

The layout is the order of ``module.named_parameters()``, so ``w = concat(p.flatten() for p in params)``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import WeightSpaceError

__all__ = ["WeightSpace", "WeightSpaceError", "preserved_modes", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module that a ``torch.compile`` wrapper (``OptimizedModule``) wraps, else ``module`` itself.

    Weight spaces, averages, posteriors and checkpoints refer to the original module's parameters, so their
    names carry no ``_orig_mod.`` prefix and a state dict saved from a compiled module loads into the plain
    one (and back). Evaluations at other weights run the original module eagerly: swapping parameters in and
    out of a compiled graph would recompile it at every point."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else module


@contextlib.contextmanager
def preserved_modes(module: nn.Module, train: bool | None = None) -> Iterator[nn.Module]:
    """Inside the block the module is in train (``True``) or eval (``False``) mode, or unchanged (``None``);
    on exit every submodule's own train/eval flag is restored, also when the block raises."""
    modes = [m.training for m in module.modules()]
    if train is not None:
        module.train(train)
    try:
        yield module
    finally:
        # strict=False: a raise here would replace the block's own exception; the block is not expected to add or
        # remove submodules
        for m, mode in zip(module.modules(), modes, strict=False):
            m.training = mode


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


class WeightSpace:
    """Map between a module's parameters and a flat weight vector ``w`` in R^P.

    Args:
        module: the model whose parameters define the space (only names and shapes are kept).
        names: parameter names to include (a subset, e.g. the last layer); ``None`` means every parameter
            with ``requires_grad=True``. Unknown names raise :class:`WeightSpaceError` listing valid ones.
        include_frozen: also include parameters with ``requires_grad=False`` when ``names`` is ``None``.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> space = WeightSpace(net)
        >>> w = space.read(net)          # tensor of shape (8,)
        >>> space.write(net, 2 * w)      # in place
        >>> with space.at(net, w):       # temporarily at w, restored on exit
        ...     y = net(torch.zeros(1, 3))
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str] | None = None,
        *,
        include_frozen: bool = False,
    ) -> None:
        module = unwrap(module)
        params = dict(module.named_parameters())  # remove_duplicate=True: tied weights once
        if names is None:
            chosen = [n for n, p in params.items() if include_frozen or p.requires_grad]
        else:
            unknown = [n for n in names if n not in params]
            if unknown:
                raise WeightSpaceError(f"unknown parameter names {unknown}; valid names are {list(params)}")
            if len(set(names)) != len(names):
                raise WeightSpaceError(f"parameter names repeat in {list(names)}")
            order = {n: i for i, n in enumerate(params)}
            chosen = sorted(names, key=order.__getitem__)
        if not chosen:
            raise WeightSpaceError(
                "the weight space is empty: the module has no (trainable) parameters; "
                "pass names=... or include_frozen=True"
            )
        slots, offset = [], 0
        for n in chosen:
            p = params[n]
            slots.append(_Slot(n, tuple(p.shape), offset, p.numel()))
            offset += p.numel()
        self.slots: tuple[_Slot, ...] = tuple(slots)
        self.size: int = offset
        self.dtype: torch.dtype = params[chosen[0]].dtype
        dtypes = {params[n].dtype for n in chosen}
        if len(dtypes) > 1:
            raise WeightSpaceError(f"parameters have mixed dtypes {dtypes}; choose a subset with one dtype")

    # ------------------------------------------------------------------ structure
    @property
    def names(self) -> list[str]:
        """Parameter names in the order of the flat layout."""
        return [s.name for s in self.slots]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Parameter shapes in the order of the flat layout."""
        return [s.shape for s in self.slots]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"WeightSpace(P={self.size}, tensors={len(self.slots)})"

    def signature(self) -> list[list]:
        """JSON-able description (names and shapes) used to check that checkpoints fit a model."""
        return [[s.name, list(s.shape)] for s in self.slots]

    def parameters(self, module: nn.Module) -> list[Tensor]:
        """The module's parameter tensors in flat-layout order, after checking names and shapes (of the
        original module of a ``torch.compile`` wrapper, see :func:`unwrap`)."""
        params = dict(unwrap(module).named_parameters())
        out: list[Tensor] = []
        for s in self.slots:
            p = params.get(s.name)
            if p is None:
                raise WeightSpaceError(
                    f"the module has no parameter {s.name!r}: it is not the architecture this weight "
                    f"space was built from (expected {self.size} weights in {len(self.slots)} tensors)"
                )
            if tuple(p.shape) != s.shape:
                raise WeightSpaceError(
                    f"parameter {s.name!r} has shape {tuple(p.shape)} but this weight space expects "
                    f"{s.shape}: the module is a different architecture"
                )
            out.append(p)
        return out

    def check_vector(self, w: Tensor, *, what: str = "weight vector", finite: bool = True) -> None:
        """Raise a clear :class:`WeightSpaceError` unless ``w`` is a finite 1-D float tensor of length P."""
        if not isinstance(w, Tensor):
            raise WeightSpaceError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
        if w.dim() != 1 or w.numel() != self.size:
            raise WeightSpaceError(
                f"{what} has shape {tuple(w.shape)} but this weight space needs a 1-D vector of length {self.size}"
            )
        if not w.is_floating_point():
            raise WeightSpaceError(f"{what} has dtype {w.dtype}; a floating-point dtype is required")
        if finite and not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).sum())
            raise WeightSpaceError(f"{what} holds {bad} NaN or infinite entries")

    # ------------------------------------------------------------------ read / write
    def read(
        self, module: nn.Module, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Return ``w``: a new detached flat vector holding the module's current parameters."""
        params = self.parameters(module)
        with torch.no_grad():
            w = torch.cat([p.detach().reshape(-1) for p in params])
        if dtype is not None or device is not None:
            w = w.to(dtype=dtype or w.dtype, device=device or w.device)
        return w

    def write(self, module: nn.Module, w: Tensor) -> None:
        """Copy ``w`` into the module's parameters in place (checked: length, dtype kind, finiteness)."""
        self.check_vector(w)
        params = self.parameters(module)
        with torch.no_grad():
            for p, s in zip(params, self.slots, strict=True):
                p.copy_(w[s.offset : s.offset + s.numel].view(s.shape))

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Views of ``w`` shaped like the parameters, keyed by name (gradients flow through them)."""
        if w.dim() != 1 or w.numel() != self.size:
            raise WeightSpaceError(
                f"weight vector has shape {tuple(w.shape)}; expected a 1-D vector of length {self.size}"
            )
        # one split (one concatenating backward) rather than a slice per tensor (a full-size zero fill each)
        parts = torch.split(w, [s.numel for s in self.slots])
        return {s.name: part.view(s.shape) for s, part in zip(self.slots, parts, strict=True)}

    def views(self, w: Tensor) -> list[Tensor]:
        """Views of ``w`` in flat-layout order, shaped like the parameters (for foreach arithmetic)."""
        return list(self.unflatten(w).values())

    # ------------------------------------------------------------------ evaluation at w
    @contextlib.contextmanager
    def at(self, module: nn.Module, w: Tensor, *, keep_buffers: bool = False) -> Iterator[nn.Module]:
        """Context manager: the module holds ``w`` inside the block and is restored bit for bit after.

        Parameters, buffers (e.g. BatchNorm statistics changed by a recompute inside the block) and the
        train/eval flag of every submodule are restored on exit, also when the block raises. With
        ``keep_buffers=True`` the buffers computed inside the block are kept.
        """
        self.check_vector(w)
        with self.visiting(module, keep_buffers=keep_buffers) as load:
            load(w)
            yield module

    @contextlib.contextmanager
    def visiting(self, module: nn.Module, *, keep_buffers: bool = False) -> Iterator[Callable[[Tensor], None]]:
        """Context manager for visiting many weight vectors: the module is saved once, ``load(w)`` copies a
        vector into its parameters (no checks: check each vector first with :meth:`check_vector`), and on
        exit parameters, buffers (unless ``keep_buffers``) and train/eval flags are restored bit for bit,
        also when the block raises. The saving and restoring is paid once, not once per vector."""
        params = self.parameters(module)
        with torch.no_grad():
            saved_w = [p.detach().clone() for p in params]
        saved_buffers = {} if keep_buffers else {k: b.detach().clone() for k, b in module.named_buffers()}

        def load(w: Tensor) -> None:
            with torch.no_grad():
                for p, s in zip(params, self.slots, strict=True):
                    p.copy_(w[s.offset : s.offset + s.numel].view(s.shape))

        try:
            with preserved_modes(module):
                yield load
        finally:
            with torch.no_grad():
                for p, saved in zip(params, saved_w, strict=True):
                    p.copy_(saved)
                if saved_buffers:
                    for k, b in module.named_buffers():  # by name: a buffer replaced inside gets the old values
                        if k in saved_buffers:
                            b.copy_(saved_buffers[k])

    def call_with(self, module: nn.Module, tensors: Sequence[Tensor], args: tuple = (), kwargs: dict | None = None):
        """``module(*args, **kwargs)`` with slot i's parameter replaced by ``tensors[i]`` (shaped like it),
        restored on exit, also when the call raises; gradients flow to ``tensors``.

        The same substitution as :func:`torch.func.functional_call` (a tied parameter is replaced under all
        its names), without its per-call bookkeeping: where each slot's parameter is registered (submodule
        path and attribute) is looked up once per module and cached; the submodules are found again by path
        on every call, so a submodule replaced later is the one that receives the tensor.
        """
        module = unwrap(module)
        sites = self._sites(module)
        if len(tensors) != len(sites):
            raise WeightSpaceError(f"got {len(tensors)} tensors for a weight space of {len(sites)} parameters")
        saved = []
        try:
            for slot_sites, t in zip(sites, tensors, strict=True):
                for path, name in slot_sites:
                    mod = module.get_submodule(path) if path else module
                    saved.append((mod, name, mod._parameters[name]))
                    mod._parameters[name] = t  # type: ignore[assignment]  # as functional_call does
            return module(*args, **(kwargs or {}))
        finally:
            for mod, name, p in reversed(saved):
                mod._parameters[name] = p

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_site_cache", None)  # weak references to modules: rebuilt on first use
        return state

    def _sites(self, module: nn.Module) -> list[list[tuple[str, str]]]:
        """For each slot, every (submodule path, attribute) under which its parameter object is registered."""
        cache = self.__dict__.setdefault("_site_cache", {})
        hit = cache.get(id(module))
        if hit is not None and hit[0]() is module:
            return hit[1]
        params = self.parameters(module)  # checks names and shapes
        where: dict[int, list[tuple[str, str]]] = {}
        for path, mod in module.named_modules():
            for name, p in mod._parameters.items():
                if p is not None:
                    where.setdefault(id(p), []).append((path, name))
        sites = [where[id(p)] for p in params]
        cache[id(module)] = (weakref.ref(module), sites)
        return sites

    def functional_call(self, module: nn.Module, w: Tensor, *args, **kwargs):
        """``module(*args, **kwargs)`` evaluated at ``w`` without writing ``w`` into the module.

        Views of ``w`` are swapped in by :meth:`call_with`, so gradients flow to ``w`` (curve training,
        Hessians) and ``torch.func`` transforms (vmap over stacked weights) see through it.
        Parameters outside the space keep their current values. Note that a module in train mode still
        updates its own BatchNorm buffers, as a normal forward would; use eval mode or :meth:`at` if
        those must stay untouched.
        """
        return self.call_with(module, self.views(w), args, kwargs)
