"""What actlab writes to TensorBoard beside Lightning's own scalars: histograms, figures and
the HPARAMS row of a run. One place to find the TensorBoard loggers of a trainer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter


def tensorboard_writers(loggers: Iterable[Logger]) -> list[SummaryWriter]:
    """The SummaryWriters of the TensorBoard loggers among ``loggers``."""
    return [logger.experiment for logger in loggers if isinstance(logger, TensorBoardLogger)]


def add_histogram(loggers: Iterable[Logger], tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """A histogram of the finite ``values`` (a diverging run must not crash its diagnostics),
    binned by torch where the values live (on the GPU when training there) into ``bins``
    equal bins; only the counts and four statistics go to the host. (SummaryWriter's own
    add_histogram bins on the CPU with numpy, ~25 ms for a 200k-weight layer.)"""
    writers = tensorboard_writers(loggers)
    values = values.detach().float().flatten()
    if not writers or values.numel() == 0:
        return
    low, high = torch.aminmax(values)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):  # NaN/inf present: drop them (rare)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return
        low, high = torch.aminmax(values)
    top = float(high) if bool(high > low) else float(low) + max(abs(float(low)) * 1e-6, 1e-12)
    counts = torch.histc(values, bins=bins, min=float(low), max=top)
    limits = torch.linspace(float(low), top, bins + 1, device=values.device)[1:]
    stats = torch.stack([low, high, values.sum(), values.square().sum()]).tolist()
    limits, counts = limits.tolist(), counts.tolist()
    for writer in writers:
        writer.add_histogram_raw(tag, min=stats[0], max=stats[1], num=values.numel(), sum=stats[2],
                                 sum_squares=stats[3], bucket_limits=limits, bucket_counts=counts,
                                 global_step=step)  # fmt: skip


def run_hparams(record: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters that tell the runs of a sweep apart, read from the run record."""
    config = record.get("config") or {}
    model, data, optimizer = config.get("model", {}), config.get("data", {}), config.get("optimizer", {})
    return {
        "activation": record.get("activation") or "?",
        "depth": record.get("depth"),
        "hidden_shape": str(record.get("hidden_shape")),
        "init": model.get("init"),
        "share_activation": bool(model.get("share_activation")),
        "optimizer": str(optimizer.get("_target_", "?")).rsplit(".", 1)[-1],
        "lr": float(optimizer.get("lr", math.nan)),
        "batch_size": int(data.get("batch_size", 0)),
        "seed": int(record.get("seed") or 0),
        "max_epochs": int(config.get("trainer", {}).get("max_epochs") or 0),
    }


def write_hparams(
    loggers: Iterable[Logger], hparams: dict[str, Any], metrics: Mapping[str, Any], step: int = 0
) -> None:
    """The run's row in the HPARAMS tab, with its final ``metrics`` as columns
    ``hparams/<metric>`` (their own tags, so the training curves get no extra points;
    metrics the run lacks are left out, never filled with placeholders). Written beside the
    run's own event files."""
    finite = {f"hparams/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for writer in tensorboard_writers(loggers):
        writer.add_hparams(hparams, finite, run_name=".", global_step=step)
        writer.flush()
