"""Every method end to end through the run layer, on MNIST-1D with a tiny budget."""

import json

import pytest

from valleys.app.config import TrainConfig
from valleys.app.evaluate import evaluate_run
from valleys.app.train import train_run
from valleys.core.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # the module fixture trains six runs (~22 s)

FAST = dict(model="mlp", epochs=6, samples=4, members=2, rank=5, checkpoint_every=3)


@pytest.fixture(scope="module")
def ood_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("sgd", "swag", "swag-diag", "fge", "ensemble", "multiswag"):
        out[method] = (
            root / method,
            train_run(TrainConfig(method=method, ood_split=True, **FAST), root / method, progress=False),
        )
    return out


@pytest.mark.parametrize("method", ["sgd", "swag", "swag-diag", "fge", "ensemble", "multiswag"])
def test_each_method_writes_results_with_test_metrics_and_ood(ood_runs, method):
    run_dir, res = ood_runs[method]
    assert res["method"] == method
    assert set(res["metrics"]["test"]) >= {"accuracy", "nll", "ece", "brier"}
    assert 0.0 <= res["ood_auroc"] <= 1.0
    expected = {"sgd": 1, "swag": 4, "swag-diag": 4, "fge": 1, "ensemble": 2, "multiswag": 8}[method]
    assert res["num_samples"] == expected
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == res["metrics"]


def test_reevaluation_is_reproducible_and_views(ood_runs):
    run_dir, res = ood_runs["swag"]
    again = evaluate_run(run_dir)
    assert again["metrics"]["test"] == pytest.approx(res["metrics"]["test"])  # same seeded draws
    swa = evaluate_run(run_dir, as_method="swa", temperature_scaling=True)
    assert swa["num_samples"] == 1 and swa["temperature"] > 0
    assert (run_dir / "evaluation-swa.json").is_file()
    with pytest.raises(ValueError, match="cannot be evaluated as fge"):
        evaluate_run(run_dir, as_method="fge")
    assert evaluate_run(run_dir, samples=2)["num_samples"] == 2


def test_fge_snapshots_and_members(ood_runs):
    run_dir, res = ood_runs["fge"]
    # 6 epochs, cycle 2: fge_start = 6 - max(1, round(0.2 * 6 / 2)) * 2 = 4, one cycle, one snapshot
    assert res["num_samples"] == 1 and len(res["member_test_accuracy"]) == 1
    _, ens = ood_runs["ensemble"]
    assert len(ens["member_test_accuracy"]) == 2


def test_ensemble_member_of_another_architecture_is_refused(ood_runs, tmp_path):
    import shutil

    import torch

    from valleys.core.checkpoint import CheckpointError, model_signature

    src, _ = ood_runs["ensemble"]
    run = tmp_path / "ens"
    shutil.copytree(src, run)
    other = torch.nn.Linear(40, 5)
    save_checkpoint(
        run / "member-1" / "model.safetensors",
        {"model": other.state_dict()},
        {"kind": "model", "signature": model_signature(other)},
    )
    with pytest.raises(CheckpointError, match="ensemble member 1 is from another architecture"):
        evaluate_run(run)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(method="fge", cycle=3), "even number"),
        (dict(method="fge", epochs=3, cycle=4), "--epochs must be at least 5"),
        (dict(method="swag", epochs=6, swa_start=5), "at least 2 collected epochs"),
        (dict(method="swag", rank=0), "rank"),
        (dict(method="swag", samples=0), "samples"),
    ],
)
def test_bad_method_settings_fail_before_work(kw, msg, tmp_path):
    with pytest.raises(ValueError, match=msg):
        train_run(TrainConfig(**{**FAST, **kw}), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_ood_requested_for_a_run_without_the_split(tmp_path):
    run = tmp_path / "plain"
    train_run(TrainConfig(method="sgd", **{**FAST, "epochs": 2}), run, progress=False)
    with pytest.raises(ValueError, match="--ood-split"):
        evaluate_run(run, ood=True)
