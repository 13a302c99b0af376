"""actlab: a Hydra + PyTorch Lightning template for studying activation functions."""

__version__ = "0.1.0"
