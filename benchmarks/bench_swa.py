"""Cost of SWA collection in valleys' training loop, measured side by side in one process.

For each model (a ~1.9M-parameter MLP where collect cost matters, the small MNIST-1D-sized MLP and the
demo's default 1-D CNN; random data, batch 128):

1. one epoch of plain training (SGD momentum 0.9, CrossEntropy) with ``valleys.training.trainer.Trainer``;
2. the same with ``SWACallback(SWA(model), start=0, every="epoch", apply_at_end=False)``;
3. the same with ``every="steps", k=1`` (collect after every optimizer step);
4. per collect: ``SWA.collect`` (mean + Welford second moments), ``moments=False``, ``check_finite=False``
   and ``torch.optim.swa_utils.AveragedModel.update_parameters`` on the same model: many calls on an
   unchanging model after warm-up, and single calls each right after an SGD step (as in training).

The timed epoch runs, plus a second plain run as an A/A control of the noise, start from the same weights
and are interleaved in carry-over-balanced orders, so drift of the machine hits all alike; each ratio is the
median over repeats of a run's time over the mean of the same repeat's two plain runs. The overhead is also
estimated without timing noise from the per-collect cost in training. A sanity check confirms that, after
the same collects along an SGD trajectory, our mean equals AveragedModel's parameters (and the mean and
variance match float64 computations from the stored snapshots).

Targets: epoch + SWA every epoch / plain epoch < 1.02; our collect / AveragedModel update <= 1.5.
PASS/FAIL is printed but the script always exits 0 (timings are machine-dependent).

Usage::

    python benchmarks/bench_swa.py            # full (about 1.5 min on one core)
    python benchmarks/bench_swa.py --quick    # fewer repeats (about 45 s)
    python benchmarks/bench_swa.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _harness import checks_json, fmt_time, run_measurement, spread, verdict, write_results  # noqa: E402 (benchmarks/ is on sys.path when run)
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import TensorDataset

from valleys.core.weights import WeightSpace
from valleys.methods.averaging import SWA
from valleys.training.callbacks import SWACallback
from valleys.training.trainer import Trainer
from valleys.zoo.data import make_loader
from valleys.zoo.models import CNN1D, MLP

EPOCH_TARGET = 1.02  # epoch + SWA every epoch / plain epoch
COLLECT_TARGET = 1.5  # our collect / AveragedModel.update_parameters
WILLIAMS = ((0, 1, 3, 2), (1, 2, 0, 3), (2, 3, 1, 0), (3, 0, 2, 1))  # Latin square balanced for carry-over


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    in_features: int
    examples: int
    epochs_per_run: int  # epochs per timed Trainer.fit (times are reported per epoch)
    repeats: int  # interleaved repeats of the epoch configurations (a multiple of 4 balances orders)
    collect_calls: int  # collect calls per timing block
    collect_repeats: int  # timing blocks per collect variant
    train_rounds: int  # collects per variant, each right after an SGD step


def make_cases(quick: bool) -> list[Case]:
    big = ("MLP 784-1024-1024-10", lambda: MLP(784, 10, hidden=(1024, 1024)), 784, 6000)
    mlp = ("MLP 40-100-100-10", lambda: MLP(40, 10), 40, 3600)  # MNIST-1D sized, the old demo model
    cnn = ("CNN1D 40 (demo default)", lambda: CNN1D(40, 10), 40, 3600)  # the demo's model on MNIST-1D
    if quick:
        return [Case(*big, 1, 4, 100, 3, 20), Case(*mlp, 5, 4, 1000, 3, 100), Case(*cnn, 3, 4, 1000, 3, 100)]
    return [Case(*big, 1, 8, 200, 5, 40), Case(*mlp, 5, 12, 1000, 5, 300), Case(*cnn, 3, 12, 1000, 5, 300)]


# ---------------------------------------------------------------------------------------------- epochs
def time_fit(model: nn.Module, init: dict, loader, mode: str, epochs: int) -> float:
    """Seconds per epoch of ``Trainer.fit`` from the weights ``init`` with the given SWA mode."""
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callbacks = []
    swa = SWA(model) if mode in ("epoch", "steps") else None
    if mode == "epoch":
        callbacks = [SWACallback(swa, start=0, every="epoch", apply_at_end=False)]
    elif mode == "steps":
        callbacks = [SWACallback(swa, start=0, every="steps", k=1, apply_at_end=False)]
    trainer = Trainer(model, opt, loader, epochs, callbacks=callbacks, seed=0)
    gc.collect()
    t0 = time.perf_counter()
    trainer.fit(progress=False)
    dt = time.perf_counter() - t0
    if callbacks:  # the collects really happened
        expected = epochs if mode == "epoch" else epochs * trainer.steps_per_epoch
        assert callbacks[0].averager.n == expected, (callbacks[0].averager.n, expected)
    return dt / epochs


def bench_epochs(model: nn.Module, loader, case: Case) -> dict[str, list[float]]:
    """Per-epoch times of each mode, one per repeat."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = ("plain", "epoch", "steps", "again")  # "again": plain once more, an A/A control of the noise
    for mode in modes:  # warm-up (allocator, dispatcher caches)
        time_fit(model, init, loader, mode, 1)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(case.repeats):
        # balanced (Williams) orders: over 4 repeats every mode runs once in each position and directly
        # after each other mode once, so carry-over effects (allocator, caches) hit all modes alike
        order = [modes[i] for i in WILLIAMS[r % 4]]
        for mode in order:
            times[mode].append(time_fit(model, init, loader, mode, case.epochs_per_run))
    model.load_state_dict(init)
    return times


# ---------------------------------------------------------------------------------------------- collects
COLLECTORS = ("averaged_model", "swa", "swa_nomoments", "swa_nocheck")


def make_collectors(model: nn.Module) -> dict[str, Callable[[nn.Module], None]]:
    """One fresh averager per variant, as a ``collect(model)`` function."""
    return {
        "averaged_model": AveragedModel(model).update_parameters,
        "swa": SWA(model).collect,
        "swa_nomoments": SWA(model, moments=False).collect,
        "swa_nocheck": SWA(model, check_finite=False).collect,
    }


def bench_collects(model: nn.Module, case: Case) -> dict[str, list[float]]:
    """Seconds per call (one value per block of ``collect_calls`` calls) for each variant, on the same,
    unchanging model: the collect's own cost with its buffers warm in cache."""
    fns = make_collectors(model)
    for f in fns.values():  # warm-up; also gets past the first collect (a copy) in every variant
        for _ in range(10):
            f(model)
    per_call: dict[str, list[float]] = {n: [] for n in COLLECTORS}
    for r in range(case.collect_repeats):
        for name in COLLECTORS[r % 4 :] + COLLECTORS[: r % 4]:
            f = fns[name]
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(case.collect_calls):
                f(model)
            per_call[name].append((time.perf_counter() - t0) / case.collect_calls)
    return per_call


def bench_collects_in_training(model: nn.Module, x: Tensor, y: Tensor, case: Case) -> dict[str, list[float]]:
    """Seconds per call of each variant when every collect directly follows an SGD step (untimed), as in
    ``every="steps", k=1``: the weights changed and the averager's buffers are no longer hot in cache."""
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    fns = make_collectors(net)
    g = torch.Generator().manual_seed(2)

    def sgd_step():
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()

    per_call: dict[str, list[float]] = {n: [] for n in COLLECTORS}
    for r in range(3 + case.train_rounds):  # 3 warm-up rounds
        for name in COLLECTORS[r % 4 :] + COLLECTORS[: r % 4]:
            sgd_step()
            t0 = time.perf_counter()
            fns[name](net)
            dt = time.perf_counter() - t0
            if r >= 3:
                per_call[name].append(dt)
    return per_call


def sanity_check(model: nn.Module, x: Tensor, y: Tensor, collects: int = 25) -> dict[str, float]:
    """Max |our mean - AveragedModel| after the same collects along an SGD trajectory (on a copy of model)."""
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    swa, swa_nm, ref = SWA(net), SWA(net, moments=False), AveragedModel(net)
    snapshots = []
    g = torch.Generator().manual_seed(1)
    for _ in range(collects):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()
        swa.collect(net)
        swa_nm.collect(net)
        ref.update_parameters(net)
        snapshots.append(WeightSpace(net).read(net).double())
    space = WeightSpace(net)
    ref_params = dict(ref.module.named_parameters())
    stack = torch.stack(snapshots)

    def diff_to_ref(mean: torch.Tensor) -> float:
        return max(float((t - ref_params[n].detach()).abs().max()) for n, t in space.unflatten(mean).items())

    return {
        "n": swa.n,
        "n_ref": int(ref.n_averaged),
        "mean_vs_averaged_model": diff_to_ref(swa.mean),
        "mean_nomoments_vs_averaged_model": diff_to_ref(swa_nm.mean),
        "mean_vs_float64": float((swa.mean.double() - stack.mean(0)).abs().max()),
        "variance_vs_float64": float((swa.variance.double() - stack.var(0, unbiased=False)).abs().max()),
        "weight_scale": float(stack.abs().max()),
    }


# ---------------------------------------------------------------------------------------------- main
def quartiles(v: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def run_case(case: Case) -> dict:
    torch.manual_seed(0)
    model = case.build()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(case.examples, case.in_features)
    y = torch.randint(0, 10, (case.examples,))
    loader = make_loader(TensorDataset(x, y), 128, shuffle=True, seed=0)

    print(
        f"\n=== {case.name}: {params:,} parameters, {case.examples} random examples, batch 128, "
        f"{len(loader)} steps/epoch ==="
    )
    t0 = time.perf_counter()
    ep = bench_epochs(model, loader, case)
    co = bench_collects(model, case)
    ct = bench_collects_in_training(model, x, y, case)
    sc = sanity_check(model, x, y)
    elapsed = time.perf_counter() - t0

    med = {k: statistics.median(v) for k, v in ep.items()}
    # baseline of each repeat: the mean of its two plain runs (halves the baseline's noise); A/A: the two
    # plain runs against each other
    base = [(p + a) / 2 for p, a in zip(ep["plain"], ep["again"], strict=True)]
    paired = {m: [t / b for t, b in zip(ep[m], base, strict=True)] for m in ("epoch", "steps")}
    paired["again"] = [a / p for a, p in zip(ep["again"], ep["plain"], strict=True)]
    ratio = {m: statistics.median(v) for m, v in paired.items()}
    cmed = {k: statistics.median(v) for k, v in co.items()}
    tmed = {k: statistics.median(v) for k, v in ct.items()}
    # the overhead the collects alone account for (their in-training cost over the plain epoch): no noise
    est = {"again": 1.0, "epoch": 1 + tmed["swa"] / med["plain"], "steps": 1 + len(loader) * tmed["swa"] / med["plain"]}

    print(
        f"{'epoch (Trainer.fit, time per epoch)':44s} {'median':>11s} {'spread':>7s}  {'/ plain':>7s}  "
        f"{'paired IQR':>13s}  {'collects alone':>14s}"
    )
    print(f"  {'plain SGD (no callbacks)':42s} {fmt_time(med['plain'])} {spread(ep['plain']):6.1f}%")
    for mode, label in (
        ("again", "plain SGD again (A/A: the noise floor)"),
        ("epoch", "+ SWA collect every epoch"),
        ("steps", "+ SWA collect every step (k=1)"),
    ):
        q1, q3 = quartiles(paired[mode])
        print(
            f"  {label:42s} {fmt_time(med[mode])} {spread(ep[mode]):6.1f}%  {ratio[mode]:7.4f}  "
            f"[{q1:.3f}, {q3:.3f}]  {est[mode]:14.4f}"
        )
    print(
        f"  ({case.repeats} interleaved repeats x {case.epochs_per_run} epoch(s) from the same weights; "
        f"'/ plain' = median over repeats of the ratio to"
    )
    print("   the mean of the same repeat's two plain runs (A/A row: second plain run / first);")
    print("   'collects alone' = 1 + in-training collect time x collects per epoch / plain epoch)")
    print(
        f"{'per collect':30s} {'isolated':>11s} {'spread':>7s}  {'/ AvgModel':>10s}   "
        f"{'in training':>11s}  {'/ AvgModel':>10s}"
    )
    rows = [
        ("AveragedModel.update_parameters", "averaged_model"),
        ("SWA.collect (mean + Welford M2)", "swa"),
        ("SWA.collect, moments=False", "swa_nomoments"),
        ("SWA.collect, check_finite=False", "swa_nocheck"),
    ]
    for label, key in rows:
        print(
            f"  {label:30s}{fmt_time(cmed[key])} {spread(co[key]):6.1f}%  "
            f"{cmed[key] / cmed['averaged_model']:9.3f}x   {fmt_time(tmed[key])}  "
            f"{tmed[key] / tmed['averaged_model']:9.3f}x"
        )
    print(
        f"  (isolated: median over {case.collect_repeats} blocks of {case.collect_calls} calls on an unchanging "
        f"model, after warm-up;"
    )
    print(f"   in training: median of {case.train_rounds} single calls, each right after an SGD step)")
    print(
        f"sanity ({sc['n']} collects along an SGD trajectory; AveragedModel n_averaged={sc['n_ref']}; "
        f"max |w| = {sc['weight_scale']:.3g}):"
    )
    print(f"  max |SWA.mean - AveragedModel params|                 {sc['mean_vs_averaged_model']:.3e}")
    print(f"  max |SWA(moments=False).mean - AveragedModel params|  {sc['mean_nomoments_vs_averaged_model']:.3e}")
    print(f"  max |SWA.mean - float64 mean of snapshots|            {sc['mean_vs_float64']:.3e}")
    print(f"  max |SWA.variance - float64 variance of snapshots|    {sc['variance_vs_float64']:.3e}")
    sane = sc["n"] == sc["n_ref"] and sc["mean_vs_averaged_model"] <= 1e-5 * max(1.0, sc["weight_scale"])
    print(f"({elapsed:.1f}s)")
    return {
        "case": case,
        "params": params,
        "r_epoch": ratio["epoch"],
        "r_steps": ratio["steps"],
        "r_collect": cmed["swa"] / cmed["averaged_model"],
        "r_collect_nm": cmed["swa_nomoments"] / cmed["averaged_model"],
        "r_collect_train": tmed["swa"] / tmed["averaged_model"],
        "r_aa": ratio["again"],
        "aa_iqr": quartiles(paired["again"]),
        "est_epoch": est["epoch"],
        "sane": sane,
        "sanity": sc,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, for stable numbers)")
    ap.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the numbers as JSON (default benchmarks/results/bench_swa.json)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(
        f"valleys SWA benchmark: torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, threads {torch.get_num_threads()}{', quick' if args.quick else ''}"
    )
    results = [run_case(c) for c in make_cases(args.quick)]

    print("\n=== summary ===")
    print(
        f"{'model':24s} {'params':>9s}  {'ep+SWA/ep':>9s}  {'ep+stepSWA/ep':>13s}  {'collect/AvgModel':>16s}"
        f"  {'no moments':>10s}  {'in training':>11s}  {'mean vs AvgModel':>16s}"
    )
    for r in results:
        print(
            f"{r['case'].name:24s} {r['params']:>9,}  {r['r_epoch']:9.4f}  {r['r_steps']:13.4f}  "
            f"{r['r_collect']:15.3f}x  {r['r_collect_nm']:9.3f}x  {r['r_collect_train']:10.3f}x  "
            f"{r['sanity']['mean_vs_averaged_model']:16.1e}"
        )
    print("\ntargets:")
    records = []
    for r in results:
        name = r["case"].name
        checks = [
            (
                f"epoch + SWA every epoch / plain epoch = {r['r_epoch']:.4f}  (target < {EPOCH_TARGET}; "
                f"A/A plain/plain {r['r_aa']:.4f}, IQR [{r['aa_iqr'][0]:.3f}, {r['aa_iqr'][1]:.3f}])",
                r["r_epoch"] < EPOCH_TARGET,
            ),
            (
                f"  same, from collect cost alone      = {r['est_epoch']:.4f}  (target < {EPOCH_TARGET}; noise-free)",
                r["est_epoch"] < EPOCH_TARGET,
            ),
            (
                f"SWA.collect / AveragedModel update   = {r['r_collect']:.3f}x (target <= {COLLECT_TARGET}x)",
                r["r_collect"] <= COLLECT_TARGET,
            ),
            (
                f"  same, right after SGD steps        = {r['r_collect_train']:.3f}x (target <= {COLLECT_TARGET}x)",
                r["r_collect_train"] <= COLLECT_TARGET,
            ),
            (f"SWA.mean == AveragedModel params     : max diff {r['sanity']['mean_vs_averaged_model']:.1e}", r["sane"]),
        ]
        for text, ok in checks:
            print(f"  {verdict(ok)}  {name:24s} {text}")
        records.append(
            {
                "model": name,
                "params": r["params"],
                "epoch_ratio": r["r_epoch"],
                "epoch_ratio_from_collect": r["est_epoch"],
                "step_swa_epoch_ratio": r["r_steps"],
                "aa_ratio": r["r_aa"],
                "aa_iqr": list(r["aa_iqr"]),
                "collect_ratio": r["r_collect"],
                "collect_ratio_no_moments": r["r_collect_nm"],
                "collect_ratio_in_training": r["r_collect_train"],
                "mean_vs_averaged_model": r["sanity"]["mean_vs_averaged_model"],
                "checks": checks_json(checks),
            }
        )
    print(
        "  (measured epoch ratios carry the timing noise that the A/A plain/plain control shows; the\n"
        "   'collect cost alone' line is the same overhead estimated from the per-collect time in training)"
    )
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f}s")
    write_results(
        "bench_swa",
        {
            "quick": args.quick,
            "targets": {"epoch_ratio_below": EPOCH_TARGET, "collect_ratio_at_most": COLLECT_TARGET},
            "cases": records,
            "all_pass": all(c["ok"] for rec in records for c in rec["checks"]),
            "total_s": total,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    run_measurement(main)
