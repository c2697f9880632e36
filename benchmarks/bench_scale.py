"""valleys at the talk's scale on the CPU: SWAG, sampling, PCA and subspace inference at P = 36.5M, and SWAG
over the LoRA adapters of a >= 100M-parameter transformer. Minutes, not hours.

(a) A WideResNet-28x10 (Zagoruyko & Komodakis 2016; 36.5M parameters, CIFAR-sized 3x32x32 inputs, as in the
    talk's "posterior of a WideResNet with 36 million parameters in a 5-D subspace"), K = 20:
    * one SGD training step on a batch of 8 (forward, backward, step) against one ``SWAG.collect`` (running
      mean, Welford second moment, a deviation row written in its ring slot), median of repeats;
    * memory: the growth of the process's resident set (``VmRSS``) from before the SWAG to after 25 collects,
      against (K + 2) x P x 4 bytes (target: within 5%);
    * drawing 30 samples: ``SWAG.samples(30)`` (blocks of 8 draws, one pass over the (K, P) deviations per
      block) and one draw at a time (``chunk=1``, the draws before blocks), per draw, against the floor of one
      draw: one read of the deviations (``D.sum()``) plus P normals (``torch.randn(P)``). Target: within 1.5x;
    * the PCA subspace (k = 5) from the deviations (``pca_subspace``, the K x K Gram matrix in float64);
    * one subspace log-likelihood evaluation (``SubspacePosterior.log_likelihood(z)`` on a fixed batch of 32,
      BatchNorm statistics kept) against a plain eval forward pass on that batch.
(b) SWAG over the LoRA adapters (rank 8 on the attention projections, ``peft``) of a GPT-2-shaped transformer
    built from a config (12 layers, width 768: 124M parameters, no download): one training step (batch 4 x
    128 tokens) against one ``SWAG.collect`` over the adapters only, as a fraction of the step.

    python benchmarks/bench_scale.py            # both (about 5 minutes on 2 cores)
    python benchmarks/bench_scale.py --quick    # a WideResNet-16x4 and a 4-layer transformer (under a minute)
    python benchmarks/bench_scale.py --sections a

Uses every core torch is given (``--threads``); always exits 0 and writes JSON beside its printout.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from typing import Any

import torch
from _harness import checks_json, fmt_time, print_checks, run_measurement, verdict, write_results
from torch import Tensor, nn

from valleys.core.weights import WeightSpace
from valleys.methods.subspace import pca_subspace
from valleys.methods.subspace_posterior import SubspacePosterior
from valleys.methods.swag import SWAG


# ---------------------------------------------------------------------------------------------- the model
class _Block(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 shortcut when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(torch.relu(self.bn2(y)))
        return y + (self.short(o) if self.short is not None else x)


class WideResNet(nn.Module):
    """WideResNet-depth-width for 3x32x32 inputs (Zagoruyko & Komodakis 2016)."""

    def __init__(self, depth: int = 28, width: int = 10, classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
        cin = 16
        for g, stride in zip(range(3), (1, 2, 2), strict=True):
            for i in range(n):
                layers.append(_Block(cin, widths[g + 1], stride if i == 0 else 1))
                cin = widths[g + 1]
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.features(x)))
        return self.head(h.mean((2, 3)))


def rss_bytes() -> int:
    """The process's resident set (``VmRSS``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- (a)
def wide_resnet(quick: bool, checks: list) -> dict[str, Any]:
    torch.manual_seed(0)
    depth, width, k = (16, 4, 20) if quick else (28, 10, 20)
    model = WideResNet(depth, width)
    space = WeightSpace(model)
    p = space.size
    print(f"\n(a) WideResNet-{depth}x{width}, P = {p / 1e6:.1f}M, K = {k}")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    step()
    step_s = median_time(step, 3)
    rss0 = rss_bytes()
    swag = SWAG(model, rank=k)
    g = torch.Generator().manual_seed(1)
    params = space.parameters(model)

    def nudge() -> None:  # the weights move between collects, as in training (untimed)
        with torch.no_grad():
            for q in params:
                q.add_(torch.randn(q.shape, generator=g), alpha=1e-3)

    collect_times = []
    for _ in range(k + 5):
        nudge()
        t0 = time.perf_counter()
        swag.collect(model)
        collect_times.append(time.perf_counter() - t0)
    gc.collect()
    grown = rss_bytes() - rss0
    collect_s = statistics.median(collect_times[2:])
    want = (k + 2) * p * 4
    print(f"  training step (batch 8)   {fmt_time(step_s)}")
    print(f"  SWAG.collect              {fmt_time(collect_s)}   ({100 * collect_s / step_s:.1f}% of a step)")
    print(
        f"  memory growth {grown / 2**20:,.0f} MiB vs (K + 2) P x 4 B = {want / 2**20:,.0f} MiB   ({grown / want:.3f}x)"
    )
    checks.append((f"(a) SWAG memory {grown / want:.3f}x (K + 2) P within 5%", abs(grown / want - 1) <= 0.05))

    # draws
    d = swag.deviations
    read_s = median_time(d.sum, 3)
    normals_s = median_time(lambda: torch.randn(p, generator=torch.Generator().manual_seed(2)), 3)
    floor = read_s + normals_s
    n = 30

    def draws(chunk: int) -> None:
        for _ in swag.samples(n, generator=torch.Generator().manual_seed(3), chunk=chunk):
            pass

    block_s = median_time(lambda: draws(8), 2 if not quick else 3) / n
    single_s = median_time(lambda: draws(1), 1 if not quick else 3) / n
    print(f"  floor of one draw: read D {fmt_time(read_s)} + P normals {fmt_time(normals_s)} = {fmt_time(floor)}")
    print(
        f"  one draw, blocks of 8     {fmt_time(block_s)}   {block_s / floor:.2f}x the floor   "
        f"{verdict(block_s <= 1.5 * floor)}"
    )
    print(f"  one draw, one at a time   {fmt_time(single_s)}   {single_s / floor:.2f}x the floor (before blocks)")
    checks.append(
        (f"(a) a draw in blocks of 8 at {block_s / floor:.2f}x (read D + P normals) <= 1.5x", block_s <= 1.5 * floor)
    )

    # PCA subspace and one likelihood evaluation
    t0 = time.perf_counter()
    sub = pca_subspace(d, 5, shift=swag.mean)
    pca_s = time.perf_counter() - t0
    model.eval()
    xb, yb = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    post = SubspacePosterior(model, sub, [(xb, yb)], bn="keep")
    z = torch.zeros(5, dtype=torch.float64)
    post.log_likelihood(z)
    ll_s = median_time(lambda: post.log_likelihood(z), 3)
    with torch.no_grad():
        model(xb)
        plain_s = median_time(lambda: model(xb), 3)
    print(f"  PCA subspace (k = 5)      {fmt_time(pca_s)}")
    print(
        f"  subspace log-likelihood   {fmt_time(ll_s)}   (plain forward on the batch {fmt_time(plain_s)}, "
        f"{ll_s / plain_s:.2f}x)"
    )
    return {
        "model": f"WideResNet-{depth}x{width}",
        "P": p,
        "K": k,
        "train_step_s": step_s,
        "collect_s": collect_s,
        "collect_fraction_of_step": collect_s / step_s,
        "memory_growth_bytes": grown,
        "memory_expected_bytes": want,
        "memory_ratio": grown / want,
        "draw_floor_s": {"read_D": read_s, "normals": normals_s, "sum": floor},
        "draw_s": {"blocks_of_8": block_s, "one_at_a_time": single_s},
        "draw_over_floor": {"blocks_of_8": block_s / floor, "one_at_a_time": single_s / floor},
        "pca_s": pca_s,
        "loglik_s": ll_s,
        "plain_forward_s": plain_s,
    }


# ---------------------------------------------------------------------------------------------- (b)
def lora_transformer(quick: bool, checks: list) -> dict[str, Any] | None:
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(f"\n(b) skipped: {e} (pip install valleys[hf])")
        return None
    torch.manual_seed(0)
    layers = 4 if quick else 12
    config = GPT2Config(n_layer=layers, n_embd=768, n_head=12, n_positions=256, vocab_size=50257)
    base = GPT2LMHeadModel(config)
    total = sum(q.numel() for q in base.parameters())
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    )
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    swag = SWAG(model, names, rank=20)
    print(
        f"\n(b) GPT-2-shaped transformer, {layers} layers: {total / 1e6:.0f}M parameters, "
        f"LoRA adapters {swag.space.size:,}"
    )
    ids = torch.randint(0, config.vocab_size, (4, 128))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    step()
    step_s = median_time(step, 2)
    for _ in range(3):
        swag.collect(model)
    collect_s = median_time(lambda: swag.collect(model), 20)
    print(f"  training step (4 x 128 tokens) {fmt_time(step_s)}")
    print(f"  SWAG.collect (adapters)        {fmt_time(collect_s)}   ({100 * collect_s / step_s:.2f}% of a step)")
    checks.append(
        (f"(b) collect over the adapters {100 * collect_s / step_s:.2f}% of a step (<= 1%)", collect_s <= 0.01 * step_s)
    )
    return {
        "parameters": total,
        "layers": layers,
        "adapter_parameters": swag.space.size,
        "train_step_s": step_s,
        "collect_s": collect_s,
        "collect_fraction_of_step": collect_s / step_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="ab")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (" (quick)" if args.quick else ""))
    checks: list[tuple[str, bool]] = []
    results: dict[str, Any] = {"quick": args.quick, "torch": torch.__version__, "machine": platform.machine()}
    if "a" in args.sections:
        results["wide_resnet"] = wide_resnet(args.quick, checks)
    if "b" in args.sections:
        results["lora"] = lora_transformer(args.quick, checks)
    print("\nChecks")
    print_checks(checks)
    results["checks"] = checks_json(checks)
    print(f"\nwrote {write_results('bench_scale', results, args.json)}")


if __name__ == "__main__":
    run_measurement(main)
