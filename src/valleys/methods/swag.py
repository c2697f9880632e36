"""SWAG: a Gaussian over weights from the first two moments of the SGD trajectory.

Maddox, Izmailov, Garipov, Vetrov, Wilson (2019), "A Simple Baseline for Bayesian Uncertainty in Deep
Learning", NeurIPS. On top of SWA's running mean ``m`` and Welford variance ``var`` (:class:`valleys.SWA`),
keep the last K deviations ``D_i = w_i - m_i`` (``m_i`` the mean after including ``w_i``) in a (K, P) ring
buffer. With ``k = min(n, K)`` collected deviations the posterior is

    N(m, scale * (diag(var) + D^T D / (k - 1)))          (low rank plus diagonal, "SWAG")
    N(m, scale * diag(var))                              ("SWAG-diagonal")

and a sample is ``w = m + sqrt(scale) * (sqrt(var) * z1 + D^T z2 / sqrt(k - 1))``, z1 ~ N(0, I_P),
z2 ~ N(0, I_k). The paper's defaults: K = 20, scale 1/2 for SWAG (1 for SWAG-diagonal), 30 samples, one
BatchNorm recompute per sample. Memory: (K + 2) copies of the weights; the buffers' device and dtype are
configurable (e.g. keep them on the CPU for a GPU model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.weights import WeightSpaceError
from ..errors import InputError
from .averaging import SWA, NotCollectedError

__all__ = ["SWAG", "MultiSWAG", "CHUNK", "check_sampling", "check_chunk", "check_count", "draw", "in_chunks"]


def check_sampling(name: str, n: int, k: int, scale: float, diagonal: bool) -> None:
    """Refuse sampling a SWAG posterior (``name``) before any collect, with a bad ``scale``, or low rank with
    fewer than two deviations."""
    if n == 0:
        raise NotCollectedError(f"{name}: nothing collected yet; call collect(model) during training first")
    if not (isinstance(scale, (int, float)) and scale >= 0 and math.isfinite(scale)):
        raise InputError(f"scale must be a finite number >= 0, got {scale!r}")
    if not diagonal and k < 2:
        raise InputError(
            f"low-rank SWAG needs at least 2 collected deviations, this {name} has {k}; collect more "
            "iterates or sample with diagonal=True"
        )


def draw(
    mean: Tensor,
    variance: Tensor,
    deviations: Tensor,
    n: int,
    *,
    size: int,
    lo: int = 0,
    scale: float = 0.5,
    diagonal: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Entries ``[lo, lo + len(mean))`` of ``n`` SWAG draws over ``size`` weights, shape (n, len(mean)):
    ``m + sqrt(scale) (sqrt(var) z1 + D^T z2 / sqrt(k - 1))`` with ``z1 ~ N(0, I_size)`` (drawn whole, then
    sliced, so a slice of a draw equals the draw's slice for the same generator) and ``z2 ~ N(0, I_k)``;
    ``mean``, ``variance`` and the (k, len(mean)) ``deviations`` are that slice's. The normals are drawn where
    ``generator`` lives (a CPU generator for a CUDA posterior: the same draws as on the CPU for a seed) and
    moved to the posterior's device."""
    dev = generator.device if generator is not None else mean.device
    z1 = torch.randn(n, size, device=dev, dtype=mean.dtype, generator=generator)
    if lo or mean.numel() != size:
        z1 = z1[:, lo : lo + mean.numel()]
    out = z1.to(mean.device).mul_(variance.clamp_min(0).sqrt())
    if not diagonal:
        k = deviations.shape[0]
        z2 = torch.randn(n, k, device=dev, dtype=mean.dtype, generator=generator).to(mean.device)
        out.addmm_(z2, deviations, alpha=1 / math.sqrt(k - 1))  # one pass over D for the n draws, no temporary
    return out.mul_(math.sqrt(scale)).add_(mean)


#: how many draws share one pass over the deviation matrix by default (memory: ``chunk`` P-vectors at once)
CHUNK = 8


def check_chunk(chunk: int) -> None:
    """Refuse a chunk size that is not an integer >= 1."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be an integer >= 1 (draws per pass over the deviations), got {chunk!r}")


def in_chunks(n: int, chunk: int, draw_chunk: Callable[[int], Tensor]) -> Iterator[Tensor]:
    """The ``n`` draws as ``draw_chunk(c)`` blocks of ``c = chunk`` rows (the last one smaller), yielded row by
    row: ``sample(n, chunk=c)`` and ``samples(n, chunk=c)`` make the same calls, so they give the same draws bit
    for bit while ``samples`` holds only ``c`` P-vectors at once."""
    for start in range(0, n, chunk):
        yield from draw_chunk(min(chunk, n - start))


def check_count(n: int) -> None:
    """Refuse a number of samples that is not an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of samples must be an integer >= 1, got {n!r}")


class SWAG(SWA):
    """Low-rank-plus-diagonal Gaussian over weights from collected SGD iterates (SWAG).

    Args:
        model: defines the weight space (see :class:`valleys.WeightSpace`).
        names: optional parameter subset (e.g. only the last layer).
        rank: K, the number of deviation vectors kept (>= 1; low-rank sampling needs k >= 2 collected).
        device, dtype: where the mean, variance and deviation buffers live.

    Use in your own loop exactly like :class:`valleys.SWA` (``collect(model)`` once per epoch), then
    ``sample(30)`` or :func:`valleys.evaluation.predict.bma`.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        *,
        rank: int = 20,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise InputError(f"rank must be an integer >= 1, got {rank!r}")
        super().__init__(model, names, moments=True, device=device, dtype=dtype, check_finite=check_finite)
        self.rank = rank
        self._dev = torch.zeros(rank, self.space.size, device=self.device, dtype=self.dtype)
        self._dev_views = [self.space.views(row) for row in self._dev]

    def _after_collect(self, delta: list[Tensor], n_before: int) -> None:
        # w - m_new = delta * n / (n + 1), written in place into the next ring slot: O(P), no concatenation
        row = self._dev_views[n_before % self.rank]
        torch._foreach_copy_(row, delta)
        torch._foreach_mul_(row, n_before / (n_before + 1))

    # ------------------------------------------------------------------ the Gaussian
    @property
    def k(self) -> int:
        """Number of deviations in the buffer: ``min(n, K)``."""
        return min(self.n, self.rank)

    @property
    def deviations(self) -> Tensor:
        """The (k, P) deviation matrix D (rows in ring order, which does not matter for D^T D)."""
        return self._dev[: self.k]

    def _check(self, scale: float, diagonal: bool) -> None:
        check_sampling("SWAG", self.n, self.k, scale, diagonal)

    def covariance(self, scale: float = 0.5, *, diagonal: bool = False) -> Tensor:
        """The dense P x P covariance (for tests and tiny models only): ``scale (diag(var) + D^T D/(k-1))``."""
        self._check(scale, diagonal)
        cov = torch.diag(self.variance)
        if not diagonal:
            d = self.deviations
            cov = cov + d.T @ d / (self.k - 1)
        return scale * cov

    def sample(
        self,
        n: int = 1,
        *,
        scale: float = 0.5,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
        chunk: int | None = None,
    ) -> Tensor:
        """Draw ``n`` weight vectors, shape (n, P): ``m + sqrt(scale)(sqrt(var) z1 + D^T z2 / sqrt(k-1))``.

        ``scale=0`` returns the SWA mean; ``diagonal=True`` drops the low-rank term (SWAG-diagonal, whose
        paper default is ``scale=1``). The normals of a block of draws are drawn together (``z1`` for the
        block, then ``z2``) and the block costs one pass over ``D``: ``chunk=None`` draws all ``n`` as one
        block, ``chunk=c`` in blocks of ``c``, the draws of :meth:`samples` with the same ``chunk``.
        """
        check_count(n)
        if chunk is not None:
            check_chunk(chunk)
        self._check(scale, diagonal)
        if chunk is not None and chunk < n:
            return torch.stack(list(self.samples(n, scale=scale, diagonal=diagonal, generator=generator, chunk=chunk)))
        return self._draw(n, scale, diagonal, generator)

    def _draw(self, n: int, scale: float, diagonal: bool, generator: torch.Generator | None) -> Tensor:
        return draw(
            self.mean,
            self.variance,
            self.deviations,
            n,
            size=self.space.size,
            scale=scale,
            diagonal=diagonal,
            generator=generator,
        )

    def samples(
        self,
        n: int,
        *,
        scale: float = 0.5,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
        chunk: int = CHUNK,
    ) -> Iterator[Tensor]:
        """Yield ``n`` samples one at a time, drawn ``chunk`` at a time (one pass over the (k, P) deviations
        per block, ``chunk`` P-vectors in memory at once): bit for bit the rows of ``sample(n, chunk=chunk)``.
        ``chunk=1`` gives the draws of ``n`` calls of ``sample(1)``. Bad arguments raise at the call."""
        check_count(n)
        check_chunk(chunk)
        self._check(scale, diagonal)
        return in_chunks(n, chunk, lambda c: self._draw(c, scale, diagonal, generator))

    def log_prob(self, w: Tensor, *, scale: float = 0.5, diagonal: bool = False, min_var: float = 1e-30) -> Tensor:
        """Log density of weight vector(s) ``w`` ((P,) or (S, P)) under the SWAG Gaussian.

        Computed through the low-rank-plus-diagonal form (``LowRankMultivariateNormal``: Woodbury and the
        matrix determinant lemma), never a P x P matrix. Variances are clamped at ``min_var``.
        """
        self._check(scale, diagonal)
        if scale == 0:
            raise InputError("log_prob needs scale > 0 (scale 0 is a point mass at the SWA mean)")
        if w.shape[-1] != self.space.size:
            raise WeightSpaceError(f"w has {w.shape[-1]} entries per vector, this SWAG has {self.space.size}")
        var = scale * self.variance.clamp_min(min_var)
        if diagonal:
            factor = torch.zeros(self.space.size, 1, device=self.device, dtype=self.dtype)
        else:
            factor = self.deviations.T * math.sqrt(scale / (self.k - 1))
        dist = torch.distributions.LowRankMultivariateNormal(self.mean, factor, var, validate_args=False)
        return dist.log_prob(w.to(self.device, self.dtype))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rank"] = self.rank
        state["deviations"] = self._dev
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("rank", -1)) != self.rank:
            raise WeightSpaceError(f"state has rank {state.get('rank')}, this SWAG has rank {self.rank}")
        super().load_state_dict(state)
        self._dev.copy_(state["deviations"])


class MultiSWAG:
    """An ensemble of independently trained SWAGs (Wilson & Izmailov 2020); samples are drawn from each in turn."""

    def __init__(self, members: Sequence[SWAG]) -> None:
        if not members:
            raise InputError("MultiSWAG needs at least one SWAG")
        sizes = {m.space.signature().__repr__() for m in members}
        if len(sizes) > 1:
            raise WeightSpaceError("MultiSWAG members differ in architecture (parameter names or shapes)")
        self.members = list(members)

    def samples(
        self,
        n_per_member: int,
        *,
        scale: float = 0.5,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
        chunk: int = CHUNK,
    ) -> Iterator[Tensor]:
        """Yield ``n_per_member`` samples from every member (len(members) * n_per_member in all), each member's
        drawn ``chunk`` at a time (:meth:`SWAG.samples`)."""
        for m in self.members:
            yield from m.samples(n_per_member, scale=scale, diagonal=diagonal, generator=generator, chunk=chunk)
