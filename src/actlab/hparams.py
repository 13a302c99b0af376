"""TensorBoard's HPARAMS tab: one row per run with its hyper-parameters and final metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.tensorboard.summary import hparams as hparams_summary


def run_hparams(cfg: Any, activation: str | None) -> dict[str, Any]:
    """The hyper-parameters that tell the runs of a sweep apart."""
    model, data, optimizer = cfg.model, cfg.data, cfg.optimizer
    return {
        "activation": activation or "?",
        "depth": len(model.hidden_shape) if model.hidden_shape else model.depth,
        "hidden_shape": str(list(model.hidden_shape)) if model.hidden_shape else f"taper({model.depth})",
        "init": model.init,
        "share_activation": bool(model.share_activation),
        "optimizer": optimizer._target_.rsplit(".", 1)[-1],
        "lr": float(optimizer.lr),
        "batch_size": int(data.batch_size),
        "seed": int(cfg.seed),
        "max_epochs": int(cfg.trainer.max_epochs),
    }


def write_hparams(loggers: list, hparams: dict[str, Any], metric_tags: Sequence[str]) -> None:
    """Write the HPARAMS summary to every TensorBoard logger. TensorBoard reads each metric's
    value from the scalars this run logged under that tag (``test/acc``, ``dead/overall``, ...),
    so no placeholder values are written."""
    metrics = dict.fromkeys(metric_tags, 0.0)  # only the names enter the summary
    for logger in loggers:
        if type(logger).__name__ != "TensorBoardLogger":
            continue
        # the logger may already be finalised (closed) after testing; this reopens it
        writer = logger.experiment._get_file_writer()
        for summary in hparams_summary(hparams, metrics):
            writer.add_summary(summary)
        writer.flush()
