"""The LightningModule: a classifier around any network, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``net``'s logits, with accuracy per stage.

    Logs ``{train,val,test}/{loss,acc}`` once per epoch (no per-step host syncs).

    Args:
        net: the network (e.g. SimpleNetwork).
        optimizer: a factory taking the parameters (what a ``_partial_: true`` optimizer
            config instantiates to).
        num_classes: number of classes of the task.
        compile: wrap ``net`` in ``torch.compile`` for the forward pass.
    """

    def __init__(
        self, net: nn.Module, optimizer: OptimizerFactory, num_classes: int = 10, compile: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.forward_net = torch.compile(net) if compile else net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy.update(logits.detach(), y)
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(y))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
