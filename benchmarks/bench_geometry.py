"""Cost of valleys' weight-space geometry tools, measured side by side in one process.

(a) A 21 x 21 grid on a plane without BatchNorm recompute, on the MNIST-1D-sized ``MLP(40, 10)`` (hidden (100, 100),
    15,210 parameters): random inputs of 40 features, labels 0..9, 3600 training and 1000 test examples,
    ``valleys.zoo.data.make_loader(TensorDataset(x, y), 1000)``. The points are ``plane.point(x, y)`` of
    ``valleys.geometry.surfaces.Plane(a, b, c)`` through three random perturbations of the model's weights, over the
    axes of ``valleys.geometry.surfaces.grid_axes`` around the three points. Ours:
    ``valleys.evaluation.grid.evaluate_points(model, points, {"train": ..., "test": ...}, bn="keep")`` with the default
    ``batched="auto"`` (it times the first batch both ways and then evaluates ``chunk`` points at a time with
    ``torch.func.vmap`` or one by one), and the same with ``batched=False`` and ``batched=True`` explicitly. Naive: for
    each point ``torch.nn.utils.vector_to_parameters(w, model.parameters())``, then mean cross-entropy and error on both
    loaders in eval mode under ``torch.no_grad()``. All four runs see the same points; every variant's losses must equal
    the naive ones (max |diff| <= 1e-4).

(b) The same kind of grid (7 x 7) with a BatchNorm recompute per point on ``SmallCNN(1, 10, width=8)`` with
    random 1x8x8 inputs: 1024 training examples in 4 equal batches of 256 (``update_bn`` averages per-batch
    statistics, which is exact only for equal batches; valleys pools them exactly) and 256 test examples.
    Ours: ``evaluate_points(..., bn=train_loader)``. Naive: per point
    ``copy.deepcopy(model)``, ``vector_to_parameters``, ``torch.optim.swa_utils.update_bn(train_loader, m)``,
    then the same evaluation. Losses must agree within 1e-4.

(c) Hessian-vector products that Lanczos and power iteration need for the top Hessian eigenvalue to 1e-3
    relative error, on the MLP of (a) in float64 (``.double()``, float64 data), ``valleys.geometry.hessian.LossFunction(
    model, batches)`` with batches of 500 random training examples. Reference: ``lanczos(loss, w, k=1,
    iterations=min(P, 200))`` (seed 1000; a second seed shows its accuracy); the most negative eigenvalue comes
    from the same on the negated loss. Lanczos: ``lanczos(loss, w, k=1, iterations=m)`` for m = 2, 3, ... with a
    fresh generator of the same seed each time (``num_hvp`` = m); the count is the smallest m within 1e-3 of the
    reference. Power iteration converges to the eigenvalue of largest MAGNITUDE, so it is compared with that one
    (the script says when that is the negative end); its estimate after every product is recorded by a local
    copy of ``power_iteration``'s loop on ``loss.hvp`` and the count is the first product within 1e-3; one call
    ``power_iteration(loss, w, iterations=count)`` confirms the local loop reproduces the library. Three
    starting-vector seeds; medians of the counts.

Timings in (a) and (b) are interleaved repeats (carry-over-balanced orders in (a), ABBA in (b)) after a
warm-up; times are medians over repeats, ratios are ratios of medians (the median of the per-repeat ratios
is shown too).

Targets: (a) naive / ours (auto) >= 2x; losses agree (max |diff| <= 1e-4) in (a) and (b). (b) and (c) have no
numeric speed target (Lanczos should need fewer products than power iteration). PASS/FAIL is printed but the
script always exits 0 (timings are machine-dependent).

Usage::

    python benchmarks/bench_geometry.py            # full: 21x21 and 7x7 grids (~3 min on one busy core)
    python benchmarks/bench_geometry.py --quick    # 11x11 and 4x4 grids, 500 examples in (c) (~50 s)
    python benchmarks/bench_geometry.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from _harness import (
    checks_json,  # noqa: E402
    fmt_time,
    print_checks,
    run_measurement,
    spread,
    write_results,
)  # (benchmarks/ is on sys.path when run)
from torch import Tensor, nn
from torch.nn.utils import vector_to_parameters
from torch.optim.swa_utils import update_bn
from torch.utils.data import TensorDataset

from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.results import GridResult
from valleys.geometry.hessian import LossFunction, lanczos, power_iteration
from valleys.geometry.surfaces import Plane, grid_axes
from valleys.zoo.data import make_loader
from valleys.zoo.models import MLP, SmallCNN

GRID_TARGET = 2.0  # (a) naive / ours (auto)
AGREE_TOL = 1e-4  # max |loss diff| between ours and naive
EIG_TOL = 1e-3  # (c) relative error of the top eigenvalue
WILLIAMS = ((0, 1, 3, 2), (1, 2, 0, 3), (2, 3, 1, 0), (3, 0, 2, 1))  # Latin square balanced for carry-over
ABBA = ((0, 1), (1, 0), (1, 0), (0, 1))


@dataclass
class Config:
    grid_a: int  # points per axis in (a)
    repeats_a: int  # interleaved repeats in (a) (a multiple of 4 balances the orders)
    grid_b: int  # points per axis in (b)
    repeats_b: int
    hess_examples: int  # examples in the Hessian's data subset (c), in batches of 500
    ref_iterations: int  # Lanczos products for the reference eigenvalue (at most P)
    seeds: int  # starting-vector seeds in (c)
    max_lanczos: int  # give up beyond this many products
    max_power: int


def make_config(quick: bool) -> Config:
    if quick:
        return Config(11, 4, 4, 4, 500, 200, 3, 150, 1000)
    return Config(21, 4, 7, 8, 1000, 200, 3, 150, 2000)


def timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def plane_points(w0: Tensor, n: int, scale: float, seed: int) -> list[Tensor]:
    """``n * n`` points of the plane through three random perturbations of ``w0`` (row by row)."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (w0 + scale * torch.randn(w0.numel(), generator=g, dtype=w0.dtype) for _ in range(3))
    plane = Plane(a, b, c)
    xs, ys = grid_axes([plane.project(p) for p in (a, b, c)], n=n)
    return [plane.point(x, y) for y in ys for x in xs]


# ---------------------------------------------------------------------------------------------- naive loops
def _evaluate(net: nn.Module, loaders: Mapping[str, Iterable], out: dict) -> None:
    """Append mean cross-entropy and error of ``net`` (eval mode, no grad) on each loader to ``out``."""
    for name, loader in loaders.items():
        loss = err = 0.0
        n = 0
        for xb, yb in loader:
            o = net(xb)
            loss += float(nn.functional.cross_entropy(o, yb, reduction="sum"))
            err += float((o.argmax(1) != yb).sum())
            n += len(yb)
        out[name]["loss"].append(loss / n)
        out[name]["error"].append(err / n)


def naive_keep(net: nn.Module, points: Sequence[Tensor], loaders: Mapping[str, Iterable]) -> dict:
    """Write each point into ``net`` and evaluate it (the model's BatchNorm statistics, if any, kept)."""
    out = {name: {"loss": [], "error": []} for name in loaders}
    net.eval()
    with torch.no_grad():
        for w in points:
            vector_to_parameters(w, net.parameters())
            _evaluate(net, loaders, out)
    return out


def naive_recompute(
    model: nn.Module, points: Sequence[Tensor], loaders: Mapping[str, Iterable], bn_loader: Iterable
) -> dict:
    """Per point: deepcopy, write the weights, ``update_bn`` on ``bn_loader``, evaluate."""
    out = {name: {"loss": [], "error": []} for name in loaders}
    with torch.no_grad():
        for w in points:
            m = copy.deepcopy(model)
            vector_to_parameters(w, m.parameters())
            update_bn(bn_loader, m)
            m.eval()
            _evaluate(m, loaders, out)
    return out


def _as_dict(res: GridResult) -> dict:
    """The grid in the naive loop's layout (``{loader: {"loss", "error"}}``) with the engine's labels."""
    return {**res.per_loader, "bn": res.bn, "batched": res.batched}


def max_diff(ours: dict, ref: dict, key: str) -> float:
    return max(abs(a - b) for name in ref for a, b in zip(ours[name][key], ref[name][key], strict=True))


# ---------------------------------------------------------------------------------------------- (a)
A_VARIANTS = ("naive", "auto", "loop", "vmap")
A_LABELS = {
    "naive": "naive loop (vector_to_parameters)",
    "auto": "evaluate_points, batched='auto'",
    "loop": "evaluate_points, batched=False",
    "vmap": "evaluate_points, batched=True",
}


def bench_grid_keep(cfg: Config) -> dict:
    torch.manual_seed(0)
    model = MLP(40, 10)
    space = WeightSpace(model)
    x_tr, y_tr = torch.randn(3600, 40), torch.randint(0, 10, (3600,))
    x_te, y_te = torch.randn(1000, 40), torch.randint(0, 10, (1000,))
    loaders = {
        "train": make_loader(TensorDataset(x_tr, y_tr), 1000),
        "test": make_loader(TensorDataset(x_te, y_te), 1000),
    }
    w_init = space.read(model)
    points = plane_points(w_init, cfg.grid_a, 0.05, seed=1)
    naive_net = copy.deepcopy(model)  # the naive loop writes into its model; ours restores the user's
    print(
        f"\n=== (a) {cfg.grid_a} x {cfg.grid_a} plane grid, no BN recompute: MLP 40-100-100-10, "
        f"{space.size:,} parameters, 3600 train + 1000 test random examples, batch 1000 ==="
    )

    runs: dict[str, Callable[[Sequence[Tensor]], dict]] = {
        "naive": lambda pts: naive_keep(naive_net, pts, loaders),
        "auto": lambda pts: _as_dict(evaluate_points(model, pts, loaders, bn="keep")),
        "loop": lambda pts: _as_dict(evaluate_points(model, pts, loaders, bn="keep", batched=False)),
        "vmap": lambda pts: _as_dict(evaluate_points(model, pts, loaders, bn="keep", batched=True)),
    }
    for v in A_VARIANTS:  # warm-up (allocator, dispatcher and vmap caches)
        runs[v](points[:16])
    times: dict[str, list[float]] = {v: [] for v in A_VARIANTS}
    results: dict[str, dict] = {}
    auto_choices: list[bool] = []
    t_start = time.perf_counter()
    for r in range(cfg.repeats_a):
        for v in (A_VARIANTS[i] for i in WILLIAMS[r % 4]):
            dt, res = timed(lambda v=v: runs[v](points))
            times[v].append(dt)
            results[v] = res
            if v == "auto":
                auto_choices.append(res["batched"])
    elapsed = time.perf_counter() - t_start
    restored = bool(torch.equal(space.read(model), w_init))  # evaluate_points leaves the user's model as it was

    med = {v: statistics.median(t) for v, t in times.items()}
    paired = {v: statistics.median([n / t for n, t in zip(times["naive"], times[v], strict=True)]) for v in A_VARIANTS}
    npts = len(points)
    print(f"{'':40s} {'median':>11s} {'per point':>11s} {'spread':>7s}  {'naive/this':>10s}  {'paired':>7s}")
    for v in A_VARIANTS:
        print(
            f"  {A_LABELS[v]:38s} {fmt_time(med[v])} {fmt_time(med[v] / npts)} {spread(times[v]):6.1f}%  "
            f"{med['naive'] / med[v]:9.2f}x  {paired[v]:6.2f}x"
        )
    n_vmap = sum(auto_choices)
    print(
        f"  batched='auto' chose {'vmap' if n_vmap * 2 > len(auto_choices) else 'the loop'} "
        f"(result['batched'] True in {n_vmap} of {len(auto_choices)} runs)"
    )
    diffs = {
        v: (max_diff(results[v], results["naive"], "loss"), max_diff(results[v], results["naive"], "error"))
        for v in ("auto", "loop", "vmap")
    }
    for v, (dl, de) in diffs.items():
        print(f"  agreement {A_LABELS[v]:33s} max |loss diff| {dl:.2e}  max |error diff| {de:.2e}")
    print(f"  model weights after all runs of evaluate_points: {'unchanged' if restored else 'CHANGED'}")
    lo = min(min(results["naive"][n]["loss"]) for n in loaders)
    hi = max(max(results["naive"][n]["loss"]) for n in loaders)
    print(
        f"  ({npts} points, losses {lo:.3f} .. {hi:.3f}; {cfg.repeats_a} interleaved repeats in carry-over-"
        f"balanced orders; 'paired' = median of per-repeat ratios; {elapsed:.1f}s)"
    )
    return {
        "ratio": med["naive"] / med["auto"],
        "ratio_loop": med["naive"] / med["loop"],
        "ratio_vmap": med["naive"] / med["vmap"],
        "auto_vmap": n_vmap,
        "auto_runs": len(auto_choices),
        "diffs": diffs,
        "restored": restored,
        "points": npts,
    }


# ---------------------------------------------------------------------------------------------- (b)
def bench_grid_recompute(cfg: Config) -> dict:
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=8)
    space = WeightSpace(model)
    x_tr, y_tr = torch.randn(1024, 1, 8, 8), torch.randint(0, 10, (1024,))
    x_te, y_te = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    train_loader = make_loader(TensorDataset(x_tr, y_tr), 256)
    loaders = {"train": train_loader, "test": make_loader(TensorDataset(x_te, y_te), 256)}
    points = plane_points(space.read(model), cfg.grid_b, 0.05, seed=2)
    print(
        f"\n=== (b) {cfg.grid_b} x {cfg.grid_b} plane grid with BN recompute: SmallCNN(1, 10, width=8), "
        f"{space.size:,} parameters, 1x8x8 random inputs, 1024 train (4 x 256) + 256 test ==="
    )
    runs = {
        "naive": lambda pts: naive_recompute(model, pts, loaders, train_loader),
        "ours": lambda pts: _as_dict(evaluate_points(model, pts, loaders, bn=train_loader)),
    }
    for v in runs:
        runs[v](points[:2])
    times: dict[str, list[float]] = {v: [] for v in runs}
    results: dict[str, dict] = {}
    names = list(runs)
    t_start = time.perf_counter()
    for r in range(cfg.repeats_b):
        for i in ABBA[r % 4]:
            v = names[i]
            dt, res = timed(lambda v=v: runs[v](points))
            times[v].append(dt)
            results[v] = res
    elapsed = time.perf_counter() - t_start
    med = {v: statistics.median(t) for v, t in times.items()}
    paired = statistics.median([n / o for n, o in zip(times["naive"], times["ours"], strict=True)])
    npts = len(points)
    labels = {"naive": "naive (deepcopy, update_bn, evaluate)", "ours": "evaluate_points, bn='recompute'"}
    print(f"{'':40s} {'median':>11s} {'per point':>11s} {'spread':>7s}")
    for v in names:
        print(f"  {labels[v]:38s} {fmt_time(med[v])} {fmt_time(med[v] / npts)} {spread(times[v]):6.1f}%")
    ratio = med["naive"] / med["ours"]
    dl, de = max_diff(results["ours"], results["naive"], "loss"), max_diff(results["ours"], results["naive"], "error")
    print(f"  naive / ours = {ratio:.2f}x (median of per-repeat ratios {paired:.2f}x; no target)")
    print(f"  agreement: max |loss diff| {dl:.2e}  max |error diff| {de:.2e}  (bn reported: {results['ours']['bn']})")
    print(f"  ({npts} points, {cfg.repeats_b} repeats in ABBA order; {elapsed:.1f}s)")
    return {"ratio": ratio, "diff_loss": dl, "diff_error": de}


# ---------------------------------------------------------------------------------------------- (c)
def power_trace(loss: LossFunction, w: Tensor, target: float, cap: int, seed: int) -> tuple[int | None, float]:
    """The first product count whose power-iteration estimate is within ``EIG_TOL`` of ``target`` (None if not
    within ``cap``), and that estimate. The same loop as ``valleys.geometry.hessian.power_iteration``."""
    v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v /= v.norm()
    est = math.nan
    for j in range(1, cap + 1):
        hv = loss.hvp(w, v.to(w.dtype)).double()
        est = float(v @ hv)
        if abs(est - target) <= EIG_TOL * abs(target):
            return j, est
        v = hv / hv.norm()
    return None, est


def lanczos_count(loss: LossFunction, w: Tensor, target: float, cap: int, seed: int) -> tuple[int | None, float]:
    """The smallest m with ``lanczos(..., iterations=m)`` within ``EIG_TOL`` of ``target`` (and its value)."""
    ev = math.nan
    for m in range(2, cap + 1):
        res = lanczos(loss, w, k=1, iterations=m, generator=torch.Generator().manual_seed(seed))
        ev = float(res["eigenvalues"][0])
        assert res["num_hvp"] == m, (res["num_hvp"], m)
        if abs(ev - target) <= EIG_TOL * abs(target):
            return m, ev
    return None, ev


def bench_eigen(cfg: Config) -> dict:
    torch.manual_seed(0)
    model = MLP(40, 10).double()
    x, y = torch.randn(3600, 40, dtype=torch.float64), torch.randint(0, 10, (3600,))
    n = cfg.hess_examples
    batches = [(x[i : i + 500], y[i : i + 500]) for i in range(0, n, 500)]
    loss = LossFunction(model, batches)
    neg = LossFunction(model, batches, adapter=ModelAdapter(loss=lambda o, t: -nn.functional.cross_entropy(o, t)))
    w = WeightSpace(model).read(model)
    p = w.numel()
    print(
        f"\n=== (c) top Hessian eigenvalue to {EIG_TOL:g} relative: MLP 40-100-100-10 in float64, {p:,} "
        f"parameters, {n} random examples in batches of 500, eval mode ==="
    )
    t_start = time.perf_counter()
    loss.hvp(w, torch.ones_like(w))  # warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        loss.hvp(w, torch.ones_like(w))
    t_hvp = (time.perf_counter() - t0) / 3
    iters = min(p, cfg.ref_iterations)

    def top(fn: LossFunction, seed: int) -> float:
        res = lanczos(fn, w, k=1, iterations=iters, generator=torch.Generator().manual_seed(seed))
        return float(res["eigenvalues"][0])

    lam_max, lam_max2, lam_min = top(loss, 1000), top(loss, 1001), -top(neg, 1000)
    negative_end = abs(lam_min) > abs(lam_max)
    power_target = lam_min if negative_end else lam_max
    print(
        f"  reference (Lanczos, {iters} products): largest {lam_max:.8g} (another start: rel. diff "
        f"{abs(lam_max2 - lam_max) / abs(lam_max):.1e}), most negative {lam_min:.6g}"
    )
    if negative_end:
        print(
            f"  NOTE: the eigenvalue of largest magnitude is the NEGATIVE one ({lam_min:.6g}); power iteration "
            "converges to it and is compared against it"
        )
    else:
        print(
            f"  the eigenvalue of largest magnitude is the largest one ({lam_max:.6g}, |most negative| / largest = "
            f"{abs(lam_min) / lam_max:.3f}): both methods target it"
        )
    print(f"  one Hessian-vector product: {fmt_time(t_hvp)}")
    rows = []
    for s in range(cfg.seeds):
        m, ev_l = lanczos_count(loss, w, lam_max, cfg.max_lanczos, seed=s)
        j, ev_p = power_trace(loss, w, power_target, cfg.max_power, seed=s)
        # the library's power_iteration after j products gives the local loop's estimate
        lib = power_iteration(loss, w, iterations=j or cfg.max_power, generator=torch.Generator().manual_seed(s))
        same = abs(lib["eigenvalue"] - ev_p) <= 1e-10 * abs(ev_p) and lib["num_hvp"] == (j or cfg.max_power)
        t_l = timed(
            lambda m=m, s=s: lanczos(
                loss, w, k=1, iterations=m or cfg.max_lanczos, generator=torch.Generator().manual_seed(s)
            )
        )[0]
        t_p = timed(
            lambda j=j, s=s: power_iteration(
                loss, w, iterations=j or cfg.max_power, generator=torch.Generator().manual_seed(s)
            )
        )[0]
        rows.append({"seed": s, "m": m, "j": j, "ev_l": ev_l, "ev_p": ev_p, "same": same, "t_l": t_l, "t_p": t_p})
    elapsed = time.perf_counter() - t_start
    print(
        f"  {'seed':>4s}  {'Lanczos HVPs':>12s} {'rel err':>9s} {'time':>11s}   {'power HVPs':>10s} {'rel err':>9s} "
        f"{'time':>11s}  {'library = local loop':>20s}"
    )
    for r in rows:
        ml = str(r["m"]) if r["m"] else f">{cfg.max_lanczos}"
        jp = str(r["j"]) if r["j"] else f">{cfg.max_power}"
        print(
            f"  {r['seed']:4d}  {ml:>12s} {abs(r['ev_l'] - lam_max) / abs(lam_max):9.1e} {fmt_time(r['t_l'])}   "
            f"{jp:>10s} {abs(r['ev_p'] - power_target) / abs(power_target):9.1e} {fmt_time(r['t_p'])}  "
            f"{'yes' if r['same'] else 'NO':>20s}"
        )
    big = 10**9  # "not converged" sorts last
    med_m = statistics.median([r["m"] or big for r in rows])
    med_j = statistics.median([r["j"] or big for r in rows])
    ratio = med_j / med_m
    print(f"  median products: Lanczos {med_m:g}, power iteration {med_j:g}; power / Lanczos = {ratio:.2f}x")
    print(
        f"  (counts: smallest m with lanczos(k=1, iterations=m) within {EIG_TOL:g}, first power iteration "
        f"within {EIG_TOL:g}; 'time' = one call with that many products; {elapsed:.1f}s)"
    )
    return {
        "med_m": med_m,
        "med_j": med_j,
        "ratio": ratio,
        "negative_end": negative_end,
        "same": all(r["same"] for r in rows),
        "converged": all(r["m"] and r["j"] for r in rows),
    }


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids, fewer repeats, smaller Hessian subset")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, for stable numbers)")
    ap.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the numbers as JSON (default benchmarks/results/bench_geometry.json)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = make_config(args.quick)
    start = time.perf_counter()
    print(
        f"valleys geometry benchmark: torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, threads {torch.get_num_threads()}{', quick' if args.quick else ''}"
    )
    a = bench_grid_keep(cfg)
    b = bench_grid_recompute(cfg)
    c = bench_eigen(cfg)

    print("\ntargets:")
    checks = [
        (
            f"(a) naive / evaluate_points (auto)    = {a['ratio']:.2f}x (target >= {GRID_TARGET}x; batched=False "
            f"{a['ratio_loop']:.2f}x, batched=True {a['ratio_vmap']:.2f}x; auto chose vmap in {a['auto_vmap']}/"
            f"{a['auto_runs']})",
            a["ratio"] >= GRID_TARGET,
        ),
        (
            f"(a) losses agree with the naive loop  : max |diff| auto {a['diffs']['auto'][0]:.1e}, loop "
            f"{a['diffs']['loop'][0]:.1e}, vmap {a['diffs']['vmap'][0]:.1e} (<= {AGREE_TOL:g}); model "
            f"{'restored' if a['restored'] else 'NOT restored'}",
            max(d[0] for d in a["diffs"].values()) <= AGREE_TOL and a["restored"],
        ),
        (
            f"(b) losses agree with update_bn loop  : max |diff| {b['diff_loss']:.1e} (<= {AGREE_TOL:g}); "
            f"naive / ours = {b['ratio']:.2f}x (no target)",
            b["diff_loss"] <= AGREE_TOL,
        ),
        (
            f"(c) Lanczos needs fewer products      : median {c['med_m']:g} against power iteration {c['med_j']:g} "
            f"({c['ratio']:.2f}x; no numeric target{'; power targets the negative end' if c['negative_end'] else ''})",
            c["converged"] and c["med_m"] < c["med_j"],
        ),
        ("(c) power_iteration = the local loop  : same estimate after the counted products", c["same"]),
    ]
    print_checks(checks)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f}s")
    write_results(
        "bench_geometry",
        {
            "quick": args.quick,
            "threads": torch.get_num_threads(),
            "grid_keep": a,
            "grid_recompute": b,
            "eigen": c,
            "checks": checks_json(checks),
            "all_pass": all(ok for _, ok in checks),
            "total_s": total,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    run_measurement(main)
