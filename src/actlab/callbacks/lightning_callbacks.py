"""Lightning's ModelCheckpoint and EarlyStopping, with their state key built once.

Lightning names every call of a callback's hooks by the callback's ``state_key`` (about six
hooks a training step), which these two rebuild from their settings each time: the repr of
a dict, ~2.5 us a call, 0.02-0.03 ms a step of a tiny model for the two checkpoints a run
has (``scripts/benchmark.py --overhead``). Their settings do not change after construction,
so the key is built once. The classes keep Lightning's names, so the keys, and the
checkpoints that store states under them, are Lightning's own.
"""

from __future__ import annotations

import functools

from lightning.pytorch import callbacks


class _StateKeyOnce:
    @functools.cached_property
    def state_key(self) -> str:
        return super().state_key


class ModelCheckpoint(_StateKeyOnce, callbacks.ModelCheckpoint):
    """:class:`lightning.pytorch.callbacks.ModelCheckpoint`, its state key built once."""


class EarlyStopping(_StateKeyOnce, callbacks.EarlyStopping):
    """:class:`lightning.pytorch.callbacks.EarlyStopping`, its state key built once."""
