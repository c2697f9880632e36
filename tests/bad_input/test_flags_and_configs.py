"""Every command refuses bad flags, configs and files cleanly (issue 10, part B): a nonzero exit, one error line
naming the flag or file, no traceback, and no folder touched; refusals come before any training, so each
case is fast. The ``runs`` fixture (tests/bad_input/conftest.py) holds tiny finished runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cli_harness import refused, run

BIG = str(2**64)


def _fill(argv, runs, tmp) -> list[str]:
    names = {k: str(v) for k, v in runs.items()}
    return [a.format(tmp=tmp, **names) for a in argv]


def _check(argv, names, runs, tmp_path, capsys):
    # every shared run and the scratch folder must come out byte-identical
    return refused(_fill(argv, runs, tmp_path), capsys, names=names, untouched=[*runs.values(), tmp_path])


# ---------------------------------------------------------------------- train: flags, one family per row
TRAIN_FLAGS = [
    # integers
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--rank", "0"], "--rank"),
    (["--samples", "-2"], "--samples"),
    (["--bn-batches", "0"], "--bn-batches"),
    (["--cycle", "0"], "--cycle"),
    (["--members", "0"], "--members"),
    (["--swa-start", "0"], "--swa-start"),
    (["--fge-start", "-1"], "--fge-start"),
    (["--train-subset", "0"], "--train-subset"),
    (["--test-subset", "-1"], "--test-subset"),
    (["--uci-split", "-1"], "--uci-split"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--eval-every", "0"], "--eval-every"),
    # seeds: negative, overflowing, not an integer
    (["--seed", "-1"], "--seed"),
    (["--seed", BIG], "--seed"),
    (["--seed", "1.5"], "--seed"),
    # floats: NaN, infinities, negatives (also in scientific notation), zero where positive is needed
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--wd", "-1e-4"], "--wd"),
    (["--wd", "nan"], "--wd"),
    (["--momentum", "5"], "--momentum"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--swa-lr", "nan"], "--swa-lr"),
    (["--lr-1", "-1"], "--lr-1"),
    (["--lr-2", "inf"], "--lr-2"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--val-fraction", "nan"], "--val-fraction"),
    (["--val-fraction", "-.5"], "--val-fraction"),
    # choices and paths
    (["--dataset", "cifar"], "--dataset"),
    (["--model", "bert"], "--model"),
    (["--method", "adam"], "--method"),
    (["--out", ""], "--out"),
    (["--data-root", " "], "--data-root"),
    # method-specific settings: refused in the method's settings check, before training
    (["--method", "swag", "--rank", "1"], "--rank"),
    (["--method", "multiswag", "--rank", "1"], "--rank"),
    (["--method", "swag", "--epochs", "4", "--swa-start", "3"], "--swa-start"),
    (["--method", "swa", "--epochs", "4", "--swa-start", "4"], "swa-start"),
    (["--method", "fge", "--cycle", "3"], "--cycle"),
    (["--method", "fge", "--epochs", "2", "--cycle", "2"], "--epochs"),
    (["--method", "fge", "--epochs", "10", "--fge-start", "9"], "fge-start"),
    (["--method", "sgd", "--swa-lr", "0.1"], "--swa-lr"),
    (["--method", "swa", "--lr-1", "0.1"], "--lr-1"),
    (["--dataset", "diabetes", "--model", "cnn1d"], "--model"),
    (["--dataset", "diabetes", "--ood-split"], "--ood-split"),
    (["--device", "tpu:7"], "device"),
]


@pytest.mark.parametrize("flags,names", TRAIN_FLAGS)
def test_train_refuses_bad_flags(flags, names, runs, tmp_path, capsys):
    _check(["train", "--out", "{tmp}/run", "--no-progress", *flags], names, runs, tmp_path, capsys)


def test_train_refuses_a_data_root_without_fashion_mnist(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing"):
        line = _check(
            ["train", "--dataset", "fashion-mnist", "--model", "cnn", "--data-root", str(root), "--out", "{tmp}/run"],
            [str(root), "train-images-idx3-ubyte"],
            runs,
            tmp_path,
            capsys,
        )
        assert "--data-root" in line


# ---------------------------------------------------------------------- train --resume
@pytest.mark.parametrize(
    "flags,names",
    [
        (["--epochs", "5"], ["--epochs", "5", "2"]),
        (["--method", "swa"], ["--method", "'swa'", "'sgd'"]),
        (["--lr", "0.2"], ["--lr", "0.2", "0.1"]),
        (["--seed", "3"], ["--seed"]),
        (["--homoscedastic"], ["--homoscedastic"]),
    ],
)
def test_resume_refuses_flags_that_contradict_the_saved_config(flags, names, runs, tmp_path, capsys):
    _check(["train", "--out", "{sgd}", "--resume", *flags], names + ["config.json"], runs, tmp_path, capsys)


@pytest.mark.parametrize(
    "argv,names",
    [
        (["train", "--out", "{tmp}/none", "--resume"], ["config.json", "none"]),
        (["train", "--out", "{curve}", "--resume"], ["curve folder"]),
    ],
)
def test_resume_needs_a_training_run(argv, names, runs, tmp_path, capsys):
    _check(argv, names, runs, tmp_path, capsys)


def test_resume_alone_continues_from_config_json(runs, tmp_path, capsys):
    run_dir = tmp_path / "sgd"
    shutil.copytree(runs["sgd"], run_dir)
    saved = (run_dir / "config.json").read_text()
    res = run(["train", "--out", run_dir, "--resume", "--no-progress"], capsys)  # complete: evaluates again
    assert res.code == 0, res.err
    res = run(["train", "--out", run_dir, "--resume", "--epochs", "2", "--model", "mlp", "--no-progress"], capsys)
    assert res.code == 0, res.err  # flags that agree with config.json are fine
    assert (run_dir / "config.json").read_text() == saved


# ---------------------------------------------------------------------- run folders: config.json and checkpoints
def _edit_config(change):
    def edit(run_dir: Path) -> None:
        path = run_dir / "config.json"
        cfg = json.loads(path.read_text())
        out = change(cfg)
        path.write_text(out if isinstance(out, str) else json.dumps(out))

    return edit


CONFIG_EDITS = {
    "a list": (_edit_config(lambda c: [c]), "JSON list"),
    "invalid JSON": (_edit_config(lambda c: json.dumps(c)[:-3]), "not valid JSON"),
    "empty file": (_edit_config(lambda c: ""), "not valid JSON"),
    "unknown field": (_edit_config(lambda c: {**c, "flavour": "vanilla"}), "'flavour'"),
    "string epochs": (_edit_config(lambda c: {**c, "epochs": "ten"}), "epochs"),
    "bool batch size": (_edit_config(lambda c: {**c, "batch_size": True}), "batch_size"),
    "null lr": (_edit_config(lambda c: {**c, "lr": None}), "lr"),
    "NaN lr": (_edit_config(lambda c: {**c, "lr": math.nan}), "lr"),
    "unknown method": (_edit_config(lambda c: {**c, "method": "adam"}), "adam"),
    "momentum 2": (_edit_config(lambda c: {**c, "momentum": 2}), "momentum"),
    "negative seed": (_edit_config(lambda c: {**c, "seed": -4}), "seed"),
}


@pytest.mark.parametrize("what", list(CONFIG_EDITS))
def test_evaluate_refuses_a_bad_config_json_naming_it(what, runs, tmp_path, capsys):
    run_dir = tmp_path / "sgd"
    shutil.copytree(runs["sgd"], run_dir)
    edit, detail = CONFIG_EDITS[what]
    edit(run_dir)
    refused(["evaluate", run_dir], capsys, names=["config.json", detail], untouched=[run_dir, *runs.values()])


@pytest.mark.parametrize(
    "command",
    [
        ["path", "{run}", "{sgd2}", "--out", "{tmp}/o"],
        ["connect", "{run}", "{sgd2}", "--out", "{tmp}/o"],
        ["sharpness", "{run}", "--out", "{tmp}/o"],
    ],
)
def test_other_readers_refuse_a_bad_config_json_naming_it(command, runs, tmp_path, capsys):
    run_dir = tmp_path / "sgd"
    shutil.copytree(runs["sgd"], run_dir)
    CONFIG_EDITS["unknown field"][0](run_dir)
    refused(
        _fill(command, {**runs, "run": run_dir}, tmp_path),
        capsys,
        names=["config.json", "flavour"],
        untouched=[tmp_path, *runs.values()],
    )


def _rewrite_model(run_dir: Path, drop: str) -> None:
    from valleys.core.checkpoint import load_checkpoint, save_checkpoint

    state, header = load_checkpoint(run_dir / "model.safetensors")
    if drop == "model":
        state = {}
    else:
        header.pop(drop)
    save_checkpoint(run_dir / "model.safetensors", state, header)


@pytest.mark.parametrize(
    "damage,detail",
    [
        (lambda d: _rewrite_model(d, "signature"), "signature"),
        (lambda d: _rewrite_model(d, "kind"), "not a model checkpoint"),
        (lambda d: _rewrite_model(d, "model"), "has no 'model'"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]), "readable"),
        (lambda d: (d / "model.safetensors").unlink(), "no checkpoint"),
    ],
)
def test_evaluate_refuses_a_damaged_model_checkpoint_naming_it(damage, detail, runs, tmp_path, capsys):
    run_dir = tmp_path / "sgd"
    shutil.copytree(runs["sgd"], run_dir)
    damage(run_dir)
    refused(["evaluate", run_dir], capsys, names=["model.safetensors", detail], untouched=[run_dir, *runs.values()])
    refused(
        [
            "landscape",
            run_dir / "model.safetensors" if detail != "no checkpoint" else run_dir,
            "--random",
            "--out",
            tmp_path / "o",
        ],
        capsys,
        names=["model.safetensors"],
        untouched=[run_dir, tmp_path],
    )


# ---------------------------------------------------------------------- evaluate
@pytest.mark.parametrize(
    "argv,names",
    [
        (["evaluate", "{sgd}", "--points", "-5"], "--points"),
        (["evaluate", "{sgd}", "--points", "5"], "--points"),
        (["evaluate", "{curve}", "--points", "1"], "--points"),
        (["evaluate", "{sgd}", "--samples", "0"], "--samples"),
        (["evaluate", "{sgd}", "--samples", "3"], "--samples"),
        (["evaluate", "{curve}", "--samples", "3"], "--samples"),
        (["evaluate", "{curve}", "--temperature-scaling"], "--temperature-scaling"),
        (["evaluate", "{sgd}", "--ood"], "--ood-split"),
        (["evaluate", "{reg}", "--temperature-scaling"], "temperature scaling"),
        (["evaluate", ""], "run_dir"),
        (["evaluate", "{tmp}/nothing"], ["nothing", "not a run folder"]),
    ],
)
def test_evaluate_refuses(argv, names, runs, tmp_path, capsys):
    _check(argv, names, runs, tmp_path, capsys)


# ---------------------------------------------------------------------- connect
@pytest.mark.parametrize(
    "argv,names",
    [
        (["connect", "{sgd}", "{sgd}", "--out", "{tmp}/c"], "same run"),
        (["connect", "{sgd}", "{sgd}/model.safetensors", "--out", "{tmp}/c"], "identical"),
        (["connect", "{sgd}", "{cnn}", "--out", "{tmp}/c"], "endpoints differ"),
        (["connect", "{sgd}", "--out", "{tmp}/c"], "RUN_B"),
        (["connect", "{sgd}", "{sgd2}", "--out", ""], "--out"),
        (["connect", "{sgd}", "{sgd2}"], "--out"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--bends", "1"], "--bends"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--points", "1"], "--points"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--wd", "-1e-4"], "--wd"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--lr", "nan"], "--lr"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--epochs", "0"], "--epochs"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--seed", BIG], "--seed"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--kind", "line"], "--kind"),
        (["connect", "{sgd}", "{sgd2}", "--out", "{tmp}/c", "--bn", "maybe"], "--bn"),
        (["connect", "{sgd}", "{tmp}/nothing", "--out", "{tmp}/c"], "nothing"),
        # --resume: the curve's config.json decides; flags given must agree with it
        (["connect", "--out", "{curve}", "--resume", "--kind", "polychain"], ["--kind", "polychain", "bezier"]),
        (["connect", "--out", "{curve}", "--resume", "--points", "5"], ["--points", "5", "3"]),
        (["connect", "{sgd2}", "{sgd}", "--out", "{curve}", "--resume"], ["RUN_A", "config.json"]),
        (["connect", "--out", "{sgd}", "--resume"], ["not a curve folder", "config.json"]),
        (["connect", "--out", "{tmp}/c", "--resume"], "RUN_A"),
    ],
)
def test_connect_refuses(argv, names, runs, tmp_path, capsys):
    _check(argv, names, runs, tmp_path, capsys)


# ---------------------------------------------------------------------- plane, path, rays, landscape, sharpness
@pytest.mark.parametrize(
    "argv,names",
    [
        (["plane", "{sgd}", "{sgd2}", "--out", "{tmp}/o"], "three networks"),
        (["plane", "{sgd}", "{sgd2}", "{cnn}", "--out", "{tmp}/o"], ["one architecture", "{cnn}"]),
        (["plane", "--curve", "{sgd}", "--out", "{tmp}/o"], ["not a curve folder", "config.json"]),
        (["plane", "--curve", "{curve}", "--trajectory", "{swag}", "--out", "{tmp}/o"], ["--curve", "--trajectory"]),
        (["plane", "{sgd}", "{sgd2}", "{swag}", "--pca", "--out", "{tmp}/o"], "--pca"),
        (["plane", "--trajectory", "{sgd}", "--out", "{tmp}/o"], "trajectory"),
        (["plane", "--curve", "{curve}", "--grid", "1", "--out", "{tmp}/o"], "--grid"),
        (["plane", "--curve", "{curve}", "--margin", "-0.1", "--out", "{tmp}/o"], "--margin"),
        (["plane", "--curve", "{curve}", "--margin", "nan", "--out", "{tmp}/o"], "--margin"),
        (["plane", "--curve", "", "--out", "{tmp}/o"], "--curve"),
        (["path", "{sgd}", "{cnn}", "--out", "{tmp}/o"], "one architecture"),
        (["path", "{sgd}", "{reg}", "--out", "{tmp}/o"], "one architecture"),
        (["path", "{sgd}", "{sgd2}", "--extend", "-3", "--out", "{tmp}/o"], "--extend"),
        (["path", "{sgd}", "{sgd2}", "--extend", "nan", "--out", "{tmp}/o"], "--extend"),
        (["path", "{sgd}", "{sgd2}", "--points", "1", "--out", "{tmp}/o"], "--points"),
        (["path", "{sgd}", "{sgd2}", "--bn", "never", "--out", "{tmp}/o"], "--bn"),
        (["rays", "{sgd}", "{cnn}", "--out", "{tmp}/o"], ["one architecture", "{cnn}"]),
        (["rays", "{sgd}", "--max-distance", "-5", "--out", "{tmp}/o"], "--max-distance"),
        (["rays", "{sgd}", "--max-distance", "inf", "--out", "{tmp}/o"], "--max-distance"),
        (["rays", "{sgd}", "--rise", "-1", "--out", "{tmp}/o"], "--rise"),
        (["rays", "{sgd}", "--rise", "nan", "--out", "{tmp}/o"], "--rise"),
        (["rays", "{sgd}", "--steps", "1", "--out", "{tmp}/o"], "--steps"),
        (["rays", "{sgd}", "--rays", "0", "--out", "{tmp}/o"], "--rays"),
        (["rays", "{sgd}", "--seed", "-1", "--out", "{tmp}/o"], "--seed"),
        (["landscape", "{sgd}", "--random", "--span", "0", "--out", "{tmp}/o"], "--span"),
        (["landscape", "{sgd}", "--random", "--span", "inf", "--out", "{tmp}/o"], "--span"),
        (["landscape", "{sgd}", "--random", "--grid", "1", "--out", "{tmp}/o"], "--grid"),
        (["landscape", "{sgd}", "--random", "--seed", BIG, "--out", "{tmp}/o"], "--seed"),
        (["landscape", "{sgd}", "--out", "{tmp}/o"], "--random"),
        (["landscape", "{curve}", "--random", "--out", "{tmp}/o"], "curve folder"),
        (["sharpness", "{sgd}", "--k", "0", "--out", "{tmp}/o"], "--k"),
        (["sharpness", "{sgd}", "--examples", "0", "--out", "{tmp}/o"], "--examples"),
        (["sharpness", "{sgd}", "--epsilon", "nan", "--out", "{tmp}/o"], "--epsilon"),
        (["sharpness", "{sgd}", "--epsilon", "-1e-3", "--out", "{tmp}/o"], "--epsilon"),
        (["sharpness", "{sgd}", "--out", ""], "--out"),
        (["sharpness", "{tmp}/nothing", "--out", "{tmp}/o"], "nothing"),
    ],
)
def test_geometry_commands_refuse(argv, names, runs, tmp_path, capsys):
    names = [names] if isinstance(names, str) else names
    _check(argv, [n.format(**{k: str(v) for k, v in runs.items()}) for n in names], runs, tmp_path, capsys)


# ---------------------------------------------------------------------- demo and geometry
@pytest.mark.parametrize(
    "flags,names",
    [
        (["--epochs", "0"], "--epochs"),
        (["--lr", "nan"], "--lr"),
        (["--swa-lr", "-1"], "--swa-lr"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--seeds", "0", "0"], "--seeds"),
        (["--seeds", "-1"], "--seeds"),
        (["--out", ""], "--out"),
        (["--dataset", "cifar"], "--dataset"),
        (["--samples", "0"], "--samples"),
        (["--epochs", "5", "--swa-start", "5"], "swa-start"),
        (["--dataset", "fashion-mnist", "--model", "cnn", "--data-root", "{tmp}/missing"], "--data-root"),
        (
            ["--dataset", "digits"],
            "needs 1-D signals",
        ),  # the default preset's 1-D CNN on images, before any data is loaded
    ],
)
def test_demo_refuses(flags, names, runs, tmp_path, capsys):
    _check(["demo", "--quick", "--no-progress", "--out", "{tmp}/demo", *flags], names, runs, tmp_path, capsys)


@pytest.mark.parametrize(
    "argv,names",
    [
        (["geometry", "{tmp}"], "sgd-seed"),
        (["geometry", "{tmp}", "--seeds", "0", "0"], "--seeds"),
        (["geometry", "{tmp}", "--seeds", "-1"], "--seeds"),
        (["geometry", ""], "demo_dir"),
    ],
)
def test_geometry_demo_refuses(argv, names, runs, tmp_path, capsys):
    _check(argv, names, runs, tmp_path, capsys)


def test_demo_quick_keeps_the_flags_given(monkeypatch, capsys):
    import valleys.app.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, settings, **kw: seen.update(vars(settings)))
    assert run(["demo", "--quick", "--epochs", "4", "--out", "unused"], capsys).code == 0
    base = demo.quick_base(seen["base"], seen["keep"])
    assert (base.epochs, base.samples) == (4, demo.QUICK["samples"])
    assert base.resolved().swa_start == 2  # half the given budget, not the quick 15
    assert run(["demo", "--quick", "--out", "unused"], capsys).code == 0
    assert demo.quick_base(seen["base"], seen["keep"]).epochs == demo.QUICK["epochs"]


# ---------------------------------------------------------------------- library
def test_calibration_refuses_non_finite_input():
    from valleys.evaluation.calibration import auroc, fit_temperature

    probs = torch.full((4, 2), 0.5)
    probs[1, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(probs, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        auroc(torch.tensor([0.1, math.nan]), torch.tensor([0.2, 0.3]))
    with pytest.raises(ValueError, match="non-finite"):
        auroc(torch.tensor([0.1]), torch.tensor([math.inf]))


def test_config_type_errors_name_the_field():
    from valleys.app.config import TrainConfig

    with pytest.raises(ValueError, match="epochs must be an integer"):
        TrainConfig(epochs="10").resolved()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum must be in"):
        TrainConfig(momentum=1.0).resolved()
    with pytest.raises(ValueError, match="seed must be in"):
        TrainConfig(seed=2**64).resolved()


def _fake_fashion(folder: Path, n: int = 12) -> None:
    """Tiny IDX files in Fashion-MNIST's layout (n train, n test images of 28x28, labels 0-9)."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        images += bytes((i * 7) % 256 for i in range(n * 28 * 28))
        labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def test_data_root_wins_over_the_system_copy(tmp_path, monkeypatch):
    from valleys.zoo import data

    system, mine = tmp_path / "system", tmp_path / "mine"
    _fake_fashion(system)
    _fake_fashion(mine / "FashionMNIST" / "raw", n=20)  # a torchvision root
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", system)
    monkeypatch.setattr(data, "_dpkg_dirs", lambda: [system])
    assert data.find_fashion_mnist() == system
    assert data.find_fashion_mnist(mine) == mine / "FashionMNIST" / "raw"
    splits = data.load_dataset("fashion-mnist", root=mine, val_fraction=0.1)
    assert len(splits.test) == 20 and splits.input_shape == (1, 28, 28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="empty"):
        data.find_fashion_mnist(tmp_path / "empty")  # the system copy is not used instead


class _Blowup(torch.nn.Module):
    """A linear classifier whose weights or eval-mode outputs can be made non-finite on request."""

    def __init__(self, nan_eval: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.nan_eval = nan_eval

    def forward(self, x):
        out = self.fc(x)
        return out * math.inf if (self.nan_eval and not self.training) else out


def _loader():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)), batch_size=8
    )


def test_divergence_at_an_epoch_end_is_reported_like_a_nan_loss(tmp_path):
    from valleys.training.trainer import Callback, EvaluationPolicy, Trainer, TrainingDiverged

    class Poison(Callback):  # the last step of epoch 2 overflows the weights (its loss was finite)
        def on_step_end(self, trainer):
            if trainer.epoch == 1 and trainer.step == 2 * trainer.steps_per_epoch:
                with torch.no_grad():
                    trainer.model.fc.weight.fill_(math.inf)

    model = _Blowup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="end of epoch 2 of 3.*Lower the learning rate"):
        Trainer(model, opt, _loader(), 3, callbacks=[Poison()]).fit(progress=False)

    model = _Blowup(nan_eval=True)  # finite weights, non-finite predictions at evaluation
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="predictions became non-finite.*end of epoch 1"):
        Trainer(model, opt, _loader(), 2, evaluation=EvaluationPolicy({"val": _loader()})).fit(progress=False)
