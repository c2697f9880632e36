import pytest
import torch
from torch import nn

from conftest import BNCNN
from valleys.core.adapter import AdapterError, ModelAdapter
from valleys.core.weights import WeightSpace
from valleys.geometry.hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos, power_iteration


@pytest.fixture(params=["double_backward", "forward_over_reverse"])
def tiny(request):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]  # unequal batches: weighted mean
    space = WeightSpace(model)
    w = space.read(model)

    def full_loss(v):
        return nn.functional.cross_entropy(torch.func.functional_call(model, space.unflatten(v), (x,)), y)

    exact = torch.autograd.functional.hessian(full_loss, w)
    return LossFunction(model, batches, route=request.param), w, exact, full_loss


def test_loss_is_the_mean_over_all_examples(tiny):
    loss, w, _, full = tiny
    assert loss.value(w) == pytest.approx(float(full(w)), rel=1e-12)


def test_hvp_equals_exact_hessian_product(tiny):
    loss, w, exact, _ = tiny
    v = torch.randn(w.numel(), dtype=torch.float64)
    assert torch.allclose(loss.hvp(w, v), exact @ v, atol=1e-10)


def test_lanczos_top_eigenvalues_equal_eigvalsh(tiny):
    loss, w, exact, _ = tiny
    true = torch.linalg.eigvalsh(exact).flip(0)[:3]
    res = lanczos(loss, w, k=3, iterations=w.numel(), generator=torch.Generator().manual_seed(0))
    assert ((res["eigenvalues"] - true).abs() / true.abs()).max() <= 1e-4
    v = res["eigenvectors"][0]
    assert torch.allclose(exact @ v, true[0] * v, atol=1e-6)  # an eigenvector
    top = lanczos(loss, w, k=1, iterations=12, generator=torch.Generator().manual_seed(1))
    assert abs(float(top["eigenvalues"][0]) - float(true[0])) / float(true[0]) <= 1e-4
    with pytest.raises(ValueError, match="number of parameters"):
        lanczos(loss, w, k=w.numel() + 1)


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(tiny):
    loss, w, exact, _ = tiny
    evals = torch.linalg.eigvalsh(exact)
    largest = float(evals[evals.abs().argmax()])
    res = power_iteration(loss, w, iterations=500, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert res["eigenvalue"] == pytest.approx(largest, rel=1e-4)


def test_hutchinson_trace_within_its_confidence_interval(tiny):
    loss, w, exact, _ = tiny
    res = hutchinson_trace(loss, w, samples=400, generator=torch.Generator().manual_seed(0))
    assert abs(res["trace"] - float(torch.trace(exact))) <= 4 * res["stderr"]
    assert res["stderr"] > 0


def test_epsilon_sharpness_is_nonnegative_and_grows_with_the_box(tiny):
    loss, w, _, _ = tiny
    small = epsilon_sharpness(loss, w, 1e-3)
    large = epsilon_sharpness(loss, w, 1e-2)
    assert 0 <= small["increase"] < large["increase"]
    before = WeightSpace(loss.model).read(loss.model)
    assert torch.equal(before, w)  # evaluation is functional: the model is untouched


def test_both_routes_give_the_exact_spectrum_and_each_others_products(tiny):
    """Oracle: eigvalsh of the float64 Hessian from torch.autograd.functional.hessian."""
    loss, w, exact, _ = tiny
    true = torch.linalg.eigvalsh(exact).flip(0)[:2]
    res = lanczos(loss, w, k=2, iterations=w.numel(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(res["eigenvalues"], true, rtol=1e-8, atol=1e-10)
    other = LossFunction(
        loss.model,
        [(b[0][0], b[2]) for b in loss.batches],
        route="forward_over_reverse" if loss.route == "double_backward" else "double_backward",
    )
    for seed in range(3):
        v = torch.randn(w.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(loss.hvp(w, v), other.hvp(w, v), rtol=1e-10, atol=1e-12)
    w2 = w + 0.1  # a new w: the kept gradient graph is rebuilt, not reused
    v = torch.randn(w.numel(), dtype=torch.float64)
    assert torch.allclose(loss.hvp(w2, v), other.hvp(w2, v), rtol=1e-10, atol=1e-12)


def test_routes_agree_on_a_batchnorm_cnn_in_eval_mode():
    torch.manual_seed(0)
    model = BNCNN()
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 6, 6) * 2 + 1)  # non-default running statistics
    model.train()  # the loss must use eval mode regardless of the model's own flag
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))) for _ in range(2)]
    db = LossFunction(model, batches, route="double_backward")
    fr = LossFunction(model, batches, route="forward_over_reverse")
    assert LossFunction(model, batches).route == "double_backward"
    w = db.space.read(model)
    for seed in range(3):
        v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(seed))
        a, b = db.hvp(w, v), fr.hvp(w, v)
        assert (a - b).norm() <= 1e-4 * b.norm()
    ea = lanczos(db, w, k=1, iterations=15, generator=torch.Generator().manual_seed(0))["eigenvalues"]
    eb = lanczos(fr, w, k=1, iterations=15, generator=torch.Generator().manual_seed(0))["eigenvalues"]
    assert torch.allclose(ea, eb, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training


class MaskedEncoder(nn.Module):
    """nn.TransformerEncoder over embeddings with a padding mask; returns (logits, pooled) as a tuple."""

    def __init__(self, vocab: int = 13, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask):
        h = self.enc(self.emb(input_ids), src_key_padding_mask=~attention_mask)
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1)
        return self.out(pooled), pooled


def _token_batches(n=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 13, (6, 5), generator=g)
        mask = torch.ones(6, 5, dtype=torch.bool)
        mask[::2, 3:] = False  # padded tails
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (6,), generator=g)})
    return out


def test_transformer_encoder_with_padding_mask_and_dict_batches():
    torch.manual_seed(0)
    model = MaskedEncoder()
    batches = _token_batches()
    with pytest.raises(AdapterError, match="output="):  # a tuple return: say which output is the prediction
        LossFunction(model, batches).value(WeightSpace(model).read(model))
    adapter = ModelAdapter(output=0)
    db = LossFunction(model, batches, adapter=adapter, route="double_backward")
    fr = LossFunction(model, batches, adapter=adapter, route="forward_over_reverse")
    w = db.space.read(model)
    model.eval()
    with torch.no_grad():  # the loss is the weighted mean over the dict batches, called with keyword arguments
        want = (
            sum(
                nn.functional.cross_entropy(model(b["input_ids"], b["attention_mask"])[0], b["labels"]) for b in batches
            )
            / 2
        )
    assert db.value(w) == pytest.approx(float(want), rel=1e-5)
    for seed in range(2):
        v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(seed))
        a, b = db.hvp(w, v), fr.hvp(w, v)
        assert (a - b).norm() <= 1e-4 * b.norm()
    for loss in (db, fr):  # the fused attention kernels have no forward-AD / double-backward rule
        res = lanczos(loss, w, k=1, iterations=8, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(res["eigenvalues"]).all()
    assert hutchinson_trace(db, w, samples=4, generator=torch.Generator().manual_seed(0))["samples"] == 4


def test_route_is_checked():
    with pytest.raises(ValueError, match="route"):
        LossFunction(nn.Linear(2, 2), [(torch.randn(3, 2), torch.tensor([0, 1, 0]))], route="fast")


def test_double_backward_with_an_unused_parameter_matches_the_exact_hessian():
    """A parameter the loss never touches has zero Hessian rows; double backward must give them as zeros."""

    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            self.spare = nn.Parameter(torch.randn(5))  # never used in forward

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = WithSpare().double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 2, (30,))
    space = WeightSpace(model)
    w = space.read(model)

    def full_loss(v):
        return nn.functional.cross_entropy(torch.func.functional_call(model, space.unflatten(v), (x,)), y)

    exact = torch.autograd.functional.hessian(full_loss, w)
    loss = LossFunction(model, [(x, y)], route="double_backward")
    for seed in range(2):
        v = torch.randn(w.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(loss.hvp(w, v), exact @ v, atol=1e-10)
    spare = next(s for s in space.slots if s.name == "spare")
    assert torch.equal(loss.hvp(w, v)[spare.offset : spare.offset + 5], torch.zeros(5, dtype=torch.float64))
