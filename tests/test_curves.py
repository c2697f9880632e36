import copy
import math
import warnings

import pytest
import torch
from torch import nn

from conftest import BNCNN, DropoutBNMLP, TinyTransformer, loader, mlp
from valleys.core.adapter import ModelAdapter
from valleys.core.weights import WeightSpace, WeightSpaceError
from valleys.geometry.curves import Curve, CurveModel, bezier_coefficients, polychain_coefficients
from valleys.geometry.paths import arc_length_average, evaluate_path, segment
from valleys.training.trainer import Trainer
from valleys.zoo.data import make_loader


def test_coefficients_sum_to_one_and_known_values():
    for n in (2, 3, 5):
        for t in torch.linspace(0, 1, 17):
            assert float(bezier_coefficients(t, n).sum()) == pytest.approx(1.0, abs=1e-12)
            assert float(polychain_coefficients(t, n).sum()) == pytest.approx(1.0, abs=1e-12)
    assert bezier_coefficients(0.5, 3).tolist() == [0.25, 0.5, 0.25]
    assert bezier_coefficients(0.0, 3).tolist() == [1.0, 0.0, 0.0]
    assert bezier_coefficients(1.0, 3).tolist() == [0.0, 0.0, 1.0]
    assert polychain_coefficients(0.5, 3).tolist() == [0.0, 1.0, 0.0]
    assert polychain_coefficients(0.25, 3).tolist() == [0.5, 0.5, 0.0]
    assert bezier_coefficients(0.3, 4).tolist() == pytest.approx([0.343, 0.441, 0.189, 0.027])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"t must be a number in \[0, 1\]"):
            bezier_coefficients(bad, 3)


def test_curve_construction_errors_and_segment_initialisation():
    a, b = torch.zeros(6), torch.ones(6)
    with pytest.raises(ValueError, match="at least 2 control points"):
        Curve(a, b, bends=1)
    with pytest.raises(ValueError, match="unknown curve kind"):
        Curve(a, b, kind="spline")
    with pytest.raises(WeightSpaceError, match="equal length"):
        Curve(a, torch.ones(7))
    c = Curve(a, b, bends=4, sizes=[2, 4])
    assert torch.allclose(c.inner_points(), torch.tensor([[1 / 3] * 6, [2 / 3] * 6]))
    assert [tuple(p.shape) for p in c.inner] == [(2, 2), (2, 4)]
    with pytest.raises(WeightSpaceError, match="add up"):
        Curve(a, b, sizes=[2, 3])
    for t in (0.0, 0.3, 1.0):
        assert torch.allclose(c.point(t), torch.full((6,), t), atol=1e-6)  # starts on the segment


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_derivative_matches_finite_differences(kind):
    torch.manual_seed(0)
    c = Curve(torch.randn(5), torch.randn(5), kind=kind, bends=4)
    c.set_inner(c.inner_points() + torch.randn(2, 5))
    for t in (0.2, 0.55, 0.8):
        h = 1e-4
        fd = (c.point(t + h).double() - c.point(t - h).double()) / (2 * h)
        assert torch.allclose(c.derivative(t).double(), fd, atol=1e-2)


def _pair(make):
    torch.manual_seed(1)
    a = make()
    torch.manual_seed(2)
    b = make()
    return a, b


@pytest.mark.parametrize(
    "make,x",
    [
        (mlp, lambda: torch.randn(4, 5)),
        (BNCNN, lambda: torch.randn(4, 1, 6, 6)),
        (TinyTransformer, lambda: torch.randint(0, 11, (4, 3))),
    ],
)
def test_curve_model_reproduces_both_endpoints(make, x):
    a, b = _pair(make)
    if make is BNCNN:  # give the endpoints distinct, non-default BN statistics
        for m, shift in ((a, 1.0), (b, -2.0)):
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.fill_(shift)
                    mod.running_var.fill_(2.0)
    a.eval(), b.eval()
    space = WeightSpace(a)
    inputs = x()
    curve = Curve(space.read(a), space.read(b), sizes=[s.numel for s in space.slots])
    curve.set_inner(curve.inner_points() + 0.3)  # a bent curve: the ends must still be exact
    base = make()
    base.load_state_dict(a.state_dict())
    cm = CurveModel(base, curve).eval()
    with torch.no_grad():
        assert torch.allclose(cm(inputs, t=0.0), a(inputs), atol=1e-5)
        for name, buf in b.named_buffers():  # t = 1 with B's own statistics, in the curve model's own copy
            cm.buffers_copy[name].copy_(buf)
        assert torch.allclose(cm(inputs, t=1.0), b(inputs), atol=1e-5)
        assert torch.equal(base.bn1.running_mean, a.bn1.running_mean) if make is BNCNN else True


def _learnable(make):
    """Labels that depend on the inputs, so both endpoints and the curve can fit them."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(160, 5, generator=g) if make is DropoutBNMLP else torch.randn(160, 1, 6, 6, generator=g)
    proj = torch.randn(x[0].numel(), 3, generator=g)
    return torch.utils.data.TensorDataset(x, (x.flatten(1) @ proj).argmax(1))


@pytest.mark.parametrize("make", [DropoutBNMLP, BNCNN])
def test_curve_training_lowers_the_midpoint_loss_and_leaves_base_untouched(make):
    ds = _learnable(make)
    a, b = _pair(make)
    space = WeightSpace(a)
    for m in (a, b):  # two quickly trained endpoints
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        Trainer(m, opt, make_loader(ds, 16, shuffle=True), 8).fit(progress=False)
    base = make()
    base.load_state_dict(a.state_dict())
    before = {k: v.clone() for k, v in base.state_dict().items() if "running" not in k and "num_batches" not in k}
    curve = Curve(space.read(a), space.read(b), sizes=[s.numel for s in space.slots])
    cm = CurveModel(base, curve)

    def midpoint_loss():
        with space.at(base, curve.point(0.5).detach()):
            from valleys.core.batchnorm import recompute_bn

            recompute_bn(base, loader(ds))
            from valleys.evaluation.predict import evaluate

            return evaluate(base, loader(ds)).nll

    start = midpoint_loss()
    opt = torch.optim.SGD(curve.parameters(), lr=0.05, momentum=0.9)
    Trainer(
        cm,
        opt,
        make_loader(ds, 16, shuffle=True),
        15,
        adapter=ModelAdapter(loss=cm.l2_loss(nn.CrossEntropyLoss(), 1e-4)),
    ).fit(progress=False)
    assert midpoint_loss() < 0.8 * start
    assert torch.equal(curve.start, space.read(a)) and torch.equal(curve.end, space.read(b))  # ends fixed
    for k, v in before.items():
        assert torch.equal(base.state_dict()[k], v), k


def test_evaluate_path_leaves_model_bit_identical_and_arc_average(img_data):
    a, b = _pair(BNCNN)
    space = WeightSpace(a)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    a.train()
    res = evaluate_path(
        a,
        segment(space.read(a), space.read(b)),
        [0.0, 0.5, 1.0],
        train_loader=loader(img_data),
        test_loader=loader(img_data),
    )
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert a.training
    assert len(res.t) == 3 and len(res.lengths) == 2
    d = float((space.read(a) - space.read(b)).norm()) / 2
    assert res.lengths == pytest.approx([d, d], rel=1e-5)
    assert arc_length_average([1.0, 3.0, 2.0], [1.0, 3.0]) == pytest.approx((2.0 * 1 + 2.5 * 3) / 4)
    with pytest.raises(ValueError, match="BatchNorm policy"):
        evaluate_path(
            a,
            segment(space.read(a), space.read(b)),
            [0.0, 1.0],
            train_loader=loader(img_data),
            test_loader=loader(img_data),
            bn="ignore",
        )


def test_curve_on_another_architecture_is_refused():
    a, b = _pair(mlp)
    space = WeightSpace(a)
    curve = Curve(space.read(a), space.read(b))
    with pytest.raises(WeightSpaceError, match="another architecture"):
        CurveModel(mlp(h=8), curve)


def _curve64(make, kind="bezier", bends=3, names=None):
    torch.manual_seed(0)
    a, b = _pair(make)
    space = WeightSpace(a, names)
    curve = Curve(
        space.read(a).double(), space.read(b).double(), kind=kind, bends=bends, sizes=[s.numel for s in space.slots]
    )
    torch.manual_seed(5)
    curve.set_inner(curve.inner_points() + 0.2 * torch.randn_like(curve.inner_points()))  # bent
    base = make().double()
    base.load_state_dict(a.double().state_dict())
    return space, curve, base


def _oracle_grads(space, curve, base, x, y, ts, wd):
    """Autograd of the explicit objective sum_t CE(f(x; w(t)), y) + 0.5 wd ||w(t)||^2 through flat vectors."""
    ref_curve, ref_base = copy.deepcopy(curve), copy.deepcopy(base)
    for p in ref_curve.inner:
        p.grad = None
    total = 0
    for t in ts:
        w = ref_curve.point(t)
        total = (
            total + nn.functional.cross_entropy(space.functional_call(ref_base, w, x), y) + 0.5 * wd * w.pow(2).sum()
        )
    total.backward()
    return ref_curve.inner_grad(), ref_base


@pytest.mark.parametrize(
    "kind,bends,t,wd",
    [
        ("bezier", 3, 0.4, 0.3),  # one inner point: its coefficient applied at the output
        ("bezier", 3, 0.4, 0.0),
        ("bezier", 3, 1e-4, 0.3),  # c_1 = 2e-4 below the scaling threshold: applied to the weight gradient
        ("bezier", 3, 0.0, 0.3),  # c_1 = 0: no gradient at all
        ("bezier", 5, 0.7, 0.3),  # three active inner points
        ("polychain", 4, 0.2, 0.3),  # one active inner point
        ("polychain", 4, 0.5, 0.3),  # two active inner points
    ],
)
@pytest.mark.parametrize("fast", [False, True])
def test_curve_gradient_equals_explicit_objective(kind, bends, t, wd, fast):
    space, curve, base = _curve64(mlp, kind, bends)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    want, _ = _oracle_grads(space, curve, base, x, y, [t], wd)
    cm = CurveModel(base, curve, loss_through_output=fast)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), wd)
    loss(cm(x, t=t), y).backward()
    assert torch.allclose(curve.inner_grad(), want, rtol=1e-10, atol=1e-13)
    assert all(p.grad is None for p in base.parameters())  # only the curve is trained


def test_curve_gradient_with_batchnorm_two_forwards_and_accumulation():
    space, curve, base = _curve64(BNCNN)
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    cm = CurveModel(base, curve, loss_through_output=True).train()
    loss = cm.l2_loss(nn.CrossEntropyLoss(), 0.3)
    (loss(cm(x, t=0.3), y) + loss(cm(x, t=0.8), y)).backward()  # two points in one graph
    want, _ = _oracle_grads(space, curve, base, x, y, [0.3, 0.8], 0.3)
    assert torch.allclose(curve.inner_grad(), want, rtol=1e-10, atol=1e-13)
    for t in (0.3, 0.8):  # the same by accumulating two backward passes
        if t == 0.3:
            for p in curve.inner:
                p.grad = None
        loss(cm(x, t=t), y).backward()
    assert torch.allclose(curve.inner_grad(), want, rtol=1e-10, atol=1e-13)


def test_curve_gradient_reaches_other_parameters_and_inputs_unscaled():
    names = ["0.weight", "0.bias"]  # the curve lives in the first layer only; the head trains as usual
    space, curve, base = _curve64(mlp, names=names)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    ref_curve, ref_base = copy.deepcopy(curve), copy.deepcopy(base)
    w = ref_curve.point(0.4)
    x_ref = x.detach().clone().requires_grad_()
    out = nn.functional.cross_entropy(space.functional_call(ref_base, w, x_ref), y) + 0.15 * w.pow(2).sum()
    out.backward()
    cm = CurveModel(base, curve, space, loss_through_output=True)  # the shortcut must step aside here
    cm.l2_loss(nn.CrossEntropyLoss(), 0.3)(cm(x, t=0.4), y).backward()
    assert torch.allclose(curve.inner_grad(), ref_curve.inner_grad(), rtol=1e-10, atol=1e-13)
    assert torch.allclose(base[2].weight.grad, ref_base[2].weight.grad, rtol=1e-10)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-10)


def test_curve_l2_missed_by_autograd_grad_warns():
    space, curve, base = _curve64(mlp)
    cm = CurveModel(base, curve)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), 0.3)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    torch.autograd.grad(loss(cm(x, t=0.4), y), list(curve.parameters()))
    with pytest.warns(UserWarning, match="L2 gradient of the last backward pass was not applied"):
        cm(x, t=0.4)


def test_curve_model_copies_and_pickles_after_training_steps(tmp_path):
    space, curve, base = _curve64(mlp)
    cm = CurveModel(base, curve)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    cm.l2_loss(nn.CrossEntropyLoss(), 0.3)(cm(x, t=0.4), y).backward()
    want = curve.inner_grad().clone()
    torch.save(cm, tmp_path / "cm.pt")  # no weak references or hook closures in the pickled state
    twin = copy.deepcopy(cm)
    for p in twin.curve.inner:
        p.grad = None
    twin.l2_loss(nn.CrossEntropyLoss(), 0.3)(twin(x, t=0.4), y).backward()  # its own L2 hooks
    assert torch.allclose(twin.curve.inner_grad(), want, rtol=1e-12)


class _SumOfTwo(nn.Module):
    """Two same-shape parameters used as a + b: autograd hands both the same gradient tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(5, 3))
        self.b = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        return x @ (self.a + self.b)


def test_curve_gradient_when_two_pieces_share_one_gradient_tensor():
    space, curve, base = _curve64(_SumOfTwo)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    want, _ = _oracle_grads(space, curve, base, x, y, [0.4, 0.7], 0.3)
    cm = CurveModel(base, curve, loss_through_output=True)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), 0.3)
    for t in (0.4, 0.7):  # accumulation and the in-place L2 add must not leak from one piece to the other
        loss(cm(x, t=t), y).backward()
    assert curve.inner[0].grad.data_ptr() != curve.inner[1].grad.data_ptr()
    assert torch.allclose(curve.inner_grad(), want, rtol=1e-10, atol=1e-13)


def test_frozen_inner_piece_with_l2():
    space, curve, base = _curve64(mlp)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    want, _ = _oracle_grads(space, curve, base, x, y, [0.4], 0.3)
    curve.inner[0].requires_grad_(False)  # keep the first layer's inner point where it is
    cm = CurveModel(base, curve, loss_through_output=True)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            for p in curve.inner:
                p.grad = None
            loss(cm(x, t=0.4), y).backward()
    assert curve.inner[0].grad is None
    sizes = curve.sizes
    assert torch.allclose(
        torch.cat([p.grad for p in list(curve.inner)[1:]], dim=1), want[:, sizes[0] :], rtol=1e-10, atol=1e-13
    )


def test_curve_training_leaves_the_endpoint_network_bit_identical():
    torch.manual_seed(0)
    net_a, net_b = _pair(BNCNN)
    with torch.no_grad():
        net_a.train()(torch.randn(32, 1, 6, 6) + 1.5)  # non-default statistics
    net_a.eval()
    before = {k: v.clone() for k, v in net_a.state_dict().items()}
    space = WeightSpace(net_a)
    curve = Curve(space.read(net_a), space.read(net_b), sizes=[s.numel for s in space.slots])
    cm = CurveModel(net_a, curve).train()
    opt = torch.optim.SGD(curve.parameters(), lr=0.05, momentum=0.9)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), 1e-3)
    for _ in range(5):
        x, y = torch.randn(16, 1, 6, 6) * 2 - 1, torch.randint(0, 3, (16,))
        opt.zero_grad()
        loss(cm(x), y).backward()
        opt.step()
    after = net_a.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # parameters and buffers, bit for bit
    own = cm.buffers_copy
    assert int(own["bn1.num_batches_tracked"]) == int(before["bn1.num_batches_tracked"]) + 5
    assert not torch.equal(own["bn1.running_mean"], before["bn1.running_mean"])  # the curve's own statistics
    # ... used in eval mode, as the model with those statistics loaded would use them
    cm.eval()
    x = torch.randn(8, 1, 6, 6)
    ref = copy.deepcopy(net_a)
    space.write(ref, curve.point(0.3).detach())
    ref.load_state_dict({**ref.state_dict(), **own})
    with torch.no_grad():
        assert torch.allclose(cm(x, t=0.3), ref.eval()(x), atol=1e-6)
    # checkpoints keep the model.<buffer> layout and restore the curve's statistics, not the network's
    state = cm.state_dict()
    assert torch.equal(state["model.bn1.running_mean"], own["bn1.running_mean"])
    fresh = CurveModel(copy.deepcopy(net_a), Curve(curve.start, curve.end, sizes=curve.sizes))
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.buffers_copy[k], v) for k, v in own.items())
    assert torch.equal(fresh.model.bn1.running_mean, before["bn1.running_mean"])
    assert torch.equal(copy.deepcopy(cm).buffers_copy["bn1.running_var"], own["bn1.running_var"])


class _TupleNet(nn.Module):
    """Keyword inputs from a dict batch; returns (logits, hidden)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, scale):
        h = torch.relu(self.bn(self.body(x))) * scale
        return self.head(h), h


def test_curve_model_through_the_adapter_dict_batches_and_tuple_outputs():
    from valleys.core.adapter import ModelAdapter

    a, b = _pair(_TupleNet)
    space = WeightSpace(a)
    curve = Curve(space.read(a), space.read(b), sizes=[s.numel for s in space.slots])
    adapter = ModelAdapter(output=0)
    cm = CurveModel(a, curve, adapter=adapter, loss_through_output=True).train()
    batch = {"x": torch.randn(6, 5), "scale": torch.tensor(2.0), "labels": torch.randint(0, 3, (6,))}
    args, kwargs = adapter.inputs(batch)
    assert args == () and set(kwargs) == {"x", "scale"}
    out = cm(*args, **kwargs, t=0.5)
    assert out.shape == (6, 3)
    adapter.compute_loss(out, adapter.targets(batch)).backward()
    assert curve.inner_grad() is not None and bool(curve.inner_grad().abs().sum() > 0)


def _hand_mlp_loss(w, x, y, shapes):
    """Cross-entropy of relu MLP written with plain tensor operations on a flat vector w."""
    parts, off = [], 0
    for shape in shapes:
        n = math.prod(shape)
        parts.append(w[off : off + n].reshape(shape))
        off += n
    w1, b1, w2, b2 = parts
    h = torch.clamp(x @ w1.T + b1, min=0)
    z = h @ w2.T + b2
    logp = (
        z - torch.log(torch.exp(z - z.max(1, keepdim=True).values).sum(1, keepdim=True)) - z.max(1, keepdim=True).values
    )
    return -logp[torch.arange(len(y)), y].mean()


@pytest.mark.parametrize("bends,t", [(3, 0.4), (4, 0.65), (5, 0.2)])
@pytest.mark.parametrize("fast", [False, True])
def test_curve_gradient_against_a_hand_written_oracle(bends, t, fast):
    """Oracle independent of the code under test: w(t) = sum_j binom(n-1, j) t^j (1-t)^(n-1-j) theta_j built by
    hand from leaf control points, the MLP and cross-entropy written with tensor operations, plus the L2 term
    0.5 wd ||w(t)||^2, differentiated by autograd (Garipov et al. 2018, eq. 4 with a fixed t)."""
    torch.manual_seed(3)
    a, b = mlp().double(), mlp().double()
    space = WeightSpace(a)
    shapes = space.shapes
    wd = 0.05
    theta_inner = [torch.randn(space.size, dtype=torch.float64) * 0.3 for _ in range(bends - 2)]
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    # the hand-built oracle
    leaves = [p.clone().requires_grad_(True) for p in theta_inner]
    points = [space.read(a)] + leaves + [space.read(b)]
    n = bends - 1
    w_t = sum(math.comb(n, j) * t**j * (1 - t) ** (n - j) * points[j] for j in range(bends))
    total = _hand_mlp_loss(w_t, x, y, shapes) + 0.5 * wd * (w_t * w_t).sum()
    want = torch.autograd.grad(total, leaves)
    # the code under test
    curve = Curve(space.read(a), space.read(b), bends=bends, sizes=[s.numel for s in space.slots])
    curve.set_inner(torch.stack(theta_inner))
    cm = CurveModel(copy.deepcopy(a), curve, loss_through_output=fast)
    loss = cm.l2_loss(nn.CrossEntropyLoss(), wd)
    value = loss(cm(x, t=t), y)
    assert float(value.detach()) == pytest.approx(float(_hand_mlp_loss(w_t, x, y, shapes).detach()), rel=1e-12)
    value.backward()
    got = curve.inner_grad()
    for j in range(bends - 2):
        assert torch.allclose(got[j], want[j], rtol=1e-9, atol=1e-12), j


def test_train_curve_through_the_adapter_with_dict_batches_and_tuple_outputs():
    from valleys.app.connect import ConnectConfig, train_curve
    from valleys.core.adapter import ModelAdapter

    a, b = _pair(_TupleNet)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    space = WeightSpace(a)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "x": torch.randn(8, 5, generator=g),
            "scale": torch.tensor(1.5),
            "labels": torch.randint(0, 3, (8,), generator=g),
        }
        for _ in range(3)
    ]
    cfg = ConnectConfig(run_a="a", run_b="b", epochs=2, lr=0.05)
    curve = train_curve(a, space, space.read(a), space.read(b), batches, cfg, adapter=ModelAdapter(output=0))
    assert not torch.allclose(curve.inner_points(), (space.read(a) + space.read(b)) / 2)  # it trained
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())
