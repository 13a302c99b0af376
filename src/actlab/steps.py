"""Training steps in groups: several optimiser steps per Lightning ``training_step`` call.

Lightning's automatic optimisation costs ~0.3 ms of Python per step on a CPU (its hooks,
progress counters, closure and result objects; more on a slow GPU host), as much as a whole
step of a small MLP's arithmetic. :class:`GroupedSteps` pays it once per group: each
``training_step`` call draws up to ``steps_per_call`` batches from Lightning's data iterator
and, for each, does exactly what automatic optimisation does for one (the module's
``optimizer_zero_grad``, backward through Lightning's ``manual_backward``, the module's
``optimizer_step`` through Lightning's optimiser wrapper, then the step-interval learning-rate
schedules), so every callback hook of a step still runs per step and ``global_step`` counts
steps. The numbers are the ones one step per call gives, bit for bit (tests/test_steps.py
compares records, checkpoints and logged steps). One difference, in the checkpoint only: a
ReduceLROnPlateau schedule steps before the epoch's checkpoint is written, where Lightning's
automatic optimisation steps it after (its checkpoint holds the schedule one step behind).

A trainer setting that works per Lightning step (gradient accumulation or clipping,
validation inside an epoch) keeps the run on Lightning's automatic optimisation, one step per
call, and says so in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import has_len
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim.lr_scheduler import ReduceLROnPlateau

from actlab.errors import ConfigError

log = logging.getLogger(__name__)


def grouping_refusal(trainer: L.Trainer) -> str | None:
    """Why ``trainer``'s settings need one optimiser step per ``training_step`` call (None: they do not)."""
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches accumulates per Lightning step"
    if trainer.gradient_clip_val:
        return "trainer.gradient_clip_val clips per Lightning step"
    interval = trainer.val_check_interval
    if not (isinstance(interval, float) and interval == 1.0):  # an int counts batches: 1 validates after each
        return "trainer.val_check_interval counts Lightning steps"
    return None


def batches_need_no_preparation(trainer: L.Trainer) -> bool:
    """Whether Lightning's preparation of a batch already on the device is a no-op for this
    fit: no batch hook overridden (module or DataModule), precision's input conversion the
    identity (not 64-true or a half-precision ``*-true``)."""
    owners = [trainer.lightning_module, trainer.datamodule]
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    if any(owner is not None and is_overridden(hook, owner) for owner in owners for hook in hooks):
        return False
    return type(trainer.precision_plugin).convert_input is Precision.convert_input


class GroupedSteps:
    """Mixin for a LightningModule whose :meth:`train_batch` gives one training batch's loss:
    its ``training_step`` takes up to ``steps_per_call`` optimiser steps (see the module
    docstring). Set ``steps_per_call`` before the fit; 1 is Lightning's automatic optimisation."""

    steps_per_call: int = 1
    _plain_batches = False  # batches on the device need no preparation (set for each fit)
    _taken = 1  # the optimiser steps the last call took
    _monitors: dict[int, tuple[str, bool]] = {}  # per plateau schedule (by id): what it monitors, strictly or not

    def lr_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        """``configure_optimizers``' schedule dict as the fit steps it: under manual
        optimisation Lightning drops a plateau schedule's ``monitor``, kept here."""
        if self.automatic_optimization or not isinstance(schedule["scheduler"], ReduceLROnPlateau):
            return schedule
        if schedule.get("interval", "epoch") != "epoch":
            raise ValueError("a ReduceLROnPlateau schedule steps once an epoch with train_steps_per_call > 1; "
                             "set train_steps_per_call=1 for Lightning's own stepping")  # fmt: skip
        watched = (schedule["monitor"], schedule.get("strict", True))
        self._monitors = {**self._monitors, id(schedule["scheduler"]): watched}
        return {key: value for key, value in schedule.items() if key not in ("monitor", "strict", "reduce_on_plateau")}

    def train_batch(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        reason = grouping_refusal(self.trainer) if self.steps_per_call > 1 else "one step per call asked for"
        if reason and self.steps_per_call > 1:
            log.info("one training step per Lightning call (train_steps_per_call=%d not applied): %s",
                     self.steps_per_call, reason)  # fmt: skip
        self.automatic_optimization = reason is not None
        self._plain_batches = batches_need_no_preparation(self.trainer)

    def on_train_start(self) -> None:
        if not has_len(self.trainer.train_dataloader):
            raise ConfigError("the training loader has no length: actlab's training step draws its own batches "
                              "(src/actlab/steps.py) and needs len() to know where an epoch ends")  # fmt: skip

    def _batch_on_device(self, batch: Any) -> Any:
        """What Lightning's loop makes of a batch before ``training_step`` (with
        ``dataloader_iter`` the step's own task): precision's input conversion, the batch hooks,
        the transfer to the device; nothing for a tuple of tensors already on the device where
        none of these does anything (actlab's in-memory datasets: ~30 us a step saved)."""
        if self._plain_batches and isinstance(batch, tuple):
            device = self.device
            if all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
                return batch
        trainer = self.trainer
        batch = trainer.precision_plugin.convert_input(batch)
        batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def training_step(self, dataloader_iter: Iterator) -> torch.Tensor:
        batch, batch_idx, _ = next(dataloader_iter)
        if self.automatic_optimization:
            return self.train_batch(self._batch_on_device(batch))
        trainer, optimizer = self.trainer, self.optimizers()
        taken = 0
        while True:
            loss = self.train_batch(self._batch_on_device(batch))
            self.optimizer_zero_grad(trainer.current_epoch, batch_idx, optimizer.optimizer)
            self.manual_backward(loss)
            self.optimizer_step(trainer.current_epoch, batch_idx, optimizer)
            self._step_schedules("step", batch_idx)
            taken += 1
            if dataloader_iter.done:  # the epoch's last batch: epoch schedules step before validation, as Lightning's
                self._step_schedules("epoch", trainer.current_epoch)
                break
            if taken == self.steps_per_call or trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step:
                break
            batch, batch_idx, _ = next(dataloader_iter)
        self._taken = taken
        return loss.detach()

    def _step_schedules(self, interval: str, index: int, plateau: bool = False) -> None:
        """Lightning's ``_update_learning_rates`` for ``interval`` (its non-plateau schedules, or
        with ``plateau`` its ReduceLROnPlateau ones, given their monitored value)."""
        for config in self.trainer.lr_scheduler_configs:
            on_plateau = isinstance(config.scheduler, ReduceLROnPlateau)
            if config.interval != interval or on_plateau != plateau or (index + 1) % config.frequency:
                continue
            value = None
            if plateau:
                monitor, strict = self._monitors[id(config.scheduler)]
                value = self.trainer.callback_metrics.get(monitor)
                if value is None:
                    if strict:
                        raise RuntimeError(f"ReduceLROnPlateau monitors {monitor!r}, which is not logged; "
                                           f"logged: {sorted(self.trainer.callback_metrics)}")  # fmt: skip
                    continue
            self.lr_scheduler_step(config.scheduler, value)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.automatic_optimization and self._taken > 1:
            # Lightning counts one batch per call: its batch progress (a mid-epoch resume skips
            # that many batches; a record's partial epoch says how many it trained) and its logging
            # step (the epoch metrics' x axis) count the call's batches, as under automatic
            # optimisation. Borrowed loop state: tests/test_steps.py fails the day it changes.
            loop = self.trainer.fit_loop.epoch_loop
            loop.batch_progress.increment_by(self._taken - 1, is_last_batch=loop.batch_progress.is_last_batch)
            loop._batches_that_stepped += self._taken - 1

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:  # after validation, as Lightning steps them
            self._step_schedules("epoch", self.trainer.current_epoch, plateau=True)
