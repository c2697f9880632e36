"""Data for semi-supervised training: a labelled/unlabelled split with a fixed number of labels per class, and
batches that mix a fixed number of labelled examples with unlabelled ones (Tarvainen & Valpola 2017, "Mean
teachers are better role models"; Athiwaratkun et al. 2019, "There Are Many Consistent Explanations of
Unlabeled Data: Why You Should Average", ICLR).

* :func:`labelled_split` picks exactly ``n`` examples of every class from a seed; the rest is unlabelled.
* :class:`PartiallyLabelled` wraps any ``(input, label)`` or dict dataset and hides the labels of the
  unlabelled examples: their label becomes :data:`NO_LABEL` (``-1``), so a batch carries its own mask
  (``targets >= 0``).
* :class:`MixedBatchSampler` draws every batch as ``labelled_batch_size`` labelled indices (the labelled set
  is reshuffled each time it runs out) followed by ``batch_size - labelled_batch_size`` unlabelled ones; an
  epoch is one pass over the unlabelled set. It draws from the loader's ``torch.Generator``, which the
  trainer reseeds at every epoch, so a resumed run sees the same batches.
* :func:`semisup_loader` puts the three together.

Example::

    labelled, unlabelled = labelled_split(dataset_targets(train), labels_per_class=40, seed=0)
    loader = semisup_loader(train, labelled, batch_size=128, labelled_batch_size=32, seed=0)
    x, y = next(iter(loader))          # y[:32] >= 0 are labels, y[32:] == -1
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..core.batches import sized_length
from ..core.distributed import world_size
from ..errors import InputError, MissingLabelsError

__all__ = [
    "NO_LABEL",
    "MissingLabelsError",
    "dataset_targets",
    "labelled_split",
    "PartiallyLabelled",
    "MixedBatchSampler",
    "semisup_loader",
]

#: The label an unlabelled example carries in a semi-supervised batch.
NO_LABEL = -1

_LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def _item_label(item: Any, key: str | None) -> Any:
    if isinstance(item, dict):
        keys = [key] if key is not None else [k for k in _LABEL_KEYS if k in item]
        if not keys or keys[0] not in item:
            raise MissingLabelsError(
                f"the dataset's examples are dicts without a label entry (keys {sorted(item)}); pass "
                "label_key='...' naming the entry that holds the class"
            )
        return item[keys[0]]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[1]
    raise MissingLabelsError(
        f"the dataset's examples are {type(item).__name__}s without labels; semi-supervised training needs "
        "(input, label) pairs or dicts with a label entry for the labelled examples"
    )


def dataset_targets(dataset: Dataset, *, label_key: str | None = None) -> Tensor:
    """The integer class label of every example of ``dataset`` as a 1-D ``long`` tensor.

    Read without touching the inputs where possible (``TensorDataset``'s second tensor, a ``targets``
    attribute, a ``Subset`` of those), else by indexing every example (``(input, label)`` tuples or dicts with
    a ``label``/``target``/``y`` entry, or ``label_key``). Raises :class:`MissingLabelsError` when there are
    none, or when a label is not an integer class.
    """
    if isinstance(dataset, Subset):
        base = dataset_targets(dataset.dataset, label_key=label_key)
        return base[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise MissingLabelsError(
                "the TensorDataset holds one tensor (inputs only): there are no labels; "
                "pass TensorDataset(inputs, labels)"
            )
        y = dataset.tensors[1]
    elif isinstance(targets := getattr(dataset, "targets", None), (Tensor, list, tuple)):
        y = torch.as_tensor(targets)
    else:
        try:
            n = sized_length(dataset)
        except TypeError:
            raise MissingLabelsError(
                "the dataset has no length; semi-supervised splits need a map-style dataset"
            ) from None
        y = torch.as_tensor([int(torch.as_tensor(_item_label(dataset[i], label_key))) for i in range(n)])
    if y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise MissingLabelsError(
            f"the labels must be one integer class per example, got a {y.dtype} tensor of shape {tuple(y.shape)}"
        )
    if y.numel() and int(y.min()) < 0:
        raise MissingLabelsError(
            f"the dataset holds negative labels (min {int(y.min())}): some examples are "
            "already unlabelled; split a fully labelled dataset"
        )
    return y.long()


def labelled_split(targets: Tensor | Sequence[int], labels_per_class: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Choose ``labels_per_class`` labelled examples of every class, the rest unlabelled.

    For every class ``c`` the indices ``{i : y_i = c}`` are permuted with a generator seeded by ``seed`` and the
    first ``labels_per_class`` are labelled. Returns ``(labelled, unlabelled)`` sorted index tensors that
    partition ``range(len(targets))``. Raises ``ValueError`` when ``labels_per_class < 1`` or when a class has
    fewer examples than asked (naming the class and its count).
    """
    y = torch.as_tensor(targets).long()
    if isinstance(labels_per_class, bool) or not isinstance(labels_per_class, int) or labels_per_class < 1:
        raise InputError(
            f"labels per class must be an integer >= 1, got {labels_per_class!r} "
            "(with no labels there is nothing to learn the classes from)"
        )
    if y.dim() != 1 or y.numel() == 0:
        raise InputError("the targets must be a non-empty 1-D tensor of class labels")
    classes, counts = torch.unique(y, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if int(n) < labels_per_class]
    if short:
        fewest = min(n for _, n in short)
        listed = ", ".join(f"class {c} has {n}" for c, n in short[:5]) + (" ..." if len(short) > 5 else "")
        raise InputError(
            f"labels per class {labels_per_class} is more than a class has ({listed}); choose at most {fewest}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:labels_per_class]])
    labelled = torch.sort(torch.cat(chosen)).values
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[labelled] = False
    return labelled, torch.nonzero(mask).flatten()


class PartiallyLabelled(Dataset):
    """``dataset`` with the labels of every example outside ``labelled`` replaced by :data:`NO_LABEL`.

    Items that are ``(input, label, ...)`` tuples keep their shape; dict items get their label entry (the
    first of ``label``/``labels``/``target``/``targets``/``y``, or ``label_key``) replaced.
    """

    def __init__(self, dataset: Dataset, labelled: Tensor | Sequence[int], *, label_key: str | None = None) -> None:
        self.dataset = dataset
        self.label_key = label_key
        n = sized_length(dataset)
        self.is_labelled = torch.zeros(n, dtype=torch.bool)
        idx = torch.as_tensor(labelled, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise InputError(f"labelled indices must lie in [0, {n}), got {int(idx.min())}..{int(idx.max())}")
        self.is_labelled[idx] = True

    def __len__(self) -> int:
        return self.is_labelled.numel()

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        if bool(self.is_labelled[i]):
            return item
        if isinstance(item, dict):
            key = self.label_key or next((k for k in _LABEL_KEYS if k in item), None)
            if key is None:
                raise MissingLabelsError(f"dict example {i} has no label entry (keys {sorted(item)}); pass label_key")
            return {**item, key: torch.tensor(NO_LABEL)}
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            return (item[0], torch.tensor(NO_LABEL), *item[2:])
        raise MissingLabelsError(f"example {i} is a {type(item).__name__}, not an (input, label) pair")


class MixedBatchSampler(torch.utils.data.Sampler):
    """Batches of ``labelled_batch_size`` labelled indices followed by ``batch_size - labelled_batch_size``
    unlabelled ones (two samplers, one batch).

    The unlabelled indices are drawn without replacement in a fresh permutation each epoch and the incomplete
    last batch is dropped, so an epoch has ``len(unlabelled) // (batch_size - labelled_batch_size)`` batches;
    the labelled stream is a permutation that is redrawn whenever it runs out. With
    ``labelled_batch_size == batch_size`` every batch is labelled and an epoch is a pass over the labelled set.
    Randomness comes from ``generator`` (the trainer reseeds it every epoch). With ``ranks = R > 1`` (training
    under torch.distributed) both parts must split into R equal shares and every batch is laid out as R blocks
    of ``labelled_batch_size / R`` labelled and ``(batch_size - labelled_batch_size) / R`` unlabelled indices, so
    that each rank's contiguous slice holds its share of both.
    """

    def __init__(
        self,
        labelled: Tensor | Sequence[int],
        unlabelled: Tensor | Sequence[int],
        batch_size: int,
        labelled_batch_size: int,
        *,
        generator: torch.Generator | None = None,
        ranks: int = 1,
    ) -> None:
        self.labelled = torch.as_tensor(labelled, dtype=torch.long)
        self.unlabelled = torch.as_tensor(unlabelled, dtype=torch.long)
        for name, v in (("batch size", batch_size), ("labelled batch size", labelled_batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"the {name} must be an integer >= 1, got {v!r}")
        if labelled_batch_size > batch_size:
            raise InputError(
                f"the labelled batch size {labelled_batch_size} is larger than the batch size "
                f"{batch_size}; choose at most {batch_size} labelled examples per batch"
            )
        if self.labelled.numel() == 0:
            raise InputError("there are no labelled examples to draw from")
        self.batch_size, self.labelled_batch_size = batch_size, labelled_batch_size
        self.unlabelled_batch_size = batch_size - labelled_batch_size
        if self.unlabelled_batch_size and self.unlabelled.numel() < self.unlabelled_batch_size:
            raise InputError(
                f"{self.unlabelled.numel()} unlabelled examples do not fill one batch's "
                f"{self.unlabelled_batch_size} unlabelled places; lower --batch-size or raise "
                "--labelled-batch-size"
            )
        if ranks > 1 and (labelled_batch_size % ranks or self.unlabelled_batch_size % ranks):
            raise InputError(
                f"{ranks} processes must split every batch into equal parts: the labelled batch size "
                f"{labelled_batch_size} and the unlabelled part {self.unlabelled_batch_size} must both be "
                f"multiples of {ranks}"
            )
        self.generator = generator
        self.ranks = ranks

    def __len__(self) -> int:
        if self.unlabelled_batch_size == 0:
            return self.labelled.numel() // self.labelled_batch_size or 1
        return self.unlabelled.numel() // self.unlabelled_batch_size

    def _labelled_stream(self) -> Iterator[int]:
        while True:
            yield from self.labelled[torch.randperm(self.labelled.numel(), generator=self.generator)].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self)
        u = self.unlabelled_batch_size
        order = self.unlabelled[torch.randperm(self.unlabelled.numel(), generator=self.generator)].tolist() if u else []
        stream = self._labelled_stream()
        for b in range(n):
            lab = [next(stream) for _ in range(self.labelled_batch_size)]
            unl = order[b * u : (b + 1) * u]
            if self.ranks == 1:
                yield lab + unl
                continue
            # one block per rank, each with its share of both parts: a rank's contiguous slice of the batch
            # (valleys.core.distributed.RankSliceBatchSampler) is then a small mixed batch of its own
            lr, ur = len(lab) // self.ranks, len(unl) // self.ranks
            yield [i for r in range(self.ranks) for i in lab[r * lr : (r + 1) * lr] + unl[r * ur : (r + 1) * ur]]


def semisup_loader(
    dataset: Dataset,
    labelled: Tensor | Sequence[int],
    *,
    batch_size: int = 128,
    labelled_batch_size: int = 32,
    seed: int = 0,
    unlabelled: Tensor | Sequence[int] | None = None,
    label_key: str | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of mixed batches over ``dataset``: the examples in ``labelled`` keep their labels, every
    other one (or those in ``unlabelled``) carries :data:`NO_LABEL`. Its ``generator`` (seeded with ``seed``)
    drives the :class:`MixedBatchSampler`, and :class:`valleys.training.trainer.Trainer` reseeds it per epoch.
    Under torch.distributed the batches are laid out for the ranks (``MixedBatchSampler(ranks=R)``)."""
    labelled_t = torch.as_tensor(labelled, dtype=torch.long)
    if unlabelled is None:
        mask = torch.ones(sized_length(dataset), dtype=torch.bool)
        mask[labelled_t] = False
        unlabelled = torch.nonzero(mask).flatten()

    gen = torch.Generator().manual_seed(int(seed))
    sampler = MixedBatchSampler(
        labelled_t, unlabelled, batch_size, labelled_batch_size, generator=gen, ranks=world_size()
    )
    return DataLoader(
        PartiallyLabelled(dataset, labelled_t, label_key=label_key),
        batch_sampler=sampler,
        generator=gen,
        num_workers=num_workers,
    )
