"""Per-epoch history of a run, kept in its record: epoch wall times, the time spent in the
diagnostics, and the logged epoch metrics."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import defaultdict

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from actlab.callbacks.diagnostic import Diagnostic
from actlab.record import RunRecord

log = logging.getLogger(__name__)


class RunHistory(L.Callback):
    """Records each epoch's wall time, the seconds of it spent in the diagnostics, and every
    epoch-level ``train/*`` and ``val/*`` metric, and writes them into the run record after
    every epoch (the record's heartbeat: a run killed outright keeps its history so far).

    The epoch time runs from the start of the training epoch to the end of the callbacks'
    epoch-end hooks: training steps, validation, and the diagnostics (the trainer builder puts
    this callback last so that their cost is counted). The module logs its training metrics in
    its own epoch-end hook, which Lightning runs after the callbacks', so an epoch's metrics
    are collected, and the record written, when the next epoch starts or training ends.
    ``history[key]`` is a list over epochs: what the learning curves are made of.

    An epoch that ended before all its batches (a ``max_time`` / Timer or ``max_steps`` cut:
    Lightning ends it) keeps its place in the history but is no completed epoch:
    ``partial_epochs`` says which, with how many of its batches it trained. An epoch that was
    not validated (``trainer.check_val_every_n_epoch`` > 1, such a cut) has NaN ``val/*`` values
    (the logged ones are the last validation's); every list has one value per epoch.

    Args:
        record: the run record to keep up to date (None: only collect).
        log_epochs: log one line per epoch (for logs that are not a terminal, where the
            progress bar is off).
        diagnostics: the diagnostics whose time and record fields belong to this run (None:
            the trainer's Diagnostic callbacks).
    """

    def __init__(self, record: RunRecord | None = None, log_epochs: bool = False,
                 diagnostics: list[Diagnostic] | None = None) -> None:  # fmt: skip
        self.record, self.log_epochs, self.diagnostics = record, log_epochs, diagnostics
        self.epoch_times: list[float] = []
        self.diagnostics_times: list[float | None] = []
        self.history: dict[str, list[float]] = defaultdict(list)
        self.partial_epochs: list[dict[str, int]] = []
        self._epoch_start = 0.0
        self._pending = False
        self._validated = False  # this epoch ran its validation (its val/* metrics are its own)
        self._pending_validated = False
        self._trainer: L.Trainer | None = None
        # the metrics logged when the checkpoint this run resumed from was taken: a checkpoint taken
        # inside an epoch after its validation (ModelCheckpoint's, validating inside epochs) resumes with
        # that validation done, and Lightning does not run it again
        self._restored_metrics: dict[str, float] = {}
        # the diagnostics' record fields as the checkpoint this run resumed from held them (what a
        # diagnostic measured once, before the first step, is not measured again)
        self._restored_fields: dict = {}

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._epoch_start = self._clock("fit start", trainer)  # a fit resumed inside an epoch gets no epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer)
        self._validated = False
        self._epoch_start = self._clock("epoch start", trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def _clock(self, event: str, trainer: L.Trainer) -> float:
        """The time of ``event`` (an epoch's start or end, the fit's start) in this epoch."""
        return time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.epoch_times.append(self._clock("epoch end", trainer) - self._epoch_start)
        epoch = trainer.current_epoch
        seconds = [c.epoch_seconds[epoch] for c in self._diagnostics(trainer) if epoch in c.epoch_seconds]
        self.diagnostics_times.append(sum(seconds) if seconds else None)
        trained, batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready, trainer.num_training_batches
        if math.isfinite(batches) and trained < batches:
            self.partial_epochs.append({"epoch": epoch, "batches": trained, "of": int(batches)})
        self._pending, self._pending_validated = True, self._validated

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer)
        self._write(trainer)  # also when no epoch was left to run (resuming a finished fit)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._collect(trainer)
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if self.record is not None:
            self.record.update(**self.record_fields(trainer))
            self.record.write()

    def _collect(self, trainer: L.Trainer) -> None:
        if not self._pending:
            return
        self._pending = False
        metrics = {**self._restored_metrics, **self._own_metrics(trainer, self._pending_validated)}
        for diagnostic in self._diagnostics(trainer):
            metrics.update(diagnostic.epoch_values())
        self._restored_metrics = {}
        epoch = len(self.epoch_times) - 1  # the epoch collected: its place in every list
        for key, value in sorted(metrics.items()):
            values = self.history[key]
            values.extend([float("nan")] * (epoch - len(values)))  # a metric first seen late keeps its epochs' places
            values.append(value if math.isfinite(value) else float("nan"))
        for values in self.history.values():  # one not measured this epoch (not validated, say): NaN
            values.extend([float("nan")] * (epoch + 1 - len(values)))
        if self.log_epochs:
            # the epoch's train/ and val/ metrics measured (the diagnostics' per-layer values stay in the record)
            metrics = "  ".join(f"{k} {v[-1]:.4f}" for k, v in sorted(self.history.items())
                                if v and v[-1] == v[-1] and k.startswith(("train/", "val/")))  # fmt: skip
            log.info("epoch %d/%s  %s  (%.1f s)", len(self.epoch_times), trainer.max_epochs, metrics,
                     self.epoch_times[-1])  # fmt: skip
        self._write(trainer)

    def _own_metrics(self, trainer: L.Trainer, validated: bool) -> dict[str, float]:
        """The epoch's metrics as logged, without ``val/*`` when the epoch was not validated
        (the logged ones are then an earlier epoch's)."""
        metrics = self.epoch_metrics(trainer)
        return metrics if validated else {k: v for k, v in metrics.items() if not k.startswith("val/")}

    def epoch_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """This run's epoch-level ``train/*`` and ``val/*`` metrics, as logged."""
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}

    def _diagnostics(self, trainer: L.Trainer | None) -> list[Diagnostic]:
        if self.diagnostics is not None:
            return self.diagnostics
        return [c for c in trainer.callbacks if isinstance(c, Diagnostic)] if trainer else []

    def record_fields(self, trainer: L.Trainer | None) -> dict:
        """The run record's history fields (and the diagnostics' own fields, e.g. dead ratios)."""
        validated = [(epoch, value) for epoch, value in enumerate(self.history.get("val/acc", [])) if value == value]
        best = max(validated, key=lambda pair: pair[1], default=None)  # the first of equal bests
        fields = {
            "epochs_completed": len(self.epoch_times) - len(self.partial_epochs),
            "partial_epochs": self.partial_epochs,
            "epoch_times_s": self.epoch_times,
            "epoch_time_s": statistics.median(self.epoch_times) if self.epoch_times else None,
            "diagnostics_epoch_s": self.diagnostics_times,
            "history": dict(self.history),
            # the last and best validations (an epoch not validated has NaN)
            "val/acc_last": validated[-1][1] if validated else None,
            "val/acc_best": best[1] if validated else None,
            # 0-based, as in Lightning's epoch numbers and the best_epoch=NNN.ckpt names
            "best_epoch": best[0] if validated else None,
        }
        fields.update(self._diagnostic_fields(trainer))
        return fields

    def _diagnostic_fields(self, trainer: L.Trainer | None) -> dict:
        fields = dict(self._restored_fields)
        for diagnostic in self._diagnostics(trainer):
            fields.update({k: v for k, v in diagnostic.record_fields().items() if v is not None or k not in fields})
        return fields

    def state_dict(self) -> dict:
        # A checkpoint taken between an epoch's end and the next epoch's start (a SIGTERM
        # lands there) must carry that finished epoch's metrics: they are logged by now.
        if self._trainer is not None:
            self._collect(self._trainer)
        logged = self._own_metrics(self._trainer, self._validated) if self._trainer is not None else {}
        return {"epoch_times": self.epoch_times, "diagnostics_times": self.diagnostics_times,
                "history": dict(self.history), "logged": logged, "partial_epochs": self.partial_epochs,
                "diagnostic_fields": self._diagnostic_fields(self._trainer),
                "diagnostic_states": {name: d.checkpoint_state()
                                      for name, d in _state_names(self._diagnostics(self._trainer))},
                # the CSV rows logged by now: a fit resumed from this checkpoint keeps them (actlab.csv_logger)
                "csv_rows": [logger.rows_logged() for logger in self._csv_loggers(self._trainer)]}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        if self._trainer is not None and self._trainer.state.fn != TrainerFn.FITTING:
            return  # testing the best epoch's weights (Lightning restores callbacks then too): the fit's history stays
        self.epoch_times = list(state_dict.get("epoch_times", []))
        self.diagnostics_times = list(state_dict.get("diagnostics_times", [None] * len(self.epoch_times)))
        self.history = defaultdict(list, state_dict.get("history", {}))
        self.partial_epochs = list(state_dict.get("partial_epochs", []))
        self._restored_metrics = dict(state_dict.get("logged", {}))
        self._restored_fields = dict(state_dict.get("diagnostic_fields", {}))
        # what the diagnostics need from before the checkpoint (Lightning restores callbacks after their setup)
        states = state_dict.get("diagnostic_states", {})
        for name, diagnostic in _state_names(self._diagnostics(self._trainer)):
            if states.get(name):
                diagnostic.load_checkpoint_state(states[name])
        for logger, rows in zip(self._csv_loggers(self._trainer), state_dict.get("csv_rows", [])):
            logger.resume_after(rows)

    def _loggers(self, trainer: L.Trainer | None) -> list:
        """The loggers this run's metrics go to."""
        return list(trainer.loggers) if trainer is not None else []

    def _csv_loggers(self, trainer: L.Trainer | None) -> list:
        """Those that keep an earlier attempt's rows (:class:`actlab.csv_logger.CSVLogger`)."""
        return [logger for logger in self._loggers(trainer) if hasattr(logger, "resume_after")]


def _state_names(diagnostics: list[Diagnostic]) -> list[tuple[str, Diagnostic]]:
    """Where a checkpoint keeps each diagnostic's state: its class's name (and its place
    among the run's diagnostics of that class, from the second on), the same in a single run's
    checkpoint and in a pack member's."""
    seen: dict[str, int] = {}
    named = []
    for diagnostic in diagnostics:
        name = type(diagnostic).__qualname__
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", diagnostic))
    return named
