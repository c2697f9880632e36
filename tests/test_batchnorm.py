import pytest
import torch
from torch.optim.swa_utils import update_bn

from conftest import BNCNN, DropoutBNMLP, loader, mlp
from valleys.core.adapter import ModelAdapter
from valleys.core.batchnorm import EmptyLoaderError, recompute_bn


def test_first_layer_stats_equal_exact_data_moments_with_unequal_batches(vec_data):
    torch.manual_seed(0)
    model = DropoutBNMLP()
    x = vec_data.tensors[0].double()
    recompute_bn(model, loader(vec_data, bs=25))  # 103 = 4 * 25 + 3: unequal last batch
    assert torch.allclose(model.bn0.running_mean.double(), x.mean(0), atol=1e-6)
    assert torch.allclose(model.bn0.running_var.double(), x.var(0, unbiased=True), rtol=1e-5)
    # PyTorch's momentum=None average weights batches equally, so it misses the exact mean here
    ref = DropoutBNMLP()
    ref.load_state_dict(model.state_dict())
    update_bn(loader(vec_data, bs=25), ref)
    assert (ref.bn0.running_mean.double() - x.mean(0)).abs().max() > 1e-3


def test_inner_layer_stats_equal_brute_force_over_the_same_batches(img_data):
    torch.manual_seed(0)
    model = BNCNN()
    captured = []
    hook = model.bn2.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().double()))
    recompute_bn(model, loader(img_data, bs=16))
    hook.remove()
    n_batches = len(captured)
    xs = torch.cat([c.transpose(0, 1).reshape(c.shape[1], -1) for c in captured], dim=1)
    assert n_batches == 5
    assert torch.allclose(model.bn2.running_mean.double(), xs.mean(1), atol=1e-6)
    assert torch.allclose(model.bn2.running_var.double(), xs.var(1, unbiased=True), rtol=1e-5)
    assert int(model.bn2.num_batches_tracked) == 5


def test_equals_torch_update_bn_when_batches_are_equal(img_data):
    torch.manual_seed(0)
    a = BNCNN()
    b = BNCNN()
    b.load_state_dict(a.state_dict())
    recompute_bn(a, loader(img_data, bs=14))  # 70 = 5 * 14
    update_bn(loader(img_data, bs=14), b)
    assert torch.allclose(a.bn1.running_mean, b.bn1.running_mean, atol=1e-5)
    assert torch.allclose(a.bn2.running_mean, b.bn2.running_mean, atol=1e-5)


def test_modes_and_momenta_restored(vec_data):
    model = DropoutBNMLP()
    model.eval()
    model.drop.train()
    model.bn1.momentum = 0.3
    modes = [m.training for m in model.modules()]
    recompute_bn(model, loader(vec_data))
    assert [m.training for m in model.modules()] == modes
    assert model.bn1.momentum == 0.3 and model.bn0.momentum == 0.1


def test_dict_batches_and_input_callable(vec_data):
    x = vec_data.tensors[0]
    dict_batches = [{"x": x[i : i + 20], "label": None} for i in range(0, 103, 20)]
    a = DropoutBNMLP()
    recompute_bn(a, dict_batches)
    assert torch.allclose(a.bn0.running_mean, x.mean(0), atol=1e-5)
    b = DropoutBNMLP()
    batches = [{"features": x[i : i + 20]} for i in range(0, 103, 20)]
    recompute_bn(b, batches, adapter=ModelAdapter(input=lambda d: d["features"]))
    assert torch.allclose(b.bn0.running_mean, a.bn0.running_mean)
    # the adapter passes a dict batch's one non-target entry as the model input, whatever its key
    c = DropoutBNMLP()
    recompute_bn(c, [{"features": x[i : i + 20]} for i in range(0, 103, 20)])
    assert torch.allclose(c.bn0.running_mean, a.bn0.running_mean)
    with pytest.raises(TypeError, match="input_fn"):  # the one way to say where the input is: the adapter
        recompute_bn(DropoutBNMLP(), [{"features": x}], input_fn=lambda d: d["features"])


def test_subset_of_batches(vec_data):
    x = vec_data.tensors[0]
    m = DropoutBNMLP()
    assert recompute_bn(m, loader(vec_data, bs=25), num_batches=2) == 2
    assert torch.allclose(m.bn0.running_mean, x[:50].mean(0), atol=1e-5)
    assert recompute_bn(m, loader(vec_data, bs=25), fraction=0.5) == 3  # ceil(0.5 * 5)


def test_errors_and_no_bn_model(vec_data):
    with pytest.raises(EmptyLoaderError, match="no batches"):
        recompute_bn(DropoutBNMLP(), [])
    with pytest.raises(ValueError, match="num_batches"):
        recompute_bn(DropoutBNMLP(), loader(vec_data), num_batches=0)
    plain = mlp()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert recompute_bn(plain, loader(vec_data)) == 0
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
