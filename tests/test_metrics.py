import math

import pytest
import torch

from valleys.evaluation.metrics import ClassificationMetrics, classification_metrics, regression_metrics

P = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
Y = torch.tensor([0, 0, 1])


def test_hand_computed_values():
    m = classification_metrics(P, Y, bins=10)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.4)) / 3)
    assert m["brier"] == pytest.approx((2 * 0.01 + 2 * 0.64 + 2 * 0.36) / 3)
    # confidences 0.9 (bin 9, correct), 0.8 (bin 8, wrong), 0.6 (bin 6, wrong)
    assert m["ece"] == pytest.approx((0.1 + 0.8 + 0.6) / 3)
    assert m["mce"] == pytest.approx(0.8)
    rel = m["reliability"]
    assert rel["count"] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert math.isnan(rel["accuracy"][0]) and rel["accuracy"][9] == 1.0


def test_confidence_exactly_one_goes_to_top_bin_and_zero_prob_is_finite():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    m = classification_metrics(p, torch.tensor([0, 1]), bins=15)
    assert m["reliability"]["count"][-1] == 2
    assert m["ece"] == pytest.approx(0.5)
    assert math.isfinite(m["nll"]) and m["nll"] == pytest.approx(-math.log(1e-12) / 2)


def test_single_bin_ece_is_gap_between_mean_confidence_and_accuracy():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(500, 4, generator=g), -1)
    y = torch.randint(0, 4, (500,), generator=g)
    m = classification_metrics(p, y, bins=1)
    conf = p.max(1).values.double().mean()
    acc = (p.argmax(1) == y).double().mean()
    assert m["ece"] == pytest.approx(float((conf - acc).abs()))


def _ece_loop(p, y, bins):
    """Independent per-example reference: equal-width bins, top bin closed."""
    total, n = 0.0, len(y)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i in range(n) if lo <= float(p[i].max()) < hi or (b == bins - 1 and float(p[i].max()) == 1.0)]
        if idx:
            conf = sum(float(p[i].max()) for i in idx) / len(idx)
            acc = sum(float(p[i].argmax() == y[i]) for i in idx) / len(idx)
            total += len(idx) / n * abs(conf - acc)
    return total


def test_streaming_equals_one_shot_and_loop_reference():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(300, 5, generator=g, dtype=torch.float64), -1)
    y = torch.randint(0, 5, (300,), generator=g)
    stream = ClassificationMetrics(bins=15)
    for i in range(0, 300, 37):
        stream.update(p[i : i + 37], y[i : i + 37])
    a, b = stream.compute(), classification_metrics(p, y)
    for k in ("accuracy", "nll", "brier", "ece", "mce"):
        assert a[k] == pytest.approx(b[k], abs=1e-12)
    assert a["ece"] == pytest.approx(_ece_loop(p, y, 15), abs=1e-12)
    nll = torch.nn.functional.nll_loss(p.log(), y).item()  # mean, as torch defines it
    assert a["nll"] == pytest.approx(nll, rel=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        ClassificationMetrics().compute()
    with pytest.raises(ValueError, match="targets must lie"):
        classification_metrics(P, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(P[0], Y)
    with pytest.raises(ValueError, match="bins"):
        ClassificationMetrics(bins=0)


def test_regression_hand_computed():
    mu = torch.tensor([0.0, 1.0, 2.0])
    var = torch.tensor([1.0, 4.0, 0.25])
    y = torch.tensor([1.0, 1.0, 3.5])
    m = regression_metrics(mu, var, y)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 2.25) / 3))
    nll = [
        0.5 * math.log(2 * math.pi * v) + (t - u) ** 2 / (2 * v)
        for u, v, t in zip(mu.tolist(), var.tolist(), y.tolist(), strict=True)
    ]
    assert m["nll"] == pytest.approx(sum(nll) / 3)
    # |err| <= 1.96 sd: 1 <= 1.96 yes; 0 yes; 1.5 <= 0.98 no
    assert m["coverage_95"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="positive"):
        regression_metrics(mu, torch.zeros(3), y)


def test_custom_edges_and_log_edges():
    from valleys.evaluation.metrics import LOG_EDGES

    p = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    m = classification_metrics(p, torch.tensor([1, 0, 1]), edges=[0.0, 0.5, 0.8, 1.0])
    assert m["reliability"]["count"] == [0, 2, 1]  # 0.75 and 0.5 in [0.5, 0.8); 1.0 in the top bin
    assert m["ece"] == pytest.approx((abs(0.625 - 1.0) * 2 + 0.0) / 3)
    assert LOG_EDGES[0] == 0 and LOG_EDGES[-1] == 1 and len(LOG_EDGES) == 21
    with pytest.raises(ValueError, match="edges"):
        ClassificationMetrics(edges=[0.0, 0.7, 0.5, 1.0])
