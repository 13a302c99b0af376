"""Early stopping as a config switch: off unless a patience is given."""

from __future__ import annotations

from collections.abc import Callable

from actlab.callbacks.lightning_callbacks import EarlyStopping


def metric_mode(monitor: str) -> str:
    """``min`` for a loss, ``max`` for anything else (accuracy, F1)."""
    return "min" if "loss" in monitor else "max"


def early_stopping(
    patience: int | None = None,
    monitor: str = "val/acc",
    mode: str | None = None,
    min_delta: float = 0.0,
    build: Callable[..., EarlyStopping] = EarlyStopping,
) -> EarlyStopping | None:
    """Lightning's EarlyStopping on ``monitor`` once it has not improved by ``min_delta`` for
    ``patience`` validation epochs; None (off) when ``patience`` is None. ``mode`` defaults
    from the metric's name. ``build`` is the class (a pack member's: its own stopping rule on
    its own metric, :class:`~actlab.pack.callbacks.MemberEarlyStopping`)."""
    if patience is None:
        return None
    if not isinstance(patience, int) or patience < 1:
        raise ValueError(f"callbacks.early_stopping.patience must be a positive integer or null, got {patience!r}")
    return build(monitor=monitor, mode=mode or metric_mode(monitor), patience=patience, min_delta=min_delta,
                         check_finite=False)  # fmt: skip
