"""The LightningModule: a classifier around any network, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
STAGES = ("train", "val", "test")


class EpochAccumulator(nn.Module):
    """Sums of loss, correct predictions and samples over an epoch, kept on the device.

    Updating costs a few tensor ops and no host sync; the epoch's mean loss and (micro)
    accuracy are read once, at the end. A per-step ``self.log`` or torchmetrics update costs
    ~50-130 us of Python each, a few percent of a CPU training step of this small MLP.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("loss_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        # in-place methods, not `+=`: that would also go through nn.Module.__setattr__
        self.loss_sum.add_(loss.detach().double(), alpha=target.numel())
        self.correct.add_((logits.argmax(dim=1) == target).sum())
        self.count.add_(target.numel())

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        values = {"loss": (self.loss_sum / count).float(), "acc": self.correct.double().div(count).float()}
        self.loss_sum.zero_()
        self.correct.zero_()
        self.count.zero_()
        return values


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``net``'s logits.

    Logs ``{train,val,test}/{loss,acc}`` once per epoch: the exact mean loss and accuracy
    over every sample of the epoch, accumulated on the device (no per-step host syncs).
    A loss that stops being finite is the DivergenceMonitor callback's to catch.

    Args:
        net: the network (e.g. SimpleNetwork); its ``input_size`` (when it has one) gives
            the model summary an example input, so it can show sizes and FLOPs.
        optimizer: a factory taking the parameters (what a ``_partial_: true`` optimizer
            config instantiates to).
        compile: wrap ``net`` in ``torch.compile`` for the forward pass.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])
        self.net = net
        if isinstance(getattr(net, "input_size", None), int):
            self.example_input_array = torch.zeros(1, net.input_size)
        self.optimizer_factory = optimizer
        # in a list: the compiled wrapper is not a second copy of the net's weights in checkpoints
        self._compiled = [torch.compile(net)] if compile else []
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix
        self.epoch_metrics = nn.ModuleDict({f"{stage}_metrics": EpochAccumulator() for stage in STAGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled[0](x) if self._compiled else self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.epoch_metrics[f"{stage}_metrics"].update(loss, logits, y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.epoch_metrics[f"{stage}_metrics"].compute_and_reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
