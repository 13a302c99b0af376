"""Weight initialisation of the Linear layers, and the init that belongs to each activation
(``model.init=auto``).

At depth, the init decides trainability as much as the activation does: PyTorch's default
(Var(W) = 1/(3 fan_in)) shrinks a ReLU signal's variance ~6x a layer, so at depth 16 the
biases, not the inputs, would reach the logits. ``auto`` gives each activation the scheme its
family was analysed with:

- **He** (``kaiming``: normal, Var(W) = 2/fan_in; He et al., ICCV 2015) for the ReLU family and
  the units that are ReLU-like away from zero (ELU, CELU, GELU, SiLU/Swish, Mish, Softplus,
  Hardswish, TeLU, trainable ELU, SwiGELU), for ``rational`` (initialised to approximate leaky
  ReLU), ``bspline`` (a SiLU base) and ``mixture`` (mostly ReLU-like bases).
- **LeCun normal** (``lecun``: Var(W) = 1/fan_in) for SELU, whose self-normalising fixed point
  assumes it (Klambauer et al., NeurIPS 2017).
- **Glorot** (``xavier``: uniform, Var(W) = 2/(fan_in + fan_out); Glorot & Bengio, 2010) for the
  bounded, zero-centred or saturating units (sigmoid, tanh, softsign, adaptive sigmoid, the
  step), the shrinkage functions (hardshrink, softshrink, tanhshrink), the identity (``none``),
  and the periodic ones (STAF, snake), which are near-linear at the origin.

An activation this table does not know (one from outside actlab) is refused under ``auto``
(fail closed): name a scheme for it with ``model.init=kaiming|lecun|xavier|orthogonal``.
"""

from __future__ import annotations

from torch import nn

INITS = ("default", "kaiming", "lecun", "xavier", "orthogonal", "auto")
HE = ("ReLU", "LeakyReLU", "PReLU", "RReLU", "ReLU6", "ELU", "CELU", "GELU", "SiLU", "Swish", "Mish", "Softplus",
      "Hardswish", "TeLU", "TrainableELU", "SwiGELU", "Rational", "BSpline", "Mixture")  # fmt: skip
LECUN = ("SELU",)
GLOROT = ("Sigmoid", "Tanh", "Softsign", "AdaptiveSigmoid", "Step", "Hardshrink", "Softshrink", "Tanhshrink",
          "Identity", "STAF", "Snake")  # fmt: skip
# activation class name -> its init under model.init=auto
AUTO_INIT = {**dict.fromkeys(HE, "kaiming"), **dict.fromkeys(LECUN, "lecun"), **dict.fromkeys(GLOROT, "xavier")}


def resolve_init(init: str, activation: nn.Module) -> str:
    """The scheme ``init`` stands for with this activation (``auto``: :data:`AUTO_INIT`)."""
    if init not in INITS:
        raise ValueError(f"unknown model.init {init!r}; choose one of: {', '.join(INITS)}")
    if init != "auto":
        return init
    name = type(activation).__name__
    if name not in AUTO_INIT:
        raise ValueError(f"model.init=auto has no init for activation {name}; set one: model.init=kaiming (ReLU-like), "
                         "lecun (self-normalising) or xavier (bounded, saturating)")  # fmt: skip
    return AUTO_INIT[name]


def initialise(linears: list[nn.Linear], scheme: str) -> None:
    """Initialise ``linears`` by ``scheme`` (a resolved one; ``default`` leaves PyTorch's);
    biases start at zero for every other scheme."""
    if scheme == "default":
        return
    for linear in linears:
        if scheme == "kaiming":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        elif scheme == "lecun":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="linear")  # std = 1/sqrt(fan_in)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(linear.weight)
        else:
            nn.init.orthogonal_(linear.weight)
        nn.init.zeros_(linear.bias)
