"""The Hessian's spectrum beyond its top: Hutch++ traces, the eigenvalue density by stochastic Lanczos
quadrature, and per-block (per-layer) top eigenvalues and traces.

* :func:`hutchpp_trace` (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation"):
  with m products split in thirds, ``S`` (P, m/3) Rademacher, ``Q = orth(H S)``,
  ``tr(H) ~ tr(Q^T H Q) + (3/m) tr(G^T (I - QQ^T) H (I - QQ^T) G)`` over m/3 fresh Rademacher columns ``G``.
  The top of the spectrum is taken exactly and Hutchinson's estimator only sees the rest, so the error falls
  as O(1/m) instead of O(1/sqrt(m)) when the spectrum decays (proved for positive semi-definite matrices;
  a network's Hessian is indefinite, so the gain is measured, not assumed).
* :func:`spectral_density` (Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via
  Hessian Eigenvalue Density"; Lin, Saad & Yang 2016): for each of ``starts`` normalised Rademacher starts,
  m Lanczos steps give ``T = Q^T H Q``; its eigenvalues ``theta_j`` and the squared first components
  ``tau_j`` of its eigenvectors are a Gauss quadrature of the spectral measure seen from the start, so
  ``mean over starts of sum_j tau_j f(theta_j)`` estimates ``tr(f(H)) / P``; :func:`density_curve` smooths the
  nodes with Gaussians exactly as PyHessian's ``density_generate`` (Yao et al. 2020) and
  :func:`spectral_moments` gives ``tr(H^k) / P``.
* :func:`block_spectra`: the same quantities with the Hessian restricted to a named group of parameters
  (a diagonal block of H: the other parameters held fixed), per layer by default. The blocks' traces add up
  to the whole trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.weights import WeightSpace
from ..errors import InputError
from .hessian import LossFunction, hutchinson_trace, hvp_rows, lanczos, lanczos_tridiagonal, rademacher

__all__ = ["hutchpp_trace", "spectral_density", "density_curve", "spectral_moments", "block_spectra", "layer_blocks"]


def hutchpp_trace(
    loss: LossFunction,
    w: Tensor,
    products: int = 99,
    generator: torch.Generator | None = None,
    *,
    batch: int | None = None,
) -> dict[str, float]:
    """``tr(H)`` by Hutch++ (Meyer et al. 2021, Algorithm 1) with ``products`` Hessian-vector products (at least
    6: a third sketch ``S``, a third ``H Q`` for the exact part, a third Hutchinson probes ``G`` of the rest).

    Returns ``trace``, ``stderr`` (the standard error of the Hutchinson part; the sketched part has none),
    ``exact_part`` (``tr(Q^T H Q)``), ``products`` and ``rank`` (the sketch's width). ``batch``: products
    ``batch`` at a time (:meth:`LossFunction.hvp_many`)."""
    if not isinstance(products, int) or products < 6:
        raise InputError(f"products must be an integer >= 6 (three thirds of at least 2), got {products!r}")
    p = w.numel()
    k = min(products // 3, p)
    g = products - 2 * k
    s = rademacher(k, p, generator, torch.float64, w.device)
    y = hvp_rows(loss, w, s.to(w.dtype), batch).double()  # (k, P): rows of H S
    q, _ = torch.linalg.qr(y.T)  # (P, k) orthonormal basis of range(H S)
    hq = hvp_rows(loss, w, q.T.contiguous().to(w.dtype), batch).double()  # (k, P)
    exact = float((q.T * hq).sum())
    gs = rademacher(g, p, generator, torch.float64, w.device)
    gs = gs - (gs @ q) @ q.T  # (I - QQ^T) G
    hg = hvp_rows(loss, w, gs.to(w.dtype), batch).double()
    vals = (gs * hg).sum(1)
    return {
        "trace": exact + float(vals.mean()),
        "stderr": float(vals.std() / math.sqrt(g)) if g > 1 else math.nan,
        "exact_part": exact,
        "products": 2 * k + g,
        "rank": k,
    }


def spectral_density(
    loss: LossFunction, w: Tensor, *, steps: int = 100, starts: int = 1, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): ``starts`` runs of ``steps`` Lanczos steps from
    normalised Rademacher vectors, full reorthogonalisation, as PyHessian's ``density(iter, n_v)``.

    Returns ``nodes`` and ``weights`` (lists of ``starts`` lists: each run's Ritz values ``theta_j`` and squared
    first eigenvector components ``tau_j``, which sum to 1) and ``num_hvp``. Feed them to
    :func:`density_curve` and :func:`spectral_moments`."""
    p = w.numel()
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(starts, int) or starts < 1:
        raise InputError(f"starts must be an integer >= 1, got {starts!r}")
    begin = loss.num_hvp
    nodes, weights = [], []
    for _ in range(starts):
        v = rademacher(1, p, generator, torch.float64, w.device)[0]
        t, _ = lanczos_tridiagonal(loss, w, v, min(steps, p))
        theta, vecs = torch.linalg.eigh(t)
        nodes.append(theta.cpu().tolist())
        weights.append((vecs[0] ** 2).cpu().tolist())
    return {"nodes": nodes, "weights": weights, "num_hvp": loss.num_hvp - begin, "steps": steps, "starts": starts}


def density_curve(
    nodes: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    *,
    bins: int = 10000,
    sigma_squared: float = 1e-5,
    overhead: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """The smoothed density of :func:`spectral_density`'s quadrature, as PyHessian's ``density_generate``:
    a grid of ``bins`` points from the mean (over runs) smallest node minus ``overhead`` to the mean largest
    plus ``overhead``; at each x the mean over runs of ``sum_j tau_j N(x; theta_j, s^2)`` with
    ``s^2 = sigma_squared * max(1, range)``; normalised to integrate to 1 on the grid. Returns ``(grid, density)``
    in float64."""
    theta = torch.tensor(nodes, dtype=torch.float64, device="cpu")
    tau = torch.tensor(weights, dtype=torch.float64, device="cpu")
    if theta.dim() != 2 or theta.shape != tau.shape or theta.numel() == 0:
        raise InputError("nodes and weights must be equal-shaped lists of runs (from spectral_density)")
    hi = float(theta.max(1).values.mean()) + overhead
    lo = float(theta.min(1).values.mean()) - overhead
    grid = torch.linspace(lo, hi, bins, dtype=torch.float64, device="cpu")
    var = sigma_squared * max(1.0, hi - lo)
    density = torch.zeros(bins, dtype=torch.float64, device="cpu")
    for th, ta in zip(theta, tau, strict=True):  # runs x nodes x bins in pieces: memory bounded by one run
        g = torch.exp(-((grid[:, None] - th[None, :]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        density += g @ ta
    density /= len(theta)
    step = float(grid[1] - grid[0]) if bins > 1 else 1.0
    return grid, density / (density.sum() * step)


def spectral_moments(
    nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], orders: int = 4
) -> list[float]:
    """``[tr(H^j) / P for j = 1..orders]`` estimated by the quadrature: the mean over runs of
    ``sum_i tau_i theta_i^j`` (exact for ``j <= 2 m - 1`` with m steps, up to the start's randomness)."""
    theta = torch.tensor(nodes, dtype=torch.float64, device="cpu")
    tau = torch.tensor(weights, dtype=torch.float64, device="cpu")
    return [float((tau * theta**j).sum(1).mean()) for j in range(1, orders + 1)]


def layer_blocks(model: nn.Module) -> dict[str, list[str]]:
    """One block per module that owns trainable parameters (``"features.0"`` -> its weight and bias), in order."""
    blocks: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = name.rsplit(".", 1)[0] if "." in name else name
            blocks.setdefault(owner, []).append(name)
    return blocks


def block_spectra(
    model: nn.Module,
    batches: Iterable,
    blocks: Mapping[str, Sequence[str]] | None = None,
    *,
    k: int = 1,
    iterations: int = 20,
    trace_products: int = 30,
    trace: str = "hutchpp",
    adapter: ModelAdapter | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, dict[str, Any]]:
    """Top-``k`` eigenvalues (Lanczos, ``iterations`` products) and trace of each diagonal block of the Hessian:
    ``H_bb = d^2 L / d w_b^2`` with the other parameters fixed at their values. ``blocks``: name -> parameter
    names (default :func:`layer_blocks`). ``trace``: ``"hutchpp"`` (:func:`hutchpp_trace`), ``"hutchinson"``, or
    ``"exact"`` (P_b products with the unit vectors: for small blocks). Each block's entry: ``eigenvalues``,
    ``trace``, ``stderr``, ``parameters`` (its size), ``num_hvp``."""
    batches = list(batches)
    blocks = dict(blocks if blocks is not None else layer_blocks(model))
    if not blocks:
        raise InputError("no blocks: the model has no trainable parameters, or blocks is empty")
    if trace not in ("hutchpp", "hutchinson", "exact"):
        raise InputError(f"trace must be 'hutchpp', 'hutchinson' or 'exact', got {trace!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, names in blocks.items():
        space = WeightSpace(model, names=list(names))
        loss = LossFunction(model, batches, adapter=adapter, space=space)
        w = space.read(model)
        p = w.numel()
        top = lanczos(loss, w, k=min(k, p), iterations=min(iterations, p), generator=generator)
        if trace == "exact" or p <= 2:
            eye = torch.eye(p, dtype=w.dtype, device=w.device)
            tr = {"trace": float(sum(loss.hvp(w, e)[i] for i, e in enumerate(eye))), "stderr": 0.0}
        elif trace == "hutchpp":
            tr = hutchpp_trace(loss, w, max(6, trace_products), generator)
        else:
            tr = hutchinson_trace(loss, w, max(2, trace_products), generator)
        loss.release()
        out[name] = {
            "eigenvalues": top["eigenvalues"].tolist(),
            "trace": tr["trace"],
            "stderr": tr["stderr"],
            "parameters": p,
            "num_hvp": loss.num_hvp,
        }
    return out
