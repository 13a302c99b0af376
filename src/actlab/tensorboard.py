"""What actlab writes to TensorBoard beside Lightning's own scalars: histograms, figures and
the HPARAMS row of a run. One place to find the TensorBoard loggers of a trainer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries


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
    run's own event files, by a writer of its own, closed at once: what SummaryWriter's
    ``add_hparams`` writes, without reopening the logger's writer (after a run its loggers are
    closed; a reopened writer would leave an event file of its own and a thread behind)."""
    if rank_zero_only.rank != 0:  # as the logger's own writer: on the first process alone
        return
    finite = {f"hparams/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    summaries = hparams_summaries(hparams, finite)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            opened = getattr(logger, "_experiment", None)  # its writer's directory (kept when closed), else its own
            with SummaryWriter(log_dir=opened.log_dir if opened is not None else logger.log_dir) as writer:
                for summary in summaries:
                    writer.file_writer.add_summary(summary, step)
                for tag, value in finite.items():
                    writer.add_scalar(tag, value, step)


def confusion_matrix_image(counts: torch.Tensor, cell: int = 24) -> torch.Tensor:
    """A confusion matrix (rows: true class, columns: predicted) as a CHW image in [0, 1]:
    each row normalised to its class's fraction, white (0) to dark blue (1), ``cell`` pixels
    a cell, a one-pixel grid. Drawn by torch in a millisecond (a matplotlib figure costs
    ~0.4 s, per run and per pack member, after the last epoch)."""
    rates = counts.detach().double().cpu()
    rates = (rates / rates.sum(1, keepdim=True).clamp(min=1)).float()
    white, blue = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.03, 0.19, 0.42])  # matplotlib's Blues, both ends
    pixels = rates.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    image = white[:, None, None] + (blue - white)[:, None, None] * pixels  # (3, H, W)
    image[:, ::cell, :] = 0.8
    image[:, :, ::cell] = 0.8
    return image


def log_confusion_matrix(writers: Iterable[SummaryWriter], counts: torch.Tensor, step: int) -> None:
    """``test/confusion_matrix``: the image (:func:`confusion_matrix_image`) and its numbers,
    each row's percentages, as a table in TensorBoard's text tab."""
    writers = list(writers)
    if not writers:
        return
    rates = counts.detach().double().cpu()
    rates = 100 * rates / rates.sum(1, keepdim=True).clamp(min=1)
    n = len(rates)
    table = ["| true \\ predicted | " + " | ".join(str(j) for j in range(n)) + " |", "|---" * (n + 1) + "|"]
    table += [f"| {i} | " + " | ".join(f"{v:.1f}" for v in row.tolist()) + " |" for i, row in enumerate(rates)]
    image = confusion_matrix_image(counts)
    for writer in writers:
        writer.add_image("test/confusion_matrix", image, step)
        writer.add_text("test/confusion_matrix", "\n".join(table), step)
