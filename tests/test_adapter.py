"""ModelAdapter: batches -> model calls, outputs -> predictions, targets, losses; clear errors naming settings."""

import pytest
import torch
from torch import nn

from valleys.core.adapter import AdapterError, ModelAdapter, as_adapter, gaussian_nll


class Kw(nn.Module):
    def forward(self, input_ids, attention_mask):
        return (input_ids * attention_mask).float().sum(1, keepdim=True)


def test_default_inputs_for_tensor_tuple_and_dict_batches():
    a = ModelAdapter()
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    assert a.inputs(x)[0][0] is x
    assert a.inputs((x, y))[0][0] is x and a.targets((x, y)) is y
    assert a.inputs(((x, x), y)) == ((x, x), {})  # tuple input: positional arguments
    args, kwargs = a.inputs({"input": x, "label": y})
    assert args[0] is x and kwargs == {} and a.targets({"input": x, "label": y}) is y
    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 0]])
    args, kwargs = a.inputs({"input_ids": ids, "attention_mask": mask, "labels": y})
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"}  # the mask is not dropped
    out = a.forward(Kw(), {"input_ids": ids, "attention_mask": mask, "labels": y})
    assert out.item() == 1.0


def test_explicit_selectors():
    batch = {"a": torch.ones(1, 2), "b": torch.zeros(1, 2), "t": torch.tensor([1])}
    a = ModelAdapter(input=["a", "b"], target="t", output=1)
    assert set(a.inputs(batch)[1]) == {"a", "b"} and a.targets(batch).item() == 1
    assert a.prediction((torch.zeros(1), torch.ones(1))).item() == 1.0
    assert ModelAdapter(input=lambda b: (b["a"], b["b"])).inputs(batch)[0][1] is batch["b"]
    assert ModelAdapter(output="hidden").prediction(type("O", (), {"hidden": torch.ones(1)})()).item() == 1.0


def test_default_outputs_logits_attribute_and_dict_key():
    a = ModelAdapter()
    t = torch.ones(2, 3)
    assert a.prediction(t) is t
    assert a.prediction({"logits": t, "aux": 0}) is t
    assert a.prediction(type("ModelOutput", (), {"logits": t})()) is t


@pytest.mark.parametrize(
    "raw,needle",
    [((torch.ones(1), torch.ones(1)), "output=0"), ({"mean": torch.ones(1)}, "output='key'"), (3, "output=...")],
)
def test_unmappable_outputs_name_the_setting(raw, needle):
    with pytest.raises(AdapterError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        ModelAdapter().prediction(raw)


def test_unmappable_batches_name_the_setting():
    with pytest.raises(AdapterError, match="target="):
        ModelAdapter().targets({"input": torch.ones(1)})
    with pytest.raises(AdapterError, match="input="):
        ModelAdapter().inputs(object())
    with pytest.raises(AdapterError, match=r"input keys \['c'\]"):
        ModelAdapter(input=["c"]).inputs({"a": 1})
    with pytest.raises(ValueError, match="unknown loss"):
        ModelAdapter(loss="hinge")
    with pytest.raises(TypeError, match=r"ModelAdapter\(loss=fn\)"):
        as_adapter(lambda o, t: o.mean())
    assert as_adapter(None) == ModelAdapter()


def test_losses_against_hand_computed_values():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    assert ModelAdapter().compute_loss(logits, y).item() == pytest.approx(
        2 + torch.log1p(torch.exp(torch.tensor(-2.0))).item()
    )
    out = torch.tensor([[0.0, 4.0]])  # mean 0, variance 4, target 2
    expect = 0.5 * torch.log(torch.tensor(2 * torch.pi * 4.0)).item() + 4 / 8
    assert gaussian_nll(out, torch.tensor([2.0])).item() == pytest.approx(expect)
    g = ModelAdapter(loss="gaussian")
    assert g.likelihood == "gaussian" and g.compute_loss(out, torch.tensor([2.0])).item() == pytest.approx(expect)


def test_predictive_follows_the_stated_likelihood_even_with_a_custom_loss():
    assert ModelAdapter(loss=lambda o, t: o.mean(), predictive="gaussian").likelihood == "gaussian"
    assert ModelAdapter(loss=gaussian_nll).likelihood == "gaussian"
    assert ModelAdapter(loss=lambda o, t: o.mean()).likelihood == "classification"
    with pytest.raises(ValueError, match="unknown predictive"):
        ModelAdapter(predictive="poisson")
