"""The Hessian spectrum against PyHessian, side by side in one process, one thread (``torch.set_num_threads(1)``).

Model and data as ``bench_peers.py``: the BatchNorm CNN (56k parameters) in eval mode on 1000 random 1x28x28
examples with random labels (``--quick``: 200), one batch.

(a) **Trace**: PyHessian's ``hessian.trace(maxIter=100, tol=-1)`` (Hutchinson, 100 Rademacher probes; Yao et
    al. 2020) over ``seeds`` seeds, against valleys' ``hutchpp_trace`` (Meyer et al. 2021) with ``products``
    Hessian-vector products (default 33, a third) over the same number of seeds. Reported: the spread (standard
    deviation over seeds) and the median wall time of each, and their ratios. Target (issue 26): Hutch++'s spread
    <= PyHessian's at <= 1/3 of its time. Also ``hutchinson_trace(..., batch=8)`` (valleys' batched products)
    against PyHessian for the same 100 probes.
(b) **Density**: PyHessian's ``density(iter, n_v)`` cannot run on current PyTorch (it calls ``torch.eig``,
    removed in PyTorch 2); its loop is re-implemented faithfully (Rademacher start, ``iter`` Lanczos steps
    with its reorthogonalisation, eigenvectors of T by ``torch.linalg.eigh`` in place of ``torch.eig``) and
    timed against ``spectral_density(steps=iter, starts=n_v)``; over seeds, the first four moments of each and
    the Wasserstein-1 distance between the two smoothed densities (PyHessian's ``density_generate``
    smoothing) against the spread between PyHessian's own seeds. Target: within PyHessian's own spread, faster.
(c) **Batched products**: ``hvp_many`` of 8 vectors in one pass against 8 single products, on the CNN and on
    the 784-100-100-10 MLP (1000 examples).

    python benchmarks/bench_spectrum.py            # a few minutes on one core
    python benchmarks/bench_spectrum.py --quick

Times are medians; the script always exits 0 and writes its JSON (``benchmarks/results/bench_spectrum.json``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _harness import checks_json, fmt_time, run_measurement, verdict, write_results
from bench_peers import BNCNN, load_peers, peer_hessian
from torch import Tensor, nn

from valleys.geometry.hessian import LossFunction, hutchinson_trace
from valleys.geometry.spectrum import density_curve, hutchpp_trace, spectral_density, spectral_moments


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def pyhessian_density(hvp, params: list[Tensor], steps: int, gen_seed: int) -> tuple[list[float], list[float]]:
    """PyHessian's ``density`` loop for one start (n_v = 1), with ``torch.linalg.eigh`` for ``torch.eig``."""
    torch.manual_seed(gen_seed)
    v = [torch.randint_like(p, high=2) for p in params]
    for vi in v:
        vi[vi == 0] = -1
    v = _normalise(v)
    v_list, alpha_list, beta_list = [v], [], []
    w: list[Tensor] = []
    for i in range(steps):
        if i == 0:
            w_prime = hvp(v)
            alpha = _dot(w_prime, v)
            alpha_list.append(alpha)
            w = [a - alpha * b for a, b in zip(w_prime, v, strict=True)]
        else:
            beta = math.sqrt(_dot(w, w))
            beta_list.append(beta)
            v = _orthonormal(w, v_list) if beta != 0 else _orthonormal([torch.randn_like(p) for p in params], v_list)
            v_list.append(v)
            w_prime = hvp(v)
            alpha = _dot(w_prime, v)
            alpha_list.append(alpha)
            w = [a - alpha * b - beta * c for a, b, c in zip(w_prime, v, v_list[-2], strict=True)]
    t = torch.zeros(steps, steps)
    for i in range(len(alpha_list)):
        t[i, i] = alpha_list[i]
        if i < len(alpha_list) - 1:
            t[i + 1, i] = t[i, i + 1] = beta_list[i]
    evals, evecs = torch.linalg.eigh(t)
    return evals.tolist(), (evecs[0, :] ** 2).tolist()


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _normalise(v: list[Tensor]) -> list[Tensor]:
    s = math.sqrt(_dot(v, v)) + 1e-6
    return [a / s for a in v]


def _orthonormal(w: list[Tensor], v_list: list[list[Tensor]]) -> list[Tensor]:
    for v in v_list:  # PyHessian's orthnormal: one Gram-Schmidt pass against every earlier vector
        c = _dot(w, v)
        w = [a - c * b for a, b in zip(w, v, strict=True)]
    return _normalise(w)


def w1(grid_a: Tensor, dens_a: Tensor, grid_b: Tensor, dens_b: Tensor) -> float:
    """Wasserstein-1 distance between two densities on grids: the integral of |CDF_a - CDF_b|."""
    lo, hi = float(min(grid_a[0], grid_b[0])), float(max(grid_a[-1], grid_b[-1]))
    x = torch.linspace(lo, hi, 20001, dtype=torch.float64)

    def cdf(g: Tensor, d: Tensor) -> Tensor:
        c = torch.cumsum(d, 0) * (g[1] - g[0])
        return torch.from_numpy(__import__("numpy").interp(x.numpy(), g.numpy(), c.numpy(), left=0.0, right=1.0))

    return float((cdf(grid_a, dens_a) - cdf(grid_b, dens_b)).abs().sum() * (x[1] - x[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--products", type=int, default=33)
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--probes", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--trace-only", action="store_true", help="part (a) alone")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model, the data and both sides' products)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.examples or (200 if args.quick else 1000)
    seeds = args.seeds or (5 if args.quick else 20)
    probes = args.probes or (30 if args.quick else 100)
    steps = args.steps or (30 if args.quick else 100)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = BNCNN().to(dev)
    x, y = torch.randn(n, 1, 28, 28).to(dev), torch.randint(0, 10, (n,)).to(dev)
    model.train()
    with torch.no_grad():
        model(x)  # non-default running statistics
    model.eval()
    peers = load_peers()
    peer, peer_hvp, which = peer_hessian(peers, model, (x, y), cuda=dev.type == "cuda")
    loss = LossFunction(model, [(x, y)])
    w = loss.space.read(model)
    loss.hvp(w, torch.zeros_like(w))  # build the gradient graph once (as PyHessian does in its constructor)

    # (a) trace
    ph_t, ph_v = [], []
    for s in range(seeds):
        torch.manual_seed(s)
        t, vals = timed(lambda: peer.trace(maxIter=probes, tol=-1))
        ph_t.append(t)
        ph_v.append(statistics.mean(vals))
    pp_t, pp_v = [], []
    for s in range(seeds):
        t, r = timed(lambda s=s: hutchpp_trace(loss, w, args.products, torch.Generator().manual_seed(s)))
        pp_t.append(t)
        pp_v.append(r["trace"])
    hb_t = [
        timed(lambda s=s: hutchinson_trace(loss, w, probes, torch.Generator().manual_seed(s), batch=8))[0]
        for s in range(3)
    ]
    spread_ph, spread_pp = statistics.stdev(ph_v), statistics.stdev(pp_v)
    time_ph, time_pp, time_hb = statistics.median(ph_t), statistics.median(pp_t), statistics.median(hb_t)

    if args.trace_only:
        ratio = time_pp / time_ph
        print(f"BN CNN, {n} examples, peer: {which}; trace over {seeds} seeds")
        print(f"  PyHessian Hutchinson, {probes} probes   spread {spread_ph:.4g}   time {fmt_time(time_ph)}")
        print(f"  valleys Hutch++, {args.products} products    spread {spread_pp:.4g}   time {fmt_time(time_pp)}")
        print(f"  valleys Hutchinson {probes}, batched 8    time {fmt_time(time_hb)}")
        checks = [
            (f"Hutch++ spread {spread_pp:.3g} <= PyHessian's {spread_ph:.3g}", spread_pp <= spread_ph),
            (f"Hutch++ time <= 1/3 of PyHessian's ({ratio:.2f})", ratio <= 1 / 3),
        ]
        for text, ok in checks:
            print(f"  {verdict(ok)}  {text}")
        trace = {
            "pyhessian": {"spread": spread_ph, "time_s": time_ph, "values": ph_v},
            "hutchpp": {"spread": spread_pp, "time_s": time_pp, "values": pp_v, "products": args.products},
        }
        write_results(
            "bench_spectrum_trace",
            {"examples": n, "seeds": seeds, "trace": trace, "checks": checks_json(checks)},
            args.json,
        )
        return

    # (b) density
    params = [p for p in model.parameters() if p.requires_grad]
    ph_runs, our_runs, ph_dt, our_dt = [], [], [], []
    for s in range(min(seeds, 5)):
        t, run = timed(lambda s=s: pyhessian_density(peer_hvp, params, steps, s))
        ph_dt.append(t)
        ph_runs.append(run)
        t, d = timed(
            lambda s=s: spectral_density(loss, w, steps=steps, starts=1, generator=torch.Generator().manual_seed(s))
        )
        our_dt.append(t)
        our_runs.append((d["nodes"][0], d["weights"][0]))
    curves_ph = [density_curve([r[0]], [r[1]], bins=2000) for r in ph_runs]
    curves_our = [density_curve([r[0]], [r[1]], bins=2000) for r in our_runs]
    w1_self = [w1(*curves_ph[i], *curves_ph[j]) for i in range(len(ph_runs)) for j in range(i + 1, len(ph_runs))]
    w1_cross = [w1(*curves_ph[i], *curves_our[i]) for i in range(len(ph_runs))]
    mom_ph = [spectral_moments([r[0]], [r[1]], 4) for r in ph_runs]
    mom_our = [spectral_moments([r[0]], [r[1]], 4) for r in our_runs]

    # (c) batched products
    def batched_ratio(lf: LossFunction, wv: Tensor) -> tuple[float, float]:
        vs = torch.randn(8, wv.numel(), generator=torch.Generator().manual_seed(0)).to(wv.device)
        lf.hvp(wv, vs[0])
        loop = statistics.median(timed(lambda: [lf.hvp(wv, v) for v in vs])[0] for _ in range(3))
        many = statistics.median(timed(lambda: lf.hvp_many(wv, vs, batched=True))[0] for _ in range(3))
        return loop, many

    cnn_loop, cnn_many = batched_ratio(loss, w)
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
    ).to(dev)
    mloss = LossFunction(mlp, [(x[:1000], y[:1000])])
    mlp_loop, mlp_many = batched_ratio(mloss, mloss.space.read(mlp))

    print(f"BN CNN, {n} examples, peer: {which}")
    print(f"(a) trace over {seeds} seeds:")
    print(f"  PyHessian Hutchinson, {probes} probes   spread {spread_ph:.4g}   time {fmt_time(time_ph)}")
    print(f"  valleys Hutch++, {args.products} products    spread {spread_pp:.4g}   time {fmt_time(time_pp)}")
    print(
        f"  valleys Hutchinson {probes}, batched 8    time {fmt_time(time_hb)}   "
        f"(PyHessian / valleys {time_ph / time_hb:.2f}x)"
    )
    print(f"(b) density, {steps} Lanczos steps, 1 start, {len(ph_runs)} seeds:")
    print(f"  PyHessian loop {fmt_time(statistics.median(ph_dt))}   valleys {fmt_time(statistics.median(our_dt))}")
    for j in range(4):
        a = [m[j] for m in mom_ph]
        b = [m[j] for m in mom_our]
        print(
            f"  moment {j + 1}: PyHessian {statistics.mean(a):.4g} ± {statistics.stdev(a):.2g}   "
            f"valleys {statistics.mean(b):.4g} ± {statistics.stdev(b):.2g}"
        )
    print(
        f"  W1(valleys, PyHessian) same seed: median {statistics.median(w1_cross):.4g}; "
        f"PyHessian between its own seeds: median {statistics.median(w1_self):.4g}"
    )
    print(
        f"(c) 8 products: CNN loop {fmt_time(cnn_loop)} batched {fmt_time(cnn_many)} ({cnn_loop / cnn_many:.2f}x); "
        f"MLP loop {fmt_time(mlp_loop)} batched {fmt_time(mlp_many)} ({mlp_loop / mlp_many:.2f}x)"
    )
    moments_ok = all(
        abs(statistics.mean(m[j] for m in mom_our) - statistics.mean(m[j] for m in mom_ph))
        <= 2 * max(statistics.stdev(m[j] for m in mom_ph), 1e-12)
        for j in range(4)
    )
    checks = [
        (f"Hutch++ spread {spread_pp:.3g} <= PyHessian's {spread_ph:.3g}", spread_pp <= spread_ph),
        (f"Hutch++ time <= 1/3 of PyHessian's ({time_pp / time_ph:.2f})", time_pp <= time_ph / 3),
        ("density moments within PyHessian's own spread (2 sd)", moments_ok),
        ("W1 to PyHessian within its own seed-to-seed W1", statistics.median(w1_cross) <= statistics.median(w1_self)),
        (
            f"density faster than PyHessian's loop ({statistics.median(ph_dt) / statistics.median(our_dt):.2f}x)",
            statistics.median(our_dt) < statistics.median(ph_dt),
        ),
    ]
    for text, ok in checks:
        print(f"  {verdict(ok)}  {text}")
    result: dict[str, Any] = {
        "examples": n,
        "device": str(dev),
        "peer": which,
        "trace": {
            "seeds": seeds,
            "pyhessian": {"spread": spread_ph, "time_s": time_ph, "probes": probes},
            "hutchpp": {"spread": spread_pp, "time_s": time_pp, "products": args.products},
            "hutchinson_batched_time_s": time_hb,
        },
        "density": {
            "steps": steps,
            "pyhessian_s": ph_dt,
            "valleys_s": our_dt,
            "moments_pyhessian": mom_ph,
            "moments_valleys": mom_our,
            "w1_cross": w1_cross,
            "w1_pyhessian_self": w1_self,
        },
        "batched": {
            "cnn_loop_s": cnn_loop,
            "cnn_batched_s": cnn_many,
            "mlp_loop_s": mlp_loop,
            "mlp_batched_s": mlp_many,
        },
        "checks": checks_json(checks),
    }
    write_results("bench_spectrum", result, args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    run_measurement(main)
