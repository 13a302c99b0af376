"""SimpleNetwork: the textbook's MLP with a pluggable activation per hidden layer."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from actlab.models.init import initialise, resolve_init

ActivationFactory = Callable[..., nn.Module]


def tapered_hidden_shape(depth: int, widest: int = 256, narrowest: int = 64) -> list[int]:
    """``depth`` widths tapering linearly from ``widest`` to ``narrowest`` (4 -> [256,192,128,64])."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"model.depth must be a positive integer, got {depth!r}")
    if depth == 1:
        return [widest]
    step = (widest - narrowest) / (depth - 1)
    return [round(widest - i * step) for i in range(depth)]


def build_activation(factory: ActivationFactory, num_features: int) -> nn.Module:
    """Call an activation factory, passing the layer width to those that take ``num_features``."""
    target = getattr(factory, "func", factory)
    try:
        takes_width = "num_features" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_width = False
    return factory(num_features=num_features) if takes_width else factory()


class SimpleNetwork(nn.Module):
    """``Flatten -> [Linear -> activation] x depth -> Linear(num_classes)``.

    Args:
        activation: a zero-argument factory (e.g. ``functools.partial(nn.ReLU)``, what a
            ``_partial_: true`` activation config instantiates to). Factories that accept
            ``num_features`` receive the layer width (per-channel PReLU).
        hidden_shape: explicit hidden widths; wins over ``depth``.
        depth: number of hidden layers tapering linearly 256 -> 64 (used when
            ``hidden_shape`` is None; 4 gives the default [256, 192, 128, 64]).
        input_size, num_classes: features per input and classes of the task (the training
            code takes both from the DataModule).
        share_activation: reuse ONE activation instance in every layer, as the textbook's
            code did (a trainable activation then has one parameter set for the whole net).
        init: weight initialisation: ``default`` (PyTorch's), ``kaiming`` (He, normal,
            fan-in), ``lecun`` (LeCun normal), ``xavier`` (Glorot, uniform), ``orthogonal``, or
            ``auto``, the one that belongs to the activation (:mod:`actlab.models.init`); biases
            start at zero for all but ``default``. ``initialised_with`` says which was used.
    """

    def __init__(
        self,
        activation: ActivationFactory,
        hidden_shape: Sequence[int] | None = None,
        depth: int = 4,
        input_size: int = 28 * 28,
        num_classes: int = 10,
        share_activation: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        hidden_shape = list(hidden_shape) if hidden_shape is not None else tapered_hidden_shape(depth)
        if not hidden_shape:
            raise ValueError("model.hidden_shape is empty; give at least one hidden width")
        bad = [w for w in hidden_shape if not isinstance(w, int) or isinstance(w, bool) or w < 1]
        if bad:
            raise ValueError(f"model.hidden_shape must hold positive integers, got {hidden_shape}")
        self.hidden_shape, self.share_activation, self.init = hidden_shape, share_activation, init
        self.input_size, self.num_classes = input_size, num_classes

        shared = build_activation(activation, hidden_shape[0]) if share_activation else None
        self.flatten = nn.Flatten()
        self.linears = nn.ModuleList()
        self.activations = nn.ModuleList()
        width = input_size
        for out in hidden_shape:
            self.linears.append(nn.Linear(width, out))
            self.activations.append(shared if shared is not None else build_activation(activation, out))
            width = out
        self.head = nn.Linear(width, num_classes)
        self.initialised_with = resolve_init(init, self.activations[0])
        initialise([*self.linears, self.head], self.initialised_with)

    @property
    def depth(self) -> int:
        return len(self.hidden_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for linear, activation in zip(self.linears, self.activations):
            x = activation(linear(x))
        return self.head(x)

    def forward_hidden(self, x: torch.Tensor, layers: int | None = None) -> list[torch.Tensor]:
        """Post-activation outputs of the first ``layers`` hidden layers (all for None),
        for diagnostics."""
        outputs = []
        x = self.flatten(x)
        for linear, activation in list(zip(self.linears, self.activations))[:layers]:
            x = activation(linear(x))
            outputs.append(x)
        return outputs

    def extra_repr(self) -> str:
        return f"hidden_shape={self.hidden_shape}, share_activation={self.share_activation}, init={self.init!r}"
