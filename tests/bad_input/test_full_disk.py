"""A full disk while writing results (issue 25), for every command: the atomic writer raises ENOSPC at the
command's results file; the command ends with one line naming the file, leaves no temporary file, and the
previous results (an earlier study or run replaced with --overwrite, a finished run resumed, a run evaluated)
are still there, byte for byte. ``test_cli.py``'s demo test does the same for ``geometry`` and
``subspace-table``; the ``ulimit -f`` cases at the end fail real writes."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from cli_harness import digest, run
from fault_harness import finish, one_line, start


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk.add(name)``: every atomic write of a file called ``name`` fails with ENOSPC."""
    import valleys.core.checkpoint as ck

    real = ck._publish
    names: set[str] = set()

    def publish(tmp, path):
        if Path(path).name in names:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(ck, "_publish", publish)
    return names


def fails_cleanly(argv: list, capsys, folder: Path, file: str, *, intact: bool, previous: bool = False) -> str:
    """Run ``argv``; it must fail with one line naming ``file`` and the full disk, leave no temporary file in
    ``folder``, and (``intact``) leave ``folder`` byte-identical."""
    before = digest(folder)
    res = run(argv, capsys)
    assert res.code == 2, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip() and "elapsed" not in ln]
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    line = lines[0]
    assert file in line and "No space left on device" in line, line
    assert not list(folder.rglob(".*.tmp")) and bool(list(folder.rglob(".valleys-previous"))) == previous
    if intact:
        assert digest(folder) == before, "the previous output changed"
    return line


def copy(src: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


STUDIES = {
    "plane": lambda r: ["plane", r["sgd"], r["sgd2"], r["swag"], "--grid", "2"],
    "path": lambda r: ["path", r["sgd"], r["sgd2"], "--points", "2"],
    "rays": lambda r: ["rays", r["sgd"], "--rays", "1", "--steps", "2"],
    "landscape": lambda r: ["landscape", r["sgd"], "--random", "--grid", "2"],
    "sharpness": lambda r: ["sharpness", r["sgd"], "--k", "1", "--examples", "10"],
}


@pytest.mark.parametrize("study", list(STUDIES))
def test_a_study_replaced_on_a_full_disk_keeps_the_previous_one(study, runs, tmp_path, capsys, full_disk):
    out = tmp_path / study
    argv = [*STUDIES[study](runs), "--no-progress", "--out", out]
    assert run(argv, capsys).code == 0
    full_disk.add("results.json")
    fails_cleanly([*argv, "--overwrite"], capsys, out, "results.json", intact=True)


def test_train_resumed_on_a_full_disk_keeps_the_previous_results(runs, tmp_path, capsys, full_disk):
    out = copy(runs["sgd"], tmp_path, "sgd")
    full_disk.add("results.json")
    before = digest(out / "results.json")
    # (the resumed run writes its model again: the same tensors, its metadata in another order)
    line = fails_cleanly(
        ["train", "--out", out, "--resume", "--no-progress"], capsys, out, "results.json", intact=False
    )
    assert digest(out / "results.json") == before
    assert "the previous results.json is intact" in line and f"--out {out} --resume" in line


def test_train_on_a_full_disk_keeps_its_checkpoint_and_resumes(tmp_path, capsys, full_disk):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--method", "sgd", "--epochs", "1", "--no-progress", "--out", out]
    full_disk.add("results.json")
    line = fails_cleanly(argv, capsys, out, "results.json", intact=False)
    assert "--resume" in line
    full_disk.clear()
    assert run(["train", "--out", out, "--resume", "--no-progress"], capsys).code == 0


def test_evaluate_on_a_full_disk_leaves_the_run_as_it_was(runs, tmp_path, capsys, full_disk):
    out = copy(runs["swag"], tmp_path, "swag")
    full_disk.add("evaluation.json")
    fails_cleanly(["evaluate", out, "--samples", "2"], capsys, out, "evaluation.json", intact=True)


def test_connect_on_a_full_disk_keeps_its_checkpoint(runs, tmp_path, capsys, full_disk):
    out = tmp_path / "curve"
    argv = ["connect", runs["sgd"], runs["sgd2"], "--epochs", "1", "--points", "3", "--no-progress", "--out", out]
    full_disk.add("results.json")
    line = fails_cleanly(argv, capsys, out, "results.json", intact=False)
    assert "--resume" in line and (out / "checkpoint.safetensors").is_file()
    full_disk.clear()
    assert run(["connect", runs["sgd"], runs["sgd2"], "--out", out, "--resume", "--no-progress"], capsys).code == 0


@pytest.fixture(scope="module")
def swag5(tmp_path_factory) -> Path:
    from valleys.app.config import TrainConfig
    from valleys.app.train import train_run

    out = tmp_path_factory.mktemp("swag5") / "swag"
    train_run(TrainConfig(method="swag", model="mlp", epochs=5, swa_start=1, rank=5, samples=2), out, progress=False)
    return out


def test_subspace_replaced_on_a_full_disk_keeps_the_previous_one(swag5, tmp_path, capsys, full_disk):
    out = tmp_path / "sub"
    argv = ["subspace", swag5, "--rank", "2", "--samples", "3", "--burn-in", "1", "--grid", "0", "--no-progress"]
    argv += ["--out", out]
    assert run(argv, capsys).code == 0
    full_disk.add("results.json")
    before = digest(out)
    # the new run can resume (its samples are in its checkpoint); the previous one is set aside, whole
    line = fails_cleanly([*argv, "--overwrite"], capsys, out, "results.json", intact=False, previous=True)
    assert f"{out / '.valleys-previous'}" in line
    assert digest(out / ".valleys-previous") == before
    full_disk.clear()
    assert run([*argv, "--resume"], capsys).code == 0
    assert not (out / ".valleys-previous").exists()


def test_import_replaced_on_a_full_disk_keeps_the_previous_one(runs, tmp_path, capsys, full_disk):
    import torch

    from valleys.core.checkpoint import load_checkpoint

    state, _ = load_checkpoint(runs["sgd"] / "model.safetensors")
    torch.save(state["model"], tmp_path / "plain.pt")
    out = tmp_path / "imp"
    argv = ["import", tmp_path / "plain.pt", "--model", "mlp", "--no-progress", "--out", out]
    assert run(argv, capsys).code == 0
    full_disk.add("results.json")
    fails_cleanly([*argv, "--overwrite"], capsys, out, "results.json", intact=True)


REGRESSION = ["regression", "--datasets", "diabetes", "--splits", "1", "--epochs", "6", "--samples", "3"]
REGRESSION += ["--burn-in", "1", "--swag-rank", "3", "--rank", "2", "--inference", "ess", "--no-progress"]


def test_regression_on_a_full_disk_keeps_its_runs_and_resumes(tmp_path, capsys, full_disk):
    out = tmp_path / "r"
    full_disk.add("results.json")
    full_disk.add("report.md")
    # every run's results.json fails too: the first one (split 0's SGD run) stops the study
    fails_cleanly([*REGRESSION, "--out", out], capsys, out, "results.json", intact=False)
    assert (out / "config.json").is_file()
    full_disk.clear()
    assert run([*REGRESSION, "--out", out, "--resume"], capsys).code == 0


SEMISUP = ["semisup", "--model", "mlp", "--consistency", "none", "--labels-per-class", "5", "--epochs", "4"]
SEMISUP += ["--cycle", "1", "--train-subset", "400", "--test-subset", "100", "--batch-size", "64"]
SEMISUP += ["--labelled-batch-size", "16", "--fast-swa-every", "1", "--jobs", "1", "--no-progress"]


def test_semisup_resumed_on_a_full_disk_keeps_the_previous_results(tmp_path, capsys, full_disk):
    out = tmp_path / "s"
    assert run([*SEMISUP, "--out", out], capsys).code == 0
    full_disk.add("results.json")
    fails_cleanly([*SEMISUP, "--out", out, "--resume"], capsys, out, "results.json", intact=True)


def test_demo_replaced_on_a_full_disk_keeps_the_previous_one(tmp_path, capsys, full_disk, monkeypatch):
    """The demo's sections are the commands above; its own results.json goes through the same writer (the
    sections are stubbed here: a real demo takes minutes)."""
    from valleys.app import demo
    from valleys.core.checkpoint import write_json, write_text

    def body(plan, **kw):
        write_json(plan.out / "results.json", {"preset": plan.preset})
        write_text(plan.out / "report.md", "# demo\n")
        return {}

    monkeypatch.setattr(demo, "_demo_body", body)
    out = tmp_path / "demo"
    assert run(["demo", "--quick", "--no-progress", "--out", out], capsys).code == 0
    full_disk.add("report.md")
    fails_cleanly(
        ["demo", "--quick", "--no-progress", "--out", out, "--overwrite"],
        capsys,
        out,
        "report.md",
        intact=True,
    )


# ------------------------------------------------------------------ a real limit: ulimit -f
@pytest.mark.slow
def test_evaluate_under_a_file_size_limit_keeps_the_previous_evaluation(runs, tmp_path):
    """``ulimit -f 1`` (1 KiB): the evaluation's JSON cannot be written; the run's earlier evaluation.json and
    every other file stay as they were."""
    out = copy(runs["swag"], tmp_path, "swag")
    (out / "evaluation.json").write_text('{"earlier": true}\n')
    before = digest(out)
    proc = start(["evaluate", out, "--samples", "2", "--overwrite"], tmp_path, "trap '' XFSZ; ulimit -f 1;")
    code, err = finish(proc)
    line = one_line(err)
    assert code == 2 and "evaluation.json" in line and "intact" in line, line
    assert digest(out) == before
