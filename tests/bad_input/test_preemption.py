"""Preemption (issue 25): SIGTERM, as SLURM and Kubernetes send it, stops every long command at a step boundary
with a checkpoint, exit status 143 and one line saying how to resume; the resumed run is bit-identical to an
uninterrupted one. SIGKILL (no chance to checkpoint) resumes from the last periodic checkpoint, also exactly.
A second process on the same ``--out`` is refused while the first runs; a stale lock is taken over."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from cli_harness import run
from fault_harness import finish, interrupt, kill_group, one_line, start, wait_for
from valleys.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def whole_run(tmp_path_factory, argv: list, name: str) -> Path:
    """``argv --out <new folder>`` in this process with one torch thread (as the subprocesses): the
    uninterrupted run a stopped one is compared with."""
    from valleys.app.cli import main

    out = tmp_path_factory.mktemp(name) / "whole"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in [*argv, "--out", out]]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def same_tensors(a: Path, b: Path, key: str | None = "model") -> None:
    sa, _ = load_checkpoint(a)
    sb, _ = load_checkpoint(b)
    sa, sb = (sa[key], sb[key]) if key else (sa, sb)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# ------------------------------------------------------------------ train
# the only periodic checkpoint is the last epoch's: before this issue a SIGTERM lost every epoch done
TRAIN = ["train", "--model", "mlp", "--method", "swa", "--swa-start", "4", "--swa-lr", "0.05", "--epochs", "12"]
TRAIN += ["--checkpoint-every", "12", "--no-progress"]


@pytest.fixture(scope="module")
def train_whole(tmp_path_factory) -> Path:
    return whole_run(tmp_path_factory, TRAIN, "train")


@pytest.mark.slow
def test_sigterm_during_train_checkpoints_mid_epoch_and_resumes_bit_identically(tmp_path, capsys, train_whole):
    out = tmp_path / "run"
    proc = start([*TRAIN, "--out", out], tmp_path)
    wait_for(lambda: lines(out / "metrics.jsonl") >= 5, proc)  # into the averaging phase
    interrupt(proc, signal.SIGTERM)
    code, err = finish(proc)
    line = one_line(err)
    assert code == 143, err
    assert line.startswith("valleys train: stopped by SIGTERM") and f"--out {out} --resume" in line
    _, header = load_checkpoint(out / "checkpoint.safetensors")
    assert 5 <= header["epoch"] < 12  # the work up to the signal is kept, not only epoch 12's periodic one
    res = run([*TRAIN, "--out", out, "--resume"], capsys)
    assert res.code == 0, res.err
    same_tensors(out / "model.safetensors", train_whole / "model.safetensors")
    same_tensors(out / "checkpoint.safetensors", train_whole / "checkpoint.safetensors", None)
    assert lines(out / "metrics.jsonl") == 12


@pytest.mark.parametrize("norm", ["dropout", "batchnorm"])
def test_a_stop_between_steps_resumes_the_epoch_where_it_stopped(tmp_path, norm):
    """In one process: a stop requested after step 3 of epoch 2 writes a checkpoint at that step (position 3)
    whose resume skips the done batches and ends with the uninterrupted run's weights, BatchNorm statistics
    and log (a Dropout model: the RNG state at the stop; a BatchNorm one: its running statistics)."""
    from valleys.core import stopping
    from valleys.training.trainer import CheckpointPolicy, Trainer

    def trainer(path: Path, stop_at: int | None = None) -> Trainer:
        torch.manual_seed(0)
        middle = torch.nn.Dropout(0.3) if norm == "dropout" else torch.nn.BatchNorm1d(8)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), middle, torch.nn.Linear(8, 3))
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator()
        )
        t = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            loader,
            epochs=3,
            checkpoint=CheckpointPolicy(path, every=3, log=path.parent / "log.jsonl"),
        )
        if stop_at is not None:

            class Stop:
                def on_train_start(self, trainer):
                    pass

                def on_step_end(self, trainer):
                    if trainer.step == stop_at:
                        stopping._state["requested"] = signal.SIGTERM

                def on_epoch_end(self, trainer, logs):
                    pass

                def on_train_end(self, trainer):
                    pass

                def state_dict(self):
                    return {}

                def load_state_dict(self, state):
                    pass

            t.callbacks.append(Stop())
        return t

    whole = tmp_path / "whole" / "ck.safetensors"
    trainer(whole).fit(progress=False)
    part = tmp_path / "part" / "ck.safetensors"
    try:
        with pytest.raises(stopping.Stopped) as e:
            trainer(part, stop_at=8).fit(progress=False)
    finally:
        stopping.reset()
    assert e.value.exit_code == 143 and e.value.checkpoint == str(part)
    state, header = load_checkpoint(part)
    assert (header["epoch"], header["position"], int(state["step"])) == (1, 3, 8)
    t = trainer(part)
    t.callbacks.append(trainer(part, stop_at=-1).callbacks[-1])  # the same callbacks, never stopping
    t.fit(resume=part, progress=False)
    same_tensors(part, whole)
    a = (part.parent / "log.jsonl").read_text().splitlines()
    b = (whole.parent / "log.jsonl").read_text().splitlines()
    drop = ("train_time",)
    import json

    assert [{k: v for k, v in json.loads(r).items() if k not in drop} for r in a] == [
        {k: v for k, v in json.loads(r).items() if k not in drop} for r in b
    ]


# ------------------------------------------------------------------ the other long commands
def strip_times(obj):
    """A results.json without its wall times (everything else must match bit for bit)."""
    if isinstance(obj, dict):
        return {k: strip_times(v) for k, v in obj.items() if not (k.endswith("_s") or k in ("time_s", "timing"))}
    if isinstance(obj, list):
        return [strip_times(v) for v in obj]
    return obj


def results(folder: Path) -> dict:
    import json

    return strip_times(json.loads((folder / "results.json").read_text()))


def any_checkpoint(out: Path) -> bool:
    return out.is_dir() and any(out.rglob("checkpoint.safetensors"))


def stop_then_resume(args: list, out: Path, ready, sig: int, tmp_path: Path, capsys, resume: list | None = None) -> str:
    """Start ``args --out out``, wait for ``ready()``, send ``sig``, check the exit, then resume in this process;
    returns the one line the stopped command printed (SIGTERM) or ''."""
    # in a group of its own: SIGKILL reaches the worker processes too, as a cluster's does every process of a job
    proc = start([*args, "--out", out], tmp_path, group=sig == signal.SIGKILL)
    wait_for(ready, proc, timeout=180)
    if sig == signal.SIGKILL:
        kill_group(proc)
    else:
        interrupt(proc, sig)
    code, err = finish(proc)
    line = ""
    if sig == signal.SIGTERM:
        line = one_line(err)
        assert code == 143, err
        assert "stopped by SIGTERM" in line and "--resume" in line, line
    else:
        assert code == -sig
    assert not (out / "results.json").exists()
    res = run([*(resume or args), "--out", out, "--resume"], capsys)
    assert res.code == 0, res.err
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".valleys.lock"))
    return line


@pytest.fixture(scope="module")
def swag(tmp_path_factory) -> Path:
    from valleys.app.config import TrainConfig
    from valleys.app.train import train_run

    out = tmp_path_factory.mktemp("swag") / "swag"
    train_run(TrainConfig(method="swag", model="mlp", epochs=6, swa_start=2, rank=5, samples=2), out, progress=False)
    return out


def subspace_args(swag: Path, *extra: str) -> list:
    return ["subspace", swag, "--rank", "2", "--temperature", "100", "--grid", "0", "--no-progress", *extra]


ESS = ["--samples", "60", "--burn-in", "5", "--checkpoint-every", "5"]
NUTS = ["--inference", "nuts", "--chains", "2", "--samples", "10", "--warmup", "10"]


@pytest.fixture(scope="module")
def subspace_whole(swag, tmp_path_factory) -> dict[str, Path]:
    from valleys.app.cli import main

    root = tmp_path_factory.mktemp("subspace")
    out = {}
    for name, extra in (("ess", ESS), ("nuts", NUTS)):
        if name == "nuts":
            pytest.importorskip("pyro")
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main([str(a) for a in subspace_args(swag, *extra, "--out", root / name)]) == 0
        finally:
            torch.set_num_threads(before)
        out[name] = root / name
    return out


def same_subspace(a: Path, b: Path) -> None:
    sa, _ = load_checkpoint(a / "subspace.safetensors")
    sb, _ = load_checkpoint(b / "subspace.safetensors")
    assert torch.equal(sa["samples"], sb["samples"])
    assert results(a) == results(b)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_subspace_ess_stopped_then_resumed_is_bit_identical(swag, subspace_whole, tmp_path, capsys, sig):
    out = tmp_path / "ess"
    line = stop_then_resume(subspace_args(swag, *ESS), out, lambda: any_checkpoint(out), sig, tmp_path, capsys)
    if line:
        assert f"valleys subspace {swag} ... --out {out} --resume" in line
    same_subspace(out, subspace_whole["ess"])


KILLS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])


@pytest.mark.slow
@KILLS
def test_subspace_nuts_stopped_in_its_second_chain_then_resumed_is_bit_identical(
    swag, subspace_whole, tmp_path, capsys, sig
):
    out = tmp_path / "nuts"
    stop_then_resume(subspace_args(swag, *NUTS), out, lambda: any_checkpoint(out), sig, tmp_path, capsys)
    same_subspace(out, subspace_whole["nuts"])


CONNECT = ["--epochs", "14", "--points", "3", "--no-progress"]  # a periodic checkpoint after epoch 10


@pytest.mark.slow
@KILLS
def test_connect_stopped_then_resumed_is_bit_identical(swag, tmp_path, capsys, sig):
    from valleys.app.cli import main

    a = swag.parent / "a"
    if not a.exists():
        from valleys.app.config import TrainConfig
        from valleys.app.train import train_run

        train_run(TrainConfig(method="sgd", model="mlp", epochs=2, seed=3), a, progress=False)
    whole = tmp_path / "whole"
    assert main([str(x) for x in ["connect", a, swag, *CONNECT, "--out", whole]]) == 0
    out = tmp_path / "curve"
    stop_then_resume(
        ["connect", a, swag, *CONNECT],
        out,
        lambda: (
            (out / "checkpoint.safetensors").is_file() if sig == signal.SIGKILL else lines(out / "metrics.jsonl") >= 2
        ),
        sig,
        tmp_path,
        capsys,
    )
    same_tensors(out / "curve.safetensors", whole / "curve.safetensors", None)
    assert results(out) == results(whole)


REGRESSION = ["regression", "--datasets", "diabetes", "--splits", "2", "--epochs", "40", "--samples", "3"]
REGRESSION += ["--burn-in", "1", "--swag-rank", "3", "--rank", "2", "--inference", "ess", "--prior-scale", "2"]
REGRESSION += ["--jobs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def regression_whole(tmp_path_factory) -> Path:
    return whole_run(tmp_path_factory, REGRESSION, "regression")


@pytest.mark.slow
@KILLS
def test_regression_stopped_in_its_workers_then_resumed_is_bit_identical(regression_whole, tmp_path, capsys, sig):
    """Two splits in two worker processes: the SIGTERM sent to the command reaches the workers, which
    checkpoint their runs; the resumed study equals an uninterrupted one."""
    out = tmp_path / "r"
    stop_then_resume(REGRESSION, out, lambda: any_checkpoint(out), sig, tmp_path, capsys)
    assert results(out) == results(regression_whole)


SEMISUP = ["semisup", "--model", "mlp", "--consistency", "none", "pi", "--labels-per-class", "5", "--epochs", "30"]
SEMISUP += ["--cycle", "5", "--train-subset", "400", "--test-subset", "100", "--batch-size", "64"]
SEMISUP += ["--labelled-batch-size", "16", "--fast-swa-every", "1", "--jobs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def semisup_whole(tmp_path_factory) -> Path:
    return whole_run(tmp_path_factory, SEMISUP, "semisup")


@pytest.mark.slow
@KILLS
def test_semisup_stopped_then_resumed_is_bit_identical(semisup_whole, tmp_path, capsys, sig):
    out = tmp_path / "s"
    stop_then_resume(SEMISUP, out, lambda: any_checkpoint(out), sig, tmp_path, capsys)
    assert results(out) == results(semisup_whole)


@pytest.mark.slow
def test_a_second_process_on_a_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start([*TRAIN, "--out", out], tmp_path)
    try:
        wait_for(lambda: lines(out / "metrics.jsonl") >= 1, proc)
        res = run(["train", "--out", out, "--resume", "--no-progress"], capsys)
        assert res.code == 2 and f"being written by process {proc.pid}" in res.err, res.err
        res = run([*TRAIN, "--out", out, "--overwrite"], capsys)
        assert res.code == 2 and f"being written by process {proc.pid}" in res.err, res.err
    finally:
        interrupt(proc, signal.SIGTERM)
        code, _ = finish(proc)
    assert code == 143
    assert run(["train", "--out", out, "--resume", "--no-progress"], capsys).code == 0  # the lock was released


@pytest.mark.slow
def test_sigterm_during_a_study_is_one_line_and_leaves_nothing(runs, tmp_path):
    """A command that cannot resume (here a plane) stops at once on SIGTERM: exit 143, one line, no folder."""
    import time

    out = tmp_path / "plane"
    argv = ["plane", runs["sgd"], runs["sgd2"], runs["swag"], "--grid", "300", "--no-progress", "--out", out]
    proc = start(argv, tmp_path)
    time.sleep(4)
    assert proc.poll() is None
    interrupt(proc, signal.SIGTERM)
    code, err = finish(proc)
    line = one_line(err)
    assert code == 143 and line.startswith("valleys plane: stopped by SIGTERM") and "run the command again" in line
    assert not out.exists()
