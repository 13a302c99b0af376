"""Save a resumable checkpoint when a run is stopped by Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

INTERRUPTIONS = (KeyboardInterrupt, SIGTERMException)


class InterruptionCheckpoint(L.Callback):
    """On KeyboardInterrupt/SIGTERM, write ``<dirpath>/last.ckpt`` so the run can resume."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.interrupted = False

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, INTERRUPTIONS):
            self.interrupted = True
            if trainer.state.fn == "fit":
                trainer.save_checkpoint(self.dirpath / "last.ckpt")
