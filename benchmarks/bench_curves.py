"""Cost of mode-connecting curves in valleys, measured side by side in one process.

(1) One training step of a curve against a plain training step of the same model on the same batch (random
    data, batch 128, SGD momentum 0.9, lr 0.01):

    * plain: ``opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()`` on
      ``model.parameters()``;
    * curve: ``Curve(w_A, w_B, kind="bezier", bends=3, sizes=[s.numel for s in space.slots])`` (the inner
      control point kept per parameter tensor, ``curve.inner[j]`` of shape (1, size_j)),
      ``CurveModel(model, curve, space, loss_through_output=True)`` in train mode (a fresh ``t ~ U(0, 1)`` per
      step; ``w(t)`` formed per piece by one autograd node and passed as parameter views to
      ``torch.func.functional_call``, no flat ``w``; the inner point's coefficient applied to the batch-sized
      gradient at the output, so the weight gradients reach the inner point without a P-sized copy),
      ``loss_fn = cm.l2_loss(
      nn.CrossEntropyLoss(), 5e-4)`` (the L2 gradient ``c_1 wd w(t)`` added in place to ``.grad`` by a
      post-accumulate hook), SGD on ``curve.parameters()``: ``opt.zero_grad(); loss = loss_fn(cm(x), y);
      loss.backward(); opt.step()``.

    A check at a fixed t in float64 compares valleys' inner-point gradient (``curve.inner_grad()``) with
    autograd of the explicit objective ``cross_entropy(space.functional_call(model, curve.point(t), x), y) +
    0.5 wd ||curve.point(t)||^2`` through the flat point, and confirms that a curve step moves only the inner
    points (the model's own weights and the two ends stay bit for bit).

    Models: ``MLP(784, 10, hidden=(1024, 1024))`` (1,863,690 parameters; target) and the BatchNorm
    ``SmallCNN(1, 10, width=32)`` on 1x28x28 inputs (reported, no target). The two steps are timed in
    interleaved blocks of consecutive steps (ABBA order: plain curve, curve plain, curve plain, plain curve,
    ...); ms per step is the median over blocks. A breakdown times the pieces of each step (forward + loss,
    backward, optimizer step; for the curve also ``curve.point_parts(t)`` alone, which its forward
    contains) and, for the MLP, ``torch.profiler`` lists the top operators of the curve step.

(2) Evaluating a curve at N = 61 points with a BatchNorm recompute per point: valleys
    ``evaluate_path(model, curve.point, ts, train_loader=..., test_loader=..., space=space)`` (BatchNorm
    recomputed on the training loader at every point, the default)
    against the naive loop that for each t does ``copy.deepcopy(model)``, ``vector_to_parameters(
    curve.point(t).detach(), m.parameters())``, ``torch.optim.swa_utils.update_bn(train_loader, m)`` and
    evaluates train loss / error and test error in eval mode without gradients. ``SmallCNN(1, 10, width=16)``,
    endpoints two differently initialised networks, random 1x28x28 inputs with a learnable label rule (the
    argmax of a fixed random linear map), 2048 training examples in 8 equal batches of 256 (``update_bn``
    averages per-batch statistics; with equal batches that is within ~1e-6 of valleys' exact pooled
    statistics here) and 512 test examples. The two sides alternate which goes first; both must give the
    same train loss at every point (max |diff| <= 1e-4) and train and test errors that differ by at most
    one example (a prediction whose top two logits tie within the ~1e-6 difference of the BN statistics).

Targets: (1) curve step / plain step <= 1.3x on the ~1.9M-parameter MLP, both with the L2 term (the curve's
objective in Garipov et al. 2018 always has it; the plain step gets it as SGD weight decay, how the
endpoints are trained); the pair without L2 on either side is reported beside it. (2) none: naive / ours is
reported as it is. PASS/FAIL is printed but the script always exits 0 (timings depend on the machine and
its load).

Usage::

    python benchmarks/bench_curves.py            # full: N = 61 points (about 4 min on one busy core)
    python benchmarks/bench_curves.py --quick    # fewer repeats, N = 11 points (under 1 min)
    python benchmarks/bench_curves.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _harness import alternating, checks_json, fmt_time, print_checks, run_measurement, write_results  # noqa: E402 (benchmarks/ is on sys.path when run)
from torch import Tensor, nn
from torch.nn.utils import vector_to_parameters
from torch.optim.swa_utils import update_bn
from torch.utils.data import TensorDataset

from valleys.core.batchnorm import recompute_bn
from valleys.core.weights import WeightSpace
from valleys.evaluation.predict import evaluate
from valleys.geometry.curves import Curve, CurveModel
from valleys.geometry.paths import evaluate_path
from valleys.zoo.data import make_loader
from valleys.zoo.models import MLP, SmallCNN

STEP_TARGET = 1.3  # curve step / plain step, for a model of >= 1M parameters
PATH_TOL = 1e-4  # max |diff| of the train loss per point, ours vs naive
N_TRAIN, N_TEST = 2048, 512  # errors may differ by one example whose logits tie within the ~1e-6 BN difference
WD = 5e-4  # the curve's L2 penalty (Garipov et al. 2018)
BATCH = 128


# ---------------------------------------------------------------------------------------------- (1) steps
def make_steps(build: Callable[[], nn.Module], x: Tensor, y: Tensor) -> dict:
    """Four steps on copies of one network: plain and curve, each without and with the L2 term (the curve's
    ``0.5 wd ||w(t)||^2`` through ``l2_loss``; the plain step's through SGD ``weight_decay=wd``, which is
    the same objective at a point)."""
    torch.manual_seed(0)
    model_a, model_b = build(), build()  # two differently initialised networks
    space = WeightSpace(model_a)
    out: dict = {"P": space.size, "space": space, "steps": {}}
    for wd, sfx in ((0.0, ""), (WD, "+L2")):
        plain = copy.deepcopy(model_a)
        plain.train()
        opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=wd)
        base = copy.deepcopy(model_a)
        curve = Curve(
            space.read(model_a), space.read(model_b), kind="bezier", bends=3, sizes=[s.numel for s in space.slots]
        )  # inner points kept per parameter tensor
        cm = CurveModel(base, curve, space, loss_through_output=True)
        cm.train()
        loss_fn = cm.l2_loss(nn.CrossEntropyLoss(), wd)
        opt_curve = torch.optim.SGD(curve.parameters(), lr=0.01, momentum=0.9)

        def plain_step(plain=plain, opt_plain=opt_plain) -> None:
            opt_plain.zero_grad()
            loss = F.cross_entropy(plain(x), y)
            loss.backward()
            opt_plain.step()

        def curve_step(cm=cm, loss_fn=loss_fn, opt_curve=opt_curve) -> None:
            opt_curve.zero_grad()
            loss = loss_fn(cm(x), y)
            loss.backward()
            opt_curve.step()

        out["steps"]["plain" + sfx] = plain_step
        out["steps"]["curve" + sfx] = curve_step
        if wd:  # the L2 pair is the one checked, broken down and profiled
            out.update(
                plain=plain,
                opt_plain=opt_plain,
                model_a=base,
                curve=curve,
                cm=cm,
                loss_fn=loss_fn,
                opt_curve=opt_curve,
                pieces=len(curve.sizes),
            )
    return out


def check_curve(st: dict, x: Tensor, y: Tensor, t: float = 0.3) -> dict[str, float]:
    """At a fixed t in float64 (fresh copies, so that only the formulas are compared): valleys' inner-point
    gradient (CurveModel forward, L2 gradient added by hooks) against autograd of the explicit objective
    ``cross_entropy(space.functional_call(model, curve.point(t), x), y) + 0.5 wd ||curve.point(t)||^2``
    through the flat point. Then one timed-object curve step: only the inner points may change."""
    space = st["space"]
    model64, curve64 = copy.deepcopy(st["model_a"]).double(), copy.deepcopy(st["curve"]).double()
    ref_model, ref_curve = copy.deepcopy(model64), copy.deepcopy(curve64)
    model64.train()
    ref_model.train()
    x64 = x.double()

    cm = CurveModel(model64, curve64, space, loss_through_output=True)
    cm.train()
    loss_fn = cm.l2_loss(nn.CrossEntropyLoss(), WD)
    task = loss_fn(cm(x64, t=t), y)  # the task loss; the penalty enters through the hooks
    task.backward()
    obj_a = float(task.detach()) + 0.5 * WD * float(cm.last_sq_norm)
    g_a = curve64.inner_grad()

    w = ref_curve.point(t)  # flat w(t), one vector
    obj = F.cross_entropy(space.functional_call(ref_model, w, x64), y) + 0.5 * WD * w.pow(2).sum()
    obj.backward()
    g_b = ref_curve.inner_grad()

    model_a, curve = st["model_a"], st["curve"]
    before = space.read(model_a)
    ends = (curve.start.clone(), curve.end.clone())
    inner = curve.inner_points().detach().clone()
    st["steps"]["curve+L2"]()
    moved = float((curve.inner_points().detach() - inner).abs().max())
    fixed = float(
        max(
            (space.read(model_a) - before).abs().max(),
            (curve.start - ends[0]).abs().max(),
            (curve.end - ends[1]).abs().max(),
        )
    )
    model_grad = any(p.grad is not None for p in model_a.parameters())
    return {
        "loss_diff": abs(obj_a - float(obj.detach())),
        "grad_diff": float((g_a - g_b).abs().max()),
        "grad_scale": float(g_b.abs().max()),
        "inner_moved": moved,
        "fixed_moved": fixed,
        "model_grad": model_grad,
    }


def time_steps(steps: dict[str, Callable[[], None]], blocks: int, block: int) -> dict[str, list[float]]:
    """Seconds per step: one value per block of ``block`` consecutive steps; variants interleaved block by
    block, the order rotating (and reversing every other round) so that each variant runs first equally often."""
    names = list(steps)
    for f in steps.values():  # warm-up: allocator, oneDNN primitives, optimizer state
        for _ in range(3):
            f()
    out: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    for r in range(blocks):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order = order[::-1]
        for n in order:
            f = steps[n]
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            out[n].append((time.perf_counter() - t0) / block)
    return out


BREAKDOWN_KEYS = ["w(t) alone (curve.point_parts(t))", "forward + loss", "backward", "optimizer step"]


def breakdown(st: dict, x: Tensor, y: Tensor, reps: int) -> dict[str, dict[str, float]]:
    """Median seconds of each piece of both steps. The curve's "forward + loss" is ``cm(x)`` (which forms
    w(t) itself) plus the loss; "backward" includes the L2 hook; "w(t) alone" times ``curve.point_parts(t)``
    by itself, under no_grad, and is not part of the sum."""
    plain, opt_plain = st["plain"], st["opt_plain"]
    cm, curve, opt_curve = st["cm"], st["curve"], st["opt_curve"]
    parts: dict[str, dict[str, list[float]]] = {"plain": {}, "curve": {}}

    def tick(side: str, key: str, t0: float) -> float:
        t = time.perf_counter()
        parts[side].setdefault(key, []).append(t - t0)
        return t

    for _ in range(reps):
        t = time.perf_counter()
        opt_plain.zero_grad()
        loss = F.cross_entropy(plain(x), y)
        t = tick("plain", "forward + loss", t)
        loss.backward()
        t = tick("plain", "backward", t)
        opt_plain.step()
        tick("plain", "optimizer step", t)

        t = time.perf_counter()
        with torch.no_grad():
            curve.point_parts(float(torch.rand(())))
        t = tick("curve", BREAKDOWN_KEYS[0], t)
        opt_curve.zero_grad()
        loss = st["loss_fn"](cm(x), y)
        t = tick("curve", "forward + loss", t)
        loss.backward()
        t = tick("curve", "backward", t)
        opt_curve.step()
        tick("curve", "optimizer step", t)
    return {side: {k: statistics.median(v) for k, v in d.items()} for side, d in parts.items()}


def profile_curve_step(step: Callable[[], None], n: int = 5, rows: int = 8) -> list[tuple[str, float, int]]:
    """Top operators of the curve step by self CPU time: (name, ms per step, calls per step)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3 / n, e.count // n) for e in ev[:rows]]


def bench_steps(
    name: str,
    build: Callable[[], nn.Module],
    in_shape: tuple[int, ...],
    blocks: int,
    block: int,
    reps: int,
    profile: bool,
) -> dict:
    torch.manual_seed(1)
    x, y = torch.randn(BATCH, *in_shape), torch.randint(0, 10, (BATCH,))
    st = make_steps(build, x, y)
    t0 = time.perf_counter()
    chk = check_curve(st, x, y)
    times = time_steps(st["steps"], blocks, block)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {sfx: med["curve" + sfx] / med["plain" + sfx] for sfx in ("", "+L2")}
    paired = {
        sfx: statistics.median([a / b for a, b in zip(times["curve" + sfx], times["plain" + sfx], strict=True)])
        for sfx in ("", "+L2")
    }
    parts = breakdown(st, x, y, reps)
    prof = profile_curve_step(st["steps"]["curve+L2"]) if profile else None
    elapsed = time.perf_counter() - t0

    print(
        f"\n=== (1) one training step: {name}, {st['P']:,} parameters ({st['pieces']} tensors), batch {BATCH}, "
        "SGD momentum 0.9 ==="
    )
    print(f"  {'':62s} {'median':>11s}  {'/ plain':>7s}  {'paired':>7s}  {'spread':>7s}")
    labels = {
        "plain": "plain step (model.parameters(), no L2)",
        "curve": "valleys curve step (CurveModel, Bezier, 3 bends, no L2)",
        "plain+L2": f"plain step, SGD weight_decay={WD:g}",
        "curve+L2": f"valleys curve step, l2_loss(..., {WD:g})",
    }
    for k, label in labels.items():
        v = times[k]
        sfx = k[5:]
        is_curve = k.startswith("curve")
        r = f"{ratio[sfx]:7.3f}" if is_curve else f"{'':7s}"
        pr = f"{paired[sfx]:7.3f}" if is_curve else f"{'':7s}"
        print(f"  {label:62s} {fmt_time(med[k])}  {r}  {pr}  {(max(v) - min(v)) / med[k] * 100:6.1f}%")
    print(
        f"  ({blocks} interleaved blocks of {block} steps; '/ plain' = ratio of medians against the plain step "
        "with the same L2 setting, 'paired' = median of per-block ratios)"
    )
    print(
        f"  check at t = 0.3 in float64 against the explicit objective CE(f(x; w(t)), y) + 0.5 wd ||w(t)||^2 "
        f"(autograd through flat curve.point(t)):\n    |objective diff| {chk['loss_diff']:.1e}, max |inner grad "
        f"diff| {chk['grad_diff']:.1e} (max |grad| {chk['grad_scale']:.2e}); a curve step moves the inner points "
        f"by {chk['inner_moved']:.1e}, the model and ends by {chk['fixed_moved']:.1e}"
        f"{', model got gradients' if chk['model_grad'] else ''}"
    )
    print(
        f"  breakdown with L2 (median over {reps} steps of each; 'w(t) alone' is inside the curve's forward, "
        "not summed):"
    )
    print(f"    {'':30s} {'plain':>11s}  {'curve':>11s}")
    for key in BREAKDOWN_KEYS + ["sum"]:
        row = []
        for side in ("plain", "curve"):
            p = parts[side]
            v = sum(v for k, v in p.items() if k != BREAKDOWN_KEYS[0]) if key == "sum" else p.get(key)
            row.append(fmt_time(v) if v is not None else f"{'-':>11s}")
        print(f"    {key:30s} {row[0]}  {row[1]}")
    if prof:
        print("  torch.profiler, valleys curve step, top operators by self CPU (ms per step, calls per step):")
        for key, ms, calls in prof:
            print(f"    {key:34s} {ms:8.2f} ms  x{calls}")
    print(f"  ({elapsed:.1f}s)")
    ok_grad = chk["loss_diff"] <= 1e-10 and chk["grad_diff"] <= 1e-10 * max(chk["grad_scale"], 1.0)
    return {
        "name": name,
        "P": st["P"],
        "med": med,
        "ratio": ratio,
        "paired": paired,
        "check": chk,
        "grad_ok": ok_grad,
        "curve_ok": chk["inner_moved"] > 0 and chk["fixed_moved"] == 0 and not chk["model_grad"],
    }


# ---------------------------------------------------------------------------------------------- (2) path
def make_path_setup(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    a, b = SmallCNN(1, 10, width=16), SmallCNN(1, 10, width=16)  # two differently initialised endpoints
    space = WeightSpace(a)
    curve = Curve(space.read(a), space.read(b), kind="bezier", bends=3)
    inner = curve.inner_points()  # move the inner point off the segment, as training would
    curve.set_inner(inner + 0.05 * torch.randn(inner.shape, dtype=inner.dtype))
    proj = torch.randn(28 * 28, 10)
    x_tr, x_te = torch.randn(N_TRAIN, 1, 28, 28), torch.randn(N_TEST, 1, 28, 28)
    y_tr, y_te = (x_tr.flatten(1) @ proj).argmax(1), (x_te.flatten(1) @ proj).argmax(1)  # learnable rule
    return {
        "model": a,
        "space": space,
        "curve": curve,
        "train": make_loader(TensorDataset(x_tr, y_tr), 256),  # 8 equal batches, fixed order
        "test": make_loader(TensorDataset(x_te, y_te), 256),
    }


def naive_path(model: nn.Module, curve: Curve, ts: list[float], train_loader, test_loader) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"train_loss": [], "train_error": [], "test_error": []}
    for t in ts:
        m = copy.deepcopy(model)
        vector_to_parameters(curve.point(t).detach(), m.parameters())
        update_bn(train_loader, m)
        m.eval()
        with torch.no_grad():
            nll = err = n = 0
            for x, y in train_loader:
                logits = m(x)
                nll += float(F.cross_entropy(logits, y, reduction="sum"))
                err += int((logits.argmax(1) != y).sum())
                n += y.numel()
            out["train_loss"].append(nll / n)
            out["train_error"].append(err / n)
            err = n = 0
            for x, y in test_loader:
                err += int((m(x).argmax(1) != y).sum())
                n += y.numel()
            out["test_error"].append(err / n)
    return out


def bench_path(points: int, repeats: int) -> dict:
    st = make_path_setup()
    model, space, curve, train, test = st["model"], st["space"], st["curve"], st["train"], st["test"]
    ts = torch.linspace(0, 1, points).tolist()

    def ours_fn(ts_: list[float]) -> object:
        return evaluate_path(model, curve.point, ts_, train_loader=train, test_loader=test, space=space)

    def naive_fn(ts_: list[float]) -> dict:
        return naive_path(model, curve, ts_, train, test)

    ours_fn([0.0, 1.0])  # warm-up
    naive_fn([0.0, 1.0])
    times, last = alternating({"ours": lambda: ours_fn(ts), "naive": lambda: naive_fn(ts)}, repeats)
    t_ours, t_naive, res_ours, res_naive = times["ours"], times["naive"], last["ours"], last["naive"]
    diffs = {
        k: max(abs(a - b) for a, b in zip(getattr(res_ours, k), res_naive[k], strict=True))
        for k in ("train_loss", "train_error", "test_error")
    }
    return {
        "points": points,
        "repeats": repeats,
        "ours": t_ours,
        "naive": t_naive,
        "P": space.size,
        "diffs": diffs,
        "ours_res": res_ours,
        "naive_res": res_naive,
        "profile": profile_path(st, 3),
    }


def profile_path(st: dict, n: int) -> dict[str, float]:
    """Median seconds per point of each step of both loops (the same steps as above, unwrapped)."""
    model, space, curve, train, test = st["model"], st["space"], st["curve"], st["train"], st["test"]
    parts: dict[str, list[float]] = {}

    def tick(key: str, t0: float) -> float:
        t = time.perf_counter()
        parts.setdefault(key, []).append(t - t0)
        return t

    for t_ in torch.linspace(0.2, 0.8, n).tolist():
        t = time.perf_counter()
        with torch.no_grad():
            w = curve.point(t_)
        ctx = space.at(model, w)  # as evaluate_path: save weights + buffers, write w; restore on exit
        ctx.__enter__()
        swap = time.perf_counter() - t
        t = time.perf_counter()
        recompute_bn(model, train)
        t = tick("ours: recompute_bn (exact statistics)", t)
        evaluate(model, train)
        evaluate(model, test)
        t = tick("ours: evaluate(train) + evaluate(test)", t)
        ctx.__exit__(None, None, None)
        parts.setdefault("ours: w(t) + weight swap (space.at)", []).append(swap + time.perf_counter() - t)
        t = time.perf_counter()
        m = copy.deepcopy(model)
        vector_to_parameters(curve.point(t_).detach(), m.parameters())
        t = tick("naive: w(t) + deepcopy + vector_to_parameters", t)
        update_bn(train, m)
        t = tick("naive: update_bn", t)
        m.eval()
        with torch.no_grad():
            for loader in (train, test):
                for x, y in loader:
                    logits = m(x)
                    _ = float(F.cross_entropy(logits, y, reduction="sum")), int((logits.argmax(1) != y).sum())
        tick("naive: eval-mode passes (train + test)", t)
    return {k: statistics.median(v) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, N = 11 points on the path")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, for stable numbers)")
    ap.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the numbers as JSON (default benchmarks/results/bench_curves.json)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        mlp_blocks, cnn_blocks, block, reps, points, repeats = 12, 6, 3, 7, 11, 2
    else:
        mlp_blocks, cnn_blocks, block, reps, points, repeats = 30, 12, 5, 15, 61, 2
    start = time.perf_counter()
    print(
        f"valleys curve benchmark: torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
        f"{', quick' if args.quick else ''}"
    )

    steps = [
        bench_steps(
            "MLP 784-1024-1024-10",
            lambda: MLP(784, 10, hidden=(1024, 1024)),
            (784,),
            mlp_blocks,
            block,
            reps,
            profile=True,
        ),
        bench_steps(
            "SmallCNN width 32 (BatchNorm), 1x28x28",
            lambda: SmallCNN(1, 10, width=32),
            (1, 28, 28),
            cnn_blocks,
            block,
            max(3, reps // 2),
            profile=False,
        ),
    ]

    t0 = time.perf_counter()
    pa = bench_path(points, repeats)
    m_ours, m_naive = statistics.median(pa["ours"]), statistics.median(pa["naive"])
    r_path = m_naive / m_ours
    print(
        f"\n=== (2) path evaluation, N = {points} points with BN recompute; SmallCNN width 16 ({pa['P']:,} "
        "parameters), 2048 train (8 x 256), 512 test ==="
    )
    print(f"  {'':58s} {'median':>11s}  {'per point':>11s}  {'spread':>7s}")
    for label, v in (
        ("valleys evaluate_path (BN recomputed per point)", pa["ours"]),
        ("naive: deepcopy + update_bn + evaluate per point", pa["naive"]),
    ):
        med = statistics.median(v)
        print(f"  {label:58s} {fmt_time(med)}  {fmt_time(med / points)}  {(max(v) - min(v)) / med * 100:6.1f}%")
    print(f"  naive / ours: {r_path:.3f}x ({repeats} interleaved repeats)")
    d = pa["diffs"]
    ro = pa["ours_res"]
    print(
        f"  same numbers: max |diff| train loss {d['train_loss']:.1e}, train error {d['train_error']:.1e}, "
        f"test error {d['test_error']:.1e} over {points} points"
    )
    print(
        f"  (train loss along the path: {min(ro.train_loss):.3f} .. {max(ro.train_loss):.3f}; "
        f"test error {min(ro.test_error):.3f} .. {max(ro.test_error):.3f})"
    )
    print("  where the time goes (median seconds per point over 3 points, same steps, unwrapped):")
    for k, v in pa["profile"].items():
        print(f"    {k:48s} {fmt_time(v)}")
    print(f"  ({time.perf_counter() - t0:.1f}s)")

    print("\ntargets:")
    mlp, cnn = steps
    same_path = (
        d["train_loss"] <= PATH_TOL
        and d["train_error"] <= 1 / N_TRAIN + 1e-12
        and d["test_error"] <= 1 / N_TEST + 1e-12
    )
    checks = [
        (
            f"(1) curve step / plain step, {mlp['name']} ({mlp['P']:,} params), both with L2 {WD:g} (the curve "
            f"objective): {mlp['ratio']['+L2']:.3f}x (target <= {STEP_TARGET}x; paired {mlp['paired']['+L2']:.3f}x)",
            mlp["ratio"]["+L2"] <= STEP_TARGET,
        ),
    ] + [
        (
            "(1) curve step trains only the inner points; valleys gradient = explicit objective's "
            "(float64, both models)",
            all(s["curve_ok"] and s["grad_ok"] for s in steps),
        ),
        (
            f"(2) evaluate_path = naive loop per point (train loss diff {d['train_loss']:.1e} <= {PATH_TOL:g}; errors "
            f"differ by at most one example: {d['train_error'] * N_TRAIN:.0f} of {N_TRAIN} train, "
            f"{d['test_error'] * N_TEST:.0f} of {N_TEST} test)",
            same_path,
        ),
    ]
    print_checks(checks)
    print("  info (no target):")
    print(
        f"        (1) curve step / plain step, {mlp['name']}, both without L2: {mlp['ratio']['']:.3f}x "
        f"(paired {mlp['paired']['']:.3f}x)"
    )
    for sfx, lab in (("", "no L2"), ("+L2", "with L2")):
        print(
            f"        (1) curve step / plain step, {cnn['name']}, {lab}: {cnn['ratio'][sfx]:.3f}x "
            f"(paired {cnn['paired'][sfx]:.3f}x)"
        )
    print(f"        (2) naive loop / evaluate_path, N = {points}: {r_path:.3f}x")
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f}s")
    write_results(
        "bench_curves",
        {
            "quick": args.quick,
            "steps": [
                {
                    "model": st["name"],
                    "params": st["P"],
                    "ratio": {k or "no_l2": v for k, v in st["ratio"].items()},
                    "paired": {k or "no_l2": v for k, v in st["paired"].items()},
                    "curve_ok": bool(st["curve_ok"]),
                    "grad_ok": bool(st["grad_ok"]),
                }
                for st in steps
            ],
            "path": {
                "params": pa["P"],
                "points": points,
                "repeats": repeats,
                "ours_s": pa["ours"],
                "naive_s": pa["naive"],
                "ratio": r_path,
                "diffs": dict(d),
                "profile_s_per_point": dict(pa["profile"]),
            },
            "targets": {"step_ratio_at_most": STEP_TARGET, "path_tol": PATH_TOL},
            "checks": checks_json(checks),
            "all_pass": all(ok for _, ok in checks),
            "total_s": total,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    run_measurement(main)
