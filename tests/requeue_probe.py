"""A callback for tests/test_pack_resume.py, given to a run's process by its config
(``+callbacks.probe._target_=requeue_probe.SignalAt``, tests/ on PYTHONPATH): SLURM's requeue
signal at one hook of one training batch, then, once Lightning's handler has saved its requeue
checkpoint and asked for the requeue, the process killed as SLURM kills a job at its limit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L

BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")
STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
LATER_HOOKS = ("on_validation_start", "on_validation_end", "on_train_epoch_end", "on_train_epoch_start")


class SignalAt(L.Callback):
    """``SIGUSR1`` to this process at ``hook`` of training batch ``batch`` (-1: the last) of
    epoch ``epoch`` (a batch or step hook, or a later one of that batch's epoch); killed at the
    first hook after the requeue (``requeued``: the file the test's ``scontrol`` writes). It
    acts on the batch hooks only where ``hook`` is one, so that elsewhere the run keeps its
    grouped steps (``actlab.steps``: a callback with batch hooks gets one step per call)."""

    def __init__(self, hook: str, epoch: int, batch: int, requeued: str) -> None:
        self.hook, self.epoch, self.batch, self.requeued = hook, epoch, batch, Path(requeued)
        self.sent = False
        for name in {hook, *STEP_HOOKS, *LATER_HOOKS}:
            setattr(self, name, self._hook(name))

    def _hook(self, name: str):
        def hook(trainer: L.Trainer, *args, **kwargs) -> None:
            if self.sent:
                if self.requeued.exists():
                    os._exit(9)  # no handler, no clean-up: SIGKILL's
                return
            if name != self.hook or trainer.current_epoch != self.epoch:
                return
            batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
            if name in BATCH_HOOKS + STEP_HOOKS and batch != self.batch % trainer.num_training_batches:
                return
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

        return hook
