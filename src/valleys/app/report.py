"""Tables and the Markdown run report. Pure formatting: no training, no evaluation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["aggregate", "mean_and_se", "cell", "format_table", "markdown_table"]

TABLE_KEYS = ("accuracy", "nll", "ece", "brier")


def aggregate(values: Sequence[Mapping[str, float]], keys: Sequence[str] = TABLE_KEYS) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (0 for one value; NaN when a value is infinite), min and max of each
    key over runs. A ``None`` value (how strict JSON stores NaN) counts as NaN."""
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        xs = [math.nan if v[k] is None else float(v[k]) for v in values]
        finite = all(math.isfinite(x) for x in xs)
        std = (statistics.stdev(xs) if len(xs) > 1 else 0.0) if finite else math.nan
        out[k] = {"mean": statistics.fmean(xs), "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}
    return out


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error ``std / sqrt(n)`` (sample std, ddof 1; NaN for one value)."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n) if n > 1 else math.nan
    return mean, se


def cell(stats: Mapping[str, float], key: str) -> str:
    """``mean ± std`` of one metric (``± std`` only over more than one value): accuracies and errors (any key
    with "error" in it) in percent with 2 decimals, the rest with 4."""
    scale, fmt = (100.0, "{:.2f}") if key == "accuracy" or "error" in key else (1.0, "{:.4f}")
    s = fmt.format(stats["mean"] * scale)
    if stats.get("n", 1) > 1:
        s += " ± " + fmt.format(stats["std"] * scale)
    return s


def _header(keys: Sequence[str]) -> list[str]:
    return ["method"] + [f"{k} (%)" if k == "accuracy" or "error" in k else k for k in keys]


def format_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], keys: Sequence[str] = TABLE_KEYS) -> str:
    """A plain-text table for the terminal: one row per method, cells ``mean ± std``."""
    header = _header(keys)
    body = [[name] + [cell(stats[k], k) for k in keys] for name, stats in rows.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], keys: Sequence[str] = TABLE_KEYS) -> str:
    """The same table in Markdown."""
    header = _header(keys)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in rows.items():
        out.append("| " + " | ".join([name] + [cell(stats[k], k) for k in keys]) + " |")
    return "\n".join(out)


#: settings of the user's own model and data: listed only when set (a built-in run leaves them all unset)
_USER_SETTINGS = (
    "model_args",
    "data_args",
    "task",
    "input",
    "target",
    "output",
    "loss",
    "init",
    "imported",
    "model_sha256",
    "data_sha256",
)


def describe_config(cfg: Mapping[str, Any]) -> str:
    """One Markdown bullet list of the settings (those of the user's model and data only when set)."""
    return "\n".join(f"- `{k}`: {v}" for k, v in cfg.items() if k not in _USER_SETTINGS or v not in (None, {}))
