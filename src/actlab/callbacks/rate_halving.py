"""Successive halving of a learning-rate grid (stage 1 of the fair protocol): after
``after_epochs`` epochs, every rate whose seeds' mean best validation accuracy trails the
best rate's (of the same activation) by more than ``margin`` points stops; the others train
on with the full budget.

The rule is :func:`surviving_rates`, the one ``fair_table.py --check-halving`` replays on a
finished search. Only a pack can apply it: its members are the rates and seeds it compares
(:class:`~actlab.pack.callbacks.PackRateHalving`). A run trained alone has no rates to
compare and trains its full budget (one warning says so).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping, Sequence

import lightning as L


def surviving_rates(scores: Mapping[float, Sequence[float]], margin: float) -> set[float]:
    """The rates whose mean score (accuracy, 0-1) is within ``margin`` points of the best rate's."""
    means = {rate: statistics.fmean(values) for rate, values in scores.items() if values}
    if not means:
        return set()
    best = max(means.values())
    return {rate for rate, mean in means.items() if mean >= best - margin / 100}


class RateHalving(L.Callback):
    """The halving settings (``callbacks.rate_halving``); a pack applies them to its members.

    Args:
        after_epochs: epochs every rate trains before the comparison (>= 1).
        margin: validation-accuracy points a rate may trail the best rate by and go on."""

    def __init__(self, after_epochs: int = 1, margin: float = 0.5) -> None:
        if not isinstance(after_epochs, int) or after_epochs < 1:
            raise ValueError(f"callbacks.rate_halving.after_epochs must be a positive integer, got {after_epochs!r}")
        if margin < 0:
            raise ValueError(f"callbacks.rate_halving.margin must be >= 0 points, got {margin!r}")
        self.after_epochs, self.margin = after_epochs, float(margin)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        warnings.warn("rate halving compares the rates of a pack's members; this run trains alone, so it trains its "
                      "full budget (hydra/launcher=packed packs a sweep's rates together)", stacklevel=2)  # fmt: skip
