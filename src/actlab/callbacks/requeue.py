"""SLURM's requeue signal, handled where a checkpoint is whole.

Before a time limit or preemption SLURM sends the job a signal (``SIGUSR1`` by default and in
actlab's launchers, ``signal: USR1@90``), and Lightning's handler saves the requeue checkpoint
there and then, between any two bytecodes. Landing among an epoch's end hooks, it saved an
epoch the loop counts as done while the run's history (a pack member's, say) had not recorded it
yet, and the requeued run never recorded it (a pack member finished with 299 of its 300 epochs);
landing while a pack member's own checkpoint was written, it saved that member's callback states
alone. Inside those spans the signal is noted and handled once they end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import lightning as L

# the signals a SLURM job may be given for its requeue (Lightning's SLURMEnvironment.requeue_signal)
REQUEUE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))


@contextlib.contextmanager
def requeue_signals_deferred() -> Iterator[None]:
    """SLURM's requeue signals that arrive inside the block are handled once it ends: their
    handlers (Lightning's, which saves a checkpoint) are swapped for one that notes them. (Not
    the OS's signal mask: another thread, TensorBoard's writer, may take a signal the main thread
    blocks, and Python runs the handler in the main thread anyway.) Blocks nest."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    originals = {sig: handler for sig in REQUEUE_SIGNALS if callable(handler := signal.getsignal(sig))}
    arrived: list[tuple[int, object]] = []
    for sig in originals:
        signal.signal(sig, lambda signum, frame: arrived.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)
        for signum, frame in arrived:
            originals[signum](signum, frame)


class EpochEndRequeueGuard(L.Callback):
    """Holds SLURM's requeue signals from an epoch's end hooks to the next epoch's start (or the
    fit's end): the requeue checkpoint is then the epoch's, whole, as its ``last.ckpt``. To be the
    first of the trainer's callbacks, so that its ``on_train_epoch_end`` runs before any other's
    (the members' histories and checkpoints of a pack run last, after the module's)."""

    def __init__(self) -> None:
        self._held: contextlib.ExitStack | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()
        self._held = contextlib.ExitStack()
        self._held.enter_context(requeue_signals_deferred())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()  # a signal noted meanwhile is handled here
