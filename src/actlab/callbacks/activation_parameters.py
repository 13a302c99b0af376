"""Trainable activation parameters per layer (PReLU slopes, STAF terms, mixture weights, ...)."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import Logger

from actlab.callbacks.diagnostic import Diagnostic

SCALAR_LIMIT = 8  # parameters with at most this many elements are logged element by element


class ActivationParameterMonitor(Diagnostic):
    """For each hidden layer's activation, logs every trainable parameter: small ones as
    scalars ``act_param/layer_i/<name>[_k]``, larger ones as histograms plus their mean.
    A mixture also logs its softmax weights as ``act_param/layer_i/weight_k``."""

    def measure(self, net: torch.nn.Module, data, loggers: list[Logger], step: int) -> None:
        scalars: dict[str, float] = {}
        for i, activation in enumerate(net.activations):
            prefix = f"act_param/layer_{i}"
            for name, param in activation.named_parameters():
                values = param.detach().flatten().float()
                tag = f"{prefix}/{name.replace('.', '_')}"
                if values.numel() == 1:
                    scalars[tag] = float(values)
                elif values.numel() <= SCALAR_LIMIT:
                    scalars.update({f"{tag}_{k}": float(v) for k, v in enumerate(values)})
                else:
                    scalars[f"{tag}_mean"] = float(values.mean())
                    self.log_histogram(loggers, tag, values, step)
            weights = getattr(activation, "weights", None)
            weights = weights.detach() if isinstance(weights, torch.Tensor) else None
            if isinstance(weights, torch.Tensor):
                scalars.update({f"{prefix}/weight_{k}": float(w) for k, w in enumerate(weights)})
        if scalars:
            self.log_scalars(loggers, scalars, step)
