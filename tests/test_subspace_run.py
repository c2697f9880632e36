"""``valleys subspace`` end to end on tiny MNIST-1D runs: PCA, random and curve subspaces; ESS and VI."""

import json
import math

import pytest

from valleys.app.config import TrainConfig
from valleys.app.connect import ConnectConfig, connect_runs
from valleys.app.subspace import SubspaceConfig, subspace_run
from valleys.app.train import train_run


@pytest.fixture(scope="module")
def swag_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sub")
    for seed in (0, 1):
        train_run(
            TrainConfig(method="swag", model="mlp", epochs=5, swa_start=1, rank=4, samples=2, seed=seed),
            root / f"swag{seed}",
            progress=False,
        )
    connect_runs(
        ConnectConfig(str(root / "swag0"), str(root / "swag1"), epochs=1, points=3), root / "curve", progress=False
    )
    return root


@pytest.mark.slow
def test_pca_subspace_with_ess_writes_a_run_folder(swag_runs, tmp_path):
    cfg = SubspaceConfig(
        str(swag_runs / "swag0"),
        space="pca",
        rank=2,
        inference="ess",
        samples=6,
        burn_in=2,
        temperature=20.0,
        prior_scale=2.0,
        grid=5,
    )
    res = subspace_run(cfg, tmp_path / "pca", progress=False)
    assert res["rank"] == 2 and res["num_samples"] == 6 and res["space"] == "pca"
    assert res["subspace"]["method"] == "exact" and len(res["subspace"]["singular_values"]) == 2
    for split in ("val", "test"):
        assert 0 < res["metrics"][split]["accuracy"] <= 1 and math.isfinite(res["metrics"][split]["nll"])
    assert res["sampler"]["diagnostics"]["likelihood_evaluations"] >= 9
    assert len(res["density"]["log_posterior"]) == 5
    saved = json.loads((tmp_path / "pca" / "results.json").read_text())
    assert saved["metrics"]["test"]["nll"] == pytest.approx(res["metrics"]["test"]["nll"])
    assert (tmp_path / "pca" / "report.md").is_file() and (tmp_path / "pca" / "figures" / "posterior.png").is_file()
    from valleys.core.checkpoint import load_checkpoint

    state, header = load_checkpoint(tmp_path / "pca" / "subspace.safetensors")
    assert state["samples"].shape == (6, 2) and state["basis"].shape[0] == 2 and header["kind"] == "subspace"
    with pytest.raises(ValueError, match="larger than the 4 deviations"):
        subspace_run(SubspaceConfig(str(swag_runs / "swag0"), rank=5), tmp_path / "big", progress=False)
    assert not (tmp_path / "big").exists()  # refused before anything was written


@pytest.mark.slow
def test_random_subspace_with_vi_and_curve_subspace_with_ess(swag_runs, tmp_path):
    res = subspace_run(
        SubspaceConfig(
            str(swag_runs / "swag0"), space="random", rank=3, inference="vi", samples=5, vi_steps=20, temperature=50.0
        ),
        tmp_path / "rnd",
        progress=False,
    )
    assert res["sampler"]["method"] == "vi" and len(res["sampler"]["diagnostics"]["mean"]) == 3
    assert math.isfinite(res["metrics"]["test"]["nll"])
    cur = subspace_run(
        SubspaceConfig(
            str(swag_runs / "swag0"),
            space="curve",
            rank=2,
            curve=str(swag_runs / "curve"),
            samples=4,
            burn_in=1,
            temperature=20.0,
        ),
        tmp_path / "cur",
        progress=False,
    )
    assert cur["subspace"]["kind"] == "curve" and math.isfinite(cur["metrics"]["test"]["nll"])


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"space": "diagonal"}, "--space"),
        ({"inference": "hmc"}, "--inference"),
        ({"rank": 0}, "--rank"),
        ({"samples": 0}, "--samples"),
        ({"temperature": 0.0}, "--temperature"),
        ({"temperature": math.nan}, "--temperature"),
        ({"prior_scale": -1.0}, "--prior-scale"),
        ({"space": "curve"}, "--curve"),
        ({"curve": "x"}, "--space curve"),
        ({"space": "curve", "curve": "x", "rank": 3}, "plane"),
        ({"bn": "recompute", "inference": "vi"}, "--bn shift"),
        ({"grid": 1}, "--grid"),
        ({"burn_in": -1}, "--burn-in"),
    ],
)
def test_subspace_config_refusals(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SubspaceConfig("run", **kw).check()


@pytest.mark.slow
def test_subspace_command_line(swag_runs, tmp_path, capsys):
    from valleys.app.cli import main

    run = str(swag_runs / "swag1")
    assert (
        main(
            [
                "subspace",
                run,
                "--rank",
                "2",
                "--samples",
                "3",
                "--burn-in",
                "1",
                "--grid",
                "0",
                "--temperature",
                "30",
                "--out",
                str(tmp_path / "s"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "subspace BMA" in capsys.readouterr().out
    assert main(["subspace", run, "--rank", "9", "--out", str(tmp_path / "t"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rank 9" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_pca_subspace_with_a_flow(swag_runs, tmp_path):
    res = subspace_run(
        SubspaceConfig(
            str(swag_runs / "swag0"),
            space="pca",
            rank=2,
            inference="flow",
            samples=5,
            vi_steps=15,
            flow_layers=2,
            temperature=20.0,
        ),
        tmp_path / "flow",
        progress=False,
    )
    assert res["sampler"]["method"] == "flow" and res["sampler"]["diagnostics"]["layers"] == 2
    assert res["num_samples"] == 5 and math.isfinite(res["metrics"]["test"]["nll"])
    with pytest.raises(ValueError, match="--flow-layers"):
        subspace_run(
            SubspaceConfig(str(swag_runs / "swag0"), inference="flow", flow_layers=-1), tmp_path / "bad", progress=False
        )
