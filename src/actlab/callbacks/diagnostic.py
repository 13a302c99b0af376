"""Shared machinery of the diagnostics: when they run, the probe data, how they log."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from actlab.tensorboard import add_histogram


class DiagnosticSchedule(L.Callback):
    """When diagnostics measure: once before the first training step (not again when a fit
    resumes), after every training epoch they are due at, and their figures at the fit's end.
    A single run's :class:`Diagnostic` and a pack's ``MemberDiagnostics`` (every member's
    diagnostics at once) keep this one schedule."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self.measure_at(trainer, pl_module, at_start=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.measure_at(trainer, pl_module, at_start=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.fast_dev_run:
            self.write_figures()

    def measure_at(self, trainer: L.Trainer, pl_module: L.LightningModule, at_start: bool) -> None:
        """Measure what is due before training (``at_start``) or at the end of this epoch."""
        raise NotImplementedError

    def write_figures(self) -> None:
        """The static figures, at the end of the fit."""


class Diagnostic(DiagnosticSchedule):
    """Runs ``measure`` once before the first training step and after every n-th epoch.

    ``measure(net, data, loggers, step)`` is a function of the network, the DataModule (its
    fixed ``probe_set``) and where to log: the callback only decides when. (A pack calls the
    same ``measure`` / ``record_*`` methods for each member, with the member's network and
    loggers.) The network is measured in eval mode (deterministic: no RReLU noise) and
    restored to its mode afterwards; nothing a diagnostic does touches the optimiser's
    gradients. Subclasses implement ``measure`` and may implement ``save_figure`` and
    ``record_fields``. ``epoch_seconds[epoch]`` is the wall time of each epoch-end
    measurement (the run record's ``diagnostics_epoch_s`` adds them up).
    """

    def __init__(self, every_n_epochs: int = 1, figures_dir: str | None = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.figures_dir = Path(figures_dir) if figures_dir else None
        self.epoch_seconds: dict[int, float] = {}  # wall time of each epoch-end measurement

    def due(self, epoch: int) -> bool:
        """Whether the end of ``epoch`` (0-based) is a measuring epoch."""
        return (epoch + 1) % self.every_n_epochs == 0

    def measure_at(self, trainer: L.Trainer, pl_module: L.LightningModule, at_start: bool) -> None:
        if not (at_start or self.due(trainer.current_epoch)):
            return
        start = time.perf_counter()
        with eval_mode(pl_module):
            self.measure(pl_module.net, trainer.datamodule, trainer.loggers, trainer.global_step)
        if not at_start:
            self.epoch_seconds[trainer.current_epoch] = time.perf_counter() - start

    def write_figures(self) -> None:
        """The static PNG(s) into ``figures_dir`` (when it is set)."""
        if self.figures_dir is None:
            return
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.save_figure(self.figures_dir)
        except Exception as error:  # a figure is a by-product: drawing it must not cost the run (or pack) its results
            warnings.warn(f"{type(self).__name__}: no figure drawn in {self.figures_dir}: {error!r}", stacklevel=2)

    def measure(self, net: torch.nn.Module, data, loggers: list[Logger], step: int) -> None:
        """Measure ``net`` on ``data.probe_set(...)`` and log to ``loggers`` at ``step``."""
        raise NotImplementedError

    def save_figure(self, directory: Path) -> None:
        """Write this diagnostic's static PNG(s) into ``directory`` (optional)."""

    def record_fields(self) -> dict:
        """What this diagnostic adds to the run record (optional)."""
        return {}

    def epoch_values(self) -> dict[str, float]:
        """Scalars of the epoch just ended for the run record's per-epoch ``history``
        (optional; asked once an epoch)."""
        return {}

    def checkpoint_state(self) -> dict:
        """What this diagnostic needs from before a checkpoint to go on as the uninterrupted
        run would (optional; plain Python values, kept in the run's checkpoints): what it has
        gathered toward its next measurement (a fit resumed inside an epoch, or between two
        measuring epochs), what it measured on the initial network."""
        return {}

    def load_checkpoint_state(self, state: dict) -> None:
        """Go on from :meth:`checkpoint_state` (a resumed fit)."""

    @staticmethod
    def log_scalars(loggers: list[Logger], metrics: dict[str, float], step: int) -> None:
        for logger in loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def log_histogram(loggers: list[Logger], tag: str, values: torch.Tensor, step: int) -> None:
        add_histogram(loggers, tag, values, step)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside the block, in its previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def layer_name(index: int, linear: torch.nn.Linear) -> str:
    return f"layer_{index}_{linear.in_features}x{linear.out_features}"


class LayerDistributions(Diagnostic):
    """A diagnostic that records one distribution per layer and, at the end of the run,
    draws them at initialisation against their final state (the textbook's figures)."""

    figure_name = "distributions.png"
    xlabel = "value"

    def __init__(self, every_n_epochs: int = 1, figures_dir: str | None = None) -> None:
        super().__init__(every_n_epochs, figures_dir)
        self.names: list[str] = []
        self.first: list[torch.Tensor] | None = None
        self.first_step = 0  # the step the first measurement kept was taken at (0: the initial network)
        self.last: list[torch.Tensor] | None = None
        self.measurements = 0

    def remember(self, names: list[str], values: list[torch.Tensor], step: int) -> None:
        """Keep this measurement (flattened, on the CPU) as the latest, and the first one."""
        snapshot = [v.detach().flatten().float().cpu() for v in values]
        self.names = names
        if self.first is None:
            self.first, self.first_step = snapshot, step
        self.last = snapshot
        self.measurements += 1

    @property
    def first_label(self) -> str:
        """The first measurement's name in the figure: the initial network's, or (a fit resumed
        from a checkpoint, which keeps no distribution) the first this fit measured."""
        return "at init" if self.first_step == 0 else f"step {self.first_step} (resumed fit's first)"

    def save_figure(self, directory: Path) -> None:
        if self.first is None:
            return
        from actlab.plotting import plot_layer_histograms

        series = {self.first_label: self.first}
        if self.measurements > 1:
            series["final"] = self.last
        plot_layer_histograms(series, self.names, self.xlabel, directory / self.figure_name)
