"""Lightning's CSVLogger, except that a resumed run keeps the rows it had already written.

Lightning's writer deletes ``metrics.csv`` whenever its directory already holds files, so a run
resumed with ``logger=csv`` (``resume=true``, a SLURM requeue) would lose every epoch before its
checkpoint. Here the earlier rows are read first and written back; once the resumed run writes
its first row, the earlier rows it logs again are dropped, so each appears once: those from its
first row's step on (the epochs it trains again: after its checkpoint, or after the best epoch
when it falls back to that), except the rows logged before the checkpoint it resumed from (a
validation inside the epoch the checkpoint was taken in, which the resumed run does not run
again). Rows are told apart by step, not epoch (the diagnostics' rows carry no epoch), and by
their place in the file: the run's checkpoints keep how many rows were logged before them
(:class:`~actlab.callbacks.RunHistory`).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step"))
    except (TypeError, ValueError):
        return math.inf  # a row without a step: superseded by any new one


class _ResumingWriter(ExperimentWriter):
    """Lightning's writer, given the rows an earlier attempt wrote to the same file."""

    def __init__(self, log_dir: str, earlier: list[dict[str, str]]) -> None:
        with warnings.catch_warnings():  # "...will be deleted": not here (they are written back below)
            warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted.*")
            super().__init__(log_dir)
        self.earlier: list[dict[str, str]] | None = earlier or None
        self.rows_written = 0
        # how many of the earlier rows were logged before the checkpoint this run resumed from (None: none)
        self.logged_before_checkpoint: int | None = None
        if self.earlier:
            self._write(self.earlier)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.metrics_keys = sorted({key for row in rows for key in row})
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        self.rows_written = len(rows)

    def rows_logged(self) -> int:
        """How many rows this file holds, or will once saved, before what is logged next."""
        if self.earlier and self.metrics:  # the earlier rows not sorted out yet: those that will stay, the new ones
            return len(self._earlier_kept()) + len(self.metrics)
        if self.earlier:  # nothing logged since the resume: the rows logged before its checkpoint
            return self.logged_before_checkpoint or 0
        return self.rows_written + len(self.metrics)

    def _earlier_kept(self) -> list[dict[str, str]]:
        """The earlier rows that stay, once the resumed run has logged rows (see the module)."""
        first_new = min(_step(row) for row in self.metrics)
        before = self.logged_before_checkpoint or 0
        return [row for i, row in enumerate(self.earlier or []) if i < before or _step(row) < first_new]

    def save(self) -> None:
        if self.earlier and self.metrics:
            self._write(self._earlier_kept())
            self.earlier = None
        self.rows_written += len(self.metrics)
        super().save()


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that keeps an earlier attempt's rows (see the module)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        earlier = []
        if self._fs.isfile(path):
            with self._fs.open(path, "r", newline="") as file:
                earlier = list(csv.DictReader(file))
        self._experiment = _ResumingWriter(self.log_dir, earlier)
        return self._experiment

    def rows_logged(self) -> int:
        """How many rows of ``metrics.csv`` have been logged so far (what a checkpoint keeps)."""
        return self.experiment.rows_logged()

    def resume_after(self, rows: int) -> None:
        """The run resumes from a checkpoint taken after the file's first ``rows`` rows were
        logged: those stay, whatever their step (see the module)."""
        self.experiment.logged_before_checkpoint = rows
