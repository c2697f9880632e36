"""Nothing lost (issue 25): a diverged run keeps its last good checkpoint and resumes with a lower rate (the
change recorded in config.json); a folder being written is locked against a second process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from cli_harness import digest, refused, run
from valleys.app.folders import LOCK, FolderLockedError, run_lock
from valleys.core.checkpoint import load_checkpoint

# the rate, set per epoch, ramps from lr towards swa_lr after epoch swa_start / 2 = 3 (Izmailov et al. 2018's
# schedule): a huge --swa-lr diverges in epoch 5 (index 4), the first whose rate depends on swa_lr
DIVERGES = ["train", "--model", "mlp", "--method", "swa", "--epochs", "8", "--swa-start", "6", "--swa-lr", "1e30"]
DIVERGES += ["--checkpoint-every", "1", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_diverged_run_keeps_its_last_good_checkpoint_and_resumes_with_a_lower_rate(tmp_path, capsys):
    from valleys.training.schedules import SWASchedule

    out = tmp_path / "run"
    line = refused([*DIVERGES, "--out", out], capsys, names=["loss became", "--resume", "--swa-lr"])
    assert "the last good checkpoint is" in line and "no checkpoint was kept" not in line
    state, header = load_checkpoint(out / "checkpoint.safetensors")
    done, step = header["epoch"], int(state["step"])
    assert 3 <= done < 8
    past = (out / "metrics.jsonl").read_text().splitlines()
    assert len(past) == done
    kept = digest(out)
    # settings that would change the epochs already run are refused, and nothing is touched
    refused([*DIVERGES, "--out", out, "--resume", "--wd", "0.1"], capsys, names=["--wd", "--swa-lr"], untouched=[out])
    refused([*DIVERGES, "--out", out, "--resume", "--epochs", str(done)], capsys, names=[f"{done} epochs"])
    assert digest(out) == kept
    res = run(["train", "--out", out, "--resume", "--swa-lr", "0.05", "--no-progress"], capsys)
    assert res.code == 0, res.err
    saved = json.loads((out / "config.json").read_text())
    assert saved["swa_lr"] == 0.05
    assert saved["amendments"] == [{"epoch": done, "step": step, "changes": {"swa_lr": [1e30, 0.05]}}]
    assert "amended on --resume" in (out / "config.toml").read_text()
    # the epochs done are the diverged run's, byte for byte; the later ones ran at the amended schedule
    log = (out / "metrics.jsonl").read_text().splitlines()
    assert log[:done] == past and len(log) == 8
    for e in range(done, 8):
        assert json.loads(log[e])["lr"] == pytest.approx(SWASchedule(0.1, 6, 0.05)(e), rel=1e-12)
    # the oracle: the epochs done never used swa_lr, so the run equals one with --swa-lr 0.05 from the start
    assert done == 4
    fresh = tmp_path / "fresh"
    assert run([*[a if a != "1e30" else "0.05" for a in DIVERGES], "--out", fresh], capsys).code == 0
    a, _ = load_checkpoint(out / "model.safetensors")
    b, _ = load_checkpoint(fresh / "model.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    results = [json.loads((f / "results.json").read_text())["metrics"] for f in (out, fresh)]
    assert results[0] == results[1]


# ------------------------------------------------------------------ the lock
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder, host: str, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"host": host, "pid": pid}))


def test_a_live_holder_is_refused_with_its_host_and_pid(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", socket.gethostname(), sleeper.pid)
        with pytest.raises(FolderLockedError, match=f"process {sleeper.pid} on {socket.gethostname()}"):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / "run" / LOCK).is_file()  # not ours: left as it was


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    pid = _dead_pid()
    _write_lock(tmp_path / "run", socket.gethostname(), pid)
    with run_lock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == os.getpid()
    assert f"left by process {pid}" in capsys.readouterr().err
    assert not (tmp_path / "run" / LOCK).exists()  # released


def test_a_lock_from_another_host_names_the_file_to_remove(tmp_path):
    _write_lock(tmp_path / "run", "another-host", 12345)
    with pytest.raises(FolderLockedError, match=f"remove {tmp_path / 'run' / LOCK}"):
        with run_lock(tmp_path / "run"):
            pass


def test_a_stale_lock_does_not_block_a_command(tmp_path, capsys):
    out = tmp_path / "run"
    _write_lock(out, socket.gethostname(), _dead_pid())
    res = run(["train", "--model", "mlp", "--method", "sgd", "--epochs", "1", "--no-progress", "--out", out], capsys)
    assert res.code == 0, res.err
    assert "taking it over" in res.err and not (out / LOCK).exists()


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_command_on_a_locked_folder_is_refused_and_changes_nothing(tmp_path, capsys, flag):
    out = tmp_path / "run"
    assert (
        run(["train", "--model", "mlp", "--method", "sgd", "--epochs", "1", "--no-progress", "--out", out], capsys).code
        == 0
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, socket.gethostname(), sleeper.pid)
        before = digest(out)
        argv = ["train", "--model", "mlp", "--method", "sgd", "--epochs", "2", "--no-progress", "--out", out, flag]
        if flag == "--resume":
            argv = ["train", "--no-progress", "--out", out, flag]
        refused(argv, capsys, names=[f"process {sleeper.pid}", "being written"])
        assert digest(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()
