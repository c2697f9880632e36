"""``valleys sharpness``: top Hessian eigenvalues, trace and epsilon-sharpness of a network."""

from __future__ import annotations

from dataclasses import dataclass

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
    trace_samples: int = setting(30, "Hutchinson probes of the trace", check="positive")
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
        )
        return StudyResult("sharpness", f"sharpness of {s.run}", res)

    def report_lines(self, result: StudyResult) -> list[str]:
        r = result.values
        return [
            f"- top Hessian eigenvalues: {[round(x, 4) for x in r['top_eigenvalues']]} "
            f"({r['num_hvp']} Hessian-vector products)",
            f"- trace (Hutchinson): {r['trace']['trace']:.4f} ± {r['trace']['stderr']:.4f}",
            f"- epsilon-sharpness (eps {r['epsilon_sharpness']['epsilon']}): {r['epsilon_sharpness']['sharpness']:.4f}",
            f"- mode: {r['mode']}",
        ]

    def summary(self, result: StudyResult) -> str:
        r = result.values
        return (
            f"top Hessian eigenvalues {[round(v, 4) for v in r['top_eigenvalues']]}, trace "
            f"{r['trace']['trace']:.3f} ± {r['trace']['stderr']:.3f}, epsilon-sharpness "
            f"{r['epsilon_sharpness']['sharpness']:.4f}"
        )
