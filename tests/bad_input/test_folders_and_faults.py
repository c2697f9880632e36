"""Output folders, faults and tracebacks (issue 10, part A): every writing command refuses a folder holding our
output before any work and leaves it byte-identical; a failed command leaves nothing that blocks running it again;
Ctrl-C, SIGKILL and a full disk end with one line and a folder that can be resumed."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from cli_harness import digest, refused, run
from fault_harness import Reader, finish, interrupt, one_line, start, wait_for
from valleys.app.folders import OutputFolderError, check_output, output_guard, remove_stale_temporaries
from valleys.core.checkpoint import load_checkpoint, save_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")
TRAIN = ["--model", "mlp", "--method", "sgd", "--epochs", "2", "--no-progress"]
UNWRITABLE = "/proc/valleys-no-such-folder/out"  # /proc refuses new entries, even to root

pytestmark = pytest.mark.usefixtures("one_thread")


def writers(a: Path, b: Path, c: Path, out: Path, *extra: str) -> dict[str, list]:
    """One argv per writing command, all with ``--out out``."""
    return {
        "train": ["train", *TRAIN, "--out", out, *extra],
        "connect": ["connect", a, b, "--epochs", "1", "--points", "3", "--no-progress", "--out", out, *extra],
        "plane": ["plane", a, b, c, "--grid", "2", "--no-progress", "--out", out, *extra],
        "path": ["path", a, b, "--points", "2", "--no-progress", "--out", out, *extra],
        "rays": ["rays", a, "--rays", "1", "--steps", "2", "--no-progress", "--out", out, *extra],
        "landscape": ["landscape", a, "--random", "--grid", "2", "--no-progress", "--out", out, *extra],
        "sharpness": ["sharpness", a, "--k", "1", "--examples", "10", "--out", out, *extra],
        "demo": ["demo", "--quick", "--no-progress", "--no-ood", "--out", out, *extra],
    }


COMMANDS = ["train", "connect", "plane", "path", "rays", "landscape", "sharpness", "demo"]
STUDIES = ["plane", "path", "rays", "landscape", "sharpness"]


@pytest.fixture(scope="module")
def study(runs, tmp_path_factory) -> Path:
    """A finished ``valleys path`` study folder."""
    from valleys.app.cli import main

    out = tmp_path_factory.mktemp("study") / "path"
    assert main(["path", str(runs["sgd"]), str(runs["sgd2"]), "--points", "2", "--no-progress", "--out", str(out)]) == 0
    return out


def argv(runs, command: str, out, *extra: str) -> list:
    return writers(runs["sgd"], runs["sgd2"], runs["swag"], out, *extra)[command]


# ------------------------------------------------------------------ existing output without --overwrite
@pytest.mark.parametrize("command", COMMANDS)
def test_refuses_an_existing_run_folder(runs, capsys, command):
    refused(argv(runs, command, runs["sgd"]), capsys, names=[str(runs["sgd"]), "--overwrite"], untouched=[runs["sgd"]])


@pytest.mark.parametrize("command", COMMANDS)
def test_refuses_an_existing_study_folder(runs, study, capsys, command):
    refused(argv(runs, command, study), capsys, names=[str(study), "--overwrite"], untouched=[study])


def test_refuses_an_existing_curve_folder(runs, capsys):
    refused(argv(runs, "connect", runs["curve"]), capsys, names=str(runs["curve"]), untouched=[runs["curve"]])


# ------------------------------------------------------------------ a study never replaces a run
@pytest.mark.parametrize("command", STUDIES)
def test_a_study_never_replaces_a_run_even_with_overwrite(runs, capsys, command):
    refused(
        argv(runs, command, runs["sgd"], "--overwrite"),
        capsys,
        names=[str(runs["sgd"]), "results.json"],
        untouched=[runs["sgd"]],
    )


def test_a_study_never_replaces_a_curve_even_with_overwrite(runs, capsys):
    refused(
        argv(runs, "path", runs["curve"], "--overwrite"), capsys, names=str(runs["curve"]), untouched=[runs["curve"]]
    )


def test_a_study_replaces_a_study_with_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert run(argv(runs, "path", out), capsys).code == 0
    (out / "figures" / "old.png").write_bytes(b"x")
    assert run(argv(runs, "rays", out, "--overwrite"), capsys).code == 0
    assert (out / "figures" / "rays.png").is_file() and not (out / "figures" / "old.png").exists()


def test_geometry_refuses_an_existing_geometry_section(runs, tmp_path, capsys):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "sgd-seed0").symlink_to(runs["sgd"])
    (demo / "swag-seed0").symlink_to(runs["swag"])
    (demo / "geometry").mkdir()
    (demo / "geometry" / "summary.json").write_text("{}")
    refused(
        ["geometry", demo, "--quick", "--no-progress"],
        capsys,
        names=["geometry", "--overwrite"],
        untouched=[demo / "geometry"],
    )


def test_evaluate_refuses_to_replace_its_evaluation(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sgd"], run_dir)
    (run_dir / "evaluation.json").write_text('{"earlier": true}\n')
    refused(["evaluate", run_dir], capsys, names=["evaluation.json", "--overwrite"], untouched=[run_dir])
    assert run(["evaluate", run_dir, "--overwrite"], capsys).code == 0
    assert "earlier" not in (run_dir / "evaluation.json").read_text()


# ------------------------------------------------------------------ places that cannot be a folder
@pytest.mark.parametrize("command", ["train", "connect", "path", "sharpness", "demo"])
def test_out_under_a_regular_file(runs, tmp_path, capsys, command):
    f = tmp_path / "file.txt"
    f.write_text("mine\n")
    refused(argv(runs, command, f / "out"), capsys, names=str(f), untouched=[f])


@pytest.mark.parametrize("command", ["train", "landscape"])
def test_out_is_a_regular_file(runs, tmp_path, capsys, command):
    f = tmp_path / "file.txt"
    f.write_text("mine\n")
    refused(argv(runs, command, f), capsys, names=str(f), untouched=[f])


@pytest.mark.parametrize("command", ["train", "connect", "path", "rays"])
def test_out_where_nothing_can_be_written(runs, capsys, command):
    refused(argv(runs, command, UNWRITABLE), capsys, names="cannot write")


def test_out_in_a_read_only_folder(runs, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writes (covered by the /proc cases)")
        refused(argv(runs, "train", ro / "out"), capsys, names="cannot write", untouched=[ro])
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ failed commands leave nothing behind
@pytest.mark.slow
def test_a_refused_train_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "a" / "run"
    refused(["train", *TRAIN, "--val-fraction", "0", "--out", out], capsys, names="--val-fraction")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_diverging_connect_leaves_no_folder_and_runs_again(runs, tmp_path, capsys):
    out = tmp_path / "curve"
    refused(argv(runs, "connect", out)[:-2] + ["--lr", "1e30", "--out", out], capsys, names="loss became")
    assert not out.exists()
    assert run(argv(runs, "connect", out), capsys).code == 0  # the same command, now with a sane LR
    assert (out / "results.json").is_file()


def test_a_failed_study_leaves_only_what_was_there(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    with pytest.raises(RuntimeError), output_guard(out):
        (out / "results.json").write_text("{}")
        (out / "figures").mkdir()
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failure_in_a_new_nested_folder_removes_what_it_created(tmp_path):
    with pytest.raises(OSError), output_guard(tmp_path / "a" / "b" / "c") as out:
        out.mkdir(parents=True)
        raise OSError(28, "No space left on device", str(out / "x"))
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_keeps_a_resumable_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), output_guard(out, resumable=lambda: True):
        out.mkdir(exist_ok=True)  # output_guard creates it (to hold its lock)
        (out / "checkpoint.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt
    assert (out / "checkpoint.safetensors").is_file()


def test_check_output_changes_nothing_and_names_the_flag(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.md").write_text("# mine\n")
    before = digest(tmp_path)
    with pytest.raises(OutputFolderError, match="--out"):
        check_output(tmp_path / "r")
    assert digest(tmp_path) == before and sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.md"]


# ------------------------------------------------------------------ stale temporaries
def test_stale_temporaries_are_removed_at_the_nextstart(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sgd"], run_dir)
    stale = [run_dir / ".checkpoint.safetensors.ab12_xyz.tmp", run_dir / ".results.json.q9w8e7r6.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (run_dir / "notes.tmp").write_text("not ours\n")
    assert run(["train", *TRAIN, "--out", run_dir, "--resume"], capsys).code == 0
    assert not any(p.exists() for p in stale) and (run_dir / "notes.tmp").is_file()


def test_a_refused_command_keeps_even_stale_temporaries(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sgd"], run_dir)
    (run_dir / ".model.safetensors.zz11yy22.tmp").write_bytes(b"half")
    refused(argv(runs, "path", run_dir), capsys, names=str(run_dir), untouched=[run_dir])


def test_remove_stale_temporaries_reaches_member_folders(tmp_path):
    (tmp_path / "member-0").mkdir()
    p = tmp_path / "member-0" / ".checkpoint.safetensors.k3j2h1g0.tmp"
    p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [p] and not p.exists()


# ------------------------------------------------------------------ malformed files: clear errors, not KeyError
@pytest.mark.parametrize(
    "file,part,key",
    [
        ("model.safetensors", "header", "signature"),  # evaluate: a model file without its signature
        ("checkpoint.safetensors", "state", "optimizer"),  # train --resume: a checkpoint without its optimizer
    ],
)
def test_a_file_without_one_of_its_parts_is_named(file, part, key, runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sgd"], run_dir)
    state, header = load_checkpoint(run_dir / file)
    (header if part == "header" else state).pop(key)
    save_checkpoint(run_dir / file, state, header)
    command = ["evaluate", run_dir] if file == "model.safetensors" else ["train", *TRAIN, "--out", run_dir, "--resume"]
    refused(command, capsys, names=[file, key])


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import valleys.core.checkpoint as ck

    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"epoch": 1})
    before = digest(path)

    def full(*a, **k):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OSError, match="No space left on device.*previous one is intact") as e:
        save_checkpoint(path, {"w": torch.zeros(3)}, {"epoch": 2})
    assert e.value.errno == 28 and digest(path) == before and list(tmp_path.iterdir()) == [path]


# ------------------------------------------------------------------ faults in a real process
LONG = ["train", "--model", "mlp", "--method", "sgd", "--epochs", "30", "--checkpoint-every", "1", "--no-progress"]


def _same_model(a: Path, b: Path) -> None:
    sa, _ = load_checkpoint(a / "model.safetensors")
    sb, _ = load_checkpoint(b / "model.safetensors")
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The LONG run without interruption (in this process: same settings, same result)."""
    import torch

    from valleys.app.cli import main

    out = tmp_path_factory.mktemp("full") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the interrupted subprocess (see one_thread)
    try:
        assert main([*LONG, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def _interrupted_then_resumed(tmp_path, capsys, uninterrupted, sig: int) -> str:
    out = tmp_path / "run"
    proc = start([*LONG, "--out", out], tmp_path)
    wait_for(
        lambda: (
            len((out / "metrics.jsonl").read_text().splitlines()) >= 2 if (out / "metrics.jsonl").is_file() else False
        ),
        proc,
    )
    interrupt(proc, sig)
    code, err = finish(proc)
    assert not (out / "results.json").exists()
    res = run([*LONG, "--out", out, "--resume"], capsys)
    assert res.code == 0, res.err
    assert not list(out.glob(".*.tmp"))
    _same_model(out, uninterrupted)
    return f"{code}\n{err}"


@pytest.mark.slow
def test_sigint_during_train_then_resume_is_bit_identical(tmp_path, capsys, uninterrupted):
    code, err = _interrupted_then_resumed(tmp_path, capsys, uninterrupted, signal.SIGINT).split("\n", 1)
    assert code == "130"
    assert "--resume" in one_line(err)


@pytest.mark.slow
def test_sigkill_during_train_then_resume_is_bit_identical(tmp_path, capsys, uninterrupted):
    code, _ = _interrupted_then_resumed(tmp_path, capsys, uninterrupted, signal.SIGKILL).split("\n", 1)
    assert code == str(-signal.SIGKILL)


@pytest.mark.slow
def test_sigint_during_connect_isone_line(runs, tmp_path):
    out = tmp_path / "curve"
    proc = start(["connect", runs["sgd"], runs["sgd2"], "--epochs", "200", "--points", "3", "--out", out], tmp_path)
    wait_for(
        lambda: (
            (out / "checkpoint.safetensors").is_file()
            or (out / "metrics.jsonl").is_file()
            and bool((out / "metrics.jsonl").read_text())
        ),
        proc,
    )
    interrupt(proc)
    code, err = finish(proc)
    line = one_line(err)
    assert code == 130 and line.startswith("valleys connect: interrupted")
    assert ("--resume" in line) == (out / "checkpoint.safetensors").is_file()


@pytest.mark.slow
def test_sigint_during_evaluate_isone_line(runs, tmp_path):
    run_dir = tmp_path / "swag"
    shutil.copytree(runs["swag"], run_dir)
    before = digest(run_dir)
    proc = start(["evaluate", run_dir, "--samples", "100000"], tmp_path)
    reader = Reader(proc)
    # the BMA progress (off a terminal: a plain line VALLEYS_PROGRESS_INTERVAL = 1 s after the bar opens, see
    # fault_harness.env) shows evaluation is running
    wait_for(lambda: "point" in reader.text, proc, timeout=150)
    interrupt(proc)
    code, err = finish(proc, reader)
    line = one_line(err)
    assert code == 130 and line.startswith("valleys evaluate: interrupted") and "again" in line
    assert digest(run_dir) == before


@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    # SWAG checkpoints grow by a deviation vector per epoch: the first fits under the limit, a later one does not
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "mlp",
        "--method",
        "swag",
        "--swa-start",
        "1",
        "--rank",
        "20",
        "--samples",
        "2",
        "--epochs",
        "8",
        "--checkpoint-every",
        "1",
        "--no-progress",
        "--out",
        out,
    ]
    # ulimit -f counts 1024-byte blocks; the shell ignores SIGXFSZ so that writes fail with EFBIG (python
    # ignores it too)
    proc = start(args, tmp_path, shell_prefix="trap '' XFSZ; ulimit -f 1500;")
    code, err = finish(proc)
    line = one_line(err)
    assert code == 2 and line.startswith("valleys train: error:") and "checkpoint.safetensors" in line
    assert "previous one is intact" in line and "--resume" in line
    state, header = load_checkpoint(out / "checkpoint.safetensors")  # the last good one, whole
    assert 1 <= header["epoch"] < 8
    assert not list(out.glob(".*.tmp"))
