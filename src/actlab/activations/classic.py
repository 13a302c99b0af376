"""Classic activations PyTorch lacks: the Heaviside step.

Sigmoid, tanh and softsign are PyTorch's own (``conf/activation/{sigmoid,tanh,softsign}.yaml``).
"""

from __future__ import annotations

import torch
from torch import nn


class _HeavisideFunction(torch.autograd.Function):
    generate_vmap_rule = True  # runs under torch.func.vmap (packed sweeps)

    @staticmethod
    def forward(x: torch.Tensor, threshold: float) -> torch.Tensor:
        return (x > threshold).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # The true derivative: zero everywhere (undefined at the threshold).
        return torch.zeros_like(grad_output), None


class Step(nn.Module):
    r"""Heaviside step, the McCulloch–Pitts neuron's threshold unit.

    .. math:: \text{Step}(x) = 1 \text{ if } x > \theta \text{ else } 0

    Its gradient is exactly zero everywhere, so no error signal reaches the layers below:
    a network of steps cannot learn by backpropagation beyond its output layer (the layers
    still receive zero gradients, which the diagnostics then show).

    Shape: any; output has the input's shape and dtype.
    Reference: McCulloch & Pitts, "A logical calculus of the ideas immanent in nervous
    activity", 1943.
    """

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HeavisideFunction.apply(x, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
