"""The LightningModule: a classifier around any network, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from actlab.metrics import EpochMetrics
from actlab.plain_attributes import PlainAttributes
from actlab.steps import GroupedSteps
from actlab.tensorboard import log_confusion_matrix, tensorboard_writers

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
STAGES = ("train", "val", "test")
# what a run logs every training epoch: what early stopping or a checkpoint can monitor
EPOCH_METRICS = ("train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "val/f1")
# where a checkpoint keeps the training epoch's running sums (one taken inside an epoch resumes them)
EPOCH_SUMS_KEY = "train_epoch_sums"


class HookNameAttribute(PlainAttributes):
    """Mixin for a LightningModule: Lightning sets ``_current_fx_name`` on the module around
    every hook call, ~40 times a training step; through ``nn.Module.__setattr__`` that costs
    ~1 us each, 0.04 ms a step of a tiny model. That plain attribute (and any other a subclass
    names in ``plain_attributes``, set every step) is set as the plain attribute it is."""

    plain_attributes = frozenset({"_current_fx_name"})


class Classifier(HookNameAttribute, GroupedSteps, L.LightningModule):
    """Cross-entropy classification of ``net``'s logits.

    Logs once per epoch ``{train,val,test}/{loss,acc}``: the exact mean loss and accuracy over
    every sample of the epoch, accumulated on the device (no per-step host syncs); and, for
    validation and testing, torchmetrics' macro F1 ``{val,test}/f1`` and the per-class
    accuracies ``test/acc_class_k``, plus a confusion-matrix image in TensorBoard after
    testing (:class:`~actlab.metrics.EpochMetrics`, a pack's with one run). ``train/lr`` is
    the learning rate of each epoch. A loss that stops being finite
    is the DivergenceMonitor callback's to catch.

    Args:
        net: the network (e.g. SimpleNetwork); its ``input_size`` and ``num_classes`` (when it
            has them) give the model summary an example input and the metrics their classes.
        optimizer: a factory taking the parameters (what a ``_partial_: true`` optimizer
            config instantiates to).
        scheduler: a learning-rate schedule from ``actlab.schedulers`` (a ``_partial_``
            factory of the optimiser and the run's length), or None for a constant rate.
        compile: wrap ``net`` in ``torch.compile`` for the forward pass.
        steps_per_call: optimiser steps per ``training_step`` call (:mod:`actlab.steps`; the
            numbers do not depend on it).
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, scheduler: Callable | None = None,
                 compile: bool = False, steps_per_call: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "steps_per_call"])
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.steps_per_call = steps_per_call
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # in a list: the compiled wrapper is not a second copy of the net's weights in checkpoints
        self._compiled = [torch.compile(net)] if compile else []
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix
        classes = getattr(net, "num_classes", 10)
        self.epoch_metrics = nn.ModuleDict(
            {f"{stage}_metrics": EpochMetrics(1, classes, keep_predictions=stage != "train") for stage in STAGES}
        )

    @property
    def example_input_array(self) -> torch.Tensor | None:
        """The model summary's example input: one zero image in the weights' dtype (float64
        under ``trainer.precision=64-true``), when the net says its input size."""
        size = getattr(self.net, "input_size", None)
        weight = next(self.net.parameters(), None)
        if not isinstance(size, int):
            return None
        return torch.zeros(1, size, dtype=weight.dtype if weight is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled[0](x) if self._compiled else self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.epoch_metrics[f"{stage}_metrics"].update(loss.unsqueeze(0), logits.unsqueeze(0), y.unsqueeze(0))
        return loss

    def train_batch(self, batch) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        metrics = {name: value[0] for name, value in self.epoch_metrics[f"{stage}_metrics"].compute_and_reset().items()}
        values = {name: metrics[name] for name in ("loss", "acc", "f1") if name in metrics}
        # one value an epoch: batch_size (which weights per-step values) only says so to Lightning
        self.log_dict({f"{stage}/{k}": v for k, v in {**values, **(extra or {})}.items()}, prog_bar=stage == "val",
                      batch_size=1)  # fmt: skip
        return metrics

    def on_train_start(self) -> None:
        super().on_train_start()
        self.on_train_epoch_start()  # a fit resumed inside an epoch gets no on_train_epoch_start: its rate now

    def on_train_epoch_start(self) -> None:
        # the rate this epoch trains at (Lightning steps epoch schedules before on_train_epoch_end)
        self._epoch_lr = torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", {"lr": self._epoch_lr})  # set at every fit's start and epoch's start
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.epoch_metrics["val_metrics"].compute_and_reset()
            return
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        metrics = self._log_epoch("test")
        self.log_dict({f"test/acc_class_{k}": v for k, v in enumerate(metrics["class_acc"])})
        log_confusion_matrix(tensorboard_writers(self.loggers), metrics["confusion"].cpu(), self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # inside an epoch (SLURM's requeue signal, a checkpoint at validation's end) the sums so far
        checkpoint[EPOCH_SUMS_KEY] = self.epoch_metrics["train_metrics"].sums()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if EPOCH_SUMS_KEY in checkpoint:  # a resumed epoch's metrics cover its batches before the checkpoint too
            self.epoch_metrics["train_metrics"].load_sums(checkpoint[EPOCH_SUMS_KEY])

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self, self.optimizer_factory, self.scheduler_factory)


def optimizer_and_schedule(module: GroupedSteps, optimizer: OptimizerFactory, scheduler: Callable | None,
                           params: Iterable[Any] | None = None) -> Any:  # fmt: skip
    """What ``configure_optimizers`` returns for ``module``'s parameters (or ``params``, e.g.
    parameter groups): the optimiser, with its learning-rate schedule sized to the trainer's
    run (epochs, steps per epoch) if any."""
    built = optimizer(module.parameters() if params is None else params)
    if scheduler is None:
        return built
    epochs = max(1, module.trainer.max_epochs or 1)
    steps_per_epoch = max(1, module.trainer.estimated_stepping_batches // epochs)
    return {"optimizer": built, "lr_scheduler": module.lr_schedule(scheduler(built, epochs, steps_per_epoch))}
