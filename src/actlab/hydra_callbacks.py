"""Hydra callbacks of ``python train.py`` (``conf/hydra/default.yaml``, ``hydra.callbacks``)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class RunDirectoryCheck(Callback):
    """A single run's directory is checked before Hydra writes anything into it (its
    ``.hydra/`` and ``train.log``): a directory a live run owns, or one holding results a
    fresh start would overwrite, ends the command with one line and exit 1
    (:func:`actlab.record.check_run_directory`). A sweep's jobs are checked by the sweeper."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from actlab.errors import RunDirectoryError
        from actlab.record import check_run_directory

        try:
            check_run_directory(config.hydra.run.dir, bool(config.get("resume")))
        except RunDirectoryError as error:
            raise SystemExit(f"error: {error}") from None
