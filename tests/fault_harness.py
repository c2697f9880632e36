"""Faults injected into a real ``valleys`` process: start it, wait for it to get going, send a signal, read its
one-line message (shared by the bad-input suite's fault tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def env() -> dict[str, str]:
    # progress lines off a terminal every second (not 30 s): a test waiting for one waits less
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "VALLEYS_PROGRESS_INTERVAL": "1"}


def start(args: list, cwd: Path, shell_prefix: str | None = None, *, group: bool = False) -> subprocess.Popen:
    """``python -m valleys args`` in ``cwd``; ``group``: in a process group of its own, so that
    :func:`kill_group` reaches its worker processes too (as a cluster's SIGKILL reaches every process of a job)."""
    cmd = [sys.executable, "-m", "valleys", *map(str, args)]
    if shell_prefix is not None:
        cmd = ["bash", "-c", shell_prefix + ' exec "$@"', "bash", *cmd]
    # SIGINT back to its default in the child, as in a terminal: a test run started in the background of a
    # non-interactive shell (nohup, CI runners) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # the child must die of Ctrl-C like a terminal's process; spawned from pytest's main thread
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        start_new_session=group,
    )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of ``proc``'s group (started with ``group=True``)."""
    os.killpg(proc.pid, sig)


class Reader:
    """Collects a process's stderr in a thread (so that a progress bar can be waited for)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for chunk in iter(lambda: proc.stderr.read(1), ""):
            self.text += chunk


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not cond():
        assert proc.poll() is None, "the command ended before the fault could be injected"
        assert time.time() < end, "timed out waiting for the command to get going"
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Send ``sig``; a SIGINT is repeated every 15 s while the process runs (a user pressing Ctrl-C again: on a
    busy machine the first one can land before the command's own handling is in place)."""
    proc.send_signal(sig)
    for _ in range(4):
        if sig != signal.SIGINT:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)


def finish(proc: subprocess.Popen, reader: Reader | None = None) -> tuple[int, str]:
    proc.wait(timeout=180)
    if reader is not None:
        reader.thread.join(timeout=10)
        return proc.returncode, reader.text
    return proc.returncode, proc.stderr.read()


def one_line(err: str) -> str:
    # a progress bar's elapsed time: tqdm's [00:03, ...] or the plain lines' "12s elapsed" (off a terminal)
    bar = re.compile(r"\[\d+:\d+|\d+s elapsed")
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not bar.search(ln)]
    assert "Traceback" not in err, err
    assert len(lines) == 1, lines
    return lines[0]
