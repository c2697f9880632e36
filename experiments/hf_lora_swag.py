"""SWAG over the LoRA adapter of a tiny BERT (built from a config, no download) fine-tuned with transformers'
Trainer on a generated task (does token 7 occur in the first half of 12 tokens?), against the fine-tuned
adapter itself: test accuracy, NLL and ECE of each, and the posterior's size.

The same setting as ``tests/test_hf.py``: 256 training sequences, 4 epochs, LR 5e-3, LoRA rank 4 on the query
and value projections, SWAG rank 3 collected at the ends of epochs 2-4, a BMA of 10 samples (scale 0.5) on 200
test sequences. Usage: ``python experiments/hf_lora_swag.py [--epochs E] [--rank K]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hf import Tokens, _lora_model, _train  # noqa: E402
from valleys.evaluation.predict import evaluate  # noqa: E402
from valleys.hf import SWAGCallback  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rank", type=int, default=3)
    ap.add_argument(
        "--names",
        default="lora",
        choices=["lora", "lora-only"],
        help="lora: the adapter and peft's trainable classifier head (modules_to_save); lora-only: the adapter alone",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = _lora_model()
    swag = SWAGCallback(start=1, rank=args.rank, samples=10, names=args.names)
    with tempfile.TemporaryDirectory() as tmp:
        _train(model, [swag], Path(tmp), epochs=args.epochs)
    test = torch.utils.data.DataLoader(Tokens(200, 1), batch_size=50)
    tuned = evaluate(model, test)
    avg = swag.bma(model, test)
    print(
        f"names={args.names}: {swag.averager.space.size} numbers averaged; posterior: {swag.size()} = "
        f"({args.rank} + 2) x that"
    )
    for name, r in (("fine-tuned adapter", tuned), ("SWAG over the adapter, BMA of 10", avg.metrics)):
        print(f"{name:34s} accuracy {100 * r.accuracy:6.2f}%  NLL {r.nll:.4f}  ECE {r.ece:.4f}")


if __name__ == "__main__":
    main()
