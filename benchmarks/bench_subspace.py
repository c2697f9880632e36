"""Subspace inference: the cost of the posterior against the obvious alternatives, side by side in one process.

Model and data: the demo's 1-D CNN on the MNIST-1D training split (3600 examples, batches of 1000), weights as
initialised (the timing does not depend on training), a random 5-dimensional subspace around them.

(a) One posterior evaluation at a new z, ``SubspacePosterior.log_likelihood(z)`` (form ``w = shift + z B``,
    swap it in, one pass over the data through the engine) against a plain evaluation pass over the same data
    at fixed weights (``model(x)`` and ``cross_entropy(reduction="sum")`` per batch, no gradients). Target:
    ours / plain <= 1.1.
(b) The log posterior on a 31 x 31 grid of z (first two coordinates), all points through the engine at once
    (``log_prob`` of a (961, k) tensor: vmap or loop, chosen by timing), against a per-point loop (write
    ``w(z)`` into the model, a plain pass). Target: loop / ours >= 2.0, the same numbers (1e-6 relative).
(b2) The same grid on the regression protocol's model (a Gaussian MLP, 8-50-2, on concrete's 834 training rows,
    Gaussian NLL), where the engine's timing probe picks vmap over the stacked weights: the same target.
(c) Elliptical slice sampling on that posterior (T = 100, prior scale 2): likelihood evaluations per step and
    per effective sample (effective sample size of each coordinate by the initial-positive-sequence estimator,
    Geyer 1992).

    python benchmarks/bench_subspace.py            # full
    python benchmarks/bench_subspace.py --quick    # 11 x 11 grid, 50 ESS steps

One thread (``torch.set_num_threads(1)``); times are medians over interleaved repeats; always exits 0.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import torch
from _harness import (
    alternating,
    checks_json,
    fmt_time,
    macs_per_example,
    matmul_flops,
    print_checks,
    run_measurement,
    verdict,
    write_results,
)
from torch import nn

from valleys.core.weights import WeightSpace
from valleys.methods.samplers import elliptical_slice
from valleys.methods.subspace import random_subspace
from valleys.methods.subspace_posterior import SubspacePosterior
from valleys.zoo.data import load_dataset, make_loader
from valleys.zoo.models import build_model


def effective_sample_size(x: torch.Tensor) -> float:
    """ESS of a 1-D chain by Geyer's initial positive sequence of autocorrelation pairs."""
    x = x.double() - x.double().mean()
    n = len(x)
    var = float((x * x).mean())
    if var == 0 or n < 4:
        return float(n)
    ac = [float((x[: n - t] * x[t:]).mean()) / var for t in range(n)]
    s = 0.0
    for t in range(1, n - 1, 2):
        pair = ac[t] + ac[t + 1]
        if pair <= 0:
            break
        s += pair
    return n / (1 + 2 * s)


def grid_case(
    label: str,
    title: str,
    post: SubspacePosterior,
    space: WeightSpace,
    sub: Any,
    model: nn.Module,
    plain: Any,
    zz: torch.Tensor,
    repeats: int,
    checks: list,
    x: torch.Tensor,
) -> dict[str, Any]:
    """The log-likelihood at every row of ``zz`` through the engine (all at once) against a per-point loop that
    writes ``w(z)`` into ``model`` and calls ``plain()`` (the summed loss); prints, appends the checks (loop /
    engine >= 2.0x, the same numbers to 1e-6 relative) and returns the JSON entry. ``x``: one batch of
    inputs, for the multiply-adds per example (the fraction of the machine's matmul throughput each way
    reaches)."""

    def grid_ours() -> torch.Tensor:
        return post.log_likelihood(zz)

    def grid_loop() -> torch.Tensor:
        w0 = space.read(model)
        out = []
        try:
            for z in zz:
                space.write(model, sub.to_weights(z.to(sub.basis.dtype)))
                out.append(-plain())
        finally:
            space.write(model, w0)
        return torch.tensor(out, dtype=torch.float64) / post.temperature

    grid_ours()  # the engine's one-off vmap-or-loop probe (cached per model and input shape)
    times, last = alternating({"engine": grid_ours, "loop": grid_loop}, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["loop"] / med["engine"]
    diff = float(((last["engine"] - last["loop"]).abs() / last["loop"].abs()).max())
    print(f"\n{label} {title}")
    print(
        f"  engine (all points at once) {fmt_time(med['engine'])}\n"
        f"  per-point loop              {fmt_time(med['loop'])}"
    )
    peak = matmul_flops()
    flops = 2 * macs_per_example(model, x) * post.num_examples * len(zz)
    roof = {k: flops / med[k] / peak for k in med}
    print(
        f"  matmul throughput {peak / 1e9:.1f} GFLOP/s; the grid's forward passes {flops / 1e9:.2f} GFLOP: engine "
        f"{100 * roof['engine']:.0f}%, loop {100 * roof['loop']:.0f}% of matmul"
    )
    print(f"  ratio loop / engine {ratio:.2f}x   {verdict(ratio >= 2.0)}   (max relative difference {diff:.1e})")
    checks.append((f"{label} grid: per-point loop / engine = {ratio:.2f}x >= 2.0x", ratio >= 2.0))
    checks.append((f"{label} the same numbers (max relative difference {diff:.1e} <= 1e-6)", diff <= 1e-6))
    return {
        "n": int(round(len(zz) ** 0.5)),
        "median_s": med,
        "ratio": ratio,
        "max_rel_diff": diff,
        "matmul_gflops": peak / 1e9,
        "grid_gflop": flops / 1e9,
        "fraction_of_matmul": roof,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    splits = load_dataset("mnist1d")
    model = build_model("cnn1d", splits.input_shape, splits.num_classes).eval()
    loader = list(make_loader(splits.train, 1000))
    space = WeightSpace(model)
    sub = random_subspace(space.read(model), 5, generator=torch.Generator().manual_seed(1))
    post = SubspacePosterior(model, sub, loader, temperature=1.0, prior_scale=1.0)
    results: dict[str, Any] = {
        "P": space.size,
        "examples": post.num_examples,
        "quick": args.quick,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    checks: list[tuple[str, bool]] = []
    print(f"torch {torch.__version__}, 1 thread; cnn1d (P = {space.size}) on {post.num_examples} MNIST-1D examples")

    # (a) ------------------------------------------------------------------------------------------------
    def plain() -> float:
        total = 0.0
        with torch.no_grad():
            for x, y in loader:
                total += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
        return total

    gen = torch.Generator().manual_seed(2)

    def ours() -> float:
        return float(post.log_likelihood(torch.randn(5, generator=gen, dtype=torch.float64) * 0.1))

    times, _ = alternating({"plain": plain, "ours": ours}, 6 if args.quick else 20)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["plain"]
    print("\n(a) one posterior evaluation at a new z vs a plain pass at fixed weights")
    print(f"  plain pass        {fmt_time(med['plain'])}\n  log_likelihood(z) {fmt_time(med['ours'])}")
    print(f"  ratio ours / plain {ratio:.3f}   {verdict(ratio <= 1.1)}")
    checks.append((f"(a) posterior evaluation / plain pass = {ratio:.3f} <= 1.1", ratio <= 1.1))
    results["one_evaluation"] = {"median_s": med, "ratio": ratio}

    # (b) ------------------------------------------------------------------------------------------------
    n = 11 if args.quick else 31
    axis = torch.linspace(-1, 1, n, dtype=torch.float64)
    zz = torch.zeros(n * n, 5, dtype=torch.float64)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    zz[:, 0], zz[:, 1] = gx.reshape(-1), gy.reshape(-1)

    results["grid"] = grid_case(
        "(b)",
        f"log posterior on a {n} x {n} grid",
        post,
        space,
        sub,
        model,
        plain,
        zz,
        1 if args.quick else 3,
        checks,
        loader[0][0],
    )

    # (b2) ------------------------------------------------------------------------------------------------
    from valleys.core.adapter import ModelAdapter, gaussian_nll
    from valleys.zoo.regression import GaussianMLP, load_regression

    reg = load_regression("concrete")
    torch.manual_seed(0)
    mlp = GaussianMLP(reg.input_shape[0]).eval()
    reg_loader = list(make_loader(reg.train, 1000))
    mspace = WeightSpace(mlp)
    msub = random_subspace(mspace.read(mlp), 5, generator=torch.Generator().manual_seed(1))
    mpost = SubspacePosterior(mlp, msub, reg_loader, adapter=ModelAdapter(loss="gaussian"))

    def mlp_plain() -> float:
        with torch.no_grad():
            return sum(float(gaussian_nll(mlp(x), y)) * len(y) for x, y in reg_loader)

    results["grid_mlp"] = grid_case(
        "(b2)",
        f"log posterior on a {n} x {n} grid, Gaussian MLP (P = {mspace.size}) on {mpost.num_examples} concrete rows",
        mpost,
        mspace,
        msub,
        mlp,
        mlp_plain,
        zz,
        3 if args.quick else 5,
        checks,
        reg_loader[0][0],
    )

    # (c) ------------------------------------------------------------------------------------------------
    steps = 50 if args.quick else 300
    tempered = SubspacePosterior(model, sub, loader, temperature=100.0, prior_scale=2.0)
    t0 = time.perf_counter()
    res = elliptical_slice(
        lambda z: float(tempered.log_likelihood(z)),
        torch.zeros(5),
        prior_scale=2.0,
        num_samples=steps,
        generator=torch.Generator().manual_seed(3),
    )
    dt = time.perf_counter() - t0
    ess = [effective_sample_size(res.samples[:, j]) for j in range(5)]
    evals = res.diagnostics["likelihood_evaluations"]
    per_ess = evals / min(ess)
    print(f"\n(c) elliptical slice sampling, T = 100, prior scale 2, {steps} steps in {dt:.1f} s")
    print(f"  likelihood evaluations {evals} ({res.diagnostics['evaluations_per_step']:.2f} per step)")
    print(
        f"  effective sample size per coordinate {[round(e, 1) for e in ess]}; "
        f"{per_ess:.1f} evaluations per effective sample (worst coordinate)"
    )
    results["ess"] = {
        "steps": steps,
        "time_s": dt,
        "evaluations": evals,
        "ess": ess,
        "evaluations_per_effective_sample": per_ess,
    }

    print("\nChecks")
    print_checks(checks)
    results["checks"] = checks_json(checks)
    print(f"\nwrote {write_results('bench_subspace', results, args.json)}")


if __name__ == "__main__":
    run_measurement(main)
