"""The activation's shape and derivative as a TensorBoard image at the start of training."""

from __future__ import annotations

import lightning as L

from actlab.tensorboard import tensorboard_writers


class ActivationPlot(L.Callback):
    """Adds the figure ``activation/shape`` (first hidden layer's activation and its
    derivative on [-5, 5]) to TensorBoard before training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writers = tensorboard_writers(trainer.loggers)
        if trainer.global_step or not writers:
            return
        from actlab.plotting import activation_figure

        for writer in writers:
            writer.add_figure("activation/shape", activation_figure(pl_module.net.activations[0]), 0)
