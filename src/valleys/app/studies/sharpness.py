"""``valleys sharpness``: top Hessian eigenvalues, trace and epsilon-sharpness of a network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import setting
from .base import Study, StudyContext, StudyResult, seed_setting

__all__ = ["SharpnessSettings", "SharpnessStudy"]


@dataclass
class SharpnessSettings:
    """Curvature of the train loss on a fixed subset of ``examples`` training examples (eval mode)."""

    run: str = setting(help="run folder or checkpoint", positional=True, check="path")
    k: int = setting(3, "top eigenvalues (Lanczos, --iterations products at most)", check="positive")
    examples: int = setting(1000, "training examples in the fixed subset", check="positive")
    epsilon: float = setting(1e-3, "box size of epsilon-sharpness", check="positive")
    iterations: int = setting(30, "Lanczos iterations (Hessian-vector products)", check="positive")
    trace_samples: int = setting(30, "Hessian-vector products of the trace estimate", check="positive")
    trace_method: str = setting(
        "hutchinson",
        "hutchinson (Hutchinson 1990) or hutchpp (Meyer et al. 2021: a sketch of the top of the spectrum taken "
        "exactly, Hutchinson on the rest; smaller error for the same products when the spectrum decays)",
        choices=("hutchinson", "hutchpp"),
    )
    density: bool = setting(
        False, "also the Hessian eigenvalue density by stochastic Lanczos quadrature (figure and moments)"
    )
    density_steps: int = setting(80, "Lanczos steps per start of --density", check="positive")
    density_starts: int = setting(1, "Rademacher starts of --density (PyHessian's n_v)", check="positive")
    blocks: bool = setting(False, "also each layer's top eigenvalue and trace (its diagonal block of the Hessian)")
    seed: int = seed_setting("seed of the Lanczos start and the probes")


class SharpnessStudy(Study):
    """The top-``k`` Hessian eigenvalues (Lanczos), the Hessian trace (Hutchinson, ``E[z^T H z]`` over Rademacher
    ``z``) and epsilon-sharpness (Keskar et al. 2017) of the train loss."""

    name = "sharpness"
    help = "top Hessian eigenvalues, trace and epsilon-sharpness of a network"
    settings = SharpnessSettings

    def run(self, settings: SharpnessSettings, context: StudyContext) -> StudyResult:
        from ...core.batches import head_of_batch
        from ...geometry.studies import sharpness_study
        from .common import load_context

        s = settings
        model, _, cfg, loaders, _ = load_context(s.run)
        adapter = cfg.adapter()
        batches, seen = [], 0
        for batch in loaders["train"]:  # the first s.examples training examples, whatever the batch's shape
            batches.append(head_of_batch(batch, s.examples - seen))
            seen += len(adapter.targets(batches[-1]))
            if seen >= s.examples:
                break
        res = sharpness_study(
            model,
            batches,
            k=s.k,
            iterations=s.iterations,
            trace_samples=s.trace_samples,
            epsilon=s.epsilon,
            seed=s.seed,
            adapter=adapter,
            progress=context.progress,
            trace_method=s.trace_method,
            density=(s.density_steps, s.density_starts) if s.density else None,
            blocks=s.blocks,
        )
        return StudyResult("sharpness", f"sharpness of {s.run}", res)

    def figures(self, result: StudyResult, out: Path) -> list[Path]:
        d = result.values.get("density")
        if not d:
            return []
        from ..plots import plot_density

        title = f"Hessian eigenvalue density ({d['steps']} Lanczos steps, {d['starts']} start(s))"
        return [plot_density(d["grid"], d["curve"], out / "figures" / "density.png", title=title)]

    def report_lines(self, result: StudyResult) -> list[str]:
        r = result.values
        return [
            f"- top Hessian eigenvalues: {[round(x, 4) for x in r['top_eigenvalues']]} "
            f"({r['num_hvp']} Hessian-vector products)",
            f"- trace ({'Hutch++' if r['trace'].get('method') == 'hutchpp' else 'Hutchinson'}): "
            f"{r['trace']['trace']:.4f} ± {r['trace']['stderr']:.4f}",
            f"- epsilon-sharpness (eps {r['epsilon_sharpness']['epsilon']}): {r['epsilon_sharpness']['sharpness']:.4f}",
            f"- mode: {r['mode']}",
        ] + self._spectrum_lines(r)

    @staticmethod
    def _spectrum_lines(r: Mapping[str, Any]) -> list[str]:
        lines = []
        if "density" in r:
            m = r["density"]["moments"]
            lines.append(
                f"- eigenvalue density (SLQ, {r['density']['num_hvp']} products): moments tr(H^j)/P for j = 1..4: "
                + ", ".join(f"{v:.4g}" for v in m)
            )
        if "blocks" in r:
            lines += ["", "| layer | parameters | top eigenvalue | trace |", "|---|---|---|---|"]
            for name, b in r["blocks"].items():
                lines.append(f"| {name} | {b['parameters']} | {b['eigenvalues'][0]:.4g} | {b['trace']:.4g} |")
        return lines

    def summary(self, result: StudyResult) -> str:
        r = result.values
        return (
            f"top Hessian eigenvalues {[round(v, 4) for v in r['top_eigenvalues']]}, trace "
            f"{r['trace']['trace']:.3f} ± {r['trace']['stderr']:.3f}, epsilon-sharpness "
            f"{r['epsilon_sharpness']['sharpness']:.4f}"
        )
