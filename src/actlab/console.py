"""What a run prints: one closing line that says how it went, and none of the third-party
noise a first run would otherwise show."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

# fragments of Lightning's info lines that are advertisements, not information
_LIGHTNING_NOISE = ("litlogger",)
# warnings that concern neither actlab's users nor anything they can change
_WARNINGS = (
    # Lightning 2.6 on torch >= 2.9 (a dependency's deprecation, fixed upstream)
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # printed on every machine that has SLURM's client tools, even when not in a job
    r".*The `srun` command is available on your system but is not used.*",
    # every run with limit_train_batches below 50: actlab logs per epoch, so the step interval
    # only matters to per-step logs a user adds (and they set trainer.log_every_n_steps)
    r".*smaller than the logging interval Trainer\(log_every_n_steps.*",
    # every resumed run: its checkpoints are in its own directory, which actlab checks belongs to
    # the run (record.check_run_directory) before a fit starts
    r".*Checkpoint directory .* exists and is not empty.*",
    # actlab's training_step draws its batches itself (actlab.steps): Lightning calls the
    # signature experimental; tests/test_steps.py proves the numbers equal one step per call
    r".*You are using the `dataloader_iter` step flavor.*",
    r".*Found `dataloader_iter` argument in the `training_step`.*",
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


def quiet_third_party_noise() -> None:
    """Filter Lightning's cloud-logger tip and the dependency warnings above (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)  # whichever of the two Lightning's rank_zero_info uses
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(_LIGHTNING_NOISE))
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if logging.getLogger().hasHandlers():
        # Lightning gives its loggers a console handler of their own when it is imported; where the
        # application has configured logging (Hydra: console and train.log), its lines go there, once
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True


def is_terminal() -> bool:
    """Whether stdout is a terminal (a progress bar is readable there, and floods a log file)."""
    return sys.stdout.isatty()


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def summary_line(record: dict[str, Any]) -> str:
    """One line: status, test and best validation accuracy, epochs, median epoch time, where
    the record is and how to look at what the run's loggers wrote."""
    output_dir = Path(record.get("output_dir", "."))
    epoch_s, unit = record.get("epoch_time_s"), "s/epoch"
    if isinstance(record.get("epoch_time_per_member_s"), (int, float)):  # a pack member: its share of the pack's epoch
        epoch_s, unit = record["epoch_time_per_member_s"], "s/epoch (its share of the pack's)"
    parts = [
        f"run {record.get('status')}",
        f"test acc {_percent(record.get('test/acc'))}",
        f"best val acc {_percent(record.get('val/acc_best'))}",
        f"{record.get('epochs_completed', 0)} epochs",
        f"{epoch_s:.2f} {unit}" if isinstance(epoch_s, (int, float)) else "- s/epoch",
        f"record {output_dir / 'metrics.json'}",
        *_views(record, output_dir),
    ]
    if record.get("error"):  # an interruption says what stopped it, not an error
        label = "" if record.get("status") == "interrupted" else "error: "
        parts.insert(1, f"{label}{record['error'].splitlines()[0][:200]}")
    return " | ".join(parts)


def _views(record: dict[str, Any], output_dir: Path) -> list[str]:
    """How to look at what the run's configured loggers wrote (TensorBoard, CSV)."""
    views = []
    for entry in ((record.get("config") or {}).get("logger") or {}).values():
        target = str((entry or {}).get("_target_", ""))
        if target.endswith("TensorBoardLogger"):
            views.append(f"view: tensorboard --logdir {output_dir}")
        elif target.endswith("CSVLogger"):
            folder = Path(str(entry.get("save_dir", output_dir))) / str(entry.get("name") or "")
            views.append(f"metrics: {folder / str(entry.get('version') or '') / 'metrics.csv'}")
    return views
