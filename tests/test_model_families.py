"""Every entry point x every model family, through one ModelAdapter.

Families: MLP, BatchNorm CNN, PreResNet, a GRU classifier, a Transformer encoder fed dict batches with a
padding mask, a model returning a tuple, a model returning a dict, and (when ``transformers`` is installed)
a tiny BERT built from a config. Each entry point either gives the numbers of a hand-written reference
(written with plain calls of the model, not through valleys) and leaves the model bit-identical, or raises
the adapter's clear error naming the setting to pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from valleys import (
    SWA,
    Curve,
    CurveModel,
    EvaluationPolicy,
    LossFunction,
    SWACallback,
    Trainer,
    WeightSpace,
    bma,
    evaluate,
    evaluate_path,
    evaluate_points,
    lanczos,
    recompute_bn,
    segment,
)
from valleys.core.adapter import AdapterError, ModelAdapter
from valleys.zoo.models import MLP, PreResNet, SmallCNN

N, C = 24, 3

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.func.vmap cannot evaluate:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
]


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, C)

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h[-1])


class MaskedTransformer(nn.Module):
    """forward(input, mask): needs the mask (asserts it arrives), like an attention model with padding."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, C)

    def forward(self, input, mask):
        assert mask is not None and mask.dtype == torch.bool
        h = self.encoder(input, src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.ReLU())
        self.head = nn.Linear(16, C)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


class DictOut(TupleOut):
    def forward(self, x):
        h = self.body(x)
        return {"scores": self.head(h), "features": h}


@dataclass
class Family:
    name: str
    make: Callable[[], nn.Module]
    batches: list  # list of batches (loaders are lists: same batches on every pass)
    adapter: ModelAdapter
    call: Callable[[nn.Module, Any], torch.Tensor]  # hand-written: the logits of a batch
    target: Callable[[Any], torch.Tensor]
    needs_adapter: bool = False  # the default adapter must refuse it with a clear error


def _xy(shape, n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, C, (8,), generator=g)) for _ in range(n_batches)]


def _masked_batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        x = torch.randn(8, 5, 8, generator=g)
        lengths = torch.randint(2, 6, (8,), generator=g)
        mask = torch.arange(5)[None, :] >= lengths[:, None]  # True = padding
        out.append({"input": x, "mask": mask, "label": torch.randint(0, C, (8,), generator=g)})
    return out


def _families() -> list[Family]:
    fams = [
        Family("mlp", lambda: MLP(6, C, hidden=(16,)), _xy((6,)), ModelAdapter(), lambda m, b: m(b[0]), lambda b: b[1]),
        Family(
            "bn_cnn",
            lambda: SmallCNN(1, C, width=4),
            _xy((1, 8, 8)),
            ModelAdapter(),
            lambda m, b: m(b[0]),
            lambda b: b[1],
        ),
        Family(
            "preresnet",
            lambda: PreResNet(1, C, width=4),
            _xy((1, 8, 8)),
            ModelAdapter(),
            lambda m, b: m(b[0]),
            lambda b: b[1],
        ),
        Family("gru", GRUClassifier, _xy((5, 4)), ModelAdapter(), lambda m, b: m(b[0]), lambda b: b[1]),
        Family(
            "transformer_dict_mask",
            MaskedTransformer,
            _masked_batches(),
            ModelAdapter(),
            lambda m, b: m(b["input"], b["mask"]),
            lambda b: b["label"],
        ),
        Family(
            "tuple_output",
            TupleOut,
            _xy((6,)),
            ModelAdapter(output=0),
            lambda m, b: m(b[0])[0],
            lambda b: b[1],
            needs_adapter=True,
        ),
        Family(
            "dict_output",
            DictOut,
            _xy((6,)),
            ModelAdapter(output="scores"),
            lambda m, b: m(b[0])["scores"],
            lambda b: b[1],
            needs_adapter=True,
        ),
    ]
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except Exception:  # pragma: no cover - transformers is a test extra
        return fams

    def bert():
        torch.manual_seed(0)
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            num_labels=C,
            max_position_embeddings=16,
        )
        return BertForSequenceClassification(cfg)

    g = torch.Generator().manual_seed(2)
    hf_batches = []
    for _ in range(2):
        ids = torch.randint(1, 100, (4, 6), generator=g)
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[:2, 4:] = 0
        hf_batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, C, (4,), generator=g)})
    fams.append(
        Family(
            "hf_bert",
            bert,
            hf_batches,
            ModelAdapter(),
            lambda m, b: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
            lambda b: b["labels"],
        )
    )
    return fams


FAMILIES = _families()
IDS = [f.name for f in FAMILIES]


def _model(fam: Family) -> nn.Module:
    torch.manual_seed(0)
    m = fam.make()
    m.eval()
    return m


def _snapshot(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def _assert_unchanged(model: nn.Module, snap) -> None:
    state, modes = snap
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert [m.training for m in model.modules()] == modes


def _reference_probs(model: nn.Module, fam: Family, weights: list[torch.Tensor] | None = None):
    """Hand-written BMA: write each vector into a deep copy, eval mode, softmax in float64, average."""
    copies = []
    for w in weights or [None]:
        m = copy.deepcopy(model)
        if w is not None:
            torch.nn.utils.vector_to_parameters(w, [p for p in m.parameters() if p.requires_grad])
        m.eval()
        copies.append(m)
    probs, ys = [], []
    with torch.no_grad():
        for b in fam.batches:
            probs.append(sum(torch.softmax(fam.call(m, b).double(), -1) for m in copies) / len(copies))
            ys.append(fam.target(b))
    return torch.cat(probs), torch.cat(ys)


def _nll(probs, y):
    return float(-torch.log(probs[torch.arange(len(y)), y]).mean())


def _two_vectors(model):
    space = WeightSpace(model)
    w = space.read(model)
    g = torch.Generator().manual_seed(3)
    return space, [w, w + 0.01 * torch.randn(w.shape, generator=g)]


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_evaluate(fam):
    model = _model(fam)
    snap = _snapshot(model)
    if fam.needs_adapter:
        with pytest.raises(AdapterError, match="output="):
            evaluate(model, fam.batches)
    res = evaluate(model, fam.batches, adapter=fam.adapter)
    probs, y = _reference_probs(model, fam)
    assert res.accuracy == pytest.approx(float((probs.argmax(1) == y).double().mean()), abs=1e-12)
    assert res.nll == pytest.approx(_nll(probs, y), rel=1e-9)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_bma_over_weight_vectors(fam):
    model = _model(fam)
    snap = _snapshot(model)
    _, ws = _two_vectors(model)
    res = bma(model, ws, fam.batches, adapter=fam.adapter, bn="keep", return_probs=True)
    probs, y = _reference_probs(model, fam, ws)
    assert torch.allclose(res.probs, probs, atol=1e-6)
    assert res.metrics.nll == pytest.approx(_nll(probs, y), rel=1e-5)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_evaluate_points_and_path(fam):
    model = _model(fam)
    snap = _snapshot(model)
    _, ws = _two_vectors(model)
    res = evaluate_points(model, ws, {"test": fam.batches}, adapter=fam.adapter, bn="keep")
    for j, w in enumerate(ws):
        probs, y = _reference_probs(model, fam, [w])
        assert res.loss("test")[j] == pytest.approx(_nll(probs, y), rel=1e-5)
        assert res.error("test")[j] == pytest.approx(float((probs.argmax(1) != y).double().mean()), abs=1e-9)
    path = evaluate_path(
        model,
        segment(ws[0], ws[1]),
        [0.0, 1.0],
        train_loader=fam.batches,
        test_loader=fam.batches,
        adapter=fam.adapter,
        bn="keep",
    )
    assert path.test_nll == pytest.approx(res.loss("test"), rel=1e-5)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_recompute_bn(fam):
    model = _model(fam)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    modes = [m.training for m in model.modules()]
    used = recompute_bn(model, fam.batches, adapter=fam.adapter)
    assert used == (len(fam.batches) if has_bn else 0)
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_loss_function_and_lanczos(fam):
    model = _model(fam)
    snap = _snapshot(model)
    loss = LossFunction(model, fam.batches, adapter=fam.adapter)
    w = loss.space.read(model)
    probs, y = _reference_probs(model, fam)
    # batches of equal size: the mean over batches of the batch means is the mean over examples
    assert loss.value(w) == pytest.approx(_nll(probs, y), rel=1e-5)
    res = lanczos(loss, w, k=1, iterations=4, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(float(res["eigenvalues"][0]))
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_curve_model_step_leaves_the_network_untouched(fam):
    model = _model(fam)
    model.train()
    snap = _snapshot(model)
    space = WeightSpace(model)
    w = space.read(model)
    curve = Curve(w, w + 0.01, kind="bezier", bends=3)
    cm = CurveModel(model, curve, adapter=fam.adapter)
    cm.train()
    opt = torch.optim.SGD(curve.parameters(), lr=0.01)
    for b in fam.batches[:2]:
        opt.zero_grad()
        args, kwargs = fam.adapter.inputs(b)
        loss = fam.adapter.compute_loss(cm(*args, **kwargs), fam.adapter.targets(b))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in curve.parameters() if p.requires_grad)
        opt.step()
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_trainer_with_swa(fam):
    model = _model(fam)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    swa = SWA(model)
    hist = Trainer(
        model,
        opt,
        fam.batches,
        2,
        adapter=fam.adapter,
        callbacks=[SWACallback(swa, start=0, bn_loader=fam.batches)],
        evaluation=EvaluationPolicy({"val": fam.batches}),
    ).fit(progress=False)
    assert swa.n >= 1
    assert all(math.isfinite(h["train_loss"]) for h in hist)
