"""A pack as a LightningModule: the stacked network of K runs, trained by Lightning's Trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from actlab.classifier import OptimizerFactory, optimizer_and_schedule
from actlab.pack.stacked import StackedNetwork
from actlab.tensorboard import tensorboard_writers

STAGES = ("train", "val", "test")


MEMBER_SUFFIX = "@member"


def member_prefix(k: int) -> str:
    """Where member k's metrics live among the pack's logged metrics (``member/3/val/acc``)."""
    return f"member/{k}/"


def member_key(key: str, k: int) -> str:
    """Member k's callback state key in a pack's checkpoint, from its key in a single run's."""
    return f"{key}{MEMBER_SUFFIX}{k}"


def classification_metrics(confusion: torch.Tensor, loss_sum: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per member, from its confusion matrix ``(K, C, C)`` (rows true, columns predicted) and
    summed loss: mean loss, accuracy, macro F1 (torchmetrics' definition: a class with no true
    and no predicted sample scores 0), per-class accuracy (recall), the matrix itself."""
    confusion = confusion.double()
    count = confusion.sum((1, 2)).clamp(min=1)
    hits = confusion.diagonal(dim1=1, dim2=2)
    true, predicted = confusion.sum(2), confusion.sum(1)
    f1 = torch.where(true + predicted > 0, 2 * hits / (true + predicted).clamp(min=1), 0.0)
    return {
        "loss": (loss_sum / count).float(),
        "acc": (hits.sum(1) / count).float(),
        "f1": f1.mean(1).float(),
        "class_acc": (hits / true.clamp(min=1)).float(),
        "confusion": confusion.long(),
    }


class PackModule(L.LightningModule):
    """K classifiers of one architecture as one LightningModule over a StackedNetwork.

    The loss is the sum of the live members' mean cross-entropies, so each member's
    gradients are its own and one optimiser step over the stacked parameters is K separate
    steps (for elementwise optimisers). Member k logs what its single run's Classifier logs,
    under ``member/k/`` (``member/k/train/loss``, ``member/k/val/acc``, ``member/k/test/f1``,
    ...); the pack's logger routes those to member k's own loggers. A member stopped early or
    diverged leaves the live set: its loss is masked and its weights are put back after every
    optimiser step (momentum would go on moving them).

    Args:
        net: the members' networks, stacked.
        optimizer: the members' optimiser factory (their optimiser configs are equal).
        scheduler: their learning-rate schedule factory (``actlab.schedulers``), or None.
    """

    def __init__(self, net: StackedNetwork, optimizer: OptimizerFactory, scheduler: Callable | None = None) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.live = [True] * net.size
        self.register_buffer("live_mask", torch.ones(net.size, dtype=torch.bool), persistent=False)
        self._stopped_before: list[int] = []  # resumed members that had stopped: frozen once restored
        self.tested = [True] * net.size  # the members the test stage reports
        self._frozen: dict[int, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
        self.member_losses: torch.Tensor | None = None
        classes = net.weights[-1].shape[1]
        for stage in STAGES:
            self.register_buffer(f"{stage}_loss_sum", torch.zeros(net.size, dtype=torch.float64), persistent=False)
        for stage in ("val", "test"):
            self.register_buffer(f"{stage}_confusion", torch.zeros(net.size, classes, classes, dtype=torch.long),
                                 persistent=False)  # fmt: skip
        # training reports loss and accuracy only: correct predictions and samples, no confusion matrix
        self.register_buffer("train_correct", torch.zeros(net.size, dtype=torch.long), persistent=False)
        self.train_count = 0
        self.classes = classes

    # -- members ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.net.size

    @torch.no_grad()
    def stop_member(self, k: int) -> None:
        """Member k takes no more steps (early stopping, divergence); once none is left, the
        whole fit stops."""
        if not self.live[k]:
            return
        self.live[k] = False
        self.live_mask[k] = False
        self._frozen[k] = [(v, j, v[j].clone()) for v, j in self.net.member_slots(k).values() if j is not None]
        if not any(self.live) and self._trainer is not None:
            self.trainer.should_stop = True

    @torch.no_grad()
    def load_member_weights(self, k: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member k's weights from a single run's state dict (``net.*`` keys)."""
        for name, (tensor, j) in self.net.member_slots(k).items():
            if j is not None:
                tensor[j] = state_dict[f"net.{name}"].to(tensor.device)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as its single run's Classifier holds them (``net.*`` keys)."""
        return {f"net.{name}": value for name, value in self.net.member_state_dict(k).items()}

    # -- steps ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def keep_stopped(self, members: list[int]) -> None:
        """Members that had stopped before this fit (a resumed pack): they stay frozen."""
        self._stopped_before = list(members)

    def on_fit_start(self) -> None:
        for k in self._stopped_before:  # their restored weights are the ones to keep
            self.stop_member(k)
        self._stopped_before = []

    def _accumulate(self, stage: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-member mean losses ``(K,)``; the stage's loss sums and confusion matrices grow
        (training: the correct predictions and the samples)."""
        k, batch = targets.shape
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(k, batch)
        with torch.no_grad():
            getattr(self, f"{stage}_loss_sum").add_(losses.detach().sum(1))  # into float64
            predictions = logits.argmax(-1)
            if stage == "train":
                self.train_correct.add_((predictions == targets).sum(1))
                self.train_count += batch
            else:
                c = self.classes
                cells = torch.arange(k, device=targets.device).unsqueeze(1) * c * c + targets * c + predictions
                getattr(self, f"{stage}_confusion").view(-1).add_(torch.bincount(cells.flatten(), minlength=k * c * c))
        return losses.mean(1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch  # (K, B, ...), (K, B): each member's own batch
        losses = self._accumulate("train", self.net(x), y)
        self.member_losses = losses.detach()  # the step's loss of each member (divergence checks read it)
        return torch.where(self.live_mask, losses, 0.0).sum()

    def _evaluation_step(self, batch, stage: str) -> None:
        x, y = batch  # the members' common batch
        k = self.size
        self._accumulate(stage, self.net(x.unsqueeze(0).expand(k, *x.shape)), y.unsqueeze(0).expand(k, -1))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            for slots in self._frozen.values():
                for tensor, j, value in slots:
                    tensor[j] = value

    # -- epoch metrics ----------------------------------------------------------------------

    def _epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        loss_sum = getattr(self, f"{stage}_loss_sum")
        if stage == "train":
            count = max(1, self.train_count)
            metrics = {"loss": (loss_sum / count).float(), "acc": self.train_correct.double().div(count).float()}
            self.train_correct.zero_()
            self.train_count = 0
        else:
            confusion = getattr(self, f"{stage}_confusion")
            metrics = classification_metrics(confusion, loss_sum)
            confusion.zero_()
        loss_sum.zero_()
        return metrics

    def _log_members(self, stage: str, members: list[int], names: tuple[str, ...],
                     extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        metrics = self._epoch_metrics(stage)
        values = {}
        for k in members:
            prefix = member_prefix(k)
            values.update({f"{prefix}{stage}/{name}": metrics[name][k] for name in names})
            values.update({f"{prefix}{stage}/{name}": v for name, v in (extra or {}).items()})
        self.log_dict(values)
        return metrics

    def on_train_epoch_start(self) -> None:
        # the rate this epoch trains at (Lightning steps epoch schedules before on_train_epoch_end)
        self._epoch_lr = torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self) -> None:
        live = [k for k in range(self.size) if self.live[k]]
        lr = getattr(self, "_epoch_lr", None)  # none when the fit resumed inside this epoch
        self._log_members("train", live, ("loss", "acc"), {"lr": lr} if lr is not None else None)
        self._epoch_lr = None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._epoch_metrics("val")
            return
        self._log_members("val", [k for k in range(self.size) if self.live[k]], ("loss", "acc", "f1"))

    def on_test_epoch_end(self) -> None:
        members = [k for k in range(self.size) if self.tested[k]]
        metrics = self._log_members("test", members, ("loss", "acc", "f1"))
        for k in members:
            prefix = member_prefix(k)
            self.log_dict({f"{prefix}test/acc_class_{c}": v for c, v in enumerate(metrics["class_acc"][k])})
        from actlab.pack.loggers import PackLogger

        pack_loggers = [logger for logger in self.loggers if isinstance(logger, PackLogger)]
        if pack_loggers:
            from actlab.plotting import confusion_matrix_figure

            for k in members:
                for writer in tensorboard_writers(pack_loggers[0].member_loggers[k]):
                    writer.add_figure("test/confusion_matrix", confusion_matrix_figure(metrics["confusion"][k].cpu()),
                                      self.global_step)  # fmt: skip

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self, self.optimizer_factory, self.scheduler_factory)
