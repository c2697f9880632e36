import pytest
import torch

from valleys.core.weights import WeightSpace
from valleys.zoo.data import DatasetNotFoundError, find_fashion_mnist, load_dataset, make_loader
from valleys.zoo.models import MODELS, build_model


def test_mnist1d_splits_are_fixed_and_disjoint():
    a = load_dataset("mnist1d")
    b = load_dataset("mnist1d")
    assert a.sizes() == {"train": 3600, "val": 400, "test": 1000}
    assert a.num_classes == 10 and a.input_shape == (40,)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    train = {tuple(r.tolist()) for r in a.train.tensors[0][:500]}
    assert not any(tuple(r.tolist()) in train for r in a.val.tensors[0])


def test_digits_and_subsets():
    s = load_dataset("digits", train_subset=100, test_subset=50)
    assert s.input_shape == (1, 8, 8) and s.sizes()["train"] == 100 and s.sizes()["test"] == 50
    assert float(s.train.tensors[0].max()) <= 1.0


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid datasets: mnist1d, digits, fashion-mnist"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="valid models: mlp, cnn1d"):
        build_model("resnet152", (40,), 10)
    with pytest.raises(ValueError, match="needs images"):
        build_model("cnn", (40,), 10)


def test_fashion_mnist_missing_gives_both_install_hints(tmp_path, monkeypatch):
    monkeypatch.setattr("valleys.zoo.data._dpkg_dirs", lambda: [])
    monkeypatch.setattr("valleys.zoo.data.DEBIAN_FASHION_DIR", tmp_path / "nothing")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)apt-get install dataset-fashion-mnist.*torchvision"):
        find_fashion_mnist()
    with pytest.raises(DatasetNotFoundError, match="--data-root .* holds no Fashion-MNIST files"):
        find_fashion_mnist(tmp_path)  # a root given is the only place searched


def test_fashion_mnist_from_debian_package():
    try:
        find_fashion_mnist()
    except DatasetNotFoundError:
        pytest.skip("Debian package dataset-fashion-mnist not installed (.ci/run installs it)")
    s = load_dataset("fashion-mnist", train_subset=512, test_subset=256)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.sizes() == {"train": 512, "val": 6000, "test": 256}
    assert abs(float(s.test.tensors[0].mean())) < 0.2  # standardised with training statistics


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(40,), (1, 8, 8)])
def test_models_forward_shapes(name, shape):
    try:
        model = build_model(name, shape, 10)
    except ValueError:
        assert (name == "cnn1d") == (len(shape) == 3) or name in ("cnn", "convlarge", "preresnet", "vgg")
        return
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    assert WeightSpace(model).size == sum(p.numel() for p in model.parameters())


def test_loader_is_reproducible():
    s = load_dataset("digits")
    a = [y.tolist() for _, y in make_loader(s.train, 64, shuffle=True, seed=3)]
    b = [y.tolist() for _, y in make_loader(s.train, 64, shuffle=True, seed=3)]
    assert a == b
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(s.train, 0)
