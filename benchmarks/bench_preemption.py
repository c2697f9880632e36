"""What the clean stops cost: the per-step stop check, sampler checkpoints, and how fast a SIGTERM ends a run.

Measured side by side in one process, alternating (ABBA), one thread:

1. **trainer**: ``Trainer.fit`` (4 epochs, MLP on MNIST-1D, batches of 32: 360 steps, where a per-step cost
   shows most) with the stop check after every step, against the same loop with the check removed (the
   ``stopping.requested`` lookup patched out): the check is one dictionary read per step;
2. **ESS**: 200 elliptical slice steps of the subspace posterior of a SWAG run with a checkpoint every 50
   steps (``SamplerCheckpoint`` writing safetensors) against no checkpoint;
3. **stop latency**: ``valleys train`` in a subprocess, SIGTERM once training is under way, time until the
   process has written its checkpoint and exited with status 143 (the grace period a cluster must give).

Targets (printed, never failing the build): trainer with / without the check <= 1.02; ESS with checkpoints /
without <= 1.05; stop latency under 5 s (a cluster's grace period is typically 30 s or more).

Usage::

    python benchmarks/bench_preemption.py            # about 1 minute on one core
    python benchmarks/bench_preemption.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _harness import alternating, checks_json, fmt_time, run_measurement, verdict, write_results

from valleys.core import stopping

SRC = str(Path(__file__).resolve().parents[1] / "src")


def trainer_fit(epochs: int, splits) -> None:
    from valleys.app.config import TrainConfig
    from valleys.app.run_data import build_run_model, split_loader
    from valleys.training.trainer import Trainer

    cfg = TrainConfig(model="mlp", method="sgd", epochs=epochs).resolved()
    model = build_run_model(cfg, splits)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    Trainer(model, opt, split_loader(splits, "train", 32, shuffle=True), epochs).fit(progress=False)


def ess_run(post, steps: int, checkpoint_every: int | None, folder: Path) -> None:
    from valleys.core.checkpoint import save_checkpoint
    from valleys.methods.samplers import SamplerCheckpoint, elliptical_slice

    ck = None
    if checkpoint_every:
        ck = SamplerCheckpoint(lambda s: save_checkpoint(folder / "ck.safetensors", s), every=checkpoint_every)
    elliptical_slice(
        lambda z: float(post.log_likelihood(z)),
        torch.zeros(post.subspace.k, dtype=torch.float64),
        prior_scale=1.0,
        num_samples=steps,
        generator=torch.Generator().manual_seed(0),
        checkpoint=ck,
    )


def stop_latency(tmp: Path) -> tuple[float, int]:
    out = tmp / "stopped"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "valleys", "train", "--model", "mlp", "--method", "swa", "--epochs", "200"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "--no-progress", "--out", str(out)], env=env, stderr=subprocess.DEVNULL)
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        time.sleep(0.05)
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    return time.perf_counter() - start, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 4
    tmp = Path(tempfile.mkdtemp())

    from valleys.app.config import TrainConfig
    from valleys.app.run_data import load_splits
    from valleys.app.train import train_run

    cfg = TrainConfig(model="mlp", method="sgd", epochs=2).resolved()
    splits = load_splits(cfg)
    epochs = 2 if args.quick else 4
    requested = stopping.requested

    def without_check() -> None:
        stopping.requested = lambda: None  # type: ignore[assignment]
        try:
            trainer_fit(epochs, splits)
        finally:
            stopping.requested = requested  # type: ignore[assignment]

    times, _ = alternating({"check": lambda: trainer_fit(epochs, splits), "plain": without_check}, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    train_ratio = med["check"] / med["plain"]

    swag_cfg = TrainConfig(model="mlp", method="swag", epochs=5, swa_start=1, rank=5, samples=2)
    train_run(swag_cfg, tmp / "swag", progress=False)
    from valleys.app.run_data import split_loader
    from valleys.app.studies.common import load_context
    from valleys.app.subspace import SubspaceConfig, build_subspace
    from valleys.methods.subspace_posterior import SubspacePosterior

    model, w_run, run_cfg, _, _ = load_context(str(tmp / "swag"))
    subspace = build_subspace(SubspaceConfig(run=str(tmp / "swag"), rank=3), model, w_run)
    post = SubspacePosterior(model, subspace, split_loader(load_splits(run_cfg), "train", 1000), temperature=100.0)
    steps = 100 if args.quick else 200
    etimes, _ = alternating(
        {"ckpt": lambda: ess_run(post, steps, 50, tmp), "plain": lambda: ess_run(post, steps, None, tmp)}, repeats
    )
    emed = {k: statistics.median(v) for k, v in etimes.items()}
    ess_ratio = emed["ckpt"] / emed["plain"]

    latencies = [stop_latency(tmp) for _ in range(2 if args.quick else 3)]
    shutil.rmtree(tmp, ignore_errors=True)
    lat = statistics.median(t for t, _ in latencies)
    codes = [c for _, c in latencies]
    print(f"trainer, {epochs} epochs of batches of 32 (median of {repeats}):")
    print(f"  with the stop check after every step {fmt_time(med['check'])}")
    print(f"  without it                           {fmt_time(med['plain'])}   ratio {train_ratio:.3f}")
    print(f"ESS, {steps} steps of a 3-D PCA subspace posterior:")
    print(f"  checkpoint every 50 steps            {fmt_time(emed['ckpt'])}")
    print(f"  no checkpoint                        {fmt_time(emed['plain'])}   ratio {ess_ratio:.3f}")
    print(f"SIGTERM to exit (checkpoint written): median {fmt_time(lat)} over {len(latencies)}, exit codes {codes}")
    checks = [
        (f"trainer with / without the check {train_ratio:.3f} <= 1.02", train_ratio <= 1.02),
        (f"ESS with / without checkpoints {ess_ratio:.3f} <= 1.05", ess_ratio <= 1.05),
        (f"stop latency {lat:.2f} s < 5 s, exit 143", lat < 5 and all(c == 143 for c in codes)),
    ]
    for text, ok in checks:
        print(f"  {verdict(ok)}  {text}")
    write_results(
        "bench_preemption",
        {
            "trainer_s": med,
            "trainer_ratio": train_ratio,
            "ess_s": emed,
            "ess_ratio": ess_ratio,
            "stop_latency_s": [t for t, _ in latencies],
            "exit_codes": codes,
            "repeats": repeats,
            "checks": checks_json(checks),
        },
        args.json,
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    run_measurement(main)
