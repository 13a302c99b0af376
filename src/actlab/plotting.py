"""Every figure actlab draws: activation shapes and derivatives, the textbook's 3-D gradient
view, the static diagnostics PNGs of a run, and a sweep's heat-map and learning curves.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas: importing this
module changes no global matplotlib state (no backend switch, no pyplot figure manager),
so it is safe in notebooks and servers alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

X_RANGE = (-5.0, 5.0)


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def value_and_derivative(activation: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and f'(x) by autograd, elementwise (activations act elementwise), evaluated where the
    activation's parameters live (a trained run's may be on the GPU) and returned where ``x`` is."""
    state = next(iter([*activation.parameters(), *activation.buffers()]), None)
    where = x.device if state is None else state.device
    inputs = x.detach().to(where).requires_grad_(True)
    y = activation(inputs)
    (dy,) = torch.autograd.grad(y.sum(), inputs, allow_unused=True)
    if dy is None:  # no path from x to y (e.g. a constant output)
        dy = torch.zeros_like(inputs)
    return y.detach().to(x.device), dy.detach().to(x.device)


def _prepare(activation: nn.Module) -> nn.Module:
    return activation.eval()  # random ones (RReLU) at their deterministic eval shape


def activation_figure(activation: nn.Module, title: str | None = None, points: int = 1001) -> Figure:
    """One activation's shape and derivative on [-5, 5]."""
    x = torch.linspace(*X_RANGE, points)
    y, dy = value_and_derivative(_prepare(activation), x)
    fig = Figure(figsize=(4, 3))
    _draw_shape(fig.add_subplot(), x, y, dy, title or type(activation).__name__)
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
    fig = Figure(figsize=(3 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
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
    fig = Figure(figsize=(10, 4))
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


def plot_activations(names: Sequence[str] | None, out_dir: str | Path, surfaces: bool = True) -> list[Path]:
    """``activations.png`` (all shapes + derivatives) and, with ``surfaces``, one
    ``surface_<name>.png`` per activation in ``out_dir``. Trainable activations are drawn at
    their initial values (seeded), random ones (RReLU) in eval mode."""
    from actlab.config import group_options, load_activation

    names = list(names) if names else group_options("activation")
    torch.manual_seed(0)
    modules = {name: load_activation(name) for name in names}
    out_dir = Path(out_dir)
    written = [plot_activation_grid(modules, out_dir / "activations.png")]
    if surfaces:
        written += [plot_gradient_surface(m, n, out_dir / f"surface_{n}.png") for n, m in modules.items()]
    return written


def plot_layer_histograms(
    series: Mapping[str, Sequence[torch.Tensor]], layer_names: Sequence[str], xlabel: str, path: str | Path
) -> Path:
    """One panel per layer (four to a row), one histogram per series (e.g. 'at init' vs 'final').
    Fixed margins rather than ``tight_layout``: measuring every label's extent cost more than
    the drawing (~0.6 s of ~1.1 s for a depth-16 network, paid by each member of a pack)."""
    n = len(layer_names)
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(3.2 * columns, 2.5 * rows + 0.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for i, (ax, name) in enumerate(zip(axes.flat, layer_names)):
        # a run that blew up has infinite or NaN values: histogram the finite ones, say how many were left out
        values = [v[i].float().flatten() for v in series.values()]
        finite = [v[torch.isfinite(v)] for v in values]
        left_out = sum(v.numel() - f.numel() for v, f in zip(values, finite))
        present = [f for f in finite if f.numel()]
        if present:
            low = min(float(f.min()) for f in present)
            high = max(float(f.max()) for f in present)
            high = high if high > low else low + 1e-12
            edges = torch.linspace(low, high, 61)
            for label, f in zip(series, finite):
                counts = torch.histc(f, bins=60, min=low, max=high)
                ax.stairs(counts.numpy(), edges.numpy(), label=label, fill=True, alpha=0.5)
        if left_out:
            ax.text(0.5, 0.95, f"{left_out} non-finite values left out", transform=ax.transAxes, ha="center",
                    va="top", fontsize=7, color="red")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    for row in axes:
        row[0].set_ylabel("count", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    width, height = fig.get_size_inches()  # margins in inches: ~0.8 for the counts, ~0.45 for the x label
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.3 / height,
                        wspace=0.35, hspace=0.55)  # fmt: skip
    return save_figure(fig, path)


def plot_dead_ratios(series: Mapping[str, Sequence[float]], widths: Sequence[int], path: str | Path) -> Path:
    """Bar chart of the dead-neuron percentage per hidden layer (labelled with its index and
    width) for each series."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(widths) + 2), 3))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for k, (label, ratios) in enumerate(series.items()):
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(ratios))]
        ax.bar(positions, [100 * r for r in ratios], width=width, label=label)
    ax.set_xticks(range(len(widths)), [f"{i}\n({w} units)" for i, w in enumerate(widths)], fontsize=8)
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("dead neurons (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_heatmap(rows: Sequence[str], columns: Sequence[int], percent: Sequence[Sequence[float]],
                 path: str | Path, title: str = "test accuracy (%), mean over seeds") -> Path:  # fmt: skip
    """Activation x depth heat-map of percentages (NaN = no value). The colour range covers
    the bulk of the cells (down to 10 points below their median): one failed activation
    (sigmoid's 10 %) must not spend the whole scale; cells below it show the darkest colour
    and keep their number."""
    finite = sorted(v for row in percent for v in row if not math.isnan(v))
    low = max(finite[0], statistics.median(finite) - 10) if finite else 0.0
    fig = Figure(figsize=(1.2 * len(columns) + 3, 0.4 * len(rows) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="viridis", aspect="auto", vmin=low, vmax=finite[-1] if finite else 100)
    ax.set_xticks(range(len(columns)), [str(d) for d in columns])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("depth (hidden layers)")
    ax.set_title(title)
    for i, row in enumerate(percent):
        for j, v in enumerate(row):
            if not math.isnan(v):
                dark = v < low + 0.5 * ((finite[-1] if finite else 100) - low)
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_learning_curves(curves: Mapping[str, Mapping[int, Sequence[Sequence[float]]]], metric: str,
                         path: str | Path) -> Path:  # fmt: skip
    """One panel per activation, one line per depth: the mean over seeds of ``metric`` per
    epoch (``curves[activation][depth]`` = one list per seed; panels in the order given)."""
    n = len(curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (activation, by_depth) in zip(axes.flat, curves.items()):
        for depth, seeds in sorted(by_depth.items()):
            length = max(len(c) for c in seeds)
            mean = [statistics.fmean(v) if (v := _measured(seeds, e)) else math.nan for e in range(length)]
            ax.plot(*_drawn(range(1, length + 1), mean), label=f"depth {depth} (n={len(seeds)})", marker=".", ms=3)
        ax.set_title(activation, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def _measured(seeds: Sequence[Sequence[float | None]], epoch: int) -> list[float]:
    """The seeds' values at ``epoch`` that were measured (an epoch not validated, say, has None
    in a record and NaN in memory)."""
    return [c[epoch] for c in seeds if len(c) > epoch and c[epoch] is not None and c[epoch] == c[epoch]]


def _drawn(epochs: Sequence[int], values: Sequence[float], *bands: Sequence[float]) -> tuple[list, ...]:
    """The epochs with a value, and their values (and bands): a line through the measured
    epochs, which NaN gaps (every other epoch not validated) would break into nothing."""
    kept = [i for i, v in enumerate(values) if v == v]
    return tuple([column[i] for i in kept] for column in (list(epochs), values, *bands))


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_overlaid_curves(curves: Mapping[str, Sequence[Sequence[float]]], metric: str, path: str | Path) -> Path:
    """One line per label on shared axes: the mean over seeds of ``metric`` per epoch with a
    band of ± one standard deviation (``curves[label]`` = one list per seed; in the order given)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for color, (label, seeds) in zip(_palette(len(curves)), curves.items()):
        length = max(len(c) for c in seeds)
        columns = [_measured(seeds, e) for e in range(length)]
        mean = [statistics.fmean(v) if v else math.nan for v in columns]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in columns]
        epochs, mean, std = _drawn(range(1, length + 1), mean, std)
        ax.plot(epochs, mean, color=color, label=f"{label} (n={len(seeds)})", lw=1.5, marker=".", ms=3)
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.15, lw=0)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_bars(rows: Sequence[tuple[str, float, float | None]], path: str | Path,
                       baseline: Mapping[str, float] | None = None,
                       xlabel: str = "test accuracy (%), mean ± std over seeds") -> Path:  # fmt: skip
    """Horizontal bars sorted by value, with error bars; ``baseline[label]`` is drawn as a
    marker beside each bar (e.g. the textbook protocol's number)."""
    rows = sorted(rows, key=lambda r: r[1])
    fig = Figure(figsize=(7, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot()
    positions = range(len(rows))
    ax.barh(positions, [r[1] for r in rows], xerr=[r[2] or 0.0 for r in rows], color="#4c72b0", alpha=0.85,
            error_kw={"elinewidth": 1, "capsize": 2})  # fmt: skip
    if baseline:
        marks = [(i, baseline[r[0]]) for i, r in enumerate(rows) if r[0] in baseline]
        ax.scatter([m[1] for m in marks], [m[0] for m in marks], marker="|", s=120, color="#c44e52", zorder=3,
                   label="baseline")  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(list(positions), [r[0] for r in rows], fontsize=8)
    values = [r[1] for r in rows] + (list(baseline.values()) if baseline else [])
    bulk = sorted(values)[len(values) // 4] if values else 0.0
    ax.set_xlim(max(0.0, bulk - 5), max(values) + 1 if values else 100)  # the differences that matter
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_by_depth(series: Mapping[str, Sequence[tuple[int, float, float | None]]], path: str | Path,
                           ylabel: str = "test accuracy (%), mean and 95% CI over seeds") -> Path:  # fmt: skip
    """Test accuracy against depth (log scale), a line per activation: ``series[name]`` is
    ``(depth, mean, half-width of its confidence interval or None)`` per depth (in the order given)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for colour, (name, points) in zip(_palette(len(series)), series.items()):
        points = sorted(points)
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0.0 for p in points], label=name,
                    color=colour, marker="o", markersize=3, linewidth=1.2, capsize=2)  # fmt: skip
    depths = sorted({p[0] for points in series.values() for p in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_gradient_flow(panels: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Weight-gradient norm against hidden layer (log scale), a line per activation, one panel
    per ``panels`` key (e.g. ``depth 8, first step``): ``panels[title][name]`` is the norm of
    each hidden layer, from the input's side."""
    cols = 2
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    names = sorted({name for lines in panels.values() for name in lines})
    colours = dict(zip(names, _palette(len(names))))
    for i, (title, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, norms in lines.items():
            positive = [(layer, v) for layer, v in enumerate(norms) if v and v > 0 and math.isfinite(v)]
            if positive:
                ax.plot([p[0] for p in positive], [p[1] for p in positive], label=name, color=colours[name],
                        marker="o", markersize=2.5, linewidth=1.1)  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("hidden layer (0 = input side)", fontsize=8)
        ax.set_ylabel("weight-gradient norm", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
