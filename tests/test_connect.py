import json

import pytest

from valleys.app.cli import main
from valleys.app.config import TrainConfig
from valleys.app.connect import ConnectConfig, connect_runs, evaluate_curve_dir
from valleys.app.train import train_run
from valleys.core.checkpoint import CheckpointError, save_checkpoint


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ends")
    for seed in (0, 1):
        train_run(TrainConfig(method="sgd", model="mlp", epochs=3, seed=seed), root / f"s{seed}", progress=False)
    train_run(TrainConfig(method="sgd", model="cnn1d", epochs=1), root / "cnn", progress=False)
    return root


@pytest.mark.slow
def test_connect_cli_writes_curve_folder_and_reevaluates(two_runs, tmp_path, capsys):
    out = tmp_path / "curve"
    assert (
        main(
            [
                "connect",
                str(two_runs / "s0"),
                str(two_runs / "s1" / "model.safetensors"),
                "--epochs",
                "2",
                "--points",
                "5",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "max test error: segment" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["curve"]["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # both paths start and end at the same networks
    assert res["curve"]["test_error"][0] == pytest.approx(res["segment"]["test_error"][0])
    assert res["curve"]["test_error"][-1] == pytest.approx(res["segment"]["test_error"][-1])
    for f in ("report.md", "figures/path.png", "curve.safetensors", "metrics.jsonl"):
        assert (out / f).is_file(), f
    assert main(["evaluate", str(out), "--points", "3"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["points"] == 3


@pytest.mark.slow
def test_connect_bad_inputs(two_runs, tmp_path):
    with pytest.raises(ValueError, match="endpoints differ"):
        connect_runs(
            ConnectConfig(str(two_runs / "s0"), str(two_runs / "cnn"), epochs=1, points=3),
            tmp_path / "x",
            progress=False,
        )
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="at least 2 control points"):
        connect_runs(ConnectConfig(str(two_runs / "s0"), str(two_runs / "s1"), bends=1), tmp_path / "y")
    with pytest.raises(ValueError, match="nothing to connect"):  # refused before any training
        connect_runs(
            ConnectConfig(str(two_runs / "s0"), str(two_runs / "s0"), epochs=1, points=3),
            tmp_path / "z",
            progress=False,
        )
    assert not (tmp_path / "z").exists()


@pytest.mark.slow
def test_curve_checkpoint_of_another_model_is_refused(two_runs, tmp_path):
    out = tmp_path / "c"
    connect_runs(ConnectConfig(str(two_runs / "s0"), str(two_runs / "s1"), epochs=1, points=3), out, progress=False)
    import torch

    save_checkpoint(
        out / "curve.safetensors",
        {"control_points": torch.zeros(3, 10)},
        {"kind": "curve", "curve": "bezier", "bends": 3, "signature": [["w", [10]]]},
    )
    with pytest.raises(CheckpointError, match="another architecture"):
        evaluate_curve_dir(out)


@pytest.mark.slow
def test_curve_budget_defaults_to_twice_the_endpoints_epochs_at_their_lr(two_runs, tmp_path):
    out = tmp_path / "d"
    res = connect_runs(ConnectConfig(str(two_runs / "s0"), str(two_runs / "s1"), points=3), out, progress=False)
    base = TrainConfig()
    assert res["training"]["epochs"] == 6 and res["training"]["lr"] == base.lr  # endpoints: 3 epochs
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["epochs"], cfg["lr"]) == (6, base.lr)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_resume_keeps_the_budget_the_curve_started_with(two_runs, tmp_path):
    out = tmp_path / "r"
    runs = (str(two_runs / "s0"), str(two_runs / "s1"))
    connect_runs(ConnectConfig(*runs, epochs=2, lr=0.03, points=3), out, progress=False)
    res = connect_runs(ConnectConfig(*runs, points=3), out, resume=True, progress=False)  # no --epochs/--lr
    assert (res["training"]["epochs"], res["training"]["lr"]) == (2, 0.03)  # not the defaults (6, 0.1)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
