"""Low-dimensional subspaces of weight space, ``w = w_hat + P^T z`` with ``z`` in R^k.

Izmailov, Maddox, Kirichenko, Garipov, Vetrov, Wilson (2019), "Subspace Inference for Bayesian Deep
Learning", UAI. A :class:`Subspace` holds the shift ``w_hat`` (P,) and the basis ``P`` (k, P), one direction
per row. Three constructions:

* :func:`random_subspace`: k directions drawn from N(0, I_P), each scaled to unit norm, around a solution.
* :func:`pca_subspace`: the top-k principal directions of the SGD trajectory from a SWAG deviation matrix D
  (K, P): the right singular vectors of ``D / sqrt(K - 1)`` scaled by their singular values, shift at the SWA
  mean. Exact (an eigendecomposition of the small K x K Gram matrix, in float64) or randomized
  (``torch.svd_lowrank``, Halko et al. 2011). :class:`FrequentDirections` (Liberty 2013; Ghashami et al.
  2016) is the streaming, bounded-memory sketch of the same for a trajectory longer than K.
* :func:`curve_subspace`: the plane of a trained curve's endpoints and midpoint (Garipov et al. 2018), shift
  at their mean, two orthonormal directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.batches import as_tensor
from ..errors import SubspaceError

__all__ = ["Subspace", "random_subspace", "pca_subspace", "curve_subspace", "FrequentDirections", "SubspaceError"]


@dataclass
class Subspace:
    """The affine subspace ``w(z) = shift + z @ basis`` of weight space.

    Args:
        shift: ``w_hat``, a point of weight space (P,).
        basis: (k, P), one direction per row (not necessarily orthonormal: PCA rows carry their scale).
        kind: how it was built (``"random"``, ``"pca"``, ``"curve"``, ``"custom"``).
        info: what the construction reports (singular values, explained variance, ...).
    """

    shift: Tensor
    basis: Tensor
    kind: str = "custom"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.shift, Tensor) or self.shift.dim() != 1:
            raise SubspaceError(
                f"shift must be a 1-D tensor (P,), got {getattr(self.shift, 'shape', type(self.shift))}"
            )
        if not isinstance(self.basis, Tensor) or self.basis.dim() != 2 or self.basis.shape[1] != self.shift.numel():
            raise SubspaceError(
                f"basis must be (k, P) with P = {self.shift.numel()}, got {tuple(getattr(self.basis, 'shape', ()))}"
            )
        if self.basis.shape[0] < 1:
            raise SubspaceError("the basis has no directions (k = 0)")
        if not (torch.isfinite(self.shift).all() and torch.isfinite(self.basis).all()):
            raise SubspaceError("the shift or the basis holds NaN or infinite values")
        self.basis = self.basis.to(self.shift)

    @property
    def k(self) -> int:
        """The dimension of the subspace."""
        return int(self.basis.shape[0])

    @property
    def num_weights(self) -> int:
        """P, the dimension of weight space."""
        return int(self.shift.numel())

    def to_weights(self, z: Tensor) -> Tensor:
        """``shift + z @ basis``: (k,) -> (P,), or (n, k) -> (n, P) for many z at once."""
        z = as_tensor(z)
        if z.shape[-1] != self.k or z.dim() not in (1, 2):
            raise SubspaceError(f"z must be (k,) or (n, k) with k = {self.k}, got {tuple(z.shape)}")
        return self.shift + z.to(self.basis) @ self.basis

    def project(self, w: Tensor) -> Tensor:
        """Least-squares coordinates ``z = argmin ||shift + z @ basis - w||`` of (P,) or (n, P) weights:
        ``z = (B B^T)^{-1} B (w - shift)``, in float64 (for orthonormal rows simply ``B (w - shift)``)."""
        w = as_tensor(w)
        if w.shape[-1] != self.num_weights or w.dim() not in (1, 2):
            raise SubspaceError(f"w must be (P,) or (n, P) with P = {self.num_weights}, got {tuple(w.shape)}")
        b = self.basis.double()
        rhs = (w.double() - self.shift.double()) @ b.T
        z = torch.linalg.solve(b @ b.T, rhs.T).T
        return z.to(self.shift.dtype)

    def is_orthonormal(self, tol: float = 1e-5) -> bool:
        """Whether the rows are orthonormal (``B B^T = I`` to ``tol``)."""
        g = self.basis.double() @ self.basis.double().T
        return bool((g - torch.eye(self.k, dtype=torch.float64, device=g.device)).abs().max() <= tol)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, header)`` for :func:`valleys.core.checkpoint.save_checkpoint`."""
        return {"shift": self.shift, "basis": self.basis}, {"kind": self.kind, "info": self.info}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], header: dict[str, Any]) -> Subspace:
        """The inverse of :meth:`state`."""
        return cls(tensors["shift"], tensors["basis"], str(header.get("kind", "custom")), dict(header.get("info", {})))


def random_subspace(shift: Tensor, k: int, *, generator: torch.Generator | None = None) -> Subspace:
    """k random directions around ``shift``: rows drawn from N(0, I_P), each scaled to unit norm (nearly
    orthogonal for P >> k, not exactly)."""
    _check_k(k, shift.numel(), "weights")
    device = generator.device if generator is not None else shift.device  # a seed: the same rows on every device
    rows = torch.randn(k, shift.numel(), generator=generator, dtype=torch.float64, device=device)
    rows /= rows.norm(dim=1, keepdim=True)
    return Subspace(shift.detach().clone(), rows.to(shift), "random")


#: columns of the deviation matrix converted to float64 at once by the exact PCA
PCA_BLOCK = 1 << 20


def pca_subspace(
    deviations: Tensor,
    k: int,
    *,
    shift: Tensor,
    method: str = "exact",
    oversample: int = 10,
    generator: torch.Generator | None = None,
) -> Subspace:
    """The top-k principal directions of the trajectory, scaled by their singular values.

    With ``A = D / sqrt(K - 1)`` (D the (K, P) deviations of SWAG, rows ``w_i - mean``), ``A = U S V^T``; the
    basis rows are ``s_j v_j^T`` for the k largest singular values, so that ``z ~ N(0, I_k)`` gives the
    low-rank part of SWAG's covariance restricted to those directions (Izmailov et al. 2019, Sec. 3.2).
    ``method="exact"``: the eigendecomposition of the K x K Gram matrix ``A A^T`` in float64 (accumulated
    over column blocks, so the memory beyond D is O(K x 2^20) whatever P);
    ``"randomized"``: ``torch.svd_lowrank(A, q=k + oversample)`` (Halko et al. 2011). ``shift`` is usually
    the SWA mean. ``info`` holds the singular values and the explained variance ratio of each direction.
    """
    if deviations.dim() != 2:
        raise SubspaceError(f"deviations must be a (K, P) matrix, got shape {tuple(deviations.shape)}")
    num, p = deviations.shape
    if num < 2:
        raise SubspaceError(f"a PCA subspace needs at least 2 collected deviations, got {num}")
    if shift.numel() != p:
        raise SubspaceError(f"shift has {shift.numel()} weights but the deviations have {p}")
    _check_k(k, num, "collected deviations (SWAG's rank K and the number of collected iterates bound it)")
    if method not in ("exact", "randomized"):
        raise SubspaceError(f"method must be 'exact' or 'randomized', got {method!r}")
    scale = 1 / math.sqrt(num - 1)
    if method == "exact":  # float64 in column blocks: memory O(K x block), not a float64 copy of D
        gram = torch.zeros(num, num, dtype=torch.float64, device=deviations.device)
        for lo in range(0, p, PCA_BLOCK):
            block = deviations[:, lo : lo + PCA_BLOCK].double() * scale
            if not bool(torch.isfinite(block).all()):
                raise SubspaceError("the deviations hold NaN or infinite values")
            gram.addmm_(block, block.T)
        evals, u = torch.linalg.eigh(gram)  # ascending
        evals, u = evals.flip(0).clamp_min(0), u.flip(1)
        s = evals.sqrt()
        keep = s[:k]
        if bool((keep <= s[0] * 1e-12).any()):
            raise SubspaceError(
                f"the deviations span fewer than k = {k} directions (singular values "
                f"{[float(v) for v in keep]}); choose a smaller k"
            )
        # rows s_j v_j^T = u_j^T A (v_j^T = u_j^T A / s_j), block by block
        uk = u[:, :k].T.contiguous()
        rows = torch.empty(k, p, dtype=shift.dtype, device=deviations.device)
        for lo in range(0, p, PCA_BLOCK):
            rows[:, lo : lo + PCA_BLOCK] = uk @ deviations[:, lo : lo + PCA_BLOCK].double() * scale
        total = float(evals.sum())
        all_s = s
    else:
        a = deviations.double() * scale
        if not torch.isfinite(a).all():
            raise SubspaceError("the deviations hold NaN or infinite values")
        if generator is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(
                int(
                    torch.randint(
                        0, 2**62, (1,), generator=generator, device=generator.device if generator is not None else "cpu"
                    )
                )
            )
        try:
            u, s, v = torch.svd_lowrank(a, q=min(k + oversample, num, p))
        finally:
            if generator is not None:
                torch.random.set_rng_state(state)
        rows = s[:k, None] * v[:, :k].T
        total = float((a * a).sum())
        all_s = s
    ratio = [float(v * v) / total if total > 0 else math.nan for v in all_s[:k]]
    return Subspace(
        shift.detach().clone(),
        rows.to(shift),
        "pca",
        {
            "singular_values": [float(v) for v in all_s[:k]],
            "explained_variance_ratio": ratio,
            "num_deviations": num,
            "method": method,
        },
    )


def curve_subspace(start: Tensor, middle: Tensor, end: Tensor) -> Subspace:
    """The plane of a curve's endpoints ``w_0 = start``, ``w_1 = end`` and the point ``middle = w(0.5)``
    (for a quadratic Bezier curve with bend theta, ``w(0.5) = (w_0 + w_1) / 4 + theta / 2``): shift at
    their mean, basis ``u = (w_1 - w_0) / |w_1 - w_0|`` and ``v`` the normalised part of ``middle - w_0``
    orthogonal to u (two orthonormal rows; the prior scale is then in weight units)."""
    for name, t in (("middle", middle), ("end", end)):
        if t.shape != start.shape:
            raise SubspaceError(f"{name} has shape {tuple(t.shape)} but start has {tuple(start.shape)}")
    w0, m, w1 = start.double(), middle.double(), end.double()
    u = w1 - w0
    if float(u.norm()) == 0:
        raise SubspaceError("the curve's endpoints coincide: they span no direction")
    u = u / u.norm()
    v = (m - w0) - ((m - w0) @ u) * u
    if float(v.norm()) <= 1e-12 * float((m - w0).norm() + 1e-300):
        raise SubspaceError("the curve's midpoint lies on the line through its endpoints: it spans no plane")
    v = v / v.norm()
    shift = (w0 + m + w1) / 3
    return Subspace(shift.to(start), torch.stack([u, v]).to(start), "curve")


class FrequentDirections:
    """Streaming sketch of the rows of a tall matrix A (n, P) in a (ell, P) matrix B with
    ``||A^T A - B^T B||_2 <= ||A - A_r||_F^2 / (ell - r)`` for every r < ell (Liberty 2013, "Simple and
    deterministic matrix sketching"; Ghashami, Liberty, Phillips, Woodruff 2016). Memory: 2 ell rows of P.

    Feed SGD iterates' deviations (or the iterates themselves, then subtract the mean) with :meth:`update`;
    :meth:`subspace` gives the top-k directions of the sketch, scaled like :func:`pca_subspace`'s when the
    rows fed were the deviations ``w_i - mean`` and ``rows_seen - 1`` normalises.
    """

    def __init__(
        self,
        ell: int,
        num_weights: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(ell, int) or ell < 1:
            raise SubspaceError(f"ell must be an integer >= 1, got {ell!r}")
        self.ell = ell
        self.buffer = torch.zeros(2 * ell, num_weights, dtype=dtype, device=device)
        self.filled = 0
        self.rows_seen = 0

    def update(self, row: Tensor) -> None:
        """Add one row (P,) of A."""
        if row.shape != self.buffer.shape[1:]:
            raise SubspaceError(f"a row must have shape {tuple(self.buffer.shape[1:])}, got {tuple(row.shape)}")
        if self.filled == self.buffer.shape[0]:
            self._shrink()
        self.buffer[self.filled] = row.to(self.buffer)
        self.filled += 1
        self.rows_seen += 1

    def _shrink(self) -> None:
        _, s, vt = torch.linalg.svd(self.buffer[: self.filled], full_matrices=False)
        delta = s[self.ell - 1] ** 2 if len(s) >= self.ell else s.new_zeros(())
        s2 = (s * s - delta).clamp_min(0)
        keep = min(self.ell - 1, len(s))
        self.buffer.zero_()
        self.buffer[:keep] = s2[:keep].sqrt()[:, None] * vt[:keep]
        self.filled = keep

    def sketch(self) -> Tensor:
        """B (at most ell rows) with the guarantee above (the buffer compacted to ell rows)."""
        if self.filled > self.ell:
            self._shrink()
        return self.buffer[: self.filled].clone()

    def subspace(self, k: int, shift: Tensor) -> Subspace:
        """The top-k right singular directions of the sketch, scaled by ``s_j / sqrt(rows_seen - 1)``."""
        b = self.sketch()
        _check_k(k, b.shape[0], "rows in the sketch")
        if self.rows_seen < 2:
            raise SubspaceError("the sketch has seen fewer than 2 rows")
        _, s, vt = torch.linalg.svd(b, full_matrices=False)
        s = s / math.sqrt(self.rows_seen - 1)
        return Subspace(
            shift.detach().clone(),
            (s[:k, None] * vt[:k]).to(shift),
            "pca",
            {
                "singular_values": [float(v) for v in s[:k]],
                "method": "frequent-directions",
                "ell": self.ell,
                "rows_seen": self.rows_seen,
            },
        )


def _check_k(k: Any, available: int, what: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise SubspaceError(f"the rank k must be an integer >= 1, got {k!r}")
    if k > available:
        raise SubspaceError(f"the rank k = {k} is larger than the {available} {what}")
