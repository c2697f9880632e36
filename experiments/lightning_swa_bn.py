"""Lightning's own weight averaging against valleys' SWACallback on a BatchNorm model, same data, model, seed.

Runs, each from the same initial weights, on scikit-learn's digits with the BatchNorm ``SmallCNN`` (SGD,
momentum 0.9, LR 0.05, batch 64, 30 epochs, averaging from epoch 15 at a constant LR of 0.05):

* ``valleys``: :class:`valleys.lightning.SWACallback(start=15, swa_lr=0.05)`: uniform average of the ends of
  epochs 16-30, written into the module, BatchNorm statistics recomputed exactly on the training data;
* ``lightning-swa``: ``StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=15, annealing_epochs=1)``;
* ``lightning-weight-averaging``: ``WeightAveraging()`` with its defaults (an average of every step from the
  start, BatchNorm buffers averaged too);
* ``sgd``: no averaging (the last iterate).

Prints test accuracy and NLL of the module each run ends with. Usage: ``python experiments/lightning_swa_bn.py``.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from torch import nn

from valleys.evaluation.predict import evaluate
from valleys.lightning import SWACallback
from valleys.zoo.data import load_dataset, make_loader
from valleys.zoo.models import SmallCNN


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("digits")
    torch.manual_seed(0)
    base = SmallCNN(1, data.num_classes)
    test = make_loader(data.test, 500)
    runs = {
        "valleys SWACallback (exact BatchNorm recompute)": [SWACallback(start=15, swa_lr=0.05)],
        "Lightning StochasticWeightAveraging": [
            pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=15, annealing_epochs=1)
        ],
        "Lightning WeightAveraging() defaults": [pl.callbacks.WeightAveraging()],
        "SGD, last iterate": [],
    }
    print(f"{'run':52s} test accuracy   test NLL")
    for name, callbacks in runs.items():
        torch.manual_seed(1)
        module = Module(copy.deepcopy(base))
        trainer = pl.Trainer(
            max_epochs=30,
            callbacks=callbacks,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, make_loader(data.train, 64, shuffle=True, seed=0))
        res = evaluate(module.net, test)
        print(f"{name:52s} {100 * res.accuracy:8.2f}%   {res.nll:.4f}")


if __name__ == "__main__":
    main()
