"""``valleys regression``: the UCI protocol over splits (SGD, SWA, SWAG, subspace inference) and the 1-D toy."""

import json
import math

import numpy as np
import pytest

from cli_harness import refused, run
from valleys.app.evaluate import evaluate_run
from valleys.app.regression import RegressionProtocol, regression_protocol, summarise

TINY = dict(splits=2, epochs=6, samples=4, burn_in=2, vi_steps=20, swag_rank=4, rank=2, prior_scale=[1.0, 3.0])


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "uci"
    cfg = RegressionProtocol(datasets=["toy1d", "diabetes"], inference=["ess", "vi"], spaces=["pca", "random"], **TINY)
    return cfg, out, regression_protocol(cfg, out, progress=False)


@pytest.mark.slow
def test_protocol_tables_are_the_mean_and_standard_error_over_splits(protocol):
    cfg, out, res = protocol
    assert res["methods"] == ["sgd", "swa", "swag", "pca-ess", "pca-vi", "random-ess", "random-vi"]
    saved = json.loads((out / "results.json").read_text())
    for dataset in ("toy1d", "diabetes"):
        d = saved["datasets"][dataset]
        assert len(d["splits"]) == 2
        for m in res["methods"]:
            for k in ("rmse", "nll", "coverage_95"):
                v = np.array([s[m]["test"][k] for s in d["splits"]])
                assert d["summary"][m][k]["mean"] == pytest.approx(v.mean(), rel=1e-12)
                assert d["summary"][m][k]["se"] == pytest.approx(v.std(ddof=1) / math.sqrt(2), rel=1e-9)
            assert 0 <= d["summary"][m]["coverage_95"]["mean"] <= 1
        # the chosen prior scale is one of the candidates, and it has the lowest validation NLL among them
        sub = json.loads((out / dataset / "split-1" / "pca-ess" / "results.json").read_text())
        cands = sub["selection"]["candidates"]
        assert {c["prior_scale"] for c in cands} == {1.0, 3.0}
        best = min(cands, key=lambda c: c["val"]["nll"])
        assert sub["posterior"]["prior_scale"] == best["prior_scale"]
        assert sub["metrics"]["val"]["nll"] == pytest.approx(best["val"]["nll"])
    report = (out / "report.md").read_text()
    assert "## diabetes" in report and "PCA + ESS" in report and "figures/toy1d.png" in report
    assert (out / "figures" / "toy1d.png").stat().st_size > 10_000


@pytest.mark.slow
def test_subspace_metrics_of_a_regression_run_are_in_target_units(protocol):
    # the PCA subspace's shift is the SWA mean: with no BatchNorm its "shift only" predictive must equal the
    # SWA evaluation of the same SWAG run, which reports in the target's units (diabetes: y_std ~ 77)
    cfg, out, res = protocol
    sub = json.loads((out / "diabetes" / "split-0" / "pca-ess" / "results.json").read_text())
    swa = evaluate_run(out / "diabetes" / "split-0" / "swag", as_method="swa", write=False)
    for k in ("rmse", "nll", "coverage_95"):
        assert sub["shift_metrics"]["test"][k] == pytest.approx(swa["metrics"]["test"][k], rel=1e-5)
    assert sub["shift_metrics"]["test"]["rmse"] > 20  # not standardised units (those would be ~1)


@pytest.mark.slow
def test_resume_reuses_finished_splits_and_refuses_other_settings(protocol, tmp_path):
    cfg, out, res = protocol
    stamp = (out / "diabetes" / "split-1" / "pca-vi" / "results.json").stat().st_mtime_ns
    again = regression_protocol(cfg, out, resume=True, progress=False)
    assert (out / "diabetes" / "split-1" / "pca-vi" / "results.json").stat().st_mtime_ns == stamp
    assert again["datasets"]["diabetes"]["summary"] == res["datasets"]["diabetes"]["summary"]
    other = RegressionProtocol(**{**cfg.__dict__, "epochs": 7})
    with pytest.raises(ValueError, match="epochs"):
        regression_protocol(other, out, resume=True, progress=False)
    with pytest.raises(FileExistsError):
        regression_protocol(cfg, out, progress=False)


def test_summarise_uses_the_sample_standard_error():
    rows = [{"a": {"test": {"rmse": r, "nll": n, "coverage_95": c}}} for r, n, c in ((1.0, 2.0, 0.9), (3.0, 4.0, 1.0))]
    s = summarise(rows, ["a", "missing"])
    assert set(s) == {"a"}
    assert s["a"]["rmse"] == {"mean": 2.0, "se": pytest.approx(1.0), "n": 2}  # std (ddof 1) sqrt(2), / sqrt(2)


@pytest.mark.slow
def test_cli_runs_the_protocol(tmp_path, capsys):
    res = run(
        [
            "regression",
            "--datasets",
            "diabetes",
            "--splits",
            "1",
            "--epochs",
            "6",
            "--samples",
            "3",
            "--burn-in",
            "1",
            "--swag-rank",
            "3",
            "--rank",
            "2",
            "--inference",
            "ess",
            "--prior-scale",
            "2",
            "--out",
            tmp_path / "r",
            "--no-progress",
        ],
        capsys,
    )
    assert res.code == 0, res.err
    assert "pca-ess" in res.out and (tmp_path / "r" / "report.md").is_file()


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--datasets", "nope"], "--datasets"),
        (["--datasets", "uci"], "--data-root"),
        (["--datasets", "diabetes", "diabetes"], "twice"),
        (["--rank", "30"], "--rank"),
        (["--swag-rank", "1"], "--swag-rank"),
        (["--splits", "0"], "--splits"),
        (["--prior-scale", "0"], "--prior-scale"),
        (["--temperature", "nan"], "--temperature"),
        (["--epochs", "4", "--rank", "2"], "--epochs"),
        (["--overwrite", "--resume"], "--resume"),
    ],
)
def test_cli_refuses_bad_settings_before_any_work(argv, names, tmp_path, capsys):
    refused(["regression", *argv, "--out", tmp_path / "r"], capsys, names=names)
    assert not (tmp_path / "r").exists()


def test_resume_needs_a_protocol_folder(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    refused(
        ["regression", "--resume", "--out", tmp_path / "r"], capsys, names="no config.json", untouched=[tmp_path / "r"]
    )


@pytest.mark.slow
def test_worker_processes_give_the_same_numbers_as_one_process(tmp_path):
    # workers run one torch thread each; with this process on one thread too, the results are bit-identical
    import torch

    cfg = RegressionProtocol(datasets=["diabetes"], inference=["ess"], **{**TINY, "prior_scale": [2.0]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = regression_protocol(cfg, tmp_path / "one", progress=False, jobs=1)
    finally:
        torch.set_num_threads(threads)
    two = regression_protocol(cfg, tmp_path / "two", progress=False, jobs=2)
    assert one["datasets"]["diabetes"]["summary"] == two["datasets"]["diabetes"]["summary"]
    for a, b in zip(one["datasets"]["diabetes"]["splits"], two["datasets"]["diabetes"]["splits"], strict=True):
        assert a["pca-ess"]["test"] == b["pca-ess"]["test"] and a["sgd"]["test"] == b["sgd"]["test"]
