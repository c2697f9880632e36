"""Shared by the benchmark scripts: never fail the build (a measurement, not a test), format times and
verdicts, and time two implementations side by side in alternating order."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_measurement(main: Callable[[], object]) -> None:
    """Call ``main``; print any exception's traceback, then exit 0 either way."""
    try:
        main()
    except Exception:  # report, but never fail the build
        traceback.print_exc()
    sys.exit(0)


def fmt_time(s: float) -> str:
    """Seconds as a fixed-width string in s, ms or us."""
    if s >= 1:
        return f"{s:8.3f} s "
    if s >= 1e-3:
        return f"{s * 1e3:8.2f} ms"
    return f"{s * 1e6:8.1f} us"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def spread(v: list[float]) -> float:
    """(max - min) / median of repeated timings, in percent."""
    return (max(v) - min(v)) / statistics.median(v) * 100


def print_checks(checks: list[tuple[str, bool]], indent: str = "  ") -> None:
    for text, ok in checks:
        print(f"{indent}{verdict(ok)}  {text}")


def alternating(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Call each function ``repeats`` times, the order of the two reversed every other round (ABBA), with a
    garbage collection before each call. Returns the seconds per call for each name and each one's last
    result."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    last: dict[str, Any] = {}
    order = list(fns)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            gc.collect()
            t0 = time.perf_counter()
            last[name] = fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times, last


def default_results_path(name: str) -> Path:
    """Where a benchmark's JSON goes unless ``--json`` says otherwise: ``benchmarks/results/<name>.json``."""
    return RESULTS_DIR / f"{name}.json"


def checks_json(checks: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """The printed target lines as records: ``{"check": text, "verdict": "PASS"|"FAIL", "ok": bool}``."""
    return [{"check": " ".join(text.split()), "verdict": verdict(ok), "ok": bool(ok)} for text, ok in checks]


def write_results(name: str, data: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write a benchmark's numbers as strict JSON (non-finite values as null) with the environment it ran in,
    atomically; print and return the path."""
    import torch

    from valleys.core.checkpoint import write_json

    path = Path(path) if path is not None else default_results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **data,
    }
    write_json(path, doc)
    print(f"results: {path}")
    return path


# ---------------------------------------------------------------------------------------------- roofline
def macs_per_example(model: Any, x: Any) -> int:
    """Multiply-adds of the convolutions and linear layers for one example (forward hooks on one batch)."""
    import torch
    from torch import nn

    total = [0]

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        per_out = m.weight[0].numel() if isinstance(m, nn.Conv2d | nn.Conv1d) else m.weight.shape[1]
        total[0] += out.numel() * per_out

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in handles:
            h.remove()
    return total[0] // 2


def matmul_flops() -> float:
    """The machine's dense float32 matmul throughput on this thread (1024 x 1024 x 1024, best of 5), FLOP/s."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024**3 / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
