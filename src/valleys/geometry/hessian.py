"""Flatness of a solution: Hessian-vector products, top eigenvalues, trace, epsilon-sharpness (talk slide 6).

The loss is ``L(w) = sum_b (n_b / N) loss(f(x_b; w), y_b)`` over a fixed list of batches (the mean over
all N examples), evaluated functionally at the flat weight vector ``w`` (:class:`valleys.WeightSpace`) with
the model in a stated mode: ``"eval"`` (the default: BatchNorm uses its running statistics, Dropout is off,
so L is a deterministic function of w) or ``"train"``. Batches, model calls, predictions, targets and the
loss go through a :class:`valleys.core.adapter.ModelAdapter` (dict batches become keyword arguments; the
prediction is picked from tuple, dict or ``ModelOutput`` returns).

* ``H(w) v`` exactly, in the cost of about two gradients (Pearlmutter 1994, "Fast exact multiplication by
  the Hessian"), by one of two routes:

  - ``"double_backward"``: ``g = grad L(w)`` is computed once with its graph kept (``create_graph=True``),
    then ``H v = grad_w (g . v)`` reuses that graph for every product at the same ``w`` (the approach of
    PyHessian, Yao et al. 2020). Cheapest when many products are taken at one ``w`` (Lanczos, Hutchinson);
    holds the graph of the whole data subset in memory.
  - ``"forward_over_reverse"``: ``H v = d/de grad L(w + e v)`` at e = 0 (``torch.func.jvp`` of
    ``torch.func.grad``); nothing is kept between products.

  ``route="auto"`` (the default) takes double backward in eval mode and forward-over-reverse in train mode
  (where Dropout draws a fresh mask for every product, as before). All gradients and products run with the
  math scaled-dot-product attention kernel: the fused kernels have no forward-mode or double-backward rule.
* Top-k eigenvalues by Lanczos with full reorthogonalisation (Lanczos 1950; Golub & Van Loan 10.1): the k
  largest (algebraic) eigenvalues of the m x m tridiagonal matrix after m products; far fewer products than
  power iteration for the same accuracy (power iteration finds the largest in magnitude instead).
* Trace by Hutchinson's estimator ``tr(H) = E[z^T H z]`` with Rademacher z (Hutchinson 1990), with its
  standard error.
* Epsilon-sharpness (Keskar et al. 2017): ``max_{|d_i| <= eps (|w_i| + 1)} L(w + d) - L(w)``, by projected
  gradient ascent, reported relative to ``1 + L(w)`` as in the paper (times 100).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, as_adapter
from ..core.batchnorm import has_batchnorm
from ..core.weights import WeightSpace, preserved_modes
from ..errors import InputError

_T = TypeVar("_T")

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch has no kernel choice (and no fused CPU kernel issue)
    SDPBackend = sdpa_kernel = None  # type: ignore[assignment,misc]

__all__ = [
    "LossFunction",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "hutchinson_trace",
    "hvp_rows",
    "rademacher",
    "epsilon_sharpness",
    "HVP_ROUTES",
]

HVP_ROUTES = ("auto", "double_backward", "forward_over_reverse")


def _math_attention() -> contextlib.AbstractContextManager:
    """The math SDPA kernel (differentiable to any order, forward mode included), or nothing on old torch."""
    if sdpa_kernel is None:
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _num_examples(targets: Any) -> int:
    if isinstance(targets, Tensor):
        return int(targets.shape[0]) if targets.dim() > 0 else 1
    return len(targets)


class LossFunction:
    """``L(w)`` over a fixed data subset, its gradient and Hessian-vector products, at flat vectors ``w``.

    Args:
        model: the network (left untouched: evaluation is functional).
        batches: a fixed list of batches (kept in memory; use a subset of the training data).
        adapter: how batches become model calls, which output is the prediction and the loss ``L`` (a mean
            over the batch; :class:`valleys.core.adapter.ModelAdapter`, cross-entropy by default;
            ``ModelAdapter(loss=callable)`` for another).
        mode: ``"eval"`` (BatchNorm running statistics, no Dropout) or ``"train"``.
        space: the weight space (default: all trainable parameters).
        route: how Hessian-vector products are taken: ``"auto"``, ``"double_backward"`` or
            ``"forward_over_reverse"`` (see the module docstring; the numbers agree to rounding).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable,
        *,
        adapter: ModelAdapter | None = None,
        mode: str = "eval",
        space: WeightSpace | None = None,
        route: str = "auto",
    ) -> None:
        if mode not in ("eval", "train"):
            raise InputError(f"mode must be 'eval' or 'train', got {mode!r}")
        if route not in HVP_ROUTES:
            raise InputError(f"route must be one of {', '.join(HVP_ROUTES)}, got {route!r}")

        if mode == "train" and has_batchnorm(model):
            raise InputError(
                "mode='train' on a model with BatchNorm would update its running statistics and is "
                "not a function of w alone; use mode='eval' (the default)"
            )
        self.model, self.mode = model, mode
        self.space = space or WeightSpace(model)
        self.adapter = as_adapter(adapter)
        self.loss_fn = self.adapter.loss_fn
        self.batches: list[tuple[tuple, dict, Any]] = []
        for b in batches:
            args, kwargs = self.adapter.inputs(b)
            self.batches.append((args, kwargs, self.adapter.targets(b)))
        self.weights = [float(_num_examples(y)) for _, _, y in self.batches]
        if not self.batches or sum(self.weights) == 0:
            raise InputError("the data subset is empty: pass at least one non-empty batch")
        self.route = ("forward_over_reverse" if mode == "train" else "double_backward") if route == "auto" else route
        self.num_hvp = 0
        self._graph: tuple[Tensor, list[Tensor], list[Tensor]] | None = None  # (w, leaves, grads with their graph)
        self._batched_choice: bool | None = None  # hvp_many's probe result for this loss

    def _loss(self, w: Tensor) -> Tensor:
        return self._loss_at(self.space.views(w))

    def _loss_at(self, params: list[Tensor]) -> Tensor:
        total = sum(self.weights)
        out: Tensor | None = None
        for (args, kwargs, y), n in zip(self.batches, self.weights, strict=True):
            pred = self.adapter.prediction(self.space.call_with(self.model, params, args, kwargs))
            target = y.to(pred.device) if isinstance(y, Tensor) else y
            term = self.loss_fn(pred, target) * (n / total)
            out = term if out is None else out + term
        assert out is not None  # __init__ refuses an empty set of batches
        return out

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with preserved_modes(self.model, train=self.mode == "train"), _math_attention():
            yield

    def _in_mode(self, fn: Callable[[], _T]) -> _T:
        with self._context():
            return fn()

    def value(self, w: Tensor) -> float:
        """``L(w)``."""
        with torch.no_grad():
            return float(self._in_mode(lambda: self._loss(w)))

    def grad(self, w: Tensor) -> Tensor:
        """``grad L(w)``."""
        return self._in_mode(lambda: torch.func.grad(self._loss)(w)).detach()

    def hvp(self, w: Tensor, v: Tensor) -> Tensor:
        """``H(w) v`` (Pearlmutter 1994) by ``self.route``."""
        self.num_hvp += 1
        if self.route == "forward_over_reverse":
            return self._in_mode(lambda: torch.func.jvp(torch.func.grad(self._loss), (w,), (v,))[1]).detach()
        leaves, grads = self._gradient_graph(w)
        vs = self.space.views(v.to(w))
        used = [i for i, g in enumerate(grads) if g.requires_grad]
        out = [torch.zeros_like(t) for t in leaves]
        if used:
            with self._context():
                parts = torch.autograd.grad(
                    [grads[i] for i in used],
                    leaves,
                    grad_outputs=[vs[i] for i in used],
                    retain_graph=True,
                    allow_unused=True,
                )
            out = [o if p is None else p for o, p in zip(out, parts, strict=True)]
        return torch.cat([t.detach().reshape(-1) for t in out])

    def hvp_many(self, w: Tensor, vs: Tensor, *, batched: bool | str = "auto") -> Tensor:
        """``H(w) v`` for every row ``v`` of ``vs`` (n, P): one pass over the data for all of them when
        ``batched`` (``torch.func.vmap`` over the tangents of forward-over-reverse, or autograd's batched
        ``grad_outputs`` on the kept gradient graph), else one product after another. ``"auto"`` times both on
        the first call with at least 4 vectors and keeps the faster for this loss (the products are the same up
        to the order of floating-point sums); a model whose operations have no batching rule falls back to the
        loop."""
        vs = vs.reshape(-1, w.numel())
        n = vs.shape[0]
        choice: bool | None = self._batched_choice if batched == "auto" else bool(batched)
        if choice is None and n >= 4:  # the probe: two products each way, both kept
            import time

            t0 = time.perf_counter()
            first = torch.stack([self.hvp(w, v) for v in vs[:2]])
            t1 = time.perf_counter()
            try:
                second = self._hvp_batched(w, vs[2:4])
                t2 = time.perf_counter()
                self._batched_choice = (t2 - t1) < (t1 - t0)
            except (RuntimeError, NotImplementedError):  # an operation without a vmap rule
                second = torch.stack([self.hvp(w, v) for v in vs[2:4]])
                self._batched_choice = False
            rest = self.hvp_many(w, vs[4:], batched=self._batched_choice) if n > 4 else vs[:0]
            return torch.cat([first, second, rest])
        if choice and n > 1:
            try:
                return self._hvp_batched(w, vs)
            except (RuntimeError, NotImplementedError):
                self._batched_choice = False
        return torch.stack([self.hvp(w, v) for v in vs]) if n else vs.clone()

    def _hvp_batched(self, w: Tensor, vs: Tensor) -> Tensor:
        self.num_hvp += vs.shape[0]
        if self.route == "forward_over_reverse":

            def one(v: Tensor) -> Tensor:
                return torch.func.jvp(torch.func.grad(self._loss), (w,), (v,))[1]

            return self._in_mode(lambda: torch.func.vmap(one)(vs.to(w))).detach()
        leaves, grads = self._gradient_graph(w)
        used = [i for i, g in enumerate(grads) if g.requires_grad]
        out = [torch.zeros((vs.shape[0], *t.shape), dtype=t.dtype, device=t.device) for t in leaves]
        if used:
            views = [torch.stack([self.space.views(v.to(w))[i] for v in vs]) for i in used]
            with self._context():
                parts = torch.autograd.grad(
                    [grads[i] for i in used],
                    leaves,
                    grad_outputs=views,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            out = [o if p is None else p for o, p in zip(out, parts, strict=True)]
        return torch.cat([t.detach().reshape(vs.shape[0], -1) for t in out], dim=1)

    def _gradient_graph(self, w: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``(leaves, grad L(leaves))`` with the gradient's graph kept, built once per ``w`` (by value).

        One leaf per parameter tensor, as PyHessian differentiates the module's parameters: measured about
        10% faster per product than one flat leaf split into views (the same numbers)."""
        cached = self._graph
        if cached is not None and (cached[0] is w or (cached[0].shape == w.shape and torch.equal(cached[0], w))):
            return cached[1], cached[2]
        self._graph = None  # free the old graph before building the new one
        leaves = [t.detach().clone().requires_grad_(True) for t in self.space.views(w)]
        with torch.enable_grad(), self._context():
            raw = torch.autograd.grad(self._loss_at(leaves), leaves, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, raw, strict=True)]
        self._graph = (w.detach().clone(), leaves, grads)
        return leaves, grads

    def release(self) -> None:
        """Drop the kept gradient graph (double-backward route) to free its memory."""
        self._graph = None


def lanczos_tridiagonal(
    loss: LossFunction, w: Tensor, q0: Tensor, steps: int, *, k: int = 1, tol: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``m <= steps`` Lanczos steps from the start ``q0`` (normalised here) with full reorthogonalisation in
    float64 (Lanczos 1950; Golub & Van Loan 10.1): the tridiagonal ``T = Q^T H Q`` (m, m) and the orthonormal
    Krylov basis ``Q`` (m, P). Stops early when the Krylov space is exhausted, or (``tol > 0``) when the top-``k``
    Ritz values change by less than ``tol`` relative between two steps."""
    q = q0.to(device=w.device, dtype=torch.float64)
    basis = [q / q.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    prev: Tensor | None = None
    for j in range(steps):
        z = loss.hvp(w, basis[-1].to(w.dtype)).double()
        alphas.append(float(z @ basis[-1]))
        qs = torch.stack(basis)
        z -= qs.T @ (qs @ z)  # full reorthogonalisation (twice is enough)
        z -= qs.T @ (qs @ z)
        beta = float(z.norm())
        if tol > 0 and j + 1 >= k:
            cur = torch.linalg.eigvalsh(_tridiagonal(alphas, betas)).flip(0)[:k]
            if prev is not None and bool(((cur - prev).abs() <= tol * cur.abs().clamp_min(1e-12)).all()):
                break
            prev = cur
        if j == steps - 1 or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(z / beta)
    n = len(alphas)
    return _tridiagonal(alphas, betas[: n - 1]), torch.stack(basis[:n])


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64, device="cpu"))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64, device="cpu")
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def lanczos(
    loss: LossFunction,
    w: Tensor,
    k: int = 1,
    *,
    iterations: int | None = None,
    generator: torch.Generator | None = None,
    tol: float = 0.0,
) -> dict[str, Any]:
    """Top-``k`` Hessian eigenvalues (largest first) and eigenvectors at ``w`` by Lanczos (Lanczos 1950).

    After m products the orthonormal Krylov basis ``Q = [q_1 .. q_m]`` of ``span{q_1, H q_1, ..}`` gives the
    tridiagonal ``T = Q^T H Q`` (diagonal ``alpha_j = q_j^T H q_j``, off-diagonal ``beta_j``); the top
    eigenvalues of T (Ritz values) approximate H's and ``Q s`` its eigenvectors.

    Runs ``iterations`` products (default ``max(3k, 20)``, at most P), with full reorthogonalisation in
    float64; returns ``eigenvalues`` (k,), ``eigenvectors`` (k, P) and ``num_hvp``. ``tol > 0`` stops early
    once the top-k Ritz values change by less than ``tol`` relative between two iterations.
    """
    p = w.numel()
    if not isinstance(k, int) or k < 1 or k > p:
        raise InputError(f"k must be between 1 and the number of parameters ({p}), got {k}")
    m = min(p, iterations or max(3 * k, 20))
    if m < k:
        raise InputError(f"iterations ({m}) must be at least k ({k})")
    start = loss.num_hvp
    q = torch.randn(p, generator=generator, dtype=torch.float64, device=_draw_device(generator)).to(w.device)
    t, basis = lanczos_tridiagonal(loss, w, q, m, k=k, tol=tol)
    evals, evecs = torch.linalg.eigh(t)
    order = torch.argsort(evals, descending=True)[:k]
    vectors = evecs[:, order].T.to(basis.device) @ basis
    return {"eigenvalues": evals[order], "eigenvectors": vectors.to(w.dtype), "num_hvp": loss.num_hvp - start}


def power_iteration(
    loss: LossFunction, w: Tensor, *, iterations: int = 100, tol: float = 0.0, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """The eigenvalue of largest magnitude by power iteration ``v <- H v / ||H v||``, ``lambda = v^T H v``
    (the baseline Lanczos is measured against; PyHessian's method, Yao et al. 2020)."""
    v = torch.randn(w.numel(), generator=generator, dtype=torch.float64, device=_draw_device(generator))
    v = v.to(w.device) / v.norm()
    start = loss.num_hvp
    value = 0.0
    for _ in range(iterations):
        hv = loss.hvp(w, v.to(w.dtype)).double()
        new = float(v @ hv)
        norm = float(hv.norm())
        if norm == 0:
            break
        v = hv / norm
        if tol > 0 and abs(new - value) <= tol * abs(new):
            value = new
            break
        value = new
    return {"eigenvalue": value, "eigenvector": v.to(w.dtype), "num_hvp": loss.num_hvp - start}


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Random vectors are drawn where the generator lives (the CPU for the usual seeded ``torch.Generator()``)
    and then moved to the weights' device: the same seed gives the same vectors on every device."""
    return generator.device if generator is not None else torch.device("cpu")


def rademacher(
    n: int, p: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device | str | None = None
) -> Tensor:
    """(n, p) independent +-1 entries, drawn one row after another (so ``n`` rows equal ``n`` single draws) on
    the generator's device, then moved to ``device``."""
    dev = _draw_device(generator)
    rows = [torch.randint(0, 2, (p,), generator=generator, device=dev).to(dtype) * 2 - 1 for _ in range(n)]
    return torch.stack(rows).to(device if device is not None else dev)


def hvp_rows(loss: LossFunction, w: Tensor, vs: Tensor, batch: int | None = None) -> Tensor:
    """``H(w) v`` for every row of ``vs`` (n, P): one at a time, or ``batch`` at a time through
    :meth:`LossFunction.hvp_many` (which batches them where that is faster)."""
    if len(vs) == 0:
        return vs.clone()
    if batch is None or batch <= 1:
        return torch.stack([loss.hvp(w, v) for v in vs])
    return torch.cat([loss.hvp_many(w, chunk) for chunk in vs.split(batch)])


def hutchinson_trace(
    loss: LossFunction,
    w: Tensor,
    samples: int = 100,
    generator: torch.Generator | None = None,
    *,
    batch: int | None = None,
) -> dict[str, float]:
    """``tr(H) ~ mean_i z_i^T H z_i`` with Rademacher ``z_i`` (Hutchinson 1990; unbiased since E[z z^T] = I);
    returns ``trace``, ``stderr`` and ``samples``. ``batch``: take the products ``batch`` at a time
    (:meth:`LossFunction.hvp_many`, which batches them where that is faster); the draws are the same."""
    if samples < 2:
        raise InputError(f"samples must be at least 2 (for a standard error), got {samples}")
    z = rademacher(samples, w.numel(), generator, w.dtype, w.device)
    vals = [float(zi @ hi) for zi, hi in zip(z, hvp_rows(loss, w, z, batch), strict=True)]
    t = torch.tensor(vals, dtype=torch.float64, device="cpu")
    return {"trace": float(t.mean()), "stderr": float(t.std() / math.sqrt(samples)), "samples": samples}


def epsilon_sharpness(
    loss: LossFunction, w: Tensor, epsilon: float = 1e-3, *, steps: int = 20, lr: float | None = None
) -> dict[str, float]:
    """Keskar et al. (2017) sharpness: the largest loss increase in the box ``|d_i| <= eps (|w_i| + 1)``.

    Projected gradient ascent: sign steps of ``lr`` times the box half-width (default 0.25), clipped to the box.
    Returns ``increase`` (``max L(w + d) - L(w)``), ``sharpness`` (``100 increase / (1 + L(w))``) and ``base``.
    """
    if not epsilon > 0:
        raise InputError(f"epsilon must be positive, got {epsilon}")
    box = epsilon * (w.abs() + 1)
    step = box * (lr if lr is not None else 0.25)
    base = loss.value(w)
    d = torch.zeros_like(w)
    best = base
    for _ in range(steps):
        g = loss.grad(w + d)
        d = torch.maximum(torch.minimum(d + step * g.sign(), box), -box)
        best = max(best, loss.value(w + d))
    inc = best - base
    return {"increase": inc, "sharpness": 100 * inc / (1 + base), "base": base, "epsilon": epsilon}
