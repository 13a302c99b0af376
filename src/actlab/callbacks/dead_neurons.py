"""Dead-neuron ratio: neurons whose output is exactly zero for every probe sample."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger

from actlab.callbacks.diagnostic import Diagnostic


class DeadNeuronCounter:
    """Accumulates, over batches of one layer's outputs ``(batch, neurons)``, which neurons
    ever fire (output != 0) and how many samples leave each one near zero (|out| <= tol).

    ``probe_samples`` is the size of the whole probe set when batches may stop before its
    end (see :meth:`settled`); by default it is the number of samples seen."""

    def __init__(self, near_dead_tol: float = 1e-6, probe_samples: int | None = None) -> None:
        self.near_dead_tol = near_dead_tol
        self.probe_samples = probe_samples
        self.fired: torch.Tensor | None = None
        self.near_zero_count: torch.Tensor | None = None
        self.samples = 0

    def update(self, outputs: torch.Tensor) -> None:
        magnitude = outputs.abs()  # one pass over the outputs, then two cheap column reductions
        fired = magnitude.amax(dim=0) != 0  # NaN counts as fired: it is not an exact zero
        near_zero = (magnitude <= self.near_dead_tol).sum(dim=0, dtype=torch.int64)
        if self.fired is None:
            self.fired, self.near_zero_count = fired, near_zero
        else:
            self.fired |= fired
            self.near_zero_count += near_zero
        self.samples += outputs.shape[0]

    @property
    def total(self) -> int:
        """Samples the near-dead fraction is taken of: the whole probe set, or those seen."""
        return self.probe_samples or self.samples

    def dead(self) -> torch.Tensor:
        """Boolean mask of neurons that were exactly 0 for every sample seen."""
        return ~self.fired

    def near_dead(self, fraction: float = 0.99) -> torch.Tensor:
        """Neurons within the tolerance of zero on at least ``fraction`` of the probe samples."""
        return self.near_zero_count >= fraction * self.total

    def settled(self, fraction: float = 0.99) -> bool:
        """Whether the rest of the probe set can no longer change :meth:`dead` or
        :meth:`near_dead`: every neuron has fired, and each one's near-zero count has reached
        the threshold or can no longer reach it even if every remaining sample were near zero."""
        if self.fired is None or not bool(self.fired.all()):
            return False
        threshold, remaining, count = fraction * self.total, self.total - self.samples, self.near_zero_count
        return bool(((count >= threshold) | (count + remaining < threshold)).all())


def scan_dead_neurons(
    net: torch.nn.Module,
    inputs: torch.Tensor,
    near_dead_tol: float = 1e-6,
    near_dead_fraction: float = 0.99,
    batch_size: int = 2048,
    settle_early: bool = True,
) -> list[DeadNeuronCounter]:
    """Counts dead and near-dead neurons of every hidden layer of ``net`` over ``inputs``.

    Exact, yet often cheap: after each batch the deepest layers whose answer is
    :meth:`~DeadNeuronCounter.settled` drop out, so later batches run only through the layers
    still undecided; once none is, the scan stops. A layer holding a dead neuron is only
    settled by the whole set, so a network with dead neurons pays for the full pass (up to its
    deepest such layer) and a healthy one for a few thousand samples. ``settle_early=False``
    always runs the full pass (same result). Returns one counter per hidden layer (each
    knows how many samples it saw).
    """
    total = len(inputs)
    counters = [DeadNeuronCounter(near_dead_tol, total) for _ in net.linears]
    layers, start = len(counters), 0
    while start < total and layers > 0:
        for counter, out in zip(counters, net.forward_hidden(inputs[start : start + batch_size], layers)):
            counter.update(out)
        start += batch_size
        while settle_early and layers > 0 and counters[layers - 1].settled(near_dead_fraction):
            layers -= 1
    return counters


def dead_neuron_metrics(counters: list[DeadNeuronCounter], near_dead_fraction: float = 0.99) -> dict[str, float]:
    """``dead/layer_i``, ``dead/overall``, ``near_dead/layer_i`` and ``near_dead/overall``
    (fractions of neurons) from one scan's counters."""
    dead = [c.dead() for c in counters]
    near = [c.near_dead(near_dead_fraction) for c in counters]
    total = sum(len(d) for d in dead)
    metrics = {f"dead/layer_{i}": float(d.float().mean()) for i, d in enumerate(dead)}
    metrics["dead/overall"] = sum(int(d.sum()) for d in dead) / total
    metrics.update({f"near_dead/layer_{i}": float(n.float().mean()) for i, n in enumerate(near)})
    metrics["near_dead/overall"] = sum(int(n.sum()) for n in near) / total
    return metrics


class DeadNeuronMonitor(Diagnostic):
    """Logs ``dead/layer_i``, ``dead/overall``, ``near_dead/layer_i`` and ``near_dead/overall``.

    A neuron is dead when its post-activation output is exactly 0 for every sample of the
    probe set: by default the whole training set, evaluated in eval mode under
    ``torch.inference_mode`` in cache-sized batches straight from the in-memory tensors. Since
    smooth activations are never exactly 0, a near-dead variant counts neurons with
    ``|out| <= near_dead_tol`` on at least ``near_dead_fraction`` of the samples.
    The final values go into the run record. The scan stops as soon as the rest of the
    probe set cannot change the answer (:func:`scan_dead_neurons`): exact, and a fraction
    of a full pass unless some neurons really are dead.

    Args:
        probe_size: samples of the training set to probe (None = all of them).
        batch_size: samples per forward pass of the probe (a few thousand keep each layer's
            outputs in the CPU's cache: 2048 scans faster than 8192 or more).
        settle_early: stop scanning layers whose answer is settled (False: always the full
            pass, e.g. to time the worst case; the numbers are the same).
    """

    def __init__(
        self,
        probe_size: int | None = None,
        batch_size: int = 2048,
        near_dead_tol: float = 1e-6,
        near_dead_fraction: float = 0.99,
        every_n_epochs: int = 1,
        figures_dir: str | None = None,
        settle_early: bool = True,
    ) -> None:
        super().__init__(every_n_epochs, figures_dir)
        self.probe_size, self.batch_size, self.settle_early = probe_size, batch_size, settle_early
        self.near_dead_tol, self.near_dead_fraction = near_dead_tol, near_dead_fraction
        self.measurements, self.widths = 0, []
        self.at_init: list[float] | None = None  # dead ratio per layer at the first measurement
        self.latest: dict[str, float] = {}  # the last measurement's metrics
        self.latest_ratios: list[float] = []

    @torch.inference_mode()
    def measure(self, net: torch.nn.Module, data, loggers: list[Logger], step: int) -> None:
        inputs, _ = data.probe_set(self.probe_size)
        counters = scan_dead_neurons(
            net, inputs, self.near_dead_tol, self.near_dead_fraction, self.batch_size, self.settle_early
        )
        self.record_counters(loggers, counters, step)

    def record_counters(self, loggers: list[Logger], counters: list[DeadNeuronCounter], step: int) -> None:
        """Log and keep one scan's result (a packed sweep scans all its members at once)."""
        metrics = dead_neuron_metrics(counters, self.near_dead_fraction)
        dead_ratios = [metrics[f"dead/layer_{i}"] for i in range(len(counters))]
        self.at_init = dead_ratios if self.at_init is None else self.at_init
        self.latest, self.latest_ratios = metrics, dead_ratios
        self.widths = [len(c.fired) for c in counters]
        self.measurements += 1
        self.log_scalars(loggers, metrics, step)

    def checkpoint_state(self) -> dict:
        """The dead ratios of the initial network (a resumed fit does not measure it again),
        with the layers' widths, for the figure."""
        return {"at_init": self.at_init, "widths": self.widths} if self.at_init is not None else {}

    def load_checkpoint_state(self, state: dict) -> None:
        if state.get("at_init") is not None:
            self.at_init, self.widths = state["at_init"], list(state.get("widths") or self.widths)
            self.measurements += 1  # the initial network's, measured before the checkpoint

    def record_fields(self) -> dict:
        """The last measurement and the per-layer dead ratios at initialisation."""
        return {**self.latest, "dead/at_init": self.at_init} if self.latest else {}

    def save_figure(self, directory: Path) -> None:
        if self.at_init is None:
            return
        from actlab.plotting import plot_dead_ratios

        series = {"at init": self.at_init}
        if self.measurements > 1:
            series["final"] = self.latest_ratios
        plot_dead_ratios(series, self.widths, directory / "dead_neurons.png")
