"""SLURM's requeue signal, handled where the checkpoint it saves resumes as the run goes on.

Before a time limit or preemption SLURM sends the job a signal (``SIGUSR1`` by default and in
actlab's launchers, ``signal: USR1@90``), and Lightning's handler saves the requeue checkpoint
there and then, between any two bytecodes, which the requeued job resumes from. Lightning's loops
resume some of those places wrongly (found by signalling at every hook; tests/test_pack_resume.py
signals at three of them):

- among the epoch's last batch's end hooks, the epoch counts as done: its validation and end
  hooks never run, and the run's history misses it (a run finished with 299 of its 300 epochs);
- inside validation, the resumed validation covers the batches left, its metrics theirs alone;
- at an epoch's start, the batches of the epoch before count as this one's: the epoch is skipped;
- among an epoch's end hooks, before the run's history (a pack member's, say) records the epoch;
- and, by Lightning's loop code (no hook lies there), between an optimiser step and the batch's
  count the step would be taken again.

:class:`RequeueGuard` notes the signal from the fit's start to its end and hands it to the
handler only at a training call's start (``on_train_batch_start``): the batches before it done,
the call's not begun; Lightning resumes the epoch from there, and the training loader, resumable
(:mod:`actlab.data.resumable`), draws the batches the run would have drawn. A signal after the
fit's last call is handled at the fit's end; one still waiting when the fit fails (SLURM's own
SIGTERM at the time limit, say, before the next call) is dropped with a warning: the job is not
requeued, and ``resume=true`` goes on from its last epoch's checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

# the signals a SLURM job may be given for its requeue (Lightning's SLURMEnvironment.requeue_signal)
REQUEUE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))


@contextlib.contextmanager
def requeue_signals_deferred() -> Iterator[None]:
    """SLURM's requeue signals that arrive inside the block are handled once it ends: their
    handlers (Lightning's, which saves a checkpoint) are swapped for one that notes them. (Not
    the OS's signal mask: another thread, TensorBoard's writer, may take a signal the main thread
    blocks, and Python runs the handler in the main thread anyway.) Blocks nest, and inside a
    fit's :class:`RequeueGuard` a noted signal goes on to wait for the guard's next handling place."""
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


class RequeueGuard(L.Callback):
    """Hands SLURM's requeue signals during a fit to their handler only at a training call's
    start (see the module docstring). To be the first of the trainer's callbacks, so that the
    checkpoint is taken there before any other callback's hook. Its batch hook acts once a call:
    a run keeps its grouped steps (:mod:`actlab.steps`)."""

    def __init__(self) -> None:
        # the handlers the fit started with, by signal, while this guard's stand in for them
        self._handlers: dict[int, Callable[[int, Any], Any]] = {}
        self._arrived: dict[int, Any] = {}  # signal -> frame, once each: one checkpoint and requeue a signal

    def _note(self, signum: int, frame: Any) -> None:
        self._arrived.setdefault(signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            return
        self._handlers = {sig: handler for sig in REQUEUE_SIGNALS if callable(handler := signal.getsignal(sig))}
        for sig in self._handlers:
            signal.signal(sig, self._note)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if self._arrived:
            self._handle()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stand_down()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._arrived:  # saved here, wherever the exception struck, the checkpoint could resume wrongly
            log.warning("SLURM's requeue signal came before the fit failed (%s); the job is not requeued: "
                        "resume=true goes on from its last epoch's checkpoint", type(exception).__name__)  # fmt: skip
            self._arrived.clear()
        self._stand_down()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stand_down()

    def _handle(self) -> None:
        """The noted signals' own handlers (Lightning's: the requeue checkpoint, the requeue). A
        signal that comes while they run is dropped: the job's requeue was just asked for."""
        for signum, frame in list(self._arrived.items()):
            self._handlers[signum](signum, frame)
        self._arrived.clear()

    def _stand_down(self) -> None:
        """The fit's handlers back, and a signal noted meanwhile handled by them (a fit that has
        ended: its checkpoint holds what the fit did)."""
        handlers, self._handlers = self._handlers, {}
        for sig, handler in handlers.items():
            if signal.getsignal(sig) == self._note:
                signal.signal(sig, handler)
        arrived, self._arrived = self._arrived, {}
        for signum, frame in arrived.items():
            handlers[signum](signum, frame)
