"""Clean stops on SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption): checkpoint at a step boundary, then exit.

SLURM and Kubernetes stop a job with SIGTERM and a grace period before SIGKILL. Python dies of SIGTERM at once,
losing the work since the last periodic checkpoint, and turns SIGINT into a ``KeyboardInterrupt`` wherever the
program happens to be, possibly in the middle of an optimizer step or a collective. :func:`install` replaces
both handlers:

* Inside :func:`deferred` (the training loop, a sampler's loop, a pool of worker processes) a signal only sets
  a flag. The loop asks :func:`requested` after each step, writes an atomic checkpoint of the state at that
  step boundary and raises :func:`stop_exception` (a :class:`Stopped`), which the command line turns into
  exit status 130 (SIGINT) or 143 (SIGTERM, 128 + 15) with one line saying how to resume. A second Ctrl-C
  stops at once.
* Elsewhere (loading, evaluating, writing results) the signal raises :class:`Stopped` at once; the command's
  output folder is cleaned up as on any failure, keeping what can be resumed.

Under ``torchrun`` each rank gets the signal, possibly at a different step; the trainer all-reduces the signal
number (its maximum) after every step, one small collective a step, so every rank stops after the same step
and none waits in a collective.
Worker processes started by :func:`valleys.app.parallel.run_jobs` install the handlers too and receive a
SIGTERM sent to their parent (Kubernetes signals only the container's first process), see :func:`forward_to`.

Without :func:`install` (the library used from a user's own script) nothing changes: :func:`requested` is
always ``None`` and Ctrl-C raises ``KeyboardInterrupt`` as usual.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

__all__ = [
    "Stopped",
    "install",
    "installed",
    "installed_in_parent",
    "handlers",
    "deferred",
    "requested",
    "stop_exception",
    "forward_to",
    "reset",
]


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM). A ``KeyboardInterrupt``, so that code which
    cleans up after Ctrl-C does the same for a preemption; ``exit_code`` is 128 + the signal number.
    ``checkpoint``: the checkpoint written at the stop, if any."""

    def __init__(self, signum: int = signal.SIGINT, checkpoint: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):  # pickled across worker processes
        return (type(self), (self.signum, self.checkpoint))


_ENV = "VALLEYS_STOP_HANDLERS"
_state: dict = {"installed": False, "requested": None, "deferring": 0, "children": []}


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (in the main thread; elsewhere it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    _state["installed"] = True
    os.environ[_ENV] = "1"  # worker processes started from here install them too


@contextmanager
def handlers() -> Iterator[None]:
    """:func:`install` for the block, then the previous handlers back and no stop pending (for a command
    called from Python, e.g. ``valleys.app.cli.main([...])`` in a test)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), os.environ.get(_ENV)
    was = _state["installed"]
    reset()
    install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0] if before[0] is not None else signal.SIG_DFL)
        signal.signal(signal.SIGTERM, before[1] if before[1] is not None else signal.SIG_DFL)
        if before[2] is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = before[2]
        _state["installed"] = was
        reset()


def installed_in_parent() -> bool:
    """Whether the process that started this one installed the handlers (a worker process should, too)."""
    return os.environ.get(_ENV) == "1"


def installed() -> bool:
    """Whether :func:`install` set the handlers in this process."""
    return bool(_state["installed"])


def reset() -> None:
    """Forget a requested stop (after it has been handled)."""
    _state["requested"] = None


def _handler(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
    again = _state["requested"] == signal.SIGINT and signum == signal.SIGINT
    if _state["requested"] is None or signum == signal.SIGTERM:
        _state["requested"] = signum
    if signum == signal.SIGTERM:
        for source in list(_state["children"]):
            for pid in list(source()):
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:  # already gone
                    pass
    if _state["deferring"] > 0 and not again:
        return
    raise Stopped(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block a signal only sets the flag that :func:`requested` reads (a second Ctrl-C still stops
    at once); a signal that arrived before the block raises :class:`Stopped` on entry."""
    if _state["requested"] is not None and _state["deferring"] == 0:
        raise Stopped(_state["requested"])
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def requested() -> int | None:
    """The signal number of a requested stop, or ``None``."""
    return _state["requested"]


def stop_exception(checkpoint: str | os.PathLike | None = None) -> Stopped:
    """The :class:`Stopped` to raise for the requested stop (SIGINT if none was requested)."""
    return Stopped(_state["requested"] or signal.SIGINT, None if checkpoint is None else str(checkpoint))


@contextmanager
def forward_to(pids: Callable[[], Iterable[int]]) -> Iterator[None]:
    """Send a SIGTERM received by this process to the processes ``pids()`` names at that moment (worker
    processes) while the block runs."""
    _state["children"].append(pids)
    try:
        yield
    finally:
        _state["children"].remove(pids)
