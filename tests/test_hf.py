"""valleys' Hugging Face callbacks: SWAG over the LoRA adapter of a tiny BERT built from a config (no download),
trained by transformers' Trainer on a task generated here."""

from __future__ import annotations

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'valleys[hf]')")
peft = pytest.importorskip("peft", reason="the hf extra is not installed (pip install 'valleys[hf]')")

from valleys.methods.averaging import NotCollectedError  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Sequences of 12 token ids; the label says whether token 7 occurs in the first half."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, 100, (n, 12), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        pos = torch.randint(0, 6, (n,), generator=g)
        self.ids[flip, pos[flip]] = 7
        self.labels = flip.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def _lora_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=16,
        num_labels=2,
    )
    base = transformers.BertForSequenceClassification(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    return peft.get_peft_model(base, lora)


def _train(model, callbacks, tmp_path, epochs=4):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(256, 0), callbacks=callbacks).train()


@pytest.mark.slow
def test_swag_over_the_lora_adapter_holds_k_plus_2_adapter_sizes_and_averages(tmp_path):
    from valleys.hf import SWAGCallback

    model = _lora_model()
    adapter = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    swag = SWAGCallback(start=1, rank=3, samples=10, names="lora-only")
    with pytest.raises(NotCollectedError):
        swag.bma(model, [])
    _train(model, [swag], tmp_path)
    size = sum(adapter.values())
    assert swag.averager.space.size == size < trainable  # the adapter, not the classifier head or the model
    assert swag.size() == (3 + 2) * size  # mean, second moments and K = 3 deviations
    assert swag.averager.n == 3  # the ends of epochs 2, 3 and 4
    test = torch.utils.data.DataLoader(Tokens(200, 1), batch_size=50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = swag.bma(model, test)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    assert res.num_samples == 10
    # an independent oracle: write each of the same 10 draws into a copy and average its softmax by hand
    import copy

    probs = swag.bma(model, test, return_probs=True).probs
    twin, space = copy.deepcopy(model).eval(), swag.averager.space
    draws = swag.averager.samples(10, generator=torch.Generator().manual_seed(0))
    manual = torch.zeros_like(probs)
    with torch.no_grad():
        for w in draws:
            space.write(twin, w)
            manual += (
                torch.cat(
                    [twin(**{k: v for k, v in b.items() if k != "labels"}).logits.double().softmax(-1) for b in test]
                )
                / 10
            )
    assert torch.allclose(probs, manual, atol=1e-6)
    labels = torch.cat([b["labels"] for b in test])
    assert res.metrics.accuracy == pytest.approx(float((manual.argmax(-1) == labels).double().mean()))
    assert res.metrics.nll == pytest.approx(float(-manual[torch.arange(len(labels)), labels].log().mean()), rel=1e-5)
    path = swag.save(tmp_path / "adapter" / "swag_posterior.safetensors")
    from valleys.core.checkpoint import load_checkpoint

    state, header = load_checkpoint(path)
    assert header["names"] == list(adapter) and state["deviations"].shape == (3, size)


def test_a_subset_that_matches_nothing_lists_what_exists():
    from valleys.hf import adapter_names

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=16,
        num_labels=2,
    )
    plain = transformers.BertForSequenceClassification(config)
    with pytest.raises(
        ValueError,
        match="matches no parameter of BertForSequenceClassification; its trainable "
        "parameters are: bert.embeddings.word_embeddings.weight",
    ):
        adapter_names(plain, "lora")


def test_the_extra_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "valleys.hf", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'valleys\[hf\]'"):
        import valleys.hf  # noqa: F401
