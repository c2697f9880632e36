"""The entry points on a CUDA device, for sessions lent a GPU: what runs, what fails, and how fast.

Each check runs alone (an exception is recorded, never stops the others) and compares with the same call on
the CPU where that is meaningful:

1. the suite's CUDA tests (``tests/test_engine.py``, ``tests/test_gpu.py``: BMA, evaluate, folded grids and SWAG draws
   in blocks of a GPU model fed by CPU loaders);
2. ``Trainer`` with SWA and SWAG callbacks on a CUDA model fed CPU loaders; SWAG draws with a CPU generator
   (the usual seeded ``torch.Generator()``) and with a CUDA one; ``bma`` of the draws;
3. the Hessian on CUDA: ``lanczos``, ``hutchinson_trace`` (batched), ``hutchpp_trace``, ``spectral_density``,
   ``block_spectra``; the same seeds give the same numbers as on the CPU (to float32 rounding);
4. elliptical slice sampling of a subspace posterior on CUDA;
5. ``benchmarks/bench_spectrum.py --device cuda`` at the issue's size (the BN CNN on 1000 examples,
   PyHessian's 100-probe Hutchinson over 20 seeds against Hutch++, the SLQ density against PyHessian's loop).

    python benchmarks/gpu_check.py --out DIR      # writes DIR/gpu_check.json; a few minutes on an H200

Run from the repository root with ``PYTHONPATH=src`` (the device machine has torch but not this package).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS: dict[str, Any] = {}


def check(name: str):
    def wrap(fn):
        t = time.perf_counter()
        try:
            RESULTS[name] = {"ok": True, **(fn() or {})}
        except Exception as e:  # noqa: BLE001 - recorded, the other checks go on
            RESULTS[name] = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-2000:],
            }
        RESULTS[name]["seconds"] = time.perf_counter() - t
        print(
            f"{'PASS' if RESULTS[name]['ok'] else 'FAIL'}  {name} ({RESULTS[name]['seconds']:.1f} s)"
            + ("" if RESULTS[name]["ok"] else f": {RESULTS[name]['error']}"),
            flush=True,
        )
        return fn

    return wrap


def data(n: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = x[:, :3].argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (the point); cpu only to try the script itself")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.device(args.device)
    RESULTS["environment"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
    }
    print(json.dumps(RESULTS["environment"]), flush=True)

    @check("pytest: the suite's CUDA test")
    def _():
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/test_engine.py",
                "tests/test_gpu.py",
                "-q",
                "-k",
                "gpu",
                "-p",
                "no:cacheprovider",
                "-rs",
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise RuntimeError(r.stdout[-1500:] + r.stderr[-500:])
        return {"output": r.stdout.strip().splitlines()[-1]}

    @check("Trainer + SWA and SWAG callbacks on a CUDA model, CPU loaders")
    def _():
        from valleys.methods.averaging import SWA
        from valleys.methods.swag import SWAG
        from valleys.training.callbacks import SWACallback
        from valleys.training.trainer import Trainer

        model = mlp().to(cuda)
        loader = torch.utils.data.DataLoader(data(), batch_size=64, shuffle=True, generator=torch.Generator())
        swa, swag = SWA(model), SWAG(model, rank=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        Trainer(model, opt, loader, 6, callbacks=[SWACallback(swa, 2), SWACallback(swag, 1)]).fit(progress=False)
        RESULTS["_swag"] = (model, swag, loader)
        return {"swa_device": str(swa.mean.device), "swag_k": swag.k}

    @check("SWAG draws on a CUDA posterior with a CPU generator")
    def _():
        _, swag, _ = RESULTS["_swag"]
        a = swag.sample(2, generator=torch.Generator().manual_seed(0))
        return {"device": str(a.device)}

    @check("SWAG draws on a CUDA posterior with a CUDA generator, and their BMA")
    def _():
        from valleys.evaluation.predict import bma

        model, swag, loader = RESULTS["_swag"]
        ws = list(swag.sample(4, generator=torch.Generator(device=cuda).manual_seed(0)))
        res = bma(model, ws, torch.utils.data.DataLoader(data(256, 1), batch_size=128), bn=loader)
        return {"accuracy": float(res.metrics.accuracy), "nll": float(res.metrics.nll)}

    @check("Hessian on CUDA equals the CPU for the same seeds")
    def _():
        from valleys.geometry.hessian import LossFunction, hutchinson_trace, lanczos
        from valleys.geometry.spectrum import block_spectra, hutchpp_trace, spectral_density, spectral_moments

        x, y = data(256)[:]
        outs = {}
        for dev in ("cpu", str(cuda)):
            model = mlp().to(dev).eval()
            batches = [(x.to(dev), y.to(dev))]
            loss = LossFunction(model, batches)
            w = loss.space.read(model)
            g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            d = spectral_density(loss, w, steps=20, starts=2, generator=g())
            outs[dev] = {
                "top": lanczos(loss, w, k=2, iterations=20, generator=g())["eigenvalues"].tolist(),
                "hutchinson": hutchinson_trace(loss, w, 20, g(), batch=5)["trace"],
                "hutchpp": hutchpp_trace(loss, w, 30, g(), batch=5)["trace"],
                "moments": spectral_moments(d["nodes"], d["weights"], 2),
                "blocks": {k: v["trace"] for k, v in block_spectra(model, batches, generator=g()).items()},
            }
        a, b = outs["cpu"], outs[str(cuda)]
        close = all(abs(p - q) <= 1e-3 * max(1.0, abs(p)) for p, q in zip(a["top"], b["top"], strict=True))
        close &= abs(a["hutchpp"] - b["hutchpp"]) <= 1e-3 * max(1.0, abs(a["hutchpp"]))
        if not close:
            raise AssertionError(f"CPU {a} != CUDA {b}")
        return {"cpu": a, "cuda": b}

    @check("elliptical slice sampling of a random subspace posterior on CUDA")
    def _():
        from valleys.core.weights import WeightSpace
        from valleys.methods.samplers import elliptical_slice
        from valleys.methods.subspace import random_subspace
        from valleys.methods.subspace_posterior import SubspacePosterior

        model, _, loader = RESULTS["_swag"]
        w = WeightSpace(model).read(model)
        sub = random_subspace(w, 3, generator=torch.Generator().manual_seed(0))
        post = SubspacePosterior(model, sub, loader, temperature=10.0)
        r = elliptical_slice(
            lambda z: float(post.log_likelihood(z)),
            torch.zeros(3, dtype=torch.float64),
            prior_scale=1.0,
            num_samples=10,
            generator=torch.Generator().manual_seed(0),
        )
        return {"mean": r.samples.mean(0).tolist()}

    RESULTS.pop("_swag", None)
    if not args.skip_bench:

        @check("bench_spectrum.py --device cuda (1000 examples, 20 seeds)")
        def _():
            r = subprocess.run(
                [sys.executable, "benchmarks/bench_spectrum.py", "--device", str(cuda)]
                + ["--json", str(out / "bench_spectrum_cuda.json")],
                capture_output=True,
                check=False,
                text=True,
                timeout=420,
            )
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            print("\n".join(lines[-22:]), flush=True)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-1500:])
            return {"output": lines[-22:]}

    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
