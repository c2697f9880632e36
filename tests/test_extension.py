"""Extending valleys: a method and a study defined in this one file, each with one registration call, are
offered by the command line (help, generated flags, validation) and run; the registries are restored after."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from valleys.app.cli import _parser, main
from valleys.app.config import TrainConfig
from valleys.app.methods.base import Method, Predictive
from valleys.app.options import setting
from valleys.app.registry import METHODS, register_method
from valleys.app.studies import STUDIES, Study, StudyContext, StudyResult, register_study
from valleys.core.checkpoint import load_checkpoint
from valleys.training.schedules import Schedule


# ---------------------------------------------------------------------- a test-only method
@dataclass
class WarmupSettings:
    warmup_epochs: int = setting(2, "epochs of linear LR warm-up from lr / 10", check="positive")


class Warmup(Schedule):
    def __init__(self, base: float, epochs: int) -> None:
        self.base, self.epochs = base, epochs

    def lr(self, epoch: float) -> float:
        return self.base * (0.1 + 0.9 * min(epoch, self.epochs) / self.epochs)


class WarmupSGD(Method):
    """SGD whose LR rises linearly from ``lr / 10`` to ``lr`` over ``warmup_epochs`` and then stays."""

    name = "warmup-sgd"
    help = "SGD with a linear LR warm-up over --warmup-epochs (test only)"
    settings = (WarmupSettings,)

    def schedule(self, cfg):
        return Warmup(cfg.lr, cfg.warmup_epochs)

    def predictive(self, run_dir, cfg, model, samples):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        return Predictive(lambda: [state])


# ---------------------------------------------------------------------- a test-only study
@dataclass
class NormSettings:
    run: str = setting(help="run folder", positional=True, check="path")
    order: float = setting(2.0, "the norm's order p", check="positive")


class NormStudy(Study):
    """The p-norm of a network's weights, ``(sum_i |w_i|^p)^(1/p)``."""

    name = "weight-norm"
    help = "the p-norm of a run's weights (test only)"
    settings = NormSettings

    def run(self, settings: NormSettings, context: StudyContext) -> StudyResult:
        from valleys.app.studies.common import load_context

        _, w, _, _, _ = load_context(settings.run)
        norm = float(w.double().abs().pow(settings.order).sum().pow(1 / settings.order))
        return StudyResult("weight-norm", f"weight norm of {settings.run}", {"norm": norm, "order": settings.order})

    def report_lines(self, result: StudyResult) -> list[str]:
        return [f"- norm: {result['norm']:.6f}"]


@pytest.fixture
def extended():
    with register_method(WarmupSGD()), register_study(NormStudy()):
        yield
    assert "warmup-sgd" not in METHODS and "weight-norm" not in STUDIES
    assert "warmup_epochs" not in {f.name for f in dataclasses.fields(TrainConfig)}


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return " ".join(capsys.readouterr().out.split())


def test_registered_method_and_study_are_offered_by_the_cli(extended, capsys):
    top = _help(["--help"], capsys)
    assert "weight-norm" in top and "the p-norm of a run's weights (test only)" in top
    train = _help(["train", "--help"], capsys)
    assert "warmup-sgd" in train and "--warmup-epochs" in train
    assert "warmup-sgd: epochs of linear LR warm-up from lr / 10 (default: 2)" in train
    assert "--order" in _help(["weight-norm", "--help"], capsys)

    args = _parser().parse_args(["train", "--method", "warmup-sgd", "--warmup-epochs", "4"])
    assert (args.method, args.warmup_epochs) == ("warmup-sgd", 4)
    cfg = TrainConfig(method="warmup-sgd", warmup_epochs=4, epochs=10, lr=0.2).resolved()
    assert [METHODS.get("warmup-sgd").schedule(cfg)(e) for e in (0, 2, 4, 9)] == pytest.approx(
        [0.02, 0.02 + 0.18 * 2 / 4, 0.2, 0.2]
    )
    args = _parser().parse_args(["weight-norm", "some/run", "--order", "1", "--out", "x"])
    assert (args.run, args.order) == ("some/run", 1.0)

    # the generated validation: the flag's rule, and the same rule for a config made in Python
    with pytest.raises(SystemExit) as exit:
        main(["train", "--method", "warmup-sgd", "--warmup-epochs", "0"])
    assert exit.value.code == 2
    assert "--warmup-epochs: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="warmup-epochs must be at least 1, got 0"):
        TrainConfig(method="warmup-sgd", warmup_epochs=0).resolved()
    with pytest.raises(SystemExit):
        main(["weight-norm", "r", "--order", "-1", "--out", "x"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage: one line, the refusal
    assert err.startswith("valleys weight-norm: error:") and "--order: must be finite and positive, got -1" in err


@pytest.mark.slow
def test_registered_method_trains_and_study_writes_its_json(extended, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--method", "warmup-sgd", "--warmup-epochs", "1", "--model", "mlp", "--epochs", "2"]
    assert main([*argv, "--train-subset", "200", "--test-subset", "100", "--out", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["method"], config["warmup_epochs"]) == ("warmup-sgd", 1)

    out = tmp_path / "norm"
    assert main(["weight-norm", str(run), "--order", "1", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    state, _ = load_checkpoint(run / "model.safetensors")  # the saved weights, read without the study's code
    oracle = sum(float(v.double().abs().sum()) for v in state["model"].values())
    assert res == {"norm": pytest.approx(oracle, rel=1e-9), "order": 1.0}
    assert "- norm:" in (out / "report.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_registries_refuse_unknown_names_listing_the_valid_ones():
    from valleys.errors import InputError

    with pytest.raises(
        InputError, match="unknown study 'nope'; valid studies: plane, path, rays, landscape, sharpness"
    ):
        STUDIES.get("nope")
    with pytest.raises(InputError, match="unknown method 'nope'; valid methods: sgd, swa"):
        METHODS.get("nope")


def test_a_method_may_not_redefine_another_methods_setting():
    @dataclass
    class Clash:
        rank: int = setting(3, "clashes with SWAG's rank", check="positive")

    class ClashMethod(WarmupSGD):
        name = "clash"
        settings = (Clash,)

    before = [f.name for f in dataclasses.fields(TrainConfig)]
    with pytest.raises(ValueError, match="setting 'rank' of Clash is already defined by RankSettings"):
        register_method(ClashMethod())
    assert "clash" not in METHODS and [f.name for f in dataclasses.fields(TrainConfig)] == before
