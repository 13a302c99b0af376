"""Modern smooth activations PyTorch lacks: Swish with a (trainable) beta.

ReLU, GELU, Mish, SiLU, ELU, SELU, Softplus and CELU are PyTorch's own.
"""

from __future__ import annotations

import torch
from torch import nn


class Swish(nn.Module):
    r"""Swish: :math:`x \cdot \sigma(\beta x)`; :math:`\beta = 1` is SiLU.

    Args:
        beta: initial (or fixed) :math:`\beta`.
        trainable: learn :math:`\beta` (one scalar per instance, so per layer).

    Shape: any. Reference: Ramachandran, Zoph & Le, "Searching for Activation
    Functions", 2017 (arXiv:1710.05941).
    """

    def __init__(self, beta: float = 1.0, trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable
        beta_tensor = torch.tensor(float(beta))
        if trainable:
            self.beta = nn.Parameter(beta_tensor)
        else:
            self.register_buffer("beta", beta_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta.to(x.dtype) * x)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.4g}, trainable={self.trainable}"
