"""Refusals of the newer commands (subspace, regression, geometry, connect, the studies): a command never
writes into, above or over a folder it reads from, whatever ``--overwrite`` says; flags the older commands
check are checked here too; folders of another kind are named for what they are."""

from __future__ import annotations

import shutil

import pytest

from cli_harness import refused


def _cases(runs, tmp):
    r = {k: str(v) for k, v in runs.items()}
    root = str(runs["sgd"].parent)
    return [
        # the output is an input, inside one, or above one
        (["subspace", r["swag"], "--out", r["swag"], "--overwrite"], "which this command reads"),
        (["subspace", r["swag"], "--out", f"{r['swag']}/sub"], "is inside"),
        (["subspace", r["swag"], "--out", root, "--overwrite"], "is above"),
        (
            ["subspace", r["sgd"], "--space", "curve", "--rank", "2", "--curve", r["curve"], "--out", r["curve"]]
            + ["--overwrite"],
            "which this",
        ),
        (["connect", r["sgd"], r["sgd2"], "--out", r["sgd"], "--overwrite"], "which this command reads"),
        (["connect", r["sgd"], r["sgd2"], "--out", f"{r['sgd2']}/curve"], "is inside"),
        (["plane", r["sgd"], r["sgd2"], r["swag"], "--out", f"{r['sgd']}/plane"], "is inside"),
        (["path", r["sgd"], r["sgd2"], "--out", root, "--overwrite"], "even with --overwrite"),
        (["sharpness", r["sgd"], "--out", f"{r['sgd']}/s"], "is inside"),
        # flags
        (["subspace", r["swag"], "--out", ""], "--out"),
        (["subspace", r["swag"], "--seed", "-1", "--out", f"{tmp}/s"], "--seed"),
        (["subspace", "", "--out", f"{tmp}/s"], "run"),
        (["subspace", r["swag"], "--inference", "nuts", "--samples", "3", "--out", f"{tmp}/s"], "at least 4"),
        (["regression", "--datasets", "diabetes", "--data-root", f"{tmp}/none", "--out", f"{tmp}/r"], "--data-root"),
        # folders of another kind
        (["subspace", r["curve"], "--out", f"{tmp}/s"], "curve folder"),
    ]


def test_new_commands_refuse_outputs_over_their_inputs_and_bad_flags(runs, tmp_path, capsys):
    for argv, names in _cases(runs, tmp_path):
        refused(
            [*argv, "--no-progress"] if argv[0] != "regression" else argv,
            capsys,
            names=names,
            untouched=list(runs.values()),
        )


def test_a_subspace_folder_given_as_a_run_is_named_for_what_it_is(runs, tmp_path, capsys):
    from valleys.app.cli import main

    sub = tmp_path / "sub"
    assert (
        main(
            [
                "subspace",
                str(runs["swag"]),
                "--space",
                "random",
                "--rank",
                "2",
                "--samples",
                "2",
                "--burn-in",
                "1",
                "--grid",
                "0",
                "--out",
                str(sub),
                "--no-progress",
            ]
        )
        == 0
    )
    refused(["subspace", sub, "--out", tmp_path / "again"], capsys, names="made by 'valleys subspace'")
    refused(["evaluate", sub], capsys, names="not a training run")


def test_geometry_checks_the_runs_methods_not_their_names(runs, tmp_path, capsys):
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copytree(runs["sgd"], demo / "sgd-seed0")
    shutil.copytree(runs["sgd2"], demo / "swag-seed0")  # an SGD run under SWAG's name
    refused(["geometry", demo, "--quick"], capsys, names="is a sgd run", untouched=[demo])


@pytest.mark.parametrize("space", ["pca", "random"])
def test_subspace_never_deletes_its_input_run(runs, capsys, space):
    refused(
        ["subspace", runs["swag"], "--space", space, "--out", runs["swag"], "--overwrite"],
        capsys,
        names="which this command reads",
        untouched=[runs["swag"]],
    )


def test_library_refusals_of_the_newer_modules():
    import torch

    from valleys.errors import InputTypeError, MissingExtraError
    from valleys.methods.subspace_posterior import SubspacePosterior

    with pytest.raises(InputTypeError, match="subspace must be a valleys.methods.subspace.Subspace"):
        SubspacePosterior(torch.nn.Linear(2, 2), None, [])
    from valleys.core.optional import require

    with pytest.raises(MissingExtraError, match=r"pip install 'valleys\[nothing\]'") as err:
        require("no_such_module_anywhere", "nothing")
    assert isinstance(err.value, ImportError) and err.value.__cause__ is None  # one line, no chained traceback


def test_an_unexpected_exception_is_one_line_naming_the_traceback_file(monkeypatch, capsys):
    import re

    from valleys.app import cli

    def broken(args):
        raise ZeroDivisionError("the kind of thing a bug does")

    monkeypatch.setattr(cli, "_evaluate", broken)
    assert cli.main(["evaluate", "anything"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (a bug in valleys" in err[0] and "ZeroDivisionError" in err[0]
    path = re.search(r"the traceback is in (\S+);", err[0]).group(1)
    with open(path) as f:
        assert "the kind of thing a bug does" in f.read() and "Traceback" not in err[0]
