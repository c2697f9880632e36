"""valleys against its peers, side by side in one process, one thread (``torch.set_num_threads(1)``).

Model: a small BatchNorm CNN (three conv 3x3 layers of 32, 64, 64 channels, each BN + ReLU, max-pooling
after the first two, global average pooling, a linear head to 10 classes; 56k parameters) on 1000 random
1x28x28 examples with random labels 0..9, one batch of 1000. BatchNorm statistics are kept: one train-mode
pass gives non-default running statistics, then everything runs in eval mode.

(a) One Hessian-vector product ``H v`` (Pearlmutter 1994). valleys: ``LossFunction(model, [(x, y)],
    route=...)`` for each route, ``loss.hvp(w, v)``; with ``"double_backward"`` the gradient graph is built
    at the first product and reused after (timed: the products after it; the set-up is shown apart).
    Peer: PyHessian (Yao et al. 2020): ``pyhessian.hessian(model, criterion, data=(x, y), cuda=False)``
    (``loss.backward(create_graph=True)`` once), then ``pyhessian.utils.hessian_vector_product(gradsH,
    params, v)`` per product. Target: parity, PyHessian / valleys (double backward) >= 0.97x (the same
    autograd calls on both sides). The products must agree to 1e-4 relative (every route against the peer).
(b) The top Hessian eigenvalue to 1e-3 relative: valleys ``lanczos(loss, w, k=1, iterations=100,
    tol=1e-3)`` (Lanczos 1950) and ``power_iteration(loss, w, iterations=200, tol=1e-3)`` vs PyHessian's
    ``hessian.eigenvalues(maxIter=200, tol=1e-3, top_n=1)`` (power iteration). Reference: Lanczos with 66
    products. (--quick: at most 20 products each, reference 20.) Products, time and relative error of each.
(c) 100 Hutchinson samples ``z^T H z`` with Rademacher z (Hutchinson 1990): ``hutchinson_trace(loss, w,
    100)`` vs PyHessian's ``hessian.trace(maxIter=100, tol=-1)``. Both estimates must lie within 4 standard
    errors of each other (different random vectors). Target: parity (>= 0.97x, the same products).
(d) A 21 x 21 plane ``w0 + a d1 + b d2`` with filter-normalised random directions (Li et al. 2018), loss on the
    1000 examples: ``valleys.evaluate_points(model, AffinePoints(...), {"train": data}, bn="keep")`` (the engine:
    loop, vmap or their folded forms, channels-last images where faster; every timed call starts with an empty
    engine cache, so the probes are paid each time) on a list of batches and through a ``DataLoader``, against the
    ``loss-landscapes`` package's ``random_plane(model, Loss(cross_entropy, x, y), distance=1, steps=21,
    normalization="filter", deepcopy_model=True)``. Target: loss-landscapes / valleys >= 1.5x on both. For
    information, the engine without folding and channels-last (``VmapPolicy(fold=False, channels_last=False)``,
    what it was before). The fraction of the machine's dense matmul throughput (a 1024^3 float32 matmul on this
    thread) the grid's forward passes reach (2 x multiply-adds of its convolutions and linear layers per example
    x examples x points / time). Agreement: the points loss-landscapes visits are recorded (an untimed 3 x 3 run)
    and valleys' losses there must equal its values (|diff| <= 1e-4 relative); list and DataLoader, and before
    and after, give the same losses to 1e-6.
(e) The same plane on the Fashion-MNIST preset's MLP (784-100-100-10, the first layer 88% of the
    multiply-adds): target 3x.

Peers are imported from ``$VALLEYS_PEERS_PATH`` (default ``/work/peers``; install them there with ``pip
download pyhessian loss-landscapes --no-deps -d /tmp/peers`` and ``pip install --no-deps --target /work/peers
/tmp/peers/*.whl``: nothing enters the project's environment, no torchvision). Where a peer is missing or
fails to import, a faithful re-implementation of its algorithm runs instead (PyHessian: ``torch.autograd.grad(
loss, params, create_graph=True)`` once, ``torch.autograd.grad(gradsH, params, grad_outputs=v,
retain_graph=True)`` per product, its power iteration and trace loops; loss-landscapes: a deepcopy of the
model, each grid point written as ``start + a d1 + b d2`` into the parameters, the loss evaluated on the data
with the autograd graph on, as its ``Loss`` metric does) and the printout and JSON say which ran.

    python benchmarks/bench_peers.py            # full: 21 x 21 grid, 100 Hutchinson samples, 20 HVP repeats
    python benchmarks/bench_peers.py --sections de   # the planes only (about 20 minutes on one thread)
    python benchmarks/bench_peers.py --quick    # under a minute: 100 examples, 5 x 5 grid, 10 samples, 3 repeats
    python benchmarks/bench_peers.py --json out.json

Times are medians over interleaved repeats (ABBA order); the script always exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _harness import (  # noqa: E402
    alternating,
    fmt_time,
    macs_per_example,
    matmul_flops,
    print_checks,
    run_measurement,
    verdict,
)
from torch import Tensor, nn

from valleys.core.weights import WeightSpace
from valleys.evaluation.engine import VmapPolicy, clear_vmap_cache
from valleys.evaluation.folding import AffinePoints
from valleys.evaluation.grid import evaluate_points
from valleys.geometry.hessian import LossFunction, hutchinson_trace, lanczos, power_iteration
from valleys.geometry.surfaces import random_direction

PEERS_PATH = os.environ.get("VALLEYS_PEERS_PATH", "/work/peers")
# (a) and (c) time the same sequence of autograd calls on both sides (double backward through one kept
# gradient graph, one leaf per parameter tensor): the target there is parity, and a ratio within 3% of 1 is
# a tie under timing noise. (d) does strictly less work on our side (no autograd graph): its target is 1.0x.
TIE = 0.97


class BNCNN(nn.Module):
    """Three conv-BN-ReLU blocks (32, 64, 64 channels), two max-pools, global average pooling, linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


# ---------------------------------------------------------------------------------------------- peers
def load_peers() -> dict[str, Any]:
    """Import PyHessian and loss-landscapes from PEERS_PATH; ``None`` where missing or broken."""
    if os.path.isdir(PEERS_PATH) and PEERS_PATH not in sys.path:
        sys.path.append(PEERS_PATH)  # appended: never shadows the project's own packages
    peers: dict[str, Any] = {}
    try:
        from pyhessian import hessian as pyh_hessian
        from pyhessian.utils import hessian_vector_product

        peers["pyhessian"] = (pyh_hessian, hessian_vector_product)
    except Exception as e:  # noqa: BLE001 - any import failure means: use the re-implementation
        peers["pyhessian"] = None
        peers["pyhessian_error"] = f"{type(e).__name__}: {e}"
    try:
        import loss_landscapes
        import loss_landscapes.metrics

        peers["loss_landscapes"] = loss_landscapes
    except Exception as e:  # noqa: BLE001
        peers["loss_landscapes"] = None
        peers["loss_landscapes_error"] = f"{type(e).__name__}: {e}"
    return peers


class PyHessianLike:
    """PyHessian's single-batch algorithm (Yao et al. 2020), re-implemented: the gradient with its graph
    once, ``H v = grad(gradsH, params, grad_outputs=v, retain_graph=True)`` per product, its power iteration
    (``eigenvalues``) and Hutchinson loop (``trace``)."""

    def __init__(self, model: nn.Module, criterion: Any, data: tuple[Tensor, Tensor]) -> None:
        self.model = model.eval()
        x, y = data
        self.params = [p for p in model.parameters() if p.requires_grad]
        loss = criterion(model(x), y)
        self.gradsH = list(torch.autograd.grad(loss, self.params, create_graph=True))

    def hvp(self, v: list[Tensor]) -> tuple[Tensor, ...]:
        return torch.autograd.grad(self.gradsH, self.params, grad_outputs=v, retain_graph=True)

    def eigenvalues(self, maxIter: int = 100, tol: float = 1e-3, top_n: int = 1) -> tuple[list[float], list]:
        v = [torch.randn_like(p) for p in self.params]
        v = _normalise(v)
        value = None
        for _ in range(maxIter):
            hv = self.hvp(v)
            tmp = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = _normalise(list(hv))
            if value is not None and abs(value - tmp) / (abs(value) + 1e-6) < tol:
                value = tmp
                break
            value = tmp
        return [value], [v]

    def trace(self, maxIter: int = 100, tol: float = 1e-3) -> list[float]:
        vals: list[float] = []
        trace = 0.0
        for _ in range(maxIter):
            v = [torch.randint_like(p, high=2) * 2 - 1 for p in self.params]
            hv = self.hvp(v)
            vals.append(float(sum((a * b).sum() for a, b in zip(hv, v, strict=True))))
            if abs(statistics.mean(vals) - trace) / (abs(trace) + 1e-6) < tol:
                return vals
            trace = statistics.mean(vals)
        return vals


def _normalise(v: list[Tensor]) -> list[Tensor]:
    s = math.sqrt(float(sum((a * a).sum() for a in v))) + 1e-6
    return [a / s for a in v]


def peer_hessian(
    peers: dict[str, Any], model: nn.Module, data: tuple[Tensor, Tensor], cuda: bool = False
) -> tuple[Any, Any, str]:
    """``(object, hvp(v_list), which)``: PyHessian's own class where importable, else the re-implementation."""
    crit = nn.CrossEntropyLoss()
    if peers.get("pyhessian") is not None:
        cls, hvp_fn = peers["pyhessian"]
        h = cls(model, crit, data=data, cuda=cuda)
        return h, (lambda v: hvp_fn(h.gradsH, h.params, v)), "pyhessian (package)"
    h = PyHessianLike(model, crit, data)
    return h, h.hvp, "pyhessian (re-implementation)"


def landscapes_plane(
    peers: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor, steps: int, record: list | None = None
) -> tuple[Any, str]:
    """loss-landscapes' ``random_plane`` (the package, or its algorithm re-implemented)."""
    ll = peers.get("loss_landscapes")
    if ll is not None:
        from loss_landscapes.metrics import Loss

        class Recording(Loss):
            def __call__(self, wrapper):  # type: ignore[override]
                value = super().__call__(wrapper)
                if record is not None:
                    record.append(
                        (
                            torch.cat(
                                [p.detach().reshape(-1).clone() for p in wrapper.get_module_parameters().parameters]
                            ),
                            value,
                        )
                    )
                return value

        metric = (Recording if record is not None else Loss)(nn.functional.cross_entropy, x, y)
        return ll.random_plane(
            model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
        ), "loss-landscapes (package)"
    return _plane_reimplemented(model, x, y, steps, record), "loss-landscapes (re-implementation)"


def _plane_reimplemented(model: nn.Module, x: Tensor, y: Tensor, steps: int, record: list | None) -> list:
    m = copy.deepcopy(model)
    params = list(m.parameters())
    start = [p.detach().clone() for p in params]
    d1, d2 = ([_filter_normalise(torch.rand_like(p), s) for p, s in zip(params, start, strict=True)] for _ in range(2))
    out = []
    for i in range(steps):
        row = []
        a = -1 + 2 * i / max(steps - 1, 1)
        for j in range(steps):
            b = -1 + 2 * j / max(steps - 1, 1)
            with torch.no_grad():
                for p, s, u, v in zip(params, start, d1, d2, strict=True):
                    p.copy_(s + a * u + b * v)
            value = nn.functional.cross_entropy(m(x), y).item()  # graph on, as loss-landscapes' Loss metric
            if record is not None:
                record.append((torch.cat([p.detach().reshape(-1).clone() for p in params]), value))
            row.append(value)
        out.append(row)
    return out


def _filter_normalise(d: Tensor, ref: Tensor) -> Tensor:
    if d.dim() <= 1:
        return d * ref.norm() / d.norm()
    dn = d.reshape(d.shape[0], -1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    rn = ref.reshape(ref.shape[0], -1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d * rn / dn


# ---------------------------------------------------------------------------------------------- planes
def plane_case(
    label: str,
    title: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    peers: dict[str, Any],
    steps: int,
    repeats: int,
    target: float,
    checks: list,
    *,
    before: bool = True,
) -> dict[str, Any]:
    """A ``steps x steps`` filter-normalised random plane on (x, y): valleys on a list of batches and through a
    DataLoader (each call starts with an empty engine cache, so the timings include every probe), valleys
    as it was before folding and channels-last inputs (``VmapPolicy(fold=False, channels_last=False)``,
    information), against loss-landscapes; the fraction of the machine's matmul throughput the grid's
    forward passes reach."""
    from torch.utils.data import DataLoader, TensorDataset

    space = WeightSpace(model)
    w = space.read(model)
    g = torch.Generator().manual_seed(3)
    d1 = random_direction(space, w, include_1d=True, generator=g)
    d2 = random_direction(space, w, include_1d=True, generator=g)
    axis = torch.linspace(-1, 1, steps, dtype=torch.float64)
    points = AffinePoints(torch.stack([d1, d2]), torch.cartesian_prod(axis, axis), w)
    batches = [(x, y)]
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    print(f"\n{label} {steps} x {steps} random filter-normalised plane, {title}, loss on {len(x)} examples")
    which_p = ""

    def ours(data: Any, policy: Any = "auto") -> list[float]:
        clear_vmap_cache()  # the probe is part of every timing
        return evaluate_points(model, points, {"train": data}, bn="keep", batched=policy).loss("train")

    def peer_grid() -> Any:
        nonlocal which_p
        out, which_p = landscapes_plane(peers, model, x, y, steps)
        return out

    landscapes_plane(peers, model, x[:10], y[:10], 2)  # the peer's imports and first-call costs
    fns = {
        "valleys_list": lambda: ours(batches),
        "valleys_loader": lambda: ours(loader),
        "peer": peer_grid,
    }
    if before:
        fns["valleys_before"] = lambda: ours(batches, VmapPolicy("auto", fold=False, channels_last=False))
    times, last = alternating(fns, repeats)
    med = {k: statistics.median(t) for k, t in times.items()}
    peak = matmul_flops()
    flops = 2 * macs_per_example(model, x) * len(x) * len(points)
    roof = {k: flops / med[k] / peak for k in med}
    for key, what in (("valleys_list", "valleys, list of batches"), ("valleys_loader", "valleys, DataLoader")):
        print(f"  {what:30s} {fmt_time(med[key])}   {100 * roof[key]:.0f}% of matmul")
    if before:
        print(
            f"  valleys before (no folding, no channels-last) {fmt_time(med['valleys_before'])}   "
            f"{100 * roof['valleys_before']:.0f}% of matmul (information)"
        )
    print(f"  {which_p:30s} {fmt_time(med['peer'])}   {100 * roof['peer']:.0f}% of matmul")
    print(f"  matmul throughput {peak / 1e9:.1f} GFLOP/s; grid forward passes {flops / 1e9:.1f} GFLOP")
    for key, what in (("valleys_list", "list of batches"), ("valleys_loader", "DataLoader")):
        ratio = med["peer"] / med[key]
        print(f"  ratio peer / valleys ({what}) {ratio:.2f}x   {verdict(ratio >= target)}")
        checks.append(
            (f"{label} {title} plane, {what}: {which_p} / valleys = {ratio:.2f}x >= {target}x", ratio >= target)
        )
    diff = max(abs(a - b) / abs(b) for a, b in zip(last["valleys_list"], last["valleys_loader"], strict=True))
    record: list = []
    landscapes_plane(peers, model, x, y, 3, record)  # the points the peer visits, and its values there
    got = evaluate_points(model, [p for p, _ in record[:4]], {"train": batches}, bn="keep").loss("train")
    peer_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, (_, b) in zip(got, record[:4], strict=True))
    checks.append(
        (f"{label} list and DataLoader give the same losses (max relative diff {diff:.1e} <= 1e-6)", diff <= 1e-6)
    )
    checks.append(
        (
            f"{label} same loss at {len(got)} of the peer's grid points (max relative diff {peer_diff:.1e} <= 1e-4)",
            peer_diff <= 1e-4,
        )
    )
    if before:
        bdiff = max(abs(a - b) / abs(b) for a, b in zip(last["valleys_list"], last["valleys_before"], strict=True))
        checks.append(
            (f"{label} the same numbers as before folding (max relative diff {bdiff:.1e} <= 1e-6)", bdiff <= 1e-6)
        )
    return {
        "steps": steps,
        "examples": len(x),
        "peer": which_p,
        "median_s": med,
        "ratio_peer_over_valleys_list": med["peer"] / med["valleys_list"],
        "ratio_peer_over_valleys_loader": med["peer"] / med["valleys_loader"],
        "matmul_gflops": peak / 1e9,
        "grid_gflop": flops / 1e9,
        "fraction_of_matmul": roof,
        "agreement_max_rel_diff": peer_diff,
    }


# ---------------------------------------------------------------------------------------------- sections
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="100 examples, fewer repeats, 5 x 5 grid, 10 Hutchinson samples"
    )
    ap.add_argument("--examples", type=int, default=None, help="data size (default 1000; 100 with --quick)")
    ap.add_argument(
        "--plane-repeats",
        type=int,
        default=1,
        help="interleaved repeats of the plane (default 1: a 21 x 21 plane on 1000 examples takes "
        "several minutes per run on one core)",
    )
    ap.add_argument("--sections", default="abcde", help="which sections to run (default abcde)")
    ap.add_argument("--no-before", action="store_true", help="(d): skip timing the engine without folding")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "bench_peers.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 2 if args.quick else 20
    steps = 5 if args.quick else 21
    samples = 10 if args.quick else 100
    examples = args.examples or (100 if args.quick else 1000)
    max_products = 20 if args.quick else 200
    peers = load_peers()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread; "
        f"peers from {PEERS_PATH}" + (" (quick)" if args.quick else "")
    )
    for name in ("pyhessian", "loss_landscapes"):
        if peers.get(name) is None:
            print(f"  {name}: not importable ({peers.get(name + '_error')}); its algorithm is re-implemented")

    torch.manual_seed(0)
    model = BNCNN()
    x, y = torch.randn(examples, 1, 28, 28), torch.randint(0, 10, (examples,))
    with torch.no_grad():
        for m in model.modules():  # trained-looking BatchNorm affine parameters (loss-landscapes' filter
            if isinstance(m, nn.BatchNorm2d):  # normalisation divides by their norms: zeros would fail)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        model.train()(x * 1.5 + 0.5)  # non-default running statistics, then kept
    model.eval()
    space = WeightSpace(model)
    w = space.read(model)
    results: dict[str, Any] = {"P": space.size, "examples": examples, "quick": args.quick, "torch": torch.__version__}
    checks: list[tuple[str, bool]] = []

    if set(args.sections) & set("abc"):  # the Hessian sections share the peer object and the loss
        # (a) one HVP --------------------------------------------------------------------------------------
        print(f"\n(a) one Hessian-vector product, P = {space.size}, {examples} examples, eval mode")
        peer_model = copy.deepcopy(model)
        t0 = time.perf_counter()
        peer, peer_hvp, which_h = peer_hessian(peers, peer_model, (x, y))
        peer_setup = time.perf_counter() - t0
        v = torch.randn(space.size, generator=torch.Generator().manual_seed(1))
        v_list = [t.clone() for t in space.views(v)]
        losses = {r: LossFunction(model, [(x, y)], route=r) for r in ("double_backward", "forward_over_reverse")}
        losses["forward_over_reverse"].hvp(w, v)  # warm-up (first-call costs)
        t0 = time.perf_counter()
        losses["double_backward"].hvp(w, v)  # builds the gradient graph at w (the peer's set-up, timed apart)
        ours_setup = time.perf_counter() - t0
        fns = {
            "valleys double_backward": lambda: losses["double_backward"].hvp(w, v),
            "valleys forward_over_reverse": lambda: losses["forward_over_reverse"].hvp(w, v),
            which_h: lambda: torch.cat([t.reshape(-1) for t in peer_hvp(v_list)]),
        }
        times, last = alternating(fns, repeats)
        med = {k: statistics.median(t) for k, t in times.items()}
        for k, t in med.items():
            print(f"  {k:34s} {fmt_time(t)} per product")
        print(
            "  set-up (gradient with its graph, and one product): "
            f"valleys {fmt_time(ours_setup)}, peer {fmt_time(peer_setup)}"
        )
        ref = last[which_h]
        for k in ("valleys double_backward", "valleys forward_over_reverse"):
            rel = float((last[k] - ref).norm() / ref.norm())
            checks.append((f"(a) {k} HVP equals the peer's: relative difference {rel:.1e} <= 1e-4", rel <= 1e-4))
        ratio = med[which_h] / med["valleys double_backward"]
        checks.append(
            (
                f"(a) HVP: peer / valleys double_backward = {ratio:.2f}x >= {TIE}x (parity: the same autograd "
                "calls on both sides)",
                ratio >= TIE,
            )
        )
        print(
            f"  ratio peer / valleys: double_backward {ratio:.2f}x, forward_over_reverse "
            f"{med[which_h] / med['valleys forward_over_reverse']:.2f}x   {verdict(ratio >= TIE)}"
        )
        results["hvp"] = {
            "peer": which_h,
            "median_s": med,
            "setup_s": {"valleys": ours_setup, "peer": peer_setup},
            "ratio_peer_over_double_backward": ratio,
        }

        # (b) top eigenvalue --------------------------------------------------------------------------------
        print("\n(b) top Hessian eigenvalue to 1e-3 relative")
        loss = losses["double_backward"]
        reference = float(
            lanczos(loss, w, k=1, iterations=max(20, max_products // 3), generator=torch.Generator().manual_seed(7))[
                "eigenvalues"
            ][0]
        )
        rows = {}
        for name, run in (
            (
                "valleys lanczos",
                lambda: lanczos(
                    loss, w, k=1, iterations=max_products // 2, tol=1e-3, generator=torch.Generator().manual_seed(0)
                ),
            ),
            (
                "valleys power_iteration",
                lambda: power_iteration(
                    loss, w, iterations=max_products, tol=1e-3, generator=torch.Generator().manual_seed(0)
                ),
            ),
        ):
            t0 = time.perf_counter()
            res = run()
            dt = time.perf_counter() - t0
            value = float(res["eigenvalues"][0]) if "eigenvalues" in res else res["eigenvalue"]
            rows[name] = {"time_s": dt, "num_hvp": res["num_hvp"], "eigenvalue": value}
        counter = {"n": 0}
        inner = peer_hvp

        def counted(vl):
            counter["n"] += 1
            return inner(vl)

        torch.manual_seed(0)
        t0 = time.perf_counter()
        if which_h.endswith("(package)"):
            ph_mod = sys.modules[type(peer).__module__]  # pyhessian.hessian (the package exports a class by that name)
            saved = ph_mod.hessian_vector_product
            ph_mod.hessian_vector_product = lambda g, p, vl: counted(vl)  # count the peer's products
            try:
                evs, _ = peer.eigenvalues(maxIter=max_products, tol=1e-3, top_n=1)
            finally:
                ph_mod.hessian_vector_product = saved
        else:
            peer.hvp, plain = counted, peer.hvp
            evs, _ = peer.eigenvalues(maxIter=max_products, tol=1e-3, top_n=1)
            peer.hvp = plain
        rows[f"{which_h} eigenvalues"] = {
            "time_s": time.perf_counter() - t0,
            "num_hvp": counter["n"],
            "eigenvalue": float(evs[0]),
        }
        for name, r in rows.items():
            r["rel_error"] = abs(r["eigenvalue"] - reference) / abs(reference)
            print(
                f"  {name:42s} {fmt_time(r['time_s'])}  {r['num_hvp']:4d} products  "
                f"lambda = {r['eigenvalue']:.5g} (rel. error {r['rel_error']:.1e})"
            )
        print(f"  reference (Lanczos, {max(20, max_products // 3)} products): {reference:.6g}")
        checks.append(
            (
                f"(b) Lanczos within 1e-3 of the reference ({rows['valleys lanczos']['rel_error']:.1e})",
                rows["valleys lanczos"]["rel_error"] <= 1e-3,
            )
        )
        results["top_eigenvalue"] = {"reference": reference, **rows}

        # (c) Hutchinson ------------------------------------------------------------------------------------
        print(f"\n(c) {samples} Hutchinson samples")
        t0 = time.perf_counter()
        ours = hutchinson_trace(loss, w, samples, generator=torch.Generator().manual_seed(0))
        ours_s = time.perf_counter() - t0
        torch.manual_seed(0)
        t0 = time.perf_counter()
        vals = peer.trace(maxIter=samples, tol=-1.0)  # never stops early
        peer_s = time.perf_counter() - t0
        peer_trace = statistics.mean(vals)
        peer_se = statistics.stdev(vals) / math.sqrt(len(vals))
        print(f"  valleys hutchinson_trace  {fmt_time(ours_s)}  trace {ours['trace']:.5g} +- {ours['stderr']:.2g}")
        print(
            f"  {which_h + ' trace':26s}{fmt_time(peer_s)}  trace {peer_trace:.5g} +- {peer_se:.2g} "
            f"({len(vals)} samples)"
        )
        gap = abs(ours["trace"] - peer_trace) / math.hypot(ours["stderr"], peer_se)
        checks.append((f"(c) the two trace estimates agree ({gap:.1f} standard errors apart <= 4)", gap <= 4))
        checks.append(
            (
                f"(c) Hutchinson: peer / valleys = {peer_s / ours_s:.2f}x >= {TIE}x (parity: the same products)",
                peer_s / ours_s >= TIE,
            )
        )
        results["hutchinson"] = {
            "samples": samples,
            "valleys_s": ours_s,
            "peer_s": peer_s,
            "valleys_trace": ours["trace"],
            "peer_trace": peer_trace,
        }
        del peer, peer_hvp, losses, loss

    if "d" in args.sections:  # (d) the plane on the BN CNN -------------------------------------------------
        results["plane"] = plane_case(
            "(d)", "BN CNN", model, x, y, peers, steps, args.plane_repeats, 1.5, checks, before=not args.no_before
        )
    if "e" in args.sections:  # (e) the plane on the Fashion-MNIST preset's MLP ----------------------------------
        torch.manual_seed(1)
        mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
        ).eval()
        results["plane_mlp"] = plane_case(
            "(e)", "MLP 784-100-100-10", mlp, x, y, peers, steps, max(args.plane_repeats, 3), 3.0, checks
        )

    print("\nChecks")
    print_checks(checks)
    results["checks"] = [{"check": c, "pass": ok} for c, ok in checks]
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_measurement(main)
