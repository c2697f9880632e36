import json
import shutil
from pathlib import Path

import pytest

from valleys import __version__
from valleys.app.cli import main

FAST = ["--epochs", "3", "--model", "mlp", "--no-progress", "--checkpoint-every", "1"]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--swa-start" in out and "(default: 0.1)" in out


@pytest.mark.slow
def test_train_evaluate_and_refuse_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--method", "swa", "--swa-start", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "swa" and set(res["metrics"]["test"]) >= {"accuracy", "nll", "ece", "brier"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["evaluate", str(out)]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["metrics"]["test"]["accuracy"] == pytest.approx(res["metrics"]["test"]["accuracy"])
    mtime = (out / "results.json").stat().st_mtime_ns
    assert main(["train", *FAST, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "results.json").stat().st_mtime_ns == mtime
    assert main(["train", *FAST, "--method", "sgd", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.slow
def test_resume_continues_a_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--method", "sgd", "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(["train", *FAST, "--method", "sgd", "--out", str(out), "--resume"]) == 0  # already complete
    assert json.loads((out / "results.json").read_text())["metrics"] == first["metrics"]
    assert main(["train", *FAST[:-2], "--method", "sgd", "--out", str(out), "--resume", "--lr", "0.2"]) == 2


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--swa-start", "5"], "swa-start must be at least 1 and below epochs (3)"),
        (["--method", "sgd", "--swa-lr", "0.1"], "only apply to --method swa"),
    ],
)
def test_bad_values_fail_before_any_file_is_written(tmp_path, capsys, args, msg):
    out = tmp_path / "run"
    assert main(["train", *FAST, *args, "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--dataset", "cifar"], "invalid choice: 'cifar' (choose from"),
        (["--model", "bert"], "invalid choice: 'bert'"),
        (["--method", "adam"], "invalid choice: 'adam'"),
        (["--lr", "0"], "--lr: must be finite and positive, got 0"),
        (["--swa-lr", "inf"], "--swa-lr: must be finite and positive, got inf"),
        (["--epochs", "-1"], "--epochs: must be a positive integer, got -1"),
    ],
)
def test_unknown_names_and_non_positive_values_are_usage_errors(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *args])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_data_errors_leave_an_existing_run_intact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--method", "sgd", "--out", str(out)]) == 0
    before = (out / "results.json").read_text()
    assert (
        main(
            [
                "train",
                "--dataset",
                "uci",
                "--data-root",
                str(tmp_path / "nope"),
                "--out",
                str(out),
                "--overwrite",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "lacks data.txt" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before
    with pytest.raises(SystemExit) as e:  # a usage error: argparse refuses the flag
        main(["train", *FAST, "--momentum", "nan", "--out", str(out), "--overwrite"])
    assert e.value.code == 2
    assert main(["train", *FAST, "--device", "tpu:x", "--out", str(out), "--overwrite"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


@pytest.mark.slow
def test_train_val_fraction_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, "--val-fraction", "1.5", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2
    assert "--val-fraction: must be a finite number in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["train", *FAST, "--method", "sgd", "--val-fraction", "0.25", "--out", str(tmp_path / "r")]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["val_fraction"] == 0.25


def test_geometry_needs_a_demo_folder(tmp_path, capsys):
    (tmp_path / "sgd-seed0").mkdir()  # no swag-seed0 beside it
    assert main(["geometry", str(tmp_path)]) == 2
    assert "needs run folders sgd-seed<s> and swag-seed<s>" in capsys.readouterr().err
    assert not (tmp_path / "geometry").exists()


def test_evaluate_missing_or_foreign_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_writes_the_run_folder(tmp_path):
    import dataclasses

    from valleys.app.demo import DEMO_CONFIG, DemoSettings, run_demo

    out = tmp_path / "demo"
    base = dataclasses.replace(DEMO_CONFIG, model="mlp", epochs=5, swa_start=2)
    settings = DemoSettings(
        seeds=[0],
        base=base,
        curve={"epochs": 1, "points": 3},
        subspace={"samples": 3, "burn_in": 1, "grid": 3, "toy": {"epochs": 10}},
        semisup={"epochs": 4, "cycle": 1, "fast_swa_every": 1, "consistency": ["none", "mean-teacher"]},
        budgets=[1, 1.5],
    )
    res = run_demo(out, settings, progress=False, log=lambda *a: None)
    semi = res["semisup"]
    assert set(semi["summary"]) == {"none", "mean-teacher"} and "teacher" in semi["summary"]["mean-teacher"]
    assert semi["settings"]["model"] == "mlp" and semi["settings"]["seeds"] == [0]
    assert (out / "semisup" / "figures" / "travel.png").is_file() and (out / "semisup" / "report.md").is_file()
    assert [m["method"] for m in res["methods"]] == ["SGD", "SWA", "SWA-Temp", "SWAG-diag", "SWAG", "FGE"]
    sec = res["subspace"]
    assert list(sec["rows"]) == ["PCA + ESS", "random + ESS"] and sec["rank"] == 2  # 3 deviations: 2 directions
    for label, c in sec["chosen"].items():
        assert (
            c["temperature"] in sec["candidates"]["temperature"]
            and c["prior_scale"] in sec["candidates"]["prior_scale"]
        )
        # the choice is the candidate with the lowest validation NLL (seed 0's run folder keeps the candidates)
        sub = json.loads((out / sec["per_seed"][label][0]["folder"] / "results.json").read_text())
        best = min(sub["selection"]["candidates"], key=lambda x: x["val"]["nll"])
        assert (best["temperature"], best["prior_scale"]) == (c["temperature"], c["prior_scale"])
    assert (out / "subspace" / "pca-ess-seed0" / "figures" / "posterior.png").is_file()
    assert (out / "subspace" / "toy1d" / "figures" / "toy1d.png").is_file()
    for m in res["methods"]:
        assert set(m["metrics"]["test"]) >= {"accuracy", "nll", "ece", "brier"}
    assert {m["method"] for m in res["methods"] if "ood_auroc" in m} == {"SGD", "SWA", "SWAG-diag", "SWAG"}
    for f in ("config.json", "results.json", "report.md", "figures/test_error_vs_epoch.png", "figures/reliability.png"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "| SWAG |" in report and "OOD AUROC" in report and "| Bezier curve |" in report
    assert (
        "## Subspace inference" in report and "| PCA + ESS |" in report and "subspace/toy1d/figures/toy1d.png" in report
    )
    assert "## Semi-supervised learning" in report and "| mean-teacher | fast-SWA |" in report
    assert "## The talk's claims on this run" in report and "| SWA has lower test error than SGD" in report
    assert list(res["budgets"]["epochs"].items()) == [("x1", 5), ("x1.5", 8)] and set(res["budgets"]["rows"]) == {
        "SGD x1",
        "SWA x1",
        "SWAG x1",
        "SWA x1.5",
        "SWAG x1.5",
    }
    assert "## The budget protocol" in report and (out / "swag-budget1.5-seed0" / "results.json").is_file()
    assert "SWA at 1.5 budgets has lower test error than SGD at 1" in {c["claim"] for c in res["claims"]}
    assert {c["claim"] for c in res["claims"]} >= {
        "SWAG has lower test NLL than SWA",
        "SWA is flatter than SGD",
        "the curve's barrier is below the straight segment's",
    }
    assert "semisup/figures/travel.png" in report and "semisup/figures/error-mean-teacher.png" in report
    # the full comparison on the finished folder: four subspace rows beside the demo's own SGD, SWA and SWAG
    assert main(["subspace-table", str(out), "--quick", "--no-progress"]) == 0
    table = json.loads((out / "subspace-table" / "summary.json").read_text())
    assert list(table["rows"]) == ["PCA + ESS", "PCA + VI", "random + ESS", "curve + ESS"]
    sgd = next(m for m in res["methods"] if m["method"] == "SGD")
    assert table["baselines"]["SGD"]["nll"]["mean"] == pytest.approx(sgd["metrics"]["test"]["nll"], rel=1e-12)
    assert "| curve + ESS |" in (out / "subspace-table" / "report.md").read_text()
    assert main(["subspace-table", str(out), "--quick", "--no-progress"]) == 2  # exists: refused
    geo = res["geometry"]
    assert {"eig_SWA", "eig_SGD", "width_SWA"} <= set(geo["per_seed"][0])
    line = json.loads((out / "geometry" / "path" / "results.json").read_text())
    d, loss = line["distance"], line["curves"]["train"]["loss"]
    assert d[0] == pytest.approx(-0.5 * line["length"]) and d[-1] == pytest.approx(1.5 * line["length"])
    i_sgd = min(range(len(d)), key=lambda i: abs(d[i] - line["length"]))
    assert geo["per_seed"][0]["rise_out_SGD"] == pytest.approx(loss[-1] - loss[i_sgd])
    assert geo["per_seed"][0]["rise_out_SWA"] == pytest.approx(loss[0] - loss[d.index(min(d, key=abs))])
    assert (out / "geometry" / "plane" / "results.json").is_file() and "| top Hessian eigenvalue |" in report
    mc = res["mode_connectivity"]
    assert len(mc["pairs"]) == 1 and (out / mc["pairs"][0]["folder"] / "figures" / "path.png").is_file()
    # the geometry section again, from the command line, on the finished folder: same Hessian numbers
    assert main(["geometry", str(out), "--quick", "--no-progress"]) == 0
    summary = json.loads((out / "geometry" / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["quick"]
    for k in ("eig_SWA", "eig_SGD", "distance"):
        assert summary["per_seed"][0][k] == pytest.approx(geo["per_seed"][0][k], rel=1e-6), k
    assert "| top Hessian eigenvalue |" in (out / "geometry" / "report.md").read_text()
    (out / "swag-seed0" / "trajectory.safetensors").unlink()  # a run folder from an older valleys
    shutil.rmtree(out / "geometry")
    assert main(["geometry", str(out), "--quick", "--no-progress"]) == 0
    report = (out / "geometry" / "report.md").read_text()
    assert "no trajectory plane" in report and "trajectory plane, test error" not in report
    assert "| valley width |" in report and (out / "geometry" / "rays" / "figures" / "rays.png").is_file()
    with pytest.raises(FileExistsError):
        run_demo(out, dataclasses.replace(settings, subspace=False), progress=False, log=lambda *a: None)
    _full_disk_keeps_the_previous_sections(out)


def _full_disk_keeps_the_previous_sections(out):
    """A full disk (ENOSPC from the atomic writer) while geometry or subspace-table replace their section with
    --overwrite: one line naming the file, and the previous section back as it was, byte for byte."""
    import errno
    from unittest import mock

    import valleys.core.checkpoint as ck
    from cli_harness import digest

    real = ck._publish

    def publish(tmp, path):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    for argv, folder in (
        (["geometry", str(out), "--quick", "--no-progress", "--overwrite"], out / "geometry"),
        (["subspace-table", str(out), "--quick", "--no-progress", "--overwrite"], out / "subspace-table"),
    ):
        before = digest(folder)
        with mock.patch.object(ck, "_publish", publish):
            assert main(argv) == 2
        assert digest(folder) == before, argv[0]
        assert not list(folder.rglob(".*.tmp")) and not (folder / ".valleys-previous").exists()
