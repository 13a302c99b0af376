"""The activation library. Names are the files of ``conf/activation/``; each YAML builds a
PyTorch built-in where one exists, else a module from this package (grouped by family)."""

from actlab.activations.adaptive import (
    STAF,
    AdaptiveSigmoid,
    BSpline,
    Rational,
    Snake,
    TeLU,
    TrainableELU,
)
from actlab.activations.classic import Step
from actlab.activations.modern import Swish
from actlab.activations.other import Mixture, SwiGELU
from actlab.activations.relu_family import PReLU

__all__ = [
    "STAF",
    "AdaptiveSigmoid",
    "BSpline",
    "Mixture",
    "PReLU",
    "Rational",
    "Snake",
    "Step",
    "SwiGELU",
    "Swish",
    "TeLU",
    "TrainableELU",
]
