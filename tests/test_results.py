"""Typed results: frozen dataclasses with fixed fields whatever the flags, read by attribute, strict JSON with
the keys results files have always had."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from valleys.core.adapter import ModelAdapter
from valleys.core.checkpoint import json_safe
from valleys.core.weights import WeightSpace
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.predict import bma, evaluate
from valleys.evaluation.results import BMAResult, ClassificationScores, GridResult, PathResult, RegressionScores
from valleys.geometry.paths import evaluate_path, segment


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    return model, [(x[:15], y[:15]), (x[15:], y[15:])], x, y


def test_bma_result_has_the_same_fields_with_and_without_probabilities():
    model, loader, x, y = _setup()
    w = WeightSpace(model).read(model)
    plain = bma(model, [w, w * 0.9], loader, batched=False)  # the loop: the same kernels as the hand computation
    full = bma(model, [w, w * 0.9], loader, return_probs=True, batched=False)
    assert isinstance(plain, BMAResult) and isinstance(full, BMAResult)
    assert plain.probs is None and plain.targets is None
    assert full.probs.shape == (30, 3) and torch.equal(full.targets, y)
    # the fields do not depend on the flags
    assert [f.name for f in dataclasses.fields(plain)] == [f.name for f in dataclasses.fields(full)]
    assert isinstance(plain.metrics, ClassificationScores)
    assert plain.metrics.nll == full.metrics.nll and plain.num_samples == 2
    # the numbers: the average of the two softmaxes, by hand in float64
    with torch.no_grad():
        p = (
            torch.softmax(model(x).double(), -1)
            + torch.softmax(torch.func.functional_call(model, WeightSpace(model).unflatten(w * 0.9), (x,)).double(), -1)
        ) / 2
    assert torch.allclose(full.probs, p, atol=1e-12)
    nll = float(-torch.log(p[torch.arange(30), y]).mean())
    assert math.isclose(plain.metrics.nll, nll, rel_tol=1e-9)
    acc = float((p.argmax(-1) == y).double().mean())
    assert plain.metrics.accuracy == pytest.approx(acc, abs=1e-15) and plain.metrics.error == pytest.approx(1 - acc)
    text = json.dumps(full.to_json(), allow_nan=False)  # strict JSON; tensors are left out
    data = json.loads(text)
    # the keys results files have always had: the metrics flat, then num_samples and batched
    assert list(data) == [
        *("accuracy", "error", "nll", "brier", "ece", "mce", "n", "bins", "reliability"),
        *("num_samples", "batched"),
    ]
    assert data["num_samples"] == 2 and data["nll"] == pytest.approx(nll, rel=1e-9)
    assert (
        json_safe(full)
        == full.to_json()
        == json_safe({**full.metrics.to_json(), "num_samples": 2, "batched": full.batched})
    )


def test_results_are_frozen_and_not_subscriptable():
    model, loader, _, _ = _setup()
    w = WeightSpace(model).read(model)
    results = [
        bma(model, [w], loader),
        bma(model, [w], loader).metrics,
        evaluate(model, loader),
        evaluate_points(model, [w], {"train": loader}, bn="keep"),
        evaluate_path(model, segment(w, w * 0.5), [0.0, 1.0], train_loader=loader, test_loader=loader),
    ]
    for res in results:
        assert dataclasses.is_dataclass(res)
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.bn = "keep"  # type: ignore[misc]
        with pytest.raises(TypeError):
            res["accuracy"]  # type: ignore[index]
        with pytest.raises(TypeError):
            dict(res)  # type: ignore[call-overload]


def test_evaluate_scores_match_a_hand_computation_and_keep_their_json_keys():
    model, loader, x, y = _setup()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), -1)
    res = evaluate(model, loader)
    assert isinstance(res, ClassificationScores) and res.reliability is None and res.n == 30 and res.bins == 15
    assert res.nll == pytest.approx(float(-torch.log(p[torch.arange(30), y]).mean()), abs=1e-12)
    assert res.accuracy == pytest.approx(float((p.argmax(-1) == y).double().mean()), abs=1e-15)
    onehot = nn.functional.one_hot(y, 3).double()
    assert res.brier == pytest.approx(float(((p - onehot) ** 2).sum(1).mean()), abs=1e-12)
    assert list(res.to_json()) == ["accuracy", "error", "nll", "brier", "ece", "mce", "n", "bins"]
    with_bins = evaluate(model, loader, reliability=True)
    assert with_bins.reliability is not None and sum(with_bins.reliability["count"]) == 30
    assert list(with_bins.to_json())[-1] == "reliability"
    # a Gaussian head: regression scores, no error field
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(4, 2))
    gaussian = ModelAdapter(loss="gaussian", output=lambda out: torch.stack([out[:, 0], out[:, 1].exp()], 1))
    t = torch.randn(30)
    reg = evaluate(head, [(x, t)], adapter=gaussian)
    with torch.no_grad():
        out = head(x).double()
    mu, var = out[:, 0], out[:, 1].exp()
    assert isinstance(reg, RegressionScores) and list(reg.to_json()) == ["rmse", "nll", "coverage_95", "n"]
    assert reg.rmse == pytest.approx(float(((t.double() - mu) ** 2).mean().sqrt()), abs=1e-6)
    nll = float((0.5 * torch.log(2 * math.pi * var) + (t.double() - mu) ** 2 / (2 * var)).mean())
    assert reg.nll == pytest.approx(nll, abs=1e-6)


def test_grid_result_fields_and_strict_json_with_a_nonfinite_point():
    model, loader, _, _ = _setup()
    w = WeightSpace(model).read(model)

    with pytest.warns(UserWarning, match="1 of 2 points"):
        res = evaluate_points(model, [w, w * 1e30], {"train": loader}, bn="keep")
    assert isinstance(res, GridResult)
    assert res.nonfinite == 1 and res.bn == "none (no BatchNorm)"
    assert res.loss("train")[1] != res.loss("train")[1]  # NaN
    assert res.per_loader["train"]["loss"] is res.loss("train")
    data = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert list(data) == ["train", "nonfinite", "bn", "batched"]
    assert data["train"]["loss"][1] is None and data["nonfinite"] == 1
    empty = evaluate_points(model, [], {"train": loader}, bn="keep")
    assert empty.loss("train") == [] and empty.nonfinite == 0


def test_path_result_is_typed_and_json():
    model, loader, _, _ = _setup()
    space = WeightSpace(model)
    w = space.read(model)
    res = evaluate_path(model, segment(w, w * 0.5), [0.0, 0.5, 1.0], train_loader=loader, test_loader=loader)
    assert isinstance(res, PathResult) and res.t == [0.0, 0.5, 1.0] and len(res.lengths) == 2
    assert math.isclose(sum(res.lengths), float((w * 0.5).norm()), rel_tol=1e-5)
    assert set(res.summary) == {"train_loss", "train_error", "test_error", "test_nll"}
    data = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert data["bn"] == "none (no BatchNorm)" and data == json_safe(dataclasses.asdict(res))
    assert list(data) == [
        *("t", "train_loss", "train_error", "test_error", "test_nll", "lengths", "summary", "bn", "length_units")
    ]
