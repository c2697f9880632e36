import pytest
import torch
from torch import nn

from conftest import BNCNN, DropoutBNMLP, TinyTransformer, mlp
from valleys.core.weights import WeightSpace, WeightSpaceError


@pytest.mark.parametrize("make", [mlp, BNCNN, DropoutBNMLP, TinyTransformer])
def test_layout_is_concatenation_of_parameters(make):
    torch.manual_seed(0)
    model = make()
    space = WeightSpace(model)
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # parameters() dedups ties
    assert torch.equal(space.read(model), expected)
    assert space.size == sum(p.numel() for p in model.parameters())


def test_tied_parameters_counted_once_and_written_to_both_names():
    model = TinyTransformer()
    space = WeightSpace(model)
    names = space.names
    assert "emb.weight" in names and "out.weight" not in names
    w = space.read(model)
    space.write(model, torch.zeros_like(w))
    assert model.out.weight.abs().sum() == 0  # the tie is preserved


def test_frozen_parameters_are_left_out_and_untouched():
    model = mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    space = WeightSpace(model)
    assert "0.weight" not in space.names
    space.write(model, torch.ones(space.size))
    assert torch.equal(model[0].weight, frozen)
    assert model[2].weight.eq(1).all()
    assert WeightSpace(model, include_frozen=True).size == sum(p.numel() for p in model.parameters())


def test_named_subset_and_unknown_names():
    model = mlp()
    space = WeightSpace(model, ["2.bias", "2.weight"])
    assert space.names == ["2.weight", "2.bias"]  # module order, not the given order
    assert space.size == 16 * 3 + 3
    with pytest.raises(WeightSpaceError, match="unknown parameter names.*valid names"):
        WeightSpace(model, ["head.weight"])


def test_read_write_roundtrip_and_bad_vectors():
    model = BNCNN()
    space = WeightSpace(model)
    w = torch.randn(space.size)
    space.write(model, w)
    assert torch.equal(space.read(model), w)
    with pytest.raises(WeightSpaceError, match=f"length {space.size}"):
        space.write(model, torch.randn(space.size + 1))
    with pytest.raises(WeightSpaceError, match="dtype"):
        space.write(model, torch.ones(space.size, dtype=torch.long))
    bad = w.clone()
    bad[3] = float("nan")
    with pytest.raises(WeightSpaceError, match="NaN"):
        space.write(model, bad)
    assert torch.equal(space.read(model), w)  # nothing written on error


def test_write_into_other_architecture_is_refused():
    space = WeightSpace(mlp(h=16))
    with pytest.raises(WeightSpaceError, match="shape"):
        space.write(mlp(h=17), torch.zeros(space.size))
    with pytest.raises(WeightSpaceError, match="no parameter"):
        space.read(BNCNN())


@pytest.mark.parametrize("make", [BNCNN, DropoutBNMLP, TinyTransformer])
def test_at_restores_parameters_buffers_and_modes_bit_for_bit(make):
    torch.manual_seed(0)
    model = make()
    model.eval()
    for m in list(model.modules())[1:2]:
        m.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    space = WeightSpace(model)
    with space.at(model, torch.randn(space.size)):
        model.train()
        x = (
            torch.randn(4, 1, 6, 6)
            if make is BNCNN
            else (torch.randint(0, 11, (4, 3)) if make is TinyTransformer else torch.randn(4, 5))
        )
        model(x)  # BN buffers change in train mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == modes


def test_functional_call_equals_written_weights_and_has_gradients():
    torch.manual_seed(0)
    model = BNCNN().eval()
    space = WeightSpace(model)
    w = space.read(model) + 0.1 * torch.randn(space.size)
    x = torch.randn(5, 1, 6, 6)
    w.requires_grad_(True)
    out = space.functional_call(model, w, x)
    other = BNCNN().eval()
    other.load_state_dict(model.state_dict())
    space.write(other, w.detach())
    assert torch.allclose(out, other(x), atol=1e-6)
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert not torch.equal(space.read(model), w.detach())  # model not modified


def test_call_with_substitutes_and_follows_a_replaced_submodule():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    space = WeightSpace(net)
    w = space.read(net)
    x = torch.randn(4, 3)
    w2 = torch.randn_like(w)
    got = space.call_with(net, space.views(w2), (x,))
    with space.at(net, w2):
        assert torch.equal(got, net(x))
    assert torch.equal(space.read(net), w)  # restored
    net[2] = nn.Linear(2, 2)  # replaced after the sites were cached: the new layer must receive w2's piece
    got = space.call_with(net, space.views(w2), (x,))
    with space.at(net, w2):
        assert torch.equal(got, net(x))
