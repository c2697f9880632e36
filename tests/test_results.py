"""Typed results: fixed fields whatever the flags, attribute access, strict JSON, the older mapping view."""

import json
import math

import pytest
import torch
from torch import nn

from valleys.core.weights import WeightSpace
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.predict import bma
from valleys.evaluation.results import BMAResult, GridResult, PathResult
from valleys.geometry.paths import evaluate_path, segment


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    return model, [(x[:15], y[:15]), (x[15:], y[15:])], x, y


def test_bma_result_has_the_same_fields_with_and_without_probabilities():
    model, loader, x, y = _setup()
    w = WeightSpace(model).read(model)
    plain = bma(model, [w, w * 0.9], loader)
    full = bma(model, [w, w * 0.9], loader, return_probs=True)
    assert isinstance(plain, BMAResult) and isinstance(full, BMAResult)
    assert plain.probs is None and plain.targets is None
    assert full.probs.shape == (30, 3) and torch.equal(full.targets, y)
    # the fields do not depend on the flags; only the mapping view shows the tensors that were asked for
    assert set(vars(plain)) == set(vars(full))
    assert plain.metrics["nll"] == full.metrics["nll"] and plain.num_samples == 2
    # the numbers: the average of the two softmaxes, by hand in float64
    with torch.no_grad():
        p = (
            torch.softmax(model(x).double(), -1)
            + torch.softmax(torch.func.functional_call(model, WeightSpace(model).unflatten(w * 0.9), (x,)).double(), -1)
        ) / 2
    assert torch.allclose(full.probs, p, atol=1e-12)
    nll = float(-torch.log(p[torch.arange(30), y]).mean())
    assert math.isclose(plain.metrics["nll"], nll, rel_tol=1e-9)
    assert plain["nll"] == plain.metrics["nll"] and "probs" not in plain and "probs" in full  # mapping view
    text = json.dumps(full.to_json(), allow_nan=False)  # strict JSON; tensors are left out
    assert "probs" not in json.loads(text) and json.loads(text)["num_samples"] == 2


def test_grid_result_fields_and_strict_json_with_a_nonfinite_point():
    model, loader, _, _ = _setup()
    w = WeightSpace(model).read(model)

    with pytest.warns(UserWarning, match="1 of 2 points"):
        res = evaluate_points(model, [w, w * 1e30], {"train": loader}, bn="keep")
    assert isinstance(res, GridResult)
    assert res.nonfinite == 1 and res.bn == "none (no BatchNorm)"
    assert res.loss("train")[1] != res.loss("train")[1]  # NaN
    assert res["train"]["loss"] is res.loss("train")  # the older mapping view
    data = json.loads(json.dumps(res.to_json(), allow_nan=False))
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
    assert res["test_nll"] == res.test_nll and set(res.summary) == {
        "train_loss",
        "train_error",
        "test_error",
        "test_nll",
    }
    assert json.loads(json.dumps(res.to_json(), allow_nan=False))["bn"] == "none (no BatchNorm)"
