"""Cost of consistency training and fast-SWA in valleys, measured side by side in one process.

(1) One training step on the same batch of 128 (SGD, Nesterov momentum 0.9), each including the optimizer
    step, timed in interleaved blocks of consecutive steps (ABBA order); ms per step is the median over blocks:

    * supervised: ``loss = cross_entropy(model(augment(x)), y); loss.backward(); opt.step()`` on one view;
    * Pi: :class:`valleys.training.semisup.ConsistencyStep` ``("pi")``: the student on one view with gradients,
      the student on a second view under ``no_grad``, cross-entropy on the 32 labelled examples plus the
      weighted softmax MSE, backward, step;
    * mean teacher: the same with the target from :class:`valleys.training.semisup.MeanTeacher`'s network
      (train mode, no_grad) and the EMA update of the teacher after the step (``MeanTeacher.on_step_end``).

    Models: the BatchNorm ``SmallCNN(1, 10, width=32)`` on 1x28x28 inputs (Fashion-MNIST-sized) and
    ``CNN1D(40, 10)`` on MNIST-1D-sized signals, random data. Targets: Pi / supervised <= 2.2x, mean teacher /
    supervised <= 1.8x (two forward passes and one backward against one forward and one backward).

(2) fast-SWA's collection in an epoch: one epoch of :class:`valleys.training.trainer.Trainer` with the Pi step
    on MNIST-1D-sized data (3200 unlabelled and 400 labelled signals, mixed batches of 128 with 32 labelled,
    ``CNN1D``), without and with a fast-SWA :class:`valleys.training.callbacks.SWACallback` (no evaluation)
    collecting (a) once at the end of the epoch (how ``valleys semisup`` collects, every k epochs) and (b)
    after every step (the most frequent schedule, ``--fast-swa-unit steps --fast-swa-every 1``). Epochs
    alternate ABBA; target (a) < 2% extra (b) reported.

PASS/FAIL is printed but the script always exits 0 (timings depend on the machine and its load).

Usage::

    python benchmarks/bench_semisup.py            # about 2 minutes on one core
    python benchmarks/bench_semisup.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import alternating, checks_json, fmt_time, run_measurement, spread, verdict, write_results  # noqa: E402

from valleys.core.adapter import ModelAdapter  # noqa: E402
from valleys.methods.averaging import SWA  # noqa: E402
from valleys.training.augment import ImageAugment, SignalAugment  # noqa: E402
from valleys.training.callbacks import SWACallback  # noqa: E402
from valleys.training.semisup import ConsistencyStep, MeanTeacher  # noqa: E402
from valleys.training.semisup_data import NO_LABEL, labelled_split, semisup_loader  # noqa: E402
from valleys.training.trainer import Trainer  # noqa: E402
from valleys.zoo.models import CNN1D, SmallCNN  # noqa: E402

PI_TARGET, MT_TARGET, COLLECT_TARGET = 2.2, 1.8, 1.02


def _steps(model_fn, x, y, augment, block: int, repeats: int) -> dict:
    """ms per step of the supervised, Pi and mean-teacher steps on one batch (median over ABBA blocks)."""
    labels = y.clone()
    labels[32:] = NO_LABEL
    runs = {}
    for name in ("supervised", "pi", "mean-teacher"):
        torch.manual_seed(0)
        model = model_fn()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        teacher = MeanTeacher(model, 0.97) if name == "mean-teacher" else None
        trainer = SimpleNamespace(adapter=ModelAdapter(), device=None, model=model, step=100, steps_per_epoch=10)
        if teacher is not None:
            teacher.on_train_start(trainer)
        step = (
            None
            if name == "supervised"
            else ConsistencyStep(name, augment=augment, weight=30.0, rampup=5, teacher=teacher)
        )

        def one(model=model, opt=opt, step=step, teacher=teacher, trainer=trainer):
            for _ in range(block):
                opt.zero_grad(set_to_none=True)
                if step is None:
                    loss = F.cross_entropy(model(augment(x)), y)
                else:
                    loss = step(trainer, (x, labels)).loss
                loss.backward()
                opt.step()
                if teacher is not None:
                    teacher.on_step_end(trainer)

        model.train()
        one()  # warm-up
        runs[name] = one
    pairs = {}
    for other in ("pi", "mean-teacher"):
        times, _ = alternating({"supervised": runs["supervised"], other: runs[other]}, repeats)
        sup = statistics.median(times["supervised"]) / block
        oth = statistics.median(times[other]) / block
        pairs[other] = {
            "supervised_s": sup,
            "step_s": oth,
            "ratio": oth / sup,
            "spread_pct": max(spread(times["supervised"]), spread(times[other])),
        }
    return pairs


def _epoch_overhead(repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n = 3600
    y = torch.arange(n) % 10
    x = torch.randn(n, 40, generator=g) + 0.1 * y[:, None]
    ds = TensorDataset(x, y)
    lab, unl = labelled_split(y, 40, seed=0)

    def make(mode: str):
        torch.manual_seed(0)
        model = CNN1D(40, 10)
        loader = semisup_loader(ds, lab, unlabelled=unl, batch_size=128, labelled_batch_size=32, seed=0)
        cbs = []
        if mode != "none":
            cbs.append(
                SWACallback(
                    SWA(model, moments=False),
                    0,
                    every="epoch" if mode == "epoch" else "steps",
                    k=1,
                    apply_at_end=False,
                    prefix="fastswa",
                )
            )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        trainer = Trainer(
            model, opt, loader, 10**6, callbacks=cbs, step_fn=ConsistencyStep("pi", augment=SignalAugment())
        )
        for cb in cbs:
            cb.on_train_start(trainer)

        def epoch():
            logs = trainer._train_epoch(None)
            trainer.epoch += 1
            for cb in cbs:
                cb.on_epoch_end(trainer, logs)

        epoch()  # warm-up
        return epoch, len(loader)

    base, steps = make("none")
    at_end, _ = make("epoch")
    every_step, _ = make("steps")
    t1, _ = alternating({"none": base, "epoch": at_end}, repeats)
    t2, _ = alternating({"none": base, "steps": every_step}, repeats)
    a = statistics.median(t1["epoch"]) / statistics.median(t1["none"])
    b = statistics.median(t2["steps"]) / statistics.median(t2["none"])
    return {
        "steps_per_epoch": steps,
        "epoch_s": statistics.median(t1["none"]),
        "collect_at_epoch_end_ratio": a,
        "collect_every_step_ratio": b,
        "spread_pct": max(spread(v) for v in (*t1.values(), *t2.values())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, for stable numbers)")
    ap.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.machine()}, threads {torch.get_num_threads()}"
        f"{', quick' if args.quick else ''}"
    )
    repeats = 4 if args.quick else 8
    g = torch.Generator().manual_seed(0)
    cases = {
        "SmallCNN (BatchNorm), 1x28x28": (
            lambda: SmallCNN(1, 10, width=32),
            torch.randn(128, 1, 28, 28, generator=g),
            ImageAugment(translate=2),
        ),
        "CNN1D, 40-sample signals": (lambda: CNN1D(40, 10), torch.randn(128, 40, generator=g), SignalAugment()),
    }
    y = torch.randint(0, 10, (128,), generator=g)
    checks, out = [], {}
    print("\n(1) one step on a batch of 128 (32 labelled for the consistency steps)")
    for name, (fn, x, aug) in cases.items():
        block = 5 if "SmallCNN" in name else 40
        res = _steps(fn, x, y, aug, block, repeats)
        out[name] = res
        for other, r in res.items():
            target = PI_TARGET if other == "pi" else MT_TARGET
            print(
                f"  {name:32s} supervised {fmt_time(r['supervised_s'])}  {other:12s} {fmt_time(r['step_s'])}  "
                f"ratio {r['ratio']:.2f}x (target <= {target}x, spread {r['spread_pct']:.0f}%)  "
                f"{verdict(r['ratio'] <= target)}"
            )
            checks.append(
                (f"{name}: {other} step / supervised step = {r['ratio']:.2f}x <= {target}x", r["ratio"] <= target)
            )
    print("\n(2) one epoch of Pi training (3600 MNIST-1D-sized signals), with and without fast-SWA collection")
    t0 = time.perf_counter()
    ep = _epoch_overhead(repeats)
    out["epoch"] = ep
    print(
        f"  {ep['steps_per_epoch']} steps, {fmt_time(ep['epoch_s'])} per epoch; with a collect at the epoch end "
        f"{ep['collect_at_epoch_end_ratio']:.4f}x (target < {COLLECT_TARGET}x)  "
        f"{verdict(ep['collect_at_epoch_end_ratio'] < COLLECT_TARGET)}; with a collect after every step "
        f"{ep['collect_every_step_ratio']:.4f}x (reported; spread {ep['spread_pct']:.0f}%, "
        f"{time.perf_counter() - t0:.0f} s)"
    )
    checks.append(
        (
            f"fast-SWA collect per epoch: epoch ratio {ep['collect_at_epoch_end_ratio']:.4f} < {COLLECT_TARGET}",
            ep["collect_at_epoch_end_ratio"] < COLLECT_TARGET,
        )
    )
    write_results("bench_semisup", {"quick": args.quick, "results": out, "checks": checks_json(checks)}, args.json)


if __name__ == "__main__":
    run_measurement(main)
