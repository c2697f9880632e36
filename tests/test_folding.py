"""Folding the first affine layer on points of an affine subspace, and channels-last inputs: the same numbers
as evaluating every point as it is (oracle: the unfolded engine and a plain per-point loop in float64), on the
model families users bring; the model left as it was."""

import math

import pytest
import torch
from torch import nn

from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.errors import InputError
from valleys.evaluation.engine import LossError, Placement, VmapPolicy, clear_vmap_cache, evaluate_many
from valleys.evaluation.folding import AffinePoints, FirstLayer
from valleys.evaluation.grid import evaluate_points
from valleys.zoo.models import CNN1D


class DictModel(nn.Module):
    """Dict batches with a mask; returns a tuple (logits, aux)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x, mask):
        h = torch.tanh(self.inp(x)) * mask[..., None]
        return self.out(h.sum(1) / mask.sum(1, keepdim=True)), h


class Shared(nn.Module):
    """The first layer is called twice: on the input, then on its own (weight-dependent) output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lin(torch.relu(self.lin(x))))


class Scaled(nn.Module):
    """A learned input scale before the first Linear: its input depends on the weights, nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.lin = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin(x * self.scale)


def _family(name):
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 4))  # fan-in 64 >= 16 x 3
        x = torch.randn(30, 1, 8, 8, generator=g)
    elif name == "cnn-bn":
        model = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, groups=2),
            nn.Flatten(),
            nn.Linear(6 * 4 * 4, 4),
        )
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2)
        x = torch.randn(30, 2, 6, 6, generator=g)
    elif name == "conv1d-unsqueeze":
        model = CNN1D(24, 4, channels=5)  # its forward unsqueezes the input: a view, still foldable
        x = torch.randn(30, 24, generator=g)
    elif name == "grouped-first":
        model = nn.Sequential(nn.Conv1d(4, 6, 3, groups=2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 6, 4))
        x = torch.randn(30, 4, 8, generator=g)
    elif name == "shared":
        model = Shared()
        x = torch.randn(30, 8, generator=g)
    else:
        raise AssertionError(name)
    y = torch.randint(0, 4 if name not in ("shared",) else 3, (30,), generator=g)
    return model.eval(), [(x[:17], y[:17]), (x[17:], y[17:])]


def _plane(model, scale=0.3, n=4, seed=1):
    space = WeightSpace(model)
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(2, space.size, generator=g) * scale
    ax = torch.linspace(-1, 1, n, dtype=torch.float64)
    coords = torch.cartesian_prod(ax, ax)
    return space, AffinePoints(basis, coords, space.read(model))


def _oracle(model, space, points, loader, adapter=None):
    """Per point, written into a float64 copy of the model: the mean cross-entropy over the loader."""
    adapter = adapter or ModelAdapter()
    m64 = __import__("copy").deepcopy(model).double()
    s64 = WeightSpace(m64)
    out = []
    for w in points:
        s64.write(m64, w.double())
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                args, kwargs = adapter.inputs(batch)
                args = tuple(a.double() if a.is_floating_point() else a for a in args)
                kwargs = {k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()}
                pred = adapter.prediction(m64(*args, **kwargs))
                total += float(nn.functional.cross_entropy(pred, adapter.targets(batch), reduction="sum"))
                n += len(pred)
        out.append(total / n)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("family", ["mlp", "cnn-bn", "conv1d-unsqueeze", "grouped-first", "shared"])
@pytest.mark.parametrize("batched", [False, True])
def test_folded_grid_equals_the_points_evaluated_as_they_are(family, batched):
    model, loader = _family(family)
    space, pts = _plane(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clear_vmap_cache()
    folded = evaluate_many(
        model, pts, {"d": loader}, reduce=LossError(ModelAdapter()), bn="keep", batched=VmapPolicy(batched, fold=True)
    )
    plain = evaluate_many(
        model,
        list(pts),
        {"d": loader},
        reduce=LossError(ModelAdapter()),
        bn="keep",
        batched=VmapPolicy(batched, fold=False),
    )
    assert folded.folded and not plain.folded
    got = torch.tensor(folded.value["d"]["loss"], dtype=torch.float64)
    ref = torch.tensor(plain.value["d"]["loss"], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, _oracle(model, space, pts, loader), rtol=1e-5, atol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in vars(m) for m in model.modules())
    assert not model.training


def test_dict_batches_with_masks_and_tuple_outputs_fold_too():
    g = torch.Generator().manual_seed(3)
    x, mask = torch.randn(20, 5, 6, generator=g), (torch.rand(20, 5, generator=g) > 0.3).float()
    mask[:, 0] = 1
    y = torch.randint(0, 3, (20,), generator=g)
    loader = [({"x": x[:12], "mask": mask[:12]}, y[:12]), ({"x": x[12:], "mask": mask[12:]}, y[12:])]
    model = DictModel().eval()
    adapter = ModelAdapter(output=0)
    space, pts = _plane(model)
    res = evaluate_many(
        model,
        pts,
        {"d": loader},
        reduce=LossError(adapter),
        adapter=adapter,
        bn="keep",
        batched=VmapPolicy(False, fold=True),
    )
    assert res.folded
    torch.testing.assert_close(
        torch.tensor(res.value["d"]["loss"], dtype=torch.float64),
        _oracle(model, space, pts, loader, adapter),
        rtol=1e-5,
        atol=0,
    )


def test_the_first_layer_is_found_only_where_folding_is_exact():
    x = torch.randn(4, 8)
    scaled = Scaled()
    assert FirstLayer.find(scaled, WeightSpace(scaled), (x,), {}) is None  # its input depends on the weights
    lstm = nn.Sequential(nn.LSTM(8, 8, batch_first=True))
    assert FirstLayer.find(lstm, WeightSpace(lstm), (x[None],), {}) is None
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    found = FirstLayer.find(mlp, WeightSpace(mlp), (x,), {})
    assert found is not None and found.module is mlp[0] and found.name == "0"
    head_only = WeightSpace(mlp, ["2.weight", "2.bias"])  # the first layer does not move with the grid
    assert FirstLayer.find(mlp, head_only, (x,), {}) is None
    hooked = nn.Sequential(nn.Linear(8, 2))
    hooked[0].register_forward_hook(lambda m, i, o: None)
    assert FirstLayer.find(hooked, WeightSpace(hooked), (x,), {}) is None


@pytest.mark.parametrize("timed", [False, True])
def test_auto_folds_small_families_times_large_ones_and_skips_too_few_points(timed, monkeypatch):
    """Below PLAN_MIN_POINTS points the first layer is folded without timing; from it on, the four modes are
    timed (here forced with a threshold of 1); either way the numbers of the unfolded engine."""
    if timed:
        monkeypatch.setattr("valleys.evaluation.engine.PLAN_MIN_POINTS", 1)
    model, loader = _family("mlp")
    space, pts = _plane(model, n=3)
    clear_vmap_cache()
    auto = evaluate_many(model, pts, {"d": loader}, reduce=LossError(ModelAdapter()), bn="keep")
    assert auto.folded or timed  # untimed: folded; timed: whichever mode was faster
    ref = evaluate_points(model, list(pts), {"d": loader}, bn="keep", batched=VmapPolicy(fold=False))
    got = torch.tensor(auto.value["d"]["loss"], dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(ref.loss("d"), dtype=torch.float64), rtol=1e-6, atol=0)
    few = evaluate_many(model, pts[:3], {"d": loader}, reduce=LossError(ModelAdapter()), bn="keep")
    assert not few.folded  # 3 points on a 2-D plane: r + 1 = 3 products would cost as much as the points


def test_affine_points_are_a_sequence_of_the_points_and_refuse_bad_shapes():
    basis, origin = torch.randn(2, 7, dtype=torch.float64), torch.randn(7)
    coords = torch.tensor([[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]])
    pts = AffinePoints(basis, coords, origin)
    assert len(pts) == 3 and pts.rank == 2 and pts.dtype == torch.float32
    for i, w in enumerate(pts):
        want = (origin.double() + coords[i].double() @ basis).float()
        assert torch.equal(w, want) and torch.equal(pts[i], want)
    assert len(pts[1:]) == 2 and torch.equal(pts[1:][0], pts[1])
    assert torch.equal(AffinePoints(basis, coords)[0], (coords[0].double() @ basis))
    with pytest.raises(InputError, match="coords must be"):
        AffinePoints(basis, torch.zeros(3, 3))
    with pytest.raises(InputError, match="origin must be"):
        AffinePoints(basis, coords, torch.zeros(6))
    with pytest.raises(InputError, match="basis must be"):
        AffinePoints(torch.zeros(7), coords)
    model = nn.Linear(2, 2)
    with pytest.raises(InputError, match="NaN"):
        evaluate_many(
            model,
            AffinePoints(torch.full((1, 6), math.nan), torch.zeros(5, 1), torch.zeros(6)),
            {"d": [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))]},
            reduce=LossError(ModelAdapter()),
        )


def test_channels_last_evaluation_gives_the_same_numbers_and_gives_the_parameters_their_storage_back():
    model, loader = _family("cnn-bn")
    before = [(p.data_ptr(), p.stride(), p.detach().clone()) for p in model.parameters()]
    space, pts = _plane(model)
    runs = {}
    for cl in (True, False):
        for fold in (True, False):
            policy = VmapPolicy(False, fold=fold, channels_last=cl)
            runs[(cl, fold)] = torch.tensor(
                evaluate_points(model, pts, {"d": loader}, bn="keep", batched=policy).loss("d")
            )
    for key, got in runs.items():
        torch.testing.assert_close(got, runs[(False, False)], rtol=1e-6, atol=0, msg=str(key))
    for p, (ptr, stride, value) in zip(model.parameters(), before, strict=True):
        assert p.data_ptr() == ptr and p.stride() == stride and torch.equal(p, value)


def test_channels_last_inputs_give_the_same_predictions():
    model, loader = _family("cnn-bn")
    adapter = ModelAdapter()
    plain, cl = Placement("cpu"), Placement("cpu", channels_last=True)
    a, _ = plain.inputs(adapter, loader[0])
    b, _ = cl.inputs(adapter, loader[0])
    assert b[0].is_contiguous(memory_format=torch.channels_last) and torch.equal(a[0], b[0])
    with torch.no_grad():
        torch.testing.assert_close(model(*b), model(*a), rtol=1e-5, atol=1e-6)


def test_loss_error_of_stacked_points_equals_point_by_point_with_nan_rows():
    g = torch.Generator().manual_seed(4)
    preds = torch.randn(5, 20, 7, generator=g)
    preds[2, 3, 1] = math.nan
    y = torch.randint(0, 7, (20,), generator=g)
    stacked, single = LossError(ModelAdapter()), LossError(ModelAdapter())
    for r in (stacked, single):
        r.begin(["d"])
    stacked.add_stacked(list(range(5)), "d", 0, preds, y)
    for j in range(5):
        single.add(j, "d", 0, preds[j], y)
    a, b = stacked.result(5)["d"], single.result(5)["d"]
    assert math.isnan(a["loss"][2]) and math.isnan(b["loss"][2]) and math.isnan(a["error"][2])
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(
        torch.tensor([a["loss"][i] for i in keep]), torch.tensor([b["loss"][i] for i in keep]), rtol=1e-6, atol=0
    )
    assert [a["error"][i] for i in keep] == [b["error"][i] for i in keep]
