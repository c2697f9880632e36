"""The user's own model, data, checkpoints and config files refused cleanly: one error line naming the flag or
file, no traceback, nothing written (``--out`` is never created), every input folder byte-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_harness import refused

PKG = Path(__file__).resolve().parents[1] / "user_pkg"
MODELS, DATA = str(PKG / "models.py"), str(PKG / "data.py")
GOOD = ["--model", f"{MODELS}:tuple_net", "--output", "0", "--data", f"{DATA}:signals"]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """Bad user files in a scratch folder."""
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "syntax.py").write_text("def make(:\n    pass\n")
    (tmp_path / "boom.py").write_text("raise ImportError('a missing dependency of the user')\n")
    (tmp_path / "data_bad.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def booleans():\n    x = torch.randn(8, 16)\n"
        "    return {'train': TensorDataset(x, torch.ones(8, dtype=torch.bool)), "
        "'test': TensorDataset(x, torch.ones(8, dtype=torch.bool))}\n"
        "def pairs():\n    x = torch.randn(8, 16)\n"
        "    return {'train': TensorDataset(x, torch.randn(8, 2)), 'test': TensorDataset(x, torch.randn(8, 2))}\n"
        "def lists():\n    return {'train': [1, 2], 'test': [3]}\n"
    )
    x = np.random.default_rng(0).normal(size=(10, 16)).astype("float32")
    np.savez(tmp_path / "short.npz", x_train=x, y_train=np.zeros(9, dtype="int64"), x_test=x, y_test=np.zeros(10))
    np.savez(tmp_path / "partial.npz", x_train=x, y_train=np.zeros(10, dtype="int64"))
    torch.save({"w": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a whole module: needs code to load
    from user_pkg.models import bn_conv  # tests/ is on sys.path (see conftest)

    torch.save(bn_conv().state_dict(), tmp_path / "bn.pt")
    (tmp_path / "unknown.toml").write_text('epochs = 2\ncolour = "red"\n')
    (tmp_path / "wrongtype.toml").write_text('lr = "fast"\n')
    (tmp_path / "broken.toml").write_text("epochs = = 2\n")
    (tmp_path / "list.toml").write_text("lr = [0.1, 0.2]\n")
    return {p.stem: str(p) for p in tmp_path.iterdir()}


TRAIN_CASES = [
    # (flags replacing the good ones, what the error line must name)
    (["--model", "no_such_pkg.models:make"], "no module named 'no_such_pkg'"),
    (["--model", "{tmp}/missing.py:make"], "does not exist"),
    (["--model", "{notes}:make"], "not a Python file"),
    (["--model", "{syntax}:make"], "not valid Python"),
    (["--model", "{boom}:make"], "a missing dependency of the user"),
    (["--model", f"{MODELS}:no_such_factory"], "no attribute 'no_such_factory'"),
    (["--model", f"{MODELS}:broken"], "out of coffee"),
    (["--model", f"{MODELS}:not_a_module"], "must return a torch.nn.Module"),
    (["--model", "torch:"], "--model"),
    (["--model", "resnet9000"], "--model"),
    (["--model-args", "=3"], "--model-args"),
    (["--model-args", "hidden=12", "wings=2"], "unexpected keyword argument 'wings'"),
    (["--data", f"{DATA}:nothing_useful"], "return a mapping"),
    (["--data", "{data_bad}:lists"], "give a Dataset"),
    (["--data", "{data_bad}:booleans"], "fit neither task"),
    (["--data", "{data_bad}:pairs"], "fit neither task"),
    (["--data", "{short}"], "equal lengths"),
    (["--data", "{partial}"], "lacks x_test, y_test"),
    (["--data", "{tmp}/none.npz"], "does not exist"),
    (["--task", "regression"], "--task regression needs float targets"),
    (["--data-args", "n_train=4", "--dataset", "digits"], "not allowed with argument"),
    (["--loss", "nonsense"], "loss must be cross_entropy, gaussian or module:callable"),
    (["--loss", f"{MODELS}:no_such_loss"], "no attribute 'no_such_loss'"),
    (["--init", "{pickled}"], "needs code to load"),
    (["--init", "{bn}"], "does not fit the model"),
    (["--init", "{tmp}/none.pt"], "does not exist"),
    (["--config", "{unknown}"], "'colour' is not a flag"),
    (["--config", "{wrongtype}"], "--lr"),
    (["--config", "{broken}"], "not valid TOML"),
    (["--config", "{list}"], "takes one value"),
    (["--config", "{tmp}/none.toml"], "does not exist"),
]


def _argv(flags: list[str], files: dict[str, str], tmp: Path) -> list[str]:
    given = {f for f in flags if f.startswith("--")}
    base = []
    skip = False
    for i, a in enumerate(GOOD):  # the good flags the case does not replace
        if skip:
            skip = False
            continue
        if a.startswith("--") and a in given:
            skip = i + 1 < len(GOOD) and not GOOD[i + 1].startswith("--")
            continue
        base.append(a)
    return [a.format(tmp=tmp, **files) for a in [*base, *flags]]


@pytest.mark.parametrize(("flags", "names"), TRAIN_CASES, ids=[c[1][:40] for c in TRAIN_CASES])
def test_train_refuses_bad_user_code_data_and_configs(flags, names, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", *_argv(flags, files, tmp_path), "--method", "sgd", "--epochs", "1", "--out", str(out)]
    refused(argv, capsys, names=names, untouched=[PKG])
    assert not out.exists()


IMPORT_CASES = [
    (["{pickled}"], "needs code to load"),
    (["{bn}"], "does not fit the model: 4 tensors the model has are not in it (first: 'body.0.weight')"),
    (["{tmp}/none.pt"], "does not exist"),
    (["{notes}"], "is not a PyTorch checkpoint"),
    (["{tmp}"], "holds no weights"),
    (["{bn}", "--posterior", "{bn}"], "holds no SWAG state"),
    (["{bn}", "--posterior", "{tmp}/none.safetensors"], "--posterior"),
]


@pytest.mark.parametrize(("args", "names"), IMPORT_CASES, ids=[c[1][:30] for c in IMPORT_CASES])
def test_import_refuses_checkpoints_it_cannot_read_safely(args, names, files, tmp_path, capsys):
    out = tmp_path / "imported"
    argv = ["import", *[a.format(tmp=tmp_path, **files) for a in args], *GOOD, "--out", str(out), "--no-progress"]
    refused(argv, capsys, names=names, untouched=[tmp_path / n for n in ("bn.pt", "pickled.pt")])
    assert not out.exists()


def test_import_refuses_to_write_into_the_folder_it_reads(runs, tmp_path, capsys):
    refused(
        ["import", runs["sgd"], "--model", "mlp", "--out", runs["sgd"], "--overwrite"],
        capsys,
        names="which is being imported",
        untouched=[runs["sgd"]],
    )


def test_a_run_whose_model_file_changed_is_refused_by_name(tmp_path, capsys):
    src = tmp_path / "net.py"
    src.write_text((PKG / "models.py").read_text())
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        f"{src}:tuple_net",
        "--output",
        "0",
        "--data",
        f"{DATA}:signals",
        "--method",
        "sgd",
        "--epochs",
        "1",
    ]
    from valleys.app.cli import main

    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    src.write_text(src.read_text() + "\n# edited\n")
    refused(["evaluate", out, "--overwrite"], capsys, names=["changed since this run was made", "net.py"])
    refused(["path", out, out, "--out", tmp_path / "p"], capsys, names="changed since", command="path")
