"""The pack's one Lightning logger, standing for every member's own loggers."""

from __future__ import annotations

import re
from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers import Logger

from actlab.pack.module import MEMBER_METRICS, member_prefix


class PackLogger(Logger):
    """Routes what the pack's Trainer logs to its members' own loggers (TensorBoard, CSV in
    each run's directory): a metric logged as ``member/k/<name>`` goes to member k's loggers
    as ``<name>``; any other (``epoch``, a LearningRateMonitor's ``lr-SGD``) goes to every
    member's, as it would in each single run. Where members train in several optimiser
    parameter groups (``groups[k]``: member k's), a value of group g (LearningRateMonitor's
    ``lr-SGD/pg<g+1>``) goes to that group's members under its single-run name (``lr-SGD``).

    A member that has stopped (``last_steps[k]``: the step it stopped at) gets no more of the
    shared values, only its own (the epoch it stopped in, its test), at a step no later than
    its last and an ``epoch`` no later than the epochs it completed (``last_epochs[k]``), as its
    single run logs them."""

    GROUP_SUFFIX = re.compile(r"^(.*)/pg(\d+)$")

    def __init__(self, member_loggers: list[list[Logger]], save_dir: str, groups: list[int] | None = None,
                 last_steps: dict[int, int] | None = None,
                 last_epochs: dict[int, int] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.member_loggers = member_loggers
        self.last_steps = {} if last_steps is None else last_steps
        self.last_epochs = {} if last_epochs is None else last_epochs
        self._save_dir = save_dir
        self.groups = groups
        # metrics logged through this logger since its last save (a diagnostic's values, written to the members'
        # loggers directly at an epoch's end, are saved with the epoch's training metrics, before its checkpoints)
        self.unsaved = False

    @property
    def name(self) -> str:
        return "pack"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def _all(self) -> list[Logger]:
        return [logger for loggers in self.member_loggers for logger in loggers]

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.unsaved = True
        shared = {key: value for key, value in metrics.items() if not key.startswith(MEMBER_METRICS)}
        per_group: dict[int, dict[str, float]] = {}
        if self.groups is not None:
            for key in list(shared):
                match = self.GROUP_SUFFIX.match(key)
                if match:
                    per_group.setdefault(int(match.group(2)) - 1, {})[match.group(1)] = shared.pop(key)
        for k, loggers in enumerate(self.member_loggers):
            prefix = member_prefix(k)
            mine = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
            if self.groups is not None:
                mine.update(per_group.get(self.groups[k], {}))
            stopped = self.last_steps.get(k)
            if mine or (shared and stopped is None):
                row = {**shared, **mine}
                if stopped is not None and k in self.last_epochs and "epoch" in row:
                    row["epoch"] = min(row["epoch"], self.last_epochs[k])
                for logger in loggers:
                    logger.log_metrics(row, step=step if stopped is None or step is None
                                       else min(step, stopped))  # fmt: skip

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        for logger in self._all():
            logger.log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        for logger in self._all():
            logger.save()
        self.unsaved = False

    def finalize(self, status: str) -> None:
        for logger in self._all():
            logger.finalize(status)
