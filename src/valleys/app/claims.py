"""The talk's claims as a table: each claim the demo measures, its two numbers, their paired difference over
seeds with its standard error, a verdict by one stated rule, and the power of that many seeds.

The rule (:func:`verdict`): with ``d`` the mean over ``n`` seeds of the per-seed difference in the direction
the claim says is better (e.g. ``error(SWA) - error(SGD)`` for "SWA has lower test error than SGD") and ``se``
its standard error (sample standard deviation over sqrt(n)), the paired t statistic ``t = d / se`` is compared
with Student's t with ``n - 1`` degrees of freedom at the two-sided 5% level (``t_{0.975, n-1}``: 4.30 for 3
seeds, 2.26 for 10): the claim **holds** when ``t < -t_{0.975, n-1}``, **does not hold** when
``t > t_{0.975, n-1}``, and is **within noise** otherwise; with one seed there is no spread and the sign
decides, said as such. A true difference of zero thus gets "within noise" 95% of the time whatever ``n``.

Power (:mod:`valleys.app.stats`): each row also states the smallest difference its seeds detect with 80%
power given the observed spread, ``(t_{0.975, n-1} + t_{0.8, n-1}) se``, and how many seeds would detect the
observed difference with 80% power. Pure arithmetic on the demo's results: no training, no evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from .report import mean_and_se
from .stats import detectable_difference, seeds_needed, t_quantile

__all__ = ["verdict", "paired", "demo_claims", "claims_markdown", "PAPER_EFFECTS", "paper_effect"]

#: The effect each claim's paper reports, where it reports one, in the claim's own units and sign (negative: the
#: claim's side better; error in fractions, NLL in nats), with where it was measured. Where a paper reports
#: several settings the smallest effect is entered (the hardest to detect). They are measured on CIFAR with deep
#: networks, so they say how many seeds it would take to see an effect of the papers' size at this run's
#: spread, not what this run should show.
PAPER_EFFECTS: dict[str, tuple[float, str]] = {
    "SWA has lower test NLL than SGD": (
        -0.45,
        "Maddox et al. 2019, CIFAR-100 VGG-16: test NLL 1.73 (SGD) -> 1.28 (SWA)",
    ),
    "SWAG has lower test NLL than SWA": (
        -0.022,
        "Maddox et al. 2019, CIFAR-10 PreResNet-164: 0.145 (SWA) -> 0.123 (SWAG); CIFAR-100 VGG-16: 1.28 -> 0.95",
    ),
    "FGE has lower test error than one network of the same budget": (
        -0.015,
        "Garipov et al. 2018, CIFAR-100 WRN-28-10: accuracy 80.8% (one network) -> 82.3% (FGE); VGG-16: 72.5% -> 74.6%",
    ),
    "SWA at 1.5 budgets has lower test error than SGD at 1": (
        -0.0061,
        "Izmailov et al. 2018, CIFAR-10 WRN-28-10: accuracy 96.18% -> 96.79%; CIFAR-100: VGG-16 72.55% -> "
        "74.27%, PreResNet-164 78.49% -> 80.35%, WRN-28-10 80.82% -> 82.15%",
    ),
    "the PCA subspace beats a random one (ESS in both)": (
        -0.021,
        "Izmailov et al. 2019 (subspace inference), CIFAR-100 PreResNet-164: test NLL 0.686 (random) -> 0.665 (PCA)",
    ),
}


def paper_effect(claim: str) -> tuple[float, str] | None:
    """The paper's effect of ``claim`` (see :data:`PAPER_EFFECTS`), or ``None`` where its paper gives none."""
    return PAPER_EFFECTS.get(claim)


def verdict(diff: float, se: float, n: int) -> str:
    """The paired t-test's verdict over ``n`` pairs: ``holds`` when ``diff / se`` (``diff`` signed so that
    negative means the claim's side is better) is below ``-t_{0.975, n-1}``, ``does not hold`` above
    ``+t_{0.975, n-1}``, else ``within noise``; with one seed (``n < 2`` or ``se`` NaN) the sign decides, said as
    such. Identical differences (``se = 0``) decide by their sign."""
    if n < 2 or math.isnan(se):
        return ("holds" if diff < 0 else "does not hold") + " (one seed: no spread)"
    crit = t_quantile(0.975, n - 1) * se
    if diff < -crit:
        return "holds"
    if diff > crit:
        return "does not hold"
    return "within noise"


def paired(
    claim: str,
    a_label: str,
    a: Sequence[float],
    b_label: str,
    b: Sequence[float],
    *,
    lower_is_better: bool = True,
    metric: str = "",
) -> dict[str, Any]:
    """One claim "``a`` is better than ``b``" from per-seed (or per-pair) values: both means, the mean and
    standard error of the per-seed difference ``a - b`` (signed so that negative favours ``a``), the verdict,
    the difference detectable with 80% power (``detectable``) and the seeds that would detect the observed
    difference with 80% power (``seeds_needed``; None for a zero difference or beyond 10,000)."""
    if len(a) != len(b) or not a:
        raise InputError(f"{claim}: needs the same non-empty number of values on both sides, got {len(a)} and {len(b)}")
    sign = 1.0 if lower_is_better else -1.0
    n = len(a)
    mean, se = mean_and_se([sign * (x - y) for x, y in zip(a, b, strict=True)])
    return {
        "claim": claim,
        "metric": metric,
        "a": a_label,
        "b": b_label,
        "a_mean": sum(a) / n,
        "b_mean": sum(b) / n,
        "difference": mean,
        "se": se,
        "n": n,
        "lower_is_better": lower_is_better,
        "verdict": verdict(mean, se, n),
        "detectable": detectable_difference(se, n) if n > 1 else math.nan,
        "seeds_needed": seeds_needed(mean, se * math.sqrt(n)) if n > 1 and math.isfinite(se) else None,
        **_paper_columns(claim, se, n),
    }


def _paper_columns(claim: str, se: float, n: int) -> dict[str, Any]:
    """``paper_effect``, ``paper_source`` and ``seeds_for_paper`` (the pairs that detect the paper's effect with 80%
    power at this spread) for a claim whose paper reports an effect; ``{}`` otherwise."""
    found = paper_effect(claim)
    if found is None:
        return {}
    effect, source = found
    finite = n > 1 and math.isfinite(se)
    return {
        "paper_effect": effect,
        "paper_source": source,
        "seeds_for_paper": seeds_needed(effect, se * math.sqrt(n)) if finite else None,
    }


def demo_claims(
    per_row: Mapping[str, Sequence[Mapping[str, Any]]],
    ood_auroc: Mapping[str, Sequence[float]] | None = None,
    fge: Mapping[str, Sequence[float]] | None = None,
    connectivity: Mapping[str, Any] | None = None,
    geometry: Mapping[str, Any] | None = None,
    subspace: Mapping[str, Any] | None = None,
    semisup: Sequence[Mapping[str, Any]] = (),
    budgets: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """The claims a demo folder measures. ``per_row``: per method, the per-seed results with
    ``metrics.test``; ``ood_auroc``: per method, per-seed AUROC; ``fge``: per-seed ``ensemble_test_accuracy``,
    ``best_member_test_accuracy`` and optionally ``ensemble_prefix_test_accuracy`` (the ensemble of the first
    k snapshots, k = 1..K); ``connectivity``: its ``pairs``; ``geometry``: its ``per_seed`` rows;
    ``subspace``: the subspace section's ``per_seed`` rows per (space + inference) label, in the seeds' order;
    ``semisup``: the semi-supervised section's claims, already as :func:`paired` rows (appended as they are);
    ``budgets``: per row ``"SWA x1.5"`` etc., the per-seed results of SWA or SWAG at that multiple of the budget
    (Izmailov et al. 2018: against SGD at one budget)."""

    def test(row: str, key: str) -> list[float]:
        vals = [r["metrics"]["test"][key] for r in per_row.get(row, [])]
        return [1 - v for v in vals] if key == "accuracy" else vals

    rows = []
    if per_row.get("SWA") and per_row.get("SGD"):
        rows.append(
            paired(
                "SWA has lower test error than SGD at the same budget",
                "SWA",
                test("SWA", "accuracy"),
                "SGD",
                test("SGD", "accuracy"),
                metric="test error",
            )
        )
        rows.append(
            paired(
                "SWA has lower test NLL than SGD",
                "SWA",
                test("SWA", "nll"),
                "SGD",
                test("SGD", "nll"),
                metric="test NLL",
            )
        )
    if per_row.get("SWAG") and per_row.get("SWA"):
        rows.append(
            paired(
                "SWAG has lower test NLL than SWA",
                "SWAG",
                test("SWAG", "nll"),
                "SWA",
                test("SWA", "nll"),
                metric="test NLL",
            )
        )
    if per_row.get("SWAG") and per_row.get("SGD"):
        rows.append(
            paired(
                "SWAG has lower ECE than SGD", "SWAG", test("SWAG", "ece"), "SGD", test("SGD", "ece"), metric="test ECE"
            )
        )
    if ood_auroc and ood_auroc.get("SWAG") and ood_auroc.get("SGD"):
        rows.append(
            paired(
                "SWAG detects out-of-distribution inputs at least as well as SGD",
                "SWAG",
                list(ood_auroc["SWAG"]),
                "SGD",
                list(ood_auroc["SGD"]),
                lower_is_better=False,
                metric="OOD AUROC",
            )
        )
    if per_row.get("FGE") and per_row.get("SGD"):
        rows.append(
            paired(
                "FGE has lower test error than one network of the same budget",
                "FGE",
                test("FGE", "accuracy"),
                "SGD",
                test("SGD", "accuracy"),
                metric="test error",
            )
        )
    if fge and fge.get("ensemble_test_accuracy"):
        rows.append(
            paired(
                "FGE's ensemble beats its best snapshot",
                "FGE ensemble",
                [1 - a for a in fge["ensemble_test_accuracy"]],
                "best snapshot",
                [1 - a for a in fge["best_member_test_accuracy"]],
                metric="test error",
            )
        )
    prefix = (fge or {}).get("ensemble_prefix_test_accuracy")
    if prefix and all(len(p) > 1 for p in prefix):
        rows.append(
            paired(
                f"FGE's accuracy rises with the number of snapshots ({len(prefix[0])} against 1)",
                f"{len(prefix[0])} snapshots",
                [1 - p[-1] for p in prefix],
                "the first alone",
                [1 - p[0] for p in prefix],
                metric="test error",
            )
        )
    if connectivity and connectivity.get("pairs"):
        pairs = connectivity["pairs"]
        rows.append(
            paired(
                "the curve's barrier is below the straight segment's",
                "curve",
                [p["curve_max_test_error"] for p in pairs],
                "segment",
                [p["segment_max_test_error"] for p in pairs],
                metric="max test error on the path",
            )
        )
    if geometry and geometry.get("per_seed"):
        g = geometry["per_seed"]
        rows.append(
            paired(
                "SWA is flatter than SGD",
                "SWA",
                [r["eig_SWA"] for r in g],
                "SGD",
                [r["eig_SGD"] for r in g],
                metric="top Hessian eigenvalue",
            )
        )
        # a mean width is inf when the loss never rose along some ray within the search reach (the weights'
        # norm); the demo also records the mean with such rays counted as the reach (``width_floor_*``), a lower
        # bound, used when present (a folder without it and an inf width leaves the claim out)
        floors = [(r.get("width_floor_SWA", r["width_SWA"]), r.get("width_floor_SGD", r["width_SGD"])) for r in g]
        if all(math.isfinite(a) and math.isfinite(b) for a, b in floors):
            beyond = any(not math.isfinite(r[k]) for r in g for k in ("width_SWA", "width_SGD"))
            rows.append(
                paired(
                    "SWA sits in a wider valley than SGD",
                    "SWA",
                    [a for a, _ in floors],
                    "SGD",
                    [b for _, b in floors],
                    lower_is_better=False,
                    metric="valley width"
                    + (" (rays with no rise within reach counted as the reach)" if beyond else ""),
                )
            )
    per_seed = (subspace or {}).get("per_seed") or {}
    pca, rnd = per_seed.get("PCA + ESS"), per_seed.get("random + ESS")
    if pca and per_row.get("SWA") and len(pca) == len(per_row["SWA"]):
        rows.append(
            paired(
                "subspace inference (PCA + ESS) has lower test NLL than SWA",
                "PCA + ESS",
                [r["test"]["nll"] for r in pca],
                "SWA",
                test("SWA", "nll"),
                metric="test NLL",
            )
        )
    if pca and rnd and len(pca) == len(rnd):
        rows.append(
            paired(
                "the PCA subspace beats a random one (ESS in both)",
                "PCA + ESS",
                [r["test"]["nll"] for r in pca],
                "random + ESS",
                [r["test"]["nll"] for r in rnd],
                metric="test NLL",
            )
        )
    rows.extend(dict(r) for r in semisup)
    for label, results in (budgets or {}).items():
        method, multiple = label.split()
        if per_row.get("SGD"):
            rows.append(
                paired(
                    f"{method} at {multiple[1:]} budgets has lower test error than SGD at 1",
                    label,
                    [1 - r["metrics"]["test"]["accuracy"] for r in results],
                    "SGD x1",
                    test("SGD", "accuracy"),
                    metric="test error",
                )
            )
    return rows


def _num(v: float, metric: str) -> str:
    return f"{100 * v:.2f}%" if "error" in metric else f"{v:.4f}"


def claims_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The claims table as Markdown lines, with the rule stated under it."""
    out = [
        "| claim | measure | A | B | A - B (± SE) | n | verdict | detectable (80% power) | seeds for this difference "
        "| paper's effect | seeds for the paper's effect |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sources: list[str] = []
    for r in rows:
        scale = 100 if "error" in r["metric"] else 1
        digits = 2 if scale == 100 else 4
        sign = 1 if r["lower_is_better"] else -1
        diff = sign * r["difference"] * scale
        se = "" if math.isnan(r["se"]) else f" ± {r['se'] * scale:.{digits}f}"
        # the verdict and the power from the row's numbers (a folder written under the earlier 2-SE rule reads
        # the same as a new one)
        n, d, e = r["n"], r["difference"], r["se"]
        finite = n > 1 and not math.isnan(e)
        detect_s = f"{detectable_difference(e, n) * scale:.{digits}f}" if finite else ""
        need = seeds_needed(d, e * math.sqrt(n)) if finite else None
        need_s = "" if not finite else (str(need) if need is not None else "> 10,000")
        paper, paper_need = "", ""
        found = paper_effect(r["claim"])
        if found is not None:
            sources.append(f"[{len(sources) + 1}] {found[1]}")
            paper = f"{sign * found[0] * scale:+.{digits}f} [{len(sources)}]"
            if finite:
                k = seeds_needed(found[0], e * math.sqrt(n))
                paper_need = str(k) if k is not None else "> 10,000"
        out.append(
            f"| {r['claim']} | {r['metric']} | {r['a']} {_num(r['a_mean'], r['metric'])} | "
            f"{r['b']} {_num(r['b_mean'], r['metric'])} | {diff:+.{digits}f}{se} | {n} | "
            f"{verdict(d, e, n)} | {detect_s} | {need_s} | {paper} | {paper_need} |"
        )
    out += [
        "",
        "Verdict: the paired t-test over seeds (pairs) at the two-sided 5% level, Student's t with n - 1 degrees "
        "of freedom (holds when the difference in the claim's favour is beyond t_{0.975, n-1} standard errors, "
        "does not hold beyond it the other way, else within noise). Detectable: the smallest difference these "
        "seeds detect with 80% power given the observed spread, (t_{0.975, n-1} + t_{0.8, n-1}) SE. Seeds for "
        "this difference: how many would detect the observed difference with 80% power."
        + (
            " Paper's effect: the difference the claim's paper reports (the smallest where it reports several; on "
            "CIFAR with deep networks, so not what this run should show), and the seeds that detect it with 80% "
            "power at this run's spread:"
            if sources
            else ""
        ),
    ]
    if sources:
        out += ["", *(f"{line}  " for line in sources)]
    return out
