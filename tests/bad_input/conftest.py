"""Small finished run folders shared by the bad-input suite (trained once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (cli_harness, conftest models)

from valleys.app.config import TrainConfig  # noqa: E402
from valleys.app.train import train_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``sgd``, ``sgd2`` (MLP on MNIST-1D, 2 epochs), ``swag`` (3 epochs, rank 2), ``cnn`` (a 1-D CNN: another
    architecture), ``reg`` (Gaussian MLP on diabetes) and ``curve`` (a 1-epoch Bezier curve sgd -> sgd2)."""
    from valleys.app.connect import ConnectConfig, connect_runs

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, cfg in {
        "sgd": TrainConfig(method="sgd", model="mlp", epochs=2),
        "sgd2": TrainConfig(method="sgd", model="mlp", epochs=2, seed=1),
        "swag": TrainConfig(method="swag", model="mlp", epochs=3, swa_start=1, rank=2, samples=2),
        "cnn": TrainConfig(method="sgd", model="cnn1d", epochs=1),
        "reg": TrainConfig(dataset="diabetes", model="mlp", method="sgd", epochs=2, lr=0.01),
    }.items():
        train_run(cfg, root / name, progress=False)
        out[name] = root / name
    connect_runs(ConnectConfig(str(out["sgd"]), str(out["sgd2"]), epochs=1, points=3), root / "curve", progress=False)
    out["curve"] = root / "curve"
    return out


@pytest.fixture
def one_thread():
    """One torch thread for the test: the fault tests' subprocesses run with OMP_NUM_THREADS=1, and the in-process
    runs they are compared with bit for bit must too (a sum over threads is ordered differently)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter) -> None:
    """The refusals checked in this session, by command (the bad-input suite's count)."""
    from cli_harness import CASES

    if CASES:
        terminalreporter.write_sep("-", f"bad-input refusals checked: {sum(CASES.values())}")
        for command, n in sorted(CASES.items()):
            terminalreporter.write_line(f"  {command:12s} {n}")
