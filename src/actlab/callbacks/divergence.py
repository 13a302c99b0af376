"""Stop a run whose training loss is no longer finite."""

from __future__ import annotations

import math

import lightning as L
import torch


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class DivergenceMonitor(L.Callback):
    """Raise DivergedError once the training loss is NaN/inf.

    Checks every ``check_every_n_steps`` steps (each check is one host sync on a GPU) and
    at the end of every training epoch.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.check_every_n_steps == 0:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None and not bool(torch.isfinite(loss)):
                raise DivergedError(
                    f"training loss is {float(loss)} at epoch {trainer.current_epoch}, "
                    f"step {trainer.global_step}"
                )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise DivergedError(f"epoch {trainer.current_epoch} mean training loss is {float(loss)}")
