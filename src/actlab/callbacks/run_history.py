"""Per-epoch history of a run: epoch wall times and the logged epoch metrics."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import lightning as L


class RunHistory(L.Callback):
    """Records each epoch's wall time and every epoch-level ``train/*`` and ``val/*`` metric.

    The epoch time runs from the start of the training epoch to the end of the callbacks'
    epoch-end hooks: training steps, validation, and any diagnostics callback placed before
    this one (the trainer builder puts this callback last so that their cost is counted).
    The module logs its training metrics in its own epoch-end hook, which Lightning runs
    after the callbacks', so an epoch's metrics are collected when the next epoch starts or
    training ends. ``history[key]`` is a list over epochs: what the run record and the sweep
    summary's learning curves are made of.
    """

    def __init__(self) -> None:
        self.epoch_times: list[float] = []
        self.history: dict[str, list[float]] = defaultdict(list)
        self._epoch_start = 0.0
        self._pending = False
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        self._pending = True

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer)

    def _collect(self, trainer: L.Trainer) -> None:
        if not self._pending:
            return
        self._pending = False
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/")):
                value = float(value)
                self.history[key].append(value if math.isfinite(value) else float("nan"))

    def state_dict(self) -> dict:
        # A checkpoint taken between an epoch's end and the next epoch's start (a SIGTERM
        # lands there) must carry that finished epoch's metrics: they are logged by now.
        if self._trainer is not None:
            self._collect(self._trainer)
        return {"epoch_times": self.epoch_times, "history": dict(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_times = list(state_dict.get("epoch_times", []))
        self.history = defaultdict(list, state_dict.get("history", {}))
