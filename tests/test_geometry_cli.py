"""The geometry commands end to end on tiny MNIST-1D runs (slides 7, 9-15)."""

import json
import math

import pytest

from valleys.app.cli import main
from valleys.app.config import TrainConfig
from valleys.app.train import train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    train_run(TrainConfig(method="swa", model="mlp", epochs=5, swa_start=1), root / "swa", progress=False)
    train_run(TrainConfig(method="sgd", model="mlp", epochs=5, seed=1), root / "sgd", progress=False)
    train_run(TrainConfig(method="sgd", model="mlp", epochs=5, seed=2), root / "sgd2", progress=False)
    return root


@pytest.mark.slow
def test_trajectory_plane_marks_iterates_and_swa(runs, tmp_path):
    out = tmp_path / "plane"
    assert main(["plane", "--trajectory", str(runs / "swa"), "--grid", "5", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["xs"]) == 5 and len(res["grids"]["test"]["error"]) == 5
    names = list(res["points"])
    assert names[0].startswith("W1") and names[-1] == "SWA"
    assert res["points"][names[0]] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert res["units"].startswith("Euclidean")
    assert (out / "figures" / "test_error.png").is_file() and (out / "report.md").is_file()


@pytest.mark.slow
def test_plane_through_three_runs_and_bad_input(runs, tmp_path, capsys):
    args = [str(runs / "swa"), str(runs / "sgd"), str(runs / "sgd2")]
    assert main(["plane", *args, "--grid", "3", "--out", str(tmp_path / "p3"), "--no-progress"]) == 0
    assert main(["plane", str(runs / "swa"), str(runs / "sgd"), "--out", str(tmp_path / "p2")]) == 2
    assert "three networks" in capsys.readouterr().err
    assert main(["plane", *args[:2], args[0], "--out", str(tmp_path / "p4"), "--no-progress"]) == 2
    assert "coincide" in capsys.readouterr().err


@pytest.mark.slow
def test_path_rays_landscape_sharpness(runs, tmp_path):
    assert (
        main(
            [
                "path",
                str(runs / "swa"),
                str(runs / "sgd"),
                "--points",
                "5",
                "--out",
                str(tmp_path / "line"),
                "--no-progress",
            ]
        )
        == 0
    )
    line = json.loads((tmp_path / "line" / "results.json").read_text())
    assert len(line["distance"]) == 5 and line["distance"][0] < 0 < line["length"] < line["distance"][-1]
    assert (
        main(
            [
                "rays",
                str(runs / "swa"),
                str(runs / "sgd"),
                "--rays",
                "2",
                "--steps",
                "4",
                "--max-distance",
                "30",
                "--out",
                str(tmp_path / "rays"),
                "--no-progress",
            ]
        )
        == 0
    )
    rays = json.loads((tmp_path / "rays" / "results.json").read_text())
    swa, sgd = str(runs / "swa"), str(runs / "sgd")
    assert set(rays["centers"]) == {swa, sgd} and len(rays["centers"][swa]["loss"]) == 2
    assert all(math.isinf(w) or w >= 0 for w in rays["centers"][swa]["width"])
    assert (
        main(
            [
                "landscape",
                str(runs / "sgd"),
                "--random",
                "--filter-norm",
                "--grid",
                "3",
                "--out",
                str(tmp_path / "land"),
                "--no-progress",
            ]
        )
        == 0
    )
    land = json.loads((tmp_path / "land" / "results.json").read_text())
    assert "filter-normalised" in land["units"]
    assert main(["sharpness", str(runs / "sgd"), "--k", "2", "--examples", "200", "--out", str(tmp_path / "sh")]) == 0
    sh = json.loads((tmp_path / "sh" / "results.json").read_text())
    assert len(sh["top_eigenvalues"]) == 2 and sh["top_eigenvalues"][0] >= sh["top_eigenvalues"][1]
    assert sh["examples"] == 200 and sh["mode"].startswith("eval")


def test_sharpness_density_blocks_and_hutchpp(runs, tmp_path):
    """``--density``: SLQ nodes and weights (each run's weights sum to 1), a curve integrating to 1, the figure;
    ``--blocks``: one row per layer whose traces add up to the whole trace within the estimates' errors;
    ``--trace-method hutchpp``."""
    out = tmp_path / "sh"
    argv = ["sharpness", str(runs / "sgd"), "--examples", "200", "--density", "--density-steps", "30"]
    argv += ["--density-starts", "2", "--blocks", "--trace-method", "hutchpp", "--trace-samples", "60"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    sh = json.loads((out / "results.json").read_text())
    d = sh["density"]
    assert len(d["nodes"]) == 2 and all(abs(sum(w) - 1) < 1e-9 for w in d["weights"]) and d["num_hvp"] == 60
    step = d["grid"][1] - d["grid"][0]
    assert abs(sum(d["curve"]) * step - 1) < 1e-9
    # the first moment is tr(H) / P: its estimate agrees with the Hutch++ trace within both spreads
    p = sum(b["parameters"] for b in sh["blocks"].values())
    assert sh["trace"]["method"] == "hutchpp"
    assert abs(d["moments"][0] * p - sh["trace"]["trace"]) < 0.5 * abs(sh["trace"]["trace"]) + 1e-6
    total = sum(b["trace"] for b in sh["blocks"].values())
    err = math.sqrt(sum(b["stderr"] ** 2 for b in sh["blocks"].values()) + sh["trace"]["stderr"] ** 2)
    assert abs(total - sh["trace"]["trace"]) < 5 * err + 1e-6, (total, sh["trace"])
    assert (out / "figures" / "density.png").stat().st_size > 5000
    assert "| layer | parameters | top eigenvalue | trace |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_plane_of_a_curve(runs, tmp_path):
    curve = tmp_path / "curve"
    assert (
        main(
            [
                "connect",
                str(runs / "sgd"),
                str(runs / "sgd2"),
                "--epochs",
                "1",
                "--points",
                "3",
                "--out",
                str(curve),
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "cplane"
    assert main(["plane", "--curve", str(curve), "--grid", "4", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["points"])[:3] == ["A", "bend", "B"] and "t=0.5" in res["points"]
    assert res["off_plane_distance"]["t=0.5"] == pytest.approx(0.0, abs=1e-3)  # a Bezier curve lies in its plane


@pytest.mark.slow
def test_pca_plane_of_a_trajectory(runs, tmp_path):
    out = tmp_path / "pca"
    assert (
        main(["plane", "--trajectory", str(runs / "swa"), "--pca", "--grid", "3", "--out", str(out), "--no-progress"])
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert len(res["explained_variance"]) == 2 and 0 < sum(res["explained_variance"]) <= 1 + 1e-9
    assert "SWA" in res["points"] and sum(k.startswith("epoch") for k in res["points"]) == 4
    # the SWA mean is the mean of the iterates: it projects to the origin of the PCA plane
    assert res["points"]["SWA"] == pytest.approx([0.0, 0.0], abs=1e-4)


@pytest.mark.slow
def test_geometry_bad_values_are_usage_errors(runs, tmp_path, capsys):
    for args in (
        ["rays", str(runs / "sgd"), "--steps", "1"],
        ["rays", str(runs / "sgd"), "--rays", "0"],
        ["landscape", str(runs / "sgd"), "--random", "--grid", "1"],
        ["sharpness", str(runs / "sgd"), "--examples", "0"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*args, "--out", str(tmp_path / "x")])
        assert e.value.code == 2
    assert main(["plane", "--trajectory", str(runs / "sgd"), "--out", str(tmp_path / "t")]) == 2
    assert "train it with --method swa or swag" in capsys.readouterr().err


@pytest.mark.slow
def test_connect_keeps_endpoint_statistics_for_bn_keep(tmp_path):
    """Curve training runs on a copy: the 'keep' policy evaluates the endpoints with their own statistics."""
    from valleys.app.connect import ConnectConfig, connect_runs

    for s in (0, 1):
        train_run(
            TrainConfig(dataset="digits", model="cnn", method="sgd", epochs=2, seed=s),
            tmp_path / f"d{s}",
            progress=False,
        )
    res = connect_runs(
        ConnectConfig(str(tmp_path / "d0"), str(tmp_path / "d1"), epochs=1, points=3, bn="keep"),
        tmp_path / "c",
        progress=False,
    )
    own = json.loads((tmp_path / "d0" / "results.json").read_text())["metrics"]["test"]["error"]
    assert res["endpoints"]["a"]["test_error"] == pytest.approx(own, abs=1e-9)
