"""Student's t distribution for the claims' verdicts over seeds: its CDF, its quantiles, and the power of a
paired t-test, in pure Python (the core needs no SciPy).

The CDF through the regularised incomplete beta function (Abramowitz & Stegun 26.7.1),

    F(t; nu) = 1 - I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2   for t >= 0,   F(-t) = 1 - F(t),

with ``I_x(a, b)`` by its continued fraction (Lentz's method, as in Press et al., *Numerical Recipes*, 6.4);
quantiles by bisection on the CDF. The power rule is the usual normal-theory approximation with t quantiles:
a paired difference of standard deviation ``s`` over ``n`` seeds is detected by a two-sided test at level
``alpha`` with power ``1 - beta`` when its size is at least ``(t_{1 - alpha/2, n-1} + t_{1 - beta, n-1}) s /
sqrt(n)`` (e.g. Chow, Shao & Wang, *Sample Size Calculations in Clinical Research*, 2008, 3.2).
"""

from __future__ import annotations

import functools
import math

from ..errors import InputError

__all__ = ["t_cdf", "t_quantile", "detectable_difference", "seeds_needed"]


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), converged to 1e-15."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom."""
    if not df > 0:
        raise InputError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom (``0 < p < 1``), to 1e-12."""
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def detectable_difference(se: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest paired mean difference a two-sided t-test at level ``alpha`` detects with probability
    ``power``, given the standard error ``se`` of the mean difference over ``n >= 2`` pairs:
    ``(t_{1 - alpha/2, n-1} + t_{power, n-1}) se``."""
    if n < 2:
        return math.nan
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * se


def seeds_needed(
    effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, at_most: int = 10_000
) -> int | None:
    """The fewest pairs ``m >= 2`` whose detectable difference ``(t_{1 - alpha/2, m-1} + t_{power, m-1}) sd /
    sqrt(m)`` is at most ``|effect|``, for per-pair differences of standard deviation ``sd``; ``None`` when
    the effect is 0 or more than ``at_most`` pairs would be needed."""
    if effect == 0 or not math.isfinite(sd) or not math.isfinite(effect):
        return None
    if sd == 0:
        return 2

    def enough(m: int) -> bool:  # the detectable difference falls as m grows: search by doubling, then halving
        return detectable_difference(sd / math.sqrt(m), m, alpha=alpha, power=power) <= abs(effect)

    lo, hi = 1, 2
    while not enough(hi):
        if hi >= at_most:
            return None
        lo, hi = hi, min(2 * hi, at_most)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi
