"""Other activations: the chapter's "design your own" SwiGELU and a learned mixture.

Hardshrink, Softshrink and Tanhshrink are PyTorch's own; ``none`` is ``nn.Identity``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SwiGELU(nn.Module):
    r"""The average of SiLU and GELU: :math:`\tfrac12 (x \sigma(x) + \text{GELU}(x))`.

    The textbook chapter's worked example of designing a new activation from two smooth
    ReLU relatives. No parameters. Shape: any.
    Reference: the textbook's activation-functions chapter ("design your own" exercise).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.silu(x) + F.gelu(x))


class Mixture(nn.Module):
    r"""Learned mixture of base activations: :math:`\sum_k \text{softmax}(w)_k f_k(x)`.

    One weight vector :math:`w \in \mathbb{R}^K` per instance (per layer), starting uniform.
    The bases are deep-copied, so trainable bases are per layer too.

    Args:
        bases: the K activation modules to mix (default in config: relu, gelu, tanh, silu).

    Shape: any. Reference: the textbook chapter's "mixture of expert activations" research
    direction; cf. Manessi & Rozza, "Learning Combinations of Activation Functions", ICPR 2018.
    """

    def __init__(self, bases: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(bases) < 1:
            raise ValueError("Mixture needs at least one base activation")
        self.bases = nn.ModuleList(copy.deepcopy(list(bases)))
        self.logits = nn.Parameter(torch.zeros(len(self.bases)))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([base(x) for base in self.bases], dim=-1)
        return outputs @ self.weights.to(x.dtype)

    def extra_repr(self) -> str:
        return f"K={len(self.bases)}"
