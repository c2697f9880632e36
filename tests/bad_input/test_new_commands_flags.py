"""More refusals of the newer commands (issue 25): every range, choice, combination and folder check of
``subspace`` (with ``--resume``), ``subspace-table``, ``regression``, ``semisup``, ``geometry``, ``demo`` and
``import`` names what is wrong before any work and leaves every folder as it was."""

from __future__ import annotations

import shutil

import pytest

from cli_harness import refused


def _subspace(r, tmp) -> list[tuple[list, str]]:
    s = ["subspace", r["swag"], "--out", f"{tmp}/s"]
    return [
        ([*s, "--rank", "0"], "--rank"),
        ([*s, "--samples", "0"], "--samples"),
        ([*s, "--thin", "0"], "--thin"),
        ([*s, "--burn-in", "-1"], "--burn-in"),
        ([*s, "--temperature", "0"], "--temperature"),
        ([*s, "--temperature", "nan"], "--temperature"),
        ([*s, "--prior-scale", "-1"], "--prior-scale"),
        ([*s, "--vi-lr", "0"], "--vi-lr"),
        ([*s, "--vi-steps", "0"], "--vi-steps"),
        ([*s, "--flow-layers", "-1"], "--flow-layers"),
        ([*s, "--warmup", "-1"], "--warmup"),
        ([*s, "--chains", "0"], "--chains"),
        ([*s, "--grid", "1"], "--grid"),
        ([*s, "--grid", "-2"], "--grid"),
        ([*s, "--space", "curve"], "--curve"),
        ([*s, "--curve", r["curve"]], "--space curve"),
        ([*s, "--space", "curve", "--curve", r["curve"], "--rank", "3"], "--rank"),
        ([*s, "--bn", "recompute", "--inference", "vi"], "--bn shift"),
        ([*s, "--space", "svd"], "--space"),
        ([*s, "--inference", "hmc"], "--inference"),
        ([*s, "--checkpoint-every", "0"], "--checkpoint-every"),
        ([*s, "--rank", "9"], "--rank"),
        ([*s, "--resume"], "no subspace run"),
        ([*s, "--resume", "--overwrite"], "contradict"),
        (["subspace", f"{tmp}/missing", "--out", f"{tmp}/s"], "missing"),
        (["subspace", r["sgd"], "--out", f"{tmp}/s"], "swag"),
        (["subspace", r["sgd"], "--space", "curve", "--rank", "2", "--curve", r["swag"], "--out", f"{tmp}/s"], "curve"),
        # the cases: a curve that does not pass through the run, a diverging VI or flow
        (
            ["subspace", r["swag"], "--space", "curve", "--rank", "2", "--curve", r["curve"], "--out", f"{tmp}/s"],
            "does not pass through the run",
        ),
        ([*s, "--rank", "1", "--inference", "vi", "--vi-lr", "1e8", "--vi-steps", "50"], "ELBO became"),
        ([*s, "--rank", "1", "--inference", "flow", "--vi-lr", "1e8", "--vi-steps", "50"], "ELBO became"),
    ]


def _others(r, tmp) -> list[tuple[list, str]]:
    reg = ["regression", "--datasets", "diabetes", "--out", f"{tmp}/r"]
    semi = ["semisup", "--model", "mlp", "--out", f"{tmp}/m"]
    return [
        (["subspace-table", f"{tmp}/missing"], "missing"),
        (["subspace-table", f"{tmp}/empty"], "swag-seed"),
        (["subspace-table", f"{tmp}/empty", "--jobs", "0"], "--jobs"),
        (["subspace-table", f"{tmp}/empty", "--seeds", "-1"], "--seeds"),
        ([*reg[:2], "ames", *reg[3:]], "--datasets"),
        ([*reg, "--splits", "0"], "--splits"),
        ([*reg, "--epochs", "0"], "--epochs"),
        ([*reg, "--inference", "hmc"], "--inference"),
        ([*reg, "--temperature", "-1"], "--temperature"),
        ([*reg, "--prior-scale", "0"], "--prior-scale"),
        ([*reg, "--swag-rank", "0"], "--swag-rank"),
        ([*reg, "--samples", "0"], "--samples"),
        ([*reg, "--resume"], "no config.json"),
        ([*reg, "--resume", "--overwrite"], "contradict"),
        ([*reg, "--space", "curve"], "--space"),
        (["regression", "--datasets", "diabetes", "--out", r["sgd"], "--resume"], "made by 'valleys train'"),
        (["semisup", "--model", "mlp", "--out", r["sgd"], "--resume"], "not a"),
        ([*semi, "--labels-per-class", "0"], "--labels-per-class"),
        ([*semi, "--consistency", "vat"], "--consistency"),
        ([*semi, "--seeds", "-1"], "--seeds"),
        ([*semi, "--resume"], "config.json"),
        ([*semi, "--device", "cuda"], "--device"),
        ([*semi, "--batch-size", "0"], "--batch-size"),
        ([*semi, "--epochs", "0"], "--epochs"),
        ([*semi, "--resume", "--overwrite"], "contradict"),
        (["geometry", f"{tmp}/missing"], "missing"),
        (["geometry", f"{tmp}/empty"], "sgd-seed"),
        (["geometry", f"{tmp}/empty", "--seeds", "-3"], "--seeds"),
        (["demo", "--preset", "imagenet", "--out", f"{tmp}/d"], "--preset"),
        (["demo", "--seeds", "-1", "--out", f"{tmp}/d"], "--seeds"),
        (["demo", "--epochs", "0", "--out", f"{tmp}/d"], "--epochs"),
        (["demo", "--out", f"{tmp}/d", "--jobs", "-1"], "--jobs"),
        (["import", f"{tmp}/missing.pt", "--model", "mlp", "--out", f"{tmp}/i"], "missing.pt"),
        (["import", f"{r['sgd']}/model.safetensors", "--model", "cnn1d", "--out", f"{tmp}/i"], "does not fit"),
        (
            ["import", f"{r['sgd']}/model.safetensors", "--model", "mlp", "--posterior", f"{tmp}/no.safetensors"]
            + ["--out", f"{tmp}/i"],
            "no.safetensors",
        ),
    ]


@pytest.fixture
def folders(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    return {k: str(v) for k, v in runs.items()}


SUBSPACE_CASES = len(_subspace({k: "" for k in ("swag", "sgd", "curve")}, ""))
OTHER_CASES = len(_others({k: "" for k in ("swag", "sgd", "curve")}, ""))


@pytest.mark.parametrize("i", range(SUBSPACE_CASES))
def test_subspace_refusals(i, folders, runs, tmp_path, capsys):
    argv, names = _subspace(folders, tmp_path)[i]
    refused([*argv, "--no-progress"], capsys, names=names, untouched=[*runs.values(), tmp_path])


@pytest.mark.parametrize("i", range(OTHER_CASES))
def test_refusals_of_the_other_new_commands(i, folders, runs, tmp_path, capsys):
    argv, names = _others(folders, tmp_path)[i]
    refused(argv, capsys, names=names, untouched=[*runs.values(), tmp_path])


def test_subspace_resume_refuses_changed_settings_and_other_folders(runs, tmp_path, capsys):
    from valleys.app.cli import main

    out = tmp_path / "sub"
    args = ["subspace", str(runs["swag"]), "--rank", "1", "--samples", "2", "--burn-in", "1", "--grid", "0"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 0
    refused(
        [*args, "--samples", "5", "--out", out, "--resume"],
        capsys,
        names=["--samples 5", "config.json: 2"],
        untouched=[out],
    )
    other = tmp_path / "train"
    shutil.copytree(runs["sgd"], other)
    refused([*args, "--out", other, "--resume"], capsys, names="not a subspace run", untouched=[other])
    (out / "checkpoint.safetensors").unlink()
    refused([*args, "--out", out, "--resume"], capsys, names="checkpoint.safetensors", untouched=[out])


def test_an_ess_that_meets_only_nan_says_so():
    """A likelihood that is NaN away from the start (outputs overflowing) is not "too peaked": the message
    says NaN and what to lower."""
    import math

    import torch

    from valleys.errors import SamplerError
    from valleys.methods.samplers import elliptical_slice

    with pytest.raises(SamplerError, match="NaN at .* of its .* proposals.*lower --prior-scale"):
        elliptical_slice(
            lambda z: 0.0 if float(z.abs().max()) == 0 else math.nan,
            torch.zeros(2),
            prior_scale=1.0,
            num_samples=2,
            max_shrinks=5,
            generator=torch.Generator().manual_seed(0),
        )
