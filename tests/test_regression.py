import math

import numpy as np
import pytest
import torch

from conftest import loader
from valleys.app.config import TrainConfig
from valleys.app.evaluate import evaluate_run
from valleys.app.train import train_run
from valleys.core.adapter import ModelAdapter
from valleys.evaluation.predict import bma, evaluate
from valleys.methods.ensembles import snapshot
from valleys.zoo.regression import GaussianMLP, UCIFormatError, gaussian_nll, load_regression

GAUSSIAN = ModelAdapter(loss="gaussian")  # a (mean, variance) head


def test_gaussian_nll_matches_torch_and_heads():
    torch.manual_seed(0)
    for het in (True, False):
        model = GaussianMLP(4, heteroscedastic=het)
        out = model(torch.randn(7, 4))
        assert out.shape == (7, 2) and (out[:, 1] > 0).all()
    y = torch.randn(7)
    ref = torch.nn.functional.gaussian_nll_loss(out[:, 0], y, out[:, 1], full=True, eps=1e-12)
    assert gaussian_nll(out, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_bma_moment_matching_equals_the_mixture_moments():
    torch.manual_seed(0)
    x = torch.randn(30, 4)
    ds = torch.utils.data.TensorDataset(x, torch.randn(30))
    a, b = GaussianMLP(4), GaussianMLP(4)
    res = bma(a, [snapshot(a), snapshot(b)], loader(ds), adapter=GAUSSIAN, return_probs=True)
    with torch.no_grad():
        oa, ob = a.eval()(x).double(), b.eval()(x).double()
    mu = (oa[:, 0] + ob[:, 0]) / 2
    var = (oa[:, 1] + oa[:, 0] ** 2 + ob[:, 1] + ob[:, 0] ** 2) / 2 - mu**2
    assert torch.allclose(res.mean, mu, atol=1e-6) and torch.allclose(res.var, var, atol=1e-6)
    one = evaluate(a, loader(ds), adapter=GAUSSIAN)
    same = bma(a, [snapshot(a)] * 3, loader(ds), adapter=GAUSSIAN)
    assert same.metrics.nll == pytest.approx(one.nll, abs=1e-9) and same.metrics.rmse == pytest.approx(one.rmse)


def _uci_folder(tmp_path, rows=40):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(rows, 4))
    data[:, 3] = data[:, 0] * 2 + 1
    np.savetxt(tmp_path / "data.txt", data)
    np.savetxt(tmp_path / "index_features.txt", [0, 1, 2], fmt="%d")
    np.savetxt(tmp_path / "index_target.txt", [3], fmt="%d")
    np.savetxt(tmp_path / "index_train_0.txt", np.arange(0, 36), fmt="%d")
    np.savetxt(tmp_path / "index_test_0.txt", np.arange(36, 40), fmt="%d")
    return tmp_path


def test_uci_layout_is_read_and_standardised(tmp_path):
    s = load_regression("uci", root=_uci_folder(tmp_path), val_fraction=0.25)
    assert s.sizes() == {"train": 27, "val": 9, "test": 4} and s.input_shape == (3,)
    all_train_y = torch.cat([s.train.tensors[1], s.val.tensors[1]])
    assert float(all_train_y.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(all_train_y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "breakage,msg",
    [
        (lambda d: (d / "index_target.txt").unlink(), "lacks index_target.txt"),
        (lambda d: np.savetxt(d / "index_test_0.txt", [3, 36], fmt="%d"), "both the training and the test"),
        (lambda d: np.savetxt(d / "index_train_0.txt", [0, 99], fmt="%d"), "the data has 40 rows"),
        (lambda d: np.savetxt(d / "index_target.txt", [1], fmt="%d"), "also listed as a feature"),
    ],
)
def test_uci_missing_or_inconsistent_files(tmp_path, breakage, msg):
    folder = _uci_folder(tmp_path)
    breakage(folder)
    with pytest.raises(UCIFormatError, match=msg):
        load_regression("uci", root=folder)
    with pytest.raises(UCIFormatError, match="lacks index_train_3.txt"):
        load_regression("uci", root=_uci_folder(tmp_path), split=3)


def test_diabetes_swag_run_reports_regression_metrics(tmp_path):
    cfg = TrainConfig(dataset="diabetes", model="mlp", method="swag", epochs=12, lr=0.01, samples=5, rank=4)
    res = train_run(cfg, tmp_path / "r", progress=False)
    assert set(res["metrics"]["test"]) == {"rmse", "nll", "coverage_95"}
    assert 30 < res["metrics"]["test"]["rmse"] < 120  # in the target's units (diabetes y spans 25-346)
    with pytest.raises(ValueError, match="classification"):
        evaluate_run(tmp_path / "r", temperature_scaling=True)
    with pytest.raises(ValueError, match="--model mlp"):
        train_run(TrainConfig(dataset="diabetes", model="cnn"), tmp_path / "x", progress=False)


def test_geometry_and_connect_on_regression_runs_use_the_gaussian_nll(tmp_path):
    """path, sharpness and connect on diabetes runs: the loss is the Gaussian NLL of the (mean, variance) head
    (before, every geometry command crashed with 'expected target dtype Long')."""
    import json

    import torch

    from valleys.app.cli import main
    from valleys.app.studies.common import load_context
    from valleys.zoo.regression import gaussian_nll

    for seed in (0, 1):
        train_run(
            TrainConfig(dataset="diabetes", model="mlp", method="sgd", epochs=3, lr=0.01, seed=seed),
            tmp_path / f"r{seed}",
            progress=False,
        )
    a, b = str(tmp_path / "r0"), str(tmp_path / "r1")
    assert main(["path", a, b, "--points", "3", "--extend", "0", "--out", str(tmp_path / "line"), "--no-progress"]) == 0
    line = json.loads((tmp_path / "line" / "results.json").read_text())
    model, w, _, loaders, _ = load_context(a)
    with torch.no_grad():  # the oracle: the mean Gaussian NLL over the training split at A, by hand
        nll = torch.cat([gaussian_nll(model(x), y).reshape(1) * len(y) for x, y in loaders["train"]]).sum()
        n = sum(len(y) for _, y in loaders["train"])
    assert line["curves"]["train"]["loss"][0] == pytest.approx(float(nll / n), rel=1e-5)
    assert all(e is None for e in line["curves"]["train"]["error"])  # no classification error for regression
    assert main(["sharpness", a, "--k", "1", "--examples", "100", "--out", str(tmp_path / "sh")]) == 0
    sh = json.loads((tmp_path / "sh" / "results.json").read_text())
    assert math.isfinite(sh["top_eigenvalues"][0]) and math.isfinite(sh["loss"])
    assert (
        main(["connect", a, b, "--epochs", "1", "--points", "3", "--out", str(tmp_path / "curve"), "--no-progress"])
        == 0
    )
    curve = json.loads((tmp_path / "curve" / "results.json").read_text())
    assert len(curve["curve"]["test_nll"]) == 3 and all(math.isfinite(v) for v in curve["curve"]["test_nll"])


def test_bundled_tables_hold_the_published_data():
    # concrete (Yeh 1998): 1030 mixtures, first row 540 kg cement ... 28 days -> 79.99 MPa; Boston: 506 tracts,
    # first row crim 0.00632, medv 24.0 (Harrison & Rubinfeld 1978)
    from valleys.zoo.regression import _table

    x, y = _table("concrete")
    assert x.shape == (1030, 8) and y[0] == pytest.approx(79.99) and x[0, 0] == 540 and x[0, 7] == 28
    assert y.min() == pytest.approx(2.33) and y.max() == pytest.approx(82.6)
    x, y = _table("boston")
    assert x.shape == (506, 13) and x[0, 0] == pytest.approx(0.00632) and y[0] == 24.0 and y.max() == 50.0
    for name, n in (("concrete", 1030), ("boston", 506)):
        s = load_regression(name, split=3)
        sizes = s.sizes()
        assert sizes["test"] == round(0.1 * n) and sum(sizes.values()) == n
        xtr = torch.cat([s.train.tensors[0], s.val.tensors[0]])
        ytr = torch.cat([s.train.tensors[1], s.val.tensors[1]])
        # standardised with the training rows' statistics (train + validation, before the carve-out)
        assert (
            xtr.mean(0).abs().max() < 1e-5
            and ytr.mean().abs() < 1e-5
            and ytr.std(unbiased=False) == pytest.approx(1, abs=1e-5)
        )
        other = load_regression(name, split=4)
        assert not torch.equal(s.test.tensors[1], other.test.tensors[1])  # the split seed changes the split


def test_toy1d_has_two_clusters_with_a_gap_and_the_stated_noise():
    from valleys.zoo.regression import TOY_CLUSTERS, toy1d_curve, toy1d_data

    x, y = toy1d_data(2000, noise=0.05, seed=1)
    (a0, a1), (b0, b1) = TOY_CLUSTERS
    inside = ((x[:, 0] >= a0) & (x[:, 0] <= a1)) | ((x[:, 0] >= b0) & (x[:, 0] <= b1))
    assert inside.all() and (x[:, 0] < a1).sum() == 1000
    resid = y - toy1d_curve(x[:, 0])
    assert abs(resid.std() - 0.05) < 0.003 and abs(resid.mean()) < 0.004  # 2000 draws: se 0.0008 / 0.0011
    assert toy1d_curve(np.array([0.0, 0.25]))[1] == pytest.approx(0.25 + 0.3)  # sin(pi/2) = 1, sin(pi) = 0
    s = load_regression("toy1d", split=0)
    assert s.sizes() == {"train": 90, "val": 10, "test": 100} and s.input_shape == (1,)
    xt, yt = toy1d_data(100, seed=0)
    assert s.info["x_mean"][0] == pytest.approx(xt.mean()) and s.y_mean == pytest.approx(yt.mean())
