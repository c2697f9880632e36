"""Geometry in weight space: planes, lines, rays and random directions (talk slides 7, 9-15).

* :class:`Plane` through three weight vectors a, b, c (Garipov et al. 2018): ``u = (c - a) / ||c - a||``,
  ``v = (b - a) - <b - a, u> u``, ``v /= ||v||``; ``(x, y) -> a + x u + y v``; any vector projects to
  ``(<p - a, u>, <p - a, v>)``. Coordinates are in weight units (Euclidean distance in weight space).
* :func:`line`: points at signed distance ``s`` from ``a`` towards ``b`` (slide 15).
* :func:`random_direction`: a Gaussian direction, unit-norm, or filter-normalised (Li et al. 2018): each
  filter (output unit: a slice along dim 0 of a weight with 2 or more dims) is rescaled to the norm of the
  same filter of the weights; 1-D parameters (biases, norm scales) get a zero direction unless
  ``include_1d=True``, in which case each is rescaled as a whole to the norm of its weights.
* :func:`pca_plane`: the plane through the mean of collected iterates spanned by their top two principal
  directions (randomised SVD is not needed at these sizes: ``torch.linalg.svd`` of the centred (n, P)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..core.weights import WeightSpace, WeightSpaceError
from ..errors import InputError
from ..evaluation.folding import AffinePoints

__all__ = ["Plane", "Line", "line", "random_direction", "pca_plane", "grid_axes", "valley_width"]


def _same_length(*vs: Tensor) -> None:
    sizes = {v.numel() for v in vs}
    if len(sizes) > 1 or any(v.dim() != 1 for v in vs):
        raise WeightSpaceError(
            f"weight vectors must be 1-D and of equal length, got sizes {sorted(sizes)}; "
            "are they from different architectures?"
        )


class Plane:
    """The plane through weight vectors ``a``, ``b``, ``c`` with an orthonormal basis ``u``, ``v``.

    Raises :class:`WeightSpaceError` when the points coincide or are collinear (relative tolerance ``tol``).
    """

    def __init__(self, a: Tensor, b: Tensor, c: Tensor, *, tol: float = 1e-6) -> None:
        _same_length(a, b, c)
        a64, b64, c64 = (t.detach().double() for t in (a, b, c))
        scale = max(float(a64.norm()), float(b64.norm()), float(c64.norm()), 1e-30)
        ac = c64 - a64
        if float(ac.norm()) <= tol * scale:
            raise WeightSpaceError("points a and c coincide: a plane needs three distinct points")
        u = ac / ac.norm()
        ab = b64 - a64
        v = ab - (ab @ u) * u
        if float(v.norm()) <= tol * max(float(ab.norm()), tol * scale):
            raise WeightSpaceError("the three points are collinear (or b coincides with a): no unique plane")
        v = v / v.norm()
        self.origin, self.u, self.v = a64, u, v
        self.dtype = a.dtype

    def point(self, x: float, y: float) -> Tensor:
        """``a + x u + y v`` in the points' dtype."""
        return (self.origin + x * self.u + y * self.v).to(self.dtype)

    def grid(self, xs: Sequence[float], ys: Sequence[float]) -> AffinePoints:
        """The points ``a + x u + y v`` for ``y`` in ``ys`` (rows) and ``x`` in ``xs``, as
        :class:`valleys.evaluation.folding.AffinePoints` (each equal to :meth:`point`), so that the engine can
        fold the model's first affine layer."""
        coords = torch.tensor([(x, y) for y in ys for x in xs], dtype=torch.float64).reshape(-1, 2)
        return AffinePoints(torch.stack([self.u, self.v]), coords, self.origin, dtype=self.dtype)

    def project(self, p: Tensor) -> tuple[float, float]:
        """Coordinates ``(<p - a, u>, <p - a, v>)`` of ``p``'s projection onto the plane."""
        _same_length(self.origin, p)
        d = p.detach().double() - self.origin
        return float(d @ self.u), float(d @ self.v)

    def residual(self, p: Tensor) -> float:
        """Distance from ``p`` to the plane."""
        x, y = self.project(p)
        return float((p.detach().double() - self.origin - x * self.u - y * self.v).norm())


def grid_axes(
    coords: Sequence[tuple[float, float]], n: int = 21, margin: float = 0.2
) -> tuple[list[float], list[float]]:
    """``n`` evenly spaced x and y values covering ``coords`` with ``margin`` (a fraction of the span) around."""
    if n < 2:
        raise InputError(f"a grid needs at least 2 points per axis, got {n}")
    xs = [c[0] for c in coords]
    ys = [c[1] for c in coords]
    axes = []
    for lo, hi in ((min(xs), max(xs)), (min(ys), max(ys))):
        span = hi - lo or 1.0
        axes.append(torch.linspace(lo - margin * span, hi + margin * span, n).tolist())
    return axes[0], axes[1]


class Line:
    """``s -> a + s u`` with the unit vector ``u``: a line in weight space by signed distance from ``a``;
    ``length`` is the distance between the two points it was drawn through (see :func:`line`)."""

    def __init__(self, a: Tensor, unit: Tensor, length: float) -> None:
        self.a, self.unit, self.length = a, unit, length

    def __call__(self, s: float | Tensor) -> Tensor:
        return self.a + float(s) * self.unit

    def points(self, distances: Sequence[float]) -> AffinePoints:
        """The points at signed ``distances`` from ``a`` as :class:`valleys.evaluation.folding.AffinePoints`."""
        coords = torch.tensor(list(distances), dtype=torch.float64).reshape(-1, 1)
        return AffinePoints(self.unit[None], coords, self.a, dtype=self.a.dtype)


def line(a: Tensor, b: Tensor) -> Line:
    """``s -> a + s (b - a) / ||b - a||``: the line through two solutions by signed distance from ``a``
    (``line(a, b).length`` is ``||b - a||``)."""
    _same_length(a, b)
    d = (b - a).double()
    norm = float(d.norm())
    if norm == 0:
        raise WeightSpaceError("the two points coincide: no line through them")
    return Line(a, (d / norm).to(a.dtype), norm)


def random_direction(
    space: WeightSpace,
    weights: Tensor,
    *,
    filter_norm: bool = True,
    include_1d: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random direction in ``space``: Gaussian entries, then filter-normalised (see the module docstring)
    or, with ``filter_norm=False``, scaled to unit Euclidean norm."""
    space.check_vector(weights, what="weights")
    d = torch.randn(space.size, generator=generator, dtype=weights.dtype)
    if not filter_norm:
        return d / d.norm()
    for s in space.slots:
        dv = d[s.offset : s.offset + s.numel].view(s.shape)
        wv = weights[s.offset : s.offset + s.numel].view(s.shape)
        if len(s.shape) <= 1:
            if include_1d:
                dv.mul_(wv.norm() / dv.norm().clamp_min(1e-30))
            else:
                dv.zero_()
            continue
        dn = dv.reshape(s.shape[0], -1).norm(dim=1)
        wn = wv.reshape(s.shape[0], -1).norm(dim=1)
        dv.mul_((wn / dn.clamp_min(1e-30)).view(-1, *([1] * (len(s.shape) - 1))))
    return d


def pca_plane(iterates: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(mean, u, v, explained)``: the top-two principal directions of (n, P) iterates (n >= 3) and the
    fraction of variance each explains."""
    if iterates.dim() != 2 or iterates.shape[0] < 3:
        raise InputError(f"need at least 3 iterates as an (n, P) tensor, got shape {tuple(iterates.shape)}")
    x = iterates.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    return mean.to(iterates.dtype), vh[0].to(iterates.dtype), vh[1].to(iterates.dtype), (var[:2] / var.sum())


def valley_width(distances: Sequence[float], losses: Sequence[float], rise: float) -> float:
    """The first distance at which ``loss - loss[0]`` reaches ``rise`` (linear interpolation); ``inf`` if never."""
    base = losses[0]
    for i in range(1, len(losses)):
        if losses[i] - base >= rise:
            d0, d1, l0, l1 = distances[i - 1], distances[i], losses[i - 1] - base, losses[i] - base
            return d0 + (rise - l0) * (d1 - d0) / (l1 - l0) if l1 != l0 else d1
    return math.inf
