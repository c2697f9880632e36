"""Cost of SWAG in valleys next to the reference approaches, measured side by side in one process.

Three comparisons (random data; timings are ratios of medians measured in the same process, interleaved, so
the load of the machine hits both sides alike):

(a) collect: ``valleys.methods.swag.SWAG(model, rank=20).collect(model)`` (running mean, Welford M2 and the
    deviation row written in place into a ring buffer) against the reference approach of the original SWAG
    code (Maddox et al. 2019): flatten the parameters with ``torch.cat``, update flat ``mean`` and
    ``sq_mean = E[w^2]`` as ``x * n/(n+1) + w/(n+1)``, and append the deviation with
    ``cov_mat_sqrt = torch.cat((cov_mat_sqrt, (w - mean).view(1, -1)))``, then ``cov_mat_sqrt[1:, :]`` once
    it holds more than K rows. K = 20, ``MLP(784, 10, hidden=(1024, 1024))`` (~1.9M parameters). Both first
    fill their buffers (25 collects), then many single collects are timed, alternating which side goes
    first, with the weights moved slightly (untimed, the same for both) before every collect. A sanity check
    compares the two means and the last K deviations.

(b) BMA with S = 30 SWAG samples and a BatchNorm recompute per sample: ``valleys.evaluation.predict.bma(model,
    swag.samples(30, generator=...), test_loader, bn=train_loader)`` against the naive loop over the
    same 30 samples: ``copy.deepcopy(model)``, ``vector_to_parameters``, ``torch.optim.swa_utils.update_bn``,
    then softmax probabilities in eval mode on the test loader, averaged. Model: ``SmallCNN(1, 10,
    width=16)`` (BatchNorm) on random 1x28x28 inputs, 2048 training examples in batches of 256 (all batches
    equal, where ``update_bn``'s cumulative average of per-batch statistics is closest to valleys' exact
    statistics), 1000 test examples; the SWAG posterior is collected over 25 SGD steps. Both sides' averaged
    probabilities, accuracy and NLL are compared, and a per-sample breakdown shows where the time goes
    (sampling, weight swap, BN recompute, evaluation).

(c) memory: the bytes held by the SWAG object's tensors (mean, M2, deviations) and the growth of the
    process's resident set (``VmRSS``, and the peak ``VmHWM`` after resetting it through
    ``/proc/self/clear_refs`` where allowed; also after glibc ``malloc_trim``) over constructing
    ``SWAG(rank=20)`` and 25 collects on the ~1.9M-parameter MLP, against (K + 2) * P * 4 bytes (tracemalloc
    does not see torch's allocations). All code paths first run once on a tiny model, so libtorch code pages
    faulted in on first use do not count. The reference approach is measured the same way for comparison.

Targets: (a) reference / ours >= 5x; (b) naive / ours >= 1.5x with max |probs diff| <= 1e-4; (c) SWAG memory
<= 1.1 x (K + 2) copies of the weights. PASS/FAIL is printed but the script always exits 0 (timings and RSS
depend on the machine and its load).

Usage::

    python benchmarks/bench_swag.py            # full: S = 30, K = 20 (about 2-3 min on one busy core)
    python benchmarks/bench_swag.py --quick    # fewer repeats and S = 10 (under 1 min)
    python benchmarks/bench_swag.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from _harness import alternating, checks_json, fmt_time, print_checks, run_measurement, write_results  # noqa: E402 (benchmarks/ is on sys.path when run)
from torch import Tensor, nn
from torch.nn.utils import vector_to_parameters
from torch.optim.swa_utils import update_bn
from torch.utils.data import TensorDataset

from valleys.core.batchnorm import recompute_bn
from valleys.core.weights import WeightSpace
from valleys.evaluation.predict import bma, predict_probs
from valleys.methods.swag import SWAG
from valleys.zoo.data import make_loader
from valleys.zoo.models import MLP, SmallCNN

K = 20  # SWAG rank (deviations kept), the paper's default
COLLECT_TARGET = 5.0  # reference collect / ours
BMA_TARGET = 1.5  # naive BMA loop / ours
PROBS_TOL = 1e-4  # max |averaged probs ours - naive|
MEM_TARGET = 1.10  # SWAG memory / ((K + 2) * P * 4 bytes)
FILL = 25  # collects before the steady state (>= K)


def mib(b: float) -> str:
    return f"{b / 2**20:8.1f} MiB"


def big_mlp() -> nn.Module:
    return MLP(784, 10, hidden=(1024, 1024))


class Perturber:
    """Moves a model's weights slightly and deterministically, in place, without allocating: ``w += a_i *
    noise`` with one fixed noise tensor per parameter and ``a_i = sin(i + 1)`` (so every collect sees new
    weights; both sides of a comparison get the same sequence)."""

    def __init__(self, model: nn.Module, scale: float = 1e-3, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.params = [p for p in model.parameters()]
        self.noise = [torch.randn(p.shape, generator=g).mul_(scale) for p in self.params]  # no temporaries

    def __call__(self, i: int) -> None:
        with torch.no_grad():
            torch._foreach_add_(self.params, self.noise, alpha=math.sin(i + 1))


class ReferenceSWAG:
    """The flat-vector SWAG collect of the original code (Maddox et al.): cat a new deviation row, slice."""

    def __init__(self, model: nn.Module, max_num_models: int = K) -> None:
        p = sum(q.numel() for q in model.parameters())
        self.max_num_models = max_num_models
        self.n = 0
        self.mean = torch.zeros(p)
        self.sq_mean = torch.zeros(p)
        self.cov_mat_sqrt = torch.zeros(0, p)

    def collect(self, model: nn.Module) -> None:
        w = torch.cat([q.detach().view(-1) for q in model.parameters()])
        n = self.n
        self.mean = self.mean * n / (n + 1.0) + w / (n + 1.0)
        self.sq_mean = self.sq_mean * n / (n + 1.0) + w**2 / (n + 1.0)
        self.cov_mat_sqrt = torch.cat((self.cov_mat_sqrt, (w - self.mean).view(1, -1)), dim=0)
        if self.cov_mat_sqrt.size(0) > self.max_num_models:
            self.cov_mat_sqrt = self.cov_mat_sqrt[1:, :]
        self.n = n + 1


# ---------------------------------------------------------------------------------------------- (c) memory
def proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes, from /proc/self/status (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> bool:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim(0)``). True if it could be called."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def tensor_bytes(obj: object) -> int:
    """Bytes of the distinct storages of all tensors an object holds in its attributes (views counted once)."""
    seen: dict[int, int] = {}

    def visit(x: object) -> None:
        if isinstance(x, Tensor):
            s = x.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    for v in vars(obj).values():
        visit(v)
    return sum(seen.values())


def measure_memory(build: Callable[[], object], model: nn.Module, perturb: Perturber) -> dict:
    """RSS growth over ``build()`` and FILL collects: at the end (held), after ``malloc_trim`` and at the peak
    (VmHWM, if it could be reset, else the largest RSS seen between collects). None where /proc is unreadable."""
    gc.collect()
    malloc_trim()
    peak_ok = reset_peak_rss()
    base = proc_status_bytes("VmRSS")
    obj = build()
    seen = [proc_status_bytes("VmRSS")]
    for i in range(FILL):
        perturb(i)
        obj.collect(model)
        seen.append(proc_status_bytes("VmRSS"))
    out = {
        "obj": obj,
        "tensor_bytes": tensor_bytes(obj),
        "held": None,
        "trimmed": None,
        "peak": None,
        "peak_is_hwm": False,
    }
    if base is None:
        return out
    hwm = proc_status_bytes("VmHWM") if peak_ok else None
    out.update(held=seen[-1] - base, peak=(hwm if hwm is not None else max(seen)) - base, peak_is_hwm=hwm is not None)
    if malloc_trim():  # what is left once the C allocator hands back the free memory it merely keeps
        out["trimmed"] = proc_status_bytes("VmRSS") - base
    return out


def bench_memory() -> dict:
    # run every code path once on a tiny model first, so that libtorch code pages faulted in on first use
    # (file-backed RSS, a few MiB) do not count as SWAG memory
    tiny = nn.Linear(64, 64)
    tiny_perturb = Perturber(tiny)
    # the model is an argument, not a closure over `tiny`, which is deleted below
    for make in (lambda m: SWAG(m, rank=3), lambda m: ReferenceSWAG(m, 3)):
        obj = make(tiny)
        for i in range(5):
            tiny_perturb(i)
            obj.collect(tiny)
    del tiny, tiny_perturb, obj
    torch.manual_seed(0)
    model = big_mlp()
    perturb = Perturber(model)
    P = sum(p.numel() for p in model.parameters())
    if proc_status_bytes("VmRSS") is None:
        print("(c) /proc/self/status is not readable here: only the exact tensor bytes are reported")
    ours = measure_memory(lambda: SWAG(model, rank=K), model, perturb)
    swag = ours.pop("obj")
    parts = {"mean": swag._mean, "m2": swag._m2, "dev": swag._dev}
    del swag
    ref = measure_memory(lambda: ReferenceSWAG(model, K), model, perturb)
    del ref["obj"]
    return {
        "P": P,
        "ours": ours,
        "ref": ref,
        "parts": {k: (tuple(v.shape), v.numel() * v.element_size()) for k, v in parts.items()},
    }


# ---------------------------------------------------------------------------------------------- (a) collect
def bench_collect(calls: int) -> dict:
    torch.manual_seed(0)
    model = big_mlp()
    perturb = Perturber(model)
    ours, ref = SWAG(model, rank=K), ReferenceSWAG(model, K)
    i = 0
    for _ in range(FILL):  # fill both buffers: steady state (ring full / cat-then-slice every time)
        perturb(i)
        i += 1
        ours.collect(model)
        ref.collect(model)
    t_ours, t_ref = [], []
    sides = [("ours", ours, t_ours), ("ref", ref, t_ref)]
    gc.collect()
    for r in range(calls):
        perturb(i)
        i += 1
        for _, obj, times in sides if r % 2 == 0 else sides[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            obj.collect(model)
            times.append(time.perf_counter() - t0)
    # sanity: the same weights went into both, so the means and the last K deviations agree
    space = WeightSpace(model)
    slots = [(ours.n - K + j) % K for j in range(K)]  # ring slot of the j-th oldest deviation kept
    dev_diff = float((ours._dev[slots] - ref.cov_mat_sqrt).abs().max())
    mean_diff = float((ours.mean - ref.mean).abs().max())
    scale = float(space.read(model).abs().max())
    dev_scale = float(ref.cov_mat_sqrt.abs().max())
    return {
        "P": space.size,
        "ours": t_ours,
        "ref": t_ref,
        "n": ours.n,
        "n_ref": ref.n,
        "ref_rows": ref.cov_mat_sqrt.shape[0],
        "mean_diff": mean_diff,
        "dev_diff": dev_diff,
        "w_scale": scale,
        "dev_scale": dev_scale,
        "ok": ours.n == ref.n and mean_diff <= 1e-5 * max(1.0, scale) and dev_diff <= 1e-5 * max(1.0, scale),
    }


# ---------------------------------------------------------------------------------------------- (b) BMA
def naive_bma(model: nn.Module, samples: Iterable[Tensor], test_loader, train_loader) -> Tensor:
    """The per-sample loop: deepcopy, load the sample, update_bn, evaluate; average the softmax probs."""
    total, count = None, 0
    for w in samples:
        m = copy.deepcopy(model)
        vector_to_parameters(w, m.parameters())
        update_bn(train_loader, m)
        m.eval()
        with torch.no_grad():
            probs = torch.cat([torch.softmax(m(x), dim=1) for x, _ in test_loader]).double()
        total = probs if total is None else total + probs
        count += 1
    return total / count


def make_bma_setup(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = SmallCNN(1, 10, width=16)
    x_tr, y_tr = torch.randn(2048, 1, 28, 28), torch.randint(0, 10, (2048,))
    x_te, y_te = torch.randn(1000, 1, 28, 28), torch.randint(0, 10, (1000,))
    train_loader = make_loader(TensorDataset(x_tr, y_tr), 256)  # 8 equal batches, fixed order
    test_loader = make_loader(TensorDataset(x_te, y_te), 250)
    # a SWAG posterior from a short SGD run: one collect after each of FILL steps
    swag = SWAG(model, rank=K)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batches = list(train_loader)
    model.train()
    for step in range(FILL):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        swag.collect(model)
    return {"model": model, "swag": swag, "train": train_loader, "test": test_loader, "y_test": y_te}


def draws(swag: SWAG, s: int) -> Iterable[Tensor]:
    return swag.samples(s, generator=torch.Generator().manual_seed(0))


def bench_bma(samples: int, repeats: int, profile_samples: int) -> dict:
    st = make_bma_setup()
    model, swag, train, test = st["model"], st["swag"], st["train"], st["test"]
    ours_fn = lambda s: bma(model, draws(swag, s), test, bn=train, return_probs=True)  # noqa: E731
    naive_fn = lambda s: naive_bma(model, draws(swag, s), test, train)  # noqa: E731
    ours_fn(2)  # warm-up (oneDNN primitives, allocator)
    naive_fn(2)
    times, last = alternating({"ours": lambda: ours_fn(samples), "naive": lambda: naive_fn(samples)}, repeats)
    t_ours, t_naive, res_ours, probs_naive = times["ours"], times["naive"], last["ours"], last["naive"]
    y = st["y_test"]
    acc_naive = float((probs_naive.argmax(1) == y).double().mean())
    nll_naive = float(-torch.log(probs_naive.gather(1, y[:, None]).clamp_min(1e-12)).mean())
    diff = float((res_ours.probs - probs_naive).abs().max())
    return {
        "samples": samples,
        "repeats": repeats,
        "ours": t_ours,
        "naive": t_naive,
        "P": swag.space.size,
        "acc": (res_ours.metrics.accuracy, acc_naive),
        "nll": (res_ours.metrics.nll, nll_naive),
        "num_samples": res_ours.num_samples,
        "probs_diff": diff,
        "profile": profile_bma(st, profile_samples),
    }


def profile_bma(st: dict, n: int) -> dict[str, float]:
    """Median seconds per sample of each step of both loops, over ``n`` samples (the same steps as above)."""
    model, swag, train, test = st["model"], st["swag"], st["train"], st["test"]
    space = WeightSpace(model)
    parts: dict[str, list[float]] = {}

    def tick(key: str, t0: float) -> float:
        t = time.perf_counter()
        parts.setdefault(key, []).append(t - t0)
        return t

    gen = draws(swag, n)
    for _ in range(n):
        t = time.perf_counter()
        w = next(gen)
        t = tick("sample (swag.samples)", t)
        # ours, step by step as bma does it (holding = space.at: save weights+buffers, write, restore)
        ctx = space.at(model, w)
        ctx.__enter__()
        swap = time.perf_counter() - t
        t = time.perf_counter()
        recompute_bn(model, train)
        t = tick("ours: recompute_bn (exact, float64 hooks)", t)
        for _ in predict_probs(model, test):
            pass
        t = tick("ours: evaluate (predict_probs)", t)
        ctx.__exit__(None, None, None)
        parts.setdefault("ours: weight swap (space.at enter + exit)", []).append(swap + time.perf_counter() - t)
        # reference floor for any BN recompute: the same train-mode forward pass without statistics
        t = time.perf_counter()
        with space.at(model, w):
            model.train()
            with torch.no_grad():
                for x, _ in train:
                    model(x)
        t = tick("(floor: train-mode forward over bn data)", t)
        # naive
        m = copy.deepcopy(model)
        vector_to_parameters(w, m.parameters())
        t = tick("naive: deepcopy + vector_to_parameters", t)
        update_bn(train, m)
        t = tick("naive: update_bn", t)
        m.eval()
        with torch.no_grad():
            torch.cat([torch.softmax(m(x), dim=1) for x, _ in test]).double()
        tick("naive: evaluate", t)
    return {k: statistics.median(v) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, S = 10 BMA samples")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, for stable numbers)")
    ap.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the numbers as JSON (default benchmarks/results/bench_swag.json)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    calls, samples, repeats, prof = (20, 10, 2, 3) if args.quick else (60, 30, 3, 5)
    start = time.perf_counter()
    print(
        f"valleys SWAG benchmark: torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
        f"{', quick' if args.quick else ''}"
    )

    # (c) first, while the process is small and quiet
    t0 = time.perf_counter()
    mem = bench_memory()
    P = mem["P"]
    copies = (K + 2) * P * 4
    o, rf = mem["ours"], mem["ref"]
    print(f"\n=== (c) memory: SWAG(rank={K}) + {FILL} collects on MLP 784-1024-1024-10 ({P:,} parameters) ===")
    print(f"  (K + 2) copies of the weights = {K + 2} x {P:,} x 4 B = {mib(copies)}  ({copies:,} B)")
    for k, (shape, b) in mem["parts"].items():
        print(f"    swag._{k:4s} {str(shape):18s} {mib(b)}")
    print(f"  {'':44s} {'bytes':>12s}  {'/ (K+2) copies':>10s}")
    peak_what = "VmHWM" if o["peak_is_hwm"] else "max VmRSS between collects"
    rows = [
        ("SWAG tensors (distinct storages)", o["tensor_bytes"]),
        ("SWAG: RSS growth, held after collects", o["held"]),
        ("SWAG: RSS growth, held after malloc_trim", o["trimmed"]),
        (f"SWAG: RSS growth, peak ({peak_what})", o["peak"]),
        ("reference: tensors", rf["tensor_bytes"]),
        ("reference: RSS growth, held", rf["held"]),
        ("reference: RSS growth, held after malloc_trim", rf["trimmed"]),
        ("reference: RSS growth, peak", rf["peak"]),
    ]
    for label, b in rows:
        if b is not None:
            print(f"  {label:44s} {mib(b)}  {b / copies:10.3f}")
    print(
        f"  (a collect also needs one transient P-vector, delta = w - mean: (K+3)/(K+2) = {(K + 3) / (K + 2):.3f};"
        " the rest of the\n   RSS above the tensors is freed memory the C allocator keeps, see the malloc_trim row)"
    )
    print(f"  ({time.perf_counter() - t0:.1f}s)")

    # (a) collect
    t0 = time.perf_counter()
    co = bench_collect(calls)
    m_ours, m_ref = statistics.median(co["ours"]), statistics.median(co["ref"])
    paired = statistics.median([r / o_ for r, o_ in zip(co["ref"], co["ours"], strict=True)])
    r_collect = m_ref / m_ours
    print(f"\n=== (a) collect, K = {K}, MLP 784-1024-1024-10 ({co['P']:,} parameters), after {FILL} collects ===")
    print(f"  {'':52s} {'median':>11s}  {'min':>11s}  {'max':>11s}")
    for label, v in (
        ("valleys SWAG.collect (ring buffer, in place)", co["ours"]),
        ("reference: torch.cat flatten + cat row + slice", co["ref"]),
    ):
        print(f"  {label:52s} {fmt_time(statistics.median(v))}  {fmt_time(min(v))}  {fmt_time(max(v))}")
    print(
        f"  reference / ours: {r_collect:.2f}x (ratio of medians), {paired:.2f}x (median of paired ratios); "
        f"{calls} timed collects each"
    )
    print(
        f"  sanity after {co['n']} collects of the same weights: max |mean diff| {co['mean_diff']:.2e}, "
        f"max |deviation diff| {co['dev_diff']:.2e} over the last {co['ref_rows']} rows "
        f"(|w| <= {co['w_scale']:.3g}, |dev| <= {co['dev_scale']:.3g})"
    )
    print(f"  ({time.perf_counter() - t0:.1f}s)")

    # (b) BMA
    t0 = time.perf_counter()
    bm = bench_bma(samples, repeats, prof)
    b_ours, b_naive = statistics.median(bm["ours"]), statistics.median(bm["naive"])
    r_bma = b_naive / b_ours
    print(
        f"\n=== (b) BMA, S = {samples} SWAG samples (rank {K}), BN recompute per sample; SmallCNN width 16 "
        f"({bm['P']:,} parameters), 2048 train (8 x 256), 1000 test ==="
    )
    print(f"  {'':52s} {'median':>11s}  {'per sample':>11s}  {'spread':>7s}")
    for label, v in (
        ("valleys bma(..., bn=train_loader)", bm["ours"]),
        ("naive: deepcopy + update_bn + evaluate per sample", bm["naive"]),
    ):
        med = statistics.median(v)
        print(f"  {label:52s} {fmt_time(med)}  {fmt_time(med / samples)}  {(max(v) - min(v)) / med * 100:6.1f}%")
    print(f"  naive / ours: {r_bma:.3f}x ({repeats} interleaved repeats)")
    print(
        f"  same result: max |probs ours - naive| = {bm['probs_diff']:.2e}; accuracy {bm['acc'][0]:.4f} vs "
        f"{bm['acc'][1]:.4f}; NLL {bm['nll'][0]:.6f} vs {bm['nll'][1]:.6f}; num_samples {bm['num_samples']}"
    )
    print(f"  where the time goes (median seconds per sample over {prof} samples, same steps, unwrapped):")
    pr = bm["profile"]
    for k, v in pr.items():
        print(f"    {k:46s} {fmt_time(v)}")
    hook = pr["ours: recompute_bn (exact, float64 hooks)"] - pr["(floor: train-mode forward over bn data)"]
    print(f"    {'=> recompute_bn beyond the forward pass':46s} {fmt_time(hook)}  (the float64 moment hooks)")
    print(f"  ({time.perf_counter() - t0:.1f}s)")

    same = (
        bm["probs_diff"] <= PROBS_TOL
        and bm["acc"][0] == bm["acc"][1]
        and abs(bm["nll"][0] - bm["nll"][1]) <= 1e-4 * max(1.0, abs(bm["nll"][1]))
    )
    print("\ntargets:")
    checks = [
        (
            f"(a) reference collect / SWAG.collect  = {r_collect:6.2f}x  (target >= {COLLECT_TARGET:g}x)",
            r_collect >= COLLECT_TARGET,
        ),
        (
            f"(a) same mean and deviations as the reference (max diff {max(co['mean_diff'], co['dev_diff']):.1e})",
            co["ok"],
        ),
        (f"(b) naive BMA loop / valleys bma      = {r_bma:6.3f}x  (target >= {BMA_TARGET:g}x)", r_bma >= BMA_TARGET),
        (f"(b) same probabilities (max diff {bm['probs_diff']:.1e} <= {PROBS_TOL:g}), accuracy and NLL", same),
        (
            f"(c) SWAG tensors / (K+2) copies       = {o['tensor_bytes'] / copies:6.3f}   (target <= {MEM_TARGET:g})",
            o["tensor_bytes"] / copies <= MEM_TARGET,
        ),
    ]
    if o["peak"] is not None:
        checks.append(
            (
                f"(c) SWAG peak RSS growth / (K+2) copies = {o['peak'] / copies:6.3f} (target <= "
                f"{MEM_TARGET:g}; reference {rf['peak'] / copies:.2f})",
                o["peak"] / copies <= MEM_TARGET,
            )
        )
    print_checks(checks)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f}s")
    write_results(
        "bench_swag",
        {
            "quick": args.quick,
            "rank": K,
            "memory": {
                "params": P,
                "copies_bytes": copies,
                "tensor_bytes": o["tensor_bytes"],
                "held": o["held"],
                "trimmed": o["trimmed"],
                "peak": o["peak"],
                "reference": {k: rf[k] for k in ("tensor_bytes", "held", "trimmed", "peak")},
                "tensors_over_copies": o["tensor_bytes"] / copies,
            },
            "collect": {
                "params": co["P"],
                "calls": calls,
                "ours_s": co["ours"],
                "reference_s": co["ref"],
                "ratio_of_medians": r_collect,
                "median_paired_ratio": paired,
                "mean_diff": co["mean_diff"],
                "dev_diff": co["dev_diff"],
            },
            "bma": {
                "params": bm["P"],
                "samples": samples,
                "repeats": repeats,
                "ours_s": bm["ours"],
                "naive_s": bm["naive"],
                "ratio": r_bma,
                "probs_diff": bm["probs_diff"],
                "accuracy": list(bm["acc"]),
                "nll": list(bm["nll"]),
                "profile_s_per_sample": dict(bm["profile"]),
            },
            "targets": {
                "collect_ratio_at_least": COLLECT_TARGET,
                "bma_ratio_at_least": BMA_TARGET,
                "memory_ratio_at_most": MEM_TARGET,
                "probs_tol": PROBS_TOL,
            },
            "checks": checks_json(checks),
            "all_pass": all(ok for _, ok in checks),
            "total_s": total,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    run_measurement(main)
