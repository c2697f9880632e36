"""What the user's own model costs at the command line, against the plain PyTorch code it replaces.

On the test package ``tests/user_pkg`` (a BatchNorm 1-D CNN, 16-sample signals, 3 classes; 4,800 training
examples here), measured side by side in one process, alternating (ABBA):

1. **train**: ``valleys train --model file.py:bn_conv --data file.py:signals --method sgd --epochs E`` (the
   command in-process: import of the user's files, hashing, the run folder, per-epoch validation, the final
   evaluation) against a plain loop over the same data (seeded model, shuffled loader, SGD with momentum, the
   same epochs and LR schedule, one final test-set pass), which writes nothing;
2. **import**: ``valleys import net.pt --model ... --data ...`` (read with ``weights_only=True``, key matching,
   the run folder, one evaluation) against ``torch.load`` + ``load_state_dict`` + one test-set pass.

Targets (printed, never failing the build): train through the CLI / plain loop <= 1.5 (the CLI also
evaluates every epoch); import / plain load-and-evaluate <= 3 (it writes a run folder and evaluates two
splits). A check confirms the CLI's trained weights equal the plain loop's.

Usage::

    python benchmarks/bench_user_code.py            # about 1 minute on one core
    python benchmarks/bench_user_code.py --quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from _harness import alternating, checks_json, fmt_time, run_measurement, verdict, write_results
from torch.utils.data import DataLoader

from valleys.app.cli import main as valleys
from valleys.app.user_code import load_reference
from valleys.core.checkpoint import load_checkpoint
from valleys.training.schedules import SWASchedule

PKG = Path(__file__).resolve().parents[1] / "tests" / "user_pkg"
MODEL, DATA = f"{PKG / 'models.py'}:bn_conv", f"{PKG / 'data.py'}:signals"


def plain_train(epochs: int, lr: float, batch: int, seed: int) -> torch.nn.Module:
    """The loop a user writes: the CLI's settings, no validation, no files."""
    data = load_reference(DATA, "--data")(n_train=4800, n_test=1200)
    train = data["train"]
    n = len(train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    train = torch.utils.data.Subset(train, perm[round(0.1 * n) :])  # the CLI's validation hold-out
    torch.manual_seed(seed)
    model = load_reference(MODEL, "--model")()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = SWASchedule(lr, swa_start=epochs, swa_lr=0.01 * lr)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch, shuffle=True, generator=gen)
    for epoch in range(epochs):
        gen.manual_seed(seed + epoch)
        for g in opt.param_groups:
            g["lr"] = schedule.lr(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        for x, _ in DataLoader(data["test"], 1000):
            model(x)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 4
    epochs, lr, batch = (2 if args.quick else 4), 0.05, 64
    tmp = Path(tempfile.mkdtemp())
    flags = ["--model", MODEL, "--data", DATA, "--data-args", "n_train=4800", "n_test=1200"]

    def cli_train() -> Path:
        out = tmp / "run"
        cmd = ["train", *flags, "--method", "sgd", "--epochs", str(epochs), "--lr", str(lr)]
        assert valleys([*cmd, "--batch-size", str(batch), "--out", str(out), "--overwrite", "--no-progress"]) == 0
        return out

    times, last = alternating({"cli": cli_train, "plain": lambda: plain_train(epochs, lr, batch, 0)}, repeats)
    cli_state, _ = load_checkpoint(last["cli"] / "model.safetensors")
    same = all(torch.equal(cli_state["model"][k], v) for k, v in last["plain"].state_dict().items())
    torch.save(last["plain"].state_dict(), tmp / "net.pt")

    def cli_import() -> Path:
        out = tmp / "imported"
        assert valleys(["import", str(tmp / "net.pt"), *flags, "--out", str(out), "--overwrite", "--no-progress"]) == 0
        return out

    def plain_import() -> None:
        model = load_reference(MODEL, "--model")()
        model.load_state_dict(torch.load(tmp / "net.pt", weights_only=True))
        model.eval()
        with torch.no_grad():
            test = load_reference(DATA, "--data")(n_train=4800, n_test=1200)["test"]
            for x, _ in DataLoader(test, 1000):
                model(x)

    itimes, _ = alternating({"cli": cli_import, "plain": plain_import}, repeats)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    imed = {k: statistics.median(v) for k, v in itimes.items()}
    train_ratio, import_ratio = med["cli"] / med["plain"], imed["cli"] / imed["plain"]
    print(f"train, {epochs} epochs of {4800 - 480} examples (median of {repeats}):")
    print(f"  valleys train (CLI, in-process) {fmt_time(med['cli'])}")
    print(f"  plain PyTorch loop              {fmt_time(med['plain'])}   ratio {train_ratio:.2f}")
    print("import a state_dict and evaluate:")
    print(f"  valleys import                  {fmt_time(imed['cli'])}")
    print(f"  torch.load + one test pass      {fmt_time(imed['plain'])}   ratio {import_ratio:.2f}")
    checks = [
        ("CLI weights equal the plain loop's", same),
        (f"train CLI / plain {train_ratio:.2f} <= 1.5", train_ratio <= 1.5),
        (f"import CLI / plain {import_ratio:.2f} <= 3", import_ratio <= 3),
    ]
    for text, ok in checks:
        print(f"  {verdict(ok)}  {text}")
    write_results(
        "bench_user_code",
        {
            "train_s": med,
            "import_s": imed,
            "train_ratio": train_ratio,
            "import_ratio": import_ratio,
            "epochs": epochs,
            "repeats": repeats,
            "checks": checks_json(checks),
        },
        args.json,
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    run_measurement(main)
