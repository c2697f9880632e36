"""Output folders of the commands: what is ours, when a folder may be written, and cleaning up after a failure.

Every command that writes a folder follows the same rules, checked before any work:

* :func:`check_output` refuses a path that cannot be a folder (a file, a path under a file, a place without
  write permission) and a folder that already holds anything valleys writes (:func:`ours`) unless
  ``overwrite``; a study (``plane``, ``path``, ...) never replaces a training run or curve folder, not even
  with ``overwrite`` (it would replace the run's ``results.json`` and ``report.md``). A refusal changes nothing.
* :func:`output_guard` wraps the work: it removes stale temporary files of an earlier killed command, and if
  the work fails it removes what this command created (the folder itself if it was new; never anything that
  was there before), so that the same command can simply be run again. An interruption keeps the folder when
  it can be resumed (``resumable``), and so does a full disk.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputFolderError, TrainingDiverged

__all__ = [
    "OutputFolderError",
    "OURS",
    "ours",
    "holds_run",
    "check_output",
    "output_guard",
    "remove_stale_temporaries",
    "check_writable",
    "prepare_run_dir",
    "has_checkpoint",
    "ranks_folder",
    "refuse_reading_from",
    "run_lock",
    "set_aside",
    "set_aside_all",
    "PREVIOUS",
    "FolderLockedError",
    "LOCK",
]

#: names (glob patterns) of the files and folders valleys writes into an output folder
OURS = (
    "config.json",
    "config.toml",
    "results.json",
    "checkpoint.safetensors",
    "model.safetensors",
    "metrics.jsonl",
    "posterior.safetensors",
    "trajectory.safetensors",
    "curve.safetensors",
    "subspace.safetensors",
    "report.md",
    "summary.json",
    "evaluation.json",
    "evaluation-*.json",
    "figures",
    "geometry",
    "member-*",
)
# a temporary file of an atomic write (core.checkpoint: mkstemp(prefix=".<name>.", suffix=".tmp"))
_TEMPORARY = re.compile(r"^\.(?P<name>.+\.(?:safetensors|json|jsonl|md|png|toml))\.[A-Za-z0-9_]+\.tmp$")


def ours(folder: str | os.PathLike) -> list[str]:
    """The entries of ``folder`` that valleys wrote (see :data:`OURS`), and sub-folders holding a run
    (a ``config.json``: a demo's runs); ``[]`` if it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if any(fnmatch.fnmatchcase(entry.name, p) for p in OURS) or (
            entry.is_dir() and (entry / "config.json").is_file()
        ):
            found.append(entry.name)
    return found


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a training run, a curve or a demo (a ``config.json`` in it or in a sub-folder):
    work a study must never replace."""
    folder = Path(folder)
    return (folder / "config.json").is_file() or any(
        (folder / name / "config.json").is_file() for name in ours(folder) if (folder / name).is_dir()
    )


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link: the place it points to does not exist
            break
        p = p.parent
    return p


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    study: bool = False,
    flag: str = "--out",
    what: str | None = None,
) -> Path:
    """Check that ``out`` may be written by a command; raise :class:`OutputFolderError` saying why not.

    Nothing in ``out`` is changed. ``resume``: the folder is expected to hold this command's output.
    ``study``: the command writes a study (``results.json``, ``report.md``, figures), which may replace an
    earlier study with ``overwrite`` but never a run. ``what``: how to call what is already there in the
    message (default: from the files).
    """
    out = Path(out)
    label = f"{flag} {out}" if flag else str(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{label}: {out} exists and is not a folder")
    base = _nearest_existing(out)
    if base.exists() and not base.is_dir():
        raise OutputFolderError(f"{label}: {base} is a file, not a folder")
    present = ours(out)
    if present and study and holds_run(out):
        raise OutputFolderError(
            f"{label}: {out} holds a run ({', '.join(present)}); a study would replace its "
            f"results.json and report.md, even with --overwrite; choose another {flag or 'folder'}"
        )
    if present and not (overwrite or resume):
        kind = what or ("a run" if (out / "config.json").is_file() else "valleys output")
        raise OutputFolderError(
            f"{label}: {out} already holds {kind} ({', '.join(present)}); choose another "
            f"{flag or 'folder'} or pass --overwrite to replace it"
            + (", or --resume to continue it" if kind == "a run" else "")
        )
    check_writable(base if base.exists() else base.parent, label)
    return out


def check_writable(folder: Path, label: str) -> None:
    """Create and remove a temporary file in ``folder``: permission bits say nothing to root, and some places
    (``/proc``, read-only mounts) refuse whatever they say."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{label}: cannot write into {folder} (permission denied)")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".valleys-probe.", suffix=".tmp")
    except OSError as e:
        raise OutputFolderError(f"{label}: cannot write into {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed atomic write left in ``folder`` and its sub-folders
    (``.checkpoint.safetensors.<random>.tmp``); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file() and _TEMPORARY.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def output_guard(out: str | os.PathLike, *, resumable: Callable[[], bool] = lambda: False) -> Iterator[Path]:
    """Run the work that writes ``out``; if it fails, remove what it created, so that a failed command leaves
    nothing that blocks running it again.

    Stale temporaries of an earlier killed command are removed first. On an exception, a folder that did not
    exist before is removed with the folders created above it; in a folder that existed, only the entries that
    were not there before are removed. On ``KeyboardInterrupt`` or an ``OSError`` (a full disk) nothing is
    removed if ``resumable()`` says the folder can be resumed (a checkpoint was written), nor after a
    divergence (:class:`TrainingDiverged`: its last good checkpoint is kept for ``--resume``). The folder is
    locked while the work runs (:func:`run_lock`).
    """
    out = Path(out)
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = out.is_dir()
    before = {p.name for p in out.iterdir()} if existed else set()
    with run_lock(out):
        remove_stale_temporaries(out)  # after the lock: never another live process's temporaries
        try:
            yield out
        except BaseException as e:
            _clean_up(e, out, top, existed, before, resumable)
            raise
        _drop_previous(out)  # done: the output this command replaced is no longer needed


def _clean_up(
    e: BaseException, out: Path, top: Path, existed: bool, before: set[str], resumable: Callable[[], bool]
) -> None:
    """After ``e`` in :func:`output_guard`'s work: remove what the command created, unless it can resume."""
    if isinstance(e, (KeyboardInterrupt, OSError, TrainingDiverged)) and resumable():
        # a checkpoint to resume from (a diverged run keeps its last good one); the output an --overwrite was
        # replacing stays in .valleys-previous until the resumed command succeeds
        return
    if isinstance(e, (GeneratorExit, SystemExit)):
        return
    try:
        if not existed:
            if top.exists():
                _remove(top)
        elif out.is_dir():
            for p in out.iterdir():
                if p.name not in before and p.name not in (LOCK, PREVIOUS):
                    _remove(p)
            _restore_previous(out)
    except OSError:
        pass


#: where ``--overwrite`` sets the output it replaces aside until the command succeeds (see :func:`set_aside`)
PREVIOUS = ".valleys-previous"


def set_aside(out: Path, names: Iterable[str]) -> None:
    """Move ``out``'s entries ``names`` into ``out/.valleys-previous``: the output an ``--overwrite`` replaces
    stays whole until the command succeeds (then it is removed) and is put back if the command fails (a full
    disk, an error), so a failed overwrite leaves the previous results readable. An entry already set aside by
    an earlier killed command keeps that older (complete) version."""
    backup = out / PREVIOUS
    for name in names:
        p = out / name
        if not (p.exists() or p.is_symlink()):
            continue
        backup.mkdir(exist_ok=True)
        if (backup / name).exists():
            _remove(p)
        else:
            os.replace(p, backup / name)


def set_aside_all(out: Path) -> None:
    """:func:`set_aside` every entry of ``out`` (a section a command replaces whole), hidden ones kept."""
    if out.is_dir():
        set_aside(out, [p.name for p in out.iterdir() if not p.name.startswith(".")])


def _restore_previous(out: Path) -> None:
    backup = out / PREVIOUS
    if not backup.is_dir():
        return
    for p in backup.iterdir():
        _remove(out / p.name)
        os.replace(p, out / p.name)
    backup.rmdir()


def _drop_previous(out: Path) -> None:
    for backup in [out / PREVIOUS, *out.glob(f"member-*/{PREVIOUS}")]:
        if backup.is_dir():
            shutil.rmtree(backup, ignore_errors=True)


#: the lock file of a folder being written (see :func:`run_lock`)
LOCK = ".valleys.lock"


class FolderLockedError(OutputFolderError):
    """Another live process is writing the folder."""


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out/.valleys.lock`` (host, PID, start time) while the block runs: a second process given the same
    folder (a job resubmitted while the old one drains) is refused with :class:`FolderLockedError`. A lock left
    by a process that no longer runs on this host (killed by SIGKILL) is taken over, with a note on stderr; a
    lock from another host cannot be checked and is refused with the file to remove if that job is gone.
    ``out`` is created if missing."""
    import json
    import socket
    import sys
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    host, pid = socket.gethostname(), os.getpid()
    mine = json.dumps({"host": host, "pid": pid, "started": time.time(), "argv": sys.argv})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            h, p = holder.get("host"), holder.get("pid")
            if h == host and isinstance(p, int) and p != pid and not _alive(p):
                print(
                    f"valleys: note: {lock} was left by process {p} on {h}, which no longer runs (killed?); "
                    "taking it over",
                    file=sys.stderr,
                )
                lock.unlink(missing_ok=True)
                continue
            if h == host and p == pid:  # this process holds it already (a command inside a command)
                yield out
                return
            where = f"process {p} on {h}" if h else "another process"
            raise FolderLockedError(
                f"{out} is being written by {where} (lock file {lock}); wait for it to finish or stop it"
                + ("" if h == host else f"; if that job is gone, remove {lock}")
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        break
    else:
        raise FolderLockedError(f"{out}: could not take the lock {lock}; another process keeps taking it")
    try:
        yield out
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == pid:
                lock.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def prepare_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False, create: bool = True) -> Path:
    """Create ``out`` or check it may be used (see :func:`check_output`): refuse a folder holding another run or
    other valleys output unless ``overwrite``, a path under a file, a place without write permission.
    ``create=False`` only checks (nothing is created or deleted). With ``overwrite`` (and not ``resume``) the
    earlier run's files are removed (sub-folders other than ``member-*`` are kept)."""
    out = check_output(out, overwrite=overwrite, resume=resume)
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:  # set aside until the command succeeds (restored if it fails)
        set_aside(
            out,
            [
                name
                for name in ours(out)
                if (out / name).is_file()
                or (out / name).is_symlink()
                or name == "figures"
                or (name.startswith("member-") and (out / name / "config.json").exists())
            ],
        )
    return out


def has_checkpoint(out: Path) -> bool:
    """Whether an interrupted run in ``out`` can be resumed (a training checkpoint in it or a member)."""
    return (out / "checkpoint.safetensors").is_file() or any(out.glob("member-*/checkpoint.safetensors"))


@contextmanager
def ranks_folder(out: Path, *, overwrite: bool, resume: bool, resumable: Callable[[], bool]) -> Iterator[bool]:
    """The output folder of a command that may run under torchrun: rank 0 guards it (:func:`output_guard`) and
    prepares it (:func:`prepare_run_dir`), then every rank meets; the body runs on every rank and learns whether
    it writes (rank 0); at the end every rank meets again, so the others can read what rank 0 wrote. In one
    process: the guard and the preparation."""
    import contextlib

    from ..core.distributed import barrier, is_main

    guard = output_guard(out, resumable=resumable) if is_main() else contextlib.nullcontext()
    with guard:
        if is_main():
            prepare_run_dir(out, overwrite=overwrite, resume=resume)
        barrier()
        yield is_main()
        barrier()


def refuse_reading_from(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], flag: str = "--out") -> None:
    """Refuse an output folder equal to, inside or above one of the command's ``inputs`` (files or folders it
    reads): writing there could delete or rewrite what is being read, whatever ``--overwrite`` says.
    :class:`OutputFolderError` naming both; nothing is touched."""
    dst = Path(out).resolve()
    for given in inputs:
        src = Path(given).resolve()
        if dst == src or dst in src.parents or src in dst.parents:
            where = "is" if dst == src else ("is above" if dst in src.parents else "is inside")
            raise OutputFolderError(
                f"{flag} {out} {where} {given}, which this command reads; write the output somewhere else"
            )
