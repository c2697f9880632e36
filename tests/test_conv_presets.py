"""The convolutional presets (``fashion-cnn``): supervised augmentation, 14x14 Fashion-MNIST, ConvLarge, the
preset's semi-supervised study (``valleys semisup --preset``), its CUDA sizes (one step here on the CPU) and the
``--quick`` forms of both."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from valleys.training.augment import AUGMENTATIONS, ImageAugment, SignalAugment, augmented_step, supervised_augment
from valleys.training.trainer import Trainer, supervised_step
from valleys.zoo.data import DatasetNotFoundError, find_fashion_mnist
from valleys.zoo.models import ConvLarge, build_model


def _fashion_or_skip() -> None:
    try:
        find_fashion_mnist()
    except DatasetNotFoundError:
        pytest.skip("Debian package dataset-fashion-mnist not installed (.ci/run installs it)")


def test_supervised_augment_is_the_standard_label_preserving_transform():
    assert supervised_augment("none", (1, 28, 28)) is None
    a = supervised_augment("standard", (1, 28, 28), dataset="fashion-mnist")
    assert a == ImageAugment(translate=2, flip=True, noise=0.0)
    assert supervised_augment("standard", (1, 14, 14), dataset="fashion-mnist-14") == ImageAugment(1, True, 0.0)
    assert supervised_augment("standard", (1, 8, 8), dataset="digits") == ImageAugment(1, False, 0.0)  # no flips
    assert supervised_augment("standard", (40,)) == SignalAugment(shift=3, scale=0.0, noise=0.0)
    assert set(AUGMENTATIONS) == {"none", "standard"}
    with pytest.raises(ValueError, match="unknown augment 'crop'.*none, standard"):
        supervised_augment("crop", (1, 8, 8))
    with pytest.raises(ValueError, match="--augment none"):
        supervised_augment("standard", (3, 4))


def test_an_augmented_step_trains_on_the_transformed_inputs_exactly():
    """Oracle: the step on a batch with a fixed transform equals the plain step on the transformed batch."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, [(x, y)], 1)
    flip = lambda t: t.flip(-1)  # noqa: E731
    got = augmented_step(flip)(trainer, (x, y))
    want = supervised_step(trainer, (flip(x), y))
    assert torch.equal(got.loss, want.loss) and got.loss != supervised_step(trainer, (x, y)).loss
    with pytest.raises(TypeError, match="augment in your data pipeline"):
        augmented_step(flip)(trainer, {"x": x, "y": y})
    with pytest.raises(ValueError, match="callable"):
        augmented_step(3)  # type: ignore[arg-type]


def test_train_config_refuses_an_unknown_augment_and_augmenting_a_regression():
    from valleys.app.config import TrainConfig

    with pytest.raises(ValueError, match="unknown augment 'flip'; valid: none, standard"):
        TrainConfig(dataset="digits", model="mlp", augment="flip").resolved()
    with pytest.raises(ValueError, match="--augment none"):
        TrainConfig(dataset="diabetes", model="mlp", augment="standard").resolved()
    assert TrainConfig(dataset="digits", model="cnn", augment="standard").resolved().augment == "standard"


def test_fashion_mnist_14_is_the_2x2_mean_of_the_28x28_images_standardised_again():
    _fashion_or_skip()
    from valleys.zoo import data

    xtr, ytr, xte, yte = data._fashion(None)
    s = data.load_dataset("fashion-mnist-14", val_fraction=0.1, test_subset=500)
    assert s.input_shape == (1, 14, 14) and s.num_classes == 10
    pooled = xtr.view(-1, 1, 14, 2, 14, 2).mean(dim=(3, 5))  # brute force: the mean of each 2x2 block
    mean, std = pooled.mean(), pooled.std()
    want = (xte[:500].view(-1, 1, 14, 2, 14, 2).mean(dim=(3, 5)) - mean) / std
    torch.testing.assert_close(s.test.tensors[0], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(s.test.tensors[1], yte[:500])


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return total


def test_convlarge_is_the_papers_13_layer_network_and_its_cost():
    m = ConvLarge(3, 10)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 256, 256, 256, 512, 256, 128]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1] and len(convs) + 1 == 10
    assert sum(isinstance(b, nn.BatchNorm2d) for b in m.modules()) == 9
    assert 0.70e9 < _macs(m, (3, 32, 32)) < 0.76e9  # the papers' ~0.73 GMAC on CIFAR
    assert 0.50e9 < _macs(build_model("convlarge", (1, 28, 28), 10), (1, 28, 28)) < 0.60e9
    small = build_model("cnn", (1, 14, 14), 10, width=16)
    assert _macs(small, (1, 14, 14)) < 0.05e9  # the CPU preset's network is within the budget
    with pytest.raises(ValueError, match="at least 12x12.*'cnn'"):
        build_model("convlarge", (1, 8, 8), 10)


def test_preset_semisup_settings_come_from_the_preset_and_its_cuda_sizes():
    from valleys.app.presets import get_preset, preset_semisup, preset_train

    p = get_preset("fashion-cnn")
    s = preset_semisup(p)
    assert s is not None
    assert (s["dataset"], s["model"], s["model_args"], s["train_subset"]) == (
        "fashion-mnist-14",
        "cnn",
        {"width": 16},
        20000,
    )
    q = preset_semisup(p, quick=True)
    assert q is not None and q["epochs"] == p.semisup_quick["epochs"] and q["train_subset"] == 2000
    c = preset_semisup(p, device="cuda")
    assert c is not None and (c["model"], c["dataset"], c["train_subset"], c["device"]) == (
        "convlarge",
        "fashion-mnist",
        None,
        "cuda",
    )
    t = preset_train(p, "cuda:1")
    assert (t["model"], t["dataset"], t["device"]) == ("preresnet", "fashion-mnist", "cuda:1")
    assert preset_train(p) == p.train and "device" not in preset_train(p)
    assert preset_semisup(get_preset("mnist1d"))["model"] == "cnn1d"  # type: ignore[index]


def test_the_cuda_sizes_take_one_training_step_on_the_cpu():
    """The CUDA form of the preset (ConvLarge semi-supervised, PreResNet-20 supervised), checked here: valid
    settings and one optimizer step of each network on CPU inputs of the full 28x28 size."""
    import dataclasses

    from valleys.app.config import TrainConfig
    from valleys.app.presets import get_preset, preset_semisup, preset_train
    from valleys.app.semisup import SemisupConfig
    from valleys.training.augment import default_augment
    from valleys.training.semisup import ConsistencyStep, MeanTeacher

    p = get_preset("fashion-cnn")
    semi = SemisupConfig(**{**preset_semisup(p, device="cuda"), "device": "cpu"})  # type: ignore[arg-type]
    semi.check()
    assert (semi.l, semi.cycle, semi.epochs) == (180, 30, 300)
    torch.manual_seed(0)
    model = build_model(semi.model, (1, 28, 28), 10, **semi.model_args)
    teacher = MeanTeacher(model, semi.ema_decay)
    step = ConsistencyStep(
        "mean-teacher", augment=default_augment((1, 28, 28), dataset=semi.dataset), weight=semi.consistency_weight,
        teacher=teacher,
    )  # fmt: skip
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, -1, -1])  # two labelled, two unlabelled
    opt = torch.optim.SGD(model.parameters(), lr=semi.lr, momentum=0.9, nesterov=True)
    trainer = Trainer(model, opt, [(x, y)], 1, step_fn=step, callbacks=[teacher])
    before = [q.detach().clone() for q in model.parameters()]
    trainer.fit(progress=False)
    assert all(torch.isfinite(q).all() for q in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    cfg = dataclasses.replace(TrainConfig(**preset_train(p, "cuda")), device="cpu", method="swag").resolved()
    net = build_model(cfg.model, (1, 28, 28), 10, **cfg.model_args)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 1 + 9 * 2 + 2  # PreResNet-20 + 2 shortcuts
    opt2 = torch.optim.SGD(net.parameters(), lr=cfg.lr)
    Trainer(net, opt2, [(x[:2], y[:2])], 1, step_fn=augmented_step(supervised_augment(cfg.augment, (1, 28, 28)))).fit(
        progress=False
    )
    assert all(torch.isfinite(q).all() for q in net.parameters())


def test_semisup_quick_needs_a_preset(tmp_path, capsys):
    from cli_harness import refused

    refused(["semisup", "--quick", "--out", tmp_path / "s"], capsys, names=["--quick", "--preset"])
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_semisup_preset_quick_runs_the_conv_study_and_flags_win(tmp_path):
    _fashion_or_skip()
    from valleys.app.cli import main

    out = tmp_path / "semi"
    argv = ["semisup", "--preset", "fashion-cnn", "--quick", "--consistency", "none", "mean-teacher"]
    assert main([*argv, "--labels-per-class", "10", "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["dataset"], cfg["model"], cfg["model_args"], cfg["train_subset"]) == (
        "fashion-mnist-14",
        "cnn",
        {"width": 16},
        2000,
    )
    assert cfg["labels_per_class"] == 10 and cfg["epochs"] == 6  # the flag given wins; the quick budget stands
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"none", "mean-teacher"}
    err = res["summary"]["mean-teacher"]["student"]["error"]["mean"]
    assert 0 < err < 0.6  # it learned (chance: 90%)


@pytest.mark.slow
def test_demo_preset_fashion_cnn_quick_runs_every_supervised_section(tmp_path):
    _fashion_or_skip()
    from valleys.app.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "fashion-cnn", "--quick", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    sgd = json.loads((out / "sgd-seed0" / "config.json").read_text())
    assert (sgd["dataset"], sgd["model"], sgd["augment"], sgd["model_args"]) == (
        "fashion-mnist-14",
        "cnn",
        "standard",
        {"width": 16},
    )
    assert "semisup" not in res or not res.get("semisup")  # the study runs alone (valleys semisup --preset)
    assert (out / "claims.md").is_file() or "claims" in res
