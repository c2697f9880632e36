"""A tiny Hugging Face classifier built from a config, and token data for it (dict batches with a mask)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def config(vocab: int = 20, classes: int = 3):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=classes,
    )


def bert(folder: str | None = None) -> torch.nn.Module:
    """``BertForSequenceClassification`` from the ``config.json`` of a ``save_pretrained`` folder (or the tiny
    default config); its weights are random until a checkpoint is loaded."""
    from transformers import AutoConfig, BertForSequenceClassification

    return BertForSequenceClassification(AutoConfig.from_pretrained(folder) if folder else config())


class Tokens(Dataset):
    """``{"input_ids", "attention_mask", "labels"}``: the label is the most frequent of tokens 1-3."""

    def __init__(self, n: int, seed: int, length: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        ids = torch.randint(4, 20, (n, length), generator=g)
        ids[:, :3] = (self.labels + 1)[:, None]
        lengths = torch.randint(4, length + 1, (n,), generator=g)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        self.ids = ids * self.mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def tokens(n_train: int = 96, n_test: int = 48) -> dict[str, Dataset]:
    return {"train": Tokens(n_train, 0), "val": Tokens(32, 2), "test": Tokens(n_test, 1)}
