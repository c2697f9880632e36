"""Mode-connecting curves between two networks, for any ``nn.Module`` (talk slide 7).

Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs", NeurIPS. A curve in weight space ``w(t) = sum_j c_j(t) theta_j``, t in [0, 1], over
control points ``theta_0 .. theta_{n-1}`` whose ends ``theta_0 = w_A`` and ``theta_{n-1} = w_B`` are two trained
networks and stay fixed:

* Bezier: ``c_j(t) = binom(n-1, j) t^j (1-t)^(n-1-j)``;
* polygonal chain: ``c_j(t) = max(0, 1 - |t (n-1) - j|)``.

Inner points start on the straight segment. Training draws ``t ~ U(0, 1)`` for every minibatch and
minimises the task loss at ``w(t)`` plus ``0.5 wd ||w(t)||^2`` (the optimizer's own weight decay stays 0).
Unlike the reference code, the user's layers are never rewritten: :class:`CurveModel` evaluates the
unchanged model at ``w(t)`` by substituting its parameters so gradients reach the inner points only, and
substitutes its buffers too: the curve model owns a copy of them (BatchNorm running statistics), which a
train-mode forward updates instead of the network's, so the endpoint network passed in is never touched.
The curve's own running statistics average over many t and are only a rough guide; evaluation recomputes
them per point (:func:`valleys.geometry.paths.evaluate_path`).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from ..core.adapter import ModelAdapter
from ..core.weights import WeightSpace, WeightSpaceError, unwrap
from ..errors import InputError

__all__ = ["bezier_coefficients", "polychain_coefficients", "Curve", "CurveModel", "CURVE_KINDS"]

CURVE_KINDS = ("bezier", "polychain")


def _check_t(t: float | Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() != 0 or not (0.0 <= float(t) <= 1.0):
        raise InputError(f"t must be a number in [0, 1], got {t.tolist()}")
    return t


def bezier_coefficients(t: float | Tensor, n: int) -> Tensor:
    """``c_j(t) = binom(n-1, j) t^j (1 - t)^(n-1-j)`` for j = 0..n-1 (float64; sums to 1)."""
    t = _check_t(t)
    j = torch.arange(n, dtype=torch.float64)
    binom = torch.tensor([math.comb(n - 1, k) for k in range(n)], dtype=torch.float64)
    return binom * t**j * (1 - t) ** (n - 1 - j)


def polychain_coefficients(t: float | Tensor, n: int) -> Tensor:
    """``c_j(t) = max(0, 1 - |t (n-1) - j|)``: piecewise-linear interpolation between consecutive points."""
    t = _check_t(t)
    j = torch.arange(n, dtype=torch.float64)
    return (1 - (t * (n - 1) - j).abs()).clamp_min(0)


class Curve(nn.Module):
    """The curve ``w(t)`` between two fixed weight vectors; the inner control points are the parameters.

    Args:
        start, end: the endpoints ``w_A``, ``w_B`` (flat vectors of equal length; buffers, never trained).
        kind: ``"bezier"`` or ``"polychain"``.
        bends: number of control points n including the ends (>= 2; 3 is the paper's default; 2 is the
            straight segment, with nothing to train).
        sizes: lengths of the consecutive pieces of ``w`` (``[s.numel for s in space.slots]``): the inner
            points are then kept per parameter tensor, so a training step through :class:`CurveModel` never
            concatenates or splits a full weight vector (see benchmarks/bench_curves.py). Default: one piece.
    """

    start: Tensor
    end: Tensor

    def __init__(
        self, start: Tensor, end: Tensor, *, kind: str = "bezier", bends: int = 3, sizes: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if kind not in CURVE_KINDS:
            raise InputError(f"unknown curve kind {kind!r}; choose one of {', '.join(CURVE_KINDS)}")
        if not isinstance(bends, int) or bends < 2:
            raise InputError(f"a curve needs at least 2 control points (its two ends), got bends={bends!r}")
        if start.shape != end.shape or start.dim() != 1:
            raise WeightSpaceError(
                "endpoints must be flat vectors of equal length, "
                f"got shapes {tuple(start.shape)} and {tuple(end.shape)}"
            )
        sizes = list(sizes) if sizes is not None else [start.numel()]
        if sum(sizes) != start.numel() or any(n < 1 for n in sizes):
            raise WeightSpaceError(f"sizes {sizes} do not add up to the {start.numel()} weights of the endpoints")
        self.kind, self.bends, self.sizes = kind, bends, sizes
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("end", end.detach().clone())
        frac = torch.arange(1, bends - 1, dtype=start.dtype, device=start.device)[:, None] / (bends - 1)
        init = self.start + frac * (self.end - self.start)  # (n-2, P), on the segment
        self.inner = nn.ParameterList([nn.Parameter(p.clone()) for p in torch.split(init, sizes, dim=1)])

    def coefficients(self, t: float | Tensor) -> Tensor:
        """The n coefficients ``c_j(t)`` (float64)."""
        fn = bezier_coefficients if self.kind == "bezier" else polychain_coefficients
        return fn(t, self.bends)

    def inner_points(self) -> Tensor:
        """The n - 2 inner control points as an (n - 2, P) tensor."""
        return torch.cat(list(self.inner), dim=1)

    def set_inner(self, points: Tensor) -> None:
        """Overwrite the inner control points with an (n - 2, P) tensor."""
        with torch.no_grad():
            for p, piece in zip(self.inner, torch.split(points.to(self.start), self.sizes, dim=1), strict=True):
                p.copy_(piece)

    def inner_grad(self) -> Tensor | None:
        """The gradient of the inner points as an (n - 2, P) tensor (None before a backward pass)."""
        if any(p.grad is None for p in self.inner):
            return None
        return torch.cat([p.grad for p in self.inner], dim=1)

    def control_points(self) -> Tensor:
        """All n control points as an (n, P) tensor (ends included)."""
        return torch.cat([self.start[None], self.inner_points(), self.end[None]])

    def point_parts(self, t: float | Tensor) -> list[Tensor]:
        """``w(t)`` as one tensor per piece (see ``sizes``), differentiable with respect to the inner points.

        One autograd node (:class:`_CurvePoint`) forms every piece with fused passes over the control
        points; its backward hands ``c_j(t) g`` to inner point j (g: the gradient reaching ``w(t)``).
        """
        return _curve_point(self, self.coefficients(t).tolist(), _Scale(), None)

    def point(self, t: float | Tensor) -> Tensor:
        """``w(t)`` as one flat vector; differentiable with respect to the inner control points."""
        parts = self.point_parts(t)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def derivative(self, t: float | Tensor) -> Tensor:
        """``dw/dt`` (analytic; for the polychain, the derivative of the segment containing t)."""
        t = _check_t(t)
        n = self.bends
        pts = self.control_points()
        if self.kind == "bezier":  # n-1 times the Bezier curve of the differences, one degree lower
            c = bezier_coefficients(t, n - 1).to(pts.dtype)
            return (n - 1) * (c @ (pts[1:] - pts[:-1]))
        seg = min(int(math.floor(float(t) * (n - 1))), n - 2)
        return (n - 1) * (pts[seg + 1] - pts[seg])

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bends={self.bends}, P={self.start.numel()}, pieces={len(self.sizes)}"


class CurveModel(nn.Module):
    """The user's model evaluated at ``w(t)`` of a :class:`Curve`, without rewriting any of its layers.

    In training mode every forward call draws a fresh ``t ~ U(0, 1)`` (one per minibatch); in eval mode it
    uses ``self.t`` (set it, or pass ``t=`` to forward). ``last_sq_norm`` holds ``||w(t)||^2`` of the last
    forward. Only ``curve.parameters()`` go to the optimizer; the model's own
    parameters are replaced by ``w(t)`` in every call, so they receive no gradient and are never changed.

    Gradients are those of the explicit objective (tested against autograd through the flat ``w(t)`` in
    float64). With ``loss_through_output=True`` (what ``valleys connect`` uses) the caller promises that the
    loss depends on ``w(t)`` only through the tensor this call returns (no auxiliary losses stored on the
    module, no activations caught by hooks); then, when a single inner point has a nonzero coefficient
    ``c_j(t)`` (Bezier with three points, the polygonal chain), ``c_j`` multiplies the batch-sized gradient
    at the output instead of the P-sized gradient of ``w(t)`` (by linearity of backpropagation). It is
    skipped when another parameter or an input needs a gradient. See benchmarks/bench_curves.py for the
    cost (~1.26x a plain step with it).

    The model's buffers (BatchNorm running statistics) are substituted like its parameters: the curve model
    holds its own copy, taken at construction, updated by train-mode forwards and used by eval-mode ones;
    ``model`` itself (parameters and buffers) is never written. In ``state_dict()`` the copy appears under
    the model's own buffer names (``model.<name>``), so checkpoints keep their layout.

    Args:
        model: the network (its parameters outside the weight space are used as they are; never written).
        curve: the curve over ``space``.
        space: the weight space of ``model`` the curve lives in (default: all trainable parameters).
        adapter: which part of the model's return value is the prediction (``adapter.prediction``); with it,
            forward returns the prediction (so a model returning a tuple or a ``ModelOutput`` can be trained
            on a curve). Default: the raw return value.
    """

    def __init__(
        self,
        model: nn.Module,
        curve: Curve,
        space: WeightSpace | None = None,
        *,
        loss_through_output: bool = False,
        adapter: ModelAdapter | None = None,
    ) -> None:
        super().__init__()
        model = unwrap(model)  # a torch.compile wrapper: the curve substitutes into its original module
        self.adapter = adapter
        self.loss_through_output = loss_through_output
        self.space = space or WeightSpace(model)
        if curve.start.numel() != self.space.size or (
            len(curve.sizes) > 1 and curve.sizes != [s.numel for s in self.space.slots]
        ):
            raise WeightSpaceError(
                f"the curve has {curve.start.numel()} weights per point but the model's weight space has "
                f"{self.space.size}: the curve belongs to another architecture"
            )
        self.model = model
        self.curve = curve
        self.t = 0.5
        self.wd = 0.0
        self.defer_l2 = False
        self._last_parts: list[Tensor] | None = None
        self._l2_pending: dict[int, list[tuple[Tensor, list[float]]]] = {}
        self._hooked: dict[int, weakref.ref[Tensor]] = {}
        self._names = {s.name for s in self.space.slots}
        # the private buffers: one clone per buffer tensor (a buffer registered twice stays shared)
        clones: dict[int, Tensor] = {}
        self._buffer_sites: list[tuple[str, str, Tensor]] = []
        for path, mod in model.named_modules(remove_duplicate=False):
            for name, b in mod._buffers.items():
                if b is not None:
                    self._buffer_sites.append((path, name, clones.setdefault(id(b), b.detach().clone())))
        self._register_state_dict_hook(CurveModel._buffers_to_state)
        self._register_load_state_dict_pre_hook(CurveModel._buffers_from_state, with_module=True)

    @property
    def buffers_copy(self) -> dict[str, Tensor]:
        """The curve model's own buffers by the model's buffer names (what its forward calls use)."""
        return {f"{p}.{n}" if p else n: b for p, n, b in self._buffer_sites}

    def _swap_buffers(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Put ``tensors`` in the model's buffer slots and return what was there."""
        old: list[Tensor | None] = []
        for (path, name, _), t in zip(self._buffer_sites, tensors, strict=True):
            mod = self.model.get_submodule(path) if path else self.model
            old.append(mod._buffers[name])
            mod._buffers[name] = t
        return old

    @staticmethod
    def _buffers_to_state(module: CurveModel, state: dict, prefix: str, local_metadata: Any) -> None:
        for key, b in module.buffers_copy.items():
            full = f"{prefix}model.{key}"
            if full in state:
                state[full] = b.detach()

    @staticmethod
    def _buffers_from_state(module: CurveModel, state: dict, prefix: str, *args: Any) -> None:
        # the entries under the model's buffer names are the curve's own statistics: copy them into the
        # private buffers, and let the model's (untouched) buffers load their current values back
        with torch.no_grad():
            for key, b in module.buffers_copy.items():
                full = f"{prefix}model.{key}"
                if full in state:
                    b.copy_(state[full])
                    path, _, name = key.rpartition(".")
                    mod = module.model.get_submodule(path) if path else module.model
                    state[full] = mod._buffers[name]

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> CurveModel:
        # .to(device) / .double() move the private buffers with the module
        out = super()._apply(fn, *args, **kwargs)
        moved: dict[int, Tensor] = {}
        self._buffer_sites = [(p, n, moved.setdefault(id(b), fn(b))) for p, n, b in self._buffer_sites]
        return out

    def forward(self, *args: Any, t: float | None = None, **kwargs: Any) -> Tensor:
        if t is None:
            t = float(torch.rand(())) if self.training else self.t
        c = self.curve.coefficients(t).tolist()
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.curve.inner)
        scale = _Scale()
        sink = None
        if self._l2_pending and not self.defer_l2:  # queued by a backward pass that never accumulated into .grad
            self._l2_pending.clear()
            warnings.warn(
                "CurveModel: the L2 gradient of the last backward pass was not applied because it did "
                "not accumulate into the inner points' .grad (use loss.backward(), not "
                "torch.autograd.grad, when training with l2_loss)",
                stacklevel=2,
            )
        if grad and self.wd:
            if not self.defer_l2:
                self._hook_inner()
            sink = (self._l2_pending, self.wd)
        parts = _curve_point(self.curve, c, scale, sink)
        self._last_parts = [p.detach() for p in parts]
        saved = self._swap_buffers([b for _, _, b in self._buffer_sites])
        try:
            if len(parts) == len(self.space.slots):
                out = self.space.call_with(
                    self.model, [p.view(s.shape) for s, p in zip(self.space.slots, parts, strict=True)], args, kwargs
                )
            else:
                out = self.space.functional_call(self.model, torch.cat(parts), *args, **kwargs)
        finally:
            self._swap_buffers(saved)
        if self.adapter is not None:
            out = self.adapter.prediction(out)
        active = [x for x in c[1:-1] if x != 0.0]
        if (
            self.loss_through_output
            and grad
            and isinstance(out, Tensor)
            and len(active) == 1
            and active[0] >= _MIN_SCALE
            and not self._other_trainable()
            and not _any_requires_grad(args, kwargs)
        ):
            # The one active inner point's coefficient c_j is applied to the gradient at the output
            # (batch-sized) instead of to the P-sized gradient of w(t): by linearity of backpropagation
            # every weight gradient arrives already multiplied by c_j, and the curve's backward passes it
            # on without a copy. Only the curve's points receive gradients through this graph.
            scale.value = active[0]
            out = _ScaleGrad.apply(out, active[0])
        return out

    def __getstate__(self) -> dict[str, Any]:
        # pickling and deepcopy: hooks are registered again on the copy's parameters at its first forward
        state = self.__dict__.copy()
        state["_hooked"], state["_l2_pending"] = {}, {}
        return state

    def _other_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.model.named_parameters() if n not in self._names)

    def _hook_inner(self) -> None:
        """Register (once per parameter object) the hook that adds the L2 gradient after accumulation."""
        for p in self.curve.inner:
            if not p.requires_grad:
                continue
            ref = self._hooked.get(id(p))
            if ref is None or ref() is not p:
                p.register_post_accumulate_grad_hook(self._add_l2)
                self._hooked[id(p)] = weakref.ref(p)

    def _add_l2(self, p: Tensor) -> None:
        # ``(w_i, c)`` entries queued by _CurvePoint.backward for this parameter in this backward pass:
        # grad += wd * outer(c_inner, w_i), in place (the gradient tensor is the parameter's own)
        grad = p.grad
        assert grad is not None  # a post-accumulate-grad hook runs after .grad is written
        for w, coef in self._l2_pending.pop(id(p), ()):
            if len(coef) == 1:
                grad[0].add_(w, alpha=coef[0])
            else:
                grad.addr_(torch.tensor(coef, dtype=w.dtype, device=w.device), w)

    def apply_pending_l2(self) -> None:
        """Add the L2 gradients queued by the last backward pass to the inner points' ``.grad`` now.

        With ``defer_l2 = True`` (curve training under ``DistributedDataParallel``, which averages and then
        writes the gradient buckets back into ``.grad`` after the accumulate hooks ran) the penalty's gradient
        ``c_j(t) wd w(t)``, the same on every rank (same ``t``, same points), is added here, after the
        all-reduce: call it before ``optimizer.step()`` (an optimizer step pre-hook does)."""
        for p in self.curve.inner:
            if p.grad is not None:
                self._add_l2(p)
        self._l2_pending.clear()

    def ddp_ignore(self, prefix: str = "") -> tuple[str, ...]:
        """The names DDP must leave alone: the wrapped network's parameters and buffers (replaced by ``w(t)``
        and the private copies in every call, never trained) and the curve's fixed ends."""
        names = (
            [f"model.{n}" for n, _ in self.model.named_parameters()]
            + [f"model.{n}" for n, _ in self.model.named_buffers()]
            + ["curve.start", "curve.end"]
        )
        return tuple(prefix + n for n in names)

    @property
    def last_w(self) -> Tensor | None:
        """``w(t)`` of the last forward call (no autograd history)."""
        return None if self._last_parts is None else torch.cat(self._last_parts)

    @property
    def last_sq_norm(self) -> Tensor | None:
        """``||w(t)||^2`` of the last forward call (no autograd history)."""
        if self._last_parts is None:
            return None
        parts = self._last_parts
        return sum((p.pow(2).sum() for p in parts), torch.zeros((), dtype=parts[0].dtype, device=parts[0].device))

    def l2_loss(self, loss_fn, wd: float):
        """The curve objective ``loss_fn(output, target) + 0.5 wd ||w(t)||^2``.

        The penalty's gradient with respect to inner point j, ``c_j(t) wd w(t)``, is added in place to the
        point's ``.grad`` right after ``loss.backward()`` accumulates it (a post-accumulate-grad hook; cheaper
        than differentiating the squared norm). So train with ``loss.backward()``: ``torch.autograd.grad``
        does not accumulate into ``.grad`` and would miss the penalty. The returned value is the task loss,
        which is what the training log shows. Sets ``self.wd``; the optimizer's own weight decay must stay 0.
        Under DistributedDataParallel set ``defer_l2 = True`` and call :meth:`apply_pending_l2` before each
        optimizer step (``valleys.app.connect.train_curve`` does), since DDP writes the averaged gradient
        into ``.grad`` after the accumulate hooks.
        """
        if wd < 0:
            raise InputError(f"wd must be >= 0, got {wd}")
        self.wd = wd
        return loss_fn


_MIN_SCALE = 1e-3  # below this the coefficient is applied to the P-sized gradient instead (no tiny scales)


class _Scale:
    """The factor already applied to the gradient at the model's output (1 unless CurveModel sets it)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 1.0


def _any_requires_grad(args: tuple, kwargs: dict) -> bool:

    return any(isinstance(x, Tensor) and x.requires_grad for x in tree_leaves((args, kwargs)))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.scale, None


class _CurvePoint(torch.autograd.Function):
    """``w_i(t) = c_0 start_i + c_{n-1} end_i + sum_j c_j inner_{j,i}`` for every piece i, as one node.

    Backward: inner point j receives ``(c_j / s) g_i`` where ``s`` is the factor CurveModel already applied
    at the output (so with one active inner point, ``g_i`` itself, without a copy). With an L2 sink, the
    entries ``(w_i, wd c_inner)`` are queued for CurveModel's post-accumulate hook.
    """

    @staticmethod
    def forward(ctx, curve: Curve, c: list[float], scale: _Scale, sink, *inner: Tensor):
        w = _combine(curve, c, [[p[j] for p in inner] for j in range(len(c) - 2)])
        ctx.c, ctx.scale, ctx.sink = c[1:-1], scale, sink
        ctx.inner_ids = [id(p) for p in curve.inner]
        if sink is not None:
            ctx.save_for_backward(*w)
        return tuple(w)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        s = ctx.scale.value
        rel = [cj / s for cj in ctx.c]
        out: list[Tensor | None] = []
        seen: set[int] = set()
        for g in grads:
            if len(rel) == 1 and rel[0] == 1.0:
                # one gradient tensor reaching two pieces: never share storage
                own = g.clone() if g.data_ptr() in seen else g
                seen.add(own.data_ptr())
                out.append(own.view(1, -1))
            elif len(rel) == 1:
                out.append((g * rel[0]).view(1, -1))
            else:
                out.append(torch.outer(torch.tensor(rel, dtype=g.dtype, device=g.device), g))
        if ctx.sink is not None:
            pending, wd = ctx.sink
            coef = [wd * cj for cj in ctx.c]
            if any(coef):
                for i, (pid, w) in enumerate(zip(ctx.inner_ids, ctx.saved_tensors, strict=True)):
                    if ctx.needs_input_grad[4 + i]:
                        pending.setdefault(pid, []).append((w, coef))
        return (None, None, None, None, *out)


def _combine(curve: Curve, c: list[float], inner: list[list[Tensor]]) -> list[Tensor]:
    """``sum_j c_j theta_j`` per piece (coefficients summing to 1) as a chain of lerps over the points with
    nonzero coefficients: ``S <- lerp(S, theta_j, c_j / (c_0 + ... + c_j))``. One pass per extra point (the
    polychain's two active points: one pass; Bezier with 3 points: two), against one pass per point plus a
    scaling pass for the plain sum."""
    pts: list[tuple[float, list[Tensor]]] = [
        (c[0], list(torch.split(curve.start, curve.sizes))),
        *zip(c[1:-1], inner, strict=True),
        (c[-1], list(torch.split(curve.end, curve.sizes))),
    ]
    pts = [(cj, tj) for cj, tj in pts if cj != 0.0]
    total, first = pts[0]
    if len(pts) == 1:
        return list(torch._foreach_mul(first, total))
    cj, tj = pts[1]
    total += cj
    w = list(torch._foreach_lerp(first, tj, cj / total))
    for cj, tj in pts[2:]:
        total += cj
        torch._foreach_lerp_(w, tj, cj / total)
    return w


def _curve_point(curve: Curve, c: list[float], scale: _Scale, sink) -> list[Tensor]:
    if curve.bends == 2:
        with torch.no_grad():
            return _combine(curve, c, [])
    return list(_CurvePoint.apply(curve, c, scale, sink, *curve.inner))
