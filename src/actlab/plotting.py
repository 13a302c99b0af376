"""Figures: activation shapes and derivatives, the textbook's 3-D gradient view, and the
static diagnostics PNGs written at the end of a run. Matplotlib only, headless (Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

X_RANGE = (-5.0, 5.0)


def value_and_derivative(activation: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and f'(x) by autograd, elementwise (activations act elementwise)."""
    x = x.detach().clone().requires_grad_(True)
    y = activation(x)
    (dy,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    if dy is None:  # no path from x to y (e.g. a constant output)
        dy = torch.zeros_like(x)
    return y.detach(), dy.detach()


def _prepare(activation: nn.Module) -> nn.Module:
    return activation.eval()  # random ones (RReLU) at their deterministic eval shape


def activation_figure(activation: nn.Module, title: str | None = None, points: int = 1001):
    """One activation's shape and derivative on [-5, 5] as a matplotlib Figure."""
    x = torch.linspace(*X_RANGE, points)
    y, dy = value_and_derivative(_prepare(activation), x)
    fig, ax = plt.subplots(figsize=(4, 3))
    _draw_shape(ax, x, y, dy, title or type(activation).__name__)
    fig.tight_layout()
    return fig


def _draw_shape(ax, x, y, dy, title: str) -> None:
    ax.plot(x, y, label="f(x)", lw=2)
    ax.plot(x, dy, label="f'(x)", lw=1.5, ls="--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(max(-3.0, float(min(y.min(), dy.min())) - 0.2), min(6.0, float(max(y.max(), dy.max())) + 0.2))
    ax.grid(alpha=0.3)


def plot_activation_grid(activations: Mapping[str, nn.Module], path: str | Path, points: int = 501) -> Path:
    """A grid of shape + derivative panels, one per activation, saved as PNG."""
    n = len(activations)
    cols = min(6, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    x = torch.linspace(*X_RANGE, points)
    for ax, (name, activation) in zip(axes.flat, activations.items()):
        y, dy = value_and_derivative(_prepare(activation), x)
        _draw_shape(ax, x, y, dy, name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_gradient_surface(activation: nn.Module, name: str, path: str | Path, points: int = 81) -> Path:
    """The textbook's 3-D view: surface of f(x) + f(y) and a heat-map of the gradient
    magnitude sqrt(f'(x)^2 + f'(y)^2) over [-5, 5]^2."""
    grid = torch.linspace(*X_RANGE, points)
    f, df = value_and_derivative(_prepare(activation), grid)
    surface = f[:, None] + f[None, :]
    magnitude = torch.sqrt(df[:, None] ** 2 + df[None, :] ** 2)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    fig = plt.figure(figsize=(10, 4))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    ax.plot_surface(xx.numpy(), yy.numpy(), surface.numpy(), cmap="viridis", linewidth=0)
    ax.set_title(f"{name}: f(x) + f(y)", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    image = ax2.imshow(magnitude.T.numpy(), origin="lower", extent=[*X_RANGE, *X_RANGE], cmap="magma")
    ax2.set_title(f"{name}: |gradient| = sqrt(f'(x)^2 + f'(y)^2)", fontsize=10)
    ax2.set_xlabel("x")
    ax2.set_ylabel("y")
    fig.colorbar(image, ax=ax2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_layer_histograms(
    series: Mapping[str, Sequence[torch.Tensor]], layer_names: Sequence[str], xlabel: str, path: str | Path
) -> Path:
    """One panel per layer, one histogram per series (e.g. 'at init' vs 'final')."""
    n = len(layer_names)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, layer_names)):
        values = [v[i].float() for v in series.values()]
        low = min(float(v.min()) for v in values)
        high = max(float(v.max()) for v in values)
        high = high if high > low else low + 1e-12
        edges = torch.linspace(low, high, 61)
        for label, v in zip(series, values):
            counts = torch.histc(v, bins=60, min=low, max=high)
            ax.stairs(counts.numpy(), edges.numpy(), label=label, fill=True, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dead_ratios(series: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Bar chart of the dead-neuron percentage per hidden layer for each series."""
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(1, len(series))
    for k, (label, ratios) in enumerate(series.items()):
        positions = [i + k * width for i in range(len(ratios))]
        ax.bar(positions, [100 * r for r in ratios], width=width, label=label)
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("dead neurons (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
