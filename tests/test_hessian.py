import pytest
import torch
from torch import nn

from valleys.geometry.hessian import LossFunction, epsilon_sharpness, hutchinson_trace, lanczos, power_iteration
from valleys.core.weights import WeightSpace


@pytest.fixture
def tiny():
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
    return LossFunction(model, batches), w, exact, full_loss


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
