"""The many-weight-vectors engine and the thin layers over it, against hand-written oracles."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn

from conftest import BNCNN, loader, mlp
from valleys.core.adapter import AdapterError, ModelAdapter
from valleys.core.batchnorm import recompute_bn
from valleys.core.weights import WeightSpace
from valleys.errors import InputError, MissingBNLoaderError, NoWeightsError
from valleys.evaluation import engine
from valleys.evaluation.engine import BNPolicy, LossError, VmapPolicy, evaluate_many
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.predict import bma, evaluate
from valleys.geometry.paths import evaluate_path, segment
from valleys.methods.ensembles import snapshot


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def assert_same(model, before):
    sd, modes = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert [m.training for m in model.modules()] == modes


def perturbed(model, n, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = WeightSpace(model).read(model)
    return [w0 + scale * torch.randn(w0.shape, generator=g) for _ in range(n)]


def hand_bma(model, ws, batches, forward):
    """Oracle: load each vector into a copy, softmax in float64, average."""
    copy_ = copy.deepcopy(model).eval()
    space = WeightSpace(copy_)
    total = None
    for w in ws:
        space.write(copy_, w)
        with torch.no_grad():
            p = torch.cat([torch.softmax(forward(copy_, b).double(), -1) for b in batches])
        total = p if total is None else total + p
    return total / len(ws)


# ---------------------------------------------------------------------------------------------- GRU (no vmap)
class GRUClassifier(nn.Module):
    def __init__(self, d=3, h=8, k=3):
        super().__init__()
        self.gru = nn.GRU(d, h, batch_first=True)
        self.head = nn.Linear(h, k)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@pytest.fixture
def seq_data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, 3, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def test_gru_falls_back_to_the_loop_with_one_warning(seq_data):
    engine.clear_vmap_cache()
    torch.manual_seed(0)
    model = GRUClassifier()
    ws = perturbed(model, 5)
    before = state(model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        auto = bma(model, ws, loader(seq_data, bs=16), return_probs=True, batched=VmapPolicy("auto", 3))
    vmap_warnings = [w for w in rec if "vmap" in str(w.message)]
    assert len(vmap_warnings) == 1 and not auto.batched
    loop = bma(model, ws, loader(seq_data, bs=16), return_probs=True, batched=VmapPolicy(False, 3))
    assert torch.equal(auto.probs, loop.probs)
    oracle = hand_bma(model, ws, list(loader(seq_data, bs=16)), lambda m, b: m(b[0]))
    assert torch.allclose(auto.probs, oracle, rtol=0, atol=1e-12)
    assert_same(model, before)
    # evaluate_points on a fresh GRU: one warning, same numbers as the loop and a hand cross-entropy
    other = GRUClassifier()
    pts = perturbed(other, 3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = evaluate_points(other, pts, {"test": loader(seq_data, bs=16)}, batched=True)
    assert len([w for w in rec if "vmap" in str(w.message)]) == 1 and not res.batched
    ref = evaluate_points(other, pts, {"test": loader(seq_data, bs=16)}, batched=False)
    assert res.per_loader["test"] == ref.per_loader["test"]
    c = copy.deepcopy(other).eval()
    WeightSpace(c).write(c, pts[1])
    x, y = seq_data.tensors
    with torch.no_grad():  # the same batches of 16 as the loader: a GRU's float32 output depends on the batch size
        logits = torch.cat([c(x[i : i + 16]) for i in range(0, len(x), 16)])
        ce = float(nn.functional.cross_entropy(logits.double(), y))
    assert res.loss("test")[1] == pytest.approx(ce, abs=1e-12)


# ---------------------------------------------------------------------------------------------- transformer, dicts
class MaskedTransformer(nn.Module):
    def __init__(self, d=8, k=3):
        super().__init__()
        self.proj = nn.Linear(4, d)
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d, k)

    def forward(self, input, mask):
        h = self.enc(self.proj(input), src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1))


def dict_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(3):
        x = torch.randn(10, 5, 4, generator=g)
        lengths = torch.randint(1, 6, (10,), generator=g)
        mask = torch.arange(5)[None, :] >= lengths[:, None]
        out.append({"input": x, "mask": mask, "label": torch.randint(0, 3, (10,), generator=g)})
    return out


def test_transformer_with_dict_batches_and_masks():
    torch.manual_seed(0)
    model = MaskedTransformer()
    batches = dict_batches()
    before = state(model)
    fwd = lambda m, b: m(b["input"], b["mask"])  # noqa: E731
    with torch.no_grad():
        probs = torch.cat([torch.softmax(fwd(model.eval(), b).double(), -1) for b in batches])
    model.train()
    before = state(model)
    y = torch.cat([b["label"] for b in batches])
    one = evaluate(model, batches)
    assert one.nll == pytest.approx(float(-probs[torch.arange(len(y)), y].log().mean()), abs=1e-12)
    ws = perturbed(model, 3)
    res = bma(model, ws, batches, return_probs=True, batched=False)
    assert torch.allclose(res.probs, hand_bma(model, ws, batches, fwd), rtol=0, atol=1e-12)
    same = bma(model, [snapshot(model)], batches)
    assert same.metrics.nll == pytest.approx(one.nll, abs=1e-12)
    pts = evaluate_points(model, ws, {"test": batches}, batched=False)
    c = copy.deepcopy(model).eval()
    WeightSpace(c).write(c, ws[2])
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(torch.cat([fwd(c, b) for b in batches]).double(), y))
    assert pts.loss("test")[2] == pytest.approx(ce, abs=1e-12) and pts.bn == "none (no BatchNorm)"
    assert_same(model, before)


# ---------------------------------------------------------------------------------------------- tuple outputs
class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        out = self.net(x)
        return out, out.norm()


def test_tuple_output_needs_output_index(vec_data):
    torch.manual_seed(0)
    model = TupleNet()
    before = state(model)
    with pytest.raises(AdapterError, match="output="):
        evaluate(model, loader(vec_data))
    with pytest.raises(AdapterError, match="output="):
        evaluate_points(model, perturbed(model, 2), {"test": loader(vec_data)}, batched=False)
    with pytest.raises(AdapterError, match="output="):  # an adapter error is the user's, not a vmap fallback
        evaluate_points(model, perturbed(model, 2), {"test": loader(vec_data)}, batched="auto")
    ad = ModelAdapter(output=0)
    res = evaluate(model, loader(vec_data), adapter=ad)
    ref = evaluate(model.net, loader(vec_data))
    assert res.nll == ref.nll
    ws = perturbed(model, 2)
    got = bma(model, ws, loader(vec_data), adapter=ad, batched=False, return_probs=True)
    assert torch.allclose(
        got.probs, hand_bma(model, ws, list(loader(vec_data)), lambda m, b: m(b[0])[0]), rtol=0, atol=1e-12
    )
    assert_same(model, before)


# ---------------------------------------------------------------------------------------------- regression
class GaussianHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x):
        out = self.net(x)
        return torch.stack([out[:, 0], nn.functional.softplus(out[:, 1]) + 1e-3], dim=1)


def hand_nll(model, x, y):
    with torch.no_grad():
        out = model.eval()(x).double()
    mu, var = out[:, 0], out[:, 1]
    return float((0.5 * torch.log(2 * math.pi * var) + (y.double() - mu) ** 2 / (2 * var)).mean())


def test_regression_through_points_and_path():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 60).unsqueeze(1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(60)
    data = torch.utils.data.TensorDataset(x, y)
    model = GaussianHead()
    before = state(model)
    ad = ModelAdapter(loss="gaussian")
    ws = perturbed(model, 3, scale=0.2)
    res = evaluate_points(model, ws, {"train": loader(data, bs=16)}, adapter=ad, batched=False)
    c = copy.deepcopy(model)
    WeightSpace(c).write(c, ws[1])
    assert res.loss("train")[1] == pytest.approx(hand_nll(c, x, y), abs=1e-6)
    assert all(math.isnan(e) for e in res.error("train"))
    vm = evaluate_points(model, ws, {"train": loader(data, bs=16)}, adapter=ad, batched=True)
    assert vm.batched
    assert vm.loss("train") == pytest.approx(res.loss("train"), abs=1e-6)
    path = evaluate_path(
        model,
        segment(ws[0], ws[2]),
        [0.0, 0.5, 1.0],
        train_loader=loader(data, bs=16),
        test_loader=loader(data, bs=16),
        adapter=ad,
    )
    WeightSpace(c).write(c, ws[2])
    assert path.train_loss[-1] == pytest.approx(hand_nll(c, x, y), abs=1e-6)
    assert path.test_nll[-1] == pytest.approx(path.train_loss[-1], abs=1e-12)
    assert math.isnan(path.test_error[0]) and path.bn == "none (no BatchNorm)"
    json.dumps(engine.to_json(path), allow_nan=False)
    assert_same(model, before)


# ---------------------------------------------------------------------------------------------- BatchNorm
def test_bn_loader_shorthand_equals_the_recompute_policy(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    ws = perturbed(model, 3)
    bn_loader = loader(img_data, bs=10)
    short = bma(model, ws, loader(img_data), bn=bn_loader, return_probs=True, batched=False)
    policy = bma(model, ws, loader(img_data), bn=BNPolicy("recompute", bn_loader), return_probs=True, batched=False)
    assert torch.equal(short.probs, policy.probs) and short.to_json() == policy.to_json()
    # the oracle: each vector written into a copy, its statistics recomputed on the BN loader, softmax averaged
    x, _ = img_data.tensors
    want = torch.zeros(len(x), 3, dtype=torch.float64)
    for w in ws:
        c = copy.deepcopy(model)
        WeightSpace(c).write(c, w)
        recompute_bn(c, bn_loader)
        with torch.no_grad():
            want += torch.softmax(c.eval()(x).double(), -1) / len(ws)
    assert torch.allclose(short.probs, want, rtol=0, atol=1e-6)
    # a policy with num_batches recomputes on fewer batches: a different answer, so the shorthand is not it
    first = bma(model, ws, loader(img_data), bn=BNPolicy("recompute", bn_loader, 1), return_probs=True)
    assert not torch.allclose(first.probs, short.probs, atol=1e-6)
    grid_short = evaluate_points(model, ws, {"test": loader(img_data)}, bn=bn_loader, batched=False)
    grid_policy = evaluate_points(model, ws, {"test": loader(img_data)}, bn=BNPolicy("recompute", bn_loader))
    assert grid_short.loss("test") == grid_policy.loss("test") and grid_short.bn == "recompute"
    # a path recomputes on its training loader by default: the same as naming it
    kw = dict(train_loader=loader(img_data), test_loader=loader(img_data))
    default = evaluate_path(model, segment(ws[0], ws[1]), [0.0, 1.0], **kw)
    named = evaluate_path(model, segment(ws[0], ws[1]), [0.0, 1.0], bn=loader(img_data), **kw)
    assert default.test_nll == named.test_nll and default.bn == named.bn == "recompute"


def test_flat_vectors_on_a_bn_model_without_a_bn_loader_raise_before_any_forward(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    ws = perturbed(model, 2)
    before = state(model)
    for run in (
        lambda: bma(model, ws, loader(img_data)),
        lambda: bma(model, iter(ws), loader(img_data), batched=True),
        lambda: evaluate_points(model, ws, {"test": loader(img_data)}),
        lambda: evaluate_many(model, torch.stack(ws), {"t": loader(img_data)}, reduce=LossError(ModelAdapter())),
        lambda: bma(model, [snapshot(model), ws[0]], loader(img_data), batched=False),  # a state dict first
    ):
        with pytest.raises(MissingBNLoaderError, match="bn=train_loader") as info:
            run()
        assert isinstance(info.value, ValueError)
        assert calls == []  # refused before any forward pass
        assert_same(model, before)
    # state dicts carry their own statistics: no loader needed
    assert bma(model, [snapshot(model)], loader(img_data)).num_samples == 1
    with pytest.raises(NoWeightsError, match="bma: no samples") as info:
        bma(model, [], loader(img_data))
    assert isinstance(info.value, ValueError)


def test_bn_recompute_vs_keep(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    model.train()
    ws = perturbed(model, 2)
    before = state(model)
    rec = evaluate_points(model, ws, {"test": loader(img_data)}, bn=loader(img_data))
    keep = evaluate_points(model, ws, {"test": loader(img_data)}, bn="keep", batched=False)
    assert rec.bn == "recompute" and keep.bn == "keep"
    x, y = img_data.tensors
    for i, w in enumerate(ws):
        c = copy.deepcopy(model)
        WeightSpace(c).write(c, w)
        with torch.no_grad():
            kept = float(nn.functional.cross_entropy(c.eval()(x).double(), y))
        recompute_bn(c, loader(img_data))
        with torch.no_grad():
            recomputed = float(nn.functional.cross_entropy(c.eval()(x).double(), y))
        assert keep.loss("test")[i] == pytest.approx(kept, abs=1e-12)
        assert rec.loss("test")[i] == pytest.approx(recomputed, abs=1e-12)
    assert rec.loss("test") != keep.loss("test")
    many = evaluate_many(
        model,
        torch.stack(ws),
        {"test": loader(img_data)},
        reduce=LossError(ModelAdapter()),
        bn=BNPolicy("recompute", loader(img_data)),
    )
    assert many.value["test"]["loss"] == rec.loss("test") and many.bn == "recompute"
    assert set(many.to_json()) >= {"value", "bn", "batched", "num_points"}
    with pytest.raises(MissingBNLoaderError, match="bn=train_loader"):
        evaluate_many(model, ws, {"test": loader(img_data)}, reduce=LossError(ModelAdapter()))
    assert_same(model, before)


# ---------------------------------------------------------------------------------------------- probe cache
def test_probe_runs_once_per_model_and_input_shape(vec_data, monkeypatch):
    engine.clear_vmap_cache()
    calls = []
    real = engine.vmap_is_faster

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "vmap_is_faster", counting)
    torch.manual_seed(0)
    model = mlp()
    ws = perturbed(model, 4)
    a = bma(model, ws, loader(vec_data), batched=VmapPolicy("auto", 4))
    b = bma(model, ws, loader(vec_data), batched=VmapPolicy("auto", 4))
    assert len(calls) == 1 and a.batched == b.batched
    evaluate_points(model, ws, {"test": loader(vec_data)}, batched=VmapPolicy("auto", 4))
    assert len(calls) == 1  # same model, chunk and input shape
    bma(model, ws, loader(vec_data, bs=10), batched=VmapPolicy("auto", 4))
    assert len(calls) == 2  # a new input shape is probed again
    bma(mlp(), ws, loader(vec_data), batched=VmapPolicy("auto", 4))
    assert len(calls) == 3  # another model


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_any_work(vec_data):
    model = mlp()
    ws = perturbed(model, 2)
    with pytest.raises(ValueError, match="at least one loader"):
        evaluate_many(model, ws, {}, reduce=LossError(ModelAdapter()))
    with pytest.raises(ValueError, match="BatchNorm policy"):
        evaluate_many(model, ws, {"t": loader(vec_data)}, reduce=LossError(ModelAdapter()), bn="stale")
    with pytest.raises(ValueError, match="length"):
        evaluate_many(model, [ws[0][:-1]], {"t": loader(vec_data)}, reduce=LossError(ModelAdapter()))
    with pytest.raises(NoWeightsError, match="no weights"):
        evaluate_many(model, [], {"t": loader(vec_data)}, reduce=LossError(ModelAdapter()))
    with pytest.raises(ValueError, match="batched"):
        evaluate_many(model, ws, {"t": loader(vec_data)}, reduce=LossError(ModelAdapter()), batched="yes")


class MaskedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, input, mask):
        return self.head(self.bn((input * (~mask).float().unsqueeze(-1)).sum(1)))


def test_recompute_bn_keeps_every_dict_key():
    batches = dict_batches()
    model = MaskedBN()
    recompute_bn(model, batches)
    feats = torch.cat([(b["input"] * (~b["mask"]).float().unsqueeze(-1)).sum(1) for b in batches])
    assert torch.allclose(model.bn.running_mean, feats.mean(0), atol=1e-6)
    assert torch.allclose(model.bn.running_var, feats.var(0), atol=1e-5)
    res = evaluate_points(model, perturbed(model, 2), {"test": batches}, bn=batches, batched=False)
    assert res.bn == "recompute" and all(math.isfinite(v) for v in res.loss("test"))


def test_per_point_predictions_and_state_dicts(vec_data):
    from valleys.evaluation.engine import Predictions

    torch.manual_seed(0)
    model = mlp()
    before = state(model)
    ws = perturbed(model, 2)
    other = copy.deepcopy(model)
    WeightSpace(other).write(other, ws[0])
    res = evaluate_many(
        model, [ws[1], snapshot(other)], {"test": loader(vec_data)}, reduce=Predictions(), batched=False
    )
    c = copy.deepcopy(model)
    WeightSpace(c).write(c, ws[1])
    with torch.no_grad():  # the same batches, so the same kernels: equal bit for bit
        for i, net in enumerate((c, other)):
            assert torch.equal(res.value["test"][i], torch.cat([net(b[0]) for b in loader(vec_data)]))
    assert res.num_points == 2 and res.bn == "none (no BatchNorm)" and not res.batched
    assert_same(model, before)


def test_vmap_failing_on_a_later_batch_gives_a_clear_error_naming_batched_false():
    """The vmap decision is taken on the first batch; a model that vmap cannot run on a later batch must not
    crash inside torch nor feed a half-evaluated group: a RuntimeError names the setting, and the loop works."""

    class ShapeDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            if x.shape[0] == 7:  # data-dependent Python on a batched tensor: vmap has no rule for .item()
                return self.lin(x) * float(self.lin.weight.sum())
            return self.lin(x)

    torch.manual_seed(0)
    model = ShapeDependent()
    x, y = torch.randn(17, 3), torch.randint(0, 2, (17,))
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    space = WeightSpace(model)
    w = space.read(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="batched=False"):
        evaluate_many(model, [w, w * 0.5], {"data": batches}, reduce=LossError(ModelAdapter()), batched=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    res = evaluate_many(model, [w, w * 0.5], {"data": batches}, reduce=LossError(ModelAdapter()), batched=False)
    with torch.no_grad():
        expected = (
            float(
                nn.functional.cross_entropy(model(x[:10]), y[:10], reduction="sum")
                + nn.functional.cross_entropy(model(x[10:]), y[10:], reduction="sum")
            )
            / 17
        )
    assert res.value["data"]["loss"][0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_is_evaluated_there_from_cpu_loaders(img_data):
    torch.manual_seed(0)
    cpu = BNCNN()
    ws = perturbed(cpu, 3)
    gpu = copy.deepcopy(cpu).cuda()
    bn, test = loader(img_data, bs=10), loader(img_data)
    want = bma(cpu, ws, test, bn=bn, return_probs=True, batched=False)
    got = bma(gpu, [w.cuda() for w in ws], test, bn=bn, return_probs=True, batched=False)
    assert torch.allclose(got.probs, want.probs, atol=1e-5)
    assert evaluate(gpu, test).nll == pytest.approx(evaluate(cpu, test).nll, abs=1e-5)
    grid = evaluate_points(gpu, [w.cuda() for w in ws], {"test": test}, bn=bn)
    assert grid.loss("test") == pytest.approx(evaluate_points(cpu, ws, {"test": test}, bn=bn).loss("test"), abs=1e-5)
    assert next(gpu.parameters()).is_cuda


# ---------------------------------------------------------------------------------------------- chunk size
def _chunks_seen(monkeypatch):
    sizes = []
    real = engine._vmap_group

    def spy(model, space, stacked, *args, **kwargs):
        sizes.append(len(stacked))
        return real(model, space, stacked, *args, **kwargs)

    monkeypatch.setattr(engine, "_vmap_group", spy)
    return sizes


def test_auto_chunk_grows_for_a_small_model_by_its_bytes_and_gives_the_loops_numbers(vec_data, monkeypatch):
    engine.clear_vmap_cache()
    torch.manual_seed(0)
    model = mlp()  # 5-16-3: P = 147
    ws = perturbed(model, 150)
    sizes = _chunks_seen(monkeypatch)
    # one vector's bytes by hand: its weights plus every submodule's output on a batch of 25 (Linear 16,
    # ReLU 16, Linear 3 and the Sequential's own 3 per example), float32
    per = 4 * (147 + 25 * (16 + 16 + 3 + 3))
    assert engine._pass_bytes(model, (next(iter(loader(vec_data)))[0],), {}) == per - 4 * 147
    monkeypatch.setattr(engine, "VMAP_CHUNK_BYTES", 20 * per + 3)
    got = evaluate_points(model, ws, {"test": loader(vec_data)}, batched=True)
    assert sizes == [20] * 7 + [10]  # 150 points: seven chunks of 20, then the rest
    ref = evaluate_points(model, ws, {"test": loader(vec_data)}, batched=False)
    assert got.batched and not ref.batched
    assert got.loss("test") == pytest.approx(ref.loss("test"), rel=1e-6)
    assert got.error("test") == ref.error("test")
    sizes.clear()
    engine.clear_vmap_cache()
    monkeypatch.setattr(engine, "VMAP_CHUNK_BYTES", 10**9)
    evaluate_points(model, ws, {"test": loader(vec_data)}, batched=True)
    assert sizes == [engine.VMAP_MAX_CHUNK, 150 - engine.VMAP_MAX_CHUNK]  # capped
    sizes.clear()
    evaluate_points(model, ws[:99], {"test": loader(vec_data)}, batched=True)
    assert set(sizes[:-1]) == {engine.VMAP_CHUNK}  # fewer than 100 points: not worth measuring, chunk 8
    sizes.clear()
    evaluate_points(model, ws, {"test": loader(vec_data)}, batched=VmapPolicy(True, 16))
    assert set(sizes[:-1]) == {16}  # a chunk the caller gives is kept
    with pytest.raises(InputError, match="chunk must be an integer of at least 1 or 'auto'"):
        VmapPolicy(True, "big")


def test_one_point_is_evaluated_by_the_loop_without_a_timed_choice(vec_data, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("a single point must not be timed vmap-or-loop (its rounding would vary by run)")

    monkeypatch.setattr(engine, "vmap_is_faster", no_probe)
    engine.clear_vmap_cache()
    model = mlp()
    ws = perturbed(model, 1)
    one = evaluate_points(model, ws, {"test": loader(vec_data)})
    assert not one.batched
    single = evaluate_many(model, ws[0], {"test": loader(vec_data)}, reduce=LossError(ModelAdapter()))
    assert not single.batched and single.num_points == 1
