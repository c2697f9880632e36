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
from fault_harness import finish, interrupt, one_line, start, wait_for
from valleys.core.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; the in-process runs they are compared with bit for bit must
    use one thread too (a sum over threads is ordered differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    from valleys.app.cli import main

    out = tmp_path_factory.mktemp("whole") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*TRAIN, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


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


def test_a_stop_between_steps_resumes_the_epoch_where_it_stopped(tmp_path):
    """In one process: a stop requested after step 3 of epoch 2 writes a checkpoint at that step (position 3)
    whose resume skips the done batches and ends with the uninterrupted run's weights and log."""
    from valleys.core import stopping
    from valleys.training.trainer import CheckpointPolicy, Trainer

    def trainer(path: Path, stop_at: int | None = None) -> Trainer:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
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
