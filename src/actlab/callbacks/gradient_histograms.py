"""Weight-gradient distributions per Linear layer: the vanishing-gradient picture."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from actlab.callbacks.diagnostic import LayerDistributions, layer_name, probe_batch


class GradientHistograms(LayerDistributions):
    """Histogram ``grad/layer_i_<in>x<out>`` and scalar ``grad_norm/layer_i`` of every Linear
    layer's weight gradient (output layer included) on a fixed probe batch.

    Gradients come from ``torch.autograd.grad`` on the probe's cross-entropy, so the
    optimiser's ``.grad`` buffers are never touched.
    """

    figure_name = "gradient_histograms.png"
    xlabel = "weight gradient"

    def __init__(self, probe_size: int = 1024, every_n_epochs: int = 1, figures_dir: str | None = None) -> None:
        super().__init__(every_n_epochs, figures_dir)
        self.probe_size = probe_size
        self.norms: list[tuple[int, list[float]]] = []  # (step, norm per layer)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = pl_module.net
        linears = [*net.linears, net.head]
        x, y = probe_batch(trainer, self.probe_size)
        with torch.enable_grad(), torch.inference_mode(False):
            loss = F.cross_entropy(net(x), y)
            grads = torch.autograd.grad(loss, [linear.weight for linear in linears], allow_unused=True)
        grads = [torch.zeros_like(l.weight) if g is None else g for g, l in zip(grads, linears)]
        names = [layer_name(i, linear) for i, linear in enumerate(linears)]
        norms = [float(g.norm()) for g in grads]
        self.norms.append((step, norms))
        self.log_scalars(trainer, {f"grad_norm/layer_{i}": n for i, n in enumerate(norms)}, step)
        for name, grad in zip(names, grads):
            self.log_histogram(trainer, f"grad/{name}", grad, step)
        self.remember(names, grads)
