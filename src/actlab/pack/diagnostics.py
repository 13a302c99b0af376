"""Diagnostics a pack measures for all its members at once."""

from __future__ import annotations

import torch

from actlab.callbacks.dead_neurons import DeadNeuronCounter, DeadNeuronMonitor, scan_dead_neurons
from actlab.pack.stacked import StackedNetwork, member_cross_entropy


def layer_names(net: StackedNetwork) -> list[str]:
    """``layer_i_<in>x<out>`` of every Linear layer (hidden ones, then the head), as a single run names them."""
    return [f"layer_{i}_{w.shape[2]}x{w.shape[1]}" for i, w in enumerate(net.weights)]


def member_weight_gradients(net: StackedNetwork, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """Every member's weight gradients ``(K, out, in)`` per layer on one probe batch, from one
    backward pass of the summed losses (members do not interact, so member k's slice is its
    own gradient); like :func:`~actlab.callbacks.weight_gradients`, the optimiser's ``.grad``
    buffers are untouched."""
    members = inputs.unsqueeze(0).expand(net.height, *inputs.shape)
    with torch.enable_grad(), torch.inference_mode(False):
        logits = net(members)
        total = member_cross_entropy(logits, targets.expand(net.height, -1)).mean(1).sum()
        return list(torch.autograd.grad(total, list(net.weights), allow_unused=True))


@torch.inference_mode()
def member_layer_outputs(net: StackedNetwork, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every member's post-activation outputs ``(height, batch, width)`` per hidden layer."""
    return net.forward_hidden(inputs.unsqueeze(0).expand(net.height, *inputs.shape))


class MembersAsNeurons:
    """A StackedNetwork seen as one wide network: each hidden layer's outputs
    ``(K, batch, width)`` become ``(batch, K * width)``, so one dead-neuron scan of the probe
    set covers every member (one batched forward pass per probe batch, not K)."""

    def __init__(self, net: StackedNetwork) -> None:
        self.net = net
        self.linears = range(net.depth)

    def forward_hidden(self, x: torch.Tensor, layers: int | None = None) -> list[torch.Tensor]:
        members = x.unsqueeze(0).expand(self.net.height, *x.shape)
        return [out.transpose(0, 1).flatten(1) for out in self.net.forward_hidden(members, layers)]


@torch.inference_mode()
def scan_members(
    net: StackedNetwork, inputs: torch.Tensor, monitor: DeadNeuronMonitor
) -> list[list[DeadNeuronCounter]]:
    """Every member's dead-neuron counters (one per hidden layer, per row of the stack) from one scan of ``inputs``,
    with ``monitor``'s settings. Exact, as a scan of each member alone would be: a layer's scan
    settles once no member's answer can change any more."""
    was_training = net.training
    net.eval()
    try:
        counters = scan_dead_neurons(MembersAsNeurons(net), inputs, monitor.near_dead_tol,
                                     monitor.near_dead_fraction, monitor.batch_size, monitor.settle_early)  # fmt: skip
    finally:
        net.train(was_training)
    per_member = []
    for k in range(net.height):
        mine = []
        for counter in counters:
            member = DeadNeuronCounter(counter.near_dead_tol, counter.probe_samples)
            member.fired = counter.fired.view(net.height, -1)[k]
            member.near_zero_count = counter.near_zero_count.view(net.height, -1)[k]
            member.samples = counter.samples
            mine.append(member)
        per_member.append(mine)
    return per_member
