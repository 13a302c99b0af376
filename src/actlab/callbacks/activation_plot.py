"""The activation's shape and derivative as a TensorBoard image at the start of training."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from actlab.tensorboard import tensorboard_writers


class ActivationPlot(L.Callback):
    """Adds the figure ``activation/shape`` (first hidden layer's activation and its
    derivative on [-5, 5]) to TensorBoard before training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # not again when resuming
            self.draw(pl_module.net, trainer.loggers)

    @staticmethod
    def draw(net: torch.nn.Module, loggers: list[Logger]) -> None:
        """The figure of ``net``'s first activation, to the TensorBoard loggers among ``loggers``."""
        writers = tensorboard_writers(loggers)
        if not writers:
            return
        from actlab.plotting import activation_figure

        try:
            figure = activation_figure(net.activations[0])
        except Exception as error:  # a figure is a by-product: drawing it must not cost the run (or pack) its results
            warnings.warn(f"ActivationPlot: no activation/shape figure: {error!r}", stacklevel=2)
            return
        for writer in writers:
            writer.add_figure("activation/shape", figure, 0)
