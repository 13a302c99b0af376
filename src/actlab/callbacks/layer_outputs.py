"""Post-activation output distributions of every hidden layer."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import Logger

from actlab.callbacks.diagnostic import LayerDistributions, layer_name


class LayerOutputHistograms(LayerDistributions):
    """Histogram ``outputs/layer_i_<in>x<out>`` and scalars ``output_mean/layer_i``,
    ``output_std/layer_i`` of each hidden layer's post-activation output on a fixed probe batch."""

    figure_name = "layer_outputs.png"
    xlabel = "post-activation output"

    def __init__(self, probe_size: int = 1024, every_n_epochs: int = 1, figures_dir: str | None = None) -> None:
        super().__init__(every_n_epochs, figures_dir)
        self.probe_size = probe_size

    @torch.inference_mode()
    def measure(self, net: torch.nn.Module, data, loggers: list[Logger], step: int) -> None:
        x, _ = data.probe_set(self.probe_size)
        names = [layer_name(i, linear) for i, linear in enumerate(net.linears)]
        self.record_values(loggers, names, net.forward_hidden(x), step)

    def record_values(self, loggers: list[Logger], names: list[str], outputs: list[torch.Tensor], step: int) -> None:
        """Log and keep one measurement (a packed sweep measures all its members at once)."""
        scalars = {}
        for i, (name, out) in enumerate(zip(names, outputs)):
            out = out.float()
            scalars[f"output_mean/layer_{i}"] = float(out.mean())
            scalars[f"output_std/layer_{i}"] = float(out.std())
            self.log_histogram(loggers, f"outputs/{name}", out, step)
        self.log_scalars(loggers, scalars, step)
        self.remember(names, outputs, step)
