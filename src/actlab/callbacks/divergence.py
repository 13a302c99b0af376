"""Stop a run whose training loss is no longer finite."""

from __future__ import annotations

import lightning as L
import torch

from actlab.errors import DivergedError


class DivergenceMonitor(L.Callback):
    """Raise :class:`~actlab.errors.DivergedError` once the training loss is NaN/inf: the
    one divergence check of a run.

    Checks the step's loss every ``check_every_n_steps`` steps and the epoch's last step
    (each check is one host sync on a GPU). Once weights are NaN every later loss is too, so
    the epoch-end check catches any divergence the periodic ones skipped. Where a
    ``training_step`` call takes several steps (:mod:`actlab.steps`), the check falls on the
    call whose steps pass the multiple of ``check_every_n_steps``, with its last step's loss.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._last_loss: torch.Tensor | None = None
        self._last_step = 0  # the global step at the last call's end

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = self.step_loss(outputs, pl_module)
        if loss is None:
            return
        self._last_loss = loss.detach()
        step, n = trainer.global_step, self.check_every_n_steps
        if step // n > self._last_step // n:  # a multiple of n among this call's steps
            self._check(trainer, pl_module)
        self._last_step = step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def step_loss(self, outputs, pl_module) -> torch.Tensor | None:
        """The step's training loss (a pack: each member's)."""
        return outputs["loss"] if isinstance(outputs, dict) else outputs

    def _check(self, trainer: L.Trainer, pl_module) -> None:
        if self._last_loss is not None and not bool(torch.isfinite(self._last_loss).all()):
            self.diverged(trainer, pl_module, self._last_loss)

    def diverged(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        """What a non-finite loss does: a single run ends, recorded ``diverged``."""
        raise divergence(trainer, float(loss))


def divergence(trainer: L.Trainer, loss: float) -> DivergedError:
    """The error a run (or a pack member) whose training loss is ``loss`` diverged with."""
    return DivergedError(f"training loss is {loss} at epoch {trainer.current_epoch}, step {trainer.global_step}")
