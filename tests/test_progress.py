"""Progress output: tqdm on a terminal, plain lines (no carriage returns) in logs and pipes."""

from __future__ import annotations

import io

import pytest

from valleys.core.optional import NullBar, PlainBar, progress_bar


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_1000_updates_give_a_few_plain_lines():
    log = io.StringIO()
    bar = progress_bar(total=1000, desc="train", unit="step", file=log, leave=False, dynamic_ncols=True)
    assert isinstance(bar, PlainBar)
    for i in range(1000):
        bar.update(1)
        if i % 10 == 0:
            bar.set_postfix(epoch="1/2", loss=f"{1 / (i + 1):.4f}", refresh=False)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 5 <= len(lines) <= 15, lines
    assert lines[-1].startswith("train: 1000/1000 step (100%)") and "loss=" in lines[-1]
    bar.close()  # a second close writes nothing
    assert log.getvalue() == text


def test_plain_bar_prints_on_time_without_a_total_and_as_an_iterator():
    log = io.StringIO()
    bar = PlainBar(file=log, desc="points", interval=0.0)  # no total: a line per interval
    bar.update(3)
    bar.update(2)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("points: 5 it")
    log = io.StringIO()
    assert list(progress_bar(range(50), file=log, desc="path")) == list(range(50))
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("path: 50/50 it (100%)")


def test_resumed_bar_counts_from_initial_and_disable_is_silent():
    log = io.StringIO()
    bar = progress_bar(total=100, initial=50, file=log)
    bar.update(10)
    bar.close()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]
    assert log.getvalue().startswith("60/100 it (60%)")
    silent = io.StringIO()
    bar = progress_bar(total=10, file=silent, disable=True)
    assert isinstance(bar, NullBar) and not isinstance(bar, PlainBar)
    bar.update(10)
    bar.close()
    assert silent.getvalue() == ""


def test_on_a_terminal_it_is_tqdm():
    tqdm = pytest.importorskip("tqdm")
    bar = progress_bar(total=3, file=_TTY())
    assert isinstance(bar, tqdm.tqdm)
    bar.close()


@pytest.mark.slow
def test_sharpness_shows_progress_on_stderr_unless_no_progress(tmp_path, capsys):
    from valleys.app.cli import main
    from valleys.app.config import TrainConfig
    from valleys.app.train import train_run

    run = tmp_path / "run"
    train_run(TrainConfig(method="sgd", model="mlp", epochs=1, train_subset=200, test_subset=100), run, progress=False)
    capsys.readouterr()
    argv = ["sharpness", str(run), "--k", "1", "--examples", "100"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "Lanczos" in err and "epsilon-sharpness" in err, err
    assert err.strip().splitlines()[-1].startswith("epsilon-sharpness: 80/80 product (100%)"), err
    assert main(argv + ["--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_the_plain_lines_interval_comes_from_the_environment(monkeypatch):
    from valleys.core.optional import PlainBar

    monkeypatch.setenv("VALLEYS_PROGRESS_INTERVAL", "2.5")
    assert PlainBar(total=3).interval == 2.5
    monkeypatch.setenv("VALLEYS_PROGRESS_INTERVAL", "soon")
    assert PlainBar(total=3).interval == 30.0  # unreadable: the default
    assert PlainBar(total=3, interval=1.0).interval == 1.0
