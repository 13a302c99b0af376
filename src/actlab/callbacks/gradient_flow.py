"""Why a deep network trains or does not, in numbers per hidden layer: how large its weight
gradients are, how large its outputs are, and how many of its units sit where the activation
is flat (saturated).

Measured per hidden layer ``i`` (the Linear into hidden layer ``i``, then the activation):

- ``grad_norm``: the L2 norm of the layer's weight gradient in training: at the first training
  step (the first mini-batch, at the initial weights), and each measured epoch the mean over
  every ``every_n_steps``-th step since the previous measurement. Vanishing gradients are a first layer's norm orders
  of magnitude below the last's (the summary's ``grad ratio``, as log10).
- ``output_rms``: the root mean square of the layer's post-activation output on the probe set:
  signal that grows or decays with depth.
- ``saturated``: for a bounded activation (sigmoid, tanh, softsign, ...), the share of (sample,
  unit) pairs of the probe set whose pre-activation ``x`` has ``|f'(x)|`` below
  :data:`SATURATION` of the activation's steepest slope (tanh: ``|x| > 2.18``; sigmoid:
  ``|x| > 4.36``; softsign: ``|x| > 3.47``); None for an unbounded one, whose flat side is the dead ratio's business.

The numbers go into the run record: each epoch's into its ``history`` (``flow/grad_norm/layer_i``,
``flow/output_rms/layer_i``, ``flow/saturated/layer_i``), the first step's and the initial
network's as ``flow/grad_norm_first_step``, ``flow/output_rms_at_init``, ``flow/saturated_at_init``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from actlab.callbacks.diagnostic import Diagnostic

# a unit is saturated where the activation's slope is below this share of its steepest slope
SATURATION = 0.05
# where an activation is looked at for its steepest slope, and whether it is bounded
SLOPE_GRID = (-10.0, 10.0, 4001)
FAR = 1e4


def activation_slopes(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``f'(x)`` elementwise for an elementwise activation (by autograd; no parameter's
    gradient is touched; 0 where the output does not depend on x, as for a step)."""
    with torch.enable_grad(), torch.inference_mode(False):
        x = x.detach().clone().requires_grad_(True)
        y = activation(x)
        if not y.requires_grad:
            return torch.zeros_like(x)
        (slopes,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if slopes is None else slopes


def saturation_profile(activation: nn.Module, like: torch.Tensor) -> float | None:
    """The slope below which a unit of ``activation`` counts as saturated (:data:`SATURATION`
    of its steepest slope on [-10, 10]; 0 for one flat everywhere, a step), or None where the
    activation is unbounded (its output at +-1e4 is not within +-100) and so cannot saturate in
    this sense. ``like``: a pre-activation batch ``(N, width)``, whose device and dtype it takes."""
    width, options = like.shape[1], {"device": like.device, "dtype": like.dtype}
    with torch.inference_mode(False), torch.no_grad():
        far = activation(torch.tensor([[-FAR], [FAR]], **options).expand(2, width))
    if not bool(torch.isfinite(far).all()) or float(far.abs().max()) > 100:
        return None
    # an activation without parameters has one slope profile for every unit: one column is enough
    columns = width if next(activation.parameters(), None) is not None else 1
    grid = torch.linspace(*SLOPE_GRID, **options).unsqueeze(1).expand(-1, columns)
    return SATURATION * float(activation_slopes(activation, grid).abs().max())


@torch.inference_mode()
def layer_statistics(net: nn.Module, inputs: torch.Tensor) -> dict[str, list[float | None]]:
    """Per hidden layer of ``net`` on ``inputs``: ``output_rms`` and ``saturated`` (None for an
    unbounded activation)."""
    rms, saturated = [], []
    h = net.flatten(inputs)
    for linear, activation in zip(net.linears, net.activations):
        z = linear(h)
        h = activation(z)
        rms.append(float(h.float().pow(2).mean().sqrt()))
        threshold = saturation_profile(activation, z) if h.shape == z.shape else None
        if threshold is None:
            saturated.append(None)
        else:
            slopes = activation_slopes(activation, z).abs()
            flat = slopes < threshold if threshold > 0 else slopes <= 0  # a step: flat everywhere
            saturated.append(float(flat.float().mean()))
    return {"output_rms": rms, "saturated": saturated}


class GradientFlow(Diagnostic):
    """The numbers of the module docstring, per hidden layer, into the run record (and
    ``flow/*`` scalars in TensorBoard).

    Args:
        probe_size: training samples the output RMS and saturation are measured on.
        every_n_steps: steps between two gradient-norm samples (the first step is always one;
            a sample is one norm per layer on the device, read once an epoch).
        every_n_epochs: epochs between two probe measurements.
    """

    def __init__(self, probe_size: int = 1024, every_n_steps: int = 10, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.probe_size, self.every_n_steps = probe_size, every_n_steps
        self.first_step: list[float] | None = None
        self.at_init: dict[str, list] | None = None
        self.epoch: dict[str, float] = {}  # the last epoch's values, for the history
        self._keys: list[str] = []  # every key measured so far: an epoch not measured has NaN
        self._norm_sum: torch.Tensor | None = None
        self._norm_count = 0

    # -- gradients, per step ------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            weights = [linear.weight for linear in pl_module.net.linears]
            norms = torch.stack([torch.linalg.vector_norm(w.grad) if w.grad is not None else w.new_zeros(())
                                 for w in weights])  # fmt: skip
            self.add_gradient_norms(norms, first=trainer.global_step == 0)

    def add_gradient_norms(self, norms: torch.Tensor, first: bool) -> None:
        """One step's weight-gradient norm per hidden layer ``(layers,)`` (a pack gives each
        member its own); ``first``: the first training step's."""
        norms = norms.detach().float()
        if first and self.first_step is None:
            self.first_step = norms.tolist()
        if self._norm_sum is None:
            self._norm_sum = norms.clone()
        elif self._norm_sum.device != norms.device:  # restored from a checkpoint (on the CPU)
            self._norm_sum = self._norm_sum.to(norms.device).add_(norms)
        else:
            self._norm_sum.add_(norms)
        self._norm_count += 1

    def checkpoint_state(self) -> dict:
        """The gradient-norm samples since the last measurement (their sum and count)."""
        if self._norm_sum is None:
            return {}
        return {"norm_sum": self._norm_sum.tolist(), "norm_count": self._norm_count}

    def load_checkpoint_state(self, state: dict) -> None:
        if state.get("norm_sum") is not None:
            self._norm_sum, self._norm_count = torch.tensor(state["norm_sum"]), int(state["norm_count"])

    # -- the probe, per measurement -----------------------------------------------------------

    def measure(self, net: nn.Module, data, loggers: list[Logger], step: int) -> None:
        statistics = layer_statistics(net, data.probe_set(self.probe_size)[0])
        at_start = step == 0 and self._norm_count == 0  # before the first step, not an epoch's end
        if at_start:
            self.at_init = statistics
        epoch = {}
        if self._norm_sum is not None:
            means = (self._norm_sum / self._norm_count).tolist()  # the epoch's one host sync
            epoch.update({f"flow/grad_norm/layer_{i}": v for i, v in enumerate(means)})
            self._norm_sum, self._norm_count = None, 0
        for name, values in statistics.items():
            epoch.update({f"flow/{name}/layer_{i}": v for i, v in enumerate(values) if v is not None})
        self.log_scalars(loggers, epoch, step)
        if not at_start:
            self.epoch = epoch
            self._keys += [key for key in epoch if key not in self._keys]

    def epoch_values(self) -> dict[str, float]:
        """The epoch's values for the run's history (NaN for an epoch that was not measured)."""
        values = {key: self.epoch.get(key, math.nan) for key in self._keys}
        self.epoch = {}
        return values

    def record_fields(self) -> dict:
        if self.first_step is None and self.at_init is None:
            return {}
        init = self.at_init or {}
        saturated = init.get("saturated")
        return {
            "flow/grad_norm_first_step": self.first_step,
            "flow/output_rms_at_init": init.get("output_rms"),
            "flow/saturated_at_init": saturated if saturated and any(v is not None for v in saturated) else None,
        }
