"""The method registry: settings, schedules (the same values as the string chain it replaced), callbacks,
the CLI's choices and help."""

import argparse

import pytest

from valleys.app.cli import _parser, main
from valleys.app.config import TrainConfig
from valleys.app.evaluate import views
from valleys.app.registry import METHODS as REGISTRY
from valleys.app.registry import get_method, method_help, methods_using, optional_settings
from valleys.training.callbacks import FGECallback, SWACallback, TrajectoryCallback
from valleys.training.schedules import Piecewise, SWASchedule, TriangularCyclic


def _old_build_schedule(
    method, *, lr, epochs, swa_start=None, swa_lr=None, fge_start=None, lr_1=None, lr_2=None, cycle=None
):  # schedules.build_schedule before the registry
    if method == "sgd":
        return SWASchedule(lr, swa_start=epochs, swa_lr=0.01 * lr)
    if method == "fge":
        return Piecewise(
            SWASchedule(lr, swa_start=fge_start, swa_lr=lr_1),
            fge_start,
            TriangularCyclic(lr_1, lr_2, cycle, offset=fge_start),
        )
    return SWASchedule(lr, swa_start=swa_start, swa_lr=swa_lr)


def _swa_formula(lr, start, swa_lr, e):  # Izmailov et al. 2018, per epoch
    t = int(e) / start
    r = swa_lr / lr
    return lr if t <= 0.5 else lr * (1 - (1 - r) * (t - 0.5) / 0.4) if t < 0.9 else swa_lr


EPOCHS = [0, 0.5, 1, 7.3, 10, 19.9, 24, 30, 36.25, 40, 44.9, 45, 47.5, 49, 50]


@pytest.mark.parametrize("method", list(REGISTRY))
@pytest.mark.parametrize(
    "kw", [dict(), dict(swa_start=30, swa_lr=0.02), dict(cycle=4, lr_1=0.03, lr_2=0.001), dict(fge_start=30, cycle=6)]
)
def test_each_method_builds_the_schedule_it_built_before(method, kw):
    m = get_method(method)
    usable = {k: v for k, v in kw.items() if method in methods_using(k) or k == "cycle"}
    cfg = TrainConfig(method=method, epochs=50, lr=0.1, **usable).resolved()
    old_method = {"ensemble": "sgd", "multiswag": "swag"}.get(method, method)
    old = _old_build_schedule(
        old_method,
        lr=cfg.lr,
        epochs=cfg.epochs,
        swa_start=cfg.swa_start,
        swa_lr=cfg.swa_lr,
        fge_start=cfg.fge_start,
        lr_1=cfg.lr_1,
        lr_2=cfg.lr_2,
        cycle=cfg.cycle,
    )
    new = m.schedule(cfg)
    assert [new(e) for e in EPOCHS] == [old(e) for e in EPOCHS]
    if old_method == "sgd":
        assert [new(e) for e in EPOCHS] == pytest.approx([_swa_formula(0.1, 50, 0.001, e) for e in EPOCHS])
    elif old_method != "fge":
        assert [new(e) for e in EPOCHS] == pytest.approx(
            [_swa_formula(0.1, cfg.swa_start, cfg.swa_lr, e) for e in EPOCHS]
        )
    else:  # triangular cycles after fge_start: lr_1 at the cycle's start, lr_2 at its middle
        assert new(cfg.fge_start) == pytest.approx(cfg.lr_1)
        assert new(cfg.fge_start + cfg.cycle / 2) == pytest.approx(cfg.lr_2)
        assert new(cfg.fge_start - 1) == pytest.approx(_swa_formula(0.1, cfg.fge_start, cfg.lr_1, cfg.fge_start - 1))


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(method="fge", cycle=3), "even number"),
        (dict(method="fge", epochs=3, cycle=4), "--epochs must be at least 5"),
        (dict(method="fge", fge_start=0), "fge-start must be in"),
        (dict(method="swag", epochs=6, swa_start=5), "at least 2 collected epochs"),
        (dict(method="multiswag", epochs=6, swa_start=5), "at least 2 collected epochs"),
        (dict(method="swa", epochs=6, swa_start=6), "swa-start must be at least 1"),
        (dict(method="swag-diag", epochs=6, swa_start=0), "swa-start must be at least 1"),
        (dict(method="bayes"), "unknown method 'bayes'"),
    ],
)
def test_methods_refuse_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw).resolved()


def test_methods_fill_their_defaults():
    assert TrainConfig(method="swag-diag", epochs=6, swa_start=5).resolved().swa_start == 5  # one epoch is enough
    swa = TrainConfig(method="swa", epochs=10).resolved()
    assert (swa.swa_start, swa.swa_lr, swa.fge_start, swa.lr_1) == (5, 0.1, None, None)
    fge = TrainConfig(method="fge", epochs=10, lr=0.2).resolved()
    assert (fge.fge_start, fge.lr_1, fge.lr_2, fge.swa_start) == (8, 0.1, 0.001, None)
    sgd = TrainConfig(method="sgd", epochs=10).resolved()
    assert (sgd.swa_start, sgd.fge_start) == (None, None)


def test_callbacks_and_members():
    import torch

    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(method="swag", epochs=10).resolved()
    cbs = get_method("swag").callbacks(cfg, model, bn_loader=[], eval_loaders={})
    assert [type(c) for c in cbs] == [SWACallback, TrajectoryCallback] and cbs[0].schedule.start == 5
    fge = TrainConfig(method="fge", epochs=10).resolved()
    (cb,) = get_method("fge").callbacks(fge, model, bn_loader=[], eval_loaders={})
    assert isinstance(cb, FGECallback) and (cb.start, cb.cycle) == (8, 2)
    assert get_method("sgd").callbacks(TrainConfig(method="sgd").resolved(), model, bn_loader=[], eval_loaders={}) == []
    assert {n: m.member for n, m in REGISTRY.items() if m.member} == {"ensemble": "sgd", "multiswag": "swag"}
    assert views() == {"swag": ("swa", "swag-diag"), "swag-diag": ("swa",)}


def test_cli_choices_and_help_come_from_the_registry(capsys):
    assert list(method_help()) == list(REGISTRY)
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    method = next(a for a in sub.choices["train"]._actions if a.dest == "method")
    assert list(method.choices) == list(REGISTRY)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for help_text in method_help().values():
        assert help_text.split(";")[0][:30] in " ".join(text.split())


def test_help_has_no_doubled_or_wrong_defaults(capsys):
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert text.count("(default: epochs // 2)") <= 1
        assert "%(default)" not in text and "default: the first endpoint's) (default" not in text, name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "heteroscedastic=True" in text
    assert "fge: cycle's highest LR (default: lr / 2)" in text
    assert "swa, swag, swag-diag, multiswag: SWA learning rate" in text


def test_cli_refuses_settings_of_other_methods(capsys):
    assert set(optional_settings()) == {"swa_start", "swa_lr", "lr_1", "lr_2", "fge_start"}
    assert main(["train", "--method", "fge", "--swa-lr", "0.1"]) == 2
    assert "--swa-lr only apply to --method swa, swag, swag-diag, multiswag" in capsys.readouterr().err
    assert main(["train", "--method", "swag", "--lr-1", "0.1", "--fge-start", "3"]) == 2
    assert "--lr-1 and --fge-start only apply to --method fge" in capsys.readouterr().err
