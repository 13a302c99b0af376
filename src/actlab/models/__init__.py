"""Networks whose non-linearity is pluggable."""

from actlab.models.simple_network import SimpleNetwork, tapered_hidden_shape

__all__ = ["SimpleNetwork", "tapered_hidden_shape"]
