"""Lightning callbacks: run bookkeeping and diagnostics."""

from actlab.callbacks.divergence import DivergedError, DivergenceMonitor
from actlab.callbacks.interruption import InterruptionCheckpoint
from actlab.callbacks.run_history import RunHistory

__all__ = ["DivergedError", "DivergenceMonitor", "InterruptionCheckpoint", "RunHistory"]
