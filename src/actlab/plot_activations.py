"""Library side of ``scripts/plot_activations.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from actlab.config import group_options, load_activation
from actlab.plotting import plot_activation_grid, plot_gradient_surface


def plot_activations(names: Sequence[str] | None, out_dir: str | Path, surfaces: bool = True) -> list[Path]:
    """Write ``activations.png`` (all shapes + derivatives) and, with ``surfaces``, one
    ``surface_<name>.png`` per activation into ``out_dir``. Trainable activations are drawn
    at their initial values (seeded), random ones (RReLU) in eval mode."""
    names = list(names) if names else group_options("activation")
    torch.manual_seed(0)
    modules = {name: load_activation(name) for name in names}
    out_dir = Path(out_dir)
    written = [plot_activation_grid(modules, out_dir / "activations.png")]
    if surfaces:
        written += [plot_gradient_surface(m, n, out_dir / f"surface_{n}.png") for n, m in modules.items()]
    return written
