"""ReLU-family activations. LeakyReLU, ReLU6, Hardswish and RReLU are PyTorch's own;
PReLU is PyTorch's with a switch between one shared slope and one slope per neuron."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PReLU(nn.PReLU):
    r"""Parametric ReLU: :math:`\max(0, x) + a \min(0, x)` with learned slope(s) :math:`a`.

    Args:
        num_features: width of the layer (SimpleNetwork passes it).
        per_channel: one slope per neuron instead of one per layer.
        init: initial slope.

    Shape: ``(N, C, ...)`` with ``C == num_features`` when ``per_channel``.
    Reference: He et al., "Delving Deep into Rectifiers", ICCV 2015.
    """

    def __init__(self, num_features: int = 1, per_channel: bool = False, init: float = 0.25) -> None:
        super().__init__(num_parameters=num_features if per_channel else 1, init=init)
        self.per_channel = per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # like every actlab activation: parameters follow the input's dtype (bf16 inputs work)
        return F.prelu(x, self.weight.to(x.dtype))
