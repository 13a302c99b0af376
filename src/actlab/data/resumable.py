"""Training loaders that a fit resumes inside an epoch where it stopped.

A fit resumed from a checkpoint taken inside an epoch draws that epoch's remaining batches
(``len(loader)`` minus those done). A plain loader draws them from a fresh shuffle: another order
than the run's, and the next epochs' too (the shuffling generator has moved on). A
:class:`ResumableEpoch` loader draws the epoch's order again from its generators' states at the
epoch's start and begins after the batches done, so the resumed fit sees the batches the
uninterrupted one does (SLURM's requeue checkpoint is taken inside epochs:
:mod:`actlab.callbacks.requeue`; tests/test_pack_resume.py compares the weights).

The state travels in the DataModule's own checkpoint state (:class:`ResumesTrainLoader`), not
(only) in the one Lightning keeps for a stateful loader: Lightning hands that back only if it
builds the loader after restoring its loops' state, and a learning-rate schedule sized by
``trainer.estimated_stepping_batches`` has it built before (the DataModule's state is restored
before either, and the loader built next takes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch


def epoch_batches_done(trainer: L.Trainer | None) -> Callable[[], int | None] | None:
    """How many training batches of the epoch ``trainer``'s fit is inside it has processed (the
    optimiser stepped on them), asked when a checkpoint is saved: None between two epochs or
    once the epoch's training batches are all done, and no function without a trainer.
    Borrowed loop state: tests/test_pack_resume.py resumes from checkpoints inside epochs."""
    if trainer is None:
        return None

    def done() -> int | None:
        loop = trainer.fit_loop
        epochs, batches = loop.epoch_progress.current, loop.epoch_loop.batch_progress.current
        if epochs.started == epochs.processed or batches.processed >= trainer.num_training_batches:
            return None  # between epochs, or past the epoch's training (at its validation): no batch to draw
        return batches.processed

    return done


def fresh_shuffle_warning(checkpoint: dict[str, Any]) -> str | None:
    """What a fit resumed from ``checkpoint`` does differently from the run it continues, where
    the checkpoint was taken inside an epoch's training (batches left) by an actlab whose loaders
    did not keep their order (no ``train_epoch`` state): it draws the epoch's remaining batches
    from a fresh shuffle. None for any other checkpoint."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loops.get("epoch_progress", {}).get("current", {})
    inside = bool(epochs) and epochs["started"] > epochs["processed"]
    if not inside or loops.get("epoch_loop.batch_progress", {}).get("is_last_batch", True):
        return None
    if any(isinstance(state, dict) and "train_epoch" in state for state in checkpoint.values()):
        return None
    return ("the checkpoint was taken inside an epoch by an actlab whose training loaders did not keep their "
            "order: the epoch's remaining batches come from a fresh shuffle, not the interrupted run's")  # fmt: skip


class ResumableEpoch:
    """A training loader's state for a resume inside an epoch: its shuffling generators' states
    at the epoch's start and the batches done. A subclass's ``__iter__`` calls
    :meth:`_begin_epoch` at once (Lightning asks for an epoch's iterator at its start; the first
    batch may be drawn only inside the first training call) and its batches start after
    :meth:`_skip` batches; its generators are ``_shuffle_generators()`` (none: a fixed order);
    ``batches_done`` tells how many batches of the epoch the fit has done (None: outside a fit,
    or between epochs: no state)."""

    batches_done: Callable[[], int | None] | None = None
    _epoch_start: list[torch.Tensor] | None = None  # the generators' states where this epoch's order is drawn
    _resume: dict[str, Any] | None = None
    _skipping = 0

    def _shuffle_generators(self) -> list[torch.Generator]:
        raise NotImplementedError

    def _begin_epoch(self) -> None:
        """An epoch's iterator is asked for: the generators put back to the resumed epoch's start
        (if resuming), their states kept."""
        generators = self._shuffle_generators()
        resume, self._resume = self._resume, None
        if resume is not None:
            for generator, state in zip(generators, resume["generators"], strict=True):
                generator.set_state(state)
            self._skipping = resume["batches_done"]
        self._epoch_start = [g.get_state() for g in generators]

    def _skip(self) -> int:
        """The batches the epoch's iterator skips (those a resumed epoch has done), once."""
        skipping, self._skipping = self._skipping, 0
        return skipping

    def state_dict(self) -> dict[str, Any]:
        done = self.batches_done() if self.batches_done is not None else None
        if done is None or self._epoch_start is None:
            return {}
        return {"generators": self._epoch_start, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if len(state_dict["generators"]) != len(self._shuffle_generators()):
            raise ValueError(f"the checkpoint's training loader shuffled with {len(state_dict['generators'])} "
                             f"generators, this one with {len(self._shuffle_generators())}")  # fmt: skip
        self._resume = state_dict


class ResumesTrainLoader:
    """A DataModule whose checkpoint state carries its training loader's (:class:`ResumableEpoch`):
    ``train_dataloader`` returns its loader through :meth:`_resumable`, ``state_dict`` adds
    :meth:`_loader_state` and ``load_state_dict`` calls :meth:`_load_loader_state`."""

    _train_loader: ResumableEpoch | None = None  # the one whose state a checkpoint saves
    _train_resume: dict[str, Any] | None = None  # for the next loader built (the resumed fit's)

    def _resumable(self, loader: ResumableEpoch) -> ResumableEpoch:
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader

    def _loader_state(self) -> dict[str, Any]:
        state = self._train_loader.state_dict() if self._train_loader is not None else {}
        return {"train_epoch": state} if state else {}

    def _load_loader_state(self, state_dict: dict[str, Any]) -> None:
        self._train_resume = state_dict.get("train_epoch") or None
