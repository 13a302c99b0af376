"""Packed sweeps: many runs of one architecture trained together in one process, each member
still the run that ``python train.py <its overrides>`` would have done."""

from actlab.pack.stacked import StackedNetwork

__all__ = ["StackedNetwork"]
