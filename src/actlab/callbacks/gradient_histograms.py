"""Weight-gradient distributions per Linear layer: the vanishing-gradient picture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger

from actlab.callbacks.diagnostic import LayerDistributions, layer_name


def weight_gradients(net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """The cross-entropy gradient of every Linear layer's weight (hidden layers, then the
    head) on one batch, by ``torch.autograd.grad``: the optimiser's ``.grad`` buffers are
    never touched. A layer the loss does not reach gets zeros."""
    linears = [*net.linears, net.head]
    with torch.enable_grad(), torch.inference_mode(False):
        loss = F.cross_entropy(net(inputs), targets)
        grads = torch.autograd.grad(loss, [linear.weight for linear in linears], allow_unused=True)
    return [torch.zeros_like(l.weight) if g is None else g for g, l in zip(grads, linears)]


class GradientHistograms(LayerDistributions):
    """Histogram ``grad/layer_i_<in>x<out>`` and scalar ``grad_norm/layer_i`` of every Linear
    layer's weight gradient (output layer included) on a fixed probe batch
    (:func:`weight_gradients`)."""

    figure_name = "gradient_histograms.png"
    xlabel = "weight gradient"

    def __init__(self, probe_size: int = 1024, every_n_epochs: int = 1, figures_dir: str | None = None) -> None:
        super().__init__(every_n_epochs, figures_dir)
        self.probe_size = probe_size

    def measure(self, net: torch.nn.Module, data, loggers: list[Logger], step: int) -> None:
        grads = weight_gradients(net, *data.probe_set(self.probe_size))
        names = [layer_name(i, linear) for i, linear in enumerate([*net.linears, net.head])]
        self.record_values(loggers, names, grads, step)

    def record_values(self, loggers: list[Logger], names: list[str], grads: list[torch.Tensor], step: int) -> None:
        """Log and keep one measurement (a packed sweep measures all its members at once)."""
        self.log_scalars(loggers, {f"grad_norm/layer_{i}": float(g.norm()) for i, g in enumerate(grads)}, step)
        for name, grad in zip(names, grads):
            self.log_histogram(loggers, f"grad/{name}", grad, step)
        self.remember(names, grads, step)
