"""The user's own model, data and checkpoints at the command line (``tests/user_pkg`` is the user's package).

Three model families (an attention model fed dict batches with a mask, a model returning a tuple, a BatchNorm
CNN) go through ``train``, ``import``, ``evaluate``, ``plane``, ``path``, ``rays``, ``sharpness``, ``connect``
and ``subspace`` from the command line; the numbers are compared bit for bit with the library's API
(``Trainer``, ``evaluate``, ``path_study``, ``plane_study``, ``sharpness_study``) called on the same inputs and
seeds, the way a user of the Python API would write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from valleys import ModelAdapter, Trainer, evaluate
from valleys.app.cli import main
from valleys.core.checkpoint import load_checkpoint
from valleys.core.weights import WeightSpace
from valleys.evaluation.engine import BNPolicy
from valleys.geometry.studies import path_study, plane_study, sharpness_study
from valleys.training.schedules import SWASchedule
from valleys.zoo.data import make_loader

PKG = Path(__file__).parent / "user_pkg"
MODELS = f"{PKG / 'models.py'}"
DATA = f"{PKG / 'data.py'}"

# family: (model factory, data factory, adapter flags, the adapter a Python user writes)
FAMILIES = {
    "attention": ("attention", "sequences", [], ModelAdapter()),
    "tuple": ("tuple_net", "signals", ["--output", "0"], ModelAdapter(output=0)),
    "batchnorm": ("bn_conv", "signals", [], ModelAdapter()),
}
EPOCHS, LR, BATCH = 2, 0.05, 32


def _factory(file: str, name: str):
    from valleys.app.user_code import load_reference

    return load_reference(f"{file}:{name}", "--model")


def _run(*argv: str) -> int:
    return main([str(a) for a in argv])


def _flags(family: str) -> list[str]:
    model, data, adapter_flags, _ = FAMILIES[family]
    return ["--model", f"{MODELS}:{model}", "--data", f"{DATA}:{data}", *adapter_flags]


def _python_train(family: str, seed: int):
    """What the CLI's ``train --method sgd`` does, written with the library: seeded model, seeded shuffled
    loader, SGD with momentum and weight decay, the SGD schedule (to 1% of the rate), ``Trainer``."""
    model_name, data_name, _, adapter = FAMILIES[family]
    data = _factory(DATA, data_name)()
    torch.manual_seed(seed)
    model = _factory(MODELS, model_name)()
    train = data["train"]
    if "val" not in data:  # the CLI holds out --val-fraction 0.1 of train (a fixed permutation, seed 0)
        n = len(train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        train = torch.utils.data.Subset(train, perm[round(0.1 * n) :])
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    Trainer(
        model,
        opt,
        make_loader(train, BATCH, shuffle=True, seed=seed),
        EPOCHS,
        adapter=adapter,
        schedule=SWASchedule(LR, swa_start=EPOCHS, swa_lr=0.01 * LR),
        seed=seed,
    ).fit(progress=False)
    test = data["test"]
    test = test.dataset if isinstance(test, DataLoader) else test
    return model, DataLoader(train, 1000), DataLoader(test, 1000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per family: two SGD runs trained by the CLI (seeds 0, 1), one imported from a plain ``torch.save``."""
    root = tmp_path_factory.mktemp("user")
    out = {}
    for family in FAMILIES:
        for seed in (0, 1):
            args = ["train", *_flags(family), "--method", "sgd", "--epochs", EPOCHS, "--lr", LR]
            args += ["--batch-size", BATCH, "--seed", seed, "--out", root / f"{family}-{seed}", "--no-progress"]
            assert _run(*args) == 0
        model, _, _ = _python_train(family, 2)
        torch.save(model.state_dict(), root / f"{family}-plain.pt")
        args = ["import", root / f"{family}-plain.pt", *_flags(family), "--out", root / f"{family}-imp"]
        assert _run(*args, "--no-progress") == 0
        out[family] = root
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(run / "model.safetensors")
    return state["model"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_train_is_the_library_trainer_bit_for_bit(runs, family):
    model, _, test = _python_train(family, 0)
    cli = _weights(runs / f"{family}-0")
    for k, v in model.state_dict().items():
        assert torch.equal(cli[k], v), k
    res = json.loads((runs / f"{family}-0" / "results.json").read_text())
    scores = evaluate(model, test, adapter=FAMILIES[family][3])
    assert res["metrics"]["test"]["accuracy"] == scores.accuracy
    assert res["metrics"]["test"]["nll"] == scores.nll


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_holds_the_plain_checkpoint_and_evaluates_like_the_library(runs, family, capsys):
    model, _, test = _python_train(family, 2)
    imported = _weights(runs / f"{family}-imp")
    assert all(torch.equal(imported[k], v) for k, v in model.state_dict().items())
    assert _run("evaluate", runs / f"{family}-imp", "--overwrite") == 0
    res = json.loads((runs / f"{family}-imp" / "evaluation.json").read_text())
    scores = evaluate(model, test, adapter=FAMILIES[family][3])
    assert res["metrics"]["test"]["accuracy"] == scores.accuracy
    assert res["metrics"]["test"]["nll"] == scores.nll


@pytest.mark.parametrize("family", list(FAMILIES))
def test_geometry_commands_match_the_library(runs, family, tmp_path):
    a, b, c = (runs / f"{family}-{s}" for s in ("0", "1", "imp"))
    model_a, train, test = _python_train(family, 0)
    model_b, _, _ = _python_train(family, 1)
    model_c, _, _ = _python_train(family, 2)
    space = WeightSpace(model_a)
    wa, wb, wc = (space.read(m) for m in (model_a, model_b, model_c))
    adapter = FAMILIES[family][3]
    bn = BNPolicy("recompute", DataLoader(train.dataset, max(BATCH, 256)))
    loaders = {"train": train, "test": test}

    assert _run("path", a, b, "--points", 5, "--out", tmp_path / "path", "--no-progress") == 0
    cli = json.loads((tmp_path / "path" / "results.json").read_text())
    lib = path_study(model_a, wa, wb, loaders, points=5, bn=bn, adapter=adapter)
    assert _close(cli["curves"]["test"]["loss"], lib["curves"]["test"]["loss"])
    assert _close(cli["curves"]["train"]["error"], lib["curves"]["train"]["error"])

    assert _run("plane", a, b, c, "--grid", 3, "--out", tmp_path / "plane", "--no-progress") == 0
    cli = json.loads((tmp_path / "plane" / "results.json").read_text())
    lib = plane_study(model_a, wa, wb, wc, loaders, n=3, bn=bn, adapter=adapter)
    assert _close(cli["grids"]["test"]["loss"], lib["grids"]["test"]["loss"])
    assert _close(cli["grids"]["train"]["error"], lib["grids"]["train"]["error"])

    args = ["sharpness", a, "--examples", 64, "--k", 1, "--iterations", 5, "--trace-samples", 3]
    assert _run(*args, "--out", tmp_path / "sharp", "--no-progress") == 0
    cli = json.loads((tmp_path / "sharp" / "results.json").read_text())
    first = next(iter(DataLoader(train.dataset, 64)))
    lib = sharpness_study(model_a, [first], k=1, iterations=5, trace_samples=3, adapter=adapter)
    assert cli["top_eigenvalues"] == lib["top_eigenvalues"]

    assert _run("rays", a, "--rays", 2, "--steps", 3, "--out", tmp_path / "rays", "--no-progress") == 0
    args = ["connect", a, c, "--epochs", 1, "--points", 3, "--out", tmp_path / "curve", "--no-progress"]
    assert _run(*args) == 0
    curve = json.loads((tmp_path / "curve" / "results.json").read_text())
    assert curve["segment"]["test_nll"][0] == pytest.approx(lib_path_end(model_a, wa, test, bn, adapter), rel=1e-9)


def _close(a, b) -> bool:
    """The same numbers to 1e-6 relative: on points without a BatchNorm recompute the engine chooses by timing
    between a loop, vmap and their folded forms, which round differently (about 1e-7)."""
    x, y = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return x.shape == y.shape and torch.allclose(x, y, rtol=1e-6, atol=0)


def lib_path_end(model, w, test, bn, adapter) -> float:
    """The test loss at ``w`` with BatchNorm recomputed, from the library's engine."""
    from valleys import evaluate_points

    return evaluate_points(model, [w], {"test": test}, bn=bn, adapter=adapter).loss("test")[0]


def test_three_plain_pytorch_checkpoints_through_plane_and_connect(tmp_path):
    """Networks trained and saved by plain PyTorch (a state_dict, a dict holding one with the optimizer, a
    safetensors file) are imported, then put through ``plane`` and ``connect``."""
    from safetensors.torch import save_file

    files = []
    for seed, form in zip((2, 3, 4), ("state_dict", "dict", "safetensors"), strict=True):
        model, _, _ = _python_train("batchnorm", seed)
        path = tmp_path / f"net{seed}.{'safetensors' if form == 'safetensors' else 'pt'}"
        if form == "state_dict":
            torch.save(model.state_dict(), path)
        elif form == "dict":
            torch.save({"epoch": 2, "model_state_dict": model.state_dict(), "lr": 0.05}, path)
        else:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out = tmp_path / f"imp{seed}"
        assert _run("import", path, *_flags("batchnorm"), "--out", out, "--no-progress") == 0
        assert all(torch.equal(_weights(out)[k], v) for k, v in model.state_dict().items())
        files.append(out)
    assert _run("plane", *files, "--grid", 3, "--out", tmp_path / "plane", "--no-progress") == 0
    assert len(json.loads((tmp_path / "plane" / "results.json").read_text())["grids"]["test"]["loss"]) == 3
    args = ["connect", files[0], files[1], "--epochs", 1, "--points", 3, "--out", tmp_path / "curve"]
    assert _run(*args, "--no-progress") == 0
    assert (tmp_path / "curve" / "curve.safetensors").is_file()


def test_subspace_on_a_user_swag_run(tmp_path):
    args = ["train", *_flags("tuple"), "--method", "swag", "--epochs", 4, "--swa-start", 1, "--rank", 3]
    assert _run(*args, "--samples", 3, "--batch-size", BATCH, "--out", tmp_path / "swag", "--no-progress") == 0
    args = ["subspace", tmp_path / "swag", "--space", "pca", "--rank", 2, "--samples", 6, "--temperature", 1]
    assert _run(*args, "--out", tmp_path / "sub", "--no-progress") == 0
    res = json.loads((tmp_path / "sub" / "results.json").read_text())
    assert res["dataset"].endswith("data.py:signals")


def test_config_file_reproduces_a_run_bit_for_bit_and_flags_win(tmp_path):
    args = ["train", *_flags("tuple"), "--model-args", "hidden=12", "--method", "swa", "--epochs", 3]
    assert _run(*args, "--swa-start", 1, "--batch-size", BATCH, "--out", tmp_path / "a", "--no-progress") == 0
    toml = (tmp_path / "a" / "config.toml").read_text()
    assert "model_args = {hidden = 12}" in toml and 'output = "0"' in toml
    assert _run("train", "--config", tmp_path / "a" / "config.toml", "--out", tmp_path / "b", "--no-progress") == 0
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("a", "b"))
    assert ra["metrics"] == rb["metrics"]
    # a flag typed on the command line wins over the file
    args = ["train", "--config", tmp_path / "a" / "config.toml", "--seed", 5, "--out", tmp_path / "c"]
    assert _run(*args, "--no-progress") == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["seed"] == 5
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model_args"] == {"hidden": 12}


def test_init_from_an_imported_checkpoint_swa_from_epoch_zero(tmp_path, capsys):
    """SWA for a few epochs from a pre-trained network (Izmailov et al. 2018's ImageNet protocol): with a
    vanishing rate the average is the checkpoint itself (BatchNorm statistics recomputed), which shows the
    run started from it; with a real rate it is compared with the checkpoint alone."""
    model, _, test = _python_train("batchnorm", 2)
    torch.save(model.state_dict(), tmp_path / "pre.pt")
    assert _run("import", tmp_path / "pre.pt", *_flags("batchnorm"), "--out", tmp_path / "imp", "--no-progress") == 0
    base = ["train", "--init", tmp_path / "imp", *_flags("batchnorm"), "--method", "swa", "--swa-start", 0]
    args = [*base, "--epochs", 2, "--lr", 1e-12, "--batch-size", BATCH, "--out", tmp_path / "still"]
    assert _run(*args, "--no-progress") == 0
    still = _weights(tmp_path / "still")
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(still[k], v, atol=1e-9), k
    assert json.loads((tmp_path / "still" / "config.json").read_text())["init"] == str(tmp_path / "imp")
    args = [*base, "--epochs", 3, "--lr", 0.05, "--batch-size", BATCH, "--out", tmp_path / "swa"]
    assert _run(*args, "--no-progress") == 0
    swa = json.loads((tmp_path / "swa" / "results.json").read_text())["metrics"]["test"]
    pre = json.loads((tmp_path / "imp" / "results.json").read_text())["metrics"]["test"]
    assert swa["nll"] != pre["nll"]  # it trained from the checkpoint


def test_a_hugging_face_save_pretrained_folder_through_evaluate_and_sharpness(tmp_path):
    pytest.importorskip("transformers")
    hf = f"{PKG / 'hf.py'}"
    torch.manual_seed(0)
    model = _factory(hf, "bert")()
    model.save_pretrained(tmp_path / "hf")
    args = ["import", tmp_path / "hf", "--model", f"{hf}:bert", "--model-args", f"folder={tmp_path / 'hf'}"]
    assert _run(*args, "--data", f"{hf}:tokens", "--out", tmp_path / "run", "--no-progress") == 0
    assert _run("evaluate", tmp_path / "run") == 0
    res = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    data = _factory(hf, "tokens")()
    scores = evaluate(model.eval(), DataLoader(data["test"], 1000))
    assert res["metrics"]["test"]["nll"] == scores.nll
    args = ["sharpness", tmp_path / "run", "--examples", 32, "--k", 1, "--iterations", 4, "--trace-samples", 2]
    assert _run(*args, "--out", tmp_path / "sharp", "--no-progress") == 0
    assert json.loads((tmp_path / "sharp" / "results.json").read_text())["top_eigenvalues"][0] > 0


def test_a_lightning_checkpoint_with_hyperparameters_imports(tmp_path):
    L = pytest.importorskip("lightning")
    from valleys.core.foreign import read_state_dict

    build = _factory(MODELS, "bn_conv")

    class Module(L.LightningModule):
        def __init__(self, channels: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()  # an AttributeDict in the checkpoint
            self.net = build(channels)

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    module = Module()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    state = read_state_dict(tmp_path / "m.ckpt")
    assert set(state) == {f"net.{k}" for k in module.net.state_dict()}
    assert _run("import", tmp_path / "m.ckpt", *_flags("batchnorm"), "--out", tmp_path / "run", "--no-progress") == 0
    assert all(torch.equal(_weights(tmp_path / "run")[k], v) for k, v in module.net.state_dict().items())


def test_regression_sets_default_to_the_gaussian_mlp():
    from valleys.app.train import train_config_from_flags

    cfg, _ = train_config_from_flags({"dataset": "concrete", "model": None, "method": "sgd", "epochs": 2})
    assert cfg.model == "mlp" and cfg.is_regression


def test_a_swag_posterior_saved_by_the_lightning_callback_imports_as_a_swag_run(tmp_path):
    """The model and the ``valleys.lightning.SWAGCallback`` state of one Lightning checkpoint become a swag run:
    its posterior equals the callback's, and ``evaluate`` averages draws from it."""
    L = pytest.importorskip("lightning")
    from valleys.lightning import SWAGCallback

    build = _factory(MODELS, "bn_conv")
    data = _factory(DATA, "signals")()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build()

        def training_step(self, batch, i):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(0)
    swag = SWAGCallback(start=1, rank=2, samples=3)
    trainer = L.Trainer(
        max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[swag]
    )
    trainer.fit(Module(), DataLoader(data["train"], batch_size=32, shuffle=True))
    trainer.save_checkpoint(tmp_path / "swag.ckpt")
    ckpt = tmp_path / "swag.ckpt"
    args = ["import", ckpt, "--posterior", ckpt, *_flags("batchnorm"), "--out", tmp_path / "run", "--no-progress"]
    assert _run(*args) == 0
    state, header = load_checkpoint(tmp_path / "run" / "posterior.safetensors")
    assert header["kind"] == "swag" and header["config"]["method"] == "swag" and header["config"]["rank"] == 2
    theirs = swag.averager.state_dict()
    assert torch.equal(state["swag"]["mean"], theirs["mean"])
    assert torch.equal(state["swag"]["deviations"], theirs["deviations"])
    assert _run("evaluate", tmp_path / "run", "--samples", 3, "--overwrite") == 0
    res = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert res["method"] == "swag" and res["num_samples"] == 3
    # the same state written by a valleys swag run's posterior file imports too
    args = ["import", ckpt, "--posterior", tmp_path / "run" / "posterior.safetensors", *_flags("batchnorm")]
    assert _run(*args, "--out", tmp_path / "again", "--no-progress") == 0
    again, _ = load_checkpoint(tmp_path / "again" / "posterior.safetensors")
    assert torch.equal(again["swag"]["m2"], theirs["m2"])


def test_semisup_and_regression_take_the_users_factory(tmp_path):
    """The other commands that build a network: ``semisup`` (consistency training on a built-in set) and the
    ``regression`` protocol (a factory whose output is (N, 2) = (mean, variance))."""
    args = ["semisup", "--model", f"{MODELS}:signal_mlp", "--consistency", "pi", "--labels-per-class", 5]
    args += ["--epochs", 4, "--cycle", 1, "--train-subset", 400, "--test-subset", 100, "--batch-size", 64]
    args += ["--labelled-batch-size", 16, "--fast-swa-every", 1, "--jobs", 1, "--no-progress"]
    assert _run(*args, "--out", tmp_path / "semi") == 0
    config = json.loads((tmp_path / "semi" / "config.json").read_text())
    assert config["model"] == f"{MODELS}:signal_mlp"
    args = ["regression", "--model", f"{MODELS}:gaussian_net", "--datasets", "diabetes", "--splits", 1]
    args += ["--epochs", 6, "--samples", 2, "--burn-in", 1, "--swag-rank", 3, "--rank", 2, "--inference", "ess"]
    assert _run(*args, "--out", tmp_path / "reg", "--no-progress") == 0
    assert (tmp_path / "reg" / "report.md").is_file()


def test_the_demo_takes_the_users_factory_as_its_model():
    """``valleys demo --model file.py:factory``: every run of the demo is built from the factory (a whole quick
    demo with one runs in about 30 s; here the settings it resolves)."""
    from valleys.app.demo import demo_base

    base, _ = demo_base("mnist1d", {"model": f"{MODELS}:signal_mlp"}, quick=True)
    assert base.resolved().model == f"{MODELS}:signal_mlp" and base.user_model
